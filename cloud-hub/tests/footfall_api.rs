//! The footfall report and chart over HTTP: the hub runs in-process on 127.0.0.1:0, footfall and
//! sales arrive through the sync API as a gateway sends them, and HQ reads them back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use aisle_hub::storage::{self, HubStorage, NewStore};
use aisle_hub::testsupport::TempPostgres;
use aisle_hub::{HqToken, HubHandle, HubServer};
use aisle_protocol::sync::{
    ErrorBody, EventBody, FootfallInterval, LedgerEvent, PROTOCOL_HEADER, Payment, PaymentMethod,
    SaleLine, SaleRecord,
};
use aisle_protocol::{Currency, EventId, Gtin, Hlc, Money, SaleId, StoreId, UtcMillis};
use quick_xml::Reader;
use quick_xml::events::Event;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const HQ: &str = "hq-test-token-0123456789";
const MIN: i64 = 60_000;
const QUARTER: i64 = 15 * MIN;
const HOUR: i64 = 60 * MIN;
/// 2026-11-22T00:00:00Z.
const DAY0: i64 = 1_795_305_600_000;
const H8: i64 = DAY0 + 8 * HOUR;

struct Hub {
    handle: HubHandle,
    http: reqwest::Client,
    /// Credential of S001's gateway.
    gw: String,
    /// Credential of S002's gateway.
    gw2: String,
    _dir: Option<tempfile::TempDir>,
}

async fn start(db: Arc<dyn HubStorage>, dir: Option<tempfile::TempDir>) -> Hub {
    let cny = Currency::parse("CNY").unwrap();
    for (id, name) in [("S001", "Riverside & Co"), ("S002", "Harbour")] {
        db.create_store(&NewStore::new(StoreId::parse(id).unwrap(), name, cny).unwrap())
            .await
            .unwrap();
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
        handle,
        http: reqwest::Client::new(),
        gw,
        gw2,
        _dir: dir,
    }
}

async fn sqlite_hub() -> Hub {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("hub.db").display());
    start(storage::open(&url).await.unwrap(), Some(dir)).await
}

