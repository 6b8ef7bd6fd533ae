//! The MQTT lane interface end to end: the real agent binary with a bare lane, real Mosquitto,
//! and rumqttc playing third-party lane software (subscribing to the lane's `event` and
//! `state`, publishing `cmd` requests).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use aisle_hil::camera_sim::split_host_port;
use aisle_hil::harness::{Backend, VirtualStore, gtin, wait_for};
use aisle_hil::lanes::{ItemRule, checkout_section, ean13_of};
use aisle_hil::mqtt::{Message, Subscriber, broker, clear_retained, random_prefix};
use anyhow::{Context, Result, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(20);

/// Lane software's publishing side: one client, QoS 1, returns once the broker acknowledged.
struct LaneSoftware {
    client: AsyncClient,
    acks: tokio::sync::mpsc::UnboundedReceiver<()>,
    task: JoinHandle<()>,
}

impl LaneSoftware {
    async fn connect(broker: &str) -> Result<LaneSoftware> {
        let (host, port) = split_host_port(broker)?;
        let id = format!("lane-pc-{:016x}", rand::random::<u64>());
        let mut options = MqttOptions::new(id, host, port);
        options.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (tx, acks) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        let _ = tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        Ok(LaneSoftware { client, acks, task })
    }

    async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) -> Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await?;
        tokio::time::timeout(WAIT, self.acks.recv())
            .await
            .with_context(|| format!("no PUBACK for {topic}"))?;
        Ok(())
    }
}

impl Drop for LaneSoftware {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn json_of(m: &Message) -> Value {
    serde_json::from_slice(&m.payload).unwrap_or(Value::Null)
}

/// Reads `event` messages until one of kind `kind`; fails on a refusal not asked for.
async fn until_event(events: &mut Subscriber, kind: &str) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let m = events
            .next(left)
            .await
            .with_context(|| format!("waiting for a {kind} event"))?;
        let u = json_of(&m);
        let k = u["event"]["kind"].as_str().unwrap_or_default().to_string();
        if k == kind {
            return Ok(u);
        }
        if ["scan_refused", "unknown_item", "refused", "error"].contains(&k.as_str()) {
            bail!("the lane said {k}: {}", u["event"]);
        }
    }
}

async fn metrics(agent_url: &str) -> Result<String> {
    Ok(reqwest::get(format!("{agent_url}/metrics"))
        .await?
        .text()
        .await?)
}

