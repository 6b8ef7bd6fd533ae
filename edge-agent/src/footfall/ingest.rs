//! The ingest task: the one owner of the counter and the camera presence. See the module docs of
//! [`super`] for the flow; the rules for closing intervals are on [`Ingest::close`].
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aisle_drivers::footfall::{
    self as ff, CameraFormat, CameraId, CameraPresence, CounterSnapshot, EntranceZone,
    FootfallConfig, FootfallCounter, Outcome, PresenceChange, XovisConfig, XovisValues, ZoneMap,
};
use aisle_protocol::UtcMillis;
use aisle_protocol::sync::{FOOTFALL_INTERVAL_MS, FootfallInterval, MAX_FOOTFALL_VISITORS};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use super::mqtt::Acker;
use super::{AckToken, FootfallShared, MAX_BATCH, Msg, PushAnswer, ReadingAnswer, shown};
use crate::clock::HubTime;
use crate::config::{CameraVendor, FootfallSettings, XovisValuesConfig};
use crate::ledger::{FootfallBatch, Ledger, LedgerError};
use crate::sync::backoff::Backoff;

/// Version of the stored state's JSON layout.
const STATE_VERSION: u32 = 1;
/// Zero-visitor intervals are filled in at most this far back (two days of 15-minute intervals),
/// so a clock that jumps ahead cannot make one close write thousands of events.
const MAX_FILL_INTERVALS: i64 = 2 * 96;
/// A batch begun while the ledger was idle waits this long for more messages before it is
/// committed, so a store with many cameras pays one fsync and one snapshot write per ~50 ms, not
/// per message. Under load nothing waits: what arrives while a commit runs is the next batch, sent
/// the moment that commit ends (pacing it would let the broker's queue overflow and drop
/// messages). A full batch, closed intervals and shutdown never wait either.
const LINGER: Duration = Duration::from_millis(50);

/// The ingestion state as stored in the ledger's `footfall_state` row.
#[derive(Serialize)]
struct StoredRef<'a> {
    version: u32,
    /// When each zone was first configured: intervals before it are never filled with zeros.
    zones_since: &'a BTreeMap<String, i64>,
    counter: &'a CounterSnapshot,
    presence: &'a CameraPresence,
}

#[derive(Deserialize)]
struct Stored {
    version: u32,
    zones_since: BTreeMap<String, i64>,
    counter: CounterSnapshot,
    presence: CameraPresence,
}

/// What the agent hands the ingest task when it starts.
#[derive(Debug)]
pub(crate) struct IngestSetup {
    pub settings: FootfallSettings,
    pub ledger: Ledger,
    pub shared: Arc<FootfallShared>,
    /// The state the ledger holds (`Ledger::footfall_state`).
    pub stored: Option<Vec<u8>>,
    pub acker: Option<Acker>,
}

#[derive(Debug)]
struct CameraRt {
    id: CameraId,
    format: CameraFormat,
}

#[derive(Debug)]
struct ZoneRt {
    zone: EntranceZone,
    cameras: Vec<CameraId>,
    /// The first interval zero-filled for it: the one it was first configured in.
    fill_from: i64,
}

/// Per-camera flood limit: a token bucket holding `per_minute` messages, refilled continuously.
/// Tokens are counted in 1/60000 of a message so the refill per millisecond is an integer.
#[derive(Clone, Copy, Debug)]
struct FloodBucket {
    units: u64,
    last: Option<Instant>,
}

impl FloodBucket {
    const UNIT: u64 = 60_000;

    /// Takes one message; false when the camera is over its rate.
    fn take(&mut self, per_minute: u64, now: Instant) -> bool {
        let cap = per_minute.saturating_mul(Self::UNIT);
        self.units = match self.last {
            None => cap,
            Some(last) => {
                let ms = u64::try_from(now.saturating_duration_since(last).as_millis())
                    .unwrap_or(u64::MAX);
                self.units
                    .saturating_add(ms.saturating_mul(per_minute))
                    .min(cap)
            }
        };
        // Only whole elapsed milliseconds are credited; the remainder stays for the next call.
        self.last = Some(match self.last {
            Some(last) => {
                let whole = now.saturating_duration_since(last).as_millis();
                last + Duration::from_millis(u64::try_from(whole).unwrap_or(u64::MAX))
            }
            None => now,
        });
        if self.units >= Self::UNIT {
            self.units -= Self::UNIT;
            true
        } else {
            false
        }
    }
}

