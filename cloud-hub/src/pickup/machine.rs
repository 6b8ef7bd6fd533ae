//! The one definition of how an order moves at the hub. Both storage backends load an
//! [`OrderState`] (row locked), ask this module for the [`Effect`] of an input, and apply it in
//! the same transaction as the input itself (the store's event, HQ's cancellation, the sweep).
//!
//! The store's ledger order decides races. Its events arrive in ledger order, so:
//! - `PickupCollected` means the store had not applied any cancellation when it collected (it
//!   would have refused the redemption): the collection stands, whatever the hub's status.
//!   If HQ had cancelled, or the hub had expired the order, that is a conflict for HQ.
//! - `PickupCancelConflict` says the same from the store's side, when HQ's cancellation
//!   arrived after the collection: one conflict per cancellation, whichever event comes first.
//! - `PickupCancelApplied` / `PickupExpired` confirm what HQ already shows, or close an
//!   open order.
//! - Events that come after the hub moved the order on (e.g. `PickupPicking` for an order HQ
//!   cancelled, which the store has not heard about yet) change nothing: the store's answer to
//!   the cancellation follows.
use aisle_protocol::pickup::RedeemMethod;
use aisle_protocol::sync::EventBody;
use aisle_protocol::{EventId, Gtin, OrderId, StoreId, UtcMillis};
use serde_json::{Map, Value, json};

use super::{Collection, ConflictKind, OrderStatus, Source, WebhookKind};
use crate::timefmt::format_rfc3339;

/// One line of an order as the transitions need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateLine {
    pub line_no: i64,
    pub gtin: Gtin,
    pub qty: u32,
    pub missing: bool,
}

/// What the hub holds of an order, read under the order's row lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderState {
    pub order_id: OrderId,
    pub store: StoreId,
    pub status: OrderStatus,
    pub expires_at: UtcMillis,
    pub cancel_id: Option<EventId>,
    pub cancel_requested_at: Option<UtcMillis>,
    pub collected: Option<Collection>,
    /// Where HQ wants to be told.
    pub webhook: Option<String>,
    pub lines: Vec<StateLine>,
}

/// What happens to the order's stock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StockEffect {
    Keep,
    /// Delete the reservation.
    Release,
    /// Delete the reservation (if still held) and record these lines as sold: stock deltas of
    /// `-qty` keyed by `pickup:<event_id>:<line_no>`.
    Sell {
        event_id: EventId,
        lines: Vec<(i64, Gtin, u32)>,
    },
}

/// A history entry to append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryDraft {
    pub status: OrderStatus,
    pub at: UtcMillis,
    pub source: Source,
    pub event_id: Option<EventId>,
    pub detail: Option<String>,
}

/// A conflict to record, once per `key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflictDraft {
    pub key: String,
    pub kind: ConflictKind,
    pub at: UtcMillis,
    pub event_id: Option<EventId>,
    pub detail: String,
}

/// A webhook to put in the outbox (if the order has a webhook URL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookDraft {
    pub kind: WebhookKind,
    pub at: UtcMillis,
    /// Type-specific fields added to the body.
    pub extra: Map<String, Value>,
}

/// Everything one input does to an order. [`Effect::none`] changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effect {
    /// The new status, if it changes.
    pub status: Option<OrderStatus>,
    pub history: Option<HistoryDraft>,
    /// New pickup-area location.
    pub location: Option<String>,
    /// GTINs of the lines the store could not pick (replaces the previous set).
    pub missing: Option<Vec<Gtin>>,
    pub collected: Option<Collection>,
    pub stock: StockEffect,
    pub conflict: Option<ConflictDraft>,
    pub webhook: Option<WebhookDraft>,
}

impl Effect {
    pub fn none() -> Self {
        Effect {
            status: None,
            history: None,
            location: None,
            missing: None,
            collected: None,
            stock: StockEffect::Keep,
            conflict: None,
            webhook: None,
        }
    }

    /// True when applying it would change nothing.
    pub fn is_none(&self) -> bool {
        *self == Effect::none()
    }

