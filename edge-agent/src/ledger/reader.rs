//! Reads on their own connections (WAL lets them run beside the writer), called from tokio's
//! blocking pool by [`super::Ledger`].
use std::path::PathBuf;
use std::sync::Mutex;

use aisle_protocol::sync::LedgerEvent;
use aisle_protocol::{BatchId, EventId, Gtin, Money, SaleId, UtcMillis};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::state::{self, StoredBody};
use super::{ActivePrice, FootfallRow, LedgerError, PriceRow, SaleReceipt, hlc_from_bytes};

/// Idle read connections kept for reuse.
const IDLE_READERS: usize = 4;
/// Upload batches stop after this much payload, far below the hub's body limit.
const MAX_BATCH_PAYLOAD: usize = 8 * 1024 * 1024;

#[derive(Debug)]
pub(crate) struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    pub(crate) fn new(path: PathBuf) -> ReaderPool {
        ReaderPool {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on an idle read connection (or a new one).
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let conn = match self.idle.lock().ok().and_then(|mut v| v.pop()) {
            Some(c) => c,
            None => open_reader(&self.path)?,
        };
        let out = f(&conn);
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < IDLE_READERS
        {
            idle.push(conn);
        }
        out
    }
}

/// A read-only view of a ledger file (also used by `verify`).
pub(crate) fn open_reader(path: &std::path::Path) -> Result<Connection, LedgerError> {
    if !path.exists() {
        return Err(LedgerError::Invalid(format!(
            "no ledger at {}",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute_batch("PRAGMA query_only = ON;")?;
    Ok(conn)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn batch_sql(s: &str) -> rusqlite::Result<BatchId> {
    BatchId::parse(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn price_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PriceRow> {
    let state: String = r.get(7)?;
    Ok(PriceRow {
        gtin: state::gtin_sql(&r.get::<_, String>(0)?)?,
        version: to_u64(r.get(1)?),
        price: Money::new(r.get(2)?, state::currency_sql(&r.get::<_, String>(3)?)?),
        name: r.get(4)?,
        batch_id: batch_sql(&r.get::<_, String>(5)?)?,
        effective_at: UtcMillis(r.get(6)?),
        active: state == "active",
        active_since: r.get::<_, Option<i64>>(8)?.map(UtcMillis),
    })
}

const PRICE_COLUMNS: &str =
    "gtin, version, price_minor, currency, name, batch_id, effective_at, state, active_since";

pub(crate) fn active_price(
    c: &Connection,
    gtin: &Gtin,
) -> Result<Option<ActivePrice>, LedgerError> {
    let row = c
        .prepare_cached(&format!(
            "SELECT {PRICE_COLUMNS} FROM prices WHERE gtin = ?1 AND state = 'active'"
        ))?
        .query_row([gtin.as_str()], price_row)
        .optional()?;
    Ok(row.map(|p| ActivePrice {
        gtin: p.gtin,
        name: p.name,
        price: p.price,
        version: p.version,
        batch_id: p.batch_id,
        effective_at: p.effective_at,
        active_since: p.active_since.unwrap_or(p.effective_at),
    }))
}

pub(crate) fn prices(c: &Connection, gtin: &Gtin) -> Result<Vec<PriceRow>, LedgerError> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {PRICE_COLUMNS} FROM prices WHERE gtin = ?1 ORDER BY version"
    ))?;
    let rows = stmt.query_map([gtin.as_str()], price_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Offline card payments in `currency` the hub does not hold yet (seq above acked_through).
pub(crate) fn offline_card_total(
    c: &Connection,
    currency: aisle_protocol::Currency,
) -> Result<Money, LedgerError> {
    let minor: i64 = c
        .prepare_cached(
            "SELECT COALESCE(SUM(amount_minor), 0) FROM offline_payments
             WHERE currency = ?1
               AND seq > (SELECT acked_through FROM sync_state WHERE id = 1)",
        )?
        .query_row([currency.code()], |r| r.get(0))?;
    Ok(Money::new(minor, currency))
}

pub(crate) fn stock(c: &Connection, gtin: &Gtin) -> Result<i64, LedgerError> {
    Ok(
        c.prepare_cached("SELECT on_hand FROM stock WHERE gtin = ?1")?
            .query_row([gtin.as_str()], |r| r.get(0))
            .optional()?
            .unwrap_or(0),
    )
}

pub(crate) fn sale(c: &Connection, sale_id: &SaleId) -> Result<Option<SaleReceipt>, LedgerError> {
    let seq: Option<i64> = c
        .prepare_cached("SELECT seq FROM sales WHERE sale_id = ?1")?
        .query_row([sale_id.as_str()], |r| r.get(0))
        .optional()?;
    seq.map(|s| sale_at(c, s)).transpose()
}

/// The sale committed by the event at `seq`, as a replayed receipt.
pub(crate) fn sale_at(c: &Connection, seq: i64) -> Result<SaleReceipt, LedgerError> {
    let (at, kind, payload): (i64, String, Vec<u8>) = c
        .prepare_cached("SELECT at, kind, payload FROM events WHERE seq = ?1")?
        .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    let corrupt = |reason: String| LedgerError::Corrupt {
        seq: to_u64(seq),
        reason,
    };
    let body = StoredBody::decode(&kind, &payload).map_err(|e| corrupt(e.to_string()))?;
    let record = state::sale_of(body)
        .ok_or_else(|| corrupt("sales row points at a non-sale event".into()))?;
    Ok(SaleReceipt {
        seq: to_u64(seq),
        at: UtcMillis(at),
        record,
        replayed: true,
    })
}

pub(crate) fn events_after(
    c: &Connection,
    after: u64,
    limit: usize,
) -> Result<Vec<LedgerEvent>, LedgerError> {
    let mut stmt = c.prepare_cached(
        "SELECT seq, event_id, hlc, at, kind, payload FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let mut rows = stmt.query(rusqlite::params![
        i64::try_from(after).unwrap_or(i64::MAX),
        i64::try_from(limit).unwrap_or(i64::MAX)
    ])?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while let Some(r) = rows.next()? {
        let seq = to_u64(r.get(0)?);
        let corrupt = |reason: String| LedgerError::Corrupt { seq, reason };
        let id: Vec<u8> = r.get(1)?;
        let id: [u8; 16] = id
            .try_into()
            .map_err(|_| corrupt("event id is not 16 bytes".into()))?;
        let hlc: Vec<u8> = r.get(2)?;
        let hlc = hlc_from_bytes(&hlc).ok_or_else(|| corrupt("hlc is not 12 bytes".into()))?;
        let kind: String = r.get(4)?;
        let payload: Vec<u8> = r.get(5)?;
        if !out.is_empty() && bytes + payload.len() > MAX_BATCH_PAYLOAD {
            break;
        }
        bytes += payload.len();
        let body = StoredBody::decode(&kind, &payload).map_err(|e| corrupt(e.to_string()))?;
        out.push(LedgerEvent {
            seq,
            id: EventId::from_bytes(id),
            hlc,
            at: UtcMillis(r.get(3)?),
            body: body.body,
        });
    }
    Ok(out)
}

pub(crate) fn next_pending_effective_at(c: &Connection) -> Result<Option<UtcMillis>, LedgerError> {
    let v: Option<i64> = c
        .prepare_cached("SELECT MIN(effective_at) FROM prices WHERE state = 'pending'")?
        .query_row([], |r| r.get(0))?;
    Ok(v.map(UtcMillis))
}

pub(crate) fn footfall_state(c: &Connection) -> Result<Option<Vec<u8>>, LedgerError> {
    Ok(
        c.prepare_cached("SELECT snapshot FROM footfall_state WHERE id = 1")?
            .query_row([], |r| r.get(0))
            .optional()?,
    )
}

pub(crate) fn footfall(
    c: &Connection,
    from: UtcMillis,
    to: UtcMillis,
) -> Result<Vec<FootfallRow>, LedgerError> {
    let mut stmt = c.prepare_cached(
        "SELECT zone, start_ms, end_ms, entered, exited, occupancy, cameras_missing, events
         FROM footfall WHERE start_ms >= ?1 AND start_ms < ?2 ORDER BY start_ms, zone",
    )?;
    let rows = stmt.query_map([from.0, to.0], |r| {
        let missing: String = r.get(6)?;
        let cameras_missing: Vec<String> = serde_json::from_str(&missing).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, Box::new(e))
        })?;
        Ok(FootfallRow {
            zone: r.get(0)?,
            start: UtcMillis(r.get(1)?),
            end: UtcMillis(r.get(2)?),
            entered: to_u64(r.get(3)?),
            exited: to_u64(r.get(4)?),
            occupancy: r.get::<_, Option<i64>>(5)?.map(to_u64),
            cameras_missing,
            events: to_u64(r.get(7)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
