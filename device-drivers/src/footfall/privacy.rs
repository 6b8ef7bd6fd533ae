//! The privacy screen: a people counter may tell us how many, never who. A deny-list rather than
//! an allow-list of fields, because firmware adds harmless fields (channel name, IP, the camera's
//! own MAC) with every release; images are caught by their bytes whatever the field is called.
use super::FootfallError;

/// Words in a field name that mean an image or a person's identity. Names are split into words
/// (`faceImage` -> face, image) so that `interface` or `template` do not trip the screen.
const PERSONAL_WORDS: &[&str] = &[
    "image",
    "images",
    "img",
    "picture",
    "pictures",
    "pic",
    "pics",
    "bkg",
    "snapshot",
    "snapshots",
    "thumbnail",
    "photo",
    "photos",
    "jpeg",
    "jpg",
    "png",
    "face",
    "faces",
    "plate",
    "plates",
    "base64",
    "biometric",
    "biometrics",
    "track",
    "tracks",
];

/// Word pairs that together name a person's identifier (`personId`, `person_id`).
const PERSONAL_PAIRS: &[(&str, &str)] = &[("person", "id"), ("people", "id"), ("human", "id")];

/// A run of base64 this long is an embedded binary (an image), not a count or a name.
const MAX_BASE64_RUN: usize = 256;

/// Refuses raw bytes that carry an image: JPEG/PNG/GIF signatures, `data:image` URIs, or a long
/// base64 run.
pub(super) fn screen_bytes(bytes: &[u8]) -> Result<(), FootfallError> {
    const SIGNATURES: &[(&[u8], &str)] = &[
        (b"\xFF\xD8\xFF", "JPEG image data"),
        (b"\x89PNG", "PNG image data"),
        (b"GIF8", "GIF image data"),
        (b"data:image", "an embedded image"),
    ];
    for (sig, what) in SIGNATURES {
        if bytes
            .windows(sig.len())
            .any(|w| w.eq_ignore_ascii_case(sig))
        {
            return Err(FootfallError::PersonalData((*what).to_owned()));
        }
    }
    let mut run = 0usize;
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=' {
            run += 1;
            if run >= MAX_BASE64_RUN {
                return Err(FootfallError::PersonalData(
                    "a long base64 run (embedded binary)".to_owned(),
                ));
            }
        } else {
            run = 0;
        }
    }
    Ok(())
}

/// Splits a field name into lower-case words at `_`, `-`, `.` and lower-to-upper case changes.
fn words(name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            prev_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && prev_lower && !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        word.push(c.to_ascii_lowercase());
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Refuses a field name that names an image or a person's identifier.
pub(super) fn screen_field(name: &str) -> Result<(), FootfallError> {
    let words = words(name);
    let single = words.iter().any(|w| PERSONAL_WORDS.contains(&w.as_str()));
    let pair = words
        .windows(2)
        .any(|p| PERSONAL_PAIRS.contains(&(p[0].as_str(), p[1].as_str())));
    if single || pair {
        return Err(FootfallError::PersonalData(format!("field `{name}`")));
    }
    Ok(())
}

/// Walks every object key of a parsed JSON document. Iterative, so depth cannot blow the stack
/// (serde_json already caps nesting at 128).
pub(super) fn screen_json(value: &serde_json::Value) -> Result<(), FootfallError> {
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(map) => {
                for (k, child) in map {
                    screen_field(k)?;
                    stack.push(child);
                }
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_and_identifiers_are_refused() {
        assert!(screen_bytes(b"{\"in\":1,\"x\":\"\xFF\xD8\xFF\xE0\"}").is_err());
        assert!(screen_bytes(b"<x>\x89PNG\r\n</x>").is_err());
        assert!(screen_bytes(b"{\"a\":\"data:image/jpeg;base64,AAAA\"}").is_err());
        let long = format!("{{\"blob\":\"{}\"}}", "QUJD".repeat(100));
        assert!(screen_bytes(long.as_bytes()).is_err());
        for key in [
            "faceImage",
            "snapshot",
            "licensePlate",
            "personId",
            "tracks",
        ] {
            assert!(screen_field(key).is_err(), "{key}");
        }
    }

    #[test]
    fn ordinary_count_fields_pass() {
        for key in [
            "serial",
            "name",
            "timestamp",
            "in",
            "out",
            "macAddress",
            "channelName",
            "logics",
            "counts",
            "interface",
            "template",
            "statisticalMethods",
            "EventNotificationAlert",
            "activePostCount",
            "XLT_LINE_IN_OUT_COUNT",
        ] {
            assert!(screen_field(key).is_ok(), "{key}");
        }
        assert!(screen_bytes(b"{\"serial\":\"ACCC8E000001\",\"in\":5,\"out\":3}").is_ok());
    }
}
