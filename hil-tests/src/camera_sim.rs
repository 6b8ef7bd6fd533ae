//! A people-counting camera, simulated: the payloads real Axis, Xovis and Hikvision counters send
//! (exactly what `aisle_drivers::footfall` parses), published over MQTT the way a camera does it
//! (QoS 1, a retained `online` on connect, `offline` as its last will) or pushed over HTTP to the
//! agent's `/v1/cameras/{id}/counts`.
//!
//! Two layers:
//! * [`CameraModel`] is pure: people walk in (at random, `people_per_minute`, or on command) and
//!   out again after a while; the model keeps the counters the vendor keeps (running totals since
//!   the camera's local midnight or reboot, or counts since the previous message) and renders a
//!   payload on demand. Benches use it to pre-build messages.
//! * [`CameraSim`] runs one camera as a tokio task: a message every `every`, plus the commands of
//!   [`Command`] (`walk N`, `reset`, `dup`, `silence SECS`, `skew MS`, `quit`), the same ones
//!   `aisle-sim camera` reads from stdin.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use serde_json::json;
use time::macros::format_description;
use time::{Date, OffsetDateTime, UtcOffset};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Where cameras publish unless told otherwise: `<prefix>/<store>/camera/<id>/counts`.
pub const DEFAULT_TOPIC_PREFIX: &str = "aisle/v1";
/// A camera's clock may be set this far off and no further (`skew`).
pub const MAX_SKEW_MS: i64 = 10 * 365 * 24 * 3_600_000;
/// Arrivals simulated per tick at most, whatever `people_per_minute` says.
const MAX_ARRIVALS_PER_TICK: u32 = 100_000;
/// Failed HTTP pushes kept for a retry (delta and interval formats only: a running total needs
/// no retry, the next one includes it).
const MAX_RETRY: usize = 100;
const DAY_MS: i64 = 24 * 3_600_000;

/// Which vendor's counter is simulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Vendor {
    /// Axis People Counter `live-sum.json`: running totals since the camera's local midnight.
    Axis,
    /// Xovis v5 logics push: one line logic with `fw` (in) and `bw` (out).
    Xovis,
    /// Hikvision `EventNotificationAlert` PeopleCounting XML.
    Hikvision,
}

impl Vendor {
    pub fn name(self) -> &'static str {
        match self {
            Vendor::Axis => "axis",
            Vendor::Xovis => "xovis",
            Vendor::Hikvision => "hikvision",
        }
    }
}

/// What a Xovis push carries (chosen by the installer; the agent's camera config must agree).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XovisValues {
    /// Counts since the previous push.
    #[default]
    Delta,
    /// Running totals since the sensor started.
    Absolute,
}

/// Hikvision `statisticalMethods`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum HikvisionMethod {
    /// `realTime`: running totals since the camera's local midnight.
    #[default]
    #[value(name = "realtime")]
    RealTime,
    /// `timeRange`: people counted between the previous alert and this one.
    #[value(name = "timerange")]
    TimeRange,
}

/// One camera: what it is and how busy its door is.
#[derive(Clone, Debug)]
pub struct CameraProfile {
    pub vendor: Vendor,
    /// The id the store configured for it (MQTT topic, HTTP push path).
    pub camera: String,
    /// The camera's local time zone (its timestamps are local; Axis's carry no zone at all).
    pub utc_offset_minutes: i16,
    pub xovis_values: XovisValues,
    pub hikvision_method: HikvisionMethod,
    /// Axis: include the occupancy estimator's `occupancy` (people inside); Xovis: add a zone
    /// occupancy logic (which the parser skips, as the real one is not a line count).
    pub occupancy: bool,
    /// Random arrivals (a Poisson process); 0 means people only come on `walk`.
    pub people_per_minute: f64,
    /// How long a visitor stays, in ms: uniform in `[min, max]`.
    pub dwell_ms: (i64, i64),
    pub seed: u64,
    /// How far the camera's clock is off from the start (negative: behind); `skew` changes it.
    pub clock_skew_ms: i64,
}

impl CameraProfile {
    /// A camera with defaults: 20 people per minute, visits of 1 to 10 minutes, UTC, seed 1.
    pub fn new(vendor: Vendor, camera: &str) -> CameraProfile {
        CameraProfile {
            vendor,
            camera: camera.to_string(),
            utc_offset_minutes: 0,
            xovis_values: XovisValues::default(),
            hikvision_method: HikvisionMethod::default(),
            occupancy: false,
            people_per_minute: 20.0,
            dwell_ms: (60_000, 600_000),
            seed: 1,
            clock_skew_ms: 0,
        }
    }

    /// Do this camera's messages carry running totals (rather than counts since the last one)?
    pub fn cumulative(&self) -> bool {
        match self.vendor {
            Vendor::Axis => true,
            Vendor::Xovis => self.xovis_values == XovisValues::Absolute,
            Vendor::Hikvision => self.hikvision_method == HikvisionMethod::RealTime,
        }
    }

    pub fn validate(&self) -> Result<()> {
        valid_id("camera id", &self.camera)?;
        if i32::from(self.utc_offset_minutes).abs() > 18 * 60 {
            bail!(
                "utc offset of {} minutes is outside -18h..+18h",
                self.utc_offset_minutes
            );
        }
        if !self.people_per_minute.is_finite()
            || self.people_per_minute < 0.0
            || self.people_per_minute > 100_000.0
        {
            bail!(
                "people per minute must be between 0 and 100000, got {}",
                self.people_per_minute
            );
        }
        if self.clock_skew_ms.abs() > MAX_SKEW_MS {
            bail!(
                "clock skew of {} ms is more than ten years",
                self.clock_skew_ms
            );
        }
        let (lo, hi) = self.dwell_ms;
        if lo < 0 || hi < lo || hi > DAY_MS {
            bail!("dwell must be 0 <= min <= max <= one day, got {lo}..{hi} ms");
        }
        Ok(())
    }
}

/// Camera and store ids as the agent accepts them: `[A-Za-z0-9_-]{1,64}`.
fn valid_id(what: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        bail!("{what} {id:?}: expected 1 to 64 letters, digits, '_' or '-'");
    }
    Ok(())
}

/// One rendered message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    /// The camera's own time it carries (UTC ms).
    pub camera_at: i64,
    /// People who had entered (over the camera's whole life) when it was rendered.
    pub people_in: u64,
}

