//! The reset button: held for a few seconds while the gateway boots, it asks for re-enrolment.

use std::time::Duration;

use embedded_hal::delay::DelayNs;
use embedded_hal::digital::InputPin;

use super::panel::{PanelPin, PinFault};

/// The level the pin reads while the button is pressed. A button to ground on a pulled-up
/// input (the Raspberry Pi wiring) reads [`PressedLevel::Low`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PressedLevel {
    Low,
    High,
}

/// How often the button is read while waiting.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// A release shorter than this is contact bounce, not a release.
pub const DEBOUNCE: Duration = Duration::from_millis(50);
/// How long the technician holds the button at boot to ask for re-enrolment.
pub const BOOT_HOLD: Duration = Duration::from_secs(5);

/// What the readings so far say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldVerdict {
    /// Keep reading.
    Pending,
    /// Pressed for the whole hold (bounces shorter than [`DEBOUNCE`] forgiven).
    Held,
    /// Not pressed, or let go for at least [`DEBOUNCE`]: boot normally.
    Released,
}

/// The debounce as a pure state machine over readings taken every [`SAMPLE_EVERY`].
///
/// The hold is timed from the first pressed reading. A button never pressed is judged released
/// after [`DEBOUNCE`], so a normal boot waits 50 ms. A verdict always comes within
/// hold + debounce: a button that keeps bouncing cannot stall the boot.
#[derive(Debug, Clone)]
pub struct HoldDetector {
    hold_samples: u64,
    debounce_samples: u64,
    /// Readings since the first pressed one (`None` before it).
    since_press: Option<u64>,
    released_run: u64,
}

impl HoldDetector {
    pub fn new(hold: Duration) -> Self {
        HoldDetector {
            hold_samples: samples(hold).max(1),
            debounce_samples: samples(DEBOUNCE).max(1),
            since_press: None,
            released_run: 0,
        }
    }

    /// Feeds one reading, taken [`SAMPLE_EVERY`] after the previous one.
    pub fn sample(&mut self, pressed: bool) -> HoldVerdict {
        if let Some(n) = self.since_press.as_mut() {
            *n += 1;
        }
        if pressed {
            self.released_run = 0;
            let since = *self.since_press.get_or_insert(0);
            if since >= self.hold_samples {
                return HoldVerdict::Held;
            }
        } else {
            self.released_run += 1;
            if self.released_run >= self.debounce_samples {
                return HoldVerdict::Released;
            }
        }
        HoldVerdict::Pending
    }
}

fn samples(d: Duration) -> u64 {
    let every = SAMPLE_EVERY.as_nanos();
    u64::try_from(d.as_nanos().div_ceil(every)).unwrap_or(u64::MAX)
}

/// The reset button on its input pin.
#[derive(Debug)]
pub struct ResetButton<P> {
    pin: P,
    pressed: PressedLevel,
}

impl<P: InputPin> ResetButton<P> {
    pub fn new(pin: P, pressed: PressedLevel) -> Self {
        ResetButton { pin, pressed }
    }

    /// One reading, no debounce.
    pub fn is_pressed(&mut self) -> Result<bool, PinFault> {
        let read = match self.pressed {
            PressedLevel::Low => self.pin.is_low(),
            PressedLevel::High => self.pin.is_high(),
        };
        read.map_err(|e| PinFault::new(PanelPin::ResetButton, &e))
    }

    /// Whether the button is held continuously for `hold` (see [`HoldDetector`]), reading it
    /// every [`SAMPLE_EVERY`] with `delay`. Call once at boot, before anything else uses the
    /// enrolment. A pin that cannot be read is an error, never a reset: the caller boots
    /// normally and reports it.
    pub fn held_at_boot(
        &mut self,
        delay: &mut impl DelayNs,
        hold: Duration,
    ) -> Result<bool, PinFault> {
        let mut detector = HoldDetector::new(hold);
        let every_us = u32::try_from(SAMPLE_EVERY.as_micros()).unwrap_or(u32::MAX);
        loop {
            match detector.sample(self.is_pressed()?) {
                HoldVerdict::Pending => delay.delay_us(every_us),
                HoldVerdict::Held => return Ok(true),
                HoldVerdict::Released => return Ok(false),
            }
        }
    }

    pub fn release(self) -> P {
        self.pin
    }
}

/// [`DelayNs`] by sleeping the current thread, for the real button at boot.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadSleep;

impl DelayNs for ThreadSleep {
    fn delay_ns(&mut self, ns: u32) {
        std::thread::sleep(Duration::from_nanos(u64::from(ns)));
    }
}
