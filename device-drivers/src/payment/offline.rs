//! How much a store lets its terminals take offline (card store-and-forward): a cap per sale and
//! a cap on the total not yet forwarded, per currency, in integer minor units. Pure: the lane
//! brings the offline total its ledger keeps.
use std::collections::BTreeMap;

use aisle_protocol::{Currency, Money};
use serde::{Deserialize, Serialize};

use super::PaymentError;

/// The caps for one currency, in minor units. Zero refuses every offline payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct OfflineCaps {
    pub per_sale: i64,
    pub total: i64,
}

/// What [`OfflinePolicy::decide`] says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "decision")]
pub enum OfflineDecision {
    Allow,
    /// In plain words, for the lane and the attendant.
    Refuse {
        reason: String,
    },
}

/// Per-currency caps; a currency without caps takes nothing offline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OfflinePolicy {
    caps: BTreeMap<Currency, OfflineCaps>,
}

impl OfflinePolicy {
    /// No offline payments at all.
    pub fn none() -> Self {
        OfflinePolicy::default()
    }

    /// Adds (or replaces) the caps of `currency`; negative caps are refused.
    pub fn with_caps(
        mut self,
        currency: Currency,
        caps: OfflineCaps,
    ) -> Result<Self, PaymentError> {
        if caps.per_sale < 0 || caps.total < 0 {
            return Err(PaymentError::Settings(format!(
                "{currency}: caps must not be negative"
            )));
        }
        self.caps.insert(currency, caps);
        Ok(self)
    }

    pub fn caps(&self, currency: Currency) -> Option<OfflineCaps> {
        self.caps.get(&currency).copied()
    }

    /// May `amount` be taken offline when `offline_total` (same currency) is already waiting to
    /// be forwarded? Never allows above either cap; never overflows.
    pub fn decide(&self, amount: Money, offline_total: Money) -> OfflineDecision {
        let refuse = |reason: String| OfflineDecision::Refuse { reason };
        let cur = amount.currency;
        if offline_total.currency != cur {
            return refuse(format!(
                "the offline total is kept in {}, not {cur}",
                offline_total.currency
            ));
        }
        let Some(caps) = self.caps(cur) else {
            return refuse(format!("card payments in {cur} cannot be taken offline"));
        };
        if amount.minor <= 0 {
            return refuse(format!("{amount} is not an amount to charge"));
        }
        if offline_total.minor < 0 {
            return refuse(format!("the offline total {offline_total} is negative"));
        }
        if amount.minor > caps.per_sale {
            return refuse(format!(
                "{amount} is above the {} limit for one payment taken offline",
                Money::new(caps.per_sale, cur)
            ));
        }
        match offline_total.minor.checked_add(amount.minor) {
            Some(t) if t <= caps.total => OfflineDecision::Allow,
            _ => refuse(format!(
                "payments taken offline would exceed the {} limit ({offline_total} already \
                 waiting to be sent)",
                Money::new(caps.total, cur)
            )),
        }
    }
}

/// The caps as configured (TOML): `[[payment.offline]] currency = "CNY"`,
/// `per_sale = "200.00"`, `total = "2000.00"` (decimal amounts in the currency).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineSettings {
    pub currency: String,
    pub per_sale: String,
    pub total: String,
}

