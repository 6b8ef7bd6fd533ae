//! A price batch from HQ: parsed from JSON or CSV and validated into a [`PriceBatch`] before any
//! of it reaches storage. Pure code: no I/O, no clock.
//!
//! Every refusal names the row (JSON: `row N` of `prices`, counting from 1; CSV: `line N` of the
//! file, the header being line 1) and the reason, so HQ can fix the file and send it again.
use std::collections::HashMap;
use std::collections::HashSet;
use std::fmt;

use aisle_protocol::sync::MAX_NAME_CHARS;
use aisle_protocol::{Currency, Gtin, Money, StoreId, UtcMillis};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::timefmt::parse_rfc3339;

/// Most price rows in one batch.
pub const MAX_BATCH_ROWS: usize = 100_000;
/// Most stores named in one batch.
pub const MAX_BATCH_STORES: usize = 10_000;
/// The CSV header, in this order or any other.
pub const CSV_COLUMNS: [&str; 4] = ["gtin", "price", "currency", "name"];

/// Which stores a batch prices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchStores {
    /// Every store the hub knows when the batch is stored.
    All,
    /// These stores (no duplicates, at least one).
    Only(Vec<StoreId>),
}

/// Where a row came from, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemOrigin {
    /// Position in the JSON `prices` array, counting from 1.
    Row(u32),
    /// Line of the CSV file, counting from 1 (the header).
    Line(u64),
}

impl fmt::Display for ItemOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ItemOrigin::Row(n) => write!(f, "row {n}"),
            ItemOrigin::Line(n) => write!(f, "line {n}"),
        }
    }
}

/// One new shelf price.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceItem {
    pub origin: ItemOrigin,
    pub gtin: Gtin,
    pub price: Money,
    pub name: String,
}

/// A validated price batch: 1 to [`MAX_BATCH_ROWS`] items, no GTIN twice, every price
/// non-negative, every name 1 to [`MAX_NAME_CHARS`] characters without control characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceBatch {
    stores: BatchStores,
    effective_at: Option<UtcMillis>,
    items: Vec<PriceItem>,
}

/// Why a price batch was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The body is not the JSON document the API describes.
    #[error("malformed price batch JSON: {0}")]
    Json(String),
    /// The CSV file is broken (wrong header, wrong field count, not UTF-8).
    #[error("malformed price batch CSV: {0}")]
    Csv(String),
    /// A row is not an object of four strings (wrong type, missing or unknown field).
    #[error("{origin}: {reason}")]
    RowShape { origin: ItemOrigin, reason: String },
    /// A row parsed but its content is not acceptable.
    #[error("{origin}: {reason}")]
    Row { origin: ItemOrigin, reason: String },
    #[error("a price batch may have at most {MAX_BATCH_ROWS} rows")]
    TooManyRows,
    #[error("a price batch needs at least one price")]
    Empty,
    #[error("stores: {0}")]
    Stores(String),
    #[error("effective_at: {0}")]
    EffectiveAt(String),
}

impl PriceBatch {
    /// Checks the batch's invariants; the only way to build one.
    pub fn new(
        stores: BatchStores,
        effective_at: Option<UtcMillis>,
        items: Vec<PriceItem>,
    ) -> Result<Self, BatchError> {
        if items.len() > MAX_BATCH_ROWS {
            return Err(BatchError::TooManyRows);
        }
        if items.is_empty() {
            return Err(BatchError::Empty);
        }
        if let BatchStores::Only(list) = &stores {
            check_store_list(list)?;
        }
        if effective_at.is_some_and(|t| t.0 < 0) {
            return Err(BatchError::EffectiveAt("must not be before 1970".into()));
        }
        let mut seen: HashMap<Gtin, ItemOrigin> = HashMap::with_capacity(items.len());
        for item in &items {
            let row_err = |reason: String| BatchError::Row {
                origin: item.origin,
                reason,
            };
            if item.price.minor < 0 {
                return Err(row_err(format!(
                    "price must not be negative, got {}",
                    item.price.decimal()
                )));
            }
            check_name(&item.name).map_err(row_err)?;
            if let Some(first) = seen.insert(item.gtin, item.origin) {
                return Err(row_err(format!(
                    "GTIN {} appears twice in the batch (first at {first})",
                    item.gtin
                )));
            }
        }
        Ok(PriceBatch {
            stores,
            effective_at,
            items,
        })
    }

