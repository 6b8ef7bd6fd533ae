//! Storage conformance: one set of test bodies, each run against SQLite (a temp file) and
//! PostgreSQL (a fresh random database per test on the server at AISLE_TEST_POSTGRES_URL).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aisle_hub::price_batch::{BatchStores, ItemOrigin, PriceBatch, PriceItem};
use aisle_hub::storage::{
    self, AuthenticatedGateway, BatchReceipt, FootfallQuery, FootfallTally, GatewayCredential,
    HubStorage, NewStockAdjustment, NewStore, SalesSince, StorageError,
};
use aisle_hub::testsupport::TempPostgres;
use aisle_protocol::sync::{
    ChangeBody, EventBody, FootfallInterval, LedgerEvent, Payment, PaymentMethod, SaleLine,
    SaleRecord,
};
use aisle_protocol::{BatchId, Currency, EventId, Gtin, Hlc, Money, SaleId, StoreId, UtcMillis};

type Db = Arc<dyn HubStorage>;

// ---------- fixtures ----------

fn cny() -> Currency {
    Currency::parse("CNY").unwrap()
}

fn g(n: u64) -> Gtin {
    Gtin::from_index(n).unwrap()
}

fn sid(s: &str) -> StoreId {
    StoreId::parse(s).unwrap()
}

async fn add_store(db: &Db, id: &str) -> StoreId {
    db.create_store(&NewStore::new(sid(id), &format!("Store {id}"), cny()).unwrap())
        .await
        .unwrap()
        .id
}

async fn add_gateway(db: &Db, store: &StoreId) -> AuthenticatedGateway {
    let cred = db.create_gateway(store).await.unwrap();
    db.authenticate_gateway(&cred.to_string()).await.unwrap()
}

fn batch(stores: BatchStores, items: &[(u64, i64)]) -> PriceBatch {
    let items = items
        .iter()
        .enumerate()
        .map(|(i, (n, minor))| PriceItem {
            origin: ItemOrigin::Row(i as u32 + 1),
            gtin: g(*n),
            price: Money::new(*minor, cny()),
            name: format!("Product {n}"),
        })
        .collect();
    PriceBatch::new(stores, None, items).unwrap()
}

fn only(ids: &[&str]) -> BatchStores {
    BatchStores::Only(ids.iter().map(|s| sid(s)).collect())
}

fn event(seq: u64, at: i64, body: EventBody) -> LedgerEvent {
    LedgerEvent {
        seq,
        id: EventId::from_bytes(rand::random()),
        hlc: Hlc {
            wall_ms: at as u64,
            counter: 0,
        },
        at: UtcMillis(at),
        body,
    }
}

/// A consistent sale: lines of (gtin index, qty, unit price in fen).
fn sale(seq: u64, sale_id: &str, at: i64, lines: &[(u64, u32, i64)]) -> LedgerEvent {
    let lines: Vec<SaleLine> = lines
        .iter()
        .map(|(n, qty, unit)| SaleLine {
            gtin: g(*n),
            qty: *qty,
            unit_price: Money::new(*unit, cny()),
            price_version: 1,
            line_total: Money::new(unit * i64::from(*qty), cny()),
            weight_g: None,
            discount: None,
        })
        .collect();
    let total = lines.iter().map(|l| l.line_total.minor).sum();
    event(
        seq,
        at,
        EventBody::SaleCommitted(SaleRecord {
            sale_id: SaleId::parse(sale_id).unwrap(),
            lines,
            total: Money::new(total, cny()),
            payment: Payment {
                method: PaymentMethod::Card,
                reference: None,
                offline: false,
            },
        }),
    )
}

fn staged(seq: u64, batch: &BatchId, n: u64) -> LedgerEvent {
    event(
        seq,
        1_000,
        EventBody::PriceStaged {
            gtin: g(n),
            version: 1,
            batch_id: batch.clone(),
            effective_at: UtcMillis(0),
        },
    )
}

fn activated(seq: u64, batch: &BatchId, n: u64) -> LedgerEvent {
    event(
        seq,
        1_000,
        EventBody::PriceActivated {
            gtin: g(n),
            version: 1,
            batch_id: batch.clone(),
            price: Money::new(100, cny()),
        },
    )
}

const QUARTER: i64 = 15 * 60 * 1000;
const HOUR: i64 = 4 * QUARTER;
/// 2026-11-22T00:00:00Z.
const DAY0: i64 = 1_795_305_600_000;

/// A FootfallCounted event for `zone` and the 15-minute interval starting at `start`, emitted at
/// `at`.
fn footfall(
    seq: u64,
    at: i64,
    zone: &str,
    start: i64,
    (entered, exited): (u64, u64),
    occupancy: Option<u64>,
    missing: &[&str],
) -> LedgerEvent {
    event(
        seq,
        at,
        EventBody::FootfallCounted(FootfallInterval {
            zone: zone.into(),
            start: UtcMillis(start),
            end: UtcMillis(start + QUARTER),
            entered,
            exited,
            occupancy,
            cameras_missing: missing.iter().map(|c| c.to_string()).collect(),
        }),
    )
}

async fn footfall_of(
    db: &Db,
    store: &StoreId,
    from: i64,
    to: i64,
    width: i64,
) -> Vec<FootfallTally> {
    let q = FootfallQuery::new(UtcMillis(from), UtcMillis(to), width).unwrap();
    db.footfall(store, &q).await.unwrap()
}

/// (bucket start offset from DAY0 in minutes, entered, exited, occupancy, slots, events,
/// cameras missing, transactions): the whole tally, compact enough to compare at a glance.
type Row = (i64, u64, u64, Option<u64>, u64, u64, Vec<String>, u64);

fn rows(tallies: &[FootfallTally]) -> Vec<Row> {
    tallies
        .iter()
        .map(|t| {
            (
                (t.start.0 - DAY0) / 60_000,
                t.entered,
                t.exited,
                t.occupancy,
                t.slots_reported,
                t.events,
                t.cameras_missing.clone(),
                t.transactions,
            )
        })
        .collect()
}

