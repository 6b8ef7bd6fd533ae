//! Money in integer minor units with an ISO 4217 currency. No floats anywhere.
use alloc::string::{String, ToString};
use core::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ProtocolError;

/// ISO 4217 alphabetic codes we accept, with their minor-unit exponent.
const CURRENCIES: &[(&str, u8)] = &[
    ("AED", 2),
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("MYR", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PHP", 2),
    ("PLN", 2),
    ("RON", 2),
    ("SAR", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TND", 3),
    ("TRY", 2),
    ("TWD", 2),
    ("UAH", 2),
    ("USD", 2),
    ("VND", 0),
    ("ZAR", 2),
];

/// Largest absolute amount in minor units we accept from outside (10^15: far above any till).
const MAX_MINOR: i64 = 1_000_000_000_000_000;

/// A validated ISO 4217 currency.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency {
    code: [u8; 3],
    exponent: u8,
}

impl Currency {
    pub fn parse(code: &str) -> Result<Self, ProtocolError> {
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(c, e)| {
                let b = c.as_bytes();
                Currency {
                    code: [b[0], b[1], b[2]],
                    exponent: *e,
                }
            })
            .ok_or_else(|| ProtocolError::UnknownCurrency(code.to_string()))
    }

    pub fn code(&self) -> &str {
        core::str::from_utf8(&self.code).unwrap_or("XXX")
    }

    /// Digits after the decimal point (2 for CNY, 0 for JPY, 3 for KWD).
    pub fn exponent(&self) -> u8 {
        self.exponent
    }

    /// Parses a decimal amount such as `12.80`, `12.8`, `12` or `-0.50` into minor units.
    /// Refuses more decimals than the currency has, exponents, separators and signs in the wrong place.
    pub fn parse_amount(&self, s: &str) -> Result<Money, ProtocolError> {
        let syntax = || ProtocolError::AmountSyntax(s.to_string());
        let (neg, body) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (int, frac) = match body.split_once('.') {
            Some((i, f)) => (i, f),
            None => (body, ""),
        };
        if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        if body.contains('.') && (frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit())) {
            return Err(syntax());
        }
        if frac.len() > usize::from(self.exponent) {
            return Err(ProtocolError::AmountPrecision {
                amount: s.to_string(),
                currency: self.code().to_string(),
                allowed: self.exponent,
            });
        }
        if int.len() > 16 {
            return Err(ProtocolError::AmountRange(s.to_string()));
        }
        let mut minor: i64 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            minor = minor
                .checked_mul(10)
                .and_then(|m| m.checked_add(i64::from(b - b'0')))
                .ok_or_else(|| ProtocolError::AmountRange(s.to_string()))?;
        }
        for _ in frac.len()..usize::from(self.exponent) {
            minor = minor
                .checked_mul(10)
                .ok_or_else(|| ProtocolError::AmountRange(s.to_string()))?;
        }
        if minor > MAX_MINOR {
            return Err(ProtocolError::AmountRange(s.to_string()));
        }
        Ok(Money {
            minor: if neg { -minor } else { minor },
            currency: *self,
        })
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.code())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <alloc::borrow::Cow<'de, str>>::deserialize(d)?;
        Currency::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An amount of money: integer minor units (cents, fen, pence) and its currency.
