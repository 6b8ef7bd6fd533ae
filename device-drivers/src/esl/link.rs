//! The serial link to an access point as a pure state machine: bytes and the time in, events
//! and bytes out. [`super::access_point`] runs it on a thread against a real port; tests drive
//! it directly.
//!
//! Rules of the link (the access point keeps the mirror image):
//! * Frames are `aisle_protocol::esl` frames addressed to the access point's [`ApId`]. Every
//!   command except an acknowledgement is answered by `ApReport::Ack`/`Refused` naming its seq;
//!   every report except those is acknowledged with `ApCommand::Ack`. An acknowledgement carries
//!   no seq of its own (its header repeats the last command's) and is never tracked.
//! * A `Send` unanswered after `ack_timeout` goes again with the same seq, at most
//!   `max_attempts` times in all, with at most `window` unanswered at once. Each submitted packet
//!   ends in exactly one [`SendOutcome`].
//! * The access point's seqs go through a [`ReplayWindow`]: a report seen before is
//!   acknowledged again but not delivered; one older than the window is dropped as a replay. A
//!   `Status` whose uptime went backwards means the access point restarted: the window starts
//!   over. Every connection starts with a fresh window and a `StatusRequest`.
//! * The radio packet inside `Send` and `Heard` is the tag's, untouched: the gateway checks it end
//!   to end. An inner packet that does not open is dropped here, so the planner only ever sees
//!   well-formed [`TagReport`]s.
//! * Every frame that is dropped is counted under its [`DropReason`]; nothing from the port can
//!   make this panic or grow memory beyond the configured bounds.
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use aisle_protocol::esl::{
    ApCommand, ApId, ApRefusal, ApReport, ApStatus, FrameError, FrameReader, Header, LabelId,
    MAX_PACKET_LEN, MAX_RADIO_PACKET_LEN, Seq, TagCommand, TagReport, decode_packet,
    encode_frame_vec, encode_packet,
};

/// A radio packet for one tag, encoded and checked: what the planner hands to the link.
#[derive(Clone, PartialEq, Eq)]
pub struct RadioPacket {
    label: LabelId,
    seq: Seq,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for RadioPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RadioPacket")
            .field("label", &self.label)
            .field("seq", &self.seq)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl RadioPacket {
    /// Encodes `command` for `label` as its `seq`-th downlink frame (the planner numbers each
    /// tag's frames; see [`aisle_protocol::esl::SeqTracker`] on the tag).
    pub fn encode(label: LabelId, seq: Seq, command: &TagCommand<'_>) -> Result<Self, FrameError> {
        let mut buf = [0u8; MAX_RADIO_PACKET_LEN];
        let n = encode_packet(Header::new(label, seq), command, &mut buf)?;
        Ok(RadioPacket {
            label,
            seq,
            bytes: buf[..n].to_vec(),
        })
    }

    pub fn label(&self) -> LabelId {
        self.label
    }

    /// The tag-level seq of this packet.
    pub fn seq(&self) -> Seq {
        self.seq
    }

    /// The packet as it goes on the radio (header, body, CRC; no COBS).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The caller's name for a submitted packet, echoed in its [`ApEvent::Sent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SendId(pub u64);

/// What became of a submitted packet on the serial link (not on the radio: the tag's own
/// `Ack`, arriving as [`ApEvent::Heard`], says whether it arrived).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// The access point queued it for its tag.
    Queued,
    /// The access point refused it (`QueueFull`: retry later).
    Refused(ApRefusal),
    /// No answer after every attempt.
    NoAnswer,
    /// The link went down before an answer; the access point may or may not have it.
    LinkDown,
}

/// What the link reports to its user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApEvent {
    /// The end of one submitted packet on the link.
    Sent {
        id: SendId,
        label: LabelId,
        tag_seq: Seq,
        outcome: SendOutcome,
    },
    /// A tag's frame, heard by the access point, its radio packet opened and decoded.
    Heard {
        label: LabelId,
        /// The tag's uplink seq (the planner tracks replays per tag).
        seq: Seq,
        rssi_dbm: i8,
        report: TagReport,
    },
    /// The access point gave up on a queued packet: the tag did not listen in time.
    Expired { label: LabelId, seq: Seq },
    /// The access point's state (answer to the link's `StatusRequest`, or unsolicited).
    Status(ApStatus),
    /// The link's state changed (only the I/O driver emits these).
    Link(LinkState),
}

