//! A simulated serial scale on a real pseudo-terminal: what `aisle-sim scale` runs, and what
//! tests and the demo run in-process. It answers requests as the protocol's scale does
//! (MT-SICS `SI`/`S`, Toledo 8217 `W`, NCI `W` CR; CAS sends a line every `cas_every` on its
//! own), written here independently of the driver's decoder.
//!
//! Script lines (from a file or stdin):
//!
//! ```text
//! weight 1.250 kg      # what is on the platter (the unit is the scale's display unit)
//! motion on|off        # the weight is settling
//! overload | underload | normal
//! silence on|off       # read requests, answer nothing
//! garbage N            # the next N answers are noise
//! sleep MS
//! unplug / plug        # the cable (needs a link path)
//! quit
//! ```
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aisle_drivers::scale::{ScaleProtocol, WeightUnit};
use anyhow::{Context, Result, anyhow, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What to simulate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleSimConfig {
    pub protocol: ScaleProtocol,
    /// Publish the pty under this path (a symlink); needed for unplug/plug.
    pub link: Option<PathBuf>,
    /// CAS: a line this often.
    pub cas_every: Duration,
    pub seed: u64,
}

impl ScaleSimConfig {
    pub fn new(protocol: ScaleProtocol) -> Self {
        ScaleSimConfig {
            protocol,
            link: None,
            cas_every: Duration::from_millis(100),
            seed: 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    Normal,
    Overload,
    Underload,
}

/// One script line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Value in the display's decimals (`1.250` = 1250 with 3 decimals), unit.
    Weight {
        value: i64,
        decimals: u8,
        unit: WeightUnit,
    },
    Motion(bool),
    Condition(Condition),
    Silence(bool),
    Garbage(u32),
    Sleep(Duration),
    Unplug,
    Plug,
    Quit,
}

fn on_off(s: &str) -> Result<bool> {
    match s.trim() {
        "on" | "" => Ok(true),
        "off" => Ok(false),
        other => bail!("{other:?}: on or off"),
    }
}

impl FromStr for Command {
    type Err = anyhow::Error;
    fn from_str(line: &str) -> Result<Self> {
        let line = line.trim();
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        Ok(match word {
            "weight" => {
                let mut parts = rest.split_whitespace();
                let (Some(v), Some(u), None) = (parts.next(), parts.next(), parts.next()) else {
                    bail!("weight VALUE UNIT, e.g. weight 1.250 kg");
                };
                let unit =
                    WeightUnit::parse(u).ok_or_else(|| anyhow!("unit {u:?}: g, kg, lb, oz"))?;
                let (int, frac) = v.split_once('.').unwrap_or((v, ""));
                let neg = int.starts_with('-');
                let int = int.trim_start_matches('-');
                if int.len() + frac.len() > 9
                    || int.is_empty()
                    || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
                {
                    bail!("weight {v:?}: digits with an optional point");
                }
                let digits: i64 = format!("{int}{frac}").parse()?;
                Command::Weight {
                    value: if neg { -digits } else { digits },
                    decimals: u8::try_from(frac.len())?,
                    unit,
                }
            }
            "motion" => Command::Motion(on_off(rest)?),
            "overload" => Command::Condition(Condition::Overload),
            "underload" => Command::Condition(Condition::Underload),
            "normal" => Command::Condition(Condition::Normal),
            "silence" => Command::Silence(on_off(rest)?),
            "garbage" => Command::Garbage(if rest.trim().is_empty() {
                1
            } else {
                rest.trim().parse().map_err(|_| anyhow!("garbage N"))?
            }),
            "sleep" => Command::Sleep(Duration::from_millis(
                rest.trim().parse().map_err(|_| anyhow!("sleep MS"))?,
            )),
            "unplug" => Command::Unplug,
            "plug" => Command::Plug,
            "quit" => Command::Quit,
            other => bail!("unknown command {other:?}"),
        })
    }
}

/// What the scale shows.
#[derive(Clone, Debug)]
struct State {
    value: i64,
    decimals: u8,
    unit: WeightUnit,
    motion: bool,
    condition: Condition,
    silent: bool,
    garbage: u32,
    requests: u64,
    answers: u64,
}

/// Counters for tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScaleSimStats {
    pub requests: u64,
    pub answers: u64,
}

use crate::pty::SimPort as Port;

fn open_pty(link: Option<&Path>) -> Result<Port> {
    crate::pty::open(link, Duration::from_millis(10))
}

struct Inner {
    state: Mutex<State>,
    port: Mutex<Option<Port>>,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running simulated scale.
pub struct ScaleSim {
    config: ScaleSimConfig,
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ScaleSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScaleSim")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ScaleSim {
    pub fn start(config: ScaleSimConfig) -> Result<ScaleSim> {
        let port = open_pty(config.link.as_deref())?;
        let unit = match config.protocol {
            ScaleProtocol::Toledo8217 { unit } => unit,
            _ => WeightUnit::Kg,
        };
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                value: 0,
                decimals: 3,
                unit,
                motion: false,
                condition: Condition::Normal,
                silent: false,
                garbage: 0,
                requests: 0,
                answers: 0,
            }),
            port: Mutex::new(Some(port)),
            stop: AtomicBool::new(false),
        });
        let thread = {
            let inner = Arc::clone(&inner);
            let config = config.clone();
            std::thread::Builder::new()
                .name("scale-sim".into())
                .spawn(move || serve(&config, &inner))?
        };
        Ok(ScaleSim {
            config,
            inner,
            thread: Some(thread),
        })
    }

    /// The path a driver opens: the link if configured, else the pty itself.
    pub fn path(&self) -> String {
        if let Some(l) = &self.config.link {
            return l.display().to_string();
        }
        lock(&self.inner.port)
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default()
    }

    pub fn stats(&self) -> ScaleSimStats {
        let s = lock(&self.inner.state);
        ScaleSimStats {
            requests: s.requests,
            answers: s.answers,
        }
    }

    pub fn command(&self, c: Command) -> Result<String> {
        match c {
            Command::Weight {
                value,
                decimals,
                unit,
            } => {
                let mut s = lock(&self.inner.state);
                s.value = value;
                s.decimals = decimals;
                s.unit = unit;
            }
            Command::Motion(on) => lock(&self.inner.state).motion = on,
            Command::Condition(c) => lock(&self.inner.state).condition = c,
            Command::Silence(on) => lock(&self.inner.state).silent = on,
            Command::Garbage(n) => lock(&self.inner.state).garbage = n,
            Command::Sleep(d) => std::thread::sleep(d),
            Command::Unplug => {
                let Some(link) = &self.config.link else {
                    bail!("unplug needs a link path (--link)");
                };
                let mut port = lock(&self.inner.port);
                // As udev does: the name goes first, then the device.
                let _ = std::fs::remove_file(link);
                *port = None;
            }
            Command::Plug => {
                let link = self
                    .config
                    .link
                    .as_deref()
                    .ok_or_else(|| anyhow!("plug needs a link path (--link)"))?;
                *lock(&self.inner.port) = Some(open_pty(Some(link))?);
            }
            Command::Quit => return Ok("bye".into()),
        }
        Ok("ok".into())
    }

    /// Runs a script (lines; `#` comments), stopping at `quit`.
    pub fn run_script(&self, script: &str) -> Result<()> {
        for (n, line) in script.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let c: Command = line.parse().with_context(|| format!("line {}", n + 1))?;
            if c == Command::Quit {
                break;
            }
            self.command(c).with_context(|| format!("line {}", n + 1))?;
        }
        Ok(())
    }

    pub fn shutdown(mut self) -> ScaleSimStats {
        self.stop();
        self.stats()
    }

    fn stop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ScaleSim {
    fn drop(&mut self) {
        self.stop();
    }
}

