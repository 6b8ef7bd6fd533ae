//! `scripts/demo`: a whole virtual store on embedded defaults (hub on SQLite, one gateway agent,
//! the store's WAN behind a switchable link, two simulated entrance cameras), and `--smoke`, a
//! scripted tour that checks each step.
use std::path::PathBuf;
use std::time::Duration;

use aisle_hil::camera_sim::{
    CameraProfile, CameraSim, Command, DEFAULT_TOPIC_PREFIX, SimConfig, Transport, Vendor, now_ms,
};
use aisle_hil::footfall::{self, CameraEntry, FootfallSection, rfc3339};
use aisle_hil::harness::{AgentProcess, AgentSetup, HQ_TOKEN, HubProcess, StoreApi, gtin};
use aisle_hil::mqtt;
use aisle_hil::proxy::FaultProxy;
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
    let hub = HubProcess::start(&db, &dir).await?;
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
    let agent = AgentProcess::start(AgentSetup {
        store: STORE.into(),
        hub_url: proxy.url(),
        credential,
        data_dir: dir.join("gateway"),
        clock_offset_ms: 0,
        extra_config: section.toml(),
    })
    .await?;
    south.transport = Transport::Http {
        agent_url: agent.url(),
    };
    let north = CameraSim::start(north)?;
    let south = CameraSim::start(south)?;
    let hq = aisle_hil::harness::HqApi::new(&hub.url());
    let store = agent.api();
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
    })
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

fn catalogue() -> serde_json::Value {
    json!({
        "stores": [STORE],
        "prices": [
            {"gtin": gtin(1), "price": "12.80", "currency": "CNY", "name": "Oolong tea 250 g"},
            {"gtin": gtin(2), "price": "3.50", "currency": "CNY", "name": "豆浆 1 L"},
            {"gtin": gtin(3), "price": "25.00", "currency": "CNY", "name": "Jasmine rice 5 kg"}
        ]
    })
}

fn ok(step: &str) {
    println!("  ok   {step}");
}

async fn smoke(d: &Demo) -> Result<()> {
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
        (p["stores"][0]["active"].as_u64() == Some(3)).then_some(())
    })
    .await?;
    ok("HQ sees 3 of 3 prices active at S001");

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
    let demo = start(&args.dir, args.smoke).await?;
    if args.smoke {
        let result = smoke(&demo).await;
        stop_cameras(demo, true).await?;
        return result;
    }
    demo.hq.post_batch(&catalogue()).await?;
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
         Type camera commands here: north walk 5 | south walk 3 | north silence 30 | south reset |\n\
         north dup | south skew 60000\n\n\
         Press Ctrl-C to stop.",
        args.dir.display(),
        hub = demo.hub.url(),
        agent = demo.agent.url(),
        g1 = gtin(1),
        broker = demo.broker,
        prefix = demo.topic_prefix,
    );
    let mut lines = stdin_lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
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
