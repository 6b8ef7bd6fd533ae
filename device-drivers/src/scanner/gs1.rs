//! GS1 element strings (GS1 General Specifications section 3 and 7.8): the AI dictionary a
//! store meets, the predefined-length table, FNC1 separators, dates and decimal positions.
//!
//! Pure and bounded: every value is checked against its AI's format and length, nothing
//! allocates more than the input's size.
use serde::Serialize;
use time::{Date, Month};

use super::ScanError;

/// The ASCII group separator a scanner sends for FNC1.
pub const GS: u8 = 0x1D;

/// How an AI's value is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// Digits, between `min` and `max` of them.
    Numeric { min: u8, max: u8 },
    /// Digits with a GS1 mod-10 check digit in the last place (GTIN, SSCC, GLN).
    Keyed { len: u8 },
    /// GS1 AI encodable character set 82, 1 to `max` characters.
    Alnum { max: u8 },
    /// YYMMDD; day 00 means the last day of the month.
    Date,
}

#[derive(Clone, Copy, Debug)]
struct AiDef {
    /// The AI, or its first three digits when `decimal` (the fourth digit is the decimal count).
    ai: &'static str,
    title: &'static str,
    format: Format,
    /// A four-digit AI whose last digit says where the decimal point is (310n, 392n).
    decimal: bool,
}

const fn n(ai: &'static str, title: &'static str, min: u8, max: u8) -> AiDef {
    AiDef {
        ai,
        title,
        format: Format::Numeric { min, max },
        decimal: false,
    }
}
const fn key(ai: &'static str, title: &'static str, len: u8) -> AiDef {
    AiDef {
        ai,
        title,
        format: Format::Keyed { len },
        decimal: false,
    }
}
const fn x(ai: &'static str, title: &'static str, max: u8) -> AiDef {
    AiDef {
        ai,
        title,
        format: Format::Alnum { max },
        decimal: false,
    }
}
const fn date(ai: &'static str, title: &'static str) -> AiDef {
    AiDef {
        ai,
        title,
        format: Format::Date,
        decimal: false,
    }
}
const fn dec(ai: &'static str, title: &'static str, min: u8, max: u8) -> AiDef {
    AiDef {
        ai,
        title,
        format: Format::Numeric { min, max },
        decimal: true,
    }
}

