//! The camera simulator against the real Mosquitto (a plain subscriber on a random topic prefix
//! watches what it publishes) and against a minimal HTTP endpoint, in-process and as the
//! `aisle-sim` binary. Every payload must be one the footfall parsers accept.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aisle_drivers::footfall::{
    CameraFormat, CameraId, Counts, DEFAULT_MAX_PAYLOAD, ReadingKind, XovisConfig, parse_payload,
};
use aisle_hil::camera_sim::{
    CameraProfile, CameraSim, Command, HikvisionMethod, SimConfig, Transport, Vendor,
};
use aisle_hil::mqtt::{Message, Subscriber, broker, clear_retained, random_prefix};
use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(15);

fn mqtt_camera(prefix: &str, vendor: Vendor, camera: &str, every_ms: u64) -> SimConfig {
    SimConfig {
        store: "S001".into(),
        profile: CameraProfile {
            people_per_minute: 0.0,
            dwell_ms: (600_000, 600_000),
            ..CameraProfile::new(vendor, camera)
        },
        transport: Transport::Mqtt {
            broker: broker(),
            topic_prefix: prefix.into(),
        },
        every: Duration::from_millis(every_ms),
    }
}

fn counts_in(format: CameraFormat, camera: &str, m: &Message) -> Counts {
    let rs = parse_payload(
        format,
        &CameraId::new(camera),
        &m.payload,
        DEFAULT_MAX_PAYLOAD,
    )
    .unwrap_or_else(|e| panic!("{}: {e}", m.text()));
    match rs[0].kind {
        ReadingKind::Cumulative { counts, .. }
        | ReadingKind::Delta { counts }
        | ReadingKind::Interval { counts, .. } => counts,
    }
}

