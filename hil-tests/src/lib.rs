//! The virtual store: the real hub and agent binaries, a fault proxy between them, scenario
//! helpers for the tests in `tests/`, and the benchmarks run by `scripts/bench`.
//!
//! Device paths and service addresses come from the environment, so the same scenarios can run
//! against real hardware later.
pub mod bench;
pub mod camera_sim;
pub mod esl_sim;
pub mod footfall;
pub mod harness;
pub mod lanes;
pub mod mqtt;
pub mod pickup;
pub mod printer_sim;
pub mod proxy;
pub mod pty;
pub mod scale_sim;
pub mod scanner_sim;
