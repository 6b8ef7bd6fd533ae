//! The ledger: group commit, idempotent sales, price versions and activation, stock, restart,
//! verify against tampering, and the outbox.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use aisle_agent::clock::ManualClock;
use aisle_agent::ledger::{
    Contact, DB_FILE, Ledger, LedgerError, SaleRejection, VerifyError, verify,
};
use aisle_protocol::sync::{Change, ChangeBody, EventBody, StockAdjustment};
use aisle_protocol::{EventId, UtcMillis};
use common::{T0, gtin, price, sale};
use rusqlite::Connection;

async fn open(dir: &Path, clock: &Arc<ManualClock>) -> Ledger {
    Ledger::open(dir, clock.clone()).await.unwrap()
}

/// A ledger with two active prices, a pending one, a stock adjustment and three sales.
async fn busy_ledger(dir: &Path) -> Ledger {
    let clock = ManualClock::new(T0);
    let l = open(dir, &clock).await;
    l.stage_prices(vec![
        price(gtin(1), 1, 350, T0 - 1),
        price(gtin(2), 4, 1_280, T0),
        price(gtin(1), 2, 399, T0 + 60_000),
    ])
    .await
    .unwrap();
    adjust(&l, 7, gtin(2), 40).await;
    for i in 0..3 {
        l.record_sale(sale(&format!("lane-1:{i}"), &[(gtin(1), 2), (gtin(2), 1)]))
            .await
            .unwrap();
    }
    l
}

async fn adjust(l: &Ledger, id: u8, g: aisle_protocol::Gtin, delta: i64) -> usize {
    let change = Change {
        seq: 99,
        body: ChangeBody::StockAdjustment(StockAdjustment {
            adjustment_id: EventId::from_bytes([id; 16]),
            gtin: g,
            delta,
            reason: "goods received".into(),
        }),
    };
    l.apply_changes(vec![change], None, None)
        .await
        .unwrap()
        .adjusted
}

/// Holds SQLite's write lock from another connection, so the ledger's writer stalls on BEGIN
/// and every command sent meanwhile waits in its queue, however fast this machine's disk is.
struct WriteLockHolder(Connection);

impl WriteLockHolder {
    fn take(dir: &Path) -> WriteLockHolder {
        let c = Connection::open(dir.join(DB_FILE)).unwrap();
        c.execute_batch("BEGIN IMMEDIATE").unwrap();
        WriteLockHolder(c)
    }

