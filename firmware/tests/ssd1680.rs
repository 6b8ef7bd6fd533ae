//! The SSD1680 driver against mocked SPI, pins and delay: every byte, pin edge and wait checked.
#![allow(clippy::unwrap_used)]
mod support;

use aisle_firmware::ssd1680::{BUSY_POLL_MS, CHUNK, Error, Phase, Timeouts};
use aisle_firmware::{FrameBuffer, LabelColor, Panel, Refresh, Ssd1680};
use embedded_hal::digital::ErrorKind;
use embedded_hal_mock::eh1::MockError;
use embedded_hal_mock::eh1::delay::{CheckedDelay, Transaction as Wait};
use embedded_hal_mock::eh1::digital::{Mock as Pin, State, Transaction as Edge};
use embedded_hal_mock::eh1::spi::{Mock as Spi, Transaction as Bus};

/// The init sequence from the SSD1680 application notes, per panel: (command, data).
fn init_commands(panel: Panel) -> Vec<(u8, Vec<u8>)> {
    match panel {
        Panel::Bw290 | Panel::Bwr290 => vec![
            (0x01, vec![0x27, 0x01, 0x00]), // 296 gate lines
            (0x11, vec![0x03]),
            (0x44, vec![0x00, 0x0F]), // 16 bytes of 8 sources
            (0x45, vec![0x00, 0x00, 0x27, 0x01]),
            (0x3C, vec![0x05]),
            (0x21, vec![0x00, 0x80]),
            (0x18, vec![0x80]),
        ],
        Panel::Bw420 | Panel::Bwr420 => vec![
            (0x01, vec![0x2B, 0x01, 0x00]), // 300 gate lines
            (0x11, vec![0x03]),
            (0x44, vec![0x00, 0x31]), // 50 bytes
            (0x45, vec![0x00, 0x00, 0x2B, 0x01]),
            (0x3C, vec![0x05]),
            (0x21, vec![0x00, 0x00]),
            (0x18, vec![0x80]),
        ],
    }
}

/// Expected traffic on each mock, built step by step.
#[derive(Default)]
struct Script {
    spi: Vec<Bus<u8>>,
    dc: Vec<Edge>,
    rst: Vec<Edge>,
    busy: Vec<Edge>,
    delay: Vec<Wait>,
}

impl Script {
    fn write(&mut self, bytes: &[u8]) {
        self.spi.push(Bus::transaction_start());
        self.spi.push(Bus::write_vec(bytes.to_vec()));
        self.spi.push(Bus::transaction_end());
    }

    fn command(&mut self, command: u8, data: &[u8]) {
        self.dc.push(Edge::set(State::Low));
        self.write(&[command]);
        if !data.is_empty() {
            self.dc.push(Edge::set(State::High));
            self.write(data);
        }
    }

    /// BUSY high for `polls` polls, then low.
    fn busy(&mut self, polls: u32) {
        for _ in 0..polls {
            self.busy.push(Edge::get(State::High));
            self.delay.push(Wait::delay_ms(BUSY_POLL_MS));
        }
        self.busy.push(Edge::get(State::Low));
    }

    fn init(&mut self, panel: Panel) {
        self.rst.push(Edge::set(State::Low));
        self.delay.push(Wait::delay_ms(10));
        self.rst.push(Edge::set(State::High));
        self.delay.push(Wait::delay_ms(10));
        self.busy(2);
        self.command(0x12, &[]);
        self.busy(1);
        for (c, d) in init_commands(panel) {
            self.command(c, &d);
        }
    }

    fn plane(&mut self, command: u8, bytes: &[u8]) {
        self.command(0x4E, &[0x00]);
        self.command(0x4F, &[0x00, 0x00]);
        self.command(command, &[]);
        self.dc.push(Edge::set(State::High));
        for chunk in bytes.chunks(CHUNK) {
            self.write(chunk);
        }
    }

    fn activate(&mut self, sequence: u8, polls: u32) {
        self.command(0x22, &[sequence]);
        self.command(0x20, &[]);
        self.busy(polls);
    }

