//! The real scanner and scale drivers (`aisle_drivers::upos`) against the simulators on real
//! pseudo-terminals: every scanner setup, every scale protocol, and the bad input a lane meets
//! (noise, a lost suffix, a bad check digit, a lost GS, garbage and silence from a scale, the
//! cable pulled and plugged back).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use aisle_drivers::backoff::Backoff;
use aisle_drivers::scale::{Reading, ScaleError, ScaleProtocol, Weight, WeightUnit};
use aisle_drivers::scanner::{Layouts, Scan, ScanConfig, ScanError, ScanSuffix};
use aisle_drivers::upos::{
    DeviceError, DeviceEvent, DeviceStatus, Scale, ScaleConfig, Scanner, ScannerConfig,
    WeighRequest,
};
use aisle_hil::scale_sim::{ScaleSim, ScaleSimConfig};
use aisle_hil::scanner_sim::{ScannerSim, ScannerSimConfig};

const WAIT: Duration = Duration::from_secs(10);

fn backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(100),
    }
}

fn next<D: std::fmt::Debug>(rx: &Receiver<DeviceEvent<D>>) -> DeviceEvent<D> {
    rx.recv_timeout(WAIT).expect("an event")
}

/// The next event that is not a status change.
fn next_not_status<D: std::fmt::Debug>(rx: &Receiver<DeviceEvent<D>>) -> DeviceEvent<D> {
    loop {
        match next(rx) {
            DeviceEvent::Status(_) => {}
            e => return e,
        }
    }
}

fn wait_status<D: std::fmt::Debug>(
    rx: &Receiver<DeviceEvent<D>>,
    pred: impl Fn(&DeviceStatus) -> bool,
) -> DeviceStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "status never came");
        if let DeviceEvent::Status(s) = next(rx)
            && pred(&s)
        {
            return s;
        }
    }
}

fn scan(rx: &Receiver<DeviceEvent<Scan>>) -> Scan {
    match next_not_status(rx) {
        DeviceEvent::Data(s) => s,
        other => panic!("expected a scan, got {other:?}"),
    }
}

fn error(rx: &Receiver<DeviceEvent<Scan>>) -> DeviceError {
    match next_not_status(rx) {
        DeviceEvent::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn scanner_pair(
    link: &Path,
    suffix: ScanSuffix,
    aim: bool,
) -> (ScannerSim, Scanner, Receiver<DeviceEvent<Scan>>) {
    let sim = ScannerSim::start(ScannerSimConfig {
        link: Some(link.to_path_buf()),
        ..ScannerSimConfig::new(suffix, aim)
    })
    .unwrap();
    let scan = ScanConfig::new(Layouts::default_layouts().unwrap())
        .with_separator(b'~')
        .unwrap();
    let mut config = ScannerConfig::new(sim.path(), scan);
    config.suffix = suffix;
    config.gap = Duration::from_millis(80);
    config.port.backoff = backoff();
    let (mut scanner, rx) = Scanner::open(config);
    assert_eq!(scanner.claim().unwrap(), DeviceStatus::Online);
    scanner.enable().unwrap();
    (sim, scanner, rx)
}

#[test]
fn scanner_with_aim_and_cr_through_bad_input_and_a_replug() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, _scanner, rx) = scanner_pair(&dir.path().join("scanner"), ScanSuffix::Cr, true);
    sim.run_script(
        "# a shopper's basket\n\
         9501101531000\n\
         123601057072\n\
         95012346\n\
         scan gs1-datamatrix 01095011015310001726020010LOT7<GS>3103001250\n\
         2011122912346\n\
         scan qr AISLE1.member.sig\n",
    )
    .unwrap();
    let a = scan(&rx);
    assert_eq!(a.gtin.unwrap().as_str(), "09501101531000");
    assert_eq!(format!("{:?}", a.symbology), "Ean13");
    let upc = scan(&rx);
    assert_eq!(upc.gtin.unwrap().as_str(), "00123601057072");
    assert_eq!(scan(&rx).gtin.unwrap().as_str(), "00000095012346");
    let dm = scan(&rx);
    assert_eq!(dm.batch.as_deref(), Some("LOT7"));
    assert_eq!(dm.weight_g, Some(1250));
    assert_eq!(dm.expiry.unwrap().to_string(), "2026-02-28");
    let vm = scan(&rx);
    assert_eq!(vm.price.unwrap().minor, 1234);
    assert_eq!(vm.item.unwrap().as_str(), "02011122000005");
    assert_eq!(scan(&rx).text.as_deref(), Some("AISLE1.member.sig"));

    // A bad check digit, noise, a lost suffix, a lost GS: each an error, then a clean scan.
    sim.run_script("9501101531001\n").unwrap();
    assert!(matches!(
        error(&rx),
        DeviceError::BadScan {
            error: ScanError::CheckDigit { .. },
            ..
        }
    ));
    sim.run_script("noise 2000\n").unwrap();
    assert!(matches!(
        error(&rx),
        DeviceError::Noise { .. } | DeviceError::BadScan { .. }
    ));
    sim.run_script("nosuffix 9501101531000\nsleep 200\n")
        .unwrap();
    assert!(matches!(error(&rx), DeviceError::MissingSuffix { .. }));
    sim.run_script("lostgs gs1-128 10ABCDEFGHIJ<GS>0109501101531000\n")
        .unwrap();
    let e = error(&rx);
    assert!(
        e.to_string().contains("separator may have been lost"),
        "{e}"
    );
    // The substitute separator the scanner was set to.
    sim.run_script("scan gs1-128 10AB~0109501101531000\n")
        .unwrap();
    assert_eq!(scan(&rx).batch.as_deref(), Some("AB"));

    // The cable pulled and plugged back.
    sim.run_script("unplug\n").unwrap();
    wait_status(&rx, |s| matches!(s, DeviceStatus::Disconnected { .. }));
    sim.run_script("sleep 100\nplug\n").unwrap();
    wait_status(&rx, |s| *s == DeviceStatus::Online);
    sim.run_script("9501101531000\n").unwrap();
    assert_eq!(scan(&rx).gtin.unwrap().as_str(), "09501101531000");
}

