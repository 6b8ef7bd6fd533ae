//! Which cameras are reporting, and since when they have not been.
//!
//! A camera that goes silent has not counted zero people: its gap is missing data. The rules:
//!
//! * Any message from a camera, accepted or refused, proves it is alive.
//! * A camera silent for longer than the silence timeout is offline **from its last message**:
//!   nothing it saw after that reached us. An MQTT last will (or an explicit `offline` status)
//!   marks it offline at once, also from its last message when there was one.
//! * A camera configured but never heard from is offline from the moment it was configured.
//! * [`CameraPresence::missing_in`] answers whether a camera was offline at any instant of an
//!   interval, from the open offline span and the spans remembered for the last two days.
//!
//! Pure and serialisable, like the counter, so the agent stores it with the counter's snapshot.
use std::collections::{BTreeMap, VecDeque};

use aisle_protocol::UtcMillis;
use serde::{Deserialize, Serialize};

use super::CameraId;

/// How long closed offline spans are remembered.
const SPAN_HISTORY_MS: i64 = 2 * 24 * 60 * 60 * 1000;
/// Most closed offline spans remembered per camera, whatever their age.
const MAX_SPANS: usize = 1024;

/// A camera came back or went away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PresenceChange {
    Online {
        camera: CameraId,
        offline_since: UtcMillis,
    },
    Offline {
        camera: CameraId,
        since: UtcMillis,
    },
}

/// One camera as an operator sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CameraStatus {
    pub camera: CameraId,
    pub online: bool,
    pub last_seen: Option<UtcMillis>,
    pub offline_since: Option<UtcMillis>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct CameraState {
    last_seen: Option<UtcMillis>,
    offline_since: Option<UtcMillis>,
    /// Closed offline spans `[from, to)`, oldest first.
    spans: VecDeque<(i64, i64)>,
}

/// Presence of every configured camera. See the module docs for the rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CameraPresence {
    cameras: BTreeMap<CameraId, CameraState>,
}

impl CameraPresence {
    pub fn new() -> Self {
        CameraPresence::default()
    }

    /// Makes the tracked set exactly `cameras`: new ones are offline from `now` until first
    /// heard, ones no longer configured are forgotten, the others keep their state.
    pub fn configure(&mut self, cameras: &[CameraId], now: UtcMillis) {
        self.cameras.retain(|c, _| cameras.contains(c));
        for c in cameras {
            self.cameras
                .entry(c.clone())
                .or_insert_with(|| CameraState {
                    offline_since: Some(now),
                    ..CameraState::default()
                });
        }
    }

    /// A message from `camera` arrived at `at`. Unknown cameras are ignored.
    pub fn heard(&mut self, camera: &CameraId, at: UtcMillis) -> Option<PresenceChange> {
        let state = self.cameras.get_mut(camera)?;
        state.last_seen = Some(state.last_seen.map_or(at, |l| l.max(at)));
        let since = state.offline_since.take()?;
        if at > since {
            state.spans.push_back((since.0, at.0));
            forget_old(&mut state.spans, at.0);
        }
        Some(PresenceChange::Online {
            camera: camera.clone(),
            offline_since: since,
        })
    }

    /// The broker delivered the camera's last will, or the camera said it is going offline.
    pub fn last_will(&mut self, camera: &CameraId, at: UtcMillis) -> Option<PresenceChange> {
        let state = self.cameras.get_mut(camera)?;
        if state.offline_since.is_some() {
            return None;
        }
        let since = state.last_seen.map_or(at, |l| l.min(at));
        state.offline_since = Some(since);
        Some(PresenceChange::Offline {
            camera: camera.clone(),
            since,
        })
    }

    /// Marks cameras silent for longer than `silence_timeout_ms` as offline from their last
    /// message.
    pub fn tick(&mut self, now: UtcMillis, silence_timeout_ms: i64) -> Vec<PresenceChange> {
        let mut changes = Vec::new();
        for (camera, state) in &mut self.cameras {
            if state.offline_since.is_some() {
                continue;
            }
            let Some(last) = state.last_seen else {
                continue;
            };
            if now.millis_since(last) > silence_timeout_ms {
                state.offline_since = Some(last);
                changes.push(PresenceChange::Offline {
                    camera: camera.clone(),
                    since: last,
                });
            }
        }
        changes
    }

    /// Was `camera` offline at any instant of `[start, end)`? An unknown camera is missing.
    pub fn missing_in(&self, camera: &CameraId, start: UtcMillis, end: UtcMillis) -> bool {
        let Some(state) = self.cameras.get(camera) else {
            return true;
        };
        if end <= start {
            return false;
        }
        state.offline_since.is_some_and(|s| s < end)
            || state
                .spans
                .iter()
                .any(|&(from, to)| from < end.0 && to > start.0)
    }

    /// Every tracked camera, sorted by id.
    pub fn status(&self) -> Vec<CameraStatus> {
        self.cameras
            .iter()
            .map(|(camera, s)| CameraStatus {
                camera: camera.clone(),
                online: s.offline_since.is_none(),
                last_seen: s.last_seen,
                offline_since: s.offline_since,
            })
            .collect()
    }

