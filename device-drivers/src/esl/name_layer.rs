//! The static layer of a label: product name, brand, details and a badge, drawn at the gateway
//! into the panel's name box ([`LabelLayout::name`](aisle_protocol::esl::LabelLayout::name))
//! and encoded for the tag.
//!
//! ```text
//! ┌ name box ─────────────────────────────────┐
//! │ Product name, as large as fits, wrapped   │  largest size from the panel's range at which
//! │ over as many lines as fit                 │  the whole name fits; at the smallest size the
//! │ Brand · details                  [BADGE]  │  last line ends in "…" and `Fit` says so
//! └───────────────────────────────────────────┘
//! ```
//!
//! Lines break where Unicode allows it (UAX #14: between words, between CJK characters, never
//! before a closing bracket or full stop), and inside a word only when the word alone is wider
//! than the box. Control and bidi-override characters are dropped, runs of white space become
//! one space. Nothing is drawn outside the name box, whatever the text.
use ab_glyph::GlyphId;
use aisle_protocol::esl::{Ink, LayerCanvas, LayerError, LayerHash, Panel, Rect};
use unicode_linebreak::linebreaks;

use super::font::LabelFont;

/// At most this many characters of a field are laid out; anything longer does not fit any
/// label and only costs time. Cutting counts as truncation.
pub const MAX_FIELD_CHARS: usize = 200;

/// The marker that ends a name that does not fit.
pub const ELLIPSIS: char = '…';

/// What the gateway prints in a label's name box.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NameText<'a> {
    /// The product name: the largest text on the label after the price.
    pub name: &'a str,
    /// The brand, in bold on the small line under the name.
    pub brand: Option<&'a str>,
    /// Pack size, origin, variety: after the brand on the small line.
    pub details: Option<&'a str>,
    /// A short word in a box at the right of the small line ("BIO", "有机"), in red where the
    /// panel has red. Price-related words ("NEW", "CLEARANCE") are the tag's flags, not this.
    pub badge: Option<&'a str>,
}

/// How the text went into the box: what a technician or the agent's planner wants to know.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fit {
    /// Pixel height the name was drawn at.
    pub name_px: u16,
    /// Lines the name took.
    pub name_lines: u8,
    /// The name did not fit at the smallest size and ends in [`ELLIPSIS`].
    pub name_truncated: bool,
    /// The small line (brand, details, badge) was cut.
    pub small_truncated: bool,
    /// Characters the font has no glyph for (drawn as an empty box), at most 16, in order of
    /// first appearance.
    pub missing_glyphs: Vec<char>,
}

impl Fit {
    /// Whether anything the product data asked for is not on the label as given: the agent
    /// reports "name does not fit" (or "glyph missing").
    pub fn is_lossy(&self) -> bool {
        self.name_truncated || self.small_truncated || !self.missing_glyphs.is_empty()
    }
}

/// An encoded static layer, ready to send in chunks and to cache by its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameLayer {
    pub bytes: Vec<u8>,
    pub hash: LayerHash,
    pub fit: Fit,
}

/// Sizes per panel, in pixels.
#[derive(Clone, Copy, Debug)]
struct Metrics {
    pad_x: i32,
    pad_y: i32,
    name_max: u16,
    name_min: u16,
    small: u16,
    /// Between lines, and between the name and the small line.
    gap: i32,
}

const fn metrics(panel: Panel) -> Metrics {
    match panel {
        Panel::Bw290 | Panel::Bwr290 => Metrics {
            pad_x: 4,
            pad_y: 2,
            name_max: 30,
            name_min: 15,
            small: 15,
            gap: 1,
        },
        Panel::Bw420 | Panel::Bwr420 => Metrics {
            pad_x: 8,
            pad_y: 5,
            name_max: 46,
            name_min: 22,
            small: 24,
            gap: 2,
        },
    }
}

/// Draws static layers. Cheap to clone; the font is borrowed from the binary.
#[derive(Clone, Debug)]
pub struct NameRenderer {
    font: LabelFont,
}

