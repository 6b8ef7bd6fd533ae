//! The real receipt printer driver (`aisle_drivers::printer`) against the printer simulator on a
//! real pseudo-terminal: a receipt arrives byte-exact and reads back as text; paper out refuses
//! it; an unplugged printer refuses at once and prints again once plugged back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use aisle_drivers::backoff::Backoff;
use aisle_drivers::printer::{
    LineWidth, PrintError, PrinterConfig, Quantity, Receipt, ReceiptLayout, ReceiptLine,
    ReceiptPrinter, TextEncoding, encode_receipt, receipt_text,
};
use aisle_drivers::serial::SerialSettings;
use aisle_drivers::upos::DeviceStatus;
use aisle_hil::printer_sim::{Command, Printed, PrinterSim};
use aisle_protocol::{Currency, Money};

const WAIT: Duration = Duration::from_secs(10);

fn receipt() -> Vec<u8> {
    let cny = |m| Money::new(m, Currency::parse("CNY").unwrap());
    let r = Receipt {
        header: vec!["Aisle Market".into()],
        lines: vec![ReceiptLine {
            name: "有机燕麦奶 1L".into(),
            quantity: Quantity::Count(2),
            unit_price: cny(1280),
            amount: cny(2560),
        }],
        total: cny(2560),
        vat: vec![],
        payments: vec![("Card ****4242".into(), cny(2560))],
        footer: vec!["Sale S-1".into()],
        link: Some("https://r.aisle.example/S-1".into()),
    };
    encode_receipt(
        &r,
        &ReceiptLayout::new(LineWidth::Cols32, TextEncoding::Gbk),
    )
    .unwrap()
}

fn next_receipt(rx: &Receiver<Printed>) -> Vec<u8> {
    match rx.recv_timeout(WAIT).expect("a receipt") {
        Printed::Receipt(b) => b,
        other => panic!("{other:?}"),
    }
}

fn wait_for(p: &ReceiptPrinter, pred: impl Fn(&DeviceStatus) -> bool) {
    let until = Instant::now() + WAIT;
    while !pred(&p.status().device) {
        assert!(
            Instant::now() < until,
            "status never came: {:?}",
            p.status()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn receipts_through_the_simulated_printer() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, printed) = PrinterSim::start(Some(dir.path().join("printer"))).unwrap();
    let mut c = PrinterConfig::new(sim.path(), SerialSettings::default_8n1());
    c.answer_timeout = Duration::from_millis(300);
    c.poll = Duration::from_millis(50);
    c.port.backoff = Backoff {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(100),
    };
    let (p, _events) = ReceiptPrinter::start(c).unwrap();
    wait_for(&p, |s| *s == DeviceStatus::Online);

    p.print(receipt(), WAIT).unwrap();
    let got = next_receipt(&printed);
    assert_eq!(got, receipt());
    let text = receipt_text(&got, TextEncoding::Gbk);
    assert!(
        text.contains("有机燕麦奶 1L\n  2 x 12.80                25.60\n"),
        "{text}"
    );
    assert!(text.contains("<qr https://r.aisle.example/S-1>"), "{text}");

    sim.command(Command::PaperOut).unwrap();
    assert_eq!(p.print(receipt(), WAIT), Err(PrintError::PaperOut));

    sim.command(Command::Ready).unwrap();
    sim.command(Command::Unplug).unwrap();
    wait_for(&p, |s| matches!(s, DeviceStatus::Disconnected { .. }));
    assert!(matches!(
        p.print(receipt(), WAIT),
        Err(PrintError::Disconnected(_))
    ));
    sim.command(Command::Plug).unwrap();
    wait_for(&p, |s| *s == DeviceStatus::Online);
    p.print(receipt(), WAIT).unwrap();
    assert_eq!(next_receipt(&printed), receipt());
    assert!(
        printed.recv_timeout(Duration::from_millis(100)).is_err(),
        "the refused receipts never came out"
    );
}
