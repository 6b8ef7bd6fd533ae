//! aisle-agent: the store gateway daemon. It keeps the store's SQLite ledger (sales, prices,
//! stock, footfall), serves the local HTTP API, activates prices on hub time, counts visitors
//! from the entrance cameras and syncs with the hub.
//!
//! ```text
//! lanes ──HTTP──> api ──command──> ledger writer thread ──> SQLite (WAL, FULL)
//!                                      ^        │ commit publishes LedgerView
//! hub <──HTTP── sync::uploader <───────┼────────┘ (outbox = seq > acked_through)
//! hub ──HTTP──> sync::downloader ──────┤ (page + cursor in one transaction)
//!                activator ────────────┤ sleeps to the next effective_at, then ActivateDue
//! cameras ─MQTT─> footfall::mqtt ─┐    │
//! cameras ─HTTP─> api ────────────┴─> footfall ingest ── one Footfall command per batch
//!                                      (snapshot + closed intervals; acks/answers after commit)
//! staff ──HTTP──> api (PIN sign-in, sessions, rate limits: pickup/) ──> pick / ready / redeem
//!                                      (decided by the writer; redeem answers after
//!                                       PickupCollected committed)
//! pickup::sweeper ─────────────────────> PickupExpired at expires_at (hub-corrected)
//! status_panel feeder ── link, clock alarm, local checks ──> LED + buzzer (own thread)
//! technician ──HTTP──> /setup (technician PIN) ── doctor checklist, devices
//! ```
//! The agent meets the hub only through `aisle-protocol` and HTTP.
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub mod activator;
pub mod api;
pub mod audit;
pub mod clock;
pub mod config;
pub mod devices;
pub mod doctor;
pub mod footfall;
pub mod labels;
pub mod lane;
pub mod ledger;
pub mod metrics;
pub mod pickup;
pub mod provisioning;
pub mod status_panel;
pub mod sync;