impl NameRenderer {
    pub fn new(font: LabelFont) -> Self {
        NameRenderer { font }
    }

    pub fn font(&self) -> &LabelFont {
        &self.font
    }

    /// Draws `text` into a blank canvas for `panel`.
    pub fn render(&self, panel: Panel, text: &NameText<'_>) -> (LayerCanvas, Fit) {
        let mut canvas = LayerCanvas::new(panel);
        let fit = self.draw(&mut canvas, text);
        (canvas, fit)
    }

    /// [`render`](Self::render), then encodes the layer for the tag.
    pub fn render_layer(&self, panel: Panel, text: &NameText<'_>) -> Result<NameLayer, LayerError> {
        let (canvas, fit) = self.render(panel, text);
        let (bytes, hash) = canvas.encode()?;
        Ok(NameLayer { bytes, hash, fit })
    }

    fn draw(&self, canvas: &mut LayerCanvas, text: &NameText<'_>) -> Fit {
        let panel = canvas.panel();
        let m = metrics(panel);
        let bounds = panel.layout().name;
        let mut fit = Fit::default();
        let mut pen = Pen {
            canvas,
            clip: bounds,
            font: &self.font,
            missing: &mut fit.missing_glyphs,
        };

        let left = i32::from(bounds.x) + m.pad_x;
        let width = i32::from(bounds.w) - 2 * m.pad_x;
        let top = i32::from(bounds.y) + m.pad_y;
        let mut bottom = i32::from(bounds.y) + i32::from(bounds.h) - m.pad_y;

        let (brand, brand_cut) = self.prepare(text.brand.unwrap_or(""));
        let (details, details_cut) = self.prepare(text.details.unwrap_or(""));
        let (badge, badge_cut) = self.prepare(text.badge.unwrap_or(""));
        fit.small_truncated = brand_cut || details_cut || badge_cut;
        if !brand.is_empty() || !details.is_empty() || !badge.is_empty() {
            let px = f32::from(m.small);
            let line_top = bottom - i32::from(m.small);
            let cut = pen.small_line(&brand, &details, &badge, px, left, width, line_top);
            fit.small_truncated |= cut;
            bottom = line_top - m.gap * 2;
        }

        let (name, name_cut) = self.prepare(text.name);
        let block = (top, bottom);
        let (px, lines, truncated) = self.fit_name(&name, width, block, m);
        let line_h = i32::from(px) + m.gap;
        let used = line_h * i32::try_from(lines.len()).unwrap_or(1) - m.gap;
        // Centre the name in its space: a one-line name sits in the middle, not at the top.
        let mut y = top + (bottom - top - used).max(0) / 2;
        for line in &lines {
            pen.text(line, f32::from(px), left, y, Ink::Black, false);
            y += line_h;
        }
        fit.name_px = px;
        fit.name_lines = u8::try_from(lines.len()).unwrap_or(u8::MAX);
        fit.name_truncated = truncated || name_cut;
        fit
    }

    /// Cleans a field: control and format characters dropped, white space collapsed, at most
    /// [`MAX_FIELD_CHARS`]. Returns the text and whether it was cut.
    fn prepare(&self, raw: &str) -> (Vec<char>, bool) {
        let mut out: Vec<char> = Vec::new();
        let mut cut = false;
        for c in raw.chars() {
            let c = if c.is_whitespace() { ' ' } else { c };
            if c.is_control() || is_format(c) || (c == ' ' && out.last().is_none_or(|l| *l == ' '))
            {
                continue;
            }
            if out.len() == MAX_FIELD_CHARS {
                cut = true;
                break;
            }
            out.push(c);
        }
        while out.last() == Some(&' ') {
            out.pop();
        }
        (out, cut)
    }

