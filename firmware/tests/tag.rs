//! The tag state machine driven through frames, as the access point delivers them.
#![allow(clippy::unwrap_used)]
mod support;

use aisle_firmware::tag::{Dropped, Reception};
use aisle_firmware::{Effect, FrameBuffer, Panel, Refresh, Sensors, Tag, TagConfig, render_label};
use aisle_protocol::esl::{
    Ack, DynamicFields, FrameError, Header, LabelId, LayerChunk, LayerHash, LayerImage, LedColour,
    LedFlash, MAX_RADIO_FRAME_LEN, Outcome, Seq, StatusFlags, TagCommand, TagReport, TagStatus,
    content_hash, decode_frame, encode_frame_vec, layer_chunks,
};
use proptest::prelude::*;
use support::*;

const LABEL: LabelId = LabelId(0x00A1_5E01);
const SENSORS: Sensors = Sensors {
    battery_mv: 2_900,
    temperature_c: 19,
    rssi_dbm: -67,
};

fn tag(panel: Panel) -> Tag {
    Tag::new(TagConfig::new(LABEL, panel))
}

fn command(seq: u16, cmd: &TagCommand<'_>) -> Vec<u8> {
    encode_frame_vec(Header::new(LABEL, Seq(seq)), cmd).unwrap()
}

/// Delivers a frame; returns the tag's answer (decoded) and the effect.
fn deliver<const S: usize, const C: usize>(
    tag: &mut Tag<S, C>,
    mut frame: Vec<u8>,
) -> (Option<TagReport>, Effect) {
    let mut reply = [0u8; MAX_RADIO_FRAME_LEN];
    let Reception { reply_len, effect } = tag.receive(&mut frame, SENSORS, &mut reply).unwrap();
    let report = (reply_len > 0).then(|| {
        let (header, report) = decode_frame::<TagReport>(&mut reply[..reply_len]).unwrap();
        assert_eq!(
            header.address, LABEL.0,
            "a tag answers from its own address"
        );
        report
    });
    (report, effect)
}

fn ack<const S: usize, const C: usize>(
    tag: &mut Tag<S, C>,
    seq: u16,
    cmd: &TagCommand<'_>,
) -> (Ack, Effect) {
    match deliver(tag, command(seq, cmd)) {
        (Some(TagReport::Ack(ack)), effect) => {
            assert_eq!(ack.seq, Seq(seq), "the ack names the frame");
            (ack, effect)
        }
        other => panic!("expected an ack, got {other:?}"),
    }
}

fn price(minor: u32) -> DynamicFields {
    DynamicFields::new(eur(), minor).unwrap()
}

/// Sends a whole layer; returns the seq after the last chunk.
fn send_layer<const S: usize, const C: usize>(
    tag: &mut Tag<S, C>,
    bytes: &[u8],
    name: LayerHash,
    mut seq: u16,
) -> u16 {
    for chunk in layer_chunks(name, bytes, 0) {
        let (a, _) = ack(tag, seq, &TagCommand::LayerChunk(chunk));
        assert_eq!(a.outcome, Outcome::Accepted, "chunk at {}", chunk.offset);
        seq += 1;
    }
    seq
}

#[test]
fn a_price_change_is_applied_once_and_confirmed_with_its_content_hash() {
    let mut tag = tag(Panel::Bw290);
    let fields = price(349);
    let (a, effect) = ack(&mut tag, 1, &TagCommand::Fields(fields));
    assert_eq!(a.outcome, Outcome::Accepted);
    assert_eq!(a.status.content, content_hash(None, Some(&fields)));
    assert!(!a.status.displayed, "accepted, not yet on the panel");
    assert_eq!(effect, Effect::Redraw(Refresh::Partial));

    // The ack was lost: the same frame again changes nothing and gets the same answer.
    let (again, effect) = ack(&mut tag, 1, &TagCommand::Fields(fields));
    assert_eq!(
        (again.outcome, again.status.content),
        (a.outcome, a.status.content)
    );
    assert_eq!(effect, Effect::None);

    // Drawn and refreshed: the status now says so.
    let mut fb = FrameBuffer::new(Panel::Bw290, vec![0u8; Panel::Bw290.frame_bytes()]).unwrap();
    let shown = tag.render(&mut fb);
    tag.refreshed(shown, Refresh::Full);
    assert!(tag.status(SENSORS).displayed);
    assert_eq!(tag.pending_redraw(), None);
}

