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

use crate::esl::LabelId;
use crate::{BatchId, EventId, Gtin, Hlc, Money, OrderId, SaleId, UtcMillis};

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
    /// An order for the store to prepare for pickup.
    PickupOrder(crate::pickup::PickupOrder),
    /// HQ cancelled an order; the store applies it or reports a conflict.
    PickupCancelled(crate::pickup::PickupCancellation),
    /// The hub's public key for pickup QR tokens.
    PickupKey(crate::pickup::PickupKey),
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
    /// Visitors through one entrance in one closed 15-minute interval, from the store's
    /// people-counting cameras. Intervals are additive: a late reading for an interval already
    /// reported arrives as another event for the same `(zone, start)`, and HQ sums them.
    FootfallCounted(FootfallInterval),
    /// The store holds a pickup order (status `sent_to_store` at HQ).
    PickupReceived { order_id: OrderId },
    /// Staff started picking an order.
    PickupPicking { order_id: OrderId, staff: String },
    /// The order waits in the pickup area at `location`; `missing` lines could not be picked.
    PickupReady {
        order_id: OrderId,
        location: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        missing: Vec<Gtin>,
    },
    /// The shopper collected the order; committed before staff were told to hand it over.
    PickupCollected {
        order_id: OrderId,
        device: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        staff: Option<String>,
        method: crate::pickup::RedeemMethod,
        /// Some lines were missing at ready time.
        partial: bool,
    },
    /// HQ's cancellation reached the store before any collection: the order is cancelled.
    PickupCancelApplied {
        order_id: OrderId,
        cancel_id: EventId,
    },
    /// HQ's cancellation reached the store after the order was collected: the collection
    /// stands, and HQ must settle it.
    PickupCancelConflict {
        order_id: OrderId,
        cancel_id: EventId,
        collected_at: UtcMillis,
        collected_by: String,
    },
    /// The order passed its expiry uncollected (store's hub-corrected time).
    PickupExpired { order_id: OrderId },
    /// A technician bound a shelf label to a product at a shelf position (replacing any
    /// earlier binding of that label).
    LabelBound {
        label: LabelId,
        gtin: Gtin,
        shelf: String,
    },
    /// A shelf label was taken off the shelf: it shows no product's price any more.
    LabelUnbound { label: LabelId },
    /// The label confirmed (by its content hash) that it shows price `version` of `gtin`.
    LabelConfirmed {
        label: LabelId,
        gtin: Gtin,
        version: u64,
        batch_id: BatchId,
    },
    /// "Label not updated": the label did not confirm price `version` of `gtin` before the
    /// store's deadline. The store keeps trying; a later `LabelConfirmed` clears it.
    LabelNotUpdated {
        label: LabelId,
        gtin: Gtin,
        version: u64,
        batch_id: BatchId,
        reason: String,
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
            EventBody::FootfallCounted(_) => "footfall_counted",
            EventBody::PickupReceived { .. } => "pickup_received",
            EventBody::PickupPicking { .. } => "pickup_picking",
            EventBody::PickupReady { .. } => "pickup_ready",
            EventBody::PickupCollected { .. } => "pickup_collected",
            EventBody::PickupCancelApplied { .. } => "pickup_cancel_applied",
            EventBody::PickupCancelConflict { .. } => "pickup_cancel_conflict",
            EventBody::PickupExpired { .. } => "pickup_expired",
            EventBody::LabelBound { .. } => "label_bound",
            EventBody::LabelUnbound { .. } => "label_unbound",
            EventBody::LabelConfirmed { .. } => "label_confirmed",
            EventBody::LabelNotUpdated { .. } => "label_not_updated",
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
    /// Per item; per kilogram when `weight_g` is set.
    pub unit_price: Money,
    /// The price version charged, for audit against the shelf.
    pub price_version: u64,
    /// What the line costs: the gross (see [`SaleLine::gross`]) less `discount`.
    pub line_total: Money,
    /// A weighed item: net grams (from the barcode or the scale); `qty` is then 1 and the gross
    /// is `unit_price` per kg times the weight, rounded half up to the minor unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_g: Option<u32>,
    /// Taken off the gross (a member price); never more than the gross.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discount: Option<Money>,
}

/// Heaviest weighed line: 100 kg.
pub const MAX_LINE_WEIGHT_G: u32 = 100_000;

/// The price of `grams` at `per_kg` minor units per kilogram, rounded half up (None on overflow).
pub fn weighed_price(per_kg: i64, grams: u32) -> Option<i64> {
    let p = i128::from(per_kg).checked_mul(i128::from(grams))?;
    i64::try_from((p + 500).div_euclid(1000)).ok()
}

