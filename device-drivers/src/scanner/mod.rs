//! Barcode scanners: what a scanned frame means. Pure.
//!
//! ```text
//! serial bytes ──ScanFramer──▶ frame ──parse_scan──▶ Scan { gtin, item, price, weight, count,
//!   (CR, CR LF, or a pause)      │ AIM id?             expiry, batch, ais, text }
//!                                ├─ ]E0 ]E4 ]I1 (or bare digits): GTIN-8/12/13/14 + check digit
//!                                │    └─ 02/20-29: rcn::Layouts (configuration) → price/weight/count
//!                                ├─ ]C1 ]d2 ]Q3 ]e0 (or GS inside, or "(01)…"): gs1 element string
//!                                └─ anything else: text (a member QR, a Code 128 ticket)
//! ```
//!
//! Every frame is bounded ([`ScanConfig::max_len`]); any bytes give a [`Scan`] or a
//! [`ScanError`] that says in plain words what was wrong, never a panic.
pub mod framer;
pub mod gs1;
pub mod rcn;

use aisle_protocol::{Currency, Gtin, Money, ProtocolError};
use serde::{Serialize, Serializer};
use time::Date;

pub use framer::{Framed, ScanFramer, ScanSuffix};
pub use gs1::{ElementString, GS};
pub use rcn::{
    DEFAULT_LAYOUTS_TOML, Layouts, MAX_LAYOUTS_TOML, Measure, MeasureKind, RcnLayout, RcnLayouts,
    VariableMeasure,
};

/// Longest frame a scanner may send by default (a GS1 DataMatrix can carry more than 2 kB; a
/// shop's barcodes do not).
pub const DEFAULT_MAX_SCAN: usize = 1024;

/// The symbology, from the AIM identifier (ISO/IEC 15424) or guessed from bare digits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Symbology {
    /// `]E0`: EAN-13, or UPC-A as 13 digits with a leading 0.
    Ean13,
    /// `]E4`.
    Ean8,
    /// `]I0`/`]I1`: Interleaved 2 of 5 (ITF-14 when 14 digits).
    Itf,
    /// `]C0`.
    Code128,
    /// `]C1`.
    Gs1_128,
    /// `]d1`.
    DataMatrix,
    /// `]d2`.
    Gs1DataMatrix,
    /// `]Q1`.
    Qr,
    /// `]Q3`.
    Gs1Qr,
    /// `]e0`.
    Gs1DataBar,
    /// Another AIM identifier, kept as sent.
    Other(String),
    /// No AIM identifier: the digits' count (8, 12, 13, 14) or a GS said what it is.
    Unknown,
}

impl Symbology {
    /// The symbology of an AIM identifier (`]` + code + modifier).
    pub fn from_aim(id: &[u8]) -> Symbology {
        match id {
            b"]E0" => Symbology::Ean13,
            b"]E4" => Symbology::Ean8,
            b"]I0" | b"]I1" => Symbology::Itf,
            b"]C0" => Symbology::Code128,
            b"]C1" => Symbology::Gs1_128,
            b"]d1" => Symbology::DataMatrix,
            b"]d2" => Symbology::Gs1DataMatrix,
            b"]Q1" => Symbology::Qr,
            b"]Q3" => Symbology::Gs1Qr,
            b"]e0" => Symbology::Gs1DataBar,
            other => Symbology::Other(String::from_utf8_lossy(other).into_owned()),
        }
    }

    /// The AIM identifier a scanner sends for this symbology.
    pub fn aim(&self) -> Option<&str> {
        Some(match self {
            Symbology::Ean13 => "]E0",
            Symbology::Ean8 => "]E4",
            Symbology::Itf => "]I1",
            Symbology::Code128 => "]C0",
            Symbology::Gs1_128 => "]C1",
            Symbology::DataMatrix => "]d1",
            Symbology::Gs1DataMatrix => "]d2",
            Symbology::Qr => "]Q1",
            Symbology::Gs1Qr => "]Q3",
            Symbology::Gs1DataBar => "]e0",
            Symbology::Other(s) => s.as_str(),
            Symbology::Unknown => return None,
        })
    }

