//! Outbound webhooks for pickup orders: built into a durable outbox row in the same transaction
//! as the change they report, delivered by [`WebhookWorker`] at least once.
//!
//! A delivery is `POST <url>` with the stored body, byte for byte on every attempt:
//!
//! ```text
//! content-type: application/json
//! x-aisle-signature: sha256=<hex HMAC-SHA256 of the exact body with the webhook secret>
//! x-aisle-event-id: <event_id>     (also in the body: deduplicate on it)
//! x-aisle-event-type: ready | collected | cancelled | expired
//!
//! {"event_id":"…","type":"ready","order_id":"web-10042","store":"S001","status":"ready",
//!  "at":"2026-11-22T08:00:00Z", …type-specific fields}
//! ```
//!
//! Any 2xx answer delivers it. Anything else (another status, a redirect, a timeout, a refused
//! connection) is retried with exponential backoff (base doubled per attempt, capped, with
//! jitter) for as long as it takes. A worker claims rows by moving their next attempt a lease
//! into the future, so several hub processes on one database do not deliver the same row at
//! once, and a hub that dies mid-delivery leaves the row to be retried when the lease runs out.
//! The receiver may therefore see an event more than once; `event_id` is stable across
//! attempts and restarts.
use std::sync::Arc;
use std::time::Duration;

use aisle_protocol::{EventId, OrderId, StoreId, UtcMillis};
use hmac::{Hmac, Mac};
use rand::Rng;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::Sha256;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use super::{OrderStatus, WebhookDelivery, WebhookKind};
use crate::metrics::HubMetrics;
use crate::storage::HubStorage;
use crate::timefmt::format_rfc3339;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-aisle-signature";
/// The event id header (the same as the body's `event_id`).
pub const EVENT_ID_HEADER: &str = "x-aisle-event-id";
/// The event type header (the same as the body's `type`).
pub const EVENT_TYPE_HEADER: &str = "x-aisle-event-type";
/// Environment variable with the webhook secret.
pub const WEBHOOK_SECRET_ENV: &str = "AISLE_WEBHOOK_SECRET";
/// Longest error text kept per outbox row.
const MAX_ERROR_CHARS: usize = 300;

/// The body of a webhook, as stored in the outbox and sent on every attempt.
pub fn body(
    event_id: EventId,
    kind: WebhookKind,
    order_id: &OrderId,
    store: &StoreId,
    status: OrderStatus,
    at: UtcMillis,
    extra: &Map<String, Value>,
) -> Result<String, serde_json::Error> {
    #[derive(Serialize)]
    struct Body<'a> {
        event_id: EventId,
        #[serde(rename = "type")]
        kind: &'static str,
        order_id: &'a OrderId,
        store: &'a StoreId,
        status: &'static str,
        at: String,
        #[serde(flatten)]
        extra: &'a Map<String, Value>,
    }
    serde_json::to_string(&Body {
        event_id,
        kind: kind.as_str(),
        order_id,
        store,
        status: status.as_str(),
        at: format_rfc3339(at),
        extra,
    })
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; the error arm cannot happen.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a signature header against the body, in constant time (for receivers and tests).
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// The webhook secret: the text HQ configures (or the hub generated); its bytes are the HMAC key.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    /// At least 16 printable characters without spaces.
    pub fn new(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.len() < 16 || s.len() > 512 || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{WEBHOOK_SECRET_ENV} must be 16 to 512 printable characters without spaces"
            ));
        }
        Ok(WebhookSecret(s.to_owned()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The secret itself (for `aisle-hub webhook secret`; never log it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// How webhooks are delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Delay after the first failed attempt; doubled per attempt.
    pub backoff_base: Duration,
    /// Longest delay between attempts.
    pub backoff_max: Duration,
    /// Longest wait for a receiver's answer.
    pub timeout: Duration,
    /// How long a claimed row is left to its worker before another may retry it. Longer than
    /// `timeout`, or a slow receiver gets a second copy while the first is still in flight.
    pub lease: Duration,
    /// How often the worker looks for due rows when nothing woke it.
    pub poll: Duration,
    /// Most deliveries in flight at once per hub process.
    pub batch: u32,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(600),
            timeout: Duration::from_secs(10),
            lease: Duration::from_secs(30),
            poll: Duration::from_secs(1),
            batch: 16,
        }
    }
}

/// The delay before the next attempt after `attempts` failed ones: `base * 2^(attempts-1)`,
/// capped at `max`, then drawn uniformly from its upper half (jitter, so receivers coming back
/// are not hit by every hub at once).
pub fn backoff(attempts: u32, base: Duration, max: Duration) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let full = base.saturating_mul(1u32 << exp).min(max);
    let half = full / 2;
    let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
    half + Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
}

/// Delivers the outbox. One per hub process; see the module docs.
#[derive(Debug)]
pub struct WebhookWorker {
    storage: Arc<dyn HubStorage>,
    metrics: Arc<HubMetrics>,
    secret: WebhookSecret,
    settings: WebhookSettings,
    wake: Arc<Notify>,
    client: reqwest::Client,
}

