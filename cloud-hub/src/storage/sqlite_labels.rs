//! Shelf labels on SQLite: the SQL behind the label side effects of an upload, the labels read
//! and the batch report's label counts. The rules are in [`crate::labels`].
use std::collections::{BTreeMap, BTreeSet};

use aisle_protocol::sync::LedgerEvent;
use aisle_protocol::{BatchId, GatewayId, StoreId, UtcMillis};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{
    LABEL_COLUMNS, LabelColumns, LabelValues, StorageError, parse_store_id, price_version_of,
    sqlite_security, to_u64,
};
use crate::labels::{LabelBook, LabelCounts, LabelPage, LabelQuery, LabelReport, label_of};
use crate::security::Actor;

fn label_columns(r: &rusqlite::Row<'_>) -> rusqlite::Result<LabelColumns> {
    Ok(LabelColumns {
        label_id: r.get(0)?,
        gtin: r.get(1)?,
        shelf: r.get(2)?,
        bound_at: r.get(3)?,
        confirmed_version: r.get(4)?,
        confirmed_batch: r.get(5)?,
        confirmed_at: r.get(6)?,
        not_updated_version: r.get(7)?,
        not_updated_batch: r.get(8)?,
        not_updated_at: r.get(9)?,
        not_updated_reason: r.get(10)?,
    })
}

/// Applies an upload's new label events (in event order) inside its transaction: each event id
/// once, then the changed rows, then the audit entries of bindings (the last step).
pub(super) fn apply_label_events(
    tx: &Transaction<'_>,
    gateway: &GatewayId,
    store: &str,
    events: &[&LedgerEvent],
    received_at: UtcMillis,
) -> Result<(), StorageError> {
    if events.is_empty() {
        return Ok(());
    }
    let store_id = parse_store_id(store)?;
    let mut fresh = Vec::with_capacity(events.len());
    {
        let mut key = tx.prepare_cached(
            "INSERT INTO label_events (event_id, store_id, label_id, kind) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (event_id) DO NOTHING",
        )?;
        for ev in events {
            let Some(label) = label_of(&ev.body) else {
                continue;
            };
            let n = key.execute(params![
                ev.id.to_hex(),
                store,
                i64::from(label.0),
                ev.body.kind()
            ])?;
            if n == 1 {
                fresh.push(*ev);
            }
        }
    }
    let named: BTreeSet<_> = fresh.iter().filter_map(|ev| label_of(&ev.body)).collect();
    let mut stored = Vec::with_capacity(named.len());
    {
        let mut load = tx.prepare_cached(&format!(
            "SELECT {LABEL_COLUMNS} FROM shelf_labels WHERE store_id = ?1 AND label_id = ?2"
        ))?;
        for label in named {
            if let Some(row) = load
                .query_row(params![store, i64::from(label.0)], label_columns)
                .optional()?
            {
                stored.push(row.decode()?);
            }
        }
    }
    let mut book = LabelBook::new(stored);
    let actor = Actor::gateway(gateway);
    for ev in fresh {
        book.apply(&store_id, &actor, &ev.id, ev.at, &ev.body);
    }
    let changes = book.finish();
    {
        let mut delete =
            tx.prepare_cached("DELETE FROM shelf_labels WHERE store_id = ?1 AND label_id = ?2")?;
        for label in &changes.removed {
            delete.execute(params![store, i64::from(label.0)])?;
        }
        let mut upsert = tx.prepare_cached(&format!(
            "INSERT INTO shelf_labels (store_id, {LABEL_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT (store_id, label_id) DO UPDATE SET
                 gtin = excluded.gtin, shelf = excluded.shelf, bound_at = excluded.bound_at,
                 confirmed_version = excluded.confirmed_version,
                 confirmed_batch = excluded.confirmed_batch, confirmed_at = excluded.confirmed_at,
                 not_updated_version = excluded.not_updated_version,
                 not_updated_batch = excluded.not_updated_batch,
                 not_updated_at = excluded.not_updated_at,
                 not_updated_reason = excluded.not_updated_reason"
        ))?;
        for label in &changes.upserts {
            let v = LabelValues::of(label)?;
            upsert.execute(params![
                store,
                v.label_id,
                v.gtin,
                v.shelf,
                v.bound_at,
                v.confirmed_version,
                v.confirmed_batch,
                v.confirmed_at,
                v.not_updated_version,
                v.not_updated_batch,
                v.not_updated_at,
                v.not_updated_reason
            ])?;
        }
    }
    sqlite_security::append_audits(tx, &changes.audit, received_at)
}

