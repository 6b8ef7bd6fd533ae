//! The hub's storage: one trait, [`HubStorage`], with an embedded SQLite implementation and a
//! PostgreSQL one, both held to the same conformance suite (`tests/conformance.rs`).
//!
//! Invariants every implementation keeps:
//! - A price batch is one transaction: all of its prices, versions and changes, or nothing.
//! - Versions rise by one per (store, GTIN) with every batch that prices it.
//! - Changefeed cursors never skip: a change never commits with a lower seq than one already
//!   visible to a reader (PostgreSQL serialises changefeed writers; SQLite has one writer).
//! - Uploads are stored under UNIQUE (gateway, seq) with the gateway's row locked, and every side
//!   effect (sale, stock delta, batch progress) is keyed by event id: replays change nothing.
use std::fmt;
use std::sync::Arc;

use aisle_protocol::sync::{
    ChangeBody, ChangePage, EventBody, LedgerEvent, MAX_EVENTS_PER_UPLOAD, SaleRecord,
    StockAdjustment, UploadAck,
};
use aisle_protocol::{BatchId, Currency, EventId, GatewayId, Gtin, StoreId, UtcMillis};
use async_trait::async_trait;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::changefeed::ChangeSubscription;
use crate::price_batch::PriceBatch;

pub mod postgres;
pub mod sqlite;

pub use postgres::PgStorage;
pub use sqlite::SqliteStorage;

/// Schema version this build writes; a database with a higher one is refused.
pub const SCHEMA_VERSION: i64 = 1;
/// Largest absolute stock delta in one adjustment.
pub const MAX_STOCK_DELTA: i64 = 1_000_000;
/// Longest adjustment reason, in characters.
pub const MAX_REASON_CHARS: usize = 200;
/// Longest store name, in characters.
pub const MAX_STORE_NAME_CHARS: usize = 200;
/// Most changes (items x stores) one price batch may write.
pub const MAX_BATCH_CHANGES: usize = 10_000_000;

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database URL must be sqlite://PATH or postgres://..., got '{0}'")]
    UnsupportedUrl(String),
    #[error("{0}")]
    InvalidInput(String),
    #[error("store {0} already exists")]
    StoreExists(StoreId),
    #[error("unknown store {0}")]
    UnknownStore(StoreId),
    #[error("unknown gateway {0}")]
    UnknownGateway(GatewayId),
    #[error("unknown price batch {0}")]
    UnknownBatch(BatchId),
    /// Unknown gateway, wrong secret or revoked: deliberately indistinguishable to the caller.
    #[error("the gateway credential is not valid")]
    BadCredential,
    #[error("there are no stores to price")]
    NoStores,
    #[error(
        "{item}: price currency {currency} does not match store {store}'s currency {store_currency}"
    )]
    CurrencyMismatch {
        item: String,
        currency: Currency,
        store: StoreId,
        store_currency: Currency,
    },
    #[error(
        "the batch would write {0} changes (items x stores), over the limit of {MAX_BATCH_CHANGES}; split it"
    )]
    BatchTooLarge(usize),
    #[error(
        "upload does not continue this gateway's events: the next seq the hub needs is {expected_from}"
    )]
    SeqGap { expected_from: u64 },
    #[error("event seq {seq}: {reason}")]
    InvalidEvent { seq: u64, reason: String },
    #[error(
        "event seq {seq} is not the event the hub already stored under that seq for this gateway"
    )]
    EventConflict { seq: u64 },
    #[error("stock adjustment {0} was already recorded with different content")]
    AdjustmentConflict(EventId),
    #[error(
        "cursor {cursor} is beyond this hub's changefeed (latest {head}); start again from cursor 0"
    )]
    CursorAhead { cursor: u64, head: u64 },
    #[error("database schema version {found} is newer than this hub supports ({SCHEMA_VERSION})")]
    SchemaTooNew { found: i64 },
    #[error("stored data is not readable: {0}")]
    Corrupt(String),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("storage worker failed: {0}")]
    Worker(String),
}

/// A store to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewStore {
    pub id: StoreId,
    pub name: String,
    pub currency: Currency,
}

