//! The staff pickup page (`GET /pickup`) end to end, in a real headless Chromium driven over
//! WebDriver (`chromedriver`, Debian's `chromium` and `chromium-driver`; `scripts/test` installs
//! them). A real agent takes two orders from a small fake hub's changefeed; the page signs in,
//! picks, marks ready, hands over on a typed fallback code, refuses a second scan, and shows the
//! history; the agent's API is checked after each step.
//!
//! Without chromedriver the browser test fails (it does not skip): set `CHROMEDRIVER` and
//! `CHROMIUM` to use other binaries than `/usr/bin/chromedriver` and `/usr/bin/chromium`.
#![allow(clippy::unwrap_used)]

mod browser;
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aisle_agent::clock::SystemClock;
use aisle_agent::config::{AgentConfig, ClockConfig, PickupSettings, StaffConfig, SyncConfig};
use aisle_agent::{Agent, AgentHandle};
use aisle_protocol::pickup::{
    FallbackCode, PickupClaims, PickupKey, PickupOrder, PickupOrderLine, code_digest,
};
use aisle_protocol::sync::{
    Change, ChangeBody, ChangePage, ChangesQuery, EventUpload, PROTOCOL_HEADER, SERVER_TIME_HEADER,
    UploadAck, path,
};
use aisle_protocol::{OrderId, StoreId, UtcMillis};
use anyhow::ensure;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use browser::*;
use common::gtin;
use ed25519_dalek::SigningKey;
use fantoccini::Client;
use serde_json::{Value, json};
use tokio::sync::Notify;

const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const GATEWAY: &str = "gw-S001-1a2b3c4d";
const STORE: &str = "S001";
const STAFF: &str = "Ana";
const PIN: &str = "2468";
/// The order due first (picked and handed over) and one due later (stays in the queue).
const SOON: &str = "web-2002";
const LATER: &str = "web-1001";
/// Arrives while the page shows the queue.
const NEW: &str = "web-3003";
const DEVICE: &str = "counter-1";
const LOCATION: &str = "Shelf B3";
/// A product name that would be markup if the page ever put data in the DOM as HTML.
const MARKUP_NAME: &str = "Chili oil <b>extra hot</b>";
/// Each screen is saved as `/tmp/pickup-<name>.png` at phone size, to look at.
const SCREENSHOTS: &str = "/tmp/pickup";

// ---- a fake hub: one changefeed and an upload endpoint that keeps everything -------------------

#[derive(Debug, Default)]
struct FakeHub {
    feed: Mutex<Vec<Change>>,
    uploaded: Mutex<Vec<Value>>,
    changed: Notify,
}

impl FakeHub {
    fn push(&self, body: ChangeBody) {
        let mut feed = self.feed.lock().unwrap();
        let seq = feed.len() as u64 + 1;
        feed.push(Change { seq, body });
        drop(feed);
        self.changed.notify_waiters();
    }

    /// Event kinds uploaded so far, in upload order.
    fn uploaded_kinds(&self) -> Vec<String> {
        self.uploaded
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| e["body"]["type"].as_str().map(str::to_string))
            .collect()
    }
}

fn hub_answer(status: StatusCode, body: impl serde::Serialize) -> Response {
    let mut r = (status, Json(body)).into_response();
    let h = r.headers_mut();
    h.insert(PROTOCOL_HEADER, "1".parse().unwrap());
    h.insert(
        SERVER_TIME_HEADER,
        UtcMillis::now().0.to_string().parse().unwrap(),
    );
    r
}

