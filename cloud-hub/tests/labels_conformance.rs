//! Shelf-label storage conformance: one set of test bodies, each run against SQLite (a temp
//! file) and PostgreSQL (a fresh random database per test), like `conformance.rs`.
//!
//! Time is a parameter of the labels read (`LabelQuery::now`) and price batches carry their own
//! `effective_at`, so how long a label has been stale is tested with fixed times, never by
//! waiting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use aisle_hub::labels::{LabelCounts, LabelFilter, LabelQuery, LabelReport, LabelState};
use aisle_hub::price_batch::{BatchStores, ItemOrigin, PriceBatch, PriceItem};
use aisle_hub::storage::{self, HubStorage, NewStore};
use aisle_hub::testsupport::TempPostgres;
use aisle_protocol::esl::LabelId;
use aisle_protocol::sync::{ChangeBody, EventBody, LedgerEvent};
use aisle_protocol::{BatchId, Currency, EventId, GatewayId, Gtin, Hlc, Money, StoreId, UtcMillis};

type Db = Arc<dyn HubStorage>;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
/// 2026-11-22T00:00:00Z.
const T0: i64 = 1_795_305_600_000;

fn cny() -> Currency {
    Currency::parse("CNY").unwrap()
}

fn g(n: u64) -> Gtin {
    Gtin::from_index(n).unwrap()
}

fn sid(s: &str) -> StoreId {
    StoreId::parse(s).unwrap()
}

/// A store's gateway and its next seq.
struct Gw {
    id: GatewayId,
    seq: u64,
}

impl Gw {
    async fn new(db: &Db, store: &StoreId) -> Gw {
        let cred = db.create_gateway(store).await.unwrap();
        Gw {
            id: cred.gateway_id,
            seq: 0,
        }
    }

    /// Events at the store's time `at`, with fresh ids and the next seqs.
    fn events(&mut self, at: i64, bodies: Vec<EventBody>) -> Vec<LedgerEvent> {
        bodies
            .into_iter()
            .map(|body| {
                self.seq += 1;
                LedgerEvent {
                    seq: self.seq,
                    id: EventId::from_bytes(rand::random()),
                    hlc: Hlc {
                        wall_ms: at as u64,
                        counter: 0,
                    },
                    at: UtcMillis(at),
                    body,
                }
            })
            .collect()
    }

    async fn upload(&mut self, db: &Db, at: i64, bodies: Vec<EventBody>) -> Vec<LedgerEvent> {
        let events = self.events(at, bodies);
        let ack = db.ingest_events(&self.id, &events).await.unwrap();
        assert_eq!(ack.acked_through, self.seq);
        events
    }
}

async fn setup(db: &Db) -> (StoreId, StoreId) {
    let mut ids = Vec::new();
    for id in ["S001", "S002"] {
        ids.push(
            db.create_store(&NewStore::new(sid(id), id, cny()).unwrap())
                .await
                .unwrap()
                .id,
        );
    }
    (ids[0].clone(), ids[1].clone())
}

/// A batch for every store pricing products `items`, effective at `effective_at` (or now).
async fn price(db: &Db, items: &[u64], effective_at: Option<i64>) -> BatchId {
    let items = items
        .iter()
        .enumerate()
        .map(|(i, n)| PriceItem {
            origin: ItemOrigin::Row(i as u32 + 1),
            gtin: g(*n),
            price: Money::new(100 + *n as i64, cny()),
            name: format!("Product {n}"),
        })
        .collect();
    let batch = PriceBatch::new(BatchStores::All, effective_at.map(UtcMillis), items).unwrap();
    db.create_price_batch(&batch).await.unwrap().batch_id
}

