//! Wall clocks. The gateway may have no RTC and a wrong clock, so nothing reads the system time
//! directly: everything asks a [`WallClock`], and tests drive a [`ManualClock`].
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use aisle_protocol::UtcMillis;

/// A source of local wall time in UTC milliseconds since the Unix epoch.
pub trait WallClock: Send + Sync + Debug {
    fn now_ms(&self) -> i64;

    fn now(&self) -> UtcMillis {
        UtcMillis(self.now_ms())
    }
}

/// The operating system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_ms(&self) -> i64 {
        UtcMillis::now().0
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock {
    ms: AtomicI64,
}

impl ManualClock {
    pub fn new(start_ms: i64) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            ms: AtomicI64::new(start_ms),
        })
    }

    pub fn set(&self, ms: i64) {
        self.ms.store(ms, Ordering::SeqCst);
    }

    pub fn advance(&self, ms: i64) {
        self.ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl WallClock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.ms.load(Ordering::SeqCst)
    }
}

/// Another clock shifted by a fixed amount (`[clock] offset_ms`: simulates a gateway whose
/// clock is wrong).
#[derive(Debug)]
pub struct OffsetClock {
    inner: Arc<dyn WallClock>,
    offset_ms: i64,
}

impl OffsetClock {
    pub fn new(inner: Arc<dyn WallClock>, offset_ms: i64) -> OffsetClock {
        OffsetClock { inner, offset_ms }
    }
}

impl WallClock for OffsetClock {
    fn now_ms(&self) -> i64 {
        self.inner.now_ms().saturating_add(self.offset_ms)
    }
}

/// Hub-corrected time: local clock plus the last measured skew (hub time minus local time).
/// Prices activate and events are stamped on this time, so a gateway with a wrong clock still
/// charges the right price at the right moment.
#[derive(Debug)]
pub struct HubTime {
    local: Arc<dyn WallClock>,
    skew_ms: AtomicI64,
}

impl HubTime {
    pub fn new(local: Arc<dyn WallClock>, skew_ms: i64) -> HubTime {
        HubTime {
            local,
            skew_ms: AtomicI64::new(skew_ms),
        }
    }

    /// Local wall time, uncorrected.
    pub fn local_ms(&self) -> i64 {
        self.local.now_ms()
    }

    pub fn skew_ms(&self) -> i64 {
        self.skew_ms.load(Ordering::SeqCst)
    }

    pub fn set_skew_ms(&self, skew_ms: i64) {
        self.skew_ms.store(skew_ms, Ordering::SeqCst);
    }

    /// Local time plus skew.
    pub fn now(&self) -> UtcMillis {
        UtcMillis(self.local.now_ms().saturating_add(self.skew_ms()))
    }
}

/// RFC 3339 in UTC with milliseconds, as the public API shows instants.
pub fn rfc3339(t: UtcMillis) -> String {
    let nanos = i128::from(t.0) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.0.to_string())
}

/// The UTC calendar date of `t` (scan dates such as best-before are read against it).
pub fn utc_date(t: UtcMillis) -> time::Date {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.0) * 1_000_000)
        .map(|d| d.date())
        .unwrap_or(time::Date::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_and_offset_and_corrected_time() {
        let m = ManualClock::new(1_000);
        m.advance(500);
        assert_eq!(m.now_ms(), 1_500);
        let off = Arc::new(OffsetClock::new(m.clone(), -200));
        assert_eq!(off.now_ms(), 1_300);
        let hub = HubTime::new(off, 0);
        assert_eq!(hub.now(), UtcMillis(1_300));
        hub.set_skew_ms(200);
        assert_eq!(hub.now(), UtcMillis(1_500));
        m.set(10);
        assert_eq!(hub.now(), UtcMillis(10));
        assert_eq!(hub.local_ms(), -190);
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UtcMillis(0)), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UtcMillis(1_767_225_600_123)),
            "2026-01-01T00:00:00.123Z"
        );
    }
}
