//! Shelf-label tag firmware logic: `no_std`, no allocator, generic over embedded-hal 1.0.
//!
//! ```text
//! radio bytes ──▶ Tag::receive ──▶ reply frame (Ack naming the seq, with the status)
//!                    │ Effect::Redraw(refresh)
//!                    ▼
//!                 Tag::render ──▶ FrameBuffer (static layer + dynamic fields) ──▶ Ssd1680::update
//!                                                                                    │
//!                 Tag::refreshed ◀── ok / fault ─────────────────────────────────────┘
//! ```
//!
//! * [`tag`]: the tag's state machine. Pure: bytes in, bytes out, no clock, no I/O.
//! * [`render`]: draws a label: the cached static layer, then the dynamic fields in the
//!   panel's boxes ([`Panel::layout`]) with the firmware's own [`digits`].
//! * [`framebuffer`]: the frame buffer in the panel's native layout, an embedded-graphics
//!   `DrawTarget` in label coordinates.
//! * [`ssd1680`]: the SSD1680-class e-paper driver over `SpiDevice`, `OutputPin`, `InputPin`,
//!   `DelayNs`.
//!
//! No allocator: every buffer (frame buffer, layer cache, reply) is the caller's or a fixed
//! array. `aisle-protocol` links `alloc` for the gateway's conveniences, so a tag binary still
//! names a `#[global_allocator]`; the tag paths never call it, and one that fails every request
//! is enough.
#![no_std]
#![forbid(unsafe_code)]

pub mod digits;
pub mod framebuffer;
pub mod render;
pub mod ssd1680;
pub mod tag;

pub use aisle_protocol::esl::Panel;
pub use framebuffer::{FrameBuffer, LabelColor};
pub use render::render_label;
pub use ssd1680::{Refresh, Ssd1680};
pub use tag::{Effect, Sensors, Tag, TagConfig};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes_match_published_panels() {
        // shared/vectors/README.md: a 2.9" 296x128 tag is 4736 bytes at 1 bpp, 9472 at 2 bpp.
        assert_eq!(Panel::Bw290.frame_bytes(), 4736);
        assert_eq!(Panel::Bwr290.frame_bytes(), 9472);
        assert_eq!(Panel::Bw420.frame_bytes(), 15000);
        assert_eq!(Panel::Bwr420.frame_bytes(), 30000);
    }
}
