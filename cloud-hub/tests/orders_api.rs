//! Click-and-collect over HTTP: the hub in-process on 127.0.0.1:0, driven with reqwest like an
//! order system and a gateway would; webhooks go to a local axum receiver.
//!
//! No timing assertions: where the hub works in the background (webhook worker, expiry sweep),
//! the tests wait for the outcome with a generous deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aisle_hub::api::orders::{OrderBody, OrderCreated};
use aisle_hub::pickup::PickupSettings;
use aisle_hub::pickup::sweeper::SweepSettings;
use aisle_hub::pickup::webhook::{WebhookSecret, WebhookSettings};
use aisle_hub::storage::{self, HubStorage, NewStore};
use aisle_hub::testsupport::TempPostgres;
use aisle_hub::{HqToken, HubHandle, HubServer};
use aisle_protocol::pickup::{PickupClaims, RedeemMethod, code_digest};
use aisle_protocol::sync::{
    ChangeBody, ChangePage, ErrorBody, EventBody, LedgerEvent, PROTOCOL_HEADER,
};
use aisle_protocol::{Currency, EventId, Hlc, OrderId, StoreId, UtcMillis};
use axum::body::Bytes;
use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

const HQ: &str = "hq-test-token-0123456789";
const SECRET: &str = "webhook-secret-for-tests-0123456789";
const G1: &str = "9501101531000";
const G2: &str = "6291041500213";
const G3: &str = "4006381333931";
const DEADLINE: Duration = Duration::from_secs(30);

// ---------- the hub ----------

struct Hub {
    handle: HubHandle,
    http: reqwest::Client,
    base: String,
    /// Credential of S001's gateway.
    gw: String,
    seq: u64,
}

fn cny() -> Currency {
    Currency::parse("CNY").unwrap()
}

fn sid(s: &str) -> StoreId {
    StoreId::parse(s).unwrap()
}

/// Fast webhook retries and a sweep that expires orders as soon as they expire.
fn fast(secret: Option<&str>) -> PickupSettings {
    PickupSettings {
        webhook_secret: secret.map(|s| WebhookSecret::new(s).unwrap()),
        webhooks: WebhookSettings {
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            timeout: Duration::from_secs(30),
            lease: Duration::from_millis(300),
            poll: Duration::from_millis(50),
            batch: 8,
        },
        sweep: SweepSettings {
            every: Duration::from_millis(50),
            grace: Duration::ZERO,
        },
    }
}

/// Stores S001 and S002 with G1..G3 priced everywhere and 10 of G1 and G2 at S001.
async fn seed(db: &Arc<dyn HubStorage>) {
    for id in ["S001", "S002"] {
        db.create_store(&NewStore::new(sid(id), id, cny()).unwrap())
            .await
            .unwrap();
    }
}

