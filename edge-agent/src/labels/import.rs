//! The bulk import of label bindings: CSV with a header naming `label`, `gtin` and `shelf`
//! (and optionally `panel`), in any order. Parsing is pure; every refused row is named by its
//! line, and the ledger binds all rows or none.
use aisle_protocol::esl::Panel;

use super::{scan_gtin, scan_label};
use crate::ledger::labels::parse_panel;
use crate::ledger::{BindLabel, BindProblem, BindRowError, MAX_IMPORT_ROWS};

/// Largest import file read (30,000 rows are about 1 MiB).
pub const MAX_IMPORT_BYTES: usize = 16 * 1024 * 1024;

/// Parses an import. Rows come back with their line numbers (the header is line 1); rows that
/// do not parse come back as errors, all of them.
pub fn parse_csv(
    bytes: &[u8],
    default_panel: Panel,
    by: Option<&str>,
) -> Result<Vec<(usize, BindLabel)>, Vec<BindRowError>> {
    let whole = |message: String| {
        vec![BindRowError {
            line: 1,
            label: None,
            problem: BindProblem::Malformed,
            message,
        }]
    };
    if bytes.len() > MAX_IMPORT_BYTES {
        return Err(whole(format!(
            "the file is larger than {MAX_IMPORT_BYTES} bytes"
        )));
    }
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(bytes);
    let headers = match reader.headers() {
        Ok(h) => h.clone(),
        Err(e) => return Err(whole(format!("header: {e}"))),
    };
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim_start_matches('\u{feff}').eq_ignore_ascii_case(name))
    };
    let (Some(c_label), Some(c_gtin), Some(c_shelf)) = (col("label"), col("gtin"), col("shelf"))
    else {
        return Err(whole(
            "the header must name the columns label, gtin and shelf (panel is optional)".into(),
        ));
    };
    let c_panel = col("panel");
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for (i, record) in reader.records().enumerate() {
        // The line from the byte offset: the reader's own line count skips blank lines.
        let line = record
            .as_ref()
            .ok()
            .and_then(|r| r.position())
            .and_then(|p| usize::try_from(p.byte()).ok())
            .map_or(i + 2, |at| {
                // A record's position may be the blank lines before it.
                let at = at
                    + bytes.get(at..).map_or(0, |b| {
                        b.iter().take_while(|c| matches!(c, b'\r' | b'\n')).count()
                    });
                1 + bytes
                    .get(..at)
                    .map_or(0, |b| b.iter().filter(|c| **c == b'\n').count())
            });
        if rows.len() + errors.len() >= MAX_IMPORT_ROWS {
            errors.push(BindRowError {
                line,
                label: None,
                problem: BindProblem::Malformed,
                message: format!("more than {MAX_IMPORT_ROWS} rows"),
            });
            break;
        }
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                errors.push(BindRowError {
                    line,
                    label: None,
                    problem: BindProblem::Malformed,
                    message: e.to_string(),
                });
                continue;
            }
        };
        if record.iter().all(str::is_empty) {
            continue;
        }
        let field = |c: usize| record.get(c).unwrap_or("");
        let label_text = field(c_label);
        let mut problems = Vec::new();
        let label = scan_label(label_text).map_err(|e| problems.push(e)).ok();
        let gtin = scan_gtin(field(c_gtin)).map_err(|e| problems.push(e)).ok();
        let panel = match c_panel.map(field).filter(|p| !p.is_empty()) {
            None => Some(default_panel),
            Some(p) => {
                let parsed = parse_panel(p);
                if parsed.is_none() {
                    problems.push(format!(
                        "panel '{p}' is not one of bw290, bwr290, bw420, bwr420"
                    ));
                }
                parsed
            }
        };
        match (label, gtin, panel) {
            (Some(label), Some(gtin), Some(panel)) if problems.is_empty() => rows.push((
                line,
                BindLabel {
                    label,
                    gtin,
                    shelf: field(c_shelf).to_string(),
                    panel,
                    by: by.map(str::to_string),
                },
            )),
            _ => errors.push(BindRowError {
                line,
                label: (!label_text.is_empty()).then(|| label_text.chars().take(16).collect()),
                problem: BindProblem::Malformed,
                message: problems.join("; "),
            }),
        }
    }
    if errors.is_empty() {
        Ok(rows)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aisle_protocol::esl::LabelId;

    #[test]
    fn rows_parse_in_any_column_order_and_bad_rows_are_named_by_line() {
        let csv = "shelf,Label,gtin,panel\nA1-01,00A10001,4006381333931,\n\n\"A1,02\",00a10002,(01)04006381333931,bwr290\n";
        let rows = parse_csv(csv.as_bytes(), Panel::Bw290, Some("import")).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0, 2);
        assert_eq!(rows[0].1.label, LabelId(0x00A1_0001));
        assert_eq!(rows[0].1.panel, Panel::Bw290);
        assert_eq!(rows[1].0, 4);
        assert_eq!(rows[1].1.shelf, "A1,02");
        assert_eq!(rows[1].1.panel, Panel::Bwr290);

        let bad = "label,gtin,shelf,panel\nXYZ,4006381333931,A1\n00A10003,4006381333932,A2\n00A10004,4006381333931,A3,bw999\n00A10005,4006381333931,A4\n";
        let errors = parse_csv(bad.as_bytes(), Panel::Bw290, None).unwrap_err();
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4]);
        assert!(errors[0].message.contains("label id"), "{errors:?}");
        assert!(errors[1].message.contains("GTIN"), "{errors:?}");
        assert!(errors[2].message.contains("panel"), "{errors:?}");

        let errors = parse_csv(b"id,code\n1,2\n", Panel::Bw290, None).unwrap_err();
        assert_eq!(errors[0].line, 1);
    }
}