    /// The largest size from the panel's range at which the whole name fits `width` and the
    /// block; at the smallest size, as much as fits with [`ELLIPSIS`] at the end.
    fn fit_name(
        &self,
        name: &[char],
        width: i32,
        (top, bottom): (i32, i32),
        m: Metrics,
    ) -> (u16, Vec<Vec<char>>, bool) {
        let room = bottom - top;
        let max = u16::try_from(room.clamp(1, i32::from(m.name_max))).unwrap_or(m.name_max);
        let min = m.name_min.min(max);
        let advances = self.advances(name);
        for px in (min..=max).rev() {
            let lines_room = ((room + m.gap) / (i32::from(px) + m.gap)).max(1);
            let lines = wrap(name, &advances, self.font.scale(f32::from(px)), width);
            if i32::try_from(lines.len()).unwrap_or(i32::MAX) <= lines_room {
                return (
                    px,
                    lines.iter().map(|r| name[r.clone()].to_vec()).collect(),
                    false,
                );
            }
        }
        let lines_room =
            usize::try_from(((room + m.gap) / (i32::from(min) + m.gap)).max(1)).unwrap_or(1);
        let scale = self.font.scale(f32::from(min));
        let ranges = wrap(name, &advances, scale, width);
        let mut lines: Vec<Vec<char>> = ranges
            .iter()
            .take(lines_room)
            .map(|r| name[r.clone()].to_vec())
            .collect();
        // The last line runs on with the rest of the name and ends in the marker.
        let last_start = ranges.get(lines_room - 1).map_or(name.len(), |r| r.start);
        let rest = &name[last_start..];
        let ellipsis = self.font.glyph(ELLIPSIS).1 * scale;
        let mut end = 0;
        let mut w = 0.0;
        for (i, c) in rest.iter().enumerate() {
            w += self.font.glyph(*c).1 * scale;
            if w + ellipsis > width as f32 {
                break;
            }
            end = i + 1;
        }
        // Cut at a space when that keeps most of the line: "cold pressed…", not "unfiltere…".
        let kept = |n: usize| rest[..n].iter().map(|c| self.font.glyph(*c).1).sum::<f32>();
        if let Some(space) = rest[..end].iter().rposition(|c| *c == ' ')
            && kept(space) >= 0.6 * kept(end)
        {
            end = space;
        }
        let mut last: Vec<char> = rest[..end].to_vec();
        while last.last() == Some(&' ') {
            last.pop();
        }
        last.push(ELLIPSIS);
        if let Some(slot) = lines.last_mut() {
            *slot = last;
        }
        (min, lines, true)
    }

    fn advances(&self, text: &[char]) -> Vec<f32> {
        text.iter().map(|c| self.font.glyph(*c).1).collect()
    }
}

/// Greedy line breaking at UAX #14 opportunities; a word wider than the line is broken between
/// characters. Returns ranges of `text`, trailing spaces excluded.
fn wrap(text: &[char], advances: &[f32], scale: f32, width: i32) -> Vec<core::ops::Range<usize>> {
    let width = width as f32;
    let s: String = text.iter().collect();
    // Byte offsets of break opportunities to char offsets.
    let mut char_at = Vec::with_capacity(s.len() + 1);
    for (i, c) in text.iter().enumerate() {
        char_at.extend(std::iter::repeat_n(i, c.len_utf8()));
    }
    char_at.push(text.len());
    let breaks: Vec<usize> = linebreaks(&s).map(|(b, _)| char_at[b]).collect();

    let w = |r: core::ops::Range<usize>| -> f32 {
        let end = trim_end(text, r.start, r.end);
        advances[r.start..end].iter().sum::<f32>() * scale
    };
    let mut lines = Vec::new();
    let mut start = 0;
    let mut end = 0;
    for &b in &breaks {
        if w(start..b) <= width {
            end = b;
            continue;
        }
        if end > start {
            lines.push(start..trim_end(text, start, end));
            start = end;
        }
        if w(start..b) <= width {
            end = b;
            continue;
        }
        // One segment wider than the line: break it between characters.
        let mut at = start;
        let mut acc = 0.0;
        for (i, advance) in advances.iter().enumerate().take(b).skip(start) {
            let a = advance * scale;
            if acc + a > width && i > at {
                lines.push(at..i);
                at = i;
                acc = 0.0;
            }
            acc += a;
        }
        start = at;
        end = b;
    }
    if end > start {
        lines.push(start..trim_end(text, start, end));
    }
    lines
}