    /// Whether the data is a GS1 element string (leading FNC1 implied).
    pub fn is_gs1(&self) -> bool {
        matches!(
            self,
            Symbology::Gs1_128
                | Symbology::Gs1DataMatrix
                | Symbology::Gs1Qr
                | Symbology::Gs1DataBar
        )
    }
}

/// Who may use the number (GS1 General Specifications 1.4.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Circulation {
    /// A GTIN anyone may sell.
    Global,
    /// GS1 prefixes 020-029 and 200-299 (variable measure and national uses).
    Restricted,
    /// GS1 prefixes 040-049, and EAN-8 starting 0 or 2 (RCN-8): numbers a company gives itself.
    CompanyInternal,
}

/// What the lane needs from one scan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Scan {
    pub symbology: Symbology,
    /// The GTIN as scanned (EAN/UPC/ITF-14, or AI 01).
    pub gtin: Option<Gtin>,
    /// The key to price the item by: the GTIN, or for a variable-measure barcode the GTIN with
    /// its value digits zeroed.
    pub item: Option<Gtin>,
    pub circulation: Option<Circulation>,
    /// A variable-measure barcode decoded with the configured layout.
    pub variable: Option<VariableMeasure>,
    /// Price printed in the barcode (layout price or AI 392n/393n), in minor units.
    pub price: Option<Money>,
    /// Net weight in grams (layout weight, or AI 310n rounded half up to the gram).
    pub weight_g: Option<u64>,
    /// Count (layout count, or AI 30/37).
    pub count: Option<u32>,
    /// AI 17.
    #[serde(serialize_with = "opt_date")]
    pub expiry: Option<Date>,
    /// AI 15.
    #[serde(serialize_with = "opt_date")]
    pub best_before: Option<Date>,
    /// AI 10.
    pub batch: Option<String>,
    /// AI 21.
    pub serial: Option<String>,
    /// Every element string as read.
    pub ais: Vec<ElementString>,
    /// Data that is not a GTIN or element string (a member QR, a ticket), as UTF-8.
    pub text: Option<String>,
}

fn opt_date<S: Serializer>(d: &Option<Date>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format!(
            "{:04}-{:02}-{:02}",
            d.year(),
            u8::from(d.month()),
            d.day()
        )),
        None => s.serialize_none(),
    }
}

impl Scan {
    fn new(symbology: Symbology) -> Scan {
        Scan {
            symbology,
            gtin: None,
            item: None,
            circulation: None,
            variable: None,
            price: None,
            weight_g: None,
            count: None,
            expiry: None,
            best_before: None,
            batch: None,
            serial: None,
            ais: Vec::new(),
            text: None,
        }
    }
}

/// Why a scan means nothing, in words an attendant can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("empty scan")]
    Empty,
    #[error("scan of {len} bytes is longer than the {max} allowed")]
    TooLong { len: usize, max: usize },
    #[error("scan holds characters that are not digits")]
    NotDigits,
    #[error("{symbology} needs {expected} digits, got {got}")]
    WrongLength {
        symbology: &'static str,
        expected: &'static str,
        got: usize,
    },
    #[error("bad check digit: expected {expected}, found {found}")]
    CheckDigit { expected: u8, found: u8 },
    #[error("bad price/weight check digit: expected {expected}, found {found}")]
    PriceCheckDigit { expected: u8, found: u8 },
    #[error("unknown application identifier at position {at} ({found:?})")]
    UnknownAi { at: usize, found: String },
    #[error("AI ({ai}) needs {need} characters, got {got}")]
    AiTruncated { ai: String, need: usize, got: usize },
    #[error(
        "AI ({ai}) is {got} characters, at most {max} allowed: a GS separator may have been lost"
    )]
    AiTooLong { ai: String, max: usize, got: usize },
    #[error("AI ({ai}) must be digits (a GS separator may have been lost)")]
    AiNotDigits { ai: String },
    #[error("AI ({ai}) holds a character GS1 does not allow")]
    AiBadCharacter { ai: String },
    #[error("AI ({ai}) is empty")]
    AiEmpty { ai: String },
    #[error("AI ({ai}) appears twice with different values")]
    DuplicateAi { ai: String },
    #[error("AI ({ai}) date {value:?} is not a date (YYMMDD)")]
    BadDate { ai: String, value: String },
    #[error("price has more decimals than {currency} allows")]
    PriceDecimals { currency: String },
    #[error("price is in currency {numeric}, not the store's {currency}")]
    PriceCurrency { numeric: String, currency: String },
    #[error("value of AI ({ai}) too large")]
    ValueTooLarge { ai: String },
    #[error("{0}")]
    Bracketed(String),
    #[error("scan is not text (invalid UTF-8 or control characters)")]
    NotText,
}

