//! Click-and-collect on PostgreSQL: the SQL behind the pickup methods of
//! [`PgStorage`](super::PgStorage).
//!
//! Locks, always taken in this order so no two transactions wait on each other in a circle:
//! - Order creation and cancellation write changes, so they take `CHANGEFEED_LOCK` first (which
//!   also serialises the key's generation, a new store joining, two creations checking the same
//!   stock, and two requests for one order id), then the order's row (`FOR UPDATE`).
//! - An upload takes its gateway row, `SALES_LOCK` when it has sales, then [`PICKUP_LOCK`] for
//!   its store, then the rows of the orders its events name, in event order. The store lock
//!   means two uploads of one store never lock two orders in opposite orders. Label events
//!   come after (`LABELS_LOCK` per store, see `postgres_labels`), `AUDIT_LOCK` last.
//! - The expiry sweep locks one order row per transaction.
use aisle_protocol::pickup::{
    PickupCancellation, PickupClaims, PickupKey, PickupOrder, PickupOrderLine, code_digest,
};
use aisle_protocol::sync::{ChangeBody, LedgerEvent};
use aisle_protocol::{EventId, OrderId, StoreId, UtcMillis};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::postgres::{lock_changefeed, notify_stores, require_store};
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

/// Advisory lock namespace (second key: hash of the store id) held while an upload applies its
/// store's pickup events.
pub const PICKUP_LOCK: i32 = 0x5049_434b;

const OPEN_STATUSES: &str = "('placed', 'sent_to_store', 'picking', 'ready')";

struct KeyRow {
    key_id: u32,
    seed: Vec<u8>,
    public_key: String,
}

async fn current_key<C: GenericClient>(c: &C) -> Result<Option<KeyRow>, StorageError> {
    let row = c
        .query_opt(
            "SELECT key_id, seed, public_key FROM pickup_keys ORDER BY key_id DESC LIMIT 1",
            &[],
        )
        .await?;
    row.map(|r| {
        Ok(KeyRow {
            key_id: to_u32(r.try_get("key_id")?, "key id")?,
            seed: r.try_get("seed")?,
            public_key: r.try_get("public_key")?,
        })
    })
    .transpose()
}

/// The current key, generated (and sent to every store) when there is none yet. The caller
/// holds `CHANGEFEED_LOCK`, so two hubs cannot both generate one.
async fn ensure_key<C: GenericClient>(
    c: &C,
    now: UtcMillis,
    woken: &mut Vec<String>,
) -> Result<KeyRow, StorageError> {
    if let Some(k) = current_key(c).await? {
        return Ok(k);
    }
    let seed = token::random_32();
    let public = PickupKey::of(1, &token::signing_key(&seed)?.verifying_key());
    c.execute(
        "INSERT INTO pickup_keys (key_id, seed, public_key, created_at) VALUES (1, $1, $2, $3)",
        &[&seed.as_slice(), &public.public_key, &now.0],
    )
    .await?;
    tracing::info!(target: "audit", key_id = 1, "pickup signing key generated");
    let key = KeyRow {
        key_id: 1,
        seed: seed.to_vec(),
        public_key: public.public_key,
    };
    let stores = c
        .query("SELECT store_id FROM stores ORDER BY store_id", &[])
        .await?;
    for r in &stores {
        let store: String = r.try_get(0)?;
        if send_key(c, &key, &store, now).await? {
            woken.push(store);
        }
    }
    Ok(key)
}

async fn send_key<C: GenericClient>(
    c: &C,
    key: &KeyRow,
    store: &str,
    now: UtcMillis,
) -> Result<bool, StorageError> {
    let key_id = i64::from(key.key_id);
    let sent = c
        .query_opt(
            "SELECT change_seq FROM pickup_key_stores WHERE key_id = $1 AND store_id = $2",
            &[&key_id, &store],
        )
        .await?;
    if sent.is_some() {
        return Ok(false);
    }
    let body = encode_json(&ChangeBody::PickupKey(PickupKey {
        key_id: key.key_id,
        public_key: key.public_key.clone(),
    }))?;
    let seq: i64 = c
        .query_one(
            "INSERT INTO changes (store_id, kind, gtin, version, body, created_at)
             VALUES ($1, 'pickup_key', NULL, NULL, $2, $3) RETURNING seq",
            &[&store, &body, &now.0],
        )
        .await?
        .try_get(0)?;
    c.execute(
        "INSERT INTO pickup_key_stores (key_id, store_id, change_seq) VALUES ($1, $2, $3)",
        &[&key_id, &store, &seq],
    )
    .await?;
    Ok(true)
}

