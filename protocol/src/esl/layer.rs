//! The static layer: a band of the panel's memory, compressed, rendered once at the gateway and
//! cached on the tag under its [`LayerHash`].
//!
//! A layer holds native rows `first_row .. first_row + rows` of one or two planes (black, and red
//! on black/white/red panels), one bit per pixel, 1 = ink, MSB first, rows of
//! [`Panel::stride`] bytes: exactly the tag's frame buffer layout, so the tag decompresses each
//! plane straight into its frame buffer band and needs no other memory.
//!
//! Compression is the LZ4 block format (`lz4_flex`, safe and checked decoder): decoding needs no
//! allocator, no window beyond the output itself and no tables, it is bounded by the output
//! length, and the decoder is a few hundred bytes of code. Deflate compresses label bitmaps about
//! a third better, but an inflater needs ~11 KB of state, more than a small tag MCU spares next
//! to its frame buffer; the layer goes over the radio once per product, not per price change.
//! A plane that LZ4 would not shrink travels raw.
use alloc::vec;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use super::{LayerHash, Panel};

/// How a plane is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Codec {
    /// The band's bytes as they are.
    Raw,
    /// One LZ4 block of the band's bytes.
    Lz4,
}

/// A colour of the label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ink {
    White,
    Black,
    Red,
}

/// Why a layer was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayerError {
    #[error("layer bytes do not decode")]
    Malformed,
    #[error("layer is for a {found:?} panel, this tag has a {expected:?}")]
    WrongPanel { expected: Panel, found: Panel },
    #[error("rows {first}..{end} lie outside the panel's {height} rows")]
    Rows { first: u16, end: u32, height: u16 },
    #[error("a red plane on a black/white panel, or none on a black/white/red one")]
    Planes,
    #[error("a plane does not decompress to its band")]
    Plane,
    #[error("buffer size does not match the panel")]
    Buffer,
}

/// A parsed layer; planes still compressed, borrowed from the cached bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerImage<'a> {
    pub panel: Panel,
    pub first_row: u16,
    pub rows: u16,
    pub codec: Codec,
    pub black: &'a [u8],
    pub red: Option<&'a [u8]>,
}

impl<'a> LayerImage<'a> {
    /// Parses and checks a layer's bytes against the tag's panel.
    pub fn parse(bytes: &'a [u8], panel: Panel) -> Result<Self, LayerError> {
        let (image, rest) = postcard::take_from_bytes::<LayerImage<'a>>(bytes)
            .map_err(|_| LayerError::Malformed)?;
        if !rest.is_empty() {
            return Err(LayerError::Malformed);
        }
        if image.panel != panel {
            return Err(LayerError::WrongPanel {
                expected: panel,
                found: image.panel,
            });
        }
        let height = panel.native_size().1;
        let end = u32::from(image.first_row) + u32::from(image.rows);
        if end > u32::from(height) {
            return Err(LayerError::Rows {
                first: image.first_row,
                end,
                height,
            });
        }
        if image.red.is_some() != panel.has_red() {
            return Err(LayerError::Planes);
        }
        Ok(image)
    }

    fn band(&self) -> core::ops::Range<usize> {
        let stride = self.panel.stride();
        usize::from(self.first_row) * stride
            ..(usize::from(self.first_row) + usize::from(self.rows)) * stride
    }

    /// Decompresses the layer into full planes (`black` and, on a red panel, `red`, each
    /// [`Panel::plane_bytes`] long, 1 = ink). Rows outside the band are left as they are.
    pub fn draw_into(&self, black: &mut [u8], red: Option<&mut [u8]>) -> Result<(), LayerError> {
        let plane_bytes = self.panel.plane_bytes();
        if black.len() != plane_bytes {
            return Err(LayerError::Buffer);
        }
        let band = self.band();
        decode_plane(self.codec, self.black, &mut black[band.clone()])?;
        match (self.red, red) {
            (Some(data), Some(out)) if out.len() == plane_bytes => {
                decode_plane(self.codec, data, &mut out[band])
            }
            (None, _) => Ok(()),
            (Some(_), _) => Err(LayerError::Buffer),
        }
    }
}

fn decode_plane(codec: Codec, data: &[u8], out: &mut [u8]) -> Result<(), LayerError> {
    match codec {
        Codec::Raw if data.len() == out.len() => {
            out.copy_from_slice(data);
            Ok(())
        }
        Codec::Raw => Err(LayerError::Plane),
        Codec::Lz4 => match lz4_flex::block::decompress_into(data, out) {
            Ok(n) if n == out.len() => Ok(()),
            _ => Err(LayerError::Plane),
        },
    }
}

