//! Click-and-collect in the ledger: what the writer decides (whether a hub change or a staff
//! action becomes an event) and what readers see. How an event changes the tables is
//! [`super::pickup_state`], shared with `verify`.
use aisle_protocol::pickup::{PickupCancellation, PickupKey, PickupOrder, RedeemMethod};
use aisle_protocol::sync::EventBody;
use aisle_protocol::{Gtin, OrderId, UtcMillis};
use rusqlite::{Connection, OptionalExtension, params};

use super::LedgerError;
use super::pickup_state::{OrderLine, OrderStatus, lines_from_sql, method_sql, status_and_lines};
use super::state::StoredBody;

/// An order as the store holds it (what the API shows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PickupRecord {
    pub order_id: OrderId,
    pub status: OrderStatus,
    pub placed_at: UtcMillis,
    pub pickup_by: UtcMillis,
    pub expires_at: UtcMillis,
    pub lines: Vec<OrderLine>,
    pub location: Option<String>,
    pub picking_by: Option<String>,
    pub collected: Option<Collection>,
    pub history: Vec<HistoryEntry>,
    /// The key that signed its QR token.
    pub key_id: u32,
}

/// Who collected an order, when and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collection {
    pub at: UtcMillis,
    pub device: String,
    pub staff: Option<String>,
    pub method: RedeemMethod,
    pub partial: bool,
}

impl Collection {
    /// Who handed it over: the signed-in staff, else the device.
    pub fn by(&self) -> &str {
        self.staff.as_deref().unwrap_or(&self.device)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub at: UtcMillis,
    pub kind: String,
    pub by: Option<String>,
}

/// A staff action on an order, decided and committed by the writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PickupAction {
    /// Start (or keep) picking.
    Pick { order_id: OrderId, staff: String },
    /// Put it in the pickup area at `location`; `missing` lines could not be picked.
    Ready {
        order_id: OrderId,
        staff: String,
        location: String,
        missing: Vec<Gtin>,
    },
    /// Hand it over: commits `PickupCollected` before the answer.
    Redeem {
        order_id: OrderId,
        method: RedeemMethod,
        device: String,
        staff: Option<String>,
    },
}

/// Why a staff action was refused. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum PickupRefusal {
    #[error("no pickup order {0} at this store")]
    NotFound(OrderId),
    #[error("order {order_id} is {}; it cannot be {action}", status.as_str())]
    Conflict {
        order_id: OrderId,
        status: OrderStatus,
        action: &'static str,
    },
    #[error("order {order_id} was already collected")]
    AlreadyCollected {
        order_id: OrderId,
        collection: Collection,
    },
    #[error("order {0} was cancelled by HQ")]
    Cancelled(OrderId),
    #[error("order {0} expired")]
    Expired(OrderId),
    #[error("order {order_id} is {} and not ready for pickup yet", status.as_str())]
    NotReady {
        order_id: OrderId,
        status: OrderStatus,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// What the writer needs to append an event (the ledger's `append`, passed in so this module
/// does not see the writer's head).
pub(crate) type Append<'a> = dyn FnMut(StoredBody) -> Result<u64, LedgerError> + 'a;

pub(crate) fn store_key(conn: &Connection, k: &PickupKey) -> Result<(), String> {
    if k.verifying_key().is_none() {
        return Err(format!("pickup key {}: not a valid Ed25519 key", k.key_id));
    }
    conn.prepare_cached(
        "INSERT INTO pickup_keys (key_id, public_key) VALUES (?1, ?2)
         ON CONFLICT (key_id) DO UPDATE SET public_key = excluded.public_key",
    )
    .and_then(|mut s| s.execute(params![i64::from(k.key_id), k.public_key]))
    .map_err(|e| format!("pickup key {}: {e}", k.key_id))?;
    Ok(())
}

/// A new order becomes `PickupReceived` (with its details); one the store holds already changes
/// nothing (a changefeed replay). Returns whether an event was appended.
pub(crate) fn receive(
    conn: &Connection,
    o: &PickupOrder,
    append: &mut Append<'_>,
) -> Result<Result<bool, String>, LedgerError> {
    if let Err(e) = o.validate() {
        return Ok(Err(format!("pickup order {}: {e}", o.order_id)));
    }
    let known: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM pickup_orders WHERE order_id = ?1)")?
        .query_row([o.order_id.as_str()], |r| r.get(0))?;
    if known {
        return Ok(Ok(false));
    }
    append(StoredBody {
        body: EventBody::PickupReceived {
            order_id: o.order_id.clone(),
        },
        staged: None,
        order: Some(o.clone()),
        ready_by: None,
        label: None,
    })?;
    Ok(Ok(true))
}