/// The counters of one camera. Pure: time comes in as UTC ms, randomness from the seed.
#[derive(Debug)]
pub struct CameraModel {
    profile: CameraProfile,
    rng: StdRng,
    skew_ms: i64,
    /// Running totals (in, out) since the camera's local midnight or its last reboot.
    total: (u64, u64),
    /// Counted since the previous message (delta and interval formats).
    pending: (u64, u64),
    /// Camera time where the next Hikvision timeRange starts.
    interval_start: Option<i64>,
    /// The camera's local date at the last tick (running totals restart when it changes).
    day: Option<Date>,
    inside: u64,
    /// People due to leave, by second.
    exits: BTreeMap<i64, u64>,
    next_arrival: Option<i64>,
    passers_by: u64,
    people_in: u64,
    people_out: u64,
    /// People whose entry a reset wiped before any message carried it.
    lost_in: u64,
    /// `people_in` when the last message was rendered.
    rendered_in: u64,
}

impl CameraModel {
    pub fn new(profile: CameraProfile) -> Result<CameraModel> {
        profile.validate()?;
        Ok(CameraModel {
            rng: StdRng::seed_from_u64(profile.seed),
            skew_ms: profile.clock_skew_ms,
            profile,
            total: (0, 0),
            pending: (0, 0),
            interval_start: None,
            day: None,
            inside: 0,
            exits: BTreeMap::new(),
            next_arrival: None,
            passers_by: 0,
            people_in: 0,
            people_out: 0,
            lost_in: 0,
            rendered_in: 0,
        })
    }

    pub fn profile(&self) -> &CameraProfile {
        &self.profile
    }

    /// People who entered over the camera's whole life (walks and random arrivals).
    pub fn people_in(&self) -> u64 {
        self.people_in
    }

    pub fn people_out(&self) -> u64 {
        self.people_out
    }

    /// People a reset wiped before any message carried them: they never reach the store.
    pub fn lost_in(&self) -> u64 {
        self.lost_in
    }

    /// People inside now.
    pub fn inside(&self) -> u64 {
        self.inside
    }

    /// The running totals (in, out) the camera would report now.
    pub fn totals(&self) -> (u64, u64) {
        self.total
    }

    pub fn skew_ms(&self) -> i64 {
        self.skew_ms
    }

    /// The camera's clock runs `ms` off real time from now on (negative: behind).
    pub fn set_skew(&mut self, ms: i64) {
        self.skew_ms = ms.clamp(-MAX_SKEW_MS, MAX_SKEW_MS);
    }

    /// `n` people walk in at `now` (real UTC ms); each leaves again after a dwell.
    pub fn walk(&mut self, n: u64, now: i64) {
        if n == 0 {
            return;
        }
        self.total.0 = self.total.0.saturating_add(n);
        self.pending.0 = self.pending.0.saturating_add(n);
        self.inside = self.inside.saturating_add(n);
        self.people_in = self.people_in.saturating_add(n);
        // Leave in up to 8 groups, each after its own dwell (bounded memory for any n).
        let groups = n.min(8);
        let (lo, hi) = self.profile.dwell_ms;
        for g in 0..groups {
            let count = n / groups + u64::from(g < n % groups);
            let dwell = if hi > lo {
                self.rng.random_range(lo..=hi)
            } else {
                lo
            };
            let at = now.saturating_add(dwell);
            // Whole seconds: at most one entry per second of dwell.
            let key = at - at.rem_euclid(1000) + 1000;
            let slot = self.exits.entry(key).or_default();
            *slot = slot.saturating_add(count);
        }
    }

    /// The camera reboots: its counters start again from zero. People counted since the last
    /// message are lost with them.
    pub fn reset(&mut self) {
        self.lost_in = self
            .lost_in
            .saturating_add(self.people_in.saturating_sub(self.rendered_in));
        self.rendered_in = self.people_in;
        self.total = (0, 0);
        self.pending = (0, 0);
        self.interval_start = None;
    }

    /// Moves the door on to `now` (real UTC ms): random arrivals, people leaving, and the
    /// camera's midnight restart of its running totals.
    pub fn advance(&mut self, now: i64) {
        let camera_now = now.saturating_add(self.skew_ms);
        if let Some(local) = local_time(camera_now, self.profile.utc_offset_minutes) {
            let date = local.date();
            if self.day.is_some_and(|d| d != date) {
                // A new counting day: totals restart (what was not sent yet stays unsent).
                self.total = (0, 0);
            }
            self.day = Some(date);
        }
        if self.profile.people_per_minute > 0.0 {
            let rate_per_ms = self.profile.people_per_minute / 60_000.0;
            let mut next = match self.next_arrival {
                Some(t) => t,
                None => now.saturating_add(self.gap(rate_per_ms)),
            };
            let mut arrivals = 0u32;
            while next <= now && arrivals < MAX_ARRIVALS_PER_TICK {
                self.walk(1, next);
                arrivals += 1;
                next = next.saturating_add(self.gap(rate_per_ms));
            }
            if next <= now {
                next = now.saturating_add(self.gap(rate_per_ms));
            }
            self.next_arrival = Some(next);
            self.passers_by = self
                .passers_by
                .saturating_add(u64::from(arrivals).saturating_mul(3));
        }
        let later = self.exits.split_off(&now.saturating_add(1));
        let due = std::mem::replace(&mut self.exits, later);
        for (_, n) in due {
            let n = n.min(self.inside);
            self.inside -= n;
            self.total.1 = self.total.1.saturating_add(n);
            self.pending.1 = self.pending.1.saturating_add(n);
            self.people_out = self.people_out.saturating_add(n);
        }
    }

    /// Milliseconds to the next arrival of a Poisson process (at least 1).
    fn gap(&mut self, rate_per_ms: f64) -> i64 {
        let u: f64 = self.rng.random();
        let gap = -(1.0 - u).ln() / rate_per_ms;
        if gap.is_finite() {
            (gap as i64).clamp(1, DAY_MS)
        } else {
            DAY_MS
        }
    }

    /// Whether the camera has a message to send at `now`. Always, except a Hikvision timeRange
    /// camera within the second its last interval ended: its intervals are in whole seconds, and
    /// an interval sent twice is (rightly) taken as a re-send, so its counts would be lost.
    pub fn due(&self, now: i64) -> bool {
        if self.profile.vendor != Vendor::Hikvision
            || self.profile.hikvision_method != HikvisionMethod::TimeRange
        {
            return true;
        }
        let camera_at = now.saturating_add(self.skew_ms);
        let end = camera_at - camera_at.rem_euclid(1000);
        self.interval_start.is_none_or(|s| end > s)
    }