/// The version `batch` gave product `n` at `store`, read from the store's changefeed.
async fn version(db: &Db, store: &StoreId, batch: &BatchId, n: u64) -> u64 {
    let page = db.changes_after(store, 0, 5_000).await.unwrap();
    page.changes
        .into_iter()
        .find_map(|c| match c.body {
            ChangeBody::Price(p) if &p.batch_id == batch && p.gtin == g(n) => Some(p.version),
            _ => None,
        })
        .unwrap()
}

fn bind(label: u32, n: u64, shelf: &str) -> EventBody {
    EventBody::LabelBound {
        label: LabelId(label),
        gtin: g(n),
        shelf: shelf.into(),
    }
}

fn unbind(label: u32) -> EventBody {
    EventBody::LabelUnbound {
        label: LabelId(label),
    }
}

fn confirm(label: u32, n: u64, version: u64, batch: &BatchId) -> EventBody {
    EventBody::LabelConfirmed {
        label: LabelId(label),
        gtin: g(n),
        version,
        batch_id: batch.clone(),
    }
}

fn not_updated(label: u32, n: u64, version: u64, batch: &BatchId) -> EventBody {
    EventBody::LabelNotUpdated {
        label: LabelId(label),
        gtin: g(n),
        version,
        batch_id: batch.clone(),
        reason: "tag did not acknowledge".into(),
    }
}

/// (store, bound, confirmed, pending, failed) per store of the batch.
async fn counts(db: &Db, batch: &BatchId) -> Vec<(String, u64, u64, u64, u64)> {
    db.batch_progress(batch)
        .await
        .unwrap()
        .stores
        .into_iter()
        .map(|s| {
            let LabelCounts {
                bound,
                confirmed,
                failed,
            } = s.labels;
            (
                s.store.to_string(),
                bound,
                confirmed,
                s.labels.pending(),
                failed,
            )
        })
        .collect()
}

async fn labels(db: &Db, store: &StoreId, filter: LabelFilter, now: i64) -> Vec<LabelReport> {
    db.store_labels(store, &LabelQuery::new(filter, None, 5_000, UtcMillis(now)))
        .await
        .unwrap()
        .labels
}

fn ids(reports: &[LabelReport]) -> Vec<u32> {
    reports.iter().map(|r| r.label.label.0).collect()
}

async fn audited(db: &Db, action: &str) -> Vec<String> {
    db.audit_entries(1, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == action)
        .map(|e| e.subject)
        .collect()
}

// ---------- the suite ----------

