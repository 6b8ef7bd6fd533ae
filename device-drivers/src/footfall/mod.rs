//! People-counting cameras: vendor payloads parsed into [`CameraReading`]s, then normalised by
//! [`FootfallCounter`] into 15-minute visitor counts per [`EntranceZone`].
//!
//! Everything here is pure: the agent's MQTT/HTTP ingestion hands in the bytes, the camera id it
//! learnt from the topic or URL, and the gateway's receive time. Privacy comes first: every
//! payload is size-checked before parsing, and anything that carries an image or a person's
//! identifier is refused, so only counts ever reach the ledger.

pub mod axis;
pub mod hikvision;
pub mod normalise;
pub mod presence;
pub mod xovis;

mod privacy;
mod time_text;

use aisle_protocol::UtcMillis;

pub use normalise::{
    Counted, CounterSnapshot, EntranceZone, FootfallConfig, FootfallCounter, Outcome, ZoneInterval,
    ZoneMap,
};
pub use presence::{CameraPresence, CameraStatus, PresenceChange};
pub use xovis::{XovisConfig, XovisValues};

/// Default bound on one camera payload. Count messages are a few hundred bytes; anything near
/// this size is almost certainly carrying something it should not (an image, a track list).
pub const DEFAULT_MAX_PAYLOAD: usize = 16 * 1024;

/// The camera as the store configured it (from the MQTT topic or the HTTP push URL), not as the
/// payload names itself: a payload cannot choose which entrance it counts for.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct CameraId(pub String);

impl CameraId {
    pub fn new(id: impl Into<String>) -> Self {
        CameraId(id.into())
    }
}

impl std::fmt::Display for CameraId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// People through a counting line: `entered` the shop and `exited` it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Counts {
    pub entered: u64,
    pub exited: u64,
}

impl Counts {
    pub const ZERO: Counts = Counts {
        entered: 0,
        exited: 0,
    };

    pub fn new(entered: u64, exited: u64) -> Self {
        Counts { entered, exited }
    }
}

/// What a camera's numbers mean; the normaliser treats each differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadingKind {
    /// Running totals. `since` is when the camera started this run of counting, when the format
    /// tells us (Axis: the camera's local midnight); a new `since` means the counter restarted.
    Cumulative {
        counts: Counts,
        since: Option<UtcMillis>,
    },
    /// People counted since the camera's previous message (Xovis delta push).
    Delta { counts: Counts },
    /// People counted in `[start, end)` by the camera's clock (Hikvision timeRange).
    Interval {
        start: UtcMillis,
        end: UtcMillis,
        counts: Counts,
    },
}

/// One count from one counting line of one camera, as the vendor reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CameraReading {
    pub camera: CameraId,
    /// The counting line inside the camera when it has several (Xovis logic id, Hikvision
    /// channel); `None` for a camera with a single counter.
    pub line: Option<String>,
    /// The camera's own clock: a hint only, the gateway's receive time decides (see
    /// [`normalise`]).
    pub at: UtcMillis,
    pub kind: ReadingKind,
    /// People inside right now, when the camera estimates it.
    pub occupancy: Option<u64>,
}

/// How a camera's payloads are written; chosen per camera in the store's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CameraFormat {
    /// Axis People Counter `live-sum.json`. Its timestamp has no zone, so the camera's UTC offset
    /// comes from configuration.
    AxisLiveSum { utc_offset_minutes: i16 },
    /// Xovis v5 logics push.
    XovisLogics(XovisConfig),
    /// Hikvision `EventNotificationAlert` with eventType PeopleCounting.
    HikvisionAlert,
}

/// Parses one payload in the camera's configured format. Xovis may carry several lines, so the
/// result is a list; the others give exactly one reading.
pub fn parse_payload(
    format: CameraFormat,
    camera: &CameraId,
    bytes: &[u8],
    max_bytes: usize,
) -> Result<Vec<CameraReading>, FootfallError> {
    match format {
        CameraFormat::AxisLiveSum { utc_offset_minutes } => {
            axis::parse_live_sum(camera, bytes, max_bytes, utc_offset_minutes).map(|r| vec![r])
        }
        CameraFormat::XovisLogics(config) => xovis::parse_logics(camera, bytes, max_bytes, config),
        CameraFormat::HikvisionAlert => {
            hikvision::parse_alert(camera, bytes, max_bytes).map(|r| vec![r])
        }
    }
}