/// A new store's changefeed gets the current key, if there is one. The caller holds
/// `CHANGEFEED_LOCK`.
pub(super) async fn send_current_key<C: GenericClient>(
    c: &C,
    store: &str,
    now: UtcMillis,
) -> Result<bool, StorageError> {
    match current_key(c).await? {
        Some(key) => send_key(c, &key, store, now).await,
        None => Ok(false),
    }
}

pub(super) async fn secret<C: GenericClient>(
    c: &C,
    name: &str,
    now: UtcMillis,
) -> Result<String, StorageError> {
    c.execute(
        "INSERT INTO hub_secrets (name, value, created_at) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO NOTHING",
        &[&name, &token::new_secret_hex(), &now.0],
    )
    .await?;
    Ok(
        c.query_one("SELECT value FROM hub_secrets WHERE name = $1", &[&name])
            .await?
            .try_get(0)?,
    )
}

pub(super) async fn webhook_secret<C: GenericClient>(c: &C) -> Result<String, StorageError> {
    secret(c, WEBHOOK_SECRET, super::now()).await
}

/// The first answer again: the code unsealed, the QR re-signed (Ed25519 is deterministic).
async fn rebuild<C: GenericClient>(
    c: &C,
    id: &OrderId,
    row: &Row,
    now: UtcMillis,
) -> Result<PlacedOrder, StorageError> {
    let store = parse_store_id(row.try_get("store_id")?)?;
    let key_id: i64 = row.try_get("key_id")?;
    let seed: Vec<u8> = c
        .query_opt("SELECT seed FROM pickup_keys WHERE key_id = $1", &[&key_id])
        .await?
        .ok_or_else(|| StorageError::Corrupt(format!("pickup key {key_id} of order {id} is gone")))?
        .try_get(0)?;
    let seal = secret(c, SEAL_KEY_SECRET, now).await?;
    let code = token::unseal_code(
        seal.as_bytes(),
        id,
        &store,
        row.try_get("code_sealed")?,
        row.try_get("code_digest")?,
    )?;
    let placed_at = UtcMillis(row.try_get("placed_at")?);
    let expires_at = UtcMillis(row.try_get("expires_at")?);
    let claims = PickupClaims {
        order: id.clone(),
        store: store.clone(),
        issued_at: placed_at,
        expires_at,
        key_id: to_u32(key_id, "key id")?,
    };
    Ok(PlacedOrder {
        order_id: id.clone(),
        store,
        placed_at,
        pickup_by: UtcMillis(row.try_get("pickup_by")?),
        expires_at,
        qr: token::sign(&claims, &seed)?,
        code,
    })
}

