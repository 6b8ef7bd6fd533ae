//! The gateway's own audit log: who did what on this gateway that is not a ledger event
//! (enrolment, MQTT device credentials, staff sign-ins and refused PINs). Append-only JSON lines
//! in `<data_dir>/audit.log`, each hash-chained to the one before (`aisle-agent audit verify`
//! finds any edited, removed or reordered line). Entries name people and devices, never secrets.
//!
//! Appends from several processes (the running agent, `aisle-agent devices add`) are serialised
//! with an exclusive `flock` on the file and flushed with `fsync` before returning.
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The file's name in the data directory.
pub const AUDIT_FILE: &str = "audit.log";
/// Longest line read back (an entry is a few hundred bytes).
const MAX_LINE: usize = 64 * 1024;
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Actions recorded.
pub mod action {
    pub const GATEWAY_ENROLLED: &str = "gateway_enrolled";
    pub const MQTT_DEVICE_ADDED: &str = "mqtt_device_added";
    pub const STAFF_SIGNED_IN: &str = "staff_signed_in";
    pub const STAFF_PIN_REFUSED: &str = "staff_pin_refused";
    /// A technician signed in to the setup page.
    pub const TECHNICIAN_SIGNED_IN: &str = "technician_signed_in";
    /// A right PIN whose role the page does not admit (a staff PIN at the setup page).
    pub const SIGN_IN_REFUSED_ROLE: &str = "sign_in_refused_role";
    /// The reset button was held at boot: the enrolment was set aside.
    pub const GATEWAY_RESET: &str = "gateway_reset";
    /// An attendant approved a lane's alerts (age check, bagging weight, device).
    pub const LANE_OVERRIDE: &str = "lane_override";
    /// A manager voided a line at a lane.
    pub const LANE_VOID: &str = "lane_void";
    /// A manager settled an undecided payment at a lane.
    pub const LANE_PAYMENT_RECOVER: &str = "lane_payment_recover";
    /// A lane voided a payment it could not keep (abandoned, late, or from before a restart)
    /// at its terminal, with the terminal's answer.
    pub const LANE_PAYMENT_VOIDED: &str = "lane_payment_voided";
    /// A lane reversed an approval it could not commit (sale refused, offline cap, partial).
    pub const LANE_PAYMENT_REVERSED: &str = "lane_payment_reversed";
    /// An attendant cancelled a lane's visit.
    pub const LANE_CANCEL: &str = "lane_cancel";
    /// A wrong PIN at a lane, or a right one whose role may not do what was asked.
    pub const LANE_PIN_REFUSED: &str = "lane_pin_refused";
}

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    pub seq: u64,
    /// Unix milliseconds (the gateway's clock).
    pub at_ms: i64,
    /// `technician`, `technician:<name>` (signed in with a PIN), `staff:<name>`,
    /// `device:<address>`.
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub prev: String,
    pub hash: String,
}

#[derive(Serialize)]
struct Unhashed<'a> {
    seq: u64,
    at_ms: i64,
    actor: &'a str,
    action: &'a str,
    subject: &'a str,
    prev: &'a str,
}

fn entry_hash(e: &Unhashed<'_>) -> Result<String, AuditError> {
    let bytes = serde_json::to_vec(e).map_err(|e| AuditError::Malformed(e.to_string()))?;
    Ok(hex::encode(Sha256::digest(bytes)))
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit log line {line}: {why}")]
    Broken { line: u64, why: String },
    #[error("audit entry: {0}")]
    Malformed(String),
}

/// Appends to one data directory's audit log.
#[derive(Clone, Debug)]
pub struct AuditLog {
    path: PathBuf,
}

