//! `aisle-agent devices add` on the agent's own configuration: a people-counting camera in
//! `[[footfall.cameras]]`, or a lane's serial scanner, bagging scale or receipt printer in
//! `[[checkout.lanes]]`.
//!
//! The change is planned on the file's TOML, checked as the agent would check it at start-up
//! (`AgentConfig::validate`, which includes `AgentConfig::checkout`), and only then staged next
//! to the file and renamed over it. A new entry is appended to the file as written, so its
//! comments stay; a change inside an existing entry rewrites the file (its opening comment lines
//! kept, other comments not). Any refusal leaves the file byte for byte as it was.
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use aisle_protocol::sync::MAX_FOOTFALL_NAME_CHARS;
use toml::{Table, Value};

use crate::config::{AgentConfig, CameraConfig, CameraVendor, MAX_CONFIG_BYTES};
use crate::provisioning::files::StagedFile;

/// Scale protocols `--protocol` takes (the names `[checkout.lanes] scale.protocol` takes).
pub const SCALE_PROTOCOLS: [&str; 5] = ["mt-sics", "toledo", "toledo-lb", "nci", "cas"];

/// A lane's serial device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LaneDevice {
    Scanner,
    Scale,
    Printer,
}

impl LaneDevice {
    pub fn parse(kind: &str) -> Option<LaneDevice> {
        match kind {
            "scanner" => Some(LaneDevice::Scanner),
            "scale" => Some(LaneDevice::Scale),
            "printer" => Some(LaneDevice::Printer),
            _ => None,
        }
    }

    /// The key in `[[checkout.lanes]]`.
    pub fn key(self) -> &'static str {
        match self {
            LaneDevice::Scanner => "scanner",
            LaneDevice::Scale => "scale",
            LaneDevice::Printer => "printer",
        }
    }
}

/// What the technician asked to configure.
#[derive(Clone, Debug)]
pub enum DeviceEntry {
    /// `[[footfall.cameras]]`; `broker` creates `[footfall]` when there is none.
    Camera {
        id: String,
        vendor: String,
        zone: String,
        broker: Option<String>,
    },
    /// A serial device on lane `lane`; `currency` creates `[checkout]` when there is none.
    Lane {
        device: LaneDevice,
        lane: String,
        port: String,
        protocol: Option<String>,
        currency: Option<String>,
    },
}

/// A planned configuration: the whole new file and the lines that were added or changed.
#[derive(Debug)]
pub struct Planned {
    pub text: String,
    /// The TOML of what was added or changed, as the technician reads it.
    pub written: String,
    /// The file was rewritten and had comments past its opening lines, which are gone.
    pub comments_dropped: bool,
    /// A note for the technician (e.g. a port name that may change after a reboot).
    pub notes: Vec<String>,
    /// The configuration as the agent will read it.
    pub config: AgentConfig,
}

