//! `POST /v1/price-batches` and `GET /v1/price-batches/{id}`.
use aisle_protocol::{BatchId, StoreId};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiPath, ApiQuery, AppState, Body, PricingAuth, media_type};
use crate::price_batch::PriceBatch;
use crate::timefmt::format_rfc3339;

/// Query of a CSV upload (JSON batches carry these in the body).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchParams {
    pub stores: Option<String>,
    pub effective_at: Option<String>,
}

/// Answer to a stored batch.
#[derive(Debug, Serialize, Deserialize)]
pub struct BatchCreated {
    pub batch_id: BatchId,
    pub items: usize,
    pub stores: Vec<StoreId>,
    pub created_at: String,
    pub effective_at: String,
}

/// A batch's progress per store.
#[derive(Debug, Serialize, Deserialize)]
pub struct BatchProgressBody {
    pub batch_id: BatchId,
    pub created_at: String,
    pub effective_at: String,
    pub items: u64,
    pub stores: Vec<StoreProgressBody>,
    /// Per store of the batch: its shelf labels bound to the batch's products against the
    /// versions this batch gave them.
    pub labels: Vec<StoreLabelsBody>,
}

/// Shelf labels of one store for one batch: `confirmed` show the batch's price (or a newer
/// one), `failed` reported "label not updated" for it (or a newer one) and did not confirm,
/// `pending` neither yet.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoreLabelsBody {
    pub store: StoreId,
    pub bound: u64,
    pub confirmed: u64,
    pub pending: u64,
    pub failed: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StoreProgressBody {
    pub store: StoreId,
    pub items: u64,
    pub staged: u64,
    pub active: u64,
}

/// `POST /v1/price-batches` (HQ): a JSON or CSV batch, stored all or nothing.
pub async fn create(
    State(state): State<AppState>,
    auth: PricingAuth,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<BatchParams>,
    Body(body): Body,
) -> Result<(StatusCode, Json<BatchCreated>), ApiError> {
    let batch = match media_type(&headers) {
        Some("text/csv") => {
            let stores = params.stores.as_deref().ok_or_else(|| {
                ApiError::BadRequest(
                    "a CSV batch names its stores in the query: ?stores=all or ?stores=S001,S002"
                        .into(),
                )
            })?;
            PriceBatch::from_csv(&body, stores, params.effective_at.as_deref())?
        }
        Some("application/json") => {
            if params.stores.is_some() || params.effective_at.is_some() {
                return Err(ApiError::BadRequest(
                    "a JSON batch carries stores and effective_at in its body, not the query"
                        .into(),
                ));
            }
            PriceBatch::from_json(&body)?
        }
        _ => {
            return Err(ApiError::UnsupportedMediaType(
                "send the batch as Content-Type: application/json or text/csv".into(),
            ));
        }
    };
    let receipt = state
        .storage
        .create_price_batch_by(&batch, &auth.principal().actor())
        .await?;
    state.metrics.price_batches.inc();
    state.metrics.price_batch_items.inc_by(receipt.items as u64);
    tracing::info!(
        target: "audit",
        batch = %receipt.batch_id,
        items = receipt.items,
        stores = receipt.stores.len(),
        "price batch stored"
    );
    Ok((
        StatusCode::CREATED,
        Json(BatchCreated {
            batch_id: receipt.batch_id,
            items: receipt.items,
            stores: receipt.stores,
            created_at: format_rfc3339(receipt.created_at),
            effective_at: format_rfc3339(receipt.effective_at),
        }),
    ))
}

/// `GET /v1/price-batches/{id}` (HQ): how far each store got, and its shelf labels.
pub async fn progress(
    State(state): State<AppState>,
    _auth: PricingAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<BatchProgressBody>, ApiError> {
    let id = BatchId::parse(&id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let p = state.storage.batch_progress(&id).await?;
    Ok(Json(BatchProgressBody {
        batch_id: p.batch_id,
        created_at: format_rfc3339(p.created_at),
        effective_at: format_rfc3339(p.effective_at),
        items: p.items,
        labels: p
            .stores
            .iter()
            .map(|s| StoreLabelsBody {
                store: s.store.clone(),
                bound: s.labels.bound,
                confirmed: s.labels.confirmed,
                pending: s.labels.pending(),
                failed: s.labels.failed,
            })
            .collect(),
        stores: p
            .stores
            .into_iter()
            .map(|s| StoreProgressBody {
                store: s.store,
                items: s.items,
                staged: s.staged,
                active: s.active,
            })
            .collect(),
    }))
}
