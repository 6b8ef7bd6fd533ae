//! A simulated shelf-label access point with simulated tags behind it, on a real
//! pseudo-terminal: what `aisle-sim esl` runs, and what tests and the demo run in-process.
//!
//! ```text
//! gateway (aisle_drivers::esl::access_point) ──pty──▶ AccessPoint ──simulated radio──▶ tags
//!                                           ◀──────── ApReport ◀──── TagReport ──────
//! ```
//!
//! * The serial side speaks the gateway↔access-point frames of `aisle_protocol::esl`: every
//!   command is answered with `Ack`/`Refused` naming its seq; `Heard`, `Expired` and `Status`
//!   reports are numbered, retransmitted until the gateway acknowledges them (at most
//!   [`EslSimConfig::report_attempts`] times). Commands go through a 64-seq window: a repeat is
//!   answered as before and applied once, a seq older than the window is a replay and refused
//!   (counted, not answered). A `StatusRequest` changes nothing, so one the window does not
//!   know starts a new session (the gateway opens every connection with one at a random seq).
//! * Bad input (noise, CRC, truncated or oversized frames, another version, bodies that do not
//!   decode, radio packets that do not open, replays) is refused and counted in
//!   [`RefusedCounts`]; nothing on the line can panic the simulator or grow its memory beyond
//!   its bounds.
//! * Every tag is the real firmware [`Tag`] state machine with its own frame buffer, rendered
//!   with the firmware renderer. A tag listens at every check-in (`checkin`, each tag at its
//!   own phase); the access point then delivers what it holds for it, frame by frame, waiting
//!   for the tag's answer and trying each frame up to `radio_attempts` times per check-in. A
//!   frame undelivered after `expire_after` is dropped and reported `Expired`. A tag reports
//!   its `Status` at power-up and after every refresh, again every `status_retry` until the
//!   gateway acknowledges it, and every `heartbeat`.
//! * The radio carries one frame at a time at `radio_bytes_per_s` (0: no limit); each frame,
//!   either way, is lost with probability `loss`. An exchange is worked out when it starts; its
//!   reports reach the gateway once its air time has passed.
//! * After every refresh the tag's screen is written to `<png_dir>/<LABEL>.png` (exactly its
//!   frame buffer; white, black and red).
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aisle_firmware::{Effect, FrameBuffer, Panel, Sensors, Tag, TagConfig};
use aisle_protocol::esl::frame::decode_body;
use aisle_protocol::esl::{
    ApCommand, ApId, ApRefusal, ApReport, ApStatus, ContentHash, DynamicFields, FrameError,
    FrameReader, Header, LabelId, LayerHash, MAX_PACKET_LEN, MAX_RADIO_FRAME_LEN,
    MAX_RADIO_PACKET_LEN, Seq, TagCommand, encode_frame_vec, open_packet, stuff, unstuff,
};
use anyhow::{Context, Result, anyhow, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serialport::{SerialPort, TTYPort};

/// The firmware tag as simulated: two layer slots of 16 KiB, so 4.2" layers fit too.
pub type SimTag = Tag<2, 16384>;

/// Most tags one simulator runs: a large store's shelf (the `esl_store_relabel` bench runs
/// 30,000). Each simulated tag holds its two layer slots and its screen, about 42 KiB, so the
/// largest simulator needs about 2 GiB.
pub const MAX_TAGS: usize = 50_000;
/// Commands remembered for repeats, and how far behind the newest a seq may be.
const WINDOW: u16 = 64;
/// Air time the access point listens for an answer after a frame the tag did not hear.
const ANSWER_WINDOW_BYTES: usize = 48;

/// What to simulate.
#[derive(Clone, Debug, PartialEq)]
pub struct EslSimConfig {
    /// The access point's address on the serial link.
    pub ap: ApId,
    pub labels: Vec<LabelId>,
    pub panel: Panel,
    /// Radio rate in bytes per second; 0 = no limit.
    pub radio_bytes_per_s: u32,
    /// How often each tag wakes and listens.
    pub checkin: Duration,
    /// Probability that a radio frame (either way) is lost.
    pub loss: f64,
    pub seed: u64,
    /// Where to write `<LABEL>.png` after every refresh.
    pub png_dir: Option<PathBuf>,
    /// A queued frame not delivered by then is dropped and reported `Expired`.
    pub expire_after: Duration,
    /// Transmissions of one frame per check-in before the tag goes back to sleep.
    pub radio_attempts: u8,
    /// Frames queued for tags at most (beyond: `Refused(QueueFull)`).
    pub queue_limit: usize,
    /// An unacknowledged report goes again after this long ...
    pub report_timeout: Duration,
    /// ... at most this many times in all.
    pub report_attempts: u8,
    /// Reports waiting for the gateway at most (the oldest is dropped beyond).
    pub report_limit: usize,
    /// A tag repeats an unacknowledged `Status` after this long.
    pub status_retry: Duration,
    /// A tag reports its `Status` at least this often (`None`: only when it has news).
    pub heartbeat: Option<Duration>,
}

impl EslSimConfig {
    /// `tags` tags at consecutive addresses from `first`.
    pub fn new(first: LabelId, tags: usize) -> Self {
        let labels = (0..tags)
            .map(|i| LabelId(first.0.wrapping_add(u32::try_from(i).unwrap_or(u32::MAX))))
            .collect();
        EslSimConfig {
            ap: ApId(0x00A1_0A01),
            labels,
            panel: Panel::Bw290,
            radio_bytes_per_s: 0,
            checkin: Duration::from_secs(1),
            loss: 0.0,
            seed: 1,
            png_dir: None,
            expire_after: Duration::from_secs(30),
            radio_attempts: 3,
            queue_limit: 4096,
            report_timeout: Duration::from_millis(300),
            report_attempts: 8,
            report_limit: 1024,
            status_retry: Duration::from_secs(1),
            heartbeat: Some(Duration::from_secs(60)),
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.labels.is_empty() || self.labels.len() > MAX_TAGS {
            bail!("between 1 and {MAX_TAGS} tags");
        }
        let unique: HashSet<LabelId> = self.labels.iter().copied().collect();
        if unique.len() != self.labels.len() {
            bail!("tag addresses must be distinct");
        }
        if !(0.0..1.0).contains(&self.loss) {
            bail!("loss is a probability below 1, got {}", self.loss);
        }
        if self.checkin < Duration::from_millis(1) {
            bail!("the check-in interval must be at least 1 ms");
        }
        if self.radio_attempts == 0 || self.report_attempts == 0 {
            bail!("at least one attempt");
        }
        if self.queue_limit == 0 || self.report_limit == 0 {
            bail!("queues must hold at least one frame");
        }
        Ok(())
    }
}

/// Parses a panel name: `bw290`, `bwr290`, `bw420`, `bwr420`.
pub fn parse_panel(s: &str) -> Result<Panel> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "bw290" => Panel::Bw290,
        "bwr290" => Panel::Bwr290,
        "bw420" => Panel::Bw420,
        "bwr420" => Panel::Bwr420,
        _ => bail!("unknown panel '{s}' (bw290, bwr290, bw420, bwr420)"),
    })
}

