//! The access-point driver: [`ApLink`] on a dedicated thread against a serial port.
//!
//! ```text
//! ApHandle::send ──Input::Submit──▶ ┌ driver thread ──────────────┐ ──write──▶ port
//!                                   │ ApLink (pure)               │
//! reader thread ──Input::Bytes────▶ │ reconnect, backoff, status  │ ──ApEvent──▶ events Receiver
//!   (blocking reads, per connection)└─────────────────────────────┘
//! ```
//!
//! Nothing here runs on an async runtime: the agent wraps the std channel. Every queue is
//! bounded: submissions by [`ApConfig::queue`] (a full queue is refused at once), events by
//! [`ApConfig::events`] (a full event queue makes the driver wait, which stops it reading, which
//! lets the access point's own queue push back), reader chunks by a fixed count.
//!
//! When the port fails or disappears (a USB access point unplugged, a read or write error, the
//! access point silent past its timeout), everything in flight ends as
//! [`SendOutcome::LinkDown`](super::SendOutcome::LinkDown), sends are refused with
//! [`SendError::Disconnected`], and the driver reopens the same path after a full-jitter backoff
//! ([`Backoff`]), so a device that comes back under the same name (a udev
//! `/dev/serial/by-id/` link) is picked up again. Attempts start over once the access point
//! has answered on a new connection, not merely when the port opened.
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aisle_protocol::esl::{ApStatus, Seq};
use serialport::{SerialPort, TTYPort};

use super::link::{ApEvent, ApLink, LinkConfig, LinkState, LinkStats, RadioPacket, SendId};
use crate::backoff::Backoff;

/// How to reach the access point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApConfig {
    /// The device path, preferably a stable udev name (`/dev/serial/by-id/...`).
    pub path: String,
    pub baud: u32,
    pub link: LinkConfig,
    /// Submitted packets not yet finished (waiting, in flight), beyond which sends are refused.
    pub queue: usize,
    /// Events waiting for the caller.
    pub events: usize,
    pub backoff: Backoff,
    /// Longest a write may block (a port that takes nothing is a dead port).
    pub write_timeout: Duration,
}

impl ApConfig {
    pub fn new(path: impl Into<String>) -> Self {
        ApConfig {
            path: path.into(),
            baud: 115_200,
            link: LinkConfig::default(),
            queue: 4096,
            events: 4096,
            backoff: Backoff::default(),
            write_timeout: Duration::from_secs(1),
        }
    }
}

/// Why a send was refused at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the access point is not connected")]
    Disconnected,
    #[error("the access point's send queue is full")]
    QueueFull,
    #[error("the access-point driver has stopped")]
    Stopped,
}

/// What the driver reports about its link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApLinkStatus {
    pub path: String,
    pub state: LinkState,
    /// The last error the link met, kept after it recovered.
    pub last_error: Option<String>,
    /// The access point's last status.
    pub ap: Option<ApStatus>,
    pub stats: LinkStats,
}

impl ApLinkStatus {
    pub fn is_connected(&self) -> bool {
        matches!(self.state, LinkState::Connected { .. })
    }
}

enum Input {
    Submit(SendId, RadioPacket),
    /// Bytes read on connection `generation`.
    Bytes(u64, Vec<u8>),
    ReadFailed(u64, String),
    Stop,
}

struct Shared {
    status: Mutex<ApLinkStatus>,
    connected: AtomicBool,
    outstanding: AtomicUsize,
    next_id: AtomicU64,
    stop: AtomicBool,
    /// The current connection; readers of older ones stop.
    generation: AtomicU64,
}

