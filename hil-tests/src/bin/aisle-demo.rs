//! `scripts/demo`: a whole virtual store on embedded defaults (hub on SQLite, one gateway agent,
//! the store's WAN behind a switchable link, two simulated entrance cameras, click-and-collect
//! with one staff member, HQ's order system as a webhook receiver, and a shelf of eight simulated
//! electronic shelf labels behind a simulated access point), and `--smoke`, a scripted tour that
//! checks each step.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aisle_hil::camera_sim::{
    CameraProfile, CameraSim, Command, DEFAULT_TOPIC_PREFIX, SimConfig, Transport, Vendor, now_ms,
};
use aisle_hil::esl_sim::{EslSim, EslSimConfig, png_path};
use aisle_hil::footfall::{self, CameraEntry, FootfallSection, rfc3339};
use aisle_hil::harness::{AgentProcess, AgentSetup, HQ_TOKEN, HubProcess, StoreApi, gtin};
use aisle_hil::lanes::{
    ItemRule, LaneRig, LaneScreen, checkout_section, ean13_of, weighed_barcode, weighed_item_gtin,
};
use aisle_hil::mqtt;
use aisle_hil::pickup::{self, HqOrders, PickupCounter, WebhookReceiver};
use aisle_hil::proxy::FaultProxy;
use aisle_protocol::esl::LabelId;
use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::json;
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(about = "Run a virtual Aisle store: hub, gateway agent, and the link between them")]
struct Args {
    /// Run the scripted tour and exit 0 only if every step checked out.
    #[arg(long)]
    smoke: bool,
    /// Where the hub database and the gateway ledger live (wiped at start).
    #[arg(long, env = "AISLE_DEMO_DIR", default_value = "target/demo")]
    dir: PathBuf,
}

const STORE: &str = "S001";
const WAIT: Duration = Duration::from_secs(30);
/// Footfall reaches HQ when a camera's 15-minute interval closes at the agent; with the demo
/// cameras' clocks behind (see `CAMERA_CLOCK_MS`) that is within about a minute at worst.
const FOOTFALL_WAIT: Duration = Duration::from_secs(150);
/// The demo cameras' clocks run 14 minutes behind. The agent believes a camera's clock up to 15
/// minutes back (a delayed delivery), so their counts land in intervals that have already closed
/// and go to HQ at the agent's next close, instead of when the current interval ends.
const CAMERA_CLOCK_MS: i64 = -14 * 60_000;
const NORTH: &str = "entrance-north";
const SOUTH: &str = "entrance-south";
/// The demo store's staff member for the pickup page, and her PIN.
const STAFF: &str = "Ana";
const STAFF_PIN: &str = "4711";
/// HQ's webhook secret (`AISLE_WEBHOOK_SECRET` of the demo hub).
const WEBHOOK_SECRET: &str = "demo-webhook-secret-change-me";
/// The shelf: this many simulated labels at consecutive addresses from `FIRST_LABEL`, one per
/// product of the catalogue.
const SHELF_LABELS: usize = 8;
const FIRST_LABEL: LabelId = LabelId(0x00D0_0001);
/// The products on the demo shelf: name, the catalogue's price, and the price of the smoke
/// tour's price change (minor units, CNY).
const PRODUCTS: [(&str, i64, i64); SHELF_LABELS] = [
    ("Oolong tea 250 g", 1_280, 1_190),
    ("豆浆 1 L", 350, 299),
    ("Jasmine rice 5 kg", 2_500, 2_290),
    ("Soy sauce 500 ml", 990, 890),
    ("Green tea 100 g", 4_580, 3_990),
    ("Rice noodles 400 g", 650, 590),
    ("Sesame oil 250 ml", 1_850, 1_690),
    ("Dried shiitake 100 g", 2_980, 2_750),
];

struct Demo {
    hub: HubProcess,
    proxy: FaultProxy,
    agent: AgentProcess,
    hq: aisle_hil::harness::HqApi,
    store: StoreApi,
    /// Axis over MQTT at the main entrance.
    north: CameraSim,
    /// Hikvision pushing over HTTP at the car park entrance.
    south: CameraSim,
    broker: String,
    topic_prefix: String,
    /// HQ's order system: receives the pickup webhooks.
    oms: WebhookReceiver,
    /// The shelf labels' access point, on a pseudo-terminal the agent drives.
    shelf: EslSim,
    /// Where the simulator writes `<LABEL>.png`, each tag's screen after every refresh.
    screens: PathBuf,
    /// Two self-checkout lanes, each with a scanner, a bagging scale and a receipt printer on
    /// pseudo-terminals.
    lanes: [LaneRig; 2],
}

/// The deli's loose apples, sold by weight (prefix-21 labels from the deli scale).
const APPLES_ITEM: u32 = 1;
const APPLES_PER_KG: i64 = 1_299;

/// What a shopper's items weigh in the bagging area.
fn lane_items() -> Vec<ItemRule> {
    vec![
        ItemRule {
            gtin: gtin(1),
            age_min: None,
            weight_g: Some(262),
        },
        ItemRule {
            gtin: gtin(2),
            age_min: None,
            weight_g: Some(1_040),
        },
    ]
}

