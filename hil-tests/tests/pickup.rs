//! Click-and-collect end to end: HQ places orders at the real `aisle-hub`, the real
//! `aisle-agent` receives them over the changefeed, staff pick, mark ready and hand over through
//! the agent's pickup API, and HQ follows each order (status, history, conflicts, webhooks).
//!
//! The fault matrix: a redeem while the hub is down racing HQ's cancel, a cancel that reached
//! the store first or did not, two counters redeeming one order at once, a second redeem after a
//! kill -9, a token for another store, expired, forged and altered tokens, and guessing of the
//! typed fallback codes. Each scenario checks the store's answer and what HQ ends up showing.
//! The hub runs on SQLite, and on PostgreSQL for the hub-down race.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use aisle_hil::harness::{Backend, VirtualStore, gtin};
use aisle_hil::pickup::{
    HqOrders, HubSettings, PickupCounter, STAFF, STAFF_PIN, WEBHOOK_SECRET, WebhookReceiver,
    hq_history, hq_history_count, now_ms, order, sign_in_raw, start_store,
};
use anyhow::Result;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const HOUR_MS: i64 = 3_600_000;

/// A store with its hub, HQ's order client, a signed-in counter and two stocked products.
struct Shop {
    vs: VirtualStore,
    hq: HqOrders,
    counter: PickupCounter,
    a: String,
    b: String,
}

impl Shop {
    async fn open(backend: Backend, hub: HubSettings) -> Result<Shop> {
        let vs = start_store(backend, hub, "").await?;
        let hq = HqOrders::of(&vs);
        let (a, b) = (gtin(1), gtin(2));
        hq.stock_catalogue(&["S001"], &[a.clone(), b.clone()], 100)
            .await?;
        let counter = PickupCounter::open(&vs).await?;
        Ok(Shop {
            vs,
            hq,
            counter,
            a,
            b,
        })
    }

    /// Places an order for 2 x a and 1 x b, due in two hours, and waits until the store has it.
    async fn place(&self, id: &str, webhook: Option<&str>) -> Result<Value> {
        let placed = self
            .hq
            .place(&order(
                id,
                "S001",
                &[(&self.a, 2), (&self.b, 1)],
                now_ms() + 2 * HOUR_MS,
                webhook,
            ))
            .await?;
        self.counter.wait_status(id, "received", WAIT).await?;
        Ok(placed)
    }

    /// Places an order, picks it and puts it ready; waits until HQ shows it ready.
    async fn ready(&self, id: &str) -> Result<Value> {
        let placed = self.place(id, None).await?;
        self.counter.pick_and_ready(id, "Shelf B3").await?;
        self.hq.wait_status(id, "ready", WAIT).await?;
        Ok(placed)
    }

    /// After a restart of the hub: HQ talks to its new address.
    async fn restart_hub(&mut self) -> Result<()> {
        self.vs.restart_hub().await?;
        self.hq = HqOrders::of(&self.vs);
        Ok(())
    }

    /// HQ's stock of `gtin`: (on_hand, reserved).
    async fn stock(&self, gtin: &str) -> Result<(i64, i64)> {
        let s = self.hq.stock("S001", gtin).await?;
        Ok((
            s["on_hand"].as_i64().unwrap(),
            s["reserved"].as_i64().unwrap(),
        ))
    }

    /// Stops the agent hard, checks its ledger (hash chain and replayed state), cleans up.
    async fn close(mut self) -> Result<()> {
        self.vs.agent.kill9();
        self.vs.agent.verify_ledger()?;
        self.vs.finish().await
    }
}

fn qr(placed: &Value) -> &str {
    placed["token"]["qr"].as_str().unwrap()
}

fn code(placed: &Value) -> &str {
    placed["token"]["code"].as_str().unwrap()
}