async fn batch_report_counts_labels_and_replays_change_nothing(db: Db) {
    let (s1, _s2) = setup(&db).await;
    let b1 = price(&db, &[1, 2, 3], None).await;
    let other = price(&db, &[9], None).await;
    let (v1, v2, v3) = (
        version(&db, &s1, &b1, 1).await,
        version(&db, &s1, &b1, 2).await,
        version(&db, &s1, &b1, 3).await,
    );
    let mut gw = Gw::new(&db, &s1).await;
    let events = gw
        .upload(
            &db,
            T0,
            vec![
                bind(1, 1, "A1-01"),
                bind(2, 1, "A1-02"),
                bind(3, 2, "A2-01"),
                bind(4, 3, "A3-01"),
                bind(5, 4, "A4-01"),
                confirm(1, 1, v1, &b1),
                not_updated(3, 2, v2, &b1),
                confirm(4, 3, v3 - 1, &b1),
            ],
        )
        .await;
    // Label 5 shows a product outside the batch: not counted. Label 4 confirmed an older
    // version: pending.
    let expected = vec![
        ("S001".to_owned(), 4, 1, 2, 1),
        ("S002".to_owned(), 0, 0, 0, 0),
    ];
    assert_eq!(counts(&db, &b1).await, expected);
    assert_eq!(
        counts(&db, &other).await,
        vec![
            ("S001".to_owned(), 0, 0, 0, 0),
            ("S002".to_owned(), 0, 0, 0, 0)
        ]
    );
    assert_eq!(
        audited(&db, "label.bound").await,
        vec![
            "S001/00000001",
            "S001/00000002",
            "S001/00000003",
            "S001/00000004",
            "S001/00000005"
        ]
    );

    // The same upload again: the same ack, nothing changes.
    let ack = db.ingest_events(&gw.id, &events).await.unwrap();
    assert_eq!(ack.acked_through, gw.seq);
    assert_eq!(counts(&db, &b1).await, expected);
    // The same events under another gateway and other seqs (a store's ledger uploaded again
    // by a replaced gateway): keyed by event id, they change nothing either.
    gw.upload(&db, T0 + MINUTE, vec![unbind(1), bind(2, 9, "Z9")])
        .await;
    let mut second = Gw::new(&db, &s1).await;
    let replayed: Vec<LedgerEvent> = events
        .iter()
        .enumerate()
        .map(|(i, e)| LedgerEvent {
            seq: i as u64 + 1,
            ..e.clone()
        })
        .collect();
    db.ingest_events(&second.id, &replayed).await.unwrap();
    second.seq = replayed.len() as u64;
    // Labels 1 and 2 left the batch's products; the replayed binds did not bring them back.
    assert_eq!(counts(&db, &b1).await[0], ("S001".to_owned(), 2, 0, 1, 1));
    let all = labels(&db, &s1, LabelFilter::All, T0 + HOUR).await;
    assert_eq!(ids(&all), vec![2, 3, 4, 5]);
    assert_eq!(all[0].label.gtin, g(9));
    // Two more audit entries (the unbind and the rebind), none for the replays.
    assert_eq!(audited(&db, "label.bound").await.len(), 6);
    assert_eq!(audited(&db, "label.unbound").await, vec!["S001/00000001"]);
    let audit = db.audit_entries(1, 10_000).await.unwrap();
    let last = audit.iter().rfind(|e| e.action == "label.bound").unwrap();
    assert_eq!(last.actor, format!("gateway:{}", gw.id));
    assert!(last.detail.contains(&g(9).to_string()), "{}", last.detail);
    let verified = db.verify_audit().await.unwrap();
    assert_eq!(
        (verified.entries, verified.broken),
        (audit.len() as u64, None)
    );
}

async fn an_older_confirmation_never_overwrites_a_newer_one(db: Db) {
    let (s1, _) = setup(&db).await;
    let b1 = price(&db, &[1], None).await;
    let b2 = price(&db, &[1], None).await;
    let (v1, v2) = (
        version(&db, &s1, &b1, 1).await,
        version(&db, &s1, &b2, 1).await,
    );
    assert!(v2 > v1);
    let mut gw = Gw::new(&db, &s1).await;
    gw.upload(
        &db,
        T0,
        vec![
            bind(1, 1, "A1"),
            bind(2, 1, "A2"),
            confirm(1, 1, v2, &b2),
            confirm(1, 1, v1, &b1),
            not_updated(1, 1, v1, &b1),
            confirm(2, 1, v1, &b1),
            not_updated(2, 1, v2, &b2),
        ],
    )
    .await;
    // A later upload carrying the older confirmation again changes nothing either.
    gw.upload(&db, T0 + MINUTE, vec![confirm(1, 1, v1, &b1)])
        .await;
    assert_eq!(counts(&db, &b1).await[0], ("S001".to_owned(), 2, 2, 0, 0));
    assert_eq!(counts(&db, &b2).await[0], ("S001".to_owned(), 2, 1, 0, 1));
    let now = UtcMillis::now().0 + HOUR;
    let all = labels(&db, &s1, LabelFilter::All, now).await;
    let one = &all[0].label;
    assert_eq!(one.confirmed.as_ref().unwrap().version, v2);
    assert_eq!(one.confirmed.as_ref().unwrap().at, UtcMillis(T0));
    assert_eq!(
        one.not_updated, None,
        "a report of a confirmed version is ignored"
    );
    assert_eq!(all[1].state(), LabelState::Failed);
    assert_eq!(all[1].label.not_updated.as_ref().unwrap().version, v2);

    // The store keeps trying: the confirmation clears "not updated".
    gw.upload(&db, T0 + 2 * MINUTE, vec![confirm(2, 1, v2, &b2)])
        .await;
    assert_eq!(counts(&db, &b2).await[0], ("S001".to_owned(), 2, 2, 0, 0));
    let all = labels(&db, &s1, LabelFilter::All, now).await;
    assert_eq!(all[1].label.not_updated, None);
    assert_eq!(all[1].state(), LabelState::Confirmed);
}

