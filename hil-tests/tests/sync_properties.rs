//! Property tests of the hub's upload invariants: whatever the order, overlap, repetition or
//! loss of upload attempts from a gateway, every sale is held exactly once, stock counts each
//! sale once, the acknowledgement never goes back, and a gap is refused without changing anything.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use aisle_hub::storage::{HubStorage, NewStore, SalesSince, StorageError};
use aisle_protocol::sync::{EventBody, LedgerEvent, Payment, PaymentMethod, SaleLine, SaleRecord};
use aisle_protocol::{Currency, EventId, GatewayId, Gtin, Hlc, Money, SaleId, StoreId, UtcMillis};
use proptest::prelude::*;

const ITEM: u64 = 42;

fn sale_event(seq: u64, qty: u32) -> LedgerEvent {
    let cny = Currency::parse("CNY").unwrap();
    let unit = Money::new(250, cny);
    let total = Money::new(250 * i64::from(qty), cny);
    LedgerEvent {
        seq,
        id: EventId::time_ordered(1_000 + seq, [seq as u8; 10]),
        hlc: Hlc {
            wall_ms: 1_000 + seq,
            counter: 0,
        },
        at: UtcMillis(1_000 + seq as i64),
        body: EventBody::SaleCommitted(SaleRecord {
            sale_id: SaleId::parse(&format!("p-{seq}")).unwrap(),
            lines: vec![SaleLine {
                gtin: Gtin::from_index(ITEM).unwrap(),
                qty,
                unit_price: unit,
                price_version: 1,
                line_total: total,
                weight_g: None,
                discount: None,
            }],
            total,
            payment: Payment {
                method: PaymentMethod::Cash,
                reference: None,
                offline: false,
            },
        }),
    }
}

async fn hub() -> (tempfile::TempDir, Arc<dyn HubStorage>, StoreId, GatewayId) {
    let dir = tempfile::tempdir().unwrap();
    let storage =
        aisle_hub::storage::open(&format!("sqlite://{}", dir.path().join("hub.db").display()))
            .await
            .unwrap();
    let store = StoreId::parse("S001").unwrap();
    storage
        .create_store(
            &NewStore::new(store.clone(), "Props", Currency::parse("CNY").unwrap()).unwrap(),
        )
        .await
        .unwrap();
    let gw = storage.create_gateway(&store).await.unwrap().gateway_id;
    (dir, storage, store, gw)
}

/// One upload attempt: events `start..start+len` (1-based seqs).
#[derive(Clone, Debug)]
struct Attempt {
    start: u64,
    len: u64,
}

fn attempts(n: u64) -> impl Strategy<Value = Vec<Attempt>> {
    proptest::collection::vec(
        (1..=n + 2, 1..=8u64).prop_map(|(start, len)| Attempt { start, len }),
        1..30,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn uploads_are_exactly_once_whatever_the_order(
        qtys in proptest::collection::vec(1u32..5, 5..25),
        tries in attempts(25),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let n = qtys.len() as u64;
            let events: Vec<LedgerEvent> = qtys.iter().enumerate().map(|(i, q)| sale_event(i as u64 + 1, *q)).collect();
            let (_dir, hub, store, gw) = hub().await;
            let gtin = Gtin::from_index(ITEM).unwrap();
            let mut acked = 0u64;
            let check = |acked: u64, sales: usize, stock: i64| {
                let expect_stock: i64 = qtys.iter().take(acked as usize).map(|q| -i64::from(*q)).sum();
                assert_eq!(sales as u64, acked, "the hub must hold each acknowledged sale exactly once");
                assert_eq!(stock, expect_stock, "stock counts each sale once");
            };
            for t in tries.iter().chain(std::iter::once(&Attempt { start: 1, len: n })) {
                let start = t.start.min(n);
                let end = (start + t.len - 1).min(n);
                let batch = &events[(start - 1) as usize..end as usize];
                match hub.ingest_events(&gw, batch).await {
                    Ok(ack) => {
                        assert!(start <= acked + 1, "a gap from {} to {start} was accepted", acked + 1);
                        assert_eq!(ack.acked_through, acked.max(end), "ack after {t:?}");
                        acked = ack.acked_through;
                    }
                    Err(StorageError::SeqGap { expected_from }) => {
                        assert!(start > acked + 1, "{t:?} refused although it continues {acked}");
                        assert_eq!(expected_from, acked + 1);
                    }
                    Err(e) => panic!("unexpected refusal of {t:?}: {e}"),
                }
                let sales = hub.sales_since(&store, SalesSince::All, 1_000).await.unwrap().sales.len();
                check(acked, sales, hub.stock(&store, &gtin).await.unwrap());
            }
            assert_eq!(acked, n);
        });
    }
}