    /// Parses the JSON body of `POST /v1/price-batches`.
    pub fn from_json(body: &[u8]) -> Result<Self, BatchError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawBatch<'a> {
            stores: serde_json::Value,
            #[serde(default)]
            effective_at: Option<String>,
            // Rows stay raw slices until counted, so each is parsed alone and its errors name it.
            #[serde(borrow)]
            prices: Vec<&'a RawValue>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawRow {
            gtin: String,
            price: String,
            currency: String,
            name: String,
        }

        let raw: RawBatch<'_> =
            serde_json::from_slice(body).map_err(|e| BatchError::Json(e.to_string()))?;
        let stores = parse_json_stores(&raw.stores)?;
        let effective_at = raw
            .effective_at
            .as_deref()
            .map(parse_rfc3339)
            .transpose()
            .map_err(BatchError::EffectiveAt)?;
        if raw.prices.len() > MAX_BATCH_ROWS {
            return Err(BatchError::TooManyRows);
        }
        let mut items = Vec::with_capacity(raw.prices.len());
        for (i, value) in raw.prices.iter().enumerate() {
            let origin = ItemOrigin::Row(u32::try_from(i + 1).unwrap_or(u32::MAX));
            let row: RawRow =
                serde_json::from_str(value.get()).map_err(|e| BatchError::RowShape {
                    origin,
                    reason: serde_message(&e),
                })?;
            items.push(parse_item(
                origin,
                &row.gtin,
                &row.price,
                &row.currency,
                &row.name,
            )?);
        }
        PriceBatch::new(stores, effective_at, items)
    }

    /// Parses a CSV body (header `gtin,price,currency,name`); stores and effective time come from
    /// the query string (`stores=all|S001,S002`, `effective_at=RFC 3339`).
    pub fn from_csv(
        body: &[u8],
        stores: &str,
        effective_at: Option<&str>,
    ) -> Result<Self, BatchError> {
        let stores = parse_store_list(stores)?;
        let effective_at = effective_at
            .map(parse_rfc3339)
            .transpose()
            .map_err(BatchError::EffectiveAt)?;
        // Spreadsheets like to start UTF-8 files with a byte order mark.
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .trim(csv::Trim::All)
            .flexible(false)
            .from_reader(body);
        let mut lines = LineCounter::new(body);
        let header = reader
            .byte_headers()
            .map_err(|e| csv_error(&e, &mut lines))?;
        let columns = csv_columns(header)?;
        let mut items = Vec::new();
        for record in reader.byte_records() {
            let record = record.map_err(|e| csv_error(&e, &mut lines))?;
            let line = lines.line_at(record.position().map_or(0, csv::Position::byte));
            if items.len() == MAX_BATCH_ROWS {
                return Err(BatchError::TooManyRows);
            }
            let field = |i: usize| -> Result<&str, BatchError> {
                std::str::from_utf8(record.get(columns[i]).unwrap_or_default()).map_err(|_| {
                    BatchError::Csv(format!(
                        "line {line}: {} is not valid UTF-8",
                        CSV_COLUMNS[i]
                    ))
                })
            };
            items.push(parse_item(
                ItemOrigin::Line(line),
                field(0)?,
                field(1)?,
                field(2)?,
                field(3)?,
            )?);
        }
        PriceBatch::new(stores, effective_at, items)
    }

    pub fn stores(&self) -> &BatchStores {
        &self.stores
    }

    pub fn effective_at(&self) -> Option<UtcMillis> {
        self.effective_at
    }

    pub fn items(&self) -> &[PriceItem] {
        &self.items
    }
}

