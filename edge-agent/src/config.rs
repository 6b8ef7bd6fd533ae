//! The agent's configuration file (TOML). Unknown keys are refused so a typo never silently
//! falls back to a default.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::collections::{BTreeMap, HashMap, HashSet};

use aisle_protocol::sync::{
    MAX_EVENTS_PER_UPLOAD, MAX_FOOTFALL_CAMERAS, MAX_FOOTFALL_NAME_CHARS, MAX_WAIT_MS,
};
use aisle_protocol::{GatewayId, StoreId};
use serde::{Deserialize, Serialize};

/// Why a gateway without an identity does not sync, in the technician's words.
pub const NOT_ENROLLED: &str = "this gateway is not enrolled (no [gateway] section and no \
     credential), so it does not sync with the hub: run `aisle-agent enroll --hub URL --code \
     CODE` with a code from HQ, then restart the agent";

/// Largest configuration file we read.
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024;
/// The secret half of a credential: 32 random bytes as lowercase hex, as the hub prints it.
const SECRET_HEX_DIGITS: usize = 64;

/// Debug is written by hand so the credential's secret never reaches a log.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The store this gateway serves.
    pub store: StoreId,
    /// Base URL of the hub, e.g. `http://127.0.0.1:7400`.
    pub hub_url: String,
    /// `<gateway_id>.<secret>` as printed by `aisle-hub gateway add` (a bearer credential).
    /// Left out for an enrolled gateway, which signs its requests with `[gateway]`'s key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential: String,
    /// Where the ledger lives.
    pub data_dir: PathBuf,
    /// Address of the local HTTP API.
    pub listen: SocketAddr,
    #[serde(default)]
    pub sync: SyncConfig,
    #[serde(default)]
    pub clock: ClockConfig,
    /// People-counting cameras. Absent: no cameras.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footfall: Option<FootfallSettings>,
    /// Click-and-collect: staff who may sign in to the pickup page and API. Absent: nobody can
    /// sign in (orders still arrive and expire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pickup: Option<PickupSettings>,
    /// Electronic shelf labels (`[labels]`). Absent: bindings, previews and price integrity
    /// still work; no access point is driven.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<crate::labels::LabelSettings>,
    /// Self-checkout lanes (`[checkout]`, see [`crate::lane::CheckoutSettings`]). Kept as
    /// written (so `enroll` rewrites it unchanged) and read by [`AgentConfig::checkout`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkout: Option<toml::Table>,
    /// An enrolled gateway's identity (`aisle-agent enroll` writes it). Exactly one of this and
    /// `credential` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayIdentity>,
    /// The gateway's own status LED, buzzer and reset button (`[status_panel]`, Raspberry Pi
    /// BCM pin numbers; needs a build with the `rpi` feature). Absent: no status hardware.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_panel: Option<StatusPanelSettings>,
}

/// Highest BCM GPIO number on the Raspberry Pi's 40-pin header.
pub const MAX_BCM_PIN: u8 = 27;
/// Shortest and longest `reset_hold_ms`.
pub const MIN_RESET_HOLD_MS: u64 = 1_000;
pub const MAX_RESET_HOLD_MS: u64 = 30_000;

/// `[status_panel]`: the status LED and (active) buzzer, both driven high to light or sound, and
/// the reset button from its pin to ground (read with the pull-up: pressed = low).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusPanelSettings {
    /// BCM number of the status LED's pin.
    pub led_bcm: u8,
    /// BCM number of the buzzer's pin.
    pub buzzer_bcm: u8,
    /// BCM number of the reset button's pin.
    pub reset_bcm: u8,
    /// How long the reset button must be held at boot to set the enrolment aside.
    #[serde(default = "default_reset_hold_ms")]
    pub reset_hold_ms: u64,
}

fn default_reset_hold_ms() -> u64 {
    5_000
}

