//! Enrolment (a gateway redeems a one-time code with its public key) and gateway administration.
use std::net::{IpAddr, SocketAddr};

use aisle_protocol::auth::{
    EnrolRequest, EnrolResponse, EnrolmentCode, MAX_GATEWAY_NAME_CHARS, parse_public_key_hex,
    public_key_hex,
};
use aisle_protocol::{GatewayId, StoreId, UtcMillis};
use axum::Json;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::serve::IncomingStream;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{AdminAuth, ApiError, ApiPath, AppState, Body, JsonBody, media_type};
use crate::security::qr::enrolment_uri;
use crate::security::tls::TlsListener;
use crate::security::{
    Actor, AuditInput, DEFAULT_ENROLMENT_TTL_MS, ENROL_RATE_LIMIT, ENROL_RATE_WINDOW_MS,
    EnrolAttempt, EnrolRefusal, NewEnrolment, action, parse_ttl,
};
use crate::timefmt::format_rfc3339;

/// The peer address of a connection, plain or TLS (what the enrolment rate limit counts by).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

/// The caller's IP address (no port: a new connection must not reset the rate limit).
/// Behind a reverse proxy every client shares the proxy's address.
#[derive(Clone, Debug)]
pub struct ClientIp(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<ClientAddr>>()
            .map(|c| match c.0.0.ip() {
                IpAddr::V6(v6) => v6
                    .to_ipv4_mapped()
                    .map_or(IpAddr::V6(v6), IpAddr::V4)
                    .to_string(),
                v4 => v4.to_string(),
            })
            .unwrap_or_else(|| "unknown".to_owned());
        Ok(ClientIp(ip))
    }
}

async fn refuse(state: &AppState, client: &str, reason: &'static str, error: ApiError) -> ApiError {
    state.metrics.enrolments_refused.inc();
    tracing::warn!(target: "audit", client, reason, "enrolment refused");
    let entry = AuditInput::new(
        &Actor::client(client),
        action::ENROLMENT_REFUSED,
        client,
        json!({ "reason": reason }),
    );
    match state.storage.append_audit(&entry).await {
        Ok(()) => error,
        Err(e) => e.into(),
    }
}

/// `POST /v1/enrol` (no bearer: the one-time code is the credential).
pub async fn enrol(
    State(state): State<AppState>,
    ClientIp(client): ClientIp,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<(StatusCode, Json<EnrolResponse>), ApiError> {
    let now = UtcMillis::now();
    let refused = state
        .storage
        .enrol_refusals_since(&client, now.saturating_add_ms(-ENROL_RATE_WINDOW_MS))
        .await?;
    if refused >= ENROL_RATE_LIMIT {
        state.metrics.enrolments_refused.inc();
        tracing::warn!(target: "audit", client, "enrolment rate-limited");
        return Err(ApiError::TooManyRequests(format!(
            "too many refused enrolment attempts from this address ({ENROL_RATE_LIMIT} in {} minutes); wait and check the code",
            ENROL_RATE_WINDOW_MS / 60_000
        )));
    }
    if media_type(&headers) != Some("application/json") {
        return Err(refuse(
            &state,
            &client,
            "malformed_request",
            ApiError::UnsupportedMediaType(
                "send the body as Content-Type: application/json".into(),
            ),
        )
        .await);
    }
    let req: EnrolRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let error = ApiError::BadRequest(format!(
                "malformed enrolment request ({e}); send {{\"code\", \"public_key\", \"name\"}}"
            ));
            return Err(refuse(&state, &client, "malformed_request", error).await);
        }
    };
    let code = match EnrolmentCode::parse(&req.code) {
        Ok(c) => c,
        Err(e) => {
            return Err(refuse(
                &state,
                &client,
                "malformed_code",
                ApiError::BadRequest(e.to_string()),
            )
            .await);
        }
    };
    let public_key = match parse_public_key_hex(&req.public_key) {
        Ok(k) => public_key_hex(&k),
        Err(e) => {
            return Err(refuse(
                &state,
                &client,
                "malformed_key",
                ApiError::BadRequest(e.to_string()),
            )
            .await);
        }
    };
    let name = req.name.trim().to_owned();
    if name.is_empty()
        || name.chars().count() > MAX_GATEWAY_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        let error = ApiError::BadRequest(format!(
            "name must be 1 to {MAX_GATEWAY_NAME_CHARS} characters without control characters"
        ));
        return Err(refuse(&state, &client, "bad_name", error).await);
    }
    let attempt = EnrolAttempt {
        code_digest: code.digest(),
        public_key,
        name,
        client: client.clone(),
        now,
    };
    match state.storage.enrol(&attempt).await? {
        Ok(g) => {
            state.metrics.enrolments.inc();
            tracing::info!(target: "audit", gateway = %g.gateway_id, store = %g.store, client, "gateway enrolled");
            Ok((
                StatusCode::CREATED,
                Json(EnrolResponse {
                    gateway_id: g.gateway_id,
                    store: g.store,
                    hub_tls_fingerprint: state.tls_fingerprint.clone(),
                }),
            ))
        }
        Err(why) => {
            state.metrics.enrolments_refused.inc();
            tracing::warn!(target: "audit", client, reason = why.as_str(), "enrolment refused");
            Err(match why {
                EnrolRefusal::Unknown => ApiError::Unauthorized(
                    "this enrolment code is not valid; check what you typed or ask HQ for a new code"
                        .into(),
                ),
                EnrolRefusal::Used => ApiError::Gone(
                    "this enrolment code was already used; ask HQ for a new code".into(),
                ),
                EnrolRefusal::Expired => ApiError::Gone(
                    "this enrolment code has expired; ask HQ for a new code".into(),
                ),
            })
        }
    }
}

