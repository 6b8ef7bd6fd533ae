//! A simulated serial barcode scanner on a real pseudo-terminal: what `aisle-sim scanner` runs,
//! and what tests and the demo run in-process.
//!
//! The scanner sends what it "reads" the way a configured handheld does: an optional AIM
//! symbology identifier, the data (FNC1 as GS), and a suffix (CR, CR LF or none). Scripts are
//! lines (from a file or stdin):
//!
//! ```text
//! 9501101531000                      # a scan; symbology guessed (8/12/13/14 digits, GS → GS1-128)
//! scan gs1-datamatrix 01095011015310001726020010LOT7
//! nosuffix ean13 9501101531000       # the suffix is lost
//! lostgs gs1-128 10ABC<GS>0109501101531000   # the scanner dropped the GS
//! noise 40                           # 40 random bytes, then the suffix
//! sleep 200                          # milliseconds
//! unplug / plug                      # the USB cable (needs a link path)
//! quit
//! ```
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use aisle_drivers::scanner::{ScanSuffix, Symbology, unescape};
use anyhow::{Context, Result, anyhow, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What to simulate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannerSimConfig {
    pub suffix: ScanSuffix,
    /// Prefix every scan with its AIM symbology identifier.
    pub aim: bool,
    /// Publish the pty under this path (a symlink, like a udev name); needed for unplug/plug.
    pub link: Option<PathBuf>,
    pub seed: u64,
}

impl ScannerSimConfig {
    pub fn new(suffix: ScanSuffix, aim: bool) -> Self {
        ScannerSimConfig {
            suffix,
            aim,
            link: None,
            seed: 1,
        }
    }
}

/// One script line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Scan {
        symbology: Symbology,
        data: Vec<u8>,
    },
    /// Sent without its suffix.
    NoSuffix {
        symbology: Symbology,
        data: Vec<u8>,
    },
    /// Sent with every GS removed.
    LostGs {
        symbology: Symbology,
        data: Vec<u8>,
    },
    Noise(usize),
    Sleep(Duration),
    Unplug,
    Plug,
    Quit,
}

fn symbology_name(s: &str) -> Option<Symbology> {
    Some(match s.to_ascii_lowercase().as_str() {
        "ean13" | "upca" => Symbology::Ean13,
        "ean8" => Symbology::Ean8,
        "itf14" | "itf" => Symbology::Itf,
        "code128" => Symbology::Code128,
        "gs1-128" => Symbology::Gs1_128,
        "datamatrix" => Symbology::DataMatrix,
        "gs1-datamatrix" => Symbology::Gs1DataMatrix,
        "qr" => Symbology::Qr,
        "gs1-qr" => Symbology::Gs1Qr,
        "databar" => Symbology::Gs1DataBar,
        _ => return None,
    })
}

/// The symbology a barcode of `data` would be printed in.
pub fn guess(data: &[u8]) -> Symbology {
    if data.iter().all(u8::is_ascii_digit) {
        match data.len() {
            8 => return Symbology::Ean8,
            12 | 13 => return Symbology::Ean13,
            14 => return Symbology::Itf,
            _ => {}
        }
    }
    if data.contains(&0x1d) {
        Symbology::Gs1_128
    } else {
        Symbology::Code128
    }
}

/// `[SYMBOLOGY] DATA`.
fn barcode(rest: &str) -> Result<(Symbology, Vec<u8>)> {
    let rest = rest.trim();
    if rest.is_empty() {
        bail!("no barcode data");
    }
    if let Some((first, data)) = rest.split_once(char::is_whitespace)
        && let Some(s) = symbology_name(first)
    {
        return Ok((s, unescape(data.trim())));
    }
    let data = unescape(rest);
    Ok((guess(&data), data))
}

impl FromStr for Command {
    type Err = anyhow::Error;
    fn from_str(line: &str) -> Result<Self> {
        let line = line.trim();
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        Ok(match word {
            "scan" => {
                let (symbology, data) = barcode(rest)?;
                Command::Scan { symbology, data }
            }
            "nosuffix" => {
                let (symbology, data) = barcode(rest)?;
                Command::NoSuffix { symbology, data }
            }
            "lostgs" => {
                let (symbology, data) = barcode(rest)?;
                Command::LostGs { symbology, data }
            }
            "noise" => Command::Noise(
                rest.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n <= 65_536)
                    .ok_or_else(|| anyhow!("noise N: a byte count up to 65536"))?,
            ),
            "sleep" => Command::Sleep(Duration::from_millis(
                rest.trim()
                    .parse()
                    .map_err(|_| anyhow!("sleep MS: milliseconds"))?,
            )),
            "unplug" => Command::Unplug,
            "plug" => Command::Plug,
            "quit" => Command::Quit,
            _ => {
                let (symbology, data) = barcode(line)?;
                Command::Scan { symbology, data }
            }
        })
    }
}

use crate::pty::SimPort as Port;

fn open_pty(link: Option<&Path>) -> Result<Port> {
    crate::pty::open(link, Duration::from_secs(1))
}

/// A running simulated scanner.
pub struct ScannerSim {
    config: ScannerSimConfig,
    port: Mutex<Option<Port>>,
    rng: Mutex<StdRng>,
}

