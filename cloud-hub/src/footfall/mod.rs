//! The footfall report HQ reads: visitors per bucket from the stores' people counters, the
//! store's transactions in the same buckets, and conversion. Pure: the storage sums what the
//! stores uploaded ([`FootfallTally`]), this module fills the range and decides what it means.
//!
//! Choices, also documented in `openapi.json`:
//! - Buckets are aligned to UTC (15 minutes, an hour, a UTC day), counted from the Unix epoch.
//!   `from` is rounded down and `to` up to the bucket width; the answer names the range used.
//! - `visitors_in` / `visitors_out` sum every entrance zone and every event (intervals are
//!   additive: a late reading for an interval arrives as another event).
//! - `transactions` are the sales the store uploaded, counted in the bucket of their sale time.
//! - `conversion` = transactions / visitors_in, `null` when nobody was counted. It is not
//!   clamped: more transactions than visitors means the counts are incomplete (see missing_data).
//! - `missing_data` is true when any 15-minute interval of the bucket has no footfall event at
//!   all (nothing reported yet, the gateway was down, or the interval is still open or in the
//!   future), or an event that names cameras as missing: its visitors are a lower bound, not zero.
//! - `occupancy` is the latest estimate reported in the bucket, `null` when none was.
use aisle_protocol::sync::FOOTFALL_INTERVAL_MS;
use aisle_protocol::{StoreId, UtcMillis};
use serde::{Deserialize, Serialize};

use crate::storage::{DAY_MS, FootfallQuery, FootfallTally, MAX_FOOTFALL_BUCKETS, Store};

pub mod chart;

/// Width of the buckets of a footfall report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Interval {
    #[serde(rename = "15m")]
    Quarter,
    #[serde(rename = "1h")]
    Hour,
    #[serde(rename = "1d")]
    Day,
}

impl Interval {
    /// `15m`, `1h` or `1d`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "15m" => Ok(Interval::Quarter),
            "1h" => Ok(Interval::Hour),
            "1d" => Ok(Interval::Day),
            other => Err(format!(
                "interval must be 15m, 1h or 1d, got '{}'",
                other.chars().take(32).collect::<String>()
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Interval::Quarter => "15m",
            Interval::Hour => "1h",
            Interval::Day => "1d",
        }
    }

    /// The bucket width in milliseconds.
    pub fn ms(self) -> i64 {
        match self {
            Interval::Quarter => FOOTFALL_INTERVAL_MS,
            Interval::Hour => 4 * FOOTFALL_INTERVAL_MS,
            Interval::Day => DAY_MS,
        }
    }

    /// The range shown when the query names none: a day of 15-minute or hourly buckets, 30 days
    /// of daily ones.
    pub fn default_span_ms(self) -> i64 {
        match self {
            Interval::Quarter | Interval::Hour => DAY_MS,
            Interval::Day => 30 * DAY_MS,
        }
    }
}

/// Resolves a report's range: `from` / `to` as given (already parsed) or defaulted, `from`
/// rounded down and `to` up to the bucket width, at most `max_buckets` buckets.
///
/// Defaults: `to` is the end of the bucket holding `now`; a missing bound lies
/// [`Interval::default_span_ms`] away from the other one.
pub fn resolve_range(
    from: Option<UtcMillis>,
    to: Option<UtcMillis>,
    interval: Interval,
    max_buckets: i64,
    now: UtcMillis,
) -> Result<FootfallQuery, String> {
    let width = interval.ms();
    let span = interval.default_span_ms();
    let (from, to) = match (from, to) {
        (Some(f), Some(t)) => (f.0, t.0),
        (Some(f), None) => (f.0, f.0.saturating_add(span)),
        (None, Some(t)) => (t.0.saturating_sub(span).max(0), t.0),
        (None, None) => {
            let t = ceil_to(now.0.max(0), width).unwrap_or(now.0);
            (t.saturating_sub(span).max(0), t)
        }
    };
    if from >= to {
        return Err("from must be before to".into());
    }
    let from = from - from.rem_euclid(width);
    let to = ceil_to(to, width).ok_or_else(|| "to is out of range".to_owned())?;
    let buckets = (to - from) / width;
    let max = max_buckets.min(MAX_FOOTFALL_BUCKETS);
    if buckets > max {
        return Err(format!(
            "from..to spans {buckets} buckets of {}; at most {max}: narrow the range{}",
            interval.as_str(),
            if interval == Interval::Day {
                ""
            } else {
                " or use a wider interval"
            }
        ));
    }
    FootfallQuery::new(UtcMillis(from), UtcMillis(to), width).map_err(|e| e.to_string())
}