/// How the scanner is set up and what the store's barcodes mean.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanConfig {
    /// The byte the scanner sends instead of GS (FNC1), if configured to; GS is accepted
    /// anyway. Must not be a character GS1 allows in data.
    pub separator: Option<u8>,
    /// Restricted-circulation layouts and the store's currency.
    pub layouts: Layouts,
    pub max_len: usize,
}

impl ScanConfig {
    pub fn new(layouts: Layouts) -> ScanConfig {
        ScanConfig {
            separator: None,
            layouts,
            max_len: DEFAULT_MAX_SCAN,
        }
    }

    /// Sets the substitute separator; refuses one GS1 allows in data (it would split values).
    pub fn with_separator(mut self, separator: u8) -> Result<ScanConfig, String> {
        if gs1::is_cset82(separator) || separator.is_ascii_digit() {
            return Err(format!(
                "separator {:?} can appear in GS1 data; use one of # $ @ [ \\ ] ^ ` {{ | }} ~",
                char::from(separator)
            ));
        }
        self.separator = Some(separator);
        Ok(self)
    }
}

fn gtin_error(e: ProtocolError, symbology: &'static str, len: usize) -> ScanError {
    match e {
        ProtocolError::GtinCheckDigit { expected, found } => {
            ScanError::CheckDigit { expected, found }
        }
        ProtocolError::GtinNotDigits => ScanError::NotDigits,
        _ => ScanError::WrongLength {
            symbology,
            expected: "8, 12, 13 or 14",
            got: len,
        },
    }
}

fn digits_gtin(
    data: &[u8],
    symbology: &'static str,
    lengths: &[usize],
    expected: &'static str,
) -> Result<Gtin, ScanError> {
    if !data.iter().all(u8::is_ascii_digit) {
        return Err(ScanError::NotDigits);
    }
    if !lengths.contains(&data.len()) {
        return Err(ScanError::WrongLength {
            symbology,
            expected,
            got: data.len(),
        });
    }
    let s = std::str::from_utf8(data).map_err(|_| ScanError::NotDigits)?;
    Gtin::parse(s).map_err(|e| gtin_error(e, symbology, data.len()))
}

/// Parses one frame as the scanner sent it (suffix already removed). `today` is the store's
/// UTC date: it places two-digit years (GS1 7.12).
pub fn parse_scan(frame: &[u8], config: &ScanConfig, today: Date) -> Result<Scan, ScanError> {
    if frame.len() > config.max_len {
        return Err(ScanError::TooLong {
            len: frame.len(),
            max: config.max_len,
        });
    }
    if frame.is_empty() {
        return Err(ScanError::Empty);
    }
    let (symbology, data) = if frame.len() >= 3 && frame[0] == b']' {
        (Symbology::from_aim(&frame[..3]), &frame[3..])
    } else {
        (Symbology::Unknown, frame)
    };
    if data.is_empty() {
        return Err(ScanError::Empty);
    }
    let is_sep = |b: &u8| *b == GS || Some(*b) == config.separator;
    match symbology {
        Symbology::Ean13 => {
            let g = digits_gtin(data, "EAN-13/UPC-A", &[12, 13], "13 (or 12 for UPC-A)")?;
            gtin_scan(symbology, g, false, config)
        }
        Symbology::Ean8 => {
            let g = digits_gtin(data, "EAN-8", &[8], "8")?;
            gtin_scan(symbology, g, true, config)
        }
        Symbology::Itf if data.len() == 14 => {
            let g = digits_gtin(data, "ITF-14", &[14], "14")?;
            gtin_scan(symbology, g, false, config)
        }
        s if s.is_gs1() => element_scan(s, data, config, today),
        Symbology::Unknown => {
            if data.iter().all(u8::is_ascii_digit) && matches!(data.len(), 8 | 12 | 13 | 14) {
                let g = digits_gtin(data, "GTIN", &[8, 12, 13, 14], "8, 12, 13 or 14")?;
                gtin_scan(symbology, g, data.len() == 8, config)
            } else if data.first() == Some(&b'(') {
                let text = std::str::from_utf8(data).map_err(|_| ScanError::NotText)?;
                let bytes = gs1::from_bracketed(text)?;
                element_scan(symbology, &bytes, config, today)
            } else if data.iter().any(is_sep) {
                element_scan(symbology, data, config, today)
            } else {
                text_scan(symbology, data)
            }
        }
        other => text_scan(other, data),
    }
}

