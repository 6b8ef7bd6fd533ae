use aisle_protocol::member::MemberClaims;
use aisle_protocol::sync::{Payment, PaymentMethod};
use aisle_protocol::{Currency, Gtin, Money, SaleId, UtcMillis};

use super::*;

fn cny() -> Currency {
    Currency::parse("CNY").unwrap()
}

fn item(n: u64, minor: i64, rules: ItemRules) -> PricedItem {
    PricedItem {
        gtin: Gtin::from_index(n).unwrap(),
        name: format!("item {n}"),
        unit_price: Money::new(minor, cny()),
        price_version: 3,
        from_shelf: false,
        weight_g: None,
        embedded_price: None,
        qty: 1,
        rules,
    }
}

fn weighs(g: u32) -> ItemRules {
    ItemRules {
        age_min: None,
        unit_weight_g: Some(g),
    }
}

fn session() -> LaneSession {
    LaneSession::new(BaggingRules::default(), cny())
}

fn card() -> Payment {
    Payment {
        method: PaymentMethod::Card,
        reference: Some("A1".into()),
        offline: false,
    }
}

#[test]
fn lines_add_up_and_the_record_is_what_was_shown() {
    let mut s = session();
    assert_eq!(s.view().total_decimal, "0.00");
    s.add(item(1, 250, weighs(500))).unwrap();
    let line = s.add(item(2, 199, weighs(100))).unwrap().line_no;
    s.set_qty(line, 3).unwrap();
    // A weighed apple: 1.234 kg at 12.99/kg.
    let mut apples = item(3, 1299, ItemRules::default());
    apples.weight_g = Some(1234);
    let apples = s.add(apples).unwrap();
    assert_eq!(apples.line_total, Money::new(1603, cny()));
    // A pre-priced pack of cheese: the barcode says 4.56.
    let mut cheese = item(4, 999, ItemRules::default());
    cheese.embedded_price = Some(Money::new(456, cny()));
    s.add(cheese).unwrap();
    assert_eq!(s.total(), Some(Money::new(250 + 597 + 1603 + 456, cny())));
    assert_eq!(s.items(), 1 + 3 + 1 + 1);
    let rec = s.record(SaleId::parse("L1-1").unwrap(), card()).unwrap();
    assert_eq!(rec.validate(), Ok(()));
    assert_eq!(rec.total, s.total().unwrap());
    assert_eq!(rec.lines[2].weight_g, Some(1234));
}

#[test]
fn member_card_reprices_every_line() {
    let mut s = session();
    s.add(item(1, 1000, ItemRules::default())).unwrap();
    s.set_member(MemberClaims {
        member: "M-1".into(),
        discount_bp: 1000,
        issued_at: UtcMillis(0),
        expires_at: UtcMillis(10),
        key_id: 1,
    })
    .unwrap();
    s.add(item(2, 199, ItemRules::default())).unwrap();
    let v = s.view();
    assert_eq!(v.lines[0].discount, Some(Money::new(100, cny())));
    assert_eq!(v.lines[1].discount, Some(Money::new(19, cny())));
    assert_eq!(v.total, Money::new(900 + 180, cny()));
    let rec = s.record(SaleId::parse("L1-2").unwrap(), card()).unwrap();
    assert_eq!(rec.validate(), Ok(()));
}

#[test]
fn bagging_weight_off_raises_an_alert_that_the_weight_or_the_attendant_clears() {
    let mut s = session();
    s.add(item(1, 250, weighs(500))).unwrap();
    s.weight(505);
    assert!(s.alerts().is_empty());
    assert!(s.can_pay());
    // Something unscanned went in the bag.
    s.weight(905);
    assert_eq!(
        s.alerts(),
        &[Alert::Weight {
            expected_g: 500,
            actual_g: 905,
            missing: false,
        }]
    );
    assert!(!s.can_pay());
    assert!(s.begin_payment().is_err());
    // Taken out again: the alert clears itself.
    s.weight(498);
    assert!(s.alerts().is_empty());
    // Put back; the attendant accepts it (a shopper's own bag): the difference is carried.
    s.weight(905);
    assert_eq!(s.approve("Ana").len(), 1);
    assert!(s.alerts().is_empty());
    s.add(item(2, 100, weighs(200))).unwrap();
    s.weight(1105);
    assert!(s.alerts().is_empty(), "{:?}", s.alerts());
}

#[test]
fn an_item_of_unknown_weight_only_checks_for_weight_going_missing() {
    let mut s = session();
    s.add(item(1, 250, weighs(500))).unwrap();
    s.add(item(2, 250, ItemRules::default())).unwrap();
    s.weight(1500);
    assert!(s.alerts().is_empty());
    s.weight(300);
    assert!(matches!(s.alerts(), [Alert::Weight { .. }]));
}

#[test]
fn age_restricted_item_waits_for_the_attendant_and_void_clears_it() {
    let mut s = session();
    let wine = ItemRules {
        age_min: Some(18),
        unit_weight_g: None,
    };
    let n = s.add(item(1, 5000, wine)).unwrap().line_no;
    assert!(matches!(s.alerts(), [Alert::Age { age_min: 18, .. }]));
    assert!(!s.can_pay());
    s.approve("Ana");
    assert_eq!(s.lines()[0].age_approved_by.as_deref(), Some("Ana"));
    assert!(s.can_pay());
    // A second bottle, then the shopper changes their mind: voided, its alert goes too.
    let m = s.add(item(1, 5000, wine)).unwrap().line_no;
    assert_ne!(n, m);
    s.void(m).unwrap();
    assert!(s.alerts().is_empty());
    assert_eq!(s.total(), Some(Money::new(5000, cny())));
    assert!(s.void(m).is_err(), "a voided line is gone");
}

