//! Click-and-collect storage conformance: one set of test bodies, each run against SQLite (a
//! temp file) and PostgreSQL (a fresh random database per test), like `conformance.rs`.
//!
//! Time is a parameter of the pickup methods, so expiry is tested by passing a later `now`,
//! never by waiting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use aisle_hub::pickup::{
    ConflictKind, NewOrder, OrderLineRequest, OrderReceipt, OrderStatus, OrderView, Source,
    WebhookKind,
};
use aisle_hub::price_batch::{BatchStores, ItemOrigin, PriceBatch, PriceItem};
use aisle_hub::storage::{
    self, HubStorage, NewStockAdjustment, NewStore, StockLevel, StorageError,
};
use aisle_hub::testsupport::TempPostgres;
use aisle_protocol::pickup::{PickupClaims, RedeemMethod, code_digest};
use aisle_protocol::sync::{ChangeBody, EventBody, LedgerEvent};
use aisle_protocol::{Currency, EventId, GatewayId, Gtin, Hlc, Money, OrderId, StoreId, UtcMillis};
use serde_json::Value;

type Db = Arc<dyn HubStorage>;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const HOOK: &str = "http://127.0.0.1:9/hooks";

fn cny() -> Currency {
    Currency::parse("CNY").unwrap()
}

fn g(n: u64) -> Gtin {
    Gtin::from_index(n).unwrap()
}

fn sid(s: &str) -> StoreId {
    StoreId::parse(s).unwrap()
}

fn oid(s: &str) -> OrderId {
    OrderId::parse(s).unwrap()
}

/// S001 and S002 priced for g(1), g(2), g(3); S001 holds 10 of g(1) and g(2), none of g(3);
/// a gateway per store. `now` is the time orders are placed at.
struct Fx {
    db: Db,
    s1: StoreId,
    gw: GatewayId,
    gw2: GatewayId,
    seq: u64,
    seq2: u64,
    now: UtcMillis,
}

impl Fx {
    async fn new(db: Db) -> Fx {
        for id in ["S001", "S002"] {
            db.create_store(&NewStore::new(sid(id), id, cny()).unwrap())
                .await
                .unwrap();
        }
        let items = (1..=3)
            .map(|n| PriceItem {
                origin: ItemOrigin::Row(n as u32),
                gtin: g(n),
                price: Money::new(100 * n as i64, cny()),
                name: format!("Product {n}"),
            })
            .collect();
        db.create_price_batch(&PriceBatch::new(BatchStores::All, None, items).unwrap())
            .await
            .unwrap();
        for n in [1, 2] {
            db.add_stock_adjustment(
                &sid("S001"),
                &NewStockAdjustment::new(None, g(n), 10, "goods received").unwrap(),
            )
            .await
            .unwrap();
        }
        let gw = db.create_gateway(&sid("S001")).await.unwrap().gateway_id;
        let gw2 = db.create_gateway(&sid("S002")).await.unwrap().gateway_id;
        Fx {
            db,
            s1: sid("S001"),
            gw,
            gw2,
            seq: 0,
            seq2: 0,
            now: UtcMillis::now(),
        }
    }

    fn request(&self, id: &str, lines: &[(u64, u32)], webhook: Option<&str>) -> NewOrder {
        NewOrder::new(
            oid(id),
            self.s1.clone(),
            lines
                .iter()
                .map(|(n, qty)| OrderLineRequest {
                    gtin: g(*n),
                    qty: *qty,
                })
                .collect(),
            UtcMillis(self.now.0 + DAY),
            webhook.map(str::to_owned),
        )
        .unwrap()
    }

    async fn place(&self, id: &str, lines: &[(u64, u32)]) -> OrderReceipt {
        self.db
            .create_order(&self.request(id, lines, Some(HOOK)), self.now)
            .await
            .unwrap()
    }

    /// Uploads the bodies as the next events of S001's gateway (each `at` an hour after now).
    async fn upload(&mut self, bodies: Vec<EventBody>) -> Vec<LedgerEvent> {
        let events: Vec<LedgerEvent> = bodies
            .into_iter()
            .map(|body| {
                self.seq += 1;
                event(self.seq, self.now.0 + HOUR + self.seq as i64, body)
            })
            .collect();
        let ack = self.db.ingest_events(&self.gw, &events).await.unwrap();
        assert_eq!(ack.acked_through, self.seq);
        events
    }