/// HQ's conflicts of an order as their kinds.
fn conflict_kinds(o: &Value) -> Vec<String> {
    o["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap().to_string())
        .collect()
}

/// Kinds in the store's history of an order.
fn store_history(o: &Value) -> Vec<String> {
    o["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["kind"].as_str().unwrap().to_string())
        .collect()
}

/// The happy path, with HQ's order system receiving webhooks: received, picking, ready (a
/// webhook, signed; the first delivery fails and is retried under the same event id), redeemed
/// with the typed code, collected (a webhook). HQ sees every step once and sells the stock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_with_signed_deduplicable_webhooks() -> Result<()> {
    let shop = Shop::open(Backend::Sqlite, HubSettings::default()).await?;
    let oms = WebhookReceiver::start().await?;
    oms.fail_next(1);
    let placed = shop.place("web-1001", Some(&oms.url())).await?;
    assert_eq!(placed["status"], "placed", "{placed}");
    shop.hq
        .wait_status("web-1001", "sent_to_store", WAIT)
        .await?;
    assert_eq!(shop.stock(&shop.a).await?, (100, 2), "reserved at HQ");

    // The staff page is served by the agent itself (no WAN needed); the API wants a session.
    let page = reqwest::get(format!("{}/pickup", shop.vs.agent.url())).await?;
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()?
            .starts_with("text/html")
    );
    let html = page.text().await?;
    assert!(
        html.contains("<html") && !html.contains("src=\"http"),
        "one self-contained page"
    );
    let anonymous = reqwest::get(format!("{}/v1/pickups", shop.vs.agent.url())).await?;
    assert_eq!(anonymous.status(), 401);

    let open = shop.counter.list("open", 100).await?;
    assert_eq!(open.len(), 1, "{open:?}");
    let (status, picking) = shop.counter.pick("web-1001").await?;
    assert_eq!(status, 200, "{picking}");
    assert_eq!(
        (&picking["status"], &picking["picking_by"]),
        (&Value::from("picking"), &Value::from(STAFF))
    );
    let lines: Vec<(&str, u64)> = picking["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["gtin"].as_str().unwrap(), l["qty"].as_u64().unwrap()))
        .collect();
    assert_eq!(lines, vec![(shop.a.as_str(), 2), (shop.b.as_str(), 1)]);
    shop.hq.wait_status("web-1001", "picking", WAIT).await?;
    let (status, ready) = shop.counter.ready("web-1001", "Shelf B3", &[]).await?;
    assert_eq!((status, &ready["status"]), (200, &Value::from("ready")));
    let at_hq = shop.hq.wait_status("web-1001", "ready", WAIT).await?;
    assert_eq!(at_hq["location"], "Shelf B3");

    let first_ready = oms.wait("web-1001", "ready", WAIT).await?;
    assert!(first_ready.signed_with(WEBHOOK_SECRET), "{first_ready:?}");
    assert!(!first_ready.signed_with("another-secret-0123456789"));
    assert_eq!(first_ready.json()["location"], "Shelf B3");
    // The first delivery was answered 500: the hub delivers the same event again.
    let redelivered = aisle_hil::harness::wait_for("the ready webhook again", WAIT, || async {
        let r = oms.of("web-1001", "ready");
        (r.len() >= 2).then_some(r)
    })
    .await?;
    assert!(
        redelivered
            .iter()
            .all(|d| d.event_id() == first_ready.event_id() && d.signed_with(WEBHOOK_SECRET))
    );
    assert_eq!(redelivered[0].body, redelivered[1].body, "byte for byte");

    let (status, handed) = shop.counter.redeem_code(code(&placed), "counter-1").await?;
    assert_eq!(status, 200, "{handed}");
    assert_eq!(handed["hand_over"], true);
    let collected = &handed["order"]["collected"];
    assert_eq!(
        (
            &collected["method"],
            &collected["staff"],
            &collected["device"]
        ),
        (
            &Value::from("code"),
            &Value::from(STAFF),
            &Value::from("counter-1")
        ),
        "{handed}"
    );
    let done = shop.hq.wait_status("web-1001", "collected", WAIT).await?;
    let collected_hook = oms.wait("web-1001", "collected", WAIT).await?;
    assert!(collected_hook.signed_with(WEBHOOK_SECRET));
    assert_eq!(collected_hook.json()["method"], "code");

    assert_eq!(
        hq_history(&done),
        [
            "placed/hq",
            "sent_to_store/store",
            "picking/store",
            "ready/store",
            "collected/store"
        ],
        "{done}"
    );
    assert_eq!(done["collected"]["method"], "code");
    assert_eq!(done["collected"]["staff"], STAFF);
    assert!(conflict_kinds(&done).is_empty(), "{done}");
    assert_eq!(shop.stock(&shop.a).await?, (98, 0), "sold once, released");
    assert_eq!(shop.stock(&shop.b).await?, (99, 0));

    // Deduplicated on the event id, HQ's order system saw each event once.
    let mut seen = BTreeSet::new();
    let kinds: Vec<String> = oms
        .deliveries()
        .iter()
        .filter(|d| seen.insert(d.event_id().unwrap().to_string()))
        .map(|d| d.json()["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["ready", "collected"]);
    let notes = shop
        .hq
        .wait_until("web-1001", "both webhooks delivered", WAIT, |o| {
            o["notifications"]
                .as_array()
                .is_some_and(|n| n.len() == 2 && n.iter().all(|n| !n["delivered_at"].is_null()))
        })
        .await?;
    assert_eq!(notes["notifications"][0]["attempts"], 2, "{notes}");
    shop.close().await
}

/// (a) The hub is down when the shopper comes: the store hands over offline. HQ, back up but
/// still cut off from the store, cancels. When the link returns the store's collection stands:
/// HQ shows it collected with one conflict, the cancellation recorded, nothing dropped.
/// On PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeem_while_the_hub_is_down_stands_against_a_later_hq_cancel() -> Result<()> {
    let mut shop = Shop::open(Backend::Postgres, HubSettings::default()).await?;
    let placed = shop.ready("web-2001").await?;

    shop.vs.proxy.link_down();
    shop.vs.hub.kill();
    let (status, handed) = shop.counter.redeem_qr(qr(&placed), "counter-1").await?;
    assert_eq!(status, 200, "offline redeem: {handed}");
    assert_eq!(handed["order"]["status"], "collected");

    shop.restart_hub().await?;
    let (status, cancelled) = shop.hq.cancel("web-2001", "customer called").await?;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");

    shop.vs.proxy.link_up();
    let hq = shop
        .hq
        .wait_until(
            "web-2001",
            "HQ to show the collection with its conflict",
            WAIT,
            |o| o["status"] == "collected" && !o["conflicts"].as_array().unwrap().is_empty(),
        )
        .await?;
    // The cancellation reaches the store, which answers with a conflict of its own: the same one.
    let at_store = shop
        .counter
        .wait_status("web-2001", "collected", WAIT)
        .await?;
    aisle_hil::harness::wait_for("the store to hear of the cancel", WAIT, || async {
        let (_, o) = shop.counter.order("web-2001").await.ok()?;
        store_history(&o)
            .contains(&"cancel_conflict".to_string())
            .then_some(())
    })
    .await?;
    shop.vs.agent.api().wait_drained(WAIT).await?;
    let hq_final = shop.hq.order("web-2001").await?;
    assert_eq!(hq_final["status"], "collected", "{hq_final}");
    assert_eq!(
        conflict_kinds(&hq_final),
        ["collected_after_cancel"],
        "{hq_final}"
    );
    assert_eq!(hq_history_count(&hq_final, "collected"), 1, "{hq_final}");
    assert_eq!(hq_history_count(&hq_final, "cancelled"), 1, "{hq_final}");
    assert!(!hq_final["cancellation"].is_null(), "{hq_final}");
    assert_eq!(hq_final["collected"]["by"], hq["collected"]["by"]);
    assert_eq!(at_store["collected"]["device"], "counter-1");
    assert_eq!(shop.stock(&shop.a).await?, (98, 0), "sold, not released");
    shop.close().await
}

/// (b) HQ cancels and the cancellation reaches the store first; then the store goes offline and
/// the shopper comes: the redeem is refused (409 cancelled), by QR and by code, and HQ shows the
/// store confirmed the cancellation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_that_reached_the_store_first_refuses_the_redeem() -> Result<()> {
    let shop = Shop::open(Backend::Sqlite, HubSettings::default()).await?;
    let placed = shop.ready("web-3001").await?;
    let (status, body) = shop.hq.cancel("web-3001", "out of stock online").await?;
    assert_eq!((status, &body["status"]), (200, &Value::from("cancelled")));
    shop.counter
        .wait_status("web-3001", "cancelled", WAIT)
        .await?;
    shop.vs.proxy.link_down();

    let (status, refused) = shop.counter.redeem_qr(qr(&placed), "counter-1").await?;
    assert_eq!(
        (status, &refused["error"]),
        (409, &Value::from("cancelled"))
    );
    let (status, refused) = shop.counter.redeem_code(code(&placed), "counter-1").await?;
    assert_eq!(
        (status, &refused["error"]),
        (409, &Value::from("cancelled"))
    );

    shop.vs.proxy.link_up();
    shop.vs.agent.api().wait_drained(WAIT).await?;
    let hq = shop
        .hq
        .wait_until(
            "web-3001",
            "HQ to hear the store applied the cancel",
            WAIT,
            |o| hq_history(o).contains(&"cancelled/store".to_string()),
        )
        .await?;
    assert_eq!(hq["status"], "cancelled");
    assert!(conflict_kinds(&hq).is_empty(), "{hq}");
    assert_eq!(hq_history_count(&hq, "collected"), 0);
    assert_eq!(shop.stock(&shop.a).await?, (100, 0), "released");
    shop.close().await
}

/// (b') The store was offline before HQ's cancel reached it, and the shopper came: the store's
/// ledger order decides, the collection stands; HQ shows it collected with a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_that_did_not_reach_the_offline_store_loses_to_its_redeem() -> Result<()> {
    let shop = Shop::open(Backend::Sqlite, HubSettings::default()).await?;
    let placed = shop.ready("web-3101").await?;
    shop.vs.proxy.link_down();
    let (status, body) = shop.hq.cancel("web-3101", "customer called").await?;
    assert_eq!((status, &body["status"]), (200, &Value::from("cancelled")));

    let (status, handed) = shop.counter.redeem_code(code(&placed), "counter-2").await?;
    assert_eq!(status, 200, "the store never heard of the cancel: {handed}");
    shop.vs.proxy.link_up();

    aisle_hil::harness::wait_for("the store to hear of the cancel", WAIT, || async {
        let (_, o) = shop.counter.order("web-3101").await.ok()?;
        store_history(&o)
            .contains(&"cancel_conflict".to_string())
            .then_some(())
    })
    .await?;
    shop.vs.agent.api().wait_drained(WAIT).await?;
    let (_, at_store) = shop.counter.order("web-3101").await?;
    assert_eq!(at_store["status"], "collected", "{at_store}");
    let hq = shop.hq.wait_status("web-3101", "collected", WAIT).await?;
    assert_eq!(conflict_kinds(&hq), ["collected_after_cancel"], "{hq}");
    assert_eq!(hq_history_count(&hq, "collected"), 1, "{hq}");
    assert_eq!(shop.stock(&shop.a).await?, (98, 0), "sold once");
    shop.close().await
}

