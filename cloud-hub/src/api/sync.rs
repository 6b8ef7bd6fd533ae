//! The sync API of `aisle_protocol::sync`: the changefeed long-poll and event uploads.
use std::time::Duration;

use aisle_protocol::sync::{
    ChangePage, ChangesQuery, LedgerEvent, MAX_CHANGES_PER_PAGE, MAX_EVENTS_PER_UPLOAD,
    MAX_WAIT_MS, UploadAck,
};
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::{ApiError, ApiQuery, AppState, Body, SyncPeer, media_type};
use crate::metrics::{LabelEventLabels, WaitingPoll};

/// `?store=`: optional on the changefeed; when given it must be the gateway's own store (the
/// changefeed served is always the gateway's own).
#[derive(Debug, Deserialize)]
pub struct StoreScope {
    #[serde(default)]
    pub store: Option<String>,
}

/// Changes per page unless `limit` says otherwise.
pub const DEFAULT_CHANGES_LIMIT: u32 = 1_000;

/// `GET /v1/sync/changes?after=&wait_ms=&limit=`: answers as soon as the store has a change
/// after the cursor, or an empty page when `wait_ms` (at most 30 s) runs out.
pub async fn changes(
    State(state): State<AppState>,
    SyncPeer(gateway): SyncPeer,
    ApiQuery(q): ApiQuery<ChangesQuery>,
    ApiQuery(scope): ApiQuery<StoreScope>,
) -> Result<Json<ChangePage>, ApiError> {
    if let Some(store) = scope.store.as_deref() {
        let store = super::parse_store_id(store)?;
        if store != gateway.store {
            return Err(ApiError::Forbidden(format!(
                "gateway {} belongs to store {} and may not read store {store}'s changefeed",
                gateway.gateway_id, gateway.store
            )));
        }
    }
    let limit = match q.limit {
        None => DEFAULT_CHANGES_LIMIT,
        Some(0) => return Err(ApiError::BadRequest("limit must be at least 1".into())),
        // Asking for more than a page holds is not an error: `more` tells the gateway to go on.
        Some(n) => n.min(MAX_CHANGES_PER_PAGE),
    };
    let deadline = Instant::now() + Duration::from_millis(u64::from(q.wait_ms.min(MAX_WAIT_MS)));
    let mut doorbell = state.storage.subscribe(&gateway.store);
    let mut shutdown = state.shutdown.clone();
    let mut waiting: Option<WaitingPoll> = None;
    loop {
        // Subscribe-then-read: a change committed after this read rings the doorbell.
        doorbell.mark_seen();
        let page = state
            .storage
            .changes_after(&gateway.store, q.after, limit)
            .await?;
        if !page.changes.is_empty() || Instant::now() >= deadline || *shutdown.borrow() {
            state
                .metrics
                .changes_served
                .inc_by(page.changes.len() as u64);
            return Ok(Json(page));
        }
        waiting.get_or_insert_with(|| WaitingPoll::new(&state.metrics.long_polls_waiting));
        tokio::select! {
            () = doorbell.rung() => {}
            () = tokio::time::sleep_until(deadline) => {}
            r = shutdown.changed() => {
                if r.is_err() {
                    // The server is gone: answer what we have instead of spinning.
                    return Ok(Json(page));
                }
            }
        }
    }
}

/// `POST /v1/sync/events`: stores contiguous ledger events; replays get the same ack.
pub async fn events(
    State(state): State<AppState>,
    SyncPeer(gateway): SyncPeer,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Json<UploadAck>, ApiError> {
    if media_type(&headers) != Some("application/json") {
        return Err(ApiError::UnsupportedMediaType(
            "send the upload as Content-Type: application/json".into(),
        ));
    }
    let events = parse_upload(&body)?;
    let ack = state
        .storage
        .ingest_events(&gateway.gateway_id, &events)
        .await?;
    state.metrics.events_ingested.inc_by(events.len() as u64);
    for e in &events {
        if crate::labels::label_of(&e.body).is_some() {
            state
                .metrics
                .label_events
                .get_or_create(&LabelEventLabels {
                    kind: e.body.kind(),
                })
                .inc();
        }
    }
    if events.iter().any(|e| e.body.kind().starts_with("pickup_")) {
        // A pickup event may have queued a webhook.
        state.webhooks.notify_one();
    }
    Ok(Json(ack))
}

/// Parses an `EventUpload`, naming the seq of an event that does not parse.
fn parse_upload(body: &[u8]) -> Result<Vec<LedgerEvent>, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawUpload<'a> {
        #[serde(borrow)]
        events: Vec<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct SeqOnly {
        seq: u64,
    }
    let raw: RawUpload<'_> = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    if raw.events.len() > MAX_EVENTS_PER_UPLOAD {
        return Err(ApiError::PayloadTooLarge(format!(
            "an upload may carry at most {MAX_EVENTS_PER_UPLOAD} events, got {}",
            raw.events.len()
        )));
    }
    raw.events
        .iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_str::<LedgerEvent>(v.get()).map_err(|e| {
                let which = serde_json::from_str::<SeqOnly>(v.get()).map_or_else(
                    |_| format!("event {}", i + 1),
                    |s| format!("event seq {}", s.seq),
                );
                ApiError::BadRequest(format!("{which}: {e}"))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_bad_event_is_named_by_its_seq() {
        let body = r#"{"events":[{"seq":7,"id":"zz","hlc":{"wall_ms":1,"counter":0},"at":1,
            "body":{"type":"stock_adjusted","adjustment_id":"00000000000000000000000000000000","gtin":"9501101531000","delta":1}}]}"#;
        match parse_upload(body.as_bytes()) {
            Err(ApiError::BadRequest(m)) => assert!(m.starts_with("event seq 7: "), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_upload(b"{\"events\":"),
            Err(ApiError::BadRequest(m)) if m.starts_with("malformed JSON")
        ));
        assert_eq!(parse_upload(br#"{"events":[]}"#).unwrap(), vec![]);
    }
}
