//! `redeem`: how long a pickup redeem takes at the agent, from request to the hand-over answer
//! (verify the QR or look up the code, then commit `PickupCollected`, fsynced), with 10,000
//! open orders in the store's ledger. HQ places them through the hub, the agent receives them
//! over the changefeed, staff put some ready. Redeems run one at a time over one keep-alive
//! connection, interleaved with two baselines on the same client: `GET /healthz` (the HTTP round
//! trip) and `GET /v1/pickups/{id}` (a signed-in ledger read, no write). Then a few counters
//! redeem at once. Target (design): p99 < 20 ms.
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::Value;

use super::{BenchResult, quantile_ms, round};
use crate::harness::{Backend, gtin};
use crate::pickup::{HqOrders, HubSettings, PickupCounter, now_ms, order, start_store};

/// Products the orders draw from.
const ITEMS: u64 = 20;
/// Orders placed at the hub at once.
const PLACING: usize = 8;
/// Counters redeeming at once in the concurrent part, and orders each redeems.
const COUNTERS: usize = 4;
const PER_COUNTER: usize = 25;
const TARGET_P99_MS: f64 = 20.0;

fn order_id(i: usize) -> String {
    format!("bench-{i:05}")
}

/// p50, p99 and max of `samples`, in ms.
fn spread(samples: &mut [Duration]) -> (f64, f64, f64) {
    (
        round(quantile_ms(samples, 0.50), 2),
        round(quantile_ms(samples, 0.99), 2),
        round(quantile_ms(samples, 1.0), 2),
    )
}

async fn timed<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<(Duration, T)> {
    let start = Instant::now();
    let v = f.await?;
    Ok((start.elapsed(), v))
}