#[test]
fn replays_and_a_gateway_that_lost_count_are_told_where_to_continue() {
    let mut tag = tag(Panel::Bw290);
    ack(&mut tag, 100, &TagCommand::Fields(price(349)));
    let before = tag.status(SENSORS);
    // An old frame heard again (a replay) changes nothing.
    let (a, effect) = ack(&mut tag, 99, &TagCommand::Fields(price(100)));
    assert_eq!(a.outcome, Outcome::Stale { last: Seq(100) });
    assert_eq!(effect, Effect::None);
    assert_eq!(tag.status(SENSORS), before);
    // A restarted gateway counting from 0 is refused too, learns 100, and continues at 101.
    let (a, _) = ack(&mut tag, 0, &TagCommand::Fields(price(299)));
    assert_eq!(a.outcome, Outcome::Stale { last: Seq(100) });
    let (a, _) = ack(&mut tag, 101, &TagCommand::Fields(price(299)));
    assert_eq!(a.outcome, Outcome::Accepted);
    assert_eq!(tag.fields(), Some(&price(299)));
}

#[test]
fn damaged_and_foreign_frames_are_dropped_without_an_answer() {
    let mut tag = tag(Panel::Bw290);
    let mut reply = [0u8; MAX_RADIO_FRAME_LEN];
    let mut other =
        encode_frame_vec(Header::new(LabelId(7), Seq(1)), &TagCommand::StatusRequest).unwrap();
    assert_eq!(
        tag.receive(&mut other, SENSORS, &mut reply),
        Err(Dropped::NotForMe(7))
    );
    let mut damaged = command(1, &TagCommand::Fields(price(349)));
    damaged[9] ^= 0x40;
    assert!(matches!(
        tag.receive(&mut damaged, SENSORS, &mut reply),
        Err(Dropped::Frame(
            FrameError::Crc { .. } | FrameError::Stuffing
        ))
    ));
    assert_eq!(tag.status(SENSORS).content, None);
    // Too small a reply buffer is the caller's bug, reported, not a panic.
    let mut ok = command(1, &TagCommand::StatusRequest);
    assert_eq!(
        tag.receive(&mut ok, SENSORS, &mut reply[..8]),
        Err(Dropped::ReplyBuffer)
    );
}

#[test]
fn an_intact_frame_the_tag_cannot_read_is_answered_malformed_and_uses_no_seq() {
    let mut tag = tag(Panel::Bw290);
    // A frame from a newer gateway: intact, but command 9 does not exist here.
    let mut packet = vec![1u8, 0x01, 0x5E, 0xA1, 0x00, 5, 0, 9];
    let crc = crc32(&packet);
    packet.extend_from_slice(&crc.to_le_bytes());
    let mut frame = vec![0u8; 32];
    let n = aisle_protocol::esl::stuff(&packet, &mut frame).unwrap();
    frame.truncate(n);
    let (report, _) = deliver(&mut tag, frame);
    match report {
        Some(TagReport::Ack(a)) => assert_eq!((a.seq, a.outcome), (Seq(5), Outcome::Malformed)),
        other => panic!("{other:?}"),
    }
    let (a, _) = ack(&mut tag, 5, &TagCommand::Fields(price(349)));
    assert_eq!(a.outcome, Outcome::Accepted, "seq 5 was not used up");
}

