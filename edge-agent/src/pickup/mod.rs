//! Click-and-collect at the store, outside the ledger: staff sign-in and sessions, the rate
//! limits that stop PIN and code guessing, the redeem metrics, and the expiry sweeper.
//!
//! Rate limits live in this process's memory (sliding windows keyed by client address, device,
//! store and order). A restart forgets them; an attacker at the counter cannot restart the
//! agent, and the ledger itself never depends on them (a second redeem is refused from the
//! ledger, not from here).
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use aisle_protocol::{StoreId, UtcMillis};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::clock::HubTime;
use crate::config::{PickupSettings, StaffConfig};
use crate::ledger::OrderStatus;

pub mod staff;
pub mod sweeper;

/// Wrong PINs from one client address before sign-in answers 429 ...
pub const SIGN_IN_FAILURES: usize = 5;
/// ... within this window.
pub const SIGN_IN_WINDOW_MS: i64 = 5 * 60_000;
/// Failed codes per device ...
pub const DEVICE_CODE_FAILURES: usize = 5;
/// ... and store-wide ...
pub const STORE_CODE_FAILURES: usize = 30;
/// Redeem attempts per order once a code or QR names it ...
pub const ORDER_ATTEMPTS: usize = 10;
/// ... within this window.
pub const REDEEM_WINDOW_MS: i64 = 10 * 60_000;
/// Most keys one limiter tracks (addresses, devices, orders).
const MAX_KEYS: usize = 10_000;

/// Every `outcome` label of `aisle_pickup_redeem_total`.
pub const REDEEM_OUTCOMES: &[&str] = &[
    "collected",
    "already_collected",
    "bad_token",
    "no_key",
    "wrong_store",
    "expired",
    "not_found",
    "not_ready",
    "cancelled",
    "rate_limited",
];

/// Sliding windows of event times per key, bounded in keys and in entries per key.
#[derive(Debug)]
pub struct Windows {
    window_ms: i64,
    limit: usize,
    map: HashMap<String, VecDeque<i64>>,
}

impl Windows {
    pub fn new(limit: usize, window_ms: i64) -> Windows {
        Windows {
            window_ms,
            limit,
            map: HashMap::new(),
        }
    }

    fn prune(q: &mut VecDeque<i64>, now: i64, window: i64) {
        while q.front().is_some_and(|&t| t <= now - window) {
            q.pop_front();
        }
    }

    /// Seconds until `key` may try again, when it reached its limit.
    pub fn retry_after_s(&mut self, key: &str, now: UtcMillis) -> Option<u64> {
        let q = self.map.get_mut(key)?;
        Self::prune(q, now.0, self.window_ms);
        if q.len() < self.limit {
            return None;
        }
        let oldest = q.front().copied().unwrap_or(now.0);
        let ms = (oldest + self.window_ms - now.0).max(1);
        Some(u64::try_from(ms).unwrap_or(1).div_ceil(1000))
    }

    /// Takes a slot for `key` (counting it now) or says how long to wait: the check and the
    /// count are one step, so parallel requests cannot all pass the check before any is counted.
    pub fn take(&mut self, key: &str, now: UtcMillis) -> Result<(), u64> {
        match self.retry_after_s(key, now) {
            Some(s) => Err(s),
            None => {
                self.record(key, now);
                Ok(())
            }
        }
    }

    /// Gives back a slot taken at `at` (the attempt turned out not to count).
    pub fn give_back(&mut self, key: &str, at: UtcMillis) {
        if let Some(q) = self.map.get_mut(key)
            && let Some(i) = q.iter().rposition(|&t| t == at.0)
        {
            q.remove(i);
        }
    }

    /// Counts one event for `key`.
    pub fn record(&mut self, key: &str, now: UtcMillis) {
        if !self.map.contains_key(key) && self.map.len() >= MAX_KEYS {
            let (w, n) = (self.window_ms, now.0);
            self.map.retain(|_, q| {
                Self::prune(q, n, w);
                !q.is_empty()
            });
            if self.map.len() >= MAX_KEYS {
                // Still full of live keys: forget one rather than grow.
                if let Some(k) = self.map.keys().next().cloned() {
                    self.map.remove(&k);
                }
            }
        }
        let q = self.map.entry(key.to_string()).or_default();
        Self::prune(q, now.0, self.window_ms);
        q.push_back(now.0);
        while q.len() > self.limit {
            q.pop_front();
        }
    }
}

/// The redeem limits together, so one lock decides.
#[derive(Debug)]
pub struct RedeemLimits {
    pub device_codes: Windows,
    pub store_codes: Windows,
    pub orders: Windows,
}

