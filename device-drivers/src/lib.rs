//! Host-side device drivers: pure parsers and state machines, with thin serial and MQTT I/O at
//! the edge. Everything that parses device bytes is a pure function or state machine here, so it
//! can be tested with published vectors and fuzzed without hardware.
//!
//! Today: serial line settings and the suffix framer every serial scanner and scale sits on.
//! Scanner, scale, access-point and camera drivers build on it (issues 3, 4 and 6).
#![forbid(unsafe_code)]

pub mod framing;

pub use framing::{FrameError, LineFramer, Suffix};
