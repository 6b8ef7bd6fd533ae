//! The tag's state machine: frames in, answers out, what to draw.
//!
//! Pure and allocation-free: no clock, no radio, no panel. The firmware's main loop (or the
//! simulator) hands it received bytes and sensor readings, transmits the answer it writes, and
//! acts on the [`Effect`]: redraw with [`Tag::render`] and the panel driver, then report with
//! [`Tag::refreshed`] / [`Tag::refresh_failed`], and send [`Tag::check_in`] so the gateway
//! learns the label now shows the new content.
//!
//! Rules:
//! * A frame for another address, or damaged (COBS, CRC, length, version), is dropped silently:
//!   its seq cannot be trusted, so there is nothing to answer. The sender retries.
//! * Every other frame except the gateway's own acknowledgements is answered with an [`Ack`]
//!   naming its seq, carrying the [`Outcome`] and the status after it.
//! * A frame newer than the last applied is applied once. The same seq again (our answer was
//!   lost) gets the same outcome again and changes nothing. An older seq is a replay: nothing
//!   changes and the answer says `Stale { last }` so a gateway that lost count continues after
//!   it. After power-up every seq is new.
//! * Layers are cached by content hash in fixed slots and checked (hash, panel, geometry) when
//!   their last chunk arrives; the layer on show is never evicted.
//! * `Show` switches layer and fields in one step: no name of one product over another's price.
use aisle_protocol::esl::{
    Ack, ContentHash, DynamicFields, FrameError, Header, LabelId, LayerChunk, LayerHash,
    LayerImage, LedFlash, Outcome, Panel, Seq, SeqTracker, SeqVerdict, StatusFlags, TagCommand,
    TagReport, TagStatus, content_hash, encode_frame, frame, unstuff,
};

use crate::{FrameBuffer, Refresh, render_label};

/// What a tag is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TagConfig {
    pub label: LabelId,
    pub panel: Panel,
    pub has_led: bool,
    /// Below this the status carries `BATTERY_LOW`.
    pub battery_low_mv: u16,
    /// Partial refreshes allowed between two full ones (black/white panels), against ghosting.
    pub partials_per_full: u8,
}

impl TagConfig {
    pub const fn new(label: LabelId, panel: Panel) -> Self {
        TagConfig {
            label,
            panel,
            has_led: true,
            battery_low_mv: 2_300,
            partials_per_full: 8,
        }
    }
}

/// Readings the hardware takes when the tag answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sensors {
    pub battery_mv: u16,
    pub temperature_c: i8,
    /// Signal strength of the frame being answered (or the last one heard).
    pub rssi_dbm: i8,
}

/// What the firmware should do after a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    /// The content changed: render and refresh the panel this way.
    Redraw(Refresh),
    Flash(LedFlash),
}

/// The result of [`Tag::receive`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reception {
    /// Bytes of the reply buffer to transmit (a whole frame); 0 for none.
    pub reply_len: usize,
    pub effect: Effect,
}

/// Why a frame was dropped without an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    #[error("damaged frame: {0}")]
    Frame(FrameError),
    #[error("frame for {0:08X}")]
    NotForMe(u32),
    #[error("reply buffer too small")]
    ReplyBuffer,
}

struct Slot<const CAP: usize> {
    name: Option<LayerHash>,
    total: u32,
    have: u32,
    used: u32,
    bytes: [u8; CAP],
}

impl<const CAP: usize> Slot<CAP> {
    const EMPTY: Self = Slot {
        name: None,
        total: 0,
        have: 0,
        used: 0,
        bytes: [0; CAP],
    };

    fn complete(&self) -> bool {
        self.name.is_some() && self.have == self.total
    }

    fn clear(&mut self) {
        self.name = None;
        self.total = 0;
        self.have = 0;
    }
}

/// Static layers by content hash: `SLOTS` slots of `CAP` bytes, least recently used replaced.
pub struct LayerCache<const SLOTS: usize, const CAP: usize> {
    slots: [Slot<CAP>; SLOTS],
    tick: u32,
}

