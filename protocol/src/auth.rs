//! Gateway identity on the wire: enrolment and signed sync requests.
//!
//! **Enrolment.** HQ issues a one-time code of [`ENROLMENT_CODE_CHARS`] Crockford base32
//! characters (60 random bits), shown `XXXX-XXXX-XXXX`. The gateway makes its own Ed25519 key
//! pair and posts [`EnrolRequest`] to [`ENROL_PATH`]; the hub binds the public key to the code's
//! store and answers [`EnrolResponse`] (with the SHA-256 of the hub's TLS certificate, which the
//! gateway pins). Parsing a code is forgiving (case, `O`/`I`/`L`, dashes, spaces).
//!
//! **Signed requests.** An enrolled gateway signs every sync request with its key: the
//! [`signed_message`] binds the method, the path with its query, the timestamp, a fresh nonce
//! and the SHA-256 of the exact body bytes. The four [`GATEWAY_HEADER`], [`TIMESTAMP_HEADER`],
//! [`NONCE_HEADER`] and [`SIGNATURE_HEADER`] carry them; the signature is base64url without
//! padding. The hub accepts a timestamp within [`MAX_CLOCK_SKEW_MS`] of its own clock and each
//! nonce once within that window, so a captured request cannot be replayed.
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{GatewayId, StoreId, UtcMillis};

/// Where a gateway enrols (no bearer: the code is the credential).
pub const ENROL_PATH: &str = "/v1/enrol";
/// The enrolled gateway's id.
pub const GATEWAY_HEADER: &str = "x-aisle-gateway";
/// The request's time, Unix milliseconds as decimal digits.
pub const TIMESTAMP_HEADER: &str = "x-aisle-timestamp";
/// A fresh random value per request ([`MIN_NONCE_CHARS`] to [`MAX_NONCE_CHARS`] of
/// `A-Z a-z 0-9 - _`).
pub const NONCE_HEADER: &str = "x-aisle-nonce";
/// Ed25519 over [`signed_message`], base64url without padding.
pub const SIGNATURE_HEADER: &str = "x-aisle-signature";
/// How far a request's timestamp may be from the hub's clock, either way.
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;
/// Shortest nonce accepted (16 base64url characters = 96 bits).
pub const MIN_NONCE_CHARS: usize = 16;
/// Longest nonce accepted.
pub const MAX_NONCE_CHARS: usize = 64;
/// Longest path with query that can be signed.
pub const MAX_SIGNED_PATH_CHARS: usize = 4096;
/// First line of every signed message: the domain separator and its version.
pub const SIGNATURE_DOMAIN: &str = "AISLE-REQ1";
/// Characters in an enrolment code (without dashes): 12 x 5 = 60 random bits.
pub const ENROLMENT_CODE_CHARS: usize = 12;
/// Longest gateway name given at enrolment, in characters.
pub const MAX_GATEWAY_NAME_CHARS: usize = 100;

/// Error codes (`ErrorBody::error`) specific to authentication and enrolment.
pub mod error_code {
    /// A signed request whose nonce the hub has already seen.
    pub const REPLAYED: &str = "replayed";
    /// A signed request whose timestamp is too far from the hub's clock.
    pub const CLOCK_SKEW: &str = "clock_skew";
    /// Too many refused attempts from this address; wait.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// The enrolment code was used already or has expired.
    pub const ENROLMENT_CODE_GONE: &str = "enrolment_code_gone";
}

/// Crockford's base32 alphabet (no I, L, O, U).
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Why a signature, header or key was refused. Messages are safe to log and show.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("{0} is missing or malformed")]
    BadHeader(&'static str),
    #[error("the request method is not a plain HTTP method")]
    BadMethod,
    #[error(
        "the request path must start with '/', be at most {MAX_SIGNED_PATH_CHARS} characters and hold no control characters"
    )]
    BadPath,
    #[error(
        "the nonce must be {MIN_NONCE_CHARS} to {MAX_NONCE_CHARS} characters of A-Z a-z 0-9 - _"
    )]
    BadNonce,
    #[error(
        "the request's clock is off by {skew_ms} ms from the hub's (at most {MAX_CLOCK_SKEW_MS} ms either way); set the gateway's clock (NTP) and retry"
    )]
    ClockSkew { skew_ms: i64 },
    #[error("the signature is not valid for this request")]
    BadSignature,
    #[error("the public key must be 64 hex digits of a valid Ed25519 key")]
    BadPublicKey,
    #[error(
        "an enrolment code is {ENROLMENT_CODE_CHARS} characters of 0-9 and A-Z (dashes optional), like ABCD-EFGH-JKMN"
    )]
    BadCode,
}

