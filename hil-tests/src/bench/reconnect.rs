//! `reconnect`: how soon the drain starts once the WAN comes back after an outage long enough for
//! the sync client's backoff to reach its cap. Target (design): within 2 s. Measured here rather
//! than asserted in a test, because it is a timing figure.
use std::time::{Duration, Instant};

use anyhow::Result;

use super::catch_up::SyncedStore;
use super::{BenchResult, round};
use crate::harness::{Backend, wait_for};

pub async fn run(outage: Duration, trials: usize) -> Result<BenchResult> {
    let mut r = BenchResult::default();
    let mut store = SyncedStore::start(Backend::Sqlite, 50).await?;
    let mut worst: f64 = 0.0;
    let mut all = Vec::new();
    for _ in 0..trials {
        store.sell_offline(50).await?;
        store.agent.restart().await?;
        let api = store.agent.api();
        let before = api.status().await?["acked_through"].as_u64().unwrap_or(0);
        // The agent keeps retrying against a dead link and backs off to its cap.
        tokio::time::sleep(outage).await;
        let start = Instant::now();
        store.proxy.link_up();
        wait_for(
            "the first acknowledgement after the link returned",
            Duration::from_secs(60),
            || async {
                let s = api.status().await.ok()?;
                (s["acked_through"].as_u64()? > before).then_some(())
            },
        )
        .await?;
        let secs = start.elapsed().as_secs_f64();
        worst = worst.max(secs);
        all.push(round(secs, 3));
        store
            .agent
            .api()
            .wait_drained(Duration::from_secs(60))
            .await?;
    }
    store.finish().await?;
    r.figure("outage_s", outage.as_secs());
    r.figure("trials", trials as u64);
    r.figure("drain_start_s", all.clone());
    r.figure("drain_start_max_s", round(worst, 3));
    r.row(
        &format!(
            "drain start after a {} s outage ({trials} trials)",
            outage.as_secs()
        ),
        format!("max {worst:.2} s ({all:?})"),
        "target < 2 s".into(),
        Some(worst < 2.0),
    );
    Ok(r)
}
