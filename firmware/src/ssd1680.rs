//! SSD1680-class e-paper controller driver (SSD1680 on the 2.9" panels, SSD1683 on the 4.2"
//! ones: same command set), generic over embedded-hal 1.0.
//!
//! ```text
//! init:    RST low 10 ms, high 10 ms, BUSY | 0x12 soft reset, BUSY | 0x01 gates | 0x11 entry
//!          mode | 0x44/0x45 RAM window | 0x3C border | 0x21 update control | 0x18 sensor
//! full:    0x24 black (0 = black) | 0x26 red (1 = red), or black again on a B/W panel so the
//!          next partial refresh has the shown image to compare with | 0x22 0xF7 | 0x20 | BUSY
//! partial: 0x24 black | 0x22 0xFC | 0x20 | BUSY | 0x26 black (now the shown image)
//! sleep:   0x10 0x01 (deep sleep 1: RAM kept; a reset wakes it, `update` re-initialises)
//! ```
//!
//! BUSY is high while the controller works; every wait is bounded and a panel that stays busy
//! is a typed error, never a hang. Partial refresh exists only on black/white panels; asked of a
//! driver that has not yet shown an image since power-up (the controller's "previous image" RAM
//! is unknown), a partial refresh is done as a full one.
use aisle_protocol::esl::Panel;
use embedded_hal::delay::DelayNs;
use embedded_hal::digital::{self, InputPin, OutputPin};
use embedded_hal::spi::{self, SpiDevice};

use crate::FrameBuffer;

/// How to refresh the panel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refresh {
    /// Every pixel driven through the full waveform: no ghosting; 2-3 s on black/white,
    /// about 15 s with red.
    Full,
    /// Only changed pixels (black/white panels): 0.3-0.6 s, ghosts build up over many.
    Partial,
}

/// What the driver was doing when the panel stayed busy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    Reset,
    Refresh(Refresh),
}

/// Driver errors. The bus errors keep embedded-hal's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("SPI error: {0:?}")]
    Spi(spi::ErrorKind),
    #[error("GPIO error: {0:?}")]
    Pin(digital::ErrorKind),
    #[error("panel still busy after {waited_ms} ms ({phase:?})")]
    BusyTimeout { phase: Phase, waited_ms: u32 },
    #[error("{0:?} panels cannot refresh partially")]
    PartialUnsupported(Panel),
    #[error("frame buffer for a {found:?} panel, driver drives a {expected:?}")]
    WrongPanel { expected: Panel, found: Panel },
}

/// Upper bounds for BUSY, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub reset_ms: u32,
    pub full_ms: u32,
    pub partial_ms: u32,
}

impl Timeouts {
    /// About twice the datasheet figures (a cold panel is slower).
    pub const fn for_panel(panel: Panel) -> Self {
        Timeouts {
            reset_ms: 100,
            full_ms: if panel.has_red() { 40_000 } else { 6_000 },
            partial_ms: 2_000,
        }
    }
}

/// How often BUSY is polled.
pub const BUSY_POLL_MS: u32 = 10;
/// Bytes per SPI write when streaming a plane.
pub const CHUNK: usize = 64;

mod cmd {
    pub const DRIVER_OUTPUT: u8 = 0x01;
    pub const DEEP_SLEEP: u8 = 0x10;
    pub const DATA_ENTRY: u8 = 0x11;
    pub const SW_RESET: u8 = 0x12;
    pub const TEMP_SENSOR: u8 = 0x18;
    pub const MASTER_ACTIVATION: u8 = 0x20;
    pub const UPDATE_CONTROL_1: u8 = 0x21;
    pub const UPDATE_CONTROL_2: u8 = 0x22;
    pub const WRITE_BLACK: u8 = 0x24;
    pub const WRITE_RED: u8 = 0x26;
    pub const BORDER: u8 = 0x3C;
    pub const RAM_X_RANGE: u8 = 0x44;
    pub const RAM_Y_RANGE: u8 = 0x45;
    pub const RAM_X: u8 = 0x4E;
    pub const RAM_Y: u8 = 0x4F;
}

