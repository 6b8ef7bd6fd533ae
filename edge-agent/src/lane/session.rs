//! One shopper's visit to a self-checkout lane, as a pure state machine: no I/O, no clock of its
//! own. The lane task ([`super::runner`]) prices scans from the ledger, weighs the bagging area,
//! talks to the card terminal and the printer, and feeds the results in here; what the screen
//! shows is [`LaneSession::view`].
//!
//! Rules kept here:
//! * A line is priced once, when it is scanned (the price-integrity rule is applied by the
//!   ledger's `charge_price`); what the shopper saw is what the sale commits and the card pays.
//! * Payment can start only with at least one line and no open alert (weight, age, payment).
//! * Once payment has started nothing about the basket changes, until the attendant recovers
//!   the session (after a decline or an unresolved terminal) or the sale is committed.
//! * The bagging area must weigh what the basket's known items weigh, within tolerance; a
//!   mismatch raises an attendant alert that clears when the weight comes back or the attendant
//!   accepts it (the accepted difference is then carried as an offset).
use aisle_protocol::member::MemberClaims;
use aisle_protocol::sync::{MAX_LINE_QTY, MAX_SALE_LINES, SaleLine, SaleRecord, weighed_price};
use aisle_protocol::{Gtin, Money};
use serde::Serialize;

/// Store-local attributes of a product the price data does not carry (yet): its age
/// restriction and what one unit weighs in the bagging area.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ItemRules {
    /// The shopper must be at least this old (attendant checks).
    pub age_min: Option<u8>,
    /// Grams one unit adds to the bagging area; `None` = not known (the check then only looks
    /// for weight going missing).
    pub unit_weight_g: Option<u32>,
}

/// How strict the bagging area is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BaggingRules {
    /// Always allowed either way, in grams.
    pub tolerance_g: u32,
    /// Also allowed: this share of the expected weight, in per mille.
    pub tolerance_permille: u32,
}

impl Default for BaggingRules {
    fn default() -> Self {
        BaggingRules {
            tolerance_g: 30,
            tolerance_permille: 50,
        }
    }
}

/// A priced scan, ready to become a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PricedItem {
    pub gtin: Gtin,
    pub name: String,
    pub unit_price: Money,
    pub price_version: u64,
    /// The price charged is a shelf label's lower one (price integrity).
    pub from_shelf: bool,
    /// A variable-measure barcode's weight (unit price is per kg).
    pub weight_g: Option<u32>,
    /// A variable-measure barcode's printed price (the line costs exactly this).
    pub embedded_price: Option<Money>,
    pub qty: u32,
    pub rules: ItemRules,
}

/// One line on the lane screen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LaneLine {
    /// Stable number of the line in this session (voids name it).
    pub line_no: u32,
    pub gtin: Gtin,
    pub name: String,
    pub qty: u32,
    pub unit_price: Money,
    pub unit_price_decimal: String,
    pub price_version: u64,
    pub from_shelf: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_g: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedded_price: Option<Money>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discount: Option<Money>,
    pub line_total: Money,
    pub line_total_decimal: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_min: Option<u8>,
    /// Who approved the age check (attendant name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_approved_by: Option<String>,
    #[serde(skip)]
    pub unit_weight_g: Option<u32>,
    pub voided: bool,
}

impl LaneLine {
    /// Grams this line should add to the bagging area, if known.
    fn expected_g(&self) -> Option<u64> {
        if self.voided {
            return Some(0);
        }
        match (self.weight_g, self.unit_weight_g) {
            (Some(w), _) => Some(u64::from(w)),
            (None, Some(u)) => Some(u64::from(u) * u64::from(self.qty)),
            (None, None) => None,
        }
    }

    fn gross(&self) -> Option<i64> {
        if let Some(p) = self.embedded_price {
            return Some(p.minor);
        }
        match self.weight_g {
            Some(g) => weighed_price(self.unit_price.minor, g),
            None => self.unit_price.minor.checked_mul(i64::from(self.qty)),
        }
    }
}

/// Why the lane waits for the attendant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "alert")]
pub enum Alert {
    /// The bagging area does not weigh what the basket should. `missing`: less than it should
    /// (the shopper has not bagged yet: they are asked to, an attendant cannot wave it
    /// through); else more (an unscanned item: the attendant's call).
    Weight {
        expected_g: i64,
        actual_g: i64,
        missing: bool,
    },
    /// An age-restricted item needs the attendant's look at the shopper.
    Age { line_no: u32, age_min: u8 },
    /// The card terminal left the payment undecided (no answer, or a charge that could not be
    /// voided): the attendant settles it before anything else happens.
    Payment { reason: String },
    /// A device the lane needs is not working.
    Device { device: String, reason: String },
}

