//! The UnifiedPOS-style scanner and scale devices over real pseudo-terminals. The devices open
//! a symlink, as they would a udev `/dev/serial/by-id/` name, so a test can unplug the device
//! (close its pty) and plug a new one in under the same name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use aisle_drivers::backoff::Backoff;
use aisle_drivers::scale::{Reading, ScaleError, ScaleProtocol, Weight, WeightUnit};
use aisle_drivers::scanner::{Layouts, ScanConfig, ScanError, ScanSuffix};
use aisle_drivers::upos::{
    DeviceError, DeviceEvent, DeviceState, DeviceStatus, Scale, ScaleConfig, Scanner,
    ScannerConfig, WeighRequest,
};
use serialport::{SerialPort, TTYPort};

const WAIT: Duration = Duration::from_secs(10);

/// The device's end of a pty pair, plugged in under `link`.
struct Plug {
    master: TTYPort,
    _slave: TTYPort,
}

impl Plug {
    fn new(link: &Path) -> Plug {
        let (mut master, slave) = TTYPort::pair().expect("pty pair");
        master.set_timeout(Duration::from_millis(20)).unwrap();
        let name = slave.name().expect("slave name");
        let tmp = link.with_extension("new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, link).unwrap();
        Plug {
            master,
            _slave: slave,
        }
    }

    /// Pulls the device out as udev does: the name goes first, then the device. (Without
    /// that, a test running in parallel may get the same /dev/pts number and answer under the
    /// stale name.)
    fn unplug(self, link: &Path) {
        std::fs::remove_file(link).unwrap();
        drop(self);
    }

    fn write(&mut self, b: &[u8]) {
        self.master.write_all(b).unwrap();
        self.master.flush().unwrap();
    }

    /// Reads what the host sent until `want` bytes arrived.
    fn read(&mut self, want: usize) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        while out.len() < want {
            assert!(
                Instant::now() < deadline,
                "waited for {want} bytes: {out:?}"
            );
            match self.master.read(&mut buf) {
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        out
    }
}

fn link(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

fn fast_backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(100),
    }
}

fn next<D: std::fmt::Debug>(rx: &Receiver<DeviceEvent<D>>) -> DeviceEvent<D> {
    rx.recv_timeout(WAIT).expect("an event")
}

/// Skips status events until `pred` matches one.
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

fn scanner(
    path: &Path,
    suffix: ScanSuffix,
) -> (Scanner, Receiver<DeviceEvent<aisle_drivers::scanner::Scan>>) {
    let layouts = Layouts::default_layouts().unwrap();
    let mut config = ScannerConfig::new(path.to_str().unwrap(), ScanConfig::new(layouts));
    config.suffix = suffix;
    config.gap = Duration::from_millis(60);
    config.port.backoff = fast_backoff();
    Scanner::open(config)
}

#[test]
fn scanner_reads_scans_reports_bad_ones_and_survives_unplug_and_replug() {
    let dir = tempfile::tempdir().unwrap();
    let path = link(&dir, "scanner");
    let mut plug = Plug::new(&path);
    let (mut s, rx) = scanner(&path, ScanSuffix::Cr);
    assert_eq!(s.state(), DeviceState::Opened);
    assert_eq!(s.claim().unwrap(), DeviceStatus::Online);
    assert_eq!(next(&rx), DeviceEvent::Status(DeviceStatus::Online));
    // Not enabled: frames are read and dropped.
    plug.write(b"]E09501101531000\r");
    std::thread::sleep(Duration::from_millis(100));
    s.enable().unwrap();
    assert_eq!(s.state(), DeviceState::Enabled);
    plug.write(b"]E09501101531000\r]E02011122912346\r");
    let DeviceEvent::Data(a) = next(&rx) else {
        panic!()
    };
    assert_eq!(a.gtin.unwrap().as_str(), "09501101531000");
    let DeviceEvent::Data(b) = next(&rx) else {
        panic!()
    };
    assert_eq!(b.price.unwrap().minor, 1234);
    // Bad check digit, noise, a frame that lost its suffix: errors, then clean scans.
    plug.write(b"]E09501101531001\r");
    assert_eq!(
        next(&rx),
        DeviceEvent::Error(DeviceError::BadScan {
            raw: "]E09501101531001".into(),
            error: ScanError::CheckDigit {
                expected: 0,
                found: 1
            }
        })
    );
    let noise: Vec<u8> = (0..3000u32)
        .map(|i| (i * 7 % 250) as u8 + 1)
        .filter(|b| *b != b'\r')
        .collect();
    plug.write(&noise);
    plug.write(b"\r");
    assert!(matches!(
        next(&rx),
        DeviceEvent::Error(DeviceError::Noise { .. })
    ));
    plug.write(b"]E0950110");
    assert!(matches!(
        next(&rx),
        DeviceEvent::Error(DeviceError::MissingSuffix { .. })
    ));
    plug.write(b"]E495012346\r");
    let DeviceEvent::Data(c) = next(&rx) else {
        panic!()
    };
    assert_eq!(c.gtin.unwrap().as_str(), "00000095012346");

    // Unplug: the pty goes away. Replug under the same name: picked up again.
    plug.unplug(&path);
    let down = wait_status(&rx, |s| matches!(s, DeviceStatus::Disconnected { .. }));
    assert!(
        matches!(s.status(), DeviceStatus::Disconnected { .. }),
        "{down:?}"
    );
    std::thread::sleep(Duration::from_millis(150));
    let mut plug = Plug::new(&path);
    wait_status(&rx, |s| *s == DeviceStatus::Online);
    plug.write(b"]E09501101531000\r");
    loop {
        match next(&rx) {
            DeviceEvent::Data(d) => {
                assert_eq!(d.gtin.unwrap().as_str(), "09501101531000");
                break;
            }
            DeviceEvent::Status(_) => {}
            other => panic!("{other:?}"),
        }
    }
    s.release();
    assert_eq!(s.state(), DeviceState::Opened);
    wait_status(&rx, |s| *s == DeviceStatus::Closed);
}

#[test]
fn scanner_without_suffix_frames_on_the_pause_and_starts_offline_when_absent() {
    let dir = tempfile::tempdir().unwrap();
    let path = link(&dir, "scanner-none");
    let (mut s, rx) = scanner(&path, ScanSuffix::None);
    // Nothing plugged in yet: claimed, disconnected, retrying.
    assert!(matches!(
        s.claim().unwrap(),
        DeviceStatus::Disconnected { .. }
    ));
    s.enable().unwrap();
    let mut plug = Plug::new(&path);
    wait_status(&rx, |s| *s == DeviceStatus::Online);
    plug.write(b"]C1010950110");
    std::thread::sleep(Duration::from_millis(10));
    plug.write(b"1531000\x1d10AB");
    let DeviceEvent::Data(a) = next(&rx) else {
        panic!()
    };
    assert_eq!(a.batch.as_deref(), Some("AB"));
    std::thread::sleep(Duration::from_millis(100));
    plug.write(b"]E495012346");
    let DeviceEvent::Data(b) = next(&rx) else {
        panic!()
    };
    assert_eq!(b.gtin.unwrap().as_str(), "00000095012346");
}

/// A scale that answers MT-SICS `SI` with whatever `answers` says, one per request.
fn mt_sics_scale(
    mut plug: Plug,
    answers: Vec<Option<&'static [u8]>>,
) -> std::thread::JoinHandle<Plug> {
    std::thread::spawn(move || {
        for a in answers {
            assert_eq!(plug.read(4), b"SI\r\n");
            if let Some(a) = a {
                plug.write(a);
            }
        }
        plug
    })
}

fn scale(path: &Path, protocol: ScaleProtocol) -> (Scale, Receiver<DeviceEvent<Reading>>) {
    let mut config = ScaleConfig::new(path.to_str().unwrap(), protocol);
    config.answer_timeout = Duration::from_millis(400);
    config.repoll = Duration::from_millis(10);
    config.port.backoff = fast_backoff();
    Scale::open(config)
}

fn kg(value: i64) -> Reading {
    Reading::Stable(Weight {
        value,
        decimals: 3,
        unit: WeightUnit::Kg,
    })
}

#[test]
fn scale_weighs_on_request_waits_for_stable_and_goes_offline_when_silent() {
    let dir = tempfile::tempdir().unwrap();
    let path = link(&dir, "scale");
    let plug = Plug::new(&path);
    let (mut sc, rx) = scale(&path, ScaleProtocol::MtSics);
    let req = WeighRequest::stable(Duration::from_secs(2));
    assert_eq!(sc.weigh(req), Err(DeviceError::NotClaimed));
    sc.claim().unwrap();
    assert_eq!(sc.weigh(req), Err(DeviceError::NotEnabled));
    sc.enable().unwrap();
    let fake = mt_sics_scale(
        plug,
        vec![
            Some(b"S S      1.500 kg\r\n"),
            Some(b"S D      1.400 kg\r\n"),
            Some(b"S I\r\n"),
            Some(b"S S      1.450 kg\r\n"),
            Some(b"S D      0.100 kg\r\n"),
            Some(b"S +\r\n"),
            Some(b"\x00garbage\xff\r\n"),
            None,
            Some(b"S S      0.250 kg\r\n"),
        ],
    );
    assert_eq!(sc.weigh(req), Ok(kg(1500)));
    // Moving, busy, then stable: the driver keeps asking.
    assert_eq!(sc.weigh(req), Ok(kg(1450)));
    // Not stable-only: the moving weight is the answer.
    let any = WeighRequest {
        stable_only: false,
        timeout: Duration::from_secs(2),
    };
    assert_eq!(
        sc.weigh(any),
        Ok(Reading::Moving(Some(Weight {
            value: 100,
            decimals: 3,
            unit: WeightUnit::Kg
        })))
    );
    assert_eq!(sc.weigh(req), Err(DeviceError::Scale(ScaleError::Overload)));
    assert!(matches!(
        sc.weigh(req),
        Err(DeviceError::Scale(ScaleError::Garbage(_)))
    ));
    // Silence: offline, then back online with the next answer.
    assert_eq!(sc.weigh(req), Err(DeviceError::Scale(ScaleError::Offline)));
    wait_status(&rx, |s| matches!(s, DeviceStatus::Offline { .. }));
    assert_eq!(sc.weigh(req), Ok(kg(250)));
    wait_status(&rx, |s| *s == DeviceStatus::Online);
    let plug = fake.join().unwrap();

    // Unplugged: weigh says so at once; replugged: weighs again.
    plug.unplug(&path);
    wait_status(&rx, |s| matches!(s, DeviceStatus::Disconnected { .. }));
    assert!(matches!(sc.weigh(req), Err(DeviceError::Disconnected(_))));
    let plug = Plug::new(&path);
    wait_status(&rx, |s| *s == DeviceStatus::Online);
    let fake = mt_sics_scale(plug, vec![Some(b"S S 2.000 kg\r\n")]);
    assert_eq!(sc.weigh(req), Ok(kg(2000)));
    fake.join().unwrap();
}

#[test]
fn scale_that_never_settles_is_not_stable_and_toledo_motion_has_no_weight() {
    let dir = tempfile::tempdir().unwrap();
    let path = link(&dir, "toledo");
    let mut plug = Plug::new(&path);
    let (mut sc, _rx) = scale(
        &path,
        ScaleProtocol::Toledo8217 {
            unit: WeightUnit::Kg,
        },
    );
    sc.claim().unwrap();
    sc.enable().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let fake = std::thread::spawn(move || {
        while !s2.load(std::sync::atomic::Ordering::Acquire) {
            let mut b = [0u8; 8];
            match plug.master.read(&mut b) {
                Ok(n) => {
                    for _ in 0..n {
                        plug.write(b"\x021\r");
                    }
                }
                Err(_) => continue,
            }
        }
    });
    assert_eq!(
        sc.weigh(WeighRequest::stable(Duration::from_millis(600))),
        Err(DeviceError::Scale(ScaleError::NotStable))
    );
    assert_eq!(
        sc.weigh(WeighRequest {
            stable_only: false,
            timeout: Duration::from_secs(1)
        }),
        Ok(Reading::Moving(None))
    );
    stop.store(true, std::sync::atomic::Ordering::Release);
    fake.join().unwrap();
}
