//! The gateway's status LED, buzzer and reset button against embedded-hal-mock pins: the exact
//! pin writes of one cycle of every state, pin errors, the panel's thread, and the debounce.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aisle_drivers::status_panel::{
    BOOT_HOLD, GatewayConditions, GatewayState, PanelPin, PressedLevel, ResetButton, StatusPanel,
};
use embedded_hal::digital::{ErrorType, OutputPin};
use embedded_hal_mock::eh1::MockError;
use embedded_hal_mock::eh1::delay::{CheckedDelay, NoopDelay, Transaction as Wait};
use embedded_hal_mock::eh1::digital::{Mock as Pin, State, Transaction as Level};

const H: State = State::High;
const L: State = State::Low;

/// One step as the technician would write it down: LED, buzzer, milliseconds.
type Expected = (State, State, u64);

/// Plays one cycle of `state` with `step` and checks every pin write and every hold.
fn check(state: GatewayState, expected: &[Expected]) {
    let led_tx: Vec<_> = expected.iter().map(|&(l, _, _)| Level::set(l)).collect();
    let buzzer_tx: Vec<_> = expected.iter().map(|&(_, b, _)| Level::set(b)).collect();
    let mut led = Pin::new(&led_tx);
    let mut buzzer = Pin::new(&buzzer_tx);
    let mut panel = StatusPanel::new(led.clone(), buzzer.clone(), state);
    let holds: Vec<u64> = (0..expected.len())
        .map(|_| {
            let hold = panel.step().expect("mock pins accept every write");
            u64::try_from(hold.as_millis()).expect("hold fits")
        })
        .collect();
    let want: Vec<u64> = expected.iter().map(|&(_, _, ms)| ms).collect();
    assert_eq!(holds, want, "{state:?}");
    assert_eq!(
        state.pattern().steps().len(),
        expected.len(),
        "{state:?}: one cycle"
    );
    led.done();
    buzzer.done();
}

#[test]
fn one_cycle_of_every_state_writes_exactly_its_table_row() {
    check(GatewayState::NotEnrolled, &[(H, L, 1000), (L, L, 1000)]);
    check(GatewayState::Enrolling, &[(H, L, 250), (L, L, 250)]);
    check(GatewayState::Online, &[(H, L, 1000)]);
    check(
        GatewayState::Offline,
        &[(H, L, 150), (L, L, 150), (H, L, 150), (L, L, 1550)],
    );
    let mut alarm = vec![(H, H, 100), (L, L, 100)];
    for _ in 0..49 {
        alarm.extend([(H, L, 100), (L, L, 100)]);
    }
    check(GatewayState::Alarm, &alarm);
    check(
        GatewayState::ResetRequested,
        &[
            (H, H, 100),
            (L, L, 100),
            (H, H, 100),
            (L, L, 100),
            (H, H, 100),
            (H, L, 1500),
        ],
    );
}

#[test]
fn cycles_last_what_the_table_says() {
    let secs = |s: GatewayState| s.pattern().cycle().as_millis();
    assert_eq!(secs(GatewayState::NotEnrolled), 2000);
    assert_eq!(secs(GatewayState::Enrolling), 500);
    assert_eq!(secs(GatewayState::Online), 1000);
    assert_eq!(secs(GatewayState::Offline), 2000);
    assert_eq!(secs(GatewayState::Alarm), 10_000);
    assert_eq!(secs(GatewayState::ResetRequested), 2000);
    for state in GatewayState::ALL {
        assert!(state.pattern().steps().iter().all(|s| !s.hold.is_zero()));
        assert!(!state.meaning().is_empty());
    }
}