fn trim_end(text: &[char], start: usize, mut end: usize) -> usize {
    while end > start && text[end - 1] == ' ' {
        end -= 1;
    }
    end
}

/// Zero-width and bidi control characters: invisible, and an override could reorder a label.
fn is_format(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// Draws text on the canvas, clipped to the name box.
struct Pen<'a> {
    canvas: &'a mut LayerCanvas,
    clip: Rect,
    font: &'a LabelFont,
    missing: &'a mut Vec<char>,
}

impl Pen<'_> {
    fn set(&mut self, x: i32, y: i32, ink: Ink) {
        if let (Ok(x), Ok(y)) = (u16::try_from(x), u16::try_from(y))
            && self.clip.contains(x, y)
        {
            self.canvas.set(x, y, ink);
        }
    }

    fn fill(&mut self, x: i32, y: i32, w: i32, h: i32, ink: Ink) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, ink);
            }
        }
    }

    /// Width of `text` at `px`; bold text is one pixel wider per glyph.
    fn width(&self, text: &[char], px: f32, bold: bool) -> i32 {
        let scale = self.font.scale(px);
        let mut x = 0.0f32;
        for c in text {
            x += self.font.glyph(*c).1 * scale + if bold { 1.0 } else { 0.0 };
        }
        x.ceil() as i32
    }

    /// Draws one line with its top at `top`; returns the pen's x after it.
    fn text(&mut self, text: &[char], px: f32, left: i32, top: i32, ink: Ink, bold: bool) -> i32 {
        let scale = self.font.scale(px);
        let baseline = top + self.font.ascent(px).round() as i32;
        let mut x = left as f32;
        for &c in text {
            let (id, advance) = self.font.glyph(c);
            let origin = x.round() as i32;
            let advance = advance * scale;
            if id == GlyphId(0) && c != ' ' {
                if !self.missing.contains(&c) && self.missing.len() < 16 {
                    self.missing.push(c);
                }
                self.tofu(origin, top, advance, px, ink);
            } else {
                // Small ideographs have no room for a doubled stroke: it fills their counters.
                let embolden = bold && (px >= 20.0 || advance < 0.8 * px);
                let font = self.font;
                font.draw(id, px, origin, baseline, |gx, gy| {
                    self.set(gx, gy, ink);
                    if embolden {
                        self.set(gx + 1, gy, ink);
                    }
                });
            }
            x += advance + if bold { 1.0 } else { 0.0 };
        }
        x.ceil() as i32
    }

    /// An empty box where a glyph is missing, so the gap is visible and not mistaken for a
    /// space.
    fn tofu(&mut self, x: i32, top: i32, advance: f32, px: f32, ink: Ink) {
        let w = (advance as i32 - 2).max(3);
        let h = (px * 0.7) as i32;
        let y = top + (px * 0.15) as i32;
        self.fill(x + 1, y, w, 1, ink);
        self.fill(x + 1, y + h - 1, w, 1, ink);
        self.fill(x + 1, y, 1, h, ink);
        self.fill(x + w, y, 1, h, ink);
    }

    /// The small line: brand in bold, details, badge boxed at the right. Returns whether
    /// anything was cut.
    #[allow(clippy::too_many_arguments)]
    fn small_line(
        &mut self,
        brand: &[char],
        details: &[char],
        badge: &[char],
        px: f32,
        left: i32,
        width: i32,
        top: i32,
    ) -> bool {
        let mut cut = false;
        let mut room = width;
        if !badge.is_empty() {
            let pad = (px / 4.0).ceil() as i32;
            let (badge, badge_cut) = self.ellipsised(badge, px, true, width / 2 - 2 * pad);
            cut |= badge_cut;
            let w = self.width(&badge, px, true) + 2 * pad;
            let x = left + width - w;
            let accent = if self.canvas.panel().has_red() {
                Ink::Red
            } else {
                Ink::Black
            };
            self.fill(x, top - 1, w, px as i32 + 2, accent);
            self.text(&badge, px, x + pad, top, Ink::White, true);
            room = width - w - pad * 2;
        }
        let mut x = left;
        if !brand.is_empty() {
            let (brand, brand_cut) = self.ellipsised(brand, px, true, room);
            cut |= brand_cut;
            x = self.text(&brand, px, x, top, Ink::Black, true);
        }
        if !details.is_empty() {
            let sep: Vec<char> = if brand.is_empty() {
                Vec::new()
            } else {
                " · ".chars().collect()
            };
            let sep_w = self.width(&sep, px, false);
            let left_room = room - (x - left) - sep_w;
            if left_room > self.width(&[ELLIPSIS, ELLIPSIS], px, false) {
                x = self.text(&sep, px, x, top, Ink::Black, false);
                let (details, details_cut) = self.ellipsised(details, px, false, left_room);
                cut |= details_cut;
                self.text(&details, px, x, top, Ink::Black, false);
            } else {
                cut = true;
            }
        }
        cut
    }

    /// `text`, or as much of it as fits `room` followed by [`ELLIPSIS`].
    fn ellipsised(&self, text: &[char], px: f32, bold: bool, room: i32) -> (Vec<char>, bool) {
        if self.width(text, px, bold) <= room {
            return (text.to_vec(), false);
        }
        let mut out: Vec<char> = Vec::with_capacity(text.len());
        for c in text {
            out.push(*c);
            out.push(ELLIPSIS);
            let fits = self.width(&out, px, bold) <= room;
            out.pop();
            if !fits {
                out.pop();
                break;
            }
        }
        while out.last() == Some(&' ') {
            out.pop();
        }
        out.push(ELLIPSIS);
        (out, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renderer() -> NameRenderer {
        NameRenderer::new(LabelFont::embedded().expect("font"))
    }

    fn text(name: &str) -> NameText<'_> {
        NameText {
            name,
            ..NameText::default()
        }
    }

    /// Every inked pixel lies in the name box.
    fn ink_outside_name_box(canvas: &LayerCanvas) -> usize {
        let panel = canvas.panel();
        let (w, h) = panel.size();
        let name = panel.layout().name;
        let mut n = 0;
        for y in 0..h {
            for x in 0..w {
                if canvas.get(x, y) != Ink::White && !name.contains(x, y) {
                    n += 1;
                }
            }
        }
        n
    }

    fn check(panel: Panel, t: NameText<'_>, px: u16, lines: u8, truncated: bool) {
        let (canvas, fit) = renderer().render(panel, &t);
        assert_eq!(
            (fit.name_px, fit.name_lines, fit.name_truncated),
            (px, lines, truncated),
            "{panel:?} {:?}: {fit:?}",
            t.name
        );
        assert_eq!(ink_outside_name_box(&canvas), 0);
    }

    #[test]
    fn names_take_the_largest_size_that_fits_and_wrap_before_shrinking_below_it() {
        check(Panel::Bw290, text("Milk"), 30, 1, false);
        check(Panel::Bw290, text("有机香蕉"), 30, 1, false);
        check(
            Panel::Bw290,
            text("Organic Fairtrade Bananas from Ecuador"),
            21,
            2,
            false,
        );
        check(
            Panel::Bw290,
            text("农夫山泉 饮用天然水 550毫升 整箱24瓶装 家庭分享量贩装"),
            21,
            2,
            false,
        );
        check(Panel::Bwr420, text("Parmigiano Reggiano"), 46, 1, false);
    }

    #[test]
    fn a_name_too_long_for_the_smallest_size_ends_in_the_marker_and_says_so() {
        let long = "Extra Virgin Olive Oil, cold pressed, unfiltered, from hand-picked Koroneiki \
                    olives grown on the terraces of the Messinian hills, bottled at the estate";
        let (canvas, fit) = renderer().render(Panel::Bw290, &text(long));
        assert!(fit.name_truncated && fit.is_lossy(), "{fit:?}");
        assert_eq!(fit.name_px, 15);
        assert_eq!(ink_outside_name_box(&canvas), 0);
    }

    #[test]
    fn one_word_wider_than_the_label_is_broken_between_characters() {
        let word = "Donaudampfschifffahrtsgesellschaftskapitänsmütze";
        let (canvas, fit) = renderer().render(Panel::Bw290, &text(word));
        assert!(fit.name_lines >= 2 && !fit.name_truncated, "{fit:?}");
        assert_eq!(ink_outside_name_box(&canvas), 0);
    }

    #[test]
    fn the_small_line_is_cut_with_the_marker_and_reported() {
        let t = NameText {
            name: "Tea",
            brand: Some("The Very Long Brand Name Company of Tea Importers"),
            details: Some("Assam, second flush, 500 g loose leaf"),
            badge: Some("BIO"),
        };
        let (canvas, fit) = renderer().render(Panel::Bwr290, &t);
        assert!(fit.small_truncated && !fit.name_truncated, "{fit:?}");
        assert_eq!(ink_outside_name_box(&canvas), 0);
        // The badge is red on a red panel.
        let name = Panel::Bwr290.layout().name;
        let red = (name.y..name.y + name.h)
            .flat_map(|y| (name.x..name.x + name.w).map(move |x| (x, y)))
            .filter(|(x, y)| canvas.get(*x, *y) == Ink::Red)
            .count();
        assert!(red > 100, "{red} red pixels");
    }

    #[test]
    fn missing_glyphs_are_reported_and_drawn_as_boxes() {
        let (_, fit) = renderer().render(Panel::Bw290, &text("Banana 🍌 𠀀"));
        assert_eq!(fit.missing_glyphs, vec!['🍌', '\u{20000}']);
        assert!(fit.is_lossy());
    }

    #[test]
    fn hostile_text_draws_nothing_outside_the_box_and_never_panics() {
        let cases = [
            String::new(),
            " \t\n\r ".into(),
            "\u{202E}evil\u{202C}\u{200B}\u{0007}".into(),
            "W".repeat(10_000),
            "中".repeat(10_000),
            "a ".repeat(5_000),
            "\u{0301}\u{0301}\u{0301}".into(),
        ];
        for name in &cases {
            for panel in Panel::ALL {
                let t = NameText {
                    name,
                    brand: Some(name),
                    details: Some(name),
                    badge: Some(name),
                };
                let (canvas, _) = renderer().render(panel, &t);
                assert_eq!(ink_outside_name_box(&canvas), 0, "{panel:?}");
            }
        }
        let (_, fit) = renderer().render(Panel::Bw290, &text("\u{202E}evil\u{202C}"));
        assert!(!fit.is_lossy(), "{fit:?}");
    }

    #[test]
    fn the_same_text_gives_the_same_layer() {
        let t = text("有机香蕉 Organic Bananas");
        let a = renderer().render_layer(Panel::Bwr290, &t).expect("layer");
        let b = renderer().render_layer(Panel::Bwr290, &t).expect("layer");
        assert_eq!(a.hash, b.hash);
        assert_ne!(
            a.hash,
            renderer()
                .render_layer(Panel::Bw290, &t)
                .expect("layer")
                .hash
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Any text, any panel: the renderer returns, and every pixel it inks is in the name box.
        #[test]
        fn any_text_stays_in_the_name_box(
            name in "\\PC{0,80}",
            brand in proptest::option::of("\\PC{0,30}"),
            badge in proptest::option::of("[A-Z有机]{0,12}"),
            panel in proptest::sample::select(Panel::ALL.to_vec()),
        ) {
            let renderer = NameRenderer::new(LabelFont::embedded().expect("font"));
            let t = NameText { name: &name, brand: brand.as_deref(), details: brand.as_deref(), badge: badge.as_deref() };
            let (canvas, fit) = renderer.render(panel, &t);
            let (w, h) = panel.size();
            let bounds = panel.layout().name;
            for y in 0..h {
                for x in 0..w {
                    prop_assert!(canvas.get(x, y) == Ink::White || bounds.contains(x, y));
                }
            }
            prop_assert!(fit.name_px >= 1 && fit.missing_glyphs.len() <= 16);
        }
    }
}
