//! Click-and-collect pickup tokens: what the shopper shows at the counter.
//!
//! The hub issues two things per order:
//!
//! * A **QR token** `AISLE1.<claims>.<signature>`: the claims (order, store, issue and expiry time,
//!   key id) in postcard, and an Ed25519 signature over `AISLE1.` followed by those claim bytes,
//!   both base64url without padding. Any gateway holding the hub's pickup public key (sent once in
//!   the changefeed) verifies it without the hub. Bounded: at most [`MAX_TOKEN_CHARS`].
//! * A **fallback code** of 8 Crockford base32 characters (40 random bits), shown `XXXX-XXXX`,
//!   for typing when the QR cannot be scanned. Parsing is forgiving (case, `O`/`I`/`L`, dashes,
//!   spaces). The store never holds the code itself, only [`code_digest`] of it, so the ledger
//!   and its backups do not give codes away; guessing is stopped by rate limits at the store.
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::token;
use crate::{EventId, Gtin, OrderId, StoreId, UtcMillis};

/// First part of every QR token; also the signature's domain separator.
pub const TOKEN_PREFIX: &str = "AISLE1";
/// Longest QR token accepted; real ones are about 200 characters.
pub const MAX_TOKEN_CHARS: usize = 512;
/// Characters in a fallback code.
pub const CODE_CHARS: usize = 8;
/// Crockford's base32 alphabet: no I, L, O or U, so codes survive being read aloud and typed.
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// What a QR token asserts, signed by the hub.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PickupClaims {
    pub order: OrderId,
    pub store: StoreId,
    pub issued_at: UtcMillis,
    pub expires_at: UtcMillis,
    /// Which of the hub's pickup keys signed it.
    pub key_id: u32,
}

/// Why a QR token was refused. Messages are safe to show staff.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("this is not a pickup code")]
    NotAToken,
    #[error("the pickup code is longer than {MAX_TOKEN_CHARS} characters")]
    TooLong,
    #[error("the pickup code is damaged ({0})")]
    Malformed(&'static str),
    #[error("the pickup code was signed with key {0}, which this store does not have")]
    UnknownKey(u32),
    #[error("the pickup code's signature is not valid: forged or altered")]
    BadSignature,
}

/// Why valid claims do not allow a pickup here and now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimsRefusal {
    #[error("this order is for store {0}, not this one")]
    WrongStore(StoreId),
    #[error("this pickup code expired")]
    Expired { expires_at: UtcMillis },
}

impl PickupClaims {
    /// The QR text for these claims, signed with `key`.
    pub fn sign(&self, key: &SigningKey) -> String {
        // Ids are at most 64 bytes each, so the claims always fit.
        let mut buf = [0u8; 256];
        let claims: &[u8] = postcard::to_slice(self, &mut buf).map_or(&[], |c| &*c);
        token::seal(TOKEN_PREFIX, claims, key)
    }

    /// Checks a QR token's form and signature; `key_for` gives the public key of a key id.
    /// Whitespace around the text (a scanner's suffix) is ignored.
    pub fn verify(
        text: &str,
        key_for: impl Fn(u32) -> Option<VerifyingKey>,
    ) -> Result<PickupClaims, TokenError> {
        let (claims_bytes, signature) =
            token::open(TOKEN_PREFIX, text, MAX_TOKEN_CHARS).map_err(|e| match e {
                token::Shape::NotOurs => TokenError::NotAToken,
                token::Shape::TooLong => TokenError::TooLong,
                token::Shape::Malformed(why) => TokenError::Malformed(why),
            })?;
        let claims: PickupClaims = postcard::from_bytes(&claims_bytes)
            .map_err(|_| TokenError::Malformed("claims do not decode"))?;
        let key = key_for(claims.key_id).ok_or(TokenError::UnknownKey(claims.key_id))?;
        if !token::signed_by(TOKEN_PREFIX, &claims_bytes, &signature, &key) {
            return Err(TokenError::BadSignature);
        }
        Ok(claims)
    }

