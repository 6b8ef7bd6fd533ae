//! Expires open pickup orders at their `expires_at` on hub-corrected time: sleeps until the next
//! one is due (at most a second, so new orders and skew corrections are picked up), then asks
//! the writer, which appends a `PickupExpired` for each open order whose time has come.
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ledger::Ledger;

/// Longest sleep.
const MAX_SLEEP: Duration = Duration::from_secs(1);

pub(crate) fn spawn(ledger: Ledger, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        while !*shutdown.borrow() {
            let sleep = match ledger.next_pickup_expiry().await {
                Ok(Some(due)) => {
                    let wait_ms = due.millis_since(ledger.hub_time().now());
                    if wait_ms <= 0 {
                        match ledger.expire_pickups().await {
                            Ok(n) if n > 0 => {
                                tracing::info!(orders = n, "pickup orders expired");
                                continue;
                            }
                            // Nothing expired: a clock set back between our look and the
                            // writer's; look again after a pause rather than spin.
                            Ok(_) => MAX_SLEEP,
                            Err(e) => {
                                tracing::warn!(error = %e, "expiring pickup orders failed");
                                MAX_SLEEP
                            }
                        }
                    } else {
                        Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0)).min(MAX_SLEEP)
                    }
                }
                Ok(None) => MAX_SLEEP,
                Err(e) => {
                    tracing::warn!(error = %e, "reading pickup expiries failed");
                    MAX_SLEEP
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.changed() => break,
            }
        }
    })
}
