use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::money::Currency;

fn eur() -> LabelCurrency {
    LabelCurrency::from(Currency::parse("EUR").unwrap())
}

fn status() -> TagStatus {
    TagStatus {
        panel: Panel::Bwr290,
        layer: Some(LayerHash([1, 2, 3, 4, 5, 6, 7, 8])),
        content: Some(ContentHash([9; 8])),
        displayed: true,
        battery_mv: 2950,
        temperature_c: -4,
        rssi_dbm: -71,
        flags: StatusFlags::BATTERY_LOW,
    }
}

fn frame<M: serde::Serialize>(address: u32, seq: u16, body: &M) -> Vec<u8> {
    encode_frame_vec(Header::new(address, Seq(seq)), body).unwrap()
}

// ---- the 32-byte budget -------------------------------------------------------------------

/// Radio bytes for a price change, and the budget it must meet.
fn check_price_change(fields: DynamicFields, expect: usize) {
    let len = price_change_wire_len(&fields).unwrap();
    assert_eq!(len, expect, "{fields:?}");
    assert!(len <= 32, "{fields:?} takes {len} bytes");
    let bytes = frame(0x00C0_FFEE, 513, &TagCommand::Fields(fields));
    assert_eq!(
        bytes.len(),
        len,
        "the size does not depend on address and seq"
    );
}

#[test]
fn a_realistic_price_change_is_27_bytes_on_the_radio() {
    // 3.49 EUR, 6.98 EUR/kg: 7 header + 14 body + 4 CRC + 1 COBS + 1 delimiter.
    let fields = DynamicFields::new(eur(), 349)
        .unwrap()
        .with_unit(698, UnitBase::Kilogram)
        .unwrap();
    check_price_change(fields, 27);
}

#[test]
fn price_changes_with_promotion_and_member_price_stay_within_32_bytes() {
    let plain = DynamicFields::new(eur(), 349).unwrap();
    check_price_change(plain, 24);
    let promo = DynamicFields::new(eur(), 299)
        .unwrap()
        .with_regular(349)
        .unwrap();
    check_price_change(promo, 26);
    let everything = DynamicFields::new(eur(), 1299)
        .unwrap()
        .with_regular(1599)
        .unwrap()
        .with_member(1199)
        .unwrap()
        .with_unit(2598, UnitBase::Kilogram)
        .unwrap()
        .with_flags(Flags::DECIMAL_COMMA);
    check_price_change(everything, 31);
    let yen = DynamicFields::new(LabelCurrency::new(*b"JPY", 0).unwrap(), 1_980)
        .unwrap()
        .with_unit(396, UnitBase::Gram100)
        .unwrap();
    check_price_change(yen, 27);
}

#[test]
fn fields_encoding_is_bounded_for_hashing() {
    let max = DynamicFields::new(eur(), MAX_LABEL_AMOUNT - 1)
        .unwrap()
        .with_regular(MAX_LABEL_AMOUNT)
        .unwrap()
        .with_member(MAX_LABEL_AMOUNT - 2)
        .unwrap()
        .with_unit(MAX_LABEL_AMOUNT, UnitBase::SquareMetre)
        .unwrap()
        .with_flags(Flags::from_bits(0x0f).unwrap());
    let mut buf = [0u8; 64];
    let n = postcard::to_slice(&max, &mut buf).unwrap().len();
    assert!(n <= fields::MAX_FIELDS_LEN, "{n}");
    // Even the largest price change fits a radio frame.
    assert!(price_change_wire_len(&max).unwrap() <= MAX_RADIO_FRAME_LEN);
}

// ---- fields -------------------------------------------------------------------------------