/// HQ's cancellation: applied to an open order, a conflict for a collected one, nothing for one
/// already final or unknown, or already answered (by `cancel_id`). Returns whether an event was
/// appended.
pub(crate) fn cancel(
    conn: &Connection,
    c: &PickupCancellation,
    append: &mut Append<'_>,
) -> Result<bool, LedgerError> {
    let seen: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM pickup_cancels WHERE cancel_id = ?1)")?
        .query_row([c.cancel_id.to_hex()], |r| r.get(0))?;
    if seen {
        return Ok(false);
    }
    let Some(rec) = record(conn, &c.order_id)? else {
        tracing::warn!(order = %c.order_id, "HQ cancelled an order this store never received");
        return Ok(false);
    };
    let body = match (rec.status, &rec.collected) {
        (s, _) if s.is_open() => EventBody::PickupCancelApplied {
            order_id: c.order_id.clone(),
            cancel_id: c.cancel_id,
        },
        (s, Some(col)) if s.is_collected() => EventBody::PickupCancelConflict {
            order_id: c.order_id.clone(),
            cancel_id: c.cancel_id,
            collected_at: col.at,
            collected_by: col.by().to_string(),
        },
        _ => return Ok(false),
    };
    append(StoredBody::plain(body))?;
    Ok(true)
}

