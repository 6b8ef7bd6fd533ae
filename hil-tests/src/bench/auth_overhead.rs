//! `auth_overhead`: what authenticating a gateway costs the hub on sync requests.
//!
//! Two hub processes serve one database: the release `aisle-hub` (every gateway request signed,
//! clock-checked, nonce recorded, revocation checked — `aisle_protocol::auth`), and the same
//! hub built with the `bench-unauthenticated` feature and run with
//! `AISLE_BENCH_UNAUTHENTICATED=1`, which believes the `x-aisle-gateway` header ("authentication
//! switched off"; `scripts/bench` builds it into `target/bench-unauthenticated`). One enrolled
//! gateway sends the same sync requests to both, alternating request by request on one
//! keep-alive connection each, so both see the same machine and the same database:
//!
//! * `page`: `GET /v1/sync/changes` answering a page of 500 price changes (a store catching up);
//! * `poll`: `GET /v1/sync/changes` at the head with `wait_ms=0` (an idle store's poll, the
//!   cheapest request, where a fixed cost shows most);
//! * `upload`: `POST /v1/sync/events` with 20 sales (a busy store's upload).
//!
//! Reported per kind and over all requests: p50 and p99 of each side and their ratio.
//! Target (issue 7): ratio under 1.2. Timed from sending the request to reading the whole
//! answer; the gateway's own signing happens before and is not the hub's latency.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aisle_protocol::auth::{EnrolRequest, EnrolResponse, GATEWAY_HEADER, sign_request};
use aisle_protocol::sync::{
    EventBody, EventUpload, LedgerEvent, PROTOCOL_HEADER, PROTOCOL_VERSION, Payment, PaymentMethod,
    SaleLine, SaleRecord, path,
};
use aisle_protocol::{Currency, EventId, GatewayId, Gtin, Hlc, Money, SaleId, UtcMillis};
use anyhow::{Context, Result, anyhow, bail};
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};

use super::{BenchResult, quantile_ms, round};
use crate::harness::{Backend, HQ_TOKEN, HqApi, HubDb, HubProcess, free_port, gtin, hub_cli};

const TARGET_RATIO: f64 = 1.2;
/// Price changes in the store's changefeed (one `page`).
const PAGE: usize = 500;
/// Sales per `upload`.
const SALES_PER_UPLOAD: usize = 20;
const STORE: &str = "S001";

/// Where `scripts/bench` puts the hub built with `bench-unauthenticated`.
pub const UNAUTHENTICATED_HUB: &str = "target/bench-unauthenticated/release/aisle-hub";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Page,
    Poll,
    Upload,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Page, Kind::Poll, Kind::Upload];
    fn name(self) -> &'static str {
        match self {
            Kind::Page => "page",
            Kind::Poll => "poll",
            Kind::Upload => "upload",
        }
    }
}

/// The gateway: its key, id and next event seq (shared by both hubs: one database).
struct Gateway {
    key: SigningKey,
    id: GatewayId,
    next_seq: u64,
    head: u64,
}

/// A started unauthenticated hub, killed on drop.
struct Unauthenticated {
    child: std::process::Child,
    url: String,
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_unauthenticated(db_url: &str, log_dir: &Path) -> Result<Unauthenticated> {
    let bin = Path::new(UNAUTHENTICATED_HUB);
    if !bin.is_file() {
        bail!(
            "{UNAUTHENTICATED_HUB} is missing: scripts/bench builds it with \
             `cargo build --release -p aisle-hub --features bench-unauthenticated --target-dir target/bench-unauthenticated`"
        );
    }
    let port = free_port()?;
    let log = std::fs::File::create(log_dir.join("hub-unauthenticated.log"))?;
    let child = Command::new(bin)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--db",
            db_url,
        ])
        .env("AISLE_HQ_TOKEN", HQ_TOKEN)
        .env("AISLE_BENCH_UNAUTHENTICATED", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting the unauthenticated hub")?;
    Ok(Unauthenticated {
        child,
        url: format!("http://127.0.0.1:{port}"),
    })
}

fn sale_event(seq: u64, n: usize) -> Result<LedgerEvent> {
    let cny = Currency::parse("CNY")?;
    let line = SaleLine {
        gtin: Gtin::parse(&gtin(1 + (n % PAGE) as u64))?,
        qty: 1,
        unit_price: Money::new(199, cny),
        price_version: 1,
        line_total: Money::new(199, cny),
        weight_g: None,
        discount: None,
    };
    let now = UtcMillis::now();
    Ok(LedgerEvent {
        seq,
        id: EventId::time_ordered(u64::try_from(now.0).unwrap_or(0), rand::random()),
        hlc: Hlc {
            wall_ms: u64::try_from(now.0).unwrap_or(0),
            counter: 0,
        },
        at: now,
        body: EventBody::SaleCommitted(SaleRecord {
            sale_id: SaleId::parse(&format!("bench-{seq:08}"))?,
            total: line.line_total,
            lines: vec![line],
            payment: Payment {
                method: PaymentMethod::Card,
                reference: None,
                offline: false,
            },
        }),
    })
}

