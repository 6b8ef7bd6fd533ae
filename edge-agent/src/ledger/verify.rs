//! `aisle-agent ledger verify`: checks the hash chain event by event, replays every event into a
//! fresh in-memory state with the same [`super::state::apply`] the writer uses, and compares the
//! result with the materialised tables row by row.
use std::fmt;
use std::path::Path;

use aisle_protocol::Hlc;
use aisle_protocol::chain::{GENESIS, event_hash};
use aisle_protocol::{EventId, UtcMillis};
use rusqlite::Connection;
use rusqlite::types::Value;

use super::state::{self, StoredBody};
use super::{DB_FILE, LedgerError, hlc_from_bytes, reader};

/// What a successful verification saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub events: u64,
    pub head_hash: String,
    pub sales: u64,
    pub price_rows: u64,
    pub stock_items: u64,
    pub stock_adjustments: u64,
    /// Rows of the `footfall` table (zone x 15-minute interval).
    pub footfall_rows: u64,
    /// Rows of `pickup_orders`.
    pub pickup_orders: u64,
    /// Rows of `label_bindings` (shelf labels bound to products).
    pub label_bindings: u64,
    pub acked_through: u64,
    pub cursor: u64,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ledger OK: {} events, chain head {}, {} sales, {} price rows, {} stock items, \
             {} stock adjustments, {} footfall rows, {} pickup orders, {} label bindings, \
             acked through {}, cursor {}",
            self.events,
            self.head_hash,
            self.sales,
            self.price_rows,
            self.stock_items,
            self.stock_adjustments,
            self.footfall_rows,
            self.pickup_orders,
            self.label_bindings,
            self.acked_through,
            self.cursor
        )
    }
}

