//! The store's ledger: an append-only, hash-chained SQLite event log plus the state materialised
//! from it (prices, stock, sales), on one writer thread with group commit.
//!
//! Architecture invariant: no state change without its event, in the same transaction; a reply
//! (a sale's receipt above all) is sent only after that transaction committed with
//! `synchronous=FULL`, so anything acknowledged survives power loss.
//!
//! API boundary: async callers use [`Ledger`]; they never see a SQLite connection. Writes go to
//! the writer thread over a channel; reads run on their own connections on tokio's blocking pool.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aisle_protocol::pickup::PickupKey;
use aisle_protocol::sync::SaleRecord;
use aisle_protocol::sync::{
    Change, ChangeBody, FootfallInterval, LedgerEvent, Payment, PriceChange, SaleError,
};
use aisle_protocol::{BatchId, Gtin, Hlc, Money, OrderId, ProtocolError, SaleId, UtcMillis};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use rusqlite::Connection;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::clock::{HubTime, WallClock};

pub mod labels;
mod pickup;
mod pickup_state;
mod reader;
mod state;
pub mod verify;
mod writer;

pub use labels::{
    BindLabel, BindOutcome, BindProblem, BindRowError, ConfirmedLabel, LabelBinding, LabelExtra,
    LabelRecord, LabelRefusal, LabelShown, LabelStatus, LabelUpdate, NotUpdatedRecord,
    ShelfChanges, UpdateOutcome, WantedPrice,
};
pub use labels::{MAX_IMPORT_ROWS, MAX_SHELF_CHARS};
pub use pickup::{Collection, HistoryEntry, PickupAction, PickupRecord, PickupRefusal};
pub use pickup_state::{OrderLine, OrderStatus};
pub use state::StagedPrice;
pub use verify::{VerifyError, VerifyReport, verify};
pub use writer::ChargePrice;

/// The ledger database inside the data dir.
pub const DB_FILE: &str = "ledger.db";
/// Held (advisory lock) while a ledger is open, so two agents never share a data dir.
pub const LOCK_FILE: &str = "ledger.lock";

/// A sale as a lane asks for it: what was bought, not what it costs (the ledger prices it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaleRequest {
    pub sale_id: SaleId,
    pub lines: Vec<SaleRequestLine>,
    pub payment: Payment,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaleRequestLine {
    pub gtin: Gtin,
    pub qty: u32,
}

/// A committed sale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaleReceipt {
    /// The ledger seq of the `SaleCommitted` event.
    pub seq: u64,
    /// Hub-corrected time of the commit.
    pub at: UtcMillis,
    pub record: SaleRecord,
    /// True when this `sale_id` had already been committed with the same body.
    pub replayed: bool,
}

/// Why a sale was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum SaleRejection {
    #[error("sale {0} was already recorded with a different body")]
    Conflict(SaleId),
    #[error("unknown GTIN {0}: no price for it at this store")]
    UnknownGtin(Gtin),
    #[error("GTIN {0} has no active price yet (its first price is not effective)")]
    NotYetPriced(Gtin),
    #[error("{0}")]
    OfflineCap(String),
    #[error("a sale's lines must all be priced in one currency; {0}")]
    MixedCurrency(Gtin),
    #[error("{0}")]
    Invalid(#[from] SaleError),
    #[error("sale total: {0}")]
    Money(ProtocolError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// The price the store charges for a GTIN now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivePrice {
    pub gtin: Gtin,
    pub name: String,
    pub price: Money,
    pub version: u64,
    pub batch_id: BatchId,
    pub effective_at: UtcMillis,
    /// Hub-corrected time the price became active here.
    pub active_since: UtcMillis,
}

/// One row of the prices table: the active price or a pending one of a higher version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceRow {
    pub gtin: Gtin,
    pub version: u64,
    pub price: Money,
    pub name: String,
    pub batch_id: BatchId,
    pub effective_at: UtcMillis,
    pub active: bool,
    pub active_since: Option<UtcMillis>,
}