/// Reads the configuration file as text (bounded as the agent bounds it).
pub fn read_config_text(path: &Path) -> Result<String, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(format!(
            "{} is over {MAX_CONFIG_BYTES} bytes, which the agent does not read",
            path.display()
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Plans `entry` into the configuration `text` (the file `path`). `replace`: an entry already
/// there (same camera id, or the lane's device of that kind) is replaced instead of refused.
pub fn plan(
    path: &Path,
    text: &str,
    entry: &DeviceEntry,
    replace: bool,
) -> Result<Planned, String> {
    let shown = path.display();
    let mut doc: Table = toml::from_str(text).map_err(|e| {
        format!(
            "{shown} is not valid TOML ({}); fix it first, nothing was written",
            e.message().trim()
        )
    })?;
    let mut notes = Vec::new();
    let (written_table, appendable) = match entry {
        DeviceEntry::Camera {
            id,
            vendor,
            zone,
            broker,
        } => add_camera(&mut doc, path, id, vendor, zone, broker.as_deref(), replace)?,
        DeviceEntry::Lane {
            device,
            lane,
            port,
            protocol,
            currency,
        } => add_lane_device(
            &mut doc,
            path,
            *device,
            lane,
            port,
            protocol.as_deref(),
            currency.as_deref(),
            replace,
            &mut notes,
        )?,
    };
    let written = toml::to_string(&written_table)
        .map_err(|e| format!("cannot write the configuration: {e}"))?;

    // A new entry goes at the end of the file as written (comments kept), if that reads back as
    // exactly the planned configuration; otherwise the whole file is written anew.
    let mut appended = None;
    if appendable {
        let mut t = text.to_string();
        if !t.is_empty() && !t.ends_with('\n') {
            t.push('\n');
        }
        t.push('\n');
        t.push_str(&written);
        if toml::from_str::<Table>(&t).ok().as_ref() == Some(&doc) {
            appended = Some(t);
        }
    }
    let (new_text, comments_dropped) = match appended {
        Some(t) => (t, false),
        None => {
            let (header, rest) = opening_comments(text);
            let body = toml::to_string(&doc)
                .map_err(|e| format!("cannot write the configuration: {e}"))?;
            (format!("{header}{body}"), rest.contains('#'))
        }
    };
    if new_text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!(
            "{shown} would grow over {MAX_CONFIG_BYTES} bytes, which the agent does not read; \
             nothing was written"
        ));
    }
    let config: AgentConfig = toml::from_str(&new_text)
        .map_err(|e| format!("cannot add: {}; nothing was written", e.message().trim()))?;
    config
        .validate()
        .map_err(|e| format!("cannot add: {e}; nothing was written"))?;
    Ok(Planned {
        text: new_text,
        written,
        comments_dropped,
        notes,
        config,
    })
}

/// The file's opening comment lines (and blank lines among them), and the rest.
fn opening_comments(text: &str) -> (String, &str) {
    let mut end = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if !(t.is_empty() || t.starts_with('#')) {
            break;
        }
        end += line.len();
    }
    let (head, rest) = text.split_at(end);
    let head = head.trim_end();
    if head.is_empty() {
        (String::new(), rest)
    } else {
        (format!("{head}\n"), rest)
    }
}

fn valid_zone(zone: &str) -> bool {
    let n = zone.chars().count();
    n > 0 && n <= MAX_FOOTFALL_NAME_CHARS && !zone.chars().any(char::is_control)
}

fn parse_vendor(vendor: &str) -> Result<CameraVendor, String> {
    match vendor {
        "axis" => Ok(CameraVendor::Axis),
        "xovis" => Ok(CameraVendor::Xovis),
        "hikvision" => Ok(CameraVendor::Hikvision),
        other => Err(format!(
            "--vendor must be axis, xovis or hikvision (the camera's payload format), got \
             '{other}'; nothing was written"
        )),
    }
}

