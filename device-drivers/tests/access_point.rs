//! The access-point driver over real pseudo-terminals, with a scripted access point on the other
//! end. The driver opens a symlink, as it would open a udev `/dev/serial/by-id/` name, so a test
//! can unplug the access point and plug a new one in under the same name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use aisle_drivers::backoff::Backoff;
use aisle_drivers::esl::access_point::spawn;
use aisle_drivers::esl::{
    ApConfig, ApEvent, ApHandle, LinkConfig, LinkState, RadioPacket, SendError, SendOutcome,
};
use aisle_protocol::esl::{
    Ack, ApCommand, ApId, ApReport, ApStatus, DynamicFields, FrameReader, Header, LabelCurrency,
    LabelId, Outcome, Panel, Seq, StatusFlags, TagCommand, TagReport, TagStatus, decode_packet,
    encode_frame_vec, encode_packet,
};
use serialport::{SerialPort, TTYPort};

const AP: ApId = ApId(0x0000_0A01);
const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Send(Vec<u8>),
    StatusRequest,
    Ack(Seq),
}

/// The access point's end of a pseudo-terminal pair, plugged in under `link`.
struct FakeAp {
    master: TTYPort,
    _slave: TTYPort,
    reader: FrameReader,
    seq: u16,
    uptime_s: u32,
}

impl FakeAp {
    fn plug(link: &Path) -> FakeAp {
        let (mut master, slave) = TTYPort::pair().expect("pty pair");
        master.set_timeout(Duration::from_millis(50)).unwrap();
        let name = slave.name().expect("slave name");
        let tmp = link.with_extension("new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, link).unwrap();
        FakeAp {
            master,
            _slave: slave,
            reader: FrameReader::new(),
            seq: 0,
            uptime_s: 100,
        }
    }

    /// Reads until `want` commands arrived (or fails after a while).
    fn commands(&mut self, want: usize) -> Vec<(Seq, Command)> {
        let deadline = Instant::now() + WAIT;
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        while out.len() < want {
            assert!(Instant::now() < deadline, "waited for {want}, got {out:?}");
            let n = match self.master.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                Err(e) => panic!("fake AP read: {e}"),
            };
            for &b in &buf[..n] {
                if let Some(packet) = self.reader.push(b) {
                    let (h, c) = decode_packet::<ApCommand>(packet.expect("frame")).expect("cmd");
                    out.push((
                        h.seq,
                        match c {
                            ApCommand::Send { radio } => Command::Send(radio.to_vec()),
                            ApCommand::StatusRequest => Command::StatusRequest,
                            ApCommand::Ack { seq } => Command::Ack(seq),
                        },
                    ));
                }
            }
        }
        out
    }

    /// The next command that is not an acknowledgement.
    fn command(&mut self) -> (Seq, Command) {
        loop {
            let (seq, c) = self.commands(1).remove(0);
            if !matches!(c, Command::Ack(_)) {
                return (seq, c);
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
        self.master.flush().unwrap();
    }

    fn frame(&mut self, report: &ApReport<'_>) -> (Seq, Vec<u8>) {
        self.seq = self.seq.wrapping_add(1);
        let seq = Seq(self.seq);
        (seq, encode_frame_vec(Header::new(AP, seq), report).unwrap())
    }

    fn report(&mut self, report: &ApReport<'_>) -> Seq {
        let (seq, bytes) = self.frame(report);
        self.write(&bytes);
        seq
    }

    fn status(&self) -> ApReport<'static> {
        ApReport::Status(ApStatus {
            id: AP,
            channel: 15,
            queued: 0,
            tags_heard: 0,
            uptime_s: self.uptime_s,
        })
    }

    /// Answers the driver's opening StatusRequest, as an access point does, until the driver
    /// acknowledges a Status (requests left over from an earlier connection are answered too).
    fn greet(&mut self) {
        let mut sent = Vec::new();
        loop {
            let (seq, c) = self.commands(1).remove(0);
            match c {
                Command::StatusRequest => {
                    self.report(&ApReport::Ack { seq });
                    let status = self.status();
                    sent.push(self.report(&status));
                }
                Command::Ack(acked) if sent.contains(&acked) => return,
                other => panic!("greeting: unexpected {other:?}"),
            }
        }
    }
}

fn config(path: &Path) -> ApConfig {
    ApConfig {
        backoff: Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(200),
        },
        ..ApConfig::new(path.to_string_lossy())
    }
}