fn names(n: &[&str]) -> Vec<String> {
    n.iter().map(|s| s.to_string()).collect()
}

/// (gtin, version) of every price change of `store`, read from cursor 0.
/// The versions the hub should have issued, by its rule: each batch gives an item
/// max(previous version + 1, the batch's creation time in ms), so a hub restored from an older
/// backup never repeats a version its stores already hold.
#[derive(Default)]
struct VersionModel(HashMap<(StoreId, Gtin), Vec<u64>>);

impl VersionModel {
    fn record(&mut self, r: &BatchReceipt, items: &[u64]) {
        for s in &r.stores {
            for n in items {
                let issued = self.0.entry((s.clone(), g(*n))).or_default();
                let floor = u64::try_from(r.created_at.0).unwrap();
                issued.push(issued.last().map_or(floor, |v| (v + 1).max(floor)));
            }
        }
    }

    /// The `k`-th version (1-based) issued for product `n` at `store`.
    fn nth(&self, store: &StoreId, n: u64, k: usize) -> u64 {
        self.0[&(store.clone(), g(n))][k - 1]
    }
}

async fn price_versions(db: &Db, store: &StoreId) -> Vec<(Gtin, u64)> {
    let page = db.changes_after(store, 0, 5_000).await.unwrap();
    page.changes
        .into_iter()
        .filter_map(|c| match c.body {
            ChangeBody::Price(p) => Some((p.gtin, p.version)),
            _ => None,
        })
        .collect()
}

// ---------- the suite ----------

async fn stores_gateways_and_auth(db: Db) {
    let s1 = add_store(&db, "S001").await;
    let s2 = add_store(&db, "S002").await;
    assert!(matches!(
        db.create_store(&NewStore::new(sid("S001"), "again", cny()).unwrap())
            .await,
        Err(StorageError::StoreExists(_))
    ));
    let stores: Vec<_> = db
        .list_stores()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(stores, vec![s1.clone(), s2.clone()]);
    assert_eq!(db.store(&s1).await.unwrap().unwrap().currency, cny());
    assert!(db.store(&sid("S999")).await.unwrap().is_none());
    assert!(matches!(
        db.create_gateway(&sid("S999")).await,
        Err(StorageError::UnknownStore(_))
    ));

    let cred = db.create_gateway(&s1).await.unwrap();
    let gw = db.authenticate_gateway(&cred.to_string()).await.unwrap();
    assert_eq!(gw.store, s1, "a gateway is bound to its own store");
    assert_eq!(gw.gateway_id, cred.gateway_id);
    let other = db.create_gateway(&s2).await.unwrap();
    assert_eq!(
        db.authenticate_gateway(&other.to_string())
            .await
            .unwrap()
            .store,
        s2
    );

    // Wrong secret, unknown gateway, malformed: all the same refusal.
    let wrong = format!("{}.{}", cred.gateway_id, "0".repeat(64));
    let forged = format!("gw-S001-deadbeef.{}", cred.secret());
    let swapped = format!("{}.{}", cred.gateway_id, other.secret());
    for bad in [wrong.as_str(), &forged, &swapped, "nonsense", ""] {
        assert!(
            matches!(
                db.authenticate_gateway(bad).await,
                Err(StorageError::BadCredential)
            ),
            "{bad}"
        );
    }

    // What a gateway uploads lands in its own store only.
    db.ingest_events(&gw.gateway_id, &[sale(1, "s-1", 5, &[(1, 1, 100)])])
        .await
        .unwrap();
    assert_eq!(
        db.sales_since(&s1, SalesSince::All, 10)
            .await
            .unwrap()
            .sales
            .len(),
        1
    );
    assert!(
        db.sales_since(&s2, SalesSince::All, 10)
            .await
            .unwrap()
            .sales
            .is_empty()
    );

    // Revocation works at once, for authentication and for uploads.
    db.revoke_gateway(&cred.gateway_id).await.unwrap();
    assert!(matches!(
        db.authenticate_gateway(&cred.to_string()).await,
        Err(StorageError::BadCredential)
    ));
    assert!(matches!(
        db.ingest_events(&cred.gateway_id, &[sale(2, "s-2", 5, &[(1, 1, 100)])])
            .await,
        Err(StorageError::BadCredential)
    ));
    assert!(db.authenticate_gateway(&other.to_string()).await.is_ok());
}