/// Stores a new order (see `HubStorage::create_order`) in `tx` (not committed); returns the
/// stores whose changefeed got something.
pub(super) async fn create_order<C: GenericClient>(
    tx: &C,
    order: &NewOrder,
    now: UtcMillis,
) -> Result<(OrderReceipt, Vec<String>), StorageError> {
    lock_changefeed(tx).await?;
    let fingerprint = order.fingerprint();
    let id = order.order_id.as_str();
    if let Some(row) = tx
        .query_opt(
            "SELECT store_id, request_sha256, placed_at, pickup_by, expires_at, key_id, code_digest, code_sealed
               FROM orders WHERE order_id = $1",
            &[&id],
        )
        .await?
    {
        if row.try_get::<_, &str>("request_sha256")? != fingerprint {
            return Err(StorageError::OrderMismatch(order.order_id.clone()));
        }
        let placed = rebuild(tx, &order.order_id, &row, now).await?;
        return Ok((
            OrderReceipt {
                created: false,
                order: placed,
            },
            Vec::new(),
        ));
    }
    check_pickup_window(order.pickup_by, now)?;
    require_store(tx, &order.store).await?;
    let store = order.store.as_str();
    let mut lines = Vec::with_capacity(order.lines.len());
    for (i, line) in order.lines.iter().enumerate() {
        let gtin = line.gtin.as_str();
        let Some(price) = tx
            .query_opt(
                "SELECT name FROM prices WHERE store_id = $1 AND gtin = $2",
                &[&store, &gtin],
            )
            .await?
        else {
            return Err(StorageError::UnknownProduct {
                line: i + 1,
                gtin: line.gtin,
                store: order.store.clone(),
            });
        };
        let stock = tx
            .query_one(
                "SELECT (SELECT COALESCE(SUM(delta), 0)::BIGINT FROM stock_deltas WHERE store_id = $1 AND gtin = $2),
                        (SELECT COALESCE(SUM(qty), 0)::BIGINT FROM stock_reservations WHERE store_id = $1 AND gtin = $2)",
                &[&store, &gtin],
            )
            .await?;
        let on_hand: i64 = stock.try_get(0)?;
        let reserved: i64 = stock.try_get(1)?;
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
            name: price.try_get("name")?,
        });
    }
    let mut woken = Vec::new();
    let key = ensure_key(tx, now, &mut woken).await?;
    if send_key(tx, &key, store, now).await? && !woken.iter().any(|s| s == store) {
        woken.push(store.to_owned());
    }
    let seal = secret(tx, SEAL_KEY_SECRET, now).await?;
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
    let body = encode_json(&ChangeBody::PickupOrder(change.clone()))?;
    let seq: i64 = tx
        .query_one(
            "INSERT INTO changes (store_id, kind, gtin, version, body, created_at)
             VALUES ($1, 'pickup_order', NULL, NULL, $2, $3) RETURNING seq",
            &[&store, &body, &now.0],
        )
        .await?
        .try_get(0)?;
    tx.execute(
        "INSERT INTO orders (order_id, store_id, status, request_sha256, placed_at, pickup_by, expires_at,
                             webhook_url, key_id, code_digest, code_sealed, change_seq, updated_at)
         VALUES ($1, $2, 'placed', $3, $4, $5, $6, $7, $8, $9, $10, $11, $4)",
        &[
            &id,
            &store,
            &fingerprint,
            &now.0,
            &order.pickup_by.0,
            &expires_at.0,
            &order.webhook,
            &i64::from(key.key_id),
            &digest,
            &sealed,
            &seq,
        ],
    )
    .await?;
    let line_nos: Vec<i64> = (1..=change.lines.len() as i64).collect();
    let gtins: Vec<&str> = change.lines.iter().map(|l| l.gtin.as_str()).collect();
    let qtys: Vec<i64> = change.lines.iter().map(|l| i64::from(l.qty)).collect();
    let names: Vec<&str> = change.lines.iter().map(|l| l.name.as_str()).collect();
    tx.execute(
        "INSERT INTO order_lines (order_id, line_no, gtin, qty, name)
         SELECT $1, t.n, t.gtin, t.qty, t.name
           FROM unnest($2::int8[], $3::text[], $4::int8[], $5::text[]) AS t(n, gtin, qty, name)",
        &[&id, &line_nos, &gtins, &qtys, &names],
    )
    .await?;
    tx.execute(
        "INSERT INTO stock_reservations (order_id, line_no, store_id, gtin, qty)
         SELECT $1, t.n, $2, t.gtin, t.qty
           FROM unnest($3::int8[], $4::text[], $5::int8[]) AS t(n, gtin, qty)",
        &[&id, &store, &line_nos, &gtins, &qtys],
    )
    .await?;
    tx.execute(
        "INSERT INTO order_history (order_id, status, at, source, event_id, detail)
         VALUES ($1, 'placed', $2, 'hq', NULL, NULL)",
        &[&id, &now.0],
    )
    .await?;
    if !woken.iter().any(|s| s == store) {
        woken.push(store.to_owned());
    }
    let stores: Vec<&str> = woken.iter().map(String::as_str).collect();
    notify_stores(tx, &stores).await?;
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