fn crc32(bytes: &[u8]) -> u32 {
    // CRC-32/ISO-HDLC, bitwise: an independent check of the frame's trailer.
    let mut crc = !0u32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn a_layer_arrives_in_chunks_resumes_after_a_gap_and_shows_atomically_with_its_price() {
    let panel = Panel::Bwr290;
    let mut tag = tag(panel);
    let (bytes, name) = name_layer(panel, "Organic Bananas", "Fairtrade, Ecuador, 500 g");
    let chunks: Vec<LayerChunk<'_>> = layer_chunks(name, &bytes, 0).collect();
    assert!(chunks.len() >= 3, "{} bytes", bytes.len());
    let fields = promo_fields();

    // Showing a layer the tag lacks: it says so, and shows nothing new.
    let (a, effect) = ack(
        &mut tag,
        1,
        &TagCommand::Show {
            layer: name,
            fields,
        },
    );
    assert_eq!(
        a.outcome,
        Outcome::LayerMissing {
            layer: name,
            have: 0
        }
    );
    assert_eq!(effect, Effect::None);

    ack(&mut tag, 2, &TagCommand::LayerChunk(chunks[0]));
    // Chunk 1 was lost; chunk 2 arrives: resume from 64.
    let (a, _) = ack(&mut tag, 3, &TagCommand::LayerChunk(chunks[2]));
    assert_eq!(
        a.outcome,
        Outcome::LayerMissing {
            layer: name,
            have: 64
        }
    );
    let mut seq = 4;
    for chunk in layer_chunks(name, &bytes, 64) {
        assert_eq!(
            ack(&mut tag, seq, &TagCommand::LayerChunk(chunk)).0.outcome,
            Outcome::Accepted
        );
        seq += 1;
    }
    assert_eq!(tag.cache().get(name), Some(&bytes[..]));

    let (a, effect) = ack(
        &mut tag,
        seq,
        &TagCommand::Show {
            layer: name,
            fields,
        },
    );
    assert_eq!(a.outcome, Outcome::Accepted);
    assert_eq!(effect, Effect::Redraw(Refresh::Full));
    assert_eq!(a.status.layer, Some(name));
    assert_eq!(a.status.content, content_hash(Some(name), Some(&fields)));

    // What the tag draws is what the renderer draws from the same layer and fields (the
    // gateway's preview).
    let mut on_tag = FrameBuffer::new(panel, vec![0u8; panel.frame_bytes()]).unwrap();
    tag.render(&mut on_tag);
    let mut preview = FrameBuffer::new(panel, vec![0u8; panel.frame_bytes()]).unwrap();
    render_label(
        &mut preview,
        Some(&LayerImage::parse(&bytes, panel).unwrap()),
        Some(&fields),
    )
    .unwrap();
    assert_eq!(pixels(&on_tag), pixels(&preview));
    assert!(
        !tag.status(SENSORS)
            .flags
            .contains(StatusFlags::LAYER_UNREADABLE)
    );

    // A price-only change afterwards keeps the layer; a red panel always refreshes fully.
    let (a, effect) = ack(&mut tag, seq + 1, &TagCommand::Fields(price(249)));
    assert_eq!(a.status.layer, Some(name));
    assert_eq!(effect, Effect::Redraw(Refresh::Full));
}

#[test]
fn damaged_oversized_and_foreign_layers_are_refused() {
    let panel = Panel::Bw290;
    let mut tag: Tag<2, 1024> = Tag::new(TagConfig::new(LABEL, panel));
    let (bytes, name) = name_layer(panel, "Oat Drink", "Barista, 1 l");
    assert!(bytes.len() < 1024);

    // Content that does not hash to its name.
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let seq = send_layer_expecting_corrupt(&mut tag, &bad, name, 1);
    assert_eq!(tag.cache().have(name), 0, "the damaged copy is dropped");

    // A layer rendered for another panel, however intact.
    let (other, other_name) = name_layer(Panel::Bw420, "Oat Drink", "Barista, 1 l");
    let seq = send_layer_expecting_corrupt(&mut tag, &other, other_name, seq);

    // Too large for the cache: refused at the first chunk.
    let big = vec![0u8; 2000];
    let chunk = layer_chunks(LayerHash([1; 8]), &big, 0).next().unwrap();
    let (a, _) = ack(&mut tag, seq, &TagCommand::LayerChunk(chunk));
    assert_eq!(a.outcome, Outcome::LayerTooLarge { max: 1024 });

    // The genuine layer still goes through.
    send_layer(&mut tag, &bytes, name, seq + 1);
    assert_eq!(tag.cache().get(name), Some(&bytes[..]));
}

fn send_layer_expecting_corrupt(
    tag: &mut Tag<2, 1024>,
    bytes: &[u8],
    name: LayerHash,
    mut seq: u16,
) -> u16 {
    let chunks: Vec<_> = layer_chunks(name, bytes, 0).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let (a, _) = ack(tag, seq, &TagCommand::LayerChunk(*chunk));
        let expect = if i + 1 == chunks.len() {
            Outcome::LayerCorrupt { layer: name }
        } else {
            Outcome::Accepted
        };
        assert_eq!(a.outcome, expect);
        seq += 1;
    }
    seq
}

