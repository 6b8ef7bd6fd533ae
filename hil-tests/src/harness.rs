//! A virtual store under test: the real `aisle-hub` and `aisle-agent` binaries started as a user
//! would start them, a fault proxy between them, and small HTTP clients for HQ and the store.
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::proxy::FaultProxy;

/// The HQ token every harness hub is started with.
pub const HQ_TOKEN: &str = "hq-test-token-0123456789";

/// Path of one of the workspace's binaries, built beside the test executable.
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    // target/<profile>/deps/test-hash or target/<profile>/bin-name
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "{name} is not built next to {}: run `cargo build --workspace --bins` first (scripts/test does)",
        exe.display()
    )
}

/// A free TCP port on loopback (bound and released; the race is harmless on a test machine).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Which database the hub runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A hub database that exists for one test and is removed after it.
pub struct HubDb {
    pub url: String,
    pg: Option<aisle_hub::testsupport::TempPostgres>,
}

impl HubDb {
    pub async fn create(backend: Backend, dir: &Path) -> Result<HubDb> {
        match backend {
            Backend::Sqlite => Ok(HubDb {
                url: format!("sqlite://{}", dir.join("hub.db").display()),
                pg: None,
            }),
            Backend::Postgres => {
                let pg = aisle_hub::testsupport::TempPostgres::create().await?;
                Ok(HubDb {
                    url: pg.url().to_string(),
                    pg: Some(pg),
                })
            }
        }
    }

    pub async fn cleanup(self) -> Result<()> {
        if let Some(pg) = self.pg {
            pg.cleanup().await?;
        }
        Ok(())
    }

    /// Takes a backup of the hub's database, as HQ's nightly backup would. The hub must be
    /// stopped (no open connections).
    pub async fn backup(&self) -> Result<()> {
        match &self.pg {
            None => {
                let path = self.sqlite_path()?;
                for ext in ["", "-wal"] {
                    let from = format!("{path}{ext}");
                    if Path::new(&from).exists() {
                        std::fs::copy(&from, format!("{path}.bak{ext}"))?;
                    }
                }
                Ok(())
            }
            Some(pg) => {
                let name = pg.name();
                admin_sql(&format!("DROP DATABASE IF EXISTS {name}_bak")).await?;
                admin_sql(&format!("CREATE DATABASE {name}_bak TEMPLATE {name}")).await
            }
        }
    }

    /// Puts the last backup back in place of the database (the hub must be stopped).
    pub async fn restore(&self) -> Result<()> {
        match &self.pg {
            None => {
                let path = self.sqlite_path()?;
                for ext in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{path}{ext}"));
                }
                for ext in ["", "-wal"] {
                    let from = format!("{path}.bak{ext}");
                    if Path::new(&from).exists() {
                        std::fs::copy(&from, format!("{path}{ext}"))?;
                    }
                }
                Ok(())
            }
            Some(pg) => {
                let name = pg.name();
                admin_sql(&format!("DROP DATABASE {name} WITH (FORCE)")).await?;
                admin_sql(&format!("CREATE DATABASE {name} TEMPLATE {name}_bak")).await?;
                admin_sql(&format!("DROP DATABASE {name}_bak")).await
            }
        }
    }

    fn sqlite_path(&self) -> Result<String> {
        self.url
            .strip_prefix("sqlite://")
            .map(str::to_string)
            .ok_or_else(|| anyhow!("not a SQLite database: {}", self.url))
    }
}

/// Runs one statement on the PostgreSQL server the tests use, as its administrator.
async fn admin_sql(sql: &str) -> Result<()> {
    let url = std::env::var("AISLE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into());
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    let task = tokio::spawn(conn);
    let result = client
        .batch_execute(sql)
        .await
        .with_context(|| sql.to_string());
    drop(client);
    let _ = task.await;
    result
}

impl std::fmt::Debug for HubDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubDb").field("url", &self.url).finish()
    }
}

