//! Shelf labels on PostgreSQL: the SQL behind the label side effects of an upload, the labels
//! read and the batch report's label counts. The rules are in [`crate::labels`].
//!
//! An upload applies its label events under [`LABELS_LOCK`] for its store, taken after the
//! gateway row, `SALES_LOCK` and `PICKUP_LOCK` and before `AUDIT_LOCK`: two gateways of one
//! store never interleave their read-modify-write of the same labels. Whatever the upload's
//! size, that is a fixed number of statements: key the event ids, load the labels, delete,
//! upsert, audit.
use std::collections::{BTreeMap, BTreeSet, HashSet};

use aisle_protocol::sync::LedgerEvent;
use aisle_protocol::{BatchId, GatewayId, StoreId, UtcMillis};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::{
    LABEL_COLUMNS, LabelColumns, LabelValues, StorageError, parse_store_id, postgres_security,
    price_version_of, to_u64,
};
use crate::labels::{LabelBook, LabelCounts, LabelPage, LabelQuery, LabelReport, label_of};
use crate::security::Actor;

/// Advisory lock namespace (second key: hash of the store id) held while an upload applies its
/// store's label events.
pub const LABELS_LOCK: i32 = 0x4c41_424c;

fn label_columns(r: &Row) -> Result<LabelColumns, StorageError> {
    Ok(LabelColumns {
        label_id: r.try_get("label_id")?,
        gtin: r.try_get("gtin")?,
        shelf: r.try_get("shelf")?,
        bound_at: r.try_get("bound_at")?,
        confirmed_version: r.try_get("confirmed_version")?,
        confirmed_batch: r.try_get("confirmed_batch")?,
        confirmed_at: r.try_get("confirmed_at")?,
        not_updated_version: r.try_get("not_updated_version")?,
        not_updated_batch: r.try_get("not_updated_batch")?,
        not_updated_at: r.try_get("not_updated_at")?,
        not_updated_reason: r.try_get("not_updated_reason")?,
    })
}