/// Work done but not yet committed.
#[derive(Debug, Default)]
struct Pending {
    acks: Vec<AckToken>,
    replies: Vec<(oneshot::Sender<PushAnswer>, PushAnswer)>,
    intervals: Vec<FootfallInterval>,
    /// Readings per outcome, in [`super::READING_OUTCOMES`] order; counted once committed.
    outcomes: [u64; 4],
    /// The counter or presence changed: the state must be stored before anything is answered.
    dirty: bool,
    messages: usize,
}

impl Pending {
    fn needs_commit(&self) -> bool {
        self.dirty || !self.intervals.is_empty()
    }

    fn is_empty(&self) -> bool {
        !self.needs_commit() && self.acks.is_empty() && self.replies.is_empty()
    }

    /// Puts an earlier, failed batch back in front of this one.
    fn prepend(&mut self, mut earlier: Pending) {
        earlier.acks.append(&mut self.acks);
        self.acks = earlier.acks;
        earlier.intervals.append(&mut self.intervals);
        self.intervals = earlier.intervals;
        for (a, b) in self.outcomes.iter_mut().zip(earlier.outcomes) {
            *a += b;
        }
        self.messages += earlier.messages;
        self.dirty = true;
    }
}

type Commit = Pin<Box<dyn Future<Output = Result<usize, LedgerError>> + Send>>;

struct InFlight {
    commit: Commit,
    done: Pending,
}

/// A refusal: its metric label and what the log and the HTTP answer say.
struct Refusal {
    reason: &'static str,
    message: String,
}

/// The ingest task's state.
#[derive(Debug)]
pub(crate) struct Ingest {
    shared: Arc<FootfallShared>,
    ledger: Ledger,
    time: Arc<HubTime>,
    cameras: Vec<CameraRt>,
    /// Sorted by zone.
    zones: Vec<ZoneRt>,
    counter: FootfallCounter,
    presence: CameraPresence,
    zones_since: BTreeMap<String, i64>,
    flood: Vec<FloodBucket>,
    per_minute: u64,
    silence_timeout_ms: i64,
    max_payload: usize,
    close_every: Duration,
    acker: Option<Acker>,
    pending: Pending,
    last_state_len: usize,
}

impl Ingest {
    /// Builds the counter and presence from the configuration and the stored state.
    pub(crate) fn new(setup: IngestSetup) -> Ingest {
        let IngestSetup {
            settings,
            ledger,
            shared,
            stored,
            acker,
        } = setup;
        let time = ledger.hub_time();
        let now = time.now();
        let mut zone_map = ZoneMap::new();
        let mut cameras = Vec::with_capacity(settings.cameras.len());
        for c in &settings.cameras {
            let id = CameraId::new(c.id.clone());
            zone_map.assign_camera(id.clone(), EntranceZone::new(c.zone.clone()));
            for (line, zone) in &c.lines {
                zone_map.assign_line(id.clone(), line.clone(), EntranceZone::new(zone.clone()));
            }
            let format = match c.vendor {
                CameraVendor::Axis => CameraFormat::AxisLiveSum {
                    utc_offset_minutes: c.utc_offset_minutes.unwrap_or(0),
                },
                CameraVendor::Xovis => CameraFormat::XovisLogics(XovisConfig {
                    values: match c.values {
                        Some(XovisValuesConfig::Absolute) => XovisValues::Absolute,
                        Some(XovisValuesConfig::Delta) | None => XovisValues::Delta,
                    },
                    forward_is_in: c.forward_is_in.unwrap_or(true),
                }),
                CameraVendor::Hikvision => CameraFormat::HikvisionAlert,
            };
            cameras.push(CameraRt { id, format });
        }
        let zone_list = zone_map.zones();
        let config = FootfallConfig {
            close_after_ms: i64::try_from(settings.effective_close_after_ms()).unwrap_or(i64::MAX),
            ..FootfallConfig::default()
        };
        let restored =
            stored
                .as_deref()
                .and_then(|bytes| match serde_json::from_slice::<Stored>(bytes) {
                    Ok(s) if s.version == STATE_VERSION => Some(s),
                    Ok(s) => {
                        tracing::warn!(
                            version = s.version,
                            "stored camera state has an unknown layout; counting starts afresh"
                        );
                        None
                    }
                    Err(e) => {
                        tracing::warn!(
                            error = %e,
                            "stored camera state is unreadable; counting starts afresh (each \
                             cumulative camera's next reading is a baseline)"
                        );
                        None
                    }
                });
        let last_state_len = stored.as_ref().map_or(1024, Vec::len);
        let mut zones_since = BTreeMap::new();
        let mut zones = Vec::with_capacity(zone_list.len());
        for zone in zone_list {
            let since = restored
                .as_ref()
                .and_then(|s| s.zones_since.get(&zone.0).copied())
                .unwrap_or(now.0);
            zones_since.insert(zone.0.clone(), since);
            zones.push(ZoneRt {
                cameras: zone_map.cameras_of(&zone),
                fill_from: bucket_of(since),
                zone,
            });
        }
        let (counter, mut presence) = match restored {
            Some(s) => (
                FootfallCounter::restore(config, zone_map, s.counter),
                s.presence.bounded(),
            ),
            None => (
                FootfallCounter::new(config, zone_map),
                CameraPresence::new(),
            ),
        };
        let ids: Vec<CameraId> = cameras.iter().map(|c| c.id.clone()).collect();
        presence.configure(&ids, now);
        let flood = vec![
            FloodBucket {
                units: 0,
                last: None
            };
            cameras.len()
        ];
        Ingest {
            shared,
            ledger,
            time,
            cameras,
            zones,
            counter,
            presence,
            zones_since,
            flood,
            per_minute: u64::from(settings.max_messages_per_minute),
            silence_timeout_ms: i64::try_from(settings.silence_timeout_ms).unwrap_or(i64::MAX),
            max_payload: settings.max_payload_bytes,
            close_every: Duration::from_millis(settings.close_every_ms),
            acker,
            pending: Pending::default(),
            last_state_len,
        }
    }

