//! Up: drain the outbox (events with seq > acked_through) in seq order, woken at once by new
//! events. A lost answer just means the same events go again; the hub's answer is idempotent.
use std::sync::Arc;

use tokio::sync::watch;

use super::backoff::Backoff;
use super::client::SyncError;
use super::{SyncContext, Task, is_refusal, pause, pause_slow};
use crate::ledger::Contact;

pub(crate) async fn run(ctx: Arc<SyncContext>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(ctx.config.backoff_base_ms, ctx.config.backoff_cap_ms);
    let mut view_rx = ctx.ledger.subscribe();
    // Most events in the next upload: the configured size, halved after each 413 until the
    // outbox has drained (a later backlog starts from the configured size again).
    let mut batch = ctx.config.upload_batch.max(1);
    while !*shutdown.borrow() {
        let view = view_rx.borrow_and_update().clone();
        if view.outbox_depth() == 0 {
            batch = ctx.config.upload_batch.max(1);
            tokio::select! {
                r = view_rx.changed() => if r.is_err() { break },
                _ = shutdown.changed() => break,
            }
            continue;
        }
        let events = match ctx.ledger.events_after(view.acked_through, batch).await {
            Ok(ev) if !ev.is_empty() => ev,
            Ok(_) => {
                ctx.shared.failed(
                    Task::Upload,
                    "outbox is not empty but no events were read",
                    false,
                );
                if !pause(
                    backoff.next_random_delay(),
                    &ctx.shared.wake_upload,
                    &mut shutdown,
                )
                .await
                {
                    break;
                }
                continue;
            }
            Err(e) => {
                ctx.shared
                    .failed(Task::Upload, &format!("reading the outbox: {e}"), false);
                if !pause(
                    backoff.next_random_delay(),
                    &ctx.shared.wake_upload,
                    &mut shutdown,
                )
                .await
                {
                    break;
                }
                continue;
            }
        };
        let first = events.first().map_or(0, |e| e.seq);
        let sent = events.len();
        let answer = tokio::select! {
            a = ctx.client.upload(&events) => a,
            _ = shutdown.changed() => break,
        };
        let delay = match answer {
            Ok(ans) if ans.body.acked_through > ctx.ledger.view().last_seq => {
                // A hub that claims events this ledger never wrote is confused (another gateway's
                // data dir, a restored hub database): resending cannot fix it, so not in a loop.
                let e = format!(
                    "hub acknowledged through seq {} but this ledger ends at seq {}",
                    ans.body.acked_through,
                    ctx.ledger.view().last_seq
                );
                ctx.shared.refused(Task::Upload, &e);
                if !pause_slow(ctx.slow_retry(), &mut shutdown).await {
                    break;
                }
                continue;
            }
            Ok(ans) => {
                let acked = ans.body.acked_through;
                let skew_ms = ans.skew.map(|s| s.skew_ms);
                let contact = Contact {
                    server_time: ans.server_time,
                    skew_ms,
                };
                match ctx.ledger.ack(acked, Some(contact)).await {
                    Ok(()) if acked >= first => {
                        if let Some(s) = skew_ms {
                            ctx.shared.observe_skew(s);
                        }
                        backoff.reset();
                        ctx.shared.succeeded(Task::Upload, skew_ms.is_some());
                        continue;
                    }
                    Ok(()) => {
                        let e = format!(
                            "hub acknowledged through seq {acked}, below the first seq sent ({first})"
                        );
                        ctx.shared.failed(Task::Upload, &e, false);
                        backoff.next_random_delay()
                    }
                    Err(e) => {
                        ctx.shared.failed(
                            Task::Upload,
                            &format!("hub's acknowledgement refused: {e}"),
                            false,
                        );
                        backoff.next_random_delay()
                    }
                }
            }
            Err(SyncError::SeqGap { expected_from }) if expected_from != first => {
                match ctx.ledger.resend_from(expected_from).await {
                    Ok(()) => {
                        tracing::warn!(expected_from, sent_from = first, "hub asked for a resend");
                        continue;
                    }
                    Err(e) => {
                        ctx.shared.failed(Task::Upload, &e.to_string(), false);
                        ctx.slow_retry()
                    }
                }
            }
            Err(e @ SyncError::Incompatible { .. }) => {
                ctx.shared.failed(Task::Upload, &e.to_string(), true);
                ctx.slow_retry()
            }
            Err(SyncError::Refused { status: 413, .. }) if sent > 1 => {
                // Too large for the hub: the same events in smaller uploads, at once.
                batch = (sent / 2).max(1);
                tracing::warn!(
                    sent,
                    next = batch,
                    "hub refused the upload as too large (413); halving the upload batch"
                );
                continue;
            }
            Err(e) if is_refusal(&e) => {
                ctx.shared.refused(
                    Task::Upload,
                    &format!("hub refused the upload from seq {first}: {e}"),
                );
                if !pause_slow(ctx.slow_retry(), &mut shutdown).await {
                    break;
                }
                continue;
            }
            Err(e) => {
                ctx.shared.failed(Task::Upload, &e.to_string(), true);
                backoff.next_random_delay()
            }
        };
        if !pause(delay, &ctx.shared.wake_upload, &mut shutdown).await {
            break;
        }
    }
}