    /// Lets the writer go after the senders have had time to queue up.
    async fn release_after_queueing(self) {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        self.0.execute_batch("ROLLBACK").unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_puts_many_concurrent_sales_in_few_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let l = open(dir.path(), &clock).await;
    l.stage_prices(vec![price(gtin(1), 1, 100, T0)])
        .await
        .unwrap();
    let before = l.stats();
    let n = 300;
    let lock = WriteLockHolder::take(dir.path());
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let l = l.clone();
            tokio::spawn(async move {
                l.record_sale(sale(&format!("s-{i}"), &[(gtin(1), 1)]))
                    .await
            })
        })
        .collect();
    lock.release_after_queueing().await;
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().unwrap().seq);
    }
    let after = l.stats();
    let transactions = after.transactions - before.transactions;
    assert_eq!(after.sales_committed - before.sales_committed, n);
    // The command that reached BEGIN first, then everything queued behind it in one go.
    assert!(
        transactions <= 3,
        "{n} queued sales took {transactions} transactions: no group commit"
    );
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len() as u64, n, "every sale got its own seq");
    assert_eq!(l.stock(gtin(1)).await.unwrap(), -(n as i64));
    l.close().await;
    verify(dir.path()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_bad_command_in_a_group_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let l = open(dir.path(), &clock).await;
    l.stage_prices(vec![price(gtin(1), 1, 100, T0)])
        .await
        .unwrap();
    let before = l.stats();
    let lock = WriteLockHolder::take(dir.path());
    let mut tasks = Vec::new();
    for i in 0..120u64 {
        let l = l.clone();
        tasks.push(tokio::spawn(async move {
            if i % 4 == 3 {
                // Stages a good price, then fails on an empty name: the first write must vanish
                // with it, and the chain must carry on as if the command never ran.
                let mut bad = price(gtin(100 + i), 1, 500, T0);
                bad.name.clear();
                let r = l
                    .stage_prices(vec![price(gtin(200 + i), 1, 500, T0), bad])
                    .await;
                assert!(
                    matches!(r, Err(LedgerError::Invalid(ref m)) if m.contains("name")),
                    "{r:?}"
                );
                false
            } else {
                l.record_sale(sale(&format!("ok-{i}"), &[(gtin(1), 1)]))
                    .await
                    .unwrap();
                true
            }
        }));
    }
    lock.release_after_queueing().await;
    let mut good = 0;
    for t in tasks {
        good += u64::from(t.await.unwrap());
    }
    let stats = l.stats();
    assert_eq!(good, 90);
    assert!(
        stats.transactions - before.transactions <= 3,
        "the commands did not share transactions, so this test proves nothing"
    );
    for i in (3..120u64).step_by(4) {
        assert!(
            l.prices(gtin(200 + i)).await.unwrap().is_empty(),
            "rolled back"
        );
    }
    assert_eq!(l.stock(gtin(1)).await.unwrap(), -90);
    let view = l.view();
    // 2 events for the seed price (staged + activated) and one per good sale, no holes.
    assert_eq!(view.last_seq, 2 + 90);
    assert_eq!(l.events_after(0, 1_000).await.unwrap().len(), 92);
    l.close().await;
    verify(dir.path()).unwrap();
}

