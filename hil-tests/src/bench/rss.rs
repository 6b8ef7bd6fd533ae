//! `agent_rss`: the agent process's peak resident memory (VmHWM) with 100,000 SKUs priced through
//! the hub and an offline backlog caught up.
use anyhow::{Context, Result};

use super::catch_up::SyncedStore;
use super::{BenchResult, round};
use crate::harness::Backend;

/// Peak resident set of a process in MiB, from /proc.
pub fn peak_rss_mb(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc status")?;
    Ok(kb / 1024.0)
}

pub async fn run(skus: u64, sales: usize) -> Result<BenchResult> {
    let mut r = BenchResult::default();
    let mut store = SyncedStore::start(Backend::Sqlite, skus).await?;
    let after_prices = peak_rss_mb(store.agent.pid().context("agent not running")?)?;
    store.sell_offline(sales).await?;
    let secs = store.time_catch_up().await?;
    let peak = peak_rss_mb(store.agent.pid().context("agent not running")?)?;
    store.finish().await?;
    r.figure("skus", skus);
    r.figure("catch_up_sales", sales as u64);
    r.figure("peak_mb", round(peak.max(after_prices), 1));
    r.figure("peak_mb_pricing", round(after_prices, 1));
    r.figure("catch_up_s", round(secs, 2));
    r.row(
        &format!("agent peak RSS, {skus} SKUs + {sales} sales caught up"),
        format!(
            "{:.1} MB (pricing phase {after_prices:.1} MB)",
            peak.max(after_prices)
        ),
        "target < 40 MB".into(),
        Some(peak.max(after_prices) < 40.0),
    );
    Ok(r)
}
