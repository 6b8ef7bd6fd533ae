//! [`HubStorage`] on an embedded SQLite file (WAL, `synchronous=FULL`).
//!
//! SQLite allows one writer at a time, so one write connection behind an async mutex does all
//! writes (`BEGIN IMMEDIATE`), and reads use a small pool of read-only connections. Every call
//! runs on the blocking thread pool, never on a tokio worker. With a single writer, seqs commit
//! in the order they are drawn, which is what keeps changefeed and sales cursors from skipping.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aisle_protocol::pickup::PickupKey;
use aisle_protocol::sync::{ChangeBody, ChangePage, LedgerEvent, PriceChange, UploadAck};
use aisle_protocol::{BatchId, EventId, GatewayId, Gtin, OrderId, StoreId, UtcMillis};
use async_trait::async_trait;
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};
use tokio::sync::Semaphore;

use super::{
    AdjustmentReceipt, AuthenticatedGateway, Backend, BatchProgress, BatchReceipt,
    CompactionReport, FootfallQuery, FootfallRow, FootfallSums, FootfallTally, GatewayCredential,
    HubStorage, NewStockAdjustment, NewStore, SCHEMA_VERSION, SalesPage, SalesSince, SideEffect,
    StockLevel, StorageError, Store, StoreProgress, adjustment_delta_key,
    check_batch_against_stores, decode_change, decode_sale, encode_json, hashes_equal,
    merge_footfall, new_batch_id, now, page_of, parse_currency, parse_gtin, parse_store_id,
    sale_delta_key, side_effect, split_upload, to_i64, to_u64, validate_upload, version_floor,
};
use super::{sqlite_labels, sqlite_orders, sqlite_security};
use crate::changefeed::{ChangeFeed, ChangeSubscription};
use crate::labels::{LabelPage, LabelQuery};
use crate::pickup::token::PickupSigningKey;
use crate::pickup::{
    CancelReceipt, NewOrder, OrderFilter, OrderReceipt, OrderSummary, OrderView, WebhookDelivery,
};
use crate::price_batch::PriceBatch;
use crate::security::{
    Actor, ApiTokenInfo, AuditEntry, AuditInput, EnrolAttempt, EnrolRefusal, EnrolledGateway,
    GatewayInfo, GatewayKey, NewApiToken, NewEnrolment, NonceOutcome, Role, action,
};

const SCHEMA: &str = include_str!("schema_sqlite.sql");
/// Most read connections open at once.
const MAX_READERS: usize = 8;
/// How long a statement waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// SQLite-backed hub storage.
#[derive(Debug)]
pub struct SqliteStorage {
    writer: Arc<tokio::sync::Mutex<Connection>>,
    /// Records signed requests' nonces with `synchronous=NORMAL`: in WAL mode a commit then
    /// survives a crash of the process, only not a power loss, and costs no fsync on every
    /// gateway request (see `remember_nonce`).
    nonces: Arc<tokio::sync::Mutex<Connection>>,
    readers: Arc<ReaderPool>,
    feed: Arc<ChangeFeed>,
}

#[derive(Debug)]
struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl ReaderPool {
    fn checkout(&self) -> Result<Connection, StorageError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(conn) => Ok(conn),
            None => {
                let conn = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                conn.busy_timeout(BUSY_TIMEOUT)?;
                // Readers never write: enforce it, so a bug cannot bypass the single writer.
                conn.pragma_update(None, "query_only", "ON")?;
                Ok(conn)
            }
        }
    }

    fn checkin(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_READERS {
            idle.push(conn);
        }
    }
}

fn worker_error(e: tokio::task::JoinError) -> StorageError {
    StorageError::Worker(e.to_string())
}

impl SqliteStorage {
    /// Opens or creates the database file at `path` and brings its schema up to date.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        let writer_path = path.clone();
        let writer = tokio::task::spawn_blocking(move || -> Result<Connection, StorageError> {
            let mut conn = Connection::open(&writer_path).map_err(|e| {
                StorageError::Unavailable(format!("cannot open {}: {e}", writer_path.display()))
            })?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            let mode: String =
                conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StorageError::Unavailable(format!(
                    "SQLite refused WAL mode (journal_mode={mode})"
                )));
            }
            // FULL: a write the hub acknowledged survives power loss.
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.pragma_update(None, "foreign_keys", "ON")?;
            migrate(&mut conn)?;
            Ok(conn)
        })
        .await
        .map_err(worker_error)??;
        let nonce_path = path.clone();
        let nonces = tokio::task::spawn_blocking(move || -> Result<Connection, StorageError> {
            let conn = Connection::open(&nonce_path)?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            Ok(conn)
        })
        .await
        .map_err(worker_error)??;
        Ok(SqliteStorage {
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            nonces: Arc::new(tokio::sync::Mutex::new(nonces)),
            readers: Arc::new(ReaderPool {
                path,
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(Semaphore::new(MAX_READERS)),
            }),
            feed: Arc::new(ChangeFeed::new()),
        })
    }

    /// Runs `f` on the write connection, on the blocking pool, one writer at a time.
    async fn write<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
    {
        // Waiting for the writer happens here, asynchronously, not on a blocking thread.
        let mut conn = self.writer.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || f(&mut conn))
            .await
            .map_err(worker_error)?
    }

    /// Runs `f` on a pooled read connection, on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
    {
        let permit = self
            .readers
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| StorageError::Worker(e.to_string()))?;
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut conn = pool.checkout()?;
            let result = f(&mut conn);
            pool.checkin(conn);
            result
        })
        .await
        .map_err(worker_error)?
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StorageError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA)?;
    let found: Option<i64> =
        tx.query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))?;
    match found {
        None => {
            tx.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                [SCHEMA_VERSION],
            )?;
        }
        Some(v) if v > SCHEMA_VERSION => return Err(StorageError::SchemaTooNew { found: v }),
        Some(v) if v < SCHEMA_VERSION => {
            if v < 2 {
                backfill_footfall(&tx)?;
            }
            // 3 adds the pickup tables (created above, empty): a version 2 hub refused pickup
            // events, so there is nothing to derive. 4 adds the security tables, empty too.
            // 5 adds the label tables (a version 4 hub kept no label state to derive; its
            // label events stay stored, unapplied) and the history of issued prices.
            if v < 5 {
                sqlite_labels::backfill_price_versions(&tx)?;
            }
            tx.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                [SCHEMA_VERSION],
            )?;
        }
        Some(_) => {}
    }
    tx.commit()?;
    Ok(())
}

