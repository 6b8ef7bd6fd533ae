//! Axis People Counter `live-sum.json`:
//! `{"serial","name","timestamp":"YYYYMMDDhhmmss","in":N,"out":N}`, running totals since the
//! camera's local midnight. The optional `occupancy` (Axis occupancy estimator) is kept.
use super::{
    CameraId, CameraReading, Counts, FootfallError, ReadingKind, admit_json, json_count, json_str,
    time_text,
};

/// Parses one `live-sum.json`. The timestamp carries no zone, so `utc_offset_minutes` is the
/// camera's configured offset; the result's `since` is the camera's local midnight, which is when
/// Axis restarts its totals.
pub fn parse_live_sum(
    camera: &CameraId,
    bytes: &[u8],
    max_bytes: usize,
    utc_offset_minutes: i16,
) -> Result<CameraReading, FootfallError> {
    let doc = admit_json(bytes, max_bytes)?;
    let obj = doc
        .as_object()
        .ok_or_else(|| FootfallError::Json("expected a JSON object".to_owned()))?;
    let stamp = json_str(obj.get("timestamp"), "timestamp")?;
    let (at, midnight) =
        time_text::parse_compact_local(stamp, utc_offset_minutes).map_err(|detail| {
            FootfallError::InvalidField {
                field: "timestamp",
                detail,
            }
        })?;
    let entered = json_count(obj.get("in"), "in")?;
    let exited = json_count(obj.get("out"), "out")?;
    let occupancy = match obj.get("occupancy") {
        None | Some(serde_json::Value::Null) => None,
        v => Some(json_count(v, "occupancy")?),
    };
    Ok(CameraReading {
        camera: camera.clone(),
        line: None,
        at,
        kind: ReadingKind::Cumulative {
            counts: Counts::new(entered, exited),
            since: Some(midnight),
        },
        occupancy,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{DEFAULT_MAX_PAYLOAD, time_text::parse_iso};
    use super::*;
    use proptest::prelude::*;

    fn cam() -> CameraId {
        CameraId::new("entrance-north")
    }

    fn parse(s: &str) -> Result<CameraReading, FootfallError> {
        parse_live_sum(&cam(), s.as_bytes(), DEFAULT_MAX_PAYLOAD, 60)
    }

    #[test]
    fn realistic_live_sum() {
        let r = parse(
            r#"{"serial":"ACCC8EF1A2B3","name":"Main entrance","timestamp":"20261122143015","in":412,"out":389}"#,
        )
        .unwrap();
        assert_eq!(r.camera, cam());
        assert_eq!(r.line, None);
        assert_eq!(r.at, parse_iso("2026-11-22T14:30:15+01:00").unwrap());
        assert_eq!(
            r.kind,
            ReadingKind::Cumulative {
                counts: Counts::new(412, 389),
                since: Some(parse_iso("2026-11-22T00:00:00+01:00").unwrap()),
            }
        );
        assert_eq!(r.occupancy, None);
    }

    #[test]
    fn occupancy_estimator_variant_keeps_occupancy() {
        let r = parse(
            r#"{"serial":"ACCC8EF1A2B3","name":"Main","timestamp":"20261122090000","in":10,"out":4,"occupancy":6}"#,
        )
        .unwrap();
        assert_eq!(r.occupancy, Some(6));
    }

    #[test]
    fn bad_payloads_name_the_problem() {
        let cases: &[(&str, &str)] = &[
            (r#"{"timestamp":"20261122143015","out":1}"#, "missing_field"),
            (
                r#"{"timestamp":"20261122143015","in":-3,"out":1}"#,
                "invalid_field",
            ),
            (
                r#"{"timestamp":"20261122143015","in":"12","out":1}"#,
                "invalid_field",
            ),
            (
                r#"{"timestamp":"20261122143015","in":1.5,"out":1}"#,
                "invalid_field",
            ),
            (
                r#"{"timestamp":"2026-11-22","in":1,"out":1}"#,
                "invalid_field",
            ),
            (
                r#"{"timestamp":20261122143015,"in":1,"out":1}"#,
                "invalid_field",
            ),
            (r#"[1,2,3]"#, "malformed_json"),
            (r#"{"in":1,"out":1"#, "malformed_json"),
            (
                r#"{"timestamp":"20261122143015","in":1,"out":1,"snapshot":"x"}"#,
                "personal_data",
            ),
        ];
        for (payload, reason) in cases {
            let err = parse(payload).unwrap_err();
            assert_eq!(err.reason(), *reason, "{payload}: {err}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_live_sum(&cam(), &bytes, 256, 0);
        }

        #[test]
        fn arbitrary_counts_round_trip(entered in any::<u64>(), exited in any::<u64>()) {
            let s = format!(r#"{{"serial":"S","name":"N","timestamp":"20261122101500","in":{entered},"out":{exited}}}"#);
            let r = parse(&s).unwrap();
            let ReadingKind::Cumulative { counts, .. } = r.kind else { panic!("kind") };
            prop_assert_eq!(counts, Counts::new(entered, exited));
        }
    }
}
