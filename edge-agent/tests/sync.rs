//! The sync client against a small fake hub that speaks the protocol honestly: one change page
//! then long-polls; stores uploads under their seq and acknowledges; and misbehaves on demand
//! (protocol 99, 410 cursor_expired, answers lost after storing, forgotten events -> 409).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aisle_agent::clock::SystemClock;
use aisle_agent::config::{AgentConfig, ClockConfig, SyncConfig};
use aisle_agent::ledger::verify;
use aisle_agent::sync::Link;
use aisle_agent::{Agent, AgentHandle};
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
use common::{gtin, price, sale};
use tokio::sync::Notify;

const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const GATEWAY: &str = "gw-S001-1a2b3c4d";
/// The fake hub's clock runs this far ahead of ours.
const HUB_AHEAD_MS: i64 = 7_000;
const PAGE: usize = 2;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Mode {
    #[default]
    Normal,
    Version99,
    ExpireCursor,
}

#[derive(Debug, Default)]
struct HubState {
    feed: Vec<Change>,
    mode: Mode,
    /// Answers to lose (500) after storing an upload.
    lose_answers: u32,
    /// Every (after, wait_ms) asked for.
    change_requests: Vec<(u64, u32)>,
    /// Every seq received, duplicates included.
    uploaded: Vec<u64>,
    stored: BTreeMap<u64, LedgerEvent>,
    acked: u64,
    /// Seqs resent with a different event id (must stay empty).
    id_mismatch: Vec<u64>,
    /// Uploads that were not contiguous and in order (must stay empty).
    disorder: Vec<String>,
    answered_410: usize,
    /// Refuse every upload with this status, storing nothing.
    upload_status: Option<StatusCode>,
    /// Refuse uploads of more events than this with 413, storing nothing.
    max_upload: Option<usize>,
    /// Acknowledge this many seqs more than were stored (a confused hub).
    over_ack: u64,
    /// Every upload: (events in it, status answered).
    uploads: Vec<(usize, u16)>,
}

#[derive(Debug, Default)]
struct FakeHub {
    state: Mutex<HubState>,
    changed: Notify,
}

impl FakeHub {
    fn with<T>(&self, f: impl FnOnce(&mut HubState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    fn push_change(&self, body: ChangeBody) {
        self.with(|h| {
            let seq = h.feed.len() as u64 + 1;
            h.feed.push(Change { seq, body });
        });
        self.changed.notify_waiters();
    }

    fn set_mode(&self, mode: Mode) {
        self.with(|h| h.mode = mode);
        self.changed.notify_waiters();
    }
}

fn now_hub() -> i64 {
    UtcMillis::now().0 + HUB_AHEAD_MS
}

fn answer(version: &str, status: StatusCode, body: impl serde::Serialize) -> Response {
    let mut r = (status, Json(body)).into_response();
    let h = r.headers_mut();
    h.insert(PROTOCOL_HEADER, version.parse().unwrap());
    h.insert(SERVER_TIME_HEADER, now_hub().to_string().parse().unwrap());
    r
}

fn error(status: StatusCode, code: &str, expected_from: Option<u64>) -> Response {
    answer(
        "1",
        status,
        ErrorBody {
            error: code.into(),
            message: format!("fake hub says {code}"),
            expected_from,
        },
    )
}

/// The gateway must present its credential and protocol version on every request.
fn refused(headers: &HeaderMap) -> Option<Response> {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {GATEWAY}.{SECRET}")) {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            error_code::UNAUTHORIZED,
            None,
        ));
    }
    if headers.get(PROTOCOL_HEADER).and_then(|v| v.to_str().ok()) != Some("1") {
        return Some(error(
            StatusCode::UPGRADE_REQUIRED,
            error_code::INCOMPATIBLE_PROTOCOL,
            None,
        ));
    }
    None
}

