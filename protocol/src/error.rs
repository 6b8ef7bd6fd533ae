use alloc::string::String;

/// Why a value from outside was refused. Each variant says enough to fix the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("GTIN must be 8, 12, 13 or 14 digits, got {0} characters")]
    GtinLength(usize),
    #[error("GTIN may contain only digits")]
    GtinNotDigits,
    #[error("GTIN check digit is {found}, expected {expected}")]
    GtinCheckDigit { expected: u8, found: u8 },
    #[error("'{0}' is not a known ISO 4217 currency code")]
    UnknownCurrency(String),
    #[error("amount '{0}' is not a decimal number like 12.80")]
    AmountSyntax(String),
    #[error("amount '{amount}' has more decimals than {currency} allows ({allowed})")]
    AmountPrecision {
        amount: String,
        currency: String,
        allowed: u8,
    },
    #[error("amount '{0}' is out of range")]
    AmountRange(String),
    #[error("{kind} must be 1 to {max} characters of {allowed}, got '{value}'")]
    BadId {
        kind: &'static str,
        max: usize,
        allowed: &'static str,
        value: String,
    },
    #[error("event id must be 32 lowercase hex digits")]
    BadEventId,
    #[error("currency mismatch: {0} and {1}")]
    CurrencyMismatch(String, String),
    #[error("arithmetic overflow on money")]
    MoneyOverflow,
}