impl Hub {
    fn req(&self, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let r = self
            .http
            .request(Method::GET, format!("{}{path}", self.handle.base_url()));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn upload(&self, cred: &str, events: &[LedgerEvent]) {
        let res = self
            .http
            .post(format!("{}/v1/sync/events", self.handle.base_url()))
            .bearer_auth(cred)
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
    }

    /// HQ's footfall report of S001 with `query`.
    async fn report(&self, query: &str) -> Value {
        let res = self
            .req(&format!("/v1/stores/S001/footfall?{query}"), Some(HQ))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.unwrap()
    }

    async fn error(&self, path: &str, token: Option<&str>) -> (StatusCode, ErrorBody) {
        let res = self.req(path, token).send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("not an ErrorBody ({e}): {text}"));
        (status, body)
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

/// A FootfallCounted event for the interval starting at `start`, emitted when it closed.
fn counted(
    seq: u64,
    zone: &str,
    start: i64,
    (entered, exited): (u64, u64),
    occupancy: Option<u64>,
    missing: &[&str],
) -> LedgerEvent {
    event(
        seq,
        start + QUARTER + 1_000,
        EventBody::FootfallCounted(FootfallInterval {
            zone: zone.into(),
            start: UtcMillis(start),
            end: UtcMillis(start + QUARTER),
            entered,
            exited,
            occupancy,
            cameras_missing: missing.iter().map(|c| c.to_string()).collect(),
        }),
    )
}

fn sale(seq: u64, id: &str, at: i64) -> LedgerEvent {
    let cny = Currency::parse("CNY").unwrap();
    let line = SaleLine {
        gtin: Gtin::parse("9501101531000").unwrap(),
        qty: 1,
        unit_price: Money::new(1280, cny),
        price_version: 1,
        line_total: Money::new(1280, cny),
        weight_g: None,
        discount: None,
    };
    event(
        seq,
        at,
        EventBody::SaleCommitted(SaleRecord {
            sale_id: SaleId::parse(id).unwrap(),
            total: line.line_total,
            lines: vec![line],
            payment: Payment {
                method: PaymentMethod::Card,
                reference: None,
                offline: false,
            },
        }),
    )
}

/// 08:00-09:00 fully counted (two entrances), 09:00-10:00 with a camera offline at 09:30 and
/// nothing at all at 09:45, 10:00-11:00 not counted; five sales.
fn store_day() -> Vec<LedgerEvent> {
    let mut evs = Vec::new();
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        seq
    };
    for q in 0..4 {
        let occupancy = (q == 3).then_some(20);
        evs.push(counted(
            next(),
            "north",
            H8 + q * QUARTER,
            (10, 8),
            occupancy,
            &[],
        ));
    }
    evs.push(counted(next(), "south", H8, (2, 1), Some(12), &[]));
    for m in [5, 20, 50] {
        evs.push(sale(next(), &format!("lane1-08{m:02}"), H8 + m * MIN));
    }
    evs.push(counted(next(), "north", H8 + HOUR, (6, 6), None, &[]));
    evs.push(counted(
        next(),
        "north",
        H8 + HOUR + QUARTER,
        (4, 4),
        None,
        &[],
    ));
    evs.push(counted(
        next(),
        "north",
        H8 + HOUR + 2 * QUARTER,
        (3, 1),
        None,
        &["cam-2"],
    ));
    evs.push(sale(next(), "lane1-0930", H8 + HOUR + 30 * MIN));
    evs.push(sale(next(), "lane1-1010", H8 + 2 * HOUR + 10 * MIN));
    evs
}

/// Every bucket's conversion and the total's, each replaced by "checked".
fn take_conversions(report: &mut Value) -> Vec<Option<f64>> {
    let mut out = Vec::new();
    for b in report["buckets"].as_array_mut().unwrap() {
        out.push(b["conversion"].as_f64());
        b["conversion"] = json!("checked");
    }
    out.push(report["totals"]["conversion"].as_f64());
    report["totals"]["conversion"] = json!("checked");
    out
}

const RANGE: &str = "from=2026-11-22T08:00:00Z&to=2026-11-22T11:00:00Z";

async fn report_counts_visitors_transactions_and_missing_data(hub: Hub) {
    let events = store_day();
    hub.upload(&hub.gw, &events).await;
    // Another store's footfall in the same hour stays its own.
    hub.upload(&hub.gw2, &[counted(1, "main", H8, (500, 500), None, &[])])
        .await;

    let mut report = hub.report(&format!("{RANGE}&interval=1h")).await;
    // Conversion is a float: compare it within a tolerance (a JSON reader may round the last
    // bit), then the rest exactly.
    let conversions = take_conversions(&mut report);
    let close = |got: Option<f64>, want: Option<f64>| match (got, want) {
        (Some(g), Some(w)) => (g - w).abs() < 1e-12,
        (g, w) => g == w,
    };
    let want = [Some(3.0 / 42.0), Some(1.0 / 13.0), None, Some(5.0 / 55.0)];
    assert!(
        conversions.iter().zip(want).all(|(g, w)| close(*g, w)) && conversions.len() == 4,
        "{conversions:?}"
    );
    assert_eq!(
        (
            &report["store"],
            &report["store_name"],
            &report["interval"],
            &report["from"],
            &report["to"]
        ),
        (
            &json!("S001"),
            &json!("Riverside & Co"),
            &json!("1h"),
            &json!("2026-11-22T08:00:00Z"),
            &json!("2026-11-22T11:00:00Z")
        )
    );
    assert_eq!(
        report["buckets"],
        json!([
            {
                "start": "2026-11-22T08:00:00Z", "end": "2026-11-22T09:00:00Z",
                "visitors_in": 42, "visitors_out": 33, "occupancy": 20,
                "transactions": 3, "conversion": "checked",
                "missing_data": false, "cameras_missing": []
            },
            {
                "start": "2026-11-22T09:00:00Z", "end": "2026-11-22T10:00:00Z",
                "visitors_in": 13, "visitors_out": 11, "occupancy": null,
                "transactions": 1, "conversion": "checked",
                "missing_data": true, "cameras_missing": ["cam-2"]
            },
            {
                "start": "2026-11-22T10:00:00Z", "end": "2026-11-22T11:00:00Z",
                "visitors_in": 0, "visitors_out": 0, "occupancy": null,
                "transactions": 1, "conversion": "checked",
                "missing_data": true, "cameras_missing": []
            }
        ])
    );
    assert_eq!(
        report["totals"],
        json!({
            "visitors_in": 55, "visitors_out": 44, "transactions": 5,
            "conversion": "checked", "occupancy": 20,
            "missing_data": true, "buckets_missing": 2, "cameras_missing": ["cam-2"]
        })
    );

    // The same upload again (a gateway that never saw the ack) counts nothing twice.
    hub.upload(&hub.gw, &events).await;
    let mut again = hub.report(&format!("{RANGE}&interval=1h")).await;
    assert_eq!(take_conversions(&mut again), conversions);
    assert_eq!(again, report);

    // Quarter hours: the south entrance's two people and each sale in its own interval.
    let quarters = hub
        .report("from=2026-11-22T08:00:00Z&to=2026-11-22T09:00:00Z&interval=15m")
        .await;
    let per_quarter: Vec<_> = quarters["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["visitors_in"].as_u64().unwrap(),
                b["transactions"].as_u64().unwrap(),
                b["occupancy"].clone(),
            )
        })
        .collect();
    assert_eq!(
        per_quarter,
        vec![
            (12, 1, json!(12)),
            (10, 1, Value::Null),
            (10, 0, Value::Null),
            (10, 1, json!(20))
        ]
    );
    assert_eq!(quarters["buckets"][1]["start"], "2026-11-22T08:15:00Z");

    // A UTC day, and bounds in another offset and off the hour (rounded outward).
    let day = hub
        .report("from=2026-11-22T00:00:00Z&to=2026-11-23T00:00:00Z&interval=1d")
        .await;
    assert_eq!(day["buckets"].as_array().unwrap().len(), 1);
    assert_eq!(
        (
            &day["totals"]["visitors_in"],
            &day["totals"]["transactions"],
            &day["buckets"][0]["missing_data"]
        ),
        (&json!(55), &json!(5), &json!(true))
    );
    let mut shifted = hub
        .report("from=2026-11-22T16:10:00%2B08:00&to=2026-11-22T10:59:59Z")
        .await;
    take_conversions(&mut shifted);
    assert_eq!(
        shifted, report,
        "interval defaults to 1h; bounds round outward"
    );

    // No range at all: the 24 hours up to the end of the current one.
    let recent = hub.report("").await;
    assert_eq!(recent["interval"], "1h");
    assert_eq!(recent["buckets"].as_array().unwrap().len(), 24);
}