/// Staff could not find one product: ready with it missing, the shopper takes the rest. The
/// store and HQ show the order partially collected, HQ sells only what was handed over and
/// releases the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_pickup_sells_only_what_was_handed_over() -> Result<()> {
    let shop = Shop::open(Backend::Sqlite, HubSettings::default()).await?;
    let placed = shop.place("web-3201", None).await?;
    let (status, refused) = shop
        .counter
        .ready("web-3201", "Shelf B3", &[&shop.a, &shop.b])
        .await?;
    assert_eq!(status, 422, "not every line may be missing: {refused}");
    let (status, ready) = shop
        .counter
        .ready("web-3201", "Shelf B3", &[&shop.b])
        .await?;
    assert_eq!(status, 200, "{ready}");
    let missing: Vec<(&str, bool)> = ready["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["gtin"].as_str().unwrap(), l["missing"].as_bool().unwrap()))
        .collect();
    assert_eq!(missing, [(shop.a.as_str(), false), (shop.b.as_str(), true)]);
    let (status, handed) = shop.counter.redeem_qr(qr(&placed), "counter-1").await?;
    assert_eq!(status, 200, "{handed}");
    assert_eq!(handed["order"]["status"], "partially_collected", "{handed}");
    assert_eq!(handed["order"]["collected"]["partial"], true, "{handed}");

    let hq = shop
        .hq
        .wait_status("web-3201", "partially_collected", WAIT)
        .await?;
    assert_eq!(hq_history_count(&hq, "partially_collected"), 1, "{hq}");
    assert_eq!(shop.stock(&shop.a).await?, (98, 0), "sold");
    assert_eq!(
        shop.stock(&shop.b).await?,
        (100, 0),
        "missing: released, not sold"
    );
    shop.close().await
}