#[test]
fn payment_freezes_the_basket_until_decided() {
    let mut s = session();
    assert!(s.begin_payment().is_err(), "nothing to pay");
    let n = s.add(item(1, 250, ItemRules::default())).unwrap().line_no;
    let (attempt, amount) = s.begin_payment().unwrap();
    assert_eq!((attempt, amount), (1, Money::new(250, cny())));
    assert!(s.add(item(2, 1, ItemRules::default())).is_err());
    assert!(s.void(n).is_err());
    assert!(s.cancel().is_err());
    s.payment_failed();
    assert_eq!(s.phase(), &Phase::Shopping);
    let (attempt, _) = s.begin_payment().unwrap();
    assert_eq!(attempt, 2, "every attempt has its own number");
    s.payment_unresolved("no answer".into());
    assert!(s.add(item(2, 1, ItemRules::default())).is_err());
    assert!(
        s.approve("Ana").is_empty(),
        "approve does not settle a payment"
    );
    s.recover_payment();
    assert!(s.alerts().is_empty());
    assert!(s.can_pay());
    s.paid("L1-1".into(), "/r/L1-1".into());
    assert!(
        s.add(item(2, 1, ItemRules::default())).is_ok(),
        "a new visit"
    );
    assert_eq!(s.lines().len(), 1);
}

#[test]
fn quantities_are_bounded_and_variable_lines_fixed() {
    let mut s = session();
    let n = s.add(item(1, 250, ItemRules::default())).unwrap().line_no;
    assert!(s.set_qty(n, 0).is_err());
    assert!(s.set_qty(n, 10_000).is_err());
    let mut w = item(2, 1299, ItemRules::default());
    w.weight_g = Some(100);
    let m = s.add(w).unwrap().line_no;
    assert!(s.set_qty(m, 2).is_err());
    let mut other = item(3, 100, ItemRules::default());
    other.unit_price = Money::new(100, Currency::parse("EUR").unwrap());
    assert!(s.add(other).is_err(), "one currency per basket");
}

#[test]
fn a_barcode_price_in_another_currency_is_refused_not_left_out_of_the_total() {
    let mut s = session();
    s.add(item(1, 250, ItemRules::default())).unwrap();
    // The store prices in CNY; a pre-priced pack whose barcode layout says GBP.
    let mut pack = item(2, 999, ItemRules::default());
    pack.embedded_price = Some(Money::new(456, Currency::parse("GBP").unwrap()));
    let e = s.add(pack.clone()).unwrap_err().to_string();
    assert!(e.contains("GBP") && e.contains("attendant"), "{e}");
    assert_eq!(s.lines().len(), 1);
    assert_eq!(s.total(), Some(Money::new(250, cny())));
    // Not as the first line either: the basket would be in GBP and drop CNY lines.
    let mut s = session();
    assert!(s.add(pack).is_err());
    assert!(s.lines().is_empty());
}

#[test]
fn a_total_that_would_overflow_is_refused_not_dropped() {
    let mut s = session();
    s.add(item(1, i64::MAX / 2, ItemRules::default())).unwrap();
    let n = s
        .add(item(2, i64::MAX / 4, ItemRules::default()))
        .unwrap()
        .line_no;
    assert!(s.add(item(3, i64::MAX / 2, ItemRules::default())).is_err());
    assert!(
        s.set_qty(n, 3).is_err(),
        "a quantity that overflows the total"
    );
    assert_eq!(s.lines().len(), 2);
    assert_eq!(
        s.total(),
        Some(Money::new(i64::MAX / 2 + i64::MAX / 4, cny()))
    );
}

#[test]
fn a_price_printed_on_the_pack_gets_no_member_discount() {
    let mut s = session();
    s.set_member(MemberClaims {
        member: "M-1".into(),
        discount_bp: 1000,
        issued_at: UtcMillis(0),
        expires_at: UtcMillis(10),
        key_id: 1,
    })
    .unwrap();
    let mut cheese = item(4, 999, ItemRules::default());
    cheese.embedded_price = Some(Money::new(456, cny()));
    let l = s.add(cheese).unwrap();
    assert_eq!(l.discount, None);
    assert_eq!(l.line_total, Money::new(456, cny()));
    let l = s.add(item(1, 1000, ItemRules::default())).unwrap();
    assert_eq!(l.discount, Some(Money::new(100, cny())));
}

#[test]
fn weight_still_missing_is_for_the_shopper_not_waved_through_with_an_age_check() {
    let mut s = session();
    s.add(item(1, 250, weighs(500))).unwrap();
    s.weight(500);
    let wine = ItemRules {
        age_min: Some(18),
        unit_weight_g: Some(750),
    };
    s.add(item(2, 5000, wine)).unwrap();
    // The wine is not in the bag yet when the attendant checks the shopper's age.
    s.weight(500);
    let approved = s.approve("Ana");
    assert_eq!(approved.len(), 1, "only the age check: {approved:?}");
    assert!(matches!(
        s.alerts(),
        [Alert::Weight {
            expected_g: 1250,
            actual_g: 500,
            missing: true
        }]
    ));
    assert!(s.alerts()[0].say().contains("Please put your items"));
    // Bagged: nothing is carried over from the approval.
    s.weight(1248);
    assert!(s.alerts().is_empty(), "{:?}", s.alerts());
    assert!(s.can_pay());
}
