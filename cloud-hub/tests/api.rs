//! HTTP API tests: the hub runs in-process on 127.0.0.1:0 and is driven with reqwest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aisle_hub::storage::{self, HubStorage, NewStore, SalesSince};
use aisle_hub::testsupport::TempPostgres;
use aisle_hub::{HqToken, HubHandle, HubServer};
use aisle_protocol::sync::{
    ChangeBody, ChangePage, ErrorBody, EventBody, LedgerEvent, PROTOCOL_HEADER, Payment,
    PaymentMethod, SERVER_TIME_HEADER, SaleLine, SaleRecord, UploadAck,
};
use aisle_protocol::{Currency, EventId, Gtin, Hlc, Money, SaleId, StoreId, UtcMillis};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const HQ: &str = "hq-test-token-0123456789";
const G1: &str = "9501101531000";
const G2: &str = "6291041500213";

struct Hub {
    handle: HubHandle,
    http: reqwest::Client,
    base: String,
    /// Credential of S001's gateway.
    gw: String,
    /// Credential of S002's gateway.
    gw2: String,
    _dir: Option<tempfile::TempDir>,
}

fn cny() -> Currency {
    Currency::parse("CNY").unwrap()
}

async fn start(db: Arc<dyn HubStorage>, dir: Option<tempfile::TempDir>) -> Hub {
    for id in ["S001", "S002"] {
        let store = NewStore::new(StoreId::parse(id).unwrap(), id, cny()).unwrap();
        // A second hub on the same database finds the stores already there.
        let _ = db.create_store(&store).await;
    }
    let gw = db
        .create_gateway(&StoreId::parse("S001").unwrap())
        .await
        .unwrap()
        .to_string();
    let gw2 = db
        .create_gateway(&StoreId::parse("S002").unwrap())
        .await
        .unwrap()
        .to_string();
    let handle = HubServer::new(db, HqToken::new(HQ).unwrap())
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    Hub {
        base: handle.base_url(),
        handle,
        http: reqwest::Client::new(),
        gw,
        gw2,
        _dir: dir,
    }
}

async fn hub() -> Hub {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("hub.db").display());
    start(storage::open(&url).await.unwrap(), Some(dir)).await
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

    /// A sync request as a gateway sends it.
    fn sync(&self, method: Method, path: &str, cred: &str) -> reqwest::RequestBuilder {
        self.req(method, path, Some(cred))
            .header(PROTOCOL_HEADER, "1")
    }

    async fn post_json_batch(&self, body: Value) -> reqwest::Response {
        self.hq(Method::POST, "/v1/price-batches")
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn changes(&self, cred: &str, query: &str) -> ChangePage {
        let res = self
            .sync(Method::GET, &format!("/v1/sync/changes?{query}"), cred)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.unwrap()
    }

    fn storage(&self) -> Arc<dyn HubStorage> {
        self.handle.storage()
    }
}

async fn error_of(res: reqwest::Response) -> (StatusCode, ErrorBody) {
    let status = res.status();
    let text = res.text().await.unwrap();
    let body: ErrorBody =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not an ErrorBody ({e}): {text}"));
    (status, body)
}

fn row(gtin: &str, price: &str) -> Value {
    json!({"gtin": gtin, "price": price, "currency": "CNY", "name": "Oolong tea 500ml"})
}

fn sid(s: &str) -> StoreId {
    StoreId::parse(s).unwrap()
}

fn sale_event(seq: u64, sale_id: &str, gtin: &str, qty: u32, unit: i64) -> LedgerEvent {
    let line = SaleLine {
        gtin: Gtin::parse(gtin).unwrap(),
        qty,
        unit_price: Money::new(unit, cny()),
        price_version: 1,
        line_total: Money::new(unit * i64::from(qty), cny()),
        weight_g: None,
        discount: None,
    };
    LedgerEvent {
        seq,
        id: EventId::from_bytes(rand::random()),
        hlc: Hlc {
            wall_ms: 1_700_000_000_000,
            counter: 0,
        },
        at: UtcMillis(1_795_334_400_000),
        body: EventBody::SaleCommitted(SaleRecord {
            sale_id: SaleId::parse(sale_id).unwrap(),
            total: line.line_total,
            lines: vec![line],
            payment: Payment {
                method: PaymentMethod::Mobile,
                reference: Some("wx-1".into()),
                offline: false,
            },
        }),
    }
}

