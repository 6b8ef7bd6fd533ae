//! The shelf-label simulator (`aisle-sim esl`) on a real pseudo-terminal, driven by the
//! gateway's real access-point driver (`aisle_drivers::esl::access_point::spawn`): static layers
//! and prices reach the simulated tags (the real firmware), tags confirm the content hash, their
//! screens (PNG) show the new price exactly as the firmware renders it; radio loss, garbage on
//! the line and a dead tag change nothing but the time it takes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use aisle_drivers::backoff::Backoff;
use aisle_drivers::esl::access_point::spawn;
use aisle_drivers::esl::{
    ApConfig, ApEvent, ApHandle, LabelFont, NameRenderer, NameText, RadioPacket, SendError,
    SendOutcome,
};
use aisle_firmware::{FrameBuffer, Panel, render_label};
use aisle_hil::esl_sim::{AccessPoint, EslSim, EslSimConfig, png_path, rgb};
use aisle_protocol::esl::{
    ApCommand, ApId, ApReport, ContentHash, DynamicFields, Header, LabelCurrency, LabelId,
    LayerHash, LayerImage, Outcome, Seq, TagCommand, TagReport, TagStatus, UnitBase, content_hash,
    decode_packet, encode_frame_vec, encode_packet, layer_chunks,
};
use proptest::prelude::*;

const FIRST: LabelId = LabelId(0x00A1_0001);
const WAIT: Duration = Duration::from_secs(15);

fn eur(price: u32) -> DynamicFields {
    DynamicFields::new(LabelCurrency::new(*b"EUR", 2).unwrap(), price)
        .unwrap()
        .with_unit(price * 2, UnitBase::Kilogram)
        .unwrap()
}

fn config(tags: usize, png_dir: Option<&Path>) -> EslSimConfig {
    EslSimConfig {
        checkin: Duration::from_millis(40),
        radio_bytes_per_s: 50_000,
        png_dir: png_dir.map(Path::to_path_buf),
        expire_after: Duration::from_secs(3),
        seed: 7,
        ..EslSimConfig::new(FIRST, tags)
    }
}

fn label(i: usize) -> LabelId {
    LabelId(FIRST.0 + u32::try_from(i).unwrap())
}

/// A static layer from the gateway's own name renderer.
fn layer(panel: Panel, name: &str) -> (Vec<u8>, LayerHash) {
    let renderer = NameRenderer::new(LabelFont::embedded().unwrap());
    let text = NameText {
        name,
        brand: Some("Aisle"),
        details: Some("500 g"),
        badge: None,
    };
    let l = renderer.render_layer(panel, &text).unwrap();
    (l.bytes, l.hash)
}

#[derive(Clone)]
struct Goal {
    layer: Option<(Vec<u8>, LayerHash)>,
    fields: DynamicFields,
    content: ContentHash,
    /// Seq of the frame whose answer says whether the layer is there.
    watch: Option<Seq>,
    confirmed: bool,
}

/// A minimal planner on the real driver: numbers each tag's frames, resends a layer from where
/// the tag says, acknowledges Status reports, and tracks which tags confirmed.
struct Gateway {
    handle: ApHandle,
    events: Receiver<ApEvent>,
    seqs: HashMap<LabelId, u16>,
    goals: HashMap<LabelId, Goal>,
    statuses: HashMap<LabelId, TagStatus>,
    rssi: Vec<i8>,
    expired: Vec<LabelId>,
    /// Push again what expired (off for a tag that is meant to stay silent).
    retry_expired: bool,
    ap_status_seen: bool,
}

impl Gateway {
    fn connect(path: &str) -> Gateway {
        let config = ApConfig {
            backoff: Backoff {
                base: Duration::from_millis(50),
                cap: Duration::from_millis(200),
            },
            ..ApConfig::new(path)
        };
        let (handle, events) = spawn(config).unwrap();
        let mut gw = Gateway {
            handle,
            events,
            seqs: HashMap::new(),
            goals: HashMap::new(),
            statuses: HashMap::new(),
            rssi: Vec::new(),
            expired: Vec::new(),
            retry_expired: true,
            ap_status_seen: false,
        };
        let deadline = Instant::now() + WAIT;
        while !gw.ap_status_seen {
            assert!(Instant::now() < deadline, "the access point never answered");
            gw.pump_once(Duration::from_millis(100));
        }
        gw
    }

