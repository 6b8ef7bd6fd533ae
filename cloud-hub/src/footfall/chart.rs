//! The footfall chart: a [`FootfallReport`] drawn as SVG with plotters' SVG backend, for a person
//! to look at. Visitors in and transactions are bars side by side per bucket (left axis),
//! conversion a line with dots (right axis, percent), and buckets with missing data are shaded
//! and hatched, labelled in the chart and listed with their cameras under it.
//!
//! Text is emitted as SVG `<text>` (no fonts are needed to draw it); plotters escapes it, and
//! characters XML does not allow are replaced before they get there.
use std::ops::Range;

use plotters::backend::SVGBackend;
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use time::OffsetDateTime;

use super::{FootfallBucket, FootfallReport, Interval};

/// Most buckets one chart draws (a week of hours).
pub const MAX_CHART_BUCKETS: i64 = 7 * 24;

const HEIGHT: u32 = 620;
const HEADER: u32 = 112;
const FOOTER: u32 = 58;

const INK: RGBColor = RGBColor(33, 37, 41);
const MUTED: RGBColor = RGBColor(95, 99, 104);
const GRID: RGBColor = RGBColor(226, 228, 231);
const VISITORS: RGBColor = RGBColor(45, 106, 170);
const TRANSACTIONS: RGBColor = RGBColor(236, 135, 38);
const CONVERSION: RGBColor = RGBColor(28, 140, 82);
const MISSING_FILL: RGBColor = RGBColor(236, 236, 236);
const MISSING_HATCH: RGBColor = RGBColor(196, 196, 196);

/// Why a chart could not be drawn (a plotters failure; input alone never causes one).
#[derive(Debug, thiserror::Error)]
#[error("the chart could not be drawn: {0}")]
pub struct ChartError(String);

fn chart_error<E: std::fmt::Debug>(e: E) -> ChartError {
    ChartError(format!("{e:?}"))
}

/// Renders `report` as a standalone SVG document.
pub fn render_svg(report: &FootfallReport) -> Result<String, ChartError> {
    let n = report.buckets.len().max(1);
    let per_bucket: u32 = if n <= 48 { 46 } else { 14 };
    let width = (170 + per_bucket * u32::try_from(n).unwrap_or(u32::MAX / 64)).clamp(1040, 2600);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, HEIGHT)).into_drawing_area();
        draw(&root, report, width).map_err(chart_error)?;
        root.present().map_err(chart_error)?;
    }
    Ok(svg)
}

/// Font size for a wanted pixel height (the SVG backend writes `size / 1.24`).
fn font(px: f64) -> FontDesc<'static> {
    ("sans-serif", px * 1.24).into_font()
}

fn style(px: f64, color: RGBColor) -> TextStyle<'static> {
    font(px).color(&color)
}

fn bold(px: f64, color: RGBColor) -> TextStyle<'static> {
    font(px).style(FontStyle::Bold).color(&color)
}

/// A rough text width for layout (the viewer's font decides the real one).
fn text_width(s: &str, px: f64) -> i32 {
    (s.chars().count() as f64 * px * 0.6).round() as i32
}

/// Only characters XML 1.0 allows, no control characters, at most `max` characters.
fn clean(s: &str, max: usize) -> String {
    let ok = |c: char| !c.is_control() && !matches!(c, '\u{FFFE}' | '\u{FFFF}');
    let mut out: String = s.chars().map(|c| if ok(c) { c } else { ' ' }).collect();
    if out.chars().count() > max {
        out = out.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
    }
    out
}

fn utc(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn hh_mm(ms: i64) -> String {
    let t = utc(ms);
    format!("{:02}:{:02}", t.hour(), t.minute())
}

fn day_label(ms: i64) -> String {
    let t = utc(ms);
    let weekday = t.weekday().to_string();
    let month = t.month().to_string();
    format!(
        "{} {} {} {}",
        weekday.get(..3).unwrap_or(&weekday),
        t.day(),
        month.get(..3).unwrap_or(&month),
        t.year()
    )
}

fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |c| format!("{:.1}%", c * 100.0))
}