impl Alert {
    /// In plain words, for the screen.
    pub fn say(&self) -> String {
        match self {
            Alert::Weight {
                expected_g,
                actual_g,
                missing: true,
            } => format!(
                "Please put your items in the bagging area ({actual_g} g there, {expected_g} g \
                 expected)."
            ),
            Alert::Weight {
                expected_g,
                actual_g,
                missing: false,
            } => format!(
                "Unexpected weight in the bagging area ({actual_g} g, expected {expected_g} g). \
                 An attendant is coming."
            ),
            Alert::Age { age_min, .. } => {
                format!("This item needs an age check ({age_min}+). An attendant is coming.")
            }
            Alert::Payment { reason } => format!("Payment needs an attendant: {reason}"),
            Alert::Device { device, reason } => {
                format!("The {device} needs an attendant: {reason}")
            }
        }
    }
}

/// Where the visit is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    /// Ready for the first scan.
    Idle,
    Shopping,
    /// The terminal has the amount; the basket is frozen.
    Paying {
        attempt: u32,
    },
    /// The sale is committed; the receipt is out.
    Paid {
        sale_id: String,
        receipt_url: String,
    },
}

/// Why an action was refused, in words for the shopper.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LaneRefusal {
    #[error("{0}")]
    Say(String),
}

fn refuse<T>(s: impl Into<String>) -> Result<T, LaneRefusal> {
    Err(LaneRefusal::Say(s.into()))
}

/// The session's state (see the [module](self)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaneSession {
    phase: Phase,
    lines: Vec<LaneLine>,
    next_line: u32,
    alerts: Vec<Alert>,
    member: Option<MemberClaims>,
    bagging: BaggingRules,
    /// Grams the attendant accepted beyond (or short of) the expected weight.
    bagging_offset_g: i64,
    last_weight_g: Option<i64>,
    /// Payment attempts made in this session (the terminal's sale_ref suffix).
    attempts: u32,
    /// The store's currency (shown as the total of an empty basket).
    currency: aisle_protocol::Currency,
}

/// What the screen shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SessionView {
    #[serde(flatten)]
    pub phase: Phase,
    pub lines: Vec<LaneLine>,
    pub total: Money,
    pub total_decimal: String,
    pub items: u32,
    pub alerts: Vec<AlertView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bagging_g: Option<i64>,
    pub can_pay: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AlertView {
    #[serde(flatten)]
    pub alert: Alert,
    pub message: String,
}

