//! Who may do what at the hub, and the record of what they did: HQ API tokens with roles, the
//! hash-chained audit log, gateway enrolment codes, and the HTTPS identity ([`tls`]).
//!
//! Secrets here (tokens, enrolment codes) are 256 and 60 random bits. The hub keeps only their
//! SHA-256: a slow password hash protects guessable secrets, but nobody can search 2^256 (or,
//! for a single-use code that expires in hours behind a rate limit, 2^60) preimages, so a fast
//! hash loses nothing and keeps every request's lookup cheap (an index on the hash).
use std::fmt;

use aisle_protocol::auth::EnrolmentCode;
use aisle_protocol::{GatewayId, StoreId, UtcMillis};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub mod qr;
pub mod tls;

/// Prefix of every HQ API token (so a leaked one is recognisable to secret scanners).
pub const TOKEN_PREFIX: &str = "aisle_hq_";
/// Longest token name, in characters.
pub const MAX_TOKEN_NAME_CHARS: usize = 100;
/// Default lifetime of an enrolment code.
pub const DEFAULT_ENROLMENT_TTL_MS: i64 = 24 * 60 * 60 * 1000;
/// Longest lifetime of an enrolment code (30 days).
pub const MAX_ENROLMENT_TTL_MS: i64 = 30 * 24 * 60 * 60 * 1000;
/// Refused enrolment attempts one client address may make per [`ENROL_RATE_WINDOW_MS`].
pub const ENROL_RATE_LIMIT: u64 = 10;
/// The rate limit's window.
pub const ENROL_RATE_WINDOW_MS: i64 = 10 * 60 * 1000;

/// What an HQ token may do. `admin` may do everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Price batches.
    Pricing,
    /// Pickup orders: place, cancel, read; loyalty member cards.
    Orders,
    /// Stores, gateways, enrolment, tokens, audit, changefeed maintenance, and all of the above.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Pricing => "pricing",
            Role::Orders => "orders",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Role, String> {
        match s {
            "pricing" => Ok(Role::Pricing),
            "orders" => Ok(Role::Orders),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role '{}'; use pricing, orders or admin",
                other.chars().take(32).collect::<String>()
            )),
        }
    }

    /// Whether a holder of `self` may use a route that needs `needed`.
    pub fn allows(self, needed: Role) -> bool {
        self == Role::Admin || self == needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who did something, as the audit log names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor(String);

impl Actor {
    /// The `aisle-hub` command line on the hub's host.
    pub fn cli() -> Self {
        Actor("cli".into())
    }
    /// The hub itself (library callers that name nobody).
    pub fn hub() -> Self {
        Actor("hub".into())
    }
    /// The bootstrap HQ token from `AISLE_HQ_TOKEN`.
    pub fn bootstrap() -> Self {
        Actor("token:bootstrap(admin)".into())
    }
    /// An HQ API token.
    pub fn token(name: &str, role: Role) -> Self {
        Actor(format!("token:{name}({role})"))
    }
    pub fn gateway(id: &GatewayId) -> Self {
        Actor(format!("gateway:{id}"))
    }
    /// An unauthenticated client (enrolment), by address.
    pub fn client(addr: &str) -> Self {
        Actor(format!("client:{addr}"))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An HQ caller that proved a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// `None` for the bootstrap token.
    pub token_id: Option<String>,
    pub name: String,
    pub role: Role,
}

impl Principal {
    pub fn bootstrap() -> Self {
        Principal {
            token_id: None,
            name: "bootstrap".into(),
            role: Role::Admin,
        }
    }

    pub fn actor(&self) -> Actor {
        match self.token_id {
            None => Actor::bootstrap(),
            Some(_) => Actor::token(&self.name, self.role),
        }
    }
}

/// A stored HQ API token (never its secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiTokenInfo {
    pub token_id: String,
    pub name: String,
    pub role: Role,
    pub created_at: UtcMillis,
    pub revoked_at: Option<UtcMillis>,
}

/// A freshly made token: the secret exists only here and in the one line printed to HQ.
#[derive(Clone, PartialEq, Eq)]
pub struct NewApiToken {
    pub token_id: String,
    secret: String,
}

impl NewApiToken {
    /// `tok-<8 hex>` and `aisle_hq_<43 base64url characters>` (256 random bits).
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let mut id = [0u8; 4];
        rng.fill_bytes(&mut id);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        NewApiToken {
            token_id: format!("tok-{}", hex::encode(id)),
            secret: format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret)),
        }
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    pub fn hash(&self) -> [u8; 32] {
        token_hash(&self.secret)
    }
}

impl fmt::Debug for NewApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NewApiToken({}, <redacted>)", self.token_id)
    }
}

/// What the hub stores and looks tokens up by.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Checks a token's name: 1 to 100 characters, no control characters.
pub fn check_token_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_TOKEN_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(format!(
            "a token name must be 1 to {MAX_TOKEN_NAME_CHARS} characters without control characters"
        ));
    }
    Ok(name.to_owned())
}