/// Version 1 stored FootfallCounted events without footfall rows: derive them once.
fn backfill_footfall(tx: &Transaction<'_>) -> Result<(), StorageError> {
    let mut read = tx.prepare(
        "SELECT event_id, store_id, at, payload FROM events WHERE kind = 'footfall_counted'",
    )?;
    let mut insert = tx.prepare(INSERT_FOOTFALL)?;
    let mut rows = read.query([])?;
    while let Some(r) = rows.next()? {
        let (event_id, store, at, payload): (String, String, i64, String) =
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
        if let Some(row) = FootfallRow::from_stored(&event_id, at, &payload)? {
            insert_footfall(&mut insert, &store, &row)?;
        }
    }
    Ok(())
}

const INSERT_FOOTFALL: &str = "INSERT INTO footfall (event_id, store_id, zone, start_ms, entered, exited, occupancy, cameras_missing, at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (event_id) DO NOTHING";

fn insert_footfall(
    stmt: &mut rusqlite::Statement<'_>,
    store: &str,
    row: &FootfallRow,
) -> Result<(), StorageError> {
    stmt.execute(params![
        row.event_id,
        store,
        row.zone,
        row.start,
        row.entered,
        row.exited,
        row.occupancy,
        row.cameras_missing,
        row.at
    ])?;
    Ok(())
}

