//! Loyalty member cards for self-checkout lanes: the hub signs `AISLEM1` tokens
//! ([`aisle_protocol::member`]) with its pickup signing key, whose public half every store's
//! changefeed already carries (`pickup_key`), so a lane verifies a card offline.
//!
//! Issued by HQ's loyalty system (`POST /v1/members/{member}/card`) or on the hub's host
//! (`aisle-hub member card`); both go through [`issue`], which writes `member_card_issued` to
//! the audit log (the member number and discount, never the token) before the token is handed out.
use std::fmt;

use aisle_protocol::UtcMillis;
use aisle_protocol::member::{MAX_DISCOUNT_BP, MAX_MEMBER_ID_CHARS, MemberClaims, valid_member_id};

use crate::security::{Actor, AuditInput, action};
use crate::storage::{HubStorage, StorageError};

/// How long a card is valid when the request does not say.
pub const DEFAULT_CARD_DAYS: i64 = 365;
/// Longest validity of a card: ten years.
pub const MAX_CARD_DAYS: i64 = 3_650;
const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// A checked request for a member card.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardRequest {
    pub member: String,
    pub discount_bp: u16,
    pub days: i64,
}

impl CardRequest {
    /// Checks the member number (1 to 32 of A-Z a-z 0-9 `-`), the discount (0 to 5000 basis
    /// points, at most 50 %) and the validity (1 to 3650 days); the refusal says which and why.
    pub fn new(member: &str, discount_bp: i64, days: i64) -> Result<Self, String> {
        if !valid_member_id(member) {
            let shown: String = member.chars().take(MAX_MEMBER_ID_CHARS + 8).collect();
            return Err(format!(
                "the member number must be 1 to {MAX_MEMBER_ID_CHARS} of A-Z a-z 0-9 and '-', got '{}'",
                shown.escape_debug()
            ));
        }
        let discount_bp = u16::try_from(discount_bp)
            .ok()
            .filter(|bp| *bp <= MAX_DISCOUNT_BP)
            .ok_or_else(|| {
                format!(
                    "the discount must be 0 to {MAX_DISCOUNT_BP} basis points (at most 50 %), got {discount_bp}"
                )
            })?;
        if !(1..=MAX_CARD_DAYS).contains(&days) {
            return Err(format!(
                "a card is valid for 1 to {MAX_CARD_DAYS} days, got {days}"
            ));
        }
        Ok(CardRequest {
            member: member.to_owned(),
            discount_bp,
            days,
        })
    }

    /// The claims of a card issued at `now` and signed with key `key_id`.
    pub fn claims(&self, key_id: u32, now: UtcMillis) -> MemberClaims {
        MemberClaims {
            member: self.member.clone(),
            discount_bp: self.discount_bp,
            issued_at: now,
            expires_at: now.saturating_add_ms(self.days.saturating_mul(DAY_MS)),
            key_id,
        }
    }
}

/// A signed card. The token is a bearer secret (whoever shows it gets the member's prices), so
/// `Debug` leaves it out.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCard {
    pub claims: MemberClaims,
    /// The QR text `AISLEM1.<claims>.<signature>`.
    pub token: String,
}

impl fmt::Debug for IssuedCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCard")
            .field("claims", &self.claims)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Signs a card at `now` with the hub's pickup signing key (generated and sent to every store
/// on first use) and audits it as `actor`'s; the token is returned only once the audit entry
/// is written.
pub async fn issue(
    storage: &dyn HubStorage,
    request: &CardRequest,
    actor: &Actor,
    now: UtcMillis,
) -> Result<IssuedCard, StorageError> {
    let key = storage.pickup_signing_key(now).await?;
    let claims = request.claims(key.key_id(), now);
    claims
        .validate()
        .map_err(|e| StorageError::InvalidInput(e.to_string()))?;
    let token = claims.sign(&key.signing_key());
    storage
        .append_audit(&AuditInput::new(
            actor,
            action::MEMBER_CARD_ISSUED,
            claims.member.as_str(),
            serde_json::json!({
                "discount_bp": claims.discount_bp,
                "issued_at": claims.issued_at.0,
                "expires_at": claims.expires_at.0,
                "key_id": claims.key_id,
            }),
        ))
        .await?;
    Ok(IssuedCard { claims, token })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_are_checked_and_refusals_say_why() {
        let ok = CardRequest::new("M-1001", 500, 365).unwrap();
        let c = ok.claims(1, UtcMillis(1_000));
        assert_eq!(c.expires_at, UtcMillis(1_000 + 365 * DAY_MS));
        assert_eq!(
            (c.member.as_str(), c.discount_bp, c.key_id),
            ("M-1001", 500, 1)
        );
        assert!(CardRequest::new("M-1", 0, 1).is_ok());
        assert!(CardRequest::new("M-1", 5_000, MAX_CARD_DAYS).is_ok());

        let e = CardRequest::new("M 1001", 500, 365).unwrap_err();
        assert!(e.contains("member number") && e.contains("'M 1001'"), "{e}");
        assert!(CardRequest::new("", 500, 365).is_err());
        assert!(CardRequest::new(&"M".repeat(33), 500, 365).is_err());
        let e = CardRequest::new("M-1", 5_001, 365).unwrap_err();
        assert!(e.contains("at most 50 %") && e.contains("5001"), "{e}");
        assert!(CardRequest::new("M-1", -1, 365).is_err());
        assert!(CardRequest::new("M-1", 70_000, 365).is_err());
        let e = CardRequest::new("M-1", 500, 0).unwrap_err();
        assert_eq!(e, "a card is valid for 1 to 3650 days, got 0");
        assert!(CardRequest::new("M-1", 500, 3_651).is_err());
    }

    #[test]
    fn debug_leaves_the_token_out() {
        let card = IssuedCard {
            claims: CardRequest::new("M-1", 1, 1)
                .unwrap()
                .claims(1, UtcMillis(0)),
            token: "AISLEM1.secret.sig".into(),
        };
        assert!(!format!("{card:?}").contains("secret"));
    }
}
