//! Turning camera readings into 15-minute visitor counts per entrance zone.
//!
//! [`FootfallCounter`] is a pure state machine: the caller feeds each parsed [`CameraReading`]
//! with the gateway's receive time and periodically closes finished intervals. The rules:
//!
//! * **Time.** The gateway's receive time is the truth; the camera's clock is a hint. A reading
//!   is placed at the camera's time when that time lies in
//!   `[received - max_delivery_delay, received + clock_tolerance]` (a delayed delivery, or a
//!   clock slightly ahead), never later than `received`; otherwise the camera's clock is taken to
//!   be wrong and the reading is placed at `received`. A timeRange interval is shifted by the
//!   same correction, so a camera whose clock is hours off still fills the right intervals.
//! * **Cumulative counters** (Axis, Hikvision realTime, Xovis absolute). The first reading of a
//!   line is only a baseline: what it already counted may have been counted before a restart.
//!   After that, the increase is counted and spread evenly (whole people, exact total) over the
//!   time since the line's previous reading, at most `max_spread` back. A counter that goes down,
//!   or an Axis counter whose counting day changed, was reset (midnight or reboot): the new value
//!   counts from zero. Never a negative count.
//! * **Duplicates and order.** A cumulative reading with the same camera time and values is a
//!   duplicate; one older (by the camera's own clock) than the line's latest, within
//!   `max_delivery_delay`, is stale: the later total already includes it. Deltas are remembered by
//!   camera time and intervals by `(start, end)`, so re-sent ones count once; an interval
//!   overlapping one already counted is refused. Out-of-order deltas and intervals are simply
//!   added where they belong.
//! * **Absurd jumps.** A line may add at most `max_per_minute` people per whole minute (at least
//!   one) of gateway time since its previous reading (one 15-minute interval for a line's first
//!   delta; an interval's own length for a timeRange). Beyond that the reading is refused with
//!   [`FootfallError::AbsurdJump`] and nothing is counted; a cumulative line still takes the new
//!   value as its baseline so one glitch does not poison the rest of the day.
//! * **Zones.** Every line maps to an [`EntranceZone`] (several cameras on one entrance sum);
//!   a camera with no zone is refused as unknown.
//! * **Intervals.** An interval is closed once its end plus `close_after` has passed. A reading
//!   that arrives for an interval already closed is emitted again later as an additional
//!   [`ZoneInterval`] for the same start: intervals are additive, consumers sum them.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use aisle_protocol::UtcMillis;

use super::{CameraId, CameraReading, Counts, FootfallError, ReadingKind};

/// Length of one footfall interval.
pub const INTERVAL_MS: i64 = 15 * 60 * 1000;
const MINUTE_MS: i64 = 60 * 1000;
const DAY_MS: i64 = 24 * 60 * MINUTE_MS;
/// Remembered deltas and intervals per line, whatever `history` says: a bound on memory.
const MAX_REMEMBERED: usize = 4096;

/// An entrance as the shop names it ("Main entrance", "Car park door"); cameras on the same
/// entrance are summed into it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntranceZone(pub String);

impl EntranceZone {
    pub fn new(name: impl Into<String>) -> Self {
        EntranceZone(name.into())
    }
}

/// Which entrance each camera, or each counting line of a camera, counts for.
#[derive(Clone, Debug, Default)]
pub struct ZoneMap {
    cameras: HashMap<CameraId, EntranceZone>,
    lines: HashMap<(CameraId, String), EntranceZone>,
}

impl ZoneMap {
    pub fn new() -> Self {
        ZoneMap::default()
    }

    /// All lines of `camera` count for `zone`, unless a line is assigned on its own.
    pub fn assign_camera(&mut self, camera: CameraId, zone: EntranceZone) -> &mut Self {
        self.cameras.insert(camera, zone);
        self
    }

    /// One counting line of a camera (a Xovis logic, a Hikvision channel) counts for `zone`.
    pub fn assign_line(
        &mut self,
        camera: CameraId,
        line: impl Into<String>,
        zone: EntranceZone,
    ) -> &mut Self {
        self.lines.insert((camera, line.into()), zone);
        self
    }

    /// The zone a reading counts for: its own line's assignment first, then its camera's.
    pub fn zone_of(&self, camera: &CameraId, line: Option<&str>) -> Option<&EntranceZone> {
        line.and_then(|l| self.lines.get(&(camera.clone(), l.to_owned())))
            .or_else(|| self.cameras.get(camera))
    }
}