/// Applies an upload's new label events (in event order) inside its transaction: each event id
/// once, then the changed rows, then the audit entries of bindings (the last step).
pub(super) async fn apply_label_events<C: GenericClient>(
    tx: &C,
    gateway: &GatewayId,
    store: &str,
    events: &[&LedgerEvent],
    received_at: UtcMillis,
) -> Result<(), StorageError> {
    if events.is_empty() {
        return Ok(());
    }
    let store_id = parse_store_id(store)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&LABELS_LOCK, &store],
    )
    .await?;
    let mut ids = Vec::with_capacity(events.len());
    let mut labels = Vec::with_capacity(events.len());
    let mut kinds = Vec::with_capacity(events.len());
    for ev in events {
        if let Some(label) = label_of(&ev.body) {
            ids.push(ev.id.to_hex());
            labels.push(i64::from(label.0));
            kinds.push(ev.body.kind());
        }
    }
    let keyed = tx
        .query(
            "INSERT INTO label_events (event_id, store_id, label_id, kind)
             SELECT t.id, $1, t.label, t.kind
               FROM unnest($2::text[], $3::int8[], $4::text[]) AS t(id, label, kind)
             ON CONFLICT (event_id) DO NOTHING
             RETURNING event_id",
            &[&store, &ids, &labels, &kinds],
        )
        .await?;
    let mut new_ids: HashSet<String> = keyed
        .iter()
        .map(|r| r.try_get::<_, String>(0))
        .collect::<Result<_, _>>()?;
    // Each new id once, at its first occurrence (an upload could repeat an id).
    let fresh: Vec<&LedgerEvent> = events
        .iter()
        .copied()
        .filter(|ev| new_ids.remove(&ev.id.to_hex()))
        .collect();
    let named: Vec<i64> = fresh
        .iter()
        .filter_map(|ev| label_of(&ev.body))
        .map(|l| i64::from(l.0))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let rows = tx
        .query(
            &format!(
                "SELECT {LABEL_COLUMNS} FROM shelf_labels WHERE store_id = $1 AND label_id = ANY($2::int8[])"
            ),
            &[&store, &named],
        )
        .await?;
    let mut stored = Vec::with_capacity(rows.len());
    for r in &rows {
        stored.push(label_columns(r)?.decode()?);
    }
    let mut book = LabelBook::new(stored);
    let actor = Actor::gateway(gateway);
    for ev in fresh {
        book.apply(&store_id, &actor, &ev.id, ev.at, &ev.body);
    }
    let changes = book.finish();
    if !changes.removed.is_empty() {
        let removed: Vec<i64> = changes.removed.iter().map(|l| i64::from(l.0)).collect();
        tx.execute(
            "DELETE FROM shelf_labels WHERE store_id = $1 AND label_id = ANY($2::int8[])",
            &[&store, &removed],
        )
        .await?;
    }
    if !changes.upserts.is_empty() {
        let values = changes
            .upserts
            .iter()
            .map(LabelValues::of)
            .collect::<Result<Vec<_>, _>>()?;
        let col = |f: fn(&LabelValues<'_>) -> i64| values.iter().map(f).collect::<Vec<i64>>();
        let opt = |f: fn(&LabelValues<'_>) -> Option<i64>| {
            values.iter().map(f).collect::<Vec<Option<i64>>>()
        };
        let label_ids = col(|v| v.label_id);
        let bound_at = col(|v| v.bound_at);
        let gtins: Vec<&str> = values.iter().map(|v| v.gtin).collect();
        let shelves: Vec<&str> = values.iter().map(|v| v.shelf).collect();
        let cv = opt(|v| v.confirmed_version);
        let cb: Vec<Option<&str>> = values.iter().map(|v| v.confirmed_batch).collect();
        let ca = opt(|v| v.confirmed_at);
        let nv = opt(|v| v.not_updated_version);
        let nb: Vec<Option<&str>> = values.iter().map(|v| v.not_updated_batch).collect();
        let na = opt(|v| v.not_updated_at);
        let nr: Vec<Option<&str>> = values.iter().map(|v| v.not_updated_reason).collect();
        tx.execute(
            &format!(
                "INSERT INTO shelf_labels (store_id, {LABEL_COLUMNS})
                 SELECT $1, t.* FROM unnest($2::int8[], $3::text[], $4::text[], $5::int8[],
                        $6::int8[], $7::text[], $8::int8[], $9::int8[], $10::text[], $11::int8[], $12::text[])
                   AS t({LABEL_COLUMNS})
                 ON CONFLICT (store_id, label_id) DO UPDATE SET
                     gtin = excluded.gtin, shelf = excluded.shelf, bound_at = excluded.bound_at,
                     confirmed_version = excluded.confirmed_version,
                     confirmed_batch = excluded.confirmed_batch, confirmed_at = excluded.confirmed_at,
                     not_updated_version = excluded.not_updated_version,
                     not_updated_batch = excluded.not_updated_batch,
                     not_updated_at = excluded.not_updated_at,
                     not_updated_reason = excluded.not_updated_reason"
            ),
            &[
                &store, &label_ids, &gtins, &shelves, &bound_at, &cv, &cb, &ca, &nv, &nb, &na, &nr,
            ],
        )
        .await?;
    }
    postgres_security::append_audits(tx, &changes.audit, received_at).await
}

/// Records the versions a batch gave one store's GTINs.
pub(super) async fn insert_price_versions<C: GenericClient>(
    tx: &C,
    store: &str,
    gtins: &[String],
    versions: &[i64],
    batch: &BatchId,
    effective_at: UtcMillis,
) -> Result<(), StorageError> {
    tx.execute(
        "INSERT INTO price_versions (store_id, gtin, version, batch_id, effective_at)
         SELECT $1, t.gtin, t.version, $4, $5 FROM unnest($2::text[], $3::int8[]) AS t(gtin, version)
         ON CONFLICT DO NOTHING",
        &[&store, &gtins, &versions, &batch.as_str(), &effective_at.0],
    )
    .await?;
    Ok(())
}