    async fn upload_from_s002(&mut self, bodies: Vec<EventBody>) {
        let events: Vec<LedgerEvent> = bodies
            .into_iter()
            .map(|body| {
                self.seq2 += 1;
                event(self.seq2, self.now.0 + HOUR, body)
            })
            .collect();
        self.db.ingest_events(&self.gw2, &events).await.unwrap();
    }

    async fn view(&self, id: &str) -> OrderView {
        self.db.order(&oid(id)).await.unwrap().unwrap()
    }

    async fn level(&self, n: u64) -> (i64, i64) {
        let on_hand = self.db.stock(&self.s1, &g(n)).await.unwrap();
        let reserved = self.db.reserved(&self.s1, &g(n)).await.unwrap();
        (on_hand, reserved)
    }

    async fn changes(&self, store: &str) -> Vec<ChangeBody> {
        self.db
            .changes_after(&sid(store), 0, 1000)
            .await
            .unwrap()
            .changes
            .into_iter()
            .map(|c| c.body)
            .collect()
    }
}

fn event(seq: u64, at: i64, body: EventBody) -> LedgerEvent {
    LedgerEvent {
        seq,
        id: EventId::from_bytes(rand::random()),
        hlc: Hlc {
            wall_ms: at as u64,
            counter: 0,
        },
        at: UtcMillis(at),
        body,
    }
}

fn received(id: &str) -> EventBody {
    EventBody::PickupReceived { order_id: oid(id) }
}

fn picking(id: &str) -> EventBody {
    EventBody::PickupPicking {
        order_id: oid(id),
        staff: "Mei".into(),
    }
}

fn ready(id: &str, missing: &[u64]) -> EventBody {
    EventBody::PickupReady {
        order_id: oid(id),
        location: "Pickup shelf P3".into(),
        missing: missing.iter().map(|n| g(*n)).collect(),
    }
}

fn collected(id: &str, partial: bool) -> EventBody {
    EventBody::PickupCollected {
        order_id: oid(id),
        device: "till-2".into(),
        staff: Some("Mei".into()),
        method: RedeemMethod::Qr,
        partial,
    }
}

fn statuses(v: &OrderView) -> Vec<(OrderStatus, Source)> {
    v.history.iter().map(|h| (h.status, h.source)).collect()
}

fn webhook_kinds(v: &OrderView) -> Vec<WebhookKind> {
    v.notifications.iter().map(|n| n.kind).collect()
}

fn pickup_changes(changes: &[ChangeBody]) -> Vec<&'static str> {
    changes
        .iter()
        .filter_map(|c| match c {
            ChangeBody::PickupKey(_) => Some("key"),
            ChangeBody::PickupOrder(_) => Some("order"),
            ChangeBody::PickupCancelled(_) => Some("cancelled"),
            _ => None,
        })
        .collect()
}

// ---------- test bodies ----------