async fn unbinding_and_rebinding(db: Db) {
    let (s1, s2) = setup(&db).await;
    let b1 = price(&db, &[1, 2], None).await;
    let v1 = version(&db, &s1, &b1, 1).await;
    let mut gw = Gw::new(&db, &s1).await;
    gw.upload(
        &db,
        T0,
        vec![bind(1, 1, "A1"), bind(2, 1, "A2"), confirm(1, 1, v1, &b1)],
    )
    .await;
    assert_eq!(counts(&db, &b1).await[0], ("S001".to_owned(), 2, 1, 1, 0));
    // A shelf move keeps what the label shows; a new product starts afresh; an unbound label
    // is gone and its later reports are ignored.
    gw.upload(
        &db,
        T0 + HOUR,
        vec![
            bind(1, 1, "B7"),
            bind(2, 2, "A2"),
            unbind(2),
            confirm(2, 1, v1, &b1),
            bind(3, 1, "C1"),
            unbind(3),
        ],
    )
    .await;
    let now = UtcMillis::now().0 + HOUR;
    let all = labels(&db, &s1, LabelFilter::All, now).await;
    assert_eq!(ids(&all), vec![1]);
    assert_eq!(all[0].label.shelf, "B7");
    assert_eq!(all[0].label.bound_at, UtcMillis(T0));
    assert_eq!(all[0].state(), LabelState::Confirmed);
    assert_eq!(counts(&db, &b1).await[0], ("S001".to_owned(), 1, 1, 0, 0));
    gw.upload(&db, T0 + 2 * HOUR, vec![bind(1, 2, "B7")]).await;
    let all = labels(&db, &s1, LabelFilter::All, now).await;
    assert_eq!(
        (all[0].label.gtin, all[0].label.confirmed.clone()),
        (g(2), None)
    );
    assert_eq!(all[0].label.bound_at, UtcMillis(T0 + 2 * HOUR));
    assert_eq!(counts(&db, &b1).await[0], ("S001".to_owned(), 1, 0, 1, 0));
    // Labels are per store: S002 has none.
    assert!(labels(&db, &s2, LabelFilter::All, now).await.is_empty());
}

