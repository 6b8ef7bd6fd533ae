//! The Raspberry Pi pins (feature `rpi`): rppal's GPIO through embedded-hal 1.0, nothing more.

use rppal::gpio::{Gpio, InputPin, OutputPin};

use super::button::{PressedLevel, ResetButton};
use super::panel::StatusPanel;
use super::pattern::GatewayState;

/// The GPIO character device or a pin could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum RpiError {
    #[error("cannot open the Raspberry Pi GPIO: {0}")]
    Gpio(#[source] rppal::gpio::Error),
    #[error("cannot use BCM pin {bcm} for the {role}: {source}")]
    Pin {
        bcm: u8,
        role: &'static str,
        #[source]
        source: rppal::gpio::Error,
    },
}

fn pin(gpio: &Gpio, bcm: u8, role: &'static str) -> Result<rppal::gpio::Pin, RpiError> {
    gpio.get(bcm)
        .map_err(|source| RpiError::Pin { bcm, role, source })
}

impl StatusPanel<OutputPin, OutputPin> {
    /// LED and (active) buzzer on BCM pins `led_bcm` and `buzzer_bcm`, both driven high to
    /// light or sound, starting dark and silent. rppal puts the pins back when they drop.
    pub fn rpi(led_bcm: u8, buzzer_bcm: u8, state: GatewayState) -> Result<Self, RpiError> {
        let gpio = Gpio::new().map_err(RpiError::Gpio)?;
        let led = pin(&gpio, led_bcm, "status LED")?.into_output_low();
        let buzzer = pin(&gpio, buzzer_bcm, "buzzer")?.into_output_low();
        Ok(StatusPanel::new(led, buzzer, state))
    }
}

impl ResetButton<InputPin> {
    /// A button from BCM pin `bcm` to ground, read with the SoC's pull-up (pressed = low).
    pub fn rpi(bcm: u8) -> Result<Self, RpiError> {
        let gpio = Gpio::new().map_err(RpiError::Gpio)?;
        let input = pin(&gpio, bcm, "reset button")?.into_input_pullup();
        Ok(ResetButton::new(input, PressedLevel::Low))
    }
}
