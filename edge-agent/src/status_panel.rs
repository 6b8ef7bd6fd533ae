//! The gateway's own status hardware in the agent (issue 7): the status LED and buzzer show
//! what the agent knows about itself, and the reset button held at boot sets the enrolment
//! aside so the gateway waits for `aisle-agent enroll`.
//!
//! The driver (`aisle_drivers::status_panel`) is generic over embedded-hal pins; only
//! [`open_hardware`] names the Raspberry Pi's (feature `rpi`). Everything else here takes any
//! pins, so it is tested with plain in-memory pins on any Linux.
//!
//! * [`AgentConditions`] → `GatewayConditions` → one `GatewayState`: not enrolled (no
//!   `[gateway]` and no credential), hub link down (sync status), alarm (the clock-skew alarm,
//!   a FAIL among [`crate::doctor::local_checks`], or a configured device down once the agent
//!   has run for [`DEVICE_GRACE`]: a silent camera, the MQTT broker, the label access point),
//!   reset requested (held at boot).
//! * [`boot`]: reads the reset button, sets the enrolment aside when it is held
//!   ([`set_aside_enrolment`]), and starts the panel's thread.
//! * [`spawn_feeder`]: the agent's task that looks at the agent every [`LOOK_EVERY`] and shows
//!   the state; the panel goes dark when the agent stops.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use aisle_drivers::status_panel::{
    GatewayConditions, GatewayState, PanelHealth, ResetButton, StatusPanel, StatusPanelHandle,
};
use aisle_protocol::UtcMillis;
use embedded_hal::delay::DelayNs;
use embedded_hal::digital::{InputPin, OutputPin};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::AgentConfig;
use crate::doctor::Verdict;
use crate::footfall::FootfallShared;
use crate::labels::LabelsShared;
use crate::ledger::Ledger;
use crate::provisioning::files::{StagedFile, sync_dir};
use crate::provisioning::key::KEY_FILE_NAME;
use crate::sync::{Link, SyncShared};

/// How often the feeder looks at the agent's link and clock.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How often the local self-checks (identity, disk) run for the alarm.
pub const CHECK_EVERY: Duration = Duration::from_secs(30);
/// Devices get this long after the agent starts to report before one that has not counts as
/// down (a camera is silent until its first message; the default silence timeout is 2 min).
pub const DEVICE_GRACE: Duration = Duration::from_secs(120);

/// What the agent knows about itself, before it is reduced to the one state the panel shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AgentConditions {
    /// The reset button was held at this boot (the enrolment was set aside).
    pub reset_requested: bool,
    /// The configuration holds an identity (`[gateway]` or a credential).
    pub enrolled: bool,
    /// The sync status says the hub link is up.
    pub link_up: bool,
    /// The sync status raises the clock-skew alarm.
    pub clock_alarm: bool,
    /// Local self-checks that FAIL (as `aisle-agent doctor` words them).
    pub failing_checks: usize,
    /// Configured devices not working (cameras offline, broker or access point down).
    pub devices_down: usize,
}

impl AgentConditions {
    /// The driver's conditions: an alarm is the clock alarm, any failing check or a device down. The agent
    /// never enrols itself (`aisle-agent enroll` is its own process), so `enrolling` is false.
    pub fn gateway(&self) -> GatewayConditions {
        GatewayConditions {
            reset_requested: self.reset_requested,
            enrolling: false,
            enrolled: self.enrolled,
            alarm: self.clock_alarm || self.failing_checks > 0 || self.devices_down > 0,
            hub_reachable: self.link_up,
        }
    }

    pub fn state(&self) -> GatewayState {
        self.gateway().state()
    }
}

/// What the panel shows now, for the setup page and tests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PanelStatus {
    /// `NotEnrolled`, `Online`, `Offline`, `Alarm`, `ResetRequested` (as the driver names them).
    pub state: String,
    /// The state in the technician's words.
    pub meaning: String,
    pub conditions: AgentConditions,
    /// Steps in which a pin refused its level since the agent started.
    pub pin_faults: u64,
    pub last_fault: Option<String>,
}

