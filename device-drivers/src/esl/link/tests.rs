use std::time::{Duration, Instant};

use aisle_protocol::esl::{
    Ack, ApCommand, ApId, ApRefusal, ApReport, ApStatus, DynamicFields, FrameError, FrameReader,
    Header, LabelCurrency, LabelId, Outcome, Panel, Seq, StatusFlags, TagCommand, TagReport,
    TagStatus, decode_packet, encode_frame_vec, encode_packet,
};
use proptest::prelude::*;

use super::*;

const AP: ApId = ApId(0xA9);

fn config() -> LinkConfig {
    LinkConfig {
        ap: ApId::ANY,
        window: 4,
        queue: 8,
        ack_timeout: Duration::from_millis(100),
        max_attempts: 3,
        keepalive: Duration::from_secs(1),
        silence_timeout: Duration::from_secs(3),
    }
}

/// A link just connected, its opening StatusRequest already taken off the wire.
fn connected(now: Instant) -> ApLink {
    let mut link = ApLink::new(config(), now);
    link.connect(now, Seq(100));
    let sent = transmit(&mut link, now).0;
    assert_eq!(sent, [(Seq(100), Command::StatusRequest)]);
    link
}

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Send(Vec<u8>),
    StatusRequest,
    Ack(Seq),
}

/// What the link put on the wire, decoded as the access point would.
fn transmit(link: &mut ApLink, now: Instant) -> (Vec<(Seq, Command)>, Vec<ApEvent>) {
    let mut out = Vec::new();
    let mut events = Vec::new();
    link.transmit(now, &mut out, &mut events);
    let mut reader = FrameReader::<{ aisle_protocol::esl::MAX_FRAME_LEN }>::new();
    let mut commands = Vec::new();
    for b in out {
        if let Some(packet) = reader.push(b) {
            let (h, c) = decode_packet::<ApCommand>(packet.expect("frame")).expect("command");
            commands.push((
                h.seq,
                match c {
                    ApCommand::Send { radio } => Command::Send(radio.to_vec()),
                    ApCommand::StatusRequest => Command::StatusRequest,
                    ApCommand::Ack { seq } => Command::Ack(seq),
                },
            ));
        }
    }
    (commands, events)
}

fn frame(seq: u16, report: &ApReport<'_>) -> Vec<u8> {
    encode_frame_vec(Header::new(AP, Seq(seq)), report).expect("encode")
}

fn receive(link: &mut ApLink, bytes: &[u8], now: Instant) -> Vec<ApEvent> {
    let mut events = Vec::new();
    link.receive(bytes, now, &mut events);
    events
}

fn tag_status() -> TagStatus {
    TagStatus {
        panel: Panel::Bw290,
        layer: None,
        content: None,
        displayed: true,
        battery_mv: 2900,
        temperature_c: 21,
        rssi_dbm: -60,
        flags: StatusFlags::default(),
    }
}

/// A tag's uplink packet, as the access point forwards it.
fn tag_packet(label: u32, seq: u16, report: &TagReport) -> Vec<u8> {
    let mut buf = [0u8; 96];
    let n = encode_packet(Header::new(LabelId(label), Seq(seq)), report, &mut buf).expect("tag");
    buf[..n].to_vec()
}

fn status(uptime_s: u32) -> ApReport<'static> {
    ApReport::Status(ApStatus {
        id: AP,
        channel: 11,
        queued: 0,
        tags_heard: 3,
        uptime_s,
    })
}

fn packet(label: u32, seq: u16) -> RadioPacket {
    let fields = DynamicFields::new(LabelCurrency::new(*b"EUR", 2).expect("cur"), 349).expect("f");
    RadioPacket::encode(LabelId(label), Seq(seq), &TagCommand::Fields(fields)).expect("packet")
}

#[test]
fn a_send_goes_out_untouched_and_the_access_points_ack_finishes_it() {
    let t0 = Instant::now();
    let mut link = connected(t0);
    let p = packet(0x1234, 7);
    link.submit(SendId(1), p.clone()).expect("submit");
    let (sent, _) = transmit(&mut link, t0);
    assert_eq!(sent, [(Seq(101), Command::Send(p.as_bytes().to_vec()))]);
    assert_eq!(link.ap(), None);
    let events = receive(&mut link, &frame(1, &ApReport::Ack { seq: Seq(101) }), t0);
    assert_eq!(
        events,
        [ApEvent::Sent {
            id: SendId(1),
            label: LabelId(0x1234),
            tag_seq: Seq(7),
            outcome: SendOutcome::Queued
        }]
    );
    assert_eq!(link.ap(), Some(AP));
    assert_eq!(link.outstanding(), 0);
    // Answers are not acknowledged.
    assert_eq!(transmit(&mut link, t0).0, []);
}

