//! [`HubStorage`] on PostgreSQL (tokio-postgres with a deadpool pool).
//!
//! Several hub processes may serve one database: they share nothing but the database, and wake
//! each other's long-polls through LISTEN/NOTIFY ([`PgChangeListener`]).
//!
//! Cursor safety: a sequence hands out numbers at draw time but transactions commit in any order,
//! so a reader could see seq 11 committed, move its cursor past it, and never see seq 10 that
//! commits a moment later. Every changefeed writer therefore takes [`CHANGEFEED_LOCK`]
//! (`pg_advisory_xact_lock`) before it draws a seq and holds it to commit: seqs become visible
//! strictly in order. Sales' `hub_seq` cursor is protected the same way, per store, by [`SALES_LOCK`].
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use aisle_protocol::pickup::PickupKey;
use aisle_protocol::sync::{ChangeBody, ChangePage, LedgerEvent, PriceChange, UploadAck};
use aisle_protocol::{BatchId, EventId, GatewayId, Gtin, OrderId, StoreId, UtcMillis};
use async_trait::async_trait;
use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::{IsolationLevel, Row};

use super::{
    AdjustmentReceipt, AuthenticatedGateway, Backend, BatchProgress, BatchReceipt,
    CompactionReport, FootfallQuery, FootfallRow, FootfallSums, FootfallTally, GatewayCredential,
    HubStorage, NewStockAdjustment, NewStore, SCHEMA_VERSION, SalesPage, SalesSince, SideEffect,
    StockLevel, StorageError, Store, StoreProgress, adjustment_delta_key,
    check_batch_against_stores, decode_change, decode_sale, encode_json, hashes_equal,
    merge_footfall, new_batch_id, now, page_of, parse_currency, parse_gtin, parse_store_id,
    redact_url, sale_delta_key, side_effect, split_upload, to_i64, to_u64, validate_upload,
    version_floor,
};
use super::{postgres_labels, postgres_orders, postgres_security};
use crate::changefeed::{ChangeFeed, ChangeSubscription, NOTIFY_CHANNEL, PgChangeListener};
use crate::labels::{LabelPage, LabelQuery};
use crate::pickup::token::PickupSigningKey;
use crate::pickup::{
    CancelReceipt, NewOrder, OrderFilter, OrderReceipt, OrderSummary, OrderView, WebhookDelivery,
};
use crate::price_batch::{BatchStores, PriceBatch};
use crate::security::{
    Actor, ApiTokenInfo, AuditEntry, AuditInput, EnrolAttempt, EnrolRefusal, EnrolledGateway,
    GatewayInfo, GatewayKey, NewApiToken, NewEnrolment, NonceOutcome, Role, action,
};

const SCHEMA: &str = include_str!("schema_postgres.sql");

/// Advisory lock held by every changefeed writer from before its first seq to commit.
pub const CHANGEFEED_LOCK: i64 = 0x4149_534c_4501;
/// Advisory lock namespace (with a hash of the store id as the second key) held by every
/// transaction that inserts a store's sales, for the same reason. Per store, because the
/// `hub_seq` cursor is only ever read per store: stores need not wait for each other.
pub const SALES_LOCK: i32 = 0x4153_4c45;
/// Advisory lock held while migrating the schema.
pub const MIGRATION_LOCK: i64 = 0x4149_534c_4503;

/// Most pooled connections per hub process.
const POOL_SIZE: usize = 16;
const POOL_WAIT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// PostgreSQL-backed hub storage.
#[derive(Debug)]
pub struct PgStorage {
    pool: Pool,
    feed: Arc<ChangeFeed>,
    // Dropped with the storage: stops the LISTEN connection.
    _listener: PgChangeListener,
}

fn pool_error(e: PoolError) -> StorageError {
    match e {
        PoolError::Backend(e) => StorageError::Postgres(e),
        other => StorageError::Unavailable(other.to_string()),
    }
}

impl PgStorage {
    /// Connects, migrates the schema and starts the LISTEN connection.
    pub async fn open(url: &str) -> Result<Self, StorageError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|_| StorageError::UnsupportedUrl(redact_url(url)))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let manager = Manager::from_config(
            config.clone(),
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT * 2))
            .build()
            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
        let storage_feed = Arc::new(ChangeFeed::new());
        let mut client = pool.get().await.map_err(|e| {
            StorageError::Unavailable(format!("cannot connect to {}: {e}", redact_url(url)))
        })?;
        migrate(&mut client).await?;
        drop(client);
        let listener = PgChangeListener::start(config, storage_feed.clone(), CONNECT_TIMEOUT * 2)
            .await
            .map_err(StorageError::Unavailable)?;
        Ok(PgStorage {
            pool,
            _listener: listener,
            feed: storage_feed,
        })
    }

    async fn client(&self) -> Result<Object, StorageError> {
        self.pool.get().await.map_err(pool_error)
    }
}

async fn migrate(client: &mut Object) -> Result<(), StorageError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(SCHEMA).await?;
    let found: Option<i64> = tx
        .query_one("SELECT MAX(version) FROM schema_version", &[])
        .await?
        .try_get(0)?;
    match found {
        None => {
            tx.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&SCHEMA_VERSION],
            )
            .await?;
        }
        Some(v) if v > SCHEMA_VERSION => return Err(StorageError::SchemaTooNew { found: v }),
        Some(v) if v < SCHEMA_VERSION => {
            if v < 2 {
                backfill_footfall(&tx).await?;
            }
            // 3 adds the pickup tables (created above, empty): a version 2 hub refused pickup
            // events, so there is nothing to derive. 4 adds the security tables, empty too.
            // 5 adds the label tables (a version 4 hub kept no label state to derive; its
            // label events stay stored, unapplied) and the history of issued prices.
            if v < 5 {
                postgres_labels::backfill_price_versions(&tx).await?;
            }
            tx.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&SCHEMA_VERSION],
            )
            .await?;
        }
        Some(_) => {}
    }
    tx.commit().await?;
    Ok(())
}