/// The AIs we know (GS1 General Specifications 3.2). An AI not here is refused: a store should
/// hear about it rather than have its digits guessed.
const AIS: &[AiDef] = &[
    key("00", "SSCC", 18),
    key("01", "GTIN", 14),
    key("02", "CONTENT", 14),
    x("10", "BATCH/LOT", 20),
    date("11", "PROD DATE"),
    date("12", "DUE DATE"),
    date("13", "PACK DATE"),
    date("15", "BEST BEFORE or BEST BY"),
    date("16", "SELL BY"),
    date("17", "USE BY or EXPIRY"),
    n("20", "VARIANT", 2, 2),
    x("21", "SERIAL", 20),
    x("22", "CPV", 20),
    x("235", "TPX", 28),
    x("240", "ADDITIONAL ID", 30),
    x("241", "CUST. PART No.", 30),
    n("242", "MTO VARIANT", 1, 6),
    x("243", "PCN", 20),
    x("250", "SECONDARY SERIAL", 30),
    x("251", "REF. TO SOURCE", 30),
    x("253", "GDTI", 30),
    x("254", "GLN EXTENSION COMPONENT", 20),
    n("255", "GCN", 13, 25),
    n("30", "VAR. COUNT", 1, 8),
    dec("310", "NET WEIGHT (kg)", 6, 6),
    dec("311", "LENGTH (m)", 6, 6),
    dec("312", "WIDTH (m)", 6, 6),
    dec("313", "HEIGHT (m)", 6, 6),
    dec("314", "AREA (m²)", 6, 6),
    dec("315", "NET VOLUME (l)", 6, 6),
    dec("316", "NET VOLUME (m³)", 6, 6),
    dec("320", "NET WEIGHT (lb)", 6, 6),
    dec("330", "GROSS WEIGHT (kg)", 6, 6),
    dec("331", "LENGTH (m), log", 6, 6),
    dec("332", "WIDTH (m), log", 6, 6),
    dec("333", "HEIGHT (m), log", 6, 6),
    dec("334", "AREA (m²), log", 6, 6),
    dec("335", "VOLUME (l), log", 6, 6),
    dec("336", "VOLUME (m³), log", 6, 6),
    dec("337", "KG PER m²", 6, 6),
    dec("340", "GROSS WEIGHT (lb)", 6, 6),
    dec("356", "NET WEIGHT (t oz)", 6, 6),
    dec("357", "NET VOLUME (oz)", 6, 6),
    n("37", "COUNT", 1, 8),
    dec("390", "AMOUNT", 1, 15),
    dec("391", "AMOUNT (with ISO currency)", 4, 18),
    dec("392", "PRICE", 1, 15),
    dec("393", "PRICE (with ISO currency)", 4, 18),
    dec("394", "PRCNT OFF", 4, 4),
    dec("395", "PRICE/UoM", 6, 6),
    x("400", "ORDER NUMBER", 30),
    x("401", "GINC", 30),
    n("402", "GSIN", 17, 17),
    x("403", "ROUTE", 30),
    key("410", "SHIP TO LOC", 13),
    key("411", "BILL TO", 13),
    key("412", "PURCHASE FROM", 13),
    key("413", "SHIP FOR LOC", 13),
    key("414", "LOC No.", 13),
    key("415", "PAY TO", 13),
    key("416", "PROD/SERV LOC", 13),
    key("417", "PARTY", 13),
    x("420", "SHIP TO POST", 20),
    x("421", "SHIP TO POST (with ISO country)", 12),
    n("422", "ORIGIN", 3, 3),
    n("423", "COUNTRY - INITIAL PROCESS", 3, 15),
    n("424", "COUNTRY - PROCESS", 3, 3),
    n("425", "COUNTRY - DISASSEMBLY", 3, 15),
    n("426", "COUNTRY - FULL PROCESS", 3, 3),
    x("427", "ORIGIN SUBDIVISION", 3),
    n("4321", "DANGEROUS GOODS", 1, 1),
    n("4322", "AUTH LEAVE", 1, 1),
    n("4323", "SIG REQUIRED", 1, 1),
    n("4324", "NOT BEF DEL DT", 10, 10),
    n("4325", "NOT AFT DEL DT", 10, 10),
    date("4326", "REL DATE"),
    n("7001", "NSN", 13, 13),
    x("7002", "MEAT CUT", 30),
    n("7003", "EXPIRY TIME", 10, 10),
    n("7004", "ACTIVE POTENCY", 1, 4),
    date("7006", "FIRST FREEZE DATE"),
    n("7007", "HARVEST DATE", 6, 12),
    x("7008", "AQUATIC SPECIES", 3),
    x("7009", "FISHING GEAR TYPE", 10),
    x("7010", "PROD METHOD", 2),
    x("7020", "REFURB LOT", 20),
    x("7021", "FUNC STAT", 20),
    x("7022", "REV STAT", 20),
    x("7023", "GIAI - ASSEMBLY", 30),
    x("710", "NHRN PZN", 20),
    x("711", "NHRN CIP", 20),
    x("712", "NHRN CN", 20),
    x("713", "NHRN DRN", 20),
    x("714", "NHRN AIM", 20),
    x("715", "NHRN NDC", 20),
    x("716", "NHRN AIC", 20),
    n("7011", "TEST BY DATE", 6, 10),
    x("7040", "UIC+EXT", 4),
    x("7240", "PROTOCOL", 20),
    n("8001", "DIMENSIONS", 14, 14),
    x("8002", "CMT No.", 20),
    x("8003", "GRAI", 30),
    x("8004", "GIAI", 30),
    n("8005", "PRICE PER UNIT", 6, 6),
    n("8006", "ITIP", 18, 18),
    x("8007", "IBAN", 34),
    n("8008", "PROD TIME", 8, 12),
    x("8009", "OPTSEN", 50),
    x("8010", "CPID", 30),
    n("8011", "CPID SERIAL", 1, 12),
    x("8012", "VERSION", 20),
    x("8013", "GMN", 25),
    n("8017", "GSRN - PROVIDER", 18, 18),
    n("8018", "GSRN - RECIPIENT", 18, 18),
    n("8019", "SRIN", 1, 10),
    x("8020", "REF No.", 25),
    n("8026", "ITIP CONTENT", 18, 18),
    x("8110", "COUPON (North America)", 70),
    n("8111", "POINTS", 4, 4),
    x("8112", "PAPERLESS COUPON (North America)", 70),
    x("8030", "DIGSIG", 90),
    x("8200", "PRODUCT URL", 70),
    x("90", "INTERNAL", 30),
    x("91", "INTERNAL", 90),
    x("92", "INTERNAL", 90),
    x("93", "INTERNAL", 90),
    x("94", "INTERNAL", 90),
    x("95", "INTERNAL", 90),
    x("96", "INTERNAL", 90),
    x("97", "INTERNAL", 90),
    x("98", "INTERNAL", 90),
    x("99", "INTERNAL", 90),
];

