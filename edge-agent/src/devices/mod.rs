//! The store's devices from the technician's side: `aisle-agent devices scan` (which serial
//! ports answer which protocol, which MQTT devices publish) and `devices add` (an MQTT device's
//! own credential and topic in Mosquitto's password and ACL files).
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
    /// Give an MQTT device its own credential and topic: writes Mosquitto's password and ACL
    /// files (reload Mosquitto afterwards). Prints the password once.
    Add {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// camera, scale, scanner, lane or sensor.
        #[arg(long)]
        kind: String,
        /// The device's id in its topics (`[A-Za-z0-9_-]{1,64}`).
        #[arg(long)]
        id: String,
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
            mosquitto_dir,
        } => {
            let config = AgentConfig::load(&config)?;
            let added = mosquitto::add_device(
                &mosquitto_dir,
                &topic_prefix(&config),
                config.store.as_str(),
                &kind,
                &id,
            )
            .map_err(anyhow::Error::msg)?;
            crate::audit::AuditLog::new(&config.data_dir).record(
                aisle_protocol::UtcMillis::now().0,
                "technician",
                crate::audit::action::MQTT_DEVICE_ADDED,
                &format!("{} may publish to {}", added.user, added.topic),
            );
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
            Ok(())
        }
    }
}
