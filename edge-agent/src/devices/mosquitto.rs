//! Mosquitto's password and ACL files for the store's MQTT devices: each device logs in with its
//! own credential and may publish only under `<prefix>/<store>/<kind>/<id>/#`. Clients without
//! a login (the agent on the gateway itself) may only read the store's topics.
//!
//! Passwords are hashed here in Mosquitto 2's own format (`$7$`: PBKDF2-SHA512, 101 rounds,
//! 12-byte salt, base64), so no password ever appears on a command line (`mosquitto_passwd -b`
//! would show it to every local user in the process list). The real broker reads these files
//! in the tests.
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use sha2::Sha512;

use crate::provisioning::files::{StagedFile, commit_all};

/// Mosquitto 2's default PBKDF2 rounds.
const ROUNDS: u32 = 101;
/// Largest password or ACL file read.
const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// The first line of an ACL file this module writes.
const ACL_HEADER: &str = "# Written by `aisle-agent devices add`; edits are replaced.";

/// Kinds of MQTT device, as the topic's class level names them.
pub const KINDS: [&str; 5] = ["camera", "scale", "scanner", "lane", "sensor"];

/// A device's MQTT user name: `<kind>-<id>`.
pub fn user_name(kind: &str, id: &str) -> String {
    format!("{kind}-{id}")
}

/// The topic filter a device may publish to.
pub fn device_topic(prefix: &str, store: &str, kind: &str, id: &str) -> String {
    format!("{prefix}/{store}/{kind}/{id}/#")
}

/// `user:$7$101$<salt>$<hash>`, as `mosquitto_passwd` writes it.
pub fn password_line(user: &str, password: &str) -> String {
    let mut salt = [0u8; 12];
    rand::rng().fill_bytes(&mut salt);
    format!("{user}:{}", hash_with_salt(password, &salt))
}

fn hash_with_salt(password: &str, salt: &[u8]) -> String {
    let mut hash = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), salt, ROUNDS, &mut hash);
    format!(
        "$7${ROUNDS}${}${}",
        STANDARD.encode(salt),
        STANDARD.encode(hash)
    )
}

/// A fresh device password: 24 random bytes as 48 hex digits.
pub fn new_password() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn read_bounded(path: &Path) -> Result<Option<String>, String> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("{} is over {MAX_FILE_BYTES} bytes", path.display()));
    }
    Ok(Some(text))
}

/// Who may publish where: user -> topic filters.
pub type Acl = BTreeMap<String, Vec<String>>;

/// Reads an ACL file this module wrote (none: empty).
pub fn read_acl(path: &Path) -> Result<Acl, String> {
    let Some(text) = read_bounded(path)? else {
        return Ok(Acl::new());
    };
    if !text.starts_with(ACL_HEADER) {
        return Err(format!(
            "{} was not written by aisle-agent; move it away (or give another --mosquitto-dir)",
            path.display()
        ));
    }
    let mut acl = Acl::new();
    let mut user: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(u) = line.strip_prefix("user ") {
            user = Some(u.trim().to_string());
            acl.entry(u.trim().to_string()).or_default();
        } else if let (Some(t), Some(u)) = (line.strip_prefix("topic write "), &user) {
            acl.entry(u.clone()).or_default().push(t.trim().to_string());
        }
    }
    Ok(acl)
}

/// The ACL file: anonymous clients read the store's topics; each device writes its own.
pub fn render_acl(prefix: &str, store: &str, acl: &Acl) -> String {
    let mut out = format!(
        "{ACL_HEADER}\n# Clients without a login (the agent on this gateway) read the store's \
         topics and publish nothing.\ntopic read {prefix}/{store}/#\n"
    );
    for (user, topics) in acl {
        out.push_str(&format!("\nuser {user}\n"));
        for t in topics {
            out.push_str(&format!("topic write {t}\n"));
        }
    }
    out
}

/// What `add_device` wrote.
#[derive(Debug)]
pub struct Added {
    pub user: String,
    /// Shown once to the technician; stored only hashed.
    pub password: String,
    pub topic: String,
}

/// Gives `kind`/`id` a new credential (replacing any earlier one) in `<dir>/passwd` and its
/// own topic in `<dir>/acl`; both files are replaced together or not at all.
pub fn add_device(
    dir: &Path,
    prefix: &str,
    store: &str,
    kind: &str,
    id: &str,
) -> Result<Added, String> {
    let (added, files) = stage_device(dir, prefix, store, kind, id)?;
    commit_all(files).map_err(|e| format!("cannot replace the files: {e}"))?;
    tracing::info!(user = added.user, topic = added.topic, dir = %dir.display(), "MQTT device credential written");
    Ok(added)
}

