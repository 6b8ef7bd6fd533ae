//! Requests signed by an enrolled gateway's key (see `aisle_protocol::auth`).
//!
//! A middleware, so the body is read once: a request carrying [`SIGNATURE_HEADER`] is checked
//! here (clock, gateway key, signature over the exact body bytes, nonce) before any handler
//! runs, and passed on with its body and a [`SignedGateway`] in its extensions, which
//! [`Caller`](super::Caller) trusts. Requests without the header pass untouched (bearer
//! credentials, as before). Checks run cheapest first; the nonce is recorded only for a valid
//! signature, so nobody but the gateway can fill its nonce table.
//!
//! An enrolled gateway's id, store and public key never change (enrolling again makes a new
//! gateway), so each hub process caches them ([`KeyCache`]); whether the gateway is revoked is
//! asked of the database on every request, in the statement that records the nonce, so a
//! revocation by any hub process takes effect on the next request. A signed request costs one
//! small write and no extra read, and for reads and uploads that write runs beside the handler
//! (its answer held back until the nonce proved fresh; see [`may_overlap_nonce`]).
use aisle_protocol::auth::{
    GATEWAY_HEADER, MAX_CLOCK_SKEW_MS, NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER,
    check_clock, check_nonce, parse_public_key_hex, parse_timestamp, verify_request,
};
use aisle_protocol::sync::{MAX_BODY_BYTES, path};
use std::collections::HashMap;
use std::sync::PoisonError;

use aisle_protocol::{GatewayId, StoreId, UtcMillis};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ed25519_dalek::VerifyingKey;

use super::{ApiError, AppState, MAX_SMALL_BODY_BYTES, SignedGateway};
use crate::security::NonceOutcome;
use crate::storage::{AuthenticatedGateway, Backend};

/// Most keys one process caches; beyond it the cache starts again (they are reloaded on use).
const MAX_CACHED_KEYS: usize = 100_000;

/// Enrolled gateways' stores and public keys, as loaded from the database.
#[derive(Debug, Default)]
pub struct KeyCache {
    keys: std::sync::Mutex<HashMap<GatewayId, (StoreId, VerifyingKey)>>,
}

impl KeyCache {
    fn get(&self, id: &GatewayId) -> Option<(StoreId, VerifyingKey)> {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    fn put(&self, id: GatewayId, store: StoreId, key: VerifyingKey) {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if keys.len() >= MAX_CACHED_KEYS {
            keys.clear();
        }
        keys.insert(id, (store, key));
    }
}

/// Set once at start-up by `serve` in a hub built with the `bench-unauthenticated` feature and
/// run with `AISLE_BENCH_UNAUTHENTICATED=1`: see [`trust_gateway_header`].
#[cfg(feature = "bench-unauthenticated")]
pub static UNAUTHENTICATED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The middleware: verifies signed requests, leaves the others alone.
pub async fn verify(State(state): State<AppState>, req: Request, next: Next) -> Response {
    #[cfg(feature = "bench-unauthenticated")]
    if UNAUTHENTICATED.load(std::sync::atomic::Ordering::Relaxed)
        && req.headers().contains_key(GATEWAY_HEADER)
    {
        return match trust_gateway_header(&state, req).await {
            Ok(req) => next.run(req).await,
            Err(e) => e.into_response(),
        };
    }
    if !req.headers().contains_key(SIGNATURE_HEADER) {
        return next.run(req).await;
    }
    let (req, nonce) = match check(&state, req).await {
        Ok(checked) => checked,
        Err(e) => {
            state.metrics.signed_refused.inc();
            return e.into_response();
        }
    };
    if !may_overlap_nonce(&req, state.storage.backend()) {
        if let Err(e) = nonce.record(&state).await {
            state.metrics.signed_refused.inc();
            return e.into_response();
        }
        return next.run(req).await;
    }
    // The signature checked out, so the request is the gateway's own; what is left to rule out
    // is a replay or a revocation, which the nonce statement answers. For requests whose
    // effect is harmless before that answer (see `may_overlap_nonce`), the handler runs
    // meanwhile and its answer is released only once the nonce was fresh: a signed request
    // then costs its signature check and not a database round trip more.
    let handler = next.run(req);
    let recorded = nonce.record(&state);
    tokio::pin!(handler, recorded);
    tokio::select! {
        outcome = &mut recorded => match outcome {
            // The handler is dropped unanswered (a replayed long-poll ends at once).
            Err(e) => {
                state.metrics.signed_refused.inc();
                e.into_response()
            }
            Ok(()) => handler.await,
        },
        answer = &mut handler => match recorded.await {
            Err(e) => {
                state.metrics.signed_refused.inc();
                e.into_response()
            }
            Ok(()) => answer,
        },
    }
}

/// Whether a signed request may run while its nonce is being recorded, its answer held back
/// until the nonce proved fresh: reads (`GET`: nothing changes, the answer is withheld), and
/// on PostgreSQL uploads (`POST /v1/sync/events`: idempotent by (gateway, seq) and event id,
/// so a replay changes nothing, and the upload's own transaction refuses a revoked gateway
/// under its row lock). SQLite has one writer at a time, so there an upload beside the nonce
/// write would only wait for it (in the busy handler's sleeps); everything else records the
/// nonce first.
fn may_overlap_nonce(req: &Request, backend: Backend) -> bool {
    req.method() == axum::http::Method::GET
        || (backend == Backend::Postgres
            && req.method() == axum::http::Method::POST
            && req.uri().path() == path::EVENTS)
}

/// A verified request's nonce, still to be recorded (with the revocation check).
struct PendingNonce {
    gateway: GatewayId,
    nonce: String,
    expires_at: UtcMillis,
    now: UtcMillis,
}

impl PendingNonce {
    async fn record(self, state: &AppState) -> Result<(), ApiError> {
        let gateway = self.gateway;
        match state
            .storage
            .remember_nonce(&gateway, &self.nonce, self.expires_at, self.now)
            .await?
        {
            NonceOutcome::Fresh => Ok(()),
            NonceOutcome::Replayed => Err(ApiError::Replayed(format!(
                "replayed: gateway {gateway} already sent a request with this nonce; sign each request with a fresh nonce"
            ))),
            NonceOutcome::Revoked => Err(revoked(&gateway)),
        }
    }
}

/// The benchmark's baseline ("authentication switched off"): the gateway named in
/// `x-aisle-gateway` is believed, with its store from the same key cache signed requests use;
/// no signature, clock or nonce check, and the body is not read here.
#[cfg(feature = "bench-unauthenticated")]
async fn trust_gateway_header(state: &AppState, req: Request) -> Result<Request, ApiError> {
    let (mut parts, body) = req.into_parts();
    let gateway = GatewayId::parse(header(&parts, GATEWAY_HEADER)?)
        .map_err(|_| ApiError::Unauthorized(format!("{GATEWAY_HEADER} is not a gateway id")))?;
    let (store, _) = enrolled_key(state, &gateway).await?;
    parts.extensions.insert(SignedGateway(AuthenticatedGateway {
        gateway_id: gateway,
        store,
    }));
    Ok(Request::from_parts(parts, body))
}

fn revoked(gateway: &GatewayId) -> ApiError {
    ApiError::Unauthorized(format!("gateway {gateway} was revoked; enrol it again"))
}

/// An enrolled gateway's store and public key: from this process's cache, else from the
/// database (refused when unknown or already revoked there), then cached.
async fn enrolled_key(
    state: &AppState,
    gateway: &GatewayId,
) -> Result<(StoreId, VerifyingKey), ApiError> {
    if let Some(known) = state.gateway_keys.get(gateway) {
        return Ok(known);
    }
    let key = state.storage.gateway_key(gateway).await?.ok_or_else(|| {
        ApiError::Unauthorized(format!(
            "gateway {gateway} is not enrolled with a key; enrol it or use its credential"
        ))
    })?;
    if key.revoked {
        return Err(revoked(gateway));
    }
    let public = parse_public_key_hex(&key.public_key).map_err(|e| {
        tracing::error!(%gateway, error = %e, "stored gateway key does not parse");
        ApiError::Internal
    })?;
    state
        .gateway_keys
        .put(gateway.clone(), key.store.clone(), public);
    Ok((key.store, public))
}

fn header<'a>(parts: &'a Parts, name: &'static str) -> Result<&'a str, ApiError> {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::Unauthorized(format!(
                "a signed request needs {GATEWAY_HEADER}, {TIMESTAMP_HEADER}, {NONCE_HEADER} and {SIGNATURE_HEADER}; {name} is missing or not text"
            ))
        })
}

