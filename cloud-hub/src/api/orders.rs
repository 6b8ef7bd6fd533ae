//! Click-and-collect orders for HQ's order system: `POST /v1/orders`, `GET /v1/orders`,
//! `GET /v1/orders/{id}`, `POST /v1/orders/{id}/cancel`. All need the HQ token.
//!
//! Refusals: malformed JSON or a field out of bounds -> 400 (the message names the field or the
//! line), unknown store or a product the store does not sell -> 404, not enough stock or an
//! order id already used for another order -> 409 (naming the line), a cancellation of an
//! order that was collected or expired -> 409.
use aisle_protocol::pickup::RedeemMethod;
use aisle_protocol::sync::MAX_LINE_QTY;
use aisle_protocol::{EventId, Gtin, OrderId, StoreId, UtcMillis};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiPath, ApiQuery, AppState, Body, JsonBody, OrdersAuth, media_type};
use crate::pickup::{
    ConflictKind, MAX_ORDER_LIST, MAX_REASON_CHARS, NewOrder, OrderFilter, OrderLineRequest,
    OrderStatus, OrderView, PlacedOrder, Source, WebhookKind,
};
use crate::storage::StorageError;
use crate::timefmt::{format_rfc3339, parse_rfc3339};

/// Body of `POST /v1/orders`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    pub order_id: String,
    pub store: String,
    pub lines: Vec<LineRequest>,
    /// RFC 3339, or UTC milliseconds.
    pub pickup_by: TimeValue,
    #[serde(default)]
    pub notify: Option<NotifyRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineRequest {
    pub gtin: String,
    pub qty: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyRequest {
    #[serde(default)]
    pub webhook: Option<String>,
}

/// A time as RFC 3339 text or UTC milliseconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TimeValue {
    Millis(i64),
    Text(String),
}

/// Answer of `POST /v1/orders`: the first time 201, an identical retry 200 with the same body.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OrderCreated {
    pub order_id: OrderId,
    pub store: StoreId,
    /// `placed`: the status the order was created with (a retry answers the same; read
    /// `GET /v1/orders/{id}` for the current one).
    pub status: OrderStatus,
    pub placed_at: String,
    pub pickup_by: String,
    pub token: TokenBody,
}

/// What the shopper shows at the counter. Both are bearer secrets: hand them to the shopper only.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenBody {
    /// Text for the QR code: `AISLE1.<claims>.<signature>`.
    pub qr: String,
    /// The fallback code to type, `XXXX-XXXX`.
    pub code: String,
    pub expires_at: String,
}

impl From<PlacedOrder> for OrderCreated {
    fn from(p: PlacedOrder) -> Self {
        OrderCreated {
            order_id: p.order_id,
            store: p.store,
            status: OrderStatus::Placed,
            placed_at: format_rfc3339(p.placed_at),
            pickup_by: format_rfc3339(p.pickup_by),
            token: TokenBody {
                qr: p.qr,
                code: p.code.to_string(),
                expires_at: format_rfc3339(p.expires_at),
            },
        }
    }
}

