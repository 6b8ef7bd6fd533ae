//! The sync client: a downloader that long-polls the hub's changefeed and an uploader that
//! drains the outbox. Both back off with full jitter, and any success wakes the other, so the
//! drain starts within `backoff_cap_ms` of the link coming back.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aisle_protocol::StoreId;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::clock::rfc3339;
use crate::config::SyncConfig;
use crate::ledger::Ledger;

pub mod backoff;
pub mod client;
mod downloader;
pub mod skew;
mod uploader;

pub use client::{HubClient, SyncError};

/// Measure the skew again (with a short request) when the last sample is older than this.
const SKEW_REFRESH: Duration = Duration::from_secs(60);

/// `GET /v1/sync/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStatus {
    pub store: String,
    pub outbox_depth: u64,
    pub last_seq: u64,
    pub acked_through: u64,
    pub cursor: u64,
    pub link: Link,
    /// RFC 3339 hub time of the last answer from the hub.
    pub last_contact: Option<String>,
    pub clock_skew_ms: i64,
    pub clock_alarm: bool,
    pub last_error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    Up,
    Down,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Task {
    Download = 0,
    Upload = 1,
}

#[derive(Debug, Default)]
struct LinkState {
    up: bool,
    /// Per task: (order it happened in, message); cleared by that task's next success.
    errors: [Option<(u64, String)>; 2],
    order: u64,
    last_skew_sample: Option<Instant>,
}

/// Metrics the sync tasks keep.
#[derive(Clone, Debug, Default)]
pub struct SyncMetrics {
    pub errors: Counter,
    /// Requests the hub answered with a refusal that retrying as-is cannot fix (4xx).
    pub refusals: Counter,
    pub clock_skew_ms: Gauge,
    pub clock_alarm: Gauge,
    pub link_up: Gauge,
}

/// State shared by the sync tasks, the API and the agent handle.
#[derive(Debug)]
pub struct SyncShared {
    store: StoreId,
    skew_alarm_ms: u64,
    link: Mutex<LinkState>,
    alarm_raised: AtomicBool,
    pub(crate) wake_download: Notify,
    pub(crate) wake_upload: Notify,
    pub metrics: SyncMetrics,
}

impl SyncShared {
    pub fn new(store: StoreId, skew_alarm_ms: u64) -> SyncShared {
        SyncShared {
            store,
            skew_alarm_ms,
            link: Mutex::new(LinkState::default()),
            alarm_raised: AtomicBool::new(false),
            wake_download: Notify::new(),
            wake_upload: Notify::new(),
            metrics: SyncMetrics::default(),
        }
    }

