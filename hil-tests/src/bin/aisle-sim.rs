//! `aisle-sim`: simulated store devices for demos, tests and field rehearsals.
//!
//! `aisle-sim camera --vendor axis --store S001 --camera door-1 --mqtt 127.0.0.1:1883` publishes
//! what a real people counter publishes, and reads commands from stdin, one per line:
//! `walk N`, `reset`, `dup`, `silence SECS`, `skew MS`, `quit`.
//!
//! `aisle-sim esl --tags 8 --png-dir labels` runs a shelf-label access point with 8 tags behind
//! a pseudo-terminal and prints its path for the gateway's serial driver; commands on stdin:
//! `stats`, `tags`, `loss P`, `lose N`, `offline ADDR`, `online ADDR`, `quit`.
//!
//! `aisle-sim scanner --suffix cr --aim` and `aisle-sim scale --protocol mt-sics` run a barcode
//! scanner and a scale on pseudo-terminals (path printed first), scripted from `--script FILE`
//! or stdin; see `aisle_hil::scanner_sim` and `aisle_hil::scale_sim` for the commands.
//!
//! `aisle-sim printer --encoding cp858` runs an ESC/POS receipt printer on a pseudo-terminal
//! (path printed first) and prints every receipt it is sent, decoded to text; commands on stdin:
//! `ready`, `near-end`, `paper-out`, `cover-open`, `off`, `unplug`, `plug`, `quit`.
use std::path::PathBuf;
use std::time::Duration;

use aisle_hil::esl_sim::{self, EslSim, EslSimConfig};
use aisle_protocol::esl::{ApId, LabelId};

use aisle_hil::camera_sim::{
    CameraProfile, CameraSim, Command, DEFAULT_TOPIC_PREFIX, HikvisionMethod, SimConfig, Transport,
    Vendor, XovisValues,
};
use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(about = "Simulated store devices (people-counting cameras, shelf labels)")]
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
    /// A shelf-label access point with simulated tags (the real tag firmware) behind a
    /// pseudo-terminal; prints the path to open. Commands on stdin, one per line: `stats`,
    /// `tags`, `loss P` (radio loss probability), `lose N` (lose the next N radio frames),
    /// `offline ADDR` / `online ADDR` (a tag out of range and back), `quit`.
    Esl(EslArgs),
    /// A serial barcode scanner on a pseudo-terminal; prints the path to open. Script lines
    /// (from --script or stdin): a barcode (`9501101531000`, `scan gs1-128 10AB<GS>01...`),
    /// `nosuffix ...`, `lostgs ...`, `noise N`, `sleep MS`, `unplug`, `plug`, `quit`.
    Scanner(ScannerArgs),
    /// A serial scale on a pseudo-terminal answering its protocol; prints the path to open.
    /// Script lines: `weight 1.250 kg`, `motion on|off`, `overload`, `underload`, `normal`,
    /// `silence on|off`, `garbage N`, `sleep MS`, `unplug`, `plug`, `quit`.
    Scale(ScaleArgs),
    /// An ESC/POS receipt printer on a pseudo-terminal; prints the path to open, then each
    /// receipt as text. Commands: `ready`, `near-end`, `paper-out`, `cover-open`, `off`,
    /// `unplug`, `plug`, `quit`.
    Printer(PrinterArgs),
}

#[derive(clap::Args, Debug)]
struct PrinterArgs {
    /// How the receipts' text is decoded: cp858 or gbk (as the lane's printer is configured).
    #[arg(long, default_value = "cp858")]
    encoding: String,
    #[arg(long, value_name = "PATH")]
    link: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    script: Option<PathBuf>,
}