/// Display update sequence for a full refresh (clock, analog, temperature, load LUT, display).
pub const UPDATE_FULL: u8 = 0xF7;
/// Display update sequence for a partial refresh (display mode 2).
pub const UPDATE_PARTIAL: u8 = 0xFC;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// After power-up or deep sleep: needs `init`.
    Cold,
    Ready,
}

/// The driver. Owns its bus device, pins and delay; [`Ssd1680::release`] gives them back.
#[derive(Debug)]
pub struct Ssd1680<SPI, DC, RST, BUSY, D> {
    spi: SPI,
    dc: DC,
    rst: RST,
    busy: BUSY,
    delay: D,
    panel: Panel,
    timeouts: Timeouts,
    state: State,
    /// The controller's second RAM holds the image on the panel (a partial refresh is valid).
    shown_in_ram: bool,
}

impl<SPI, DC, RST, BUSY, D> Ssd1680<SPI, DC, RST, BUSY, D>
where
    SPI: SpiDevice,
    DC: OutputPin,
    RST: OutputPin,
    BUSY: InputPin,
    D: DelayNs,
{
    /// A driver for `panel`. Touches no pin until the first `init` or `update`.
    pub fn new(spi: SPI, dc: DC, rst: RST, busy: BUSY, delay: D, panel: Panel) -> Self {
        Ssd1680 {
            spi,
            dc,
            rst,
            busy,
            delay,
            panel,
            timeouts: Timeouts::for_panel(panel),
            state: State::Cold,
            shown_in_ram: false,
        }
    }

    #[must_use]
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    pub fn panel(&self) -> Panel {
        self.panel
    }

    /// Hardware reset and the init sequence.
    pub fn init(&mut self) -> Result<(), Error> {
        self.state = State::Cold;
        self.rst.set_low().map_err(pin)?;
        self.delay.delay_ms(10);
        self.rst.set_high().map_err(pin)?;
        self.delay.delay_ms(10);
        self.wait_busy(Phase::Reset, self.timeouts.reset_ms)?;
        self.command(cmd::SW_RESET, &[])?;
        self.wait_busy(Phase::Reset, self.timeouts.reset_ms)?;

        let (_, gates) = self.panel.native_size();
        let last_gate = (gates - 1).to_le_bytes();
        let last_col = u8::try_from(self.panel.stride() - 1).unwrap_or(u8::MAX);
        self.command(cmd::DRIVER_OUTPUT, &[last_gate[0], last_gate[1], 0x00])?;
        self.command(cmd::DATA_ENTRY, &[0x03])?; // x then y increment, x first
        self.command(cmd::RAM_X_RANGE, &[0x00, last_col])?;
        self.command(cmd::RAM_Y_RANGE, &[0x00, 0x00, last_gate[0], last_gate[1]])?;
        self.command(cmd::BORDER, &[0x05])?; // border follows white
        // Normal RAM content; the 128-source 2.9" glass sits on sources S8-S167.
        let sources = if self.panel.rotated() { 0x80 } else { 0x00 };
        self.command(cmd::UPDATE_CONTROL_1, &[0x00, sources])?;
        self.command(cmd::TEMP_SENSOR, &[0x80])?; // internal sensor
        self.state = State::Ready;
        Ok(())
    }

    /// Shows `fb`; returns the refresh actually done (a partial one may become full).
    pub fn update<S: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        fb: &FrameBuffer<S>,
        refresh: Refresh,
    ) -> Result<Refresh, Error> {
        if fb.panel() != self.panel {
            return Err(Error::WrongPanel {
                expected: self.panel,
                found: fb.panel(),
            });
        }
        if refresh == Refresh::Partial && self.panel.has_red() {
            return Err(Error::PartialUnsupported(self.panel));
        }
        let result = self.show(fb, refresh);
        if result.is_err() {
            // A reset is the way out of whatever state the controller is in.
            self.state = State::Cold;
        }
        result
    }

    fn show<S: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        fb: &FrameBuffer<S>,
        refresh: Refresh,
    ) -> Result<Refresh, Error> {
        if self.state != State::Ready {
            self.init()?;
        }
        let refresh = if self.shown_in_ram {
            refresh
        } else {
            Refresh::Full
        };
        self.shown_in_ram = false;
        self.write_plane(cmd::WRITE_BLACK, fb.black(), true)?;
        if refresh == Refresh::Full {
            match fb.red() {
                Some(red) => self.write_plane(cmd::WRITE_RED, red, false)?,
                None => self.write_plane(cmd::WRITE_RED, fb.black(), true)?,
            }
        }
        let (sequence, timeout) = match refresh {
            Refresh::Full => (UPDATE_FULL, self.timeouts.full_ms),
            Refresh::Partial => (UPDATE_PARTIAL, self.timeouts.partial_ms),
        };
        self.command(cmd::UPDATE_CONTROL_2, &[sequence])?;
        self.command(cmd::MASTER_ACTIVATION, &[])?;
        self.wait_busy(Phase::Refresh(refresh), timeout)?;
        if refresh == Refresh::Partial {
            self.write_plane(cmd::WRITE_RED, fb.black(), true)?;
        }
        self.shown_in_ram = !self.panel.has_red();
        Ok(refresh)
    }

    /// Deep sleep (RAM kept). The next `update` resets and re-initialises the controller.
    pub fn sleep(&mut self) -> Result<(), Error> {
        self.command(cmd::DEEP_SLEEP, &[0x01])?;
        self.state = State::Cold;
        Ok(())
    }

    /// Gives back the bus device, pins and delay.
    pub fn release(self) -> (SPI, DC, RST, BUSY, D) {
        (self.spi, self.dc, self.rst, self.busy, self.delay)
    }

    fn command(&mut self, command: u8, data: &[u8]) -> Result<(), Error> {
        self.dc.set_low().map_err(pin)?;
        self.spi.write(&[command]).map_err(bus)?;
        if !data.is_empty() {
            self.dc.set_high().map_err(pin)?;
            self.spi.write(data).map_err(bus)?;
        }
        Ok(())
    }

    /// Writes a whole plane from RAM address (0, 0), `invert`ing for the black RAM (0 = black).
    fn write_plane(&mut self, command: u8, plane: &[u8], invert: bool) -> Result<(), Error> {
        self.command(cmd::RAM_X, &[0x00])?;
        self.command(cmd::RAM_Y, &[0x00, 0x00])?;
        self.command(command, &[])?;
        self.dc.set_high().map_err(pin)?;
        let mut buf = [0u8; CHUNK];
        for chunk in plane.chunks(CHUNK) {
            let out = &mut buf[..chunk.len()];
            for (o, b) in out.iter_mut().zip(chunk) {
                *o = if invert { !*b } else { *b };
            }
            self.spi.write(out).map_err(bus)?;
        }
        Ok(())
    }

    fn wait_busy(&mut self, phase: Phase, timeout_ms: u32) -> Result<(), Error> {
        let mut waited_ms = 0;
        while self.busy.is_high().map_err(pin)? {
            if waited_ms >= timeout_ms {
                return Err(Error::BusyTimeout { phase, waited_ms });
            }
            self.delay.delay_ms(BUSY_POLL_MS);
            waited_ms += BUSY_POLL_MS;
        }
        Ok(())
    }
}

fn pin<E: digital::Error>(e: E) -> Error {
    Error::Pin(e.kind())
}

fn bus<E: spi::Error>(e: E) -> Error {
    Error::Spi(e.kind())
}
