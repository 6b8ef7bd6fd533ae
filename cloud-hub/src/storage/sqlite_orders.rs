//! Click-and-collect on SQLite: the SQL behind the pickup methods of
//! [`SqliteStorage`](super::SqliteStorage). Writers run inside a `BEGIN IMMEDIATE` transaction
//! on the single write connection, so an order's row is as good as locked while it moves.
use aisle_protocol::pickup::{
    PickupCancellation, PickupClaims, PickupKey, PickupOrder, PickupOrderLine, code_digest,
};
use aisle_protocol::sync::{ChangeBody, LedgerEvent};
use aisle_protocol::{EventId, OrderId, StoreId, UtcMillis};
use rusqlite::{Connection, OptionalExtension, params};

use super::sqlite::{immediate, load_stores, require_store};
use super::{
    StorageError, decode_collection, encode_json, new_event_id, opt_event_id, parse_event_id,
    parse_gtin, parse_order_id, parse_status, parse_store_id, pickup_delta_key, to_u32, to_u64,
};
use crate::pickup::machine::{
    CancelPlan, Effect, OrderState, StateLine, StockEffect, cancel_plan, on_hq_cancel,
    on_hub_expiry, on_store_event,
};
use crate::pickup::token::{self, PickupSigningKey, SEAL_KEY_SECRET, WEBHOOK_SECRET};
use crate::pickup::{
    CancelReceipt, Cancellation, Conflict, ConflictKind, HistoryEntry, NewOrder, Notification,
    OrderFilter, OrderLine, OrderReceipt, OrderStatus, OrderSummary, OrderView, PlacedOrder,
    Source, WebhookDelivery, WebhookKind, check_pickup_window, webhook,
};

const OPEN_STATUSES: &str = "('placed', 'sent_to_store', 'picking', 'ready')";

/// The hub's current pickup key.
struct KeyRow {
    key_id: u32,
    seed: Vec<u8>,
    public_key: String,
}

fn current_key(c: &Connection) -> Result<Option<KeyRow>, StorageError> {
    let row: Option<(i64, Vec<u8>, String)> = c
        .query_row(
            "SELECT key_id, seed, public_key FROM pickup_keys ORDER BY key_id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    row.map(|(id, seed, public_key)| {
        Ok(KeyRow {
            key_id: to_u32(id, "key id")?,
            seed,
            public_key,
        })
    })
    .transpose()
}

/// The current key, generated (and sent to every store) when there is none yet.
fn ensure_key(
    c: &Connection,
    now: UtcMillis,
    woken: &mut Vec<StoreId>,
) -> Result<KeyRow, StorageError> {
    if let Some(k) = current_key(c)? {
        return Ok(k);
    }
    let seed = token::random_32();
    let public = PickupKey::of(1, &token::signing_key(&seed)?.verifying_key());
    c.execute(
        "INSERT INTO pickup_keys (key_id, seed, public_key, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![1, seed.to_vec(), public.public_key, now.0],
    )?;
    tracing::info!(target: "audit", key_id = 1, "pickup signing key generated");
    let key = KeyRow {
        key_id: 1,
        seed: seed.to_vec(),
        public_key: public.public_key,
    };
    for store in load_stores(c)? {
        if send_key(c, &key, &store.id, now)? {
            woken.push(store.id);
        }
    }
    Ok(key)
}

