//! The device model the lane sees, after UnifiedPOS: a device is opened (configured, no I/O),
//! claimed (a thread takes the serial port, exclusively), enabled (it delivers data), disabled,
//! released and closed (dropped). What happens arrives as [`DeviceEvent`]s: data, status
//! changes and errors.
//!
//! ```text
//!  Scanner / Scale handle ──Control──▶ ┌ device thread (one per port) ───────────┐ ──▶ serial port
//!                                      │ open path ─ fail ─▶ Disconnected,         │
//!  events Receiver ◀──DeviceEvent───── │   backoff, reopen the same path           │ ◀── bytes
//!                                      │ ScanFramer+parse_scan / ScaleDecoder       │
//!                                      └──────────────────────────────────────────┘
//! ```
//!
//! * Hot unplug: a read or write error (a USB adapter pulled out, a pty whose other end went)
//!   closes the port, reports [`DeviceStatus::Disconnected`] and reopens the same path after a
//!   full-jitter [`Backoff`], so a device plugged back under the same (udev) name is picked up;
//!   [`DeviceStatus::Online`] again once it is open. Every change is one status event.
//! * A scanner delivers a [`Scan`] per frame while enabled; frames while disabled are dropped.
//!   Bad frames (noise, a frame that lost its suffix, a bad check digit) are
//!   [`DeviceEvent::Error`]s; the next frame is read cleanly.
//! * A scale is asked, never trusted to talk: [`Scale::weigh`] sends the protocol's request and
//!   waits for the answer; a scale that does not answer within its timeout is reported
//!   [`DeviceStatus::Offline`] (the port is still there) until it answers again.
//! * Every queue is bounded; the thread never blocks on the caller for longer than the caller
//!   takes to read its events.
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serialport::{SerialPort, TTYPort};

use crate::backoff::Backoff;
use crate::scale::{Reading, ScaleDecoder, ScaleError, ScaleProtocol};
use crate::scanner::{Framed, Scan, ScanConfig, ScanError, ScanFramer, ScanSuffix, parse_scan};
use crate::serial::SerialSettings;

/// Where the device is, as UnifiedPOS's power and state properties would say.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum DeviceStatus {
    /// Not claimed: no thread, no port.
    Closed,
    /// The port is open and the device answers (or, for a scanner, may send).
    Online,
    /// The port is open but the device does not answer.
    Offline { reason: String },
    /// The port is gone or failed; reopened after `retry_in`.
    Disconnected { reason: String, retry_in_ms: u64 },
}

/// The life cycle of one logical device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    Opened,
    Claimed,
    Enabled,
}

/// What went wrong, in words for the lane and the attendant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("the device is not claimed")]
    NotClaimed,
    #[error("the device is not enabled")]
    NotEnabled,
    #[error("the device is busy with another request")]
    Busy,
    #[error("the device is disconnected: {0}")]
    Disconnected(String),
    #[error("the device thread has stopped")]
    Stopped,
    #[error("cannot start the device thread: {0}")]
    Thread(String),
    #[error("{0}")]
    Scale(ScaleError),
    #[error("bad scan {raw:?}: {error}")]
    BadScan { raw: String, error: ScanError },
    #[error("noise on the scanner line: {dropped} bytes without an end dropped")]
    Noise { dropped: usize },
    #[error("a scan without its suffix was dropped: {raw:?}")]
    MissingSuffix { raw: String },
}

/// One event from a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceEvent<D> {
    Data(D),
    Status(DeviceStatus),
    Error(DeviceError),
}