fn ceil_to(t: i64, width: i64) -> Option<i64> {
    let rem = t.rem_euclid(width);
    if rem == 0 {
        Some(t)
    } else {
        t.checked_add(width - rem)
    }
}

/// `GET /v1/stores/{id}/footfall`'s answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FootfallReport {
    pub store: StoreId,
    pub store_name: String,
    pub interval: Interval,
    /// The range reported, aligned to the interval (RFC 3339, UTC).
    #[serde(with = "crate::timefmt::rfc3339")]
    pub from: UtcMillis,
    #[serde(with = "crate::timefmt::rfc3339")]
    pub to: UtcMillis,
    /// Every bucket of `[from, to)`, in order, also the empty ones.
    pub buckets: Vec<FootfallBucket>,
    pub totals: FootfallTotals,
}

/// One bucket of a footfall report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FootfallBucket {
    #[serde(with = "crate::timefmt::rfc3339")]
    pub start: UtcMillis,
    #[serde(with = "crate::timefmt::rfc3339")]
    pub end: UtcMillis,
    pub visitors_in: u64,
    pub visitors_out: u64,
    /// The latest occupancy reported in the bucket.
    pub occupancy: Option<u64>,
    pub transactions: u64,
    /// transactions / visitors_in; `None` when visitors_in is 0.
    pub conversion: Option<f64>,
    /// Some 15-minute interval of the bucket has no footfall event, or names missing cameras.
    pub missing_data: bool,
    /// Cameras named missing by any event of the bucket, sorted.
    pub cameras_missing: Vec<String>,
}

/// The whole range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FootfallTotals {
    pub visitors_in: u64,
    pub visitors_out: u64,
    pub transactions: u64,
    /// transactions / visitors_in over the range; `None` when visitors_in is 0.
    pub conversion: Option<f64>,
    /// The occupancy of the latest bucket that reported one.
    pub occupancy: Option<u64>,
    /// Any bucket has missing data.
    pub missing_data: bool,
    /// How many buckets have missing data.
    pub buckets_missing: u64,
    /// Cameras named missing anywhere in the range, sorted (at most 64 per bucket).
    pub cameras_missing: Vec<String>,
}

/// transactions / visitors; `None` when nobody was counted.
pub fn conversion(transactions: u64, visitors: u64) -> Option<f64> {
    (visitors > 0).then(|| transactions as f64 / visitors as f64)
}

impl FootfallReport {
    /// The report of `store` over `query`, from the storage's tallies (any order, absent
    /// buckets are empty).
    pub fn build(
        store: &Store,
        interval: Interval,
        query: &FootfallQuery,
        tallies: &[FootfallTally],
    ) -> Self {
        let width = query.bucket_ms();
        let slots = query.slots_per_bucket();
        let mut tallies: Vec<&FootfallTally> = tallies.iter().collect();
        tallies.sort_by_key(|t| t.start);
        let mut next = tallies.into_iter().peekable();
        let empty = FootfallTally::default();
        let mut buckets = Vec::with_capacity(usize::try_from(query.buckets()).unwrap_or(0));
        let mut start = query.from().0;
        while start < query.to().0 {
            // Skip anything the storage answered outside the buckets (it should not).
            while next.peek().is_some_and(|t| t.start.0 < start) {
                next.next();
            }
            let t = match next.peek() {
                Some(t) if t.start.0 == start => next.next().unwrap_or(&empty),
                _ => &empty,
            };
            buckets.push(FootfallBucket {
                start: UtcMillis(start),
                end: UtcMillis(start + width),
                visitors_in: t.entered,
                visitors_out: t.exited,
                occupancy: t.occupancy,
                transactions: t.transactions,
                conversion: conversion(t.transactions, t.entered),
                missing_data: t.slots_reported < slots || !t.cameras_missing.is_empty(),
                cameras_missing: t.cameras_missing.clone(),
            });
            start += width;
        }
        let totals = FootfallTotals::of(&buckets);
        FootfallReport {
            store: store.id.clone(),
            store_name: store.name.clone(),
            interval,
            from: query.from(),
            to: query.to(),
            buckets,
            totals,
        }
    }
}

