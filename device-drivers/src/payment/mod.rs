//! Card payment at the lane: the [`PaymentTerminal`] trait a terminal driver implements, the
//! [`TerminalThread`] that runs one on its own thread and bounds every call by a timeout, the
//! [`SimulatedTerminal`] for tests and the demo, and the [`OfflinePolicy`] that caps what may be
//! taken offline (card store-and-forward).
//!
//! ```text
//!  lane (tokio, spawn_blocking) ──authorise(amount, sale_ref, timeout)──▶ TerminalThread
//!        ◀── Outcome (TimedOut at the deadline) ──┘   │ job queue (bounded)
//!                                                    ▼
//!                                thread "payment-terminal" ──▶ PaymentTerminal::authorise
//!                                  remembers every final outcome by sale_ref
//! ```
//!
//! # The idempotency contract (`sale_ref`)
//! A [`SaleRef`] names one payment attempt. A terminal given a `sale_ref` it has already
//! answered returns that first answer and never charges again; the lane therefore retries a
//! [`Outcome::TimedOut`] with the *same* `sale_ref`, and uses a *new* one for a new attempt
//! (another card after a decline). [`TerminalThread`] keeps the contract even for a terminal
//! that does not: it remembers the last final outcomes (approved or declined) by `sale_ref`,
//! answers a retry from memory, and answers a retry while the first call still hangs with
//! `TimedOut` again instead of a second call. An answer that arrives after its caller gave up
//! is kept for the retry. A `sale_ref` that the lane gives up on is [`cancel`](PaymentTerminal::cancel)led:
//! whatever the terminal did with it is voided and a late answer becomes a decline.
//!
//! # Offline
//! A terminal that cannot reach its acquirer may approve offline (`offline: true`) and forward
//! later. The lane checks such an approval against [`OfflinePolicy::decide`] with the offline
//! total its ledger keeps; a refused one is [`reverse`](PaymentTerminal::reverse)d (on the
//! terminal, never sent) and the shopper is told why.
use std::fmt;

use aisle_protocol::Money;
use serde::Serialize;

mod offline;
mod simulated;
mod thread;

pub use offline::{OfflineCaps, OfflineDecision, OfflinePolicy, OfflineSettings};
pub use simulated::{Behaviour, Charge, SimulatedTerminal};
pub use thread::{TerminalThread, TerminalThreadConfig};

/// The idempotency key of one payment attempt: 1 to 64 ASCII letters, digits, `-`, `_`, `.`,
/// `:` (what acquirers accept as a merchant reference), e.g. `S-0193…:1`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SaleRef(String);

impl SaleRef {
    pub fn new(s: impl Into<String>) -> Result<SaleRef, PaymentError> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if ok {
            Ok(SaleRef(s))
        } else {
            Err(PaymentError::BadSaleRef(crate::upos::shown(s.as_bytes())))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SaleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An approved payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Approval {
    pub sale_ref: SaleRef,
    pub amount: Money,
    /// The acquirer's (or, offline, the terminal's) authorisation code.
    pub auth_code: String,
    /// The last four digits of the card, if the terminal tells.
    pub card_last4: Option<String>,
    /// Approved by the terminal alone (store-and-forward), not by the acquirer.
    pub offline: bool,
}

/// What an authorisation came to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    Approved(Approval),
    /// The card or the acquirer said no; nothing was charged.
    Declined {
        reason: String,
    },
    /// No answer in time: the charge may or may not have happened. Retry with the same
    /// `sale_ref` (never charged twice) or cancel it.
    TimedOut,
    /// The terminal could not try (offline link, busy, out of service); nothing was charged.
    Unavailable {
        reason: String,
    },
}

impl Outcome {
    /// Approved or declined: the terminal's last word on this `sale_ref`.
    pub fn is_final(&self) -> bool {
        matches!(self, Outcome::Approved(_) | Outcome::Declined { .. })
    }

    /// In plain words for the lane screen.
    pub fn say(&self) -> String {
        match self {
            Outcome::Approved(a) if a.offline => format!("{} approved (offline)", a.amount),
            Outcome::Approved(a) => format!("{} approved", a.amount),
            Outcome::Declined { reason } => format!("card declined: {reason}"),
            Outcome::TimedOut => "the card terminal did not answer in time".into(),
            Outcome::Unavailable { reason } => {
                format!("the card terminal is unavailable: {reason}")
            }
        }
    }
}

/// What a cancel or a reversal came to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reversal")]
pub enum Reversal {
    /// The charge was voided.
    Reversed,
    /// There was no charge under this `sale_ref` (declined, or never reached the acquirer).
    NotCharged,
    /// The terminal could not void it now: the lane must tell the attendant (and retry).
    Failed { reason: String },
}

/// Errors of this module (bad input from a caller or a configuration).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    #[error("bad sale reference {0:?}: 1 to 64 of A-Z a-z 0-9 - _ . :")]
    BadSaleRef(String),
    #[error("offline payment settings: {0}")]
    Settings(String),
    #[error("cannot start the payment terminal thread: {0}")]
    Thread(String),
}

/// A card terminal. Blocking: a driver talks to its device (serial, TCP) on the thread that
/// calls it, and [`TerminalThread`] gives it one of its own and bounds every call.
///
/// Implementations must honour the `sale_ref` contract of the [module](self): the same
/// `sale_ref` never charges twice.
pub trait PaymentTerminal: Send + 'static {
    /// Asks for `amount` (positive) under `sale_ref`. May block as long as the shopper and the
    /// acquirer take; the caller bounds it.
    fn authorise(&mut self, amount: Money, sale_ref: &SaleRef) -> Outcome;

    /// The lane gave up on `sale_ref` (timed out, shopper walked away): void whatever the
    /// terminal did under it, and answer a later `authorise` with it as declined.
    fn cancel(&mut self, sale_ref: &SaleRef) -> Reversal;

    /// Reverses an approval whose sale could not be committed (or that the offline policy
    /// refused).
    fn reverse(&mut self, approval: &Approval) -> Reversal;
}