impl<const SLOTS: usize, const CAP: usize> core::fmt::Debug for LayerCache<SLOTS, CAP> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut list = f.debug_list();
        for s in &self.slots {
            list.entry(&(s.name, s.have, s.total));
        }
        list.finish()
    }
}

impl<const SLOTS: usize, const CAP: usize> Default for LayerCache<SLOTS, CAP> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const SLOTS: usize, const CAP: usize> LayerCache<SLOTS, CAP> {
    pub const fn new() -> Self {
        // One slot for the layer on show, at least one to receive the next.
        const { assert!(SLOTS >= 2, "a tag needs at least two layer slots") };
        LayerCache {
            slots: [Slot::EMPTY; SLOTS],
            tick: 0,
        }
    }

    /// The bytes of a complete layer.
    pub fn get(&self, name: LayerHash) -> Option<&[u8]> {
        self.slots
            .iter()
            .find(|s| s.name == Some(name) && s.complete())
            .and_then(|s| s.bytes.get(..s.total as usize))
    }

    /// Bytes received so far of `name` (its length when complete, 0 when unknown).
    pub fn have(&self, name: LayerHash) -> u32 {
        self.slots
            .iter()
            .find(|s| s.name == Some(name))
            .map_or(0, |s| s.have)
    }

    fn touch(&mut self, name: LayerHash) {
        self.tick = self.tick.wrapping_add(1);
        let tick = self.tick;
        if let Some(s) = self.slots.iter_mut().find(|s| s.name == Some(name)) {
            s.used = tick;
        }
    }

    /// Takes a chunk; `pinned` (the layer on show) is never evicted.
    pub fn receive(
        &mut self,
        chunk: &LayerChunk<'_>,
        panel: Panel,
        pinned: Option<LayerHash>,
    ) -> Outcome {
        let name = chunk.layer;
        if chunk.total as usize > CAP {
            return Outcome::LayerTooLarge {
                max: u32::try_from(CAP).unwrap_or(u32::MAX),
            };
        }
        let index = match self.slots.iter().position(|s| s.name == Some(name)) {
            Some(i) if self.slots[i].total == chunk.total => i,
            found => {
                // A new layer, or one restarted with another length: begin at 0.
                if chunk.offset != 0 {
                    if let Some(i) = found {
                        self.slots[i].clear();
                    }
                    return Outcome::LayerMissing {
                        layer: name,
                        have: 0,
                    };
                }
                let victim = found.or_else(|| {
                    self.slots
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.name.is_none() || s.name != pinned)
                        .min_by_key(|(_, s)| (s.name.is_some(), s.used))
                        .map(|(i, _)| i)
                });
                let Some(i) = victim else {
                    return Outcome::LayerTooLarge { max: 0 };
                };
                let slot = &mut self.slots[i];
                slot.clear();
                slot.name = Some(name);
                slot.total = chunk.total;
                i
            }
        };
        self.touch(name);
        let slot = &mut self.slots[index];
        if slot.complete() {
            return Outcome::Accepted;
        }
        let (offset, have) = (chunk.offset as usize, slot.have as usize);
        let end = offset.saturating_add(chunk.data.len());
        if offset > have {
            return Outcome::LayerMissing {
                layer: name,
                have: slot.have,
            };
        }
        if end > slot.total as usize {
            slot.clear();
            return Outcome::LayerCorrupt { layer: name };
        }
        if end > have {
            // Copy what is new (a chunk may overlap what we hold).
            let fresh = &chunk.data[have - offset..];
            slot.bytes[have..end].copy_from_slice(fresh);
            slot.have = u32::try_from(end).unwrap_or(u32::MAX);
        }
        if slot.have == slot.total {
            let bytes = &slot.bytes[..end];
            if LayerHash::of(bytes) != name || LayerImage::parse(bytes, panel).is_err() {
                slot.clear();
                return Outcome::LayerCorrupt { layer: name };
            }
        }
        Outcome::Accepted
    }
}