impl StatusPanelSettings {
    pub fn validate(&self) -> Result<(), String> {
        for (key, pin) in [
            ("led_bcm", self.led_bcm),
            ("buzzer_bcm", self.buzzer_bcm),
            ("reset_bcm", self.reset_bcm),
        ] {
            if pin > MAX_BCM_PIN {
                return Err(format!(
                    "status_panel.{key} must be a BCM GPIO number 0 to {MAX_BCM_PIN} (the \
                     GPIOn on the Raspberry Pi's pinout, not the header's pin number), got {pin}"
                ));
            }
        }
        if self.led_bcm == self.buzzer_bcm
            || self.led_bcm == self.reset_bcm
            || self.buzzer_bcm == self.reset_bcm
        {
            return Err(format!(
                "status_panel: led_bcm ({}), buzzer_bcm ({}) and reset_bcm ({}) must be three \
                 different pins",
                self.led_bcm, self.buzzer_bcm, self.reset_bcm
            ));
        }
        if !(MIN_RESET_HOLD_MS..=MAX_RESET_HOLD_MS).contains(&self.reset_hold_ms) {
            return Err(format!(
                "status_panel.reset_hold_ms must be {MIN_RESET_HOLD_MS} to {MAX_RESET_HOLD_MS} \
                 (how long the button is held at boot), got {}",
                self.reset_hold_ms
            ));
        }
        Ok(())
    }

    pub fn reset_hold(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.reset_hold_ms)
    }
}

/// `[gateway]`: the identity `aisle-agent enroll` made. Debug shows no secret (the key stays
/// in its file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayIdentity {
    /// The id the hub gave this gateway at enrolment.
    pub id: GatewayId,
    /// The gateway's Ed25519 private key (mode 0600; it never leaves the gateway).
    pub key_file: PathBuf,
    /// SHA-256 of the hub's TLS certificate (64 hex digits), pinned at enrolment. Required when
    /// `hub_url` is https://.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_fingerprint: Option<String>,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("store", &self.store)
            .field("hub_url", &self.hub_url)
            .field("credential", &redacted(&self.credential))
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("sync", &self.sync)
            .field("clock", &self.clock)
            .field("footfall", &self.footfall)
            .field("pickup", &self.pickup)
            .field("labels", &self.labels)
            .field("checkout", &self.checkout.is_some())
            .field("gateway", &self.gateway)
            .field("status_panel", &self.status_panel)
            .finish()
    }
}

/// A credential safe to log: `<gateway_id>.<redacted>` (only `<redacted>` if it has no id part).
pub(crate) fn redacted(credential: &str) -> String {
    match credential.split_once('.') {
        Some((id, _)) if GatewayId::parse(id).is_ok() => format!("{id}.<redacted>"),
        _ => "<redacted>".to_string(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// How long one changefeed long-poll may wait at the hub.
    pub long_poll_ms: u32,
    /// Most events in one upload.
    pub upload_batch: usize,
    /// First backoff step after a failure.
    pub backoff_base_ms: u64,
    /// Largest backoff; with full jitter the retry comes within this long of the link returning.
    pub backoff_cap_ms: u64,
    /// Clock skew (hub time minus local time) beyond which the clock alarm is raised.
    pub skew_alarm_ms: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            long_poll_ms: 25_000,
            upload_batch: 2_000,
            backoff_base_ms: 100,
            backoff_cap_ms: 2_000,
            skew_alarm_ms: 300_000,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockConfig {
    /// Tests only: pretend the gateway's clock is off by this many milliseconds.
    pub offset_ms: i64,
}

/// Most staff in `[pickup]` (each sign-in checks the PIN against every hash).
pub const MAX_STAFF: usize = 64;

/// `[pickup]`: click-and-collect at the store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PickupSettings {
    #[serde(default)]
    pub staff: Vec<StaffConfig>,
}

/// `[[pickup.staff]]`: one person who may sign in with a PIN. Debug never shows the hash.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaffConfig {
    /// As shown in the ledger and at HQ (who picked, who handed over).
    pub name: String,
    /// The PIN as an argon2 PHC string (`aisle-agent staff hash-pin` prints one).
    pub pin_hash: String,
    /// What the PIN opens: `staff` (the default, so PINs written before roles existed stay
    /// staff PINs), `manager` (staff, and approving lane overrides) or `technician` (the setup
    /// page only).
    #[serde(default, skip_serializing_if = "StaffRole::is_staff")]
    pub role: StaffRole,
}

/// The role a PIN signs in with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StaffRole {
    /// Pickup page and API, label bindings.
    #[default]
    Staff,
    /// What staff may do, and approve overrides at the lanes.
    Manager,
    /// The local setup page (`/setup`) only.
    Technician,
}

impl StaffRole {
    pub fn as_str(self) -> &'static str {
        match self {
            StaffRole::Staff => "staff",
            StaffRole::Manager => "manager",
            StaffRole::Technician => "technician",
        }
    }

    pub fn parse(text: &str) -> Result<StaffRole, String> {
        match text {
            "staff" => Ok(StaffRole::Staff),
            "manager" => Ok(StaffRole::Manager),
            "technician" => Ok(StaffRole::Technician),
            other => Err(format!(
                "role must be staff, manager or technician, got '{other}'"
            )),
        }
    }

    fn is_staff(&self) -> bool {
        *self == StaffRole::Staff
    }
}

