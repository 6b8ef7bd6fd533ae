//! ESC/POS receipts, pure: a [`Receipt`] in, the bytes a thermal printer prints out.
//!
//! * Layout in columns of the printer's font A (32 on 58 mm paper, 42 or 48 on 80 mm).
//!   Header and footer lines are word-wrapped; a product name that does not fit beside its
//!   amount goes on its own lines (at most [`NAME_LINES`], the last cut with `~`); amounts
//!   are never cut: an amount wider than the paper is an error, not a wrong receipt.
//! * Text: [`TextEncoding::Cp858`] (ESC t 19, Western European with €) prints Latin text; a
//!   character the code page lacks prints as `?` (deliberately: never a wrong letter from another
//!   code page). [`TextEncoding::Gbk`] (FS &, Chinese-model printers) prints Chinese product names
//!   in GB 18030's two-byte range, two columns each; anything else prints as `?`.
//! * Money is integer minor units printed with the currency's exponent ([`Money::decimal`]).
//! * The digital receipt link is a QR code (GS ( k, model 2, error correction M).
//! * The bytes never contain `DLE EOT` (0x10 0x04): printers answer it in real time even inside
//!   data, so the driver's status queries stay unambiguous.
use aisle_protocol::Money;

use super::PrintError;

/// A product name takes at most this many lines.
pub const NAME_LINES: usize = 3;
/// Longest digital receipt link (bytes of ASCII).
pub const MAX_LINK: usize = 400;
/// Most sale lines on one receipt.
pub const MAX_LINES: usize = 500;

const ESC: u8 = 0x1b;
const GS: u8 = 0x1d;
const FS: u8 = 0x1c;
const LF: u8 = b'\n';

/// Columns of font A.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "u16", into = "u16")]
pub enum LineWidth {
    /// 58 mm paper.
    Cols32,
    /// 80 mm paper, 576 dots with a 13.7-dot font (Epson TM-T88 default).
    Cols42,
    /// 80 mm paper, 12-dot font.
    Cols48,
}

impl LineWidth {
    pub fn columns(self) -> usize {
        match self {
            LineWidth::Cols32 => 32,
            LineWidth::Cols42 => 42,
            LineWidth::Cols48 => 48,
        }
    }
}

impl TryFrom<u16> for LineWidth {
    type Error = String;
    fn try_from(n: u16) -> Result<Self, String> {
        match n {
            32 => Ok(LineWidth::Cols32),
            42 => Ok(LineWidth::Cols42),
            48 => Ok(LineWidth::Cols48),
            _ => Err(format!("line width {n}: 32, 42 or 48 columns")),
        }
    }
}

impl From<LineWidth> for u16 {
    fn from(w: LineWidth) -> u16 {
        // Columns are at most 48.
        u16::from(u8::try_from(w.columns()).unwrap_or(48))
    }
}

/// How text becomes bytes (see the [module](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TextEncoding {
    /// Code page 858 (ESC t 19).
    Cp858,
    /// Chinese character mode (FS &), GBK two-byte characters.
    Gbk,
}

/// One printable character: its bytes and the columns it takes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Glyph {
    bytes: Vec<u8>,
    cols: usize,
}

fn glyph(c: char, enc: TextEncoding) -> Glyph {
    let q = Glyph {
        bytes: vec![b'?'],
        cols: 1,
    };
    if c == ' ' || c.is_ascii_graphic() {
        return Glyph {
            bytes: vec![c as u8],
            cols: 1,
        };
    }
    if c.is_whitespace() {
        return Glyph {
            bytes: vec![b' '],
            cols: 1,
        };
    }
    match enc {
        TextEncoding::Cp858 => cp858(c).map_or(q, |b| Glyph {
            bytes: vec![b],
            cols: 1,
        }),
        TextEncoding::Gbk => {
            let mut buf = [0u8; 4];
            let (bytes, _, unmappable) = encoding_rs::GBK.encode(c.encode_utf8(&mut buf));
            // Only the two-byte range: four-byte GB 18030 sequences are not in GBK printers' fonts.
            if unmappable || bytes.len() != 2 {
                q
            } else {
                Glyph {
                    bytes: bytes.into_owned(),
                    cols: 2,
                }
            }
        }
    }
}

