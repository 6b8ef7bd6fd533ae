//! `aisle-agent doctor`: the technician's self-check. Each check says PASS or FAIL (or SKIP when
//! it does not apply) and, on FAIL, what to do. Exit status is non-zero on any FAIL.
//!
//! The checks only read: the hub is asked `GET /healthz` and one signed (or bearer)
//! `GET /v1/sync/changes` that waits 0 ms; the ledger is verified in a read transaction; serial
//! devices are opened without blocking and closed.
use std::fmt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::clock::WallClock;
use crate::config::AgentConfig;
use crate::sync::{HubClient, SyncError};

/// Below this much free space in the data directory the disk check fails.
pub const MIN_FREE_BYTES: u64 = 256 * 1024 * 1024;
/// How long the broker has to answer.
const BROKER_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
        })
    }
}

/// One line of the checklist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
    /// What to do about a FAIL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn pass(name: &str, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        verdict: Verdict::Pass,
        detail: detail.into(),
        fix: None,
    }
}

fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        verdict: Verdict::Fail,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

fn skip(name: &str, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        verdict: Verdict::Skip,
        detail: detail.into(),
        fix: None,
    }
}

/// The whole checklist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    fn new(checks: Vec<Check>) -> Report {
        Report {
            ok: checks.iter().all(|c| c.verdict != Verdict::Fail),
            checks,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &self.checks {
            writeln!(f, "{}  {:width$}  {}", c.verdict, c.name, c.detail)?;
            if let Some(fix) = &c.fix {
                writeln!(f, "      {:width$}  -> {fix}", "")?;
            }
        }
        let failed = self
            .checks
            .iter()
            .filter(|c| c.verdict == Verdict::Fail)
            .count();
        if failed == 0 {
            write!(f, "all checks passed")
        } else {
            write!(f, "{failed} check(s) failed")
        }
    }
}

/// Runs every check for `config`. `clock` is the gateway's clock.
pub async fn run(config: &AgentConfig, clock: Arc<dyn WallClock>) -> Report {
    let mut checks = common(config, clock).await;
    let config_copy = config.clone();
    match tokio::task::spawn_blocking(move || serial_devices(&config_copy)).await {
        Ok(c) => checks.extend(c),
        Err(e) => checks.push(fail(
            "devices",
            format!("the check stopped: {e}"),
            "run it again",
        )),
    }
    Report::new(checks)
}

/// The same checklist from inside the running agent (the setup page): the serial devices the
/// agent itself holds open are not probed (that would take the port from its driver) but
/// judged by their driver's live link: `access_point` is what the label driver last reported
/// (None before its first report).
pub async fn run_in_agent(
    config: &AgentConfig,
    clock: Arc<dyn WallClock>,
    access_point: Option<aisle_drivers::esl::ApLinkStatus>,
) -> Report {
    let mut checks = common(config, clock).await;
    if let Some(path) = config.labels.as_ref().and_then(|l| l.access_point.clone()) {
        let name = format!("label access point {path}");
        checks.push(match access_point {
            Some(link) if link.is_connected() => pass(
                &name,
                link.ap.as_ref().map_or_else(
                    || "connected (the agent's driver holds the port)".to_string(),
                    |ap| {
                        format!(
                            "connected: channel {}, {} tags heard, {} packets queued",
                            ap.channel, ap.tags_heard, ap.queued
                        )
                    },
                ),
            ),
            Some(link) => fail(
                &name,
                link.last_error
                    .unwrap_or_else(|| "the agent's driver is not connected".into()),
                ACCESS_POINT_FIX,
            ),
            None => fail(
                &name,
                "the agent's driver has not reported yet",
                ACCESS_POINT_FIX,
            ),
        });
    }
    Report::new(checks)
}

async fn common(config: &AgentConfig, clock: Arc<dyn WallClock>) -> Vec<Check> {
    let mut checks = vec![identity(config)];
    checks.extend(hub(config, clock).await);
    checks.push(disk(&config.data_dir));
    checks.push(ledger(&config.data_dir).await);
    checks.push(broker(config).await);
    checks
}

const ACCESS_POINT_FIX: &str = "check the cable and `ls -l /dev/serial/by-id/`; the agent's user \
     needs the dialout group; `aisle-agent devices scan` lists what answers";

/// The checks that only look at this gateway (identity, disk), cheap enough to repeat every
/// few seconds: the status panel raises its alarm on any FAIL among them.
pub fn local_checks(config: &AgentConfig) -> Vec<Check> {
    vec![identity(config), disk(&config.data_dir)]
}