async fn changes(
    State(hub): State<Arc<FakeHub>>,
    headers: HeaderMap,
    Query(q): Query<ChangesQuery>,
) -> Response {
    if let Some(r) = refused(&headers) {
        return r;
    }
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(u64::from(q.wait_ms.min(30_000)));
    hub.with(|h| h.change_requests.push((q.after, q.wait_ms)));
    loop {
        // Created before looking, so a change pushed in between still wakes us.
        let notified = hub.changed.notified();
        let ready = hub.with(|h| {
            match h.mode {
                Mode::Version99 => {
                    let page = ChangePage {
                        changes: h.feed.clone(),
                        next_cursor: h.feed.len() as u64,
                        more: false,
                        server_time: UtcMillis(now_hub()),
                    };
                    return Some(answer("99", StatusCode::OK, page));
                }
                Mode::ExpireCursor if q.after > 0 => {
                    h.mode = Mode::Normal;
                    h.answered_410 = h.change_requests.len();
                    return Some(error(StatusCode::GONE, error_code::CURSOR_EXPIRED, None));
                }
                _ => {}
            }
            let page: Vec<Change> = h
                .feed
                .iter()
                .filter(|c| c.seq > q.after)
                .take(PAGE)
                .cloned()
                .collect();
            if page.is_empty() && tokio::time::Instant::now() < deadline {
                return None;
            }
            let next_cursor = page.last().map_or(q.after, |c| c.seq);
            let more = h.feed.iter().any(|c| c.seq > next_cursor);
            Some(answer(
                "1",
                StatusCode::OK,
                ChangePage {
                    changes: page,
                    next_cursor,
                    more,
                    server_time: UtcMillis(now_hub()),
                },
            ))
        });
        if let Some(r) = ready {
            return r;
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

async fn events(State(hub): State<Arc<FakeHub>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = refused(&headers) {
        return r;
    }
    let Ok(up) = serde_json::from_slice::<EventUpload>(&body) else {
        return error(StatusCode::BAD_REQUEST, error_code::BAD_REQUEST, None);
    };
    hub.with(|h| {
        let n = up.events.len();
        if let Some(status) = h.upload_status {
            h.uploads.push((n, status.as_u16()));
            let code = if status == StatusCode::FORBIDDEN {
                error_code::FORBIDDEN
            } else {
                error_code::UNAVAILABLE
            };
            return error(status, code, None);
        }
        if h.max_upload.is_some_and(|m| n > m) {
            h.uploads.push((n, 413));
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                error_code::PAYLOAD_TOO_LARGE,
                None,
            );
        }
        h.uploads.push((n, 200));
        h.uploaded.extend(up.events.iter().map(|e| e.seq));
        for w in up.events.windows(2) {
            if w[1].seq != w[0].seq + 1 {
                h.disorder.push(format!("{} then {}", w[0].seq, w[1].seq));
            }
        }
        if let Some(first) = up.events.first()
            && first.seq > h.acked + 1
        {
            return error(StatusCode::CONFLICT, error_code::SEQ_GAP, Some(h.acked + 1));
        }
        for e in up.events {
            match h.stored.get(&e.seq) {
                Some(old) if old.id != e.id => h.id_mismatch.push(e.seq),
                Some(_) => {}
                None => {
                    h.stored.insert(e.seq, e);
                }
            }
        }
        while h.stored.contains_key(&(h.acked + 1)) {
            h.acked += 1;
        }
        if h.lose_answers > 0 {
            // Stored, but the answer never reaches the gateway.
            h.lose_answers -= 1;
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                error_code::INTERNAL,
                None,
            );
        }
        answer(
            "1",
            StatusCode::OK,
            UploadAck {
                acked_through: h.acked + h.over_ack,
                server_time: UtcMillis(now_hub()),
            },
        )
    })
}

async fn start_fake() -> (Arc<FakeHub>, String) {
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

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn now_ms() -> i64 {
    UtcMillis::now().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_syncs_with_a_hub_that_speaks_the_protocol() {
    let (hub, url) = start_fake().await;
    for n in 1..=3 {
        hub.push_change(ChangeBody::Price(price(
            gtin(n),
            1,
            100 * n as i64,
            now_ms() - 1_000,
        )));
    }
    let dir = tempfile::tempdir().unwrap();
    let config = AgentConfig {
        store: "S001".parse().unwrap(),
        hub_url: url,
        credential: format!("{GATEWAY}.{SECRET}"),
        gateway: None,
        status_panel: None,
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        sync: SyncConfig {
            long_poll_ms: 10_000,
            upload_batch: 3,
            backoff_base_ms: 10,
            backoff_cap_ms: 100,
            skew_alarm_ms: 5_000,
        },
        clock: ClockConfig::default(),
        labels: None,
        checkout: None,
        footfall: None,
        pickup: None,
    };
    let agent: AgentHandle = Agent::start(config, Arc::new(SystemClock)).await.unwrap();
    let ledger = agent.ledger().clone();

    // 1. Down: two pages (2 + 1 changes), then a long-poll that a new change wakes at once.
    eventually("first pages applied", async || ledger.view().cursor == 3).await;
    for n in 1..=3 {
        assert_eq!(
            ledger
                .active_price(gtin(n))
                .await
                .unwrap()
                .unwrap()
                .price
                .minor,
            100 * n as i64
        );
    }
    eventually("a long-poll waiting at the hub", async || {
        hub.with(|h| h.change_requests.contains(&(3, 10_000)))
    })
    .await;
    assert_eq!(
        hub.with(|h| h.change_requests[..2].to_vec()),
        [(0, 0), (2, 0)]
    );
    let pushed = Instant::now();
    hub.push_change(ChangeBody::Price(price(gtin(1), 2, 111, now_ms() - 1_000)));
    eventually("the long-poll delivers the new price", async || {
        ledger.active_price(gtin(1)).await.unwrap().unwrap().version == 2
    })
    .await;
    assert!(
        pushed.elapsed() < Duration::from_secs(3),
        "woken, not re-polled"
    );

    // 2. Up: everything uploaded in order and acknowledged; the hub's clock is 7 s ahead.
    eventually("outbox drained", async || {
        let v = ledger.view();
        v.outbox_depth() == 0 && hub.with(|h| h.acked) == v.last_seq
    })
    .await;
    let local = ledger.events_after(0, 1_000).await.unwrap();
    assert_eq!(
        hub.with(|h| h.stored.values().cloned().collect::<Vec<_>>()),
        local
    );
    let status = agent.sync_status();
    assert_eq!(status.link, Link::Up);
    assert_eq!(status.last_error, None);
    assert!(status.last_contact.is_some());
    assert!(
        (status.clock_skew_ms - HUB_AHEAD_MS).abs() < 1_000,
        "{status:?}"
    );
    assert!(
        status.clock_alarm,
        "7 s skew is over the 5 s alarm: {status:?}"
    );

    let sold = ledger
        .record_sale(sale("lane-1:1", &[(gtin(2), 1)]))
        .await
        .unwrap();
    // Stamped on hub-corrected time.
    assert!((sold.at.0 - now_ms() - HUB_AHEAD_MS).abs() < 1_000);
    eventually("a new sale goes up at once", async || {
        hub.with(|h| h.stored.contains_key(&sold.seq))
    })
    .await;

    // 3. Answers lost after the hub stored the events: the same events go again.
    hub.with(|h| h.lose_answers = 2);
    let lost = ledger
        .record_sale(sale("lane-1:2", &[(gtin(3), 2)]))
        .await
        .unwrap();
    eventually("acknowledged in the end", async || {
        ledger.view().acked_through == lost.seq
    })
    .await;
    hub.with(|h| {
        let times = h.uploaded.iter().filter(|&&s| s == lost.seq).count();
        assert!(times >= 3, "seq {} sent {times} times", lost.seq);
        assert!(
            h.id_mismatch.is_empty(),
            "resends changed event ids: {:?}",
            h.id_mismatch
        );
        assert!(h.disorder.is_empty(), "{:?}", h.disorder);
    });
    assert_eq!(ledger.stats().sales_committed, 2);

    // 4. A hub speaking protocol 99: nothing it says is applied; a clear error; retried slowly.
    hub.set_mode(Mode::Version99);
    hub.push_change(ChangeBody::Price(price(gtin(9), 1, 900, now_ms() - 1_000)));
    eventually("incompatible protocol reported", async || {
        agent.sync_status().last_error.as_deref()
            == Some("hub speaks protocol 99, this agent speaks 1")
    })
    .await;
    assert_eq!(agent.sync_status().link, Link::Down);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(ledger.prices(gtin(9)).await.unwrap().is_empty());
    assert_eq!(ledger.view().cursor, 4);
    hub.set_mode(Mode::Normal);
    eventually("the hub is understood again", async || {
        ledger.active_price(gtin(9)).await.unwrap().is_some()
            && agent.sync_status().last_error.is_none()
    })
    .await;
    assert_eq!(ledger.view().cursor, 5);

    // 5. 410 cursor_expired: start again from 0 without duplicating anything.
    eventually("quiet", async || ledger.view().outbox_depth() == 0).await;
    let before = ledger.view();
    let prices_before = ledger.prices(gtin(1)).await.unwrap();
    hub.set_mode(Mode::ExpireCursor);
    eventually("resynced from 0", async || {
        hub.with(|h| {
            h.answered_410 > 0 && h.change_requests[h.answered_410..].iter().any(|r| r.0 == 0)
        }) && ledger.view().cursor == 5
    })
    .await;
    assert_eq!(
        ledger.view().last_seq,
        before.last_seq,
        "a resync writes no events"
    );
    assert_eq!(ledger.prices(gtin(1)).await.unwrap(), prices_before);

    // 6. The hub lost events it had acknowledged: 409 seq_gap, and the agent resends from there.
    hub.with(|h| {
        h.stored.retain(|&seq, _| seq <= 3);
        h.acked = 3;
    });
    let after_gap = ledger
        .record_sale(sale("lane-1:3", &[(gtin(1), 1)]))
        .await
        .unwrap();
    eventually("refilled after the gap", async || {
        hub.with(|h| h.acked) == after_gap.seq && ledger.view().acked_through == after_gap.seq
    })
    .await;
    assert_eq!(
        hub.with(|h| h.stored.keys().copied().collect::<Vec<_>>()),
        (1..=after_gap.seq).collect::<Vec<_>>()
    );

    agent.shutdown().await;
    verify(dir.path()).unwrap();
}

fn quick_config(url: String, dir: &std::path::Path, upload_batch: usize) -> AgentConfig {
    AgentConfig {
        store: "S001".parse().unwrap(),
        hub_url: url,
        credential: format!("{GATEWAY}.{SECRET}"),
        gateway: None,
        status_panel: None,
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        sync: SyncConfig {
            long_poll_ms: 10_000,
            upload_batch,
            // Backoff tops out at 100 ms, so the slow retry after a refusal is 1 s.
            backoff_base_ms: 10,
            backoff_cap_ms: 100,
            skew_alarm_ms: 60_000,
        },
        clock: ClockConfig::default(),
        labels: None,
        checkout: None,
        footfall: None,
        pickup: None,
    }
}

/// Uploads the hub sees in 1.5 s while the downloader keeps succeeding (which wakes the
/// uploader out of an ordinary backoff).
async fn uploads_in_a_while(hub: &FakeHub, first_gtin: u64) -> usize {
    let before = hub.with(|h| h.uploads.len());
    for n in 0..5 {
        hub.push_change(ChangeBody::Price(price(
            gtin(first_gtin + n),
            1,
            100,
            now_ms() - 1_000,
        )));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    hub.with(|h| h.uploads.len()) - before
}

async fn refusals_metric(agent: &AgentHandle) -> u64 {
    let text = reqwest::get(format!("http://{}/metrics", agent.local_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("aisle_agent_sync_refusals_total "))
        .unwrap_or_else(|| panic!("no refusals metric in {text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_is_retried_slowly_with_the_link_up() {
    let (hub, url) = start_fake().await;
    hub.with(|h| h.upload_status = Some(StatusCode::FORBIDDEN));
    hub.push_change(ChangeBody::Price(price(gtin(1), 1, 100, now_ms() - 1_000)));
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(quick_config(url, dir.path(), 100), Arc::new(SystemClock))
        .await
        .unwrap();
    let ledger = agent.ledger().clone();

    // 1. 403: the hub answered, so the link is up; the error names the status and the message.
    eventually("the refusal is reported", async || {
        agent
            .sync_status()
            .last_error
            .is_some_and(|e| e.contains("403"))
    })
    .await;
    let sent = uploads_in_a_while(&hub, 10).await;
    assert!(sent <= 3, "{sent} uploads in 1.5 s: not a slow retry");
    let status = agent.sync_status();
    assert_eq!(status.link, Link::Up, "{status:?}");
    let error = status.last_error.unwrap();
    assert!(
        error.contains("403") && error.contains("fake hub says forbidden"),
        "{error}"
    );
    assert!(refusals_metric(&agent).await >= 1);
    assert_eq!(ledger.view().acked_through, 0);

    // Accepted again: the outbox drains at the next slow retry and the error clears.
    hub.with(|h| h.upload_status = None);
    eventually("drained after the refusal", async || {
        let v = ledger.view();
        v.outbox_depth() == 0 && hub.with(|h| h.acked) == v.last_seq
    })
    .await;
    eventually("error cleared", async || {
        agent.sync_status().last_error.is_none()
    })
    .await;

    // 2. A hub acknowledging seqs this ledger never wrote: the same slow retry, no tight loop.
    hub.with(|h| h.over_ack = 1_000);
    let sold = ledger
        .record_sale(sale("lane-1:1", &[(gtin(1), 1)]))
        .await
        .unwrap();
    eventually("the impossible ack is reported", async || {
        agent
            .sync_status()
            .last_error
            .is_some_and(|e| e.contains("acknowledged through seq"))
    })
    .await;
    let sent = uploads_in_a_while(&hub, 20).await;
    assert!(sent <= 3, "{sent} uploads in 1.5 s: not a slow retry");
    assert_eq!(agent.sync_status().link, Link::Up);
    assert!(ledger.view().acked_through < sold.seq, "nothing believed");
    hub.with(|h| h.over_ack = 0);
    eventually("drained after the confused acks", async || {
        let v = ledger.view();
        v.outbox_depth() == 0 && hub.with(|h| h.acked) == v.last_seq
    })
    .await;
    hub.with(|h| assert!(h.disorder.is_empty(), "{:?}", h.disorder));

    agent.shutdown().await;
    verify(dir.path()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_too_large_for_the_hub_goes_again_in_halves() {
    let (hub, url) = start_fake().await;
    // Held off (503) until the outbox is longer than one batch.
    hub.with(|h| {
        h.upload_status = Some(StatusCode::SERVICE_UNAVAILABLE);
        h.max_upload = Some(3);
    });
    for n in 1..=6 {
        hub.push_change(ChangeBody::Price(price(gtin(n), 1, 100, now_ms() - 1_000)));
    }
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(quick_config(url, dir.path(), 8), Arc::new(SystemClock))
        .await
        .unwrap();
    let ledger = agent.ledger().clone();
    eventually("a backlog of 12 events", async || {
        ledger.view().last_seq >= 12
    })
    .await;
    let from = hub.with(|h| {
        h.upload_status = None;
        h.uploads.len()
    });
    eventually("drained in smaller uploads", async || {
        let v = ledger.view();
        v.outbox_depth() == 0 && hub.with(|h| h.acked) == v.last_seq
    })
    .await;
    let uploads = hub.with(|h| h.uploads[from..].to_vec());
    let refused: Vec<usize> = (0..uploads.len())
        .filter(|&i| uploads[i].1 == 413)
        .collect();
    assert!(!refused.is_empty(), "no upload was too large: {uploads:?}");
    for i in refused {
        let (too_many, _) = uploads[i];
        let (next, _) = uploads[i + 1];
        assert!(
            next <= too_many / 2,
            "after 413 on {too_many} events the next upload carried {next}: {uploads:?}"
        );
    }
    assert!(
        uploads.iter().all(|&(n, status)| status != 200 || n <= 3),
        "{uploads:?}"
    );
    hub.with(|h| assert!(h.disorder.is_empty(), "{:?}", h.disorder));
    let local = ledger.events_after(0, 1_000).await.unwrap();
    assert_eq!(
        hub.with(|h| h.stored.values().cloned().collect::<Vec<_>>()),
        local
    );
    agent.shutdown().await;
    verify(dir.path()).unwrap();
}
