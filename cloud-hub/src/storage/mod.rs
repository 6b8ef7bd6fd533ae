//! The hub's storage: one trait, [`HubStorage`], with an embedded SQLite implementation and a
//! PostgreSQL one, both held to the same conformance suite (`tests/conformance.rs`).
//!
//! Invariants every implementation keeps:
//! - A price batch is one transaction: all of its prices, versions and changes, or nothing.
//! - Versions rise by one per (store, GTIN) with every batch that prices it.
//! - Changefeed cursors never skip: a change never commits with a lower seq than one already
//!   visible to a reader (PostgreSQL serialises changefeed writers; SQLite has one writer).
//! - Uploads are stored under UNIQUE (gateway, seq) with the gateway's row locked, and every side
//!   effect (sale, stock delta, batch progress, footfall row, pickup transition) is keyed by event
//!   id: replays change nothing.
//! - Shelf labels change only through [`crate::labels::LabelBook`], each label event once (by
//!   event id), in the upload's transaction; a binding or unbinding is audited there.
//! - Pickup orders move only through [`crate::pickup::machine`], with their status history,
//!   stock, conflicts and webhook outbox rows written in the same transaction as the cause.
//! - The audit log is append-only (triggers refuse UPDATE and DELETE) and hash-chained; an
//!   audited database change writes its entry in its own transaction, as the last step (on
//!   PostgreSQL under `AUDIT_LOCK`, always the last lock taken). Secrets (tokens, enrolment
//!   codes, gateway secrets) are stored only as SHA-256.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use aisle_protocol::pickup::{MAX_ORDER_LINES, PickupKey, check_label};
use aisle_protocol::sync::{
    ChangeBody, ChangePage, EventBody, FOOTFALL_INTERVAL_MS, FootfallInterval, LedgerEvent,
    MAX_EVENTS_PER_UPLOAD, MAX_FOOTFALL_CAMERAS, SaleRecord, StockAdjustment, UploadAck,
};
use aisle_protocol::{BatchId, Currency, EventId, GatewayId, Gtin, OrderId, StoreId, UtcMillis};
use async_trait::async_trait;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::changefeed::ChangeSubscription;
use crate::labels::{LabelCounts, LabelPage, LabelQuery, NotUpdated, ShelfLabel, Shown};
use crate::pickup::token::PickupSigningKey;
use crate::pickup::{
    CancelReceipt, NewOrder, OrderFilter, OrderReceipt, OrderSummary, OrderView, WebhookDelivery,
};
use crate::price_batch::PriceBatch;
use crate::security::{
    AUDIT_GENESIS, Actor, ApiTokenInfo, AuditEntry, AuditInput, AuditVerification, EnrolAttempt,
    EnrolRefusal, EnrolledGateway, GatewayInfo, GatewayKey, NewApiToken, NewEnrolment,
    NonceOutcome, Role, verify_chain,
};

pub mod postgres;
mod postgres_labels;
mod postgres_orders;
mod postgres_security;
pub mod sqlite;
mod sqlite_labels;
mod sqlite_orders;
mod sqlite_security;

pub use postgres::PgStorage;
pub use sqlite::SqliteStorage;

/// Schema version this build writes; a database with a higher one is refused.
/// 2: the `footfall` table, filled from FootfallCounted events (an older hub would store those
/// events without their footfall rows, so it must not open a version 2 database).
/// 3: click-and-collect: orders, their lines, history, conflicts, stock reservations, the
/// pickup signing key, hub secrets, pickup event keys and the webhook outbox. An older hub
/// would refuse the stores' pickup events and neither expire orders nor deliver webhooks.
/// 4: security: HQ API tokens, the append-only audit log, enrolment codes, gateway keys and
/// request nonces. An older hub would neither audit nor honour tokens and enrolled gateways.
/// 5: shelf labels: `price_versions` (every version issued, backfilled from `prices` and the
/// changefeed), `shelf_labels` and `label_events`. An older hub would store label events
/// without their effect and issue prices without their history.
pub const SCHEMA_VERSION: i64 = 5;
/// Most buckets one footfall query may span.
pub const MAX_FOOTFALL_BUCKETS: i64 = 3_000;
/// One UTC day in milliseconds.
pub const DAY_MS: i64 = 24 * 60 * 60 * 1000;
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
    #[error("unknown order {0}")]
    UnknownOrder(OrderId),
    #[error("unknown API token {0}")]
    UnknownToken(String),
    #[error("order {0} was already placed with different content; an order id names one order")]
    OrderMismatch(OrderId),
    #[error("line {line}: store {store} does not sell {gtin} (the hub has no price for it there)")]
    UnknownProduct {
        line: usize,
        gtin: Gtin,
        store: StoreId,
    },
    #[error(
        "line {line}: not enough stock of {gtin} at store {store}: {requested} requested, {available} available"
    )]
    InsufficientStock {
        line: usize,
        gtin: Gtin,
        store: StoreId,
        requested: u32,
        available: i64,
    },
    #[error("{0}")]
    CannotCancel(String),
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

