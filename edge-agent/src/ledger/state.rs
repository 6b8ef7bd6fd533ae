//! How an event changes the materialised state: the ONE definition, used by the writer as it
//! appends and by `verify` as it replays. The writer decides *whether* an event happens (prices,
//! versions, idempotency); once it does, only [`apply`] touches the state tables.
use std::collections::BTreeSet;

use aisle_protocol::pickup::PickupOrder;
use aisle_protocol::sync::{EventBody, FootfallInterval, SaleRecord};
use aisle_protocol::{Currency, Gtin, Money, UtcMillis};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// The price and name of a staged price. The protocol's `PriceStaged` event carries only what the
/// hub needs for batch progress; the ledger also needs what the shelf and the till need, so these
/// two fields ride along in the stored payload (covered by the hash) and are dropped on upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedPrice {
    pub price: Money,
    pub name: String,
}

/// One event body as the ledger stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBody {
    pub body: EventBody,
    /// Present exactly when `body` is `PriceStaged`.
    pub staged: Option<StagedPrice>,
    /// Present exactly when `body` is `PickupReceived`: the order as the hub sent it. The
    /// protocol event names only the order (HQ has it); the store's replay needs its lines, times
    /// and code digest, so it rides along in the stored payload (`"order"`, hashed) like a staged
    /// price's details, and is dropped on upload.
    pub order: Option<PickupOrder>,
    /// `PickupReady` only: the signed-in staff who marked it (stored as `"ready_by"`; the
    /// protocol event does not carry it).
    pub ready_by: Option<String>,
    /// Shelf-label events only: what the store needs beyond the protocol event (the panel of a
    /// bound label, who bound it, what a confirmed label shows), stored as top-level `"panel"`,
    /// `"by"` and `"shown"` keys (hashed) and dropped on upload.
    pub label: Option<super::labels::LabelExtra>,
}

/// Why an event could not be encoded, decoded or applied.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("payload is not a valid event: {0}")]
    Payload(String),
    #[error("kind column says '{stored}' but the payload is '{payload}'")]
    Kind { stored: String, payload: String },
    #[error("{0}")]
    Inconsistent(String),
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
}

impl StoredBody {
    /// The exact bytes stored and hashed.
    pub fn encode(&self) -> Result<Vec<u8>, StateError> {
        if self.staged.is_none()
            && self.order.is_none()
            && self.ready_by.is_none()
            && self.label.is_none()
            && !matches!(
                self.body,
                EventBody::PriceStaged { .. }
                    | EventBody::PickupReceived { .. }
                    | EventBody::LabelBound { .. }
                    | EventBody::LabelConfirmed { .. }
            )
        {
            // Every event but a staged price is stored exactly as the protocol writes it; going
            // straight to bytes keeps the sale path free of an intermediate JSON tree.
            return serde_json::to_vec(&self.body).map_err(|e| StateError::Payload(e.to_string()));
        }
        let mut v =
            serde_json::to_value(&self.body).map_err(|e| StateError::Payload(e.to_string()))?;
        match (&self.body, &self.staged, v.as_object_mut()) {
            (EventBody::PriceStaged { .. }, Some(s), Some(obj)) => {
                let price = serde_json::to_value(s.price)
                    .map_err(|e| StateError::Payload(e.to_string()))?;
                obj.insert("price".into(), price);
                obj.insert("name".into(), serde_json::Value::String(s.name.clone()));
            }
            (EventBody::PriceStaged { .. }, None, _) => {
                return Err(StateError::Payload(
                    "a staged price needs its price and name".into(),
                ));
            }
            (_, None, Some(_)) => {}
            _ => {
                return Err(StateError::Payload(
                    "only a staged price carries details".into(),
                ));
            }
        }
        match (&self.body, &self.order, v.as_object_mut()) {
            (EventBody::PickupReceived { order_id }, Some(o), Some(obj)) => {
                if &o.order_id != order_id {
                    return Err(StateError::Payload(
                        "a received order's details name another order".into(),
                    ));
                }
                let order =
                    serde_json::to_value(o).map_err(|e| StateError::Payload(e.to_string()))?;
                obj.insert("order".into(), order);
            }
            (EventBody::PickupReceived { .. }, None, _) => {
                return Err(StateError::Payload(
                    "a received order needs the order's details".into(),
                ));
            }
            (_, None, Some(_)) => {}
            _ => {
                return Err(StateError::Payload(
                    "only a received order carries the order".into(),
                ));
            }
        }
        match (&self.body, &self.ready_by, v.as_object_mut()) {
            (EventBody::PickupReady { .. }, Some(by), Some(obj)) => {
                obj.insert("ready_by".into(), serde_json::Value::String(by.clone()));
            }
            (_, None, Some(_)) => {}
            _ => {
                return Err(StateError::Payload(
                    "only a ready order carries ready_by".into(),
                ));
            }
        }
        if let Some(obj) = v.as_object_mut() {
            super::labels::encode_extra(&self.body, self.label.as_ref(), obj)?;
        }
        serde_json::to_vec(&v).map_err(|e| StateError::Payload(e.to_string()))
    }

