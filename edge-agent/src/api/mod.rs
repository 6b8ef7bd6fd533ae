//! The local HTTP API for lanes, staff devices and monitoring. Every error answers
//! `aisle_protocol::sync::ErrorBody` JSON.
//!
//! [`ROUTES`] is the one list of what is served: the router is built from it and a test checks
//! `openapi.json` documents exactly it.
use std::sync::Arc;

use aisle_protocol::StoreId;
use aisle_protocol::sync::{ErrorBody, error_code};
use axum::Json;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};

use crate::footfall::FootfallShared;
use crate::labels::LabelsShared;
use crate::ledger::Ledger;
use crate::metrics::AgentMetrics;
use crate::pickup::PickupShared;
use crate::sync::SyncShared;

mod cameras;
mod labels;
mod lanes;
mod pickup_page;
mod pickups;
mod prices;
mod sales;
pub mod setup;
pub mod staff;
mod status;

pub use cameras::{PushRefusal, PushResponse, refusal_status};
pub use labels::{ConfirmedJson, LabelJson, NotUpdatedJson, PriceJson};
pub use pickups::{CollectedJson, HistoryJson, LineJson, MAX_PICKUP_BODY_BYTES, OrderJson};
pub use prices::PriceResponse;
pub use sales::{MAX_SALE_BODY_BYTES, SaleLineResponse, SaleResponse};

/// The hand-written OpenAPI 3.1 document served at `/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

#[derive(Clone, Debug)]
pub struct AppState {
    pub store: StoreId,
    pub ledger: Ledger,
    pub sync: Arc<SyncShared>,
    pub metrics: Arc<AgentMetrics>,
    pub footfall: Arc<FootfallShared>,
    pub pickup: Arc<PickupShared>,
    pub labels: Arc<LabelsShared>,
    /// Self-checkout lanes (none without `[checkout]`).
    pub lanes: Arc<crate::lane::LanesShared>,
    /// The gateway's audit log (staff sign-ins, refused PINs).
    pub audit: Arc<crate::audit::AuditLog>,
    /// The setup page's configuration, clock and status panel.
    pub setup: Arc<setup::SetupContext>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Post,
    Delete,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Delete => "DELETE",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            HttpMethod::Get => MethodFilter::GET,
            HttpMethod::Post => MethodFilter::POST,
            HttpMethod::Delete => MethodFilter::DELETE,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    CameraCounts,
    Cameras,
    Healthz,
    LabelBind,
    LabelGet,
    LabelImport,
    LabelList,
    LabelPreview,
    LabelUnbind,
    LanePage,
    LaneList,
    LaneSocket,
    LaneTerminal,
    Metrics,
    OpenApi,
    PickupGet,
    PickupPage,
    PickupList,
    PickupPick,
    PickupReady,
    PickupRedeem,
    Price,
    ReceiptJson,
    ReceiptPage,
    Sales,
    SetupChecklist,
    SetupDevices,
    SetupPage,
    SetupSignIn,
    StaffSignIn,
    StaffSignOut,
    SyncStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub method: HttpMethod,
    /// In axum's syntax, which is also OpenAPI's (`{gtin}`).
    pub path: &'static str,
    pub endpoint: Endpoint,
}

/// Every route the agent serves.
pub const ROUTES: &[Route] = &[
    Route {
        method: HttpMethod::Post,
        path: "/v1/cameras/{id}/counts",
        endpoint: Endpoint::CameraCounts,
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/cameras",
        endpoint: Endpoint::Cameras,
    },
    Route {
        method: HttpMethod::Get,
        path: "/healthz",
        endpoint: Endpoint::Healthz,
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/labels",
        endpoint: Endpoint::LabelList,
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/labels/bind",
        endpoint: Endpoint::LabelBind,
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/labels/import",
        endpoint: Endpoint::LabelImport,
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/labels/{id}",
        endpoint: Endpoint::LabelGet,
    },
    Route {
        method: HttpMethod::Delete,
        path: "/v1/labels/{id}",
        endpoint: Endpoint::LabelUnbind,
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/labels/{id}/preview.png",
        endpoint: Endpoint::LabelPreview,
    },
    Route {
        method: HttpMethod::Get,
        path: "/lane/{lane}",
        endpoint: Endpoint::LanePage,
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/lanes",
        endpoint: Endpoint::LaneList,
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/lanes/{lane}/ws",
        endpoint: Endpoint::LaneSocket,
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/lanes/{lane}/terminal",
        endpoint: Endpoint::LaneTerminal,
    },
    Route {
        method: HttpMethod::Get,
        path: "/receipts/{sale_id}",
        endpoint: Endpoint::ReceiptPage,
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/receipts/{sale_id}",
        endpoint: Endpoint::ReceiptJson,
    },
    Route {
        method: HttpMethod::Get,
        path: "/metrics",
        endpoint: Endpoint::Metrics,
    },
    Route {
        method: HttpMethod::Get,
        path: "/openapi.json",
        endpoint: Endpoint::OpenApi,
    },
    Route {
        method: HttpMethod::Get,
        path: "/pickup",
        endpoint: Endpoint::PickupPage,
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/pickups",
        endpoint: Endpoint::PickupList,
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/pickups/{order_id}",
        endpoint: Endpoint::PickupGet,
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/pickups/{order_id}/pick",
        endpoint: Endpoint::PickupPick,
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/pickups/{order_id}/ready",
        endpoint: Endpoint::PickupReady,
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/pickups/redeem",
        endpoint: Endpoint::PickupRedeem,
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/prices/{gtin}",
        endpoint: Endpoint::Price,
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/sales",
        endpoint: Endpoint::Sales,
    },
    Route {
        method: HttpMethod::Get,
        path: "/setup",
        endpoint: Endpoint::SetupPage,
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/setup/sign-in",
        endpoint: Endpoint::SetupSignIn,
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/setup/checklist",
        endpoint: Endpoint::SetupChecklist,
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/setup/devices",
        endpoint: Endpoint::SetupDevices,
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/staff/sign-in",
        endpoint: Endpoint::StaffSignIn,
    },
    Route {
        method: HttpMethod::Post,
        path: "/v1/staff/sign-out",
        endpoint: Endpoint::StaffSignOut,
    },
    Route {
        method: HttpMethod::Get,
        path: "/v1/sync/status",
        endpoint: Endpoint::SyncStatus,
    },
];