impl Shared {
    fn status(&self) -> std::sync::MutexGuard<'_, ApLinkStatus> {
        // The status is plain data: a panic elsewhere cannot leave it half-written.
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The caller's end of a running access-point driver. Dropping it stops the driver.
#[derive(Debug)]
pub struct ApHandle {
    input: SyncSender<Input>,
    shared: Arc<Shared>,
    queue: usize,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// Reader chunks waiting for the driver thread.
const READ_CHUNKS: usize = 64;
const READ_CHUNK: usize = 4096;
/// How often a blocked reader looks whether it should stop.
const READ_POLL: Duration = Duration::from_millis(50);

/// Starts the driver thread for `config`. Events arrive on the returned receiver.
pub fn spawn(config: ApConfig) -> std::io::Result<(ApHandle, Receiver<ApEvent>)> {
    let (input_tx, input_rx) = sync_channel(config.queue.saturating_add(READ_CHUNKS + 1));
    let (event_tx, event_rx) = sync_channel(config.events.max(1));
    let shared = Arc::new(Shared {
        status: Mutex::new(ApLinkStatus {
            path: config.path.clone(),
            state: LinkState::Connecting,
            last_error: None,
            ap: None,
            stats: LinkStats::default(),
        }),
        connected: AtomicBool::new(false),
        outstanding: AtomicUsize::new(0),
        next_id: AtomicU64::new(1),
        stop: AtomicBool::new(false),
        generation: AtomicU64::new(0),
    });
    let queue = config.queue;
    let driver = Driver {
        link: ApLink::new(config.link, Instant::now()),
        config,
        shared: Arc::clone(&shared),
        input_tx: input_tx.clone(),
        input: input_rx,
        events: event_tx,
        port: None,
        attempt: 0,
        answered: false,
        retry_at: Instant::now(),
    };
    let thread = std::thread::Builder::new()
        .name("esl-ap".into())
        .spawn(move || driver.run())?;
    Ok((
        ApHandle {
            input: input_tx,
            shared,
            queue,
            thread: Some(thread),
        },
        event_rx,
    ))
}

impl ApHandle {
    /// Hands a packet to the driver. Its [`ApEvent::Sent`] follows, exactly once (before
    /// [`LinkState::Stopped`] if the driver stops; delivered if anyone still listens).
    pub fn send(&self, packet: RadioPacket) -> Result<SendId, SendError> {
        if self.shared.stop.load(Ordering::Acquire) {
            return Err(SendError::Stopped);
        }
        if !self.shared.connected.load(Ordering::Acquire) {
            return Err(SendError::Disconnected);
        }
        if self.shared.outstanding.fetch_add(1, Ordering::AcqRel) >= self.queue {
            self.shared.outstanding.fetch_sub(1, Ordering::AcqRel);
            return Err(SendError::QueueFull);
        }
        let id = SendId(self.shared.next_id.fetch_add(1, Ordering::Relaxed));
        match self.input.try_send(Input::Submit(id, packet)) {
            Ok(()) => Ok(id),
            Err(e) => {
                self.shared.outstanding.fetch_sub(1, Ordering::AcqRel);
                Err(match e {
                    TrySendError::Full(_) => SendError::QueueFull,
                    TrySendError::Disconnected(_) => SendError::Stopped,
                })
            }
        }
    }

    /// The link's state, last error, the access point's status and the counters.
    pub fn status(&self) -> ApLinkStatus {
        self.shared.status().clone()
    }

    /// Stops the driver and waits for its thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.input.try_send(Input::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ApHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Driver {
    config: ApConfig,
    link: ApLink,
    shared: Arc<Shared>,
    input_tx: SyncSender<Input>,
    input: Receiver<Input>,
    events: SyncSender<ApEvent>,
    port: Option<TTYPort>,
    /// Failed attempts since the access point last answered.
    attempt: u32,
    /// Whether the access point answered on this connection.
    answered: bool,
    retry_at: Instant,
}

enum Flow {
    Continue,
    Stop,
}

impl Driver {
    fn run(mut self) {
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                break;
            }
            let flow = if self.port.is_some() {
                self.serve()
            } else if Instant::now() >= self.retry_at {
                if let Err(e) = self.open() {
                    self.lost(e);
                }
                Flow::Continue
            } else {
                self.wait_disconnected(self.retry_at)
            };
            if let Flow::Stop = flow {
                break;
            }
        }
        // Also when the caller dropped the events receiver: later sends say Stopped.
        self.shared.stop.store(true, Ordering::Release);
        self.close();
        let mut events = Vec::new();
        self.link.disconnect(&mut events);
        self.shared.connected.store(false, Ordering::Release);
        // Submissions still in the channel end too: every accepted send gets its outcome.
        while let Ok(input) = self.input.try_recv() {
            if let Input::Submit(id, packet) = input {
                events.push(ApEvent::Sent {
                    id,
                    label: packet.label(),
                    tag_seq: packet.seq(),
                    outcome: super::SendOutcome::LinkDown,
                });
            }
        }
        self.set_state(LinkState::Stopped);
        for e in events {
            self.deliver(e);
        }
    }