/// Returns (what to show as written, whether it is a new entry at the end).
fn add_camera(
    doc: &mut Table,
    path: &Path,
    id: &str,
    vendor: &str,
    zone: &str,
    broker: Option<&str>,
    replace: bool,
) -> Result<(Table, bool), String> {
    let shown = path.display();
    if !crate::config::valid_camera_id(id) {
        return Err(format!(
            "--id must be 1 to 64 letters, digits, '_' or '-' (the camera's id in its topic), \
             got '{id}'; nothing was written"
        ));
    }
    let vendor = parse_vendor(vendor)?;
    if !valid_zone(zone) {
        return Err(format!(
            "--zone must be the entrance's name, 1 to {MAX_FOOTFALL_NAME_CHARS} characters \
             (e.g. \"Main entrance\"); nothing was written"
        ));
    }
    let camera = CameraConfig {
        id: id.to_string(),
        vendor,
        zone: zone.to_string(),
        utc_offset_minutes: None,
        values: None,
        forward_is_in: None,
        lines: Default::default(),
    };
    let camera = Value::try_from(&camera).map_err(|e| format!("cannot write the camera: {e}"))?;
    let one = |footfall: Table| -> Table {
        let mut t = Table::new();
        t.insert("footfall".into(), Value::Table(footfall));
        t
    };
    let Some(footfall) = doc.get_mut("footfall") else {
        let Some(broker) = broker else {
            return Err(format!(
                "{shown} has no [footfall] section: give --broker HOST:PORT (the MQTT broker \
                 the cameras publish to, e.g. 127.0.0.1:1883) to create it; nothing was written"
            ));
        };
        let check = crate::config::FootfallSettings {
            mqtt: Some(broker.to_string()),
            ..Default::default()
        };
        if let Some(Err(e)) = check.mqtt_broker() {
            return Err(format!(
                "--broker must be host:port ({e}); nothing was written"
            ));
        }
        let mut f = Table::new();
        f.insert("mqtt".into(), Value::String(broker.to_string()));
        f.insert("cameras".into(), Value::Array(vec![camera]));
        doc.insert("footfall".into(), Value::Table(f.clone()));
        return Ok((one(f), true));
    };
    let Value::Table(footfall) = footfall else {
        return Err(format!(
            "footfall in {shown} is not a section; fix it by hand, nothing was written"
        ));
    };
    if let Some(broker) = broker {
        let configured = footfall.get("mqtt").and_then(Value::as_str);
        if configured != Some(broker) {
            return Err(format!(
                "[footfall] in {shown} already exists with {}: leave out --broker, or change \
                 footfall.mqtt there by hand; nothing was written",
                configured.map_or_else(|| "no broker".to_string(), |b| format!("mqtt = \"{b}\""))
            ));
        }
    }
    let cameras = footfall
        .entry("cameras")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(cameras) = cameras else {
        return Err(format!(
            "footfall.cameras in {shown} is not a list of cameras; fix it by hand, nothing was \
             written"
        ));
    };
    let existing = cameras
        .iter()
        .position(|c| c.get("id").and_then(Value::as_str) == Some(id));
    let appendable = match existing {
        Some(_) if !replace => {
            return Err(format!(
                "camera {id} is already configured in {shown}: give --replace to replace it \
                 (its other settings go), or choose another --id; nothing was written"
            ));
        }
        Some(i) => {
            if let Some(slot) = cameras.get_mut(i) {
                *slot = camera.clone();
            }
            false
        }
        None => {
            cameras.push(camera.clone());
            true
        }
    };
    let mut f = Table::new();
    f.insert("cameras".into(), Value::Array(vec![camera]));
    Ok((one(f), appendable))
}

/// Checks `--port`: an absolute path to a character device. Adds a note when the name may
/// change after a reboot.
fn check_port(port: &str, notes: &mut Vec<String>) -> Result<(), String> {
    let hint = "use the path `aisle-agent devices scan` lists, e.g. /dev/serial/by-id/usb-...";
    if !port.starts_with('/')
        || port.len() > 4096
        || port.chars().any(|c| c.is_control() || c == '"')
    {
        return Err(format!(
            "--port must be the serial device's absolute path, got {port:?}: {hint}; nothing \
             was written"
        ));
    }
    match std::fs::metadata(port) {
        Err(e) => {
            return Err(format!(
                "--port {port}: {e}: is the device plugged in? {hint}; nothing was written"
            ));
        }
        Ok(m) if !m.file_type().is_char_device() => {
            return Err(format!(
                "--port {port} is not a serial device (not a character device): {hint}; \
                 nothing was written"
            ));
        }
        Ok(_) => {}
    }
    if !port.starts_with("/dev/serial/by-id/") && port.starts_with("/dev/tty") {
        let target = std::fs::canonicalize(port).ok();
        let by_id = std::fs::read_dir("/dev/serial/by-id")
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| target.is_some() && std::fs::canonicalize(p).ok() == target);
        notes.push(match by_id {
            Some(link) => format!(
                "{port} may get another name after a reboot or replugging; {} names the same \
                 device for good (run again with it and --replace)",
                link.display()
            ),
            None => format!(
                "{port} may get another name after a reboot or replugging; prefer its \
                 /dev/serial/by-id/ link"
            ),
        });
    }
    Ok(())
}