    /// Whether `camera` is tracked and currently reporting.
    pub fn is_online(&self, camera: &CameraId) -> bool {
        self.cameras
            .get(camera)
            .is_some_and(|s| s.offline_since.is_none())
    }

    /// Bounds what a stored snapshot may hold, like [`CameraPresence::heard`] does as it goes.
    pub fn bounded(mut self) -> Self {
        for state in self.cameras.values_mut() {
            while state.spans.len() > MAX_SPANS {
                state.spans.pop_front();
            }
        }
        self
    }
}

fn forget_old(spans: &mut VecDeque<(i64, i64)>, now: i64) {
    let horizon = now.saturating_sub(SPAN_HISTORY_MS);
    while spans.front().is_some_and(|&(_, to)| to < horizon) || spans.len() > MAX_SPANS {
        spans.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn cam(id: &str) -> CameraId {
        CameraId::new(id)
    }

    fn at(minutes: i64) -> UtcMillis {
        UtcMillis(1_795_305_600_000 + minutes * MIN)
    }

    fn tracked() -> CameraPresence {
        let mut p = CameraPresence::new();
        p.configure(&[cam("north"), cam("south")], at(0));
        p
    }

    #[test]
    fn never_heard_is_offline_from_configuration() {
        let p = tracked();
        assert!(!p.is_online(&cam("north")));
        assert!(p.missing_in(&cam("north"), at(0), at(15)));
        assert!(
            !p.missing_in(&cam("north"), at(-15), at(0)),
            "before it was configured"
        );
        assert!(
            p.missing_in(&cam("nobody"), at(0), at(15)),
            "unknown cameras are missing"
        );
    }

    #[test]
    fn first_message_brings_a_camera_online_and_closes_the_span() {
        let mut p = tracked();
        let change = p.heard(&cam("north"), at(5));
        assert_eq!(
            change,
            Some(PresenceChange::Online {
                camera: cam("north"),
                offline_since: at(0)
            })
        );
        assert_eq!(p.heard(&cam("north"), at(6)), None, "already online");
        assert!(p.is_online(&cam("north")));
        assert!(p.missing_in(&cam("north"), at(0), at(15)), "offline 0..5");
        assert!(!p.missing_in(&cam("north"), at(15), at(30)));
        assert_eq!(
            p.heard(&cam("west"), at(6)),
            None,
            "unknown cameras are ignored"
        );
    }

    #[test]
    fn silence_goes_offline_from_the_last_message() {
        let mut p = tracked();
        p.heard(&cam("north"), at(1));
        p.heard(&cam("north"), at(20));
        assert_eq!(p.tick(at(21), 2 * MIN), vec![], "within the timeout");
        let changes = p.tick(at(23), 2 * MIN);
        assert_eq!(
            changes,
            vec![PresenceChange::Offline {
                camera: cam("north"),
                since: at(20)
            }]
        );
        assert_eq!(p.tick(at(40), 2 * MIN), vec![], "reported once");
        assert!(!p.missing_in(&cam("north"), at(15), at(20)));
        assert!(p.missing_in(&cam("north"), at(15), at(30)));
        assert!(p.missing_in(&cam("north"), at(60), at(75)), "still offline");
        p.heard(&cam("north"), at(50));
        assert!(p.missing_in(&cam("north"), at(45), at(60)));
        assert!(
            !p.missing_in(&cam("north"), at(60), at(75)),
            "back since 50"
        );
    }

    #[test]
    fn last_will_is_immediate_and_idempotent() {
        let mut p = tracked();
        p.heard(&cam("south"), at(10));
        let change = p.last_will(&cam("south"), at(11));
        assert_eq!(
            change,
            Some(PresenceChange::Offline {
                camera: cam("south"),
                since: at(10)
            })
        );
        assert_eq!(p.last_will(&cam("south"), at(12)), None);
        let status = p.status();
        assert_eq!(status.len(), 2);
        assert_eq!(status[1].camera, cam("south"));
        assert!(!status[1].online);
        assert_eq!(status[1].offline_since, Some(at(10)));
        assert_eq!(status[1].last_seen, Some(at(10)));
    }

    #[test]
    fn reconfiguring_keeps_known_cameras_and_forgets_removed_ones() {
        let mut p = tracked();
        p.heard(&cam("north"), at(1));
        p.configure(&[cam("north"), cam("east")], at(30));
        assert!(p.is_online(&cam("north")));
        assert!(!p.is_online(&cam("east")));
        assert!(!p.missing_in(&cam("east"), at(0), at(15)));
        assert!(p.missing_in(&cam("east"), at(30), at(45)));
        assert_eq!(p.status().len(), 2);
    }

    #[test]
    fn snapshot_round_trips_through_json_and_stays_bounded() {
        let mut p = tracked();
        for i in 0..2000 {
            p.heard(&cam("north"), at(i * 10));
            p.tick(at(i * 10 + 5), MIN);
        }
        let json = serde_json::to_string(&p).unwrap();
        let back: CameraPresence = serde_json::from_str(&json).unwrap();
        assert_eq!(back.clone().bounded(), p);
        assert!(p.cameras[&cam("north")].spans.len() <= MAX_SPANS);
        assert!(back.missing_in(&cam("north"), at(19_985), at(19_990)));
    }
}