/// Frames refused from the serial link, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefusedCounts {
    /// COBS stuffing or CRC mismatch: noise on the line.
    pub corrupt: u64,
    pub truncated: u64,
    pub oversized: u64,
    /// Another protocol version.
    pub version: u64,
    /// Intact, but not a command (or bytes left over); answered `Refused(Malformed)`.
    pub malformed: u64,
    /// Addressed to another access point; answered `Refused(NotMine)`.
    pub not_mine: u64,
    /// Older than the window: not answered.
    pub replay: u64,
    /// A `Send` whose radio packet does not open; answered `Refused(BadRadioPacket)`.
    pub bad_radio: u64,
    /// Answered `Refused(QueueFull)`.
    pub queue_full: u64,
}

impl RefusedCounts {
    pub fn total(&self) -> u64 {
        self.corrupt
            + self.truncated
            + self.oversized
            + self.version
            + self.malformed
            + self.not_mine
            + self.replay
            + self.bad_radio
            + self.queue_full
    }

    fn frame(&mut self, e: FrameError) {
        let slot = match e {
            FrameError::Stuffing | FrameError::Crc { .. } => &mut self.corrupt,
            FrameError::Truncated { .. } | FrameError::Empty => &mut self.truncated,
            FrameError::Oversized { .. } => &mut self.oversized,
            FrameError::Version { .. } => &mut self.version,
            FrameError::Body | FrameError::Trailing { .. } | FrameError::BufferTooSmall => {
                &mut self.malformed
            }
        };
        *slot += 1;
    }
}

/// The simulated radio's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RadioStats {
    /// Frames and bytes (COBS and delimiter included) sent to tags.
    pub frames_down: u64,
    pub bytes_down: u64,
    /// Frames and bytes tags sent.
    pub frames_up: u64,
    pub bytes_up: u64,
    pub lost_down: u64,
    pub lost_up: u64,
    /// Transmissions of a frame after its first.
    pub retries: u64,
    /// Frames delivered (answered, or fire-and-forget acknowledgements sent).
    pub delivered: u64,
    /// Frames dropped undelivered after `expire_after`.
    pub expired: u64,
    /// Frames a tag dropped (damaged, or for another address).
    pub tag_dropped: u64,
    /// Total air time used, in microseconds.
    pub air_us: u64,
}