impl SaleLine {
    /// A counted line at `unit_price`, with no discount.
    pub fn counted(gtin: Gtin, qty: u32, unit_price: Money, price_version: u64) -> Option<Self> {
        let line_total = unit_price.checked_mul(i64::from(qty)).ok()?;
        Some(SaleLine {
            gtin,
            qty,
            unit_price,
            price_version,
            line_total,
            weight_g: None,
            discount: None,
        })
    }

    /// How much the line takes off the store's stock: its quantity, or for a weighed line its
    /// grams (a product sold by weight is stocked in grams).
    pub fn stock_delta(&self) -> i64 {
        -i64::from(self.weight_g.unwrap_or(self.qty))
    }

    /// What the line costs before any discount (None on overflow).
    pub fn gross(&self) -> Option<i64> {
        match self.weight_g {
            None => self.unit_price.minor.checked_mul(i64::from(self.qty)),
            Some(g) => weighed_price(self.unit_price.minor, g),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payment {
    pub method: PaymentMethod,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Approved by the card terminal alone (store-and-forward), not yet by the acquirer: it
    /// counts against the store's offline caps until the hub holds the sale.
    #[serde(default, skip_serializing_if = "is_false")]
    pub offline: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
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
    #[error(
        "line {line}: line total does not equal unit price times quantity (or weight), less discount"
    )]
    LineTotal { line: usize },
    #[error("line {line}: a weighed line has quantity 1 and 1 g to {MAX_LINE_WEIGHT_G} g")]
    BadWeight { line: usize },
    #[error("line {line}: a discount must be between zero and the line's price")]
    Discount { line: usize },
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
            if l.weight_g.is_some_and(|g| g == 0 || g > MAX_LINE_WEIGHT_G)
                || (l.weight_g.is_some() && l.qty != 1)
            {
                return Err(SaleError::BadWeight { line });
            }
            let discount = match &l.discount {
                None => 0,
                Some(d) if d.currency != self.total.currency => return Err(SaleError::Currency),
                Some(d) => d.minor,
            };
            let gross = l.gross().ok_or(SaleError::LineTotal { line })?;
            if discount < 0 || discount > gross {
                return Err(SaleError::Discount { line });
            }
            if gross.checked_sub(discount) != Some(l.line_total.minor) {
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

/// Length of one footfall interval: 15 minutes, aligned to the UTC quarter hour.
pub const FOOTFALL_INTERVAL_MS: i64 = 15 * 60 * 1000;
/// Longest entrance-zone or camera name in a footfall event.
pub const MAX_FOOTFALL_NAME_CHARS: usize = 64;
/// Most cameras one footfall event may name as missing.
pub const MAX_FOOTFALL_CAMERAS: usize = 64;
/// Most people one entrance may count in one interval: 120 per minute for 15 minutes on each
/// of [`MAX_FOOTFALL_CAMERAS`] counting lines. Anything above is a broken counter.
pub const MAX_FOOTFALL_VISITORS: u64 = 120 * 15 * MAX_FOOTFALL_CAMERAS as u64;

/// People counted through one entrance zone in `[start, start + 15 min)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FootfallInterval {
    /// The entrance as the store names it; cameras on one entrance are summed.
    pub zone: String,
    pub start: UtcMillis,
    pub end: UtcMillis,
    /// People who came in.
    pub entered: u64,
    /// People who went out.
    pub exited: u64,
    /// The latest people-inside estimate a camera of the zone gave in the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occupancy: Option<u64>,
    /// Cameras of the zone that were offline or silent for part of the interval: their share is
    /// missing data, not zero visitors. Empty when every camera reported throughout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cameras_missing: Vec<String>,
}

/// Why a [`FootfallInterval`] is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FootfallEventError {
    #[error("zone name must be 1 to {MAX_FOOTFALL_NAME_CHARS} characters")]
    ZoneName,
    #[error("interval must start on a UTC quarter hour and last exactly 15 minutes")]
    Interval,
    #[error("more than {MAX_FOOTFALL_VISITORS} people in one interval")]
    TooMany,
    #[error(
        "at most {MAX_FOOTFALL_CAMERAS} missing cameras, each named in 1 to {MAX_FOOTFALL_NAME_CHARS} characters"
    )]
    Cameras,
}