/// SHA-256 of a request body: what the signature covers of it.
pub fn body_digest(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

fn check_method(method: &str) -> Result<(), AuthError> {
    let ok =
        !method.is_empty() && method.len() <= 16 && method.bytes().all(|b| b.is_ascii_uppercase());
    if ok {
        Ok(())
    } else {
        Err(AuthError::BadMethod)
    }
}

fn check_path(path_and_query: &str) -> Result<(), AuthError> {
    let ok = path_and_query.starts_with('/')
        && path_and_query.len() <= MAX_SIGNED_PATH_CHARS
        && !path_and_query.chars().any(char::is_control);
    if ok { Ok(()) } else { Err(AuthError::BadPath) }
}

/// Checks a nonce's form.
pub fn check_nonce(nonce: &str) -> Result<(), AuthError> {
    let ok = (MIN_NONCE_CHARS..=MAX_NONCE_CHARS).contains(&nonce.len())
        && nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(AuthError::BadNonce) }
}

/// The exact bytes a gateway signs:
///
/// ```text
/// AISLE-REQ1\n<METHOD>\n<path?query>\n<timestamp ms>\n<nonce>\n<hex sha256(body)>
/// ```
///
/// The method is upper case, the path with its query exactly as sent on the request line.
pub fn signed_message(
    method: &str,
    path_and_query: &str,
    timestamp_ms: i64,
    nonce: &str,
    body_sha256: &[u8; 32],
) -> Result<Vec<u8>, AuthError> {
    check_method(method)?;
    check_path(path_and_query)?;
    check_nonce(nonce)?;
    let mut out = String::with_capacity(SIGNATURE_DOMAIN.len() + path_and_query.len() + 128);
    out.push_str(SIGNATURE_DOMAIN);
    out.push('\n');
    out.push_str(method);
    out.push('\n');
    out.push_str(path_and_query);
    out.push('\n');
    push_decimal(&mut out, timestamp_ms);
    out.push('\n');
    out.push_str(nonce);
    out.push('\n');
    for b in body_sha256 {
        push_hex(&mut out, *b);
    }
    Ok(out.into_bytes())
}

fn push_hex(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0x0f)]));
}

fn push_decimal(out: &mut String, v: i64) {
    use core::fmt::Write;
    // Writing to a String cannot fail.
    let _ = write!(out, "{v}");
}

/// The four headers of a signed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHeaders {
    pub gateway: String,
    pub timestamp: String,
    pub nonce: String,
    pub signature: String,
}

impl SignedHeaders {
    /// `(header name, value)` pairs, ready to add to a request.
    pub fn pairs(&self) -> [(&'static str, &str); 4] {
        [
            (GATEWAY_HEADER, self.gateway.as_str()),
            (TIMESTAMP_HEADER, self.timestamp.as_str()),
            (NONCE_HEADER, self.nonce.as_str()),
            (SIGNATURE_HEADER, self.signature.as_str()),
        ]
    }
}

/// Signs a request: what a gateway sends. `nonce` must be fresh random per request.
pub fn sign_request(
    key: &SigningKey,
    gateway: &GatewayId,
    method: &str,
    path_and_query: &str,
    timestamp: UtcMillis,
    nonce: &str,
    body: &[u8],
) -> Result<SignedHeaders, AuthError> {
    let message = signed_message(
        method,
        path_and_query,
        timestamp.0,
        nonce,
        &body_digest(body),
    )?;
    let signature = key.sign(&message);
    let mut timestamp_text = String::new();
    push_decimal(&mut timestamp_text, timestamp.0);
    Ok(SignedHeaders {
        gateway: String::from(gateway.as_str()),
        timestamp: timestamp_text,
        nonce: String::from(nonce),
        signature: URL_SAFE_NO_PAD.encode(signature.to_bytes()),
    })
}

/// Parses the timestamp header: decimal Unix milliseconds.
pub fn parse_timestamp(text: &str) -> Result<UtcMillis, AuthError> {
    let ok = !text.is_empty() && text.len() <= 16 && text.bytes().all(|b| b.is_ascii_digit());
    if !ok {
        return Err(AuthError::BadHeader(TIMESTAMP_HEADER));
    }
    text.parse::<i64>()
        .map(UtcMillis)
        .map_err(|_| AuthError::BadHeader(TIMESTAMP_HEADER))
}

/// Whether `timestamp` is within [`MAX_CLOCK_SKEW_MS`] of `now`.
pub fn check_clock(timestamp: UtcMillis, now: UtcMillis) -> Result<(), AuthError> {
    let skew_ms = timestamp.0.saturating_sub(now.0);
    if skew_ms.saturating_abs() > MAX_CLOCK_SKEW_MS {
        return Err(AuthError::ClockSkew { skew_ms });
    }
    Ok(())
}

/// Checks a request's signature (not its clock or nonce: see [`check_clock`]; nonces are the
/// verifier's memory).
pub fn verify_request(
    key: &VerifyingKey,
    method: &str,
    path_and_query: &str,
    timestamp: UtcMillis,
    nonce: &str,
    signature_b64: &str,
    body: &[u8],
) -> Result<(), AuthError> {
    if signature_b64.len() > 128 {
        return Err(AuthError::BadHeader(SIGNATURE_HEADER));
    }
    let sig: [u8; 64] = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| AuthError::BadHeader(SIGNATURE_HEADER))?
        .try_into()
        .map_err(|_| AuthError::BadHeader(SIGNATURE_HEADER))?;
    let message = signed_message(
        method,
        path_and_query,
        timestamp.0,
        nonce,
        &body_digest(body),
    )?;
    key.verify(&message, &Signature::from_bytes(&sig))
        .map_err(|_| AuthError::BadSignature)
}