async fn orders_are_idempotent_and_their_tokens_verify_at_the_store(db: Db) {
    let fx = Fx::new(db).await;
    assert_eq!(fx.db.pickup_key().await.unwrap(), None, "made on first use");
    let first = fx.place("web-1", &[(1, 2), (2, 1)]).await;
    assert!(first.created);
    let placed = &first.order;
    assert_eq!(
        (placed.placed_at, placed.expires_at),
        (fx.now, UtcMillis(fx.now.0 + DAY))
    );

    // The key went to every store before the order; the order went to its store only.
    let s1 = fx.changes("S001").await;
    assert_eq!(pickup_changes(&s1), ["key", "order"]);
    assert_eq!(pickup_changes(&fx.changes("S002").await), ["key"]);
    let key = fx.db.pickup_key().await.unwrap().unwrap();
    let Some(ChangeBody::PickupKey(sent)) =
        s1.iter().find(|c| matches!(c, ChangeBody::PickupKey(_)))
    else {
        panic!("no key change")
    };
    assert_eq!(sent, &key);
    let Some(ChangeBody::PickupOrder(order)) =
        s1.iter().find(|c| matches!(c, ChangeBody::PickupOrder(_)))
    else {
        panic!("no order change")
    };
    assert_eq!(order.order_id, oid("web-1"));
    assert_eq!(
        order
            .lines
            .iter()
            .map(|l| (l.gtin, l.qty, l.name.as_str()))
            .collect::<Vec<_>>(),
        vec![(g(1), 2, "Product 1"), (g(2), 1, "Product 2")]
    );
    assert_eq!(order.validate(), Ok(()));

    // What the store can check without the hub: the QR's signature and claims, the code's digest.
    let claims = PickupClaims::verify(&placed.qr, |id| {
        (id == key.key_id).then(|| key.verifying_key()).flatten()
    })
    .unwrap();
    assert_eq!(
        (claims.order, claims.store.clone(), claims.expires_at),
        (oid("web-1"), fx.s1.clone(), placed.expires_at)
    );
    assert_eq!(order.key_id, claims.key_id);
    assert_eq!(order.code_digest, code_digest(&fx.s1, &placed.code));

    // The same request again: the same answer, nothing new; even after pickup_by has passed.
    let again = fx.place("web-1", &[(1, 2), (2, 1)]).await;
    assert!(!again.created);
    assert_eq!(again.order, first.order);
    let late = fx
        .db
        .create_order(
            &fx.request("web-1", &[(1, 2), (2, 1)], Some(HOOK)),
            UtcMillis(fx.now.0 + 2 * DAY),
        )
        .await
        .unwrap();
    assert_eq!(late.order, first.order);
    assert_eq!(fx.level(1).await, (10, 2), "reserved once");
    assert_eq!(fx.changes("S001").await.len(), s1.len());

    // The same id with other content is another order: refused.
    for other in [
        fx.request("web-1", &[(1, 3), (2, 1)], Some(HOOK)),
        fx.request("web-1", &[(2, 1), (1, 2)], Some(HOOK)),
        fx.request("web-1", &[(1, 2), (2, 1)], None),
    ] {
        assert!(matches!(
            fx.db.create_order(&other, fx.now).await,
            Err(StorageError::OrderMismatch(id)) if id == oid("web-1")
        ));
    }

    // A second order reuses the key: no second key change.
    let second = fx.place("web-2", &[(1, 1)]).await;
    assert!(second.created);
    assert_ne!(second.order.code, first.order.code);
    assert_eq!(
        pickup_changes(&fx.changes("S001").await),
        ["key", "order", "order"]
    );
    assert_eq!(fx.db.pickup_key().await.unwrap().unwrap(), key);

    // A store that joins later gets the key once, first thing.
    fx.db
        .create_store(&NewStore::new(sid("S003"), "New store", cny()).unwrap())
        .await
        .unwrap();
    assert_eq!(pickup_changes(&fx.changes("S003").await), ["key"]);
    assert_eq!(pickup_changes(&fx.changes("S002").await), ["key"]);

    let view = fx.view("web-1").await;
    assert_eq!(view.status, OrderStatus::Placed);
    assert_eq!(statuses(&view), [(OrderStatus::Placed, Source::Hq)]);
    assert_eq!(view.webhook.as_deref(), Some(HOOK));
    assert_eq!(view.lines[0].name, "Product 1");
    assert!(view.conflicts.is_empty() && view.notifications.is_empty());
    assert_eq!(fx.db.order(&oid("web-9")).await.unwrap(), None);
    let listed = fx
        .db
        .list_orders(&aisle_hub::pickup::OrderFilter::default())
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
}