    /// Renders the message the camera sends at `now` (real UTC ms; the camera stamps it with its
    /// own, possibly skewed, clock). Counts since the previous message are handed over to it.
    /// Fails when the camera has nothing to send ([`CameraModel::due`]).
    pub fn payload(&mut self, now: i64) -> Result<Payload> {
        if !self.due(now) {
            bail!("a timeRange interval ends at most once a second");
        }
        let camera_at = now.saturating_add(self.skew_ms);
        let offset = self.profile.utc_offset_minutes;
        let local = local_time(camera_at, offset)
            .ok_or_else(|| anyhow!("camera time {camera_at} ms is out of range"))?;
        let (bytes, content_type) = match self.profile.vendor {
            Vendor::Axis => (self.axis(&local)?, "application/json"),
            Vendor::Xovis => (self.xovis(&local)?, "application/json"),
            Vendor::Hikvision => (self.hikvision(camera_at, &local)?, "application/xml"),
        };
        self.pending = (0, 0);
        self.rendered_in = self.people_in;
        Ok(Payload {
            bytes,
            content_type,
            camera_at,
            people_in: self.people_in,
        })
    }

    fn axis(&self, local: &OffsetDateTime) -> Result<Vec<u8>> {
        let stamp = local.format(format_description!(
            "[year][month][day][hour][minute][second]"
        ))?;
        let mut doc = json!({
            "serial": format!("ACCC8E{:06X}", fnv(&self.profile.camera) & 0xFF_FFFF),
            "name": self.profile.camera,
            "timestamp": stamp,
            "in": self.total.0,
            "out": self.total.1,
        });
        if self.profile.occupancy {
            doc["occupancy"] = json!(self.inside);
        }
        Ok(serde_json::to_vec(&doc)?)
    }

    fn xovis(&self, local: &OffsetDateTime) -> Result<Vec<u8>> {
        let time = local.format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3][offset_hour sign:mandatory]:[offset_minute]"
        ))?;
        let (fw, bw) = match self.profile.xovis_values {
            XovisValues::Delta => self.pending,
            XovisValues::Absolute => self.total,
        };
        let mut logics = vec![json!({
            "id": 1,
            "name": "Entrance line",
            "info": "XLT_LINE_IN_OUT_COUNT",
            "counts": [
                {"id": 0, "name": "fw", "value": fw},
                {"id": 1, "name": "bw", "value": bw}
            ]
        })];
        if self.profile.occupancy {
            logics.push(json!({
                "id": 2,
                "name": "Shop floor",
                "info": "XLT_ZONE_OCCUPANCY_COUNT",
                "counts": [{"id": 0, "name": "occupancy", "value": self.inside}]
            }));
        }
        Ok(serde_json::to_vec(
            &json!({ "time": time, "logics": logics }),
        )?)
    }

    fn hikvision(&mut self, camera_at: i64, local: &OffsetDateTime) -> Result<Vec<u8>> {
        let offset = self.profile.utc_offset_minutes;
        let fmt = format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second][offset_hour sign:mandatory]:[offset_minute]"
        );
        let date_time = local.format(fmt)?;
        let mac = fnv(&self.profile.camera);
        let (method, inner, (enter, exit)) = match self.profile.hikvision_method {
            HikvisionMethod::RealTime => (
                "realTime",
                format!("<RealTime><time>{date_time}</time></RealTime>"),
                self.total,
            ),
            HikvisionMethod::TimeRange => {
                // Whole seconds, as the camera reports them; at least one second long.
                let end = camera_at - camera_at.rem_euclid(1000);
                // After a clock step back or a long gap, a fresh one-second interval.
                let start = match self.interval_start {
                    Some(s) if s < end && end - s <= DAY_MS => s,
                    _ => end - 1000,
                };
                self.interval_start = Some(end);
                let start_text = local_time(start, offset)
                    .ok_or_else(|| anyhow!("camera time {start} ms is out of range"))?
                    .format(fmt)?;
                let end_text = local_time(end, offset)
                    .ok_or_else(|| anyhow!("camera time {end} ms is out of range"))?
                    .format(fmt)?;
                (
                    "timeRange",
                    format!(
                        "<TimeRange>\n<startTime>{start_text}</startTime>\n<endTime>{end_text}</endTime>\n</TimeRange>"
                    ),
                    self.pending,
                )
            }
        };
        let xml = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<EventNotificationAlert version="2.0" xmlns="http://www.hikvision.com/ver20/XMLSchema">
<ipAddress>192.0.2.{host}</ipAddress>
<portNo>80</portNo>
<protocol>HTTP</protocol>
<macAddress>44:19:b6:{m1:02x}:{m2:02x}:{m3:02x}</macAddress>
<channelID>1</channelID>
<dateTime>{date_time}</dateTime>
<activePostCount>1</activePostCount>
<eventType>PeopleCounting</eventType>
<eventState>active</eventState>
<eventDescription>peopleCounting alarm</eventDescription>
<channelName>{name}</channelName>
<peopleCounting>
<statisticalMethods>{method}</statisticalMethods>
{inner}
<enter>{enter}</enter>
<exit>{exit}</exit>
<pass>{pass}</pass>
</peopleCounting>
</EventNotificationAlert>
"#,
            host = 1 + mac % 250,
            m1 = (mac >> 16) & 0xFF,
            m2 = (mac >> 8) & 0xFF,
            m3 = mac & 0xFF,
            // The id is [A-Za-z0-9_-]: nothing to escape.
            name = self.profile.camera,
            pass = self.passers_by,
        );
        Ok(xml.into_bytes())
    }
}

/// FNV-1a: a stable serial number / MAC per camera id.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// UTC ms as the camera's local time.
fn local_time(ms: i64, offset_minutes: i16) -> Option<OffsetDateTime> {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    let off = UtcOffset::from_whole_seconds(i32::from(offset_minutes) * 60).ok()?;
    Some(t.to_offset(off))
}

/// Now, in UTC ms.
pub fn now_ms() -> i64 {
    aisle_protocol::UtcMillis::now().0
}

/// How the camera reaches the store.
#[derive(Clone, Debug)]
pub enum Transport {
    /// Publish to an MQTT broker (`host:port`) under `<topic_prefix>/<store>/camera/<id>/`.
    Mqtt {
        broker: String,
        topic_prefix: String,
    },
    /// POST to the agent at `agent_url` (`http://host:port`): `/v1/cameras/{id}/counts`.
    Http { agent_url: String },
}

/// Everything [`CameraSim::start`] needs.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub store: String,
    pub profile: CameraProfile,
    pub transport: Transport,
    /// A message this often.
    pub every: Duration,
}