/// A shelf-label tag.
///
/// `SLOTS` layers of up to `CAP` bytes are cached: 2 x 4 KiB by default, room for the layer on
/// show and the next one. Layers the gateway renders for a 2.9" label compress to 1-2 KiB.
#[derive(Debug)]
pub struct Tag<const SLOTS: usize = 2, const CAP: usize = 4096> {
    config: TagConfig,
    downlink: SeqTracker,
    last_answer: Option<(Seq, Outcome)>,
    uplink: Seq,
    unacked_status: Option<Seq>,
    cache: LayerCache<SLOTS, CAP>,
    layer: Option<LayerHash>,
    fields: Option<DynamicFields>,
    content: Option<ContentHash>,
    shown: Option<ContentHash>,
    flags: StatusFlags,
    partials: u8,
}

impl<const SLOTS: usize, const CAP: usize> Tag<SLOTS, CAP> {
    /// A tag after power-up: blank, every seq new.
    pub fn new(config: TagConfig) -> Self {
        Tag {
            config,
            downlink: SeqTracker::new(),
            last_answer: None,
            uplink: Seq(0),
            unacked_status: None,
            cache: LayerCache::new(),
            layer: None,
            fields: None,
            content: None,
            shown: None,
            flags: StatusFlags::default(),
            partials: 0,
        }
    }

    pub fn config(&self) -> &TagConfig {
        &self.config
    }

    pub fn fields(&self) -> Option<&DynamicFields> {
        self.fields.as_ref()
    }

    pub fn layer(&self) -> Option<LayerHash> {
        self.layer
    }

    pub fn cache(&self) -> &LayerCache<SLOTS, CAP> {
        &self.cache
    }

    /// Whether a `Status` sent by [`Tag::check_in`] still waits for the gateway's ack.
    pub fn status_unacked(&self) -> bool {
        self.unacked_status.is_some()
    }

    /// The status as reported now.
    pub fn status(&self, sensors: Sensors) -> TagStatus {
        let mut flags = self.flags;
        if sensors.battery_mv < self.config.battery_low_mv {
            flags = flags.with(StatusFlags::BATTERY_LOW);
        }
        TagStatus {
            panel: self.config.panel,
            layer: self.layer,
            content: self.content,
            displayed: self.content == self.shown,
            battery_mv: sensors.battery_mv,
            temperature_c: sensors.temperature_c,
            rssi_dbm: sensors.rssi_dbm,
            flags,
        }
    }

    /// Handles one received frame (`frame` is decoded in place) and writes the answer, if any,
    /// into `reply` (at least [`MAX_RADIO_FRAME_LEN`](aisle_protocol::esl::MAX_RADIO_FRAME_LEN)).
    pub fn receive(
        &mut self,
        frame: &mut [u8],
        sensors: Sensors,
        reply: &mut [u8],
    ) -> Result<Reception, Dropped> {
        let packet = unstuff(frame).map_err(Dropped::Frame)?;
        let (header, body) = frame::open_packet(packet).map_err(Dropped::Frame)?;
        if header.address != self.config.label.0 {
            return Err(Dropped::NotForMe(header.address));
        }
        let (outcome, effect) = match frame::decode_body::<TagCommand>(body) {
            Err(_) => (Outcome::Malformed, Effect::None),
            Ok(TagCommand::Ack { seq }) => {
                if self.unacked_status == Some(seq) {
                    self.unacked_status = None;
                }
                return Ok(Reception {
                    reply_len: 0,
                    effect: Effect::None,
                });
            }
            Ok(command) => match self.downlink.check(header.seq) {
                SeqVerdict::New => {
                    let (outcome, effect) = self.apply(&command);
                    self.downlink.accept(header.seq);
                    self.last_answer = Some((header.seq, outcome));
                    (outcome, effect)
                }
                SeqVerdict::Repeat => match self.last_answer {
                    Some((seq, outcome)) if seq == header.seq => (outcome, Effect::None),
                    _ => (Outcome::Accepted, Effect::None),
                },
                SeqVerdict::Stale { last } => (Outcome::Stale { last }, Effect::None),
            },
        };
        let ack = TagReport::Ack(Ack {
            seq: header.seq,
            outcome,
            status: self.status(sensors),
        });
        let reply_len = self.send(&ack, reply)?;
        Ok(Reception { reply_len, effect })
    }

