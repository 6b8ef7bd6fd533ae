//! Aisle's shared vocabulary: the domain types every crate speaks (money, GTINs, ids, time,
//! the hybrid logical clock) and the versioned sync messages between a store gateway and the hub.
//!
//! `no_std` + `alloc`, no I/O: the shelf-label firmware links this crate too. Every constructor
//! that takes outside input validates it and returns a typed error; nothing here panics on input.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod auth;
pub mod chain;
pub mod error;
pub mod esl;
pub mod gtin;
pub mod hlc;
pub mod ids;
pub mod member;
pub mod money;
pub mod pickup;
pub mod sync;
pub mod time;
mod token;

pub use error::ProtocolError;
pub use gtin::Gtin;
pub use hlc::{Hlc, HlcClock};
pub use ids::{BatchId, EventId, GatewayId, OrderId, SaleId, StoreId};
pub use money::{Currency, Money};
pub use time::UtcMillis;
