//! Click-and-collect orders for signed-in staff: list, show, pick, ready, and redeem (QR token or
//! fallback code). Every decision about an order's state is made by the ledger writer from the
//! committed state, so two redeems, or a redeem and HQ's cancel, are decided by ledger order; a
//! redeem answers `hand_over` only after its `PickupCollected` event committed.
use aisle_protocol::pickup::{
    ClaimsRefusal, FallbackCode, MAX_ORDER_LINES, PickupClaims, RedeemMethod, TokenError,
    check_label, code_digest,
};
use aisle_protocol::sync::error_code;
use aisle_protocol::{Gtin, OrderId, UtcMillis};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::AppState;
use super::staff::{StaffSession, body_error, error, json_body, rate_limited};
use crate::clock::rfc3339;
use crate::ledger::{OrderStatus, PickupAction, PickupRecord, PickupRefusal};

/// Largest body of a pickup request (a QR token is at most 512 characters).
pub const MAX_PICKUP_BODY_BYTES: usize = 16 * 1024;
/// Default and largest `limit` of the list.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1_000;
/// The device a redeem names when it names none.
const DEFAULT_DEVICE: &str = "api";

/// An order as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderJson {
    pub order_id: OrderId,
    pub status: OrderStatus,
    pub placed_at: String,
    pub pickup_by: String,
    pub expires_at: String,
    /// The pick list: by shelf position when the store knows one, else by GTIN.
    pub lines: Vec<LineJson>,
    pub location: Option<String>,
    pub picking_by: Option<String>,
    pub collected: Option<CollectedJson>,
    pub history: Vec<HistoryJson>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineJson {
    pub gtin: Gtin,
    pub name: String,
    pub qty: u32,
    /// Shelf position; null until the store has shelf bindings.
    pub shelf: Option<String>,
    pub missing: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectedJson {
    pub at: String,
    pub device: String,
    pub staff: Option<String>,
    pub method: RedeemMethod,
    pub partial: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryJson {
    pub at: String,
    pub kind: String,
    pub by: Option<String>,
}

impl From<&PickupRecord> for OrderJson {
    fn from(r: &PickupRecord) -> Self {
        let mut lines: Vec<LineJson> = r
            .lines
            .iter()
            .map(|l| LineJson {
                gtin: l.gtin,
                name: l.name.clone(),
                qty: l.qty,
                shelf: None,
                missing: l.missing,
            })
            .collect();
        lines.sort_by(|a, b| a.gtin.as_str().cmp(b.gtin.as_str()));
        OrderJson {
            order_id: r.order_id.clone(),
            status: r.status,
            placed_at: rfc3339(r.placed_at),
            pickup_by: rfc3339(r.pickup_by),
            expires_at: rfc3339(r.expires_at),
            lines,
            location: r.location.clone(),
            picking_by: r.picking_by.clone(),
            collected: r.collected.as_ref().map(|c| CollectedJson {
                at: rfc3339(c.at),
                device: c.device.clone(),
                staff: c.staff.clone(),
                method: c.method,
                partial: c.partial,
            }),
            history: r
                .history
                .iter()
                .map(|h| HistoryJson {
                    at: rfc3339(h.at),
                    kind: h.kind.clone(),
                    by: h.by.clone(),
                })
                .collect(),
        }
    }
}

fn ledger_error(e: &crate::ledger::LedgerError) -> Response {
    super::ApiError::ledger(e).into_response()
}

fn not_found(order: &str) -> Response {
    let shown: String = order.chars().take(80).collect();
    error(
        StatusCode::NOT_FOUND,
        error_code::NOT_FOUND,
        format!("no pickup order {shown} at this store"),
        Value::Null,
    )
}

fn order_id(raw: &str) -> Result<OrderId, Box<Response>> {
    OrderId::parse(raw).map_err(|_| Box::new(not_found(raw)))
}

/// "collected at 14:03 UTC by Ana at counter-1"
fn collected_message(at: UtcMillis, by: &str, device: &str) -> String {
    let hhmm = rfc3339(at).get(11..16).unwrap_or("??:??").to_string();
    format!("collected at {hhmm} UTC by {by} at {device}")
}

/// The answer for a refused staff action (redeem outcomes are counted by the caller).
fn refusal(r: PickupRefusal) -> (&'static str, Response) {
    match r {
        PickupRefusal::NotFound(id) => ("not_found", not_found(id.as_str())),
        PickupRefusal::Conflict {
            status, ref action, ..
        } => (
            "conflict",
            error(
                StatusCode::CONFLICT,
                error_code::CONFLICT,
                r.to_string(),
                json!({ "status": status, "action": action }),
            ),
        ),
        PickupRefusal::AlreadyCollected { ref collection, .. } => (
            "already_collected",
            error(
                StatusCode::CONFLICT,
                "already_collected",
                collected_message(collection.at, collection.by(), &collection.device),
                json!({
                    "collected_at": rfc3339(collection.at),
                    "collected_by": collection.by(),
                    "device": collection.device,
                    "staff": collection.staff,
                }),
            ),
        ),
        PickupRefusal::Cancelled(_) => (
            "cancelled",
            error(
                StatusCode::CONFLICT,
                "cancelled",
                r.to_string(),
                json!({ "status": "cancelled" }),
            ),
        ),
        PickupRefusal::Expired(_) => (
            "expired",
            error(StatusCode::GONE, "expired", r.to_string(), Value::Null),
        ),
        PickupRefusal::NotReady { status, .. } => (
            "not_ready",
            error(
                StatusCode::CONFLICT,
                "not_ready",
                r.to_string(),
                json!({ "status": status }),
            ),
        ),
        PickupRefusal::Invalid(m) => (
            "invalid",
            error(
                StatusCode::UNPROCESSABLE_ENTITY,
                error_code::BAD_REQUEST,
                m,
                Value::Null,
            ),
        ),
        PickupRefusal::Ledger(e) => ("error", ledger_error(&e)),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    status: Option<String>,
    limit: Option<String>,
}

pub(super) async fn list(
    State(st): State<AppState>,
    _who: StaffSession,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            error_code::BAD_REQUEST,
            "query: status=open|received|picking|ready|collected|cancelled|expired|all, limit=1..1000",
            Value::Null,
        );
    };
    let statuses: Vec<OrderStatus> = match q.status.as_deref().unwrap_or("open") {
        "open" => OrderStatus::OPEN.to_vec(),
        "all" => OrderStatus::ALL.to_vec(),
        "collected" => vec![OrderStatus::Collected, OrderStatus::PartiallyCollected],
        other => match OrderStatus::parse(other) {
            Some(s) => vec![s],
            None => {
                let shown: String = other.chars().take(40).collect();
                return error(
                    StatusCode::BAD_REQUEST,
                    error_code::BAD_REQUEST,
                    format!(
                        "status '{shown}': use open, received, picking, ready, collected, \
                         cancelled, expired or all"
                    ),
                    Value::Null,
                );
            }
        },
    };
    let limit = match q.limit.as_deref().map(str::parse::<u32>) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                error_code::BAD_REQUEST,
                format!("limit must be 1 to {MAX_LIMIT}"),
                Value::Null,
            );
        }
    };
    match st.ledger.pickup_orders(statuses, limit).await {
        Ok(recs) => {
            let orders: Vec<OrderJson> = recs.iter().map(OrderJson::from).collect();
            Json(json!({ "orders": orders })).into_response()
        }
        Err(e) => ledger_error(&e),
    }
}