#[tokio::test]
async fn json_price_batch_is_stored_versioned_and_tracked() {
    let hub = hub().await;
    let res = hub
        .post_json_batch(json!({
            "stores": ["S001"],
            "effective_at": "2026-11-22T16:00:00+08:00",
            "prices": [row(G1, "12.80"), row(G2, "3")]
        }))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.unwrap();
    assert_eq!(created["items"], 2);
    assert_eq!(created["stores"], json!(["S001"]));
    assert_eq!(created["effective_at"], "2026-11-22T08:00:00Z");
    let batch_id = created["batch_id"].as_str().unwrap().to_owned();

    let again = hub
        .post_json_batch(json!({"stores": "all", "prices": [row(G1, "13.00")]}))
        .await;
    assert_eq!(again.status(), StatusCode::CREATED);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["stores"], json!(["S001", "S002"]));

    let page = hub.changes(&hub.gw, "after=0").await;
    let prices: Vec<_> = page
        .changes
        .iter()
        .map(|c| match &c.body {
            ChangeBody::Price(p) => (p.gtin.to_string(), p.version, p.price.minor),
            other => panic!("{other:?}"),
        })
        .collect();
    let summary: Vec<_> = prices
        .iter()
        .map(|(g, _, minor)| (g.clone(), *minor))
        .collect();
    assert_eq!(
        summary,
        vec![
            (format!("0{G1}"), 1280),
            (format!("0{G2}"), 300),
            (format!("0{G1}"), 1300)
        ]
    );
    // One batch gives its items one version; a later batch a higher one.
    assert_eq!(prices[0].1, prices[1].1);
    assert!(prices[2].1 > prices[0].1, "{prices:?}");
    match &page.changes[0].body {
        ChangeBody::Price(p) => assert_eq!(p.effective_at, UtcMillis(1_795_334_400_000)),
        other => panic!("{other:?}"),
    }

    let progress: Value = hub
        .hq(Method::GET, &format!("/v1/price-batches/{batch_id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(progress["items"], 2);
    assert_eq!(
        progress["stores"],
        json!([{"store": "S001", "items": 2, "staged": 0, "active": 0}])
    );
    let (status, err) = error_of(
        hub.hq(Method::GET, "/v1/price-batches/pb-unknown")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, err.error.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
}

#[tokio::test]
async fn csv_price_batch_is_stored() {
    let hub = hub().await;
    let csv = format!("gtin,price,currency,name\n{G1},12.80,CNY,\"Tea, green\"\n{G2},0.5,CNY,水\n");
    let res = hub
        .hq(
            Method::POST,
            "/v1/price-batches?stores=S001,S002&effective_at=2026-11-22T08:00:00Z",
        )
        .header("content-type", "text/csv; charset=utf-8")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.unwrap();
    assert_eq!(
        (created["items"].as_u64(), created["stores"].clone()),
        (Some(2), json!(["S001", "S002"]))
    );
    for cred in [&hub.gw, &hub.gw2] {
        let page = hub.changes(cred, "after=0").await;
        assert_eq!(page.changes.len(), 2);
        match &page.changes[1].body {
            ChangeBody::Price(p) => {
                assert_eq!((p.name.as_str(), p.price.minor), ("水", 50));
                assert!(p.version >= 1);
                assert_eq!(p.effective_at, UtcMillis(1_795_334_400_000));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn bad_price_batches_are_refused_with_reasons_and_nothing_is_stored() {
    let hub = hub().await;
    let header = "gtin,price,currency,name\n";
    let big_csv = {
        let mut s = String::from(header);
        for i in 0..=100_000u64 {
            s.push_str(&format!("{},1,CNY,n\n", Gtin::from_index(i).unwrap()));
        }
        s
    };
    let long_name = "长".repeat(201);
    // (content type, query, body, status, message the answer must contain)
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("application/json", "", r#"{"stores":["S001"],"prices":[{"gtin":"#.into(), 400, "malformed price batch JSON"),
        ("application/json", "", json!({"stores": ["S001"], "prices": [{"gtin": G1, "price": 12.8, "currency": "CNY", "name": "x"}]}).to_string(), 400, "row 1: invalid type: floating point `12.8`, expected a string"),
        ("application/json", "", json!({"stores": "S001", "prices": [row(G1, "1")]}).to_string(), 400, "stores: must be \"all\" or a list"),
        ("application/json", "", json!({"stores": ["S001"], "prices": [row(G1, "1"), row("9501101531001", "1")]}).to_string(), 422, "row 2: gtin '9501101531001': GTIN check digit is 1, expected 0"),
        ("application/json", "", json!({"stores": ["S001"], "prices": [{"gtin": G1, "price": "1", "currency": "XYZ", "name": "x"}]}).to_string(), 422, "row 1: currency 'XYZ' is not a known ISO 4217 code"),
        ("application/json", "", json!({"stores": ["S001"], "prices": [row(G1, "12.805")]}).to_string(), 422, "row 1: price: amount '12.805' has more decimals than CNY allows (2)"),
        ("application/json", "", json!({"stores": ["S001"], "prices": [row(G1, "-1.00")]}).to_string(), 422, "row 1: price must not be negative"),
        ("application/json", "", json!({"stores": ["S001"], "prices": [{"gtin": G1, "price": "1", "currency": "CNY", "name": long_name}]}).to_string(), 422, "row 1: name may have at most 200 characters, got 201"),
        ("application/json", "", json!({"stores": ["S001"], "prices": [{"gtin": G1, "price": "1", "currency": "CNY", "name": ""}]}).to_string(), 422, "row 1: name must not be empty"),
        ("application/json", "", json!({"stores": ["S001", "S999"], "prices": [row(G1, "1")]}).to_string(), 422, "unknown store S999"),
        ("application/json", "", json!({"stores": ["S001"], "prices": [row(G1, "1"), row(G2, "2"), row(&format!("0{G1}"), "3")]}).to_string(), 422, "row 3: GTIN 09501101531000 appears twice in the batch (first at row 1)"),
        ("application/json", "", json!({"stores": ["S001"], "prices": [{"gtin": G1, "price": "1", "currency": "GBP", "name": "x"}]}).to_string(), 422, "row 1: price currency GBP does not match store S001's currency CNY"),
        ("text/csv", "?stores=S001", format!("{header}{G1},1,CNY,a\n{G2},2,CNY\n"), 400, "line 3: expected 4 fields (gtin,price,currency,name), found 3"),
        ("text/csv", "?stores=S001", format!("{header}{G1},1,CNY,a\n\n{G2},2.001,CNY,b\n"), 422, "line 4: price: amount '2.001' has more decimals"),
        ("text/csv", "", format!("{header}{G1},1,CNY,a\n"), 400, "?stores=all"),
        ("text/csv", "?stores=all", big_csv, 413, "at most 100000 rows"),
        ("text/csv", "?stores=all", "x".repeat(16 * 1024 * 1024 + 1), 413, "larger than this route accepts"),
        ("text/plain", "", "hello".into(), 415, "application/json or text/csv"),
    ];
    for (ct, query, body, status, want) in cases {
        let res = hub
            .hq(Method::POST, &format!("/v1/price-batches{query}"))
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        let (got, err) = error_of(res).await;
        assert_eq!(got.as_u16(), status, "{want}: {}", err.message);
        assert!(
            err.message.contains(want),
            "want '{want}', got '{}'",
            err.message
        );
    }
    let db = hub.storage();
    for s in ["S001", "S002"] {
        assert!(
            db.changes_after(&sid(s), 0, 10)
                .await
                .unwrap()
                .changes
                .is_empty(),
            "nothing stored for {s}"
        );
    }
    // After all those refusals the first real batch is the only change, at its first version.
    assert_eq!(
        hub.post_json_batch(json!({"stores": "all", "prices": [row(G1, "1")]}))
            .await
            .status(),
        StatusCode::CREATED
    );
    match &db.changes_after(&sid("S001"), 0, 10).await.unwrap().changes[..] {
        [c] => assert!(matches!(&c.body, ChangeBody::Price(p) if p.version >= 1)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn tokens_and_store_boundaries_are_enforced() {
    let hub = hub().await;
    let batch = json!({"stores": "all", "prices": [row(G1, "1")]});
    let check = |res: reqwest::Response, status: StatusCode, code: &'static str| async move {
        let (got, err) = error_of(res).await;
        assert_eq!((got, err.error.as_str()), (status, code), "{}", err.message);
    };
    // No token, a wrong token, a gateway token on an HQ route.
    check(
        hub.req(Method::POST, "/v1/price-batches", None)
            .json(&batch)
            .send()
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    check(
        hub.req(Method::POST, "/v1/price-batches", Some("not-the-token"))
            .json(&batch)
            .send()
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    check(
        hub.req(Method::POST, "/v1/price-batches", Some(&hub.gw))
            .json(&batch)
            .send()
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    check(
        hub.req(
            Method::POST,
            "/v1/stores/S001/stock-adjustments",
            Some(&hub.gw),
        )
        .json(&json!({"gtin": G1, "delta": 1, "reason": "x"}))
        .send()
        .await
        .unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    // A gateway reads its own store, never another.
    assert_eq!(
        hub.req(Method::GET, "/v1/stores/S001/stock", Some(&hub.gw))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // Another store's data, and not even whether another store exists.
    for path in [
        "/v1/stores/S002/stock",
        "/v1/stores/S002/sales",
        "/v1/stores/S999/sales",
        "/v1/stores/S002/footfall",
        "/v1/stores/S002/footfall.svg",
        "/v1/stores/S999/footfall?interval=nonsense",
    ] {
        check(
            hub.req(Method::GET, path, Some(&hub.gw))
                .send()
                .await
                .unwrap(),
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
    }
    // A forged secret for a real gateway id; the HQ token on the sync API.
    let (id, _) = hub.gw.rsplit_once('.').unwrap();
    check(
        hub.sync(
            Method::GET,
            "/v1/sync/changes?after=0",
            &format!("{id}.{}", "f".repeat(64)),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    check(
        hub.sync(Method::GET, "/v1/sync/changes?after=0", HQ)
            .send()
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    // HQ reads every store; unknown stores are 404.
    assert_eq!(
        hub.hq(Method::GET, "/v1/stores/S002/sales")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    check(
        hub.hq(Method::GET, "/v1/stores/S999/stock")
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // A revoked gateway is refused at once.
    let gw_id = aisle_protocol::GatewayId::parse(id).unwrap();
    hub.storage().revoke_gateway(&gw_id).await.unwrap();
    check(
        hub.sync(Method::GET, "/v1/sync/changes?after=0", &hub.gw)
            .send()
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn incompatible_or_missing_protocol_is_answered_426() {
    let hub = hub().await;
    for version in [None, Some("2"), Some("0"), Some("one")] {
        let mut r = hub.req(Method::GET, "/v1/sync/changes?after=0", Some(&hub.gw));
        if let Some(v) = version {
            r = r.header(PROTOCOL_HEADER, v);
        }
        let (status, err) = error_of(r.send().await.unwrap()).await;
        assert_eq!(status, StatusCode::UPGRADE_REQUIRED, "{version:?}");
        assert_eq!(err.error, "incompatible_protocol");
        assert!(
            err.message.contains("this hub speaks protocol 1"),
            "{}",
            err.message
        );
    }
    // The version is checked before the credential: an old agent learns why first.
    let res = hub
        .req(Method::POST, "/v1/sync/events", None)
        .header(PROTOCOL_HEADER, "7")
        .json(&json!({"events": []}))
        .send()
        .await
        .unwrap();
    let (status, err) = error_of(res).await;
    assert_eq!(
        (status, err.error.as_str()),
        (StatusCode::UPGRADE_REQUIRED, "incompatible_protocol")
    );
    assert!(
        err.message.contains("the peer speaks protocol 7"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn long_poll_returns_when_a_batch_commits() {
    let hub = Arc::new(hub().await);
    let poller = {
        let hub = hub.clone();
        tokio::spawn(async move {
            let page = hub.changes(&hub.gw, "after=0&wait_ms=20000").await;
            (page, Instant::now())
        })
    };
    // Wait until the poll is really waiting (visible in the metrics), then post.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = hub
            .req(Method::GET, "/metrics", None)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if m.contains("aisle_hub_long_polls_waiting 1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the long-poll never started waiting:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A batch for another store does not answer S001's poll.
    assert_eq!(
        hub.post_json_batch(json!({"stores": ["S002"], "prices": [row(G2, "2")]}))
            .await
            .status(),
        StatusCode::CREATED
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!poller.is_finished());
    let posted = Instant::now();
    assert_eq!(
        hub.post_json_batch(json!({"stores": ["S001"], "prices": [row(G1, "1")]}))
            .await
            .status(),
        StatusCode::CREATED
    );
    let (page, answered) = tokio::time::timeout(Duration::from_secs(5), poller)
        .await
        .unwrap()
        .unwrap();
    assert!(
        answered.duration_since(posted) < Duration::from_secs(2),
        "answered {:?} after the batch",
        answered.duration_since(posted)
    );
    assert_eq!(page.changes.len(), 1);
    assert_eq!(page.next_cursor, page.changes[0].seq);
    let m = hub
        .req(Method::GET, "/metrics", None)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("aisle_hub_long_polls_waiting 0"), "{m}");
    assert!(m.contains("aisle_hub_changes_served_total 1"), "{m}");
}

#[tokio::test]
async fn long_poll_answers_an_empty_page_after_wait_ms() {
    let hub = hub().await;
    hub.post_json_batch(json!({"stores": ["S001"], "prices": [row(G1, "1")]}))
        .await;
    let head = hub.changes(&hub.gw, "after=0").await.next_cursor;
    let started = Instant::now();
    let page = hub
        .changes(&hub.gw, &format!("after={head}&wait_ms=600"))
        .await;
    let took = started.elapsed();
    assert!(page.changes.is_empty() && !page.more);
    assert_eq!(page.next_cursor, head);
    assert!(
        took >= Duration::from_millis(550),
        "returned after {took:?}"
    );
    assert!(took < Duration::from_secs(3), "returned after {took:?}");
    // No wait asked: answered at once.
    let started = Instant::now();
    hub.changes(&hub.gw, &format!("after={head}")).await;
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn every_answer_carries_server_time_and_protocol_headers() {
    let hub = hub().await;
    let before = UtcMillis::now().0;
    for res in [
        hub.req(Method::GET, "/healthz", None).send().await.unwrap(),
        hub.req(Method::GET, "/nowhere", None).send().await.unwrap(),
        hub.sync(Method::GET, "/v1/sync/changes?after=0", &hub.gw)
            .send()
            .await
            .unwrap(),
        hub.req(Method::GET, "/v1/sync/changes?after=0", Some(&hub.gw))
            .send()
            .await
            .unwrap(),
    ] {
        let t: i64 = res.headers()[SERVER_TIME_HEADER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(t >= before && t <= UtcMillis::now().0, "{t}");
        assert_eq!(res.headers()[PROTOCOL_HEADER], "1");
    }
    let page = hub.changes(&hub.gw, "after=0").await;
    assert!(page.server_time.0 >= before);
    let health: Value = hub
        .req(Method::GET, "/healthz", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({"status": "ok"}));
}

#[tokio::test]
async fn openapi_documents_exactly_the_routes_the_router_serves() {
    let hub = hub().await;
    let doc: Value = hub
        .req(Method::GET, "/openapi.json", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let served: BTreeSet<_> = aisle_hub::api::routes()
        .into_iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(documented, served, "openapi.json and the router disagree");
    assert_eq!(served.len(), 23);
    // And the live router really answers each of them (the fallback would say "no route").
    for (method, path) in &served {
        let path = path.replace("{id}", "S001").replace("{member}", "M-1001");
        let res = hub
            .req(
                Method::from_bytes(method.as_bytes()).unwrap(),
                &path,
                Some(HQ),
            )
            .header(PROTOCOL_HEADER, "1")
            .send()
            .await
            .unwrap();
        let text = res.text().await.unwrap();
        assert!(!text.contains("no route for"), "{method} {path}: {text}");
    }
    let (status, err) = error_of(
        hub.req(Method::GET, "/v1/nothing", None)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(err.message.contains("no route for GET /v1/nothing"));
    // Every operation documents its errors with the ErrorBody schema.
    for (_, item) in doc["paths"].as_object().unwrap() {
        for (_, op) in item.as_object().unwrap() {
            for (code, res) in op["responses"].as_object().unwrap() {
                if code.starts_with('4') || code.starts_with('5') {
                    assert_eq!(
                        res["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let hub = hub().await;
    hub.req(Method::GET, "/healthz", None).send().await.unwrap();
    hub.req(Method::GET, "/healthz", None).send().await.unwrap();
    hub.req(Method::GET, "/v1/stores/S002/stock", Some(&hub.gw))
        .send()
        .await
        .unwrap();
    hub.post_json_batch(json!({"stores": "all", "prices": [row(G1, "1"), row(G2, "2")]}))
        .await;
    // Made-up methods must not mint new metric series.
    for made_up in ["FOO1", "FOO2"] {
        let m = Method::from_bytes(made_up.as_bytes()).unwrap();
        hub.req(m, "/healthz", None).send().await.unwrap();
    }
    let res = hub.req(Method::GET, "/metrics", None).send().await.unwrap();
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let m = res.text().await.unwrap();
    for line in [
        r#"aisle_hub_http_requests_total{route="/healthz",method="GET",status="200"} 2"#,
        r#"aisle_hub_http_requests_total{route="/v1/stores/{id}/stock",method="GET",status="403"} 1"#,
        r#"aisle_hub_http_requests_total{route="/v1/price-batches",method="POST",status="201"} 1"#,
        "aisle_hub_price_batches_total 1",
        "aisle_hub_price_batch_items_total 2",
        "aisle_hub_events_ingested_total 0",
        "aisle_hub_long_polls_waiting 0",
    ] {
        assert!(m.contains(line), "missing {line}:\n{m}");
    }
    assert!(!m.contains("FOO1") && !m.contains("FOO2"), "{m}");
    assert!(m.contains(r#"method="other""#), "{m}");
}

#[tokio::test]
async fn uploads_sales_stock_and_adjustments_over_http() {
    let hub = hub().await;
    let events = vec![
        sale_event(1, "lane1-0001", G1, 3, 1280),
        sale_event(2, "lane1-0002", G2, 1, 300),
    ];
    let upload = |evs: Vec<LedgerEvent>| {
        hub.sync(Method::POST, "/v1/sync/events", &hub.gw)
            .json(&json!({"events": evs}))
            .send()
    };
    let ack: UploadAck = upload(events.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(ack.acked_through, 2);
    let res = upload(events.clone()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.json::<UploadAck>().await.unwrap().acked_through,
        2,
        "a replay gets the same ack"
    );
    // A gap: 409 seq_gap with where to resume.
    let (status, err) = error_of(upload(vec![sale_event(5, "x", G1, 1, 1)]).await.unwrap()).await;
    assert_eq!(
        (status, err.error.as_str(), err.expected_from),
        (StatusCode::CONFLICT, "seq_gap", Some(3))
    );
    // A bad event: 400 naming its seq, and nothing of the upload stored.
    let mut bad = sale_event(4, "y", G1, 1, 100);
    if let EventBody::SaleCommitted(s) = &mut bad.body {
        s.lines[0].qty = 0;
    }
    let (status, err) = error_of(
        upload(vec![sale_event(3, "z", G1, 1, 1), bad])
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        err.message.starts_with("event seq 4: line 1: quantity"),
        "{}",
        err.message
    );
    let (status, err) = error_of(
        hub.sync(Method::POST, "/v1/sync/events", &hub.gw)
            .header("content-type", "application/json")
            .body(r#"{"events":[{"seq":3,"id":"nope"}]}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(err.message.starts_with("event seq 3: "), "{}", err.message);

    let sales: Value = hub
        .hq(Method::GET, "/v1/stores/S001/sales")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sales["sales"].as_array().unwrap().len(), 2, "{sales}");
    let first = &sales["sales"][0];
    assert_eq!(first["sale_id"], "lane1-0001");
    assert_eq!(first["total"], json!({"minor": 3840, "currency": "CNY"}));
    assert_eq!(first["total_decimal"], "38.40");
    assert_eq!(first["sold_at"], "2026-11-22T08:00:00Z");
    assert_eq!(
        first["payment"],
        json!({"method": "mobile", "reference": "wx-1"})
    );
    assert_eq!(first["event_id"], events[0].id.to_hex());
    assert_eq!(first["lines"][0]["qty"], 3);
    let next = sales["next"].as_u64().unwrap();
    let after: Value = hub
        .hq(Method::GET, &format!("/v1/stores/S001/sales?since={next}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(after["sales"], json!([]));
    let by_time: Value = hub
        .hq(
            Method::GET,
            "/v1/stores/S001/sales?since=2026-11-22T08:00:00Z&limit=1",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            by_time["sales"].as_array().unwrap().len(),
            by_time["more"].as_bool()
        ),
        (1, Some(true))
    );
    let (status, _) = error_of(
        hub.hq(Method::GET, "/v1/stores/S001/sales?since=yesterday")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Stock: the sale's -3, then an HQ adjustment of +10 (idempotent by its id).
    let adj =
        json!({"gtin": G1, "delta": 10, "reason": "delivery", "adjustment_id": "ab".repeat(16)});
    let r1 = hub
        .hq(Method::POST, "/v1/stores/S001/stock-adjustments")
        .json(&adj)
        .send()
        .await
        .unwrap();
    assert_eq!(r1.status(), StatusCode::CREATED);
    let b1: Value = r1.json().await.unwrap();
    let r2 = hub
        .hq(Method::POST, "/v1/stores/S001/stock-adjustments")
        .json(&adj)
        .send()
        .await
        .unwrap();
    assert_eq!(r2.status(), StatusCode::OK);
    assert_eq!(r2.json::<Value>().await.unwrap(), b1);
    let mut conflicting = adj.clone();
    conflicting["delta"] = json!(11);
    let (status, err) = error_of(
        hub.hq(Method::POST, "/v1/stores/S001/stock-adjustments")
            .json(&conflicting)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, err.error.as_str()),
        (StatusCode::CONFLICT, "conflict")
    );
    let (status, _) = error_of(
        hub.hq(Method::POST, "/v1/stores/S001/stock-adjustments")
            .json(&json!({"gtin": G1, "delta": 0, "reason": "x"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let one: Value = hub
        .hq(Method::GET, &format!("/v1/stores/S001/stock?gtin={G1}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        one,
        json!({"store": "S001", "gtin": format!("0{G1}"), "on_hand": 7, "reserved": 0, "available": 7})
    );
    let all: Value = hub
        .req(Method::GET, "/v1/stores/S001/stock", Some(&hub.gw))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        all["items"],
        json!([
            {"gtin": format!("0{G2}"), "on_hand": -1, "reserved": 0, "available": -1},
            {"gtin": format!("0{G1}"), "on_hand": 7, "reserved": 0, "available": 7}
        ])
    );
    // The adjustment reaches the store on its changefeed.
    let page = hub.changes(&hub.gw, "after=0").await;
    assert!(
        matches!(&page.changes[..], [c] if matches!(&c.body, ChangeBody::StockAdjustment(a) if a.delta == 10))
    );
    assert_eq!(
        hub.storage()
            .sales_since(&sid("S001"), SalesSince::All, 10)
            .await
            .unwrap()
            .sales
            .len(),
        2
    );
}

#[tokio::test]
async fn compaction_keeps_cursors_and_a_cursor_beyond_the_head_is_answered_410() {
    let hub = hub().await;
    hub.post_json_batch(json!({"stores": ["S001"], "prices": [row(G1, "1"), row(G2, "1")]}))
        .await;
    let first = hub.changes(&hub.gw, "after=0&limit=1").await;
    assert!(first.more);
    hub.post_json_batch(json!({"stores": ["S001"], "prices": [row(G1, "2"), row(G2, "2")]}))
        .await;
    assert_eq!(hub.storage().compact().await.unwrap().removed, 2);
    // A gateway behind the compaction keeps its cursor and reads the newest versions.
    let behind = hub
        .changes(&hub.gw, &format!("after={}", first.next_cursor))
        .await;
    assert_eq!(behind.changes.len(), 2);
    let first_version = match &first.changes[0].body {
        aisle_protocol::sync::ChangeBody::Price(p) => p.version,
        other => panic!("{other:?}"),
    };
    assert!(behind.changes.iter().all(|c| matches!(
        &c.body,
        aisle_protocol::sync::ChangeBody::Price(p) if p.version > first_version && p.price.minor == 200
    )));
    // A cursor this hub never issued (restored from an older backup): 410, start again.
    let (status, err) = error_of(
        hub.sync(
            Method::GET,
            &format!("/v1/sync/changes?after={}", behind.next_cursor + 1000),
            &hub.gw,
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (status, err.error.as_str()),
        (StatusCode::GONE, "cursor_expired")
    );
    assert_eq!(
        hub.changes(&hub.gw, "after=0").await.changes.len(),
        2,
        "restarting from 0 works"
    );
    let (status, _) = error_of(
        hub.sync(Method::GET, "/v1/sync/changes?after=0&limit=0", &hub.gw)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = error_of(
        hub.sync(Method::GET, "/v1/sync/changes", &hub.gw)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn shutdown_ends_waiting_long_polls() {
    let hub = hub().await;
    let url = format!("{}/v1/sync/changes?after=0&wait_ms=30000", hub.base);
    let poll = hub
        .http
        .get(url)
        .bearer_auth(&hub.gw)
        .header(PROTOCOL_HEADER, "1")
        .send();
    let poll = tokio::spawn(poll);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), hub.handle.shutdown())
        .await
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    let res = poll.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// Two hub processes on one PostgreSQL database: a batch posted to one wakes a long-poll
/// waiting on the other, through LISTEN/NOTIFY.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_hubs_wake_each_others_long_polls() {
    let pg = TempPostgres::create()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is required for this test: {e}"));
    let a = Arc::new(start(storage::open(pg.url()).await.unwrap(), None).await);
    let b = start(storage::open(pg.url()).await.unwrap(), None).await;
    let poller = {
        let a = a.clone();
        tokio::spawn(async move { a.changes(&a.gw, "after=0&wait_ms=20000").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let posted = Instant::now();
    assert_eq!(
        b.post_json_batch(json!({"stores": ["S001"], "prices": [row(G1, "1")]}))
            .await
            .status(),
        StatusCode::CREATED
    );
    let page = tokio::time::timeout(Duration::from_secs(5), poller)
        .await
        .expect("woken through NOTIFY")
        .unwrap();
    assert!(
        posted.elapsed() < Duration::from_secs(2),
        "{:?}",
        posted.elapsed()
    );
    assert_eq!(page.changes.len(), 1);
    b.handle.shutdown().await.unwrap();
    let a = Arc::try_unwrap(a)
        .ok()
        .expect("the poller is done with hub a");
    a.handle.shutdown().await.unwrap();
    pg.cleanup().await.unwrap();
}

/// A label event of S001's gateway at the hub's current time.
fn label_event(seq: u64, body: EventBody) -> LedgerEvent {
    let now = UtcMillis::now();
    LedgerEvent {
        seq,
        id: EventId::from_bytes(rand::random()),
        hlc: Hlc {
            wall_ms: now.0 as u64,
            counter: 0,
        },
        at: now,
        body,
    }
}

#[tokio::test]
async fn shelf_labels_reach_the_batch_report_and_the_stale_list() {
    use aisle_hub::security::{Actor, NewApiToken, Role};
    use aisle_protocol::esl::LabelId;

    let hub = hub().await;
    let created: Value = hub
        .post_json_batch(json!({"stores": ["S001"], "prices": [row(G1, "12.80"), row(G2, "3")]}))
        .await
        .json()
        .await
        .unwrap();
    let batch_id = created["batch_id"].as_str().unwrap().to_owned();
    let page = hub.changes(&hub.gw, "after=0").await;
    let version_of = |gtin: &str| {
        page.changes
            .iter()
            .find_map(|c| match &c.body {
                ChangeBody::Price(p) if p.gtin == Gtin::parse(gtin).unwrap() => {
                    Some((p.gtin, p.version, p.batch_id.clone()))
                }
                _ => None,
            })
            .unwrap()
    };
    let ((g1, v1, b1), (g2, v2, b2)) = (version_of(G1), version_of(G2));
    let events = vec![
        label_event(
            1,
            EventBody::LabelBound {
                label: LabelId(0xABCD),
                gtin: g1,
                shelf: "A1-01".into(),
            },
        ),
        label_event(
            2,
            EventBody::LabelBound {
                label: LabelId(0xABCE),
                gtin: g1,
                shelf: "A1-02".into(),
            },
        ),
        label_event(
            3,
            EventBody::LabelBound {
                label: LabelId(0xABCF),
                gtin: g2,
                shelf: "A2-01".into(),
            },
        ),
        label_event(
            4,
            EventBody::LabelConfirmed {
                label: LabelId(0xABCD),
                gtin: g1,
                version: v1,
                batch_id: b1,
            },
        ),
        label_event(
            5,
            EventBody::LabelNotUpdated {
                label: LabelId(0xABCF),
                gtin: g2,
                version: v2,
                batch_id: b2,
                reason: "tag did not acknowledge".into(),
            },
        ),
    ];
    let upload = |evs: Vec<LedgerEvent>| {
        hub.sync(Method::POST, "/v1/sync/events", &hub.gw)
            .json(&json!({"events": evs}))
            .send()
    };
    for _ in 0..2 {
        // The second time is a replay: the same ack, the same report.
        let res = upload(events.clone()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.json::<UploadAck>().await.unwrap().acked_through, 5);
        let progress: Value = hub
            .hq(Method::GET, &format!("/v1/price-batches/{batch_id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            progress["stores"],
            json!([{"store": "S001", "items": 2, "staged": 0, "active": 0}])
        );
        assert_eq!(
            progress["labels"],
            json!([{"store": "S001", "bound": 3, "confirmed": 1, "pending": 1, "failed": 1}])
        );
    }

    let hub_ref = &hub;
    let get = |query: &'static str| async move {
        let res = hub_ref
            .hq(Method::GET, &format!("/v1/stores/S001/labels{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{query}");
        res.json::<Value>().await.unwrap()
    };
    let stale = get("?status=stale").await;
    assert_eq!(
        (stale["store"].as_str(), stale["status"].as_str()),
        (Some("S001"), Some("stale"))
    );
    let labels = stale["labels"].as_array().unwrap();
    let summary: Vec<_> = labels
        .iter()
        .map(|l| {
            (
                l["label"].as_str().unwrap(),
                l["status"].as_str().unwrap(),
                l["shelf"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("0000ABCE", "pending", "A1-02"),
            ("0000ABCF", "failed", "A2-01")
        ]
    );
    let pending = &labels[0];
    assert_eq!(pending["gtin"], json!(g1));
    assert_eq!(pending["current_version"], json!(v1));
    assert_eq!(pending["shown_version"], Value::Null);
    assert_eq!(
        pending["stale_since"], pending["bound_at"],
        "bound after the price took effect"
    );
    let as_of = aisle_hub::timefmt::parse_rfc3339(stale["as_of"].as_str().unwrap()).unwrap();
    let since =
        aisle_hub::timefmt::parse_rfc3339(pending["stale_since"].as_str().unwrap()).unwrap();
    assert_eq!(
        pending["stale_for_s"],
        json!((as_of.0 - since.0).max(0) / 1000)
    );
    assert_eq!(
        labels[1]["not_updated"]["reason"],
        "tag did not acknowledge"
    );
    assert_eq!(labels[1]["not_updated"]["version"], json!(v2));
    assert_eq!(
        (stale["more"].as_bool(), &stale["next_after"]),
        (Some(false), &Value::Null)
    );

    let confirmed = get("?status=confirmed").await;
    assert_eq!(confirmed["labels"][0]["label"], "0000ABCD");
    assert_eq!(confirmed["labels"][0]["shown_version"], json!(v1));
    assert_eq!(confirmed["labels"][0]["stale_since"], Value::Null);
    assert_eq!(
        get("?status=failed").await["labels"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let first = get("?limit=1").await;
    assert_eq!(
        (first["status"].as_str(), first["more"].as_bool()),
        (Some("all"), Some(true))
    );
    assert_eq!(first["next_after"], "0000ABCD");
    let second = get("?limit=1&after=0000abcd").await;
    assert_eq!(second["labels"][0]["label"], "0000ABCE");

    // Refusals: bad query, unknown store, a gateway, a token without the pricing role.
    for (query, status) in [
        ("S001/labels?status=lost", StatusCode::BAD_REQUEST),
        ("S001/labels?after=12345", StatusCode::BAD_REQUEST),
        ("S001/labels?limit=0", StatusCode::BAD_REQUEST),
        ("S999/labels", StatusCode::NOT_FOUND),
    ] {
        let res = hub
            .hq(Method::GET, &format!("/v1/stores/{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(res).await.0, status, "{query}");
    }
    let res = hub
        .req(Method::GET, "/v1/stores/S001/labels", Some(&hub.gw))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res).await.0, StatusCode::FORBIDDEN);
    let orders = NewApiToken::generate();
    hub.storage()
        .create_api_token(&orders, "oms", Role::Orders, &Actor::cli())
        .await
        .unwrap();
    let res = hub
        .req(Method::GET, "/v1/stores/S001/labels", Some(orders.secret()))
        .send()
        .await
        .unwrap();
    let (status, err) = error_of(res).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(err.message.contains("pricing"), "{}", err.message);

    let metrics = hub
        .req(Method::GET, "/metrics", None)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"aisle_hub_label_events_total{kind="label_bound"} 6"#,
        r#"aisle_hub_label_events_total{kind="label_not_updated"} 2"#,
    ] {
        assert!(metrics.contains(line), "missing {line}:\n{metrics}");
    }

    // The bindings are in the audit log, once each, as the gateway's.
    let audit: Value = hub
        .hq(Method::GET, "/v1/audit?limit=1000")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bound: Vec<_> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "label.bound")
        .map(|e| {
            (
                e["subject"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().starts_with("gateway:gw-S001-"),
            )
        })
        .collect();
    assert_eq!(
        bound,
        vec![
            ("S001/0000ABCD".to_owned(), true),
            ("S001/0000ABCE".to_owned(), true),
            ("S001/0000ABCF".to_owned(), true)
        ]
    );
}