#[test]
fn the_pattern_repeats_and_a_new_state_starts_at_its_beginning() {
    // Offline twice round, then Alarm: the beep comes first, not from where Offline was.
    let mut led = Pin::new(&[
        Level::set(H),
        Level::set(L),
        Level::set(H),
        Level::set(L),
        Level::set(H),
        Level::set(H),
    ]);
    let mut buzzer = Pin::new(&[
        Level::set(L),
        Level::set(L),
        Level::set(L),
        Level::set(L),
        Level::set(L),
        Level::set(H),
    ]);
    let mut panel = StatusPanel::new(led.clone(), buzzer.clone(), GatewayState::Offline);
    for _ in 0..4 {
        panel.step().expect("step");
    }
    panel.step().expect("second cycle starts over");
    // Showing the same state again does not restart it; a different one does.
    panel.show(GatewayState::Offline);
    panel.show(GatewayState::Alarm);
    assert_eq!(panel.state(), GatewayState::Alarm);
    assert_eq!(panel.step(), Ok(Duration::from_millis(100)));
    led.done();
    buzzer.done();
}

#[test]
fn play_cycle_waits_each_step_with_the_delay() {
    let mut led = Pin::new(&[Level::set(H), Level::set(L), Level::set(H), Level::set(L)]);
    let mut buzzer = Pin::new(&vec![Level::set(L); 4]);
    let mut delay = CheckedDelay::new(&[
        Wait::delay_ms(150),
        Wait::delay_ms(150),
        Wait::delay_ms(150),
        Wait::delay_ms(1550),
    ]);
    let mut panel = StatusPanel::new(led.clone(), buzzer.clone(), GatewayState::Offline);
    panel.play_cycle(&mut delay).expect("cycle");
    led.done();
    buzzer.done();
    delay.done();
}

fn broken() -> MockError {
    MockError::Io(io::ErrorKind::Other)
}

#[test]
fn a_failing_pin_is_reported_and_the_other_pin_and_the_timing_go_on() {
    // Alarm: the LED refuses the first write; the buzzer still beeps, the hold is kept, and
    // the next step is the next one in the pattern.
    let mut led = Pin::new(&[Level::set(H).with_error(broken()), Level::set(L)]);
    let mut buzzer = Pin::new(&[Level::set(H), Level::set(L)]);
    let mut panel = StatusPanel::new(led.clone(), buzzer.clone(), GatewayState::Alarm);
    let err = panel.step().expect_err("the LED failed");
    assert_eq!(err.hold, Duration::from_millis(100));
    assert_eq!(err.led.as_ref().map(|f| f.pin), Some(PanelPin::Led));
    assert!(err.buzzer.is_none());
    assert!(err.to_string().contains("status LED pin failed"), "{err}");
    assert_eq!(panel.step(), Ok(Duration::from_millis(100)));
    led.done();
    buzzer.done();

    // Both failing: both reported, no panic; switching off reports too.
    let mut led = Pin::new(&[Level::set(L).with_error(broken())]);
    let mut buzzer = Pin::new(&[Level::set(L).with_error(broken())]);
    let mut panel = StatusPanel::new(led.clone(), buzzer.clone(), GatewayState::Online);
    let err = panel.off().expect_err("both failed");
    assert!(err.led.is_some() && err.buzzer.is_some());
    assert!(err.to_string().contains("buzzer pin failed"), "{err}");
    led.done();
    buzzer.done();
}

#[test]
fn play_cycle_finishes_the_cycle_and_reports_the_first_failure() {
    let mut led = Pin::new(&[Level::set(H), Level::set(L).with_error(broken())]);
    let mut buzzer = Pin::new(&[Level::set(L), Level::set(L)]);
    let mut delay = CheckedDelay::new(&[Wait::delay_ms(250), Wait::delay_ms(250)]);
    let mut panel = StatusPanel::new(led.clone(), buzzer.clone(), GatewayState::Enrolling);
    let err = panel
        .play_cycle(&mut delay)
        .expect_err("second step failed");
    assert_eq!(err.hold, Duration::from_millis(250));
    led.done();
    buzzer.done();
    delay.done();
}

