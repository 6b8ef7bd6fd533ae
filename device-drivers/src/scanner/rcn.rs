//! Restricted-circulation numbers (GS1 General Specifications 2.1.11 and 7.9): EAN-13 prefixes
//! 02 and 20-29 whose meaning each national GS1 organisation defines (price, weight or count,
//! with or without a price/weight check digit), and 04/40-49 for a company's own use.
//!
//! Layouts are configuration ([`RcnLayouts`], TOML), never code: a store abroad changes a file.
//! A layout is 13 characters, one per digit of the EAN-13:
//!
//! | char | digit                                                              |
//! |------|--------------------------------------------------------------------|
//! | `F`  | prefix digit (must be the first ones; which prefixes: `prefixes`)  |
//! | `I`  | item reference: kept in the lookup key                             |
//! | `P`  | price, in the currency's minor units unless `decimals` is given    |
//! | `W`  | weight in grams                                                    |
//! | `N`  | count                                                              |
//! | `V`  | the price/weight check digit over the 4 or 5 value digits (7.9)    |
//! | `X`  | ignored (zeroed in the lookup key)                                 |
//! | `C`  | the EAN-13 check digit (last)                                      |
//!
//! The lookup key the lane prices from is the barcode with value and `V`/`X` digits zeroed and
//! the check digit recomputed: `2011122912346` looks up `2011122000000`'s GTIN-14.
use aisle_protocol::{Currency, Gtin, Money};
use serde::{Deserialize, Serialize};

use super::ScanError;

/// The "2-" weighted product (General Specifications figure 7.9.3-1): units minus tens of 2d.
const W2M: [u8; 10] = [0, 2, 4, 6, 8, 9, 1, 3, 5, 7];
/// "3": units of 3d.
const W3: [u8; 10] = [0, 3, 6, 9, 2, 5, 8, 1, 4, 7];
/// "5+": units plus tens of 5d.
const W5P: [u8; 10] = [0, 5, 1, 6, 2, 7, 3, 8, 4, 9];
/// "5-": units minus tens of 5d.
const W5M: [u8; 10] = [0, 5, 9, 4, 8, 3, 7, 2, 6, 1];

/// The check digit over a 4-digit price or weight (weights 2-, 2-, 3, 5-; sum times 3, units).
pub fn check_digit_4(d: [u8; 4]) -> u8 {
    let sum = u32::from(W2M[usize::from(d[0] % 10)])
        + u32::from(W2M[usize::from(d[1] % 10)])
        + u32::from(W3[usize::from(d[2] % 10)])
        + u32::from(W5M[usize::from(d[3] % 10)]);
    ((sum * 3) % 10) as u8
}

/// The check digit over a 5-digit price or weight (weights 5+, 2-, 5-, 5+, 2-; ten minus the
/// sum's units, then the digit whose 5- product that is).
pub fn check_digit_5(d: [u8; 5]) -> u8 {
    let sum = u32::from(W5P[usize::from(d[0] % 10)])
        + u32::from(W2M[usize::from(d[1] % 10)])
        + u32::from(W5M[usize::from(d[2] % 10)])
        + u32::from(W5P[usize::from(d[3] % 10)])
        + u32::from(W2M[usize::from(d[4] % 10)]);
    let target = ((10 - sum % 10) % 10) as u8;
    W5M.iter().position(|&p| p == target).unwrap_or(0) as u8
}

/// What the value digits of a layout carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeasureKind {
    Price,
    Weight,
    Count,
}

/// One layout as configured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RcnLayout {
    /// Two- or three-digit prefixes this layout applies to, e.g. `["20", "21"]`.
    pub prefixes: Vec<String>,
    /// 13 characters, see the module documentation, e.g. `"FFIIIIIVPPPPC"`.
    pub layout: String,
    /// Price digits' decimal places (default: the currency's exponent).
    #[serde(default)]
    pub decimals: Option<u8>,
    /// A free note (what the national GS1 organisation calls it).
    #[serde(default)]
    pub note: Option<String>,
}

