//! Click-and-collect at the store, through the agent's HTTP API: orders, keys and cancellations
//! arrive as changefeed changes (applied as the downloader applies a page), staff sign in with a
//! PIN, pick, mark ready and redeem real Ed25519-signed QR tokens and fallback codes. Every test
//! ends with a ledger verify (chain + replay).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aisle_agent::clock::ManualClock;
use aisle_agent::config::{AgentConfig, ClockConfig, PickupSettings, StaffConfig, SyncConfig};
use aisle_agent::ledger::verify;
use aisle_agent::{Agent, AgentHandle};
use aisle_protocol::pickup::{
    FallbackCode, PickupCancellation, PickupClaims, PickupKey, PickupOrder, PickupOrderLine,
    code_digest,
};
use aisle_protocol::sync::{Change, ChangeBody, EventBody, LedgerEvent, StockAdjustment};
use aisle_protocol::{EventId, Gtin, OrderId, StoreId, UtcMillis};
use common::{T0, gtin};
use ed25519_dalek::SigningKey;
use reqwest::StatusCode;
use serde_json::{Value, json};

const STORE: &str = "S001";
const HOUR: i64 = 3_600_000;
/// Tokens and orders expire two days after T0.
const EXPIRES: i64 = T0 + 48 * HOUR;

fn hub_key() -> SigningKey {
    SigningKey::from_bytes(&[42u8; 32])
}

fn store() -> StoreId {
    StoreId::parse(STORE).unwrap()
}

fn cheap_hash(pin: &str) -> String {
    let params = argon2::Params::new(8, 1, 1, None).unwrap();
    aisle_agent::pickup::staff::hash_pin_with(pin, params).unwrap()
}

/// A port nothing listens on: the hub is down (changes are applied directly).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn config(dir: &Path) -> AgentConfig {
    AgentConfig {
        store: store(),
        hub_url: format!("http://127.0.0.1:{}", closed_port()),
        credential: format!("gw-S001-1a2b3c4d.{}", "ab".repeat(32)),
        gateway: None,
        status_panel: None,
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        sync: SyncConfig {
            backoff_base_ms: 50,
            backoff_cap_ms: 500,
            ..SyncConfig::default()
        },
        clock: ClockConfig::default(),
        labels: None,
        checkout: None,
        footfall: None,
        pickup: Some(PickupSettings {
            staff: vec![
                StaffConfig {
                    name: "Ana".into(),
                    pin_hash: cheap_hash("1234"),
                    role: aisle_agent::config::StaffRole::Staff,
                },
                StaffConfig {
                    name: "Bo".into(),
                    pin_hash: cheap_hash("5678"),
                    role: aisle_agent::config::StaffRole::Staff,
                },
            ],
        }),
    }
}

struct Store {
    dir: tempfile::TempDir,
    config: AgentConfig,
    clock: Arc<ManualClock>,
    agent: Option<AgentHandle>,
    base: String,
    http: reqwest::Client,
    /// Changefeed seqs handed out so far.
    feed: u64,
}

impl Store {
    async fn start() -> Store {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let clock = ManualClock::new(T0);
        let agent = Agent::start(config.clone(), clock.clone()).await.unwrap();
        let base = format!("http://{}", agent.local_addr());
        let mut s = Store {
            dir,
            config,
            clock,
            agent: Some(agent),
            base,
            http: reqwest::Client::new(),
            feed: 0,
        };
        // The hub's key first, and some stock to hand over.
        s.deliver(vec![
            ChangeBody::PickupKey(PickupKey::of(1, &hub_key().verifying_key())),
            stock(gtin(1), 10),
            stock(gtin(2), 10),
            stock(gtin(3), 10),
        ])
        .await;
        s
    }

    fn agent(&self) -> &AgentHandle {
        self.agent.as_ref().unwrap()
    }

