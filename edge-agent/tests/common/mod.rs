//! Shared test data: GTINs, prices and sales in the shop's words.
#![allow(dead_code, clippy::unwrap_used)]

pub mod hub;

use aisle_agent::ledger::{SaleRequest, SaleRequestLine};
use aisle_protocol::sync::{Payment, PaymentMethod, PriceChange};
use aisle_protocol::{BatchId, Currency, Gtin, Money, SaleId, UtcMillis};

/// 2026-01-01T00:00:00Z.
pub const T0: i64 = 1_767_225_600_000;

pub fn cny() -> Currency {
    Currency::parse("CNY").unwrap()
}

pub fn gtin(n: u64) -> Gtin {
    Gtin::from_index(690_123_450_000 + n).unwrap()
}

pub fn price(g: Gtin, version: u64, minor: i64, effective_at: i64) -> PriceChange {
    PriceChange {
        gtin: g,
        version,
        price: Money::new(minor, cny()),
        name: format!("Oolong tea 500ml #{g}"),
        effective_at: UtcMillis(effective_at),
        batch_id: BatchId::parse(&format!("b-{version}")).unwrap(),
    }
}

pub fn sale(id: &str, lines: &[(Gtin, u32)]) -> SaleRequest {
    SaleRequest {
        sale_id: SaleId::parse(id).unwrap(),
        lines: lines
            .iter()
            .map(|&(gtin, qty)| SaleRequestLine { gtin, qty })
            .collect(),
        payment: Payment {
            method: PaymentMethod::Card,
            reference: None,
            offline: false,
        },
    }
}