/// The shopper comes before the order reached the store (its link was down since before HQ
/// placed it): without the hub's pickup key the store cannot check the QR (503 no_key), the code
/// names no order (404); once the link is back the same tokens work. With the key, a QR of an
/// order the store has not received yet is 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shopper_before_the_order_reached_the_store_is_asked_to_wait() -> Result<()> {
    let shop = Shop::open(Backend::Sqlite, HubSettings::default()).await?;
    shop.vs.proxy.link_down();
    let first = shop
        .hq
        .place(&order(
            "web-1101",
            "S001",
            &[(&shop.a, 1)],
            now_ms() + 2 * HOUR_MS,
            None,
        ))
        .await?;
    let (status, refused) = shop.counter.redeem_qr(qr(&first), "counter-1").await?;
    assert_eq!((status, &refused["error"]), (503, &Value::from("no_key")));
    let (status, refused) = shop.counter.redeem_code(code(&first), "counter-1").await?;
    assert_eq!(status, 404, "{refused}");

    shop.vs.proxy.link_up();
    shop.counter
        .wait_status("web-1101", "received", WAIT)
        .await?;
    shop.counter.pick_and_ready("web-1101", "Shelf C1").await?;
    let (status, handed) = shop.counter.redeem_qr(qr(&first), "counter-1").await?;
    assert_eq!(status, 200, "{handed}");

    shop.vs.proxy.link_down();
    let second = shop
        .hq
        .place(&order(
            "web-1102",
            "S001",
            &[(&shop.a, 1)],
            now_ms() + 2 * HOUR_MS,
            None,
        ))
        .await?;
    let (status, refused) = shop.counter.redeem_qr(qr(&second), "counter-1").await?;
    assert_eq!(status, 404, "{refused}");
    shop.vs.proxy.link_up();
    shop.counter
        .wait_status("web-1102", "received", WAIT)
        .await?;
    let (status, refused) = shop.counter.redeem_qr(qr(&second), "counter-1").await?;
    assert_eq!(
        (status, &refused["error"]),
        (409, &Value::from("not_ready")),
        "received, not picked yet"
    );
    shop.vs.agent.api().wait_drained(WAIT).await?;
    let hq = shop.hq.wait_status("web-1101", "collected", WAIT).await?;
    assert_eq!(hq_history_count(&hq, "collected"), 1, "{hq}");
    shop.hq
        .wait_status("web-1102", "sent_to_store", WAIT)
        .await?;
    shop.close().await
}