async fn identical_orders_at_once_have_one_effect(db: Db) {
    let fx = Arc::new(Fx::new(db).await);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let fx = fx.clone();
        tasks.push(tokio::spawn(
            async move { fx.place("web-1", &[(1, 4)]).await },
        ));
    }
    let mut receipts = Vec::new();
    for t in tasks {
        receipts.push(t.await.unwrap());
    }
    assert_eq!(receipts.iter().filter(|r| r.created).count(), 1);
    assert!(receipts.iter().all(|r| r.order == receipts[0].order));
    assert_eq!(fx.level(1).await, (10, 4));

    // Orders competing for the last units: exactly those that fit are placed.
    let mut tasks = Vec::new();
    for i in 0..4 {
        let fx = fx.clone();
        tasks.push(tokio::spawn(async move {
            fx.db
                .create_order(&fx.request(&format!("web-c{i}"), &[(1, 3)], None), fx.now)
                .await
        }));
    }
    let mut placed = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => placed += 1,
            Err(StorageError::InsufficientStock { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(placed, 2, "6 units left, 3 per order");
    assert_eq!(fx.level(1).await, (10, 10));
}

async fn reservations_hold_stock_and_refusals_write_nothing(db: Db) {
    let fx = Fx::new(db).await;
    fx.place("web-a", &[(1, 4)]).await;
    assert_eq!(fx.level(1).await, (10, 4));
    let levels = fx.db.stock_levels(&fx.s1).await.unwrap();
    assert_eq!(
        levels[0],
        StockLevel {
            gtin: g(1),
            on_hand: 10,
            reserved: 4
        }
    );
    assert_eq!(levels[0].available(), 6);

    let changes_before = fx.changes("S001").await.len();
    let refuse = |lines: &'static [(u64, u32)]| {
        let req = fx.request("web-b", lines, None);
        let db = fx.db.clone();
        let now = fx.now;
        async move { db.create_order(&req, now).await.unwrap_err() }
    };
    match refuse(&[(2, 1), (1, 7)]).await {
        StorageError::InsufficientStock {
            line,
            gtin,
            requested,
            available,
            ..
        } => assert_eq!((line, gtin, requested, available), (2, g(1), 7, 6)),
        e => panic!("{e}"),
    }
    // Priced but none in stock; not sold at the store at all.
    assert!(matches!(
        refuse(&[(3, 1)]).await,
        StorageError::InsufficientStock {
            line: 1,
            available: 0,
            ..
        }
    ));
    let msg = refuse(&[(1, 1), (4, 1)]).await;
    assert!(
        matches!(msg, StorageError::UnknownProduct { line: 2, gtin, .. } if gtin == g(4)),
        "{msg}"
    );
    let mut other_store = fx.request("web-b", &[(1, 1)], None);
    other_store.store = sid("S999");
    assert!(matches!(
        fx.db.create_order(&other_store, fx.now).await,
        Err(StorageError::UnknownStore(s)) if s == sid("S999")
    ));
    for pickup_by in [fx.now.0 - 1, fx.now.0, fx.now.0 + 14 * DAY + 1] {
        let mut r = fx.request("web-b", &[(1, 1)], None);
        r.pickup_by = UtcMillis(pickup_by);
        assert!(matches!(
            fx.db.create_order(&r, fx.now).await,
            Err(StorageError::InvalidInput(m)) if m.contains("pickup_by")
        ));
    }
    assert_eq!(fx.db.order(&oid("web-b")).await.unwrap(), None);
    assert_eq!(fx.changes("S001").await.len(), changes_before);
    assert_eq!(fx.level(1).await, (10, 4));

    // The last 6 can be reserved; cancel and expiry release.
    fx.place("web-b", &[(1, 6)]).await;
    assert_eq!(fx.level(1).await, (10, 10));
    fx.db
        .cancel_order(&oid("web-a"), Some("customer asked"), fx.now)
        .await
        .unwrap();
    assert_eq!(fx.level(1).await, (10, 6));
    let expired = fx
        .db
        .expire_overdue(UtcMillis(fx.now.0 + 2 * DAY + 1), DAY, 100)
        .await
        .unwrap();
    assert_eq!(expired, [oid("web-b")]);
    assert_eq!(fx.level(1).await, (10, 0), "nothing sold, nothing held");
}