#[test]
fn an_unanswered_send_goes_again_with_its_seq_then_ends_without_answer() {
    let t0 = Instant::now();
    let mut link = connected(t0);
    link.submit(SendId(9), packet(1, 1)).expect("submit");
    let first = transmit(&mut link, t0).0;
    let t1 = t0 + Duration::from_millis(100);
    let again = transmit(&mut link, t1).0;
    assert_eq!(first, again);
    assert_eq!(link.next_deadline(), Some(t1 + Duration::from_millis(100)));
    let t2 = t1 + Duration::from_millis(100);
    assert_eq!(transmit(&mut link, t2).0, again);
    let (sent, events) = transmit(&mut link, t2 + Duration::from_millis(100));
    assert_eq!(sent, []);
    assert_eq!(
        events,
        [ApEvent::Sent {
            id: SendId(9),
            label: LabelId(1),
            tag_seq: Seq(1),
            outcome: SendOutcome::NoAnswer
        }]
    );
    assert_eq!(link.stats().retransmits, 2);
}

#[test]
fn a_refusal_ends_the_send_with_its_reason() {
    let t0 = Instant::now();
    let mut link = connected(t0);
    link.submit(SendId(2), packet(1, 1)).expect("submit");
    transmit(&mut link, t0);
    let refused = ApReport::Refused {
        seq: Seq(101),
        reason: ApRefusal::QueueFull,
    };
    let events = receive(&mut link, &frame(1, &refused), t0);
    assert!(matches!(
        events[..],
        [ApEvent::Sent {
            outcome: SendOutcome::Refused(ApRefusal::QueueFull),
            ..
        }]
    ));
}

#[test]
fn at_most_a_window_of_sends_is_unanswered_and_the_queue_is_bounded() {
    let t0 = Instant::now();
    let mut link = connected(t0);
    for i in 0..8 {
        link.submit(SendId(i), packet(1, 1)).expect("submit");
    }
    assert_eq!(link.submit(SendId(99), packet(1, 1)), Err(QueueFull));
    assert_eq!(transmit(&mut link, t0).0.len(), 4);
    receive(&mut link, &frame(1, &ApReport::Ack { seq: Seq(101) }), t0);
    let next = transmit(&mut link, t0).0;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].0, Seq(105));
}

#[test]
fn heard_reports_are_decoded_acknowledged_once_delivered_and_replays_dropped() {
    let t0 = Instant::now();
    let mut link = connected(t0);
    let report = TagReport::Ack(Ack {
        seq: Seq(7),
        outcome: Outcome::Accepted,
        status: tag_status(),
    });
    let radio = tag_packet(0x1234, 40, &report);
    let heard = |seq| {
        frame(
            seq,
            &ApReport::Heard {
                rssi_dbm: -71,
                radio: &radio,
            },
        )
    };
    let events = receive(&mut link, &heard(500), t0);
    assert_eq!(
        events,
        [ApEvent::Heard {
            label: LabelId(0x1234),
            seq: Seq(40),
            rssi_dbm: -71,
            report
        }]
    );
    assert_eq!(
        transmit(&mut link, t0).0,
        [(Seq(100), Command::Ack(Seq(500)))]
    );
    // Our acknowledgement was lost: acknowledged again, not delivered again.
    assert_eq!(receive(&mut link, &heard(500), t0), []);
    assert_eq!(
        transmit(&mut link, t0).0,
        [(Seq(100), Command::Ack(Seq(500)))]
    );
    assert_eq!(link.stats().duplicates, 1);
    // Out of order within the window: new.
    assert_eq!(receive(&mut link, &heard(502), t0).len(), 1);
    assert_eq!(receive(&mut link, &heard(501), t0).len(), 1);
    // Far behind: a replay.
    assert_eq!(receive(&mut link, &heard(400), t0), []);
    assert_eq!(link.stats().dropped.replay, 1);
    assert_eq!(link.stats().last_drop, Some(DropReason::Replay(Seq(400))));
}

