//! Shelf labels as HQ sees them: which label is bound to which product at each store, which
//! price version it confirmed it shows, and which it reported "not updated". Pure; the storage
//! reads and writes the rows (`shelf_labels`, `price_versions`, `label_events`).
//!
//! The stores send `label_bound`, `label_unbound`, `label_confirmed` and `label_not_updated`
//! events; [`LabelBook::apply`] is the one definition of how each changes a store's labels:
//! - A binding to another GTIN (or a new label) starts afresh: nothing confirmed, nothing
//!   failed. A binding to the same GTIN (the label moved shelf) keeps what it showed.
//! - A confirmation counts only for the GTIN the label is bound to, and only if it is newer
//!   than what the label confirmed before (an older one arriving late changes nothing). It
//!   clears a "not updated" report for the same or an older version.
//! - A "not updated" report counts only while the label has not confirmed that version or a
//!   newer one; the first report of a version keeps its time (how long it has been failing).
//!
//! What a label shows against what it should show (`current` = the highest price version of
//! its GTIN at its store whose `effective_at` has passed):
//! - confirmed: its confirmed version >= current;
//! - failed: not confirmed, and it reported "not updated" for the current version or a newer one;
//! - pending: neither (the store is still trying);
//! - unpriced: the hub has no effective price for its GTIN at that store.
//!
//! `stale_since` of a pending or failed label: the earliest `effective_at` among the price
//! versions newer than the one it confirmed that have taken effect (from then on it showed an
//! old price), or its `bound_at` if later (it was not on the shelf before).
use std::collections::{BTreeMap, BTreeSet};

use aisle_protocol::esl::LabelId;
use aisle_protocol::sync::EventBody;
use aisle_protocol::{BatchId, EventId, Gtin, StoreId, UtcMillis};
use serde_json::json;

use crate::security::{Actor, AuditInput, action};

/// Most labels one store read returns.
pub const MAX_LABELS_PER_PAGE: u32 = 5_000;
/// Labels per page unless the caller says otherwise.
pub const DEFAULT_LABELS_PER_PAGE: u32 = 500;

/// A price version a label confirmed it shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shown {
    pub version: u64,
    pub batch_id: BatchId,
    /// The store's time of the confirmation.
    pub at: UtcMillis,
}

/// The store's "label not updated" for a price version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotUpdated {
    pub version: u64,
    pub batch_id: BatchId,
    /// The store's time of its first report for this version.
    pub at: UtcMillis,
    pub reason: String,
}

/// A bound shelf label at one store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShelfLabel {
    pub label: LabelId,
    pub gtin: Gtin,
    pub shelf: String,
    /// Since when the label has been bound to this GTIN (the store's time).
    pub bound_at: UtcMillis,
    pub confirmed: Option<Shown>,
    pub not_updated: Option<NotUpdated>,
}

/// What applying a store's label events changes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelChanges {
    /// Rows to write (new or changed), by label.
    pub upserts: Vec<ShelfLabel>,
    /// Stored labels no longer bound (their rows go).
    pub removed: Vec<LabelId>,
    /// One entry per binding or unbinding, in event order.
    pub audit: Vec<AuditInput>,
    /// Confirmations and reports that changed nothing (older, or for another product).
    pub ignored: u64,
}

/// The labels of one store touched by an upload: loaded, changed event by event, then written.
#[derive(Clone, Debug, Default)]
pub struct LabelBook {
    before: BTreeMap<LabelId, ShelfLabel>,
    now: BTreeMap<LabelId, ShelfLabel>,
    touched: BTreeSet<LabelId>,
    audit: Vec<AuditInput>,
    ignored: u64,
}

/// The label a label event is about, or `None` for other events.
pub fn label_of(body: &EventBody) -> Option<LabelId> {
    match body {
        EventBody::LabelBound { label, .. }
        | EventBody::LabelUnbound { label }
        | EventBody::LabelConfirmed { label, .. }
        | EventBody::LabelNotUpdated { label, .. } => Some(*label),
        _ => None,
    }
}