impl SimConfig {
    pub fn validate(&self) -> Result<()> {
        valid_id("store id", &self.store)?;
        self.profile.validate()?;
        if self.every < Duration::from_millis(10) || self.every > Duration::from_secs(86_400) {
            bail!(
                "every must be between 10 ms and a day, got {:?}",
                self.every
            );
        }
        if let Transport::Mqtt {
            broker,
            topic_prefix,
        } = &self.transport
        {
            split_host_port(broker)?;
            if topic_prefix.is_empty()
                || topic_prefix.contains(['+', '#', '\0'])
                || topic_prefix.starts_with('/')
                || topic_prefix.ends_with('/')
            {
                bail!("topic prefix {topic_prefix:?}: expected levels like aisle/v1, no wildcards");
            }
        }
        Ok(())
    }

    /// `<prefix>/<store>/camera/<id>/counts` (MQTT only).
    pub fn counts_topic(&self) -> Option<String> {
        self.topic("counts")
    }

    /// `<prefix>/<store>/camera/<id>/status` (MQTT only).
    pub fn status_topic(&self) -> Option<String> {
        self.topic("status")
    }

    fn topic(&self, leaf: &str) -> Option<String> {
        match &self.transport {
            Transport::Mqtt { topic_prefix, .. } => Some(camera_topic(
                topic_prefix,
                &self.store,
                &self.profile.camera,
                leaf,
            )),
            Transport::Http { .. } => None,
        }
    }
}

/// `<prefix>/<store>/camera/<camera>/<leaf>`.
pub fn camera_topic(prefix: &str, store: &str, camera: &str, leaf: &str) -> String {
    format!("{prefix}/{store}/camera/{camera}/{leaf}")
}

/// `host:port` split for rumqttc.
pub fn split_host_port(addr: &str) -> Result<(String, u16)> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("MQTT broker {addr:?}: expected HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("MQTT broker {addr:?}: bad port"))?;
    if host.is_empty() {
        bail!("MQTT broker {addr:?}: no host");
    }
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

/// A command, as typed on `aisle-sim camera`'s stdin (one per line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `walk N`: N people walk in now, and out again later.
    Walk(u64),
    /// `reset`: the camera reboots; its counters restart from zero.
    Reset,
    /// `dup`: send the last message again, byte for byte.
    Dup,
    /// `silence SECS`: send nothing for SECS (over MQTT the connection is dropped uncleanly, so
    /// the broker publishes the last will `offline`); then reconnect and carry on.
    Silence(Duration),
    /// `skew MS`: the camera's clock is MS off from now on (negative: behind).
    Skew(i64),
    /// `quit`: say `offline` (MQTT) and stop.
    Quit,
}

impl FromStr for Command {
    type Err = anyhow::Error;

    fn from_str(line: &str) -> Result<Command> {
        let mut words = line.split_whitespace();
        let verb = words.next().unwrap_or("");
        let arg = words.next();
        if words.next().is_some() {
            bail!("{line:?}: too many words");
        }
        let need = |what: &str| arg.ok_or_else(|| anyhow!("{verb} needs {what}"));
        let none = |c: Command| match arg {
            None => Ok(c),
            Some(a) => bail!("{verb} takes no argument, got {a:?}"),
        };
        match verb {
            "walk" => {
                let n = need("a number of people")?;
                n.parse()
                    .map(Command::Walk)
                    .map_err(|_| anyhow!("walk: {n:?} is not a number of people"))
            }
            "reset" => none(Command::Reset),
            "dup" => none(Command::Dup),
            "quit" | "exit" => none(Command::Quit),
            "silence" => {
                let s = need("seconds")?;
                let secs: f64 = s
                    .parse()
                    .map_err(|_| anyhow!("silence: {s:?} is not a number of seconds"))?;
                if !secs.is_finite() || !(0.0..=7.0 * 86_400.0).contains(&secs) {
                    bail!("silence: {s} seconds is not between 0 and a week");
                }
                Ok(Command::Silence(Duration::from_secs_f64(secs)))
            }
            "skew" => {
                let m = need("milliseconds")?;
                let ms: i64 = m
                    .parse()
                    .map_err(|_| anyhow!("skew: {m:?} is not a number of milliseconds"))?;
                if ms.abs() > MAX_SKEW_MS {
                    bail!("skew: {ms} ms is more than ten years");
                }
                Ok(Command::Skew(ms))
            }
            "" => bail!("empty command"),
            other => bail!(
                "unknown command {other:?}; commands: walk N, reset, dup, silence SECS, skew MS, quit"
            ),
        }
    }
}

/// What a running simulator has done so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Messages rendered and handed to the transport (`dup`s included).
    pub messages: u64,
    /// Messages the broker acknowledged (PUBACK) or the agent accepted (2xx).
    pub delivered: u64,
    /// Messages the agent refused (4xx over HTTP).
    pub refused: u64,
    /// Messages that did not get through (connection errors, 5xx, dropped on silence).
    pub failed: u64,
    /// People who entered, over the camera's whole life.
    pub people_in: u64,
    pub people_out: u64,
    /// People a reset wiped before any message carried them.
    pub lost_in: u64,
    /// `people_in` as of the newest delivered message: once it equals `people_in - lost_in`
    /// (and was sent after them), every visitor so far is on its way to the agent.
    pub delivered_in: u64,
    /// The last refusal (HTTP status and body).
    pub last_refusal: Option<String>,
    /// The last transport error.
    pub last_error: Option<String>,
}

impl SimStats {
    /// Every visitor so far went out in a delivered message.
    pub fn all_delivered(&self) -> bool {
        self.delivered_in >= self.people_in.saturating_sub(self.lost_in)
    }
}

type SharedStats = Arc<Mutex<SimStats>>;

fn with_stats(stats: &SharedStats, f: impl FnOnce(&mut SimStats)) {
    if let Ok(mut s) = stats.lock() {
        f(&mut s);
    }
}

/// A camera running as a task. Dropping it stops the camera like `quit`.
#[derive(Debug)]
pub struct CameraSim {
    commands: mpsc::Sender<(Command, Option<oneshot::Sender<()>>)>,
    stats: SharedStats,
    task: Option<JoinHandle<Result<()>>>,
    config: SimConfig,
}