/// Limits and tolerances; the defaults suit a shop door.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FootfallConfig {
    /// Most people one counting line may add per minute; a wide double door sees well under 100.
    pub max_per_minute: u64,
    /// How far a camera's clock may run ahead of the gateway and still be believed.
    pub clock_tolerance_ms: i64,
    /// How late a message may arrive and still be placed at the camera's time; also the window in
    /// which an older cumulative reading is taken as out of order rather than as a reset.
    pub max_delivery_delay_ms: i64,
    /// How far back an increase of a cumulative counter is spread.
    pub max_spread_ms: i64,
    /// How long deltas and intervals are remembered to recognise re-sends.
    pub history_ms: i64,
    /// How long after an interval ends it is closed, to let late messages in.
    pub close_after_ms: i64,
}

impl Default for FootfallConfig {
    fn default() -> Self {
        FootfallConfig {
            max_per_minute: 120,
            clock_tolerance_ms: 2 * MINUTE_MS,
            max_delivery_delay_ms: 15 * MINUTE_MS,
            max_spread_ms: 60 * MINUTE_MS,
            history_ms: 2 * DAY_MS,
            close_after_ms: 2 * MINUTE_MS,
        }
    }
}

/// Visitors through one entrance zone in one 15-minute interval `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneInterval {
    pub zone: EntranceZone,
    pub start: UtcMillis,
    pub end: UtcMillis,
    pub counts: Counts,
    /// The latest occupancy a camera of the zone reported in the interval.
    pub occupancy: Option<u64>,
}

/// What happened to an accepted reading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// People were added to a zone (possibly zero: the line reported, nobody came).
    Counted(Counted),
    /// The first total from a line: remembered as the starting point, nothing counted.
    Baseline,
    /// Already counted.
    Duplicate,
    /// Older than a total already counted for this line, which includes it.
    Stale,
}

/// Details of a counted reading, for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counted {
    pub zone: EntranceZone,
    pub counts: Counts,
    /// The counter had restarted (midnight or reboot) and was counted from zero.
    pub reset: bool,
    /// False when the camera's clock was off and the gateway's time was used instead.
    pub camera_clock_used: bool,
    /// Some of the people fell into an interval already closed; it will be emitted again.
    pub late: bool,
}

#[derive(Clone, Copy, Debug)]
struct LastTotal {
    counts: Counts,
    since: Option<UtcMillis>,
    camera_at: UtcMillis,
    placed: UtcMillis,
    received: UtcMillis,
}

#[derive(Clone, Debug, Default)]
struct LineState {
    last_total: Option<LastTotal>,
    last_received: Option<UtcMillis>,
    seen_deltas: BTreeSet<i64>,
    seen_intervals: BTreeMap<i64, i64>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    counts: Counts,
    occupancy: Option<(UtcMillis, u64)>,
}

/// Per-line counter state and the open intervals of every zone. See the module docs for the
/// rules.
#[derive(Clone, Debug)]
pub struct FootfallCounter {
    config: FootfallConfig,
    zones: ZoneMap,
    lines: HashMap<(CameraId, Option<String>), LineState>,
    open: BTreeMap<(i64, EntranceZone), Tally>,
    closed_before: i64,
}

impl FootfallCounter {
    pub fn new(config: FootfallConfig, zones: ZoneMap) -> Self {
        FootfallCounter {
            config,
            zones,
            lines: HashMap::new(),
            open: BTreeMap::new(),
            closed_before: i64::MIN,
        }
    }