#[test]
fn fields_refuse_what_a_label_must_not_show() {
    let base = DynamicFields::new(eur(), 349).unwrap();
    assert_eq!(base.with_regular(349), Err(FieldsError::RegularNotHigher));
    assert_eq!(base.with_regular(300), Err(FieldsError::RegularNotHigher));
    assert_eq!(base.with_member(349), Err(FieldsError::MemberNotLower));
    assert_eq!(
        DynamicFields::new(eur(), MAX_LABEL_AMOUNT + 1),
        Err(FieldsError::Amount(MAX_LABEL_AMOUNT + 1))
    );
    assert_eq!(
        LabelCurrency::new(*b"eur", 2),
        Err(FieldsError::CurrencyCode)
    );
    assert_eq!(LabelCurrency::new(*b"EUR", 4), Err(FieldsError::Exponent));
    assert_eq!(Flags::from_bits(0x80), Err(FieldsError::UnknownFlags(0x80)));
    assert_eq!(fields::label_amount(-1), Err(FieldsError::Negative));
}

#[test]
fn invalid_fields_on_the_wire_do_not_decode() {
    // Hand-made body: Fields { EUR/2, price 300, regular Some(200) } - a promotion that raises
    // the price. It must not reach a tag as a value.
    let mut body = vec![0u8]; // TagCommand::Fields
    body.extend_from_slice(b"EUR");
    body.extend_from_slice(&[2, 0xac, 0x02, 1, 0xc8, 0x01, 0, 0, 0]);
    let good: DynamicFields = DynamicFields::new(eur(), 300).unwrap();
    let mut good_body = [0u8; 32];
    let good_len = postcard::to_slice(&TagCommand::Fields(good), &mut good_body)
        .unwrap()
        .len();
    assert_eq!(
        &body[..6],
        &good_body[..6],
        "the hand-made body follows the real layout"
    );
    assert!(good_len > 6);

    let mut packet = [0u8; 64];
    let mut raw = vec![VERSION, 1, 0, 0, 0, 7, 0];
    raw.extend_from_slice(&body);
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(&raw);
    raw.extend_from_slice(&crc.to_le_bytes());
    packet[..raw.len()].copy_from_slice(&raw);
    let (header, rest) = open_packet(&packet[..raw.len()]).unwrap();
    assert_eq!(header.seq, Seq(7));
    assert_eq!(
        frame::decode_body::<TagCommand>(rest),
        Err(FrameError::Body)
    );
}

#[test]
fn amounts_split_by_the_currency_exponent() {
    assert_eq!(eur().split(349), (3, 49));
    assert_eq!(
        LabelCurrency::new(*b"JPY", 0).unwrap().split(1980),
        (1980, 0)
    );
    assert_eq!(
        LabelCurrency::new(*b"KWD", 3).unwrap().split(12_345),
        (12, 345)
    );
    let money = Currency::parse("CNY")
        .unwrap()
        .parse_amount("12.80")
        .unwrap();
    let fields = DynamicFields::from_money(money).unwrap();
    assert_eq!(fields.price(), 1280);
    assert_eq!(fields.price_money(), Some(money));
}

// ---- frames -------------------------------------------------------------------------------

fn commands() -> Vec<TagCommand<'static>> {
    let fields = DynamicFields::new(eur(), 349).unwrap();
    vec![
        TagCommand::Fields(fields),
        TagCommand::Show {
            layer: LayerHash([7; 8]),
            fields,
        },
        TagCommand::LayerChunk(LayerChunk {
            layer: LayerHash([7; 8]),
            total: 1000,
            offset: 64,
            data: &[0, 1, 2, 0, 0, 255],
        }),
        TagCommand::Flash(LedFlash {
            colour: LedColour::Green,
            on_ms: 100,
            off_ms: 400,
            count: 5,
        }),
        TagCommand::StatusRequest,
        TagCommand::Ack { seq: Seq(65535) },
    ]
}

#[test]
fn every_tag_command_round_trips() {
    for cmd in commands() {
        let mut bytes = frame(42, 9, &cmd);
        assert_eq!(bytes.last(), Some(&0));
        assert_eq!(
            bytes.iter().filter(|b| **b == 0).count(),
            1,
            "one delimiter"
        );
        assert!(bytes.len() <= MAX_RADIO_FRAME_LEN);
        let (header, back) = decode_frame::<TagCommand>(&mut bytes).unwrap();
        assert_eq!(header, Header::new(42u32, Seq(9)));
        assert_eq!(back, cmd);
    }
}

