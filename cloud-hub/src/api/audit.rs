//! `GET /v1/audit` (admin): the hub's append-only, hash-chained audit log.
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::{AdminAuth, ApiError, ApiQuery, AppState};
use crate::timefmt::format_rfc3339;

/// Entries per page unless `limit` says otherwise.
pub const DEFAULT_AUDIT_LIMIT: u32 = 100;
/// Most entries per page.
pub const MAX_AUDIT_LIMIT: u32 = 1_000;

#[derive(Debug, Deserialize)]
pub struct AuditParams {
    /// First entry (seq) to return; 1 is the beginning.
    #[serde(default)]
    pub from: Option<u64>,
    #[serde(default)]
    pub limit: Option<u32>,
}

/// One entry as the API shows it.
#[derive(Debug, Serialize)]
pub struct AuditEntryBody {
    pub seq: u64,
    pub at: String,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: serde_json::Value,
    pub hash: String,
}

#[derive(Debug, Serialize)]
pub struct AuditPage {
    pub entries: Vec<AuditEntryBody>,
    /// The `from` of the next page.
    pub next: u64,
}

/// `GET /v1/audit?from=&limit=`: entries from seq `from` on, oldest first.
pub async fn list(
    State(state): State<AppState>,
    _auth: AdminAuth,
    ApiQuery(q): ApiQuery<AuditParams>,
) -> Result<Json<AuditPage>, ApiError> {
    let from = q.from.unwrap_or(1).max(1);
    let limit = match q.limit {
        Some(0) => return Err(ApiError::BadRequest("limit must be at least 1".into())),
        Some(n) => n.min(MAX_AUDIT_LIMIT),
        None => DEFAULT_AUDIT_LIMIT,
    };
    let entries = state.storage.audit_entries(from, limit).await?;
    let next = entries.last().map_or(from, |e| e.seq + 1);
    let entries = entries
        .into_iter()
        .map(|e| AuditEntryBody {
            seq: e.seq,
            at: format_rfc3339(e.at),
            at_ms: e.at.0,
            actor: e.actor,
            action: e.action,
            subject: e.subject,
            // Stored by the hub from a JSON value; a row that does not parse is shown as text.
            detail: serde_json::from_str(&e.detail).unwrap_or(serde_json::Value::String(e.detail)),
            hash: e.hash,
        })
        .collect();
    Ok(Json(AuditPage { entries, next }))
}