fn printer(args: PrinterArgs) -> Result<()> {
    use aisle_drivers::printer::{TextEncoding, receipt_text};
    use aisle_hil::printer_sim::{Command, Printed, PrinterSim};
    let encoding = match args.encoding.as_str() {
        "cp858" => TextEncoding::Cp858,
        "gbk" => TextEncoding::Gbk,
        other => bail!("--encoding {other:?}: cp858 or gbk"),
    };
    let (sim, receipts) = PrinterSim::start(args.link.clone())?;
    println!("{}", sim.path());
    println!("printer: ESC/POS, {}", args.encoding);
    std::thread::spawn(move || {
        for p in receipts {
            match p {
                Printed::Receipt(bytes) => {
                    println!("--- receipt, {} bytes ---", bytes.len());
                    println!("{}", receipt_text(&bytes, encoding));
                }
                Printed::Overlong(n) => eprintln!("error: {n} bytes without a cut dropped"),
            }
        }
    });
    for line in script_lines(args.script.as_ref())? {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.parse::<Command>() {
            Ok(Command::Quit) => return Ok(()),
            Ok(c) => match sim.command(c) {
                Ok(text) => println!("{text}"),
                Err(e) => eprintln!("error: {e:#}"),
            },
            Err(e) => eprintln!("error: {e:#}"),
        }
    }
    loop {
        std::thread::park();
    }
}

#[derive(clap::Args, Debug)]
struct ScannerArgs {
    /// cr, crlf or none (a frame then ends on a pause).
    #[arg(long, default_value = "cr")]
    suffix: String,
    /// Prefix every barcode with its AIM symbology identifier (]E0, ]C1, ...).
    #[arg(long)]
    aim: bool,
    /// Also publish the pty under this path (a symlink, like /dev/serial/by-id/...); needed for
    /// `unplug` and `plug`.
    #[arg(long, value_name = "PATH")]
    link: Option<PathBuf>,
    /// Read the script from FILE instead of stdin.
    #[arg(long, value_name = "FILE")]
    script: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct ScaleArgs {
    /// mt-sics, toledo (kg), toledo-lb, nci or cas.
    #[arg(long, default_value = "mt-sics")]
    protocol: String,
    #[arg(long, value_name = "PATH")]
    link: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    script: Option<PathBuf>,
    /// CAS: a line this often (continuous output).
    #[arg(long, default_value_t = 100)]
    cas_every_ms: u64,
}

/// Script lines from a file (then keeps running until killed) or stdin.
fn script_lines(script: Option<&PathBuf>) -> Result<Box<dyn Iterator<Item = String>>> {
    Ok(match script {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Box::new(
                text.lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
                    .into_iter(),
            )
        }
        None => Box::new(std::io::stdin().lines().map_while(Result::ok)),
    })
}

fn scanner(args: ScannerArgs) -> Result<()> {
    use aisle_hil::scanner_sim::{Command, ScannerSim, ScannerSimConfig};
    let suffix = args.suffix.parse().map_err(anyhow::Error::msg)?;
    let config = ScannerSimConfig {
        link: args.link.clone(),
        seed: rand::random(),
        ..ScannerSimConfig::new(suffix, args.aim)
    };
    let sim = ScannerSim::start(config)?;
    println!("{}", sim.path());
    println!(
        "scanner: suffix {}, AIM identifiers {}",
        args.suffix,
        if args.aim { "on" } else { "off" }
    );
    for line in script_lines(args.script.as_ref())? {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.parse::<Command>() {
            Ok(Command::Quit) => return Ok(()),
            Ok(c) => match sim.command(c) {
                Ok(text) if !text.is_empty() => println!("{text}"),
                Ok(_) => {}
                Err(e) => eprintln!("error: {e:#}"),
            },
            Err(e) => eprintln!("error: {e:#}"),
        }
    }
    // Script done or stdin closed: keep the pty open until killed.
    loop {
        std::thread::park();
    }
}

fn scale(args: ScaleArgs) -> Result<()> {
    use aisle_hil::scale_sim::{Command, ScaleSim, ScaleSimConfig};
    let protocol = args.protocol.parse().map_err(anyhow::Error::msg)?;
    let config = ScaleSimConfig {
        link: args.link.clone(),
        cas_every: Duration::from_millis(args.cas_every_ms.max(1)),
        seed: rand::random(),
        ..ScaleSimConfig::new(protocol)
    };
    let sim = ScaleSim::start(config)?;
    println!("{}", sim.path());
    println!("scale: {}", args.protocol);
    for line in script_lines(args.script.as_ref())? {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.parse::<Command>() {
            Ok(Command::Quit) => {
                println!("{:?}", sim.shutdown());
                return Ok(());
            }
            Ok(c) => match sim.command(c) {
                Ok(text) => println!("{text}"),
                Err(e) => eprintln!("error: {e:#}"),
            },
            Err(e) => eprintln!("error: {e:#}"),
        }
    }
    loop {
        std::thread::park();
    }
}

