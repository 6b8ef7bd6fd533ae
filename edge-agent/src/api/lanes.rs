//! Self-checkout lanes over HTTP: the lane screen (`/lane/{lane}`, kiosk mode) and its
//! WebSocket (`/v1/lanes/{lane}/ws`), the lane list, the simulated terminal's script, and the
//! digital receipt (`/receipts/{sale_id}?k=`).
//!
//! The WebSocket sends the lane's latest update on connect, then every update (JSON
//! `{"lane","seq","event","view"}`); it takes [`LaneRequest`] JSON text messages. A message that
//! is not a request is answered to that screen alone with `{"event":{"kind":"error",...}}`.
use aisle_protocol::SaleId;
use aisle_protocol::sync::error_code;
use axum::Json;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{broadcast, oneshot};

use super::{ApiError, AppState};
use crate::lane::{LaneCommand, LaneHandle, LaneRequest, MAX_REQUEST_BYTES, ScanSource, receipt};

const LANE_HTML: &str = include_str!("../../assets/lane.html");
const RECEIPT_HTML: &str = include_str!("../../assets/receipt.html");

/// Largest terminal script body.
const MAX_SCRIPT_BYTES: usize = 4096;

/// Largest WebSocket message a screen may send before the connection is dropped (requests
/// above [`MAX_REQUEST_BYTES`] and up to this are answered with an error event).
const MAX_WS_MESSAGE_BYTES: usize = 16 * MAX_REQUEST_BYTES;

fn lane<'a>(st: &'a AppState, id: &str) -> Result<&'a LaneHandle, ApiError> {
    st.lanes.lane(id).ok_or_else(|| {
        let shown: String = id.chars().take(20).collect();
        ApiError::new(
            StatusCode::NOT_FOUND,
            error_code::NOT_FOUND,
            format!("no lane {shown:?} at this gateway"),
        )
    })
}

pub(super) async fn page(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    match lane(&st, &id) {
        // Served like the pickup and setup pages: its own strict content-security-policy.
        Ok(_) => super::pickup_page::html_page(LANE_HTML),
        Err(e) => e.into_response(),
    }
}

pub(super) async fn list(State(st): State<AppState>) -> Json<serde_json::Value> {
    let lanes: Vec<serde_json::Value> = st
        .lanes
        .lanes
        .values()
        .map(|l| {
            let latest = l.latest.borrow().clone();
            serde_json::from_str(&latest).unwrap_or_else(|_| json!({"lane": l.id}))
        })
        .collect();
    Json(json!({ "lanes": lanes }))
}

pub(super) async fn ws(
    State(st): State<AppState>,
    Path(id): Path<String>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let handle = match lane(&st, &id) {
        Ok(h) => h.clone(),
        Err(e) => return e.into_response(),
    };
    // The WebSocket layer's own limit is above a request's, so an oversized request gets the
    // plain-words error from `LaneRequest::parse` instead of the connection being dropped.
    upgrade
        .max_message_size(MAX_WS_MESSAGE_BYTES)
        .max_frame_size(MAX_WS_MESSAGE_BYTES)
        .on_upgrade(move |socket| screen(socket, handle))
}

