//! The agent's configuration file (TOML). Unknown keys are refused so a typo never silently
//! falls back to a default.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use aisle_protocol::sync::{MAX_EVENTS_PER_UPLOAD, MAX_WAIT_MS};
use aisle_protocol::{GatewayId, StoreId};
use serde::{Deserialize, Serialize};

/// Largest configuration file we read.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;
/// The secret half of a credential: 32 random bytes as lowercase hex, as the hub prints it.
const SECRET_HEX_DIGITS: usize = 64;

/// Debug is written by hand so the credential's secret never reaches a log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The store this gateway serves.
    pub store: StoreId,
    /// Base URL of the hub, e.g. `http://127.0.0.1:7400`.
    pub hub_url: String,
    /// `<gateway_id>.<secret>` as printed by `aisle-hub gateway add`.
    pub credential: String,
    /// Where the ledger lives.
    pub data_dir: PathBuf,
    /// Address of the local HTTP API.
    pub listen: SocketAddr,
    #[serde(default)]
    pub sync: SyncConfig,
    #[serde(default)]
    pub clock: ClockConfig,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("store", &self.store)
            .field("hub_url", &self.hub_url)
            .field("credential", &redacted(&self.credential))
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("sync", &self.sync)
            .field("clock", &self.clock)
            .finish()
    }
}

/// A credential safe to log: `<gateway_id>.<redacted>` (only `<redacted>` if it has no id part).
pub(crate) fn redacted(credential: &str) -> String {
    match credential.split_once('.') {
        Some((id, _)) if GatewayId::parse(id).is_ok() => format!("{id}.<redacted>"),
        _ => "<redacted>".to_string(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// How long one changefeed long-poll may wait at the hub.
    pub long_poll_ms: u32,
    /// Most events in one upload.
    pub upload_batch: usize,
    /// First backoff step after a failure.
    pub backoff_base_ms: u64,
    /// Largest backoff; with full jitter the retry comes within this long of the link returning.
    pub backoff_cap_ms: u64,
    /// Clock skew (hub time minus local time) beyond which the clock alarm is raised.
    pub skew_alarm_ms: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            long_poll_ms: 25_000,
            upload_batch: 2_000,
            backoff_base_ms: 100,
            backoff_cap_ms: 2_000,
            skew_alarm_ms: 300_000,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockConfig {
    /// Tests only: pretend the gateway's clock is off by this many milliseconds.
    pub offset_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

impl AgentConfig {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read_err)?.len();
        if len > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let config: AgentConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: one_line_toml_error(&text, &e),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: URL scheme, credential shape, bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let url = self.hub_url.trim_end_matches('/');
        if !url.starts_with("http://") || url.len() <= "http://".len() {
            return bad(format!(
                "hub_url must be an http:// URL (TLS comes later), got '{}'",
                self.hub_url
            ));
        }
        if self.hub_url.len() > 2048 || self.hub_url.chars().any(|c| c.is_whitespace()) {
            return bad("hub_url must be at most 2048 characters without spaces".into());
        }
        gateway_of(&self.credential).map_err(ConfigError::Invalid)?;
        let s = &self.sync;
        if s.long_poll_ms > MAX_WAIT_MS {
            return bad(format!(
                "sync.long_poll_ms must be at most {MAX_WAIT_MS}, got {}",
                s.long_poll_ms
            ));
        }
        if s.upload_batch == 0 || s.upload_batch > MAX_EVENTS_PER_UPLOAD {
            return bad(format!(
                "sync.upload_batch must be 1 to {MAX_EVENTS_PER_UPLOAD}, got {}",
                s.upload_batch
            ));
        }
        if s.backoff_base_ms == 0 || s.backoff_cap_ms < s.backoff_base_ms {
            return bad("sync.backoff_base_ms must be > 0 and at most sync.backoff_cap_ms".into());
        }
        if s.backoff_cap_ms > 3_600_000 {
            return bad("sync.backoff_cap_ms must be at most one hour".into());
        }
        if self.clock.offset_ms.unsigned_abs() > 10 * 365 * 86_400_000 {
            return bad("clock.offset_ms is more than ten years".into());
        }
        Ok(())
    }

    /// The gateway id half of the credential (safe to log; the secret never is).
    pub fn gateway_id(&self) -> Result<GatewayId, ConfigError> {
        gateway_of(&self.credential).map_err(ConfigError::Invalid)
    }
}

/// toml's errors draw the offending line over several lines; the CLI prints one.
fn one_line_toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let line = text
                .get(..span.start)
                .map_or(0, |before| before.matches('\n').count())
                + 1;
            format!("line {line}: {}", e.message().trim())
        }
        None => e.message().trim().to_string(),
    }
}