fn read_footfall(
    conn: &mut Connection,
    store: &StoreId,
    q: &FootfallQuery,
) -> Result<Vec<FootfallTally>, StorageError> {
    // One read transaction: footfall and sales come from the same snapshot.
    let tx = conn.transaction()?;
    let args = params![store.as_str(), q.from().0, q.to().0, q.bucket_ms()];
    let mut stmt = tx.prepare(
        "SELECT (start_ms / ?4) * ?4 AS bucket, SUM(entered), SUM(exited),
                COUNT(DISTINCT start_ms), COUNT(*), group_concat(DISTINCT cameras_missing)
           FROM footfall WHERE store_id = ?1 AND start_ms >= ?2 AND start_ms < ?3
          GROUP BY bucket ORDER BY bucket",
    )?;
    let sums = stmt
        .query_map(args, |r| {
            Ok(FootfallSums {
                start: r.get(0)?,
                entered: r.get(1)?,
                exited: r.get(2)?,
                slots: r.get(3)?,
                events: r.get(4)?,
                missing: r.get(5)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut stmt = tx.prepare(
        "SELECT bucket, occupancy FROM (
             SELECT (start_ms / ?4) * ?4 AS bucket, occupancy,
                    ROW_NUMBER() OVER (PARTITION BY start_ms / ?4
                                       ORDER BY start_ms DESC, at DESC, occupancy DESC) AS rn
               FROM footfall
              WHERE store_id = ?1 AND start_ms >= ?2 AND start_ms < ?3 AND occupancy IS NOT NULL)
          WHERE rn = 1",
    )?;
    let occupancy = stmt
        .query_map(args, |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    let mut stmt = tx.prepare(
        "SELECT (sold_at / ?4) * ?4 AS bucket, COUNT(*) FROM sales
          WHERE store_id = ?1 AND sold_at >= ?2 AND sold_at < ?3 GROUP BY bucket",
    )?;
    let sales = stmt
        .query_map(args, |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    merge_footfall(sums, occupancy, sales)
}

pub(super) fn immediate(conn: &mut Connection) -> Result<Transaction<'_>, StorageError> {
    Ok(conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
}

fn store_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, String, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn to_store(raw: (String, String, String, i64)) -> Result<Store, StorageError> {
    Ok(Store {
        id: parse_store_id(&raw.0)?,
        name: raw.1,
        currency: parse_currency(&raw.2)?,
        created_at: UtcMillis(raw.3),
    })
}

fn load_store(conn: &Connection, id: &StoreId) -> Result<Option<Store>, StorageError> {
    conn.query_row(
        "SELECT store_id, name, currency, created_at FROM stores WHERE store_id = ?1",
        [id.as_str()],
        store_from_row,
    )
    .optional()?
    .map(to_store)
    .transpose()
}

pub(super) fn load_stores(conn: &Connection) -> Result<Vec<Store>, StorageError> {
    let mut stmt =
        conn.prepare("SELECT store_id, name, currency, created_at FROM stores ORDER BY store_id")?;
    let rows = stmt.query_map([], store_from_row)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(to_store(row?)?);
    }
    Ok(out)
}

pub(super) fn require_store(conn: &Connection, id: &StoreId) -> Result<Store, StorageError> {
    load_store(conn, id)?.ok_or_else(|| StorageError::UnknownStore(id.clone()))
}

fn insert_price_batch(
    conn: &mut Connection,
    batch: &PriceBatch,
    actor: &Actor,
) -> Result<BatchReceipt, StorageError> {
    let tx = immediate(conn)?;
    let stores = match batch.stores() {
        crate::price_batch::BatchStores::All => load_stores(&tx)?,
        crate::price_batch::BatchStores::Only(ids) => ids
            .iter()
            .map(|id| require_store(&tx, id))
            .collect::<Result<Vec<_>, _>>()?,
    };
    check_batch_against_stores(batch, &stores)?;
    let batch_id = new_batch_id()?;
    let created_at = now();
    let effective_at = batch.effective_at().unwrap_or(created_at);
    let items = batch.items().len();
    tx.execute(
        "INSERT INTO price_batches (batch_id, created_at, effective_at, items) VALUES (?1, ?2, ?3, ?4)",
        params![batch_id.as_str(), created_at.0, effective_at.0, items as i64],
    )?;
    {
        let mut batch_store = tx.prepare(
            "INSERT INTO price_batch_stores (batch_id, store_id, items) VALUES (?1, ?2, ?3)",
        )?;
        // Versions never repeat one issued before a restore from backup (see `version_floor`).
        let mut upsert = tx.prepare(
            "INSERT INTO prices (store_id, gtin, version, price_minor, currency, name, batch_id, effective_at)
             VALUES (?1, ?2, ?8, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (store_id, gtin) DO UPDATE SET
                 version = MAX(version + 1, excluded.version), price_minor = excluded.price_minor,
                 currency = excluded.currency, name = excluded.name,
                 batch_id = excluded.batch_id, effective_at = excluded.effective_at
             RETURNING version",
        )?;
        let mut change = tx.prepare(
            "INSERT INTO changes (store_id, kind, gtin, version, body, created_at)
             VALUES (?1, 'price', ?2, ?3, ?4, ?5)",
        )?;
        for store in &stores {
            batch_store.execute(params![batch_id.as_str(), store.id.as_str(), items as i64])?;
            for item in batch.items() {
                let version: i64 = upsert.query_row(
                    params![
                        store.id.as_str(),
                        item.gtin.as_str(),
                        item.price.minor,
                        item.price.currency.code(),
                        item.name,
                        batch_id.as_str(),
                        effective_at.0,
                        version_floor(created_at)
                    ],
                    |r| r.get(0),
                )?;
                sqlite_labels::insert_price_version(
                    &tx,
                    store.id.as_str(),
                    item.gtin.as_str(),
                    version,
                    &batch_id,
                    effective_at,
                )?;
                let body = encode_json(&ChangeBody::Price(PriceChange {
                    gtin: item.gtin,
                    version: to_u64(version, "price version")?,
                    price: item.price,
                    name: item.name.clone(),
                    effective_at,
                    batch_id: batch_id.clone(),
                }))?;
                change.execute(params![
                    store.id.as_str(),
                    item.gtin.as_str(),
                    version,
                    body,
                    created_at.0
                ])?;
            }
        }
    }
    sqlite_security::append_audit(
        &tx,
        &AuditInput::new(
            actor,
            action::PRICE_BATCH,
            batch_id.as_str(),
            serde_json::json!({
                "items": items,
                "stores": stores.len(),
                "effective_at": effective_at.0,
            }),
        ),
        created_at,
    )?;
    tx.commit()?;
    Ok(BatchReceipt {
        batch_id,
        created_at,
        effective_at,
        items,
        stores: stores.into_iter().map(|s| s.id).collect(),
    })
}

fn read_changes(
    conn: &mut Connection,
    store: &StoreId,
    cursor: u64,
    limit: u32,
) -> Result<ChangePage, StorageError> {
    // One read transaction: head and rows come from the same snapshot.
    let tx = conn.transaction()?;
    let head: i64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM changes", [], |r| {
        r.get(0)
    })?;
    let head = to_u64(head, "head")?;
    if cursor > head {
        return Err(StorageError::CursorAhead { cursor, head });
    }
    let mut stmt = tx.prepare(
        "SELECT seq, body FROM changes WHERE store_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![
            store.as_str(),
            to_i64(cursor, "cursor")?,
            i64::from(limit) + 1
        ],
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
    )?;
    let mut changes = Vec::new();
    for row in rows {
        let (seq, body) = row?;
        changes.push(decode_change(seq, &body)?);
    }
    Ok(page_of(changes, cursor, limit))
}

fn ingest(
    conn: &mut Connection,
    gateway: &GatewayId,
    events: &[LedgerEvent],
) -> Result<UploadAck, StorageError> {
    // BEGIN IMMEDIATE takes SQLite's write lock: this is the gateway row lock, and more.
    let tx = immediate(conn)?;
    let row: Option<(String, i64, Option<i64>)> = tx
        .query_row(
            "SELECT store_id, acked_through, revoked_at FROM gateways WHERE gateway_id = ?1",
            [gateway.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((store, acked, revoked)) = row else {
        return Err(StorageError::UnknownGateway(gateway.clone()));
    };
    if revoked.is_some() {
        return Err(StorageError::BadCredential);
    }
    let acked = to_u64(acked, "acked_through")?;
    let (known, fresh) = split_upload(acked, events)?;
    if let (Some(first), Some(last)) = (known.first(), known.last()) {
        let mut stmt = tx.prepare(
            "SELECT seq, event_id FROM events WHERE gateway_id = ?1 AND seq BETWEEN ?2 AND ?3",
        )?;
        let stored: HashMap<i64, String> = stmt
            .query_map(
                params![
                    gateway.as_str(),
                    to_i64(first.seq, "seq")?,
                    to_i64(last.seq, "seq")?
                ],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
            .collect::<Result<_, _>>()?;
        for ev in known {
            if stored.get(&to_i64(ev.seq, "seq")?) != Some(&ev.id.to_hex()) {
                return Err(StorageError::EventConflict { seq: ev.seq });
            }
        }
    }
    let received_at = now();
    {
        let mut insert_event = tx.prepare(
            "INSERT INTO events (gateway_id, seq, event_id, store_id, kind, hlc_wall, hlc_counter, at, payload, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        let mut insert_sale = tx.prepare(
            "INSERT INTO sales (event_id, store_id, gateway_id, sale_id, sold_at, total_minor, currency, record)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (event_id) DO NOTHING",
        )?;
        let mut insert_delta = tx.prepare(
            "INSERT INTO stock_deltas (delta_key, store_id, gtin, delta, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
        )?;
        let mut insert_progress = tx.prepare(
            "INSERT INTO batch_progress (event_id, batch_id, store_id, gtin, version, kind)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
        )?;
        let mut insert_footfall_row = tx.prepare(INSERT_FOOTFALL)?;
        let mut label_events = Vec::new();
        for ev in fresh {
            let event_id = ev.id.to_hex();
            insert_event.execute(params![
                gateway.as_str(),
                to_i64(ev.seq, "seq")?,
                event_id,
                store,
                ev.body.kind(),
                to_i64(ev.hlc.wall_ms, "hlc")?,
                i64::from(ev.hlc.counter),
                ev.at.0,
                encode_json(&ev.body)?,
                received_at.0
            ])?;
            match side_effect(&ev.body) {
                SideEffect::Sale(sale) => {
                    let inserted = insert_sale.execute(params![
                        event_id,
                        store,
                        gateway.as_str(),
                        sale.sale_id.as_str(),
                        ev.at.0,
                        sale.total.minor,
                        sale.total.currency.code(),
                        encode_json(sale)?
                    ])?;
                    // Stock moves only with the sale row: a sale seen before moves nothing.
                    if inserted == 1 {
                        for (i, line) in sale.lines.iter().enumerate() {
                            insert_delta.execute(params![
                                sale_delta_key(&ev.id, i + 1),
                                store,
                                line.gtin.as_str(),
                                line.stock_delta(),
                                received_at.0
                            ])?;
                        }
                    }
                }
                SideEffect::Progress {
                    batch_id,
                    gtin,
                    version,
                    kind,
                } => {
                    insert_progress.execute(params![
                        event_id,
                        batch_id.as_str(),
                        store,
                        gtin.as_str(),
                        to_i64(version, "version")?,
                        kind
                    ])?;
                }
                SideEffect::Footfall(f) => {
                    let row = FootfallRow::new(&ev.id, ev.at, f)?;
                    insert_footfall(&mut insert_footfall_row, &store, &row)?;
                }
                SideEffect::Pickup(order) => {
                    sqlite_orders::apply_store_event(&tx, &store, ev, order, received_at)?;
                }
                SideEffect::Label => label_events.push(ev),
                SideEffect::None => {}
            }
        }
        sqlite_labels::apply_label_events(&tx, gateway, &store, &label_events, received_at)?;
    }
    let acked_through = fresh.last().map_or(acked, |ev| ev.seq);
    tx.execute(
        "UPDATE gateways SET acked_through = ?2, last_upload_at = ?3 WHERE gateway_id = ?1",
        params![
            gateway.as_str(),
            to_i64(acked_through, "acked_through")?,
            received_at.0
        ],
    )?;
    tx.commit()?;
    Ok(UploadAck {
        acked_through,
        server_time: now(),
    })
}

fn read_sales(
    conn: &mut Connection,
    store: &StoreId,
    since: SalesSince,
    limit: u32,
) -> Result<SalesPage, StorageError> {
    let tx = conn.transaction()?;
    let fetch = i64::from(limit) + 1;
    let (sql, key) = match since {
        SalesSince::All => ("hub_seq > ?2", 0),
        SalesSince::Cursor(c) => ("hub_seq > ?2", to_i64(c, "cursor")?),
        SalesSince::Time(t) => ("sold_at >= ?2", t.0),
    };
    let mut stmt = tx.prepare(&format!(
        "SELECT hub_seq, event_id, gateway_id, sold_at, record FROM sales
         WHERE store_id = ?1 AND {sql} ORDER BY hub_seq LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![store.as_str(), key, fetch], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    let mut sales = Vec::new();
    for row in rows {
        let (seq, ev, gw, at, rec) = row?;
        sales.push(decode_sale(seq, &ev, &gw, at, &rec)?);
    }
    let more = sales.len() > limit as usize;
    sales.truncate(limit as usize);
    let next = match (sales.last(), since) {
        (Some(last), _) => last.hub_seq,
        (None, SalesSince::All) => 0,
        (None, SalesSince::Cursor(c)) => c,
        (None, SalesSince::Time(_)) => {
            // Nothing sold since then: continue after everything stored so far.
            let max: i64 = tx.query_row(
                "SELECT COALESCE(MAX(hub_seq), 0) FROM sales WHERE store_id = ?1",
                [store.as_str()],
                |r| r.get(0),
            )?;
            to_u64(max, "hub_seq")?
        }
    };
    Ok(SalesPage { sales, next, more })
}

fn insert_adjustment(
    conn: &mut Connection,
    store: &StoreId,
    adj: &NewStockAdjustment,
) -> Result<AdjustmentReceipt, StorageError> {
    let tx = immediate(conn)?;
    require_store(&tx, store)?;
    let id = adj.adjustment_id.to_hex();
    let existing: Option<(String, String, i64, String, i64)> = tx
        .query_row(
            "SELECT store_id, gtin, delta, reason, change_seq FROM stock_adjustments WHERE adjustment_id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    if let Some((s, g, d, reason, seq)) = existing {
        if s != store.as_str() || g != adj.gtin.as_str() || d != adj.delta || reason != adj.reason {
            return Err(StorageError::AdjustmentConflict(adj.adjustment_id));
        }
        return Ok(AdjustmentReceipt {
            store: store.clone(),
            adjustment: adj.to_change(),
            seq: to_u64(seq, "seq")?,
            created: false,
        });
    }
    let at = now();
    tx.execute(
        "INSERT INTO stock_deltas (delta_key, store_id, gtin, delta, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![adjustment_delta_key(&adj.adjustment_id), store.as_str(), adj.gtin.as_str(), adj.delta, at.0],
    )?;
    let body = encode_json(&ChangeBody::StockAdjustment(adj.to_change()))?;
    let seq: i64 = tx.query_row(
        "INSERT INTO changes (store_id, kind, gtin, version, body, created_at)
         VALUES (?1, 'stock_adjustment', ?2, NULL, ?3, ?4) RETURNING seq",
        params![store.as_str(), adj.gtin.as_str(), body, at.0],
        |r| r.get(0),
    )?;
    tx.execute(
        "INSERT INTO stock_adjustments (adjustment_id, store_id, gtin, delta, reason, created_at, change_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![id, store.as_str(), adj.gtin.as_str(), adj.delta, adj.reason, at.0, seq],
    )?;
    tx.commit()?;
    Ok(AdjustmentReceipt {
        store: store.clone(),
        adjustment: adj.to_change(),
        seq: to_u64(seq, "seq")?,
        created: true,
    })
}

fn compact_changes(conn: &mut Connection) -> Result<CompactionReport, StorageError> {
    let tx = immediate(conn)?;
    let mut per_store: BTreeMap<String, u64> = BTreeMap::new();
    {
        let mut stmt = tx.prepare(
            "DELETE FROM changes WHERE kind = 'price' AND version <
                 (SELECT p.version FROM prices p WHERE p.store_id = changes.store_id AND p.gtin = changes.gtin)
             RETURNING store_id",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        for store in rows {
            *per_store.entry(store?).or_default() += 1;
        }
    }
    let report = CompactionReport {
        removed: per_store.values().sum(),
        per_store: per_store
            .into_iter()
            .map(|(s, n)| Ok((parse_store_id(&s)?, n)))
            .collect::<Result<_, StorageError>>()?,
    };
    tx.commit()?;
    Ok(report)
}

fn read_progress(conn: &mut Connection, batch: &BatchId) -> Result<BatchProgress, StorageError> {
    let tx = conn.transaction()?;
    let head: Option<(i64, i64, i64)> = tx
        .query_row(
            "SELECT created_at, effective_at, items FROM price_batches WHERE batch_id = ?1",
            [batch.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((created_at, effective_at, items)) = head else {
        return Err(StorageError::UnknownBatch(batch.clone()));
    };
    let mut stmt = tx.prepare(
        "SELECT s.store_id, s.items,
            (SELECT COUNT(DISTINCT p.gtin) FROM batch_progress p
              WHERE p.batch_id = s.batch_id AND p.store_id = s.store_id AND p.kind = 'staged'),
            (SELECT COUNT(DISTINCT p.gtin) FROM batch_progress p
              WHERE p.batch_id = s.batch_id AND p.store_id = s.store_id AND p.kind = 'activated')
         FROM price_batch_stores s WHERE s.batch_id = ?1 ORDER BY s.store_id",
    )?;
    let rows = stmt.query_map([batch.as_str()], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut labels = sqlite_labels::batch_label_counts(&tx, batch)?;
    let mut stores = Vec::new();
    for row in rows {
        let (store, items, staged, active) = row?;
        stores.push(StoreProgress {
            labels: labels.remove(&store).unwrap_or_default(),
            store: parse_store_id(&store)?,
            items: to_u64(items, "items")?,
            staged: to_u64(staged, "staged")?,
            active: to_u64(active, "active")?,
        });
    }
    Ok(BatchProgress {
        batch_id: batch.clone(),
        created_at: UtcMillis(created_at),
        effective_at: UtcMillis(effective_at),
        items: to_u64(items, "items")?,
        stores,
    })
}

#[async_trait]
impl HubStorage for SqliteStorage {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn health(&self) -> Result<(), StorageError> {
        self.read(|conn| {
            conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?;
            Ok(())
        })
        .await
    }

    async fn create_store(&self, store: &NewStore) -> Result<Store, StorageError> {
        let store = store.clone();
        self.write(move |conn| {
            let tx = immediate(conn)?;
            let created_at = now();
            let n = tx.execute(
                "INSERT INTO stores (store_id, name, currency, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (store_id) DO NOTHING",
                params![
                    store.id.as_str(),
                    store.name,
                    store.currency.code(),
                    created_at.0
                ],
            )?;
            if n == 0 {
                return Err(StorageError::StoreExists(store.id));
            }
            // A store that joins after the pickup key was made gets it first thing.
            let keyed = sqlite_orders::send_current_key(&tx, &store.id, created_at)?;
            tx.commit()?;
            Ok((
                Store {
                    id: store.id,
                    name: store.name,
                    currency: store.currency,
                    created_at,
                },
                keyed,
            ))
        })
        .await
        .map(|(store, keyed)| {
            if keyed {
                self.feed.wake(&store.id);
            }
            store
        })
    }

    async fn store(&self, id: &StoreId) -> Result<Option<Store>, StorageError> {
        let id = id.clone();
        self.read(move |conn| load_store(conn, &id)).await
    }

    async fn list_stores(&self) -> Result<Vec<Store>, StorageError> {
        self.read(|conn| load_stores(conn)).await
    }

    async fn create_gateway_by(
        &self,
        store: &StoreId,
        actor: &Actor,
    ) -> Result<GatewayCredential, StorageError> {
        let store = store.clone();
        let actor = actor.clone();
        self.write(move |conn| {
            let tx = immediate(conn)?;
            require_store(&tx, &store)?;
            // A 32-bit tag can collide with an existing gateway of the store: draw again.
            for _ in 0..8 {
                let cred = GatewayCredential::generate(&store)?;
                let n = tx.execute(
                    "INSERT INTO gateways (gateway_id, store_id, secret_sha256, created_at)
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (gateway_id) DO NOTHING",
                    params![
                        cred.gateway_id.as_str(),
                        store.as_str(),
                        cred.secret_hash().to_vec(),
                        now().0
                    ],
                )?;
                if n == 1 {
                    sqlite_security::append_audit(
                        &tx,
                        &AuditInput::new(
                            &actor,
                            action::GATEWAY_ADDED,
                            cred.gateway_id.as_str(),
                            serde_json::json!({ "store": store.as_str() }),
                        ),
                        now(),
                    )?;
                    tx.commit()?;
                    return Ok(cred);
                }
            }
            Err(StorageError::Unavailable(
                "could not draw an unused gateway id".into(),
            ))
        })
        .await
    }

    async fn authenticate_gateway(
        &self,
        credential: &str,
    ) -> Result<AuthenticatedGateway, StorageError> {
        let cred = GatewayCredential::parse(credential)?;
        self.read(move |conn| {
            let row: Option<(String, Vec<u8>, Option<i64>)> = conn
                .query_row(
                    "SELECT store_id, secret_sha256, revoked_at FROM gateways WHERE gateway_id = ?1",
                    [cred.gateway_id.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            match row {
                Some((store, hash, None)) if hashes_equal(&hash, &cred.secret_hash()) => {
                    Ok(AuthenticatedGateway {
                        gateway_id: cred.gateway_id,
                        store: parse_store_id(&store)?,
                    })
                }
                _ => Err(StorageError::BadCredential),
            }
        })
        .await
    }

    async fn revoke_gateway_by(
        &self,
        gateway: &GatewayId,
        actor: &Actor,
    ) -> Result<(), StorageError> {
        let gateway = gateway.clone();
        let actor = actor.clone();
        self.write(move |conn| {
            let tx = immediate(conn)?;
            let n = tx.execute(
                "UPDATE gateways SET revoked_at = COALESCE(revoked_at, ?2) WHERE gateway_id = ?1",
                params![gateway.as_str(), now().0],
            )?;
            if n == 0 {
                return Err(StorageError::UnknownGateway(gateway));
            }
            sqlite_security::append_audit(
                &tx,
                &AuditInput::new(
                    &actor,
                    action::GATEWAY_REVOKED,
                    gateway.as_str(),
                    serde_json::json!({}),
                ),
                now(),
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn create_price_batch_by(
        &self,
        batch: &PriceBatch,
        actor: &Actor,
    ) -> Result<BatchReceipt, StorageError> {
        let batch = batch.clone();
        let actor = actor.clone();
        let receipt = self
            .write(move |conn| insert_price_batch(conn, &batch, &actor))
            .await?;
        for store in &receipt.stores {
            self.feed.wake(store);
        }
        Ok(receipt)
    }

    async fn batch_progress(&self, batch: &BatchId) -> Result<BatchProgress, StorageError> {
        let batch = batch.clone();
        self.read(move |conn| read_progress(conn, &batch)).await
    }

    async fn changes_after(
        &self,
        store: &StoreId,
        cursor: u64,
        limit: u32,
    ) -> Result<ChangePage, StorageError> {
        let store = store.clone();
        let limit = limit.max(1);
        self.read(move |conn| read_changes(conn, &store, cursor, limit))
            .await
    }

    async fn ingest_events(
        &self,
        gateway: &GatewayId,
        events: &[LedgerEvent],
    ) -> Result<UploadAck, StorageError> {
        validate_upload(events)?;
        let gateway = gateway.clone();
        let events = events.to_vec();
        self.write(move |conn| ingest(conn, &gateway, &events))
            .await
    }

    async fn sales_since(
        &self,
        store: &StoreId,
        since: SalesSince,
        limit: u32,
    ) -> Result<SalesPage, StorageError> {
        let store = store.clone();
        let limit = limit.max(1);
        self.read(move |conn| read_sales(conn, &store, since, limit))
            .await
    }

    async fn stock(&self, store: &StoreId, gtin: &Gtin) -> Result<i64, StorageError> {
        let store = store.clone();
        let gtin = *gtin;
        self.read(move |conn| {
            Ok(conn.query_row(
                "SELECT COALESCE(SUM(delta), 0) FROM stock_deltas WHERE store_id = ?1 AND gtin = ?2",
                params![store.as_str(), gtin.as_str()],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn stock_levels(&self, store: &StoreId) -> Result<Vec<StockLevel>, StorageError> {
        let store = store.clone();
        self.read(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT gtin, SUM(on_hand), SUM(reserved) FROM (
                     SELECT gtin, delta AS on_hand, 0 AS reserved FROM stock_deltas WHERE store_id = ?1
                     UNION ALL
                     SELECT gtin, 0, qty FROM stock_reservations WHERE store_id = ?1)
                 GROUP BY gtin ORDER BY gtin",
            )?;
            let rows = stmt.query_map([store.as_str()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (gtin, on_hand, reserved) = row?;
                out.push(StockLevel {
                    gtin: parse_gtin(&gtin)?,
                    on_hand,
                    reserved,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn add_stock_adjustment(
        &self,
        store: &StoreId,
        adjustment: &NewStockAdjustment,
    ) -> Result<AdjustmentReceipt, StorageError> {
        let s = store.clone();
        let adj = adjustment.clone();
        let receipt = self
            .write(move |conn| insert_adjustment(conn, &s, &adj))
            .await?;
        if receipt.created {
            self.feed.wake(store);
        }
        Ok(receipt)
    }

    async fn store_labels(
        &self,
        store: &StoreId,
        query: &LabelQuery,
    ) -> Result<LabelPage, StorageError> {
        let store = store.clone();
        let query = *query;
        self.read(move |conn| sqlite_labels::read_labels(conn, &store, &query))
            .await
    }

    async fn footfall(
        &self,
        store: &StoreId,
        query: &FootfallQuery,
    ) -> Result<Vec<FootfallTally>, StorageError> {
        let store = store.clone();
        let query = *query;
        self.read(move |conn| read_footfall(conn, &store, &query))
            .await
    }

    async fn compact(&self) -> Result<CompactionReport, StorageError> {
        self.write(compact_changes).await
    }

    fn subscribe(&self, store: &StoreId) -> ChangeSubscription {
        self.feed.subscribe(store)
    }

    async fn reserved(&self, store: &StoreId, gtin: &Gtin) -> Result<i64, StorageError> {
        let store = store.clone();
        let gtin = *gtin;
        self.read(move |conn| {
            Ok(conn.query_row(
                "SELECT COALESCE(SUM(qty), 0) FROM stock_reservations WHERE store_id = ?1 AND gtin = ?2",
                params![store.as_str(), gtin.as_str()],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn create_order(
        &self,
        order: &NewOrder,
        now: UtcMillis,
    ) -> Result<OrderReceipt, StorageError> {
        let order = order.clone();
        let (receipt, woken) = self
            .write(move |conn| sqlite_orders::create_order(conn, &order, now))
            .await?;
        for store in &woken {
            self.feed.wake(store);
        }
        Ok(receipt)
    }

    async fn order(&self, id: &OrderId) -> Result<Option<OrderView>, StorageError> {
        let id = id.clone();
        self.read(move |conn| sqlite_orders::read_order(conn, &id))
            .await
    }

    async fn list_orders(&self, filter: &OrderFilter) -> Result<Vec<OrderSummary>, StorageError> {
        let filter = filter.clone();
        self.read(move |conn| sqlite_orders::list_orders(conn, &filter))
            .await
    }

    async fn cancel_order_by(
        &self,
        id: &OrderId,
        reason: Option<&str>,
        now: UtcMillis,
        actor: &Actor,
    ) -> Result<CancelReceipt, StorageError> {
        let id = id.clone();
        let reason = reason.map(str::to_owned);
        let actor = actor.clone();
        let (receipt, woken) = self
            .write(move |conn| {
                sqlite_orders::cancel_order(conn, &id, reason.as_deref(), now, &actor)
            })
            .await?;
        if let Some(store) = woken {
            self.feed.wake(&store);
        }
        Ok(receipt)
    }

    async fn expire_overdue(
        &self,
        now: UtcMillis,
        grace_ms: i64,
        limit: u32,
    ) -> Result<Vec<OrderId>, StorageError> {
        self.write(move |conn| sqlite_orders::expire_overdue(conn, now, grace_ms, limit))
            .await
    }

    async fn pickup_key(&self) -> Result<Option<PickupKey>, StorageError> {
        self.read(sqlite_orders::pickup_key).await
    }

    async fn pickup_signing_key(&self, now: UtcMillis) -> Result<PickupSigningKey, StorageError> {
        let (key, woken) = self
            .write(move |conn| sqlite_orders::signing_key(conn, now))
            .await?;
        for store in &woken {
            self.feed.wake(store);
        }
        Ok(key)
    }

    async fn webhook_secret(&self) -> Result<String, StorageError> {
        self.write(sqlite_orders::webhook_secret).await
    }

    async fn claim_webhooks(
        &self,
        now: UtcMillis,
        lease_until: UtcMillis,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, StorageError> {
        // The idle worker asks every poll: look on a reader first, so an empty outbox never
        // takes the single writer.
        let due = self
            .read(move |conn| sqlite_orders::webhooks_due(conn, now))
            .await?;
        if !due {
            return Ok(Vec::new());
        }
        self.write(move |conn| sqlite_orders::claim_webhooks(conn, now, lease_until, limit))
            .await
    }

    async fn webhook_delivered(&self, id: &EventId, at: UtcMillis) -> Result<(), StorageError> {
        let id = *id;
        self.write(move |conn| sqlite_orders::webhook_delivered(conn, &id, at))
            .await
    }

    async fn webhook_failed(
        &self,
        id: &EventId,
        retry_at: UtcMillis,
        error: &str,
    ) -> Result<(), StorageError> {
        let id = *id;
        let error = error.to_owned();
        self.write(move |conn| sqlite_orders::webhook_failed(conn, &id, retry_at, &error))
            .await
    }

    async fn webhooks_pending(&self) -> Result<u64, StorageError> {
        self.read(sqlite_orders::webhooks_pending).await
    }

    async fn create_api_token(
        &self,
        token: &NewApiToken,
        name: &str,
        role: Role,
        actor: &Actor,
    ) -> Result<ApiTokenInfo, StorageError> {
        let (token, name, actor) = (token.clone(), name.to_owned(), actor.clone());
        self.write(move |conn| sqlite_security::create_api_token(conn, &token, &name, role, &actor))
            .await
    }

    async fn list_api_tokens(&self) -> Result<Vec<ApiTokenInfo>, StorageError> {
        self.read(sqlite_security::list_api_tokens).await
    }

    async fn revoke_api_token(&self, token_id: &str, actor: &Actor) -> Result<(), StorageError> {
        let (id, actor) = (token_id.to_owned(), actor.clone());
        self.write(move |conn| sqlite_security::revoke_api_token(conn, &id, &actor))
            .await
    }

    async fn api_token_by_hash(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<ApiTokenInfo>, StorageError> {
        let hash = *hash;
        self.read(move |conn| sqlite_security::api_token_by_hash(conn, &hash))
            .await
    }

    async fn append_audit(&self, entry: &AuditInput) -> Result<(), StorageError> {
        let entry = entry.clone();
        self.write(move |conn| sqlite_security::append_audit_tx(conn, &entry))
            .await
    }

    async fn audit_entries(&self, from: u64, limit: u32) -> Result<Vec<AuditEntry>, StorageError> {
        self.read(move |conn| sqlite_security::audit_entries(conn, from, limit))
            .await
    }

    async fn create_enrolment(
        &self,
        enrolment: &NewEnrolment,
        actor: &Actor,
    ) -> Result<(), StorageError> {
        let (e, actor) = (enrolment.clone(), actor.clone());
        self.write(move |conn| sqlite_security::create_enrolment(conn, &e, &actor))
            .await
    }

    async fn enrol(
        &self,
        attempt: &EnrolAttempt,
    ) -> Result<Result<EnrolledGateway, EnrolRefusal>, StorageError> {
        let a = attempt.clone();
        self.write(move |conn| sqlite_security::enrol(conn, &a))
            .await
    }

    async fn enrol_refusals_since(
        &self,
        client: &str,
        since: UtcMillis,
    ) -> Result<u64, StorageError> {
        let client = client.to_owned();
        self.read(move |conn| sqlite_security::enrol_refusals_since(conn, &client, since))
            .await
    }

    async fn gateway_key(&self, gateway: &GatewayId) -> Result<Option<GatewayKey>, StorageError> {
        let gateway = gateway.clone();
        self.read(move |conn| sqlite_security::gateway_key(conn, &gateway))
            .await
    }

    async fn remember_nonce(
        &self,
        gateway: &GatewayId,
        nonce: &str,
        expires_at: UtcMillis,
        now: UtcMillis,
    ) -> Result<NonceOutcome, StorageError> {
        let (gateway, nonce) = (gateway.clone(), nonce.to_owned());
        let mut conn = self.nonces.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || {
            sqlite_security::remember_nonce(&mut conn, &gateway, &nonce, expires_at, now)
        })
        .await
        .map_err(worker_error)?
    }

    async fn list_gateways(&self) -> Result<Vec<GatewayInfo>, StorageError> {
        self.read(sqlite_security::list_gateways).await
    }
}