/// The state of the link, as the I/O driver sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Opening the port for the first time.
    Connecting,
    /// Port open; `ap` once the access point has answered.
    Connected { ap: Option<ApId> },
    /// The port failed or disappeared; the next attempt is `attempt`, in `retry_in`.
    Reconnecting {
        attempt: u32,
        retry_in: Duration,
        last_error: String,
    },
    /// The driver was shut down.
    Stopped,
}

/// Why a frame from the access point was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    /// Damaged: stuffing, CRC, length, version or body (see the [`FrameError`]).
    #[error("damaged frame: {0}")]
    Frame(FrameError),
    /// From an access point other than ours.
    #[error("frame from access point {0:08x}")]
    NotOurAp(u32),
    /// Older than the replay window.
    #[error("replayed frame {0}")]
    Replay(Seq),
    /// An answer to no command in flight (late, after a retransmission was answered).
    #[error("answer to unknown command {0}")]
    UnknownAnswer(Seq),
    /// The tag's packet inside `Heard` does not open or decode.
    #[error("tag packet inside Heard: {0}")]
    BadRadio(FrameError),
}

/// Counts of dropped frames by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounts {
    /// COBS stuffing or CRC mismatch: noise on the line.
    pub corrupt: u64,
    pub truncated: u64,
    pub oversized: u64,
    /// Another protocol version.
    pub version: u64,
    /// Intact but not a report (or bytes left over).
    pub malformed: u64,
    pub not_our_ap: u64,
    pub replay: u64,
    pub unknown_answer: u64,
    pub bad_radio: u64,
}

impl DropCounts {
    pub fn total(&self) -> u64 {
        self.corrupt
            + self.truncated
            + self.oversized
            + self.version
            + self.malformed
            + self.not_our_ap
            + self.replay
            + self.unknown_answer
            + self.bad_radio
    }

    fn count(&mut self, reason: DropReason) {
        let slot = match reason {
            DropReason::Frame(FrameError::Stuffing | FrameError::Crc { .. }) => &mut self.corrupt,
            DropReason::Frame(FrameError::Truncated { .. }) => &mut self.truncated,
            DropReason::Frame(FrameError::Oversized { .. }) => &mut self.oversized,
            DropReason::Frame(FrameError::Version { .. }) => &mut self.version,
            DropReason::Frame(_) => &mut self.malformed,
            DropReason::NotOurAp(_) => &mut self.not_our_ap,
            DropReason::Replay(_) => &mut self.replay,
            DropReason::UnknownAnswer(_) => &mut self.unknown_answer,
            DropReason::BadRadio(_) => &mut self.bad_radio,
        };
        *slot += 1;
    }
}

/// The link's counters since the driver started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames received intact and addressed to us.
    pub frames_in: u64,
    pub frames_out: u64,
    /// `Send`s transmitted again after no answer.
    pub retransmits: u64,
    /// Reports received again (our acknowledgement was lost): acknowledged, not delivered.
    pub duplicates: u64,
    /// Times the access point restarted (uptime went backwards).
    pub ap_restarts: u64,
    /// Connections made after the first.
    pub reconnects: u64,
    pub dropped: DropCounts,
    pub last_drop: Option<DropReason>,
}

/// How the link behaves. The defaults suit a USB access point at 115200 baud or faster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkConfig {
    /// The access point to talk to; [`ApId::ANY`] takes the first that answers on each
    /// connection.
    pub ap: ApId,
    /// `Send`s unanswered at once.
    pub window: usize,
    /// Packets waiting for the window, beyond which [`ApLink::submit`] refuses.
    pub queue: usize,
    pub ack_timeout: Duration,
    /// Transmissions of one `Send`, the first included.
    pub max_attempts: u8,
    /// Ask for the access point's status after this long without hearing from it.
    pub keepalive: Duration,
    /// Declare the link dead after this long without a valid frame.
    pub silence_timeout: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            ap: ApId::ANY,
            window: 32,
            queue: 4096,
            ack_timeout: Duration::from_millis(500),
            max_attempts: 4,
            keepalive: Duration::from_secs(5),
            silence_timeout: Duration::from_secs(16),
        }
    }
}

/// The submit queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the access point's send queue is full")]
pub struct QueueFull;

