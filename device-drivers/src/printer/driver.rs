//! The serial receipt printer on its own thread: opens (and after an unplug, reopens) its port,
//! asks the printer how it is with DLE EOT, and prints one receipt at a time.
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serialport::{SerialPort, TTYPort};

use super::PrintError;
use super::escpos::{LineWidth, ReceiptLayout, TextEncoding};
use crate::serial::SerialSettings;
use crate::upos::{DeviceEvent, DeviceStatus, PortConfig};

const DLE: u8 = 0x10;
const EOT: u8 = 0x04;
/// Bits every DLE EOT answer has set (1, 4) and clear (0, 7).
const FIXED_MASK: u8 = 0x93;
const FIXED_BITS: u8 = 0x12;

/// The printer as the thread last saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PrinterStatus {
    pub device: DeviceStatus,
    /// The paper roll's near-end sensor: change the roll soon.
    pub paper_near_end: bool,
}

/// Events beside status changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrinterNotice {
    PaperNearEnd,
}

/// A serial receipt printer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrinterConfig {
    pub port: PortConfig,
    /// How long the printer may take to answer a status query.
    pub answer_timeout: Duration,
    /// Longest a write may wait for the printer to take data (it stops taking it when busy).
    pub write_timeout: Duration,
    /// How often an idle printer is asked how it is.
    pub poll: Duration,
    /// Ask with DLE EOT (false for a printer that does not answer it: then it is Online while
    /// its port is open).
    pub status_queries: bool,
}

impl PrinterConfig {
    pub fn new(path: impl Into<String>, serial: SerialSettings) -> Self {
        PrinterConfig {
            port: PortConfig::new(path, serial),
            answer_timeout: Duration::from_millis(500),
            write_timeout: Duration::from_secs(5),
            poll: Duration::from_secs(2),
            status_queries: true,
        }
    }
}

fn default_answer_ms() -> u64 {
    500
}
fn default_true() -> bool {
    true
}

/// A printer as configured (TOML): `{ path = "/dev/serial/by-id/...", serial = "19200 8N1",
/// width = 42, encoding = "gbk" }`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrinterSettings {
    pub path: String,
    /// Default 9600 8N1.
    #[serde(default)]
    pub serial: Option<SerialSettings>,
    /// 32, 42 (default) or 48 columns.
    #[serde(default)]
    pub width: Option<LineWidth>,
    /// `cp858` (default) or `gbk`.
    #[serde(default)]
    pub encoding: Option<TextEncoding>,
    #[serde(default = "default_answer_ms")]
    pub answer_timeout_ms: u64,
    /// Ask the printer for its status with DLE EOT (default true).
    #[serde(default = "default_true")]
    pub status_queries: bool,
}

impl PrinterSettings {
    pub fn config(&self) -> Result<(PrinterConfig, ReceiptLayout), String> {
        if !(20..=30_000).contains(&self.answer_timeout_ms) {
            return Err(format!(
                "answer_timeout_ms {}: 20 to 30000",
                self.answer_timeout_ms
            ));
        }
        let mut c = PrinterConfig::new(
            self.path.clone(),
            self.serial.unwrap_or(SerialSettings::default_8n1()),
        );
        c.answer_timeout = Duration::from_millis(self.answer_timeout_ms);
        c.status_queries = self.status_queries;
        let layout = ReceiptLayout::new(
            self.width.unwrap_or(LineWidth::Cols42),
            self.encoding.unwrap_or(TextEncoding::Cp858),
        );
        Ok((c, layout))
    }
}

type Job = (Vec<u8>, SyncSender<Result<(), PrintError>>);

struct Shared {
    status: Mutex<PrinterStatus>,
    stop: AtomicBool,
}

/// A receipt printer on its own thread (see the [module](super)). `print` blocks: call it from
/// a blocking task.
pub struct ReceiptPrinter {
    jobs: SyncSender<Job>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ReceiptPrinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptPrinter").finish_non_exhaustive()
    }
}

impl ReceiptPrinter {
    /// Starts the thread, which opens the port (and keeps reopening it while it is unplugged).
    /// Status changes arrive on the receiver (dropped if it is not read: [`status`](Self::status)
    /// is always current).
    pub fn start(
        config: PrinterConfig,
    ) -> Result<(ReceiptPrinter, Receiver<DeviceEvent<PrinterNotice>>), PrintError> {
        let (events_tx, events_rx) = sync_channel(config.port.events.max(1));
        let (jobs_tx, jobs_rx) = sync_channel(1);
        let shared = Arc::new(Shared {
            status: Mutex::new(PrinterStatus {
                device: DeviceStatus::Closed,
                paper_near_end: false,
            }),
            stop: AtomicBool::new(false),
        });
        let (ready_tx, ready_rx) = sync_channel(1);
        let worker = Worker {
            config,
            jobs: jobs_rx,
            events: events_tx,
            shared: Arc::clone(&shared),
            port: None,
            attempt: 0,
            retry_at: Instant::now(),
            last_reason: String::new(),
        };
        let thread = std::thread::Builder::new()
            .name("receipt-printer".into())
            .spawn(move || worker.run(ready_tx))
            .map_err(|e| PrintError::Thread(e.to_string()))?;
        let _ = ready_rx.recv_timeout(Duration::from_secs(5));
        Ok((
            ReceiptPrinter {
                jobs: jobs_tx,
                shared,
                thread: Some(thread),
            },
            events_rx,
        ))
    }

