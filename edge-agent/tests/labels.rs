//! Shelf labels at the store: bindings (all or nothing, every refused row named), confirmations
//! and "not updated" recorded once and replayed by `ledger verify`, and price integrity (a lane
//! never charges more than a confirmed label shows).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use aisle_agent::clock::ManualClock;
use aisle_agent::ledger::{
    BindLabel, BindProblem, DB_FILE, LabelRefusal, LabelShown, LabelStatus, LabelUpdate, Ledger,
    verify,
};
use aisle_protocol::esl::{DynamicFields, LabelId, LayerHash, Panel, content_hash};
use aisle_protocol::{BatchId, Gtin, Money};
use common::{T0, cny, gtin, price, sale};

async fn open(dir: &Path) -> (Ledger, Arc<ManualClock>) {
    let clock = ManualClock::new(T0);
    let l = Ledger::open(dir, clock.clone()).await.unwrap();
    (l, clock)
}

fn bind(label: u32, g: Gtin, shelf: &str) -> BindLabel {
    BindLabel {
        label: LabelId(label),
        gtin: g,
        shelf: shelf.into(),
        panel: Panel::Bw290,
        by: Some("Ana".into()),
    }
}

fn shown(minor: i64, name: &str) -> LabelShown {
    let price = Money::new(minor, cny());
    let fields = DynamicFields::from_money(price).unwrap();
    let layer = LayerHash([7; 8]);
    LabelShown {
        price,
        name: name.into(),
        panel: Panel::Bw290,
        layer,
        fields,
        content: content_hash(Some(layer), Some(&fields)).unwrap(),
    }
}

fn confirmed(label: u32, g: Gtin, version: u64, minor: i64) -> LabelUpdate {
    LabelUpdate::Confirmed {
        label: LabelId(label),
        gtin: g,
        version,
        batch_id: BatchId::parse(&format!("b-{version}")).unwrap(),
        shown: shown(minor, &format!("Oolong tea 500ml #{g}")),
    }
}

#[tokio::test]
async fn an_import_binds_every_row_or_none_and_names_each_refused_row() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _) = open(dir.path()).await;
    l.stage_prices(vec![price(gtin(1), 1, 350, T0), price(gtin(2), 1, 990, T0)])
        .await
        .unwrap();
    let rows = vec![
        (2, bind(0xA1, gtin(1), "A1-01")),
        (3, bind(0xA2, gtin(9), "A1-02")),
        (4, bind(0xA1, gtin(2), "A1-03")),
        (5, bind(0xA3, gtin(2), "")),
        (6, bind(0xA4, gtin(2), "A1-04")),
    ];
    let Err(LabelRefusal::Rows(errors)) = l.bind_labels(rows).await else {
        panic!("an import with bad rows must be refused");
    };
    let lines: Vec<(usize, BindProblem)> = errors.iter().map(|e| (e.line, e.problem)).collect();
    assert_eq!(
        lines,
        vec![
            (3, BindProblem::NoPrice),
            (4, BindProblem::Duplicate),
            (5, BindProblem::Shelf)
        ]
    );
    assert!(errors[1].message.contains("line 2"), "{errors:?}");
    // Nothing was bound, no event written.
    assert!(l.labels(None, 100).await.unwrap().is_empty());
    assert_eq!(l.view().last_seq, 4);

    let good = vec![
        (2, bind(0xA1, gtin(1), "A1-01")),
        (3, bind(0xA2, gtin(2), "A1-02")),
    ];
    let out = l.bind_labels(good.clone()).await.unwrap();
    assert_eq!((out.bound, out.unchanged), (2, 0));
    // The same import again changes nothing.
    let again = l.bind_labels(good).await.unwrap();
    assert_eq!((again.bound, again.unchanged), (0, 2));
    let all = l.labels(None, 100).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].binding.shelf, "A1-01");
    assert_eq!(all[0].binding.bound_by.as_deref(), Some("Ana"));
    assert_eq!(all[0].status(), LabelStatus::Pending);
    assert_eq!(all[0].wanted.as_ref().unwrap().price.minor, 350);

    let b = l
        .unbind_label(LabelId(0xA1), Some("Ana".into()))
        .await
        .unwrap();
    assert_eq!(b.gtin, gtin(1));
    assert!(matches!(
        l.unbind_label(LabelId(0xA1), None).await,
        Err(LabelRefusal::NotBound(_))
    ));
    assert!(l.label(LabelId(0xA1)).await.unwrap().is_none());
    l.close().await;
    let report = verify(dir.path()).unwrap();
    assert_eq!(report.label_bindings, 1);
}