/// Which of the access point's seqs were seen: the highest, and a bitmap of the 64 before it,
/// as in IPsec's anti-replay window. Reports may arrive out of order (the access point
/// retransmits one whose acknowledgement was lost after sending later ones), so "older than the
/// last" alone would drop real reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    highest: Option<Seq>,
    /// Bit k: `highest - k` was seen (bit 0 is `highest`).
    seen: u64,
}

/// What a [`ReplayWindow`] says about a seq.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    New,
    /// Seen before, within the window.
    Duplicate,
    /// Older than the window.
    Replay,
}

impl ReplayWindow {
    pub const SPAN: u16 = 64;

    /// Judges `seq` and records it when new.
    pub fn check(&mut self, seq: Seq) -> Freshness {
        let Some(highest) = self.highest else {
            self.highest = Some(seq);
            self.seen = 1;
            return Freshness::New;
        };
        if seq.is_newer_than(highest) {
            let shift = u32::from(seq.0.wrapping_sub(highest.0));
            self.seen = self.seen.checked_shl(shift).unwrap_or(0) | 1;
            self.highest = Some(seq);
            return Freshness::New;
        }
        let behind = highest.0.wrapping_sub(seq.0);
        if behind >= Self::SPAN {
            return Freshness::Replay;
        }
        let bit = 1u64 << behind;
        if self.seen & bit != 0 {
            Freshness::Duplicate
        } else {
            self.seen |= bit;
            Freshness::New
        }
    }
}

#[derive(Debug)]
struct InFlight {
    seq: Seq,
    id: SendId,
    label: LabelId,
    tag_seq: Seq,
    frame: Vec<u8>,
    sent_at: Instant,
    attempts: u8,
}

/// The link's state machine.
#[derive(Debug)]
pub struct ApLink {
    config: LinkConfig,
    reader: FrameReader,
    /// The access point this connection talks to (configured, or learnt from its first frame).
    ap: Option<ApId>,
    next_seq: Seq,
    last_command: Seq,
    status_request: Option<Seq>,
    rx: ReplayWindow,
    uptime_s: Option<u32>,
    pending: VecDeque<(SendId, RadioPacket)>,
    in_flight: VecDeque<InFlight>,
    acks_owed: Vec<Seq>,
    last_heard: Instant,
    last_status_request: Option<Instant>,
    connected: bool,
    stats: LinkStats,
}

