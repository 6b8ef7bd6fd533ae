//! The versioned sync protocol between a store gateway (`aisle-agent`) and the hub (`aisle-hub`).
//!
//! Transport: HTTP with JSON bodies. Every request and every answer carries [`PROTOCOL_HEADER`];
//! a peer outside [`MIN_PROTOCOL_VERSION`]..=[`PROTOCOL_VERSION`] is refused with HTTP 426 and an
//! [`ErrorBody`] whose `error` is [`error_code::INCOMPATIBLE_PROTOCOL`]. Every answer from the hub
//! carries [`SERVER_TIME_HEADER`] (UTC milliseconds), so the gateway can measure its clock skew.
//!
//! Down (hub -> gateway): `GET {CHANGES}?after=CURSOR&wait_ms=N&limit=N` long-polls the store's
//! changefeed. The hub answers a [`ChangePage`] as soon as there is anything after the cursor, or
//! an empty page when `wait_ms` runs out. Cursors are hub sequence numbers; the hub never hands
//! out a cursor beyond a change that could still commit below it. A cursor the hub does not hold
//! (beyond its changefeed: the hub was restored from an older backup) is answered with HTTP 410
//! and [`error_code::CURSOR_EXPIRED`]; the gateway then starts again from cursor 0 (every change
//! is idempotent on the gateway: highest version wins) and re-offers its last acknowledged event,
//! so a hub that lost the gateway's latest events answers 409 [`error_code::SEQ_GAP`] for them.
//!
//! Up (gateway -> hub): `POST {EVENTS}` with an [`EventUpload`]: contiguous ledger events in seq
//! order, starting at or before `acked_through + 1`. The hub stores each under UNIQUE
//! (gateway, seq) and keys every side effect by event id, so a replayed batch changes nothing and
//! gets the same [`UploadAck`]. A batch that would leave a gap is answered with HTTP 409,
//! [`error_code::SEQ_GAP`] and `expected_from`.
use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::{BatchId, EventId, Gtin, Hlc, Money, SaleId, UtcMillis};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// The oldest peer version this build still accepts.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// Request and response header carrying the sender's protocol version.
pub const PROTOCOL_HEADER: &str = "x-aisle-protocol";
/// Response header with the hub's UTC time in milliseconds.
pub const SERVER_TIME_HEADER: &str = "x-aisle-server-time";

/// Paths of the sync API on the hub.
pub mod path {
    pub const CHANGES: &str = "/v1/sync/changes";
    pub const EVENTS: &str = "/v1/sync/events";
}

/// Machine-readable `error` values in [`ErrorBody`].
pub mod error_code {
    pub const INCOMPATIBLE_PROTOCOL: &str = "incompatible_protocol";
    pub const CURSOR_EXPIRED: &str = "cursor_expired";
    pub const SEQ_GAP: &str = "seq_gap";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const FORBIDDEN: &str = "forbidden";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const NOT_FOUND: &str = "not_found";
    pub const CONFLICT: &str = "conflict";
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    pub const UNAVAILABLE: &str = "unavailable";
    pub const INTERNAL: &str = "internal";
}

/// Longest long-poll a gateway may ask for.
pub const MAX_WAIT_MS: u32 = 30_000;
/// Most changes in one page.
pub const MAX_CHANGES_PER_PAGE: u32 = 5_000;
/// Most events in one upload.
pub const MAX_EVENTS_PER_UPLOAD: usize = 5_000;
/// Largest request body the sync API accepts.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Longest product name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Most lines in one sale.
pub const MAX_SALE_LINES: usize = 500;
/// Largest quantity on one sale line.
pub const MAX_LINE_QTY: u32 = 9_999;

/// Is a peer speaking `version` one we can talk to?
pub fn version_compatible(version: u16) -> bool {
    (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version)
}

/// Query of `GET /v1/sync/changes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangesQuery {
    pub after: u64,
    #[serde(default)]
    pub wait_ms: u32,
    #[serde(default)]
    pub limit: Option<u32>,
}

