//! The label planner: brings every bound label to what the store wants on it (the static layer
//! with its product's name, rendered here, and its active price as dynamic fields), sending only
//! what changed, and records what the tags confirm.
//!
//! * Desired vs confirmed: a label is pending while the content hash it confirmed (ledger) or
//!   reported (its last status) differs from the desired one. A price-only change over the layer
//!   the tag shows is one `Fields` frame; a new name sends `Show` (the tag may hold the layer)
//!   or, when the tag lacks it, the layer's chunks then `Show`, resuming where the tag says.
//! * Confirmation: the tag's status (check-in or acknowledgement) carries its content hash and
//!   whether the panel shows it; a match becomes `LabelConfirmed`. Confirmations and "not
//!   updated" records go to the ledger in batches (one command, one fsync for up to
//!   `flush_max`), never one per label.
//! * Retries: each push is retried after a full-jitter backoff until confirmed; a refusal or a
//!   lost link retries sooner. `not_updated_after_ms` after the price became active (hub time)
//!   an unconfirmed label is recorded as `LabelNotUpdated`, once per price version, and retried on.
//! * The planner runs on its own thread: it blocks on the access point's std channel, renders
//!   names (CPU work), and reaches the ledger through the runtime's handle, never on a tokio
//!   worker.
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use aisle_drivers::backoff::Backoff;
use aisle_drivers::esl::{
    ApEvent, ApHandle, LinkState, NameLayer, NameText, RadioPacket, SendError, SendOutcome,
};
use aisle_protocol::esl::{
    ContentHash, DynamicFields, LabelId, LayerHash, Outcome, Panel, Seq, TagCommand, TagReport,
    TagStatus, content_hash, layer_chunks,
};
use aisle_protocol::{BatchId, Gtin, Money, UtcMillis};

use super::{LabelsShared, PlannerStats};
use crate::clock::HubTime;
use crate::ledger::{LabelRecord, LabelShown, LabelUpdate, Ledger, LedgerError};

/// How the planner paces itself.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannerSettings {
    pub not_updated_after_ms: i64,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// A refused or lost send is tried again this soon (then by the backoff).
    pub resend_after: Duration,
    /// Pending ledger updates are written at least this often...
    pub flush_every: Duration,
    /// ...or as soon as this many wait.
    pub flush_max: usize,
    /// Rendered layers kept (by name and panel).
    pub layer_cache: usize,
}

impl Default for PlannerSettings {
    fn default() -> Self {
        PlannerSettings {
            not_updated_after_ms: 600_000,
            retry_base: Duration::from_secs(10),
            retry_cap: Duration::from_secs(300),
            resend_after: Duration::from_secs(1),
            flush_every: Duration::from_millis(100),
            flush_max: 2_000,
            layer_cache: 4_096,
        }
    }
}

/// The content the store wants on a label.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Want {
    version: u64,
    batch_id: BatchId,
    price: Money,
    name: String,
    panel: Panel,
    layer: LayerHash,
    fields: DynamicFields,
    content: ContentHash,
    /// Hub time from which the label should show it (activation or binding).
    since: UtcMillis,
}

#[derive(Debug)]
struct Plan {
    gtin: Gtin,
    panel: Panel,
    want: Option<Want>,
    /// What the ledger says the label confirmed (content, layer, name).
    confirmed: Option<(ContentHash, LayerHash, String)>,
    /// The version recorded as "not updated".
    not_updated: Option<u64>,
    not_updated_queued: bool,
    /// A `LabelConfirmed` for this content waits for the ledger.
    confirming: Option<ContentHash>,
    tag: Option<TagStatus>,
    /// Last downlink seq used for this tag.
    seq: u16,
    /// The seq of the frame whose answer says whether the content took (Show or Fields).
    watch: Option<Seq>,
    attempts: u32,
    /// When to push (again); None while nothing needs doing.
    next_try: Option<Instant>,
    /// Whether the current want has been handed to the access point.
    sent: bool,
    last_error: Option<String>,
}

impl Plan {
    fn pending(&self) -> bool {
        match &self.want {
            None => false,
            Some(w) => {
                self.confirmed.as_ref().map(|c| c.0) != Some(w.content)
                    && self.confirming != Some(w.content)
            }
        }
    }

    /// The layer the tag shows, as far as the gateway knows.
    fn tag_layer(&self) -> Option<LayerHash> {
        match &self.tag {
            Some(t) => t.layer,
            None => self.confirmed.as_ref().map(|c| c.1),
        }
    }
}

