//! Loyalty member cards: the QR a shopper shows at self-checkout to get member prices.
//!
//! The hub signs a **member token** `AISLEM1.<claims>.<signature>` with the same Ed25519 key it
//! signs pickup tokens with (the changefeed's `pickup_key`, so every gateway already holds the
//! public half); the prefix is the signature's domain separator, so a pickup token can never pass
//! as a member card or the other way round. A lane verifies it offline.
//!
//! Member prices: the claims carry the member's discount in basis points (1/100 of a percent),
//! taken off each eligible line and rounded down to the minor unit in the shopper's favour of the
//! store (never more than the line).
use alloc::string::String;

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::UtcMillis;
use crate::token;

/// First part of every member token; also the signature's domain separator.
pub const MEMBER_PREFIX: &str = "AISLEM1";
/// Longest member token accepted.
pub const MAX_MEMBER_TOKEN_CHARS: usize = 512;
/// Longest member number, in characters.
pub const MAX_MEMBER_ID_CHARS: usize = 32;
/// Largest member discount: 50 %.
pub const MAX_DISCOUNT_BP: u16 = 5_000;

/// What a member card asserts, signed by the hub.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberClaims {
    /// The member number as printed on the card (1 to 32 of A-Z a-z 0-9 `-`).
    pub member: String,
    /// Discount on member-eligible lines, in basis points (500 = 5 %).
    pub discount_bp: u16,
    pub issued_at: UtcMillis,
    pub expires_at: UtcMillis,
    /// Which of the hub's keys signed it.
    pub key_id: u32,
}