impl OfflineSettings {
    /// The policy for a list of settings; a currency named twice is refused.
    pub fn policy(list: &[OfflineSettings]) -> Result<OfflinePolicy, PaymentError> {
        let mut p = OfflinePolicy::none();
        for s in list {
            let err = |e: aisle_protocol::ProtocolError| {
                PaymentError::Settings(format!("{}: {e}", s.currency))
            };
            let cur = Currency::parse(&s.currency).map_err(err)?;
            if p.caps(cur).is_some() {
                return Err(PaymentError::Settings(format!("{cur} is named twice")));
            }
            let per_sale = cur.parse_amount(&s.per_sale).map_err(err)?.minor;
            let total = cur.parse_amount(&s.total).map_err(err)?.minor;
            p = p.with_caps(cur, OfflineCaps { per_sale, total })?;
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    // Minor units written as major_minor (200_00 is 200.00).
    #![allow(clippy::unwrap_used, clippy::inconsistent_digit_grouping)]
    use super::*;
    use proptest::prelude::*;

    fn cny() -> Currency {
        Currency::parse("CNY").unwrap()
    }

    fn policy(per_sale: i64, total: i64) -> OfflinePolicy {
        OfflinePolicy::none()
            .with_caps(cny(), OfflineCaps { per_sale, total })
            .unwrap()
    }

    fn check(p: &OfflinePolicy, amount: i64, total: i64, expect: Result<(), &str>) {
        let got = p.decide(Money::new(amount, cny()), Money::new(total, cny()));
        match (got, expect) {
            (OfflineDecision::Allow, Ok(())) => {}
            (OfflineDecision::Refuse { reason }, Err(want)) => {
                assert!(reason.contains(want), "{reason:?} should say {want:?}");
            }
            (got, want) => panic!("{amount} on {total}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn caps_per_sale_and_total() {
        let p = policy(200_00, 1000_00);
        check(&p, 200_00, 0, Ok(()));
        check(
            &p,
            200_01,
            0,
            Err("above the 200.00 CNY limit for one payment"),
        );
        check(&p, 100_00, 900_00, Ok(()));
        check(
            &p,
            100_01,
            900_00,
            Err("exceed the 1000.00 CNY limit (900.00 CNY already"),
        );
        check(&p, 1, i64::MAX, Err("exceed"));
        check(&p, 0, 0, Err("not an amount to charge"));
        check(&p, -5, 0, Err("not an amount to charge"));
        check(&p, 5, -1, Err("negative"));
        let usd = Currency::parse("USD").unwrap();
        assert_eq!(
            p.decide(Money::new(1, usd), Money::new(0, usd)),
            OfflineDecision::Refuse {
                reason: "card payments in USD cannot be taken offline".into()
            }
        );
        assert!(matches!(
            p.decide(Money::new(1, cny()), Money::new(0, usd)),
            OfflineDecision::Refuse { reason } if reason.contains("kept in USD")
        ));
        check(&policy(0, 0), 1, 0, Err("above the 0.00 CNY limit"));
    }

    #[test]
    fn settings_from_toml() {
        #[derive(Deserialize)]
        struct Doc {
            offline: Vec<OfflineSettings>,
        }
        let doc: Doc = toml::from_str(
            "[[offline]]\ncurrency = \"CNY\"\nper_sale = \"200\"\ntotal = \"2000.50\"\n\
             [[offline]]\ncurrency = \"JPY\"\nper_sale = \"5000\"\ntotal = \"50000\"\n",
        )
        .unwrap();
        let p = OfflineSettings::policy(&doc.offline).unwrap();
        assert_eq!(
            p.caps(cny()),
            Some(OfflineCaps {
                per_sale: 200_00,
                total: 2000_50
            })
        );
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(p.caps(jpy).unwrap().per_sale, 5000);
        let s = |c: &str, a: &str| OfflineSettings {
            currency: c.into(),
            per_sale: a.into(),
            total: "1".into(),
        };
        for bad in [
            vec![s("XYZ", "1")],
            vec![s("JPY", "1.5")],
            vec![s("CNY", "-1")],
            vec![s("CNY", "1"), s("CNY", "2")],
        ] {
            assert!(OfflineSettings::policy(&bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn never_allows_above_either_cap(
            per_sale in prop_oneof![0i64..=100_000, 0i64..=i64::MAX],
            cap in prop_oneof![0i64..=1_000_000, 0i64..=i64::MAX],
            amount in prop_oneof![-10i64..=200_000, i64::MIN..=i64::MAX],
            total in prop_oneof![-10i64..=2_000_000, i64::MIN..=i64::MAX],
        ) {
            let p = policy(per_sale, cap);
            let allowed = p.decide(Money::new(amount, cny()), Money::new(total, cny()))
                == OfflineDecision::Allow;
            // The rule in exact (i128) arithmetic.
            let expect = amount > 0
                && total >= 0
                && amount <= per_sale
                && i128::from(total) + i128::from(amount) <= i128::from(cap);
            prop_assert_eq!(allowed, expect);
        }

        #[test]
        fn a_run_of_allowed_payments_stays_under_the_total(
            amounts in proptest::collection::vec(1i64..=50_000, 0..60),
        ) {
            let p = policy(20_000, 100_000);
            let mut total = 0i64;
            for a in amounts {
                if p.decide(Money::new(a, cny()), Money::new(total, cny())) == OfflineDecision::Allow {
                    total += a;
                }
                prop_assert!(total <= 100_000);
            }
        }
    }
}