async fn price_versions_rise_per_store_and_gtin(db: Db) {
    let s1 = add_store(&db, "S001").await;
    let s2 = add_store(&db, "S002").await;
    let mut m = VersionModel::default();
    let r1 = db
        .create_price_batch(&batch(only(&["S001"]), &[(1, 100), (2, 200)]))
        .await
        .unwrap();
    m.record(&r1, &[1, 2]);
    assert_eq!(r1.stores, vec![s1.clone()]);
    assert_eq!(r1.items, 2);
    assert_eq!(r1.effective_at, r1.created_at, "effective_at absent -> now");
    let r2 = db
        .create_price_batch(&batch(BatchStores::All, &[(1, 110)]))
        .await
        .unwrap();
    m.record(&r2, &[1]);
    assert_eq!(
        r2.stores,
        vec![s1.clone(), s2.clone()],
        "\"all\" is every store"
    );
    let at = UtcMillis(1_900_000_000_000);
    let b3 = PriceBatch::new(
        only(&["S002"]),
        Some(at),
        batch(only(&["S002"]), &[(1, 120), (3, 300)])
            .items()
            .to_vec(),
    )
    .unwrap();
    let r3 = db.create_price_batch(&b3).await.unwrap();
    m.record(&r3, &[1, 3]);
    assert_eq!(r3.effective_at, at);

    assert_eq!(
        price_versions(&db, &s1).await,
        vec![
            (g(1), m.nth(&s1, 1, 1)),
            (g(2), m.nth(&s1, 2, 1)),
            (g(1), m.nth(&s1, 1, 2))
        ]
    );
    assert_eq!(
        price_versions(&db, &s2).await,
        vec![
            (g(1), m.nth(&s2, 1, 1)),
            (g(1), m.nth(&s2, 1, 2)),
            (g(3), m.nth(&s2, 3, 1))
        ]
    );
    assert!(m.nth(&s1, 1, 2) > m.nth(&s1, 1, 1));
    let page = db.changes_after(&s2, 0, 10).await.unwrap();
    match &page.changes[2].body {
        ChangeBody::Price(p) => {
            assert_eq!(p.batch_id, r3.batch_id);
            assert_eq!(p.effective_at, at);
            assert_eq!(p.price, Money::new(300, cny()));
            assert_eq!(p.name, "Product 3");
        }
        other => panic!("{other:?}"),
    }

    // A batch naming an unknown store, or in the wrong currency, stores nothing at all.
    let before = db.changes_after(&s1, 0, 100).await.unwrap().changes.len();
    assert!(matches!(
        db.create_price_batch(&batch(only(&["S001", "S999"]), &[(1, 1), (4, 4)]))
            .await,
        Err(StorageError::UnknownStore(s)) if s.as_str() == "S999"
    ));
    let gbp = PriceBatch::new(
        only(&["S001"]),
        None,
        vec![PriceItem {
            origin: ItemOrigin::Line(7),
            gtin: g(5),
            price: Money::new(1, Currency::parse("GBP").unwrap()),
            name: "Tea".into(),
        }],
    )
    .unwrap();
    let err = db.create_price_batch(&gbp).await.unwrap_err();
    assert!(
        err.to_string().starts_with("line 7: price currency GBP"),
        "{err}"
    );
    assert_eq!(
        db.changes_after(&s1, 0, 100).await.unwrap().changes.len(),
        before
    );
    // ...and did not consume a version: the next batch follows the rule from the last one stored.
    let r4 = db
        .create_price_batch(&batch(only(&["S001"]), &[(1, 130)]))
        .await
        .unwrap();
    m.record(&r4, &[1]);
    assert_eq!(
        price_versions(&db, &s1).await.last(),
        Some(&(g(1), m.nth(&s1, 1, 3)))
    );
}

async fn changes_after_pages_and_limits(db: Db) {
    let s1 = add_store(&db, "S001").await;
    let s2 = add_store(&db, "S002").await;
    let items: Vec<(u64, i64)> = (1..=25).map(|n| (n, 100)).collect();
    db.create_price_batch(&batch(only(&["S001"]), &items[..12]))
        .await
        .unwrap();
    db.create_price_batch(&batch(only(&["S002"]), &items[..3]))
        .await
        .unwrap();
    db.create_price_batch(&batch(only(&["S001"]), &items[12..]))
        .await
        .unwrap();

    let mut cursor = 0;
    let mut sizes = Vec::new();
    let mut seqs = Vec::new();
    loop {
        let page = db.changes_after(&s1, cursor, 10).await.unwrap();
        sizes.push((page.changes.len(), page.more));
        seqs.extend(page.changes.iter().map(|c| c.seq));
        if page.changes.is_empty() {
            assert_eq!(page.next_cursor, cursor, "an empty page keeps the cursor");
            break;
        }
        assert_eq!(page.next_cursor, page.changes.last().unwrap().seq);
        cursor = page.next_cursor;
    }
    assert_eq!(sizes, vec![(10, true), (10, true), (5, false), (0, false)]);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(
        db.changes_after(&s2, 0, 100).await.unwrap().changes.len(),
        3
    );
    // limit 0 is treated as 1 rather than looping forever.
    assert_eq!(db.changes_after(&s1, 0, 0).await.unwrap().changes.len(), 1);
    // A cursor this hub never handed out (another hub's, or a wiped database) must restart.
    let head = *seqs.last().unwrap();
    assert!(matches!(
        db.changes_after(&s1, head + 1_000, 10).await,
        Err(StorageError::CursorAhead { .. })
    ));
    // A store with no changes at all answers empty pages.
    let s3 = add_store(&db, "S003").await;
    let page = db.changes_after(&s3, head, 10).await.unwrap();
    assert!(page.changes.is_empty() && !page.more && page.next_cursor == head);
}

async fn ingest_is_idempotent(db: Db) {
    let s1 = add_store(&db, "S001").await;
    let gw = add_gateway(&db, &s1).await;
    let r = db
        .create_price_batch(&batch(only(&["S001"]), &[(1, 150), (2, 80)]))
        .await
        .unwrap();
    let events = vec![
        sale(1, "s-1", 10, &[(1, 2, 150), (2, 1, 80)]),
        staged(2, &r.batch_id, 1),
        activated(3, &r.batch_id, 1),
        event(
            4,
            20,
            EventBody::StockAdjusted {
                adjustment_id: EventId::from_bytes([9; 16]),
                gtin: g(1),
                delta: 50,
            },
        ),
    ];
    let first = db.ingest_events(&gw.gateway_id, &events).await.unwrap();
    let again = db.ingest_events(&gw.gateway_id, &events).await.unwrap();
    assert_eq!(first.acked_through, 4);
    assert_eq!(
        again.acked_through, first.acked_through,
        "a replay gets the same ack"
    );
    // An older part of the outbox, sent again, is acknowledged the same way.
    assert_eq!(
        db.ingest_events(&gw.gateway_id, &events[..2])
            .await
            .unwrap()
            .acked_through,
        4
    );
    let sales = db.sales_since(&s1, SalesSince::All, 10).await.unwrap();
    assert_eq!(sales.sales.len(), 1, "one sale however often uploaded");
    assert_eq!(sales.sales[0].record.total, Money::new(380, cny()));
    assert_eq!(sales.sales[0].event_id, events[0].id);
    assert_eq!(sales.sales[0].gateway, gw.gateway_id);
    assert_eq!(sales.sales[0].sold_at, UtcMillis(10));
    // Stock counts the sale once; the store's StockAdjusted echo is not a second delta.
    assert_eq!(db.stock(&s1, &g(1)).await.unwrap(), -2);
    assert_eq!(db.stock(&s1, &g(2)).await.unwrap(), -1);
    let progress = db.batch_progress(&r.batch_id).await.unwrap();
    assert_eq!(
        (progress.stores[0].staged, progress.stores[0].active),
        (1, 1)
    );

    // An overlapping upload: old events skipped, the new one stored.
    let mut overlap = events[2..].to_vec();
    overlap.push(sale(5, "s-2", 30, &[(1, 1, 150)]));
    assert_eq!(
        db.ingest_events(&gw.gateway_id, &overlap)
            .await
            .unwrap()
            .acked_through,
        5
    );
    assert_eq!(db.stock(&s1, &g(1)).await.unwrap(), -3);

    // A second gateway of the store re-uploading the same event ids (a replaced gateway
    // replaying its ledger) stores its events but repeats no side effect.
    let gw2 = add_gateway(&db, &s1).await;
    let mut replay = events.clone();
    replay.push(overlap.last().unwrap().clone());
    assert_eq!(
        db.ingest_events(&gw2.gateway_id, &replay)
            .await
            .unwrap()
            .acked_through,
        5
    );
    assert_eq!(
        db.sales_since(&s1, SalesSince::All, 10)
            .await
            .unwrap()
            .sales
            .len(),
        2
    );
    assert_eq!(db.stock(&s1, &g(1)).await.unwrap(), -3);

    // The same seq with a different event is not a replay: refused, nothing changes.
    let mut forged = events[1].clone();
    forged.id = EventId::from_bytes([7; 16]);
    assert!(matches!(
        db.ingest_events(&gw.gateway_id, &[forged]).await,
        Err(StorageError::EventConflict { seq: 2 })
    ));
    // An empty upload answers the current ack.
    assert_eq!(
        db.ingest_events(&gw.gateway_id, &[])
            .await
            .unwrap()
            .acked_through,
        5
    );
}

