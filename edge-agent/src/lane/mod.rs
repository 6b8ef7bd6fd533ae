//! Self-checkout lanes: one task per lane owns its [`session::LaneSession`] and its devices
//! (serial scanner, bagging scale, receipt printer, card terminal) and tells every screen what
//! changed.
//!
//! ```text
//! scanner thread ─┐                          ┌─> WebSocket screens (/lane/{id}, /v1/lanes/{id}/ws)
//! screen (WS) ────┼─> LaneCommand ─> runner ─┤   (each update: event + whole view, JSON)
//! MQTT .../cmd ───┘     (one task per lane)  └─> MQTT aisle/v1/<store>/lane/<lane>/{state,event}
//!                         │   ▲
//!   ledger.charge_price ──┘   └── bagging scale weighs after each change (spawn_blocking)
//!   card terminal thread (spawn_blocking) ──> ledger.record_priced_sale ──> receipt (ESC/POS + link)
//! ```
//!
//! Configured under `[checkout]` (see [`CheckoutSettings`]). Store-local item rules (age limits,
//! unit weights for the bagging area) live there until HQ's price data carries them.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use aisle_drivers::payment::OfflineSettings;
use aisle_drivers::printer::PrinterSettings;
use aisle_drivers::upos::{ScaleSettings, ScannerSettings};
use aisle_protocol::{Currency, Gtin};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, watch};

pub mod mqtt;
pub mod pending;
pub mod receipt;
pub mod runner;
pub mod session;

pub use runner::{AttendantAction, LaneCommand, LaneContext, LaneMetrics, ScanSource};
pub use session::{BaggingRules, ItemRules, LaneSession};

/// Longest lane id.
pub const MAX_LANE_ID_CHARS: usize = 16;
/// Most lanes one gateway runs.
pub const MAX_LANES: usize = 32;

/// `[checkout]` in the agent's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutSettings {
    /// The store's currency (ISO 4217), e.g. "CNY".
    pub currency: String,
    /// Receipt header lines: the store's name first (printed large), then its address.
    #[serde(default)]
    pub header: Vec<String>,
    /// Where shoppers open their digital receipt: this base plus `/receipts/<sale>?k=<key>`
    /// (default: the agent's own address).
    #[serde(default)]
    pub receipt_base_url: Option<String>,
    /// Restricted-circulation (variable-measure) barcode layouts, TOML (default: the built-in
    /// example layouts).
    #[serde(default)]
    pub layouts: Option<PathBuf>,
    /// How long the card terminal may take for one payment, in ms (default 60 s).
    #[serde(default = "default_payment_timeout_ms")]
    pub payment_timeout_ms: u64,
    #[serde(default)]
    pub bagging: BaggingSettings,
    /// Card payments the terminals may take offline (store-and-forward), per currency.
    #[serde(default)]
    pub offline: Vec<OfflineSettings>,
    /// Store-local rules per product.
    #[serde(default)]
    pub items: Vec<ItemSettings>,
    /// MQTT broker for the lane interface (`host:port`); none: no MQTT lane interface.
    #[serde(default)]
    pub mqtt: Option<String>,
    /// Topic prefix of the lane interface (default `aisle/v1`).
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    pub lanes: Vec<LaneSettings>,
}

fn default_payment_timeout_ms() -> u64 {
    60_000
}

fn default_topic_prefix() -> String {
    "aisle/v1".into()
}

/// `[checkout.bagging]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaggingSettings {
    #[serde(default = "default_tolerance_g")]
    pub tolerance_g: u32,
    #[serde(default = "default_tolerance_permille")]
    pub tolerance_permille: u32,
}

impl Default for BaggingSettings {
    fn default() -> Self {
        let d = BaggingRules::default();
        BaggingSettings {
            tolerance_g: d.tolerance_g,
            tolerance_permille: d.tolerance_permille,
        }
    }
}

fn default_tolerance_g() -> u32 {
    BaggingRules::default().tolerance_g
}

fn default_tolerance_permille() -> u32 {
    BaggingRules::default().tolerance_permille
}