fn unit(interval: Interval) -> &'static str {
    match interval {
        Interval::Quarter => "per 15 minutes",
        Interval::Hour => "per hour",
        Interval::Day => "per day",
    }
}

/// The x axis: buckets 0..n, with ticks (and labels) exactly where the chart wants them.
#[derive(Debug)]
struct BucketAxis {
    end: f64,
    ticks: Vec<f64>,
}

impl Ranged for BucketAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        // As plotters maps an f64 range, so the secondary axis (0..n) agrees pixel for pixel.
        let length = f64::from(limit.1 - limit.0);
        let logic = if self.end > 0.0 { v / self.end } else { 0.0 };
        limit.0 + (length * logic + 1e-3).floor() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        0.0..self.end
    }
}

/// A run of consecutive buckets with missing data and the same cameras.
struct MissingSpan {
    first: usize,
    /// Exclusive.
    end: usize,
    cameras: Vec<String>,
}

impl MissingSpan {
    fn short_label(&self) -> &'static str {
        if self.cameras.is_empty() {
            "no data"
        } else {
            "offline"
        }
    }

    fn description(&self, buckets: &[FootfallBucket]) -> String {
        let (Some(a), Some(b)) = (buckets.get(self.first), buckets.get(self.end - 1)) else {
            return String::new();
        };
        let what = if self.cameras.is_empty() {
            "no footfall reported".to_owned()
        } else {
            format!("camera offline: {}", clean(&self.cameras.join(", "), 60))
        };
        format!(
            "{} {}–{} {what}",
            day_label(a.start.0),
            hh_mm(a.start.0),
            hh_mm(b.end.0)
        )
    }
}

fn missing_spans(buckets: &[FootfallBucket]) -> Vec<MissingSpan> {
    let mut spans: Vec<MissingSpan> = Vec::new();
    for (i, b) in buckets.iter().enumerate() {
        if !b.missing_data {
            continue;
        }
        match spans.last_mut() {
            Some(s) if s.end == i && s.cameras == b.cameras_missing => s.end = i + 1,
            _ => spans.push(MissingSpan {
                first: i,
                end: i + 1,
                cameras: b.cameras_missing.clone(),
            }),
        }
    }
    spans
}

/// A "nice" axis top at or above `v`: 1, 2, 2.5 or 5 times a power of ten.
fn nice_ceil(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|top| *top >= v)
        .unwrap_or(10.0 * magnitude)
}

/// Hatches the pixel rectangle with lines rising to the right.
fn hatch(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    (x0, y0): (i32, i32),
    (x1, y1): (i32, i32),
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    let step = 9;
    let mut c = x0 + y0 + step;
    while c < x1 + y1 {
        // Points of x + y = c inside the rectangle.
        let xa = x0.max(c - y1);
        let xb = x1.min(c - y0);
        if xa < xb {
            root.draw(&PathElement::new(
                vec![(xa, c - xa), (xb, c - xb)],
                MISSING_HATCH.stroke_width(1),
            ))?;
        }
        c += step;
    }
    Ok(())
}

