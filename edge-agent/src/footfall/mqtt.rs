//! The MQTT task: one persistent MQTT 5 session at the store's broker, subscribed QoS 1 to every
//! camera's `counts` and `status` topics, handing each message to the ingest task. Messages are
//! acknowledged by the ingest task only after the ledger commit that includes them, so the broker
//! keeps (and re-delivers after a reconnect or a crash) whatever the ledger does not have yet.
//!
//! Why MQTT 5: the broker sends a subscriber only so many unacknowledged QoS 1 messages at once.
//! An MQTT 3.1.1 client cannot choose that window (Mosquitto's default is 20, far too few to
//! cover a ledger commit), an MQTT 5 client sets it with Receive Maximum. MQTT 5 also lets the
//! client name the largest packet it takes, so the broker drops an oversized message instead of
//! sending it (a 3.1.1 client would have to drop the connection, and the broker would send the
//! same message again after the reconnect, for ever).
//!
//! Acks and reconnects: an ack is only sent on the connection its message came on (a
//! generation number, bumped on every connect and every connection error). A message whose
//! connection broke before its ack is delivered again by the broker on the new connection, and
//! the counter recognises it as a duplicate.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::{AckToken, FootfallShared, Msg};
use crate::sync::backoff::Backoff;

/// Unacknowledged messages the broker may send us at once (MQTT 5 Receive Maximum): two full
/// batches, so the next one fills while one commits; bounded so a backlog cannot flood memory
/// (the broker keeps the rest, up to its own queue limit).
pub const RECEIVE_MAXIMUM: u16 = 2 * super::MAX_BATCH as u16;
/// How long the broker keeps our session (subscriptions and undelivered messages) while the
/// agent is away.
const SESSION_EXPIRY_S: u32 = 7 * 24 * 3_600;
/// Room for the topic, properties and headers around the largest payload we take.
const PACKET_OVERHEAD: usize = 2_048;

/// How the MQTT task is set up.
#[derive(Debug)]
pub(crate) struct MqttSetup {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    /// `<prefix>/<store>/camera/`.
    pub topic_base: String,
    pub max_payload_bytes: usize,
}

/// Sends the acks owed for committed messages (held by the ingest task).
#[derive(Debug)]
pub(crate) struct Acker {
    client: AsyncClient,
    generation: Arc<AtomicU64>,
    /// Dropped when the ingest task ends, so the MQTT task knows no ack is still coming.
    _alive: oneshot::Sender<()>,
}

impl Acker {
    /// Acknowledges one message, if its connection is still the current one. Never blocks: the
    /// request queue holds more than the broker may have outstanding.
    pub(crate) fn ack(&self, token: AckToken) {
        if self.generation.load(Ordering::SeqCst) != token.generation {
            // Its connection is gone: the broker sends the message again on the new one.
            return;
        }
        let mut p = Publish::new("", QoS::AtLeastOnce, Bytes::new(), None);
        p.pkid = token.pkid;
        if let Err(e) = self.client.try_ack(&p) {
            tracing::debug!(error = %e, pkid = token.pkid, "MQTT ack not queued; the broker re-delivers");
        }
    }
}

/// Starts the MQTT task. Returns its handle and the [`Acker`] for the ingest task.
pub(crate) fn spawn(
    setup: MqttSetup,
    shared: Arc<FootfallShared>,
    tx: mpsc::Sender<Msg>,
    shutdown: watch::Receiver<bool>,
) -> (JoinHandle<()>, Acker) {
    let mut options = MqttOptions::new(setup.client_id.clone(), setup.host.clone(), setup.port);
    options
        .set_clean_start(false)
        .set_session_expiry_interval(Some(SESSION_EXPIRY_S))
        .set_receive_maximum(Some(RECEIVE_MAXIMUM))
        .set_max_packet_size(Some(
            u32::try_from(setup.max_payload_bytes + PACKET_OVERHEAD).unwrap_or(u32::MAX),
        ))
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_connection_timeout(5);
    let (client, eventloop) =
        AsyncClient::new(options, usize::from(RECEIVE_MAXIMUM).saturating_add(64));
    let generation = Arc::new(AtomicU64::new(0));
    let (alive_tx, alive_rx) = oneshot::channel();
    let acker = Acker {
        client: client.clone(),
        generation: generation.clone(),
        _alive: alive_tx,
    };
    let task = MqttTask {
        setup,
        shared,
        client,
        generation,
        tx,
    };
    (tokio::spawn(task.run(eventloop, shutdown, alive_rx)), acker)
}

struct MqttTask {
    setup: MqttSetup,
    shared: Arc<FootfallShared>,
    client: AsyncClient,
    generation: Arc<AtomicU64>,
    tx: mpsc::Sender<Msg>,
}

