//! `esl_bytes`: what a price-only change costs on the shelf-label links, beside what an
//! image-based system sends for the same label, measured in the same run.
//!
//! * `price_change_bytes`: the access point → tag radio frame carrying the new
//!   `DynamicFields` (`TagCommand::Fields`), whole: version, address, seq, postcard body,
//!   CRC-32, COBS and delimiter. Encoded here, checked against
//!   `aisle_protocol::esl::price_change_wire_len`, and measured again on the simulated radio of
//!   `esl_sim` (`radio_bytes_measured`), where the real firmware tag takes it and redraws.
//! * `serial_frame_bytes`: the gateway → access point frame carrying that radio packet
//!   (`ApCommand::Send`), as the gateway's driver frames it.
//! * Baseline, `zlib_image_bytes`: the same label (the gateway's name layer with the embedded
//!   font, then the price drawn by the firmware renderer) as a 296x128 1-bpp image, rows of 37
//!   bytes, MSB first, compressed with zlib at level 9 (flate2): what image-based systems send
//!   for every change. `zlib_native_plane_bytes` compresses the panel's own memory layout
//!   (rotated) instead.
//!
//! Targets (design): at most 32 bytes, at least 20 times smaller than the image.
use std::io::Write;
use std::time::{Duration, Instant};

use aisle_drivers::esl::{LabelFont, NameRenderer, NameText, RadioPacket};
use aisle_firmware::{FrameBuffer, LabelColor, Panel, render_label};
use aisle_protocol::esl::{
    ApCommand, ApId, DynamicFields, Header, LabelCurrency, LabelId, LayerImage,
    MAX_RADIO_FRAME_LEN, Seq, TagCommand, UnitBase, encode_frame_vec, layer_chunks,
    price_change_wire_len, stuff,
};
use anyhow::{Result, anyhow, bail};

use super::BenchResult;
use crate::esl_sim::{AccessPoint, EslSimConfig};

/// The design's ceiling for a price change.
pub const TARGET_BYTES: usize = 32;
/// The design's floor for the ratio to the compressed image.
pub const TARGET_RATIO: f64 = 20.0;

const LABEL: LabelId = LabelId(0x00A1_0001);
const AP: ApId = ApId(0x00A1_0A01);

fn zlib9(bytes: &[u8]) -> Result<usize> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(bytes)?;
    Ok(z.finish()?.len())
}

/// The label as a landscape 1-bpp image: rows of `ceil(w / 8)` bytes, MSB first, 1 = ink.
fn pack_1bpp<S: AsRef<[u8]> + AsMut<[u8]>>(fb: &FrameBuffer<S>) -> Vec<u8> {
    let (w, h) = fb.panel().size();
    let stride = usize::from(w).div_ceil(8);
    let mut out = vec![0u8; stride * usize::from(h)];
    for y in 0..h {
        for x in 0..w {
            if fb.pixel(x, y) != LabelColor::White {
                out[usize::from(y) * stride + usize::from(x) / 8] |= 0x80 >> (x % 8);
            }
        }
    }
    out
}

/// Sends `command` for the tag through the simulated access point's serial side.
fn submit(ap: &mut AccessPoint, link_seq: &mut u16, packet: &RadioPacket, now: Instant) {
    *link_seq = link_seq.wrapping_add(1);
    let mut out = Vec::new();
    if let Ok(frame) = encode_frame_vec(
        Header::new(AP, Seq(*link_seq)),
        &ApCommand::Send {
            radio: packet.as_bytes(),
        },
    ) {
        ap.receive(&frame, now, &mut out);
    }
}

/// The radio bytes the simulator spent delivering a price change to a tag that shows the
/// product's layer: the real firmware tag takes it and shows the new price.
fn measured_on_the_simulated_radio(
    layer: &[u8],
    layer_hash: aisle_protocol::esl::LayerHash,
    before: DynamicFields,
    after: DynamicFields,
) -> Result<u64> {
    let start = Instant::now();
    let checkin = Duration::from_millis(10);
    let mut ap = AccessPoint::new(
        EslSimConfig {
            checkin,
            heartbeat: None,
            ..EslSimConfig::new(LABEL, 1)
        },
        start,
    )?;
    let mut out = Vec::new();
    let mut link_seq = 100u16;
    let status = encode_frame_vec(Header::new(AP, Seq(link_seq)), &ApCommand::StatusRequest)?;
    ap.receive(&status, start, &mut out);
    let mut tag_seq = 0u16;
    let mut next = |command: &TagCommand<'_>| {
        tag_seq += 1;
        RadioPacket::encode(LABEL, Seq(tag_seq), command)
    };
    for chunk in layer_chunks(layer_hash, layer, 0) {
        let p = next(&TagCommand::LayerChunk(chunk))?;
        submit(&mut ap, &mut link_seq, &p, start);
    }
    let p = next(&TagCommand::Show {
        layer: layer_hash,
        fields: before,
    })?;
    submit(&mut ap, &mut link_seq, &p, start);
    let t1 = start + 2 * checkin;
    ap.poll(t1, &mut out);
    let shown = ap.tag(LABEL).ok_or_else(|| anyhow!("no tag"))?;
    if shown.fields != Some(before) || shown.layer != Some(layer_hash) {
        bail!("the simulated tag did not take the layer: {shown:?}");
    }
    let bytes_before = ap.stats().radio.bytes_down;
    let p = next(&TagCommand::Fields(after))?;
    submit(&mut ap, &mut link_seq, &p, t1);
    ap.poll(t1 + 2 * checkin, &mut out);
    let shown = ap.tag(LABEL).ok_or_else(|| anyhow!("no tag"))?;
    if shown.fields != Some(after) || shown.shown != shown.content {
        bail!("the simulated tag did not show the new price: {shown:?}");
    }
    Ok(ap.stats().radio.bytes_down - bytes_before)
}

