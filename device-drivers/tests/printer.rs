//! Receipts: the ESC/POS bytes of sample receipts against golden files, and the serial printer
//! driver against a printer on a real pseudo-terminal (byte-exact delivery, DLE EOT status,
//! paper out, switched off, unplugged and plugged back).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aisle_drivers::backoff::Backoff;
use aisle_drivers::printer::{
    LineWidth, PrintError, PrinterConfig, Quantity, Receipt, ReceiptLayout, ReceiptLine,
    ReceiptPrinter, TextEncoding, VatLine, encode_receipt, receipt_text,
};
use aisle_drivers::serial::SerialSettings;
use aisle_drivers::upos::DeviceStatus;
use aisle_protocol::{Currency, Money};
use serialport::{SerialPort, TTYPort};

fn money(minor: i64, cur: &str) -> Money {
    Money::new(minor, Currency::parse(cur).unwrap())
}

fn sample(cur: &str) -> Receipt {
    let m = |minor| money(minor, cur);
    Receipt {
        header: vec!["Aisle Market".into(), "88 Huaihai Road, Shanghai".into()],
        lines: vec![
            ReceiptLine {
                name: "Oat milk 1L".into(),
                quantity: Quantity::Count(2),
                unit_price: m(1280),
                amount: m(2560),
            },
            ReceiptLine {
                name: "Bananas".into(),
                quantity: Quantity::Grams(512),
                unit_price: m(990),
                amount: m(507),
            },
            ReceiptLine {
                name: "Crème fraîche épaisse 30% bio, grand pot familial".into(),
                quantity: Quantity::Count(1),
                unit_price: m(1850),
                amount: m(1850),
            },
            ReceiptLine {
                name: "Łódź pierogi €".into(),
                quantity: Quantity::Count(1),
                unit_price: m(999),
                amount: m(999),
            },
        ],
        total: m(5916),
        vat: vec![
            VatLine {
                label: "VAT 13%".into(),
                net: m(3832),
                vat: m(498),
            },
            VatLine {
                label: "VAT 9%".into(),
                net: m(1455),
                vat: m(131),
            },
        ],
        payments: vec![("Card ****4242 auth A00001".into(), m(5916))],
        footer: vec!["Sale S-0193 lane 2".into(), "2026-12-05 11:40 UTC".into()],
        link: Some("https://r.aisle.example/S-0193".into()),
    }
}