impl NewStore {
    pub fn new(id: StoreId, name: &str, currency: Currency) -> Result<Self, StorageError> {
        let name = name.trim();
        if name.is_empty()
            || name.chars().count() > MAX_STORE_NAME_CHARS
            || name.chars().any(char::is_control)
        {
            return Err(StorageError::InvalidInput(format!(
                "store name must be 1 to {MAX_STORE_NAME_CHARS} characters without control characters"
            )));
        }
        Ok(NewStore {
            id,
            name: name.to_owned(),
            currency,
        })
    }
}

/// A store as the hub knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Store {
    pub id: StoreId,
    pub name: String,
    pub currency: Currency,
    pub created_at: UtcMillis,
}

/// A gateway's credential: shown once at creation; the hub keeps only sha256(secret).
#[derive(Clone, PartialEq, Eq)]
pub struct GatewayCredential {
    pub gateway_id: GatewayId,
    secret: String,
}

impl GatewayCredential {
    /// A new gateway id for `store` (`gw-S001-1a2b3c4d`) and a secret of 32 random bytes as hex.
    pub fn generate(store: &StoreId) -> Result<Self, StorageError> {
        let mut rng = rand::rng();
        let mut tag = [0u8; 4];
        rng.fill_bytes(&mut tag);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let gateway_id = GatewayId::parse(&format!("gw-{store}-{}", hex::encode(tag)))
            .map_err(|e| StorageError::InvalidInput(e.to_string()))?;
        Ok(GatewayCredential {
            gateway_id,
            secret: hex::encode(secret),
        })
    }

    /// Splits `<gateway_id>.<secret>`; the secret must be 64 lowercase hex digits.
    pub fn parse(s: &str) -> Result<Self, StorageError> {
        let (id, secret) = s.rsplit_once('.').ok_or(StorageError::BadCredential)?;
        let gateway_id = GatewayId::parse(id).map_err(|_| StorageError::BadCredential)?;
        let well_formed = secret.len() == 64
            && secret
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !well_formed {
            return Err(StorageError::BadCredential);
        }
        Ok(GatewayCredential {
            gateway_id,
            secret: secret.to_owned(),
        })
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// What the hub stores instead of the secret.
    pub fn secret_hash(&self) -> [u8; 32] {
        Sha256::digest(self.secret.as_bytes()).into()
    }
}

impl fmt::Display for GatewayCredential {
    /// The one-line form gateways send as `Authorization: Bearer <gateway_id>.<secret>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.gateway_id, self.secret)
    }
}

impl fmt::Debug for GatewayCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GatewayCredential({}.<redacted>)", self.gateway_id)
    }
}

/// Compares two secrets' hashes without an early exit, so timing tells nothing.
pub fn hashes_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A gateway that proved its credential, and the one store it may read and write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthenticatedGateway {
    pub gateway_id: GatewayId,
    pub store: StoreId,
}

/// What storing a price batch produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchReceipt {
    pub batch_id: BatchId,
    pub created_at: UtcMillis,
    pub effective_at: UtcMillis,
    pub items: usize,
    pub stores: Vec<StoreId>,
}

/// A batch and how far each store got with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchProgress {
    pub batch_id: BatchId,
    pub created_at: UtcMillis,
    pub effective_at: UtcMillis,
    pub items: u64,
    pub stores: Vec<StoreProgress>,
}

/// Progress of one batch at one store: distinct GTINs the store reported staged / active.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreProgress {
    pub store: StoreId,
    pub items: u64,
    pub staged: u64,
    pub active: u64,
}

/// Where a sales read starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SalesSince {
    All,
    /// After this hub_seq (exclusive).
    Cursor(u64),
    /// Sold at or after this time.
    Time(UtcMillis),
}

/// A sale as the hub stored it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaleEntry {
    pub hub_seq: u64,
    pub event_id: EventId,
    pub gateway: GatewayId,
    pub sold_at: UtcMillis,
    pub record: SaleRecord,
}

/// A page of sales; `next` is the hub_seq cursor to continue from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SalesPage {
    pub sales: Vec<SaleEntry>,
    pub next: u64,
    pub more: bool,
}

/// Stock on hand of one GTIN at one store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StockLevel {
    pub gtin: Gtin,
    pub on_hand: i64,
}

/// A stock adjustment from HQ (goods received, a count, a reservation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewStockAdjustment {
    pub adjustment_id: EventId,
    pub gtin: Gtin,
    pub delta: i64,
    pub reason: String,
}

