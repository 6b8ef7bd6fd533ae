//! The task that runs one lane: it takes [`LaneCommand`]s one at a time (so the session never
//! sees two changes at once), prices scans from the ledger, weighs the bagging area, pays
//! through the card terminal thread, commits the sale, prints the receipt, and publishes every
//! change as one JSON update (an event and the whole view).
//!
//! Nothing is charged twice or lost:
//! * each payment attempt has its own terminal `sale_ref` (`<sale id>:<attempt>`); a retry of
//!   the same attempt is answered from the terminal's memory;
//! * an approval is followed by the ledger commit; if the commit fails, the approval is reversed
//!   (and if the reversal fails, the attendant is told and the lane stays frozen);
//! * a terminal that does not answer freezes the lane until the attendant recovers it, which
//!   cancels that `sale_ref` at the terminal first;
//! * the receipt is printed only after the commit; a printer that fails does not undo the sale
//!   (the digital receipt link is on the screen).
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aisle_drivers::payment::{
    Behaviour, OfflineDecision, Outcome, Reversal, SaleRef, SimulatedTerminal, TerminalThread,
    TerminalThreadConfig,
};
use aisle_drivers::printer::{ReceiptLayout, ReceiptPrinter, encode_receipt};
use aisle_drivers::scanner::{Scan, ScanConfig, parse_scan};
use aisle_drivers::upos::{DeviceEvent, DeviceStatus, Scale, Scanner, WeighRequest};
use aisle_protocol::member::MemberClaims;
use aisle_protocol::sync::{Payment, PaymentMethod};
use aisle_protocol::{SaleId, StoreId};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::session::{LaneSession, Phase, PricedItem};
use super::{Checkout, LaneHandle, LaneSettings, receipt};
use crate::audit::{AuditLog, action};
use crate::clock::HubTime;
use crate::config::{StaffConfig, StaffRole};
use crate::ledger::{Ledger, SaleRejection};

/// Commands a lane task takes (queued; the lane handles them in order).
#[derive(Debug)]
pub enum LaneCommand {
    /// Text to read as a scan (typed on the screen, or sent by lane software over MQTT).
    ScanText {
        text: String,
        source: ScanSource,
    },
    /// A scan from the lane's serial scanner, parsed by its driver.
    Scanned(Box<Scan>),
    /// The scanner's driver dropped a frame (noise, bad check digit, lost suffix).
    ScannerTrouble(String),
    ScannerStatus(DeviceStatus),
    Qty {
        line_no: u32,
        qty: u32,
    },
    /// Voiding is the attendant's: checked with their PIN.
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
        action: AttendantAction,
    },
    /// Scripts the simulated terminal (demo and tests): `approve`, `decline REASON`, `hang MS`…
    /// The reply is every charge the terminal has made so far.
    TerminalScript {
        lines: Vec<String>,
        reply: oneshot::Sender<Result<Vec<aisle_drivers::payment::Charge>, String>>,
    },
    Weighed(Result<i64, String>),
    PaymentDone {
        attempt: u32,
        outcome: Outcome,
    },
    PaymentRecovered {
        attempt: u32,
        result: Reversal,
    },
    /// An unsettled attempt (abandoned, or from before a restart) was sent to the terminal
    /// to be voided.
    PendingVoided {
        sale_ref: String,
        result: Reversal,
    },
    /// A reversal the lane asked for on its own (a late approval) came back.
    LateReversal {
        sale_ref: String,
        result: Reversal,
    },
}

/// Where a typed scan came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanSource {
    Scanner,
    Screen,
    Mqtt,
}

/// What the attendant does with their PIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttendantAction {
    /// Approve the open alerts (age checks, bagging weight, device).
    Approve,
    /// Settle an undecided payment: cancel it at the terminal, then back to shopping.
    Recover,
    /// End the visit without a sale. With an undecided payment the terminal could not cancel
    /// (a manager only), the attempt is left to the lane, which keeps voiding it at the
    /// terminal until it answers.
    Cancel,
}

/// Lane metrics (`aisle_lane_*`).
#[derive(Debug, Default)]
pub struct LaneMetrics {
    /// Scans priced onto a line, by lane.
    pub scans: Family<Vec<(String, String)>, Counter>,
    /// Scans refused (unknown item, bad barcode, scanner noise), by lane and reason.
    pub refused: Family<Vec<(String, String)>, Counter>,
    /// Sales committed, by lane.
    pub sales: Family<Vec<(String, String)>, Counter>,
    /// From a scan reaching the lane task to its priced line published, seconds.
    pub scan_to_price: LaneHistogram,
    /// MQTT lane commands dropped, by reason.
    pub mqtt_refused: Family<Vec<(String, String)>, Counter>,
}

#[derive(Debug)]
pub struct LaneHistogram(pub Histogram);

impl Default for LaneHistogram {
    fn default() -> Self {
        LaneHistogram(Histogram::new(exponential_buckets(0.000_05, 2.0, 16)))
    }
}

impl LaneMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "lane_scans",
            "Scans priced onto a lane's basket",
            self.scans.clone(),
        );
        r.register(
            "lane_scans_refused",
            "Scans a lane refused, by reason",
            self.refused.clone(),
        );
        r.register(
            "lane_sales",
            "Sales committed at a lane",
            self.sales.clone(),
        );
        r.register(
            "lane_mqtt_refused",
            "MQTT lane commands dropped, by reason",
            self.mqtt_refused.clone(),
        );
        r.register(
            "lane_scan_to_price_seconds",
            "From a scan reaching the lane to its priced line published",
            self.scan_to_price.0.clone(),
        );
    }
}

