//! The messages: bodies of frames on the radio (gateway <-> tag, through the access point) and
//! on the serial link (gateway <-> access point).
//!
//! Every frame is acknowledged by its receiver naming its `seq`, except acknowledgements
//! themselves. A tag acknowledges with an [`Ack`] that carries the [`Outcome`] and its status
//! after the frame, so the gateway learns what the tag holds with every answer.
use core::fmt;

use serde::{Deserialize, Serialize};

use super::{ContentHash, DynamicFields, LayerHash, Panel, Seq};

/// A tag's address: printed on its barcode, in the header of every radio frame to or from it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LabelId(pub u32);

/// Why a printed label id was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a label id is 8 hexadecimal digits")]
pub struct LabelIdError;

impl LabelId {
    /// Parses the printed form: 8 hex digits, either case.
    pub fn parse(s: &str) -> Result<LabelId, LabelIdError> {
        if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(LabelIdError);
        }
        u32::from_str_radix(s, 16)
            .map(LabelId)
            .map_err(|_| LabelIdError)
    }
}

impl core::str::FromStr for LabelId {
    type Err = LabelIdError;
    fn from_str(s: &str) -> Result<Self, LabelIdError> {
        LabelId::parse(s)
    }
}

impl From<LabelId> for u32 {
    fn from(id: LabelId) -> u32 {
        id.0
    }
}

impl fmt::Display for LabelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}", self.0)
    }
}

impl fmt::Debug for LabelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LabelId({:08X})", self.0)
    }
}

/// An access point's address on the serial link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ApId(pub u32);

impl ApId {
    /// Accepted by every access point: for the first contact, before the gateway knows its id.
    pub const ANY: ApId = ApId(u32::MAX);
}

impl From<ApId> for u32 {
    fn from(id: ApId) -> u32 {
        id.0
    }
}

/// Largest chunk of static layer in one radio frame (the frame stays within
/// [`MAX_RADIO_PACKET_LEN`](super::MAX_RADIO_PACKET_LEN)).
pub const LAYER_CHUNK_LEN: usize = 64;

/// A piece of a static layer. Chunks go in order; a tag that missed some says where to resume
/// ([`Outcome::LayerMissing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerChunk<'a> {
    /// The name of the whole layer.
    pub layer: LayerHash,
    /// Length of the whole layer in bytes.
    pub total: u32,
    /// Where this chunk starts.
    pub offset: u32,
    #[serde(borrow)]
    pub data: &'a [u8],
}

/// Colour of a tag's LED.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LedColour {
    Red,
    Green,
    Blue,
    White,
}

/// Flash the LED: to find a shelf, to pick an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LedFlash {
    pub colour: LedColour,
    pub on_ms: u16,
    pub off_ms: u16,
    /// Number of flashes; 0 stops a flash in progress.
    pub count: u8,
}

/// Gateway to tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TagCommand<'a> {
    /// New dynamic fields over the layer the tag shows: a price change.
    Fields(DynamicFields),
    /// Show a cached layer with these fields, atomically: a label never shows one product's
    /// name with another's price.
    Show {
        layer: LayerHash,
        fields: DynamicFields,
    },
    /// Part of a static layer, to cache.
    #[serde(borrow)]
    LayerChunk(LayerChunk<'a>),
    Flash(LedFlash),
    /// Answer with an `Ack` carrying the status; changes nothing.
    StatusRequest,
    /// The gateway received the tag's frame `seq` (a `Status`).
    Ack {
        seq: Seq,
    },
}

/// What became of a gateway frame on the tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied (or already applied: a repeat gets the first answer again).
    Accepted,
    /// Not newer than the last frame applied, `last`: a replay, or a gateway that lost count.
    /// Nothing applied; continue after `last`.
    Stale { last: Seq },
    /// An intact frame whose body the tag cannot decode (unknown message, invalid fields).
    Malformed,
    /// The layer is not (completely) cached: send it from byte `have`.
    LayerMissing { layer: LayerHash, have: u32 },
    /// The layer is larger than the tag can cache.
    LayerTooLarge { max: u32 },
    /// The assembled layer does not hash to its name, or is not a layer for this panel.
    /// Dropped; send it again from the start.
    LayerCorrupt { layer: LayerHash },
    /// A valid command this tag cannot carry out (an LED flash on a tag without one).
    Unsupported,
}