async fn store_events_move_orders_and_replays_change_nothing(db: Db) {
    let mut fx = Fx::new(db).await;
    fx.place("web-1", &[(1, 2), (2, 3)]).await;
    let events = fx
        .upload(vec![
            received("web-1"),
            picking("web-1"),
            ready("web-1", &[2]),
            collected("web-1", true),
        ])
        .await;
    let v = fx.view("web-1").await;
    assert_eq!(v.status, OrderStatus::PartiallyCollected);
    assert_eq!(
        statuses(&v),
        [
            (OrderStatus::Placed, Source::Hq),
            (OrderStatus::SentToStore, Source::Store),
            (OrderStatus::Picking, Source::Store),
            (OrderStatus::Ready, Source::Store),
            (OrderStatus::PartiallyCollected, Source::Store),
        ]
    );
    assert_eq!(v.history[3].at, events[2].at);
    assert_eq!(v.history[4].event_id, Some(events[3].id));
    assert_eq!(v.location.as_deref(), Some("Pickup shelf P3"));
    assert_eq!(
        v.lines.iter().map(|l| l.missing).collect::<Vec<_>>(),
        [false, true]
    );
    let c = v.collected.clone().unwrap();
    assert_eq!(
        (c.by.as_str(), c.method, c.partial, c.event_id, c.at),
        (
            "till-2",
            Some(RedeemMethod::Qr),
            true,
            events[3].id,
            events[3].at
        )
    );
    assert!(v.conflicts.is_empty());
    assert_eq!(
        webhook_kinds(&v),
        [WebhookKind::Ready, WebhookKind::Collected]
    );
    // Sold what was handed over; the missing line is back in stock.
    assert_eq!(fx.level(1).await, (8, 0));
    assert_eq!(fx.level(2).await, (10, 0));

    // The same upload again, and another gateway of the store replaying the same event ids.
    let ack = fx.db.ingest_events(&fx.gw, &events).await.unwrap();
    assert_eq!(ack.acked_through, fx.seq);
    let gw3 = fx.db.create_gateway(&fx.s1).await.unwrap().gateway_id;
    fx.db.ingest_events(&gw3, &events).await.unwrap();
    assert_eq!(fx.view("web-1").await, v, "replays change nothing");
    assert_eq!(fx.level(1).await, (8, 0));
    assert_eq!(fx.db.webhooks_pending().await.unwrap(), 2);

    // Events for an order the hub does not know, or from a store the order is not assigned to,
    // are stored (the upload goes on) and change nothing.
    fx.place("web-2", &[(1, 1)]).await;
    fx.upload(vec![received("web-404")]).await;
    fx.upload_from_s002(vec![received("web-2"), collected("web-2", false)])
        .await;
    let v2 = fx.view("web-2").await;
    assert_eq!(v2.status, OrderStatus::Placed);
    assert_eq!(fx.level(1).await, (8, 1));

    // Store events that come after HQ moved on change nothing (the store's answer follows).
    fx.place("web-3", &[(2, 1)]).await;
    fx.db
        .cancel_order(&oid("web-3"), None, fx.now)
        .await
        .unwrap();
    fx.upload(vec![
        received("web-3"),
        picking("web-3"),
        ready("web-3", &[]),
    ])
    .await;
    let v3 = fx.view("web-3").await;
    assert_eq!(v3.status, OrderStatus::Cancelled);
    assert_eq!(v3.history.len(), 2);
    assert_eq!(webhook_kinds(&v3), [WebhookKind::Cancelled]);
}

