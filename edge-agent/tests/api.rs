//! The HTTP API of an agent whose hub is down: it must sell and price offline.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aisle_agent::api::{HttpMethod, ROUTES};
use aisle_agent::clock::ManualClock;
use aisle_agent::config::{AgentConfig, ClockConfig, SyncConfig};
use aisle_agent::{Agent, AgentHandle};
use common::{T0, gtin, price};
use reqwest::StatusCode;
use serde_json::{Value, json};

struct TestAgent {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    agent: AgentHandle,
    base: String,
    http: reqwest::Client,
}

/// A port nothing listens on: the hub is down.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

async fn start() -> TestAgent {
    let dir = tempfile::tempdir().unwrap();
    let config = AgentConfig {
        store: "S001".parse().unwrap(),
        hub_url: format!("http://127.0.0.1:{}", closed_port()),
        credential: format!("gw-S001-1a2b3c4d.{}", "ab".repeat(32)),
        gateway: None,
        status_panel: None,
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        sync: SyncConfig {
            backoff_base_ms: 20,
            backoff_cap_ms: 200,
            ..SyncConfig::default()
        },
        clock: ClockConfig::default(),
        labels: None,
        checkout: None,
        footfall: None,
        pickup: None,
    };
    let clock = ManualClock::new(T0);
    let agent = Agent::start(config, clock.clone()).await.unwrap();
    agent
        .ledger()
        .stage_prices(vec![
            price(gtin(1), 3, 1_280, T0 - 1_000),
            price(gtin(2), 1, 350, T0),
            price(gtin(1), 4, 1_500, T0 + 60_000),
            price(gtin(3), 1, 999, T0 + 60_000),
        ])
        .await
        .unwrap();
    let base = format!("http://{}", agent.local_addr());
    TestAgent {
        _dir: dir,
        clock,
        agent,
        base,
        http: reqwest::Client::new(),
    }
}

impl TestAgent {
    async fn post_sale(&self, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}/v1/sales", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {text}: {e}"));
        (status, v)
    }

    async fn sale(&self, v: Value) -> (StatusCode, Value) {
        self.post_sale(v.to_string()).await
    }

    async fn get(&self, path: &str) -> (StatusCode, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let (s, t) = self.get(path).await;
        (
            s,
            serde_json::from_str(&t).unwrap_or_else(|e| panic!("{s} {t}: {e}")),
        )
    }
}

fn sale_body(id: &str, lines: Value) -> Value {
    json!({"sale_id": id, "lines": lines, "payment": {"method": "card", "reference": "auth-778"}})
}

/// Asserts an ErrorBody with this status whose message mentions `needle`.
fn assert_error(got: &(StatusCode, Value), status: StatusCode, needle: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert!(got.1["error"].is_string(), "{}", got.1);
    let msg = got.1["message"].as_str().unwrap();
    assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
}

#[tokio::test]
async fn sales_are_priced_committed_and_idempotent_while_the_hub_is_down() {
    let t = start().await;
    let g1 = gtin(1).to_string();
    let g2 = gtin(2).to_string();
    let body = sale_body(
        "lane-3:0001",
        json!([{"gtin": g1, "qty": 2}, {"gtin": g2, "qty": 3}]),
    );
    let (status, first) = t.sale(body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["sale_id"], "lane-3:0001");
    assert_eq!(
        first["total"],
        json!({"minor": 2 * 1_280 + 3 * 350, "currency": "CNY"})
    );
    assert_eq!(first["total_decimal"], "36.10");
    assert_eq!(first["lines"][0]["unit_price"]["minor"], 1_280);
    assert_eq!(first["lines"][0]["line_total"]["minor"], 2_560);
    assert_eq!(first["lines"][0]["price_version"], 3);
    assert_eq!(first["lines"][1]["gtin"], g2);
    let seq = first["seq"].as_u64().unwrap();
    assert_eq!(
        t.agent.ledger().view().last_seq,
        seq,
        "committed before the answer"
    );
    assert_eq!(t.agent.ledger().stock(gtin(2)).await.unwrap(), -3);

    // The same request again, later and after a price change: the original answer.
    t.clock.advance(120_000);
    let (status, again) = t.sale(body.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, first);
    assert_eq!(
        t.agent.ledger().stock(gtin(2)).await.unwrap(),
        -3,
        "stock moved once"
    );

    // Same id, different body.
    let other = sale_body("lane-3:0001", json!([{"gtin": g1, "qty": 1}]));
    assert_error(&t.sale(other).await, StatusCode::CONFLICT, "lane-3:0001");

    // A new sale now gets the price that became effective.
    let (status, later) = t
        .sale(sale_body("lane-3:0002", json!([{"gtin": g1, "qty": 1}])))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(later["lines"][0]["price_version"], 4);
    assert!(later["seq"].as_u64().unwrap() > seq);
    t.agent.shutdown().await;
}