/// What the transitions need of an order, its row locked until the transaction ends.
async fn load_state<C: GenericClient>(
    c: &C,
    id: &OrderId,
) -> Result<Option<OrderState>, StorageError> {
    let Some(r) = c
        .query_opt(
            "SELECT store_id, status, expires_at, cancel_id, cancel_requested_at, collected, webhook_url
               FROM orders WHERE order_id = $1 FOR UPDATE",
            &[&id.as_str()],
        )
        .await?
    else {
        return Ok(None);
    };
    let rows = c
        .query(
            "SELECT line_no, gtin, qty, missing FROM order_lines WHERE order_id = $1 ORDER BY line_no",
            &[&id.as_str()],
        )
        .await?;
    let mut lines = Vec::with_capacity(rows.len());
    for l in &rows {
        lines.push(StateLine {
            line_no: l.try_get("line_no")?,
            gtin: parse_gtin(l.try_get("gtin")?)?,
            qty: to_u32(l.try_get("qty")?, "qty")?,
            missing: l.try_get("missing")?,
        });
    }
    Ok(Some(OrderState {
        order_id: id.clone(),
        store: parse_store_id(r.try_get("store_id")?)?,
        status: parse_status(r.try_get("status")?)?,
        expires_at: UtcMillis(r.try_get("expires_at")?),
        cancel_id: opt_event_id(r.try_get("cancel_id")?)?,
        cancel_requested_at: r
            .try_get::<_, Option<i64>>("cancel_requested_at")?
            .map(UtcMillis),
        collected: decode_collection(r.try_get("collected")?)?,
        webhook: r.try_get("webhook_url")?,
        lines,
    }))
}

/// Writes an effect (see [`crate::pickup::machine`]).
async fn apply_effect<C: GenericClient>(
    c: &C,
    state: &OrderState,
    e: &Effect,
    now: UtcMillis,
) -> Result<(), StorageError> {
    if e.is_none() {
        return Ok(());
    }
    let id = state.order_id.as_str();
    let status = e.status.unwrap_or(state.status);
    let collected = e.collected.as_ref().map(encode_json).transpose()?;
    c.execute(
        "UPDATE orders SET status = $2, location = COALESCE($3, location),
                collected = COALESCE($4, collected), updated_at = $5
          WHERE order_id = $1",
        &[&id, &status.as_str(), &e.location, &collected, &now.0],
    )
    .await?;
    if let Some(missing) = &e.missing {
        let line_nos: Vec<i64> = state.lines.iter().map(|l| l.line_no).collect();
        let flags: Vec<bool> = state
            .lines
            .iter()
            .map(|l| missing.contains(&l.gtin))
            .collect();
        c.execute(
            "UPDATE order_lines l SET missing = t.missing
               FROM unnest($2::int8[], $3::bool[]) AS t(n, missing)
              WHERE l.order_id = $1 AND l.line_no = t.n",
            &[&id, &line_nos, &flags],
        )
        .await?;
    }
    if let Some(h) = &e.history {
        c.execute(
            "INSERT INTO order_history (order_id, status, at, source, event_id, detail)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &id,
                &h.status.as_str(),
                &h.at.0,
                &h.source.as_str(),
                &h.event_id.map(|e| e.to_hex()),
                &h.detail,
            ],
        )
        .await?;
    }
    match &e.stock {
        StockEffect::Keep => {}
        StockEffect::Release => {
            c.execute("DELETE FROM stock_reservations WHERE order_id = $1", &[&id])
                .await?;
        }
        StockEffect::Sell { event_id, lines } => {
            c.execute("DELETE FROM stock_reservations WHERE order_id = $1", &[&id])
                .await?;
            let keys: Vec<String> = lines
                .iter()
                .map(|(n, _, _)| pickup_delta_key(event_id, *n))
                .collect();
            let gtins: Vec<&str> = lines.iter().map(|(_, g, _)| g.as_str()).collect();
            let deltas: Vec<i64> = lines.iter().map(|(_, _, q)| -i64::from(*q)).collect();
            c.execute(
                "INSERT INTO stock_deltas (delta_key, store_id, gtin, delta, created_at)
                 SELECT t.key, $1, t.gtin, t.delta, $2
                   FROM unnest($3::text[], $4::text[], $5::int8[]) AS t(key, gtin, delta)
                 ON CONFLICT DO NOTHING",
                &[&state.store.as_str(), &now.0, &keys, &gtins, &deltas],
            )
            .await?;
        }
    }
    if let Some(k) = &e.conflict {
        c.execute(
            "INSERT INTO order_conflicts (conflict_key, order_id, kind, at, event_id, detail)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (conflict_key) DO NOTHING",
            &[
                &k.key,
                &id,
                &k.kind.as_str(),
                &k.at.0,
                &k.event_id.map(|e| e.to_hex()),
                &k.detail,
            ],
        )
        .await?;
    }
    let (Some(w), Some(url)) = (&e.webhook, &state.webhook) else {
        return Ok(());
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
         VALUES ($1, $2, $3, $4, $5, $6, 0, $6)",
        &[
            &event_id.to_hex(),
            &id,
            &w.kind.as_str(),
            url,
            &body,
            &now.0,
        ],
    )
    .await?;
    Ok(())
}

