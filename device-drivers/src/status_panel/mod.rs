//! The gateway's own status hardware (issue 7): a status LED and a buzzer that say, without a
//! screen, which state the gateway is in, and a reset button that, held at boot, starts
//! re-enrolment.
//!
//! Everything is generic over embedded-hal 1.0 pins, so it builds and is tested on any Linux;
//! the Raspberry Pi pins (rppal) come only with the cargo feature `rpi`
//! (`StatusPanel::rpi`, `ResetButton::rpi`).
//!
//! What the technician sees and hears (one cycle, repeated):
//!
//! | State | LED | Buzzer | Meaning |
//! |---|---|---|---|
//! | `NotEnrolled` | slow blink: 1 s on, 1 s off | silent | run `aisle-agent enroll` |
//! | `Enrolling` | quick blink: 0.25 s on, 0.25 s off | silent | enrolment under way |
//! | `Online` | steady on | silent | all well |
//! | `Offline` | double blink every 2 s | silent | hub unreachable; the store keeps selling |
//! | `Alarm` | fast blink, 5 a second | one 0.1 s beep every 10 s | run `aisle-agent doctor` |
//! | `ResetRequested` | three flashes with three short beeps, then 1.5 s on | 3 beeps every 2 s | reset held at boot: re-enrolling |
//! | (agent stopped) | off | silent | the agent is not running |
//!
//! When several hold, the most urgent wins ([`GatewayConditions::state`]): reset, enrolling,
//! not enrolled, alarm, offline, online.
//!
//! * [`pattern`]: the pure state → timeline table.
//! * [`StatusPanel`]: writes one step at a time ([`StatusPanel::step`]); [`StatusPanel::spawn`]
//!   plays it on its own thread so the agent's tokio runtime never waits on a pin. Pin errors
//!   never panic: each step tries both pins, reports what failed ([`PanelError`],
//!   [`StatusPanelHandle::health`]) and keeps the pattern's timing.
//! * [`ResetButton::held_at_boot`]: debounced; held for [`BOOT_HOLD`] (5 s) without a release
//!   longer than [`DEBOUNCE`].

pub mod button;
pub mod panel;
pub mod pattern;
#[cfg(feature = "rpi")]
pub mod rpi;

pub use button::{
    BOOT_HOLD, DEBOUNCE, HoldDetector, HoldVerdict, PressedLevel, ResetButton, SAMPLE_EVERY,
    ThreadSleep,
};
pub use panel::{PanelError, PanelHealth, PanelPin, PinFault, StatusPanel, StatusPanelHandle};
pub use pattern::{ALARM_BEEP_EVERY, GatewayConditions, GatewayState, Pattern, Step};
#[cfg(feature = "rpi")]
pub use rpi::RpiError;