/// Events up to and including the first that `want` accepts.
fn events_until(
    events: &Receiver<ApEvent>,
    what: &str,
    want: impl Fn(&ApEvent) -> bool,
) -> Vec<ApEvent> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(e) => {
                let done = want(&e);
                seen.push(e);
                if done {
                    return seen;
                }
            }
            Err(e) => panic!("waiting for {what}: {e}; saw {seen:?}"),
        }
    }
}

/// Waits for the first event that `want` accepts, skipping others.
fn wait_for(events: &Receiver<ApEvent>, what: &str, want: impl Fn(&ApEvent) -> bool) -> ApEvent {
    let mut seen = events_until(events, what, want);
    seen.pop().expect("one event")
}

fn connected(events: &Receiver<ApEvent>) {
    wait_for(events, "connected to the AP", |e| {
        matches!(e, ApEvent::Link(LinkState::Connected { ap: Some(AP) }))
    });
}

fn eur(price: u32) -> DynamicFields {
    DynamicFields::new(LabelCurrency::new(*b"EUR", 2).unwrap(), price).unwrap()
}

fn price_packet(label: u32, seq: u16) -> RadioPacket {
    RadioPacket::encode(LabelId(label), Seq(seq), &TagCommand::Fields(eur(349))).unwrap()
}

fn tag_ack(label: u32, uplink: u16, acked: Seq) -> (Vec<u8>, TagReport) {
    let report = TagReport::Ack(Ack {
        seq: acked,
        outcome: Outcome::Accepted,
        status: TagStatus {
            panel: Panel::Bwr290,
            layer: None,
            content: None,
            displayed: false,
            battery_mv: 2950,
            temperature_c: 19,
            rssi_dbm: -64,
            flags: StatusFlags::default(),
        },
    });
    let mut buf = [0u8; 96];
    let n = encode_packet(Header::new(LabelId(label), Seq(uplink)), &report, &mut buf).unwrap();
    (buf[..n].to_vec(), report)
}

struct Rig {
    _dir: tempfile::TempDir,
    path: PathBuf,
    ap: FakeAp,
    handle: ApHandle,
    events: Receiver<ApEvent>,
}

/// A driver connected to a fake access point that has answered.
fn rig(tweak: impl FnOnce(&mut ApConfig)) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ap0");
    let mut ap = FakeAp::plug(&path);
    let mut cfg = config(&path);
    tweak(&mut cfg);
    let (handle, events) = spawn(cfg).unwrap();
    ap.greet();
    connected(&events);
    Rig {
        _dir: dir,
        path,
        ap,
        handle,
        events,
    }
}

#[test]
fn a_price_change_goes_to_the_access_point_untouched_and_the_tags_answer_comes_back() {
    let mut r = rig(|_| {});
    let packet = price_packet(0x00C0_FFEE, 41);
    let id = r.handle.send(packet.clone()).unwrap();
    let (seq, c) = r.ap.command();
    assert_eq!(c, Command::Send(packet.as_bytes().to_vec()));
    r.ap.report(&ApReport::Ack { seq });
    let sent = wait_for(&r.events, "sent", |e| matches!(e, ApEvent::Sent { .. }));
    assert_eq!(
        sent,
        ApEvent::Sent {
            id,
            label: LabelId(0x00C0_FFEE),
            tag_seq: Seq(41),
            outcome: SendOutcome::Queued
        }
    );

    let (radio, report) = tag_ack(0x00C0_FFEE, 7, Seq(41));
    let heard_seq = r.ap.report(&ApReport::Heard {
        rssi_dbm: -58,
        radio: &radio,
    });
    let heard = wait_for(&r.events, "heard", |e| matches!(e, ApEvent::Heard { .. }));
    assert_eq!(
        heard,
        ApEvent::Heard {
            label: LabelId(0x00C0_FFEE),
            seq: Seq(7),
            rssi_dbm: -58,
            report
        }
    );
    assert!(matches!(r.ap.commands(1)[..], [(_, Command::Ack(s))] if s == heard_seq));

    let status = r.handle.status();
    assert!(status.is_connected());
    assert_eq!(status.ap.map(|s| s.id), Some(AP));
    assert_eq!(status.stats.dropped.total(), 0);
    assert!(status.last_error.is_none());
}