/// What applying some changes did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangeOutcome {
    /// Prices staged (a `PriceStaged` event each).
    pub staged: usize,
    /// Prices ignored because an equal or higher version was already known (no event).
    pub ignored_prices: usize,
    /// Prices that became active (a `PriceActivated` event each).
    pub activated: usize,
    /// Stock adjustments applied (a `StockAdjusted` event each).
    pub adjusted: usize,
    /// Stock adjustments ignored because their id was already applied.
    pub ignored_adjustments: usize,
    /// Pickup orders received (a `PickupReceived` event each).
    pub pickup_orders: usize,
    /// HQ cancellations answered (a `PickupCancelApplied` or `PickupCancelConflict` each).
    pub pickup_cancels: usize,
    /// Pickup keys stored (no event).
    pub pickup_keys: usize,
    /// Pickup changes that changed nothing (replays, cancellations of final orders).
    pub ignored_pickups: usize,
}

/// What camera ingestion commits in one go: its state (counter and presence, JSON, kept in the
/// `footfall_state` row) and the intervals it closed (a `FootfallCounted` event each), in one
/// transaction, so a restart never repeats or loses an interval.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FootfallBatch {
    pub state: Vec<u8>,
    pub intervals: Vec<FootfallInterval>,
}

/// One row of the materialised `footfall` table: every event for (zone, start) summed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FootfallRow {
    pub zone: String,
    pub start: UtcMillis,
    pub end: UtcMillis,
    pub entered: u64,
    pub exited: u64,
    /// From the latest event that reported one.
    pub occupancy: Option<u64>,
    /// Every camera any event of the interval named as missing.
    pub cameras_missing: Vec<String>,
    /// How many events the row sums (more than one after late readings).
    pub events: u64,
}

/// Proof of an answer from the hub: its time, and the skew measured with it (if the round trip
/// was short enough to measure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Contact {
    pub server_time: UtcMillis,
    pub skew_ms: Option<i64>,
}

/// The committed sync-relevant position of the ledger, published after every commit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerView {
    pub last_seq: u64,
    pub acked_through: u64,
    pub cursor: u64,
    /// Hub time of the last answer from the hub.
    pub last_contact: Option<UtcMillis>,
    pub skew_ms: i64,
}

impl LedgerView {
    /// Events the hub has not acknowledged.
    pub fn outbox_depth(&self) -> u64 {
        self.last_seq.saturating_sub(self.acked_through)
    }
}

/// Counters for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerStats {
    /// Write transactions committed (each holds a group of commands).
    pub transactions: u64,
    /// Commands executed (committed or failed alone).
    pub commands: u64,
    pub events: u64,
    pub sales_committed: u64,
}

/// Prometheus metrics the ledger keeps (registered by the agent's metrics module).
#[derive(Clone, Debug)]
pub struct LedgerMetrics {
    pub sales_committed: Counter,
    pub transactions: Counter,
    pub events: Counter,
    /// Commands per committed transaction.
    pub group_size: Histogram,
}