/// Why a payload or a reading was refused. [`FootfallError::reason`] gives a stable label for
/// log lines and `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FootfallError {
    #[error("payload of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("payload is empty")]
    Empty,
    #[error("payload is not valid UTF-8")]
    NotUtf8,
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("malformed XML: {0}")]
    Xml(String),
    #[error("field `{field}` is missing")]
    MissingField { field: &'static str },
    #[error("field `{field}` is invalid: {detail}")]
    InvalidField { field: &'static str, detail: String },
    #[error("not a people count: {0}")]
    NotACount(String),
    #[error("refused for privacy: payload carries {0}; only counts are accepted")]
    PersonalData(String),
    #[error("camera {camera} (line {line}) is not assigned to any entrance zone")]
    UnknownCamera { camera: CameraId, line: String },
    #[error(
        "absurd jump on camera {camera}: {entered} in / {exited} out over {minutes} min, \
         at most {allowed} allowed"
    )]
    AbsurdJump {
        camera: CameraId,
        entered: u64,
        exited: u64,
        minutes: u64,
        allowed: u64,
    },
    #[error(
        "camera {camera} sends more than one kind of count for one line; \
         counting both would double the visitors"
    )]
    MixedCountKinds { camera: CameraId },
    #[error("interval {start:?}..{end:?} from camera {camera} overlaps one already counted")]
    OverlappingInterval {
        camera: CameraId,
        start: UtcMillis,
        end: UtcMillis,
    },
}

impl FootfallError {
    /// A short, stable label per kind of refusal, for a metrics counter.
    pub fn reason(&self) -> &'static str {
        match self {
            FootfallError::TooLarge { .. } => "too_large",
            FootfallError::Empty => "empty",
            FootfallError::NotUtf8 => "not_utf8",
            FootfallError::Json(_) => "malformed_json",
            FootfallError::Xml(_) => "malformed_xml",
            FootfallError::MissingField { .. } => "missing_field",
            FootfallError::InvalidField { .. } => "invalid_field",
            FootfallError::NotACount(_) => "not_a_count",
            FootfallError::PersonalData(_) => "personal_data",
            FootfallError::UnknownCamera { .. } => "unknown_camera",
            FootfallError::AbsurdJump { .. } => "absurd_jump",
            FootfallError::MixedCountKinds { .. } => "mixed_count_kinds",
            FootfallError::OverlappingInterval { .. } => "overlapping_interval",
        }
    }
}

/// The checks every parser runs before looking inside: size first (so a flood of huge payloads
/// costs nothing), then the privacy screen on the raw bytes.
fn admit(bytes: &[u8], max_bytes: usize) -> Result<(), FootfallError> {
    if bytes.len() > max_bytes {
        return Err(FootfallError::TooLarge {
            len: bytes.len(),
            max: max_bytes,
        });
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(FootfallError::Empty);
    }
    privacy::screen_bytes(bytes)
}

/// Parses JSON after [`admit`], refusing any object key that names personal data.
fn admit_json(bytes: &[u8], max_bytes: usize) -> Result<serde_json::Value, FootfallError> {
    admit(bytes, max_bytes)?;
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| FootfallError::Json(e.to_string()))?;
    privacy::screen_json(&value)?;
    Ok(value)
}

/// Reads a non-negative whole count from a JSON value, naming the field when it is not one.
fn json_count(
    value: Option<&serde_json::Value>,
    field: &'static str,
) -> Result<u64, FootfallError> {
    let v = value.ok_or(FootfallError::MissingField { field })?;
    v.as_u64().ok_or_else(|| FootfallError::InvalidField {
        field,
        detail: format!("expected a non-negative whole number, got {v}"),
    })
}

/// Reads a string field from a JSON object.
fn json_str<'a>(
    value: Option<&'a serde_json::Value>,
    field: &'static str,
) -> Result<&'a str, FootfallError> {
    let v = value.ok_or(FootfallError::MissingField { field })?;
    v.as_str().ok_or_else(|| FootfallError::InvalidField {
        field,
        detail: format!("expected a string, got {v}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatch_by_format() {
        let cam = CameraId::new("door-1");
        let axis = br#"{"serial":"ACCC8E000001","name":"Main door","timestamp":"20261122101500","in":12,"out":9}"#;
        let r = parse_payload(
            CameraFormat::AxisLiveSum {
                utc_offset_minutes: 0,
            },
            &cam,
            axis,
            DEFAULT_MAX_PAYLOAD,
        )
        .unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].camera, cam);
    }

    #[test]
    fn size_is_checked_before_anything_else() {
        let cam = CameraId::new("door-1");
        let big = vec![b' '; 100];
        let err = parse_payload(CameraFormat::HikvisionAlert, &cam, &big, 99).unwrap_err();
        assert_eq!(err, FootfallError::TooLarge { len: 100, max: 99 });
        assert_eq!(err.reason(), "too_large");
        let err = parse_payload(CameraFormat::HikvisionAlert, &cam, b"  \n", 99).unwrap_err();
        assert_eq!(err, FootfallError::Empty);
    }
}