    fn open(&mut self) -> Result<(), String> {
        let mut port = serialport::new(&self.config.path, self.config.baud)
            .timeout(self.config.write_timeout)
            .open_native()
            .map_err(|e| format!("open {}: {e}", self.config.path))?;
        // Stale bytes from before are not ours; a lone delimiter ends whatever half frame the
        // access point holds, so our first frame is read cleanly.
        let _ = port.clear(serialport::ClearBuffer::Input);
        port.write_all(&[0])
            .map_err(|e| format!("write {}: {e}", self.config.path))?;
        let mut reader = port
            .try_clone_native()
            .map_err(|e| format!("clone {}: {e}", self.config.path))?;
        reader
            .set_timeout(READ_POLL)
            .map_err(|e| format!("configure {}: {e}", self.config.path))?;
        let generation = self.shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let shared = Arc::clone(&self.shared);
        let tx = self.input_tx.clone();
        std::thread::Builder::new()
            .name("esl-ap-read".into())
            .spawn(move || read_loop(reader, generation, &shared, &tx))
            .map_err(|e| format!("reader thread: {e}"))?;
        self.port = Some(port);
        self.answered = false;
        self.link.connect(Instant::now(), Seq(rand::random()));
        self.shared.connected.store(true, Ordering::Release);
        self.set_state(LinkState::Connected { ap: None });
        self.flush()
    }

    fn close(&mut self) {
        // The reader sees the new generation within READ_POLL and ends with its port clone.
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        self.port = None;
    }

    /// The port failed: ends what was in flight, records the error, schedules the next
    /// attempt.
    fn lost(&mut self, error: String) {
        self.close();
        self.shared.connected.store(false, Ordering::Release);
        let mut events = Vec::new();
        self.link.disconnect(&mut events);
        let delay = self.config.backoff.delay(self.attempt, rand::random());
        self.attempt = self.attempt.saturating_add(1);
        {
            let mut s = self.shared.status();
            s.last_error = Some(error.clone());
        }
        self.set_state(LinkState::Reconnecting {
            attempt: self.attempt,
            retry_in: delay,
            last_error: error,
        });
        for e in events {
            self.deliver(e);
        }
        self.retry_at = Instant::now() + delay;
    }

