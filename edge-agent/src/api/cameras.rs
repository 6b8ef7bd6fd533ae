//! `POST /v1/cameras/{id}/counts` (a camera pushing its counts, body as the vendor writes it) and
//! `GET /v1/cameras` (every configured camera's presence and counts).
use aisle_protocol::sync::error_code;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::AppState;
use crate::footfall::{CamerasView, Msg, PushAnswer, ReadingAnswer, shown};

/// `202` answer to a push.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushResponse {
    /// The best outcome over the message's readings: counted, baseline, duplicate or stale.
    pub outcome: String,
    /// Per reading (a Xovis push may carry several counting lines).
    pub readings: Vec<ReadingAnswer>,
}

/// A refused push: an `ErrorBody` plus the refusal's metric label.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRefusal {
    pub error: String,
    pub message: String,
    /// As in `aisle_footfall_refused_total{reason}`.
    pub reason: String,
}

/// The status a refusal is answered with.
pub fn refusal_status(reason: &str) -> StatusCode {
    match reason {
        "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "unknown_camera" => StatusCode::NOT_FOUND,
        "personal_data" | "absurd_jump" | "mixed_count_kinds" | "overlapping_interval" => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        "flood" => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::BAD_REQUEST,
    }
}

fn refused(reason: &str, message: String) -> Response {
    let status = refusal_status(reason);
    let error = match status {
        StatusCode::PAYLOAD_TOO_LARGE => error_code::PAYLOAD_TOO_LARGE,
        StatusCode::NOT_FOUND => error_code::NOT_FOUND,
        StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
        _ => error_code::BAD_REQUEST,
    };
    (
        status,
        Json(PushRefusal {
            error: error.to_string(),
            message,
            reason: reason.to_string(),
        }),
    )
        .into_response()
}

fn unavailable(message: String) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(PushRefusal {
            error: error_code::UNAVAILABLE.to_string(),
            message,
            reason: "unavailable".to_string(),
        }),
    )
        .into_response()
}

pub(super) async fn push_counts(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let ff = &st.footfall;
    let (Some(camera), Some(tx)) = (ff.camera_index(&id), ff.sender()) else {
        ff.refused(
            None,
            &shown(id.as_bytes()),
            "unknown_camera",
            &"no camera with this id is configured",
            true,
        );
        return refused(
            "unknown_camera",
            format!(
                "no camera {} is configured at this store",
                shown(id.as_bytes())
            ),
        );
    };
    let payload = match body {
        Ok(b) => Ok(b),
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(None),
        Err(e) => {
            return (
                e.status(),
                Json(PushRefusal {
                    error: error_code::BAD_REQUEST.to_string(),
                    message: e.body_text(),
                    reason: "unreadable_body".to_string(),
                }),
            )
                .into_response();
        }
    };
    let (reply, answer) = oneshot::channel();
    let msg = Msg::Push {
        camera,
        payload,
        reply,
    };
    if tx.send(msg).await.is_err() {
        return unavailable("camera ingestion is shutting down".into());
    }
    match answer.await {
        Ok(PushAnswer::Taken { outcome, readings }) => (
            StatusCode::ACCEPTED,
            Json(PushResponse {
                outcome: outcome.to_string(),
                readings,
            }),
        )
            .into_response(),
        Ok(PushAnswer::Refused { reason, message }) => refused(reason, message),
        Ok(PushAnswer::Unavailable(m)) => unavailable(m),
        Err(_) => unavailable("camera ingestion is shutting down".into()),
    }
}

pub(super) async fn list_cameras(State(st): State<AppState>) -> Json<CamerasView> {
    Json(st.footfall.view())
}