/// Splits `<gateway_id>.<secret>` and checks both halves, so the credential is always safe to put
/// in an HTTP header.
fn gateway_of(credential: &str) -> Result<GatewayId, String> {
    let Some((id, secret)) = credential.split_once('.') else {
        return Err("credential must look like <gateway_id>.<secret>".into());
    };
    let id = GatewayId::parse(id).map_err(|e| format!("credential: {e}"))?;
    // Exactly what the hub accepts (it stores sha256 of the secret as printed).
    if secret.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "credential secret for {id} has uppercase letters; the hub accepts only 64 lowercase \
             hex digits: use the line `aisle-hub gateway add` printed, unchanged"
        ));
    }
    if secret.len() != SECRET_HEX_DIGITS
        || !secret
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(format!(
            "credential secret for {id} must be {SECRET_HEX_DIGITS} lowercase hex digits: use the \
             line `aisle-hub gateway add` printed, unchanged"
        ));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MINIMAL: &str = r#"
store = "S001"
hub_url = "http://127.0.0.1:7400"
credential = "gw-S001-1a2b3c4d.00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
data_dir = "/var/lib/aisle"
listen = "127.0.0.1:7401"
"#;

    #[test]
    fn defaults_match_the_contract() {
        let c: AgentConfig = toml::from_str(MINIMAL).unwrap();
        c.validate().unwrap();
        assert_eq!(c.sync.long_poll_ms, 25_000);
        assert_eq!(c.sync.upload_batch, 2_000);
        assert_eq!(c.sync.backoff_base_ms, 100);
        assert_eq!(c.sync.backoff_cap_ms, 2_000);
        assert_eq!(c.sync.skew_alarm_ms, 300_000);
        assert_eq!(c.clock.offset_ms, 0);
        assert_eq!(c.gateway_id().unwrap().as_str(), "gw-S001-1a2b3c4d");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let c: AgentConfig = toml::from_str(MINIMAL).unwrap();
        let secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        for text in [format!("{c:?}"), format!("{c:#?}")] {
            assert!(!text.contains(secret), "{text}");
            assert!(!text.contains("00112233"), "{text}");
            assert!(text.contains("gw-S001-1a2b3c4d.<redacted>"), "{text}");
            assert!(text.contains("S001") && text.contains("7400"), "{text}");
        }
        let mut odd = c.clone();
        odd.credential = "no-dot-but-secret".into();
        assert!(!format!("{odd:?}").contains("no-dot-but-secret"));
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../examples/agent.toml");
        let c: AgentConfig = toml::from_str(text).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn parse_errors_are_one_line_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            format!("{MINIMAL}\n[sync]\nlong_poll_ms = \"soon\"\n"),
        )
        .unwrap();
        let e = AgentConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("line 9:"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let typo = format!("{MINIMAL}\nlisten_addr = \"x\"\n");
        assert!(toml::from_str::<AgentConfig>(&typo).is_err());
        let nested = format!("{MINIMAL}\n[sync]\nlong_pol_ms = 5\n");
        assert!(toml::from_str::<AgentConfig>(&nested).is_err());

        let mut c: AgentConfig = toml::from_str(MINIMAL).unwrap();
        c.sync.upload_batch = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("upload_batch")
        );
        let mut c: AgentConfig = toml::from_str(MINIMAL).unwrap();
        c.hub_url = "ftp://hub".into();
        assert!(c.validate().unwrap_err().to_string().contains("hub_url"));
        let mut c: AgentConfig = toml::from_str(MINIMAL).unwrap();
        c.credential = "gw-S001\r\nX-Evil: 1.abcd".into();
        assert!(c.validate().is_err());
        c.credential = "gw-S001.not-hex".into();
        assert!(c.validate().is_err());
        c.credential = "no-dot".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_secret_must_be_64_lowercase_hex_digits_as_the_hub_printed_it() {
        let mut c: AgentConfig = toml::from_str(MINIMAL).unwrap();
        let secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        c.credential = format!("gw-S001-1a2b3c4d.{}", secret.to_uppercase());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("uppercase"), "{e}");
        assert!(e.contains("64 lowercase hex digits"), "{e}");
        assert!(e.contains("aisle-hub gateway add"), "{e}");
        assert!(!e.contains("AABBCCDD"), "the secret is never echoed: {e}");
        // One uppercase digit is enough to be refused.
        c.credential = format!("gw-S001-1a2b3c4d.{}F", &secret[..63]);
        assert!(c.validate().unwrap_err().to_string().contains("uppercase"));
        // Too short or too long: not what the hub printed either.
        for bad in [&secret[..62], &format!("{secret}00")[..]] {
            c.credential = format!("gw-S001-1a2b3c4d.{bad}");
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("64 lowercase hex digits"), "{e}");
        }
        c.credential = format!("gw-S001-1a2b3c4d.{secret}");
        c.validate().unwrap();
    }
}