fn identity(config: &AgentConfig) -> Check {
    const NAME: &str = "gateway identity";
    match &config.gateway {
        None if !config.is_enrolled() => fail(
            NAME,
            "not enrolled: no [gateway] section and no credential, so nothing is synced with \
             the hub",
            "enrol this gateway with a code from HQ: aisle-agent enroll --hub URL --code CODE \
             --data DIR, then restart the agent",
        ),
        None => pass(
            NAME,
            "bearer credential from `aisle-hub gateway add` (not enrolled with a key)",
        ),
        Some(g) => match crate::provisioning::key::GatewayKey::load(&g.key_file) {
            Ok(_) => pass(
                NAME,
                format!(
                    "{} with its key in {} (mode 0600)",
                    g.id,
                    g.key_file.display()
                ),
            ),
            Err(e) => fail(
                NAME,
                e.to_string(),
                "restore the key file from this gateway's backup, or re-enrol (aisle-agent \
                 enroll --force with a new code)",
            ),
        },
    }
}

async fn hub(config: &AgentConfig, clock: Arc<dyn WallClock>) -> Vec<Check> {
    const REACH: &str = "hub reachable";
    const TLS: &str = "hub TLS identity";
    const CLOCK: &str = "clock skew";
    const AUTH: &str = "hub accepts this gateway";
    let client = match HubClient::from_config(config, clock) {
        Ok(c) => c,
        Err(e) => {
            return vec![fail(
                REACH,
                e.to_string(),
                "fix the configuration's [gateway] section or re-enrol",
            )];
        }
    };
    let pinned = config
        .gateway
        .as_ref()
        .and_then(|g| g.hub_fingerprint.clone());
    let started = Instant::now();
    let health = client.health().await;
    let took = started.elapsed().as_millis();
    let mut checks = Vec::new();
    let answer = match health {
        Ok(a) => a,
        Err(SyncError::CertificateChanged(m)) => {
            checks.push(pass(REACH, format!("{} answers TLS", config.hub_url)));
            checks.push(fail(
                TLS,
                m,
                "ask HQ for `aisle-hub tls fingerprint`: if it matches the certificate the hub \
                 presents now, re-enrol; if not, find what intercepts the connection",
            ));
            return checks;
        }
        Err(e) => {
            checks.push(fail(
                REACH,
                format!("{}: {e}", config.hub_url),
                "check the network (cable, Wi-Fi, firewall to the hub's port) and that the hub \
                 is running; the store keeps selling meanwhile",
            ));
            return checks;
        }
    };
    checks.push(pass(
        REACH,
        format!("{} answered in {took} ms", config.hub_url),
    ));
    checks.push(match &pinned {
        Some(fp) => pass(
            TLS,
            format!("certificate matches the pin {}", &fp[..16.min(fp.len())]),
        ),
        None => skip(TLS, "plain HTTP hub: nothing to pin"),
    });
    checks.push(match answer.skew {
        Some(s) if s.skew_ms.unsigned_abs() <= config.sync.skew_alarm_ms => {
            pass(CLOCK, format!("{} ms from the hub's clock", s.skew_ms))
        }
        Some(s) => fail(
            CLOCK,
            format!(
                "this gateway's clock is {} s {} the hub's",
                s.skew_ms.unsigned_abs() / 1000,
                if s.skew_ms > 0 { "behind" } else { "ahead of" }
            ),
            "set the clock: `timedatectl set-ntp true` (or `date -u -s ...`); prices still \
             activate on hub time meanwhile",
        ),
        None => skip(CLOCK, "the round trip was too slow to measure the skew"),
    });
    checks.push(match client.changes(0, 0, Some(1)).await {
        Ok(_) => pass(
            AUTH,
            match &config.gateway {
                Some(g) => format!("signed request as {} accepted", g.id),
                None => "bearer credential accepted".to_string(),
            },
        ),
        Err(e) => fail(
            AUTH,
            e.to_string(),
            "if the gateway was revoked or replaced, re-enrol it with a new code from HQ \
             (aisle-agent enroll --force)",
        ),
    });
    checks
}

fn disk(data_dir: &Path) -> Check {
    const NAME: &str = "disk space";
    match rustix::fs::statvfs(data_dir) {
        Ok(s) => {
            let free = s.f_bavail.saturating_mul(s.f_frsize);
            let mib = free / (1024 * 1024);
            if free >= MIN_FREE_BYTES {
                pass(NAME, format!("{mib} MiB free in {}", data_dir.display()))
            } else {
                fail(
                    NAME,
                    format!("only {mib} MiB free in {}", data_dir.display()),
                    format!(
                        "free at least {} MiB (old logs, downloads) so the ledger can grow",
                        MIN_FREE_BYTES / (1024 * 1024)
                    ),
                )
            }
        }
        Err(e) => fail(
            NAME,
            format!("cannot read {}: {e}", data_dir.display()),
            "create the data directory or fix data_dir in the configuration",
        ),
    }
}

