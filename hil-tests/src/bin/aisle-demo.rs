//! `scripts/demo`: a whole virtual store on embedded defaults (hub on SQLite, one gateway agent,
//! the store's WAN behind a switchable link), and `--smoke`, a scripted tour that checks each step.
use std::path::PathBuf;
use std::time::Duration;

use aisle_hil::harness::{AgentProcess, AgentSetup, HQ_TOKEN, HubProcess, StoreApi, gtin};
use aisle_hil::proxy::FaultProxy;
use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::json;

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

struct Demo {
    hub: HubProcess,
    proxy: FaultProxy,
    agent: AgentProcess,
    hq: aisle_hil::harness::HqApi,
    store: StoreApi,
}

async fn start(dir: &PathBuf) -> Result<Demo> {
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
    let agent = AgentProcess::start(AgentSetup {
        store: STORE.into(),
        hub_url: proxy.url(),
        credential,
        data_dir: dir.join("gateway"),
        clock_offset_ms: 0,
    })
    .await?;
    let hq = aisle_hil::harness::HqApi::new(&hub.url());
    let store = agent.api();
    Ok(Demo {
        hub,
        proxy,
        agent,
        hq,
        store,
    })
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
    d.agent.verify_ledger()?;
    ok("the gateway ledger verifies (hash chain and replayed state)");
    println!("smoke: all steps passed");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let demo = start(&args.dir).await?;
    if args.smoke {
        return smoke(&demo).await;
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
         Press Ctrl-C to stop.",
        args.dir.display(),
        hub = demo.hub.url(),
        agent = demo.agent.url(),
        g1 = gtin(1),
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