    /// Whether these (verified) claims allow a pickup at `store` at `now`.
    pub fn check(&self, store: &StoreId, now: UtcMillis) -> Result<(), ClaimsRefusal> {
        if &self.store != store {
            return Err(ClaimsRefusal::WrongStore(self.store.clone()));
        }
        if now >= self.expires_at {
            return Err(ClaimsRefusal::Expired {
                expires_at: self.expires_at,
            });
        }
        Ok(())
    }
}

/// A short code for typing: 8 Crockford base32 characters, shown `XXXX-XXXX`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct FallbackCode([u8; CODE_CHARS]);

/// Why typed text is not a fallback code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("a pickup code has {CODE_CHARS} letters and digits; got {0}")]
    Length(usize),
    #[error("`{0}` cannot appear in a pickup code")]
    Character(char),
}

impl FallbackCode {
    /// The code for 40 random bits (the caller supplies them from a CSPRNG).
    pub fn from_bits(bits: [u8; 5]) -> FallbackCode {
        let mut n = bits.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        let mut out = [0u8; CODE_CHARS];
        for slot in out.iter_mut().rev() {
            *slot = CROCKFORD[(n & 31) as usize];
            n >>= 5;
        }
        FallbackCode(out)
    }

    /// Reads a typed code: case-insensitive, `O` as 0, `I`/`L` as 1, dashes and spaces ignored.
    pub fn parse(input: &str) -> Result<FallbackCode, CodeError> {
        let mut out = [0u8; CODE_CHARS];
        let mut n = 0usize;
        for c in input.trim().chars() {
            if c == '-' || c == ' ' {
                continue;
            }
            let c = match c.to_ascii_uppercase() {
                'O' => '0',
                'I' | 'L' => '1',
                other => other,
            };
            if !c.is_ascii() || !CROCKFORD.contains(&(c as u8)) {
                return Err(CodeError::Character(c));
            }
            if n < CODE_CHARS {
                out[n] = c as u8;
            }
            n += 1;
            if n > 64 {
                break;
            }
        }
        if n != CODE_CHARS {
            return Err(CodeError::Length(n));
        }
        Ok(FallbackCode(out))
    }

    /// The 8 characters without the dash.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Display for FallbackCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.as_str();
        write!(f, "{}-{}", &s[..4], &s[4..])
    }
}

/// Debug never shows the code: it is a secret until it is used.
impl fmt::Debug for FallbackCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FallbackCode(<redacted>)")
    }
}

/// What the store holds instead of the code: hex SHA-256 of `aisle-pickup-code:<store>:<code>`.
pub fn code_digest(store: &StoreId, code: &FallbackCode) -> String {
    let mut h = Sha256::new();
    h.update(b"aisle-pickup-code:");
    h.update(store.as_str().as_bytes());
    h.update(b":");
    h.update(code.as_str().as_bytes());
    let digest = h.finalize();
    let mut out = String::with_capacity(64);
    for b in digest {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

/// Most lines in one pickup order.
pub const MAX_ORDER_LINES: usize = 100;
/// Longest pickup-area location, staff name or device name.
pub const MAX_LABEL_CHARS: usize = 64;

/// One line of a pickup order, as the store's pick list shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PickupOrderLine {
    pub gtin: Gtin,
    pub qty: u32,
    /// The product's name at the hub when the order was placed (may be empty).
    #[serde(default)]
    pub name: String,
}

/// An order the hub sends its assigned store (changefeed `pickup_order`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PickupOrder {
    pub order_id: OrderId,
    pub lines: Vec<PickupOrderLine>,
    pub placed_at: UtcMillis,
    /// When the shopper said they would come.
    pub pickup_by: UtcMillis,
    /// After this the token is refused and the order expires.
    pub expires_at: UtcMillis,
    /// [`code_digest`] of the fallback code.
    pub code_digest: String,
    /// The key that signed the order's QR token.
    pub key_id: u32,
}