#[tokio::test]
async fn sqlite_report_counts_visitors_transactions_and_missing_data() {
    report_counts_visitors_transactions_and_missing_data(sqlite_hub().await).await;
}

#[tokio::test]
async fn postgres_report_counts_visitors_transactions_and_missing_data() {
    let pg = TempPostgres::create()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is required for this test: {e}"));
    let hub = start(storage::open(pg.url()).await.unwrap(), None).await;
    report_counts_visitors_transactions_and_missing_data(hub).await;
    pg.cleanup().await.unwrap();
}

#[tokio::test]
async fn bad_parameters_are_refused_with_a_clear_message() {
    let hub = sqlite_hub().await;
    let cases = [
        (
            "/v1/stores/S001/footfall?interval=2h",
            "interval must be 15m, 1h or 1d, got '2h'",
        ),
        (
            "/v1/stores/S001/footfall?from=yesterday",
            "from: 'yesterday' is not an RFC 3339 time",
        ),
        (
            "/v1/stores/S001/footfall?to=2026-13-01T00:00:00Z",
            "to: '2026-13-01T00:00:00Z'",
        ),
        (
            "/v1/stores/S001/footfall?from=1969-12-31T00:00:00Z",
            "before 1970",
        ),
        (
            "/v1/stores/S001/footfall?from=2026-11-22T10:00:00Z&to=2026-11-22T09:00:00Z",
            "from must be before to",
        ),
        (
            "/v1/stores/S001/footfall?from=2026-11-22T10:00:00Z&to=2026-11-22T10:00:00Z",
            "from must be before to",
        ),
        (
            "/v1/stores/S001/footfall?from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z&interval=15m",
            "spans 5664 buckets of 15m; at most 3000: narrow the range or use a wider interval",
        ),
        (
            "/v1/stores/S001/footfall?from=2026-01-01T00:00:00Z&to=2026-12-01T00:00:00Z",
            "spans 8016 buckets of 1h; at most 3000",
        ),
        (
            "/v1/stores/S001/footfall?store=S002",
            "unknown field `store`",
        ),
        (
            "/v1/stores/S001/footfall.svg?from=2026-11-01T00:00:00Z&to=2026-11-22T00:00:00Z",
            "spans 504 buckets of 1h; at most 168",
        ),
        (
            "/v1/stores/S001/footfall.svg?interval=1d",
            "unknown field `interval`",
        ),
        ("/v1/stores/S 1/footfall", ""),
    ];
    for (path, says) in cases {
        let (status, err) = hub.error(path, Some(HQ)).await;
        assert_eq!(
            (status, err.error.as_str()),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{path}: {}",
            err.message
        );
        assert!(err.message.contains(says), "{path}: {}", err.message);
    }
}