/// Queues `first` alone behind the held write lock (the writer takes it and stalls on BEGIN),
/// so that everything sent after it is drained into ONE group once the lock is released.
async fn stall_writer_on(l: &Ledger, dir: &Path) -> (WriteLockHolder, tokio::task::JoinHandle<()>) {
    let lock = WriteLockHolder::take(dir);
    let l = l.clone();
    let first = tokio::spawn(async move {
        // Its outcome does not matter; it only keeps the writer busy while the group queues.
        let _ = l.activate_due().await;
    });
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    (lock, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sale_failing_while_reading_the_ledger_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let l = open(dir.path(), &clock).await;
    l.stage_prices(vec![price(gtin(1), 1, 100, T0), price(gtin(2), 1, 200, T0)])
        .await
        .unwrap();
    let old = l.record_sale(sale("old-1", &[(gtin(1), 1)])).await.unwrap();
    // Storage the read phase cannot use: the stored sale's row points at a price event, and
    // GTIN 2's active price has a currency that does not decode.
    let side = Connection::open(dir.path().join(DB_FILE)).unwrap();
    side.execute_batch(
        "UPDATE sales SET seq = 1 WHERE sale_id = 'old-1';
         UPDATE prices SET currency = 'X!' WHERE gtin = (SELECT gtin FROM prices
             WHERE price_minor = 200);",
    )
    .unwrap();
    let before = l.stats();
    let last_seq = l.view().last_seq;

    let (lock, first) = stall_writer_on(&l, dir.path()).await;
    let retry = {
        let l = l.clone();
        tokio::spawn(async move { l.record_sale(sale("old-1", &[(gtin(1), 1)])).await })
    };
    let bad_price = {
        let l = l.clone();
        tokio::spawn(async move { l.record_sale(sale("new-bad", &[(gtin(2), 1)])).await })
    };
    let good: Vec<_> = (0..40)
        .map(|i| {
            let l = l.clone();
            tokio::spawn(async move {
                l.record_sale(sale(&format!("new-{i}"), &[(gtin(1), 1)]))
                    .await
            })
        })
        .collect();
    lock.release_after_queueing().await;
    first.await.unwrap();

    match retry.await.unwrap() {
        Err(SaleRejection::Ledger(LedgerError::Corrupt { seq: 1, reason })) => {
            assert!(reason.contains("non-sale"), "{reason}");
        }
        other => panic!("a retry of a corrupt sale: {other:?}"),
    }
    match bad_price.await.unwrap() {
        Err(SaleRejection::Ledger(LedgerError::Storage(e))) => {
            assert!(e.to_string().contains("X!"), "{e}");
        }
        other => panic!("a sale priced from a corrupt row: {other:?}"),
    }
    let mut seqs = Vec::new();
    for t in good {
        seqs.push(t.await.unwrap().unwrap().seq);
    }
    let after = l.stats();
    assert!(
        after.transactions - before.transactions <= 2,
        "the sales did not share a transaction, so this test proves nothing"
    );
    assert_eq!(after.sales_committed - before.sales_committed, 40);
    seqs.sort_unstable();
    assert_eq!(seqs, (last_seq + 1..=last_seq + 40).collect::<Vec<_>>());
    assert_eq!(l.stock(gtin(1)).await.unwrap(), -41);
    assert_eq!(l.stock(gtin(2)).await.unwrap(), 0);
    assert!(
        l.sale(aisle_protocol::SaleId::parse("new-bad").unwrap())
            .await
            .unwrap()
            .is_none()
    );

    // Repaired, the ledger is whole and both sales go through.
    side.execute(
        "UPDATE sales SET seq = ?1 WHERE sale_id = 'old-1'",
        [old.seq as i64],
    )
    .unwrap();
    side.execute_batch("UPDATE prices SET currency = 'CNY' WHERE currency = 'X!'")
        .unwrap();
    let replay = l.record_sale(sale("old-1", &[(gtin(1), 1)])).await.unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.seq, old.seq);
    l.record_sale(sale("new-bad", &[(gtin(2), 1)]))
        .await
        .unwrap();
    l.close().await;
    verify(dir.path()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sale_failing_while_writing_aborts_its_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let l = open(dir.path(), &clock).await;
    l.stage_prices(vec![price(gtin(1), 1, 100, T0)])
        .await
        .unwrap();
    l.record_sale(sale("before", &[(gtin(1), 1)]))
        .await
        .unwrap();
    // The sale's event goes in, then its sales row is refused: a failure half way through.
    let side = Connection::open(dir.path().join(DB_FILE)).unwrap();
    side.execute_batch(
        "CREATE TRIGGER sales_boom BEFORE INSERT ON sales WHEN NEW.sale_id = 'boom'
         BEGIN SELECT RAISE(ABORT, 'injected write failure'); END;",
    )
    .unwrap();
    let before = l.stats();
    let view_before = l.view();

    let (lock, first) = stall_writer_on(&l, dir.path()).await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let id = if i == 15 {
            "boom".to_string()
        } else {
            format!("g-{i}")
        };
        let l = l.clone();
        tasks.push(tokio::spawn(async move {
            let r = l.record_sale(sale(&id, &[(gtin(1), 1)])).await;
            (id, r)
        }));
    }
    let adjust_task = {
        let l = l.clone();
        tokio::spawn(async move {
            let change = Change {
                seq: 1,
                body: ChangeBody::StockAdjustment(StockAdjustment {
                    adjustment_id: EventId::from_bytes([9; 16]),
                    gtin: gtin(1),
                    delta: 50,
                    reason: "goods received".into(),
                }),
            };
            l.apply_changes(vec![change], Some(1), None).await
        })
    };
    lock.release_after_queueing().await;
    first.await.unwrap();
    for t in tasks {
        let (id, r) = t.await.unwrap();
        match r {
            Err(SaleRejection::Ledger(LedgerError::Commit(why))) => {
                assert!(why.contains("injected write failure"), "{id}: {why}");
            }
            other => panic!("{id} shared the failed group but got {other:?}"),
        }
    }
    match adjust_task.await.unwrap() {
        Err(LedgerError::Commit(why)) => assert!(why.contains("injected"), "{why}"),
        other => panic!("the change page shared the failed group but got {other:?}"),
    }
    // Nothing of the group was stored, nor published.
    let after = l.stats();
    assert_eq!(after.sales_committed, before.sales_committed);
    assert_eq!(l.view(), view_before);
    assert_eq!(l.stock(gtin(1)).await.unwrap(), -1);
    assert_eq!(
        l.events_after(0, 1_000).await.unwrap().len() as u64,
        view_before.last_seq
    );
    for id in ["boom", "g-0", "g-29"] {
        assert!(
            l.sale(aisle_protocol::SaleId::parse(id).unwrap())
                .await
                .unwrap()
                .is_none(),
            "{id} was stored"
        );
    }

    // The chain carries on from where it was, and the ledger verifies.
    let next = l.record_sale(sale("after", &[(gtin(1), 2)])).await.unwrap();
    assert_eq!(next.seq, view_before.last_seq + 1);
    side.execute_batch("DROP TRIGGER sales_boom").unwrap();
    let boom = l.record_sale(sale("boom", &[(gtin(1), 1)])).await.unwrap();
    assert_eq!(boom.seq, next.seq + 1);
    assert_eq!(l.stock(gtin(1)).await.unwrap(), -4);
    l.close().await;
    verify(dir.path()).unwrap();
}