impl std::fmt::Display for StaffRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for StaffConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaffConfig")
            .field("name", &self.name)
            .field("pin_hash", &"<redacted>")
            .field("role", &self.role)
            .finish()
    }
}

impl PickupSettings {
    fn validate(&self) -> Result<(), String> {
        if self.staff.len() > MAX_STAFF {
            return Err(format!("pickup: at most {MAX_STAFF} staff"));
        }
        let mut names = HashSet::new();
        for (i, s) in self.staff.iter().enumerate() {
            let at = format!("pickup.staff[{}]", i + 1);
            aisle_protocol::pickup::check_label("name", &s.name)
                .map_err(|e| format!("{at}: {e}"))?;
            if !names.insert(s.name.as_str()) {
                return Err(format!("{at}: name '{}' is used twice", s.name));
            }
            crate::pickup::staff::check_pin_hash(&s.pin_hash).map_err(|e| {
                format!(
                    "{at} ({}): pin_hash {e}; use the line `aisle-agent staff hash-pin` printed",
                    s.name
                )
            })?;
        }
        Ok(())
    }
}

/// Most cameras one gateway takes (each is a metric label, so the set stays bounded).
pub const MAX_CAMERAS: usize = 256;
/// Largest `max_payload_bytes` (a count message is a few hundred bytes).
pub const MAX_PAYLOAD_LIMIT: usize = 1024 * 1024;

/// `[footfall]`: people-counting cameras at the store's entrances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FootfallSettings {
    /// The MQTT broker the cameras publish to, `host:port`. Absent: no MQTT ingestion (cameras
    /// can still push over HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<String>,
    /// Cameras publish to `<topic_prefix>/<store>/camera/<id>/counts` and `.../status`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// A camera silent for longer than this is offline from its last message.
    #[serde(default = "default_silence_timeout_ms")]
    pub silence_timeout_ms: u64,
    /// Largest camera payload; anything bigger is refused unread (`too_large`).
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// Most messages one camera may send per minute; beyond that they are refused (`flood`).
    #[serde(default = "default_max_messages_per_minute")]
    pub max_messages_per_minute: u32,
    /// How often finished 15-minute intervals are closed and written to the ledger.
    #[serde(default = "default_close_every_ms")]
    pub close_every_ms: u64,
    /// How long after a 15-minute interval ends it is closed, to let late messages in. Default:
    /// the larger of two minutes and `silence_timeout_ms` (it may not be shorter than the silence
    /// timeout, or a camera that died just before the end would not yet count as missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_after_ms: Option<u64>,
    #[serde(default)]
    pub cameras: Vec<CameraConfig>,
}

fn default_topic_prefix() -> String {
    "aisle/v1".to_string()
}
fn default_silence_timeout_ms() -> u64 {
    120_000
}
fn default_max_payload_bytes() -> usize {
    16_384
}
fn default_max_messages_per_minute() -> u32 {
    600
}
fn default_close_every_ms() -> u64 {
    10_000
}

impl Default for FootfallSettings {
    fn default() -> Self {
        FootfallSettings {
            mqtt: None,
            topic_prefix: default_topic_prefix(),
            silence_timeout_ms: default_silence_timeout_ms(),
            max_payload_bytes: default_max_payload_bytes(),
            max_messages_per_minute: default_max_messages_per_minute(),
            close_every_ms: default_close_every_ms(),
            close_after_ms: None,
            cameras: Vec::new(),
        }
    }
}

impl FootfallSettings {
    /// `close_after_ms` as used: the configured value, or max(2 min, silence timeout).
    pub fn effective_close_after_ms(&self) -> u64 {
        self.close_after_ms
            .unwrap_or(self.silence_timeout_ms.max(120_000))
    }