impl LabelBook {
    /// Starts from the stored rows of the labels the upload names.
    pub fn new(stored: impl IntoIterator<Item = ShelfLabel>) -> Self {
        let before: BTreeMap<_, _> = stored.into_iter().map(|l| (l.label, l)).collect();
        LabelBook {
            now: before.clone(),
            before,
            ..LabelBook::default()
        }
    }

    /// Applies one new label event of `store`, sent by `actor` at the store's time `at`.
    /// Other events are ignored.
    pub fn apply(
        &mut self,
        store: &StoreId,
        actor: &Actor,
        event_id: &EventId,
        at: UtcMillis,
        body: &EventBody,
    ) {
        let Some(label) = label_of(body) else {
            return;
        };
        self.touched.insert(label);
        match body {
            EventBody::LabelBound { gtin, shelf, .. } => {
                let row = match self.now.remove(&label) {
                    Some(mut same) if same.gtin == *gtin => {
                        same.shelf.clone_from(shelf);
                        same
                    }
                    _ => ShelfLabel {
                        label,
                        gtin: *gtin,
                        shelf: shelf.clone(),
                        bound_at: at,
                        confirmed: None,
                        not_updated: None,
                    },
                };
                self.now.insert(label, row);
                self.audit.push(AuditInput::new(
                    actor,
                    action::LABEL_BOUND,
                    format!("{store}/{label}"),
                    json!({"gtin": gtin.as_str(), "shelf": shelf, "event_id": event_id.to_hex(), "at": at.0}),
                ));
            }
            EventBody::LabelUnbound { .. } => {
                let was = self.now.remove(&label);
                self.audit.push(AuditInput::new(
                    actor,
                    action::LABEL_UNBOUND,
                    format!("{store}/{label}"),
                    json!({
                        "gtin": was.as_ref().map(|l| l.gtin.as_str().to_owned()),
                        "event_id": event_id.to_hex(),
                        "at": at.0,
                    }),
                ));
            }
            EventBody::LabelConfirmed {
                gtin,
                version,
                batch_id,
                ..
            } => {
                let changed = self.now.get_mut(&label).is_some_and(|row| {
                    row.gtin == *gtin
                        && confirm(
                            row,
                            Shown {
                                version: *version,
                                batch_id: batch_id.clone(),
                                at,
                            },
                        )
                });
                if !changed {
                    self.ignored += 1;
                }
            }
            EventBody::LabelNotUpdated {
                gtin,
                version,
                batch_id,
                reason,
                ..
            } => {
                let changed = self.now.get_mut(&label).is_some_and(|row| {
                    row.gtin == *gtin
                        && report_not_updated(
                            row,
                            NotUpdated {
                                version: *version,
                                batch_id: batch_id.clone(),
                                at,
                                reason: reason.clone(),
                            },
                        )
                });
                if !changed {
                    self.ignored += 1;
                }
            }
            _ => {}
        }
    }

    /// The rows to write and delete, and the audit entries.
    pub fn finish(self) -> LabelChanges {
        let mut out = LabelChanges {
            audit: self.audit,
            ignored: self.ignored,
            ..LabelChanges::default()
        };
        for label in self.touched {
            match (self.before.get(&label), self.now.get(&label)) {
                (Some(_), None) => out.removed.push(label),
                (None, None) => {}
                (Some(before), Some(now)) if before == now => {}
                (_, Some(now)) => out.upserts.push(now.clone()),
            }
        }
        out
    }
}

/// Records a confirmation if it is newer than the label's; returns whether anything changed.
fn confirm(row: &mut ShelfLabel, shown: Shown) -> bool {
    if row
        .confirmed
        .as_ref()
        .is_some_and(|c| c.version >= shown.version)
    {
        return false;
    }
    if row
        .not_updated
        .as_ref()
        .is_some_and(|n| n.version <= shown.version)
    {
        row.not_updated = None;
    }
    row.confirmed = Some(shown);
    true
}

/// Records a "not updated" report unless the label confirmed that version (or newer) or a report
/// of that version (or newer) is already there; returns whether anything changed.
fn report_not_updated(row: &mut ShelfLabel, report: NotUpdated) -> bool {
    let confirmed = row.confirmed.as_ref().map_or(0, |c| c.version);
    let reported = row.not_updated.as_ref().map_or(0, |n| n.version);
    if report.version <= confirmed || report.version <= reported {
        return false;
    }
    row.not_updated = Some(report);
    true
}