/// The store's layouts and currency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RcnLayouts {
    /// Where these layouts come from (a note for people).
    #[serde(default)]
    pub country: Option<String>,
    pub currency: Currency,
    #[serde(default)]
    pub layout: Vec<RcnLayout>,
}

/// The default layouts, embedded: an example after GS1 UK's price layout for 02 and 20-29
/// (`FF IIIII V PPPP C`, price in pence with a price check digit). A store elsewhere must
/// configure its own national layouts.
pub const DEFAULT_LAYOUTS_TOML: &str = include_str!("default_layouts.toml");

/// Largest layouts file we read.
pub const MAX_LAYOUTS_TOML: usize = 64 * 1024;

/// A layout checked and compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Compiled {
    prefixes: Vec<String>,
    kind: MeasureKind,
    /// Positions (0..13) of the value digits, contiguous.
    value: std::ops::Range<usize>,
    /// Position of the price/weight check digit.
    check: Option<usize>,
    /// Positions kept in the lookup key.
    keep: [bool; 13],
    decimals: u8,
}

/// The layouts ready to decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layouts {
    currency: Currency,
    compiled: Vec<Compiled>,
}

/// What a variable-measure barcode says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    Price(Money),
    WeightGrams(u64),
    Count(u32),
}

/// A decoded restricted-circulation number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VariableMeasure {
    pub prefix: String,
    /// The key the store's prices are kept under: value digits zeroed, check digit recomputed.
    pub item: Gtin,
    pub measure: Measure,
}

impl Layouts {
    /// Parses and checks a TOML layouts file.
    pub fn from_toml(text: &str) -> Result<Layouts, String> {
        if text.len() > MAX_LAYOUTS_TOML {
            return Err(format!("layouts file larger than {MAX_LAYOUTS_TOML} bytes"));
        }
        let raw: RcnLayouts = toml::from_str(text).map_err(|e| e.to_string())?;
        Layouts::new(&raw)
    }

    /// The embedded example layouts (tested valid).
    pub fn default_layouts() -> Result<Layouts, String> {
        Layouts::from_toml(DEFAULT_LAYOUTS_TOML)
    }

    /// No layouts: 02/20-29 numbers are reported as restricted, never decoded.
    pub fn none(currency: Currency) -> Layouts {
        Layouts {
            currency,
            compiled: Vec::new(),
        }
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// Checks every layout; no prefix may have two layouts.
    pub fn new(raw: &RcnLayouts) -> Result<Layouts, String> {
        let mut compiled: Vec<Compiled> = Vec::new();
        for (n, l) in raw.layout.iter().enumerate() {
            let c = compile(l, raw.currency).map_err(|e| format!("layout {}: {e}", n + 1))?;
            for p in &c.prefixes {
                if let Some(other) = compiled
                    .iter()
                    .flat_map(|o| o.prefixes.iter())
                    .find(|o| o.starts_with(p.as_str()) || p.starts_with(o.as_str()))
                {
                    return Err(format!(
                        "layout {}: prefix {p} overlaps prefix {other} of an earlier layout",
                        n + 1
                    ));
                }
            }
            compiled.push(c);
        }
        Ok(Layouts {
            currency: raw.currency,
            compiled,
        })
    }

    /// Decodes a 13-digit EAN-13 (already check-digit verified) with a layout, if one applies.
    pub fn decode(&self, ean13: &[u8; 13]) -> Option<Result<VariableMeasure, ScanError>> {
        let c = self
            .compiled
            .iter()
            .find(|c| c.prefixes.iter().any(|p| ean13.starts_with(p.as_bytes())))?;
        Some(self.apply(c, ean13))
    }

    fn apply(&self, c: &Compiled, ean13: &[u8; 13]) -> Result<VariableMeasure, ScanError> {
        let digits: Vec<u8> = ean13.iter().map(|b| b - b'0').collect();
        let value_digits = &digits[c.value.clone()];
        if let Some(pos) = c.check {
            let expected = match value_digits {
                [a, b, c, d] => check_digit_4([*a, *b, *c, *d]),
                [a, b, c, d, e] => check_digit_5([*a, *b, *c, *d, *e]),
                _ => 0,
            };
            let found = digits[pos];
            if expected != found {
                return Err(ScanError::PriceCheckDigit { expected, found });
            }
        }
        let value = value_digits
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(*d));
        let measure = match c.kind {
            MeasureKind::Price => {
                let exp = self.currency.exponent();
                let minor = if c.decimals <= exp {
                    value * 10u64.pow(u32::from(exp - c.decimals))
                } else {
                    let div = 10u64.pow(u32::from(c.decimals - exp));
                    if value % div != 0 {
                        return Err(ScanError::PriceDecimals {
                            currency: self.currency.code().to_string(),
                        });
                    }
                    value / div
                };
                // At most 6 digits times 10^3: far below i64::MAX.
                Measure::Price(Money::new(
                    i64::try_from(minor).unwrap_or(i64::MAX),
                    self.currency,
                ))
            }
            MeasureKind::Weight => Measure::WeightGrams(value),
            MeasureKind::Count => Measure::Count(u32::try_from(value).unwrap_or(u32::MAX)),
        };
        let mut key = [b'0'; 13];
        for (i, k) in key.iter_mut().enumerate().take(12) {
            if c.keep[i] {
                *k = ean13[i];
            }
        }
        let item = gtin13(&key)?;
        Ok(VariableMeasure {
            prefix: c
                .prefixes
                .iter()
                .find(|p| ean13.starts_with(p.as_bytes()))
                .cloned()
                .unwrap_or_default(),
            item,
            measure,
        })
    }
}

