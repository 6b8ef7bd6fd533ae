//! Click-and-collect at the hub: pickup orders from HQ's order system, their lifecycle as the
//! assigned store reports it, and the notifications HQ asked for.
//!
//! Pure: the storage keeps the rows; this module decides what a request or an event means.
//!
//! - [`NewOrder`] is a validated `POST /v1/orders` request, and its [`NewOrder::fingerprint`] is
//!   what makes the request idempotent by order id.
//! - [`machine`] is the one definition of how an order moves: a store event, HQ's cancellation
//!   or the hub's expiry sweep gives an [`machine::Effect`] (status, history, stock, conflict,
//!   webhook) which both storage backends apply in the same transaction as the event.
//! - [`token`] signs QR tokens and seals fallback codes; [`webhook`] delivers the outbox.
//!
//! Rules (the contract between hub and store, `contract-pickup.md`):
//! - The assigned store is the authority once it holds the order. A collection the store
//!   committed stands, whatever HQ did meanwhile: a cancellation or a hub-side expiry it raced
//!   is recorded as a conflict and the order shows as collected.
//! - A reservation lowers available stock; cancel and expiry release it; a collection turns it
//!   into stock deltas keyed by the collecting event's id.
use aisle_protocol::pickup::{MAX_ORDER_LINES, RedeemMethod};
use aisle_protocol::sync::MAX_LINE_QTY;
use aisle_protocol::{EventId, Gtin, OrderId, StoreId, UtcMillis};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::storage::{DAY_MS, StorageError};

pub mod machine;
pub mod sweeper;
pub mod token;
pub mod webhook;

/// How a hub runs click-and-collect: where the webhook secret comes from, how webhooks are
/// delivered, how the expiry sweeper runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PickupSettings {
    /// The HMAC key of webhook signatures (`AISLE_WEBHOOK_SECRET`). `None`: the secret the hub
    /// generated and stored in its database on first use (`aisle-hub webhook secret` shows it).
    pub webhook_secret: Option<webhook::WebhookSecret>,
    pub webhooks: webhook::WebhookSettings,
    pub sweep: sweeper::SweepSettings,
}

/// Furthest ahead an order's `pickup_by` may be.
pub const MAX_PICKUP_AHEAD_MS: i64 = 14 * DAY_MS;
/// How long after `expires_at` the hub waits for the store before it expires an order itself.
pub const DEFAULT_EXPIRY_GRACE_MS: i64 = DAY_MS;
/// Longest webhook URL.
pub const MAX_WEBHOOK_URL_CHARS: usize = 2_000;
/// Longest cancellation reason.
pub const MAX_REASON_CHARS: usize = 200;

/// Where an order is in its life. `placed` to `ready` are open; the rest are final, except that
/// the store's word can still turn a cancelled or expired order into a collected one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// HQ has the order; the store has not confirmed it yet.
    Placed,
    /// The store's ledger holds the order.
    SentToStore,
    /// Staff are picking it.
    Picking,
    /// It waits in the pickup area.
    Ready,
    Collected,
    /// Collected with lines that were missing at ready time.
    PartiallyCollected,
    Cancelled,
    Expired,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 8] = [
        OrderStatus::Placed,
        OrderStatus::SentToStore,
        OrderStatus::Picking,
        OrderStatus::Ready,
        OrderStatus::Collected,
        OrderStatus::PartiallyCollected,
        OrderStatus::Cancelled,
        OrderStatus::Expired,
    ];
    /// The statuses in which the stock is still reserved and the shopper may still come.
    pub const OPEN: [OrderStatus; 4] = [
        OrderStatus::Placed,
        OrderStatus::SentToStore,
        OrderStatus::Picking,
        OrderStatus::Ready,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Placed => "placed",
            OrderStatus::SentToStore => "sent_to_store",
            OrderStatus::Picking => "picking",
            OrderStatus::Ready => "ready",
            OrderStatus::Collected => "collected",
            OrderStatus::PartiallyCollected => "partially_collected",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        OrderStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "status must be one of placed, sent_to_store, picking, ready, collected, partially_collected, cancelled, expired; got '{}'",
                    s.chars().take(32).collect::<String>()
                )
            })
    }

    pub fn is_open(self) -> bool {
        OrderStatus::OPEN.contains(&self)
    }

    pub fn is_collected(self) -> bool {
        matches!(
            self,
            OrderStatus::Collected | OrderStatus::PartiallyCollected
        )
    }
}