#[test]
fn noise_and_damaged_frames_on_the_line_are_counted_and_the_link_carries_on() {
    let mut r = rig(|_| {});
    let mut noise = Vec::new();
    let mut x = 0x1234_5678u32;
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push(x.to_le_bytes()[1]);
    }
    noise.push(0);
    r.ap.write(&noise);
    // A frame cut short by a glitch, then a frame with a flipped bit.
    let (_, good) = r.ap.frame(&ApReport::Expired {
        label: LabelId(1),
        seq: Seq(1),
    });
    r.ap.write(&good[..good.len() / 2]);
    r.ap.write(&[0]);
    let (_, mut flipped) = r.ap.frame(&ApReport::Expired {
        label: LabelId(2),
        seq: Seq(2),
    });
    flipped[4] ^= 0x10;
    r.ap.write(&flipped);
    let (radio, _) = tag_ack(9, 1, Seq(1));
    r.ap.report(&ApReport::Heard {
        rssi_dbm: -40,
        radio: &radio,
    });
    wait_for(&r.events, "heard after noise", |e| {
        matches!(
            e,
            ApEvent::Heard {
                label: LabelId(9),
                ..
            }
        )
    });
    let s = r.handle.status().stats;
    assert!(s.dropped.total() >= 3, "{:?}", s.dropped);
    assert!(s.dropped.corrupt >= 2, "{:?}", s.dropped);
    assert!(s.last_drop.is_some());
    assert!(r.handle.status().is_connected());
}

#[test]
fn an_oversized_frame_is_dropped_whole_and_the_next_one_read() {
    let mut r = rig(|_| {});
    let mut big = vec![0x42u8; 5000];
    big.push(0);
    r.ap.write(&big);
    r.ap.uptime_s += 1;
    let status = r.ap.status();
    r.ap.report(&status);
    wait_for(&r.events, "status after the oversized frame", |e| {
        matches!(e, ApEvent::Status(ApStatus { uptime_s: 101, .. }))
    });
    let d = r.handle.status().stats.dropped;
    assert_eq!((d.oversized, d.total()), (1, 1), "{d:?}");
}

#[test]
fn repeated_and_replayed_reports_are_acknowledged_but_not_delivered_again() {
    let mut r = rig(|_| {});
    let (radio, _) = tag_ack(5, 1, Seq(1));
    let (seq, frame) = r.ap.frame(&ApReport::Heard {
        rssi_dbm: -40,
        radio: &radio,
    });
    r.ap.write(&frame);
    r.ap.write(&frame);
    let acks = r.ap.commands(2);
    assert_eq!(
        acks.iter().filter(|(_, c)| *c == Command::Ack(seq)).count(),
        2
    );
    // A much older frame of the same access point.
    let old = encode_frame_vec(
        Header::new(AP, Seq(seq.0.wrapping_sub(500))),
        &ApReport::Expired {
            label: LabelId(5),
            seq: Seq(1),
        },
    )
    .unwrap();
    r.ap.write(&old);
    r.ap.commands(1);
    r.ap.uptime_s += 1;
    let status = r.ap.status();
    r.ap.report(&status);
    let seen = events_until(&r.events, "status", |e| {
        matches!(e, ApEvent::Status(ApStatus { uptime_s: 101, .. }))
    });
    let heard = seen
        .iter()
        .filter(|e| matches!(e, ApEvent::Heard { .. }))
        .count();
    let expired = seen
        .iter()
        .filter(|e| matches!(e, ApEvent::Expired { .. }))
        .count();
    assert_eq!((heard, expired), (1, 0), "{seen:?}");
    let s = r.handle.status().stats;
    assert_eq!((s.duplicates, s.dropped.replay), (1, 1), "{s:?}");
}