    /// Runs until shutdown: batches, commits, then acknowledges and answers.
    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // Before any message: cameras silent while the agent was down go offline from their last
        // message, and what has finished since is closed.
        self.close(self.time.now());
        self.publish_presence();
        let mut timer = tokio::time::interval_at(
            tokio::time::Instant::now() + self.close_every,
            self.close_every,
        );
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = Backoff::new(100, 5_000);
        let mut inflight: Option<InFlight> = None;
        let mut retry_at: Option<tokio::time::Instant> = None;
        // When the first message of the pending batch came (it is sent by LINGER after that).
        let mut linger_until: Option<tokio::time::Instant> = None;
        let mut stopping = *shutdown.borrow();
        loop {
            if inflight.is_none() && retry_at.is_none() {
                if self.pending.needs_commit() {
                    let due = stopping
                        || self.pending.messages >= MAX_BATCH
                        || !self.pending.intervals.is_empty()
                        || linger_until.is_none_or(|t| t <= tokio::time::Instant::now());
                    if due {
                        inflight = Some(self.send());
                        linger_until = None;
                    }
                } else if !self.pending.is_empty() {
                    // Only refusals nothing remembers (unknown cameras, old retained news): nothing
                    // to store, and nothing earlier is waiting, so they are answered in order now.
                    let done = std::mem::take(&mut self.pending);
                    self.release(done);
                    linger_until = None;
                }
            }
            if stopping && inflight.is_none() && (retry_at.is_some() || self.pending.is_empty()) {
                if self.pending.needs_commit() {
                    tracing::error!(
                        messages = self.pending.messages,
                        "stopping with camera state the ledger could not store; the broker \
                         delivers those messages again"
                    );
                }
                break;
            }
            let can_read = !stopping && self.pending.messages < MAX_BATCH;
            tokio::select! {
                biased;
                result = wait(&mut inflight), if inflight.is_some() => {
                    let Some(f) = inflight.take() else { continue };
                    match result {
                        Ok(events) => {
                            backoff.reset();
                            self.shared.metrics.intervals.inc_by(events as u64);
                            self.shared.metrics.readings(&f.done.outcomes);
                            self.release(f.done);
                        }
                        Err(LedgerError::Closed) => {
                            for (reply, _) in f.done.replies {
                                let _ = reply.send(PushAnswer::Unavailable(
                                    "the ledger is shutting down".into(),
                                ));
                            }
                            break;
                        }
                        Err(e) => {
                            let delay = backoff.next_random_delay();
                            tracing::error!(
                                error = %e,
                                retry_in_ms = delay.as_millis() as u64,
                                "camera counts could not be stored; retrying with what came since"
                            );
                            let mut done = f.done;
                            for (reply, _) in done.replies.drain(..) {
                                // The camera may send again: the counter knows it as a duplicate.
                                let _ = reply.send(PushAnswer::Unavailable(format!(
                                    "the ledger could not store the counts: {e}"
                                )));
                            }
                            self.pending.prepend(done);
                            retry_at = Some(tokio::time::Instant::now() + delay);
                        }
                    }
                }
                () = sleep_until(retry_at), if retry_at.is_some() => {
                    retry_at = None;
                }
                () = sleep_until(linger_until), if linger_until.is_some()
                    && inflight.is_none() && retry_at.is_none() => {}
                _ = shutdown.wait_for(|s| *s), if !stopping => {
                    stopping = true;
                }
                _ = timer.tick(), if !stopping => {
                    self.close(self.time.now());
                    self.publish_presence();
                }
                msg = rx.recv(), if can_read => {
                    let Some(first) = msg else {
                        stopping = true;
                        continue;
                    };
                    if self.pending.messages == 0 && linger_until.is_none() {
                        let idle = inflight.is_none() && retry_at.is_none();
                        let wait = if idle { LINGER } else { Duration::ZERO };
                        linger_until = Some(tokio::time::Instant::now() + wait);
                    }
                    let now = self.time.now();
                    self.tick_presence(now);
                    self.take(first, now);
                    while self.pending.messages < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(m) => self.take(m, now),
                            Err(_) => break,
                        }
                    }
                    self.publish_presence();
                }
            }
        }
        // Dropping the acker tells the MQTT task no more acks come.
        drop(self.acker.take());
    }

    /// Serialises the state once for the whole batch and hands it to the ledger.
    fn send(&mut self) -> InFlight {
        let done = std::mem::take(&mut self.pending);
        let counter = self.counter.snapshot();
        let mut state = Vec::with_capacity(self.last_state_len + 256);
        let encoded = serde_json::to_writer(
            &mut state,
            &StoredRef {
                version: STATE_VERSION,
                zones_since: &self.zones_since,
                counter: &counter,
                presence: &self.presence,
            },
        );
        self.last_state_len = state.len();
        let commit: Commit = match encoded {
            Ok(()) => {
                let ledger = self.ledger.clone();
                let batch = FootfallBatch {
                    state,
                    intervals: done.intervals.clone(),
                };
                Box::pin(async move { ledger.commit_footfall(batch).await })
            }
            Err(e) => {
                let e = LedgerError::Invalid(format!("cannot encode the camera state: {e}"));
                Box::pin(async move { Err(e) })
            }
        };
        InFlight { commit, done }
    }

    /// After the commit: acknowledge the MQTT messages in the order they came, answer pushes.
    fn release(&self, done: Pending) {
        if let Some(acker) = &self.acker {
            for a in &done.acks {
                acker.ack(*a);
            }
        }
        for (reply, answer) in done.replies {
            let _ = reply.send(answer);
        }
    }

    /// Hands the presence of every camera to the API and the `aisle_camera_online` gauges.
    fn publish_presence(&self) {
        for s in self.presence.status() {
            if let Some(c) = self
                .shared
                .camera_index(&s.camera.0)
                .and_then(|i| self.shared.cameras.get(i as usize))
            {
                c.set_presence(s.online, s.last_seen, s.offline_since);
            }
        }
    }

    fn tick_presence(&mut self, now: UtcMillis) {
        let changes = self.presence.tick(now, self.silence_timeout_ms);
        if !changes.is_empty() {
            self.pending.dirty = true;
            for c in changes {
                log_change(&c);
            }
        }
    }

    fn heard(&mut self, camera: usize, now: UtcMillis) {
        let Some(c) = self.cameras.get(camera) else {
            return;
        };
        if let Some(change) = self.presence.heard(&c.id, now) {
            log_change(&change);
        }
        self.pending.dirty = true;
    }

    /// One message from a producer.
    fn take(&mut self, msg: Msg, now: UtcMillis) {
        self.pending.messages += 1;
        match msg {
            Msg::Mqtt {
                camera,
                status,
                topic,
                payload,
                retained,
                ack,
            } => {
                if let Some(a) = ack {
                    self.pending.acks.push(a);
                }
                let Some(cam) = camera
                    .map(|c| c as usize)
                    .filter(|c| *c < self.cameras.len())
                else {
                    let id = topic_camera(&topic);
                    self.shared.refused(
                        None,
                        &shown(id),
                        "unknown_camera",
                        &"no camera with this id is configured for this store",
                        true,
                    );
                    return;
                };
                if status {
                    self.take_status(cam, &payload, retained, now);
                    return;
                }
                if !retained {
                    self.heard(cam, now);
                }
                if let Err(r) = self.take_counts(cam, Ok(&payload), now, None) {
                    self.refuse(cam, &r);
                }
            }
            Msg::Push {
                camera,
                payload,
                reply,
            } => {
                let cam = camera as usize;
                if cam >= self.cameras.len() {
                    let _ = reply.send(PushAnswer::Refused {
                        reason: "unknown_camera",
                        message: "no camera with this id is configured".into(),
                    });
                    return;
                }
                self.heard(cam, now);
                let body = match &payload {
                    Ok(b) => Ok(&b[..]),
                    Err(len) => Err(*len),
                };
                let mut readings = Vec::new();
                match self.take_counts(cam, body, now, Some(&mut readings)) {
                    Ok(outcome) => self
                        .pending
                        .replies
                        .push((reply, PushAnswer::Taken { outcome, readings })),
                    Err(r) => {
                        self.refuse(cam, &r);
                        let _ = reply.send(PushAnswer::Refused {
                            reason: r.reason,
                            message: r.message,
                        });
                    }
                }
            }
        }
    }

    fn take_status(&mut self, cam: usize, payload: &[u8], retained: bool, now: UtcMillis) {
        let text = payload.trim_ascii();
        if text.eq_ignore_ascii_case(b"offline") {
            // A last will is not a sign of life: offline from the camera's last real message.
            let id = &self.cameras[cam].id;
            if let Some(change) = self.presence.last_will(id, now) {
                log_change(&change);
                self.pending.dirty = true;
            }
        } else if text.eq_ignore_ascii_case(b"online") {
            // A retained `online` is what the camera said when it last connected, not now.
            if !retained {
                self.heard(cam, now);
            }
        } else {
            if !retained {
                self.heard(cam, now);
            }
            self.refuse(
                cam,
                &Refusal {
                    reason: "bad_status",
                    message: "status must be `online` or `offline`".into(),
                },
            );
        }
    }

    fn refuse(&self, cam: usize, r: &Refusal) {
        let id = &self.cameras[cam].id;
        self.shared
            .refused(u32::try_from(cam).ok(), id, r.reason, &r.message, true);
    }

    /// Parses a count message and feeds its readings to the counter. `Ok` when at least one
    /// reading was taken (the best outcome); a message whose every reading is refused is
    /// refused with the first reason.
    fn take_counts(
        &mut self,
        cam: usize,
        payload: Result<&[u8], Option<u64>>,
        now: UtcMillis,
        mut answers: Option<&mut Vec<ReadingAnswer>>,
    ) -> Result<&'static str, Refusal> {
        if !self.flood[cam].take(self.per_minute, Instant::now()) {
            return Err(Refusal {
                reason: "flood",
                message: format!(
                    "more than {} messages in a minute from this camera",
                    self.per_minute
                ),
            });
        }
        let payload = payload.map_err(|len| Refusal {
            reason: "too_large",
            message: match len {
                Some(len) => format!(
                    "payload of {len} bytes exceeds the {}-byte limit",
                    self.max_payload
                ),
                None => format!("payload exceeds the {}-byte limit", self.max_payload),
            },
        })?;
        let camera = &self.cameras[cam];
        let readings = ff::parse_payload(camera.format, &camera.id, payload, self.max_payload)
            .map_err(|e| Refusal {
                reason: e.reason(),
                message: e.to_string(),
            })?;
        let mut best: Option<(usize, &'static str)> = None;
        let mut first_refusal: Option<Refusal> = None;
        for reading in &readings {
            match self.counter.observe(reading, now) {
                Ok(outcome) => {
                    let (rank, label) = match outcome {
                        Outcome::Counted(_) => (0, "counted"),
                        Outcome::Baseline => (1, "baseline"),
                        Outcome::Duplicate => (2, "duplicate"),
                        Outcome::Stale => (3, "stale"),
                    };
                    self.pending.outcomes[rank] += 1;
                    self.pending.dirty = true;
                    if best.is_none_or(|(r, _)| rank < r) {
                        best = Some((rank, label));
                    }
                    if let Some(a) = answers.as_deref_mut() {
                        a.push(ReadingAnswer {
                            line: reading.line.clone(),
                            outcome: label.to_string(),
                            reason: None,
                        });
                    }
                }
                Err(e) => {
                    // The counter may have moved a cumulative baseline even on a refusal.
                    self.pending.dirty = true;
                    if let Some(a) = answers.as_deref_mut() {
                        a.push(ReadingAnswer {
                            line: reading.line.clone(),
                            outcome: "refused".to_string(),
                            reason: Some(e.reason().to_string()),
                        });
                    }
                    let r = Refusal {
                        reason: e.reason(),
                        message: e.to_string(),
                    };
                    if first_refusal.is_none() {
                        first_refusal = Some(r);
                    } else {
                        // Part of a message refused: counted per reading, the message stands.
                        self.refuse_reading(cam, &r);
                    }
                }
            }
        }
        match (best, first_refusal) {
            (Some((_, label)), refusal) => {
                if let Some(r) = refusal {
                    self.refuse_reading(cam, &r);
                }
                self.shared.accepted(u32::try_from(cam).unwrap_or(u32::MAX));
                Ok(label)
            }
            (None, Some(r)) => Err(r),
            (None, None) => Err(Refusal {
                reason: "not_a_count",
                message: "the message holds no counting line".into(),
            }),
        }
    }

    fn refuse_reading(&self, cam: usize, r: &Refusal) {
        self.shared.refused(
            u32::try_from(cam).ok(),
            &self.cameras[cam].id,
            r.reason,
            &r.message,
            false,
        );
    }

    /// Every `close_every_ms`, and once at start:
    ///
    /// * cameras silent longer than the silence timeout go offline from their last message;
    /// * the counter closes every interval that ended `close_after_ms` ago;
    /// * one `FootfallCounted` per (zone, newly closed interval): the counter's counts, or zero
    ///   visitors when nobody was counted, with `cameras_missing` naming the zone's cameras that
    ///   were offline at any instant of it. Every zone gets an event for every interval, even
    ///   when all its cameras were missing, so HQ sees "missing", never a silent gap. Intervals
    ///   before the zone was first configured are not filled, and at most two days at once;
    /// * an interval the counter hands out again for one already closed (a late reading) goes
    ///   out as an additional event with just its counts (HQ sums them).
    fn close(&mut self, now: UtcMillis) {
        self.tick_presence(now);
        let before = self.counter.closed_before();
        let closed = self.counter.close_until(now);
        let Some(upto) = self.counter.closed_before() else {
            return;
        };
        if closed.is_empty() && before == Some(upto) {
            return;
        }
        self.pending.dirty = true;
        let mut out: Vec<FootfallInterval> = Vec::with_capacity(closed.len());
        let mut first: HashSet<(i64, usize)> = HashSet::new();
        for iv in closed {
            let late = before.is_some_and(|b| iv.start < b);
            let zone = self.zone_index(&iv.zone);
            let missing = match zone {
                Some(z) if !late => {
                    first.insert((iv.start.0, z));
                    self.missing(z, iv.start, iv.end)
                }
                _ => Vec::new(),
            };
            out.extend(event(
                iv.zone.0,
                iv.start,
                iv.counts.entered,
                iv.counts.exited,
                iv.occupancy,
                missing,
            ));
        }
        // Newly closed: from the previous boundary, at most two days back, and for each zone
        // never before the interval it was first configured in.
        let from = before.map_or(i64::MIN, |b| b.0).max(
            upto.0
                .saturating_sub(MAX_FILL_INTERVALS * FOOTFALL_INTERVAL_MS),
        );
        let first_zone_start = self
            .zones
            .iter()
            .map(|z| z.fill_from)
            .min()
            .unwrap_or(upto.0);
        let mut start = bucket_of(from.max(first_zone_start));
        if start < from {
            start += FOOTFALL_INTERVAL_MS;
        }
        while start < upto.0 {
            let s = UtcMillis(start);
            let e = UtcMillis(start + FOOTFALL_INTERVAL_MS);
            for z in 0..self.zones.len() {
                if start >= self.zones[z].fill_from && !first.contains(&(start, z)) {
                    let missing = self.missing(z, s, e);
                    out.extend(event(self.zones[z].zone.0.clone(), s, 0, 0, None, missing));
                }
            }
            start += FOOTFALL_INTERVAL_MS;
        }
        out.sort_by(|a, b| (a.start, &a.zone).cmp(&(b.start, &b.zone)));
        self.pending.intervals.extend(out);
    }

    fn zone_index(&self, zone: &EntranceZone) -> Option<usize> {
        self.zones.binary_search_by(|z| z.zone.cmp(zone)).ok()
    }

    fn missing(&self, zone: usize, start: UtcMillis, end: UtcMillis) -> Vec<String> {
        self.zones[zone]
            .cameras
            .iter()
            .filter(|c| self.presence.missing_in(c, start, end))
            .map(|c| c.0.clone())
            .collect()
    }
}

