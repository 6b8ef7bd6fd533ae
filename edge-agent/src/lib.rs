//! aisle-agent: the store gateway daemon. It keeps the store's SQLite ledger (sales, prices,
//! stock), serves the local HTTP API, activates prices on hub time and syncs with the hub.
//!
//! ```text
//! lanes ──HTTP──> api ──command──> ledger writer thread ──> SQLite (WAL, FULL)
//!                                      ^        │ commit publishes LedgerView
//! hub <──HTTP── sync::uploader <───────┼────────┘ (outbox = seq > acked_through)
//! hub ──HTTP──> sync::downloader ──────┘ (page + cursor in one transaction)
//!                activator ── sleeps to the next effective_at, then ActivateDue
//! ```
//! The agent meets the hub only through `aisle-protocol` and HTTP.
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub mod activator;
pub mod api;
pub mod clock;
pub mod config;
pub mod ledger;
pub mod metrics;
pub mod sync;

use clock::{OffsetClock, WallClock};
use config::{AgentConfig, ConfigError};
use ledger::{Ledger, LedgerError};
use sync::{HubClient, SyncError, SyncShared, SyncStatus};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("sync client: {0}")]
    Sync(#[from] SyncError),
}

/// The running agent, in-process.
#[derive(Debug)]
pub struct Agent;

impl Agent {
    /// Opens the ledger, binds the API and starts the sync tasks and the price activator.
    /// Returns as soon as the API is listening: it never waits for the hub or the backlog.
    pub async fn start(
        config: AgentConfig,
        clock: Arc<dyn WallClock>,
    ) -> Result<AgentHandle, AgentError> {
        config.validate()?;
        let clock: Arc<dyn WallClock> = if config.clock.offset_ms == 0 {
            clock
        } else {
            Arc::new(OffsetClock::new(clock, config.clock.offset_ms))
        };
        let ledger = Ledger::open(&config.data_dir, clock.clone()).await?;
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(l) => l,
            Err(source) => {
                ledger.close().await;
                return Err(AgentError::Listen {
                    addr: config.listen,
                    source,
                });
            }
        };
        let local_addr = listener.local_addr().map_err(|source| AgentError::Listen {
            addr: config.listen,
            source,
        })?;
        let client = HubClient::new(&config.hub_url, &config.credential, clock.clone())?;
        let shared = Arc::new(SyncShared::new(
            config.store.clone(),
            config.sync.skew_alarm_ms,
        ));
        shared.observe_skew(ledger.view().skew_ms);
        let metrics = Arc::new(metrics::AgentMetrics::new(&ledger, &shared));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);

        let app = api::router(api::AppState {
            store: config.store.clone(),
            ledger: ledger.clone(),
            sync: shared.clone(),
            metrics,
        });
        let mut server_shutdown = shutdown_rx.clone();
        let mut tasks = vec![tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = server_shutdown.wait_for(|stop| *stop).await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "HTTP API stopped");
            }
        })];
        tasks.push(activator::spawn(ledger.clone(), shutdown_rx.clone()));
        tasks.extend(sync::spawn(
            sync::SyncContext {
                ledger: ledger.clone(),
                client,
                shared: shared.clone(),
                config: config.sync.clone(),
            },
            shutdown_rx,
        ));
        tracing::info!(
            store = %config.store,
            listen = %local_addr,
            hub = %config.hub_url,
            last_seq = ledger.view().last_seq,
            outbox = ledger.view().outbox_depth(),
            "aisle-agent started"
        );
        Ok(AgentHandle {
            local_addr,
            ledger,
            sync: shared,
            shutdown: shutdown_tx,
            tasks,
        })
    }
}

/// Handle to a running agent.
#[derive(Debug)]
pub struct AgentHandle {
    local_addr: SocketAddr,
    ledger: Ledger,
    sync: Arc<SyncShared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl AgentHandle {
    /// Where the HTTP API listens (the real port when the config said `:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// What `GET /v1/sync/status` answers.
    pub fn sync_status(&self) -> SyncStatus {
        self.sync.status(&self.ledger)
    }

    /// Stops the API (finishing requests in flight), the sync tasks and the activator, then
    /// closes the ledger.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.ledger.close().await;
    }
}