/// `[[checkout.items]]`: `gtin = "...", age_min = 18, weight_g = 750`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemSettings {
    pub gtin: String,
    #[serde(default)]
    pub age_min: Option<u8>,
    #[serde(default)]
    pub weight_g: Option<u32>,
}

/// How a lane's card terminal is reached.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TerminalSettings {
    /// The built-in simulated terminal (demo, tests): approves unless scripted
    /// (`POST /v1/lanes/{lane}/terminal`).
    Simulated,
}

/// `[[checkout.lanes]]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneSettings {
    /// 1 to 16 of a-z 0-9 `-`, e.g. "1" or "express-2".
    pub id: String,
    #[serde(default)]
    pub scanner: Option<ScannerSettings>,
    /// The bagging-area scale.
    #[serde(default)]
    pub scale: Option<ScaleSettings>,
    #[serde(default)]
    pub printer: Option<PrinterSettings>,
    #[serde(default = "default_terminal")]
    pub terminal: TerminalSettings,
}

fn default_terminal() -> TerminalSettings {
    TerminalSettings::Simulated
}

/// Whether `id` is a valid lane id.
pub fn valid_lane_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LANE_ID_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `[checkout]` checked: what the lanes run with.
#[derive(Clone, Debug)]
pub struct Checkout {
    pub currency: Currency,
    pub header: Vec<String>,
    pub receipt_base_url: Option<String>,
    pub layouts: aisle_drivers::scanner::Layouts,
    pub payment_timeout: std::time::Duration,
    pub bagging: BaggingRules,
    pub offline: aisle_drivers::payment::OfflinePolicy,
    pub items: BTreeMap<Gtin, ItemRules>,
    pub lanes: Vec<LaneSettings>,
    pub mqtt: Option<(String, u16)>,
    pub topic_prefix: String,
}