impl NewStockAdjustment {
    /// Validates the bounds; `adjustment_id` absent -> a fresh random one.
    pub fn new(
        adjustment_id: Option<EventId>,
        gtin: Gtin,
        delta: i64,
        reason: &str,
    ) -> Result<Self, StorageError> {
        if delta == 0 || delta.abs() > MAX_STOCK_DELTA {
            return Err(StorageError::InvalidInput(format!(
                "delta must be non-zero and at most {MAX_STOCK_DELTA} either way, got {delta}"
            )));
        }
        let reason = reason.trim();
        if reason.is_empty()
            || reason.chars().count() > MAX_REASON_CHARS
            || reason.chars().any(char::is_control)
        {
            return Err(StorageError::InvalidInput(format!(
                "reason must be 1 to {MAX_REASON_CHARS} characters without control characters"
            )));
        }
        let adjustment_id = adjustment_id.unwrap_or_else(|| {
            let mut b = [0u8; 16];
            rand::rng().fill_bytes(&mut b);
            EventId::from_bytes(b)
        });
        Ok(NewStockAdjustment {
            adjustment_id,
            gtin,
            delta,
            reason: reason.to_owned(),
        })
    }

    pub fn to_change(&self) -> StockAdjustment {
        StockAdjustment {
            adjustment_id: self.adjustment_id,
            gtin: self.gtin,
            delta: self.delta,
            reason: self.reason.clone(),
        }
    }
}

/// A recorded stock adjustment and the changefeed seq that carries it to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdjustmentReceipt {
    pub store: StoreId,
    pub adjustment: StockAdjustment,
    pub seq: u64,
    /// False when the same adjustment had been recorded before (an idempotent retry).
    pub created: bool,
}

/// What compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Superseded price changes deleted.
    pub removed: u64,
    /// Changes removed per store.
    pub per_store: Vec<(StoreId, u64)>,
}

/// Which engine a storage runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The hub's storage. Every method is one transaction.
#[async_trait]
pub trait HubStorage: Send + Sync + fmt::Debug {
    fn backend(&self) -> Backend;

    /// Checks the database answers.
    async fn health(&self) -> Result<(), StorageError>;

    async fn create_store(&self, store: &NewStore) -> Result<Store, StorageError>;

    async fn store(&self, id: &StoreId) -> Result<Option<Store>, StorageError>;

    async fn list_stores(&self) -> Result<Vec<Store>, StorageError>;

    /// Creates a gateway bound to `store`; the returned credential is the only copy of the secret.
    async fn create_gateway(&self, store: &StoreId) -> Result<GatewayCredential, StorageError>;

    /// Checks `<gateway_id>.<secret>`; unknown, wrong or revoked -> [`StorageError::BadCredential`].
    async fn authenticate_gateway(
        &self,
        credential: &str,
    ) -> Result<AuthenticatedGateway, StorageError>;

    /// Revokes a gateway: its credential stops working at once.
    async fn revoke_gateway(&self, gateway: &GatewayId) -> Result<(), StorageError>;

    /// Stores a batch: for each store and item, version = max(previous + 1, creation time in ms) and one price change.
    async fn create_price_batch(&self, batch: &PriceBatch) -> Result<BatchReceipt, StorageError>;

    async fn batch_progress(&self, batch: &BatchId) -> Result<BatchProgress, StorageError>;

    /// Up to `limit` changes of `store` after `cursor`, in seq order. Cursor 0 is the beginning;
    /// a cursor beyond the changefeed's head (a hub restored from an older backup, or another
    /// hub) -> [`StorageError::CursorAhead`]: the gateway starts again from 0.
    async fn changes_after(
        &self,
        store: &StoreId,
        cursor: u64,
        limit: u32,
    ) -> Result<ChangePage, StorageError>;

    /// Stores an upload of the gateway's ledger events (see `aisle_protocol::sync`).
    async fn ingest_events(
        &self,
        gateway: &GatewayId,
        events: &[LedgerEvent],
    ) -> Result<UploadAck, StorageError>;

    async fn sales_since(
        &self,
        store: &StoreId,
        since: SalesSince,
        limit: u32,
    ) -> Result<SalesPage, StorageError>;

