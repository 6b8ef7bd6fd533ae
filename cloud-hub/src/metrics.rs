//! Prometheus metrics of one hub process (text exposition at `GET /metrics`).
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of the request counter. `route` is the matched route template, never the raw path,
/// so ids in paths cannot blow up the number of series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

/// Labels of the shelf-label event counter: the event kind (one of four fixed strings).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LabelEventLabels {
    pub kind: &'static str,
}

/// The hub's metrics. One per server, so tests can run several hubs in one process.
#[derive(Debug)]
pub struct HubMetrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub events_ingested: Counter,
    pub label_events: Family<LabelEventLabels, Counter>,
    pub changes_served: Counter,
    pub long_polls_waiting: Gauge,
    pub price_batches: Counter,
    pub price_batch_items: Counter,
    pub orders_created: Counter,
    pub orders_cancelled: Counter,
    pub orders_expired_by_hub: Counter,
    pub webhooks_delivered: Counter,
    pub webhook_failures: Counter,
    pub webhooks_pending: Gauge,
    pub signed_refused: Counter,
    pub enrolments: Counter,
    pub enrolments_refused: Counter,
}

impl Default for HubMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl HubMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("aisle_hub");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            requests.clone(),
        );
        let events_ingested = Counter::default();
        registry.register(
            "events_ingested",
            "Ledger events in accepted gateway uploads (replays included)",
            events_ingested.clone(),
        );
        let label_events = Family::<LabelEventLabels, Counter>::default();
        registry.register(
            "label_events",
            "Shelf-label events in accepted gateway uploads (replays included), by kind",
            label_events.clone(),
        );
        let changes_served = Counter::default();
        registry.register(
            "changes_served",
            "Changefeed entries sent to gateways",
            changes_served.clone(),
        );
        let long_polls_waiting = Gauge::default();
        registry.register(
            "long_polls_waiting",
            "Changefeed long-polls currently waiting",
            long_polls_waiting.clone(),
        );
        let price_batches = Counter::default();
        registry.register(
            "price_batches",
            "Price batches stored",
            price_batches.clone(),
        );
        let price_batch_items = Counter::default();
        registry.register(
            "price_batch_items",
            "Price rows in stored batches",
            price_batch_items.clone(),
        );
        let orders_created = Counter::default();
        registry.register(
            "orders_created",
            "Pickup orders placed (identical retries not counted)",
            orders_created.clone(),
        );
        let orders_cancelled = Counter::default();
        registry.register(
            "orders_cancelled",
            "Pickup orders cancelled by HQ",
            orders_cancelled.clone(),
        );
        let orders_expired_by_hub = Counter::default();
        registry.register(
            "orders_expired_by_hub",
            "Pickup orders the hub expired because the store said nothing in time",
            orders_expired_by_hub.clone(),
        );
        let webhooks_delivered = Counter::default();
        registry.register(
            "webhooks_delivered",
            "Webhooks delivered (a 2xx answer)",
            webhooks_delivered.clone(),
        );
        let webhook_failures = Counter::default();
        registry.register(
            "webhook_failures",
            "Webhook attempts that failed (non-2xx, timeout, connection error); each is retried",
            webhook_failures.clone(),
        );
        let webhooks_pending = Gauge::default();
        registry.register(
            "webhooks_pending",
            "Webhooks in the outbox not delivered yet (as last seen by this process's worker)",
            webhooks_pending.clone(),
        );
        let signed_refused = Counter::default();
        registry.register(
            "signed_requests_refused",
            "Gateway requests refused for their signature, clock, nonce or key",
            signed_refused.clone(),
        );
        let enrolments = Counter::default();
        registry.register(
            "enrolments",
            "Gateways enrolled with a one-time code",
            enrolments.clone(),
        );
        let enrolments_refused = Counter::default();
        registry.register(
            "enrolments_refused",
            "Enrolment attempts refused (wrong, used, expired or malformed code or key, rate limit)",
            enrolments_refused.clone(),
        );
        HubMetrics {
            signed_refused,
            enrolments,
            enrolments_refused,
            registry,
            orders_created,
            orders_cancelled,
            orders_expired_by_hub,
            webhooks_delivered,
            webhook_failures,
            webhooks_pending,
            requests,
            events_ingested,
            label_events,
            changes_served,
            long_polls_waiting,
            price_batches,
            price_batch_items,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Counts a waiting long-poll for as long as it lives (also when the client goes away).
#[derive(Debug)]
pub struct WaitingPoll(Gauge);

impl WaitingPoll {
    pub fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        WaitingPoll(gauge.clone())
    }
}

impl Drop for WaitingPoll {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_route_labels() {
        let m = HubMetrics::new();
        m.requests
            .get_or_create(&RequestLabels {
                route: "/healthz".into(),
                method: "GET".into(),
                status: 200,
            })
            .inc();
        {
            let _w = WaitingPoll::new(&m.long_polls_waiting);
            assert!(m.render().contains("aisle_hub_long_polls_waiting 1"));
        }
        let text = m.render();
        assert!(
            text.contains(
                r#"aisle_hub_http_requests_total{route="/healthz",method="GET",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("aisle_hub_long_polls_waiting 0"));
    }
}
