//! `catch_up`: a store sold 200,000 times while offline; the link returns. Seconds until the hub
//! has acknowledged everything, with the hub on SQLite and on PostgreSQL, beside the hub's storage
//! ingesting the same events directly (no HTTP, no agent) in the same run.
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aisle_agent::clock::SystemClock;
use aisle_agent::ledger::Ledger;
use aisle_protocol::sync::LedgerEvent;
use anyhow::{Context, Result, bail};
use serde_json::json;

use super::ledger_append::sale;
use super::{BenchResult, round};
use crate::harness::{AgentProcess, AgentSetup, Backend, HqApi, HubDb, HubProcess, gtin, wait_for};
use crate::proxy::FaultProxy;

/// Items priced in the catch-up store (the sales use the first 50).
const ITEMS: u64 = 50;
const UPLOAD_BATCH: usize = 2_000;

/// A store with a hub, a proxy and a running agent whose first `items` prices are synced.
#[derive(Debug)]
pub struct SyncedStore {
    pub dir: tempfile::TempDir,
    pub db: HubDb,
    pub hub: HubProcess,
    pub proxy: FaultProxy,
    pub agent: AgentProcess,
}

impl SyncedStore {
    pub async fn start(backend: Backend, items: u64) -> Result<SyncedStore> {
        let dir = tempfile::tempdir()?;
        let db = HubDb::create(backend, dir.path()).await?;
        let hub = HubProcess::start(&db.url, dir.path()).await?;
        hub.cli(&["store", "add", "S001", "--name", "Bench"])?;
        let credential = hub.cli(&["gateway", "add", "--store", "S001"])?;
        let proxy = FaultProxy::start(hub.addr).await?;
        let agent = AgentProcess::start(AgentSetup {
            store: "S001".into(),
            hub_url: proxy.url(),
            credential,
            data_dir: dir.path().join("gateway"),
            clock_offset_ms: 0,
            extra_config: String::new(),
        })
        .await?;
        let prices: Vec<_> = (0..items)
            .map(|i| json!({"gtin": gtin(i), "price": format!("{}.{:02}", 1 + i % 90, i % 100), "currency": "CNY", "name": format!("Item {i}")}))
            .collect();
        HqApi::new(&hub.url())
            .post_batch(&json!({"stores": ["S001"], "prices": prices}))
            .await?;
        let api = agent.api();
        wait_for(
            "the prices to reach the store",
            Duration::from_secs(600),
            || async { api.price(&gtin(items - 1)).await.ok().flatten().map(|_| ()) },
        )
        .await?;
        api.wait_drained(Duration::from_secs(600)).await?;
        Ok(SyncedStore {
            dir,
            db,
            hub,
            proxy,
            agent,
        })
    }

    /// Stops the agent, records `n` sales straight into its ledger (as if sold offline), and
    /// returns the new events.
    pub async fn sell_offline(&mut self, n: usize) -> Result<Vec<LedgerEvent>> {
        self.proxy.link_down();
        self.agent.kill9();
        let ledger = Ledger::open(&self.agent.setup.data_dir, Arc::new(SystemClock)).await?;
        let from = ledger.view().last_seq;
        let writers = 256;
        let mut tasks = Vec::new();
        for w in 0..writers {
            let ledger = ledger.clone();
            tasks.push(tokio::spawn(async move {
                for k in (w..n).step_by(writers) {
                    ledger
                        .record_sale(sale(format!("off-{from}-{k}"), k as u64 % ITEMS)?)
                        .await
                        .context("offline sale")?;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let mut events = Vec::with_capacity(n);
        let mut after = from;
        loop {
            let page = ledger.events_after(after, 10_000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            events.extend(page);
        }
        ledger.close().await;
        Ok(events)
    }

    /// Starts the agent with the link down, then brings the link up; seconds until drained.
    pub async fn time_catch_up(&mut self) -> Result<f64> {
        self.agent.restart().await?;
        let api = self.agent.api();
        let start = Instant::now();
        self.proxy.link_up();
        wait_for(
            "the catch-up to drain",
            Duration::from_secs(600),
            || async {
                let s = api.status().await.ok()?;
                (s["outbox_depth"].as_u64() == Some(0)).then_some(())
            },
        )
        .await?;
        Ok(start.elapsed().as_secs_f64())
    }

    pub async fn finish(mut self) -> Result<()> {
        self.agent.kill9();
        self.hub.kill();
        self.db.cleanup().await
    }
}

/// The hub's storage ingesting `events` directly, in upload-sized batches, on a fresh database.
async fn direct_ingest(backend: Backend, dir: &Path, events: &[LedgerEvent]) -> Result<f64> {
    let db = HubDb::create(backend, dir).await?;
    let storage = aisle_hub::storage::open(&db.url).await?;
    let store = aisle_protocol::StoreId::parse("S002")?;
    storage
        .create_store(&aisle_hub::storage::NewStore::new(
            store.clone(),
            "Direct",
            aisle_protocol::Currency::parse("CNY")?,
        )?)
        .await?;
    let gw = storage.create_gateway(&store).await?;
    // The same rows, numbered from 1 for this fresh gateway.
    let renumbered: Vec<LedgerEvent> = events
        .iter()
        .enumerate()
        .map(|(i, e)| LedgerEvent {
            seq: i as u64 + 1,
            ..e.clone()
        })
        .collect();
    let start = Instant::now();
    for chunk in renumbered.chunks(UPLOAD_BATCH) {
        storage.ingest_events(&gw.gateway_id, chunk).await?;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(storage);
    db.cleanup().await?;
    Ok(secs)
}

pub async fn run(sales: usize) -> Result<BenchResult> {
    let mut r = BenchResult::default();
    r.figure("sales", sales as u64);
    for (backend, key) in [(Backend::Sqlite, "sqlite"), (Backend::Postgres, "postgres")] {
        let mut store = SyncedStore::start(backend, ITEMS).await?;
        let events = store.sell_offline(sales).await?;
        if events.len() != sales {
            bail!(
                "expected {sales} offline events, the ledger holds {}",
                events.len()
            );
        }
        let synced_s = store.time_catch_up().await?;
        let held = store.agent.api().status().await?;
        store.finish().await?;
        let base = tempfile::tempdir()?;
        let direct_s = direct_ingest(backend, base.path(), &events).await?;
        let ratio = direct_s / synced_s;
        r.figure(&format!("{key}_s"), round(synced_s, 2));
        r.figure(&format!("{key}_direct_s"), round(direct_s, 2));
        r.figure(&format!("ratio_{key}"), round(ratio, 2));
        r.figure(
            &format!("{key}_acked_through"),
            held["acked_through"].clone(),
        );
        r.row(
            &format!("{sales} offline sales -> hub on {key}"),
            format!("{synced_s:.2} s ({:.0}/s)", sales as f64 / synced_s),
            format!("direct insert {direct_s:.2} s; ratio {ratio:.2} (target < 20 s, >= 0.5)"),
            Some(synced_s < 20.0 && ratio >= 0.5),
        );
    }
    Ok(r)
}
