//! Retail scales on a serial line: request/response codecs for Mettler Toledo MT-SICS, Toledo
//! 8217, NCI/Weigh-Tronix SCP-01 and CAS (continuous output). Pure: bytes in, [`ScaleReply`]s
//! out; the device thread in [`crate::upos`] does the I/O and the timeouts.
//!
//! The unit is always the one in the frame (or, for Toledo 8217 frames that carry none, the
//! one the scale is configured with); nothing is converted behind the caller's back. Charging
//! needs [`Reading::Stable`]. Overload, underload, scale faults and bytes that do not parse
//! are typed errors.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::serial::{Parity, SerialSettings};

/// Longest reply frame accepted; longer is garbage.
pub const MAX_REPLY: usize = 96;

const STX: u8 = 0x02;
const ETX: u8 = 0x03;
const LF: u8 = b'\n';
const CR: u8 = b'\r';

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightUnit {
    G,
    Kg,
    Lb,
    Oz,
}

impl WeightUnit {
    pub fn parse(s: &str) -> Option<WeightUnit> {
        match s.to_ascii_lowercase().as_str() {
            "g" => Some(WeightUnit::G),
            "kg" => Some(WeightUnit::Kg),
            "lb" | "lbs" => Some(WeightUnit::Lb),
            "oz" => Some(WeightUnit::Oz),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WeightUnit::G => "g",
            WeightUnit::Kg => "kg",
            WeightUnit::Lb => "lb",
            WeightUnit::Oz => "oz",
        }
    }
}

/// A weight exactly as the scale sent it: `value` × 10^-`decimals` `unit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Weight {
    pub value: i64,
    pub decimals: u8,
    pub unit: WeightUnit,
}

impl Weight {
    /// Grams, for a metric weight (rounded half away from zero below a gram); `None` for lb
    /// and oz: converting is the caller's explicit decision.
    pub fn grams(&self) -> Option<i64> {
        let (value, decimals) = match self.unit {
            WeightUnit::G => (self.value, self.decimals),
            WeightUnit::Kg => (self.value, self.decimals.saturating_sub(3)),
            _ => return None,
        };
        let extra = if self.unit == WeightUnit::Kg && self.decimals < 3 {
            10i64.checked_pow(u32::from(3 - self.decimals))?
        } else {
            1
        };
        let div = 10i64.checked_pow(u32::from(decimals))?;
        let v = value.checked_mul(extra)?;
        let q = v / div;
        let r = (v % div).abs();
        Some(if r * 2 >= div && div > 1 {
            q + v.signum()
        } else {
            q
        })
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = u32::from(self.decimals);
        let scale = 10i64.pow(d);
        let sign = if self.value < 0 { "-" } else { "" };
        let a = self.value.unsigned_abs();
        let s = scale.unsigned_abs();
        if d == 0 {
            write!(f, "{sign}{a} {}", self.unit.as_str())
        } else {
            write!(
                f,
                "{sign}{}.{:0w$} {}",
                a / s,
                a % s,
                self.unit.as_str(),
                w = d as usize
            )
        }
    }
}

/// A weight reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reading {
    /// The scale says the weight is stable: it may be charged.
    Stable(Weight),
    /// Still moving (Toledo 8217 sends no weight then).
    Moving(Option<Weight>),
}

