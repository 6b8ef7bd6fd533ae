//! The status panel fed by a running agent: what the LED and buzzer show for a gateway that is
//! not enrolled, one whose reset button was held at boot, and one whose hub is down, and that
//! an agent without an identity runs for the store but refuses to sync, saying why.
//!
//! The panel's pins are in-memory test doubles of GPIO (no GPIO here): structs implementing
//! embedded-hal's `OutputPin` that record the levels written.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aisle_agent::Agent;
use aisle_agent::clock::SystemClock;
use aisle_agent::config::{AgentConfig, ClockConfig, SyncConfig};
use aisle_agent::status_panel::AgentPanel;
use aisle_drivers::status_panel::{GatewayState, StatusPanel};

const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// An output pin that records every level written.
#[derive(Clone, Debug, Default)]
struct RecordingPin(Arc<Mutex<Vec<bool>>>);

impl embedded_hal::digital::ErrorType for RecordingPin {
    type Error = std::convert::Infallible;
}

impl embedded_hal::digital::OutputPin for RecordingPin {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        self.0.lock().unwrap().push(false);
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Self::Error> {
        self.0.lock().unwrap().push(true);
        Ok(())
    }
}

fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn config(dir: &std::path::Path, credential: &str) -> AgentConfig {
    AgentConfig {
        store: "S001".parse().unwrap(),
        hub_url: format!("http://127.0.0.1:{}", closed_port()),
        credential: credential.to_string(),
        gateway: None,
        status_panel: None,
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        sync: SyncConfig {
            long_poll_ms: 1_000,
            upload_batch: 100,
            backoff_base_ms: 20,
            backoff_cap_ms: 200,
            skew_alarm_ms: 5_000,
        },
        clock: ClockConfig::default(),
        labels: None,
        checkout: None,
        footfall: None,
        pickup: None,
    }
}

/// Starts the agent with a panel on recording pins; returns the agent and the LED's levels.
async fn start(
    config: AgentConfig,
    reset_requested: bool,
) -> (aisle_agent::AgentHandle, Arc<Mutex<Vec<bool>>>) {
    let led = RecordingPin::default();
    let levels = led.0.clone();
    let handle = StatusPanel::new(led, RecordingPin::default(), GatewayState::NotEnrolled)
        .spawn()
        .unwrap();
    let panel = AgentPanel {
        handle,
        reset_requested,
    };
    let agent = Agent::start_with(config, Arc::new(SystemClock), Some(panel))
        .await
        .unwrap();
    (agent, levels)
}

async fn wait_state(agent: &aisle_agent::AgentHandle, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = agent.panel_status();
        if status.as_ref().is_some_and(|s| s.state == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the panel never showed {want}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_identity_shows_not_enrolled_and_refuses_to_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, levels) = start(config(dir.path(), ""), false).await;
    wait_state(&agent, "NotEnrolled").await;
    let status = agent.panel_status().unwrap();
    assert!(!status.conditions.enrolled);
    assert!(status.meaning.contains("aisle-agent enroll"), "{status:?}");
    // The store keeps working, the sync says why it does not run.
    let sync = agent.sync_status();
    assert_eq!(sync.link, aisle_agent::sync::Link::Down);
    let why = sync.last_error.unwrap();
    assert!(
        why.contains("not enrolled") && why.contains("aisle-agent enroll"),
        "{why}"
    );
    let base = format!("http://{}", agent.local_addr());
    let body: serde_json::Value = reqwest::get(format!("{base}/v1/sync/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        body["last_error"]
            .as_str()
            .unwrap()
            .contains("not enrolled"),
        "{body}"
    );
    // The slow blink started lit; the agent's stop turns the LED off.
    agent.shutdown().await;
    let written = levels.lock().unwrap().clone();
    assert_eq!(written.first(), Some(&true), "{written:?}");
    assert_eq!(
        written.last(),
        Some(&false),
        "the LED is left off: {written:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reset_at_boot_the_panel_shows_reset_requested() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, _) = start(config(dir.path(), ""), true).await;
    wait_state(&agent, "ResetRequested").await;
    assert!(agent.panel_status().unwrap().conditions.reset_requested);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolled_gateway_whose_hub_is_down_shows_offline() {
    let dir = tempfile::tempdir().unwrap();
    let credential = format!("gw-S001-1a2b3c4d.{SECRET}");
    let (agent, _) = start(config(dir.path(), &credential), false).await;
    wait_state(&agent, "Offline").await;
    let status = agent.panel_status().unwrap();
    assert!(status.conditions.enrolled && !status.conditions.link_up);
    assert_eq!(status.conditions.failing_checks, 0, "{status:?}");
    assert_eq!(status.pin_faults, 0);
    agent.shutdown().await;
}