pub fn run() -> Result<BenchResult> {
    let panel = Panel::Bw290;
    let eur = LabelCurrency::new(*b"EUR", 2)?;
    let renderer = NameRenderer::new(LabelFont::embedded().map_err(|e| anyhow!("{e}"))?);
    let layer = renderer.render_layer(
        panel,
        &NameText {
            name: "Organic Bananas",
            brand: Some("Fairtrade"),
            details: Some("Ecuador, 500 g"),
            badge: None,
        },
    )?;
    let before = DynamicFields::new(eur, 379)?.with_unit(758, UnitBase::Kilogram)?;
    let fields = DynamicFields::new(eur, 349)?.with_unit(698, UnitBase::Kilogram)?;

    // The radio frame, as the access point transmits it.
    let packet = RadioPacket::encode(LABEL, Seq(0x1234), &TagCommand::Fields(fields))?;
    let mut frame = [0u8; MAX_RADIO_FRAME_LEN];
    let radio = stuff(packet.as_bytes(), &mut frame)?;
    if radio != price_change_wire_len(&fields)? {
        bail!("radio frame {radio} bytes, price_change_wire_len disagrees");
    }
    // The serial frame, as the gateway's driver sends it to the access point.
    let serial = encode_frame_vec(
        Header::new(AP, Seq(0x4321)),
        &ApCommand::Send {
            radio: packet.as_bytes(),
        },
    )?
    .len();
    let fields_body = postcard_len(&fields)?;
    let measured = measured_on_the_simulated_radio(&layer.bytes, layer.hash, before, fields)?;

    // The baseline: the whole label as an image, zlib level 9.
    let mut fb =
        FrameBuffer::new(panel, vec![0u8; panel.frame_bytes()]).map_err(|e| anyhow!("{e}"))?;
    let image = LayerImage::parse(&layer.bytes, panel)?;
    render_label(&mut fb, Some(&image), Some(&fields))?;
    let packed = pack_1bpp(&fb);
    let zlib = zlib9(&packed)?;
    let zlib_native = zlib9(fb.black())?;

    let ratio = zlib as f64 / radio as f64;
    let mut r = BenchResult::default();
    r.figure("price_change_bytes", radio);
    r.figure("zlib_image_bytes", zlib);
    r.figure("ratio", super::round(ratio, 1));
    r.figure("serial_frame_bytes", serial);
    r.figure("ratio_serial", super::round(zlib as f64 / serial as f64, 1));
    r.figure("radio_bytes_measured", measured);
    r.figure("dynamic_fields_bytes", fields_body);
    r.figure("raw_image_bytes", packed.len());
    r.figure("zlib_native_plane_bytes", zlib_native);
    r.figure("static_layer_bytes", layer.bytes.len());
    r.row(
        "price change, AP→tag radio frame",
        format!("{radio} B (simulated radio: {measured} B)"),
        format!("≤ {TARGET_BYTES} B"),
        Some(radio <= TARGET_BYTES),
    );
    r.row(
        "zlib-9 1-bpp 296x128 image (baseline)",
        format!("{zlib} B"),
        format!("raw {} B", packed.len()),
        None,
    );
    r.row(
        "image / price change",
        format!("{ratio:.1}x"),
        format!("≥ {TARGET_RATIO}x"),
        Some(ratio >= TARGET_RATIO),
    );
    r.row(
        "price change, gateway→AP serial frame",
        format!("{serial} B"),
        format!("{:.1}x smaller than the image", zlib as f64 / serial as f64),
        None,
    );
    r.row(
        "static layer (once per product, LZ4)",
        format!("{} B", layer.bytes.len()),
        String::new(),
        None,
    );
    Ok(r)
}

fn postcard_len(fields: &DynamicFields) -> Result<usize> {
    // The same encoding the frame's body uses, without the enum tag.
    let mut buf = [0u8; 64];
    let mut out = [0u8; MAX_RADIO_FRAME_LEN];
    let with_tag = aisle_protocol::esl::encode_packet(
        Header::new(LABEL, Seq(0)),
        &TagCommand::Fields(*fields),
        &mut out,
    )?;
    let empty = aisle_protocol::esl::encode_packet(
        Header::new(LABEL, Seq(0)),
        &TagCommand::StatusRequest,
        &mut buf,
    )?;
    // Both carry header, one tag byte and CRC; the difference is the fields.
    Ok(with_tag - empty)
}