fn handler(route: &Route, state: &AppState) -> MethodRouter<AppState> {
    let f = route.method.filter();
    match route.endpoint {
        // A camera's body is refused beyond its own limit, before more of it is read.
        Endpoint::CameraCounts => on(f, cameras::push_counts)
            .layer(DefaultBodyLimit::max(state.footfall.max_payload_bytes)),
        Endpoint::Cameras => on(f, cameras::list_cameras),
        Endpoint::Healthz => on(f, status::healthz),
        Endpoint::LabelBind => {
            on(f, labels::bind).layer(DefaultBodyLimit::max(labels::MAX_BIND_BODY_BYTES))
        }
        // An import of a large store's labels is a few MiB of CSV.
        Endpoint::LabelImport => on(f, labels::import).layer(DefaultBodyLimit::max(
            crate::labels::import::MAX_IMPORT_BYTES,
        )),
        Endpoint::LabelList => on(f, labels::list),
        Endpoint::LabelGet => on(f, labels::get_label),
        Endpoint::LabelUnbind => on(f, labels::unbind),
        Endpoint::LabelPreview => on(f, labels::preview),
        Endpoint::LanePage => on(f, lanes::page),
        Endpoint::LaneList => on(f, lanes::list),
        Endpoint::LaneSocket => on(f, lanes::ws),
        Endpoint::LaneTerminal => on(f, lanes::terminal),
        Endpoint::ReceiptPage => on(f, lanes::receipt_page),
        Endpoint::ReceiptJson => on(f, lanes::receipt_json),
        Endpoint::Metrics => on(f, status::metrics),
        Endpoint::OpenApi => on(f, status::openapi),
        Endpoint::PickupPage => on(f, pickup_page::page),
        Endpoint::PickupList => on(f, pickups::list),
        Endpoint::PickupGet => on(f, pickups::get_order),
        // Staff requests are small: refused beyond 16 KiB, before more is read.
        Endpoint::PickupPick => {
            on(f, pickups::pick).layer(DefaultBodyLimit::max(MAX_PICKUP_BODY_BYTES))
        }
        Endpoint::PickupReady => {
            on(f, pickups::ready).layer(DefaultBodyLimit::max(MAX_PICKUP_BODY_BYTES))
        }
        Endpoint::PickupRedeem => {
            on(f, pickups::redeem).layer(DefaultBodyLimit::max(MAX_PICKUP_BODY_BYTES))
        }
        Endpoint::StaffSignIn => {
            on(f, staff::sign_in).layer(DefaultBodyLimit::max(MAX_PICKUP_BODY_BYTES))
        }
        Endpoint::StaffSignOut => on(f, staff::sign_out),
        Endpoint::SetupPage => on(f, setup::page),
        Endpoint::SetupSignIn => {
            on(f, setup::sign_in).layer(DefaultBodyLimit::max(MAX_PICKUP_BODY_BYTES))
        }
        Endpoint::SetupChecklist => on(f, setup::checklist),
        Endpoint::SetupDevices => on(f, setup::devices),
        Endpoint::Price => on(f, prices::get_price),
        Endpoint::Sales => on(f, sales::create_sale),
        Endpoint::SyncStatus => on(f, status::sync_status),
    }
}

/// The API router, built from [`ROUTES`].
pub fn router(state: AppState) -> Router {
    let mut r = Router::new();
    for route in ROUTES {
        r = r.route(route.path, handler(route, &state));
    }
    r.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_SALE_BODY_BYTES))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        error_code::NOT_FOUND,
        "no such route",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        error_code::BAD_REQUEST,
        "method not allowed on this route",
    )
}

/// An error answer: a status and an [`ErrorBody`].
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                error: code.to_string(),
                message: message.into(),
                expected_from: None,
            },
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, error_code::BAD_REQUEST, message)
    }

    pub fn unprocessable(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            error_code::BAD_REQUEST,
            message,
        )
    }

    /// A ledger failure: logged in full, answered briefly.
    pub fn ledger(e: &crate::ledger::LedgerError) -> ApiError {
        tracing::error!(error = %e, "ledger error while answering a request");
        match e {
            crate::ledger::LedgerError::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                error_code::UNAVAILABLE,
                "the ledger is shutting down",
            ),
            _ => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                error_code::INTERNAL,
                "the ledger could not complete the request",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn openapi_documents_exactly_the_served_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        assert_eq!(doc["openapi"].as_str().unwrap().get(..3), Some("3.1"));
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                    documented.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.as_str().to_string(), r.path.to_string()))
            .collect();
        assert_eq!(documented, served);
    }
}
