//! Rendered labels against committed PNGs (`AISLE_BLESS=1 cargo test -p aisle-firmware --test
//! golden` regenerates them after a deliberate change; look at the diff before committing).
#![allow(clippy::unwrap_used)]
mod support;

use aisle_firmware::{FrameBuffer, Panel, render_label};
use aisle_protocol::esl::{DynamicFields, Flags, LayerImage, UnitBase};
use support::*;

fn render(panel: Panel, name: &str, details: &str, fields: &DynamicFields) -> FrameBuffer<Vec<u8>> {
    let (layer, _) = name_layer(panel, name, details);
    let image = LayerImage::parse(&layer, panel).unwrap();
    let mut fb = FrameBuffer::new(panel, vec![0u8; panel.frame_bytes()]).unwrap();
    render_label(&mut fb, Some(&image), Some(fields)).unwrap();
    fb
}

#[test]
fn promotion_on_a_red_2_9_inch_label() {
    let fb = render(
        Panel::Bwr290,
        "Organic Bananas",
        "Fairtrade, Ecuador, 500 g",
        &promo_fields(),
    );
    check_golden("bwr290_promo", &fb);
}

#[test]
fn plain_price_with_unit_and_badge_on_a_black_white_4_2_inch_label() {
    let fields = DynamicFields::new(eur(), 1249)
        .unwrap()
        .with_unit(2498, UnitBase::Kilogram)
        .unwrap()
        .with_flags(Flags::NEW.with(Flags::DECIMAL_COMMA));
    let fb = render(
        Panel::Bw420,
        "Parmigiano Reggiano",
        "DOP, 24 months, 500 g",
        &fields,
    );
    check_golden("bw420_plain", &fb);
}

#[test]
fn yen_without_decimals_on_a_black_white_2_9_inch_label() {
    let yen = aisle_protocol::esl::LabelCurrency::new(*b"JPY", 0).unwrap();
    let fields = DynamicFields::new(yen, 1980)
        .unwrap()
        .with_unit(396, UnitBase::Gram100)
        .unwrap();
    let fb = render(Panel::Bw290, "Matcha Green Tea", "Uji, 500 g tin", &fields);
    check_golden("bw290_yen", &fb);
}