/// Why a member card was refused. Messages are safe to show the shopper.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    #[error("this is not a member card")]
    NotACard,
    #[error("the member card is longer than {MAX_MEMBER_TOKEN_CHARS} characters")]
    TooLong,
    #[error("the member card is damaged ({0})")]
    Malformed(&'static str),
    #[error("the member card was signed with key {0}, which this store does not have")]
    UnknownKey(u32),
    #[error("the member card's signature is not valid")]
    BadSignature,
    #[error("the member card expired")]
    Expired,
    #[error("the member card's details are not valid ({0})")]
    Invalid(&'static str),
}

/// Whether `member` is a valid member number.
pub fn valid_member_id(member: &str) -> bool {
    !member.is_empty()
        && member.len() <= MAX_MEMBER_ID_CHARS
        && member
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl MemberClaims {
    /// Checks the claims' own fields.
    pub fn validate(&self) -> Result<(), MemberError> {
        if !valid_member_id(&self.member) {
            return Err(MemberError::Invalid("member number"));
        }
        if self.discount_bp > MAX_DISCOUNT_BP {
            return Err(MemberError::Invalid("discount above 50 %"));
        }
        if self.expires_at <= self.issued_at {
            return Err(MemberError::Invalid("expires before it was issued"));
        }
        Ok(())
    }

    /// The QR text for these claims, signed with `key`.
    pub fn sign(&self, key: &SigningKey) -> String {
        let mut buf = [0u8; 128];
        let claims: &[u8] = postcard::to_slice(self, &mut buf).map_or(&[], |c| &*c);
        token::seal(MEMBER_PREFIX, claims, key)
    }

    /// Checks a member QR's form, signature, fields and expiry at `now`; `key_for` gives the
    /// public key of a key id. Whitespace around the text (a scanner's suffix) is ignored.
    pub fn verify(
        text: &str,
        now: UtcMillis,
        key_for: impl Fn(u32) -> Option<VerifyingKey>,
    ) -> Result<MemberClaims, MemberError> {
        let (claims_bytes, signature) = token::open(MEMBER_PREFIX, text, MAX_MEMBER_TOKEN_CHARS)
            .map_err(|e| match e {
                token::Shape::NotOurs => MemberError::NotACard,
                token::Shape::TooLong => MemberError::TooLong,
                token::Shape::Malformed(why) => MemberError::Malformed(why),
            })?;
        let claims: MemberClaims = postcard::from_bytes(&claims_bytes)
            .map_err(|_| MemberError::Malformed("claims do not decode"))?;
        let key = key_for(claims.key_id).ok_or(MemberError::UnknownKey(claims.key_id))?;
        if !token::signed_by(MEMBER_PREFIX, &claims_bytes, &signature, &key) {
            return Err(MemberError::BadSignature);
        }
        claims.validate()?;
        if now >= claims.expires_at {
            return Err(MemberError::Expired);
        }
        Ok(claims)
    }

    /// The member discount on a line costing `gross` minor units: rounded down, never more than
    /// the line, never negative.
    pub fn discount_on(&self, gross: i64) -> i64 {
        if gross <= 0 {
            return 0;
        }
        let d = i128::from(gross) * i128::from(self.discount_bp) / 10_000;
        i64::try_from(d).unwrap_or(0).clamp(0, gross)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pickup::PickupClaims;
    use crate::{OrderId, StoreId};
    use alloc::format;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn claims() -> MemberClaims {
        MemberClaims {
            member: "M-1001".into(),
            discount_bp: 500,
            issued_at: UtcMillis(1_000),
            expires_at: UtcMillis(10_000),
            key_id: 1,
        }
    }

    fn keys(id: u32) -> Option<VerifyingKey> {
        (id == 1).then(|| key().verifying_key())
    }

    #[test]
    fn signed_card_verifies_and_gives_its_discount() {
        let qr = claims().sign(&key());
        assert!(qr.starts_with("AISLEM1."));
        let got = MemberClaims::verify(&format!("{qr}\r\n"), UtcMillis(2_000), keys).unwrap();
        assert_eq!(got, claims());
        assert_eq!(got.discount_on(1999), 99); // 5 % of 19.99 is 0.9995, rounded down
        assert_eq!(got.discount_on(0), 0);
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let qr = claims().sign(&key());
        assert_eq!(
            MemberClaims::verify(&qr, UtcMillis(10_000), keys),
            Err(MemberError::Expired)
        );
        let other = SigningKey::from_bytes(&[9u8; 32]);
        assert_eq!(
            MemberClaims::verify(&claims().sign(&other), UtcMillis(2_000), keys),
            Err(MemberError::BadSignature)
        );
        let mut c = claims();
        c.key_id = 4;
        assert_eq!(
            MemberClaims::verify(&c.sign(&key()), UtcMillis(2_000), keys),
            Err(MemberError::UnknownKey(4))
        );
        let mut c = claims();
        c.discount_bp = 9_000;
        assert_eq!(
            MemberClaims::verify(&c.sign(&key()), UtcMillis(2_000), keys),
            Err(MemberError::Invalid("discount above 50 %"))
        );
        assert_eq!(
            MemberClaims::verify("hello", UtcMillis(0), keys),
            Err(MemberError::NotACard)
        );
        assert_eq!(
            MemberClaims::verify(&"A".repeat(600), UtcMillis(0), keys),
            Err(MemberError::TooLong)
        );
        // A flipped character in the claims breaks the signature (or the decoding).
        let mut bytes = qr.into_bytes();
        bytes[10] = if bytes[10] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(MemberClaims::verify(&tampered, UtcMillis(2_000), keys).is_err());
    }

    #[test]
    fn a_pickup_token_is_not_a_member_card() {
        let pickup = PickupClaims {
            order: OrderId::parse("O-1").unwrap(),
            store: StoreId::parse("S1").unwrap(),
            issued_at: UtcMillis(1_000),
            expires_at: UtcMillis(10_000),
            key_id: 1,
        }
        .sign(&key());
        assert_eq!(
            MemberClaims::verify(&pickup, UtcMillis(2_000), keys),
            Err(MemberError::NotACard)
        );
        // and with the prefix swapped, the domain-separated signature fails
        let swapped = pickup.replacen("AISLE1", MEMBER_PREFIX, 1);
        assert!(MemberClaims::verify(&swapped, UtcMillis(2_000), keys).is_err());
    }
}
