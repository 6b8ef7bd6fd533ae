//! The hub's HTTP API: router, the one mapping from errors to status codes, authentication and
//! the protocol version check.
//!
//! Every answer carries [`PROTOCOL_HEADER`] and [`SERVER_TIME_HEADER`]; every error answers an
//! [`ErrorBody`]. Routes are registered through one [`RouteTable`], which also lists them, so the
//! OpenAPI document can be checked against what the router really serves.
use std::sync::Arc;

use aisle_protocol::StoreId;
use aisle_protocol::auth::{ENROL_PATH, error_code as auth_code};
use aisle_protocol::sync::{
    ErrorBody, MAX_BODY_BYTES, MIN_PROTOCOL_VERSION, PROTOCOL_HEADER, PROTOCOL_VERSION,
    SERVER_TIME_HEADER, error_code, path, version_compatible,
};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::config::HqToken;
use crate::metrics::{HubMetrics, RequestLabels};
use crate::price_batch::BatchError;
use crate::security::{Principal, Role, TOKEN_PREFIX, token_hash};
use crate::storage::{AuthenticatedGateway, HubStorage, StorageError, Store};

pub mod audit;
pub mod enrol;
pub mod footfall;
pub mod health;
pub mod labels;
pub mod members;
pub mod orders;
pub mod price_batches;
pub mod signed;
pub mod stores;
pub mod sync;

/// Largest body of small JSON requests (stock adjustments, orders).
pub const MAX_SMALL_BODY_BYTES: usize = 64 * 1024;

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    pub storage: Arc<dyn HubStorage>,
    pub hq_token: HqToken,
    pub metrics: Arc<HubMetrics>,
    /// Turns true when the server begins to shut down: long-polls answer at once.
    pub shutdown: watch::Receiver<bool>,
    /// Wakes the webhook worker after something may have queued a webhook.
    pub webhooks: Arc<tokio::sync::Notify>,
    /// SHA-256 of the served TLS certificate (hex), `None` when serving plain HTTP.
    pub tls_fingerprint: Option<String>,
    /// Enrolled gateways' keys (see [`signed`]).
    pub gateway_keys: Arc<signed::KeyCache>,
}

