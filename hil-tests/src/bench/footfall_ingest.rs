//! `footfall_ingest`: camera messages per second through Mosquitto into the agent's ledger,
//! beside the rate a plain MQTT subscriber reads the same messages from the same broker in the
//! same run. Target: at least half the plain subscriber's rate.
//!
//! The messages are real Axis `live-sum` payloads (running totals, up to two people more each
//! time, a second apart by the camera's clock) from `cameras` simulated cameras, each published
//! by its own MQTT client at QoS 1, interleaved. Both consumers hold a persistent session
//! (MQTT 5, the agent's Receive Maximum of `aisle_agent::footfall::RECEIVE_MAXIMUM` messages in
//! flight) and are measured the same way, on a backlog: the consumer is away, all messages are
//! published and acknowledged by the broker, then the consumer comes back (the agent as a
//! process started again) and drains it. "Handled" is: the plain subscriber received it
//! (acknowledging each as it arrives); the agent counted it in `aisle_footfall_readings_total`
//! or refused it, which it does after the ledger commit that includes it (and acknowledges only
//! then). `per_s` and `baseline_per_s` are the rates once messages flow, from the first message
//! handled to the last (start-up is not throughput); `*_per_s_from_start` count from the
//! (re)start, the agent's process start included.
//!
//! Measuring a backlog rather than a live stream keeps the publishers out of the figure: live,
//! one broker on this machine taking in and handing out every message is the bottleneck, and
//! any consumer keeping up with it looks the same. The run uses a Mosquitto of its own with
//! `max_queued_messages 0` (a stock Mosquitto queues at most 1000 messages per client and drops
//! the rest; a backlog is the point here), otherwise stock.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;

use super::{BenchResult, round};
use crate::camera_sim::{
    CameraModel, CameraProfile, Vendor, camera_topic, now_ms, split_host_port,
};
use crate::footfall::{
    CameraEntry, FootfallSection, agent_metrics, messages_handled, metric_sum, metric_with,
};
use crate::harness::{AgentProcess, AgentSetup, HubProcess, wait_for};
use crate::mqtt::{PrivateBroker, random_prefix};

const STORE: &str = "S001";
const TIMEOUT: Duration = Duration::from_secs(600);
/// How often the agent's `/metrics` is read while it drains.
const AGENT_POLL: Duration = Duration::from_millis(5);

/// The messages of one run: per camera a warm-up (the agent's first total from a camera is
/// only its baseline) and then the measured ones, interleaved across cameras.
struct Workload {
    cameras: Vec<String>,
    warmup: Vec<(usize, Vec<u8>)>,
    measured: Vec<(usize, Vec<u8>)>,
}

fn workload(cameras: usize, per_camera: usize) -> Result<Workload> {
    let ids: Vec<String> = (0..cameras).map(|c| format!("bench-cam-{c:02}")).collect();
    // A second apart by each camera's clock, ending about now.
    let start = now_ms() - (per_camera as i64 + 1) * 1_000;
    let mut per: Vec<Vec<Vec<u8>>> = Vec::new();
    for (c, id) in ids.iter().enumerate() {
        let mut model = CameraModel::new(CameraProfile {
            people_per_minute: 0.0,
            seed: c as u64 + 1,
            dwell_ms: (30_000, 300_000),
            ..CameraProfile::new(Vendor::Axis, id)
        })?;
        let mut msgs = Vec::with_capacity(per_camera + 1);
        for i in 0..=per_camera {
            let t = start + i as i64 * 1_000;
            if i > 0 {
                model.walk((i % 3) as u64, t);
            }
            model.advance(t);
            msgs.push(model.payload(t)?.bytes);
        }
        per.push(msgs);
    }
    let mut warmup = Vec::new();
    let mut measured = Vec::new();
    for i in 0..=per_camera {
        for (c, msgs) in per.iter_mut().enumerate() {
            let bytes = std::mem::take(&mut msgs[i]);
            if i == 0 {
                warmup.push((c, bytes));
            } else {
                measured.push((c, bytes));
            }
        }
    }
    Ok(Workload {
        cameras: ids,
        warmup,
        measured,
    })
}