/// HQ prices the apples per kg.
fn apples_batch() -> serde_json::Value {
    json!({ "stores": [STORE], "prices": [{
        "gtin": weighed_item_gtin(APPLES_ITEM),
        "price": format!("{}.{:02}", APPLES_PER_KG / 100, APPLES_PER_KG % 100),
        "currency": "CNY",
        "name": "Fuji apples (per kg)",
    }]})
}

/// The two entrance cameras: nobody walks past unless told in the smoke tour; a steady trickle
/// otherwise.
fn cameras(broker: &str, topic_prefix: &str, smoke: bool) -> (SimConfig, SimConfig) {
    let profile = |vendor, id: &str, per_minute| CameraProfile {
        people_per_minute: if smoke { 0.0 } else { per_minute },
        clock_skew_ms: CAMERA_CLOCK_MS,
        dwell_ms: (2 * 60_000, 20 * 60_000),
        seed: now_ms() as u64,
        occupancy: vendor == Vendor::Axis,
        ..CameraProfile::new(vendor, id)
    };
    let north = SimConfig {
        store: STORE.into(),
        profile: profile(Vendor::Axis, NORTH, 12.0),
        transport: Transport::Mqtt {
            broker: broker.into(),
            topic_prefix: topic_prefix.into(),
        },
        every: Duration::from_secs(1),
    };
    let south = SimConfig {
        store: STORE.into(),
        profile: profile(Vendor::Hikvision, SOUTH, 6.0),
        // Filled in once the agent listens.
        transport: Transport::Http {
            agent_url: String::new(),
        },
        every: Duration::from_secs(1),
    };
    (north, south)
}

async fn start(dir: &PathBuf, smoke: bool) -> Result<Demo> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    let db = format!("sqlite://{}", dir.join("hub.db").display());
    let hub = HubProcess::start_with(
        &db,
        &dir,
        vec!["--webhook-retry-ms".into(), "200".into()],
        vec![("AISLE_WEBHOOK_SECRET".into(), WEBHOOK_SECRET.into())],
    )
    .await?;
    hub.cli(&["store", "add", STORE, "--name", "Harbour Road"])?;
    let credential = hub.cli(&["gateway", "add", "--store", STORE])?;
    let proxy = FaultProxy::start(hub.addr).await?;
    // The smoke tour keeps to its own topics, so it never counts another run's cameras.
    let broker = mqtt::broker();
    let topic_prefix = if smoke {
        mqtt::random_prefix()
    } else {
        DEFAULT_TOPIC_PREFIX.to_string()
    };
    let (north, mut south) = cameras(&broker, &topic_prefix, smoke);
    let mut section = FootfallSection::new(Some(&broker), &topic_prefix);
    section.cameras = vec![
        CameraEntry::for_sim(&north, "Main entrance"),
        CameraEntry::for_sim(&south, "Car park entrance"),
    ];
    section.silence_timeout_ms = 10_000;
    section.close_after_ms = Some(10_000);
    section.close_every_ms = 1_000;
    // Tags check in every 200 ms (real ones: every few seconds to minutes) so the demo is quick;
    // the radio runs at `aisle-sim labels`' 5 kB/s.
    let screens = dir.join("labels");
    std::fs::create_dir_all(&screens)?;
    let shelf = EslSim::start(EslSimConfig {
        checkin: Duration::from_millis(200),
        radio_bytes_per_s: 5_000,
        png_dir: Some(screens.clone()),
        seed: now_ms() as u64,
        ..EslSimConfig::new(FIRST_LABEL, SHELF_LABELS)
    })?;
    let lanes = [LaneRig::start("1")?, LaneRig::start("2")?];
    let checkout = checkout_section(
        &dir.join("checkout"),
        &[&lanes[0], &lanes[1]],
        &[],
        &lane_items(),
        "",
    )?;
    let agent = AgentProcess::start(AgentSetup {
        store: STORE.into(),
        hub_url: proxy.url(),
        credential,
        data_dir: dir.join("gateway"),
        clock_offset_ms: 0,
        extra_config: format!(
            "{}\n{}\n[labels]\naccess_point = \"{}\"\nretry_base_ms = 400\nretry_cap_ms = 2000\n\n{checkout}",
            section.toml(),
            pickup::pickup_section(&[(STAFF, STAFF_PIN)])?,
            shelf.path()
        ),
    })
    .await?;
    south.transport = Transport::Http {
        agent_url: agent.url(),
    };
    let north = CameraSim::start(north)?;
    let south = CameraSim::start(south)?;
    let hq = aisle_hil::harness::HqApi::new(&hub.url());
    let store = agent.api();
    let oms = WebhookReceiver::start().await?;
    Ok(Demo {
        hub,
        proxy,
        agent,
        hq,
        store,
        north,
        south,
        broker,
        topic_prefix,
        oms,
        shelf,
        screens,
        lanes,
    })
}