/// An output that remembers every level it was given (the thread's timing is real, so a
/// scripted mock cannot know how many steps it will see).
#[derive(Clone, Default)]
struct Recorder {
    levels: Arc<Mutex<Vec<bool>>>,
    fail: bool,
}

impl Recorder {
    fn levels(&self) -> Vec<bool> {
        self.levels.lock().expect("recorder").clone()
    }
}

impl ErrorType for Recorder {
    type Error = MockError;
}

impl OutputPin for Recorder {
    fn set_low(&mut self) -> Result<(), MockError> {
        self.levels.lock().expect("recorder").push(false);
        if self.fail { Err(broken()) } else { Ok(()) }
    }
    fn set_high(&mut self) -> Result<(), MockError> {
        self.levels.lock().expect("recorder").push(true);
        if self.fail { Err(broken()) } else { Ok(()) }
    }
}

fn wait_until(what: &str, cond: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    start.elapsed()
}

#[test]
fn the_thread_switches_at_once_and_leaves_the_panel_dark_when_dropped() {
    let led = Recorder::default();
    let buzzer = Recorder::default();
    let handle = StatusPanel::new(led.clone(), buzzer.clone(), GatewayState::Online)
        .spawn()
        .expect("spawn");
    wait_until("the LED lights", || led.levels().first() == Some(&true));
    // Online holds each step for a second; an alarm must not wait for it to end.
    handle.show(GatewayState::Alarm);
    let took = wait_until("the alarm beeps", || buzzer.levels().contains(&true));
    assert!(took < Duration::from_millis(900), "alarm after {took:?}");
    assert_eq!(handle.health().pin_faults, 0);
    drop(handle);
    assert_eq!(led.levels().last(), Some(&false), "LED off after stop");
    assert_eq!(
        buzzer.levels().last(),
        Some(&false),
        "buzzer off after stop"
    );
}

#[test]
fn the_thread_counts_pin_faults_instead_of_dying() {
    let led = Recorder {
        fail: true,
        ..Recorder::default()
    };
    let handle = StatusPanel::new(led.clone(), Recorder::default(), GatewayState::Enrolling)
        .spawn()
        .expect("spawn");
    wait_until("two steps tried", || led.levels().len() >= 2);
    let health = handle.health();
    assert!(health.pin_faults >= 1, "{health:?}");
    let last = health.last_fault.expect("a fault recorded");
    assert!(last.contains("status LED pin failed"), "{last}");
    // Still stepping after the faults.
    let seen = led.levels().len();
    wait_until("more steps", || led.levels().len() > seen);
}

#[test]
fn the_most_urgent_condition_decides_the_state() {
    let c = |reset, enrolling, enrolled, alarm, hub_reachable| GatewayConditions {
        reset_requested: reset,
        enrolling,
        enrolled,
        alarm,
        hub_reachable,
    };
    let cases = [
        (
            c(true, true, true, true, false),
            GatewayState::ResetRequested,
        ),
        (c(false, true, false, true, false), GatewayState::Enrolling),
        (
            c(false, false, false, true, false),
            GatewayState::NotEnrolled,
        ),
        (c(false, false, true, true, false), GatewayState::Alarm),
        (c(false, false, true, false, false), GatewayState::Offline),
        (c(false, false, true, false, true), GatewayState::Online),
    ];
    for (conditions, want) in cases {
        assert_eq!(conditions.state(), want, "{conditions:?}");
    }
}

/// Readings of a pulled-up button to ground: `true` = pressed (low).
fn button(pressed: &[bool]) -> (ResetButton<Pin>, Pin) {
    let tx: Vec<_> = pressed
        .iter()
        .map(|&p| Level::get(if p { L } else { H }))
        .collect();
    let pin = Pin::new(&tx);
    (ResetButton::new(pin.clone(), PressedLevel::Low), pin)
}

const HOLD: Duration = Duration::from_millis(100);