fn refused_count(metrics: &str, reason: &str) -> u64 {
    let key = format!("aisle_lane_mqtt_refused_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lane_software_scans_and_pays_over_mqtt() -> Result<()> {
    let broker = broker();
    let prefix = random_prefix();
    let dir = tempfile::tempdir()?;
    let items = [ItemRule {
        gtin: gtin(1),
        age_min: None,
        weight_g: None,
    }];
    let extra = checkout_section(
        dir.path(),
        &[],
        &["1"],
        &items,
        &format!("mqtt = \"{broker}\"\ntopic_prefix = \"{prefix}\""),
    )?;
    let mut store = VirtualStore::start_configured(Backend::Sqlite, 0, extra).await?;
    drop(dir);
    store
        .push_prices(&[(&gtin(1), 1280), (&gtin(2), 250)], None)
        .await?;
    let api = store.agent.api();
    api.wait_price(&gtin(1), 1280, WAIT).await?;
    api.wait_price(&gtin(2), 250, WAIT).await?;
    let url = store.agent.url();

    let base = format!("{prefix}/{}", store.store);
    let lane = format!("{base}/lane/1");
    let online_topic = format!("{base}/lanes/online");
    // Cleared at the end (the agent's last will stays retained on `online`).
    let retained = [format!("{lane}/state"), online_topic.clone()];

    // The agent says it is online (retained, so a subscriber arriving later sees it).
    let mut online = Subscriber::start(&broker, &online_topic, true).await?;
    let m = online
        .next_where("lanes/online true", WAIT, |m| m.text() == "true")
        .await?;
    assert!(m.retain, "lanes/online is retained");

    let mut events = Subscriber::start(&broker, &format!("{lane}/event"), true).await?;
    let mut pc = LaneSoftware::connect(&broker).await?;
    let cmd = format!("{lane}/cmd");

    // A known item, priced from the ledger.
    pc.publish(
        &cmd,
        json!({"type": "scan", "code": ean13_of(&gtin(1))}).to_string(),
    )
    .await?;
    let u = until_event(&mut events, "line_added").await?;
    assert_eq!(u["lane"], "1");
    assert_eq!(u["event"]["line"]["line_total"]["minor"], 1280, "{u}");
    let first_seq = u["seq"].as_u64().context("seq")?;
    pc.publish(
        &cmd,
        json!({"type": "scan", "code": ean13_of(&gtin(2))}).to_string(),
    )
    .await?;
    let latest = until_event(&mut events, "line_added").await?;
    assert_eq!(latest["event"]["line"]["line_total"]["minor"], 250);
    assert!(latest["seq"].as_u64().context("seq")? > first_seq);
    assert_eq!(latest["view"]["total"]["minor"], 1280 + 250);

    // A late subscriber to `state` gets the latest view, retained.
    let mut late = Subscriber::start(&broker, &format!("{lane}/state"), true).await?;
    let m = late.next(WAIT).await?;
    assert!(m.retain, "state is retained");
    let state = json_of(&m);
    assert_eq!(state["seq"], latest["seq"], "state is the latest update");
    assert_eq!(state["view"], latest["view"]);
    late.stop().await;

    // Malformed, oversized and wrong-lane commands are dropped and counted.
    pc.publish(&cmd, "{\"type\": \"scan\", \"code\":").await?;
    pc.publish(&cmd, json!({"type": "dance"}).to_string())
        .await?;
    let huge = json!({"type": "scan", "code": "4".repeat(5000)}).to_string();
    assert!(huge.len() > 4096);
    pc.publish(&cmd, huge).await?;
    pc.publish(
        &format!("{base}/lane/9/cmd"),
        json!({"type": "scan", "code": ean13_of(&gtin(1))}).to_string(),
    )
    .await?;
    let text = wait_for("the refused commands counted", WAIT, || async {
        let t = metrics(&url).await.ok()?;
        (refused_count(&t, "bad_request") == 2
            && refused_count(&t, "too_large") == 1
            && refused_count(&t, "unknown_lane") == 1)
            .then_some(t)
    })
    .await?;
    assert_eq!(refused_count(&text, "lane_busy"), 0, "{text}");
    // The lane did not see them: the next event is the next scan's line, on the same basket.
    pc.publish(
        &cmd,
        json!({"type": "scan", "code": ean13_of(&gtin(1))}).to_string(),
    )
    .await?;
    let m = events.next(WAIT).await?;
    let u = json_of(&m);
    assert_eq!(u["event"]["kind"], "line_added", "{u}");
    assert_eq!(
        u["seq"].as_u64(),
        latest["seq"].as_u64().map(|s| s + 1),
        "{u}"
    );
    assert_eq!(u["view"]["lines"].as_array().map(Vec::len), Some(3), "{u}");
    assert_eq!(u["view"]["total"]["minor"], 1280 + 250 + 1280);

    // Pay: the sale is committed once, even when the lane software sends `pay` twice.
    pc.publish(&cmd, json!({"type": "pay"}).to_string()).await?;
    let u = until_event(&mut events, "sale_committed").await?;
    let sale_id = u["event"]["sale_id"]
        .as_str()
        .context("sale_id")?
        .to_string();
    assert_eq!(u["view"]["phase"], "paid");
    pc.publish(&cmd, json!({"type": "pay"}).to_string()).await?;
    let second = events.next(WAIT).await?;
    assert_eq!(
        json_of(&second)["event"]["kind"],
        "refused",
        "{}",
        second.text()
    );
    let link = u["event"]["receipt_url"].as_str().context("receipt_url")?;
    let receipt: Value = reqwest::get(link.replacen("/receipts/", "/v1/receipts/", 1))
        .await?
        .json()
        .await?;
    assert_eq!(receipt["total"], "28.10");
    assert_eq!(receipt["sale_id"], sale_id.as_str());
    let text = metrics(&url).await?;
    assert!(
        text.contains("aisle_lane_sales_total{lane=\"1\"} 1\n"),
        "{text}"
    );

    // The agent dies: the broker publishes its last will.
    store.agent.kill9();
    let m = online
        .next_where("lanes/online false", WAIT, |m| m.text() == "false")
        .await?;
    assert_eq!(m.topic, online_topic);
    let report = store.agent.verify_ledger()?;
    assert!(report.contains(" 1 sales,"), "{report}");

    events.stop().await;
    online.stop().await;
    clear_retained(&broker, &retained).await?;
    store.finish().await
}

/// After a restart the retained `state` is the new session's view, not the last run's; a `cmd`
/// far above the limit (larger than the agent's MQTT packet limit) is counted like any other
/// oversized one and does not cost the agent its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_current_after_a_restart_and_a_huge_cmd_is_only_counted() -> Result<()> {
    let broker = broker();
    let prefix = random_prefix();
    let dir = tempfile::tempdir()?;
    let extra = checkout_section(
        dir.path(),
        &[],
        &["1"],
        &[],
        &format!("mqtt = \"{broker}\"\ntopic_prefix = \"{prefix}\""),
    )?;
    let mut store = VirtualStore::start_configured(Backend::Sqlite, 0, extra).await?;
    // `dir` (the layouts file) lives on: the agent reads it again when restarted.
    store.push_prices(&[(&gtin(1), 1280)], None).await?;
    store.agent.api().wait_price(&gtin(1), 1280, WAIT).await?;
    let base = format!("{prefix}/{}", store.store);
    let lane = format!("{base}/lane/1");
    let online_topic = format!("{base}/lanes/online");
    let retained = [format!("{lane}/state"), online_topic.clone()];
    let mut online = Subscriber::start(&broker, &online_topic, true).await?;
    online
        .next_where("lanes/online true", WAIT, |m| m.text() == "true")
        .await?;
    let mut events = Subscriber::start(&broker, &format!("{lane}/event"), true).await?;
    let mut pc = LaneSoftware::connect(&broker).await?;
    let cmd = format!("{lane}/cmd");
    pc.publish(
        &cmd,
        json!({"type": "scan", "code": ean13_of(&gtin(1))}).to_string(),
    )
    .await?;
    until_event(&mut events, "line_added").await?;

    // 100 KB of scan: dropped and counted; the agent stays connected and the lane works on.
    let huge = json!({"type": "scan", "code": "4".repeat(100_000)}).to_string();
    pc.publish(&cmd, huge).await?;
    let url = store.agent.url();
    wait_for("the huge command counted", WAIT, || async {
        let t = metrics(&url).await.ok()?;
        (refused_count(&t, "too_large") == 1).then_some(())
    })
    .await?;
    pc.publish(
        &cmd,
        json!({"type": "scan", "code": ean13_of(&gtin(1))}).to_string(),
    )
    .await?;
    let u = until_event(&mut events, "line_added").await?;
    assert_eq!(u["view"]["lines"].as_array().map(Vec::len), Some(2), "{u}");
    assert!(
        online.next(Duration::from_millis(500)).await.is_err(),
        "the agent never went offline"
    );
    // 2 MB, more than the agent's client reads: the connection is lost with it, but it is
    // counted too, and the lane is back within moments.
    let enormous = json!({"type": "scan", "code": "4".repeat(2_000_000)}).to_string();
    pc.publish(&cmd, enormous).await?;
    wait_for("the enormous command counted", WAIT, || async {
        let t = metrics(&url).await.ok()?;
        (refused_count(&t, "too_large") == 2).then_some(())
    })
    .await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // A command sent while the agent reconnects is lost (QoS 1 to a clean session): retry.
        pc.publish(
            &cmd,
            json!({"type": "scan", "code": ean13_of(&gtin(1))}).to_string(),
        )
        .await?;
        if let Ok(m) = events.next(Duration::from_secs(2)).await {
            assert_eq!(json_of(&m)["event"]["kind"], "line_added");
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the lane took no command after the enormous one");
        }
    }

    // Restart: the new session's view replaces the old basket in `state` without any scan.
    store.agent.restart().await?;
    online
        .next_where("lanes/online true again", WAIT, |m| m.text() == "true")
        .await?;
    let state = wait_for("the new session's state", WAIT, || async {
        let mut late = Subscriber::start(&broker, &format!("{lane}/state"), true)
            .await
            .ok()?;
        let m = late.next(Duration::from_secs(2)).await.ok()?;
        late.stop().await;
        let s = json_of(&m);
        (s["seq"] == 0).then_some(s)
    })
    .await?;
    assert_eq!(state["view"]["lines"].as_array().map(Vec::len), Some(0));

    events.stop().await;
    store.agent.kill9();
    online
        .next_where("lanes/online false", WAIT, |m| m.text() == "false")
        .await?;
    online.stop().await;
    clear_retained(&broker, &retained).await?;
    store.finish().await
}