/// Sends radio packets: the access point's driver.
pub trait Downlink {
    fn send(&self, packet: RadioPacket) -> Result<(), SendError>;
}

impl Downlink for ApHandle {
    fn send(&self, packet: RadioPacket) -> Result<(), SendError> {
        ApHandle::send(self, packet).map(|_| ())
    }
}

/// The planner's state. See the module doc.
#[derive(Debug)]
pub struct LabelPlanner {
    settings: PlannerSettings,
    shared: Arc<LabelsShared>,
    time: Arc<HubTime>,
    plans: HashMap<LabelId, Plan>,
    /// Downlink seqs of tags heard but not bound (their statuses are acknowledged too).
    stray_seqs: HashMap<LabelId, u16>,
    layers: HashMap<(String, Panel), Arc<NameLayer>>,
    updates: Vec<LabelUpdate>,
    first_update: Option<Instant>,
    backoff: Backoff,
}

impl LabelPlanner {
    pub fn new(settings: PlannerSettings, shared: Arc<LabelsShared>, time: Arc<HubTime>) -> Self {
        let backoff = Backoff {
            base: settings.retry_base,
            cap: settings.retry_cap,
        };
        LabelPlanner {
            settings,
            shared,
            time,
            plans: HashMap::new(),
            stray_seqs: HashMap::new(),
            layers: HashMap::new(),
            updates: Vec::new(),
            first_update: None,
            backoff,
        }
    }

    /// The static layer for `name` on `panel`, rendered once and kept.
    fn layer(&mut self, name: &str, panel: Panel) -> Result<Arc<NameLayer>, String> {
        if let Some(l) = self.layers.get(&(name.to_string(), panel)) {
            return Ok(l.clone());
        }
        let text = NameText {
            name,
            brand: None,
            details: None,
            badge: None,
        };
        let layer = self
            .shared
            .renderer
            .render_layer(panel, &text)
            .map_err(|e| format!("rendering '{name}': {e}"))?;
        if layer.fit.is_lossy() {
            tracing::warn!(name, fit = ?layer.fit, "product name does not fit its label in full");
        }
        if self.layers.len() >= self.settings.layer_cache {
            self.layers.clear();
        }
        let layer = Arc::new(layer);
        self.layers.insert((name.to_string(), panel), layer.clone());
        Ok(layer)
    }

    /// Takes the ledger's view of these labels (bindings, active prices, confirmations);
    /// `touched` labels missing from `records` were unbound.
    pub fn load(&mut self, records: Vec<LabelRecord>, touched: &[LabelId]) {
        let now = Instant::now();
        let mut seen = std::collections::HashSet::with_capacity(records.len());
        for r in records {
            let label = r.binding.label;
            seen.insert(label);
            let confirmed = r
                .confirmed
                .as_ref()
                .filter(|c| c.gtin == r.binding.gtin)
                .map(|c| (c.shown.content, c.shown.layer, c.shown.name.clone()));
            let not_updated = r
                .not_updated
                .as_ref()
                .filter(|n| n.gtin == r.binding.gtin)
                .map(|n| n.version);
            let rebound = self
                .plans
                .get(&label)
                .is_some_and(|p| p.gtin != r.binding.gtin || p.panel != r.binding.panel);
            if rebound {
                self.plans.remove(&label);
            }
            let plan = self.plans.entry(label).or_insert_with(|| Plan {
                gtin: r.binding.gtin,
                panel: r.binding.panel,
                want: None,
                confirmed: confirmed.clone(),
                not_updated,
                not_updated_queued: false,
                confirming: None,
                tag: None,
                seq: 0,
                watch: None,
                attempts: 0,
                next_try: None,
                sent: false,
                last_error: None,
            });
            if plan.confirmed.is_none() {
                plan.confirmed = confirmed;
            }
            if not_updated > plan.not_updated {
                plan.not_updated = not_updated;
            }
            let want = match &r.wanted {
                None => None,
                Some(w) => {
                    let panel = plan.tag.map_or(plan.panel, |t| t.panel);
                    match self.want_for(label, w, panel, r.binding.bound_at) {
                        Ok(want) => Some(want),
                        Err(e) => {
                            tracing::error!(%label, error = %e, "cannot plan the label");
                            None
                        }
                    }
                }
            };
            let Some(plan) = self.plans.get_mut(&label) else {
                continue;
            };
            if plan.want.as_ref().map(|w| w.content) != want.as_ref().map(|w| w.content) {
                plan.want = want;
                plan.attempts = 0;
                plan.watch = None;
                plan.sent = false;
                plan.not_updated_queued = false;
                plan.next_try = plan.pending().then_some(now);
            }
        }
        for l in touched {
            if !seen.contains(l) {
                self.plans.remove(l);
                self.shared.forget_live(*l);
            }
        }
    }