impl std::fmt::Debug for ScannerSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScannerSim")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ScannerSim {
    pub fn start(config: ScannerSimConfig) -> Result<ScannerSim> {
        let port = open_pty(config.link.as_deref())?;
        Ok(ScannerSim {
            rng: Mutex::new(StdRng::seed_from_u64(config.seed)),
            config,
            port: Mutex::new(Some(port)),
        })
    }

    /// The path a driver opens: the link if configured, else the pty itself.
    pub fn path(&self) -> String {
        if let Some(l) = &self.config.link {
            return l.display().to_string();
        }
        self.port
            .lock()
            .ok()
            .and_then(|p| p.as_ref().map(|p| p.name.clone()))
            .unwrap_or_default()
    }

    /// The bytes a scan of `data` puts on the line (before the suffix).
    pub fn encode(&self, symbology: &Symbology, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 5);
        let mut body = data;
        let padded;
        if self.config.aim {
            if let Some(aim) = symbology.aim() {
                out.extend_from_slice(aim.as_bytes());
            }
            // ]E0 carries UPC-A as 13 digits.
            if *symbology == Symbology::Ean13 && data.len() == 12 {
                padded = [b"0", data].concat();
                body = &padded;
            }
        }
        out.extend_from_slice(body);
        out
    }

    fn write(&self, bytes: &[u8]) -> Result<()> {
        let mut guard = self.port.lock().map_err(|_| anyhow!("poisoned"))?;
        let port = guard.as_mut().ok_or_else(|| anyhow!("unplugged"))?;
        port.master.write_all(bytes)?;
        port.master.flush()?;
        Ok(())
    }

    /// Runs one command; says what it did.
    pub fn command(&self, c: Command) -> Result<String> {
        let suffix = self.config.suffix.bytes();
        match c {
            Command::Scan { symbology, data } => {
                let mut b = self.encode(&symbology, &data);
                b.extend_from_slice(suffix);
                self.write(&b)?;
                Ok(format!("sent {} bytes", b.len()))
            }
            Command::NoSuffix { symbology, data } => {
                let b = self.encode(&symbology, &data);
                self.write(&b)?;
                Ok(format!("sent {} bytes without suffix", b.len()))
            }
            Command::LostGs { symbology, data } => {
                let data: Vec<u8> = data.into_iter().filter(|b| *b != 0x1d).collect();
                let mut b = self.encode(&symbology, &data);
                b.extend_from_slice(suffix);
                self.write(&b)?;
                Ok(format!("sent {} bytes, GS lost", b.len()))
            }
            Command::Noise(n) => {
                let mut b: Vec<u8> = {
                    let mut rng = self.rng.lock().map_err(|_| anyhow!("poisoned"))?;
                    (0..n)
                        .map(|_| {
                            loop {
                                let x: u8 = rng.random();
                                if x != b'\r' && x != b'\n' {
                                    break x;
                                }
                            }
                        })
                        .collect()
                };
                b.extend_from_slice(suffix);
                self.write(&b)?;
                Ok(format!("sent {n} noise bytes"))
            }
            Command::Sleep(d) => {
                std::thread::sleep(d);
                Ok(String::new())
            }
            Command::Unplug => {
                if self.config.link.is_none() {
                    bail!("unplug needs a link path (--link)");
                }
                let mut guard = self.port.lock().map_err(|_| anyhow!("poisoned"))?;
                // As udev does: the name goes first, then the device, so nothing opens a
                // reused pty number under the old name.
                if let Some(link) = &self.config.link {
                    let _ = std::fs::remove_file(link);
                }
                *guard = None;
                Ok("unplugged".into())
            }
            Command::Plug => {
                let link = self
                    .config
                    .link
                    .as_deref()
                    .ok_or_else(|| anyhow!("plug needs a link path (--link)"))?;
                let port = open_pty(Some(link))?;
                let mut guard = self.port.lock().map_err(|_| anyhow!("poisoned"))?;
                *guard = Some(port);
                Ok("plugged in".into())
            }
            Command::Quit => Ok("bye".into()),
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(
            "9501101531000".parse::<Command>().unwrap(),
            Command::Scan {
                symbology: Symbology::Ean13,
                data: b"9501101531000".to_vec()
            }
        );
        assert_eq!(
            "scan gs1-qr 10A<GS>21B".parse::<Command>().unwrap(),
            Command::Scan {
                symbology: Symbology::Gs1Qr,
                data: b"10A\x1d21B".to_vec()
            }
        );
        assert_eq!(
            "lostgs 10A\\x1d21B".parse::<Command>().unwrap(),
            Command::LostGs {
                symbology: Symbology::Gs1_128,
                data: b"10A\x1d21B".to_vec()
            }
        );
        assert_eq!("noise 5".parse::<Command>().unwrap(), Command::Noise(5));
        assert!("noise x".parse::<Command>().is_err());
        assert!("scan".parse::<Command>().is_err());
        assert_eq!(
            "hello world".parse::<Command>().unwrap(),
            Command::Scan {
                symbology: Symbology::Code128,
                data: b"hello world".to_vec()
            }
        );
    }
}
