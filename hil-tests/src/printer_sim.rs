//! A simulated ESC/POS receipt printer on a real pseudo-terminal: what `aisle-sim printer` runs,
//! and what tests and the demo run in-process. It answers DLE EOT 1, 2 and 4 from its state and
//! hands over every receipt (the bytes up to and including a cut, GS V) on a channel.
//!
//! Commands (from a file or stdin), one per line:
//!
//! ```text
//! ready          # online, paper loaded
//! near-end       # the paper roll is nearly used up (still prints)
//! paper-out      # offline: paper end
//! cover-open     # offline: cover open
//! off            # answers nothing (switched off, or a printer without DLE EOT)
//! unplug / plug  # the USB cable (needs a link path)
//! quit
//! ```
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

/// Longest receipt kept before a cut (bytes); a longer one is dropped and reported.
pub const MAX_RECEIPT: usize = 1 << 20;

/// DLE EOT 1, 2 and 4 answers (0: silent).
const READY: [u8; 3] = [0x12, 0x12, 0x12];

/// One command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Ready,
    NearEnd,
    PaperOut,
    CoverOpen,
    Off,
    Unplug,
    Plug,
    Quit,
}

impl FromStr for Command {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.trim() {
            "ready" => Command::Ready,
            "near-end" => Command::NearEnd,
            "paper-out" => Command::PaperOut,
            "cover-open" => Command::CoverOpen,
            "off" => Command::Off,
            "unplug" => Command::Unplug,
            "plug" => Command::Plug,
            "quit" => Command::Quit,
            other => bail!(
                "{other:?}: ready, near-end, paper-out, cover-open, off, unplug, plug or quit"
            ),
        })
    }
}

/// What the printer hands over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Printed {
    /// Every byte of one receipt, up to and including its cut.
    Receipt(Vec<u8>),
    /// Bytes without a cut beyond [`MAX_RECEIPT`]: dropped.
    Overlong(usize),
}

use crate::pty::SimPort as Port;

fn open_pty(link: Option<&Path>) -> Result<Port> {
    crate::pty::open(link, Duration::from_millis(10))
}

struct Shared {
    port: Mutex<Option<Port>>,
    answers: Mutex<[u8; 3]>,
    stop: AtomicBool,
}

/// A running simulated printer.
pub struct PrinterSim {
    link: Option<PathBuf>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PrinterSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrinterSim")
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

impl PrinterSim {
    /// Starts the printer (online, paper loaded); receipts arrive on the receiver.
    pub fn start(link: Option<PathBuf>) -> Result<(PrinterSim, Receiver<Printed>)> {
        let port = open_pty(link.as_deref())?;
        let shared = Arc::new(Shared {
            port: Mutex::new(Some(port)),
            answers: Mutex::new(READY),
            stop: AtomicBool::new(false),
        });
        let (tx, rx) = sync_channel(64);
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("printer-sim".into())
            .spawn(move || run(&s, &tx))
            .context("start the printer thread")?;
        Ok((
            PrinterSim {
                link,
                shared,
                thread: Some(thread),
            },
            rx,
        ))
    }

    /// The path a driver opens: the link if configured, else the pty itself.
    pub fn path(&self) -> String {
        if let Some(l) = &self.link {
            return l.display().to_string();
        }
        self.shared
            .port
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default()
    }

    fn answer(&self, a: [u8; 3]) {
        *self
            .shared
            .answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = a;
    }

    /// Runs one command; says what it did.
    pub fn command(&self, c: Command) -> Result<String> {
        match c {
            Command::Ready => self.answer(READY),
            Command::NearEnd => self.answer([0x12, 0x12, 0x1e]),
            Command::PaperOut => self.answer([0x1a, 0x32, 0x72]),
            Command::CoverOpen => self.answer([0x1a, 0x16, 0x12]),
            Command::Off => self.answer([0, 0, 0]),
            Command::Unplug => {
                let link = self
                    .link
                    .as_deref()
                    .ok_or_else(|| anyhow!("unplug needs a link path (--link)"))?;
                // As udev does: the name goes first, then the device.
                let _ = std::fs::remove_file(link);
                *self
                    .shared
                    .port
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
            }
            Command::Plug => {
                let link = self
                    .link
                    .as_deref()
                    .ok_or_else(|| anyhow!("plug needs a link path (--link)"))?;
                let port = open_pty(Some(link))?;
                *self
                    .shared
                    .port
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(port);
            }
            Command::Quit => return Ok("bye".into()),
        }
        Ok(format!("printer: {c:?}"))
    }
}

impl Drop for PrinterSim {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared, out: &SyncSender<Printed>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut receipt: Vec<u8> = Vec::new();
    let mut dropped = 0usize;
    let mut buf = [0u8; 4096];
    while !shared.stop.load(Ordering::Relaxed) {
        let mut guard = shared.port.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(port) = guard.as_mut() else {
            drop(guard);
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        // A timeout reads as nothing.
        let n = port.master.read(&mut buf).unwrap_or_default();
        for &b in &buf[..n] {
            pending.push(b);
            match pending.as_slice() {
                [0x10] | [0x10, 0x04] => continue,
                [0x10, 0x04, q] => {
                    let answers = *shared
                        .answers
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    let a = match q {
                        1 => answers[0],
                        2 => answers[1],
                        4 => answers[2],
                        _ => 0,
                    };
                    if a != 0 {
                        let _ = port.master.write_all(&[a]);
                    }
                }
                data => {
                    if receipt.len() + data.len() > MAX_RECEIPT {
                        dropped += receipt.len();
                        receipt.clear();
                    }
                    receipt.extend_from_slice(data);
                    // GS V 65 n (and GS V 66 n): the cut ends a receipt.
                    let l = receipt.len();
                    if l >= 4
                        && receipt[l - 4..l - 2] == [0x1d, b'V']
                        && matches!(receipt[l - 2], 65 | 66)
                    {
                        if dropped > 0 {
                            let _ = out.try_send(Printed::Overlong(dropped));
                            dropped = 0;
                        }
                        let _ = out.try_send(Printed::Receipt(std::mem::take(&mut receipt)));
                    }
                }
            }
            pending.clear();
        }
        drop(guard);
        if n == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
