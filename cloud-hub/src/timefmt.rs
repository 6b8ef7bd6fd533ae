//! RFC 3339 at the edges of the hub: the database and the protocol speak UTC milliseconds.
use aisle_protocol::UtcMillis;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Parses an RFC 3339 timestamp (any offset) into UTC milliseconds.
pub fn parse_rfc3339(s: &str) -> Result<UtcMillis, String> {
    let shown: String = s.chars().take(64).collect();
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
        format!("'{shown}' is not an RFC 3339 time like 2026-11-22T08:00:00Z ({e})")
    })?;
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    match i64::try_from(ms) {
        Ok(ms) if ms >= 0 => Ok(UtcMillis(ms)),
        _ => Err(format!("'{shown}' is before 1970-01-01T00:00:00Z")),
    }
}

/// Formats UTC milliseconds as RFC 3339 with millisecond precision, e.g. `2026-11-22T08:00:00.000Z`.
pub fn format_rfc3339(at: UtcMillis) -> String {
    let nanos = i128::from(at.0) * 1_000_000;
    let t = OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let t = t
        .replace_nanosecond(t.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(t);
    t.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// Serde for [`UtcMillis`] as RFC 3339 (`#[serde(with = "crate::timefmt::rfc3339")]`).
pub mod rfc3339 {
    use aisle_protocol::UtcMillis;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &UtcMillis, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_rfc3339(*at))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<UtcMillis, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips_and_normalises_offsets() {
        let t = parse_rfc3339("2026-11-22T16:00:00+08:00").unwrap();
        assert_eq!(t, parse_rfc3339("2026-11-22T08:00:00Z").unwrap());
        assert_eq!(format_rfc3339(t), "2026-11-22T08:00:00Z");
        assert_eq!(
            format_rfc3339(UtcMillis(t.0 + 250)),
            "2026-11-22T08:00:00.25Z"
        );
        assert_eq!(
            parse_rfc3339("2026-11-22T08:00:00.25Z").unwrap().0,
            t.0 + 250
        );
    }

    #[test]
    fn refuses_non_rfc3339_and_pre_epoch() {
        assert!(parse_rfc3339("2026-11-22 08:00").is_err());
        assert!(parse_rfc3339("yesterday").is_err());
        assert!(parse_rfc3339("1969-12-31T23:59:59Z").is_err());
    }
}
