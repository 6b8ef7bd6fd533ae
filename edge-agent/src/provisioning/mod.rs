//! Field provisioning: the gateway's own key ([`key`]), the hub's pinned TLS identity
//! ([`pin`]), files written all-or-nothing ([`files`]), and `aisle-agent enroll` ([`enrol`]).
//!
//! Invariants: the private key is made here and never leaves the gateway (only its public half
//! is sent, once, at enrolment); no secret (key, enrolment code, bearer credential) is ever in
//! a log line or an error message; an enrolment either leaves a complete, valid configuration
//! and key on disk or nothing new at all.
pub mod commands;
pub mod enrol;
pub mod files;
pub mod key;
pub mod pin;
