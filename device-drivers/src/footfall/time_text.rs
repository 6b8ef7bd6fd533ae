//! Camera timestamps as text, into [`UtcMillis`]. Cameras are only hints (see `normalise`), but a
//! timestamp that does not parse is still a malformed payload.
use aisle_protocol::UtcMillis;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

fn to_millis(t: OffsetDateTime) -> Result<UtcMillis, String> {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map(UtcMillis)
        .map_err(|_| "time out of range".to_owned())
}

fn offset(minutes: i16) -> Result<UtcOffset, String> {
    UtcOffset::from_whole_seconds(i32::from(minutes) * 60)
        .map_err(|_| format!("UTC offset of {minutes} minutes is out of range"))
}

/// Axis `YYYYMMDDhhmmss`, in the camera's local time at `utc_offset_minutes`. Also returns the
/// camera's local midnight of that day: Axis counts restart there.
pub(super) fn parse_compact_local(
    s: &str,
    utc_offset_minutes: i16,
) -> Result<(UtcMillis, UtcMillis), String> {
    if s.len() != 14 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("expected 14 digits YYYYMMDDhhmmss, got {s:?}"));
    }
    // All 14 bytes are ASCII digits, so these slices are on char boundaries and parse.
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|d| d.parse::<u16>().ok());
    let (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(se)) = (
        num(0..4),
        num(4..6),
        num(6..8),
        num(8..10),
        num(10..12),
        num(12..14),
    ) else {
        return Err(format!("expected 14 digits YYYYMMDDhhmmss, got {s:?}"));
    };
    let month = u8::try_from(mo)
        .ok()
        .and_then(|m| Month::try_from(m).ok())
        .ok_or_else(|| format!("month {mo} in {s:?}"))?;
    let day = u8::try_from(d).map_err(|_| format!("day {d} in {s:?}"))?;
    let date =
        Date::from_calendar_date(i32::from(y), month, day).map_err(|e| format!("{s:?}: {e}"))?;
    let hms = |v: u16| u8::try_from(v).unwrap_or(u8::MAX);
    let time = Time::from_hms(hms(h), hms(mi), hms(se)).map_err(|e| format!("{s:?}: {e}"))?;
    let off = offset(utc_offset_minutes)?;
    let at = to_millis(PrimitiveDateTime::new(date, time).assume_offset(off))?;
    let midnight = to_millis(PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_offset(off))?;
    Ok((at, midnight))
}

/// RFC 3339 (`2026-11-22T10:15:00+01:00`, fractions allowed). Some Hikvision firmware leaves the
/// offset off; such a time is taken as UTC, which is harmless because it is only a hint.
pub(super) fn parse_iso(s: &str) -> Result<UtcMillis, String> {
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return to_millis(t);
    }
    let naive = format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    PrimitiveDateTime::parse(s, naive)
        .map_err(|_| format!("expected an RFC 3339 time, got {s:?}"))
        .and_then(|t| to_millis(t.assume_utc()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_local_time_with_offset() {
        // 2026-11-22 10:15:00 at UTC+01:00 is 09:15:00Z.
        let (at, midnight) = parse_compact_local("20261122101500", 60).unwrap();
        assert_eq!(at, parse_iso("2026-11-22T09:15:00Z").unwrap());
        assert_eq!(midnight, parse_iso("2026-11-21T23:00:00Z").unwrap());
        for bad in [
            "2026112210150",
            "20261322101500",
            "20261122256000",
            "2026-1122101500",
        ] {
            assert!(parse_compact_local(bad, 0).is_err(), "{bad}");
        }
        assert!(parse_compact_local("20261122101500", i16::MAX).is_err());
    }

    #[test]
    fn iso_with_and_without_offset() {
        let a = parse_iso("2026-11-22T10:15:00+01:00").unwrap();
        assert_eq!(a, parse_iso("2026-11-22T09:15:00Z").unwrap());
        assert_eq!(a, parse_iso("2026-11-22T09:15:00.000Z").unwrap());
        assert_eq!(a, parse_iso("2026-11-22T09:15:00").unwrap());
        assert!(parse_iso("yesterday").is_err());
    }
}