    /// A body stored exactly as the protocol writes it.
    pub fn plain(body: EventBody) -> StoredBody {
        StoredBody {
            body,
            staged: None,
            order: None,
            ready_by: None,
            label: None,
        }
    }

    pub fn decode(kind: &str, payload: &[u8]) -> Result<StoredBody, StateError> {
        let body: EventBody =
            serde_json::from_slice(payload).map_err(|e| StateError::Payload(e.to_string()))?;
        if body.kind() != kind {
            return Err(StateError::Kind {
                stored: kind.to_string(),
                payload: body.kind().to_string(),
            });
        }
        let staged = match body {
            EventBody::PriceStaged { .. } => Some(
                serde_json::from_slice::<StagedPrice>(payload)
                    .map_err(|e| StateError::Payload(format!("staged price details: {e}")))?,
            ),
            _ => None,
        };
        let order = match body {
            EventBody::PickupReceived { .. } => {
                #[derive(Deserialize)]
                struct WithOrder {
                    order: PickupOrder,
                }
                let w: WithOrder = serde_json::from_slice(payload)
                    .map_err(|e| StateError::Payload(format!("received order details: {e}")))?;
                Some(w.order)
            }
            _ => None,
        };
        let ready_by = match body {
            EventBody::PickupReady { .. } => {
                #[derive(Deserialize)]
                struct WithBy {
                    #[serde(default)]
                    ready_by: Option<String>,
                }
                serde_json::from_slice::<WithBy>(payload)
                    .map_err(|e| StateError::Payload(format!("ready_by: {e}")))?
                    .ready_by
            }
            _ => None,
        };
        let label = super::labels::decode_extra(&body, payload)?;
        Ok(StoredBody {
            body,
            staged,
            order,
            ready_by,
            label,
        })
    }
}

