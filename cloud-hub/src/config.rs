//! How a hub is configured: where it listens, which database, and the HQ token.
use std::fmt;
use std::net::SocketAddr;

use sha2::{Digest, Sha256};

use crate::storage::hashes_equal;

/// Where `aisle-hub serve` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7400";
/// The database `aisle-hub` uses unless told otherwise.
pub const DEFAULT_DB_URL: &str = "sqlite://aisle-hub.db";
/// Environment variable holding the HQ bearer token.
pub const HQ_TOKEN_ENV: &str = "AISLE_HQ_TOKEN";
/// Longest HQ token accepted.
pub const MAX_TOKEN_LEN: usize = 512;

/// Why a configuration value was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{HQ_TOKEN_ENV} must be 1 to {MAX_TOKEN_LEN} printable characters without spaces")]
    BadHqToken,
}

/// The bearer token HQ tools present. Kept as its hash; never printed.
#[derive(Clone)]
pub struct HqToken {
    hash: [u8; 32],
}

impl HqToken {
    pub fn new(token: &str) -> Result<Self, ConfigError> {
        let ok = !token.is_empty()
            && token.len() <= MAX_TOKEN_LEN
            && token.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(ConfigError::BadHqToken);
        }
        Ok(HqToken {
            hash: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Constant-time check of a presented token.
    pub fn matches(&self, presented: &str) -> bool {
        let h: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        hashes_equal(&h, &self.hash)
    }
}

impl fmt::Debug for HqToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HqToken(<redacted>)")
    }
}

/// Everything [`crate::serve`] needs.
#[derive(Clone, Debug)]
pub struct HubConfig {
    pub listen: SocketAddr,
    pub db_url: String,
    pub hq_token: HqToken,
    /// Click-and-collect: webhook secret (`AISLE_WEBHOOK_SECRET`) and delivery, expiry sweep.
    pub pickups: crate::PickupSettings,
    /// Serve HTTPS with this certificate and key; `None`: plain HTTP.
    pub tls: Option<crate::security::tls::TlsIdentity>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn token_matches_only_itself_and_is_never_printed() {
        let t = HqToken::new("hq-secret-1").unwrap();
        assert!(t.matches("hq-secret-1"));
        assert!(!t.matches("hq-secret-2"));
        assert!(!t.matches(""));
        assert!(!format!("{t:?}").contains("hq-secret"));
        assert!(HqToken::new("").is_err());
        assert!(HqToken::new("has space").is_err());
    }
}