fn draw(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    report: &FootfallReport,
    width: u32,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    root.fill(&WHITE)?;
    let buckets = &report.buckets;
    let n = buckets.len().max(1);
    let nf = n as f64;
    let t = &report.totals;
    let w = i32::try_from(width).unwrap_or(2600);

    // ---- header: title, what is shown, legend ----
    root.draw(&Text::new(
        format!(
            "Footfall and sales · {} ({})",
            clean(&report.store_name, 80),
            report.store
        ),
        (24, 16),
        bold(20.0, INK),
    ))?;
    root.draw(&Text::new(
        format!(
            "{} {} to {} {} UTC, {} · visitors in {} · transactions {} · conversion {}{}",
            day_label(report.from.0),
            hh_mm(report.from.0),
            day_label(report.to.0),
            hh_mm(report.to.0),
            unit(report.interval),
            t.visitors_in,
            t.transactions,
            percent(t.conversion),
            if t.missing_data {
                " · incomplete: see shaded periods"
            } else {
                ""
            }
        ),
        (24, 46),
        style(13.0, MUTED),
    ))?;
    let mut x = 24;
    let ly = 84;
    let legend_text = style(13.0, INK).pos(Pos::new(HPos::Left, VPos::Center));
    let legend = |label: &str, x: &mut i32| -> Result<(), DrawingAreaErrorKind<_>> {
        root.draw(&Text::new(
            label.to_owned(),
            (*x + 22, ly),
            legend_text.clone(),
        ))?;
        *x += 22 + text_width(label, 13.0) + 26;
        Ok(())
    };
    root.draw(&Rectangle::new(
        [(x, ly - 7), (x + 14, ly + 7)],
        VISITORS.filled(),
    ))?;
    legend("Visitors in", &mut x)?;
    root.draw(&Rectangle::new(
        [(x, ly - 7), (x + 14, ly + 7)],
        TRANSACTIONS.filled(),
    ))?;
    legend("Transactions", &mut x)?;
    root.draw(&PathElement::new(
        vec![(x - 2, ly), (x + 16, ly)],
        CONVERSION.stroke_width(2),
    ))?;
    root.draw(&Circle::new((x + 7, ly), 4, CONVERSION.filled()))?;
    legend("Conversion = transactions ÷ visitors (right axis)", &mut x)?;
    root.draw(&Rectangle::new(
        [(x, ly - 7), (x + 14, ly + 7)],
        MISSING_FILL.filled(),
    ))?;
    hatch(root, (x, ly - 7), (x + 14, ly + 7))?;
    root.draw(&Rectangle::new(
        [(x, ly - 7), (x + 14, ly + 7)],
        MISSING_HATCH.stroke_width(1),
    ))?;
    legend("No data / camera offline", &mut x)?;

    // ---- the plot ----
    let (_, rest) = root.split_vertically(HEADER);
    let (plot_area, _) = rest.split_vertically(HEIGHT - HEADER - FOOTER);
    let y_max = buckets
        .iter()
        .map(|b| b.visitors_in.max(b.transactions))
        .max()
        .unwrap_or(0);
    let y_top = nice_ceil((y_max as f64 * 1.3).max(5.0));
    let conv_max = buckets
        .iter()
        .filter_map(|b| b.conversion)
        .fold(0.0f64, f64::max);
    let conv_top = (((conv_max * 1.3).max(0.1) * 10.0).ceil() / 10.0).min(1e6);

    let step = if report.interval != Interval::Hour {
        (n / 24).max(1)
    } else if n <= 30 {
        1
    } else if n <= 48 {
        2
    } else {
        6
    };
    // Where bucket i starts.
    let start_of = |i: usize| -> i64 {
        let offset = report
            .interval
            .ms()
            .saturating_mul(i64::try_from(i).unwrap_or(0));
        report.from.0.saturating_add(offset)
    };
    // Hour ticks fall on round hours of the clock (every 2 or 6 hours on longer charts).
    let mut ticks: Vec<f64> = (0..=n)
        .filter(|&i| {
            if report.interval == Interval::Hour {
                usize::from(utc(start_of(i)).hour()).is_multiple_of(step)
            } else {
                i.is_multiple_of(step)
            }
        })
        .map(|i| i as f64)
        .collect();
    if ticks.is_empty() {
        ticks = vec![0.0, nf];
    }
    let label_of = |x: &f64| -> String {
        let at = start_of(x.round().max(0.0) as usize);
        match report.interval {
            Interval::Day => {
                let d = utc(at);
                format!(
                    "{} {}",
                    d.day(),
                    d.month().to_string().get(..3).unwrap_or("")
                )
            }
            _ => hh_mm(at),
        }
    };
    let mut chart = ChartBuilder::on(&plot_area)
        .margin_left(12)
        .margin_right(12)
        .margin_top(6)
        .x_label_area_size(30)
        .y_label_area_size(64)
        .right_y_label_area_size(70)
        .build_cartesian_2d(BucketAxis { end: nf, ticks }, 0f64..y_top)?
        .set_secondary_coord(0f64..nf, 0f64..conv_top);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(GRID.stroke_width(1))
        .axis_style(MUTED.stroke_width(1))
        .y_labels(8)
        .x_label_formatter(&label_of)
        .y_label_formatter(&|v| format!("{}", v.round() as i64))
        .label_style(style(12.0, INK))
        .axis_desc_style(style(13.0, INK))
        .y_desc(format!(
            "Visitors in / transactions {}",
            unit(report.interval)
        ))
        .draw()?;
    chart
        .configure_secondary_axes()
        .axis_style(MUTED.stroke_width(1))
        .y_labels(6)
        .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
        .label_style(style(12.0, CONVERSION))
        .axis_desc_style(style(13.0, CONVERSION))
        .y_desc("Conversion")
        .draw()?;

    // Missing data: shaded and hatched behind the bars, labelled in the headroom.
    let spans = missing_spans(buckets);
    for s in &spans {
        let (x0, y0) = chart.backend_coord(&(s.first as f64, y_top));
        let (x1, y1) = chart.backend_coord(&(s.end as f64, 0.0));
        root.draw(&Rectangle::new([(x0, y0), (x1, y1)], MISSING_FILL.filled()))?;
        hatch(root, (x0, y0), (x1, y1))?;
    }
    let left = 0.12;
    let right = 0.88;
    let mid = 0.5;
    chart.draw_series(buckets.iter().enumerate().map(|(i, b)| {
        let x = i as f64;
        Rectangle::new(
            [(x + left, 0.0), (x + mid, b.visitors_in as f64)],
            VISITORS.filled(),
        )
    }))?;
    chart.draw_series(buckets.iter().enumerate().map(|(i, b)| {
        let x = i as f64;
        Rectangle::new(
            [(x + mid, 0.0), (x + right, b.transactions as f64)],
            TRANSACTIONS.filled(),
        )
    }))?;
    if n <= 36 {
        let value = style(11.0, INK).pos(Pos::new(HPos::Center, VPos::Bottom));
        for (i, b) in buckets.iter().enumerate() {
            let x = i as f64;
            for (count, at) in [
                (b.visitors_in, x + (left + mid) / 2.0),
                (b.transactions, x + (mid + right) / 2.0),
            ] {
                if count > 0 {
                    let (px, py) = chart.backend_coord(&(at, count as f64));
                    root.draw(&Text::new(count.to_string(), (px, py - 2), value.clone()))?;
                }
            }
        }
    }
    for s in &spans {
        let label = s.short_label();
        let (x0, top) = chart.backend_coord(&(s.first as f64, y_top));
        let (x1, _) = chart.backend_coord(&(s.end as f64, y_top));
        if x1 - x0 >= text_width(label, 10.0) + 4 {
            root.draw(&Text::new(
                label,
                ((x0 + x1) / 2, top + 5),
                style(10.0, MUTED).pos(Pos::new(HPos::Center, VPos::Top)),
            ))?;
        } else {
            root.draw(&Text::new(
                label,
                ((x0 + x1) / 2, top + 5),
                style(10.0, MUTED)
                    .transform(FontTransform::Rotate90)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            ))?;
        }
    }
    // Conversion: a line through the buckets that have one, broken where none.
    let points: Vec<Option<(f64, f64)>> = buckets
        .iter()
        .enumerate()
        .map(|(i, b)| b.conversion.map(|c| (i as f64 + 0.5, c.min(conv_top))))
        .collect();
    for run in points.split(Option::is_none) {
        let run: Vec<(f64, f64)> = run.iter().flatten().copied().collect();
        if run.len() > 1 {
            chart.draw_secondary_series(LineSeries::new(run, CONVERSION.stroke_width(2)))?;
        }
    }
    // A bucket with missing data has a hollow dot: its conversion is not to be trusted.
    chart.draw_secondary_series(points.iter().zip(buckets).filter_map(|(p, b)| {
        p.map(|p| {
            let style = if b.missing_data {
                WHITE.filled()
            } else {
                CONVERSION.filled()
            };
            Circle::new(p, 4, style)
        })
    }))?;
    chart.draw_secondary_series(
        points
            .iter()
            .zip(buckets)
            .filter(|(_, b)| b.missing_data)
            .filter_map(|(p, _)| p.map(|p| Circle::new(p, 4, CONVERSION.stroke_width(2)))),
    )?;

    // Dates under the hour labels: at every UTC midnight, and at the start unless a midnight
    // follows too closely for both to be read.
    if report.interval != Interval::Day {
        let (_, axis_y) = chart.backend_coord(&(0.0, 0.0));
        let starts: Vec<(usize, i64)> = (0..n).map(|i| (i, start_of(i))).collect();
        let midnights: Vec<(usize, i64)> = starts
            .iter()
            .copied()
            .filter(|(_, at)| at.rem_euclid(crate::storage::DAY_MS) == 0)
            .collect();
        let mut labels = midnights.clone();
        let first = day_label(report.from.0);
        let room =
            |i: usize| chart.backend_coord(&(i as f64, 0.0)).0 - chart.backend_coord(&(0.0, 0.0)).0;
        let fits = midnights
            .first()
            .is_none_or(|(i, _)| *i == 0 || room(*i) >= text_width(&first, 12.0) + 12);
        if fits && midnights.first().is_none_or(|(i, _)| *i != 0) {
            labels.insert(0, (0, report.from.0));
        }
        for (i, at) in labels {
            let (px, _) = chart.backend_coord(&(i as f64, 0.0));
            root.draw(&Text::new(
                day_label(at),
                (px, axis_y + 24),
                bold(12.0, INK).pos(Pos::new(HPos::Left, VPos::Top)),
            ))?;
        }
    }

    // ---- footer: the missing periods in words ----
    let footer_y = i32::try_from(HEIGHT - FOOTER + 14).unwrap_or(560);
    if spans.is_empty() {
        root.draw(&Text::new(
            "Complete: every 15-minute interval was reported by every camera.",
            (24, footer_y),
            style(12.0, MUTED),
        ))?;
    } else {
        let per_line = usize::try_from((w - 48) / 7).unwrap_or(80).max(40);
        let mut lines: Vec<String> = vec![
            "Shaded, missing data (visitors there are a lower bound, hollow dots an unreliable conversion): "
                .to_owned(),
        ];
        let mut shown = 0;
        for s in &spans {
            let piece = s.description(buckets);
            let Some(line) = lines.last_mut() else { break };
            let sep = if line.ends_with(": ") { "" } else { " · " };
            if line.chars().count() + sep.len() + piece.chars().count() <= per_line {
                line.push_str(sep);
                line.push_str(&piece);
            } else if lines.len() < 2 {
                lines.push(piece);
            } else {
                break;
            }
            shown += 1;
        }
        if shown < spans.len()
            && let Some(line) = lines.last_mut()
        {
            line.push_str(&format!(" · and {} more", spans.len() - shown));
        }
        for (k, line) in lines.iter().enumerate() {
            root.draw(&Text::new(
                line.clone(),
                (24, footer_y + 18 * k as i32),
                style(12.0, MUTED),
            ))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::footfall::FootfallReport;
    use crate::storage::{FootfallQuery, FootfallTally, Store};
    use aisle_protocol::{Currency, StoreId, UtcMillis};

    const H: i64 = 3_600_000;
    /// 2026-11-22T00:00:00Z.
    const DAY0: i64 = 1_795_305_600_000;

    /// A day at a store open 08:00 to 21:00, a camera offline 13:00-15:00 and nothing at all
    /// reported at 18:00.
    fn day(from: i64, hours: i64) -> FootfallReport {
        let q = FootfallQuery::new(UtcMillis(from), UtcMillis(from + hours * H), H).unwrap();
        let mut tallies = Vec::new();
        for i in 0..hours {
            let start = from + i * H;
            let hour = (start / H) % 24;
            let open = (8..21).contains(&hour);
            let entered = if open {
                (40.0 + 60.0 * ((hour as f64 - 8.0) * 0.5).sin().abs()) as u64 + (i as u64 % 7)
            } else {
                0
            };
            let mut t = FootfallTally {
                start: UtcMillis(start),
                entered,
                exited: entered,
                slots_reported: 4,
                events: 4,
                transactions: entered / 4 + u64::from(open),
                ..FootfallTally::default()
            };
            if hour == 13 || hour == 14 {
                t.cameras_missing = vec!["door-east".into()];
                t.entered /= 2;
            }
            if hour == 18 {
                t.slots_reported = 0;
                t.entered = 0;
            }
            tallies.push(t);
        }
        let store = Store {
            id: StoreId::parse("S001").unwrap(),
            name: "Riverside <Mall> & Co".into(),
            currency: Currency::parse("CNY").unwrap(),
            created_at: UtcMillis(0),
        };
        FootfallReport::build(&store, Interval::Hour, &q, &tallies)
    }

    /// Set AISLE_CHART_DIR=/tmp to look at the charts this test draws (footfall-day.svg and
    /// footfall-week.svg).
    #[test]
    fn a_day_is_drawn_with_labels_legend_and_shading() {
        let svg = render_svg(&day(DAY0, 24)).unwrap();
        let week = render_svg(&day(DAY0 - 3 * H, MAX_CHART_BUCKETS)).unwrap();
        if let Ok(dir) = std::env::var("AISLE_CHART_DIR") {
            let dir = std::path::Path::new(&dir);
            std::fs::write(dir.join("footfall-day.svg"), &svg).unwrap();
            std::fs::write(dir.join("footfall-week.svg"), &week).unwrap();
        }
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for text in [
            "Riverside &lt;Mall&gt; &amp; Co (S001)",
            "Visitors in",
            "Transactions",
            "Conversion",
            "No data / camera offline",
            "08:00",
            "23:00",
            "Sun 22 Nov 2026",
            "camera offline: door-east",
            "no footfall reported",
        ] {
            assert!(svg.contains(text), "missing {text}");
        }
        assert!(week.contains("Sat 28 Nov 2026"));
    }

    #[test]
    fn odd_reports_are_drawn_without_panicking() {
        let mut empty = day(DAY0, 1);
        empty.buckets.clear();
        assert!(render_svg(&empty).unwrap().contains("</svg>"));
        let mut huge = day(DAY0, 3);
        for b in &mut huge.buckets {
            b.visitors_in = u64::MAX;
            b.transactions = u64::MAX;
            b.conversion = Some(f64::MAX);
            b.cameras_missing = vec!["\u{0}<cam>\u{FFFE}".repeat(40)];
            b.missing_data = true;
        }
        huge.store_name = "\u{1b}[31m".repeat(100);
        let svg = render_svg(&huge).unwrap();
        assert!(!svg.contains('\u{0}') && !svg.contains('\u{1b}') && !svg.contains('\u{FFFE}'));
        assert!(svg.contains("&lt;cam&gt;"));
        let mut quarters = day(DAY0, 2);
        quarters.interval = Interval::Quarter;
        let mut days = day(DAY0, 2);
        days.interval = Interval::Day;
        assert!(render_svg(&quarters).is_ok() && render_svg(&days).is_ok());
    }

    #[test]
    fn text_is_made_xml_safe_and_short() {
        assert_eq!(clean("a\u{1}b\u{FFFF}c", 10), "a b c");
        assert_eq!(clean("abcdef", 4), "abc…");
    }

    #[test]
    fn axis_tops_are_nice() {
        assert_eq!(nice_ceil(0.0), 1.0);
        assert_eq!(nice_ceil(7.0), 10.0);
        assert_eq!(nice_ceil(21.0), 25.0);
        assert_eq!(nice_ceil(130.0), 200.0);
        assert_eq!(nice_ceil(f64::NAN), 1.0);
    }
}