    /// Kills the agent (no clean shutdown: tasks aborted) and starts a new one on the same data
    /// dir, as after kill -9.
    async fn crash_and_restart(&mut self) {
        drop(self.agent.take());
        // Our idle keep-alive connections would keep the dead server's state (and its ledger
        // handle) alive: a new client, as a new process would have.
        self.http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let agent = loop {
            match Agent::start(self.config.clone(), self.clock.clone()).await {
                Ok(a) => break a,
                Err(e) => {
                    assert!(Instant::now() < deadline, "restart failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        self.base = format!("http://{}", agent.local_addr());
        self.agent = Some(agent);
    }

    /// Applies changes as the downloader applies a changefeed page (with its cursor).
    async fn deliver(&mut self, bodies: Vec<ChangeBody>) {
        let changes: Vec<Change> = bodies
            .into_iter()
            .map(|body| {
                self.feed += 1;
                Change {
                    seq: self.feed,
                    body,
                }
            })
            .collect();
        self.agent()
            .ledger()
            .apply_changes(changes, Some(self.feed), None)
            .await
            .unwrap();
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut rq = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            rq = rq.bearer_auth(t);
        }
        if let Some(b) = body {
            rq = rq.json(&b);
        }
        let r = rq.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {text}: {e}"));
        (status, v)
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    async fn sign_in(&self, pin: &str) -> String {
        let (s, v) = self
            .send(
                reqwest::Method::POST,
                "/v1/staff/sign-in",
                None,
                Some(json!({ "pin": pin })),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    async fn redeem(&self, token: &str, proof: Value) -> (StatusCode, Value) {
        self.post("/v1/pickups/redeem", token, proof).await
    }

    /// Picks and readies an order as Ana.
    async fn make_ready(&self, token: &str, order: &str, missing: &[Gtin]) -> Value {
        let (s, v) = self
            .post(&format!("/v1/pickups/{order}/pick"), token, json!({}))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let missing: Vec<String> = missing.iter().map(|g| g.to_string()).collect();
        let (s, v) = self
            .post(
                &format!("/v1/pickups/{order}/ready"),
                token,
                json!({ "location": "Shelf B3", "missing": missing }),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    async fn stock(&self, g: Gtin) -> i64 {
        self.agent().ledger().stock(g).await.unwrap()
    }

    async fn events(&self) -> Vec<LedgerEvent> {
        self.agent().ledger().events_after(0, 10_000).await.unwrap()
    }

    async fn pickup_events(&self, order: &str) -> Vec<EventBody> {
        self.events()
            .await
            .into_iter()
            .map(|e| e.body)
            .filter(|b| pickup_order_of(b) == Some(order))
            .collect()
    }

    /// Verifies the ledger (chain + replay) and shuts the agent down.
    async fn finish(mut self) {
        let report = verify(self.dir.path()).unwrap();
        assert!(report.pickup_orders > 0, "{report}");
        if let Some(a) = self.agent.take() {
            a.shutdown().await;
        }
        verify(self.dir.path()).unwrap();
    }
}

fn pickup_order_of(b: &EventBody) -> Option<&str> {
    match b {
        EventBody::PickupReceived { order_id }
        | EventBody::PickupPicking { order_id, .. }
        | EventBody::PickupReady { order_id, .. }
        | EventBody::PickupCollected { order_id, .. }
        | EventBody::PickupCancelApplied { order_id, .. }
        | EventBody::PickupCancelConflict { order_id, .. }
        | EventBody::PickupExpired { order_id } => Some(order_id.as_str()),
        _ => None,
    }
}

fn stock(g: Gtin, delta: i64) -> ChangeBody {
    ChangeBody::StockAdjustment(StockAdjustment {
        adjustment_id: EventId::from_bytes(rand::random()),
        gtin: g,
        delta,
        reason: "goods received".into(),
    })
}

/// An order of `lines` (gtin index, qty) with its fallback code from `seed`.
fn order(id: &str, lines: &[(u64, u32)], seed: u8) -> (ChangeBody, FallbackCode) {
    order_expiring(id, lines, seed, EXPIRES)
}

fn order_expiring(
    id: &str,
    lines: &[(u64, u32)],
    seed: u8,
    expires_at: i64,
) -> (ChangeBody, FallbackCode) {
    let code = FallbackCode::from_bits([seed, 0x5a, seed ^ 0x77, 0x13, seed]);
    let o = PickupOrder {
        order_id: OrderId::parse(id).unwrap(),
        lines: lines
            .iter()
            .map(|&(n, qty)| PickupOrderLine {
                gtin: gtin(n),
                qty,
                name: format!("Oolong tea #{n}"),
            })
            .collect(),
        placed_at: UtcMillis(T0 - HOUR),
        pickup_by: UtcMillis(T0 + 2 * HOUR),
        expires_at: UtcMillis(expires_at),
        code_digest: code_digest(&store(), &code),
        key_id: 1,
    };
    (ChangeBody::PickupOrder(o), code)
}

fn qr_for(order: &str) -> String {
    qr_with(order, STORE, EXPIRES, 1, &hub_key())
}

fn qr_with(order: &str, store: &str, expires_at: i64, key_id: u32, key: &SigningKey) -> String {
    PickupClaims {
        order: OrderId::parse(order).unwrap(),
        store: StoreId::parse(store).unwrap(),
        issued_at: UtcMillis(T0 - HOUR),
        expires_at: UtcMillis(expires_at),
        key_id,
    }
    .sign(key)
}

fn cancel(order: &str, n: u8) -> (ChangeBody, EventId) {
    let cancel_id = EventId::from_bytes([n; 16]);
    (
        ChangeBody::PickupCancelled(PickupCancellation {
            order_id: OrderId::parse(order).unwrap(),
            cancel_id,
            at: UtcMillis(T0),
        }),
        cancel_id,
    )
}

fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"], code, "{}", got.1);
    assert!(got.1["message"].is_string(), "{}", got.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_received_picking_ready_collected_decrements_stock() {
    let mut s = Store::start().await;
    let (o, _) = order("web-1001", &[(1, 2), (2, 1)], 1);
    s.deliver(vec![o.clone()]).await;
    // A changefeed replay changes nothing.
    s.deliver(vec![o]).await;
    assert_eq!(s.pickup_events("web-1001").await.len(), 1);

    let ana = s.sign_in("1234").await;
    let (st, list) = s.get("/v1/pickups", &ana).await;
    assert_eq!(st, StatusCode::OK);
    let orders = list["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 1);
    let o = &orders[0];
    assert_eq!(o["order_id"], "web-1001");
    assert_eq!(o["status"], "received");
    assert_eq!(o["placed_at"], "2025-12-31T23:00:00Z");
    assert_eq!(o["pickup_by"], "2026-01-01T02:00:00Z");
    assert_eq!(o["expires_at"], "2026-01-03T00:00:00Z");
    assert_eq!(o["lines"][0]["gtin"], gtin(1).to_string());
    assert_eq!(o["lines"][0]["qty"], 2);
    assert_eq!(o["lines"][0]["shelf"], Value::Null);
    assert_eq!(o["lines"][0]["missing"], false);
    assert_eq!(o["lines"][1]["name"], "Oolong tea #2");
    assert_eq!(o["location"], Value::Null);
    assert_eq!(o["collected"], Value::Null);
    assert_eq!(o["history"][0]["kind"], "received");

    let (st, v) = s.post("/v1/pickups/web-1001/pick", &ana, json!({})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "picking");
    assert_eq!(v["picking_by"], "Ana");
    // Picking again is idempotent: no second event.
    let (st, _) = s.post("/v1/pickups/web-1001/pick", &ana, json!({})).await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = s
        .post(
            "/v1/pickups/web-1001/ready",
            &ana,
            json!({ "location": "Shelf B3" }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "ready");
    assert_eq!(v["location"], "Shelf B3");
    // Picking a ready order is a conflict naming its status.
    let got = s.post("/v1/pickups/web-1001/pick", &ana, json!({})).await;
    assert_error(&got, StatusCode::CONFLICT, "conflict");
    assert_eq!(got.1["status"], "ready");
    // Re-marking ready with a new location is allowed.
    let (st, v) = s
        .post(
            "/v1/pickups/web-1001/ready",
            &ana,
            json!({ "location": "Counter bin 4" }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["location"], "Counter bin 4");
    let (_, ready_list) = s.get("/v1/pickups?status=ready", &ana).await;
    assert_eq!(ready_list["orders"].as_array().unwrap().len(), 1);

    let before = s.agent().ledger().view().last_seq;
    let (st, v) = s
        .redeem(
            &ana,
            json!({ "qr": qr_for("web-1001"), "device": "counter-1" }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["hand_over"], true);
    assert_eq!(v["order"]["status"], "collected");
    let c = &v["order"]["collected"];
    assert_eq!(c["device"], "counter-1");
    assert_eq!(c["staff"], "Ana");
    assert_eq!(c["method"], "qr");
    assert_eq!(c["partial"], false);
    assert_eq!(c["at"], "2026-01-01T00:00:00Z");
    // Committed before the answer: the event is in the ledger now.
    assert_eq!(s.agent().ledger().view().last_seq, before + 1);
    assert_eq!(s.stock(gtin(1)).await, 8);
    assert_eq!(s.stock(gtin(2)).await, 9);
    let kinds: Vec<&str> = v["order"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["received", "picking", "ready", "ready", "collected"]
    );
    assert_eq!(v["order"]["history"][1]["by"], "Ana");
    assert_eq!(v["order"]["history"][4]["by"], "Ana");

    // The outbox holds the protocol events, exactly as the hub reads them.
    let evs = s.pickup_events("web-1001").await;
    assert_eq!(evs.len(), 5, "{evs:?}");
    assert!(matches!(&evs[1], EventBody::PickupPicking { staff, .. } if staff == "Ana"));
    assert!(matches!(
        &evs[4],
        EventBody::PickupCollected { device, staff: Some(st), partial: false, .. }
            if device == "counter-1" && st == "Ana"
    ));
    // The upload body is the plain protocol event: the order's details stay in the ledger.
    let received = s
        .events()
        .await
        .into_iter()
        .find(|e| matches!(e.body, EventBody::PickupReceived { .. }))
        .unwrap();
    let up = serde_json::to_value(&received).unwrap();
    assert_eq!(up["body"]["type"], "pickup_received");
    assert!(up["body"].get("order").is_none(), "{up}");

    let (_, open) = s.get("/v1/pickups", &ana).await;
    assert!(open["orders"].as_array().unwrap().is_empty());
    let (_, done) = s.get("/v1/pickups?status=collected", &ana).await;
    assert_eq!(done["orders"][0]["order_id"], "web-1001");
    let (st, one) = s.get("/v1/pickups/web-1001", &ana).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(one, v["order"]);
    assert_eq!(s.agent().pickup_metrics().redeem_count("collected"), 1);
    let metrics = s
        .http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("aisle_pickup_redeem_total{outcome=\"collected\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("aisle_pickup_orders{status=\"collected\"} 1"),
        "{metrics}"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_redeem_is_refused_with_who_and_when_even_after_a_crash() {
    let mut s = Store::start().await;
    s.clock.set(T0 + 14 * HOUR + 3 * 60_000);
    let (o, code) = order("web-2002", &[(1, 1)], 2);
    s.deliver(vec![o]).await;
    let ana = s.sign_in("1234").await;
    s.make_ready(&ana, "web-2002", &[]).await;
    let (st, v) = s
        .redeem(
            &ana,
            json!({ "code": code.to_string().to_lowercase(), "device": "counter-1" }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["order"]["collected"]["method"], "code");

    let check = |got: (StatusCode, Value)| {
        assert_error(&got, StatusCode::CONFLICT, "already_collected");
        assert_eq!(got.1["collected_at"], "2026-01-01T14:03:00Z", "{}", got.1);
        assert_eq!(got.1["collected_by"], "Ana");
        assert_eq!(got.1["device"], "counter-1");
        assert_eq!(
            got.1["message"], "collected at 14:03 UTC by Ana at counter-1",
            "{}",
            got.1
        );
    };
    let bo = s.sign_in("5678").await;
    check(
        s.redeem(
            &bo,
            json!({ "qr": qr_for("web-2002"), "device": "counter-2" }),
        )
        .await,
    );
    check(s.redeem(&bo, json!({ "code": code.to_string() })).await);

    // kill -9 and a restart on the same ledger: sessions are gone, the collection is not.
    s.crash_and_restart().await;
    let (st, _) = s.get("/v1/pickups", &bo).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let bo = s.sign_in("5678").await;
    check(s.redeem(&bo, json!({ "qr": qr_for("web-2002") })).await);
    assert_eq!(s.stock(gtin(1)).await, 9, "decremented once");
    let collected = s
        .pickup_events("web-2002")
        .await
        .into_iter()
        .filter(|e| matches!(e, EventBody::PickupCollected { .. }))
        .count();
    assert_eq!(collected, 1);
    assert_eq!(
        s.agent().pickup_metrics().redeem_count("already_collected"),
        1,
        "counted since the restart"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_redeems_exactly_one_wins() {
    let mut s = Store::start().await;
    let mut orders = Vec::new();
    for i in 0..5u8 {
        let id = format!("web-30{i:02}");
        let (o, code) = order(&id, &[(3, 1)], 30 + i);
        orders.push((id, code));
        s.deliver(vec![o]).await;
    }
    let ana = s.sign_in("1234").await;
    let bo = s.sign_in("5678").await;
    for (id, code) in &orders {
        s.make_ready(&ana, id, &[]).await;
        // One counter scans the QR while another types the code, at the same moment.
        let (a, b) = tokio::join!(
            s.redeem(&ana, json!({ "qr": qr_for(id), "device": "counter-1" })),
            s.redeem(
                &bo,
                json!({ "code": code.to_string(), "device": "counter-2" })
            ),
        );
        let mut statuses = [a.0, b.0];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::CONFLICT],
            "{a:?} {b:?}"
        );
        let (winner, loser) = if a.0 == StatusCode::OK {
            (a, b)
        } else {
            (b, a)
        };
        assert_eq!(loser.1["error"], "already_collected");
        assert_eq!(
            loser.1["collected_by"],
            winner.1["order"]["collected"]["staff"]
        );
    }
    assert_eq!(s.stock(gtin(3)).await, 5, "one unit per order");
    assert_eq!(s.agent().pickup_metrics().redeem_count("collected"), 5);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_store_expiry_signature_and_key() {
    let mut s = Store::start().await;
    let (o, _) = order("web-4004", &[(1, 1)], 4);
    s.deliver(vec![o]).await;
    let ana = s.sign_in("1234").await;

    // Not ready yet.
    let got = s.redeem(&ana, json!({ "qr": qr_for("web-4004") })).await;
    assert_error(&got, StatusCode::CONFLICT, "not_ready");
    assert_eq!(got.1["status"], "received");
    s.make_ready(&ana, "web-4004", &[]).await;

    let got = s
        .redeem(
            &ana,
            json!({ "qr": qr_with("web-4004", "S002", EXPIRES, 1, &hub_key()) }),
        )
        .await;
    assert_error(&got, StatusCode::FORBIDDEN, "wrong_store");
    let got = s
        .redeem(
            &ana,
            json!({ "qr": qr_with("web-4004", STORE, T0 - 1, 1, &hub_key()) }),
        )
        .await;
    assert_error(&got, StatusCode::GONE, "expired");
    // Forged: signed with another key under the store's key id.
    let forged = qr_with(
        "web-4004",
        STORE,
        EXPIRES,
        1,
        &SigningKey::from_bytes(&[9; 32]),
    );
    assert_error(
        &s.redeem(&ana, json!({ "qr": forged })).await,
        StatusCode::BAD_REQUEST,
        "bad_token",
    );
    // Altered: another order's claims spliced onto this token's signature.
    let good = qr_for("web-4004");
    let other = qr_for("web-4005");
    let (head, _) = other.rsplit_once('.').unwrap();
    let (_, sig) = good.rsplit_once('.').unwrap();
    assert_error(
        &s.redeem(&ana, json!({ "qr": format!("{head}.{sig}") }))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_token",
    );
    for garbage in ["", "hello", "AISLE1.x.y", &"A".repeat(600), "AISLE1...."] {
        assert_error(
            &s.redeem(&ana, json!({ "qr": garbage })).await,
            StatusCode::BAD_REQUEST,
            "bad_token",
        );
    }
    assert_error(
        &s.redeem(&ana, json!({ "code": "ABCD-EFGU" })).await,
        StatusCode::BAD_REQUEST,
        "bad_token",
    );
    // A key this store does not have (yet).
    let got = s
        .redeem(
            &ana,
            json!({ "qr": qr_with("web-4004", STORE, EXPIRES, 7, &hub_key()) }),
        )
        .await;
    assert_error(&got, StatusCode::SERVICE_UNAVAILABLE, "no_key");
    // A valid token for an order this store does not hold.
    assert_error(
        &s.redeem(&ana, json!({ "qr": qr_for("web-4005") })).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // Both or neither proof, unknown fields, a bad device name: bad requests.
    for body in [
        json!({}),
        json!({ "qr": good, "code": "ABCD-EFGH" }),
        json!({ "qr": good, "extra": 1 }),
        json!({ "qr": good, "device": "" }),
        json!({ "qr": good, "device": "x".repeat(65) }),
    ] {
        assert_error(
            &s.redeem(&ana, body).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
    }
    // Nothing above touched the order or the stock.
    let (_, v) = s.get("/v1/pickups/web-4004", &ana).await;
    assert_eq!(v["status"], "ready");
    assert_eq!(s.stock(gtin(1)).await, 10);

    // An order expired on hub time answers 410 even before the sweeper runs.
    s.clock.set(EXPIRES);
    let ana = s.sign_in("1234").await;
    assert_error(
        &s.redeem(&ana, json!({ "qr": good })).await,
        StatusCode::GONE,
        "expired",
    );
    let m = s.agent().pickup_metrics();
    assert_eq!(m.redeem_count("wrong_store"), 1);
    assert_eq!(m.redeem_count("expired"), 2);
    assert_eq!(m.redeem_count("bad_token"), 8);
    assert_eq!(m.redeem_count("no_key"), 1);
    assert_eq!(m.redeem_count("not_found"), 1);
    assert_eq!(m.redeem_count("not_ready"), 1);
    assert_eq!(m.redeem_count("collected"), 0);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_codes_is_stopped_by_rate_limits_and_collects_nothing() {
    let mut s = Store::start().await;
    let (o, code) = order("web-5005", &[(1, 1)], 5);
    s.deliver(vec![o]).await;
    let ana = s.sign_in("1234").await;
    s.make_ready(&ana, "web-5005", &[]).await;
    let wrong = |n: u8| FallbackCode::from_bits([n, n, n, n, 0xee]).to_string();

    // Five wrong codes from one device ...
    for n in 0..5u8 {
        assert_error(
            &s.redeem(&ana, json!({ "code": wrong(n), "device": "counter-1" }))
                .await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
    // ... and that device is refused, even with the right code, without checking it.
    let got = s
        .redeem(
            &ana,
            json!({ "code": code.to_string(), "device": "counter-1" }),
        )
        .await;
    assert_error(&got, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let retry = got.1["retry_after_s"].as_u64().unwrap();
    assert!((1..=600).contains(&retry), "{retry}");

    // Store-wide: 30 failures across devices stop every device.
    for d in 2..=7u8 {
        for n in 0..5u8 {
            let got = s
                .redeem(
                    &ana,
                    json!({ "code": wrong(n + 10 * d), "device": format!("counter-{d}") }),
                )
                .await;
            if d == 7 {
                assert_error(&got, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
            } else {
                assert_error(&got, StatusCode::NOT_FOUND, "not_found");
            }
        }
    }
    let got = s
        .redeem(
            &ana,
            json!({ "code": code.to_string(), "device": "counter-9" }),
        )
        .await;
    assert_error(&got, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let (_, v) = s.get("/v1/pickups/web-5005", &ana).await;
    assert_eq!(v["status"], "ready", "nothing collected");
    assert_eq!(s.stock(gtin(1)).await, 10);
    assert_eq!(s.agent().pickup_metrics().redeem_count("collected"), 0);
    assert_eq!(s.agent().pickup_metrics().redeem_count("rate_limited"), 7);

    // QR scans are not codes: still verified while codes are locked out.
    // Ten minutes later the right code works.
    s.clock.advance(10 * 60_000 + 1);
    let (st, v) = s
        .redeem(
            &ana,
            json!({ "code": code.to_string(), "device": "counter-1" }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_gets_ten_attempts_per_ten_minutes() {
    let mut s = Store::start().await;
    let (o, _) = order("web-5105", &[(1, 1)], 51);
    s.deliver(vec![o]).await;
    let ana = s.sign_in("1234").await;
    for _ in 0..10 {
        assert_error(
            &s.redeem(&ana, json!({ "qr": qr_for("web-5105") })).await,
            StatusCode::CONFLICT,
            "not_ready",
        );
    }
    s.make_ready(&ana, "web-5105", &[]).await;
    assert_error(
        &s.redeem(&ana, json!({ "qr": qr_for("web-5105") })).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    );
    s.clock.advance(10 * 60_000);
    let (st, _) = s.redeem(&ana, json!({ "qr": qr_for("web-5105") })).await;
    assert_eq!(st, StatusCode::OK);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hq_cancel_before_the_redeem_wins() {
    let mut s = Store::start().await;
    let (o, code) = order("web-6006", &[(1, 1)], 6);
    s.deliver(vec![o]).await;
    let ana = s.sign_in("1234").await;
    s.make_ready(&ana, "web-6006", &[]).await;
    let (c, cancel_id) = cancel("web-6006", 6);
    s.deliver(vec![c.clone()]).await;
    // The same cancellation again (a replay) changes nothing.
    s.deliver(vec![c]).await;

    let (_, v) = s.get("/v1/pickups/web-6006", &ana).await;
    assert_eq!(v["status"], "cancelled");
    assert_eq!(
        v["history"].as_array().unwrap().last().unwrap()["kind"],
        "cancelled"
    );
    let got = s.redeem(&ana, json!({ "qr": qr_for("web-6006") })).await;
    assert_error(&got, StatusCode::CONFLICT, "cancelled");
    let got = s.redeem(&ana, json!({ "code": code.to_string() })).await;
    assert_error(&got, StatusCode::CONFLICT, "cancelled");
    assert_error(
        &s.post(
            "/v1/pickups/web-6006/ready",
            &ana,
            json!({ "location": "B1" }),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    );
    let evs = s.pickup_events("web-6006").await;
    let applied: Vec<_> = evs
        .iter()
        .filter(
            |e| matches!(e, EventBody::PickupCancelApplied { cancel_id: c, .. } if *c == cancel_id),
        )
        .collect();
    assert_eq!(applied.len(), 1, "{evs:?}");
    assert!(
        !evs.iter()
            .any(|e| matches!(e, EventBody::PickupCollected { .. }))
    );
    assert_eq!(s.stock(gtin(1)).await, 10);
    let (_, cancelled) = s.get("/v1/pickups?status=cancelled", &ana).await;
    assert_eq!(cancelled["orders"].as_array().unwrap().len(), 1);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeem_before_the_hq_cancel_stands_and_the_cancel_is_a_conflict() {
    let mut s = Store::start().await;
    let (o, _) = order("web-7007", &[(2, 3)], 7);
    s.deliver(vec![o]).await;
    let ana = s.sign_in("1234").await;
    s.make_ready(&ana, "web-7007", &[]).await;
    let (st, v) = s
        .redeem(
            &ana,
            json!({ "qr": qr_for("web-7007"), "device": "counter-1" }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let acked = s.agent().ledger().view().last_seq;
    let (c, cancel_id) = cancel("web-7007", 7);
    s.deliver(vec![c.clone()]).await;
    s.deliver(vec![c]).await;

    let (_, v) = s.get("/v1/pickups/web-7007", &ana).await;
    assert_eq!(v["status"], "collected", "the collection stands");
    assert_eq!(
        v["history"].as_array().unwrap().last().unwrap()["kind"],
        "cancel_conflict"
    );
    // In the outbox (after everything before it), once.
    let outbox: Vec<LedgerEvent> = s.agent().ledger().events_after(acked, 100).await.unwrap();
    let conflicts: Vec<&LedgerEvent> = outbox
        .iter()
        .filter(|e| matches!(e.body, EventBody::PickupCancelConflict { .. }))
        .collect();
    assert_eq!(conflicts.len(), 1, "{outbox:?}");
    let EventBody::PickupCancelConflict {
        order_id,
        cancel_id: c,
        collected_at,
        collected_by,
    } = &conflicts[0].body
    else {
        panic!("not a conflict: {:?}", conflicts[0])
    };
    assert_eq!(order_id.as_str(), "web-7007");
    assert_eq!(*c, cancel_id);
    assert_eq!(*collected_at, UtcMillis(T0));
    assert_eq!(collected_by, "Ana");
    assert!(s.agent().ledger().view().outbox_depth() > 0);
    assert_eq!(s.stock(gtin(2)).await, 7);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_expires_open_orders_on_hub_time() {
    let mut s = Store::start().await;
    let (soon, _) = order_expiring("web-8008", &[(1, 1)], 8, T0 + 3 * HOUR);
    let (later, _) = order("web-8009", &[(1, 1)], 9);
    s.deliver(vec![soon, later]).await;
    let ana = s.sign_in("1234").await;
    s.make_ready(&ana, "web-8008", &[]).await;

    s.clock.set(T0 + 3 * HOUR);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = s.get("/v1/pickups/web-8008", &ana).await;
        if v["status"] == "expired" {
            break;
        }
        assert!(Instant::now() < deadline, "not expired: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let evs = s.pickup_events("web-8008").await;
    assert!(
        matches!(evs.last(), Some(EventBody::PickupExpired { .. })),
        "{evs:?}"
    );
    let (_, v) = s.get("/v1/pickups/web-8009", &ana).await;
    assert_eq!(v["status"], "received", "not due yet");
    assert_error(
        &s.redeem(
            &ana,
            json!({ "qr": qr_with("web-8008", STORE, EXPIRES, 1, &hub_key()) }),
        )
        .await,
        StatusCode::GONE,
        "expired",
    );
    // A cancel for an expired order changes nothing.
    let (c, _) = cancel("web-8008", 8);
    s.deliver(vec![c]).await;
    assert_eq!(s.pickup_events("web-8008").await.len(), evs.len());
    let (_, v) = s.get("/v1/pickups?status=expired", &ana).await;
    assert_eq!(v["orders"][0]["order_id"], "web-8008");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_with_missing_lines_collects_partially() {
    let mut s = Store::start().await;
    let (o, code) = order("web-9009", &[(2, 2), (1, 1), (3, 4)], 19);
    s.deliver(vec![o]).await;
    let ana = s.sign_in("1234").await;
    // The pick list comes sorted by GTIN (no shelf bindings yet).
    let (_, v) = s.get("/v1/pickups/web-9009", &ana).await;
    let gtins: Vec<&str> = v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["gtin"].as_str().unwrap())
        .collect();
    let mut sorted = gtins.clone();
    sorted.sort();
    assert_eq!(gtins, sorted);

    let ready = |missing: Vec<String>| json!({ "location": "Shelf C1", "missing": missing });
    let all = vec![
        gtin(1).to_string(),
        gtin(2).to_string(),
        gtin(3).to_string(),
    ];
    for bad in [
        ready(all),
        ready(vec![gtin(4).to_string()]),
        ready(vec!["12345".into()]),
        json!({ "location": "" }),
        json!({ "location": "bin\n1" }),
        json!({ "location": "x".repeat(65) }),
    ] {
        let got = s
            .post("/v1/pickups/web-9009/ready", &ana, bad.clone())
            .await;
        assert_eq!(got.0, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {}", got.1);
    }
    let v = s.make_ready(&ana, "web-9009", &[gtin(3)]).await;
    let missing: Vec<bool> = v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["missing"].as_bool().unwrap())
        .collect();
    assert_eq!(missing, [false, false, true]);

    let (st, v) = s
        .redeem(
            &ana,
            json!({ "code": code.to_string(), "device": "counter-1" }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["order"]["status"], "partially_collected");
    assert_eq!(v["order"]["collected"]["partial"], true);
    assert_eq!(s.stock(gtin(1)).await, 9);
    assert_eq!(s.stock(gtin(2)).await, 8);
    assert_eq!(
        s.stock(gtin(3)).await,
        10,
        "the missing line stays in stock"
    );
    let evs = s.pickup_events("web-9009").await;
    assert!(matches!(
        &evs[2],
        EventBody::PickupReady { missing, .. } if missing == &vec![gtin(3)]
    ));
    assert!(matches!(
        evs.last(),
        Some(EventBody::PickupCollected { partial: true, .. })
    ));
    let (_, v) = s.get("/v1/pickups?status=collected", &ana).await;
    assert_eq!(v["orders"][0]["order_id"], "web-9009");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_wrong_pin_is_401_and_five_of_them_lock_the_address_out() {
    let mut s = Store::start().await;
    let (o, _) = order("web-1100", &[(1, 1)], 11);
    s.deliver(vec![o]).await;
    let sign_in = |pin: &str| {
        s.send(
            reqwest::Method::POST,
            "/v1/staff/sign-in",
            None,
            Some(json!({ "pin": pin })),
        )
    };
    for _ in 0..5 {
        assert_error(
            &sign_in("9999").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
    }
    // Locked out, even with the right PIN.
    let got = sign_in("1234").await;
    assert_error(&got, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(got.1["retry_after_s"].as_u64().unwrap() >= 1, "{}", got.1);
    s.clock.advance(5 * 60_000);
    let r = s
        .http
        .post(format!("{}/v1/staff/sign-in", s.base))
        .json(&json!({ "pin": "1234" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cookie = r
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(cookie.starts_with("aisle_staff="), "{cookie}");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["staff"], "Ana");
    assert_eq!(v["expires_at"], "2026-01-01T12:05:00Z");
    let token = v["token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 64);
    assert!(cookie.contains(&token));

    // The cookie works as well as the bearer token.
    let r = s
        .http
        .get(format!("{}/v1/pickups", s.base))
        .header("cookie", format!("theme=dark; aisle_staff={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Pick records who is signed in.
    let (_, v) = s.post("/v1/pickups/web-1100/pick", &token, json!({})).await;
    assert_eq!(v["picking_by"], "Ana");

    // Sessions last 12 hours.
    s.clock.advance(12 * HOUR);
    let (st, _) = s.get("/v1/pickups", &token).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // Sign-out ends a session.
    let bo = s.sign_in("5678").await;
    let (st, v) = s
        .send(reqwest::Method::POST, "/v1/staff/sign-out", Some(&bo), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["signed_out"], true);
    let (st, _) = s.get("/v1/pickups", &bo).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pickup_routes_answer_401_without_a_session() {
    let mut s = Store::start().await;
    let (o, _) = order("web-1200", &[(1, 1)], 12);
    s.deliver(vec![o]).await;
    let routes: [(reqwest::Method, &str, Option<Value>); 5] = [
        (reqwest::Method::GET, "/v1/pickups", None),
        (reqwest::Method::GET, "/v1/pickups/web-1200", None),
        (
            reqwest::Method::POST,
            "/v1/pickups/web-1200/pick",
            Some(json!({})),
        ),
        (
            reqwest::Method::POST,
            "/v1/pickups/web-1200/ready",
            Some(json!({ "location": "B1" })),
        ),
        (
            reqwest::Method::POST,
            "/v1/pickups/redeem",
            Some(json!({ "qr": qr_for("web-1200") })),
        ),
    ];
    for token in [None, Some("nonsense"), Some(&"ab".repeat(32)[..])] {
        for (m, path, body) in &routes {
            let got = s.send(m.clone(), path, token, body.clone()).await;
            assert_error(&got, StatusCode::UNAUTHORIZED, "unauthorized");
        }
    }
    let ana = s.sign_in("1234").await;
    let (_, v) = s.get("/v1/pickups/web-1200", &ana).await;
    assert_eq!(v["status"], "received", "nothing changed");
    assert_error(
        &s.get("/v1/pickups/web-9999", &ana).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &s.get("/v1/pickups?status=lost", &ana).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        &s.get("/v1/pickups?limit=1001", &ana).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_arrive_from_the_hub_and_pickup_events_go_up() {
    let (hub, url) = common::hub::start().await;
    let now = UtcMillis::now().0;
    let code = FallbackCode::from_bits([1, 2, 3, 4, 5]);
    let order = PickupOrder {
        order_id: OrderId::parse("web-e2e-1").unwrap(),
        lines: vec![PickupOrderLine {
            gtin: gtin(1),
            qty: 2,
            name: "Oolong tea 500ml".into(),
        }],
        placed_at: UtcMillis(now - HOUR),
        pickup_by: UtcMillis(now + HOUR),
        expires_at: UtcMillis(now + 24 * HOUR),
        code_digest: code_digest(&store(), &code),
        key_id: 1,
    };
    hub.push_change(ChangeBody::PickupKey(PickupKey::of(
        1,
        &hub_key().verifying_key(),
    )));
    hub.push_change(stock(gtin(1), 5));
    hub.push_change(ChangeBody::PickupOrder(order.clone()));

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.hub_url = url;
    cfg.sync.long_poll_ms = 5_000;
    let agent = Agent::start(cfg, Arc::new(aisle_agent::clock::SystemClock))
        .await
        .unwrap();
    let base = format!("http://{}", agent.local_addr());
    let http = reqwest::Client::new();
    let call = |m: reqwest::Method, path: &str, token: Option<&str>, body: Option<Value>| {
        let mut rq = http.request(m, format!("{base}{path}"));
        if let Some(t) = token {
            rq = rq.bearer_auth(t);
        }
        if let Some(b) = body {
            rq = rq.json(&b);
        }
        async move {
            let r = rq.send().await.unwrap();
            let st = r.status();
            (st, r.json::<Value>().await.unwrap())
        }
    };
    let (st, v) = call(
        reqwest::Method::POST,
        "/v1/staff/sign-in",
        None,
        Some(json!({ "pin": "1234" })),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let ana = v["token"].as_str().unwrap().to_string();

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, _) = call(
            reqwest::Method::GET,
            "/v1/pickups/web-e2e-1",
            Some(&ana),
            None,
        )
        .await;
        if st == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "the order never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (st, _) = call(
        reqwest::Method::POST,
        "/v1/pickups/web-e2e-1/pick",
        Some(&ana),
        Some(json!({})),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = call(
        reqwest::Method::POST,
        "/v1/pickups/web-e2e-1/ready",
        Some(&ana),
        Some(json!({ "location": "Pickup shelf 2" })),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let qr = PickupClaims {
        order: order.order_id.clone(),
        store: store(),
        issued_at: order.placed_at,
        expires_at: order.expires_at,
        key_id: 1,
    }
    .sign(&hub_key());
    let (st, v) = call(
        reqwest::Method::POST,
        "/v1/pickups/redeem",
        Some(&ana),
        Some(json!({ "qr": qr, "device": "counter-1" })),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(agent.ledger().stock(gtin(1)).await.unwrap(), 3);
    // HQ cancels after the collection: the store answers with a conflict.
    let cancel_id = EventId::from_bytes([0xcc; 16]);
    hub.push_change(ChangeBody::PickupCancelled(PickupCancellation {
        order_id: order.order_id.clone(),
        cancel_id,
        at: UtcMillis::now(),
    }));

    let deadline = Instant::now() + Duration::from_secs(10);
    let kinds = loop {
        let kinds: Vec<&'static str> = hub
            .events()
            .iter()
            .filter(|e| pickup_order_of(&e.body).is_some())
            .map(|e| e.body.kind())
            .collect();
        if kinds.len() >= 5 && agent.ledger().view().outbox_depth() == 0 {
            break kinds;
        }
        assert!(Instant::now() < deadline, "uploaded so far: {kinds:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        kinds,
        [
            "pickup_received",
            "pickup_picking",
            "pickup_ready",
            "pickup_collected",
            "pickup_cancel_conflict"
        ]
    );
    // What went over the wire is the protocol event: no order details, no code digest, no
    // ready_by.
    let raw = hub.with(|h| h.raw_events.clone());
    for e in &raw {
        let body = &e["body"];
        assert!(body.get("order").is_none(), "{e}");
        assert!(body.get("ready_by").is_none(), "{e}");
        assert!(!e.to_string().contains(&order.code_digest), "{e}");
    }
    let conflict = hub
        .events()
        .into_iter()
        .find(|e| matches!(e.body, EventBody::PickupCancelConflict { .. }))
        .unwrap();
    assert!(matches!(
        conflict.body,
        EventBody::PickupCancelConflict { cancel_id: c, ref collected_by, .. }
            if c == cancel_id && collected_by == "Ana"
    ));
    agent.shutdown().await;
    verify(dir.path()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_catches_an_edited_pickup_row() {
    let mut s = Store::start().await;
    let (o, _) = order("web-1300", &[(1, 1)], 13);
    s.deliver(vec![o]).await;
    let ana = s.sign_in("1234").await;
    s.make_ready(&ana, "web-1300", &[]).await;
    let (st, _) = s.redeem(&ana, json!({ "qr": qr_for("web-1300") })).await;
    assert_eq!(st, StatusCode::OK);
    s.agent.take().unwrap().shutdown().await;
    verify(s.dir.path()).unwrap();
    // Someone "un-collects" the order behind the ledger's back.
    let db = rusqlite::Connection::open(s.dir.path().join("ledger.db")).unwrap();
    db.execute(
        "UPDATE pickup_orders SET status = 'ready' WHERE order_id = 'web-1300'",
        [],
    )
    .unwrap();
    drop(db);
    let e = verify(s.dir.path()).unwrap_err().to_string();
    assert!(e.contains("pickup_orders"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_network_is_refused_never_a_crash() {
    let mut s = Store::start().await;
    let (o, _) = order("web-1400", &[(1, 1)], 14);
    s.deliver(vec![o]).await;
    let ana = s.sign_in("1234").await;
    let mut bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"{\"qr\": 5}".to_vec(),
        b"{\"code\": null}".to_vec(),
        b"{\"location\": [\"x\"]}".to_vec(),
        b"{\"missing\": \"all\"}".to_vec(),
        b"{\"pin\": {\"a\": 1}}".to_vec(),
        b"{\"qr\": \"AISLE1.\\u0000.\\u0000\"}".to_vec(),
        "{\"code\": \"\u{1F600}\u{1F600}\u{1F600}\u{1F600}-\u{1F600}\"}"
            .as_bytes()
            .to_vec(),
        vec![0xff, 0xfe, 0x00, 0x7b],
        format!("{{\"qr\": \"{}\"}}", "A".repeat(20_000)).into_bytes(),
    ];
    for n in 0..20 {
        bodies.push((0..(n * 37)).map(|_| rand::random::<u8>()).collect());
    }
    let paths = [
        "/v1/staff/sign-in",
        "/v1/pickups/redeem",
        "/v1/pickups/web-1400/pick",
        "/v1/pickups/web-1400/ready",
        "/v1/pickups/%00%ff/ready",
    ];
    for path in paths {
        for b in &bodies {
            let r = s
                .http
                .post(format!("{}{path}", s.base))
                .bearer_auth(&ana)
                .header("content-type", "application/json")
                .body(b.clone())
                .send()
                .await
                .unwrap();
            let st = r.status();
            assert!(st.is_client_error() || st.is_success(), "{path}: {st}");
            let v: Value = r.json().await.unwrap();
            if !st.is_success() {
                assert!(v["error"].is_string(), "{path}: {v}");
            }
        }
    }
    // Still serving, and the order untouched but for a pick that `{}`-like bodies may make.
    let (st, v) = s.get("/v1/pickups/web-1400", &ana).await;
    assert_eq!(st, StatusCode::OK);
    assert_ne!(v["status"], "collected");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_cannot_slip_past_the_limits() {
    let mut s = Store::start().await;
    let (o, code) = order("web-1500", &[(1, 1)], 15);
    s.deliver(vec![o]).await;
    let ana = s.sign_in("1234").await;
    s.make_ready(&ana, "web-1500", &[]).await;
    let guesses = (0..40u8).map(|n| {
        let wrong = FallbackCode::from_bits([n, 0xee, n, 0xee, n]).to_string();
        s.redeem(&ana, json!({ "code": wrong, "device": "counter-1" }))
    });
    let answers = futures_join_all(guesses).await;
    let not_found = answers
        .iter()
        .filter(|a| a.0 == StatusCode::NOT_FOUND)
        .count();
    let limited = answers
        .iter()
        .filter(|a| a.0 == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((not_found, limited), (5, 35), "{answers:?}");
    assert_error(
        &s.redeem(
            &ana,
            json!({ "code": code.to_string(), "device": "counter-1" }),
        )
        .await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    );

    let pins = (0..20).map(|_| {
        s.send(
            reqwest::Method::POST,
            "/v1/staff/sign-in",
            None,
            Some(json!({ "pin": "0000" })),
        )
    });
    let answers = futures_join_all(pins).await;
    let wrong = answers
        .iter()
        .filter(|a| a.0 == StatusCode::UNAUTHORIZED)
        .count();
    let limited = answers
        .iter()
        .filter(|a| a.0 == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((wrong, limited), (5, 15), "{answers:?}");
    let (_, v) = s.get("/v1/pickups/web-1500", &ana).await;
    assert_eq!(v["status"], "ready");
    s.finish().await;
}

/// Runs futures concurrently on the runtime and collects their outputs in order.
async fn futures_join_all<F, T>(futs: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out = Vec::with_capacity(set.len());
    let mut pending: Vec<Option<_>> = set.into_iter().map(Some).collect();
    let mut results: Vec<Option<T>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        results[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.extend(results.into_iter().flatten());
    out
}

#[test]
fn staff_hash_pin_reads_stdin_and_prints_a_phc_string_that_verifies() {
    use std::io::Write;
    let run_with = |extra: &[&str], input: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_aisle-agent"))
            .args(["staff", "hash-pin"])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A refused command line exits before reading its stdin (a broken pipe here).
        let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
        child.wait_with_output().unwrap()
    };
    let run = |input: &str| run_with(&[], input);
    let out = run("4321\n");
    assert!(out.status.success(), "{out:?}");
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("4321"));
    let staff = vec![StaffConfig {
        name: "Cy".into(),
        pin_hash: hash,
        role: aisle_agent::config::StaffRole::Staff,
    }];
    assert_eq!(
        aisle_agent::pickup::staff::who(&staff, "4321"),
        Some(("Cy".to_string(), aisle_agent::config::StaffRole::Staff))
    );
    assert_eq!(aisle_agent::pickup::staff::who(&staff, "4322"), None);
    let out = run("12\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PIN must be"));

    // With --name and --role: a whole [[pickup.staff]] entry that parses as one, with its role.
    for (role, expected) in [
        ("manager", aisle_agent::config::StaffRole::Manager),
        ("technician", aisle_agent::config::StaffRole::Technician),
    ] {
        let out = run_with(&["--name", "Dee", "--role", role], "8642\n");
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.starts_with("[[pickup.staff]]"), "{text}");
        assert!(text.contains(&format!("role = \"{role}\"")), "{text}");
        let parsed: aisle_agent::config::PickupSettings = toml::from_str::<toml::Table>(&text)
            .unwrap()["pickup"]
            .clone()
            .try_into()
            .unwrap();
        assert_eq!(
            aisle_agent::pickup::staff::who(&parsed.staff, "8642"),
            Some(("Dee".to_string(), expected))
        );
    }
    // Staff is the default role and is written as no role at all.
    let out = run_with(&["--name", "Eve"], "8642\n");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("name = \"Eve\"") && !text.contains("role"),
        "{text}"
    );
    let out = run_with(&["--role", "boss", "--name", "Eve"], "8642\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("staff, manager or technician"));
    let out = run_with(&["--role", "manager"], "8642\n");
    assert!(!out.status.success(), "--role without --name is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_writer_lets_exactly_one_of_many_redeems_through() {
    use aisle_agent::ledger::{PickupAction, PickupRefusal};
    use aisle_protocol::pickup::RedeemMethod;
    let mut s = Store::start().await;
    let (o, _) = order("web-1600", &[(1, 1)], 16);
    s.deliver(vec![o]).await;
    let ana = s.sign_in("1234").await;
    s.make_ready(&ana, "web-1600", &[]).await;
    let ledger = s.agent().ledger().clone();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            ledger
                .pickup(PickupAction::Redeem {
                    order_id: OrderId::parse("web-1600").unwrap(),
                    method: RedeemMethod::Qr,
                    device: format!("counter-{i}"),
                    staff: None,
                })
                .await
        }));
    }
    let mut won = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(rec) => won.push(rec),
            Err(PickupRefusal::AlreadyCollected { collection, .. }) => {
                refused += 1;
                assert_eq!(collection.staff, None);
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((won.len(), refused), (1, 49));
    let winner = won[0].collected.clone().unwrap();
    // Without staff, the device is who collected it.
    assert_eq!(winner.by(), winner.device);
    assert_eq!(s.stock(gtin(1)).await, 9);
    s.finish().await;
}

/// The real binary, killed with SIGKILL right after a redeem answered: the restarted agent
/// still refuses a second redeem with who and when, read from the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_survives_kill_9_of_the_real_process() {
    let (hub, url) = common::hub::start().await;
    let now = UtcMillis::now().0;
    let order = PickupOrder {
        order_id: OrderId::parse("web-k9").unwrap(),
        lines: vec![PickupOrderLine {
            gtin: gtin(2),
            qty: 1,
            name: String::new(),
        }],
        placed_at: UtcMillis(now - HOUR),
        pickup_by: UtcMillis(now + HOUR),
        expires_at: UtcMillis(now + 24 * HOUR),
        code_digest: code_digest(&store(), &FallbackCode::from_bits([9; 5])),
        key_id: 1,
    };
    hub.push_change(ChangeBody::PickupKey(PickupKey::of(
        1,
        &hub_key().verifying_key(),
    )));
    hub.push_change(ChangeBody::PickupOrder(order.clone()));
    let qr = PickupClaims {
        order: order.order_id.clone(),
        store: store(),
        issued_at: order.placed_at,
        expires_at: order.expires_at,
        key_id: 1,
    }
    .sign(&hub_key());

    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = config(&dir.path().join("data"));
    cfg.hub_url = url;
    cfg.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg_path = dir.path().join("agent.toml");
    std::fs::write(&cfg_path, toml::to_string(&cfg).unwrap()).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let spawn = || {
        Killed(
            std::process::Command::new(env!("CARGO_BIN_EXE_aisle-agent"))
                .arg("run")
                .arg("--config")
                .arg(&cfg_path)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let http = reqwest::Client::new();
    let sign_in = async |http: &reqwest::Client| -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http
                .post(format!("{base}/v1/staff/sign-in"))
                .json(&json!({ "pin": "1234" }))
                .send()
                .await
                && r.status() == StatusCode::OK
            {
                let v: Value = r.json().await.unwrap();
                return v["token"].as_str().unwrap().to_string();
            }
            assert!(Instant::now() < deadline, "the agent did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let post = async |http: &reqwest::Client, token: &str, path: &str, body: Value| {
        let r = http
            .post(format!("{base}{path}"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };

    let child = spawn();
    let ana = sign_in(&http).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (st, _) = post(&http, &ana, "/v1/pickups/web-k9/pick", json!({})).await;
        if st == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "the order never arrived: {st}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (st, v) = post(
        &http,
        &ana,
        "/v1/pickups/web-k9/ready",
        json!({ "location": "B2" }),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = post(
        &http,
        &ana,
        "/v1/pickups/redeem",
        json!({ "qr": qr, "device": "counter-1" }),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let collected_at = v["order"]["collected"]["at"].clone();
    // SIGKILL at once: no shutdown, nothing flushed but what was committed.
    child.kill_now();

    let http = reqwest::Client::new();
    let child = spawn();
    let bo = async {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http
                .post(format!("{base}/v1/staff/sign-in"))
                .json(&json!({ "pin": "5678" }))
                .send()
                .await
                && r.status() == StatusCode::OK
            {
                let v: Value = r.json().await.unwrap();
                break v["token"].as_str().unwrap().to_string();
            }
            assert!(Instant::now() < deadline, "the agent did not come back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    .await;
    let (st, v) = post(
        &http,
        &bo,
        "/v1/pickups/redeem",
        json!({ "qr": qr, "device": "counter-2" }),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"], "already_collected");
    assert_eq!(v["collected_by"], "Ana");
    assert_eq!(v["device"], "counter-1");
    assert_eq!(v["collected_at"], collected_at);
    child.kill_now();
    let report = verify(&dir.path().join("data")).unwrap();
    assert_eq!(report.pickup_orders, 1);
}

/// A child process killed with SIGKILL when dropped (a failing test leaves no agent behind).
struct Killed(std::process::Child);

impl Killed {
    fn kill_now(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_pickup_change_refuses_its_page_and_keeps_the_cursor() {
    let mut s = Store::start().await;
    let ledger = s.agent().ledger().clone();
    let cursor = ledger.view().cursor;
    let last_seq = ledger.view().last_seq;
    let (good, _) = order("web-1700", &[(1, 1)], 17);
    let ChangeBody::PickupOrder(mut bad) = good.clone() else {
        panic!("not an order")
    };
    bad.code_digest = "not hex".into();
    let bad_key = PickupKey {
        key_id: 2,
        public_key: "zz".repeat(32),
    };
    let mut times = bad.clone();
    times.code_digest = "ab".repeat(32);
    times.expires_at = UtcMillis(T0 - 10 * HOUR);
    let mut empty = times.clone();
    empty.expires_at = UtcMillis(EXPIRES);
    empty.lines.clear();
    for body in [
        ChangeBody::PickupOrder(bad),
        ChangeBody::PickupKey(bad_key),
        ChangeBody::PickupOrder(times),
        ChangeBody::PickupOrder(empty),
    ] {
        let page = vec![
            Change {
                seq: 90,
                body: good.clone(),
            },
            Change { seq: 91, body },
        ];
        let e = ledger
            .apply_changes(page, Some(91), None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("hub seq 91"), "{e}");
        // Nothing of the page was applied, not even its good order, and the cursor stayed.
        assert_eq!(ledger.view().cursor, cursor);
        assert_eq!(ledger.view().last_seq, last_seq);
        assert!(
            ledger
                .pickup_order(OrderId::parse("web-1700").unwrap())
                .await
                .unwrap()
                .is_none()
        );
    }
    s.deliver(vec![good]).await;
    assert!(
        ledger
            .pickup_order(OrderId::parse("web-1700").unwrap())
            .await
            .unwrap()
            .is_some()
    );
    s.finish().await;
}