/// Code page 858's upper half (128..=255), in order.
const CP858_HIGH: &str = "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜø£Ø×ƒáíóúñÑªº¿®¬½¼¡«»░▒▓│┤ÁÂÀ©╣║╗╝¢¥┐└┴┬├─┼ãÃ╚╔╩╦╠═╬¤ðÐÊËÈ€ÍÎÏ┘┌█▄¦Ì▀ÓßÔÒõÕµþÞÚÛÙýÝ¯´\u{ad}±‗¾¶§÷¸°¨·¹³²■\u{a0}";

fn cp858(c: char) -> Option<u8> {
    CP858_HIGH
        .chars()
        .position(|h| h == c)
        .and_then(|i| u8::try_from(i + 128).ok())
}

fn glyphs(s: &str, enc: TextEncoding) -> Vec<Glyph> {
    s.chars()
        .filter(|c| !c.is_control() || *c == '\t')
        .map(|c| glyph(c, enc))
        .collect()
}

fn cols(g: &[Glyph]) -> usize {
    g.iter().map(|g| g.cols).sum()
}

/// Word-wraps to `width` columns; a word longer than a line is broken.
fn wrap(text: &[Glyph], width: usize) -> Vec<Vec<Glyph>> {
    let mut lines = Vec::new();
    let mut line: Vec<Glyph> = Vec::new();
    let is_space = |g: &Glyph| g.bytes == b" ";
    let mut words: Vec<Vec<Glyph>> = Vec::new();
    let mut word = Vec::new();
    for g in text {
        if is_space(g) {
            if !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
        } else {
            word.push(g.clone());
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    for w in words {
        let sep = usize::from(!line.is_empty());
        if cols(&line) + sep + cols(&w) <= width {
            if sep == 1 {
                line.push(Glyph {
                    bytes: vec![b' '],
                    cols: 1,
                });
            }
            line.extend(w);
            continue;
        }
        if !line.is_empty() {
            lines.push(std::mem::take(&mut line));
        }
        for g in w {
            if cols(&line) + g.cols > width {
                lines.push(std::mem::take(&mut line));
            }
            line.push(g);
        }
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// Wraps to at most `max` lines; the last one kept ends in `~` when text was cut.
fn wrap_at_most(text: &[Glyph], width: usize, max: usize) -> Vec<Vec<Glyph>> {
    let mut lines = wrap(text, width);
    if lines.len() > max {
        lines.truncate(max);
        if let Some(last) = lines.last_mut() {
            while cols(last) + 1 > width {
                last.pop();
            }
            last.push(Glyph {
                bytes: vec![b'~'],
                cols: 1,
            });
        }
    }
    lines
}

/// How much of a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantity {
    Count(u32),
    /// Weighed: grams, printed as kg with three decimals.
    Grams(u32),
}

/// One sale line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptLine {
    pub name: String,
    pub quantity: Quantity,
    /// Per item, or per kg for a weighed product.
    pub unit_price: Money,
    /// What the line costs (as the ledger priced it; not recomputed here).
    pub amount: Money,
}

/// One VAT rate's share of the total.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VatLine {
    /// As printed, e.g. `VAT 13%`.
    pub label: String,
    pub net: Money,
    pub vat: Money,
}

/// A receipt as the lane knows it after the sale committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// Store name (printed large) and then address lines.
    pub header: Vec<String>,
    pub lines: Vec<ReceiptLine>,
    pub total: Money,
    pub vat: Vec<VatLine>,
    /// How it was paid: a label (`Card ****4242 auth A00001`) and the amount.
    pub payments: Vec<(String, Money)>,
    /// Sale id, lane, time (UTC or as the store prints it).
    pub footer: Vec<String>,
    /// The digital receipt link, printed as a QR code.
    pub link: Option<String>,
}