#[tokio::test]
async fn confirmations_and_not_updated_are_recorded_once_and_replayed_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _) = open(dir.path()).await;
    l.stage_prices(vec![price(gtin(1), 1, 350, T0)])
        .await
        .unwrap();
    l.bind_labels(vec![(0, bind(0xB1, gtin(1), "B1"))])
        .await
        .unwrap();
    let late = LabelUpdate::NotUpdated {
        label: LabelId(0xB1),
        gtin: gtin(1),
        version: 1,
        batch_id: BatchId::parse("b-1").unwrap(),
        reason: "the tag did not answer".into(),
    };
    let out = l
        .commit_label_updates(vec![late.clone(), late.clone()])
        .await
        .unwrap();
    assert_eq!((out.not_updated, out.ignored), (1, 1));
    let rec = l.label(LabelId(0xB1)).await.unwrap().unwrap();
    assert_eq!(rec.status(), LabelStatus::NotUpdated);

    let out = l
        .commit_label_updates(vec![
            confirmed(0xB1, gtin(1), 1, 350),
            confirmed(0xB1, gtin(1), 1, 350),
            // About a label bound to another product: ignored.
            confirmed(0xB1, gtin(2), 1, 350),
            // Not bound at all: ignored.
            confirmed(0xB9, gtin(1), 1, 350),
        ])
        .await
        .unwrap();
    assert_eq!((out.confirmed, out.ignored), (1, 3));
    let rec = l.label(LabelId(0xB1)).await.unwrap().unwrap();
    assert_eq!(rec.status(), LabelStatus::Confirmed);
    assert!(rec.not_updated.is_none(), "a confirmation clears it");
    assert_eq!(
        rec.confirmed.unwrap().shown,
        shown(350, &format!("Oolong tea 500ml #{}", gtin(1)))
    );
    // A "not updated" for a version the label already confirmed changes nothing.
    let out = l.commit_label_updates(vec![late]).await.unwrap();
    assert_eq!(out.ignored, 1);

    let events = l.events_after(0, 100).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.body.kind()).collect();
    assert_eq!(
        kinds,
        vec![
            "price_staged",
            "price_activated",
            "label_bound",
            "label_not_updated",
            "label_confirmed"
        ]
    );
    l.close().await;
    verify(dir.path()).unwrap();

    // An edited confirmation (a lower price than the label showed) is caught.
    let c = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    c.execute("UPDATE label_shown SET price_minor = 1", [])
        .unwrap();
    drop(c);
    let err = verify(dir.path()).unwrap_err().to_string();
    assert!(err.contains("label_shown"), "{err}");
}

#[tokio::test]
async fn a_lane_charges_the_lower_of_the_active_price_and_the_shelf_label() {
    let dir = tempfile::tempdir().unwrap();
    let (l, clock) = open(dir.path()).await;
    l.stage_prices(vec![price(gtin(1), 1, 350, T0), price(gtin(2), 1, 500, T0)])
        .await
        .unwrap();
    l.bind_labels(vec![
        (0, bind(0xC1, gtin(1), "C1")),
        (0, bind(0xC2, gtin(1), "C2")),
    ])
    .await
    .unwrap();
    // No label confirmed yet: the active price.
    let r = l.record_sale(sale("s-1", &[(gtin(1), 1)])).await.unwrap();
    assert_eq!(r.record.lines[0].unit_price.minor, 350);
    l.commit_label_updates(vec![confirmed(0xC1, gtin(1), 1, 350)])
        .await
        .unwrap();
    // A price rise activates; the labels still show 3.50.
    l.stage_prices(vec![price(gtin(1), 2, 420, T0)])
        .await
        .unwrap();
    let r = l
        .record_sale(sale("s-2", &[(gtin(1), 2), (gtin(2), 1)]))
        .await
        .unwrap();
    assert_eq!(r.record.lines[0].unit_price.minor, 350);
    assert_eq!(
        r.record.lines[0].price_version, 1,
        "the version on the shelf"
    );
    assert_eq!(r.record.lines[0].line_total.minor, 700);
    assert_eq!(
        r.record.lines[1].unit_price.minor, 500,
        "no label: active price"
    );
    // One label confirms the new price; the other still shows the old one: still 3.50.
    l.commit_label_updates(vec![confirmed(0xC2, gtin(1), 2, 420)])
        .await
        .unwrap();
    let r = l.record_sale(sale("s-3", &[(gtin(1), 1)])).await.unwrap();
    assert_eq!(r.record.lines[0].unit_price.minor, 350);
    // Both show 4.20 now.
    l.commit_label_updates(vec![confirmed(0xC1, gtin(1), 2, 420)])
        .await
        .unwrap();
    let r = l.record_sale(sale("s-4", &[(gtin(1), 1)])).await.unwrap();
    assert_eq!(r.record.lines[0].unit_price.minor, 420);
    assert_eq!(r.record.lines[0].price_version, 2);
    // A price cut is charged at once, before any label shows it.
    clock.advance(1_000);
    l.stage_prices(vec![price(gtin(1), 3, 300, T0)])
        .await
        .unwrap();
    let r = l.record_sale(sale("s-5", &[(gtin(1), 1)])).await.unwrap();
    assert_eq!(r.record.lines[0].unit_price.minor, 300);
    // An unbound label no longer counts for the product.
    l.commit_label_updates(vec![confirmed(0xC1, gtin(1), 3, 250)])
        .await
        .unwrap();
    l.unbind_label(LabelId(0xC1), None).await.unwrap();
    let r = l.record_sale(sale("s-6", &[(gtin(1), 1)])).await.unwrap();
    assert_eq!(r.record.lines[0].unit_price.minor, 300);
    l.close().await;
    verify(dir.path()).unwrap();
}