pub async fn run(open_orders: usize, redeems: usize) -> Result<BenchResult> {
    let concurrent = COUNTERS * PER_COUNTER;
    if redeems + concurrent > open_orders {
        bail!("{redeems} + {concurrent} redeems need at least as many open orders");
    }
    let vs = start_store(Backend::Sqlite, HubSettings::default(), "").await?;
    let hq = HqOrders::of(&vs);
    let items: Vec<String> = (1..=ITEMS).map(gtin).collect();
    hq.stock_catalogue(&["S001"], &items, 1_000_000).await?;

    // HQ places the orders, a few requests in flight at a time.
    let load = Instant::now();
    let pickup_by = now_ms() + 2 * 24 * 3_600_000;
    let mut tokens: Vec<Option<Value>> = vec![None; open_orders];
    let mut next = 0usize;
    let mut tasks = tokio::task::JoinSet::new();
    while next < open_orders || !tasks.is_empty() {
        while next < open_orders && tasks.len() < PLACING {
            let (hq, i) = (hq.clone(), next);
            let (a, b) = (&items[i % items.len()], &items[(i + 7) % items.len()]);
            let body = order(&order_id(i), "S001", &[(a, 1), (b, 2)], pickup_by, None);
            tasks.spawn(async move { Ok::<_, anyhow::Error>((i, hq.place(&body).await?)) });
            next += 1;
        }
        if let Some(r) = tasks.join_next().await {
            let (i, placed) = r??;
            tokens[i] = Some(placed["token"].clone());
        }
    }
    let placed_s = load.elapsed().as_secs_f64();
    let counter = PickupCounter::open(&vs).await?;
    // The changefeed delivers in order: once the last order is at the store, all are.
    counter
        .wait_status(
            &order_id(open_orders - 1),
            "received",
            Duration::from_secs(900),
        )
        .await?;
    let received_s = load.elapsed().as_secs_f64();
    let store = vs.agent.api();
    store.wait_drained(Duration::from_secs(900)).await?;

    // Staff put the orders to redeem ready; the rest stay open in the ledger.
    let to_redeem = redeems + concurrent;
    for i in 0..to_redeem {
        counter.pick_and_ready(&order_id(i), "Shelf B3").await?;
    }
    store.wait_drained(Duration::from_secs(300)).await?;
    let token = |i: usize| -> Result<(String, String)> {
        let t = tokens[i]
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no token for order {i}"))?;
        Ok((
            t["qr"].as_str().unwrap_or_default().to_string(),
            t["code"].as_str().unwrap_or_default().to_string(),
        ))
    };

    // One counter, one order after another (QR and typed code alternating), each beside the
    // two baselines on the same connection.
    let http = reqwest::Client::new();
    let healthz = format!("{}/healthz", vs.agent.url());
    let probe = order_id(open_orders - 1);
    let (mut redeem, mut by_qr, mut by_code) = (Vec::new(), Vec::new(), Vec::new());
    let (mut round_trip, mut read) = (Vec::new(), Vec::new());
    for i in 0..redeems {
        let (t, _) = timed(async { Ok(http.get(&healthz).send().await?.bytes().await?) }).await?;
        round_trip.push(t);
        let (t, (status, _)) = timed(counter.order(&probe)).await?;
        if status != 200 {
            bail!("GET order {probe}: {status}");
        }
        read.push(t);
        let (qr, code) = token(i)?;
        let id = order_id(i);
        let (t, (status, body)) = if i % 2 == 0 {
            timed(counter.redeem_qr(&qr, "counter-1")).await?
        } else {
            timed(counter.redeem_code(&code, "counter-1")).await?
        };
        if status != 200 || body["hand_over"] != true {
            bail!("redeem {id} refused ({status}): {body}");
        }
        redeem.push(t);
        if i % 2 == 0 {
            by_qr.push(t);
        } else {
            by_code.push(t);
        }
    }

    // Several counters at once, each with its own connection and orders.
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..COUNTERS {
        let counter = PickupCounter::open(&vs).await?;
        let mut mine = Vec::new();
        for k in 0..PER_COUNTER {
            let i = redeems + c * PER_COUNTER + k;
            mine.push((order_id(i), token(i)?.0));
        }
        tasks.spawn(async move {
            let mut times = Vec::new();
            for (id, qr) in mine {
                let (t, (status, body)) =
                    timed(counter.redeem_qr(&qr, &format!("counter-{c}"))).await?;
                if status != 200 {
                    bail!("redeem {id} refused ({status}): {body}");
                }
                times.push(t);
            }
            Ok::<_, anyhow::Error>(times)
        });
    }
    let mut together = Vec::new();
    while let Some(r) = tasks.join_next().await {
        together.extend(r??);
    }
    let open_left = counter.list("open", 1).await?.len();
    store.wait_drained(Duration::from_secs(300)).await?;
    let mut vs = vs;
    vs.agent.kill9();
    vs.agent.verify_ledger()?;
    vs.finish().await?;
    if open_left == 0 {
        bail!("no open orders left in the ledger after the redeems");
    }

    let (r50, r99, rmax) = spread(&mut redeem);
    let (q50, q99, qmax) = spread(&mut by_qr);
    let (c50, c99, cmax) = spread(&mut by_code);
    let (h50, h99, hmax) = spread(&mut round_trip);
    let (g50, g99, gmax) = spread(&mut read);
    let (t50, t99, tmax) = spread(&mut together);
    let mut r = BenchResult::default();
    r.figure("open_orders", open_orders as u64);
    r.figure("orders_placed_s", round(placed_s, 1));
    r.figure("orders_at_store_s", round(received_s, 1));
    r.figure("redeems", redeems as u64);
    r.figure("redeem_p50_ms", r50);
    r.figure("redeem_p99_ms", r99);
    r.figure("redeem_max_ms", rmax);
    r.figure("redeem_qr_p99_ms", q99);
    r.figure("redeem_code_p99_ms", c99);
    r.figure("healthz_p50_ms", h50);
    r.figure("healthz_p99_ms", h99);
    r.figure("healthz_max_ms", hmax);
    r.figure("get_order_p50_ms", g50);
    r.figure("get_order_p99_ms", g99);
    r.figure("get_order_max_ms", gmax);
    r.figure("concurrent_counters", COUNTERS as u64);
    r.figure("concurrent_redeem_p50_ms", t50);
    r.figure("concurrent_redeem_p99_ms", t99);
    r.figure("concurrent_redeem_max_ms", tmax);
    let fmt = |p50: f64, p99: f64, max: f64| format!("p50 {p50} / p99 {p99} / max {max} ms");
    r.row(
        &format!("redeem → hand_over, {redeems} sequential, {open_orders} open orders"),
        fmt(r50, r99, rmax),
        format!(
            "target p99 < {TARGET_P99_MS} ms; baseline GET /healthz {}, GET order {}",
            fmt(h50, h99, hmax),
            fmt(g50, g99, gmax)
        ),
        Some(r99 < TARGET_P99_MS),
    );
    r.row(
        "  of which by QR / by typed code",
        format!("QR {}; code {}", fmt(q50, q99, qmax), fmt(c50, c99, cmax)),
        String::new(),
        None,
    );
    r.row(
        &format!("redeem, {COUNTERS} counters at once ({concurrent} orders)"),
        fmt(t50, t99, tmax),
        format!("target p99 < {TARGET_P99_MS} ms"),
        Some(t99 < TARGET_P99_MS),
    );
    Ok(r)
}
