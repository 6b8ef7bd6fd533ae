//! `aisle-agent devices add` puts the device in the agent's configuration: a camera in
//! `[[footfall.cameras]]` (with its MQTT credential), a lane's serial scanner, scale or printer
//! in `[[checkout.lanes]]` (without one). The real binary on real files; the serial devices are
//! real pseudo-terminals behind `by-id`-style links. Every refusal leaves the file byte for byte.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aisle_agent::config::{AgentConfig, CameraVendor};
use serialport::{SerialPort, TTYPort};

/// A pseudo-terminal behind a link in `dir/by-id/`, as a USB serial device shows up.
struct Port {
    link: PathBuf,
    _master: TTYPort,
    _slave: TTYPort,
}

impl Port {
    fn open(dir: &Path, name: &str) -> Port {
        let (master, slave) = TTYPort::pair().expect("pty pair");
        let by_id = dir.join("by-id");
        std::fs::create_dir_all(&by_id).unwrap();
        let link = by_id.join(name);
        std::os::unix::fs::symlink(slave.name().unwrap(), &link).unwrap();
        Port {
            link,
            _master: master,
            _slave: slave,
        }
    }

    fn path(&self) -> &str {
        self.link.to_str().unwrap()
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // The link goes before the pty it points at.
        let _ = std::fs::remove_file(&self.link);
    }
}

fn base(dir: &Path) -> String {
    format!(
        "# Written by `aisle-agent enroll`.\nstore = \"S001\"\nhub_url = \"http://127.0.0.1:9\"\n\
         credential = \"gw-S001-1a2b3c4d.{}\"\ndata_dir = \"{}\"\n\
         listen = \"127.0.0.1:0\"  # the local API\n",
        "ab".repeat(32),
        dir.display()
    )
}

fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(&path, format!("{}{extra}", base(dir))).unwrap();
    path
}

fn add(config: &Path, args: &[&str]) -> Output {
    let dir = config.parent().unwrap();
    Command::new(env!("CARGO_BIN_EXE_aisle-agent"))
        .args(["devices", "add", "--config", config.to_str().unwrap()])
        .args(["--mosquitto-dir", dir.join("mosquitto").to_str().unwrap()])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(out)
}

/// Refused with one line saying what to do, and nothing changed in `dir`.
fn refused(config: &Path, args: &[&str], says: &str) {
    let dir = config.parent().unwrap();
    let before = std::fs::read(config).unwrap();
    let names_before = names(dir);
    let out = add(config, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{args:?} was accepted: {}",
        stdout(&out)
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    assert!(err.contains(says), "{args:?}: {err}");
    assert!(err.contains("nothing was written"), "{args:?}: {err}");
    assert_eq!(
        std::fs::read(config).unwrap(),
        before,
        "{args:?} changed the config"
    );
    assert_eq!(names(dir), names_before, "{args:?} left files behind");
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn audit(dir: &Path) -> Vec<(String, String)> {
    aisle_agent::audit::list(dir)
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.subject))
        .collect()
}