/// Which labels a store read lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelFilter {
    All,
    Confirmed,
    /// Pending or failed: not showing the current price.
    Stale,
    Pending,
    Failed,
}

impl LabelFilter {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(LabelFilter::All),
            "confirmed" => Ok(LabelFilter::Confirmed),
            "stale" => Ok(LabelFilter::Stale),
            "pending" => Ok(LabelFilter::Pending),
            "failed" => Ok(LabelFilter::Failed),
            other => Err(format!(
                "status '{}' is not one of all, confirmed, stale, pending, failed",
                other.chars().take(32).collect::<String>()
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LabelFilter::All => "all",
            LabelFilter::Confirmed => "confirmed",
            LabelFilter::Stale => "stale",
            LabelFilter::Pending => "pending",
            LabelFilter::Failed => "failed",
        }
    }

    /// The SQL condition over the columns `current_version`, `confirmed_version` and
    /// `not_updated_version` (the same text on both backends); it must agree with
    /// [`LabelReport::state`].
    pub(crate) fn sql(self) -> &'static str {
        match self {
            LabelFilter::All => "1 = 1",
            LabelFilter::Confirmed => {
                "current_version IS NOT NULL AND COALESCE(confirmed_version, 0) >= current_version"
            }
            LabelFilter::Stale => "COALESCE(confirmed_version, 0) < current_version",
            LabelFilter::Pending => {
                "COALESCE(confirmed_version, 0) < current_version AND COALESCE(not_updated_version, 0) < current_version"
            }
            LabelFilter::Failed => {
                "COALESCE(confirmed_version, 0) < current_version AND COALESCE(not_updated_version, 0) >= current_version"
            }
        }
    }
}

/// A store read of its labels: `filter`, label ids after `after`, at most `limit` of them, with
/// `now` deciding which prices have taken effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelQuery {
    pub filter: LabelFilter,
    pub after: Option<LabelId>,
    pub limit: u32,
    pub now: UtcMillis,
}

impl LabelQuery {
    /// `limit` is clamped to 1..=[`MAX_LABELS_PER_PAGE`].
    pub fn new(filter: LabelFilter, after: Option<LabelId>, limit: u32, now: UtcMillis) -> Self {
        LabelQuery {
            filter,
            after,
            limit: limit.clamp(1, MAX_LABELS_PER_PAGE),
            now,
        }
    }

    /// The first label id to list (SQL `label_id >= ?`).
    pub(crate) fn first_id(&self) -> i64 {
        self.after.map_or(0, |a| i64::from(a.0) + 1)
    }
}

/// Where a label stands against the current price of its product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelState {
    Confirmed,
    Pending,
    Failed,
    Unpriced,
}

impl LabelState {
    pub fn as_str(self) -> &'static str {
        match self {
            LabelState::Confirmed => "confirmed",
            LabelState::Pending => "pending",
            LabelState::Failed => "failed",
            LabelState::Unpriced => "unpriced",
        }
    }
}

/// One label as a store read returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelReport {
    pub label: ShelfLabel,
    /// The highest version of the GTIN's price at the store that has taken effect.
    pub current_version: Option<u64>,
    /// The earliest `effective_at` of the versions newer than the confirmed one that have
    /// taken effect.
    pub first_unshown_at: Option<UtcMillis>,
}

impl LabelReport {
    pub fn state(&self) -> LabelState {
        let Some(current) = self.current_version else {
            return LabelState::Unpriced;
        };
        let confirmed = self.label.confirmed.as_ref().map_or(0, |c| c.version);
        let reported = self.label.not_updated.as_ref().map_or(0, |n| n.version);
        if confirmed >= current {
            LabelState::Confirmed
        } else if reported >= current {
            LabelState::Failed
        } else {
            LabelState::Pending
        }
    }