#[tokio::test]
async fn bad_sales_are_refused_with_the_reason() {
    let t = start().await;
    let g1 = gtin(1).to_string();
    let unknown = gtin(77).to_string();
    let line = |qty: Value| sale_body("s-1", json!([{"gtin": g1, "qty": qty}]));

    let got = t
        .sale(sale_body(
            "s-1",
            json!([{"gtin": g1, "qty": 1}, {"gtin": unknown, "qty": 1}]),
        ))
        .await;
    assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, &unknown);
    assert_error(
        &t.sale(line(json!(0))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "quantity must be 1 to 9999, got 0",
    );
    assert_error(
        &t.sale(line(json!(-1))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "got -1",
    );
    assert_error(
        &t.sale(line(json!(10_000))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "got 10000",
    );
    assert_error(
        &t.sale(line(json!("two"))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid type",
    );
    assert_error(
        &t.sale(line(json!(1.5))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid type",
    );
    assert_error(
        &t.sale(sale_body("s-1", json!([]))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "at least one line",
    );
    let many: Vec<Value> = (0..501).map(|_| json!({"gtin": g1, "qty": 1})).collect();
    assert_error(
        &t.sale(sale_body("s-1", json!(many))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "at most 500 lines",
    );
    assert_error(
        &t.sale(sale_body(
            "s-1",
            json!([{"gtin": "9501101531001", "qty": 1}]),
        ))
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "check digit",
    );
    assert_error(
        &t.sale(sale_body("bad id!", json!([{"gtin": g1, "qty": 1}])))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "sale id",
    );
    let mut extra = line(json!(1));
    extra["discount"] = json!(100);
    assert_error(
        &t.sale(extra).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown field",
    );
    let mut bad_pay = line(json!(1));
    bad_pay["payment"] = json!({"method": "iou"});
    assert_error(
        &t.sale(bad_pay).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown variant",
    );
    assert_error(
        &t.post_sale("{\"sale_id\": \"s-1\", \"lines\": [").await,
        StatusCode::BAD_REQUEST,
        "malformed JSON",
    );
    assert_error(
        &t.post_sale("not json").await,
        StatusCode::BAD_REQUEST,
        "malformed JSON",
    );

    // A body over 1 MiB: refused before parsing.
    let mut huge = line(json!(1));
    huge["payment"]["reference"] = json!("x".repeat(1024 * 1024 + 10));
    assert_error(
        &t.post_sale(huge.to_string()).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "1048576",
    );

    // None of that wrote anything.
    assert_eq!(t.agent.ledger().stats().sales_committed, 0);
    assert_eq!(t.agent.ledger().stock(gtin(1)).await.unwrap(), 0);
    t.agent.shutdown().await;
}

#[tokio::test]
async fn prices_show_only_what_is_active_now() {
    let t = start().await;
    let (status, p) = t.get_json(&format!("/v1/prices/{}", gtin(1))).await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(p["gtin"], gtin(1).to_string());
    assert_eq!(p["price"], json!({"minor": 1_280, "currency": "CNY"}));
    assert_eq!(p["price_decimal"], "12.80");
    assert_eq!(p["version"], 3);
    assert_eq!(p["batch_id"], "b-3");
    assert_eq!(p["name"], format!("Oolong tea 500ml #{}", gtin(1)));
    assert_eq!(p["active_since"], "2026-01-01T00:00:00Z");
    // The EAN-13 form of the same GTIN finds the same product.
    let short = gtin(1).to_string()[1..].to_string();
    assert_eq!(
        t.get_json(&format!("/v1/prices/{short}")).await.1["version"],
        3
    );

    // gtin(3) has only a pending price.
    let g3 = format!("/v1/prices/{}", gtin(3));
    assert_error(
        &t.get_json(&g3).await,
        StatusCode::NOT_FOUND,
        &gtin(3).to_string(),
    );
    assert_error(
        &t.get_json(&format!("/v1/prices/{}", gtin(50))).await,
        StatusCode::NOT_FOUND,
        "no active price",
    );
    assert_error(
        &t.get_json("/v1/prices/12345").await,
        StatusCode::BAD_REQUEST,
        "bad GTIN",
    );
    assert_error(
        &t.get_json("/v1/prices/9501101531001").await,
        StatusCode::BAD_REQUEST,
        "check digit",
    );

    // At effective_at (hub-corrected time) the activator makes them active.
    t.clock.advance(60_000);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (s, p) = t.get_json(&g3).await;
        if s == StatusCode::OK {
            assert_eq!(p["version"], 1);
            assert_eq!(p["active_since"], "2026-01-01T00:01:00Z");
            break;
        }
        assert!(Instant::now() < deadline, "pending price never activated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        t.get_json(&format!("/v1/prices/{}", gtin(1))).await.1["version"],
        4
    );
    t.agent.shutdown().await;
}

#[tokio::test]
async fn status_metrics_and_openapi() {
    let t = start().await;
    let (s, _) = t
        .sale(sale_body(
            "s-1",
            json!([{"gtin": gtin(2).to_string(), "qty": 1}]),
        ))
        .await;
    assert_eq!(s, StatusCode::CREATED);

    // The hub is down: the agent says so, and counts what waits for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let (s, v) = t.get_json("/v1/sync/status").await;
        assert_eq!(s, StatusCode::OK);
        if !v["last_error"].is_null() {
            break v;
        }
        assert!(Instant::now() < deadline, "no sync error reported: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let last_seq = t.agent.ledger().view().last_seq;
    assert_eq!(status["store"], "S001");
    assert_eq!(status["link"], "down");
    assert_eq!(status["last_seq"], last_seq);
    assert_eq!(status["outbox_depth"], last_seq);
    assert_eq!(status["acked_through"], 0);
    assert_eq!(status["cursor"], 0);
    assert_eq!(status["last_contact"], Value::Null);
    assert_eq!(status["clock_alarm"], false);
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{status}"
    );
    assert_eq!(
        serde_json::to_value(t.agent.sync_status()).unwrap()["outbox_depth"],
        last_seq
    );

    let (s, m) = t.get("/metrics").await;
    assert_eq!(s, StatusCode::OK);
    assert!(m.contains("aisle_agent_sales_committed_total 1\n"), "{m}");
    assert!(
        m.contains(&format!("aisle_agent_outbox_depth {last_seq}\n")),
        "{m}"
    );
    assert!(m.contains("aisle_agent_group_commit_size_bucket"), "{m}");
    assert!(m.contains("aisle_agent_sync_errors_total"), "{m}");
    assert!(m.contains("aisle_agent_clock_skew_ms 0\n"), "{m}");

    assert_eq!(
        t.get_json("/healthz").await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    assert_error(
        &t.get_json("/v1/nothing").await,
        StatusCode::NOT_FOUND,
        "no such route",
    );
    t.agent.shutdown().await;
}

#[tokio::test]
async fn openapi_lists_every_route_the_router_serves() {
    let t = start().await;
    let (s, doc) = t.get_json("/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    // Every route below, the pickup API included (the staff page may add more).
    assert!(ROUTES.len() >= 15, "{}", ROUTES.len());
    for route in ROUTES {
        let method = route.method.as_str().to_lowercase();
        assert!(
            doc["paths"][route.path][&method].is_object(),
            "{} {} is served but not documented",
            route.method.as_str(),
            route.path
        );
        // And it is really served: the router answers it, not the fallback.
        let path = route
            .path
            .replace("{gtin}", &gtin(1).to_string())
            .replace("{id}", "door-1")
            .replace("{order_id}", "web-1");
        let url = format!("{}{path}", t.base);
        let r = match route.method {
            HttpMethod::Get => t.http.get(url).send().await.unwrap(),
            HttpMethod::Post => t.http.post(url).body("{}").send().await.unwrap(),
            HttpMethod::Delete => t.http.delete(url).send().await.unwrap(),
        };
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(!text.contains("no such route"), "{path}: {status} {text}");
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
    }
    let documented: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    assert_eq!(
        documented,
        ROUTES.len(),
        "documented routes that are not served"
    );
    t.agent.shutdown().await;
}
