//! Identifiers. String ids are validated on construction and on deserialisation, so a value of
//! these types is always safe to log, put in a URL path or use as a database key.
use alloc::string::{String, ToString};
use core::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ProtocolError;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal, $extra:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = $max;

            pub fn parse(s: &str) -> Result<Self, ProtocolError> {
                let ok = !s.is_empty()
                    && s.len() <= $max
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || $extra.as_bytes().contains(&b));
                if ok {
                    Ok($name(s.to_string()))
                } else {
                    Err(ProtocolError::BadId {
                        kind: $kind,
                        max: $max,
                        allowed: concat!("letters, digits and '", $extra, "'"),
                        value: s.chars().take(80).collect(),
                    })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl core::str::FromStr for $name {
            type Err = ProtocolError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <alloc::borrow::Cow<'de, str>>::deserialize(d)?;
                $name::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A store, as HQ names it (`S001`).
    StoreId, "store id", 32, "-_"
);
string_id!(
    /// One gateway's identity at the hub (`gw-S001-7f3a`).
    GatewayId, "gateway id", 64, "-_"
);
string_id!(
    /// The lane's or client's idempotency key for a sale.
    SaleId, "sale id", 64, "-_.:"
);
string_id!(
    /// A price batch at the hub.
    BatchId, "batch id", 64, "-_"
);
string_id!(
    /// An online order for pickup, as the shop's order system names it (`web-10042`).
    OrderId, "order id", 64, "-_.:"
);

/// A globally unique event id: 128 bits, written as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId([u8; 16]);

impl EventId {
    pub fn from_bytes(b: [u8; 16]) -> Self {
        EventId(b)
    }

    /// A time-ordered id (the UUIDv7 layout): 48 bits of milliseconds, then 80 random bits.
    /// Ids made later sort later, so a B-tree index on them grows at its right edge instead of
    /// touching a random page per insert; 80 random bits keep them unique across gateways.
    pub fn time_ordered(unix_ms: u64, random: [u8; 10]) -> Self {
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
        b[6..].copy_from_slice(&random);
        EventId(b)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub fn parse(s: &str) -> Result<Self, ProtocolError> {
        let b = s.as_bytes();
        if b.len() != 32 {
            return Err(ProtocolError::BadEventId);
        }
        let mut out = [0u8; 16];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            let hi = hex_val(pair[0]).ok_or(ProtocolError::BadEventId)?;
            let lo = hex_val(pair[1]).ok_or(ProtocolError::BadEventId)?;
            out[i] = (hi << 4) | lo;
        }
        Ok(EventId(out))
    }

    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(32);
        for byte in self.0 {
            let _ = fmt::write(&mut s, format_args!("{byte:02x}"));
        }
        s
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.to_hex())
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <alloc::borrow::Cow<'de, str>>::deserialize(d)?;
        EventId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_ids_validate() {
        assert!(StoreId::parse("S001").is_ok());
        assert!(StoreId::parse("").is_err());
        assert!(StoreId::parse("S 001").is_err());
        assert!(StoreId::parse("../etc").is_err());
        assert!(StoreId::parse(&"x".repeat(33)).is_err());
        assert!(SaleId::parse("lane-3:2026-11-22.0042").is_ok());
        assert!(serde_json::from_str::<StoreId>("\"S/1\"").is_err());
        let e = StoreId::parse("a b").unwrap_err().to_string();
        assert!(e.contains("store id"), "{e}");
    }

    #[test]
    fn time_ordered_ids_sort_by_time() {
        let a = EventId::time_ordered(1_000, [0xff; 10]);
        let b = EventId::time_ordered(1_001, [0x00; 10]);
        assert!(a < b);
        assert_eq!(&a.as_bytes()[..6], &[0, 0, 0, 0, 0x03, 0xe8]);
        assert_ne!(
            EventId::time_ordered(5, [1; 10]),
            EventId::time_ordered(5, [2; 10])
        );
    }

    #[test]
    fn event_id_hex_round_trip() {
        let id = EventId::from_bytes([0xab; 16]);
        assert_eq!(id.to_hex(), "ab".repeat(16));
        assert_eq!(EventId::parse(&id.to_hex()).unwrap(), id);
        assert!(EventId::parse("AB").is_err());
        assert!(EventId::parse(&"AB".repeat(16)).is_err());
        assert!(EventId::parse(&"zz".repeat(16)).is_err());
    }
}
