//! The headline figure of `esl_bytes`: a price change on the radio against the zlib (level 9)
//! size of the same label sent as a full 1-bpp image, as image-based systems do.
#![allow(clippy::unwrap_used)]
mod support;

use std::io::Write;

use aisle_firmware::{FrameBuffer, Panel, render_label};
use aisle_protocol::esl::{DynamicFields, LayerImage, UnitBase, price_change_wire_len};
use support::*;

fn zlib9(bytes: &[u8]) -> usize {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(bytes).unwrap();
    z.finish().unwrap().len()
}

#[test]
fn a_price_change_is_at_most_32_bytes_and_20_times_smaller_than_the_image() {
    let panel = Panel::Bw290;
    let (layer, _) = name_layer(panel, "Organic Bananas", "Fairtrade, Ecuador, 500 g");
    let fields = DynamicFields::new(eur(), 349)
        .unwrap()
        .with_unit(698, UnitBase::Kilogram)
        .unwrap();
    let mut fb = FrameBuffer::new(panel, vec![0u8; panel.frame_bytes()]).unwrap();
    render_label(
        &mut fb,
        Some(&LayerImage::parse(&layer, panel).unwrap()),
        Some(&fields),
    )
    .unwrap();
    // The controller's black plane: 4736 bytes, what an image-based system compresses and sends.
    assert_eq!(fb.black().len(), 4736);
    let image = zlib9(fb.black());
    let change = price_change_wire_len(&fields).unwrap();
    assert_eq!(change, 27);
    // Published: 750-900 bytes for such a label.
    assert!((600..1200).contains(&image), "zlib image {image} bytes");
    assert!(
        image >= 20 * change,
        "{image} vs {change}: only {}x",
        image / change
    );
}