#[tokio::test]
async fn sale_is_idempotent_by_id_and_refuses_a_different_body() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let l = open(dir.path(), &clock).await;
    l.stage_prices(vec![
        price(gtin(1), 3, 250, T0),
        price(gtin(2), 1, 1_000, T0),
    ])
    .await
    .unwrap();
    let req = sale("lane-2:0042", &[(gtin(1), 3), (gtin(2), 1)]);
    let first = l.record_sale(req.clone()).await.unwrap();
    assert!(!first.replayed);
    assert_eq!(first.record.total.minor, 3 * 250 + 1_000);
    assert_eq!(first.record.lines[0].price_version, 3);
    assert_eq!(first.at, UtcMillis(T0));

    clock.advance(5_000);
    let again = l.record_sale(req.clone()).await.unwrap();
    assert!(again.replayed);
    assert_eq!(
        (again.seq, again.at, &again.record),
        (first.seq, first.at, &first.record)
    );

    let mut other_qty = req.clone();
    other_qty.lines[0].qty = 4;
    assert!(matches!(
        l.record_sale(other_qty).await,
        Err(SaleRejection::Conflict(_))
    ));
    let mut other_payment = req.clone();
    other_payment.payment.method = aisle_protocol::sync::PaymentMethod::Cash;
    assert!(matches!(
        l.record_sale(other_payment).await,
        Err(SaleRejection::Conflict(_))
    ));
    // Stock moved once, one sale event.
    assert_eq!(l.stock(gtin(1)).await.unwrap(), -3);
    assert_eq!(l.stats().sales_committed, 1);
    assert_eq!(
        l.sale(req.sale_id.clone()).await.unwrap().unwrap().seq,
        first.seq
    );
}

#[tokio::test]
async fn sale_refuses_unknown_and_not_yet_priced_gtins() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let l = open(dir.path(), &clock).await;
    l.stage_prices(vec![
        price(gtin(1), 1, 100, T0),
        price(gtin(2), 1, 100, T0 + 1_000),
    ])
    .await
    .unwrap();
    let last = l.view().last_seq;
    match l
        .record_sale(sale("s-1", &[(gtin(1), 1), (gtin(9), 1)]))
        .await
    {
        Err(SaleRejection::UnknownGtin(g)) => assert_eq!(g, gtin(9)),
        other => panic!("{other:?}"),
    }
    match l.record_sale(sale("s-1", &[(gtin(2), 1)])).await {
        Err(SaleRejection::NotYetPriced(g)) => assert_eq!(g, gtin(2)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        l.record_sale(sale("s-1", &[(gtin(1), 0)])).await,
        Err(SaleRejection::Invalid(_))
    ));
    assert!(matches!(
        l.record_sale(sale("s-1", &[])).await,
        Err(SaleRejection::Invalid(_))
    ));
    assert_eq!(l.view().last_seq, last, "no event for a refused sale");
    assert_eq!(l.stock(gtin(1)).await.unwrap(), 0);
}