/// Everything the simulator counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Commands received intact and addressed to us.
    pub commands: u64,
    /// Commands received again (our answer was lost): answered again, applied once.
    pub duplicates: u64,
    /// Sessions the gateway started (a `StatusRequest` the window did not know).
    pub sessions: u64,
    /// `Send`s queued for tags.
    pub queued: u64,
    pub refused: RefusedCounts,
    /// Reports sent to the gateway (first transmissions), retransmitted, acknowledged.
    pub reports_sent: u64,
    pub report_retransmits: u64,
    pub reports_acked: u64,
    /// Reports given up on (attempts exhausted, or the report queue overflowed).
    pub reports_dropped: u64,
    /// Tag frames heard before any gateway spoke (nobody to tell).
    pub reports_unheard: u64,
    /// Bytes the pty would not take in time.
    pub serial_write_failures: u64,
    pub radio: RadioStats,
    pub refreshes: u64,
    pub flashes: u64,
    pub png_written: u64,
    pub png_failures: u64,
    /// Frames waiting for tags now.
    pub waiting: u64,
    /// The newest command seq from the gateway.
    pub gateway_seq: Option<u16>,
}

/// A tag as the simulator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagView {
    pub label: LabelId,
    pub layer: Option<LayerHash>,
    pub fields: Option<DynamicFields>,
    /// What it holds.
    pub content: Option<ContentHash>,
    /// What its panel shows (after the last refresh).
    pub shown: Option<ContentHash>,
    pub refreshes: u32,
    pub battery_mv: u16,
    pub offline: bool,
    pub waiting: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Ack,
    Refused(ApRefusal),
}

enum Judged {
    New,
    Duplicate(Answer),
    Replay,
}

/// The gateway's command seqs: the newest, a bitmap of the 64 before it, and their answers.
#[derive(Debug, Default)]
struct CommandWindow {
    highest: Option<Seq>,
    seen: u64,
    answers: VecDeque<(Seq, Answer)>,
}

impl CommandWindow {
    fn judge(&self, seq: Seq) -> Judged {
        let Some(highest) = self.highest else {
            return Judged::New;
        };
        if seq.is_newer_than(highest) {
            return Judged::New;
        }
        let behind = highest.0.wrapping_sub(seq.0);
        if behind >= WINDOW {
            return Judged::Replay;
        }
        if self.seen & (1u64 << behind) == 0 {
            return Judged::New;
        }
        let answer = self
            .answers
            .iter()
            .rev()
            .find(|(s, _)| *s == seq)
            .map_or(Answer::Ack, |(_, a)| *a);
        Judged::Duplicate(answer)
    }

    fn record(&mut self, seq: Seq, answer: Answer) {
        match self.highest {
            Some(h) if !seq.is_newer_than(h) => {
                let behind = h.0.wrapping_sub(seq.0);
                if behind < WINDOW {
                    self.seen |= 1u64 << behind;
                }
            }
            Some(h) => {
                let shift = u32::from(seq.0.wrapping_sub(h.0));
                self.seen = self.seen.checked_shl(shift).unwrap_or(0) | 1;
                self.highest = Some(seq);
            }
            None => {
                self.highest = Some(seq);
                self.seen = 1;
            }
        }
        self.answers.push_back((seq, answer));
        if self.answers.len() > usize::from(WINDOW) {
            self.answers.pop_front();
        }
    }
}

/// A radio packet waiting for its tag.
#[derive(Debug)]
struct Queued {
    packet: Vec<u8>,
    seq: Seq,
    /// Whether the tag answers it (everything but the gateway's `Ack`).
    answered: bool,
    deadline: Instant,
}

#[derive(Debug)]
enum ReportBody {
    Heard { rssi_dbm: i8, radio: Vec<u8> },
    Expired { label: LabelId, seq: Seq },
    Status,
}

#[derive(Debug)]
struct Report {
    body: ReportBody,
    due: Instant,
    /// Set at the first transmission, with the frame.
    seq: Option<Seq>,
    frame: Vec<u8>,
    sent_at: Option<Instant>,
    attempts: u8,
}

struct SimulatedTag {
    label: LabelId,
    tag: Box<SimTag>,
    fb: FrameBuffer<Vec<u8>>,
    offline: bool,
    rssi_dbm: i8,
    temperature_c: i8,
    battery_mv: u16,
    transmissions: u32,
    refreshes: u32,
    /// A Status is due (power-up, after a refresh).
    status_due: bool,
    last_status: Option<Instant>,
}

impl fmt::Debug for SimulatedTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulatedTag")
            .field("label", &self.label)
            .field("offline", &self.offline)
            .finish_non_exhaustive()
    }
}

impl SimulatedTag {
    fn sensors(&self, rng: &mut StdRng) -> Sensors {
        let drain = u16::try_from(self.transmissions / 100).unwrap_or(u16::MAX);
        Sensors {
            battery_mv: self.battery_mv.saturating_sub(drain).max(2_000),
            temperature_c: self.temperature_c.saturating_add(rng.random_range(-1..=1)),
            rssi_dbm: self.rssi_dbm.saturating_add(rng.random_range(-3..=3)),
        }
    }

    fn view(&self, waiting: usize) -> TagView {
        let status = self.tag.status(Sensors {
            battery_mv: self.battery_mv,
            ..Sensors::default()
        });
        TagView {
            label: self.label,
            layer: self.tag.layer(),
            fields: self.tag.fields().copied(),
            content: status.content,
            shown: if status.displayed {
                status.content
            } else {
                None
            },
            refreshes: self.refreshes,
            battery_mv: self.battery_mv,
            offline: self.offline,
            waiting,
        }
    }
}

