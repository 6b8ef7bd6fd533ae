//! The renderer on any fields: it stays inside its boxes, always shows the price, never panics.
#![allow(clippy::unwrap_used)]
mod support;

use aisle_firmware::{FrameBuffer, LabelColor, Panel, render_label};
use aisle_protocol::esl::{
    DynamicFields, Flags, LabelCurrency, LayerCanvas, LayerImage, MAX_LABEL_AMOUNT, UnitBase,
    encode_layer,
};
use proptest::prelude::*;

fn any_fields() -> impl Strategy<Value = DynamicFields> {
    (
        prop::sample::select(vec![
            (*b"EUR", 2u8),
            (*b"JPY", 0),
            (*b"KWD", 3),
            (*b"CHF", 2),
            (*b"GBP", 2),
        ]),
        1u32..=MAX_LABEL_AMOUNT - 1,
        prop::option::of(0.0f64..1.0),
        prop::option::of(0.0f64..1.0),
        prop::option::of(0u32..=MAX_LABEL_AMOUNT),
        0u8..16,
    )
        .prop_map(|((code, exp), price, regular, member, unit, flags)| {
            let currency = LabelCurrency::new(code, exp).unwrap();
            let mut f = DynamicFields::new(currency, price)
                .unwrap()
                .with_flags(Flags::from_bits(flags).unwrap());
            if let Some(r) = regular {
                let regular = price + 1 + ((f64::from(MAX_LABEL_AMOUNT - price - 1)) * r) as u32;
                f = f.with_regular(regular.min(MAX_LABEL_AMOUNT)).unwrap();
            }
            if let Some(m) = member {
                f = f.with_member((f64::from(price) * m) as u32).unwrap();
            }
            if let Some(u) = unit {
                f = f.with_unit(u, UnitBase::Millilitre100).unwrap();
            }
            f
        })
}

/// A static layer inked everywhere: whatever the fields, only the tag's boxes may change.
fn full_layer(panel: Panel) -> Vec<u8> {
    let black = vec![0xffu8; panel.plane_bytes()];
    let red = panel.has_red().then(|| vec![0u8; panel.plane_bytes()]);
    encode_layer(panel, &black, red.as_deref()).unwrap().0
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn fields_draw_only_inside_their_boxes_and_the_price_always_shows(fields in any_fields(), p in 0usize..4) {
        let panel = Panel::ALL[p];
        let layer = full_layer(panel);
        let image = LayerImage::parse(&layer, panel).unwrap();
        let mut fb = FrameBuffer::new(panel, vec![0u8; panel.frame_bytes()]).unwrap();
        render_label(&mut fb, Some(&image), Some(&fields)).unwrap();
        let layout = panel.layout();
        let boxes = layout.dynamic_boxes();
        let (w, h) = panel.size();
        let mut price_ink = 0;
        for y in 0..h {
            for x in 0..w {
                let c = fb.pixel(x, y);
                if !boxes.iter().any(|b| b.contains(x, y)) {
                    prop_assert_eq!(c, LabelColor::Black, "({}, {}) outside the boxes changed", x, y);
                } else if layout.price.contains(x, y) && c != LabelColor::White {
                    price_ink += 1;
                }
            }
        }
        // Even a nine-digit price leaves a readable amount of ink.
        prop_assert!(price_ink > 200, "price box nearly empty: {} pixels", price_ink);
        let promo = fields.regular().is_some();
        let red_in_price = (0..h).flat_map(|y| (0..w).map(move |x| (x, y)))
            .filter(|&(x, y)| layout.price.contains(x, y))
            .any(|(x, y)| fb.pixel(x, y) == LabelColor::Red);
        prop_assert_eq!(red_in_price, promo && panel.has_red(), "promotions are red where there is red");
    }
}

#[test]
fn a_layer_that_does_not_decompress_leaves_white_and_the_price() {
    let panel = Panel::Bw290;
    let mut canvas = LayerCanvas::new(panel);
    for x in 0..296 {
        for y in 0..40 {
            if (x / 3 + y / 5) % 2 == 0 {
                canvas.set(x, y, aisle_protocol::esl::Ink::Black);
            }
        }
    }
    let (bytes, _) = canvas.encode().unwrap();
    let mut image = LayerImage::parse(&bytes, panel).unwrap();
    let cut = &image.black[..image.black.len() / 2].to_vec();
    image.black = cut;
    let mut fb = FrameBuffer::new(panel, vec![0u8; panel.frame_bytes()]).unwrap();
    let fields = DynamicFields::new(support::eur(), 349).unwrap();
    assert!(render_label(&mut fb, Some(&image), Some(&fields)).is_err());
    let name = panel.layout().name;
    assert!(
        (name.y..name.y + name.h).all(|y| (0..296).all(|x| fb.pixel(x, y) == LabelColor::White))
    );
    let price = panel.layout().price;
    assert!(
        (price.y..price.y + price.h)
            .any(|y| (price.x..price.x + price.w).any(|x| fb.pixel(x, y) == LabelColor::Black))
    );
}
