//! Electronic shelf labels, the gateway's side of the devices (issue 3).
//!
//! ```text
//! product data ──▶ NameRenderer ──▶ NameLayer (encoded static layer + Fit) ──▶ planner
//! planner ──RadioPacket──▶ ApHandle ─▶ driver thread ──serial, ApCommand::Send──▶ access point
//! planner ◀──ApEvent (tag reports, outcomes, link state)── driver thread ◀──ApReport── access point
//! ```
//!
//! * [`name_layer`]: draws product name, brand, details and badge into the panel's name box with
//!   the embedded CJK-capable [`font`], wraps and shrinks to fit, and says when it had to cut.
//! * [`link`]: the serial link to the access point as a pure state machine: bytes in, reports
//!   and bytes out, with every dropped frame counted by reason.
//! * [`access_point`]: the thin I/O around it: a dedicated thread per port, reconnect with
//!   full-jitter backoff, bounded queues, status.
//!
//! The wire format is `aisle_protocol::esl`; the tag's drawing is `aisle-firmware`.
pub mod access_point;
pub mod font;
pub mod link;
pub mod name_layer;

pub use access_point::{ApConfig, ApHandle, ApLinkStatus, SendError};
pub use font::{FontError, LabelFont};
pub use link::{
    ApEvent, ApLink, DropCounts, DropReason, LinkConfig, LinkState, LinkStats, QueueFull,
    RadioPacket, ReplayWindow, SendId, SendOutcome,
};
pub use name_layer::{ELLIPSIS, Fit, MAX_FIELD_CHARS, NameLayer, NameRenderer, NameText};