/// Element strings whose length is predefined by their first two digits (GS1 General
/// Specifications figure 7.8.5-2): AI plus value, in characters. These need no separator after
/// them. (03, 04, 18, 19 are reserved but keep their place in the table.)
const PREDEFINED: &[(&str, usize)] = &[
    ("00", 20),
    ("01", 16),
    ("02", 16),
    ("03", 16),
    ("04", 18),
    ("11", 8),
    ("12", 8),
    ("13", 8),
    ("14", 8),
    ("15", 8),
    ("16", 8),
    ("17", 8),
    ("18", 8),
    ("19", 8),
    ("20", 4),
    ("31", 10),
    ("32", 10),
    ("33", 10),
    ("34", 10),
    ("35", 10),
    ("36", 10),
    ("41", 16),
];

/// The element string's total length (AI + value) when its first two digits predefine it.
pub fn predefined_length(ai: &str) -> Option<usize> {
    let head = ai.get(..2)?;
    PREDEFINED.iter().find(|(p, _)| *p == head).map(|(_, l)| *l)
}

/// One AI and its value, exactly as read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ElementString {
    pub ai: String,
    pub title: &'static str,
    pub value: String,
}

impl ElementString {
    /// Decimal places of a 310n/392n-style AI (its fourth digit), if it is one.
    pub fn decimals(&self) -> Option<u8> {
        let def = lookup(self.ai.as_bytes())?.0;
        if def.decimal {
            self.ai.as_bytes().get(3).map(|d| d - b'0')
        } else {
            None
        }
    }
}

/// Finds the AI at the start of `s`: its definition and length in digits.
fn lookup(s: &[u8]) -> Option<(&'static AiDef, usize)> {
    for len in 2..=4 {
        let head = s.get(..len)?;
        if !head.iter().all(u8::is_ascii_digit) {
            return None;
        }
        for def in AIS {
            if def.decimal {
                if len == 4 && def.ai.as_bytes() == &head[..3] {
                    return Some((def, 4));
                }
            } else if def.ai.as_bytes() == head {
                return Some((def, len));
            }
        }
    }
    None
}

/// GS1 AI encodable character set 82 (General Specifications figure 7.11-1).
pub fn is_cset82(b: u8) -> bool {
    matches!(b,
        b'!' | b'"' | b'%' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'-' | b'.'
        | b'/' | b'0'..=b'9' | b':' | b';' | b'<' | b'=' | b'>' | b'?' | b'A'..=b'Z' | b'_'
        | b'a'..=b'z')
}

fn ai_text(s: &[u8]) -> String {
    String::from_utf8_lossy(s).into_owned()
}