/// The printer's paper and characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiptLayout {
    pub width: LineWidth,
    pub encoding: TextEncoding,
    /// QR module size in dots (1 to 16).
    pub qr_module: u8,
}

impl ReceiptLayout {
    pub fn new(width: LineWidth, encoding: TextEncoding) -> Self {
        ReceiptLayout {
            width,
            encoding,
            qr_module: 6,
        }
    }
}

/// Alignment (ESC a n).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left = 0,
    Centre = 1,
    Right = 2,
}

/// A byte writer for the ESC/POS commands receipts use.
#[derive(Clone, Debug, Default)]
pub struct EscPos {
    out: Vec<u8>,
}

impl EscPos {
    pub fn new() -> Self {
        EscPos::default()
    }
    /// ESC @: reset the printer's modes.
    pub fn init(&mut self) -> &mut Self {
        self.raw(&[ESC, b'@'])
    }
    /// ESC t 19 (CP858), or FS & (Chinese character mode).
    pub fn encoding(&mut self, e: TextEncoding) -> &mut Self {
        match e {
            TextEncoding::Cp858 => self.raw(&[FS, b'.', ESC, b't', 19]),
            TextEncoding::Gbk => self.raw(&[FS, b'&']),
        }
    }
    /// ESC E n.
    pub fn bold(&mut self, on: bool) -> &mut Self {
        self.raw(&[ESC, b'E', u8::from(on)])
    }
    /// GS ! n: double height, normal width.
    pub fn double_height(&mut self, on: bool) -> &mut Self {
        self.raw(&[GS, b'!', if on { 0x01 } else { 0x00 }])
    }
    /// ESC a n.
    pub fn align(&mut self, a: Align) -> &mut Self {
        self.raw(&[ESC, b'a', a as u8])
    }
    fn glyph_line(&mut self, line: &[Glyph]) -> &mut Self {
        for g in line {
            self.out.extend_from_slice(&g.bytes);
        }
        self.raw(&[LF])
    }
    /// ESC d n: feed n lines.
    pub fn feed(&mut self, n: u8) -> &mut Self {
        self.raw(&[ESC, b'd', n])
    }
    /// GS ( k: a QR code of `data` (model 2, error correction M), printed.
    pub fn qr(&mut self, data: &[u8], module: u8) -> Result<&mut Self, PrintError> {
        if data.is_empty() || data.len() > MAX_LINK || !data.iter().all(u8::is_ascii_graphic) {
            return Err(PrintError::Receipt(format!(
                "the receipt link must be 1 to {MAX_LINK} printable ASCII characters"
            )));
        }
        let n = u16::try_from(data.len() + 3)
            .unwrap_or(u16::MAX)
            .to_le_bytes();
        self.raw(&[GS, b'(', b'k', 4, 0, b'1', b'A', b'2', 0]);
        self.raw(&[GS, b'(', b'k', 3, 0, b'1', b'C', module.clamp(1, 16)]);
        self.raw(&[GS, b'(', b'k', 3, 0, b'1', b'E', b'1']);
        self.raw(&[GS, b'(', b'k', n[0], n[1], b'1', b'P', b'0']);
        self.raw(data);
        Ok(self.raw(&[GS, b'(', b'k', 3, 0, b'1', b'Q', b'0']))
    }
    /// GS V 65 n: feed to the cutter (plus n dots) and cut.
    pub fn cut(&mut self) -> &mut Self {
        self.raw(&[GS, b'V', 65, 3])
    }
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.out.extend_from_slice(b);
        self
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.out
    }
}