/// Who moved an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Hq,
    Store,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Hq => "hq",
            Source::Store => "store",
        }
    }

    pub fn parse(s: &str) -> Result<Self, StorageError> {
        match s {
            "hq" => Ok(Source::Hq),
            "store" => Ok(Source::Store),
            other => Err(StorageError::Corrupt(format!("unknown source '{other}'"))),
        }
    }
}

/// One line of an order as HQ asked for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OrderLineRequest {
    pub gtin: Gtin,
    pub qty: u32,
}

/// A validated order request (shape only: whether the store, products and stock exist is
/// decided in the storing transaction, after the idempotency check).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOrder {
    pub order_id: OrderId,
    pub store: StoreId,
    pub lines: Vec<OrderLineRequest>,
    pub pickup_by: UtcMillis,
    pub webhook: Option<String>,
}

impl NewOrder {
    /// Checks the lines (1 to 100, quantities 1 to 9999, each GTIN once) and the webhook URL.
    pub fn new(
        order_id: OrderId,
        store: StoreId,
        lines: Vec<OrderLineRequest>,
        pickup_by: UtcMillis,
        webhook: Option<String>,
    ) -> Result<Self, StorageError> {
        let bad = |m: String| Err(StorageError::InvalidInput(m));
        if lines.is_empty() {
            return bad("an order needs at least one line".into());
        }
        if lines.len() > MAX_ORDER_LINES {
            return bad(format!(
                "an order may have at most {MAX_ORDER_LINES} lines, got {}",
                lines.len()
            ));
        }
        for (i, line) in lines.iter().enumerate() {
            if line.qty == 0 || line.qty > MAX_LINE_QTY {
                return bad(format!(
                    "line {}: quantity must be 1 to {MAX_LINE_QTY}, got {}",
                    i + 1,
                    line.qty
                ));
            }
            if let Some(first) = lines[..i].iter().position(|l| l.gtin == line.gtin) {
                return bad(format!(
                    "line {}: GTIN {} is already on line {}; put the whole quantity on one line",
                    i + 1,
                    line.gtin,
                    first + 1
                ));
            }
        }
        if let Some(url) = &webhook {
            check_webhook_url(url)
                .map_err(|m| StorageError::InvalidInput(format!("notify.webhook: {m}")))?;
        }
        Ok(NewOrder {
            order_id,
            store,
            lines,
            pickup_by,
            webhook,
        })
    }

    /// Hex SHA-256 of the request's canonical form: two requests for one order id are the
    /// same request exactly when their fingerprints are equal.
    pub fn fingerprint(&self) -> String {
        #[derive(Serialize)]
        struct Canonical<'a> {
            order_id: &'a str,
            store: &'a str,
            lines: &'a [OrderLineRequest],
            pickup_by: i64,
            webhook: Option<&'a str>,
        }
        let canonical = Canonical {
            order_id: self.order_id.as_str(),
            store: self.store.as_str(),
            lines: &self.lines,
            pickup_by: self.pickup_by.0,
            webhook: self.webhook.as_deref(),
        };
        let json = serde_json::to_vec(&canonical).unwrap_or_default();
        hex::encode(Sha256::digest(&json))
    }
}

/// `pickup_by` must lie in the future and at most 14 days ahead of `now`.
pub fn check_pickup_window(pickup_by: UtcMillis, now: UtcMillis) -> Result<(), StorageError> {
    if pickup_by <= now {
        return Err(StorageError::InvalidInput(format!(
            "pickup_by {} is not in the future (hub time {})",
            crate::timefmt::format_rfc3339(pickup_by),
            crate::timefmt::format_rfc3339(now)
        )));
    }
    if pickup_by.0 - now.0 > MAX_PICKUP_AHEAD_MS {
        return Err(StorageError::InvalidInput(format!(
            "pickup_by {} is more than 14 days ahead",
            crate::timefmt::format_rfc3339(pickup_by)
        )));
    }
    Ok(())
}