    /// The broker as (host, port).
    pub fn mqtt_broker(&self) -> Option<Result<(String, u16), String>> {
        self.mqtt.as_deref().map(|m| {
            let (host, port) = m
                .rsplit_once(':')
                .ok_or_else(|| format!("footfall.mqtt must be host:port, got '{m}'"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port: u16 = port
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("footfall.mqtt: bad port in '{m}'"))?;
            if host.is_empty() || host.len() > 253 || host.chars().any(|c| c.is_whitespace()) {
                return Err(format!("footfall.mqtt: bad host in '{m}'"));
            }
            Ok((host.to_string(), port))
        })
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(Err(e)) = self.mqtt_broker() {
            return Err(e);
        }
        let p = &self.topic_prefix;
        if p.is_empty()
            || p.len() > 128
            || p.starts_with('/')
            || p.ends_with('/')
            || p.contains("//")
            || p.chars().any(|c| matches!(c, '+' | '#') || c.is_control())
        {
            return Err(format!(
                "footfall.topic_prefix must be 1 to 128 characters of MQTT topic levels without \
                 wildcards or empty levels, got '{p}'"
            ));
        }
        if !(1_000..=86_400_000).contains(&self.silence_timeout_ms) {
            return Err("footfall.silence_timeout_ms must be 1000 to 86400000".into());
        }
        if !(256..=MAX_PAYLOAD_LIMIT).contains(&self.max_payload_bytes) {
            return Err(format!(
                "footfall.max_payload_bytes must be 256 to {MAX_PAYLOAD_LIMIT}"
            ));
        }
        if !(1..=1_000_000_000).contains(&self.max_messages_per_minute) {
            return Err("footfall.max_messages_per_minute must be 1 to 1000000000".into());
        }
        if !(10..=900_000).contains(&self.close_every_ms) {
            return Err("footfall.close_every_ms must be 10 to 900000".into());
        }
        let close_after = self.effective_close_after_ms();
        if close_after > 3_600_000 {
            return Err("footfall.close_after_ms must be at most one hour".into());
        }
        if close_after < self.silence_timeout_ms {
            return Err(format!(
                "footfall.close_after_ms ({close_after}) must be at least silence_timeout_ms \
                 ({}): an interval must not close before a camera that died in it is known to \
                 be missing",
                self.silence_timeout_ms
            ));
        }
        if self.cameras.len() > MAX_CAMERAS {
            return Err(format!("footfall: at most {MAX_CAMERAS} cameras"));
        }
        let mut ids = HashSet::new();
        let mut per_zone: HashMap<&str, HashSet<&str>> = HashMap::new();
        for (i, c) in self.cameras.iter().enumerate() {
            let at = || format!("footfall.cameras[{}] ({})", i + 1, c.id);
            c.validate().map_err(|e| format!("{}: {e}", at()))?;
            if !ids.insert(c.id.as_str()) {
                return Err(format!("{}: camera id '{}' is used twice", at(), c.id));
            }
            per_zone.entry(&c.zone).or_default().insert(&c.id);
            for zone in c.lines.values() {
                per_zone.entry(zone).or_default().insert(&c.id);
            }
        }
        if let Some((zone, _)) = per_zone
            .iter()
            .find(|(_, cams)| cams.len() > MAX_FOOTFALL_CAMERAS)
        {
            return Err(format!(
                "footfall: zone '{zone}' has more than {MAX_FOOTFALL_CAMERAS} cameras"
            ));
        }
        Ok(())
    }
}

/// Which format a camera's payloads are in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CameraVendor {
    /// Axis People Counter `live-sum.json` (running totals since local midnight).
    Axis,
    /// Xovis v5 logics push (line counts, delta or absolute).
    Xovis,
    /// Hikvision `EventNotificationAlert` XML (realTime or timeRange).
    Hikvision,
}

impl CameraVendor {
    pub fn as_str(self) -> &'static str {
        match self {
            CameraVendor::Axis => "axis",
            CameraVendor::Xovis => "xovis",
            CameraVendor::Hikvision => "hikvision",
        }
    }
}

/// Whether a Xovis push carries counts since the previous push or running totals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XovisValuesConfig {
    Delta,
    Absolute,
}

/// `[[footfall.cameras]]`: one people-counting camera.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// The id in its MQTT topic and push URL: `[A-Za-z0-9_-]{1,64}`.
    pub id: String,
    pub vendor: CameraVendor,
    /// The entrance it counts for, as the shop names it ("Main entrance").
    pub zone: String,
    /// Axis only: the camera's UTC offset (its timestamps carry no zone). Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc_offset_minutes: Option<i16>,
    /// Xovis only: `delta` (default) or `absolute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<XovisValuesConfig>,
    /// Xovis only: whether forward (`fw`) crossings are people coming in. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_is_in: Option<bool>,
    /// Counting lines of this camera that count for another zone: `{ "<line>" = "<zone>" }`
    /// (Xovis logic id, Hikvision channel). Other lines count for `zone`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lines: BTreeMap<String, String>,
}