/// A protocol interval, within the protocol's bounds (a broken count is capped, never refused:
/// an invalid event would stop the upload of everything after it).
fn event(
    zone: String,
    start: UtcMillis,
    entered: u64,
    exited: u64,
    occupancy: Option<u64>,
    cameras_missing: Vec<String>,
) -> Option<FootfallInterval> {
    let cap = |n: u64| {
        if n > MAX_FOOTFALL_VISITORS {
            tracing::warn!(
                zone = %zone,
                start = start.0,
                count = n,
                "footfall count above the protocol's bound; capped"
            );
        }
        n.min(MAX_FOOTFALL_VISITORS)
    };
    let iv = FootfallInterval {
        start,
        end: UtcMillis(start.0 + FOOTFALL_INTERVAL_MS),
        entered: cap(entered),
        exited: cap(exited),
        occupancy: occupancy.map(cap),
        cameras_missing,
        zone,
    };
    match iv.validate() {
        Ok(()) => Some(iv),
        Err(e) => {
            tracing::error!(zone = %iv.zone, start = start.0, error = %e, "footfall interval dropped");
            None
        }
    }
}

fn bucket_of(t: i64) -> i64 {
    t.div_euclid(FOOTFALL_INTERVAL_MS) * FOOTFALL_INTERVAL_MS
}