#[derive(clap::Args, Debug)]
struct EslArgs {
    /// Number of tags, at consecutive addresses from --first-label.
    #[arg(long, default_value_t = 4)]
    tags: usize,
    /// The first tag's address (8 hex digits, as printed on its barcode).
    #[arg(long, default_value = "00A10001")]
    first_label: String,
    /// bw290, bwr290, bw420 or bwr420.
    #[arg(long, default_value = "bw290")]
    panel: String,
    /// Simulated radio rate: a frame of L bytes takes L/rate seconds (0: no limit).
    #[arg(long, default_value_t = 5_000)]
    radio_bytes_per_s: u32,
    /// Tags wake and listen this often; frames for a tag wait for its next check-in.
    #[arg(long, default_value_t = 1_000)]
    checkin_ms: u64,
    /// Probability that a radio frame is lost, either way (the access point retries).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Seed for loss, check-in phases and sensor readings (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// Write DIR/<ADDRESS>.png of a tag's screen after every refresh.
    #[arg(long, value_name = "DIR")]
    png_dir: Option<PathBuf>,
    /// A frame not delivered to its tag by then is dropped and reported Expired.
    #[arg(long, default_value_t = 30_000)]
    expire_ms: u64,
    /// The access point's address on the serial link (8 hex digits).
    #[arg(long, default_value = "00A10A01")]
    ap: String,
    /// Tags report their status at least this often (0: only when something changed).
    #[arg(long, default_value_t = 60)]
    heartbeat_s: u64,
}

impl EslArgs {
    fn config(&self) -> Result<EslSimConfig> {
        let first =
            LabelId::parse(&self.first_label).map_err(|e| anyhow::anyhow!("--first-label: {e}"))?;
        let ap = u32::from_str_radix(&self.ap, 16)
            .map_err(|e| anyhow::anyhow!("--ap: 8 hex digits: {e}"))?;
        let config = EslSimConfig {
            ap: ApId(ap),
            panel: esl_sim::parse_panel(&self.panel)?,
            radio_bytes_per_s: self.radio_bytes_per_s,
            checkin: Duration::from_millis(self.checkin_ms),
            loss: self.loss,
            seed: self.seed.unwrap_or_else(rand::random),
            png_dir: self.png_dir.clone(),
            expire_after: Duration::from_millis(self.expire_ms),
            heartbeat: (self.heartbeat_s > 0).then(|| Duration::from_secs(self.heartbeat_s)),
            ..EslSimConfig::new(first, self.tags)
        };
        config.validate()?;
        Ok(config)
    }
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

fn esl(args: EslArgs) -> Result<()> {
    let config = args.config()?;
    let sim = EslSim::start(config.clone())?;
    let first = config.labels.first().copied().unwrap_or(LabelId(0));
    let last = config.labels.last().copied().unwrap_or(LabelId(0));
    println!("{}", sim.path());
    println!(
        "access point {:08X}: {} {:?} tags {first}..{last}, check-in {} ms, radio {} B/s, loss {}, seed {}{}",
        config.ap.0,
        config.labels.len(),
        config.panel,
        args.checkin_ms,
        config.radio_bytes_per_s,
        config.loss,
        config.seed,
        config
            .png_dir
            .as_ref()
            .map_or(String::new(), |d| format!(", screens in {}", d.display()))
    );
    println!("commands: stats | tags | loss P | lose N | offline ADDR | online ADDR | quit");
    for line in std::io::stdin().lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.parse::<esl_sim::Command>() {
            Ok(esl_sim::Command::Quit) => {
                println!("{:?}", sim.shutdown());
                return Ok(());
            }
            Ok(command) => match sim.command(command) {
                Ok(text) => println!("{text}"),
                Err(e) => eprintln!("error: {e:#}"),
            },
            Err(e) => eprintln!("error: {e:#}"),
        }
    }
    // stdin closed (started in the background): keep serving until killed.
    loop {
        std::thread::park();
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.device {
        Device::Camera(c) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(camera(c)),
        Device::Esl(e) => esl(e),
        Device::Scanner(s) => scanner(s),
        Device::Scale(s) => scale(s),
        Device::Printer(p) => printer(p),
    }
}