#[test]
fn scanner_without_suffix_or_aim_and_with_cr_lf() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, _s, rx) = scanner_pair(&dir.path().join("plain"), ScanSuffix::None, false);
    sim.run_script(
        "9501101531000\nsleep 200\n95012346\nsleep 200\nscan gs1-128 10AB<GS>0109501101531000\n",
    )
    .unwrap();
    assert_eq!(scan(&rx).gtin.unwrap().as_str(), "09501101531000");
    assert_eq!(scan(&rx).gtin.unwrap().as_str(), "00000095012346");
    // Without AIM a GS still says GS1.
    assert_eq!(scan(&rx).batch.as_deref(), Some("AB"));

    let (sim, _s, rx) = scanner_pair(&dir.path().join("crlf"), ScanSuffix::CrLf, true);
    sim.run_script("9501101531000\n2011122812349\n").unwrap();
    assert_eq!(scan(&rx).gtin.unwrap().as_str(), "09501101531000");
    assert!(matches!(
        error(&rx),
        DeviceError::BadScan {
            error: ScanError::PriceCheckDigit {
                expected: 9,
                found: 8
            },
            ..
        }
    ));
}

fn scale_pair(
    link: &Path,
    protocol: ScaleProtocol,
) -> (ScaleSim, Scale, Receiver<DeviceEvent<Reading>>) {
    let sim = ScaleSim::start(ScaleSimConfig {
        link: Some(link.to_path_buf()),
        cas_every: Duration::from_millis(30),
        ..ScaleSimConfig::new(protocol)
    })
    .unwrap();
    let mut config = ScaleConfig::new(sim.path(), protocol);
    config.answer_timeout = Duration::from_millis(400);
    config.repoll = Duration::from_millis(20);
    config.port.backoff = backoff();
    let (mut scale, rx) = Scale::open(config);
    assert_eq!(scale.claim().unwrap(), DeviceStatus::Online);
    scale.enable().unwrap();
    (sim, scale, rx)
}

fn kg(value: i64) -> Weight {
    Weight {
        value,
        decimals: 3,
        unit: WeightUnit::Kg,
    }
}