#[tokio::test]
async fn tokens_and_stores_are_checked_like_the_other_reports() {
    let hub = sqlite_hub().await;
    for path in ["/v1/stores/S001/footfall", "/v1/stores/S001/footfall.svg"] {
        for token in [None, Some("not-the-token")] {
            let (status, err) = hub.error(path, token).await;
            assert_eq!(
                (status, err.error.as_str()),
                (StatusCode::UNAUTHORIZED, "unauthorized")
            );
        }
        // A gateway reads its own store's footfall, never another's.
        let own = hub.req(path, Some(&hub.gw)).send().await.unwrap();
        assert_eq!(own.status(), StatusCode::OK, "{path}");
        let other = path.replace("S001", "S002");
        let (status, err) = hub.error(&other, Some(&hub.gw)).await;
        assert_eq!(
            (status, err.error.as_str()),
            (StatusCode::FORBIDDEN, "forbidden")
        );
        assert!(
            err.message.contains("may not access store S002"),
            "{}",
            err.message
        );
        // An unknown store is 404 for HQ, whatever the query asks.
        let unknown = format!("{}?from=nonsense", path.replace("S001", "S999"));
        let (status, err) = hub.error(&unknown, Some(HQ)).await;
        assert_eq!(
            (status, err.error.as_str()),
            (StatusCode::NOT_FOUND, "not_found")
        );
        assert!(
            err.message.contains("unknown store S999"),
            "{}",
            err.message
        );
    }
}

/// What a parsed SVG holds: whether it is well formed with an `<svg>` root, its texts, and the
/// fill colours of its rectangles.
struct Svg {
    root: String,
    texts: Vec<String>,
    rect_fills: Vec<String>,
}

