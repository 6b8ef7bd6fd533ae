//! The faults that break store sync in the field, run against the real `aisle-hub` (on SQLite and
//! on PostgreSQL) and the real `aisle-agent`, with a fault proxy on the link between them.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aisle_hil::harness::{Backend, HQ_TOKEN, VirtualStore, gtin, hub_cli, wait_for};
use aisle_protocol::sync::{
    EventBody, EventUpload, LedgerEvent, Payment, PaymentMethod, SaleLine, SaleRecord,
};
use aisle_protocol::{Currency, EventId, Gtin, Hlc, Money, SaleId, UtcMillis};
use anyhow::Result;
use serde_json::{Value, json};

const SYNC: Duration = Duration::from_secs(30);

/// Runs one scenario on both hub databases.
macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() -> Result<()> {
                super::$name(Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() -> Result<()> {
                super::$name(Backend::Postgres).await
            }
        }
    };
}

/// Sale ids the hub holds for the store, failing if any appears twice.
async fn hub_sale_ids(vs: &VirtualStore) -> Result<BTreeSet<String>> {
    let sales = vs.hq.sales(&vs.store).await?;
    let mut ids = BTreeSet::new();
    for s in &sales {
        let id = s["sale_id"].as_str().unwrap().to_string();
        assert!(ids.insert(id.clone()), "sale {id} appears twice at the hub");
    }
    Ok(ids)
}

async fn stock(vs: &VirtualStore, g: &str) -> Result<i64> {
    let body = vs
        .hq
        .get(&format!("/v1/stores/{}/stock?gtin={g}", vs.store))
        .await?;
    Ok(body["on_hand"].as_i64().unwrap())
}

async fn seed_prices(vs: &VirtualStore, items: &[(&str, i64)]) -> Result<()> {
    vs.push_prices(items, None).await?;
    for (g, minor) in items {
        vs.agent.api().wait_price(g, *minor, SYNC).await?;
    }
    Ok(())
}

on_both_backends!(response_lost_after_commit);
async fn response_lost_after_commit(backend: Backend) -> Result<()> {
    let vs = VirtualStore::start(backend).await?;
    let (a, b) = (gtin(1), gtin(2));
    seed_prices(&vs, &[(&a, 350), (&b, 1280)]).await?;
    vs.agent.api().wait_drained(SYNC).await?;

    vs.proxy.link_down();
    let api = vs.agent.api();
    for i in 0..5 {
        let (status, body) = api.sell(&format!("lost-{i}"), &[(&a, 2), (&b, 1)]).await?;
        assert_eq!(status, 201, "{body}");
    }
    // The hub commits the upload, then the answer is lost on the way back.
    vs.proxy.lose_next_responses_to(b"POST /v1/sync/events", 2);
    vs.proxy.link_up();
    api.wait_drained(SYNC).await?;

    assert!(
        vs.proxy.responses_lost() >= 1,
        "the fault was never injected"
    );
    let ids = hub_sale_ids(&vs).await?;
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert_eq!(stock(&vs, &a).await?, -10, "stock counted once per sale");
    assert_eq!(stock(&vs, &b).await?, -5);
    vs.agent.verify_ledger()?;
    vs.finish().await
}

fn sale_event(seq: u64, sale: &str, g: &Gtin, qty: u32, unit: i64) -> LedgerEvent {
    let cny = Currency::parse("CNY").unwrap();
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&seq.to_be_bytes());
    id[8..].copy_from_slice(&rand::random::<[u8; 8]>());
    LedgerEvent {
        seq,
        id: EventId::from_bytes(id),
        hlc: Hlc {
            wall_ms: UtcMillis::now().0 as u64,
            counter: seq as u32,
        },
        at: UtcMillis::now(),
        body: EventBody::SaleCommitted(SaleRecord {
            sale_id: SaleId::parse(sale).unwrap(),
            lines: vec![SaleLine {
                gtin: *g,
                qty,
                unit_price: Money::new(unit, cny),
                price_version: 1,
                line_total: Money::new(unit * i64::from(qty), cny),
                weight_g: None,
                discount: None,
            }],
            total: Money::new(unit * i64::from(qty), cny),
            payment: Payment {
                method: PaymentMethod::Cash,
                reference: None,
                offline: false,
            },
        }),
    }
}

async fn upload(
    client: &reqwest::Client,
    hub: &str,
    credential: &str,
    batch: &EventUpload,
) -> Result<(u16, Value)> {
    let r = client
        .post(format!("{hub}/v1/sync/events"))
        .bearer_auth(credential)
        .header("x-aisle-protocol", "1")
        .json(batch)
        .send()
        .await?;
    Ok((r.status().as_u16(), r.json().await?))
}