/// Expires every open order whose `expires_at` has come on hub time. Returns how many.
pub(crate) fn expire_due(
    conn: &Connection,
    now: UtcMillis,
    append: &mut Append<'_>,
) -> Result<usize, LedgerError> {
    let due: Vec<String> = {
        let mut stmt = conn.prepare_cached(
            "SELECT order_id FROM pickup_orders
             WHERE status IN ('received', 'picking', 'ready') AND expires_at <= ?1
             ORDER BY expires_at, order_id",
        )?;
        let rows = stmt.query_map([now.0], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    for id in &due {
        let order_id = OrderId::parse(id)
            .map_err(|e| LedgerError::Invalid(format!("stored order id: {e}")))?;
        append(StoredBody::plain(EventBody::PickupExpired { order_id }))?;
    }
    Ok(due.len())
}

/// A staff action: decides from the order's committed state, appends at most one event, and
/// answers the order as it now is.
pub(crate) fn act(
    conn: &Connection,
    now: UtcMillis,
    action: PickupAction,
    append: &mut Append<'_>,
) -> Result<PickupRecord, PickupRefusal> {
    let order_id = match &action {
        PickupAction::Pick { order_id, .. }
        | PickupAction::Ready { order_id, .. }
        | PickupAction::Redeem { order_id, .. } => order_id.clone(),
    };
    let (status, lines) = status_and_lines(conn, &order_id)
        .map_err(LedgerError::from)?
        .ok_or_else(|| PickupRefusal::NotFound(order_id.clone()))?;
    let conflict = |action| PickupRefusal::Conflict {
        order_id: order_id.clone(),
        status,
        action,
    };
    match action {
        PickupAction::Pick { staff, .. } => {
            if !matches!(status, OrderStatus::Received | OrderStatus::Picking) {
                return Err(conflict("picked"));
            }
            let same: Option<String> = conn
                .prepare_cached("SELECT picking_by FROM pickup_orders WHERE order_id = ?1")
                .map_err(LedgerError::from)?
                .query_row([order_id.as_str()], |r| r.get(0))
                .map_err(LedgerError::from)?;
            // Idempotent: the same person picking again writes nothing.
            if status != OrderStatus::Picking || same.as_deref() != Some(staff.as_str()) {
                append(StoredBody::plain(EventBody::PickupPicking {
                    order_id: order_id.clone(),
                    staff,
                }))?;
            }
        }
        PickupAction::Ready {
            staff,
            location,
            missing,
            ..
        } => {
            if !status.is_open() {
                return Err(conflict("made ready"));
            }
            let mut missing_sorted: Vec<Gtin> = Vec::with_capacity(missing.len());
            for g in missing {
                if !lines.iter().any(|l| l.gtin == g) {
                    return Err(PickupRefusal::Invalid(format!(
                        "missing: {g} is not in order {order_id}"
                    )));
                }
                if !missing_sorted.contains(&g) {
                    missing_sorted.push(g);
                }
            }
            if lines.iter().all(|l| missing_sorted.contains(&l.gtin)) {
                return Err(PickupRefusal::Invalid(
                    "missing names every line of the order: nothing to hand over (ask HQ to \
                     cancel it instead)"
                        .into(),
                ));
            }
            missing_sorted.sort();
            append(StoredBody {
                body: EventBody::PickupReady {
                    order_id: order_id.clone(),
                    location,
                    missing: missing_sorted,
                },
                staged: None,
                order: None,
                ready_by: Some(staff),
                label: None,
            })?;
        }
        PickupAction::Redeem {
            method,
            device,
            staff,
            ..
        } => {
            match status {
                OrderStatus::Collected | OrderStatus::PartiallyCollected => {
                    let rec = record(conn, &order_id)?
                        .ok_or_else(|| PickupRefusal::NotFound(order_id.clone()))?;
                    let collection = rec.collected.ok_or_else(|| {
                        LedgerError::Invalid(format!(
                            "order {order_id} is collected but has no collection"
                        ))
                    })?;
                    return Err(PickupRefusal::AlreadyCollected {
                        order_id,
                        collection,
                    });
                }
                OrderStatus::Cancelled => return Err(PickupRefusal::Cancelled(order_id)),
                OrderStatus::Expired => return Err(PickupRefusal::Expired(order_id)),
                OrderStatus::Received | OrderStatus::Picking => {
                    return Err(PickupRefusal::NotReady { order_id, status });
                }
                OrderStatus::Ready => {}
            }
            let expires_at: i64 = conn
                .prepare_cached("SELECT expires_at FROM pickup_orders WHERE order_id = ?1")
                .map_err(LedgerError::from)?
                .query_row([order_id.as_str()], |r| r.get(0))
                .map_err(LedgerError::from)?;
            if now.0 >= expires_at {
                // The sweeper writes PickupExpired; the answer is the same either way.
                return Err(PickupRefusal::Expired(order_id));
            }
            append(StoredBody::plain(EventBody::PickupCollected {
                order_id: order_id.clone(),
                device,
                staff,
                method,
                partial: lines.iter().any(|l| l.missing),
            }))?;
        }
    }
    record(conn, &order_id)?.ok_or(PickupRefusal::NotFound(order_id))
}

const ORDER_COLUMNS: &str = "order_id, status, placed_at, pickup_by, expires_at, lines, location,
     picking_by, collected_at, collected_device, collected_staff, collected_method, partial,
     key_id";

fn record_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PickupRecord> {
    let id: String = r.get(0)?;
    let order_id = OrderId::parse(&id).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let status: String = r.get(1)?;
    let status = OrderStatus::parse(&status).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            1,
            rusqlite::types::Type::Text,
            format!("unknown pickup status '{status}'").into(),
        )
    })?;
    let collected = match (
        r.get::<_, Option<i64>>(8)?,
        r.get::<_, Option<String>>(9)?,
        r.get::<_, Option<String>>(11)?,
    ) {
        (Some(at), Some(device), Some(method)) => Some(Collection {
            at: UtcMillis(at),
            device,
            staff: r.get(10)?,
            method: method_sql(&method)?,
            partial: r.get(12)?,
        }),
        _ => None,
    };
    Ok(PickupRecord {
        order_id,
        status,
        placed_at: UtcMillis(r.get(2)?),
        pickup_by: UtcMillis(r.get(3)?),
        expires_at: UtcMillis(r.get(4)?),
        lines: lines_from_sql(&r.get::<_, String>(5)?)?,
        location: r.get(6)?,
        picking_by: r.get(7)?,
        collected,
        history: Vec::new(),
        key_id: u32::try_from(r.get::<_, i64>(13)?).unwrap_or(0),
    })
}