#[tokio::test]
async fn stock_moves_per_line_and_adjustments_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let l = open(dir.path(), &clock).await;
    l.stage_prices(vec![price(gtin(1), 1, 100, T0), price(gtin(2), 1, 100, T0)])
        .await
        .unwrap();
    assert_eq!(adjust(&l, 1, gtin(1), 24).await, 1);
    assert_eq!(
        adjust(&l, 1, gtin(1), 24).await,
        0,
        "same adjustment id: ignored"
    );
    l.record_sale(sale("s-1", &[(gtin(1), 2), (gtin(2), 5), (gtin(1), 1)]))
        .await
        .unwrap();
    assert_eq!(l.stock(gtin(1)).await.unwrap(), 24 - 3);
    assert_eq!(l.stock(gtin(2)).await.unwrap(), -5);
    assert_eq!(l.stock(gtin(3)).await.unwrap(), 0);
}

#[tokio::test]
async fn highest_version_wins_and_pending_prices_activate_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let l = open(dir.path(), &clock).await;
    let g = gtin(1);
    let out = l.stage_prices(vec![price(g, 2, 200, T0)]).await.unwrap();
    assert_eq!((out.staged, out.activated), (1, 1));
    let seq = l.view().last_seq;

    // Older and equal versions arriving later change nothing and write no event.
    let out = l
        .stage_prices(vec![price(g, 1, 100, T0), price(g, 2, 999, T0)])
        .await
        .unwrap();
    assert_eq!((out.staged, out.ignored_prices), (0, 2));
    assert_eq!(l.view().last_seq, seq);
    assert_eq!(l.active_price(g).await.unwrap().unwrap().price.minor, 200);

    // A future price is pending, not active.
    l.stage_prices(vec![price(g, 3, 300, T0 + 60_000)])
        .await
        .unwrap();
    assert_eq!(l.active_price(g).await.unwrap().unwrap().version, 2);
    assert_eq!(
        l.next_pending_effective_at().await.unwrap(),
        Some(UtcMillis(T0 + 60_000))
    );
    clock.advance(59_999);
    assert_eq!(l.activate_due().await.unwrap(), 0);
    assert_eq!(l.active_price(g).await.unwrap().unwrap().version, 2);
    clock.advance(1);
    assert_eq!(l.activate_due().await.unwrap(), 1);
    let active = l.active_price(g).await.unwrap().unwrap();
    assert_eq!((active.version, active.price.minor), (3, 300));
    assert_eq!(active.active_since, UtcMillis(T0 + 60_000));
    let rows = l.prices(g).await.unwrap();
    assert_eq!(rows.len(), 1, "the superseded version is gone: {rows:?}");

    // A sale at the effective instant is priced at the new version even before the activator
    // runs: every transaction activates what is due first.
    l.stage_prices(vec![price(g, 4, 400, T0 + 120_000)])
        .await
        .unwrap();
    clock.set(T0 + 120_000);
    let s = l.record_sale(sale("s-1", &[(g, 1)])).await.unwrap();
    assert_eq!(s.record.lines[0].price_version, 4);

    // A higher version effective sooner wins over a lower one effective later; the lower never
    // activates.
    l.stage_prices(vec![
        price(g, 5, 500, T0 + 300_000),
        price(g, 6, 600, T0 + 200_000),
    ])
    .await
    .unwrap();
    clock.set(T0 + 200_000);
    l.activate_due().await.unwrap();
    assert_eq!(l.active_price(g).await.unwrap().unwrap().version, 6);
    clock.set(T0 + 400_000);
    assert_eq!(l.activate_due().await.unwrap(), 0);
    assert_eq!(l.active_price(g).await.unwrap().unwrap().version, 6);
    assert!(l.next_pending_effective_at().await.unwrap().is_none());
    l.close().await;
    verify(dir.path()).unwrap();
}