/// Parses an element string that follows a GS1 symbology identifier (the leading FNC1 is
/// implied by the identifier). `separator` is the byte a scanner sends instead of GS, if it is
/// configured to substitute one; GS itself is always accepted.
pub fn parse_element_string(
    data: &[u8],
    separator: Option<u8>,
) -> Result<Vec<ElementString>, ScanError> {
    let is_sep = |b: u8| b == GS || Some(b) == separator;
    let mut out: Vec<ElementString> = Vec::new();
    let mut i = 0;
    // Some scanners send the leading FNC1 as a GS too.
    while i < data.len() && is_sep(data[i]) {
        i += 1;
    }
    if i >= data.len() {
        return Err(ScanError::Empty);
    }
    while i < data.len() {
        let rest = &data[i..];
        let Some((def, ai_len)) = lookup(rest) else {
            let shown = &rest[..rest.len().min(4)];
            return Err(ScanError::UnknownAi {
                at: i,
                found: ai_text(shown),
            });
        };
        let ai = ai_text(&rest[..ai_len]);
        let value_start = i + ai_len;
        let (value, next) = if let Some(total) = predefined_length(&ai) {
            let end = i + total;
            if end > data.len() {
                return Err(ScanError::AiTruncated {
                    ai,
                    need: total - ai_len,
                    got: data.len() - value_start,
                });
            }
            let v = &data[value_start..end];
            if let Some(p) = v.iter().position(|&b| is_sep(b)) {
                return Err(ScanError::AiTruncated {
                    ai,
                    need: total - ai_len,
                    got: p,
                });
            }
            // A separator after a predefined-length field is allowed, not needed.
            let next = if data.get(end).is_some_and(|&b| is_sep(b)) {
                end + 1
            } else {
                end
            };
            (v, next)
        } else {
            let end = data[value_start..]
                .iter()
                .position(|&b| is_sep(b))
                .map_or(data.len(), |p| value_start + p);
            (&data[value_start..end], (end + 1).min(data.len()))
        };
        check_value(def, &ai, value)?;
        let value = ai_text(value);
        if let Some(prev) = out.iter().find(|e| e.ai == ai) {
            if prev.value != value {
                return Err(ScanError::DuplicateAi { ai });
            }
        } else {
            out.push(ElementString {
                ai,
                title: def.title,
                value,
            });
        }
        i = next;
    }
    Ok(out)
}

fn check_value(def: &AiDef, ai: &str, v: &[u8]) -> Result<(), ScanError> {
    if v.is_empty() {
        return Err(ScanError::AiEmpty { ai: ai.into() });
    }
    let digits = || {
        if v.iter().all(u8::is_ascii_digit) {
            Ok(())
        } else {
            Err(ScanError::AiNotDigits { ai: ai.into() })
        }
    };
    let length = |min: usize, max: usize| {
        if v.len() > max {
            Err(ScanError::AiTooLong {
                ai: ai.into(),
                max,
                got: v.len(),
            })
        } else if v.len() < min {
            Err(ScanError::AiTruncated {
                ai: ai.into(),
                need: min,
                got: v.len(),
            })
        } else {
            Ok(())
        }
    };
    match def.format {
        Format::Numeric { min, max } => {
            length(usize::from(min), usize::from(max))?;
            digits()
        }
        Format::Keyed { len } => {
            length(usize::from(len), usize::from(len))?;
            digits()?;
            let (data, check) = v.split_at(v.len() - 1);
            let expected = aisle_protocol::gtin::gs1_check_digit(data);
            let found = check[0] - b'0';
            if expected == found {
                Ok(())
            } else {
                Err(ScanError::CheckDigit { expected, found })
            }
        }
        Format::Alnum { max } => {
            length(1, usize::from(max))?;
            if v.iter().all(|&b| is_cset82(b)) {
                Ok(())
            } else {
                Err(ScanError::AiBadCharacter { ai: ai.into() })
            }
        }
        Format::Date => {
            length(6, 6)?;
            digits()?;
            // Validity needs the reference year; the caller converts. Refuse what no year fixes.
            let mm = (v[2] - b'0') * 10 + (v[3] - b'0');
            let dd = (v[4] - b'0') * 10 + (v[5] - b'0');
            if !(1..=12).contains(&mm) || dd > 31 {
                return Err(ScanError::BadDate {
                    ai: ai.into(),
                    value: ai_text(v),
                });
            }
            Ok(())
        }
    }
}

