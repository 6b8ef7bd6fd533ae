//! The dynamic fields: what changes with a price change and is drawn by the tag itself.
//!
//! Every value here is valid by construction and by decoding (serde goes through the same
//! checks), so a tag never has to draw a promotion whose struck-through price is lower than
//! the price, and the gateway cannot send one.
use core::fmt;

use serde::{Deserialize, Serialize};

use crate::money::{Currency, Money};

/// Largest amount a label shows, in minor units (nine digits: 9,999,999.99 in a two-decimal
/// currency, 999,999,999 in a currency without decimals).
pub const MAX_LABEL_AMOUNT: u32 = 999_999_999;

/// Largest postcard encoding of [`DynamicFields`]; a tag hashes them from a stack buffer.
pub const MAX_FIELDS_LEN: usize = 40;

/// Why dynamic fields were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FieldsError {
    #[error("currency code must be three ASCII capital letters")]
    CurrencyCode,
    #[error("a label shows at most 3 decimals")]
    Exponent,
    #[error("amount {0} is more than a label shows ({MAX_LABEL_AMOUNT})")]
    Amount(u32),
    #[error("the regular price during a promotion must be higher than the promotion price")]
    RegularNotHigher,
    #[error("the member price must be lower than the price")]
    MemberNotLower,
    #[error("unknown flag bits {0:#04x}")]
    UnknownFlags(u8),
    #[error("a negative amount cannot go on a label")]
    Negative,
}

/// The currency as a tag needs it: its code (to pick a symbol) and its exponent (to place the
/// decimal separator). Four bytes on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "([u8; 3], u8)", into = "([u8; 3], u8)")]
pub struct LabelCurrency {
    code: [u8; 3],
    exponent: u8,
}

impl LabelCurrency {
    pub const fn new(code: [u8; 3], exponent: u8) -> Result<Self, FieldsError> {
        if !code[0].is_ascii_uppercase()
            || !code[1].is_ascii_uppercase()
            || !code[2].is_ascii_uppercase()
        {
            return Err(FieldsError::CurrencyCode);
        }
        if exponent > 3 {
            return Err(FieldsError::Exponent);
        }
        Ok(LabelCurrency { code, exponent })
    }

    pub const fn code_bytes(&self) -> [u8; 3] {
        self.code
    }

    pub fn code(&self) -> &str {
        // Three ASCII capitals, checked on construction.
        core::str::from_utf8(&self.code).unwrap_or("XXX")
    }

    pub const fn exponent(&self) -> u8 {
        self.exponent
    }

    /// Splits an amount into whole units and the fraction (as `exponent` digits).
    pub const fn split(&self, minor: u32) -> (u32, u32) {
        let scale = 10u32.pow(self.exponent as u32);
        (minor / scale, minor % scale)
    }

    /// The symbol a tag draws, if it has one (else it draws the code).
    pub fn symbol(&self) -> Option<char> {
        match &self.code {
            b"EUR" => Some('€'),
            b"GBP" => Some('£'),
            b"JPY" | b"CNY" => Some('¥'),
            b"USD" | b"AUD" | b"CAD" | b"NZD" | b"SGD" | b"HKD" | b"MXN" => Some('$'),
            _ => None,
        }
    }
}

impl From<Currency> for LabelCurrency {
    fn from(c: Currency) -> Self {
        let b = c.code().as_bytes();
        let mut code = [b'X'; 3];
        for (dst, src) in code.iter_mut().zip(b) {
            *dst = *src;
        }
        // `Currency` is always a valid ISO 4217 code with an exponent of at most 3.
        LabelCurrency {
            code,
            exponent: c.exponent(),
        }
    }
}

impl TryFrom<([u8; 3], u8)> for LabelCurrency {
    type Error = FieldsError;
    fn try_from((code, exponent): ([u8; 3], u8)) -> Result<Self, FieldsError> {
        LabelCurrency::new(code, exponent)
    }
}

impl From<LabelCurrency> for ([u8; 3], u8) {
    fn from(c: LabelCurrency) -> Self {
        (c.code, c.exponent)
    }
}

impl fmt::Display for LabelCurrency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Debug for LabelCurrency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.code(), self.exponent)
    }
}

/// What a unit price is per.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UnitBase {
    Kilogram,
    Gram100,
    Litre,
    Millilitre100,
    Piece,
    Metre,
    SquareMetre,
}

impl UnitBase {
    /// The suffix a label prints after the unit price, ASCII only.
    pub const fn suffix(self) -> &'static str {
        match self {
            UnitBase::Kilogram => "/kg",
            UnitBase::Gram100 => "/100g",
            UnitBase::Litre => "/l",
            UnitBase::Millilitre100 => "/100ml",
            UnitBase::Piece => "/pc",
            UnitBase::Metre => "/m",
            UnitBase::SquareMetre => "/m2",
        }
    }
}

/// A unit price: the price per kilogram, litre, ... in the label's currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UnitPrice {
    pub amount: u32,
    pub per: UnitBase,
}

/// Presentation flags a tag shows as a badge (and a decimal comma).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Flags(u8);

impl Flags {
    pub const NONE: Flags = Flags(0);
    /// Show "OUT OF STOCK".
    pub const OUT_OF_STOCK: Flags = Flags(0x01);
    /// Show "CLEARANCE".
    pub const CLEARANCE: Flags = Flags(0x02);
    /// Show "NEW".
    pub const NEW: Flags = Flags(0x04);
    /// Write amounts with a decimal comma (3,49) instead of a point (3.49).
    pub const DECIMAL_COMMA: Flags = Flags(0x08);
    const KNOWN: u8 = 0x0f;