    /// A status change with its history entry.
    fn to(status: OrderStatus, at: UtcMillis, source: Source, event_id: Option<EventId>) -> Self {
        Effect {
            status: Some(status),
            history: Some(HistoryDraft {
                status,
                at,
                source,
                event_id,
                detail: None,
            }),
            ..Effect::none()
        }
    }

    fn detail(mut self, detail: String) -> Self {
        if let Some(h) = &mut self.history {
            h.detail = Some(detail);
        }
        self
    }

    fn webhook(mut self, kind: WebhookKind, at: UtcMillis, extra: Value) -> Self {
        self.webhook = Some(WebhookDraft {
            kind,
            at,
            extra: match extra {
                Value::Object(m) => m,
                _ => Map::new(),
            },
        });
        self
    }

    /// A history entry that confirms the status HQ already shows (no change, no webhook).
    fn confirm(
        status: OrderStatus,
        at: UtcMillis,
        event_id: EventId,
        detail: Option<String>,
    ) -> Self {
        Effect {
            history: Some(HistoryDraft {
                status,
                at,
                source: Source::Store,
                event_id: Some(event_id),
                detail,
            }),
            ..Effect::none()
        }
    }
}

/// Why HQ may not cancel an order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelPlan {
    /// Cancel it now.
    Cancel,
    /// It was cancelled before: answer as then.
    AlreadyCancelled,
    /// It cannot be cancelled any more; the message says why.
    Refused(String),
}

/// Whether HQ may cancel an order in `state`.
pub fn cancel_plan(state: &OrderState) -> CancelPlan {
    match state.status {
        s if s.is_open() => CancelPlan::Cancel,
        OrderStatus::Cancelled => CancelPlan::AlreadyCancelled,
        OrderStatus::Collected | OrderStatus::PartiallyCollected => {
            let when = state
                .collected
                .as_ref()
                .map(|c| format!(" at {}", format_rfc3339(c.at)))
                .unwrap_or_default();
            CancelPlan::Refused(format!(
                "order {} was collected{when}; it cannot be cancelled",
                state.order_id
            ))
        }
        _ => CancelPlan::Refused(format!(
            "order {} expired at {}; there is nothing to cancel",
            state.order_id,
            format_rfc3339(state.expires_at)
        )),
    }
}

/// HQ cancels an open order: cancelled at once at HQ, stock released, `cancelled` webhook.
/// (The store's answer, applied or in conflict, follows through its events.)
pub fn on_hq_cancel(at: UtcMillis, reason: Option<&str>) -> Effect {
    let mut e = Effect::to(OrderStatus::Cancelled, at, Source::Hq, None);
    if let Some(r) = reason {
        e = e.detail(r.to_owned());
    }
    e.stock = StockEffect::Release;
    e.webhook(WebhookKind::Cancelled, at, json!({ "source": "hq" }))
}

/// The hub expires an open order the store has said nothing about `grace_ms` after it expired.
pub fn on_hub_expiry(state: &OrderState, at: UtcMillis, grace_ms: i64) -> Effect {
    if !state.status.is_open() {
        return Effect::none();
    }
    let hours = grace_ms / 3_600_000;
    let mut e = Effect::to(OrderStatus::Expired, at, Source::Hq, None).detail(format!(
        "expired by the hub: no word from the store {hours} h after the order expired at {}",
        format_rfc3339(state.expires_at)
    ));
    e.stock = StockEffect::Release;
    e.webhook(WebhookKind::Expired, at, json!({ "source": "hq" }))
}

