//! Xovis v5 logics push:
//! `{"time": RFC3339, "logics":[{"id","name","info":"XLT_LINE_IN_OUT_COUNT",
//! "counts":[{"id","name":"fw"|"bw","value"}]}]}`. Each line logic becomes one reading; other
//! logic kinds (zones, dwell) are skipped because only line crossings are visitors.
use super::{
    CameraId, CameraReading, Counts, FootfallError, ReadingKind, admit_json, json_count, json_str,
    time_text,
};

/// The logic kind that counts people crossing a line.
pub const LINE_COUNT_LOGIC: &str = "XLT_LINE_IN_OUT_COUNT";

/// Whether a camera's push carries counts since its previous push or running totals: Xovis lets
/// the installer choose per data push, and the payload does not say which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XovisValues {
    Delta,
    Absolute,
}

/// Per-camera settings for a Xovis push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XovisConfig {
    pub values: XovisValues,
    /// Whether `fw` (forward) crossings are people entering. Installers draw the line either way
    /// round, so this follows the installation, not the vendor.
    pub forward_is_in: bool,
}

impl Default for XovisConfig {
    fn default() -> Self {
        XovisConfig {
            values: XovisValues::Delta,
            forward_is_in: true,
        }
    }
}

/// Parses one push into a reading per line logic. A push without any line logic is
/// [`FootfallError::NotACount`].
pub fn parse_logics(
    camera: &CameraId,
    bytes: &[u8],
    max_bytes: usize,
    config: XovisConfig,
) -> Result<Vec<CameraReading>, FootfallError> {
    let doc = admit_json(bytes, max_bytes)?;
    let obj = doc
        .as_object()
        .ok_or_else(|| FootfallError::Json("expected a JSON object".to_owned()))?;
    let at = time_text::parse_iso(json_str(obj.get("time"), "time")?).map_err(|detail| {
        FootfallError::InvalidField {
            field: "time",
            detail,
        }
    })?;
    let logics = obj
        .get("logics")
        .ok_or(FootfallError::MissingField { field: "logics" })?
        .as_array()
        .ok_or_else(|| FootfallError::InvalidField {
            field: "logics",
            detail: "expected an array".to_owned(),
        })?;
    let mut readings = Vec::new();
    for logic in logics {
        let Some(logic) = logic.as_object() else {
            return Err(FootfallError::InvalidField {
                field: "logics",
                detail: "expected objects".to_owned(),
            });
        };
        if logic.get("info").and_then(|v| v.as_str()) != Some(LINE_COUNT_LOGIC) {
            continue;
        }
        let line = match logic.get("id") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(other) => {
                return Err(FootfallError::InvalidField {
                    field: "id",
                    detail: format!("expected a logic id, got {other}"),
                });
            }
            None => return Err(FootfallError::MissingField { field: "id" }),
        };
        let counts = logic
            .get("counts")
            .ok_or(FootfallError::MissingField { field: "counts" })?
            .as_array()
            .ok_or_else(|| FootfallError::InvalidField {
                field: "counts",
                detail: "expected an array".to_owned(),
            })?;
        let (mut fw, mut bw) = (None, None);
        for count in counts {
            let name = json_str(count.get("name"), "name")?;
            let slot = match name {
                "fw" => &mut fw,
                "bw" => &mut bw,
                // Other counters on a line (e.g. per object class) are not visitors.
                _ => continue,
            };
            if slot.is_some() {
                return Err(FootfallError::InvalidField {
                    field: "counts",
                    detail: format!("`{name}` appears twice in logic {line}"),
                });
            }
            *slot = Some(json_count(count.get("value"), "value")?);
        }
        let fw = fw.ok_or(FootfallError::MissingField { field: "fw" })?;
        let bw = bw.ok_or(FootfallError::MissingField { field: "bw" })?;
        let counts = if config.forward_is_in {
            Counts::new(fw, bw)
        } else {
            Counts::new(bw, fw)
        };
        let kind = match config.values {
            XovisValues::Delta => ReadingKind::Delta { counts },
            XovisValues::Absolute => ReadingKind::Cumulative {
                counts,
                since: None,
            },
        };
        readings.push(CameraReading {
            camera: camera.clone(),
            line: Some(line),
            at,
            kind,
            occupancy: None,
        });
    }
    if readings.is_empty() {
        return Err(FootfallError::NotACount(format!(
            "no {LINE_COUNT_LOGIC} logic in the push"
        )));
    }
    Ok(readings)
}