/// The full year for a two-digit GS1 year (General Specifications 7.12): within 49 years ahead
/// or 50 years back of `reference_year`.
pub fn full_year(yy: i32, reference_year: i32) -> i32 {
    let century = reference_year.div_euclid(100) * 100;
    let diff = yy - reference_year.rem_euclid(100);
    if diff >= 51 {
        century - 100 + yy
    } else if diff <= -50 {
        century + 100 + yy
    } else {
        century + yy
    }
}

/// A YYMMDD date; day 00 is the last day of the month.
pub fn parse_date(ai: &str, value: &str, reference_year: i32) -> Result<Date, ScanError> {
    let bad = || ScanError::BadDate {
        ai: ai.into(),
        value: value.into(),
    };
    let v = value.as_bytes();
    if v.len() != 6 || !v.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let two = |i: usize| i32::from(v[i] - b'0') * 10 + i32::from(v[i + 1] - b'0');
    let year = full_year(two(0), reference_year);
    let month = u8::try_from(two(2))
        .ok()
        .and_then(|m| Month::try_from(m).ok())
        .ok_or_else(bad)?;
    let day = u8::try_from(two(4)).map_err(|_| bad())?;
    let day = if day == 0 {
        time::util::days_in_month(month, year)
    } else {
        day
    };
    Date::from_calendar_date(year, month, day).map_err(|_| bad())
}

/// A decimal-position value: `digits` with `decimals` places after the point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decimal {
    pub digits: u64,
    pub decimals: u8,
}

impl Decimal {
    /// The value scaled to `places` decimals, if exact (no digit is dropped).
    pub fn scaled(&self, places: u8) -> Option<u64> {
        if places >= self.decimals {
            self.digits
                .checked_mul(10u64.checked_pow(u32::from(places - self.decimals))?)
        } else {
            let div = 10u64.checked_pow(u32::from(self.decimals - places))?;
            self.digits.is_multiple_of(div).then_some(self.digits / div)
        }
    }

    /// The value scaled to `places` decimals, rounded half up.
    pub fn rounded(&self, places: u8) -> Option<u64> {
        if places >= self.decimals {
            self.scaled(places)
        } else {
            let div = 10u64.checked_pow(u32::from(self.decimals - places))?;
            Some(self.digits / div + u64::from(self.digits % div >= div.div_ceil(2)))
        }
    }
}

/// Reads a 310n/392n-style value. `skip` digits (an ISO code of 391n/393n) come first.
pub fn decimal_value(e: &ElementString, skip: usize) -> Option<Decimal> {
    let decimals = e.decimals()?;
    let digits = e.value.get(skip..)?;
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    Some(Decimal {
        digits: digits.parse().ok()?,
        decimals,
    })
}