/// Progress of one batch at one store: distinct GTINs the store reported staged / active, and
/// its shelf labels of the batch's products against the batch's versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreProgress {
    pub store: StoreId,
    pub items: u64,
    pub staged: u64,
    pub active: u64,
    pub labels: LabelCounts,
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

/// Stock of one GTIN at one store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StockLevel {
    pub gtin: Gtin,
    /// Sum of every stock delta.
    pub on_hand: i64,
    /// Held by open pickup orders.
    pub reserved: i64,
}

impl StockLevel {
    /// What a new pickup order may still reserve.
    pub fn available(&self) -> i64 {
        self.on_hand.saturating_sub(self.reserved)
    }
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

/// A footfall read: `[from, to)` in buckets of `bucket_ms`, every bound aligned to the bucket
/// width counted from the Unix epoch (so buckets are aligned to UTC quarter hours, hours, days).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FootfallQuery {
    from: UtcMillis,
    to: UtcMillis,
    bucket_ms: i64,
}

impl FootfallQuery {
    /// Checks the bucket width (whole 15-minute intervals dividing a day), the alignment of
    /// `from` and `to`, their order and the number of buckets (at most [`MAX_FOOTFALL_BUCKETS`]).
    pub fn new(from: UtcMillis, to: UtcMillis, bucket_ms: i64) -> Result<Self, StorageError> {
        let bad = |m: String| Err(StorageError::InvalidInput(m));
        if bucket_ms <= 0 || bucket_ms % FOOTFALL_INTERVAL_MS != 0 || DAY_MS % bucket_ms != 0 {
            return bad(format!(
                "a footfall bucket must be a whole number of 15-minute intervals that divides a day, got {bucket_ms} ms"
            ));
        }
        if from.0 < 0 || from.0 % bucket_ms != 0 || to.0 % bucket_ms != 0 {
            return bad("from and to must be aligned to the bucket width (UTC)".into());
        }
        if to.0 <= from.0 {
            return bad("from must be before to".into());
        }
        let buckets = (to.0 - from.0) / bucket_ms;
        if buckets > MAX_FOOTFALL_BUCKETS {
            return bad(format!(
                "the range spans {buckets} buckets; at most {MAX_FOOTFALL_BUCKETS}"
            ));
        }
        Ok(FootfallQuery {
            from,
            to,
            bucket_ms,
        })
    }

    pub fn from(&self) -> UtcMillis {
        self.from
    }

    pub fn to(&self) -> UtcMillis {
        self.to
    }

    pub fn bucket_ms(&self) -> i64 {
        self.bucket_ms
    }

    /// Number of buckets in `[from, to)`.
    pub fn buckets(&self) -> i64 {
        (self.to.0 - self.from.0) / self.bucket_ms
    }

    /// 15-minute intervals in one bucket.
    pub fn slots_per_bucket(&self) -> u64 {
        u64::try_from(self.bucket_ms / FOOTFALL_INTERVAL_MS).unwrap_or(1)
    }
}

