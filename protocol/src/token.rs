//! The shape shared by the hub's signed tokens (pickup QR codes, member cards):
//! `<PREFIX>.<claims>.<signature>`, the claims in postcard and an Ed25519 signature over
//! `<PREFIX>.` followed by the claim bytes, both base64url without padding. The prefix is the
//! signature's domain separator, so one kind of token never passes as another.
use alloc::string::String;
use alloc::vec::Vec;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// Why text is not a well-formed token of a kind (before its claims or signature are judged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Another prefix: not this kind of token.
    NotOurs,
    TooLong,
    Malformed(&'static str),
}

/// The token text for `claims` (already encoded) under `prefix`, signed with `key`.
pub(crate) fn seal(prefix: &str, claims: &[u8], key: &SigningKey) -> String {
    let signature = key.sign(&signed_bytes(prefix, claims));
    let mut out = String::with_capacity(prefix.len() + 2 + claims.len() * 2 + 90);
    out.push_str(prefix);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(claims, &mut out);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut out);
    out
}

/// Splits a token of kind `prefix` (surrounding whitespace ignored, at most `max_chars`) into its
/// claim bytes and signature.
pub(crate) fn open(
    prefix: &str,
    text: &str,
    max_chars: usize,
) -> Result<(Vec<u8>, [u8; 64]), Shape> {
    let text = text.trim();
    if text.len() > max_chars {
        return Err(Shape::TooLong);
    }
    let mut parts = text.split('.');
    if parts.next() != Some(prefix) {
        return Err(Shape::NotOurs);
    }
    let (Some(claims_b64), Some(sig_b64), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Shape::Malformed("expected three parts"));
    };
    let claims = URL_SAFE_NO_PAD
        .decode(claims_b64)
        .map_err(|_| Shape::Malformed("claims are not base64url"))?;
    let signature: [u8; 64] = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| Shape::Malformed("signature is not base64url"))?
        .try_into()
        .map_err(|_| Shape::Malformed("signature is not 64 bytes"))?;
    Ok((claims, signature))
}

/// Whether `signature` is `key`'s over `claims` as a token of kind `prefix`.
pub(crate) fn signed_by(
    prefix: &str,
    claims: &[u8],
    signature: &[u8; 64],
    key: &VerifyingKey,
) -> bool {
    key.verify(
        &signed_bytes(prefix, claims),
        &Signature::from_bytes(signature),
    )
    .is_ok()
}

fn signed_bytes(prefix: &str, claims: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(prefix.len() + 1 + claims.len());
    v.extend_from_slice(prefix.as_bytes());
    v.push(b'.');
    v.extend_from_slice(claims);
    v
}