impl Default for LedgerMetrics {
    fn default() -> Self {
        LedgerMetrics {
            sales_committed: Counter::default(),
            transactions: Counter::default(),
            events: Counter::default(),
            group_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger storage: {0}")]
    Storage(#[from] rusqlite::Error),
    #[error("ledger file: {0}")]
    Io(#[from] std::io::Error),
    #[error("data dir {0} is in use by another aisle-agent")]
    Locked(PathBuf),
    #[error("the ledger is closed")]
    Closed,
    #[error("event seq {seq}: {reason}")]
    Corrupt { seq: u64, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("commit failed, nothing of this group was stored: {0}")]
    Commit(String),
}

impl From<state::StateError> for LedgerError {
    fn from(e: state::StateError) -> Self {
        match e {
            state::StateError::Sql(e) => LedgerError::Storage(e),
            other => LedgerError::Invalid(other.to_string()),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub transactions: AtomicU64,
    pub commands: AtomicU64,
}

/// Handle to an open ledger. Cheap to clone; every clone talks to the same writer thread.
#[derive(Clone, Debug)]
pub struct Ledger {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    commands: mpsc::Sender<writer::Command>,
    readers: reader::ReaderPool,
    view: watch::Receiver<LedgerView>,
    prices_staged: Arc<Notify>,
    time: Arc<HubTime>,
    metrics: LedgerMetrics,
    counters: Arc<Counters>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Ledger {
    /// Opens (creating if needed) the ledger in `dir` without blocking a tokio worker.
    pub async fn open(dir: &Path, clock: Arc<dyn WallClock>) -> Result<Ledger, LedgerError> {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || Ledger::open_blocking(&dir, clock))
            .await
            .map_err(|e| LedgerError::Invalid(format!("ledger open task failed: {e}")))?
    }

    /// Opens the ledger from a plain thread (the caller may block).
    pub fn open_blocking(dir: &Path, clock: Arc<dyn WallClock>) -> Result<Ledger, LedgerError> {
        std::fs::create_dir_all(dir)?;
        let opened = writer::Writer::open(dir, clock)?;
        let (commands, rx) = mpsc::channel(writer::QUEUE_DEPTH);
        let inner_view = opened.view.subscribe();
        let prices_staged = opened.prices_staged.clone();
        let time = opened.time.clone();
        let metrics = opened.metrics.clone();
        let counters = opened.counters.clone();
        let thread = std::thread::Builder::new()
            .name("aisle-ledger-writer".into())
            .spawn(move || opened.run(rx))?;
        Ok(Ledger {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                commands,
                readers: reader::ReaderPool::new(dir.join(DB_FILE)),
                view: inner_view,
                prices_staged,
                time,
                metrics,
                counters,
                writer_thread: Mutex::new(Some(thread)),
            }),
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.dir
    }

    async fn send<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> writer::Command,
    ) -> Result<T, LedgerError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(make(tx))
            .await
            .map_err(|_| LedgerError::Closed)?;
        rx.await.map_err(|_| LedgerError::Closed)
    }

    /// Prices a sale from the active prices, decrements stock and commits it durably; answers
    /// after the commit. Idempotent by `sale_id`.
    pub async fn record_sale(&self, req: SaleRequest) -> Result<SaleReceipt, SaleRejection> {
        self.send(|reply| writer::Command::Sale {
            req: writer::SaleInput::Request(req),
            reply,
        })
        .await?
    }

    /// Commits a sale a lane priced as the shopper scanned (see [`Ledger::charge_price`]):
    /// durable when this returns. The same record again is answered as a replay.
    /// A card payment taken offline is refused (`OfflineCap`) when the offline payments the
    /// hub does not hold yet would exceed `offline_cap`, checked in the commit's transaction.
    pub async fn record_priced_sale(
        &self,
        record: SaleRecord,
        offline_cap: Option<Money>,
    ) -> Result<SaleReceipt, SaleRejection> {
        self.send(|reply| writer::Command::Sale {
            req: writer::SaleInput::Priced(record, offline_cap),
            reply,
        })
        .await?
    }

    /// What a lane charges for `gtin` now: the active price, or the lower price a label bound
    /// to it confirmed it shows (price integrity). Unknown or not yet priced GTINs are refused.
    pub async fn charge_price(&self, gtin: Gtin) -> Result<ChargePrice, SaleRejection> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            inner
                .readers
                .with(|c| Ok(writer::charge_price(c, &gtin)))
                .unwrap_or_else(|e| Err(SaleRejection::Ledger(e)))
        })
        .await
        .map_err(|e| {
            SaleRejection::Ledger(LedgerError::Invalid(format!(
                "ledger read task failed: {e}"
            )))
        })?
    }

    /// Card payments taken offline (store-and-forward) in `currency` whose sales the hub does
    /// not hold yet: what counts against the offline caps.
    pub async fn offline_card_total(
        &self,
        currency: aisle_protocol::Currency,
    ) -> Result<Money, LedgerError> {
        self.read(move |c| reader::offline_card_total(c, currency))
            .await
    }

    /// Stages prices as if they came from the changefeed, without moving the cursor (seeding,
    /// tests, benches). Due prices activate in the same transaction.
    pub async fn stage_prices(
        &self,
        prices: Vec<PriceChange>,
    ) -> Result<ChangeOutcome, LedgerError> {
        let changes = prices
            .into_iter()
            .map(|p| Change {
                seq: 0,
                body: ChangeBody::Price(p),
            })
            .collect();
        self.apply_changes(changes, None, None).await
    }

    /// Applies a changefeed page and stores `next_cursor` (if given) and the hub contact in the
    /// same transaction.
    pub async fn apply_changes(
        &self,
        changes: Vec<Change>,
        next_cursor: Option<u64>,
        contact: Option<Contact>,
    ) -> Result<ChangeOutcome, LedgerError> {
        self.send(|reply| writer::Command::Changes {
            changes,
            next_cursor,
            contact,
            reply,
        })
        .await?
    }

    /// Activates every pending price whose `effective_at` has come on hub-corrected time.
    pub async fn activate_due(&self) -> Result<usize, LedgerError> {
        self.send(|reply| writer::Command::ActivateDue { reply })
            .await?
    }

    /// Records the hub's acknowledgement of every event up to `acked_through`.
    pub async fn ack(
        &self,
        acked_through: u64,
        contact: Option<Contact>,
    ) -> Result<(), LedgerError> {
        self.send(|reply| writer::Command::Ack {
            acked_through,
            contact,
            reply,
        })
        .await?
    }

    /// The hub says it needs events from `seq` on (409 seq_gap): resend from there.
    pub async fn resend_from(&self, seq: u64) -> Result<(), LedgerError> {
        self.send(|reply| writer::Command::ResendFrom { seq, reply })
            .await?
    }

    /// The hub no longer holds our cursor (410): start the changefeed again from 0.
    pub async fn reset_cursor(&self) -> Result<(), LedgerError> {
        self.send(|reply| writer::Command::ResetCursor { reply })
            .await?
    }

    /// Records an answer from the hub (time, skew) when nothing else is written with it.
    pub async fn record_contact(&self, contact: Contact) -> Result<(), LedgerError> {
        self.send(|reply| writer::Command::Contact { contact, reply })
            .await?
    }

    /// Stores camera ingestion's state and appends a `FootfallCounted` event per interval, in one
    /// transaction (group-committed with whatever else is waiting). Answers the number of events
    /// after the commit. Nothing is written if any interval is invalid.
    pub async fn commit_footfall(&self, batch: FootfallBatch) -> Result<usize, LedgerError> {
        self.send(|reply| writer::Command::Footfall { batch, reply })
            .await?
    }

    /// A staff action on a pickup order (pick, ready, redeem), decided by the writer from the
    /// committed state and answered after its event committed (a redeem's `PickupCollected` is
    /// fsynced before the answer says hand it over).
    pub async fn pickup(&self, action: PickupAction) -> Result<PickupRecord, PickupRefusal> {
        self.send(|reply| writer::Command::Pickup { action, reply })
            .await?
    }

    /// Expires every open pickup order whose `expires_at` has come on hub-corrected time.
    pub async fn expire_pickups(&self) -> Result<usize, LedgerError> {
        self.send(|reply| writer::Command::ExpirePickups { reply })
            .await?
    }

    /// Binds labels to products at shelf positions: every row or none (each refused row is
    /// named by its `line`). A row equal to the binding held changes nothing. Answers after the
    /// `LabelBound` events committed.
    pub async fn bind_labels(
        &self,
        rows: Vec<(usize, BindLabel)>,
    ) -> Result<BindOutcome, LabelRefusal> {
        self.send(|reply| writer::Command::LabelBind { rows, reply })
            .await?
    }

    /// Takes a label off its product (`LabelUnbound`); answers the binding it had.
    pub async fn unbind_label(
        &self,
        label: aisle_protocol::esl::LabelId,
        by: Option<String>,
    ) -> Result<LabelBinding, LabelRefusal> {
        self.send(|reply| writer::Command::LabelUnbind { label, by, reply })
            .await?
    }

    /// Records what the label planner saw (`LabelConfirmed`, `LabelNotUpdated`) for many labels
    /// in one command: one transaction, one fsync. Updates already recorded, or about a binding
    /// that changed meanwhile, append nothing.
    pub async fn commit_label_updates(
        &self,
        updates: Vec<LabelUpdate>,
    ) -> Result<UpdateOutcome, LedgerError> {
        self.send(|reply| writer::Command::LabelUpdates { updates, reply })
            .await?
    }

    /// One bound label with its active price, confirmation and "not updated" record.
    pub async fn label(
        &self,
        label: aisle_protocol::esl::LabelId,
    ) -> Result<Option<LabelRecord>, LedgerError> {
        self.read(move |c| labels::record(c, label)).await
    }

    /// Bound labels with ids above `after`, by id, at most `limit`.
    pub async fn labels(
        &self,
        after: Option<aisle_protocol::esl::LabelId>,
        limit: usize,
    ) -> Result<Vec<LabelRecord>, LedgerError> {
        self.read(move |c| labels::records(c, after, limit)).await
    }

    /// Bound labels of these GTINs and these labels, or all of them when `all`.
    pub async fn labels_touching(
        &self,
        gtins: Vec<Gtin>,
        labels: Vec<aisle_protocol::esl::LabelId>,
        all: bool,
    ) -> Result<Vec<LabelRecord>, LedgerError> {
        self.read(move |c| labels::records_touching(c, &gtins, &labels, all))
            .await
    }

    /// Active prices and bindings that changed after ledger seq `after`.
    pub async fn shelf_changes_after(&self, after: u64) -> Result<ShelfChanges, LedgerError> {
        self.read(move |c| labels::shelf_changes_after(c, after))
            .await
    }

    /// Bound labels per status.
    pub async fn label_counts(
        &self,
    ) -> Result<std::collections::HashMap<LabelStatus, u64>, LedgerError> {
        self.read(labels::status_counts).await
    }

    /// One pickup order with its history.
    pub async fn pickup_order(
        &self,
        order_id: OrderId,
    ) -> Result<Option<PickupRecord>, LedgerError> {
        self.read(move |c| pickup::record(c, &order_id)).await
    }

    /// Pickup orders in any of `statuses`, by pickup_by then order_id, at most `limit`.
    pub async fn pickup_orders(
        &self,
        statuses: Vec<OrderStatus>,
        limit: u32,
    ) -> Result<Vec<PickupRecord>, LedgerError> {
        self.read(move |c| pickup::records(c, &statuses, limit))
            .await
    }

    /// The order whose fallback code has this digest (`code_digest(store, code)`).
    pub async fn pickup_order_by_digest(
        &self,
        digest: String,
    ) -> Result<Option<OrderId>, LedgerError> {
        self.read(move |c| pickup::order_by_digest(c, &digest))
            .await
    }

    /// The hub's pickup keys this store holds.
    pub async fn pickup_keys(&self) -> Result<Vec<PickupKey>, LedgerError> {
        self.read(pickup::keys).await
    }

    /// The earliest `expires_at` among open pickup orders.
    pub async fn next_pickup_expiry(&self) -> Result<Option<UtcMillis>, LedgerError> {
        self.read(pickup::next_expiry).await
    }

    /// Pickup orders per status.
    pub async fn pickup_counts(&self) -> Result<Vec<(OrderStatus, u64)>, LedgerError> {
        self.read(pickup::counts).await
    }

    /// Finishes the commands already queued, closes the database and releases the data dir.
    pub async fn close(&self) {
        if self
            .send(|reply| writer::Command::Close { reply })
            .await
            .is_err()
        {
            // Already closed by another clone.
        }
        let thread = self
            .inner
            .writer_thread
            .lock()
            .ok()
            .and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.readers.with(f))
            .await
            .map_err(|e| LedgerError::Invalid(format!("ledger read task failed: {e}")))?
    }

