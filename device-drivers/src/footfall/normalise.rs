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
//!   duplicate; one older by the camera's own clock than the line's latest (up to `history`
//!   back, or with the same time and no higher totals) is stale: the later total already
//!   includes it, and taking it for a reset would count its people twice. A camera whose clock
//!   steps back loses nothing: its totals are counted once its clock passes the old time again.
//!   A clock that jumps back further than `history` (a reboot to 1970) is a fresh start. Deltas
//!   are remembered by camera time and intervals by `(start, end)`, so re-sent ones count once;
//!   an interval overlapping one already counted is refused. Out-of-order deltas and intervals
//!   are simply added where they belong.
//! * **One kind per line.** A line keeps the kind of its first reading (totals, deltas or
//!   intervals); a camera pushing both realTime totals and timeRange intervals for one line
//!   would count every visitor twice, so the second kind is refused.
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
use serde::{Deserialize, Serialize};

use super::{CameraId, CameraReading, Counts, FootfallError, ReadingKind};

/// Length of one footfall interval.
pub const INTERVAL_MS: i64 = 15 * 60 * 1000;
const MINUTE_MS: i64 = 60 * 1000;
const DAY_MS: i64 = 24 * 60 * MINUTE_MS;
/// Remembered deltas and intervals per line, whatever `history` says: a bound on memory.
const MAX_REMEMBERED: usize = 4096;

/// An entrance as the shop names it ("Main entrance", "Car park door"); cameras on the same
/// entrance are summed into it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
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

    /// Every zone a camera or line counts for, sorted, each once.
    pub fn zones(&self) -> Vec<EntranceZone> {
        let set: BTreeSet<&EntranceZone> =
            self.cameras.values().chain(self.lines.values()).collect();
        set.into_iter().cloned().collect()
    }

    /// Cameras with the whole camera or any of its lines counting for `zone`, sorted, each once.
    pub fn cameras_of(&self, zone: &EntranceZone) -> Vec<CameraId> {
        let set: BTreeSet<&CameraId> = self
            .cameras
            .iter()
            .filter(|(_, z)| *z == zone)
            .map(|(c, _)| c)
            .chain(
                self.lines
                    .iter()
                    .filter(|(_, z)| *z == zone)
                    .map(|((c, _), _)| c),
            )
            .collect();
        set.into_iter().cloned().collect()
    }
}

/// Limits and tolerances; the defaults suit a shop door.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FootfallConfig {
    /// Most people one counting line may add per minute; a wide double door sees well under 100.
    pub max_per_minute: u64,
    /// How far a camera's clock may run ahead of the gateway and still be believed.
    pub clock_tolerance_ms: i64,
    /// How late a message may arrive and still be placed at the camera's time.
    pub max_delivery_delay_ms: i64,
    /// How far back an increase of a cumulative counter is spread (at most a day).
    pub max_spread_ms: i64,
    /// How long deltas and intervals are remembered to recognise re-sends, and how far a camera's
    /// clock may step back before an older total is a fresh start rather than a late message.
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LastTotal {
    counts: Counts,
    since: Option<UtcMillis>,
    camera_at: UtcMillis,
    placed: UtcMillis,
    received: UtcMillis,
}

/// The kind a line committed to with its first reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum LineKind {
    Totals,
    Deltas,
    Intervals,
}

