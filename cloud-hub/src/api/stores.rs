//! Store reads (sales, stock) and HQ stock adjustments.
use aisle_protocol::sync::{MAX_CHANGES_PER_PAGE, Payment, SaleLine};
use aisle_protocol::{EventId, GatewayId, Gtin, Money, SaleId, StoreId};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{
    AdminAuth, ApiError, ApiPath, ApiQuery, AppState, Caller, JsonBody, parse_store_id,
    require_store,
};
use crate::storage::{NewStockAdjustment, SalesSince};
use crate::timefmt::{format_rfc3339, parse_rfc3339};

/// Sales per page unless `limit` says otherwise.
pub const DEFAULT_SALES_LIMIT: u32 = 1_000;
/// Most sales per page.
pub const MAX_SALES_LIMIT: u32 = MAX_CHANGES_PER_PAGE;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesParams {
    pub since: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SalesBody {
    pub store: StoreId,
    pub sales: Vec<SaleBody>,
    /// The hub_seq cursor to pass as `since` for the next page.
    pub next: u64,
    pub more: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SaleBody {
    pub sale_id: SaleId,
    pub event_id: EventId,
    pub gateway: GatewayId,
    pub sold_at: String,
    pub total: Money,
    pub total_decimal: String,
    pub lines: Vec<SaleLine>,
    pub payment: Payment,
    pub hub_seq: u64,
}

/// `since` is a hub_seq cursor (digits) or an RFC 3339 time.
fn parse_since(since: Option<&str>) -> Result<SalesSince, ApiError> {
    match since.map(str::trim) {
        None | Some("") => Ok(SalesSince::All),
        Some(s) if s.bytes().all(|b| b.is_ascii_digit()) => s
            .parse()
            .map(SalesSince::Cursor)
            .map_err(|_| ApiError::BadRequest(format!("since: cursor {s} is out of range"))),
        Some(s) => parse_rfc3339(s)
            .map(SalesSince::Time)
            .map_err(|e| ApiError::BadRequest(format!("since: a hub_seq number or {e}"))),
    }
}

/// `GET /v1/stores/{id}/sales?since=&limit=` (HQ, or the store's own gateway).
pub async fn sales(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<SalesParams>,
) -> Result<Json<SalesBody>, ApiError> {
    // Permission first, so a gateway cannot probe which other stores exist.
    caller.require_store(&parse_store_id(&id)?)?;
    let store = require_store(&state, &id).await?;
    let since = parse_since(params.since.as_deref())?;
    let limit = match params.limit {
        None => DEFAULT_SALES_LIMIT,
        Some(0) => return Err(ApiError::BadRequest("limit must be at least 1".into())),
        Some(n) => n.min(MAX_SALES_LIMIT),
    };
    let page = state.storage.sales_since(&store.id, since, limit).await?;
    Ok(Json(SalesBody {
        store: store.id,
        next: page.next,
        more: page.more,
        sales: page
            .sales
            .into_iter()
            .map(|s| SaleBody {
                sale_id: s.record.sale_id,
                event_id: s.event_id,
                gateway: s.gateway,
                sold_at: format_rfc3339(s.sold_at),
                total_decimal: s.record.total.decimal(),
                total: s.record.total,
                lines: s.record.lines,
                payment: s.record.payment,
                hub_seq: s.hub_seq,
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockParams {
    pub gtin: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StockBody {
    One {
        store: StoreId,
        gtin: Gtin,
        on_hand: i64,
        /// Held by open pickup orders.
        reserved: i64,
        /// on_hand - reserved: what a new pickup order may still take.
        available: i64,
    },
    All {
        store: StoreId,
        items: Vec<StockItem>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StockItem {
    pub gtin: Gtin,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
}

/// `GET /v1/stores/{id}/stock?gtin=` (HQ, or the store's own gateway).
pub async fn stock(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<StockParams>,
) -> Result<Json<StockBody>, ApiError> {
    // Permission first, so a gateway cannot probe which other stores exist.
    caller.require_store(&parse_store_id(&id)?)?;
    let store = require_store(&state, &id).await?;
    match params.gtin {
        Some(g) => {
            let gtin =
                Gtin::parse(g.trim()).map_err(|e| ApiError::BadRequest(format!("gtin: {e}")))?;
            let on_hand = state.storage.stock(&store.id, &gtin).await?;
            let reserved = state.storage.reserved(&store.id, &gtin).await?;
            Ok(Json(StockBody::One {
                store: store.id,
                gtin,
                on_hand,
                reserved,
                available: on_hand.saturating_sub(reserved),
            }))
        }
        None => {
            let levels = state.storage.stock_levels(&store.id).await?;
            Ok(Json(StockBody::All {
                store: store.id,
                items: levels
                    .into_iter()
                    .map(|l| StockItem {
                        gtin: l.gtin,
                        available: l.available(),
                        on_hand: l.on_hand,
                        reserved: l.reserved,
                    })
                    .collect(),
            }))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentRequest {
    pub gtin: String,
    pub delta: i64,
    pub reason: String,
    #[serde(default)]
    pub adjustment_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AdjustmentBody {
    pub adjustment_id: EventId,
    pub store: StoreId,
    pub gtin: Gtin,
    pub delta: i64,
    pub reason: String,
    /// The changefeed seq that carries the adjustment to the store.
    pub seq: u64,
}

/// `POST /v1/stores/{id}/stock-adjustments` (HQ): 201 when recorded, 200 for the same retry.
pub async fn adjust(
    State(state): State<AppState>,
    _auth: AdminAuth,
    ApiPath(id): ApiPath<String>,
    JsonBody(req): JsonBody<AdjustmentRequest>,
) -> Result<(StatusCode, Json<AdjustmentBody>), ApiError> {
    let store = require_store(&state, &id).await?;
    let gtin =
        Gtin::parse(req.gtin.trim()).map_err(|e| ApiError::Unprocessable(format!("gtin: {e}")))?;
    let adjustment_id = req
        .adjustment_id
        .as_deref()
        .map(EventId::parse)
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("adjustment_id: {e}")))?;
    let adj = NewStockAdjustment::new(adjustment_id, gtin, req.delta, &req.reason)?;
    let receipt = state.storage.add_stock_adjustment(&store.id, &adj).await?;
    if receipt.created {
        tracing::info!(
            target: "audit",
            store = %store.id,
            adjustment = %receipt.adjustment.adjustment_id,
            gtin = %gtin,
            delta = adj.delta,
            "stock adjustment recorded"
        );
    }
    let status = if receipt.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(AdjustmentBody {
            adjustment_id: receipt.adjustment.adjustment_id,
            store: receipt.store,
            gtin: receipt.adjustment.gtin,
            delta: receipt.adjustment.delta,
            reason: receipt.adjustment.reason,
            seq: receipt.seq,
        }),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aisle_protocol::UtcMillis;

    #[test]
    fn since_is_a_cursor_a_time_or_absent() {
        assert_eq!(parse_since(None).unwrap(), SalesSince::All);
        assert_eq!(parse_since(Some("42")).unwrap(), SalesSince::Cursor(42));
        assert_eq!(
            parse_since(Some("1970-01-01T00:00:01Z")).unwrap(),
            SalesSince::Time(UtcMillis(1000))
        );
        assert!(parse_since(Some("99999999999999999999999")).is_err());
        assert!(parse_since(Some("last tuesday")).is_err());
    }
}