/// One request of `kind` to `base`, signed or not; returns its round trip.
async fn request(
    http: &reqwest::Client,
    base: &str,
    gw: &mut Gateway,
    kind: Kind,
    signed: bool,
) -> Result<Duration> {
    let (method, path_and_query, body) = match kind {
        Kind::Page => (
            "GET",
            format!("{}?after=0&wait_ms=0&limit={PAGE}", path::CHANGES),
            Vec::new(),
        ),
        Kind::Poll => (
            "GET",
            format!("{}?after={}&wait_ms=0", path::CHANGES, gw.head),
            Vec::new(),
        ),
        Kind::Upload => {
            let events = (0..SALES_PER_UPLOAD as u64)
                .map(|i| sale_event(gw.next_seq + i, (gw.next_seq + i) as usize))
                .collect::<Result<Vec<_>>>()?;
            gw.next_seq += SALES_PER_UPLOAD as u64;
            (
                "POST",
                path::EVENTS.to_string(),
                serde_json::to_vec(&EventUpload { events })?,
            )
        }
    };
    let mut req = http
        .request(method.parse()?, format!("{base}{path_and_query}"))
        .header(PROTOCOL_HEADER, PROTOCOL_VERSION.to_string());
    if signed {
        let nonce = format!("{:032x}", rand::random::<u128>());
        let headers = sign_request(
            &gw.key,
            &gw.id,
            method,
            &path_and_query,
            UtcMillis::now(),
            &nonce,
            &body,
        )
        .map_err(|e| anyhow!("signing: {e}"))?;
        for (name, value) in headers.pairs() {
            req = req.header(name, value);
        }
    } else {
        req = req.header(GATEWAY_HEADER, gw.id.as_str());
    }
    if !body.is_empty() {
        req = req
            .header("content-type", "application/json")
            .body(body.clone());
    }
    // The hub's latency as the gateway sees it: from sending to the whole answer. Signing is
    // the gateway's own work and happens before.
    let start = Instant::now();
    let r = req.send().await?;
    let status = r.status();
    let bytes = r.bytes().await?;
    let took = start.elapsed();
    if !status.is_success() {
        bail!(
            "{} {} ({}): {status} {}",
            method,
            path_and_query,
            if signed { "signed" } else { "unauthenticated" },
            String::from_utf8_lossy(&bytes)
        );
    }
    if kind == Kind::Page {
        let page: Value = serde_json::from_slice(&bytes)?;
        let n = page["changes"].as_array().map_or(0, Vec::len);
        if n != PAGE {
            bail!("a page held {n} changes, not {PAGE}");
        }
        gw.head = page["next_cursor"].as_u64().unwrap_or(gw.head);
    }
    Ok(took)
}

/// Sets up a store with a page of prices and an enrolled gateway, then measures `rounds`
/// requests of each kind on each hub.
pub async fn run(backend: Backend, rounds: usize) -> Result<BenchResult> {
    let dir = tempfile::tempdir()?;
    let db = HubDb::create(backend, dir.path()).await?;
    let outcome = measure(&db.url, dir.path(), backend, rounds).await;
    db.cleanup().await?;
    outcome
}