#[test]
fn an_access_point_whose_uptime_went_back_restarted_and_its_count_starts_over() {
    let t0 = Instant::now();
    let mut link = connected(t0);
    assert_eq!(receive(&mut link, &frame(900, &status(3600)), t0).len(), 1);
    assert_eq!(receive(&mut link, &frame(1, &status(2)), t0).len(), 1);
    assert_eq!(link.stats().ap_restarts, 1);
    let expired = ApReport::Expired {
        label: LabelId(5),
        seq: Seq(3),
    };
    assert_eq!(
        receive(&mut link, &frame(2, &expired), t0),
        [ApEvent::Expired {
            label: LabelId(5),
            seq: Seq(3)
        }]
    );
}

#[test]
fn damaged_foreign_and_malformed_frames_are_counted_by_reason_and_the_next_frame_gets_through() {
    let t0 = Instant::now();
    let mut link = connected(t0);
    let mut bytes = Vec::new();
    // Line noise without zeros, then a delimiter: one corrupt frame.
    bytes.extend_from_slice(&[0x55, 0x13, 0xfe, 0x42, 0x99, 0x01, 0x77]);
    bytes.push(0);
    // A bit flipped in a valid frame: CRC.
    let mut flipped = frame(1, &status(10));
    flipped[5] ^= 0x04;
    bytes.extend_from_slice(&flipped);
    // Truncated: the first bytes of a frame and a delimiter.
    bytes.extend_from_slice(&[0x05, 0x01, 0xA9, 0x01, 0x01, 0x00]);
    // Oversized: 400 bytes without a delimiter.
    bytes.extend(std::iter::repeat_n(0x11, 400));
    bytes.push(0);
    // Another protocol version.
    let mut p = [0u8; 64];
    let n = encode_packet(Header::new(AP, Seq(2)), &status(10), &mut p).expect("packet");
    p[0] = 9;
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(&p[..n - 4]);
    p[n - 4..n].copy_from_slice(&crc.to_le_bytes());
    let mut v = [0u8; 80];
    let m = aisle_protocol::esl::stuff(&p[..n], &mut v).expect("stuff");
    bytes.extend_from_slice(&v[..m]);
    // A gateway command where a report belongs: malformed body.
    bytes.extend(encode_frame_vec(Header::new(AP, Seq(3)), &ApCommand::StatusRequest).expect("f"));
    // Another access point.
    bytes.extend(encode_frame_vec(Header::new(ApId(0xB0), Seq(4)), &status(5)).expect("f"));
    // A tag packet inside Heard with a broken CRC.
    let mut radio = tag_packet(1, 1, &TagReport::Status(tag_status()));
    radio[3] ^= 0xff;
    bytes.extend(frame(
        5,
        &ApReport::Heard {
            rssi_dbm: -50,
            radio: &radio,
        },
    ));
    // An answer to nothing.
    bytes.extend(frame(6, &ApReport::Ack { seq: Seq(7777) }));
    // And then a good one.
    bytes.extend(frame(7, &status(11)));

    // Learn the access point first, so the foreign one is foreign.
    receive(&mut link, &frame(0, &status(9)), t0);
    let events = receive(&mut link, &bytes, t0);
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(matches!(
        events[0],
        ApEvent::Status(ApStatus { uptime_s: 11, .. })
    ));
    let d = link.stats().dropped;
    assert_eq!(
        (
            d.corrupt,
            d.truncated,
            d.oversized,
            d.version,
            d.malformed,
            d.not_our_ap,
            d.bad_radio,
            d.unknown_answer
        ),
        (2, 1, 1, 1, 1, 1, 1, 1),
        "{d:?}"
    );
    assert_eq!(d.total(), 9);
}

