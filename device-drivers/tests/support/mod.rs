//! Test helpers: frame buffers to PNG and golden image comparison, as in
//! `firmware/tests/support` (the same palette and bless switch, so both sets of goldens read
//! alike).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use aisle_firmware::{FrameBuffer, LabelColor};

/// PNG palette: white, black, red.
const PALETTE: [u8; 9] = [0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0xd0, 0x10, 0x10];

fn index(c: LabelColor) -> u8 {
    match c {
        LabelColor::White => 0,
        LabelColor::Black => 1,
        LabelColor::Red => 2,
    }
}

/// The label as a shopper sees it, one palette index per pixel, row by row.
pub fn pixels<S: AsRef<[u8]> + AsMut<[u8]>>(fb: &FrameBuffer<S>) -> (u32, u32, Vec<u8>) {
    let (w, h) = fb.panel().size();
    let mut out = Vec::with_capacity(usize::from(w) * usize::from(h));
    for y in 0..h {
        for x in 0..w {
            out.push(index(fb.pixel(x, y)));
        }
    }
    (u32::from(w), u32::from(h), out)
}

/// Encodes a frame buffer as an indexed PNG.
pub fn to_png<S: AsRef<[u8]> + AsMut<[u8]>>(fb: &FrameBuffer<S>) -> Vec<u8> {
    let (w, h, data) = pixels(fb);
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_palette(PALETTE.to_vec());
        let mut writer = enc.write_header().expect("png header");
        writer.write_image_data(&data).expect("png data");
    }
    out
}

pub fn write_png<S: AsRef<[u8]> + AsMut<[u8]>>(fb: &FrameBuffer<S>, path: &Path) {
    std::fs::write(path, to_png(fb)).expect("write png");
}

fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("png info");
    let mut buf = vec![0; reader.output_buffer_size().expect("png size")];
    let info = reader.next_frame(&mut buf).expect("png frame");
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

/// Compares `fb` with `tests/golden/<name>.png`. `AISLE_BLESS=1` writes the file instead.
/// On a mismatch the rendering is left in the test's temporary directory to look at.
pub fn check_golden<S: AsRef<[u8]> + AsMut<[u8]>>(name: &str, fb: &FrameBuffer<S>) {
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.png"));
    if std::env::var_os("AISLE_BLESS").is_some_and(|v| v == "1") {
        write_png(fb, &golden);
        return;
    }
    let expected = std::fs::read(&golden).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with AISLE_BLESS=1 to create it",
            golden.display()
        )
    });
    let expected = decode_png(&expected);
    let actual = pixels(fb);
    if expected != actual {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.actual.png"));
        write_png(fb, &out);
        let differing = expected
            .2
            .iter()
            .zip(&actual.2)
            .filter(|(a, b)| a != b)
            .count();
        panic!(
            "{name}: {differing} pixels differ from {} (sizes {}x{} vs {}x{}); see {}; AISLE_BLESS=1 accepts",
            golden.display(),
            expected.0,
            expected.1,
            actual.0,
            actual.1,
            out.display()
        );
    }
}