#[derive(Debug)]
struct Radio {
    rng: StdRng,
    loss: f64,
    lose_next: u64,
    bytes_per_s: u32,
    busy_until: Instant,
    stats: RadioStats,
}

impl Radio {
    fn air(&mut self, bytes: usize) -> Duration {
        if self.bytes_per_s == 0 {
            return Duration::ZERO;
        }
        let d = Duration::from_secs_f64(bytes as f64 / f64::from(self.bytes_per_s));
        self.stats.air_us += u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        d
    }

    fn lost(&mut self) -> bool {
        if self.lose_next > 0 {
            self.lose_next -= 1;
            return true;
        }
        self.loss > 0.0 && self.rng.random::<f64>() < self.loss
    }
}

/// The access point and its tags as a state machine: bytes from the gateway and the time in,
/// bytes to the gateway out. [`EslSim`] runs it against a pty; tests may drive it directly.
#[derive(Debug)]
pub struct AccessPoint {
    config: EslSimConfig,
    started: Instant,
    reader: FrameReader,
    window: CommandWindow,
    /// A gateway has spoken: reports have someone to go to.
    session: bool,
    next_report_seq: Seq,
    last_report_seq: Seq,
    tags: Vec<SimulatedTag>,
    index: HashMap<LabelId, usize>,
    heard: HashSet<LabelId>,
    queues: HashMap<LabelId, VecDeque<Queued>>,
    waiting: usize,
    wakes: BinaryHeap<Reverse<(Instant, usize)>>,
    reports: VecDeque<Report>,
    radio: Radio,
    stats: SimStats,
}

impl AccessPoint {
    pub fn new(config: EslSimConfig, now: Instant) -> Result<AccessPoint> {
        config.validate()?;
        if let Some(dir) = &config.png_dir {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut tags = Vec::with_capacity(config.labels.len());
        let mut wakes = BinaryHeap::new();
        let checkin_ns = u64::try_from(config.checkin.as_nanos()).unwrap_or(u64::MAX);
        for (i, label) in config.labels.iter().enumerate() {
            let fb = FrameBuffer::new(config.panel, vec![0u8; config.panel.frame_bytes()])
                .map_err(|e| anyhow!("{e}"))?;
            tags.push(SimulatedTag {
                label: *label,
                tag: Box::new(SimTag::new(TagConfig::new(*label, config.panel))),
                fb,
                offline: false,
                rssi_dbm: rng.random_range(-85..=-45),
                temperature_c: if rng.random_bool(0.2) { 4 } else { 21 },
                battery_mv: rng.random_range(2_900..=3_100),
                transmissions: 0,
                refreshes: 0,
                status_due: true,
                last_status: None,
            });
            let phase = Duration::from_nanos(rng.random_range(0..checkin_ns.max(1)));
            wakes.push(Reverse((now + phase, i)));
        }
        let index = config
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| (*l, i))
            .collect();
        let first_seq = Seq(rng.random());
        let radio = Radio {
            rng,
            loss: config.loss,
            lose_next: 0,
            bytes_per_s: config.radio_bytes_per_s,
            busy_until: now,
            stats: RadioStats::default(),
        };
        Ok(AccessPoint {
            config,
            started: now,
            reader: FrameReader::new(),
            window: CommandWindow::default(),
            session: false,
            next_report_seq: first_seq,
            last_report_seq: first_seq,
            tags,
            index,
            heard: HashSet::new(),
            queues: HashMap::new(),
            waiting: 0,
            wakes,
            reports: VecDeque::new(),
            radio,
            stats: SimStats::default(),
        })
    }

    pub fn config(&self) -> &EslSimConfig {
        &self.config
    }

    pub fn stats(&self) -> SimStats {
        let mut s = self.stats;
        s.radio = self.radio.stats;
        s.waiting = self.waiting as u64;
        s.gateway_seq = self.window.highest.map(|s| s.0);
        s
    }

    pub fn tag(&self, label: LabelId) -> Option<TagView> {
        let i = *self.index.get(&label)?;
        Some(self.tags[i].view(self.queues.get(&label).map_or(0, VecDeque::len)))
    }

    pub fn tags(&self) -> Vec<TagView> {
        self.tags
            .iter()
            .map(|t| t.view(self.queues.get(&t.label).map_or(0, VecDeque::len)))
            .collect()
    }

    /// Sets the probability that a radio frame is lost.
    pub fn set_loss(&mut self, loss: f64) -> Result<()> {
        if !(0.0..1.0).contains(&loss) {
            bail!("loss is a probability below 1, got {loss}");
        }
        self.radio.loss = loss;
        Ok(())
    }

    /// Loses the next `n` radio frames, whichever way they go.
    pub fn lose_next(&mut self, n: u64) {
        self.radio.lose_next = self.radio.lose_next.saturating_add(n);
    }

