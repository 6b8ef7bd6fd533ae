//! `scripts/bench [NAME...]`: runs the benchmarks and writes `report.json` and `report.md`.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use aisle_hil::bench::{self, BenchResult};
use aisle_hil::harness::Backend;
use anyhow::{Result, bail};
use clap::Parser;

const ALL: &[&str] = &[
    "ledger_append",
    "catch_up",
    "agent_rss",
    "reconnect",
    "footfall_ingest",
    "redeem",
    "esl_bytes",
    "auth_overhead",
    "esl_store_relabel",
    "scan_to_price",
];

#[derive(Parser, Debug)]
#[command(about = "Aisle benchmarks, each beside its baseline measured in the same run")]
struct Args {
    /// Benchmarks to run (default: all): ledger_append, catch_up, agent_rss, reconnect,
    /// footfall_ingest, redeem, esl_bytes, auth_overhead, esl_store_relabel, scan_to_price.
    names: Vec<String>,
    /// Where report.json and report.md go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Seconds each ledger_append configuration runs.
    #[arg(long, default_value_t = 4)]
    seconds: u64,
    /// Offline sales in catch_up.
    #[arg(long, default_value_t = 200_000)]
    sales: usize,
    /// SKUs priced in agent_rss.
    #[arg(long, default_value_t = 100_000)]
    skus: u64,
    /// Cameras publishing in footfall_ingest.
    #[arg(long, default_value_t = 20)]
    cameras: usize,
    /// Messages per camera in footfall_ingest.
    #[arg(long, default_value_t = 5_000)]
    camera_messages: usize,
    /// Open pickup orders in the store's ledger in redeem.
    #[arg(long, default_value_t = 10_000)]
    open_orders: usize,
    /// Orders redeemed one after another in redeem.
    #[arg(long, default_value_t = 500)]
    redeems: usize,
    /// Requests of each kind to each hub in auth_overhead.
    #[arg(long, default_value_t = 1_000)]
    auth_rounds: usize,
    /// Bound shelf labels in esl_store_relabel.
    #[arg(long, default_value_t = 30_000)]
    labels: usize,
    /// Seconds the 8 lanes scan in scan_to_price.
    #[arg(long, default_value_t = 30)]
    lane_seconds: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let names: Vec<String> = if args.names.is_empty() {
        ALL.iter().map(|s| s.to_string()).collect()
    } else {
        args.names.clone()
    };
    for n in &names {
        if !ALL.contains(&n.as_str()) {
            bail!("unknown benchmark '{n}'; known: {}", ALL.join(", "));
        }
    }
    let mut results: BTreeMap<String, BenchResult> = BTreeMap::new();
    for name in &names {
        eprintln!("[bench] {name} ...");
        let r = match name.as_str() {
            "ledger_append" => bench::ledger_append::run(Duration::from_secs(args.seconds)).await?,
            "catch_up" => bench::catch_up::run(args.sales).await?,
            "agent_rss" => bench::rss::run(args.skus, args.sales).await?,
            "reconnect" => bench::reconnect::run(Duration::from_secs(15), 3).await?,
            "footfall_ingest" => {
                bench::footfall_ingest::run(args.cameras, args.camera_messages).await?
            }
            "redeem" => bench::redeem::run(args.open_orders, args.redeems).await?,
            "esl_bytes" => bench::esl_bytes::run()?,
            "auth_overhead" => {
                let mut r = bench::auth_overhead::run(Backend::Sqlite, args.auth_rounds).await?;
                let pg = bench::auth_overhead::run(Backend::Postgres, args.auth_rounds).await?;
                r.figures.extend(pg.figures);
                r.rows.extend(pg.rows);
                r
            }
            "esl_store_relabel" => bench::esl_store_relabel::run(args.labels).await?,
            "scan_to_price" => bench::scan_to_price::run(args.lane_seconds).await?,
            other => bail!("unknown benchmark {other}"),
        };
        results.insert(name.clone(), r);
    }
    bench::write_report(&args.out, &results)
}