impl FootfallTotals {
    fn of(buckets: &[FootfallBucket]) -> Self {
        // Saturating: a sum never panics, whatever the stores uploaded.
        let sum =
            |f: fn(&FootfallBucket) -> u64| buckets.iter().map(f).fold(0u64, u64::saturating_add);
        let visitors_in = sum(|b| b.visitors_in);
        let transactions = sum(|b| b.transactions);
        let mut cameras: Vec<String> = buckets
            .iter()
            .flat_map(|b| b.cameras_missing.iter().cloned())
            .collect();
        cameras.sort();
        cameras.dedup();
        let buckets_missing = buckets.iter().filter(|b| b.missing_data).count() as u64;
        FootfallTotals {
            visitors_in,
            visitors_out: sum(|b| b.visitors_out),
            transactions,
            conversion: conversion(transactions, visitors_in),
            occupancy: buckets.iter().rev().find_map(|b| b.occupancy),
            missing_data: buckets_missing > 0,
            buckets_missing,
            cameras_missing: cameras,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aisle_protocol::Currency;

    const H: i64 = 3_600_000;
    /// 2026-11-22T00:00:00Z.
    const DAY0: i64 = 1_795_305_600_000;

    fn store() -> Store {
        Store {
            id: StoreId::parse("S001").unwrap(),
            name: "Riverside".into(),
            currency: Currency::parse("CNY").unwrap(),
            created_at: UtcMillis(0),
        }
    }

    fn tally(start: i64, entered: u64, slots: u64, transactions: u64) -> FootfallTally {
        FootfallTally {
            start: UtcMillis(start),
            entered,
            exited: entered,
            slots_reported: slots,
            events: slots,
            transactions,
            ..FootfallTally::default()
        }
    }

    #[test]
    fn intervals_parse_and_have_widths() {
        assert_eq!(Interval::parse("15m").unwrap().ms(), 900_000);
        assert_eq!(Interval::parse(" 1h ").unwrap().ms(), H);
        assert_eq!(Interval::parse("1d").unwrap().ms(), 24 * H);
        let err = Interval::parse("2h").unwrap_err();
        assert!(
            err.contains("15m, 1h or 1d") && err.contains("'2h'"),
            "{err}"
        );
        assert_eq!(
            serde_json::to_string(&Interval::Quarter).unwrap(),
            "\"15m\""
        );
    }

    #[test]
    fn ranges_align_outward_default_and_are_bounded() {
        let now = UtcMillis(DAY0 + 10 * H + 7);
        let r = |f: Option<i64>, t: Option<i64>, i: Interval| {
            resolve_range(f.map(UtcMillis), t.map(UtcMillis), i, 3_000, now)
                .map(|q| ((q.from().0 - DAY0) / 60_000, (q.to().0 - DAY0) / 60_000))
        };
        // Given bounds round outward to the bucket.
        assert_eq!(
            r(
                Some(DAY0 + 8 * H + 1),
                Some(DAY0 + 9 * H + 1),
                Interval::Hour
            ),
            Ok((480, 600))
        );
        assert_eq!(
            r(
                Some(DAY0 + 8 * H + 1),
                Some(DAY0 + 8 * H + 2),
                Interval::Quarter
            ),
            Ok((480, 495))
        );
        // Defaults: the day up to the end of the current hour; 30 days of days.
        assert_eq!(r(None, None, Interval::Hour), Ok((660 - 1440, 660)));
        assert_eq!(r(None, None, Interval::Day), Ok((-29 * 1440, 1440)));
        assert_eq!(r(Some(DAY0), None, Interval::Hour), Ok((0, 1440)));
        assert_eq!(r(None, Some(DAY0), Interval::Quarter), Ok((-1440, 0)));
        // Order, and the bucket bound with its advice.
        assert_eq!(
            r(Some(DAY0 + H), Some(DAY0 + H), Interval::Hour),
            Err("from must be before to".into())
        );
        assert!(r(Some(DAY0 + 2 * H), Some(DAY0 + H), Interval::Hour).is_err());
        let err = r(Some(DAY0), Some(DAY0 + 32 * 24 * H), Interval::Quarter).unwrap_err();
        assert!(
            err.contains("3072 buckets of 15m; at most 3000") && err.contains("wider interval"),
            "{err}"
        );
        assert!(r(Some(DAY0), Some(DAY0 + 31 * 24 * H), Interval::Quarter).is_ok());
        let chart = resolve_range(
            Some(UtcMillis(DAY0)),
            Some(UtcMillis(DAY0 + 8 * 24 * H)),
            Interval::Hour,
            168,
            now,
        );
        assert!(chart.unwrap_err().contains("at most 168"));
        // Far bounds never overflow.
        assert!(r(Some(0), Some(i64::MAX), Interval::Day).is_err());
    }

    #[test]
    fn reports_fill_every_bucket_and_flag_missing_data() {
        let q = FootfallQuery::new(UtcMillis(DAY0 + 8 * H), UtcMillis(DAY0 + 12 * H), H).unwrap();
        let mut offline = tally(DAY0 + 10 * H, 6, 4, 0);
        offline.cameras_missing = vec!["cam-2".into()];
        offline.occupancy = Some(4);
        let tallies = vec![
            offline,
            tally(DAY0 + 8 * H, 20, 4, 5),
            // 09:00: one interval of four never reported.
            tally(DAY0 + 9 * H, 10, 3, 10),
        ];
        let r = FootfallReport::build(&store(), Interval::Hour, &q, &tallies);
        let summary: Vec<_> = r
            .buckets
            .iter()
            .map(|b| (b.visitors_in, b.transactions, b.conversion, b.missing_data))
            .collect();
        assert_eq!(
            summary,
            vec![
                (20, 5, Some(0.25), false),
                (10, 10, Some(1.0), true),
                (6, 0, Some(0.0), true),
                // 11:00: nothing at all is missing data, not zero visitors with no conversion.
                (0, 0, None, true),
            ]
        );
        assert_eq!(r.buckets[2].cameras_missing, vec!["cam-2"]);
        assert_eq!(r.buckets[3].end, UtcMillis(DAY0 + 12 * H));
        let t = &r.totals;
        assert_eq!(
            (t.visitors_in, t.visitors_out, t.transactions),
            (36, 36, 15)
        );
        assert_eq!(t.conversion, Some(15.0 / 36.0));
        assert_eq!(
            (t.occupancy, t.missing_data, t.buckets_missing),
            (Some(4), true, 3)
        );
        assert_eq!(t.cameras_missing, vec!["cam-2"]);

        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["interval"], "1h");
        assert_eq!(json["from"], "2026-11-22T08:00:00Z");
        assert_eq!(json["buckets"][0]["end"], "2026-11-22T09:00:00Z");
        assert_eq!(json["buckets"][3]["conversion"], serde_json::Value::Null);
        assert_eq!(json["buckets"][0]["occupancy"], serde_json::Value::Null);
        let back: FootfallReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn an_empty_range_is_all_missing_with_no_conversion() {
        let q = FootfallQuery::new(UtcMillis(DAY0), UtcMillis(DAY0 + 24 * H), 24 * H).unwrap();
        let r = FootfallReport::build(&store(), Interval::Day, &q, &[]);
        assert_eq!(r.buckets.len(), 1);
        assert!(r.buckets[0].missing_data && r.totals.missing_data);
        assert_eq!((r.totals.conversion, r.totals.occupancy), (None, None));
    }
}