/// Applies a store's pickup events in ledger order, each keyed by its event id (a replay does
/// nothing). An event for an order the hub does not know, or of another store, is kept but
/// changes nothing.
pub(super) async fn apply_store_events<C: GenericClient>(
    c: &C,
    store: &str,
    events: &[(&LedgerEvent, &OrderId)],
    now: UtcMillis,
) -> Result<(), StorageError> {
    if events.is_empty() {
        return Ok(());
    }
    c.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&PICKUP_LOCK, &store],
    )
    .await?;
    for (ev, order) in events {
        let event_id = ev.id.to_hex();
        let n = c
            .execute(
                "INSERT INTO pickup_events (event_id, order_id, store_id, kind, outcome)
                 VALUES ($1, $2, $3, $4, 'pending') ON CONFLICT (event_id) DO NOTHING",
                &[&event_id, &order.as_str(), &store, &ev.body.kind()],
            )
            .await?;
        if n == 0 {
            continue;
        }
        let outcome = match load_state(c, order).await? {
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
                    apply_effect(c, &s, &effect, now).await?;
                    "applied"
                }
            }
        };
        c.execute(
            "UPDATE pickup_events SET outcome = $2 WHERE event_id = $1",
            &[&event_id, &outcome],
        )
        .await?;
    }
    Ok(())
}

/// HQ cancels an order in `tx` (not committed); returns the store to wake.
pub(super) async fn cancel_order<C: GenericClient>(
    tx: &C,
    id: &OrderId,
    reason: Option<&str>,
    now: UtcMillis,
) -> Result<(CancelReceipt, Option<StoreId>), StorageError> {
    lock_changefeed(tx).await?;
    let Some(mut state) = load_state(tx, id).await? else {
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
         VALUES ($1, 'pickup_cancelled', NULL, NULL, $2, $3)",
        &[&state.store.as_str(), &body, &now.0],
    )
    .await?;
    tx.execute(
        "UPDATE orders SET cancel_id = $2, cancel_requested_at = $3, cancel_reason = $4 WHERE order_id = $1",
        &[&id.as_str(), &cancel_id.to_hex(), &now.0, &reason],
    )
    .await?;
    state.cancel_id = Some(cancel_id);
    state.cancel_requested_at = Some(now);
    apply_effect(tx, &state, &on_hq_cancel(now, reason), now).await?;
    notify_stores(tx, &[state.store.as_str()]).await?;
    Ok((
        CancelReceipt {
            cancelled_now: true,
            cancel_id: Some(cancel_id),
        },
        Some(state.store),
    ))
}

/// Open orders overdue for the sweep (read without locks).
pub(super) async fn overdue<C: GenericClient>(
    c: &C,
    cutoff: i64,
    limit: u32,
) -> Result<Vec<OrderId>, StorageError> {
    let rows = c
        .query(
            &format!(
                "SELECT order_id FROM orders WHERE status IN {OPEN_STATUSES} AND expires_at <= $1
                  ORDER BY expires_at LIMIT $2"
            ),
            &[&cutoff, &i64::from(limit)],
        )
        .await?;
    rows.iter().map(|r| parse_order_id(r.try_get(0)?)).collect()
}

/// Expires one overdue order in `tx` (not committed), if it still is open and overdue.
pub(super) async fn expire_one<C: GenericClient>(
    tx: &C,
    id: &OrderId,
    now: UtcMillis,
    grace_ms: i64,
) -> Result<bool, StorageError> {
    let cutoff = now.0.saturating_sub(grace_ms);
    let Some(state) = load_state(tx, id).await? else {
        return Ok(false);
    };
    if !state.status.is_open() || state.expires_at.0 > cutoff {
        return Ok(false);
    }
    apply_effect(tx, &state, &on_hub_expiry(&state, now, grace_ms), now).await?;
    Ok(true)
}