fn log_change(change: &PresenceChange) {
    match change {
        PresenceChange::Online {
            camera,
            offline_since,
        } => tracing::info!(%camera, offline_since = offline_since.0, "camera online"),
        PresenceChange::Offline { camera, since } => {
            tracing::warn!(%camera, since = since.0, "camera offline: its counts are missing data")
        }
    }
}

/// The camera id in `<prefix>/<store>/camera/<id>/<kind>`.
fn topic_camera(topic: &[u8]) -> &[u8] {
    let mut levels = topic.rsplit(|b| *b == b'/');
    let _kind = levels.next();
    levels.next().unwrap_or_default()
}

async fn wait(inflight: &mut Option<InFlight>) -> Result<usize, LedgerError> {
    match inflight {
        Some(f) => f.commit.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flood_bucket_allows_the_rate_and_refills() {
        let mut b = FloodBucket {
            units: 0,
            last: None,
        };
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(b.take(3, t0), "message {i} within the burst");
        }
        assert!(!b.take(3, t0), "the fourth in the same instant is a flood");
        // 3 per minute: one message every 20 s.
        assert!(!b.take(3, t0 + Duration::from_secs(19)));
        assert!(b.take(3, t0 + Duration::from_secs(20)));
        assert!(!b.take(3, t0 + Duration::from_secs(20)));
        // Never more than the burst, however long it was quiet.
        let later = t0 + Duration::from_secs(3_600);
        for _ in 0..3 {
            assert!(b.take(3, later));
        }
        assert!(!b.take(3, later));
    }

    #[test]
    fn topic_camera_is_the_level_before_the_kind() {
        assert_eq!(
            topic_camera(b"aisle/v1/S001/camera/door-1/counts"),
            b"door-1"
        );
        assert_eq!(topic_camera(b"counts"), b"");
    }
}