impl LaneSession {
    pub fn new(bagging: BaggingRules, currency: aisle_protocol::Currency) -> Self {
        LaneSession {
            currency,
            phase: Phase::Idle,
            lines: Vec::new(),
            next_line: 1,
            alerts: Vec::new(),
            member: None,
            bagging,
            bagging_offset_g: 0,
            last_weight_g: None,
            attempts: 0,
        }
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    pub fn lines(&self) -> &[LaneLine] {
        &self.lines
    }

    pub fn alerts(&self) -> &[Alert] {
        &self.alerts
    }

    pub fn member(&self) -> Option<&MemberClaims> {
        self.member.as_ref()
    }

    fn frozen(&self) -> Result<(), LaneRefusal> {
        match self.phase {
            Phase::Paying { .. } => refuse("Payment is in progress."),
            Phase::Paid { .. } => refuse("This sale is finished. Start a new one."),
            _ => Ok(()),
        }
    }

    /// The total of the lines not voided (None: no line yet).
    pub fn total(&self) -> Option<Money> {
        sum(self.lines.iter()).ok().flatten()
    }

    /// Items in the basket (weighed lines count one).
    pub fn items(&self) -> u32 {
        self.lines.iter().filter(|l| !l.voided).map(|l| l.qty).sum()
    }

    /// A paid session starts a new visit on the next scan.
    pub fn start_if_done(&mut self) {
        if matches!(self.phase, Phase::Paid { .. }) {
            *self = LaneSession::new(self.bagging, self.currency);
        }
    }

    /// Adds a priced item. An age-restricted item raises an age alert.
    pub fn add(&mut self, item: PricedItem) -> Result<&LaneLine, LaneRefusal> {
        self.start_if_done();
        self.frozen()?;
        if self.lines.iter().filter(|l| !l.voided).count() >= MAX_SALE_LINES {
            return refuse(format!(
                "A basket may have at most {MAX_SALE_LINES} lines; pay for these first."
            ));
        }
        // The price charged: a pre-priced barcode's own (its layout's currency), else the item's.
        let charged = item.embedded_price.unwrap_or(item.unit_price);
        if let Some(t) = self.total()
            && t.currency != charged.currency
        {
            return refuse(format!(
                "{} is priced in {}, the basket in {}: an attendant must help.",
                item.name, charged.currency, t.currency
            ));
        }
        if charged.currency != item.unit_price.currency {
            return refuse(format!(
                "The barcode on {} carries a price in {}, the item is priced in {}: an attendant must help.",
                item.name, charged.currency, item.unit_price.currency
            ));
        }
        let variable = item.weight_g.is_some() || item.embedded_price.is_some();
        let qty = if variable { 1 } else { item.qty };
        if !(1..=MAX_LINE_QTY).contains(&qty) {
            return refuse(format!("Quantity must be 1 to {MAX_LINE_QTY}."));
        }
        let (unit_price, weight_g) = match (item.embedded_price, item.weight_g) {
            // A printed price is the line's price: carried as a one-off unit price.
            (Some(p), _) => (p, None),
            (None, w) => (item.unit_price, w),
        };
        let mut line = LaneLine {
            line_no: self.next_line,
            gtin: item.gtin,
            name: item.name,
            qty,
            unit_price,
            unit_price_decimal: unit_price.decimal(),
            price_version: item.price_version,
            from_shelf: item.from_shelf,
            weight_g,
            embedded_price: item.embedded_price,
            discount: None,
            line_total: Money::new(0, unit_price.currency),
            line_total_decimal: String::new(),
            age_min: item.rules.age_min,
            age_approved_by: None,
            unit_weight_g: item.rules.unit_weight_g,
            voided: false,
        };
        if let Some(g) = item.weight_g
            && line.unit_weight_g.is_none()
        {
            line.unit_weight_g = Some(g);
        }
        self.price_line(&mut line)?;
        if sum(self.lines.iter().chain(std::iter::once(&line))).is_err() {
            return refuse("The basket's total would be too large; an attendant must help.");
        }
        self.next_line += 1;
        if let Some(age) = line.age_min {
            self.alerts.push(Alert::Age {
                line_no: line.line_no,
                age_min: age,
            });
        }
        self.phase = Phase::Shopping;
        self.lines.push(line);
        Ok(self.lines.last().unwrap_or_else(|| unreachable!()))
    }

    /// Sets the line's total from its price, quantity or weight and the member's discount.
    fn price_line(&self, line: &mut LaneLine) -> Result<(), LaneRefusal> {
        let Some(gross) = line.gross() else {
            return refuse("That price is too large to charge.");
        };
        // A price printed on the pack (the deli's) is final: member discounts go on the rest.
        let discount = match (&self.member, line.embedded_price) {
            (Some(m), None) => m.discount_on(gross),
            _ => 0,
        };
        line.discount = (discount > 0).then(|| Money::new(discount, line.unit_price.currency));
        line.line_total = Money::new(gross - discount, line.unit_price.currency);
        line.line_total_decimal = line.line_total.decimal();
        Ok(())
    }

    /// Changes a counted line's quantity (not a weighed or priced-by-barcode one).
    pub fn set_qty(&mut self, line_no: u32, qty: u32) -> Result<&LaneLine, LaneRefusal> {
        self.frozen()?;
        if !(1..=MAX_LINE_QTY).contains(&qty) {
            return refuse(format!("Quantity must be 1 to {MAX_LINE_QTY}."));
        }
        let idx = self.line_index(line_no)?;
        let mut line = self.lines[idx].clone();
        if line.weight_g.is_some() || line.embedded_price.is_some() {
            return refuse("A weighed or pre-priced item cannot change quantity.");
        }
        line.qty = qty;
        self.price_line(&mut line)?;
        let others = self.lines.iter().enumerate().filter(|(i, _)| *i != idx);
        if sum(others.map(|(_, l)| l).chain(std::iter::once(&line))).is_err() {
            return refuse("The basket's total would be too large; an attendant must help.");
        }
        self.lines[idx] = line;
        Ok(&self.lines[idx])
    }

    fn line_index(&self, line_no: u32) -> Result<usize, LaneRefusal> {
        self.lines
            .iter()
            .position(|l| l.line_no == line_no && !l.voided)
            .map_or_else(|| refuse(format!("There is no line {line_no}.")), Ok)
    }

    /// Voids a line (the attendant's decision: the caller checked the PIN). Its age alert goes
    /// with it.
    pub fn void(&mut self, line_no: u32) -> Result<&LaneLine, LaneRefusal> {
        self.frozen()?;
        let idx = self.line_index(line_no)?;
        self.lines[idx].voided = true;
        self.alerts
            .retain(|a| !matches!(a, Alert::Age { line_no: n, .. } if *n == line_no));
        self.recheck_weight();
        Ok(&self.lines[idx])
    }

    /// A member card: every line is repriced with the member's discount.
    pub fn set_member(&mut self, claims: MemberClaims) -> Result<(), LaneRefusal> {
        self.start_if_done();
        self.frozen()?;
        self.member = Some(claims);
        let mut lines = std::mem::take(&mut self.lines);
        let mut out = Ok(());
        for l in lines.iter_mut() {
            if let Err(e) = self.price_line(l) {
                out = Err(e);
            }
        }
        self.lines = lines;
        if self.phase == Phase::Idle {
            self.phase = Phase::Shopping;
        }
        out
    }

    /// Grams the bagging area should hold now, and whether every line's weight is known.
    pub fn expected_weight(&self) -> (u64, bool) {
        let mut sum = 0u64;
        let mut all_known = true;
        for l in &self.lines {
            match l.expected_g() {
                Some(g) => sum += g,
                None => all_known = false,
            }
        }
        (sum, all_known)
    }

    /// A stable weight from the bagging scale, in grams. Raises or clears the weight alert.
    pub fn weight(&mut self, grams: i64) {
        self.last_weight_g = Some(grams);
        self.recheck_weight();
    }

    fn recheck_weight(&mut self) {
        let Some(actual) = self.last_weight_g else {
            return;
        };
        if matches!(self.phase, Phase::Paid { .. } | Phase::Idle) {
            return;
        }
        let (expected, all_known) = self.expected_weight();
        let expected_i = i64::try_from(expected).unwrap_or(i64::MAX);
        let tol = i64::from(self.bagging.tolerance_g)
            + expected_i.saturating_mul(i64::from(self.bagging.tolerance_permille)) / 1000;
        let diff = actual - expected_i - self.bagging_offset_g;
        // With an item of unknown weight, only weight going missing can be checked.
        let off = if all_known {
            diff.abs() > tol
        } else {
            diff < -tol
        };
        self.alerts.retain(|a| !matches!(a, Alert::Weight { .. }));
        if off {
            self.alerts.push(Alert::Weight {
                // What the bag should hold, with what an attendant accepted before.
                expected_g: expected_i.saturating_add(self.bagging_offset_g),
                actual_g: actual,
                missing: diff < 0,
            });
        }
    }

    /// Raises (or replaces) a device alert.
    pub fn device_alert(&mut self, device: &str, reason: String) {
        self.alerts
            .retain(|a| !matches!(a, Alert::Device { device: d, .. } if d == device));
        self.alerts.push(Alert::Device {
            device: device.to_string(),
            reason,
        });
    }

    pub fn clear_device_alert(&mut self, device: &str) {
        self.alerts
            .retain(|a| !matches!(a, Alert::Device { device: d, .. } if d == device));
    }

    /// The attendant approves what the lane waits for: age checks (recorded with their name),
    /// extra weight in the bagging area as it is (kept as an offset), device alerts. Weight
    /// still missing stays (the shopper bags the items; approving an age check must not accept
    /// an unbagged basket), and so does a payment alert: it is settled by
    /// [`LaneSession::recover_payment`]. Returns what was approved.
    pub fn approve(&mut self, attendant: &str) -> Vec<Alert> {
        let mut approved = Vec::new();
        let (expected, _) = self.expected_weight();
        let mut keep = Vec::new();
        for a in std::mem::take(&mut self.alerts) {
            match &a {
                Alert::Age { line_no, .. } => {
                    if let Some(l) = self.lines.iter_mut().find(|l| l.line_no == *line_no) {
                        l.age_approved_by = Some(attendant.to_string());
                    }
                    approved.push(a);
                }
                Alert::Weight {
                    actual_g,
                    missing: false,
                    ..
                } => {
                    self.bagging_offset_g = actual_g - i64::try_from(expected).unwrap_or(0);
                    approved.push(a);
                }
                Alert::Weight { missing: true, .. } => keep.push(a),
                Alert::Device { .. } => approved.push(a),
                Alert::Payment { .. } => keep.push(a),
            }
        }
        self.alerts = keep;
        approved
    }

    /// Whether payment may start: lines, no alert, shopping.
    pub fn can_pay(&self) -> bool {
        self.phase == Phase::Shopping && self.alerts.is_empty() && self.total().is_some()
    }

    /// Starts a payment attempt: freezes the basket and gives the attempt number and amount.
    pub fn begin_payment(&mut self) -> Result<(u32, Money), LaneRefusal> {
        if let Some(a) = self.alerts.first() {
            return refuse(a.say());
        }
        if self.phase != Phase::Shopping {
            return self.frozen().and_then(|()| refuse("Scan an item first."));
        }
        let Some(total) = self.total() else {
            return refuse("Scan an item first.");
        };
        if total.minor <= 0 {
            return refuse("There is nothing to pay.");
        }
        self.attempts += 1;
        self.phase = Phase::Paying {
            attempt: self.attempts,
        };
        Ok((self.attempts, total))
    }

    /// The terminal said no (or could not try): back to shopping, nothing was charged.
    pub fn payment_failed(&mut self) {
        if matches!(self.phase, Phase::Paying { .. }) {
            self.phase = Phase::Shopping;
        }
    }

    /// The terminal left it undecided: the lane stays frozen until the attendant settles it.
    pub fn payment_unresolved(&mut self, reason: String) {
        self.alerts.retain(|a| !matches!(a, Alert::Payment { .. }));
        self.alerts.push(Alert::Payment { reason });
    }

    /// The attendant settled an undecided payment (the lane voided it at the terminal or saw
    /// it declined): back to shopping.
    pub fn recover_payment(&mut self) {
        self.alerts.retain(|a| !matches!(a, Alert::Payment { .. }));
        self.phase = if self.total().is_some() {
            Phase::Shopping
        } else {
            Phase::Idle
        };
    }

    /// The sale record for the lines as priced.
    pub fn record(
        &self,
        sale_id: aisle_protocol::SaleId,
        payment: aisle_protocol::sync::Payment,
    ) -> Option<SaleRecord> {
        let total = self.total()?;
        let lines = self
            .lines
            .iter()
            .filter(|l| !l.voided)
            .map(|l| SaleLine {
                gtin: l.gtin,
                qty: l.qty,
                unit_price: l.unit_price,
                price_version: l.price_version,
                line_total: l.line_total,
                weight_g: l.weight_g,
                discount: l.discount,
            })
            .collect();
        Some(SaleRecord {
            sale_id,
            lines,
            total,
            payment,
        })
    }

    /// The sale is committed: the visit is over.
    pub fn paid(&mut self, sale_id: String, receipt_url: String) {
        self.alerts.clear();
        self.phase = Phase::Paid {
            sale_id,
            receipt_url,
        };
    }

    /// Cancels the visit (attendant): everything goes, nothing was charged.
    pub fn cancel(&mut self) -> Result<(), LaneRefusal> {
        if matches!(self.phase, Phase::Paying { .. }) {
            return refuse("Payment is in progress; settle it first.");
        }
        *self = LaneSession::new(self.bagging, self.currency);
        Ok(())
    }

    /// Whether a payment waits for the attendant (the terminal left it undecided).
    pub fn payment_alert(&self) -> bool {
        self.alerts
            .iter()
            .any(|a| matches!(a, Alert::Payment { .. }))
    }

    /// Ends a visit whose payment the terminal never decided (a manager's last resort when the
    /// terminal cannot even cancel): nothing is committed; the caller records the attempt so
    /// a late approval is reversed.
    pub fn abandon_payment(&mut self) -> Result<(), LaneRefusal> {
        if !(matches!(self.phase, Phase::Paying { .. }) && self.payment_alert()) {
            return refuse("There is no undecided payment to abandon.");
        }
        *self = LaneSession::new(self.bagging, self.currency);
        Ok(())
    }

    pub fn view(&self) -> SessionView {
        let total = self.total().unwrap_or_else(|| Money::new(0, self.currency));
        SessionView {
            phase: self.phase.clone(),
            lines: self.lines.clone(),
            total,
            total_decimal: total.decimal(),
            items: self.items(),
            alerts: self
                .alerts
                .iter()
                .map(|a| AlertView {
                    alert: a.clone(),
                    message: a.say(),
                })
                .collect(),
            member: self.member.as_ref().map(|m| m.member.clone()),
            bagging_g: self.last_weight_g,
            can_pay: self.can_pay(),
        }
    }
}

/// The sum of the lines not voided: `Ok(None)` without one, `Err` on overflow or mixed
/// currencies.
fn sum<'a>(lines: impl Iterator<Item = &'a LaneLine>) -> Result<Option<Money>, ()> {
    let mut total: Option<Money> = None;
    for l in lines.filter(|l| !l.voided) {
        total = Some(match total {
            None => l.line_total,
            Some(t) => t.checked_add(l.line_total).map_err(|_| ())?,
        });
    }
    Ok(total)
}

#[cfg(test)]
mod tests;
