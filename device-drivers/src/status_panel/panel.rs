//! The LED and buzzer driver, and the thread that plays it beside the agent's runtime.

use std::fmt;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use embedded_hal::delay::DelayNs;
use embedded_hal::digital::{ErrorKind, OutputPin};

use super::pattern::{GatewayState, Pattern};

/// Which output or input a pin error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanelPin {
    Led,
    Buzzer,
    ResetButton,
}

impl fmt::Display for PanelPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PanelPin::Led => "status LED",
            PanelPin::Buzzer => "buzzer",
            PanelPin::ResetButton => "reset button",
        })
    }
}

/// A pin that refused a read or write, with its HAL's own description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pin} pin failed ({kind:?}): {detail}")]
pub struct PinFault {
    pub pin: PanelPin,
    pub kind: ErrorKind,
    pub detail: String,
}

impl PinFault {
    pub(crate) fn new<E: embedded_hal::digital::Error>(pin: PanelPin, error: &E) -> Self {
        PinFault {
            pin,
            kind: error.kind(),
            detail: format!("{error:?}"),
        }
    }
}

/// A step whose pins did not all take their level. The pattern still moved on: hold for `hold`
/// before the next step, as if it had worked, so a flaky LED does not speed up the buzzer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(self))]
pub struct PanelError {
    pub hold: Duration,
    pub led: Option<PinFault>,
    pub buzzer: Option<PinFault>,
}

fn describe(e: &PanelError) -> String {
    match (&e.led, &e.buzzer) {
        (Some(l), Some(b)) => format!("{l}; {b}"),
        (Some(one), None) | (None, Some(one)) => one.to_string(),
        (None, None) => "no pin failed".to_owned(),
    }
}

/// A status LED and a buzzer showing one [`GatewayState`]. Call [`StatusPanel::step`] and wait
/// the time it returns, or hand the panel to [`StatusPanel::spawn`].
#[derive(Debug)]
pub struct StatusPanel<LED, BUZZER> {
    led: LED,
    buzzer: BUZZER,
    state: GatewayState,
    pattern: Pattern,
    next: usize,
}

impl<LED: OutputPin, BUZZER: OutputPin> StatusPanel<LED, BUZZER> {
    /// Takes the pins; nothing is written before the first step.
    pub fn new(led: LED, buzzer: BUZZER, state: GatewayState) -> Self {
        StatusPanel {
            led,
            buzzer,
            state,
            pattern: state.pattern(),
            next: 0,
        }
    }

    pub fn state(&self) -> GatewayState {
        self.state
    }

    /// Switches to `state`, from the start of its cycle. Showing the state already shown changes
    /// nothing, so callers may repeat it on every check.
    pub fn show(&mut self, state: GatewayState) {
        if state != self.state {
            self.state = state;
            self.pattern = state.pattern();
            self.next = 0;
        }
    }

    /// Writes the next step's levels (the LED, then the buzzer; both are tried even if the
    /// first fails) and returns how long to hold them.
    pub fn step(&mut self) -> Result<Duration, PanelError> {
        let steps = self.pattern.steps();
        let step = steps[self.next % steps.len()];
        self.next = (self.next + 1) % steps.len();
        self.write(step.led, step.buzzer, step.hold)?;
        Ok(step.hold)
    }

    /// Plays one whole cycle of the current state, waiting with `delay` after each step; for
    /// callers without a thread of their own (for example at boot, before the runtime starts).
    /// Reports the first failing step, after finishing the cycle.
    pub fn play_cycle(&mut self, delay: &mut impl DelayNs) -> Result<(), PanelError> {
        self.next = 0;
        let mut first_error = None;
        for _ in 0..self.pattern.steps().len() {
            let hold = match self.step() {
                Ok(hold) => hold,
                Err(e) => {
                    let hold = e.hold;
                    first_error.get_or_insert(e);
                    hold
                }
            };
            delay.delay_ms(u32::try_from(hold.as_millis()).unwrap_or(u32::MAX));
        }
        first_error.map_or(Ok(()), Err)
    }

