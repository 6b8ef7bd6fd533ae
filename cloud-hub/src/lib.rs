//! aisle-hub: the HQ hub of Aisle. It takes price batches from HQ, keeps a changefeed per store,
//! serves gateways the sync protocol of `aisle_protocol::sync`, and stores what stores upload
//! (sales, stock movements, price confirmations) exactly once.
//!
//! Run it in-process (tests, benches) with [`serve`] or [`HubServer`]; the `aisle-hub` binary is
//! a thin CLI over this library.
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub mod api;
pub mod changefeed;
pub mod config;
pub mod metrics;
pub mod price_batch;
pub mod storage;
pub mod testsupport;
pub mod timefmt;

pub use config::{HqToken, HubConfig};
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
}

/// A hub over an already opened storage.
#[derive(Debug)]
pub struct HubServer {
    storage: Arc<dyn HubStorage>,
    hq_token: HqToken,
}

impl HubServer {
    pub fn new(storage: Arc<dyn HubStorage>, hq_token: HqToken) -> Self {
        HubServer { storage, hq_token }
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
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let state = api::AppState {
            storage: self.storage.clone(),
            hq_token: self.hq_token,
            metrics: Arc::new(metrics::HubMetrics::new()),
            shutdown: shutdown_rx.clone(),
        };
        let app = api::router(state);
        let mut stop = shutdown_rx;
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        });
        tracing::info!(%local_addr, backend = ?self.storage.backend(), "aisle-hub listening");
        Ok(HubHandle {
            local_addr,
            storage: self.storage,
            shutdown: shutdown_tx,
            task,
        })
    }
}

/// Opens the database named in `config` and starts a hub on `config.listen`.
pub async fn serve(config: HubConfig) -> Result<HubHandle, HubError> {
    let storage = storage::open(&config.db_url).await?;
    HubServer::new(storage, config.hq_token)
        .start(config.listen)
        .await
}

/// A running hub.
#[derive(Debug)]
pub struct HubHandle {
    local_addr: SocketAddr,
    storage: Arc<dyn HubStorage>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
}

impl HubHandle {
    /// The address the hub listens on (the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://<local_addr>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// The storage the hub serves from (tests use it to set up stores and gateways).
    pub fn storage(&self) -> Arc<dyn HubStorage> {
        self.storage.clone()
    }

    /// Stops accepting connections, ends waiting long-polls at once, lets in-flight requests
    /// finish, and waits for the server to stop.
    pub async fn shutdown(self) -> Result<(), HubError> {
        let _ = self.shutdown.send(true);
        self.task
            .await
            .map_err(|e| HubError::Task(e.to_string()))?
            .map_err(HubError::Serve)
    }
}