use clock::{OffsetClock, WallClock};
use config::{AgentConfig, ConfigError};
use footfall::{CamerasView, FootfallShared};
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
    /// A gateway without an identity (not enrolled) runs for the store but does not sync: its
    /// sync status says why.
    pub async fn start(
        config: AgentConfig,
        clock: Arc<dyn WallClock>,
    ) -> Result<AgentHandle, AgentError> {
        Agent::start_with(config, clock, None).await
    }

    /// [`Agent::start`], with the gateway's status panel (already booted:
    /// [`status_panel::boot`]) fed by a task of the agent.
    pub async fn start_with(
        config: AgentConfig,
        clock: Arc<dyn WallClock>,
        panel: Option<status_panel::AgentPanel>,
    ) -> Result<AgentHandle, AgentError> {
        config.validate()?;
        let labels = Arc::new(
            labels::LabelsShared::new(config.labels.as_ref()).map_err(ConfigError::Invalid)?,
        );
        let clock: Arc<dyn WallClock> = if config.clock.offset_ms == 0 {
            clock
        } else {
            Arc::new(OffsetClock::new(clock, config.clock.offset_ms))
        };
        let client = if config.is_enrolled() {
            Some(HubClient::from_config(&config, clock.clone())?)
        } else {
            tracing::warn!("{}", config::NOT_ENROLLED);
            None
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
        let shared = Arc::new(SyncShared::new(
            config.store.clone(),
            config.sync.skew_alarm_ms,
        ));
        shared.observe_skew(ledger.view().skew_ms);
        match &client {
            // Signatures carry hub time from the first request on, even while the clock is off.
            Some(client) => client.set_hub_offset_ms(ledger.view().skew_ms),
            None => shared.held_back(config::NOT_ENROLLED),
        }
        let (footfall, footfall_rx) = FootfallShared::new(config.footfall.as_ref());
        let pickup = Arc::new(pickup::PickupShared::new(
            config.store.clone(),
            config.pickup.as_ref(),
            ledger.hub_time(),
        ));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let audit = Arc::new(audit::AuditLog::new(&config.data_dir));
        let (lanes, lane_tasks) = match config.checkout()? {
            None => (Arc::new(lane::LanesShared::default()), Vec::new()),
            Some(checkout) => {
                let started = lane::start(
                    checkout,
                    lane::StartContext {
                        store: config.store.clone(),
                        ledger: ledger.clone(),
                        staff: pickup.staff.clone(),
                        audit: audit.clone(),
                        hub_time: ledger.hub_time(),
                        data_dir: config.data_dir.clone(),
                        listen: local_addr,
                    },
                    &shutdown_rx,
                );
                match started {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = shutdown_tx.send(true);
                        ledger.close().await;
                        return Err(ConfigError::Invalid(e).into());
                    }
                }
            }
        };
        let mut metrics = metrics::AgentMetrics::new(&ledger, &shared, &footfall, &pickup);
        metrics.register_labels(&labels.metrics);
        metrics.register_lanes(&lanes.metrics);
        let metrics = Arc::new(metrics);
        let footfall_tasks =
            match start_footfall(&config, &ledger, &footfall, footfall_rx, &shutdown_rx).await {
                Ok(t) => t,
                Err(e) => {
                    let _ = shutdown_tx.send(true);
                    ledger.close().await;
                    return Err(e);
                }
            };

        let panel_view = panel
            .as_ref()
            .map(|_| Arc::new(status_panel::PanelView::default()));
        let app = api::router(api::AppState {
            lanes: lanes.clone(),
            setup: Arc::new(api::setup::SetupContext {
                config: config.clone(),
                clock: clock.clone(),
                panel: panel_view.clone(),
            }),
            audit,
            store: config.store.clone(),
            ledger: ledger.clone(),
            sync: shared.clone(),
            metrics,
            footfall: footfall.clone(),
            pickup: pickup.clone(),
            labels: labels.clone(),
        });
        let mut server_shutdown = shutdown_rx.clone();
        let mut tasks = vec![tokio::spawn(async move {
            // The client address feeds sign-in's lockout (wrong PINs per address).
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = server_shutdown.wait_for(|stop| *stop).await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "HTTP API stopped");
            }
        })];
        tasks.extend(footfall_tasks);
        tasks.extend(lane_tasks);
        tasks.push(activator::spawn(ledger.clone(), shutdown_rx.clone()));
        tasks.push(pickup::sweeper::spawn(ledger.clone(), shutdown_rx.clone()));
        if let Some(settings) = &config.labels {
            tasks.extend(labels::spawn(
                settings,
                ledger.clone(),
                labels.clone(),
                shutdown_rx.clone(),
            ));
        }
        if let (Some(panel), Some(view)) = (panel, &panel_view) {
            tasks.push(status_panel::spawn_feeder(
                panel,
                view.clone(),
                status_panel::FeederInputs {
                    config: config.clone(),
                    sync: shared.clone(),
                    ledger: ledger.clone(),
                    footfall: footfall.clone(),
                    labels: labels.clone(),
                },
                shutdown_rx.clone(),
            ));
        }
        if let Some(client) = client {
            tasks.extend(sync::spawn(
                sync::SyncContext {
                    ledger: ledger.clone(),
                    client,
                    shared: shared.clone(),
                    config: config.sync.clone(),
                },
                shutdown_rx,
            ));
        }
        tracing::info!(
            store = %config.store,
            listen = %local_addr,
            hub = %config.hub_url,
            last_seq = ledger.view().last_seq,
            outbox = ledger.view().outbox_depth(),
            cameras = footfall.cameras.len(),
            enrolled = config.is_enrolled(),
            "aisle-agent started"
        );
        Ok(AgentHandle {
            local_addr,
            panel: panel_view,
            ledger,
            sync: shared,
            footfall,
            pickup,
            labels,
            shutdown: shutdown_tx,
            tasks,
        })
    }
}

