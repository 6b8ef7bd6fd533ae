//! The gateway's own Ed25519 key: made on the gateway, kept in one file readable only by the
//! agent (mode 0600), never sent anywhere (only its public half is, at enrolment).
//!
//! The file is text: comment lines starting with `#`, then the 32-byte private seed as 64
//! lowercase hex digits on one line.
use std::fmt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use rand::RngCore;

/// The key file's name in the data directory.
pub const KEY_FILE_NAME: &str = "gateway.key";
/// Largest key file read (it is under 200 bytes).
const MAX_KEY_FILE_BYTES: u64 = 4096;
/// The mode the key file is written with and must have.
pub const KEY_FILE_MODE: u32 = 0o600;

/// Why the key file could not be used. Never contains the key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the gateway key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the gateway key {path} is readable by others (mode {mode:o}); run `chmod 600 {path}` \
         (and consider the key exposed: re-enrol if others may have read it)"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error(
        "the gateway key {path} is not a key file written by `aisle-agent enroll`; re-enrol the \
         gateway"
    )]
    Malformed { path: PathBuf },
}

/// The gateway's private key. Debug shows only the public half.
#[derive(Clone)]
pub struct GatewayKey(SigningKey);

impl fmt::Debug for GatewayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("GatewayKey")
            .field(&self.public_key_hex())
            .finish()
    }
}

impl GatewayKey {
    /// A fresh key from the operating system's randomness (through the thread's CSPRNG).
    pub fn generate() -> GatewayKey {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        let key = SigningKey::from_bytes(&seed);
        seed.fill(0);
        GatewayKey(key)
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.0
    }

    /// The public key as the hub takes it (64 hex digits).
    pub fn public_key_hex(&self) -> String {
        aisle_protocol::auth::public_key_hex(&self.0.verifying_key())
    }

    /// The key file's contents.
    pub fn file_contents(&self) -> String {
        format!(
            "# Aisle gateway key (Ed25519 private key, hex). It never leaves this gateway: do \
             not copy it.\n{}\n",
            hex::encode(self.0.to_bytes())
        )
    }

    /// Reads the key file, refusing one that others can read.
    pub fn load(path: &Path) -> Result<GatewayKey, KeyError> {
        let read_err = |source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        };
        let malformed = || KeyError::Malformed {
            path: path.to_path_buf(),
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut text = String::new();
        file.take(MAX_KEY_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|_| malformed())?;
        if text.len() as u64 > MAX_KEY_FILE_BYTES {
            return Err(malformed());
        }
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let (Some(line), None) = (lines.next(), lines.next()) else {
            return Err(malformed());
        };
        let mut seed = [0u8; 32];
        hex::decode_to_slice(line, &mut seed).map_err(|_| malformed())?;
        let key = SigningKey::from_bytes(&seed);
        seed.fill(0);
        Ok(GatewayKey(key))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_key_round_trips_through_its_file_and_debug_shows_only_the_public_half() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE_NAME);
        let key = GatewayKey::generate();
        std::fs::write(&path, key.file_contents()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let loaded = GatewayKey::load(&path).unwrap();
        assert_eq!(loaded.public_key_hex(), key.public_key_hex());
        let secret = hex::encode(key.signing_key().to_bytes());
        let shown = format!("{loaded:?}");
        assert!(!shown.contains(&secret) && shown.contains(&key.public_key_hex()));
        assert_ne!(
            GatewayKey::generate().public_key_hex(),
            key.public_key_hex()
        );
    }

    #[test]
    fn an_exposed_or_malformed_key_file_is_refused_without_echoing_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE_NAME);
        let key = GatewayKey::generate();
        std::fs::write(&path, key.file_contents()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = GatewayKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        let secret = hex::encode(key.signing_key().to_bytes());
        for bad in [
            String::new(),
            "zz".repeat(32),
            format!("{secret}\n{secret}\n"),
            secret[..62].to_string(),
            "a".repeat(10_000),
        ] {
            std::fs::write(&path, &bad).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let e = GatewayKey::load(&path).unwrap_err().to_string();
            assert!(e.contains("re-enrol"), "{e}");
            assert!(!e.contains(&secret[..16]), "{e}");
        }
        let missing = GatewayKey::load(&dir.path().join("none")).unwrap_err();
        assert!(matches!(missing, KeyError::Read { .. }));
    }
}
