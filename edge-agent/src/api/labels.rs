//! Shelf labels: the technician's binding flow (scan the label, scan the product, say the shelf),
//! unbinding, the CSV bulk import, the list and one label, and the preview PNG drawn by the
//! tag's own renderer. Binding, unbinding and importing need a signed-in staff session (the
//! pickup PINs); the ledger records who.
use aisle_protocol::esl::{DynamicFields, LabelId};
use aisle_protocol::sync::error_code;
use aisle_protocol::{BatchId, Gtin, Money};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::AppState;
use super::staff::{StaffSession, body_error, error, json_body};
use crate::clock::rfc3339;
use crate::labels::import::parse_csv;
use crate::labels::preview::{PreviewError, preview_png};
use crate::labels::{TagLive, scan_gtin, scan_label};
use crate::ledger::labels::{panel_name, parse_panel};
use crate::ledger::{BindLabel, BindProblem, BindRowError, LabelRecord, LabelRefusal, LabelStatus};

/// Actions in the gateway's audit log (beside the ledger's own `label_bound`/`label_unbound`
/// events, which also name who).
pub const AUDIT_LABEL_BOUND: &str = "label_bound";
pub const AUDIT_LABEL_UNBOUND: &str = "label_unbound";
pub const AUDIT_LABELS_IMPORTED: &str = "labels_imported";

/// Records a binding change in the gateway's audit log, off the async threads.
async fn audit(st: &AppState, staff: &str, action: &'static str, subject: String) {
    let log = st.audit.clone();
    let actor = format!("staff:{staff}");
    let at_ms = aisle_protocol::UtcMillis::now().0;
    let _ = tokio::task::spawn_blocking(move || log.record(at_ms, &actor, action, &subject)).await;
}

/// Largest body of a single bind.
pub const MAX_BIND_BODY_BYTES: usize = 16 * 1024;
const DEFAULT_LIMIT: usize = 500;
const MAX_LIMIT: usize = 5_000;

/// A label as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelJson {
    /// The 8 hex digits printed on the label.
    pub label: String,
    pub gtin: Gtin,
    pub shelf: String,
    pub panel: String,
    pub bound_at: String,
    pub bound_by: Option<String>,
    pub status: LabelStatus,
    /// The active price the label should show (null: the product has no active price).
    pub wanted: Option<PriceJson>,
    /// What the label last confirmed it shows.
    pub confirmed: Option<ConfirmedJson>,
    pub not_updated: Option<NotUpdatedJson>,
    /// What the planner last heard from the tag (null: not heard since the agent started).
    pub tag: Option<TagLive>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceJson {
    pub version: u64,
    pub batch_id: BatchId,
    pub price: Money,
    pub name: String,
    pub active_since: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmedJson {
    pub gtin: Gtin,
    pub version: u64,
    pub batch_id: BatchId,
    pub price: Money,
    pub name: String,
    pub content: String,
    pub confirmed_at: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotUpdatedJson {
    pub version: u64,
    pub batch_id: BatchId,
    pub reason: String,
    pub at: String,
}

fn label_json(r: LabelRecord, tag: Option<TagLive>) -> LabelJson {
    let status = r.status();
    LabelJson {
        label: r.binding.label.to_string(),
        gtin: r.binding.gtin,
        shelf: r.binding.shelf,
        panel: panel_name(r.binding.panel).to_string(),
        bound_at: rfc3339(r.binding.bound_at),
        bound_by: r.binding.bound_by,
        status,
        wanted: r.wanted.map(|w| PriceJson {
            version: w.version,
            batch_id: w.batch_id,
            price: w.price,
            name: w.name,
            active_since: rfc3339(w.active_since),
        }),
        confirmed: r.confirmed.map(|c| ConfirmedJson {
            gtin: c.gtin,
            version: c.version,
            batch_id: c.batch_id,
            price: c.shown.price,
            name: c.shown.name,
            content: c.shown.content.to_string(),
            confirmed_at: rfc3339(c.confirmed_at),
        }),
        not_updated: r.not_updated.map(|n| NotUpdatedJson {
            version: n.version,
            batch_id: n.batch_id,
            reason: n.reason,
            at: rfc3339(n.at),
        }),
        tag,
    }
}

fn not_found(label: LabelId) -> Response {
    error(
        StatusCode::NOT_FOUND,
        error_code::NOT_FOUND,
        format!("label {label} is not bound at this store"),
        Value::Null,
    )
}

fn bad(message: impl Into<String>) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        error_code::BAD_REQUEST,
        message,
        Value::Null,
    )
}

fn ledger_error(e: &crate::ledger::LedgerError) -> Response {
    super::ApiError::ledger(e).into_response()
}

fn label_path(path: Result<Path<String>, PathRejection>) -> Result<LabelId, Box<Response>> {
    let Path(raw) = path.map_err(|e| Box::new(bad(e.body_text())))?;
    LabelId::parse(&raw).map_err(|_| {
        let shown: String = raw.chars().take(20).collect();
        Box::new(bad(format!(
            "'{shown}' is not a label id: 8 hexadecimal digits, as printed on the label"
        )))
    })
}

