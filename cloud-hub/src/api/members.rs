//! Loyalty member cards for HQ's loyalty system: `POST /v1/members/{member}/card` (HQ token with
//! the `orders` role, or admin). See [`crate::member`].
//!
//! Refusals: no token -> 401, another role or a gateway -> 403, malformed JSON -> 400, a bad
//! member number, a discount above 50 % or a validity outside 1 to 3650 days -> 422 naming it.
use aisle_protocol::UtcMillis;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiPath, AppState, JsonBody, OrdersAuth};
use crate::member::{self, CardRequest, DEFAULT_CARD_DAYS};
use crate::timefmt::format_rfc3339;

/// Body of `POST /v1/members/{member}/card`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardBody {
    /// Discount on member-eligible lines in basis points (500 = 5 %), at most 5000.
    pub discount_bp: i64,
    /// How long the card is valid, 1 to 3650 days; 365 when absent.
    #[serde(default)]
    pub days: Option<i64>,
}

/// A signed member card. The token is a bearer secret: hand it to the member only.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CardIssued {
    pub member: String,
    /// Text for the card's QR code: `AISLEM1.<claims>.<signature>`.
    pub token: String,
    pub expires_at: String,
}

/// `POST /v1/members/{member}/card`: signs a card valid from now, audited as the caller's.
pub async fn issue(
    State(state): State<AppState>,
    auth: OrdersAuth,
    ApiPath(member): ApiPath<String>,
    JsonBody(body): JsonBody<CardBody>,
) -> Result<(StatusCode, Json<CardIssued>), ApiError> {
    let request = CardRequest::new(
        &member,
        body.discount_bp,
        body.days.unwrap_or(DEFAULT_CARD_DAYS),
    )
    .map_err(ApiError::Unprocessable)?;
    let card = member::issue(
        state.storage.as_ref(),
        &request,
        &auth.principal().actor(),
        UtcMillis::now(),
    )
    .await?;
    tracing::info!(
        target: "audit",
        member = %card.claims.member,
        discount_bp = card.claims.discount_bp,
        "member card issued"
    );
    Ok((
        StatusCode::CREATED,
        Json(CardIssued {
            member: card.claims.member,
            token: card.token,
            expires_at: format_rfc3339(card.claims.expires_at),
        }),
    ))
}
