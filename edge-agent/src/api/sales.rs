//! `POST /v1/sales`: a lane's sale, priced from the active prices, committed durably, then
//! answered. Idempotent by `sale_id`.
use aisle_protocol::sync::{MAX_LINE_QTY, MAX_SALE_LINES, Payment, error_code};
use aisle_protocol::{Gtin, Money, SaleId};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState};
use crate::clock::rfc3339;
use crate::ledger::{SaleReceipt, SaleRejection, SaleRequest, SaleRequestLine};

/// Largest sale request body.
pub const MAX_SALE_BODY_BYTES: usize = 1024 * 1024;

/// The body as sent, before validation: quantities are read as signed so a negative one gets a
/// clear message instead of a type error.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SaleBody {
    sale_id: String,
    lines: Vec<LineBody>,
    payment: Payment,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LineBody {
    gtin: String,
    qty: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleResponse {
    pub sale_id: SaleId,
    pub seq: u64,
    /// RFC 3339, hub-corrected time of the commit.
    pub sold_at: String,
    pub total: Money,
    pub total_decimal: String,
    pub lines: Vec<SaleLineResponse>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleLineResponse {
    pub gtin: Gtin,
    pub qty: u32,
    pub unit_price: Money,
    pub line_total: Money,
    pub price_version: u64,
}

impl From<&SaleReceipt> for SaleResponse {
    fn from(r: &SaleReceipt) -> Self {
        SaleResponse {
            sale_id: r.record.sale_id.clone(),
            seq: r.seq,
            sold_at: rfc3339(r.at),
            total: r.record.total,
            total_decimal: r.record.total.decimal(),
            lines: r
                .record
                .lines
                .iter()
                .map(|l| SaleLineResponse {
                    gtin: l.gtin,
                    qty: l.qty,
                    unit_price: l.unit_price,
                    line_total: l.line_total,
                    price_version: l.price_version,
                })
                .collect(),
        }
    }
}

fn parse(bytes: &[u8]) -> Result<SaleRequest, ApiError> {
    let body: SaleBody = serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::unprocessable(format!("invalid sale: {e}")),
        _ => ApiError::bad_request(format!("malformed JSON: {e}")),
    })?;
    let sale_id = SaleId::parse(&body.sale_id)
        .map_err(|e| ApiError::unprocessable(format!("sale_id: {e}")))?;
    if body.lines.is_empty() {
        return Err(ApiError::unprocessable("a sale needs at least one line"));
    }
    if body.lines.len() > MAX_SALE_LINES {
        return Err(ApiError::unprocessable(format!(
            "a sale may have at most {MAX_SALE_LINES} lines, got {}",
            body.lines.len()
        )));
    }
    let mut lines = Vec::with_capacity(body.lines.len());
    for (i, l) in body.lines.iter().enumerate() {
        let n = i + 1;
        let shown: String = l.gtin.chars().take(40).collect();
        let gtin = Gtin::parse(&l.gtin)
            .map_err(|e| ApiError::unprocessable(format!("line {n}: gtin '{shown}': {e}")))?;
        let qty = u32::try_from(l.qty)
            .ok()
            .filter(|q| (1..=MAX_LINE_QTY).contains(q))
            .ok_or_else(|| {
                ApiError::unprocessable(format!(
                    "line {n}: quantity must be 1 to {MAX_LINE_QTY}, got {}",
                    l.qty
                ))
            })?;
        lines.push(SaleRequestLine { gtin, qty });
    }
    Ok(SaleRequest {
        sale_id,
        lines,
        payment: body.payment,
    })
}

pub(super) async fn create_sale(
    State(st): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<SaleResponse>), ApiError> {
    let bytes = body.map_err(|e| {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            error_code::PAYLOAD_TOO_LARGE
        } else {
            error_code::BAD_REQUEST
        };
        ApiError::new(
            status,
            code,
            format!(
                "{} (a sale body may be at most {MAX_SALE_BODY_BYTES} bytes)",
                e.body_text()
            ),
        )
    })?;
    let req = parse(&bytes)?;
    match st.ledger.record_sale(req).await {
        Ok(r) => {
            let status = if r.replayed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok((status, Json(SaleResponse::from(&r))))
        }
        Err(SaleRejection::Ledger(e)) => Err(ApiError::ledger(&e)),
        Err(e @ SaleRejection::Conflict(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            error_code::CONFLICT,
            e.to_string(),
        )),
        Err(e) => Err(ApiError::unprocessable(e.to_string())),
    }
}