    /// LED and buzzer off (on shutdown, so a stopped agent does not look online).
    pub fn off(&mut self) -> Result<(), PanelError> {
        self.write(false, false, Duration::ZERO)
    }

    /// Gives the pins back.
    pub fn release(self) -> (LED, BUZZER) {
        (self.led, self.buzzer)
    }

    fn write(&mut self, led: bool, buzzer: bool, hold: Duration) -> Result<(), PanelError> {
        let led = level(&mut self.led, led).map_err(|e| PinFault::new(PanelPin::Led, &e));
        let buzzer =
            level(&mut self.buzzer, buzzer).map_err(|e| PinFault::new(PanelPin::Buzzer, &e));
        match (led, buzzer) {
            (Ok(()), Ok(())) => Ok(()),
            (led, buzzer) => Err(PanelError {
                hold,
                led: led.err(),
                buzzer: buzzer.err(),
            }),
        }
    }
}

fn level<P: OutputPin>(pin: &mut P, high: bool) -> Result<(), P::Error> {
    if high { pin.set_high() } else { pin.set_low() }
}

impl<LED, BUZZER> StatusPanel<LED, BUZZER>
where
    LED: OutputPin + Send + 'static,
    BUZZER: OutputPin + Send + 'static,
{
    /// Plays the panel on its own thread (`status-panel`), off any async runtime. The handle's
    /// [`StatusPanelHandle::show`] never blocks; dropping the handle turns both outputs off and
    /// joins the thread.
    pub fn spawn(self) -> std::io::Result<StatusPanelHandle> {
        let (tx, rx) = mpsc::channel();
        let health = Arc::new(Mutex::new(PanelHealth::default()));
        let shared = Arc::clone(&health);
        let thread = std::thread::Builder::new()
            .name("status-panel".to_owned())
            .spawn(move || run(self, &rx, &shared))?;
        Ok(StatusPanelHandle {
            tx: Some(tx),
            thread: Some(thread),
            health,
        })
    }
}

fn run<LED: OutputPin, BUZZER: OutputPin>(
    mut panel: StatusPanel<LED, BUZZER>,
    rx: &mpsc::Receiver<GatewayState>,
    health: &Mutex<PanelHealth>,
) {
    loop {
        let hold = panel.step().unwrap_or_else(|e| {
            record(health, &e);
            e.hold
        });
        let deadline = Instant::now() + hold;
        // Wait out the step, unless a different state arrives: then start its cycle at once.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(state) if state != panel.state() => {
                    panel.show(state);
                    break;
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    if let Err(e) = panel.off() {
                        record(health, &e);
                    }
                    return;
                }
            }
        }
    }
}

fn record(health: &Mutex<PanelHealth>, error: &PanelError) {
    let mut h = health.lock().unwrap_or_else(PoisonError::into_inner);
    h.pin_faults += 1;
    h.last_fault = Some(error.to_string());
}

/// What went wrong with the pins since the panel started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PanelHealth {
    /// Steps (or the final switch-off) in which at least one pin refused its level.
    pub pin_faults: u64,
    pub last_fault: Option<String>,
}

/// The agent's side of a spawned [`StatusPanel`].
#[derive(Debug)]
pub struct StatusPanelHandle {
    tx: Option<Sender<GatewayState>>,
    thread: Option<JoinHandle<()>>,
    health: Arc<Mutex<PanelHealth>>,
}

impl StatusPanelHandle {
    /// Shows `state` from now on. Never blocks; safe to call from async code on every check.
    pub fn show(&self, state: GatewayState) {
        if let Some(tx) = &self.tx {
            // The thread only ends when this handle drops, so a send cannot fail before then.
            let _ = tx.send(state);
        }
    }

    pub fn health(&self) -> PanelHealth {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for StatusPanelHandle {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