impl LineKind {
    fn of(kind: &ReadingKind) -> Self {
        match kind {
            ReadingKind::Cumulative { .. } => LineKind::Totals,
            ReadingKind::Delta { .. } => LineKind::Deltas,
            ReadingKind::Interval { .. } => LineKind::Intervals,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct LineState {
    kind: Option<LineKind>,
    last_total: Option<LastTotal>,
    last_received: Option<UtcMillis>,
    seen_deltas: BTreeSet<i64>,
    seen_intervals: BTreeMap<i64, i64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Tally {
    counts: Counts,
    occupancy: Option<(UtcMillis, u64)>,
}

/// Everything a [`FootfallCounter`] knows, to be stored (as JSON, say) and handed to
/// [`FootfallCounter::restore`] after a restart: a restored counter treats every later reading
/// exactly as the original would have. Opaque on purpose; only serde looks inside.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterSnapshot {
    lines: Vec<((CameraId, Option<String>), LineState)>,
    open: Vec<((i64, EntranceZone), Tally)>,
    closed_before: i64,
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

    /// The counter's whole state, for [`FootfallCounter::restore`]. Lines are sorted, so equal
    /// states give equal snapshots.
    pub fn snapshot(&self) -> CounterSnapshot {
        let mut lines: Vec<_> = self
            .lines
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        lines.sort_by(|a, b| a.0.cmp(&b.0));
        CounterSnapshot {
            lines,
            open: self.open.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            closed_before: self.closed_before,
        }
    }

    /// A counter that continues from `snap` under (possibly new) `config` and `zones`. What a
    /// snapshot remembers is bounded again here, so a stored snapshot cannot grow memory beyond
    /// what the counter itself would keep.
    pub fn restore(config: FootfallConfig, zones: ZoneMap, snap: CounterSnapshot) -> Self {
        let lines = snap
            .lines
            .into_iter()
            .map(|(key, mut state)| {
                while state.seen_deltas.len() > MAX_REMEMBERED {
                    state.seen_deltas.pop_first();
                }
                while state.seen_intervals.len() > MAX_REMEMBERED {
                    state.seen_intervals.pop_first();
                }
                (key, state)
            })
            .collect();
        FootfallCounter {
            config,
            zones,
            lines,
            open: snap.open.into_iter().collect(),
            closed_before: snap.closed_before,
        }
    }

    /// Every interval ending at or before this instant has been handed out by
    /// [`FootfallCounter::close_until`] (a reading landing there later is emitted again as a
    /// late addition). `None` before the first close.
    pub fn closed_before(&self) -> Option<UtcMillis> {
        (self.closed_before != i64::MIN).then_some(UtcMillis(self.closed_before))
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
        let kind = LineKind::of(&reading.kind);
        if state.kind.is_some_and(|k| k != kind) {
            return Err(FootfallError::MixedCountKinds {
                camera: reading.camera.clone(),
            });
        }
        state.kind = Some(kind);
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
                let stepped_back = reading.at < prev.camera_at
                    && prev.camera_at.millis_since(reading.at) <= config.history_ms;
                let same_time_no_higher = reading.at == prev.camera_at
                    && counts.entered <= prev.counts.entered
                    && counts.exited <= prev.counts.exited;
                if stepped_back || same_time_no_higher {
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
                let earliest = placed.saturating_add_ms(-config.max_spread_ms.clamp(0, DAY_MS));
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
                // Correct the camera's clock by the same amount as the reading itself, keep the
                // end no later than the gateway's now, and keep the interval's length.
                let shift = placed.millis_since(reading.at);
                let e = end.saturating_add_ms(shift).min(received);
                ((e.saturating_add_ms(-len), e), counts, false)
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

#[cfg(test)]
mod tests {
    use super::super::{CameraFormat, DEFAULT_MAX_PAYLOAD, parse_payload};
    use super::*;
    use proptest::prelude::*;

    /// Expected (in, out) counted, or `None` for a baseline.
    type Expected = Option<(u64, u64)>;
    /// Expected (in, out, reset), or `None` for a baseline.
    type ExpectedReset = Option<(u64, u64, bool)>;

    /// 2026-11-22 at `h:m:s` UTC.
    fn t(h: i64, m: i64, s: i64) -> UtcMillis {
        UtcMillis(1_795_305_600_000 + ((h * 60 + m) * 60 + s) * 1000)
    }

    fn main() -> EntranceZone {
        EntranceZone::new("Main entrance")
    }

    fn side() -> EntranceZone {
        EntranceZone::new("Side door")
    }

    fn zones() -> ZoneMap {
        let mut z = ZoneMap::new();
        z.assign_camera(CameraId::new("north"), main())
            .assign_camera(CameraId::new("south"), main())
            .assign_camera(CameraId::new("xovis"), main())
            .assign_line(CameraId::new("xovis"), "side", side());
        z
    }

    fn counter() -> FootfallCounter {
        FootfallCounter::new(FootfallConfig::default(), zones())
    }

    fn total(camera: &str, at: UtcMillis, entered: u64, exited: u64) -> CameraReading {
        CameraReading {
            camera: CameraId::new(camera),
            line: None,
            at,
            kind: ReadingKind::Cumulative {
                counts: Counts::new(entered, exited),
                since: None,
            },
            occupancy: None,
        }
    }

    fn delta(line: &str, at: UtcMillis, entered: u64, exited: u64) -> CameraReading {
        CameraReading {
            camera: CameraId::new("xovis"),
            line: Some(line.to_owned()),
            at,
            kind: ReadingKind::Delta {
                counts: Counts::new(entered, exited),
            },
            occupancy: None,
        }
    }

    fn interval(at: UtcMillis, start: UtcMillis, end: UtcMillis, entered: u64) -> CameraReading {
        CameraReading {
            camera: CameraId::new("south"),
            line: Some("1".to_owned()),
            at,
            kind: ReadingKind::Interval {
                start,
                end,
                counts: Counts::new(entered, entered),
            },
            occupancy: None,
        }
    }

    fn counted(outcome: Outcome) -> Counted {
        match outcome {
            Outcome::Counted(c) => c,
            other => panic!("expected Counted, got {other:?}"),
        }
    }

    /// Closed intervals as (zone, start, entered, exited) for compact assertions.
    fn rows(v: Vec<ZoneInterval>) -> Vec<(String, UtcMillis, u64, u64)> {
        v.into_iter()
            .map(|i| (i.zone.0, i.start, i.counts.entered, i.counts.exited))
            .collect()
    }

    #[test]
    fn cumulative_totals_become_deltas_spread_over_intervals() {
        let mut c = counter();
        // (camera time, in, out, expected outcome in/out or None for baseline)
        let steps: &[(UtcMillis, u64, u64, Expected)] = &[
            (t(10, 1, 0), 100, 90, None),
            (t(10, 6, 0), 110, 95, Some((10, 5))),
            (t(10, 11, 0), 130, 100, Some((20, 5))),
            (t(10, 16, 0), 135, 105, Some((5, 5))),
        ];
        for &(at, i, o, want) in steps {
            let outcome = c.observe(&total("north", at, i, o), at).unwrap();
            match want {
                None => assert_eq!(outcome, Outcome::Baseline),
                Some((wi, wo)) => {
                    let got = counted(outcome);
                    assert_eq!(got.counts, Counts::new(wi, wo));
                    assert!(!got.reset && got.camera_clock_used && !got.late);
                }
            }
        }
        // Not closed until 10:30 + 2 minutes of grace.
        assert_eq!(c.close_until(t(10, 16, 30)), vec![]);
        // The 10:11 -> 10:16 increase of 5 falls 4 minutes before 10:15 and 1 after.
        assert_eq!(
            rows(c.close_until(t(10, 17, 0))),
            vec![("Main entrance".to_owned(), t(10, 0, 0), 34, 14)]
        );
        assert_eq!(
            rows(c.close_until(t(10, 32, 0))),
            vec![("Main entrance".to_owned(), t(10, 15, 0), 1, 1)]
        );
    }

    #[test]
    fn resets_count_from_zero_never_negative() {
        let mut c = counter();
        // Axis: a new counting day (`since` changes) is a reset even if the total went up.
        let day = |at, since, i, o| CameraReading {
            kind: ReadingKind::Cumulative {
                counts: Counts::new(i, o),
                since: Some(since),
            },
            ..total("north", at, 0, 0)
        };
        let yesterday = t(0, 0, 0).saturating_add_ms(-DAY_MS);
        let cases: &[(CameraReading, ExpectedReset)] = &[
            (day(t(-1, 58, 0), yesterday, 500, 490), None),
            (day(t(0, 3, 0), t(0, 0, 0), 7, 5), Some((7, 5, true))),
            (day(t(0, 8, 0), t(0, 0, 0), 9, 6), Some((2, 1, false))),
            // Reboot: the total drops, the new value counts from zero.
            (day(t(0, 9, 0), t(0, 0, 0), 3, 0), Some((3, 0, true))),
            // Only one direction went down: still a reset, never a negative count.
            (day(t(0, 10, 0), t(0, 0, 0), 8, 0), Some((5, 0, false))),
            (day(t(0, 11, 0), t(0, 0, 0), 9, 2), Some((1, 2, false))),
            (day(t(0, 12, 0), t(0, 0, 0), 10, 1), Some((10, 1, true))),
        ];
        for (reading, want) in cases {
            let outcome = c.observe(reading, reading.at).unwrap();
            match want {
                None => assert_eq!(outcome, Outcome::Baseline),
                Some((i, o, reset)) => {
                    let got = counted(outcome);
                    assert_eq!((got.counts, got.reset), (Counts::new(*i, *o), *reset));
                }
            }
        }
    }

    #[test]
    fn duplicates_and_resent_intervals_count_once() {
        let mut c = counter();
        let r = total("north", t(9, 0, 0), 10, 10);
        assert_eq!(c.observe(&r, t(9, 0, 1)).unwrap(), Outcome::Baseline);
        assert_eq!(c.observe(&r, t(9, 0, 5)).unwrap(), Outcome::Duplicate);
        let r2 = total("north", t(9, 1, 0), 12, 10);
        counted(c.observe(&r2, t(9, 1, 0)).unwrap());
        assert_eq!(c.observe(&r2, t(9, 2, 0)).unwrap(), Outcome::Duplicate);

        let d = delta("1", t(9, 5, 0), 4, 3);
        counted(c.observe(&d, t(9, 5, 0)).unwrap());
        assert_eq!(c.observe(&d, t(9, 5, 30)).unwrap(), Outcome::Duplicate);

        let i = interval(t(9, 15, 2), t(9, 0, 0), t(9, 15, 0), 6);
        counted(c.observe(&i, t(9, 15, 2)).unwrap());
        assert_eq!(c.observe(&i, t(9, 16, 0)).unwrap(), Outcome::Duplicate);
        // A re-sent interval with other boundaries that overlaps is refused, not added.
        let shifted = interval(t(9, 20, 0), t(9, 5, 0), t(9, 20, 0), 6);
        let err = c.observe(&shifted, t(9, 20, 0)).unwrap_err();
        assert_eq!(err.reason(), "overlapping_interval");

        assert_eq!(
            rows(c.close_until(t(12, 0, 0))),
            vec![("Main entrance".to_owned(), t(9, 0, 0), 2 + 4 + 6, 3 + 6),]
        );
    }

    #[test]
    fn out_of_order_delivery() {
        let mut c = counter();
        c.observe(&total("north", t(10, 0, 0), 100, 100), t(10, 0, 0))
            .unwrap();
        // 10:06 arrives before 10:03: the later total already includes the earlier one.
        counted(
            c.observe(&total("north", t(10, 6, 0), 110, 104), t(10, 6, 1))
                .unwrap(),
        );
        assert_eq!(
            c.observe(&total("north", t(10, 3, 0), 105, 102), t(10, 6, 2))
                .unwrap(),
            Outcome::Stale
        );
        // Deltas out of order each land in their own interval.
        counted(
            c.observe(&delta("1", t(10, 20, 0), 3, 0), t(10, 20, 5))
                .unwrap(),
        );
        counted(
            c.observe(&delta("1", t(10, 14, 0), 2, 1), t(10, 20, 6))
                .unwrap(),
        );
        assert_eq!(
            rows(c.close_until(t(11, 0, 0))),
            vec![
                ("Main entrance".to_owned(), t(10, 0, 0), 12, 5),
                ("Main entrance".to_owned(), t(10, 15, 0), 3, 0),
            ]
        );
    }

    #[test]
    fn late_redelivery_after_a_reset_is_not_counted_twice() {
        let mut c = counter();
        let steps: &[(CameraReading, UtcMillis, Outcome)] = &[
            (
                total("north", t(10, 0, 0), 500, 480),
                t(10, 0, 0),
                Outcome::Baseline,
            ),
            // Reboot at 10:04: the total restarts.
            (
                total("north", t(10, 5, 0), 3, 1),
                t(10, 5, 0),
                Outcome::Counted(Counted {
                    zone: main(),
                    counts: Counts::new(3, 1),
                    reset: true,
                    camera_clock_used: true,
                    late: false,
                }),
            ),
            // The broker redelivers a pre-reboot message 40 minutes late: stale, not a reset.
            (
                total("north", t(10, 2, 0), 510, 481),
                t(10, 42, 0),
                Outcome::Stale,
            ),
            // Two totals stamped in the same second, delivered out of order.
            (
                total("north", t(10, 5, 0), 5, 1),
                t(10, 42, 1),
                Outcome::Counted(Counted {
                    zone: main(),
                    counts: Counts::new(2, 0),
                    reset: false,
                    camera_clock_used: false,
                    late: false,
                }),
            ),
            (
                total("north", t(10, 5, 0), 4, 1),
                t(10, 42, 2),
                Outcome::Stale,
            ),
        ];
        for (reading, received, want) in steps {
            assert_eq!(&c.observe(reading, *received).unwrap(), want, "{reading:?}");
        }
    }

    #[test]
    fn a_clock_reset_to_1970_is_a_fresh_start() {
        let mut c = counter();
        c.observe(&total("north", t(10, 0, 0), 500, 480), t(10, 0, 0))
            .unwrap();
        let got = counted(
            c.observe(&total("north", UtcMillis(60_000), 4, 2), t(10, 5, 0))
                .unwrap(),
        );
        assert_eq!((got.counts, got.reset), (Counts::new(4, 2), true));
        assert!(!got.camera_clock_used);
    }

    #[test]
    fn one_kind_of_count_per_line() {
        let mut c = counter();
        let i = interval(t(9, 15, 0), t(9, 0, 0), t(9, 15, 0), 6);
        counted(c.observe(&i, t(9, 15, 0)).unwrap());
        let mut realtime = total("south", t(9, 16, 0), 100, 90);
        realtime.line = Some("1".to_owned());
        let err = c.observe(&realtime, t(9, 16, 0)).unwrap_err();
        assert_eq!(err.reason(), "mixed_count_kinds");
    }

    #[test]
    fn wrong_camera_clocks_fall_back_to_gateway_time() {
        let mut c = counter();
        // A camera three hours behind: its readings are placed when the gateway got them.
        c.observe(&total("north", t(7, 0, 0), 0, 0), t(10, 0, 0))
            .unwrap();
        let got = counted(
            c.observe(&total("north", t(7, 5, 0), 6, 2), t(10, 5, 0))
                .unwrap(),
        );
        assert!(!got.camera_clock_used);
        // A Hikvision interval from a camera one hour ahead is shifted back by that hour.
        let ahead = interval(t(11, 15, 1), t(11, 0, 0), t(11, 15, 0), 9);
        let got = counted(c.observe(&ahead, t(10, 15, 1)).unwrap());
        assert!(!got.camera_clock_used);
        // A delayed delivery inside the tolerance keeps the camera's time.
        let late = delta("1", t(10, 14, 0), 1, 1);
        assert!(counted(c.observe(&late, t(10, 24, 0)).unwrap()).camera_clock_used);
        assert_eq!(
            rows(c.close_until(t(11, 0, 0))),
            vec![(
                "Main entrance".to_owned(),
                t(10, 0, 0),
                6 + 9 + 1,
                2 + 9 + 1
            )]
        );
    }

    #[test]
    fn cameras_on_one_entrance_sum_per_zone() {
        let mut c = counter();
        for cam in ["north", "south"] {
            c.observe(&total(cam, t(8, 0, 0), 50, 40), t(8, 0, 0))
                .unwrap();
        }
        counted(
            c.observe(&total("north", t(8, 5, 0), 60, 41), t(8, 5, 0))
                .unwrap(),
        );
        counted(
            c.observe(&total("south", t(8, 5, 0), 53, 45), t(8, 5, 0))
                .unwrap(),
        );
        // Xovis line "side" is assigned on its own; its other lines follow the camera.
        let side_counted = counted(
            c.observe(&delta("side", t(8, 6, 0), 2, 2), t(8, 6, 0))
                .unwrap(),
        );
        assert_eq!(side_counted.zone, side());
        counted(
            c.observe(&delta("1", t(8, 6, 0), 1, 0), t(8, 6, 0))
                .unwrap(),
        );
        let err = c
            .observe(&total("car-park", t(8, 6, 0), 1, 1), t(8, 6, 0))
            .unwrap_err();
        assert_eq!(err.reason(), "unknown_camera");
        assert_eq!(
            rows(c.close_until(t(9, 0, 0))),
            vec![
                ("Main entrance".to_owned(), t(8, 0, 0), 10 + 3 + 1, 1 + 5),
                ("Side door".to_owned(), t(8, 0, 0), 2, 2),
            ]
        );
    }

    #[test]
    fn absurd_jumps_are_refused_and_rebaselined() {
        let mut c = counter();
        c.observe(&total("north", t(12, 0, 0), 10, 10), t(12, 0, 0))
            .unwrap();
        let jump = total("north", t(12, 1, 0), 1_000_010, 10);
        let err = c.observe(&jump, t(12, 1, 0)).unwrap_err();
        assert_eq!(
            err,
            FootfallError::AbsurdJump {
                camera: CameraId::new("north"),
                entered: 1_000_000,
                exited: 0,
                minutes: 1,
                allowed: 120,
            }
        );
        // The next reading counts from the refused value, not from 10.
        let got = counted(
            c.observe(&total("north", t(12, 2, 0), 1_000_013, 11), t(12, 2, 0))
                .unwrap(),
        );
        assert_eq!(got.counts, Counts::new(3, 1));
        // Deltas and intervals are refused outright.
        let err = c.observe(&delta("1", t(12, 3, 0), 5_000, 0), t(12, 3, 0));
        assert_eq!(err.unwrap_err().reason(), "absurd_jump");
        let err = c.observe(
            &interval(t(12, 15, 0), t(12, 0, 0), t(12, 15, 0), 1801),
            t(12, 15, 0),
        );
        assert_eq!(err.unwrap_err().reason(), "absurd_jump");
        // A long silence allows a proportionally larger catch-up.
        let got = counted(
            c.observe(
                &total("north", t(13, 2, 0), 1_000_013 + 6_000, 11),
                t(13, 2, 0),
            )
            .unwrap(),
        );
        assert_eq!(got.counts.entered, 6_000);
    }

    #[test]
    fn late_readings_reopen_a_closed_interval_additively() {
        let mut c = counter();
        counted(
            c.observe(&delta("1", t(14, 10, 0), 4, 4), t(14, 10, 0))
                .unwrap(),
        );
        assert_eq!(
            rows(c.close_until(t(14, 20, 0))),
            vec![("Main entrance".to_owned(), t(14, 0, 0), 4, 4)]
        );
        let got = counted(
            c.observe(&delta("1", t(14, 12, 0), 1, 0), t(14, 21, 0))
                .unwrap(),
        );
        assert!(got.late);
        assert_eq!(
            rows(c.flush()),
            vec![("Main entrance".to_owned(), t(14, 0, 0), 1, 0)]
        );
    }

    #[test]
    fn occupancy_is_the_latest_in_the_interval() {
        let mut c = counter();
        let mut r = total("north", t(15, 1, 0), 0, 0);
        r.occupancy = Some(3);
        c.observe(&r, t(15, 1, 0)).unwrap();
        let mut r = total("north", t(15, 7, 0), 9, 2);
        r.occupancy = Some(10);
        c.observe(&r, t(15, 7, 0)).unwrap();
        let v = c.close_until(t(16, 0, 0));
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].occupancy, Some(10));
        assert_eq!(v[0].end, t(15, 15, 0));
    }

    #[test]
    fn vendor_payloads_end_to_end() {
        let mut c = counter();
        let axis = |stamp: &str, i: u64, o: u64| {
            format!(
                r#"{{"serial":"ACCC8EF1A2B3","name":"North","timestamp":"{stamp}","in":{i},"out":{o}}}"#
            )
        };
        let feed: &[(String, UtcMillis)] = &[
            (axis("20261122090100", 40, 30), t(9, 1, 1)),
            (axis("20261122090200", 44, 31), t(9, 2, 1)),
            (axis("20261122090200", 44, 31), t(9, 2, 9)),
            (axis("20261122090300", 45, 33), t(9, 3, 1)),
        ];
        let format = CameraFormat::AxisLiveSum {
            utc_offset_minutes: 0,
        };
        for (payload, received) in feed {
            for r in parse_payload(
                format,
                &CameraId::new("north"),
                payload.as_bytes(),
                DEFAULT_MAX_PAYLOAD,
            )
            .unwrap()
            {
                c.observe(&r, *received).unwrap();
            }
        }
        assert_eq!(
            rows(c.close_until(t(10, 0, 0))),
            vec![("Main entrance".to_owned(), t(9, 0, 0), 5, 3)]
        );
    }

    proptest! {
        /// Hostile readings built by hand, with any times at all, neither panic nor hang.
        #[test]
        fn extreme_times_never_panic(
            steps in proptest::collection::vec(
                (0u8..3, any::<i64>(), any::<i64>(), any::<i64>(), any::<u64>(), any::<u64>()),
                1..20,
            )
        ) {
            let mut c = counter();
            for (kind, at, other, received, a, b) in steps {
                let (at, other, received) = (UtcMillis(at), UtcMillis(other), UtcMillis(received));
                let reading = match kind {
                    0 => total("north", at, a, b),
                    1 => delta("1", at, a, b),
                    _ => interval(at, other, other.saturating_add_ms(a as i64 % DAY_MS), b),
                };
                let _ = c.observe(&reading, received);
                let _ = c.close_until(received);
            }
            let _ = c.flush();
        }
    }

    proptest! {
        /// Whatever arrives, in whatever order, every person counted lands in exactly one interval
        /// and nothing panics.
        #[test]
        fn counted_people_are_conserved(
            steps in proptest::collection::vec(
                (0u8..3, -3_600_000i64..3_600_000, 0u64..2_000, 0u64..2_000, 0i64..600_000),
                1..60,
            )
        ) {
            let mut c = counter();
            let mut now = t(10, 0, 0);
            let mut sum = Counts::ZERO;
            let mut emitted = Counts::ZERO;
            for (kind, skew, a, b, wait) in steps {
                now = now.saturating_add_ms(wait);
                let at = now.saturating_add_ms(skew);
                let reading = match kind {
                    0 => total("north", at, a, b),
                    1 => delta("1", at, a, b),
                    _ => interval(at, at.saturating_add_ms(-(wait + 1)), at, a),
                };
                if let Ok(Outcome::Counted(got)) = c.observe(&reading, now) {
                    sum.entered += got.counts.entered;
                    sum.exited += got.counts.exited;
                }
                for i in c.close_until(now) {
                    prop_assert!(i.end.millis_since(i.start) == INTERVAL_MS);
                    emitted.entered += i.counts.entered;
                    emitted.exited += i.counts.exited;
                }
            }
            for i in c.flush() {
                emitted.entered += i.counts.entered;
                emitted.exited += i.counts.exited;
            }
            prop_assert_eq!(sum, emitted);
        }
    }

    proptest! {
        /// A counter stored as JSON and restored at any point behaves exactly like one that was
        /// never interrupted: same outcomes, same intervals.
        #[test]
        fn restored_counter_continues_exactly(
            steps in proptest::collection::vec(
                (0u8..3, -3_600_000i64..3_600_000, 0u64..500, 0u64..500, 0i64..600_000),
                1..60,
            ),
            cut in 0usize..60,
        ) {
            let mut plain = counter();
            let mut resumed = counter();
            let mut now = t(10, 0, 0);
            for (i, (kind, skew, a, b, wait)) in steps.into_iter().enumerate() {
                if i == cut {
                    let json = serde_json::to_string(&resumed.snapshot()).unwrap();
                    let snap: CounterSnapshot = serde_json::from_str(&json).unwrap();
                    resumed = FootfallCounter::restore(FootfallConfig::default(), zones(), snap);
                    prop_assert_eq!(resumed.snapshot(), plain.snapshot());
                }
                now = now.saturating_add_ms(wait);
                let at = now.saturating_add_ms(skew);
                let reading = match kind {
                    0 => total("north", at, a, b),
                    1 => delta("1", at, a, b),
                    _ => interval(at, at.saturating_add_ms(-(wait + 1)), at, a),
                };
                prop_assert_eq!(plain.observe(&reading, now), resumed.observe(&reading, now));
                prop_assert_eq!(plain.close_until(now), resumed.close_until(now));
                prop_assert_eq!(plain.closed_before(), resumed.closed_before());
            }
            prop_assert_eq!(plain.flush(), resumed.flush());
        }
    }

    #[test]
    fn zone_map_lists_zones_and_their_cameras() {
        let z = zones();
        assert_eq!(z.zones(), vec![main(), side()]);
        assert_eq!(
            z.cameras_of(&main()),
            vec![
                CameraId::new("north"),
                CameraId::new("south"),
                CameraId::new("xovis")
            ]
        );
        assert_eq!(z.cameras_of(&side()), vec![CameraId::new("xovis")]);
        assert!(z.cameras_of(&EntranceZone::new("Back")).is_empty());
    }

    #[test]
    fn closed_before_is_none_until_the_first_close() {
        let mut c = counter();
        assert_eq!(c.closed_before(), None);
        c.close_until(t(10, 20, 0));
        // 10:20 minus the 2-minute grace: the interval 10:00..10:15 is closed.
        assert_eq!(c.closed_before(), Some(t(10, 15, 0)));
    }
}
