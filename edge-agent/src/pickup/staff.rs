//! Staff PINs (argon2 PHC strings in the config) and sign-in sessions (in memory, 12 h).
use std::collections::HashMap;
use std::sync::Mutex;

use aisle_protocol::UtcMillis;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, Params};

use crate::config::{StaffConfig, StaffRole};

/// How long a session lives.
pub const SESSION_MS: i64 = 12 * 3_600_000;
/// Most live sessions; beyond this the oldest is dropped.
pub const MAX_SESSIONS: usize = 4_096;
/// Shortest and longest PIN `hash-pin` accepts.
pub const MIN_PIN_CHARS: usize = 4;
pub const MAX_PIN_CHARS: usize = 32;
/// Longest PHC string accepted in the config.
const MAX_HASH_CHARS: usize = 512;

/// Is `pin` acceptable as a new PIN?
pub fn check_new_pin(pin: &str) -> Result<(), String> {
    let n = pin.chars().count();
    if !(MIN_PIN_CHARS..=MAX_PIN_CHARS).contains(&n) || pin.chars().any(char::is_control) {
        return Err(format!(
            "a PIN must be {MIN_PIN_CHARS} to {MAX_PIN_CHARS} characters without control characters"
        ));
    }
    Ok(())
}

/// The PHC string for `pin` with argon2id's default parameters (19 MiB, 2 passes).
pub fn hash_pin(pin: &str) -> Result<String, String> {
    hash_pin_with(pin, Params::default())
}

/// The PHC string for `pin` with the given parameters (tests use cheap ones; the string carries
/// them, so verification uses them too).
pub fn hash_pin_with(pin: &str, params: Params) -> Result<String, String> {
    check_new_pin(pin)?;
    let salt =
        SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| format!("salt: {e}"))?;
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(pin.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the PIN: {e}"))
}

/// Is `hash` an argon2 PHC string?
pub fn check_pin_hash(hash: &str) -> Result<(), String> {
    if hash.len() > MAX_HASH_CHARS {
        return Err(format!("is longer than {MAX_HASH_CHARS} characters"));
    }
    let parsed = PasswordHash::new(hash).map_err(|e| format!("is not a PHC string ({e})"))?;
    if !matches!(
        parsed.algorithm.as_str(),
        "argon2id" | "argon2i" | "argon2d"
    ) || parsed.hash.is_none()
    {
        return Err("is not an argon2 hash".into());
    }
    Params::try_from(&parsed).map_err(|e| format!("has bad argon2 parameters ({e})"))?;
    Ok(())
}

/// The staff member whose PIN this is and the role it signs in with, if any (checks every
/// hash: CPU-heavy, call off the runtime).
pub fn who(staff: &[StaffConfig], pin: &str) -> Option<(String, StaffRole)> {
    let argon = Argon2::default();
    let mut found = None;
    for s in staff {
        let Ok(parsed) = PasswordHash::new(&s.pin_hash) else {
            continue;
        };
        if found.is_none() && argon.verify_password(pin.as_bytes(), &parsed).is_ok() {
            found = Some((s.name.clone(), s.role));
        }
    }
    found
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub staff: String,
    pub role: StaffRole,
    pub expires_at: UtcMillis,
}

/// Live sessions by token (64 hex digits of 32 random bytes). Lost on restart: staff sign in
/// again.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// A new session for `staff` signed in as `role` until `now + 12 h`; returns its token.
    pub fn open(&self, staff: String, role: StaffRole, now: UtcMillis) -> (String, Session) {
        let token = hex::encode(rand::random::<[u8; 32]>());
        let session = Session {
            staff,
            role,
            expires_at: UtcMillis(now.0.saturating_add(SESSION_MS)),
        };
        if let Ok(mut m) = self.map.lock() {
            if m.len() >= MAX_SESSIONS {
                m.retain(|_, s| s.expires_at > now);
            }
            if m.len() >= MAX_SESSIONS
                && let Some(oldest) = m
                    .iter()
                    .min_by_key(|(_, s)| s.expires_at)
                    .map(|(t, _)| t.clone())
            {
                m.remove(&oldest);
            }
            m.insert(token.clone(), session.clone());
        }
        (token, session)
    }

    /// The live session for `token`.
    pub fn get(&self, token: &str, now: UtcMillis) -> Option<Session> {
        let mut m = self.map.lock().ok()?;
        match m.get(token) {
            Some(s) if s.expires_at > now => Some(s.clone()),
            Some(_) => {
                m.remove(token);
                None
            }
            None => None,
        }
    }

    pub fn close(&self, token: &str) -> bool {
        self.map
            .lock()
            .map(|mut m| m.remove(token).is_some())
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cheap() -> Params {
        Params::new(8, 1, 1, None).unwrap()
    }

    #[test]
    fn pins_hash_to_phc_strings_that_verify() {
        let h = hash_pin_with("2468", cheap()).unwrap();
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        check_pin_hash(&h).unwrap();
        let staff = vec![
            StaffConfig {
                name: "Ana".into(),
                pin_hash: hash_pin_with("1357", cheap()).unwrap(),
                role: StaffRole::Staff,
            },
            StaffConfig {
                name: "Bo".into(),
                pin_hash: h,
                role: StaffRole::Manager,
            },
            StaffConfig {
                name: "Tia".into(),
                pin_hash: hash_pin_with("9753", cheap()).unwrap(),
                role: StaffRole::Technician,
            },
        ];
        assert_eq!(who(&staff, "2468"), Some(("Bo".into(), StaffRole::Manager)));
        assert_eq!(who(&staff, "1357"), Some(("Ana".into(), StaffRole::Staff)));
        assert_eq!(
            who(&staff, "9753"),
            Some(("Tia".into(), StaffRole::Technician))
        );
        assert_eq!(who(&staff, "0000"), None);
        assert!(hash_pin_with("12", cheap()).is_err());
        assert!(hash_pin_with("12\n34", cheap()).is_err());
        assert!(check_pin_hash("1234").is_err());
        assert!(check_pin_hash("$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA").is_err());
    }

    #[test]
    fn sessions_expire_and_close() {
        let s = Sessions::default();
        let (t, sess) = s.open("Ana".into(), StaffRole::Manager, UtcMillis(1_000));
        assert_eq!(sess.role, StaffRole::Manager);
        assert_eq!(t.len(), 64);
        assert_eq!(sess.expires_at, UtcMillis(1_000 + SESSION_MS));
        assert_eq!(s.get(&t, UtcMillis(2_000)).unwrap().staff, "Ana");
        assert!(s.get(&t, UtcMillis(1_000 + SESSION_MS)).is_none());
        let (t2, _) = s.open("Bo".into(), StaffRole::Staff, UtcMillis(1_000));
        assert!(s.close(&t2));
        assert!(s.get(&t2, UtcMillis(1_001)).is_none());
        assert!(s.get("nope", UtcMillis(1_001)).is_none());
    }
}
