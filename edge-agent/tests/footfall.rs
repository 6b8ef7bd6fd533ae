//! Camera ingestion against the real Mosquitto at 127.0.0.1:1883: counts from MQTT and HTTP push
//! become 15-minute intervals in the ledger, exactly once across duplicates, re-deliveries and a
//! crash; silent cameras are missing data; bad input is refused and counted, the ledger untouched.
//! Every test uses its own topic prefix and store, and removes its broker session and retained
//! messages at the end.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aisle_agent::clock::{ManualClock, rfc3339};
use aisle_agent::config::{
    AgentConfig, CameraConfig, CameraVendor, ClockConfig, FootfallSettings, SyncConfig,
    XovisValuesConfig,
};
use aisle_agent::footfall::mqtt_client_id;
use aisle_agent::ledger::{FootfallBatch, FootfallRow, Ledger};
use aisle_agent::{Agent, AgentHandle};
use aisle_protocol::UtcMillis;
use aisle_protocol::sync::FootfallInterval;
use common::T0;
use reqwest::StatusCode;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::task::JoinHandle;

const MIN: i64 = 60_000;
/// 2026-01-01T10:00:00Z, on a quarter hour.
const T10: i64 = T0 + 10 * 60 * MIN;
const MAX_PAYLOAD: usize = 2_048;
const SILENCE: i64 = 6 * MIN;
/// When the 10:00 interval closes: its end plus the silence timeout.
const CLOSE_10: i64 = T10 + 15 * MIN + SILENCE + 1_000;

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn camera(id: &str, vendor: CameraVendor, zone: &str) -> CameraConfig {
    CameraConfig {
        id: id.into(),
        vendor,
        zone: zone.into(),
        utc_offset_minutes: None,
        values: (vendor == CameraVendor::Xovis).then_some(XovisValuesConfig::Delta),
        forward_is_in: None,
        lines: Default::default(),
    }
}

/// One store: a data dir, a clock, a config with four cameras on four entrances.
struct Store {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    config: AgentConfig,
    prefix: String,
}

impl Store {
    fn new(max_messages_per_minute: u32) -> Store {
        let dir = tempfile::tempdir().unwrap();
        let tag: u32 = rand::random();
        let store = format!("S{tag:08x}");
        let prefix = format!("aisle-test/{tag:08x}");
        let config = AgentConfig {
            store: store.parse().unwrap(),
            hub_url: format!("http://127.0.0.1:{}", closed_port()),
            credential: format!("gw-{store}.{}", "ab".repeat(32)),
            gateway: None,
            status_panel: None,
            data_dir: dir.path().to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            sync: SyncConfig {
                backoff_base_ms: 50,
                backoff_cap_ms: 500,
                ..SyncConfig::default()
            },
            clock: ClockConfig::default(),
            labels: None,
            checkout: None,
            footfall: Some(FootfallSettings {
                mqtt: Some("127.0.0.1:1883".into()),
                topic_prefix: prefix.clone(),
                max_payload_bytes: MAX_PAYLOAD,
                max_messages_per_minute,
                // The test clock jumps minutes between readings: longer than any jump, so a
                // camera counts as silent only when a test means it to. Intervals then close six
                // minutes after they end.
                silence_timeout_ms: SILENCE as u64,
                close_every_ms: 20,
                cameras: vec![
                    camera("door-1", CameraVendor::Axis, "Main entrance"),
                    camera("side-1", CameraVendor::Axis, "Side door"),
                    camera("xovis-1", CameraVendor::Xovis, "Back door"),
                    camera("hik-1", CameraVendor::Hikvision, "Car park door"),
                ],
                ..FootfallSettings::default()
            }),
            pickup: None,
        };
        Store {
            dir,
            clock: ManualClock::new(T10),
            config,
            prefix,
        }
    }

    async fn start(&self) -> AgentHandle {
        let agent = Agent::start(self.config.clone(), self.clock.clone())
            .await
            .unwrap();
        until("the agent is connected to the broker", || {
            agent.cameras().mqtt == "up"
        })
        .await;
        agent
    }

    fn topic(&self, camera: &str, kind: &str) -> String {
        format!(
            "{}/{}/camera/{camera}/{kind}",
            self.prefix, self.config.store
        )
    }