async fn stale_labels_with_how_long(db: Db) {
    let (s1, _) = setup(&db).await;
    // Product 1: three prices, effective at T0, T0+1h and T0+10h. Product 2: one, at T0.
    let b1 = price(&db, &[1, 2], Some(T0)).await;
    let b2 = price(&db, &[1], Some(T0 + HOUR)).await;
    let b3 = price(&db, &[1], Some(T0 + 10 * HOUR)).await;
    let v = |b: BatchId| {
        let db = db.clone();
        let s1 = s1.clone();
        async move { version(&db, &s1, &b, 1).await }
    };
    let (v1, v2, v3) = (
        v(b1.clone()).await,
        v(b2.clone()).await,
        v(b3.clone()).await,
    );
    let p2 = version(&db, &s1, &b1, 2).await;
    let mut gw = Gw::new(&db, &s1).await;
    gw.upload(
        &db,
        T0 - HOUR,
        vec![
            bind(1, 1, "A1"),
            bind(2, 1, "A2"),
            bind(4, 1, "A4"),
            bind(5, 7, "A5"),
            bind(6, 2, "A6"),
        ],
    )
    .await;
    gw.upload(
        &db,
        T0 + 30 * MINUTE,
        vec![
            bind(3, 1, "A3"),
            confirm(1, 1, v2, &b2),
            confirm(2, 1, v1, &b1),
            confirm(4, 1, v1, &b1),
            not_updated(4, 1, v2, &b2),
            confirm(6, 2, p2, &b1),
        ],
    )
    .await;
    let now = T0 + 2 * HOUR;
    let stale = labels(&db, &s1, LabelFilter::Stale, now).await;
    assert_eq!(ids(&stale), vec![2, 3, 4]);
    let how_long: Vec<_> = stale
        .iter()
        .map(|r| {
            (
                r.label.label.0,
                r.state(),
                r.current_version,
                r.stale_since(),
                r.stale_for_s(UtcMillis(now)),
            )
        })
        .collect();
    assert_eq!(
        how_long,
        vec![
            // Showed v1 since v2 took effect an hour ago.
            (
                2,
                LabelState::Pending,
                Some(v2),
                Some(UtcMillis(T0 + HOUR)),
                Some(3_600)
            ),
            // Never confirmed, bound after the first price took effect: stale since bound.
            (
                3,
                LabelState::Pending,
                Some(v2),
                Some(UtcMillis(T0 + 30 * MINUTE)),
                Some(5_400)
            ),
            (
                4,
                LabelState::Failed,
                Some(v2),
                Some(UtcMillis(T0 + HOUR)),
                Some(3_600)
            ),
        ]
    );
    assert_eq!(
        ids(&labels(&db, &s1, LabelFilter::Failed, now).await),
        vec![4]
    );
    assert_eq!(
        ids(&labels(&db, &s1, LabelFilter::Pending, now).await),
        vec![2, 3]
    );
    assert_eq!(
        ids(&labels(&db, &s1, LabelFilter::Confirmed, now).await),
        vec![1, 6]
    );
    let all = labels(&db, &s1, LabelFilter::All, now).await;
    assert_eq!(ids(&all), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(
        all[4].state(),
        LabelState::Unpriced,
        "no price for product 7"
    );
    assert_eq!(all[4].stale_since(), None);

    // Before the first price took effect nothing is current: nothing is stale.
    assert!(
        labels(&db, &s1, LabelFilter::Stale, T0 - 1)
            .await
            .is_empty()
    );
    // After v3 took effect label 1 (showing v2) is stale too, since v3's effective_at; label 2
    // (showing v1) since v2's, the first price it did not show.
    let later = T0 + 10 * HOUR + 1_000;
    let stale = labels(&db, &s1, LabelFilter::Stale, later).await;
    assert_eq!(ids(&stale), vec![1, 2, 3, 4]);
    assert_eq!(stale[0].current_version, Some(v3));
    assert_eq!(stale[0].stale_for_s(UtcMillis(later)), Some(1));
    assert_eq!(stale[1].stale_since(), Some(UtcMillis(T0 + HOUR)));
    // Label 4 reported v2 not updated, but v3 is current now: pending again.
    assert_eq!(stale[3].state(), LabelState::Pending);

    // Pages: ids after the last one seen, `more` while there are.
    let page = db
        .store_labels(
            &s1,
            &LabelQuery::new(LabelFilter::Stale, None, 3, UtcMillis(later)),
        )
        .await
        .unwrap();
    assert_eq!((ids(&page.labels), page.more), (vec![1, 2, 3], true));
    let page = db
        .store_labels(
            &s1,
            &LabelQuery::new(LabelFilter::Stale, Some(LabelId(3)), 3, UtcMillis(later)),
        )
        .await
        .unwrap();
    assert_eq!((ids(&page.labels), page.more), (vec![4], false));
}

/// A full upload (5,000 events) of bindings, then one of confirmations: 5,000 labels, two per
/// product. Prints how long each took (a figure for the record, not a test of speed).
async fn full_uploads_of_label_events(db: Db) {
    let (s1, _) = setup(&db).await;
    let items: Vec<u64> = (1..=2_500).collect();
    let b1 = price(&db, &items, None).await;
    let v1 = version(&db, &s1, &b1, 1).await;
    let mut gw = Gw::new(&db, &s1).await;
    let label = |i: u64| 0x1000_0000 + i as u32;
    let binds: Vec<EventBody> = (0..5_000u64)
        .map(|i| bind(label(i), i / 2 + 1, "A1"))
        .collect();
    let started = std::time::Instant::now();
    gw.upload(&db, T0, binds).await;
    let bound = started.elapsed();
    // One batch gives its items one version per store.
    let confirms: Vec<EventBody> = (0..5_000u64)
        .map(|i| confirm(label(i), i / 2 + 1, v1, &b1))
        .collect();
    let started = std::time::Instant::now();
    gw.upload(&db, T0 + MINUTE, confirms).await;
    let confirmed = started.elapsed();
    // The baseline, same run: as many price_staged events (a row each in batch_progress).
    let staged: Vec<EventBody> = (0..5_000u64)
        .map(|i| EventBody::PriceStaged {
            gtin: g(i / 2 + 1),
            version: v1,
            batch_id: b1.clone(),
            effective_at: UtcMillis(T0),
        })
        .collect();
    let started = std::time::Instant::now();
    gw.upload(&db, T0 + MINUTE, staged).await;
    eprintln!(
        "{:?}: uploads of 5000 events: label_bound (+5000 audit entries) {bound:?}, \
         label_confirmed {confirmed:?}; baseline price_staged {:?}",
        db.backend(),
        started.elapsed()
    );
    assert_eq!(
        counts(&db, &b1).await[0],
        ("S001".to_owned(), 5_000, 5_000, 0, 0)
    );
    assert_eq!(audited(&db, "label.bound").await.len(), 5_000);
    let verified = db.verify_audit().await.unwrap();
    assert_eq!(verified.broken, None);
    // A new price for every product: every label is stale, listed in one page.
    price(&db, &items, None).await;
    let started = std::time::Instant::now();
    let stale = db
        .store_labels(
            &s1,
            &LabelQuery::new(
                LabelFilter::Stale,
                None,
                5_000,
                UtcMillis(UtcMillis::now().0 + MINUTE),
            ),
        )
        .await
        .unwrap();
    eprintln!(
        "{:?}: the stale list of 5000 labels took {:?}",
        db.backend(),
        started.elapsed()
    );
    assert_eq!((stale.labels.len(), stale.more), (5_000, false));
    assert!(
        stale
            .labels
            .iter()
            .all(|r| r.state() == LabelState::Pending)
    );
}

/// Two gateways of one store upload confirmations of the same labels at once, one the newer
/// version, one the older: whatever the interleaving, every label ends on the newer one.
async fn two_gateways_at_once_never_lose_the_newer_confirmation(db: Db) {
    let (s1, _) = setup(&db).await;
    let b1 = price(&db, &[1], None).await;
    let b2 = price(&db, &[1], None).await;
    let (v1, v2) = (
        version(&db, &s1, &b1, 1).await,
        version(&db, &s1, &b2, 1).await,
    );
    let mut a = Gw::new(&db, &s1).await;
    let mut b = Gw::new(&db, &s1).await;
    const ROUNDS: u32 = 8;
    const LABELS: u32 = 200;
    for round in 0..ROUNDS {
        // Fresh labels each round: the race is on labels that confirmed nothing yet.
        let ids = round * LABELS..(round + 1) * LABELS;
        a.upload(&db, T0, ids.clone().map(|l| bind(l, 1, "A1")).collect())
            .await;
        let older = b.events(T0, ids.clone().map(|l| confirm(l, 1, v1, &b1)).collect());
        let newer = a.events(T0, ids.map(|l| confirm(l, 1, v2, &b2)).collect());
        let (rb, ra) = tokio::join!(
            db.ingest_events(&b.id, &older),
            db.ingest_events(&a.id, &newer)
        );
        rb.unwrap();
        ra.unwrap();
    }
    let all = labels(&db, &s1, LabelFilter::All, UtcMillis::now().0 + HOUR).await;
    assert_eq!(all.len(), (ROUNDS * LABELS) as usize);
    let lost = all
        .iter()
        .filter(|r| r.label.confirmed.as_ref().map(|c| c.version) != Some(v2))
        .count();
    assert_eq!(lost, 0, "labels that lost the newer confirmation");
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
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (_dir, db) = super::sqlite_db().await;
                    super::$name(db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (pg, db) = super::postgres_db().await;
                    super::$name(db).await;
                    pg.cleanup().await.unwrap();
                }
            )*
        }
    };
}