#[test]
fn a_button_held_for_the_whole_hold_asks_for_a_reset() {
    // First pressed reading at 0 ms, held at the reading 100 ms later: 11 readings.
    let (mut b, mut pin) = button(&[true; 11]);
    assert_eq!(b.held_at_boot(&mut NoopDelay::new(), HOLD), Ok(true));
    pin.done();
}

#[test]
fn the_button_is_read_every_10_ms() {
    let (mut b, mut pin) = button(&[true; 4]);
    let mut delay = CheckedDelay::new(&vec![Wait::delay_us(10_000); 3]);
    assert_eq!(
        b.held_at_boot(&mut delay, Duration::from_millis(30)),
        Ok(true)
    );
    pin.done();
    delay.done();
}

#[test]
fn a_button_not_pressed_boots_normally_after_the_debounce() {
    let (mut b, mut pin) = button(&[false; 5]);
    assert_eq!(b.held_at_boot(&mut NoopDelay::new(), BOOT_HOLD), Ok(false));
    pin.done();
}

#[test]
fn contact_bounce_shorter_than_the_debounce_is_forgiven() {
    // Bounces at the press and during the hold (up to 40 ms released) still count as held;
    // the hold is timed from the first pressed reading, so the pressed reading at 110 ms (the
    // one at 100 ms was a bounce) decides it.
    let (t, f) = (true, false);
    let readings = [t, f, t, f, f, t, t, f, f, f, f, t];
    let (mut b, mut pin) = button(&readings);
    assert_eq!(b.held_at_boot(&mut NoopDelay::new(), HOLD), Ok(true));
    pin.done();
}

#[test]
fn letting_go_for_the_debounce_during_the_hold_is_a_release() {
    let mut readings = vec![true; 6];
    readings.extend([false; 5]);
    let (mut b, mut pin) = button(&readings);
    assert_eq!(b.held_at_boot(&mut NoopDelay::new(), HOLD), Ok(false));
    pin.done();
}

#[test]
fn a_pressed_then_bouncing_button_never_stalls_the_boot() {
    // At the hold's end the reading is a bounce: one more pressed reading decides it.
    let mut readings = vec![true; 10];
    readings.extend([false, false, true]);
    let (mut b, mut pin) = button(&readings);
    assert_eq!(b.held_at_boot(&mut NoopDelay::new(), HOLD), Ok(true));
    pin.done();
}

#[test]
fn the_default_hold_is_five_seconds_of_readings() {
    let (mut b, mut pin) = button(&[true; 501]);
    assert_eq!(b.held_at_boot(&mut NoopDelay::new(), BOOT_HOLD), Ok(true));
    pin.done();
    // Released at 4.99 s: no reset.
    let mut readings = vec![true; 500];
    readings.extend([false; 5]);
    let (mut b, mut pin) = button(&readings);
    assert_eq!(b.held_at_boot(&mut NoopDelay::new(), BOOT_HOLD), Ok(false));
    pin.done();
}

#[test]
fn an_unreadable_button_is_an_error_never_a_reset() {
    let mut pin = Pin::new(&[Level::get(L), Level::get(L).with_error(broken())]);
    let mut b = ResetButton::new(pin.clone(), PressedLevel::Low);
    let err = b
        .held_at_boot(&mut NoopDelay::new(), HOLD)
        .expect_err("read failed");
    assert_eq!(err.pin, PanelPin::ResetButton);
    assert!(err.to_string().contains("reset button pin failed"), "{err}");
    pin.done();
}

#[test]
fn a_button_wired_active_high_reads_high_as_pressed() {
    let mut pin = Pin::new(&[Level::get(H), Level::get(L)]);
    let mut b = ResetButton::new(pin.clone(), PressedLevel::High);
    assert_eq!(b.is_pressed(), Ok(true));
    assert_eq!(b.is_pressed(), Ok(false));
    pin.done();
}