/// One page of a store's changefeed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangePage {
    pub changes: Vec<Change>,
    /// Where the next request starts. Store it in the same transaction as these changes.
    pub next_cursor: u64,
    /// True when more changes are waiting after `next_cursor`.
    pub more: bool,
    pub server_time: UtcMillis,
}

/// A change for one store, at hub sequence `seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub seq: u64,
    pub body: ChangeBody,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChangeBody {
    Price(PriceChange),
    StockAdjustment(StockAdjustment),
}

/// A new price for one product at one store. Versions rise per (store, GTIN); highest wins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceChange {
    pub gtin: Gtin,
    pub version: u64,
    pub price: Money,
    pub name: String,
    /// When the price takes effect, on hub time.
    pub effective_at: UtcMillis,
    pub batch_id: BatchId,
}

/// A stock movement from another channel (goods received, online reservation, count).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockAdjustment {
    pub adjustment_id: EventId,
    pub gtin: Gtin,
    pub delta: i64,
    pub reason: String,
}

/// Body of `POST /v1/sync/events`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventUpload {
    pub events: Vec<LedgerEvent>,
}

/// One event from a gateway's ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEvent {
    /// The gateway's local sequence number: 1, 2, 3, ... without gaps.
    pub seq: u64,
    pub id: EventId,
    pub hlc: Hlc,
    /// The gateway's hub-corrected wall time when the event was committed.
    pub at: UtcMillis,
    pub body: EventBody,
}

/// What happened at the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    /// A price arrived from the hub and waits for its effective time.
    PriceStaged {
        gtin: Gtin,
        version: u64,
        batch_id: BatchId,
        effective_at: UtcMillis,
    },
    /// A price became the one the store charges.
    PriceActivated {
        gtin: Gtin,
        version: u64,
        batch_id: BatchId,
        price: Money,
    },
    /// A sale was committed; durable before the receipt printed.
    SaleCommitted(SaleRecord),
    /// A stock adjustment from the hub was applied to the store's stock.
    StockAdjusted {
        adjustment_id: EventId,
        gtin: Gtin,
        delta: i64,
    },
}

impl EventBody {
    /// The short name stored in the ledger's `kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::PriceStaged { .. } => "price_staged",
            EventBody::PriceActivated { .. } => "price_activated",
            EventBody::SaleCommitted(_) => "sale_committed",
            EventBody::StockAdjusted { .. } => "stock_adjusted",
        }
    }
}