conformance!(
    batch_report_counts_labels_and_replays_change_nothing,
    an_older_confirmation_never_overwrites_a_newer_one,
    unbinding_and_rebinding,
    stale_labels_with_how_long,
    full_uploads_of_label_events,
    two_gateways_at_once_never_lose_the_newer_confirmation,
);

// ---------- upgrading a version 4 database ----------

const DOWNGRADE_TO_V4: &str = "DELETE FROM price_versions; DELETE FROM schema_version;
     INSERT INTO schema_version (version) VALUES (4);";

/// Prices product 1 twice and product 2 once; returns the second batch and its version of 1.
async fn seed_prices(db: &Db) -> (StoreId, BatchId, u64) {
    let (s1, _) = setup(db).await;
    price(db, &[1, 2], None).await;
    let b2 = price(db, &[1], None).await;
    let v2 = version(db, &s1, &b2, 1).await;
    (s1, b2, v2)
}

/// A version 4 database has no price history: this build derives it once from the current
/// prices and the changefeed, and the batch report counts labels against it.
async fn check_upgraded(db: &Db, s1: &StoreId, b2: &BatchId, v2: u64) {
    let mut gw = Gw::new(db, s1).await;
    gw.upload(
        db,
        T0,
        vec![bind(1, 1, "A1"), bind(2, 2, "A2"), confirm(1, 1, v2, b2)],
    )
    .await;
    assert_eq!(counts(db, b2).await[0], ("S001".to_owned(), 1, 1, 0, 0));
    let all = labels(db, s1, LabelFilter::All, UtcMillis::now().0 + HOUR).await;
    let states: Vec<_> = all.iter().map(|r| (r.label.label.0, r.state())).collect();
    assert_eq!(
        states,
        vec![(1, LabelState::Confirmed), (2, LabelState::Pending)]
    );
}

#[tokio::test]
async fn sqlite_price_versions_are_backfilled_from_version_4() {
    let (dir, db) = sqlite_db().await;
    let (s1, b2, v2) = seed_prices(&db).await;
    drop(db);
    let path = dir.path().join("hub.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(DOWNGRADE_TO_V4).unwrap();
    drop(conn);
    let url = format!("sqlite://{}", path.display());
    let db = storage::open(&url).await.unwrap();
    drop(db);
    let db = storage::open(&url).await.unwrap();
    check_upgraded(&db, &s1, &b2, v2).await;
}

#[tokio::test]
async fn postgres_price_versions_are_backfilled_from_version_4() {
    let (pg, db) = postgres_db().await;
    let (s1, b2, v2) = seed_prices(&db).await;
    drop(db);
    let (client, conn) = tokio_postgres::connect(pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    client.batch_execute(DOWNGRADE_TO_V4).await.unwrap();
    drop(client);
    let _ = conn.await;
    let db = storage::open(pg.url()).await.unwrap();
    drop(db);
    let db = storage::open(pg.url()).await.unwrap();
    check_upgraded(&db, &s1, &b2, v2).await;
    drop(db);
    pg.cleanup().await.unwrap();
}
