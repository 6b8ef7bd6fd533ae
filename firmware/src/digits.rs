//! The firmware's own price font: digits, separators and currency symbols drawn as strokes, so
//! one small table serves every size from a 12-pixel unit price to 120-pixel price digits, with
//! no bitmap per size in flash.
//!
//! Glyphs are centre lines in a box 100 units tall; digits are 60 units wide (tabular, so prices
//! line up). A glyph of height `h` is scaled so its ink, stroke included, fits `h` pixels.
//! Integer arithmetic only (angles are handed to embedded-graphics as degrees).
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{Arc, Circle, Ellipse, Line, PrimitiveStyle};

use crate::LabelColor;

#[derive(Clone, Copy, Debug)]
enum Stroke {
    /// From (x1, y1) to (x2, y2).
    Line(i32, i32, i32, i32),
    /// Centre, radius, start angle and sweep in degrees (0 = 3 o'clock, clockwise on screen).
    Arc(i32, i32, i32, i32, i32),
    /// Centre and radius.
    Circle(i32, i32, i32),
    /// Top left, width, height.
    Ellipse(i32, i32, i32, i32),
    /// A filled dot at the centre, a little wider than the stroke.
    Dot(i32, i32),
}

use Stroke::{Arc as A, Circle as C, Dot as D, Ellipse as E, Line as L};

struct Glyph {
    /// Width of the centre-line box in units.
    width: i32,
    strokes: &'static [Stroke],
}

const DIGIT: i32 = 60;

fn glyph(c: char) -> Option<Glyph> {
    let (width, strokes): (i32, &'static [Stroke]) = match c {
        '0' => (DIGIT, &[E(0, 0, 60, 100)]),
        '1' => (DIGIT, &[L(34, 0, 34, 100), L(34, 0, 12, 20)]),
        '2' => (
            DIGIT,
            &[
                A(30, 28, 28, 185, 215),
                L(52, 46, 0, 100),
                L(0, 100, 60, 100),
            ],
        ),
        '3' => (
            DIGIT,
            &[L(4, 0, 58, 0), L(58, 0, 28, 40), A(30, 70, 30, 262, 233)],
        ),
        '4' => (
            DIGIT,
            &[L(44, 0, 0, 70), L(0, 70, 60, 70), L(44, 0, 44, 100)],
        ),
        '5' => (
            DIGIT,
            &[L(56, 0, 6, 0), L(6, 0, 4, 50), A(30, 69, 30, 218, 277)],
        ),
        '6' => (DIGIT, &[C(30, 70, 30), L(50, 0, 2, 62)]),
        '7' => (DIGIT, &[L(0, 0, 60, 0), L(60, 0, 18, 100)]),
        '8' => (DIGIT, &[C(30, 23, 23), C(30, 73, 27)]),
        '9' => (DIGIT, &[C(30, 30, 30), L(58, 38, 10, 100)]),
        '.' => (16, &[D(8, 94)]),
        ',' => (18, &[D(10, 92), L(12, 94, 4, 108)]),
        '-' => (36, &[L(2, 58, 34, 58)]),
        '/' => (40, &[L(40, 0, 0, 100)]),
        '€' => (
            80,
            &[A(46, 50, 36, 45, 270), L(0, 42, 52, 42), L(0, 58, 52, 58)],
        ),
        '$' => (
            DIGIT,
            &[
                A(30, 31, 19, 90, 240),
                A(30, 69, 19, 270, 240),
                L(30, 0, 30, 100),
            ],
        ),
        '£' => (
            DIGIT,
            &[
                A(38, 24, 20, 180, 175),
                L(18, 24, 18, 82),
                L(18, 82, 4, 100),
                L(4, 100, 60, 100),
                L(2, 56, 40, 56),
            ],
        ),
        '¥' => (
            DIGIT,
            &[
                L(0, 0, 30, 48),
                L(60, 0, 30, 48),
                L(30, 48, 30, 100),
                L(8, 60, 52, 60),
                L(8, 80, 52, 80),
            ],
        ),
        _ => return None,
    };
    Some(Glyph { width, strokes })
}

/// Price digits of one size and colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digits {
    height: u32,
    stroke: u32,
    color: LabelColor,
}

impl Digits {
    /// Digits `height` pixels tall (at least 5), with a stroke of about an eighth of that.
    pub fn new(height: u32, color: LabelColor) -> Self {
        let height = height.max(5);
        Digits {
            height,
            stroke: (height / 8).max(2),
            color,
        }
    }

