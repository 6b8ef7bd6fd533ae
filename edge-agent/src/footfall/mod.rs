//! Camera ingestion: people counts from the store's entrance cameras, normalised into 15-minute
//! intervals per entrance zone in the ledger.
//!
//! ```text
//! cameras ──MQTT──> mqtt task ──┐                         (acks after the commit, in order)
//!                               ├─ bounded channel ─> ingest task ── FootfallBatch ──> ledger writer
//! cameras ──HTTP──> api ────────┘  (answered after the commit)   (snapshot + intervals, one tx)
//! ```
//!
//! One ingest task owns the [`FootfallCounter`](aisle_drivers::footfall::FootfallCounter) and the
//! [`CameraPresence`](aisle_drivers::footfall::CameraPresence). It takes everything waiting (up to
//! [`MAX_BATCH`] messages), feeds it through the parsers and the counter, and writes ONE ledger
//! command per batch: the counter+presence snapshot and the intervals it closed, in one
//! transaction. Only after that commit are the batch's MQTT messages acknowledged and its HTTP
//! pushes answered, so a message the broker saw acknowledged is in the ledger's state, and one
//! that was not is delivered again and recognised as a duplicate by the restored counter.
//!
//! Refusals (malformed, personal data, flood, unknown camera, ...) never touch the ledger: they
//! are counted in `aisle_footfall_refused_total{reason}` and logged at most once per 10 s per
//! camera and reason.
use std::collections::HashMap;
use std::fmt::Display;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aisle_protocol::UtcMillis;
use axum::body::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::clock::rfc3339;
use crate::config::{CameraVendor, FootfallSettings};

mod ingest;
mod mqtt;

pub(crate) use ingest::{Ingest, IngestSetup};
pub use mqtt::RECEIVE_MAXIMUM;
pub(crate) use mqtt::{MqttSetup, spawn as spawn_mqtt};

/// Most messages handled in one batch (one ledger command).
pub const MAX_BATCH: usize = 2_000;
/// Messages waiting for the ingest task before producers wait.
const QUEUE_DEPTH: usize = 4_096;
/// A refusal is logged at most this often per camera and reason.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Every reason a camera message can be refused for: the drivers' labels
/// (`FootfallError::reason`) plus the agent's own. The label set of
/// `aisle_footfall_refused_total` is exactly this list.
pub const REFUSAL_REASONS: &[&str] = &[
    "too_large",
    "empty",
    "not_utf8",
    "malformed_json",
    "malformed_xml",
    "missing_field",
    "invalid_field",
    "not_a_count",
    "personal_data",
    "unknown_camera",
    "absurd_jump",
    "mixed_count_kinds",
    "overlapping_interval",
    // A camera sent more than `max_messages_per_minute`.
    "flood",
    // A status message that is neither `online` nor `offline`.
    "bad_status",
];

/// What the counter made of an accepted reading: the label set of
/// `aisle_footfall_readings_total{outcome}`.
pub const READING_OUTCOMES: &[&str] = &["counted", "baseline", "duplicate", "stale"];

/// The MQTT client id the agent uses: its persistent session at the broker is keyed by it.
pub fn mqtt_client_id(store: &str, gateway: &str) -> String {
    format!("aisle-agent-{store}-{gateway}")
}

/// Metrics of camera ingestion (registered without the `aisle_agent` prefix, as
/// `aisle_footfall_*` and `aisle_camera_online`).
#[derive(Debug)]
pub struct FootfallMetrics {
    refused_family: Family<Vec<(String, String)>, Counter>,
    refused: Vec<(&'static str, Counter)>,
    readings_family: Family<Vec<(String, String)>, Counter>,
    /// In [`READING_OUTCOMES`] order.
    readings: Vec<Counter>,
    online_family: Family<Vec<(String, String)>, Gauge>,
    pub intervals: Counter,
    pub mqtt_up: Gauge,
}

impl FootfallMetrics {
    fn new(cameras: &[CameraShared]) -> FootfallMetrics {
        let refused_family = Family::<Vec<(String, String)>, Counter>::default();
        let refused = REFUSAL_REASONS
            .iter()
            .map(|r| {
                let labels = vec![("reason".to_string(), (*r).to_string())];
                (*r, refused_family.get_or_create(&labels).clone())
            })
            .collect();
        let readings_family = Family::<Vec<(String, String)>, Counter>::default();
        let readings = READING_OUTCOMES
            .iter()
            .map(|o| {
                let labels = vec![("outcome".to_string(), (*o).to_string())];
                readings_family.get_or_create(&labels).clone()
            })
            .collect();
        let online_family = Family::<Vec<(String, String)>, Gauge>::default();
        for c in cameras {
            let labels = vec![("camera".to_string(), c.id.clone())];
            online_family.get_or_create(&labels).set(0);
        }
        FootfallMetrics {
            refused_family,
            refused,
            readings_family,
            readings,
            online_family,
            intervals: Counter::default(),
            mqtt_up: Gauge::default(),
        }
    }