/// Version 1 stored FootfallCounted events without footfall rows: derive them once.
async fn backfill_footfall(tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StorageError> {
    let rows = tx
        .query(
            "SELECT event_id, store_id, at, payload FROM events WHERE kind = 'footfall_counted'",
            &[],
        )
        .await?;
    let mut by_store: HashMap<String, Vec<FootfallRow>> = HashMap::new();
    for r in &rows {
        let event_id: &str = r.try_get("event_id")?;
        if let Some(row) =
            FootfallRow::from_stored(event_id, r.try_get("at")?, r.try_get("payload")?)?
        {
            by_store
                .entry(r.try_get("store_id")?)
                .or_default()
                .push(row);
        }
    }
    for (store, rows) in &by_store {
        insert_footfall(tx, store, rows).await?;
    }
    Ok(())
}

/// Inserts footfall rows of one store, each event id once.
async fn insert_footfall<C: GenericClient>(
    c: &C,
    store: &str,
    rows: &[FootfallRow],
) -> Result<(), StorageError> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
    let zones: Vec<&str> = rows.iter().map(|r| r.zone.as_str()).collect();
    let starts: Vec<i64> = rows.iter().map(|r| r.start).collect();
    let entered: Vec<i64> = rows.iter().map(|r| r.entered).collect();
    let exited: Vec<i64> = rows.iter().map(|r| r.exited).collect();
    let occupancy: Vec<Option<i64>> = rows.iter().map(|r| r.occupancy).collect();
    let missing: Vec<Option<&str>> = rows.iter().map(|r| r.cameras_missing.as_deref()).collect();
    let ats: Vec<i64> = rows.iter().map(|r| r.at).collect();
    c.execute(
        "INSERT INTO footfall (event_id, store_id, zone, start_ms, entered, exited, occupancy, cameras_missing, at)
         SELECT t.id, $1, t.zone, t.start, t.entered, t.exited, t.occupancy, t.missing, t.at
           FROM unnest($2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::int8[], $8::text[], $9::int8[])
             AS t(id, zone, start, entered, exited, occupancy, missing, at)
         ON CONFLICT (event_id) DO NOTHING",
        &[
            &store, &ids, &zones, &starts, &entered, &exited, &occupancy, &missing, &ats,
        ],
    )
    .await?;
    Ok(())
}

fn to_store(r: &Row) -> Result<Store, StorageError> {
    Ok(Store {
        id: parse_store_id(r.try_get("store_id")?)?,
        name: r.try_get("name")?,
        currency: parse_currency(r.try_get("currency")?)?,
        created_at: UtcMillis(r.try_get("created_at")?),
    })
}

async fn load_store<C: GenericClient>(c: &C, id: &StoreId) -> Result<Option<Store>, StorageError> {
    c.query_opt(
        "SELECT store_id, name, currency, created_at FROM stores WHERE store_id = $1",
        &[&id.as_str()],
    )
    .await?
    .as_ref()
    .map(to_store)
    .transpose()
}

async fn load_stores<C: GenericClient>(c: &C) -> Result<Vec<Store>, StorageError> {
    c.query(
        "SELECT store_id, name, currency, created_at FROM stores ORDER BY store_id",
        &[],
    )
    .await?
    .iter()
    .map(to_store)
    .collect()
}

pub(super) async fn require_store<C: GenericClient>(
    c: &C,
    id: &StoreId,
) -> Result<Store, StorageError> {
    load_store(c, id)
        .await?
        .ok_or_else(|| StorageError::UnknownStore(id.clone()))
}

/// Takes the changefeed writers' lock; see the module comment for why.
pub(super) async fn lock_changefeed<C: GenericClient>(c: &C) -> Result<(), StorageError> {
    c.execute("SELECT pg_advisory_xact_lock($1)", &[&CHANGEFEED_LOCK])
        .await?;
    Ok(())
}

/// Queues a NOTIFY per store; PostgreSQL delivers them only if and when the transaction commits.
pub(super) async fn notify_stores<C: GenericClient>(
    c: &C,
    stores: &[&str],
) -> Result<(), StorageError> {
    c.execute(
        "SELECT pg_notify($1, s) FROM unnest($2::text[]) AS s",
        &[&NOTIFY_CHANNEL, &stores],
    )
    .await?;
    Ok(())
}

#[async_trait]
impl HubStorage for PgStorage {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn health(&self) -> Result<(), StorageError> {
        self.client().await?.query_one("SELECT 1", &[]).await?;
        Ok(())
    }

