//! `ledger_append`: durable sales per second and p99 latency through the agent's ledger at 1, 16
//! and 256 concurrent writers, beside raw rusqlite doing one transaction per insert with the same
//! pragmas (WAL, synchronous=FULL) in the same run.
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aisle_agent::clock::SystemClock;
use aisle_agent::ledger::{Ledger, SaleRequest, SaleRequestLine};
use aisle_protocol::sync::{Payment, PaymentMethod, PriceChange};
use aisle_protocol::{BatchId, Currency, Gtin, Money, SaleId, UtcMillis};
use anyhow::{Context, Result};

use super::{BenchResult, quantile_ms, round};

const ITEMS: u64 = 50;

/// A ledger with `ITEMS` active prices.
pub async fn seeded_ledger(dir: &Path) -> Result<Ledger> {
    let ledger = Ledger::open(dir, Arc::new(SystemClock)).await?;
    let cny = Currency::parse("CNY")?;
    let prices = (0..ITEMS)
        .map(|i| {
            Ok(PriceChange {
                gtin: Gtin::from_index(i)?,
                version: 1,
                price: Money::new(100 + i as i64, cny),
                name: format!("Bench item {i}"),
                effective_at: UtcMillis(0),
                batch_id: BatchId::parse("bench")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    ledger.stage_prices(prices).await?;
    Ok(ledger)
}

pub fn sale(id: String, n: u64) -> Result<SaleRequest> {
    Ok(SaleRequest {
        sale_id: SaleId::parse(&id)?,
        lines: vec![
            SaleRequestLine {
                gtin: Gtin::from_index(n % ITEMS)?,
                qty: 1,
            },
            SaleRequestLine {
                gtin: Gtin::from_index((n + 7) % ITEMS)?,
                qty: 2,
            },
        ],
        payment: Payment {
            method: PaymentMethod::Card,
            reference: None,
            offline: false,
        },
    })
}

/// Sales per second and latencies with `writers` concurrent callers for `span`.
async fn through_ledger(
    dir: &Path,
    writers: usize,
    span: Duration,
) -> Result<(f64, [f64; 3], u64)> {
    let ledger = seeded_ledger(dir).await?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0u64;
            while start.elapsed() < span {
                let t = Instant::now();
                ledger
                    .record_sale(sale(format!("w{w}-{n}"), n)?)
                    .await
                    .context("sale refused")?;
                lat.push(t.elapsed());
                n += 1;
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let stats = ledger.stats();
    ledger.close().await;
    let rate = all.len() as f64 / elapsed;
    let q = [
        quantile_ms(&mut all, 0.5),
        quantile_ms(&mut all, 0.99),
        quantile_ms(&mut all, 1.0),
    ];
    Ok((rate, q, stats.transactions))
}

/// Raw rusqlite: one transaction per insert of an event row and a sale row, same pragmas.
fn raw_sqlite(dir: &Path, span: Duration) -> Result<(f64, f64)> {
    let conn = rusqlite::Connection::open(dir.join("raw.db"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, payload TEXT NOT NULL, hash BLOB NOT NULL);
         CREATE TABLE sales (sale_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, total INTEGER NOT NULL);",
    )?;
    let payload = "x".repeat(420); // about the size of a two-line sale event
    let start = Instant::now();
    let mut lat = Vec::new();
    let mut n = 0u64;
    while start.elapsed() < span {
        let t = Instant::now();
        let tx = conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO events (seq, event_id, payload, hash) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![n as i64, format!("{n:032x}"), payload, [0u8; 32]],
        )?;
        tx.execute(
            "INSERT INTO sales (sale_id, seq, total) VALUES (?1, ?2, ?3)",
            rusqlite::params![format!("raw-{n}"), n as i64, 300],
        )?;
        tx.commit()?;
        lat.push(t.elapsed());
        n += 1;
    }
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    Ok((rate, quantile_ms(&mut lat, 0.99)))
}

pub async fn run(span: Duration) -> Result<BenchResult> {
    let mut r = BenchResult::default();
    let base = tempfile::tempdir()?;
    let raw_dir = base.path().join("raw");
    std::fs::create_dir_all(&raw_dir)?;
    let (raw_rate, raw_p99) =
        tokio::task::spawn_blocking(move || raw_sqlite(&raw_dir, span)).await??;
    r.figure("raw_per_s", round(raw_rate, 1));
    r.figure("raw_p99_ms", round(raw_p99, 2));
    r.row(
        "raw rusqlite, 1 txn per insert",
        format!("{raw_rate:.0}/s, p99 {raw_p99:.2} ms"),
        "baseline".into(),
        None,
    );
    for writers in [1usize, 16, 256] {
        let dir = base.path().join(format!("w{writers}"));
        let (rate, [p50, p99, max], txns) = through_ledger(&dir, writers, span).await?;
        let ratio = rate / raw_rate;
        r.figure(&format!("per_s_at_{writers}"), round(rate, 1));
        r.figure(&format!("p50_ms_at_{writers}"), round(p50, 2));
        r.figure(&format!("p99_ms_at_{writers}"), round(p99, 2));
        r.figure(&format!("max_ms_at_{writers}"), round(max, 2));
        r.figure(&format!("ratio_at_{writers}"), round(ratio, 2));
        r.figure(&format!("transactions_at_{writers}"), txns);
        let met = (writers == 256).then_some(ratio >= 5.0 && p99 < 20.0);
        let target = if writers == 256 {
            ">= 5x raw, p99 < 20 ms"
        } else {
            ""
        };
        r.row(
            &format!("ledger, {writers} writers"),
            format!("{rate:.0}/s ({ratio:.1}x raw), p50 {p50:.2} / p99 {p99:.2} / max {max:.1} ms"),
            target.into(),
            met,
        );
    }
    Ok(r)
}
