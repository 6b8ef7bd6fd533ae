//! The enrolment QR code: a PNG of an `aisle-enrol:` URI a technician can scan instead of typing.
use std::fs;
use std::io::Write;
use std::path::Path;

/// Scheme of enrolment URIs.
pub const ENROL_URI_SCHEME: &str = "aisle-enrol";
/// Pixels per QR module.
const SCALE: usize = 8;
/// Quiet zone around the code, in modules (the standard asks for 4).
const QUIET: usize = 4;

/// `aisle-enrol:?code=XXXX-XXXX-XXXX[&hub=<percent-encoded URL>][&tls=<sha256 hex>]`.
pub fn enrolment_uri(code: &str, hub_url: Option<&str>, tls_fingerprint: Option<&str>) -> String {
    let mut uri = format!("{ENROL_URI_SCHEME}:?code={}", percent_encode(code));
    if let Some(hub) = hub_url {
        uri.push_str("&hub=");
        uri.push_str(&percent_encode(hub));
    }
    if let Some(fp) = tls_fingerprint {
        uri.push_str("&tls=");
        uri.push_str(&percent_encode(fp));
    }
    uri
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why a QR code could not be written.
#[derive(Debug, thiserror::Error)]
pub enum QrError {
    #[error("the text does not fit in a QR code: {0}")]
    Encode(String),
    #[error("writing the PNG: {0}")]
    Png(#[from] png::EncodingError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// A black-on-white grayscale PNG of `text` as a QR code (error correction M).
pub fn png_bytes(text: &str) -> Result<Vec<u8>, QrError> {
    let code = qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::M)
        .map_err(|e| QrError::Encode(e.to_string()))?;
    let modules = code.width();
    let dark: Vec<bool> = code
        .to_colors()
        .into_iter()
        .map(|c| c == qrcode::Color::Dark)
        .collect();
    let side = (modules + 2 * QUIET) * SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, is_dark) in dark.iter().enumerate() {
        if !is_dark {
            continue;
        }
        let (mx, my) = (i % modules + QUIET, i / modules + QUIET);
        for y in my * SCALE..(my + 1) * SCALE {
            let row = y * side;
            pixels[row + mx * SCALE..row + (mx + 1) * SCALE].fill(0);
        }
    }
    let side32 = u32::try_from(side).map_err(|_| QrError::Encode("too large".into()))?;
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, side32, side32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header()?;
        writer.write_image_data(&pixels)?;
        writer.finish()?;
    }
    Ok(out)
}

/// Writes [`png_bytes`] of `text` to `path` (mode 0600: the code in it is a secret).
pub fn write_png(path: &Path, text: &str) -> Result<(), QrError> {
    use std::os::unix::fs::OpenOptionsExt;
    let bytes = png_bytes(text)?;
    let io = |source| QrError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn uri_is_percent_encoded() {
        assert_eq!(
            enrolment_uri("ABCD-EFGH-JKMN", Some("https://hq:7400"), Some("ab12")),
            "aisle-enrol:?code=ABCD-EFGH-JKMN&hub=https%3A%2F%2Fhq%3A7400&tls=ab12"
        );
        assert_eq!(enrolment_uri("X", None, None), "aisle-enrol:?code=X");
    }

    #[test]
    fn png_decodes_to_a_square_black_and_white_image() {
        let bytes = png_bytes("aisle-enrol:?code=ABCD-EFGH-JKMN").unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.width, info.height);
        assert_eq!(info.width % 8, 0);
        assert!(buf.contains(&0) && buf.contains(&255));
        // The quiet zone is white.
        assert!(
            buf[..usize::try_from(info.width).unwrap() * 8]
                .iter()
                .all(|&p| p == 255)
        );
    }
}