fn parse_svg(doc: &str) -> Svg {
    let mut reader = Reader::from_str(doc);
    let mut root = None;
    let mut texts = Vec::new();
    let mut rect_fills = Vec::new();
    let mut in_text = false;
    let mut current = String::new();
    loop {
        match reader
            .read_event()
            .unwrap_or_else(|e| panic!("not well-formed XML: {e}"))
        {
            Event::Start(e) | Event::Empty(e) => {
                let name = e.name().as_ref().to_owned();
                root.get_or_insert_with(|| name.clone());
                let mut fill = None;
                for a in e.attributes() {
                    let a = a.unwrap_or_else(|e| panic!("bad attribute: {e}"));
                    if a.key.as_ref() == "fill" {
                        fill = Some(a.value.to_string());
                    }
                }
                if name == "rect" {
                    rect_fills.push(fill.unwrap_or_default());
                }
                if name == "text" {
                    in_text = true;
                    current.clear();
                }
            }
            Event::Text(t) if in_text => current.push_str(&t.xml10_content()),
            Event::GeneralRef(r) if in_text => {
                let name = r.xml10_content();
                current.push(match name.as_ref() {
                    "amp" => '&',
                    "lt" => '<',
                    "gt" => '>',
                    "quot" => '"',
                    "apos" => '\'',
                    other => match r.resolve_char_ref().unwrap() {
                        Some(c) => c,
                        None => panic!("unknown entity &{other};"),
                    },
                });
            }
            Event::End(e) if e.name().as_ref() == "text" => {
                in_text = false;
                texts.push(current.trim().to_owned());
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Svg {
        root: root.unwrap_or_default(),
        texts,
        rect_fills,
    }
}

async fn chart(hub: &Hub, query: &str) -> Svg {
    let res = hub
        .req(&format!("/v1/stores/S001/footfall.svg?{query}"), Some(HQ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("image/svg+xml"), "{content_type}");
    let doc = res.text().await.unwrap();
    // AISLE_CHART_DIR=/tmp keeps the charts for a person to look at.
    if let Ok(dir) = std::env::var("AISLE_CHART_DIR") {
        let name: String = query
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        std::fs::write(format!("{dir}/footfall-api-{name}.svg"), &doc).unwrap();
    }
    parse_svg(&doc)
}

#[tokio::test]
async fn the_chart_is_valid_svg_with_labels_legend_and_shaded_missing_hours() {
    let hub = sqlite_hub().await;
    hub.upload(&hub.gw, &store_day()).await;
    // The legend's swatch is the one missing-data rectangle of a complete chart.
    const MISSING_FILL: &str = "#ECECEC";

    let svg = chart(&hub, RANGE).await;
    assert_eq!(svg.root, "svg");
    let has = |text: &str| svg.texts.iter().any(|t| t.contains(text));
    for text in [
        "Footfall and sales · Riverside & Co (S001)",
        "Visitors in",
        "Transactions",
        "Conversion = transactions ÷ visitors (right axis)",
        "No data / camera offline",
        "Visitors in / transactions per hour",
        "08:00",
        "09:00",
        "10:00",
        "11:00",
        "Sun 22 Nov 2026",
        "offline",
        "no data",
        "camera offline: cam-2",
        "no footfall reported",
    ] {
        assert!(has(text), "no text '{text}' in {:?}", svg.texts);
    }
    // 09:00 and 10:00 are shaded (two spans: their missing cameras differ).
    assert_eq!(
        svg.rect_fills.iter().filter(|f| *f == MISSING_FILL).count(),
        3
    );

    let complete = chart(&hub, "from=2026-11-22T08:00:00Z&to=2026-11-22T09:00:00Z").await;
    assert!(complete.texts.iter().any(|t| t.starts_with("Complete:")));
    assert!(
        !complete
            .texts
            .iter()
            .any(|t| t == "no data" || t == "offline")
    );
    assert_eq!(
        complete
            .rect_fills
            .iter()
            .filter(|f| *f == MISSING_FILL)
            .count(),
        1
    );

    // A week is the widest chart.
    let week = chart(&hub, "from=2026-11-16T00:00:00Z&to=2026-11-23T00:00:00Z").await;
    assert!(week.texts.iter().any(|t| t == "Sat 21 Nov 2026"));
}