impl ApLink {
    pub fn new(config: LinkConfig, now: Instant) -> Self {
        ApLink {
            config,
            reader: FrameReader::new(),
            ap: None,
            next_seq: Seq(0),
            last_command: Seq(0),
            status_request: None,
            rx: ReplayWindow::default(),
            uptime_s: None,
            pending: VecDeque::new(),
            in_flight: VecDeque::new(),
            acks_owed: Vec::new(),
            last_heard: now,
            last_status_request: None,
            connected: false,
            stats: LinkStats::default(),
        }
    }

    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// The access point of this connection, once known.
    pub fn ap(&self) -> Option<ApId> {
        self.ap
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Packets submitted and not yet finished (queued and in flight).
    pub fn outstanding(&self) -> usize {
        self.pending.len() + self.in_flight.len()
    }

    /// A port was opened. `first_seq` numbers this connection's first command: pass a random
    /// one, so an access point that kept its count from the previous connection does not take
    /// new commands for repeats. Queues a `StatusRequest`.
    pub fn connect(&mut self, now: Instant, first_seq: Seq) {
        if self.stats.frames_in + self.stats.frames_out > 0 {
            self.stats.reconnects += 1;
        }
        self.connected = true;
        self.reader = FrameReader::new();
        self.ap = (self.config.ap != ApId::ANY).then_some(self.config.ap);
        self.next_seq = first_seq;
        self.last_command = first_seq;
        self.rx = ReplayWindow::default();
        self.uptime_s = None;
        self.acks_owed.clear();
        self.last_heard = now;
        self.last_status_request = None;
        self.status_request = None;
    }

    /// The port is gone: everything submitted ends as [`SendOutcome::LinkDown`].
    pub fn disconnect(&mut self, events: &mut Vec<ApEvent>) {
        self.connected = false;
        self.acks_owed.clear();
        for f in self.in_flight.drain(..) {
            events.push(ApEvent::Sent {
                id: f.id,
                label: f.label,
                tag_seq: f.tag_seq,
                outcome: SendOutcome::LinkDown,
            });
        }
        for (id, p) in self.pending.drain(..) {
            events.push(ApEvent::Sent {
                id,
                label: p.label,
                tag_seq: p.seq,
                outcome: SendOutcome::LinkDown,
            });
        }
    }

    /// Queues a packet for the access point.
    pub fn submit(&mut self, id: SendId, packet: RadioPacket) -> Result<(), QueueFull> {
        if self.pending.len() >= self.config.queue {
            return Err(QueueFull);
        }
        self.pending.push_back((id, packet));
        Ok(())
    }

    /// Feeds bytes read from the port; appends what they mean to `events`.
    pub fn receive(&mut self, bytes: &[u8], now: Instant, events: &mut Vec<ApEvent>) {
        let mut packet = [0u8; MAX_PACKET_LEN];
        for &b in bytes {
            // Copy the packet out of the reader's buffer, so handling it can borrow `self`.
            let len = match self.reader.push(b) {
                None => continue,
                Some(Err(e)) => Err(DropReason::Frame(e)),
                Some(Ok(p)) if p.len() > MAX_PACKET_LEN => {
                    Err(DropReason::Frame(FrameError::Oversized {
                        len: p.len(),
                        max: MAX_PACKET_LEN,
                    }))
                }
                Some(Ok(p)) => {
                    packet[..p.len()].copy_from_slice(p);
                    Ok(p.len())
                }
            };
            match len {
                Ok(len) => self.packet(&packet[..len], now, events),
                Err(reason) => self.drop_frame(reason),
            }
        }
    }

    fn drop_frame(&mut self, reason: DropReason) {
        self.stats.dropped.count(reason);
        self.stats.last_drop = Some(reason);
    }

    fn packet(&mut self, packet: &[u8], now: Instant, events: &mut Vec<ApEvent>) {
        let (header, report) = match decode_packet::<ApReport>(packet) {
            Ok(x) => x,
            Err(e) => return self.drop_frame(DropReason::Frame(e)),
        };
        match self.ap {
            Some(ap) if ap.0 != header.address => {
                return self.drop_frame(DropReason::NotOurAp(header.address));
            }
            Some(_) => {}
            None => self.ap = Some(ApId(header.address)),
        }
        self.stats.frames_in += 1;
        self.last_heard = now;
        match report {
            ApReport::Ack { seq } => self.answered(seq, SendOutcome::Queued, events),
            ApReport::Refused { seq, reason } => {
                self.answered(seq, SendOutcome::Refused(reason), events);
            }
            ApReport::Heard { rssi_dbm, radio } => {
                if self.fresh(header.seq, None) {
                    match decode_packet::<TagReport>(radio) {
                        Ok((tag, report)) => events.push(ApEvent::Heard {
                            label: LabelId(tag.address),
                            seq: tag.seq,
                            rssi_dbm,
                            report,
                        }),
                        Err(e) => self.drop_frame(DropReason::BadRadio(e)),
                    }
                }
            }
            ApReport::Expired { label, seq } => {
                if self.fresh(header.seq, None) {
                    events.push(ApEvent::Expired { label, seq });
                }
            }
            ApReport::Status(status) => {
                if self.fresh(header.seq, Some(status.uptime_s)) {
                    events.push(ApEvent::Status(status));
                }
            }
        }
    }

    /// Replay check for an acknowledged report; owes the acknowledgement either way (a
    /// duplicate means our acknowledgement was lost; acknowledging a replay stops it).
    fn fresh(&mut self, seq: Seq, uptime_s: Option<u32>) -> bool {
        self.acks_owed.push(seq);
        if let Some(up) = uptime_s {
            if self.uptime_s.is_some_and(|last| up < last) {
                self.stats.ap_restarts += 1;
                self.rx = ReplayWindow::default();
            }
            self.uptime_s = Some(up);
        }
        match self.rx.check(seq) {
            Freshness::New => true,
            Freshness::Duplicate => {
                self.stats.duplicates += 1;
                false
            }
            Freshness::Replay => {
                self.drop_frame(DropReason::Replay(seq));
                false
            }
        }
    }

    fn answered(&mut self, seq: Seq, outcome: SendOutcome, events: &mut Vec<ApEvent>) {
        if let Some(i) = self.in_flight.iter().position(|f| f.seq == seq) {
            if let Some(f) = self.in_flight.remove(i) {
                events.push(ApEvent::Sent {
                    id: f.id,
                    label: f.label,
                    tag_seq: f.tag_seq,
                    outcome,
                });
            }
        } else if self.status_request == Some(seq) {
            // The access point took our StatusRequest; its Status follows.
        } else {
            self.drop_frame(DropReason::UnknownAnswer(seq));
        }
    }

    fn command(&mut self, command: &ApCommand<'_>) -> Option<(Seq, Vec<u8>)> {
        let seq = self.next_seq;
        let ap = self.ap.unwrap_or(ApId::ANY);
        let frame = encode_frame_vec(Header::new(ap, seq), command).ok()?;
        self.next_seq = seq.next();
        self.last_command = seq;
        Some((seq, frame))
    }

    /// Appends to `out` every frame due now: acknowledgements, retransmissions, new `Send`s
    /// within the window, a keepalive. `events` receives outcomes of packets that ran out of
    /// attempts (or could not be framed).
    pub fn transmit(&mut self, now: Instant, out: &mut Vec<u8>, events: &mut Vec<ApEvent>) {
        if !self.connected {
            return;
        }
        let ap = self.ap.unwrap_or(ApId::ANY);
        for seq in std::mem::take(&mut self.acks_owed) {
            let header = Header::new(ap, self.last_command);
            if let Ok(frame) = encode_frame_vec(header, &ApCommand::Ack { seq }) {
                out.extend_from_slice(&frame);
                self.stats.frames_out += 1;
            }
        }
        // Unanswered sends: again, or give up.
        let mut i = 0;
        while i < self.in_flight.len() {
            let f = &mut self.in_flight[i];
            if now.saturating_duration_since(f.sent_at) < self.config.ack_timeout {
                i += 1;
                continue;
            }
            if f.attempts >= self.config.max_attempts {
                if let Some(f) = self.in_flight.remove(i) {
                    events.push(ApEvent::Sent {
                        id: f.id,
                        label: f.label,
                        tag_seq: f.tag_seq,
                        outcome: SendOutcome::NoAnswer,
                    });
                }
                continue;
            }
            f.attempts += 1;
            f.sent_at = now;
            out.extend_from_slice(&f.frame);
            self.stats.retransmits += 1;
            self.stats.frames_out += 1;
            i += 1;
        }
        while self.in_flight.len() < self.config.window {
            let Some((id, packet)) = self.pending.pop_front() else {
                break;
            };
            let Some((seq, frame)) = self.command(&ApCommand::Send {
                radio: packet.as_bytes(),
            }) else {
                // A checked radio packet always fits the link's frame; never reached.
                events.push(ApEvent::Sent {
                    id,
                    label: packet.label,
                    tag_seq: packet.seq,
                    outcome: SendOutcome::Refused(ApRefusal::BadRadioPacket),
                });
                continue;
            };
            out.extend_from_slice(&frame);
            self.stats.frames_out += 1;
            self.in_flight.push_back(InFlight {
                seq,
                id,
                label: packet.label,
                tag_seq: packet.seq,
                frame,
                sent_at: now,
                attempts: 1,
            });
        }
        let quiet = now.saturating_duration_since(self.last_heard);
        let asked = self
            .last_status_request
            .map(|t| now.saturating_duration_since(t));
        let due = match asked {
            None => true,
            Some(ago) => quiet >= self.config.keepalive && ago >= self.config.keepalive,
        };
        if due && let Some((seq, frame)) = self.command(&ApCommand::StatusRequest) {
            out.extend_from_slice(&frame);
            self.stats.frames_out += 1;
            self.status_request = Some(seq);
            self.last_status_request = Some(now);
        }
    }

    /// When [`transmit`](Self::transmit) next has something to do without new input.
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.connected {
            return None;
        }
        let retransmit = self
            .in_flight
            .iter()
            .map(|f| f.sent_at + self.config.ack_timeout)
            .min();
        let keepalive = match self.last_status_request {
            None => self.last_heard,
            Some(t) => (self.last_heard + self.config.keepalive).max(t + self.config.keepalive),
        };
        let silence = self.last_heard + self.config.silence_timeout;
        [retransmit, Some(keepalive), Some(silence)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether the access point has been silent past `silence_timeout` (keepalives included):
    /// the driver should reopen the port.
    pub fn is_silent(&self, now: Instant) -> bool {
        self.connected
            && now.saturating_duration_since(self.last_heard) >= self.config.silence_timeout
    }
}

#[cfg(test)]
mod tests;