/// Bytes as text a reviewer can read: printable ASCII as is, the rest as `\xNN`, a newline
/// after each LF.
fn escaped(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes {
        match b {
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(char::from(b)),
            b'\n' => s.push_str("\\n\n"),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

fn golden(name: &str, got: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).unwrap();
    }
    let want = std::fs::read_to_string(&path).expect("golden file (UPDATE_GOLDEN=1 writes it)");
    assert_eq!(got, want, "{} differs", path.display());
}

#[test]
fn sample_receipts_match_their_golden_bytes() {
    for (name, cur, width, enc) in [
        (
            "receipt_42_cp858",
            "CNY",
            LineWidth::Cols42,
            TextEncoding::Cp858,
        ),
        (
            "receipt_32_cp858",
            "EUR",
            LineWidth::Cols32,
            TextEncoding::Cp858,
        ),
        (
            "receipt_48_jpy",
            "JPY",
            LineWidth::Cols48,
            TextEncoding::Cp858,
        ),
    ] {
        let bytes = encode_receipt(&sample(cur), &ReceiptLayout::new(width, enc)).unwrap();
        assert!(
            !bytes.windows(2).any(|w| w == [0x10, 0x04]),
            "no DLE EOT inside a receipt"
        );
        golden(&format!("{name}.escpos.txt"), &escaped(&bytes));
        golden(&format!("{name}.txt"), &receipt_text(&bytes, enc));
    }
}

#[test]
fn chinese_names_in_gbk_take_two_columns_and_long_names_are_cut() {
    let mut r = sample("CNY");
    r.lines = vec![
        ReceiptLine {
            name: "有机燕麦奶 1L 无糖".into(),
            quantity: Quantity::Count(1),
            unit_price: money(1280, "CNY"),
            amount: money(1280, "CNY"),
        },
        ReceiptLine {
            // Three full lines and more: cut at NAME_LINES with '~'.
            name: "一二三四五六七八九十一二三四五六七八九十一二三四五六七八九十一二三四五六七八九十一二三四五六七八九十".into(),
            quantity: Quantity::Count(3),
            unit_price: money(100, "CNY"),
            amount: money(300, "CNY"),
        },
        ReceiptLine {
            name: "Emoji 🍌 and Łódź".into(),
            quantity: Quantity::Count(1),
            unit_price: money(5, "CNY"),
            amount: money(5, "CNY"),
        },
    ];
    let layout = ReceiptLayout::new(LineWidth::Cols32, TextEncoding::Gbk);
    let bytes = encode_receipt(&r, &layout).unwrap();
    assert!(
        bytes.starts_with(&[0x1b, b'@', 0x1c, b'&']),
        "FS & selects Chinese mode"
    );
    let text = receipt_text(&bytes, TextEncoding::Gbk);
    let lines: Vec<&str> = text.lines().collect();
    // 7 ideographs (14 columns) and " 1L " beside "12.80" in 32 columns.
    assert!(
        lines.contains(&"有机燕麦奶 1L 无糖         12.80"),
        "{text}"
    );
    assert!(
        lines.contains(&"一二三四五六七八九十一二三四五六"),
        "{text}"
    );
    assert!(lines.contains(&"三四五六七八九十一二三四五六七~"), "{text}");
    assert!(
        lines.contains(&"  3 x 1.00                  3.00"),
        "{text}"
    );
    // Outside GBK's two-byte range (emoji) and outside GBK (Ł, ź): '?', never a wrong character.
    assert!(lines.contains(&"Emoji ? and ?ód?           0.05"), "{text}");
    for l in &lines {
        let cols: usize = l
            .chars()
            .filter(|c| *c != '<')
            .map(|c| if c.is_ascii() { 1 } else { 2 })
            .sum();
        assert!(
            l.starts_with('<') || cols <= 32,
            "{l:?} is wider than 32 columns"
        );
    }
}

#[test]
fn bad_receipts_are_refused_with_a_reason() {
    let layout = ReceiptLayout::new(LineWidth::Cols32, TextEncoding::Cp858);
    let mut r = sample("CNY");
    r.payments[0].1 = money(5916, "EUR");
    let e = encode_receipt(&r, &layout).unwrap_err();
    assert!(
        matches!(&e, PrintError::Receipt(m) if m.contains("one currency")),
        "{e}"
    );

    let mut r = sample("CNY");
    r.link = Some(format!("https://r.example/{}", "x".repeat(500)));
    assert!(encode_receipt(&r, &layout).is_err());
    r.link = Some("https://r.example/with space".into());
    assert!(encode_receipt(&r, &layout).is_err());

    // The widest amount (i64::MAX minor units) and a label wider than the paper still fit.
    let mut r = sample("CNY");
    r.total = money(i64::MAX, "CNY");
    assert!(
        encode_receipt(&r, &layout).is_ok(),
        "20 digits still fit 32 columns"
    );
    let narrow = ReceiptLayout::new(LineWidth::Cols32, TextEncoding::Cp858);
    r.payments[0].0 = "x".repeat(200);
    let text = receipt_text(&encode_receipt(&r, &narrow).unwrap(), TextEncoding::Cp858);
    assert!(
        text.lines()
            .all(|l| l.starts_with('<') || l.chars().count() <= 32)
    );
}

#[test]
fn the_text_decoder_survives_any_bytes() {
    let mut seed = 7u64;
    for _ in 0..200 {
        let bytes: Vec<u8> = (0..(seed % 300))
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) as u8
            })
            .collect();
        let _ = receipt_text(&bytes, TextEncoding::Gbk);
        let _ = receipt_text(&bytes, TextEncoding::Cp858);
    }
}

// ---------------------------------------------------------------------------------------------
// The driver against a printer on a pseudo-terminal.

const WAIT: Duration = Duration::from_secs(10);