/// Everything about one order; `c` should be a read-only repeatable-read transaction.
pub(super) async fn read_order<C: GenericClient>(
    c: &C,
    id: &OrderId,
) -> Result<Option<OrderView>, StorageError> {
    let key = id.as_str();
    let Some(r) = c
        .query_opt(
            "SELECT store_id, status, placed_at, pickup_by, expires_at, webhook_url, location,
                    collected, cancel_id, cancel_requested_at, cancel_reason
               FROM orders WHERE order_id = $1",
            &[&key],
        )
        .await?
    else {
        return Ok(None);
    };
    let mut lines = Vec::new();
    for l in &c
        .query(
            "SELECT gtin, qty, name, missing FROM order_lines WHERE order_id = $1 ORDER BY line_no",
            &[&key],
        )
        .await?
    {
        lines.push(OrderLine {
            gtin: parse_gtin(l.try_get("gtin")?)?,
            qty: to_u32(l.try_get("qty")?, "qty")?,
            name: l.try_get("name")?,
            missing: l.try_get("missing")?,
        });
    }
    let mut history = Vec::new();
    for h in &c
        .query(
            "SELECT status, at, source, event_id, detail FROM order_history WHERE order_id = $1 ORDER BY id",
            &[&key],
        )
        .await?
    {
        history.push(HistoryEntry {
            status: parse_status(h.try_get("status")?)?,
            at: UtcMillis(h.try_get("at")?),
            source: Source::parse(h.try_get("source")?)?,
            event_id: opt_event_id(h.try_get("event_id")?)?,
            detail: h.try_get("detail")?,
        });
    }
    let mut conflicts = Vec::new();
    for k in &c
        .query(
            "SELECT kind, at, event_id, detail FROM order_conflicts WHERE order_id = $1 ORDER BY at, conflict_key",
            &[&key],
        )
        .await?
    {
        conflicts.push(Conflict {
            kind: ConflictKind::parse(k.try_get("kind")?)?,
            at: UtcMillis(k.try_get("at")?),
            event_id: opt_event_id(k.try_get("event_id")?)?,
            detail: k.try_get("detail")?,
        });
    }
    let mut notifications = Vec::new();
    for n in &c
        .query(
            "SELECT event_id, kind, created_at, attempts, delivered_at, last_error FROM webhook_outbox
              WHERE order_id = $1 ORDER BY seq",
            &[&key],
        )
        .await?
    {
        notifications.push(Notification {
            event_id: parse_event_id(n.try_get("event_id")?)?,
            kind: WebhookKind::parse(n.try_get("kind")?)?,
            created_at: UtcMillis(n.try_get("created_at")?),
            attempts: to_u32(n.try_get("attempts")?, "attempts")?,
            delivered_at: n.try_get::<_, Option<i64>>("delivered_at")?.map(UtcMillis),
            last_error: n.try_get("last_error")?,
        });
    }
    let cancel_id: Option<&str> = r.try_get("cancel_id")?;
    let cancel_at: Option<i64> = r.try_get("cancel_requested_at")?;
    let cancellation = match (cancel_id, cancel_at) {
        (Some(c), Some(at)) => Some(Cancellation {
            cancel_id: parse_event_id(c)?,
            requested_at: UtcMillis(at),
            reason: r.try_get("cancel_reason")?,
        }),
        _ => None,
    };
    Ok(Some(OrderView {
        order_id: id.clone(),
        store: parse_store_id(r.try_get("store_id")?)?,
        status: parse_status(r.try_get("status")?)?,
        placed_at: UtcMillis(r.try_get("placed_at")?),
        pickup_by: UtcMillis(r.try_get("pickup_by")?),
        expires_at: UtcMillis(r.try_get("expires_at")?),
        webhook: r.try_get("webhook_url")?,
        location: r.try_get("location")?,
        lines,
        collected: decode_collection(r.try_get("collected")?)?,
        cancellation,
        history,
        conflicts,
        notifications,
    }))
}

