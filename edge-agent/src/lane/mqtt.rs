//! The MQTT lane interface, for third-party lane software (a lane PC's own UI, a store's
//! monitoring). Topics under `<prefix>/<store>/lane/<lane>/` (prefix `aisle/v1`):
//!
//! | Topic | Direction | QoS, retain | Payload |
//! |---|---|---|---|
//! | `state` | agent → | 1, retained | the lane's latest update: `{"lane","seq","event","view"}` |
//! | `event` | agent → | 1 | every update, in order (same shape) |
//! | `cmd` | → agent | 1 | one [`LaneRequest`] as JSON, e.g. `{"type":"scan","code":"4006381333931"}` |
//!
//! and `<prefix>/<store>/lanes/online`: `true` (retained) while the agent is connected, `false`
//! as its last will. On every (re)connection each lane's current update is published to
//! `state` again, so a retained state left by an earlier run or lost by the broker is replaced.
//! A `cmd` that is not valid JSON, too large, or an unknown request is dropped and counted
//! (`aisle_lane_mqtt_refused`), with the reason logged; one larger than [`MAX_PACKET_BYTES`]
//! costs a reconnection (the client cannot skip it) but is counted all the same. The broker's ACL
//! (written by `aisle-agent devices add`) decides which clients may publish to `cmd`.
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, LastWill, MqttOptions, Packet, QoS, StateError,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::LanesShared;
use super::runner::ScanSource;
use crate::sync::backoff::Backoff;

/// Largest `cmd` payload.
pub const MAX_CMD_BYTES: usize = 4096;
/// Largest packet the client reads; a larger one ends the connection.
pub const MAX_PACKET_BYTES: usize = 1024 * 1024;

/// Starts the lane interface: one client publishing every lane's updates and taking commands.
pub fn spawn(
    host: String,
    port: u16,
    client_id: String,
    topic_base: String,
    lanes: Arc<LanesShared>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(run(host, port, client_id, topic_base, lanes, shutdown))
}

async fn run(
    host: String,
    port: u16,
    client_id: String,
    topic_base: String,
    lanes: Arc<LanesShared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let online = format!("{topic_base}/lanes/online");
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_keep_alive(Duration::from_secs(15));
    options.set_max_packet_size(MAX_PACKET_BYTES, 64 * 1024);
    options.set_last_will(LastWill::new(&online, "false", QoS::AtLeastOnce, true));
    let (client, mut events) = AsyncClient::new(options, 256);
    // Bumped on every connection: each forwarder then republishes its lane's current state.
    let (connected_tx, connected) = watch::channel(0u64);
    // One forwarder per lane: updates to `state` (retained) and `event`.
    let mut forwarders = Vec::new();
    for (id, lane) in &lanes.lanes {
        let client = client.clone();
        let mut rx = lane.updates.subscribe();
        let latest = lane.latest.clone();
        let mut connected = connected.clone();
        let base = format!("{topic_base}/lane/{id}");
        let mut stop = shutdown.clone();
        forwarders.push(tokio::spawn(async move {
            loop {
                let update = tokio::select! {
                    u = rx.recv() => u,
                    c = connected.changed() => {
                        if c.is_err() {
                            break;
                        }
                        let current = latest.borrow().as_bytes().to_vec();
                        let _ = client
                            .publish(format!("{base}/state"), QoS::AtLeastOnce, true, current)
                            .await;
                        continue;
                    }
                    () = stopped(&mut stop) => break,
                };
                match update {
                    Ok(text) => {
                        let bytes = text.as_bytes().to_vec();
                        let _ = client
                            .publish(format!("{base}/event"), QoS::AtLeastOnce, false, bytes.clone())
                            .await;
                        let _ = client
                            .publish(format!("{base}/state"), QoS::AtLeastOnce, true, bytes)
                            .await;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(lanes = %base, missed = n, "MQTT lane interface fell behind; the retained state stays current");
                    }
                    Err(_) => break,
                }
            }
        }));
    }
    let mut backoff = Backoff::new(200, 5_000);
    loop {
        let event = tokio::select! {
            e = events.poll() => e,
            () = stopped(&mut shutdown) => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                connected_tx.send_modify(|n| *n += 1);
                // Never wait inside the poll loop: only poll() empties the request queue, which
                // the lanes' updates may have filled while the broker was away.
                let c = client.clone();
                let filter = format!("{topic_base}/lane/+/cmd");
                let topic = online.clone();
                tokio::spawn(async move {
                    let _ = c.subscribe(filter, QoS::AtLeastOnce).await;
                    let _ = c.publish(topic, QoS::AtLeastOnce, true, "true").await;
                });
                tracing::info!(topics = %format!("{topic_base}/lane/+"), "MQTT lane interface connected");
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let lane_id = p
                    .topic
                    .strip_prefix(&format!("{topic_base}/lane/"))
                    .and_then(|rest| rest.strip_suffix("/cmd"));
                let Some(lane) = lane_id.and_then(|id| lanes.lane(id)) else {
                    refused(&lanes, "unknown_lane", &p.topic);
                    continue;
                };
                if p.payload.len() > MAX_CMD_BYTES {
                    refused(&lanes, "too_large", &p.topic);
                    continue;
                }
                match super::LaneRequest::parse(&p.payload) {
                    Ok(req) => {
                        if lane
                            .commands
                            .try_send(req.into_command(ScanSource::Mqtt))
                            .is_err()
                        {
                            refused(&lanes, "lane_busy", &p.topic);
                        }
                    }
                    Err(e) => {
                        tracing::info!(topic = %p.topic, error = %e, "MQTT lane command refused");
                        refused(&lanes, "bad_request", &p.topic);
                    }
                }
            }
            Ok(_) => {}
            Err(ConnectionError::MqttState(StateError::Deserialization(
                rumqttc::Error::PayloadSizeLimitExceeded(n),
            ))) => {
                // Someone published a packet too large to read: the connection is gone, the
                // packet with it (clean session); count it and reconnect at once.
                tracing::warn!(
                    bytes = n,
                    "MQTT lane command too large to read; reconnecting"
                );
                refused(&lanes, "too_large", &format!("{topic_base}/lane/+/cmd"));
            }
            Err(e) => {
                let wait = backoff.next_random_delay();
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "MQTT lane interface disconnected");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stopped(&mut shutdown) => break,
                }
            }
        }
    }
    for f in forwarders {
        f.abort();
    }
    // Say goodbye (`online` false) and disconnect, polling so it goes out; at most a second.
    let _ = client.try_publish(&online, QoS::AtLeastOnce, true, "false");
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match events.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

fn refused(lanes: &LanesShared, reason: &str, topic: &str) {
    tracing::debug!(topic, reason, "MQTT lane command dropped");
    lanes
        .metrics
        .mqtt_refused
        .get_or_create(&vec![("reason".to_string(), reason.to_string())])
        .inc();
}

/// Resolves once `rx` says stop (and holds no borrow of the value across awaits).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