/// Parses `all` or a comma-separated list of store ids.
pub fn parse_store_list(s: &str) -> Result<BatchStores, BatchError> {
    let s = s.trim();
    if s == "all" {
        return Ok(BatchStores::All);
    }
    if s.is_empty() {
        return Err(BatchError::Stores(
            "name the stores: 'all' or a comma-separated list like S001,S002".into(),
        ));
    }
    let mut list = Vec::new();
    for part in s.split(',') {
        if list.len() == MAX_BATCH_STORES {
            return Err(BatchError::Stores(format!(
                "at most {MAX_BATCH_STORES} stores; use 'all'"
            )));
        }
        list.push(StoreId::parse(part.trim()).map_err(|e| BatchError::Stores(e.to_string()))?);
    }
    Ok(BatchStores::Only(dedup(list)))
}

fn parse_json_stores(v: &serde_json::Value) -> Result<BatchStores, BatchError> {
    let shape =
        || BatchError::Stores("must be \"all\" or a list of store ids like [\"S001\"]".into());
    match v {
        serde_json::Value::String(s) if s == "all" => Ok(BatchStores::All),
        serde_json::Value::Array(items) => {
            if items.len() > MAX_BATCH_STORES {
                return Err(BatchError::Stores(format!(
                    "at most {MAX_BATCH_STORES} stores; use \"all\""
                )));
            }
            let mut list = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let s = item.as_str().ok_or_else(shape)?;
                list.push(
                    StoreId::parse(s)
                        .map_err(|e| BatchError::Stores(format!("item {}: {e}", i + 1)))?,
                );
            }
            if list.is_empty() {
                return Err(BatchError::Stores(
                    "the list is empty; name at least one store or \"all\"".into(),
                ));
            }
            Ok(BatchStores::Only(dedup(list)))
        }
        _ => Err(shape()),
    }
}

fn check_store_list(list: &[StoreId]) -> Result<(), BatchError> {
    if list.is_empty() {
        return Err(BatchError::Stores("name at least one store".into()));
    }
    if list.len() > MAX_BATCH_STORES {
        return Err(BatchError::Stores(format!(
            "at most {MAX_BATCH_STORES} stores"
        )));
    }
    let unique: HashSet<&StoreId> = list.iter().collect();
    if unique.len() != list.len() {
        return Err(BatchError::Stores("a store is named twice".into()));
    }
    Ok(())
}

fn dedup(list: Vec<StoreId>) -> Vec<StoreId> {
    let mut seen = HashSet::new();
    list.into_iter()
        .filter(|s| seen.insert(s.clone()))
        .collect()
}

/// Validates one row's fields into an item; names the field and echoes a bounded part of the input.
fn parse_item(
    origin: ItemOrigin,
    gtin: &str,
    price: &str,
    currency: &str,
    name: &str,
) -> Result<PriceItem, BatchError> {
    let row_err = |reason: String| BatchError::Row { origin, reason };
    let gtin = Gtin::parse(gtin).map_err(|e| row_err(format!("gtin '{}': {e}", shown(gtin))))?;
    let currency = Currency::parse(currency).map_err(|_| {
        row_err(format!(
            "currency '{}' is not a known ISO 4217 code",
            shown(currency)
        ))
    })?;
    let price = currency
        .parse_amount(price)
        .map_err(|e| row_err(format!("price: {e}")))?;
    Ok(PriceItem {
        origin,
        gtin,
        price,
        name: name.to_owned(),
    })
}

/// A product name: 1 to [`MAX_NAME_CHARS`] characters, not blank, no control characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("name must not be empty".into());
    }
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(format!(
            "name may have at most {MAX_NAME_CHARS} characters, got {chars}"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("name must not contain control characters".into());
    }
    Ok(())
}

fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if s.chars().nth(40).is_some() {
        out.push('…');
    }
    out
}