on_both_backends!(same_batch_twice_at_once);
async fn same_batch_twice_at_once(backend: Backend) -> Result<()> {
    let vs = VirtualStore::start(backend).await?;
    // A second gateway of the same store, driven by hand, so its seqs are ours to choose.
    let credential = hub_cli(&vs.hub.db_url, &["gateway", "add", "--store", &vs.store])?;
    let g = Gtin::from_index(7)?;
    let batch = EventUpload {
        events: (1..=3)
            .map(|seq| sale_event(seq, &format!("twice-{seq}"), &g, seq as u32, 100))
            .collect(),
    };
    let client = reqwest::Client::new();
    let hub = vs.hub.url();
    let (first, second) = tokio::join!(
        upload(&client, &hub, &credential, &batch),
        upload(&client, &hub, &credential, &batch)
    );
    let (first, second) = (first?, second?);
    assert_eq!(first.0, 200, "{}", first.1);
    assert_eq!(second.0, 200, "{}", second.1);
    assert_eq!(first.1["acked_through"], 3);
    assert_eq!(second.1["acked_through"], 3);
    // And once more, later: still the same answer, nothing changes.
    let third = upload(&client, &hub, &credential, &batch).await?;
    assert_eq!((third.0, &third.1["acked_through"]), (200, &json!(3)));

    let ids = hub_sale_ids(&vs).await?;
    assert_eq!(ids.len(), 3);
    assert_eq!(
        stock(&vs, g.as_str()).await?,
        -6,
        "1 + 2 + 3 sold, counted once"
    );
    vs.finish().await
}

on_both_backends!(kill9_during_sales_load);
async fn kill9_during_sales_load(backend: Backend) -> Result<()> {
    let cycles: usize = std::env::var("AISLE_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let mut vs = VirtualStore::start(backend).await?;
    let items: Vec<String> = (10..14).map(gtin).collect();
    let priced: Vec<(&str, i64)> = items.iter().map(|g| (g.as_str(), 199)).collect();
    seed_prices(&vs, &priced).await?;

    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    for cycle in 0..cycles {
        // Half the cycles run with the WAN down, half with uploads in flight when the kill lands.
        if cycle % 2 == 0 {
            vs.proxy.link_down();
        } else {
            vs.proxy.link_up();
        }
        let api = vs.agent.api();
        let mut load = Vec::new();
        for worker in 0..4 {
            let (api, acked, items) = (api.clone(), acked.clone(), items.clone());
            load.push(tokio::spawn(async move {
                for n in 0.. {
                    let id = format!("c{cycle}-w{worker}-{n}");
                    let g = &items[n % items.len()];
                    match api.sell(&id, &[(g.as_str(), 1)]).await {
                        Ok((201 | 200, _)) => {
                            acked.lock().unwrap().insert(id);
                        }
                        Ok((status, body)) => panic!("sale {id} refused with {status}: {body}"),
                        Err(_) => break, // the agent is gone
                    }
                }
            }));
        }
        let pause = 150 + rand::random::<u64>() % 350;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        vs.agent.kill9();
        for l in load {
            l.await?;
        }
        vs.agent.verify_ledger()?;
        vs.agent.restart().await?;
    }
    vs.proxy.link_up();
    vs.agent.api().wait_drained(Duration::from_secs(60)).await?;

    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > cycles,
        "the load made too few sales to mean anything: {}",
        acked.len()
    );
    let at_hub = hub_sale_ids(&vs).await?;
    let lost: Vec<_> = acked.difference(&at_hub).collect();
    assert!(lost.is_empty(), "acknowledged sales lost: {lost:?}");
    // Sales in flight at a kill may or may not have committed, but whatever the hub holds is once
    // (checked by hub_sale_ids) and the stock matches the sales exactly.
    let sold: i64 = at_hub.len() as i64;
    let mut on_hand = 0;
    for g in &items {
        on_hand += stock(&vs, g).await?;
    }
    assert_eq!(on_hand, -sold);
    eprintln!(
        "kill -9 soak ({backend:?}): {cycles} kills, {} sales acknowledged, {} held by the hub, none lost, none twice",
        acked.len(),
        at_hub.len()
    );
    vs.finish().await
}