/// (c) Two or more counters scan the same order at the same moment: exactly one hands over,
/// the others are told it was already collected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_redeeming_one_order_at_once_hand_it_over_once() -> Result<()> {
    let shop = Shop::open(Backend::Sqlite, HubSettings::default()).await?;
    let ids = ["web-4001", "web-4002", "web-4003"];
    let mut placed = Vec::new();
    for id in ids {
        placed.push(shop.ready(id).await?);
    }
    for (id, p) in ids.iter().zip(&placed) {
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..4 {
            let counter = shop.counter.clone();
            let (qr, code) = (qr(p).to_string(), code(p).to_string());
            tasks.spawn(async move {
                let device = format!("counter-{n}");
                if n % 2 == 0 {
                    counter.redeem_qr(&qr, &device).await
                } else {
                    counter.redeem_code(&code, &device).await
                }
            });
        }
        let mut answers = Vec::new();
        while let Some(r) = tasks.join_next().await {
            answers.push(r??);
        }
        let handed: Vec<_> = answers.iter().filter(|(s, _)| *s == 200).collect();
        let refused: Vec<_> = answers
            .iter()
            .filter(|(s, b)| *s == 409 && b["error"] == "already_collected")
            .collect();
        assert_eq!((handed.len(), refused.len()), (1, 3), "{id}: {answers:?}");
        let winner = &handed[0].1["order"]["collected"]["device"];
        for (_, b) in &refused {
            assert_eq!(&b["device"], winner, "{b}");
        }
    }
    shop.vs.agent.api().wait_drained(WAIT).await?;
    for id in ids {
        let hq = shop.hq.wait_status(id, "collected", WAIT).await?;
        assert_eq!(hq_history_count(&hq, "collected"), 1, "{hq}");
        assert!(conflict_kinds(&hq).is_empty(), "{hq}");
    }
    assert_eq!(shop.stock(&shop.a).await?, (94, 0), "three orders of 2");
    shop.close().await
}

/// (d) Handed over, then the agent is killed (-9) and restarted: the order stays collected, and
/// a second redeem is refused with who handed it over, where and when.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_redeem_after_a_kill_9_is_refused_with_who_and_when() -> Result<()> {
    let mut shop = Shop::open(Backend::Sqlite, HubSettings::default()).await?;
    let placed = shop.ready("web-5001").await?;
    let (status, handed) = shop.counter.redeem_qr(qr(&placed), "counter-1").await?;
    assert_eq!(status, 200, "{handed}");
    let collected_at = handed["order"]["collected"]["at"].clone();

    shop.vs.agent.kill9();
    shop.vs.agent.restart().await?;
    // Sessions live in the agent's memory: staff sign in again after a restart.
    shop.counter = PickupCounter::open(&shop.vs).await?;
    for (status, refused) in [
        shop.counter.redeem_qr(qr(&placed), "counter-2").await?,
        shop.counter.redeem_code(code(&placed), "counter-3").await?,
    ] {
        assert_eq!(status, 409, "{refused}");
        assert_eq!(refused["error"], "already_collected", "{refused}");
        assert_eq!(refused["collected_at"], collected_at, "{refused}");
        assert_eq!(refused["collected_by"], STAFF, "{refused}");
        assert_eq!(refused["device"], "counter-1", "{refused}");
        let message = refused["message"].as_str().unwrap();
        assert!(
            message.contains(STAFF) && message.contains("counter-1"),
            "{message}"
        );
    }
    shop.vs.agent.api().wait_drained(WAIT).await?;
    let hq = shop.hq.wait_status("web-5001", "collected", WAIT).await?;
    assert_eq!(hq_history_count(&hq, "collected"), 1, "{hq}");
    assert!(conflict_kinds(&hq).is_empty(), "{hq}");
    assert_eq!(shop.stock(&shop.a).await?, (98, 0));
    shop.close().await
}