/// Shared between the feeder, the API and the agent's handle.
#[derive(Debug, Default)]
pub struct PanelView {
    shown: Mutex<Option<(GatewayState, AgentConditions, PanelHealth)>>,
}

impl PanelView {
    fn set(&self, state: GatewayState, conditions: AgentConditions, health: PanelHealth) {
        *self.shown.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((state, conditions, health));
    }

    /// The state last shown (None before the feeder's first look).
    pub fn state(&self) -> Option<GatewayState> {
        self.shown
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|s| s.0)
    }

    pub fn status(&self) -> Option<PanelStatus> {
        let shown = self.shown.lock().unwrap_or_else(PoisonError::into_inner);
        shown
            .as_ref()
            .map(|(state, conditions, health)| PanelStatus {
                state: format!("{state:?}"),
                meaning: state.meaning().to_string(),
                conditions: *conditions,
                pin_faults: health.pin_faults,
                last_fault: health.last_fault.clone(),
            })
    }
}

/// A started panel for [`crate::Agent::start_with`]: the driver's thread and whether the reset
/// button was held at this boot.
#[derive(Debug)]
pub struct AgentPanel {
    pub handle: StatusPanelHandle,
    pub reset_requested: bool,
}

/// What the reset button set aside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetDone {
    /// The gateway whose enrolment was set aside (None: the configuration held none).
    pub gateway: Option<String>,
    /// The configuration as it was, identity included (a hard link to the old file).
    pub config_copy: Option<PathBuf>,
    /// The key file, renamed.
    pub key_copy: Option<PathBuf>,
}

/// `20261205T134501.123Z`: a UTC timestamp that sorts and is safe in a file name.
fn stamp(at: UtcMillis) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at.0) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