async fn seq_gap_and_bad_events_are_refused(db: Db) {
    let s1 = add_store(&db, "S001").await;
    let gw = add_gateway(&db, &s1).await;
    db.ingest_events(
        &gw.gateway_id,
        &[
            sale(1, "a", 1, &[(1, 1, 10)]),
            sale(2, "b", 1, &[(1, 1, 10)]),
        ],
    )
    .await
    .unwrap();
    match db
        .ingest_events(&gw.gateway_id, &[sale(4, "d", 1, &[(1, 1, 10)])])
        .await
    {
        Err(StorageError::SeqGap { expected_from }) => assert_eq!(expected_from, 3),
        other => panic!("{other:?}"),
    }
    // Not contiguous, or starting at 0: refused naming the seq.
    assert!(matches!(
        db.ingest_events(
            &gw.gateway_id,
            &[
                sale(3, "c", 1, &[(1, 1, 10)]),
                sale(5, "e", 1, &[(1, 1, 10)])
            ]
        )
        .await,
        Err(StorageError::InvalidEvent { seq: 5, .. })
    ));
    assert!(matches!(
        db.ingest_events(&gw.gateway_id, &[sale(0, "z", 1, &[(1, 1, 10)])])
            .await,
        Err(StorageError::InvalidEvent { seq: 0, .. })
    ));
    // One inconsistent sale refuses the whole upload.
    let mut bad = sale(4, "d", 1, &[(1, 1, 10)]);
    if let EventBody::SaleCommitted(s) = &mut bad.body {
        s.total.minor += 1;
    }
    let err = db
        .ingest_events(&gw.gateway_id, &[sale(3, "c", 1, &[(1, 1, 10)]), bad])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::InvalidEvent { seq: 4, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("sale total"), "{err}");
    assert_eq!(
        db.sales_since(&s1, SalesSince::All, 10)
            .await
            .unwrap()
            .sales
            .len(),
        2
    );
    assert_eq!(
        db.ingest_events(&gw.gateway_id, &[])
            .await
            .unwrap()
            .acked_through,
        2
    );
    // Unknown gateway.
    let unknown = GatewayCredential::generate(&s1).unwrap().gateway_id;
    assert!(matches!(
        db.ingest_events(&unknown, &[sale(1, "x", 1, &[(1, 1, 10)])])
            .await,
        Err(StorageError::UnknownGateway(_))
    ));
}

async fn sales_since_cursor_and_time(db: Db) {
    let s1 = add_store(&db, "S001").await;
    let gw = add_gateway(&db, &s1).await;
    let t0 = 1_800_000_000_000;
    for i in 0..3u64 {
        db.ingest_events(
            &gw.gateway_id,
            &[sale(
                i + 1,
                &format!("s-{i}"),
                t0 + 1_000 * i as i64,
                &[(1, 1, 10)],
            )],
        )
        .await
        .unwrap();
    }
    let p1 = db.sales_since(&s1, SalesSince::All, 2).await.unwrap();
    assert_eq!(p1.sales.len(), 2);
    assert!(p1.more);
    assert_eq!(p1.next, p1.sales[1].hub_seq);
    let p2 = db
        .sales_since(&s1, SalesSince::Cursor(p1.next), 2)
        .await
        .unwrap();
    assert_eq!(p2.sales.len(), 1);
    assert!(!p2.more);
    assert_eq!(p2.sales[0].record.sale_id.as_str(), "s-2");
    let p3 = db
        .sales_since(&s1, SalesSince::Cursor(p2.next), 2)
        .await
        .unwrap();
    assert!(p3.sales.is_empty());
    assert_eq!(p3.next, p2.next, "an empty page keeps the cursor");

    let by_time = db
        .sales_since(&s1, SalesSince::Time(UtcMillis(t0 + 1_000)), 10)
        .await
        .unwrap();
    let ids: Vec<_> = by_time
        .sales
        .iter()
        .map(|s| s.record.sale_id.as_str())
        .collect();
    assert_eq!(ids, vec!["s-1", "s-2"], "sold_at >= since");
    let future = db
        .sales_since(&s1, SalesSince::Time(UtcMillis(t0 + 10_000)), 10)
        .await
        .unwrap();
    assert!(future.sales.is_empty());
    assert_eq!(
        future.next, p2.next,
        "nothing since then: continue after the last sale"
    );
    assert!(
        db.sales_since(&add_store(&db, "S002").await, SalesSince::All, 10)
            .await
            .unwrap()
            .sales
            .is_empty()
    );
}