#[test]
fn a_camera_is_configured_with_its_own_credential_and_the_agent_loads_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let camera = [
        "--kind",
        "camera",
        "--id",
        "door-1",
        "--vendor",
        "axis",
        "--zone",
        "Main entrance",
    ];
    refused(&config, &camera, "give --broker HOST:PORT");
    let with_broker = [&camera[..], &["--broker", "127.0.0.1:1883"]].concat();
    let printed = ok(&add(&config, &with_broker));
    assert!(printed.contains("[[footfall.cameras]]"), "{printed}");
    assert!(printed.contains("id = \"door-1\""), "{printed}");
    assert!(printed.contains("restart the agent"), "{printed}");
    let password = printed
        .lines()
        .find_map(|l| l.strip_prefix("password:"))
        .unwrap()
        .trim()
        .to_string();

    let loaded = AgentConfig::load(&config).unwrap();
    let footfall = loaded.footfall.unwrap();
    assert_eq!(footfall.mqtt.as_deref(), Some("127.0.0.1:1883"));
    assert_eq!(footfall.cameras.len(), 1);
    assert_eq!(footfall.cameras[0].id, "door-1");
    assert_eq!(footfall.cameras[0].vendor, CameraVendor::Axis);
    assert_eq!(footfall.cameras[0].zone, "Main entrance");
    // Appended: the file as written (its comments) stays.
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.starts_with(&base(dir.path())), "{text}");

    let acl = std::fs::read_to_string(dir.path().join("mosquitto/acl")).unwrap();
    assert!(acl.contains("user camera-door-1\ntopic write aisle/v1/S001/camera/door-1/#"));
    assert_eq!(
        audit(dir.path()),
        vec![
            (
                "mqtt_device_added".to_string(),
                "camera-door-1 may publish to aisle/v1/S001/camera/door-1/#".to_string()
            ),
            ("device_configured".to_string(), "camera door-1".to_string()),
        ]
    );
    let log = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(!log.contains(&password) && !log.contains(&"ab".repeat(32)));

    // A second camera joins the existing [footfall]; a different broker is refused.
    refused(
        &config,
        &[
            "--kind",
            "camera",
            "--id",
            "door-2",
            "--vendor",
            "hikvision",
            "--zone",
            "Car park",
            "--broker",
            "10.0.0.9:1883",
        ],
        "leave out --broker",
    );
    ok(&add(
        &config,
        &[
            "--kind",
            "camera",
            "--id",
            "door-2",
            "--vendor",
            "hikvision",
            "--zone",
            "Car park",
        ],
    ));
    let cameras = AgentConfig::load(&config)
        .unwrap()
        .footfall
        .unwrap()
        .cameras;
    let ids: Vec<&str> = cameras.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["door-1", "door-2"]);
}

#[test]
fn a_scanner_and_a_scale_go_onto_lanes_and_the_other_lanes_stay_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let printer = Port::open(dir.path(), "usb-Epson_TM-T20-if00");
    let other = Port::open(dir.path(), "usb-Honeywell_1900-lane2-if00");
    let scanner = Port::open(dir.path(), "usb-Honeywell_1900-lane1-if00");
    let scale = Port::open(dir.path(), "usb-Mettler_Toledo-if00");
    let checkout = format!(
        "\n# The lanes.\n[checkout]\ncurrency = \"CNY\"\nheader = [\"Aisle Market\", \"1 Main St\"]\n\
         \n[[checkout.items]]\ngtin = \"06901234567892\"\nage_min = 18\n\
         \n[[checkout.lanes]]\nid = \"1\"\nprinter = {{ path = \"{}\", width = 48 }}\n\
         \n[[checkout.lanes]]\nid = \"2\"\nscanner = {{ path = \"{}\", suffix = \"crlf\" }}\n",
        printer.path(),
        other.path()
    );
    let config = write_config(dir.path(), &checkout);
    let before = AgentConfig::load(&config)
        .unwrap()
        .checkout()
        .unwrap()
        .unwrap();

    // A new lane with a scale: appended, the comments stay.
    let printed = ok(&add(
        &config,
        &[
            "--kind",
            "scale",
            "--id",
            "3",
            "--port",
            scale.path(),
            "--protocol",
            "nci",
        ],
    ));
    assert!(printed.contains("[[checkout.lanes]]"), "{printed}");
    assert!(printed.contains("protocol = \"nci\""), "{printed}");
    assert!(printed.contains("restart the agent"), "{printed}");
    assert!(
        !printed.contains("password"),
        "a serial device gets no credential"
    );
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.starts_with(&format!("{}{checkout}", base(dir.path()))));

    // A scanner on lane 1, which has a printer.
    ok(&add(
        &config,
        &["--kind", "scanner", "--id", "1", "--port", scanner.path()],
    ));
    let after = AgentConfig::load(&config)
        .unwrap()
        .checkout()
        .unwrap()
        .unwrap();
    assert_eq!(after.currency, before.currency);
    assert_eq!(after.header, before.header);
    assert_eq!(after.items, before.items);
    assert_eq!(after.lanes.len(), 3);
    let lane = |id: &str| after.lanes.iter().find(|l| l.id == id).unwrap().clone();
    assert_eq!(
        lane("1").printer,
        before.lanes[0].printer,
        "lane 1's printer kept"
    );
    assert_eq!(lane("1").scanner.unwrap().path, scanner.path());
    assert_eq!(lane("2"), before.lanes[1], "lane 2 untouched");
    let scale3 = lane("3").scale.unwrap();
    assert_eq!(
        (scale3.path.as_str(), scale3.protocol.as_str()),
        (scale.path(), "nci")
    );
    assert!(lane("3").scanner.is_none());
    // The opening comment lines stay when the file is rewritten.
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.starts_with("# Written by `aisle-agent enroll`.\n"),
        "{text}"
    );

    assert!(
        !dir.path().join("mosquitto").exists(),
        "serial devices get no MQTT credential"
    );
    assert_eq!(
        audit(dir.path()),
        vec![
            ("device_configured".to_string(), "scale 3".to_string()),
            ("device_configured".to_string(), "scanner 1".to_string()),
        ]
    );
}