/// Is `id` a camera id (`[A-Za-z0-9_-]{1,64}`)?
pub fn valid_camera_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn valid_name(name: &str) -> bool {
    let n = name.chars().count();
    n > 0 && n <= MAX_FOOTFALL_NAME_CHARS && !name.chars().any(char::is_control)
}

impl CameraConfig {
    fn validate(&self) -> Result<(), String> {
        if !valid_camera_id(&self.id) {
            return Err("id must be 1 to 64 letters, digits, '_' or '-'".into());
        }
        if !valid_name(&self.zone) {
            return Err(format!(
                "zone must be 1 to {MAX_FOOTFALL_NAME_CHARS} characters without control characters"
            ));
        }
        if let Some(off) = self.utc_offset_minutes {
            if self.vendor != CameraVendor::Axis {
                return Err("utc_offset_minutes applies to axis cameras only".into());
            }
            if !(-840..=840).contains(&off) {
                return Err("utc_offset_minutes must be -840 to 840".into());
            }
        }
        if self.vendor != CameraVendor::Xovis
            && (self.values.is_some() || self.forward_is_in.is_some())
        {
            return Err("values and forward_is_in apply to xovis cameras only".into());
        }
        for (line, zone) in &self.lines {
            if !valid_name(line) || !valid_name(zone) {
                return Err(format!(
                    "lines: line and zone names must be 1 to {MAX_FOOTFALL_NAME_CHARS} characters"
                ));
            }
        }
        if self.lines.len() > MAX_FOOTFALL_CAMERAS {
            return Err(format!("at most {MAX_FOOTFALL_CAMERAS} lines"));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

impl AgentConfig {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read_err)?.len();
        if len > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let config: AgentConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: one_line_toml_error(&text, &e),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: URL scheme, credential shape, bounds.
    /// The self-checkout lanes, checked (None without `[checkout]`).
    pub fn checkout(&self) -> Result<Option<crate::lane::Checkout>, ConfigError> {
        let Some(table) = &self.checkout else {
            return Ok(None);
        };
        let settings: crate::lane::CheckoutSettings =
            table.clone().try_into().map_err(|e: toml::de::Error| {
                ConfigError::Invalid(format!("checkout: {}", e.message()))
            })?;
        settings.check().map(Some).map_err(ConfigError::Invalid)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.checkout()?;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let url = self.hub_url.trim_end_matches('/');
        let https = url.starts_with("https://") && url.len() > "https://".len();
        if !https && (!url.starts_with("http://") || url.len() <= "http://".len()) {
            return bad(format!(
                "hub_url must be an https:// (or plain http://) URL, got '{}'",
                self.hub_url
            ));
        }
        if self.hub_url.len() > 2048 || self.hub_url.chars().any(|c| c.is_whitespace()) {
            return bad("hub_url must be at most 2048 characters without spaces".into());
        }
        self.validate_identity(https)?;
        let s = &self.sync;
        if s.long_poll_ms > MAX_WAIT_MS {
            return bad(format!(
                "sync.long_poll_ms must be at most {MAX_WAIT_MS}, got {}",
                s.long_poll_ms
            ));
        }
        if s.upload_batch == 0 || s.upload_batch > MAX_EVENTS_PER_UPLOAD {
            return bad(format!(
                "sync.upload_batch must be 1 to {MAX_EVENTS_PER_UPLOAD}, got {}",
                s.upload_batch
            ));
        }
        if s.backoff_base_ms == 0 || s.backoff_cap_ms < s.backoff_base_ms {
            return bad("sync.backoff_base_ms must be > 0 and at most sync.backoff_cap_ms".into());
        }
        if s.backoff_cap_ms > 3_600_000 {
            return bad("sync.backoff_cap_ms must be at most one hour".into());
        }
        if self.clock.offset_ms.unsigned_abs() > 10 * 365 * 86_400_000 {
            return bad("clock.offset_ms is more than ten years".into());
        }
        if let Some(f) = &self.footfall {
            f.validate().map_err(ConfigError::Invalid)?;
        }
        if let Some(p) = &self.pickup {
            p.validate().map_err(ConfigError::Invalid)?;
        }
        if let Some(l) = &self.labels {
            l.validate().map_err(ConfigError::Invalid)?;
        }
        if let Some(p) = &self.status_panel {
            p.validate().map_err(ConfigError::Invalid)?;
        }
        Ok(())
    }

    /// Has this gateway an identity (an enrolled key or a bearer credential)? Without one the
    /// agent runs for the store but does not sync: it waits for `aisle-agent enroll`.
    pub fn is_enrolled(&self) -> bool {
        self.gateway.is_some() || !self.credential.is_empty()
    }

    /// Exactly one identity: a bearer credential (plain-HTTP hubs only) or an enrolled key,
    /// pinned for an https:// hub.
    fn validate_identity(&self, https: bool) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        match (&self.gateway, self.credential.is_empty()) {
            (Some(_), false) => bad(
                "set either credential (a `gateway add` bearer credential) or [gateway] (an \
                 enrolled gateway's key), not both",
            ),
            // Not enrolled (new, or set aside by the reset button): the agent runs without
            // syncing until `aisle-agent enroll` writes [gateway].
            (None, true) => Ok(()),
            (None, false) => {
                gateway_of(&self.credential).map_err(ConfigError::Invalid)?;
                if https {
                    return bad(
                        "an https:// hub needs the pinned certificate of an enrolled gateway \
                         ([gateway] hub_fingerprint): run `aisle-agent enroll`",
                    );
                }
                Ok(())
            }
            (Some(g), true) => {
                if g.key_file.as_os_str().is_empty() {
                    return bad("gateway.key_file must name the gateway's key file");
                }
                match &g.hub_fingerprint {
                    Some(fp) => crate::provisioning::pin::HubFingerprint::parse(fp)
                        .map(|_| ())
                        .map_err(|e| ConfigError::Invalid(format!("gateway.hub_fingerprint: {e}"))),
                    None if https => bad(
                        "gateway.hub_fingerprint is required for an https:// hub (the SHA-256 \
                         `aisle-hub tls fingerprint` prints)",
                    ),
                    None => Ok(()),
                }
            }
        }
    }

    /// The gateway's id (safe to log; the secret never is).
    pub fn gateway_id(&self) -> Result<GatewayId, ConfigError> {
        match &self.gateway {
            Some(g) => Ok(g.id.clone()),
            None if self.credential.is_empty() => {
                Err(ConfigError::Invalid(NOT_ENROLLED.to_string()))
            }
            None => gateway_of(&self.credential).map_err(ConfigError::Invalid),
        }
    }
}

/// toml's errors draw the offending line over several lines; the CLI prints one.
fn one_line_toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let line = text
                .get(..span.start)
                .map_or(0, |before| before.matches('\n').count())
                + 1;
            format!("line {line}: {}", e.message().trim())
        }
        None => e.message().trim().to_string(),
    }
}