/// (d') kill -9 while a redeem is in flight, at a few moments: a hand-over that was answered is
/// collected after the restart; one that was not is either collected (the commit made it, the
/// answer did not) and refused on retry, or still ready and handed over on retry. Either way HQ
/// counts one collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_during_a_redeem_loses_no_answered_hand_over() -> Result<()> {
    let mut shop = Shop::open(Backend::Sqlite, HubSettings::default()).await?;
    let ids = ["web-5101", "web-5102", "web-5103"];
    for (id, delay_ms) in ids.into_iter().zip([0u64, 3, 10]) {
        let placed = shop.ready(id).await?;
        let (counter, token) = (shop.counter.clone(), qr(&placed).to_string());
        let inflight = tokio::spawn(async move { counter.redeem_qr(&token, "counter-1").await });
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        shop.vs.agent.kill9();
        let answered = inflight.await?;
        shop.vs.agent.restart().await?;
        shop.counter = PickupCounter::open(&shop.vs).await?;
        let (_, at_store) = shop.counter.order(id).await?;
        if let Ok((200, _)) = &answered {
            assert_eq!(
                at_store["status"], "collected",
                "{id}: answered, so committed"
            );
        }
        let (status, retry) = shop.counter.redeem_qr(qr(&placed), "counter-2").await?;
        match at_store["status"].as_str() {
            Some("collected") => {
                assert_eq!((status, &retry["device"]), (409, &Value::from("counter-1")))
            }
            Some("ready") => assert_eq!(status, 200, "{id}: {retry}"),
            other => panic!("{id}: {other:?} after the restart ({answered:?})"),
        }
    }
    shop.vs.agent.api().wait_drained(WAIT).await?;
    for id in ids {
        let hq = shop.hq.wait_status(id, "collected", WAIT).await?;
        assert_eq!(hq_history_count(&hq, "collected"), 1, "{hq}");
        assert!(conflict_kinds(&hq).is_empty(), "{hq}");
    }
    assert_eq!(shop.stock(&shop.a).await?, (94, 0));
    shop.close().await
}

/// (e) A genuine token of another store's order is refused at this one (403), and that store's
/// code names no order here (404); neither order moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_store_is_refused() -> Result<()> {
    let shop = Shop::open(Backend::Sqlite, HubSettings::default()).await?;
    shop.vs
        .hub
        .cli(&["store", "add", "S002", "--name", "Quay Street"])?;
    shop.hq
        .stock_catalogue(&["S002"], std::slice::from_ref(&shop.a), 10)
        .await?;
    // Our own order first, so this store holds the hub's pickup key.
    let ours = shop.ready("web-6001").await?;
    let theirs = shop
        .hq
        .place(&order(
            "web-6002",
            "S002",
            &[(&shop.a, 1)],
            now_ms() + 2 * HOUR_MS,
            None,
        ))
        .await?;

    let (status, refused) = shop.counter.redeem_qr(qr(&theirs), "counter-1").await?;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["error"], "wrong_store");
    assert_eq!(refused["store"], "S002");
    let (status, refused) = shop.counter.redeem_code(code(&theirs), "counter-1").await?;
    assert_eq!(status, 404, "codes are salted per store: {refused}");
    let (status, _) = shop.counter.order("web-6002").await?;
    assert_eq!(status, 404, "this store never held the other store's order");

    let (_, still) = shop.counter.order("web-6001").await?;
    assert_eq!(still["status"], "ready");
    let hq_theirs = shop.hq.order("web-6002").await?;
    assert_eq!(hq_history(&hq_theirs), ["placed/hq"], "{hq_theirs}");
    assert_eq!(shop.hq.order("web-6001").await?["status"], "ready");
    // The store's own token still works.
    let (status, _) = shop.counter.redeem_qr(qr(&ours), "counter-1").await?;
    assert_eq!(status, 200);
    shop.close().await
}