    pub const fn from_bits(bits: u8) -> Result<Flags, FieldsError> {
        if bits & !Self::KNOWN != 0 {
            return Err(FieldsError::UnknownFlags(bits & !Self::KNOWN));
        }
        Ok(Flags(bits))
    }

    pub const fn bits(self) -> u8 {
        self.0
    }

    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    #[must_use]
    pub const fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

impl TryFrom<u8> for Flags {
    type Error = FieldsError;
    fn try_from(bits: u8) -> Result<Self, FieldsError> {
        Flags::from_bits(bits)
    }
}

impl From<Flags> for u8 {
    fn from(f: Flags) -> u8 {
        f.0
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Flags({:#04x})", self.0)
    }
}

/// Everything a price change sends: the tag draws these with its own fonts over the cached
/// static layer.
///
/// `price` is what a shopper without a card pays, so it is the figure the lane compares with.
/// During a promotion `regular` is the price before it, shown struck through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawFields", into = "RawFields")]
pub struct DynamicFields {
    currency: LabelCurrency,
    price: u32,
    regular: Option<u32>,
    member: Option<u32>,
    unit: Option<UnitPrice>,
    flags: Flags,
}

impl DynamicFields {
    /// A plain price: no promotion, member price or unit price, no flags.
    pub const fn new(currency: LabelCurrency, price: u32) -> Result<Self, FieldsError> {
        let fields = DynamicFields {
            currency,
            price,
            regular: None,
            member: None,
            unit: None,
            flags: Flags::NONE,
        };
        fields.check()
    }

    /// A plain price from a `Money` (gateway side).
    pub fn from_money(price: Money) -> Result<Self, FieldsError> {
        DynamicFields::new(price.currency.into(), label_amount(price.minor)?)
    }

    /// A promotion: `price` now, `regular` struck through.
    pub const fn with_regular(mut self, regular: u32) -> Result<Self, FieldsError> {
        self.regular = Some(regular);
        self.check()
    }

    pub const fn with_member(mut self, member: u32) -> Result<Self, FieldsError> {
        self.member = Some(member);
        self.check()
    }

    pub const fn with_unit(mut self, amount: u32, per: UnitBase) -> Result<Self, FieldsError> {
        self.unit = Some(UnitPrice { amount, per });
        self.check()
    }

    #[must_use]
    pub const fn with_flags(mut self, flags: Flags) -> Self {
        self.flags = flags;
        self
    }

    pub const fn currency(&self) -> LabelCurrency {
        self.currency
    }
    pub const fn price(&self) -> u32 {
        self.price
    }
    pub const fn regular(&self) -> Option<u32> {
        self.regular
    }
    pub const fn member(&self) -> Option<u32> {
        self.member
    }
    pub const fn unit(&self) -> Option<UnitPrice> {
        self.unit
    }
    pub const fn flags(&self) -> Flags {
        self.flags
    }

    /// The price as `Money` (gateway side; `None` if the code is not one `Currency` knows).
    pub fn price_money(&self) -> Option<Money> {
        let currency = Currency::parse(self.currency.code()).ok()?;
        (currency.exponent() == self.currency.exponent)
            .then(|| Money::new(i64::from(self.price), currency))
    }

    const fn check(self) -> Result<Self, FieldsError> {
        if self.price > MAX_LABEL_AMOUNT {
            return Err(FieldsError::Amount(self.price));
        }
        if let Some(regular) = self.regular {
            if regular > MAX_LABEL_AMOUNT {
                return Err(FieldsError::Amount(regular));
            }
            if regular <= self.price {
                return Err(FieldsError::RegularNotHigher);
            }
        }
        if let Some(member) = self.member
            && member >= self.price
        {
            return Err(FieldsError::MemberNotLower);
        }
        if let Some(unit) = self.unit
            && unit.amount > MAX_LABEL_AMOUNT
        {
            return Err(FieldsError::Amount(unit.amount));
        }
        Ok(self)
    }
}

/// A `Money` amount as label minor units: non-negative and at most [`MAX_LABEL_AMOUNT`].
pub fn label_amount(minor: i64) -> Result<u32, FieldsError> {
    if minor < 0 {
        return Err(FieldsError::Negative);
    }
    u32::try_from(minor)
        .ok()
        .filter(|m| *m <= MAX_LABEL_AMOUNT)
        .ok_or(FieldsError::Amount(u32::MAX))
}

/// The wire shape of [`DynamicFields`], checked on the way in.
#[derive(Clone, Copy, Serialize, Deserialize)]
struct RawFields {
    currency: LabelCurrency,
    price: u32,
    regular: Option<u32>,
    member: Option<u32>,
    unit: Option<UnitPrice>,
    flags: Flags,
}

impl TryFrom<RawFields> for DynamicFields {
    type Error = FieldsError;
    fn try_from(r: RawFields) -> Result<Self, FieldsError> {
        DynamicFields {
            currency: r.currency,
            price: r.price,
            regular: r.regular,
            member: r.member,
            unit: r.unit,
            flags: r.flags,
        }
        .check()
    }
}

impl From<DynamicFields> for RawFields {
    fn from(f: DynamicFields) -> Self {
        RawFields {
            currency: f.currency,
            price: f.price,
            regular: f.regular,
            member: f.member,
            unit: f.unit,
            flags: f.flags,
        }
    }
}
