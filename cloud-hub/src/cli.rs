//! The `aisle-hub` command line.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aisle_protocol::{Currency, GatewayId, OrderId, StoreId, UtcMillis};
use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use aisle_hub::api::orders::OrderBody;
use aisle_hub::config::{DEFAULT_DB_URL, DEFAULT_LISTEN, HQ_TOKEN_ENV};
use aisle_hub::member::{self, CardRequest, DEFAULT_CARD_DAYS};
use aisle_hub::pickup::sweeper::SweepSettings;
use aisle_hub::pickup::webhook::{WEBHOOK_SECRET_ENV, WebhookSecret, WebhookSettings};
use aisle_hub::pickup::{OrderFilter, OrderStatus};
use aisle_hub::security::qr::{self, enrolment_uri};
use aisle_hub::security::tls::{self, TlsIdentity};
use aisle_hub::security::{Actor, NewApiToken, NewEnrolment, Role, check_token_name, parse_ttl};
use aisle_hub::storage::{self, NewStore};
use aisle_hub::timefmt::format_rfc3339;
use aisle_hub::{HqToken, HubConfig, PickupSettings};

#[derive(Debug, Parser)]
#[command(
    name = "aisle-hub",
    version,
    about = "Aisle HQ hub: price batches, sales, stock, pickup orders and the gateway sync API",
    long_about = "Aisle HQ hub: price batches, sales, stock, pickup orders and the gateway sync API.\n\n\
HQ callers send a bearer token with a role: AISLE_HQ_TOKEN is the bootstrap admin token, \
`token create --role pricing|orders|admin` makes the others (price batches need pricing, orders \
and member cards need orders, stores, gateways, enrolment and the audit log need admin; reports take any role). \
Gateways use a credential from `gateway add`, or enrol with a one-time code from `enrolment \
create` and sign their requests with their own key. `tls init` makes a private CA and server \
certificate; `serve --tls-cert --tls-key` serves HTTPS. Privileged actions go to the audit log \
(`audit list`, `audit verify`)."
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
    /// Serve the HQ and sync APIs. AISLE_HQ_TOKEN is the bootstrap admin token (make role
    /// tokens with `token create`); the webhook secret comes from AISLE_WEBHOOK_SECRET, or is
    /// generated and stored in the database when unset. HTTPS with --tls-cert and --tls-key
    /// (see `tls init`), plain HTTP without.
    Serve {
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// PEM certificate chain to serve HTTPS with (the server's certificate first).
        #[arg(long, env = "AISLE_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert (keep it mode 0600).
        #[arg(long, env = "AISLE_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
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
    /// HQ API tokens with roles (pricing, orders, admin).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The append-only, hash-chained audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// One-time codes that enrol a new gateway with its own key.
    Enrolment {
        #[command(subcommand)]
        command: EnrolmentCommand,
    },
    /// HTTPS for a self-hosted HQ.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Loyalty member cards that self-checkout lanes verify offline.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Sign a member card with the hub's pickup key (generated and sent to every store first if
    /// there is none yet); prints the card's token (the text of its QR code) on stdout. Audited.
    Card {
        /// Member number as printed on the card: 1 to 32 of A-Z a-z 0-9 '-', e.g. M-1001
        #[arg(long)]
        member: String,
        /// Discount on member-eligible lines in basis points (500 = 5 %), at most 5000 (50 %).
        #[arg(long, allow_negative_numbers = true)]
        discount_bp: i64,
        /// How long the card is valid, in days (1 to 3650).
        #[arg(long, default_value_t = DEFAULT_CARD_DAYS, allow_negative_numbers = true)]
        days: i64,
        /// Also write the token as a QR code (PNG, mode 0600) to this file.
        #[arg(long)]
        qr: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; prints it once (only its SHA-256 is stored). Send it as
    /// `Authorization: Bearer <token>`.
    Create {
        /// pricing (price batches), orders (pickup orders), admin (everything)
        #[arg(long)]
        role: String,
        /// Who or what holds it, e.g. "pricing-tool"
        #[arg(long)]
        name: String,
    },
    /// List tokens: id, role, name, created, revoked.
    List,
    /// Revoke a token by id: refused from its next request on.
    Revoke { token_id: String },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print entries as JSON lines, oldest first.
    List {
        /// First entry (seq) to print.
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Check the hash chain; exits non-zero when an entry was altered or removed.
    Verify,
}

#[derive(Debug, Subcommand)]
pub enum EnrolmentCommand {
    /// Create a one-time enrolment code for a store's new gateway; prints the code once.
    Create {
        /// The store the gateway will belong to, e.g. S001
        #[arg(long)]
        store: String,
        /// How long the code stays valid: e.g. 30m, 24h, 7d (at most 30 days).
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// Also write a QR code (PNG) of the enrolment URI to this file.
        #[arg(long)]
        qr: Option<PathBuf>,
        /// The hub's URL as the gateway reaches it, put in the URI and QR code.
        #[arg(long)]
        hub_url: Option<String>,
        /// The certificate the hub serves (--tls-cert of serve): its fingerprint is printed
        /// for the gateway to pin.
        #[arg(long, env = "AISLE_TLS_CERT")]
        tls_cert: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Make a private CA and a server certificate in DIR (ca.pem, ca-key.pem, server.pem,
    /// server-key.pem; keys mode 0600). Never overwrites.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// DNS names or IP addresses the hub is reached by (repeat, or comma-separate).
        #[arg(long = "host", required = true, value_delimiter = ',')]
        hosts: Vec<String>,
    },
    /// Print the SHA-256 fingerprint of a PEM certificate (what gateways pin).
    Fingerprint { cert: PathBuf },
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
    /// Revoke a gateway: its credential or key stops working on its next request.
    Revoke { gateway_id: String },
    /// List gateways: id, store, auth (key or bearer), created, revoked, name.
    List,
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
            tls_cert,
            tls_key,
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
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => Some(
                    TlsIdentity::load(&cert, &key)
                        .context("loading the TLS certificate and key")?,
                ),
                _ => None,
            };
            #[cfg(feature = "bench-unauthenticated")]
            if std::env::var("AISLE_BENCH_UNAUTHENTICATED").as_deref() == Ok("1") {
                tracing::warn!(
                    "BENCHMARK BUILD: gateway requests are NOT authenticated (x-aisle-gateway is trusted)"
                );
                aisle_hub::api::signed::UNAUTHENTICATED
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            serve(listen, cli.db, pickups, tls).await
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
                    let credential = db.create_gateway_by(&store, &Actor::cli()).await?;
                    // The only output: scripts capture this line as the gateway's credential.
                    println!("{credential}");
                    tracing::info!(target: "audit", gateway = %credential.gateway_id, %store, "gateway added");
                }
                GatewayCommand::Revoke { gateway_id } => {
                    let id = GatewayId::parse(&gateway_id)?;
                    db.revoke_gateway_by(&id, &Actor::cli()).await?;
                    println!("gateway {id} revoked");
                    tracing::info!(target: "audit", gateway = %id, "gateway revoked");
                }
                GatewayCommand::List => {
                    for g in db.list_gateways().await? {
                        println!(
                            "{}\t{}\t{}\t{}\t{}\t{}",
                            g.gateway_id,
                            g.store,
                            if g.enrolled_name.is_some() {
                                "key"
                            } else {
                                "bearer"
                            },
                            format_rfc3339(g.created_at),
                            g.revoked_at.map_or_else(|| "-".to_owned(), format_rfc3339),
                            g.enrolled_name.unwrap_or_default()
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Token { command } => token_command(&cli.db, command).await,
        Command::Audit { command } => audit_command(&cli.db, command).await,
        Command::Enrolment { command } => enrolment_command(&cli.db, command).await,
        Command::Tls { command } => tls_command(command),
        Command::Member { command } => member_command(&cli.db, command).await,
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

async fn token_command(db: &str, command: TokenCommand) -> anyhow::Result<()> {
    let db = storage::open(db).await?;
    match command {
        TokenCommand::Create { role, name } => {
            let role = Role::parse(&role).map_err(anyhow::Error::msg)?;
            let name = check_token_name(&name).map_err(anyhow::Error::msg)?;
            let token = NewApiToken::generate();
            let info = db
                .create_api_token(&token, &name, role, &Actor::cli())
                .await?;
            eprintln!(
                "token {} ({}, role {}) created; it is shown only now:",
                info.token_id, info.name, info.role
            );
            println!("{}", token.secret());
        }
        TokenCommand::List => {
            for t in db.list_api_tokens().await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    t.token_id,
                    t.role,
                    t.name,
                    format_rfc3339(t.created_at),
                    t.revoked_at.map_or_else(|| "-".to_owned(), format_rfc3339)
                );
            }
        }
        TokenCommand::Revoke { token_id } => {
            db.revoke_api_token(token_id.trim(), &Actor::cli()).await?;
            println!("token {} revoked", token_id.trim());
        }
    }
    Ok(())
}

async fn audit_command(db: &str, command: AuditCommand) -> anyhow::Result<()> {
    let db = storage::open(db).await?;
    match command {
        AuditCommand::List { from, limit } => {
            let mut next = from.max(1);
            let mut left = limit;
            while left > 0 {
                let page = db.audit_entries(next, left.min(1_000)).await?;
                let Some(last) = page.last() else { break };
                next = last.seq + 1;
                left = left.saturating_sub(u32::try_from(page.len()).unwrap_or(u32::MAX));
                for e in page {
                    println!("{}", serde_json::to_string(&e)?);
                }
            }
        }
        AuditCommand::Verify => {
            let v = db.verify_audit().await?;
            match v.broken {
                None => println!(
                    "audit log intact: {} entries, hash chain verified",
                    v.entries
                ),
                Some((seq, why)) => {
                    bail!(
                        "audit log broken at entry {seq}: {why} ({} entries before it verified)",
                        v.entries
                    )
                }
            }
        }
    }
    Ok(())
}

async fn enrolment_command(db: &str, command: EnrolmentCommand) -> anyhow::Result<()> {
    let EnrolmentCommand::Create {
        store,
        ttl,
        qr,
        hub_url,
        tls_cert,
    } = command;
    let store = StoreId::parse(&store)?;
    let ttl = parse_ttl(&ttl).map_err(anyhow::Error::msg)?;
    let fingerprint = tls_cert
        .as_deref()
        .map(tls::fingerprint_of_file)
        .transpose()?;
    let db = storage::open(db).await?;
    let e = NewEnrolment::generate(&store, UtcMillis::now().saturating_add_ms(ttl));
    db.create_enrolment(&e, &Actor::cli()).await?;
    let code = e.code.display();
    let uri = enrolment_uri(&code, hub_url.as_deref(), fingerprint.as_deref());
    if let Some(path) = &qr {
        qr::write_png(path, &uri)?;
    }
    println!("enrolment code: {code}");
    println!("store:          {store}");
    println!("expires:        {}", format_rfc3339(e.expires_at));
    match &fingerprint {
        Some(fp) => println!("hub TLS sha256: {fp}"),
        None => println!("hub TLS sha256: none (give --tls-cert when the hub serves HTTPS)"),
    }
    println!("uri:            {uri}");
    if let Some(path) = &qr {
        println!("qr code:        {}", path.display());
    }
    // stdout, like the code itself: stderr is for logs, and logs never hold a code.
    println!(
        "single use; on the gateway: aisle-agent enroll --hub {} --code {code}",
        hub_url.as_deref().unwrap_or("<hub URL>")
    );
    Ok(())
}

async fn member_command(db: &str, command: MemberCommand) -> anyhow::Result<()> {
    let MemberCommand::Card {
        member,
        discount_bp,
        days,
        qr,
    } = command;
    let request = CardRequest::new(member.trim(), discount_bp, days).map_err(anyhow::Error::msg)?;
    let db = storage::open(db).await?;
    let card = member::issue(db.as_ref(), &request, &Actor::cli(), UtcMillis::now()).await?;
    if let Some(path) = &qr {
        qr::write_png(path, &card.token)?;
    }
    eprintln!(
        "member card for {} ({} bp off, key {}) valid until {}{}",
        card.claims.member,
        card.claims.discount_bp,
        card.claims.key_id,
        format_rfc3339(card.claims.expires_at),
        qr.as_ref()
            .map(|p| format!("; QR code in {}", p.display()))
            .unwrap_or_default()
    );
    // The only output on stdout: scripts capture this line as the card's token.
    println!("{}", card.token);
    Ok(())
}

fn tls_command(command: TlsCommand) -> anyhow::Result<()> {
    match command {
        TlsCommand::Init { dir, hosts } => {
            let files = tls::init(&dir, &hosts)?;
            println!("CA certificate:     {}", files.ca_cert.display());
            println!("CA key (0600):      {}", files.ca_key.display());
            println!("server certificate: {}", files.server_cert.display());
            println!("server key (0600):  {}", files.server_key.display());
            println!("server sha256:      {}", files.fingerprint);
            eprintln!(
                "serve with: aisle-hub serve --tls-cert {} --tls-key {}; keep ca-key.pem offline",
                files.server_cert.display(),
                files.server_key.display()
            );
        }
        TlsCommand::Fingerprint { cert } => println!("{}", tls::fingerprint_of_file(&cert)?),
    }
    Ok(())
}

async fn serve(
    listen: SocketAddr,
    db: String,
    pickups: PickupSettings,
    tls: Option<TlsIdentity>,
) -> anyhow::Result<()> {
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
        tls,
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