/// An API failure; the only place errors become HTTP status codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    BadRequest(String),
    Unprocessable(String),
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    SeqGap {
        expected_from: u64,
        message: String,
    },
    CursorExpired(String),
    PayloadTooLarge(String),
    UnsupportedMediaType(String),
    IncompatibleProtocol(String),
    Unavailable(String),
    /// A signed request whose nonce was seen before (401 `replayed`).
    Replayed(String),
    /// A signed request whose timestamp is outside the window (401 `clock_skew`).
    ClockSkew(String),
    /// An enrolment code that was used or expired (410).
    Gone(String),
    /// Too many refused attempts (429 `rate_limited`).
    TooManyRequests(String),
    Internal,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        use ApiError::*;
        match self {
            BadRequest(_) => (StatusCode::BAD_REQUEST, error_code::BAD_REQUEST),
            Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, error_code::BAD_REQUEST),
            Unauthorized(_) => (StatusCode::UNAUTHORIZED, error_code::UNAUTHORIZED),
            Forbidden(_) => (StatusCode::FORBIDDEN, error_code::FORBIDDEN),
            NotFound(_) => (StatusCode::NOT_FOUND, error_code::NOT_FOUND),
            Conflict(_) => (StatusCode::CONFLICT, error_code::CONFLICT),
            SeqGap { .. } => (StatusCode::CONFLICT, error_code::SEQ_GAP),
            CursorExpired(_) => (StatusCode::GONE, error_code::CURSOR_EXPIRED),
            PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, error_code::PAYLOAD_TOO_LARGE),
            UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, error_code::BAD_REQUEST)
            }
            IncompatibleProtocol(_) => (
                StatusCode::UPGRADE_REQUIRED,
                error_code::INCOMPATIBLE_PROTOCOL,
            ),
            Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, error_code::UNAVAILABLE),
            Replayed(_) => (StatusCode::UNAUTHORIZED, auth_code::REPLAYED),
            ClockSkew(_) => (StatusCode::UNAUTHORIZED, auth_code::CLOCK_SKEW),
            Gone(_) => (StatusCode::GONE, auth_code::ENROLMENT_CODE_GONE),
            TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, auth_code::RATE_LIMITED),
            Internal => (StatusCode::INTERNAL_SERVER_ERROR, error_code::INTERNAL),
        }
    }

    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    fn message(&self) -> String {
        use ApiError::*;
        match self {
            BadRequest(m)
            | Unprocessable(m)
            | Unauthorized(m)
            | Forbidden(m)
            | NotFound(m)
            | Conflict(m)
            | CursorExpired(m)
            | PayloadTooLarge(m)
            | UnsupportedMediaType(m)
            | IncompatibleProtocol(m)
            | Unavailable(m)
            | Replayed(m)
            | ClockSkew(m)
            | Gone(m)
            | TooManyRequests(m) => m.clone(),
            SeqGap { message, .. } => message.clone(),
            Internal => "internal error; the hub's log has the details".to_owned(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let body = ErrorBody {
            error: code.to_owned(),
            message: self.message(),
            expected_from: match &self {
                ApiError::SeqGap { expected_from, .. } => Some(*expected_from),
                _ => None,
            },
        };
        (status, Json(body)).into_response()
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        use StorageError as S;
        let msg = e.to_string();
        match e {
            S::InvalidInput(_) | S::NoStores | S::CurrencyMismatch { .. } | S::UnknownStore(_) => {
                ApiError::Unprocessable(msg)
            }
            S::InvalidEvent { .. } => ApiError::BadRequest(msg),
            S::StoreExists(_)
            | S::EventConflict { .. }
            | S::AdjustmentConflict(_)
            | S::OrderMismatch(_)
            | S::InsufficientStock { .. }
            | S::CannotCancel(_) => ApiError::Conflict(msg),
            S::UnknownBatch(_)
            | S::UnknownOrder(_)
            | S::UnknownToken(_)
            | S::UnknownProduct { .. } => ApiError::NotFound(msg),
            S::UnknownGateway(_) | S::BadCredential => ApiError::Unauthorized(msg),
            S::BatchTooLarge(_) => ApiError::PayloadTooLarge(msg),
            S::SeqGap { expected_from } => ApiError::SeqGap {
                expected_from,
                message: msg,
            },
            S::CursorAhead { .. } => ApiError::CursorExpired(msg),
            S::Unavailable(_) => ApiError::Unavailable(msg),
            S::Sqlite(rusqlite::Error::SqliteFailure(f, _))
                if matches!(
                    f.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) =>
            {
                ApiError::Unavailable("the database is busy; try again".into())
            }
            // No SQLSTATE: the connection itself failed, not the statement.
            S::Postgres(ref pg) if pg.code().is_none() => {
                tracing::warn!(error = %msg, "database connection failed");
                ApiError::Unavailable("the database is unreachable; try again".into())
            }
            S::UnsupportedUrl(_)
            | S::SchemaTooNew { .. }
            | S::Corrupt(_)
            | S::Sqlite(_)
            | S::Postgres(_)
            | S::Worker(_) => {
                tracing::error!(error = %msg, "storage failure");
                ApiError::Internal
            }
        }
    }
}

impl From<BatchError> for ApiError {
    fn from(e: BatchError) -> Self {
        let msg = e.to_string();
        match e {
            BatchError::Json(_)
            | BatchError::Csv(_)
            | BatchError::RowShape { .. }
            | BatchError::Stores(_)
            | BatchError::EffectiveAt(_) => ApiError::BadRequest(msg),
            BatchError::Row { .. } | BatchError::Empty => ApiError::Unprocessable(msg),
            BatchError::TooManyRows => ApiError::PayloadTooLarge(msg),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(format!("query string: {}", r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(format!("path: {}", r.body_text()))
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge("request body is larger than this route accepts".into())
        } else {
            ApiError::BadRequest(format!(
                "could not read the request body: {}",
                r.body_text()
            ))
        }
    }
}

/// `Query<T>` whose refusals answer an [`ErrorBody`].
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `Path<T>` whose refusals answer an [`ErrorBody`].
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// A request body, bounded by the route's `DefaultBodyLimit`.
#[derive(Debug)]
pub struct Body(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Body(axum::body::Bytes::from_request(req, state).await?))
    }
}

/// A JSON request body: `Content-Type: application/json`, parsed into `T` with clear refusals.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if media_type(req.headers()) != Some("application/json") {
            return Err(ApiError::UnsupportedMediaType(
                "send the body as Content-Type: application/json".into(),
            ));
        }
        let Body(bytes) = Body::from_request(req, state).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))
    }
}

/// The media type of a request, lower-cased and without parameters.
pub fn media_type(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let t = v.split(';').next()?.trim();
    // Only the two types the API speaks are told apart; anything else is "other".
    if t.eq_ignore_ascii_case("application/json") {
        Some("application/json")
    } else if t.eq_ignore_ascii_case("text/csv") {
        Some("text/csv")
    } else {
        Some("other")
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let missing = || ApiError::Unauthorized("send Authorization: Bearer <token>".into());
    let value = parts.headers.get(AUTHORIZATION).ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| missing())?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(missing)?
        .trim();
    if token.is_empty() || token.len() > 512 {
        return Err(missing());
    }
    Ok(token)
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// HQ, with a token and its role.
    Hq(Principal),
    /// A gateway: by its bearer credential or a request signed with its enrolled key.
    Gateway(AuthenticatedGateway),
}

