//! Activates pending prices exactly at their `effective_at` on hub-corrected time: sleeps until
//! the next one is due, and is woken early when new prices are staged. Every ledger transaction
//! also activates what is due before it runs, so a sale is never priced from a stale price even
//! between two wake-ups of this task.
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ledger::Ledger;

/// Longest sleep: picks up local clock jumps and skew corrections within this long.
const MAX_SLEEP: Duration = Duration::from_secs(1);

pub(crate) fn spawn(ledger: Ledger, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let staged = ledger.prices_staged();
        // Rounds in a row where something looked due but nothing activated (a clock set back
        // between our look and the writer's): sleep instead of spinning.
        let mut fruitless = 0u32;
        while !*shutdown.borrow() {
            let sleep = match ledger.next_pending_effective_at().await {
                Ok(Some(due)) => {
                    let wait_ms = due.millis_since(ledger.hub_time().now());
                    if wait_ms <= 0 {
                        match ledger.activate_due().await {
                            Ok(n) if n > 0 => {
                                tracing::info!(prices = n, "prices activated");
                                fruitless = 0;
                                continue;
                            }
                            Ok(_) if fruitless == 0 => {
                                fruitless += 1;
                                continue;
                            }
                            Ok(_) => {
                                fruitless = 0;
                                MAX_SLEEP
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "activating prices failed");
                                MAX_SLEEP
                            }
                        }
                    } else {
                        Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0)).min(MAX_SLEEP)
                    }
                }
                Ok(None) => MAX_SLEEP,
                Err(e) => {
                    tracing::warn!(error = %e, "reading pending prices failed");
                    MAX_SLEEP
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = staged.notified() => {}
                _ = shutdown.changed() => break,
            }
        }
    })
}