fn number(value: i64, decimals: u8) -> String {
    let d = u32::from(decimals);
    let scale = 10u64.pow(d);
    let a = value.unsigned_abs();
    let sign = if value < 0 { "-" } else { "" };
    if d == 0 {
        format!("{sign}{a}")
    } else {
        format!("{sign}{}.{:0w$}", a / scale, a % scale, w = d as usize)
    }
}

/// The answer to one request, as the protocol's scale sends it.
fn answer(protocol: ScaleProtocol, s: &State) -> Vec<u8> {
    let n = number(s.value, s.decimals);
    let unit = s.unit.as_str();
    match protocol {
        ScaleProtocol::MtSics => match s.condition {
            Condition::Overload => b"S +\r\n".to_vec(),
            Condition::Underload => b"S -\r\n".to_vec(),
            Condition::Normal => {
                format!("S {} {n:>10} {unit}\r\n", if s.motion { 'D' } else { 'S' }).into_bytes()
            }
        },
        ScaleProtocol::Toledo8217 { .. } => {
            let status = match s.condition {
                Condition::Overload => Some(0x32u8),
                Condition::Underload => Some(0x34),
                Condition::Normal if s.motion => Some(0x31),
                Condition::Normal => None,
            };
            match status {
                Some(b) => vec![0x02, b, b'\r'],
                None => format!("\x02{n:>7}\r").into_bytes(),
            }
        }
        ScaleProtocol::Nci => {
            let s1 = 0x30 | u8::from(s.motion);
            let s2 = 0x30
                | match s.condition {
                    Condition::Normal => 0,
                    Condition::Underload => 1,
                    Condition::Overload => 2,
                };
            let mut out = Vec::new();
            if s.condition == Condition::Normal {
                out.extend_from_slice(format!("\n{n:>8}{unit}\r\n").as_bytes());
            } else {
                out.extend_from_slice(b"\nS");
            }
            out.extend_from_slice(&[s1, s2, b'\r', 0x03]);
            out
        }
        ScaleProtocol::Cas => match s.condition {
            Condition::Overload => format!("OL,GS,+{n:>8}{unit}\r\n").into_bytes(),
            // CAS shows a negative weight below zero.
            Condition::Underload => format!(
                "ST,GS,-{:>8}{unit}\r\n",
                number(s.value.abs().max(1), s.decimals)
            )
            .into_bytes(),
            Condition::Normal => format!(
                "{},GS,{}{:>8}{unit}\r\n",
                if s.motion { "US" } else { "ST" },
                if s.value < 0 { '-' } else { '+' },
                number(s.value.abs(), s.decimals)
            )
            .into_bytes(),
        },
    }
}