/// What the hub stored for one bucket of a footfall read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FootfallTally {
    pub start: UtcMillis,
    /// People who came in, summed over zones and events.
    pub entered: u64,
    /// People who went out.
    pub exited: u64,
    /// The latest occupancy reported in the bucket: from the latest 15-minute interval that
    /// reported one, and of that interval's events the one the store emitted last (ties: the
    /// higher value). Zones are not summed: an occupancy estimate counts the whole store.
    pub occupancy: Option<u64>,
    /// 15-minute intervals of the bucket with at least one footfall event (any zone).
    pub slots_reported: u64,
    /// Cameras any event of the bucket named as missing: distinct, sorted, at most
    /// [`MAX_FOOTFALL_CAMERAS`] names.
    pub cameras_missing: Vec<String>,
    /// Footfall events summed into the bucket.
    pub events: u64,
    /// Sales committed in the bucket (by the sale event's time).
    pub transactions: u64,
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
    async fn create_gateway(&self, store: &StoreId) -> Result<GatewayCredential, StorageError> {
        self.create_gateway_by(store, &Actor::hub()).await
    }

    /// [`create_gateway`](Self::create_gateway), audited as `actor`'s in the same transaction.
    async fn create_gateway_by(
        &self,
        store: &StoreId,
        actor: &Actor,
    ) -> Result<GatewayCredential, StorageError>;

    /// Checks `<gateway_id>.<secret>`; unknown, wrong or revoked -> [`StorageError::BadCredential`].
    async fn authenticate_gateway(
        &self,
        credential: &str,
    ) -> Result<AuthenticatedGateway, StorageError>;

    /// Revokes a gateway: its credential (bearer secret or enrolled key) stops working at once.
    async fn revoke_gateway(&self, gateway: &GatewayId) -> Result<(), StorageError> {
        self.revoke_gateway_by(gateway, &Actor::hub()).await
    }

    /// [`revoke_gateway`](Self::revoke_gateway), audited as `actor`'s in the same transaction.
    async fn revoke_gateway_by(
        &self,
        gateway: &GatewayId,
        actor: &Actor,
    ) -> Result<(), StorageError>;

    /// Stores a batch: for each store and item, version = max(previous + 1, creation time in ms) and one price change.
    async fn create_price_batch(&self, batch: &PriceBatch) -> Result<BatchReceipt, StorageError> {
        self.create_price_batch_by(batch, &Actor::hub()).await
    }

    /// [`create_price_batch`](Self::create_price_batch), audited as `actor`'s in the same
    /// transaction.
    async fn create_price_batch_by(
        &self,
        batch: &PriceBatch,
        actor: &Actor,
    ) -> Result<BatchReceipt, StorageError>;

    /// A batch, each of its stores' progress, and per store its shelf labels of the batch's
    /// products against the versions this batch gave them (see [`crate::labels::LabelCounts`]).
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

    /// Stock of every GTIN with any delta or reservation at `store`, in GTIN order.
    async fn stock_levels(&self, store: &StoreId) -> Result<Vec<StockLevel>, StorageError>;

    /// Units of `gtin` at `store` held by open pickup orders.
    async fn reserved(&self, store: &StoreId, gtin: &Gtin) -> Result<i64, StorageError>;

    /// Records an HQ stock adjustment (idempotent by adjustment id) and its change for the store.
    async fn add_stock_adjustment(
        &self,
        store: &StoreId,
        adjustment: &NewStockAdjustment,
    ) -> Result<AdjustmentReceipt, StorageError>;

    /// The bound shelf labels of `store` that match the query, in label id order, each with the
    /// current price version of its GTIN (the highest whose `effective_at` is at or before
    /// `query.now`) and since when it has been stale (see [`crate::labels`]).
    async fn store_labels(
        &self,
        store: &StoreId,
        query: &LabelQuery,
    ) -> Result<LabelPage, StorageError>;

    /// Footfall and transactions of `store` in the query's `[from, to)`, summed per bucket
    /// (aligned to UTC), in bucket order. A bucket with no footfall event and no sale is absent.
    /// Footfall rows come from FootfallCounted events (each event id once, several events for
    /// one zone and interval summed); transactions are the store's sales by `sold_at`.
    async fn footfall(
        &self,
        store: &StoreId,
        query: &FootfallQuery,
    ) -> Result<Vec<FootfallTally>, StorageError>;

    /// Deletes price changes superseded by a higher version of the same (store, GTIN). No cursor
    /// is invalidated: a deleted row's successor has a higher seq, so a gateway behind the
    /// compaction still reads the newest version (highest version wins).
    async fn compact(&self) -> Result<CompactionReport, StorageError>;

    /// A doorbell that rings after changes for `store` commit (long-polls wait on it).
    fn subscribe(&self, store: &StoreId) -> ChangeSubscription;

    // ---- click-and-collect ----

    /// Places a pickup order at `now`, idempotent by order id: an identical request answers the
    /// first answer again (`created: false`, same token and code); different content ->
    /// [`StorageError::OrderMismatch`]. Otherwise checks the pickup window, the store, that the
    /// store sells every GTIN and has it available (on hand minus reserved), reserves the stock,
    /// and writes the `PickupOrder` change for the store (after the `PickupKey` change, which
    /// goes to every store when the key is generated on first use).
    async fn create_order(
        &self,
        order: &NewOrder,
        now: UtcMillis,
    ) -> Result<OrderReceipt, StorageError>;

    /// The order with its lines, history, conflicts and notifications.
    async fn order(&self, id: &OrderId) -> Result<Option<OrderView>, StorageError>;

    /// Orders, newest first.
    async fn list_orders(&self, filter: &OrderFilter) -> Result<Vec<OrderSummary>, StorageError>;

    /// HQ cancels an order: cancelled at once at HQ, stock released, `PickupCancelled` written
    /// for the store, `cancelled` webhook. A cancelled order again -> `cancelled_now: false`;
    /// a collected or expired one -> [`StorageError::CannotCancel`].
    async fn cancel_order(
        &self,
        id: &OrderId,
        reason: Option<&str>,
        now: UtcMillis,
    ) -> Result<CancelReceipt, StorageError> {
        self.cancel_order_by(id, reason, now, &Actor::hub()).await
    }

    /// [`cancel_order`](Self::cancel_order); a cancellation made now is audited as `actor`'s in
    /// the same transaction.
    async fn cancel_order_by(
        &self,
        id: &OrderId,
        reason: Option<&str>,
        now: UtcMillis,
        actor: &Actor,
    ) -> Result<CancelReceipt, StorageError>;

    /// Expires up to `limit` open orders whose `expires_at` is more than `grace_ms` before
    /// `now`, one transaction each; returns them.
    async fn expire_overdue(
        &self,
        now: UtcMillis,
        grace_ms: i64,
        limit: u32,
    ) -> Result<Vec<OrderId>, StorageError>;

    /// The hub's current pickup public key, if one was generated yet.
    async fn pickup_key(&self) -> Result<Option<PickupKey>, StorageError>;

    /// The hub's current pickup signing key (it also signs member cards). When there is none
    /// yet it is generated at `now` exactly as for the first order: stored, and its public half
    /// written to every store's changefeed as a `PickupKey` change.
    async fn pickup_signing_key(&self, now: UtcMillis) -> Result<PickupSigningKey, StorageError>;

    /// The generated webhook secret, created and stored on first use.
    async fn webhook_secret(&self) -> Result<String, StorageError>;

    /// Claims up to `limit` undelivered webhooks due at `now`: each attempt is counted and the
    /// row is left alone until `lease_until` (then it is due again unless recorded meanwhile).
    async fn claim_webhooks(
        &self,
        now: UtcMillis,
        lease_until: UtcMillis,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, StorageError>;

    /// Records a webhook as delivered (a 2xx answer).
    async fn webhook_delivered(&self, id: &EventId, at: UtcMillis) -> Result<(), StorageError>;

    /// Records a failed attempt; the next one is due at `retry_at`.
    async fn webhook_failed(
        &self,
        id: &EventId,
        retry_at: UtcMillis,
        error: &str,
    ) -> Result<(), StorageError>;

    /// Webhooks not delivered yet.
    async fn webhooks_pending(&self) -> Result<u64, StorageError>;

    // ---- security: HQ tokens, audit log, enrolment, signed gateway requests ----

    /// Stores a new HQ API token (only its hash) and audits it; the secret is in `token`.
    async fn create_api_token(
        &self,
        token: &NewApiToken,
        name: &str,
        role: Role,
        actor: &Actor,
    ) -> Result<ApiTokenInfo, StorageError>;

    /// Every HQ API token, oldest first (revoked ones too).
    async fn list_api_tokens(&self) -> Result<Vec<ApiTokenInfo>, StorageError>;

    /// Revokes a token (audited); it stops working on the next request. Revoking a revoked
    /// token again changes nothing.
    async fn revoke_api_token(&self, token_id: &str, actor: &Actor) -> Result<(), StorageError>;

    /// The live token whose SHA-256 is `hash`, if any.
    async fn api_token_by_hash(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<ApiTokenInfo>, StorageError>;

    /// Appends one entry to the audit log in its own transaction.
    async fn append_audit(&self, entry: &AuditInput) -> Result<(), StorageError>;

    /// Up to `limit` audit entries from seq `from` on, in seq order.
    async fn audit_entries(&self, from: u64, limit: u32) -> Result<Vec<AuditEntry>, StorageError>;

    /// Checks the whole audit log's hash chain.
    async fn verify_audit(&self) -> Result<AuditVerification, StorageError> {
        let mut prev = AUDIT_GENESIS;
        let mut next = 1;
        let mut entries = 0;
        loop {
            let page = self.audit_entries(next, 1_000).await?;
            if page.is_empty() {
                return Ok(AuditVerification {
                    entries,
                    broken: None,
                });
            }
            match verify_chain(&page, prev, next) {
                Ok(head) => prev = head,
                Err(broken) => {
                    let verified = page.iter().take_while(|e| e.seq < broken.0).count();
                    return Ok(AuditVerification {
                        entries: entries + verified as u64,
                        broken: Some(broken),
                    });
                }
            }
            entries += page.len() as u64;
            next += page.len() as u64;
        }
    }

    /// Stores a new enrolment code (only its hash) for its store, audited.
    async fn create_enrolment(
        &self,
        enrolment: &NewEnrolment,
        actor: &Actor,
    ) -> Result<(), StorageError>;

    /// Redeems an enrolment code: creates the gateway with the public key and marks the code
    /// used, audited, in one transaction. A wrong, used or expired code is refused and the
    /// refusal audited.
    async fn enrol(
        &self,
        attempt: &EnrolAttempt,
    ) -> Result<Result<EnrolledGateway, EnrolRefusal>, StorageError>;

    /// Refused enrolment attempts from `client` at or after `since` (the rate limit).
    async fn enrol_refusals_since(
        &self,
        client: &str,
        since: UtcMillis,
    ) -> Result<u64, StorageError>;

    /// The public key and store of an enrolled gateway.
    async fn gateway_key(&self, gateway: &GatewayId) -> Result<Option<GatewayKey>, StorageError>;

    /// Records a signed request's nonce until `expires_at` if the gateway is not revoked (in
    /// the same statement); [`NonceOutcome::Replayed`] when the gateway used it before.
    /// Now and then forgets nonces that expired before `now`.
    async fn remember_nonce(
        &self,
        gateway: &GatewayId,
        nonce: &str,
        expires_at: UtcMillis,
        now: UtcMillis,
    ) -> Result<NonceOutcome, StorageError>;

    /// Every gateway, by store then id.
    async fn list_gateways(&self) -> Result<Vec<GatewayInfo>, StorageError>;
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

/// Whether this nonce insert also deletes expired nonces: about one in 32, so the table stays
/// bounded (the window's requests and a little more) without a delete on every request.
pub(crate) fn prune_now() -> bool {
    rand::random::<u8>() < 8
}

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
            EventBody::FootfallCounted(f) => f.validate().map_err(|e| bad(e.to_string()))?,
            EventBody::PickupReceived { .. }
            | EventBody::PickupCancelApplied { .. }
            | EventBody::PickupExpired { .. } => {}
            EventBody::PickupPicking { staff, .. } => {
                check_label("staff", staff).map_err(|e| bad(e.to_string()))?;
            }
            EventBody::PickupReady {
                location, missing, ..
            } => {
                check_label("location", location).map_err(|e| bad(e.to_string()))?;
                if missing.len() > MAX_ORDER_LINES {
                    return Err(bad(format!("at most {MAX_ORDER_LINES} missing lines")));
                }
            }
            EventBody::PickupCollected { device, staff, .. } => {
                check_label("device", device).map_err(|e| bad(e.to_string()))?;
                if let Some(staff) = staff {
                    check_label("staff", staff).map_err(|e| bad(e.to_string()))?;
                }
            }
            EventBody::PickupCancelConflict {
                collected_at,
                collected_by,
                ..
            } => {
                check_label("collected_by", collected_by).map_err(|e| bad(e.to_string()))?;
                if collected_at.0 < 0 {
                    return Err(bad("collected_at is out of range".into()));
                }
            }
            EventBody::LabelBound { shelf, .. } => {
                check_label("shelf", shelf).map_err(|e| bad(e.to_string()))?;
            }
            EventBody::LabelUnbound { .. } => {}
            EventBody::LabelConfirmed { version, .. } => {
                if *version == 0 || *version > i64::MAX as u64 {
                    return Err(bad("price version must be at least 1".into()));
                }
            }
            EventBody::LabelNotUpdated {
                version, reason, ..
            } => {
                if *version == 0 || *version > i64::MAX as u64 {
                    return Err(bad("price version must be at least 1".into()));
                }
                check_label("reason", reason).map_err(|e| bad(e.to_string()))?;
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
    Footfall(&'a FootfallInterval),
    /// A pickup event about this order (applied through [`crate::pickup::machine`]).
    Pickup(&'a OrderId),
    /// A shelf-label event (applied through [`crate::labels::LabelBook`], after the upload's
    /// other events, in event order).
    Label,
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
        EventBody::FootfallCounted(f) => SideEffect::Footfall(f),
        EventBody::PickupReceived { order_id }
        | EventBody::PickupPicking { order_id, .. }
        | EventBody::PickupReady { order_id, .. }
        | EventBody::PickupCollected { order_id, .. }
        | EventBody::PickupCancelApplied { order_id, .. }
        | EventBody::PickupCancelConflict { order_id, .. }
        | EventBody::PickupExpired { order_id } => SideEffect::Pickup(order_id),
        EventBody::LabelBound { .. }
        | EventBody::LabelUnbound { .. }
        | EventBody::LabelConfirmed { .. }
        | EventBody::LabelNotUpdated { .. } => SideEffect::Label,
    }
}

/// A fresh time-ordered id for something the hub itself does (cancellations, webhooks).
pub(crate) fn new_event_id(now: UtcMillis) -> EventId {
    let mut random = [0u8; 10];
    rand::rng().fill_bytes(&mut random);
    EventId::time_ordered(u64::try_from(now.0).unwrap_or(0), random)
}

pub(crate) fn parse_order_id(s: &str) -> Result<OrderId, StorageError> {
    OrderId::parse(s).map_err(|e| StorageError::Corrupt(e.to_string()))
}

pub(crate) fn parse_status(s: &str) -> Result<crate::pickup::OrderStatus, StorageError> {
    crate::pickup::OrderStatus::parse(s).map_err(StorageError::Corrupt)
}

pub(crate) fn opt_event_id(s: Option<&str>) -> Result<Option<EventId>, StorageError> {
    s.map(parse_event_id).transpose()
}

pub(crate) fn decode_collection(
    s: Option<&str>,
) -> Result<Option<crate::pickup::Collection>, StorageError> {
    s.map(|j| {
        serde_json::from_str(j).map_err(|e| StorageError::Corrupt(format!("order collection: {e}")))
    })
    .transpose()
}

pub(crate) fn to_u32(v: i64, what: &str) -> Result<u32, StorageError> {
    u32::try_from(v).map_err(|_| StorageError::Corrupt(format!("{what} {v} is out of range")))
}

/// Stock delta key of a collected pickup line (unique per collecting event and line).
pub(crate) fn pickup_delta_key(event: &EventId, line_no: i64) -> String {
    format!("pickup:{event}:{line_no}")
}

/// The `footfall` row of one FootfallCounted event, as both backends store it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FootfallRow {
    pub event_id: String,
    pub zone: String,
    pub start: i64,
    pub entered: i64,
    pub exited: i64,
    pub occupancy: Option<i64>,
    /// Sorted, distinct JSON array; `None` when no camera was missing.
    pub cameras_missing: Option<String>,
    /// The event's time (orders occupancy readings of one interval).
    pub at: i64,
}

impl FootfallRow {
    pub(crate) fn new(
        event_id: &EventId,
        at: UtcMillis,
        f: &FootfallInterval,
    ) -> Result<Self, StorageError> {
        let missing: BTreeSet<&str> = f.cameras_missing.iter().map(String::as_str).collect();
        Ok(FootfallRow {
            event_id: event_id.to_hex(),
            zone: f.zone.clone(),
            start: f.start.0,
            entered: to_i64(f.entered, "entered")?,
            exited: to_i64(f.exited, "exited")?,
            occupancy: f.occupancy.map(|o| to_i64(o, "occupancy")).transpose()?,
            cameras_missing: if missing.is_empty() {
                None
            } else {
                Some(encode_json(&missing)?)
            },
            at: at.0,
        })
    }

    /// The row of a stored event payload, if it is a FootfallCounted event (schema upgrade).
    pub(crate) fn from_stored(
        event_id: &str,
        at: i64,
        payload: &str,
    ) -> Result<Option<Self>, StorageError> {
        let body: EventBody = serde_json::from_str(payload)
            .map_err(|e| StorageError::Corrupt(format!("event {event_id}: {e}")))?;
        match body {
            EventBody::FootfallCounted(f) => Ok(Some(Self::new(
                &parse_event_id(event_id)?,
                UtcMillis(at),
                &f,
            )?)),
            _ => Ok(None),
        }
    }
}

/// Footfall sums of one bucket as the database computes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FootfallSums {
    pub start: i64,
    pub entered: i64,
    pub exited: i64,
    pub slots: i64,
    pub events: i64,
    /// The bucket's distinct `cameras_missing` arrays joined with commas (NULLs skipped).
    pub missing: Option<String>,
}

/// Joins the three per-bucket reads of a footfall query (sums, latest occupancy, sales count).
pub(crate) fn merge_footfall(
    sums: Vec<FootfallSums>,
    occupancy: Vec<(i64, i64)>,
    sales: Vec<(i64, i64)>,
) -> Result<Vec<FootfallTally>, StorageError> {
    fn at(out: &mut BTreeMap<i64, FootfallTally>, start: i64) -> &mut FootfallTally {
        out.entry(start).or_insert_with(|| FootfallTally {
            start: UtcMillis(start),
            ..FootfallTally::default()
        })
    }
    let mut out: BTreeMap<i64, FootfallTally> = BTreeMap::new();
    for s in sums {
        let t = at(&mut out, s.start);
        t.entered = to_u64(s.entered, "entered")?;
        t.exited = to_u64(s.exited, "exited")?;
        t.slots_reported = to_u64(s.slots, "slots")?;
        t.events = to_u64(s.events, "events")?;
        if let Some(joined) = s.missing {
            // Each piece is a JSON array, so the comma-joined pieces are a JSON array of arrays.
            let lists: Vec<Vec<String>> = serde_json::from_str(&format!("[{joined}]"))
                .map_err(|e| StorageError::Corrupt(format!("footfall cameras_missing: {e}")))?;
            let names: BTreeSet<String> = lists.into_iter().flatten().collect();
            t.cameras_missing = names.into_iter().take(MAX_FOOTFALL_CAMERAS).collect();
        }
    }
    for (start, occupancy) in occupancy {
        at(&mut out, start).occupancy = Some(to_u64(occupancy, "occupancy")?);
    }
    for (start, n) in sales {
        at(&mut out, start).transactions = to_u64(n, "transactions")?;
    }
    Ok(out.into_values().collect())
}

/// An audit entry ready to insert: its seq, detail JSON and chained hash.
pub(crate) struct ChainedAudit<'a> {
    pub seq: i64,
    pub entry: &'a AuditInput,
    pub detail: String,
    pub hash: [u8; 32],
}