#[test]
fn tag_reports_and_link_messages_round_trip() {
    let reports = [
        TagReport::Ack(Ack {
            seq: Seq(3),
            outcome: Outcome::LayerMissing {
                layer: LayerHash([5; 8]),
                have: 128,
            },
            status: status(),
        }),
        TagReport::Status(status()),
    ];
    for report in reports {
        let mut bytes = frame(42, 1, &report);
        assert!(bytes.len() <= MAX_RADIO_FRAME_LEN);
        assert_eq!(decode_frame::<TagReport>(&mut bytes).unwrap().1, report);
    }

    // A radio packet rides the serial link untouched.
    let mut radio = [0u8; MAX_RADIO_PACKET_LEN];
    let n = encode_packet(
        Header::new(LabelId(42), Seq(1)),
        &TagCommand::Fields(DynamicFields::new(eur(), 5).unwrap()),
        &mut radio,
    )
    .unwrap();
    let link = [
        ApCommand::Send { radio: &radio[..n] },
        ApCommand::StatusRequest,
        ApCommand::Ack { seq: Seq(2) },
    ];
    for cmd in link {
        let mut bytes = frame(ApId::ANY.0, 4, &cmd);
        assert_eq!(decode_frame::<ApCommand>(&mut bytes).unwrap().1, cmd);
    }
    let reports = [
        ApReport::Ack { seq: Seq(4) },
        ApReport::Refused {
            seq: Seq(4),
            reason: ApRefusal::QueueFull,
        },
        ApReport::Heard {
            rssi_dbm: -80,
            radio: &radio[..n],
        },
        ApReport::Expired {
            label: LabelId(42),
            seq: Seq(1),
        },
        ApReport::Status(ApStatus {
            id: ApId(7),
            channel: 11,
            queued: 3,
            tags_heard: 30_000,
            uptime_s: 86_400,
        }),
    ];
    for report in reports {
        let mut bytes = frame(7, 5, &report);
        let (_, back) = decode_frame::<ApReport>(&mut bytes).unwrap();
        assert_eq!(back, report);
        if let ApReport::Heard { radio: inner, .. } = back {
            let (h, cmd) = decode_packet::<TagCommand>(inner).unwrap();
            assert_eq!(h.address, 42);
            assert!(matches!(cmd, TagCommand::Fields(_)));
        }
    }
}

/// A packet with a correct CRC over arbitrary content.
fn sealed(content: &[u8]) -> Vec<u8> {
    let mut p = content.to_vec();
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(content);
    p.extend_from_slice(&crc.to_le_bytes());
    p
}

fn check_refused(packet: &[u8], expect: FrameError) {
    assert_eq!(
        decode_packet::<TagCommand>(packet).map(|_| ()),
        Err(expect),
        "{packet:02x?}"
    );
}

#[test]
fn damaged_and_foreign_packets_are_refused_with_their_reason() {
    let good = {
        let mut p = [0u8; 64];
        let n = encode_packet(
            Header::new(1u32, Seq(1)),
            &TagCommand::StatusRequest,
            &mut p,
        )
        .unwrap();
        p[..n].to_vec()
    };
    assert_eq!(good.len(), frame::MIN_PACKET_LEN);
    check_refused(&[], FrameError::Empty);
    check_refused(
        &good[..good.len() - 1],
        FrameError::Truncated { len: 11, min: 12 },
    );
    let mut flipped = good.clone();
    flipped[7] ^= 0x01;
    assert!(matches!(
        decode_packet::<TagCommand>(&flipped),
        Err(FrameError::Crc { .. })
    ));
    let mut v2 = good[..good.len() - 4].to_vec();
    v2[0] = 2;
    check_refused(&sealed(&v2), FrameError::Version { found: 2 });
    let mut trailing = good[..good.len() - 4].to_vec();
    trailing.push(0x55);
    check_refused(&sealed(&trailing), FrameError::Trailing { len: 1 });
    let mut unknown = good[..good.len() - 4].to_vec();
    unknown[7] = 0x7f; // no such command
    check_refused(&sealed(&unknown), FrameError::Body);
    let big = sealed(&[VERSION; MAX_PACKET_LEN]);
    check_refused(
        &big,
        FrameError::Oversized {
            len: MAX_PACKET_LEN + 4,
            max: MAX_PACKET_LEN,
        },
    );
}