fn terminator(protocol: ScaleProtocol) -> &'static [u8] {
    match protocol {
        ScaleProtocol::MtSics | ScaleProtocol::Cas => b"\r\n",
        ScaleProtocol::Toledo8217 { .. } => b"\r",
        ScaleProtocol::Nci => b"\r\x03",
    }
}

/// Counts complete requests in `buf` (consuming them) and says which are unknown commands.
fn requests(protocol: ScaleProtocol, buf: &mut Vec<u8>) -> Vec<bool> {
    let mut out = Vec::new();
    match protocol {
        ScaleProtocol::Toledo8217 { .. } => {
            // Zero and tare need no answer here.
            out.extend(buf.drain(..).filter(|b| *b == b'W').map(|_| true));
        }
        ScaleProtocol::MtSics | ScaleProtocol::Nci => {
            let end = if protocol == ScaleProtocol::MtSics {
                b'\n'
            } else {
                b'\r'
            };
            while let Some(p) = buf.iter().position(|&b| b == end) {
                let line: Vec<u8> = buf.drain(..=p).collect();
                let text = String::from_utf8_lossy(&line);
                let cmd = text.trim();
                out.push(match protocol {
                    ScaleProtocol::MtSics => matches!(cmd, "S" | "SI"),
                    _ => cmd == "W",
                });
            }
        }
        ScaleProtocol::Cas => buf.clear(),
    }
    if buf.len() > 256 {
        buf.clear();
    }
    out
}

fn serve(config: &ScaleSimConfig, inner: &Inner) {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut buf = Vec::new();
    let mut next_cas = Instant::now();
    let mut read = [0u8; 256];
    while !inner.stop.load(Ordering::Acquire) {
        let mut guard = lock(&inner.port);
        let Some(port) = guard.as_mut() else {
            drop(guard);
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let mut to_answer: Vec<bool> = Vec::new();
        match port.master.read(&mut read) {
            Ok(n) => {
                buf.extend_from_slice(&read[..n]);
                to_answer = requests(config.protocol, &mut buf);
            }
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            // No driver has the pty open yet (EIO): wait.
            Err(_) => {
                drop(guard);
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        }
        if config.protocol == ScaleProtocol::Cas && Instant::now() >= next_cas {
            next_cas = Instant::now() + config.cas_every;
            to_answer.push(true);
        }
        let mut out = Vec::new();
        {
            let mut s = lock(&inner.state);
            for known in to_answer {
                if config.protocol != ScaleProtocol::Cas {
                    s.requests += 1;
                }
                if s.silent {
                    continue;
                }
                s.answers += 1;
                if s.garbage > 0 {
                    s.garbage -= 1;
                    let n = rng.random_range(3..20);
                    out.extend((0..n).map(|_| rng.random_range(0x21u8..0x7f)));
                    out.extend_from_slice(terminator(config.protocol));
                } else if !known {
                    match config.protocol {
                        ScaleProtocol::MtSics => out.extend_from_slice(b"ES\r\n"),
                        ScaleProtocol::Nci => out.extend_from_slice(b"\n?\r\x03"),
                        _ => {}
                    }
                } else {
                    out.extend_from_slice(&answer(config.protocol, &s));
                }
            }
        }
        if !out.is_empty() {
            let _ = port.master.write_all(&out);
            let _ = port.master.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            value: 1250,
            decimals: 3,
            unit: WeightUnit::Kg,
            motion: false,
            condition: Condition::Normal,
            silent: false,
            garbage: 0,
            requests: 0,
            answers: 0,
        }
    }

    #[test]
    fn answers_per_protocol() {
        let s = state();
        assert_eq!(
            answer(ScaleProtocol::MtSics, &s),
            b"S S      1.250 kg\r\n".to_vec()
        );
        assert_eq!(
            answer(
                ScaleProtocol::Toledo8217 {
                    unit: WeightUnit::Kg
                },
                &s
            ),
            b"\x02  1.250\r".to_vec()
        );
        assert_eq!(
            answer(ScaleProtocol::Nci, &s),
            b"\n   1.250kg\r\n00\r\x03".to_vec()
        );
        assert_eq!(
            answer(ScaleProtocol::Cas, &s),
            b"ST,GS,+   1.250kg\r\n".to_vec()
        );
        let m = State {
            motion: true,
            ..state()
        };
        assert_eq!(
            answer(
                ScaleProtocol::Toledo8217 {
                    unit: WeightUnit::Kg
                },
                &m
            ),
            b"\x021\r".to_vec()
        );
        assert!("weight 1.2.3 kg".parse::<Command>().is_err());
        assert_eq!(
            "weight -0.020 kg".parse::<Command>().unwrap(),
            Command::Weight {
                value: -20,
                decimals: 3,
                unit: WeightUnit::Kg
            }
        );
    }
}