/// An order as HQ reads it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OrderBody {
    pub order_id: OrderId,
    pub store: StoreId,
    pub status: OrderStatus,
    pub placed_at: String,
    pub pickup_by: String,
    pub expires_at: String,
    /// The pickup-area location once the store reported the order ready.
    pub location: Option<String>,
    pub lines: Vec<OrderLineBody>,
    pub collected: Option<CollectedBody>,
    pub cancellation: Option<CancellationBody>,
    pub notify: Option<NotifyBody>,
    pub history: Vec<HistoryBody>,
    pub conflicts: Vec<ConflictBody>,
    pub notifications: Vec<NotificationBody>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OrderLineBody {
    pub gtin: Gtin,
    pub qty: u32,
    pub name: String,
    pub missing: bool,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CollectedBody {
    pub at: String,
    pub by: String,
    pub staff: Option<String>,
    pub method: Option<RedeemMethod>,
    pub partial: bool,
    pub event_id: EventId,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CancellationBody {
    pub cancel_id: EventId,
    pub requested_at: String,
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NotifyBody {
    pub webhook: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HistoryBody {
    pub status: OrderStatus,
    pub at: String,
    pub source: Source,
    pub event_id: Option<EventId>,
    pub detail: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConflictBody {
    pub kind: ConflictKind,
    pub at: String,
    pub event_id: Option<EventId>,
    pub detail: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NotificationBody {
    pub event_id: EventId,
    #[serde(rename = "type")]
    pub kind: WebhookKind,
    pub created_at: String,
    pub attempts: u32,
    pub delivered_at: Option<String>,
    pub last_error: Option<String>,
}

impl From<OrderView> for OrderBody {
    fn from(o: OrderView) -> Self {
        OrderBody {
            order_id: o.order_id,
            store: o.store,
            status: o.status,
            placed_at: format_rfc3339(o.placed_at),
            pickup_by: format_rfc3339(o.pickup_by),
            expires_at: format_rfc3339(o.expires_at),
            location: o.location,
            lines: o
                .lines
                .into_iter()
                .map(|l| OrderLineBody {
                    gtin: l.gtin,
                    qty: l.qty,
                    name: l.name,
                    missing: l.missing,
                })
                .collect(),
            collected: o.collected.map(|c| CollectedBody {
                at: format_rfc3339(c.at),
                by: c.by,
                staff: c.staff,
                method: c.method,
                partial: c.partial,
                event_id: c.event_id,
            }),
            cancellation: o.cancellation.map(|c| CancellationBody {
                cancel_id: c.cancel_id,
                requested_at: format_rfc3339(c.requested_at),
                reason: c.reason,
            }),
            notify: o.webhook.map(|webhook| NotifyBody { webhook }),
            history: o
                .history
                .into_iter()
                .map(|h| HistoryBody {
                    status: h.status,
                    at: format_rfc3339(h.at),
                    source: h.source,
                    event_id: h.event_id,
                    detail: h.detail,
                })
                .collect(),
            conflicts: o
                .conflicts
                .into_iter()
                .map(|c| ConflictBody {
                    kind: c.kind,
                    at: format_rfc3339(c.at),
                    event_id: c.event_id,
                    detail: c.detail,
                })
                .collect(),
            notifications: o
                .notifications
                .into_iter()
                .map(|n| NotificationBody {
                    event_id: n.event_id,
                    kind: n.kind,
                    created_at: format_rfc3339(n.created_at),
                    attempts: n.attempts,
                    delivered_at: n.delivered_at.map(format_rfc3339),
                    last_error: n.last_error,
                })
                .collect(),
        }
    }
}

/// Storage refusals of the orders API: a bad value is 400 here, an unknown store 404.
fn order_error(e: StorageError) -> ApiError {
    match e {
        StorageError::InvalidInput(m) => ApiError::BadRequest(m),
        StorageError::UnknownStore(s) => ApiError::NotFound(format!("unknown store {s}")),
        other => other.into(),
    }
}

fn parse_order_id(id: &str) -> Result<OrderId, ApiError> {
    OrderId::parse(id).map_err(|e| ApiError::BadRequest(format!("order_id: {e}")))
}

/// Checks the request's shape; what depends on stored data is checked by the storage.
pub fn parse_request(req: OrderRequest) -> Result<NewOrder, ApiError> {
    let order_id = parse_order_id(req.order_id.trim())?;
    let store = StoreId::parse(req.store.trim())
        .map_err(|e| ApiError::BadRequest(format!("store: {e}")))?;
    let mut lines = Vec::with_capacity(req.lines.len());
    for (i, l) in req.lines.iter().enumerate() {
        let line = i + 1;
        let gtin = Gtin::parse(l.gtin.trim())
            .map_err(|e| ApiError::BadRequest(format!("line {line}: gtin: {e}")))?;
        let qty = u32::try_from(l.qty)
            .ok()
            .filter(|q| (1..=MAX_LINE_QTY).contains(q))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "line {line}: quantity must be 1 to {MAX_LINE_QTY}, got {}",
                    l.qty
                ))
            })?;
        lines.push(OrderLineRequest { gtin, qty });
    }
    let pickup_by = match req.pickup_by {
        TimeValue::Millis(ms) if ms >= 0 => UtcMillis(ms),
        TimeValue::Millis(ms) => {
            return Err(ApiError::BadRequest(format!(
                "pickup_by: {ms} is before 1970"
            )));
        }
        TimeValue::Text(t) => {
            parse_rfc3339(t.trim()).map_err(|e| ApiError::BadRequest(format!("pickup_by: {e}")))?
        }
    };
    let webhook = req
        .notify
        .and_then(|n| n.webhook)
        .map(|w| w.trim().to_owned());
    NewOrder::new(order_id, store, lines, pickup_by, webhook).map_err(order_error)
}

/// `POST /v1/orders` (HQ): places an order, reserves its stock and answers the pickup token.
pub async fn create(
    State(state): State<AppState>,
    _auth: OrdersAuth,
    JsonBody(req): JsonBody<OrderRequest>,
) -> Result<(StatusCode, Json<OrderCreated>), ApiError> {
    let order = parse_request(req)?;
    let receipt = state
        .storage
        .create_order(&order, UtcMillis::now())
        .await
        .map_err(order_error)?;
    let status = if receipt.created {
        state.metrics.orders_created.inc();
        tracing::info!(
            target: "audit",
            order = %order.order_id,
            store = %order.store,
            lines = order.lines.len(),
            "pickup order placed"
        );
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(receipt.order.into())))
}

/// `GET /v1/orders/{id}` (HQ): status, lines, history, conflicts and notifications.
pub async fn get(
    State(state): State<AppState>,
    _auth: OrdersAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<OrderBody>, ApiError> {
    let id = parse_order_id(&id)?;
    let view = state
        .storage
        .order(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("unknown order {id}")))?;
    Ok(Json(view.into()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /v1/orders/{id}/cancel` (HQ), with no body or `{"reason": "..."}`: cancelled at once
/// at HQ, stock released, the cancellation sent to the store; answers the order.
pub async fn cancel(
    State(state): State<AppState>,
    auth: OrdersAuth,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Json<OrderBody>, ApiError> {
    let id = parse_order_id(&id)?;
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        if media_type(&headers) != Some("application/json") {
            return Err(ApiError::UnsupportedMediaType(
                "send the body as Content-Type: application/json (or no body)".into(),
            ));
        }
        let req: CancelRequest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
        match req.reason.map(|r| r.trim().to_owned()) {
            Some(r) if r.is_empty() => None,
            Some(r) if r.chars().count() > MAX_REASON_CHARS || r.chars().any(char::is_control) => {
                return Err(ApiError::BadRequest(format!(
                    "reason must be at most {MAX_REASON_CHARS} characters without control characters"
                )));
            }
            r => r,
        }
    };
    let receipt = state
        .storage
        .cancel_order_by(
            &id,
            reason.as_deref(),
            UtcMillis::now(),
            &auth.principal().actor(),
        )
        .await
        .map_err(order_error)?;
    if receipt.cancelled_now {
        state.metrics.orders_cancelled.inc();
        state.webhooks.notify_one();
        tracing::info!(
            target: "audit",
            order = %id,
            cancel_id = %receipt.cancel_id.map(|c| c.to_hex()).unwrap_or_default(),
            reason = reason.as_deref().unwrap_or(""),
            "pickup order cancelled"
        );
    }
    let view = state
        .storage
        .order(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("unknown order {id}")))?;
    Ok(Json(view.into()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    pub store: Option<String>,
    pub status: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct OrderListBody {
    pub orders: Vec<OrderSummaryBody>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct OrderSummaryBody {
    pub order_id: OrderId,
    pub store: StoreId,
    pub status: OrderStatus,
    pub placed_at: String,
    pub pickup_by: String,
    pub lines: u32,
}

/// `GET /v1/orders?store=&status=&limit=` (HQ): orders, newest first.
pub async fn list(
    State(state): State<AppState>,
    _auth: OrdersAuth,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<OrderListBody>, ApiError> {
    let store = params
        .store
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(StoreId::parse)
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("store: {e}")))?;
    let status = params
        .status
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(OrderStatus::parse)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let limit = match params.limit {
        Some(0) => return Err(ApiError::BadRequest("limit must be at least 1".into())),
        Some(n) => n.min(MAX_ORDER_LIST),
        None => 0,
    };
    let orders = state
        .storage
        .list_orders(&OrderFilter {
            store,
            status,
            limit,
        })
        .await?;
    Ok(Json(OrderListBody {
        orders: orders
            .into_iter()
            .map(|o| OrderSummaryBody {
                order_id: o.order_id,
                store: o.store,
                status: o.status,
                placed_at: format_rfc3339(o.placed_at),
                pickup_by: format_rfc3339(o.pickup_by),
                lines: o.lines,
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req(json: &str) -> Result<NewOrder, ApiError> {
        parse_request(serde_json::from_str(json).unwrap())
    }

    #[test]
    fn requests_parse_with_clear_refusals() {
        let ok = req(
            r#"{"order_id":"web-1","store":"S001","lines":[{"gtin":"9501101531000","qty":2}],
                "pickup_by":"2026-11-23T18:00:00+08:00","notify":{"webhook":"http://oms/h"}}"#,
        )
        .unwrap();
        assert_eq!(ok.pickup_by, parse_rfc3339("2026-11-23T10:00:00Z").unwrap());
        assert_eq!(ok.webhook.as_deref(), Some("http://oms/h"));
        let ms = req(
            r#"{"order_id":"web-1","store":"S001","lines":[{"gtin":"9501101531000","qty":2}],"pickup_by":5}"#,
        )
        .unwrap();
        assert_eq!((ms.pickup_by, ms.webhook), (UtcMillis(5), None));

        let bad = |json: &str, needle: &str| match req(json) {
            Err(ApiError::BadRequest(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("{other:?}"),
        };
        bad(
            r#"{"order_id":"web 1","store":"S001","lines":[],"pickup_by":5}"#,
            "order_id",
        );
        bad(
            r#"{"order_id":"w","store":"S001","lines":[{"gtin":"123","qty":1}],"pickup_by":5}"#,
            "line 1: gtin",
        );
        bad(
            r#"{"order_id":"w","store":"S001","lines":[{"gtin":"9501101531000","qty":-1}],"pickup_by":5}"#,
            "line 1: quantity must be 1 to 9999, got -1",
        );
        bad(
            r#"{"order_id":"w","store":"S001","lines":[{"gtin":"9501101531000","qty":1}],"pickup_by":"tomorrow"}"#,
            "pickup_by",
        );
        bad(
            r#"{"order_id":"w","store":"S001","lines":[],"pickup_by":5}"#,
            "at least one line",
        );
    }
}