const AXIS: CameraFormat = CameraFormat::AxisLiveSum {
    utc_offset_minutes: 0,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_camera_publishes_counts_and_obeys_commands() -> Result<()> {
    let prefix = random_prefix();
    let mut sub = Subscriber::start(&broker(), &format!("{prefix}/#"), true).await?;
    let config = mqtt_camera(&prefix, Vendor::Axis, "door-1", 100);
    let counts_topic = config.counts_topic().unwrap();
    let status_topic = config.status_topic().unwrap();
    let sim = CameraSim::start(config)?;

    let online = sub
        .next_where("online", WAIT, |m| m.topic == status_topic)
        .await?;
    assert_eq!(online.text(), "online");
    let first = sub
        .next_where("counts", WAIT, |m| m.topic == counts_topic)
        .await?;
    assert_eq!(counts_in(AXIS, "door-1", &first), Counts::new(0, 0));

    sim.walk(3).await?;
    sub.next_where("3 people in", WAIT, |m| {
        m.topic == counts_topic && counts_in(AXIS, "door-1", m) == Counts::new(3, 0)
    })
    .await?;
    let s = sim.wait_delivered(WAIT).await?;
    assert_eq!(s.people_in, 3);
    assert!(s.delivered >= 2, "{s:?}");

    // Silence drops the connection uncleanly: the broker publishes the last will.
    sim.command(Command::Silence(Duration::from_secs(1)))
        .await?;
    let will = sub
        .next_where("the last will", WAIT, |m| m.topic == status_topic)
        .await?;
    assert_eq!(will.text(), "offline");
    let back = sub
        .next_where("back online", WAIT, |m| m.topic == status_topic)
        .await?;
    assert_eq!(back.text(), "online");

    // A reboot: the running totals start from zero again.
    sim.command(Command::Reset).await?;
    sub.next_where("totals from zero", WAIT, |m| {
        m.topic == counts_topic && counts_in(AXIS, "door-1", m) == Counts::new(0, 0)
    })
    .await?;

    // A camera clock an hour behind stamps its messages an hour back.
    sim.command(Command::Skew(-3_600_000)).await?;
    let skewed = sub
        .next_where("a skewed message", WAIT, |m| {
            m.topic == counts_topic && {
                let r = parse_payload(
                    AXIS,
                    &CameraId::new("door-1"),
                    &m.payload,
                    DEFAULT_MAX_PAYLOAD,
                )
                .unwrap();
                aisle_hil::camera_sim::now_ms() - r[0].at.0 > 3_500_000
            }
        })
        .await?;
    assert_eq!(counts_in(AXIS, "door-1", &skewed), Counts::new(0, 0));

    let stats = sim.quit().await?;
    assert_eq!(stats.people_in, 3);
    let bye = sub
        .next_where("goodbye", WAIT, |m| m.topic == status_topic)
        .await?;
    assert_eq!(bye.text(), "offline");
    sub.stop().await;
    clear_retained(&broker(), &[status_topic]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dup_resends_the_last_message_byte_for_byte() -> Result<()> {
    let prefix = random_prefix();
    let mut sub = Subscriber::start(&broker(), &format!("{prefix}/#"), true).await?;
    // Xovis stamps milliseconds, so two ticks never look alike; one tick a minute.
    let config = mqtt_camera(&prefix, Vendor::Xovis, "xovis-1", 60_000);
    let counts_topic = config.counts_topic().unwrap();
    let status_topic = config.status_topic().unwrap();
    let sim = CameraSim::start(config)?;
    let format = CameraFormat::XovisLogics(XovisConfig::default());
    let first = sub
        .next_where("counts", WAIT, |m| m.topic == counts_topic)
        .await?;
    assert_eq!(counts_in(format, "xovis-1", &first), Counts::new(0, 0));
    sim.command(Command::Dup).await?;
    let again = sub
        .next_where("the duplicate", WAIT, |m| m.topic == counts_topic)
        .await?;
    assert_eq!(again.payload, first.payload);
    sim.quit().await?;
    sub.stop().await;
    clear_retained(&broker(), &[status_topic]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_simulator_looks_like_a_lost_camera() -> Result<()> {
    let prefix = random_prefix();
    let mut sub = Subscriber::start(&broker(), &format!("{prefix}/#"), true).await?;
    let config = mqtt_camera(&prefix, Vendor::Hikvision, "hik-1", 200);
    let counts_topic = config.counts_topic().unwrap();
    let status_topic = config.status_topic().unwrap();
    let sim = CameraSim::start(config)?;
    let m = sub
        .next_where("counts", WAIT, |m| m.topic == counts_topic)
        .await?;
    assert_eq!(
        counts_in(CameraFormat::HikvisionAlert, "hik-1", &m),
        Counts::new(0, 0)
    );
    drop(sim);
    let will = sub
        .next_where("the last will", WAIT, |m| {
            m.topic == status_topic && m.text() == "offline"
        })
        .await?;
    assert_eq!(will.text(), "offline");
    sub.stop().await;
    clear_retained(&broker(), &[status_topic]).await
}

/// What the fake agent saw: (path, content type, body).
type Seen = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// A minimal HTTP/1.1 endpoint: answers each request with the next status of `script` (then
/// 202), recording what it got.
async fn fake_agent(script: Vec<u16>) -> Result<(String, Seen)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let script = Arc::new(Mutex::new(script.into_iter()));
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let log = log.clone();
            let script = script.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if buf.len() < head_end + 4 + len {
                        continue;
                    }
                    let body = buf[head_end + 4..head_end + 4 + len].to_vec();
                    buf.drain(..head_end + 4 + len);
                    let path = head
                        .lines()
                        .next()
                        .unwrap_or("")
                        .split(' ')
                        .nth(1)
                        .unwrap_or("")
                        .to_string();
                    let ctype = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-type")
                                .then(|| v.trim().to_string())
                        })
                        .unwrap_or_default();
                    let status = script.lock().unwrap().next().unwrap_or(202);
                    log.lock().unwrap().push((path, ctype, body));
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
                    );
                    if sock.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((url, seen))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_push_posts_vendor_payloads_and_retries_interval_counts() -> Result<()> {
    // First push refused (400), the next two fail (503), then accepted.
    let (url, seen) = fake_agent(vec![400, 503, 503]).await?;
    let sim = CameraSim::start(SimConfig {
        store: "S001".into(),
        profile: CameraProfile {
            people_per_minute: 0.0,
            dwell_ms: (600_000, 600_000),
            hikvision_method: HikvisionMethod::TimeRange,
            ..CameraProfile::new(Vendor::Hikvision, "hik-door")
        },
        transport: Transport::Http {
            agent_url: url.clone(),
        },
        every: Duration::from_millis(100),
    })?;
    aisle_hil::harness::wait_for("the refusal", WAIT, || async {
        (sim.stats().refused == 1).then_some(())
    })
    .await?;
    sim.walk(4).await?;
    let stats = sim.wait_delivered(WAIT).await?;
    assert_eq!(stats.refused, 1, "{stats:?}");
    assert!(stats.failed >= 1, "{stats:?}");
    let stats = sim.quit().await?;
    let seen = seen.lock().unwrap().clone();
    let mut entered = 0;
    let mut intervals = std::collections::BTreeSet::new();
    for (i, (path, ctype, body)) in seen.iter().enumerate() {
        assert_eq!(path, "/v1/cameras/hik-door/counts");
        assert_eq!(ctype, "application/xml");
        let r = parse_payload(
            CameraFormat::HikvisionAlert,
            &CameraId::new("hik-door"),
            body,
            DEFAULT_MAX_PAYLOAD,
        )
        .unwrap();
        let ReadingKind::Interval { start, end, counts } = r[0].kind else {
            panic!("{:?}", r[0].kind)
        };
        // Retries re-send the same interval; count each interval once, as the agent does.
        if i > 0 && intervals.insert((start, end)) {
            entered += counts.entered;
        }
    }
    // The refused first push carried nobody (the walk came after it).
    assert_eq!(entered, stats.people_in, "{seen:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reads_commands_from_stdin() -> Result<()> {
    let prefix = random_prefix();
    let mut sub = Subscriber::start(&broker(), &format!("{prefix}/#"), true).await?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_aisle-sim"))
        .args([
            "camera",
            "--vendor",
            "axis",
            "--store",
            "S001",
            "--camera",
            "door-9",
            "--mqtt",
            &broker(),
            "--topic-prefix",
            &prefix,
            "--every-ms",
            "100",
            "--people-per-minute",
            "0",
            "--utc-offset-minutes",
            "-300",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().unwrap();
    let counts_topic = format!("{prefix}/S001/camera/door-9/counts");
    let status_topic = format!("{prefix}/S001/camera/door-9/status");
    let axis = CameraFormat::AxisLiveSum {
        utc_offset_minutes: -300,
    };
    sub.next_where("counts", WAIT, |m| m.topic == counts_topic)
        .await?;
    stdin.write_all(b"walk 2\nnonsense\n").await?;
    sub.next_where("2 people in", WAIT, |m| {
        m.topic == counts_topic && counts_in(axis, "door-9", m) == Counts::new(2, 0)
    })
    .await?;
    stdin.write_all(b"quit\n").await?;
    let status = tokio::time::timeout(WAIT, child.wait()).await??;
    assert!(status.success());
    sub.next_where("goodbye", WAIT, |m| {
        m.topic == status_topic && m.text() == "offline"
    })
    .await?;
    sub.stop().await;
    clear_retained(&broker(), &[status_topic]).await
}
