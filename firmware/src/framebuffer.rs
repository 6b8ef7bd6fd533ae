//! The frame buffer: the panel's memory image, drawn on in label coordinates.
//!
//! Planes are in the panel's native layout ([`Panel::locate`]) with 1 = ink, the same layout as
//! a static layer, so a layer decompresses straight into it. The black plane's polarity is
//! flipped on the way to the controller (whose black RAM has 0 = black), not here.
use core::convert::Infallible;

use aisle_protocol::esl::{Ink, Panel};
use embedded_graphics::Pixel;
use embedded_graphics::pixelcolor::PixelColor;
use embedded_graphics::prelude::{DrawTarget, OriginDimensions, Size};

/// A colour on a label. Red on a black/white panel is drawn black.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LabelColor {
    White,
    Black,
    Red,
}

impl PixelColor for LabelColor {
    type Raw = ();
}

impl From<Ink> for LabelColor {
    fn from(ink: Ink) -> Self {
        match ink {
            Ink::White => LabelColor::White,
            Ink::Black => LabelColor::Black,
            Ink::Red => LabelColor::Red,
        }
    }
}

impl From<LabelColor> for Ink {
    fn from(c: LabelColor) -> Self {
        match c {
            LabelColor::White => Ink::White,
            LabelColor::Black => Ink::Black,
            LabelColor::Red => Ink::Red,
        }
    }
}

/// The buffer handed to [`FrameBuffer::new`] is not [`Panel::frame_bytes`] long.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a {panel:?} frame buffer needs {needed} bytes, got {got}")]
pub struct BufferSize {
    pub panel: Panel,
    pub needed: usize,
    pub got: usize,
}

/// A frame buffer over caller-provided storage (a static array on a tag, a `Vec` in a test).
#[derive(Clone, Debug)]
pub struct FrameBuffer<S> {
    panel: Panel,
    buf: S,
}

impl<S: AsRef<[u8]> + AsMut<[u8]>> FrameBuffer<S> {
    /// Wraps `buf` (exactly [`Panel::frame_bytes`] long: black plane, then red) and clears it.
    pub fn new(panel: Panel, buf: S) -> Result<Self, BufferSize> {
        let got = buf.as_ref().len();
        if got != panel.frame_bytes() {
            return Err(BufferSize {
                panel,
                needed: panel.frame_bytes(),
                got,
            });
        }
        let mut fb = FrameBuffer { panel, buf };
        fb.clear();
        Ok(fb)
    }

    pub fn panel(&self) -> Panel {
        self.panel
    }

    /// All white.
    pub fn clear(&mut self) {
        self.buf.as_mut().fill(0);
    }

    /// The black plane, native layout, 1 = black.
    pub fn black(&self) -> &[u8] {
        &self.buf.as_ref()[..self.panel.plane_bytes()]
    }

    /// The red plane on a black/white/red panel, native layout, 1 = red.
    pub fn red(&self) -> Option<&[u8]> {
        self.panel
            .has_red()
            .then(|| &self.buf.as_ref()[self.panel.plane_bytes()..])
    }

    /// Both planes, to decompress a layer into.
    pub fn planes_mut(&mut self) -> (&mut [u8], Option<&mut [u8]>) {
        let n = self.panel.plane_bytes();
        let has_red = self.panel.has_red();
        let (black, red) = self.buf.as_mut().split_at_mut(n);
        (black, has_red.then_some(red))
    }

    /// The colour at label pixel (x, y); white off the label.
    pub fn pixel(&self, x: u16, y: u16) -> LabelColor {
        let Some((i, mask)) = self.panel.locate(x, y) else {
            return LabelColor::White;
        };
        if self.red().is_some_and(|r| r[i] & mask != 0) {
            LabelColor::Red
        } else if self.black()[i] & mask != 0 {
            LabelColor::Black
        } else {
            LabelColor::White
        }
    }

    /// Sets label pixel (x, y); off-label pixels are ignored.
    pub fn set_pixel(&mut self, x: u16, y: u16, color: LabelColor) {
        let Some((i, mask)) = self.panel.locate(x, y) else {
            return;
        };
        let has_red = self.panel.has_red();
        let (black, red) = match (color, has_red) {
            (LabelColor::White, _) => (false, false),
            (LabelColor::Black, _) | (LabelColor::Red, false) => (true, false),
            (LabelColor::Red, true) => (false, true),
        };
        let (bp, rp) = self.planes_mut();
        set_bit(&mut bp[i], mask, black);
        if let Some(rp) = rp {
            set_bit(&mut rp[i], mask, red);
        }
    }
}

fn set_bit(byte: &mut u8, mask: u8, on: bool) {
    if on {
        *byte |= mask;
    } else {
        *byte &= !mask;
    }
}

impl<S: AsRef<[u8]> + AsMut<[u8]>> OriginDimensions for FrameBuffer<S> {
    fn size(&self) -> Size {
        let (w, h) = self.panel.size();
        Size::new(u32::from(w), u32::from(h))
    }
}

impl<S: AsRef<[u8]> + AsMut<[u8]>> DrawTarget for FrameBuffer<S> {
    type Color = LabelColor;
    type Error = Infallible;

    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Infallible>
    where
        I: IntoIterator<Item = Pixel<LabelColor>>,
    {
        for Pixel(p, color) in pixels {
            if let (Ok(x), Ok(y)) = (u16::try_from(p.x), u16::try_from(p.y)) {
                self.set_pixel(x, y, color);
            }
        }
        Ok(())
    }
}
