//! The payment flow a lane runs, through the public API: authorise on the terminal's thread,
//! check an offline approval against the offline policy, reverse what cannot stand.
#![allow(clippy::unwrap_used, clippy::inconsistent_digit_grouping)]

use std::time::Duration;

use aisle_drivers::payment::{
    Behaviour, OfflineCaps, OfflineDecision, OfflinePolicy, Outcome, Reversal, SaleRef,
    SimulatedTerminal, TerminalThread, TerminalThreadConfig,
};
use aisle_protocol::{Currency, Money};

const T: Duration = Duration::from_secs(5);

#[test]
fn offline_approvals_beyond_the_caps_are_reversed_and_the_total_never_exceeds_them() {
    let cny = Currency::parse("CNY").unwrap();
    let m = |minor| Money::new(minor, cny);
    let policy = OfflinePolicy::none()
        .with_caps(
            cny,
            OfflineCaps {
                per_sale: 300_00,
                total: 500_00,
            },
        )
        .unwrap();
    let sim = SimulatedTerminal::new();
    sim.script([
        Behaviour::ApproveOffline,
        Behaviour::ApproveOffline,
        Behaviour::ApproveOffline,
        Behaviour::Approve,
    ]);
    let terminal = TerminalThread::spawn(sim.clone(), TerminalThreadConfig::default()).unwrap();
    // What the lane's ledger would keep.
    let mut offline_total = m(0);
    let mut kept = Vec::new();
    for (i, amount) in [250_00, 350_00, 260_00, 400_00].into_iter().enumerate() {
        let sale_ref = SaleRef::new(format!("S-{i}:1")).unwrap();
        let Outcome::Approved(a) = terminal.authorise(m(amount), &sale_ref, T) else {
            panic!("scripted approvals");
        };
        if a.offline {
            match policy.decide(a.amount, offline_total) {
                OfflineDecision::Allow => {
                    offline_total = offline_total.checked_add(a.amount).unwrap()
                }
                OfflineDecision::Refuse { reason } => {
                    assert!(!reason.is_empty());
                    assert_eq!(terminal.reverse(&a, T), Reversal::Reversed);
                    continue;
                }
            }
        }
        kept.push((a.amount.minor, a.offline));
    }
    // 250 offline kept; 350 above the per-sale cap; 260 would make 510 > 500; 400 online.
    assert_eq!(kept, [(250_00, true), (400_00, false)]);
    assert_eq!(offline_total, m(250_00));
    let reversed: Vec<i64> = sim
        .charges()
        .iter()
        .filter(|c| c.reversed)
        .map(|c| c.approval.amount.minor)
        .collect();
    assert_eq!(reversed, [350_00, 260_00]);
}
