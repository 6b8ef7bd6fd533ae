//! `esl_store_relabel`: a store with N bound shelf labels (30,000 by default) gets a price batch
//! changing every price. Timed: from handing the batch to the agent's ledger (what the
//! changefeed downloader does with a page) until every label's new content was handed to the
//! access point — the planner has nothing left unsent and the simulated access point (real
//! `aisle_hil::esl_sim` behind a pty, radio unlimited) has queued one frame per label.
//!
//! Setup, not timed: the ledger is seeded with the old prices, the bindings and each label's
//! confirmed content (its name layer as the agent's own `NameRenderer` draws it, and the old
//! price), as a store that has run for a while holds them; the tags sleep (a one-hour check-in)
//! so the access point only queues. Baseline, same run: the same batch staged into a second
//! agent's ledger with no labels (the cost the labels add is the difference).
//!
//! Also reported: the simulated end-to-end time at 5 kB/s radio, computed from the bytes on the
//! air (each frame to a tag and the tag's acknowledgement, as encoded on the radio), not run in
//! real time: at that rate the radio, not the gateway, is the bottleneck.
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aisle_agent::clock::SystemClock;
use aisle_agent::config::AgentConfig;
use aisle_agent::ledger::{BindLabel, LabelShown, LabelUpdate, Ledger};
use aisle_agent::{Agent, AgentHandle};
use aisle_drivers::esl::{LabelFont, NameRenderer, NameText};
use aisle_protocol::esl::{
    Ack, ContentHash, DynamicFields, Header, LabelId, LayerHash, Outcome, Panel, Seq, StatusFlags,
    TagReport, TagStatus, content_hash, encode_frame_vec, price_change_wire_len,
};
use aisle_protocol::sync::PriceChange;
use aisle_protocol::{BatchId, Currency, Gtin, Money, UtcMillis};
use anyhow::{Context, Result, anyhow, bail};

use super::{BenchResult, round};
use crate::esl_sim::{EslSim, EslSimConfig};

const TARGET_S: f64 = 3.0;
const RADIO_BYTES_PER_S: f64 = 5_000.0;
const FIRST: LabelId = LabelId(0x00E5_0001);
const PANEL: Panel = Panel::Bw290;
/// Tags that may wake (and be brought up to date) while the bench sets up; the frames they
/// cost are in the reported frame count.
const WOKEN_ALLOWANCE: usize = 50;

fn gtin(i: usize) -> Result<Gtin> {
    Ok(Gtin::from_index(
        4_006_381_000_000 + u64::try_from(i).unwrap_or(0),
    )?)
}

fn name(i: usize) -> String {
    format!("Oolong tea 500ml no. {i}")
}

fn prices(n: usize, version: u64, minor: impl Fn(usize) -> i64) -> Result<Vec<PriceChange>> {
    let cny = Currency::parse("CNY")?;
    let batch_id = BatchId::parse(&format!("relabel-{version}"))?;
    (0..n)
        .map(|i| {
            Ok(PriceChange {
                gtin: gtin(i)?,
                version,
                price: Money::new(minor(i), cny),
                name: name(i),
                effective_at: UtcMillis::now(),
                batch_id: batch_id.clone(),
            })
        })
        .collect()
}

fn agent_config(dir: &Path, access_point: Option<&str>) -> Result<AgentConfig> {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let labels = match access_point {
        Some(path) => format!(
            "[labels]\naccess_point = \"{path}\"\npanel = \"bw290\"\nqueue = 65536\n\
             not_updated_after_ms = 3600000\n"
        ),
        None => String::new(),
    };
    let toml = format!(
        "store = \"S001\"\nhub_url = \"http://127.0.0.1:{closed}\"\n\
         credential = \"gw-S001-1a2b3c4d.{}\"\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n{labels}",
        "ab".repeat(32),
        dir.join("data").display()
    );
    let file = dir.join("agent.toml");
    std::fs::write(&file, toml)?;
    Ok(AgentConfig::load(&file)?)
}