/// Why there is no reading.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(rename_all = "snake_case", tag = "error", content = "detail")]
pub enum ScaleError {
    #[error("the scale is overloaded")]
    Overload,
    #[error("the scale is below zero (underload); zero it")]
    Underload,
    #[error("the scale cannot weigh now (busy or not executable)")]
    NotExecutable,
    #[error("the scale refused the command: {0}")]
    Refused(&'static str),
    #[error("the scale reports a fault: {0}")]
    Fault(String),
    #[error("the scale answered something that is not a weight: {0}")]
    Garbage(String),
    #[error("the weight did not settle in time")]
    NotStable,
    #[error("the scale does not answer")]
    Offline,
}

/// One decoded reply.
pub type ScaleReply = Result<Reading, ScaleError>;

/// The scale's protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScaleProtocol {
    /// Mettler Toledo Standard Interface Command Set: `SI` CR LF → `S S|D value unit`.
    MtSics,
    /// Toledo 8217: `W` → STX weight CR, or STX status CR. Frames carry no unit: `unit` is
    /// what the scale is set to.
    Toledo8217 { unit: WeightUnit },
    /// NCI / Weigh-Tronix SCP-01: `W` CR → LF weight unit CR LF status CR ETX.
    Nci,
    /// CAS continuous output: `ST,GS,+  1.500kg` CR LF lines, no request.
    Cas,
}

impl FromStr for ScaleProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "mt-sics" | "mtsics" => Ok(ScaleProtocol::MtSics),
            "toledo" | "toledo-kg" | "8217" => Ok(ScaleProtocol::Toledo8217 {
                unit: WeightUnit::Kg,
            }),
            "toledo-lb" => Ok(ScaleProtocol::Toledo8217 {
                unit: WeightUnit::Lb,
            }),
            "nci" | "scp-01" | "scp01" => Ok(ScaleProtocol::Nci),
            "cas" => Ok(ScaleProtocol::Cas),
            other => Err(format!(
                "scale protocol {other:?}: mt-sics, toledo, toledo-lb, nci or cas"
            )),
        }
    }
}

impl ScaleProtocol {
    /// What to send for one reading (empty: the scale sends on its own).
    pub fn request(&self) -> &'static [u8] {
        match self {
            ScaleProtocol::MtSics => b"SI\r\n",
            ScaleProtocol::Toledo8217 { .. } => b"W",
            ScaleProtocol::Nci => b"W\r",
            ScaleProtocol::Cas => b"",
        }
    }

    /// The usual line settings (the device's own may differ: configure them).
    pub fn serial_defaults(&self) -> SerialSettings {
        match self {
            ScaleProtocol::MtSics | ScaleProtocol::Cas => SerialSettings::default_8n1(),
            ScaleProtocol::Toledo8217 { .. } | ScaleProtocol::Nci => {
                SerialSettings::new(9600, 7, Parity::Even, 1)
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            ScaleProtocol::MtSics => "mt-sics",
            ScaleProtocol::Toledo8217 { .. } => "toledo",
            ScaleProtocol::Nci => "nci",
            ScaleProtocol::Cas => "cas",
        }
    }
}

/// Splits a scale's byte stream into replies and decodes them. Bounded: a reply longer than
/// [`MAX_REPLY`] is reported as garbage and dropped.
#[derive(Debug)]
pub struct ScaleDecoder {
    protocol: ScaleProtocol,
    buf: Vec<u8>,
    overlong: bool,
}

impl ScaleDecoder {
    pub fn new(protocol: ScaleProtocol) -> Self {
        ScaleDecoder {
            protocol,
            buf: Vec::with_capacity(MAX_REPLY),
            overlong: false,
        }
    }

    /// Forgets a partial reply (before a new request).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.overlong = false;
    }

    /// Whether part of a reply is waiting for its end.
    pub fn is_partial(&self) -> bool {
        !self.buf.is_empty() || self.overlong
    }

    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<ScaleReply>) {
        for &b in bytes {
            let end = match self.protocol {
                ScaleProtocol::MtSics | ScaleProtocol::Cas => b == LF,
                ScaleProtocol::Toledo8217 { .. } => b == CR,
                ScaleProtocol::Nci => b == ETX,
            };
            if end {
                if self.overlong {
                    out.push(Err(ScaleError::Garbage(format!(
                        "reply longer than {MAX_REPLY} bytes"
                    ))));
                } else if !self.buf.is_empty() || self.protocol == ScaleProtocol::Nci {
                    let frame = std::mem::take(&mut self.buf);
                    // A lone CR LF between replies is no reply.
                    if !(frame == [CR] && self.protocol != ScaleProtocol::Nci) {
                        out.push(decode(self.protocol, &frame));
                    }
                }
                self.reset();
                continue;
            }
            if self.overlong {
                continue;
            }
            if self.buf.len() >= MAX_REPLY {
                self.overlong = true;
                self.buf.clear();
            } else {
                self.buf.push(b);
            }
        }
    }
}

