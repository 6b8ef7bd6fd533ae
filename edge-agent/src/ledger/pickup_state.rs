//! How each pickup event changes `pickup_orders`, `pickup_history`, `pickup_cancels` and (on a
//! collection) `stock`: part of the one state definition ([`super::state::apply`] calls it), so
//! the writer and `verify` agree row for row. The writer decides *whether* an event happens; an
//! event that does not fit the order's state here is an inconsistency, never silently applied.
use aisle_protocol::pickup::{PickupOrder, RedeemMethod};
use aisle_protocol::sync::EventBody;
use aisle_protocol::{Gtin, OrderId, UtcMillis};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::state::{StateError, StoredBody, add_stock};

/// Where an order is at the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Received,
    Picking,
    Ready,
    Collected,
    /// Collected while `ready` listed missing lines.
    PartiallyCollected,
    Cancelled,
    Expired,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 7] = [
        OrderStatus::Received,
        OrderStatus::Picking,
        OrderStatus::Ready,
        OrderStatus::Collected,
        OrderStatus::PartiallyCollected,
        OrderStatus::Cancelled,
        OrderStatus::Expired,
    ];
    /// `open` in the API: not yet collected, cancelled or expired.
    pub const OPEN: [OrderStatus; 3] = [
        OrderStatus::Received,
        OrderStatus::Picking,
        OrderStatus::Ready,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Received => "received",
            OrderStatus::Picking => "picking",
            OrderStatus::Ready => "ready",
            OrderStatus::Collected => "collected",
            OrderStatus::PartiallyCollected => "partially_collected",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_open(self) -> bool {
        OrderStatus::OPEN.contains(&self)
    }

    pub fn is_collected(self) -> bool {
        matches!(
            self,
            OrderStatus::Collected | OrderStatus::PartiallyCollected
        )
    }
}

/// One line of an order as the store keeps it (`pickup_orders.lines`, JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub gtin: Gtin,
    pub qty: u32,
    pub name: String,
    /// Could not be picked (named in the last `PickupReady`).
    pub missing: bool,
}

fn sql_status(s: &str) -> rusqlite::Result<OrderStatus> {
    OrderStatus::parse(s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("unknown pickup status '{s}'").into(),
        )
    })
}

pub(crate) fn lines_from_sql(text: &str) -> rusqlite::Result<Vec<OrderLine>> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn lines_to_sql(lines: &[OrderLine]) -> Result<String, StateError> {
    serde_json::to_string(lines).map_err(|e| StateError::Payload(e.to_string()))
}

pub(crate) fn method_str(m: RedeemMethod) -> &'static str {
    match m {
        RedeemMethod::Qr => "qr",
        RedeemMethod::Code => "code",
    }
}

pub(crate) fn method_sql(s: &str) -> rusqlite::Result<RedeemMethod> {
    match s {
        "qr" => Ok(RedeemMethod::Qr),
        "code" => Ok(RedeemMethod::Code),
        other => Err(rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("unknown redeem method '{other}'").into(),
        )),
    }
}