async fn measure(db_url: &str, dir: &Path, backend: Backend, rounds: usize) -> Result<BenchResult> {
    hub_cli(db_url, &["store", "add", STORE, "--name", "Bench"])?;
    let hub = HubProcess::start(db_url, dir).await?;
    let open = start_unauthenticated(db_url, dir)?;
    let hq = HqApi::new(&hub.url());
    let prices: Vec<Value> = (1..=PAGE as u64)
        .map(|i| json!({"gtin": gtin(i), "price": "1.99", "currency": "CNY", "name": format!("Item {i}")}))
        .collect();
    hq.post_batch(&json!({"stores": [STORE], "prices": prices}))
        .await?;

    // Enrol one gateway with its own key, as `aisle-agent enroll` does.
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{}/v1/enrolments", hub.url()))
        .bearer_auth(HQ_TOKEN)
        .json(&json!({"store": STORE}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let enrolled: EnrolResponse = http
        .post(format!("{}{}", hub.url(), aisle_protocol::auth::ENROL_PATH))
        .json(&EnrolRequest {
            code: created["code"].as_str().unwrap_or_default().to_string(),
            public_key: aisle_protocol::auth::public_key_hex(&key.verifying_key()),
            name: "bench gateway".into(),
        })
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut gw = Gateway {
        key,
        id: enrolled.gateway_id,
        next_seq: 1,
        head: 0,
    };
    // The unauthenticated hub may still be starting.
    crate::harness::wait_for("the unauthenticated hub", Duration::from_secs(20), || {
        let url = format!("{}/healthz", open.url);
        let http = http.clone();
        async move {
            http.get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
                .then_some(())
        }
    })
    .await?;

    // One keep-alive connection per hub.
    let signed_http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    let open_http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    // Warm up both (connections, caches, the first page read) before timing.
    for kind in Kind::ALL {
        for _ in 0..20 {
            request(&signed_http, &hub.url(), &mut gw, kind, true).await?;
            request(&open_http, &open.url, &mut gw, kind, false).await?;
        }
    }
    let mut signed: [Vec<Duration>; 3] = Default::default();
    let mut unauth: [Vec<Duration>; 3] = Default::default();
    for round_no in 0..rounds {
        for (k, kind) in Kind::ALL.into_iter().enumerate() {
            // Alternate who goes first, so neither side always follows the other's write.
            if round_no % 2 == 0 {
                signed[k].push(request(&signed_http, &hub.url(), &mut gw, kind, true).await?);
                unauth[k].push(request(&open_http, &open.url, &mut gw, kind, false).await?);
            } else {
                unauth[k].push(request(&open_http, &open.url, &mut gw, kind, false).await?);
                signed[k].push(request(&signed_http, &hub.url(), &mut gw, kind, true).await?);
            }
        }
    }
    // Both hubs stored the same store's uploads: the hub holds every sale exactly once.
    let sales = hq.sales(STORE).await?;
    let expected = (gw.next_seq - 1) as usize;
    if sales.len() != expected {
        bail!(
            "the hub holds {} sales, the gateway sent {expected}",
            sales.len()
        );
    }

    let db_name = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let mut r = BenchResult::default();
    let mut all_signed = Vec::new();
    let mut all_unauth = Vec::new();
    for (k, kind) in Kind::ALL.into_iter().enumerate() {
        let (s50, s99) = (
            quantile_ms(&mut signed[k], 0.50),
            quantile_ms(&mut signed[k], 0.99),
        );
        let (u50, u99) = (
            quantile_ms(&mut unauth[k], 0.50),
            quantile_ms(&mut unauth[k], 0.99),
        );
        let name = kind.name();
        r.figure(&format!("{db_name}_{name}_signed_p50_ms"), round(s50, 3));
        r.figure(&format!("{db_name}_{name}_signed_p99_ms"), round(s99, 3));
        r.figure(
            &format!("{db_name}_{name}_unauthenticated_p50_ms"),
            round(u50, 3),
        );
        r.figure(
            &format!("{db_name}_{name}_unauthenticated_p99_ms"),
            round(u99, 3),
        );
        r.figure(&format!("{db_name}_{name}_ratio_p50"), round(s50 / u50, 2));
        r.figure(&format!("{db_name}_{name}_ratio_p99"), round(s99 / u99, 2));
        r.row(
            &format!("{db_name} {name}: signed p50 / p99"),
            format!("{} / {} ms", round(s50, 3), round(s99, 3)),
            format!(
                "unauthenticated {} / {} ms → ratio {} / {}",
                round(u50, 3),
                round(u99, 3),
                round(s50 / u50, 2),
                round(s99 / u99, 2)
            ),
            None,
        );
        all_signed.extend_from_slice(&signed[k]);
        all_unauth.extend_from_slice(&unauth[k]);
    }
    let total = |v: &[Duration]| v.iter().map(Duration::as_secs_f64).sum::<f64>();
    let ratio = total(&all_signed) / total(&all_unauth);
    let (s99, u99) = (
        quantile_ms(&mut all_signed, 0.99),
        quantile_ms(&mut all_unauth, 0.99),
    );
    r.figure(&format!("{db_name}_ratio"), round(ratio, 3));
    r.figure(&format!("{db_name}_p99_ms"), round(s99, 3));
    r.figure(&format!("{db_name}_unauthenticated_p99_ms"), round(u99, 3));
    r.figure(&format!("{db_name}_requests_per_side"), rounds * 3);
    r.row(
        &format!("{db_name}: all sync requests, time signed / unauthenticated"),
        format!("ratio {}, p99 {} ms", round(ratio, 3), round(s99, 3)),
        format!(
            "unauthenticated p99 {} ms; target ratio < {TARGET_RATIO}",
            round(u99, 3)
        ),
        Some(ratio < TARGET_RATIO),
    );
    drop(open);
    drop(hub);
    Ok(r)
}