/// `aisle_pickup_redeem_total{outcome}` and `aisle_pickup_orders{status}`.
#[derive(Clone, Debug)]
pub struct PickupMetrics {
    redeem: Family<Vec<(String, String)>, Counter>,
    orders: Family<Vec<(String, String)>, Gauge>,
}

impl Default for PickupMetrics {
    fn default() -> Self {
        let redeem = Family::<Vec<(String, String)>, Counter>::default();
        for o in REDEEM_OUTCOMES {
            drop(redeem.get_or_create(&vec![("outcome".to_string(), (*o).to_string())]));
        }
        let orders = Family::<Vec<(String, String)>, Gauge>::default();
        for s in OrderStatus::ALL {
            drop(orders.get_or_create(&vec![("status".to_string(), s.as_str().to_string())]));
        }
        PickupMetrics { redeem, orders }
    }
}

impl PickupMetrics {
    /// Registers both in `registry` (prefix `aisle`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "pickup_redeem",
            "Pickup redeem attempts at this store, by outcome",
            self.redeem.clone(),
        );
        registry.register(
            "pickup_orders",
            "Pickup orders the store holds, by status",
            self.orders.clone(),
        );
    }

    pub fn redeemed(&self, outcome: &str) {
        self.redeem
            .get_or_create(&vec![("outcome".to_string(), outcome.to_string())])
            .inc();
    }

    /// How many times `outcome` was counted (tests).
    pub fn redeem_count(&self, outcome: &str) -> u64 {
        self.redeem
            .get_or_create(&vec![("outcome".to_string(), outcome.to_string())])
            .get()
    }

    pub fn set_orders(&self, counts: &[(OrderStatus, u64)]) {
        for (s, n) in counts {
            self.orders
                .get_or_create(&vec![("status".to_string(), s.as_str().to_string())])
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }
}

/// What the pickup API shares: the store, the staff list, sessions, limits and metrics.
#[derive(Debug)]
pub struct PickupShared {
    pub store: StoreId,
    pub staff: Arc<Vec<StaffConfig>>,
    pub sessions: staff::Sessions,
    pub sign_in_failures: Mutex<Windows>,
    pub redeem_limits: Mutex<RedeemLimits>,
    pub metrics: PickupMetrics,
    /// At most two PIN checks hash at once (argon2 is CPU- and memory-heavy by design).
    pub hashing: tokio::sync::Semaphore,
    pub time: Arc<HubTime>,
}

impl PickupShared {
    pub fn new(store: StoreId, settings: Option<&PickupSettings>, time: Arc<HubTime>) -> Self {
        PickupShared {
            store,
            staff: Arc::new(settings.map(|s| s.staff.clone()).unwrap_or_default()),
            sessions: staff::Sessions::default(),
            sign_in_failures: Mutex::new(Windows::new(SIGN_IN_FAILURES, SIGN_IN_WINDOW_MS)),
            redeem_limits: Mutex::new(RedeemLimits {
                device_codes: Windows::new(DEVICE_CODE_FAILURES, REDEEM_WINDOW_MS),
                store_codes: Windows::new(STORE_CODE_FAILURES, REDEEM_WINDOW_MS),
                orders: Windows::new(ORDER_ATTEMPTS, REDEEM_WINDOW_MS),
            }),
            metrics: PickupMetrics::default(),
            hashing: tokio::sync::Semaphore::new(2),
            time,
        }
    }

    pub fn now(&self) -> UtcMillis {
        self.time.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_limit_and_slide() {
        let mut w = Windows::new(3, 10_000);
        for t in [0, 1_000, 2_000] {
            assert_eq!(w.retry_after_s("a", UtcMillis(t)), None);
            w.record("a", UtcMillis(t));
        }
        assert_eq!(w.retry_after_s("a", UtcMillis(2_500)), Some(8));
        assert_eq!(w.retry_after_s("b", UtcMillis(2_500)), None);
        // The first one slides out of the window.
        assert_eq!(w.retry_after_s("a", UtcMillis(10_000)), None);
        // take = check + count in one step; give_back undoes one.
        assert_eq!(w.take("c", UtcMillis(0)), Ok(()));
        assert_eq!(w.take("c", UtcMillis(1)), Ok(()));
        assert_eq!(w.take("c", UtcMillis(2)), Ok(()));
        assert_eq!(w.take("c", UtcMillis(3)), Err(10));
        w.give_back("c", UtcMillis(2));
        assert_eq!(w.take("c", UtcMillis(3)), Ok(()));
        for i in 0..(MAX_KEYS as i64 + 10) {
            w.record(&format!("k{i}"), UtcMillis(20_000));
        }
        assert!(w.map.len() <= MAX_KEYS);
    }
}