/// Starts camera ingestion when cameras are configured: restores the counter and presence from
/// the ledger, then spawns the ingest task and (with a broker configured) the MQTT task.
async fn start_footfall(
    config: &AgentConfig,
    ledger: &Ledger,
    shared: &Arc<FootfallShared>,
    rx: Option<tokio::sync::mpsc::Receiver<footfall::Msg>>,
    shutdown: &watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, AgentError> {
    let (Some(settings), Some(rx)) = (&config.footfall, rx) else {
        return Ok(Vec::new());
    };
    let stored = ledger.footfall_state().await?;
    let mut tasks = Vec::new();
    let mut acker = None;
    if let Some(broker) = settings.mqtt_broker() {
        let (host, port) = broker.map_err(ConfigError::Invalid)?;
        // A gateway waiting for enrolment still counts visitors.
        let gateway = config
            .gateway_id()
            .map_or_else(|_| "unenrolled".to_string(), |g| g.as_str().to_string());
        let setup = footfall::MqttSetup {
            host,
            port,
            client_id: footfall::mqtt_client_id(config.store.as_str(), &gateway),
            topic_base: format!("{}/{}/camera/", settings.topic_prefix, config.store),
            max_payload_bytes: settings.max_payload_bytes,
        };
        let Some(tx) = shared.sender().cloned() else {
            return Ok(Vec::new());
        };
        let (task, a) = footfall::spawn_mqtt(setup, shared.clone(), tx, shutdown.clone());
        tasks.push(task);
        acker = Some(a);
    }
    let ingest = footfall::Ingest::new(footfall::IngestSetup {
        settings: settings.clone(),
        ledger: ledger.clone(),
        shared: shared.clone(),
        stored,
        acker,
    });
    tasks.push(tokio::spawn(ingest.run(rx, shutdown.clone())));
    Ok(tasks)
}

/// Handle to a running agent.
#[derive(Debug)]
pub struct AgentHandle {
    local_addr: SocketAddr,
    panel: Option<Arc<status_panel::PanelView>>,
    ledger: Ledger,
    sync: Arc<SyncShared>,
    footfall: Arc<FootfallShared>,
    pickup: Arc<pickup::PickupShared>,
    labels: Arc<labels::LabelsShared>,
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

    /// What the status panel shows now (None without a panel, or before its first look).
    pub fn panel_status(&self) -> Option<status_panel::PanelStatus> {
        self.panel.as_ref().and_then(|p| p.status())
    }

    /// What `GET /v1/sync/status` answers.
    pub fn sync_status(&self) -> SyncStatus {
        self.sync.status(&self.ledger)
    }

    /// What `GET /v1/cameras` answers: every configured camera's presence and counts.
    pub fn cameras(&self) -> CamerasView {
        self.footfall.view()
    }

    /// Camera ingestion's metrics (`aisle_footfall_*`, `aisle_camera_online`).
    pub fn footfall_metrics(&self) -> &footfall::FootfallMetrics {
        &self.footfall.metrics
    }

    /// Shelf labels: the planner's counters (`stats()`: pending, unsent, confirmed...), what it
    /// heard from each tag, the access point's link.
    pub fn labels(&self) -> &Arc<labels::LabelsShared> {
        &self.labels
    }

    /// Click-and-collect's metrics (`aisle_pickup_*`).
    pub fn pickup_metrics(&self) -> &pickup::PickupMetrics {
        &self.pickup.metrics
    }

    /// Stops the API (finishing requests in flight), the sync tasks, camera ingestion (which
    /// commits and acknowledges what it took) and the activator, then closes the ledger.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        self.ledger.close().await;
    }
}

/// Dropping the handle without [`AgentHandle::shutdown`] is a crash: every task is aborted at its
/// next await, with nothing flushed, acknowledged or closed cleanly (a ledger commit already on
/// the writer thread completes or not, atomically). Tests use it to kill an agent.
impl Drop for AgentHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