    fn send(&mut self, label: LabelId, command: &TagCommand<'_>) -> Seq {
        let seq = self.seqs.entry(label).or_insert(0);
        *seq = seq.wrapping_add(1);
        let seq = Seq(*seq);
        let packet = RadioPacket::encode(label, seq, command).unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            match self.handle.send(packet.clone()) {
                Ok(_) => return seq,
                Err(SendError::Disconnected | SendError::QueueFull) => {
                    assert!(
                        Instant::now() < deadline,
                        "driver refused sends for too long"
                    );
                    self.pump_once(Duration::from_millis(20));
                }
                Err(e) => panic!("send: {e}"),
            }
        }
    }

    /// Sends the goal: the layer's chunks from `from`, then `Show` (or only `Fields`).
    fn push(&mut self, label: LabelId, from: u32) {
        let goal = self.goals[&label].clone();
        let watch = match &goal.layer {
            Some((bytes, hash)) => {
                for chunk in layer_chunks(*hash, bytes, from) {
                    self.send(label, &TagCommand::LayerChunk(chunk));
                }
                self.send(
                    label,
                    &TagCommand::Show {
                        layer: *hash,
                        fields: goal.fields,
                    },
                )
            }
            None => self.send(label, &TagCommand::Fields(goal.fields)),
        };
        self.goals.get_mut(&label).unwrap().watch = Some(watch);
    }

    fn show(&mut self, label: LabelId, layer: &(Vec<u8>, LayerHash), fields: DynamicFields) {
        self.goals.insert(
            label,
            Goal {
                layer: Some(layer.clone()),
                fields,
                content: content_hash(Some(layer.1), Some(&fields)).unwrap(),
                watch: None,
                confirmed: false,
            },
        );
        self.push(label, 0);
    }

    /// A price-only change over the layer the tag shows.
    fn price(&mut self, label: LabelId, layer: LayerHash, fields: DynamicFields) {
        self.goals.insert(
            label,
            Goal {
                layer: None,
                fields,
                content: content_hash(Some(layer), Some(&fields)).unwrap(),
                watch: None,
                confirmed: false,
            },
        );
        self.push(label, 0);
    }

    fn status(&mut self, label: LabelId, status: TagStatus) {
        self.statuses.insert(label, status);
        if let Some(goal) = self.goals.get_mut(&label)
            && status.content == Some(goal.content)
            && status.displayed
        {
            goal.confirmed = true;
        }
    }

    fn pump_once(&mut self, timeout: Duration) {
        let event = match self.events.recv_timeout(timeout) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => return,
            Err(RecvTimeoutError::Disconnected) => panic!("driver stopped"),
        };
        match event {
            ApEvent::Status(_) => self.ap_status_seen = true,
            ApEvent::Heard {
                label,
                seq,
                rssi_dbm,
                report,
            } => {
                self.rssi.push(rssi_dbm);
                match report {
                    TagReport::Status(status) => {
                        self.send(label, &TagCommand::Ack { seq });
                        self.status(label, status);
                    }
                    TagReport::Ack(ack) => {
                        self.status(label, ack.status);
                        let watched = self.goals.get(&label).and_then(|g| g.watch);
                        match ack.outcome {
                            Outcome::LayerMissing { have, .. } if watched == Some(ack.seq) => {
                                self.push(label, have);
                            }
                            Outcome::Stale { last } => {
                                self.seqs.insert(label, last.0);
                                if watched == Some(ack.seq) {
                                    self.push(label, 0);
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            ApEvent::Expired { label, .. } => {
                self.expired.push(label);
                let open = self.goals.get(&label).is_some_and(|g| !g.confirmed);
                if open && self.retry_expired {
                    self.push(label, 0);
                }
            }
            ApEvent::Sent { label, outcome, .. } => {
                let open = self.goals.get(&label).is_some_and(|g| !g.confirmed);
                if outcome != SendOutcome::Queued && open {
                    self.push(label, 0);
                }
            }
            ApEvent::Link(_) => {}
        }
    }

    fn confirmed(&self, label: LabelId) -> bool {
        self.goals.get(&label).is_some_and(|g| g.confirmed)
    }

    /// Pumps events until every label in `labels` confirmed its goal.
    fn wait_confirmed(&mut self, labels: &[LabelId], within: Duration) {
        let deadline = Instant::now() + within;
        while !labels.iter().all(|l| self.confirmed(*l)) {
            assert!(
                Instant::now() < deadline,
                "not confirmed in {within:?}: {:?}; link {:?}",
                labels
                    .iter()
                    .filter(|l| !self.confirmed(**l))
                    .collect::<Vec<_>>(),
                self.handle.status()
            );
            self.pump_once(Duration::from_millis(20));
        }
    }
}

/// The label as the firmware renders it, one RGB triple per pixel, row by row.
fn rendered(panel: Panel, layer: &[u8], fields: &DynamicFields) -> Vec<[u8; 3]> {
    let image = LayerImage::parse(layer, panel).unwrap();
    let mut fb = FrameBuffer::new(panel, vec![0u8; panel.frame_bytes()]).unwrap();
    render_label(&mut fb, Some(&image), Some(fields)).unwrap();
    let (w, h) = panel.size();
    let mut out = Vec::new();
    for y in 0..h {
        for x in 0..w {
            out.push(rgb(fb.pixel(x, y)));
        }
    }
    out
}

/// A PNG's pixels as RGB triples.
fn decode_png(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let bytes = std::fs::read(path).unwrap();
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    let pixels = buf.chunks(3).map(|c| [c[0], c[1], c[2]]).collect();
    (info.width, info.height, pixels)
}

#[test]
fn a_layer_and_prices_reach_the_tags_and_their_screens_show_them() {
    let dir = tempfile::tempdir().unwrap();
    let panel = Panel::Bw290;
    let labels: Vec<LabelId> = (0..3).map(label).collect();
    let sim = EslSim::start(config(3, Some(dir.path()))).unwrap();
    let mut gw = Gateway::connect(sim.path());

    let names = [
        "Organic Bananas",
        "有机牛奶 Whole Milk",
        "Parmigiano Reggiano",
    ];
    let layers: Vec<_> = names.iter().map(|n| layer(panel, n)).collect();
    for (i, l) in labels.iter().enumerate() {
        gw.show(*l, &layers[i], eur(349 + u32::try_from(i).unwrap()));
    }
    gw.wait_confirmed(&labels, WAIT);

    // A price-only change: one Fields frame per tag.
    let sent_before = sim.stats().radio.frames_down;
    for (i, l) in labels.iter().enumerate() {
        gw.price(*l, layers[i].1, eur(299 - u32::try_from(i).unwrap()));
    }
    gw.wait_confirmed(&labels, WAIT);
    let stats = sim.stats();
    // Three Fields frames plus the acknowledgements of Status reports.
    assert!(
        stats.radio.frames_down - sent_before < 3 + 3 * 4,
        "{stats:?}"
    );
    assert_eq!(stats.refused.total(), 0, "{stats:?}");
    assert!(gw.handle.status().ap.is_some());

    for (i, l) in labels.iter().enumerate() {
        let view = sim.tag(*l).unwrap();
        let new = eur(299 - u32::try_from(i).unwrap());
        assert_eq!(view.fields, Some(new));
        assert_eq!(view.shown, Some(gw.goals[l].content));
        let (w, h, png) = decode_png(&png_path(dir.path(), *l));
        assert_eq!((w, h), (296, 128));
        let expected = rendered(panel, &layers[i].0, &new);
        let differing = png.iter().zip(&expected).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 0, "{l}: {differing} pixels differ");
        // And the old price looked different: the screen really changed.
        let old = rendered(panel, &layers[i].0, &eur(349 + u32::try_from(i).unwrap()));
        assert!(png.iter().zip(&old).filter(|(a, b)| a != b).count() > 50);
    }
    // Status: battery, temperature, signal.
    for l in &labels {
        let s = gw.statuses[l];
        assert!((2_000..=3_200).contains(&s.battery_mv), "{s:?}");
        assert!((-10..=40).contains(&s.temperature_c), "{s:?}");
        assert!((-100..=-30).contains(&s.rssi_dbm), "{s:?}");
    }
    assert!(gw.rssi.iter().all(|r| (-100..=-30).contains(r)));
    let stats = sim.shutdown();
    assert!(stats.png_written >= 6, "{stats:?}");
}

#[test]
fn every_tag_confirms_with_a_fifth_of_radio_frames_lost() {
    let panel = Panel::Bwr290;
    let labels: Vec<LabelId> = (0..4).map(label).collect();
    let sim = EslSim::start(EslSimConfig {
        loss: 0.2,
        panel,
        seed: 11,
        ..config(4, None)
    })
    .unwrap();
    let mut gw = Gateway::connect(sim.path());
    let l = layer(panel, "Rote Äpfel Braeburn");
    for t in &labels {
        gw.show(*t, &l, eur(199));
    }
    gw.wait_confirmed(&labels, Duration::from_secs(30));
    for t in &labels {
        gw.price(*t, l.1, eur(149));
    }
    gw.wait_confirmed(&labels, Duration::from_secs(30));
    let stats = sim.shutdown();
    assert!(
        stats.radio.lost_down > 0 && stats.radio.lost_up > 0,
        "{stats:?}"
    );
    assert!(stats.radio.retries > 0, "{stats:?}");
}

/// Garbage, damaged, oversized, foreign and replayed frames written into the pty beside the
/// driver.
#[test]
fn garbage_on_the_pty_is_refused_and_counted_and_the_link_recovers() {
    let labels: Vec<LabelId> = (0..2).map(label).collect();
    let sim = EslSim::start(config(2, None)).unwrap();
    // A second writer on the gateway's end of the pty, opened before the driver locks it.
    let mut line = std::fs::OpenOptions::new()
        .write(true)
        .open(sim.path())
        .unwrap();
    let mut gw = Gateway::connect(sim.path());
    let l = layer(Panel::Bw290, "Sourdough Loaf");
    for t in &labels {
        gw.show(*t, &l, eur(420));
    }
    gw.wait_confirmed(&labels, WAIT);
    let before = sim.stats();
    assert_eq!(before.refused.total(), 0);

    let ap = ApId::ANY;
    let radio = {
        let mut buf = [0u8; 96];
        let n = encode_packet(
            Header::new(labels[0], Seq(9_999)),
            &TagCommand::Fields(eur(1)),
            &mut buf,
        )
        .unwrap();
        buf[..n].to_vec()
    };
    let send = |seq: u16| {
        encode_frame_vec(
            Header::new(ap, Seq(seq)),
            &ApCommand::Send { radio: &radio },
        )
        .unwrap()
    };
    let newest = before.gateway_seq.unwrap();
    let mut garbage: Vec<u8> = vec![0];
    // Noise.
    garbage.extend([0x13, 0x37, 0xff, 0x02, 0x55, 0xaa, 0x01, 0x00]);
    // A damaged frame (CRC).
    let mut corrupt = send(newest.wrapping_add(1));
    corrupt[5] ^= 0x40;
    garbage.extend(&corrupt);
    // A truncated frame: well stuffed, but only the first 9 bytes of a packet.
    let mut whole = send(newest.wrapping_add(1));
    let packet = aisle_protocol::esl::unstuff(&mut whole).unwrap().to_vec();
    let mut stuffed = [0u8; 200];
    let m = aisle_protocol::esl::stuff(&packet[..9], &mut stuffed).unwrap();
    garbage.extend(&stuffed[..m]);
    // An oversized one.
    garbage.extend(std::iter::repeat_n(0x41, 700));
    garbage.push(0);
    // Another protocol version.
    let mut packet = [0u8; 160];
    let n = encode_packet(
        Header::new(ap, Seq(1)),
        &ApCommand::StatusRequest,
        &mut packet,
    )
    .unwrap();
    packet[0] = 9;
    let fixed = crc32(&packet[..n - 4]);
    packet[n - 4..n].copy_from_slice(&fixed.to_le_bytes());
    let mut stuffed = [0u8; 200];
    let m = aisle_protocol::esl::stuff(&packet[..n], &mut stuffed).unwrap();
    garbage.extend(&stuffed[..m]);
    // A replay: far older than anything the access point took recently.
    garbage.extend(send(newest.wrapping_sub(1_000)));
    // Intact, but not a command.
    garbage.extend(
        encode_frame_vec(
            Header::new(ap, Seq(newest.wrapping_add(2))),
            &ApReport::Ack { seq: Seq(1) },
        )
        .unwrap(),
    );
    garbage.push(0);
    line.write_all(&garbage).unwrap();
    line.flush().unwrap();

    let deadline = Instant::now() + WAIT;
    let after = loop {
        let s = sim.stats();
        if s.refused.total() >= 6 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let r = after.refused;
    assert!(r.corrupt >= 2, "{r:?}");
    assert!(r.truncated >= 1, "{r:?}");
    assert!(r.oversized >= 1, "{r:?}");
    assert!(r.version >= 1, "{r:?}");
    assert!(r.replay >= 1, "{r:?}");
    assert!(r.malformed >= 1, "{r:?}");
    // The replayed Send did not reach the tag.
    assert_ne!(sim.tag(labels[0]).unwrap().fields, Some(eur(1)));

    // The link still works.
    for t in &labels {
        gw.price(*t, l.1, eur(399));
    }
    gw.wait_confirmed(&labels, WAIT);
    assert!(gw.handle.status().is_connected());
    assert_ne!(sim.tag(labels[0]).unwrap().fields, Some(eur(1)));
}

fn crc32(bytes: &[u8]) -> u32 {
    // CRC-32/ISO-HDLC, bitwise.
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn a_tag_that_never_answers_is_reported_without_holding_up_the_others() {
    let labels: Vec<LabelId> = (0..3).map(label).collect();
    let sim = EslSim::start(EslSimConfig {
        expire_after: Duration::from_millis(2_000),
        ..config(3, None)
    })
    .unwrap();
    let dead = labels[1];
    sim.set_offline(dead, true).unwrap();
    let mut gw = Gateway::connect(sim.path());
    gw.retry_expired = false;
    let l = layer(Panel::Bw290, "Espresso Beans");
    let started = Instant::now();
    for t in &labels {
        gw.show(*t, &l, eur(899));
    }
    let alive = [labels[0], labels[2]];
    gw.wait_confirmed(&alive, WAIT);
    // The others did not wait for the dead tag's frames to expire.
    assert!(gw.expired.is_empty(), "{:?}", gw.expired);
    assert!(started.elapsed() < Duration::from_millis(2_000));
    let deadline = Instant::now() + WAIT;
    while !gw.expired.contains(&dead) {
        assert!(Instant::now() < deadline, "no Expired for {dead}");
        gw.pump_once(Duration::from_millis(20));
    }
    assert!(!gw.confirmed(dead));
    assert!(gw.expired.iter().all(|l| *l == dead), "{:?}", gw.expired);
    let stats = sim.shutdown();
    assert!(stats.radio.expired > 0, "{stats:?}");
    assert_eq!(stats.refused.total(), 0, "{stats:?}");
}

// The access point as a pure state machine.

fn core() -> (AccessPoint, Instant) {
    let now = Instant::now();
    let mut cfg = EslSimConfig::new(FIRST, 1);
    cfg.checkin = Duration::from_millis(10);
    (AccessPoint::new(cfg, now).unwrap(), now)
}

fn answers(out: &[u8]) -> Vec<String> {
    let mut reader = aisle_protocol::esl::FrameReader::<400>::new();
    let mut seen = Vec::new();
    for &b in out {
        if let Some(Ok(p)) = reader.push(b) {
            let (_, r) = decode_packet::<ApReport>(p).unwrap();
            seen.push(format!("{r:?}"));
        }
    }
    seen
}

#[test]
fn a_repeated_send_is_answered_again_and_applied_once_and_a_replay_is_refused() {
    let (mut ap, now) = core();
    let radio = {
        let mut buf = [0u8; 96];
        let n = encode_packet(
            Header::new(FIRST, Seq(1)),
            &TagCommand::Fields(eur(100)),
            &mut buf,
        )
        .unwrap();
        buf[..n].to_vec()
    };
    let send = |seq: u16| {
        encode_frame_vec(
            Header::new(ApId::ANY, Seq(seq)),
            &ApCommand::Send { radio: &radio },
        )
        .unwrap()
    };
    let mut out = Vec::new();
    ap.receive(&send(500), now, &mut out);
    ap.receive(&send(500), now, &mut out);
    let a = answers(&out);
    assert_eq!(a.len(), 2, "{a:?}");
    assert!(
        a.iter().all(|s| s.contains("Ack") && s.contains("500")),
        "{a:?}"
    );
    let s = ap.stats();
    assert_eq!((s.queued, s.duplicates), (1, 1));
    out.clear();
    ap.receive(&send(400), now, &mut out);
    assert!(out.is_empty());
    assert_eq!(ap.stats().refused.replay, 1);
    assert_eq!(ap.stats().queued, 1);
    // A StatusRequest the window does not know starts a new session; Sends after it count.
    let status = encode_frame_vec(Header::new(ApId::ANY, Seq(100)), &ApCommand::StatusRequest);
    ap.receive(&status.unwrap(), now, &mut out);
    ap.receive(&send(101), now, &mut out);
    assert_eq!(ap.stats().queued, 2);
    // The tag gets the price once, at its next check-in.
    let later = now + Duration::from_millis(50);
    ap.poll(later, &mut out);
    assert_eq!(ap.tag(FIRST).unwrap().fields, Some(eur(100)));
    assert_eq!(ap.tag(FIRST).unwrap().refreshes, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn any_bytes_from_the_line_are_refused_or_answered_never_a_panic(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..8)
    ) {
        let (mut ap, now) = core();
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let t = now + Duration::from_millis(7 * i as u64);
            ap.receive(c, t, &mut out);
            ap.poll(t, &mut out);
        }
        let s = ap.stats();
        prop_assert!(s.queued <= s.commands);
        prop_assert!(out.len() < 1_000_000);
    }
}
