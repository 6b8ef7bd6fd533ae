//! The expiry sweeper: an order the store has said nothing final about `grace` after its
//! `expires_at` (24 h by default) is expired by the hub itself, its stock released and HQ
//! notified. The store normally expires it first (`PickupExpired`); the sweep covers a store
//! that is offline or gone. A later `PickupCollected` from the store still wins (a conflict).
use std::sync::Arc;
use std::time::Duration;

use aisle_protocol::UtcMillis;
use tokio::sync::{Notify, watch};

use crate::metrics::HubMetrics;
use crate::storage::HubStorage;

/// Most orders expired per sweep round (the next round follows at once when there were more).
pub const SWEEP_BATCH: u32 = 500;

/// When and how the sweeper runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweepSettings {
    pub every: Duration,
    /// How long after `expires_at` the hub waits for the store.
    pub grace: Duration,
}

impl Default for SweepSettings {
    fn default() -> Self {
        SweepSettings {
            every: Duration::from_secs(60),
            grace: Duration::from_millis(
                u64::try_from(super::DEFAULT_EXPIRY_GRACE_MS).unwrap_or(86_400_000),
            ),
        }
    }
}

/// Sweeps until `shutdown` turns true; wakes the webhook worker after expiring anything.
pub async fn run(
    storage: Arc<dyn HubStorage>,
    metrics: Arc<HubMetrics>,
    settings: SweepSettings,
    webhooks: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let grace_ms = i64::try_from(settings.grace.as_millis()).unwrap_or(i64::MAX);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let mut full = false;
        match storage
            .expire_overdue(UtcMillis::now(), grace_ms, SWEEP_BATCH)
            .await
        {
            Ok(expired) if !expired.is_empty() => {
                full = expired.len() >= SWEEP_BATCH as usize;
                metrics.orders_expired_by_hub.inc_by(expired.len() as u64);
                for order in &expired {
                    tracing::info!(%order, "order expired by the hub: no word from the store");
                }
                webhooks.notify_one();
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
        }
        if full {
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(settings.every) => {}
            r = shutdown.changed() => if r.is_err() { return; },
        }
    }
}