/// Chains `entries` after the log's head (`None`: the log is empty), all recorded `at`.
pub(crate) fn chain_audit<'a>(
    head: Option<(i64, Vec<u8>)>,
    entries: &'a [AuditInput],
    at: UtcMillis,
) -> Result<Vec<ChainedAudit<'a>>, StorageError> {
    let (mut seq, mut prev) = match head {
        None => (0, AUDIT_GENESIS),
        Some((seq, hash)) => (
            to_u64(seq, "audit seq")?,
            hash.try_into()
                .map_err(|_| StorageError::Corrupt(format!("audit entry {seq}: bad hash")))?,
        ),
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        seq += 1;
        let detail = encode_json(&entry.detail)?;
        let hash = crate::security::audit_hash(
            &prev,
            seq,
            at.0,
            entry.actor.as_str(),
            entry.action,
            &entry.subject,
            &detail,
        );
        prev = hash;
        out.push(ChainedAudit {
            seq: to_i64(seq, "audit seq")?,
            entry,
            detail,
            hash,
        });
    }
    Ok(out)
}

/// A `shelf_labels` row as both backends read it.
pub(crate) struct LabelColumns {
    pub label_id: i64,
    pub gtin: String,
    pub shelf: String,
    pub bound_at: i64,
    pub confirmed_version: Option<i64>,
    pub confirmed_batch: Option<String>,
    pub confirmed_at: Option<i64>,
    pub not_updated_version: Option<i64>,
    pub not_updated_batch: Option<String>,
    pub not_updated_at: Option<i64>,
    pub not_updated_reason: Option<String>,
}

