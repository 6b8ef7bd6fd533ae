//! Down: long-poll the changefeed, apply each page and its `next_cursor` in one transaction.
use std::sync::Arc;

use aisle_protocol::sync::{ChangePage, MAX_CHANGES_PER_PAGE};
use tokio::sync::watch;

use super::backoff::Backoff;
use super::client::{Answer, SyncError};
use super::{SyncContext, Task, is_refusal, pause, pause_slow};
use crate::ledger::{Contact, LedgerError};

pub(crate) async fn run(ctx: Arc<SyncContext>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(ctx.config.backoff_base_ms, ctx.config.backoff_cap_ms);
    // The first request after start-up does not wait at the hub: it measures the skew at once.
    let mut quick = true;
    while !*shutdown.borrow() {
        let cursor = ctx.ledger.view().cursor;
        let wait = if quick { 0 } else { ctx.config.long_poll_ms };
        let answer = tokio::select! {
            a = ctx.client.changes(cursor, wait, None) => a,
            _ = shutdown.changed() => break,
        };
        let delay = match answer {
            Ok(ans) => {
                let sampled = ans.skew.is_some();
                match apply(&ctx, ans).await {
                    Ok(more) => {
                        backoff.reset();
                        ctx.shared.succeeded(Task::Download, sampled);
                        quick = more || ctx.shared.skew_stale();
                        continue;
                    }
                    Err(e) => {
                        ctx.shared.failed(Task::Download, &e, false);
                        backoff.next_random_delay()
                    }
                }
            }
            Err(SyncError::CursorExpired) => match restart_from_zero(&ctx).await {
                Ok(()) => {
                    tracing::warn!(
                        cursor,
                        "hub does not hold our changefeed cursor (restored from a backup?); \
                         starting again from 0 and re-offering our last acknowledged event"
                    );
                    quick = true;
                    continue;
                }
                Err(e) => {
                    ctx.shared
                        .failed(Task::Download, &format!("resetting the cursor: {e}"), false);
                    backoff.next_random_delay()
                }
            },
            Err(e @ SyncError::Incompatible { .. }) => {
                ctx.shared.failed(Task::Download, &e.to_string(), true);
                ctx.slow_retry()
            }
            Err(e) if is_refusal(&e) => {
                ctx.shared.refused(
                    Task::Download,
                    &format!("hub refused the changes after {cursor}: {e}"),
                );
                if !pause_slow(ctx.slow_retry(), &mut shutdown).await {
                    break;
                }
                continue;
            }
            Err(e) => {
                ctx.shared.failed(Task::Download, &e.to_string(), true);
                backoff.next_random_delay()
            }
        };
        if !pause(delay, &ctx.shared.wake_download, &mut shutdown).await {
            break;
        }
    }
}

/// Applies one page; returns whether more changes are waiting.
async fn apply(ctx: &SyncContext, ans: Answer<ChangePage>) -> Result<bool, String> {
    let page = ans.body;
    if page.changes.len() > MAX_CHANGES_PER_PAGE as usize {
        return Err(format!(
            "hub sent {} changes in one page (at most {MAX_CHANGES_PER_PAGE})",
            page.changes.len()
        ));
    }
    let skew_ms = ans.skew.map(|s| s.skew_ms);
    let contact = Contact {
        server_time: ans.server_time,
        skew_ms,
    };
    let more = page.more;
    let n = page.changes.len();
    let outcome = ctx
        .ledger
        .apply_changes(page.changes, Some(page.next_cursor), Some(contact))
        .await
        .map_err(|e| format!("applying changes up to hub seq {}: {e}", page.next_cursor))?;
    if let Some(s) = skew_ms {
        ctx.shared.observe_skew(s);
    }
    if n > 0 {
        tracing::info!(
            changes = n,
            cursor = page.next_cursor,
            staged = outcome.staged,
            ignored = outcome.ignored_prices + outcome.ignored_adjustments,
            activated = outcome.activated,
            adjusted = outcome.adjusted,
            pickup_orders = outcome.pickup_orders,
            pickup_cancels = outcome.pickup_cancels,
            pickup_keys = outcome.pickup_keys,
            ignored_pickups = outcome.ignored_pickups,
            "applied changes from the hub"
        );
    }
    Ok(more)
}

/// After a 410 the hub is not the one that acknowledged our events (it was restored from an
/// older backup, or replaced). The changefeed starts again from 0, and the last acknowledged event
/// goes up once more: a hub that still holds it answers the same ack, one that lost it answers
/// 409 `seq_gap` with the first seq it needs, and the uploader re-sends from there.
async fn restart_from_zero(ctx: &SyncContext) -> Result<(), LedgerError> {
    ctx.ledger.reset_cursor().await?;
    let acked = ctx.ledger.view().acked_through;
    if acked > 0 {
        ctx.ledger.resend_from(acked).await?;
    }
    Ok(())
}