/// One screen: the latest update first, then every update; its requests go to the lane.
async fn screen(mut socket: WebSocket, lane: LaneHandle) {
    let mut updates = lane.updates.subscribe();
    let first = lane.latest.borrow().clone();
    if socket
        .send(Message::Text(first.as_ref().into()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            u = updates.recv() => match u {
                Ok(text) => {
                    if socket.send(Message::Text(text.as_ref().into())).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // A slow screen skips to the latest view.
                    let latest = lane.latest.borrow().clone();
                    if socket.send(Message::Text(latest.as_ref().into())).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            m = socket.recv() => match m {
                Some(Ok(Message::Text(t))) => {
                    let answer = match LaneRequest::parse(t.as_bytes()) {
                        Ok(req) => match lane.commands.try_send(req.into_command(ScanSource::Screen)) {
                            Ok(()) => None,
                            Err(_) => Some("The lane is busy; try again in a moment.".to_string()),
                        },
                        Err(e) => Some(e),
                    };
                    if let Some(message) = answer {
                        let text = json!({"lane": lane.id, "event": {"kind": "error", "message": message}}).to_string();
                        if socket.send(Message::Text(text.into())).await.is_err() {
                            return;
                        }
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let text = json!({"lane": lane.id, "event": {"kind": "error", "message": "send requests as JSON text"}}).to_string();
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
        }
    }
}

/// `POST /v1/lanes/{lane}/terminal`: one behaviour per line for the simulated terminal's next
/// payments (`approve`, `approve-offline`, `decline REASON`, `unavailable REASON`, `hang MS`).
/// Answers with every charge the terminal has made (an empty body just asks).
pub(super) async fn terminal(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ext: axum::http::Extensions,
    body: String,
) -> Result<Json<serde_json::Value>, ApiError> {
    let handle = lane(&st, &id)?;
    // A test and demo facility: only from the gateway itself, never from the store's network.
    let local = ext
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .is_some_and(|c| c.0.ip().is_loopback());
    if !local {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            error_code::FORBIDDEN,
            "the simulated terminal is scripted from the gateway itself (loopback) only",
        ));
    }
    if body.len() > MAX_SCRIPT_BYTES {
        return Err(ApiError::unprocessable(format!(
            "a terminal script is at most {MAX_SCRIPT_BYTES} bytes"
        )));
    }
    let lines: Vec<String> = body
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    let (tx, rx) = oneshot::channel();
    handle
        .commands
        .send(LaneCommand::TerminalScript { lines, reply: tx })
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                error_code::UNAVAILABLE,
                "the lane has stopped",
            )
        })?;
    match rx.await {
        Ok(Ok(charges)) => {
            let charges: Vec<serde_json::Value> = charges
                .iter()
                .map(|c| {
                    json!({
                        "sale_ref": c.approval.sale_ref,
                        "amount": c.approval.amount,
                        "auth_code": c.approval.auth_code,
                        "offline": c.approval.offline,
                        "reversed": c.reversed,
                    })
                })
                .collect();
            Ok(Json(json!({ "charges": charges })))
        }
        Ok(Err(e)) => Err(ApiError::unprocessable(e)),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            error_code::UNAVAILABLE,
            "the lane has stopped",
        )),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ReceiptQuery {
    #[serde(default)]
    k: String,
}

fn receipt_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        error_code::NOT_FOUND,
        "no such receipt (check the link)",
    )
}

fn checked(st: &AppState, sale_id: &str, k: &str) -> Result<SaleId, ApiError> {
    let key = st
        .lanes
        .receipt_key
        .as_ref()
        .ok_or_else(receipt_not_found)?;
    let id = SaleId::parse(sale_id).map_err(|_| receipt_not_found())?;
    if !receipt::check_link_key(key, id.as_str(), k) {
        return Err(receipt_not_found());
    }
    Ok(id)
}

/// `GET /receipts/{sale_id}?k=`: the digital receipt page.
pub(super) async fn receipt_page(
    State(st): State<AppState>,
    Path(sale_id): Path<String>,
    Query(q): Query<ReceiptQuery>,
) -> Response {
    match checked(&st, &sale_id, &q.k) {
        Ok(_) => super::pickup_page::html_page(RECEIPT_HTML),
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/receipts/{sale_id}?k=`: the receipt's data (lines with product names).
pub(super) async fn receipt_json(
    State(st): State<AppState>,
    Path(sale_id): Path<String>,
    Query(q): Query<ReceiptQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = checked(&st, &sale_id, &q.k)?;
    let sale = st
        .ledger
        .sale(id)
        .await
        .map_err(|e| ApiError::ledger(&e))?
        .ok_or_else(receipt_not_found)?;
    let mut lines = Vec::with_capacity(sale.record.lines.len());
    for l in &sale.record.lines {
        let name = st
            .ledger
            .active_price(l.gtin)
            .await
            .ok()
            .flatten()
            .map_or_else(|| l.gtin.to_string(), |p| p.name);
        lines.push(json!({
            "name": name,
            "gtin": l.gtin,
            "qty": l.qty,
            "weight_g": l.weight_g,
            "unit_price": l.unit_price.decimal(),
            "discount": l.discount.map(|d| d.decimal()),
            "line_total": l.line_total.decimal(),
        }));
    }
    Ok(Json(json!({
        "sale_id": sale.record.sale_id,
        "sold_at": crate::clock::rfc3339(sale.at),
        "store": st.store,
        "header": st.lanes.header,
        "lines": lines,
        "total": sale.record.total.decimal(),
        "currency": sale.record.total.currency,
        "payment": sale.record.payment,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lane screen and the digital receipt keep to the pickup page's policy.
    #[test]
    fn the_pages_keep_to_their_policy() {
        crate::api::pickup_page::assert_keeps_to_policy(LANE_HTML);
        crate::api::pickup_page::assert_keeps_to_policy(RECEIPT_HTML);
    }
}