/// The self-checkout tour: with the WAN down, a shopper at lane 1 scans a packet of tea on the
/// scanner and a bag of apples weighed at the deli, bags them, pays by card; the receipt prints
/// and its link opens. Lane 2 meets an unknown item. The WAN comes back and HQ holds the sale
/// once, weighed line and all.
async fn lane_tour(d: &Demo) -> Result<()> {
    d.hq.post_batch(&apples_batch()).await?;
    d.store
        .wait_price(&weighed_item_gtin(APPLES_ITEM), APPLES_PER_KG, WAIT)
        .await?;
    let tea = d
        .store
        .price(&gtin(1))
        .await?
        .and_then(|p| p["price"]["minor"].as_i64())
        .context("the tea's price at the store")?;
    let mut one = LaneScreen::connect(&d.agent.url(), "1").await?;
    let mut two = LaneScreen::connect(&d.agent.url(), "2").await?;
    ok("two self-checkout lanes are up (scanner, bagging scale and printer each)");
    d.proxy.link_down();
    ok("the store's WAN is down again");
    let lane = &d.lanes[0];
    lane.scan(&ean13_of(&gtin(1)))?;
    let u = one.until(&["line_added"], WAIT).await?;
    if u["event"]["line"]["line_total"]["minor"] != tea {
        bail!("lane 1 priced the tea wrongly: {}", u["event"]);
    }
    lane.bag_holds(262)?;
    let apples_g = 1_234;
    lane.scan(&weighed_barcode(APPLES_ITEM, apples_g))?;
    let u = one.until(&["line_added"], WAIT).await?;
    let apples = (APPLES_PER_KG * i64::from(apples_g) + 500) / 1000;
    if u["event"]["line"]["line_total"]["minor"] != apples {
        bail!("lane 1 priced the apples wrongly: {}", u["event"]);
    }
    ok(&format!(
        "lane 1 scanned the tea ({}) and 1.234 kg of apples at 12.99/kg ({})",
        u["view"]["lines"][0]["line_total_decimal"]
            .as_str()
            .unwrap_or("?"),
        u["event"]["line"]["line_total_decimal"]
            .as_str()
            .unwrap_or("?")
    ));
    lane.bag_holds(262 + apples_g)?;
    let deadline = Instant::now() + WAIT;
    while one.view["can_pay"] != true {
        if Instant::now() > deadline {
            bail!("the bagging area never matched the basket: {}", one.view);
        }
        one.next(WAIT).await?;
    }
    ok("the bagging scale weighs what the basket should");
    one.send(json!({"type": "pay"})).await?;
    let u = one.until(&["sale_committed"], WAIT).await?;
    let sale_id = u["event"]["sale_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if u["event"]["total"]["minor"] != tea + apples {
        bail!("lane 1 charged the wrong total: {}", u["event"]);
    }
    ok(&format!(
        "paid by card with the WAN down: sale {sale_id}, {} CNY, committed before the receipt",
        u["view"]["total_decimal"].as_str().unwrap_or("?")
    ));
    let receipt = lane.receipt(WAIT)?;
    if !String::from_utf8_lossy(&receipt).contains(&sale_id) {
        bail!("the printed receipt does not name sale {sale_id}");
    }
    let link = u["event"]["receipt_url"].as_str().unwrap_or_default();
    let r = reqwest::get(link.replacen("/receipts/", "/v1/receipts/", 1)).await?;
    if !r.status().is_success() {
        bail!("the digital receipt link does not open: {}", r.status());
    }
    ok(&format!(
        "the ESC/POS receipt printed ({} bytes) and the digital receipt opens at {link}",
        receipt.len()
    ));
    d.lanes[1].scan(&ean13_of(&gtin(99)))?;
    let u = two.until(&["unknown_item"], WAIT).await?;
    ok(&format!(
        "lane 2 says what an unknown item is: \"{}\"",
        u["event"]["message"].as_str().unwrap_or("?")
    ));
    d.proxy.link_up();
    d.store.wait_drained(WAIT).await?;
    let sales = d.hq.sales(STORE).await?;
    let ours: Vec<_> = sales.iter().filter(|s| s["sale_id"] == sale_id).collect();
    if ours.len() != 1 {
        bail!(
            "HQ should hold lane 1's sale once, holds it {} times",
            ours.len()
        );
    }
    let weighed = ours[0]["lines"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["weight_g"] == apples_g))
        .is_some();
    if !weighed {
        bail!("HQ's copy of the sale lost the weighed line: {}", ours[0]);
    }
    ok("the WAN is back: HQ holds lane 1's sale exactly once, with the apples' weight");
    Ok(())
}

/// Waits until the agent has heard both cameras (a camera's first running total is only where
/// counting starts from).
async fn wait_cameras(d: &Demo) -> Result<()> {
    let http = reqwest::Client::new();
    let url = d.agent.url();
    aisle_hil::harness::wait_for("the agent to hear both cameras", WAIT, || async {
        let v = footfall::cameras(&http, &url).await.ok()?;
        let cams = v["cameras"].as_array()?;
        let heard = [NORTH, SOUTH].iter().all(|id| {
            cams.iter()
                .any(|c| c["id"] == *id && c["accepted"].as_u64() >= Some(1))
        });
        heard.then_some(())
    })
    .await
}

/// HQ's footfall report over the last few hours (UTC-aligned hours).
async fn footfall_report(d: &Demo) -> Result<serde_json::Value> {
    let now = now_ms();
    footfall::report(
        &reqwest::Client::new(),
        &d.hub.url(),
        STORE,
        &rfc3339(now - 3 * 3_600_000),
        &rfc3339(now + 3_600_000),
        "1h",
    )
    .await
}

