//! Serial line settings a device is configured with: baud, data bits, parity, stop bits.
//! Written and read as `9600 8N1` / `9600 7E1`, as on the device's label.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// Baud, data bits (7 or 8), parity and stop bits (1 or 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SerialSettings {
    pub baud: u32,
    pub data_bits: u8,
    pub parity: Parity,
    pub stop_bits: u8,
}

impl SerialSettings {
    pub const fn new(baud: u32, data_bits: u8, parity: Parity, stop_bits: u8) -> Self {
        SerialSettings {
            baud,
            data_bits,
            parity,
            stop_bits,
        }
    }

    /// 9600 8N1.
    pub const fn default_8n1() -> Self {
        SerialSettings::new(9600, 8, Parity::None, 1)
    }

    /// A serialport builder for `path` with these settings.
    pub fn builder(&self, path: &str) -> serialport::SerialPortBuilder {
        serialport::new(path, self.baud)
            .data_bits(if self.data_bits == 7 {
                serialport::DataBits::Seven
            } else {
                serialport::DataBits::Eight
            })
            .parity(match self.parity {
                Parity::None => serialport::Parity::None,
                Parity::Even => serialport::Parity::Even,
                Parity::Odd => serialport::Parity::Odd,
            })
            .stop_bits(if self.stop_bits == 2 {
                serialport::StopBits::Two
            } else {
                serialport::StopBits::One
            })
            .flow_control(serialport::FlowControl::None)
    }
}

impl fmt::Display for SerialSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.parity {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        };
        write!(f, "{} {}{}{}", self.baud, self.data_bits, p, self.stop_bits)
    }
}

impl FromStr for SerialSettings {
    type Err = String;
    /// `9600 8N1`, `115200 7E1`, or just `8N1` (9600 baud).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("serial settings {s:?}: like \"9600 8N1\" or \"9600 7E1\"");
        let mut parts = s.split_whitespace();
        let (baud, frame) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) => (a.parse::<u32>().map_err(|_| bad())?, b),
            (Some(a), None, None) => (9600, a),
            _ => return Err(bad()),
        };
        if !(300..=4_000_000).contains(&baud) {
            return Err(bad());
        }
        let f = frame.as_bytes();
        if f.len() != 3 {
            return Err(bad());
        }
        let data_bits = match f[0] {
            b'7' => 7,
            b'8' => 8,
            _ => return Err(bad()),
        };
        let parity = match f[1].to_ascii_uppercase() {
            b'N' => Parity::None,
            b'E' => Parity::Even,
            b'O' => Parity::Odd,
            _ => return Err(bad()),
        };
        let stop_bits = match f[2] {
            b'1' => 1,
            b'2' => 2,
            _ => return Err(bad()),
        };
        Ok(SerialSettings::new(baud, data_bits, parity, stop_bits))
    }
}

impl Serialize for SerialSettings {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for SerialSettings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refusals() {
        for s in ["9600 8N1", "115200 7E1", "19200 8O2"] {
            assert_eq!(s.parse::<SerialSettings>().unwrap().to_string(), s);
        }
        assert_eq!(
            "7e1".parse::<SerialSettings>().unwrap(),
            SerialSettings::new(9600, 7, Parity::Even, 1)
        );
        for s in [
            "",
            "9600",
            "9600 9N1",
            "9600 8X1",
            "9600 8N3",
            "abc 8N1",
            "9600 8N1 x",
            "1 8N1",
        ] {
            assert!(s.parse::<SerialSettings>().is_err(), "{s}");
        }
    }
}