#[test]
fn encoding_never_writes_a_packet_a_receiver_would_refuse() {
    let data = [0xAAu8; 200];
    let cmd = ApCommand::Send { radio: &data };
    let mut out = [0u8; 512];
    assert!(matches!(
        encode_packet(Header::new(1u32, Seq(1)), &cmd, &mut out),
        Err(FrameError::Oversized { .. })
    ));
    let mut small = [0u8; 16];
    assert_eq!(
        encode_packet(
            Header::new(1u32, Seq(1)),
            &TagCommand::Ack { seq: Seq(1) },
            &mut small[..5]
        ),
        Err(FrameError::BufferTooSmall)
    );
    assert_eq!(
        stuff(&[1, 2, 3], &mut small[..3]),
        Err(FrameError::BufferTooSmall)
    );
}

#[test]
fn unstuff_refuses_two_frames_run_together_and_empty_ones() {
    let mut two = frame(1, 1, &TagCommand::StatusRequest);
    two.extend(frame(1, 2, &TagCommand::StatusRequest));
    assert_eq!(unstuff(&mut two).map(|_| ()), Err(FrameError::Stuffing));
    assert_eq!(unstuff(&mut [0]).map(|_| ()), Err(FrameError::Empty));
    // Without its delimiter a frame still decodes (a radio delivers whole packets).
    let mut bare = frame(1, 1, &TagCommand::StatusRequest);
    bare.pop();
    assert!(decode_frame::<TagCommand>(&mut bare).is_ok());
}

#[test]
fn the_frame_reader_splits_a_stream_and_recovers_from_garbage() {
    let mut stream = vec![0, 0]; // line flush
    stream.extend(frame(1, 1, &TagCommand::StatusRequest));
    stream.extend([0x11u8; 40]); // garbage longer than the reader holds
    stream.push(0);
    stream.extend([0x03, 0x01, 0x02, 0x00]); // a well-stuffed frame too short to be a packet
    stream.extend(frame(1, 2, &TagCommand::Ack { seq: Seq(5) }));
    let mut reader = FrameReader::<32>::new();
    let mut got = Vec::new();
    for b in stream {
        if let Some(r) = reader.push(b) {
            got.push(
                r.and_then(decode_packet::<TagCommand>)
                    .map(|(h, c)| (h.seq, format!("{c:?}"))),
            );
        }
    }
    assert_eq!(
        got,
        vec![
            Ok((Seq(1), String::from("StatusRequest"))),
            Err(FrameError::Oversized { len: 40, max: 32 }),
            Err(FrameError::Truncated { len: 2, min: 12 }),
            Ok((Seq(2), format!("{:?}", TagCommand::Ack { seq: Seq(5) }))),
        ]
    );
    assert_eq!(reader.pending(), 0);
}

// ---- sequence numbers -----------------------------------------------------------------------

#[test]
fn sequence_numbers_tell_new_repeat_and_replay_across_the_wrap() {
    let cases = [
        (None, 0, SeqVerdict::New),
        (Some(10), 11, SeqVerdict::New),
        (Some(10), 10, SeqVerdict::Repeat),
        (Some(10), 9, SeqVerdict::Stale { last: Seq(10) }),
        (Some(65535), 0, SeqVerdict::New),
        (Some(0), 65535, SeqVerdict::Stale { last: Seq(0) }),
        (Some(0), 32767, SeqVerdict::New),
        (Some(0), 32768, SeqVerdict::Stale { last: Seq(0) }),
    ];
    for (last, seq, expect) in cases {
        let mut t = SeqTracker::new();
        if let Some(l) = last {
            t.accept(Seq(l));
        }
        assert_eq!(t.check(Seq(seq)), expect, "last {last:?}, seq {seq}");
    }
    assert_eq!(Seq(65535).next(), Seq(0));
}

