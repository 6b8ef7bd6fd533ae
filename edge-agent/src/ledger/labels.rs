//! Shelf labels in the ledger: bindings (label → GTIN, shelf, panel), what each label confirmed
//! it shows, and which labels did not update in time.
//!
//! The four `label_*` events are the only way these tables change ([`apply`], called from
//! `state::apply`, so `ledger verify` replays them). The writer decides whether an event happens
//! ([`bind`], [`unbind`], [`commit_updates`]): an unchanged binding, a confirmation already
//! recorded or a second "not updated" for the same version append nothing.
use std::collections::{HashMap, HashSet};

use aisle_protocol::esl::{ContentHash, DynamicFields, LabelId, LayerHash, Panel};
use aisle_protocol::sync::EventBody;
use aisle_protocol::{BatchId, Gtin, Money, UtcMillis};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::LedgerError;
use super::pickup::Append;
use super::state::{self, StateError, StoredBody};

/// Longest shelf position ("A3-12-4", "Aisle 7 / Bay 3 / Shelf 2"): what the hub takes.
pub const MAX_SHELF_CHARS: usize = aisle_protocol::pickup::MAX_LABEL_CHARS;
/// Most rows one bulk import takes (a large store has ~30,000 labels).
pub const MAX_IMPORT_ROWS: usize = 100_000;

/// The panels by the names the config, the API and the CSV use.
pub const PANEL_NAMES: [(&str, Panel); 4] = [
    ("bw290", Panel::Bw290),
    ("bwr290", Panel::Bwr290),
    ("bw420", Panel::Bw420),
    ("bwr420", Panel::Bwr420),
];

pub fn panel_name(p: Panel) -> &'static str {
    PANEL_NAMES
        .iter()
        .find(|(_, q)| *q == p)
        .map_or("bw290", |(n, _)| n)
}

pub fn parse_panel(s: &str) -> Option<Panel> {
    PANEL_NAMES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(s.trim()))
        .map(|(_, p)| *p)
}

fn panel_sql(s: &str) -> rusqlite::Result<Panel> {
    parse_panel(s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("unknown panel '{s}'").into(),
        )
    })
}

/// What a label shows: everything needed to draw it again exactly (the preview) and to know
/// the price a shopper reads on the shelf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelShown {
    pub price: Money,
    pub name: String,
    pub panel: Panel,
    pub layer: LayerHash,
    pub fields: DynamicFields,
    pub content: ContentHash,
}

/// The store's details of a label event that the protocol event does not carry (see
/// [`StoredBody::label`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelExtra {
    /// `LabelBound`: the tag's panel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panel: Option<Panel>,
    /// `LabelBound`, `LabelUnbound`: the signed-in staff member (or the import's source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// `LabelConfirmed`: what the label confirmed it shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shown: Option<LabelShown>,
}