impl Caller {
    /// HQ may read every store; a gateway only its own.
    pub fn require_store(&self, store: &StoreId) -> Result<(), ApiError> {
        match self {
            Caller::Hq(_) => Ok(()),
            Caller::Gateway(g) if &g.store == store => Ok(()),
            Caller::Gateway(g) => Err(ApiError::Forbidden(format!(
                "gateway {} belongs to store {} and may not access store {store}",
                g.gateway_id, g.store
            ))),
        }
    }
}

/// Put in a request's extensions by [`signed::verify`] once its signature, clock and nonce
/// checked out.
#[derive(Clone, Debug)]
pub struct SignedGateway(pub AuthenticatedGateway);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(SignedGateway(g)) = parts.extensions.get::<SignedGateway>() {
            return Ok(Caller::Gateway(g.clone()));
        }
        let token = bearer(parts)?;
        if state.hq_token.matches(token) {
            return Ok(Caller::Hq(Principal::bootstrap()));
        }
        if token.starts_with(TOKEN_PREFIX) {
            return match state.storage.api_token_by_hash(&token_hash(token)).await? {
                Some(t) => Ok(Caller::Hq(Principal {
                    token_id: Some(t.token_id),
                    name: t.name,
                    role: t.role,
                })),
                None => Err(ApiError::Unauthorized(
                    "the token is not valid (unknown or revoked)".into(),
                )),
            };
        }
        match state.storage.authenticate_gateway(token).await {
            Ok(g) => Ok(Caller::Gateway(g)),
            Err(StorageError::BadCredential) => {
                Err(ApiError::Unauthorized("the token is not valid".into()))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// An HQ caller with any role (reports).
#[derive(Debug)]
pub struct HqAuth(pub Principal);

impl FromRequestParts<AppState> for HqAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match Caller::from_request_parts(parts, state).await? {
            Caller::Hq(p) => Ok(HqAuth(p)),
            Caller::Gateway(g) => Err(ApiError::Forbidden(format!(
                "gateway {} may not use this route; it needs an HQ token",
                g.gateway_id
            ))),
        }
    }
}

/// The role a route needs; see [`RoleAuth`].
pub trait NeedsRole {
    const ROLE: Role;
}

/// Marker: the route needs the `pricing` role.
#[derive(Debug)]
pub struct Pricing;
/// Marker: the route needs the `orders` role.
#[derive(Debug)]
pub struct Orders;
/// Marker: the route needs the `admin` role.
#[derive(Debug)]
pub struct Admin;

impl NeedsRole for Pricing {
    const ROLE: Role = Role::Pricing;
}
impl NeedsRole for Orders {
    const ROLE: Role = Role::Orders;
}
impl NeedsRole for Admin {
    const ROLE: Role = Role::Admin;
}

/// An HQ caller whose token has role `R::ROLE` (or admin): else 403 naming the role.
#[derive(Debug)]
pub struct RoleAuth<R>(pub Principal, std::marker::PhantomData<R>);

impl<R> RoleAuth<R> {
    pub fn principal(&self) -> &Principal {
        &self.0
    }
}

/// Price batches.
pub type PricingAuth = RoleAuth<Pricing>;
/// Pickup orders and member cards.
pub type OrdersAuth = RoleAuth<Orders>;
/// Stores, gateways, enrolment, audit, stock adjustments.
pub type AdminAuth = RoleAuth<Admin>;

impl<R: NeedsRole + Send + Sync> FromRequestParts<AppState> for RoleAuth<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let HqAuth(p) = HqAuth::from_request_parts(parts, state).await?;
        if p.role.allows(R::ROLE) {
            Ok(RoleAuth(p, std::marker::PhantomData))
        } else {
            Err(ApiError::Forbidden(format!(
                "this route needs the {} role (or admin); token '{}' has the {} role",
                R::ROLE,
                p.name,
                p.role
            )))
        }
    }
}

/// A gateway on the sync API: protocol version checked first (426), then its credential.
#[derive(Debug)]
pub struct SyncPeer(pub AuthenticatedGateway);

impl FromRequestParts<AppState> for SyncPeer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        check_protocol(&parts.headers)?;
        match Caller::from_request_parts(parts, state).await? {
            Caller::Gateway(g) => Ok(SyncPeer(g)),
            Caller::Hq(_) => Err(ApiError::Forbidden(
                "the sync API is for gateways; use a gateway credential".into(),
            )),
        }
    }
}