    /// Takes a tag out of range (it hears nothing and sends nothing) or back.
    pub fn set_offline(&mut self, label: LabelId, offline: bool) -> Result<()> {
        let i = *self
            .index
            .get(&label)
            .ok_or_else(|| anyhow!("no tag {label}"))?;
        self.tags[i].offline = offline;
        Ok(())
    }

    /// The access point's status as it reports it.
    pub fn status(&self, now: Instant) -> ApStatus {
        ApStatus {
            id: self.config.ap,
            channel: 15,
            queued: u16::try_from(self.waiting).unwrap_or(u16::MAX),
            tags_heard: u32::try_from(self.heard.len()).unwrap_or(u32::MAX),
            uptime_s: u32::try_from(now.saturating_duration_since(self.started).as_secs())
                .unwrap_or(u32::MAX),
        }
    }

    /// Feeds bytes read from the serial link; answers go to `out`.
    pub fn receive(&mut self, bytes: &[u8], now: Instant, out: &mut Vec<u8>) {
        let mut packet = [0u8; MAX_PACKET_LEN];
        for &b in bytes {
            let len = match self.reader.push(b) {
                None => continue,
                Some(Err(e)) => Err(e),
                Some(Ok(p)) if p.len() > MAX_PACKET_LEN => Err(FrameError::Oversized {
                    len: p.len(),
                    max: MAX_PACKET_LEN,
                }),
                Some(Ok(p)) => {
                    packet[..p.len()].copy_from_slice(p);
                    Ok(p.len())
                }
            };
            match len {
                Ok(len) => self.command(&packet[..len], now, out),
                Err(e) => self.stats.refused.frame(e),
            }
        }
    }

    fn answer(&mut self, seq: Seq, answer: Answer, out: &mut Vec<u8>) {
        let report = match answer {
            Answer::Ack => ApReport::Ack { seq },
            Answer::Refused(reason) => ApReport::Refused { seq, reason },
        };
        let header = Header::new(self.config.ap, self.last_report_seq);
        if let Ok(frame) = encode_frame_vec(header, &report) {
            out.extend_from_slice(&frame);
        }
    }

    fn command(&mut self, packet: &[u8], now: Instant, out: &mut Vec<u8>) {
        let (header, body) = match open_packet(packet) {
            Ok(x) => x,
            Err(e) => return self.stats.refused.frame(e),
        };
        if header.address != self.config.ap.0 && header.address != ApId::ANY.0 {
            self.stats.refused.not_mine += 1;
            return self.answer(header.seq, Answer::Refused(ApRefusal::NotMine), out);
        }
        let command = match decode_body::<ApCommand>(body) {
            Ok(c) => c,
            Err(_) => {
                self.stats.refused.malformed += 1;
                return self.answer(header.seq, Answer::Refused(ApRefusal::Malformed), out);
            }
        };
        let seq = header.seq;
        match command {
            ApCommand::Ack { seq: acked } => {
                self.stats.commands += 1;
                let before = self.reports.len();
                self.reports.retain(|r| r.seq != Some(acked));
                self.stats.reports_acked += (before - self.reports.len()) as u64;
            }
            ApCommand::StatusRequest => {
                self.stats.commands += 1;
                if !matches!(self.window.judge(seq), Judged::New) {
                    // Changes nothing, so an unknown one is a new connection, not a replay.
                    self.window = CommandWindow::default();
                }
                if !self.session || self.window.highest.is_none() {
                    self.stats.sessions += 1;
                }
                self.session = true;
                self.window.record(seq, Answer::Ack);
                self.answer(seq, Answer::Ack, out);
                self.push_report(ReportBody::Status, now);
            }
            ApCommand::Send { radio } => match self.window.judge(seq) {
                Judged::Replay => self.stats.refused.replay += 1,
                Judged::Duplicate(answer) => {
                    self.stats.commands += 1;
                    self.stats.duplicates += 1;
                    self.answer(seq, answer, out);
                }
                Judged::New => {
                    self.stats.commands += 1;
                    self.session = true;
                    let answer = self.queue_radio(radio, now);
                    self.window.record(seq, answer);
                    self.answer(seq, answer, out);
                }
            },
        }
    }

    fn queue_radio(&mut self, radio: &[u8], now: Instant) -> Answer {
        let opened = open_packet(radio)
            .ok()
            .filter(|_| radio.len() <= MAX_RADIO_PACKET_LEN);
        let Some((header, body)) = opened else {
            self.stats.refused.bad_radio += 1;
            return Answer::Refused(ApRefusal::BadRadioPacket);
        };
        if self.waiting >= self.config.queue_limit {
            self.stats.refused.queue_full += 1;
            return Answer::Refused(ApRefusal::QueueFull);
        }
        let answered = !matches!(decode_body::<TagCommand>(body), Ok(TagCommand::Ack { .. }));
        self.queues
            .entry(LabelId(header.address))
            .or_default()
            .push_back(Queued {
                packet: radio.to_vec(),
                seq: header.seq,
                answered,
                deadline: now + self.config.expire_after,
            });
        self.waiting += 1;
        self.stats.queued += 1;
        Answer::Ack
    }

