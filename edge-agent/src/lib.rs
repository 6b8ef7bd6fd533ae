//! aisle-agent: the store gateway daemon.
pub mod clock;
pub mod config;
pub mod ledger;