    /// Writes an unsolicited `Status` (check-in, or after a refresh) into `out`; the gateway
    /// acknowledges it.
    pub fn check_in(&mut self, sensors: Sensors, out: &mut [u8]) -> Result<usize, Dropped> {
        let report = TagReport::Status(self.status(sensors));
        let n = self.send(&report, out)?;
        self.unacked_status = Some(self.uplink);
        Ok(n)
    }

    fn send(&mut self, report: &TagReport, out: &mut [u8]) -> Result<usize, Dropped> {
        self.uplink = self.uplink.next();
        encode_frame(Header::new(self.config.label, self.uplink), report, out)
            .map_err(|_| Dropped::ReplyBuffer)
    }

    fn apply(&mut self, command: &TagCommand<'_>) -> (Outcome, Effect) {
        match *command {
            TagCommand::Fields(fields) => (Outcome::Accepted, self.set_content(self.layer, fields)),
            TagCommand::Show { layer, fields } => {
                if self.cache.get(layer).is_none() {
                    let have = self.cache.have(layer);
                    return (Outcome::LayerMissing { layer, have }, Effect::None);
                }
                self.cache.touch(layer);
                (Outcome::Accepted, self.set_content(Some(layer), fields))
            }
            TagCommand::LayerChunk(ref chunk) => (
                self.cache.receive(chunk, self.config.panel, self.layer),
                Effect::None,
            ),
            TagCommand::Flash(flash) if self.config.has_led => {
                (Outcome::Accepted, Effect::Flash(flash))
            }
            TagCommand::Flash(_) => (Outcome::Unsupported, Effect::None),
            TagCommand::StatusRequest | TagCommand::Ack { .. } => (Outcome::Accepted, Effect::None),
        }
    }

    fn set_content(&mut self, layer: Option<LayerHash>, fields: DynamicFields) -> Effect {
        let content = content_hash(layer, Some(&fields));
        if content == self.content {
            return Effect::None;
        }
        if layer != self.layer {
            // A new layer changes most of the label: a partial refresh would ghost.
            self.partials = u8::MAX;
        }
        self.layer = layer;
        self.fields = Some(fields);
        self.content = content;
        self.pending_redraw().map_or(Effect::None, Effect::Redraw)
    }

    /// The refresh the panel needs to show what the tag holds, if it does not yet (after new
    /// content, or after a failed refresh: the main loop retries with this).
    pub fn pending_redraw(&self) -> Option<Refresh> {
        if self.content == self.shown {
            return None;
        }
        let partial_ok =
            !self.config.panel.has_red() && self.partials < self.config.partials_per_full;
        Some(if partial_ok {
            Refresh::Partial
        } else {
            Refresh::Full
        })
    }

    /// Renders what the tag holds into `fb`; returns its content hash, to hand to
    /// [`Tag::refreshed`] once the panel shows it.
    pub fn render<S: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        fb: &mut FrameBuffer<S>,
    ) -> Option<ContentHash> {
        let fields = self.fields.as_ref();
        let readable = match self.layer {
            None => render_label(fb, None, fields).is_ok(),
            Some(layer) => match self
                .cache
                .get(layer)
                .map(|b| LayerImage::parse(b, self.config.panel))
            {
                Some(Ok(image)) => render_label(fb, Some(&image), fields).is_ok(),
                _ => {
                    let _ = render_label(fb, None, fields);
                    false
                }
            },
        };
        self.flags = if readable {
            self.flags.without(StatusFlags::LAYER_UNREADABLE)
        } else {
            self.flags.with(StatusFlags::LAYER_UNREADABLE)
        };
        self.content
    }

    /// The panel now shows `content` (from [`Tag::render`]) after a `refresh`.
    pub fn refreshed(&mut self, content: Option<ContentHash>, refresh: Refresh) {
        self.shown = content;
        self.flags = self.flags.without(StatusFlags::DISPLAY_FAULT);
        self.partials = match refresh {
            Refresh::Full => 0,
            Refresh::Partial => self.partials.saturating_add(1),
        };
    }

    /// The refresh failed: the panel shows something unknown.
    pub fn refresh_failed(&mut self) {
        self.shown = None;
        self.flags = self.flags.with(StatusFlags::DISPLAY_FAULT);
        // The next refresh is a full one.
        self.partials = u8::MAX;
    }
}