    fn push_report(&mut self, body: ReportBody, due: Instant) {
        if !self.session {
            self.stats.reports_unheard += 1;
            return;
        }
        if self.reports.len() >= self.config.report_limit {
            self.reports.pop_front();
            self.stats.reports_dropped += 1;
        }
        self.reports.push_back(Report {
            body,
            due,
            seq: None,
            frame: Vec::new(),
            sent_at: None,
            attempts: 0,
        });
    }

    /// When [`poll`](Self::poll) next has something to do without new input.
    pub fn next_deadline(&self) -> Instant {
        let wake = self.wakes.peek().map(|Reverse((t, _))| *t);
        let report = self
            .reports
            .iter()
            .map(|r| match r.sent_at {
                None => r.due,
                Some(t) => t + self.config.report_timeout,
            })
            .min();
        let expiry = self
            .queues
            .values()
            .filter_map(|q| q.iter().map(|f| f.deadline).min())
            .min();
        [wake, report, expiry]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.started + Duration::from_secs(3600))
    }

    /// Runs what is due at `now`: expiries, tag check-ins, reports to the gateway (into `out`).
    pub fn poll(&mut self, now: Instant, out: &mut Vec<u8>) {
        self.expire(now);
        while let Some(Reverse((wake, i))) = self.wakes.peek().copied() {
            if wake > now {
                break;
            }
            self.wakes.pop();
            self.exchange(i, wake);
            // A tag that fell behind (a busy radio) skips the check-ins it missed.
            let mut next = wake + self.config.checkin;
            if next <= now {
                next = now + self.config.checkin;
            }
            self.wakes.push(Reverse((next, i)));
        }
        self.transmit_reports(now, out);
    }

    fn expire(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for (label, queue) in &mut self.queues {
            queue.retain(|f| {
                if f.deadline > now {
                    return true;
                }
                expired.push((*label, f.seq));
                false
            });
        }
        self.queues.retain(|_, q| !q.is_empty());
        for (label, seq) in expired {
            self.waiting = self.waiting.saturating_sub(1);
            self.radio.stats.expired += 1;
            self.push_report(ReportBody::Expired { label, seq }, now);
        }
    }

    /// One check-in of tag `i`: deliver what waits for it, then its Status if it has one.
    fn exchange(&mut self, i: usize, wake: Instant) {
        let label = self.tags[i].label;
        if self.tags[i].offline {
            return;
        }
        let mut queue = self.queues.remove(&label).unwrap_or_default();
        let radio = &mut self.radio;
        let tag = &mut self.tags[i];
        let stats = &mut self.stats;
        let config = &self.config;
        let mut t = wake.max(radio.busy_until);
        let mut heard: Vec<(Instant, i8, Vec<u8>)> = Vec::new();
        let mut delivered = 0usize;

        while let Some(q) = queue.front() {
            let mut frame = [0u8; MAX_RADIO_FRAME_LEN];
            let Ok(n) = stuff(&q.packet, &mut frame) else {
                // Checked when queued; never reached.
                queue.pop_front();
                delivered += 1;
                continue;
            };
            let attempts = if q.answered { config.radio_attempts } else { 1 };
            let mut done = false;
            for attempt in 0..attempts {
                if attempt > 0 {
                    radio.stats.retries += 1;
                }
                t += radio.air(n);
                radio.stats.frames_down += 1;
                radio.stats.bytes_down += n as u64;
                if radio.lost() {
                    radio.stats.lost_down += 1;
                    if q.answered {
                        t += radio.air(ANSWER_WINDOW_BYTES);
                    }
                    continue;
                }
                let sensors = tag.sensors(&mut radio.rng);
                let mut rx = frame;
                let mut reply = [0u8; MAX_RADIO_FRAME_LEN];
                let reception = match tag.tag.receive(&mut rx[..n], sensors, &mut reply) {
                    Ok(r) => r,
                    Err(_) => {
                        radio.stats.tag_dropped += 1;
                        continue;
                    }
                };
                match reception.effect {
                    Effect::None => {}
                    Effect::Flash(_) => stats.flashes += 1,
                    Effect::Redraw(refresh) => {
                        let content = tag.tag.render(&mut tag.fb);
                        tag.tag.refreshed(content, refresh);
                        tag.refreshes += 1;
                        tag.status_due = true;
                        stats.refreshes += 1;
                        if let Some(dir) = &config.png_dir {
                            match write_png(&tag.fb, dir, label) {
                                Ok(()) => stats.png_written += 1,
                                Err(_) => stats.png_failures += 1,
                            }
                        }
                    }
                }
                if reception.reply_len == 0 {
                    done = true;
                    break;
                }
                tag.transmissions += 1;
                t += radio.air(reception.reply_len);
                radio.stats.frames_up += 1;
                radio.stats.bytes_up += reception.reply_len as u64;
                if radio.lost() {
                    radio.stats.lost_up += 1;
                    continue;
                }
                if let Ok(packet) = unstuff(&mut reply[..reception.reply_len]) {
                    heard.push((t, sensors.rssi_dbm, packet.to_vec()));
                }
                done = true;
                break;
            }
            if done || !q.answered {
                queue.pop_front();
                delivered += 1;
                radio.stats.delivered += u64::from(done);
            } else {
                // The tag went back to sleep; the rest waits for its next check-in.
                break;
            }
        }

        let retry_due = tag.tag.status_unacked()
            && tag
                .last_status
                .is_none_or(|last| t.saturating_duration_since(last) >= config.status_retry);
        let heartbeat_due = config.heartbeat.is_some_and(|every| {
            tag.last_status
                .is_none_or(|last| t.saturating_duration_since(last) >= every)
        });
        if tag.status_due || retry_due || heartbeat_due {
            let sensors = tag.sensors(&mut radio.rng);
            let mut frame = [0u8; MAX_RADIO_FRAME_LEN];
            if let Ok(n) = tag.tag.check_in(sensors, &mut frame) {
                tag.status_due = false;
                tag.last_status = Some(t);
                tag.transmissions += 1;
                t += radio.air(n);
                radio.stats.frames_up += 1;
                radio.stats.bytes_up += n as u64;
                if radio.lost() {
                    radio.stats.lost_up += 1;
                } else if let Ok(packet) = unstuff(&mut frame[..n]) {
                    heard.push((t, sensors.rssi_dbm, packet.to_vec()));
                }
            }
        }
        radio.busy_until = t;
        self.waiting = self.waiting.saturating_sub(delivered);
        if !queue.is_empty() {
            self.queues.insert(label, queue);
        }
        if !heard.is_empty() {
            self.heard.insert(label);
        }
        for (due, rssi_dbm, radio) in heard {
            self.push_report(ReportBody::Heard { rssi_dbm, radio }, due);
        }
    }

    fn transmit_reports(&mut self, now: Instant, out: &mut Vec<u8>) {
        let status = self.status(now);
        let timeout = self.config.report_timeout;
        let max = self.config.report_attempts;
        let ap = self.config.ap;
        let mut i = 0;
        while i < self.reports.len() {
            let r = &mut self.reports[i];
            match r.sent_at {
                None if r.due <= now => {
                    let seq = self.next_report_seq;
                    let report = match &r.body {
                        ReportBody::Heard { rssi_dbm, radio } => ApReport::Heard {
                            rssi_dbm: *rssi_dbm,
                            radio,
                        },
                        ReportBody::Expired { label, seq } => ApReport::Expired {
                            label: *label,
                            seq: *seq,
                        },
                        ReportBody::Status => ApReport::Status(status),
                    };
                    let Ok(frame) = encode_frame_vec(Header::new(ap, seq), &report) else {
                        // A heard radio packet always fits a link frame; never reached.
                        self.reports.remove(i);
                        self.stats.reports_dropped += 1;
                        continue;
                    };
                    self.next_report_seq = seq.next();
                    self.last_report_seq = seq;
                    out.extend_from_slice(&frame);
                    r.frame = frame;
                    r.seq = Some(seq);
                    r.sent_at = Some(now);
                    r.attempts = 1;
                    self.stats.reports_sent += 1;
                }
                Some(at) if now.saturating_duration_since(at) >= timeout => {
                    if r.attempts >= max {
                        self.reports.remove(i);
                        self.stats.reports_dropped += 1;
                        continue;
                    }
                    out.extend_from_slice(&r.frame);
                    r.sent_at = Some(now);
                    r.attempts += 1;
                    self.stats.report_retransmits += 1;
                }
                _ => {}
            }
            i += 1;
        }
    }
}