/// Stops the cameras (a clean goodbye) and, for the smoke tour, clears its retained statuses.
async fn stop_cameras(d: Demo, smoke: bool) -> Result<()> {
    let topics: Vec<String> = [d.north.config(), d.south.config()]
        .iter()
        .filter_map(|c| c.status_topic())
        .collect();
    d.north.quit().await?;
    d.south.quit().await?;
    if smoke {
        mqtt::clear_retained(&d.broker, &topics).await?;
    }
    Ok(())
}

/// A price batch for S001 of every product in `PRODUCTS`, priced by `price`.
fn batch(price: impl Fn(usize) -> i64) -> serde_json::Value {
    let prices: Vec<_> = PRODUCTS
        .iter()
        .enumerate()
        .map(|(i, (name, _, _))| {
            let minor = price(i);
            json!({
                "gtin": gtin(i as u64 + 1),
                "price": format!("{}.{:02}", minor / 100, minor % 100),
                "currency": "CNY",
                "name": name,
            })
        })
        .collect();
    json!({ "stores": [STORE], "prices": prices })
}

/// HQ's catalogue: the demo's eight products.
fn catalogue() -> serde_json::Value {
    batch(|i| PRODUCTS[i].1)
}

/// The label on the shelf edge under product `i` (its GTIN is `gtin(i + 1)`).
fn shelf_label(i: usize) -> LabelId {
    LabelId(FIRST_LABEL.0 + i as u32)
}

fn shelf_position(i: usize) -> String {
    format!("A1-{:02}", i + 1)
}

/// Once the store has the catalogue's prices, staff bind the shelf's labels to the products
/// (`POST /v1/labels/import` with a signed-in staff session; a label can only be bound to a
/// product the store has a price for).
async fn bind_shelf(d: &Demo) -> Result<()> {
    for (i, (_, minor, _)) in PRODUCTS.iter().enumerate() {
        d.store
            .wait_price(&gtin(i as u64 + 1), *minor, WAIT)
            .await?;
    }
    let (status, session) = pickup::sign_in_raw(&d.agent.url(), STAFF_PIN).await?;
    let token = match (status, session["token"].as_str()) {
        (200, Some(t)) => t.to_string(),
        _ => bail!("staff sign-in refused ({status}): {session}"),
    };
    let mut csv = String::from("label,gtin,shelf\n");
    for i in 0..SHELF_LABELS {
        csv += &format!(
            "{},{},{}\n",
            shelf_label(i),
            gtin(i as u64 + 1),
            shelf_position(i)
        );
    }
    let r = reqwest::Client::new()
        .post(format!("{}/v1/labels/import", d.agent.url()))
        .bearer_auth(token)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await?;
    let status = r.status();
    let body: serde_json::Value = r.json().await?;
    if !status.is_success() || body["bound"].as_u64() != Some(SHELF_LABELS as u64) {
        bail!("the shelf's label import was refused ({status}): {body}");
    }
    Ok(())
}

/// `GET /v1/labels/{label}` at the agent.
async fn label_state(d: &Demo, label: LabelId) -> Result<serde_json::Value> {
    let r = reqwest::get(format!("{}/v1/labels/{label}", d.agent.url())).await?;
    let status = r.status();
    let body: serde_json::Value = r.json().await?;
    if !status.is_success() {
        bail!("GET /v1/labels/{label} failed ({status}): {body}");
    }
    Ok(body)
}

/// The agent's preview of `label`, decoded: width, height, pixels.
async fn preview(d: &Demo, label: LabelId) -> Result<(u32, u32, Vec<u8>)> {
    let r = reqwest::get(format!("{}/v1/labels/{label}/preview.png", d.agent.url())).await?;
    if !r.status().is_success() {
        bail!("GET /v1/labels/{label}/preview.png failed ({})", r.status());
    }
    pixels(&r.bytes().await?).with_context(|| format!("the preview of {label}"))
}

/// The tag's own screen, as the simulator last wrote it.
fn screen(dir: &Path, label: LabelId) -> Result<(u32, u32, Vec<u8>)> {
    let path = png_path(dir, label);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    pixels(&bytes).with_context(|| format!("decoding {}", path.display()))
}

fn pixels(bytes: &[u8]) -> Result<(u32, u32, Vec<u8>)> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info()?;
    let size = reader
        .output_buffer_size()
        .context("the PNG is too large to decode")?;
    let mut buf = vec![0; size];
    let info = reader.next_frame(&mut buf)?;
    buf.truncate(info.buffer_size());
    Ok((info.width, info.height, buf))
}

/// Waits until every shelf label confirmed the price the store wants it to show; with
/// `batch`, that it is `batch`'s price `price(i)`.
async fn wait_shelf(d: &Demo, batch: Option<(&str, &dyn Fn(usize) -> i64)>) -> Result<()> {
    for i in 0..SHELF_LABELS {
        let label = shelf_label(i);
        let what = match batch {
            Some((b, price)) => format!("label {label} to confirm {} from {b}", price(i)),
            None => format!("label {label} to confirm its price"),
        };
        poll(&what, || async {
            let v = label_state(d, label).await.ok()?;
            let (wanted, confirmed) = (&v["wanted"], &v["confirmed"]);
            let ok = v["status"] == "confirmed"
                && wanted["version"].is_u64()
                && wanted["version"] == confirmed["version"]
                && wanted["price"] == confirmed["price"]
                && batch.is_none_or(|(b, price)| {
                    confirmed["batch_id"] == b && confirmed["price"]["minor"] == price(i)
                });
            ok.then_some(())
        })
        .await?;
    }
    Ok(())
}