impl FootfallInterval {
    /// Checks bounds and alignment (the hub re-checks what gateways send).
    pub fn validate(&self) -> Result<(), FootfallEventError> {
        let name_ok = |n: &str| !n.is_empty() && n.chars().count() <= MAX_FOOTFALL_NAME_CHARS;
        if !name_ok(&self.zone) {
            return Err(FootfallEventError::ZoneName);
        }
        if self.start.0.rem_euclid(FOOTFALL_INTERVAL_MS) != 0
            || self.end.0.checked_sub(self.start.0) != Some(FOOTFALL_INTERVAL_MS)
        {
            return Err(FootfallEventError::Interval);
        }
        let over = |n: Option<u64>| n.is_some_and(|n| n > MAX_FOOTFALL_VISITORS);
        if over(Some(self.entered)) || over(Some(self.exited)) || over(self.occupancy) {
            return Err(FootfallEventError::TooMany);
        }
        if self.cameras_missing.len() > MAX_FOOTFALL_CAMERAS
            || !self.cameras_missing.iter().all(|c| name_ok(c))
        {
            return Err(FootfallEventError::Cameras);
        }
        Ok(())
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
                weight_g: None,
                discount: None,
            }],
            total: Money::new(450, cny),
            payment: Payment {
                method: PaymentMethod::Card,
                reference: None,
                offline: false,
            },
        }
    }

    #[test]
    fn weighed_and_discounted_lines_add_up() {
        let cny = Currency::parse("CNY").unwrap();
        // 1.234 kg at 12.99/kg = 16.02966, rounded half up to 16.03; 5 % member discount 0.80.
        assert_eq!(weighed_price(1299, 1234), Some(1603));
        assert_eq!(weighed_price(1000, 1), Some(1)); // 0.001 * 10.00 = 0.01
        assert_eq!(weighed_price(999, 500), Some(500)); // 4.995 rounds up
        let mut s = sale();
        s.lines[0].qty = 1;
        s.lines[0].unit_price = Money::new(1299, cny);
        s.lines[0].weight_g = Some(1234);
        s.lines[0].discount = Some(Money::new(80, cny));
        s.lines[0].line_total = Money::new(1523, cny);
        s.total = Money::new(1523, cny);
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(
            s.lines[0].stock_delta(),
            -1234,
            "sold by weight, stocked in grams"
        );
        assert_eq!(sale().lines[0].stock_delta(), -3);
        // The JSON keeps the new fields only when set, so old lines read the same.
        let json = serde_json::to_string(&sale()).unwrap();
        assert!(
            !json.contains("weight_g") && !json.contains("discount") && !json.contains("offline")
        );

        let mut bad = s.clone();
        bad.lines[0].line_total = Money::new(1603, cny);
        assert_eq!(bad.validate(), Err(SaleError::LineTotal { line: 1 }));
        let mut bad = s.clone();
        bad.lines[0].qty = 2;
        assert_eq!(bad.validate(), Err(SaleError::BadWeight { line: 1 }));
        let mut bad = s.clone();
        bad.lines[0].weight_g = Some(MAX_LINE_WEIGHT_G + 1);
        assert_eq!(bad.validate(), Err(SaleError::BadWeight { line: 1 }));
        let mut bad = s.clone();
        bad.lines[0].discount = Some(Money::new(-1, cny));
        assert_eq!(bad.validate(), Err(SaleError::Discount { line: 1 }));
        let mut bad = s;
        bad.lines[0].discount = Some(Money::new(1604, cny));
        assert_eq!(bad.validate(), Err(SaleError::Discount { line: 1 }));
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

    fn footfall() -> FootfallInterval {
        FootfallInterval {
            zone: "Main entrance".to_string(),
            start: UtcMillis(FOOTFALL_INTERVAL_MS * 1_000),
            end: UtcMillis(FOOTFALL_INTERVAL_MS * 1_001),
            entered: 12,
            exited: 9,
            occupancy: None,
            cameras_missing: vec![],
        }
    }

    #[test]
    fn footfall_event_validates_bounds_and_alignment() {
        assert_eq!(footfall().validate(), Ok(()));
        let body = EventBody::FootfallCounted(footfall());
        assert_eq!(body.kind(), "footfall_counted");
        let json = serde_json::to_string(&body).unwrap();
        assert!(
            json.starts_with(r#"{"type":"footfall_counted","zone":"Main entrance""#),
            "{json}"
        );
        assert!(
            !json.contains("cameras_missing"),
            "empty list omitted: {json}"
        );
        assert_eq!(serde_json::from_str::<EventBody>(&json).unwrap(), body);

        let mut f = footfall();
        f.start.0 += 1;
        f.end.0 += 1;
        assert_eq!(f.validate(), Err(FootfallEventError::Interval));
        let mut f = footfall();
        f.end.0 += FOOTFALL_INTERVAL_MS;
        assert_eq!(f.validate(), Err(FootfallEventError::Interval));
        let mut f = footfall();
        f.zone.clear();
        assert_eq!(f.validate(), Err(FootfallEventError::ZoneName));
        let mut f = footfall();
        f.entered = MAX_FOOTFALL_VISITORS + 1;
        assert_eq!(f.validate(), Err(FootfallEventError::TooMany));
        let mut f = footfall();
        f.occupancy = Some(u64::MAX);
        assert_eq!(f.validate(), Err(FootfallEventError::TooMany));
        let mut f = footfall();
        f.cameras_missing = vec![String::new()];
        assert_eq!(f.validate(), Err(FootfallEventError::Cameras));
    }
}
