//! The store's devices from the technician's side: `aisle-agent devices scan` (which serial
//! ports answer which protocol, which MQTT devices publish) and `devices add` (the device in the
//! agent's configuration, see [`configure`], and an MQTT device's own credential and topic in
//! Mosquitto's password and ACL files).
pub mod configure;
pub mod mosquitto;
pub mod probe;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::config::AgentConfig;

/// `aisle-agent devices ...`.
#[derive(Debug, clap::Subcommand)]
pub enum DevicesCommand {
    /// Probe serial ports with each protocol's identify/status command and list the MQTT devices
    /// publishing under the store's topics. Stop the agent first: a port it holds shows as
    /// unavailable.
    Scan {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// A serial port to probe (repeat for more). Default: the configured ones,
        /// /dev/serial/by-id/*, /dev/ttyUSB*, /dev/ttyACM*.
        #[arg(long = "port", value_name = "PATH")]
        ports: Vec<PathBuf>,
        /// How long to listen for MQTT devices.
        #[arg(long, default_value_t = 3)]
        mqtt_seconds: u64,
        /// The broker, host:port (default: [footfall] mqtt).
        #[arg(long, value_name = "HOST:PORT")]
        broker: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Confirm a device. A camera (with --vendor and --zone) goes into [[footfall.cameras]] and
    /// gets its own MQTT credential and topic in Mosquitto's password and ACL files (printed
    /// once; reload Mosquitto afterwards). A lane's serial scanner, scale or printer (with
    /// --port) goes onto lane --id in [[checkout.lanes]], without MQTT credential. Other MQTT
    /// devices (lane, sensor, or a camera/scanner/scale without those options) get the
    /// credential only. The configuration is replaced in one step, or not at all; restart the
    /// agent to use it.
    Add {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// camera, scanner, scale, printer, lane or sensor.
        #[arg(long)]
        kind: String,
        /// The camera's (or MQTT device's) id in its topics (`[A-Za-z0-9_-]{1,64}`), or for a
        /// serial scanner, scale or printer the lane's id (e.g. 1).
        #[arg(long)]
        id: String,
        /// Camera: axis, xovis or hikvision (its payload format).
        #[arg(long)]
        vendor: Option<String>,
        /// Camera: the entrance it counts for, e.g. "Main entrance".
        #[arg(long)]
        zone: Option<String>,
        /// Camera: the MQTT broker, host:port, when the configuration has no [footfall] yet.
        #[arg(long, value_name = "HOST:PORT")]
        broker: Option<String>,
        /// Scanner, scale or printer: its serial device, /dev/serial/by-id/...
        #[arg(long, value_name = "PATH")]
        port: Option<String>,
        /// Scale: mt-sics, toledo, toledo-lb, nci or cas.
        #[arg(long)]
        protocol: Option<String>,
        /// The store's currency (e.g. CNY), when the configuration has no [checkout] yet.
        #[arg(long)]
        currency: Option<String>,
        /// Replace a device already configured (same camera id, or the lane's device of that
        /// kind).
        #[arg(long)]
        replace: bool,
        /// Where `passwd` and `acl` are written.
        #[arg(long, value_name = "DIR", default_value = "/etc/mosquitto/aisle")]
        mosquitto_dir: PathBuf,
    },
}

#[derive(Debug, Serialize)]
struct ScanReport {
    serial: Vec<probe::PortReport>,
    mqtt: Result<Vec<probe::MqttDevice>, String>,
}

fn topic_prefix(config: &AgentConfig) -> String {
    config
        .footfall
        .as_ref()
        .map_or_else(|| "aisle/v1".to_string(), |f| f.topic_prefix.clone())
}

/// Runs a `devices` command.
pub fn run(command: DevicesCommand) -> anyhow::Result<()> {
    match command {
        DevicesCommand::Scan {
            config,
            ports,
            mqtt_seconds,
            broker,
            json,
        } => {
            let config = AgentConfig::load(&config)?;
            let configured: Vec<String> = config
                .labels
                .as_ref()
                .and_then(|l| l.access_point.clone())
                .into_iter()
                .collect();
            let ap_baud = config.labels.as_ref().map_or(115_200, |l| l.baud);
            let serial: Vec<probe::PortReport> = probe::candidates(&ports, &configured)
                .into_iter()
                .map(|p| probe::PortReport {
                    found: probe::probe(&p, ap_baud),
                    path: p.display().to_string(),
                })
                .collect();
            let broker = broker.or_else(|| config.footfall.as_ref().and_then(|f| f.mqtt.clone()));
            let mqtt = match broker {
                None => Err("no broker configured ([footfall] mqtt or --broker)".to_string()),
                Some(b) => {
                    let (host, port) = b
                        .rsplit_once(':')
                        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                        .ok_or_else(|| anyhow::anyhow!("--broker must be host:port"))?;
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("cannot start the async runtime")?;
                    rt.block_on(probe::mqtt_devices(
                        &host,
                        port,
                        &topic_prefix(&config),
                        config.store.as_str(),
                        Duration::from_secs(mqtt_seconds.clamp(1, 600)),
                    ))
                }
            };
            let report = ScanReport { serial, mqtt };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            println!("serial ports:");
            if report.serial.is_empty() {
                println!("  none found");
            }
            for p in &report.serial {
                println!("  {}: {}", p.path, serde_json::to_string(&p.found)?);
            }
            match &report.mqtt {
                Ok(devices) => {
                    println!("MQTT devices ({} s):", mqtt_seconds);
                    if devices.is_empty() {
                        println!("  none published");
                    }
                    for d in devices {
                        println!(
                            "  {} {}: {} message(s), last on {}",
                            d.kind, d.id, d.messages, d.last_topic
                        );
                    }
                }
                Err(e) => println!("MQTT devices: not listed ({e})"),
            }
            println!(
                "confirm a device with `aisle-agent devices add --config ... --kind KIND --id ID`"
            );
            Ok(())
        }
        DevicesCommand::Add {
            config,
            kind,
            id,
            vendor,
            zone,
            broker,
            port,
            protocol,
            currency,
            replace,
            mosquitto_dir,
        } => {
            let request = AddRequest {
                kind,
                id,
                vendor,
                zone,
                broker,
                port,
                protocol,
                currency,
                replace,
            };
            let mosquitto_dir = std::path::absolute(&mosquitto_dir).unwrap_or(mosquitto_dir);
            let done = add(&config, &request, &mosquitto_dir).map_err(anyhow::Error::msg)?;
            print_added(&done, &config, &mosquitto_dir);
            Ok(())
        }
    }
}

/// The audit action of a device put in the agent's configuration.
pub const DEVICE_CONFIGURED: &str = "device_configured";

/// `devices add`'s options.
#[derive(Clone, Debug, Default)]
pub struct AddRequest {
    pub kind: String,
    pub id: String,
    pub vendor: Option<String>,
    pub zone: Option<String>,
    pub broker: Option<String>,
    pub port: Option<String>,
    pub protocol: Option<String>,
    pub currency: Option<String>,
    pub replace: bool,
}

/// What `devices add` did.
#[derive(Debug)]
pub struct AddOutcome {
    /// The configuration's new lines, when the device was configured.
    pub configured: Option<configure::Planned>,
    /// The MQTT credential, when the device got one.
    pub credential: Option<mosquitto::Added>,
    /// What the technician must still do by hand (a warning; the change is in place).
    pub warnings: Vec<String>,
}

/// What `--kind` and the options given ask for.
fn entry_for(r: &AddRequest) -> Result<Option<configure::DeviceEntry>, String> {
    let none = "nothing was written";
    let camera_only = [
        ("--vendor", r.vendor.is_some()),
        ("--zone", r.zone.is_some()),
        ("--broker", r.broker.is_some()),
    ];
    let serial_only = [
        ("--port", r.port.is_some()),
        ("--protocol", r.protocol.is_some()),
        ("--currency", r.currency.is_some()),
    ];
    let refuse_given = |opts: &[(&str, bool)], what: &str| -> Result<(), String> {
        match opts.iter().find(|(_, given)| *given) {
            Some((name, _)) => Err(format!("{name} applies to {what} only; {none}")),
            None => Ok(()),
        }
    };
    if r.kind == "camera" {
        refuse_given(&serial_only, "a lane's scanner, scale or printer")?;
        return match (&r.vendor, &r.zone) {
            (Some(vendor), Some(zone)) => Ok(Some(configure::DeviceEntry::Camera {
                id: r.id.clone(),
                vendor: vendor.clone(),
                zone: zone.clone(),
                broker: r.broker.clone(),
            })),
            (None, None) if r.broker.is_none() => Ok(None),
            _ => Err(format!(
                "a camera is configured with both --vendor (axis, xovis or hikvision) and \
                 --zone (its entrance); {none}"
            )),
        };
    }
    refuse_given(&camera_only, "cameras")?;
    if let Some(device) = configure::LaneDevice::parse(&r.kind) {
        return match &r.port {
            Some(port) => Ok(Some(configure::DeviceEntry::Lane {
                device,
                lane: r.id.clone(),
                port: port.clone(),
                protocol: r.protocol.clone(),
                currency: r.currency.clone(),
            })),
            None if device == configure::LaneDevice::Printer || r.protocol.is_some() => {
                Err(format!(
                    "a lane's {} needs --port (its /dev/serial/by-id/... path from \
                     `aisle-agent devices scan`); {none}",
                    r.kind
                ))
            }
            None => {
                refuse_given(&serial_only, "a lane's scanner, scale or printer")?;
                Ok(None)
            }
        };
    }
    refuse_given(&serial_only, "a lane's scanner, scale or printer")?;
    if !mosquitto::KINDS.contains(&r.kind.as_str()) {
        return Err(format!(
            "--kind must be camera, scanner, scale, printer, lane or sensor, got '{}'; {none}",
            r.kind
        ));
    }
    Ok(None)
}

/// `aisle-agent devices add`: the device in the configuration file `config_path` and, for an
/// MQTT device, its credential in `mosquitto_dir`; all files replaced together or none.
pub fn add(
    config_path: &std::path::Path,
    r: &AddRequest,
    mosquitto_dir: &std::path::Path,
) -> Result<AddOutcome, String> {
    let entry = entry_for(r)?;
    // Absolute paths: each file is renamed into place and its directory synced.
    let config_path = &std::fs::canonicalize(config_path)
        .map_err(|e| format!("cannot read {}: {e}", config_path.display()))?;
    let mosquitto_dir = &std::path::absolute(mosquitto_dir)
        .map_err(|e| format!("--mosquitto-dir {}: {e}", mosquitto_dir.display()))?;
    let text = configure::read_config_text(config_path)?;
    let config = AgentConfig::load(config_path)
        .map_err(|e| format!("{e}; fix the configuration first (nothing was written)"))?;
    let planned = match &entry {
        Some(e) => Some(configure::plan(config_path, &text, e, r.replace)?),
        None => None,
    };
    // The configuration as it will be (a new [footfall] brings the default topic prefix).
    let effective = planned.as_ref().map_or(&config, |p| &p.config);
    let serial = matches!(entry, Some(configure::DeviceEntry::Lane { .. }));
    let mut files = Vec::new();
    let credential = if serial {
        None
    } else {
        let (added, staged) = mosquitto::stage_device(
            mosquitto_dir,
            &topic_prefix(effective),
            effective.store.as_str(),
            &r.kind,
            &r.id,
        )?;
        files.extend(staged);
        Some(added)
    };
    let owner = configure::owner(config_path);
    if let Some(p) = &planned {
        files.push(configure::stage(config_path, p)?);
        // Another edit in the meantime would be lost: refuse it rather.
        if configure::read_config_text(config_path)? != text {
            return Err(format!(
                "{} changed while the device was being added; run the command again (nothing \
                 was written)",
                config_path.display()
            ));
        }
    }
    provisioning_commit(files)?;
    let mut warnings = Vec::new();
    if planned.is_some()
        && let Err(w) = configure::restore_owner(config_path, owner)
    {
        warnings.push(w);
    }

    let audit = crate::audit::AuditLog::new(&config.data_dir);
    let now = aisle_protocol::UtcMillis::now().0;
    if let Some(added) = &credential {
        audit.record(
            now,
            "technician",
            crate::audit::action::MQTT_DEVICE_ADDED,
            &format!("{} may publish to {}", added.user, added.topic),
        );
        tracing::info!(
            user = added.user,
            topic = added.topic,
            "MQTT device credential written"
        );
    }
    if planned.is_some() {
        audit.record(
            now,
            "technician",
            DEVICE_CONFIGURED,
            &format!("{} {}", r.kind, r.id),
        );
        tracing::info!(kind = r.kind, id = r.id, config = %config_path.display(), "device configured");
    }
    Ok(AddOutcome {
        configured: planned,
        credential,
        warnings,
    })
}

fn provisioning_commit(files: Vec<crate::provisioning::files::StagedFile>) -> Result<(), String> {
    if files.is_empty() {
        return Ok(());
    }
    crate::provisioning::files::commit_all(files)
        .map_err(|e| format!("cannot replace the files: {e}; nothing was changed"))
}

fn print_added(done: &AddOutcome, config: &std::path::Path, mosquitto_dir: &std::path::Path) {
    if let Some(p) = &done.configured {
        println!("added to {}:", config.display());
        for line in p.written.trim_end().lines() {
            if line.is_empty() {
                println!();
            } else {
                println!("  {line}");
            }
        }
        if p.comments_dropped {
            println!(
                "note: the file was rewritten; its comments past the opening lines were not kept"
            );
        }
        for n in &p.notes {
            println!("note: {n}");
        }
    }
    if let Some(added) = &done.credential {
        println!("user: {}", added.user);
        println!("password: {}", added.password);
        println!("may publish to: {}", added.topic);
        println!(
            "enter the user and password in the device (shown only now), and make sure \
             mosquitto.conf has:\n  password_file {}\n  acl_file {}\nthen reload Mosquitto \
             (`systemctl reload mosquitto`)",
            mosquitto_dir.join("passwd").display(),
            mosquitto_dir.join("acl").display()
        );
        if done.configured.is_none() {
            if added.user.starts_with("camera-") {
                println!(
                    "the camera is not in the agent's configuration: run again with --vendor and \
                     --zone to configure it ([[footfall.cameras]])"
                );
            } else if added.user.starts_with("scanner-") || added.user.starts_with("scale-") {
                println!(
                    "for a lane's serial scanner or scale, run again with --port (and --id the \
                     lane) to configure it in [[checkout.lanes]]"
                );
            }
        }
    }
    for w in &done.warnings {
        eprintln!("warning: {w}");
    }
    if done.configured.is_some() {
        println!(
            "restart the agent to use it (`systemctl restart aisle-agent`); it reads its \
             configuration only at start-up"
        );
    }
}