pub(super) async fn get_order(
    State(st): State<AppState>,
    _who: StaffSession,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let raw = match path {
        Ok(Path(raw)) => raw,
        Err(_) => return not_found("(not a valid order id)"),
    };
    let id = match order_id(&raw) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    match st.ledger.pickup_order(id).await {
        Ok(Some(rec)) => Json(OrderJson::from(&rec)).into_response(),
        Ok(None) => not_found(&raw),
        Err(e) => ledger_error(&e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PickBody {}

pub(super) async fn pick(
    State(st): State<AppState>,
    who: StaffSession,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let bytes = match body {
        Ok(b) => b,
        Err(e) => return body_error(&e),
    };
    if let Err(r) = json_body::<PickBody>(&bytes) {
        return *r;
    }
    let raw = match path {
        Ok(Path(raw)) => raw,
        Err(_) => return not_found("(not a valid order id)"),
    };
    let id = match order_id(&raw) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    act(
        &st,
        PickupAction::Pick {
            order_id: id,
            staff: who.staff,
        },
    )
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadyBody {
    location: String,
    #[serde(default)]
    missing: Vec<String>,
}

pub(super) async fn ready(
    State(st): State<AppState>,
    who: StaffSession,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let bytes = match body {
        Ok(b) => b,
        Err(e) => return body_error(&e),
    };
    let body: ReadyBody = match json_body(&bytes) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let raw = match path {
        Ok(Path(raw)) => raw,
        Err(_) => return not_found("(not a valid order id)"),
    };
    let id = match order_id(&raw) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    let unprocessable = |m: String| {
        error(
            StatusCode::UNPROCESSABLE_ENTITY,
            error_code::BAD_REQUEST,
            m,
            Value::Null,
        )
    };
    if let Err(e) = check_label("location", &body.location) {
        return unprocessable(e.to_string());
    }
    if body.missing.len() > MAX_ORDER_LINES {
        return unprocessable(format!("missing: at most {MAX_ORDER_LINES} GTINs"));
    }
    let mut missing = Vec::with_capacity(body.missing.len());
    for m in &body.missing {
        match Gtin::parse(m) {
            Ok(g) => missing.push(g),
            Err(e) => {
                let shown: String = m.chars().take(40).collect();
                return unprocessable(format!("missing: '{shown}': {e}"));
            }
        }
    }
    act(
        &st,
        PickupAction::Ready {
            order_id: id,
            staff: who.staff,
            location: body.location,
            missing,
        },
    )
    .await
}

async fn act(st: &AppState, action: PickupAction) -> Response {
    match st.ledger.pickup(action).await {
        Ok(rec) => Json(OrderJson::from(&rec)).into_response(),
        Err(r) => refusal(r).1,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeemBody {
    #[serde(default)]
    qr: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    device: Option<String>,
}

/// A redeem outcome: counted, then answered.
fn outcome(st: &AppState, label: &str, r: Response) -> Response {
    st.pickup.metrics.redeemed(label);
    r
}

pub(super) async fn redeem(
    State(st): State<AppState>,
    who: StaffSession,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let bytes = match body {
        Ok(b) => b,
        Err(e) => return body_error(&e),
    };
    let body: RedeemBody = match json_body(&bytes) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let device = body.device.unwrap_or_else(|| DEFAULT_DEVICE.to_string());
    if let Err(e) = check_label("device", &device) {
        return error(
            StatusCode::BAD_REQUEST,
            error_code::BAD_REQUEST,
            e.to_string(),
            Value::Null,
        );
    }
    let p = st.pickup.clone();
    let bad_token = |m: String| {
        outcome(
            &st,
            "bad_token",
            error(StatusCode::BAD_REQUEST, "bad_token", m, Value::Null),
        )
    };
    let (order_id, method) = match (body.qr, body.code) {
        (Some(qr), None) => {
            let keys = match st.ledger.pickup_keys().await {
                Ok(k) => k,
                Err(e) => return ledger_error(&e),
            };
            let verified = PickupClaims::verify(&qr, |id| -> Option<VerifyingKey> {
                keys.iter()
                    .find(|k| k.key_id == id)
                    .and_then(|k| k.verifying_key())
            });
            let claims = match verified {
                Ok(c) => c,
                Err(TokenError::UnknownKey(id)) => {
                    return outcome(
                        &st,
                        "no_key",
                        error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "no_key",
                            format!(
                                "this store does not have pickup key {id} yet (it comes from \
                                 HQ with the orders); try the typed code or try again later"
                            ),
                            json!({ "key_id": id }),
                        ),
                    );
                }
                Err(e) => return bad_token(e.to_string()),
            };
            match claims.check(&p.store, p.now()) {
                Ok(()) => {}
                Err(e @ ClaimsRefusal::WrongStore(_)) => {
                    return outcome(
                        &st,
                        "wrong_store",
                        error(
                            StatusCode::FORBIDDEN,
                            "wrong_store",
                            e.to_string(),
                            json!({ "store": claims.store }),
                        ),
                    );
                }
                Err(e @ ClaimsRefusal::Expired { .. }) => {
                    return outcome(
                        &st,
                        "expired",
                        error(StatusCode::GONE, "expired", e.to_string(), Value::Null),
                    );
                }
            }
            (claims.order, RedeemMethod::Qr)
        }
        (None, Some(code)) => {
            // Guessing is stopped here, before the code is looked at. The attempt is counted as
            // a failure up front (and given back if the code turns out to name an order), so
            // parallel guesses cannot all slip in before the first failure is counted.
            let now = p.now();
            let taken = p.redeem_limits.lock().ok().map(|mut l| {
                let l = &mut *l;
                let s = l.store_codes.retry_after_s("store", now);
                let d = l.device_codes.retry_after_s(&device, now);
                match d.max(s) {
                    Some(wait) => Err(wait),
                    None => {
                        l.store_codes.record("store", now);
                        l.device_codes.record(&device, now);
                        Ok(())
                    }
                }
            });
            if let Some(Err(wait)) = taken {
                return outcome(
                    &st,
                    "rate_limited",
                    rate_limited(wait, "too many wrong pickup codes: wait, then try again"),
                );
            }
            let give_back = || {
                if let Ok(mut l) = p.redeem_limits.lock() {
                    l.store_codes.give_back("store", now);
                    l.device_codes.give_back(&device, now);
                }
            };
            // A malformed code cannot match any order: refused, but not a guess.
            let code = match FallbackCode::parse(&code) {
                Ok(c) => c,
                Err(e) => {
                    give_back();
                    return bad_token(e.to_string());
                }
            };
            let digest = code_digest(&p.store, &code);
            match st.ledger.pickup_order_by_digest(digest).await {
                Ok(Some(id)) => {
                    give_back();
                    (id, RedeemMethod::Code)
                }
                Ok(None) => {
                    tracing::warn!(device = %device, "pickup code matches no order");
                    return outcome(
                        &st,
                        "not_found",
                        error(
                            StatusCode::NOT_FOUND,
                            error_code::NOT_FOUND,
                            "no order has this pickup code",
                            Value::Null,
                        ),
                    );
                }
                Err(e) => {
                    give_back();
                    return ledger_error(&e);
                }
            }
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                error_code::BAD_REQUEST,
                "send exactly one of qr and code",
                Value::Null,
            );
        }
    };
    // Once a proof names an order, that order gets a bounded number of attempts.
    let now = p.now();
    let limited = p
        .redeem_limits
        .lock()
        .ok()
        .and_then(|mut l| l.orders.take(order_id.as_str(), now).err());
    if let Some(s) = limited {
        return outcome(
            &st,
            "rate_limited",
            rate_limited(s, "too many attempts for this order: wait, then try again"),
        );
    }
    if method == RedeemMethod::Code {
        // A code resolves to an order the store holds; its expiry is the token's expiry.
        match st.ledger.pickup_order(order_id.clone()).await {
            Ok(Some(rec)) if p.now() >= rec.expires_at => {
                return outcome(
                    &st,
                    "expired",
                    error(
                        StatusCode::GONE,
                        "expired",
                        "this pickup code expired",
                        Value::Null,
                    ),
                );
            }
            Ok(_) => {}
            Err(e) => return ledger_error(&e),
        }
    }
    let action = PickupAction::Redeem {
        order_id,
        method,
        device,
        staff: Some(who.staff),
    };
    match st.ledger.pickup(action).await {
        Ok(rec) => {
            tracing::info!(order = %rec.order_id, "pickup order collected");
            outcome(
                &st,
                "collected",
                Json(json!({ "hand_over": true, "order": OrderJson::from(&rec) })).into_response(),
            )
        }
        Err(r) => {
            let (label, resp) = refusal(r);
            if label == "error" || label == "conflict" || label == "invalid" {
                resp
            } else {
                outcome(&st, label, resp)
            }
        }
    }
}