fn each_protocol(protocol: ScaleProtocol) {
    let dir = tempfile::tempdir().unwrap();
    let (sim, scale, rx) = scale_pair(&dir.path().join(protocol.name()), protocol);
    let req = WeighRequest::stable(Duration::from_secs(2));
    sim.run_script("weight 1.250 kg\n").unwrap();
    assert_eq!(
        scale.weigh(req),
        Ok(Reading::Stable(kg(1250))),
        "{protocol:?}"
    );
    // Settling: the driver keeps asking until the weight is stable.
    sim.run_script("weight 0.480 kg\nmotion on\n").unwrap();
    let settle = {
        let cmd = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            sim.run_script("motion off\n").unwrap();
            sim
        });
        let r = scale.weigh(req);
        (r, cmd.join().unwrap())
    };
    let (r, sim) = settle;
    assert_eq!(r, Ok(Reading::Stable(kg(480))), "{protocol:?}");
    // Moving for ever: not stable.
    sim.run_script("motion on\n").unwrap();
    assert_eq!(
        scale.weigh(WeighRequest::stable(Duration::from_millis(600))),
        Err(DeviceError::Scale(ScaleError::NotStable)),
        "{protocol:?}"
    );
    sim.run_script("motion off\noverload\n").unwrap();
    assert_eq!(
        scale.weigh(req),
        Err(DeviceError::Scale(ScaleError::Overload)),
        "{protocol:?}"
    );
    sim.run_script("underload\n").unwrap();
    let under = scale.weigh(req);
    match protocol {
        // CAS shows a negative weight rather than a flag.
        ScaleProtocol::Cas => assert!(
            matches!(under, Ok(Reading::Stable(w)) if w.value < 0),
            "{under:?}"
        ),
        _ => assert_eq!(
            under,
            Err(DeviceError::Scale(ScaleError::Underload)),
            "{protocol:?}"
        ),
    }
    sim.run_script("normal\ngarbage 1\n").unwrap();
    if protocol != ScaleProtocol::Cas {
        assert!(
            matches!(
                scale.weigh(req),
                Err(DeviceError::Scale(ScaleError::Garbage(_)))
            ),
            "{protocol:?}"
        );
    }
    // Silence: offline; then it answers again.
    sim.run_script("garbage 0\nsilence on\n").unwrap();
    assert_eq!(
        scale.weigh(req),
        Err(DeviceError::Scale(ScaleError::Offline)),
        "{protocol:?}"
    );
    wait_status(&rx, |s| matches!(s, DeviceStatus::Offline { .. }));
    sim.run_script("silence off\n").unwrap();
    assert_eq!(scale.weigh(req), Ok(Reading::Stable(kg(480))));
    wait_status(&rx, |s| *s == DeviceStatus::Online);
    // Unplugged and back.
    sim.run_script("unplug\n").unwrap();
    wait_status(&rx, |s| matches!(s, DeviceStatus::Disconnected { .. }));
    assert!(matches!(
        scale.weigh(req),
        Err(DeviceError::Disconnected(_))
    ));
    sim.run_script("plug\nweight 2.000 kg\n").unwrap();
    wait_status(&rx, |s| *s == DeviceStatus::Online);
    assert_eq!(
        scale.weigh(req),
        Ok(Reading::Stable(kg(2000))),
        "{protocol:?}"
    );
    let stats = sim.shutdown();
    if protocol != ScaleProtocol::Cas {
        assert!(stats.requests >= 8, "{stats:?}");
    }
}

#[test]
fn mt_sics_scale() {
    each_protocol(ScaleProtocol::MtSics);
}

#[test]
fn toledo_8217_scale() {
    each_protocol(ScaleProtocol::Toledo8217 {
        unit: WeightUnit::Kg,
    });
}

#[test]
fn nci_scale() {
    each_protocol(ScaleProtocol::Nci);
}

#[test]
fn cas_scale() {
    each_protocol(ScaleProtocol::Cas);
}

#[test]
fn toledo_frames_carry_no_unit_so_the_configured_one_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let protocol = ScaleProtocol::Toledo8217 {
        unit: WeightUnit::Lb,
    };
    let (sim, scale, _rx) = scale_pair(&dir.path().join("toledo-lb"), protocol);
    sim.run_script("weight 3.25 lb\n").unwrap();
    let r = scale
        .weigh(WeighRequest::stable(Duration::from_secs(2)))
        .unwrap();
    let Reading::Stable(w) = r else {
        panic!("{r:?}")
    };
    assert_eq!((w.value, w.decimals, w.unit), (325, 2, WeightUnit::Lb));
    assert_eq!(w.grams(), None);
}

/// `aisle-sim scanner --script FILE` and `aisle-sim scale` as a technician runs them, with the
/// real drivers on the printed paths.
#[test]
fn aisle_sim_binaries_from_a_script_file_and_stdin() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("basket.txt");
    std::fs::write(
        &script,
        "# wait for the driver\nsleep 500\n9501101531000\nnoise 40\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_aisle-sim"))
        .args(["scanner", "--suffix", "crlf", "--aim", "--script"])
        .arg(&script)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut path = String::new();
    out.read_line(&mut path).unwrap();
    let mut config = ScannerConfig::new(
        path.trim(),
        ScanConfig::new(Layouts::default_layouts().unwrap()),
    );
    config.suffix = ScanSuffix::CrLf;
    let (mut scanner, rx) = Scanner::open(config);
    assert_eq!(scanner.claim().unwrap(), DeviceStatus::Online);
    scanner.enable().unwrap();
    let s = scan(&rx);
    assert_eq!(s.gtin.unwrap().as_str(), "09501101531000");
    assert!(matches!(
        error(&rx),
        DeviceError::BadScan { .. } | DeviceError::Noise { .. }
    ));
    child.kill().unwrap();
    child.wait().unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_aisle-sim"))
        .args(["scale", "--protocol", "toledo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut path = String::new();
    out.read_line(&mut path).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"weight 0.750 kg\n").unwrap();
    stdin.flush().unwrap();
    // The scale says "ok" once it applied the line.
    let mut line = String::new();
    while line.trim() != "ok" {
        line.clear();
        out.read_line(&mut line).unwrap();
    }
    let protocol = ScaleProtocol::Toledo8217 {
        unit: WeightUnit::Kg,
    };
    let (mut scale, _rx) = Scale::open(ScaleConfig::new(path.trim(), protocol));
    scale.claim().unwrap();
    scale.enable().unwrap();
    assert_eq!(
        scale.weigh(WeighRequest::stable(Duration::from_secs(2))),
        Ok(Reading::Stable(kg(750)))
    );
    stdin.write_all(b"quit\n").unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success());
}
