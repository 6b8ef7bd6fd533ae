//! Electronic shelf labels at the store: bindings with a technician flow (scan the label, scan
//! the product), the bulk import, the [`planner::LabelPlanner`] that brings every bound label to
//! its product's active price through the access point, and previews drawn by the tag's own
//! firmware renderer.
//!
//! ```text
//! ledger (active prices, bindings, confirmed content) ──reads──▶ LabelPlanner (thread esl-planner)
//!     ▲ LabelConfirmed / LabelNotUpdated (batched, one command)      │ RadioPacket
//!     └──────────────────────────────────────────────────────────────┤
//!                     ApEvent (std channel) ◀── access_point::spawn ◀┘ (thread esl-ap, serial)
//! ```
//!
//! Decision: a label changes when its price becomes active, not before. Tags have no clock and
//! apply a frame when it arrives, so a pre-sent price would show early; the planner sends at
//! activation (the activator runs on hub-corrected time) and the lane keeps charging the lower of
//! the active price and what the shelf confirmed meanwhile (`ledger::labels::shelf_price`).
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aisle_drivers::esl::access_point;
use aisle_drivers::esl::{ApConfig, ApLinkStatus, LabelFont, NameRenderer};
use aisle_protocol::Gtin;
use aisle_protocol::UtcMillis;
use aisle_protocol::esl::{ContentHash, LabelId, Panel};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ledger::Ledger;
use crate::ledger::labels::parse_panel;

pub mod import;
pub mod planner;
pub mod preview;

pub use planner::{LabelPlanner, PlannerSettings};

/// `[labels]`: electronic shelf labels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSettings {
    /// The access point's serial device, preferably a stable udev name
    /// (`/dev/serial/by-id/...`). Absent: bindings, previews and price integrity work, but no
    /// label is driven.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_point: Option<String>,
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// The panel of a label whose binding names none: bw290, bwr290, bw420 or bwr420.
    #[serde(default = "default_panel")]
    pub panel: String,
    /// A label that has not confirmed its new price this long after the price became active is
    /// recorded as "not updated" (once per price version); the planner keeps trying.
    #[serde(default = "default_not_updated_after_ms")]
    pub not_updated_after_ms: u64,
    /// First retry of a label that did not confirm (full jitter, doubling).
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
    /// Longest wait between two tries of one label.
    #[serde(default = "default_retry_cap_ms")]
    pub retry_cap_ms: u64,
    /// Radio packets handed to the access-point driver and not yet finished on the link. A
    /// store-wide price change hands one per label at once.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_baud() -> u32 {
    115_200
}
fn default_panel() -> String {
    "bw290".into()
}
fn default_not_updated_after_ms() -> u64 {
    600_000
}
fn default_retry_base_ms() -> u64 {
    10_000
}
fn default_retry_cap_ms() -> u64 {
    300_000
}
fn default_queue() -> usize {
    65_536
}

impl Default for LabelSettings {
    fn default() -> Self {
        LabelSettings {
            access_point: None,
            baud: default_baud(),
            panel: default_panel(),
            not_updated_after_ms: default_not_updated_after_ms(),
            retry_base_ms: default_retry_base_ms(),
            retry_cap_ms: default_retry_cap_ms(),
            queue: default_queue(),
        }
    }
}

impl LabelSettings {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(p) = &self.access_point
            && (p.trim().is_empty() || p.len() > 4096)
        {
            return Err("labels.access_point must name a serial device".into());
        }
        if parse_panel(&self.panel).is_none() {
            return Err(format!(
                "labels.panel '{}' is not one of bw290, bwr290, bw420, bwr420",
                self.panel
            ));
        }
        if !(1_200..=4_000_000).contains(&self.baud) {
            return Err("labels.baud must be between 1200 and 4000000".into());
        }
        if self.not_updated_after_ms == 0 || self.not_updated_after_ms > 7 * 86_400_000 {
            return Err("labels.not_updated_after_ms must be between 1 ms and 7 days".into());
        }
        if self.retry_base_ms == 0 || self.retry_cap_ms < self.retry_base_ms {
            return Err("labels.retry_base_ms must be above 0 and at most retry_cap_ms".into());
        }
        if !(16..=1_000_000).contains(&self.queue) {
            return Err("labels.queue must be between 16 and 1000000".into());
        }
        Ok(())
    }

    pub fn default_panel(&self) -> Panel {
        parse_panel(&self.panel).unwrap_or(Panel::Bw290)
    }

    pub fn planner(&self) -> PlannerSettings {
        PlannerSettings {
            not_updated_after_ms: i64::try_from(self.not_updated_after_ms).unwrap_or(i64::MAX),
            retry_base: Duration::from_millis(self.retry_base_ms),
            retry_cap: Duration::from_millis(self.retry_cap_ms),
            ..PlannerSettings::default()
        }
    }
}

