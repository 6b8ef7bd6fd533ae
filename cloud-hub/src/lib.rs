//! aisle-hub: the HQ hub of Aisle. It takes price batches from HQ, keeps a changefeed per store,
//! serves gateways the sync protocol of `aisle_protocol::sync`, and stores what stores upload
//! (sales, stock movements, price confirmations, footfall) exactly once. HQ reads it back as
//! reports, among them footfall and conversion per store ([`footfall`]) and which shelf labels
//! show the current price ([`labels`]). It also runs
//! click-and-collect for HQ's order system ([`pickup`]): orders, pickup tokens, the stores'
//! progress, expiry and signed webhooks, and signs loyalty member cards ([`member`]) that
//! self-checkout lanes verify offline with the same key.
//!
//! Who may do what ([`security`]): HQ tokens carry a role (pricing, orders, admin; the
//! `AISLE_HQ_TOKEN` env token is the bootstrap admin), gateways use a bearer credential or,
//! once enrolled with a one-time code, sign every request with their own Ed25519 key
//! (`aisle_protocol::auth`; clock window and nonces in the database). Privileged actions are
//! written to an append-only, hash-chained audit log in the transaction that makes them. The
//! hub serves HTTPS with rustls when given a certificate (`aisle-hub tls init` makes a private
//! CA).
//!
//! Run it in-process (tests, benches) with [`serve`] or [`HubServer`]; the `aisle-hub` binary is
//! a thin CLI over this library.
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub mod api;
pub mod changefeed;
pub mod config;
pub mod footfall;
pub mod labels;
pub mod member;
pub mod metrics;
pub mod pickup;
pub mod price_batch;
pub mod security;
pub mod storage;
pub mod testsupport;
pub mod timefmt;

pub use config::{HqToken, HubConfig};
pub use pickup::PickupSettings;
pub use storage::{HubStorage, StorageError};

/// Why the hub could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("the HTTP server task failed: {0}")]
    Task(String),
    #[error("webhooks: {0}")]
    Webhooks(String),
}

/// A hub over an already opened storage.
#[derive(Debug)]
pub struct HubServer {
    storage: Arc<dyn HubStorage>,
    hq_token: HqToken,
    pickups: PickupSettings,
    tls: Option<security::tls::TlsIdentity>,
}

impl HubServer {
    /// A hub with the default click-and-collect settings.
    pub fn new(storage: Arc<dyn HubStorage>, hq_token: HqToken) -> Self {
        HubServer {
            storage,
            hq_token,
            pickups: PickupSettings::default(),
            tls: None,
        }
    }

    /// Serve HTTPS with this identity instead of plain HTTP.
    pub fn with_tls(mut self, tls: Option<security::tls::TlsIdentity>) -> Self {
        self.tls = tls;
        self
    }

    /// Click-and-collect settings (webhook secret and delivery, expiry sweep).
    pub fn with_pickups(mut self, pickups: PickupSettings) -> Self {
        self.pickups = pickups;
        self
    }

    /// Binds `listen` (use port 0 for any free port) and serves until [`HubHandle::shutdown`].
    pub async fn start(self, listen: SocketAddr) -> Result<HubHandle, HubError> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| HubError::Bind {
                addr: listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| HubError::Bind {
            addr: listen,
            source,
        })?;
        let secret = match self.pickups.webhook_secret.clone() {
            Some(s) => s,
            None => pickup::webhook::WebhookSecret::new(&self.storage.webhook_secret().await?)
                .map_err(HubError::Webhooks)?,
        };
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let metrics = Arc::new(metrics::HubMetrics::new());
        let webhooks = Arc::new(Notify::new());
        let state = api::AppState {
            storage: self.storage.clone(),
            hq_token: self.hq_token,
            metrics: metrics.clone(),
            shutdown: shutdown_rx.clone(),
            webhooks: webhooks.clone(),
            tls_fingerprint: self.tls.as_ref().map(|t| t.fingerprint().to_owned()),
            gateway_keys: Arc::new(api::signed::KeyCache::default()),
        };
        let worker = pickup::webhook::WebhookWorker::new(
            self.storage.clone(),
            metrics.clone(),
            secret,
            self.pickups.webhooks.clone(),
            webhooks.clone(),
        )
        .map_err(HubError::Webhooks)?;
        let background = vec![
            tokio::spawn(worker.run(shutdown_rx.clone())),
            tokio::spawn(pickup::sweeper::run(
                self.storage.clone(),
                metrics,
                self.pickups.sweep.clone(),
                webhooks,
                shutdown_rx.clone(),
            )),
        ];
        let app =
            api::router(state).into_make_service_with_connect_info::<api::enrol::ClientAddr>();
        let mut stop = shutdown_rx;
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let task = match &self.tls {
            None => tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
            }),
            Some(identity) => {
                let tls =
                    security::tls::TlsListener::new(listener, identity).map_err(|source| {
                        HubError::Bind {
                            addr: listen,
                            source,
                        }
                    })?;
                tokio::spawn(
                    async move { axum::serve(tls, app).with_graceful_shutdown(stopped).await },
                )
            }
        };
        tracing::info!(
            %local_addr,
            scheme,
            backend = ?self.storage.backend(),
            tls_fingerprint = self.tls.as_ref().map(|t| t.fingerprint()),
            "aisle-hub listening"
        );
        Ok(HubHandle {
            scheme,
            local_addr,
            storage: self.storage,
            shutdown: shutdown_tx,
            task,
            background,
        })
    }
}

/// Opens the database named in `config` and starts a hub on `config.listen`.
pub async fn serve(config: HubConfig) -> Result<HubHandle, HubError> {
    let storage = storage::open(&config.db_url).await?;
    HubServer::new(storage, config.hq_token)
        .with_pickups(config.pickups)
        .with_tls(config.tls)
        .start(config.listen)
        .await
}

/// A running hub.
#[derive(Debug)]
pub struct HubHandle {
    scheme: &'static str,
    local_addr: SocketAddr,
    storage: Arc<dyn HubStorage>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
    /// The webhook worker and the expiry sweeper.
    background: Vec<JoinHandle<()>>,
}

impl HubHandle {
    /// The address the hub listens on (the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://<local_addr>`, or `https://` when serving TLS.
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.local_addr)
    }

    /// The storage the hub serves from (tests use it to set up stores and gateways).
    pub fn storage(&self) -> Arc<dyn HubStorage> {
        self.storage.clone()
    }

    /// Stops accepting connections, ends waiting long-polls at once, lets in-flight requests
    /// finish, and waits for the server to stop. Webhook deliveries still in flight are
    /// abandoned: their outbox rows are retried when their lease runs out (at least once).
    pub async fn shutdown(self) -> Result<(), HubError> {
        let _ = self.shutdown.send(true);
        let served = self
            .task
            .await
            .map_err(|e| HubError::Task(e.to_string()))?
            .map_err(HubError::Serve);
        for task in self.background {
            task.abort();
            let _ = task.await;
        }
        served
    }
}