/// An entry to append to the audit log.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditInput {
    pub actor: Actor,
    pub action: &'static str,
    pub subject: String,
    pub detail: serde_json::Value,
}

impl AuditInput {
    pub fn new(
        actor: &Actor,
        action: &'static str,
        subject: impl Into<String>,
        detail: serde_json::Value,
    ) -> Self {
        AuditInput {
            actor: actor.clone(),
            action,
            subject: subject.into(),
            detail,
        }
    }
}

/// Audit actions.
pub mod action {
    pub const PRICE_BATCH: &str = "price_batch.created";
    pub const ORDER_CANCELLED: &str = "order.cancelled";
    pub const GATEWAY_ADDED: &str = "gateway.added";
    pub const GATEWAY_REVOKED: &str = "gateway.revoked";
    pub const TOKEN_CREATED: &str = "token.created";
    pub const TOKEN_REVOKED: &str = "token.revoked";
    pub const ENROLMENT_CREATED: &str = "enrolment.created";
    pub const ENROLMENT_SUCCEEDED: &str = "enrolment.succeeded";
    pub const ENROLMENT_REFUSED: &str = "enrolment.refused";
    /// A store bound a shelf label to a product (uploaded with the store's events).
    pub const LABEL_BOUND: &str = "label.bound";
    /// A store took a shelf label off the shelf.
    pub const LABEL_UNBOUND: &str = "label.unbound";
    /// The hub signed a loyalty member card (subject: the member number; never the token).
    pub const MEMBER_CARD_ISSUED: &str = "member_card_issued";
}

/// One entry of the audit log as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at: UtcMillis,
    pub actor: String,
    pub action: String,
    pub subject: String,
    /// JSON text, exactly as hashed.
    pub detail: String,
    /// Hex SHA-256 chaining this entry to the one before.
    pub hash: String,
}

/// The hash of the entry before the first.
pub const AUDIT_GENESIS: [u8; 32] = [0; 32];

/// `sha256(previous hash || canonical content)`, where the canonical content is the JSON array
/// `[seq, at, actor, action, subject, detail]` (serde_json: no whitespace, strings escaped one
/// way), so no two different entries share a content string.
pub fn audit_hash(
    prev: &[u8; 32],
    seq: u64,
    at: i64,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &str,
) -> [u8; 32] {
    // Serialising a tuple of plain values cannot fail.
    let content =
        serde_json::to_vec(&(seq, at, actor, action, subject, detail)).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(prev);
    h.update(&content);
    h.finalize().into()
}

/// What `audit verify` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditVerification {
    pub entries: u64,
    /// The first entry whose hash or seq does not follow from the ones before, and why.
    pub broken: Option<(u64, String)>,
}

/// Checks a run of entries continuing after `prev` (the hash of entry `expected_seq - 1`).
/// Returns the new head, or where and why the chain breaks.
pub fn verify_chain(
    entries: &[AuditEntry],
    mut prev: [u8; 32],
    mut expected_seq: u64,
) -> Result<[u8; 32], (u64, String)> {
    for e in entries {
        if e.seq != expected_seq {
            return Err((
                e.seq,
                format!(
                    "expected entry {expected_seq} next, found {}: entries are missing",
                    e.seq
                ),
            ));
        }
        let h = audit_hash(
            &prev, e.seq, e.at.0, &e.actor, &e.action, &e.subject, &e.detail,
        );
        if hex::encode(h) != e.hash {
            return Err((
                e.seq,
                "its hash does not match its content and the entry before: the log was altered"
                    .into(),
            ));
        }
        prev = h;
        expected_seq += 1;
    }
    Ok(prev)
}

/// A new enrolment code and its id (the id names it in the audit log; the code is the secret).
#[derive(Clone, Debug)]
pub struct NewEnrolment {
    pub code_id: String,
    pub code: EnrolmentCode,
    pub store: StoreId,
    pub expires_at: UtcMillis,
}

impl NewEnrolment {
    pub fn generate(store: &StoreId, expires_at: UtcMillis) -> Self {
        let mut rng = rand::rng();
        let mut id = [0u8; 4];
        rng.fill_bytes(&mut id);
        let mut code = [0u8; 8];
        rng.fill_bytes(&mut code);
        NewEnrolment {
            code_id: format!("enr-{}", hex::encode(id)),
            code: EnrolmentCode::from_random(code),
            store: store.clone(),
            expires_at,
        }
    }
}

/// A gateway enrolled with a public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrolledGateway {
    pub gateway_id: GatewayId,
    pub store: StoreId,
}

/// Why the database refused an enrolment code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnrolRefusal {
    /// No such code.
    Unknown,
    Used,
    Expired,
}