/// A webhook URL the hub can deliver to: `http://host[:port]/path`, at most 2000 characters.
///
/// The hub is built without TLS (reqwest with no TLS backend), so `https://` is refused here
/// rather than accepted and never delivered.
pub fn check_webhook_url(url: &str) -> Result<(), String> {
    if url.is_empty() || url.chars().count() > MAX_WEBHOOK_URL_CHARS {
        return Err(format!("a URL of 1 to {MAX_WEBHOOK_URL_CHARS} characters"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
    match parsed.scheme() {
        "http" => {}
        "https" => {
            return Err(
                "this hub delivers webhooks over plain http only (it is built without TLS); give an http:// URL, e.g. of a TLS-terminating relay"
                    .into(),
            );
        }
        other => return Err(format!("scheme must be http, got '{other}'")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    Ok(())
}

/// How an order was collected, as the store reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collection {
    pub at: UtcMillis,
    /// The redeeming device, or who the store says collected it (from a cancel conflict).
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staff: Option<String>,
    /// Unknown when the hub learnt of the collection only from a cancel conflict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<RedeemMethod>,
    pub partial: bool,
    /// The store event that reported it (its stock deltas are keyed by this id).
    pub event_id: EventId,
}

/// What kind of race or surprise an order met.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    /// HQ cancelled, but the store had collected the order before the cancellation reached it.
    CollectedAfterCancel,
    /// The hub expired the order (no word from the store), then the store reported a collection.
    CollectedAfterExpiry,
    /// The store reported a second collection of an order already collected.
    CollectedTwice,
}

impl ConflictKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictKind::CollectedAfterCancel => "collected_after_cancel",
            ConflictKind::CollectedAfterExpiry => "collected_after_expiry",
            ConflictKind::CollectedTwice => "collected_twice",
        }
    }

    pub fn parse(s: &str) -> Result<Self, StorageError> {
        [
            ConflictKind::CollectedAfterCancel,
            ConflictKind::CollectedAfterExpiry,
            ConflictKind::CollectedTwice,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| StorageError::Corrupt(format!("unknown conflict kind '{s}'")))
    }
}

/// The notifications HQ's order system receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookKind {
    Ready,
    Collected,
    Cancelled,
    Expired,
}

impl WebhookKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookKind::Ready => "ready",
            WebhookKind::Collected => "collected",
            WebhookKind::Cancelled => "cancelled",
            WebhookKind::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Result<Self, StorageError> {
        [
            WebhookKind::Ready,
            WebhookKind::Collected,
            WebhookKind::Cancelled,
            WebhookKind::Expired,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| StorageError::Corrupt(format!("unknown webhook type '{s}'")))
    }
}

/// The creation answer of an order: what `POST /v1/orders` answers, the first time and on an
/// identical retry alike.
#[derive(Clone, PartialEq, Eq)]
pub struct PlacedOrder {
    pub order_id: OrderId,
    pub store: StoreId,
    pub placed_at: UtcMillis,
    pub pickup_by: UtcMillis,
    pub expires_at: UtcMillis,
    /// The QR token (a bearer credential: never logged).
    pub qr: String,
    /// The fallback code (never logged).
    pub code: aisle_protocol::pickup::FallbackCode,
}

impl std::fmt::Debug for PlacedOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlacedOrder")
            .field("order_id", &self.order_id)
            .field("store", &self.store)
            .field("placed_at", &self.placed_at)
            .field("pickup_by", &self.pickup_by)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What storing an order produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderReceipt {
    /// False for an identical retry of an order stored before.
    pub created: bool,
    pub order: PlacedOrder,
}

/// What a cancellation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CancelReceipt {
    /// False when the order had been cancelled before (a retry).
    pub cancelled_now: bool,
    pub cancel_id: Option<EventId>,
}

/// One line of an order as HQ reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderLine {
    pub gtin: Gtin,
    pub qty: u32,
    pub name: String,
    /// The store could not pick it (reported with `ready`).
    pub missing: bool,
}

/// One entry of an order's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub status: OrderStatus,
    pub at: UtcMillis,
    pub source: Source,
    /// The store event that caused it.
    pub event_id: Option<EventId>,
    pub detail: Option<String>,
}

/// A conflict HQ should look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub kind: ConflictKind,
    pub at: UtcMillis,
    pub event_id: Option<EventId>,
    pub detail: String,
}

/// A webhook of the order and how its delivery goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub event_id: EventId,
    pub kind: WebhookKind,
    pub created_at: UtcMillis,
    pub attempts: u32,
    pub delivered_at: Option<UtcMillis>,
    pub last_error: Option<String>,
}

/// HQ's cancellation of an order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cancellation {
    pub cancel_id: EventId,
    pub requested_at: UtcMillis,
    pub reason: Option<String>,
}

/// Everything the hub knows about an order (`GET /v1/orders/{id}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderView {
    pub order_id: OrderId,
    pub store: StoreId,
    pub status: OrderStatus,
    pub placed_at: UtcMillis,
    pub pickup_by: UtcMillis,
    pub expires_at: UtcMillis,
    pub webhook: Option<String>,
    pub location: Option<String>,
    pub lines: Vec<OrderLine>,
    pub collected: Option<Collection>,
    pub cancellation: Option<Cancellation>,
    pub history: Vec<HistoryEntry>,
    pub conflicts: Vec<Conflict>,
    pub notifications: Vec<Notification>,
}

