//! Clock skew between the hub and this gateway, measured from one request: the hub stamped its
//! time somewhere during the round trip, so we compare it with the local midpoint (half the
//! round trip after sending). Pure functions.

/// Samples from round trips longer than this are too uncertain to use (a long-poll that waited
/// at the hub has a long round trip and no idea when the hub stamped it).
pub const MAX_SAMPLE_RTT_MS: i64 = 2_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkewSample {
    /// Hub time minus local time.
    pub skew_ms: i64,
    pub rtt_ms: i64,
}

/// Skew from one request sent at local `sent_ms`, answered at local `received_ms`, carrying the
/// hub's `server_ms`. `None` when the round trip is negative (local clock jumped) or too long.
pub fn measure(
    sent_ms: i64,
    received_ms: i64,
    server_ms: i64,
    max_rtt_ms: i64,
) -> Option<SkewSample> {
    let rtt = received_ms.checked_sub(sent_ms)?;
    if !(0..=max_rtt_ms).contains(&rtt) {
        return None;
    }
    let midpoint = sent_ms.checked_add(rtt / 2)?;
    Some(SkewSample {
        skew_ms: server_ms.checked_sub(midpoint)?,
        rtt_ms: rtt,
    })
}

/// Is the skew large enough to raise the clock alarm?
pub fn alarm(skew_ms: i64, threshold_ms: u64) -> bool {
    skew_ms.unsigned_abs() > threshold_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrects_by_half_the_round_trip() {
        // Sent at 1000, answered at 1200: the hub stamped 5100 at local ~1100.
        assert_eq!(
            measure(1_000, 1_200, 5_100, MAX_SAMPLE_RTT_MS),
            Some(SkewSample {
                skew_ms: 4_000,
                rtt_ms: 200
            })
        );
        // Gateway ahead of the hub: negative skew.
        assert_eq!(
            measure(10_000, 10_040, 7_020, 2_000).map(|s| s.skew_ms),
            Some(-3_000)
        );
        // Synchronised clocks with a slow link show no skew, not half the latency.
        assert_eq!(measure(0, 1_000, 500, 2_000).map(|s| s.skew_ms), Some(0));
    }

    #[test]
    fn refuses_uncertain_samples() {
        assert_eq!(measure(1_000, 900, 5_000, 2_000), None, "clock went back");
        assert_eq!(measure(0, 25_000, 25_000, 2_000), None, "long-poll");
        assert_eq!(measure(i64::MIN, i64::MAX, 0, 2_000), None, "overflow");
        assert!(measure(0, 2_000, 1_000, 2_000).is_some());
    }

    #[test]
    fn alarm_threshold_is_exclusive_and_symmetric() {
        assert!(!alarm(300_000, 300_000));
        assert!(alarm(300_001, 300_000));
        assert!(alarm(-300_001, 300_000));
        assert!(!alarm(-299_999, 300_000));
        assert!(alarm(i64::MIN, 300_000));
    }
}
