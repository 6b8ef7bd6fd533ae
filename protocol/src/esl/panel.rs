//! Panels a tag may carry, their memory layout, and where the tag draws its dynamic fields.
//!
//! Two coordinate systems meet here. *Label* coordinates are what a shopper sees: landscape,
//! origin top left (296 x 128 on a 2.9" tag). *Native* coordinates are the controller's memory:
//! rows of `native_width` pixels packed MSB first, one bit per pixel per plane. A 2.9" SSD1680
//! panel is 128 sources wide and 296 gates tall, so its label image is rotated by 90 degrees; a
//! 4.2" SSD1683 panel is 400 x 300 in both. Static layers travel in native layout so the tag can
//! decompress them straight into its frame buffer.
use serde::{Deserialize, Serialize};

/// The e-paper panels a tag may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Panel {
    /// 2.9", 296 x 128, black/white (SSD1680).
    Bw290,
    /// 2.9", 296 x 128, black/white/red (SSD1680).
    Bwr290,
    /// 4.2", 400 x 300, black/white (SSD1683).
    Bw420,
    /// 4.2", 400 x 300, black/white/red (SSD1683).
    Bwr420,
}

impl Panel {
    /// Every panel, for tests and tables.
    pub const ALL: [Panel; 4] = [Panel::Bw290, Panel::Bwr290, Panel::Bw420, Panel::Bwr420];

    /// Width and height of the label as a shopper sees it (landscape).
    pub const fn size(self) -> (u16, u16) {
        match self {
            Panel::Bw290 | Panel::Bwr290 => (296, 128),
            Panel::Bw420 | Panel::Bwr420 => (400, 300),
        }
    }

    /// Width (sources) and height (gate lines) of the controller's memory.
    pub const fn native_size(self) -> (u16, u16) {
        match self {
            Panel::Bw290 | Panel::Bwr290 => (128, 296),
            Panel::Bw420 | Panel::Bwr420 => (400, 300),
        }
    }

    /// Whether label coordinates are rotated by 90 degrees against native ones.
    pub const fn rotated(self) -> bool {
        matches!(self, Panel::Bw290 | Panel::Bwr290)
    }

    /// Whether the panel has a red plane.
    pub const fn has_red(self) -> bool {
        matches!(self, Panel::Bwr290 | Panel::Bwr420)
    }

    /// Colour planes: 1 for black/white, 2 for black/white/red.
    pub const fn planes(self) -> u8 {
        if self.has_red() { 2 } else { 1 }
    }

    /// Bytes of one native row.
    pub const fn stride(self) -> usize {
        (self.native_size().0 as usize).div_ceil(8)
    }

    /// Bytes of one plane (1 bit per pixel, rows padded to whole bytes).
    pub const fn plane_bytes(self) -> usize {
        self.stride() * self.native_size().1 as usize
    }

    /// Bytes of one full frame buffer, all planes.
    pub const fn frame_bytes(self) -> usize {
        self.plane_bytes() * self.planes() as usize
    }

    /// Where label pixel (x, y) lives in a plane: byte index and bit mask. `None` off the label.
    ///
    /// The rotation is the usual one for a 2.9" panel mounted in landscape: label x runs along
    /// the gate lines, label y runs against the sources.
    pub const fn locate(self, x: u16, y: u16) -> Option<(usize, u8)> {
        let (w, h) = self.size();
        if x >= w || y >= h {
            return None;
        }
        let (col, row) = if self.rotated() {
            (self.native_size().0 - 1 - y, x)
        } else {
            (x, y)
        };
        let index = row as usize * self.stride() + col as usize / 8;
        Some((index, 0x80 >> (col % 8)))
    }

    /// Where the tag draws its dynamic fields on this panel (label coordinates).
    ///
    /// The static layer may cover the whole label, but the tag clears the dynamic boxes before
    /// it draws into them, so a gateway renderer should keep the product name inside `name`.
    pub const fn layout(self) -> LabelLayout {
        match self {
            Panel::Bw290 | Panel::Bwr290 => LabelLayout {
                name: Rect::new(0, 0, 296, 48),
                badge: Rect::new(190, 50, 102, 14),
                price: Rect::new(104, 64, 192, 64),
                regular: Rect::new(2, 50, 102, 24),
                member: Rect::new(2, 76, 102, 28),
                unit: Rect::new(2, 106, 102, 22),
            },
            Panel::Bw420 | Panel::Bwr420 => LabelLayout {
                name: Rect::new(0, 0, 400, 122),
                badge: Rect::new(236, 124, 160, 24),
                price: Rect::new(150, 150, 250, 150),
                regular: Rect::new(4, 126, 146, 48),
                member: Rect::new(4, 178, 146, 62),
                unit: Rect::new(4, 244, 146, 52),
            },
        }
    }
}

/// A rectangle in label coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rect {
    pub x: u16,
    pub y: u16,
    pub w: u16,
    pub h: u16,
}

impl Rect {
    pub const fn new(x: u16, y: u16, w: u16, h: u16) -> Self {
        Rect { x, y, w, h }
    }

    /// Whether (x, y) lies inside.
    pub const fn contains(&self, x: u16, y: u16) -> bool {
        x >= self.x && y >= self.y && x - self.x < self.w && y - self.y < self.h
    }
}

/// The boxes of a label. `name` is the gateway's (static layer); the rest are the tag's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LabelLayout {
    /// Product name, brand, pack size: rendered at the gateway into the static layer.
    pub name: Rect,
    /// Flags as a word ("NEW", "CLEARANCE", "OUT OF STOCK").
    pub badge: Rect,
    /// The price the shopper pays, in big digits, with its currency.
    pub price: Rect,
    /// The regular price, struck through, during a promotion.
    pub regular: Rect,
    /// The member price.
    pub member: Rect,
    /// The unit price with its unit.
    pub unit: Rect,
}

impl LabelLayout {
    /// The boxes the tag owns, in drawing order.
    pub const fn dynamic_boxes(&self) -> [Rect; 5] {
        [self.badge, self.price, self.regular, self.member, self.unit]
    }
}
