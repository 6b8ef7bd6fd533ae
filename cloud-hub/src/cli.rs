//! The `aisle-hub` command line.
use std::net::SocketAddr;

use aisle_protocol::{Currency, GatewayId, StoreId};
use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use aisle_hub::config::{DEFAULT_DB_URL, DEFAULT_LISTEN, HQ_TOKEN_ENV};
use aisle_hub::storage::{self, NewStore};
use aisle_hub::{HqToken, HubConfig};

#[derive(Debug, Parser)]
#[command(
    name = "aisle-hub",
    version,
    about = "Aisle HQ hub: price batches, sales, stock and the gateway sync API"
)]
pub struct Cli {
    /// Database: sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DB
    #[arg(long, global = true, env = "AISLE_HUB_DB", default_value = DEFAULT_DB_URL)]
    pub db: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HQ and sync APIs (HQ token from AISLE_HQ_TOKEN).
    Serve {
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
    },
    /// Manage stores.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Manage gateway credentials.
    Gateway {
        #[command(subcommand)]
        command: GatewayCommand,
    },
    /// Maintain the changefeed.
    Changes {
        #[command(subcommand)]
        command: ChangesCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Add a store.
    Add {
        /// Store id as HQ names it, e.g. S001
        id: String,
        #[arg(long)]
        name: String,
        /// ISO 4217 currency of the store's prices
        #[arg(long, default_value = "CNY")]
        currency: String,
    },
    /// List stores.
    List,
}

#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// Add a gateway for a store; prints its credential `<gateway_id>.<secret>` as one line.
    Add {
        #[arg(long)]
        store: String,
    },
    /// Revoke a gateway: its credential stops working at once.
    Revoke { gateway_id: String },
}

#[derive(Debug, Subcommand)]
pub enum ChangesCommand {
    /// Delete price changes superseded by a higher version (no gateway needs to resync).
    Compact,
}

impl Cli {
    /// Log level when RUST_LOG is unset: the server logs its work, one-shot commands only problems.
    pub fn default_log_level(&self) -> &'static str {
        match self.command {
            Command::Serve { .. } => "info",
            _ => "warn",
        }
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { listen } => serve(listen, cli.db).await,
        Command::Store { command } => {
            let db = storage::open(&cli.db).await?;
            match command {
                StoreCommand::Add { id, name, currency } => {
                    let id = StoreId::parse(&id)?;
                    let currency = Currency::parse(&currency)?;
                    let store = db
                        .create_store(&NewStore::new(id, &name, currency)?)
                        .await?;
                    println!(
                        "store {} ({}, {}) added",
                        store.id, store.name, store.currency
                    );
                }
                StoreCommand::List => {
                    for s in db.list_stores().await? {
                        println!("{}\t{}\t{}", s.id, s.currency, s.name);
                    }
                }
            }
            Ok(())
        }
        Command::Gateway { command } => {
            let db = storage::open(&cli.db).await?;
            match command {
                GatewayCommand::Add { store } => {
                    let store = StoreId::parse(&store)?;
                    let credential = db.create_gateway(&store).await?;
                    // The only output: scripts capture this line as the gateway's credential.
                    println!("{credential}");
                    tracing::info!(target: "audit", gateway = %credential.gateway_id, %store, "gateway added");
                }
                GatewayCommand::Revoke { gateway_id } => {
                    let id = GatewayId::parse(&gateway_id)?;
                    db.revoke_gateway(&id).await?;
                    println!("gateway {id} revoked");
                    tracing::info!(target: "audit", gateway = %id, "gateway revoked");
                }
            }
            Ok(())
        }
        Command::Changes {
            command: ChangesCommand::Compact,
        } => {
            let db = storage::open(&cli.db).await?;
            let report = db.compact().await?;
            println!("removed {} superseded changes", report.removed);
            for (store, n) in report.per_store {
                println!("store {store}: {n} removed");
            }
            Ok(())
        }
    }
}

async fn serve(listen: SocketAddr, db: String) -> anyhow::Result<()> {
    let token = match std::env::var(HQ_TOKEN_ENV) {
        Ok(t) => t,
        Err(_) => bail!(
            "{HQ_TOKEN_ENV} is not set: the hub refuses to serve without an HQ token (export {HQ_TOKEN_ENV}=...)"
        ),
    };
    let hq_token = HqToken::new(&token)?;
    if token.len() < 16 {
        tracing::warn!(
            "{HQ_TOKEN_ENV} is shorter than 16 characters; use a long random token in production"
        );
    }
    let hub = aisle_hub::serve(HubConfig {
        listen,
        db_url: db,
        hq_token,
    })
    .await?;
    eprintln!("aisle-hub listening on {}", hub.base_url());
    wait_for_stop_signal().await?;
    tracing::info!("shutting down");
    hub.shutdown().await.context("shutting down")?;
    Ok(())
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}