    fn driver(&self, panel: Panel) -> Ssd1680<Spi<u8>, Pin, Pin, Pin, CheckedDelay> {
        Ssd1680::new(
            Spi::new(&self.spi),
            Pin::new(&self.dc),
            Pin::new(&self.rst),
            Pin::new(&self.busy),
            CheckedDelay::new(&self.delay),
            panel,
        )
    }
}

fn done(driver: Ssd1680<Spi<u8>, Pin, Pin, Pin, CheckedDelay>) {
    let (mut spi, mut dc, mut rst, mut busy, mut delay) = driver.release();
    spi.done();
    dc.done();
    rst.done();
    busy.done();
    delay.done();
}

/// A frame with a black square and, where there is red, a red bar.
fn frame(panel: Panel) -> FrameBuffer<Vec<u8>> {
    let mut fb = FrameBuffer::new(panel, vec![0u8; panel.frame_bytes()]).unwrap();
    for x in 10..50 {
        for y in 10..50 {
            fb.set_pixel(x, y, LabelColor::Black);
        }
        fb.set_pixel(x, 100, LabelColor::Red);
    }
    fb
}

fn inverted(plane: &[u8]) -> Vec<u8> {
    plane.iter().map(|b| !b).collect()
}

#[test]
fn first_update_initialises_and_refreshes_fully_on_every_panel() {
    for panel in Panel::ALL {
        let fb = frame(panel);
        let mut s = Script::default();
        s.init(panel);
        let black = inverted(fb.black());
        s.plane(0x24, &black);
        match fb.red() {
            Some(red) => s.plane(0x26, red),
            // Black/white: the second RAM gets the image too, for the next partial refresh.
            None => s.plane(0x26, &black),
        }
        s.activate(0xF7, 3);
        let mut driver = s.driver(panel);
        assert_eq!(
            driver.update(&fb, Refresh::Full),
            Ok(Refresh::Full),
            "{panel:?}"
        );
        done(driver);
    }
}

#[test]
fn black_ram_is_inverted_and_red_ram_is_not() {
    // 0x24 holds 0 for black, 0x26 holds 1 for red: a black pixel at label (0, 0) of a 2.9"
    // panel is native byte 15 bit 0.
    let panel = Panel::Bwr290;
    let mut fb = FrameBuffer::new(panel, vec![0u8; panel.frame_bytes()]).unwrap();
    fb.set_pixel(0, 0, LabelColor::Black);
    fb.set_pixel(1, 0, LabelColor::Red);
    let black = inverted(fb.black());
    assert_eq!(black[15], 0xFE);
    assert!(black.iter().enumerate().all(|(i, b)| i == 15 || *b == 0xFF));
    let red = fb.red().unwrap();
    assert_eq!(red[16 + 15], 0x01);
    assert_eq!(red.iter().filter(|b| **b != 0).count(), 1);
}

#[test]
fn partial_refresh_writes_new_then_shown_image() {
    let panel = Panel::Bw290;
    let first = frame(panel);
    let mut second = frame(panel);
    second.set_pixel(200, 100, LabelColor::Black);
    let mut s = Script::default();
    s.init(panel);
    s.plane(0x24, &inverted(first.black()));
    s.plane(0x26, &inverted(first.black()));
    s.activate(0xF7, 1);
    // No re-init between updates; partial: new image, display mode 2, then the shown image.
    s.plane(0x24, &inverted(second.black()));
    s.activate(0xFC, 1);
    s.plane(0x26, &inverted(second.black()));
    let mut driver = s.driver(panel);
    assert_eq!(driver.update(&first, Refresh::Full), Ok(Refresh::Full));
    assert_eq!(
        driver.update(&second, Refresh::Partial),
        Ok(Refresh::Partial)
    );
    done(driver);
}

