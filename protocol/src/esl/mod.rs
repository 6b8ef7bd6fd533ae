//! Electronic shelf labels: the wire format between gateway, access point and tag.
//!
//! ```text
//! gateway ──serial, LinkFrame(ApCommand::Send{radio})──▶ access point ──radio frame──▶ tag
//!         ◀──────── ApReport::Heard{radio} ─────────────              ◀── TagReport ──
//! ```
//!
//! * [`frame`]: every frame is `COBS(version | address | seq | postcard body | CRC-32) 0x00`.
//!   On the radio the address is the tag's [`LabelId`]; on the serial link it is the access
//!   point's [`ApId`] and the radio packet rides inside [`ApCommand::Send`] /
//!   [`ApReport::Heard`] untouched, so the gateway and the tag check each other end to end.
//! * [`message`]: [`TagCommand`] down, [`TagReport`] up, [`ApCommand`] / [`ApReport`] on the link.
//!   Every frame is acknowledged naming its seq, except acknowledgements.
//! * [`seq`]: 16-bit wrapping sequence numbers; [`SeqTracker`] tells new, repeat and replay.
//! * [`fields`]: [`DynamicFields`], the few bytes of a price change the tag draws itself.
//! * [`layer`]: the static layer (name, brand, icons) as a compressed band of the panel's memory,
//!   cached on the tag by [`LayerHash`]; [`LayerCanvas`] to draw one at the gateway.
//! * [`hash`]: [`LayerHash`] and [`content_hash`], what a tag confirms it holds.
//! * [`panel`]: panel geometry and the boxes the tag draws its fields in.
//!
//! Everything a tag calls is allocation-free and works on borrowed buffers; functions returning
//! a `Vec` are for the gateway. Nothing panics on input.
pub mod fields;
pub mod frame;
pub mod hash;
pub mod layer;
pub mod message;
pub mod panel;
pub mod seq;

#[cfg(test)]
mod tests;

pub use fields::{
    DynamicFields, FieldsError, Flags, LabelCurrency, MAX_LABEL_AMOUNT, UnitBase, UnitPrice,
};
pub use frame::{
    FrameError, FrameReader, Header, MAX_FRAME_LEN, MAX_PACKET_LEN, MAX_RADIO_FRAME_LEN,
    MAX_RADIO_PACKET_LEN, VERSION, decode_frame, decode_packet, encode_frame, encode_frame_vec,
    encode_packet, open_packet, stuff, unstuff,
};
pub use hash::{ContentHash, LayerHash, content_hash};
pub use layer::{Codec, Ink, LayerCanvas, LayerError, LayerImage, encode_layer};
pub use message::{
    Ack, ApCommand, ApId, ApRefusal, ApReport, ApStatus, LAYER_CHUNK_LEN, LabelId, LabelIdError,
    LayerChunk, LedColour, LedFlash, Outcome, StatusFlags, TagCommand, TagReport, TagStatus,
};
pub use panel::{LabelLayout, Panel, Rect};
pub use seq::{Seq, SeqTracker, SeqVerdict};

/// Bytes on the radio for a price change to `fields`: the whole frame, header, CRC, COBS and
/// delimiter included. What the `esl_bytes` benchmark reports.
pub fn price_change_wire_len(fields: &DynamicFields) -> Result<usize, FrameError> {
    let mut out = [0u8; MAX_RADIO_FRAME_LEN];
    // Address and seq are fixed-width, so any values give the same length.
    encode_frame(
        Header::new(LabelId(0), Seq(0)),
        &TagCommand::Fields(*fields),
        &mut out,
    )
}

/// Splits an encoded layer into chunks for [`TagCommand::LayerChunk`], starting at byte `from`
/// (0, or the `have` of an [`Outcome::LayerMissing`] to resume).
pub fn layer_chunks(
    layer: LayerHash,
    bytes: &[u8],
    from: u32,
) -> impl Iterator<Item = LayerChunk<'_>> {
    let total = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    let start = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
    bytes[start..]
        .chunks(LAYER_CHUNK_LEN)
        .enumerate()
        .map(move |(i, data)| LayerChunk {
            layer,
            total,
            // Fits: offsets are below `total`.
            offset: u32::try_from(start + i * LAYER_CHUNK_LEN).unwrap_or(u32::MAX),
            data,
        })
}