/// Kills the child when dropped, so a failing test leaves no processes behind.
#[derive(Debug)]
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `aisle-hub serve` as a process.
#[derive(Debug)]
pub struct HubProcess {
    child: Option<Reaped>,
    pub db_url: String,
    pub addr: SocketAddr,
    /// Added to `aisle-hub serve` on every (re)start, e.g. `--expiry-sweep-s 1`.
    pub extra_args: Vec<String>,
    /// Set in the hub's environment on every (re)start, e.g. `AISLE_WEBHOOK_SECRET`.
    pub extra_env: Vec<(String, String)>,
    log: PathBuf,
}

impl HubProcess {
    pub async fn start(db_url: &str, log_dir: &Path) -> Result<HubProcess> {
        Self::start_with(db_url, log_dir, Vec::new(), Vec::new()).await
    }

    /// Like [`HubProcess::start`], with `extra_args` for `serve` and `extra_env` for the process.
    pub async fn start_with(
        db_url: &str,
        log_dir: &Path,
        extra_args: Vec<String>,
        extra_env: Vec<(String, String)>,
    ) -> Result<HubProcess> {
        let mut hub = HubProcess {
            child: None,
            db_url: db_url.to_string(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            extra_args,
            extra_env,
            log: log_dir.join("hub.log"),
        };
        hub.restart().await?;
        Ok(hub)
    }

    /// Runs an `aisle-hub` subcommand against this hub's database and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        hub_cli(&self.db_url, args)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the hub at once (SIGKILL): the worst a crash or an operator can do.
    pub fn kill(&mut self) {
        self.child = None;
    }

    /// Starts (again) on a fresh port against the same database.
    pub async fn restart(&mut self) -> Result<()> {
        self.child = None;
        let port = free_port()?;
        self.addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(binary("aisle-hub")?)
            .args([
                "serve",
                "--listen",
                &self.addr.to_string(),
                "--db",
                &self.db_url,
            ])
            .args(&self.extra_args)
            .env("AISLE_HQ_TOKEN", HQ_TOKEN)
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting aisle-hub")?;
        self.child = Some(Reaped(child));
        wait_healthy(&self.url(), "hub", &self.log).await
    }
}

/// Waits until the service at `base` answers `/healthz`; on time-out the error names its log.
async fn wait_healthy(base: &str, what: &str, log: &Path) -> Result<()> {
    let url = format!("{base}/healthz");
    let client = reqwest::Client::new();
    wait_for(
        &format!("the {what}'s /healthz"),
        Duration::from_secs(20),
        || async {
            let ok = client
                .get(&url)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            ok.then_some(())
        },
    )
    .await
    .with_context(|| format!("{what} log: {}", log.display()))
}

/// Runs `aisle-hub ARGS --db URL` and returns stdout, failing with stderr on a non-zero exit.
pub fn hub_cli(db_url: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(binary("aisle-hub")?)
        .args(args)
        .args(["--db", db_url])
        .output()?;
    if !out.status.success() {
        bail!(
            "aisle-hub {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Settings of one agent under test.
#[derive(Clone, Debug)]
pub struct AgentSetup {
    pub store: String,
    pub hub_url: String,
    pub credential: String,
    pub data_dir: PathBuf,
    pub clock_offset_ms: i64,
    /// TOML appended to the generated config (e.g. a `[footfall]` section).
    pub extra_config: String,
}

/// `aisle-agent run --config FILE` as a process.
#[derive(Debug)]
pub struct AgentProcess {
    child: Option<Reaped>,
    pub setup: AgentSetup,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl AgentProcess {
    pub async fn start(setup: AgentSetup) -> Result<AgentProcess> {
        std::fs::create_dir_all(&setup.data_dir)?;
        let log = setup.data_dir.join("agent.log");
        let mut agent = AgentProcess {
            child: None,
            setup,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        agent.restart().await?;
        Ok(agent)
    }

    fn write_config(&self) -> Result<PathBuf> {
        let s = &self.setup;
        let cfg = format!(
            "store = \"{}\"\nhub_url = \"{}\"\ncredential = \"{}\"\ndata_dir = \"{}\"\nlisten = \"{}\"\n\n[clock]\noffset_ms = {}\n\n{}",
            s.store,
            s.hub_url,
            s.credential,
            s.data_dir.display(),
            self.addr,
            s.clock_offset_ms,
            s.extra_config
        );
        let path = s.data_dir.join("agent.toml");
        std::fs::write(&path, cfg)?;
        Ok(path)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn api(&self) -> StoreApi {
        StoreApi::new(&self.url())
    }

    /// kill -9: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        self.child = None;
    }

    pub async fn restart(&mut self) -> Result<()> {
        self.child = None;
        self.addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        self.spawn().await
    }

    /// Starts (again) on the port it had, as a gateway does: cameras and lanes keep pushing to
    /// the address they were configured with.
    pub async fn restart_same_port(&mut self) -> Result<()> {
        self.child = None;
        self.spawn().await
    }

    async fn spawn(&mut self) -> Result<()> {
        let config = self.write_config()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(binary("aisle-agent")?)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting aisle-agent")?;
        self.child = Some(Reaped(child));
        wait_healthy(&self.url(), "agent", &self.log).await
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.0.id())
    }

    /// Runs `aisle-agent ledger verify --data DIR`; Ok(stdout) only on exit 0.
    pub fn verify_ledger(&self) -> Result<String> {
        let out = Command::new(binary("aisle-agent")?)
            .args(["ledger", "verify", "--data"])
            .arg(&self.setup.data_dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "ledger verify failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }
}

/// HQ's side of the hub API.
#[derive(Clone, Debug)]
pub struct HqApi {
    client: reqwest::Client,
    base: String,
}

impl HqApi {
    pub fn new(base: &str) -> HqApi {
        HqApi {
            client: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_string(),
        }
    }

    pub async fn post_batch(&self, batch: &Value) -> Result<String> {
        let r = self
            .client
            .post(format!("{}/v1/price-batches", self.base))
            .bearer_auth(HQ_TOKEN)
            .json(batch)
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await?;
        if !status.is_success() {
            bail!("price batch refused ({status}): {body}");
        }
        body["batch_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no batch_id in {body}"))
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(HQ_TOKEN)
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await?;
        if !status.is_success() {
            bail!("GET {path} failed ({status}): {body}");
        }
        Ok(body)
    }

    /// Every sale the hub holds for the store, following the `next` cursor page by page.
    pub async fn sales(&self, store: &str) -> Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut since = 0u64;
        loop {
            let body = self
                .get(&format!(
                    "/v1/stores/{store}/sales?since={since}&limit=1000"
                ))
                .await?;
            let page = body["sales"].as_array().cloned().unwrap_or_default();
            let next = body["next"].as_u64().unwrap_or(since);
            if page.is_empty() || next <= since {
                return Ok(all);
            }
            all.extend(page);
            since = next;
        }
    }
}

/// The store's local API on the agent.
#[derive(Clone, Debug)]
pub struct StoreApi {
    client: reqwest::Client,
    base: String,
}

impl StoreApi {
    pub fn new(base: &str) -> StoreApi {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        StoreApi {
            client,
            base: base.trim_end_matches('/').to_string(),
        }
    }

    /// Sells `lines` ([(gtin, qty)]) under `sale_id`; returns the HTTP status and body.
    pub async fn sell(&self, sale_id: &str, lines: &[(&str, u32)]) -> Result<(u16, Value)> {
        let lines: Vec<Value> = lines
            .iter()
            .map(|(g, q)| json!({"gtin": g, "qty": q}))
            .collect();
        let r = self
            .client
            .post(format!("{}/v1/sales", self.base))
            .json(&json!({"sale_id": sale_id, "lines": lines, "payment": {"method": "card"}}))
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    pub async fn price(&self, gtin: &str) -> Result<Option<Value>> {
        let r = self
            .client
            .get(format!("{}/v1/prices/{gtin}", self.base))
            .send()
            .await?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let status = r.status();
        let body: Value = r.json().await?;
        if !status.is_success() {
            bail!("GET price {gtin} failed ({status}): {body}");
        }
        Ok(Some(body))
    }

    pub async fn status(&self) -> Result<Value> {
        Ok(self
            .client
            .get(format!("{}/v1/sync/status", self.base))
            .send()
            .await?
            .json()
            .await?)
    }

    /// Waits until the agent charges `minor` for `gtin`.
    pub async fn wait_price(&self, gtin: &str, minor: i64, timeout: Duration) -> Result<()> {
        wait_for(
            &format!("price {minor} for {gtin} at the store"),
            timeout,
            || async {
                let p = self.price(gtin).await.ok().flatten()?;
                (p["price"]["minor"].as_i64() == Some(minor)).then_some(())
            },
        )
        .await
    }

    /// Waits until the outbox is empty (everything acknowledged by the hub).
    pub async fn wait_drained(&self, timeout: Duration) -> Result<Value> {
        wait_for("the outbox to drain", timeout, || async {
            let s = self.status().await.ok()?;
            (s["outbox_depth"].as_u64() == Some(0) && s["acked_through"].as_u64() > Some(0))
                .then_some(s)
        })
        .await
    }
}

/// One store with its hub, gateway credential, a fault proxy between them and an agent.
#[derive(Debug)]
pub struct VirtualStore {
    pub dir: tempfile::TempDir,
    pub db: Option<HubDb>,
    pub hub: HubProcess,
    pub proxy: FaultProxy,
    pub agent: AgentProcess,
    pub hq: HqApi,
    pub store: String,
}

impl VirtualStore {
    /// Hub on `backend`, store `S001`, one gateway enrolled, the agent running through the proxy.
    pub async fn start(backend: Backend) -> Result<VirtualStore> {
        Self::start_with(backend, 0).await
    }

    pub async fn start_with(backend: Backend, clock_offset_ms: i64) -> Result<VirtualStore> {
        Self::start_configured(backend, clock_offset_ms, String::new()).await
    }

    /// Like [`VirtualStore::start_with`], with `extra_config` appended to the agent's config
    /// (e.g. a `[footfall]` section).
    pub async fn start_configured(
        backend: Backend,
        clock_offset_ms: i64,
        extra_config: String,
    ) -> Result<VirtualStore> {
        let mut dir = tempfile::tempdir()?;
        if std::env::var_os("AISLE_KEEP_TEST_DIRS").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping test dir {}", dir.path().display());
        }
        let db = HubDb::create(backend, dir.path()).await?;
        let hub = HubProcess::start(&db.url, dir.path()).await?;
        let store = "S001".to_string();
        hub.cli(&["store", "add", &store, "--name", "Harbour Road"])?;
        let credential = hub.cli(&["gateway", "add", "--store", &store])?;
        let proxy = FaultProxy::start(hub.addr).await?;
        let agent = AgentProcess::start(AgentSetup {
            store: store.clone(),
            hub_url: proxy.url(),
            credential,
            data_dir: dir.path().join("gateway"),
            clock_offset_ms,
            extra_config,
        })
        .await?;
        let hq = HqApi::new(&hub.url());
        Ok(VirtualStore {
            dir,
            db: Some(db),
            hub,
            proxy,
            agent,
            hq,
            store,
        })
    }

    pub async fn restart_hub(&mut self) -> Result<()> {
        self.hub.restart().await?;
        self.proxy.set_upstream(self.hub.addr);
        self.hq = HqApi::new(&self.hub.url());
        Ok(())
    }

    /// Pushes one price per GTIN (minor units, CNY) to this store and returns the batch id.
    pub async fn push_prices(
        &self,
        prices: &[(&str, i64)],
        effective_at: Option<&str>,
    ) -> Result<String> {
        let items: Vec<Value> = prices
            .iter()
            .map(|(g, minor)| {
                json!({"gtin": g, "price": format!("{}.{:02}", minor / 100, minor % 100), "currency": "CNY", "name": format!("Item {g}")})
            })
            .collect();
        let mut batch = json!({"stores": [self.store], "prices": items});
        if let Some(at) = effective_at {
            batch["effective_at"] = json!(at);
        }
        self.hq.post_batch(&batch).await
    }

    pub async fn finish(mut self) -> Result<()> {
        self.agent.kill9();
        self.hub.kill();
        if let Some(db) = self.db.take() {
            db.cleanup().await?;
        }
        Ok(())
    }
}

/// A valid GTIN-14 for test item `n`.
pub fn gtin(n: u64) -> String {
    aisle_protocol::Gtin::from_index(n)
        .map(|g| g.to_string())
        .unwrap_or_default()
}
