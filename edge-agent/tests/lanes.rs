//! Self-checkout lanes end to end over their WebSocket, as a lane screen drives them: a real agent
//! (hub down) with two lanes and simulated card terminals, prices staged in its ledger, attendant
//! PINs from `[[pickup.staff]]`. Scans are priced from the ledger (price integrity included),
//! bad codes are refused in plain words, age checks and voids take the right PIN, payments are
//! committed once (declines, a hung terminal and offline caps included), member cards give their
//! discount, and the receipt link opens.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use aisle_agent::clock::SystemClock;
use aisle_agent::config::{
    AgentConfig, ClockConfig, PickupSettings, StaffConfig, StaffRole, SyncConfig,
};
use aisle_agent::ledger::{BindLabel, LabelShown, LabelUpdate};
use aisle_agent::{Agent, AgentHandle};
use aisle_protocol::esl::{DynamicFields, LabelId, LayerHash, Panel, content_hash};
use aisle_protocol::member::MemberClaims;
use aisle_protocol::pickup::PickupKey;
use aisle_protocol::sync::{Change, ChangeBody, PriceChange};
use aisle_protocol::{BatchId, Currency, Gtin, Money, SaleId, UtcMillis};
use ed25519_dalek::SigningKey;
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const STAFF_PIN: &str = "2468";
const MANAGER_PIN: &str = "1357";
const TECHNICIAN_PIN: &str = "8080";
/// How long a lane gets to answer.
const WAIT: Duration = Duration::from_secs(10);

fn gbp() -> Currency {
    Currency::parse("GBP").unwrap()
}

fn gtin(n: u64) -> Gtin {
    Gtin::from_index(690_123_450_000 + n).unwrap()
}

const TEA: u64 = 1;
const RICE: u64 = 2;
const WINE: u64 = 3;
/// Has a shelf label confirmed at a lower price than its active one.
const LABELLED: u64 = 4;
/// Never priced.
const UNKNOWN: u64 = 99;
/// A pre-priced pack (restricted circulation, the built-in example layout
/// `FFIIIIIVPPPPC`, price in pence): item 12345 at 1.99.
const PACK_BARCODE: &str = "2012345001992";
/// The pack's item key: the barcode with its value digits zeroed.
const PACK_ITEM: &str = "02012345000001";

fn price(g: Gtin, version: u64, minor: i64, name: &str) -> PriceChange {
    PriceChange {
        gtin: g,
        version,
        price: Money::new(minor, gbp()),
        name: name.into(),
        effective_at: UtcMillis(UtcMillis::now().0 - 60_000),
        batch_id: BatchId::parse(&format!("b-{version}")).unwrap(),
    }
}

/// A closed port: the hub is down (offline card payments stay waiting to be sent).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