/// What the planner last heard from a tag and did for it (memory only: telemetry, not ledger
/// state).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagLive {
    pub heard_at: Option<UtcMillis>,
    pub battery_mv: Option<u16>,
    pub temperature_c: Option<i8>,
    pub rssi_dbm: Option<i8>,
    /// The content hash the tag reported, and whether its panel shows it.
    pub content: Option<String>,
    pub displayed: bool,
    /// Tries for the content the planner wants on it now.
    pub attempts: u32,
    pub last_attempt: Option<UtcMillis>,
    pub last_error: Option<String>,
}

/// The planner's counters.
#[derive(Clone, Debug, Default)]
pub struct LabelMetrics {
    /// Labels whose active price they have not confirmed yet.
    pub pending: Gauge,
    /// Labels showing their active price.
    pub confirmed: Gauge,
    /// Labels recorded as "not updated" for their active price (still retried).
    pub not_updated: Gauge,
    /// Pending labels whose current content has not been handed to the access point yet.
    pub unsent: Gauge,
    /// Radio packets handed to the access point.
    pub frames: Counter,
    /// `LabelConfirmed` events written.
    pub confirmations: Counter,
    /// 1 while the access point's link is up.
    pub link_up: Gauge,
    /// Frames from the access point the link dropped (damaged, oversized, replayed...).
    pub link_dropped: Gauge,
}

impl LabelMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "labels_pending",
            "Shelf labels that have not confirmed their product's active price yet",
            self.pending.clone(),
        );
        registry.register(
            "labels_confirmed",
            "Shelf labels showing their product's active price",
            self.confirmed.clone(),
        );
        registry.register(
            "labels_not_updated",
            "Shelf labels recorded as not updated for their active price (still retried)",
            self.not_updated.clone(),
        );
        registry.register(
            "labels_unsent",
            "Pending shelf labels whose content is not yet with the access point",
            self.unsent.clone(),
        );
        registry.register(
            "label_frames",
            "Radio packets handed to the access point",
            self.frames.clone(),
        );
        registry.register(
            "label_confirmations",
            "LabelConfirmed events written",
            self.confirmations.clone(),
        );
        registry.register(
            "label_link_dropped_frames",
            "Frames from the shelf-label access point dropped as damaged, oversized or replayed",
            self.link_dropped.clone(),
        );
        registry.register(
            "label_link_up",
            "1 while the shelf-label access point's link is up",
            self.link_up.clone(),
        );
    }
}

/// Counters a bench or a test reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlannerStats {
    pub labels: u64,
    pub pending: u64,
    pub confirmed: u64,
    pub not_updated: u64,
    /// Pending labels whose content has not been handed to the access point yet: 0 means the
    /// whole change is with the access point.
    pub unsent: u64,
    pub frames: u64,
    /// Planner passes (reloads, events, timers) so far.
    pub passes: u64,
}

/// What the API and the planner share.
#[derive(Debug)]
pub struct LabelsShared {
    pub renderer: NameRenderer,
    pub default_panel: Panel,
    pub metrics: LabelMetrics,
    live: Mutex<HashMap<LabelId, TagLive>>,
    link: Mutex<Option<ApLinkStatus>>,
    stats: Mutex<PlannerStats>,
    passes: AtomicU64,
}

impl LabelsShared {
    pub fn new(settings: Option<&LabelSettings>) -> Result<LabelsShared, String> {
        let font = LabelFont::embedded().map_err(|e| format!("label font: {e}"))?;
        Ok(LabelsShared {
            renderer: NameRenderer::new(font),
            default_panel: settings.map_or(Panel::Bw290, LabelSettings::default_panel),
            metrics: LabelMetrics::default(),
            live: Mutex::new(HashMap::new()),
            link: Mutex::new(None),
            stats: Mutex::new(PlannerStats::default()),
            passes: AtomicU64::new(0),
        })
    }

    /// What the planner last heard from `label`'s tag.
    pub fn live(&self, label: LabelId) -> Option<TagLive> {
        self.live.lock().ok()?.get(&label).cloned()
    }

    pub(crate) fn set_live(&self, label: LabelId, f: impl FnOnce(&mut TagLive)) {
        if let Ok(mut m) = self.live.lock() {
            f(m.entry(label).or_default());
        }
    }

    pub(crate) fn forget_live(&self, label: LabelId) {
        if let Ok(mut m) = self.live.lock() {
            m.remove(&label);
        }
    }

    /// The access point's link (None without an access point configured).
    pub fn link(&self) -> Option<ApLinkStatus> {
        self.link.lock().ok()?.clone()
    }

    pub(crate) fn set_link(&self, s: ApLinkStatus) {
        self.metrics.link_up.set(i64::from(s.is_connected()));
        self.metrics
            .link_dropped
            .set(to_i64(s.stats.dropped.total()));
        if let Ok(mut l) = self.link.lock() {
            *l = Some(s);
        }
    }

    /// The planner's counters (all zero without an access point).
    pub fn stats(&self) -> PlannerStats {
        let mut s = self.stats.lock().map(|s| *s).unwrap_or_default();
        s.passes = self.passes.load(Ordering::Relaxed);
        s
    }