/// Splits `<gateway_id>.<secret>` and checks both halves, so the credential is always safe to put
/// in an HTTP header.
fn gateway_of(credential: &str) -> Result<GatewayId, String> {
    let Some((id, secret)) = credential.split_once('.') else {
        return Err("credential must look like <gateway_id>.<secret>".into());
    };
    let id = GatewayId::parse(id).map_err(|e| format!("credential: {e}"))?;
    // Exactly what the hub accepts (it stores sha256 of the secret as printed).
    if secret.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "credential secret for {id} has uppercase letters; the hub accepts only 64 lowercase \
             hex digits: use the line `aisle-hub gateway add` printed, unchanged"
        ));
    }
    if secret.len() != SECRET_HEX_DIGITS
        || !secret
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(format!(
            "credential secret for {id} must be {SECRET_HEX_DIGITS} lowercase hex digits: use the \
             line `aisle-hub gateway add` printed, unchanged"
        ));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MINIMAL: &str = r#"
store = "S001"
hub_url = "http://127.0.0.1:7400"
credential = "gw-S001-1a2b3c4d.00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
data_dir = "/var/lib/aisle"
listen = "127.0.0.1:7401"
"#;

    #[test]
    fn defaults_match_the_contract() {
        let c: AgentConfig = toml::from_str(MINIMAL).unwrap();
        c.validate().unwrap();
        assert_eq!(c.sync.long_poll_ms, 25_000);
        assert_eq!(c.sync.upload_batch, 2_000);
        assert_eq!(c.sync.backoff_base_ms, 100);
        assert_eq!(c.sync.backoff_cap_ms, 2_000);
        assert_eq!(c.sync.skew_alarm_ms, 300_000);
        assert_eq!(c.clock.offset_ms, 0);
        assert_eq!(c.gateway_id().unwrap().as_str(), "gw-S001-1a2b3c4d");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let c: AgentConfig = toml::from_str(MINIMAL).unwrap();
        let secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        for text in [format!("{c:?}"), format!("{c:#?}")] {
            assert!(!text.contains(secret), "{text}");
            assert!(!text.contains("00112233"), "{text}");
            assert!(text.contains("gw-S001-1a2b3c4d.<redacted>"), "{text}");
            assert!(text.contains("S001") && text.contains("7400"), "{text}");
        }
        let mut odd = c.clone();
        odd.credential = "no-dot-but-secret".into();
        assert!(!format!("{odd:?}").contains("no-dot-but-secret"));
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../examples/agent.toml");
        let c: AgentConfig = toml::from_str(text).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn parse_errors_are_one_line_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            format!("{MINIMAL}\n[sync]\nlong_poll_ms = \"soon\"\n"),
        )
        .unwrap();
        let e = AgentConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("line 9:"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let typo = format!("{MINIMAL}\nlisten_addr = \"x\"\n");
        assert!(toml::from_str::<AgentConfig>(&typo).is_err());
        let nested = format!("{MINIMAL}\n[sync]\nlong_pol_ms = 5\n");
        assert!(toml::from_str::<AgentConfig>(&nested).is_err());

        let mut c: AgentConfig = toml::from_str(MINIMAL).unwrap();
        c.sync.upload_batch = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("upload_batch")
        );
        let mut c: AgentConfig = toml::from_str(MINIMAL).unwrap();
        c.hub_url = "ftp://hub".into();
        assert!(c.validate().unwrap_err().to_string().contains("hub_url"));
        let mut c: AgentConfig = toml::from_str(MINIMAL).unwrap();
        c.credential = "gw-S001\r\nX-Evil: 1.abcd".into();
        assert!(c.validate().is_err());
        c.credential = "gw-S001.not-hex".into();
        assert!(c.validate().is_err());
        c.credential = "no-dot".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_secret_must_be_64_lowercase_hex_digits_as_the_hub_printed_it() {
        let mut c: AgentConfig = toml::from_str(MINIMAL).unwrap();
        let secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        c.credential = format!("gw-S001-1a2b3c4d.{}", secret.to_uppercase());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("uppercase"), "{e}");
        assert!(e.contains("64 lowercase hex digits"), "{e}");
        assert!(e.contains("aisle-hub gateway add"), "{e}");
        assert!(!e.contains("AABBCCDD"), "the secret is never echoed: {e}");
        // One uppercase digit is enough to be refused.
        c.credential = format!("gw-S001-1a2b3c4d.{}F", &secret[..63]);
        assert!(c.validate().unwrap_err().to_string().contains("uppercase"));
        // Too short or too long: not what the hub printed either.
        for bad in [&secret[..62], &format!("{secret}00")[..]] {
            c.credential = format!("gw-S001-1a2b3c4d.{bad}");
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("64 lowercase hex digits"), "{e}");
        }
        c.credential = format!("gw-S001-1a2b3c4d.{secret}");
        c.validate().unwrap();
    }

    #[test]
    fn footfall_is_optional_and_has_the_contract_defaults() {
        let c: AgentConfig = toml::from_str(MINIMAL).unwrap();
        assert!(c.footfall.is_none());
        let text = format!(
            "{MINIMAL}\n[footfall]\n[[footfall.cameras]]\nid = \"door-1\"\nvendor = \"axis\"\nzone = \"Main entrance\"\n"
        );
        let c: AgentConfig = toml::from_str(&text).unwrap();
        c.validate().unwrap();
        let f = c.footfall.unwrap();
        assert_eq!(f.mqtt, None);
        assert_eq!(f.topic_prefix, "aisle/v1");
        assert_eq!(f.silence_timeout_ms, 120_000);
        assert_eq!(f.max_payload_bytes, 16_384);
        assert_eq!(f.max_messages_per_minute, 600);
        assert_eq!(f.close_every_ms, 10_000);
        assert_eq!(f.effective_close_after_ms(), 120_000);
        assert_eq!(f.cameras[0].vendor, CameraVendor::Axis);
        let example: AgentConfig = toml::from_str(include_str!("../examples/agent.toml")).unwrap();
        let f = example.footfall.unwrap();
        assert_eq!(f.mqtt_broker(), Some(Ok(("127.0.0.1".to_string(), 1883))));
        assert_eq!(f.cameras.len(), 3);
        assert_eq!(
            f.cameras[1].lines.get("2").map(String::as_str),
            Some("Car park door")
        );
    }

    #[test]
    fn pickup_staff_need_names_and_argon2_hashes_which_debug_never_shows() {
        let example = include_str!("../examples/agent.toml");
        let c: AgentConfig = toml::from_str(example).unwrap();
        assert!(
            c.pickup.is_none(),
            "the example's [pickup] is commented out"
        );
        // The commented example, uncommented, is a valid config with one staff member.
        let uncommented: String = example
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.starts_with("[pickup]")
                        || rest.starts_with("[[pickup.staff]]")
                        || rest.starts_with("name = ")
                        || rest.starts_with("pin_hash = ") =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c: AgentConfig = toml::from_str(&uncommented).unwrap();
        c.validate().unwrap();
        let p = c.pickup.clone().unwrap();
        assert_eq!(p.staff.len(), 1);
        assert_eq!(p.staff[0].name, "Ana");
        assert_eq!(
            crate::pickup::staff::who(&p.staff, "1234"),
            Some(("Ana".to_string(), StaffRole::Staff)),
            "a PIN written without a role signs in as staff"
        );
        let shown = format!("{c:?}");
        assert!(
            shown.contains("Ana") && !shown.contains("argon2id"),
            "{shown}"
        );

        let with = |staff: &str| format!("{MINIMAL}\n[pickup]\n{staff}");
        let invalid = |text: String| -> String {
            let c: AgentConfig = toml::from_str(&text).unwrap();
            c.validate().unwrap_err().to_string()
        };
        let hash = &p.staff[0].pin_hash;
        let one = |name: &str, h: &str| {
            format!("[[pickup.staff]]\nname = \"{name}\"\npin_hash = \"{h}\"\n")
        };
        assert!(invalid(with(&one("Ana", "1234"))).contains("pin_hash"));
        assert!(invalid(with(&one("", hash))).contains("name"));
        let twice = format!("{}{}", one("Ana", hash), one("Ana", hash));
        assert!(invalid(with(&twice)).contains("used twice"));
        assert!(
            toml::from_str::<AgentConfig>(&with("[[pickup.staff]]\nname = \"A\"\npin = \"1\"\n"))
                .is_err()
        );
        let ok: AgentConfig = toml::from_str(&with(&one("Bo", hash))).unwrap();
        ok.validate().unwrap();
    }

    #[test]
    fn footfall_mistakes_are_refused_with_a_clear_message() {
        let camera = |extra: &str| {
            format!(
                "{MINIMAL}\n[footfall]\n[[footfall.cameras]]\nid = \"door-1\"\nvendor = \"axis\"\nzone = \"Main\"\n{extra}"
            )
        };
        let invalid = |text: String| -> String {
            let c: AgentConfig = toml::from_str(&text).unwrap();
            c.validate().unwrap_err().to_string()
        };
        assert!(toml::from_str::<AgentConfig>(&camera("vendor_x = 1")).is_err());
        assert!(
            toml::from_str::<AgentConfig>(&camera("").replace("\"axis\"", "\"bosch\"")).is_err()
        );
        assert!(invalid(camera("").replace("door-1", "door 1")).contains("id must be"));
        assert!(invalid(camera("").replace("\"Main\"", "\"\"")).contains("zone must be"));
        let twice = format!(
            "{}[[footfall.cameras]]\nid = \"door-1\"\nvendor = \"hikvision\"\nzone = \"Side\"\n",
            camera("")
        );
        assert!(invalid(twice).contains("used twice"));
        assert!(invalid(camera("values = \"delta\"")).contains("xovis cameras only"));
        assert!(
            invalid(camera("").replace("axis", "hikvision") + "utc_offset_minutes = 60\n")
                .contains("axis cameras only")
        );
        let with = |key: &str| camera("").replace("[footfall]\n", &format!("[footfall]\n{key}\n"));
        assert!(invalid(with("mqtt = \"localhost\"")).contains("host:port"));
        assert!(invalid(with("topic_prefix = \"aisle/#\"")).contains("topic_prefix"));
        assert!(invalid(with("max_payload_bytes = 10")).contains("max_payload_bytes"));
        assert!(invalid(with("close_every_ms = 0")).contains("close_every_ms"));
        assert!(
            invalid(with("silence_timeout_ms = 300000\nclose_after_ms = 60000"))
                .contains("at least silence_timeout_ms")
        );
        // Raising the silence timeout alone raises the default close delay with it.
        let c: AgentConfig = toml::from_str(&with("silence_timeout_ms = 300000")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.footfall.unwrap().effective_close_after_ms(), 300_000);
    }
}
