//! Sequence numbers and replay detection.
//!
//! Each sender numbers its frames: the gateway per tag (downlink), each tag for itself (uplink),
//! the gateway and each access point on their serial link. Numbers are 16 bits and wrap; "newer"
//! is RFC 1982 serial-number arithmetic, so a receiver recognises a repeat (same number: answer
//! again, apply nothing) and a replay (older number: apply nothing) across the wrap.
use core::fmt;

use serde::{Deserialize, Serialize};

/// A frame's sequence number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Seq(pub u16);

impl Seq {
    /// The number after this one (wraps).
    #[must_use]
    pub const fn next(self) -> Seq {
        Seq(self.0.wrapping_add(1))
    }

    /// RFC 1982: `self` is newer if it is 1 to 32767 steps after `other`. Exactly half way
    /// round is not newer, so two numbers are never both newer than each other.
    pub const fn is_newer_than(self, other: Seq) -> bool {
        let d = self.0.wrapping_sub(other.0);
        d != 0 && d < 0x8000
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What a receiver should do with a frame, judged by its sequence number alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqVerdict {
    /// Newer than anything seen: apply it.
    New,
    /// The last frame again (our answer was lost): answer as before, apply nothing.
    Repeat,
    /// Older than the last frame: a replay or a sender that restarted. Apply nothing; telling
    /// the sender `last` lets a restarted gateway continue after it.
    Stale { last: Seq },
}

/// The receiver's memory of the last sequence number it applied from one sender.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqTracker {
    last: Option<Seq>,
}

impl SeqTracker {
    /// A receiver that has seen nothing yet (after power-up): the first frame is new.
    pub const fn new() -> Self {
        SeqTracker { last: None }
    }

    pub const fn last(&self) -> Option<Seq> {
        self.last
    }

    pub const fn check(&self, seq: Seq) -> SeqVerdict {
        match self.last {
            None => SeqVerdict::New,
            Some(last) if seq.0 == last.0 => SeqVerdict::Repeat,
            Some(last) if seq.is_newer_than(last) => SeqVerdict::New,
            Some(last) => SeqVerdict::Stale { last },
        }
    }

    /// Records `seq` as applied. Call only after `check` said `New`.
    pub fn accept(&mut self, seq: Seq) {
        self.last = Some(seq);
    }
}