    /// Registers every footfall metric in `registry` (prefix `aisle`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "footfall_refused",
            "Camera messages (or readings in them) refused, by reason; the ledger is untouched",
            self.refused_family.clone(),
        );
        registry.register(
            "footfall_readings",
            "Camera readings taken by the counter and committed, by outcome",
            self.readings_family.clone(),
        );
        registry.register(
            "camera_online",
            "1 while a configured camera is reporting, 0 while it is offline or silent",
            self.online_family.clone(),
        );
        registry.register(
            "footfall_intervals",
            "FootfallCounted events written to the ledger",
            self.intervals.clone(),
        );
        registry.register(
            "footfall_mqtt_up",
            "1 while the agent is connected to the camera MQTT broker",
            self.mqtt_up.clone(),
        );
    }

    /// `aisle_footfall_readings_total{outcome}`: readings committed with this outcome.
    pub fn readings_total(&self, outcome: &str) -> u64 {
        READING_OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .and_then(|i| self.readings.get(i))
            .map_or(0, Counter::get)
    }

    /// `aisle_footfall_refused_total{reason}`.
    pub fn refused_total(&self, reason: &str) -> u64 {
        let labels = vec![("reason".to_string(), reason.to_string())];
        self.refused_family.get_or_create(&labels).get()
    }

    fn refused(&self, reason: &str) {
        match self.refused.iter().find(|(r, _)| *r == reason) {
            Some((_, c)) => {
                c.inc();
            }
            None => {
                // A reason a newer driver added: still counted, under its own label.
                let labels = vec![("reason".to_string(), reason.to_string())];
                self.refused_family.get_or_create(&labels).inc();
            }
        }
    }

    fn readings(&self, counts: &[u64; 4]) {
        for (c, n) in self.readings.iter().zip(counts) {
            if *n > 0 {
                c.inc_by(*n);
            }
        }
    }

    fn online_gauge(&self, camera: &str) -> Gauge {
        let labels = vec![("camera".to_string(), camera.to_string())];
        self.online_family.get_or_create(&labels).clone()
    }
}

const NONE_MS: i64 = i64::MIN;

/// One configured camera as the API and metrics see it; the ingest task keeps it current.
#[derive(Debug)]
pub(crate) struct CameraShared {
    pub(crate) id: String,
    vendor: CameraVendor,
    zone: String,
    online: AtomicBool,
    last_seen: AtomicI64,
    offline_since: AtomicI64,
    accepted: AtomicU64,
    refused: AtomicU64,
    /// Index + 1 into [`REFUSAL_REASONS`]; 0 = none.
    last_refusal: AtomicUsize,
    online_gauge: Gauge,
}

impl CameraShared {
    fn set_presence(&self, online: bool, last_seen: Option<UtcMillis>, since: Option<UtcMillis>) {
        self.online.store(online, Ordering::Relaxed);
        self.last_seen
            .store(last_seen.map_or(NONE_MS, |t| t.0), Ordering::Relaxed);
        self.offline_since
            .store(since.map_or(NONE_MS, |t| t.0), Ordering::Relaxed);
        self.online_gauge.set(i64::from(online));
    }
}

/// `GET /v1/cameras`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CamerasView {
    /// `up`, `down`, or `off` when no broker is configured.
    pub mqtt: String,
    pub cameras: Vec<CameraView>,
}

/// One configured camera.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CameraView {
    pub id: String,
    pub vendor: String,
    pub zone: String,
    /// Reporting now (heard within the silence timeout, no last will since).
    pub online: bool,
    /// RFC 3339, hub-corrected time of its last message.
    pub last_seen: Option<String>,
    /// RFC 3339: offline since (its last message, or when it was configured if never heard).
    pub offline_since: Option<String>,
    /// Count messages taken since the agent started.
    pub accepted: u64,
    /// Count messages refused since the agent started.
    pub refused: u64,
    /// The reason of the latest refusal.
    pub last_refusal: Option<String>,
}