fn aside(path: &Path, stamp: &str) -> Result<PathBuf, String> {
    let name = path
        .file_name()
        .ok_or_else(|| format!("{} names no file", path.display()))?;
    let target = path.with_file_name(format!("{}.reset-{stamp}", name.to_string_lossy()));
    if target.exists() {
        return Err(format!("{} exists already", target.display()));
    }
    Ok(target)
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Sets this gateway's enrolment aside, as the reset button asks: the configuration loses its
/// `[gateway]` section (and a bearer `credential`), the key file is renamed, both with the suffix
/// `.reset-<UTC time>`, and the gateway audit log says so. Afterwards the agent runs without an
/// identity (it does not sync) until `aisle-agent enroll` writes a new one.
///
/// All or nothing: the new configuration is written under a temporary name and flushed, the old
/// one kept by a hard link under its set-aside name, then renamed into place; if the key cannot
/// be renamed after that, the old configuration is renamed back. A key left behind by a power
/// cut between the two renames is set aside by the next reset (it sits at the default
/// `<data_dir>/gateway.key` with no `[gateway]` naming it).
pub fn set_aside_enrolment(
    config_path: &Path,
    config: &AgentConfig,
    now: UtcMillis,
) -> Result<ResetDone, String> {
    let stamp = stamp(now);
    let text = std::fs::read_to_string(config_path)
        .map_err(|e| format!("cannot read {}: {e}", config_path.display()))?;
    let mut table: toml::Table = toml::from_str(&text)
        .map_err(|e| format!("{}: {}", config_path.display(), e.message().trim()))?;
    let had_gateway = table.remove("gateway").is_some();
    let had_credential = table.remove("credential").is_some();
    let gateway = config.gateway_id().ok().map(|g| g.to_string());
    let key = match &config.gateway {
        Some(g) => Some(g.key_file.clone()),
        None => Some(config.data_dir.join(KEY_FILE_NAME)),
    }
    .filter(|k| k.exists());

    let mut config_copy = None;
    if had_gateway || had_credential {
        let body =
            toml::to_string(&table).map_err(|e| format!("cannot write the configuration: {e}"))?;
        let new_text = format!(
            "# The reset button was held at boot at {stamp}: the enrolment was set aside (the \
             previous file is {}.reset-{stamp}).\n# Run `aisle-agent enroll` to enrol this \
             gateway again.\n{body}",
            config_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let mode = std::fs::metadata(config_path)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o600);
        let io = |e: std::io::Error| format!("cannot write {}: {e}", config_path.display());
        let mut staged = StagedFile::create(config_path, mode).map_err(io)?;
        staged.write(new_text.as_bytes(), 0).map_err(io)?;
        let copy = aside(config_path, &stamp)?;
        std::fs::hard_link(config_path, &copy)
            .map_err(|e| format!("cannot keep the configuration as {}: {e}", copy.display()))?;
        if let Err(e) = staged.commit() {
            let _ = std::fs::remove_file(&copy);
            return Err(format!(
                "cannot replace {}: {e} (nothing was changed)",
                config_path.display()
            ));
        }
        config_copy = Some(copy);
    }

    let mut key_copy = None;
    if let Some(key) = &key {
        let renamed = aside(key, &stamp).and_then(|copy| {
            std::fs::rename(key, &copy)
                .map(|()| copy)
                .map_err(|e| format!("cannot rename {}: {e}", key.display()))
        });
        match renamed {
            Ok(copy) => {
                let _ = sync_dir(parent_of(key));
                key_copy = Some(copy);
            }
            Err(e) => {
                // Put the old configuration back, so the gateway stays as it was.
                if let Some(copy) = &config_copy {
                    let _ = std::fs::rename(copy, config_path);
                    let _ = sync_dir(parent_of(config_path));
                }
                return Err(format!("{e} (the enrolment was left as it was)"));
            }
        }
    }
    if config_copy.is_some() {
        let _ = sync_dir(parent_of(config_path));
    }

    let show = |p: &Option<PathBuf>| {
        p.as_ref()
            .map_or_else(|| "none".to_string(), |p| p.display().to_string())
    };
    let subject = format!(
        "reset button held at boot: enrolment of {} set aside (configuration kept as {}, key as \
         {}); waiting for `aisle-agent enroll`",
        gateway.as_deref().unwrap_or("no gateway"),
        show(&config_copy),
        show(&key_copy)
    );
    crate::audit::AuditLog::new(&config.data_dir).record(
        now.0,
        "technician",
        crate::audit::action::GATEWAY_RESET,
        &subject,
    );
    tracing::warn!("{subject}");
    Ok(ResetDone {
        gateway,
        config_copy,
        key_copy,
    })
}

/// The panel after boot, and the configuration to run with (reloaded when the reset set the
/// enrolment aside).
#[derive(Debug)]
pub struct Booted {
    pub panel: AgentPanel,
    pub config: AgentConfig,
    pub reset: Option<ResetDone>,
}

/// At boot, before the agent starts: reads the reset button for `hold` (with `delay`); held,
/// the enrolment is set aside ([`set_aside_enrolment`]) and the configuration reloaded. Then the
/// panel's thread starts, showing `ResetRequested` after a reset, else what the configuration
/// says until the agent's first look. A button that cannot be read, or a reset that cannot
/// finish, is logged and the gateway boots as it was.
pub fn boot<LED, BUZZER, BUTTON>(
    panel: StatusPanel<LED, BUZZER>,
    mut button: ResetButton<BUTTON>,
    delay: &mut impl DelayNs,
    hold: Duration,
    config_path: &Path,
    config: AgentConfig,
    now: UtcMillis,
) -> Result<Booted, String>
where
    LED: OutputPin + Send + 'static,
    BUZZER: OutputPin + Send + 'static,
    BUTTON: InputPin,
{
    let held = match button.held_at_boot(delay, hold) {
        Ok(held) => held,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the reset button: booting as enrolled");
            false
        }
    };
    let (config, reset) = if held {
        tracing::warn!("reset button held at boot: setting the enrolment aside");
        match set_aside_enrolment(config_path, &config, now) {
            Ok(done) => {
                let reloaded =
                    AgentConfig::load(config_path).map_err(|e| format!("after the reset: {e}"))?;
                (reloaded, Some(done))
            }
            Err(e) => {
                tracing::error!(error = %e, "the reset could not set the enrolment aside");
                (config, None)
            }
        }
    } else {
        (config, None)
    };
    let reset_requested = reset.is_some();
    let mut panel = panel;
    panel.show(
        AgentConditions {
            reset_requested,
            enrolled: config.is_enrolled(),
            link_up: false,
            ..AgentConditions::default()
        }
        .state(),
    );
    let handle = panel
        .spawn()
        .map_err(|e| format!("cannot start the status panel's thread: {e}"))?;
    Ok(Booted {
        panel: AgentPanel {
            handle,
            reset_requested,
        },
        config,
        reset,
    })
}