fn csv_columns(header: &csv::ByteRecord) -> Result<[usize; 4], BatchError> {
    let wanted = CSV_COLUMNS.join(",");
    let mut found: [Option<usize>; 4] = [None; 4];
    for (i, name) in header.iter().enumerate() {
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        let Some(slot) = CSV_COLUMNS.iter().position(|c| *c == name) else {
            return Err(BatchError::Csv(format!(
                "line 1: unknown column '{}'; the header must be {wanted}",
                shown(&name)
            )));
        };
        if found[slot].replace(i).is_some() {
            return Err(BatchError::Csv(format!(
                "line 1: column '{name}' appears twice"
            )));
        }
    }
    let mut out = [0usize; 4];
    for (slot, col) in found.iter().enumerate() {
        out[slot] = col.ok_or_else(|| {
            BatchError::Csv(format!(
                "line 1: column '{}' is missing; the header must be {wanted}",
                CSV_COLUMNS[slot]
            ))
        })?;
    }
    Ok(out)
}

/// Line numbers from byte offsets (the csv crate's own line count skips blank lines).
struct LineCounter<'a> {
    body: &'a [u8],
    pos: usize,
    line: u64,
}

impl<'a> LineCounter<'a> {
    fn new(body: &'a [u8]) -> Self {
        LineCounter {
            body,
            pos: 0,
            line: 1,
        }
    }

    /// The line of the record the csv crate places at byte `offset`; offsets must not decrease
    /// between calls. The crate's offset is where it began reading, before skipping blank lines.
    fn line_at(&mut self, offset: u64) -> u64 {
        let mut end = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.body.len());
        while matches!(self.body.get(end), Some(b'\r' | b'\n')) {
            end += 1;
        }
        if end > self.pos {
            let newlines = self.body[self.pos..end]
                .iter()
                .filter(|b| **b == b'\n')
                .count();
            self.line += newlines as u64;
            self.pos = end;
        }
        self.line
    }
}

fn csv_error(e: &csv::Error, lines: &mut LineCounter<'_>) -> BatchError {
    let at = e.position().map_or_else(String::new, |p| {
        format!("line {}: ", lines.line_at(p.byte()))
    });
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => BatchError::Csv(format!(
            "{at}expected {expected_len} fields ({}), found {len}",
            CSV_COLUMNS.join(",")
        )),
        _ => BatchError::Csv(format!("{at}{e}")),
    }
}

