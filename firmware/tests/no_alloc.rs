//! The tag never allocates: receiving every kind of frame, caching a layer, rendering and
//! checking in run under an allocator that counts any allocation on this thread.
#![allow(clippy::unwrap_used)]
mod support;

use aisle_firmware::{FrameBuffer, Panel, Sensors, Tag, TagConfig};
use aisle_protocol::esl::{
    Header, LabelId, MAX_RADIO_FRAME_LEN, Seq, TagCommand, encode_frame_vec, layer_chunks,
};
use assert_no_alloc::{AllocDisabler, assert_no_alloc, reset_violation_count, violation_count};
use support::*;

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

#[test]
fn receiving_rendering_and_checking_in_allocate_nothing() {
    let panel = Panel::Bwr290;
    let label = LabelId(0x0BAD_CAFE);
    // Everything the gateway side builds is built first: it may allocate.
    let (layer, name) = name_layer(panel, "Organic Bananas", "Fairtrade, Ecuador, 500 g");
    let fields = promo_fields();
    let mut commands: Vec<TagCommand<'_>> = layer_chunks(name, &layer, 0)
        .map(TagCommand::LayerChunk)
        .collect();
    commands.push(TagCommand::Show {
        layer: name,
        fields,
    });
    commands.push(TagCommand::Fields(
        fields.with_flags(aisle_protocol::esl::Flags::NEW),
    ));
    commands.push(TagCommand::StatusRequest);
    let mut frames: Vec<Vec<u8>> = commands
        .iter()
        .enumerate()
        .map(|(i, c)| {
            encode_frame_vec(Header::new(label, Seq(u16::try_from(i).unwrap() + 1)), c).unwrap()
        })
        .collect();
    frames.push(frames[3].clone()); // a repeat
    frames.push(vec![0x55; 40]); // garbage
    let mut tag: Box<Tag> = Box::new(Tag::new(TagConfig::new(label, panel)));
    let mut fb = FrameBuffer::new(panel, vec![0u8; panel.frame_bytes()]).unwrap();
    let mut reply = [0u8; MAX_RADIO_FRAME_LEN];
    let sensors = Sensors::default();

    reset_violation_count();
    let answered = assert_no_alloc(|| {
        let mut answered = 0;
        for frame in &mut frames {
            if let Ok(r) = tag.receive(frame, sensors, &mut reply) {
                answered += usize::from(r.reply_len > 0);
            }
        }
        let shown = tag.render(&mut fb);
        tag.refreshed(shown, aisle_firmware::Refresh::Full);
        let _ = tag.check_in(sensors, &mut reply);
        answered
    });
    assert_eq!(violation_count(), 0, "the tag allocated");
    assert_eq!(answered, commands.len() + 1);
    assert!(tag.status(sensors).displayed);
}
