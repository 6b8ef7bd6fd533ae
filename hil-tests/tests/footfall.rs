//! Footfall end to end: simulated entrance cameras (MQTT through the real Mosquitto, and HTTP
//! push) -> the real `aisle-agent` -> the real `aisle-hub` -> HQ's footfall report and chart.
//!
//! Intervals are 15 minutes and close only after they end, so no scenario waits for the wall
//! clock to pass an interval. Two ways, both through configuration only:
//! * cameras whose clocks run 14 minutes behind: the agent believes camera clocks up to 15
//!   minutes back (a delayed delivery), so their counts land in intervals that already closed
//!   and go out at the next close (`close_every_ms`) as additional events;
//! * for what only the gateway's own clock decides (a camera going silent), the WAN is down and
//!   the agent runs on its own clock (`[clock] offset_ms`), first set just before an interval
//!   boundary, then moved forward by restarts. Each step is shorter than the silence timeout, so
//!   cameras that keep talking never look silent; one that went silent stays missing.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use aisle_hil::camera_sim::{
    CameraProfile, CameraSim, Command, HikvisionMethod, SimConfig, Transport, Vendor, now_ms,
};
use aisle_hil::footfall::{self, CameraEntry, FootfallSection, rfc3339};
use aisle_hil::harness::{Backend, VirtualStore, gtin, wait_for};
use aisle_hil::mqtt::{broker, clear_retained, random_prefix};
use anyhow::{Result, bail};
use serde_json::Value;

const INTERVAL_MS: i64 = 15 * 60_000;
const MAIN: &str = "Main entrance";
const SIDE: &str = "Side door";
const WAIT: Duration = Duration::from_secs(30);

fn bucket_of(t: i64) -> i64 {
    t.div_euclid(INTERVAL_MS) * INTERVAL_MS
}

/// A camera nobody walks past unless told (`walk`), a message every 200 ms.
fn camera(vendor: Vendor, id: &str, transport: Transport, skew_ms: i64) -> SimConfig {
    SimConfig {
        store: "S001".into(),
        profile: CameraProfile {
            people_per_minute: 0.0,
            // Nobody leaves while a scenario runs: visitors_out stays out of the picture.
            dwell_ms: (3_600_000, 3_600_000),
            clock_skew_ms: skew_ms,
            ..CameraProfile::new(vendor, id)
        },
        transport,
        every: Duration::from_millis(200),
    }
}

fn mqtt(prefix: &str) -> Transport {
    Transport::Mqtt {
        broker: broker(),
        topic_prefix: prefix.into(),
    }
}

/// Waits until every named camera has had a message taken by the agent (since it started).
async fn wait_heard(vs: &VirtualStore, ids: &[&str]) -> Result<Value> {
    let http = reqwest::Client::new();
    let url = vs.agent.url();
    wait_for(&format!("the agent to hear {ids:?}"), WAIT, || async {
        let v = footfall::cameras(&http, &url).await.ok()?;
        let all = ids.iter().all(|id| {
            v["cameras"].as_array().is_some_and(|cs| {
                cs.iter().any(|c| {
                    c["id"] == *id && c["online"] == true && c["accepted"].as_u64() >= Some(1)
                })
            })
        });
        all.then_some(v)
    })
    .await
}

async fn report(vs: &VirtualStore, from: i64, to: i64, interval: &str) -> Result<Value> {
    footfall::report(
        &reqwest::Client::new(),
        &vs.hub.url(),
        &vs.store,
        &rfc3339(from),
        &rfc3339(to),
        interval,
    )
    .await
}

fn status_topics(sims: &[&SimConfig]) -> Vec<String> {
    sims.iter().filter_map(|s| s.status_topic()).collect()
}