/// The columns of `shelf_labels` in [`LabelColumns`] order (prefix with a table alias if needed).
pub(crate) const LABEL_COLUMNS: &str = "label_id, gtin, shelf, bound_at, confirmed_version, confirmed_batch, confirmed_at, not_updated_version, not_updated_batch, not_updated_at, not_updated_reason";

impl LabelColumns {
    pub(crate) fn decode(self) -> Result<ShelfLabel, StorageError> {
        let label = u32::try_from(self.label_id).map_err(|_| {
            StorageError::Corrupt(format!("label id {} is out of range", self.label_id))
        })?;
        let batch = |b: Option<String>| -> Result<BatchId, StorageError> {
            BatchId::parse(b.as_deref().unwrap_or_default())
                .map_err(|e| StorageError::Corrupt(format!("label {label:08X}: {e}")))
        };
        let confirmed = match (self.confirmed_version, self.confirmed_at) {
            (Some(v), Some(at)) => Some(Shown {
                version: to_u64(v, "confirmed version")?,
                batch_id: batch(self.confirmed_batch)?,
                at: UtcMillis(at),
            }),
            _ => None,
        };
        let not_updated = match (self.not_updated_version, self.not_updated_at) {
            (Some(v), Some(at)) => Some(NotUpdated {
                version: to_u64(v, "not-updated version")?,
                batch_id: batch(self.not_updated_batch)?,
                at: UtcMillis(at),
                reason: self.not_updated_reason.unwrap_or_default(),
            }),
            _ => None,
        };
        Ok(ShelfLabel {
            label: aisle_protocol::esl::LabelId(label),
            gtin: parse_gtin(&self.gtin)?,
            shelf: self.shelf,
            bound_at: UtcMillis(self.bound_at),
            confirmed,
            not_updated,
        })
    }
}