async fn hub_changes(State(hub): State<Arc<FakeHub>>, Query(q): Query<ChangesQuery>) -> Response {
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(u64::from(q.wait_ms.min(2_000)));
    loop {
        let notified = hub.changed.notified();
        let page: Vec<Change> = hub
            .feed
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.seq > q.after)
            .cloned()
            .collect();
        if !page.is_empty() || tokio::time::Instant::now() >= deadline {
            let next_cursor = page.last().map_or(q.after, |c| c.seq);
            return hub_answer(
                StatusCode::OK,
                ChangePage {
                    changes: page,
                    next_cursor,
                    more: false,
                    server_time: UtcMillis::now(),
                },
            );
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

async fn hub_events(State(hub): State<Arc<FakeHub>>, body: Bytes) -> Response {
    let up: EventUpload = serde_json::from_slice(&body).unwrap();
    let acked_through = up.events.last().map_or(0, |e| e.seq);
    let mut stored = hub.uploaded.lock().unwrap();
    let known = stored.len() as u64;
    for e in up.events {
        if e.seq > known {
            stored.push(serde_json::to_value(&e).unwrap());
        }
    }
    hub_answer(
        StatusCode::OK,
        UploadAck {
            acked_through: acked_through.max(known),
            server_time: UtcMillis::now(),
        },
    )
}

async fn start_hub() -> (Arc<FakeHub>, String) {
    let hub = Arc::new(FakeHub::default());
    let app = axum::Router::new()
        .route(path::CHANGES, axum::routing::get(hub_changes))
        .route(path::EVENTS, axum::routing::post(hub_events))
        .with_state(hub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (hub, url)
}

// ---- the store: an agent with one member of staff and two orders -----------------------------

struct Store {
    agent: AgentHandle,
    hub: Arc<FakeHub>,
    base: String,
    http: reqwest::Client,
    /// A session of our own, to check what the API says.
    token: String,
    code: FallbackCode,
    qr: String,
    _dir: tempfile::TempDir,
}

fn order(
    id: &str,
    pickup_in_min: i64,
    lines: &[(u64, u32, &str)],
    code: &FallbackCode,
) -> PickupOrder {
    let now = UtcMillis::now().0;
    PickupOrder {
        order_id: OrderId::parse(id).unwrap(),
        lines: lines
            .iter()
            .map(|&(n, qty, name)| PickupOrderLine {
                gtin: gtin(n),
                qty,
                name: name.to_string(),
            })
            .collect(),
        placed_at: UtcMillis(now - 60_000),
        pickup_by: UtcMillis(now + pickup_in_min * 60_000),
        expires_at: UtcMillis(now + 2 * 24 * 3_600_000),
        code_digest: code_digest(&STORE.parse().unwrap(), code),
        key_id: 1,
    }
}

async fn start_store() -> Store {
    let (hub, url) = start_hub().await;
    let key = SigningKey::from_bytes(&[9u8; 32]);
    let store: StoreId = STORE.parse().unwrap();
    let code = FallbackCode::from_bits([0x3a, 0x91, 0x5c, 0x07, 0xe2]);
    let other_code = FallbackCode::from_bits([0x11, 0x22, 0x33, 0x44, 0x55]);
    // The later order first in the feed, and with the smaller id: the queue must sort by time.
    let later = order(LATER, 120, &[(5, 1, "Green tea 100 bags")], &other_code);
    let soon = order(
        SOON,
        20,
        &[
            (3, 2, "Oolong tea 500ml"),
            (1, 1, "Jasmine rice 1kg"),
            (2, 1, "Soy sauce 250ml"),
            (4, 1, MARKUP_NAME),
        ],
        &code,
    );
    let qr = PickupClaims {
        order: soon.order_id.clone(),
        store: store.clone(),
        issued_at: soon.placed_at,
        expires_at: soon.expires_at,
        key_id: 1,
    }
    .sign(&key);
    hub.push(ChangeBody::PickupKey(PickupKey::of(
        1,
        &key.verifying_key(),
    )));
    hub.push(ChangeBody::PickupOrder(later));
    hub.push(ChangeBody::PickupOrder(soon));

    let dir = tempfile::tempdir().unwrap();
    let config = AgentConfig {
        store,
        hub_url: url,
        credential: format!("{GATEWAY}.{SECRET}"),
        gateway: None,
        status_panel: None,
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        sync: SyncConfig {
            long_poll_ms: 2_000,
            upload_batch: 100,
            backoff_base_ms: 10,
            backoff_cap_ms: 200,
            skew_alarm_ms: 5_000,
        },
        clock: ClockConfig::default(),
        labels: None,
        checkout: None,
        footfall: None,
        pickup: Some(PickupSettings {
            staff: vec![StaffConfig {
                name: STAFF.into(),
                pin_hash: aisle_agent::pickup::staff::hash_pin(PIN).unwrap(),
                role: aisle_agent::config::StaffRole::Staff,
            }],
        }),
    };
    let agent = Agent::start(config, Arc::new(SystemClock)).await.unwrap();
    let base = format!("http://{}", agent.local_addr());
    let http = reqwest::Client::new();
    let signed: Value = http
        .post(format!("{base}/v1/staff/sign-in"))
        .json(&json!({ "pin": PIN }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = signed["token"].as_str().unwrap().to_string();
    let s = Store {
        agent,
        hub,
        base,
        http,
        token,
        code,
        qr,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = s.get("/v1/pickups?status=open").await;
        if open["orders"].as_array().is_some_and(|o| o.len() == 2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never listed both orders from the hub: {open}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s
}

impl Store {
    async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn order(&self, id: &str) -> Value {
        self.get(&format!("/v1/pickups/{id}")).await
    }
}

// ---- the browser ---------------------------------------------------------------------------

/// The viewport: a 390x844 phone, or `AISLE_PICKUP_VIEWPORT=820x1180` (say) to look at the
/// screens at tablet size.
fn viewport() -> (u32, u32) {
    std::env::var("AISLE_PICKUP_VIEWPORT")
        .ok()
        .and_then(|v| {
            let (w, h) = v.split_once('x')?;
            Some((w.parse().ok()?, h.parse().ok()?))
        })
        .unwrap_or((390, 844))
}

/// The whole staff flow. Returns an error (not a panic) so the browser is always closed.
async fn staff_flow(c: &Client, s: &Store) -> anyhow::Result<()> {
    c.goto(&format!("{}/pickup", s.base)).await?;
    ensure!(c.title().await? == "Aisle pickup");
    let width = c.execute("return window.innerWidth", vec![]).await?;
    ensure!(width == json!(viewport().0), "viewport width {width}");

    // 1. A wrong PIN is refused and the page stays on sign-in.
    type_into(c, "#pin", "1111").await?;
    click(c, "#signin-btn").await?;
    wait_text(c, "#signin-msg", &["Wrong PIN"]).await?;
    shot(c, &format!("{SCREENSHOTS}-signin-refused.png")).await?;
    ensure!(
        is_hidden(c, "#s-queue").await?,
        "a wrong PIN showed the queue"
    );
    ensure!(is_hidden(c, "#bar").await?);

    // 2. Sign in (Enter submits): the queue, soonest pickup first.
    type_into(c, "#pin", &format!("{PIN}{ENTER}")).await?;
    wait_text(c, "#who", &[STAFF]).await?;
    let queue = wait_text(c, "#q-list", &[SOON, LATER]).await?;
    shot(c, &format!("{SCREENSHOTS}-queue.png")).await?;
    ensure!(
        queue.find(SOON) < queue.find(LATER),
        "soonest first: {queue:?}"
    );
    let first = c.find(css("#q-list li:first-child button")).await?;
    ensure!(first.attr("data-order").await?.as_deref() == Some(SOON));
    wait_text(c, "#nav-queue", &["Queue (2)"]).await?;

    // 3. Open the order: its pick list, by shelf (none known: by GTIN), names as plain text.
    click(c, &format!("#q-list button[data-order='{SOON}']")).await?;
    wait_text(c, "#o-title", &[SOON]).await?;
    wait_text(c, "#o-facts", &["Received"]).await?;
    let lines = c.find_all(css("#o-lines li")).await?;
    ensure!(lines.len() == 4, "four lines, got {}", lines.len());
    let mut shown = Vec::new();
    for l in &lines {
        shown.push(l.text().await?);
    }
    let expected = [
        "Jasmine rice 1kg",
        "Soy sauce 250ml",
        "Oolong tea 500ml",
        MARKUP_NAME,
    ];
    for (line, name) in shown.iter().zip(expected) {
        ensure!(line.contains(name), "pick list order: {shown:?}");
        ensure!(line.contains("Shelf not known"), "{line:?}");
    }
    ensure!(shown[2].contains("2 ×"), "{shown:?}");
    ensure!(
        c.find_all(css("#o-lines b")).await?.is_empty(),
        "a product name was put in the DOM as HTML"
    );
    ensure!(
        !c.find(css("#pick-0")).await?.is_enabled().await?,
        "lines can be ticked before picking started"
    );

    // 4. Start picking: the API records who.
    click(c, "#o-pick").await?;
    wait_text(c, "#o-facts", &["Picking", STAFF]).await?;
    shot(c, &format!("{SCREENSHOTS}-picking.png")).await?;
    let o = s.order(SOON).await;
    ensure!(o["status"] == "picking" && o["picking_by"] == STAFF, "{o}");

    // 5. Tick three lines, mark the soy sauce missing; Mark ready refuses until all are done.
    click(c, "#pick-0").await?;
    click(c, "#pick-2").await?;
    type_into(c, "#o-location", LOCATION).await?;
    click(c, "#o-ready").await?;
    wait_text(c, "#o-msg", &["Tick every line", "2 left"]).await?;
    ensure!(s.order(SOON).await["status"] == "picking");
    click(c, "#pick-3").await?;
    click(c, "#miss-1").await?;
    wait_text(c, "#o-progress", &["3 of 4 lines picked, 1 missing"]).await?;
    click(c, "#o-ready").await?;
    wait_text(c, "#o-facts", &["Ready", LOCATION]).await?;
    wait_text(c, "#o-info", &["Ready at Shelf B3"]).await?;
    shot(c, &format!("{SCREENSHOTS}-ready.png")).await?;
    let o = s.order(SOON).await;
    ensure!(o["status"] == "ready" && o["location"] == LOCATION, "{o}");
    let missing: Vec<&str> = o["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["missing"] == true)
        .filter_map(|l| l["gtin"].as_str())
        .collect();
    ensure!(missing == [gtin(2).as_str()], "missing lines: {o}");

    // 6. Back in the queue the order shows ready.
    click(c, "#o-back").await?;
    wait_text(
        c,
        &format!("#q-list button[data-order='{SOON}']"),
        &["Ready", "at Shelf B3"],
    )
    .await?;

    // 7. The hand-over screen: this device's name, then the typed fallback code and Enter.
    click(c, "#nav-scan").await?;
    let focused = c.active_element().await?.attr("id").await?;
    ensure!(
        focused.as_deref() == Some("scan-input"),
        "scan box focused: {focused:?}"
    );
    click(c, "#device-summary").await?;
    type_into(c, "#device-name", &format!("{DEVICE}{TAB}")).await?;
    wait_text(c, "#device-summary", &[DEVICE]).await?;
    let code = s.code.to_string();
    type_into(c, "#scan-input", &format!("{}{ENTER}", code.to_lowercase())).await?;
    wait_text(c, "#verdict", &["HAND OVER"]).await?;
    let handed = wait_text(
        c,
        "#result-box",
        &[
            SOON,
            "Bag at: Shelf B3",
            "1 ×Jasmine rice 1kg",
            "2 ×Oolong tea 500ml",
            MARKUP_NAME,
            "Soy sauce 250ml — MISSING, not in the bag",
            "Partial order",
            STAFF,
        ],
    )
    .await?;
    ensure!(
        c.find_all(css("#result-box b")).await?.is_empty(),
        "markup in a name became HTML: {handed:?}"
    );
    // The inline style ran under the page's CSP (allowed by its hash): the verdict is green.
    let green = c
        .find(css("#verdict"))
        .await?
        .css_value("background-color")
        .await?;
    ensure!(green.contains("11, 107, 47"), "verdict background {green}");
    shot(c, &format!("{SCREENSHOTS}-handover.png")).await?;
    let o = s.order(SOON).await;
    ensure!(o["status"] == "partially_collected", "{o}");
    let col = &o["collected"];
    ensure!(
        col["staff"] == STAFF
            && col["device"] == DEVICE
            && col["method"] == "code"
            && col["partial"] == true,
        "{o}"
    );

    // 8. Refusals in plain words: a code no order has, an altered QR; then the QR scanned again
    // (a scanner types it and presses Enter, wherever the focus is): who, when and where.
    type_into(c, "#scan-input", &format!("ZZZZ-ZZZ9{ENTER}")).await?;
    wait_text(c, "#verdict", &["DO NOT HAND OVER"]).await?;
    wait_text(
        c,
        "#refusal-reason",
        &["No order at this store has this code."],
    )
    .await?;
    // One character of the signed claims changed (the prefix `AISLE1.` is 7 characters).
    let mut altered = s.qr.clone();
    let swap = if altered.as_bytes()[10] == b'A' {
        "B"
    } else {
        "A"
    };
    altered.replace_range(10..11, swap);
    type_into(c, "#scan-input", &format!("{altered}{ENTER}")).await?;
    wait_text(c, "#refusal-reason", &["not a valid pickup code"]).await?;
    click(c, "#scan-title").await?;
    let focused = c.active_element().await?;
    ensure!(focused.attr("id").await?.as_deref() == Some("scan-title"));
    focused.send_keys(&format!("{}{ENTER}", s.qr)).await?;
    wait_text(c, "#verdict", &["DO NOT HAND OVER"]).await?;
    let refused = wait_text(
        c,
        "#refusal-reason",
        &["Already collected at ", " by Ana, at counter-1."],
    )
    .await?;
    shot(c, &format!("{SCREENSHOTS}-refused.png")).await?;
    ensure!(
        s.order(SOON).await["collected"]["method"] == "code",
        "the second scan changed the collection: {refused}"
    );

    // 9. History shows it; the other order is still open.
    click(c, "#nav-history").await?;
    let history = wait_text(
        c,
        "#h-list",
        &[SOON, "Partly collected", "Collected by Ana at "],
    )
    .await?;
    ensure!(!history.contains(LATER), "{history:?}");
    shot(c, &format!("{SCREENSHOTS}-history.png")).await?;
    click(c, "#nav-queue").await?;
    let queue = wait_text(c, "#q-list", &[LATER]).await?;
    ensure!(!queue.contains(SOON), "{queue:?}");
    wait_text(c, "#nav-queue", &["Queue (1)"]).await?;
    let open = s.get("/v1/pickups?status=open").await;
    let ids: Vec<&str> = open["orders"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["order_id"].as_str())
        .collect();
    ensure!(ids == [LATER], "{open}");

    // 10. A new order from HQ shows up in the queue by itself (the page polls every few seconds).
    let code = FallbackCode::from_bits([0x77, 0x66, 0x55, 0x44, 0x33]);
    s.hub.push(ChangeBody::PickupOrder(order(
        NEW,
        60,
        &[(6, 3, "Sesame oil 200ml")],
        &code,
    )));
    wait_text(c, "#q-list", &[NEW, LATER]).await?;
    wait_text(c, "#nav-queue", &["Queue (2)"]).await?;

    // 11. Sign out: back to sign-in, and the API no longer takes the page's cookie.
    click(c, "#sign-out").await?;
    wait_text(c, "#signin-msg", &["Signed out"]).await?;
    let status = c
        .execute_async(
            "const done = arguments[arguments.length - 1];\
             fetch('/v1/pickups', {credentials: 'same-origin'}).then(r => done(r.status));",
            vec![],
        )
        .await?;
    ensure!(status == json!(401), "after sign-out: {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_pick_ready_and_hand_over_in_headless_chromium() {
    let started = Instant::now();
    let driver = start_chromedriver().await;
    let store = start_store().await;
    let profile = tempfile::tempdir().unwrap();
    let (width, height) = viewport();
    let phone = Device {
        width,
        height,
        touch: true,
    };
    let client = open_browser(&driver, profile.path(), phone).await;
    let outcome = staff_flow(&client, &store).await;
    if outcome.is_err()
        && let Ok(png) = client.screenshot().await
    {
        let _ = std::fs::write("/tmp/pickup-failure.png", png);
    }
    let closed = client.close().await;
    if let Err(e) = outcome {
        panic!("{e:#} (screenshot: /tmp/pickup-failure.png)");
    }
    closed.unwrap();

    // The store's events went up to the hub in order.
    let deadline = Instant::now() + Duration::from_secs(10);
    let want = [
        "pickup_received",
        "pickup_received",
        "pickup_picking",
        "pickup_ready",
        "pickup_collected",
        "pickup_received",
    ];
    loop {
        let kinds = store.hub.uploaded_kinds();
        let pickup: Vec<&str> = kinds
            .iter()
            .map(String::as_str)
            .filter(|k| k.starts_with("pickup_"))
            .collect();
        if pickup == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "uploaded pickup events: {pickup:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.agent.shutdown().await;
    eprintln!("browser test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pickup_page_is_served_with_a_strict_policy() {
    let store = start_store().await;
    let r = store
        .http
        .get(format!("{}/pickup", store.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    let header = |name: &str| h.get(name).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(
        header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(header("cache-control").as_deref(), Some("no-store"));
    let csp = header("content-security-policy").unwrap();
    assert!(csp.starts_with("default-src 'self'; "), "{csp}");
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(csp.contains("style-src 'sha256-"), "{csp}");
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"));
    let body = r.text().await.unwrap();
    assert!(body.starts_with("<!doctype html>"));
    assert!(body.contains("Staff sign-in"));
    // The page itself needs no session; the API behind it does.
    let r = store
        .http
        .get(format!("{}/v1/pickups", store.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    store.agent.shutdown().await;
}
