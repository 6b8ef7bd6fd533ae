//! Click-and-collect scenarios' building blocks: a virtual store whose hub runs with pickup
//! settings, HQ's order calls, the store's pickup counter (staff sign-in, pick, ready, redeem),
//! and a webhook receiver standing in for HQ's order system.
//!
//! Everything goes through the public interfaces: the hub's and the agent's HTTP APIs and the
//! agent's TOML config.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::harness::{
    AgentProcess, AgentSetup, Backend, HQ_TOKEN, HqApi, HubDb, HubProcess, VirtualStore, wait_for,
};
use crate::proxy::FaultProxy;

/// The webhook secret every pickup hub is started with (`AISLE_WEBHOOK_SECRET`).
pub const WEBHOOK_SECRET: &str = "pickup-webhook-secret-0123456789";
/// The staff member every pickup store has, and her PIN.
pub const STAFF: &str = "Ana";
pub const STAFF_PIN: &str = "4711";

/// Milliseconds since the Unix epoch on this machine's clock.
pub fn now_ms() -> i64 {
    aisle_protocol::UtcMillis::now().0
}

/// An argon2id PHC string for `pin`, as `[[pickup.staff]] pin_hash` wants it.
pub fn pin_hash(pin: &str) -> Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| anyhow!("argon2 salt: {e}"))?;
    let hash = argon2::Argon2::default()
        .hash_password(pin.as_bytes(), &salt)
        .map_err(|e| anyhow!("argon2: {e}"))?;
    Ok(hash.to_string())
}

/// The agent's `[pickup]` section with one `[[pickup.staff]]` entry per (name, PIN).
pub fn pickup_section(staff: &[(&str, &str)]) -> Result<String> {
    let mut toml = String::from("[pickup]\n");
    for (name, pin) in staff {
        toml.push_str(&format!(
            "\n[[pickup.staff]]\nname = \"{name}\"\npin_hash = \"{}\"\n",
            pin_hash(pin)?
        ));
    }
    Ok(toml)
}

/// How the hub of a pickup store runs.
#[derive(Clone, Debug)]
pub struct HubSettings {
    /// Added to `aisle-hub serve`.
    pub args: Vec<String>,
}

impl Default for HubSettings {
    /// Webhook retries after 100 ms (a scenario waits for redeliveries), the rest as shipped.
    fn default() -> Self {
        HubSettings {
            args: vec!["--webhook-retry-ms".into(), "100".into()],
        }
    }
}

impl HubSettings {
    /// The hub expires an order `grace_s` after its expiry when the store said nothing, sweeping
    /// every second.
    pub fn expiring(grace_s: u64) -> HubSettings {
        let mut s = HubSettings::default();
        s.args.extend([
            "--expiry-grace-s".to_string(),
            grace_s.to_string(),
            "--expiry-sweep-s".to_string(),
            "1".to_string(),
        ]);
        s
    }
}