    pub fn status(&self) -> PrinterStatus {
        self.shared
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Prints `bytes` (a whole receipt from [`encode_receipt`](super::encode_receipt)): checks
    /// the printer, writes, checks again. Refused at once when the printer cannot print; never
    /// queued for later. Waits at most `timeout`.
    pub fn print(&self, bytes: Vec<u8>, timeout: Duration) -> Result<(), PrintError> {
        if let DeviceStatus::Disconnected { reason, .. } = self.status().device {
            return Err(PrintError::Disconnected(reason));
        }
        let (tx, rx) = sync_channel(1);
        match self.jobs.try_send((bytes, tx)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(PrintError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(PrintError::Stopped),
        }
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(PrintError::Offline(format!(
                "the receipt did not finish within {} ms",
                timeout.as_millis()
            ))),
            Err(RecvTimeoutError::Disconnected) => Err(PrintError::Stopped),
        }
    }
}

impl Drop for ReceiptPrinter {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the printer said.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Health {
    Ready {
        near_end: bool,
    },
    PaperOut,
    Offline(String),
    /// The port failed: the device is gone.
    Lost(String),
}

struct Worker {
    config: PrinterConfig,
    jobs: Receiver<Job>,
    events: SyncSender<DeviceEvent<PrinterNotice>>,
    shared: Arc<Shared>,
    port: Option<TTYPort>,
    attempt: u32,
    retry_at: Instant,
    last_reason: String,
}

/// Waits at most this long for a job before looking at the stop flag.
const TICK: Duration = Duration::from_millis(20);

impl Worker {
    fn run(mut self, ready: SyncSender<()>) {
        self.try_open();
        let _ = ready.try_send(());
        let mut next_poll = Instant::now() + self.config.poll;
        while !self.shared.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            let until = if self.port.is_some() {
                next_poll
            } else {
                self.retry_at
            };
            match self
                .jobs
                .recv_timeout(until.saturating_duration_since(now).min(TICK))
            {
                Ok((bytes, reply)) => {
                    let r = self.print(&bytes);
                    let _ = reply.try_send(r);
                    next_poll = Instant::now() + self.config.poll;
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    if Instant::now() < until {
                        continue;
                    }
                    if self.port.is_some() {
                        let h = self.health();
                        self.apply(&h);
                        next_poll = Instant::now() + self.config.poll;
                    } else {
                        self.try_open();
                    }
                }
            }
        }
        // Answer whatever waits.
        while let Ok((_, reply)) = self.jobs.try_recv() {
            let _ = reply.try_send(Err(PrintError::Stopped));
        }
        self.port = None;
        self.set_device(DeviceStatus::Closed);
    }

    fn try_open(&mut self) {
        let cfg = &self.config.port;
        match cfg
            .serial
            .builder(&cfg.path)
            .timeout(self.config.answer_timeout)
            .open_native()
        {
            Ok(port) => {
                let _ = port.clear(serialport::ClearBuffer::All);
                self.port = Some(port);
                self.attempt = 0;
                let h = self.health();
                self.apply(&h);
            }
            Err(e) => self.lost(format!("open {}: {e}", cfg.path)),
        }
    }

    fn lost(&mut self, reason: String) {
        self.port = None;
        let delay = self.config.port.backoff.delay(self.attempt, rand::random());
        self.attempt = self.attempt.saturating_add(1);
        self.retry_at = Instant::now() + delay;
        self.last_reason.clone_from(&reason);
        self.set_device(DeviceStatus::Disconnected {
            reason,
            retry_in_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        });
    }

    fn set_device(&mut self, s: DeviceStatus) {
        let changed = {
            let mut cur = self
                .shared
                .status
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let changed = cur.device != s;
            cur.device = s.clone();
            changed
        };
        if changed {
            let _ = self.events.try_send(DeviceEvent::Status(s));
        }
    }

    fn apply(&mut self, h: &Health) {
        match h {
            Health::Ready { near_end } => {
                let was = {
                    let mut cur = self
                        .shared
                        .status
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    std::mem::replace(&mut cur.paper_near_end, *near_end)
                };
                if *near_end && !was {
                    let _ = self
                        .events
                        .try_send(DeviceEvent::Data(PrinterNotice::PaperNearEnd));
                }
                self.set_device(DeviceStatus::Online);
            }
            Health::PaperOut => self.set_device(DeviceStatus::Offline {
                reason: "out of paper".into(),
            }),
            Health::Offline(reason) => self.set_device(DeviceStatus::Offline {
                reason: reason.clone(),
            }),
            Health::Lost(reason) => self.lost(reason.clone()),
        }
    }