/// (f) Tokens past their expiry are refused (410) by QR and by code. An order whose store can
/// tell HQ is expired by the store; one whose store is cut off is expired by the hub's sweep
/// after its grace (1 s here), and the store's word confirms it when the link returns. Either
/// way HQ ends at expired with the stock released, and no conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_refused_and_hq_releases_the_stock() -> Result<()> {
    let shop = Shop::open(Backend::Sqlite, HubSettings::expiring(1)).await?;
    let now = now_ms();
    let mut placed = Vec::new();
    for (id, expires) in [("web-7001", now + 5_000), ("web-7002", now + 7_000)] {
        placed.push(
            shop.hq
                .place(&order(id, "S001", &[(&shop.a, 3)], expires, None))
                .await?,
        );
        shop.counter.wait_status(id, "received", WAIT).await?;
    }
    shop.counter.pick_and_ready("web-7001", "Shelf A1").await?;
    shop.hq.wait_status("web-7001", "ready", WAIT).await?;
    assert_eq!(shop.stock(&shop.a).await?, (100, 6));

    let refused_as_expired = |id: &'static str, p: Value| {
        let counter = shop.counter.clone();
        async move {
            counter.wait_status(id, "expired", WAIT).await?;
            let (status, refused) = counter.redeem_qr(qr(&p), "counter-1").await?;
            assert_eq!(
                (status, &refused["error"]),
                (410, &Value::from("expired")),
                "{id}"
            );
            let (status, refused) = counter.redeem_code(code(&p), "counter-1").await?;
            assert_eq!(
                (status, &refused["error"]),
                (410, &Value::from("expired")),
                "{id}"
            );
            anyhow::Ok(())
        }
    };
    refused_as_expired("web-7001", placed[0].clone()).await?;
    let by_store = shop
        .hq
        .wait_until("web-7001", "HQ to hear the store expired it", WAIT, |o| {
            o["status"] == "expired" && hq_history(o).contains(&"expired/store".to_string())
        })
        .await?;
    assert!(conflict_kinds(&by_store).is_empty(), "{by_store}");

    // The store is cut off before the second order expires: only the hub's sweep can expire it.
    shop.vs.proxy.link_down();
    refused_as_expired("web-7002", placed[1].clone()).await?;
    let by_hub = shop.hq.wait_status("web-7002", "expired", WAIT).await?;
    assert_eq!(
        hq_history(&by_hub).last().map(String::as_str),
        Some("expired/hq"),
        "{by_hub}"
    );
    assert_eq!(shop.stock(&shop.a).await?, (100, 0), "both released");

    shop.vs.proxy.link_up();
    shop.vs.agent.api().wait_drained(WAIT).await?;
    let confirmed = shop
        .hq
        .wait_until("web-7002", "the store's expiry to reach HQ", WAIT, |o| {
            hq_history(o).contains(&"expired/store".to_string())
        })
        .await?;
    assert_eq!(confirmed["status"], "expired", "{confirmed}");
    assert!(conflict_kinds(&confirmed).is_empty(), "{confirmed}");
    assert_eq!(hq_history_count(&confirmed, "collected"), 0);
    assert_eq!(shop.stock(&shop.a).await?, (100, 0), "released once");
    shop.close().await
}