/// What [`add_device`] writes, staged next to the files but not yet in place: commit the files
/// (with [`commit_all`], together with any other file that must change with them) to apply it;
/// dropping them leaves everything as it was.
pub fn stage_device(
    dir: &Path,
    prefix: &str,
    store: &str,
    kind: &str,
    id: &str,
) -> Result<(Added, Vec<StagedFile>), String> {
    if !KINDS.contains(&kind) {
        return Err(format!("--kind must be one of {}", KINDS.join(", ")));
    }
    if !crate::config::valid_camera_id(id) {
        return Err("--id must be 1 to 64 letters, digits, '_' or '-'".into());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let passwd_path = dir.join("passwd");
    let acl_path = dir.join("acl");
    let user = user_name(kind, id);
    let password = new_password();
    let mut lines: Vec<String> = read_bounded(&passwd_path)?
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| l.split_once(':').map(|(u, _)| u) != Some(user.as_str()))
        .map(str::to_string)
        .collect();
    lines.push(password_line(&user, &password));
    let mut acl = read_acl(&acl_path)?;
    let topic = device_topic(prefix, store, kind, id);
    acl.insert(user.clone(), vec![topic.clone()]);

    let write = |path: &Path, text: String| -> Result<StagedFile, String> {
        // Mosquitto reads them as its own user: owner and group only.
        let mut f = StagedFile::create(path, 0o640)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        f.write(text.as_bytes(), 0)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(f)
    };
    let passwd = write(&passwd_path, lines.join("\n") + "\n")?;
    let acl_file = write(&acl_path, render_acl(prefix, store, &acl))?;
    Ok((
        Added {
            user,
            password,
            topic,
        },
        vec![passwd, acl_file],
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_hash_is_mosquittos_pbkdf2_sha512_format() {
        // Made by mosquitto_passwd 2.0.11 for "secret".
        let line = "alice:$7$101$YomNxcopi4OsD5Cg$q/t04MEhVg9IFJKBDDY055IxyrBbwFv9hdKqEe6bLz1vbTrsj051Q8HZzyrhPrJZC0LgBeF7AuQWQG7S9JBu7A==";
        let salt = STANDARD.decode("YomNxcopi4OsD5Cg").unwrap();
        assert_eq!(format!("alice:{}", hash_with_salt("secret", &salt)), line);
        let fresh = password_line("bob", "pw");
        assert!(
            fresh.starts_with("bob:$7$101$") && fresh.len() > 100,
            "{fresh}"
        );
        assert_ne!(password_line("bob", "pw"), fresh, "a fresh salt each time");
    }

    #[test]
    fn devices_get_their_own_topic_and_a_second_add_replaces_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let a = add_device(dir.path(), "aisle/v1", "S001", "camera", "door-1").unwrap();
        let b = add_device(dir.path(), "aisle/v1", "S001", "camera", "door-2").unwrap();
        assert_eq!(a.user, "camera-door-1");
        assert_eq!(a.topic, "aisle/v1/S001/camera/door-1/#");
        let again = add_device(dir.path(), "aisle/v1", "S001", "camera", "door-1").unwrap();
        assert_ne!(again.password, a.password);
        let passwd = std::fs::read_to_string(dir.path().join("passwd")).unwrap();
        assert_eq!(passwd.lines().count(), 2, "{passwd}");
        assert!(!passwd.contains(&a.password) && !passwd.contains(&b.password));
        let acl = std::fs::read_to_string(dir.path().join("acl")).unwrap();
        assert!(acl.contains("topic read aisle/v1/S001/#"), "{acl}");
        assert!(acl.contains("user camera-door-2\ntopic write aisle/v1/S001/camera/door-2/#"));
        assert_eq!(read_acl(&dir.path().join("acl")).unwrap().len(), 2);
        assert!(add_device(dir.path(), "aisle/v1", "S001", "toaster", "x").is_err());
        assert!(add_device(dir.path(), "aisle/v1", "S001", "camera", "a/#").is_err());
        std::fs::write(dir.path().join("acl"), "user root\ntopic #\n").unwrap();
        let e = add_device(dir.path(), "aisle/v1", "S001", "camera", "x").unwrap_err();
        assert!(e.contains("not written by aisle-agent"), "{e}");
    }
}