/// Applies one event to the materialised tables.
pub fn apply(
    conn: &Connection,
    seq: u64,
    at: UtcMillis,
    ev: &StoredBody,
) -> Result<(), StateError> {
    let seq_i =
        i64::try_from(seq).map_err(|_| StateError::Inconsistent("seq out of range".into()))?;
    match &ev.body {
        EventBody::LabelBound { .. }
        | EventBody::LabelUnbound { .. }
        | EventBody::LabelConfirmed { .. }
        | EventBody::LabelNotUpdated { .. } => super::labels::apply(conn, seq_i, at, ev)?,
        EventBody::PriceStaged {
            gtin,
            version,
            batch_id,
            effective_at,
        } => {
            let Some(s) = &ev.staged else {
                return Err(StateError::Payload("staged price without details".into()));
            };
            let n = conn.execute(
                "INSERT INTO prices (gtin, version, price_minor, currency, name, batch_id,
                                     effective_at, state, active_since, staged_seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', NULL, ?8)
                 ON CONFLICT DO NOTHING",
                params![
                    gtin.as_str(),
                    version_sql(*version)?,
                    s.price.minor,
                    s.price.currency.code(),
                    s.name,
                    batch_id.as_str(),
                    effective_at.0,
                    seq_i
                ],
            )?;
            if n != 1 {
                return Err(StateError::Inconsistent(format!(
                    "price {gtin} version {version} staged twice"
                )));
            }
        }
        EventBody::PriceActivated {
            gtin,
            version,
            batch_id,
            price,
        } => {
            let row: Option<(i64, String, String, String)> = conn
                .query_row(
                    "SELECT price_minor, currency, batch_id, state FROM prices
                     WHERE gtin = ?1 AND version = ?2",
                    params![gtin.as_str(), version_sql(*version)?],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some((minor, currency, staged_batch, state)) = row else {
                return Err(StateError::Inconsistent(format!(
                    "price {gtin} version {version} activated but never staged"
                )));
            };
            if state != "pending"
                || minor != price.minor
                || currency != price.currency.code()
                || staged_batch != batch_id.as_str()
            {
                return Err(StateError::Inconsistent(format!(
                    "price {gtin} version {version} activated with details that differ from its staging"
                )));
            }
            conn.execute(
                "UPDATE prices SET state = 'active', active_since = ?3 WHERE gtin = ?1 AND version = ?2",
                params![gtin.as_str(), version_sql(*version)?, at.0],
            )?;
            // Highest version wins: everything older is superseded, pending or not.
            conn.execute(
                "DELETE FROM prices WHERE gtin = ?1 AND version < ?2",
                params![gtin.as_str(), version_sql(*version)?],
            )?;
        }
        EventBody::SaleCommitted(rec) => {
            let n = conn.execute(
                "INSERT INTO sales (sale_id, seq, at, total_minor, currency)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                params![
                    rec.sale_id.as_str(),
                    seq_i,
                    at.0,
                    rec.total.minor,
                    rec.total.currency.code()
                ],
            )?;
            if n != 1 {
                return Err(StateError::Inconsistent(format!(
                    "sale {} committed twice",
                    rec.sale_id
                )));
            }
            for line in &rec.lines {
                add_stock(conn, &line.gtin, line.stock_delta())?;
            }
            if rec.payment.offline {
                conn.execute(
                    "INSERT INTO offline_payments (sale_id, seq, amount_minor, currency)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![
                        rec.sale_id.as_str(),
                        seq_i,
                        rec.total.minor,
                        rec.total.currency.code()
                    ],
                )?;
            }
        }
        EventBody::StockAdjusted {
            adjustment_id,
            gtin,
            delta,
        } => {
            let n = conn.execute(
                "INSERT INTO stock_adjustments (adjustment_id, seq, gtin, delta)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                params![adjustment_id.to_hex(), seq_i, gtin.as_str(), delta],
            )?;
            if n != 1 {
                return Err(StateError::Inconsistent(format!(
                    "stock adjustment {adjustment_id} applied twice"
                )));
            }
            add_stock(conn, gtin, *delta)?;
        }
        EventBody::FootfallCounted(iv) => add_footfall(conn, seq_i, iv)?,
        EventBody::PickupReceived { .. }
        | EventBody::PickupPicking { .. }
        | EventBody::PickupReady { .. }
        | EventBody::PickupCollected { .. }
        | EventBody::PickupCancelApplied { .. }
        | EventBody::PickupCancelConflict { .. }
        | EventBody::PickupExpired { .. } => super::pickup_state::apply(conn, seq_i, at, ev)?,
    }
    Ok(())
}