/// Records the version a batch gave (store, GTIN).
pub(super) fn insert_price_version(
    tx: &Connection,
    store: &str,
    gtin: &str,
    version: i64,
    batch: &BatchId,
    effective_at: UtcMillis,
) -> Result<(), StorageError> {
    tx.prepare_cached(
        "INSERT INTO price_versions (store_id, gtin, version, batch_id, effective_at)
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
    )?
    .execute(params![
        store,
        gtin,
        version,
        batch.as_str(),
        effective_at.0
    ])?;
    Ok(())
}

/// Schema 5: the versions issued before it, from the current prices and the changefeed (the
/// versions compaction deleted are gone; labels only compare against the newest ones).
pub(super) fn backfill_price_versions(tx: &Transaction<'_>) -> Result<(), StorageError> {
    tx.execute(
        "INSERT INTO price_versions (store_id, gtin, version, batch_id, effective_at)
         SELECT store_id, gtin, version, batch_id, effective_at FROM prices WHERE true
         ON CONFLICT DO NOTHING",
        [],
    )?;
    let mut read = tx.prepare("SELECT seq, store_id, body FROM changes WHERE kind = 'price'")?;
    let mut insert = tx.prepare(
        "INSERT INTO price_versions (store_id, gtin, version, batch_id, effective_at)
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
    )?;
    let mut rows = read.query([])?;
    while let Some(r) = rows.next()? {
        let (seq, store, body): (i64, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
        if let Some((gtin, version, batch, effective_at)) = price_version_of(seq, &body)? {
            insert.execute(params![store, gtin, version, batch, effective_at])?;
        }
    }
    Ok(())
}

/// A page of `store`'s labels (see [`HubStorage::store_labels`](super::HubStorage::store_labels)).
pub(super) fn read_labels(
    conn: &mut Connection,
    store: &StoreId,
    q: &LabelQuery,
) -> Result<LabelPage, StorageError> {
    let tx = conn.transaction()?;
    let mut stmt = tx.prepare(&format!(
        "SELECT {LABEL_COLUMNS}, current_version,
                (SELECT MIN(p.effective_at) FROM price_versions p
                  WHERE p.store_id = ?1 AND p.gtin = x.gtin AND p.effective_at <= ?2
                    AND p.version > COALESCE(x.confirmed_version, 0))
           FROM (SELECT l.*,
                        (SELECT MAX(p.version) FROM price_versions p
                          WHERE p.store_id = l.store_id AND p.gtin = l.gtin AND p.effective_at <= ?2)
                          AS current_version
                   FROM shelf_labels l WHERE l.store_id = ?1 AND l.label_id >= ?3) x
          WHERE {} ORDER BY label_id LIMIT ?4",
        q.filter.sql()
    ))?;
    let rows = stmt.query_map(
        params![
            store.as_str(),
            q.now.0,
            q.first_id(),
            i64::from(q.limit) + 1
        ],
        |r| {
            Ok((
                label_columns(r)?,
                r.get::<_, Option<i64>>(11)?,
                r.get::<_, Option<i64>>(12)?,
            ))
        },
    )?;
    let mut labels = Vec::new();
    for row in rows {
        let (columns, current, first_unshown) = row?;
        labels.push(LabelReport {
            label: columns.decode()?,
            current_version: current.map(|v| to_u64(v, "version")).transpose()?,
            first_unshown_at: first_unshown.map(UtcMillis),
        });
    }
    let more = labels.len() > q.limit as usize;
    labels.truncate(q.limit as usize);
    Ok(LabelPage { labels, more })
}

/// Label counts per store of the labels bound to the batch's products, against its versions.
pub(super) fn batch_label_counts(
    tx: &Connection,
    batch: &BatchId,
) -> Result<BTreeMap<String, LabelCounts>, StorageError> {
    let mut stmt = tx.prepare(
        "SELECT v.store_id, COUNT(*),
                SUM(CASE WHEN l.confirmed_version >= v.version THEN 1 ELSE 0 END),
                SUM(CASE WHEN COALESCE(l.confirmed_version, 0) < v.version
                          AND l.not_updated_version >= v.version THEN 1 ELSE 0 END)
           FROM price_versions v
           JOIN shelf_labels l ON l.store_id = v.store_id AND l.gtin = v.gtin
          WHERE v.batch_id = ?1
          GROUP BY v.store_id",
    )?;
    let rows = stmt.query_map([batch.as_str()], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (store, bound, confirmed, failed) = row?;
        out.insert(
            store,
            LabelCounts {
                bound: to_u64(bound, "labels")?,
                confirmed: to_u64(confirmed, "labels")?,
                failed: to_u64(failed, "labels")?,
            },
        );
    }
    Ok(out)
}