/// An order in a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderSummary {
    pub order_id: OrderId,
    pub store: StoreId,
    pub status: OrderStatus,
    pub placed_at: UtcMillis,
    pub pickup_by: UtcMillis,
    pub lines: u32,
}

/// Which orders to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrderFilter {
    pub store: Option<StoreId>,
    pub status: Option<OrderStatus>,
    /// Most orders to list (newest first); 0 means the default of 100.
    pub limit: u32,
}

/// Most orders one listing answers.
pub const MAX_ORDER_LIST: u32 = 1_000;

impl OrderFilter {
    pub fn limit(&self) -> i64 {
        match self.limit {
            0 => 100,
            n => i64::from(n.min(MAX_ORDER_LIST)),
        }
    }
}

/// A webhook claimed for delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookDelivery {
    pub event_id: EventId,
    pub order_id: OrderId,
    pub kind: WebhookKind,
    pub url: String,
    /// The exact bytes to send (and sign).
    pub body: String,
    /// Attempts so far, this one included.
    pub attempts: u32,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn order(lines: Vec<(u64, u32)>, webhook: Option<&str>) -> Result<NewOrder, StorageError> {
        NewOrder::new(
            OrderId::parse("web-1").unwrap(),
            StoreId::parse("S001").unwrap(),
            lines
                .into_iter()
                .map(|(n, qty)| OrderLineRequest {
                    gtin: Gtin::from_index(n).unwrap(),
                    qty,
                })
                .collect(),
            UtcMillis(1_000),
            webhook.map(str::to_owned),
        )
    }

    fn refused(r: Result<NewOrder, StorageError>, needle: &str) {
        match r {
            Err(StorageError::InvalidInput(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("expected a refusal with '{needle}', got {other:?}"),
        }
    }

    #[test]
    fn order_requests_are_checked() {
        assert!(order(vec![(1, 1)], Some("http://oms.example:8080/hooks")).is_ok());
        refused(order(vec![], None), "at least one line");
        refused(
            order((1..=101).map(|n| (n, 1)).collect(), None),
            "at most 100 lines, got 101",
        );
        refused(order(vec![(1, 0)], None), "line 1: quantity");
        refused(order(vec![(1, 1), (2, 10_000)], None), "line 2: quantity");
        refused(order(vec![(1, 1), (2, 1), (1, 2)], None), "line 3: GTIN");
        refused(
            order(vec![(1, 1)], Some("https://oms/x")),
            "plain http only",
        );
        refused(order(vec![(1, 1)], Some("ftp://oms/x")), "scheme");
        refused(order(vec![(1, 1)], Some("not a url")), "not a URL");
        refused(
            order(
                vec![(1, 1)],
                Some(&format!("http://h/{}", "a".repeat(2000))),
            ),
            "1 to 2000",
        );
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let a = order(vec![(1, 1), (2, 2)], None).unwrap();
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
        let mut b = a.clone();
        b.lines[1].qty = 3;
        assert_ne!(a.fingerprint(), b.fingerprint());
        let mut c = a.clone();
        c.webhook = Some("http://h/".into());
        assert_ne!(a.fingerprint(), c.fingerprint());
        let mut d = a.clone();
        d.lines.reverse();
        assert_ne!(a.fingerprint(), d.fingerprint(), "line order is part of it");
    }

    #[test]
    fn pickup_window_is_future_and_at_most_14_days() {
        let now = UtcMillis(1_795_305_600_000);
        assert!(check_pickup_window(UtcMillis(now.0 + 1), now).is_ok());
        assert!(check_pickup_window(UtcMillis(now.0 + MAX_PICKUP_AHEAD_MS), now).is_ok());
        assert!(check_pickup_window(now, now).is_err());
        assert!(check_pickup_window(UtcMillis(now.0 + MAX_PICKUP_AHEAD_MS + 1), now).is_err());
    }

    #[test]
    fn names_round_trip() {
        for s in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(s.as_str()).unwrap(), s);
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert!(OrderStatus::parse("done").is_err());
        for k in [
            ConflictKind::CollectedAfterCancel,
            ConflictKind::CollectedAfterExpiry,
            ConflictKind::CollectedTwice,
        ] {
            assert_eq!(ConflictKind::parse(k.as_str()).unwrap(), k);
        }
        for k in [
            WebhookKind::Ready,
            WebhookKind::Collected,
            WebhookKind::Cancelled,
            WebhookKind::Expired,
        ] {
            assert_eq!(WebhookKind::parse(k.as_str()).unwrap(), k);
        }
    }
}