/// The status hardware `[status_panel]` names, after the reset button was read ([`boot`]), or
/// `None` without `[status_panel]`. A build without the `rpi` feature refuses a configured panel.
#[cfg(feature = "rpi")]
pub fn open_hardware(
    config_path: &Path,
    config: AgentConfig,
) -> Result<(Option<Booted>, AgentConfig), String> {
    use aisle_drivers::status_panel::ThreadSleep;
    let Some(settings) = config.status_panel.clone() else {
        return Ok((None, config));
    };
    let panel = StatusPanel::rpi(
        settings.led_bcm,
        settings.buzzer_bcm,
        GatewayState::NotEnrolled,
    )
    .map_err(|e| format!("status panel: {e}"))?;
    let button = ResetButton::rpi(settings.reset_bcm).map_err(|e| format!("status panel: {e}"))?;
    let booted = boot(
        panel,
        button,
        &mut ThreadSleep,
        settings.reset_hold(),
        config_path,
        config,
        UtcMillis::now(),
    )?;
    let config = booted.config.clone();
    Ok((Some(booted), config))
}

/// The status hardware `[status_panel]` names: this build has no `rpi` feature, so a configured
/// panel is refused.
#[cfg(not(feature = "rpi"))]
pub fn open_hardware(
    config_path: &Path,
    config: AgentConfig,
) -> Result<(Option<Booted>, AgentConfig), String> {
    if config.status_panel.is_some() {
        return Err(format!(
            "{} has [status_panel], but this aisle-agent was built without the `rpi` feature, \
             so it cannot drive the status LED, buzzer or reset button: install a Raspberry Pi \
             build (cargo build --release -p aisle-agent --features rpi) or remove \
             [status_panel]",
            config_path.display()
        ));
    }
    Ok((None, config))
}

/// The agent's task that shows its state on the panel: every [`LOOK_EVERY`] it reads the sync
/// status (link, clock alarm), every [`CHECK_EVERY`] it runs the local self-checks (off the
/// async threads). On shutdown the panel goes dark (its thread joins off the runtime).
pub(crate) struct FeederInputs {
    pub config: AgentConfig,
    pub sync: Arc<SyncShared>,
    pub ledger: Ledger,
    pub footfall: Arc<FootfallShared>,
    pub labels: Arc<LabelsShared>,
}

/// Configured devices not working now: cameras offline, the broker down, the label access point
/// not connected.
fn devices_down(i: &FeederInputs) -> usize {
    let cameras = i.footfall.view();
    let mut down = cameras.cameras.iter().filter(|c| !c.online).count();
    if cameras.mqtt == "down" {
        down += 1;
    }
    let access_point = i
        .config
        .labels
        .as_ref()
        .is_some_and(|l| l.access_point.is_some());
    if access_point && !i.labels.link().is_some_and(|l| l.is_connected()) {
        down += 1;
    }
    down
}