#[test]
fn the_layer_on_show_is_never_evicted() {
    let panel = Panel::Bw290;
    let mut tag = tag(panel);
    let (a, a_name) = name_layer(panel, "Apples", "Braeburn");
    let (b, b_name) = name_layer(panel, "Pears", "Conference");
    let (c, c_name) = name_layer(panel, "Plums", "Victoria");
    let mut seq = send_layer(&mut tag, &a, a_name, 1);
    ack(
        &mut tag,
        seq,
        &TagCommand::Show {
            layer: a_name,
            fields: price(199),
        },
    );
    seq = send_layer(&mut tag, &b, b_name, seq + 1);
    seq = send_layer(&mut tag, &c, c_name, seq);
    assert!(tag.cache().get(a_name).is_some(), "shown");
    assert!(tag.cache().get(b_name).is_none(), "evicted for c");
    assert!(tag.cache().get(c_name).is_some());
    let (r, _) = ack(
        &mut tag,
        seq,
        &TagCommand::Show {
            layer: b_name,
            fields: price(249),
        },
    );
    assert_eq!(
        r.outcome,
        Outcome::LayerMissing {
            layer: b_name,
            have: 0
        }
    );
}

#[test]
fn black_white_tags_refresh_partially_then_fully_against_ghosting() {
    let mut tag = tag(Panel::Bw290);
    let mut fb = FrameBuffer::new(Panel::Bw290, vec![0u8; Panel::Bw290.frame_bytes()]).unwrap();
    let mut refreshes = Vec::new();
    for i in 0..20u16 {
        let (_, effect) = ack(
            &mut tag,
            i + 1,
            &TagCommand::Fields(price(100 + u32::from(i))),
        );
        let Effect::Redraw(refresh) = effect else {
            panic!("{effect:?}")
        };
        // The driver upgrades the very first partial refresh (nothing on the panel yet).
        let done = if i == 0 { Refresh::Full } else { refresh };
        refreshes.push(done);
        let shown = tag.render(&mut fb);
        tag.refreshed(shown, done);
    }
    let fulls: Vec<usize> = refreshes
        .iter()
        .enumerate()
        .filter(|(_, r)| **r == Refresh::Full)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(fulls, vec![0, 9, 18], "8 partials between full refreshes");
}

#[test]
fn a_failed_refresh_is_reported_and_retried_fully() {
    let mut tag = tag(Panel::Bw290);
    ack(&mut tag, 1, &TagCommand::Fields(price(349)));
    tag.refresh_failed();
    let status = tag.status(SENSORS);
    assert!(status.flags.contains(StatusFlags::DISPLAY_FAULT));
    assert!(!status.displayed);
    assert_eq!(tag.pending_redraw(), Some(Refresh::Full));
    // The same price again is no news to the tag; the main loop retries from pending_redraw.
    let (_, effect) = ack(&mut tag, 2, &TagCommand::Fields(price(349)));
    assert_eq!(effect, Effect::None);
}

#[test]
fn check_in_reports_status_until_the_gateway_acknowledges_it() {
    let mut tag = tag(Panel::Bw290);
    let mut out = [0u8; MAX_RADIO_FRAME_LEN];
    let low = Sensors {
        battery_mv: 2_100,
        ..SENSORS
    };
    let n = tag.check_in(low, &mut out).unwrap();
    let (header, report) = decode_frame::<TagReport>(&mut out[..n]).unwrap();
    let TagReport::Status(TagStatus {
        battery_mv, flags, ..
    }) = report
    else {
        panic!("{report:?}")
    };
    assert_eq!(battery_mv, 2_100);
    assert!(flags.contains(StatusFlags::BATTERY_LOW));
    assert!(tag.status_unacked());
    // An ack for another frame does not count; the right one does, and is not answered.
    deliver(
        &mut tag,
        command(
            1,
            &TagCommand::Ack {
                seq: Seq(header.seq.0.wrapping_add(5)),
            },
        ),
    );
    assert!(tag.status_unacked());
    let (report, effect) = deliver(&mut tag, command(2, &TagCommand::Ack { seq: header.seq }));
    assert_eq!((report, effect), (None, Effect::None));
    assert!(!tag.status_unacked());
}