/// A committed sale.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleRecord {
    pub sale_id: SaleId,
    pub lines: Vec<SaleLine>,
    pub total: Money,
    pub payment: Payment,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleLine {
    pub gtin: Gtin,
    pub qty: u32,
    pub unit_price: Money,
    /// The price version charged, for audit against the shelf.
    pub price_version: u64,
    pub line_total: Money,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payment {
    pub method: PaymentMethod,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

impl Payment {
    /// Longest payment reference, in characters.
    pub const MAX_REFERENCE_CHARS: usize = 64;

    /// Checks the parts of a payment a client may send.
    pub fn validate(&self) -> Result<(), SaleError> {
        if self
            .reference
            .as_ref()
            .is_some_and(|r| r.chars().count() > Self::MAX_REFERENCE_CHARS)
        {
            return Err(SaleError::Reference);
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethod {
    Cash,
    Card,
    Mobile,
    Voucher,
}

/// Why a sale record is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SaleError {
    #[error("a sale needs at least one line")]
    NoLines,
    #[error("a sale may have at most {MAX_SALE_LINES} lines")]
    TooManyLines,
    #[error("line {line}: quantity must be 1 to {MAX_LINE_QTY}")]
    BadQty { line: usize },
    #[error("line {line}: line total does not equal unit price times quantity")]
    LineTotal { line: usize },
    #[error("sale total does not equal the sum of its lines")]
    Total,
    #[error("all lines of a sale must be in one currency")]
    Currency,
    #[error("payment reference may be at most 64 characters")]
    Reference,
}

impl SaleRecord {
    /// Checks the record is internally consistent (the hub re-checks what gateways send).
    pub fn validate(&self) -> Result<(), SaleError> {
        if self.lines.is_empty() {
            return Err(SaleError::NoLines);
        }
        if self.lines.len() > MAX_SALE_LINES {
            return Err(SaleError::TooManyLines);
        }
        let mut sum: i64 = 0;
        for (i, l) in self.lines.iter().enumerate() {
            let line = i + 1;
            if l.qty == 0 || l.qty > MAX_LINE_QTY {
                return Err(SaleError::BadQty { line });
            }
            if l.unit_price.currency != self.total.currency
                || l.line_total.currency != self.total.currency
            {
                return Err(SaleError::Currency);
            }
            let expect = l.unit_price.minor.checked_mul(i64::from(l.qty));
            if expect != Some(l.line_total.minor) {
                return Err(SaleError::LineTotal { line });
            }
            sum = sum
                .checked_add(l.line_total.minor)
                .ok_or(SaleError::Total)?;
        }
        if sum != self.total.minor {
            return Err(SaleError::Total);
        }
        self.payment.validate()
    }
}

/// Answer to an upload: every event with seq <= `acked_through` is stored at the hub.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadAck {
    pub acked_through: u64,
    pub server_time: UtcMillis,
}

/// Body of every error answer, on the sync API and the public API alike.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One of [`error_code`].
    pub error: String,
    /// A sentence for a person.
    pub message: String,
    /// With [`error_code::SEQ_GAP`]: the first seq the hub needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_from: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Currency;
    use alloc::string::ToString;
    use alloc::vec;

    fn sale() -> SaleRecord {
        let cny = Currency::parse("CNY").unwrap();
        SaleRecord {
            sale_id: SaleId::parse("s-1").unwrap(),
            lines: vec![SaleLine {
                gtin: Gtin::parse("9501101531000").unwrap(),
                qty: 3,
                unit_price: Money::new(150, cny),
                price_version: 2,
                line_total: Money::new(450, cny),
            }],
            total: Money::new(450, cny),
            payment: Payment {
                method: PaymentMethod::Card,
                reference: None,
            },
        }
    }

    #[test]
    fn event_json_shape_is_stable() {
        let ev = LedgerEvent {
            seq: 7,
            id: EventId::from_bytes([1; 16]),
            hlc: Hlc {
                wall_ms: 10,
                counter: 1,
            },
            at: UtcMillis(10),
            body: EventBody::SaleCommitted(sale()),
        };
        let j = serde_json::to_value(&ev).unwrap();
        assert_eq!(j["body"]["type"], "sale_committed");
        assert_eq!(j["body"]["total"]["minor"], 450);
        let back: LedgerEvent = serde_json::from_value(j).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn sale_validation_catches_inconsistency() {
        assert_eq!(sale().validate(), Ok(()));
        let mut s = sale();
        s.total.minor = 449;
        assert_eq!(s.validate(), Err(SaleError::Total));
        let mut s = sale();
        s.lines[0].qty = 0;
        assert_eq!(s.validate(), Err(SaleError::BadQty { line: 1 }));
        let mut s = sale();
        s.lines.clear();
        assert_eq!(s.validate(), Err(SaleError::NoLines));
        let mut s = sale();
        s.payment.reference = Some("x".repeat(65));
        assert_eq!(s.validate(), Err(SaleError::Reference));
        let mut s = sale();
        s.lines[0].line_total.minor = 451;
        assert_eq!(s.validate(), Err(SaleError::LineTotal { line: 1 }));
    }

    #[test]
    fn versions() {
        assert!(version_compatible(PROTOCOL_VERSION));
        assert!(!version_compatible(PROTOCOL_VERSION + 1));
        assert!(!version_compatible(0));
        assert_eq!(error_code::CURSOR_EXPIRED.to_string(), "cursor_expired");
    }

    #[test]
    fn unknown_payment_fields_and_methods_are_refused() {
        assert!(serde_json::from_str::<Payment>(r#"{"method":"card","pin":"1234"}"#).is_err());
        assert!(serde_json::from_str::<Payment>(r#"{"method":"iou"}"#).is_err());
    }
}