/// `left` then `right` aligned to the right edge; `left` wraps above when both do not fit.
fn two_columns(
    p: &mut EscPos,
    left: &[Glyph],
    right: &str,
    width: usize,
    max_left_lines: usize,
) -> Result<(), PrintError> {
    let right = glyphs(right, TextEncoding::Cp858);
    let rc = cols(&right);
    if rc > width {
        return Err(PrintError::Receipt(format!(
            "an amount of {rc} characters does not fit {width} columns"
        )));
    }
    let room = width.saturating_sub(rc + 1);
    let mut lines = if room > 0 && cols(left) <= room {
        vec![left.to_vec()]
    } else {
        wrap_at_most(left, width, max_left_lines)
    };
    let last_fits = lines.last().is_some_and(|l| cols(l) <= room);
    let last = if last_fits {
        lines.pop().unwrap_or_default()
    } else {
        Vec::new()
    };
    for l in &lines {
        p.glyph_line(l);
    }
    let mut line = last;
    let pad = width - rc - cols(&line);
    line.extend((0..pad).map(|_| Glyph {
        bytes: vec![b' '],
        cols: 1,
    }));
    line.extend(right);
    p.glyph_line(&line);
    Ok(())
}

fn same_currency(r: &Receipt) -> Result<(), PrintError> {
    let c = r.total.currency;
    let all = r
        .lines
        .iter()
        .flat_map(|l| [l.unit_price, l.amount])
        .chain(r.vat.iter().flat_map(|v| [v.net, v.vat]))
        .chain(r.payments.iter().map(|p| p.1));
    for m in all {
        if m.currency != c {
            return Err(PrintError::Receipt(format!(
                "{m} on a receipt in {c}: one currency per receipt"
            )));
        }
    }
    Ok(())
}

/// The receipt as ESC/POS bytes: init, code page, header, lines, total, VAT, payments, footer,
/// QR link, cut.
pub fn encode_receipt(r: &Receipt, layout: &ReceiptLayout) -> Result<Vec<u8>, PrintError> {
    if r.lines.len() > MAX_LINES {
        return Err(PrintError::Receipt(format!(
            "{} lines: at most {MAX_LINES} per receipt",
            r.lines.len()
        )));
    }
    same_currency(r)?;
    let w = layout.width.columns();
    let enc = layout.encoding;
    let mut p = EscPos::new();
    p.init().encoding(enc).align(Align::Centre);
    for (i, h) in r.header.iter().enumerate() {
        if i == 0 {
            p.bold(true).double_height(true);
        }
        for l in wrap(&glyphs(h, enc), w) {
            p.glyph_line(&l);
        }
        if i == 0 {
            p.double_height(false).bold(false);
        }
    }
    p.align(Align::Left);
    let rule = vec![
        Glyph {
            bytes: vec![b'-'],
            cols: 1
        };
        w
    ];
    p.glyph_line(&rule);
    for line in &r.lines {
        let name = glyphs(&line.name, enc);
        match line.quantity {
            Quantity::Count(1) => {
                two_columns(&mut p, &name, &line.amount.decimal(), w, NAME_LINES)?;
            }
            q => {
                for l in wrap_at_most(&name, w, NAME_LINES) {
                    p.glyph_line(&l);
                }
                let qty = match q {
                    Quantity::Count(n) => format!("  {n} x {}", line.unit_price.decimal()),
                    Quantity::Grams(g) => format!(
                        "  {}.{:03} kg x {}/kg",
                        g / 1000,
                        g % 1000,
                        line.unit_price.decimal()
                    ),
                };
                two_columns(&mut p, &glyphs(&qty, enc), &line.amount.decimal(), w, 1)?;
            }
        }
    }
    p.glyph_line(&rule);
    p.bold(true).double_height(true);
    let total_label = format!("TOTAL {}", r.total.currency);
    two_columns(&mut p, &glyphs(&total_label, enc), &r.total.decimal(), w, 1)?;
    p.double_height(false).bold(false);
    for (label, amount) in &r.payments {
        two_columns(&mut p, &glyphs(label, enc), &amount.decimal(), w, 2)?;
    }
    if !r.vat.is_empty() {
        p.glyph_line(&[]);
        for v in &r.vat {
            let left = format!("{} of {}", v.label, v.net.decimal());
            two_columns(&mut p, &glyphs(&left, enc), &v.vat.decimal(), w, 2)?;
        }
    }
    p.glyph_line(&[]).align(Align::Centre);
    for f in &r.footer {
        for l in wrap(&glyphs(f, enc), w) {
            p.glyph_line(&l);
        }
    }
    if let Some(link) = &r.link {
        p.qr(link.as_bytes(), layout.qr_module)?;
        p.raw(&[LF]);
    }
    p.align(Align::Left).feed(3).cut();
    Ok(p.into_bytes())
}