// ---- layers and hashes ----------------------------------------------------------------------

fn sample_canvas(panel: Panel) -> LayerCanvas {
    let mut c = LayerCanvas::new(panel);
    for x in 10..120 {
        for y in 8..30 {
            if (x * 7 + y * 3) % 5 < 2 {
                c.set(x, y, Ink::Black);
            }
        }
        c.set(x, 40, Ink::Red);
    }
    c
}

#[test]
fn layers_round_trip_on_every_panel() {
    for panel in Panel::ALL {
        let canvas = sample_canvas(panel);
        let (bytes, hash) = canvas.encode().unwrap();
        assert_eq!(hash, LayerHash::of(&bytes));
        let image = LayerImage::parse(&bytes, panel).unwrap();
        assert!(image.rows > 0 && u32::from(image.rows) < u32::from(panel.native_size().1));
        let mut black = vec![0u8; panel.plane_bytes()];
        let mut red = vec![0u8; panel.plane_bytes()];
        image
            .draw_into(&mut black, panel.has_red().then_some(&mut red[..]))
            .unwrap();
        let (b, r) = canvas.planes();
        assert_eq!(black, b, "{panel:?}");
        if let Some(r) = r {
            assert_eq!(red, r, "{panel:?}");
        }
        assert_eq!(
            canvas.get(10, 40),
            if panel.has_red() {
                Ink::Red
            } else {
                Ink::Black
            }
        );
        assert_eq!(
            LayerImage::parse(
                &bytes,
                if panel.has_red() {
                    Panel::Bw290
                } else {
                    Panel::Bwr420
                }
            ),
            Err(LayerError::WrongPanel {
                expected: if panel.has_red() {
                    Panel::Bw290
                } else {
                    Panel::Bwr420
                },
                found: panel
            })
        );
    }
}

#[test]
fn a_blank_layer_is_tiny_and_damaged_planes_are_refused() {
    let (bytes, _) = LayerCanvas::new(Panel::Bw290).encode().unwrap();
    assert!(bytes.len() < 12, "{}", bytes.len());
    let (bytes, _) = sample_canvas(Panel::Bw290).encode().unwrap();
    let mut image = LayerImage::parse(&bytes, Panel::Bw290).unwrap();
    assert_eq!(image.codec, Codec::Lz4);
    let damaged: Vec<u8> = image.black[..image.black.len() - 3].to_vec();
    image.black = &damaged;
    let mut black = vec![0u8; Panel::Bw290.plane_bytes()];
    assert_eq!(image.draw_into(&mut black, None), Err(LayerError::Plane));
    assert_eq!(
        image.draw_into(&mut black[1..], None),
        Err(LayerError::Buffer)
    );
}

#[test]
fn the_label_rotation_maps_corners_to_native_memory() {
    // 2.9": label (0,0) top left is native column 127 of row 0; label x runs down the rows.
    assert_eq!(Panel::Bw290.locate(0, 0), Some((15, 0x01)));
    assert_eq!(Panel::Bw290.locate(295, 127), Some((295 * 16, 0x80)));
    assert_eq!(Panel::Bw290.locate(296, 0), None);
    assert_eq!(Panel::Bw420.locate(9, 1), Some((50 + 1, 0x40)));
    for panel in Panel::ALL {
        let (w, h) = panel.size();
        let layout = panel.layout();
        for r in layout.dynamic_boxes().iter().chain([&layout.name]) {
            assert!(r.x + r.w <= w && r.y + r.h <= h, "{panel:?} {r:?}");
        }
    }
}

/// A canvas that compresses badly (pseudo-random pixels over a band).
fn noisy_canvas(panel: Panel) -> LayerCanvas {
    let mut c = LayerCanvas::new(panel);
    let mut state = 0x2545_f491_u32;
    for y in 0..40 {
        for x in 0..200 {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            if state >> 31 == 1 {
                c.set(x, y, Ink::Black);
            }
        }
    }
    c
}