    async fn create_store(&self, store: &NewStore) -> Result<Store, StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // A store that joins after the pickup key was made gets it first thing. The lock orders
        // this against the key's generation: one of the two sees the other.
        lock_changefeed(&tx).await?;
        let created_at = now();
        let n = tx
            .execute(
                "INSERT INTO stores (store_id, name, currency, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (store_id) DO NOTHING",
                &[
                    &store.id.as_str(),
                    &store.name,
                    &store.currency.code(),
                    &created_at.0,
                ],
            )
            .await?;
        if n == 0 {
            return Err(StorageError::StoreExists(store.id.clone()));
        }
        let keyed = postgres_orders::send_current_key(&tx, store.id.as_str(), created_at).await?;
        if keyed {
            notify_stores(&tx, &[store.id.as_str()]).await?;
        }
        tx.commit().await?;
        if keyed {
            self.feed.wake(&store.id);
        }
        Ok(Store {
            id: store.id.clone(),
            name: store.name.clone(),
            currency: store.currency,
            created_at,
        })
    }

    async fn store(&self, id: &StoreId) -> Result<Option<Store>, StorageError> {
        load_store(&self.client().await?, id).await
    }

    async fn list_stores(&self) -> Result<Vec<Store>, StorageError> {
        load_stores(&self.client().await?).await
    }

    async fn create_gateway_by(
        &self,
        store: &StoreId,
        actor: &Actor,
    ) -> Result<GatewayCredential, StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        require_store(&tx, store).await?;
        // A 32-bit tag can collide with an existing gateway of the store: draw again.
        for _ in 0..8 {
            let cred = GatewayCredential::generate(store)?;
            let n = tx
                .execute(
                    "INSERT INTO gateways (gateway_id, store_id, secret_sha256, created_at)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (gateway_id) DO NOTHING",
                    &[
                        &cred.gateway_id.as_str(),
                        &store.as_str(),
                        &cred.secret_hash().as_slice(),
                        &now().0,
                    ],
                )
                .await?;
            if n == 1 {
                postgres_security::append_audit(
                    &tx,
                    &AuditInput::new(
                        actor,
                        action::GATEWAY_ADDED,
                        cred.gateway_id.as_str(),
                        serde_json::json!({ "store": store.as_str() }),
                    ),
                    now(),
                )
                .await?;
                tx.commit().await?;
                return Ok(cred);
            }
        }
        Err(StorageError::Unavailable(
            "could not draw an unused gateway id".into(),
        ))
    }

    async fn authenticate_gateway(
        &self,
        credential: &str,
    ) -> Result<AuthenticatedGateway, StorageError> {
        let cred = GatewayCredential::parse(credential)?;
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT store_id, secret_sha256, revoked_at FROM gateways WHERE gateway_id = $1",
                &[&cred.gateway_id.as_str()],
            )
            .await?;
        let Some(row) = row else {
            return Err(StorageError::BadCredential);
        };
        let hash: Vec<u8> = row.try_get("secret_sha256")?;
        let revoked: Option<i64> = row.try_get("revoked_at")?;
        if revoked.is_some() || !hashes_equal(&hash, &cred.secret_hash()) {
            return Err(StorageError::BadCredential);
        }
        Ok(AuthenticatedGateway {
            gateway_id: cred.gateway_id,
            store: parse_store_id(row.try_get("store_id")?)?,
        })
    }

    async fn revoke_gateway_by(
        &self,
        gateway: &GatewayId,
        actor: &Actor,
    ) -> Result<(), StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let n = tx
            .execute(
                "UPDATE gateways SET revoked_at = COALESCE(revoked_at, $2) WHERE gateway_id = $1",
                &[&gateway.as_str(), &now().0],
            )
            .await?;
        if n == 0 {
            return Err(StorageError::UnknownGateway(gateway.clone()));
        }
        postgres_security::append_audit(
            &tx,
            &AuditInput::new(
                actor,
                action::GATEWAY_REVOKED,
                gateway.as_str(),
                serde_json::json!({}),
            ),
            now(),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_price_batch_by(
        &self,
        batch: &PriceBatch,
        actor: &Actor,
    ) -> Result<BatchReceipt, StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        lock_changefeed(&tx).await?;
        let stores = match batch.stores() {
            BatchStores::All => load_stores(&tx).await?,
            BatchStores::Only(ids) => {
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    out.push(require_store(&tx, id).await?);
                }
                out
            }
        };
        check_batch_against_stores(batch, &stores)?;
        let batch_id = new_batch_id()?;
        let created_at = now();
        let effective_at = batch.effective_at().unwrap_or(created_at);
        let items = batch.items();
        let item_count = i64::try_from(items.len()).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO price_batches (batch_id, created_at, effective_at, items) VALUES ($1, $2, $3, $4)",
            &[&batch_id.as_str(), &created_at.0, &effective_at.0, &item_count],
        )
        .await?;
        let gtins: Vec<&str> = items.iter().map(|i| i.gtin.as_str()).collect();
        let minors: Vec<i64> = items.iter().map(|i| i.price.minor).collect();
        let currencies: Vec<&str> = items.iter().map(|i| i.price.currency.code()).collect();
        let names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
        let upsert = tx
            .prepare(
                "INSERT INTO prices AS p (store_id, gtin, version, price_minor, currency, name, batch_id, effective_at)
                 SELECT $1, t.gtin, $8, t.minor, t.currency, t.name, $6, $7
                   FROM unnest($2::text[], $3::int8[], $4::text[], $5::text[]) AS t(gtin, minor, currency, name)
                 ON CONFLICT (store_id, gtin) DO UPDATE SET
                     version = GREATEST(p.version + 1, excluded.version), price_minor = excluded.price_minor,
                     currency = excluded.currency, name = excluded.name,
                     batch_id = excluded.batch_id, effective_at = excluded.effective_at
                 RETURNING gtin, version",
            )
            .await?;
        let insert_changes = tx
            .prepare(
                "INSERT INTO changes (store_id, kind, gtin, version, body, created_at)
                 SELECT $1, 'price', t.gtin, t.version, t.body, $5
                   FROM unnest($2::text[], $3::int8[], $4::text[]) WITH ORDINALITY AS t(gtin, version, body, ord)
                  ORDER BY t.ord",
            )
            .await?;
        for store in &stores {
            tx.execute(
                "INSERT INTO price_batch_stores (batch_id, store_id, items) VALUES ($1, $2, $3)",
                &[&batch_id.as_str(), &store.id.as_str(), &item_count],
            )
            .await?;
            let rows = tx
                .query(
                    &upsert,
                    &[
                        &store.id.as_str(),
                        &gtins,
                        &minors,
                        &currencies,
                        &names,
                        &batch_id.as_str(),
                        &effective_at.0,
                        &version_floor(created_at),
                    ],
                )
                .await?;
            let mut versions: HashMap<String, i64> = HashMap::with_capacity(rows.len());
            let (mut issued_gtins, mut issued) = (Vec::with_capacity(rows.len()), Vec::new());
            for row in &rows {
                let (gtin, version): (String, i64) =
                    (row.try_get("gtin")?, row.try_get("version")?);
                issued_gtins.push(gtin.clone());
                issued.push(version);
                versions.insert(gtin, version);
            }
            postgres_labels::insert_price_versions(
                &tx,
                store.id.as_str(),
                &issued_gtins,
                &issued,
                &batch_id,
                effective_at,
            )
            .await?;
            let mut change_versions = Vec::with_capacity(items.len());
            let mut bodies = Vec::with_capacity(items.len());
            for item in items {
                let version = *versions.get(item.gtin.as_str()).ok_or_else(|| {
                    StorageError::Corrupt(format!("no version returned for {}", item.gtin))
                })?;
                change_versions.push(version);
                bodies.push(encode_json(&ChangeBody::Price(PriceChange {
                    gtin: item.gtin,
                    version: to_u64(version, "price version")?,
                    price: item.price,
                    name: item.name.clone(),
                    effective_at,
                    batch_id: batch_id.clone(),
                }))?);
            }
            tx.execute(
                &insert_changes,
                &[
                    &store.id.as_str(),
                    &gtins,
                    &change_versions,
                    &bodies,
                    &created_at.0,
                ],
            )
            .await?;
        }
        let store_ids: Vec<&str> = stores.iter().map(|s| s.id.as_str()).collect();
        notify_stores(&tx, &store_ids).await?;
        postgres_security::append_audit(
            &tx,
            &AuditInput::new(
                actor,
                action::PRICE_BATCH,
                batch_id.as_str(),
                serde_json::json!({
                    "items": items.len(),
                    "stores": stores.len(),
                    "effective_at": effective_at.0,
                }),
            ),
            created_at,
        )
        .await?;
        tx.commit().await?;
        for store in &stores {
            self.feed.wake(&store.id);
        }
        Ok(BatchReceipt {
            batch_id,
            created_at,
            effective_at,
            items: items.len(),
            stores: stores.into_iter().map(|s| s.id).collect(),
        })
    }

    async fn batch_progress(&self, batch: &BatchId) -> Result<BatchProgress, StorageError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let Some(head) = tx
            .query_opt(
                "SELECT created_at, effective_at, items FROM price_batches WHERE batch_id = $1",
                &[&batch.as_str()],
            )
            .await?
        else {
            return Err(StorageError::UnknownBatch(batch.clone()));
        };
        let rows = tx
            .query(
                "SELECT s.store_id, s.items,
                    (SELECT COUNT(DISTINCT p.gtin) FROM batch_progress p
                      WHERE p.batch_id = s.batch_id AND p.store_id = s.store_id AND p.kind = 'staged') AS staged,
                    (SELECT COUNT(DISTINCT p.gtin) FROM batch_progress p
                      WHERE p.batch_id = s.batch_id AND p.store_id = s.store_id AND p.kind = 'activated') AS active
                 FROM price_batch_stores s WHERE s.batch_id = $1 ORDER BY s.store_id",
                &[&batch.as_str()],
            )
            .await?;
        let mut labels = postgres_labels::batch_label_counts(&tx, batch).await?;
        tx.commit().await?;
        let mut stores = Vec::with_capacity(rows.len());
        for r in &rows {
            stores.push(StoreProgress {
                labels: labels
                    .remove(r.try_get::<_, &str>("store_id")?)
                    .unwrap_or_default(),
                store: parse_store_id(r.try_get("store_id")?)?,
                items: to_u64(r.try_get("items")?, "items")?,
                staged: to_u64(r.try_get("staged")?, "staged")?,
                active: to_u64(r.try_get("active")?, "active")?,
            });
        }
        Ok(BatchProgress {
            batch_id: batch.clone(),
            created_at: UtcMillis(head.try_get("created_at")?),
            effective_at: UtcMillis(head.try_get("effective_at")?),
            items: to_u64(head.try_get("items")?, "items")?,
            stores,
        })
    }

    async fn changes_after(
        &self,
        store: &StoreId,
        cursor: u64,
        limit: u32,
    ) -> Result<ChangePage, StorageError> {
        let limit = limit.max(1);
        let client = self.client().await?;
        // One statement is one snapshot: head and rows agree with each other.
        let stmt = client
            .prepare_cached(
                "WITH f AS (SELECT (SELECT COALESCE(MAX(seq), 0) FROM changes) AS head)
                 SELECT f.head, c.seq, c.body FROM f
                 LEFT JOIN LATERAL (
                     SELECT seq, body FROM changes WHERE store_id = $1 AND seq > $2 ORDER BY seq LIMIT $3
                 ) c ON true
                 ORDER BY c.seq",
            )
            .await?;
        let rows = client
            .query(
                &stmt,
                &[
                    &store.as_str(),
                    &to_i64(cursor, "cursor")?,
                    &(i64::from(limit) + 1),
                ],
            )
            .await?;
        let first = rows
            .first()
            .ok_or_else(|| StorageError::Corrupt("changefeed query returned no row".into()))?;
        let head = to_u64(first.try_get("head")?, "head")?;
        if cursor > head {
            return Err(StorageError::CursorAhead { cursor, head });
        }
        let mut changes = Vec::with_capacity(rows.len());
        for r in &rows {
            let seq: Option<i64> = r.try_get("seq")?;
            let body: Option<&str> = r.try_get("body")?;
            if let (Some(seq), Some(body)) = (seq, body) {
                changes.push(decode_change(seq, body)?);
            }
        }
        Ok(page_of(changes, cursor, limit))
    }

    async fn ingest_events(
        &self,
        gateway: &GatewayId,
        events: &[LedgerEvent],
    ) -> Result<UploadAck, StorageError> {
        validate_upload(events)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Lock the gateway's row for the whole upload: an identical upload running at the same
        // time waits here, then finds its events stored and answers the same ack, doing nothing.
        let Some(row) = tx
            .query_opt(
                "SELECT store_id, acked_through, revoked_at FROM gateways WHERE gateway_id = $1 FOR UPDATE",
                &[&gateway.as_str()],
            )
            .await?
        else {
            return Err(StorageError::UnknownGateway(gateway.clone()));
        };
        let store: String = row.try_get("store_id")?;
        let revoked: Option<i64> = row.try_get("revoked_at")?;
        if revoked.is_some() {
            return Err(StorageError::BadCredential);
        }
        let acked = to_u64(row.try_get("acked_through")?, "acked_through")?;
        let (known, fresh) = split_upload(acked, events)?;
        if let (Some(first), Some(last)) = (known.first(), known.last()) {
            let rows = tx
                .query(
                    "SELECT seq, event_id FROM events WHERE gateway_id = $1 AND seq BETWEEN $2 AND $3",
                    &[
                        &gateway.as_str(),
                        &to_i64(first.seq, "seq")?,
                        &to_i64(last.seq, "seq")?,
                    ],
                )
                .await?;
            let mut stored: HashMap<i64, String> = HashMap::with_capacity(rows.len());
            for r in &rows {
                stored.insert(r.try_get("seq")?, r.try_get("event_id")?);
            }
            for ev in known {
                if stored.get(&to_i64(ev.seq, "seq")?) != Some(&ev.id.to_hex()) {
                    return Err(StorageError::EventConflict { seq: ev.seq });
                }
            }
        }
        let received_at = now();
        if !fresh.is_empty() {
            store_fresh_events(&tx, gateway, &store, fresh, received_at).await?;
        }
        let acked_through = fresh.last().map_or(acked, |ev| ev.seq);
        tx.execute(
            "UPDATE gateways SET acked_through = $2, last_upload_at = $3 WHERE gateway_id = $1",
            &[
                &gateway.as_str(),
                &to_i64(acked_through, "acked_through")?,
                &received_at.0,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(UploadAck {
            acked_through,
            server_time: now(),
        })
    }

    async fn sales_since(
        &self,
        store: &StoreId,
        since: SalesSince,
        limit: u32,
    ) -> Result<SalesPage, StorageError> {
        let limit = limit.max(1);
        let client = self.client().await?;
        let fetch = i64::from(limit) + 1;
        let (cond, key) = match since {
            SalesSince::All => ("hub_seq > $2", 0),
            SalesSince::Cursor(c) => ("hub_seq > $2", to_i64(c, "cursor")?),
            SalesSince::Time(t) => ("sold_at >= $2", t.0),
        };
        let rows = client
            .query(
                &format!(
                    "SELECT hub_seq, event_id, gateway_id, sold_at, record FROM sales
                     WHERE store_id = $1 AND {cond} ORDER BY hub_seq LIMIT $3"
                ),
                &[&store.as_str(), &key, &fetch],
            )
            .await?;
        let mut sales = Vec::with_capacity(rows.len());
        for r in &rows {
            sales.push(decode_sale(
                r.try_get("hub_seq")?,
                r.try_get("event_id")?,
                r.try_get("gateway_id")?,
                r.try_get("sold_at")?,
                r.try_get("record")?,
            )?);
        }
        let more = sales.len() > limit as usize;
        sales.truncate(limit as usize);
        let next = match (sales.last(), since) {
            (Some(last), _) => last.hub_seq,
            (None, SalesSince::All) => 0,
            (None, SalesSince::Cursor(c)) => c,
            (None, SalesSince::Time(_)) => {
                // Nothing sold since then: continue after everything stored so far.
                let max: i64 = client
                    .query_one(
                        "SELECT COALESCE(MAX(hub_seq), 0) FROM sales WHERE store_id = $1",
                        &[&store.as_str()],
                    )
                    .await?
                    .try_get(0)?;
                to_u64(max, "hub_seq")?
            }
        };
        Ok(SalesPage { sales, next, more })
    }

    async fn stock(&self, store: &StoreId, gtin: &Gtin) -> Result<i64, StorageError> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT COALESCE(SUM(delta), 0)::BIGINT FROM stock_deltas WHERE store_id = $1 AND gtin = $2",
                &[&store.as_str(), &gtin.as_str()],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    async fn stock_levels(&self, store: &StoreId) -> Result<Vec<StockLevel>, StorageError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT gtin, SUM(on_hand)::BIGINT AS on_hand, SUM(reserved)::BIGINT AS reserved FROM (
                     SELECT gtin, delta AS on_hand, 0::BIGINT AS reserved FROM stock_deltas WHERE store_id = $1
                     UNION ALL
                     SELECT gtin, 0::BIGINT, qty FROM stock_reservations WHERE store_id = $1) s
                 GROUP BY gtin ORDER BY gtin",
                &[&store.as_str()],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StockLevel {
                    gtin: parse_gtin(r.try_get("gtin")?)?,
                    on_hand: r.try_get("on_hand")?,
                    reserved: r.try_get("reserved")?,
                })
            })
            .collect()
    }

    async fn reserved(&self, store: &StoreId, gtin: &Gtin) -> Result<i64, StorageError> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT COALESCE(SUM(qty), 0)::BIGINT FROM stock_reservations WHERE store_id = $1 AND gtin = $2",
                &[&store.as_str(), &gtin.as_str()],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    async fn add_stock_adjustment(
        &self,
        store: &StoreId,
        adj: &NewStockAdjustment,
    ) -> Result<AdjustmentReceipt, StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Also serialises two requests with the same adjustment id.
        lock_changefeed(&tx).await?;
        require_store(&tx, store).await?;
        let id = adj.adjustment_id.to_hex();
        if let Some(r) = tx
            .query_opt(
                "SELECT store_id, gtin, delta, reason, change_seq FROM stock_adjustments WHERE adjustment_id = $1",
                &[&id],
            )
            .await?
        {
            let same = r.try_get::<_, &str>("store_id")? == store.as_str()
                && r.try_get::<_, &str>("gtin")? == adj.gtin.as_str()
                && r.try_get::<_, i64>("delta")? == adj.delta
                && r.try_get::<_, &str>("reason")? == adj.reason;
            if !same {
                return Err(StorageError::AdjustmentConflict(adj.adjustment_id));
            }
            return Ok(AdjustmentReceipt {
                store: store.clone(),
                adjustment: adj.to_change(),
                seq: to_u64(r.try_get("change_seq")?, "seq")?,
                created: false,
            });
        }
        let at = now();
        tx.execute(
            "INSERT INTO stock_deltas (delta_key, store_id, gtin, delta, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[
                &adjustment_delta_key(&adj.adjustment_id),
                &store.as_str(),
                &adj.gtin.as_str(),
                &adj.delta,
                &at.0,
            ],
        )
        .await?;
        let body = encode_json(&ChangeBody::StockAdjustment(adj.to_change()))?;
        let seq: i64 = tx
            .query_one(
                "INSERT INTO changes (store_id, kind, gtin, version, body, created_at)
                 VALUES ($1, 'stock_adjustment', $2, NULL, $3, $4) RETURNING seq",
                &[&store.as_str(), &adj.gtin.as_str(), &body, &at.0],
            )
            .await?
            .try_get(0)?;
        tx.execute(
            "INSERT INTO stock_adjustments (adjustment_id, store_id, gtin, delta, reason, created_at, change_seq)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &id,
                &store.as_str(),
                &adj.gtin.as_str(),
                &adj.delta,
                &adj.reason,
                &at.0,
                &seq,
            ],
        )
        .await?;
        notify_stores(&tx, &[store.as_str()]).await?;
        tx.commit().await?;
        self.feed.wake(store);
        Ok(AdjustmentReceipt {
            store: store.clone(),
            adjustment: adj.to_change(),
            seq: to_u64(seq, "seq")?,
            created: true,
        })
    }

    async fn store_labels(
        &self,
        store: &StoreId,
        query: &LabelQuery,
    ) -> Result<LabelPage, StorageError> {
        postgres_labels::read_labels(&self.client().await?, store, query).await
    }

    async fn footfall(
        &self,
        store: &StoreId,
        q: &FootfallQuery,
    ) -> Result<Vec<FootfallTally>, StorageError> {
        let mut client = self.client().await?;
        // One snapshot: footfall and sales agree with each other.
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let (from, to, width) = (q.from().0, q.to().0, q.bucket_ms());
        let args: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&store.as_str(), &from, &to, &width];
        let rows = tx
            .query(
                "SELECT (start_ms / $4) * $4 AS bucket, SUM(entered)::BIGINT AS entered,
                        SUM(exited)::BIGINT AS exited, COUNT(DISTINCT start_ms) AS slots,
                        COUNT(*) AS events, string_agg(DISTINCT cameras_missing, ',') AS missing
                   FROM footfall WHERE store_id = $1 AND start_ms >= $2 AND start_ms < $3
                  GROUP BY bucket ORDER BY bucket",
                &args,
            )
            .await?;
        let mut sums = Vec::with_capacity(rows.len());
        for r in &rows {
            sums.push(FootfallSums {
                start: r.try_get("bucket")?,
                entered: r.try_get("entered")?,
                exited: r.try_get("exited")?,
                slots: r.try_get("slots")?,
                events: r.try_get("events")?,
                missing: r.try_get("missing")?,
            });
        }
        let rows = tx
            .query(
                "SELECT DISTINCT ON (start_ms / $4) (start_ms / $4) * $4 AS bucket, occupancy
                   FROM footfall
                  WHERE store_id = $1 AND start_ms >= $2 AND start_ms < $3 AND occupancy IS NOT NULL
                  ORDER BY start_ms / $4, start_ms DESC, at DESC, occupancy DESC",
                &args,
            )
            .await?;
        let mut occupancy = Vec::with_capacity(rows.len());
        for r in &rows {
            occupancy.push((r.try_get("bucket")?, r.try_get("occupancy")?));
        }
        let rows = tx
            .query(
                "SELECT (sold_at / $4) * $4 AS bucket, COUNT(*) AS n FROM sales
                  WHERE store_id = $1 AND sold_at >= $2 AND sold_at < $3 GROUP BY bucket",
                &args,
            )
            .await?;
        let mut sales = Vec::with_capacity(rows.len());
        for r in &rows {
            sales.push((r.try_get("bucket")?, r.try_get("n")?));
        }
        tx.commit().await?;
        merge_footfall(sums, occupancy, sales)
    }

    async fn compact(&self) -> Result<CompactionReport, StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Compaction is a changefeed writer too: no batch commits halfway through it.
        lock_changefeed(&tx).await?;
        let rows = tx
            .query(
                "WITH gone AS (
                     DELETE FROM changes c WHERE c.kind = 'price' AND c.version <
                         (SELECT p.version FROM prices p WHERE p.store_id = c.store_id AND p.gtin = c.gtin)
                     RETURNING c.store_id)
                 SELECT store_id, COUNT(*) AS removed FROM gone GROUP BY store_id ORDER BY store_id",
                &[],
            )
            .await?;
        let mut per_store = Vec::with_capacity(rows.len());
        for r in &rows {
            let store: String = r.try_get("store_id")?;
            per_store.push((
                parse_store_id(&store)?,
                to_u64(r.try_get("removed")?, "removed")?,
            ));
        }
        tx.commit().await?;
        Ok(CompactionReport {
            removed: per_store.iter().map(|(_, n)| n).sum(),
            per_store,
        })
    }

    fn subscribe(&self, store: &StoreId) -> ChangeSubscription {
        self.feed.subscribe(store)
    }

    async fn create_order(
        &self,
        order: &NewOrder,
        now: UtcMillis,
    ) -> Result<OrderReceipt, StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let (receipt, woken) = postgres_orders::create_order(&tx, order, now).await?;
        if receipt.created {
            tx.commit().await?;
        }
        for store in &woken {
            if let Ok(store) = StoreId::parse(store) {
                self.feed.wake(&store);
            }
        }
        Ok(receipt)
    }

    async fn order(&self, id: &OrderId) -> Result<Option<OrderView>, StorageError> {
        let mut client = self.client().await?;
        // One snapshot: lines, history and outbox agree with the order row.
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let view = postgres_orders::read_order(&tx, id).await?;
        tx.commit().await?;
        Ok(view)
    }

    async fn list_orders(&self, filter: &OrderFilter) -> Result<Vec<OrderSummary>, StorageError> {
        postgres_orders::list_orders(&self.client().await?, filter).await
    }

    async fn cancel_order_by(
        &self,
        id: &OrderId,
        reason: Option<&str>,
        now: UtcMillis,
        actor: &Actor,
    ) -> Result<CancelReceipt, StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let (receipt, woken) = postgres_orders::cancel_order(&tx, id, reason, now).await?;
        if let Some(store) = &woken {
            postgres_security::append_audit(
                &tx,
                &AuditInput::new(
                    actor,
                    action::ORDER_CANCELLED,
                    id.as_str(),
                    serde_json::json!({ "store": store.as_str(), "reason": reason }),
                ),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        if let Some(store) = woken {
            self.feed.wake(&store);
        }
        Ok(receipt)
    }

    async fn expire_overdue(
        &self,
        now: UtcMillis,
        grace_ms: i64,
        limit: u32,
    ) -> Result<Vec<OrderId>, StorageError> {
        let mut client = self.client().await?;
        let ids = postgres_orders::overdue(&client, now.0.saturating_sub(grace_ms), limit).await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let tx = client.transaction().await?;
            if postgres_orders::expire_one(&tx, &id, now, grace_ms).await? {
                tx.commit().await?;
                out.push(id);
            }
        }
        Ok(out)
    }

    async fn pickup_key(&self) -> Result<Option<PickupKey>, StorageError> {
        postgres_orders::pickup_key(&self.client().await?).await
    }

    async fn pickup_signing_key(&self, now: UtcMillis) -> Result<PickupSigningKey, StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let (key, woken) = postgres_orders::signing_key(&tx, now).await?;
        tx.commit().await?;
        for store in &woken {
            if let Ok(store) = StoreId::parse(store) {
                self.feed.wake(&store);
            }
        }
        Ok(key)
    }

    async fn webhook_secret(&self) -> Result<String, StorageError> {
        postgres_orders::webhook_secret(&self.client().await?).await
    }

    async fn claim_webhooks(
        &self,
        now: UtcMillis,
        lease_until: UtcMillis,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, StorageError> {
        postgres_orders::claim_webhooks(&self.client().await?, now, lease_until, limit).await
    }

    async fn webhook_delivered(&self, id: &EventId, at: UtcMillis) -> Result<(), StorageError> {
        postgres_orders::webhook_delivered(&self.client().await?, id, at).await
    }

    async fn webhook_failed(
        &self,
        id: &EventId,
        retry_at: UtcMillis,
        error: &str,
    ) -> Result<(), StorageError> {
        postgres_orders::webhook_failed(&self.client().await?, id, retry_at, error).await
    }

    async fn webhooks_pending(&self) -> Result<u64, StorageError> {
        postgres_orders::webhooks_pending(&self.client().await?).await
    }

    async fn create_api_token(
        &self,
        token: &NewApiToken,
        name: &str,
        role: Role,
        actor: &Actor,
    ) -> Result<ApiTokenInfo, StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let info = postgres_security::create_api_token(&tx, token, name, role, actor).await?;
        tx.commit().await?;
        Ok(info)
    }

    async fn list_api_tokens(&self) -> Result<Vec<ApiTokenInfo>, StorageError> {
        postgres_security::list_api_tokens(&self.client().await?).await
    }

    async fn revoke_api_token(&self, token_id: &str, actor: &Actor) -> Result<(), StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if postgres_security::revoke_api_token(&tx, token_id, actor).await? {
            tx.commit().await?;
        }
        Ok(())
    }

    async fn api_token_by_hash(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<ApiTokenInfo>, StorageError> {
        postgres_security::api_token_by_hash(&self.client().await?, hash).await
    }

    async fn append_audit(&self, entry: &AuditInput) -> Result<(), StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        postgres_security::append_audit(&tx, entry, now()).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn audit_entries(&self, from: u64, limit: u32) -> Result<Vec<AuditEntry>, StorageError> {
        postgres_security::audit_entries(&self.client().await?, from, limit).await
    }

    async fn create_enrolment(
        &self,
        enrolment: &NewEnrolment,
        actor: &Actor,
    ) -> Result<(), StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        postgres_security::create_enrolment(&tx, enrolment, actor).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn enrol(
        &self,
        attempt: &EnrolAttempt,
    ) -> Result<Result<EnrolledGateway, EnrolRefusal>, StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let outcome = postgres_security::enrol(&tx, attempt).await?;
        // A refusal commits too: its audit entry.
        tx.commit().await?;
        Ok(outcome)
    }

    async fn enrol_refusals_since(
        &self,
        client: &str,
        since: UtcMillis,
    ) -> Result<u64, StorageError> {
        postgres_security::enrol_refusals_since(&self.client().await?, client, since).await
    }

    async fn gateway_key(&self, gateway: &GatewayId) -> Result<Option<GatewayKey>, StorageError> {
        postgres_security::gateway_key(&self.client().await?, gateway).await
    }

    async fn remember_nonce(
        &self,
        gateway: &GatewayId,
        nonce: &str,
        expires_at: UtcMillis,
        now: UtcMillis,
    ) -> Result<NonceOutcome, StorageError> {
        let mut client = self.client().await?;
        postgres_security::remember_nonce(&mut client, gateway, nonce, expires_at, now).await
    }

    async fn list_gateways(&self) -> Result<Vec<GatewayInfo>, StorageError> {
        postgres_security::list_gateways(&self.client().await?).await
    }
}

