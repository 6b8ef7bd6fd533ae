//! The `aisle-hub` command line.
use std::net::SocketAddr;
use std::time::Duration;

use aisle_protocol::{Currency, GatewayId, OrderId, StoreId};
use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use aisle_hub::api::orders::OrderBody;
use aisle_hub::config::{DEFAULT_DB_URL, DEFAULT_LISTEN, HQ_TOKEN_ENV};
use aisle_hub::pickup::sweeper::SweepSettings;
use aisle_hub::pickup::webhook::{WEBHOOK_SECRET_ENV, WebhookSecret, WebhookSettings};
use aisle_hub::pickup::{OrderFilter, OrderStatus};
use aisle_hub::storage::{self, NewStore};
use aisle_hub::timefmt::format_rfc3339;
use aisle_hub::{HqToken, HubConfig, PickupSettings};

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
    /// Serve the HQ and sync APIs (HQ token from AISLE_HQ_TOKEN; webhook secret from
    /// AISLE_WEBHOOK_SECRET, or generated and stored in the database when unset).
    Serve {
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Delay before the first webhook retry, in milliseconds (doubled per attempt).
        #[arg(long, env = "AISLE_WEBHOOK_RETRY_MS", default_value_t = 1_000)]
        webhook_retry_ms: u64,
        /// Longest delay between webhook retries, in seconds.
        #[arg(long, env = "AISLE_WEBHOOK_RETRY_MAX_S", default_value_t = 600)]
        webhook_retry_max_s: u64,
        /// How long after an order's expiry the hub waits for the store before it expires the
        /// order itself, in seconds.
        #[arg(long, env = "AISLE_PICKUP_EXPIRY_GRACE_S", default_value_t = 86_400)]
        expiry_grace_s: u64,
        /// How often the expiry sweep runs, in seconds.
        #[arg(long, env = "AISLE_PICKUP_SWEEP_S", default_value_t = 60)]
        expiry_sweep_s: u64,
    },
    /// Read pickup orders.
    Orders {
        #[command(subcommand)]
        command: OrdersCommand,
    },
    /// Webhook administration.
    Webhook {
        #[command(subcommand)]
        command: WebhookCommand,
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
pub enum OrdersCommand {
    /// List orders, newest first: id, store, status, placed, pickup by, lines.
    List {
        #[arg(long)]
        store: Option<String>,
        /// placed, sent_to_store, picking, ready, collected, partially_collected, cancelled, expired
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show one order as JSON (what GET /v1/orders/{id} answers).
    Show { order_id: String },
    /// Print the hub's pickup public key (`<key_id> <hex>`), if one was generated yet.
    Key,
}

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Print the webhook secret stored in the database (generated now if there is none). A hub
    /// started with AISLE_WEBHOOK_SECRET signs with that instead.
    Secret,
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
        Command::Serve {
            listen,
            webhook_retry_ms,
            webhook_retry_max_s,
            expiry_grace_s,
            expiry_sweep_s,
        } => {
            let pickups = PickupSettings {
                webhook_secret: match std::env::var(WEBHOOK_SECRET_ENV) {
                    Ok(s) => Some(WebhookSecret::new(&s).map_err(anyhow::Error::msg)?),
                    Err(_) => None,
                },
                webhooks: WebhookSettings {
                    backoff_base: Duration::from_millis(webhook_retry_ms.max(1)),
                    backoff_max: Duration::from_secs(webhook_retry_max_s.max(1)),
                    ..WebhookSettings::default()
                },
                sweep: SweepSettings {
                    every: Duration::from_secs(expiry_sweep_s.max(1)),
                    grace: Duration::from_secs(expiry_grace_s),
                },
            };
            serve(listen, cli.db, pickups).await
        }
        Command::Orders { command } => {
            let db = storage::open(&cli.db).await?;
            match command {
                OrdersCommand::List {
                    store,
                    status,
                    limit,
                } => {
                    let filter = OrderFilter {
                        store: store.as_deref().map(StoreId::parse).transpose()?,
                        status: status
                            .as_deref()
                            .map(OrderStatus::parse)
                            .transpose()
                            .map_err(anyhow::Error::msg)?,
                        limit: limit.max(1),
                    };
                    for o in db.list_orders(&filter).await? {
                        println!(
                            "{}\t{}\t{}\t{}\t{}\t{}",
                            o.order_id,
                            o.store,
                            o.status.as_str(),
                            format_rfc3339(o.placed_at),
                            format_rfc3339(o.pickup_by),
                            o.lines
                        );
                    }
                }
                OrdersCommand::Show { order_id } => {
                    let id = OrderId::parse(&order_id)?;
                    let Some(view) = db.order(&id).await? else {
                        bail!("unknown order {id}");
                    };
                    println!("{}", serde_json::to_string_pretty(&OrderBody::from(view))?);
                }
                OrdersCommand::Key => match db.pickup_key().await? {
                    Some(k) => println!("{} {}", k.key_id, k.public_key),
                    None => eprintln!("no pickup key yet: it is generated with the first order"),
                },
            }
            Ok(())
        }
        Command::Webhook {
            command: WebhookCommand::Secret,
        } => {
            let db = storage::open(&cli.db).await?;
            if std::env::var_os(WEBHOOK_SECRET_ENV).is_some() {
                eprintln!(
                    "note: {WEBHOOK_SECRET_ENV} is set; a hub started with it signs with that, not with this stored secret"
                );
            }
            println!("{}", db.webhook_secret().await?);
            Ok(())
        }
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

async fn serve(listen: SocketAddr, db: String, pickups: PickupSettings) -> anyhow::Result<()> {
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
        pickups,
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