impl CheckoutSettings {
    /// Checks everything a lane will use, naming what is wrong.
    pub fn check(&self) -> Result<Checkout, String> {
        let currency =
            Currency::parse(&self.currency).map_err(|e| format!("checkout.currency: {e}"))?;
        let layouts = match &self.layouts {
            Some(path) => {
                let meta = std::fs::metadata(path)
                    .map_err(|e| format!("checkout.layouts {}: {e}", path.display()))?;
                if meta.len() > aisle_drivers::scanner::MAX_LAYOUTS_TOML as u64 {
                    return Err(format!(
                        "checkout.layouts {}: larger than {} bytes",
                        path.display(),
                        aisle_drivers::scanner::MAX_LAYOUTS_TOML
                    ));
                }
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("checkout.layouts {}: {e}", path.display()))?;
                aisle_drivers::scanner::Layouts::from_toml(&text)
                    .map_err(|e| format!("checkout.layouts {}: {e}", path.display()))?
            }
            None => aisle_drivers::scanner::Layouts::default_layouts()
                .map_err(|e| format!("built-in layouts: {e}"))?,
        };
        if !(1_000..=600_000).contains(&self.payment_timeout_ms) {
            return Err(format!(
                "checkout.payment_timeout_ms {}: 1000 to 600000",
                self.payment_timeout_ms
            ));
        }
        if self.bagging.tolerance_g > 5_000 || self.bagging.tolerance_permille > 500 {
            return Err(
                "checkout.bagging: tolerance_g at most 5000, tolerance_permille at most 500".into(),
            );
        }
        let offline =
            OfflineSettings::policy(&self.offline).map_err(|e| format!("checkout: {e}"))?;
        let mut items = BTreeMap::new();
        for (i, it) in self.items.iter().enumerate() {
            let n = i + 1;
            let gtin = Gtin::parse(&it.gtin)
                .map_err(|e| format!("checkout.items[{n}] gtin {:?}: {e}", it.gtin))?;
            if it.weight_g.is_some_and(|w| w == 0 || w > 100_000) {
                return Err(format!("checkout.items[{n}] weight_g: 1 to 100000"));
            }
            if it.age_min.is_some_and(|a| a == 0 || a > 99) {
                return Err(format!("checkout.items[{n}] age_min: 1 to 99"));
            }
            let rules = ItemRules {
                age_min: it.age_min,
                unit_weight_g: it.weight_g,
            };
            if items.insert(gtin, rules).is_some() {
                return Err(format!("checkout.items[{n}]: GTIN {gtin} is named twice"));
            }
        }
        if self.lanes.is_empty() || self.lanes.len() > MAX_LANES {
            return Err(format!("checkout.lanes: 1 to {MAX_LANES} lanes"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for l in &self.lanes {
            if !valid_lane_id(&l.id) {
                return Err(format!(
                    "checkout.lanes id {:?}: 1 to {MAX_LANE_ID_CHARS} of a-z 0-9 -",
                    l.id
                ));
            }
            if !seen.insert(l.id.clone()) {
                return Err(format!("checkout.lanes: lane {} is named twice", l.id));
            }
            if let Some(s) = &l.scanner {
                s.config(layouts.clone())
                    .map_err(|e| format!("lane {} scanner: {e}", l.id))?;
            }
            if let Some(s) = &l.scale {
                s.config()
                    .map_err(|e| format!("lane {} scale: {e}", l.id))?;
            }
            if let Some(p) = &l.printer {
                p.config()
                    .map_err(|e| format!("lane {} printer: {e}", l.id))?;
            }
        }
        if self.header.len() > 8 || self.header.iter().any(|h| h.chars().count() > 64) {
            return Err("checkout.header: at most 8 lines of 64 characters".into());
        }
        let mqtt = match &self.mqtt {
            None => None,
            Some(hp) => {
                let (h, p) = hp
                    .rsplit_once(':')
                    .ok_or_else(|| format!("checkout.mqtt {hp:?}: host:port"))?;
                let p: u16 = p
                    .parse()
                    .map_err(|_| format!("checkout.mqtt {hp:?}: bad port"))?;
                Some((h.to_string(), p))
            }
        };
        Ok(Checkout {
            currency,
            header: self.header.clone(),
            receipt_base_url: self.receipt_base_url.clone(),
            layouts,
            payment_timeout: std::time::Duration::from_millis(self.payment_timeout_ms),
            bagging: BaggingRules {
                tolerance_g: self.bagging.tolerance_g,
                tolerance_permille: self.bagging.tolerance_permille,
            },
            offline,
            items,
            lanes: self.lanes.clone(),
            mqtt,
            topic_prefix: self.topic_prefix.clone(),
        })
    }
}

/// What a screen (WebSocket) or lane software (MQTT `cmd`) asks of a lane, as JSON:
/// `{"type":"scan","code":"..."}`, `{"type":"qty","line_no":2,"qty":3}`,
/// `{"type":"void","line_no":2,"pin":"..."}`, `{"type":"member","qr":"AISLEM1..."}`,
/// `{"type":"pay"}`, `{"type":"attendant","pin":"...","action":"approve|recover|cancel"}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LaneRequest {
    Scan {
        code: String,
    },
    Qty {
        line_no: u32,
        qty: u32,
    },
    Void {
        line_no: u32,
        pin: String,
    },
    Member {
        qr: String,
    },
    Pay,
    Attendant {
        pin: String,
        action: runner::AttendantAction,
    },
}

/// Largest request text: a scan or a member card is far below.
pub const MAX_REQUEST_BYTES: usize = 4096;

impl LaneRequest {
    /// Parses one request (bounded; the reason names what is wrong).
    pub fn parse(bytes: &[u8]) -> Result<LaneRequest, String> {
        if bytes.len() > MAX_REQUEST_BYTES {
            return Err(format!(
                "a lane request may be at most {MAX_REQUEST_BYTES} bytes, got {}",
                bytes.len()
            ));
        }
        let req: LaneRequest =
            serde_json::from_slice(bytes).map_err(|e| format!("not a lane request: {e}"))?;
        match &req {
            LaneRequest::Scan { code } if code.trim().is_empty() || code.len() > 512 => {
                Err("a scan code is 1 to 512 characters".into())
            }
            LaneRequest::Member { qr } if qr.len() > 512 => {
                Err("a member card is at most 512 characters".into())
            }
            _ => Ok(req),
        }
    }

