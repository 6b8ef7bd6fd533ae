//! Payment attempts a lane has handed to its card terminal and not yet settled, kept on disk
//! (`<data>/lanes/<lane>.pending.json`) so that no charge is ever lost: not when the terminal
//! stops answering, not when a manager abandons a visit, not when the agent is killed in the
//! middle of a payment.
//!
//! An attempt is written (fsynced) before the terminal is asked, and removed once its outcome
//! is settled: the sale committed, the terminal declined, or the charge voided. Whatever stays
//! is voided at the terminal (`cancel` of its `sale_ref`) by the lane, at start and then every
//! few seconds, unless the ledger holds its sale (the agent stopped between the commit and
//! the settling).
use std::io::Write;
use std::path::{Path, PathBuf};

use aisle_protocol::Money;
use serde::{Deserialize, Serialize};

/// Most unsettled attempts a lane keeps (each is a terminal that never answered).
pub const MAX_PENDING: usize = 64;
/// Largest pending file read.
const MAX_FILE_BYTES: u64 = 256 * 1024;

/// One attempt handed to the terminal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingAttempt {
    /// `<sale id>:<attempt>`.
    pub sale_ref: String,
    pub sale_id: String,
    pub amount: Money,
    /// Hub-corrected ms when it was handed over.
    pub since_ms: i64,
}

/// The lane's unsettled attempts and their file.
#[derive(Debug)]
pub struct PendingPayments {
    path: PathBuf,
    attempts: Vec<PendingAttempt>,
}

impl PendingPayments {
    /// Opens (or starts) lane `lane`'s file under `data_dir/lanes/`. A damaged file is kept
    /// aside (renamed `.damaged`) and reported, never silently dropped.
    pub fn open(data_dir: &Path, lane: &str) -> Result<(PendingPayments, Option<String>), String> {
        let dir = data_dir.join("lanes");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(format!("{lane}.pending.json"));
        let mut warning = None;
        let attempts = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
            Ok(m) if m.len() > MAX_FILE_BYTES => {
                warning = Some(set_aside(&path, "larger than 256 KiB"));
                Vec::new()
            }
            Ok(_) => {
                let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                match serde_json::from_slice::<Vec<PendingAttempt>>(&bytes) {
                    Ok(v) => v,
                    Err(e) => {
                        warning = Some(set_aside(&path, &e.to_string()));
                        Vec::new()
                    }
                }
            }
        };
        Ok((PendingPayments { path, attempts }, warning))
    }

    pub fn attempts(&self) -> &[PendingAttempt] {
        &self.attempts
    }

    /// Records an attempt before the terminal is asked. Refused (nothing asked) when the
    /// lane already has [`MAX_PENDING`] unsettled ones or the file cannot be written.
    pub fn begin(&mut self, attempt: PendingAttempt) -> Result<(), String> {
        if self.attempts.len() >= MAX_PENDING {
            return Err(format!(
                "{MAX_PENDING} earlier payments at this lane are still unsettled at the terminal"
            ));
        }
        self.attempts.push(attempt);
        if let Err(e) = self.write() {
            self.attempts.pop();
            return Err(e);
        }
        Ok(())
    }

    /// The attempt's outcome is settled: forget it.
    pub fn settle(&mut self, sale_ref: &str) -> Result<(), String> {
        let before = self.attempts.len();
        self.attempts.retain(|a| a.sale_ref != sale_ref);
        if self.attempts.len() == before {
            return Ok(());
        }
        self.write()
    }

    fn write(&self) -> Result<(), String> {
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec(&self.attempts).map_err(|e| e.to_string())?;
        let io = |e: std::io::Error| format!("{}: {e}", tmp.display());
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&body).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(|e| format!("{}: {e}", self.path.display()))?;
        if let Some(dir) = self.path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

fn set_aside(path: &Path, why: &str) -> String {
    let aside = path.with_extension("json.damaged");
    let _ = std::fs::rename(path, &aside);
    format!(
        "{} could not be read ({why}); kept as {}: check the terminal's own journal for its \
         payments",
        path.display(),
        aside.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use aisle_protocol::Currency;

    fn attempt(n: u32) -> PendingAttempt {
        PendingAttempt {
            sale_ref: format!("1-100:{n}"),
            sale_id: "1-100".into(),
            amount: Money::new(250, Currency::parse("CNY").unwrap()),
            since_ms: 5,
        }
    }

    #[test]
    fn attempts_survive_a_restart_until_settled() {
        let dir = tempfile::tempdir().unwrap();
        let (mut p, warn) = PendingPayments::open(dir.path(), "1").unwrap();
        assert!(warn.is_none());
        p.begin(attempt(1)).unwrap();
        p.begin(attempt(2)).unwrap();
        let (mut again, _) = PendingPayments::open(dir.path(), "1").unwrap();
        assert_eq!(again.attempts(), &[attempt(1), attempt(2)]);
        again.settle("1-100:1").unwrap();
        let (third, _) = PendingPayments::open(dir.path(), "1").unwrap();
        assert_eq!(third.attempts(), &[attempt(2)]);
        // Another lane has its own file.
        let (other, _) = PendingPayments::open(dir.path(), "2").unwrap();
        assert!(other.attempts().is_empty());
    }

    #[test]
    fn a_damaged_file_is_kept_aside_and_said() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("lanes")).unwrap();
        std::fs::write(dir.path().join("lanes/1.pending.json"), b"{not json").unwrap();
        let (p, warn) = PendingPayments::open(dir.path(), "1").unwrap();
        assert!(p.attempts().is_empty());
        assert!(warn.unwrap().contains("could not be read"));
        assert!(dir.path().join("lanes/1.pending.json.damaged").exists());
    }

    #[test]
    fn a_lane_keeps_at_most_so_many_unsettled() {
        let dir = tempfile::tempdir().unwrap();
        let (mut p, _) = PendingPayments::open(dir.path(), "1").unwrap();
        for n in 0..MAX_PENDING as u32 {
            p.begin(attempt(n)).unwrap();
        }
        assert!(p.begin(attempt(999)).is_err());
        assert_eq!(p.attempts().len(), MAX_PENDING);
    }
}