/// The effect of one store event on the order it names. `body` must be a pickup event.
pub fn on_store_event(
    state: &OrderState,
    event_id: EventId,
    at: UtcMillis,
    body: &EventBody,
) -> Effect {
    let status = state.status;
    let ev = Some(event_id);
    match body {
        EventBody::PickupReceived { .. } => {
            if status == OrderStatus::Placed {
                Effect::to(OrderStatus::SentToStore, at, Source::Store, ev)
            } else {
                Effect::none()
            }
        }
        EventBody::PickupPicking { staff, .. } => {
            if matches!(status, OrderStatus::Placed | OrderStatus::SentToStore) {
                Effect::to(OrderStatus::Picking, at, Source::Store, ev)
                    .detail(format!("by {staff}"))
            } else {
                Effect::none()
            }
        }
        EventBody::PickupReady {
            location, missing, ..
        } => {
            if !status.is_open() {
                return Effect::none();
            }
            let mut detail = format!("at {location}");
            let missing: Vec<Gtin> = state
                .lines
                .iter()
                .filter(|l| missing.contains(&l.gtin))
                .map(|l| l.gtin)
                .collect();
            if !missing.is_empty() {
                let list: Vec<&str> = missing.iter().map(Gtin::as_str).collect();
                detail.push_str(&format!("; missing {}", list.join(", ")));
            }
            let mut e = Effect::to(OrderStatus::Ready, at, Source::Store, ev).detail(detail);
            e.location = Some(location.clone());
            e.missing = Some(missing.clone());
            // Moving a ready order to another place is recorded, but the shopper was told already.
            if status != OrderStatus::Ready {
                e = e.webhook(
                    WebhookKind::Ready,
                    at,
                    json!({ "location": location, "missing": missing }),
                );
            }
            e
        }
        EventBody::PickupCollected {
            device,
            staff,
            method,
            partial,
            ..
        } => {
            let collection = Collection {
                at,
                by: device.clone(),
                staff: staff.clone(),
                method: Some(*method),
                partial: *partial,
                event_id,
            };
            let how = match method {
                RedeemMethod::Qr => "the QR code",
                RedeemMethod::Code => "the typed code",
            };
            let mut detail = format!("by {device}");
            if let Some(s) = staff {
                detail.push_str(&format!(" ({s})"));
            }
            detail.push_str(&format!(" with {how}"));
            collect(state, collection, detail)
        }
        EventBody::PickupCancelConflict {
            cancel_id,
            collected_at,
            collected_by,
            ..
        } => {
            let conflict =
                cancel_conflict(state, *cancel_id, *collected_at, collected_by, at, event_id);
            if status.is_collected() {
                let mut e = Effect::none();
                e.conflict = Some(conflict);
                return e;
            }
            // The hub never saw the collection itself: take the store's word for it.
            let collection = Collection {
                at: *collected_at,
                by: collected_by.clone(),
                staff: None,
                method: None,
                partial: false,
                event_id,
            };
            let mut e = collect(state, collection, format!("by {collected_by}"));
            e.conflict = Some(conflict);
            e
        }
        EventBody::PickupCancelApplied { .. } => match status {
            OrderStatus::Cancelled => Effect::confirm(
                OrderStatus::Cancelled,
                at,
                event_id,
                Some("the store applied the cancellation".into()),
            ),
            s if s.is_open() => {
                let mut e = Effect::to(OrderStatus::Cancelled, at, Source::Store, ev);
                e.stock = StockEffect::Release;
                e.webhook(WebhookKind::Cancelled, at, json!({ "source": "store" }))
            }
            _ => Effect::none(),
        },
        EventBody::PickupExpired { .. } => match status {
            OrderStatus::Expired => Effect::confirm(
                OrderStatus::Expired,
                at,
                event_id,
                Some("the store expired it too".into()),
            ),
            s if s.is_open() => {
                let mut e = Effect::to(OrderStatus::Expired, at, Source::Store, ev);
                e.stock = StockEffect::Release;
                e.webhook(WebhookKind::Expired, at, json!({ "source": "store" }))
            }
            _ => Effect::none(),
        },
        _ => Effect::none(),
    }
}