/// On the wire: `{"minor": 1280, "currency": "CNY"}`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(minor: i64, currency: Currency) -> Self {
        Money { minor, currency }
    }

    pub fn zero(currency: Currency) -> Self {
        Money { minor: 0, currency }
    }

    pub fn checked_add(self, other: Money) -> Result<Money, ProtocolError> {
        if self.currency != other.currency {
            return Err(ProtocolError::CurrencyMismatch(
                self.currency.code().to_string(),
                other.currency.code().to_string(),
            ));
        }
        let minor = self
            .minor
            .checked_add(other.minor)
            .ok_or(ProtocolError::MoneyOverflow)?;
        Ok(Money {
            minor,
            currency: self.currency,
        })
    }

    pub fn checked_mul(self, qty: i64) -> Result<Money, ProtocolError> {
        let minor = self
            .minor
            .checked_mul(qty)
            .ok_or(ProtocolError::MoneyOverflow)?;
        Ok(Money {
            minor,
            currency: self.currency,
        })
    }

    /// The amount as a decimal string without the currency, e.g. `12.80`.
    pub fn decimal(&self) -> String {
        let mut out = String::new();
        let e = u32::from(self.currency.exponent);
        let abs = self.minor.unsigned_abs();
        let scale = 10u64.pow(e);
        if self.minor < 0 {
            out.push('-');
        }
        let _ = fmt::write(&mut out, format_args!("{}", abs / scale));
        if e > 0 {
            let _ = fmt::write(
                &mut out,
                format_args!(".{:0width$}", abs % scale, width = e as usize),
            );
        }
        out
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.decimal(), self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(cur: &str, amount: &str, expect: Result<i64, ()>) {
        let c = Currency::parse(cur).unwrap();
        assert_eq!(
            c.parse_amount(amount).map(|m| m.minor).map_err(|_| ()),
            expect,
            "{amount} {cur}"
        );
    }

    #[test]
    fn parses_decimal_amounts() {
        check("CNY", "12.80", Ok(1280));
        check("CNY", "12.8", Ok(1280));
        check("CNY", "12", Ok(1200));
        check("CNY", "0.05", Ok(5));
        check("CNY", "-0.50", Ok(-50));
        check("JPY", "1200", Ok(1200));
        check("KWD", "1.234", Ok(1234));
    }

    #[test]
    fn refuses_malformed_amounts() {
        check("CNY", "12.805", Err(()));
        check("JPY", "12.5", Err(()));
        check("CNY", "", Err(()));
        check("CNY", ".5", Err(()));
        check("CNY", "5.", Err(()));
        check("CNY", "1e3", Err(()));
        check("CNY", "1,000.00", Err(()));
        check("CNY", "+1", Err(()));
        check("CNY", "--1", Err(()));
        check("CNY", "99999999999999999999", Err(()));
        check("CNY", " 1", Err(()));
    }

    #[test]
    fn unknown_currency_is_refused() {
        assert_eq!(
            Currency::parse("XYZ"),
            Err(ProtocolError::UnknownCurrency("XYZ".into()))
        );
        assert!(Currency::parse("cny").is_err());
    }

    #[test]
    fn formats_and_serialises() {
        let cny = Currency::parse("CNY").unwrap();
        assert_eq!(Money::new(1280, cny).to_string(), "12.80 CNY");
        assert_eq!(Money::new(-5, cny).decimal(), "-0.05");
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(Money::new(1200, jpy).decimal(), "1200");
        let j = serde_json::to_string(&Money::new(1280, cny)).unwrap();
        assert_eq!(j, r#"{"minor":1280,"currency":"CNY"}"#);
        assert!(serde_json::from_str::<Money>(r#"{"minor":1,"currency":"QQQ"}"#).is_err());
    }

    #[test]
    fn arithmetic_checks_currency_and_overflow() {
        let cny = Currency::parse("CNY").unwrap();
        let gbp = Currency::parse("GBP").unwrap();
        assert!(Money::new(1, cny).checked_add(Money::new(1, gbp)).is_err());
        assert!(Money::new(i64::MAX, cny).checked_mul(2).is_err());
        assert_eq!(Money::new(150, cny).checked_mul(3).unwrap().minor, 450);
    }

    proptest::proptest! {
        #[test]
        fn decimal_round_trips(minor in -MAX_MINOR..MAX_MINOR) {
            let cny = Currency::parse("CNY").unwrap();
            let m = Money::new(minor, cny);
            proptest::prop_assert_eq!(cny.parse_amount(&m.decimal()).unwrap(), m);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,30}") {
            let _ = Currency::parse("CNY").unwrap().parse_amount(&s);
        }
    }
}
