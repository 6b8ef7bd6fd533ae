//! The pseudo-terminal a simulated serial device sits behind: the driver under test opens the
//! slave side by its name (or by a stable link to it, as a udev `/dev/serial/by-id/` name), the
//! simulator reads and writes the master side.
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serialport::{SerialPort, TTYPort};

/// One open pseudo-terminal. Dropping it closes both sides (what an unplug looks like).
#[derive(Debug)]
pub struct SimPort {
    pub master: TTYPort,
    _slave: TTYPort,
    /// The slave side's path, e.g. `/dev/pts/7`.
    pub name: String,
}

/// Opens a pseudo-terminal whose master reads time out after `read_timeout`; with `link`,
/// (re)points that symlink at the slave side atomically (a replugged device under its old name).
pub fn open(link: Option<&Path>, read_timeout: Duration) -> Result<SimPort> {
    let (mut master, slave) = TTYPort::pair().context("open a pseudo-terminal")?;
    master.set_timeout(read_timeout)?;
    let name = slave.name().ok_or_else(|| anyhow!("pty without a name"))?;
    if let Some(link) = link {
        let tmp = link.with_extension("new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&name, &tmp)
            .with_context(|| format!("link {}", tmp.display()))?;
        std::fs::rename(&tmp, link).with_context(|| format!("link {}", link.display()))?;
    }
    Ok(SimPort {
        master,
        _slave: slave,
        name,
    })
}
