//! `GET /v1/stores/{id}/footfall` (the report as JSON) and `GET /v1/stores/{id}/footfall.svg`
//! (the same report per hour as a chart). Read like the other store reports: the HQ token, or
//! the store's own gateway credential. What the numbers mean is in [`crate::footfall`].
use aisle_protocol::UtcMillis;
use axum::Json;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;
use serde::Deserialize;

use super::{ApiError, ApiPath, ApiQuery, AppState, Caller, parse_store_id, require_store};
use crate::footfall::chart::{MAX_CHART_BUCKETS, render_svg};
use crate::footfall::{FootfallReport, Interval, resolve_range};
use crate::storage::{FootfallQuery, MAX_FOOTFALL_BUCKETS, Store};
use crate::timefmt::parse_rfc3339;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FootfallParams {
    pub from: Option<String>,
    pub to: Option<String>,
    pub interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChartParams {
    pub from: Option<String>,
    pub to: Option<String>,
}

/// An optional RFC 3339 bound named `what`; empty counts as absent.
fn bound(what: &str, v: Option<&str>) -> Result<Option<UtcMillis>, ApiError> {
    match v.map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => parse_rfc3339(s)
            .map(Some)
            .map_err(|e| ApiError::BadRequest(format!("{what}: {e}"))),
    }
}

fn range(
    from: Option<&str>,
    to: Option<&str>,
    interval: Interval,
    max_buckets: i64,
) -> Result<FootfallQuery, ApiError> {
    let from = bound("from", from)?;
    let to = bound("to", to)?;
    resolve_range(from, to, interval, max_buckets, UtcMillis::now()).map_err(ApiError::BadRequest)
}

/// The caller's store, checked before anything about the query (so a gateway cannot probe which
/// other stores exist, and an unknown store is 404 whatever the query says).
async fn readable_store(state: &AppState, caller: &Caller, id: &str) -> Result<Store, ApiError> {
    caller.require_store(&parse_store_id(id)?)?;
    require_store(state, id).await
}

async fn report(
    state: &AppState,
    store: &Store,
    interval: Interval,
    query: &FootfallQuery,
) -> Result<FootfallReport, ApiError> {
    let tallies = state.storage.footfall(&store.id, query).await?;
    Ok(FootfallReport::build(store, interval, query, &tallies))
}

/// `GET /v1/stores/{id}/footfall?from=&to=&interval=15m|1h|1d`.
pub async fn footfall(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<FootfallParams>,
) -> Result<Json<FootfallReport>, ApiError> {
    let store = readable_store(&state, &caller, &id).await?;
    let interval = match params.interval.as_deref().map(str::trim) {
        None | Some("") => Interval::Hour,
        Some(s) => Interval::parse(s).map_err(ApiError::BadRequest)?,
    };
    let query = range(
        params.from.as_deref(),
        params.to.as_deref(),
        interval,
        MAX_FOOTFALL_BUCKETS,
    )?;
    Ok(Json(report(&state, &store, interval, &query).await?))
}

/// `GET /v1/stores/{id}/footfall.svg?from=&to=`: hourly, at most a week.
pub async fn chart(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<ChartParams>,
) -> Result<impl IntoResponse, ApiError> {
    let store = readable_store(&state, &caller, &id).await?;
    let query = range(
        params.from.as_deref(),
        params.to.as_deref(),
        Interval::Hour,
        MAX_CHART_BUCKETS,
    )?;
    let report = report(&state, &store, Interval::Hour, &query).await?;
    let svg = render_svg(&report).map_err(|e| {
        tracing::error!(error = %e, store = %store.id, "footfall chart failed");
        ApiError::Internal
    })?;
    Ok((
        [
            (CONTENT_TYPE, "image/svg+xml; charset=utf-8"),
            (CACHE_CONTROL, "no-store"),
        ],
        svg,
    ))
}