/// One MQTT client per camera, publishing to its own counts topic; counts the broker's PUBACKs.
struct Publishers {
    clients: Vec<AsyncClient>,
    topics: Vec<String>,
    acked: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Publishers {
    async fn connect(broker: &str, prefix: &str, cameras: &[String]) -> Result<Publishers> {
        let (host, port) = split_host_port(broker)?;
        let acked = Arc::new(AtomicU64::new(0));
        let mut p = Publishers {
            clients: Vec::new(),
            topics: Vec::new(),
            acked: acked.clone(),
            tasks: Vec::new(),
        };
        for id in cameras {
            let mut o = MqttOptions::new(
                format!("bench-{id}-{:08x}", rand::random::<u32>()),
                host.clone(),
                port,
            );
            o.set_keep_alive(Duration::from_secs(30));
            let (client, mut eventloop) = AsyncClient::new(o, 1_000);
            let acked = acked.clone();
            p.tasks.push(tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }));
            p.clients.push(client);
            p.topics.push(camera_topic(prefix, STORE, id, "counts"));
        }
        Ok(p)
    }

    /// Publishes `msgs` and returns once the broker acknowledged every one.
    async fn publish_all(&self, msgs: &[(usize, Vec<u8>)]) -> Result<()> {
        let target = self.acked.load(Ordering::Relaxed) + msgs.len() as u64;
        for (camera, bytes) in msgs {
            self.clients[*camera]
                .publish(
                    self.topics[*camera].as_str(),
                    QoS::AtLeastOnce,
                    false,
                    bytes.clone(),
                )
                .await
                .context("publish")?;
        }
        let acked = &self.acked;
        wait_for("the broker to take every message", TIMEOUT, || async {
            (acked.load(Ordering::Relaxed) >= target).then_some(())
        })
        .await
    }

    async fn close(self) {
        for c in &self.clients {
            let _ = c.disconnect().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        for t in self.tasks {
            t.abort();
        }
    }
}