#[test]
fn losing_the_port_ends_every_submitted_packet_as_link_down() {
    let t0 = Instant::now();
    let mut link = connected(t0);
    for i in 0..6 {
        link.submit(SendId(i), packet(1, 1)).expect("submit");
    }
    transmit(&mut link, t0);
    let mut events = Vec::new();
    link.disconnect(&mut events);
    assert_eq!(events.len(), 6);
    assert!(events.iter().all(|e| matches!(
        e,
        ApEvent::Sent {
            outcome: SendOutcome::LinkDown,
            ..
        }
    )));
    assert_eq!(link.outstanding(), 0);
    assert_eq!(transmit(&mut link, t0).0, []);
    // A new connection starts with a fresh count and asks for the status again.
    link.connect(t0, Seq(7));
    assert_eq!(
        transmit(&mut link, t0).0,
        [(Seq(7), Command::StatusRequest)]
    );
    assert_eq!(link.stats().reconnects, 1);
}

#[test]
fn a_quiet_access_point_is_asked_for_its_status_then_declared_silent() {
    let t0 = Instant::now();
    let mut link = connected(t0);
    assert_eq!(link.next_deadline(), Some(t0 + Duration::from_secs(1)));
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(
        transmit(&mut link, t1).0,
        [(Seq(101), Command::StatusRequest)]
    );
    // The access point takes it: its Ack is not an unknown answer.
    receive(&mut link, &frame(1, &ApReport::Ack { seq: Seq(101) }), t1);
    assert_eq!(link.stats().dropped.total(), 0);
    assert!(!link.is_silent(t1 + Duration::from_secs(2)));
    assert!(link.is_silent(t1 + Duration::from_secs(3)));
}

#[test]
fn a_configured_access_point_refuses_others_from_the_first_frame() {
    let t0 = Instant::now();
    let mut link = ApLink::new(
        LinkConfig {
            ap: ApId(0xB0),
            ..config()
        },
        t0,
    );
    link.connect(t0, Seq(0));
    assert_eq!(receive(&mut link, &frame(1, &status(1)), t0), []);
    assert_eq!(link.stats().dropped.not_our_ap, 1);
}

#[test]
fn the_replay_window_judges_across_the_wrap() {
    let mut w = ReplayWindow::default();
    assert_eq!(w.check(Seq(65_530)), Freshness::New);
    assert_eq!(w.check(Seq(3)), Freshness::New);
    assert_eq!(w.check(Seq(65_530)), Freshness::Duplicate);
    assert_eq!(w.check(Seq(65_535)), Freshness::New);
    assert_eq!(w.check(Seq(65_535)), Freshness::Duplicate);
    assert_eq!(w.check(Seq(65_400)), Freshness::Replay);
    // A jump beyond the window forgets what lay behind it.
    assert_eq!(w.check(Seq(1_000)), Freshness::New);
    assert_eq!(w.check(Seq(999)), Freshness::New);
    assert_eq!(w.check(Seq(3)), Freshness::Replay);
}

proptest! {
    /// Whatever arrives on the wire: no panic, every drop counted, and only reports that decode
    /// are delivered.
    #[test]
    fn any_bytes_from_the_port_are_survived(chunks in proptest::collection::vec(
        proptest::collection::vec(any::<u8>(), 0..300), 0..12)
    ) {
        let t0 = Instant::now();
        let mut link = connected(t0);
        link.submit(SendId(1), packet(1, 1)).expect("submit");
        let mut events = Vec::new();
        for c in &chunks {
            link.receive(c, t0, &mut events);
            let mut out = Vec::new();
            link.transmit(t0, &mut out, &mut events);
        }
        let s = link.stats();
        prop_assert!(s.frames_in + s.dropped.total() <= chunks.iter().map(|c| c.len() as u64).sum::<u64>());
        prop_assert!(link.outstanding() <= 1);
    }
}

#[test]
fn radio_packets_refuse_what_a_tag_would_refuse() {
    let big = [0u8; 80];
    let chunk = TagCommand::LayerChunk(aisle_protocol::esl::LayerChunk {
        layer: aisle_protocol::esl::LayerHash([0; 8]),
        total: 80,
        offset: 0,
        data: &big,
    });
    assert!(matches!(
        RadioPacket::encode(LabelId(1), Seq(1), &chunk),
        Err(FrameError::BufferTooSmall | FrameError::Oversized { .. })
    ));
    let p = packet(0xDEAD_BEEF, 3);
    assert_eq!((p.label(), p.seq()), (LabelId(0xDEAD_BEEF), Seq(3)));
    assert!(p.as_bytes().len() <= aisle_protocol::esl::MAX_RADIO_PACKET_LEN);
}