    /// DLE EOT n, and its one-byte answer (bytes without the fixed bits are skipped as noise).
    fn ask(&mut self, n: u8) -> Result<Option<u8>, String> {
        let path = self.config.port.path.clone();
        let timeout = self.config.answer_timeout;
        let port = self.port.as_mut().ok_or("the port is closed")?;
        let _ = port.clear(serialport::ClearBuffer::Input);
        let _ = port.set_timeout(timeout);
        port.write_all(&[DLE, EOT, n])
            .and_then(|()| port.flush())
            .map_err(|e| format!("write {path}: {e}"))?;
        let until = Instant::now() + timeout;
        let mut buf = [0u8; 64];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let _ = port.set_timeout(left);
            match port.read(&mut buf) {
                Ok(0) => return Err("the port closed".into()),
                Ok(k) => {
                    if let Some(b) = buf[..k]
                        .iter()
                        .rev()
                        .find(|b| *b & FIXED_MASK == FIXED_BITS)
                    {
                        return Ok(Some(*b));
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                    return Ok(None);
                }
                Err(e) => return Err(format!("read {path}: {e}")),
            }
        }
    }

    fn health(&mut self) -> Health {
        if !self.config.status_queries {
            return Health::Ready { near_end: false };
        }
        let ms = self.config.answer_timeout.as_millis();
        let silent = move || {
            Health::Offline(format!(
                "no answer to a status query within {ms} ms (switched off?)"
            ))
        };
        let status = match self.ask(1) {
            Ok(Some(b)) => b,
            Ok(None) => return silent(),
            Err(e) => return Health::Lost(e),
        };
        if status & 0x08 != 0 {
            let cause = match self.ask(2) {
                Ok(Some(c)) => c,
                Ok(None) => return silent(),
                Err(e) => return Health::Lost(e),
            };
            return if cause & 0x20 != 0 {
                Health::PaperOut
            } else if cause & 0x04 != 0 {
                Health::Offline("the cover is open".into())
            } else if cause & 0x40 != 0 {
                Health::Offline("the printer reports an error (cutter or head)".into())
            } else {
                Health::Offline("the printer says it is offline".into())
            };
        }
        match self.ask(4) {
            Ok(Some(p)) if p & 0x60 != 0 => Health::PaperOut,
            Ok(Some(p)) => Health::Ready {
                near_end: p & 0x0c != 0,
            },
            Ok(None) => silent(),
            Err(e) => Health::Lost(e),
        }
    }

    fn refuse(h: &Health) -> Option<PrintError> {
        match h {
            Health::Ready { .. } => None,
            Health::PaperOut => Some(PrintError::PaperOut),
            Health::Offline(r) => Some(PrintError::Offline(r.clone())),
            Health::Lost(r) => Some(PrintError::Disconnected(r.clone())),
        }
    }

    fn print(&mut self, bytes: &[u8]) -> Result<(), PrintError> {
        if self.port.is_none() {
            return Err(PrintError::Disconnected(self.last_reason.clone()));
        }
        let before = self.health();
        self.apply(&before);
        if let Some(e) = Self::refuse(&before) {
            return Err(e);
        }
        let path = self.config.port.path.clone();
        let write_timeout = self.config.write_timeout;
        let written = match self.port.as_mut() {
            Some(port) => {
                let _ = port.set_timeout(write_timeout);
                port.write_all(bytes).and_then(|()| port.flush())
            }
            None => return Err(PrintError::Disconnected(self.last_reason.clone())),
        };
        if let Err(e) = written {
            if e.kind() == ErrorKind::TimedOut {
                let reason = format!(
                    "the printer stopped taking data for {} ms; the receipt may be incomplete",
                    write_timeout.as_millis()
                );
                self.apply(&Health::Offline(reason.clone()));
                return Err(PrintError::Offline(reason));
            }
            let reason = format!("write {path}: {e}; the receipt may be incomplete");
            self.lost(reason.clone());
            return Err(PrintError::Disconnected(reason));
        }
        // After the job: paper that ran out during it means a torn receipt.
        let after = self.health();
        self.apply(&after);
        match Self::refuse(&after) {
            None => Ok(()),
            Some(PrintError::PaperOut) => Err(PrintError::PaperOut),
            Some(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn settings_from_toml() {
        let s: PrinterSettings =
            toml::from_str("path = \"/dev/ttyUSB1\"\nwidth = 48\nencoding = \"gbk\"").unwrap();
        let (c, l) = s.config().unwrap();
        assert_eq!(l.width, LineWidth::Cols48);
        assert_eq!(l.encoding, TextEncoding::Gbk);
        assert_eq!(c.port.serial.to_string(), "9600 8N1");
        let s: PrinterSettings = toml::from_str("path = \"x\"").unwrap();
        assert_eq!(s.config().unwrap().1.width, LineWidth::Cols42);
        assert!(toml::from_str::<PrinterSettings>("path = \"x\"\nwidth = 40").is_err());
        assert!(toml::from_str::<PrinterSettings>("path = \"x\"\nencoding = \"ebcdic\"").is_err());
        let s: PrinterSettings = toml::from_str("path = \"x\"\nanswer_timeout_ms = 1").unwrap();
        assert!(s.config().is_err());
    }
}