/// A virtual store for click-and-collect: hub on `backend` with `hub` settings and
/// [`WEBHOOK_SECRET`], store S001 with one gateway behind the fault proxy, the agent configured
/// with staff member [`STAFF`] (PIN [`STAFF_PIN`]) plus `extra_config`.
pub async fn start_store(
    backend: Backend,
    hub: HubSettings,
    extra_config: &str,
) -> Result<VirtualStore> {
    let mut dir = tempfile::tempdir()?;
    if std::env::var_os("AISLE_KEEP_TEST_DIRS").is_some() {
        dir.disable_cleanup(true);
        eprintln!("keeping test dir {}", dir.path().display());
    }
    let db = HubDb::create(backend, dir.path()).await?;
    let hub = HubProcess::start_with(
        &db.url,
        dir.path(),
        hub.args,
        vec![("AISLE_WEBHOOK_SECRET".into(), WEBHOOK_SECRET.into())],
    )
    .await?;
    let store = "S001".to_string();
    hub.cli(&["store", "add", &store, "--name", "Harbour Road"])?;
    let credential = hub.cli(&["gateway", "add", "--store", &store])?;
    let proxy = FaultProxy::start(hub.addr).await?;
    let agent = AgentProcess::start(AgentSetup {
        store: store.clone(),
        hub_url: proxy.url(),
        credential,
        data_dir: dir.path().join("gateway"),
        clock_offset_ms: 0,
        extra_config: format!("{}\n{extra_config}", pickup_section(&[(STAFF, STAFF_PIN)])?),
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

/// A request and its answer: HTTP status and JSON body (`Null` when the body was not JSON).
pub type Answer = (u16, Value);

async fn answer(r: reqwest::Response) -> Result<Answer> {
    let status = r.status().as_u16();
    let text = r.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default()
}

/// HQ's order system talking to the hub: catalogue, stock, orders.
#[derive(Clone, Debug)]
pub struct HqOrders {
    client: reqwest::Client,
    base: String,
}

impl HqOrders {
    pub fn new(hub_url: &str) -> HqOrders {
        HqOrders {
            client: client(),
            base: hub_url.trim_end_matches('/').to_string(),
        }
    }

    pub fn of(vs: &VirtualStore) -> HqOrders {
        HqOrders::new(&vs.hub.url())
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Answer> {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(HQ_TOKEN)
            .json(body)
            .send()
            .await?;
        answer(r).await
    }

    async fn get(&self, path: &str) -> Result<Answer> {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(HQ_TOKEN)
            .send()
            .await?;
        answer(r).await
    }

    /// Prices `gtins` at `stores` (3.50 CNY each, named "Item <gtin>") and puts `on_hand` of
    /// each on the stores' shelves, so orders for them can be reserved.
    pub async fn stock_catalogue(
        &self,
        stores: &[&str],
        gtins: &[String],
        on_hand: i64,
    ) -> Result<()> {
        let prices: Vec<Value> = gtins
            .iter()
            .map(|g| json!({"gtin": g, "price": "3.50", "currency": "CNY", "name": format!("Item {g}")}))
            .collect();
        let (status, body) = self
            .post(
                "/v1/price-batches",
                &json!({"stores": stores, "prices": prices}),
            )
            .await?;
        if status != 201 && status != 200 {
            bail!("price batch refused ({status}): {body}");
        }
        for store in stores {
            for g in gtins {
                let (status, body) = self
                    .post(
                        &format!("/v1/stores/{store}/stock-adjustments"),
                        &json!({"gtin": g, "delta": on_hand, "reason": "goods received"}),
                    )
                    .await?;
                if status != 201 {
                    bail!("stock adjustment refused ({status}): {body}");
                }
            }
        }
        Ok(())
    }

    /// `POST /v1/orders`; the raw answer.
    pub async fn place_raw(&self, order: &Value) -> Result<Answer> {
        self.post("/v1/orders", order).await
    }

    /// Places `order` (see [`order`]) and returns the hub's answer (`order_id`, `token.qr`,
    /// `token.code`, ...).
    pub async fn place(&self, order: &Value) -> Result<Value> {
        let (status, body) = self.place_raw(order).await?;
        if status != 201 {
            bail!("order refused ({status}): {body}");
        }
        Ok(body)
    }

    /// `GET /v1/orders/{id}`.
    pub async fn order(&self, id: &str) -> Result<Value> {
        let (status, body) = self.get(&format!("/v1/orders/{id}")).await?;
        if status != 200 {
            bail!("GET order {id} failed ({status}): {body}");
        }
        Ok(body)
    }

    /// `POST /v1/orders/{id}/cancel` with a reason; the raw answer.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<Answer> {
        self.post(
            &format!("/v1/orders/{id}/cancel"),
            &json!({"reason": reason}),
        )
        .await
    }

    /// `GET /v1/stores/{store}/stock?gtin=`: `on_hand`, `reserved`, `available`.
    pub async fn stock(&self, store: &str, gtin: &str) -> Result<Value> {
        let (status, body) = self
            .get(&format!("/v1/stores/{store}/stock?gtin={gtin}"))
            .await?;
        if status != 200 {
            bail!("GET stock {gtin} failed ({status}): {body}");
        }
        Ok(body)
    }

    /// Waits until HQ shows the order in `status`.
    pub async fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> Result<Value> {
        self.wait_until(
            id,
            &format!("HQ to show order {id} {status}"),
            timeout,
            |o| o["status"] == status,
        )
        .await
    }

    /// Waits until `check` holds for HQ's view of the order; on time-out the error shows the
    /// last view.
    pub async fn wait_until(
        &self,
        id: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let start = Instant::now();
        loop {
            let last = self.order(id).await;
            if let Ok(o) = &last
                && check(o)
            {
                return last;
            }
            if start.elapsed() > timeout {
                bail!("timed out after {timeout:?} waiting for {what}; HQ shows {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A `POST /v1/orders` body: `lines` as (gtin, qty), `pickup_by` in UTC milliseconds.
pub fn order(
    id: &str,
    store: &str,
    lines: &[(&str, u32)],
    pickup_by_ms: i64,
    webhook: Option<&str>,
) -> Value {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(g, q)| json!({"gtin": g, "qty": q}))
        .collect();
    let mut o = json!({"order_id": id, "store": store, "lines": lines, "pickup_by": pickup_by_ms});
    if let Some(url) = webhook {
        o["notify"] = json!({"webhook": url});
    }
    o
}

/// Statuses in HQ's history of an order, oldest first, as `status/source`.
pub fn hq_history(order: &Value) -> Vec<String> {
    order["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|e| {
                    format!(
                        "{}/{}",
                        e["status"].as_str().unwrap_or("?"),
                        e["source"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How many history entries of HQ's order have `status`.
pub fn hq_history_count(order: &Value, status: &str) -> usize {
    order["history"]
        .as_array()
        .map_or(0, |h| h.iter().filter(|e| e["status"] == status).count())
}

/// The store's pickup counter: the agent's pickup API with a signed-in staff session.
#[derive(Clone, Debug)]
pub struct PickupCounter {
    client: reqwest::Client,
    base: String,
    token: String,
    pub staff: String,
}

/// `POST /v1/staff/sign-in` at the agent at `agent_url`; the raw answer.
pub async fn sign_in_raw(agent_url: &str, pin: &str) -> Result<Answer> {
    let r = client()
        .post(format!(
            "{}/v1/staff/sign-in",
            agent_url.trim_end_matches('/')
        ))
        .json(&json!({"pin": pin}))
        .send()
        .await?;
    answer(r).await
}

impl PickupCounter {
    /// Signs in with `pin` at the agent at `agent_url`.
    pub async fn sign_in(agent_url: &str, pin: &str) -> Result<PickupCounter> {
        let (status, body) = sign_in_raw(agent_url, pin).await?;
        if status != 200 {
            bail!("staff sign-in refused ({status}): {body}");
        }
        let token = body["token"]
            .as_str()
            .ok_or_else(|| anyhow!("no token in {body}"))?
            .to_string();
        Ok(PickupCounter {
            client: client(),
            base: agent_url.trim_end_matches('/').to_string(),
            token,
            staff: body["staff"].as_str().unwrap_or_default().to_string(),
        })
    }

    /// Signs in as [`STAFF`] at the store's agent.
    pub async fn open(vs: &VirtualStore) -> Result<PickupCounter> {
        PickupCounter::sign_in(&vs.agent.url(), STAFF_PIN).await
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Answer> {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        answer(r).await
    }

    /// `GET /v1/pickups/{id}`; the raw answer.
    pub async fn order(&self, id: &str) -> Result<Answer> {
        let r = self
            .client
            .get(format!("{}/v1/pickups/{id}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        answer(r).await
    }

    /// `GET /v1/pickups?status=&limit=`: the orders.
    pub async fn list(&self, status: &str, limit: u32) -> Result<Vec<Value>> {
        let r = self
            .client
            .get(format!(
                "{}/v1/pickups?status={status}&limit={limit}",
                self.base
            ))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let (status, body) = answer(r).await?;
        if status != 200 {
            bail!("GET /v1/pickups failed ({status}): {body}");
        }
        Ok(body["orders"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until the store holds the order in `status`; on time-out the error shows the
    /// store's last answer.
    pub async fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> Result<Value> {
        let start = Instant::now();
        loop {
            let last = self.order(id).await;
            if let Ok((200, o)) = &last
                && o["status"] == status
            {
                return Ok(o.clone());
            }
            if start.elapsed() > timeout {
                bail!(
                    "timed out after {timeout:?} waiting for the store to hold order {id} {status}; it answers {last:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `POST /v1/pickups/{id}/pick`; the raw answer.
    pub async fn pick(&self, id: &str) -> Result<Answer> {
        self.post(&format!("/v1/pickups/{id}/pick"), &json!({}))
            .await
    }

    /// `POST /v1/pickups/{id}/ready` at `location` with `missing` GTINs; the raw answer.
    pub async fn ready(&self, id: &str, location: &str, missing: &[&str]) -> Result<Answer> {
        self.post(
            &format!("/v1/pickups/{id}/ready"),
            &json!({"location": location, "missing": missing}),
        )
        .await
    }

    /// Picks the order and puts it ready at `location`, failing unless both are answered 200.
    pub async fn pick_and_ready(&self, id: &str, location: &str) -> Result<Value> {
        let (status, body) = self.pick(id).await?;
        if status != 200 {
            bail!("pick {id} refused ({status}): {body}");
        }
        let (status, body) = self.ready(id, location, &[]).await?;
        if status != 200 || body["status"] != "ready" {
            bail!("ready {id} refused ({status}): {body}");
        }
        Ok(body)
    }

    /// `POST /v1/pickups/redeem` with the QR text, from `device`; the raw answer.
    pub async fn redeem_qr(&self, qr: &str, device: &str) -> Result<Answer> {
        self.post("/v1/pickups/redeem", &json!({"qr": qr, "device": device}))
            .await
    }

    /// `POST /v1/pickups/redeem` with a typed fallback code, from `device`; the raw answer.
    pub async fn redeem_code(&self, code: &str, device: &str) -> Result<Answer> {
        self.post(
            "/v1/pickups/redeem",
            &json!({"code": code, "device": device}),
        )
        .await
    }
}

/// One webhook delivery as HQ's order system received it.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub received: Instant,
}

impl Delivery {
    /// Whether `x-aisle-signature` is the HMAC-SHA256 of the exact body with `secret`.
    pub fn signed_with(&self, secret: &str) -> bool {
        self.headers
            .get("x-aisle-signature")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|sig| {
                aisle_hub::pickup::webhook::verify(secret.as_bytes(), &self.body, sig)
            })
    }

    pub fn event_id(&self) -> Option<&str> {
        self.headers
            .get("x-aisle-event-id")
            .and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Debug, Default)]
struct ReceiverState {
    got: Mutex<Vec<Delivery>>,
    /// Answer 500 to this many deliveries first (the hub must retry them).
    fail: AtomicUsize,
}

/// HQ's order system: an HTTP server on loopback recording every webhook delivery. It answers
/// 204, or 500 to the first few if told to (`fail_next`).
#[derive(Debug)]
pub struct WebhookReceiver {
    state: Arc<ReceiverState>,
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    pub async fn start() -> Result<WebhookReceiver> {
        let state = Arc::new(ReceiverState::default());
        let me = state.clone();
        let app = axum::Router::new().route(
            "/hooks",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let me = me.clone();
                async move {
                    if let Ok(mut got) = me.got.lock() {
                        got.push(Delivery {
                            headers,
                            body,
                            received: Instant::now(),
                        });
                    }
                    let failing = me
                        .fail
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if failing {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::NO_CONTENT
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(WebhookReceiver { state, addr, task })
    }

    /// The URL to give HQ's orders as `notify.webhook`.
    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    /// Answers 500 to the next `n` deliveries.
    pub fn fail_next(&self, n: usize) {
        self.state.fail.store(n, Ordering::SeqCst);
    }

    /// Every delivery so far, in arrival order (redeliveries included).
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.got.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// Deliveries of `kind` for `order`, redeliveries included.
    pub fn of(&self, order: &str, kind: &str) -> Vec<Delivery> {
        self.deliveries()
            .into_iter()
            .filter(|d| {
                let v = d.json();
                v["order_id"] == order && v["type"] == kind
            })
            .collect()
    }

    /// Waits for the first delivery of `kind` for `order`.
    pub async fn wait(&self, order: &str, kind: &str, timeout: Duration) -> Result<Delivery> {
        wait_for(
            &format!("a {kind} webhook for {order}"),
            timeout,
            || async { self.of(order, kind).into_iter().next() },
        )
        .await
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