/// The shelf part of the tour: HQ changes every product's price; every label confirms the new
/// price, HQ's batch report counts them confirmed, and each label's preview at the agent is its
/// tag's screen pixel for pixel (and differs from before the change). Prints the time from the
/// batch pushed to the last label confirmed.
async fn shelf_tour(d: &Demo) -> Result<()> {
    wait_shelf(d, None).await?;
    ok(&format!(
        "the shelf's {SHELF_LABELS} labels show the store's prices"
    ));
    let mut before = Vec::new();
    for i in 0..SHELF_LABELS {
        before.push(preview(d, shelf_label(i)).await?);
    }
    let pushing = Instant::now();
    let batch = d.hq.post_batch(&batch(|i| PRODUCTS[i].2)).await?;
    ok(&format!(
        "HQ pushed price batch {batch}: new prices for the {SHELF_LABELS} products on the shelf"
    ));
    let new_price = |i: usize| PRODUCTS[i].2;
    wait_shelf(d, Some((&batch, &new_price))).await?;
    let to_shelf = pushing.elapsed();
    ok(&format!(
        "every label confirmed its new price ({} ms after HQ pushed the batch)",
        to_shelf.as_millis()
    ));
    for (i, old) in before.iter().enumerate() {
        let label = shelf_label(i);
        let now = preview(d, label).await?;
        if now.2 == old.2 {
            bail!("the preview of {label} did not change with its price");
        }
        // The simulator writes the screen just after the tag's refresh; give it a moment.
        aisle_hil::harness::wait_for(
            &format!("{label}'s screen to equal its preview"),
            Duration::from_secs(5),
            || async { (screen(&d.screens, label).ok()? == now).then_some(()) },
        )
        .await?;
    }
    ok(&format!(
        "each label's preview changed and is its tag's screen pixel for pixel ({})",
        d.screens.display()
    ));
    aisle_hil::harness::wait_for("HQ to count the shelf's labels confirmed", WAIT, || async {
        let p = d.hq.get(&format!("/v1/price-batches/{batch}")).await.ok()?;
        let ours = p["labels"]
            .as_array()?
            .iter()
            .find(|s| s["store"] == STORE)?;
        let all = SHELF_LABELS as u64;
        (ours["bound"].as_u64() == Some(all) && ours["confirmed"].as_u64() == Some(all))
            .then_some(())
    })
    .await?;
    ok(&format!(
        "HQ's batch report: {SHELF_LABELS} of {SHELF_LABELS} labels at S001 confirmed"
    ));
    println!(
        "  shelf labels: price batch pushed at HQ → all {SHELF_LABELS} labels confirmed in {} ms",
        to_shelf.as_millis()
    );
    Ok(())
}

fn ok(step: &str) {
    println!("  ok   {step}");
}

