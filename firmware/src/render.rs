//! Draws a label: the cached static layer, then the dynamic fields in the panel's boxes.
//!
//! * price: big digits, the fraction raised and smaller (`3,⁴⁹`), the currency symbol (or code)
//!   in front; red on a black/white/red panel during a promotion.
//! * regular price during a promotion: struck through (red where there is red).
//! * member price: white on black under "MEMBER".
//! * unit price: small digits with the currency and the unit ("6.98 €/kg").
//! * badge: the most important flag as a word.
//!
//! Every size is the largest that fits its box, so nine-digit amounts shrink instead of
//! spilling, and drawing is clipped to each box: nothing a gateway sends can draw outside it.
use core::fmt::Write;

use aisle_protocol::esl::{DynamicFields, Flags, LabelCurrency, LayerError, LayerImage, Rect};
use embedded_graphics::mono_font::iso_8859_15::{FONT_6X10, FONT_7X13, FONT_7X13_BOLD, FONT_10X20};
use embedded_graphics::mono_font::{MonoFont, MonoTextStyle};
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{Line, PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Baseline, Text};

use crate::digits::Digits;
use crate::{FrameBuffer, LabelColor};

/// Renders a whole label into `fb`: clears it, decompresses `layer` into it, draws `fields`.
///
/// A layer that does not decompress leaves white behind it (never a half-drawn layer) and is
/// reported after the fields are drawn, so the label still shows its price.
pub fn render_label<S: AsRef<[u8]> + AsMut<[u8]>>(
    fb: &mut FrameBuffer<S>,
    layer: Option<&LayerImage<'_>>,
    fields: Option<&DynamicFields>,
) -> Result<(), LayerError> {
    fb.clear();
    let layer_result = match layer {
        Some(image) => {
            let (black, red) = fb.planes_mut();
            image.draw_into(black, red)
        }
        None => Ok(()),
    };
    if layer_result.is_err() {
        fb.clear();
    }
    if let Some(fields) = fields {
        draw_fields(fb, fields);
    }
    layer_result
}

/// Draws the dynamic fields over whatever `fb` holds, clearing their boxes first.
pub fn draw_fields<S: AsRef<[u8]> + AsMut<[u8]>>(fb: &mut FrameBuffer<S>, fields: &DynamicFields) {
    let panel = fb.panel();
    let layout = panel.layout();
    let accent = if panel.has_red() {
        LabelColor::Red
    } else {
        LabelColor::Black
    };
    for r in layout.dynamic_boxes() {
        fill(fb, r, LabelColor::White);
    }
    let promo = fields.regular().is_some();
    draw_price(
        fb,
        layout.price,
        fields,
        if promo { accent } else { LabelColor::Black },
    );
    if let Some(regular) = fields.regular() {
        draw_struck(fb, layout.regular, fields, regular, accent);
    }
    if let Some(member) = fields.member() {
        draw_member(fb, layout.member, fields, member);
    }
    if let Some(unit) = fields.unit() {
        let mut text = Amount::new();
        text.amount(fields.currency(), unit.amount, fields.flags());
        draw_unit(
            fb,
            layout.unit,
            fields.currency(),
            text.as_str(),
            unit.per.suffix(),
        );
    }
    draw_badge(fb, layout.badge, fields.flags(), accent);
}

fn rectangle(r: Rect) -> Rectangle {
    Rectangle::new(
        Point::new(i32::from(r.x), i32::from(r.y)),
        Size::new(u32::from(r.w), u32::from(r.h)),
    )
}

fn fill<S: AsRef<[u8]> + AsMut<[u8]>>(fb: &mut FrameBuffer<S>, r: Rect, color: LabelColor) {
    let Ok(()) = rectangle(r)
        .into_styled(PrimitiveStyle::with_fill(color))
        .draw(fb);
}

/// An amount as text, on the stack.
struct Amount {
    buf: [u8; 24],
    len: usize,
}