    /// The price active now for `gtin`, if any.
    pub async fn active_price(&self, gtin: Gtin) -> Result<Option<ActivePrice>, LedgerError> {
        self.read(move |c| reader::active_price(c, &gtin)).await
    }

    /// Every price row kept for `gtin` (active and pending), by version.
    pub async fn prices(&self, gtin: Gtin) -> Result<Vec<PriceRow>, LedgerError> {
        self.read(move |c| reader::prices(c, &gtin)).await
    }

    /// Stock on hand for `gtin` (0 if never moved).
    pub async fn stock(&self, gtin: Gtin) -> Result<i64, LedgerError> {
        self.read(move |c| reader::stock(c, &gtin)).await
    }

    /// A committed sale by id.
    pub async fn sale(&self, sale_id: SaleId) -> Result<Option<SaleReceipt>, LedgerError> {
        self.read(move |c| reader::sale(c, &sale_id)).await
    }

    /// Up to `limit` events after `after`, in seq order, at most ~8 MiB of payload.
    pub async fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        self.read(move |c| reader::events_after(c, after, limit))
            .await
    }

    /// The state camera ingestion last committed, if any.
    pub async fn footfall_state(&self) -> Result<Option<Vec<u8>>, LedgerError> {
        self.read(reader::footfall_state).await
    }

    /// Footfall rows with `start` in `[from, to)`, by start then zone.
    pub async fn footfall(
        &self,
        from: UtcMillis,
        to: UtcMillis,
    ) -> Result<Vec<FootfallRow>, LedgerError> {
        self.read(move |c| reader::footfall(c, from, to)).await
    }

    /// The earliest `effective_at` among pending prices.
    pub async fn next_pending_effective_at(&self) -> Result<Option<UtcMillis>, LedgerError> {
        self.read(reader::next_pending_effective_at).await
    }

    /// The committed position (seq, ack, cursor, contact, skew), without touching SQLite.
    pub fn view(&self) -> LedgerView {
        self.inner.view.borrow().clone()
    }

    /// Changes whenever a commit moves the view (new events, acks, cursor, contact).
    pub fn subscribe(&self) -> watch::Receiver<LedgerView> {
        self.inner.view.clone()
    }

    /// Notified after a commit that staged prices (wakes the price activator).
    pub fn prices_staged(&self) -> Arc<Notify> {
        self.inner.prices_staged.clone()
    }

    /// Hub-corrected time, with the persisted skew.
    pub fn hub_time(&self) -> Arc<HubTime> {
        self.inner.time.clone()
    }

    pub fn metrics(&self) -> &LedgerMetrics {
        &self.inner.metrics
    }

    pub fn stats(&self) -> LedgerStats {
        LedgerStats {
            transactions: self.inner.counters.transactions.load(Ordering::Relaxed),
            commands: self.inner.counters.commands.load(Ordering::Relaxed),
            events: self.inner.metrics.events.get(),
            sales_committed: self.inner.metrics.sales_committed.get(),
        }
    }
}

/// HLC as stored: 8-byte wall_ms and 4-byte counter, big-endian (sorts like the HLC).
pub(crate) fn hlc_to_bytes(h: Hlc) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&h.wall_ms.to_be_bytes());
    b[8..].copy_from_slice(&h.counter.to_be_bytes());
    b
}

pub(crate) fn hlc_from_bytes(b: &[u8]) -> Option<Hlc> {
    let wall: [u8; 8] = b.get(..8)?.try_into().ok()?;
    let counter: [u8; 4] = b.get(8..12)?.try_into().ok()?;
    (b.len() == 12).then(|| Hlc {
        wall_ms: u64::from_be_bytes(wall),
        counter: u32::from_be_bytes(counter),
    })
}
