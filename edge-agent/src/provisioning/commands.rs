//! The technician's commands (`aisle-agent enroll`, `doctor`), kept here so `main.rs` only
//! dispatches.
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use super::enrol::{EnrolOptions, enrol};
use crate::clock::SystemClock;

/// `aisle-agent enroll`.
#[derive(Debug, clap::Args)]
pub struct EnrollArgs {
    /// The hub, e.g. https://hub.example.com:7400 (optional when the code is a scanned
    /// enrolment URI that names it).
    #[arg(long, value_name = "URL")]
    pub hub: Option<String>,
    /// The one-time code HQ gave (`XXXX-XXXX-XXXX`; case and dashes do not matter), or the
    /// `aisle-enrol:?code=...` URI scanned from HQ's QR code.
    #[arg(long, value_name = "CODE")]
    pub code: String,
    /// The gateway's data directory (its key and ledger live there).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Where to write the configuration (default: DIR/agent.toml). Other settings in an
    /// existing file are kept.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The hub certificate's SHA-256 from HQ (`aisle-hub tls fingerprint`). Without it the
    /// certificate the hub presents now is pinned (trust on first use).
    #[arg(long, value_name = "SHA256")]
    pub hub_fingerprint: Option<String>,
    /// A name for this gateway at HQ (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Replace an existing enrolment.
    #[arg(long)]
    pub force: bool,
}

/// Runs `aisle-agent enroll` and prints what was done and what to do next.
pub fn enroll(args: EnrollArgs) -> anyhow::Result<()> {
    let opts = EnrolOptions {
        hub_url: args.hub.unwrap_or_default(),
        code: args.code,
        data_dir: args.data,
        config_path: args.config,
        hub_fingerprint: args.hub_fingerprint,
        name: args.name,
        force: args.force,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let done = rt.block_on(enrol(&opts, Arc::new(SystemClock)))?;
    println!(
        "enrolled: gateway {} for store {}",
        done.gateway_id, done.store
    );
    println!("  configuration: {}", done.config_path.display());
    println!(
        "  key (mode 0600, never copy it): {}",
        done.key_path.display()
    );
    match &done.hub_fingerprint {
        Some(fp) if done.trusted_on_first_use => println!(
            "  hub certificate pinned on first use: {fp}\n  compare it with `aisle-hub tls \
             fingerprint` at HQ"
        ),
        Some(fp) => println!("  hub certificate pinned: {fp}"),
        None => println!("  WARNING: the hub serves plain HTTP; nothing is pinned"),
    }
    println!(
        "next: aisle-agent doctor --config {}",
        done.config_path.display()
    );
    Ok(())
}

/// `aisle-agent doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Print the checklist as JSON (`{"ok", "checks": [{"name", "verdict", "detail", "fix"}]}`).
    #[arg(long)]
    pub json: bool,
}

/// Runs the checklist, prints it, and fails when any check failed.
pub fn doctor(args: DoctorArgs) -> anyhow::Result<()> {
    let config = crate::config::AgentConfig::load(&args.config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = rt.block_on(crate::doctor::run(&config, Arc::new(SystemClock)));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    if report.ok {
        Ok(())
    } else {
        anyhow::bail!("self-check failed: fix the FAIL lines above and run doctor again")
    }
}

/// `aisle-agent audit ...`: the gateway's own audit log.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check every entry's hash and link; exit 0 only if the log is intact.
    Verify {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
    },
    /// Print every entry as a JSON line.
    List {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
    },
}

/// Runs an `audit` command.
pub fn audit(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { data } => {
            let r = crate::audit::verify(&data)?;
            println!("audit log intact: {} entries, head {}", r.entries, r.head);
        }
        AuditCommand::List { data } => {
            for e in crate::audit::list(&data)? {
                println!("{}", serde_json::to_string(&e)?);
            }
        }
    }
    Ok(())
}