async fn stock_sums_every_delta(db: Db) {
    let s1 = add_store(&db, "S001").await;
    let gw = add_gateway(&db, &s1).await;
    let adj = NewStockAdjustment::new(None, g(1), 10, "delivery").unwrap();
    let r1 = db.add_stock_adjustment(&s1, &adj).await.unwrap();
    assert!(r1.created);
    let r2 = db.add_stock_adjustment(&s1, &adj).await.unwrap();
    assert!(!r2.created, "same adjustment id again is a retry");
    assert_eq!(r2.seq, r1.seq);
    let mut changed = adj.clone();
    changed.delta = 11;
    assert!(matches!(
        db.add_stock_adjustment(&s1, &changed).await,
        Err(StorageError::AdjustmentConflict(_))
    ));
    assert!(matches!(
        db.add_stock_adjustment(&sid("S999"), &adj).await,
        Err(StorageError::UnknownStore(_))
    ));
    db.add_stock_adjustment(
        &s1,
        &NewStockAdjustment::new(None, g(2), -4, "count").unwrap(),
    )
    .await
    .unwrap();
    db.ingest_events(
        &gw.gateway_id,
        &[
            sale(1, "s-1", 1, &[(1, 3, 10)]),
            sale(2, "s-2", 1, &[(1, 1, 10), (2, 2, 5)]),
        ],
    )
    .await
    .unwrap();
    assert_eq!(db.stock(&s1, &g(1)).await.unwrap(), 10 - 3 - 1);
    assert_eq!(db.stock(&s1, &g(2)).await.unwrap(), -4 - 2);
    assert_eq!(db.stock(&s1, &g(3)).await.unwrap(), 0);
    let levels: Vec<_> = db
        .stock_levels(&s1)
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.gtin, l.on_hand))
        .collect();
    assert_eq!(levels, vec![(g(1), 6), (g(2), -6)]);
    // The adjustment travels to the store on its changefeed.
    let page = db.changes_after(&s1, 0, 10).await.unwrap();
    match &page.changes[0].body {
        ChangeBody::StockAdjustment(a) => {
            assert_eq!(
                (a.adjustment_id, a.delta, a.reason.as_str()),
                (adj.adjustment_id, 10, "delivery")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(page.changes.len(), 2);
    assert!(NewStockAdjustment::new(None, g(1), 0, "x").is_err());
    assert!(NewStockAdjustment::new(None, g(1), 1, " ").is_err());
}

async fn batch_progress_per_store(db: Db) {
    let s1 = add_store(&db, "S001").await;
    add_store(&db, "S002").await;
    let gw = add_gateway(&db, &s1).await;
    let r = db
        .create_price_batch(&batch(BatchStores::All, &[(1, 1), (2, 2), (3, 3)]))
        .await
        .unwrap();
    let events = vec![
        staged(1, &r.batch_id, 1),
        staged(2, &r.batch_id, 2),
        staged(3, &r.batch_id, 3),
        // Staged again after a cursor restart: a new event, the same GTIN, counted once.
        staged(4, &r.batch_id, 3),
        activated(5, &r.batch_id, 1),
        activated(6, &r.batch_id, 2),
    ];
    db.ingest_events(&gw.gateway_id, &events).await.unwrap();
    let p = db.batch_progress(&r.batch_id).await.unwrap();
    assert_eq!(p.items, 3);
    assert_eq!(p.created_at, r.created_at);
    let per_store: Vec<_> = p
        .stores
        .iter()
        .map(|s| (s.store.as_str(), s.items, s.staged, s.active))
        .collect();
    assert_eq!(per_store, vec![("S001", 3, 3, 2), ("S002", 3, 0, 0)]);
    assert!(matches!(
        db.batch_progress(&BatchId::parse("pb-nope").unwrap()).await,
        Err(StorageError::UnknownBatch(_))
    ));
}

async fn compaction_and_cursor_expiry(db: Db) {
    let s1 = add_store(&db, "S001").await;
    let s2 = add_store(&db, "S002").await;
    // seq 1: an adjustment (never compacted), then v1 of two products, then v2 of one.
    db.add_stock_adjustment(
        &s1,
        &NewStockAdjustment::new(None, g(9), 5, "count").unwrap(),
    )
    .await
    .unwrap();
    let mut m = VersionModel::default();
    let r = db
        .create_price_batch(&batch(only(&["S001"]), &[(1, 100), (2, 200)]))
        .await
        .unwrap();
    m.record(&r, &[1, 2]);
    let r = db
        .create_price_batch(&batch(only(&["S002"]), &[(1, 100)]))
        .await
        .unwrap();
    m.record(&r, &[1]);
    let v1 = db.changes_after(&s1, 0, 100).await.unwrap();
    let caught_up = v1.next_cursor;
    let r = db
        .create_price_batch(&batch(only(&["S001"]), &[(1, 110)]))
        .await
        .unwrap();
    m.record(&r, &[1]);

    let report = db.compact().await.unwrap();
    assert_eq!(report.removed, 1, "only S001's superseded v1 of product 1");
    assert_eq!(report.per_store, vec![(s1.clone(), 1)]);
    assert_eq!(db.compact().await.unwrap().removed, 0);

    // Every cursor behind the compaction, paging one change at a time, still converges on the
    // newest versions: a deleted change's successor always has a higher seq. No resync, no loop.
    for start in [0, 1, 2, caught_up] {
        let mut cursor = start;
        let mut seen = Vec::new();
        for _ in 0..10 {
            let page = db.changes_after(&s1, cursor, 1).await.unwrap();
            seen.extend(price_versions_of(&page));
            cursor = page.next_cursor;
            if !page.more {
                break;
            }
        }
        assert!(
            seen.contains(&(g(1), m.nth(&s1, 1, 2))),
            "from cursor {start}: {seen:?}"
        );
        assert!(
            !seen.contains(&(g(1), m.nth(&s1, 1, 1))),
            "from cursor {start}: superseded version served"
        );
    }
    let fresh = db.changes_after(&s1, 0, 100).await.unwrap();
    assert_eq!(fresh.changes.len(), 3);
    assert_eq!(
        price_versions(&db, &s1).await,
        vec![(g(2), m.nth(&s1, 2, 1)), (g(1), m.nth(&s1, 1, 2))]
    );
    // A cursor beyond the head (a hub restored from an older backup) must start again from 0.
    match db.changes_after(&s1, fresh.next_cursor + 100, 100).await {
        Err(e @ StorageError::CursorAhead { .. }) => {
            assert!(e.to_string().contains("start again from cursor 0"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    // The other store was not touched.
    assert_eq!(
        price_versions(&db, &s2).await,
        vec![(g(1), m.nth(&s2, 1, 1))]
    );
}

async fn two_gateways_may_reuse_a_sale_id(db: Db) {
    let s1 = add_store(&db, "S001").await;
    let a = add_gateway(&db, &s1).await;
    let b = add_gateway(&db, &s1).await;
    // Each lane numbers its own sales; two gateways of one store can both have a "lane1-0001".
    db.ingest_events(
        &a.gateway_id,
        &[sale(1, "lane1-0001", 1_000, &[(1, 2, 100)])],
    )
    .await
    .unwrap();
    db.ingest_events(
        &b.gateway_id,
        &[sale(1, "lane1-0001", 1_000, &[(1, 3, 100)])],
    )
    .await
    .unwrap();
    let page = db.sales_since(&s1, SalesSince::All, 100).await.unwrap();
    assert_eq!(page.sales.len(), 2, "both sales count");
    assert_eq!(db.stock(&s1, &g(1)).await.unwrap(), -5);
}

fn price_versions_of(page: &aisle_protocol::sync::ChangePage) -> Vec<(Gtin, u64)> {
    page.changes
        .iter()
        .filter_map(|c| match &c.body {
            ChangeBody::Price(p) => Some((p.gtin, p.version)),
            _ => None,
        })
        .collect()
}

async fn identical_uploads_at_once_have_one_effect(db: Db) {
    let s1 = add_store(&db, "S001").await;
    let gw = add_gateway(&db, &s1).await;
    let mut seq = 0;
    for round in 0..8u64 {
        let events: Vec<_> = (0..20)
            .map(|i| {
                seq += 1;
                sale(seq, &format!("s-{round}-{i}"), 1, &[(1, 1, 10), (2, 2, 10)])
            })
            .collect();
        let (a, b) = (db.clone(), db.clone());
        let (ea, eb) = (events.clone(), events.clone());
        let (ga, gb) = (gw.gateway_id.clone(), gw.gateway_id.clone());
        let ta = tokio::spawn(async move { a.ingest_events(&ga, &ea).await });
        let tb = tokio::spawn(async move { b.ingest_events(&gb, &eb).await });
        let (ra, rb) = (ta.await.unwrap().unwrap(), tb.await.unwrap().unwrap());
        assert_eq!(ra.acked_through, seq);
        assert_eq!(
            rb.acked_through, ra.acked_through,
            "both answers are the same ack"
        );
    }
    let sales = db.sales_since(&s1, SalesSince::All, 1_000).await.unwrap();
    assert_eq!(sales.sales.len(), 160);
    let unique: HashSet<_> = sales
        .sales
        .iter()
        .map(|s| s.record.sale_id.clone())
        .collect();
    assert_eq!(unique.len(), 160);
    assert_eq!(db.stock(&s1, &g(1)).await.unwrap(), -160);
    assert_eq!(db.stock(&s1, &g(2)).await.unwrap(), -320);
}

/// Many batches committing concurrently while a reader pages the changefeed by cursor with a
/// small page: the reader must see every change exactly once. With a plain sequence and no
/// writer serialisation, a batch that drew lower seqs but commits later is skipped for good.
async fn concurrent_writers_never_skip_a_reader(db: Db) {
    const WRITERS: u64 = 8;
    const BATCHES: u64 = 8;
    const ITEMS: u64 = 12;
    let s1 = add_store(&db, "S001").await;
    add_store(&db, "S002").await;
    add_store(&db, "S003").await;
    let total = (WRITERS * BATCHES * ITEMS) as usize;

    let writers_done = Arc::new(AtomicBool::new(false));
    let reader = {
        let db = db.clone();
        let s1 = s1.clone();
        let writers_done = writers_done.clone();
        tokio::spawn(async move {
            let mut cursor = 0;
            let mut seen: BTreeMap<(Gtin, u64), u64> = BTreeMap::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while seen.len() < total && tokio::time::Instant::now() < deadline {
                // Read before the check, so the last page is read after every commit.
                let done = writers_done.load(Ordering::SeqCst);
                let page = db.changes_after(&s1, cursor, 7).await.unwrap();
                if done && page.changes.is_empty() {
                    break;
                }
                for c in &page.changes {
                    assert!(c.seq > cursor, "seq {} not after cursor {cursor}", c.seq);
                    if let ChangeBody::Price(p) = &c.body {
                        let dup = seen.insert((p.gtin, p.version), c.seq);
                        assert!(dup.is_none(), "{:?} v{} seen twice", p.gtin, p.version);
                    }
                }
                if page.changes.is_empty() {
                    tokio::task::yield_now().await;
                }
                cursor = page.next_cursor;
            }
            seen
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                for b in 0..BATCHES {
                    // Each writer prices its own products (no row contention between writers)
                    // in every store: S001's seqs are drawn first, then the transaction goes on
                    // with the other stores, so a later-drawn batch can easily commit first.
                    let items: Vec<_> = (0..ITEMS)
                        .map(|i| (1_000 * (w + 1) + i, 100 + b as i64))
                        .collect();
                    db.create_price_batch(&batch(BatchStores::All, &items))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    writers_done.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();
    let all: HashSet<_> = price_versions(&db, &s1).await.into_iter().collect();
    assert_eq!(all.len(), total);
    let missed: Vec<_> = all.iter().filter(|k| !seen.contains_key(k)).collect();
    assert!(
        missed.is_empty(),
        "the cursor skipped {} of {total} changes, e.g. {:?}",
        missed.len(),
        missed.first()
    );
}

async fn long_poll_doorbell_rings_after_commit(db: Db) {
    let s1 = add_store(&db, "S001").await;
    let s2 = add_store(&db, "S002").await;
    let mut sub1 = db.subscribe(&s1);
    let mut sub2 = db.subscribe(&s2);
    sub1.mark_seen();
    sub2.mark_seen();
    db.create_price_batch(&batch(only(&["S001"]), &[(1, 1)]))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), sub1.rung())
        .await
        .expect("the store's doorbell rings after its batch commits");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sub2.rung())
            .await
            .is_err(),
        "another store's doorbell stays quiet"
    );
}

async fn footfall_sums_intervals_and_replays_add_nothing(db: Db) {
    let s1 = add_store(&db, "S001").await;
    let s2 = add_store(&db, "S002").await;
    let gw = add_gateway(&db, &s1).await;
    let gw_s2 = add_gateway(&db, &s2).await;
    let h8 = DAY0 + 8 * HOUR;
    let events = vec![
        // 08:00-08:15: two entrances, and a late re-emission for the north one (additive).
        footfall(1, h8 + QUARTER + 5, "north", h8, (10, 4), Some(6), &[]),
        footfall(2, h8 + QUARTER + 5, "south", h8, (5, 1), None, &[]),
        sale(3, "s-1", h8 + 5 * 60_000, &[(1, 1, 100)]),
        footfall(4, h8 + 2 * QUARTER, "north", h8, (2, 0), None, &[]),
        // 08:15-08:30: a camera of the north entrance was offline for part of it.
        footfall(
            5,
            h8 + 2 * QUARTER + 5,
            "north",
            h8 + QUARTER,
            (3, 3),
            Some(9),
            &["cam-2"],
        ),
        footfall(
            6,
            h8 + 2 * QUARTER + 5,
            "south",
            h8 + QUARTER,
            (1, 0),
            Some(7),
            &["cam-9", "cam-2"],
        ),
        sale(7, "s-2", h8 + 20 * 60_000, &[(1, 2, 100)]),
        // 09:30: a sale, no footfall. 10:00: outside the queried range.
        sale(8, "s-3", h8 + HOUR + 30 * 60_000, &[(1, 1, 100)]),
        footfall(
            9,
            h8 + 2 * HOUR + QUARTER,
            "north",
            h8 + 2 * HOUR,
            (50, 50),
            Some(1),
            &[],
        ),
    ];
    assert_eq!(
        db.ingest_events(&gw.gateway_id, &events)
            .await
            .unwrap()
            .acked_through,
        9
    );
    // Another store's footfall stays its own.
    db.ingest_events(
        &gw_s2.gateway_id,
        &[footfall(
            1,
            h8 + QUARTER,
            "north",
            h8,
            (99, 99),
            Some(99),
            &[],
        )],
    )
    .await
    .unwrap();

    let quarters = vec![
        (8 * 60, 17, 5, Some(6), 1, 3, vec![], 1),
        (
            8 * 60 + 15,
            4,
            3,
            Some(9),
            1,
            2,
            names(&["cam-2", "cam-9"]),
            1,
        ),
        (9 * 60 + 30, 0, 0, None, 0, 0, vec![], 1),
    ];
    let hours = vec![
        // Occupancy from the latest interval that reported one (08:15); its two events were
        // emitted at the same instant, so the higher value.
        (8 * 60, 21, 8, Some(9), 2, 5, names(&["cam-2", "cam-9"]), 2),
        (9 * 60, 0, 0, None, 0, 0, vec![], 1),
    ];
    let check = |db: Db| {
        let (quarters, hours) = (quarters.clone(), hours.clone());
        let s1 = s1.clone();
        async move {
            assert_eq!(
                rows(&footfall_of(&db, &s1, h8, h8 + 2 * HOUR, QUARTER).await),
                quarters
            );
            assert_eq!(
                rows(&footfall_of(&db, &s1, h8, h8 + 2 * HOUR, HOUR).await),
                hours
            );
        }
    };
    check(db.clone()).await;

    // The same upload again, an older part of it, and a replaced gateway replaying the same
    // event ids: nothing is counted twice.
    assert_eq!(
        db.ingest_events(&gw.gateway_id, &events)
            .await
            .unwrap()
            .acked_through,
        9
    );
    db.ingest_events(&gw.gateway_id, &events[..3])
        .await
        .unwrap();
    let replaced = add_gateway(&db, &s1).await;
    db.ingest_events(&replaced.gateway_id, &events)
        .await
        .unwrap();
    check(db.clone()).await;

    // A day bucket holds all of it: 08:00, 08:15 and 10:00 reported, 93 intervals missing.
    let day = footfall_of(&db, &s1, DAY0, DAY0 + 24 * HOUR, 24 * HOUR).await;
    assert_eq!(
        rows(&day),
        vec![(0, 71, 58, Some(1), 3, 6, names(&["cam-2", "cam-9"]), 3)]
    );
    // Another store, an empty range, a range before anything.
    assert_eq!(
        rows(&footfall_of(&db, &s2, h8, h8 + HOUR, HOUR).await),
        vec![(8 * 60, 99, 99, Some(99), 1, 1, vec![], 0)]
    );
    assert!(footfall_of(&db, &s1, DAY0, h8, HOUR).await.is_empty());
    let s3 = add_store(&db, "S003").await;
    assert!(
        footfall_of(&db, &s3, DAY0, DAY0 + 24 * HOUR, HOUR)
            .await
            .is_empty()
    );
}

async fn footfall_occupancy_is_the_latest_reported(db: Db) {
    let s1 = add_store(&db, "S001").await;
    let gw = add_gateway(&db, &s1).await;
    let h8 = DAY0 + 8 * HOUR;
    let events = vec![
        // 08:30 is the latest interval with an occupancy; of its two events the one the store
        // emitted later counts, even though it is lower.
        footfall(
            1,
            h8 + 3 * QUARTER + 5,
            "north",
            h8 + 2 * QUARTER,
            (1, 0),
            Some(40),
            &[],
        ),
        footfall(
            2,
            h8 + 3 * QUARTER + 9,
            "south",
            h8 + 2 * QUARTER,
            (1, 0),
            Some(12),
            &[],
        ),
        // 08:45 reports no occupancy; 08:00 reports a higher one, but earlier.
        footfall(
            3,
            h8 + 4 * QUARTER + 5,
            "north",
            h8 + 3 * QUARTER,
            (1, 0),
            None,
            &[],
        ),
        footfall(4, h8 + QUARTER + 5, "north", h8, (1, 0), Some(80), &[]),
    ];
    db.ingest_events(&gw.gateway_id, &events).await.unwrap();
    let hour = footfall_of(&db, &s1, h8, h8 + HOUR, HOUR).await;
    assert_eq!(hour.len(), 1);
    assert_eq!(
        (hour[0].occupancy, hour[0].entered, hour[0].slots_reported),
        (Some(12), 4, 3)
    );
    let quarters = footfall_of(&db, &s1, h8, h8 + HOUR, QUARTER).await;
    let occ: Vec<_> = quarters.iter().map(|t| t.occupancy).collect();
    assert_eq!(occ, vec![Some(80), Some(12), None]);
}

// ---------- running each body on both backends ----------

async fn sqlite_db() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("hub.db").display());
    let db = storage::open(&url).await.unwrap();
    (dir, db)
}

async fn postgres_db() -> (TempPostgres, Db) {
    let pg = TempPostgres::create()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is required for this test: {e}"));
    let db = storage::open(pg.url()).await.unwrap();
    (pg, db)
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let (_dir, db) = super::sqlite_db().await;
                    assert_eq!(db.backend(), aisle_hub::storage::Backend::Sqlite);
                    super::$name(db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let (pg, db) = super::postgres_db().await;
                    assert_eq!(db.backend(), aisle_hub::storage::Backend::Postgres);
                    super::$name(db).await;
                    pg.cleanup().await.unwrap();
                }
            )*
        }
    };
}

conformance!(
    stores_gateways_and_auth,
    price_versions_rise_per_store_and_gtin,
    changes_after_pages_and_limits,
    ingest_is_idempotent,
    seq_gap_and_bad_events_are_refused,
    sales_since_cursor_and_time,
    stock_sums_every_delta,
    batch_progress_per_store,
    compaction_and_cursor_expiry,
    two_gateways_may_reuse_a_sale_id,
    identical_uploads_at_once_have_one_effect,
    concurrent_writers_never_skip_a_reader,
    long_poll_doorbell_rings_after_commit,
    footfall_sums_intervals_and_replays_add_nothing,
    footfall_occupancy_is_the_latest_reported,
);

#[tokio::test]
async fn unsupported_urls_are_refused_clearly() {
    let err = storage::open("mysql://u:secret@h/db").await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("sqlite://PATH or postgres://"), "{msg}");
    assert!(
        !msg.contains("secret"),
        "passwords never appear in messages: {msg}"
    );
}

