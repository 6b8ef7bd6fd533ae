//! `aisle-sim`: simulated store devices for demos, tests and field rehearsals.
//!
//! `aisle-sim camera --vendor axis --store S001 --camera door-1 --mqtt 127.0.0.1:1883` publishes
//! what a real people counter publishes, and reads commands from stdin, one per line:
//! `walk N`, `reset`, `dup`, `silence SECS`, `skew MS`, `quit`.
use std::time::Duration;

use aisle_hil::camera_sim::{
    CameraProfile, CameraSim, Command, DEFAULT_TOPIC_PREFIX, HikvisionMethod, SimConfig, Transport,
    Vendor, XovisValues,
};
use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(about = "Simulated store devices (people-counting cameras)")]
struct Args {
    #[command(subcommand)]
    device: Device,
}

#[derive(Subcommand, Debug)]
enum Device {
    /// A people-counting camera over MQTT or HTTP push. Commands on stdin, one per line:
    /// `walk N` (N people in, out later), `reset` (reboot: counters from zero), `dup` (send the
    /// last message again), `silence SECS` (send nothing; over MQTT drop the connection so the
    /// broker fires the last will), `skew MS` (camera clock off by MS), `quit`.
    Camera(CameraArgs),
}

#[derive(clap::Args, Debug)]
struct CameraArgs {
    #[arg(long, value_enum)]
    vendor: Vendor,
    /// The store the camera is in (topic level).
    #[arg(long)]
    store: String,
    /// The camera's id, as the store's agent configures it.
    #[arg(long)]
    camera: String,
    /// Publish to this MQTT broker (HOST:PORT).
    #[arg(
        long,
        value_name = "HOST:PORT",
        conflicts_with = "http",
        required_unless_present = "http"
    )]
    mqtt: Option<String>,
    /// Topics are <prefix>/<store>/camera/<id>/counts and .../status.
    #[arg(long, default_value = DEFAULT_TOPIC_PREFIX)]
    topic_prefix: String,
    /// Push to the agent at this URL instead (POST <URL>/v1/cameras/<id>/counts).
    #[arg(long, value_name = "URL")]
    http: Option<String>,
    /// A message this often.
    #[arg(long, default_value_t = 1000)]
    every_ms: u64,
    /// Random arrivals per minute (0: only `walk`).
    #[arg(long, default_value_t = 20.0)]
    people_per_minute: f64,
    /// Seed for the arrivals (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// The camera's time zone (its timestamps are local).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    utc_offset_minutes: i16,
    /// Xovis: counts since the last push (delta) or running totals (absolute).
    #[arg(long, value_enum, default_value_t = XovisValues::Delta)]
    xovis_values: XovisValues,
    /// Hikvision: realtime (running totals) or timerange (counts per interval).
    #[arg(long, value_enum, default_value_t = HikvisionMethod::RealTime)]
    hikvision_method: HikvisionMethod,
    /// Report occupancy (Axis occupancy estimator, Xovis zone logic).
    #[arg(long)]
    occupancy: bool,
    /// Shortest and longest visit, in seconds.
    #[arg(long, default_value_t = 60)]
    dwell_min_s: u64,
    #[arg(long, default_value_t = 600)]
    dwell_max_s: u64,
    /// The camera's clock is this far off from the start (negative: behind); `skew MS` on
    /// stdin changes it later.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    skew_ms: i64,
}

impl CameraArgs {
    fn config(&self) -> Result<SimConfig> {
        let transport = match (&self.mqtt, &self.http) {
            (Some(broker), None) => Transport::Mqtt {
                broker: broker.clone(),
                topic_prefix: self.topic_prefix.clone(),
            },
            (None, Some(url)) => Transport::Http {
                agent_url: url.clone(),
            },
            _ => bail!("give exactly one of --mqtt HOST:PORT or --http URL"),
        };
        let secs = |s: u64| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX);
        let profile = CameraProfile {
            utc_offset_minutes: self.utc_offset_minutes,
            xovis_values: self.xovis_values,
            hikvision_method: self.hikvision_method,
            occupancy: self.occupancy,
            people_per_minute: self.people_per_minute,
            dwell_ms: (secs(self.dwell_min_s), secs(self.dwell_max_s)),
            seed: self.seed.unwrap_or_else(rand::random),
            clock_skew_ms: self.skew_ms,
            ..CameraProfile::new(self.vendor, &self.camera)
        };
        let config = SimConfig {
            store: self.store.clone(),
            profile,
            transport,
            every: Duration::from_millis(self.every_ms),
        };
        config.validate()?;
        Ok(config)
    }
}

/// Lines typed on stdin, read on their own thread (stdin reads block).
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

async fn camera(args: CameraArgs) -> Result<()> {
    let config = args.config()?;
    let target = match (&config.transport, config.counts_topic()) {
        (Transport::Mqtt { broker, .. }, Some(topic)) => format!("mqtt://{broker} {topic}"),
        (Transport::Http { agent_url }, _) => {
            format!("{agent_url}/v1/cameras/{}/counts", config.profile.camera)
        }
        _ => String::new(),
    };
    println!(
        "camera {} ({}) -> {target}, every {} ms, {} people/min (seed {})",
        config.profile.camera,
        config.profile.vendor.name(),
        args.every_ms,
        config.profile.people_per_minute,
        config.profile.seed
    );
    println!("commands: walk N | reset | dup | silence SECS | skew MS | quit | stats");
    let sim = CameraSim::start(config)?;
    let mut lines = stdin_lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            line = lines.recv(), if stdin_open => {
                let Some(line) = line else {
                    // stdin closed (e.g. started in the background): keep counting until Ctrl-C.
                    stdin_open = false;
                    continue;
                };
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                if line == "stats" {
                    println!("{:?}", sim.stats());
                    continue;
                }
                match line.parse::<Command>() {
                    Ok(Command::Quit) => break,
                    Ok(command) => {
                        println!("ok {line}");
                        sim.command(command).await?;
                    }
                    Err(e) => eprintln!("error: {e:#}"),
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let stats = sim.quit().await?;
    println!("{stats:?}");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    match args.device {
        Device::Camera(c) => camera(c).await,
    }
}