#[test]
fn a_configured_device_is_refused_unless_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let first = Port::open(dir.path(), "usb-Honeywell-first-if00");
    let second = Port::open(dir.path(), "usb-Honeywell-second-if00");
    let config = write_config(dir.path(), "");
    let scanner = |port: &str| -> Vec<String> {
        ["--kind", "scanner", "--id", "express-1", "--port", port]
            .map(String::from)
            .to_vec()
    };
    refused(&config, &args(&scanner(first.path())), "give --currency");
    let created = [
        scanner(first.path()),
        vec!["--currency".into(), "CNY".into()],
    ]
    .concat();
    let printed = ok(&add(&config, &args(&created)));
    assert!(printed.contains("currency = \"CNY\""), "{printed}");

    refused(
        &config,
        &args(&scanner(second.path())),
        "give --replace to replace it",
    );
    // The same port for another device kind on the lane is refused too.
    refused(
        &config,
        &["--kind", "printer", "--id", "2", "--port", first.path()],
        "is already the scanner of lane express-1",
    );
    ok(&add(
        &config,
        &args(&[scanner(second.path()), vec!["--replace".into()]].concat()),
    ));
    let lanes = AgentConfig::load(&config)
        .unwrap()
        .checkout()
        .unwrap()
        .unwrap()
        .lanes;
    assert_eq!(lanes.len(), 1);
    assert_eq!(lanes[0].scanner.as_ref().unwrap().path, second.path());

    // A camera: the second add is refused, the credential unchanged; --replace replaces both.
    let camera = |vendor: &str| {
        [
            "--kind",
            "camera",
            "--id",
            "door-1",
            "--vendor",
            vendor,
            "--zone",
            "Main",
            "--broker",
            "127.0.0.1:1883",
        ]
        .map(String::from)
        .to_vec()
    };
    ok(&add(&config, &args(&camera("axis"))));
    let passwd = std::fs::read(dir.path().join("mosquitto/passwd")).unwrap();
    refused(
        &config,
        &args(&camera("xovis")),
        "camera door-1 is already configured",
    );
    assert_eq!(
        std::fs::read(dir.path().join("mosquitto/passwd")).unwrap(),
        passwd
    );
    ok(&add(
        &config,
        &args(&[camera("xovis"), vec!["--replace".into()]].concat()),
    ));
    assert_ne!(
        std::fs::read(dir.path().join("mosquitto/passwd")).unwrap(),
        passwd
    );
    let cameras = AgentConfig::load(&config)
        .unwrap()
        .footfall
        .unwrap()
        .cameras;
    assert_eq!(cameras.len(), 1);
    assert_eq!(cameras[0].vendor, CameraVendor::Xovis);
    let configured = audit(dir.path())
        .into_iter()
        .filter(|(a, _)| a == "device_configured")
        .count();
    assert_eq!(configured, 4, "refusals are not audited as configured");
}