#[test]
fn chunks_reassemble_the_layer_and_fit_the_radio() {
    let (bytes, hash) = noisy_canvas(Panel::Bwr420).encode().unwrap();
    assert!(bytes.len() > 900, "{}", bytes.len());
    let mut back = Vec::new();
    for chunk in layer_chunks(hash, &bytes, 0) {
        assert_eq!(chunk.offset as usize, back.len());
        assert_eq!(chunk.total as usize, bytes.len());
        back.extend_from_slice(chunk.data);
        let f = frame(u32::MAX, u16::MAX, &TagCommand::LayerChunk(chunk));
        assert!(f.len() <= MAX_RADIO_FRAME_LEN, "{}", f.len());
    }
    assert_eq!(back, bytes);
    let resumed: Vec<u32> = layer_chunks(hash, &bytes, 128)
        .map(|c| c.offset)
        .take(2)
        .collect();
    assert_eq!(resumed, vec![128, 192]);
    assert_eq!(layer_chunks(hash, &bytes, u32::MAX).count(), 0);
}

#[test]
fn content_hashes_change_with_layer_and_every_field() {
    let fields = DynamicFields::new(eur(), 349).unwrap();
    let layer = Some(LayerHash([1; 8]));
    let base = content_hash(layer, Some(&fields));
    assert_eq!(content_hash(None, None), None);
    let others = [
        content_hash(None, Some(&fields)),
        content_hash(layer, None),
        content_hash(Some(LayerHash([2; 8])), Some(&fields)),
        content_hash(layer, Some(&DynamicFields::new(eur(), 348).unwrap())),
        content_hash(layer, Some(&fields.with_flags(Flags::NEW))),
        content_hash(layer, Some(&fields.with_member(300).unwrap())),
    ];
    for other in others {
        assert!(other.is_some());
        assert_ne!(other, base);
    }
    assert_eq!(base, content_hash(layer, Some(&fields)));
}

#[test]
fn label_ids_print_and_parse_as_eight_hex_digits() {
    assert_eq!(LabelId(0x00C0_FFEE).to_string(), "00C0FFEE");
    assert_eq!(LabelId::parse("00c0ffee"), Ok(LabelId(0x00C0_FFEE)));
    for bad in ["C0FFEE", "00C0FFEE0", "+0C0FFEE", "00C0FFEG", ""] {
        assert_eq!(LabelId::parse(bad), Err(LabelIdError), "{bad}");
    }
}

// ---- properties -----------------------------------------------------------------------------

fn any_fields() -> impl Strategy<Value = DynamicFields> {
    (
        prop::sample::select(vec![*b"EUR", *b"JPY", *b"CNY", *b"KWD", *b"CHF"]),
        0u8..=3,
        1u32..=MAX_LABEL_AMOUNT - 1,
        any::<bool>(),
        any::<bool>(),
        prop::option::of((0..=MAX_LABEL_AMOUNT, 0usize..7)),
        0u8..16,
    )
        .prop_flat_map(|(code, exp, price, promo, member, unit, flags)| {
            (
                Just((code, exp, price, unit, flags)),
                if promo {
                    (price + 1..=MAX_LABEL_AMOUNT).prop_map(Some).boxed()
                } else {
                    Just(None).boxed()
                },
                if member {
                    (0..price).prop_map(Some).boxed()
                } else {
                    Just(None).boxed()
                },
            )
        })
        .prop_map(|((code, exp, price, unit, flags), regular, member)| {
            let units = [
                UnitBase::Kilogram,
                UnitBase::Gram100,
                UnitBase::Litre,
                UnitBase::Millilitre100,
                UnitBase::Piece,
                UnitBase::Metre,
                UnitBase::SquareMetre,
            ];
            let mut f = DynamicFields::new(LabelCurrency::new(code, exp).unwrap(), price)
                .unwrap()
                .with_flags(Flags::from_bits(flags).unwrap());
            if let Some(r) = regular {
                f = f.with_regular(r).unwrap();
            }
            if let Some(m) = member {
                f = f.with_member(m).unwrap();
            }
            if let Some((amount, per)) = unit {
                f = f.with_unit(amount, units[per]).unwrap();
            }
            f
        })
}