    fn want_for(
        &mut self,
        label: LabelId,
        w: &crate::ledger::WantedPrice,
        panel: Panel,
        bound_at: UtcMillis,
    ) -> Result<Want, String> {
        let fields = DynamicFields::from_money(w.price)
            .map_err(|e| format!("price {} cannot go on a label: {e}", w.price))?;
        // The layer of a name the label already confirmed is known without drawing it again.
        let known = self.plans.get(&label).and_then(|p| {
            p.confirmed
                .as_ref()
                .filter(|c| c.2 == w.name && p.panel == panel)
                .map(|c| c.1)
        });
        let layer = match known {
            Some(l) => l,
            None => self.layer(&w.name, panel)?.hash,
        };
        let content = content_hash(Some(layer), Some(&fields))
            .ok_or_else(|| "no content hash".to_string())?;
        Ok(Want {
            version: w.version,
            batch_id: w.batch_id.clone(),
            price: w.price,
            name: w.name.clone(),
            panel,
            layer,
            fields,
            content,
            since: UtcMillis(w.active_since.0.max(bound_at.0)),
        })
    }

    fn next_seq(&mut self, label: LabelId) -> Seq {
        let s = match self.plans.get_mut(&label) {
            Some(p) => &mut p.seq,
            None => self.stray_seqs.entry(label).or_insert(0),
        };
        *s = s.wrapping_add(1);
        Seq(*s)
    }

    fn send(
        &mut self,
        ap: &dyn Downlink,
        label: LabelId,
        command: &TagCommand<'_>,
    ) -> Result<Seq, String> {
        let seq = self.next_seq(label);
        let packet = RadioPacket::encode(label, seq, command).map_err(|e| e.to_string())?;
        ap.send(packet).map_err(|e| e.to_string())?;
        self.shared.metrics.frames.inc();
        Ok(seq)
    }

    /// Sends what `label` needs: `Fields` over the layer it shows, else the layer's chunks from
    /// `from` (when the tag lacks it) and `Show`.
    fn push(&mut self, ap: &dyn Downlink, label: LabelId, chunks_from: Option<u32>) {
        let Some(plan) = self.plans.get(&label) else {
            return;
        };
        let Some(want) = plan.want.clone() else {
            return;
        };
        let blank = plan.tag.is_some_and(|t| t.layer.is_none())
            || (plan.tag.is_none() && plan.confirmed.is_none());
        let shows_layer = plan.tag_layer() == Some(want.layer);
        let result = (|| -> Result<Seq, String> {
            if chunks_from.is_none() && shows_layer {
                return self.send(ap, label, &TagCommand::Fields(want.fields));
            }
            let from = chunks_from.or(blank.then_some(0));
            if let Some(from) = from {
                let layer = self.layer(&want.name, want.panel)?;
                if layer.hash != want.layer {
                    return Err("the name renders differently than the label confirmed".into());
                }
                for chunk in layer_chunks(layer.hash, &layer.bytes, from) {
                    self.send(ap, label, &TagCommand::LayerChunk(chunk))?;
                }
            }
            self.send(
                ap,
                label,
                &TagCommand::Show {
                    layer: want.layer,
                    fields: want.fields,
                },
            )
        })();
        let now = Instant::now();
        let hub_now = self.time.now();
        let Some(plan) = self.plans.get_mut(&label) else {
            return;
        };
        match result {
            Ok(seq) => {
                plan.watch = Some(seq);
                plan.sent = true;
                plan.attempts = plan.attempts.saturating_add(1);
                plan.next_try = Some(
                    now + self
                        .backoff
                        .delay(plan.attempts, rand::random())
                        .max(self.settings.retry_base / 2),
                );
            }
            Err(e) => {
                plan.last_error = Some(format!("not handed to the access point: {e}"));
                plan.next_try = Some(now + self.settings.resend_after);
            }
        }
        let (attempts, error) = (plan.attempts, plan.last_error.clone());
        self.shared.set_live(label, |l| {
            l.attempts = attempts;
            l.last_attempt = Some(hub_now);
            l.last_error = error;
        });
    }