/// Adds one interval to its (zone, start) row: counts summed, the latest occupancy kept, missing
/// cameras merged.
fn add_footfall(conn: &Connection, seq: i64, iv: &FootfallInterval) -> Result<(), StateError> {
    iv.validate()
        .map_err(|e| StateError::Inconsistent(format!("footfall interval: {e}")))?;
    let count = |n: u64| {
        i64::try_from(n).map_err(|_| StateError::Inconsistent("count out of range".into()))
    };
    let missing = if iv.cameras_missing.is_empty() {
        None
    } else {
        let before: Option<String> = conn
            .prepare_cached(
                "SELECT cameras_missing FROM footfall WHERE zone = ?1 AND start_ms = ?2",
            )?
            .query_row(params![iv.zone, iv.start.0], |r| r.get(0))
            .optional()?;
        let mut all: BTreeSet<String> = match before {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| StateError::Inconsistent(format!("footfall.cameras_missing: {e}")))?,
            None => BTreeSet::new(),
        };
        all.extend(iv.cameras_missing.iter().cloned());
        Some(serde_json::to_string(&all).map_err(|e| StateError::Payload(e.to_string()))?)
    };
    conn.prepare_cached(
        "INSERT INTO footfall (zone, start_ms, end_ms, entered, exited, occupancy,
                               cameras_missing, events, last_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, COALESCE(?7, '[]'), 1, ?8)
         ON CONFLICT (zone, start_ms) DO UPDATE SET
             entered = entered + excluded.entered,
             exited = exited + excluded.exited,
             occupancy = COALESCE(excluded.occupancy, occupancy),
             cameras_missing = COALESCE(?7, cameras_missing),
             events = events + 1,
             last_seq = excluded.last_seq",
    )?
    .execute(params![
        iv.zone,
        iv.start.0,
        iv.end.0,
        count(iv.entered)?,
        count(iv.exited)?,
        iv.occupancy.map(count).transpose()?,
        missing,
        seq
    ])?;
    Ok(())
}

pub(crate) fn add_stock(conn: &Connection, gtin: &Gtin, delta: i64) -> Result<(), StateError> {
    conn.execute(
        "INSERT INTO stock (gtin, on_hand) VALUES (?1, ?2)
         ON CONFLICT (gtin) DO UPDATE SET on_hand = on_hand + excluded.on_hand",
        params![gtin.as_str(), delta],
    )?;
    Ok(())
}

pub(crate) fn version_sql(v: u64) -> Result<i64, StateError> {
    i64::try_from(v).map_err(|_| StateError::Inconsistent(format!("version {v} out of range")))
}

/// Reads a currency stored by [`apply`].
pub(crate) fn currency_sql(code: &str) -> rusqlite::Result<Currency> {
    Currency::parse(code).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Reads a GTIN stored by [`apply`].
pub(crate) fn gtin_sql(s: &str) -> rusqlite::Result<Gtin> {
    Gtin::parse(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// The sale record of a stored `SaleCommitted` event.
pub(crate) fn sale_of(ev: StoredBody) -> Option<SaleRecord> {
    match ev.body {
        EventBody::SaleCommitted(rec) => Some(rec),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aisle_protocol::BatchId;

    #[test]
    fn staged_payload_round_trips_and_uploads_as_the_protocol_event() {
        let cny = Currency::parse("CNY").unwrap();
        let body = EventBody::PriceStaged {
            gtin: Gtin::parse("9501101531000").unwrap(),
            version: 3,
            batch_id: BatchId::parse("b-1").unwrap(),
            effective_at: UtcMillis(5),
        };
        let stored = StoredBody {
            body: body.clone(),
            staged: Some(StagedPrice {
                price: Money::new(1280, cny),
                name: "乌龙茶 500ml".into(),
            }),
            order: None,
            ready_by: None,
            label: None,
        };
        let bytes = stored.encode().unwrap();
        let back = StoredBody::decode("price_staged", &bytes).unwrap();
        assert_eq!(back, stored);
        // What the hub receives is the plain protocol event.
        assert_eq!(serde_json::from_slice::<EventBody>(&bytes).unwrap(), body);
        assert!(StoredBody::decode("sale_committed", &bytes).is_err());
        let missing = StoredBody::plain(body);
        assert!(missing.encode().is_err());
    }
}