    /// Since when the label has shown an old price (pending or failed labels only).
    pub fn stale_since(&self) -> Option<UtcMillis> {
        match self.state() {
            LabelState::Pending | LabelState::Failed => Some(
                self.first_unshown_at
                    .map_or(self.label.bound_at, |t| t.max(self.label.bound_at)),
            ),
            LabelState::Confirmed | LabelState::Unpriced => None,
        }
    }

    /// Whole seconds from [`stale_since`](Self::stale_since) to `now` (0 if it is later).
    pub fn stale_for_s(&self, now: UtcMillis) -> Option<u64> {
        self.stale_since()
            .map(|t| u64::try_from(now.0.saturating_sub(t.0) / 1_000).unwrap_or(0))
    }
}

/// A page of a store's labels, in label id order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelPage {
    pub labels: Vec<LabelReport>,
    /// More labels match after the last one.
    pub more: bool,
}

/// Labels of one store bound to the products of one price batch, against that batch's versions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LabelCounts {
    /// Labels bound to a product of the batch.
    pub bound: u64,
    /// Confirmed the batch's version or a newer one.
    pub confirmed: u64,
    /// Not confirmed, and reported "not updated" for the batch's version or a newer one.
    pub failed: u64,
}

impl LabelCounts {
    /// Neither confirmed nor failed: the store is still trying.
    pub fn pending(&self) -> u64 {
        self.bound
            .saturating_sub(self.confirmed)
            .saturating_sub(self.failed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn g(n: u64) -> Gtin {
        Gtin::from_index(n).unwrap()
    }

    fn batch() -> BatchId {
        BatchId::parse("pb-1").unwrap()
    }

    fn bound(label: u32, gtin: u64) -> EventBody {
        EventBody::LabelBound {
            label: LabelId(label),
            gtin: g(gtin),
            shelf: "A1".into(),
        }
    }

    fn confirmed(label: u32, gtin: u64, version: u64) -> EventBody {
        EventBody::LabelConfirmed {
            label: LabelId(label),
            gtin: g(gtin),
            version,
            batch_id: batch(),
        }
    }

    fn not_updated(label: u32, gtin: u64, version: u64) -> EventBody {
        EventBody::LabelNotUpdated {
            label: LabelId(label),
            gtin: g(gtin),
            version,
            batch_id: batch(),
            reason: "no ack".into(),
        }
    }

    /// Applies `events` (at times 1, 2, ...) to `stored`; returns the changes.
    fn run(stored: Vec<ShelfLabel>, events: &[EventBody]) -> LabelChanges {
        let mut book = LabelBook::new(stored);
        let store = StoreId::parse("S001").unwrap();
        for (i, body) in events.iter().enumerate() {
            let id = EventId::from_bytes([i as u8; 16]);
            book.apply(&store, &Actor::hub(), &id, UtcMillis(i as i64 + 1), body);
        }
        book.finish()
    }

    #[test]
    fn confirmations_only_move_forward_and_clear_older_reports() {
        let c = run(
            vec![],
            &[
                bound(1, 1),
                not_updated(1, 1, 5),
                confirmed(1, 1, 7),
                confirmed(1, 1, 6),
                not_updated(1, 1, 7),
                not_updated(1, 1, 8),
            ],
        );
        assert_eq!(c.upserts.len(), 1);
        let row = &c.upserts[0];
        assert_eq!(row.confirmed.as_ref().unwrap().version, 7);
        assert_eq!(row.not_updated.as_ref().unwrap().version, 8);
        assert_eq!(row.bound_at, UtcMillis(1));
        assert_eq!(
            c.ignored, 2,
            "the older confirmation and the confirmed report"
        );
        assert_eq!(c.audit.len(), 1);
        assert_eq!(c.audit[0].subject, "S001/00000001");
    }

    #[test]
    fn rebinding_to_another_product_starts_afresh_and_a_shelf_move_does_not() {
        let stored = run(vec![], &[bound(1, 1), confirmed(1, 1, 7)]).upserts;
        let moved = run(
            stored.clone(),
            &[EventBody::LabelBound {
                label: LabelId(1),
                gtin: g(1),
                shelf: "B2".into(),
            }],
        );
        assert_eq!(moved.upserts[0].shelf, "B2");
        assert_eq!(moved.upserts[0].confirmed.as_ref().unwrap().version, 7);
        assert_eq!(moved.upserts[0].bound_at, stored[0].bound_at);
        let rebound = run(stored.clone(), &[bound(1, 2), confirmed(1, 1, 9)]);
        assert_eq!(rebound.upserts[0].gtin, g(2));
        assert_eq!(rebound.upserts[0].confirmed, None);
        assert_eq!(rebound.ignored, 1, "a confirmation of the old product");
        // Nothing changed: nothing to write.
        let same = run(stored.clone(), &[confirmed(1, 1, 3)]);
        assert!(same.upserts.is_empty() && same.removed.is_empty());
    }

    #[test]
    fn unbinding_removes_and_later_reports_of_an_unbound_label_are_ignored() {
        let stored = run(vec![], &[bound(1, 1)]).upserts;
        let c = run(
            stored,
            &[
                EventBody::LabelUnbound { label: LabelId(1) },
                confirmed(1, 1, 2),
            ],
        );
        assert_eq!(c.removed, vec![LabelId(1)]);
        assert!(c.upserts.is_empty());
        assert_eq!(c.ignored, 1);
        assert_eq!(c.audit[0].action, action::LABEL_UNBOUND);
        let c = run(vec![], &[confirmed(9, 1, 2)]);
        assert_eq!((c.removed, c.ignored), (vec![], 1));
    }

    fn report(confirmed: Option<u64>, reported: Option<u64>, current: Option<u64>) -> LabelReport {
        LabelReport {
            label: ShelfLabel {
                label: LabelId(1),
                gtin: g(1),
                shelf: "A1".into(),
                bound_at: UtcMillis(10_000),
                confirmed: confirmed.map(|version| Shown {
                    version,
                    batch_id: batch(),
                    at: UtcMillis(0),
                }),
                not_updated: reported.map(|version| NotUpdated {
                    version,
                    batch_id: batch(),
                    at: UtcMillis(0),
                    reason: "x".into(),
                }),
            },
            current_version: current,
            first_unshown_at: Some(UtcMillis(40_000)),
        }
    }

    #[test]
    fn states_and_how_long_a_label_has_been_stale() {
        assert_eq!(
            report(Some(5), None, Some(5)).state(),
            LabelState::Confirmed
        );
        assert_eq!(
            report(Some(6), None, Some(5)).state(),
            LabelState::Confirmed
        );
        assert_eq!(
            report(Some(4), Some(5), Some(5)).state(),
            LabelState::Failed
        );
        assert_eq!(
            report(Some(4), Some(4), Some(5)).state(),
            LabelState::Pending
        );
        assert_eq!(report(None, None, Some(5)).state(), LabelState::Pending);
        assert_eq!(report(None, None, None).state(), LabelState::Unpriced);
        let stale = report(None, None, Some(5));
        assert_eq!(stale.stale_since(), Some(UtcMillis(40_000)));
        assert_eq!(stale.stale_for_s(UtcMillis(130_999)), Some(90));
        // Bound after the price took effect: stale since it was bound.
        let mut late = stale.clone();
        late.label.bound_at = UtcMillis(50_000);
        assert_eq!(late.stale_since(), Some(UtcMillis(50_000)));
        assert_eq!(
            report(Some(5), None, Some(5)).stale_for_s(UtcMillis(0)),
            None
        );
    }

    #[test]
    fn filters_parse_and_limits_clamp() {
        for f in ["all", "confirmed", "stale", "pending", "failed"] {
            assert_eq!(LabelFilter::parse(f).unwrap().as_str(), f);
        }
        assert!(LabelFilter::parse("broken").is_err());
        let q = LabelQuery::new(LabelFilter::All, Some(LabelId(7)), 0, UtcMillis(0));
        assert_eq!((q.limit, q.first_id()), (1, 8));
        assert_eq!(
            LabelQuery::new(LabelFilter::All, None, u32::MAX, UtcMillis(0)).limit,
            MAX_LABELS_PER_PAGE
        );
        let counts = LabelCounts {
            bound: 5,
            confirmed: 2,
            failed: 1,
        };
        assert_eq!(counts.pending(), 2);
    }
}