/// What an HTTP push is answered (after the commit for readings taken).
#[derive(Debug)]
pub(crate) enum PushAnswer {
    Taken {
        outcome: &'static str,
        readings: Vec<ReadingAnswer>,
    },
    Refused {
        reason: &'static str,
        message: String,
    },
    Unavailable(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadingAnswer {
    /// The counting line (Xovis logic id, Hikvision channel) when the camera has several.
    pub line: Option<String>,
    /// counted, baseline, duplicate, stale, or refused.
    pub outcome: String,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An MQTT message's acknowledgement, owed after the commit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AckToken {
    pub pkid: u16,
    /// The connection it came on; an ack is only sent on that same connection.
    pub generation: u64,
}

/// What the producers hand the ingest task.
#[derive(Debug)]
pub(crate) enum Msg {
    Mqtt {
        /// Index of the configured camera, `None` for an id not configured.
        camera: Option<u32>,
        status: bool,
        topic: Bytes,
        payload: Bytes,
        /// Delivered from the broker's retained store (old news, not a sign of life).
        retained: bool,
        ack: Option<AckToken>,
    },
    Push {
        camera: u32,
        /// The body, or its length when it was over the limit (refused unread).
        payload: Result<Bytes, Option<u64>>,
        reply: oneshot::Sender<PushAnswer>,
    },
}

/// Per (camera index, or `u32::MAX` for ids not configured; reason): when it was last logged
/// and how many were not logged since.
type RefusalLog = HashMap<(u32, &'static str), (Instant, u64)>;

/// Camera ingestion as the API, the metrics and the agent handle see it.
#[derive(Debug)]
pub struct FootfallShared {
    pub(crate) cameras: Vec<CameraShared>,
    index: HashMap<String, u32>,
    pub metrics: FootfallMetrics,
    refusal_log: Mutex<RefusalLog>,
    tx: Option<mpsc::Sender<Msg>>,
    mqtt_configured: bool,
    mqtt_up: AtomicBool,
    pub(crate) max_payload_bytes: usize,
}

impl FootfallShared {
    /// The shared state, and the receiving end of the ingest channel when there are cameras.
    pub(crate) fn new(
        settings: Option<&FootfallSettings>,
    ) -> (Arc<FootfallShared>, Option<mpsc::Receiver<Msg>>) {
        let default = FootfallSettings::default();
        let s = settings.unwrap_or(&default);
        let mut cameras: Vec<CameraShared> = s
            .cameras
            .iter()
            .map(|c| CameraShared {
                id: c.id.clone(),
                vendor: c.vendor,
                zone: c.zone.clone(),
                online: AtomicBool::new(false),
                last_seen: AtomicI64::new(NONE_MS),
                offline_since: AtomicI64::new(NONE_MS),
                accepted: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                last_refusal: AtomicUsize::new(0),
                online_gauge: Gauge::default(),
            })
            .collect();
        let metrics = FootfallMetrics::new(&cameras);
        for c in &mut cameras {
            c.online_gauge = metrics.online_gauge(&c.id);
        }
        let index = cameras
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.clone(), u32::try_from(i).unwrap_or(u32::MAX)))
            .collect();
        let (tx, rx) = if cameras.is_empty() {
            (None, None)
        } else {
            let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
            (Some(tx), Some(rx))
        };
        let shared = FootfallShared {
            cameras,
            index,
            metrics,
            refusal_log: Mutex::new(HashMap::new()),
            tx,
            mqtt_configured: s.mqtt.is_some() && !s.cameras.is_empty(),
            mqtt_up: AtomicBool::new(false),
            max_payload_bytes: s.max_payload_bytes,
        };
        (Arc::new(shared), rx)
    }

    /// The configured camera with this id.
    pub(crate) fn camera_index(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }

    pub(crate) fn sender(&self) -> Option<&mpsc::Sender<Msg>> {
        self.tx.as_ref()
    }

    pub(crate) fn set_mqtt_up(&self, up: bool) {
        self.mqtt_up.store(up, Ordering::Relaxed);
        self.metrics.mqtt_up.set(i64::from(up));
    }

    /// Every configured camera, in configuration order.
    pub fn view(&self) -> CamerasView {
        let opt = |v: i64| (v != NONE_MS).then(|| rfc3339(UtcMillis(v)));
        CamerasView {
            mqtt: if !self.mqtt_configured {
                "off"
            } else if self.mqtt_up.load(Ordering::Relaxed) {
                "up"
            } else {
                "down"
            }
            .to_string(),
            cameras: self
                .cameras
                .iter()
                .map(|c| CameraView {
                    id: c.id.clone(),
                    vendor: c.vendor.as_str().to_string(),
                    zone: c.zone.clone(),
                    online: c.online.load(Ordering::Relaxed),
                    last_seen: opt(c.last_seen.load(Ordering::Relaxed)),
                    offline_since: opt(c.offline_since.load(Ordering::Relaxed)),
                    accepted: c.accepted.load(Ordering::Relaxed),
                    refused: c.refused.load(Ordering::Relaxed),
                    last_refusal: c
                        .last_refusal
                        .load(Ordering::Relaxed)
                        .checked_sub(1)
                        .and_then(|i| REFUSAL_REASONS.get(i))
                        .map(|r| (*r).to_string()),
                })
                .collect(),
        }
    }

    pub(crate) fn accepted(&self, camera: u32) {
        if let Some(c) = self.cameras.get(camera as usize) {
            c.accepted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a refusal and logs it, at most once per [`LOG_EVERY`] per camera and reason (ids
    /// that are not configured share one budget, and are never a metric label).
    pub(crate) fn refused(
        &self,
        camera: Option<u32>,
        shown_id: &dyn Display,
        reason: &'static str,
        detail: &dyn Display,
        message_counted: bool,
    ) {
        self.metrics.refused(reason);
        if let Some(c) = camera.and_then(|i| self.cameras.get(i as usize)) {
            if message_counted {
                c.refused.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(i) = REFUSAL_REASONS.iter().position(|r| *r == reason) {
                c.last_refusal.store(i + 1, Ordering::Relaxed);
            }
        }
        let key = (camera.unwrap_or(u32::MAX), reason);
        let due = {
            let mut log = match self.refusal_log.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            log_due(&mut log, key, Instant::now())
        };
        let Some(suppressed) = due else {
            return;
        };
        tracing::warn!(
            camera = %shown_id,
            reason,
            suppressed,
            "camera message refused: {detail}"
        );
    }
}

/// Whether a refusal with this key is logged now: `Some(refusals not logged since the last
/// line)`, or `None` within [`LOG_EVERY`] of the last line. The map holds one entry per
/// configured camera and reason (plus one per reason for ids not configured): bounded.
fn log_due(log: &mut RefusalLog, key: (u32, &'static str), now: Instant) -> Option<u64> {
    match log.get_mut(&key) {
        Some((last, n)) if now.saturating_duration_since(*last) < LOG_EVERY => {
            *n += 1;
            None
        }
        Some((last, n)) => {
            *last = now;
            Some(std::mem::take(n))
        }
        None => {
            log.insert(key, (now, 0));
            Some(0)
        }
    }
}

/// A camera id from a topic or URL made safe to log: at most 64 characters, escaped.
pub(crate) fn shown(id: &[u8]) -> String {
    let text = String::from_utf8_lossy(id);
    let cut: String = text.chars().take(64).collect();
    format!("{cut:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_logged_at_most_every_ten_seconds_per_camera_and_reason() {
        let mut log = RefusalLog::new();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(log_due(&mut log, (0, "flood"), at(0)), Some(0));
        assert_eq!(log_due(&mut log, (0, "flood"), at(1)), None);
        assert_eq!(log_due(&mut log, (0, "flood"), at(9)), None);
        // Another reason or another camera has its own budget.
        assert_eq!(log_due(&mut log, (0, "too_large"), at(9)), Some(0));
        assert_eq!(log_due(&mut log, (1, "flood"), at(9)), Some(0));
        // Ten seconds on: logged again, saying how many were not.
        assert_eq!(log_due(&mut log, (0, "flood"), at(10)), Some(2));
        assert_eq!(log_due(&mut log, (0, "flood"), at(11)), None);
        // Ids not configured share one key per reason, so random ids cannot grow the map.
        for _ in 0..100 {
            log_due(&mut log, (u32::MAX, "unknown_camera"), at(12));
        }
        assert_eq!(log.len(), 4);
    }

    #[test]
    fn metric_labels_are_the_configured_cameras_and_the_fixed_reasons() {
        let settings: FootfallSettings =
            toml::from_str("[[cameras]]\nid = \"door-1\"\nvendor = \"axis\"\nzone = \"Main\"\n")
                .unwrap();
        let (shared, rx) = FootfallShared::new(Some(&settings));
        assert!(rx.is_some());
        shared.refused(None, &"x", "unknown_camera", &"no such camera", true);
        shared.refused(Some(0), &"door-1", "flood", &"too many", true);
        let mut registry = Registry::with_prefix("aisle");
        shared.metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("aisle_footfall_refused_total{reason=\"flood\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("aisle_footfall_refused_total{reason=\"bad_status\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("aisle_camera_online{camera=\"door-1\"} 0"),
            "{text}"
        );
        assert!(!text.contains("camera=\"x\""), "{text}");
        let view = shared.view();
        assert_eq!(view.mqtt, "off");
        assert_eq!(view.cameras[0].refused, 1);
        assert_eq!(view.cameras[0].last_refusal.as_deref(), Some("flood"));
        // No cameras: nothing to ingest.
        let (shared, rx) = FootfallShared::new(None);
        assert!(rx.is_none() && shared.sender().is_none() && shared.view().cameras.is_empty());
    }
}