fn clean(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

impl AuditLog {
    pub fn new(data_dir: &Path) -> AuditLog {
        AuditLog {
            path: data_dir.join(AUDIT_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends an entry chained to the last one. Blocking (file lock and fsync): call it off the
    /// async threads.
    pub fn append(
        &self,
        at_ms: i64,
        actor: &str,
        action: &str,
        subject: &str,
    ) -> Result<AuditEntry, AuditError> {
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(io)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io(e.into()))?;
        let last = last_entry(&file, &self.path)?;
        let (seq, prev) = match &last {
            Some(e) => (e.seq + 1, e.hash.clone()),
            None => (1, GENESIS.to_string()),
        };
        let (actor, action, subject) = (clean(actor, 128), clean(action, 64), clean(subject, 512));
        let unhashed = Unhashed {
            seq,
            at_ms,
            actor: &actor,
            action: &action,
            subject: &subject,
            prev: &prev,
        };
        let hash = entry_hash(&unhashed)?;
        let entry = AuditEntry {
            seq,
            at_ms,
            actor,
            action,
            subject,
            prev,
            hash,
        };
        let mut line =
            serde_json::to_vec(&entry).map_err(|e| AuditError::Malformed(e.to_string()))?;
        line.push(b'\n');
        file.write_all(&line).map_err(io)?;
        file.sync_data().map_err(io)?;
        // The lock goes with the file descriptor.
        Ok(entry)
    }

    /// Appends, logging instead of failing (for paths where the action itself must go on).
    pub fn record(&self, at_ms: i64, actor: &str, action: &str, subject: &str) {
        if let Err(e) = self.append(at_ms, actor, action, subject) {
            tracing::error!(error = %e, action, "cannot write the gateway audit log");
        }
    }
}

/// Reads every entry (bounded lines).
fn entries(file: &File, path: &Path) -> Result<Vec<AuditEntry>, AuditError> {
    let mut reader = BufReader::new(file.try_clone().map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    })?);
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut n = 0u64;
    loop {
        buf.clear();
        let read = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|source| AuditError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        if read == 0 {
            return Ok(out);
        }
        n += 1;
        if buf.len() > MAX_LINE || !buf.ends_with(b"\n") {
            return Err(AuditError::Broken {
                line: n,
                why: "line too long or not terminated".into(),
            });
        }
        let e: AuditEntry = serde_json::from_slice(&buf).map_err(|e| AuditError::Broken {
            line: n,
            why: e.to_string(),
        })?;
        out.push(e);
    }
}

use std::io::Read as _;

fn last_entry(file: &File, path: &Path) -> Result<Option<AuditEntry>, AuditError> {
    use std::io::{Seek, SeekFrom};
    let mut f = file.try_clone().map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let len = f.seek(SeekFrom::End(0)).map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if len == 0 {
        return Ok(None);
    }
    let start = len.saturating_sub(MAX_LINE as u64 + 1);
    f.seek(SeekFrom::Start(start))
        .and_then(|_| {
            let mut tail = Vec::new();
            f.take(len - start).read_to_end(&mut tail).map(|_| tail)
        })
        .map_err(|source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        })
        .and_then(|tail| {
            let body = tail.strip_suffix(b"\n").ok_or(AuditError::Broken {
                line: 0,
                why: "the last line is not terminated (a write was cut short); run `aisle-agent \
                      audit verify`"
                    .into(),
            })?;
            let last = body.rsplit(|b| *b == b'\n').next().unwrap_or(body);
            serde_json::from_slice(last)
                .map(Some)
                .map_err(|e| AuditError::Broken {
                    line: 0,
                    why: format!("the last line: {e}"),
                })
        })
}

/// What `verify` found.
#[derive(Debug, PartialEq, Eq)]
pub struct AuditReport {
    pub entries: u64,
    pub head: String,
}

/// Checks every line's hash and its link to the line before.
pub fn verify(data_dir: &Path) -> Result<AuditReport, AuditError> {
    let path = data_dir.join(AUDIT_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(AuditReport {
                entries: 0,
                head: GENESIS.into(),
            });
        }
        Err(source) => return Err(AuditError::Io { path, source }),
    };
    let all = entries(&file, &path)?;
    let mut prev = GENESIS.to_string();
    for (i, e) in all.iter().enumerate() {
        let line = i as u64 + 1;
        let broken = |why: &str| AuditError::Broken {
            line,
            why: why.to_string(),
        };
        if e.seq != line {
            return Err(broken("out of sequence (a line was removed or moved)"));
        }
        if e.prev != prev {
            return Err(broken("does not follow the line before"));
        }
        let expected = entry_hash(&Unhashed {
            seq: e.seq,
            at_ms: e.at_ms,
            actor: &e.actor,
            action: &e.action,
            subject: &e.subject,
            prev: &e.prev,
        })?;
        if expected != e.hash {
            return Err(broken("was changed after it was written"));
        }
        prev = e.hash.clone();
    }
    Ok(AuditReport {
        entries: all.len() as u64,
        head: prev,
    })
}

/// Every entry, for `aisle-agent audit list`.
pub fn list(data_dir: &Path) -> Result<Vec<AuditEntry>, AuditError> {
    let path = data_dir.join(AUDIT_FILE);
    match File::open(&path) {
        Ok(f) => entries(&f, &path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(AuditError::Io { path, source }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn entries_chain_and_any_edit_removal_or_reorder_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path());
        assert_eq!(verify(dir.path()).unwrap().entries, 0);
        log.append(
            1,
            "technician",
            action::GATEWAY_ENROLLED,
            "gw-S001-1 store S001",
        )
        .unwrap();
        log.append(2, "staff:Ana", action::STAFF_SIGNED_IN, "127.0.0.1")
            .unwrap();
        let third = log
            .append(3, "device:10.0.0.9", action::STAFF_PIN_REFUSED, "bad\nline")
            .unwrap();
        assert_eq!(third.seq, 3);
        assert_eq!(third.subject, "badline", "control characters are dropped");
        let report = verify(dir.path()).unwrap();
        assert_eq!(
            (report.entries, report.head.as_str()),
            (3, third.hash.as_str())
        );
        assert_eq!(list(dir.path()).unwrap().len(), 3);
        let path = dir.path().join(AUDIT_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();

        let edited = text.replace("staff:Ana", "staff:Bob");
        std::fs::write(&path, edited).unwrap();
        let e = verify(dir.path()).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("changed"), "{e}");

        std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        let e = verify(dir.path()).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("sequence"), "{e}");

        std::fs::write(&path, format!("{}\n{}\n{}", lines[0], lines[1], lines[2])).unwrap();
        assert!(
            log.append(4, "technician", "x", "y").is_err(),
            "a cut-short line stops appends"
        );
    }
}