/// HQ cancelled an order (changefeed `pickup_cancelled`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PickupCancellation {
    pub order_id: OrderId,
    /// Names this cancellation in the store's answer (applied or in conflict).
    pub cancel_id: EventId,
    pub at: UtcMillis,
}

/// The hub's public key for verifying QR tokens (changefeed `pickup_key`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PickupKey {
    pub key_id: u32,
    /// Ed25519 public key, 64 lowercase hex digits.
    pub public_key: String,
}

impl PickupKey {
    /// The verifying key, if `public_key` is a valid one.
    pub fn verifying_key(&self) -> Option<VerifyingKey> {
        let bytes = self.public_key.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut raw = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            raw[i] = u8::try_from(hi * 16 + lo).ok()?;
        }
        VerifyingKey::from_bytes(&raw).ok()
    }

    /// The record for `key`.
    pub fn of(key_id: u32, key: &VerifyingKey) -> PickupKey {
        let mut public_key = String::with_capacity(64);
        for b in key.to_bytes() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            public_key.push(HEX[usize::from(b >> 4)] as char);
            public_key.push(HEX[usize::from(b & 15)] as char);
        }
        PickupKey { key_id, public_key }
    }
}

/// How a shopper proved the order was theirs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedeemMethod {
    Qr,
    Code,
}

/// Why a pickup record is out of bounds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PickupRecordError {
    #[error("an order has 1 to {MAX_ORDER_LINES} lines, each with a quantity of 1 to 9999")]
    Lines,
    #[error("`{0}` must be 1 to {MAX_LABEL_CHARS} characters")]
    Label(&'static str),
    #[error("code digest must be 64 lowercase hex digits")]
    Digest,
    #[error("times are out of order: placed <= pickup_by <= expires_at")]
    Times,
    #[error("the public key is not a valid Ed25519 key")]
    Key,
}

/// Checks a short free-text field (location, staff, device).
pub fn check_label(field: &'static str, value: &str) -> Result<(), PickupRecordError> {
    let n = value.chars().count();
    if n == 0 || n > MAX_LABEL_CHARS || value.chars().any(char::is_control) {
        return Err(PickupRecordError::Label(field));
    }
    Ok(())
}