pub(crate) fn encode_extra(
    body: &EventBody,
    extra: Option<&LabelExtra>,
    obj: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<(), StateError> {
    let bad = |m: &str| Err(StateError::Payload(m.into()));
    let Some(x) = extra else {
        return match body {
            EventBody::LabelBound { .. } => bad("a bound label needs its panel"),
            EventBody::LabelConfirmed { .. } => bad("a confirmed label needs what it shows"),
            _ => Ok(()),
        };
    };
    match body {
        EventBody::LabelBound { .. } if x.panel.is_some() && x.shown.is_none() => {}
        EventBody::LabelUnbound { .. } if x.panel.is_none() && x.shown.is_none() => {}
        EventBody::LabelConfirmed { .. }
            if x.shown.is_some() && x.panel.is_none() && x.by.is_none() => {}
        _ => return bad("label details that do not belong to this event"),
    }
    if let Some(p) = &x.panel {
        obj.insert("panel".into(), to_value(p)?);
    }
    if let Some(b) = &x.by {
        obj.insert("by".into(), serde_json::Value::String(b.clone()));
    }
    if let Some(s) = &x.shown {
        obj.insert("shown".into(), to_value(s)?);
    }
    Ok(())
}

fn to_value(v: &impl Serialize) -> Result<serde_json::Value, StateError> {
    serde_json::to_value(v).map_err(|e| StateError::Payload(e.to_string()))
}

pub(crate) fn decode_extra(
    body: &EventBody,
    payload: &[u8],
) -> Result<Option<LabelExtra>, StateError> {
    match body {
        EventBody::LabelBound { .. }
        | EventBody::LabelUnbound { .. }
        | EventBody::LabelConfirmed { .. } => {
            let x: LabelExtra = serde_json::from_slice(payload)
                .map_err(|e| StateError::Payload(format!("label details: {e}")))?;
            Ok((x != LabelExtra::default()).then_some(x))
        }
        _ => Ok(None),
    }
}

fn label_sql(l: LabelId) -> i64 {
    i64::from(l.0)
}

fn label_from_sql(v: i64) -> rusqlite::Result<LabelId> {
    u32::try_from(v).map(LabelId).map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Integer,
            format!("label id {v} out of range").into(),
        )
    })
}