    /// A status from the tag (check-in, or with an acknowledgement).
    fn observe(&mut self, label: LabelId, status: TagStatus) {
        let hub_now = self.time.now();
        self.shared.set_live(label, |l| {
            l.heard_at = Some(hub_now);
            l.battery_mv = Some(status.battery_mv);
            l.temperature_c = Some(status.temperature_c);
            l.rssi_dbm = Some(status.rssi_dbm);
            l.content = status.content.map(|c| c.to_string());
            l.displayed = status.displayed;
        });
        let Some(plan) = self.plans.get_mut(&label) else {
            return;
        };
        plan.tag = Some(status);
        if let Some(w) = plan.want.clone()
            && w.panel != status.panel
        {
            // The binding named another panel than the tag has: draw for the tag's.
            tracing::warn!(%label, panel = ?status.panel, "the tag's panel differs from its binding");
            let wanted = crate::ledger::WantedPrice {
                version: w.version,
                batch_id: w.batch_id,
                price: w.price,
                name: w.name,
                active_since: w.since,
            };
            let want = self.want_for(label, &wanted, status.panel, w.since);
            let Some(plan) = self.plans.get_mut(&label) else {
                return;
            };
            match want {
                Ok(want) => {
                    plan.want = Some(want);
                    plan.sent = false;
                    plan.next_try = Some(Instant::now());
                }
                Err(e) => tracing::error!(%label, error = %e, "cannot plan the label"),
            }
            return;
        }
        let Some(want) = &plan.want else { return };
        if status.content == Some(want.content) && status.displayed {
            plan.next_try = None;
            plan.watch = None;
            if plan.confirmed.as_ref().map(|c| c.0) == Some(want.content)
                || plan.confirming == Some(want.content)
            {
                return;
            }
            plan.confirming = Some(want.content);
            let update = LabelUpdate::Confirmed {
                label,
                gtin: plan.gtin,
                version: want.version,
                batch_id: want.batch_id.clone(),
                shown: LabelShown {
                    price: want.price,
                    name: want.name.clone(),
                    panel: want.panel,
                    layer: want.layer,
                    fields: want.fields,
                    content: want.content,
                },
            };
            self.queue(update);
        } else if status.content != Some(want.content) && plan.next_try.is_none() {
            // The tag shows something else (replaced, reset) while nothing was planned for it.
            if plan.confirmed.as_ref().map(|c| c.0) == Some(want.content) {
                plan.confirmed = None;
            }
            plan.next_try = Some(Instant::now());
        }
    }

    fn queue(&mut self, u: LabelUpdate) {
        if self.updates.is_empty() {
            self.first_update = Some(Instant::now());
        }
        self.updates.push(u);
    }

    /// Handles one event from the access point.
    pub fn on_event(&mut self, ev: ApEvent, ap: &dyn Downlink) {
        match ev {
            ApEvent::Heard {
                label, seq, report, ..
            } => match report {
                TagReport::Status(status) => {
                    // Acknowledged so the tag stops repeating it.
                    if let Err(e) = self.send(ap, label, &TagCommand::Ack { seq }) {
                        tracing::debug!(%label, error = %e, "status not acknowledged");
                    }
                    self.observe(label, status);
                }
                TagReport::Ack(ack) => {
                    self.observe(label, ack.status);
                    let Some(plan) = self.plans.get_mut(&label) else {
                        return;
                    };
                    let watched = plan.watch == Some(ack.seq);
                    match ack.outcome {
                        Outcome::LayerMissing { have, .. } if watched && plan.pending() => {
                            self.push(ap, label, Some(have));
                        }
                        Outcome::Stale { last } => {
                            // Only ever forward: a late answer to an older frame must not make
                            // the planner reuse seqs the tag has already applied.
                            let ahead = last.0.wrapping_sub(plan.seq);
                            if ahead != 0 && ahead < 0x8000 {
                                plan.seq = last.0;
                            }
                            if watched && plan.pending() {
                                self.push(ap, label, None);
                            }
                        }
                        Outcome::Accepted => {}
                        other if watched => {
                            plan.last_error = Some(format!("the tag answered {other:?}"));
                        }
                        _ => {}
                    }
                }
            },
            ApEvent::Expired { label, .. } => {
                if let Some(plan) = self.plans.get_mut(&label)
                    && plan.pending()
                {
                    plan.last_error = Some("tag did not listen in time".into());
                }
            }
            ApEvent::Sent { label, outcome, .. } => {
                if outcome == SendOutcome::Queued {
                    return;
                }
                if let Some(plan) = self.plans.get_mut(&label)
                    && plan.pending()
                {
                    plan.last_error = Some(format!("access point: {outcome:?}"));
                    let soon = Instant::now() + self.settings.resend_after;
                    plan.next_try = Some(plan.next_try.map_or(soon, |t| t.min(soon)));
                }
            }
            ApEvent::Link(LinkState::Connected { ap: Some(_) }) => {
                // Whatever was in flight ended with the old connection.
                let now = Instant::now();
                for p in self.plans.values_mut() {
                    if p.pending() {
                        p.next_try = Some(now);
                    }
                }
            }
            ApEvent::Link(_) | ApEvent::Status(_) => {}
        }
    }