/// Visitors counted by Axis over MQTT and Hikvision pushing over HTTP reach HQ exactly once,
/// across a kill -9 of the agent mid-stream, a re-sent message on each path and a camera reboot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_reach_hq_exactly_once_across_a_kill_9() -> Result<()> {
    let prefix = random_prefix();
    let behind = -14 * 60_000;
    let axis = camera(Vendor::Axis, "door-axis", mqtt(&prefix), behind);
    let mut section = FootfallSection::for_sims(&[(&axis, MAIN)]);
    section
        .cameras
        .push(CameraEntry::new("door-hik", Vendor::Hikvision, MAIN));
    section.silence_timeout_ms = 5_000;
    section.close_after_ms = Some(5_000);
    section.close_every_ms = 250;
    let mut vs = VirtualStore::start_configured(Backend::Sqlite, 0, section.toml()).await?;
    let mut hik = camera(
        Vendor::Hikvision,
        "door-hik",
        Transport::Http {
            agent_url: vs.agent.url(),
        },
        behind,
    );
    hik.profile.hikvision_method = HikvisionMethod::TimeRange;
    let axis_sim = CameraSim::start(axis.clone())?;
    let hik_sim = CameraSim::start(hik.clone())?;
    // The first running total from a camera is only its baseline: nobody walks before it.
    wait_heard(&vs, &["door-axis", "door-hik"]).await?;

    axis_sim.walk(3).await?;
    hik_sim.walk(2).await?;
    axis_sim.wait_delivered(WAIT).await?;
    hik_sim.wait_delivered(WAIT).await?;

    // kill -9 while both cameras keep sending: MQTT messages wait at the broker for the agent's
    // session, failed pushes are retried by the camera.
    vs.agent.kill9();
    axis_sim.walk(4).await?;
    axis_sim.command(Command::Dup).await?;
    hik_sim.walk(1).await?;
    axis_sim.wait_delivered(WAIT).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    vs.agent.restart_same_port().await?;

    axis_sim.walk(2).await?;
    hik_sim.command(Command::Dup).await?;
    axis_sim.wait_delivered(WAIT).await?;
    hik_sim.wait_delivered(WAIT).await?;
    // A reboot restarts the camera's running total from zero.
    axis_sim.command(Command::Reset).await?;
    axis_sim.wait_messages(2, WAIT).await?;
    axis_sim.walk(1).await?;
    axis_sim.wait_delivered(WAIT).await?;

    let a = axis_sim.stats();
    let h = hik_sim.stats();
    let expected = (a.people_in - a.lost_in) + (h.people_in - h.lost_in);
    assert_eq!(expected, 3 + 4 + 2 + 1 + 2 + 1, "{a:?} {h:?}");

    // Every camera time lies within the last 20 minutes.
    let from = bucket_of(now_ms() - 3_600_000);
    let to = bucket_of(now_ms()) + 2 * INTERVAL_MS;
    let seen = wait_for(
        "HQ's footfall report to show every visitor",
        Duration::from_secs(200),
        || async {
            let r = report(&vs, from, to, "1h").await.ok()?;
            (r["totals"]["visitors_in"].as_u64()? >= expected).then_some(r)
        },
    )
    .await?;
    assert_eq!(seen["totals"]["visitors_in"], expected, "{seen}");
    assert_eq!(footfall::visitors_in(&seen), expected, "{seen}");
    // A few more closes and uploads later: still exactly once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    vs.agent.api().wait_drained(WAIT).await?;
    let again = report(&vs, from, to, "15m").await?;
    assert_eq!(again["totals"]["visitors_in"], expected, "{again}");

    axis_sim.quit().await?;
    hik_sim.quit().await?;
    vs.agent.kill9();
    vs.agent.verify_ledger()?;
    clear_retained(&broker(), &status_topics(&[&axis])).await?;
    vs.finish().await
}

/// Moves the agent's clock forward by restarting it with a larger `[clock] offset_ms` (the WAN
/// is down, so nothing corrects it), `step_ms` at a time, and the cameras' clocks with it. Each
/// step is shorter than the silence timeout, and before the next one every camera has been heard
/// and that is in the ledger (what an agent has not committed, a kill -9 forgets): `witness`
/// pushes over HTTP and is answered only after the commit that includes its message, and every
/// message taken before it.
async fn move_clock(
    vs: &mut VirtualStore,
    sims: &[&CameraSim],
    witness: &CameraSim,
    ids: &[&str],
    to_agent_time: i64,
    step_ms: i64,
) -> Result<()> {
    loop {
        let agent_now = now_ms() + vs.agent.setup.clock_offset_ms;
        if agent_now >= to_agent_time {
            return Ok(());
        }
        let step = step_ms.min(to_agent_time - agent_now + 1_000);
        vs.agent.kill9();
        vs.agent.setup.clock_offset_ms += step;
        for s in sims {
            s.command(Command::Skew(vs.agent.setup.clock_offset_ms))
                .await?;
        }
        vs.agent.restart_same_port().await?;
        wait_heard(vs, ids).await?;
        witness.wait_messages(2, WAIT).await?;
    }
}