/// Encodes full native planes (1 = ink) as a layer: the smallest band holding every inked row,
/// LZ4 unless raw is smaller. Returns the bytes and their name.
pub fn encode_layer(
    panel: Panel,
    black: &[u8],
    red: Option<&[u8]>,
) -> Result<(Vec<u8>, LayerHash), LayerError> {
    let plane_bytes = panel.plane_bytes();
    if black.len() != plane_bytes
        || red.is_some_and(|r| r.len() != plane_bytes)
        || red.is_some() != panel.has_red()
    {
        return Err(LayerError::Buffer);
    }
    let stride = panel.stride();
    let inked = |row: usize| {
        let r = row * stride..(row + 1) * stride;
        black[r.clone()].iter().any(|b| *b != 0)
            || red.is_some_and(|p| p[r].iter().any(|b| *b != 0))
    };
    let height = usize::from(panel.native_size().1);
    let first = (0..height).find(|r| inked(*r)).unwrap_or(0);
    let end = (first..height)
        .rev()
        .find(|r| inked(*r))
        .map_or(first, |r| r + 1);
    let band = first * stride..end * stride;

    let compress = |plane: &[u8]| {
        let mut out = vec![0u8; lz4_flex::block::get_maximum_output_size(plane.len())];
        let n = lz4_flex::block::compress_into(plane, &mut out).map_err(|_| LayerError::Plane)?;
        out.truncate(n);
        Ok::<_, LayerError>(out)
    };
    let black_band = &black[band.clone()];
    let red_band = red.map(|r| &r[band.clone()]);
    let black_lz = compress(black_band)?;
    let red_lz = red_band.map(compress).transpose()?;
    let lz_len = black_lz.len() + red_lz.as_ref().map_or(0, Vec::len);
    let use_lz4 = lz_len < band.len() * usize::from(panel.planes());

    // Both fit u16: the band is within the panel's height.
    let first_row = u16::try_from(first).map_err(|_| LayerError::Buffer)?;
    let rows = u16::try_from(end - first).map_err(|_| LayerError::Buffer)?;
    let image = if use_lz4 {
        LayerImage {
            panel,
            first_row,
            rows,
            codec: Codec::Lz4,
            black: &black_lz,
            red: red_lz.as_deref(),
        }
    } else {
        LayerImage {
            panel,
            first_row,
            rows,
            codec: Codec::Raw,
            black: black_band,
            red: red_band,
        }
    };
    let mut out = vec![0u8; 32 + band.len() * 2 + lz_len];
    let n = postcard::to_slice(&image, &mut out)
        .map_err(|_| LayerError::Buffer)?
        .len();
    out.truncate(n);
    let hash = LayerHash::of(&out);
    Ok((out, hash))
}

/// A blank label to draw a static layer on, in label coordinates (gateway side).
#[derive(Clone, PartialEq, Eq)]
pub struct LayerCanvas {
    panel: Panel,
    black: Vec<u8>,
    red: Option<Vec<u8>>,
}

impl core::fmt::Debug for LayerCanvas {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LayerCanvas")
            .field("panel", &self.panel)
            .finish_non_exhaustive()
    }
}

impl LayerCanvas {
    pub fn new(panel: Panel) -> Self {
        LayerCanvas {
            panel,
            black: vec![0; panel.plane_bytes()],
            red: panel.has_red().then(|| vec![0; panel.plane_bytes()]),
        }
    }

    pub fn panel(&self) -> Panel {
        self.panel
    }

    /// Sets one pixel; off-label pixels are ignored. Red on a black/white panel draws black.
    pub fn set(&mut self, x: u16, y: u16, ink: Ink) {
        let Some((i, mask)) = self.panel.locate(x, y) else {
            return;
        };
        let (black, red) = match (ink, self.red.is_some()) {
            (Ink::White, _) => (false, false),
            (Ink::Black, _) | (Ink::Red, false) => (true, false),
            (Ink::Red, true) => (false, true),
        };
        set_bit(&mut self.black[i], mask, black);
        if let Some(plane) = self.red.as_mut() {
            set_bit(&mut plane[i], mask, red);
        }
    }

    /// The colour of one pixel (white off the label).
    pub fn get(&self, x: u16, y: u16) -> Ink {
        let Some((i, mask)) = self.panel.locate(x, y) else {
            return Ink::White;
        };
        if self.red.as_ref().is_some_and(|p| p[i] & mask != 0) {
            Ink::Red
        } else if self.black[i] & mask != 0 {
            Ink::Black
        } else {
            Ink::White
        }
    }

    /// The native planes (1 = ink).
    pub fn planes(&self) -> (&[u8], Option<&[u8]>) {
        (&self.black, self.red.as_deref())
    }

    /// Encodes the canvas as a layer: bytes to send in chunks, and their name.
    pub fn encode(&self) -> Result<(Vec<u8>, LayerHash), LayerError> {
        encode_layer(self.panel, &self.black, self.red.as_deref())
    }
}

fn set_bit(byte: &mut u8, mask: u8, on: bool) {
    if on {
        *byte |= mask;
    } else {
        *byte &= !mask;
    }
}