fn shown(frame: &[u8]) -> String {
    let mut s = String::new();
    for &b in frame.iter().take(40) {
        if b.is_ascii_graphic() || b == b' ' {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    if frame.len() > 40 {
        s.push('…');
    }
    s
}

fn garbage(frame: &[u8]) -> ScaleError {
    ScaleError::Garbage(shown(frame))
}

/// Parses `[+-] digits[.digits]`, spaces allowed before the digits.
fn number(s: &str) -> Option<(i64, u8)> {
    let s = s.trim();
    let (neg, rest) = match s.as_bytes().first()? {
        b'-' => (true, s[1..].trim_start()),
        b'+' => (false, s[1..].trim_start()),
        _ => (false, s),
    };
    let (int, frac) = match rest.split_once('.') {
        Some((i, f)) => (i, f),
        None => (rest, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if int.len() + frac.len() > 12
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut v: i64 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        v = v * 10 + i64::from(b - b'0');
    }
    Some((if neg { -v } else { v }, u8::try_from(frac.len()).ok()?))
}

/// `1.500kg`, `  1.500 kg`, `-0.020 lb`.
fn weight_with_unit(s: &str) -> Option<Weight> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let unit = WeightUnit::parse(unit.trim())?;
    let (value, decimals) = number(num)?;
    Some(Weight {
        value,
        decimals,
        unit,
    })
}

/// Decodes one reply frame (without its terminator).
pub fn decode(protocol: ScaleProtocol, frame: &[u8]) -> ScaleReply {
    let Ok(text) = std::str::from_utf8(frame) else {
        return Err(garbage(frame));
    };
    if frame
        .iter()
        .any(|&b| b >= 0x80 || (b < 0x20 && !matches!(b, STX | CR | LF)))
    {
        return Err(garbage(frame));
    }
    match protocol {
        ScaleProtocol::MtSics => mt_sics(text.trim_end_matches('\r')),
        ScaleProtocol::Toledo8217 { unit } => toledo(frame, unit),
        ScaleProtocol::Nci => nci(frame),
        ScaleProtocol::Cas => cas(text.trim_end_matches('\r')),
    }
}

fn mt_sics(line: &str) -> ScaleReply {
    let mut t = line.split_whitespace();
    let tokens: Vec<&str> = t.by_ref().take(5).collect();
    let bad = || Err(garbage(line.as_bytes()));
    if t.next().is_some() {
        return bad();
    }
    match tokens[..] {
        ["ES"] => Err(ScaleError::Refused("syntax error (ES)")),
        ["ET"] => Err(ScaleError::Refused("transmission error (ET)")),
        ["EL"] => Err(ScaleError::Refused("logical error (EL)")),
        ["S" | "SI", "I"] => Err(ScaleError::NotExecutable),
        ["S" | "SI", "+"] => Err(ScaleError::Overload),
        ["S" | "SI", "-"] => Err(ScaleError::Underload),
        ["S" | "SI", status @ ("S" | "D"), value, unit] => {
            let (Some((v, d)), Some(unit)) = (number(value), WeightUnit::parse(unit)) else {
                return bad();
            };
            let w = Weight {
                value: v,
                decimals: d,
                unit,
            };
            Ok(if status == "S" {
                Reading::Stable(w)
            } else {
                Reading::Moving(Some(w))
            })
        }
        _ => bad(),
    }
}

fn toledo(frame: &[u8], unit: WeightUnit) -> ScaleReply {
    let Some(body) = frame.strip_prefix(&[STX]) else {
        return Err(garbage(frame));
    };
    // A status reply: one status byte, sometimes after '?'.
    let status = match body {
        [s] | [b'?', s] => Some(*s),
        _ => None,
    };
    if let Some(s) = status {
        if s & 0x02 != 0 {
            return Err(ScaleError::Overload);
        }
        if s & 0x04 != 0 {
            return Err(ScaleError::Underload);
        }
        if s & 0x01 != 0 {
            return Ok(Reading::Moving(None));
        }
        return Err(ScaleError::Fault(format!(
            "status byte 0x{s:02x} without a weight"
        )));
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(garbage(frame));
    };
    if !text.contains('.') {
        return Err(garbage(frame));
    }
    let w = if text.trim_end().ends_with(|c: char| c.is_ascii_alphabetic()) {
        weight_with_unit(text)
    } else {
        number(text).map(|(value, decimals)| Weight {
            value,
            decimals,
            unit,
        })
    };
    w.map(Reading::Stable).ok_or_else(|| garbage(frame))
}

fn nci(frame: &[u8]) -> ScaleReply {
    let Some(body) = frame.strip_prefix(&[LF]) else {
        return Err(garbage(frame));
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(garbage(frame));
    };
    let lines: Vec<&str> = text
        .split(['\r', '\n'])
        .filter(|l| !l.is_empty())
        .take(4)
        .collect();
    let (weight_line, status_line) = match lines[..] {
        ["?"] => return Err(ScaleError::Refused("unknown command (?)")),
        [w, s] => (Some(w), s),
        [s] => (None, s),
        _ => return Err(garbage(frame)),
    };
    let sb = status_line
        .strip_prefix('S')
        .unwrap_or(status_line)
        .as_bytes();
    if !(2..=3).contains(&sb.len()) || sb.iter().any(|b| b & 0xF0 != 0x30) {
        return Err(garbage(frame));
    }
    let (s1, s2) = (sb[0], sb[1]);
    if s2 & 0x02 != 0 {
        return Err(ScaleError::Overload);
    }
    if s2 & 0x01 != 0 {
        return Err(ScaleError::Underload);
    }
    let mut faults = Vec::new();
    if s1 & 0x04 != 0 {
        faults.push("RAM error");
    }
    if s1 & 0x08 != 0 {
        faults.push("EEPROM error");
    }
    if s2 & 0x04 != 0 {
        faults.push("ROM error");
    }
    if s2 & 0x08 != 0 {
        faults.push("faulty calibration");
    }
    if !faults.is_empty() {
        return Err(ScaleError::Fault(faults.join(", ")));
    }
    let Some(w) = weight_line.and_then(weight_with_unit) else {
        return Err(garbage(frame));
    };
    Ok(if s1 & 0x01 != 0 {
        Reading::Moving(Some(w))
    } else {
        Reading::Stable(w)
    })
}

fn cas(line: &str) -> ScaleReply {
    let fields: Vec<&str> = line.split(',').take(5).collect();
    let bad = || Err(garbage(line.as_bytes()));
    let (state, kind, weight) = match fields[..] {
        [s, k, w] | [s, k, _, w] => (s.trim(), k.trim(), w),
        _ => return bad(),
    };
    if !matches!(kind, "GS" | "NT" | "TR") {
        return bad();
    }
    match state {
        "OL" => return Err(ScaleError::Overload),
        "ST" | "US" => {}
        _ => return bad(),
    }
    let Some(w) = weight_with_unit(weight) else {
        return bad();
    };
    Ok(if state == "ST" {
        Reading::Stable(w)
    } else {
        Reading::Moving(Some(w))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(value: i64, decimals: u8, unit: WeightUnit) -> Weight {
        Weight {
            value,
            decimals,
            unit,
        }
    }

    fn replies(p: ScaleProtocol, chunks: &[&[u8]]) -> Vec<ScaleReply> {
        let mut d = ScaleDecoder::new(p);
        let mut out = Vec::new();
        for c in chunks {
            d.push(c, &mut out);
        }
        out
    }

    const KG: WeightUnit = WeightUnit::Kg;

    #[test]
    fn mt_sics_replies() {
        let p = ScaleProtocol::MtSics;
        let r = replies(
            p,
            &[
                b"S S      1.500 kg\r\n",
                b"S D   ",
                b"   1.498 kg\r\nS I\r\nS +\r\nS -\r\nES\r\nET\r\nEL\r\n",
                b"S S     -0.020 kg\r\nS S   3.25 lb\r\nS S 100 g\r\nS X 1 kg\r\nS S 1.0 st\r\n",
            ],
        );
        assert_eq!(
            r,
            vec![
                Ok(Reading::Stable(w(1500, 3, KG))),
                Ok(Reading::Moving(Some(w(1498, 3, KG)))),
                Err(ScaleError::NotExecutable),
                Err(ScaleError::Overload),
                Err(ScaleError::Underload),
                Err(ScaleError::Refused("syntax error (ES)")),
                Err(ScaleError::Refused("transmission error (ET)")),
                Err(ScaleError::Refused("logical error (EL)")),
                Ok(Reading::Stable(w(-20, 3, KG))),
                Ok(Reading::Stable(w(325, 2, WeightUnit::Lb))),
                Ok(Reading::Stable(w(100, 0, WeightUnit::G))),
                Err(ScaleError::Garbage("S X 1 kg".into())),
                Err(ScaleError::Garbage("S S 1.0 st".into())),
            ]
        );
    }

    #[test]
    fn toledo_8217_replies() {
        let p = ScaleProtocol::Toledo8217 {
            unit: WeightUnit::Lb,
        };
        let r = replies(
            p,
            &[
                b"\x02  1.25\r\x02",
                b"01.500\r\x021\r\x02?2\r\x024\r\x02 2.50 kg\r\x02 abc\r\x02\x40\r1.5\r",
            ],
        );
        assert_eq!(
            r,
            vec![
                Ok(Reading::Stable(w(125, 2, WeightUnit::Lb))),
                Ok(Reading::Stable(w(1500, 3, WeightUnit::Lb))),
                Ok(Reading::Moving(None)),
                Err(ScaleError::Overload),
                Err(ScaleError::Underload),
                Ok(Reading::Stable(w(250, 2, KG))),
                Err(ScaleError::Garbage("\\x02 abc".into())),
                Err(ScaleError::Fault(
                    "status byte 0x40 without a weight".into()
                )),
                Err(ScaleError::Garbage("1.5".into())),
            ]
        );
    }

    #[test]
    fn nci_replies() {
        let p = ScaleProtocol::Nci;
        let r = replies(
            p,
            &[
                b"\n  1.234kg\r\n00\r\x03",
                b"\n  1.230kg\r\n10\r\x03\n?\r\x03\nS02\r\x03\nS01\r\x03",
                b"\n  0.5lb\r\n40\r\x03\n1.0kg\r\n04\r\x03\n1.0kg\r\nAB\r\x03\nxx\r\n00\r\x03",
            ],
        );
        assert_eq!(
            r,
            vec![
                Ok(Reading::Stable(w(1234, 3, KG))),
                Ok(Reading::Moving(Some(w(1230, 3, KG)))),
                Err(ScaleError::Refused("unknown command (?)")),
                Err(ScaleError::Overload),
                Err(ScaleError::Underload),
                Err(ScaleError::Fault("RAM error".into())),
                Err(ScaleError::Fault("ROM error".into())),
                Err(ScaleError::Garbage("\\x0a1.0kg\\x0d\\x0aAB\\x0d".into())),
                Err(ScaleError::Garbage("\\x0axx\\x0d\\x0a00\\x0d".into())),
            ]
        );
    }

    #[test]
    fn cas_lines() {
        let r = replies(
            ScaleProtocol::Cas,
            &[b"ST,GS,+  1.500kg\r\nUS,GS,+  1.480kg\r\nOL,GS,+  9.999kg\r\nST,NT,01,-  0.020kg\r\nXX,GS,+1kg\r\nST,GS,+ 1.5\r\n"],
        );
        assert_eq!(
            r,
            vec![
                Ok(Reading::Stable(w(1500, 3, KG))),
                Ok(Reading::Moving(Some(w(1480, 3, KG)))),
                Err(ScaleError::Overload),
                Ok(Reading::Stable(w(-20, 3, KG))),
                Err(ScaleError::Garbage("XX,GS,+1kg".into())),
                Err(ScaleError::Garbage("ST,GS,+ 1.5".into())),
            ]
        );
    }

    #[test]
    fn overlong_and_binary_garbage() {
        let mut long = vec![b'9'; 200];
        long.extend_from_slice(b"\r\nS S 1.000 kg\r\n");
        let r = replies(ScaleProtocol::MtSics, &[&long]);
        assert!(matches!(r[0], Err(ScaleError::Garbage(_))));
        assert_eq!(r[1], Ok(Reading::Stable(w(1000, 3, KG))));
        let r = replies(ScaleProtocol::MtSics, &[b"\xff\xfe S S\r\n\x00\x01\r\n"]);
        assert!(r.iter().all(|x| matches!(x, Err(ScaleError::Garbage(_)))));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn grams_never_convert_imperial() {
        assert_eq!(w(1500, 3, KG).grams(), Some(1500));
        assert_eq!(w(15, 1, KG).grams(), Some(1500));
        assert_eq!(w(12345, 4, KG).grams(), Some(1235));
        assert_eq!(w(-12345, 4, KG).grams(), Some(-1235));
        assert_eq!(w(1005, 1, WeightUnit::G).grams(), Some(101));
        assert_eq!(w(100, 0, WeightUnit::G).grams(), Some(100));
        assert_eq!(w(325, 2, WeightUnit::Lb).grams(), None);
        assert_eq!(w(1500, 3, KG).to_string(), "1.500 kg");
        assert_eq!(w(-20, 3, KG).to_string(), "-0.020 kg");
        assert_eq!(w(100, 0, WeightUnit::G).to_string(), "100 g");
    }

    #[test]
    fn protocol_names_and_requests() {
        for (s, req) in [
            ("mt-sics", &b"SI\r\n"[..]),
            ("toledo", b"W"),
            ("nci", b"W\r"),
            ("cas", b""),
        ] {
            let p: ScaleProtocol = s.parse().unwrap();
            assert_eq!(p.request(), req);
            assert_eq!(p.name(), s);
        }
        assert!("abc".parse::<ScaleProtocol>().is_err());
        assert_eq!(ScaleProtocol::Nci.serial_defaults().to_string(), "9600 7E1");
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_without_panic(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            p in proptest::sample::select(vec![
                ScaleProtocol::MtSics,
                ScaleProtocol::Toledo8217 { unit: WeightUnit::Kg },
                ScaleProtocol::Nci,
                ScaleProtocol::Cas,
            ]),
        ) {
            let mut d = ScaleDecoder::new(p);
            let mut out = Vec::new();
            d.push(&data, &mut out);
            proptest::prop_assert!(d.buf.len() <= MAX_REPLY);
        }

        #[test]
        fn weights_round_trip_through_text(v in -99_999_999i64..99_999_999, d in 0u8..5) {
            let weight = w(v, d, KG);
            let line = format!("S S {}\r\n", weight);
            let r = replies(ScaleProtocol::MtSics, &[line.as_bytes()]);
            proptest::prop_assert_eq!(r, vec![Ok(Reading::Stable(weight))]);
        }
    }
}