fn json_sql<T: serde::de::DeserializeOwned>(s: &str) -> rusqlite::Result<T> {
    serde_json::from_str(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn to_json(v: &impl Serialize) -> Result<String, StateError> {
    serde_json::to_string(v).map_err(|e| StateError::Payload(e.to_string()))
}

/// Applies one `label_*` event to the label tables.
pub(crate) fn apply(
    conn: &Connection,
    seq: i64,
    at: UtcMillis,
    ev: &StoredBody,
) -> Result<(), StateError> {
    let extra = ev.label.clone().unwrap_or_default();
    let bound_gtin = |label: LabelId| -> Result<Option<String>, StateError> {
        Ok(conn
            .prepare_cached("SELECT gtin FROM label_bindings WHERE label = ?1")?
            .query_row([label_sql(label)], |r| r.get(0))
            .optional()?)
    };
    match &ev.body {
        EventBody::LabelBound { label, gtin, shelf } => {
            let Some(panel) = extra.panel else {
                return Err(StateError::Payload("a bound label needs its panel".into()));
            };
            let before = bound_gtin(*label)?;
            conn.prepare_cached(
                "INSERT INTO label_bindings (label, gtin, shelf, panel, bound_at, bound_by, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (label) DO UPDATE SET gtin = excluded.gtin, shelf = excluded.shelf,
                     panel = excluded.panel, bound_at = excluded.bound_at,
                     bound_by = excluded.bound_by, seq = excluded.seq",
            )?
            .execute(params![
                label_sql(*label),
                gtin.as_str(),
                shelf,
                panel_name(panel),
                at.0,
                extra.by,
                seq
            ])?;
            if before.is_some_and(|g| g != gtin.as_str()) {
                // A "not updated" was about the old product.
                conn.prepare_cached("DELETE FROM label_not_updated WHERE label = ?1")?
                    .execute([label_sql(*label)])?;
            }
        }
        EventBody::LabelUnbound { label } => {
            if bound_gtin(*label)?.is_none() {
                return Err(StateError::Inconsistent(format!(
                    "label {label} unbound but never bound"
                )));
            }
            for sql in [
                "DELETE FROM label_bindings WHERE label = ?1",
                "DELETE FROM label_shown WHERE label = ?1",
                "DELETE FROM label_not_updated WHERE label = ?1",
            ] {
                conn.prepare_cached(sql)?.execute([label_sql(*label)])?;
            }
        }
        EventBody::LabelConfirmed {
            label,
            gtin,
            version,
            batch_id,
        } => {
            let Some(shown) = extra.shown else {
                return Err(StateError::Payload(
                    "a confirmed label needs what it shows".into(),
                ));
            };
            if bound_gtin(*label)?.as_deref() != Some(gtin.as_str()) {
                return Err(StateError::Inconsistent(format!(
                    "label {label} confirmed {gtin} but is not bound to it"
                )));
            }
            let v = state::version_sql(*version)?;
            conn.prepare_cached(
                "INSERT INTO label_shown (label, gtin, version, batch_id, price_minor, currency,
                                          name, panel, layer, content, fields, confirmed_at, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                 ON CONFLICT (label) DO UPDATE SET gtin = excluded.gtin,
                     version = excluded.version, batch_id = excluded.batch_id,
                     price_minor = excluded.price_minor, currency = excluded.currency,
                     name = excluded.name, panel = excluded.panel, layer = excluded.layer,
                     content = excluded.content, fields = excluded.fields,
                     confirmed_at = excluded.confirmed_at, seq = excluded.seq",
            )?
            .execute(params![
                label_sql(*label),
                gtin.as_str(),
                v,
                batch_id.as_str(),
                shown.price.minor,
                shown.price.currency.code(),
                shown.name,
                panel_name(shown.panel),
                shown.layer.to_string(),
                shown.content.to_string(),
                to_json(&shown.fields)?,
                at.0,
                seq
            ])?;
            conn.prepare_cached(
                "DELETE FROM label_not_updated WHERE label = ?1 AND (gtin != ?2 OR version <= ?3)",
            )?
            .execute(params![label_sql(*label), gtin.as_str(), v])?;
        }
        EventBody::LabelNotUpdated {
            label,
            gtin,
            version,
            batch_id,
            reason,
        } => {
            if bound_gtin(*label)?.as_deref() != Some(gtin.as_str()) {
                return Err(StateError::Inconsistent(format!(
                    "label {label} not updated to {gtin} but is not bound to it"
                )));
            }
            conn.prepare_cached(
                "INSERT INTO label_not_updated (label, gtin, version, batch_id, reason, at, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (label) DO UPDATE SET gtin = excluded.gtin,
                     version = excluded.version, batch_id = excluded.batch_id,
                     reason = excluded.reason, at = excluded.at, seq = excluded.seq",
            )?
            .execute(params![
                label_sql(*label),
                gtin.as_str(),
                state::version_sql(*version)?,
                batch_id.as_str(),
                reason,
                at.0,
                seq
            ])?;
        }
        _ => {
            return Err(StateError::Inconsistent(format!(
                "{} is not a label event",
                ev.body.kind()
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// What the writer is asked, and what it answers.

/// One binding to make: from the API (one row) or an import (every row).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindLabel {
    pub label: LabelId,
    pub gtin: Gtin,
    pub shelf: String,
    pub panel: Panel,
    /// Who bound it (the signed-in staff member, or the import's file name).
    pub by: Option<String>,
}

/// Why one row of a binding request was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BindRowError {
    /// The CSV line (1 = the header) or 0 for a single bind.
    pub line: usize,
    pub label: Option<String>,
    pub problem: BindProblem,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BindProblem {
    /// The row does not parse (label id, GTIN, panel, missing columns).
    Malformed,
    /// The shelf position is empty, too long or has control characters.
    Shelf,
    /// The store has no price (active or coming) for the GTIN.
    NoPrice,
    /// The same label appears twice in one import.
    Duplicate,
}

/// Why a binding change was refused. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum LabelRefusal {
    #[error("{} row(s) refused, nothing was bound", .0.len())]
    Rows(Vec<BindRowError>),
    #[error("label {0} is not bound")]
    NotBound(LabelId),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// A binding as the ledger holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelBinding {
    pub label: LabelId,
    pub gtin: Gtin,
    pub shelf: String,
    pub panel: Panel,
    pub bound_at: UtcMillis,
    pub bound_by: Option<String>,
}

/// What a binding request did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BindOutcome {
    /// Bindings made or changed (a `LabelBound` event each).
    pub bound: usize,
    /// Rows that matched the binding already held (no event).
    pub unchanged: usize,
}

/// What the planner reports for a label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelUpdate {
    /// The tag confirmed (content hash, displayed) that it shows `shown`, price `version`.
    Confirmed {
        label: LabelId,
        gtin: Gtin,
        version: u64,
        batch_id: BatchId,
        shown: LabelShown,
    },
    /// Price `version` did not reach the label before the deadline.
    NotUpdated {
        label: LabelId,
        gtin: Gtin,
        version: u64,
        batch_id: BatchId,
        reason: String,
    },
}

/// What a batch of planner updates did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpdateOutcome {
    pub confirmed: usize,
    pub not_updated: usize,
    /// Already recorded, or about a binding that changed meanwhile: no event.
    pub ignored: usize,
}

fn check_shelf(shelf: &str) -> Result<(), String> {
    let n = shelf.chars().count();
    if shelf.trim().is_empty() || n > MAX_SHELF_CHARS || shelf.chars().any(char::is_control) {
        return Err(format!(
            "shelf position must be 1 to {MAX_SHELF_CHARS} characters without control characters"
        ));
    }
    Ok(())
}

/// Binds every row or none: each row is checked (shelf, price known, duplicates) before anything
/// is written, and every refused row is named.
pub(crate) fn bind(
    conn: &Connection,
    rows: &[(usize, BindLabel)],
    append: &mut Append<'_>,
) -> Result<BindOutcome, LabelRefusal> {
    let mut errors = Vec::new();
    let mut seen: HashMap<LabelId, usize> = HashMap::with_capacity(rows.len());
    let mut priced: HashMap<Gtin, bool> = HashMap::new();
    let mut has_price = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM prices WHERE gtin = ?1)")
        .map_err(LedgerError::from)?;
    for (line, b) in rows {
        let refuse = |problem, message: String| BindRowError {
            line: *line,
            label: Some(b.label.to_string()),
            problem,
            message,
        };
        if let Some(first) = seen.insert(b.label, *line) {
            errors.push(refuse(
                BindProblem::Duplicate,
                format!("label {} is also on line {first}", b.label),
            ));
            continue;
        }
        if let Err(m) = check_shelf(&b.shelf) {
            errors.push(refuse(BindProblem::Shelf, m));
            continue;
        }
        let known = match priced.get(&b.gtin) {
            Some(k) => *k,
            None => {
                let k: bool = has_price
                    .query_row([b.gtin.as_str()], |r| r.get(0))
                    .map_err(LedgerError::from)?;
                priced.insert(b.gtin, k);
                k
            }
        };
        if !known {
            errors.push(refuse(
                BindProblem::NoPrice,
                format!("GTIN {} has no price at this store", b.gtin),
            ));
        }
    }
    drop(has_price);
    if !errors.is_empty() {
        return Err(LabelRefusal::Rows(errors));
    }
    let mut out = BindOutcome::default();
    let mut held = conn
        .prepare_cached("SELECT gtin, shelf, panel FROM label_bindings WHERE label = ?1")
        .map_err(LedgerError::from)?;
    let mut todo = Vec::new();
    for (_, b) in rows {
        let current: Option<(String, String, String)> = held
            .query_row([label_sql(b.label)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
            .map_err(LedgerError::from)?;
        let same = current.is_some_and(|(g, s, p)| {
            g == b.gtin.as_str() && s == b.shelf && p == panel_name(b.panel)
        });
        if same {
            out.unchanged += 1;
        } else {
            todo.push(b);
        }
    }
    drop(held);
    for b in todo {
        append(StoredBody {
            label: Some(LabelExtra {
                panel: Some(b.panel),
                by: b.by.clone(),
                shown: None,
            }),
            ..StoredBody::plain(EventBody::LabelBound {
                label: b.label,
                gtin: b.gtin,
                shelf: b.shelf.clone(),
            })
        })?;
        out.bound += 1;
    }
    Ok(out)
}

pub(crate) fn unbind(
    conn: &Connection,
    label: LabelId,
    by: Option<String>,
    append: &mut Append<'_>,
) -> Result<LabelBinding, LabelRefusal> {
    let Some(b) = binding(conn, label)? else {
        return Err(LabelRefusal::NotBound(label));
    };
    append(StoredBody {
        label: by.map(|by| LabelExtra {
            by: Some(by),
            ..LabelExtra::default()
        }),
        ..StoredBody::plain(EventBody::LabelUnbound { label })
    })?;
    Ok(b)
}

/// Records what the planner saw, each update on its own merits: one already recorded, or about
/// a binding that changed since, appends nothing.
pub(crate) fn commit_updates(
    conn: &Connection,
    updates: Vec<LabelUpdate>,
    append: &mut Append<'_>,
) -> Result<UpdateOutcome, LedgerError> {
    let mut out = UpdateOutcome::default();
    for u in updates {
        let (label, gtin, version) = match &u {
            LabelUpdate::Confirmed {
                label,
                gtin,
                version,
                ..
            }
            | LabelUpdate::NotUpdated {
                label,
                gtin,
                version,
                ..
            } => (*label, *gtin, *version),
        };
        let bound: Option<String> = conn
            .prepare_cached("SELECT gtin FROM label_bindings WHERE label = ?1")?
            .query_row([label_sql(label)], |r| r.get(0))
            .optional()?;
        if bound.as_deref() != Some(gtin.as_str()) {
            out.ignored += 1;
            continue;
        }
        let shown: Option<(String, i64, String)> = conn
            .prepare_cached("SELECT gtin, version, content FROM label_shown WHERE label = ?1")?
            .query_row([label_sql(label)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let v = i64::try_from(version)
            .map_err(|_| LedgerError::Invalid(format!("version {version} out of range")))?;
        match u {
            LabelUpdate::Confirmed {
                label,
                gtin,
                version,
                batch_id,
                shown: what,
            } => {
                let content = what.content.to_string();
                if shown.is_some_and(|(g, sv, c)| g == gtin.as_str() && sv == v && c == content) {
                    out.ignored += 1;
                    continue;
                }
                append(StoredBody {
                    label: Some(LabelExtra {
                        shown: Some(what),
                        ..LabelExtra::default()
                    }),
                    ..StoredBody::plain(EventBody::LabelConfirmed {
                        label,
                        gtin,
                        version,
                        batch_id,
                    })
                })?;
                out.confirmed += 1;
            }
            LabelUpdate::NotUpdated {
                label,
                gtin,
                version,
                batch_id,
                reason,
            } => {
                let already: bool = conn
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM label_not_updated
                                        WHERE label = ?1 AND gtin = ?2 AND version >= ?3)",
                    )?
                    .query_row(params![label_sql(label), gtin.as_str(), v], |r| r.get(0))?;
                let confirmed = shown.is_some_and(|(g, sv, _)| g == gtin.as_str() && sv >= v);
                if already || confirmed {
                    out.ignored += 1;
                    continue;
                }
                // The hub takes a reason of at most MAX_LABEL_CHARS without control characters.
                let max = aisle_protocol::pickup::MAX_LABEL_CHARS;
                let mut reason: String = reason.chars().filter(|c| !c.is_control()).collect();
                if reason.chars().count() > max {
                    reason = reason.chars().take(max - 1).collect();
                    reason.push('…');
                }
                if reason.trim().is_empty() {
                    reason = "not confirmed".into();
                }
                append(StoredBody::plain(EventBody::LabelNotUpdated {
                    label,
                    gtin,
                    version,
                    batch_id,
                    reason,
                }))?;
                out.not_updated += 1;
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Reads.

/// A label's price confirmed on the shelf: what a shopper reads there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfirmedLabel {
    pub gtin: Gtin,
    pub version: u64,
    pub batch_id: BatchId,
    pub shown: LabelShown,
    pub confirmed_at: UtcMillis,
}

/// "Label not updated" as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotUpdatedRecord {
    pub gtin: Gtin,
    pub version: u64,
    pub batch_id: BatchId,
    pub reason: String,
    pub at: UtcMillis,
}

/// The price the store wants on a label: its GTIN's active price.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantedPrice {
    pub version: u64,
    pub batch_id: BatchId,
    pub price: Money,
    pub name: String,
    /// Hub-corrected time it became active here.
    pub active_since: UtcMillis,
}

/// Everything the ledger knows about one bound label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelRecord {
    pub binding: LabelBinding,
    /// The active price of its GTIN (None: no price is active yet).
    pub wanted: Option<WantedPrice>,
    pub confirmed: Option<ConfirmedLabel>,
    pub not_updated: Option<NotUpdatedRecord>,
}

/// Where a label stands, from the ledger alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelStatus {
    /// It confirmed the active price of its product.
    Confirmed,
    /// The active price is on its way.
    Pending,
    /// The active price did not reach it before the deadline (still being retried).
    NotUpdated,
    /// Its product has no active price yet: nothing to show.
    NoPrice,
}

impl LabelStatus {
    pub fn parse(s: &str) -> Option<LabelStatus> {
        match s {
            "confirmed" => Some(LabelStatus::Confirmed),
            "pending" => Some(LabelStatus::Pending),
            "not_updated" => Some(LabelStatus::NotUpdated),
            "no_price" => Some(LabelStatus::NoPrice),
            _ => None,
        }
    }
}

impl LabelRecord {
    pub fn status(&self) -> LabelStatus {
        let Some(w) = &self.wanted else {
            return LabelStatus::NoPrice;
        };
        let shows = |c: &ConfirmedLabel| {
            c.gtin == self.binding.gtin
                && c.version == w.version
                && c.shown.price == w.price
                && c.shown.name == w.name
        };
        if self.confirmed.as_ref().is_some_and(shows) {
            LabelStatus::Confirmed
        } else if self
            .not_updated
            .as_ref()
            .is_some_and(|n| n.gtin == self.binding.gtin && n.version == w.version)
        {
            LabelStatus::NotUpdated
        } else {
            LabelStatus::Pending
        }
    }
}

const RECORD_SQL: &str = "
    SELECT b.label, b.gtin, b.shelf, b.panel, b.bound_at, b.bound_by,
           p.version, p.batch_id, p.price_minor, p.currency, p.name, p.active_since,
           s.gtin, s.version, s.batch_id, s.price_minor, s.currency, s.name, s.panel, s.layer,
           s.content, s.fields, s.confirmed_at,
           n.gtin, n.version, n.batch_id, n.reason, n.at
    FROM label_bindings b
    LEFT JOIN prices p ON p.gtin = b.gtin AND p.state = 'active'
    LEFT JOIN label_shown s ON s.label = b.label
    LEFT JOIN label_not_updated n ON n.label = b.label";

fn hash8_sql(s: &str) -> rusqlite::Result<[u8; 8]> {
    let mut out = [0u8; 8];
    hex::decode_to_slice(s, &mut out).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(out)
}

fn batch_sql(s: &str) -> rusqlite::Result<BatchId> {
    BatchId::parse(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn u64_sql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn record_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LabelRecord> {
    let binding = LabelBinding {
        label: label_from_sql(r.get(0)?)?,
        gtin: state::gtin_sql(&r.get::<_, String>(1)?)?,
        shelf: r.get(2)?,
        panel: panel_sql(&r.get::<_, String>(3)?)?,
        bound_at: UtcMillis(r.get(4)?),
        bound_by: r.get(5)?,
    };
    let wanted = match r.get::<_, Option<i64>>(6)? {
        None => None,
        Some(v) => Some(WantedPrice {
            version: u64_sql(v),
            batch_id: batch_sql(&r.get::<_, String>(7)?)?,
            price: Money::new(r.get(8)?, state::currency_sql(&r.get::<_, String>(9)?)?),
            name: r.get(10)?,
            active_since: UtcMillis(r.get::<_, Option<i64>>(11)?.unwrap_or(0)),
        }),
    };
    let confirmed = match r.get::<_, Option<String>>(12)? {
        None => None,
        Some(g) => Some(ConfirmedLabel {
            gtin: state::gtin_sql(&g)?,
            version: u64_sql(r.get(13)?),
            batch_id: batch_sql(&r.get::<_, String>(14)?)?,
            shown: LabelShown {
                price: Money::new(r.get(15)?, state::currency_sql(&r.get::<_, String>(16)?)?),
                name: r.get(17)?,
                panel: panel_sql(&r.get::<_, String>(18)?)?,
                layer: LayerHash(hash8_sql(&r.get::<_, String>(19)?)?),
                content: ContentHash(hash8_sql(&r.get::<_, String>(20)?)?),
                fields: json_sql(&r.get::<_, String>(21)?)?,
            },
            confirmed_at: UtcMillis(r.get(22)?),
        }),
    };
    let not_updated = match r.get::<_, Option<String>>(23)? {
        None => None,
        Some(g) => Some(NotUpdatedRecord {
            gtin: state::gtin_sql(&g)?,
            version: u64_sql(r.get(24)?),
            batch_id: batch_sql(&r.get::<_, String>(25)?)?,
            reason: r.get(26)?,
            at: UtcMillis(r.get(27)?),
        }),
    };
    Ok(LabelRecord {
        binding,
        wanted,
        confirmed,
        not_updated,
    })
}

pub(crate) fn binding(
    conn: &Connection,
    label: LabelId,
) -> Result<Option<LabelBinding>, LedgerError> {
    Ok(record(conn, label)?.map(|r| r.binding))
}

pub(crate) fn record(
    conn: &Connection,
    label: LabelId,
) -> Result<Option<LabelRecord>, LedgerError> {
    let sql = format!("{RECORD_SQL} WHERE b.label = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([label_sql(label)], record_row)
        .optional()?)
}

/// Bound labels with ids above `after`, by id, at most `limit`.
pub(crate) fn records(
    conn: &Connection,
    after: Option<LabelId>,
    limit: usize,
) -> Result<Vec<LabelRecord>, LedgerError> {
    let sql = format!("{RECORD_SQL} WHERE b.label > ?1 ORDER BY b.label LIMIT ?2");
    let after = after.map_or(-1, label_sql);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![after, limit], record_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The bound labels of these GTINs and these labels (both may be empty), or every bound label
/// when `all`.
pub(crate) fn records_touching(
    conn: &Connection,
    gtins: &[Gtin],
    labels: &[LabelId],
    all: bool,
) -> Result<Vec<LabelRecord>, LedgerError> {
    // Past a few hundred keys one pass over the bindings beats one indexed lookup each.
    if all || gtins.len() + labels.len() > 256 {
        let g: HashSet<Gtin> = gtins.iter().copied().collect();
        let l: HashSet<LabelId> = labels.iter().copied().collect();
        let mut stmt = conn.prepare_cached(&format!("{RECORD_SQL} ORDER BY b.label"))?;
        let rows = stmt.query_map([], record_row)?;
        let mut out = Vec::new();
        for r in rows {
            let r = r?;
            if all || g.contains(&r.binding.gtin) || l.contains(&r.binding.label) {
                out.push(r);
            }
        }
        return Ok(out);
    }
    let mut out: HashMap<LabelId, LabelRecord> = HashMap::new();
    {
        let mut stmt = conn.prepare_cached(&format!("{RECORD_SQL} WHERE b.gtin = ?1"))?;
        for g in gtins {
            for r in stmt.query_map([g.as_str()], record_row)? {
                let r = r?;
                out.insert(r.binding.label, r);
            }
        }
    }
    for l in labels {
        if let Some(r) = record(conn, *l)? {
            out.insert(*l, r);
        }
    }
    let mut v: Vec<LabelRecord> = out.into_values().collect();
    v.sort_by_key(|r| r.binding.label);
    Ok(v)
}

/// What changed on the shelf after ledger seq `after`: GTINs whose active price changed and
/// labels whose binding changed, up to seq `through` (returned).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShelfChanges {
    pub through: u64,
    pub gtins: Vec<Gtin>,
    pub labels: Vec<LabelId>,
}

pub(crate) fn shelf_changes_after(
    conn: &Connection,
    after: u64,
) -> Result<ShelfChanges, LedgerError> {
    let after_i = i64::try_from(after).unwrap_or(i64::MAX);
    let mut out = ShelfChanges {
        through: after,
        ..ShelfChanges::default()
    };
    let mut gtins = HashSet::new();
    let mut labels = HashSet::new();
    // The head first, and only events up to it: one committed later is read next time.
    let last: Option<i64> = conn.query_row("SELECT MAX(seq) FROM events", [], |r| r.get(0))?;
    let last = last.unwrap_or(0);
    let mut stmt = conn.prepare_cached(
        "SELECT seq, kind, json_extract(CAST(payload AS TEXT), '$.gtin'),
                json_extract(CAST(payload AS TEXT), '$.label')
         FROM events WHERE seq > ?1 AND seq <= ?2
             AND kind IN ('price_activated', 'label_bound', 'label_unbound')
         ORDER BY seq",
    )?;
    let mut rows = stmt.query([after_i, last])?;
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(0)?;
        out.through = out.through.max(u64_sql(seq));
        let kind: String = r.get(1)?;
        if kind == "price_activated" {
            if let Some(g) = r.get::<_, Option<String>>(2)? {
                gtins.insert(state::gtin_sql(&g)?);
            }
        } else if let Some(l) = r.get::<_, Option<i64>>(3)? {
            labels.insert(label_from_sql(l)?);
        }
    }
    // Events without shelf effect still move the position.
    out.through = out.through.max(u64_sql(last));
    out.gtins = gtins.into_iter().collect();
    out.labels = labels.into_iter().collect();
    Ok(out)
}

/// Labels per status (from the ledger alone).
pub(crate) fn status_counts(conn: &Connection) -> Result<HashMap<LabelStatus, u64>, LedgerError> {
    let mut out = HashMap::new();
    let mut stmt = conn.prepare_cached(&format!("{RECORD_SQL} ORDER BY b.label"))?;
    for r in stmt.query_map([], record_row)? {
        *out.entry(r?.status()).or_insert(0) += 1;
    }
    Ok(out)
}

/// The lowest price a label bound to `gtin` confirmed it shows, with its version, if any
/// (price integrity: a lane never charges more than the shelf shows).
/// Only labels in `currency` count (a label in another currency cannot be compared).
pub(crate) fn shelf_price(
    conn: &Connection,
    gtin: &Gtin,
    currency: aisle_protocol::Currency,
) -> Result<Option<(Money, u64)>, LedgerError> {
    let row: Option<(i64, i64)> = conn
        .prepare_cached(
            "SELECT s.price_minor, s.version FROM label_shown s
             JOIN label_bindings b ON b.label = s.label AND b.gtin = s.gtin
             WHERE s.gtin = ?1 AND s.currency = ?2 ORDER BY s.price_minor LIMIT 1",
        )?
        .query_row(params![gtin.as_str(), currency.code()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    Ok(row.map(|(minor, v)| (Money::new(minor, currency), u64_sql(v))))
}