// ---------- upgrading a version 1 database ----------

const DOWNGRADE_TO_V1: &str = "DELETE FROM footfall; DELETE FROM schema_version;
     INSERT INTO schema_version (version) VALUES (1);";

/// Uploads footfall and a sale, and returns the hour report's rows.
async fn seed_footfall(db: &Db) -> (StoreId, Vec<Row>) {
    let s1 = add_store(db, "S001").await;
    let gw = add_gateway(db, &s1).await;
    let h8 = DAY0 + 8 * HOUR;
    db.ingest_events(
        &gw.gateway_id,
        &[
            footfall(1, h8 + QUARTER, "north", h8, (4, 1), Some(3), &["cam-1"]),
            sale(2, "s-1", h8 + 60_000, &[(1, 1, 100)]),
            footfall(3, h8 + QUARTER, "south", h8, (2, 2), None, &[]),
        ],
    )
    .await
    .unwrap();
    let report = rows(&footfall_of(db, &s1, h8, h8 + HOUR, HOUR).await);
    assert_eq!(
        report,
        vec![(8 * 60, 6, 3, Some(3), 1, 2, names(&["cam-1"]), 1)]
    );
    (s1, report)
}

async fn hour_rows(db: &Db, store: &StoreId) -> Vec<Row> {
    let h8 = DAY0 + 8 * HOUR;
    rows(&footfall_of(db, store, h8, h8 + HOUR, HOUR).await)
}

/// A version 1 database holds FootfallCounted events but no footfall rows: this build derives
/// them once when it opens it, and counts each event once however often it is opened.
#[tokio::test]
async fn sqlite_footfall_rows_are_backfilled_from_version_1() {
    let (dir, db) = sqlite_db().await;
    let (s1, report) = seed_footfall(&db).await;
    drop(db);
    let path = dir.path().join("hub.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(DOWNGRADE_TO_V1).unwrap();
    drop(conn);
    let url = format!("sqlite://{}", path.display());
    for _ in 0..2 {
        let db = storage::open(&url).await.unwrap();
        assert_eq!(hour_rows(&db, &s1).await, report);
    }
}

#[tokio::test]
async fn postgres_footfall_rows_are_backfilled_from_version_1() {
    let (pg, db) = postgres_db().await;
    let (s1, report) = seed_footfall(&db).await;
    drop(db);
    let (client, conn) = tokio_postgres::connect(pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    client.batch_execute(DOWNGRADE_TO_V1).await.unwrap();
    drop(client);
    let _ = conn.await;
    for _ in 0..2 {
        let db = storage::open(pg.url()).await.unwrap();
        assert_eq!(hour_rows(&db, &s1).await, report);
    }
    pg.cleanup().await.unwrap();
}
