//! What each gateway state looks and sounds like: pure data, no pins.

use std::time::Duration;

/// What the gateway tells a technician standing in front of it, most urgent first in
/// [`GatewayConditions::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GatewayState {
    /// No identity yet: waiting for `aisle-agent enroll`.
    NotEnrolled,
    /// Enrolment with the hub is under way.
    Enrolling,
    /// Enrolled, hub reachable, nothing wrong.
    Online,
    /// Enrolled but the hub has not answered lately: the store keeps selling, sync waits.
    Offline,
    /// Something needs a technician (clock skew, disk, ledger, a device down):
    /// `aisle-agent doctor` says which.
    Alarm,
    /// The reset button was held at boot: the gateway is starting re-enrolment.
    ResetRequested,
}

impl GatewayState {
    /// Every state, in the order of the table in the module documentation.
    pub const ALL: [GatewayState; 6] = [
        GatewayState::NotEnrolled,
        GatewayState::Enrolling,
        GatewayState::Online,
        GatewayState::Offline,
        GatewayState::Alarm,
        GatewayState::ResetRequested,
    ];

    /// One cycle of this state's LED and buzzer timeline; the panel repeats it.
    pub fn pattern(self) -> Pattern {
        let steps = match self {
            GatewayState::NotEnrolled => vec![led(true, 1000), led(false, 1000)],
            GatewayState::Enrolling => vec![led(true, 250), led(false, 250)],
            // One step, written again every second, so a pin that glitched is put right.
            GatewayState::Online => vec![led(true, 1000)],
            GatewayState::Offline => vec![
                led(true, 150),
                led(false, 150),
                led(true, 150),
                led(false, 1550),
            ],
            GatewayState::Alarm => {
                let blinks = (ALARM_BEEP_EVERY.as_millis() / (2 * ALARM_BLINK_MS as u128)) as usize;
                let mut steps = Vec::with_capacity(2 * blinks);
                steps.push(beep(ALARM_BLINK_MS));
                steps.push(led(false, ALARM_BLINK_MS));
                for _ in 1..blinks {
                    steps.push(led(true, ALARM_BLINK_MS));
                    steps.push(led(false, ALARM_BLINK_MS));
                }
                steps
            }
            GatewayState::ResetRequested => vec![
                beep(100),
                led(false, 100),
                beep(100),
                led(false, 100),
                beep(100),
                led(true, 1500),
            ],
        };
        Pattern { steps }
    }

    /// The state in the technician's words, as printed in the table.
    pub fn meaning(self) -> &'static str {
        match self {
            GatewayState::NotEnrolled => "not enrolled: run `aisle-agent enroll`",
            GatewayState::Enrolling => "enrolling with the hub",
            GatewayState::Online => "online: all well",
            GatewayState::Offline => "hub unreachable: selling continues, check the network",
            GatewayState::Alarm => "needs a technician: run `aisle-agent doctor`",
            GatewayState::ResetRequested => "reset button held: starting re-enrolment",
        }
    }
}

/// How often the alarm beeps (with the first flash of each cycle).
pub const ALARM_BEEP_EVERY: Duration = Duration::from_secs(10);
/// Half a period of the alarm's fast blink (5 flashes a second).
const ALARM_BLINK_MS: u64 = 100;

fn led(on: bool, ms: u64) -> Step {
    Step {
        led: on,
        buzzer: false,
        hold: Duration::from_millis(ms),
    }
}

fn beep(ms: u64) -> Step {
    Step {
        led: true,
        buzzer: true,
        hold: Duration::from_millis(ms),
    }
}

/// Both outputs' levels for `hold`. `true` drives the pin high (LED lit, active buzzer sounding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub led: bool,
    pub buzzer: bool,
    pub hold: Duration,
}

/// One cycle of a state's timeline: never empty, every step held for a non-zero time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    steps: Vec<Step>,
}

impl Pattern {
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// How long one cycle lasts.
    pub fn cycle(&self) -> Duration {
        self.steps.iter().map(|s| s.hold).sum()
    }
}

/// What the agent knows about itself, reduced to the one state the panel shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GatewayConditions {
    /// The reset button was held at boot and re-enrolment has not finished.
    pub reset_requested: bool,
    /// An enrolment is in progress.
    pub enrolling: bool,
    /// The gateway has a key and a hub to talk to.
    pub enrolled: bool,
    /// Something a technician must fix (clock skew, disk, ledger, a device down).
    pub alarm: bool,
    /// The hub answered recently.
    pub hub_reachable: bool,
}

impl GatewayConditions {
    /// The most urgent state that holds: reset, enrolling, not enrolled, alarm, offline, online.
    /// An alarm outranks offline because an offline store still sells; a broken disk does not.
    pub fn state(&self) -> GatewayState {
        if self.reset_requested {
            GatewayState::ResetRequested
        } else if self.enrolling {
            GatewayState::Enrolling
        } else if !self.enrolled {
            GatewayState::NotEnrolled
        } else if self.alarm {
            GatewayState::Alarm
        } else if !self.hub_reachable {
            GatewayState::Offline
        } else {
            GatewayState::Online
        }
    }
}