    /// Pushes what is due, records "not updated" past the deadline, and answers when the planner
    /// next needs to run.
    pub fn tick(&mut self, ap: &dyn Downlink) -> Option<Instant> {
        let now = Instant::now();
        let hub_now = self.time.now();
        let mut due = Vec::new();
        let mut late = Vec::new();
        let mut next: Option<Instant> = None;
        for (label, p) in &self.plans {
            if !p.pending() {
                continue;
            }
            if let Some(t) = p.next_try {
                if t <= now {
                    due.push(*label);
                } else {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            }
            if let Some(w) = &p.want
                && !p.not_updated_queued
                && p.not_updated.is_none_or(|v| v < w.version)
                && hub_now.0.saturating_sub(w.since.0) >= self.settings.not_updated_after_ms
            {
                late.push(*label);
            }
        }
        // Oldest labels first, so a store-wide change goes out in a stable order.
        due.sort_unstable();
        for label in due {
            self.push(ap, label, None);
        }
        for label in late {
            let Some(p) = self.plans.get_mut(&label) else {
                continue;
            };
            let Some(w) = &p.want else { continue };
            // Short: the hub keeps at most 64 characters (the ledger cuts longer ones).
            let reason = match (&p.tag, &p.last_error) {
                (None, Some(e)) => format!("tag never heard; {e}"),
                (None, None) => "tag never heard".to_string(),
                (Some(_), Some(e)) => format!("no confirmation after {} tries; {e}", p.attempts),
                (Some(_), None) => format!("no confirmation after {} tries", p.attempts),
            };
            p.not_updated_queued = true;
            let u = LabelUpdate::NotUpdated {
                label,
                gtin: p.gtin,
                version: w.version,
                batch_id: w.batch_id.clone(),
                reason,
            };
            self.queue(u);
        }
        next
    }

    /// The ledger updates waiting, if it is time to write them.
    pub fn take_updates(&mut self, force: bool) -> Option<Vec<LabelUpdate>> {
        let old = self
            .first_update
            .is_some_and(|t| t.elapsed() >= self.settings.flush_every);
        if self.updates.is_empty()
            || !(force || old || self.updates.len() >= self.settings.flush_max)
        {
            return None;
        }
        self.first_update = None;
        Some(std::mem::take(&mut self.updates))
    }

    /// The ledger wrote (or failed to write) `updates`.
    pub fn committed(&mut self, updates: Vec<LabelUpdate>, ok: bool) {
        let now = Instant::now();
        for u in updates {
            match u {
                LabelUpdate::Confirmed { label, shown, .. } => {
                    let Some(p) = self.plans.get_mut(&label) else {
                        continue;
                    };
                    if p.confirming == Some(shown.content) {
                        p.confirming = None;
                    }
                    if ok {
                        p.confirmed = Some((shown.content, shown.layer, shown.name));
                        if p.want.as_ref().is_some_and(|w| w.content == shown.content) {
                            p.not_updated = None;
                        }
                        self.shared.metrics.confirmations.inc();
                    } else {
                        p.next_try = Some(now + self.settings.resend_after);
                    }
                }
                LabelUpdate::NotUpdated { label, version, .. } => {
                    let Some(p) = self.plans.get_mut(&label) else {
                        continue;
                    };
                    p.not_updated_queued = false;
                    if ok {
                        p.not_updated = Some(version);
                    }
                }
            }
        }
    }

    /// Counts for metrics, benches and tests.
    pub fn stats(&self) -> PlannerStats {
        let mut s = PlannerStats {
            labels: self.plans.len() as u64,
            frames: self.shared.metrics.frames.get(),
            ..PlannerStats::default()
        };
        for p in self.plans.values() {
            let Some(w) = &p.want else { continue };
            if p.pending() {
                s.pending += 1;
                if !p.sent {
                    s.unsent += 1;
                }
                if p.not_updated == Some(w.version) {
                    s.not_updated += 1;
                }
            } else {
                s.confirmed += 1;
            }
        }
        s
    }
}

/// Runs the planner on its own thread until `stop`: loads the ledger's labels, then reloads
/// what changed (active prices, bindings), handles the access point's events, pushes, retries
/// and writes confirmations in batches.
pub(crate) struct PlannerRun {
    pub planner: LabelPlanner,
    pub ledger: Ledger,
    pub ap: ApHandle,
    pub events: Receiver<ApEvent>,
    pub rt: tokio::runtime::Handle,
    /// True (or the sender gone) stops the planner.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

impl PlannerRun {
    pub(crate) fn run(mut self) {
        let mut seen = 0u64;
        let mut loaded = false;
        let mut last_reload = Instant::now() - Duration::from_secs(1);
        let mut last_stats = Instant::now() - Duration::from_secs(1);
        let mut view = self.ledger.subscribe();
        let mut wake: Option<Instant> = None;
        while !(*self.shutdown.borrow() || self.shutdown.has_changed().is_err()) {
            // 1. What changed in the ledger.
            let changed = view.has_changed().unwrap_or(false);
            if (!loaded || changed) && last_reload.elapsed() >= Duration::from_millis(20) {
                last_reload = Instant::now();
                let head = view.borrow_and_update().last_seq;
                match self.reload(loaded, seen) {
                    Ok(through) => {
                        seen = through.max(if loaded { seen } else { head });
                        loaded = true;
                    }
                    Err(e) => tracing::warn!(error = %e, "label planner cannot read the ledger"),
                }
            }
            // 2. Events from the access point, as many as are waiting.
            let timeout = wake
                .map_or(Duration::from_millis(50), |w| {
                    w.saturating_duration_since(Instant::now())
                })
                .min(Duration::from_millis(50));
            match self.events.recv_timeout(timeout) {
                Ok(ev) => {
                    self.on_event(ev);
                    for _ in 0..4_096 {
                        match self.events.try_recv() {
                            Ok(ev) => self.on_event(ev),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    tracing::error!("the access-point driver stopped; the label planner stops");
                    break;
                }
            }
            // 3. Timers: pushes, retries, deadlines.
            if loaded {
                wake = self.planner.tick(&self.ap);
            }
            // 4. Ledger writes, batched.
            self.flush(false);
            if last_stats.elapsed() >= Duration::from_millis(200) {
                last_stats = Instant::now();
                self.shared_stats();
            }
        }
        self.flush(true);
        self.shared_stats();
    }

    fn shared_stats(&self) {
        self.planner.shared.set_stats(self.planner.stats());
        self.planner.shared.set_link(self.ap.status());
    }

    fn on_event(&mut self, ev: ApEvent) {
        if let ApEvent::Link(state) = &ev {
            tracing::info!(?state, "access point link");
            self.planner.shared.set_link(self.ap.status());
        }
        self.planner.on_event(ev, &self.ap);
    }

    fn reload(&mut self, loaded: bool, seen: u64) -> Result<u64, LedgerError> {
        let ledger = self.ledger.clone();
        if !loaded {
            let records = self
                .rt
                .block_on(ledger.labels_touching(Vec::new(), Vec::new(), true))?;
            self.planner.load(records, &[]);
            return Ok(0);
        }
        let changes = self.rt.block_on(ledger.shelf_changes_after(seen))?;
        if !changes.gtins.is_empty() || !changes.labels.is_empty() {
            let records = self.rt.block_on(ledger.labels_touching(
                changes.gtins.clone(),
                changes.labels.clone(),
                false,
            ))?;
            self.planner.load(records, &changes.labels);
            // Hand the change to the access point now, not at the next timer.
            self.planner.tick(&self.ap);
            self.shared_stats();
        }
        Ok(changes.through)
    }

    fn flush(&mut self, force: bool) {
        let Some(updates) = self.planner.take_updates(force) else {
            return;
        };
        let ledger = self.ledger.clone();
        let result = self
            .rt
            .block_on(ledger.commit_label_updates(updates.clone()));
        match result {
            Ok(out) => {
                tracing::debug!(?out, "label updates recorded");
                self.planner.committed(updates, true);
            }
            Err(e) => {
                tracing::warn!(error = %e, "label updates not recorded; retrying");
                self.planner.committed(updates, false);
            }
        }
    }
}