#[test]
fn unplugging_ends_what_was_in_flight_and_a_replugged_access_point_is_picked_up_again() {
    let mut r = rig(|_| {});
    let id = r.handle.send(price_packet(3, 1)).unwrap();
    let (_, c) = r.ap.command();
    assert!(matches!(c, Command::Send(_)));

    // Unplug: the device's name goes first (as udev removes it), then the pseudo-terminal's
    // access point end. Without the first step a parallel test could be given the same
    // /dev/pts number and the driver would open it under the stale name (seen in CI).
    std::fs::remove_file(&r.path).unwrap();
    drop(r.ap);
    let down = wait_for(&r.events, "link down outcome", |e| {
        matches!(e, ApEvent::Sent { .. })
    });
    assert!(matches!(
        down,
        ApEvent::Sent { id: got, outcome: SendOutcome::LinkDown, .. } if got == id
    ));
    wait_for(&r.events, "reconnecting", |e| {
        matches!(e, ApEvent::Link(LinkState::Reconnecting { .. }))
    });
    let status = r.handle.status();
    assert!(!status.is_connected());
    assert!(status.last_error.is_some(), "{status:?}");
    assert_eq!(
        r.handle.send(price_packet(3, 2)),
        Err(SendError::Disconnected)
    );

    // Let it fail to reopen a few times, then plug a new access point in under the same name.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!r.handle.status().is_connected());
    let mut ap = FakeAp::plug(&r.path);
    ap.uptime_s = 1;
    ap.greet();
    connected(&r.events);
    let packet = price_packet(3, 2);
    r.handle.send(packet.clone()).unwrap();
    let (seq, c) = ap.command();
    assert_eq!(c, Command::Send(packet.as_bytes().to_vec()));
    ap.report(&ApReport::Ack { seq });
    wait_for(&r.events, "sent after replug", |e| {
        matches!(
            e,
            ApEvent::Sent {
                outcome: SendOutcome::Queued,
                ..
            }
        )
    });
    assert_eq!(r.handle.status().stats.reconnects, 1);
}

#[test]
fn an_access_point_that_stops_answering_is_reopened() {
    let mut r = rig(|c| {
        c.link = LinkConfig {
            keepalive: Duration::from_millis(100),
            silence_timeout: Duration::from_millis(400),
            ..c.link
        };
    });
    // Stay silent: keepalives go unanswered.
    let (_, c) = r.ap.command();
    assert_eq!(c, Command::StatusRequest);
    let e = wait_for(&r.events, "reconnecting", |e| {
        matches!(e, ApEvent::Link(LinkState::Reconnecting { .. }))
    });
    let ApEvent::Link(LinkState::Reconnecting { last_error, .. }) = e else {
        unreachable!()
    };
    assert!(last_error.contains("no answer"), "{last_error}");
    // The port is still there: the driver reopens it and asks again.
    r.ap.greet();
    connected(&r.events);
}

#[test]
fn a_full_queue_refuses_sends_at_once_and_every_send_ends_exactly_once() {
    let mut r = rig(|c| {
        c.queue = 3;
        c.link.window = 1;
    });
    let ids: Vec<_> = (0..3)
        .map(|i| r.handle.send(price_packet(1, i)).unwrap())
        .collect();
    assert_eq!(r.handle.send(price_packet(1, 9)), Err(SendError::QueueFull));
    for _ in 0..3 {
        let (seq, _) = r.ap.command();
        r.ap.report(&ApReport::Ack { seq });
    }
    let mut done = Vec::new();
    while done.len() < 3 {
        if let ApEvent::Sent { id, outcome, .. } =
            wait_for(&r.events, "sent", |e| matches!(e, ApEvent::Sent { .. }))
        {
            assert_eq!(outcome, SendOutcome::Queued);
            done.push(id);
        }
    }
    assert_eq!(done, ids);
    // Room again.
    r.handle.send(price_packet(1, 10)).unwrap();
}

#[test]
fn shutting_down_stops_the_thread_and_says_so() {
    let r = rig(|_| {});
    let events = r.events;
    r.handle.shutdown();
    wait_for(&events, "stopped", |e| {
        matches!(e, ApEvent::Link(LinkState::Stopped))
    });
}

#[test]
fn a_caller_that_stops_listening_stops_the_driver() {
    let r = rig(|_| {});
    drop(r.events);
    // The driver notices at its next event: the keepalive answer.
    let mut ap = r.ap;
    let status = ap.status();
    ap.report(&status);
    let deadline = Instant::now() + WAIT;
    while r.handle.send(price_packet(1, 1)) != Err(SendError::Stopped) {
        assert!(Instant::now() < deadline, "still running");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(r.handle.status().state, LinkState::Stopped);
}