    pub fn into_command(self, source: ScanSource) -> LaneCommand {
        match self {
            LaneRequest::Scan { code } => LaneCommand::ScanText { text: code, source },
            LaneRequest::Qty { line_no, qty } => LaneCommand::Qty { line_no, qty },
            LaneRequest::Void { line_no, pin } => LaneCommand::Void { line_no, pin },
            LaneRequest::Member { qr } => LaneCommand::Member { qr },
            LaneRequest::Pay => LaneCommand::Pay,
            LaneRequest::Attendant { pin, action } => LaneCommand::Attendant { pin, action },
        }
    }
}

/// One running lane, as the API and MQTT see it.
#[derive(Clone, Debug)]
pub struct LaneHandle {
    pub id: String,
    pub commands: mpsc::Sender<LaneCommand>,
    /// Every update (event and view), as JSON text.
    pub updates: broadcast::Sender<Arc<str>>,
    /// The latest update, for a screen that just connected.
    pub latest: watch::Receiver<Arc<str>>,
}

/// The lanes of this gateway (empty without `[checkout]`).
#[derive(Debug, Default)]
pub struct LanesShared {
    pub lanes: BTreeMap<String, LaneHandle>,
    pub metrics: Arc<LaneMetrics>,
    /// Signs receipt links (None without lanes).
    pub receipt_key: Option<Arc<[u8; 32]>>,
    /// The receipt header (store name, address).
    pub header: Vec<String>,
}

impl LanesShared {
    pub fn lane(&self, id: &str) -> Option<&LaneHandle> {
        self.lanes.get(id)
    }
}

/// Starts every configured lane (and the MQTT lane interface when a broker is set).
pub fn start(
    checkout: Checkout,
    ctx: StartContext,
    shutdown: &watch::Receiver<bool>,
) -> Result<(Arc<LanesShared>, Vec<tokio::task::JoinHandle<()>>), String> {
    let receipt_key = Arc::new(
        receipt::receipt_key(&ctx.data_dir)
            .map_err(|e| format!("receipt key in {}: {e}", ctx.data_dir.display()))?,
    );
    let checkout = Arc::new(checkout);
    let metrics = Arc::new(LaneMetrics::default());
    let lane_ctx = LaneContext {
        store: ctx.store.clone(),
        ledger: ctx.ledger,
        checkout: checkout.clone(),
        staff: ctx.staff,
        audit: ctx.audit,
        hub_time: ctx.hub_time,
        receipt_key: receipt_key.clone(),
        receipt_base: checkout
            .receipt_base_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", ctx.listen)),
        metrics: metrics.clone(),
        data_dir: ctx.data_dir.clone(),
    };
    let mut lanes = BTreeMap::new();
    let mut tasks = Vec::new();
    for settings in &checkout.lanes {
        let (handle, task) = runner::spawn(lane_ctx.clone(), settings, shutdown.clone())?;
        lanes.insert(settings.id.clone(), handle);
        tasks.push(task);
    }
    let shared = Arc::new(LanesShared {
        lanes,
        metrics,
        receipt_key: Some(receipt_key),
        header: checkout.header.clone(),
    });
    if let Some((host, port)) = &checkout.mqtt {
        tasks.push(mqtt::spawn(
            host.clone(),
            *port,
            format!("aisle-lanes-{}-{}", ctx.store, std::process::id()),
            format!("{}/{}", checkout.topic_prefix, ctx.store),
            shared.clone(),
            shutdown.clone(),
        ));
    }
    Ok((shared, tasks))
}

/// What [`start`] needs from the agent.
#[derive(Debug)]
pub struct StartContext {
    pub store: aisle_protocol::StoreId,
    pub ledger: crate::ledger::Ledger,
    pub staff: Arc<Vec<crate::config::StaffConfig>>,
    pub audit: Arc<crate::audit::AuditLog>,
    pub hub_time: Arc<crate::clock::HubTime>,
    pub data_dir: PathBuf,
    pub listen: std::net::SocketAddr,
}