/// Wrong attendant PINs at one lane before it stops taking PINs for a while.
const PIN_TRIES: u32 = 5;
const PIN_LOCKOUT: Duration = Duration::from_secs(60);
/// How often the bagging area is weighed while shopping.
const WEIGH_EVERY: Duration = Duration::from_millis(1_000);
/// Failed weighings in a row before the scale is reported to the attendant.
const SCALE_FAILURES: u32 = 3;

/// Everything a lane task needs from the agent.
#[derive(Clone, Debug)]
pub struct LaneContext {
    pub store: StoreId,
    pub ledger: Ledger,
    pub checkout: Arc<Checkout>,
    pub staff: Arc<Vec<StaffConfig>>,
    pub audit: Arc<AuditLog>,
    pub hub_time: Arc<HubTime>,
    pub receipt_key: Arc<[u8; 32]>,
    /// Base of receipt links, e.g. `http://10.0.0.2:8080`.
    pub receipt_base: String,
    pub metrics: Arc<LaneMetrics>,
    /// Where each lane keeps its unsettled payment attempts (`lanes/<lane>.pending.json`).
    pub data_dir: std::path::PathBuf,
}

struct Devices {
    scanner: Option<Scanner>,
    scale: Option<Arc<Scale>>,
    printer: Option<(Arc<ReceiptPrinter>, ReceiptLayout)>,
    terminal: Arc<TerminalThread>,
    simulated: Option<SimulatedTerminal>,
}