fn text_scan(symbology: Symbology, data: &[u8]) -> Result<Scan, ScanError> {
    let text = std::str::from_utf8(data).map_err(|_| ScanError::NotText)?;
    if text.chars().any(|c| c.is_control() && c != '\u{1d}') {
        return Err(ScanError::NotText);
    }
    let mut scan = Scan::new(symbology);
    scan.text = Some(text.to_string());
    Ok(scan)
}

/// Circulation of a GTIN: RCN-8 for EAN-8 with 0 or 2; 020-029/200-299 restricted, 040-049
/// company-internal for 13 digits.
fn circulation(g: &Gtin, ean8: bool) -> Circulation {
    let b = g.as_bytes();
    if ean8 {
        return if matches!(b[6], b'0' | b'2') {
            Circulation::CompanyInternal
        } else {
            Circulation::Global
        };
    }
    if b[0] != b'0' {
        return Circulation::Global;
    }
    match (b[1], b[2]) {
        (b'0', b'2') | (b'2', _) => Circulation::Restricted,
        (b'0', b'4') => Circulation::CompanyInternal,
        _ => Circulation::Global,
    }
}

fn gtin_scan(
    symbology: Symbology,
    g: Gtin,
    ean8: bool,
    config: &ScanConfig,
) -> Result<Scan, ScanError> {
    let mut scan = Scan::new(symbology);
    let circ = circulation(&g, ean8);
    scan.gtin = Some(g);
    scan.item = Some(g);
    scan.circulation = Some(circ);
    if circ == Circulation::Restricted {
        let mut ean13 = [0u8; 13];
        ean13.copy_from_slice(&g.as_bytes()[1..]);
        if let Some(v) = config.layouts.decode(&ean13) {
            let v = v?;
            scan.item = Some(v.item);
            match v.measure {
                Measure::Price(m) => scan.price = Some(m),
                Measure::WeightGrams(w) => scan.weight_g = Some(w),
                Measure::Count(c) => scan.count = Some(c),
            }
            scan.variable = Some(v);
        }
    }
    Ok(scan)
}

/// ISO 4217 numeric codes of the currencies a 393n price may carry.
const ISO_NUMERIC: &[(&str, &str)] = &[
    ("036", "AUD"),
    ("124", "CAD"),
    ("156", "CNY"),
    ("203", "CZK"),
    ("208", "DKK"),
    ("348", "HUF"),
    ("392", "JPY"),
    ("578", "NOK"),
    ("752", "SEK"),
    ("756", "CHF"),
    ("826", "GBP"),
    ("840", "USD"),
    ("946", "RON"),
    ("978", "EUR"),
    ("985", "PLN"),
];

fn price_from(
    e: &ElementString,
    skip: usize,
    currency: Currency,
) -> Result<Option<Money>, ScanError> {
    let Some(d) = gs1::decimal_value(e, skip) else {
        return Ok(None);
    };
    let minor = d
        .scaled(currency.exponent())
        .ok_or_else(|| ScanError::PriceDecimals {
            currency: currency.code().to_string(),
        })?;
    let minor = i64::try_from(minor)
        .ok()
        .filter(|m| *m <= 1_000_000_000_000)
        .ok_or_else(|| ScanError::ValueTooLarge { ai: e.ai.clone() })?;
    Ok(Some(Money::new(minor, currency)))
}