    fn with_link<T>(&self, f: impl FnOnce(&mut LinkState) -> T) -> T {
        match self.link.lock() {
            Ok(mut g) => f(&mut g),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// The hub answered and what it said was used.
    pub(crate) fn succeeded(&self, task: Task, skew_sampled: bool) {
        self.with_link(|l| {
            if !l.up {
                tracing::info!("link to the hub is up");
            }
            l.up = true;
            l.errors[task as usize] = None;
            if skew_sampled {
                l.last_skew_sample = Some(Instant::now());
            }
        });
        self.metrics.link_up.set(1);
        // Any success wakes the other task out of its backoff.
        match task {
            Task::Download => self.wake_upload.notify_one(),
            Task::Upload => self.wake_download.notify_one(),
        }
    }

    pub(crate) fn failed(&self, task: Task, error: &str, link_down: bool) {
        self.metrics.errors.inc();
        let repeated = self.with_link(|l| {
            l.order += 1;
            let repeated = l.errors[task as usize]
                .as_ref()
                .is_some_and(|(_, e)| e == error);
            l.errors[task as usize] = Some((l.order, error.to_string()));
            if link_down {
                l.up = false;
            }
            repeated
        });
        if link_down {
            self.metrics.link_up.set(0);
        }
        if repeated {
            tracing::debug!(?task, error, "sync still failing");
        } else {
            tracing::warn!(?task, error, "sync failed");
        }
    }

    /// The hub answered but refused the request in a way retrying cannot fix: the link stays up
    /// (the hub is there), the refusal is the task's `last_error` and is counted.
    pub(crate) fn refused(&self, task: Task, error: &str) {
        self.metrics.errors.inc();
        self.metrics.refusals.inc();
        let repeated = self.with_link(|l| {
            l.order += 1;
            let repeated = l.errors[task as usize]
                .as_ref()
                .is_some_and(|(_, e)| e == error);
            l.errors[task as usize] = Some((l.order, error.to_string()));
            l.up = true;
            repeated
        });
        self.metrics.link_up.set(1);
        if repeated {
            tracing::debug!(?task, error, "hub still refuses");
        } else {
            tracing::warn!(?task, error, "hub refused; retrying slowly");
        }
    }

    /// Records a measured skew: metric, and the alarm with a log when it changes.
    pub(crate) fn observe_skew(&self, skew_ms: i64) {
        let alarm = skew::alarm(skew_ms, self.skew_alarm_ms);
        self.metrics.clock_skew_ms.set(skew_ms);
        self.metrics.clock_alarm.set(i64::from(alarm));
        let was = self.alarm_raised.swap(alarm, Ordering::SeqCst);
        if alarm && !was {
            tracing::warn!(
                skew_ms,
                threshold_ms = self.skew_alarm_ms,
                "clock alarm: this gateway's clock is far from the hub's; prices activate on hub time"
            );
        } else if !alarm && was {
            tracing::info!(skew_ms, "clock alarm cleared");
        }
    }

    pub(crate) fn skew_stale(&self) -> bool {
        self.with_link(|l| {
            l.last_skew_sample
                .is_none_or(|t| t.elapsed() > SKEW_REFRESH)
        })
    }

    /// The agent does not sync at all (a gateway without an identity): the link reads down and
    /// `why` is the status's `last_error`, for as long as the agent runs.
    pub(crate) fn held_back(&self, why: &str) {
        self.with_link(|l| {
            l.order += 1;
            l.errors[Task::Download as usize] = Some((l.order, why.to_string()));
            l.up = false;
        });
        self.metrics.link_up.set(0);
    }

    pub fn link_up(&self) -> bool {
        self.with_link(|l| l.up)
    }

    /// The most recent error not yet cleared by a success.
    pub fn last_error(&self) -> Option<String> {
        self.with_link(|l| {
            l.errors
                .iter()
                .flatten()
                .max_by_key(|(order, _)| *order)
                .map(|(_, e)| e.clone())
        })
    }

    pub fn status(&self, ledger: &Ledger) -> SyncStatus {
        let v = ledger.view();
        SyncStatus {
            store: self.store.to_string(),
            outbox_depth: v.outbox_depth(),
            last_seq: v.last_seq,
            acked_through: v.acked_through,
            cursor: v.cursor,
            link: if self.link_up() { Link::Up } else { Link::Down },
            last_contact: v.last_contact.map(rfc3339),
            clock_skew_ms: v.skew_ms,
            clock_alarm: skew::alarm(v.skew_ms, self.skew_alarm_ms),
            last_error: self.last_error(),
        }
    }
}

/// What both sync tasks work with.
#[derive(Debug)]
pub(crate) struct SyncContext {
    pub ledger: Ledger,
    pub client: HubClient,
    pub shared: Arc<SyncShared>,
    pub config: SyncConfig,
}

impl SyncContext {
    /// The retry interval for a hub we cannot talk to at all (incompatible protocol).
    fn slow_retry(&self) -> Duration {
        Duration::from_millis(
            self.config
                .backoff_cap_ms
                .saturating_mul(10)
                .clamp(1_000, 60_000),
        )
    }
}

/// Is this answer a refusal that retrying the same request soon cannot fix? Any 4xx the tasks do
/// not handle themselves (409 seq_gap, 410 cursor_expired and 426 have their own errors).
fn is_refusal(e: &SyncError) -> bool {
    matches!(e, SyncError::Refused { status, .. } if (400..500).contains(status))
}

/// Sleeps for `d` or until shutdown (then returns false). Not cut short by the other task's
/// success: after a refusal the link is up, and waking on every success would resend at once.
async fn pause_slow(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.changed() => false,
    }
}

/// Sleeps for `d`, or until woken, or until shutdown (then returns false).
async fn pause(d: Duration, wake: &Notify, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = wake.notified() => true,
        _ = shutdown.changed() => false,
    }
}

/// Starts the downloader and the uploader. Neither waits for the other or for the backlog.
pub(crate) fn spawn(ctx: SyncContext, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let ctx = Arc::new(ctx);
    vec![
        tokio::spawn(downloader::run(ctx.clone(), shutdown.clone())),
        tokio::spawn(uploader::run(ctx, shutdown)),
    ]
}