/// Inserts new events and their side effects with one statement per table (arrays + unnest).
async fn store_fresh_events(
    tx: &deadpool_postgres::Transaction<'_>,
    gateway: &GatewayId,
    store: &str,
    fresh: &[LedgerEvent],
    received_at: UtcMillis,
) -> Result<(), StorageError> {
    let mut seqs = Vec::with_capacity(fresh.len());
    let mut ids = Vec::with_capacity(fresh.len());
    let mut kinds = Vec::with_capacity(fresh.len());
    let mut walls = Vec::with_capacity(fresh.len());
    let mut counters = Vec::with_capacity(fresh.len());
    let mut ats = Vec::with_capacity(fresh.len());
    let mut payloads = Vec::with_capacity(fresh.len());
    for ev in fresh {
        seqs.push(to_i64(ev.seq, "seq")?);
        ids.push(ev.id.to_hex());
        kinds.push(ev.body.kind());
        walls.push(to_i64(ev.hlc.wall_ms, "hlc")?);
        counters.push(i64::from(ev.hlc.counter));
        ats.push(ev.at.0);
        payloads.push(encode_json(&ev.body)?);
    }
    tx.execute(
        "INSERT INTO events (gateway_id, seq, event_id, store_id, kind, hlc_wall, hlc_counter, at, payload, received_at)
         SELECT $1, t.seq, t.id, $2, t.kind, t.wall, t.counter, t.at, t.payload, $3
           FROM unnest($4::int8[], $5::text[], $6::text[], $7::int8[], $8::int8[], $9::int8[], $10::text[])
             AS t(seq, id, kind, wall, counter, at, payload)",
        &[
            &gateway.as_str(),
            &store,
            &received_at.0,
            &seqs,
            &ids,
            &kinds,
            &walls,
            &counters,
            &ats,
            &payloads,
        ],
    )
    .await?;

    let mut sale_events = Vec::new();
    let mut footfall = Vec::new();
    let mut pickups = Vec::new();
    let mut labels = Vec::new();
    let (mut p_ids, mut p_batches, mut p_gtins, mut p_versions, mut p_kinds) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (ev, id) in fresh.iter().zip(&ids) {
        match side_effect(&ev.body) {
            SideEffect::Sale(sale) => sale_events.push((ev, id, sale)),
            SideEffect::Progress {
                batch_id,
                gtin,
                version,
                kind,
            } => {
                p_ids.push(id.as_str());
                p_batches.push(batch_id.as_str());
                p_gtins.push(gtin.as_str());
                p_versions.push(to_i64(version, "version")?);
                p_kinds.push(kind);
            }
            SideEffect::Footfall(f) => footfall.push(FootfallRow::new(&ev.id, ev.at, f)?),
            SideEffect::Pickup(order) => pickups.push((ev, order)),
            SideEffect::Label => labels.push(ev),
            SideEffect::None => {}
        }
    }
    insert_footfall(tx, store, &footfall).await?;
    if !p_ids.is_empty() {
        tx.execute(
            "INSERT INTO batch_progress (event_id, batch_id, store_id, gtin, version, kind)
             SELECT t.id, t.batch, $1, t.gtin, t.version, t.kind
               FROM unnest($2::text[], $3::text[], $4::text[], $5::int8[], $6::text[])
                 AS t(id, batch, gtin, version, kind)
             ON CONFLICT DO NOTHING",
            &[&store, &p_ids, &p_batches, &p_gtins, &p_versions, &p_kinds],
        )
        .await?;
    }
    if !sale_events.is_empty() {
        store_sales(tx, gateway, store, &sale_events, received_at).await?;
    }
    // After the sales: every upload takes its locks in the same order (see postgres_orders),
    // labels (and their audit entries) last.
    postgres_orders::apply_store_events(tx, store, &pickups, received_at).await?;
    postgres_labels::apply_label_events(tx, gateway, store, &labels, received_at).await
}