/// The refusal of rows: 422 with every row named; a single bind's refusal keeps its own code.
fn rows_refused(rows: Vec<BindRowError>) -> Response {
    let code = match rows.as_slice() {
        [one] => match one.problem {
            BindProblem::NoPrice => "no_price",
            BindProblem::Shelf => "bad_shelf",
            BindProblem::Duplicate => "duplicate_label",
            BindProblem::Malformed => error_code::BAD_REQUEST,
        },
        _ => "rows_refused",
    };
    let message = match rows.as_slice() {
        [one] if one.line <= 1 => one.message.clone(),
        _ => format!(
            "{} row(s) refused, nothing was bound: {}",
            rows.len(),
            rows.iter()
                .take(5)
                .map(|r| format!("line {}: {}", r.line, r.message))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    };
    error(
        StatusCode::UNPROCESSABLE_ENTITY,
        code,
        message,
        json!({ "rows": rows }),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BindBody {
    /// As scanned from the label's barcode.
    label: String,
    /// As scanned from the product's barcode.
    gtin: String,
    shelf: String,
    #[serde(default)]
    panel: Option<String>,
}

/// `POST /v1/labels/bind`.
pub(super) async fn bind(
    State(st): State<AppState>,
    staff: StaffSession,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let bytes = match body {
        Ok(b) => b,
        Err(e) => return body_error(&e),
    };
    let body: BindBody = match json_body(&bytes) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let label = match scan_label(&body.label) {
        Ok(l) => l,
        Err(e) => return bad(e),
    };
    let gtin = match scan_gtin(&body.gtin) {
        Ok(g) => g,
        Err(e) => return bad(e),
    };
    let panel = match body.panel.as_deref() {
        None | Some("") => st.labels.default_panel,
        Some(p) => match parse_panel(p) {
            Some(p) => p,
            None => {
                return bad(format!(
                    "panel '{p}' is not one of bw290, bwr290, bw420, bwr420"
                ));
            }
        },
    };
    let row = BindLabel {
        label,
        gtin,
        shelf: body.shelf.trim().to_string(),
        panel,
        by: Some(staff.staff.clone()),
    };
    match st.ledger.bind_labels(vec![(0, row)]).await {
        Ok(out) => {
            tracing::info!(%label, %gtin, staff = %staff.staff, changed = out.bound > 0, "label bound");
            if out.bound > 0 {
                let subject = format!("{label} {gtin} shelf {}", body.shelf.trim());
                audit(&st, &staff.staff, AUDIT_LABEL_BOUND, subject).await;
            }
            match st.ledger.label(label).await {
                Ok(Some(r)) => {
                    let mut v = json!(label_json(r, st.labels.live(label)));
                    v["changed"] = json!(out.bound > 0);
                    Json(v).into_response()
                }
                Ok(None) => not_found(label),
                Err(e) => ledger_error(&e),
            }
        }
        Err(LabelRefusal::Rows(rows)) => rows_refused(rows),
        Err(LabelRefusal::NotBound(l)) => not_found(l),
        Err(LabelRefusal::Ledger(e)) => ledger_error(&e),
    }
}

/// `DELETE /v1/labels/{id}`.
pub(super) async fn unbind(
    State(st): State<AppState>,
    staff: StaffSession,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let label = match label_path(path) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    match st
        .ledger
        .unbind_label(label, Some(staff.staff.clone()))
        .await
    {
        Ok(b) => {
            tracing::info!(%label, staff = %staff.staff, "label unbound");
            let subject = format!("{label} {} shelf {}", b.gtin, b.shelf);
            audit(&st, &staff.staff, AUDIT_LABEL_UNBOUND, subject).await;
            Json(json!({
                "label": label.to_string(),
                "gtin": b.gtin,
                "shelf": b.shelf,
                "unbound": true,
            }))
            .into_response()
        }
        Err(LabelRefusal::NotBound(l)) => not_found(l),
        Err(LabelRefusal::Rows(rows)) => rows_refused(rows),
        Err(LabelRefusal::Ledger(e)) => ledger_error(&e),
    }
}

/// `POST /v1/labels/import`: a CSV body (`label,gtin,shelf[,panel]`), all rows or none.
pub(super) async fn import(
    State(st): State<AppState>,
    staff: StaffSession,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let bytes = match body {
        Ok(b) => b,
        Err(e) => return body_error(&e),
    };
    let panel = st.labels.default_panel;
    let by = format!("{} (import)", staff.staff);
    let parsed = tokio::task::spawn_blocking(move || parse_csv(&bytes, panel, Some(&by))).await;
    let rows = match parsed {
        Ok(Ok(rows)) => rows,
        Ok(Err(errors)) => return rows_refused(errors),
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                error_code::INTERNAL,
                format!("import task failed: {e}"),
                Value::Null,
            );
        }
    };
    let n = rows.len();
    match st.ledger.bind_labels(rows).await {
        Ok(out) => {
            tracing::info!(rows = n, bound = out.bound, staff = %staff.staff, "labels imported");
            let subject = format!("{n} rows, {} bound, {} unchanged", out.bound, out.unchanged);
            audit(&st, &staff.staff, AUDIT_LABELS_IMPORTED, subject).await;
            Json(json!({ "rows": n, "bound": out.bound, "unchanged": out.unchanged }))
                .into_response()
        }
        Err(LabelRefusal::Rows(rows)) => rows_refused(rows),
        Err(LabelRefusal::NotBound(l)) => not_found(l),
        Err(LabelRefusal::Ledger(e)) => ledger_error(&e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    status: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/labels?status=&after=&limit=`.
pub(super) async fn list(
    State(st): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return bad(e.body_text()),
    };
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => match LabelStatus::parse(s) {
            Some(s) => Some(s),
            None => {
                return bad(format!(
                    "status '{s}' is not one of confirmed, pending, not_updated, no_price"
                ));
            }
        },
    };
    let after = match q.after.as_deref().map(LabelId::parse) {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err(_)) => return bad("after must be a label id (8 hexadecimal digits)"),
    };
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let mut out = Vec::new();
    let mut cursor = after;
    let mut last = None;
    // With a status filter, page through until `limit` match (or the end).
    loop {
        let page = match st.ledger.labels(cursor, limit).await {
            Ok(p) => p,
            Err(e) => return ledger_error(&e),
        };
        let full = page.len() == limit;
        for r in page {
            cursor = Some(r.binding.label);
            if status.is_none_or(|s| r.status() == s) {
                last = Some(r.binding.label);
                let live = st.labels.live(r.binding.label);
                out.push(label_json(r, live));
                if out.len() == limit {
                    break;
                }
            }
        }
        if !full || out.len() == limit {
            break;
        }
    }
    let next = (out.len() == limit)
        .then(|| last.map(|l| l.to_string()))
        .flatten();
    Json(json!({ "labels": out, "next_after": next })).into_response()
}

/// `GET /v1/labels/{id}`.
pub(super) async fn get_label(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let label = match label_path(path) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    match st.ledger.label(label).await {
        Ok(Some(r)) => Json(label_json(r, st.labels.live(label))).into_response(),
        Ok(None) => not_found(label),
        Err(e) => ledger_error(&e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PreviewQuery {
    desired: Option<String>,
}

/// `GET /v1/labels/{id}/preview.png[?desired=1]`: what the label confirmed it shows, drawn by
/// the firmware's renderer; with `desired=1`, what the store wants on it.
pub(super) async fn preview(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<PreviewQuery>, QueryRejection>,
) -> Response {
    let label = match label_path(path) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let desired = match query {
        Ok(Query(q)) => matches!(q.desired.as_deref(), Some("1" | "true")),
        Err(e) => return bad(e.body_text()),
    };
    let record = match st.ledger.label(label).await {
        Ok(Some(r)) => r,
        Ok(None) => return not_found(label),
        Err(e) => return ledger_error(&e),
    };
    let what = if desired {
        let Some(w) = record.wanted else {
            return error(
                StatusCode::NOT_FOUND,
                "no_price",
                format!(
                    "GTIN {} has no active price: nothing to show",
                    record.binding.gtin
                ),
                Value::Null,
            );
        };
        let fields = match DynamicFields::from_money(w.price) {
            Ok(f) => f,
            Err(e) => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    error_code::BAD_REQUEST,
                    format!("price {} cannot go on a label: {e}", w.price),
                    Value::Null,
                );
            }
        };
        (record.binding.panel, w.name, None, fields)
    } else {
        let Some(c) = record.confirmed else {
            return error(
                StatusCode::NOT_FOUND,
                "not_confirmed",
                format!("label {label} has not confirmed any content yet (try ?desired=1)"),
                Value::Null,
            );
        };
        (
            c.shown.panel,
            c.shown.name,
            Some(c.shown.layer),
            c.shown.fields,
        )
    };
    let labels = st.labels.clone();
    let drawn = tokio::task::spawn_blocking(move || {
        let (panel, name, layer, fields) = what;
        preview_png(&labels.renderer, panel, &name, layer, &fields)
    })
    .await;
    match drawn {
        Ok(Ok(png)) => (
            [
                (header::CONTENT_TYPE, "image/png"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            png,
        )
            .into_response(),
        Ok(Err(e @ PreviewError::LayerChanged { .. })) => error(
            StatusCode::CONFLICT,
            "cannot_reproduce",
            e.to_string(),
            Value::Null,
        ),
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            error_code::INTERNAL,
            e.to_string(),
            Value::Null,
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            error_code::INTERNAL,
            format!("preview task failed: {e}"),
            Value::Null,
        ),
    }
}
