//! Host-side device drivers: pure parsers and state machines, with thin serial and MQTT I/O at
//! the edge. Everything that parses device bytes is a pure function or state machine here, so it
//! can be tested with published vectors and fuzzed without hardware.
//!
//! Today: serial line settings and the suffix framer every serial scanner and scale sits on, and
//! the people-counting camera parsers with their footfall normaliser ([`footfall`], issue 6).
//! Scanner, scale and access-point drivers build on the framer (issues 3 and 4).
#![forbid(unsafe_code)]

pub mod footfall;
pub mod framing;

pub use framing::{FrameError, LineFramer, Suffix};