pub(crate) fn spawn_feeder(
    panel: AgentPanel,
    view: Arc<PanelView>,
    inputs: FeederInputs,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let AgentPanel {
            handle,
            reset_requested,
        } = panel;
        let FeederInputs {
            config,
            sync,
            ledger,
            ..
        } = &inputs;
        let enrolled = config.is_enrolled();
        let started = Instant::now();
        let mut failing = 0;
        let mut checked: Option<Instant> = None;
        loop {
            if checked.is_none_or(|t| t.elapsed() >= CHECK_EVERY) {
                let c = config.clone();
                failing = tokio::task::spawn_blocking(move || {
                    crate::doctor::local_checks(&c)
                        .iter()
                        .filter(|c| c.verdict == Verdict::Fail)
                        .count()
                })
                .await
                .unwrap_or(0);
                checked = Some(Instant::now());
            }
            let status = sync.status(ledger);
            let conditions = AgentConditions {
                reset_requested,
                enrolled,
                link_up: status.link == Link::Up,
                clock_alarm: status.clock_alarm,
                failing_checks: failing,
                devices_down: if started.elapsed() >= DEVICE_GRACE {
                    devices_down(&inputs)
                } else {
                    0
                },
            };
            let state = conditions.state();
            handle.show(state);
            view.set(state, conditions, handle.health());
            tokio::select! {
                () = tokio::time::sleep(LOOK_EVERY) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        let _ = tokio::task::spawn_blocking(move || drop(handle)).await;
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aisle_drivers::status_panel::PressedLevel;

    #[test]
    fn each_condition_maps_to_the_state_a_technician_reads() {
        let base = AgentConditions {
            enrolled: true,
            link_up: true,
            ..AgentConditions::default()
        };
        assert_eq!(base.state(), GatewayState::Online);
        let not_enrolled = AgentConditions {
            enrolled: false,
            link_up: false,
            ..base
        };
        assert_eq!(not_enrolled.state(), GatewayState::NotEnrolled);
        // Not enrolled outranks a failing check (the identity check fails when not enrolled).
        let not_enrolled_failing = AgentConditions {
            failing_checks: 1,
            ..not_enrolled
        };
        assert_eq!(not_enrolled_failing.state(), GatewayState::NotEnrolled);
        let offline = AgentConditions {
            link_up: false,
            ..base
        };
        assert_eq!(offline.state(), GatewayState::Offline);
        let skew = AgentConditions {
            clock_alarm: true,
            ..base
        };
        assert_eq!(skew.state(), GatewayState::Alarm);
        let failing = AgentConditions {
            failing_checks: 2,
            ..offline
        };
        assert_eq!(
            failing.state(),
            GatewayState::Alarm,
            "alarm outranks offline"
        );
        let reset = AgentConditions {
            reset_requested: true,
            ..not_enrolled_failing
        };
        assert_eq!(reset.state(), GatewayState::ResetRequested);
        assert!(!reset.gateway().enrolling);
        assert!(skew.gateway().alarm && failing.gateway().alarm && !offline.gateway().alarm);
        let camera_down = AgentConditions {
            devices_down: 1,
            ..base
        };
        assert_eq!(camera_down.state(), GatewayState::Alarm);
    }

    // ---- in-memory GPIO: test doubles of pins that cannot exist on this machine ----------

    /// An output pin that records every level written.
    #[derive(Clone, Debug, Default)]
    struct RecordingPin(Arc<Mutex<Vec<bool>>>);

    impl embedded_hal::digital::ErrorType for RecordingPin {
        type Error = std::convert::Infallible;
    }

    impl OutputPin for RecordingPin {
        fn set_low(&mut self) -> Result<(), Self::Error> {
            self.0.lock().unwrap().push(false);
            Ok(())
        }
        fn set_high(&mut self) -> Result<(), Self::Error> {
            self.0.lock().unwrap().push(true);
            Ok(())
        }
    }

    /// A button input that reads `pressed` (wired to ground: pressed reads low).
    #[derive(Debug)]
    struct ButtonPin {
        pressed: bool,
        reads: u32,
    }

    impl embedded_hal::digital::ErrorType for ButtonPin {
        type Error = std::convert::Infallible;
    }

    impl InputPin for ButtonPin {
        fn is_high(&mut self) -> Result<bool, Self::Error> {
            self.reads += 1;
            Ok(!self.pressed)
        }
        fn is_low(&mut self) -> Result<bool, Self::Error> {
            self.reads += 1;
            Ok(self.pressed)
        }
    }

    /// No real waiting: counts the time the button was read for.
    #[derive(Debug, Default)]
    struct Elapsed(u64);

    impl DelayNs for Elapsed {
        fn delay_ns(&mut self, ns: u32) {
            self.0 += u64::from(ns);
        }
    }

    const GATEWAY: &str = "gw-S001-0be601c8";

    /// An enrolled gateway's data directory: its config (with other settings) and key.
    fn enrolled(dir: &Path) -> (PathBuf, AgentConfig) {
        let key = dir.join(KEY_FILE_NAME);
        std::fs::write(&key, b"the key").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = dir.join("agent.toml");
        let text = format!(
            "store = \"S001\"\nhub_url = \"http://127.0.0.1:7400\"\ndata_dir = \"{}\"\n\
             listen = \"127.0.0.1:0\"\n\n[sync]\nlong_poll_ms = 1000\n\n[gateway]\nid = \
             \"{GATEWAY}\"\nkey_file = \"{}\"\n\n[status_panel]\nled_bcm = 17\nbuzzer_bcm = 27\n\
             reset_bcm = 22\nreset_hold_ms = 1000\n",
            dir.display(),
            key.display()
        );
        std::fs::write(&path, &text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        (path.clone(), AgentConfig::load(&path).unwrap())
    }

    fn start(dir: &Path, pressed: bool) -> (Booted, Arc<Mutex<Vec<bool>>>, u64) {
        let (path, config) = enrolled(dir);
        let led = RecordingPin::default();
        let writes = led.0.clone();
        let panel = StatusPanel::new(led, RecordingPin::default(), GatewayState::NotEnrolled);
        let button = ResetButton::new(ButtonPin { pressed, reads: 0 }, PressedLevel::Low);
        let mut waited = Elapsed::default();
        let booted = boot(
            panel,
            button,
            &mut waited,
            Duration::from_millis(1_000),
            &path,
            config,
            UtcMillis(1_764_942_301_123),
        )
        .unwrap();
        (booted, writes, waited.0)
    }

    #[test]
    fn a_button_not_held_boots_as_enrolled_and_touches_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let (booted, _, waited) = start(dir.path(), false);
        let config = std::fs::read_to_string(dir.path().join("agent.toml")).unwrap();
        assert!(booted.reset.is_none());
        assert!(!booted.panel.reset_requested);
        assert!(booted.config.is_enrolled());
        assert!(
            waited < 100_000_000,
            "a normal boot waits the debounce only: {waited} ns"
        );
        // Only the configuration and the key: nothing set aside, no audit entry.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        assert!(config.contains("[gateway]"), "{config}");
        assert!(dir.path().join(KEY_FILE_NAME).exists());
    }

    #[test]
    fn a_held_button_sets_the_enrolment_aside_and_the_agent_waits_for_enrol() {
        let dir = tempfile::tempdir().unwrap();
        let (booted, led, waited) = start(dir.path(), true);
        assert!(
            waited >= 1_000_000_000,
            "held for the whole hold: {waited} ns"
        );
        let done = booted.reset.clone().unwrap();
        assert!(booted.panel.reset_requested);
        assert_eq!(done.gateway.as_deref(), Some(GATEWAY));
        let stamp = "20251205T134501.123Z";
        let config_copy = dir.path().join(format!("agent.toml.reset-{stamp}"));
        let key_copy = dir.path().join(format!("{KEY_FILE_NAME}.reset-{stamp}"));
        assert_eq!(done.config_copy.as_deref(), Some(config_copy.as_path()));
        assert_eq!(done.key_copy.as_deref(), Some(key_copy.as_path()));
        // The key is renamed (same bytes, same mode), not copied: no key is left in place.
        assert!(!dir.path().join(KEY_FILE_NAME).exists());
        assert_eq!(std::fs::read(&key_copy).unwrap(), b"the key");
        assert_eq!(
            std::fs::metadata(&key_copy).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // The old configuration, identity included, under its set-aside name.
        let old = std::fs::read_to_string(&config_copy).unwrap();
        assert!(old.contains("[gateway]") && old.contains(GATEWAY), "{old}");
        // The new one: no identity, every other setting kept, same mode.
        let path = dir.path().join("agent.toml");
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(
            !new.contains("[gateway]") && !new.contains(GATEWAY),
            "{new}"
        );
        assert!(new.contains("aisle-agent enroll"), "{new}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let c = &booted.config;
        assert!(!c.is_enrolled());
        assert_eq!(c.sync.long_poll_ms, 1000);
        assert_eq!(c.status_panel.as_ref().unwrap().reset_bcm, 22);
        assert!(
            c.gateway_id()
                .unwrap_err()
                .to_string()
                .contains("not enrolled")
        );
        // No temporary file left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.contains("staged")), "{names:?}");
        // The audit log says who and what, and stays intact.
        let entries = crate::audit::list(dir.path()).unwrap();
        let e = entries.last().unwrap();
        assert_eq!(e.action, crate::audit::action::GATEWAY_RESET);
        assert!(e.subject.contains(GATEWAY), "{}", e.subject);
        assert!(e.subject.contains(&key_copy.display().to_string()));
        crate::audit::verify(dir.path()).unwrap();
        // The panel plays ResetRequested (three flashes): the LED was written, starting lit.
        drop(booted);
        let writes = led.lock().unwrap().clone();
        assert!(writes.first() == Some(&true), "{writes:?}");
        assert_eq!(
            writes.last(),
            Some(&false),
            "dark once the handle is dropped"
        );

        // Held again while still not enrolled: nothing left to set aside, still a reset.
        let config = AgentConfig::load(&path).unwrap();
        let again = set_aside_enrolment(&path, &config, UtcMillis(1_764_942_399_000)).unwrap();
        assert_eq!(again.gateway, None);
        assert_eq!(again.config_copy, None);
        assert_eq!(again.key_copy, None);
    }

    #[test]
    fn a_key_left_by_a_power_cut_between_the_renames_goes_with_the_next_reset() {
        let dir = tempfile::tempdir().unwrap();
        let (path, config) = enrolled(dir.path());
        let mut unenrolled = config.clone();
        unenrolled.gateway = None;
        std::fs::write(&path, toml::to_string(&unenrolled).unwrap()).unwrap();
        let done = set_aside_enrolment(&path, &unenrolled, UtcMillis(0)).unwrap();
        assert_eq!(done.config_copy, None);
        assert_eq!(
            done.key_copy.unwrap(),
            dir.path()
                .join(format!("{KEY_FILE_NAME}.reset-19700101T000000.000Z"))
        );
        assert!(!dir.path().join(KEY_FILE_NAME).exists());
    }

    #[test]
    fn a_key_that_cannot_be_renamed_leaves_the_enrolment_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let (path, config) = enrolled(dir.path());
        let before = std::fs::read_to_string(&path).unwrap();
        // A directory already holds the key's set-aside name.
        let at = UtcMillis(1_000);
        std::fs::create_dir(
            dir.path()
                .join(format!("{KEY_FILE_NAME}.reset-19700101T000001.000Z")),
        )
        .unwrap();
        let e = set_aside_enrolment(&path, &config, at).unwrap_err();
        assert!(e.contains("left as it was"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
        assert!(dir.path().join(KEY_FILE_NAME).exists());
        assert!(AgentConfig::load(&path).unwrap().is_enrolled());
    }

    #[cfg(not(feature = "rpi"))]
    #[test]
    fn a_build_without_rpi_refuses_a_configured_panel() {
        let dir = tempfile::tempdir().unwrap();
        let (path, config) = enrolled(dir.path());
        let e = open_hardware(&path, config.clone()).unwrap_err();
        assert!(e.contains("without the `rpi` feature"), "{e}");
        assert!(e.contains("[status_panel]"), "{e}");
        let mut none = config;
        none.status_panel = None;
        assert!(open_hardware(&path, none).unwrap().0.is_none());
    }
}