impl EnrolRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            EnrolRefusal::Unknown => "wrong_code",
            EnrolRefusal::Used => "code_used",
            EnrolRefusal::Expired => "code_expired",
        }
    }
}

/// An enrolment attempt that got past the form checks.
#[derive(Clone, Debug)]
pub struct EnrolAttempt {
    pub code_digest: [u8; 32],
    /// 64 lowercase hex digits of a valid Ed25519 key.
    pub public_key: String,
    pub name: String,
    /// The client's address (for the audit log and the rate limit).
    pub client: String,
    pub now: UtcMillis,
}

/// What the hub knows of a gateway that signs its requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayKey {
    pub store: StoreId,
    pub public_key: String,
    pub revoked: bool,
}

/// What recording a signed request's nonce found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceOutcome {
    /// New: recorded.
    Fresh,
    /// The gateway sent this nonce before.
    Replayed,
    /// The gateway is revoked (nothing recorded).
    Revoked,
}

/// A gateway as `gateway list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayInfo {
    pub gateway_id: GatewayId,
    pub store: StoreId,
    pub created_at: UtcMillis,
    pub revoked_at: Option<UtcMillis>,
    /// The enrolled name, when it enrolled with a key (else it uses a bearer credential).
    pub enrolled_name: Option<String>,
}

/// Parses a duration such as `24h`, `90m`, `7d` or `3600s` into milliseconds.
pub fn parse_ttl(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let bad = || format!("'{text}' is not a duration; use e.g. 30m, 24h or 7d");
    if text.len() < 2 || text.len() > 12 {
        return Err(bad());
    }
    let (num, unit) = text.split_at(text.len() - 1);
    let n: i64 = num.parse().map_err(|_| bad())?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let ms = n.checked_mul(unit_ms).ok_or_else(bad)?;
    if ms <= 0 || ms > MAX_ENROLMENT_TTL_MS {
        return Err(format!(
            "an enrolment code must live between 1 s and 30 days, got {text}"
        ));
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn roles_allow_their_routes_and_admin_everything() {
        assert!(Role::Admin.allows(Role::Pricing));
        assert!(Role::Admin.allows(Role::Orders));
        assert!(Role::Pricing.allows(Role::Pricing));
        assert!(!Role::Pricing.allows(Role::Orders));
        assert!(!Role::Orders.allows(Role::Admin));
        assert_eq!(Role::parse("orders").unwrap(), Role::Orders);
        assert!(Role::parse("root").is_err());
    }

    #[test]
    fn tokens_are_random_prefixed_and_redacted() {
        let a = NewApiToken::generate();
        let b = NewApiToken::generate();
        assert_ne!(a.secret(), b.secret());
        assert!(a.secret().starts_with(TOKEN_PREFIX));
        assert_eq!(a.secret().len(), TOKEN_PREFIX.len() + 43);
        assert!(!format!("{a:?}").contains(a.secret()));
        assert_eq!(a.hash(), token_hash(a.secret()));
    }

    fn entry(prev: &[u8; 32], seq: u64, detail: &str) -> AuditEntry {
        let h = audit_hash(prev, seq, 5, "cli", "token.created", "tok-1", detail);
        AuditEntry {
            seq,
            at: UtcMillis(5),
            actor: "cli".into(),
            action: "token.created".into(),
            subject: "tok-1".into(),
            detail: detail.into(),
            hash: hex::encode(h),
        }
    }

    #[test]
    fn the_chain_detects_edits_and_gaps() {
        let e1 = entry(&AUDIT_GENESIS, 1, "{}");
        let h1: [u8; 32] = hex::decode(&e1.hash).unwrap().try_into().unwrap();
        let e2 = entry(&h1, 2, r#"{"a":1}"#);
        let h2 = verify_chain(&[e1.clone(), e2.clone()], AUDIT_GENESIS, 1).unwrap();
        assert_eq!(hex::encode(h2), e2.hash);
        let mut edited = e1.clone();
        edited.detail = r#"{"x":1}"#.into();
        assert_eq!(
            verify_chain(&[edited, e2.clone()], AUDIT_GENESIS, 1)
                .unwrap_err()
                .0,
            1
        );
        assert_eq!(
            verify_chain(std::slice::from_ref(&e2), AUDIT_GENESIS, 1)
                .unwrap_err()
                .0,
            2
        );
        // Fields cannot be shifted into each other.
        assert_ne!(
            audit_hash(&AUDIT_GENESIS, 1, 1, "a", "b|c", "d", "{}"),
            audit_hash(&AUDIT_GENESIS, 1, 1, "a|b", "c", "d", "{}")
        );
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("24h").unwrap(), DEFAULT_ENROLMENT_TTL_MS);
        assert_eq!(parse_ttl("90m").unwrap(), 90 * 60_000);
        assert_eq!(parse_ttl("1s").unwrap(), 1_000);
        for bad in ["", "h", "0h", "-1h", "31d", "12", "1y", "99999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