/// The first thing found wrong.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot open the ledger: {0}")]
    Open(#[from] LedgerError),
    #[error("event seq {seq}: {reason}")]
    Chain { seq: u64, reason: String },
    #[error("table {table} does not match the replayed events: {detail}")]
    State { table: &'static str, detail: String },
    #[error("sync_state: {0}")]
    SyncState(String),
    #[error("reading the ledger: {0}")]
    Storage(#[from] rusqlite::Error),
}

/// The materialised tables and the key they are ordered by.
const TABLES: &[(&str, &str)] = &[
    ("prices", "gtin, version"),
    ("stock", "gtin"),
    ("sales", "sale_id"),
    ("stock_adjustments", "adjustment_id"),
    ("footfall", "zone, start_ms"),
    ("pickup_orders", "order_id"),
    ("pickup_history", "order_id, seq"),
    ("pickup_cancels", "cancel_id"),
    ("label_bindings", "label"),
    ("label_shown", "label"),
    ("label_not_updated", "label"),
    ("offline_payments", "sale_id"),
];

/// Verifies the ledger in `data_dir`. Safe while the agent runs (it reads one snapshot).
pub fn verify(data_dir: &Path) -> Result<VerifyReport, VerifyError> {
    let real = reader::open_reader(&data_dir.join(DB_FILE))?;
    // One read transaction: a consistent snapshot even if the agent is writing.
    real.execute_batch("BEGIN")?;
    let fresh = Connection::open_in_memory()?;
    fresh.execute_batch(include_str!("schema.sql"))?;
    fresh.execute_batch("BEGIN")?;

    let (events, head) = replay_chain(&real, &fresh)?;
    let mut counts = [0u64; TABLES.len()];
    for (i, (table, key)) in TABLES.iter().enumerate() {
        counts[i] = compare_table(&real, &fresh, table, key)?;
    }
    let (cursor, acked): (i64, i64) = real.query_row(
        "SELECT cursor, acked_through FROM sync_state WHERE id = 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let acked = u64::try_from(acked)
        .map_err(|_| VerifyError::SyncState("negative acked_through".into()))?;
    if acked > events {
        return Err(VerifyError::SyncState(format!(
            "acked_through {acked} is beyond the last event {events}"
        )));
    }
    real.execute_batch("COMMIT")?;
    Ok(VerifyReport {
        events,
        head_hash: hex::encode(head),
        sales: counts[2],
        price_rows: counts[0],
        stock_items: counts[1],
        stock_adjustments: counts[3],
        footfall_rows: counts[4],
        pickup_orders: counts[5],
        label_bindings: counts[8],
        acked_through: acked,
        cursor: u64::try_from(cursor).unwrap_or(0),
    })
}

fn replay_chain(real: &Connection, fresh: &Connection) -> Result<(u64, [u8; 32]), VerifyError> {
    let mut stmt = real.prepare(
        "SELECT seq, event_id, hlc, at, kind, payload, prev_hash, hash FROM events ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut prev = GENESIS;
    let mut expected_seq = 1u64;
    let mut last_hlc: Option<Hlc> = None;
    while let Some(r) = rows.next()? {
        let raw_seq: i64 = r.get(0)?;
        let seq = u64::try_from(raw_seq).unwrap_or(0);
        let bad = |reason: String| VerifyError::Chain { seq, reason };
        if seq != expected_seq {
            return Err(VerifyError::Chain {
                seq: expected_seq,
                reason: format!("missing: the next stored event is seq {raw_seq}"),
            });
        }
        let id: Vec<u8> = r.get(1)?;
        let id: [u8; 16] = id
            .try_into()
            .map_err(|_| bad("event id is not 16 bytes".into()))?;
        let hlc: Vec<u8> = r.get(2)?;
        let hlc = hlc_from_bytes(&hlc).ok_or_else(|| bad("hlc is not 12 bytes".into()))?;
        if last_hlc.is_some_and(|l| hlc <= l) {
            return Err(bad("hlc does not move forward".into()));
        }
        let at = UtcMillis(r.get(3)?);
        let kind: String = r.get(4)?;
        let payload: Vec<u8> = r.get(5)?;
        let stored_prev: Vec<u8> = r.get(6)?;
        let stored_hash: Vec<u8> = r.get(7)?;
        if stored_prev != prev {
            return Err(bad(
                "prev_hash does not match the previous event's hash".into()
            ));
        }
        let hash = event_hash(
            &prev,
            seq,
            &EventId::from_bytes(id),
            hlc,
            at,
            &kind,
            &payload,
        );
        if stored_hash != hash {
            return Err(bad(
                "hash does not match its contents (the event was edited)".into(),
            ));
        }
        let body = StoredBody::decode(&kind, &payload).map_err(|e| bad(e.to_string()))?;
        state::apply(fresh, seq, at, &body).map_err(|e| bad(format!("replay: {e}")))?;
        prev = hash;
        last_hlc = Some(hlc);
        expected_seq += 1;
    }
    Ok((expected_seq - 1, prev))
}

fn row_values(r: &rusqlite::Row<'_>, n: usize) -> rusqlite::Result<Vec<Value>> {
    (0..n).map(|i| r.get::<_, Value>(i)).collect()
}

fn show(names: &[String], row: &[Value]) -> String {
    names
        .iter()
        .zip(row)
        .map(|(n, v)| {
            let v = match v {
                Value::Null => "NULL".to_string(),
                Value::Integer(i) => i.to_string(),
                Value::Real(f) => f.to_string(),
                Value::Text(t) => format!("'{}'", t.chars().take(80).collect::<String>()),
                Value::Blob(b) => format!("x'{}'", hex::encode(b)),
            };
            format!("{n}={v}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Walks both tables in key order and reports the first difference. Returns the row count.
fn compare_table(
    real: &Connection,
    fresh: &Connection,
    table: &'static str,
    key: &str,
) -> Result<u64, VerifyError> {
    // A ledger last opened by an agent older than the table has none: it holds no rows.
    let exists: bool = real.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [table],
        |r| r.get(0),
    )?;
    let sql = format!("SELECT * FROM {table} ORDER BY {key}");
    let empty = format!("SELECT * FROM {table} WHERE 0");
    let mut a = if exists {
        real.prepare(&sql)?
    } else {
        fresh.prepare(&empty)?
    };
    let mut b = fresh.prepare(&sql)?;
    let names: Vec<String> = a.column_names().iter().map(|s| s.to_string()).collect();
    let n = names.len();
    let mut ra = a.query([])?;
    let mut rb = b.query([])?;
    let mut count = 0u64;
    let mismatch = |detail: String| VerifyError::State { table, detail };
    loop {
        let x = ra.next()?.map(|r| row_values(r, n)).transpose()?;
        let y = rb.next()?.map(|r| row_values(r, n)).transpose()?;
        match (x, y) {
            (None, None) => return Ok(count),
            (Some(x), None) => {
                return Err(mismatch(format!(
                    "row no event explains: {}",
                    show(&names, &x)
                )));
            }
            (None, Some(y)) => {
                return Err(mismatch(format!("row missing: {}", show(&names, &y))));
            }
            (Some(x), Some(y)) if x != y => {
                return Err(mismatch(format!(
                    "ledger has {} but the events give {}",
                    show(&names, &x),
                    show(&names, &y)
                )));
            }
            _ => count += 1,
        }
    }
}