impl CameraSim {
    /// Starts the camera: over MQTT it connects (last will `offline`, retained `online`), then
    /// a message every `config.every`.
    pub fn start(config: SimConfig) -> Result<CameraSim> {
        config.validate()?;
        let model = CameraModel::new(config.profile.clone())?;
        let stats: SharedStats = Arc::default();
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(run(config.clone(), model, rx, stats.clone()));
        Ok(CameraSim {
            commands: tx,
            stats,
            task: Some(task),
            config,
        })
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Hands the camera a command and returns once it took it (a `walk` is in its counters, a
    /// `dup` was sent, a `silence` has begun).
    pub async fn command(&self, command: Command) -> Result<()> {
        let stopped = || anyhow!("camera {} has stopped", self.config.profile.camera);
        let (done, taken) = oneshot::channel();
        self.commands
            .send((command, Some(done)))
            .await
            .map_err(|_| stopped())?;
        taken.await.map_err(|_| stopped())
    }

    /// `walk n`.
    pub async fn walk(&self, n: u64) -> Result<()> {
        self.command(Command::Walk(n)).await
    }

    pub fn stats(&self) -> SimStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until every visitor so far went out in a delivered message.
    pub async fn wait_delivered(&self, timeout: Duration) -> Result<SimStats> {
        let camera = &self.config.profile.camera;
        crate::harness::wait_for(
            &format!("camera {camera} to deliver its counts"),
            timeout,
            || async {
                let s = self.stats();
                s.all_delivered().then_some(s)
            },
        )
        .await
        .with_context(|| format!("camera {camera}: {:?}", self.stats()))
    }

    /// Waits until `n` more messages than now were delivered.
    pub async fn wait_messages(&self, n: u64, timeout: Duration) -> Result<SimStats> {
        let target = self.stats().delivered.saturating_add(n);
        let camera = &self.config.profile.camera;
        crate::harness::wait_for(
            &format!("camera {camera} to deliver {n} more messages"),
            timeout,
            || async {
                let s = self.stats();
                (s.delivered >= target).then_some(s)
            },
        )
        .await
        .with_context(|| format!("camera {camera}: {:?}", self.stats()))
    }

    /// `quit`, and waits for the camera to say goodbye.
    pub async fn quit(mut self) -> Result<SimStats> {
        let _ = self.commands.send((Command::Quit, None)).await;
        if let Some(task) = self.task.take() {
            task.await.context("camera task panicked")??;
        }
        Ok(self.stats())
    }
}

impl Drop for CameraSim {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            // `quit` was not awaited: stop at once (over MQTT this looks like a lost camera).
            task.abort();
        }
    }
}

/// The camera's loop: ticks render and send a message, commands change the door or the link.
async fn run(
    config: SimConfig,
    mut model: CameraModel,
    mut commands: mpsc::Receiver<(Command, Option<oneshot::Sender<()>>)>,
    stats: SharedStats,
) -> Result<()> {
    let mut link = Link::open(&config, stats.clone())?;
    let mut ticker = tokio::time::interval(config.every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut silent_until: Option<Instant> = None;
    let mut last: Option<Payload> = None;
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some((command, done)) = command else {
                    link.close().await;
                    return Ok(());
                };
                match command {
                    Command::Quit => {
                        link.close().await;
                        return Ok(());
                    }
                    Command::Walk(n) => model.walk(n, now_ms()),
                    Command::Reset => model.reset(),
                    Command::Skew(ms) => model.set_skew(ms),
                    Command::Dup => {
                        if silent_until.is_none()
                            && let Some(p) = &last
                        {
                            link.send(p, model.profile().cumulative()).await;
                        }
                    }
                    Command::Silence(d) => {
                        silent_until = Some(Instant::now() + d);
                        link.go_silent().await;
                    }
                }
                update_people(&stats, &model);
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            _ = ticker.tick() => {
                let now = now_ms();
                model.advance(now);
                if let Some(until) = silent_until {
                    if Instant::now() < until {
                        update_people(&stats, &model);
                        continue;
                    }
                    silent_until = None;
                    link.wake(&config)?;
                }
                if !model.due(now) {
                    update_people(&stats, &model);
                    continue;
                }
                match model.payload(now) {
                    Ok(p) => {
                        link.send(&p, model.profile().cumulative()).await;
                        last = Some(p);
                    }
                    Err(e) => with_stats(&stats, |s| s.last_error = Some(format!("{e:#}"))),
                }
            }
        }
        update_people(&stats, &model);
    }
}

fn update_people(stats: &SharedStats, model: &CameraModel) {
    with_stats(stats, |s| {
        s.people_in = model.people_in();
        s.people_out = model.people_out();
        s.lost_in = model.lost_in();
    });
}

/// The camera's connection to the store.
enum Link {
    Mqtt {
        /// `None` while silent.
        conn: Option<MqttConn>,
        stats: SharedStats,
    },
    Http(HttpPush),
}

impl Link {
    fn open(config: &SimConfig, stats: SharedStats) -> Result<Link> {
        match &config.transport {
            Transport::Mqtt { .. } => Ok(Link::Mqtt {
                conn: Some(MqttConn::connect(config, stats.clone())?),
                stats,
            }),
            Transport::Http { agent_url } => Ok(Link::Http(HttpPush::new(
                agent_url,
                &config.profile.camera,
                stats,
            )?)),
        }
    }

    async fn send(&mut self, p: &Payload, cumulative: bool) {
        match self {
            Link::Mqtt { conn, stats } => {
                with_stats(stats, |s| s.messages += 1);
                if let Some(c) = conn {
                    c.publish_counts(p);
                }
            }
            Link::Http(h) => h.send(p, cumulative).await,
        }
    }

    async fn go_silent(&mut self) {
        if let Link::Mqtt { conn, .. } = self
            && let Some(c) = conn.take()
        {
            c.drop_unclean().await;
        }
    }

    fn wake(&mut self, config: &SimConfig) -> Result<()> {
        if let Link::Mqtt { conn, stats } = self
            && conn.is_none()
        {
            *conn = Some(MqttConn::connect(config, stats.clone())?);
        }
        Ok(())
    }

    async fn close(&mut self) {
        if let Link::Mqtt { conn, .. } = self
            && let Some(c) = conn.take()
        {
            c.close().await;
        }
    }
}

/// Which publishes are waiting for their PUBACK, to count deliveries.
#[derive(Debug, Default)]
struct AckTracker {
    /// Tags of publishes handed to the client, in order, not yet on the wire.
    queued: VecDeque<Option<u64>>,
    /// On the wire, by packet id: the `people_in` a counts message carried (None: status).
    inflight: HashMap<u16, Option<u64>>,
}

/// One MQTT session of the camera: the client and its event loop task.
struct MqttConn {
    client: AsyncClient,
    tracker: Arc<Mutex<AckTracker>>,
    events: JoinHandle<()>,
    counts_topic: String,
    status_topic: String,
    stats: SharedStats,
}

