//! `GET /v1/prices/{gtin}`: the price the store charges now.
use aisle_protocol::{BatchId, Gtin, Money};
use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState};
use crate::clock::rfc3339;
use aisle_protocol::sync::error_code;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceResponse {
    pub gtin: Gtin,
    pub name: String,
    pub price: Money,
    pub price_decimal: String,
    pub version: u64,
    pub batch_id: BatchId,
    /// When HQ made it effective (RFC 3339, hub time).
    pub effective_at: String,
    /// When it became active at this store (RFC 3339, hub-corrected time).
    pub active_since: String,
}

pub(super) async fn get_price(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<PriceResponse>, ApiError> {
    let Path(raw) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let shown: String = raw.chars().take(40).collect();
    let gtin =
        Gtin::parse(&raw).map_err(|e| ApiError::bad_request(format!("bad GTIN '{shown}': {e}")))?;
    let price = st
        .ledger
        .active_price(gtin)
        .await
        .map_err(|e| ApiError::ledger(&e))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                error_code::NOT_FOUND,
                format!("no active price for GTIN {gtin}"),
            )
        })?;
    Ok(Json(PriceResponse {
        gtin: price.gtin,
        name: price.name,
        price_decimal: price.price.decimal(),
        price: price.price,
        version: price.version,
        batch_id: price.batch_id,
        effective_at: rfc3339(price.effective_at),
        active_since: rfc3339(price.active_since),
    }))
}