fn same_device(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

#[allow(clippy::too_many_arguments)]
fn add_lane_device(
    doc: &mut Table,
    path: &Path,
    device: LaneDevice,
    lane: &str,
    port: &str,
    protocol: Option<&str>,
    currency: Option<&str>,
    replace: bool,
    notes: &mut Vec<String>,
) -> Result<(Table, bool), String> {
    let shown = path.display();
    let kind = device.key();
    if !crate::lane::valid_lane_id(lane) {
        return Err(format!(
            "--id is the lane's id for a {kind}: 1 to {} of a-z, 0-9 and '-' (e.g. 1 or \
             express-2), got '{lane}'; nothing was written",
            crate::lane::MAX_LANE_ID_CHARS
        ));
    }
    let protocol = match (device, protocol) {
        (LaneDevice::Scale, None) => {
            return Err(format!(
                "a scale needs --protocol ({}; `aisle-agent devices scan` names it); nothing \
                 was written",
                SCALE_PROTOCOLS.join(", ")
            ));
        }
        (LaneDevice::Scale, Some(p)) => {
            let p = p.to_ascii_lowercase();
            if !SCALE_PROTOCOLS.contains(&p.as_str()) {
                return Err(format!(
                    "--protocol must be one of {} (`aisle-agent devices scan` names it), got \
                     '{p}'; nothing was written",
                    SCALE_PROTOCOLS.join(", ")
                ));
            }
            Some(p)
        }
        (_, Some(_)) => {
            return Err(format!(
                "--protocol applies to scales only; leave it out for a {kind}, nothing was written"
            ));
        }
        (_, None) => None,
    };
    check_port(port, notes)?;
    if let Some(c) = currency {
        aisle_protocol::Currency::parse(c).map_err(|e| {
            format!(
                "--currency must be the store's ISO 4217 code, e.g. CNY ({e}); nothing was written"
            )
        })?;
    }

    // The port may be one device's only.
    let labels_ap = doc
        .get("labels")
        .and_then(|l| l.get("access_point"))
        .and_then(Value::as_str);
    if labels_ap.is_some_and(|ap| same_device(ap, port)) {
        return Err(format!(
            "{port} is the shelf-label access point in [labels] of {shown}: give the {kind}'s \
             own --port; nothing was written"
        ));
    }
    let lanes_now = doc
        .get("checkout")
        .and_then(|c| c.get("lanes"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for l in &lanes_now {
        let id = l.get("id").and_then(Value::as_str).unwrap_or("?");
        for other in [LaneDevice::Scanner, LaneDevice::Scale, LaneDevice::Printer] {
            if id == lane && other == device {
                continue; // the slot being filled (or replaced)
            }
            let used = l
                .get(other.key())
                .and_then(|d| d.get("path"))
                .and_then(Value::as_str);
            if used.is_some_and(|u| same_device(u, port)) {
                return Err(format!(
                    "{port} is already the {} of lane {id} in {shown}: give this {kind}'s own \
                     --port; nothing was written",
                    other.key()
                ));
            }
        }
    }

    let mut settings = Table::new();
    settings.insert("path".into(), Value::String(port.to_string()));
    if let Some(p) = protocol {
        settings.insert("protocol".into(), Value::String(p));
    }
    let mut new_lane = Table::new();
    new_lane.insert("id".into(), Value::String(lane.to_string()));
    new_lane.insert(kind.into(), Value::Table(settings.clone()));
    let show = |checkout: Table| -> Table {
        let mut t = Table::new();
        t.insert("checkout".into(), Value::Table(checkout));
        t
    };

    let Some(checkout) = doc.get_mut("checkout") else {
        let Some(currency) = currency else {
            return Err(format!(
                "{shown} has no [checkout] section: give --currency (the store's currency, e.g. \
                 CNY) to create it with lane {lane}; nothing was written"
            ));
        };
        let mut c = Table::new();
        c.insert("currency".into(), Value::String(currency.to_string()));
        c.insert("lanes".into(), Value::Array(vec![Value::Table(new_lane)]));
        doc.insert("checkout".into(), Value::Table(c.clone()));
        return Ok((show(c), true));
    };
    let Value::Table(checkout) = checkout else {
        return Err(format!(
            "checkout in {shown} is not a section; fix it by hand, nothing was written"
        ));
    };
    if let Some(currency) = currency {
        let configured = checkout.get("currency").and_then(Value::as_str);
        if configured != Some(currency) {
            return Err(format!(
                "[checkout] in {shown} already exists with currency {}: leave out --currency; \
                 nothing was written",
                configured.unwrap_or("(none)")
            ));
        }
    }
    let lanes = checkout
        .entry("lanes")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(lanes) = lanes else {
        return Err(format!(
            "checkout.lanes in {shown} is not a list of lanes; fix it by hand, nothing was \
             written"
        ));
    };
    let existing = lanes
        .iter_mut()
        .find(|l| l.get("id").and_then(Value::as_str) == Some(lane));
    let (shown_lane, appendable) = match existing {
        None => {
            lanes.push(Value::Table(new_lane.clone()));
            (new_lane, true)
        }
        Some(Value::Table(l)) => {
            if let Some(old) = l.get(kind)
                && !replace
            {
                let old_path = old.get("path").and_then(Value::as_str).unwrap_or("?");
                return Err(format!(
                    "lane {lane} already has a {kind} ({old_path}) in {shown}: give --replace \
                     to replace it (its other settings go), or another lane's --id; nothing \
                     was written"
                ));
            }
            l.insert(kind.into(), Value::Table(settings));
            (l.clone(), false)
        }
        Some(_) => {
            return Err(format!(
                "lane {lane} in {shown} is not a table; fix it by hand, nothing was written"
            ));
        }
    };
    let mut c = Table::new();
    c.insert("lanes".into(), Value::Array(vec![Value::Table(shown_lane)]));
    Ok((show(c), appendable))
}

/// The staged new configuration, with the file's mode (it holds the gateway's credential).
pub fn stage(path: &Path, planned: &Planned) -> Result<StagedFile, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    let mut f = StagedFile::create(path, mode).map_err(|e| {
        format!(
            "cannot write next to {}: {e}; nothing was written",
            path.display()
        )
    })?;
    f.write(planned.text.as_bytes(), 0).map_err(|e| {
        format!(
            "cannot write next to {}: {e}; nothing was written",
            path.display()
        )
    })?;
    Ok(f)
}

/// The owner the file had, to give back after it was replaced (run as root, the new file would
/// belong to root and the agent could no longer read it).
#[derive(Clone, Copy, Debug)]
pub struct Owner {
    uid: u32,
    gid: u32,
}

pub fn owner(path: &Path) -> Option<Owner> {
    std::fs::metadata(path).ok().map(|m| Owner {
        uid: m.uid(),
        gid: m.gid(),
    })
}

/// Gives the replaced file its previous owner back, if it changed.
pub fn restore_owner(path: &Path, owner: Option<Owner>) -> Result<(), String> {
    let (Some(o), Ok(now)) = (owner, std::fs::metadata(path)) else {
        return Ok(());
    };
    if now.uid() == o.uid && now.gid() == o.gid {
        return Ok(());
    }
    std::os::unix::fs::chown(path, Some(o.uid), Some(o.gid)).map_err(|e| {
        format!(
            "{} now belongs to this user, not its owner before ({e}): run `chown {}:{} {}` so \
             the agent can read it",
            path.display(),
            o.uid,
            o.gid,
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn opening_comments_are_split_off() {
        let (h, rest) = opening_comments("# a\n\n# b\nstore = \"S\"\n# c\n");
        assert_eq!(h, "# a\n\n# b\n");
        assert_eq!(rest, "store = \"S\"\n# c\n");
        assert_eq!(opening_comments("x = 1\n"), (String::new(), "x = 1\n"));
    }
}