fn bucket_at(report: &Value, start: i64) -> Value {
    report["buckets"]
        .as_array()
        .and_then(|b| b.iter().find(|x| x["start"] == rfc3339(start)))
        .cloned()
        .unwrap_or_else(|| panic!("no bucket at {} in {report}", rfc3339(start)))
}

/// A camera that goes silent shows as missing data at HQ, not as zero visitors; an interval in
/// which every camera reported nobody is zero, not missing. Transactions and conversion at HQ
/// match the sales made; the chart is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_is_missing_data_and_conversion_matches_sales() -> Result<()> {
    let prefix = random_prefix();
    let axis = camera(Vendor::Axis, "door-axis", mqtt(&prefix), 0);
    let xovis = camera(Vendor::Xovis, "side-xovis", mqtt(&prefix), 0);
    let mut section = FootfallSection::for_sims(&[(&axis, MAIN), (&xovis, SIDE)]);
    section
        .cameras
        .push(CameraEntry::new("door-hik", Vendor::Hikvision, MAIN));
    // Clock steps of 4.5 minutes stay under the 5-minute silence timeout.
    let silence_timeout = 300_000;
    let step = 270_000;
    section.silence_timeout_ms = silence_timeout as u64;
    section.close_after_ms = Some(silence_timeout as u64);
    section.close_every_ms = 250;
    let mut vs = VirtualStore::start_configured(Backend::Postgres, 0, section.toml()).await?;
    let (g1, g2) = (gtin(1), gtin(2));
    let prices = [(g1.as_str(), 1280), (g2.as_str(), 350)];
    vs.push_prices(&prices, None).await?;
    for (g, p) in &prices {
        vs.agent.api().wait_price(g, *p, WAIT).await?;
    }

    // The WAN goes down and the agent restarts on its own clock, set 8 s before an interval
    // boundary `b1`: the interval [b1, b1 + 15 min) is the one under test.
    vs.proxy.link_down();
    let lead = 8_000;
    let t = now_ms() + 2_000;
    let b1 = bucket_of(t + lead) + INTERVAL_MS;
    let b2 = b1 + INTERVAL_MS;
    let b3 = b2 + INTERVAL_MS;
    vs.agent.kill9();
    vs.agent.setup.clock_offset_ms = b1 - lead - t;
    vs.agent.restart_same_port().await?;
    let offset = vs.agent.setup.clock_offset_ms;

    let axis = camera(Vendor::Axis, "door-axis", mqtt(&prefix), offset);
    let xovis = camera(Vendor::Xovis, "side-xovis", mqtt(&prefix), offset);
    let hik = camera(
        Vendor::Hikvision,
        "door-hik",
        Transport::Http {
            agent_url: vs.agent.url(),
        },
        offset,
    );
    let axis_sim = CameraSim::start(axis.clone())?;
    let xovis_sim = CameraSim::start(xovis.clone())?;
    let hik_sim = CameraSim::start(hik.clone())?;
    let ids = ["door-axis", "side-xovis", "door-hik"];
    wait_heard(&vs, &ids).await?;
    wait_for(
        "the agent's clock to pass b1 (by 3 s: Axis stamps whole seconds)",
        Duration::from_secs(60),
        || async { (now_ms() + vs.agent.setup.clock_offset_ms > b1 + 3_000).then_some(()) },
    )
    .await?;

    // In [b1, b2): 10 visitors and 4 sales; the side door's camera goes silent for a while.
    axis_sim.walk(5).await?;
    xovis_sim.walk(3).await?;
    hik_sim.walk(2).await?;
    for s in [&axis_sim, &xovis_sim, &hik_sim] {
        s.wait_delivered(WAIT).await?;
    }
    let api = vs.agent.api();
    for i in 0..4 {
        let (status, body) = api
            .sell(&format!("ff-sale-{i}"), &[(gtin(1 + i % 2).as_str(), 1)])
            .await?;
        if status != 201 {
            bail!("sale refused ({status}): {body}");
        }
    }
    xovis_sim
        .command(Command::Silence(Duration::from_secs(3)))
        .await?;
    let http = reqwest::Client::new();
    let url = vs.agent.url();
    wait_for("the side camera to be offline", WAIT, || async {
        let v = footfall::cameras(&http, &url).await.ok()?;
        let off = v["cameras"]
            .as_array()?
            .iter()
            .any(|c| c["id"] == "side-xovis" && c["online"] == false);
        off.then_some(())
    })
    .await?;
    wait_heard(&vs, &ids).await?;
    hik_sim.wait_messages(2, WAIT).await?;
    let agent_now = now_ms() + vs.agent.setup.clock_offset_ms;
    assert!(
        agent_now < b2 - 60_000,
        "the scenario must stay inside [b1, b2)"
    );

    // Forward until [b2, b3) has closed too: its end plus the close delay.
    move_clock(
        &mut vs,
        &[&axis_sim, &xovis_sim, &hik_sim],
        &hik_sim,
        &ids,
        b3 + silence_timeout + 2_000,
        step,
    )
    .await?;

    // The WAN returns: everything closed goes up.
    vs.proxy.link_up();
    let from = b1 - INTERVAL_MS;
    let to = b3;
    let r = wait_for(
        "HQ to hold both intervals and the sales",
        Duration::from_secs(60),
        || async {
            let r = report(&vs, from, to, "15m").await.ok()?;
            let k = bucket_at(&r, b1);
            let k1 = bucket_at(&r, b2);
            let reported = |b: &Value| {
                b["missing_data"] == false
                    || b["cameras_missing"]
                        .as_array()
                        .is_some_and(|m| !m.is_empty())
            };
            (reported(&k) && reported(&k1) && k["transactions"] == 4).then_some(r)
        },
    )
    .await?;
    let k = bucket_at(&r, b1);
    assert_eq!(k["visitors_in"], 10, "{k}");
    assert_eq!(k["missing_data"], true, "{k}");
    assert_eq!(
        k["cameras_missing"],
        serde_json::json!(["side-xovis"]),
        "{k}"
    );
    assert_eq!(k["transactions"], 4, "{k}");
    assert_eq!(k["conversion"].as_f64(), Some(0.4), "{k}");
    let k1 = bucket_at(&r, b2);
    assert_eq!(k1["visitors_in"], 0, "{k1}");
    assert_eq!(k1["missing_data"], false, "{k1}");
    assert_eq!(k1["cameras_missing"], serde_json::json!([]), "{k1}");
    assert_eq!(k1["transactions"], 0, "{k1}");
    assert_eq!(k1["conversion"], Value::Null, "{k1}");

    // Hourly and daily buckets sum the same.
    let hourly = report(&vs, from, to, "1h").await?;
    assert_eq!(footfall::visitors_in(&hourly), 10, "{hourly}");
    assert_eq!(footfall::transactions(&hourly), 4, "{hourly}");
    let sales = vs.hq.sales(&vs.store).await?;
    assert_eq!(sales.len(), 4);

    // The chart a person looks at.
    let svg = reqwest::Client::new()
        .get(format!(
            "{}/v1/stores/{}/footfall.svg?from={}&to={}",
            vs.hub.url(),
            vs.store,
            footfall::query_value(&rfc3339(from)),
            footfall::query_value(&rfc3339(to))
        ))
        .bearer_auth(aisle_hil::harness::HQ_TOKEN)
        .send()
        .await?;
    assert_eq!(svg.status(), 200);
    assert!(
        svg.headers()["content-type"]
            .to_str()?
            .starts_with("image/svg+xml")
    );
    let body = svg.text().await?;
    assert!(body.contains("<svg"), "{body}");
    assert!(body.contains("Harbour Road"), "the chart names the store");

    for s in [axis_sim, xovis_sim, hik_sim] {
        s.quit().await?;
    }
    vs.agent.kill9();
    vs.agent.verify_ledger()?;
    clear_retained(&broker(), &status_topics(&[&axis, &xovis])).await?;
    vs.finish().await
}
