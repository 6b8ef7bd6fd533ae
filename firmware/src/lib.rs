//! Shelf-label tag and access-point firmware logic, `no_std`, generic over embedded-hal 1.0.
//!
//! This crate starts with the panel geometry the rest of the system plans against; the tag's
//! frame handling, layout renderer and SSD1680-class e-paper driver arrive with the shelf-label
//! work (issue 3). It imports only `aisle-protocol`.
#![no_std]
#![forbid(unsafe_code)]

/// The e-paper panels a tag may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Panel {
    /// 2.9", 296 x 128, black/white.
    Bw290,
    /// 2.9", 296 x 128, black/white/red.
    Bwr290,
    /// 4.2", 400 x 300, black/white/red.
    Bwr420,
}

impl Panel {
    pub const fn size(self) -> (u16, u16) {
        match self {
            Panel::Bw290 | Panel::Bwr290 => (296, 128),
            Panel::Bwr420 => (400, 300),
        }
    }

    /// Colour planes: 1 for black/white, 2 for black/white/red.
    pub const fn planes(self) -> u8 {
        match self {
            Panel::Bw290 => 1,
            Panel::Bwr290 | Panel::Bwr420 => 2,
        }
    }

    /// Bytes of one full frame buffer (1 bit per pixel per plane, rows padded to whole bytes).
    pub const fn frame_bytes(self) -> usize {
        let (w, h) = self.size();
        (w as usize).div_ceil(8) * h as usize * self.planes() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes_match_published_panels() {
        // shared/vectors/README.md: a 2.9" 296x128 tag is 4736 bytes at 1 bpp, 9472 at 2 bpp.
        assert_eq!(Panel::Bw290.frame_bytes(), 4736);
        assert_eq!(Panel::Bwr290.frame_bytes(), 9472);
        assert_eq!(Panel::Bwr420.frame_bytes(), 30000);
    }
}