/// The store collected the order: it stands whatever the hub's status, with a conflict when the
/// hub had cancelled or expired it, or had seen another collection.
fn collect(state: &OrderState, collection: Collection, detail: String) -> Effect {
    if let Some(prev) = &state.collected {
        if prev.event_id == collection.event_id {
            return Effect::none();
        }
        let mut e = Effect::none();
        e.conflict = Some(ConflictDraft {
            key: format!("collected:{}", collection.event_id),
            kind: ConflictKind::CollectedTwice,
            at: collection.at,
            event_id: Some(collection.event_id),
            detail: format!(
                "the store reported a second collection ({detail} at {}) of an order collected at {}; stock was counted once",
                format_rfc3339(collection.at),
                format_rfc3339(prev.at)
            ),
        });
        return e;
    }
    let any_missing = state.lines.iter().any(|l| l.missing);
    let status = if collection.partial || any_missing {
        OrderStatus::PartiallyCollected
    } else {
        OrderStatus::Collected
    };
    let conflict = match state.status {
        OrderStatus::Cancelled => Some(ConflictDraft {
            key: cancel_key(state),
            kind: ConflictKind::CollectedAfterCancel,
            at: collection.at,
            event_id: Some(collection.event_id),
            detail: format!(
                "HQ cancelled the order{}, but the store had collected it at {} ({detail}) before the cancellation reached it; the collection stands",
                state
                    .cancel_requested_at
                    .map(|t| format!(" at {}", format_rfc3339(t)))
                    .unwrap_or_default(),
                format_rfc3339(collection.at)
            ),
        }),
        OrderStatus::Expired => Some(ConflictDraft {
            key: format!("expiry:{}", state.order_id),
            kind: ConflictKind::CollectedAfterExpiry,
            at: collection.at,
            event_id: Some(collection.event_id),
            detail: format!(
                "the order was marked expired, but the store reports it collected at {} ({detail}); the collection stands and the stock is counted as sold",
                format_rfc3339(collection.at)
            ),
        }),
        _ => None,
    };
    let sold = state
        .lines
        .iter()
        .filter(|l| !l.missing)
        .map(|l| (l.line_no, l.gtin, l.qty))
        .collect();
    let mut detail = detail;
    if conflict.is_some() {
        detail.push_str(&format!(
            "; the order was {} at HQ: see conflicts",
            state.status.as_str()
        ));
    }
    let partial = status == OrderStatus::PartiallyCollected;
    let mut extra = json!({ "partial": partial, "conflict": conflict.is_some() });
    if let (Some(m), Value::Object(map)) = (collection.method, &mut extra) {
        map.insert(
            "method".into(),
            json!(match m {
                RedeemMethod::Qr => "qr",
                RedeemMethod::Code => "code",
            }),
        );
    }
    let at = collection.at;
    let event_id = collection.event_id;
    let mut e = Effect::to(status, at, Source::Store, Some(event_id)).detail(detail);
    e.stock = StockEffect::Sell {
        event_id,
        lines: sold,
    };
    e.collected = Some(collection);
    e.conflict = conflict;
    e.webhook(WebhookKind::Collected, at, extra)
}

fn cancel_key(state: &OrderState) -> String {
    match state.cancel_id {
        Some(id) => format!("cancel:{id}"),
        None => format!("cancel:{}", state.order_id),
    }
}

