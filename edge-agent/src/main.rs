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
}

#[derive(Debug, Subcommand)]
enum StaffCommand {
    /// Read a PIN from stdin (one line) and print its argon2 PHC string for `[[pickup.staff]]`
    /// `pin_hash`. The PIN itself is never stored.
    HashPin,
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
            command: StaffCommand::HashPin,
        } => hash_pin(),
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let agent = Agent::start(config, Arc::new(SystemClock)).await?;
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

fn hash_pin() -> anyhow::Result<()> {
    use std::io::Read;
    let mut input = String::new();
    // A PIN is short: read at most a little more than the longest one allowed.
    std::io::stdin()
        .take(1024)
        .read_to_string(&mut input)
        .context("cannot read the PIN from stdin")?;
    let pin = input.lines().next().unwrap_or("").trim_end_matches('\r');
    let hash = aisle_agent::pickup::staff::hash_pin(pin).map_err(anyhow::Error::msg)?;
    println!("{hash}");
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