    /// Sum of every stock delta of `gtin` at `store` (0 if none).
    async fn stock(&self, store: &StoreId, gtin: &Gtin) -> Result<i64, StorageError>;

    /// Stock of every GTIN with any delta at `store`, in GTIN order.
    async fn stock_levels(&self, store: &StoreId) -> Result<Vec<StockLevel>, StorageError>;

    /// Records an HQ stock adjustment (idempotent by adjustment id) and its change for the store.
    async fn add_stock_adjustment(
        &self,
        store: &StoreId,
        adjustment: &NewStockAdjustment,
    ) -> Result<AdjustmentReceipt, StorageError>;

    /// Deletes price changes superseded by a higher version of the same (store, GTIN). No cursor
    /// is invalidated: a deleted row's successor has a higher seq, so a gateway behind the
    /// compaction still reads the newest version (highest version wins).
    async fn compact(&self) -> Result<CompactionReport, StorageError>;

    /// A doorbell that rings after changes for `store` commit (long-polls wait on it).
    fn subscribe(&self, store: &StoreId) -> ChangeSubscription;
}

/// Opens (and migrates) the database at `url`: `sqlite://PATH` or `postgres://...`.
pub async fn open(url: &str) -> Result<Arc<dyn HubStorage>, StorageError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(StorageError::UnsupportedUrl(url.to_owned()));
        }
        Ok(Arc::new(SqliteStorage::open(path).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStorage::open(url).await?))
    } else {
        Err(StorageError::UnsupportedUrl(redact_url(url)))
    }
}

/// The URL with any password replaced, safe for logs and messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.chars().take(100).collect();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

// ---- shared pieces of both implementations ----

pub(crate) fn now() -> UtcMillis {
    UtcMillis::now()
}

pub(crate) fn new_batch_id() -> Result<BatchId, StorageError> {
    let mut b = [0u8; 8];
    rand::rng().fill_bytes(&mut b);
    BatchId::parse(&format!("pb-{}", hex::encode(b)))
        .map_err(|e| StorageError::InvalidInput(e.to_string()))
}

pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64, StorageError> {
    i64::try_from(v).map_err(|_| StorageError::InvalidInput(format!("{what} {v} is out of range")))
}

pub(crate) fn to_u64(v: i64, what: &str) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(|_| StorageError::Corrupt(format!("{what} {v} is negative")))
}

pub(crate) fn parse_store_id(s: &str) -> Result<StoreId, StorageError> {
    StoreId::parse(s).map_err(|e| StorageError::Corrupt(e.to_string()))
}

pub(crate) fn parse_gateway_id(s: &str) -> Result<GatewayId, StorageError> {
    GatewayId::parse(s).map_err(|e| StorageError::Corrupt(e.to_string()))
}

pub(crate) fn parse_gtin(s: &str) -> Result<Gtin, StorageError> {
    Gtin::parse(s).map_err(|e| StorageError::Corrupt(e.to_string()))
}

pub(crate) fn parse_currency(s: &str) -> Result<Currency, StorageError> {
    Currency::parse(s).map_err(|e| StorageError::Corrupt(e.to_string()))
}

pub(crate) fn parse_event_id(s: &str) -> Result<EventId, StorageError> {
    EventId::parse(s).map_err(|e| StorageError::Corrupt(e.to_string()))
}

pub(crate) fn decode_change(
    seq: i64,
    body: &str,
) -> Result<aisle_protocol::sync::Change, StorageError> {
    let body: ChangeBody = serde_json::from_str(body)
        .map_err(|e| StorageError::Corrupt(format!("change {seq}: {e}")))?;
    Ok(aisle_protocol::sync::Change {
        seq: to_u64(seq, "change seq")?,
        body,
    })
}

pub(crate) fn encode_json<T: serde::Serialize>(v: &T) -> Result<String, StorageError> {
    serde_json::to_string(v).map_err(|e| StorageError::Corrupt(e.to_string()))
}

pub(crate) fn decode_sale(
    hub_seq: i64,
    event_id: &str,
    gateway: &str,
    sold_at: i64,
    record: &str,
) -> Result<SaleEntry, StorageError> {
    Ok(SaleEntry {
        hub_seq: to_u64(hub_seq, "hub_seq")?,
        event_id: parse_event_id(event_id)?,
        gateway: parse_gateway_id(gateway)?,
        sold_at: UtcMillis(sold_at),
        record: serde_json::from_str(record)
            .map_err(|e| StorageError::Corrupt(format!("sale {event_id}: {e}")))?,
    })
}