/// The screens are PNGs from the agent's own encoder (the one behind its
/// `/v1/labels/{id}/preview.png`), so a simulated tag's screen and the agent's preview of it are
/// one format and compare pixel for pixel.
pub use aisle_agent::labels::preview::{label_png, rgb};

/// Where the simulator writes `label`'s screen.
pub fn png_path(dir: &Path, label: LabelId) -> PathBuf {
    dir.join(format!("{label}.png"))
}

fn write_png<S: AsRef<[u8]> + AsMut<[u8]>>(
    fb: &FrameBuffer<S>,
    dir: &Path,
    label: LabelId,
) -> Result<()> {
    let bytes = label_png(fb)?;
    let path = png_path(dir, label);
    // Readers never see half a file.
    let tmp = dir.join(format!(".{label}.png.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// Commands `aisle-sim esl` reads from stdin.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Command {
    /// Print the counters.
    Stats,
    /// Print every tag: address, content, shown, refreshes, waiting frames.
    Tags,
    /// Set the radio loss probability.
    Loss(f64),
    /// Lose the next N radio frames.
    Lose(u64),
    /// Take a tag out of range.
    Offline(LabelId),
    /// Bring it back.
    Online(LabelId),
    Quit,
}

impl FromStr for Command {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let mut words = s.split_whitespace();
        let verb = words.next().unwrap_or("");
        let arg = words.next();
        if words.next().is_some() {
            bail!("one argument at most: {s}");
        }
        let need = || arg.ok_or_else(|| anyhow!("{verb} needs an argument"));
        let label = || -> Result<LabelId> { LabelId::parse(need()?).map_err(|e| anyhow!("{e}")) };
        Ok(match verb {
            "stats" => Command::Stats,
            "tags" => Command::Tags,
            "loss" => Command::Loss(need()?.parse().context("loss P (0 <= P < 1)")?),
            "lose" => Command::Lose(need()?.parse().context("lose N")?),
            "offline" => Command::Offline(label()?),
            "online" => Command::Online(label()?),
            "quit" | "exit" => Command::Quit,
            _ => bail!(
                "unknown command '{s}': stats | tags | loss P | lose N | offline ADDR | online ADDR | quit"
            ),
        })
    }
}

/// The simulator running on a pseudo-terminal, on its own thread. Dropping it stops it.
#[derive(Debug)]
pub struct EslSim {
    path: String,
    ap: Arc<Mutex<AccessPoint>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn lock(ap: &Mutex<AccessPoint>) -> MutexGuard<'_, AccessPoint> {
    ap.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EslSim {
    /// Opens a pty and starts the access point behind it; the gateway opens [`EslSim::path`].
    pub fn start(config: EslSimConfig) -> Result<EslSim> {
        let ap = AccessPoint::new(config, Instant::now())?;
        let (master, slave) = TTYPort::pair().context("open a pseudo-terminal")?;
        let path = slave
            .name()
            .ok_or_else(|| anyhow!("the pseudo-terminal has no name"))?;
        let ap = Arc::new(Mutex::new(ap));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let ap = Arc::clone(&ap);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("esl-sim".into())
                .spawn(move || serve(master, slave, &ap, &stop))?
        };
        Ok(EslSim {
            path,
            ap,
            stop,
            thread: Some(thread),
        })
    }

    /// The device path the gateway opens.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn stats(&self) -> SimStats {
        lock(&self.ap).stats()
    }

    pub fn tag(&self, label: LabelId) -> Option<TagView> {
        lock(&self.ap).tag(label)
    }

    pub fn tags(&self) -> Vec<TagView> {
        lock(&self.ap).tags()
    }

    pub fn set_loss(&self, loss: f64) -> Result<()> {
        lock(&self.ap).set_loss(loss)
    }

    pub fn lose_next(&self, n: u64) {
        lock(&self.ap).lose_next(n);
    }

    pub fn set_offline(&self, label: LabelId, offline: bool) -> Result<()> {
        lock(&self.ap).set_offline(label, offline)
    }

    /// Carries out a stdin command; returns what to print.
    pub fn command(&self, command: Command) -> Result<String> {
        Ok(match command {
            Command::Stats => format!("{:?}", self.stats()),
            Command::Tags => self
                .tags()
                .iter()
                .map(|t| {
                    let hash =
                        |h: Option<ContentHash>| h.map_or("-".to_string(), |h| h.to_string());
                    let price = t.fields.map_or("-".to_string(), |f| {
                        format!("{} {}", f.price(), f.currency().code())
                    });
                    format!(
                        "{} content {} shown {} price {price} refreshes {} waiting {}{}",
                        t.label,
                        hash(t.content),
                        hash(t.shown),
                        t.refreshes,
                        t.waiting,
                        if t.offline { " OFFLINE" } else { "" }
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Command::Loss(p) => {
                self.set_loss(p)?;
                format!("ok loss {p}")
            }
            Command::Lose(n) => {
                self.lose_next(n);
                format!("ok lose {n}")
            }
            Command::Offline(l) => {
                self.set_offline(l, true)?;
                format!("ok {l} offline")
            }
            Command::Online(l) => {
                self.set_offline(l, false)?;
                format!("ok {l} online")
            }
            Command::Quit => "bye".to_string(),
        })
    }

    /// Stops the simulator; returns its counters.
    pub fn shutdown(mut self) -> SimStats {
        self.stop_thread();
        self.stats()
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EslSim {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// The pty loop. `_slave` stays open so the master never reads EIO while no gateway has the
/// port open.
fn serve(mut master: TTYPort, _slave: TTYPort, ap: &Mutex<AccessPoint>, stop: &AtomicBool) {
    let mut buf = [0u8; 4096];
    let mut out = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let wait = lock(ap)
            .next_deadline()
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), Duration::from_millis(20));
        let _ = master.set_timeout(wait);
        let n = match master.read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::TimedOut | ErrorKind::Interrupted | ErrorKind::WouldBlock
                ) =>
            {
                0
            }
            Err(_) => {
                std::thread::sleep(wait);
                0
            }
        };
        let now = Instant::now();
        {
            let mut ap = lock(ap);
            if n > 0 {
                ap.receive(&buf[..n], now, &mut out);
            }
            ap.poll(now, &mut out);
        }
        if !out.is_empty() {
            let _ = master.set_timeout(Duration::from_millis(200));
            if master.write_all(&out).is_err() {
                lock(ap).stats.serial_write_failures += 1;
            }
            out.clear();
        }
    }
}
