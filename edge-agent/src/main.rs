//! `aisle-agent`: run the gateway daemon, or verify a ledger.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use aisle_agent::Agent;
use aisle_agent::clock::SystemClock;
use aisle_agent::config::AgentConfig;
use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "aisle-agent", version, about = "Aisle store gateway daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: local API, ledger, price activation and sync with the hub.
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Ledger maintenance.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Staff who use the pickup page and API.
    Staff {
        #[command(subcommand)]
        command: StaffCommand,
    },
    /// Shelf labels.
    Labels {
        #[command(subcommand)]
        command: LabelsCommand,
    },
    /// Enrol this gateway with a one-time code from HQ: makes the gateway's key, pins the hub's
    /// TLS certificate and writes the configuration (all or nothing).
    Enroll(aisle_agent::provisioning::commands::EnrollArgs),
    /// Self-check: hub, TLS pin, clock, disk, ledger, broker, devices; PASS/FAIL with what to
    /// do, non-zero exit on any FAIL.
    Doctor(aisle_agent::provisioning::commands::DoctorArgs),
    /// Find and confirm the store's devices (serial ports, MQTT devices).
    Devices {
        #[command(subcommand)]
        command: aisle_agent::devices::DevicesCommand,
    },
    /// The gateway's audit log (enrolment, device credentials, staff sign-ins).
    Audit {
        #[command(subcommand)]
        command: aisle_agent::provisioning::commands::AuditCommand,
    },
    /// Barcodes, for technicians.
    Barcode {
        #[command(subcommand)]
        command: BarcodeCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BarcodeCommand {
    /// Print what a scan means as JSON; exit non-zero with the reason on a bad scan. DATA is
    /// what the scanner sends (AIM id first if it sends one, e.g. `]C1...`); type GS as `\x1d`
    /// or `<GS>`, or give the bracketed form `(01)...(10)...`.
    Parse {
        data: String,
        /// Restricted-circulation layouts (TOML); default: the embedded example (GB-style
        /// price layout for 02 and 20-29, GBP).
        #[arg(long, value_name = "FILE")]
        layouts: Option<PathBuf>,
        /// The character the scanner sends instead of GS, if it is set to substitute one.
        #[arg(long)]
        separator: Option<char>,
    },
}

#[derive(Debug, Subcommand)]
enum LabelsCommand {
    /// Bind labels from a CSV file (header: label,gtin,shelf[,panel]), all rows or none, while
    /// the agent is stopped (a running agent takes the same file at POST /v1/labels/import).
    Import {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Panel of rows that name none: bw290, bwr290, bw420 or bwr420.
        #[arg(long, default_value = "bw290")]
        panel: String,
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum StaffCommand {
    /// Read a PIN from stdin (one line) and print its argon2 PHC string for `[[pickup.staff]]`
    /// `pin_hash`. The PIN itself is never stored. With --name, print the whole
    /// `[[pickup.staff]]` entry, with the PIN's role.
    HashPin {
        /// The person's name: print a whole `[[pickup.staff]]` entry to paste into the
        /// configuration.
        #[arg(long)]
        name: Option<String>,
        /// What the PIN opens: staff (pickup page and API), manager (staff, and approving lane
        /// overrides) or technician (the setup page only).
        #[arg(long, default_value = "staff", requires = "name", value_parser = parse_role)]
        role: aisle_agent::config::StaffRole,
    },
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Check the hash chain and replay every event; exit 0 only if everything matches.
    Verify {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = match cli.command {
        Command::Run { config } => run(config),
        Command::Ledger {
            command: LedgerCommand::Verify { data },
        } => verify(data),
        Command::Staff {
            command: StaffCommand::HashPin { name, role },
        } => hash_pin(name.as_deref(), role),
        Command::Labels {
            command: LabelsCommand::Import { data, panel, file },
        } => import_labels(data, &panel, file),
        Command::Enroll(args) => aisle_agent::provisioning::commands::enroll(args),
        Command::Doctor(args) => aisle_agent::provisioning::commands::doctor(args),
        Command::Devices { command } => aisle_agent::devices::run(command),
        Command::Audit { command } => aisle_agent::provisioning::commands::audit(command),
        Command::Barcode {
            command:
                BarcodeCommand::Parse {
                    data,
                    layouts,
                    separator,
                },
        } => barcode_parse(&data, layouts, separator),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aisle-agent: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(config_path: PathBuf) -> anyhow::Result<()> {
    let config = AgentConfig::load(&config_path)?;
    // The reset button is read (and the enrolment set aside if it is held) before anything
    // else uses the enrolment.
    let (booted, config) = aisle_agent::status_panel::open_hardware(&config_path, config)
        .map_err(anyhow::Error::msg)?;
    let panel = booted.map(|b| b.panel);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let agent = Agent::start_with(config, Arc::new(SystemClock), panel).await?;
        wait_for_stop_signal().await?;
        tracing::info!("stopping");
        agent.shutdown().await;
        Ok(())
    })
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

fn verify(data: PathBuf) -> anyhow::Result<()> {
    let report = aisle_agent::ledger::verify(&data)
        .with_context(|| format!("ledger in {} failed verification", data.display()))?;
    println!("{report}");
    Ok(())
}

fn import_labels(data: PathBuf, panel: &str, file: PathBuf) -> anyhow::Result<()> {
    use aisle_agent::labels::import::{MAX_IMPORT_BYTES, parse_csv};
    use aisle_agent::ledger::{LabelRefusal, Ledger, labels::parse_panel};
    let panel = parse_panel(panel)
        .with_context(|| format!("--panel '{panel}' is not one of bw290, bwr290, bw420, bwr420"))?;
    let meta =
        std::fs::metadata(&file).with_context(|| format!("cannot read {}", file.display()))?;
    if meta.len() > MAX_IMPORT_BYTES as u64 {
        anyhow::bail!("{} is larger than {MAX_IMPORT_BYTES} bytes", file.display());
    }
    let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let by = format!("import {}", file.display());
    let refused = |rows: Vec<aisle_agent::ledger::BindRowError>| {
        for r in &rows {
            eprintln!("line {}: {}", r.line, r.message);
        }
        anyhow::anyhow!("{} row(s) refused, nothing was bound", rows.len())
    };
    let rows = parse_csv(&bytes, panel, Some(&by)).map_err(refused)?;
    let n = rows.len();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let out = rt.block_on(async {
        let ledger = Ledger::open(&data, Arc::new(SystemClock))
            .await
            .with_context(|| format!("cannot open the ledger in {}", data.display()))?;
        let out = ledger.bind_labels(rows).await;
        ledger.close().await;
        match out {
            Ok(out) => Ok(out),
            Err(LabelRefusal::Rows(rows)) => Err(refused(rows)),
            Err(e) => Err(anyhow::Error::new(e)),
        }
    })?;
    aisle_agent::audit::AuditLog::new(&data).record(
        aisle_protocol::UtcMillis::now().0,
        "technician",
        "labels_imported",
        &format!(
            "{} ({n} rows, {} bound, {} unchanged)",
            file.display(),
            out.bound,
            out.unchanged
        ),
    );
    println!(
        "{n} rows: {} labels bound, {} unchanged",
        out.bound, out.unchanged
    );
    Ok(())
}

fn parse_role(text: &str) -> Result<aisle_agent::config::StaffRole, String> {
    aisle_agent::config::StaffRole::parse(text)
}

fn hash_pin(name: Option<&str>, role: aisle_agent::config::StaffRole) -> anyhow::Result<()> {
    use std::io::Read;
    let mut input = String::new();
    // A PIN is short: read at most a little more than the longest one allowed.
    std::io::stdin()
        .take(1024)
        .read_to_string(&mut input)
        .context("cannot read the PIN from stdin")?;
    let pin = input.lines().next().unwrap_or("").trim_end_matches('\r');
    let hash = aisle_agent::pickup::staff::hash_pin(pin).map_err(anyhow::Error::msg)?;
    match name {
        None => println!("{hash}"),
        Some(name) => {
            aisle_protocol::pickup::check_label("name", name)
                .map_err(|e| anyhow::anyhow!("--name: {e}"))?;
            let entry = aisle_agent::config::StaffConfig {
                name: name.to_string(),
                pin_hash: hash,
                role,
            };
            let mut table = toml::Table::new();
            table.insert(
                "staff".into(),
                toml::Value::Array(vec![toml::Value::try_from(&entry)?]),
            );
            let mut outer = toml::Table::new();
            outer.insert("pickup".into(), toml::Value::Table(table));
            // `[[pickup.staff]]` and its keys, without the empty `[pickup]` header.
            let text = toml::to_string(&outer)?;
            let text = text.trim_start_matches("[pickup]\n");
            print!("{}", text.trim_start());
        }
    }
    Ok(())
}

fn barcode_parse(
    data: &str,
    layouts: Option<PathBuf>,
    separator: Option<char>,
) -> anyhow::Result<()> {
    use aisle_drivers::scanner::{MAX_LAYOUTS_TOML, parse_typed};
    let toml = match &layouts {
        Some(path) => {
            let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
            anyhow::ensure!(
                meta.len() <= MAX_LAYOUTS_TOML as u64,
                "{}: larger than {MAX_LAYOUTS_TOML} bytes",
                path.display()
            );
            Some(std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?)
        }
        None => None,
    };
    let today = time::OffsetDateTime::now_utc().date();
    let scan = parse_typed(data, toml.as_deref(), separator, today)?;
    println!("{}", serde_json::to_string_pretty(&scan)?);
    Ok(())
}

/// The error and its causes on one line, skipping causes the message already quotes.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !line.contains(&c) {
            line.push_str(": ");
            line.push_str(&c);
        }
    }
    line
}