/// Checks a price batch against the stores it resolves to (inside the storing transaction).
pub(crate) fn check_batch_against_stores(
    batch: &PriceBatch,
    stores: &[Store],
) -> Result<(), StorageError> {
    if stores.is_empty() {
        return Err(StorageError::NoStores);
    }
    let changes = batch.items().len().saturating_mul(stores.len());
    if changes > MAX_BATCH_CHANGES {
        return Err(StorageError::BatchTooLarge(changes));
    }
    for store in stores {
        if let Some(item) = batch
            .items()
            .iter()
            .find(|i| i.price.currency != store.currency)
        {
            return Err(StorageError::CurrencyMismatch {
                item: item.origin.to_string(),
                currency: item.price.currency,
                store: store.id.clone(),
                store_currency: store.currency,
            });
        }
    }
    Ok(())
}

/// Largest absolute stock delta one uploaded event may carry.
const MAX_EVENT_STOCK_DELTA: i64 = 1_000_000_000;

/// Checks an upload's shape and every event's content before anything is stored.
pub(crate) fn validate_upload(events: &[LedgerEvent]) -> Result<(), StorageError> {
    if events.len() > MAX_EVENTS_PER_UPLOAD {
        return Err(StorageError::InvalidInput(format!(
            "an upload may carry at most {MAX_EVENTS_PER_UPLOAD} events, got {}",
            events.len()
        )));
    }
    let mut expected: Option<u64> = None;
    for ev in events {
        let bad = |reason: String| StorageError::InvalidEvent {
            seq: ev.seq,
            reason,
        };
        if ev.seq == 0 {
            return Err(bad("seqs start at 1".into()));
        }
        if let Some(want) = expected
            && ev.seq != want
        {
            return Err(bad(format!(
                "events must be contiguous and in seq order; expected seq {want}"
            )));
        }
        expected = ev.seq.checked_add(1);
        if ev.seq > i64::MAX as u64 {
            return Err(bad("seq is out of range".into()));
        }
        if ev.at.0 < 0 || ev.hlc.wall_ms > i64::MAX as u64 {
            return Err(bad("time is out of range".into()));
        }
        match &ev.body {
            EventBody::SaleCommitted(sale) => sale.validate().map_err(|e| bad(e.to_string()))?,
            EventBody::PriceStaged { version, .. } | EventBody::PriceActivated { version, .. } => {
                if *version == 0 || *version > i64::MAX as u64 {
                    return Err(bad("price version must be at least 1".into()));
                }
            }
            EventBody::StockAdjusted { delta, .. } => {
                if delta.unsigned_abs() > MAX_EVENT_STOCK_DELTA as u64 {
                    return Err(bad("stock delta is out of range".into()));
                }
            }
        }
    }
    Ok(())
}

/// Splits a validated upload at the gateway's `acked_through`: events the hub already has
/// (to be checked against what is stored) and new ones (to be stored).
pub(crate) fn split_upload(
    acked_through: u64,
    events: &[LedgerEvent],
) -> Result<(&[LedgerEvent], &[LedgerEvent]), StorageError> {
    let Some(first) = events.first() else {
        return Ok((&[], &[]));
    };
    let expected_from = acked_through.saturating_add(1);
    if first.seq > expected_from {
        return Err(StorageError::SeqGap { expected_from });
    }
    let known = usize::try_from(expected_from - first.seq)
        .unwrap_or(usize::MAX)
        .min(events.len());
    Ok(events.split_at(known))
}

/// The side effect of one new event, keyed by its event id.
pub(crate) enum SideEffect<'a> {
    Sale(&'a SaleRecord),
    Progress {
        batch_id: &'a BatchId,
        gtin: &'a Gtin,
        version: u64,
        kind: &'static str,
    },
    None,
}

/// The lowest version a price batch created at `created_at` may give a (store, GTIN): its
/// creation time in milliseconds. Versions still rise by at least one per batch, and a hub
/// restored from an older backup never hands out again a version its stores already hold
/// (they would ignore it: highest version wins), because its clock has moved on since.
pub(crate) fn version_floor(created_at: UtcMillis) -> i64 {
    created_at.0.max(1)
}

