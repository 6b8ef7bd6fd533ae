//! Host-side device drivers: pure parsers and state machines, with thin serial and MQTT I/O at
//! the edge. Everything that parses device bytes is a pure function or state machine here, so it
//! can be tested with published vectors and fuzzed without hardware.
//!
//! Today: serial line settings and the suffix framer every serial scanner and scale sits on, the
//! people-counting camera parsers with their footfall normaliser ([`footfall`], issue 6), and the
//! shelf-label pieces of the gateway ([`esl`], issue 3): the static-layer renderer and the
//! access-point link with its serial driver. [`backoff`] paces every device reconnect.
//!
//! Self-checkout (issue 4): [`scanner`] (what a barcode scan means), [`scale`] (serial scale
//! protocols), [`serial`] (line settings) and [`upos`] (the UnifiedPOS-style device model with
//! a thread per port, unplug and replug), [`payment`] (the card terminal trait, its thread with
//! timeouts and the `sale_ref` idempotency contract, the offline policy) and [`printer`] (ESC/POS
//! receipts and the serial receipt printer).
//!
//! Gateway status hardware (issue 7): [`status_panel`] (status LED, buzzer and reset button over
//! embedded-hal; the Raspberry Pi pins with the feature `rpi`).
#![forbid(unsafe_code)]

pub mod backoff;
pub mod esl;
pub mod footfall;
pub mod framing;
pub mod payment;
pub mod printer;
pub mod scale;
pub mod scanner;
pub mod serial;
pub mod status_panel;
pub mod upos;

pub use framing::{FrameError, LineFramer, Suffix};