    /// Connected: waits for input or the link's next deadline, then transmits what is due.
    fn serve(&mut self) -> Flow {
        let timeout = self
            .link
            .next_deadline()
            .map_or(Duration::from_secs(1), |d| {
                d.saturating_duration_since(Instant::now())
            });
        let mut events = Vec::new();
        let mut failure = None;
        match self.input.recv_timeout(timeout) {
            Ok(input) => {
                if let Flow::Stop = self.handle(input, &mut events, &mut failure) {
                    return Flow::Stop;
                }
                // Take whatever else is waiting before writing, so frames go out in batches.
                while failure.is_none() {
                    let Ok(input) = self.input.try_recv() else {
                        break;
                    };
                    if let Flow::Stop = self.handle(input, &mut events, &mut failure) {
                        return Flow::Stop;
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Flow::Stop,
        }
        // The status counts a frame before its event is out: whoever saw the event sees it.
        self.publish_stats();
        for e in events {
            if let ApEvent::Status(status) = &e {
                self.shared.status().ap = Some(*status);
            }
            if !self.deliver(e) {
                return Flow::Stop;
            }
        }
        if !self.answered && self.link.stats().frames_in > 0 {
            self.answered = true;
            self.attempt = 0;
            self.set_state(LinkState::Connected { ap: self.link.ap() });
        }
        if let Some(error) = failure {
            self.lost(error);
            return Flow::Continue;
        }
        if let Err(e) = self.flush() {
            self.lost(e);
            return Flow::Continue;
        }
        if self.link.is_silent(Instant::now()) {
            let silent = self.config.link.silence_timeout;
            self.lost(format!("no answer from the access point for {silent:?}"));
        }
        Flow::Continue
    }

    fn handle(
        &mut self,
        input: Input,
        events: &mut Vec<ApEvent>,
        failure: &mut Option<String>,
    ) -> Flow {
        let current = self.shared.generation.load(Ordering::Acquire);
        match input {
            Input::Stop => return Flow::Stop,
            Input::Submit(id, packet) => self.submit(id, packet, events),
            Input::Bytes(generation, bytes) if generation == current => {
                self.link.receive(&bytes, Instant::now(), events);
            }
            Input::ReadFailed(generation, error) if generation == current => {
                *failure = Some(error);
            }
            // From a connection already closed.
            Input::Bytes(..) | Input::ReadFailed(..) => {}
        }
        Flow::Continue
    }

    fn submit(&mut self, id: SendId, packet: RadioPacket, events: &mut Vec<ApEvent>) {
        let refused = |packet: &RadioPacket, outcome| ApEvent::Sent {
            id,
            label: packet.label(),
            tag_seq: packet.seq(),
            outcome,
        };
        if !self.link.is_connected() {
            events.push(refused(&packet, super::SendOutcome::LinkDown));
            return;
        }
        if self.link.submit(id, packet.clone()).is_err() {
            // The handle bounds submissions to the same size; only a smaller link queue gets
            // here.
            events.push(refused(
                &packet,
                super::SendOutcome::Refused(aisle_protocol::esl::ApRefusal::QueueFull),
            ));
        }
    }

    /// Writes whatever the link has due.
    fn flush(&mut self) -> Result<(), String> {
        let mut out = Vec::new();
        let mut events = Vec::new();
        self.link.transmit(Instant::now(), &mut out, &mut events);
        for e in events {
            self.deliver(e);
        }
        self.publish_stats();
        if out.is_empty() {
            return Ok(());
        }
        let Some(port) = self.port.as_mut() else {
            return Ok(());
        };
        port.write_all(&out)
            .and_then(|()| port.flush())
            .map_err(|e| format!("write {}: {e}", self.config.path))
    }

    /// Disconnected: answers submissions that raced the disconnect, until `until`.
    fn wait_disconnected(&mut self, until: Instant) -> Flow {
        let timeout = until.saturating_duration_since(Instant::now());
        match self.input.recv_timeout(timeout) {
            Ok(Input::Stop) | Err(RecvTimeoutError::Disconnected) => Flow::Stop,
            Ok(Input::Submit(id, packet)) => {
                let mut events = Vec::new();
                self.submit(id, packet, &mut events);
                for e in events {
                    self.deliver(e);
                }
                Flow::Continue
            }
            Ok(Input::Bytes(..) | Input::ReadFailed(..)) | Err(RecvTimeoutError::Timeout) => {
                Flow::Continue
            }
        }
    }

    /// Hands an event to the caller, waiting while their queue is full. False when nobody
    /// listens any more or the driver is stopping.
    fn deliver(&self, event: ApEvent) -> bool {
        if matches!(event, ApEvent::Sent { .. }) {
            self.shared.outstanding.fetch_sub(1, Ordering::AcqRel);
        }
        let mut event = event;
        loop {
            match self.events.try_send(event) {
                Ok(()) => return true,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(back)) => {
                    if self.shared.stop.load(Ordering::Acquire) {
                        return false;
                    }
                    event = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }

    fn set_state(&self, state: LinkState) {
        let changed = {
            let mut s = self.shared.status();
            s.stats = *self.link.stats();
            let changed = s.state != state;
            s.state = state.clone();
            changed
        };
        if changed {
            self.deliver(ApEvent::Link(state));
        }
    }

    fn publish_stats(&self) {
        self.shared.status().stats = *self.link.stats();
    }
}

/// Reads the port until it fails or the connection is replaced; hands bytes to the driver.
fn read_loop(mut port: TTYPort, generation: u64, shared: &Shared, tx: &SyncSender<Input>) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        if shared.stop.load(Ordering::Acquire)
            || shared.generation.load(Ordering::Acquire) != generation
        {
            return;
        }
        match port.read(&mut buf) {
            Ok(0) => {
                let _ = tx.send(Input::ReadFailed(generation, "the port closed".into()));
                return;
            }
            Ok(n) => {
                if tx
                    .send(Input::Bytes(generation, buf[..n].to_vec()))
                    .is_err()
                {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(e) => {
                let _ = tx.send(Input::ReadFailed(generation, format!("read: {e}")));
                return;
            }
        }
    }
}