/// Printable form of device bytes for messages (bounded).
pub fn shown(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes.iter().take(64) {
        if b.is_ascii_graphic() || b == b' ' {
            s.push(char::from(b));
        } else if b == 0x1d {
            s.push_str("<GS>");
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    if bytes.len() > 64 {
        s.push('…');
    }
    s
}

/// How long a read waits before the thread looks at its commands and timers.
const POLL: Duration = Duration::from_millis(10);
const READ_CHUNK: usize = 1024;

enum Control<C> {
    /// Applied, then acknowledged: whatever is read after the caller returns sees it.
    Enable(bool, SyncSender<()>),
    Device(C),
    Stop,
}

/// What a device does with its port; the thread does the rest.
trait Handler: Send + 'static {
    type Data: Send + 'static;
    type Command: Send + 'static;
    /// The port opened (a fresh connection).
    fn opened(&mut self, out: &mut Out<'_, Self::Data>);
    /// The port closed; answer whatever waits.
    fn closed(&mut self, reason: &str);
    fn bytes(&mut self, bytes: &[u8], now: Instant, out: &mut Out<'_, Self::Data>);
    fn command(&mut self, c: Self::Command, now: Instant, out: &mut Out<'_, Self::Data>);
    /// Timers.
    fn tick(&mut self, now: Instant, out: &mut Out<'_, Self::Data>);
    fn deadline(&self) -> Option<Instant>;
    fn enable(&mut self, on: bool);
}

/// What a handler may do during a call: write to the port, emit events, set the status.
struct Out<'a, D> {
    writes: &'a mut Vec<u8>,
    events: &'a mut Vec<DeviceEvent<D>>,
    status: &'a mut Option<DeviceStatus>,
}

impl<D> Out<'_, D> {
    fn write(&mut self, b: &[u8]) {
        self.writes.extend_from_slice(b);
    }
    fn event(&mut self, e: DeviceEvent<D>) {
        self.events.push(e);
    }
    fn status(&mut self, s: DeviceStatus) {
        *self.status = Some(s);
    }
}

struct Shared {
    status: Mutex<DeviceStatus>,
    stop: AtomicBool,
}

impl Shared {
    fn status(&self) -> DeviceStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Port settings common to every serial device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortConfig {
    /// The device path, preferably a stable udev name (`/dev/serial/by-id/...`).
    pub path: String,
    pub serial: SerialSettings,
    pub backoff: Backoff,
    /// Events waiting for the caller.
    pub events: usize,
}

impl PortConfig {
    pub fn new(path: impl Into<String>, serial: SerialSettings) -> Self {
        PortConfig {
            path: path.into(),
            serial,
            backoff: Backoff::default(),
            events: 1024,
        }
    }
}

/// The running thread of a claimed device.
struct Running<C> {
    control: SyncSender<Control<C>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl<C> Running<C> {
    /// Enables or disables the device and waits until the thread applied it.
    fn set_enabled(&self, on: bool) -> Result<(), DeviceError> {
        let (tx, rx) = sync_channel(1);
        self.control
            .send(Control::Enable(on, tx))
            .map_err(|_| DeviceError::Stopped)?;
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(|_| DeviceError::Stopped)
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.control.try_send(Control::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<C> Drop for Running<C> {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn<H: Handler>(
    name: &str,
    port: PortConfig,
    handler: H,
    events: SyncSender<DeviceEvent<H::Data>>,
) -> Result<Running<H::Command>, DeviceError> {
    let (control_tx, control_rx) = sync_channel(64);
    let shared = Arc::new(Shared {
        status: Mutex::new(DeviceStatus::Closed),
        stop: AtomicBool::new(false),
    });
    let (ready_tx, ready_rx) = sync_channel(1);
    let worker = Worker {
        port_config: port,
        handler,
        control: control_rx,
        events,
        shared: Arc::clone(&shared),
        port: None,
        attempt: 0,
        retry_at: Instant::now(),
    };
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || worker.run(ready_tx))
        .map_err(|e| DeviceError::Thread(e.to_string()))?;
    // The first open attempt is quick (open(2) of a device node): claim reports its outcome.
    let _ = ready_rx.recv_timeout(Duration::from_secs(5));
    Ok(Running {
        control: control_tx,
        shared,
        thread: Some(thread),
    })
}

struct Worker<H: Handler> {
    port_config: PortConfig,
    handler: H,
    control: Receiver<Control<H::Command>>,
    events: SyncSender<DeviceEvent<H::Data>>,
    shared: Arc<Shared>,
    port: Option<TTYPort>,
    /// Failed attempts since the port last opened.
    attempt: u32,
    retry_at: Instant,
}

impl<H: Handler> Worker<H> {
    fn run(mut self, ready: SyncSender<()>) {
        self.try_open();
        let _ = ready.try_send(());
        while !self.shared.stop.load(Ordering::Acquire) {
            if self.port.is_some() {
                if !self.serve() {
                    break;
                }
            } else {
                let wait = self.retry_at.saturating_duration_since(Instant::now());
                match self.control.recv_timeout(wait) {
                    Ok(Control::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                    Ok(c) => self.control_msg(c),
                    Err(RecvTimeoutError::Timeout) => self.try_open(),
                }
            }
        }
        self.port = None;
        self.handler.closed("the device was released");
        self.set_status(DeviceStatus::Closed);
    }

    fn try_open(&mut self) {
        let cfg = &self.port_config;
        let opened = cfg
            .serial
            .builder(&cfg.path)
            .timeout(POLL)
            .open_native()
            .map_err(|e| format!("open {}: {e}", cfg.path));
        match opened {
            Ok(port) => {
                let _ = port.clear(serialport::ClearBuffer::Input);
                self.port = Some(port);
                self.attempt = 0;
                self.with_out(|h, out| {
                    out.status(DeviceStatus::Online);
                    h.opened(out);
                });
            }
            Err(e) => self.lost(e),
        }
    }

    fn lost(&mut self, reason: String) {
        self.port = None;
        self.handler.closed(&reason);
        let delay = self.port_config.backoff.delay(self.attempt, rand::random());
        self.attempt = self.attempt.saturating_add(1);
        self.retry_at = Instant::now() + delay;
        self.set_status(DeviceStatus::Disconnected {
            reason,
            retry_in_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        });
    }

    fn control_msg(&mut self, c: Control<H::Command>) {
        match c {
            Control::Enable(on, ack) => {
                self.handler.enable(on);
                let _ = ack.try_send(());
            }
            Control::Device(cmd) => {
                let now = Instant::now();
                self.with_out(|h, out| h.command(cmd, now, out));
            }
            Control::Stop => self.shared.stop.store(true, Ordering::Release),
        }
    }

    /// One round with the port open. False to stop.
    fn serve(&mut self) -> bool {
        loop {
            match self.control.try_recv() {
                Ok(Control::Stop) => return false,
                Ok(c) => self.control_msg(c),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return false,
            }
        }
        if self.port.is_none() {
            return true;
        }
        let now = Instant::now();
        let timeout = self
            .handler
            .deadline()
            .map_or(POLL, |d| d.saturating_duration_since(now).min(POLL))
            .max(Duration::from_millis(1));
        let mut buf = [0u8; READ_CHUNK];
        let result = match self.port.as_mut() {
            Some(port) => {
                let _ = port.set_timeout(timeout);
                port.read(&mut buf)
            }
            None => return true,
        };
        match result {
            Ok(0) => self.lost("the port closed".into()),
            Ok(n) => {
                let now = Instant::now();
                self.with_out(|h, out| h.bytes(&buf[..n], now, out));
            }
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                let now = Instant::now();
                self.with_out(|h, out| h.tick(now, out));
            }
            Err(e) => self.lost(format!("read {}: {e}", self.port_config.path)),
        }
        true
    }

    /// Runs a handler call, then writes, sets the status and delivers events.
    fn with_out(&mut self, f: impl FnOnce(&mut H, &mut Out<'_, H::Data>)) {
        let mut writes = Vec::new();
        let mut events = Vec::new();
        let mut status = None;
        f(
            &mut self.handler,
            &mut Out {
                writes: &mut writes,
                events: &mut events,
                status: &mut status,
            },
        );
        if let Some(s) = status {
            self.set_status(s);
        }
        for e in events {
            self.deliver(e);
        }
        if !writes.is_empty() {
            let path = self.port_config.path.clone();
            let failed = match self.port.as_mut() {
                Some(port) => port
                    .write_all(&writes)
                    .and_then(|()| port.flush())
                    .err()
                    .map(|e| format!("write {path}: {e}")),
                None => None,
            };
            if let Some(e) = failed {
                self.lost(e);
            }
        }
    }

    fn set_status(&mut self, s: DeviceStatus) {
        let changed = {
            let mut cur = self
                .shared
                .status
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let changed = *cur != s;
            *cur = s.clone();
            changed
        };
        if changed {
            self.deliver(DeviceEvent::Status(s));
        }
    }

    /// Hands an event over, waiting while the caller's queue is full (unless stopping).
    fn deliver(&self, event: DeviceEvent<H::Data>) {
        let mut event = event;
        loop {
            match self.events.try_send(event) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(back)) => {
                    if self.shared.stop.load(Ordering::Acquire) {
                        return;
                    }
                    event = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Settings as a store configures them (TOML)

fn default_gap_ms() -> u64 {
    100
}

fn default_answer_ms() -> u64 {
    500
}

/// A scanner as configured, e.g. in TOML:
/// `{ path = "/dev/serial/by-id/usb-Honeywell...", serial = "9600 8N1", suffix = "cr", separator = "~" }`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScannerSettings {
    pub path: String,
    /// Default 9600 8N1.
    #[serde(default)]
    pub serial: Option<SerialSettings>,
    /// `cr` (default), `crlf` or `none`.
    #[serde(default)]
    pub suffix: Option<ScanSuffix>,
    /// Inter-character timeout in ms (default 100).
    #[serde(default = "default_gap_ms")]
    pub gap_ms: u64,
    /// The scanner's substitute for GS, if it is set to send one.
    #[serde(default)]
    pub separator: Option<char>,
}

impl ScannerSettings {
    /// The driver configuration, with the store's restricted-circulation layouts.
    pub fn config(&self, layouts: crate::scanner::Layouts) -> Result<ScannerConfig, String> {
        let mut scan = ScanConfig::new(layouts);
        if let Some(c) = self.separator {
            let b = u8::try_from(u32::from(c))
                .ok()
                .filter(u8::is_ascii)
                .ok_or_else(|| format!("separator {c:?} is not ASCII"))?;
            scan = scan.with_separator(b)?;
        }
        if !(5..=5_000).contains(&self.gap_ms) {
            return Err(format!("gap_ms {}: 5 to 5000", self.gap_ms));
        }
        let mut c = ScannerConfig::new(self.path.clone(), scan);
        c.port.serial = self.serial.unwrap_or(SerialSettings::default_8n1());
        c.suffix = self.suffix.unwrap_or(ScanSuffix::Cr);
        c.gap = Duration::from_millis(self.gap_ms);
        Ok(c)
    }
}

/// A scale as configured: `{ path = "...", protocol = "mt-sics", serial = "9600 8N1" }`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleSettings {
    pub path: String,
    /// `mt-sics`, `toledo` (kg), `toledo-lb`, `nci` or `cas`.
    pub protocol: String,
    /// Default: the protocol's usual settings.
    #[serde(default)]
    pub serial: Option<SerialSettings>,
    /// How long one answer may take, in ms (default 500).
    #[serde(default = "default_answer_ms")]
    pub answer_timeout_ms: u64,
}

impl ScaleSettings {
    pub fn config(&self) -> Result<ScaleConfig, String> {
        let protocol: ScaleProtocol = self.protocol.parse()?;
        if !(20..=30_000).contains(&self.answer_timeout_ms) {
            return Err(format!(
                "answer_timeout_ms {}: 20 to 30000",
                self.answer_timeout_ms
            ));
        }
        let mut c = ScaleConfig::new(self.path.clone(), protocol);
        if let Some(s) = self.serial {
            c.port.serial = s;
        }
        c.answer_timeout = Duration::from_millis(self.answer_timeout_ms);
        Ok(c)
    }
}

// ---------------------------------------------------------------------------------------------
// Scanner

/// A serial barcode scanner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannerConfig {
    pub port: PortConfig,
    pub suffix: ScanSuffix,
    /// Inter-character timeout: ends a frame without suffix, drops a frame that lost its one.
    pub gap: Duration,
    pub scan: ScanConfig,
}

impl ScannerConfig {
    pub fn new(path: impl Into<String>, scan: ScanConfig) -> Self {
        ScannerConfig {
            port: PortConfig::new(path, SerialSettings::default_8n1()),
            suffix: ScanSuffix::Cr,
            gap: Duration::from_millis(100),
            scan,
        }
    }
}

struct ScannerHandler {
    framer: ScanFramer,
    config: ScannerConfig,
    enabled: bool,
}

impl ScannerHandler {
    fn framed(&mut self, framed: Vec<Framed>, out: &mut Out<'_, Scan>) {
        for f in framed {
            let event = match f {
                Framed::Frame(raw) => {
                    if !self.enabled {
                        continue;
                    }
                    let today = time::OffsetDateTime::now_utc().date();
                    match parse_scan(&raw, &self.config.scan, today) {
                        Ok(scan) => DeviceEvent::Data(scan),
                        Err(error) => DeviceEvent::Error(DeviceError::BadScan {
                            raw: shown(&raw),
                            error,
                        }),
                    }
                }
                Framed::Overlong { dropped, .. } => {
                    DeviceEvent::Error(DeviceError::Noise { dropped })
                }
                Framed::MissingSuffix(raw) => {
                    DeviceEvent::Error(DeviceError::MissingSuffix { raw: shown(&raw) })
                }
            };
            out.event(event);
        }
    }
}

impl Handler for ScannerHandler {
    type Data = Scan;
    type Command = ();

    fn opened(&mut self, _out: &mut Out<'_, Scan>) {
        self.framer = new_framer(&self.config);
    }
    fn closed(&mut self, _reason: &str) {}
    fn bytes(&mut self, bytes: &[u8], now: Instant, out: &mut Out<'_, Scan>) {
        let mut framed = Vec::new();
        self.framer.push(bytes, now, &mut framed);
        self.framed(framed, out);
    }
    fn command(&mut self, _c: (), _now: Instant, _out: &mut Out<'_, Scan>) {}
    fn tick(&mut self, now: Instant, out: &mut Out<'_, Scan>) {
        let mut framed = Vec::new();
        self.framer.poll(now, &mut framed);
        self.framed(framed, out);
    }
    fn deadline(&self) -> Option<Instant> {
        self.framer.deadline()
    }
    fn enable(&mut self, on: bool) {
        self.enabled = on;
    }
}

fn new_framer(c: &ScannerConfig) -> ScanFramer {
    ScanFramer::new(c.suffix, c.scan.max_len, c.gap)
}

/// A barcode scanner after UnifiedPOS: open → claim → enable; scans arrive as events.
#[derive(Debug)]
pub struct Scanner {
    config: ScannerConfig,
    events: SyncSender<DeviceEvent<Scan>>,
    running: Option<Running<()>>,
    enabled: bool,
}

impl<C> std::fmt::Debug for Running<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").finish_non_exhaustive()
    }
}

impl Scanner {
    /// Opens the logical device (no I/O yet). Events arrive on the receiver.
    pub fn open(config: ScannerConfig) -> (Scanner, Receiver<DeviceEvent<Scan>>) {
        let (tx, rx) = sync_channel(config.port.events.max(1));
        (
            Scanner {
                config,
                events: tx,
                running: None,
                enabled: false,
            },
            rx,
        )
    }

    /// Takes the port: starts the device thread, which opens the port (and keeps reopening it
    /// while it is unplugged). Returns the status after the first attempt.
    pub fn claim(&mut self) -> Result<DeviceStatus, DeviceError> {
        if let Some(r) = &self.running {
            return Ok(r.shared.status());
        }
        let handler = ScannerHandler {
            framer: new_framer(&self.config),
            config: self.config.clone(),
            enabled: false,
        };
        let running = spawn(
            "scanner",
            self.config.port.clone(),
            handler,
            self.events.clone(),
        )?;
        let status = running.shared.status();
        self.running = Some(running);
        Ok(status)
    }

    /// Starts (true) or stops (false) delivering scans. Frames read while disabled are dropped.
    pub fn set_enabled(&mut self, on: bool) -> Result<(), DeviceError> {
        let r = self.running.as_ref().ok_or(DeviceError::NotClaimed)?;
        r.set_enabled(on)?;
        self.enabled = on;
        Ok(())
    }

    pub fn enable(&mut self) -> Result<(), DeviceError> {
        self.set_enabled(true)
    }

    pub fn disable(&mut self) -> Result<(), DeviceError> {
        self.set_enabled(false)
    }

    /// Gives the port back: stops the thread (a [`DeviceStatus::Closed`] event follows).
    pub fn release(&mut self) {
        self.running = None;
        self.enabled = false;
    }

    pub fn state(&self) -> DeviceState {
        match (&self.running, self.enabled) {
            (None, _) => DeviceState::Opened,
            (Some(_), false) => DeviceState::Claimed,
            (Some(_), true) => DeviceState::Enabled,
        }
    }

    pub fn status(&self) -> DeviceStatus {
        self.running
            .as_ref()
            .map_or(DeviceStatus::Closed, |r| r.shared.status())
    }
}

// ---------------------------------------------------------------------------------------------
// Scale

/// A serial scale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleConfig {
    pub port: PortConfig,
    pub protocol: ScaleProtocol,
    /// How long the scale may take to answer one request.
    pub answer_timeout: Duration,
    /// Pause between requests while waiting for a stable weight.
    pub repoll: Duration,
}

impl ScaleConfig {
    /// The protocol's usual line settings, 500 ms per answer.
    pub fn new(path: impl Into<String>, protocol: ScaleProtocol) -> Self {
        ScaleConfig {
            port: PortConfig::new(path, protocol.serial_defaults()),
            protocol,
            answer_timeout: Duration::from_millis(500),
            repoll: Duration::from_millis(50),
        }
    }
}

/// What [`Scale::weigh`] asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeighRequest {
    /// Wait for a stable weight (keep asking while it moves) instead of taking the first.
    pub stable_only: bool,
    /// Longest the whole request may take.
    pub timeout: Duration,
}

impl WeighRequest {
    pub fn stable(timeout: Duration) -> Self {
        WeighRequest {
            stable_only: true,
            timeout,
        }
    }
}

type WeighReply = SyncSender<Result<Reading, DeviceError>>;

struct Pending {
    request: WeighRequest,
    reply: WeighReply,
    until: Instant,
    /// When the current request's answer is due.
    answer_by: Instant,
    /// When to ask again (after a moving reading).
    ask_at: Option<Instant>,
    last_moving: Option<Reading>,
}

struct ScaleHandler {
    protocol: ScaleProtocol,
    decoder: ScaleDecoder,
    answer_timeout: Duration,
    repoll: Duration,
    enabled: bool,
    pending: Option<Pending>,
    /// Whether the scale has answered since it last went quiet.
    answering: bool,
}

impl ScaleHandler {
    fn ask(&mut self, now: Instant, out: &mut Out<'_, Reading>) {
        self.decoder.reset();
        out.write(self.protocol.request());
        if let Some(p) = &mut self.pending {
            p.answer_by = now + self.answer_timeout;
            p.ask_at = None;
        }
    }

    fn finish(&mut self, r: Result<Reading, DeviceError>) {
        if let Some(p) = self.pending.take() {
            let _ = p.reply.try_send(r);
        }
    }
}

impl Handler for ScaleHandler {
    type Data = Reading;
    type Command = (WeighRequest, WeighReply);

    fn opened(&mut self, _out: &mut Out<'_, Reading>) {
        self.decoder.reset();
        self.answering = true;
    }

    fn closed(&mut self, reason: &str) {
        self.finish(Err(DeviceError::Disconnected(reason.to_string())));
    }

    fn bytes(&mut self, bytes: &[u8], now: Instant, out: &mut Out<'_, Reading>) {
        let mut replies = Vec::new();
        self.decoder.push(bytes, &mut replies);
        for reply in replies {
            if !self.answering {
                self.answering = true;
                out.status(DeviceStatus::Online);
            }
            let Some(p) = &mut self.pending else {
                // Unsolicited (a continuous-output scale between requests).
                continue;
            };
            match reply {
                Ok(r @ Reading::Stable(_)) => self.finish(Ok(r)),
                Ok(r @ Reading::Moving(_)) if p.request.stable_only => {
                    p.last_moving = Some(r);
                    if self.protocol.request().is_empty() {
                        p.answer_by = now + self.answer_timeout;
                    } else {
                        p.ask_at = Some(now + self.repoll);
                        p.answer_by = now + self.repoll + self.answer_timeout;
                    }
                }
                Ok(r) => self.finish(Ok(r)),
                // Busy: ask again until the request's time is up.
                Err(ScaleError::NotExecutable) if p.request.stable_only => {
                    p.ask_at = Some(now + self.repoll);
                    p.answer_by = now + self.repoll + self.answer_timeout;
                }
                Err(e) => self.finish(Err(DeviceError::Scale(e))),
            }
        }
    }

    fn command(
        &mut self,
        (request, reply): (WeighRequest, WeighReply),
        now: Instant,
        out: &mut Out<'_, Reading>,
    ) {
        if !self.enabled {
            let _ = reply.try_send(Err(DeviceError::NotEnabled));
            return;
        }
        if self.pending.is_some() {
            let _ = reply.try_send(Err(DeviceError::Busy));
            return;
        }
        self.pending = Some(Pending {
            request,
            reply,
            until: now + request.timeout,
            answer_by: now,
            ask_at: None,
            last_moving: None,
        });
        self.ask(now, out);
    }

    fn tick(&mut self, now: Instant, out: &mut Out<'_, Reading>) {
        let Some(p) = &self.pending else { return };
        if now >= p.answer_by {
            let silent = self.answer_timeout;
            self.decoder.reset();
            self.answering = false;
            out.status(DeviceStatus::Offline {
                reason: format!("no answer within {} ms", silent.as_millis()),
            });
            self.finish(Err(DeviceError::Scale(ScaleError::Offline)));
            return;
        }
        if now >= p.until {
            self.finish(Err(DeviceError::Scale(ScaleError::NotStable)));
            return;
        }
        if p.ask_at.is_some_and(|t| now >= t) {
            self.ask(now, out);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let p = self.pending.as_ref()?;
        let mut d = p.answer_by.min(p.until);
        if let Some(a) = p.ask_at {
            d = d.min(a);
        }
        Some(d)
    }

    fn enable(&mut self, on: bool) {
        self.enabled = on;
        if !on {
            self.finish(Err(DeviceError::NotEnabled));
        }
    }
}

/// A scale after UnifiedPOS: open → claim → enable → [`weigh`](Scale::weigh).
#[derive(Debug)]
pub struct Scale {
    config: ScaleConfig,
    events: SyncSender<DeviceEvent<Reading>>,
    running: Option<Running<(WeighRequest, WeighReply)>>,
    enabled: bool,
}

impl Scale {
    /// Opens the logical device (no I/O yet). Status events arrive on the receiver.
    pub fn open(config: ScaleConfig) -> (Scale, Receiver<DeviceEvent<Reading>>) {
        let (tx, rx) = sync_channel(config.port.events.max(1));
        (
            Scale {
                config,
                events: tx,
                running: None,
                enabled: false,
            },
            rx,
        )
    }

    /// Takes the port (see [`Scanner::claim`]).
    pub fn claim(&mut self) -> Result<DeviceStatus, DeviceError> {
        if let Some(r) = &self.running {
            return Ok(r.shared.status());
        }
        let handler = ScaleHandler {
            protocol: self.config.protocol,
            decoder: ScaleDecoder::new(self.config.protocol),
            answer_timeout: self.config.answer_timeout,
            repoll: self.config.repoll,
            enabled: false,
            pending: None,
            answering: true,
        };
        let running = spawn(
            "scale",
            self.config.port.clone(),
            handler,
            self.events.clone(),
        )?;
        let status = running.shared.status();
        self.running = Some(running);
        Ok(status)
    }

    pub fn set_enabled(&mut self, on: bool) -> Result<(), DeviceError> {
        let r = self.running.as_ref().ok_or(DeviceError::NotClaimed)?;
        r.set_enabled(on)?;
        self.enabled = on;
        Ok(())
    }

    pub fn enable(&mut self) -> Result<(), DeviceError> {
        self.set_enabled(true)
    }

    pub fn disable(&mut self) -> Result<(), DeviceError> {
        self.set_enabled(false)
    }

    /// Asks the scale for a weight and waits for it (blocking: call it from a blocking task).
    /// With `stable_only`, a moving weight is asked again until stable or `timeout`
    /// ([`ScaleError::NotStable`]); a scale that does not answer gives [`ScaleError::Offline`].
    pub fn weigh(&self, request: WeighRequest) -> Result<Reading, DeviceError> {
        let r = self.running.as_ref().ok_or(DeviceError::NotClaimed)?;
        if !self.enabled {
            return Err(DeviceError::NotEnabled);
        }
        if let DeviceStatus::Disconnected { reason, .. } = r.shared.status() {
            return Err(DeviceError::Disconnected(reason));
        }
        let (tx, rx) = sync_channel(1);
        r.control
            .send(Control::Device((request, tx)))
            .map_err(|_| DeviceError::Stopped)?;
        // The thread answers every request by its deadline; the margin covers a port that
        // blocks a write.
        match rx.recv_timeout(
            request
                .timeout
                .max(self.config.answer_timeout)
                .saturating_add(Duration::from_secs(2)),
        ) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(DeviceError::Scale(ScaleError::Offline)),
            Err(RecvTimeoutError::Disconnected) => Err(DeviceError::Stopped),
        }
    }

    /// Gives the port back: stops the thread.
    pub fn release(&mut self) {
        self.running = None;
        self.enabled = false;
    }

    pub fn state(&self) -> DeviceState {
        match (&self.running, self.enabled) {
            (None, _) => DeviceState::Opened,
            (Some(_), false) => DeviceState::Claimed,
            (Some(_), true) => DeviceState::Enabled,
        }
    }

    pub fn status(&self) -> DeviceStatus {
        self.running
            .as_ref()
            .map_or(DeviceStatus::Closed, |r| r.shared.status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scanner::Layouts;

    #[test]
    fn settings_from_toml() {
        let layouts = || Layouts::default_layouts().unwrap();
        let s: ScannerSettings = toml::from_str(
            "path = \"/dev/ttyACM0\"\nserial = \"115200 7E1\"\nsuffix = \"none\"\nseparator = \"~\"",
        )
        .unwrap();
        let c = s.config(layouts()).unwrap();
        assert_eq!(c.port.serial.to_string(), "115200 7E1");
        assert_eq!(c.suffix, ScanSuffix::None);
        assert_eq!(c.scan.separator, Some(b'~'));
        let s: ScannerSettings = toml::from_str("path = \"/dev/ttyACM0\"").unwrap();
        let c = s.config(layouts()).unwrap();
        assert_eq!(
            (c.suffix, c.gap),
            (ScanSuffix::Cr, Duration::from_millis(100))
        );
        let bad: ScannerSettings = toml::from_str("path = \"x\"\nseparator = \"A\"").unwrap();
        assert!(bad.config(layouts()).is_err());
        assert!(toml::from_str::<ScannerSettings>("path = \"x\"\nbaud = 1").is_err());

        let s: ScaleSettings =
            toml::from_str("path = \"/dev/ttyUSB0\"\nprotocol = \"toledo\"").unwrap();
        let c = s.config().unwrap();
        assert_eq!(c.port.serial.to_string(), "9600 7E1");
        assert_eq!(
            c.protocol,
            ScaleProtocol::Toledo8217 {
                unit: crate::scale::WeightUnit::Kg
            }
        );
        let s: ScaleSettings = toml::from_str("path = \"x\"\nprotocol = \"scale9000\"").unwrap();
        assert!(s.config().unwrap_err().contains("mt-sics"));
    }
}