/// A plain MQTT 5 subscriber: a persistent session with the agent's Receive Maximum, QoS 1,
/// acknowledging each message as it arrives, counting them.
struct PlainSubscriber {
    client: rumqttc::v5::AsyncClient,
    received: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl PlainSubscriber {
    /// Connects as `id` (resuming its session if the broker holds one), subscribes to `filter`,
    /// and returns once the broker granted it; counting starts at once.
    async fn connect(broker: &str, id: &str, filter: &str) -> Result<PlainSubscriber> {
        use rumqttc::v5::mqttbytes::v5::Packet;
        use rumqttc::v5::{AsyncClient, Event, MqttOptions};
        let (host, port) = split_host_port(broker)?;
        let mut o = MqttOptions::new(id, host, port);
        o.set_keep_alive(Duration::from_secs(30))
            .set_clean_start(false)
            .set_session_expiry_interval(Some(3_600))
            .set_receive_maximum(Some(aisle_agent::footfall::RECEIVE_MAXIMUM));
        let (client, mut eventloop) =
            AsyncClient::new(o, usize::from(aisle_agent::footfall::RECEIVE_MAXIMUM) + 64);
        client
            .subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
            .await?;
        let received = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let count = received.clone();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(_))) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .context("no SUBACK for the plain subscriber")?
            .context("plain subscriber stopped")?;
        Ok(PlainSubscriber {
            client,
            received,
            task,
        })
    }

    /// Leaves cleanly; the broker keeps the session and queues for it.
    async fn leave(mut self) {
        let _ = self.client.disconnect().await;
        if tokio::time::timeout(Duration::from_secs(2), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// How a consumer drained a backlog, in seconds from when it was (re)started.
#[derive(Clone, Copy, Debug)]
struct Drain {
    /// When the first message was seen handled, and how many were by then.
    first_s: f64,
    first_count: u64,
    /// When the last one was.
    end_s: f64,
    n: u64,
}

impl Drain {
    /// Messages per second once messages flow: start-up (connecting, for the agent also the
    /// process start) excluded.
    fn per_s(&self) -> f64 {
        let span = (self.end_s - self.first_s).max(0.001);
        (self.n - self.first_count.min(self.n)) as f64 / span
    }

    /// Messages per second counted from the (re)start.
    fn per_s_from_start(&self) -> f64 {
        self.n as f64 / self.end_s.max(0.001)
    }
}

/// Polls `handled()` every `poll` until it reaches `n`, timing from `start`. (A poll of the
/// agent's `/metrics` costs the agent work, so it is polled less often than an atomic counter;
/// the coarser poll can only make the agent look slower.)
async fn drain<F, Fut>(start: Instant, n: u64, poll: Duration, mut handled: F) -> Result<Drain>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let mut first: Option<(f64, u64)> = None;
    loop {
        let h = handled().await;
        let at = start.elapsed().as_secs_f64();
        if h > 0 && first.is_none() {
            first = Some((at, h));
        }
        if h >= n {
            let (first_s, first_count) = first.unwrap_or((at, h));
            return Ok(Drain {
                first_s,
                first_count,
                end_s: at,
                n,
            });
        }
        if start.elapsed() > TIMEOUT {
            bail!("consumer stuck at {h} of {n}");
        }
        tokio::time::sleep(poll).await;
    }
}

/// The plain subscriber draining the backlog.
async fn baseline(broker: &str, w: &Workload) -> Result<Drain> {
    let prefix = random_prefix();
    let filter = format!("{prefix}/{STORE}/camera/+/counts");
    let id = format!("bench-plain-{:08x}", rand::random::<u32>());
    let pubs = Publishers::connect(broker, &prefix, &w.cameras).await?;
    // Subscribe (the session starts), take the warm-ups, go away.
    let sub = PlainSubscriber::connect(broker, &id, &filter).await?;
    pubs.publish_all(&w.warmup).await?;
    let warm = w.warmup.len() as u64;
    let received = sub.received.clone();
    wait_for("the warm-up at the subscriber", TIMEOUT, || async {
        (received.load(Ordering::Relaxed) >= warm).then_some(())
    })
    .await?;
    sub.leave().await;
    pubs.publish_all(&w.measured).await?;
    let n = w.measured.len() as u64;
    let start = Instant::now();
    let sub = PlainSubscriber::connect(broker, &id, &filter).await?;
    let received = sub.received.clone();
    let drained = drain(start, n, Duration::from_millis(1), || {
        let r = received.clone();
        async move { r.load(Ordering::Relaxed) }
    })
    .await;
    sub.leave().await;
    pubs.close().await;
    drained
}

/// What the agent run measured.
struct AgentRun {
    drain: Drain,
    metrics: String,
    verified: bool,
}

/// The agent, as a process with a hub, draining the backlog into its ledger.
async fn through_agent(broker: &str, w: &Workload) -> Result<AgentRun> {
    let dir = tempfile::tempdir()?;
    let db = format!("sqlite://{}", dir.path().join("hub.db").display());
    let hub = HubProcess::start(&db, dir.path()).await?;
    hub.cli(&["store", "add", STORE, "--name", "Bench"])?;
    let credential = hub.cli(&["gateway", "add", "--store", STORE])?;
    let prefix = random_prefix();
    let mut section = FootfallSection::new(Some(broker), &prefix);
    // The bench cameras send far faster than a door does; nothing may be refused as a flood.
    section.max_messages_per_minute = 1_000_000_000;
    section.cameras = w
        .cameras
        .iter()
        .enumerate()
        .map(|(i, id)| CameraEntry {
            utc_offset_minutes: Some(0),
            ..CameraEntry::new(id, Vendor::Axis, &format!("Entrance {}", i % 4 + 1))
        })
        .collect();
    let mut agent = AgentProcess::start(AgentSetup {
        store: STORE.into(),
        hub_url: hub.url(),
        credential,
        data_dir: dir.path().join("gateway"),
        clock_offset_ms: 0,
        extra_config: section.toml(),
    })
    .await?;
    let http = reqwest::Client::new();
    let pubs = Publishers::connect(broker, &prefix, &w.cameras).await?;

    // Warm up until every camera has been taken (its first total is the baseline) and is in
    // the ledger: the agent may still be subscribing, so repeat the warm-ups (a repeat is a
    // duplicate), then wait until the count stands still.
    let warm = w.warmup.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        pubs.publish_all(&w.warmup).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if messages_handled(&http, &agent.url()).await.unwrap_or(0) >= warm {
            break;
        }
        if Instant::now() > deadline {
            bail!("the agent took no warm-up message in 60 s (agent log in its data dir)");
        }
    }
    let mut before = messages_handled(&http, &agent.url()).await?;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = messages_handled(&http, &agent.url()).await?;
        if now == before {
            break;
        }
        before = now;
    }

    // The agent goes away (kill -9; its session stays at the broker), the backlog builds up,
    // the agent comes back.
    agent.kill9();
    pubs.publish_all(&w.measured).await?;
    let n = w.measured.len() as u64;
    let start = Instant::now();
    agent.restart_same_port().await?;
    let url = agent.url();
    let drained = drain(start, n, AGENT_POLL, || {
        let (http, url) = (http.clone(), url.clone());
        async move { messages_handled(&http, &url).await.unwrap_or(0) }
    })
    .await;
    pubs.close().await;
    let drained = drained?;
    let metrics = agent_metrics(&http, &url).await?;
    agent.kill9();
    let verified = agent.verify_ledger().is_ok();
    drop(hub);
    Ok(AgentRun {
        drain: drained,
        metrics,
        verified,
    })
}