#[tokio::test]
async fn restart_keeps_everything_and_the_chain_and_clocks_continue() {
    let dir = tempfile::tempdir().unwrap();
    let l = busy_ledger(dir.path()).await;
    l.record_contact(Contact {
        server_time: UtcMillis(T0 + 5_000),
        skew_ms: Some(5_000),
    })
    .await
    .unwrap();
    let before = l.view();
    let old_events = l.events_after(0, 10_000).await.unwrap();
    let last_hlc = old_events.last().unwrap().hlc;
    l.close().await;
    assert!(matches!(
        l.record_sale(sale("late", &[(gtin(1), 1)])).await,
        Err(SaleRejection::Ledger(LedgerError::Closed))
    ));

    // The gateway reboots with its clock an hour behind and no hub in sight.
    let clock = ManualClock::new(T0 - 3_600_000);
    let l = open(dir.path(), &clock).await;
    assert_eq!(l.view(), before);
    assert_eq!(l.hub_time().skew_ms(), 5_000, "skew survives the restart");
    assert_eq!(l.active_price(gtin(1)).await.unwrap().unwrap().version, 1);
    assert_eq!(l.stock(gtin(2)).await.unwrap(), 40 - 3);
    let replay = l
        .record_sale(sale("lane-1:0", &[(gtin(1), 2), (gtin(2), 1)]))
        .await
        .unwrap();
    assert!(replay.replayed);
    let new = l
        .record_sale(sale("lane-1:9", &[(gtin(1), 1)]))
        .await
        .unwrap();
    assert_eq!(new.seq, before.last_seq + 1);
    assert_eq!(
        new.at,
        UtcMillis(T0 - 3_600_000 + 5_000),
        "stamped on hub-corrected time"
    );
    let ev = l.events_after(before.last_seq, 10).await.unwrap();
    assert!(
        ev[0].hlc > last_hlc,
        "HLC never goes backwards across restarts"
    );
    l.close().await;
    let report = verify(dir.path()).unwrap();
    assert_eq!(report.events, before.last_seq + 1);
    assert_eq!(report.sales, 4);
}

#[tokio::test]
async fn a_second_ledger_on_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let _l = open(dir.path(), &clock).await;
    let second = Ledger::open(dir.path(), clock.clone()).await;
    assert!(matches!(second, Err(LedgerError::Locked(_))), "{second:?}");
}

#[tokio::test]
async fn a_copy_taken_mid_flight_opens_with_every_acknowledged_sale() {
    // What is on disk at any instant after a reply is what a power cut leaves: copy the files
    // (database, WAL) while the writer is live, as a crash would find them.
    let dir = tempfile::tempdir().unwrap();
    let l = busy_ledger(dir.path()).await;
    let last = l.view().last_seq;
    let crashed = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), crashed.path().join(f.file_name())).unwrap();
    }
    let clock = ManualClock::new(T0);
    let reopened = open(crashed.path(), &clock).await;
    assert_eq!(reopened.view().last_seq, last);
    for i in 0..3 {
        let id = aisle_protocol::SaleId::parse(&format!("lane-1:{i}")).unwrap();
        assert!(reopened.sale(id).await.unwrap().is_some());
    }
    reopened.close().await;
    verify(crashed.path()).unwrap();
}

fn tamper(dir: &Path, sql: &str) {
    let c = Connection::open(dir.join(DB_FILE)).unwrap();
    c.execute_batch(&format!(
        "DROP TRIGGER events_no_update; DROP TRIGGER events_no_delete; {sql}"
    ))
    .unwrap();
}