/// A page from up to `limit + 1` changes read after `cursor`: the extra row only says there is more.
pub(crate) fn page_of(
    mut changes: Vec<aisle_protocol::sync::Change>,
    cursor: u64,
    limit: u32,
) -> ChangePage {
    let more = changes.len() > limit as usize;
    changes.truncate(limit as usize);
    let next_cursor = changes.last().map_or(cursor, |c| c.seq);
    ChangePage {
        changes,
        next_cursor,
        more,
        server_time: now(),
    }
}

pub(crate) fn side_effect(body: &EventBody) -> SideEffect<'_> {
    match body {
        EventBody::SaleCommitted(sale) => SideEffect::Sale(sale),
        EventBody::PriceStaged {
            gtin,
            version,
            batch_id,
            ..
        } => SideEffect::Progress {
            batch_id,
            gtin,
            version: *version,
            kind: "staged",
        },
        EventBody::PriceActivated {
            gtin,
            version,
            batch_id,
            ..
        } => SideEffect::Progress {
            batch_id,
            gtin,
            version: *version,
            kind: "activated",
        },
        // The hub counted the adjustment when HQ made it; the store's event only confirms it.
        EventBody::StockAdjusted { .. } => SideEffect::None,
    }
}

/// Stock delta key of a sale line (unique per event and line).
pub(crate) fn sale_delta_key(event: &EventId, line: usize) -> String {
    format!("sale:{event}:{line}")
}

/// Stock delta key of an HQ adjustment.
pub(crate) fn adjustment_delta_key(id: &EventId) -> String {
    format!("adj:{id}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aisle_protocol::Hlc;

    fn ev(seq: u64) -> LedgerEvent {
        LedgerEvent {
            seq,
            id: EventId::from_bytes([seq as u8; 16]),
            hlc: Hlc::default(),
            at: UtcMillis(1),
            body: EventBody::StockAdjusted {
                adjustment_id: EventId::from_bytes([0; 16]),
                gtin: Gtin::from_index(1).unwrap(),
                delta: 1,
            },
        }
    }

    #[test]
    fn split_upload_handles_replays_overlaps_and_gaps() {
        let evs: Vec<_> = (3..=6).map(ev).collect();
        let (old, new) = split_upload(2, &evs).unwrap();
        assert_eq!((old.len(), new.len()), (0, 4));
        let (old, new) = split_upload(4, &evs).unwrap();
        assert_eq!((old.len(), new[0].seq), (2, 5));
        let (old, new) = split_upload(9, &evs).unwrap();
        assert_eq!((old.len(), new.len()), (4, 0));
        assert!(matches!(
            split_upload(1, &evs),
            Err(StorageError::SeqGap { expected_from: 2 })
        ));
    }

    #[test]
    fn validate_upload_refuses_gaps_zero_and_bad_sales() {
        assert!(validate_upload(&[ev(1), ev(2)]).is_ok());
        assert!(matches!(
            validate_upload(&[ev(1), ev(3)]),
            Err(StorageError::InvalidEvent { seq: 3, .. })
        ));
        assert!(matches!(
            validate_upload(&[ev(0)]),
            Err(StorageError::InvalidEvent { seq: 0, .. })
        ));
    }

    #[test]
    fn credentials_parse_and_redact() {
        let s = StoreId::parse("S001").unwrap();
        let c = GatewayCredential::generate(&s).unwrap();
        assert!(c.gateway_id.as_str().starts_with("gw-S001-"));
        assert_eq!(c.gateway_id.as_str().len(), "gw-S001-".len() + 8);
        assert_eq!(c.secret().len(), 64);
        let back = GatewayCredential::parse(&c.to_string()).unwrap();
        assert_eq!(back, c);
        assert!(!format!("{c:?}").contains(c.secret()));
        assert!(GatewayCredential::parse("gw-S001-1.short").is_err());
        assert!(GatewayCredential::parse(&format!("gw S001.{}", "a".repeat(64))).is_err());
        assert!(GatewayCredential::parse(&"A".repeat(64)).is_err());
        assert!(hashes_equal(&c.secret_hash(), &back.secret_hash()));
        assert!(!hashes_equal(&c.secret_hash(), &[0; 32]));
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("sqlite://a.db"), "sqlite://a.db");
    }
}