async fn start(db: Arc<dyn HubStorage>, settings: PickupSettings, seeded: bool) -> Hub {
    if !seeded {
        seed(&db).await;
    }
    let gw = db.create_gateway(&sid("S001")).await.unwrap().to_string();
    let handle = HubServer::new(db, HqToken::new(HQ).unwrap())
        .with_pickups(settings)
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let hub = Hub {
        base: handle.base_url(),
        handle,
        http: reqwest::Client::new(),
        gw,
        seq: 0,
    };
    if !seeded {
        let prices: Vec<Value> = [G1, G2, G3]
            .iter()
            .map(|g| json!({"gtin": g, "price": "3.50", "currency": "CNY", "name": format!("Product {g}")}))
            .collect();
        let res = hub
            .hq(Method::POST, "/v1/price-batches")
            .json(&json!({"stores": "all", "prices": prices}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        for g in [G1, G2] {
            let res = hub
                .hq(Method::POST, "/v1/stores/S001/stock-adjustments")
                .json(&json!({"gtin": g, "delta": 10, "reason": "goods received"}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::CREATED);
        }
    }
    hub
}

async fn sqlite_hub(settings: PickupSettings) -> (Hub, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("hub.db").display());
    (
        start(storage::open(&url).await.unwrap(), settings, false).await,
        dir,
    )
}

impl Hub {
    fn req(&self, method: Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    fn hq(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.req(method, path, Some(HQ))
    }

    async fn create(&self, body: &Value) -> reqwest::Response {
        self.hq(Method::POST, "/v1/orders")
            .json(body)
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, id: &str) -> OrderBody {
        let res = self
            .hq(Method::GET, &format!("/v1/orders/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.unwrap()
    }

    async fn cancel(&self, id: &str) -> reqwest::Response {
        self.hq(Method::POST, &format!("/v1/orders/{id}/cancel"))
            .send()
            .await
            .unwrap()
    }

    async fn changes(&self) -> ChangePage {
        let res = self
            .req(Method::GET, "/v1/sync/changes?after=0", Some(&self.gw))
            .header(PROTOCOL_HEADER, "1")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.unwrap()
    }

    /// Uploads the bodies as the gateway's next events.
    async fn upload(&mut self, bodies: Vec<EventBody>) -> Vec<LedgerEvent> {
        let events: Vec<LedgerEvent> = bodies
            .into_iter()
            .map(|body| {
                self.seq += 1;
                let at = UtcMillis::now().0;
                LedgerEvent {
                    seq: self.seq,
                    id: EventId::from_bytes(rand::random()),
                    hlc: Hlc {
                        wall_ms: at as u64,
                        counter: 0,
                    },
                    at: UtcMillis(at),
                    body,
                }
            })
            .collect();
        let res = self
            .req(Method::POST, "/v1/sync/events", Some(&self.gw))
            .header(PROTOCOL_HEADER, "1")
            .json(&json!({ "events": events }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "{}",
            res.text().await.unwrap()
        );
        events
    }

    async fn metrics(&self) -> String {
        self.req(Method::GET, "/metrics", None)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn order(id: &str, lines: Value, webhook: Option<&str>) -> Value {
    let pickup_by = aisle_hub::timefmt::format_rfc3339(UtcMillis(UtcMillis::now().0 + 86_400_000));
    let mut o = json!({"order_id": id, "store": "S001", "lines": lines, "pickup_by": pickup_by});
    if let Some(w) = webhook {
        o["notify"] = json!({ "webhook": w });
    }
    o
}

async fn error_of(res: reqwest::Response) -> (StatusCode, ErrorBody) {
    let status = res.status();
    let text = res.text().await.unwrap();
    let body: ErrorBody =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not an ErrorBody ({e}): {text}"));
    (status, body)
}

fn oid(s: &str) -> OrderId {
    OrderId::parse(s).unwrap()
}

/// Waits until `check` holds, re-checking every 20 ms, for at most [`DEADLINE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let give_up = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < give_up,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------- create, read, cancel ----------

async fn orders_round_trip(mut hub: Hub) {
    let req = order(
        "web-10042",
        json!([{"gtin": G1, "qty": 2}, {"gtin": G2, "qty": 1}]),
        None,
    );
    let res = hub.create(&req).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let text = res.text().await.unwrap();
    let created: OrderCreated = serde_json::from_str(&text).unwrap();
    let raw: Value = serde_json::from_str(&text).unwrap();
    let mut keys: Vec<&str> = raw
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "order_id",
            "pickup_by",
            "placed_at",
            "status",
            "store",
            "token"
        ]
    );
    assert_eq!(raw["status"], "placed");
    let code = created.token.code.clone();
    assert!(
        code.len() == 9 && code.as_bytes()[4] == b'-',
        "XXXX-XXXX: {code}"
    );
    assert!(created.token.qr.starts_with("AISLE1."));

    // An identical retry answers the same bytes with 200; a different body is 409.
    let retry = hub.create(&req).await;
    assert_eq!(retry.status(), StatusCode::OK);
    assert_eq!(retry.text().await.unwrap(), text);
    let mut other = req.clone();
    other["lines"][0]["qty"] = json!(3);
    let (status, err) = error_of(hub.create(&other).await).await;
    assert_eq!(
        (status, err.error.as_str()),
        (StatusCode::CONFLICT, "conflict")
    );
    assert!(
        err.message
            .contains("web-10042 was already placed with different content"),
        "{}",
        err.message
    );

    // The gateway gets the key, then the order: enough to check the token without the hub.
    let page = hub.changes().await;
    let key = page
        .changes
        .iter()
        .find_map(|c| match &c.body {
            ChangeBody::PickupKey(k) => Some(k.clone()),
            _ => None,
        })
        .unwrap();
    let sent = page
        .changes
        .iter()
        .find_map(|c| match &c.body {
            ChangeBody::PickupOrder(o) => Some(o.clone()),
            _ => None,
        })
        .unwrap();
    let claims = PickupClaims::verify(&created.token.qr, |id| {
        (id == key.key_id).then(|| key.verifying_key()).flatten()
    })
    .unwrap();
    assert_eq!(
        (claims.order, claims.store),
        (oid("web-10042"), sid("S001"))
    );
    let code = aisle_protocol::pickup::FallbackCode::parse(&created.token.code).unwrap();
    assert_eq!(sent.code_digest, code_digest(&sid("S001"), &code));
    assert_eq!(
        aisle_hub::timefmt::format_rfc3339(sent.expires_at),
        created.token.expires_at
    );

    // Stock shows what the order holds.
    let stock: Value = hub
        .hq(Method::GET, &format!("/v1/stores/S001/stock?gtin={G1}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&stock["on_hand"], &stock["reserved"], &stock["available"]),
        (&json!(10), &json!(2), &json!(8))
    );

    // The store's progress, as HQ reads it.
    let evs = hub
        .upload(vec![
            EventBody::PickupReceived {
                order_id: oid("web-10042"),
            },
            EventBody::PickupReady {
                order_id: oid("web-10042"),
                location: "Shelf P3".into(),
                missing: vec![],
            },
            EventBody::PickupCollected {
                order_id: oid("web-10042"),
                device: "till-2".into(),
                staff: None,
                method: RedeemMethod::Code,
                partial: false,
            },
        ])
        .await;
    let got = hub.get("web-10042").await;
    let raw: Value = hub
        .hq(Method::GET, "/v1/orders/web-10042")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(raw["status"], "collected");
    assert_eq!(raw["location"], "Shelf P3");
    assert_eq!(raw["collected"]["method"], "code");
    assert_eq!(raw["collected"]["event_id"], evs[2].id.to_hex());
    assert_eq!(raw["lines"][0]["name"], format!("Product {G1}"));
    let history: Vec<(&str, &str)> = raw["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["status"].as_str().unwrap(), h["source"].as_str().unwrap()))
        .collect();
    assert_eq!(
        history,
        [
            ("placed", "hq"),
            ("sent_to_store", "store"),
            ("ready", "store"),
            ("collected", "store")
        ]
    );
    assert_eq!(raw["conflicts"], json!([]));
    assert_eq!(raw["notify"], Value::Null, "no webhook asked for");
    assert_eq!(got.history.len(), 4);

    // Collected: cancelling is refused with the reason.
    let (status, err) = error_of(hub.cancel("web-10042").await).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(err.message.contains("was collected"), "{}", err.message);

    // A cancellation with a reason; again is the same answer.
    hub.create(&order("web-2", json!([{"gtin": G1, "qty": 1}]), None))
        .await;
    let res = hub
        .hq(Method::POST, "/v1/orders/web-2/cancel")
        .json(&json!({"reason": "customer asked"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let cancelled: OrderBody = res.json().await.unwrap();
    assert_eq!(cancelled.status, aisle_hub::pickup::OrderStatus::Cancelled);
    let c = cancelled.cancellation.as_ref().unwrap();
    assert_eq!(c.reason.as_deref(), Some("customer asked"));
    let again: OrderBody = hub.cancel("web-2").await.json().await.unwrap();
    assert_eq!(again, cancelled);
    let sent_cancel = hub
        .changes()
        .await
        .changes
        .into_iter()
        .filter_map(|ch| match ch.body {
            ChangeBody::PickupCancelled(p) => Some(p),
            _ => None,
        })
        .collect::<Vec<_>>();
    assert_eq!(sent_cancel.len(), 1);
    assert_eq!(sent_cancel[0].cancel_id, c.cancel_id);

    // The listing, filtered.
    let list: Value = hub
        .hq(Method::GET, "/v1/orders?store=S001&status=cancelled")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["orders"].as_array().unwrap().len(), 1);
    assert_eq!(list["orders"][0]["order_id"], "web-2");

    let m = hub.metrics().await;
    for line in [
        "aisle_hub_orders_created_total 2",
        "aisle_hub_orders_cancelled_total 1",
    ] {
        assert!(m.contains(line), "missing {line}:\n{m}");
    }
    hub.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn sqlite_orders_round_trip() {
    let (hub, _dir) = sqlite_hub(fast(Some(SECRET))).await;
    orders_round_trip(hub).await;
}

#[tokio::test]
async fn postgres_orders_round_trip() {
    let pg = TempPostgres::create()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is required for this test: {e}"));
    let hub = start(
        storage::open(pg.url()).await.unwrap(),
        fast(Some(SECRET)),
        false,
    )
    .await;
    orders_round_trip(hub).await;
    pg.cleanup().await.unwrap();
}

#[tokio::test]
async fn bad_orders_are_refused_with_clear_messages_and_store_nothing() {
    let (hub, _dir) = sqlite_hub(fast(Some(SECRET))).await;
    let now = UtcMillis::now().0;
    let at = |ms: i64| aisle_hub::timefmt::format_rfc3339(UtcMillis(ms));
    let line = |g: &str, q: i64| json!({"gtin": g, "qty": q});
    let ok = order("web-1", json!([line(G1, 1)]), None);
    let with = |field: &str, v: Value| {
        let mut o = ok.clone();
        o[field] = v;
        o
    };
    let many: Vec<Value> = (1..=101u64)
        .map(|n| json!({"gtin": aisle_protocol::Gtin::from_index(n).unwrap().as_str(), "qty": 1}))
        .collect();
    let no_g3 =
        format!("line 2: not enough stock of 0{G3} at store S001: 1 requested, 0 available");
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (
            with("store", json!("S999")),
            StatusCode::NOT_FOUND,
            "unknown store S999",
        ),
        (
            with("store", json!("S 1")),
            StatusCode::BAD_REQUEST,
            "store: ",
        ),
        (
            with("order_id", json!("web 1")),
            StatusCode::BAD_REQUEST,
            "order_id: ",
        ),
        (
            with("lines", json!([line(G1, 1), line(G3, 1)])),
            StatusCode::CONFLICT,
            &no_g3,
        ),
        (
            with("lines", json!([line(G2, 11)])),
            StatusCode::CONFLICT,
            "line 1: not enough stock",
        ),
        (
            with("lines", json!([line(G1, 1), line("00000000000017", 1)])),
            StatusCode::NOT_FOUND,
            "line 2: store S001 does not sell 00000000000017",
        ),
        (
            with("lines", json!([line("123", 1)])),
            StatusCode::BAD_REQUEST,
            "line 1: gtin",
        ),
        (
            with("lines", json!([line(G1, 0)])),
            StatusCode::BAD_REQUEST,
            "line 1: quantity must be 1 to 9999, got 0",
        ),
        (
            with("lines", json!([line(G1, 1), line(G1, 2)])),
            StatusCode::BAD_REQUEST,
            "line 2: GTIN",
        ),
        (
            with("lines", json!([])),
            StatusCode::BAD_REQUEST,
            "at least one line",
        ),
        (
            with("lines", Value::Array(many)),
            StatusCode::BAD_REQUEST,
            "at most 100 lines, got 101",
        ),
        (
            with("pickup_by", json!(at(now - 60_000))),
            StatusCode::BAD_REQUEST,
            "is not in the future",
        ),
        (
            with("pickup_by", json!(at(now + 15 * 86_400_000))),
            StatusCode::BAD_REQUEST,
            "more than 14 days ahead",
        ),
        (
            with("pickup_by", json!("next friday")),
            StatusCode::BAD_REQUEST,
            "pickup_by: ",
        ),
        (
            with("notify", json!({"webhook": "https://oms.example/hooks"})),
            StatusCode::BAD_REQUEST,
            "plain http only",
        ),
        (
            with("notify", json!({"webhook": "not a url"})),
            StatusCode::BAD_REQUEST,
            "notify.webhook",
        ),
        (
            with("pickupBy", json!(at(now + 60_000))),
            StatusCode::BAD_REQUEST,
            "unknown field `pickupBy`",
        ),
    ];
    for (body, status, needle) in cases {
        let (got, err) = error_of(hub.create(&body).await).await;
        assert_eq!(got, status, "{body}: {}", err.message);
        assert!(err.message.contains(needle), "{body}: {}", err.message);
        let code = match status {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::CONFLICT => "conflict",
            _ => "bad_request",
        };
        assert_eq!(err.error, code);
    }
    // Malformed JSON, another media type, a body over 64 KiB.
    let raw = |body: &'static str, ctype: &'static str| {
        hub.hq(Method::POST, "/v1/orders")
            .header("content-type", ctype)
            .body(body)
            .send()
    };
    let (status, err) = error_of(raw("{\"order_id\":", "application/json").await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(err.message.starts_with("malformed JSON"), "{}", err.message);
    let (status, _) = error_of(raw("order_id=1", "text/plain").await.unwrap()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let big = format!("{{\"order_id\":\"{}\"}}", "x".repeat(70_000));
    let (status, _) = error_of(
        hub.hq(Method::POST, "/v1/orders")
            .header("content-type", "application/json")
            .body(big)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // Nothing was stored: no order, no reservation, nothing for the store.
    let list: Value = hub
        .hq(Method::GET, "/v1/orders")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["orders"], json!([]));
    assert!(hub.changes().await.changes.iter().all(|c| !matches!(
        c.body,
        ChangeBody::PickupOrder(_) | ChangeBody::PickupKey(_)
    )));

    // Reading and cancelling: bad ids 400, unknown 404; a cancel body must be JSON with a
    // short reason.
    for (method, path, status) in [
        (Method::GET, "/v1/orders/web%201", StatusCode::BAD_REQUEST),
        (Method::GET, "/v1/orders/web-404", StatusCode::NOT_FOUND),
        (
            Method::POST,
            "/v1/orders/web-404/cancel",
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/v1/orders?status=done",
            StatusCode::BAD_REQUEST,
        ),
        (Method::GET, "/v1/orders?limit=0", StatusCode::BAD_REQUEST),
    ] {
        let (got, err) = error_of(hub.hq(method.clone(), path).send().await.unwrap()).await;
        assert_eq!(got, status, "{method} {path}: {}", err.message);
    }
    let (_, err) = error_of(
        hub.hq(Method::GET, "/v1/orders/web-404")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(err.message, "unknown order web-404");
    assert_eq!(
        hub.create(&ok).await.status(),
        StatusCode::CREATED,
        "the good order still goes through"
    );
    for (body, status) in [
        ("{\"reason\":", StatusCode::BAD_REQUEST),
        ("{\"why\":\"x\"}", StatusCode::BAD_REQUEST),
    ] {
        let res = hub
            .hq(Method::POST, "/v1/orders/web-1/cancel")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{body}");
    }
    let res = hub
        .hq(Method::POST, "/v1/orders/web-1/cancel")
        .json(&json!({"reason": "x".repeat(201)}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        hub.get("web-1").await.status,
        aisle_hub::pickup::OrderStatus::Placed,
        "refused cancellations change nothing"
    );
}

#[tokio::test]
async fn orders_need_the_hq_token() {
    let (hub, _dir) = sqlite_hub(fast(Some(SECRET))).await;
    hub.create(&order("web-1", json!([{"gtin": G1, "qty": 1}]), None))
        .await;
    let body = order("web-2", json!([{"gtin": G1, "qty": 1}]), None);
    for (method, path) in [
        (Method::POST, "/v1/orders"),
        (Method::GET, "/v1/orders"),
        (Method::GET, "/v1/orders/web-1"),
        (Method::POST, "/v1/orders/web-1/cancel"),
    ] {
        for (token, status, code) in [
            (None, StatusCode::UNAUTHORIZED, "unauthorized"),
            (
                Some("not-the-token"),
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            ),
            (Some(hub.gw.as_str()), StatusCode::FORBIDDEN, "forbidden"),
        ] {
            let (got, err) = error_of(
                hub.req(method.clone(), path, token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(
                (got, err.error.as_str()),
                (status, code),
                "{method} {path} with {token:?}: {}",
                err.message
            );
        }
    }
    assert_eq!(
        hub.get("web-1").await.status,
        aisle_hub::pickup::OrderStatus::Placed
    );
    let (status, _) = error_of(
        hub.hq(Method::GET, "/v1/orders/web-2")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "refused creations stored nothing"
    );
}

// ---------- webhooks ----------

/// A webhook receiver: records every request; answers 500 to the first `fail` requests, and
/// never answers the first request at all while `hang` is set.
#[derive(Default)]
struct Receiver {
    got: Mutex<Vec<(HeaderMap, Bytes)>>,
    fail: AtomicUsize,
    hang: AtomicBool,
}

impl Receiver {
    async fn start(self: &Arc<Self>) -> SocketAddr {
        let me = self.clone();
        let app = axum::Router::new().route(
            "/hooks",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let me = me.clone();
                async move {
                    me.got.lock().unwrap().push((headers, body));
                    if me.hang.swap(false, Ordering::SeqCst) {
                        std::future::pending::<()>().await;
                    }
                    let failing = me
                        .fail
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if failing {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::NO_CONTENT
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn deliveries(&self) -> Vec<(HeaderMap, Bytes)> {
        self.got.lock().unwrap().clone()
    }

    /// Deliveries as (event id, type, body JSON), after checking each signature.
    fn verified(&self, secret: &[u8]) -> Vec<(String, String, Value)> {
        self.deliveries()
            .into_iter()
            .map(|(h, body)| {
                let sig = h["x-aisle-signature"].to_str().unwrap();
                let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
                mac.update(&body);
                let expect = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
                assert_eq!(sig, expect, "signature over the exact body");
                assert_eq!(h["content-type"], "application/json");
                let v: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(h["x-aisle-event-id"].to_str().unwrap(), v["event_id"]);
                assert_eq!(h["x-aisle-event-type"].to_str().unwrap(), v["type"]);
                (
                    v["event_id"].as_str().unwrap().to_owned(),
                    v["type"].as_str().unwrap().to_owned(),
                    v,
                )
            })
            .collect()
    }
}

/// Events as the receiver keeps them after deduplicating on event_id.
fn dedup(deliveries: &[(String, String, Value)]) -> Vec<(String, String)> {
    let mut seen = std::collections::BTreeSet::new();
    deliveries
        .iter()
        .filter(|(id, _, _)| seen.insert(id.clone()))
        .map(|(id, kind, _)| (id.clone(), kind.clone()))
        .collect()
}

#[tokio::test]
async fn webhooks_are_signed_retried_after_a_500_and_deduplicable() {
    // No secret configured: the hub generates one and stores it.
    let (mut hub, _dir) = sqlite_hub(fast(None)).await;
    let secret = hub.handle.storage().webhook_secret().await.unwrap();
    let receiver = Arc::new(Receiver::default());
    receiver.fail.store(1, Ordering::SeqCst);
    let url = format!("http://{}/hooks", receiver.start().await);
    let res = hub
        .create(&order("web-1", json!([{"gtin": G1, "qty": 2}]), Some(&url)))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    hub.upload(vec![
        EventBody::PickupReceived {
            order_id: oid("web-1"),
        },
        EventBody::PickupReady {
            order_id: oid("web-1"),
            location: "Shelf P3".into(),
            missing: vec![],
        },
    ])
    .await;
    eventually("ready delivered after one 500", || {
        let r = receiver.clone();
        async move { r.deliveries().len() >= 2 }
    })
    .await;
    let got = receiver.verified(secret.as_bytes());
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0, got[1].0, "a retry carries the same event id");
    assert_eq!(
        receiver.deliveries()[0].1,
        receiver.deliveries()[1].1,
        "and the same bytes"
    );
    let body = &got[0].2;
    assert_eq!(body["type"], "ready");
    assert_eq!(body["order_id"], "web-1");
    assert_eq!(body["store"], "S001");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["location"], "Shelf P3");

    eventually("the delivery recorded", || {
        let hub = &hub;
        async move {
            hub.get("web-1").await.notifications[0]
                .delivered_at
                .is_some()
        }
    })
    .await;
    let n = &hub.get("web-1").await.notifications[0];
    assert_eq!((n.attempts, n.last_error.as_deref()), (2, None));

    hub.upload(vec![EventBody::PickupCollected {
        order_id: oid("web-1"),
        device: "till-2".into(),
        staff: None,
        method: RedeemMethod::Qr,
        partial: false,
    }])
    .await;
    eventually("collected delivered", || {
        let r = receiver.clone();
        async move { r.deliveries().len() >= 3 }
    })
    .await;
    let got = receiver.verified(secret.as_bytes());
    let events = dedup(&got);
    assert_eq!(
        events.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>(),
        ["ready", "collected"]
    );
    assert_eq!(got[2].2["method"], "qr");
    assert_eq!(got[2].2["partial"], false);
    eventually("metrics", || {
        let hub = &hub;
        async move {
            let m = hub.metrics().await;
            m.contains("aisle_hub_webhooks_delivered_total 2")
                && m.contains("aisle_hub_webhook_failures_total 1")
        }
    })
    .await;
    hub.handle.shutdown().await.unwrap();
}

/// The receiver takes the request but the hub stops before it hears back: the next hub on the
/// database delivers it again, with the same event id and bytes.
async fn webhooks_survive_a_restart(url_of_db: String, pg: Option<TempPostgres>) {
    let receiver = Arc::new(Receiver::default());
    receiver.hang.store(true, Ordering::SeqCst);
    let url = format!("http://{}/hooks", receiver.start().await);
    let hub = start(
        storage::open(&url_of_db).await.unwrap(),
        fast(Some(SECRET)),
        false,
    )
    .await;
    hub.create(&order("web-1", json!([{"gtin": G1, "qty": 1}]), Some(&url)))
        .await;
    assert_eq!(hub.cancel("web-1").await.status(), StatusCode::OK);
    eventually("the first attempt reached the receiver", || {
        let r = receiver.clone();
        async move { r.deliveries().len() == 1 }
    })
    .await;
    hub.handle.shutdown().await.unwrap();

    let hub = start(
        storage::open(&url_of_db).await.unwrap(),
        fast(Some(SECRET)),
        true,
    )
    .await;
    eventually("redelivered by the restarted hub", || {
        let r = receiver.clone();
        async move { r.deliveries().len() >= 2 }
    })
    .await;
    eventually("recorded as delivered", || {
        let hub = &hub;
        async move {
            hub.get("web-1").await.notifications[0]
                .delivered_at
                .is_some()
        }
    })
    .await;
    let got = receiver.verified(SECRET.as_bytes());
    assert_eq!(got.len(), 2, "delivered at least once, here twice");
    let raw = receiver.deliveries();
    assert_eq!(raw[0].1, raw[1].1, "the same bytes");
    let events = dedup(&got);
    assert_eq!(events.len(), 1, "one event after deduplication");
    assert_eq!(events[0].1, "cancelled");
    assert_eq!(got[0].2["source"], "hq");
    hub.handle.shutdown().await.unwrap();
    if let Some(pg) = pg {
        pg.cleanup().await.unwrap();
    }
}

#[tokio::test]
async fn sqlite_webhooks_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("hub.db").display());
    webhooks_survive_a_restart(url, None).await;
}

#[tokio::test]
async fn postgres_webhooks_survive_a_restart() {
    let pg = TempPostgres::create()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is required for this test: {e}"));
    let url = pg.url().to_owned();
    webhooks_survive_a_restart(url, Some(pg)).await;
}

#[tokio::test]
async fn the_hub_expires_orders_the_store_said_nothing_about() {
    let (hub, _dir) = sqlite_hub(fast(Some(SECRET))).await;
    let receiver = Arc::new(Receiver::default());
    let url = format!("http://{}/hooks", receiver.start().await);
    let soon = aisle_hub::timefmt::format_rfc3339(UtcMillis(UtcMillis::now().0 + 1_500));
    let mut req = order("web-1", json!([{"gtin": G1, "qty": 3}]), Some(&url));
    req["pickup_by"] = json!(soon);
    assert_eq!(hub.create(&req).await.status(), StatusCode::CREATED);
    // The sweep runs with no grace here: once the order expired, the hub expires it.
    eventually("expired by the hub", || {
        let hub = &hub;
        async move { hub.get("web-1").await.status == aisle_hub::pickup::OrderStatus::Expired }
    })
    .await;
    let v = hub.get("web-1").await;
    let last = v.history.last().unwrap();
    assert_eq!(last.source, aisle_hub::pickup::Source::Hq);
    assert!(
        last.detail
            .as_deref()
            .unwrap()
            .contains("no word from the store")
    );
    eventually("expired webhook", || {
        let r = receiver.clone();
        async move { !r.deliveries().is_empty() }
    })
    .await;
    let got = receiver.verified(SECRET.as_bytes());
    assert_eq!(
        (got[0].1.as_str(), &got[0].2["source"]),
        ("expired", &json!("hq"))
    );
    let stock: Value = hub
        .hq(Method::GET, &format!("/v1/stores/S001/stock?gtin={G1}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stock["reserved"], 0);
    assert!(
        hub.metrics()
            .await
            .contains("aisle_hub_orders_expired_by_hub_total 1")
    );
    hub.handle.shutdown().await.unwrap();
}