/// The GTIN-14 of 12 data digits of an EAN-13 (the 13th is recomputed).
fn gtin13(key: &[u8; 13]) -> Result<Gtin, ScanError> {
    let mut data = [b'0'; 13];
    data[1..].copy_from_slice(&key[..12]);
    Gtin::from_data_digits(&data).map_err(|_| ScanError::NotDigits)
}

fn compile(l: &RcnLayout, currency: Currency) -> Result<Compiled, String> {
    let pat = l.layout.as_bytes();
    if pat.len() != 13 {
        return Err(format!(
            "layout {:?} must have 13 characters, one per digit",
            l.layout
        ));
    }
    if l.prefixes.is_empty() {
        return Err("no prefixes".into());
    }
    let f_count = pat.iter().take_while(|&&b| b == b'F').count();
    if pat.iter().filter(|&&b| b == b'F').count() != f_count || f_count < 2 {
        return Err("the prefix digits (F) must come first, at least two".into());
    }
    for p in &l.prefixes {
        let ok_digits = p.bytes().all(|b| b.is_ascii_digit());
        let restricted = p.starts_with("02") || p.starts_with('2');
        if !ok_digits || !(2..=3).contains(&p.len()) || !restricted || p.len() > f_count {
            return Err(format!(
                "prefix {p:?}: 2 or 3 digits, 02 or 20-29, no longer than the F digits"
            ));
        }
    }
    if pat[12] != b'C' || pat.iter().filter(|&&b| b == b'C').count() != 1 {
        return Err("the last character must be C (the check digit), and only it".into());
    }
    let kinds: Vec<(u8, MeasureKind)> = [
        (b'P', MeasureKind::Price),
        (b'W', MeasureKind::Weight),
        (b'N', MeasureKind::Count),
    ]
    .into_iter()
    .filter(|(c, _)| pat.contains(c))
    .collect();
    let [(vc, kind)] = kinds[..] else {
        return Err("exactly one of P (price), W (weight) or N (count)".into());
    };
    let start = pat.iter().position(|&b| b == vc).unwrap_or(0);
    let len = pat.iter().filter(|&&b| b == vc).count();
    if pat[start..start + len].iter().any(|&b| b != vc) {
        return Err("the value digits must be contiguous".into());
    }
    if len > 6 {
        return Err("at most 6 value digits".into());
    }
    let checks: Vec<usize> = (0..13).filter(|&i| pat[i] == b'V').collect();
    let check = match checks[..] {
        [] => None,
        [i] => {
            if !(4..=5).contains(&len) {
                return Err("a price/weight check digit (V) needs 4 or 5 value digits".into());
            }
            Some(i)
        }
        _ => return Err("at most one V".into()),
    };
    if check.is_some() && kind == MeasureKind::Count {
        return Err("GS1 defines the check digit (V) for price and weight only".into());
    }
    if let Some(b) = pat
        .iter()
        .find(|&&b| !matches!(b, b'F' | b'I' | b'P' | b'W' | b'N' | b'V' | b'X' | b'C'))
    {
        return Err(format!("unknown layout character {:?}", char::from(*b)));
    }
    if l.decimals.is_some() && kind != MeasureKind::Price {
        return Err("decimals applies to prices only".into());
    }
    let decimals = l.decimals.unwrap_or(currency.exponent());
    if decimals > 6 {
        return Err("decimals: at most 6".into());
    }
    let mut keep = [false; 13];
    for (i, k) in keep.iter_mut().enumerate() {
        *k = matches!(pat[i], b'F' | b'I');
    }
    Ok(Compiled {
        prefixes: l.prefixes.clone(),
        kind,
        value: start..start + len,
        check,
        keep,
        decimals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits<const N: usize>(s: &str) -> [u8; N] {
        let mut out = [0; N];
        for (o, b) in out.iter_mut().zip(s.bytes()) {
            *o = b - b'0';
        }
        out
    }

    fn ean(s: &str) -> [u8; 13] {
        s.as_bytes().try_into().unwrap()
    }

    #[test]
    fn published_price_and_weight_check_digits() {
        // shared/vectors/barcodes.tsv
        assert_eq!(check_digit_4(digits("2875")), 9);
        assert_eq!(check_digit_5(digits("14685")), 6);
        assert_eq!(check_digit_4(digits("1234")), 9);
    }

    #[test]
    fn check_digits_catch_every_single_digit_change() {
        // 7.9 promises single-digit errors are caught for 4 digits; for 5, each changed digit.
        for v in 0..10_000u32 {
            let d = digits::<4>(&format!("{v:04}"));
            let c = check_digit_4(d);
            for pos in 0..4 {
                for delta in 1..10 {
                    let mut e = d;
                    e[pos] = (e[pos] + delta) % 10;
                    assert_ne!(check_digit_4(e), c, "{v:04} pos {pos} +{delta}");
                }
            }
        }
        for v in (0..100_000u32).step_by(7) {
            let d = digits::<5>(&format!("{v:05}"));
            let c = check_digit_5(d);
            for pos in 0..5 {
                for delta in 1..10 {
                    let mut e = d;
                    e[pos] = (e[pos] + delta) % 10;
                    assert_ne!(check_digit_5(e), c, "{v:05} pos {pos} +{delta}");
                }
            }
        }
    }

    #[test]
    fn default_layouts_decode_the_uk_vectors() {
        let l = Layouts::default_layouts().unwrap();
        assert_eq!(l.currency().code(), "GBP");
        let v = l.decode(&ean("2011122912346")).unwrap().unwrap();
        assert_eq!(v.prefix, "20");
        assert_eq!(
            v.measure,
            Measure::Price(Money::new(1234, Currency::parse("GBP").unwrap()))
        );
        assert_eq!(v.item.as_str(), "02011122000005");
        assert_eq!(
            l.decode(&ean("2011122812349")).unwrap().unwrap_err(),
            ScanError::PriceCheckDigit {
                expected: 9,
                found: 8
            }
        );
        // 04/40-49 and ordinary GTINs have no layout.
        assert!(l.decode(&ean("4012345678901")).is_none());
        assert!(l.decode(&ean("9501101531000")).is_none());
    }

    fn layouts(toml: &str) -> Result<Layouts, String> {
        Layouts::from_toml(toml)
    }

    #[test]
    fn weight_count_and_five_digit_layouts_from_configuration() {
        let l = layouts(
            r#"
            country = "test"
            currency = "EUR"
            [[layout]]
            prefixes = ["23"]
            layout = "FFIIIIVWWWWWC"
            [[layout]]
            prefixes = ["24"]
            layout = "FFIIIIINNNNNC"
            [[layout]]
            prefixes = ["25"]
            layout = "FFIIIIXPPPPPC"
            decimals = 3
            [[layout]]
            prefixes = ["02"]
            layout = "FFIIIIIPPPPPC"
            "#,
        )
        .unwrap();
        // weight 14685 g with its check digit 6
        let v = l.decode(&ean("2312346146853")).unwrap().unwrap();
        assert_eq!(v.measure, Measure::WeightGrams(14685));
        assert_eq!(v.item.as_str(), "02312340000007");
        assert_eq!(
            l.decode(&ean("2312345146854")).unwrap().unwrap_err(),
            ScanError::PriceCheckDigit {
                expected: 6,
                found: 5
            }
        );
        let v = l.decode(&ean("2412345000061")).unwrap().unwrap();
        assert_eq!(v.measure, Measure::Count(6));
        // 3 decimals into a 2-decimal currency: exact only.
        let v = l.decode(&ean("2512349012302")).unwrap().unwrap();
        assert_eq!(
            v.measure,
            Measure::Price(Money::new(123, Currency::parse("EUR").unwrap()))
        );
        assert!(matches!(
            l.decode(&ean("2512349012340")).unwrap(),
            Err(ScanError::PriceDecimals { .. })
        ));
        let v = l.decode(&ean("0212345012345")).unwrap().unwrap();
        assert_eq!(
            v.measure,
            Measure::Price(Money::new(1234, Currency::parse("EUR").unwrap()))
        );
        assert!(l.decode(&ean("2612345012341")).is_none());
    }

    #[test]
    fn bad_layouts_are_refused_with_the_reason() {
        let bad = |layout: &str, extra: &str| {
            layouts(&format!(
                "currency = \"EUR\"\n[[layout]]\nprefixes = [\"20\"]\nlayout = \"{layout}\"\n{extra}"
            ))
            .unwrap_err()
        };
        assert!(bad("FFIIIIIVPPPP", "").contains("13 characters"));
        assert!(bad("FFIIIIIVPPPPX", "").contains("last character"));
        assert!(bad("FFIIIIIIIIIIC", "").contains("exactly one"));
        assert!(bad("FFIIIIWVPPPPC", "").contains("exactly one"));
        assert!(bad("FFIIIPPVPPPPC", "").contains("contiguous"));
        assert!(bad("FFIIIVPPPPPPC", "").contains("4 or 5"));
        assert!(bad("FFIIIIVNNNNNC", "").contains("price and weight"));
        assert!(bad("FFIIIIIQPPPPC", "").contains("unknown"));
        assert!(bad("FIIIIIIVPPPPC", "").contains("F"));
        assert!(bad("FFIIIIIVWWWWC", "decimals = 2").contains("prices only"));
        assert!(layouts("currency = \"XXX\"").is_err());
        assert!(
            layouts(
                "currency = \"EUR\"\n[[layout]]\nprefixes = [\"45\"]\nlayout = \"FFIIIIIVPPPPC\""
            )
            .unwrap_err()
            .contains("02 or 20-29")
        );
        let overlap = "currency = \"EUR\"\n[[layout]]\nprefixes = [\"20\"]\nlayout = \"FFIIIIIVPPPPC\"\n[[layout]]\nprefixes = [\"201\"]\nlayout = \"FFFIIIIVPPPPC\"";
        assert!(layouts(overlap).unwrap_err().contains("overlaps"));
        assert!(layouts("currency = \"EUR\"\nsurprise = 1").is_err());
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(s in "(02|2[0-9])[0-9]{11}") {
            let l = Layouts::default_layouts().unwrap();
            let e: [u8; 13] = s.as_bytes().try_into().unwrap();
            let _ = l.decode(&e);
        }
    }
}