    /// Takes one reading received by the gateway at `received`. Refusals leave the open
    /// intervals untouched.
    pub fn observe(
        &mut self,
        reading: &CameraReading,
        received: UtcMillis,
    ) -> Result<Outcome, FootfallError> {
        let zone = self
            .zones
            .zone_of(&reading.camera, reading.line.as_deref())
            .cloned()
            .ok_or_else(|| FootfallError::UnknownCamera {
                camera: reading.camera.clone(),
                line: reading.line.clone().unwrap_or_else(|| "-".to_owned()),
            })?;
        let (placed, camera_clock_used) = self.place(reading.at, received);
        let config = self.config;
        let state = self
            .lines
            .entry((reading.camera.clone(), reading.line.clone()))
            .or_default();
        // Gateway minutes since this line's previous accepted reading: the absurd-jump allowance.
        let minutes_since_last = state
            .last_received
            .map(|prev| whole_minutes(received.millis_since(prev)));

        let (span, counts, reset) = match reading.kind {
            ReadingKind::Cumulative { counts, since } => {
                let current = LastTotal {
                    counts,
                    since,
                    camera_at: reading.at,
                    placed,
                    received,
                };
                let Some(prev) = state.last_total else {
                    state.last_total = Some(current);
                    state.last_received = Some(received);
                    self.note_occupancy(&zone, placed, reading.occupancy);
                    return Ok(Outcome::Baseline);
                };
                if reading.at == prev.camera_at && counts == prev.counts && since == prev.since {
                    return Ok(Outcome::Duplicate);
                }
                if reading.at < prev.camera_at
                    && prev.camera_at.millis_since(reading.at) <= config.max_delivery_delay_ms
                {
                    return Ok(Outcome::Stale);
                }
                let new_day = matches!((since, prev.since), (Some(a), Some(b)) if a != b);
                let went_down =
                    counts.entered < prev.counts.entered || counts.exited < prev.counts.exited;
                let reset = new_day || went_down;
                let delta = if reset {
                    counts
                } else {
                    Counts::new(
                        counts.entered - prev.counts.entered,
                        counts.exited - prev.counts.exited,
                    )
                };
                // Re-baseline even if refused below, so one glitch does not poison the day.
                state.last_total = Some(current);
                state.last_received = Some(received);
                let minutes = whole_minutes(received.millis_since(prev.received));
                check_jump(&reading.camera, delta, minutes, config.max_per_minute)?;
                let earliest = placed.saturating_add_ms(-config.max_spread_ms);
                let start = prev.placed.min(placed).max(earliest);
                ((start, placed), delta, reset)
            }
            ReadingKind::Delta { counts } => {
                if state.seen_deltas.contains(&reading.at.0) {
                    return Ok(Outcome::Duplicate);
                }
                let minutes = minutes_since_last.unwrap_or(INTERVAL_MS / MINUTE_MS);
                check_jump(&reading.camera, counts, minutes, config.max_per_minute)?;
                remember(&mut state.seen_deltas, reading.at.0, config.history_ms);
                state.last_received = Some(received);
                ((placed, placed), counts, false)
            }
            ReadingKind::Interval { start, end, counts } => {
                let len = end.millis_since(start);
                if len <= 0 || len > DAY_MS {
                    return Err(FootfallError::InvalidField {
                        field: "endTime",
                        detail: format!(
                            "interval of {len} ms; expected more than 0 and at most a day"
                        ),
                    });
                }
                if state.seen_intervals.get(&start.0) == Some(&end.0) {
                    return Ok(Outcome::Duplicate);
                }
                let overlaps = state
                    .seen_intervals
                    .range(..end.0)
                    .next_back()
                    .is_some_and(|(_, &e)| e > start.0);
                if overlaps {
                    return Err(FootfallError::OverlappingInterval {
                        camera: reading.camera.clone(),
                        start,
                        end,
                    });
                }
                check_jump(
                    &reading.camera,
                    counts,
                    whole_minutes(len),
                    config.max_per_minute,
                )?;
                remember_interval(&mut state.seen_intervals, start.0, end.0, config.history_ms);
                state.last_received = Some(received);
                // Correct the camera's clock by the same amount as the reading itself, then keep
                // the end no later than the gateway's now.
                let shift = placed.millis_since(reading.at);
                let mut s = start.saturating_add_ms(shift);
                let mut e = end.saturating_add_ms(shift);
                if e > received {
                    let back = received.millis_since(e);
                    s = s.saturating_add_ms(back);
                    e = received;
                }
                ((s, e), counts, false)
            }
        };
        let late = self.spread(&zone, span.0, span.1, counts);
        self.note_occupancy(&zone, placed, reading.occupancy);
        Ok(Outcome::Counted(Counted {
            zone,
            counts,
            reset,
            camera_clock_used,
            late,
        }))
    }

    /// Closes every interval that ended at least `close_after` before `now` and returns them,
    /// oldest first. Call it periodically (e.g. every minute) and write the result to the ledger.
    pub fn close_until(&mut self, now: UtcMillis) -> Vec<ZoneInterval> {
        let cutoff = now
            .saturating_add_ms(-self.config.close_after_ms)
            .saturating_add_ms(-INTERVAL_MS)
            .0;
        // Intervals starting at or before `cutoff` have ended `close_after` ago.
        let keep = self
            .open
            .split_off(&(cutoff.saturating_add(1), EntranceZone(String::new())));
        let closed = std::mem::replace(&mut self.open, keep);
        self.closed_before = self
            .closed_before
            .max(bucket_of(cutoff).saturating_add(INTERVAL_MS));
        closed.into_iter().map(to_interval).collect()
    }

    /// Every open interval, finished or not: for shutdown, so nothing counted is lost.
    pub fn flush(&mut self) -> Vec<ZoneInterval> {
        std::mem::take(&mut self.open)
            .into_iter()
            .map(to_interval)
            .collect()
    }

    /// Applies the clock rule: the camera's time when plausible, else the gateway's.
    fn place(&self, camera_at: UtcMillis, received: UtcMillis) -> (UtcMillis, bool) {
        let earliest = received.saturating_add_ms(-self.config.max_delivery_delay_ms);
        let latest = received.saturating_add_ms(self.config.clock_tolerance_ms);
        if camera_at >= earliest && camera_at <= latest {
            (camera_at.min(received), true)
        } else {
            (received, false)
        }
    }