/// Starts lane `settings.id`: opens its devices and spawns its task. Device trouble never stops
/// the lane (a scanner that is unplugged is reopened by its driver; the screen takes typed
/// codes meanwhile).
pub fn spawn(
    ctx: LaneContext,
    settings: &LaneSettings,
    shutdown: watch::Receiver<bool>,
) -> Result<(LaneHandle, tokio::task::JoinHandle<()>), String> {
    let id = settings.id.clone();
    let (tx, rx) = mpsc::channel(256);
    let (updates, _) = broadcast::channel(1024);
    let session = LaneSession::new(ctx.checkout.bagging, ctx.checkout.currency);
    let first: Arc<str> = Arc::from(
        json!({"lane": id, "seq": 0, "event": {"kind": "ready"}, "view": session.view()})
            .to_string(),
    );
    let (latest_tx, latest) = watch::channel(first);

    let simulated = match settings.terminal {
        super::TerminalSettings::Simulated => SimulatedTerminal::new(),
    };
    let terminal = TerminalThread::spawn(simulated.clone(), TerminalThreadConfig::default())
        .map_err(|e| format!("lane {id}: {e}"))?;
    let mut devices = Devices {
        scanner: None,
        scale: None,
        printer: None,
        terminal: Arc::new(terminal),
        simulated: Some(simulated),
    };
    if let Some(s) = &settings.scanner {
        let config = s
            .config(ctx.checkout.layouts.clone())
            .map_err(|e| format!("lane {id} scanner: {e}"))?;
        let (mut scanner, events) = Scanner::open(config);
        let status = scanner
            .claim()
            .map_err(|e| format!("lane {id} scanner: {e}"))?;
        scanner
            .enable()
            .map_err(|e| format!("lane {id} scanner: {e}"))?;
        tracing::info!(lane = %id, ?status, "lane scanner claimed");
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(format!("lane-{id}-scans"))
            .spawn(move || {
                while let Ok(ev) = events.recv() {
                    let cmd = match ev {
                        DeviceEvent::Data(scan) => LaneCommand::Scanned(Box::new(scan)),
                        DeviceEvent::Error(e) => LaneCommand::ScannerTrouble(e.to_string()),
                        DeviceEvent::Status(s) => LaneCommand::ScannerStatus(s),
                    };
                    if tx.blocking_send(cmd).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| format!("lane {id}: scanner thread: {e}"))?;
        devices.scanner = Some(scanner);
    }
    if let Some(s) = &settings.scale {
        let config = s.config().map_err(|e| format!("lane {id} scale: {e}"))?;
        let (mut scale, _events) = Scale::open(config);
        scale.claim().map_err(|e| format!("lane {id} scale: {e}"))?;
        scale
            .enable()
            .map_err(|e| format!("lane {id} scale: {e}"))?;
        devices.scale = Some(Arc::new(scale));
    }
    if let Some(p) = &settings.printer {
        let (config, layout) = p.config().map_err(|e| format!("lane {id} printer: {e}"))?;
        let (printer, _events) =
            ReceiptPrinter::start(config).map_err(|e| format!("lane {id} printer: {e}"))?;
        devices.printer = Some((Arc::new(printer), layout));
    }
    let handle = LaneHandle {
        id: id.clone(),
        commands: tx.clone(),
        updates: updates.clone(),
        latest,
    };
    let scan_config = ScanConfig::new(ctx.checkout.layouts.clone());
    let (pending, warning) = super::pending::PendingPayments::open(&ctx.data_dir, &id)
        .map_err(|e| format!("lane {id}: {e}"))?;
    if let Some(w) = warning {
        tracing::error!(lane = %id, "{w}");
    }
    let runner = Runner {
        pending: Arc::new(std::sync::Mutex::new(pending)),
        voiding: false,
        recovering: false,
        id,
        ctx,
        session,
        devices,
        tx,
        updates,
        latest: latest_tx,
        seq: 0,
        scan_config,
        pin_failures: 0,
        pins_locked_until: None,
        sale_id: None,
        weighing: false,
        scale_failures: 0,
    };
    let task = tokio::spawn(runner.run(rx, shutdown));
    Ok((handle, task))
}

struct Runner {
    /// Attempts handed to the terminal and not settled (on disk; written on the blocking pool,
    /// never on a runtime thread).
    pending: Arc<std::sync::Mutex<super::pending::PendingPayments>>,
    /// A void of unsettled attempts is with the terminal.
    voiding: bool,
    /// An attendant's recovery is with the terminal.
    recovering: bool,
    id: String,
    ctx: LaneContext,
    session: LaneSession,
    devices: Devices,
    tx: mpsc::Sender<LaneCommand>,
    updates: broadcast::Sender<Arc<str>>,
    latest: watch::Sender<Arc<str>>,
    seq: u64,
    scan_config: ScanConfig,
    pin_failures: u32,
    pins_locked_until: Option<Instant>,
    /// The sale id of this visit, drawn at its first payment attempt.
    sale_id: Option<SaleId>,
    weighing: bool,
    scale_failures: u32,
}

/// Distinguishes sale ids drawn in the same millisecond in this process.
static SALE_COUNTER: AtomicU64 = AtomicU64::new(0);
/// How often unsettled payment attempts are sent to the terminal to be voided.
const VOID_EVERY: Duration = Duration::from_secs(5);

impl Runner {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<LaneCommand>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(WEIGH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut void_tick = tokio::time::interval(VOID_EVERY);
        void_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                _ = tick.tick() => {
                    if matches!(self.session.phase(), Phase::Shopping) {
                        self.weigh();
                    }
                }
                // The first tick is at once: what a restart left unsettled is voided first.
                _ = void_tick.tick() => self.void_unsettled().await,
                () = stopped(&mut shutdown) => break,
            }
        }
        if let Some(mut s) = self.devices.scanner.take() {
            tokio::task::spawn_blocking(move || s.release()).await.ok();
        }
    }

    fn lane_label(&self) -> Vec<(String, String)> {
        vec![("lane".to_string(), self.id.clone())]
    }

    /// Publishes `event` with the whole view.
    fn publish(&mut self, event: serde_json::Value) {
        self.seq += 1;
        let text: Arc<str> = Arc::from(
            json!({
                "lane": self.id,
                "seq": self.seq,
                "event": event,
                "view": self.session.view(),
            })
            .to_string(),
        );
        let _ = self.updates.send(text.clone());
        let _ = self.latest.send(text);
    }

    fn say(&mut self, kind: &str, message: impl Into<String>) {
        let message = message.into();
        self.publish(json!({"kind": kind, "message": message}));
    }

    async fn handle(&mut self, cmd: LaneCommand) {
        match cmd {
            LaneCommand::ScanText { text, source } => {
                let started = Instant::now();
                let trimmed = text.trim();
                if trimmed.starts_with(aisle_protocol::member::MEMBER_PREFIX) {
                    return self.member(trimmed.to_string()).await;
                }
                let today = crate::clock::utc_date(self.ctx.hub_time.now());
                match parse_scan(trimmed.as_bytes(), &self.scan_config, today) {
                    Ok(scan) => self.scanned(scan, started).await,
                    Err(e) => {
                        self.refused("bad_scan");
                        self.say(
                            "scan_refused",
                            format!("That barcode could not be read ({e}). Please scan it again."),
                        );
                        tracing::info!(lane = %self.id, ?source, error = %e, "scan refused");
                    }
                }
            }
            LaneCommand::Scanned(scan) => self.scanned(*scan, Instant::now()).await,
            LaneCommand::ScannerTrouble(reason) => {
                self.refused("scanner");
                self.say(
                    "scan_refused",
                    format!("The last scan was not read ({reason}). Please scan it again."),
                );
            }
            LaneCommand::ScannerStatus(status) => match status {
                DeviceStatus::Online => {
                    self.session.clear_device_alert("scanner");
                    self.say("device", "The scanner is ready.");
                }
                DeviceStatus::Disconnected { reason, .. } | DeviceStatus::Offline { reason } => {
                    self.say(
                        "device",
                        format!("The scanner is not working ({reason}); codes can be typed on the screen."),
                    );
                }
                DeviceStatus::Closed => {}
            },
            LaneCommand::Qty { line_no, qty } => match self.session.set_qty(line_no, qty) {
                Ok(l) => {
                    let line = serde_json::to_value(l).unwrap_or_default();
                    self.publish(json!({"kind": "line_changed", "line": line}));
                    self.weigh();
                }
                Err(e) => self.say("refused", e.to_string()),
            },
            LaneCommand::Void { line_no, pin } => {
                let Some(who) = self.attendant(&pin, true).await else {
                    return;
                };
                match self.session.void(line_no) {
                    Ok(l) => {
                        let subject = format!("lane {} line {} {}", self.id, line_no, l.gtin);
                        self.audit(&staff_actor(&who), action::LANE_VOID, &subject);
                        self.publish(json!({"kind": "line_voided", "line_no": line_no, "by": who}));
                        self.weigh();
                    }
                    Err(e) => self.say("refused", e.to_string()),
                }
            }
            LaneCommand::Member { qr } => self.member(qr).await,
            LaneCommand::Pay => self.pay().await,
            LaneCommand::Attendant { pin, action } => {
                let manager = action == AttendantAction::Recover;
                let manager =
                    manager || (action == AttendantAction::Cancel && self.session.payment_alert());
                let Some(who) = self.attendant(&pin, manager).await else {
                    return;
                };
                self.attendant_action(who, action).await;
            }
            LaneCommand::TerminalScript { lines, reply } => {
                let out = match &self.devices.simulated {
                    None => Err("this lane's terminal is not simulated".to_string()),
                    Some(sim) => lines
                        .iter()
                        .map(|l| l.parse::<Behaviour>())
                        .collect::<Result<Vec<_>, _>>()
                        .map(|b| {
                            sim.script(b);
                            sim.charges()
                        }),
                };
                let _ = reply.send(out);
            }
            LaneCommand::Weighed(r) => {
                self.weighing = false;
                match r {
                    Ok(g) => {
                        self.scale_failures = 0;
                        let before = self.session.alerts().to_vec();
                        self.session.clear_device_alert("bagging scale");
                        self.session.weight(g);
                        if self.session.alerts() != before.as_slice() {
                            self.publish(json!({"kind": "bagging", "grams": g}));
                        }
                    }
                    Err(reason) => {
                        self.scale_failures += 1;
                        if self.scale_failures == SCALE_FAILURES {
                            self.session.device_alert("bagging scale", reason);
                            self.publish(
                                json!({"kind": "device_alert", "device": "bagging scale"}),
                            );
                        }
                    }
                }
            }
            LaneCommand::PaymentDone { attempt, outcome } => self.paid(attempt, outcome).await,
            LaneCommand::PaymentRecovered { attempt, result } => {
                let sale_ref = self.sale_ref(attempt);
                self.audit(
                    &format!("device:lane-{}", self.id),
                    action::LANE_PAYMENT_RECOVER,
                    &format!("lane {} {sale_ref}: {result:?}", self.id),
                );
                if self.session.phase() != &(Phase::Paying { attempt }) {
                    tracing::warn!(lane = %self.id, attempt, ?result, "recovery result for a settled attempt");
                    return;
                }
                self.recovered(attempt, result);
            }
            LaneCommand::PendingVoided { sale_ref, result } => {
                self.voiding = false;
                self.audit(
                    &format!("device:lane-{}", self.id),
                    action::LANE_PAYMENT_VOIDED,
                    &format!("lane {} {sale_ref}: {result:?}", self.id),
                );
                if matches!(result, Reversal::Reversed | Reversal::NotCharged) {
                    self.settle(&sale_ref);
                }
            }
            LaneCommand::LateReversal { sale_ref, result } => {
                self.audit(
                    &format!("device:lane-{}", self.id),
                    action::LANE_PAYMENT_VOIDED,
                    &format!("lane {} {sale_ref} (late approval): {result:?}", self.id),
                );
                if matches!(result, Reversal::Reversed | Reversal::NotCharged) {
                    self.settle(&sale_ref);
                } else {
                    // Left in the pending file: the lane keeps voiding it.
                    tracing::error!(lane = %self.id, %sale_ref, ?result, "a late approval could not be reversed yet; retrying");
                }
            }
        }
    }

    fn sale_ref(&self, attempt: u32) -> String {
        match &self.sale_id {
            Some(s) => format!("{s}:{attempt}"),
            None => format!("?:{attempt}"),
        }
    }

    /// Forgets a settled attempt (logged if the file cannot be written: the lane then voids it
    /// again later, which the terminal answers as not charged or already voided).
    fn settle(&mut self, sale_ref: &str) {
        let pending = self.pending.clone();
        let (lane, sale_ref) = (self.id.clone(), sale_ref.to_string());
        tokio::task::spawn_blocking(move || {
            let done = pending
                .lock()
                .map_err(|_| "the pending list is poisoned".to_string())
                .and_then(|mut p| p.settle(&sale_ref));
            if let Err(e) = done {
                tracing::error!(%lane, %sale_ref, error = %e, "cannot record a settled payment");
            }
        });
    }

    /// Sends every unsettled attempt that is not the visit's live one to the terminal to be
    /// voided, unless the ledger holds its sale (then it was paid: settled).
    async fn void_unsettled(&mut self) {
        if self.voiding {
            return;
        }
        let live = match self.session.phase() {
            Phase::Paying { attempt } => Some(self.sale_ref(*attempt)),
            _ => None,
        };
        let mut to_void = Vec::new();
        let attempts = match self.pending.lock() {
            Ok(p) => p.attempts().to_vec(),
            Err(_) => return,
        };
        for a in attempts {
            if Some(&a.sale_ref) == live.as_ref() {
                continue;
            }
            let committed = match SaleId::parse(&a.sale_id) {
                Ok(id) => matches!(self.ctx.ledger.sale(id).await, Ok(Some(_))),
                Err(_) => false,
            };
            if committed {
                self.settle(&a.sale_ref);
            } else {
                to_void.push(a.sale_ref);
            }
        }
        if to_void.is_empty() {
            return;
        }
        self.voiding = true;
        let terminal = self.devices.terminal.clone();
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            for sale_ref in to_void {
                let result = match SaleRef::new(sale_ref.clone()) {
                    Ok(r) => terminal.cancel(&r, Duration::from_secs(10)),
                    Err(e) => Reversal::Failed {
                        reason: e.to_string(),
                    },
                };
                if tx
                    .blocking_send(LaneCommand::PendingVoided { sale_ref, result })
                    .is_err()
                {
                    return;
                }
            }
        });
    }

    fn recovered(&mut self, attempt: u32, result: Reversal) {
        self.recovering = false;
        match result {
            Reversal::Reversed | Reversal::NotCharged => {
                let sale_ref = self.sale_ref(attempt);
                self.settle(&sale_ref);
                self.session.recover_payment();
                let message = if result == Reversal::Reversed {
                    "The payment was voided at the card terminal; nothing was charged."
                } else {
                    "Nothing was charged. The shopper may pay again."
                };
                self.publish(
                    json!({"kind": "payment_recovered", "attempt": attempt, "message": message}),
                );
            }
            Reversal::Failed { reason } => {
                self.session.payment_unresolved(format!(
                        "the terminal could not void the payment ({reason}); try again or call the help desk"
                    ));
                self.publish(json!({"kind": "payment_unresolved", "attempt": attempt}));
            }
        }
    }

    fn refused(&self, reason: &str) {
        self.ctx
            .metrics
            .refused
            .get_or_create(&vec![
                ("lane".to_string(), self.id.clone()),
                ("reason".to_string(), reason.to_string()),
            ])
            .inc();
    }

    fn audit(&self, actor: &str, action: &str, subject: &str) {
        let audit = self.ctx.audit.clone();
        let (actor, action, subject) = (actor.to_string(), action.to_string(), subject.to_string());
        let at = self.ctx.hub_time.now().0;
        // The audit log syncs each line to disk: off the runtime.
        tokio::task::spawn_blocking(move || audit.record(at, &actor, &action, &subject));
    }

    async fn scanned(&mut self, scan: Scan, started: Instant) {
        self.session.start_if_done();
        let Some(item) = scan.item.or(scan.gtin) else {
            self.refused("not_an_item");
            return self.say(
                "scan_refused",
                "That code is not a product barcode. Please scan the product's barcode.",
            );
        };
        let charged = match self.ctx.ledger.charge_price(item).await {
            Ok(c) => c,
            Err(e @ (SaleRejection::UnknownGtin(_) | SaleRejection::NotYetPriced(_))) => {
                self.refused("unknown_item");
                tracing::info!(lane = %self.id, gtin = %item, error = %e, "unknown item scanned");
                return self.say(
                    "unknown_item",
                    format!("Item {item} is not known here. Please put it aside; an attendant will help."),
                );
            }
            Err(e) => {
                self.refused("ledger");
                tracing::error!(lane = %self.id, error = %e, "pricing a scan failed");
                return self.say(
                    "scan_refused",
                    "The lane could not look up the price. Please call an attendant.",
                );
            }
        };
        let rules = self
            .ctx
            .checkout
            .items
            .get(&item)
            .copied()
            .unwrap_or_default();
        let weight_g = scan.weight_g.and_then(|g| u32::try_from(g).ok());
        if scan.weight_g.is_some() && weight_g.is_none_or(|g| g == 0 || g > 100_000) {
            self.refused("bad_weight");
            return self.say("scan_refused", "The weight in that barcode is not valid.");
        }
        let priced = PricedItem {
            gtin: item,
            name: charged.name,
            unit_price: charged.unit_price,
            price_version: charged.version,
            from_shelf: charged.from_shelf,
            weight_g,
            embedded_price: scan.price,
            qty: scan.count.unwrap_or(1).max(1),
            rules,
        };
        match self.session.add(priced) {
            Ok(line) => {
                let line = serde_json::to_value(line).unwrap_or_default();
                self.publish(json!({"kind": "line_added", "line": line}));
                self.ctx
                    .metrics
                    .scans
                    .get_or_create(&self.lane_label())
                    .inc();
                self.ctx
                    .metrics
                    .scan_to_price
                    .0
                    .observe(started.elapsed().as_secs_f64());
                self.weigh();
            }
            Err(e) => self.say("refused", e.to_string()),
        }
    }

    async fn member(&mut self, qr: String) {
        let keys = match self.ctx.ledger.pickup_keys().await {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(lane = %self.id, error = %e, "reading the hub's keys failed");
                return self.say(
                    "member_refused",
                    "The member card could not be checked now.",
                );
            }
        };
        let now = self.ctx.hub_time.now();
        let verified = MemberClaims::verify(&qr, now, |id| {
            keys.iter()
                .find(|k| k.key_id == id)
                .and_then(|k| k.verifying_key())
        });
        match verified {
            Ok(claims) => {
                let member = claims.member.clone();
                match self.session.set_member(claims) {
                    Ok(()) => self.publish(json!({"kind": "member", "member": member})),
                    Err(e) => self.say("member_refused", e.to_string()),
                }
            }
            Err(e) => {
                self.refused("member_card");
                self.say("member_refused", format!("{e}."));
            }
        }
    }

    /// The attendant's name for `pin`, or None (said on the screen; wrong PINs are counted and
    /// audited, and lock the lane's PIN pad for a minute after five). Staff and managers
    /// attend lanes; overrides (`manager`: voids, payment recovery) take a manager. A
    /// technician's PIN attends no lane.
    async fn attendant(&mut self, pin: &str, manager: bool) -> Option<String> {
        if let Some(until) = self.pins_locked_until {
            if Instant::now() < until {
                self.say(
                    "attendant_refused",
                    "Too many wrong PINs at this lane; wait a minute.",
                );
                return None;
            }
            self.pins_locked_until = None;
            self.pin_failures = 0;
        }
        if pin.is_empty() || pin.len() > 32 {
            self.say("attendant_refused", "That PIN is not valid.");
            return None;
        }
        let staff = self.ctx.staff.clone();
        let pin = pin.to_string();
        let who = tokio::task::spawn_blocking(move || crate::pickup::staff::who(&staff, &pin))
            .await
            .ok()
            .flatten();
        match who {
            Some((w, role)) => {
                self.pin_failures = 0;
                let allowed = match role {
                    StaffRole::Manager => true,
                    StaffRole::Staff => !manager,
                    StaffRole::Technician => false,
                };
                if !allowed {
                    let subject = format!("lane {} ({})", self.id, role.as_str());
                    self.audit(&staff_actor(&w), action::LANE_PIN_REFUSED, &subject);
                    self.say(
                        "attendant_refused",
                        if manager {
                            "This needs a manager's PIN."
                        } else {
                            "That PIN is not an attendant's."
                        },
                    );
                    return None;
                }
                Some(w)
            }
            None => {
                self.pin_failures += 1;
                let subject = format!("lane {}", self.id);
                self.audit(
                    &format!("device:lane-{}", self.id),
                    action::LANE_PIN_REFUSED,
                    &subject,
                );
                if self.pin_failures >= PIN_TRIES {
                    self.pins_locked_until = Some(Instant::now() + PIN_LOCKOUT);
                }
                self.say("attendant_refused", "That PIN is not an attendant's.");
                None
            }
        }
    }

    async fn attendant_action(&mut self, who: String, action: AttendantAction) {
        let subject = format!("lane {}", self.id);
        match action {
            AttendantAction::Approve => {
                let approved = self.session.approve(&who);
                for a in &approved {
                    let what = serde_json::to_string(a).unwrap_or_default();
                    self.audit(
                        &staff_actor(&who),
                        action::LANE_OVERRIDE,
                        &format!("{subject} {what}"),
                    );
                }
                self.publish(json!({"kind": "approved", "by": who, "alerts": approved}));
            }
            AttendantAction::Recover => {
                let (Phase::Paying { attempt }, Some(sale_id)) =
                    (self.session.phase().clone(), self.sale_id.clone())
                else {
                    return self.say("refused", "There is no payment to recover.");
                };
                // While the terminal is still working on it normally, its answer decides.
                if !self.session.payment_alert() {
                    return self.say(
                        "refused",
                        "The card terminal is still working on this payment; wait for its answer.",
                    );
                }
                if self.recovering {
                    return self.say("refused", "Already checking with the card terminal.");
                }
                self.recovering = true;
                self.audit(
                    &staff_actor(&who),
                    action::LANE_PAYMENT_RECOVER,
                    &format!("{subject} {sale_id}:{attempt}"),
                );
                self.say(
                    "payment_recovering",
                    "Checking the payment with the card terminal…",
                );
                let terminal = self.devices.terminal.clone();
                let tx = self.tx.clone();
                let timeout = Duration::from_secs(10);
                tokio::task::spawn_blocking(move || {
                    let result = match SaleRef::new(format!("{sale_id}:{attempt}")) {
                        Ok(r) => terminal.cancel(&r, timeout),
                        Err(e) => Reversal::Failed {
                            reason: e.to_string(),
                        },
                    };
                    let _ = tx.blocking_send(LaneCommand::PaymentRecovered { attempt, result });
                });
            }
            AttendantAction::Cancel => {
                let basket = format!(
                    "{subject}: {} items, {}",
                    self.session.items(),
                    self.session
                        .total()
                        .map_or_else(|| "0".into(), |t| t.to_string())
                );
                let undecided = match self.session.phase() {
                    Phase::Paying { attempt } if self.session.payment_alert() => {
                        Some(self.sale_ref(*attempt))
                    }
                    _ => None,
                };
                let done = match &undecided {
                    // The attempt stays in the pending file: the lane voids it at the terminal
                    // as soon as the terminal answers, and audits the answer.
                    Some(_) => self.session.abandon_payment(),
                    None => self.session.cancel(),
                };
                match done {
                    Ok(()) => {
                        self.sale_id = None;
                        self.recovering = false;
                        let what = match &undecided {
                            Some(r) => {
                                format!("{basket}; payment {r} left undecided, to be voided")
                            }
                            None => basket,
                        };
                        self.audit(&staff_actor(&who), action::LANE_CANCEL, &what);
                        self.publish(
                            json!({"kind": "cancelled", "by": who, "abandoned_payment": undecided}),
                        );
                    }
                    Err(e) => self.say("refused", e.to_string()),
                }
            }
        }
    }

    fn weigh(&mut self) {
        let Some(scale) = self.devices.scale.clone() else {
            return;
        };
        if self.weighing {
            return;
        }
        self.weighing = true;
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let r = scale
                .weigh(WeighRequest::stable(Duration::from_secs(3)))
                .map_err(|e| e.to_string())
                .and_then(|reading| match reading {
                    aisle_drivers::scale::Reading::Stable(w) => w
                        .grams()
                        .ok_or_else(|| "the scale weighs in pounds; set it to grams".to_string()),
                    aisle_drivers::scale::Reading::Moving(_) => {
                        Err("the weight did not settle".to_string())
                    }
                });
            let _ = tx.blocking_send(LaneCommand::Weighed(r));
        });
    }

    async fn pay(&mut self) {
        let (attempt, amount) = match self.session.begin_payment() {
            Ok(a) => a,
            Err(e) => return self.say("refused", e.to_string()),
        };
        let sale_id = match &self.sale_id {
            Some(s) => s.clone(),
            None => {
                // Time, a per-process counter and a random part: unique across lanes, sales
                // in one millisecond and restarts (a clock stepped back included).
                let n = SALE_COUNTER.fetch_add(1, Ordering::Relaxed) % 1000;
                let id = format!(
                    "{}-{}{:03}-{:04x}",
                    self.id,
                    self.ctx.hub_time.now().0,
                    n,
                    rand::random::<u16>()
                );
                match SaleId::parse(&id) {
                    Ok(s) => {
                        self.sale_id = Some(s.clone());
                        s
                    }
                    Err(e) => {
                        self.session.payment_failed();
                        return self.say("refused", format!("cannot number the sale: {e}"));
                    }
                }
            }
        };
        // On disk before the terminal is asked: whatever happens next, this attempt is either
        // settled or voided at the terminal, never forgotten.
        let attempt_record = super::pending::PendingAttempt {
            sale_ref: format!("{sale_id}:{attempt}"),
            sale_id: sale_id.to_string(),
            amount,
            since_ms: self.ctx.hub_time.now().0,
        };
        let pending = self.pending.clone();
        let begun = tokio::task::spawn_blocking(move || {
            pending
                .lock()
                .map_err(|_| "the pending list is poisoned".to_string())
                .and_then(|mut p| p.begin(attempt_record))
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = begun {
            self.session.payment_failed();
            tracing::error!(lane = %self.id, error = %e, "cannot record a payment attempt");
            return self.say(
                "payment_failed",
                format!("Payment cannot start now ({e}). Nothing was charged; call an attendant."),
            );
        }
        self.publish(json!({
            "kind": "payment_started",
            "attempt": attempt,
            "amount": amount,
            "message": format!("Follow the instructions on the card terminal to pay {}.", amount.decimal()),
        }));
        let terminal = self.devices.terminal.clone();
        let tx = self.tx.clone();
        let timeout = self.ctx.checkout.payment_timeout;
        tokio::task::spawn_blocking(move || {
            let outcome = match SaleRef::new(format!("{sale_id}:{attempt}")) {
                Ok(r) => terminal.authorise(amount, &r, timeout),
                Err(e) => Outcome::Unavailable {
                    reason: e.to_string(),
                },
            };
            let _ = tx.blocking_send(LaneCommand::PaymentDone { attempt, outcome });
        });
    }

    async fn paid(&mut self, attempt: u32, outcome: Outcome) {
        if self.session.phase() != &(Phase::Paying { attempt }) {
            // A late answer for an attempt the attendant already settled: an approval is
            // reversed (and stays pending, so voided later, until the terminal confirms).
            if let Outcome::Approved(a) = outcome {
                tracing::error!(lane = %self.id, sale_ref = %a.sale_ref, "late approval after recovery: reversing");
                let terminal = self.devices.terminal.clone();
                let tx = self.tx.clone();
                tokio::task::spawn_blocking(move || {
                    let result = terminal.reverse(&a, Duration::from_secs(10));
                    let _ = tx.blocking_send(LaneCommand::LateReversal {
                        sale_ref: a.sale_ref.to_string(),
                        result,
                    });
                });
            }
            return;
        }
        match outcome {
            Outcome::Approved(approval) => {
                let asked = self.session.total();
                if asked != Some(approval.amount) {
                    let why = format!(
                        "the terminal approved {} instead of {}",
                        approval.amount,
                        asked.map_or_else(|| "nothing".into(), |a| a.to_string())
                    );
                    return self.undo_approval(approval, why).await;
                }
                if approval.offline {
                    let total = match self
                        .ctx
                        .ledger
                        .offline_card_total(approval.amount.currency)
                        .await
                    {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::error!(error = %e, "reading the offline total failed");
                            aisle_protocol::Money::new(i64::MAX, approval.amount.currency)
                        }
                    };
                    if let OfflineDecision::Refuse { reason } =
                        self.ctx.checkout.offline.decide(approval.amount, total)
                    {
                        return self.undo_approval(approval, reason).await;
                    }
                }
                let payment = Payment {
                    method: PaymentMethod::Card,
                    reference: Some(approval.auth_code.chars().take(64).collect()),
                    offline: approval.offline,
                };
                let Some(sale_id) = self.sale_id.clone() else {
                    return self
                        .undo_approval(approval, "the sale had no number".into())
                        .await;
                };
                let Some(record) = self.session.record(sale_id.clone(), payment) else {
                    return self
                        .undo_approval(approval, "the basket is empty".into())
                        .await;
                };
                let names: Vec<String> = self
                    .session
                    .lines()
                    .iter()
                    .filter(|l| !l.voided)
                    .map(|l| l.name.clone())
                    .collect();
                // The total cap is checked again in the writer, atomically with the commit, so
                // two lanes approving offline at once cannot pass it together.
                let cap = self
                    .ctx
                    .checkout
                    .offline
                    .caps(approval.amount.currency)
                    .map(|c| aisle_protocol::Money::new(c.total, approval.amount.currency));
                match self.ctx.ledger.record_priced_sale(record, cap).await {
                    Ok(committed) => {
                        self.settle(&approval.sale_ref.to_string());
                        let url = format!(
                            "{}/receipts/{}?k={}",
                            self.ctx.receipt_base.trim_end_matches('/'),
                            sale_id,
                            receipt::link_key(&self.ctx.receipt_key, sale_id.as_str())
                        );
                        self.ctx
                            .metrics
                            .sales
                            .get_or_create(&self.lane_label())
                            .inc();
                        let card = match &approval.card_last4 {
                            Some(l4) => format!("Card ****{l4} auth {}", approval.auth_code),
                            None => format!("Card auth {}", approval.auth_code),
                        };
                        let card = if approval.offline {
                            format!("{card} (offline)")
                        } else {
                            card
                        };
                        let footer = vec![
                            format!("Sale {sale_id}"),
                            format!("Lane {} · {}", self.id, crate::clock::rfc3339(committed.at)),
                        ];
                        let printed = receipt::printed(
                            &committed.record,
                            &names,
                            &self.ctx.checkout.header,
                            card,
                            footer,
                            Some(url.clone()),
                        );
                        self.session.paid(sale_id.to_string(), url.clone());
                        self.sale_id = None;
                        self.publish(json!({
                            "kind": "sale_committed",
                            "sale_id": sale_id,
                            "seq": committed.seq,
                            "total": committed.record.total,
                            "receipt_url": url,
                            "offline": approval.offline,
                        }));
                        self.print(printed).await;
                    }
                    Err(e) => {
                        tracing::error!(lane = %self.id, error = %e, "sale commit failed after approval");
                        self.undo_approval(
                            approval,
                            format!("the sale could not be recorded ({e})"),
                        )
                        .await;
                    }
                }
            }
            Outcome::Declined { .. } | Outcome::Unavailable { .. } => {
                let sale_ref = self.sale_ref(attempt);
                self.settle(&sale_ref);
                self.session.payment_failed();
                let message = format!(
                    "{}. Nothing was charged; try again or use another card.",
                    capitalise(&outcome.say())
                );
                self.publish(
                    json!({"kind": "payment_failed", "attempt": attempt, "message": message}),
                );
            }
            Outcome::TimedOut => {
                self.session.payment_unresolved(
                    "the card terminal did not answer; it may or may not have charged".into(),
                );
                self.publish(json!({"kind": "payment_unresolved", "attempt": attempt}));
            }
        }
    }

    /// Reverses an approval the lane cannot keep; an unreversible one freezes the lane for the
    /// attendant.
    async fn undo_approval(&mut self, approval: aisle_drivers::payment::Approval, why: String) {
        let terminal = self.devices.terminal.clone();
        let a = approval.clone();
        let reversal =
            tokio::task::spawn_blocking(move || terminal.reverse(&a, Duration::from_secs(10)))
                .await
                .unwrap_or(Reversal::Failed {
                    reason: "the reversal task failed".into(),
                });
        self.audit(
            &format!("device:lane-{}", self.id),
            action::LANE_PAYMENT_REVERSED,
            &format!(
                "lane {} {}: {why}: {reversal:?}",
                self.id, approval.sale_ref
            ),
        );
        match reversal {
            Reversal::Reversed | Reversal::NotCharged => {
                self.settle(&approval.sale_ref.to_string());
                // The next attempt draws a new sale id: one the ledger refused stays refused.
                self.sale_id = None;
                self.session.payment_failed();
                let message = format!("Payment not taken: {why}. The charge was voided.");
                self.publish(json!({"kind": "payment_failed", "message": message}));
            }
            Reversal::Failed { reason } => {
                self.session.payment_unresolved(format!(
                    "{why}; the charge could not be voided ({reason})"
                ));
                self.publish(json!({"kind": "payment_unresolved"}));
            }
        }
    }

    async fn print(&mut self, printed: aisle_drivers::printer::Receipt) {
        let Some((printer, layout)) = self.devices.printer.clone() else {
            return;
        };
        let bytes = match encode_receipt(&printed, &layout) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(lane = %self.id, error = %e, "receipt could not be encoded");
                return self.say(
                    "receipt",
                    "The receipt could not be printed; use the link on the screen.",
                );
            }
        };
        let r = tokio::task::spawn_blocking(move || printer.print(bytes, Duration::from_secs(10)))
            .await;
        match r {
            Ok(Ok(())) => self.say("receipt_printed", "Your receipt is printed. Thank you!"),
            Ok(Err(e)) => {
                tracing::warn!(lane = %self.id, error = %e, "receipt not printed");
                self.say(
                    "receipt",
                    format!(
                        "The receipt printer could not print ({e}); use the link on the screen."
                    ),
                );
            }
            Err(_) => {}
        }
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Resolves once `rx` says stop (and holds no borrow of the value across awaits).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// The audit log's actor for a staff member.
fn staff_actor(name: &str) -> String {
    format!("staff:{name}")
}