/// Status flags a tag reports.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StatusFlags(pub u8);

impl StatusFlags {
    /// The last panel refresh failed (BUSY timeout, bus error).
    pub const DISPLAY_FAULT: StatusFlags = StatusFlags(0x01);
    /// The cached layer would not decompress; the label shows its fields on white.
    pub const LAYER_UNREADABLE: StatusFlags = StatusFlags(0x02);
    /// The battery is below the tag's threshold.
    pub const BATTERY_LOW: StatusFlags = StatusFlags(0x04);

    pub const fn contains(self, other: StatusFlags) -> bool {
        self.0 & other.0 == other.0
    }

    #[must_use]
    pub const fn with(self, other: StatusFlags) -> StatusFlags {
        StatusFlags(self.0 | other.0)
    }

    #[must_use]
    pub const fn without(self, other: StatusFlags) -> StatusFlags {
        StatusFlags(self.0 & !other.0)
    }
}

impl fmt::Debug for StatusFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StatusFlags({:#04x})", self.0)
    }
}

/// A tag's state as it reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TagStatus {
    pub panel: Panel,
    /// The static layer it shows.
    pub layer: Option<LayerHash>,
    /// [`content_hash`](super::content_hash) of the layer and fields it holds.
    pub content: Option<ContentHash>,
    /// Whether the panel shows `content` (its refresh finished). False between accepting new
    /// content and the end of the refresh: the shelf may still show the previous price.
    pub displayed: bool,
    pub battery_mv: u16,
    pub temperature_c: i8,
    /// Strength of the access point's last frame as the tag heard it.
    pub rssi_dbm: i8,
    pub flags: StatusFlags,
}

/// The tag's answer to a gateway frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ack {
    /// The gateway frame answered.
    pub seq: Seq,
    pub outcome: Outcome,
    pub status: TagStatus,
}

/// Tag to gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TagReport {
    /// The answer to a gateway frame. Not acknowledged.
    Ack(Ack),
    /// Unsolicited: at check-in, and when a refresh finished. The gateway acknowledges it with
    /// [`TagCommand::Ack`].
    Status(TagStatus),
}

/// Gateway to access point (serial link).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApCommand<'a> {
    /// Deliver this radio packet (unstuffed: header, body, CRC) to the tag its header names,
    /// when the tag next listens.
    Send { radio: &'a [u8] },
    /// Answer with `Status`.
    StatusRequest,
    /// The gateway received the access point's frame `seq`.
    Ack { seq: Seq },
}

/// Why an access point refused a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ApRefusal {
    /// No room in the queue: retry later.
    QueueFull,
    /// The radio packet does not open (CRC, version, length): a gateway bug.
    BadRadioPacket,
    /// The command is not addressed to this access point.
    NotMine,
    /// An intact frame whose body the access point cannot decode.
    Malformed,
}

/// An access point's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ApStatus {
    pub id: ApId,
    pub channel: u8,
    /// Radio packets waiting for their tags.
    pub queued: u16,
    /// Distinct tags heard since start.
    pub tags_heard: u32,
    pub uptime_s: u32,
}

/// Access point to gateway (serial link).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApReport<'a> {
    /// Command `seq` taken (a `Send` is queued for its tag). Not acknowledged.
    Ack { seq: Seq },
    /// Command `seq` refused. Not acknowledged.
    Refused { seq: Seq, reason: ApRefusal },
    /// A radio packet heard from a tag, forwarded as received (unstuffed), with the access
    /// point's reading of its signal. Acknowledged.
    Heard { rssi_dbm: i8, radio: &'a [u8] },
    /// A queued radio packet for `label` was dropped undelivered (the tag did not listen
    /// before the access point's deadline). Acknowledged.
    Expired { label: LabelId, seq: Seq },
    /// Acknowledged.
    Status(ApStatus),
}
