//! A small fake hub that speaks the sync protocol honestly: it serves a changefeed the test
//! appends to (long-polls wake on a push), and stores uploaded events under their seq, answering
//! with the contiguous acknowledgement. Every uploaded body is kept as raw JSON too, so tests can
//! check exactly what went over the wire.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aisle_protocol::UtcMillis;
use aisle_protocol::sync::{
    Change, ChangeBody, ChangePage, ChangesQuery, ErrorBody, EventUpload, LedgerEvent,
    PROTOCOL_HEADER, SERVER_TIME_HEADER, UploadAck, error_code, path,
};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct HubState {
    pub feed: Vec<Change>,
    pub stored: BTreeMap<u64, LedgerEvent>,
    /// Every uploaded event as the JSON the gateway sent.
    pub raw_events: Vec<Value>,
    pub acked: u64,
}

#[derive(Debug, Default)]
pub struct FakeHub {
    state: Mutex<HubState>,
    changed: Notify,
}

impl FakeHub {
    pub fn with<T>(&self, f: impl FnOnce(&mut HubState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    pub fn push_change(&self, body: ChangeBody) {
        self.with(|h| {
            let seq = h.feed.len() as u64 + 1;
            h.feed.push(Change { seq, body });
        });
        self.changed.notify_waiters();
    }

    /// Events stored so far, in seq order.
    pub fn events(&self) -> Vec<LedgerEvent> {
        self.with(|h| h.stored.values().cloned().collect())
    }
}

fn answer(status: StatusCode, body: impl serde::Serialize) -> Response {
    let mut r = (status, Json(body)).into_response();
    let h = r.headers_mut();
    h.insert(PROTOCOL_HEADER, "1".parse().unwrap());
    h.insert(
        SERVER_TIME_HEADER,
        UtcMillis::now().0.to_string().parse().unwrap(),
    );
    r
}

fn refuse(status: StatusCode, code: &str, expected_from: Option<u64>) -> Response {
    answer(
        status,
        ErrorBody {
            error: code.into(),
            message: format!("fake hub says {code}"),
            expected_from,
        },
    )
}

fn unauthorised(headers: &HeaderMap) -> bool {
    !headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer "))
}

async fn changes(
    State(hub): State<Arc<FakeHub>>,
    headers: HeaderMap,
    Query(q): Query<ChangesQuery>,
) -> Response {
    if unauthorised(&headers) {
        return refuse(StatusCode::UNAUTHORIZED, error_code::UNAUTHORIZED, None);
    }
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(u64::from(q.wait_ms.min(30_000)));
    loop {
        let notified = hub.changed.notified();
        let page = hub.with(|h| {
            let page: Vec<Change> = h
                .feed
                .iter()
                .filter(|c| c.seq > q.after)
                .take(100)
                .cloned()
                .collect();
            if page.is_empty() && tokio::time::Instant::now() < deadline {
                return None;
            }
            let next_cursor = page.last().map_or(q.after, |c| c.seq);
            let more = h.feed.iter().any(|c| c.seq > next_cursor);
            Some(ChangePage {
                changes: page,
                next_cursor,
                more,
                server_time: UtcMillis::now(),
            })
        });
        if let Some(p) = page {
            return answer(StatusCode::OK, p);
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

async fn events(State(hub): State<Arc<FakeHub>>, headers: HeaderMap, body: Bytes) -> Response {
    if unauthorised(&headers) {
        return refuse(StatusCode::UNAUTHORIZED, error_code::UNAUTHORIZED, None);
    }
    let Ok(raw) = serde_json::from_slice::<Value>(&body) else {
        return refuse(StatusCode::BAD_REQUEST, error_code::BAD_REQUEST, None);
    };
    let Ok(up) = serde_json::from_slice::<EventUpload>(&body) else {
        return refuse(StatusCode::BAD_REQUEST, error_code::BAD_REQUEST, None);
    };
    hub.with(|h| {
        if let Some(first) = up.events.first()
            && first.seq > h.acked + 1
        {
            return refuse(StatusCode::CONFLICT, error_code::SEQ_GAP, Some(h.acked + 1));
        }
        if let Some(list) = raw["events"].as_array() {
            h.raw_events.extend(list.iter().cloned());
        }
        for e in up.events {
            h.stored.entry(e.seq).or_insert(e);
        }
        while h.stored.contains_key(&(h.acked + 1)) {
            h.acked += 1;
        }
        answer(
            StatusCode::OK,
            UploadAck {
                acked_through: h.acked,
                server_time: UtcMillis::now(),
            },
        )
    })
}

/// Starts the fake hub on a free port; returns it and its base URL.
pub async fn start() -> (Arc<FakeHub>, String) {
    let hub = Arc::new(FakeHub::default());
    let app = axum::Router::new()
        .route(path::CHANGES, axum::routing::get(changes))
        .route(path::EVENTS, axum::routing::post(events))
        .with_state(hub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (hub, url)
}
