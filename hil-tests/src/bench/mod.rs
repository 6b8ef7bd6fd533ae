//! Benchmarks for `scripts/bench`. Every figure is measured beside its baseline in the same run,
//! because only ratios are stable on shared machines. Results go to `report.json` (figures keyed
//! by name, units in the key) and a markdown table.
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde_json::{Map, Value};

pub mod auth_overhead;
pub mod catch_up;
pub mod esl_bytes;
pub mod esl_store_relabel;
pub mod footfall_ingest;
pub mod ledger_append;
pub mod reconnect;
pub mod redeem;
pub mod rss;
pub mod scan_to_price;

/// One benchmark's figures and the rows it shows in the table.
#[derive(Debug, Default)]
pub struct BenchResult {
    pub figures: Map<String, Value>,
    /// (what, measured, baseline or target, verdict)
    pub rows: Vec<[String; 4]>,
}

impl BenchResult {
    pub fn figure(&mut self, key: &str, value: impl Into<Value>) {
        self.figures.insert(key.to_string(), value.into());
    }

    pub fn row(&mut self, what: &str, measured: String, against: String, met: Option<bool>) {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "",
        };
        self.rows
            .push([what.to_string(), measured, against, verdict.to_string()]);
    }
}

/// Writes `report.json` and `report.md` into `out`.
pub fn write_report(out: &Path, results: &BTreeMap<String, BenchResult>) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let json: Map<String, Value> = results
        .iter()
        .map(|(k, v)| (k.clone(), Value::Object(v.figures.clone())))
        .collect();
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&Value::Object(json))?,
    )?;
    let mut md = String::from(
        "| benchmark | figure | measured | baseline / target | verdict |\n|---|---|---|---|---|\n",
    );
    for (name, r) in results {
        for [what, measured, against, verdict] in &r.rows {
            md.push_str(&format!(
                "| {name} | {what} | {measured} | {against} | {verdict} |\n"
            ));
        }
    }
    std::fs::write(out.join("report.md"), &md)?;
    println!("{md}");
    Ok(())
}

/// The `q`-quantile of `samples` in milliseconds (nearest rank).
pub fn quantile_ms(samples: &mut [Duration], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable();
    let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1].as_secs_f64() * 1000.0
}

/// Rounds for the report: figures are not more precise than the machine.
pub fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}
