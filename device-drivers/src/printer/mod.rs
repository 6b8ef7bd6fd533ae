//! Receipt printers: the ESC/POS encoder ([`escpos`], pure) and the serial driver
//! ([`ReceiptPrinter`], a thread per port, after the [`upos`](crate::upos) model).
//!
//! ```text
//!  lane ──print(bytes, timeout)──▶ ReceiptPrinter ──job──▶ thread "receipt-printer" ──▶ port
//!       ◀── Ok / PrintError ─────┘                        │ DLE EOT 1 / 4 before and after
//!                                                         │ each job, and every `poll`
//!                                                         │ unplugged: backoff, reopen same path
//! ```
//!
//! **A receipt is never queued for later.** The sale is in the ledger before its receipt prints,
//! so nothing is lost if the printer cannot print: [`ReceiptPrinter::print`] refuses at once with
//! a [`PrintError`] that says why (unplugged, offline, cover open, out of paper), the lane shows
//! the digital receipt link instead and offers a reprint. A receipt queued while the printer was
//! away would come out later in the next shopper's hands.
mod driver;
pub mod escpos;

pub use driver::{PrinterConfig, PrinterNotice, PrinterSettings, PrinterStatus, ReceiptPrinter};
pub use escpos::{
    Align, EscPos, LineWidth, Quantity, Receipt, ReceiptLayout, ReceiptLine, TextEncoding, VatLine,
    encode_receipt, receipt_text,
};

/// Why a receipt did not print, in words for the lane and the attendant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrintError {
    #[error("the receipt cannot be printed: {0}")]
    Receipt(String),
    #[error("the printer is disconnected: {0}")]
    Disconnected(String),
    #[error("the printer is offline: {0}")]
    Offline(String),
    #[error("the printer is out of paper")]
    PaperOut,
    #[error("the printer is busy with another receipt")]
    Busy,
    #[error("the printer thread has stopped")]
    Stopped,
    #[error("cannot start the printer thread: {0}")]
    Thread(String),
}