/// Seeds a ledger as a running store holds it: old prices, bindings, confirmed content.
async fn seed(data: &Path, n: usize) -> Result<()> {
    let ledger = Ledger::open(data, Arc::new(SystemClock)).await?;
    ledger.stage_prices(prices(n, 1, |_| 1_990)?).await?;
    let rows = (0..n)
        .map(|i| {
            Ok((
                i + 2,
                BindLabel {
                    label: LabelId(FIRST.0 + u32::try_from(i)?),
                    gtin: gtin(i)?,
                    shelf: format!("A{}-{:03}", i / 1000, i % 1000),
                    panel: PANEL,
                    by: Some("bench".into()),
                },
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    ledger
        .bind_labels(rows)
        .await
        .map_err(|e| anyhow!("binding: {e:?}"))?;
    let renderer = NameRenderer::new(LabelFont::embedded().map_err(|e| anyhow!("font: {e}"))?);
    let cny = Currency::parse("CNY")?;
    let batch_id = BatchId::parse("relabel-1")?;
    let mut updates = Vec::with_capacity(n);
    for i in 0..n {
        let name = name(i);
        let layer = renderer
            .render_layer(
                PANEL,
                &NameText {
                    name: &name,
                    brand: None,
                    details: None,
                    badge: None,
                },
            )
            .map_err(|e| anyhow!("rendering: {e}"))?
            .hash;
        let price = Money::new(1_990, cny);
        let fields = DynamicFields::from_money(price).map_err(|e| anyhow!("{e}"))?;
        let content: ContentHash =
            content_hash(Some(layer), Some(&fields)).ok_or_else(|| anyhow!("content hash"))?;
        updates.push(LabelUpdate::Confirmed {
            label: LabelId(FIRST.0 + u32::try_from(i)?),
            gtin: gtin(i)?,
            version: 1,
            batch_id: batch_id.clone(),
            shown: LabelShown {
                price,
                name,
                panel: PANEL,
                layer,
                fields,
                content,
            },
        });
    }
    for chunk in updates.chunks(5_000) {
        ledger.commit_label_updates(chunk.to_vec()).await?;
    }
    ledger.close().await;
    Ok(())
}

/// Waits until the planner has handed everything over and the access point queued `n` frames.
async fn handed_over(agent: &AgentHandle, sim: &EslSim, n: u64, since: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let s = agent.labels().stats();
        let queued = sim.stats().queued.saturating_sub(since);
        if s.pending + s.confirmed >= n && s.unsent == 0 && queued >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "not handed over after 300 s: pending {} unsent {} queued at the access point {queued}",
                s.pending,
                s.unsent
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub async fn run(labels: usize) -> Result<BenchResult> {
    let n = labels;
    let dir = tempfile::tempdir()?;
    // Baseline: the same batch into a ledger without labels.
    let base_dir = dir.path().join("baseline");
    std::fs::create_dir_all(&base_dir)?;
    let baseline = Agent::start(agent_config(&base_dir, None)?, Arc::new(SystemClock)).await?;
    baseline
        .ledger()
        .stage_prices(prices(n, 1, |_| 1_990)?)
        .await?;
    let batch = prices(n, 2, |i| 1_790 + (i % 7) as i64)?;
    let t = Instant::now();
    let out = baseline.ledger().stage_prices(batch.clone()).await?;
    let baseline_s = t.elapsed().as_secs_f64();
    if out.activated != n {
        bail!("baseline: {} of {n} prices activated", out.activated);
    }
    drop(baseline);

    // The store with labels.
    // The simulated tags start blank (they do not hold the seeded content), and a tag that
    // checks in blank gets its whole layer again; with a ten-day check-in next to none wakes
    // during the run (each wakes first at a random point of its interval).
    let sim = EslSim::start(EslSimConfig {
        checkin: Duration::from_secs(864_000),
        radio_bytes_per_s: 0,
        expire_after: Duration::from_secs(864_000),
        queue_limit: n + 1_024,
        heartbeat: None,
        ..EslSimConfig::new(FIRST, n)
    })?;
    let store_dir = dir.path().join("store");
    std::fs::create_dir_all(&store_dir)?;
    let config = agent_config(&store_dir, Some(sim.path()))?;
    let seed_start = Instant::now();
    seed(&store_dir.join("data"), n).await.context("seeding")?;
    let seed_s = seed_start.elapsed().as_secs_f64();
    let agent = Agent::start(config, Arc::new(SystemClock)).await?;
    // The planner has loaded every label and has nothing to send (all confirmed).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = agent.labels().stats();
        if s.labels as usize == n && s.confirmed as usize + WOKEN_ALLOWANCE >= n && s.unsent == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the planner did not settle: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let frames_before = agent.labels().stats().frames;
    let queued_before = sim.stats().queued;

    let t = Instant::now();
    let out = agent.ledger().stage_prices(batch).await?;
    let staged_s = t.elapsed().as_secs_f64();
    handed_over(&agent, &sim, n as u64, queued_before).await?;
    let total_s = t.elapsed().as_secs_f64();
    if out.activated != n {
        bail!("{} of {n} prices activated", out.activated);
    }
    let frames = agent.labels().stats().frames - frames_before;

    // Air time at 5 kB/s: every frame to a tag, and the tag's acknowledgement with its status.
    let fields = DynamicFields::from_money(Money::new(1_790, Currency::parse("CNY")?))
        .map_err(|e| anyhow!("{e}"))?;
    let down = price_change_wire_len(&fields).map_err(|e| anyhow!("{e:?}"))?;
    let ack = TagReport::Ack(Ack {
        seq: Seq(1),
        outcome: Outcome::Accepted,
        status: TagStatus {
            panel: PANEL,
            // A real answer names what the tag holds (fixed-size hashes: any value, same size).
            layer: Some(LayerHash([0; 8])),
            content: Some(ContentHash([0; 8])),
            displayed: true,
            battery_mv: 2_900,
            temperature_c: 21,
            rssi_dbm: -60,
            flags: StatusFlags(0),
        },
    });
    let up = encode_frame_vec(Header::new(FIRST, Seq(1)), &ack)
        .map_err(|e| anyhow!("{e:?}"))?
        .len();
    let air_bytes = (frames as f64) * down as f64 + (n as f64) * up as f64;
    let air_s = air_bytes / RADIO_BYTES_PER_S;
    drop(agent);
    drop(sim);

    let mut r = BenchResult::default();
    r.figure("labels", n);
    r.figure("handed_to_access_point_s", round(total_s, 3));
    r.figure("ledger_stage_with_labels_s", round(staged_s, 3));
    r.figure(
        "baseline_ledger_stage_without_labels_s",
        round(baseline_s, 3),
    );
    r.figure("frames", frames);
    r.figure("seed_s", round(seed_s, 2));
    r.figure("radio_frame_bytes", down);
    r.figure("radio_ack_bytes", up);
    r.figure("simulated_end_to_end_at_5kBps_s", round(air_s, 1));
    r.row(
        &format!("{n} labels: batch at the agent → every frame with the access point"),
        format!("{} s ({frames} frames)", round(total_s, 3)),
        format!(
            "same batch into a ledger without labels {} s; target < {TARGET_S} s",
            round(baseline_s, 3)
        ),
        Some(total_s < TARGET_S),
    );
    r.row(
        "simulated end to end at 5 kB/s radio",
        format!("{} s", round(air_s, 1)),
        format!("{down} B per frame down, {up} B acknowledgement up (computed, not run)"),
        None,
    );
    Ok(r)
}