fn any_status() -> impl Strategy<Value = TagStatus> {
    (
        prop::sample::select(Panel::ALL.to_vec()),
        prop::option::of(any::<[u8; 8]>()),
        prop::option::of(any::<[u8; 8]>()),
        any::<(bool, u16, i8, i8, u8)>(),
    )
        .prop_map(
            |(panel, layer, content, (displayed, battery_mv, temperature_c, rssi_dbm, flags))| {
                TagStatus {
                    panel,
                    layer: layer.map(LayerHash),
                    content: content.map(ContentHash),
                    displayed,
                    battery_mv,
                    temperature_c,
                    rssi_dbm,
                    flags: StatusFlags(flags),
                }
            },
        )
}

fn any_outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Accepted),
        any::<u16>().prop_map(|s| Outcome::Stale { last: Seq(s) }),
        Just(Outcome::Malformed),
        (any::<[u8; 8]>(), any::<u32>()).prop_map(|(l, have)| Outcome::LayerMissing {
            layer: LayerHash(l),
            have
        }),
        any::<u32>().prop_map(|max| Outcome::LayerTooLarge { max }),
        any::<[u8; 8]>().prop_map(|l| Outcome::LayerCorrupt {
            layer: LayerHash(l)
        }),
        Just(Outcome::Unsupported),
    ]
}

/// A command with owned chunk data (the strategy cannot hand out borrows).
#[derive(Clone, Debug)]
enum OwnedCommand {
    Plain(TagCommand<'static>),
    Chunk([u8; 8], u32, u32, Vec<u8>),
}

fn any_command() -> impl Strategy<Value = OwnedCommand> {
    prop_oneof![
        any_fields().prop_map(|f| OwnedCommand::Plain(TagCommand::Fields(f))),
        (any::<[u8; 8]>(), any_fields()).prop_map(|(l, fields)| OwnedCommand::Plain(
            TagCommand::Show {
                layer: LayerHash(l),
                fields
            }
        )),
        (
            any::<[u8; 8]>(),
            any::<u32>(),
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 0..=LAYER_CHUNK_LEN)
        )
            .prop_map(|(l, t, o, d)| OwnedCommand::Chunk(l, t, o, d)),
        (0usize..4, any::<u16>(), any::<u16>(), any::<u8>()).prop_map(
            |(c, on_ms, off_ms, count)| {
                let colour = [
                    LedColour::Red,
                    LedColour::Green,
                    LedColour::Blue,
                    LedColour::White,
                ][c];
                OwnedCommand::Plain(TagCommand::Flash(LedFlash {
                    colour,
                    on_ms,
                    off_ms,
                    count,
                }))
            }
        ),
        Just(OwnedCommand::Plain(TagCommand::StatusRequest)),
        any::<u16>().prop_map(|s| OwnedCommand::Plain(TagCommand::Ack { seq: Seq(s) })),
    ]
}

fn encode_owned(address: u32, seq: u16, cmd: &OwnedCommand) -> (Vec<u8>, TagCommand<'_>) {
    let c = match cmd {
        OwnedCommand::Plain(c) => *c,
        OwnedCommand::Chunk(l, total, offset, data) => TagCommand::LayerChunk(LayerChunk {
            layer: LayerHash(*l),
            total: *total,
            offset: *offset,
            data,
        }),
    };
    (frame(address, seq, &c), c)
}

/// Every way a decoder may meet bytes; none may panic.
fn decode_everything(bytes: &[u8]) {
    let mut b = bytes.to_vec();
    let _ = decode_frame::<TagCommand>(&mut b);
    let mut b = bytes.to_vec();
    let _ = decode_frame::<TagReport>(&mut b);
    let mut b = bytes.to_vec();
    let _ = decode_frame::<ApCommand>(&mut b);
    let mut b = bytes.to_vec();
    let _ = decode_frame::<ApReport>(&mut b);
    let _ = decode_packet::<TagCommand>(bytes);
    let _ = frame::decode_body::<TagReport>(bytes);
    let mut reader = FrameReader::<64>::new();
    for byte in bytes {
        let _ = reader
            .push(*byte)
            .map(|r| r.and_then(decode_packet::<ApReport>));
    }
    for panel in Panel::ALL {
        if let Ok(image) = LayerImage::parse(bytes, panel) {
            let mut black = vec![0u8; panel.plane_bytes()];
            let mut red = vec![0u8; panel.plane_bytes()];
            let _ = image.draw_into(&mut black, Some(&mut red));
        }
    }
}