/// Writes the `PickupKey` change for `store` unless its changefeed already carries this key.
fn send_key(
    c: &Connection,
    key: &KeyRow,
    store: &StoreId,
    now: UtcMillis,
) -> Result<bool, StorageError> {
    let sent: Option<i64> = c
        .query_row(
            "SELECT change_seq FROM pickup_key_stores WHERE key_id = ?1 AND store_id = ?2",
            params![key.key_id, store.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    if sent.is_some() {
        return Ok(false);
    }
    let body = encode_json(&ChangeBody::PickupKey(PickupKey {
        key_id: key.key_id,
        public_key: key.public_key.clone(),
    }))?;
    let seq: i64 = c.query_row(
        "INSERT INTO changes (store_id, kind, gtin, version, body, created_at)
         VALUES (?1, 'pickup_key', NULL, NULL, ?2, ?3) RETURNING seq",
        params![store.as_str(), body, now.0],
        |r| r.get(0),
    )?;
    c.execute(
        "INSERT INTO pickup_key_stores (key_id, store_id, change_seq) VALUES (?1, ?2, ?3)",
        params![key.key_id, store.as_str(), seq],
    )?;
    Ok(true)
}

/// A new store's changefeed gets the current key, if there is one (inside `create_store`).
pub(super) fn send_current_key(
    c: &Connection,
    store: &StoreId,
    now: UtcMillis,
) -> Result<bool, StorageError> {
    match current_key(c)? {
        Some(key) => send_key(c, &key, store, now),
        None => Ok(false),
    }
}

/// A secret of the hub, generated and stored on first use.
fn secret(c: &Connection, name: &str, now: UtcMillis) -> Result<String, StorageError> {
    c.execute(
        "INSERT INTO hub_secrets (name, value, created_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO NOTHING",
        params![name, token::new_secret_hex(), now.0],
    )?;
    Ok(c.query_row(
        "SELECT value FROM hub_secrets WHERE name = ?1",
        [name],
        |r| r.get(0),
    )?)
}

pub(super) fn webhook_secret(conn: &mut Connection) -> Result<String, StorageError> {
    let tx = immediate(conn)?;
    let s = secret(&tx, WEBHOOK_SECRET, super::now())?;
    tx.commit()?;
    Ok(s)
}

/// The stored parts of an order's creation answer.
struct PlacedRow {
    store: String,
    fingerprint: String,
    placed_at: i64,
    pickup_by: i64,
    expires_at: i64,
    key_id: i64,
    digest: String,
    sealed: String,
}

fn load_placed(c: &Connection, id: &OrderId) -> Result<Option<PlacedRow>, StorageError> {
    Ok(c.query_row(
        "SELECT store_id, request_sha256, placed_at, pickup_by, expires_at, key_id, code_digest, code_sealed
           FROM orders WHERE order_id = ?1",
        [id.as_str()],
        |r| {
            Ok(PlacedRow {
                store: r.get(0)?,
                fingerprint: r.get(1)?,
                placed_at: r.get(2)?,
                pickup_by: r.get(3)?,
                expires_at: r.get(4)?,
                key_id: r.get(5)?,
                digest: r.get(6)?,
                sealed: r.get(7)?,
            })
        },
    )
    .optional()?)
}

/// The first answer again: the code unsealed, the QR re-signed (Ed25519 is deterministic).
fn rebuild(
    c: &Connection,
    id: &OrderId,
    row: PlacedRow,
    now: UtcMillis,
) -> Result<PlacedOrder, StorageError> {
    let store = parse_store_id(&row.store)?;
    let seed: Vec<u8> = c
        .query_row(
            "SELECT seed FROM pickup_keys WHERE key_id = ?1",
            [row.key_id],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| {
            StorageError::Corrupt(format!("pickup key {} of order {id} is gone", row.key_id))
        })?;
    let seal = secret(c, SEAL_KEY_SECRET, now)?;
    let code = token::unseal_code(seal.as_bytes(), id, &store, &row.sealed, &row.digest)?;
    let claims = PickupClaims {
        order: id.clone(),
        store: store.clone(),
        issued_at: UtcMillis(row.placed_at),
        expires_at: UtcMillis(row.expires_at),
        key_id: to_u32(row.key_id, "key id")?,
    };
    Ok(PlacedOrder {
        order_id: id.clone(),
        store,
        placed_at: UtcMillis(row.placed_at),
        pickup_by: UtcMillis(row.pickup_by),
        expires_at: UtcMillis(row.expires_at),
        qr: token::sign(&claims, &seed)?,
        code,
    })
}

/// Stores a new order (see `HubStorage::create_order`); also returns the stores whose
/// changefeed got something.
pub(super) fn create_order(
    conn: &mut Connection,
    order: &NewOrder,
    now: UtcMillis,
) -> Result<(OrderReceipt, Vec<StoreId>), StorageError> {
    let tx = immediate(conn)?;
    let fingerprint = order.fingerprint();
    if let Some(row) = load_placed(&tx, &order.order_id)? {
        if row.fingerprint != fingerprint {
            return Err(StorageError::OrderMismatch(order.order_id.clone()));
        }
        let placed = rebuild(&tx, &order.order_id, row, now)?;
        return Ok((
            OrderReceipt {
                created: false,
                order: placed,
            },
            Vec::new(),
        ));
    }
    check_pickup_window(order.pickup_by, now)?;
    require_store(&tx, &order.store)?;
    let store = order.store.as_str();
    let mut lines = Vec::with_capacity(order.lines.len());
    for (i, line) in order.lines.iter().enumerate() {
        let name: Option<String> = tx
            .query_row(
                "SELECT name FROM prices WHERE store_id = ?1 AND gtin = ?2",
                params![store, line.gtin.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        let Some(name) = name else {
            return Err(StorageError::UnknownProduct {
                line: i + 1,
                gtin: line.gtin,
                store: order.store.clone(),
            });
        };
        let (on_hand, reserved): (i64, i64) = tx.query_row(
            "SELECT (SELECT COALESCE(SUM(delta), 0) FROM stock_deltas WHERE store_id = ?1 AND gtin = ?2),
                    (SELECT COALESCE(SUM(qty), 0) FROM stock_reservations WHERE store_id = ?1 AND gtin = ?2)",
            params![store, line.gtin.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let available = on_hand.saturating_sub(reserved);
        if available < i64::from(line.qty) {
            return Err(StorageError::InsufficientStock {
                line: i + 1,
                gtin: line.gtin,
                store: order.store.clone(),
                requested: line.qty,
                available,
            });
        }
        lines.push(PickupOrderLine {
            gtin: line.gtin,
            qty: line.qty,
            name,
        });
    }
    let mut woken = Vec::new();
    let key = ensure_key(&tx, now, &mut woken)?;
    if send_key(&tx, &key, &order.store, now)? {
        woken.push(order.store.clone());
    }
    let seal = secret(&tx, SEAL_KEY_SECRET, now)?;
    let code = token::new_code();
    let digest = code_digest(&order.store, &code);
    let sealed = token::seal_code(seal.as_bytes(), &order.order_id, &code)?;
    let expires_at = order.pickup_by;
    let claims = PickupClaims {
        order: order.order_id.clone(),
        store: order.store.clone(),
        issued_at: now,
        expires_at,
        key_id: key.key_id,
    };
    let qr = token::sign(&claims, &key.seed)?;
    let change = PickupOrder {
        order_id: order.order_id.clone(),
        lines,
        placed_at: now,
        pickup_by: order.pickup_by,
        expires_at,
        code_digest: digest.clone(),
        key_id: key.key_id,
    };
    change
        .validate()
        .map_err(|e| StorageError::InvalidInput(e.to_string()))?;
    let seq: i64 = tx.query_row(
        "INSERT INTO changes (store_id, kind, gtin, version, body, created_at)
         VALUES (?1, 'pickup_order', NULL, NULL, ?2, ?3) RETURNING seq",
        params![
            store,
            encode_json(&ChangeBody::PickupOrder(change.clone()))?,
            now.0
        ],
        |r| r.get(0),
    )?;
    let id = order.order_id.as_str();
    tx.execute(
        "INSERT INTO orders (order_id, store_id, status, request_sha256, placed_at, pickup_by, expires_at,
                             webhook_url, key_id, code_digest, code_sealed, change_seq, updated_at)
         VALUES (?1, ?2, 'placed', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?4)",
        params![
            id,
            store,
            fingerprint,
            now.0,
            order.pickup_by.0,
            expires_at.0,
            order.webhook,
            key.key_id,
            digest,
            sealed,
            seq
        ],
    )?;
    {
        let mut line_stmt = tx.prepare(
            "INSERT INTO order_lines (order_id, line_no, gtin, qty, name) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut reserve = tx.prepare(
            "INSERT INTO stock_reservations (order_id, line_no, store_id, gtin, qty) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (i, l) in change.lines.iter().enumerate() {
            let line_no = i as i64 + 1;
            line_stmt.execute(params![id, line_no, l.gtin.as_str(), l.qty, l.name])?;
            reserve.execute(params![id, line_no, store, l.gtin.as_str(), l.qty])?;
        }
    }
    tx.execute(
        "INSERT INTO order_history (order_id, status, at, source, event_id, detail)
         VALUES (?1, 'placed', ?2, 'hq', NULL, NULL)",
        params![id, now.0],
    )?;
    tx.commit()?;
    if !woken.contains(&order.store) {
        woken.push(order.store.clone());
    }
    Ok((
        OrderReceipt {
            created: true,
            order: PlacedOrder {
                order_id: order.order_id.clone(),
                store: order.store.clone(),
                placed_at: now,
                pickup_by: order.pickup_by,
                expires_at,
                qr,
                code,
            },
        },
        woken,
    ))
}

/// What the transitions need of an order.
fn load_state(c: &Connection, id: &OrderId) -> Result<Option<OrderState>, StorageError> {
    type Raw = (
        String,
        String,
        i64,
        Option<String>,
        Option<i64>,
        Option<String>,
        Option<String>,
    );
    let raw: Option<Raw> = c
        .query_row(
            "SELECT store_id, status, expires_at, cancel_id, cancel_requested_at, collected, webhook_url
               FROM orders WHERE order_id = ?1",
            [id.as_str()],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            },
        )
        .optional()?;
    let Some((store, status, expires_at, cancel_id, cancel_at, collected, webhook)) = raw else {
        return Ok(None);
    };
    let mut stmt = c.prepare(
        "SELECT line_no, gtin, qty, missing FROM order_lines WHERE order_id = ?1 ORDER BY line_no",
    )?;
    let rows = stmt.query_map([id.as_str()], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, bool>(3)?,
        ))
    })?;
    let mut lines = Vec::new();
    for row in rows {
        let (line_no, gtin, qty, missing) = row?;
        lines.push(StateLine {
            line_no,
            gtin: parse_gtin(&gtin)?,
            qty: to_u32(qty, "qty")?,
            missing,
        });
    }
    Ok(Some(OrderState {
        order_id: id.clone(),
        store: parse_store_id(&store)?,
        status: parse_status(&status)?,
        expires_at: UtcMillis(expires_at),
        cancel_id: opt_event_id(cancel_id.as_deref())?,
        cancel_requested_at: cancel_at.map(UtcMillis),
        collected: decode_collection(collected.as_deref())?,
        webhook,
        lines,
    }))
}

/// Writes an effect (see [`crate::pickup::machine`]). Returns whether a webhook was queued.
fn apply_effect(
    c: &Connection,
    state: &OrderState,
    e: &Effect,
    now: UtcMillis,
) -> Result<bool, StorageError> {
    if e.is_none() {
        return Ok(false);
    }
    let id = state.order_id.as_str();
    let status = e.status.unwrap_or(state.status);
    let collected = e.collected.as_ref().map(encode_json).transpose()?;
    c.execute(
        "UPDATE orders SET status = ?2, location = COALESCE(?3, location),
                collected = COALESCE(?4, collected), updated_at = ?5
          WHERE order_id = ?1",
        params![id, status.as_str(), e.location, collected, now.0],
    )?;
    if let Some(missing) = &e.missing {
        let mut stmt =
            c.prepare("UPDATE order_lines SET missing = ?3 WHERE order_id = ?1 AND line_no = ?2")?;
        for l in &state.lines {
            stmt.execute(params![id, l.line_no, missing.contains(&l.gtin)])?;
        }
    }
    if let Some(h) = &e.history {
        c.execute(
            "INSERT INTO order_history (order_id, status, at, source, event_id, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                id,
                h.status.as_str(),
                h.at.0,
                h.source.as_str(),
                h.event_id.map(|e| e.to_hex()),
                h.detail
            ],
        )?;
    }
    match &e.stock {
        StockEffect::Keep => {}
        StockEffect::Release => {
            c.execute("DELETE FROM stock_reservations WHERE order_id = ?1", [id])?;
        }
        StockEffect::Sell { event_id, lines } => {
            c.execute("DELETE FROM stock_reservations WHERE order_id = ?1", [id])?;
            let mut stmt = c.prepare(
                "INSERT INTO stock_deltas (delta_key, store_id, gtin, delta, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            )?;
            for (line_no, gtin, qty) in lines {
                stmt.execute(params![
                    pickup_delta_key(event_id, *line_no),
                    state.store.as_str(),
                    gtin.as_str(),
                    -i64::from(*qty),
                    now.0
                ])?;
            }
        }
    }
    if let Some(k) = &e.conflict {
        c.execute(
            "INSERT INTO order_conflicts (conflict_key, order_id, kind, at, event_id, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (conflict_key) DO NOTHING",
            params![
                k.key,
                id,
                k.kind.as_str(),
                k.at.0,
                k.event_id.map(|e| e.to_hex()),
                k.detail
            ],
        )?;
    }
    let (Some(w), Some(url)) = (&e.webhook, &state.webhook) else {
        return Ok(false);
    };
    let event_id = new_event_id(now);
    let body = webhook::body(
        event_id,
        w.kind,
        &state.order_id,
        &state.store,
        status,
        w.at,
        &w.extra,
    )
    .map_err(|e| StorageError::Corrupt(e.to_string()))?;
    c.execute(
        "INSERT INTO webhook_outbox (event_id, order_id, kind, url, body, created_at, attempts, next_attempt_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?6)",
        params![event_id.to_hex(), id, w.kind.as_str(), url, body, now.0],
    )?;
    Ok(true)
}

/// Applies one store pickup event, keyed by its event id (a replay does nothing). An event for
/// an order the hub does not know, or of another store, is kept but changes nothing.
pub(super) fn apply_store_event(
    c: &Connection,
    store: &str,
    ev: &LedgerEvent,
    order: &OrderId,
    now: UtcMillis,
) -> Result<(), StorageError> {
    let event_id = ev.id.to_hex();
    let n = c.execute(
        "INSERT INTO pickup_events (event_id, order_id, store_id, kind, outcome)
         VALUES (?1, ?2, ?3, ?4, 'pending') ON CONFLICT (event_id) DO NOTHING",
        params![event_id, order.as_str(), store, ev.body.kind()],
    )?;
    if n == 0 {
        return Ok(());
    }
    let outcome = match load_state(c, order)? {
        None => {
            tracing::warn!(%order, store, event = %ev.id, "pickup event for an order this hub does not know");
            "unknown_order"
        }
        Some(s) if s.store.as_str() != store => {
            tracing::warn!(%order, store, order_store = %s.store, event = %ev.id, "pickup event from a store the order is not assigned to; ignored");
            "other_store"
        }
        Some(s) => {
            let effect = on_store_event(&s, ev.id, ev.at, &ev.body);
            if effect.is_none() {
                "no_change"
            } else {
                apply_effect(c, &s, &effect, now)?;
                "applied"
            }
        }
    };
    c.execute(
        "UPDATE pickup_events SET outcome = ?2 WHERE event_id = ?1",
        params![event_id, outcome],
    )?;
    Ok(())
}

/// HQ cancels an order (see `HubStorage::cancel_order`); also returns the store to wake.
pub(super) fn cancel_order(
    conn: &mut Connection,
    id: &OrderId,
    reason: Option<&str>,
    now: UtcMillis,
    actor: &crate::security::Actor,
) -> Result<(CancelReceipt, Option<StoreId>), StorageError> {
    let tx = immediate(conn)?;
    let Some(mut state) = load_state(&tx, id)? else {
        return Err(StorageError::UnknownOrder(id.clone()));
    };
    match cancel_plan(&state) {
        CancelPlan::Cancel => {}
        CancelPlan::AlreadyCancelled => {
            return Ok((
                CancelReceipt {
                    cancelled_now: false,
                    cancel_id: state.cancel_id,
                },
                None,
            ));
        }
        CancelPlan::Refused(m) => return Err(StorageError::CannotCancel(m)),
    }
    let cancel_id = new_event_id(now);
    let body = encode_json(&ChangeBody::PickupCancelled(PickupCancellation {
        order_id: id.clone(),
        cancel_id,
        at: now,
    }))?;
    tx.execute(
        "INSERT INTO changes (store_id, kind, gtin, version, body, created_at)
         VALUES (?1, 'pickup_cancelled', NULL, NULL, ?2, ?3)",
        params![state.store.as_str(), body, now.0],
    )?;
    tx.execute(
        "UPDATE orders SET cancel_id = ?2, cancel_requested_at = ?3, cancel_reason = ?4 WHERE order_id = ?1",
        params![id.as_str(), cancel_id.to_hex(), now.0, reason],
    )?;
    state.cancel_id = Some(cancel_id);
    state.cancel_requested_at = Some(now);
    apply_effect(&tx, &state, &on_hq_cancel(now, reason), now)?;
    super::sqlite_security::append_audit(
        &tx,
        &crate::security::AuditInput::new(
            actor,
            crate::security::action::ORDER_CANCELLED,
            id.as_str(),
            serde_json::json!({ "store": state.store.as_str(), "reason": reason }),
        ),
        now,
    )?;
    tx.commit()?;
    Ok((
        CancelReceipt {
            cancelled_now: true,
            cancel_id: Some(cancel_id),
        },
        Some(state.store),
    ))
}

/// The hub's expiry sweep (see `HubStorage::expire_overdue`).
pub(super) fn expire_overdue(
    conn: &mut Connection,
    now: UtcMillis,
    grace_ms: i64,
    limit: u32,
) -> Result<Vec<OrderId>, StorageError> {
    let cutoff = now.0.saturating_sub(grace_ms);
    let ids: Vec<String> = {
        let mut stmt = conn.prepare(&format!(
            "SELECT order_id FROM orders WHERE status IN {OPEN_STATUSES} AND expires_at <= ?1
              ORDER BY expires_at LIMIT ?2"
        ))?;
        stmt.query_map(params![cutoff, i64::from(limit)], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let id = parse_order_id(&id)?;
        let tx = immediate(conn)?;
        let Some(state) = load_state(&tx, &id)? else {
            continue;
        };
        // Looked at again in the writing transaction: the store may have spoken meanwhile.
        if !state.status.is_open() || state.expires_at.0 > cutoff {
            continue;
        }
        apply_effect(&tx, &state, &on_hub_expiry(&state, now, grace_ms), now)?;
        tx.commit()?;
        out.push(id);
    }
    Ok(out)
}

/// Everything about one order, from one read snapshot.
pub(super) fn read_order(
    conn: &mut Connection,
    id: &OrderId,
) -> Result<Option<OrderView>, StorageError> {
    let tx = conn.transaction()?;
    type Raw = (
        String,
        String,
        i64,
        i64,
        i64,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<String>,
    );
    let raw: Option<Raw> = tx
        .query_row(
            "SELECT store_id, status, placed_at, pickup_by, expires_at, webhook_url, location,
                    collected, cancel_id, cancel_requested_at, cancel_reason
               FROM orders WHERE order_id = ?1",
            [id.as_str()],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                    r.get(10)?,
                ))
            },
        )
        .optional()?;
    let Some((
        store,
        status,
        placed_at,
        pickup_by,
        expires_at,
        webhook,
        location,
        collected,
        cancel_id,
        cancel_at,
        cancel_reason,
    )) = raw
    else {
        return Ok(None);
    };
    let key = id.as_str();
    let mut lines = Vec::new();
    {
        let mut stmt = tx.prepare(
            "SELECT gtin, qty, name, missing FROM order_lines WHERE order_id = ?1 ORDER BY line_no",
        )?;
        let rows = stmt.query_map([key], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, bool>(3)?,
            ))
        })?;
        for row in rows {
            let (gtin, qty, name, missing) = row?;
            lines.push(OrderLine {
                gtin: parse_gtin(&gtin)?,
                qty: to_u32(qty, "qty")?,
                name,
                missing,
            });
        }
    }
    let mut history = Vec::new();
    {
        let mut stmt = tx.prepare(
            "SELECT status, at, source, event_id, detail FROM order_history WHERE order_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([key], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })?;
        for row in rows {
            let (status, at, source, event_id, detail) = row?;
            history.push(HistoryEntry {
                status: parse_status(&status)?,
                at: UtcMillis(at),
                source: Source::parse(&source)?,
                event_id: opt_event_id(event_id.as_deref())?,
                detail,
            });
        }
    }
    let mut conflicts = Vec::new();
    {
        let mut stmt = tx.prepare(
            "SELECT kind, at, event_id, detail FROM order_conflicts WHERE order_id = ?1 ORDER BY at, conflict_key",
        )?;
        let rows = stmt.query_map([key], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        for row in rows {
            let (kind, at, event_id, detail) = row?;
            conflicts.push(Conflict {
                kind: ConflictKind::parse(&kind)?,
                at: UtcMillis(at),
                event_id: opt_event_id(event_id.as_deref())?,
                detail,
            });
        }
    }
    let mut notifications = Vec::new();
    {
        let mut stmt = tx.prepare(
            "SELECT event_id, kind, created_at, attempts, delivered_at, last_error FROM webhook_outbox
              WHERE order_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([key], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })?;
        for row in rows {
            let (event_id, kind, created_at, attempts, delivered_at, last_error) = row?;
            notifications.push(Notification {
                event_id: parse_event_id(&event_id)?,
                kind: WebhookKind::parse(&kind)?,
                created_at: UtcMillis(created_at),
                attempts: to_u32(attempts, "attempts")?,
                delivered_at: delivered_at.map(UtcMillis),
                last_error,
            });
        }
    }
    let cancellation = match (cancel_id, cancel_at) {
        (Some(c), Some(at)) => Some(Cancellation {
            cancel_id: parse_event_id(&c)?,
            requested_at: UtcMillis(at),
            reason: cancel_reason,
        }),
        _ => None,
    };
    Ok(Some(OrderView {
        order_id: id.clone(),
        store: parse_store_id(&store)?,
        status: parse_status(&status)?,
        placed_at: UtcMillis(placed_at),
        pickup_by: UtcMillis(pickup_by),
        expires_at: UtcMillis(expires_at),
        webhook,
        location,
        lines,
        collected: decode_collection(collected.as_deref())?,
        cancellation,
        history,
        conflicts,
        notifications,
    }))
}

pub(super) fn list_orders(
    conn: &mut Connection,
    filter: &OrderFilter,
) -> Result<Vec<OrderSummary>, StorageError> {
    let mut stmt = conn.prepare(
        "SELECT o.order_id, o.store_id, o.status, o.placed_at, o.pickup_by,
                (SELECT COUNT(*) FROM order_lines l WHERE l.order_id = o.order_id)
           FROM orders o
          WHERE (?1 IS NULL OR o.store_id = ?1) AND (?2 IS NULL OR o.status = ?2)
          ORDER BY o.placed_at DESC, o.order_id LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![
            filter.store.as_ref().map(StoreId::as_str),
            filter.status.map(OrderStatus::as_str),
            filter.limit()
        ],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        },
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (id, store, status, placed_at, pickup_by, lines) = row?;
        out.push(OrderSummary {
            order_id: parse_order_id(&id)?,
            store: parse_store_id(&store)?,
            status: parse_status(&status)?,
            placed_at: UtcMillis(placed_at),
            pickup_by: UtcMillis(pickup_by),
            lines: to_u32(lines, "lines")?,
        });
    }
    Ok(out)
}