/// Schema 5: the versions issued before it, from the current prices and the changefeed (the
/// versions compaction deleted are gone; labels only compare against the newest ones).
pub(super) async fn backfill_price_versions<C: GenericClient>(tx: &C) -> Result<(), StorageError> {
    tx.execute(
        "INSERT INTO price_versions (store_id, gtin, version, batch_id, effective_at)
         SELECT store_id, gtin, version, batch_id, effective_at FROM prices
         ON CONFLICT DO NOTHING",
        &[],
    )
    .await?;
    let rows = tx
        .query(
            "SELECT seq, store_id, body FROM changes WHERE kind = 'price'",
            &[],
        )
        .await?;
    /// Per store: gtins, versions, batches, effective times.
    type Columns = (Vec<String>, Vec<i64>, Vec<String>, Vec<i64>);
    let mut by_store: BTreeMap<String, Columns> = BTreeMap::new();
    for r in &rows {
        if let Some((gtin, version, batch, effective_at)) =
            price_version_of(r.try_get("seq")?, r.try_get("body")?)?
        {
            let e = by_store.entry(r.try_get("store_id")?).or_default();
            e.0.push(gtin);
            e.1.push(version);
            e.2.push(batch);
            e.3.push(effective_at);
        }
    }
    for (store, (gtins, versions, batches, effective)) in &by_store {
        tx.execute(
            "INSERT INTO price_versions (store_id, gtin, version, batch_id, effective_at)
             SELECT $1, t.* FROM unnest($2::text[], $3::int8[], $4::text[], $5::int8[])
               AS t(gtin, version, batch_id, effective_at)
             ON CONFLICT DO NOTHING",
            &[store, gtins, versions, batches, effective],
        )
        .await?;
    }
    Ok(())
}

/// A page of `store`'s labels (see [`HubStorage::store_labels`](super::HubStorage::store_labels)).
pub(super) async fn read_labels<C: GenericClient>(
    c: &C,
    store: &StoreId,
    q: &LabelQuery,
) -> Result<LabelPage, StorageError> {
    // One statement: one snapshot.
    let rows = c
        .query(
            &format!(
                "SELECT {LABEL_COLUMNS}, current_version,
                        (SELECT MIN(p.effective_at) FROM price_versions p
                          WHERE p.store_id = $1 AND p.gtin = x.gtin AND p.effective_at <= $2
                            AND p.version > COALESCE(x.confirmed_version, 0)) AS first_unshown
                   FROM (SELECT l.*,
                                (SELECT MAX(p.version) FROM price_versions p
                                  WHERE p.store_id = l.store_id AND p.gtin = l.gtin
                                    AND p.effective_at <= $2) AS current_version
                           FROM shelf_labels l WHERE l.store_id = $1 AND l.label_id >= $3) x
                  WHERE {} ORDER BY label_id LIMIT $4",
                q.filter.sql()
            ),
            &[
                &store.as_str(),
                &q.now.0,
                &q.first_id(),
                &(i64::from(q.limit) + 1),
            ],
        )
        .await?;
    let mut labels = Vec::with_capacity(rows.len());
    for r in &rows {
        let current: Option<i64> = r.try_get("current_version")?;
        let first_unshown: Option<i64> = r.try_get("first_unshown")?;
        labels.push(LabelReport {
            label: label_columns(r)?.decode()?,
            current_version: current.map(|v| to_u64(v, "version")).transpose()?,
            first_unshown_at: first_unshown.map(UtcMillis),
        });
    }
    let more = labels.len() > q.limit as usize;
    labels.truncate(q.limit as usize);
    Ok(LabelPage { labels, more })
}

/// Label counts per store of the labels bound to the batch's products, against its versions.
pub(super) async fn batch_label_counts<C: GenericClient>(
    c: &C,
    batch: &BatchId,
) -> Result<BTreeMap<String, LabelCounts>, StorageError> {
    let rows = c
        .query(
            "SELECT v.store_id, COUNT(*) AS bound,
                    COUNT(*) FILTER (WHERE l.confirmed_version >= v.version) AS confirmed,
                    COUNT(*) FILTER (WHERE COALESCE(l.confirmed_version, 0) < v.version
                                       AND l.not_updated_version >= v.version) AS failed
               FROM price_versions v
               JOIN shelf_labels l ON l.store_id = v.store_id AND l.gtin = v.gtin
              WHERE v.batch_id = $1
              GROUP BY v.store_id",
            &[&batch.as_str()],
        )
        .await?;
    let mut out = BTreeMap::new();
    for r in &rows {
        out.insert(
            r.try_get::<_, String>("store_id")?,
            LabelCounts {
                bound: to_u64(r.try_get("bound")?, "labels")?,
                confirmed: to_u64(r.try_get("confirmed")?, "labels")?,
                failed: to_u64(r.try_get("failed")?, "labels")?,
            },
        );
    }
    Ok(out)
}