fn element_scan(
    symbology: Symbology,
    data: &[u8],
    config: &ScanConfig,
    today: Date,
) -> Result<Scan, ScanError> {
    let ais = gs1::parse_element_string(data, config.separator)?;
    let mut scan = Scan::new(symbology);
    let currency = config.layouts.currency();
    for e in &ais {
        let head = e.ai.get(..3).unwrap_or(&e.ai);
        match e.ai.as_str() {
            "01" => {
                let g = Gtin::parse(&e.value).map_err(|err| gtin_error(err, "AI (01)", 14))?;
                scan.gtin = Some(g);
                scan.item = Some(g);
                scan.circulation = Some(circulation(&g, false));
            }
            "10" => scan.batch = Some(e.value.clone()),
            "21" => scan.serial = Some(e.value.clone()),
            "15" => scan.best_before = Some(gs1::parse_date(&e.ai, &e.value, today.year())?),
            "17" => scan.expiry = Some(gs1::parse_date(&e.ai, &e.value, today.year())?),
            "11" | "12" | "13" | "16" | "4326" | "7006" => {
                gs1::parse_date(&e.ai, &e.value, today.year())?;
            }
            "30" | "37" => {
                let c = e
                    .value
                    .parse::<u32>()
                    .map_err(|_| ScanError::ValueTooLarge { ai: e.ai.clone() })?;
                scan.count = Some(c);
            }
            _ if head == "310" => {
                let d = gs1::decimal_value(e, 0)
                    .ok_or_else(|| ScanError::ValueTooLarge { ai: e.ai.clone() })?;
                scan.weight_g = d.rounded(3);
            }
            _ if head == "392" => scan.price = price_from(e, 0, currency)?,
            _ if head == "393" => {
                let numeric = e.value.get(..3).unwrap_or("");
                let code = ISO_NUMERIC
                    .iter()
                    .find(|(n, _)| *n == numeric)
                    .map(|(_, c)| *c);
                if code != Some(currency.code()) {
                    return Err(ScanError::PriceCurrency {
                        numeric: numeric.to_string(),
                        currency: currency.code().to_string(),
                    });
                }
                scan.price = price_from(e, 3, currency)?;
            }
            _ => {}
        }
    }
    scan.ais = ais;
    Ok(scan)
}

/// Turns what a technician types into scanner bytes: `\x1d`, `<GS>` and `{GS}` become GS,
/// `\\` a backslash. Other text is kept.
pub fn unescape(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        let lower = |n: usize| rest.get(..n).map(<[u8]>::to_ascii_lowercase);
        let head = lower(4);
        if matches!(head.as_deref(), Some(b"\\x1d" | b"<gs>" | b"{gs}")) {
            out.push(GS);
            i += 4;
        } else if rest.starts_with(b"\\\\") {
            out.push(b'\\');
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// What a technician typed, parsed as a scan: `\x1d`, `<GS>` or `{GS}` for GS, or the
/// bracketed form `(01)...(10)...`. Layouts from `layouts_toml` (the embedded example when
/// `None`); `separator` is the scanner's substitute for GS, if any.
pub fn parse_typed(
    data: &str,
    layouts_toml: Option<&str>,
    separator: Option<char>,
    today: Date,
) -> Result<Scan, TypedError> {
    let layouts = match layouts_toml {
        Some(t) => Layouts::from_toml(t),
        None => Layouts::default_layouts(),
    }
    .map_err(TypedError::Layouts)?;
    let mut config = ScanConfig::new(layouts);
    if let Some(c) = separator {
        let b = u8::try_from(u32::from(c))
            .ok()
            .filter(u8::is_ascii)
            .ok_or_else(|| TypedError::Separator(format!("{c:?} is not ASCII")))?;
        config = config.with_separator(b).map_err(TypedError::Separator)?;
    }
    Ok(parse_scan(&unescape(data), &config, today)?)
}

/// Why [`parse_typed`] gave no scan.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TypedError {
    #[error("layouts: {0}")]
    Layouts(String),
    #[error("separator: {0}")]
    Separator(String),
    #[error("bad scan: {0}")]
    Scan(#[from] ScanError),
}

#[cfg(test)]
mod tests;