    /// A lighter or bolder stroke, in pixels (at least 1, at most a quarter of the height).
    #[must_use]
    pub fn with_stroke(mut self, stroke: u32) -> Self {
        self.stroke = stroke.clamp(1, (self.height / 4).max(1));
        self
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    pub fn stroke(&self) -> u32 {
        self.stroke
    }

    /// Whether `c` has a glyph (others are skipped).
    pub fn supports(c: char) -> bool {
        glyph(c).is_some()
    }

    /// Pixels per 100 units, as a ratio: (numerator, denominator).
    fn scale(&self) -> (i32, i32) {
        (
            i32::try_from(self.height - self.stroke).unwrap_or(i32::MAX),
            100,
        )
    }

    fn units(&self, u: i32) -> i32 {
        let (n, d) = self.scale();
        u * n / d
    }

    fn gap(&self) -> u32 {
        (self.height / 8).max(2)
    }

    fn glyph_width(&self, g: &Glyph) -> u32 {
        u32::try_from(self.units(g.width)).unwrap_or(0) + self.stroke
    }

    /// Width of `text` in pixels.
    pub fn width(&self, text: &str) -> u32 {
        let mut w = 0;
        let mut n: u32 = 0;
        for g in text.chars().filter_map(glyph) {
            w += self.glyph_width(&g);
            n += 1;
        }
        w + self.gap() * n.max(1).saturating_sub(1)
    }

    /// Draws `text` with its top left at `at`; returns where the next glyph would start.
    pub fn draw<T: DrawTarget<Color = LabelColor>>(
        &self,
        text: &str,
        at: Point,
        target: &mut T,
    ) -> Result<Point, T::Error> {
        let mut x = at.x;
        let mut first = true;
        for g in text.chars().filter_map(glyph) {
            if !first {
                x += i32::try_from(self.gap()).unwrap_or(0);
            }
            first = false;
            self.draw_glyph(&g, Point::new(x, at.y), target)?;
            x += i32::try_from(self.glyph_width(&g)).unwrap_or(0);
        }
        Ok(Point::new(x, at.y))
    }

    fn draw_glyph<T: DrawTarget<Color = LabelColor>>(
        &self,
        g: &Glyph,
        at: Point,
        target: &mut T,
    ) -> Result<(), T::Error> {
        let half = i32::try_from(self.stroke / 2).unwrap_or(0);
        let origin = at + Point::new(half, half);
        let p = |x: i32, y: i32| origin + Point::new(self.units(x), self.units(y));
        let style = PrimitiveStyle::with_stroke(self.color, self.stroke);
        for s in g.strokes {
            match *s {
                Stroke::Line(x1, y1, x2, y2) => {
                    Line::new(p(x1, y1), p(x2, y2))
                        .into_styled(style)
                        .draw(target)?;
                    // Round the ends so joints between strokes close.
                    self.dot(p(x1, y1), self.stroke, target)?;
                    self.dot(p(x2, y2), self.stroke, target)?;
                }
                Stroke::Arc(cx, cy, r, start, sweep) => {
                    let d = u32::try_from(self.units(2 * r)).unwrap_or(0);
                    Arc::with_center(p(cx, cy), d, (start as f32).deg(), (sweep as f32).deg())
                        .into_styled(style)
                        .draw(target)?;
                }
                Stroke::Circle(cx, cy, r) => {
                    let d = u32::try_from(self.units(2 * r)).unwrap_or(0);
                    Circle::with_center(p(cx, cy), d)
                        .into_styled(style)
                        .draw(target)?;
                }
                Stroke::Ellipse(x, y, w, h) => {
                    let size = Size::new(
                        u32::try_from(self.units(w)).unwrap_or(0),
                        u32::try_from(self.units(h)).unwrap_or(0),
                    );
                    Ellipse::new(p(x, y), size)
                        .into_styled(style)
                        .draw(target)?;
                }
                Stroke::Dot(cx, cy) => self.dot(p(cx, cy), self.stroke * 3 / 2 + 1, target)?,
            }
        }
        Ok(())
    }

    fn dot<T: DrawTarget<Color = LabelColor>>(
        &self,
        center: Point,
        diameter: u32,
        target: &mut T,
    ) -> Result<(), T::Error> {
        Circle::with_center(center, diameter)
            .into_styled(PrimitiveStyle::with_fill(self.color))
            .draw(target)
    }
}