pub(super) fn pickup_key(conn: &mut Connection) -> Result<Option<PickupKey>, StorageError> {
    Ok(current_key(conn)?.map(|k| PickupKey {
        key_id: k.key_id,
        public_key: k.public_key,
    }))
}

/// The current signing key, generated (and sent to every store) when there is none yet.
pub(super) fn signing_key(
    conn: &mut Connection,
    now: UtcMillis,
) -> Result<(PickupSigningKey, Vec<StoreId>), StorageError> {
    let tx = immediate(conn)?;
    let mut woken = Vec::new();
    let key = ensure_key(&tx, now, &mut woken)?;
    tx.commit()?;
    Ok((PickupSigningKey::from_seed(key.key_id, &key.seed)?, woken))
}

/// Whether any undelivered webhook is due at `now`.
pub(super) fn webhooks_due(conn: &mut Connection, now: UtcMillis) -> Result<bool, StorageError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM webhook_outbox WHERE delivered_at IS NULL AND next_attempt_at <= ?1 LIMIT 1",
            [now.0],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

pub(super) fn claim_webhooks(
    conn: &mut Connection,
    now: UtcMillis,
    lease_until: UtcMillis,
    limit: u32,
) -> Result<Vec<WebhookDelivery>, StorageError> {
    let tx = immediate(conn)?;
    let mut out = Vec::new();
    {
        let mut stmt = tx.prepare(
            "UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = ?2
              WHERE event_id IN (SELECT event_id FROM webhook_outbox
                                  WHERE delivered_at IS NULL AND next_attempt_at <= ?1
                                  ORDER BY next_attempt_at, seq LIMIT ?3)
             RETURNING event_id, order_id, kind, url, body, attempts",
        )?;
        let rows = stmt.query_map(params![now.0, lease_until.0, i64::from(limit)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        for row in rows {
            let (event_id, order_id, kind, url, body, attempts) = row?;
            out.push(WebhookDelivery {
                event_id: parse_event_id(&event_id)?,
                order_id: parse_order_id(&order_id)?,
                kind: WebhookKind::parse(&kind)?,
                url,
                body,
                attempts: to_u32(attempts, "attempts")?,
            });
        }
    }
    tx.commit()?;
    Ok(out)
}

pub(super) fn webhook_delivered(
    conn: &mut Connection,
    id: &EventId,
    at: UtcMillis,
) -> Result<(), StorageError> {
    conn.execute(
        "UPDATE webhook_outbox SET delivered_at = ?2, last_error = NULL
          WHERE event_id = ?1 AND delivered_at IS NULL",
        params![id.to_hex(), at.0],
    )?;
    Ok(())
}

pub(super) fn webhook_failed(
    conn: &mut Connection,
    id: &EventId,
    retry_at: UtcMillis,
    error: &str,
) -> Result<(), StorageError> {
    conn.execute(
        "UPDATE webhook_outbox SET next_attempt_at = ?2, last_error = ?3
          WHERE event_id = ?1 AND delivered_at IS NULL",
        params![id.to_hex(), retry_at.0, error],
    )?;
    Ok(())
}

pub(super) fn webhooks_pending(conn: &mut Connection) -> Result<u64, StorageError> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM webhook_outbox WHERE delivered_at IS NULL",
        [],
        |r| r.get(0),
    )?;
    to_u64(n, "pending webhooks")
}