/// A `shelf_labels` row to write, as both backends bind it.
pub(crate) struct LabelValues<'a> {
    pub label_id: i64,
    pub gtin: &'a str,
    pub shelf: &'a str,
    pub bound_at: i64,
    pub confirmed_version: Option<i64>,
    pub confirmed_batch: Option<&'a str>,
    pub confirmed_at: Option<i64>,
    pub not_updated_version: Option<i64>,
    pub not_updated_batch: Option<&'a str>,
    pub not_updated_at: Option<i64>,
    pub not_updated_reason: Option<&'a str>,
}

impl<'a> LabelValues<'a> {
    pub(crate) fn of(l: &'a ShelfLabel) -> Result<Self, StorageError> {
        Ok(LabelValues {
            label_id: i64::from(l.label.0),
            gtin: l.gtin.as_str(),
            shelf: &l.shelf,
            bound_at: l.bound_at.0,
            confirmed_version: l
                .confirmed
                .as_ref()
                .map(|c| to_i64(c.version, "version"))
                .transpose()?,
            confirmed_batch: l.confirmed.as_ref().map(|c| c.batch_id.as_str()),
            confirmed_at: l.confirmed.as_ref().map(|c| c.at.0),
            not_updated_version: l
                .not_updated
                .as_ref()
                .map(|n| to_i64(n.version, "version"))
                .transpose()?,
            not_updated_batch: l.not_updated.as_ref().map(|n| n.batch_id.as_str()),
            not_updated_at: l.not_updated.as_ref().map(|n| n.at.0),
            not_updated_reason: l.not_updated.as_ref().map(|n| n.reason.as_str()),
        })
    }
}