#[test]
fn bad_vendor_protocol_port_or_lane_is_refused_and_the_config_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let port = Port::open(dir.path(), "usb-Scale-if00");
    let used = Port::open(dir.path(), "usb-Used-if00");
    let config = write_config(
        dir.path(),
        &format!(
            "\n[footfall]\nmqtt = \"127.0.0.1:1883\"\n\n[checkout]\ncurrency = \"CNY\"\n\
             [[checkout.lanes]]\nid = \"1\"\nscanner = {{ path = \"{}\" }}\n",
            used.path()
        ),
    );
    let regular = dir.path().join("not-a-device");
    std::fs::write(&regular, b"").unwrap();
    let p = port.path();
    let cam = |vendor: &str, zone: &str| {
        [
            "--kind", "camera", "--id", "door-1", "--vendor", vendor, "--zone", zone,
        ]
        .map(String::from)
        .to_vec()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            cam("bosch", "Main"),
            "--vendor must be axis, xovis or hikvision",
        ),
        (cam("axis", ""), "--zone must be"),
        (
            [
                "--kind", "camera", "--id", "door 1", "--vendor", "axis", "--zone", "Main",
            ]
            .map(String::from)
            .to_vec(),
            "--id must be",
        ),
        (
            ["--kind", "camera", "--id", "door-1", "--vendor", "axis"]
                .map(String::from)
                .to_vec(),
            "both --vendor",
        ),
        (
            [
                "--kind",
                "scale",
                "--id",
                "2",
                "--port",
                p,
                "--protocol",
                "ishida",
            ]
            .map(String::from)
            .to_vec(),
            "--protocol must be one of mt-sics",
        ),
        (
            ["--kind", "scale", "--id", "2", "--port", p]
                .map(String::from)
                .to_vec(),
            "a scale needs --protocol",
        ),
        (
            [
                "--kind",
                "scanner",
                "--id",
                "2",
                "--port",
                p,
                "--protocol",
                "nci",
            ]
            .map(String::from)
            .to_vec(),
            "--protocol applies to scales only",
        ),
        (
            [
                "--kind",
                "scanner",
                "--id",
                "2",
                "--port",
                "/dev/serial/by-id/usb-Nothing-if00",
            ]
            .map(String::from)
            .to_vec(),
            "is the device plugged in?",
        ),
        (
            ["--kind", "scanner", "--id", "2", "--port", "ttyUSB0"]
                .map(String::from)
                .to_vec(),
            "absolute path",
        ),
        (
            [
                "--kind",
                "scanner",
                "--id",
                "2",
                "--port",
                regular.to_str().unwrap(),
            ]
            .map(String::from)
            .to_vec(),
            "not a serial device",
        ),
        (
            ["--kind", "printer", "--id", "Lane 2", "--port", p]
                .map(String::from)
                .to_vec(),
            "--id is the lane's id",
        ),
        (
            ["--kind", "printer", "--id", "2"]
                .map(String::from)
                .to_vec(),
            "needs --port",
        ),
        (
            [
                "--kind",
                "scale",
                "--id",
                "1",
                "--port",
                used.path(),
                "--protocol",
                "cas",
            ]
            .map(String::from)
            .to_vec(),
            "is already the scanner of lane 1",
        ),
        (
            [
                "--kind",
                "scanner",
                "--id",
                "2",
                "--port",
                p,
                "--currency",
                "EUR",
            ]
            .map(String::from)
            .to_vec(),
            "already exists with currency CNY",
        ),
        (
            ["--kind", "toaster", "--id", "1"]
                .map(String::from)
                .to_vec(),
            "--kind must be",
        ),
        (
            ["--kind", "sensor", "--id", "1", "--port", p]
                .map(String::from)
                .to_vec(),
            "--port applies to",
        ),
    ];
    for (args, says) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&config, &args, says);
    }
    assert!(
        !dir.path().join("audit.log").exists(),
        "nothing was audited"
    );
    assert!(!dir.path().join("mosquitto").exists());
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