#[test]
fn a_partial_refresh_before_any_image_is_done_fully() {
    let panel = Panel::Bw420;
    let fb = frame(panel);
    let mut s = Script::default();
    s.init(panel);
    s.plane(0x24, &inverted(fb.black()));
    s.plane(0x26, &inverted(fb.black()));
    s.activate(0xF7, 0);
    let mut driver = s.driver(panel);
    assert_eq!(driver.update(&fb, Refresh::Partial), Ok(Refresh::Full));
    done(driver);
}

#[test]
fn red_panels_refuse_partial_refresh_without_touching_the_bus() {
    let s = Script::default();
    let mut driver = s.driver(Panel::Bwr420);
    assert_eq!(
        driver.update(&frame(Panel::Bwr420), Refresh::Partial),
        Err(Error::PartialUnsupported(Panel::Bwr420))
    );
    assert_eq!(
        driver.update(&frame(Panel::Bw290), Refresh::Full),
        Err(Error::WrongPanel {
            expected: Panel::Bwr420,
            found: Panel::Bw290
        })
    );
    done(driver);
}

#[test]
fn a_panel_that_stays_busy_times_out_and_the_next_update_resets_it() {
    let panel = Panel::Bw290;
    let fb = frame(panel);
    let timeouts = Timeouts {
        reset_ms: 30,
        full_ms: 50,
        partial_ms: 20,
    };
    let mut s = Script::default();
    s.init(panel);
    s.plane(0x24, &inverted(fb.black()));
    s.plane(0x26, &inverted(fb.black()));
    s.command(0x22, &[0xF7]);
    s.command(0x20, &[]);
    // Busy for 50 ms of polls, and still busy at the check after: give up.
    for _ in 0..5 {
        s.busy.push(Edge::get(State::High));
        s.delay.push(Wait::delay_ms(BUSY_POLL_MS));
    }
    s.busy.push(Edge::get(State::High));
    // The next update starts with a hardware reset; the controller is stuck in reset too.
    s.rst.push(Edge::set(State::Low));
    s.delay.push(Wait::delay_ms(10));
    s.rst.push(Edge::set(State::High));
    s.delay.push(Wait::delay_ms(10));
    for _ in 0..3 {
        s.busy.push(Edge::get(State::High));
        s.delay.push(Wait::delay_ms(BUSY_POLL_MS));
    }
    s.busy.push(Edge::get(State::High));
    let mut driver = s.driver(panel).with_timeouts(timeouts);
    assert_eq!(
        driver.update(&fb, Refresh::Full),
        Err(Error::BusyTimeout {
            phase: Phase::Refresh(Refresh::Full),
            waited_ms: 50
        })
    );
    assert_eq!(
        driver.update(&fb, Refresh::Partial),
        Err(Error::BusyTimeout {
            phase: Phase::Reset,
            waited_ms: 30
        })
    );
    done(driver);
}

#[test]
fn after_deep_sleep_the_next_update_reinitialises_and_may_refresh_partially() {
    let panel = Panel::Bw290;
    let fb = frame(panel);
    let mut s = Script::default();
    s.init(panel);
    s.plane(0x24, &inverted(fb.black()));
    s.plane(0x26, &inverted(fb.black()));
    s.activate(0xF7, 0);
    s.command(0x10, &[0x01]);
    // Deep sleep mode 1 keeps the RAM, so the shown image is still there to compare with.
    s.init(panel);
    s.plane(0x24, &inverted(fb.black()));
    s.activate(0xFC, 0);
    s.plane(0x26, &inverted(fb.black()));
    let mut driver = s.driver(panel);
    assert_eq!(driver.update(&fb, Refresh::Full), Ok(Refresh::Full));
    assert_eq!(driver.sleep(), Ok(()));
    assert_eq!(driver.update(&fb, Refresh::Partial), Ok(Refresh::Partial));
    done(driver);
}

#[test]
fn pin_errors_surface_as_typed_errors() {
    let mut s = Script::default();
    s.rst
        .push(Edge::set(State::Low).with_error(MockError::Io(std::io::ErrorKind::NotConnected)));
    let mut driver = s.driver(Panel::Bw290);
    assert_eq!(driver.init(), Err(Error::Pin(ErrorKind::Other)));
    done(driver);
}