/// `POST /v1/enrolments` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolmentRequest {
    pub store: String,
    /// e.g. `24h` (the default), `90m`, `7d`.
    #[serde(default)]
    pub ttl: Option<String>,
}

/// A new enrolment code, shown once.
#[derive(Debug, Serialize)]
pub struct EnrolmentCreated {
    pub code: String,
    pub code_id: String,
    pub store: StoreId,
    pub expires_at: String,
    pub hub_tls_fingerprint: Option<String>,
    pub uri: String,
}

/// `POST /v1/enrolments` (admin): a one-time code for a store's new gateway.
pub async fn create(
    State(state): State<AppState>,
    auth: AdminAuth,
    JsonBody(req): JsonBody<EnrolmentRequest>,
) -> Result<(StatusCode, Json<EnrolmentCreated>), ApiError> {
    let store =
        StoreId::parse(req.store.trim()).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let ttl = match req.ttl.as_deref() {
        None => DEFAULT_ENROLMENT_TTL_MS,
        Some(t) => parse_ttl(t).map_err(ApiError::BadRequest)?,
    };
    let e = NewEnrolment::generate(&store, UtcMillis::now().saturating_add_ms(ttl));
    state
        .storage
        .create_enrolment(&e, &auth.principal().actor())
        .await?;
    tracing::info!(target: "audit", code_id = %e.code_id, %store, "enrolment code created");
    let code = e.code.display();
    let uri = enrolment_uri(&code, None, state.tls_fingerprint.as_deref());
    Ok((
        StatusCode::CREATED,
        Json(EnrolmentCreated {
            code,
            code_id: e.code_id,
            store,
            expires_at: format_rfc3339(e.expires_at),
            hub_tls_fingerprint: state.tls_fingerprint.clone(),
            uri,
        }),
    ))
}

/// A gateway in `GET /v1/gateways`.
#[derive(Debug, Serialize)]
pub struct GatewayBody {
    pub gateway_id: GatewayId,
    pub store: StoreId,
    pub created_at: String,
    pub revoked_at: Option<String>,
    /// `key` (enrolled, signs its requests) or `bearer` (a `gateway add` credential).
    pub auth: &'static str,
    pub name: Option<String>,
}

/// `GET /v1/gateways` (admin).
pub async fn list_gateways(
    State(state): State<AppState>,
    _auth: AdminAuth,
) -> Result<Json<serde_json::Value>, ApiError> {
    let gateways: Vec<GatewayBody> = state
        .storage
        .list_gateways()
        .await?
        .into_iter()
        .map(|g| GatewayBody {
            gateway_id: g.gateway_id,
            store: g.store,
            created_at: format_rfc3339(g.created_at),
            revoked_at: g.revoked_at.map(format_rfc3339),
            auth: if g.enrolled_name.is_some() {
                "key"
            } else {
                "bearer"
            },
            name: g.enrolled_name,
        })
        .collect();
    Ok(Json(json!({ "gateways": gateways })))
}

/// `POST /v1/gateways/{id}/revoke` (admin): refused from its next request on.
pub async fn revoke_gateway(
    State(state): State<AppState>,
    auth: AdminAuth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = GatewayId::parse(&id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    state
        .storage
        .revoke_gateway_by(&id, &auth.principal().actor())
        .await
        .map_err(|e| match e {
            crate::StorageError::UnknownGateway(g) => {
                ApiError::NotFound(format!("unknown gateway {g}"))
            }
            other => other.into(),
        })?;
    tracing::info!(target: "audit", gateway = %id, "gateway revoked");
    Ok(Json(json!({ "gateway_id": id, "revoked": true })))
}