fn cancel_conflict(
    state: &OrderState,
    cancel_id: EventId,
    collected_at: UtcMillis,
    collected_by: &str,
    at: UtcMillis,
    event_id: EventId,
) -> ConflictDraft {
    ConflictDraft {
        key: format!("cancel:{cancel_id}"),
        kind: ConflictKind::CollectedAfterCancel,
        at,
        event_id: Some(event_id),
        detail: format!(
            "HQ's cancellation{} reached the store after the order was collected at {} by {collected_by}; the collection stands",
            state
                .cancel_requested_at
                .map(|t| format!(" of {}", format_rfc3339(t)))
                .unwrap_or_default(),
            format_rfc3339(collected_at)
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn id(n: u8) -> EventId {
        EventId::from_bytes([n; 16])
    }

    fn g(n: u64) -> Gtin {
        Gtin::from_index(n).unwrap()
    }

    fn state(status: OrderStatus) -> OrderState {
        OrderState {
            order_id: OrderId::parse("web-1").unwrap(),
            store: StoreId::parse("S001").unwrap(),
            status,
            expires_at: UtcMillis(5_000),
            cancel_id: None,
            cancel_requested_at: None,
            collected: None,
            webhook: None,
            lines: vec![
                StateLine {
                    line_no: 1,
                    gtin: g(1),
                    qty: 2,
                    missing: false,
                },
                StateLine {
                    line_no: 2,
                    gtin: g(2),
                    qty: 1,
                    missing: false,
                },
            ],
        }
    }

    fn order() -> OrderId {
        OrderId::parse("web-1").unwrap()
    }

    fn collected(partial: bool) -> EventBody {
        EventBody::PickupCollected {
            order_id: order(),
            device: "till-2".into(),
            staff: Some("Mei".into()),
            method: RedeemMethod::Code,
            partial,
        }
    }

    #[test]
    fn the_happy_path_moves_forward_and_notifies_ready_and_collected() {
        let s = state(OrderStatus::Placed);
        let e = on_store_event(
            &s,
            id(1),
            UtcMillis(10),
            &EventBody::PickupReceived { order_id: order() },
        );
        assert_eq!(e.status, Some(OrderStatus::SentToStore));
        assert!(e.webhook.is_none() && e.stock == StockEffect::Keep);

        let s = state(OrderStatus::Picking);
        let e = on_store_event(
            &s,
            id(2),
            UtcMillis(20),
            &EventBody::PickupReady {
                order_id: order(),
                location: "Shelf P3".into(),
                missing: vec![g(2), g(9)],
            },
        );
        assert_eq!(e.status, Some(OrderStatus::Ready));
        assert_eq!(e.missing, Some(vec![g(2)]), "unknown GTINs are ignored");
        let w = e.webhook.unwrap();
        assert_eq!(w.kind, WebhookKind::Ready);
        assert_eq!(w.extra["location"], "Shelf P3");

        let mut s = state(OrderStatus::Ready);
        s.lines[1].missing = true;
        let e = on_store_event(&s, id(3), UtcMillis(30), &collected(true));
        assert_eq!(e.status, Some(OrderStatus::PartiallyCollected));
        assert_eq!(
            e.stock,
            StockEffect::Sell {
                event_id: id(3),
                lines: vec![(1, g(1), 2)]
            },
            "missing lines are not sold"
        );
        assert!(e.conflict.is_none());
        let w = e.webhook.unwrap();
        assert_eq!(
            (w.kind, &w.extra["method"], &w.extra["partial"]),
            (WebhookKind::Collected, &json!("code"), &json!(true))
        );
    }

    #[test]
    fn events_after_hq_moved_on_change_nothing() {
        for st in [OrderStatus::Cancelled, OrderStatus::Expired] {
            let s = state(st);
            for body in [
                EventBody::PickupReceived { order_id: order() },
                EventBody::PickupPicking {
                    order_id: order(),
                    staff: "Mei".into(),
                },
                EventBody::PickupReady {
                    order_id: order(),
                    location: "P1".into(),
                    missing: vec![],
                },
            ] {
                assert!(on_store_event(&s, id(1), UtcMillis(1), &body).is_none());
            }
        }
    }

    #[test]
    fn a_collection_after_hq_cancelled_stands_with_one_conflict() {
        let mut s = state(OrderStatus::Cancelled);
        s.cancel_id = Some(id(7));
        s.cancel_requested_at = Some(UtcMillis(50));
        let e = on_store_event(&s, id(3), UtcMillis(40), &collected(false));
        assert_eq!(e.status, Some(OrderStatus::Collected));
        let c = e.conflict.clone().unwrap();
        assert_eq!(
            (c.kind, c.key.as_str()),
            (
                ConflictKind::CollectedAfterCancel,
                format!("cancel:{}", id(7)).as_str()
            )
        );
        assert!(matches!(e.stock, StockEffect::Sell { .. }));
        assert_eq!(e.webhook.unwrap().extra["conflict"], true);

        // The store's conflict event then names the same cancellation: same key, no new status.
        let mut after = s.clone();
        after.status = OrderStatus::Collected;
        after.collected = e.collected.clone();
        let conflict = EventBody::PickupCancelConflict {
            order_id: order(),
            cancel_id: id(7),
            collected_at: UtcMillis(40),
            collected_by: "till-2".into(),
        };
        let e2 = on_store_event(&after, id(4), UtcMillis(60), &conflict);
        assert_eq!(e2.status, None);
        assert_eq!(e2.conflict.unwrap().key, c.key);
        assert!(e2.webhook.is_none() && e2.stock == StockEffect::Keep);

        // Without the collected event (never seen), the conflict alone flips the order back.
        let e3 = on_store_event(&s, id(4), UtcMillis(60), &conflict);
        assert_eq!(e3.status, Some(OrderStatus::Collected));
        assert!(matches!(e3.stock, StockEffect::Sell { event_id, .. } if event_id == id(4)));
        assert_eq!(e3.collected.unwrap().at, UtcMillis(40));
    }

    #[test]
    fn a_collection_after_the_hub_expired_it_stands_and_a_second_one_is_a_conflict() {
        let s = state(OrderStatus::Expired);
        let e = on_store_event(&s, id(3), UtcMillis(40), &collected(false));
        assert_eq!(e.status, Some(OrderStatus::Collected));
        assert_eq!(e.conflict.unwrap().kind, ConflictKind::CollectedAfterExpiry);

        let mut done = state(OrderStatus::Collected);
        done.collected = e.collected;
        assert!(on_store_event(&done, id(3), UtcMillis(40), &collected(false)).is_none());
        let twice = on_store_event(&done, id(5), UtcMillis(41), &collected(false));
        assert_eq!(twice.status, None);
        assert_eq!(twice.stock, StockEffect::Keep);
        assert_eq!(twice.conflict.unwrap().kind, ConflictKind::CollectedTwice);
    }

    #[test]
    fn cancellation_and_expiry() {
        assert_eq!(cancel_plan(&state(OrderStatus::Ready)), CancelPlan::Cancel);
        assert_eq!(
            cancel_plan(&state(OrderStatus::Cancelled)),
            CancelPlan::AlreadyCancelled
        );
        assert!(
            matches!(cancel_plan(&state(OrderStatus::Collected)), CancelPlan::Refused(m) if m.contains("collected"))
        );
        assert!(
            matches!(cancel_plan(&state(OrderStatus::Expired)), CancelPlan::Refused(m) if m.contains("expired"))
        );

        let e = on_hq_cancel(UtcMillis(9), Some("customer asked"));
        assert_eq!(
            (e.status, e.stock.clone(), e.webhook.unwrap().kind),
            (
                Some(OrderStatus::Cancelled),
                StockEffect::Release,
                WebhookKind::Cancelled
            )
        );

        let applied = EventBody::PickupCancelApplied {
            order_id: order(),
            cancel_id: id(7),
        };
        let e = on_store_event(
            &state(OrderStatus::Cancelled),
            id(8),
            UtcMillis(9),
            &applied,
        );
        assert_eq!(e.status, None);
        assert_eq!(e.history.unwrap().source, Source::Store);
        assert!(e.webhook.is_none());

        let e = on_hub_expiry(&state(OrderStatus::Ready), UtcMillis(99), DEFAULT_GRACE);
        assert_eq!(e.status, Some(OrderStatus::Expired));
        assert_eq!(e.webhook.unwrap().extra["source"], "hq");
        assert!(
            on_hub_expiry(&state(OrderStatus::Collected), UtcMillis(99), DEFAULT_GRACE).is_none()
        );

        let expired = EventBody::PickupExpired { order_id: order() };
        let e = on_store_event(&state(OrderStatus::Ready), id(9), UtcMillis(9), &expired);
        assert_eq!(
            (e.status, e.stock),
            (Some(OrderStatus::Expired), StockEffect::Release)
        );
        let e = on_store_event(&state(OrderStatus::Expired), id(9), UtcMillis(9), &expired);
        assert_eq!(e.status, None);
        assert!(e.history.is_some() && e.webhook.is_none());
    }

    const DEFAULT_GRACE: i64 = super::super::DEFAULT_EXPIRY_GRACE_MS;
}