/// Readable text of what [`encode_receipt`] wrote (for `aisle-sim printer`, logs and tests):
/// text lines as printed (CP858 or GBK decoded), commands as `<name>`. Unknown bytes show as
/// `\xNN`. Bounded by its input; never panics.
pub fn receipt_text(bytes: &[u8], encoding: TextEncoding) -> String {
    let mut out = String::new();
    let mut i = 0;
    let at = |i: usize| bytes.get(i).copied();
    while let Some(b) = at(i) {
        match b {
            LF => {
                out.push('\n');
                i += 1;
            }
            ESC => {
                let (name, len) = match at(i + 1) {
                    Some(b'@') => ("init".to_string(), 2),
                    Some(b'E') => (format!("bold {}", at(i + 2).unwrap_or(0)), 3),
                    Some(b'a') => (format!("align {}", at(i + 2).unwrap_or(0)), 3),
                    Some(b't') => (format!("code page {}", at(i + 2).unwrap_or(0)), 3),
                    Some(b'd') => (format!("feed {}", at(i + 2).unwrap_or(0)), 3),
                    _ => ("esc ?".to_string(), 2),
                };
                out.push_str(&format!("<{name}>"));
                i += len;
            }
            FS => {
                out.push_str(match at(i + 1) {
                    Some(b'&') => "<chinese on>",
                    Some(b'.') => "<chinese off>",
                    _ => "<fs ?>",
                });
                i += 2;
            }
            GS => match at(i + 1) {
                Some(b'!') => {
                    out.push_str(&format!("<size {}>", at(i + 2).unwrap_or(0)));
                    i += 3;
                }
                Some(b'V') => {
                    out.push_str("<cut>");
                    i += 4;
                }
                Some(b'(') if at(i + 2) == Some(b'k') => {
                    let n = usize::from(at(i + 3).unwrap_or(0))
                        | usize::from(at(i + 4).unwrap_or(0)) << 8;
                    let body = bytes
                        .get(i + 5..(i + 5 + n).min(bytes.len()))
                        .unwrap_or(&[]);
                    if body.starts_with(b"1P0") {
                        out.push_str(&format!(
                            "<qr {}>",
                            String::from_utf8_lossy(body.get(3..).unwrap_or(&[]))
                        ));
                    }
                    i += 5 + n;
                }
                _ => {
                    out.push_str("<gs ?>");
                    i += 2;
                }
            },
            0x20..=0x7e => {
                out.push(char::from(b));
                i += 1;
            }
            _ if b < 0x80 => {
                out.push_str(&format!("\\x{b:02x}"));
                i += 1;
            }
            _ => {
                let (c, len) = match encoding {
                    TextEncoding::Cp858 => (
                        CP858_HIGH.chars().nth(usize::from(b & 0x7f)).unwrap_or('?'),
                        1,
                    ),
                    TextEncoding::Gbk => {
                        let pair = bytes.get(i..i + 2).unwrap_or(&[]);
                        let (s, bad) = encoding_rs::GBK.decode_without_bom_handling(pair);
                        match s.chars().next() {
                            Some(c) if !bad && pair.len() == 2 => (c, 2),
                            _ => ('\u{fffd}', 1),
                        }
                    }
                };
                out.push(c);
                i += len;
            }
        }
    }
    out
}