    pub(crate) fn set_stats(&self, s: PlannerStats) {
        self.metrics.pending.set(to_i64(s.pending));
        self.metrics.confirmed.set(to_i64(s.confirmed));
        self.metrics.not_updated.set(to_i64(s.not_updated));
        self.metrics.unsent.set(to_i64(s.unsent));
        if let Ok(mut m) = self.stats.lock() {
            *m = s;
        }
        self.passes.fetch_add(1, Ordering::Relaxed);
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Starts the access-point driver (its own thread, reconnecting with backoff) and the planner
/// (thread `esl-planner`) when `[labels]` names an access point. The returned task ends when
/// the agent shuts down, after the planner wrote what it had. The planner also stops if the
/// agent is dropped without a shutdown (its shutdown sender goes away).
pub fn spawn(
    settings: &LabelSettings,
    ledger: Ledger,
    shared: Arc<LabelsShared>,
    shutdown: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let path = settings.access_point.clone()?;
    let mut ap = ApConfig::new(path.clone());
    ap.baud = settings.baud;
    ap.queue = settings.queue;
    ap.link.queue = settings.queue;
    ap.events = settings.queue;
    let (handle, events) = match access_point::spawn(ap) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, path, "cannot start the access-point driver; labels are not driven");
            return None;
        }
    };
    shared.set_link(handle.status());
    let planner = LabelPlanner::new(settings.planner(), shared, ledger.hub_time());
    let run = planner::PlannerRun {
        planner,
        ledger,
        ap: handle,
        events,
        rt: tokio::runtime::Handle::current(),
        shutdown: shutdown.clone(),
    };
    let thread = match std::thread::Builder::new()
        .name("esl-planner".into())
        .spawn(move || run.run())
    {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the label planner; labels are not driven");
            return None;
        }
    };
    tracing::info!(path, "shelf-label planner started");
    let mut shutdown = shutdown;
    Some(tokio::spawn(async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }))
}

/// Longest scanned text taken (a barcode is a few dozen characters).
pub const MAX_SCAN_CHARS: usize = 64;

/// Strips what a scanner adds around a barcode's data: surrounding whitespace and an AIM
/// symbology identifier (`]C1`, `]E0`, `]Q3`...).
fn scanned(text: &str) -> Result<&str, String> {
    if text.chars().count() > MAX_SCAN_CHARS {
        return Err(format!(
            "scanned text longer than {MAX_SCAN_CHARS} characters"
        ));
    }
    let t = text.trim();
    let t = match t.strip_prefix(']') {
        Some(rest) if rest.len() >= 2 && rest.is_char_boundary(2) => &rest[2..],
        _ => t,
    };
    if t.is_empty() {
        return Err("nothing was scanned".into());
    }
    Ok(t)
}

/// A label id as scanned from the label's barcode: its 8 printed hex digits.
pub fn scan_label(text: &str) -> Result<LabelId, String> {
    let t = scanned(text)?;
    LabelId::parse(t).map_err(|_| {
        format!("'{t}' is not a label id: a shelf label's barcode holds 8 hexadecimal digits")
    })
}

/// A GTIN as scanned from a product: 8, 12, 13 or 14 digits, or a GS1 element string starting
/// with AI (01).
pub fn scan_gtin(text: &str) -> Result<Gtin, String> {
    let t = scanned(text)?;
    let t = t
        .strip_prefix("(01)")
        .or_else(|| (t.len() >= 16 && t.starts_with("01")).then(|| &t[2..16]))
        .map_or(t, |rest| rest.get(..14).unwrap_or(rest));
    Gtin::parse(t).map_err(|e| format!("'{t}' is not a GTIN: {e}"))
}

/// The content hash as shown in the API.
pub fn content_text(c: ContentHash) -> String {
    c.to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn scanned_labels_and_gtins_lose_what_the_scanner_added() {
        assert_eq!(scan_label(" 00a10001\r\n").unwrap(), LabelId(0x00A1_0001));
        assert_eq!(scan_label("]C000A10001").unwrap(), LabelId(0x00A1_0001));
        assert!(scan_label("00A1000").is_err());
        assert!(scan_label("00A1000G").is_err());
        assert!(scan_label("").is_err());
        assert!(scan_label(&"1".repeat(100)).is_err());
        let g = Gtin::parse("4006381333931").unwrap();
        assert_eq!(scan_gtin("]E04006381333931").unwrap(), g);
        assert_eq!(scan_gtin("(01)04006381333931").unwrap(), g);
        assert_eq!(scan_gtin("0104006381333931").unwrap(), g);
        assert_eq!(scan_gtin("010400638133393110ABC").unwrap(), g);
        assert!(scan_gtin("4006381333932").is_err());
        assert!(scan_gtin("]").is_err());
    }

    #[test]
    fn settings_refuse_what_cannot_work() {
        let ok = LabelSettings::default();
        ok.validate().unwrap();
        for bad in [
            LabelSettings {
                panel: "bw999".into(),
                ..LabelSettings::default()
            },
            LabelSettings {
                retry_base_ms: 0,
                ..LabelSettings::default()
            },
            LabelSettings {
                access_point: Some(" ".into()),
                ..LabelSettings::default()
            },
            LabelSettings {
                queue: 1,
                ..LabelSettings::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
