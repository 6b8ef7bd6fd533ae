//! Staff sign-in: `POST /v1/staff/sign-in` (a PIN from `[pickup]`'s argon2 hashes; 5 wrong PINs
//! from one address in 5 minutes → 429), `POST /v1/staff/sign-out`, and [`StaffSession`], the
//! extractor every `/v1/pickups...` route uses (cookie `aisle_staff` or `Authorization: Bearer`).
use std::net::SocketAddr;

use aisle_protocol::sync::error_code;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use crate::clock::rfc3339;

/// The session cookie.
pub const COOKIE: &str = "aisle_staff";
/// Longest PIN sign-in reads.
const MAX_SIGN_IN_PIN_CHARS: usize = 64;

/// An error answer with the contract's extra fields: `{error, message, ...extra}`.
pub(super) fn error(
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
    extra: Value,
) -> Response {
    let mut body = json!({ "error": code, "message": message.into() });
    if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), extra) {
        b.extend(extra);
    }
    (status, Json(body)).into_response()
}

pub(super) fn unauthorized(message: &str) -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        error_code::UNAUTHORIZED,
        message,
        Value::Null,
    )
}

pub(super) fn rate_limited(retry_after_s: u64, message: &str) -> Response {
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        message,
        json!({ "retry_after_s": retry_after_s }),
    );
    if let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// A body refused before it was read in full (too large) or not read at all.
pub(super) fn body_error(e: &BytesRejection) -> Response {
    let status = e.status();
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        error_code::PAYLOAD_TOO_LARGE
    } else {
        error_code::BAD_REQUEST
    };
    error(status, code, e.body_text(), Value::Null)
}

/// Reads a JSON body (empty means `{}`), answering 400 with the reason when it is not one.
pub(super) fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Box<Response>> {
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            error_code::BAD_REQUEST,
            format!("invalid request body: {e}"),
            Value::Null,
        ))
    })
}

/// The token a request presents: `Authorization: Bearer <token>`, else the `aisle_staff` cookie.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(t) = auth.strip_prefix("Bearer ")
    {
        return Some(t.trim().to_string());
    }
    for cookies in headers.get_all(header::COOKIE) {
        let Ok(text) = cookies.to_str() else { continue };
        for part in text.split(';') {
            if let Some((k, v)) = part.trim().split_once('=')
                && k == COOKIE
            {
                return Some(v.trim().to_string());
            }
        }
    }
    None
}

/// A signed-in staff member. Extracting it answers 401 without a live session.
#[derive(Clone, Debug)]
pub struct StaffSession {
    pub staff: String,
    pub token: String,
}

impl FromRequestParts<AppState> for StaffSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Response> {
        let Some(token) = presented_token(&parts.headers) else {
            return Err(unauthorized(
                "sign in first (POST /v1/staff/sign-in with your PIN)",
            ));
        };
        // Tokens are 64 hex digits; anything else cannot name a session.
        if token.len() != 64 {
            return Err(unauthorized("the session is not valid: sign in again"));
        }
        match st.pickup.sessions.get(&token, st.pickup.now()) {
            Some(s) => Ok(StaffSession {
                staff: s.staff,
                token,
            }),
            None => Err(unauthorized(
                "the session expired or was signed out: sign in again",
            )),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignInBody {
    pin: String,
}

fn client_address(ext: &Extensions) -> String {
    ext.get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_string(), |c| c.0.ip().to_string())
}

pub(super) async fn sign_in(
    State(st): State<AppState>,
    ext: Extensions,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let bytes = match body {
        Ok(b) => b,
        Err(e) => return body_error(&e),
    };
    let body: SignInBody = match json_body(&bytes) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if body.pin.is_empty() || body.pin.chars().count() > MAX_SIGN_IN_PIN_CHARS {
        return error(
            StatusCode::BAD_REQUEST,
            error_code::BAD_REQUEST,
            format!("pin must be 1 to {MAX_SIGN_IN_PIN_CHARS} characters"),
            Value::Null,
        );
    }
    let address = client_address(&ext);
    let p = st.pickup.clone();
    // At most two PIN checks hash at once; the lockout is checked (and this attempt counted as
    // a failure until it succeeds) while holding the permit, so parallel guesses from one
    // address cannot pass the check together.
    let Ok(_permit) = p.hashing.acquire().await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            error_code::UNAVAILABLE,
            "shutting down",
            Value::Null,
        );
    };
    let now = p.now();
    let taken = p
        .sign_in_failures
        .lock()
        .ok()
        .map(|mut w| w.take(&address, now));
    if let Some(Err(wait)) = taken {
        return rate_limited(
            wait,
            "too many wrong PINs from this device: wait, then try again",
        );
    }
    let staff = p.staff.clone();
    let pin = body.pin;
    let who = tokio::task::spawn_blocking(move || crate::pickup::staff::who(&staff, &pin))
        .await
        .ok()
        .flatten();
    let Some(name) = who else {
        tracing::warn!(address = %address, "staff sign-in with a wrong PIN");
        audit(
            &st,
            format!("device:{address}"),
            crate::audit::action::STAFF_PIN_REFUSED,
            String::new(),
        )
        .await;
        return error(
            StatusCode::UNAUTHORIZED,
            error_code::UNAUTHORIZED,
            "wrong PIN",
            Value::Null,
        );
    };
    if let Ok(mut w) = p.sign_in_failures.lock() {
        w.give_back(&address, now);
    }
    let (token, session) = p.sessions.open(name.clone(), p.now());
    tracing::info!(staff = %name, "staff signed in");
    audit(
        &st,
        format!("staff:{name}"),
        crate::audit::action::STAFF_SIGNED_IN,
        format!("from {address}"),
    )
    .await;
    let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
    let mut r = Json(json!({
        "staff": name,
        "token": token,
        "expires_at": rfc3339(session.expires_at),
    }))
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

pub(super) async fn sign_out(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let closed = presented_token(&headers).is_some_and(|t| st.pickup.sessions.close(&t));
    let mut r = Json(json!({ "signed_out": closed })).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("aisle_staff=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    r
}

/// Records a sign-in (or a refused PIN) in the gateway's audit log, off the async threads.
async fn audit(st: &AppState, actor: String, action: &'static str, subject: String) {
    let log = st.audit.clone();
    let at_ms = aisle_protocol::UtcMillis::now().0;
    let _ = tokio::task::spawn_blocking(move || log.record(at_ms, &actor, action, &subject)).await;
}