impl MqttTask {
    async fn run(
        self,
        mut eventloop: EventLoop,
        mut shutdown: watch::Receiver<bool>,
        mut ingest_done: oneshot::Receiver<()>,
    ) {
        let broker = format!("{}:{}", self.setup.host, self.setup.port);
        let mut backoff = Backoff::new(100, 5_000);
        let mut last_error: Option<String> = None;
        loop {
            let event = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                e = eventloop.poll() => e,
            };
            match event {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if !self.forward(p).await {
                        break;
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    self.generation.fetch_add(1, Ordering::SeqCst);
                    self.shared.set_mqtt_up(true);
                    backoff.reset();
                    last_error = None;
                    tracing::info!(
                        broker = %broker,
                        client_id = %self.setup.client_id,
                        session_present = ack.session_present,
                        "connected to the camera MQTT broker"
                    );
                    self.subscribe();
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let failed = ack.return_codes.iter().any(|c| {
                        !matches!(
                            c,
                            rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                        )
                    });
                    if failed {
                        tracing::error!(codes = ?ack.return_codes, "the broker refused a camera topic subscription");
                    }
                }
                Ok(Event::Incoming(Packet::Disconnect(d))) => {
                    self.generation.fetch_add(1, Ordering::SeqCst);
                    self.shared.set_mqtt_up(false);
                    tracing::warn!(reason = ?d.reason_code, "the camera MQTT broker disconnected us");
                }
                Ok(_) => {}
                Err(e) => {
                    self.generation.fetch_add(1, Ordering::SeqCst);
                    self.shared.set_mqtt_up(false);
                    let text = error_text(&e);
                    if last_error.as_deref() == Some(text.as_str()) {
                        tracing::debug!(broker = %broker, error = %text, "camera MQTT broker still unreachable");
                    } else {
                        tracing::warn!(broker = %broker, error = %text, "camera MQTT connection failed; reconnecting");
                        last_error = Some(text);
                    }
                    let delay = backoff.next_random_delay();
                    tokio::select! {
                        _ = shutdown.wait_for(|s| *s) => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        // Let the ingest task commit and acknowledge what it has, then leave cleanly (the
        // session stays at the broker for the next start).
        let drain = async {
            loop {
                tokio::select! {
                    _ = &mut ingest_done => break,
                    e = eventloop.poll() => if e.is_err() { break },
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), drain).await;
        if self.client.try_disconnect().is_ok() {
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while let Ok(ev) = eventloop.poll().await {
                    if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                        break;
                    }
                }
            })
            .await;
        }
        self.shared.set_mqtt_up(false);
    }

    /// Subscribes (again) after every connect. Never waits inside the poll loop.
    fn subscribe(&self) {
        let base = &self.setup.topic_base;
        let filters = [
            Filter::new(format!("{base}+/counts"), QoS::AtLeastOnce),
            Filter::new(format!("{base}+/status"), QoS::AtLeastOnce),
        ];
        if self.client.try_subscribe_many(filters.clone()).is_err() {
            let client = self.client.clone();
            tokio::spawn(async move {
                if let Err(e) = client.subscribe_many(filters).await {
                    tracing::error!(error = %e, "cannot subscribe to the camera topics");
                }
            });
        }
    }

    /// Hands one message to the ingest task; false when the ingest task is gone.
    async fn forward(&self, p: Publish) -> bool {
        let base = self.setup.topic_base.as_bytes();
        let (camera, status) = match p.topic.strip_prefix(base).and_then(split_rest) {
            Some((id, status)) => (
                std::str::from_utf8(id)
                    .ok()
                    .and_then(|id| self.shared.camera_index(id)),
                status,
            ),
            None => (None, false),
        };
        let ack = (p.qos != QoS::AtMostOnce).then(|| AckToken {
            pkid: p.pkid,
            generation: self.generation.load(Ordering::SeqCst),
        });
        let msg = Msg::Mqtt {
            camera,
            status,
            topic: p.topic,
            payload: p.payload,
            retained: p.retain,
            ack,
        };
        self.tx.send(msg).await.is_ok()
    }
}

/// `<id>/counts` or `<id>/status` into (id, is_status).
fn split_rest(rest: &[u8]) -> Option<(&[u8], bool)> {
    let slash = rest.iter().position(|b| *b == b'/')?;
    let (id, kind) = (&rest[..slash], &rest[slash + 1..]);
    match kind {
        b"counts" => Some((id, false)),
        b"status" => Some((id, true)),
        _ => None,
    }
}

fn error_text(e: &ConnectionError) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_split_into_camera_and_kind() {
        assert_eq!(split_rest(b"door-1/counts"), Some((&b"door-1"[..], false)));
        assert_eq!(split_rest(b"door-1/status"), Some((&b"door-1"[..], true)));
        assert_eq!(split_rest(b"door-1/other"), None);
        assert_eq!(split_rest(b"door-1"), None);
    }
}