/// Parses an Ed25519 public key given as 64 hex digits (either case).
pub fn parse_public_key_hex(text: &str) -> Result<VerifyingKey, AuthError> {
    let text = text.trim();
    if text.len() != 64 {
        return Err(AuthError::BadPublicKey);
    }
    let mut bytes = [0u8; 32];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let hi = hex_value(pair[0]).ok_or(AuthError::BadPublicKey)?;
        let lo = hex_value(pair[1]).ok_or(AuthError::BadPublicKey)?;
        bytes[i] = (hi << 4) | lo;
    }
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| AuthError::BadPublicKey)?;
    // A weak (small-order) key would let anyone forge signatures.
    if key.is_weak() {
        return Err(AuthError::BadPublicKey);
    }
    Ok(key)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A public key as 64 lowercase hex digits (how it travels and is stored).
pub fn public_key_hex(key: &VerifyingKey) -> String {
    let mut out = String::with_capacity(64);
    for b in key.as_bytes() {
        push_hex(&mut out, *b);
    }
    out
}

/// A one-time enrolment code: 12 Crockford base32 characters.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrolmentCode([u8; ENROLMENT_CODE_CHARS]);

impl EnrolmentCode {
    /// A code from 60 bits of `random` (the low 60 bits of the 8 bytes are used).
    pub fn from_random(random: [u8; 8]) -> Self {
        let mut bits = u64::from_be_bytes(random);
        let mut out = [0u8; ENROLMENT_CODE_CHARS];
        for c in out.iter_mut().rev() {
            *c = CROCKFORD[(bits & 0x1f) as usize];
            bits >>= 5;
        }
        EnrolmentCode(out)
    }

    /// Forgiving parse: case, dashes and spaces ignored, `O` read as 0, `I`/`L` as 1.
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        if text.len() > 64 {
            return Err(AuthError::BadCode);
        }
        let mut out = [0u8; ENROLMENT_CODE_CHARS];
        let mut n = 0;
        for c in text.bytes() {
            let c = match c.to_ascii_uppercase() {
                b'-' | b' ' => continue,
                b'O' => b'0',
                b'I' | b'L' => b'1',
                c if CROCKFORD.contains(&c) => c,
                _ => return Err(AuthError::BadCode),
            };
            let slot = out.get_mut(n).ok_or(AuthError::BadCode)?;
            *slot = c;
            n += 1;
        }
        if n != ENROLMENT_CODE_CHARS {
            return Err(AuthError::BadCode);
        }
        Ok(EnrolmentCode(out))
    }

    /// The canonical 12 characters without dashes (what is hashed).
    pub fn canonical(&self) -> &str {
        // Only alphabet bytes are ever stored.
        core::str::from_utf8(&self.0).unwrap_or("")
    }

    /// SHA-256 of the canonical form: what the hub stores instead of the code.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.0).into()
    }

    /// `XXXX-XXXX-XXXX`, for people.
    pub fn display(&self) -> String {
        let mut out = String::with_capacity(ENROLMENT_CODE_CHARS + 2);
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 && i % 4 == 0 {
                out.push('-');
            }
            out.push(char::from(*c));
        }
        out
    }
}

