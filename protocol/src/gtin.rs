//! GTIN-8/12/13/14 kept as one validated 14-digit value (GS1 General Specifications 7.9).
use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ProtocolError;

/// A Global Trade Item Number, always held as 14 ASCII digits with a verified check digit.
/// Shorter forms (GTIN-8, UPC-A as GTIN-12, EAN-13) are left-padded with zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gtin([u8; 14]);

/// The GS1 mod-10 check digit for `data` (digits without the check digit), weights 3,1,3,...
/// counted from the rightmost data digit. Input must be ASCII digits.
pub fn gs1_check_digit(data: &[u8]) -> u8 {
    let sum: u32 = data
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let v = u32::from(d.wrapping_sub(b'0'));
            if i % 2 == 0 { v * 3 } else { v }
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

impl Gtin {
    /// Parses 8, 12, 13 or 14 digits and verifies the check digit.
    pub fn parse(s: &str) -> Result<Self, ProtocolError> {
        let b = s.as_bytes();
        if !matches!(b.len(), 8 | 12 | 13 | 14) {
            return Err(ProtocolError::GtinLength(s.chars().count()));
        }
        if !b.iter().all(u8::is_ascii_digit) {
            return Err(ProtocolError::GtinNotDigits);
        }
        let (data, check) = b.split_at(b.len() - 1);
        let expected = gs1_check_digit(data);
        let found = check[0] - b'0';
        if expected != found {
            return Err(ProtocolError::GtinCheckDigit { expected, found });
        }
        let mut out = [b'0'; 14];
        out[14 - b.len()..].copy_from_slice(b);
        Ok(Gtin(out))
    }

    /// Builds a GTIN-14 from 13 data digits by computing the check digit (for simulators and tests).
    pub fn from_data_digits(data: &[u8; 13]) -> Result<Self, ProtocolError> {
        if !data.iter().all(u8::is_ascii_digit) {
            return Err(ProtocolError::GtinNotDigits);
        }
        let mut out = [b'0'; 14];
        out[..13].copy_from_slice(data);
        out[13] = b'0' + gs1_check_digit(data);
        Ok(Gtin(out))
    }

    /// A GTIN built from a number below 10^13 (test data and simulators).
    pub fn from_index(n: u64) -> Result<Self, ProtocolError> {
        let mut data = [b'0'; 13];
        let mut v = n;
        for slot in data.iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
        if v != 0 {
            return Err(ProtocolError::GtinLength(14));
        }
        Self::from_data_digits(&data)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits are ever stored.
        core::str::from_utf8(&self.0).unwrap_or("00000000000000")
    }

    pub fn as_bytes(&self) -> &[u8; 14] {
        &self.0
    }
}

impl FromStr for Gtin {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Gtin::parse(s)
    }
}

impl fmt::Display for Gtin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Gtin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gtin({})", self.as_str())
    }
}

impl Serialize for Gtin {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Gtin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <alloc::borrow::Cow<'de, str>>::deserialize(d)?;
        Gtin::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: Result<&str, ProtocolError>) {
        assert_eq!(
            Gtin::parse(input).map(|g| alloc::string::ToString::to_string(&g)),
            expect.map(Into::into),
            "{input}"
        );
    }

    #[test]
    fn published_check_digits() {
        // shared/vectors/barcodes.tsv
        assert_eq!(gs1_check_digit(b"950110153100"), 0);
        assert_eq!(gs1_check_digit(b"9501234"), 6);
        assert_eq!(gs1_check_digit(b"629104150021"), 3);
    }

    #[test]
    fn parses_all_lengths_to_14_digits() {
        check("9501101531000", Ok("09501101531000"));
        check("95012346", Ok("00000095012346"));
        check("123601057072", Ok("00123601057072"));
        check("02112345678900", Ok("02112345678900"));
        check("6291041500213", Ok("06291041500213"));
    }

    #[test]
    fn rejects_bad_input() {
        check(
            "2112345678901",
            Err(ProtocolError::GtinCheckDigit {
                expected: 0,
                found: 1,
            }),
        );
        check("12345", Err(ProtocolError::GtinLength(5)));
        check("95011015310a0", Err(ProtocolError::GtinNotDigits));
        check("", Err(ProtocolError::GtinLength(0)));
        check(
            "９５０１１０１５３１０００",
            Err(ProtocolError::GtinLength(13)),
        );
    }

    #[test]
    fn serde_round_trip_and_validation() {
        let g = Gtin::parse("9501101531000").unwrap();
        let j = serde_json::to_string(&g).unwrap();
        assert_eq!(j, "\"09501101531000\"");
        assert_eq!(serde_json::from_str::<Gtin>(&j).unwrap(), g);
        assert!(serde_json::from_str::<Gtin>("\"9501101531001\"").is_err());
    }

    #[test]
    fn from_index_makes_valid_gtins() {
        for n in [0u64, 1, 42, 99_999, 9_999_999_999_999] {
            let g = Gtin::from_index(n).unwrap();
            assert_eq!(Gtin::parse(g.as_str()).unwrap(), g);
        }
        assert!(Gtin::from_index(10_000_000_000_000).is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,20}") {
            let _ = Gtin::parse(&s);
        }

        #[test]
        fn any_single_digit_change_is_caught(n in 0u64..10_000_000_000_000, pos in 0usize..14, d in 1u8..10) {
            let g = Gtin::from_index(n).unwrap();
            let mut bytes = *g.as_bytes();
            bytes[pos] = b'0' + (bytes[pos] - b'0' + d) % 10;
            let s = core::str::from_utf8(&bytes).unwrap();
            proptest::prop_assert!(Gtin::parse(s).is_err());
        }
    }
}
