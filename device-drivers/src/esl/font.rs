//! The font the gateway draws static layers with, and the few metrics the layout needs.
//!
//! The embedded face is WenQuanYi Micro Hei (Apache-2.0), subset to what shelf labels print:
//! Latin, Greek, Cyrillic, punctuation and symbols, every CJK Unified Ideograph (U+4E00-9FFF,
//! so all GBK and Big5 hanzi), kana, Hangul, full-width forms. 3.6 MB, hinting dropped. See
//! `device-drivers/fonts/README.md` for provenance and the exact subsetting command.
//!
//! Outlines are rasterised with `ab_glyph` (pure Rust, parses glyphs lazily, so opening the
//! face costs nothing and only the glyphs drawn are touched) and thresholded to one bit: an
//! e-paper pixel is ink or not.
use ab_glyph::{Font, FontRef, GlyphId, PxScale, ScaleFont, point};

/// The embedded face.
static EMBEDDED: &[u8] = include_bytes!("../../fonts/wqy-microhei-subset.ttf");

/// A pixel is ink when the outline covers at least this much of it. Slightly under half, so
/// thin strokes of small CJK glyphs do not break up.
const COVERAGE: f32 = 0.42;

/// The font file does not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the font is not a valid TrueType/OpenType face")]
pub struct FontError;

/// A face to draw label text with.
#[derive(Clone, Debug)]
pub struct LabelFont {
    face: FontRef<'static>,
}

impl LabelFont {
    /// The embedded WenQuanYi Micro Hei subset.
    pub fn embedded() -> Result<Self, FontError> {
        Self::from_static(EMBEDDED)
    }

    /// Another face (a store that prints in a script the embedded one lacks).
    pub fn from_static(bytes: &'static [u8]) -> Result<Self, FontError> {
        let face = FontRef::try_from_slice(bytes).map_err(|_| FontError)?;
        Ok(LabelFont { face })
    }

    /// Whether the face has a glyph for `c`.
    pub fn covers(&self, c: char) -> bool {
        self.face.glyph_id(c) != GlyphId(0)
    }

    /// The glyph for `c` and its advance in font units (the `.notdef` box for a missing one).
    pub(crate) fn glyph(&self, c: char) -> (GlyphId, f32) {
        let id = self.face.glyph_id(c);
        (id, self.face.h_advance_unscaled(id))
    }

    /// Pixels per font unit at pixel height `px` (ascent to descent).
    pub(crate) fn scale(&self, px: f32) -> f32 {
        self.face.as_scaled(PxScale::from(px)).h_scale_factor()
    }

    /// Ascent at pixel height `px`, in pixels.
    pub(crate) fn ascent(&self, px: f32) -> f32 {
        self.face.as_scaled(PxScale::from(px)).ascent()
    }

    /// Rasterises glyph `id` at height `px` with its origin (left end of the baseline) at
    /// `(x, baseline)`; calls `ink` for every pixel it covers. Returns false for a glyph with
    /// no outline (a space, or a missing glyph whose `.notdef` is empty).
    pub(crate) fn draw(
        &self,
        id: GlyphId,
        px: f32,
        x: i32,
        baseline: i32,
        mut ink: impl FnMut(i32, i32),
    ) -> bool {
        let glyph = id.with_scale_and_position(PxScale::from(px), point(x as f32, baseline as f32));
        let Some(outlined) = self.face.outline_glyph(glyph) else {
            return false;
        };
        let bounds = outlined.px_bounds();
        // Whole pixels: the glyph sits at an integer position.
        let (x0, y0) = (bounds.min.x as i32, bounds.min.y as i32);
        outlined.draw(|gx, gy, coverage| {
            if coverage >= COVERAGE {
                let (Ok(gx), Ok(gy)) = (i32::try_from(gx), i32::try_from(gy)) else {
                    return;
                };
                ink(x0 + gx, y0 + gy);
            }
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_face_covers_what_labels_print() {
        let font = LabelFont::embedded().expect("embedded font");
        for c in "Organic Bananas Crème brûlée 有机香蕉 農夫山泉 おにぎり 김치 Ωμέγα Молоко €£¥…·"
            .chars()
        {
            assert!(c == ' ' || font.covers(c), "{c:?} ({:04X})", c as u32);
        }
        // Outside the subset: an emoji and an Extension B ideograph.
        assert!(!font.covers('🍌'));
        assert!(!font.covers('\u{20000}'));
    }
}