impl fmt::Debug for EnrolmentCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnrolmentCode(<redacted>)")
    }
}

/// `POST /v1/enrol`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// The one-time code, as typed.
    pub code: String,
    /// The gateway's Ed25519 public key, 64 hex digits.
    pub public_key: String,
    /// A name for people (e.g. "back office Pi").
    pub name: String,
}

/// The answer to a successful enrolment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolResponse {
    pub gateway_id: GatewayId,
    pub store: StoreId,
    /// SHA-256 of the hub's TLS certificate (DER), 64 lowercase hex digits, to pin; `None` when
    /// the hub serves plain HTTP.
    pub hub_tls_fingerprint: Option<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn gw() -> GatewayId {
        GatewayId::parse("gw-S001-00000001").unwrap()
    }

    const NONCE: &str = "n0nce-0123456789abcdef";

    #[test]
    fn message_layout_is_fixed() {
        let m = signed_message(
            "POST",
            "/v1/sync/events?x=1",
            1_700_000_000_123,
            NONCE,
            &body_digest(b"{}"),
        )
        .unwrap();
        let text = core::str::from_utf8(&m).unwrap();
        assert_eq!(
            text,
            "AISLE-REQ1\nPOST\n/v1/sync/events?x=1\n1700000000123\nn0nce-0123456789abcdef\n44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn sign_then_verify() {
        let k = key();
        let ts = UtcMillis(1_700_000_000_000);
        let h = sign_request(
            &k,
            &gw(),
            "GET",
            "/v1/sync/changes?cursor=3",
            ts,
            NONCE,
            b"",
        )
        .unwrap();
        assert_eq!(h.gateway, "gw-S001-00000001");
        assert_eq!(h.timestamp, "1700000000000");
        assert_eq!(h.pairs()[3].0, SIGNATURE_HEADER);
        let vk = k.verifying_key();
        let ts2 = parse_timestamp(&h.timestamp).unwrap();
        verify_request(
            &vk,
            "GET",
            "/v1/sync/changes?cursor=3",
            ts2,
            &h.nonce,
            &h.signature,
            b"",
        )
        .unwrap();
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let k = key();
        let vk = k.verifying_key();
        let ts = UtcMillis(1_700_000_000_000);
        let h = sign_request(&k, &gw(), "POST", "/v1/sync/events", ts, NONCE, b"body").unwrap();
        let v = |m: &str, p: &str, t: i64, n: &str, b: &[u8]| {
            verify_request(&vk, m, p, UtcMillis(t), n, &h.signature, b)
        };
        assert_eq!(v("POST", "/v1/sync/events", ts.0, NONCE, b"body"), Ok(()));
        assert_eq!(
            v("POST", "/v1/sync/events", ts.0, NONCE, b"bodY"),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            v("PUT", "/v1/sync/events", ts.0, NONCE, b"body"),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            v("POST", "/v1/sync/events?a", ts.0, NONCE, b"body"),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            v("POST", "/v1/sync/events", ts.0 + 1, NONCE, b"body"),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            v(
                "POST",
                "/v1/sync/events",
                ts.0,
                "other-nonce-0123456",
                b"body"
            ),
            Err(AuthError::BadSignature)
        );
        let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        assert_eq!(
            verify_request(
                &other,
                "POST",
                "/v1/sync/events",
                ts,
                NONCE,
                &h.signature,
                b"body"
            ),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn malformed_inputs_are_refused_not_panicked_on() {
        let vk = key().verifying_key();
        let ts = UtcMillis(1);
        for sig in ["", "!!!", "AAAA", &"A".repeat(200)] {
            assert!(verify_request(&vk, "GET", "/", ts, NONCE, sig, b"").is_err());
        }
        assert_eq!(
            signed_message("get", "/", 0, NONCE, &[0; 32]),
            Err(AuthError::BadMethod)
        );
        assert_eq!(
            signed_message("GET", "v1", 0, NONCE, &[0; 32]),
            Err(AuthError::BadPath)
        );
        assert_eq!(
            signed_message("GET", "/a\nb", 0, NONCE, &[0; 32]),
            Err(AuthError::BadPath)
        );
        assert_eq!(
            signed_message("GET", "/", 0, "short", &[0; 32]),
            Err(AuthError::BadNonce)
        );
        assert_eq!(
            signed_message("GET", "/", 0, "has space in the nonce!", &[0; 32]),
            Err(AuthError::BadNonce)
        );
        for t in ["", "-1", "1.5", "99999999999999999999", "12a"] {
            assert!(parse_timestamp(t).is_err(), "{t}");
        }
    }

    #[test]
    fn clock_window() {
        let now = UtcMillis(10_000_000);
        assert!(check_clock(now, now).is_ok());
        assert!(check_clock(UtcMillis(now.0 + MAX_CLOCK_SKEW_MS), now).is_ok());
        assert!(check_clock(UtcMillis(now.0 - MAX_CLOCK_SKEW_MS), now).is_ok());
        assert_eq!(
            check_clock(UtcMillis(now.0 - MAX_CLOCK_SKEW_MS - 1), now),
            Err(AuthError::ClockSkew {
                skew_ms: -MAX_CLOCK_SKEW_MS - 1
            })
        );
        assert!(check_clock(UtcMillis(i64::MAX), UtcMillis(i64::MIN)).is_err());
        let msg = alloc::format!("{}", AuthError::ClockSkew { skew_ms: 1 });
        assert!(msg.contains("clock"));
    }

    #[test]
    fn public_keys_round_trip_and_bad_ones_are_refused() {
        let vk = key().verifying_key();
        let hex = public_key_hex(&vk);
        assert_eq!(hex.len(), 64);
        assert_eq!(parse_public_key_hex(&hex).unwrap(), vk);
        assert_eq!(parse_public_key_hex(&hex.to_uppercase()).unwrap(), vk);
        for bad in ["", "zz", &"g".repeat(64), &"0".repeat(63), &"00".repeat(33)] {
            assert_eq!(parse_public_key_hex(bad), Err(AuthError::BadPublicKey));
        }
        // The identity point is a weak key.
        let mut identity = String::from("01");
        identity.push_str(&"00".repeat(31));
        assert_eq!(
            parse_public_key_hex(&identity),
            Err(AuthError::BadPublicKey)
        );
    }

    #[test]
    fn enrolment_codes() {
        let c = EnrolmentCode::from_random([0xff; 8]);
        assert_eq!(c.canonical().len(), ENROLMENT_CODE_CHARS);
        let shown = c.display();
        assert_eq!(shown.len(), 14);
        assert_eq!(&shown[4..5], "-");
        assert_eq!(EnrolmentCode::parse(&shown).unwrap(), c);
        assert_eq!(
            EnrolmentCode::parse(&shown.to_lowercase().replace('-', " ")).unwrap(),
            c
        );
        let zero = EnrolmentCode::from_random([0; 8]);
        assert_eq!(zero.canonical(), "000000000000");
        assert_eq!(EnrolmentCode::parse("oooo-OOOO-0000").unwrap(), zero);
        assert_eq!(
            EnrolmentCode::parse("IIII-LLLL-1111").unwrap().canonical(),
            "111111111111"
        );
        for bad in [
            "",
            "ABCD",
            "ABCD-EFGH-JKMN-P",
            "ABCD-EFGH-JKMU",
            "ABCD_EFGH_JKMN",
            "é",
        ] {
            assert_eq!(EnrolmentCode::parse(bad), Err(AuthError::BadCode), "{bad}");
        }
        assert!(!alloc::format!("{c:?}").contains(c.canonical()));
        assert_ne!(c.digest(), zero.digest());
    }

    #[test]
    fn enrol_messages_round_trip() {
        let req: EnrolRequest =
            serde_json::from_str(r#"{"code":"ABCD-EFGH-JKMN","public_key":"00","name":"pi"}"#)
                .unwrap();
        assert_eq!(req.name, "pi");
        assert!(
            serde_json::from_str::<EnrolRequest>(
                r#"{"code":"a","public_key":"b","name":"c","x":1}"#
            )
            .is_err()
        );
        let res = EnrolResponse {
            gateway_id: gw(),
            store: StoreId::parse("S001").unwrap(),
            hub_tls_fingerprint: None,
        };
        let text = serde_json::to_string(&res).unwrap();
        assert!(text.contains(r#""hub_tls_fingerprint":null"#));
    }
}
