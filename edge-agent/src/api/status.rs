//! Health, metrics, the OpenAPI document and the sync status.
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, AppState, OPENAPI_JSON};
use crate::sync::SyncStatus;
use aisle_protocol::sync::error_code;

pub(super) async fn healthz(
    State(st): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    // A real read, so a broken database shows here.
    st.ledger.next_pending_effective_at().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            error_code::UNAVAILABLE,
            format!("ledger unreadable: {e}"),
        )
    })?;
    Ok(Json(json!({ "status": "ok" })))
}

pub(super) async fn metrics(State(st): State<AppState>) -> Result<Response, ApiError> {
    match st.ledger.pickup_counts().await {
        Ok(counts) => st.pickup.metrics.set_orders(&counts),
        Err(e) => tracing::warn!(error = %e, "cannot count pickup orders for metrics"),
    }
    let text = st.metrics.render(&st.ledger).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            error_code::INTERNAL,
            "cannot encode metrics",
        )
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

pub(super) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

pub(super) async fn sync_status(State(st): State<AppState>) -> Json<SyncStatus> {
    Json(st.sync.status(&st.ledger))
}