/// Refuses a peer whose protocol header is missing or outside what this build accepts.
pub fn check_protocol(headers: &HeaderMap) -> Result<(), ApiError> {
    let speaks = format!(
        "this hub speaks protocol {PROTOCOL_VERSION} (accepts {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION})"
    );
    let Some(value) = headers.get(PROTOCOL_HEADER) else {
        return Err(ApiError::IncompatibleProtocol(format!(
            "missing {PROTOCOL_HEADER} header; {speaks}"
        )));
    };
    let version = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u16>().ok());
    match version {
        Some(v) if version_compatible(v) => Ok(()),
        Some(v) => Err(ApiError::IncompatibleProtocol(format!(
            "the peer speaks protocol {v}; {speaks}"
        ))),
        None => Err(ApiError::IncompatibleProtocol(format!(
            "{PROTOCOL_HEADER} must be a version number; {speaks}"
        ))),
    }
}

/// A store id from a path, or 400.
pub fn parse_store_id(id: &str) -> Result<StoreId, ApiError> {
    StoreId::parse(id).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// Loads a store named in a path, or answers 404.
pub async fn require_store(state: &AppState, id: &str) -> Result<Store, ApiError> {
    let id = parse_store_id(id)?;
    state
        .storage
        .store(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("unknown store {id}")))
}

/// A route the router serves.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteSpec {
    pub method: &'static str,
    pub path: &'static str,
}

/// Builds the router and, as it goes, the list of what it serves.
struct RouteTable {
    router: Router<AppState>,
    routes: Vec<RouteSpec>,
}

impl RouteTable {
    fn new() -> Self {
        RouteTable {
            router: Router::new(),
            routes: Vec::new(),
        }
    }

    fn add(
        mut self,
        method: &'static str,
        path: &'static str,
        route: axum::routing::MethodRouter<AppState>,
    ) -> Self {
        self.router = self.router.route(path, route);
        self.routes.push(RouteSpec { method, path });
        self
    }

    fn get<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add("GET", path, axum::routing::get(h))
    }

    fn post<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        limit: usize,
        h: H,
    ) -> Self {
        let route = axum::routing::post(h).layer(DefaultBodyLimit::max(limit));
        self.add("POST", path, route)
    }
}

fn table() -> RouteTable {
    RouteTable::new()
        .get("/healthz", health::healthz)
        .get("/metrics", health::metrics)
        .get("/openapi.json", health::openapi)
        .post("/v1/price-batches", MAX_BODY_BYTES, price_batches::create)
        .get("/v1/price-batches/{id}", price_batches::progress)
        .get("/v1/stores/{id}/sales", stores::sales)
        .get("/v1/stores/{id}/stock", stores::stock)
        .get("/v1/stores/{id}/labels", labels::list)
        .get("/v1/stores/{id}/footfall", footfall::footfall)
        .get("/v1/stores/{id}/footfall.svg", footfall::chart)
        .post(
            "/v1/stores/{id}/stock-adjustments",
            MAX_SMALL_BODY_BYTES,
            stores::adjust,
        )
        .post("/v1/orders", MAX_SMALL_BODY_BYTES, orders::create)
        .get("/v1/orders", orders::list)
        .get("/v1/orders/{id}", orders::get)
        .post(
            "/v1/orders/{id}/cancel",
            MAX_SMALL_BODY_BYTES,
            orders::cancel,
        )
        .post(
            "/v1/members/{member}/card",
            MAX_SMALL_BODY_BYTES,
            members::issue,
        )
        .get(path::CHANGES, sync::changes)
        .post(path::EVENTS, MAX_BODY_BYTES, sync::events)
        .get("/v1/audit", audit::list)
        .get("/v1/gateways", enrol::list_gateways)
        .post(
            "/v1/gateways/{id}/revoke",
            MAX_SMALL_BODY_BYTES,
            enrol::revoke_gateway,
        )
        .post("/v1/enrolments", MAX_SMALL_BODY_BYTES, enrol::create)
        .post(ENROL_PATH, MAX_SMALL_BODY_BYTES, enrol::enrol)
}

/// Every (method, path template) the router serves.
pub fn routes() -> Vec<RouteSpec> {
    table().routes
}

/// The hub's router with its state.
pub fn router(state: AppState) -> Router {
    table()
        .router
        .fallback(no_route)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            signed::verify,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            stamp_and_count,
        ))
        .with_state(state)
}

async fn no_route(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

/// Adds the protocol and server-time headers to every answer and counts it.
async fn stamp_and_count(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // Only standard methods become label values: any other string a client sends would add a
    // new metric series for ever.
    let method = match *req.method() {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::HEAD
        | Method::OPTIONS
        | Method::PATCH => req.method().as_str().to_owned(),
        _ => "other".to_owned(),
    };
    let mut res = next.run(req).await;
    let headers = res.headers_mut();
    headers.insert(PROTOCOL_HEADER, HeaderValue::from(PROTOCOL_VERSION));
    headers.insert(
        SERVER_TIME_HEADER,
        HeaderValue::from(aisle_protocol::UtcMillis::now().0),
    );
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: res.status().as_u16(),
        })
        .inc();
    res
}