    fn client_id(&self) -> String {
        mqtt_client_id(
            self.config.store.as_str(),
            self.config.gateway_id().unwrap().as_str(),
        )
    }

    /// Removes the agent's session at the broker and the retained status messages.
    async fn clean_up(&self) {
        let mut o = rumqttc::v5::MqttOptions::new(self.client_id(), "127.0.0.1", 1883);
        o.set_clean_start(true);
        let (client, mut events) = rumqttc::v5::AsyncClient::new(o, 10);
        let mut cam = Cam::connect(&format!("{}-cleaner", self.client_id()), None).await;
        for c in ["door-1", "side-1", "xovis-1", "hik-1"] {
            cam.publish_retained(&self.topic(c, "status"), "").await;
        }
        cam.flush().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match events.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(
                        rumqttc::v5::mqttbytes::v5::Packet::ConnAck(_),
                    )) => {
                        let _ = client.disconnect().await;
                    }
                    Ok(rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => {
                        break;
                    }
                    Ok(_) => {}
                }
            }
        })
        .await;
        cam.kill();
    }
}

/// Waits (up to 20 s) for a condition; the test fails naming it if it never holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Footfall rows of the ledger, every interval of the day.
async fn rows(agent: &AgentHandle) -> Vec<FootfallRow> {
    agent
        .ledger()
        .footfall(UtcMillis(T0), UtcMillis(T0 + 24 * 60 * MIN))
        .await
        .unwrap()
}

async fn until_rows(agent: &AgentHandle, what: &str, f: impl Fn(&[FootfallRow]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = rows(agent).await;
        if f(&r) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}; rows: {r:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn row<'a>(rows: &'a [FootfallRow], zone: &str, start: i64) -> Option<&'a FootfallRow> {
    rows.iter().find(|r| r.zone == zone && r.start.0 == start)
}

fn readings(agent: &AgentHandle, outcome: &str) -> u64 {
    agent.footfall_metrics().readings_total(outcome)
}

fn refused(agent: &AgentHandle, reason: &str) -> u64 {
    agent.footfall_metrics().refused_total(reason)
}

/// An Axis live-sum payload at `at` (camera on UTC).
fn axis(at: i64, entered: u64, exited: u64) -> String {
    let fmt = time::macros::format_description!("[year][month][day][hour][minute][second]");
    let t = time::OffsetDateTime::from_unix_timestamp(at / 1000).unwrap();
    format!(
        r#"{{"serial":"ACCC8EF1A2B3","name":"Main entrance","timestamp":"{}","in":{entered},"out":{exited}}}"#,
        t.format(fmt).unwrap()
    )
}

/// A Xovis delta push at `at`.
fn xovis(at: i64, entered: u64, exited: u64) -> String {
    format!(
        r#"{{"time":"{}","logics":[{{"id":1,"name":"Entrance line","info":"XLT_LINE_IN_OUT_COUNT","counts":[{{"id":0,"name":"fw","value":{entered}}},{{"id":1,"name":"bw","value":{exited}}}]}}]}}"#,
        rfc3339(UtcMillis(at))
    )
}

/// A Hikvision realTime alert at `at` (running totals).
fn hikvision(at: i64, entered: u64, exited: u64) -> String {
    let t = rfc3339(UtcMillis(at)).replace('Z', "+00:00");
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<EventNotificationAlert version="2.0" xmlns="http://www.hikvision.com/ver20/XMLSchema">
<channelID>1</channelID>
<dateTime>{t}</dateTime>
<eventType>PeopleCounting</eventType>
<eventState>active</eventState>
<peopleCounting>
<statisticalMethods>realTime</statisticalMethods>
<RealTime><time>{t}</time></RealTime>
<enter>{entered}</enter>
<exit>{exited}</exit>
<pass>1045</pass>
</peopleCounting>
</EventNotificationAlert>"#
    )
}

/// A camera (or the test) publishing to the broker as an MQTT 3.1.1 client.
struct Cam {
    client: AsyncClient,
    task: JoinHandle<()>,
    sent: usize,
    acked: Arc<AtomicUsize>,
}