struct Store {
    agent: AgentHandle,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn start() -> Store {
    let dir = tempfile::tempdir().unwrap();
    let checkout: toml::Table = format!(
        r#"
currency = "GBP"
header = ["Aisle Market", "1 High Street"]
payment_timeout_ms = 1000

[[offline]]
currency = "GBP"
per_sale = "20.00"
total = "30.00"

[[items]]
gtin = "{wine}"
age_min = 18

[[lanes]]
id = "1"

[[lanes]]
id = "2"
"#,
        wine = gtin(WINE)
    )
    .parse()
    .unwrap();
    let staff = |name: &str, pin: &str, role| StaffConfig {
        name: name.into(),
        pin_hash: aisle_agent::pickup::staff::hash_pin(pin).unwrap(),
        role,
    };
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
        checkout: Some(checkout),
        footfall: None,
        pickup: Some(PickupSettings {
            staff: vec![
                staff("Ana", STAFF_PIN, StaffRole::Staff),
                staff("Mia", MANAGER_PIN, StaffRole::Manager),
                staff("Tom", TECHNICIAN_PIN, StaffRole::Technician),
            ],
        }),
    };
    let agent = Agent::start(config, Arc::new(SystemClock)).await.unwrap();
    agent
        .ledger()
        .stage_prices(vec![
            price(gtin(TEA), 1, 350, "Oolong tea 500ml"),
            price(gtin(RICE), 1, 500, "Jasmine rice 1kg"),
            price(gtin(WINE), 1, 1_200, "Red wine 750ml"),
            price(gtin(LABELLED), 1, 300, "Green tea 100 bags"),
            price(Gtin::parse(PACK_ITEM).unwrap(), 1, 999, "Cheddar, cut"),
        ])
        .await
        .unwrap();
    let base = format!("http://{}", agent.local_addr());
    Store {
        agent,
        base,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

impl Store {
    async fn screen(&self, lane: &str) -> Screen {
        let url = format!(
            "ws://{}/v1/lanes/{lane}/ws",
            self.base.trim_start_matches("http://")
        );
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut s = Screen { ws };
        // The lane's latest update first.
        let first = s.next().await;
        assert_eq!(first["lane"], lane, "{first}");
        assert!(first["view"].is_object(), "{first}");
        s
    }

    /// Scripts the lane's simulated terminal; answers its charges.
    async fn terminal(&self, lane: &str, script: &str) -> Vec<Value> {
        let r = self
            .http
            .post(format!("{}/v1/lanes/{lane}/terminal", self.base))
            .body(script.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        v["charges"].as_array().unwrap().clone()
    }

    async fn get(&self, path_or_url: &str) -> (StatusCode, String) {
        let url = if path_or_url.starts_with("http") {
            path_or_url.to_string()
        } else {
            format!("{}{path_or_url}", self.base)
        };
        let r = self.http.get(url).send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    }

    fn sales_committed(&self) -> u64 {
        self.agent.ledger().stats().sales_committed
    }
}

struct Screen {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Screen {
    async fn send(&mut self, req: Value) {
        self.send_text(req.to_string()).await;
    }

    async fn send_text(&mut self, text: String) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    /// The next JSON text message.
    async fn next(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("the lane said nothing")
                .expect("the lane closed the WebSocket")
                .unwrap();
            match m {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("not a text message: {other:?}"),
            }
        }
    }

    /// Updates until one whose event is `kind` (which it returns); the events on the way must
    /// all be in `passing`.
    async fn until(&mut self, kind: &str, passing: &[&str]) -> Value {
        loop {
            let u = self.next().await;
            let k = u["event"]["kind"].as_str().unwrap_or_default().to_string();
            if k == kind {
                return u;
            }
            assert!(passing.contains(&k.as_str()), "waiting for {kind}, got {u}");
        }
    }

    /// Sends `req` and answers the next update, which must be `kind`.
    async fn ask(&mut self, req: Value, kind: &str) -> Value {
        self.send(req).await;
        self.until(kind, &[]).await
    }

    async fn scan(&mut self, code: &str, kind: &str) -> Value {
        self.ask(json!({"type": "scan", "code": code}), kind).await
    }

    /// Pays and waits for what the terminal came to (`payment_started` first).
    async fn pay(&mut self, kind: &str) -> Value {
        let started = self.ask(json!({"type": "pay"}), "payment_started").await;
        assert_eq!(started["view"]["phase"], "paying", "{started}");
        self.until(kind, &["payment_recovering"]).await
    }
}

fn minor(v: &Value) -> i64 {
    v["minor"]
        .as_i64()
        .unwrap_or_else(|| panic!("not money: {v}"))
}

fn lines(u: &Value) -> &Vec<Value> {
    u["view"]["lines"].as_array().unwrap()
}

fn live_lines(u: &Value) -> Vec<&Value> {
    lines(u).iter().filter(|l| l["voided"] == false).collect()
}

fn a_bad_check_digit(g: Gtin) -> String {
    let s = g.to_string();
    let (body, last) = s.split_at(s.len() - 1);
    let d = (last.parse::<u8>().unwrap() + 1) % 10;
    format!("{body}{d}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_are_priced_from_the_ledger_and_bad_codes_refused_on_every_screen() {
    let s = start().await;
    let mut a = s.screen("1").await;
    let mut b = s.screen("1").await;

    // A scan: the ledger's price, on both screens, with the same update.
    let u = a.scan(&gtin(TEA).to_string(), "line_added").await;
    let line = &u["event"]["line"];
    assert_eq!(line["name"], "Oolong tea 500ml");
    assert_eq!(minor(&line["unit_price"]), 350);
    assert_eq!(minor(&line["line_total"]), 350);
    assert_eq!(line["from_shelf"], false);
    assert_eq!(u["view"]["phase"], "shopping");
    assert_eq!(u["view"]["total_decimal"], "3.50");
    assert_eq!(u["view"]["can_pay"], true);
    assert_eq!(b.next().await, u, "the second screen sees the same update");

    // An unknown item and a bad check digit: plain words, no line.
    let u = a.scan(&gtin(UNKNOWN).to_string(), "unknown_item").await;
    let msg = u["event"]["message"].as_str().unwrap();
    assert!(msg.contains("not known here"), "{msg}");
    assert_eq!(lines(&u).len(), 1);
    assert_eq!(b.next().await, u);
    let u = a.scan(&a_bad_check_digit(gtin(TEA)), "scan_refused").await;
    let msg = u["event"]["message"].as_str().unwrap();
    assert!(
        msg.contains("could not be read") && msg.contains("scan it again"),
        "{msg}"
    );
    assert_eq!(lines(&u).len(), 1);
    assert_eq!(u["view"]["total_decimal"], "3.50");
    assert_eq!(b.next().await, u);

    // A pre-priced pack: the barcode's price, not the item's 9.99.
    let u = a.scan(PACK_BARCODE, "line_added").await;
    let line = &u["event"]["line"];
    assert_eq!(line["gtin"], PACK_ITEM);
    assert_eq!(line["name"], "Cheddar, cut");
    assert_eq!(minor(&line["embedded_price"]), 199);
    assert_eq!(minor(&line["line_total"]), 199);
    assert_eq!(u["view"]["total_decimal"], "5.49");
    assert_eq!(b.next().await, u);

    // Quantity: the tea line three times; a pre-priced line keeps its one.
    let u = a
        .ask(
            json!({"type": "qty", "line_no": 1, "qty": 3}),
            "line_changed",
        )
        .await;
    assert_eq!(minor(&u["event"]["line"]["line_total"]), 1_050);
    assert_eq!(u["view"]["total_decimal"], "12.49");
    assert_eq!(u["view"]["items"], 4);
    assert_eq!(b.next().await, u);
    let u = a
        .ask(json!({"type": "qty", "line_no": 2, "qty": 2}), "refused")
        .await;
    assert!(
        u["event"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot change quantity"),
        "{u}"
    );
    assert_eq!(u["view"]["total_decimal"], "12.49");
    assert_eq!(b.next().await, u);

    // Messages that are not requests: an error to that screen alone; the connection lives on.
    let big = json!({"type": "scan", "code": "1".repeat(5_000)}).to_string();
    a.send_text(big).await;
    let e = a.next().await;
    assert_eq!(e["event"]["kind"], "error", "{e}");
    assert!(
        e["event"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 4096 bytes"),
        "{e}"
    );
    a.send_text("{\"type\": \"scan\", ".into()).await;
    let e = a.next().await;
    assert_eq!(e["event"]["kind"], "error", "{e}");
    assert!(
        e["event"]["message"]
            .as_str()
            .unwrap()
            .contains("not a lane request"),
        "{e}"
    );
    a.send(json!({"type": "dance"})).await;
    assert_eq!(a.next().await["event"]["kind"], "error");
    a.ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    let e = a.next().await;
    assert_eq!(e["event"]["kind"], "error", "{e}");
    // Still connected: the next scan is priced, and the other screen saw no error.
    let u = a.scan(&gtin(RICE).to_string(), "line_added").await;
    assert_eq!(u["view"]["total_decimal"], "17.49");
    assert_eq!(
        b.next().await,
        u,
        "the errors went to the first screen alone"
    );

    // The other lane saw none of it.
    let mut other = s.screen("2").await;
    let (st, body) = s.get("/v1/lanes").await;
    assert_eq!(st, StatusCode::OK);
    let list: Value = serde_json::from_str(&body).unwrap();
    let list = list["lanes"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["lane"], "1");
    assert_eq!(list[0]["view"]["total_decimal"], "17.49");
    assert_eq!(list[1]["lane"], "2");
    assert_eq!(list[1]["view"]["phase"], "idle");
    assert!(lines(&list[1]).is_empty());
    let u = other.scan(&gtin(TEA).to_string(), "line_added").await;
    assert_eq!(u["lane"], "2");
    assert_eq!(lines(&u).len(), 1);
    // An unknown lane is a 404, for the page and the socket alike.
    assert_eq!(s.get("/lane/9").await.0, StatusCode::NOT_FOUND);
    let refused = tokio_tungstenite::connect_async(format!(
        "ws://{}/v1/lanes/9/ws",
        s.base.trim_start_matches("http://")
    ))
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), StatusCode::NOT_FOUND);
        }
        other => panic!("a screen for no lane: {other:?}"),
    }
    assert_eq!(s.get("/lane/1").await.0, StatusCode::OK);
    s.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_shelf_label_price_is_what_the_lane_charges() {
    let s = start().await;
    let l = s.agent.ledger();
    let g = gtin(LABELLED);
    l.bind_labels(vec![(
        0,
        BindLabel {
            label: LabelId(0xC1),
            gtin: g,
            shelf: "C1".into(),
            panel: Panel::Bw290,
            by: Some("Ana".into()),
        },
    )])
    .await
    .unwrap();
    let shown = Money::new(300, gbp());
    let fields = DynamicFields::from_money(shown).unwrap();
    let layer = LayerHash([7; 8]);
    l.commit_label_updates(vec![LabelUpdate::Confirmed {
        label: LabelId(0xC1),
        gtin: g,
        version: 1,
        batch_id: BatchId::parse("b-1").unwrap(),
        shown: LabelShown {
            price: shown,
            name: "Green tea 100 bags".into(),
            panel: Panel::Bw290,
            layer,
            fields,
            content: content_hash(Some(layer), Some(&fields)).unwrap(),
        },
    }])
    .await
    .unwrap();
    // A price rise activates; the label still shows 3.00.
    l.stage_prices(vec![price(g, 2, 420, "Green tea 100 bags")])
        .await
        .unwrap();
    assert_eq!(l.active_price(g).await.unwrap().unwrap().price.minor, 420);

    let mut a = s.screen("1").await;
    let u = a.scan(&g.to_string(), "line_added").await;
    let line = &u["event"]["line"];
    assert_eq!(minor(&line["unit_price"]), 300, "{u}");
    assert_eq!(line["price_version"], 1);
    assert_eq!(line["from_shelf"], true);
    let committed = a.pay("sale_committed").await;
    let sale = l
        .sale(SaleId::parse(committed["event"]["sale_id"].as_str().unwrap()).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sale.record.lines[0].unit_price.minor, 300);
    assert_eq!(sale.record.total.minor, 300);
    s.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_age_check_blocks_pay_until_an_attendant_approves_and_voids_take_a_manager() {
    let s = start().await;
    let mut a = s.screen("1").await;
    a.scan(&gtin(TEA).to_string(), "line_added").await;
    let u = a.scan(&gtin(WINE).to_string(), "line_added").await;
    assert_eq!(u["event"]["line"]["age_min"], 18);
    assert_eq!(u["view"]["can_pay"], false);
    let alerts = u["view"]["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{u}");
    assert_eq!(alerts[0]["alert"], "age");
    assert!(
        alerts[0]["message"]
            .as_str()
            .unwrap()
            .contains("age check (18+)")
    );

    // Pay is refused while the age check waits.
    let u = a.ask(json!({"type": "pay"}), "refused").await;
    assert!(
        u["event"]["message"]
            .as_str()
            .unwrap()
            .contains("age check"),
        "{u}"
    );
    assert_eq!(u["view"]["phase"], "shopping");

    // A wrong PIN and a technician's PIN approve nothing.
    for pin in ["0000", TECHNICIAN_PIN] {
        let u = a
            .ask(
                json!({"type": "attendant", "pin": pin, "action": "approve"}),
                "attendant_refused",
            )
            .await;
        assert!(
            u["event"]["message"]
                .as_str()
                .unwrap()
                .contains("not an attendant's"),
            "{u}"
        );
        assert_eq!(u["view"]["can_pay"], false);
    }
    // Staff approve the age check.
    let u = a
        .ask(
            json!({"type": "attendant", "pin": STAFF_PIN, "action": "approve"}),
            "approved",
        )
        .await;
    assert_eq!(u["event"]["by"], "Ana");
    assert!(u["view"]["alerts"].as_array().unwrap().is_empty());
    assert_eq!(lines(&u)[1]["age_approved_by"], "Ana");
    assert_eq!(u["view"]["can_pay"], true);

    // Staff cannot void; a manager can.
    let u = a
        .ask(
            json!({"type": "void", "line_no": 1, "pin": STAFF_PIN}),
            "attendant_refused",
        )
        .await;
    assert!(
        u["event"]["message"]
            .as_str()
            .unwrap()
            .contains("manager's PIN"),
        "{u}"
    );
    assert_eq!(live_lines(&u).len(), 2);
    let u = a
        .ask(
            json!({"type": "void", "line_no": 1, "pin": MANAGER_PIN}),
            "line_voided",
        )
        .await;
    assert_eq!(u["event"]["by"], "Mia");
    assert_eq!(live_lines(&u).len(), 1);
    assert_eq!(u["view"]["total_decimal"], "12.00");
    // Voiding the age-restricted line takes its age check with it.
    let u = a.scan(&gtin(WINE).to_string(), "line_added").await;
    assert_eq!(u["view"]["can_pay"], false);
    let u = a
        .ask(
            json!({"type": "void", "line_no": 3, "pin": MANAGER_PIN}),
            "line_voided",
        )
        .await;
    assert!(u["view"]["alerts"].as_array().unwrap().is_empty(), "{u}");
    assert_eq!(u["view"]["can_pay"], true);
    let committed = a.pay("sale_committed").await;
    assert_eq!(minor(&committed["event"]["total"]), 1_200);
    // Every attendant action and refused PIN is in the gateway's audit log (written off the
    // runtime, so give it a moment).
    let wanted = [
        ("device:lane-1", "lane_pin_refused"),
        ("staff:Ana", "lane_override"),
        ("staff:Ana", "lane_pin_refused"),
        ("staff:Mia", "lane_void"),
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let entries = aisle_agent::audit::list(s._dir.path()).unwrap();
        let found = |(actor, action): &(&str, &str)| {
            entries
                .iter()
                .any(|e| e.actor == *actor && e.action == *action && e.subject.contains("lane 1"))
        };
        if wanted.iter().all(found) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "audit log lacks a lane action: {entries:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    s.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_sale_is_committed_once_with_stock_and_a_receipt_link_and_a_decline_charges_nothing()
{
    let s = start().await;
    let mut a = s.screen("2").await;
    let mut idle = s.screen("1").await;
    a.scan(&gtin(TEA).to_string(), "line_added").await;
    a.scan(&gtin(RICE).to_string(), "line_added").await;
    a.ask(
        json!({"type": "qty", "line_no": 2, "qty": 2}),
        "line_changed",
    )
    .await;

    // Declined: nothing in the ledger, the basket back to shopping.
    assert!(
        s.terminal("2", "decline insufficient funds")
            .await
            .is_empty(),
        "no charge yet"
    );
    let u = a.pay("payment_failed").await;
    let msg = u["event"]["message"].as_str().unwrap();
    assert!(
        msg.contains("insufficient funds") && msg.contains("Nothing was charged"),
        "{msg}"
    );
    assert_eq!(u["event"]["attempt"], 1);
    assert_eq!(u["view"]["phase"], "shopping");
    assert_eq!(u["view"]["can_pay"], true);
    assert_eq!(s.sales_committed(), 0);
    assert_eq!(s.agent.ledger().stock(gtin(TEA)).await.unwrap(), 0);

    // Pay again: a new attempt, approved, committed.
    let started = a.ask(json!({"type": "pay"}), "payment_started").await;
    assert_eq!(started["event"]["attempt"], 2);
    assert_eq!(minor(&started["event"]["amount"]), 1_350);
    let u = a.until("sale_committed", &[]).await;
    let view = &u["view"];
    assert_eq!(view["phase"], "paid");
    let sale_id = u["event"]["sale_id"].as_str().unwrap().to_string();
    assert_eq!(view["sale_id"], sale_id);
    assert_eq!(minor(&u["event"]["total"]), 1_350);
    assert_eq!(u["event"]["offline"], false);

    // In the ledger once, exactly as the lane showed it; stock down.
    assert_eq!(s.sales_committed(), 1);
    let sale = s
        .agent
        .ledger()
        .sale(SaleId::parse(&sale_id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sale.record.total, Money::new(1_350, gbp()));
    let got: Vec<(Gtin, u32, i64)> = sale
        .record
        .lines
        .iter()
        .map(|l| (l.gtin, l.qty, l.line_total.minor))
        .collect();
    assert_eq!(got, vec![(gtin(TEA), 1, 350), (gtin(RICE), 2, 1_000)]);
    let shown: Vec<(String, u64, i64)> = lines(&u)
        .iter()
        .map(|l| {
            (
                l["gtin"].as_str().unwrap().to_string(),
                l["qty"].as_u64().unwrap(),
                minor(&l["line_total"]),
            )
        })
        .collect();
    assert_eq!(
        shown,
        vec![
            (gtin(TEA).to_string(), 1, 350),
            (gtin(RICE).to_string(), 2, 1_000)
        ]
    );
    assert!(!sale.record.payment.offline);
    assert!(
        sale.record
            .payment
            .reference
            .as_deref()
            .is_some_and(|r| r.starts_with('A'))
    );
    assert_eq!(s.agent.ledger().stock(gtin(TEA)).await.unwrap(), -1);
    assert_eq!(s.agent.ledger().stock(gtin(RICE)).await.unwrap(), -2);
    // The terminal charged once, for the second attempt.
    let charges = s.terminal("2", "").await;
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(charges[0]["sale_ref"], format!("{sale_id}:2"));
    assert_eq!(charges[0]["reversed"], false);
    assert_eq!(minor(&charges[0]["amount"]), 1_350);

    // The receipt link opens the receipt; a wrong key finds nothing.
    let url = u["event"]["receipt_url"].as_str().unwrap();
    assert_eq!(view["receipt_url"], url);
    assert!(
        url.starts_with(&format!("{}/receipts/{sale_id}?k=", s.base)),
        "{url}"
    );
    let (st, html) = s.get(url).await;
    assert_eq!(st, StatusCode::OK);
    assert!(html.contains("Your receipt"));
    let k = url.rsplit_once("k=").unwrap().1;
    let (st, body) = s.get(&format!("/v1/receipts/{sale_id}?k={k}")).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["sale_id"], sale_id);
    assert_eq!(r["total"], "13.50");
    assert_eq!(r["currency"], "GBP");
    assert_eq!(r["header"][0], "Aisle Market");
    assert_eq!(r["lines"][0]["name"], "Oolong tea 500ml");
    assert_eq!(r["lines"][1]["name"], "Jasmine rice 1kg");
    assert_eq!(r["lines"][1]["qty"], 2);
    assert_eq!(r["lines"][1]["line_total"], "10.00");
    let mut wrong = k.to_string();
    let flipped = if wrong.ends_with('0') { "1" } else { "0" };
    wrong.replace_range(wrong.len() - 1.., flipped);
    for path in [
        format!("/v1/receipts/{sale_id}?k={wrong}"),
        format!("/v1/receipts/{sale_id}"),
        format!("/receipts/{sale_id}?k={wrong}"),
        format!("/v1/receipts/2-1?k={k}"),
    ] {
        let (st, body) = s.get(&path).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{path}: {body}");
    }

    // Nothing is charged twice: pay on a paid lane is refused; the next scan starts a new visit.
    let u = a.ask(json!({"type": "pay"}), "refused").await;
    assert_eq!(u["view"]["phase"], "paid");
    let u = a.scan(&gtin(TEA).to_string(), "line_added").await;
    assert_eq!(lines(&u).len(), 1);
    assert_eq!(u["event"]["line"]["line_no"], 1);
    assert_eq!(s.sales_committed(), 1);
    // The other lane's screen heard nothing of it.
    let quiet = tokio::time::timeout(Duration::from_millis(200), idle.ws.next()).await;
    assert!(quiet.is_err(), "lane 1 got {quiet:?}");
    s.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_terminal_freezes_the_lane_until_a_manager_recovers_and_charges_once() {
    let s = start().await;
    let mut a = s.screen("1").await;
    a.scan(&gtin(TEA).to_string(), "line_added").await;
    // The terminal answers after 2.5 s (and approves then); the lane waits 1 s.
    s.terminal("1", "hang 2500").await;
    let u = a.pay("payment_unresolved").await;
    assert_eq!(u["event"]["attempt"], 1);
    assert_eq!(u["view"]["phase"], "paying");
    assert_eq!(u["view"]["can_pay"], false);
    let alerts = u["view"]["alerts"].as_array().unwrap();
    assert_eq!(alerts[0]["alert"], "payment", "{u}");
    assert!(
        alerts[0]["message"]
            .as_str()
            .unwrap()
            .contains("may or may not have charged")
    );

    // Frozen: no pay, no scan, no cancel, and staff cannot recover it.
    let u = a.ask(json!({"type": "pay"}), "refused").await;
    assert!(
        u["event"]["message"]
            .as_str()
            .unwrap()
            .contains("Payment needs an attendant"),
        "{u}"
    );
    let u = a.scan(&gtin(RICE).to_string(), "refused").await;
    assert_eq!(lines(&u).len(), 1);
    // Abandoning an undecided payment is a manager's.
    a.ask(
        json!({"type": "attendant", "pin": STAFF_PIN, "action": "cancel"}),
        "attendant_refused",
    )
    .await;
    let u = a
        .ask(
            json!({"type": "attendant", "pin": STAFF_PIN, "action": "recover"}),
            "attendant_refused",
        )
        .await;
    assert!(
        u["event"]["message"]
            .as_str()
            .unwrap()
            .contains("manager's PIN")
    );
    assert_eq!(s.sales_committed(), 0);

    // A manager recovers: the charge the terminal made late is voided there.
    a.ask(
        json!({"type": "attendant", "pin": MANAGER_PIN, "action": "recover"}),
        "payment_recovering",
    )
    .await;
    let u = a.until("payment_recovered", &[]).await;
    assert!(
        u["event"]["message"].as_str().unwrap().contains("voided"),
        "{u}"
    );
    assert_eq!(u["view"]["phase"], "shopping");
    assert_eq!(u["view"]["can_pay"], true);
    assert_eq!(s.sales_committed(), 0);

    // A new payment works.
    let started = a.ask(json!({"type": "pay"}), "payment_started").await;
    assert_eq!(started["event"]["attempt"], 2);
    let u = a.until("sale_committed", &[]).await;
    let sale_id = u["event"]["sale_id"].as_str().unwrap();
    assert_eq!(s.sales_committed(), 1);
    let charges = s.terminal("1", "").await;
    let live: Vec<&Value> = charges.iter().filter(|c| c["reversed"] == false).collect();
    assert_eq!(live.len(), 1, "exactly one live charge: {charges:?}");
    assert_eq!(live[0]["sale_ref"], format!("{sale_id}:2"));
    assert_eq!(minor(&live[0]["amount"]), 350);
    assert!(
        charges
            .iter()
            .all(|c| c["reversed"] == true || c["sale_ref"] == format!("{sale_id}:2")),
        "{charges:?}"
    );
    s.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_card_payments_stay_within_the_caps() {
    let s = start().await;
    let mut a = s.screen("1").await;
    // 15.00 offline: within 20.00 a sale and 30.00 in all.
    a.scan(&gtin(RICE).to_string(), "line_added").await;
    a.ask(
        json!({"type": "qty", "line_no": 1, "qty": 3}),
        "line_changed",
    )
    .await;
    s.terminal("1", "approve-offline").await;
    let u = a.pay("sale_committed").await;
    assert_eq!(u["event"]["offline"], true);
    let first = u["event"]["sale_id"].as_str().unwrap().to_string();
    let sale = s
        .agent
        .ledger()
        .sale(SaleId::parse(&first).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(sale.record.payment.offline);
    assert_eq!(s.sales_committed(), 1);

    // 25.00 offline: above the per-sale cap, reversed.
    a.scan(&gtin(RICE).to_string(), "line_added").await;
    a.ask(
        json!({"type": "qty", "line_no": 1, "qty": 5}),
        "line_changed",
    )
    .await;
    s.terminal("1", "approve-offline").await;
    let u = a.pay("payment_failed").await;
    let msg = u["event"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("Payment not taken:")
            && msg.contains("above the 20.00 GBP limit for one payment taken offline")
            && msg.contains("The charge was voided."),
        "{msg}"
    );
    assert_eq!(u["view"]["phase"], "shopping");
    assert_eq!(s.sales_committed(), 1);

    // 20.00 offline: within a sale's cap, but 15.00 is already waiting: over 30.00 in all.
    a.ask(
        json!({"type": "qty", "line_no": 1, "qty": 4}),
        "line_changed",
    )
    .await;
    s.terminal("1", "approve-offline").await;
    let u = a.pay("payment_failed").await;
    let msg = u["event"]["message"].as_str().unwrap();
    assert!(
        msg.contains("would exceed the 30.00 GBP limit") && msg.contains("voided"),
        "{msg}"
    );
    assert_eq!(s.sales_committed(), 1);

    // Online, the same basket is fine.
    let u = a.pay("sale_committed").await;
    assert_eq!(u["event"]["offline"], false);
    assert_eq!(s.sales_committed(), 2);
    let charges = s.terminal("1", "").await;
    assert_eq!(charges.len(), 4, "{charges:?}");
    let reversed: Vec<bool> = charges
        .iter()
        .map(|c| c["reversed"].as_bool().unwrap())
        .collect();
    assert_eq!(reversed, vec![false, true, true, false]);
    s.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_card_gives_its_discount_and_a_forged_one_is_refused() {
    let s = start().await;
    let hub_key = SigningKey::from_bytes(&[9u8; 32]);
    s.agent
        .ledger()
        .apply_changes(
            vec![Change {
                seq: 0,
                body: ChangeBody::PickupKey(PickupKey::of(1, &hub_key.verifying_key())),
            }],
            None,
            None,
        )
        .await
        .unwrap();
    let now = UtcMillis::now().0;
    let claims = MemberClaims {
        member: "M-1001".into(),
        discount_bp: 1_000,
        issued_at: UtcMillis(now - 60_000),
        expires_at: UtcMillis(now + 86_400_000),
        key_id: 1,
    };
    let card = claims.sign(&hub_key);
    let forged = claims.sign(&SigningKey::from_bytes(&[7u8; 32]));
    let unknown_key = MemberClaims {
        key_id: 5,
        ..claims.clone()
    }
    .sign(&hub_key);

    let mut a = s.screen("1").await;
    a.scan(&gtin(TEA).to_string(), "line_added").await;
    let u = a
        .ask(json!({"type": "member", "qr": forged}), "member_refused")
        .await;
    assert!(
        u["event"]["message"]
            .as_str()
            .unwrap()
            .contains("signature is not valid"),
        "{u}"
    );
    assert!(u["view"]["member"].is_null());
    assert_eq!(u["view"]["total_decimal"], "3.50");
    let u = a
        .ask(
            json!({"type": "member", "qr": unknown_key}),
            "member_refused",
        )
        .await;
    assert!(
        u["event"]["message"]
            .as_str()
            .unwrap()
            .contains("key 5, which this store does not have"),
        "{u}"
    );
    let u = a
        .ask(
            json!({"type": "member", "qr": "AISLEM1.x.y"}),
            "member_refused",
        )
        .await;
    assert_eq!(u["view"]["total_decimal"], "3.50");

    // The real card (scanned like a barcode): 10 % off every line, the next ones too.
    let u = a.scan(&card, "member").await;
    assert_eq!(u["view"]["member"], "M-1001");
    assert_eq!(u["view"]["total_decimal"], "3.15");
    assert_eq!(minor(&lines(&u)[0]["discount"]), 35);
    let u = a.scan(&gtin(RICE).to_string(), "line_added").await;
    assert_eq!(minor(&u["event"]["line"]["discount"]), 50);
    assert_eq!(u["view"]["total_decimal"], "7.65");
    let u = a.pay("sale_committed").await;
    let sale = s
        .agent
        .ledger()
        .sale(SaleId::parse(u["event"]["sale_id"].as_str().unwrap()).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sale.record.total.minor, 765);
    assert_eq!(sale.record.lines[0].discount, Some(Money::new(35, gbp())));
    assert_eq!(sale.record.lines[1].line_total.minor, 450);
    s.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_payment_is_voided_when_the_terminal_answers_and_never_recovered_early() {
    let s = start().await;
    let mut a = s.screen("1").await;
    a.scan(&gtin(TEA).to_string(), "line_added").await;
    // The terminal answers after 3 s and approves; the lane gives up after 1 s.
    s.terminal("1", "hang 3000").await;
    let before = a.ask(json!({"type": "pay"}), "payment_started").await;
    assert_eq!(before["event"]["attempt"], 1);
    // While the terminal still works normally, recovery is refused: its answer decides.
    let u = a
        .ask(
            json!({"type": "attendant", "pin": MANAGER_PIN, "action": "recover"}),
            "refused",
        )
        .await;
    assert!(
        u["event"]["message"]
            .as_str()
            .unwrap()
            .contains("still working"),
        "{u}"
    );
    a.until("payment_unresolved", &[]).await;
    // A manager ends the visit with the payment undecided.
    let u = a
        .ask(
            json!({"type": "attendant", "pin": MANAGER_PIN, "action": "cancel"}),
            "cancelled",
        )
        .await;
    let abandoned = u["event"]["abandoned_payment"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(u["view"]["phase"], "idle");
    // The lane goes on at once.
    a.scan(&gtin(RICE).to_string(), "line_added").await;
    assert_eq!(s.sales_committed(), 0);
    // The terminal approves late; the lane voids that charge at the terminal on its own.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let charges = s.terminal("1", "").await;
        if charges
            .iter()
            .any(|c| c["sale_ref"] == abandoned.as_str() && c["reversed"] == true)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned charge was never voided: {charges:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(s.sales_committed(), 0);
    let pending = std::fs::read_to_string(s._dir.path().join("lanes/1.pending.json")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut pending = pending;
    while pending.contains(&abandoned) {
        assert!(
            std::time::Instant::now() < deadline,
            "still pending: {pending}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        pending = std::fs::read_to_string(s._dir.path().join("lanes/1.pending.json")).unwrap();
    }
    let audit = aisle_agent::audit::list(s._dir.path()).unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "lane_payment_voided" && e.subject.contains(&abandoned)),
        "{audit:?}"
    );
    s.agent.shutdown().await;
}