/// An error with its causes ("error sending request: ...: Connection refused").
fn describe(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl WebhookWorker {
    pub fn new(
        storage: Arc<dyn HubStorage>,
        metrics: Arc<HubMetrics>,
        secret: WebhookSecret,
        settings: WebhookSettings,
        wake: Arc<Notify>,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .user_agent(concat!("aisle-hub/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("webhook client: {e}"))?;
        Ok(WebhookWorker {
            storage,
            metrics,
            secret,
            settings,
            wake,
            client,
        })
    }

    /// Delivers until `shutdown` turns true. Deliveries in flight when the task is dropped are
    /// retried after their lease, by this hub after a restart or by another.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let me = Arc::new(self);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let now = UtcMillis::now();
            let lease_until = now.saturating_add_ms(ms(me.settings.lease));
            let claimed = match me
                .storage
                .claim_webhooks(now, lease_until, me.settings.batch.max(1))
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the webhook outbox");
                    Vec::new()
                }
            };
            if claimed.is_empty() {
                if let Ok(n) = me.storage.webhooks_pending().await {
                    me.metrics
                        .webhooks_pending
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                tokio::select! {
                    () = me.wake.notified() => {}
                    () = tokio::time::sleep(me.settings.poll) => {}
                    r = shutdown.changed() => if r.is_err() { return; },
                }
                continue;
            }
            let mut inflight = JoinSet::new();
            for d in claimed {
                let me = me.clone();
                inflight.spawn(async move { me.deliver(d).await });
            }
            while inflight.join_next().await.is_some() {}
        }
    }

    async fn deliver(&self, d: WebhookDelivery) {
        let sig = signature(self.secret.as_bytes(), d.body.as_bytes());
        let res = self
            .client
            .post(&d.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, sig)
            .header(EVENT_ID_HEADER, d.event_id.to_hex())
            .header(EVENT_TYPE_HEADER, d.kind.as_str())
            .body(d.body.clone())
            .send()
            .await;
        let failure = match res {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("HTTP {}", r.status().as_u16())),
            Err(e) => Some(describe(&e.without_url())),
        };
        let now = UtcMillis::now();
        let recorded = match &failure {
            None => {
                self.metrics.webhooks_delivered.inc();
                tracing::info!(order = %d.order_id, event = %d.event_id, kind = d.kind.as_str(), attempts = d.attempts, "webhook delivered");
                self.storage.webhook_delivered(&d.event_id, now).await
            }
            Some(err) => {
                self.metrics.webhook_failures.inc();
                let delay = backoff(
                    d.attempts,
                    self.settings.backoff_base,
                    self.settings.backoff_max,
                );
                let err: String = err.chars().take(MAX_ERROR_CHARS).collect();
                tracing::warn!(order = %d.order_id, event = %d.event_id, kind = d.kind.as_str(), attempts = d.attempts, error = %err, retry_in = ?delay, "webhook not delivered");
                self.storage
                    .webhook_failed(&d.event_id, now.saturating_add_ms(ms(delay)), &err)
                    .await
            }
        };
        if let Err(e) = recorded {
            // The lease runs out and the row is tried again: at least once, maybe twice.
            tracing::warn!(error = %e, event = %d.event_id, "could not record a webhook attempt");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn signatures_verify_only_for_the_exact_body_and_secret() {
        let body = br#"{"event_id":"x"}"#;
        let sig = signature(b"secret-0123456789", body);
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        assert!(verify(b"secret-0123456789", body, &sig));
        assert!(!verify(b"secret-0123456780", body, &sig));
        assert!(!verify(b"secret-0123456789", br#"{"event_id":"y"}"#, &sig));
        assert!(!verify(b"secret-0123456789", body, "md5=00"));
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn bodies_carry_the_common_fields_then_the_extras() {
        let extra = json!({"location": "P3", "missing": []});
        let b = body(
            EventId::from_bytes([1; 16]),
            WebhookKind::Ready,
            &OrderId::parse("web-1").unwrap(),
            &StoreId::parse("S001").unwrap(),
            OrderStatus::Ready,
            UtcMillis(0),
            extra.as_object().unwrap(),
        )
        .unwrap();
        assert!(
            b.starts_with(r#"{"event_id":"01010101010101010101010101010101","type":"ready","order_id":"web-1","store":"S001","status":"ready","at":"1970-01-01T00:00:00Z""#),
            "{b}"
        );
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["location"], "P3");
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(600);
        for attempts in 1..40 {
            let d = backoff(attempts, base, max);
            let full = (base * 2u32.pow(attempts.saturating_sub(1).min(20))).min(max);
            assert!(d >= full / 2 && d <= full, "{attempts}: {d:?} vs {full:?}");
        }
        assert!(backoff(0, base, max) <= base);
    }

    #[test]
    fn secrets_are_checked_and_never_printed() {
        assert!(WebhookSecret::new("short").is_err());
        assert!(WebhookSecret::new("has a space in it!!").is_err());
        let s = WebhookSecret::new("0123456789abcdef").unwrap();
        assert!(!format!("{s:?}").contains("0123"));
    }
}
