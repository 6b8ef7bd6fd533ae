//! Files written so that a failure at any point leaves the old state or the new one, never a
//! mix: each file is written under a temporary name in its own directory, flushed to disk, and
//! renamed over its target only when everything is ready. What was replaced is kept until the
//! whole set is in place, and put back if it cannot be.
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;

fn sibling(target: &Path, tag: &str) -> std::io::Result<PathBuf> {
    let name = target
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} has no file name", target.display())))?;
    let mut suffix = [0u8; 6];
    rand::rng().fill_bytes(&mut suffix);
    let temp = format!(".{}.{tag}-{}", name.to_string_lossy(), hex::encode(suffix));
    Ok(target.with_file_name(temp))
}

/// Syncs a directory so a rename in it survives power loss.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A file written under a temporary name, renamed over its target by [`StagedFile::commit`];
/// removed when dropped uncommitted.
#[derive(Debug)]
pub struct StagedFile {
    temp: PathBuf,
    target: PathBuf,
    file: File,
    committed: bool,
}

impl StagedFile {
    /// Creates the temporary file next to `target` with `mode` (exactly, whatever the umask).
    pub fn create(target: &Path, mode: u32) -> std::io::Result<StagedFile> {
        let temp = sibling(target, "staged")?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        let staged = StagedFile {
            temp,
            target: target.to_path_buf(),
            file,
            committed: false,
        };
        std::fs::set_permissions(&staged.temp, std::fs::Permissions::from_mode(mode))?;
        Ok(staged)
    }

    /// Replaces the contents and flushes them to disk. When `reserve` is larger than the
    /// contents, that many bytes are first written (and flushed) so the disk space is claimed
    /// now, and a later `write` of at most `reserve` bytes does not need more.
    pub fn write(&mut self, contents: &[u8], reserve: usize) -> std::io::Result<()> {
        if reserve > contents.len() {
            self.file.seek(SeekFrom::Start(0))?;
            self.file.write_all(&vec![b'\n'; reserve])?;
            self.file.sync_all()?;
        }
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(contents)?;
        self.file.set_len(contents.len() as u64)?;
        self.file.sync_all()
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Renames the file over its target and syncs the directory.
    pub fn commit(mut self) -> std::io::Result<()> {
        std::fs::rename(&self.temp, &self.target)?;
        self.committed = true;
        // A bare file name's parent is "": the current directory.
        match self.target.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
            Some(_) => sync_dir(Path::new(".")),
            None => Ok(()),
        }
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Commits staged files in order. If any fails, the ones already renamed are undone: the
/// previous files are put back, or the new ones removed where there was none.
pub fn commit_all(files: Vec<StagedFile>) -> std::io::Result<()> {
    // Hard links keep what each target held until the whole set is in place.
    let mut backups: Vec<(PathBuf, Option<PathBuf>)> = Vec::new();
    for f in &files {
        let backup = if f.target.exists() {
            let b = sibling(&f.target, "previous")?;
            if let Err(e) = std::fs::hard_link(&f.target, &b) {
                undo(&backups, false);
                return Err(e);
            }
            Some(b)
        } else {
            None
        };
        backups.push((f.target.clone(), backup));
    }
    for (done, f) in files.into_iter().enumerate() {
        if let Err(e) = f.commit() {
            undo(&backups[..done], true);
            undo(&backups[done..], false);
            return Err(e);
        }
    }
    undo(&backups, false);
    Ok(())
}

/// `restore`: put each backup back over its target (or remove a target that had none);
/// otherwise just remove the backups.
fn undo(backups: &[(PathBuf, Option<PathBuf>)], restore: bool) {
    for (target, backup) in backups {
        match (backup, restore) {
            (Some(b), true) => {
                let _ = std::fs::rename(b, target);
            }
            (None, true) => {
                let _ = std::fs::remove_file(target);
            }
            (Some(b), false) => {
                let _ = std::fs::remove_file(b);
            }
            (None, false) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn nothing_appears_until_commit_and_a_dropped_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("gateway.key");
        let mut f = StagedFile::create(&target, 0o600).unwrap();
        f.write(b"secret", 100).unwrap();
        assert!(!target.exists());
        drop(f);
        assert!(names(dir.path()).is_empty());
        let mut f = StagedFile::create(&target, 0o600).unwrap();
        f.write(b"new contents", 4096).unwrap();
        f.write(b"final", 0).unwrap();
        commit_all(vec![f]).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"final");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(names(dir.path()), vec!["gateway.key"]);
    }

    #[test]
    fn a_failed_commit_puts_the_previous_files_back() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("gateway.key");
        std::fs::write(&key, b"old key").unwrap();
        let mut a = StagedFile::create(&key, 0o600).unwrap();
        a.write(b"new key", 0).unwrap();
        // The second target is a non-empty directory: renaming a file over it fails.
        let blocked = dir.path().join("agent.toml");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("x"), b"").unwrap();
        let mut b = StagedFile::create(&blocked, 0o600).unwrap();
        b.write(b"config", 0).unwrap();
        assert!(commit_all(vec![a, b]).is_err());
        assert_eq!(std::fs::read(&key).unwrap(), b"old key");
        assert_eq!(names(dir.path()), vec!["agent.toml", "gateway.key"]);
    }
}