#[test]
fn led_flashes_where_there_is_an_led() {
    let flash = LedFlash {
        colour: LedColour::Green,
        on_ms: 200,
        off_ms: 300,
        count: 10,
    };
    let mut with = tag(Panel::Bw290);
    assert_eq!(
        ack(&mut with, 1, &TagCommand::Flash(flash)),
        (ack_of(&with, 1, Outcome::Accepted), Effect::Flash(flash))
    );
    let mut without: Tag = Tag::new(TagConfig {
        has_led: false,
        ..TagConfig::new(LABEL, Panel::Bw290)
    });
    assert_eq!(
        ack(&mut without, 1, &TagCommand::Flash(flash)).0.outcome,
        Outcome::Unsupported
    );
}

fn ack_of(tag: &Tag, seq: u16, outcome: Outcome) -> Ack {
    Ack {
        seq: Seq(seq),
        outcome,
        status: tag.status(SENSORS),
    }
}

// ---- properties -------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Step {
    Fields(u16, u32),
    Show(u16, bool),
    Chunk(u16, usize),
    Garbage(Vec<u8>),
    Flip(u16, u32, usize, u8),
}

fn any_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u16..40, 1u32..100_000).prop_map(|(s, p)| Step::Fields(s, p)),
        (0u16..40, any::<bool>()).prop_map(|(s, which)| Step::Show(s, which)),
        (0u16..40, 0usize..40).prop_map(|(s, i)| Step::Chunk(s, i)),
        prop::collection::vec(any::<u8>(), 0..120).prop_map(Step::Garbage),
        (0u16..40, 1u32..100_000, any::<usize>(), 1u8..=255)
            .prop_map(|(s, p, i, x)| Step::Flip(s, p, i, x)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever arrives, in whatever order: no panic, the status is consistent, an answer
    /// always names the frame, a replayed frame changes nothing.
    #[test]
    fn any_frame_sequence_keeps_the_tag_consistent(steps in prop::collection::vec(any_step(), 1..60)) {
        let panel = Panel::Bw290;
        let mut tag = tag(panel);
        let (a, a_name) = name_layer(panel, "Apples", "Braeburn");
        let (b, b_name) = name_layer(panel, "Pears", "Conference");
        let chunks: Vec<LayerChunk<'_>> = layer_chunks(a_name, &a, 0).chain(layer_chunks(b_name, &b, 0)).collect();
        let mut reply = [0u8; MAX_RADIO_FRAME_LEN];
        for step in steps {
            let (mut frame, seq) = match &step {
                Step::Fields(s, p) => (command(*s, &TagCommand::Fields(price(*p))), Some(*s)),
                Step::Show(s, which) => {
                    let layer = if *which { a_name } else { b_name };
                    (command(*s, &TagCommand::Show { layer, fields: price(1) }), Some(*s))
                }
                Step::Chunk(s, i) => (command(*s, &TagCommand::LayerChunk(chunks[i % chunks.len()])), Some(*s)),
                Step::Garbage(g) => (g.clone(), None),
                Step::Flip(s, p, i, x) => {
                    let mut f = command(*s, &TagCommand::Fields(price(*p)));
                    let n = f.len();
                    f[i % n] ^= x;
                    (f, None)
                }
            };
            let before = tag.status(SENSORS);
            let result = tag.receive(&mut frame, SENSORS, &mut reply);
            match (seq, result) {
                (Some(seq), Ok(r)) => {
                    let (_, report) = decode_frame::<TagReport>(&mut reply[..r.reply_len]).unwrap();
                    let TagReport::Ack(ack) = report else { panic!("{report:?}") };
                    prop_assert_eq!(ack.seq, Seq(seq));
                    if matches!(ack.outcome, Outcome::Stale { .. }) {
                        prop_assert_eq!(tag.status(SENSORS), before);
                    }
                }
                (Some(_), Err(e)) => prop_assert!(false, "an intact frame was dropped: {e}"),
                (None, Ok(r)) => prop_assert_eq!(r.reply_len, 0, "garbage answered"),
                (None, Err(_)) => prop_assert_eq!(tag.status(SENSORS), before),
            }
            let status = tag.status(SENSORS);
            prop_assert_eq!(status.content, content_hash(status.layer, tag.fields()));
            if let Some(layer) = status.layer {
                prop_assert!(tag.cache().get(layer).is_some(), "the layer on show is cached");
            }
        }
    }
}
