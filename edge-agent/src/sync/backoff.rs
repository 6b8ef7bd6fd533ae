//! Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And
//! Jitter"): the n-th retry waits a uniform random time in [0, min(cap, base * 2^n)]. Pure: the
//! random source is passed in.
use std::time::Duration;

use rand::Rng;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    base_ms: u64,
    cap_ms: u64,
    attempt: u32,
}

impl Backoff {
    pub fn new(base_ms: u64, cap_ms: u64) -> Backoff {
        Backoff {
            base_ms: base_ms.max(1),
            cap_ms: cap_ms.max(base_ms.max(1)),
            attempt: 0,
        }
    }

    /// The largest delay the `attempt`-th retry may wait: min(cap, base * 2^attempt).
    pub fn ceiling_ms(&self, attempt: u32) -> u64 {
        let factor = 1u64.checked_shl(attempt).unwrap_or(u64::MAX);
        self.base_ms.saturating_mul(factor).min(self.cap_ms)
    }

    /// The next delay, uniform in [0, ceiling], and one more attempt counted.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling_ms(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_millis(rng.random_range(0..=ceiling))
    }

    /// [`Backoff::next_delay`] with the thread's random generator (not held across awaits).
    pub fn next_random_delay(&mut self) -> Duration {
        self.next_delay(&mut rand::rng())
    }

    /// After a success the next failure starts small again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff::new(100, 2_000);
        let ceilings: Vec<u64> = (0..8).map(|n| b.ceiling_ms(n)).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1_600, 2_000, 2_000, 2_000]);
        assert_eq!(b.ceiling_ms(200), 2_000, "huge attempts do not overflow");
    }

    #[test]
    fn delays_stay_within_full_jitter_bounds_and_use_the_whole_range() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Backoff::new(100, 2_000);
        let mut max_seen = 0;
        let mut min_seen = u128::MAX;
        for n in 0..2_000u32 {
            let ceiling = u128::from(b.ceiling_ms(b.attempt()));
            let d = b.next_delay(&mut rng).as_millis();
            assert!(d <= ceiling, "attempt {n}: {d} > {ceiling}");
            assert!(d <= 2_000, "cap respected");
            max_seen = max_seen.max(d);
            min_seen = min_seen.min(d);
        }
        // Full jitter: delays spread over [0, cap], not clustered at the ceiling.
        assert!(max_seen > 1_800, "{max_seen}");
        assert!(min_seen < 100, "{min_seen}");
    }

    #[test]
    fn reset_starts_small_again() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut b = Backoff::new(50, 10_000);
        for _ in 0..10 {
            b.next_delay(&mut rng);
        }
        assert_eq!(b.attempt(), 10);
        b.reset();
        for _ in 0..50 {
            let mut c = b.clone();
            assert!(c.next_delay(&mut rng).as_millis() <= 50);
        }
    }
}
