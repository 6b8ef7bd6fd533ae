//! Content hashes: how a static layer is named and how a tag confirms what it shows.
//!
//! Both are the first 8 bytes of a domain-separated SHA-256. Eight bytes keep the frames small;
//! a store holds tens of thousands of distinct layers, far below the 2^32 where collisions of a
//! 64-bit hash become likely. They guard against mix-ups and damage, not against an attacker.
use core::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::DynamicFields;
use super::fields::MAX_FIELDS_LEN;

/// The name of a static layer: a hash of its encoded bytes (see [`super::layer`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LayerHash(pub [u8; 8]);

/// What a label shows: a hash over its static layer's name and its dynamic fields. The gateway
/// computes it for what it wants shown; the tag reports it for what it holds.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContentHash(pub [u8; 8]);

fn truncate(digest: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    for (o, d) in out.iter_mut().zip(digest) {
        *o = *d;
    }
    out
}

impl LayerHash {
    /// The name of the encoded layer `bytes`.
    pub fn of(bytes: &[u8]) -> LayerHash {
        let mut h = Sha256::new();
        h.update(b"aisle/esl/layer/1\0");
        h.update(bytes);
        LayerHash(truncate(&h.finalize()))
    }
}

/// The content hash of a label showing `layer` (if any) with `fields` (if any); `None` for a
/// label that holds neither (blank). Allocation-free: tags call it.
pub fn content_hash(
    layer: Option<LayerHash>,
    fields: Option<&DynamicFields>,
) -> Option<ContentHash> {
    if layer.is_none() && fields.is_none() {
        return None;
    }
    let mut h = Sha256::new();
    h.update(b"aisle/esl/content/1\0");
    match layer {
        Some(l) => {
            h.update([1]);
            h.update(l.0);
        }
        None => h.update([0]),
    }
    match fields {
        Some(f) => {
            let mut buf = [0u8; MAX_FIELDS_LEN];
            // MAX_FIELDS_LEN bounds every encoding (checked by a test); an encoding error would
            // hash the marker alone, which cannot equal a real fields' hash.
            let bytes = postcard::to_slice(f, &mut buf).map(|b| &*b).unwrap_or(&[]);
            h.update([1]);
            h.update(bytes);
        }
        None => h.update([0]),
    }
    Some(ContentHash(truncate(&h.finalize())))
}

fn hex(f: &mut fmt::Formatter<'_>, bytes: &[u8; 8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

impl fmt::Display for LayerHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex(f, &self.0)
    }
}

impl fmt::Debug for LayerHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LayerHash(")?;
        hex(f, &self.0)?;
        f.write_str(")")
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex(f, &self.0)
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContentHash(")?;
        hex(f, &self.0)?;
        f.write_str(")")
    }
}