proptest! {
    #[test]
    fn tag_commands_round_trip(address: u32, seq: u16, cmd in any_command()) {
        let (mut bytes, cmd) = encode_owned(address, seq, &cmd);
        let (header, back) = decode_frame::<TagCommand>(&mut bytes).unwrap();
        prop_assert_eq!(header, Header::new(address, Seq(seq)));
        prop_assert_eq!(back, cmd);
    }

    #[test]
    fn tag_reports_round_trip(address: u32, seq: u16, ack: bool, acked: u16, outcome in any_outcome(), status in any_status()) {
        let report = if ack { TagReport::Ack(Ack { seq: Seq(acked), outcome, status }) } else { TagReport::Status(status) };
        let mut bytes = frame(address, seq, &report);
        prop_assert!(bytes.len() <= MAX_RADIO_FRAME_LEN);
        prop_assert_eq!(decode_frame::<TagReport>(&mut bytes).unwrap(), (Header::new(address, Seq(seq)), report));
    }

    #[test]
    fn content_hashes_never_collide_for_different_fields(a in any_fields(), b in any_fields()) {
        let layer = Some(LayerHash([3; 8]));
        prop_assert_eq!(a == b, content_hash(layer, Some(&a)) == content_hash(layer, Some(&b)));
    }

    #[test]
    fn byte_soup_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        decode_everything(&bytes);
    }

    #[test]
    fn soup_behind_a_valid_header_never_panics(body in prop::collection::vec(any::<u8>(), 0..120), seq: u16) {
        // Past the CRC, so the body decoders and the layer parser see the soup.
        let mut content = vec![VERSION, 1, 0, 0, 0];
        content.extend_from_slice(&seq.to_le_bytes());
        content.extend_from_slice(&body);
        let packet = sealed(&content);
        let mut frame = vec![0u8; packet.len() * 2 + 2];
        if let Ok(n) = stuff(&packet, &mut frame) {
            decode_everything(&frame[..n]);
        }
        decode_everything(&body);
    }

    #[test]
    fn any_single_corrupted_byte_is_detected(cmd in any_command(), seq: u16, pos: prop::sample::Index, xor in 1u8..=255) {
        let (bytes, _) = encode_owned(0x1234_5678, seq, &cmd);
        let mut damaged = bytes.clone();
        let i = pos.index(damaged.len());
        damaged[i] ^= xor;
        // As one buffer (a radio packet)...
        let mut whole = damaged.clone();
        prop_assert!(decode_frame::<TagCommand>(&mut whole).is_err(), "byte {} ^ {:#04x} went unnoticed", i, xor);
        // ...and as a stream: whatever frames the damage makes, none decodes.
        let mut reader = FrameReader::<{ MAX_FRAME_LEN }>::new();
        for b in damaged.iter().chain(&[0]) {
            if let Some(r) = reader.push(*b) {
                prop_assert!(r.and_then(decode_packet::<TagCommand>).is_err());
            }
        }
    }

    #[test]
    fn a_corrupted_packet_byte_is_caught_by_the_crc(cmd in any_command(), pos: prop::sample::Index, xor in 1u8..=255) {
        let (mut bytes, _) = encode_owned(7, 7, &cmd);
        let packet = unstuff(&mut bytes).unwrap().to_vec();
        let mut damaged = packet.clone();
        let i = pos.index(damaged.len());
        damaged[i] ^= xor;
        let caught = matches!(decode_packet::<TagCommand>(&damaged), Err(FrameError::Crc { .. }));
        prop_assert!(caught);
    }
}