impl Amount {
    fn new() -> Self {
        Amount {
            buf: [0; 24],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    /// Whole units, and the fraction after a separator when the currency has decimals.
    fn amount(&mut self, currency: LabelCurrency, minor: u32, flags: Flags) {
        let (whole, fraction) = currency.split(minor);
        let sep = if flags.contains(Flags::DECIMAL_COMMA) {
            ','
        } else {
            '.'
        };
        let width = usize::from(currency.exponent());
        // At most 9 + 1 + 3 characters: always fits.
        let _ = if width > 0 {
            write!(self, "{whole}{sep}{fraction:0width$}")
        } else {
            write!(self, "{whole}")
        };
    }
}

impl Write for Amount {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(core::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn text_font(box_height: u16) -> &'static MonoFont<'static> {
    match box_height {
        0..20 => &FONT_6X10,
        20..40 => &FONT_7X13,
        _ => &FONT_10X20,
    }
}

fn mono_width(font: &MonoFont<'_>, text: &str) -> u32 {
    let n = u32::try_from(text.chars().count()).unwrap_or(0);
    n * (font.character_size.width + font.character_spacing)
}

fn draw_price<S: AsRef<[u8]> + AsMut<[u8]>>(
    fb: &mut FrameBuffer<S>,
    r: Rect,
    fields: &DynamicFields,
    color: LabelColor,
) {
    let currency = fields.currency();
    let (whole, fraction) = currency.split(fields.price());
    let mut whole_text = Amount::new();
    let _ = write!(whole_text, "{whole}");
    let mut fraction_text = Amount::new();
    let width = usize::from(currency.exponent());
    if width > 0 {
        let _ = write!(fraction_text, "{fraction:0width$}");
    }
    let sep = if fields.flags().contains(Flags::DECIMAL_COMMA) {
        ","
    } else {
        "."
    };
    let code_font = text_font(r.h / 3);
    let mut symbol = [0u8; 4];
    let symbol: &str = match currency.symbol() {
        Some(c) => c.encode_utf8(&mut symbol),
        None => "",
    };

    let pad = 2u32;
    let room_w = u32::from(r.w).saturating_sub(2 * pad);
    let room_h = u32::from(r.h).saturating_sub(2 * pad);
    // The largest height whose line fits the box.
    let mut h = room_h;
    let layout = loop {
        let big = Digits::new(h, color);
        let small = Digits::new(h * 11 / 20, color);
        let mark = Digits::new(h * 9 / 20, color);
        let gap = (h / 12).max(2);
        let mark_w = if symbol.is_empty() {
            mono_width(code_font, currency.code())
        } else {
            mark.width(symbol)
        };
        let fraction_w = if width > 0 {
            big.width(sep) + gap + small.width(fraction_text.as_str())
        } else {
            0
        };
        let total = mark_w + gap + big.width(whole_text.as_str()) + gap + fraction_w;
        if total <= room_w || h <= 8 {
            break (big, small, mark, gap, total);
        }
        h -= 1;
    };
    let (big, small, mark, gap, total) = layout;
    let gap = i32::try_from(gap).unwrap_or(0);
    let mut clipped = fb.clipped(&rectangle(r));
    let x0 = i32::from(r.x) + i32::from(r.w) - i32::try_from(pad + total).unwrap_or(0);
    let top = i32::from(r.y) + i32::from(r.h) - i32::try_from(pad + big.height()).unwrap_or(0);
    let mut at = Point::new(x0, top);
    at = if symbol.is_empty() {
        let style = MonoTextStyle::new(code_font, color);
        let Ok(next) =
            Text::with_baseline(currency.code(), at, style, Baseline::Top).draw(&mut clipped);
        next
    } else {
        let Ok(next) = mark.draw(symbol, at, &mut clipped);
        next
    };
    at.x += gap;
    let Ok(next) = big.draw(whole_text.as_str(), at, &mut clipped);
    at = next;
    if width > 0 {
        at.x += gap / 2;
        let Ok(next) = big.draw(sep, at, &mut clipped);
        at = next;
        at.x += gap;
        let Ok(_) = small.draw(fraction_text.as_str(), at, &mut clipped);
    }
}

/// The largest digits of at most `max_h` whose `text` fits `max_w`.
fn fitting(text: &str, max_w: u32, max_h: u32, color: LabelColor) -> Digits {
    let mut h = max_h;
    loop {
        let d = Digits::new(h, color);
        if d.width(text) <= max_w || h <= 6 {
            return d;
        }
        h -= 1;
    }
}

fn draw_struck<S: AsRef<[u8]> + AsMut<[u8]>>(
    fb: &mut FrameBuffer<S>,
    r: Rect,
    fields: &DynamicFields,
    regular: u32,
    accent: LabelColor,
) {
    let mut text = Amount::new();
    text.amount(fields.currency(), regular, fields.flags());
    let digits = fitting(
        text.as_str(),
        u32::from(r.w).saturating_sub(8),
        u32::from(r.h).saturating_sub(6),
        LabelColor::Black,
    )
    .with_stroke((u32::from(r.h) / 12).max(2));
    let mut clipped = fb.clipped(&rectangle(r));
    let at = Point::new(i32::from(r.x) + 4, i32::from(r.y) + 3);
    let Ok(end) = digits.draw(text.as_str(), at, &mut clipped);
    let mid = at.y + i32::try_from(digits.height() * 11 / 20).unwrap_or(0);
    let strike = PrimitiveStyle::with_stroke(accent, (digits.height() / 7).max(2));
    let Ok(()) = Line::new(
        Point::new(at.x - 3, mid + 2),
        Point::new(end.x + 3, mid - 2),
    )
    .into_styled(strike)
    .draw(&mut clipped);
}

fn draw_member<S: AsRef<[u8]> + AsMut<[u8]>>(
    fb: &mut FrameBuffer<S>,
    r: Rect,
    fields: &DynamicFields,
    member: u32,
) {
    fill(fb, r, LabelColor::Black);
    let font = if r.h >= 48 {
        &FONT_7X13_BOLD
    } else {
        &FONT_6X10
    };
    let label_h = font.character_size.height;
    let mut clipped = fb.clipped(&rectangle(r));
    let style = MonoTextStyle::new(font, LabelColor::White);
    let Ok(_) = Text::with_baseline(
        "MEMBER",
        Point::new(i32::from(r.x) + 3, i32::from(r.y) + 2),
        style,
        Baseline::Top,
    )
    .draw(&mut clipped);
    let mut text = Amount::new();
    text.amount(fields.currency(), member, fields.flags());
    let digits = fitting(
        text.as_str(),
        u32::from(r.w).saturating_sub(6),
        u32::from(r.h).saturating_sub(label_h + 5),
        LabelColor::White,
    );
    let y = i32::from(r.y) + i32::from(r.h) - 2 - i32::try_from(digits.height()).unwrap_or(0);
    let x = i32::from(r.x) + i32::from(r.w)
        - 3
        - i32::try_from(digits.width(text.as_str())).unwrap_or(0);
    let Ok(_) = digits.draw(text.as_str(), Point::new(x, y), &mut clipped);
}

fn draw_unit<S: AsRef<[u8]> + AsMut<[u8]>>(
    fb: &mut FrameBuffer<S>,
    r: Rect,
    currency: LabelCurrency,
    amount: &str,
    suffix: &str,
) {
    let font = text_font(r.h);
    // The symbol in the text font: a stroke symbol this small is a blot.
    let mut symbol_buf = [0u8; 4];
    let mark: &str = match currency.symbol() {
        Some(c) => c.encode_utf8(&mut symbol_buf),
        None => currency.code(),
    };
    let tail_w = mono_width(font, mark) + mono_width(font, suffix);
    let max_h = (u32::from(r.h).saturating_sub(4))
        .min(u32::from(r.h) * 3 / 4)
        .max(6);
    let mut h = max_h;
    let digits = loop {
        let d = Digits::new(h, LabelColor::Black).with_stroke((h / 7).max(1));
        let total = d.width(amount) + h / 3 + tail_w;
        if total <= u32::from(r.w).saturating_sub(4) || h <= 6 {
            break d;
        }
        h -= 1;
    };
    let mut clipped = fb.clipped(&rectangle(r));
    let top = i32::from(r.y) + (i32::from(r.h) - i32::try_from(digits.height()).unwrap_or(0)) / 2;
    let Ok(mut at) = digits.draw(amount, Point::new(i32::from(r.x) + 3, top), &mut clipped);
    at.x += i32::try_from(digits.height() / 3).unwrap_or(0);
    let style = MonoTextStyle::new(font, LabelColor::Black);
    let bottom = top + i32::try_from(digits.height()).unwrap_or(0);
    let Ok(next) = Text::with_baseline(mark, Point::new(at.x, bottom), style, Baseline::Bottom)
        .draw(&mut clipped);
    let Ok(_) = Text::with_baseline(suffix, next, style, Baseline::Bottom).draw(&mut clipped);
}

fn draw_badge<S: AsRef<[u8]> + AsMut<[u8]>>(
    fb: &mut FrameBuffer<S>,
    r: Rect,
    flags: Flags,
    accent: LabelColor,
) {
    let word = if flags.contains(Flags::OUT_OF_STOCK) {
        "OUT OF STOCK"
    } else if flags.contains(Flags::CLEARANCE) {
        "CLEARANCE"
    } else if flags.contains(Flags::NEW) {
        "NEW"
    } else {
        return;
    };
    let font = if r.h >= 20 {
        &FONT_10X20
    } else {
        &FONT_7X13_BOLD
    };
    let w = (mono_width(font, word) + 6).min(u32::from(r.w));
    let w16 = u16::try_from(w).unwrap_or(r.w);
    let tag = Rect::new(r.x + r.w - w16, r.y, w16, r.h);
    fill(fb, tag, accent);
    let mut clipped = fb.clipped(&rectangle(tag));
    let style = MonoTextStyle::new(font, LabelColor::White);
    let center = Point::new(
        i32::from(tag.x) + i32::from(tag.w) / 2,
        i32::from(tag.y) + i32::from(tag.h) / 2,
    );
    let text_style = embedded_graphics::text::TextStyleBuilder::new()
        .alignment(embedded_graphics::text::Alignment::Center)
        .baseline(Baseline::Middle)
        .build();
    let Ok(_) = Text::with_text_style(word, center, style, text_style).draw(&mut clipped);
}
