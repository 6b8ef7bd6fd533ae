//! Staff sign-in: `POST /v1/staff/sign-in` (a PIN from `[pickup]`'s argon2 hashes; 5 wrong PINs
//! from one address in 5 minutes → 429), `POST /v1/staff/sign-out`, and [`StaffSession`], the
//! extractor every `/v1/pickups...` route uses (cookie `aisle_staff` or `Authorization: Bearer`).
//!
//! Each PIN has a role ([`StaffRole`]): `staff` and `manager` sign in here (a manager may also
//! approve lane overrides: [`StaffSession::is_manager`]); a `technician` PIN opens only the setup
//! page (`POST /v1/setup/sign-in`, same lockout), and is refused here with 403.
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
use crate::config::StaffRole;
use crate::pickup::staff::Session;

/// The session cookie.
pub const COOKIE: &str = "aisle_staff";
/// The setup page's session cookie (technicians).
pub const SETUP_COOKIE: &str = "aisle_setup";
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

pub(super) fn forbidden(message: &str) -> Response {
    error(
        StatusCode::FORBIDDEN,
        error_code::FORBIDDEN,
        message,
        Value::Null,
    )
}

/// The token a request presents: `Authorization: Bearer <token>`, else the `cookie` cookie.
fn presented_token(headers: &HeaderMap, cookie: &str) -> Option<String> {
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
                && k == cookie
            {
                return Some(v.trim().to_string());
            }
        }
    }
    None
}

/// The live session a request presents (bearer token, else the `cookie` cookie), or 401.
pub(super) fn live_session(
    headers: &HeaderMap,
    st: &AppState,
    cookie: &str,
    sign_in_at: &str,
) -> Result<(String, Session), Box<Response>> {
    let Some(token) = presented_token(headers, cookie) else {
        return Err(Box::new(unauthorized(&format!(
            "sign in first ({sign_in_at} with your PIN)"
        ))));
    };
    // Tokens are 64 hex digits; anything else cannot name a session.
    if token.len() != 64 {
        return Err(Box::new(unauthorized(
            "the session is not valid: sign in again",
        )));
    }
    match st.pickup.sessions.get(&token, st.pickup.now()) {
        Some(s) => Ok((token, s)),
        None => Err(Box::new(unauthorized(
            "the session expired or was signed out: sign in again",
        ))),
    }
}

/// A signed-in member of staff (role `staff` or `manager`). Extracting it answers 401 without a
/// live session, and 403 for a technician's session (it opens the setup page only).
#[derive(Clone, Debug)]
pub struct StaffSession {
    pub staff: String,
    pub role: StaffRole,
    pub token: String,
}

impl StaffSession {
    /// May this person approve what only a manager may (overrides at the lanes)?
    pub fn is_manager(&self) -> bool {
        self.role == StaffRole::Manager
    }
}

impl FromRequestParts<AppState> for StaffSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Response> {
        let (token, s) =
            live_session(&parts.headers, st, COOKIE, "POST /v1/staff/sign-in").map_err(|r| *r)?;
        if s.role == StaffRole::Technician {
            return Err(forbidden(
                "a technician's session opens only the setup page (/setup)",
            ));
        }
        Ok(StaffSession {
            staff: s.staff,
            role: s.role,
            token,
        })
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
    sign_in_for(st, &ext, body, SignInFor::Staff).await
}

/// Which page a PIN signs in to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SignInFor {
    /// The pickup page and the staff API: `staff` and `manager` PINs.
    Staff,
    /// The setup page: `technician` PINs.
    Setup,
}

impl SignInFor {
    fn admits(self, role: StaffRole) -> bool {
        match self {
            SignInFor::Staff => role != StaffRole::Technician,
            SignInFor::Setup => role == StaffRole::Technician,
        }
    }
}

/// A PIN sign-in: one lockout per client address shared by every page, wrong PINs and sign-ins
/// in the gateway's audit log. A right PIN of a role the page does not admit is answered 403
/// (and logged) without a session.
pub(super) async fn sign_in_for(
    st: AppState,
    ext: &Extensions,
    body: Result<Bytes, BytesRejection>,
    purpose: SignInFor,
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
    let address = client_address(ext);
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
    let Some((name, role)) = who else {
        tracing::warn!(address = %address, page = ?purpose, "sign-in with a wrong PIN");
        audit(
            &st,
            format!("device:{address}"),
            crate::audit::action::STAFF_PIN_REFUSED,
            match purpose {
                SignInFor::Staff => String::new(),
                SignInFor::Setup => "at the setup page".to_string(),
            },
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
    let actor = match role {
        StaffRole::Technician => format!("technician:{name}"),
        _ => format!("staff:{name}"),
    };
    if !purpose.admits(role) {
        let (page, message) = match purpose {
            SignInFor::Staff => (
                "pickup",
                "this is a technician's PIN: it opens only the setup page (/setup)",
            ),
            SignInFor::Setup => (
                "setup",
                "this PIN is not a technician's: the setup page needs a PIN with the role \
                 technician",
            ),
        };
        tracing::warn!(who = %name, %role, page, "sign-in refused for the PIN's role");
        audit(
            &st,
            actor,
            crate::audit::action::SIGN_IN_REFUSED_ROLE,
            format!("{role} PIN at the {page} sign-in from {address}"),
        )
        .await;
        return forbidden(message);
    }
    let (token, session) = p.sessions.open(name.clone(), role, p.now());
    let (action, cookie_name) = match purpose {
        SignInFor::Staff => (crate::audit::action::STAFF_SIGNED_IN, COOKIE),
        SignInFor::Setup => (crate::audit::action::TECHNICIAN_SIGNED_IN, SETUP_COOKIE),
    };
    tracing::info!(who = %name, %role, "signed in");
    audit(&st, actor, action, format!("from {address}")).await;
    let cookie = format!("{cookie_name}={token}; HttpOnly; SameSite=Strict; Path=/");
    let mut r = Json(json!({
        "staff": name,
        "role": role,
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
    let closed = presented_token(&headers, COOKIE)
        .or_else(|| presented_token(&headers, SETUP_COOKIE))
        .is_some_and(|t| st.pickup.sessions.close(&t));
    let mut r = Json(json!({ "signed_out": closed })).into_response();
    for clear in [
        "aisle_staff=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        "aisle_setup=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
    ] {
        r.headers_mut()
            .append(header::SET_COOKIE, HeaderValue::from_static(clear));
    }
    r
}

/// Records a sign-in (or a refused PIN) in the gateway's audit log, off the async threads.
async fn audit(st: &AppState, actor: String, action: &'static str, subject: String) {
    let log = st.audit.clone();
    let at_ms = aisle_protocol::UtcMillis::now().0;
    let _ = tokio::task::spawn_blocking(move || log.record(at_ms, &actor, action, &subject)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_manager_may_approve_what_managers_approve() {
        let session = |role| StaffSession {
            staff: "Max".into(),
            role,
            token: String::new(),
        };
        assert!(session(StaffRole::Manager).is_manager());
        assert!(!session(StaffRole::Staff).is_manager());
        assert!(!session(StaffRole::Technician).is_manager());
    }

    #[test]
    fn each_page_admits_its_own_roles() {
        for role in [StaffRole::Staff, StaffRole::Manager] {
            assert!(SignInFor::Staff.admits(role));
            assert!(!SignInFor::Setup.admits(role));
        }
        assert!(!SignInFor::Staff.admits(StaffRole::Technician));
        assert!(SignInFor::Setup.admits(StaffRole::Technician));
    }
}