/// The order's status and lines, if the store holds it.
pub(crate) fn status_and_lines(
    conn: &Connection,
    order_id: &OrderId,
) -> Result<Option<(OrderStatus, Vec<OrderLine>)>, StateError> {
    let row: Option<(String, String)> = conn
        .prepare_cached("SELECT status, lines FROM pickup_orders WHERE order_id = ?1")?
        .query_row([order_id.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    row.map(|(s, l)| Ok((sql_status(&s)?, lines_from_sql(&l)?)))
        .transpose()
        .map_err(StateError::Sql)
}

fn history(
    conn: &Connection,
    order_id: &OrderId,
    seq: i64,
    at: UtcMillis,
    kind: &str,
    by: Option<&str>,
) -> Result<(), StateError> {
    conn.prepare_cached(
        "INSERT INTO pickup_history (order_id, seq, at, kind, by) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![order_id.as_str(), seq, at.0, kind, by])?;
    Ok(())
}

fn set_status(
    conn: &Connection,
    order_id: &OrderId,
    seq: i64,
    status: OrderStatus,
) -> Result<(), StateError> {
    conn.prepare_cached("UPDATE pickup_orders SET status = ?2, last_seq = ?3 WHERE order_id = ?1")?
        .execute(params![order_id.as_str(), status.as_str(), seq])?;
    Ok(())
}

/// Applies one pickup event.
pub(crate) fn apply(
    conn: &Connection,
    seq: i64,
    at: UtcMillis,
    ev: &StoredBody,
) -> Result<(), StateError> {
    let bad = |order: &OrderId, what: String| {
        StateError::Inconsistent(format!("pickup order {order}: {what}"))
    };
    let current = |order: &OrderId| -> Result<(OrderStatus, Vec<OrderLine>), StateError> {
        status_and_lines(conn, order)?.ok_or_else(|| bad(order, "not received".into()))
    };
    match &ev.body {
        EventBody::PickupReceived { order_id } => {
            let Some(o) = &ev.order else {
                return Err(StateError::Payload(
                    "received order without its details".into(),
                ));
            };
            insert_order(conn, seq, o)?;
            if &o.order_id != order_id {
                return Err(bad(order_id, "details name another order".into()));
            }
            history(conn, order_id, seq, at, "received", None)?;
        }
        EventBody::PickupPicking { order_id, staff } => {
            let (status, _) = current(order_id)?;
            if !matches!(status, OrderStatus::Received | OrderStatus::Picking) {
                return Err(bad(order_id, format!("picking while {}", status.as_str())));
            }
            conn.prepare_cached(
                "UPDATE pickup_orders SET status = 'picking', picking_by = ?2, last_seq = ?3
                 WHERE order_id = ?1",
            )?
            .execute(params![order_id.as_str(), staff, seq])?;
            history(conn, order_id, seq, at, "picking", Some(staff))?;
        }
        EventBody::PickupReady {
            order_id,
            location,
            missing,
        } => {
            let (status, mut lines) = current(order_id)?;
            if !status.is_open() {
                return Err(bad(order_id, format!("ready while {}", status.as_str())));
            }
            if let Some(g) = missing
                .iter()
                .find(|g| !lines.iter().any(|l| &l.gtin == *g))
            {
                return Err(bad(order_id, format!("missing {g} is not in the order")));
            }
            for l in &mut lines {
                l.missing = missing.contains(&l.gtin);
            }
            conn.prepare_cached(
                "UPDATE pickup_orders SET status = 'ready', location = ?2, ready_by = ?3,
                                          lines = ?4, last_seq = ?5
                 WHERE order_id = ?1",
            )?
            .execute(params![
                order_id.as_str(),
                location,
                ev.ready_by,
                lines_to_sql(&lines)?,
                seq
            ])?;
            history(conn, order_id, seq, at, "ready", ev.ready_by.as_deref())?;
        }
        EventBody::PickupCollected {
            order_id,
            device,
            staff,
            method,
            partial,
        } => {
            let (status, lines) = current(order_id)?;
            if status != OrderStatus::Ready {
                return Err(bad(
                    order_id,
                    format!("collected while {}", status.as_str()),
                ));
            }
            if *partial != lines.iter().any(|l| l.missing) {
                return Err(bad(
                    order_id,
                    "partial does not match the missing lines".into(),
                ));
            }
            let status = if *partial {
                OrderStatus::PartiallyCollected
            } else {
                OrderStatus::Collected
            };
            conn.prepare_cached(
                "UPDATE pickup_orders SET status = ?2, collected_at = ?3, collected_device = ?4,
                        collected_staff = ?5, collected_method = ?6, partial = ?7, last_seq = ?8
                 WHERE order_id = ?1",
            )?
            .execute(params![
                order_id.as_str(),
                status.as_str(),
                at.0,
                device,
                staff,
                method_str(*method),
                *partial,
                seq
            ])?;
            // The store's own stock: what was handed over (HQ decrements its own from the event).
            for l in lines.iter().filter(|l| !l.missing) {
                add_stock(conn, &l.gtin, -i64::from(l.qty))?;
            }
            history(
                conn,
                order_id,
                seq,
                at,
                "collected",
                Some(staff.as_deref().unwrap_or(device)),
            )?;
        }
        EventBody::PickupCancelApplied {
            order_id,
            cancel_id,
        } => {
            let (status, _) = current(order_id)?;
            if !status.is_open() {
                return Err(bad(
                    order_id,
                    format!("cancelled while {}", status.as_str()),
                ));
            }
            set_status(conn, order_id, seq, OrderStatus::Cancelled)?;
            insert_cancel(conn, cancel_id, order_id, seq, "applied")?;
            history(conn, order_id, seq, at, "cancelled", Some("hq"))?;
        }
        EventBody::PickupCancelConflict {
            order_id,
            cancel_id,
            collected_at,
            ..
        } => {
            let (status, _) = current(order_id)?;
            if !status.is_collected() {
                return Err(bad(
                    order_id,
                    format!("cancel conflict while {}", status.as_str()),
                ));
            }
            let at_row: Option<i64> = conn
                .prepare_cached("SELECT collected_at FROM pickup_orders WHERE order_id = ?1")?
                .query_row([order_id.as_str()], |r| r.get(0))?;
            if at_row != Some(collected_at.0) {
                return Err(bad(
                    order_id,
                    "cancel conflict names another collection time".into(),
                ));
            }
            conn.prepare_cached("UPDATE pickup_orders SET last_seq = ?2 WHERE order_id = ?1")?
                .execute(params![order_id.as_str(), seq])?;
            insert_cancel(conn, cancel_id, order_id, seq, "conflict")?;
            history(conn, order_id, seq, at, "cancel_conflict", Some("hq"))?;
        }
        EventBody::PickupExpired { order_id } => {
            let (status, _) = current(order_id)?;
            if !status.is_open() {
                return Err(bad(order_id, format!("expired while {}", status.as_str())));
            }
            set_status(conn, order_id, seq, OrderStatus::Expired)?;
            history(conn, order_id, seq, at, "expired", None)?;
        }
        other => {
            return Err(StateError::Inconsistent(format!(
                "{} is not a pickup event",
                other.kind()
            )));
        }
    }
    Ok(())
}

fn insert_order(conn: &Connection, seq: i64, o: &PickupOrder) -> Result<(), StateError> {
    o.validate()
        .map_err(|e| StateError::Inconsistent(format!("pickup order {}: {e}", o.order_id)))?;
    let lines: Vec<OrderLine> = o
        .lines
        .iter()
        .map(|l| OrderLine {
            gtin: l.gtin,
            qty: l.qty,
            name: l.name.clone(),
            missing: false,
        })
        .collect();
    let n = conn
        .prepare_cached(
            "INSERT INTO pickup_orders (order_id, status, placed_at, pickup_by, expires_at,
                                        code_digest, key_id, lines, received_seq, last_seq)
             VALUES (?1, 'received', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            o.order_id.as_str(),
            o.placed_at.0,
            o.pickup_by.0,
            o.expires_at.0,
            o.code_digest,
            i64::from(o.key_id),
            lines_to_sql(&lines)?,
            seq
        ])?;
    if n != 1 {
        return Err(StateError::Inconsistent(format!(
            "pickup order {} received twice",
            o.order_id
        )));
    }
    Ok(())
}

fn insert_cancel(
    conn: &Connection,
    cancel_id: &aisle_protocol::EventId,
    order_id: &OrderId,
    seq: i64,
    outcome: &str,
) -> Result<(), StateError> {
    let n = conn
        .prepare_cached(
            "INSERT INTO pickup_cancels (cancel_id, order_id, seq, outcome)
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
        )?
        .execute(params![cancel_id.to_hex(), order_id.as_str(), seq, outcome])?;
    if n != 1 {
        return Err(StateError::Inconsistent(format!(
            "pickup cancellation {cancel_id} applied twice"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aisle_protocol::pickup::PickupOrderLine;

    fn order() -> PickupOrder {
        PickupOrder {
            order_id: OrderId::parse("web-1").unwrap(),
            lines: vec![PickupOrderLine {
                gtin: Gtin::parse("9501101531000").unwrap(),
                qty: 2,
                name: "乌龙茶".into(),
            }],
            placed_at: UtcMillis(1),
            pickup_by: UtcMillis(2),
            expires_at: UtcMillis(3),
            code_digest: "ab".repeat(32),
            key_id: 1,
        }
    }

    #[test]
    fn received_and_ready_payloads_round_trip_and_upload_as_the_protocol_event() {
        let body = EventBody::PickupReceived {
            order_id: OrderId::parse("web-1").unwrap(),
        };
        let stored = StoredBody {
            body: body.clone(),
            staged: None,
            order: Some(order()),
            ready_by: None,
            label: None,
        };
        let bytes = stored.encode().unwrap();
        assert_eq!(
            StoredBody::decode("pickup_received", &bytes).unwrap(),
            stored
        );
        assert_eq!(serde_json::from_slice::<EventBody>(&bytes).unwrap(), body);
        // The details are required, and must name the same order.
        assert!(StoredBody::plain(body.clone()).encode().is_err());
        let plain = serde_json::to_vec(&body).unwrap();
        assert!(StoredBody::decode("pickup_received", &plain).is_err());
        let mut other = order();
        other.order_id = OrderId::parse("web-2").unwrap();
        let wrong = StoredBody {
            order: Some(other),
            ..stored
        };
        assert!(wrong.encode().is_err());

        let ready = EventBody::PickupReady {
            order_id: OrderId::parse("web-1").unwrap(),
            location: "B3".into(),
            missing: vec![],
        };
        let stored = StoredBody {
            ready_by: Some("Ana".into()),
            ..StoredBody::plain(ready.clone())
        };
        let bytes = stored.encode().unwrap();
        assert_eq!(StoredBody::decode("pickup_ready", &bytes).unwrap(), stored);
        assert_eq!(serde_json::from_slice::<EventBody>(&bytes).unwrap(), ready);
        // Only a ready event carries ready_by.
        let odd = StoredBody {
            ready_by: Some("Ana".into()),
            ..StoredBody::plain(EventBody::PickupExpired {
                order_id: OrderId::parse("web-1").unwrap(),
            })
        };
        assert!(odd.encode().is_err());
    }

    #[test]
    fn statuses_parse_back_and_open_is_the_three_before_final() {
        for s in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::Value::String(s.as_str().into())
            );
        }
        assert!(OrderStatus::Ready.is_open());
        assert!(!OrderStatus::Collected.is_open());
        assert!(OrderStatus::PartiallyCollected.is_collected());
        assert_eq!(OrderStatus::parse("lost"), None);
    }
}