/// The `price_versions` columns (gtin, version, batch, effective_at) of a stored price change
/// (schema upgrade to 5).
pub(crate) type PriceVersionRow = (String, i64, String, i64);

pub(crate) fn price_version_of(
    seq: i64,
    body: &str,
) -> Result<Option<PriceVersionRow>, StorageError> {
    match decode_change(seq, body)?.body {
        ChangeBody::Price(p) => Ok(Some((
            p.gtin.as_str().to_owned(),
            to_i64(p.version, "version")?,
            p.batch_id.as_str().to_owned(),
            p.effective_at.0,
        ))),
        _ => Ok(None),
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
    fn pickup_events_are_bounded() {
        let order = OrderId::parse("web-1").unwrap();
        let with = |body: EventBody| {
            let mut e = ev(1);
            e.body = body;
            validate_upload(&[e])
        };
        assert!(
            with(EventBody::PickupReady {
                order_id: order.clone(),
                location: "Shelf P3".into(),
                missing: vec![Gtin::from_index(1).unwrap()],
            })
            .is_ok()
        );
        for bad in [
            EventBody::PickupPicking {
                order_id: order.clone(),
                staff: String::new(),
            },
            EventBody::PickupReady {
                order_id: order.clone(),
                location: "x".repeat(65),
                missing: vec![],
            },
            EventBody::PickupReady {
                order_id: order.clone(),
                location: "P3".into(),
                missing: vec![Gtin::from_index(1).unwrap(); MAX_ORDER_LINES + 1],
            },
            EventBody::PickupCollected {
                order_id: order.clone(),
                device: "till\n2".into(),
                staff: None,
                method: aisle_protocol::pickup::RedeemMethod::Qr,
                partial: false,
            },
            EventBody::PickupCancelConflict {
                order_id: order.clone(),
                cancel_id: EventId::from_bytes([1; 16]),
                collected_at: UtcMillis(-1),
                collected_by: "till-2".into(),
            },
        ] {
            assert!(
                matches!(
                    with(bad.clone()),
                    Err(StorageError::InvalidEvent { seq: 1, .. })
                ),
                "{bad:?}"
            );
        }
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
    fn footfall_queries_are_aligned_ordered_and_bounded() {
        let h = 3_600_000;
        let q = FootfallQuery::new(UtcMillis(10 * h), UtcMillis(12 * h), h).unwrap();
        assert_eq!((q.buckets(), q.slots_per_bucket()), (2, 4));
        let day = FootfallQuery::new(UtcMillis(0), UtcMillis(DAY_MS), DAY_MS).unwrap();
        assert_eq!((day.buckets(), day.slots_per_bucket()), (1, 96));
        let refused = |from: i64, to: i64, width: i64| {
            matches!(
                FootfallQuery::new(UtcMillis(from), UtcMillis(to), width),
                Err(StorageError::InvalidInput(_))
            )
        };
        // Not whole quarter hours, not dividing a day.
        assert!(refused(0, h, 0) && refused(0, h, 60_000) && refused(0, 7 * h, 7 * h));
        // Unaligned, reversed, empty, before 1970, too many buckets.
        assert!(refused(1, h, h / 4) && refused(0, h + 1, h));
        assert!(refused(2 * h, h, h) && refused(h, h, h) && refused(-h, h, h));
        assert!(!refused(0, MAX_FOOTFALL_BUCKETS * h, h));
        assert!(refused(0, (MAX_FOOTFALL_BUCKETS + 1) * h, h));
    }

    #[test]
    fn footfall_reads_merge_per_bucket() {
        let sums = vec![FootfallSums {
            start: 0,
            entered: 5,
            exited: 4,
            slots: 2,
            events: 3,
            missing: Some(r#"["b","a"],["a","c,d"]"#.into()),
        }];
        let merged = merge_footfall(sums, vec![(0, 7), (900_000, 2)], vec![(900_000, 4)]).unwrap();
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].cameras_missing, vec!["a", "b", "c,d"]);
        assert_eq!((merged[0].entered, merged[0].occupancy), (5, Some(7)));
        assert_eq!(
            (
                merged[1].transactions,
                merged[1].occupancy,
                merged[1].entered
            ),
            (4, Some(2), 0)
        );
        let bad = FootfallSums {
            missing: Some("not json".into()),
            ..FootfallSums::default()
        };
        assert!(matches!(
            merge_footfall(vec![bad], vec![], vec![]),
            Err(StorageError::Corrupt(_))
        ));
    }

    #[test]
    fn footfall_rows_keep_missing_cameras_sorted_and_distinct() {
        let f = FootfallInterval {
            zone: "north".into(),
            start: UtcMillis(0),
            end: UtcMillis(FOOTFALL_INTERVAL_MS),
            entered: 1,
            exited: 2,
            occupancy: None,
            cameras_missing: vec!["cam-2".into(), "cam-1".into(), "cam-2".into()],
        };
        let id = EventId::from_bytes([1; 16]);
        let row = FootfallRow::new(&id, UtcMillis(5), &f).unwrap();
        assert_eq!(row.cameras_missing.as_deref(), Some(r#"["cam-1","cam-2"]"#));
        let none = FootfallRow::new(
            &id,
            UtcMillis(5),
            &FootfallInterval {
                cameras_missing: vec![],
                ..f.clone()
            },
        )
        .unwrap();
        assert_eq!(none.cameras_missing, None);
        let stored = encode_json(&EventBody::FootfallCounted(f)).unwrap();
        assert_eq!(
            FootfallRow::from_stored(&id.to_hex(), 5, &stored).unwrap(),
            Some(row)
        );
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
