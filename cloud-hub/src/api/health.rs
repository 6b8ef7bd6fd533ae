//! Operations routes: health, metrics, the API document.
use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

use super::{ApiError, AppState};

/// The hand-written OpenAPI 3.1 document of this API.
pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

/// `GET /healthz`: `{"status":"ok"}` once the database answered.
pub async fn healthz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    state.storage.health().await.map_err(|e| {
        tracing::warn!(error = %e, "health check failed");
        ApiError::Unavailable("the database does not answer".into())
    })?;
    Ok(Json(serde_json::json!({ "status": "ok" })))
}

/// `GET /metrics`: Prometheus / OpenMetrics text.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// `GET /openapi.json`.
pub async fn openapi() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}
