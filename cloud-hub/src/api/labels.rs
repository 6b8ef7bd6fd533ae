//! `GET /v1/stores/{id}/labels` (HQ, pricing role): a store's shelf labels against the current
//! price of their products, stale ones with how long.
use aisle_protocol::esl::LabelId;
use aisle_protocol::{BatchId, Gtin, StoreId, UtcMillis};
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiPath, ApiQuery, AppState, PricingAuth, require_store};
use crate::labels::{
    DEFAULT_LABELS_PER_PAGE, LabelFilter, LabelQuery, LabelReport, MAX_LABELS_PER_PAGE,
};
use crate::timefmt::format_rfc3339;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelParams {
    /// `all` (default), `confirmed`, `stale` (pending or failed), `pending`, `failed`.
    pub status: Option<String>,
    /// A label id (8 hex digits): list the labels after it.
    pub after: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LabelsBody {
    pub store: StoreId,
    /// The filter applied.
    pub status: String,
    /// The time the answer was computed at: prices effective at or before it count as current.
    pub as_of: String,
    pub labels: Vec<LabelBody>,
    /// More labels match: ask again with `after=next_after`.
    pub more: bool,
    pub next_after: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LabelBody {
    /// The label's id as printed on it (8 hex digits).
    pub label: String,
    pub gtin: Gtin,
    pub shelf: String,
    pub bound_at: String,
    /// `confirmed`, `pending`, `failed` or `unpriced` (no price of its GTIN has taken effect).
    pub status: String,
    /// The price version the label confirmed it shows, if any.
    pub shown_version: Option<u64>,
    pub shown_batch_id: Option<BatchId>,
    pub confirmed_at: Option<String>,
    /// The highest version of its GTIN's price at the store that has taken effect.
    pub current_version: Option<u64>,
    /// Pending or failed labels: since when the label has shown an old price.
    pub stale_since: Option<String>,
    pub stale_for_s: Option<u64>,
    /// The store's latest "label not updated" not cleared by a confirmation.
    pub not_updated: Option<NotUpdatedBody>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NotUpdatedBody {
    pub version: u64,
    pub batch_id: BatchId,
    pub at: String,
    pub reason: String,
}

fn body_of(r: &LabelReport, now: UtcMillis) -> LabelBody {
    let l = &r.label;
    LabelBody {
        label: l.label.to_string(),
        gtin: l.gtin,
        shelf: l.shelf.clone(),
        bound_at: format_rfc3339(l.bound_at),
        status: r.state().as_str().to_owned(),
        shown_version: l.confirmed.as_ref().map(|c| c.version),
        shown_batch_id: l.confirmed.as_ref().map(|c| c.batch_id.clone()),
        confirmed_at: l.confirmed.as_ref().map(|c| format_rfc3339(c.at)),
        current_version: r.current_version,
        stale_since: r.stale_since().map(format_rfc3339),
        stale_for_s: r.stale_for_s(now),
        not_updated: l.not_updated.as_ref().map(|n| NotUpdatedBody {
            version: n.version,
            batch_id: n.batch_id.clone(),
            at: format_rfc3339(n.at),
            reason: n.reason.clone(),
        }),
    }
}

/// `GET /v1/stores/{id}/labels?status=&after=&limit=`.
pub async fn list(
    State(state): State<AppState>,
    _auth: PricingAuth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<LabelParams>,
) -> Result<Json<LabelsBody>, ApiError> {
    let filter = match params.status.as_deref().map(str::trim) {
        None | Some("") => LabelFilter::All,
        Some(s) => LabelFilter::parse(s).map_err(ApiError::BadRequest)?,
    };
    let after = params
        .after
        .as_deref()
        .map(|a| LabelId::parse(a.trim()))
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("after: {e}")))?;
    let limit = match params.limit {
        None => DEFAULT_LABELS_PER_PAGE,
        Some(0) => return Err(ApiError::BadRequest("limit must be at least 1".into())),
        Some(n) => n.min(MAX_LABELS_PER_PAGE),
    };
    let store = require_store(&state, &id).await?;
    let now = UtcMillis::now();
    let page = state
        .storage
        .store_labels(&store.id, &LabelQuery::new(filter, after, limit, now))
        .await?;
    Ok(Json(LabelsBody {
        store: store.id,
        status: filter.as_str().to_owned(),
        as_of: format_rfc3339(now),
        next_after: page
            .more
            .then(|| page.labels.last().map(|l| l.label.label.to_string()))
            .flatten(),
        more: page.more,
        labels: page.labels.iter().map(|r| body_of(r, now)).collect(),
    }))
}