async fn the_store_ledger_decides_cancel_and_collect_races(db: Db) {
    let mut fx = Fx::new(db).await;

    // 1. HQ cancels; the store applies it before anyone comes: cancelled, confirmed by the store.
    fx.place("web-1", &[(1, 1)]).await;
    let r = fx
        .db
        .cancel_order(&oid("web-1"), None, fx.now)
        .await
        .unwrap();
    assert!(r.cancelled_now);
    let cancel_id = r.cancel_id.unwrap();
    let again = fx
        .db
        .cancel_order(&oid("web-1"), None, fx.now)
        .await
        .unwrap();
    assert_eq!(
        (again.cancelled_now, again.cancel_id),
        (false, Some(cancel_id))
    );
    let cancels: Vec<_> = fx
        .changes("S001")
        .await
        .into_iter()
        .filter_map(|c| match c {
            ChangeBody::PickupCancelled(p) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(cancels.len(), 1, "a repeated cancel writes nothing");
    assert_eq!(
        (cancels[0].order_id.clone(), cancels[0].cancel_id),
        (oid("web-1"), cancel_id)
    );
    fx.upload(vec![
        received("web-1"),
        EventBody::PickupCancelApplied {
            order_id: oid("web-1"),
            cancel_id,
        },
    ])
    .await;
    let v = fx.view("web-1").await;
    assert_eq!(v.status, OrderStatus::Cancelled);
    assert_eq!(
        statuses(&v),
        [
            (OrderStatus::Placed, Source::Hq),
            (OrderStatus::Cancelled, Source::Hq),
            (OrderStatus::Cancelled, Source::Store),
        ]
    );
    assert_eq!(v.cancellation.as_ref().unwrap().cancel_id, cancel_id);
    assert!(v.conflicts.is_empty());
    assert_eq!(webhook_kinds(&v), [WebhookKind::Cancelled]);
    assert_eq!(fx.level(1).await, (10, 0));

    // 2. The store collects offline; HQ cancels before the collection arrives. The collection
    // stands: collected again, one conflict, stock sold once, HQ told cancelled then collected.
    fx.place("web-2", &[(1, 2)]).await;
    let r = fx
        .db
        .cancel_order(&oid("web-2"), None, fx.now)
        .await
        .unwrap();
    assert_eq!(fx.level(1).await, (10, 0), "released at once at HQ");
    let cancel_id = r.cancel_id.unwrap();
    let evs = fx
        .upload(vec![received("web-2"), collected("web-2", false)])
        .await;
    let v = fx.view("web-2").await;
    assert_eq!(v.status, OrderStatus::Collected);
    assert_eq!(v.conflicts.len(), 1);
    assert_eq!(v.conflicts[0].kind, ConflictKind::CollectedAfterCancel);
    assert_eq!(fx.level(1).await, (8, 0), "re-counted as sold");
    // Then the store's own conflict event for that cancellation: the same conflict, once.
    fx.upload(vec![EventBody::PickupCancelConflict {
        order_id: oid("web-2"),
        cancel_id,
        collected_at: evs[1].at,
        collected_by: "till-2".into(),
    }])
    .await;
    let v = fx.view("web-2").await;
    assert_eq!(v.status, OrderStatus::Collected);
    assert_eq!(v.conflicts.len(), 1, "one race, one conflict");
    assert_eq!(
        webhook_kinds(&v),
        [WebhookKind::Cancelled, WebhookKind::Collected]
    );
    assert_eq!(fx.level(1).await, (8, 0));
    assert!(matches!(
        fx.db.cancel_order(&oid("web-2"), None, fx.now).await,
        Err(StorageError::CannotCancel(m)) if m.contains("collected")
    ));

    // 3. The store's conflict event alone (the collection event never reached the hub) flips
    // the order back too, with stock sold once.
    fx.place("web-3", &[(2, 1)]).await;
    let cancel_id = fx
        .db
        .cancel_order(&oid("web-3"), None, fx.now)
        .await
        .unwrap()
        .cancel_id
        .unwrap();
    let conflict = EventBody::PickupCancelConflict {
        order_id: oid("web-3"),
        cancel_id,
        collected_at: UtcMillis(fx.now.0 + 60_000),
        collected_by: "till-9".into(),
    };
    fx.upload(vec![conflict.clone(), conflict]).await;
    let v = fx.view("web-3").await;
    assert_eq!(v.status, OrderStatus::Collected);
    assert_eq!(v.collected.unwrap().by, "till-9");
    assert_eq!(v.conflicts.len(), 1);
    assert_eq!(
        fx.level(2).await,
        (9, 0),
        "a second report of it is no second sale"
    );

    // 4. Collected first, then HQ tries to cancel: refused, nothing changes.
    fx.place("web-4", &[(2, 1)]).await;
    fx.upload(vec![collected("web-4", false)]).await;
    assert!(matches!(
        fx.db.cancel_order(&oid("web-4"), None, fx.now).await,
        Err(StorageError::CannotCancel(_))
    ));
    assert_eq!(fx.view("web-4").await.status, OrderStatus::Collected);

    // 5. A second collection of a collected order is a conflict; stock counts the first.
    fx.upload(vec![collected("web-4", false)]).await;
    let v = fx.view("web-4").await;
    assert_eq!(v.status, OrderStatus::Collected);
    assert_eq!(v.conflicts[0].kind, ConflictKind::CollectedTwice);
    assert_eq!(fx.level(2).await, (8, 0));
}

async fn expiry_by_the_store_or_by_the_hub(db: Db) {
    let mut fx = Fx::new(db).await;
    fx.place("web-1", &[(1, 1)]).await;
    fx.place("web-2", &[(1, 2)]).await;
    fx.place("web-3", &[(2, 1)]).await;
    let expires = fx.now.0 + DAY;

    // The store expires web-1 itself.
    fx.upload(vec![
        received("web-1"),
        EventBody::PickupExpired {
            order_id: oid("web-1"),
        },
    ])
    .await;
    let v = fx.view("web-1").await;
    assert_eq!(v.status, OrderStatus::Expired);
    assert_eq!(v.history.last().unwrap().source, Source::Store);
    assert_eq!(webhook_kinds(&v), [WebhookKind::Expired]);
    assert_eq!(fx.level(1).await, (10, 2));
    assert!(matches!(
        fx.db.cancel_order(&oid("web-1"), None, fx.now).await,
        Err(StorageError::CannotCancel(m)) if m.contains("expired")
    ));

    // Not before the grace has passed; then the hub expires what the store said nothing about.
    let sweep = |at: i64| fx.db.expire_overdue(UtcMillis(at), DAY, 100);
    assert!(sweep(expires + DAY - 1).await.unwrap().is_empty());
    let mut swept = sweep(expires + DAY).await.unwrap();
    swept.sort();
    assert_eq!(swept, [oid("web-2"), oid("web-3")]);
    assert!(sweep(expires + 2 * DAY).await.unwrap().is_empty(), "once");
    let v = fx.view("web-2").await;
    assert_eq!(v.status, OrderStatus::Expired);
    assert_eq!(v.history.last().unwrap().source, Source::Hq);
    assert_eq!(fx.level(1).await, (10, 0));

    // The store then reports web-2 collected (its clock, its ledger): the collection wins,
    // re-counted as sold, and HQ sees the conflict.
    fx.upload(vec![collected("web-2", false)]).await;
    let v = fx.view("web-2").await;
    assert_eq!(v.status, OrderStatus::Collected);
    assert_eq!(v.conflicts.len(), 1);
    assert_eq!(v.conflicts[0].kind, ConflictKind::CollectedAfterExpiry);
    assert_eq!(
        webhook_kinds(&v),
        [WebhookKind::Expired, WebhookKind::Collected]
    );
    assert_eq!(fx.level(1).await, (8, 0));

    // The store's own expiry of web-3, late: a confirmation, no second webhook.
    fx.upload(vec![EventBody::PickupExpired {
        order_id: oid("web-3"),
    }])
    .await;
    let v = fx.view("web-3").await;
    assert_eq!(v.status, OrderStatus::Expired);
    assert_eq!(
        statuses(&v),
        [
            (OrderStatus::Placed, Source::Hq),
            (OrderStatus::Expired, Source::Hq),
            (OrderStatus::Expired, Source::Store),
        ]
    );
    assert_eq!(webhook_kinds(&v), [WebhookKind::Expired]);
}

async fn the_webhook_outbox_leases_retries_and_delivers_once_recorded(db: Db) {
    let fx = Fx::new(db).await;
    // An order without a webhook URL queues nothing.
    fx.db
        .create_order(&fx.request("web-0", &[(1, 1)], None), fx.now)
        .await
        .unwrap();
    fx.db
        .cancel_order(&oid("web-0"), None, fx.now)
        .await
        .unwrap();
    assert_eq!(fx.db.webhooks_pending().await.unwrap(), 0);

    fx.place("web-1", &[(1, 1)]).await;
    let r = fx
        .db
        .cancel_order(&oid("web-1"), Some("customer asked"), fx.now)
        .await
        .unwrap();
    assert!(r.cancelled_now);
    assert_eq!(fx.db.webhooks_pending().await.unwrap(), 1);

    let t = UtcMillis::now().0 + 1_000;
    let claimed = fx
        .db
        .claim_webhooks(UtcMillis(t), UtcMillis(t + 1_000), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let d = &claimed[0];
    assert_eq!(
        (d.order_id.clone(), d.kind, d.url.as_str(), d.attempts),
        (oid("web-1"), WebhookKind::Cancelled, HOOK, 1)
    );
    let body: Value = serde_json::from_str(&d.body).unwrap();
    assert_eq!(body["event_id"], d.event_id.to_hex());
    assert_eq!(body["type"], "cancelled");
    assert_eq!(body["order_id"], "web-1");
    assert_eq!(body["store"], "S001");
    assert_eq!(body["status"], "cancelled");
    assert_eq!(body["source"], "hq");
    assert!(body["at"].as_str().unwrap().ends_with('Z'));

    // Leased: nobody else takes it until the lease runs out; then the same row, same bytes.
    assert!(
        fx.db
            .claim_webhooks(UtcMillis(t + 999), UtcMillis(t + 5_000), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let again = fx
        .db
        .claim_webhooks(UtcMillis(t + 1_000), UtcMillis(t + 2_000), 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].event_id, &again[0].body), (d.event_id, &d.body));
    assert_eq!(again[0].attempts, 2);

    // A failure schedules the next attempt.
    fx.db
        .webhook_failed(&d.event_id, UtcMillis(t + 10_000), "HTTP 500")
        .await
        .unwrap();
    assert!(
        fx.db
            .claim_webhooks(UtcMillis(t + 9_999), UtcMillis(t + 20_000), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let v = fx.view("web-1").await;
    assert_eq!(v.notifications[0].last_error.as_deref(), Some("HTTP 500"));
    assert_eq!(v.notifications[0].attempts, 2);
    let third = fx
        .db
        .claim_webhooks(UtcMillis(t + 10_000), UtcMillis(t + 20_000), 10)
        .await
        .unwrap();
    assert_eq!(third[0].attempts, 3);

    fx.db
        .webhook_delivered(&d.event_id, UtcMillis(t + 10_001))
        .await
        .unwrap();
    assert_eq!(fx.db.webhooks_pending().await.unwrap(), 0);
    assert!(
        fx.db
            .claim_webhooks(UtcMillis(t + 100_000), UtcMillis(t + 200_000), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let v = fx.view("web-1").await;
    assert_eq!(
        (
            v.notifications[0].delivered_at,
            v.notifications[0].last_error.clone()
        ),
        (Some(UtcMillis(t + 10_001)), None)
    );

    // The generated secret is made once and kept.
    let s = fx.db.webhook_secret().await.unwrap();
    assert_eq!(s.len(), 64);
    assert_eq!(fx.db.webhook_secret().await.unwrap(), s);
}

// ---------- running each body on both backends ----------

async fn sqlite_db() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("hub.db").display());
    let db = storage::open(&url).await.unwrap();
    (dir, db)
}

async fn postgres_db() -> (TempPostgres, Db) {
    let pg = TempPostgres::create()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is required for this test: {e}"));
    let db = storage::open(pg.url()).await.unwrap();
    (pg, db)
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let (_dir, db) = super::sqlite_db().await;
                    super::$name(db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let (pg, db) = super::postgres_db().await;
                    super::$name(db).await;
                    pg.cleanup().await.unwrap();
                }
            )*
        }
    };
}

conformance!(
    orders_are_idempotent_and_their_tokens_verify_at_the_store,
    identical_orders_at_once_have_one_effect,
    reservations_hold_stock_and_refusals_write_nothing,
    store_events_move_orders_and_replays_change_nothing,
    the_store_ledger_decides_cancel_and_collect_races,
    expiry_by_the_store_or_by_the_hub,
    the_webhook_outbox_leases_retries_and_delivers_once_recorded,
);

// ---------- upgrading a version 2 database ----------

/// A version 2 database: none of the pickup tables.
const DOWNGRADE_TO_V2: &str = "DROP TABLE webhook_outbox; DROP TABLE pickup_events;
     DROP TABLE stock_reservations; DROP TABLE order_conflicts; DROP TABLE order_history;
     DROP TABLE order_lines; DROP TABLE orders; DROP TABLE hub_secrets;
     DROP TABLE pickup_key_stores; DROP TABLE pickup_keys;
     DELETE FROM schema_version; INSERT INTO schema_version (version) VALUES (2);";

/// After the upgrade the hub takes orders, and the stores that existed before get the key.
async fn works_after_upgrade(db: Db) {
    let fx = Fx {
        db,
        s1: sid("S001"),
        gw: GatewayId::parse("unused").unwrap(),
        gw2: GatewayId::parse("unused").unwrap(),
        seq: 0,
        seq2: 0,
        now: UtcMillis::now(),
    };
    assert!(fx.place("web-1", &[(1, 1)]).await.created);
    assert_eq!(pickup_changes(&fx.changes("S001").await), ["key", "order"]);
    assert_eq!(pickup_changes(&fx.changes("S002").await), ["key"]);
}

#[tokio::test]
async fn sqlite_version_2_databases_are_upgraded() {
    let (dir, db) = sqlite_db().await;
    Fx::new(db.clone()).await;
    drop(db);
    let path = dir.path().join("hub.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(DOWNGRADE_TO_V2).unwrap();
    drop(conn);
    let url = format!("sqlite://{}", path.display());
    let db = storage::open(&url).await.unwrap();
    works_after_upgrade(db).await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = conn
        .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, storage::SCHEMA_VERSION);
    // A newer database than this build knows is refused.
    let newer = storage::SCHEMA_VERSION + 1;
    conn.execute("INSERT INTO schema_version (version) VALUES (?1)", [newer])
        .unwrap();
    drop(conn);
    assert!(matches!(
        storage::open(&url).await.unwrap_err(),
        StorageError::SchemaTooNew { found } if found == newer
    ));
}

#[tokio::test]
async fn postgres_version_2_databases_are_upgraded() {
    let (pg, db) = postgres_db().await;
    Fx::new(db.clone()).await;
    drop(db);
    let (client, conn) = tokio_postgres::connect(pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    client.batch_execute(DOWNGRADE_TO_V2).await.unwrap();
    let db = storage::open(pg.url()).await.unwrap();
    works_after_upgrade(db).await;
    let v: i64 = client
        .query_one("SELECT MAX(version) FROM schema_version", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, storage::SCHEMA_VERSION);
    drop(client);
    let _ = conn.await;
    pg.cleanup().await.unwrap();
}