fn with_history(conn: &Connection, mut rec: PickupRecord) -> Result<PickupRecord, LedgerError> {
    let mut stmt = conn.prepare_cached(
        "SELECT at, kind, by FROM pickup_history WHERE order_id = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map([rec.order_id.as_str()], |r| {
        Ok(HistoryEntry {
            at: UtcMillis(r.get(0)?),
            kind: r.get(1)?,
            by: r.get(2)?,
        })
    })?;
    rec.history = rows.collect::<Result<_, _>>()?;
    Ok(rec)
}

/// One order with its history.
pub(crate) fn record(
    conn: &Connection,
    order_id: &OrderId,
) -> Result<Option<PickupRecord>, LedgerError> {
    let rec = conn
        .prepare_cached(&format!(
            "SELECT {ORDER_COLUMNS} FROM pickup_orders WHERE order_id = ?1"
        ))?
        .query_row([order_id.as_str()], record_row)
        .optional()?;
    rec.map(|r| with_history(conn, r)).transpose()
}

/// Orders in any of `statuses`, by pickup_by then order_id, at most `limit`.
pub(crate) fn records(
    conn: &Connection,
    statuses: &[OrderStatus],
    limit: u32,
) -> Result<Vec<PickupRecord>, LedgerError> {
    let list: Vec<String> = statuses
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    // The statuses are our own constants, never client text.
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ORDER_COLUMNS} FROM pickup_orders WHERE status IN ({})
         ORDER BY pickup_by, order_id LIMIT ?1",
        list.join(", ")
    ))?;
    let rows = stmt.query_map([i64::from(limit)], record_row)?;
    let recs: Vec<PickupRecord> = rows.collect::<Result<_, _>>()?;
    recs.into_iter().map(|r| with_history(conn, r)).collect()
}

/// The order a fallback code's digest belongs to.
pub(crate) fn order_by_digest(
    conn: &Connection,
    digest: &str,
) -> Result<Option<OrderId>, LedgerError> {
    let id: Option<String> = conn
        .prepare_cached("SELECT order_id FROM pickup_orders WHERE code_digest = ?1 LIMIT 1")?
        .query_row([digest], |r| r.get(0))
        .optional()?;
    id.map(|i| OrderId::parse(&i).map_err(|e| LedgerError::Invalid(format!("stored order: {e}"))))
        .transpose()
}

pub(crate) fn keys(conn: &Connection) -> Result<Vec<PickupKey>, LedgerError> {
    let mut stmt =
        conn.prepare_cached("SELECT key_id, public_key FROM pickup_keys ORDER BY key_id")?;
    let rows = stmt.query_map([], |r| {
        Ok(PickupKey {
            key_id: u32::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
            public_key: r.get(1)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The earliest expiry among open orders.
pub(crate) fn next_expiry(conn: &Connection) -> Result<Option<UtcMillis>, LedgerError> {
    let v: Option<i64> = conn
        .prepare_cached(
            "SELECT MIN(expires_at) FROM pickup_orders
             WHERE status IN ('received', 'picking', 'ready')",
        )?
        .query_row([], |r| r.get(0))?;
    Ok(v.map(UtcMillis))
}

/// Orders per status (every status, zeros included).
pub(crate) fn counts(conn: &Connection) -> Result<Vec<(OrderStatus, u64)>, LedgerError> {
    let mut stmt =
        conn.prepare_cached("SELECT status, COUNT(*) FROM pickup_orders GROUP BY status")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    let found: Vec<(String, i64)> = rows.collect::<Result<_, _>>()?;
    Ok(OrderStatus::ALL
        .iter()
        .map(|s| {
            let n = found
                .iter()
                .find(|(name, _)| name == s.as_str())
                .map_or(0, |(_, n)| u64::try_from(*n).unwrap_or(0));
            (*s, n)
        })
        .collect())
}