pub async fn run(cameras: usize, per_camera: usize) -> Result<BenchResult> {
    let Some(broker) = PrivateBroker::start().await? else {
        bail!(
            "footfall_ingest runs its own Mosquitto and needs the `mosquitto` binary \
             (scripts/bench installs it)"
        );
    };
    let w = workload(cameras, per_camera)?;
    let n = w.measured.len() as u64;
    eprintln!(
        "[footfall_ingest] plain subscriber: a backlog of {n} messages from {cameras} cameras"
    );
    let base = baseline(&broker.addr, &w).await?;
    eprintln!(
        "[footfall_ingest] plain subscriber: {:.3} s; now the agent",
        base.end_s
    );
    let agent = through_agent(&broker.addr, &w).await?;
    let a = agent.drain;
    eprintln!("[footfall_ingest] agent: {:.3} s", a.end_s);
    let per_s = a.per_s();
    let baseline_per_s = base.per_s();
    let ratio = per_s / baseline_per_s;
    let m = &agent.metrics;
    let outcome = |o: &str| metric_with(m, "aisle_footfall_readings_total", "outcome", o) as u64;
    let refused = metric_sum(m, "aisle_footfall_refused_total") as u64;

    let mut r = BenchResult::default();
    r.figure("messages", n);
    r.figure("cameras", cameras as u64);
    r.figure("per_s", round(per_s, 1));
    r.figure("baseline_per_s", round(baseline_per_s, 1));
    r.figure("ratio", round(ratio, 2));
    r.figure("per_s_from_start", round(a.per_s_from_start(), 1));
    r.figure(
        "baseline_per_s_from_start",
        round(base.per_s_from_start(), 1),
    );
    r.figure("agent_s", round(a.end_s, 3));
    r.figure("agent_first_s", round(a.first_s, 3));
    r.figure("baseline_s", round(base.end_s, 3));
    r.figure("baseline_first_s", round(base.first_s, 3));
    r.figure("outcome_counted", outcome("counted"));
    r.figure("outcome_baseline", outcome("baseline"));
    r.figure("outcome_duplicate", outcome("duplicate"));
    r.figure("outcome_stale", outcome("stale"));
    r.figure("refused", refused);
    r.figure(
        "intervals",
        metric_sum(m, "aisle_footfall_intervals_total") as u64,
    );
    r.figure("ledger_verified", agent.verified);
    r.row(
        "plain MQTT 5 subscriber (QoS 1, the agent's Receive Maximum)",
        format!(
            "{baseline_per_s:.0} msg/s (backlog of {n}: first after {:.3} s, last after {:.3} s)",
            base.first_s, base.end_s
        ),
        "baseline".into(),
        None,
    );
    r.row(
        &format!("{cameras} Axis cameras -> Mosquitto -> agent ledger"),
        format!(
            "{per_s:.0} msg/s (backlog of {n}: first after {:.3} s, last after {:.3} s from the \
             process start, {:.0} msg/s counting the start; {refused} refused; ledger verify {})",
            a.first_s,
            a.end_s,
            a.per_s_from_start(),
            if agent.verified { "ok" } else { "FAILED" }
        ),
        format!("ratio {ratio:.2} (target >= 0.5)"),
        Some(ratio >= 0.5 && refused == 0 && agent.verified),
    );
    Ok(r)
}