impl MqttConn {
    fn connect(config: &SimConfig, stats: SharedStats) -> Result<MqttConn> {
        let Transport::Mqtt {
            broker,
            topic_prefix,
        } = &config.transport
        else {
            bail!("not an MQTT camera");
        };
        let (host, port) = split_host_port(broker)?;
        let camera = &config.profile.camera;
        let counts_topic = camera_topic(topic_prefix, &config.store, camera, "counts");
        let status_topic = camera_topic(topic_prefix, &config.store, camera, "status");
        // Unique per run: two simulated cameras with one id (parallel tests) must not kick each
        // other off the broker.
        let client_id = format!(
            "aisle-sim-{}-{camera}-{:08x}",
            config.store,
            rand::random::<u32>()
        );
        let mut options = MqttOptions::new(client_id, host, port);
        options
            .set_keep_alive(Duration::from_secs(10))
            .set_clean_session(true)
            .set_request_channel_capacity(10_000)
            .set_max_packet_size(256 * 1024, 256 * 1024)
            .set_last_will(LastWill::new(
                status_topic.clone(),
                "offline",
                QoS::AtLeastOnce,
                true,
            ));
        let (client, eventloop) = AsyncClient::new(options, 10_000);
        let tracker: Arc<Mutex<AckTracker>> = Arc::default();
        let events = tokio::spawn(drive(
            eventloop,
            client.clone(),
            tracker.clone(),
            status_topic.clone(),
            stats.clone(),
        ));
        Ok(MqttConn {
            client,
            tracker,
            events,
            counts_topic,
            status_topic,
            stats,
        })
    }

    fn publish_counts(&self, p: &Payload) {
        if let Err(e) = publish(
            &self.client,
            &self.tracker,
            &self.counts_topic,
            false,
            p.bytes.clone(),
            Some(p.people_in),
        ) {
            with_stats(&self.stats, |s| {
                s.failed += 1;
                s.last_error = Some(e);
            });
        }
    }

    /// The camera's network is cut: the socket closes without DISCONNECT, so the broker
    /// publishes the last will. Messages not yet acknowledged are lost.
    async fn drop_unclean(mut self) {
        self.events.abort();
        let _ = (&mut self.events).await;
        let lost = self
            .tracker
            .lock()
            .map(|t| t.queued.iter().chain(t.inflight.values()).flatten().count() as u64)
            .unwrap_or(0);
        with_stats(&self.stats, |s| s.failed += lost);
    }

    /// A clean goodbye: waits (briefly) for outstanding acknowledgements, says `offline`
    /// (retained, as the last will would), then DISCONNECT.
    async fn close(mut self) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let idle = self
                .tracker
                .lock()
                .map(|t| t.queued.is_empty() && t.inflight.is_empty())
                .unwrap_or(true);
            if idle {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = publish(
            &self.client,
            &self.tracker,
            &self.status_topic,
            true,
            b"offline".to_vec(),
            None,
        );
        let _ = self.client.disconnect().await;
        if tokio::time::timeout(Duration::from_secs(3), &mut self.events)
            .await
            .is_err()
        {
            self.events.abort();
            with_stats(&self.stats, |s| {
                s.last_error = Some("the broker did not see the goodbye in time".into());
            });
        }
    }
}

impl Drop for MqttConn {
    fn drop(&mut self) {
        // However the camera stops, its event loop (and so its socket) goes with it.
        self.events.abort();
    }
}

/// Hands a QoS 1 publish to the client, remembering its tag for the PUBACK.
fn publish(
    client: &AsyncClient,
    tracker: &Mutex<AckTracker>,
    topic: &str,
    retain: bool,
    bytes: Vec<u8>,
    tag: Option<u64>,
) -> Result<(), String> {
    let mut t = tracker
        .lock()
        .map_err(|_| "ack tracker poisoned".to_string())?;
    t.queued.push_back(tag);
    client
        .try_publish(topic, QoS::AtLeastOnce, retain, bytes)
        .map_err(|e| {
            t.queued.pop_back();
            format!("publish to {topic}: {e}")
        })
}