pub(super) async fn list_orders<C: GenericClient>(
    c: &C,
    filter: &OrderFilter,
) -> Result<Vec<OrderSummary>, StorageError> {
    let store = filter.store.as_ref().map(StoreId::as_str);
    let status = filter.status.map(OrderStatus::as_str);
    let rows = c
        .query(
            "SELECT o.order_id, o.store_id, o.status, o.placed_at, o.pickup_by,
                    (SELECT COUNT(*) FROM order_lines l WHERE l.order_id = o.order_id) AS lines
               FROM orders o
              WHERE ($1::text IS NULL OR o.store_id = $1) AND ($2::text IS NULL OR o.status = $2)
              ORDER BY o.placed_at DESC, o.order_id LIMIT $3",
            &[&store, &status, &filter.limit()],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(OrderSummary {
                order_id: parse_order_id(r.try_get("order_id")?)?,
                store: parse_store_id(r.try_get("store_id")?)?,
                status: parse_status(r.try_get("status")?)?,
                placed_at: UtcMillis(r.try_get("placed_at")?),
                pickup_by: UtcMillis(r.try_get("pickup_by")?),
                lines: to_u32(r.try_get("lines")?, "lines")?,
            })
        })
        .collect()
}

pub(super) async fn pickup_key<C: GenericClient>(c: &C) -> Result<Option<PickupKey>, StorageError> {
    Ok(current_key(c).await?.map(|k| PickupKey {
        key_id: k.key_id,
        public_key: k.public_key,
    }))
}

/// The current signing key, generated (and sent to every store) when there is none yet. Takes
/// `CHANGEFEED_LOCK` only to generate it, so two hubs cannot both generate one; the caller
/// commits `tx` and rings the stores named.
pub(super) async fn signing_key<C: GenericClient>(
    tx: &C,
    now: UtcMillis,
) -> Result<(PickupSigningKey, Vec<String>), StorageError> {
    let mut woken = Vec::new();
    let key = match current_key(tx).await? {
        Some(k) => k,
        None => {
            lock_changefeed(tx).await?;
            let key = ensure_key(tx, now, &mut woken).await?;
            let stores: Vec<&str> = woken.iter().map(String::as_str).collect();
            notify_stores(tx, &stores).await?;
            key
        }
    };
    Ok((PickupSigningKey::from_seed(key.key_id, &key.seed)?, woken))
}

pub(super) async fn claim_webhooks<C: GenericClient>(
    c: &C,
    now: UtcMillis,
    lease_until: UtcMillis,
    limit: u32,
) -> Result<Vec<WebhookDelivery>, StorageError> {
    // SKIP LOCKED: hub processes claiming at once take different rows.
    let rows = c
        .query(
            "UPDATE webhook_outbox w SET attempts = w.attempts + 1, next_attempt_at = $2
              WHERE w.event_id IN (SELECT event_id FROM webhook_outbox
                                    WHERE delivered_at IS NULL AND next_attempt_at <= $1
                                    ORDER BY next_attempt_at, seq LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING w.event_id, w.order_id, w.kind, w.url, w.body, w.attempts",
            &[&now.0, &lease_until.0, &i64::from(limit)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(WebhookDelivery {
                event_id: parse_event_id(r.try_get("event_id")?)?,
                order_id: parse_order_id(r.try_get("order_id")?)?,
                kind: WebhookKind::parse(r.try_get("kind")?)?,
                url: r.try_get("url")?,
                body: r.try_get("body")?,
                attempts: to_u32(r.try_get("attempts")?, "attempts")?,
            })
        })
        .collect()
}

pub(super) async fn webhook_delivered<C: GenericClient>(
    c: &C,
    id: &EventId,
    at: UtcMillis,
) -> Result<(), StorageError> {
    c.execute(
        "UPDATE webhook_outbox SET delivered_at = $2, last_error = NULL
          WHERE event_id = $1 AND delivered_at IS NULL",
        &[&id.to_hex(), &at.0],
    )
    .await?;
    Ok(())
}

pub(super) async fn webhook_failed<C: GenericClient>(
    c: &C,
    id: &EventId,
    retry_at: UtcMillis,
    error: &str,
) -> Result<(), StorageError> {
    c.execute(
        "UPDATE webhook_outbox SET next_attempt_at = $2, last_error = $3
          WHERE event_id = $1 AND delivered_at IS NULL",
        &[&id.to_hex(), &retry_at.0, &error],
    )
    .await?;
    Ok(())
}

pub(super) async fn webhooks_pending<C: GenericClient>(c: &C) -> Result<u64, StorageError> {
    let n: i64 = c
        .query_one(
            "SELECT COUNT(*) FROM webhook_outbox WHERE delivered_at IS NULL",
            &[],
        )
        .await?
        .try_get(0)?;
    to_u64(n, "pending webhooks")
}