impl Cam {
    async fn connect(id: &str, will: Option<String>) -> Cam {
        let mut o = MqttOptions::new(id, "127.0.0.1", 1883);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(64 * 1024, 64 * 1024);
        if let Some(topic) = will {
            o.set_last_will(LastWill::new(topic, "offline", QoS::AtLeastOnce, false));
        }
        let (client, mut events) = AsyncClient::new(o, 100);
        let acked = Arc::new(AtomicUsize::new(0));
        let connected = Arc::new(AtomicUsize::new(0));
        let (a, c) = (acked.clone(), connected.clone());
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        c.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        until("the camera is connected", || {
            connected.load(Ordering::SeqCst) > 0
        })
        .await;
        Cam {
            client,
            task,
            sent: 0,
            acked,
        }
    }

    async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        self.sent += 1;
    }

    async fn publish_retained(&mut self, topic: &str, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .unwrap();
        self.sent += 1;
    }

    /// Waits until the broker has every message published so far.
    async fn flush(&self) {
        let sent = self.sent;
        let acked = self.acked.clone();
        until("the broker has every message", || {
            acked.load(Ordering::SeqCst) >= sent
        })
        .await;
    }

    /// Drops the connection without a DISCONNECT: the broker publishes the last will.
    fn kill(self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cumulative_axis_readings_become_intervals_and_silent_entrances_are_missing() {
    let s = Store::new(600);
    let agent = s.start().await;
    let mut cam = Cam::connect(&format!("{}-door-1", s.client_id()), None).await;
    let counts = s.topic("door-1", "counts");
    // 10:00 baseline, then +10/+5 and +20/+5 (as the camera's running totals); at 10:15 it
    // reports again with nobody new.
    let steps = [(0, 100, 90), (5, 110, 95), (10, 130, 100), (15, 130, 100)];
    for (n, (minute, entered, exited)) in steps.into_iter().enumerate() {
        s.clock.set(T10 + minute * MIN);
        cam.publish(&counts, axis(T10 + minute * MIN, entered, exited))
            .await;
        cam.flush().await;
        let taken = |a: &AgentHandle| readings(a, "baseline") + readings(a, "counted");
        until("the reading is committed", || taken(&agent) == n as u64 + 1).await;
    }
    assert_eq!(readings(&agent, "counted"), 3);
    let view = agent.cameras();
    let door = view.cameras.iter().find(|c| c.id == "door-1").unwrap();
    assert!(door.online, "{door:?}");
    assert_eq!(door.accepted, 4);
    assert_eq!(door.last_seen.as_deref(), Some("2026-01-01T10:15:00Z"));
    assert!(rows(&agent).await.is_empty(), "nothing closes before 10:21");

    // The 10:00 interval closes when the silence timeout has passed after it ends.
    s.clock.set(CLOSE_10);
    until_rows(&agent, "the 10:00 interval is written", |r| r.len() == 4).await;
    let r = rows(&agent).await;
    let main = row(&r, "Main entrance", T10).unwrap();
    assert_eq!((main.entered, main.exited), (30, 10));
    assert_eq!(main.end.0, T10 + 15 * MIN);
    assert!(main.cameras_missing.is_empty(), "{main:?}");
    // The other entrances' cameras never reported: zero visitors, but flagged as missing data.
    for (zone, cam_id) in [
        ("Side door", "side-1"),
        ("Back door", "xovis-1"),
        ("Car park door", "hik-1"),
    ] {
        let z = row(&r, zone, T10).unwrap();
        assert_eq!((z.entered, z.exited), (0, 0), "{z:?}");
        assert_eq!(z.cameras_missing, vec![cam_id.to_string()], "{z:?}");
    }
    // Counted once the ingest task has the commit's answer (a moment after the rows show).
    until("the intervals are counted", || {
        agent.footfall_metrics().intervals.get() == 4
    })
    .await;
    // The events are in the outbox for the hub, one per zone.
    let events = agent.ledger().events_after(0, 100).await.unwrap();
    assert_eq!(events.len(), 4);
    assert!(
        events.iter().all(|e| e.body.kind() == "footfall_counted"),
        "{events:?}"
    );

    // door-1 went quiet at 10:15: by 10:36 it is offline, and the 10:15 interval says so.
    s.clock.set(CLOSE_10 + 15 * MIN);
    until_rows(&agent, "the 10:15 interval is written", |r| r.len() == 8).await;
    let r = rows(&agent).await;
    let main = row(&r, "Main entrance", T10 + 15 * MIN).unwrap();
    assert_eq!((main.entered, main.exited), (0, 0));
    assert_eq!(main.cameras_missing, vec!["door-1".to_string()]);
    let door = agent
        .cameras()
        .cameras
        .into_iter()
        .find(|c| c.id == "door-1")
        .unwrap();
    assert!(!door.online);
    assert_eq!(door.offline_since.as_deref(), Some("2026-01-01T10:15:00Z"));

    cam.kill();
    agent.shutdown().await;
    aisle_agent::ledger::verify(s.dir.path()).unwrap();
    s.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplicate_message_is_counted_once() {
    let s = Store::new(600);
    let agent = s.start().await;
    let mut cam = Cam::connect(&format!("{}-door-1", s.client_id()), None).await;
    let counts = s.topic("door-1", "counts");
    cam.publish(&counts, axis(T10, 100, 90)).await;
    s.clock.set(T10 + MIN);
    cam.publish(&counts, axis(T10 + MIN, 104, 91)).await;
    // The camera sends the same total again (a retry after a lost ack, a dup on reconnect).
    cam.publish(&counts, axis(T10 + MIN, 104, 91)).await;
    cam.flush().await;
    until("all three are committed", || {
        readings(&agent, "baseline") + readings(&agent, "counted") + readings(&agent, "duplicate")
            == 3
    })
    .await;
    assert_eq!(readings(&agent, "counted"), 1);
    assert_eq!(readings(&agent, "duplicate"), 1);
    s.clock.set(CLOSE_10);
    until_rows(&agent, "the interval is written", |r| {
        row(r, "Main entrance", T10).is_some()
    })
    .await;
    let r = rows(&agent).await;
    let main = row(&r, "Main entrance", T10).unwrap();
    assert_eq!((main.entered, main.exited), (4, 1));
    cam.kill();
    agent.shutdown().await;
    s.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_mid_stream_neither_loses_nor_double_counts() {
    const N: i64 = 300;
    let s = Store::new(1_000_000);
    let agent = s.start().await;
    s.clock.set(T10 + MIN);
    let counts = s.topic("xovis-1", "counts");
    let mut cam = Cam::connect(&format!("{}-xovis-1", s.client_id()), None).await;
    // Xovis deltas: one person in and one out per push, each push at its own camera time. A
    // delta counted twice (a re-delivery the restored counter did not recognise) or lost would
    // change the total.
    let publisher = {
        let counts = counts.clone();
        tokio::spawn(async move {
            for i in 0..N {
                cam.publish(&counts, xovis(T10 + 1_000 + i * 100, 1, 1))
                    .await;
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            cam.flush().await;
            cam
        })
    };
    until("some pushes are committed", || {
        readings(&agent, "counted") >= 40
    })
    .await;
    // Crash: every task aborted, nothing flushed or acknowledged on the way out.
    drop(agent);
    let cam = publisher.await.unwrap();
    let agent = s.start().await;
    // A sign that everything published before it has been processed: the broker delivers one
    // session's messages in order.
    let mut marker = Cam::connect(&format!("{}-side-1", s.client_id()), None).await;
    marker.publish(&s.topic("side-1", "status"), "online").await;
    marker.flush().await;
    until("the restarted agent has caught up", || {
        agent
            .cameras()
            .cameras
            .iter()
            .any(|c| c.id == "side-1" && c.online)
    })
    .await;
    eprintln!(
        "after the restart: {} counted, {} duplicates re-delivered",
        readings(&agent, "counted"),
        readings(&agent, "duplicate")
    );
    s.clock.set(CLOSE_10);
    until_rows(&agent, "the interval is written", |r| {
        row(r, "Back door", T10).is_some()
    })
    .await;
    let r = rows(&agent).await;
    let back = row(&r, "Back door", T10).unwrap();
    assert_eq!(
        (back.entered, back.exited),
        (N as u64, N as u64),
        "every push counted exactly once across the crash"
    );
    assert_eq!(back.events, 1);
    cam.kill();
    marker.kill();
    agent.shutdown().await;
    aisle_agent::ledger::verify(s.dir.path()).unwrap();
    s.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_last_will_marks_the_camera_missing() {
    let s = Store::new(600);
    let agent = s.start().await;
    let status = s.topic("side-1", "status");
    let mut cam = Cam::connect(&format!("{}-side-1", s.client_id()), Some(status.clone())).await;
    cam.publish_retained(&status, "online").await;
    cam.publish(&s.topic("side-1", "counts"), axis(T10, 7, 3))
        .await;
    cam.flush().await;
    until("the camera is online", || {
        agent
            .cameras()
            .cameras
            .iter()
            .any(|c| c.id == "side-1" && c.online)
    })
    .await;
    s.clock.set(T10 + 4 * MIN);
    // The camera loses power: the broker publishes its last will.
    cam.kill();
    until("the camera is offline", || {
        agent
            .cameras()
            .cameras
            .iter()
            .any(|c| c.id == "side-1" && !c.online)
    })
    .await;
    let side = agent
        .cameras()
        .cameras
        .into_iter()
        .find(|c| c.id == "side-1")
        .unwrap();
    assert_eq!(
        side.offline_since.as_deref(),
        Some("2026-01-01T10:00:00Z"),
        "offline from its last message, not from the will"
    );
    s.clock.set(CLOSE_10);
    until_rows(&agent, "the interval is written", |r| {
        row(r, "Side door", T10).is_some()
    })
    .await;
    let r = rows(&agent).await;
    let side = row(&r, "Side door", T10).unwrap();
    assert_eq!(side.cameras_missing, vec!["side-1".to_string()]);
    assert_eq!((side.entered, side.exited), (0, 0));
    agent.shutdown().await;

    // After a restart the broker hands over the camera's retained `online` again (old news from
    // when it connected) and then its will is not repeated: it must stay offline.
    let agent = s.start().await;
    let mut other = Cam::connect(&format!("{}-door-1", s.client_id()), None).await;
    other.publish(&s.topic("door-1", "status"), "online").await;
    other.flush().await;
    until("the marker after the retained status is processed", || {
        agent
            .cameras()
            .cameras
            .iter()
            .any(|c| c.id == "door-1" && c.online)
    })
    .await;
    let side = agent
        .cameras()
        .cameras
        .into_iter()
        .find(|c| c.id == "side-1")
        .unwrap();
    assert!(!side.online, "{side:?}");
    assert_eq!(side.offline_since.as_deref(), Some("2026-01-01T10:00:00Z"));
    other.kill();
    agent.shutdown().await;
    s.clean_up().await;
}

async fn push(
    agent: &AgentHandle,
    camera: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let r = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/cameras/{camera}/counts",
            agent.local_addr()
        ))
        .header("content-type", "application/xml")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hikvision_xml_pushed_over_http_is_counted() {
    let s = Store::new(600);
    let agent = s.start().await;
    let (status, body) = push(&agent, "hik-1", hikvision(T10, 236, 198)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["outcome"], "baseline");
    s.clock.set(T10 + 5 * MIN);
    let (status, body) = push(&agent, "hik-1", hikvision(T10 + 5 * MIN, 250, 204)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["outcome"], "counted");
    assert_eq!(body["readings"][0]["line"], "1");
    // The same alert again: answered, counted once.
    let (status, body) = push(&agent, "hik-1", hikvision(T10 + 5 * MIN, 250, 204)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["outcome"], "duplicate");

    let r = reqwest::get(format!("http://{}/v1/cameras", agent.local_addr()))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let view: Value = r.json().await.unwrap();
    let hik = view["cameras"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "hik-1")
        .unwrap()
        .clone();
    assert_eq!(hik["vendor"], "hikvision");
    assert_eq!(hik["zone"], "Car park door");
    assert_eq!(hik["online"], true);
    assert_eq!(hik["accepted"], 3);
    assert_eq!(hik["refused"], 0);
    assert_eq!(view["mqtt"], "up");
    // Still reporting at 10:10 and 10:15, nobody new.
    for minute in [10, 15] {
        s.clock.set(T10 + minute * MIN);
        let (status, _) = push(&agent, "hik-1", hikvision(T10 + minute * MIN, 250, 204)).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }

    s.clock.set(CLOSE_10);
    until_rows(&agent, "the interval is written", |r| {
        row(r, "Car park door", T10).is_some()
    })
    .await;
    let r = rows(&agent).await;
    let car = row(&r, "Car park door", T10).unwrap();
    assert_eq!((car.entered, car.exited), (14, 6));
    assert!(car.cameras_missing.is_empty(), "{car:?}");
    agent.shutdown().await;
    aisle_agent::ledger::verify(s.dir.path()).unwrap();
    s.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_counted_and_leaves_the_ledger_untouched() {
    let s = Store::new(20);
    let agent = s.start().await;
    let before = agent.ledger().view().last_seq;
    let big = format!(
        r#"{{"serial":"x","name":"{}","timestamp":"20260101100000","in":1,"out":1}}"#,
        "n".repeat(MAX_PAYLOAD)
    );
    // A baseline first, so an absurd jump has something to jump from.
    let (status, _) = push(&agent, "door-1", axis(T10, 10, 10)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        ("door-1", "{\"in\": 3,".into(), StatusCode::BAD_REQUEST, "malformed_json"),
        (
            "door-1",
            r#"{"serial":"x","name":"y","timestamp":"20260101100100","in":"12","out":9}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "hik-1",
            "<EventNotificationAlert><eventType>PeopleCounting</eventTyp>".into(),
            StatusCode::BAD_REQUEST,
            "malformed_xml",
        ),
        (
            "door-1",
            axis(T10 + 60_000, 1_000_010, 10),
            StatusCode::UNPROCESSABLE_ENTITY,
            "absurd_jump",
        ),
        (
            "door-1",
            r#"{"serial":"x","name":"y","timestamp":"20260101100200","in":12,"out":9,"faceImage":"AAAA"}"#
                .into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "personal_data",
        ),
        ("door-9", axis(T10, 1, 1), StatusCode::NOT_FOUND, "unknown_camera"),
        ("door-1", big.clone(), StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
    ];
    for (cam, body, want_status, reason) in cases {
        let was = refused(&agent, reason);
        let (status, answer) = push(&agent, cam, body).await;
        assert_eq!(status, want_status, "{reason}: {answer}");
        assert_eq!(answer["reason"], reason, "{answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(refused(&agent, reason), was + 1, "{reason}");
    }
    // A flood: more than 20 messages a minute from one camera.
    let mut flooded = 0;
    for i in 0..30 {
        let (status, answer) = push(&agent, "hik-1", hikvision(T10 + i * 1_000, 5, 5)).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(answer["reason"], "flood");
            flooded += 1;
        }
    }
    assert!(flooded >= 10, "{flooded}");
    assert_eq!(refused(&agent, "flood"), flooded);

    // The same over MQTT: refused and counted (and acknowledged, so never delivered again).
    let mut cam = Cam::connect(&format!("{}-side-1", s.client_id()), None).await;
    let mqtt_cases = [
        ("side-1", "counts", "not json".to_string(), "malformed_json"),
        ("nobody", "counts", axis(T10, 1, 1), "unknown_camera"),
        ("side-1", "counts", big, "too_large"),
        ("side-1", "status", "sleepy".to_string(), "bad_status"),
    ];
    for (camera, kind, payload, reason) in mqtt_cases {
        let was = refused(&agent, reason);
        cam.publish(&s.topic(camera, kind), payload).await;
        cam.flush().await;
        until(&format!("{reason} is refused"), || {
            refused(&agent, reason) == was + 1
        })
        .await;
    }
    let view = agent.cameras();
    let side = view.cameras.iter().find(|c| c.id == "side-1").unwrap();
    assert_eq!(side.refused, 3, "{side:?}");
    assert_eq!(side.accepted, 0, "{side:?}");
    assert_eq!(side.last_refusal.as_deref(), Some("bad_status"));

    // Nothing reached the ledger's events.
    assert_eq!(agent.ledger().view().last_seq, before);
    let metrics = reqwest::get(format!("http://{}/metrics", agent.local_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "aisle_footfall_refused_total{reason=\"personal_data\"} 1",
        "aisle_footfall_refused_total{reason=\"unknown_camera\"} 2",
        "aisle_footfall_readings_total{outcome=\"baseline\"} 2",
        "aisle_camera_online{camera=\"side-1\"} 1",
        "aisle_footfall_intervals_total 0",
        "aisle_footfall_mqtt_up 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    assert!(
        !metrics.contains("nobody") && !metrics.contains("door-9"),
        "{metrics}"
    );
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");

    cam.kill();
    agent.shutdown().await;
    s.clean_up().await;
}

fn interval(zone: &str, start: i64, entered: u64, missing: &[&str]) -> FootfallInterval {
    FootfallInterval {
        zone: zone.into(),
        start: UtcMillis(start),
        end: UtcMillis(start + 15 * MIN),
        entered,
        exited: entered / 2,
        occupancy: None,
        cameras_missing: missing.iter().map(|c| c.to_string()).collect(),
    }
}

#[tokio::test]
async fn the_footfall_table_sums_additive_events_and_verify_replays_it() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path(), ManualClock::new(T10))
        .await
        .unwrap();
    let n = ledger
        .commit_footfall(FootfallBatch {
            state: b"{}".to_vec(),
            intervals: vec![
                interval("Main entrance", T10, 30, &["door-2"]),
                interval("Side door", T10, 0, &[]),
            ],
        })
        .await
        .unwrap();
    assert_eq!(n, 2);
    // A late reading for the same interval: another event, summed; missing cameras merged.
    ledger
        .commit_footfall(FootfallBatch {
            state: b"{\"later\":1}".to_vec(),
            intervals: vec![interval("Main entrance", T10, 4, &["door-3", "door-2"])],
        })
        .await
        .unwrap();
    assert_eq!(
        ledger.footfall_state().await.unwrap().as_deref(),
        Some(&b"{\"later\":1}"[..])
    );
    let r = ledger
        .footfall(UtcMillis(T10), UtcMillis(T10 + 15 * MIN))
        .await
        .unwrap();
    assert_eq!(r.len(), 2);
    let main = row(&r, "Main entrance", T10).unwrap();
    assert_eq!((main.entered, main.exited, main.events), (34, 17, 2));
    assert_eq!(main.cameras_missing, vec!["door-2", "door-3"]);

    // An invalid interval (not on a quarter hour) refuses the whole command: nothing written.
    let seq = ledger.view().last_seq;
    let bad = FootfallInterval {
        start: UtcMillis(T10 + 1),
        end: UtcMillis(T10 + 1 + 15 * MIN),
        ..interval("Main entrance", T10, 1, &[])
    };
    assert!(
        ledger
            .commit_footfall(FootfallBatch {
                state: b"{\"bad\":1}".to_vec(),
                intervals: vec![interval("Side door", T10, 1, &[]), bad],
            })
            .await
            .is_err()
    );
    assert_eq!(ledger.view().last_seq, seq);
    assert_eq!(
        ledger.footfall_state().await.unwrap().as_deref(),
        Some(&b"{\"later\":1}"[..])
    );
    ledger.close().await;

    let report = aisle_agent::ledger::verify(dir.path()).unwrap();
    assert_eq!((report.events, report.footfall_rows), (3, 2));
    assert!(report.to_string().contains("2 footfall rows"), "{report}");
    // The table changed behind the events' back: verify names it.
    let conn = rusqlite::Connection::open(dir.path().join("ledger.db")).unwrap();
    conn.execute(
        "UPDATE footfall SET entered = entered + 1 WHERE zone = 'Side door'",
        [],
    )
    .unwrap();
    drop(conn);
    let e = aisle_agent::ledger::verify(dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("footfall"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_restart_the_time_the_agent_was_down_is_missing_data() {
    let mut s = Store::new(600);
    let agent = s.start().await;
    let mut cam = Cam::connect(&format!("{}-door-1", s.client_id()), None).await;
    let counts = s.topic("door-1", "counts");
    for (minute, total) in [(0, 10), (5, 12), (10, 15), (15, 15)] {
        s.clock.set(T10 + minute * MIN);
        cam.publish(&counts, axis(T10 + minute * MIN, total, total))
            .await;
        cam.flush().await;
        until("the reading is committed", || {
            readings(&agent, "baseline") + readings(&agent, "counted") == minute as u64 / 5 + 1
        })
        .await;
    }
    agent.shutdown().await;

    // The gateway is off from 10:15 to 11:00; the camera's totals went on meanwhile. A camera
    // on a new entrance is added to the configuration.
    s.clock.set(T10 + 60 * MIN);
    if let Some(f) = s.config.footfall.as_mut() {
        f.cameras
            .push(camera("garden-1", CameraVendor::Axis, "Garden door"));
    }
    let agent = s.start().await;
    cam.publish(&counts, axis(T10 + 60 * MIN, 40, 40)).await;
    cam.flush().await;
    until("the first reading after the restart is committed", || {
        readings(&agent, "counted") == 1
    })
    .await;
    // The counter came back with its baseline: the 25 people since 10:15 are counted, not lost
    // (a fresh counter would take 40 as a baseline) and not doubled.
    s.clock.set(T10 + 60 * MIN + 15 * MIN + SILENCE + 1_000);
    until_rows(&agent, "the intervals up to 11:00 are written", |r| {
        row(r, "Main entrance", T10 + 45 * MIN).is_some()
    })
    .await;
    let r = rows(&agent).await;
    let main: Vec<&FootfallRow> = r.iter().filter(|r| r.zone == "Main entrance").collect();
    let total: u64 = main.iter().map(|r| r.entered).sum();
    assert_eq!(total, 5 + 25, "{main:#?}");
    assert!(
        row(&r, "Main entrance", T10)
            .unwrap()
            .cameras_missing
            .is_empty()
    );
    for q in [15, 30, 45] {
        let gap = row(&r, "Main entrance", T10 + q * MIN).unwrap();
        assert_eq!(
            gap.cameras_missing,
            vec!["door-1".to_string()],
            "10:{q} was not observed: {gap:?}"
        );
    }
    // The new entrance has no intervals from before it was configured (not even zeros); from
    // then on it is missing until its camera reports.
    let garden: Vec<&FootfallRow> = r.iter().filter(|r| r.zone == "Garden door").collect();
    assert_eq!(garden.len(), 1, "{garden:#?}");
    assert_eq!(garden[0].start.0, T10 + 60 * MIN);
    assert_eq!(garden[0].cameras_missing, vec!["garden-1".to_string()]);
    let view = agent.cameras();
    assert_eq!(view.cameras.len(), 5);
    assert!(view.cameras.iter().any(|c| c.id == "garden-1" && !c.online));
    cam.kill();
    agent.shutdown().await;
    aisle_agent::ledger::verify(s.dir.path()).unwrap();
    s.clean_up().await;
}

/// A Mosquitto of the test's own on `port` (no persistence: a restart forgets every session).
fn own_broker(port: u16) -> std::process::Child {
    std::process::Command::new("mosquitto")
        .args(["-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("mosquitto is installed (scripts/lib/services.sh)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_agent_rides_out_a_broker_restart_and_pushes_work_without_it() {
    let port = closed_port();
    let mut s = Store::new(600);
    if let Some(f) = s.config.footfall.as_mut() {
        f.mqtt = Some(format!("127.0.0.1:{port}"));
    }
    // No broker yet: the agent starts anyway, and cameras can push over HTTP.
    let agent = Agent::start(s.config.clone(), s.clock.clone())
        .await
        .unwrap();
    assert_eq!(agent.cameras().mqtt, "down");
    let (status, _) = push(&agent, "hik-1", hikvision(T10, 1, 1)).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let mut broker = own_broker(port);
    until("the agent connects", || agent.cameras().mqtt == "up").await;
    broker.kill().unwrap();
    broker.wait().unwrap();
    until("the agent sees the broker gone", || {
        agent.cameras().mqtt == "down"
    })
    .await;
    let mut broker = own_broker(port);
    until("the agent reconnects", || agent.cameras().mqtt == "up").await;
    // The new broker knows no session: the agent subscribed again, so counts still arrive.
    let mut o = MqttOptions::new("camera-door-1", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(o, 10);
    let driver = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let counts = s.topic("door-1", "counts");
    let mut n = 0;
    // Published until one arrives (a message sent before the subscription lands is not kept).
    while readings(&agent, "baseline") == 0 {
        assert!(n < 500, "no count arrived after the reconnect");
        client
            .publish(&counts, QoS::AtLeastOnce, false, axis(T10, 5, 5))
            .await
            .unwrap();
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    driver.abort();
    agent.shutdown().await;
    broker.kill().unwrap();
    broker.wait().unwrap();

    // Without a broker configured the agent says so.
    if let Some(f) = s.config.footfall.as_mut() {
        f.mqtt = None;
    }
    let agent = Agent::start(s.config.clone(), s.clock.clone())
        .await
        .unwrap();
    assert_eq!(agent.cameras().mqtt, "off");
    agent.shutdown().await;
}