impl PickupOrder {
    pub fn validate(&self) -> Result<(), PickupRecordError> {
        if self.lines.is_empty()
            || self.lines.len() > MAX_ORDER_LINES
            || self.lines.iter().any(|l| {
                l.qty == 0
                    || l.qty > crate::sync::MAX_LINE_QTY
                    || l.name.chars().count() > crate::sync::MAX_NAME_CHARS
            })
        {
            return Err(PickupRecordError::Lines);
        }
        if self.code_digest.len() != 64
            || !self
                .code_digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(PickupRecordError::Digest);
        }
        if !(self.placed_at <= self.pickup_by && self.pickup_by <= self.expires_at) {
            return Err(PickupRecordError::Times);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::ToString;
    use proptest::prelude::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn claims() -> PickupClaims {
        PickupClaims {
            order: OrderId::parse("web-10042").unwrap(),
            store: StoreId::parse("s-001").unwrap(),
            issued_at: UtcMillis(1_795_305_600_000),
            expires_at: UtcMillis(1_795_910_400_000),
            key_id: 1,
        }
    }

    fn keys(id: u32) -> Option<VerifyingKey> {
        (id == 1).then(|| key().verifying_key())
    }

    #[test]
    fn token_round_trips_and_checks_store_and_expiry() {
        let text = claims().sign(&key());
        assert!(text.starts_with("AISLE1."), "{text}");
        assert!(text.len() < 200, "QR-friendly: {} chars", text.len());
        let got = PickupClaims::verify(&format!(" {text}\r\n"), keys).unwrap();
        assert_eq!(got, claims());
        let here = StoreId::parse("s-001").unwrap();
        assert_eq!(got.check(&here, UtcMillis(1_795_305_600_001)), Ok(()));
        assert_eq!(
            got.check(&here, got.expires_at),
            Err(ClaimsRefusal::Expired {
                expires_at: got.expires_at
            })
        );
        let there = StoreId::parse("s-002").unwrap();
        assert_eq!(
            got.check(&there, got.issued_at),
            Err(ClaimsRefusal::WrongStore(here))
        );
    }

    #[test]
    fn forged_altered_and_foreign_tokens_are_refused() {
        let text = claims().sign(&key());
        let forged = claims().sign(&SigningKey::from_bytes(&[8u8; 32]));
        assert_eq!(
            PickupClaims::verify(&forged, keys),
            Err(TokenError::BadSignature)
        );

        // Claims for another store, spliced onto the original signature.
        let mut other = claims();
        other.store = StoreId::parse("s-002").unwrap();
        let other_text = other.sign(&key());
        let (_, sig) = text.rsplit_once('.').unwrap();
        let (head, _) = other_text.rsplit_once('.').unwrap();
        assert_eq!(
            PickupClaims::verify(&format!("{head}.{sig}"), keys),
            Err(TokenError::BadSignature)
        );

        let mut unknown = claims();
        unknown.key_id = 9;
        assert_eq!(
            PickupClaims::verify(&unknown.sign(&key()), keys),
            Err(TokenError::UnknownKey(9))
        );
        assert_eq!(
            PickupClaims::verify("ABCD-1234", keys),
            Err(TokenError::NotAToken)
        );
        assert_eq!(
            PickupClaims::verify("AISLE1.abc", keys),
            Err(TokenError::Malformed("expected three parts"))
        );
        let long = "A".repeat(MAX_TOKEN_CHARS + 1);
        assert_eq!(PickupClaims::verify(&long, keys), Err(TokenError::TooLong));
    }

    #[test]
    fn fallback_codes_are_forgiving_to_type_and_never_logged() {
        let code = FallbackCode::from_bits([0xde, 0xad, 0xbe, 0xef, 0x01]);
        assert_eq!(code.as_str().len(), CODE_CHARS);
        let shown = code.to_string();
        assert_eq!(shown.len(), 9);
        assert_eq!(FallbackCode::parse(&shown).unwrap(), code);
        assert_eq!(
            FallbackCode::parse(&shown.to_lowercase().replace('-', " ")).unwrap(),
            code
        );
        assert_eq!(
            FallbackCode::parse("0O1I-L000").unwrap().as_str(),
            "00111000"
        );
        assert_eq!(FallbackCode::parse("ABC"), Err(CodeError::Length(3)));
        assert_eq!(
            FallbackCode::parse("ABCD-EFGU"),
            Err(CodeError::Character('U'))
        );
        assert_eq!(format!("{code:?}"), "FallbackCode(<redacted>)");
        let store = StoreId::parse("s-001").unwrap();
        let d = code_digest(&store, &code);
        assert_eq!(d.len(), 64);
        assert_ne!(d, code_digest(&StoreId::parse("s-002").unwrap(), &code));
    }

    proptest! {
        #[test]
        fn any_text_is_refused_or_verified_without_panic(s in ".{0,600}") {
            let _ = PickupClaims::verify(&s, keys);
            let _ = FallbackCode::parse(&s);
        }

        #[test]
        fn any_flipped_character_breaks_the_token(pos in 7usize..150, c in "[A-Za-z0-9_-]") {
            let text = claims().sign(&key());
            let pos = pos.min(text.len() - 1);
            let mut altered = text.clone();
            altered.replace_range(pos..=pos, &c);
            if altered != text {
                prop_assert!(PickupClaims::verify(&altered, keys).is_err());
            }
        }

        #[test]
        fn every_40_bit_value_gives_a_distinct_parseable_code(bits in any::<[u8; 5]>()) {
            let code = FallbackCode::from_bits(bits);
            prop_assert_eq!(FallbackCode::parse(&code.to_string()).unwrap(), code);
        }
    }
}