/// Inserts new sales and, for each newly stored one, its stock deltas.
async fn store_sales(
    tx: &deadpool_postgres::Transaction<'_>,
    gateway: &GatewayId,
    store: &str,
    sale_events: &[(&LedgerEvent, &String, &aisle_protocol::sync::SaleRecord)],
    received_at: UtcMillis,
) -> Result<(), StorageError> {
    // hub_seq is a cursor too: serialise the store's sale writers so it never skips (see module
    // comment). A hash collision between two stores only makes them wait for each other.
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&SALES_LOCK, &store],
    )
    .await?;
    let mut s_ids = Vec::with_capacity(sale_events.len());
    let mut s_sale_ids = Vec::with_capacity(sale_events.len());
    let mut s_at = Vec::with_capacity(sale_events.len());
    let mut s_total = Vec::with_capacity(sale_events.len());
    let mut s_currency = Vec::with_capacity(sale_events.len());
    let mut s_record = Vec::with_capacity(sale_events.len());
    for (ev, id, sale) in sale_events {
        s_ids.push(id.as_str());
        s_sale_ids.push(sale.sale_id.as_str());
        s_at.push(ev.at.0);
        s_total.push(sale.total.minor);
        s_currency.push(sale.total.currency.code());
        s_record.push(encode_json(sale)?);
    }
    let inserted = tx
        .query(
            "INSERT INTO sales (event_id, store_id, gateway_id, sale_id, sold_at, total_minor, currency, record)
             SELECT t.id, $1, $2, t.sale_id, t.at, t.total, t.currency, t.record
               FROM unnest($3::text[], $4::text[], $5::int8[], $6::int8[], $7::text[], $8::text[])
                 WITH ORDINALITY AS t(id, sale_id, at, total, currency, record, ord)
              ORDER BY t.ord
             ON CONFLICT (event_id) DO NOTHING
             RETURNING event_id",
            &[
                &store,
                &gateway.as_str(),
                &s_ids,
                &s_sale_ids,
                &s_at,
                &s_total,
                &s_currency,
                &s_record,
            ],
        )
        .await?;
    let inserted: HashSet<String> = inserted
        .iter()
        .map(|r| r.try_get::<_, String>(0))
        .collect::<Result<_, _>>()?;
    // Stock moves only with a newly stored sale: a sale seen before moves nothing.
    let (mut keys, mut gtins, mut deltas) = (Vec::new(), Vec::new(), Vec::new());
    for (ev, id, sale) in sale_events {
        if !inserted.contains(id.as_str()) {
            continue;
        }
        for (i, line) in sale.lines.iter().enumerate() {
            keys.push(sale_delta_key(&ev.id, i + 1));
            gtins.push(line.gtin.as_str());
            deltas.push(line.stock_delta());
        }
    }
    if !keys.is_empty() {
        tx.execute(
            "INSERT INTO stock_deltas (delta_key, store_id, gtin, delta, created_at)
             SELECT t.key, $1, t.gtin, t.delta, $2
               FROM unnest($3::text[], $4::text[], $5::int8[]) AS t(key, gtin, delta)
             ON CONFLICT DO NOTHING",
            &[&store, &received_at.0, &keys, &gtins, &deltas],
        )
        .await?;
    }
    Ok(())
}