async fn ledger(data_dir: &Path) -> Check {
    const NAME: &str = "ledger";
    if !data_dir.join(crate::ledger::DB_FILE).exists() {
        return pass(
            NAME,
            "no ledger yet: the agent creates it when it first starts",
        );
    }
    let dir = data_dir.to_path_buf();
    // SQLite off the async threads.
    let verified = tokio::task::spawn_blocking(move || crate::ledger::verify(&dir)).await;
    match verified {
        Ok(Ok(report)) => pass(NAME, one_line(&report.to_string())),
        Ok(Err(e)) => fail(
            NAME,
            one_line(&e.to_string()),
            "stop the agent, copy the data directory aside, and call support with \
             `aisle-agent ledger verify` output; do not delete the ledger (it holds unsent \
             sales)",
        ),
        Err(e) => fail(NAME, format!("the check stopped: {e}"), "run it again"),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

async fn broker(config: &AgentConfig) -> Check {
    const NAME: &str = "MQTT broker";
    let Some(Ok((host, port))) = config.footfall.as_ref().and_then(|f| f.mqtt_broker()) else {
        return skip(NAME, "no broker configured ([footfall] mqtt)");
    };
    match mqtt_connect(&host, port).await {
        Ok(()) => pass(NAME, format!("{host}:{port} accepted a connection")),
        Err(e) => fail(
            NAME,
            format!("{host}:{port}: {e}"),
            "start Mosquitto (`systemctl start mosquitto`) and check its listener and the \
             agent's broker credentials",
        ),
    }
}

/// An MQTT CONNECT answered by CONNACK success within [`BROKER_TIMEOUT`].
pub async fn mqtt_connect(host: &str, port: u16) -> Result<(), String> {
    use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet};
    let id = format!("aisle-doctor-{}", std::process::id());
    let mut options = MqttOptions::new(id, host, port);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(options, 4);
    let outcome = tokio::time::timeout(BROKER_TIMEOUT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    return if ack.code == ConnectReturnCode::Success {
                        Ok(())
                    } else {
                        Err(format!(
                            "the broker refused the connection ({:?})",
                            ack.code
                        ))
                    };
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err(format!("no answer within {BROKER_TIMEOUT:?}")));
    let _ = client.try_disconnect();
    outcome
}

fn serial_devices(config: &AgentConfig) -> Vec<Check> {
    let Some(labels) = config.labels.as_ref() else {
        return Vec::new();
    };
    let Some(path) = labels.access_point.clone() else {
        return Vec::new();
    };
    let name = format!("label access point {path}");
    if let Err(e) = open_serial(Path::new(&path)) {
        return vec![fail(&name, e, ACCESS_POINT_FIX)];
    }
    use crate::devices::probe::{Found, probe_access_point};
    vec![match probe_access_point(Path::new(&path), labels.baud) {
        Found::EslAccessPoint { status } => pass(
            &name,
            status.unwrap_or_else(|| "the access point answered".into()),
        ),
        Found::Unavailable { error } => fail(
            &name,
            format!("opens, but not for this check ({error})"),
            "stop the agent to check the access point, or check it in the agent's status page",
        ),
        other => fail(
            &name,
            format!(
                "the port opens but no access point answers ({})",
                serde_json::to_string(&other).unwrap_or_default()
            ),
            format!(
                "check that this is the access point's port and that [labels] baud ({}) is \
                 its speed; power-cycle the access point",
                labels.baud
            ),
        ),
    }]
}

/// Opens a serial device read-write without blocking on modem lines, then closes it.
pub fn open_serial(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.file_type().is_char_device() {
        // A plain file is a typo in the configuration, not a port.
        return Err("not a character device".into());
    }
    let flags = rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
        .map(drop)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_report_prints_each_check_with_what_to_do_and_fails_on_any_fail() {
        let r = Report::new(vec![
            pass("hub reachable", "https://hub answered in 3 ms"),
            fail("disk space", "only 12 MiB free", "free some space"),
            skip("MQTT broker", "no broker configured"),
        ]);
        assert!(!r.ok);
        let text = r.to_string();
        assert!(
            text.contains("PASS  hub reachable  https://hub answered in 3 ms"),
            "{text}"
        );
        assert!(text.contains("FAIL  disk space"), "{text}");
        assert!(text.contains("-> free some space"), "{text}");
        assert!(text.ends_with("1 check(s) failed"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(json["checks"][1]["verdict"], "FAIL");
        assert_eq!(json["checks"][2]["verdict"], "SKIP");
        assert!(json["checks"][0].get("fix").is_none());
        assert!(Report::new(vec![pass("a", "b")]).ok);
    }

    #[test]
    fn a_plain_file_is_not_a_serial_port() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ttyUSB9");
        std::fs::write(&f, b"").unwrap();
        assert!(open_serial(&f).unwrap_err().contains("character device"));
        assert!(open_serial(&dir.path().join("none")).is_err());
        assert!(disk(dir.path()).verdict != Verdict::Skip);
    }
}
