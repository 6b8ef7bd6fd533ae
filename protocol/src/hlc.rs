//! Hybrid logical clock (Kulkarni et al., 2014): timestamps that follow wall time when clocks are
//! sane and still order causally related events when a gateway's clock is wrong or jumps back.
use serde::{Deserialize, Serialize};

/// One HLC timestamp. Ordered by `wall_ms`, then `counter`.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize,
)]
pub struct Hlc {
    pub wall_ms: u64,
    pub counter: u32,
}

/// The clock state one node keeps. Physical time is passed in, so the clock is pure and testable.
#[derive(Clone, Debug, Default)]
pub struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    pub fn new(last: Hlc) -> Self {
        HlcClock { last }
    }

    pub fn last(&self) -> Hlc {
        self.last
    }

    /// A timestamp for a local event.
    pub fn tick(&mut self, physical_ms: u64) -> Hlc {
        self.last = if physical_ms > self.last.wall_ms {
            Hlc {
                wall_ms: physical_ms,
                counter: 0,
            }
        } else {
            Hlc {
                wall_ms: self.last.wall_ms,
                counter: self.last.counter.saturating_add(1),
            }
        };
        self.last
    }

    /// Merges a timestamp received from a peer; the result is after both.
    pub fn observe(&mut self, remote: Hlc, physical_ms: u64) -> Hlc {
        let wall = physical_ms.max(self.last.wall_ms).max(remote.wall_ms);
        let counter = if wall == self.last.wall_ms && wall == remote.wall_ms {
            self.last.counter.max(remote.counter).saturating_add(1)
        } else if wall == self.last.wall_ms {
            self.last.counter.saturating_add(1)
        } else if wall == remote.wall_ms {
            remote.counter.saturating_add(1)
        } else {
            0
        };
        self.last = Hlc {
            wall_ms: wall,
            counter,
        };
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_when_clock_goes_back() {
        let mut c = HlcClock::default();
        let a = c.tick(1_000);
        let b = c.tick(500);
        let d = c.tick(500);
        assert!(a < b && b < d);
        assert_eq!(b.wall_ms, 1_000);
    }

    #[test]
    fn observe_orders_after_remote() {
        let mut c = HlcClock::default();
        c.tick(1_000);
        let remote = Hlc {
            wall_ms: 5_000,
            counter: 7,
        };
        let m = c.observe(remote, 2_000);
        assert!(m > remote);
        assert!(c.tick(2_000) > m);
    }

    proptest::proptest! {
        #[test]
        fn always_increasing(steps in proptest::collection::vec((0u64..10_000, proptest::option::of((0u64..20_000, 0u32..5))), 1..200)) {
            let mut c = HlcClock::default();
            let mut prev = c.last();
            for (phys, remote) in steps {
                let next = match remote {
                    Some((w, n)) => {
                        let r = Hlc { wall_ms: w, counter: n };
                        let t = c.observe(r, phys);
                        proptest::prop_assert!(t > r);
                        t
                    }
                    None => c.tick(phys),
                };
                proptest::prop_assert!(next > prev);
                proptest::prop_assert!(next.wall_ms >= phys);
                prev = next;
            }
        }
    }
}
