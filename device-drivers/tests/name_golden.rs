//! Static layers drawn by the gateway, shown through the tag's own renderer with a price, against
//! committed PNGs. `AISLE_BLESS=1 cargo test -p aisle-drivers --test name_golden` regenerates
//! them after a deliberate change; look at every changed PNG before committing.
#![allow(clippy::unwrap_used)]
mod support;

use aisle_drivers::esl::{Fit, LabelFont, NameRenderer, NameText};
use aisle_firmware::{FrameBuffer, Panel, render_label};
use aisle_protocol::esl::{DynamicFields, LabelCurrency, LayerImage, UnitBase};
use support::check_golden;

fn eur() -> LabelCurrency {
    LabelCurrency::new(*b"EUR", 2).unwrap()
}

fn cny() -> LabelCurrency {
    LabelCurrency::new(*b"CNY", 2).unwrap()
}

/// Renders the layer, sends it through its wire encoding, and lets the firmware draw the label.
fn label(panel: Panel, text: &NameText<'_>, fields: &DynamicFields) -> (FrameBuffer<Vec<u8>>, Fit) {
    let renderer = NameRenderer::new(LabelFont::embedded().unwrap());
    let layer = renderer.render_layer(panel, text).unwrap();
    let image = LayerImage::parse(&layer.bytes, panel).unwrap();
    let mut fb = FrameBuffer::new(panel, vec![0u8; panel.frame_bytes()]).unwrap();
    render_label(&mut fb, Some(&image), Some(fields)).unwrap();
    (fb, layer.fit)
}

#[test]
fn latin_name_with_brand_and_details_on_a_black_white_2_9_inch_label() {
    let fields = DynamicFields::new(eur(), 349)
        .unwrap()
        .with_unit(698, UnitBase::Kilogram)
        .unwrap();
    let text = NameText {
        name: "Organic Bananas",
        brand: Some("Fyffes"),
        details: Some("Fairtrade, Ecuador, 500 g"),
        badge: None,
    };
    let (fb, fit) = label(Panel::Bw290, &text, &fields);
    assert!(!fit.is_lossy(), "{fit:?}");
    check_golden("bw290_latin", &fb);
}

#[test]
fn chinese_name_on_a_black_white_red_2_9_inch_label() {
    let fields = DynamicFields::new(cny(), 1290)
        .unwrap()
        .with_regular(1590)
        .unwrap()
        .with_unit(2580, UnitBase::Kilogram)
        .unwrap();
    let text = NameText {
        name: "有机红富士苹果",
        brand: Some("烟台"),
        details: Some("山东 500克 一级果"),
        badge: Some("有机"),
    };
    let (fb, fit) = label(Panel::Bwr290, &text, &fields);
    assert!(!fit.is_lossy(), "{fit:?}");
    check_golden("bwr290_chinese", &fb);
}

#[test]
fn long_chinese_name_wraps_on_a_black_white_4_2_inch_label() {
    let fields = DynamicFields::new(cny(), 4990)
        .unwrap()
        .with_member(4490)
        .unwrap()
        .with_unit(208, UnitBase::Litre)
        .unwrap();
    let text = NameText {
        name: "农夫山泉 饮用天然水 550毫升×24瓶 整箱装（家庭分享量贩装）",
        brand: Some("农夫山泉"),
        details: Some("浙江千岛湖水源"),
        badge: None,
    };
    let (fb, fit) = label(Panel::Bw420, &text, &fields);
    assert!(!fit.is_lossy(), "{fit:?}");
    check_golden("bw420_chinese_long", &fb);
}

#[test]
fn a_name_that_does_not_fit_is_cut_with_a_marker_on_a_2_9_inch_label() {
    let fields = DynamicFields::new(eur(), 1899).unwrap();
    let text = NameText {
        name: "Extra Virgin Olive Oil, cold pressed and unfiltered, from hand-picked Koroneiki \
               olives grown on the terraces of the Messinian hills, bottled at the estate",
        brand: Some("Kalamata Gold"),
        details: Some("750 ml"),
        badge: Some("BIO"),
    };
    let (fb, fit) = label(Panel::Bwr290, &text, &fields);
    assert!(fit.name_truncated && !fit.small_truncated, "{fit:?}");
    check_golden("bwr290_too_long", &fb);
}

#[test]
fn mixed_scripts_on_a_black_white_red_4_2_inch_label() {
    let fields = DynamicFields::new(eur(), 299)
        .unwrap()
        .with_regular(399)
        .unwrap();
    let text = NameText {
        name: "辛ラーメン Shin Ramyun 신라면",
        brand: Some("Nongshim"),
        details: Some("5 × 120 g"),
        badge: Some("SPICY"),
    };
    let (fb, fit) = label(Panel::Bwr420, &text, &fields);
    assert!(!fit.is_lossy(), "{fit:?}");
    check_golden("bwr420_mixed", &fb);
}