/// A serde_json error's message without its position (which would point into the row alone).
fn serde_message(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    full.strip_suffix(&suffix).unwrap_or(&full).to_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const G1: &str = "9501101531000";
    const G2: &str = "6291041500213";

    fn json_err(body: &str) -> BatchError {
        PriceBatch::from_json(body.as_bytes()).unwrap_err()
    }

    fn csv_err(body: &str) -> BatchError {
        PriceBatch::from_csv(body.as_bytes(), "S001", None).unwrap_err()
    }

    fn row(body: &str) -> String {
        format!(r#"{{"stores":["S001"],"prices":[{body}]}}"#)
    }

    #[test]
    fn parses_a_json_batch() {
        let b = PriceBatch::from_json(
            format!(
                r#"{{"stores":["S001","S002","S001"],"effective_at":"2026-11-22T08:00:00Z",
                "prices":[{{"gtin":"{G1}","price":"12.80","currency":"CNY","name":"乌龙茶 500ml"}},
                          {{"gtin":"{G2}","price":"3","currency":"CNY","name":"Water"}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            b.stores(),
            &BatchStores::Only(vec![
                StoreId::parse("S001").unwrap(),
                StoreId::parse("S002").unwrap()
            ])
        );
        assert_eq!(b.effective_at(), Some(UtcMillis(1_795_334_400_000)));
        assert_eq!(b.items().len(), 2);
        assert_eq!(b.items()[0].price.minor, 1280);
        assert_eq!(b.items()[0].gtin, Gtin::parse(G1).unwrap());
        assert_eq!(b.items()[1].price.minor, 300);
        assert_eq!(b.items()[1].origin, ItemOrigin::Row(2));
        let all = PriceBatch::from_json(
            format!(r#"{{"stores":"all","prices":[{{"gtin":"{G1}","price":"1","currency":"JPY","name":"x"}}]}}"#)
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(all.stores(), &BatchStores::All);
        assert_eq!(all.effective_at(), None);
    }

    #[test]
    fn json_refusals_name_the_row_and_reason() {
        let ok = format!(r#"{{"gtin":"{G1}","price":"1.00","currency":"CNY","name":"a"}}"#);
        let cases: Vec<(String, &str)> = vec![
            (
                row(&format!(
                    r#"{ok},{{"gtin":"9501101531001","price":"1","currency":"CNY","name":"b"}}"#
                )),
                "row 2: gtin '9501101531001': GTIN check digit",
            ),
            (
                row(&format!(
                    r#"{{"gtin":"{G1}","price":"1","currency":"XYZ","name":"b"}}"#
                )),
                "row 1: currency 'XYZ'",
            ),
            (
                row(&format!(
                    r#"{{"gtin":"{G1}","price":"1.005","currency":"CNY","name":"b"}}"#
                )),
                "row 1: price: amount '1.005' has more decimals than CNY allows",
            ),
            (
                row(&format!(
                    r#"{{"gtin":"{G1}","price":"-1.00","currency":"CNY","name":"b"}}"#
                )),
                "row 1: price must not be negative",
            ),
            (
                row(&format!(
                    r#"{{"gtin":"{G1}","price":"1","currency":"CNY","name":""}}"#
                )),
                "row 1: name must not be empty",
            ),
            (
                row(&format!(
                    r#"{{"gtin":"{G1}","price":"1","currency":"CNY","name":"{}"}}"#,
                    "x".repeat(201)
                )),
                "row 1: name may have at most 200 characters, got 201",
            ),
            (
                row(&format!(
                    r#"{ok},{{"gtin":"0{G1}","price":"2","currency":"CNY","name":"b"}}"#
                )),
                "row 2: GTIN 09501101531000 appears twice in the batch (first at row 1)",
            ),
            (
                row(&format!(
                    r#"{ok},{{"gtin":"{G2}","price":12.8,"currency":"CNY","name":"b"}}"#
                )),
                "row 2: invalid type: floating point `12.8`, expected a string",
            ),
            (
                row(&format!(
                    r#"{{"gtin":"{G1}","price":"1","currency":"CNY"}}"#
                )),
                "row 1: missing field `name`",
            ),
            (
                row(&format!(
                    r#"{{"gtin":"{G1}","price":"1","currency":"CNY","name":"a","promo":"x"}}"#
                )),
                "row 1: unknown field `promo`",
            ),
            (row(""), "a price batch needs at least one price"),
            (
                r#"{"stores":["S001"],"prices":[{"gtin":"#.to_owned(),
                "malformed price batch JSON: EOF",
            ),
            (
                r#"{"stores":"some","prices":[]}"#.to_owned(),
                "stores: must be \"all\" or a list",
            ),
            (
                r#"{"stores":[],"prices":[]}"#.to_owned(),
                "stores: the list is empty",
            ),
            (
                r#"{"stores":["S 1"],"prices":[]}"#.to_owned(),
                "stores: item 1: store id must be",
            ),
            (
                format!(r#"{{"stores":"all","effective_at":"soon","prices":[{ok}]}}"#),
                "effective_at: 'soon' is not an RFC 3339 time",
            ),
            (
                r#"{"stores":"all","prices":{}}"#.to_owned(),
                "malformed price batch JSON: invalid type: map, expected a sequence",
            ),
        ];
        for (body, expect) in cases {
            let e = json_err(&body).to_string();
            assert!(
                e.starts_with(expect),
                "{body}\n  got: {e}\n  want: {expect}"
            );
        }
    }

    #[test]
    fn parses_a_csv_batch_with_bom_spaces_and_any_column_order() {
        let body = format!(
            "\u{feff}name,gtin,price,currency\n\"Tea, green\", {G1} ,12.80,CNY\n\nWater,{G2},3,CNY\n"
        );
        let b = PriceBatch::from_csv(body.as_bytes(), "S001, S002", Some("2026-11-22T08:00:00Z"))
            .unwrap();
        assert_eq!(b.items().len(), 2);
        assert_eq!(b.items()[0].name, "Tea, green");
        assert_eq!(b.items()[0].origin, ItemOrigin::Line(2));
        assert_eq!(b.items()[1].origin, ItemOrigin::Line(4));
        assert!(matches!(b.stores(), BatchStores::Only(l) if l.len() == 2));
        assert_eq!(
            PriceBatch::from_csv(body.as_bytes(), "all", None)
                .unwrap()
                .stores(),
            &BatchStores::All
        );
    }

    #[test]
    fn csv_refusals_name_the_line_and_reason() {
        let h = "gtin,price,currency,name\n";
        let cases: Vec<(String, &str)> = vec![
            (
                format!("{h}{G1},1.00,CNY,a\n{G2},2.00,CNY\n"),
                "malformed price batch CSV: line 3: expected 4 fields (gtin,price,currency,name), found 3",
            ),
            (
                format!("{h}\n{G1},1.00,CNY,a\n\n\n{G2},2.00,CNY\n"),
                "malformed price batch CSV: line 6: expected 4 fields",
            ),
            (
                format!("{h}{G1},1.00,CNY,a\r\n\r\n{G2},2.00,XYZ,b\r\n"),
                "line 4: currency 'XYZ'",
            ),
            (
                format!("{h}{G1},1.00,CNY,a\n9501101531001,2.00,CNY,b\n"),
                "line 3: gtin '9501101531001': GTIN check digit",
            ),
            (
                format!("{h}{G1},1.00,CNY,a\n{G2},2.00,CNY,\"\"\n"),
                "line 3: name must not be empty",
            ),
            (
                format!("{h}{G1},1.00,CNY,a\n{G1},2.00,CNY,b\n"),
                "line 3: GTIN 09501101531000 appears twice in the batch (first at line 2)",
            ),
            (
                "gtin,cost,currency,name\n".to_owned(),
                "malformed price batch CSV: line 1: unknown column 'cost'",
            ),
            (
                "gtin,price,currency\n".to_owned(),
                "malformed price batch CSV: line 1: column 'name' is missing",
            ),
            (h.to_owned(), "a price batch needs at least one price"),
        ];
        for (body, expect) in cases {
            let e = csv_err(&body).to_string();
            assert!(
                e.starts_with(expect),
                "{body}\n  got: {e}\n  want: {expect}"
            );
        }
        let bad_utf8 = [h.as_bytes(), G1.as_bytes(), b",1,CNY,\xff\xfe\n"].concat();
        assert_eq!(
            PriceBatch::from_csv(&bad_utf8, "S001", None)
                .unwrap_err()
                .to_string(),
            "malformed price batch CSV: line 2: name is not valid UTF-8"
        );
        assert!(matches!(
            PriceBatch::from_csv(b"gtin,price,currency,name\n", "", None),
            Err(BatchError::Stores(_))
        ));
    }

    #[test]
    fn row_limit_is_enforced_for_both_formats() {
        let mut csv = String::from("gtin,price,currency,name\n");
        let mut json = String::from(r#"{"stores":"all","prices":["#);
        for i in 0..=MAX_BATCH_ROWS as u64 {
            let g = Gtin::from_index(i).unwrap();
            csv.push_str(&format!("{g},1,CNY,n\n"));
            if i > 0 {
                json.push(',');
            }
            json.push_str(&format!(
                r#"{{"gtin":"{g}","price":"1","currency":"CNY","name":"n"}}"#
            ));
        }
        json.push_str("]}");
        assert_eq!(csv_err(&csv), BatchError::TooManyRows);
        assert_eq!(json_err(&json), BatchError::TooManyRows);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = PriceBatch::from_json(&body);
            let _ = PriceBatch::from_csv(&body, "S001", None);
        }
    }
}
