//! A plain MQTT subscriber (what any MQTT consumer does: subscribe, read, acknowledge), for tests
//! watching what cameras publish and for the `footfall_ingest` baseline; and broker helpers.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::camera_sim::split_host_port;

/// The broker the scenarios use: `AISLE_TEST_MQTT` or Mosquitto on loopback.
pub fn broker() -> String {
    std::env::var("AISLE_TEST_MQTT").unwrap_or_else(|_| "127.0.0.1:1883".into())
}

/// A topic prefix no other test or run uses (`aisle-test-<random>/v1`).
pub fn random_prefix() -> String {
    format!("aisle-test-{:016x}/v1", rand::random::<u64>())
}

/// One message as a subscriber received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Message {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// A subscriber with automatic acknowledgements, clean session, QoS 1.
#[derive(Debug)]
pub struct Subscriber {
    client: AsyncClient,
    received: Arc<AtomicU64>,
    messages: Option<mpsc::UnboundedReceiver<Message>>,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Connects and subscribes to `filter`; returns once the broker granted the subscription.
    /// With `keep` the messages are kept for [`Subscriber::next`]; without, only counted.
    pub async fn start(broker: &str, filter: &str, keep: bool) -> Result<Subscriber> {
        let (host, port) = split_host_port(broker)?;
        let id = format!("aisle-sub-{:016x}", rand::random::<u64>());
        let mut options = MqttOptions::new(id, host, port);
        options
            .set_keep_alive(Duration::from_secs(10))
            .set_clean_session(true)
            .set_max_packet_size(1024 * 1024, 1024 * 1024);
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        client.subscribe(filter, QoS::AtLeastOnce).await?;
        let received = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
        let count = received.clone();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        count.fetch_add(1, Ordering::Relaxed);
                        if keep {
                            let _ = tx.send(Message {
                                topic: p.topic.clone(),
                                payload: p.payload.to_vec(),
                                retain: p.retain,
                            });
                        }
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(Err(e.to_string()));
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        match tokio::time::timeout(Duration::from_secs(10), ready_rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => bail!("subscribing to {filter} at {broker}: {e}"),
            _ => bail!("no SUBACK for {filter} from {broker}"),
        }
        Ok(Subscriber {
            client,
            received,
            messages: keep.then_some(rx),
            task,
        })
    }

    /// Messages received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// A shared view of the count, for a task that watches progress.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.received.clone()
    }

    /// The next message, waiting up to `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Result<Message> {
        let rx = self
            .messages
            .as_mut()
            .ok_or_else(|| anyhow!("this subscriber only counts"))?;
        tokio::time::timeout(timeout, rx.recv())
            .await
            .context("no message in time")?
            .ok_or_else(|| anyhow!("subscriber stopped"))
    }

    /// Skips messages until one matches, waiting up to `timeout` in all.
    pub async fn next_where(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Message) -> bool,
    ) -> Result<Message> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = self
                .next(left)
                .await
                .with_context(|| format!("waiting for {what}"))?;
            if f(&m) {
                return Ok(m);
            }
        }
    }

    pub async fn stop(mut self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.task).await;
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Mosquitto of our own on a free loopback port, with a config the shared broker cannot be
/// given: `max_queued_messages 0` (no limit on QoS 1 messages queued per client, so a benchmark
/// can publish faster than a consumer reads without the broker dropping any), no persistence.
/// Stopped when dropped.
#[derive(Debug)]
pub struct PrivateBroker {
    child: std::process::Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl PrivateBroker {
    /// Starts `mosquitto` from `PATH` or `/usr/sbin`; `None` when it is not installed.
    pub async fn start() -> Result<Option<PrivateBroker>> {
        let Some(bin) = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .chain([std::path::PathBuf::from("/usr/sbin")])
            .map(|d| d.join("mosquitto"))
            .find(|p| p.is_file())
        else {
            return Ok(None);
        };
        let dir = tempfile::tempdir()?;
        let port = crate::harness::free_port()?;
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 0\nlog_dest file {}\n",
                dir.path().join("mosquitto.log").display()
            ),
        )?;
        let child = std::process::Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let broker = PrivateBroker {
            child,
            addr: format!("127.0.0.1:{port}"),
            _dir: dir,
        };
        crate::harness::wait_for(
            "the private Mosquitto to listen",
            Duration::from_secs(10),
            || async {
                tokio::net::TcpStream::connect(&broker.addr)
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await?;
        Ok(Some(broker))
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes retained messages (a zero-length retained publish clears a topic), so tests leave
/// the broker as they found it.
pub async fn clear_retained(broker: &str, topics: &[String]) -> Result<()> {
    let (host, port) = split_host_port(broker)?;
    let id = format!("aisle-clear-{:016x}", rand::random::<u64>());
    let (client, mut eventloop) = AsyncClient::new(MqttOptions::new(id, host, port), 100);
    for t in topics {
        client
            .publish(t.as_str(), QoS::AtLeastOnce, true, Vec::new())
            .await?;
    }
    client.disconnect().await?;
    let drain = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(anyhow!("clearing retained messages: {e}")),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .context("clearing retained messages timed out")?
}