/// (g) Forged, altered and garbage tokens are refused (400 bad_token) and move nothing; the
/// genuine token still works afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_altered_tokens_are_refused() -> Result<()> {
    let shop = Shop::open(Backend::Sqlite, HubSettings::default()).await?;
    let a = shop.ready("web-8001").await?;
    let b = shop.ready("web-8002").await?;
    let parts = |t: &Value| -> Vec<String> { qr(t).split('.').map(str::to_string).collect() };
    let (pa, pb) = (parts(&a), parts(&b));
    let flip = |s: &str, i: usize| -> String {
        let mut c: Vec<char> = s.chars().collect();
        c[i] = if c[i] == 'A' { 'B' } else { 'A' };
        c.into_iter().collect()
    };
    let forged = [
        // b's claims under a's signature.
        format!("{}.{}.{}", pa[0], pb[1], pa[2]),
        // One character of the claims changed.
        format!("{}.{}.{}", pa[0], flip(&pa[1], pa[1].len() / 2), pa[2]),
        // One character of the signature changed.
        format!("{}.{}.{}", pa[0], pa[1], flip(&pa[2], 10)),
        format!("{}.{}", pa[0], pa[1]),
        "AISLE1.x.y".to_string(),
        "https://example.com/not-a-pickup".to_string(),
    ];
    for token in &forged {
        let (status, refused) = shop.counter.redeem_qr(token, "counter-1").await?;
        assert_eq!(status, 400, "{token}: {refused}");
        assert_eq!(refused["error"], "bad_token", "{token}: {refused}");
    }
    let (status, refused) = shop.counter.redeem_code("ABC-!", "counter-1").await?;
    assert_eq!(
        (status, &refused["error"]),
        (400, &Value::from("bad_token"))
    );

    for id in ["web-8001", "web-8002"] {
        let (_, o) = shop.counter.order(id).await?;
        assert_eq!(o["status"], "ready", "{o}");
        assert_eq!(shop.hq.order(id).await?["status"], "ready");
    }
    let (status, handed) = shop.counter.redeem_qr(qr(&a), "counter-1").await?;
    assert_eq!(status, 200, "{handed}");
    let hq = shop.hq.wait_status("web-8001", "collected", WAIT).await?;
    assert_eq!(hq_history_count(&hq, "collected"), 1);
    assert_eq!(shop.hq.order("web-8002").await?["status"], "ready");
    shop.close().await
}

/// A typed code that looks valid (8 Crockford characters) but is random.
fn random_code() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let c: String = (0..8)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{}-{}", &c[..4], &c[4..])
}

/// (h) Guessing fallback codes: a device is stopped after 5 wrong codes, the whole store after
/// 30 (a guesser can name any device), with 429 and retry_after_s, and without the code being
/// checked, so even the right code is turned away meanwhile. No order is collected. Guessing
/// PINs at sign-in is stopped the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_codes_is_stopped_and_collects_nothing() -> Result<()> {
    let shop = Shop::open(Backend::Sqlite, HubSettings::default()).await?;
    let placed = shop.ready("web-9001").await?;
    let limited = |answer: &(u16, Value)| {
        answer.0 == 429
            && answer.1["error"] == "rate_limited"
            && answer.1["retry_after_s"].as_u64().is_some_and(|s| s > 0)
    };

    for _ in 0..5 {
        let (status, body) = shop
            .counter
            .redeem_code(&random_code(), "counter-1")
            .await?;
        assert_eq!(status, 404, "{body}");
    }
    let next = shop
        .counter
        .redeem_code(&random_code(), "counter-1")
        .await?;
    assert!(limited(&next), "{next:?}");
    let right = shop.counter.redeem_code(code(&placed), "counter-1").await?;
    assert!(limited(&right), "not even checked: {right:?}");

    // Other device names: 25 more wrong codes fill the store-wide limit of 30.
    for n in 0..25 {
        let (status, body) = shop
            .counter
            .redeem_code(&random_code(), &format!("guess-{}", n / 5))
            .await?;
        assert_eq!(status, 404, "guess {n}: {body}");
    }
    let fresh = shop.counter.redeem_code(code(&placed), "counter-9").await?;
    assert!(limited(&fresh), "store-wide: {fresh:?}");

    let (_, o) = shop.counter.order("web-9001").await?;
    assert_eq!(o["status"], "ready", "{o}");
    assert!(o["collected"].is_null());
    shop.vs.agent.api().wait_drained(WAIT).await?;
    let hq = shop.hq.order("web-9001").await?;
    assert_eq!(hq["status"], "ready", "{hq}");
    assert_eq!(hq_history_count(&hq, "collected"), 0);

    let metrics = reqwest::get(format!("{}/metrics", shop.vs.agent.url()))
        .await?
        .text()
        .await?;
    let count = |outcome: &str| -> u64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("aisle_pickup_redeem_total")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    assert_eq!(count("not_found"), 30, "{metrics}");
    assert_eq!(count("rate_limited"), 3, "{metrics}");
    assert_eq!(count("collected"), 0, "{metrics}");

    // PINs: five wrong ones from this address, then even the right one waits.
    for _ in 0..5 {
        let (status, _) = sign_in_raw(&shop.vs.agent.url(), "0000").await?;
        assert_eq!(status, 401);
    }
    let pin = sign_in_raw(&shop.vs.agent.url(), STAFF_PIN).await?;
    assert!(limited(&pin), "{pin:?}");
    shop.close().await
}