#[cfg(test)]
mod tests {
    use super::super::{DEFAULT_MAX_PAYLOAD, time_text::parse_iso};
    use super::*;
    use proptest::prelude::*;

    const PUSH: &str = r#"{
      "time": "2026-11-22T14:30:00.000+01:00",
      "logics": [
        {"id": 1, "name": "Entrance line", "info": "XLT_LINE_IN_OUT_COUNT",
         "counts": [{"id": 0, "name": "fw", "value": 7}, {"id": 1, "name": "bw", "value": 5}]},
        {"id": 2, "name": "Shop floor zone", "info": "XLT_ZONE_OCCUPANCY_COUNT",
         "counts": [{"id": 0, "name": "occupancy", "value": 31}]},
        {"id": "side", "name": "Side door", "info": "XLT_LINE_IN_OUT_COUNT",
         "counts": [{"id": 0, "name": "fw", "value": 0}, {"id": 1, "name": "bw", "value": 2}]}
      ]
    }"#;

    fn cam() -> CameraId {
        CameraId::new("xovis-1")
    }

    #[test]
    fn line_logics_become_readings() {
        let rs = parse_logics(
            &cam(),
            PUSH.as_bytes(),
            DEFAULT_MAX_PAYLOAD,
            XovisConfig::default(),
        )
        .unwrap();
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[0].line.as_deref(), Some("1"));
        assert_eq!(rs[1].line.as_deref(), Some("side"));
        assert_eq!(rs[0].at, parse_iso("2026-11-22T13:30:00Z").unwrap());
        assert_eq!(
            rs[0].kind,
            ReadingKind::Delta {
                counts: Counts::new(7, 5)
            }
        );
    }

    #[test]
    fn absolute_values_and_reversed_line() {
        let config = XovisConfig {
            values: XovisValues::Absolute,
            forward_is_in: false,
        };
        let rs = parse_logics(&cam(), PUSH.as_bytes(), DEFAULT_MAX_PAYLOAD, config).unwrap();
        assert_eq!(
            rs[0].kind,
            ReadingKind::Cumulative {
                counts: Counts::new(5, 7),
                since: None
            }
        );
    }

    #[test]
    fn bad_pushes_name_the_problem() {
        let cases: &[(&str, &str)] = &[
            (r#"{"logics":[]}"#, "missing_field"),
            (r#"{"time":"noon","logics":[]}"#, "invalid_field"),
            (
                r#"{"time":"2026-11-22T14:30:00Z","logics":[]}"#,
                "not_a_count",
            ),
            (
                r#"{"time":"2026-11-22T14:30:00Z","logics":{}}"#,
                "invalid_field",
            ),
            (
                r#"{"time":"2026-11-22T14:30:00Z","logics":[{"id":1,"info":"XLT_LINE_IN_OUT_COUNT","counts":[{"name":"fw","value":1}]}]}"#,
                "missing_field",
            ),
            (
                r#"{"time":"2026-11-22T14:30:00Z","logics":[{"id":1,"info":"XLT_LINE_IN_OUT_COUNT","counts":[{"name":"fw","value":1},{"name":"bw","value":-1}]}]}"#,
                "invalid_field",
            ),
            (
                r#"{"time":"2026-11-22T14:30:00Z","logics":[{"id":1,"info":"XLT_LINE_IN_OUT_COUNT","counts":[{"name":"fw","value":1},{"name":"fw","value":2},{"name":"bw","value":0}]}]}"#,
                "invalid_field",
            ),
            (
                r#"{"time":"2026-11-22T14:30:00Z","tracks":[{"trackId":17,"x":1,"y":2}],"logics":[]}"#,
                "personal_data",
            ),
        ];
        for (payload, reason) in cases {
            let err = parse_logics(
                &cam(),
                payload.as_bytes(),
                DEFAULT_MAX_PAYLOAD,
                XovisConfig::default(),
            )
            .unwrap_err();
            assert_eq!(err.reason(), *reason, "{payload}: {err}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_logics(&cam(), &bytes, 256, XovisConfig::default());
        }

        #[test]
        fn mutated_push_never_panics(cut in 0usize..600, byte in any::<u8>()) {
            let mut b = PUSH.as_bytes().to_vec();
            let i = cut % b.len();
            b[i] = byte;
            let _ = parse_logics(&cam(), &b, DEFAULT_MAX_PAYLOAD, XovisConfig::default());
        }
    }
}
