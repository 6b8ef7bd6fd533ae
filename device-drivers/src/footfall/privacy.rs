//! The privacy screen: a people counter may tell us how many, never who. A deny-list rather than
//! an allow-list of fields, because firmware adds harmless fields (channel name, IP, the camera's
//! own MAC) with every release; images are caught by their bytes whatever the field is called.
use super::FootfallError;

/// Field names (lower-cased, matched as substrings) that mean an image or a person's identity.
const PERSONAL_FIELDS: &[&str] = &[
    "image",
    "picture",
    "snapshot",
    "photo",
    "jpeg",
    "jpg",
    "face",
    "plate",
    "base64",
    "biometric",
    "personid",
    "person_id",
    "trackid",
    "track_id",
    "tracks",
];

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

/// Refuses a field name that names an image or a person's identifier.
pub(super) fn screen_field(name: &str) -> Result<(), FootfallError> {
    let lower = name.to_ascii_lowercase();
    match PERSONAL_FIELDS.iter().find(|p| lower.contains(*p)) {
        Some(_) => Err(FootfallError::PersonalData(format!("field `{name}`"))),
        None => Ok(()),
    }
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
        ] {
            assert!(screen_field(key).is_ok(), "{key}");
        }
        assert!(screen_bytes(b"{\"serial\":\"ACCC8E000001\",\"in\":5,\"out\":3}").is_ok());
    }
}
