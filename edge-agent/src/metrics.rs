//! The agent's Prometheus metrics. The ledger and the sync tasks own their counters (typed, in
//! their own modules); this registry only names them and adds gauges read at scrape time.
//! Camera ingestion's metrics are named `aisle_footfall_*` and `aisle_camera_online` (a second
//! registry, without the `aisle_agent` prefix).
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::footfall::FootfallShared;
use crate::ledger::Ledger;
use crate::pickup::PickupShared;
use crate::sync::SyncShared;

#[derive(Debug)]
pub struct AgentMetrics {
    registry: Registry,
    footfall: Registry,
    outbox_depth: Gauge,
    last_seq: Gauge,
    clock_skew_ms: Gauge,
}

impl AgentMetrics {
    pub fn new(
        ledger: &Ledger,
        sync: &SyncShared,
        footfall: &FootfallShared,
        pickup: &PickupShared,
    ) -> AgentMetrics {
        let mut registry = Registry::with_prefix("aisle_agent");
        let l = ledger.metrics();
        registry.register(
            "sales_committed",
            "Sales committed to the ledger (replays not counted)",
            l.sales_committed.clone(),
        );
        registry.register(
            "ledger_transactions",
            "Write transactions committed by the ledger writer",
            l.transactions.clone(),
        );
        registry.register(
            "ledger_events",
            "Events appended to the ledger",
            l.events.clone(),
        );
        registry.register(
            "group_commit_size",
            "Commands per ledger transaction (group commit batch size)",
            l.group_size.clone(),
        );
        let outbox_depth = Gauge::default();
        registry.register(
            "outbox_depth",
            "Ledger events not yet acknowledged by the hub",
            outbox_depth.clone(),
        );
        let last_seq = Gauge::default();
        registry.register(
            "ledger_last_seq",
            "Seq of the last ledger event",
            last_seq.clone(),
        );
        let s = &sync.metrics;
        registry.register("sync_errors", "Failed sync requests", s.errors.clone());
        registry.register(
            "sync_refusals",
            "Sync requests the hub refused (4xx) in a way retrying cannot fix; retried slowly",
            s.refusals.clone(),
        );
        registry.register(
            "clock_skew_ms",
            "Hub time minus local time, milliseconds",
            s.clock_skew_ms.clone(),
        );
        registry.register(
            "clock_alarm",
            "1 when the clock skew is beyond skew_alarm_ms",
            s.clock_alarm.clone(),
        );
        registry.register(
            "link_up",
            "1 when the last sync request succeeded",
            s.link_up.clone(),
        );
        let mut footfall_registry = Registry::with_prefix("aisle");
        footfall.metrics.register(&mut footfall_registry);
        pickup.metrics.register(&mut footfall_registry);
        AgentMetrics {
            registry,
            footfall: footfall_registry,
            outbox_depth,
            last_seq,
            clock_skew_ms: s.clock_skew_ms.clone(),
        }
    }

    /// Adds the shelf-label planner's metrics (`aisle_labels_*`).
    pub fn register_labels(&mut self, labels: &crate::labels::LabelMetrics) {
        labels.register(&mut self.footfall);
    }

    /// Self-checkout lanes' metrics (`aisle_lane_*`).
    pub fn register_lanes(&mut self, lanes: &crate::lane::LaneMetrics) {
        lanes.register(&mut self.footfall);
    }

    /// Prometheus text exposition, with gauges refreshed from the ledger's committed view.
    pub fn render(&self, ledger: &Ledger) -> Result<String, std::fmt::Error> {
        let v = ledger.view();
        self.outbox_depth
            .set(i64::try_from(v.outbox_depth()).unwrap_or(i64::MAX));
        self.last_seq
            .set(i64::try_from(v.last_seq).unwrap_or(i64::MAX));
        // The persisted skew, so a restart while offline still shows the last known one.
        self.clock_skew_ms.set(v.skew_ms);
        let mut out = String::new();
        encode_registry(&mut out, &self.registry)?;
        encode_registry(&mut out, &self.footfall)?;
        encode_eof(&mut out)?;
        Ok(out)
    }
}