/// Polls `check` every 5 ms (finer than the harness's waits: these are timed steps).
async fn poll<T, F, Fut>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if start.elapsed() > WAIT {
            bail!("timed out after {WAIT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The click-and-collect part of the tour: HQ places an order, the store receives it, staff
/// pick it and put it ready (HQ's order system gets the signed `ready` webhook), the hub goes
/// down, the shopper collects at the counter anyway, the hub comes back and HQ sees the order
/// collected exactly once. Prints the time from order placed to the `ready` webhook, staff time
/// excluded.
async fn click_and_collect(d: &mut Demo) -> Result<()> {
    let hq = HqOrders::new(&d.hub.url());
    hq.stock_catalogue(&[STORE], &[gtin(2), gtin(3)], 24)
        .await?;
    ok("HQ stocked the click-and-collect items");
    let counter = PickupCounter::sign_in(&d.agent.url(), STAFF_PIN).await?;
    ok(&format!(
        "{STAFF} signed in at the store's pickup page with her PIN"
    ));
    let placing = Instant::now();
    let placed = hq
        .place(&pickup::order(
            "web-demo-1",
            STORE,
            &[(&gtin(3), 1), (&gtin(2), 2)],
            pickup::now_ms() + 2 * 3_600_000,
            Some(&d.oms.url()),
        ))
        .await?;
    ok("HQ placed order web-demo-1");
    poll("the store to receive web-demo-1", || async {
        let (status, o) = counter.order("web-demo-1").await.ok()?;
        (status == 200 && o["status"] == "received").then_some(())
    })
    .await?;
    let to_store = placing.elapsed();
    ok(&format!(
        "the store received it ({} ms after HQ placed it)",
        to_store.as_millis()
    ));
    let (status, picking) = counter.pick("web-demo-1").await?;
    if status != 200 || picking["picking_by"] != STAFF {
        bail!("pick refused ({status}): {picking}");
    }
    let marking = Instant::now();
    let (status, ready) = counter.ready("web-demo-1", "Pickup shelf B3", &[]).await?;
    if status != 200 || ready["status"] != "ready" {
        bail!("ready refused ({status}): {ready}");
    }
    let hook = d.oms.wait("web-demo-1", "ready", WAIT).await?;
    let to_webhook = hook.received.saturating_duration_since(marking);
    if !hook.signed_with(WEBHOOK_SECRET) {
        bail!("the ready webhook is not signed with the hub's secret: {hook:?}");
    }
    ok(&format!(
        "picked and ready at Pickup shelf B3; HQ's order system got the signed ready webhook {} ms after staff marked it",
        to_webhook.as_millis()
    ));

    d.proxy.link_down();
    d.hub.kill();
    ok("the hub is down");
    let (status, handed) = counter
        .redeem_qr(
            placed["token"]["qr"].as_str().unwrap_or_default(),
            "counter-1",
        )
        .await?;
    if status != 200 || handed["hand_over"] != true {
        bail!("the offline redeem was refused ({status}): {handed}");
    }
    ok("the shopper showed the QR code at counter-1: hand over (the hub is still down)");
    let (status, again) = counter
        .redeem_code(
            placed["token"]["code"].as_str().unwrap_or_default(),
            "counter-2",
        )
        .await?;
    if status != 409 || again["error"] != "already_collected" {
        bail!("a second redeem should be refused as already collected ({status}): {again}");
    }
    ok(&format!(
        "the typed code at counter-2 is refused: {}",
        again["message"].as_str().unwrap_or("already collected")
    ));

    d.hub.restart().await?;
    d.proxy.set_upstream(d.hub.addr);
    d.proxy.link_up();
    d.hq = aisle_hil::harness::HqApi::new(&d.hub.url());
    let hq = HqOrders::new(&d.hub.url());
    ok("the hub is back");
    let done = hq.wait_status("web-demo-1", "collected", WAIT).await?;
    d.store.wait_drained(WAIT).await?;
    let done = hq.order("web-demo-1").await.unwrap_or(done);
    let collected = pickup::hq_history_count(&done, "collected");
    if done["status"] != "collected" || collected != 1 {
        bail!("HQ should show web-demo-1 collected exactly once: {done}");
    }
    let hook = d.oms.wait("web-demo-1", "collected", WAIT).await?;
    if !hook.signed_with(WEBHOOK_SECRET) {
        bail!("the collected webhook is not signed with the hub's secret: {hook:?}");
    }
    ok(&format!(
        "HQ shows web-demo-1 collected exactly once ({}), and its order system got the collected webhook",
        pickup::hq_history(&done).join(" → ")
    ));
    println!(
        "  click-and-collect: order placed → ready webhook at HQ's order system in {} ms, staff time excluded ({} ms placed → at the store, {} ms marked ready → webhook)",
        (to_store + to_webhook).as_millis(),
        to_store.as_millis(),
        to_webhook.as_millis()
    );
    Ok(())
}

async fn smoke(d: &mut Demo) -> Result<()> {
    println!(
        "Smoke tour of a virtual store (hub {}, gateway {})",
        d.hub.url(),
        d.agent.url()
    );
    wait_cameras(d).await?;
    ok("the gateway hears both entrance cameras (Axis over MQTT, Hikvision over HTTP)");
    d.north.walk(7).await?;
    d.south.walk(5).await?;
    d.north.wait_delivered(WAIT).await?;
    d.south.wait_delivered(WAIT).await?;
    ok("12 visitors walked in: 7 at the main entrance, 5 at the car park");
    let batch = d.hq.post_batch(&catalogue()).await?;
    ok(&format!("HQ pushed price batch {batch}"));
    d.store.wait_price(&gtin(1), 1280, WAIT).await?;
    d.store.wait_price(&gtin(2), 350, WAIT).await?;
    d.store.wait_price(&gtin(3), 2500, WAIT).await?;
    ok("the store charges the new prices");
    aisle_hil::harness::wait_for("HQ to see the prices active at the store", WAIT, || async {
        let p = d.hq.get(&format!("/v1/price-batches/{batch}")).await.ok()?;
        (p["stores"][0]["active"].as_u64() == Some(PRODUCTS.len() as u64)).then_some(())
    })
    .await?;
    ok(&format!(
        "HQ sees {0} of {0} prices active at S001",
        PRODUCTS.len()
    ));
    bind_shelf(d).await?;
    ok(&format!(
        "{STAFF} bound {SHELF_LABELS} shelf labels to the products (labels {}..{})",
        shelf_label(0),
        shelf_label(SHELF_LABELS - 1)
    ));

    d.proxy.link_down();
    ok("the store's WAN is down");
    let (status, body) = d
        .store
        .sell("demo-sale-1", &[(&gtin(1), 2), (&gtin(2), 1)])
        .await?;
    if status != 201 {
        bail!("offline sale refused ({status}): {body}");
    }
    if body["total"]["minor"] != 2 * 1280 + 350 {
        bail!("offline sale priced wrongly: {body}");
    }
    ok(&format!(
        "sold a basket offline: {} CNY",
        body["total_decimal"].as_str().unwrap_or("?")
    ));
    let (again, _) = d
        .store
        .sell("demo-sale-1", &[(&gtin(1), 2), (&gtin(2), 1)])
        .await?;
    if again != 200 {
        bail!("a retried sale should be answered 200 and not sold twice, got {again}");
    }
    ok("a retried sale is recognised, not sold twice");
    let status = d.store.status().await?;
    if status["outbox_depth"].as_u64().unwrap_or(0) == 0 {
        bail!("the sale should wait in the outbox while offline: {status}");
    }
    ok(&format!(
        "the sale waits in the outbox ({} events)",
        status["outbox_depth"]
    ));

    d.proxy.link_up();
    ok("the WAN is back");
    d.store.wait_drained(WAIT).await?;
    ok("the outbox drained");
    let sales = d.hq.sales(STORE).await?;
    let ours: Vec<_> = sales
        .iter()
        .filter(|s| s["sale_id"] == "demo-sale-1")
        .collect();
    if ours.len() != 1 {
        bail!(
            "HQ should hold the sale exactly once, holds it {} times",
            ours.len()
        );
    }
    ok("HQ holds the offline sale exactly once");
    let stock =
        d.hq.get(&format!("/v1/stores/{STORE}/stock?gtin={}", gtin(1)))
            .await?;
    if stock["on_hand"] != -2 {
        bail!("HQ stock for {} should be -2, is {stock}", gtin(1));
    }
    ok("HQ stock reflects the sale");
    let report = aisle_hil::harness::wait_for(
        "HQ's footfall report to show the 12 visitors",
        FOOTFALL_WAIT,
        || async {
            let r = footfall_report(d).await.ok()?;
            (r["totals"]["visitors_in"].as_u64()? >= 12).then_some(r)
        },
    )
    .await?;
    let totals = &report["totals"];
    if totals["visitors_in"] != 12 || totals["transactions"] != 1 {
        bail!("HQ's footfall totals should be 12 visitors and 1 transaction: {totals}");
    }
    ok(&format!(
        "HQ's footfall report: {} visitors, {} transaction, conversion {}",
        totals["visitors_in"], totals["transactions"], totals["conversion"]
    ));
    let svg = reqwest::Client::new()
        .get(format!("{}/v1/stores/{STORE}/footfall.svg", d.hub.url()))
        .bearer_auth(HQ_TOKEN)
        .send()
        .await?;
    let svg_ok = svg.status().is_success()
        && svg
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("image/svg+xml"));
    let body = svg.text().await?;
    if !svg_ok || !body.contains("<svg") {
        bail!("the footfall chart should be served as SVG: {body:.200}");
    }
    ok(&format!(
        "HQ's footfall chart is served ({} bytes of SVG)",
        body.len()
    ));
    click_and_collect(d).await?;
    shelf_tour(d).await?;
    lane_tour(d).await?;
    d.agent.verify_ledger()?;
    ok("the gateway ledger verifies (hash chain and replayed state)");
    println!("smoke: all steps passed");
    Ok(())
}

/// Camera commands typed while the demo runs: `north walk 5`, `south silence 30`, ...
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

async fn camera_command(d: &Demo, line: &str) -> Result<()> {
    let (who, rest) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
    if let Some(n) = who.strip_prefix("lane") {
        let lane = match n {
            "1" => &d.lanes[0],
            "2" => &d.lanes[1],
            _ => bail!("no lane {n:?}: lane1 or lane2"),
        };
        let (verb, arg) = rest.trim().split_once(' ').unwrap_or((rest.trim(), ""));
        return match verb {
            "scan" if !arg.trim().is_empty() => lane.scan(arg.trim()),
            "apples" => {
                let g: u32 = arg.trim().parse().context("apples GRAMS")?;
                lane.scan(&weighed_barcode(APPLES_ITEM, g))
            }
            "bag" => lane.bag_holds(arg.trim().parse().context("bag GRAMS")?),
            _ => bail!("lane commands: scan EAN13 | apples GRAMS | bag GRAMS"),
        };
    }
    let cam = match who {
        "north" => &d.north,
        "south" => &d.south,
        other => bail!("no camera {other:?}: say north or south, then a command"),
    };
    let command: Command = rest.parse()?;
    if command == Command::Quit {
        bail!("the demo stops with Ctrl-C");
    }
    cam.command(command).await
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut demo = start(&args.dir, args.smoke).await?;
    if args.smoke {
        let result = smoke(&mut demo).await;
        stop_cameras(demo, true).await?;
        return result;
    }
    // One click-and-collect order waiting for staff, so the pickup page has something to show.
    let hq = HqOrders::new(&demo.hub.url());
    hq.stock_catalogue(&[STORE], &[gtin(2), gtin(3)], 24)
        .await?;
    // The catalogue after the stocking (which prices its items at 3.50 as "Item <gtin>"), so
    // the shelf labels show the catalogue's names and prices.
    demo.hq.post_batch(&catalogue()).await?;
    demo.hq.post_batch(&apples_batch()).await?;
    bind_shelf(&demo).await?;
    let placed = hq
        .place(&pickup::order(
            "web-demo-1",
            STORE,
            &[(&gtin(3), 1), (&gtin(2), 2)],
            pickup::now_ms() + 4 * 3_600_000,
            Some(&demo.oms.url()),
        ))
        .await?;
    println!(
        "Aisle virtual store is running (data in {}).\n\n\
         HQ hub        {hub}  (token: {HQ_TOKEN})\n\
         Store S001    {agent}\n\n\
         Try:\n  \
         curl {agent}/v1/prices/{g1}\n  \
         curl -X POST {agent}/v1/sales -H 'content-type: application/json' \\\n       \
         -d '{{\"sale_id\":\"try-1\",\"lines\":[{{\"gtin\":\"{g1}\",\"qty\":1}}],\"payment\":{{\"method\":\"cash\"}}}}'\n  \
         curl {agent}/v1/sync/status\n  \
         curl -H 'authorization: Bearer {HQ_TOKEN}' {hub}/v1/stores/S001/sales\n  \
         curl {hub}/openapi.json\n\n\
         Entrance cameras (simulated; their clocks run 14 minutes behind, so their counts land in\n\
         15-minute intervals that have already closed and reach HQ within seconds):\n  \
         {NORTH}   Axis People Counter over MQTT {broker}, topic {prefix}/S001/camera/{NORTH}/counts\n  \
         {SOUTH}   Hikvision pushing over HTTP to {agent}/v1/cameras/{SOUTH}/counts\n\n\
         Footfall:\n  \
         curl {agent}/v1/cameras\n  \
         curl -H 'authorization: Bearer {HQ_TOKEN}' '{hub}/v1/stores/S001/footfall?interval=15m'\n  \
         curl -H 'authorization: Bearer {HQ_TOKEN}' {hub}/v1/stores/S001/footfall.svg > footfall.svg\n\n\
         Click-and-collect (HQ placed order web-demo-1; webhooks go to {oms}, printed here):\n  \
         Staff page    {agent}/pickup   (staff {STAFF}, PIN {STAFF_PIN})\n  \
         The shopper's QR text   {qr}\n  \
         The shopper's code      {code}\n  \
         curl -H 'authorization: Bearer {HQ_TOKEN}' {hub}/v1/orders/web-demo-1\n\n\
         Shelf labels ({n} simulated tags {l0}..{ln} behind an access point on {pty}, bound to the\n\
         catalogue's products; each tag's screen is written as a PNG after every refresh):\n  \
         curl {agent}/v1/labels\n  \
         curl {agent}/v1/labels/{l0}\n  \
         curl {agent}/v1/labels/{l0}/preview.png > label.png\n  \
         ls {screens}\n  \
         Change a price at HQ and watch the tag's PNG change:\n  \
         curl -X POST -H 'authorization: Bearer {HQ_TOKEN}' -H 'content-type: application/json' {hub}/v1/price-batches \\\n       \
         -d '{{\"stores\":[\"S001\"],\"prices\":[{{\"gtin\":\"{g1}\",\"price\":\"9.90\",\"currency\":\"CNY\",\"name\":\"Oolong tea 250 g\"}}]}}'\n\n\
         Self-checkout (two lanes; scanner, bagging scale and printer of each on a pseudo-terminal;\n\
         the simulated card terminal approves; attendant: {STAFF}, PIN {STAFF_PIN}):\n  \
         Lane screens  {agent}/lane/1   {agent}/lane/2\n  \
         Type on a screen: {e1} (tea) or {apples} (1.234 kg of apples), then Pay.\n  \
         Or here: lane1 scan {e1} | lane1 apples 850 | lane1 bag 1100\n  \
         curl {agent}/v1/lanes\n\n\
         Type camera commands here: north walk 5 | south walk 3 | north silence 30 | south reset |\n\
         north dup | south skew 60000\n\n\
         Press Ctrl-C to stop.",
        args.dir.display(),
        hub = demo.hub.url(),
        agent = demo.agent.url(),
        g1 = gtin(1),
        broker = demo.broker,
        prefix = demo.topic_prefix,
        oms = demo.oms.url(),
        qr = placed["token"]["qr"].as_str().unwrap_or_default(),
        code = placed["token"]["code"].as_str().unwrap_or_default(),
        n = SHELF_LABELS,
        l0 = shelf_label(0),
        ln = shelf_label(SHELF_LABELS - 1),
        pty = demo.shelf.path(),
        screens = demo.screens.display(),
        e1 = ean13_of(&gtin(1)),
        apples = weighed_barcode(APPLES_ITEM, 1_234),
    );
    let mut lines = stdin_lines();
    let mut stdin_open = true;
    let mut webhooks_shown = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let got = demo.oms.deliveries();
                for hook in got.iter().skip(webhooks_shown) {
                    let v = hook.json();
                    println!(
                        "webhook: {} {} (event {}, signature {})",
                        v["type"].as_str().unwrap_or("?"),
                        v["order_id"].as_str().unwrap_or("?"),
                        hook.event_id().unwrap_or("?"),
                        if hook.signed_with(WEBHOOK_SECRET) { "valid" } else { "INVALID" }
                    );
                }
                webhooks_shown = got.len();
            }
            line = lines.recv(), if stdin_open => match line {
                Some(line) if line.trim().is_empty() => {}
                Some(line) => match camera_command(&demo, &line).await {
                    Ok(()) => println!("ok {}", line.trim()),
                    Err(e) => eprintln!("error: {e:#}"),
                },
                None => stdin_open = false,
            },
            r = tokio::signal::ctrl_c() => {
                r?;
                break;
            }
        }
    }
    stop_cameras(demo, false).await
}