/// A thermal printer behind a pty, published under a link path like a udev name: it keeps
/// what it is sent and answers DLE EOT 1, 2 and 4 from its current state.
struct FakePrinter {
    link: PathBuf,
    port: Arc<Mutex<Option<(TTYPort, TTYPort)>>>,
    received: Arc<Mutex<Vec<u8>>>,
    /// DLE EOT 1, 2, 4 answers; 0 means silent.
    status: Arc<[AtomicU8; 3]>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const READY: [u8; 3] = [0x12, 0x12, 0x12];

fn plug(link: &Path) -> (TTYPort, TTYPort) {
    let (mut master, slave) = TTYPort::pair().expect("pty pair");
    master.set_timeout(Duration::from_millis(10)).unwrap();
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(slave.name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
    (master, slave)
}

impl FakePrinter {
    fn start(dir: &Path) -> FakePrinter {
        let link = dir.join("printer");
        let port = Arc::new(Mutex::new(Some(plug(&link))));
        let received = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(READY.map(AtomicU8::new));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, r, s, st) = (port.clone(), received.clone(), status.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Bytes of a DLE EOT seen so far (it may span reads).
            let mut pending: Vec<u8> = Vec::new();
            let mut buf = [0u8; 4096];
            while !st.load(Ordering::Relaxed) {
                let mut guard = p.lock().unwrap();
                let Some((master, _)) = guard.as_mut() else {
                    drop(guard);
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                // Timeouts read as nothing.
                let n = master.read(&mut buf).unwrap_or_default();
                for &b in &buf[..n] {
                    pending.push(b);
                    match pending.as_slice() {
                        [0x10] | [0x10, 0x04] => continue,
                        [0x10, 0x04, q] => {
                            let i = match q {
                                1 => Some(0),
                                2 => Some(1),
                                4 => Some(2),
                                _ => None,
                            };
                            if let Some(a) = i.map(|i| s[i].load(Ordering::Relaxed))
                                && a != 0
                            {
                                let _ = master.write_all(&[a]);
                            }
                        }
                        other => r.lock().unwrap().extend_from_slice(other),
                    }
                    pending.clear();
                }
                drop(guard);
                if n == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        FakePrinter {
            link,
            port,
            received,
            status,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, answers: [u8; 3]) {
        for (a, v) in self.status.iter().zip(answers) {
            a.store(v, Ordering::Relaxed);
        }
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.received.lock().unwrap())
    }

    /// As udev does: the name goes first, then the device.
    fn unplug(&self) {
        let _ = std::fs::remove_file(&self.link);
        *self.port.lock().unwrap() = None;
    }

    fn plug(&self) {
        *self.port.lock().unwrap() = Some(plug(&self.link));
    }
}

impl Drop for FakePrinter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn printer(fake: &FakePrinter) -> ReceiptPrinter {
    let mut c = PrinterConfig::new(
        fake.link.display().to_string(),
        SerialSettings::default_8n1(),
    );
    c.answer_timeout = Duration::from_millis(300);
    c.poll = Duration::from_millis(50);
    c.port.backoff = Backoff {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(100),
    };
    ReceiptPrinter::start(c).unwrap().0
}

fn wait_for(p: &ReceiptPrinter, what: &str, pred: impl Fn(&DeviceStatus) -> bool) {
    let until = Instant::now() + WAIT;
    while !pred(&p.status().device) {
        assert!(Instant::now() < until, "never {what}: {:?}", p.status());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn receipt_bytes() -> Vec<u8> {
    encode_receipt(
        &sample("CNY"),
        &ReceiptLayout::new(LineWidth::Cols42, TextEncoding::Cp858),
    )
    .unwrap()
}

#[test]
fn a_receipt_arrives_byte_exact_over_a_pty() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakePrinter::start(dir.path());
    let p = printer(&fake);
    wait_for(&p, "online", |s| *s == DeviceStatus::Online);
    let bytes = receipt_bytes();
    p.print(bytes.clone(), WAIT).unwrap();
    assert_eq!(escaped(&fake.take()), escaped(&bytes));
    // Ten in a row, still exact (no status byte or query mixed in).
    let many: Vec<u8> = (0..10).flat_map(|_| bytes.clone()).collect();
    for _ in 0..10 {
        p.print(bytes.clone(), WAIT).unwrap();
    }
    assert_eq!(fake.take(), many);
}

#[test]
fn paper_out_cover_open_and_silence_refuse_the_receipt_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakePrinter::start(dir.path());
    let p = printer(&fake);
    wait_for(&p, "online", |s| *s == DeviceStatus::Online);

    // Paper roll sensor: near end (bits 2, 3) prints, and says so.
    fake.set([0x12, 0x12, 0x1e]);
    p.print(receipt_bytes(), WAIT).unwrap();
    assert!(p.status().paper_near_end);
    fake.take();

    // Offline (bit 3), cause: paper end (bit 5).
    fake.set([0x1a, 0x32, 0x72]);
    assert_eq!(p.print(receipt_bytes(), WAIT), Err(PrintError::PaperOut));
    // Cover open (cause bit 2).
    fake.set([0x1a, 0x16, 0x12]);
    let e = p.print(receipt_bytes(), WAIT).unwrap_err();
    assert_eq!(e.to_string(), "the printer is offline: the cover is open");
    // Switched off: no answer at all.
    fake.set([0, 0, 0]);
    let e = p.print(receipt_bytes(), WAIT).unwrap_err();
    assert!(
        matches!(&e, PrintError::Offline(m) if m.contains("no answer")),
        "{e}"
    );
    assert!(matches!(p.status().device, DeviceStatus::Offline { .. }));
    assert!(
        fake.take().is_empty(),
        "nothing printed while it could not print"
    );

    // Back: the poll sees it, and the next receipt prints.
    fake.set(READY);
    wait_for(&p, "online again", |s| *s == DeviceStatus::Online);
    p.print(receipt_bytes(), WAIT).unwrap();
    assert_eq!(fake.take(), receipt_bytes());
}

#[test]
fn an_unplugged_printer_refuses_at_once_and_prints_again_once_plugged_back() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakePrinter::start(dir.path());
    let p = printer(&fake);
    wait_for(&p, "online", |s| *s == DeviceStatus::Online);
    fake.unplug();
    wait_for(&p, "disconnected", |s| {
        matches!(s, DeviceStatus::Disconnected { .. })
    });
    let started = Instant::now();
    let e = p.print(receipt_bytes(), WAIT).unwrap_err();
    assert!(matches!(e, PrintError::Disconnected(_)), "{e}");
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "refused at once"
    );

    fake.plug();
    wait_for(&p, "online after replug", |s| *s == DeviceStatus::Online);
    p.print(receipt_bytes(), WAIT).unwrap();
    // Only the receipt printed after the replug: the refused one was not queued.
    assert_eq!(fake.take(), receipt_bytes());
}