/// Checks everything but the nonce: headers, clock, key, signature over the exact body.
async fn check(state: &AppState, req: Request) -> Result<(Request, PendingNonce), ApiError> {
    let (mut parts, body) = req.into_parts();
    let unauthorized = |e: aisle_protocol::auth::AuthError| ApiError::Unauthorized(e.to_string());
    let gateway = GatewayId::parse(header(&parts, GATEWAY_HEADER)?)
        .map_err(|_| ApiError::Unauthorized(format!("{GATEWAY_HEADER} is not a gateway id")))?;
    let timestamp = parse_timestamp(header(&parts, TIMESTAMP_HEADER)?).map_err(unauthorized)?;
    let nonce = header(&parts, NONCE_HEADER)?.to_owned();
    check_nonce(&nonce).map_err(unauthorized)?;
    let signature = header(&parts, SIGNATURE_HEADER)?.to_owned();
    let now = UtcMillis::now();
    check_clock(timestamp, now).map_err(|e| ApiError::ClockSkew(e.to_string()))?;
    let (store, public) = enrolled_key(state, &gateway).await?;
    // The same bounds as the routes': uploads may be large, everything a gateway may call
    // besides takes a small body at most.
    let limit = if parts.uri.path() == path::EVENTS {
        MAX_BODY_BYTES
    } else {
        MAX_SMALL_BODY_BYTES
    };
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::PayloadTooLarge(format!(
            "the request body could not be read whole (at most {limit} bytes on this route)"
        ))
    })?;
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |p| p.as_str());
    verify_request(
        &public,
        parts.method.as_str(),
        path_and_query,
        timestamp,
        &nonce,
        &signature,
        &bytes,
    )
    .map_err(unauthorized)?;
    let pending = PendingNonce {
        gateway: gateway.clone(),
        nonce,
        expires_at: timestamp.saturating_add_ms(MAX_CLOCK_SKEW_MS),
        now,
    };
    parts.extensions.insert(SignedGateway(AuthenticatedGateway {
        gateway_id: gateway,
        store,
    }));
    Ok((
        Request::from_parts(parts, axum::body::Body::from(bytes)),
        pending,
    ))
}