async fn closed_busy_ledger() -> (tempfile::TempDir, u64) {
    let dir = tempfile::tempdir().unwrap();
    let l = busy_ledger(dir.path()).await;
    let sale_seq = l
        .sale(aisle_protocol::SaleId::parse("lane-1:1").unwrap())
        .await
        .unwrap()
        .unwrap()
        .seq;
    l.close().await;
    (dir, sale_seq)
}

fn verify_cli(dir: &Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aisle-agent"))
        .args(["ledger", "verify", "--data"])
        .arg(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn verify_passes_on_a_good_ledger() {
    let (dir, _) = closed_busy_ledger().await;
    let r = verify(dir.path()).unwrap();
    // 3 staged + 2 activated + 1 adjustment + 3 sales.
    assert_eq!(r.events, 9);
    assert_eq!((r.sales, r.stock_items, r.stock_adjustments), (3, 2, 1));
    assert_eq!(
        r.price_rows, 3,
        "active for both GTINs plus the pending one"
    );
    let (ok, text) = verify_cli(dir.path());
    assert!(ok, "{text}");
    assert!(text.contains("ledger OK: 9 events"), "{text}");
}

#[tokio::test]
async fn events_cannot_be_edited_through_sql_by_accident() {
    let (dir, seq) = closed_busy_ledger().await;
    let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let e = c
        .execute(
            "UPDATE events SET payload = x'00' WHERE seq = ?1",
            [seq as i64],
        )
        .unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    assert!(c.execute("DELETE FROM events WHERE seq = 1", []).is_err());
}

#[tokio::test]
async fn verify_fails_naming_the_seq_when_a_payload_is_edited() {
    let (dir, seq) = closed_busy_ledger().await;
    tamper(
        dir.path(),
        &format!(
            "UPDATE events SET payload = CAST(replace(CAST(payload AS TEXT), '\"qty\":2', '\"qty\":1') AS BLOB) WHERE seq = {seq}"
        ),
    );
    match verify(dir.path()) {
        Err(VerifyError::Chain { seq: s, reason }) => {
            assert_eq!(s, seq);
            assert!(reason.contains("edited"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let (ok, text) = verify_cli(dir.path());
    assert!(!ok);
    assert!(text.contains(&format!("event seq {seq}")), "{text}");
}

#[tokio::test]
async fn verify_fails_naming_the_seq_when_an_event_is_deleted() {
    let (dir, seq) = closed_busy_ledger().await;
    tamper(dir.path(), &format!("DELETE FROM events WHERE seq = {seq}"));
    match verify(dir.path()) {
        Err(VerifyError::Chain { seq: s, reason }) => {
            assert_eq!(s, seq);
            assert!(reason.contains("missing"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Deleting the tail leaves a valid shorter chain, but the state no longer matches it.
    let (dir, _) = closed_busy_ledger().await;
    tamper(
        dir.path(),
        "DELETE FROM events WHERE seq = (SELECT MAX(seq) FROM events)",
    );
    assert!(matches!(
        verify(dir.path()),
        Err(VerifyError::State { .. } | VerifyError::SyncState(_))
    ));
}

#[tokio::test]
async fn verify_fails_when_materialised_state_is_changed_behind_its_back() {
    let (dir, seq) = closed_busy_ledger().await;
    tamper(dir.path(), "UPDATE stock SET on_hand = on_hand + 1");
    match verify(dir.path()) {
        Err(VerifyError::State { table, detail }) => {
            assert_eq!(table, "stock");
            assert!(detail.contains("on_hand"), "{detail}");
        }
        other => panic!("{other:?}"),
    }

    let (dir, _) = closed_busy_ledger().await;
    tamper(
        dir.path(),
        &format!("UPDATE sales SET total_minor = 1 WHERE seq = {seq}"),
    );
    match verify(dir.path()) {
        Err(e @ VerifyError::State { table: "sales", .. }) => {
            assert!(e.to_string().contains(&format!("seq={seq}")), "{e}");
        }
        other => panic!("{other:?}"),
    }

    let (dir, _) = closed_busy_ledger().await;
    tamper(
        dir.path(),
        "UPDATE prices SET price_minor = 1 WHERE state = 'active'",
    );
    assert!(matches!(
        verify(dir.path()),
        Err(VerifyError::State {
            table: "prices",
            ..
        })
    ));
    let (ok, text) = verify_cli(dir.path());
    assert!(!ok && text.contains("prices"), "{text}");
}

#[tokio::test]
async fn outbox_is_events_after_acked_through() {
    let dir = tempfile::tempdir().unwrap();
    let l = busy_ledger(dir.path()).await;
    let last = l.view().last_seq;
    assert_eq!(l.view().outbox_depth(), last);

    let first = l.events_after(0, 3).await.unwrap();
    assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    // Uploads carry the protocol's event: no ledger-only fields.
    assert!(matches!(first[0].body, EventBody::PriceStaged { .. }));
    let ids: std::collections::HashSet<_> = first.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 3, "event ids are unique");

    l.ack(3, None).await.unwrap();
    assert_eq!(l.view().outbox_depth(), last - 3);
    assert_eq!(
        l.events_after(l.view().acked_through, 100).await.unwrap()[0].seq,
        4
    );
    l.ack(2, None).await.unwrap();
    assert_eq!(
        l.view().acked_through,
        3,
        "an older ack never moves it back"
    );
    assert!(matches!(
        l.ack(last + 1, None).await,
        Err(LedgerError::Invalid(_))
    ));
    l.ack(last, None).await.unwrap();
    assert_eq!(l.view().outbox_depth(), 0);

    // 409 seq_gap: the hub needs events from 5 again.
    l.resend_from(5).await.unwrap();
    assert_eq!(l.view().acked_through, 4);
    assert!(l.resend_from(last + 2).await.is_err());
    assert!(l.resend_from(0).await.is_err());

    l.close().await;
    let clock = ManualClock::new(T0);
    let l = open(dir.path(), &clock).await;
    assert_eq!(l.view().acked_through, 4, "ack bookkeeping is persisted");
    assert_eq!(l.view().outbox_depth(), last - 4);
}

#[tokio::test]
async fn a_change_page_and_its_cursor_commit_together() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let l = open(dir.path(), &clock).await;
    let page = vec![
        Change {
            seq: 10,
            body: ChangeBody::Price(price(gtin(1), 1, 100, T0)),
        },
        Change {
            seq: 11,
            body: ChangeBody::Price({
                let mut p = price(gtin(2), 1, 100, T0);
                p.price.minor = -5;
                p
            }),
        },
    ];
    let r = l.apply_changes(page, Some(11), None).await;
    assert!(
        matches!(r, Err(LedgerError::Invalid(ref m)) if m.contains("hub seq 11")),
        "{r:?}"
    );
    assert_eq!(l.view().cursor, 0, "cursor not moved");
    assert!(
        l.prices(gtin(1)).await.unwrap().is_empty(),
        "nothing of the page applied"
    );

    let ok = vec![Change {
        seq: 10,
        body: ChangeBody::Price(price(gtin(1), 1, 100, T0)),
    }];
    let contact = Contact {
        server_time: UtcMillis(T0 + 2_000),
        skew_ms: Some(2_000),
    };
    l.apply_changes(ok.clone(), Some(10), Some(contact))
        .await
        .unwrap();
    let v = l.view();
    assert_eq!(
        (v.cursor, v.skew_ms, v.last_contact),
        (10, 2_000, Some(UtcMillis(T0 + 2_000)))
    );
    // Replaying the page (e.g. after a lost answer or a 410) changes nothing.
    let again = l.apply_changes(ok, Some(10), None).await.unwrap();
    assert_eq!(again.ignored_prices, 1);
    assert_eq!(l.view().last_seq, v.last_seq);
    l.reset_cursor().await.unwrap();
    assert_eq!(l.view().cursor, 0);
}