on_both_backends!(hub_restart_mid_sync);
async fn hub_restart_mid_sync(backend: Backend) -> Result<()> {
    let mut vs = VirtualStore::start(backend).await?;
    let g = gtin(20);
    seed_prices(&vs, &[(&g, 500)]).await?;
    vs.proxy.link_down();
    let total = 6000;
    let api = vs.agent.api();
    let mut workers = Vec::new();
    for w in 0..8 {
        let (api, g) = (api.clone(), g.clone());
        workers.push(tokio::spawn(async move {
            for n in (w..total).step_by(8) {
                let (status, body) = api.sell(&format!("r-{n}"), &[(&g, 1)]).await.unwrap();
                assert_eq!(status, 201, "{body}");
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    vs.proxy.link_up();
    // Kill the hub as soon as the first upload has landed, with most of the backlog still to go.
    wait_for("the first uploaded sale", SYNC, || async {
        let n = vs.hq.sales(&vs.store).await.ok()?.len();
        (n > 0).then_some(())
    })
    .await?;
    vs.hub.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    vs.restart_hub().await?;
    vs.agent.api().wait_drained(Duration::from_secs(60)).await?;

    let ids = hub_sale_ids(&vs).await?;
    assert_eq!(ids.len(), total);
    assert_eq!(stock(&vs, &g).await?, -(total as i64));
    vs.finish().await
}

on_both_backends!(outage_24h_compressed);
async fn outage_24h_compressed(backend: Backend) -> Result<()> {
    let mut vs = VirtualStore::start(backend).await?;
    let g = gtin(30);
    seed_prices(&vs, &[(&g, 1000)]).await?;
    // A price change that takes effect 12 hours from now, sent before the WAN goes down.
    let at = time::OffsetDateTime::now_utc() + time::Duration::hours(12);
    let at = at.format(&time::format_description::well_known::Rfc3339)?;
    let later = vs.push_prices(&[(&g, 1200)], Some(&at)).await?;
    wait_for(
        "the 12-hour price to be staged at the store",
        SYNC,
        || async {
            let p = vs
                .hq
                .get(&format!("/v1/price-batches/{later}"))
                .await
                .ok()?;
            (p["stores"][0]["staged"].as_u64() == Some(1)).then_some(())
        },
    )
    .await?;
    vs.agent.api().wait_drained(SYNC).await?;
    vs.proxy.link_down();

    // A day passes at the store in six steps: each restart moves the gateway's clock on.
    let mut expected = BTreeMap::new();
    for hour in [1i64, 6, 11, 13, 18, 24] {
        vs.agent.setup.clock_offset_ms = hour * 3_600_000;
        vs.agent.restart().await?;
        let unit = if hour < 12 { 1000 } else { 1200 };
        let api = vs.agent.api();
        api.wait_price(&g, unit, Duration::from_secs(10)).await?;
        let id = format!("day-{hour}");
        let (status, body) = api.sell(&id, &[(&g, 1)]).await?;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["total"]["minor"], unit, "hour {hour}: {body}");
        expected.insert(id, unit);
    }
    assert!(vs.agent.api().status().await?["outbox_depth"].as_u64() >= Some(6));

    vs.proxy.link_up();
    vs.agent.api().wait_drained(SYNC).await?;
    let sales = vs.hq.sales(&vs.store).await?;
    let got: BTreeMap<String, i64> = sales
        .iter()
        .map(|s| {
            (
                s["sale_id"].as_str().unwrap().to_string(),
                s["total"]["minor"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    let progress = vs.hq.get(&format!("/v1/price-batches/{later}")).await?;
    assert_eq!(progress["stores"][0]["active"], 1, "{progress}");
    vs.agent.verify_ledger()?;
    vs.finish().await
}

on_both_backends!(gateway_clock_six_hours_off);
async fn gateway_clock_six_hours_off(backend: Backend) -> Result<()> {
    let six_hours = 6 * 3_600_000;
    let vs = VirtualStore::start_with(backend, -six_hours).await?;
    let g = gtin(40);
    // Effective now on hub time: a gateway trusting its own clock would wait six hours.
    seed_prices(&vs, &[(&g, 880)]).await?;
    let api = vs.agent.api();
    let status = wait_for("the skew to be measured", SYNC, || async {
        let s = api.status().await.ok()?;
        (s["clock_skew_ms"].as_i64()? > six_hours - 60_000).then_some(s)
    })
    .await?;
    assert!(
        status["clock_skew_ms"].as_i64().unwrap() < six_hours + 60_000,
        "{status}"
    );
    assert_eq!(
        status["clock_alarm"], true,
        "a 6-hour skew must raise the alarm: {status}"
    );

    // A price due in 3 s of hub time activates in about 3 s, not 6 hours.
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(3);
    vs.push_prices(
        &[(&g, 990)],
        Some(&soon.format(&time::format_description::well_known::Rfc3339)?),
    )
    .await?;
    api.wait_price(&g, 990, Duration::from_secs(20)).await?;

    let (status_code, body) = api.sell("skewed-1", &[(&g, 1)]).await?;
    assert_eq!(status_code, 201, "{body}");
    api.wait_drained(SYNC).await?;
    let sales = vs.hq.sales(&vs.store).await?;
    let sold_at = sales[0]["sold_at"].as_str().unwrap();
    let sold_at =
        time::OffsetDateTime::parse(sold_at, &time::format_description::well_known::Rfc3339)?;
    let off = (time::OffsetDateTime::now_utc() - sold_at)
        .whole_seconds()
        .abs();
    assert!(off < 120, "sale stamped {off} s away from hub time");
    vs.finish().await
}

on_both_backends!(incompatible_protocol_refused);
async fn incompatible_protocol_refused(backend: Backend) -> Result<()> {
    let vs = VirtualStore::start(backend).await?;
    let credential = hub_cli(&vs.hub.db_url, &["gateway", "add", "--store", &vs.store])?;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/sync/changes?after=0", vs.hub.url());
    for version in [Some("99"), Some("0"), Some("one"), None] {
        let mut req = client.get(&url).bearer_auth(&credential);
        if let Some(v) = version {
            req = req.header("x-aisle-protocol", v);
        }
        let r = req.send().await?;
        assert_eq!(r.status().as_u16(), 426, "version {version:?}");
        let body: Value = r.json().await?;
        assert_eq!(body["error"], "incompatible_protocol", "{body}");
        assert!(
            body["message"].as_str().unwrap().contains('1'),
            "the message should say what the hub speaks: {body}"
        );
    }
    // The HQ API is not part of the sync protocol: no header needed there.
    let r = client
        .get(format!("{}/v1/stores/{}/sales", vs.hub.url(), vs.store))
        .bearer_auth(HQ_TOKEN)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    vs.finish().await
}

on_both_backends!(compaction_while_the_store_is_offline);
async fn compaction_while_the_store_is_offline(backend: Backend) -> Result<()> {
    let vs = VirtualStore::start(backend).await?;
    let (a, b) = (gtin(50), gtin(51));
    let first = vs.push_prices(&[(&a, 100), (&b, 200)], None).await?;
    let api = vs.agent.api();
    api.wait_price(&a, 100, SYNC).await?;
    api.wait_price(&b, 200, SYNC).await?;
    api.wait_drained(SYNC).await?;

    vs.proxy.link_down();
    vs.push_prices(&[(&a, 110)], None).await?;
    vs.push_prices(&[(&a, 120), (&b, 220)], None).await?;
    let out = vs.hub.cli(&["changes", "compact"])?;
    assert!(
        out.starts_with("removed 3 "),
        "a v1, a v2 and b v1 are superseded: {out}"
    );
    vs.proxy.link_up();

    // The store was behind the compaction; it still ends on the newest prices.
    api.wait_price(&a, 120, SYNC).await?;
    api.wait_price(&b, 220, SYNC).await?;
    api.wait_drained(SYNC).await?;
    let progress = vs.hq.get(&format!("/v1/price-batches/{first}")).await?;
    assert_eq!(progress["stores"][0]["staged"], 2, "{progress}");
    vs.agent.verify_ledger()?;
    vs.finish().await
}

on_both_backends!(hub_restored_from_an_older_backup);
async fn hub_restored_from_an_older_backup(backend: Backend) -> Result<()> {
    let mut vs = VirtualStore::start(backend).await?;
    let (a, b, c) = (gtin(60), gtin(61), gtin(62));
    let api = vs.agent.api();
    seed_prices(&vs, &[(&a, 100)]).await?;
    assert_eq!(api.sell("before-backup", &[(&a, 1)]).await?.0, 201);
    api.wait_drained(SYNC).await?;

    vs.hub.kill();
    vs.db.as_ref().unwrap().backup().await?;
    vs.restart_hub().await?;
    seed_prices(&vs, &[(&b, 200)]).await?;
    assert_eq!(api.sell("after-backup", &[(&b, 1)]).await?.0, 201);
    let before = api.wait_drained(SYNC).await?;

    // HQ loses its database and restores last night's backup: the store's changefeed cursor is
    // now beyond anything this hub issued, and the hub has lost the store's latest events.
    vs.hub.kill();
    vs.db.as_ref().unwrap().restore().await?;
    vs.restart_hub().await?;
    // The store starts its changefeed again from 0 (410) and re-sends what the hub lost (409).
    let expected = BTreeSet::from(["before-backup".to_string(), "after-backup".to_string()]);
    let after = wait_for("the store to follow the restored hub", SYNC, || async {
        let s = api.status().await.ok()?;
        let caught_up =
            s["cursor"].as_u64()? < before["cursor"].as_u64()? && s["outbox_depth"].as_u64()? == 0;
        (caught_up && hub_sale_ids(&vs).await.ok()? == expected).then_some(s)
    })
    .await?;
    assert!(
        after["acked_through"].as_u64() >= before["acked_through"].as_u64(),
        "{after}"
    );
    // And the changefeed flows again, including a new price for a product whose last price the
    // hub lost: its version must not repeat one the store already holds, or the store would
    // ignore it (highest version wins).
    vs.push_prices(&[(&c, 300), (&b, 250)], None).await?;
    api.wait_price(&c, 300, SYNC).await?;
    api.wait_price(&b, 250, SYNC).await?;
    vs.agent.verify_ledger()?;
    vs.finish().await
}