/// Drives the MQTT event loop: reconnects, says `online` (retained) on every connect, counts
/// PUBACKs. Ends after a DISCONNECT went out.
async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    tracker: Arc<Mutex<AckTracker>>,
    status_topic: String,
    stats: SharedStats,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Err(e) = publish(
                    &client,
                    &tracker,
                    &status_topic,
                    true,
                    b"online".to_vec(),
                    None,
                ) {
                    with_stats(&stats, |s| s.last_error = Some(e));
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if let Ok(mut t) = tracker.lock()
                    && !t.inflight.contains_key(&pkid)
                {
                    // A packet id not in flight is a new publish (a re-send keeps its id).
                    let tag = t.queued.pop_front().flatten();
                    t.inflight.insert(pkid, tag);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                let tag = tracker
                    .lock()
                    .ok()
                    .and_then(|mut t| t.inflight.remove(&ack.pkid));
                if let Some(Some(people_in)) = tag {
                    with_stats(&stats, |s| {
                        s.delivered += 1;
                        s.delivered_in = s.delivered_in.max(people_in);
                    });
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                with_stats(&stats, |s| s.last_error = Some(format!("MQTT: {e}")));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// HTTP push to the agent, with a short retry queue for messages that did not get through.
struct HttpPush {
    client: reqwest::Client,
    url: String,
    stats: SharedStats,
    retry: VecDeque<Payload>,
}

impl HttpPush {
    fn new(agent_url: &str, camera: &str, stats: SharedStats) -> Result<HttpPush> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        Ok(HttpPush {
            client,
            url: format!(
                "{}/v1/cameras/{camera}/counts",
                agent_url.trim_end_matches('/')
            ),
            stats,
            retry: VecDeque::new(),
        })
    }

    async fn send(&mut self, p: &Payload, cumulative: bool) {
        if cumulative {
            // The next running total includes whatever this one carried: no retry.
            self.push(p).await;
            return;
        }
        // Counts since the previous message are only in that message: keep it until it got
        // through, and send in order.
        if self.retry.len() >= MAX_RETRY {
            self.retry.pop_front();
        }
        self.retry.push_back(p.clone());
        while let Some(front) = self.retry.front() {
            if !self.push(front).await {
                break;
            }
            self.retry.pop_front();
        }
    }

    /// One POST; false when it should be tried again (no answer or a 5xx).
    async fn push(&self, p: &Payload) -> bool {
        with_stats(&self.stats, |s| s.messages += 1);
        let answer = self
            .client
            .post(&self.url)
            .header("content-type", p.content_type)
            .body(p.bytes.clone())
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => {
                with_stats(&self.stats, |s| {
                    s.delivered += 1;
                    s.delivered_in = s.delivered_in.max(p.people_in);
                });
                true
            }
            Ok(r) if r.status().is_client_error() => {
                let status = r.status().as_u16();
                let body = r.text().await.unwrap_or_default();
                with_stats(&self.stats, |s| {
                    s.refused += 1;
                    s.last_refusal = Some(format!(
                        "{status} {}",
                        body.chars().take(300).collect::<String>()
                    ));
                });
                true
            }
            Ok(r) => {
                let status = r.status().as_u16();
                with_stats(&self.stats, |s| {
                    s.failed += 1;
                    s.last_error = Some(format!("HTTP {status}"));
                });
                false
            }
            Err(e) => {
                with_stats(&self.stats, |s| {
                    s.failed += 1;
                    s.last_error = Some(format!("POST {}: {e}", self.url));
                });
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aisle_drivers::footfall::{
        CameraFormat, CameraId, CameraReading, Counts, DEFAULT_MAX_PAYLOAD, ReadingKind,
        XovisConfig, parse_payload,
    };

    /// 2026-11-22T10:15:00Z
    const T0: i64 = 1_795_342_500_000;

    fn format_of(p: &CameraProfile) -> CameraFormat {
        match p.vendor {
            Vendor::Axis => CameraFormat::AxisLiveSum {
                utc_offset_minutes: p.utc_offset_minutes,
            },
            Vendor::Xovis => CameraFormat::XovisLogics(XovisConfig {
                values: match p.xovis_values {
                    XovisValues::Delta => aisle_drivers::footfall::XovisValues::Delta,
                    XovisValues::Absolute => aisle_drivers::footfall::XovisValues::Absolute,
                },
                forward_is_in: true,
            }),
            Vendor::Hikvision => CameraFormat::HikvisionAlert,
        }
    }

    fn parse(model: &CameraModel, p: &Payload) -> CameraReading {
        let profile = model.profile();
        let mut rs = parse_payload(
            format_of(profile),
            &CameraId::new(&profile.camera),
            &p.bytes,
            DEFAULT_MAX_PAYLOAD,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(&p.bytes)));
        assert_eq!(rs.len(), 1, "{}", String::from_utf8_lossy(&p.bytes));
        rs.remove(0)
    }

    fn counts(r: &CameraReading) -> Counts {
        match r.kind {
            ReadingKind::Cumulative { counts, .. }
            | ReadingKind::Delta { counts }
            | ReadingKind::Interval { counts, .. } => counts,
        }
    }

    fn quiet(vendor: Vendor) -> CameraProfile {
        CameraProfile {
            people_per_minute: 0.0,
            dwell_ms: (120_000, 120_000),
            utc_offset_minutes: 60,
            ..CameraProfile::new(vendor, "door-1")
        }
    }

    fn every_format() -> Vec<CameraProfile> {
        vec![
            quiet(Vendor::Axis),
            CameraProfile {
                occupancy: true,
                ..quiet(Vendor::Axis)
            },
            quiet(Vendor::Xovis),
            CameraProfile {
                xovis_values: XovisValues::Absolute,
                occupancy: true,
                ..quiet(Vendor::Xovis)
            },
            quiet(Vendor::Hikvision),
            CameraProfile {
                hikvision_method: HikvisionMethod::TimeRange,
                ..quiet(Vendor::Hikvision)
            },
        ]
    }

    #[test]
    fn every_format_parses_and_carries_the_people() {
        for profile in every_format() {
            let cumulative = profile.cumulative();
            let mut m = CameraModel::new(profile.clone()).unwrap();
            m.advance(T0);
            let first = m.payload(T0).unwrap();
            let r = parse(&m, &first);
            assert_eq!(r.camera, CameraId::new("door-1"));
            assert_eq!(r.at.0, T0 - T0 % 1000, "{profile:?}");
            assert_eq!(counts(&r), Counts::new(0, 0), "{profile:?}");

            m.walk(5, T0 + 1_000);
            m.advance(T0 + 2_000);
            let p = m.payload(T0 + 2_000).unwrap();
            assert_eq!(p.people_in, 5);
            assert_eq!(counts(&parse(&m, &p)), Counts::new(5, 0), "{profile:?}");

            // They leave two minutes later.
            m.advance(T0 + 200_000);
            let p = m.payload(T0 + 200_000).unwrap();
            let expect = if cumulative {
                Counts::new(5, 5)
            } else {
                Counts::new(0, 5)
            };
            assert_eq!(counts(&parse(&m, &p)), expect, "{profile:?}");
            assert_eq!(m.people_out(), 5);
            assert_eq!(m.inside(), 0);
        }
    }

    #[test]
    fn axis_timestamps_are_local_and_occupancy_is_people_inside() {
        let mut m = CameraModel::new(CameraProfile {
            occupancy: true,
            ..quiet(Vendor::Axis)
        })
        .unwrap();
        m.walk(3, T0);
        m.advance(T0);
        let p = m.payload(T0).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&p.bytes).unwrap();
        // 10:15Z is 11:15 at UTC+1.
        assert_eq!(doc["timestamp"], "20261122111500");
        assert_eq!(doc["occupancy"], 3);
        assert_eq!(doc["in"], 3);
        assert!(doc["serial"].as_str().unwrap().starts_with("ACCC8E"));
        let r = parse(&m, &p);
        assert_eq!(r.occupancy, Some(3));
        assert_eq!(r.at.0, T0);
    }

    #[test]
    fn reset_restarts_the_totals_and_loses_what_was_unsent() {
        let mut m = CameraModel::new(quiet(Vendor::Axis)).unwrap();
        m.walk(4, T0);
        m.advance(T0);
        m.payload(T0).unwrap();
        m.walk(2, T0 + 500);
        m.reset();
        assert_eq!(m.lost_in(), 2);
        m.advance(T0 + 1_000);
        let p = m.payload(T0 + 1_000).unwrap();
        assert_eq!(counts(&parse(&m, &p)), Counts::new(0, 0));
        m.walk(1, T0 + 1_500);
        m.advance(T0 + 2_000);
        let p = m.payload(T0 + 2_000).unwrap();
        assert_eq!(counts(&parse(&m, &p)), Counts::new(1, 0));
        assert_eq!(m.people_in(), 7);
    }

    #[test]
    fn running_totals_restart_at_the_cameras_local_midnight() {
        // 22:59:50Z is 23:59:50 at UTC+1.
        let before = T0 + (12 * 60 + 44) * 60_000 + 50_000;
        let mut m = CameraModel::new(quiet(Vendor::Axis)).unwrap();
        m.advance(before);
        m.walk(9, before);
        let p = m.payload(before).unwrap();
        assert_eq!(counts(&parse(&m, &p)), Counts::new(9, 0));
        let after = before + 20_000;
        m.advance(after);
        let p = m.payload(after).unwrap();
        let r = parse(&m, &p);
        assert_eq!(counts(&r), Counts::new(0, 0));
        let doc: serde_json::Value = serde_json::from_slice(&p.bytes).unwrap();
        assert_eq!(doc["timestamp"], "20261123000010");
    }

    #[test]
    fn skew_moves_the_cameras_clock_only() {
        for profile in every_format() {
            let mut m = CameraModel::new(profile.clone()).unwrap();
            m.set_skew(-3_600_000);
            m.advance(T0);
            let p = m.payload(T0).unwrap();
            assert_eq!(p.camera_at, T0 - 3_600_000);
            assert_eq!(parse(&m, &p).at.0, T0 - 3_600_000, "{profile:?}");
        }
    }

    #[test]
    fn delta_formats_hand_counts_over_once() {
        let mut m = CameraModel::new(quiet(Vendor::Xovis)).unwrap();
        m.walk(3, T0);
        m.advance(T0);
        let p = m.payload(T0).unwrap();
        assert_eq!(counts(&parse(&m, &p)), Counts::new(3, 0));
        let p = m.payload(T0 + 1_000).unwrap();
        assert_eq!(counts(&parse(&m, &p)), Counts::new(0, 0));
    }

    #[test]
    fn hikvision_time_ranges_follow_each_other() {
        let mut m = CameraModel::new(CameraProfile {
            hikvision_method: HikvisionMethod::TimeRange,
            ..quiet(Vendor::Hikvision)
        })
        .unwrap();
        let mut prev_end = None;
        for i in 0..5 {
            let now = T0 + i * 1_500 + 123;
            m.walk(1, now);
            m.advance(now);
            let p = m.payload(now).unwrap();
            let r = parse(&m, &p);
            let ReadingKind::Interval { start, end, counts } = r.kind else {
                panic!("{:?}", r.kind)
            };
            assert_eq!(counts, Counts::new(1, 0));
            assert!(end > start);
            if let Some(e) = prev_end {
                assert_eq!(start, e, "intervals are contiguous");
            }
            prev_end = Some(end);
        }
    }

    #[test]
    fn hikvision_time_ranges_are_never_sent_twice_in_one_second() {
        let mut m = CameraModel::new(CameraProfile {
            hikvision_method: HikvisionMethod::TimeRange,
            ..quiet(Vendor::Hikvision)
        })
        .unwrap();
        m.advance(T0 + 100);
        assert!(m.due(T0 + 100));
        m.payload(T0 + 100).unwrap();
        m.walk(2, T0 + 300);
        for t in [T0 + 300, T0 + 999] {
            assert!(!m.due(t));
            assert!(m.payload(t).is_err());
        }
        assert!(m.due(T0 + 1_000));
        let p = m.payload(T0 + 1_000).unwrap();
        assert_eq!(counts(&parse(&m, &p)), Counts::new(2, 0));
        // Other formats always have something to say.
        let axis = CameraModel::new(quiet(Vendor::Axis)).unwrap();
        assert!(axis.due(T0) && axis.due(T0 + 1));
    }

    #[test]
    fn random_arrivals_follow_the_rate_and_the_seed() {
        let profile = CameraProfile {
            people_per_minute: 60.0,
            ..CameraProfile::new(Vendor::Axis, "busy")
        };
        let run = |seed: u64| {
            let mut m = CameraModel::new(CameraProfile {
                seed,
                ..profile.clone()
            })
            .unwrap();
            for s in 0..=3_600 {
                m.advance(T0 + s * 1_000);
            }
            (m.people_in(), m.people_out(), m.totals())
        };
        let (a_in, a_out, _) = run(7);
        assert_eq!(run(7).0, a_in, "same seed, same people");
        // 3600 expected in an hour; a Poisson count is well within +-10%.
        assert!((3_240..=3_960).contains(&a_in), "{a_in}");
        assert!(a_out <= a_in);
        assert_ne!(run(8).0, a_in);
    }

    #[test]
    fn huge_walks_and_rates_stay_bounded() {
        let mut m = CameraModel::new(CameraProfile {
            people_per_minute: 100_000.0,
            ..CameraProfile::new(Vendor::Hikvision, "flood")
        })
        .unwrap();
        m.walk(u64::MAX, T0);
        m.walk(u64::MAX, T0);
        m.advance(T0 + DAY_MS);
        let p = m.payload(T0 + DAY_MS).unwrap();
        assert!(p.bytes.len() < 2_000);
        assert!(m.exits.len() <= 8 * 2 + 600);
    }

    #[test]
    fn commands_parse_as_typed() {
        let ok: &[(&str, Command)] = &[
            ("walk 5", Command::Walk(5)),
            ("  walk   12  ", Command::Walk(12)),
            ("reset", Command::Reset),
            ("dup", Command::Dup),
            (
                "silence 2.5",
                Command::Silence(Duration::from_millis(2_500)),
            ),
            ("skew -90000", Command::Skew(-90_000)),
            ("quit", Command::Quit),
        ];
        for (line, want) in ok {
            assert_eq!(&line.parse::<Command>().unwrap(), want, "{line}");
        }
        for bad in [
            "",
            "walk",
            "walk -1",
            "walk many",
            "reset now",
            "silence",
            "silence -1",
            "silence NaN",
            "skew 1e3",
            "skew 999999999999999999",
            "jump 3",
            "walk 1 2",
        ] {
            assert!(bad.parse::<Command>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn configs_are_checked() {
        let good = SimConfig {
            store: "S001".into(),
            profile: quiet(Vendor::Axis),
            transport: Transport::Mqtt {
                broker: "127.0.0.1:1883".into(),
                topic_prefix: "aisle/v1".into(),
            },
            every: Duration::from_secs(1),
        };
        good.validate().unwrap();
        assert_eq!(
            good.counts_topic().unwrap(),
            "aisle/v1/S001/camera/door-1/counts"
        );
        let bad = [
            SimConfig {
                store: "S 1".into(),
                ..good.clone()
            },
            SimConfig {
                profile: CameraProfile::new(Vendor::Axis, "door/1"),
                ..good.clone()
            },
            SimConfig {
                transport: Transport::Mqtt {
                    broker: "127.0.0.1".into(),
                    topic_prefix: "aisle/v1".into(),
                },
                ..good.clone()
            },
            SimConfig {
                transport: Transport::Mqtt {
                    broker: "127.0.0.1:1883".into(),
                    topic_prefix: "aisle/#".into(),
                },
                ..good.clone()
            },
            SimConfig {
                every: Duration::from_millis(1),
                ..good.clone()
            },
            SimConfig {
                profile: CameraProfile {
                    people_per_minute: f64::NAN,
                    ..quiet(Vendor::Axis)
                },
                ..good.clone()
            },
            SimConfig {
                profile: CameraProfile {
                    utc_offset_minutes: 20 * 60,
                    ..quiet(Vendor::Axis)
                },
                ..good.clone()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