    /// Adds `counts` to the intervals covering `[start, end)` in proportion to overlap, in whole
    /// people with the exact total; a point (`start == end`) goes to the interval holding it.
    /// Returns whether any interval touched was already closed.
    fn spread(
        &mut self,
        zone: &EntranceZone,
        start: UtcMillis,
        end: UtcMillis,
        counts: Counts,
    ) -> bool {
        let mut late = false;
        let mut add = |open: &mut BTreeMap<(i64, EntranceZone), Tally>, bucket: i64, c: Counts| {
            late |= bucket < self.closed_before;
            let t = open.entry((bucket, zone.clone())).or_default();
            t.counts.entered = t.counts.entered.saturating_add(c.entered);
            t.counts.exited = t.counts.exited.saturating_add(c.exited);
        };
        let total = end.0.saturating_sub(start.0);
        if total <= 0 {
            // A reading at an interval's very end belongs to the interval it closes.
            add(&mut self.open, bucket_of(end.0.saturating_sub(1)), counts);
            return late;
        }
        let mut bucket = bucket_of(start.0);
        let mut covered: i64 = 0;
        let mut given = Counts::ZERO;
        while bucket < end.0 {
            let next = bucket.saturating_add(INTERVAL_MS);
            let overlap = next.min(end.0) - bucket.max(start.0);
            covered = covered.saturating_add(overlap);
            let share = |n: u64| -> u64 {
                let s = u128::from(n) * covered as u128 / total as u128;
                u64::try_from(s).unwrap_or(n)
            };
            let upto = Counts::new(share(counts.entered), share(counts.exited));
            add(
                &mut self.open,
                bucket,
                Counts::new(upto.entered - given.entered, upto.exited - given.exited),
            );
            given = upto;
            if next == bucket {
                break;
            }
            bucket = next;
        }
        late
    }

    fn note_occupancy(&mut self, zone: &EntranceZone, placed: UtcMillis, occupancy: Option<u64>) {
        let Some(value) = occupancy else { return };
        let bucket = bucket_of(placed.0.saturating_sub(1));
        let t = self.open.entry((bucket, zone.clone())).or_default();
        if t.occupancy.is_none_or(|(at, _)| at <= placed) {
            t.occupancy = Some((placed, value));
        }
    }
}

fn to_interval(((start, zone), tally): ((i64, EntranceZone), Tally)) -> ZoneInterval {
    ZoneInterval {
        zone,
        start: UtcMillis(start),
        end: UtcMillis(start.saturating_add(INTERVAL_MS)),
        counts: tally.counts,
        occupancy: tally.occupancy.map(|(_, v)| v),
    }
}

/// Start of the interval holding `t`.
fn bucket_of(t: i64) -> i64 {
    t.div_euclid(INTERVAL_MS).saturating_mul(INTERVAL_MS)
}

/// Whole minutes in `ms`, rounded up, at least one.
fn whole_minutes(ms: i64) -> i64 {
    (ms.max(0) / MINUTE_MS + i64::from(ms.max(0) % MINUTE_MS != 0)).max(1)
}

fn check_jump(
    camera: &CameraId,
    counts: Counts,
    minutes: i64,
    max_per_minute: u64,
) -> Result<(), FootfallError> {
    let minutes = u64::try_from(minutes.max(1)).unwrap_or(1);
    let allowed = max_per_minute.saturating_mul(minutes);
    if counts.entered > allowed || counts.exited > allowed {
        return Err(FootfallError::AbsurdJump {
            camera: camera.clone(),
            entered: counts.entered,
            exited: counts.exited,
            minutes,
            allowed,
        });
    }
    Ok(())
}

/// Remembers a delta's camera time, forgetting those older than `history` before the newest.
fn remember(seen: &mut BTreeSet<i64>, at: i64, history_ms: i64) {
    seen.insert(at);
    if let Some(&newest) = seen.last() {
        *seen = seen.split_off(&newest.saturating_sub(history_ms));
    }
    while seen.len() > MAX_REMEMBERED {
        seen.pop_first();
    }
}

/// Remembers an interval, forgetting those that ended `history` before the newest.
fn remember_interval(seen: &mut BTreeMap<i64, i64>, start: i64, end: i64, history_ms: i64) {
    seen.insert(start, end);
    if let Some((&newest, _)) = seen.last_key_value() {
        let horizon = newest.saturating_sub(history_ms);
        seen.retain(|_, e| *e >= horizon);
    }
    while seen.len() > MAX_REMEMBERED {
        seen.pop_first();
    }
}