/// Parses the human-readable form technicians type: `(01)09501101531000(17)260100`.
/// Every AI is bracketed, so separators are implied; the result is the element string's
/// bytes with GS after every variable-length value that is not last.
pub fn from_bracketed(text: &str) -> Result<Vec<u8>, ScanError> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    let mut pending_sep = false;
    while !rest.is_empty() {
        let Some(r) = rest.strip_prefix('(') else {
            return Err(ScanError::Bracketed(
                "expected '(' before every AI".to_string(),
            ));
        };
        let close = r
            .find(')')
            .ok_or_else(|| ScanError::Bracketed("an AI without ')'".to_string()))?;
        let ai = &r[..close];
        if !(2..=4).contains(&ai.len()) || !ai.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ScanError::Bracketed(format!("({ai}) is not an AI")));
        }
        let after = &r[close + 1..];
        let end = after.find('(').unwrap_or(after.len());
        let value = &after[..end];
        if pending_sep {
            out.push(GS);
        }
        out.extend_from_slice(ai.as_bytes());
        out.extend_from_slice(value.as_bytes());
        pending_sep = predefined_length(ai).is_none();
        rest = &after[end..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[u8]) -> Result<Vec<(String, String)>, ScanError> {
        parse_element_string(s, Some(b'|'))
            .map(|v| v.into_iter().map(|e| (e.ai, e.value)).collect())
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, v)| (a.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn predefined_lengths_need_no_separator() {
        assert_eq!(
            parse(b"0109501101531000172601311012345").unwrap(),
            pairs(&[("01", "09501101531000"), ("17", "260131"), ("10", "12345")])
        );
        // A separator after a predefined field is tolerated.
        assert_eq!(
            parse(b"01095011015310001726013110AB\x1d21X7").unwrap(),
            pairs(&[
                ("01", "09501101531000"),
                ("17", "260131"),
                ("10", "AB"),
                ("21", "X7")
            ])
        );
    }

    #[test]
    fn variable_length_fields_end_at_gs_or_the_substitute() {
        assert_eq!(
            parse(b"10ABC\x1d3103001250").unwrap(),
            pairs(&[("10", "ABC"), ("3103", "001250")])
        );
        assert_eq!(
            parse(b"10ABC|3922199").unwrap(),
            pairs(&[("10", "ABC"), ("3922", "199")])
        );
        // A leading GS (FNC1 sent as GS) is skipped.
        assert_eq!(
            parse(b"\x1d0109501101531000").unwrap(),
            pairs(&[("01", "09501101531000")])
        );
    }

    #[test]
    fn lost_separator_shows_as_a_too_long_or_wrong_field() {
        // 392n price then 10 batch without GS: the price swallows the batch, and the digits
        // limit or the character set catches it.
        let e = parse(b"0109501101531000392212345678901234567").unwrap_err();
        assert!(matches!(e, ScanError::AiTooLong { ref ai, max: 15, got: 17 } if ai == "3922"));
        let e = parse(b"392212310ABC").unwrap_err();
        assert!(matches!(e, ScanError::AiNotDigits { ref ai } if ai == "3922"));
        let long = format!("10{}", "A".repeat(21));
        assert!(matches!(
            parse(long.as_bytes()).unwrap_err(),
            ScanError::AiTooLong { max: 20, .. }
        ));
    }

    #[test]
    fn refusals() {
        assert!(matches!(
            parse(b"0109501101531001").unwrap_err(),
            ScanError::CheckDigit {
                expected: 0,
                found: 1
            }
        ));
        assert!(matches!(
            parse(b"01095011015310").unwrap_err(),
            ScanError::AiTruncated {
                need: 14,
                got: 12,
                ..
            }
        ));
        assert!(matches!(
            parse(b"010950110\x1d15310001").unwrap_err(),
            ScanError::AiTruncated { .. }
        ));
        assert!(matches!(
            parse(b"2312345").unwrap_err(),
            ScanError::UnknownAi { at: 0, .. }
        ));
        assert!(matches!(
            parse(b"171313001").unwrap_err(),
            ScanError::BadDate { .. }
        ));
        assert!(matches!(
            parse(b"10A B").unwrap_err(),
            ScanError::AiBadCharacter { .. }
        ));
        assert!(matches!(
            parse(b"10\x1d21X").unwrap_err(),
            ScanError::AiEmpty { .. }
        ));
        assert!(matches!(
            parse(b"10A\x1d10B").unwrap_err(),
            ScanError::DuplicateAi { .. }
        ));
        assert_eq!(parse(b"10A\x1d10A").unwrap(), pairs(&[("10", "A")]));
        assert!(matches!(parse(b"\x1d\x1d").unwrap_err(), ScanError::Empty));
    }

    #[test]
    fn dates_with_day_00_and_the_century_window() {
        let d = |v: &str, y| parse_date("17", v, y).map(|d| d.to_string());
        assert_eq!(d("260200", 2026).unwrap(), "2026-02-28");
        assert_eq!(d("240200", 2026).unwrap(), "2024-02-29");
        assert_eq!(d("261200", 2026).unwrap(), "2026-12-31");
        assert_eq!(d("260430", 2026).unwrap(), "2026-04-30");
        assert!(d("260431", 2026).is_err());
        assert!(d("260001", 2026).is_err());
        assert!(d("261301", 2026).is_err());
        // 7.12: up to 49 years ahead, 50 back.
        assert_eq!(d("750101", 2026).unwrap(), "2075-01-01");
        assert_eq!(d("770101", 2026).unwrap(), "1977-01-01");
        assert_eq!(d("010101", 2099).unwrap(), "2101-01-01");
        assert_eq!(full_year(49, 2000), 2049);
        assert_eq!(full_year(51, 2000), 1951);
    }

    #[test]
    fn decimal_positions() {
        let es = parse_element_string(b"3103001250\x1d39220399\x1d3932978123", None).unwrap();
        let w = decimal_value(&es[0], 0).unwrap();
        assert_eq!(
            w,
            Decimal {
                digits: 1250,
                decimals: 3
            }
        );
        assert_eq!(w.scaled(3), Some(1250));
        let p = decimal_value(&es[1], 0).unwrap();
        assert_eq!(p.scaled(2), Some(399));
        assert_eq!(p.scaled(0), None);
        assert_eq!(p.rounded(0), Some(4));
        let iso = decimal_value(&es[2], 3).unwrap();
        assert_eq!(
            iso,
            Decimal {
                digits: 123,
                decimals: 2
            }
        );
        assert_eq!(
            Decimal {
                digits: 12345,
                decimals: 4
            }
            .rounded(3),
            Some(1235)
        );
        assert_eq!(
            Decimal {
                digits: 12344,
                decimals: 4
            }
            .rounded(3),
            Some(1234)
        );
        assert_eq!(
            Decimal {
                digits: 5,
                decimals: 0
            }
            .scaled(3),
            Some(5000)
        );
    }

    #[test]
    fn bracketed_form() {
        let b = from_bracketed("(01)09501101531000(10)AB(17)260131(21)7").unwrap();
        assert_eq!(
            b,
            b"0109501101531000"
                .iter()
                .chain(b"10AB\x1d17260131".iter())
                .chain(b"217")
                .copied()
                .collect::<Vec<u8>>()
        );
        assert!(from_bracketed("01)x").is_err());
        assert!(from_bracketed("(01x)1").is_err());
        assert!(from_bracketed("(01").is_err());
    }

    #[test]
    fn every_ai_in_the_table_resolves_to_itself() {
        for def in AIS {
            let ai = if def.decimal {
                format!("{}3", def.ai)
            } else {
                def.ai.to_string()
            };
            let (found, len) = lookup(ai.as_bytes()).unwrap();
            assert_eq!(len, ai.len(), "{ai}");
            assert_eq!(found.ai, def.ai);
            if let Some(total) = predefined_length(&ai) {
                let value_len = total - ai.len();
                match def.format {
                    Format::Numeric { min, max } => {
                        assert_eq!(
                            (usize::from(min), usize::from(max)),
                            (value_len, value_len),
                            "{ai}"
                        )
                    }
                    Format::Keyed { len } => assert_eq!(usize::from(len), value_len, "{ai}"),
                    Format::Date => assert_eq!(value_len, 6, "{ai}"),
                    Format::Alnum { .. } => panic!("{ai}: predefined but alphanumeric"),
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = parse_element_string(&data, Some(b'~'));
        }

        #[test]
        fn never_panics_on_digits(data in "[0-9\\x1d]{0,80}") {
            let _ = parse_element_string(data.as_bytes(), None);
        }

        #[test]
        fn bracketed_never_panics(s in "\\PC{0,60}") {
            let _ = from_bracketed(&s);
        }
    }
}
