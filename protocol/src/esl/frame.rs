//! The frame: what travels on the radio between access point and tag, and on the serial link
//! between gateway and access point.
//!
//! ```text
//! packet = version (1) | address (4, LE) | seq (2, LE) | postcard body | CRC-32 (4, LE)
//! frame  = COBS(packet) | 0x00
//! ```
//!
//! The CRC is CRC-32/ISO-HDLC (the zlib one) over everything before it. The version byte, the
//! header layout and the CRC trailer are fixed for every protocol version, so a receiver can
//! always tell "another version" from "damaged". Decoding is total: every input yields a value
//! or a [`FrameError`], never a panic, and never reads or writes outside the given buffers.
use serde::{Deserialize, Serialize};

use super::Seq;

/// The protocol version this crate speaks (the first byte of every packet).
pub const VERSION: u8 = 1;
/// Version, address and sequence number.
pub const HEADER_LEN: usize = 7;
/// The CRC-32 trailer.
pub const CRC_LEN: usize = 4;
/// Smallest possible packet: header, a one-byte body, CRC.
pub const MIN_PACKET_LEN: usize = HEADER_LEN + 1 + CRC_LEN;
/// Largest packet a tag accepts over the radio. With COBS and the delimiter the frame is at most
/// 98 bytes, which fits an IEEE 802.15.4 frame (127 bytes) with its MAC header and FCS.
pub const MAX_RADIO_PACKET_LEN: usize = 96;
/// Largest packet on the serial link (a radio packet plus its envelope fits with room).
pub const MAX_PACKET_LEN: usize = 160;
/// Largest encoded frame on the serial link, delimiter included: size a stream reader's buffer
/// with it.
pub const MAX_FRAME_LEN: usize = cobs::max_encoding_length(MAX_PACKET_LEN) + 1;
/// Largest encoded radio frame, delimiter included.
pub const MAX_RADIO_FRAME_LEN: usize = cobs::max_encoding_length(MAX_RADIO_PACKET_LEN) + 1;
/// The frame delimiter.
pub const DELIMITER: u8 = 0x00;

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// Why a frame was refused. Copy and allocation-free, so a tag can hold and report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("empty frame")]
    Empty,
    #[error("truncated: {len} bytes, at least {min} needed")]
    Truncated { len: usize, min: usize },
    #[error("oversized: {len} bytes, at most {max} allowed")]
    Oversized { len: usize, max: usize },
    #[error("frame stuffing (COBS) is invalid")]
    Stuffing,
    #[error("CRC-32 mismatch: trailer {found:08x}, content {computed:08x}")]
    Crc { found: u32, computed: u32 },
    #[error("protocol version {found}, this end speaks {VERSION}")]
    Version { found: u8 },
    #[error("the body is not a valid message of the expected kind")]
    Body,
    #[error("{len} bytes left over after the message body")]
    Trailing { len: usize },
    #[error("output buffer too small")]
    BufferTooSmall,
}

/// Who a frame is for (or from) and its number.
///
/// On the radio `address` is the tag's [`LabelId`](super::LabelId), in both directions. On the
/// serial link it is the access point's [`ApId`](super::ApId).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    pub address: u32,
    pub seq: Seq,
}

impl Header {
    pub fn new(address: impl Into<u32>, seq: Seq) -> Self {
        Header {
            address: address.into(),
            seq,
        }
    }
}

/// Writes header, body and CRC into `out`; returns the packet's length.
pub fn encode_packet<M: Serialize + ?Sized>(
    header: Header,
    body: &M,
    out: &mut [u8],
) -> Result<usize, FrameError> {
    if out.len() < MIN_PACKET_LEN {
        return Err(FrameError::BufferTooSmall);
    }
    out[0] = VERSION;
    out[1..5].copy_from_slice(&header.address.to_le_bytes());
    out[5..7].copy_from_slice(&header.seq.0.to_le_bytes());
    // Never write a packet a receiver would refuse as oversized.
    let room = out.len().min(MAX_PACKET_LEN);
    let body_len = postcard::to_slice(body, &mut out[HEADER_LEN..room - CRC_LEN])
        .map_err(|_| {
            if room == MAX_PACKET_LEN {
                FrameError::Oversized {
                    len: MAX_PACKET_LEN + 1,
                    max: MAX_PACKET_LEN,
                }
            } else {
                FrameError::BufferTooSmall
            }
        })?
        .len();
    let end = HEADER_LEN + body_len;
    let crc = CRC32.checksum(&out[..end]);
    out[end..end + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(end + CRC_LEN)
}

/// Checks a packet's length, CRC and version; returns its header and the undecoded body.
///
/// A receiver that cannot decode the body still knows who sent it and its number, so it can
/// answer "malformed" naming the frame.
pub fn open_packet(packet: &[u8]) -> Result<(Header, &[u8]), FrameError> {
    let len = packet.len();
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len < MIN_PACKET_LEN {
        return Err(FrameError::Truncated {
            len,
            min: MIN_PACKET_LEN,
        });
    }
    if len > MAX_PACKET_LEN {
        return Err(FrameError::Oversized {
            len,
            max: MAX_PACKET_LEN,
        });
    }
    let (content, trailer) = packet.split_at(len - CRC_LEN);
    let found = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let computed = CRC32.checksum(content);
    if found != computed {
        return Err(FrameError::Crc { found, computed });
    }
    if content[0] != VERSION {
        return Err(FrameError::Version { found: content[0] });
    }
    let address = u32::from_le_bytes([content[1], content[2], content[3], content[4]]);
    let seq = Seq(u16::from_le_bytes([content[5], content[6]]));
    Ok((Header { address, seq }, &content[HEADER_LEN..]))
}

/// Decodes a body opened by [`open_packet`]. Refuses bytes left over.
pub fn decode_body<'a, M: Deserialize<'a>>(body: &'a [u8]) -> Result<M, FrameError> {
    let (message, rest) = postcard::take_from_bytes::<M>(body).map_err(|_| FrameError::Body)?;
    if !rest.is_empty() {
        return Err(FrameError::Trailing { len: rest.len() });
    }
    Ok(message)
}

/// [`open_packet`] and [`decode_body`] in one.
pub fn decode_packet<'a, M: Deserialize<'a>>(packet: &'a [u8]) -> Result<(Header, M), FrameError> {
    let (header, body) = open_packet(packet)?;
    Ok((header, decode_body(body)?))
}

/// COBS-encodes a packet and appends the delimiter; returns the frame's length.
pub fn stuff(packet: &[u8], out: &mut [u8]) -> Result<usize, FrameError> {
    let n = cobs::try_encode(packet, out).map_err(|_| FrameError::BufferTooSmall)?;
    let slot = out.get_mut(n).ok_or(FrameError::BufferTooSmall)?;
    *slot = DELIMITER;
    Ok(n + 1)
}

/// Decodes a frame in place and returns the packet (a prefix of `frame`).
///
/// `frame` is the bytes of one frame, with or without its trailing delimiter; a zero anywhere
/// else means two frames ran together and is refused.
pub fn unstuff(frame: &mut [u8]) -> Result<&[u8], FrameError> {
    let body_len = match frame.iter().position(|b| *b == DELIMITER) {
        Some(i) if i + 1 == frame.len() => i,
        Some(_) => return Err(FrameError::Stuffing),
        None => frame.len(),
    };
    if body_len == 0 {
        return Err(FrameError::Empty);
    }
    if body_len > MAX_FRAME_LEN {
        return Err(FrameError::Oversized {
            len: body_len,
            max: MAX_FRAME_LEN,
        });
    }
    let frame = &mut frame[..body_len];
    let n = cobs::decode_in_place(frame).map_err(|_| FrameError::Stuffing)?;
    frame.get(..n).ok_or(FrameError::Stuffing)
}

/// Encodes a whole frame (packet, COBS, delimiter) into `out`; returns its length.
pub fn encode_frame<M: Serialize + ?Sized>(
    header: Header,
    body: &M,
    out: &mut [u8],
) -> Result<usize, FrameError> {
    let mut packet = [0u8; MAX_PACKET_LEN];
    let n = encode_packet(header, body, &mut packet)?;
    stuff(&packet[..n], out)
}

/// Decodes a whole frame in place: unstuff, check, decode the body.
pub fn decode_frame<'a, M: Deserialize<'a>>(
    frame: &'a mut [u8],
) -> Result<(Header, M), FrameError> {
    decode_packet(unstuff(frame)?)
}

/// Encodes a whole frame into a new vector (gateway side).
pub fn encode_frame_vec<M: Serialize + ?Sized>(
    header: Header,
    body: &M,
) -> Result<alloc::vec::Vec<u8>, FrameError> {
    let mut out = alloc::vec![0u8; MAX_FRAME_LEN];
    let n = encode_frame(header, body, &mut out)?;
    out.truncate(n);
    Ok(out)
}

/// Splits a byte stream (a serial port, a radio's receive FIFO) into frames.
///
/// Memory is fixed at `N` bytes. A frame longer than that is dropped whole and reported once
/// as [`FrameError::Oversized`] when its delimiter arrives; reading then continues with the
/// next frame, so garbage on the line costs at most one frame. Empty frames (a run of
/// delimiters, often sent to flush a line) are skipped.
#[derive(Debug)]
pub struct FrameReader<const N: usize = MAX_FRAME_LEN> {
    buf: [u8; N],
    len: usize,
    dropped: usize,
}

impl<const N: usize> Default for FrameReader<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FrameReader<N> {
    pub const fn new() -> Self {
        FrameReader {
            buf: [0; N],
            len: 0,
            dropped: 0,
        }
    }

    /// Feeds one byte. At a delimiter, returns the unstuffed packet of the frame it closes.
    pub fn push(&mut self, byte: u8) -> Option<Result<&[u8], FrameError>> {
        if byte != DELIMITER {
            if self.dropped > 0 {
                self.dropped = self.dropped.saturating_add(1);
            } else if self.len == N {
                self.dropped = N + 1;
                self.len = 0;
            } else {
                self.buf[self.len] = byte;
                self.len += 1;
            }
            return None;
        }
        let len = core::mem::take(&mut self.len);
        let dropped = core::mem::take(&mut self.dropped);
        if dropped > 0 {
            return Some(Err(FrameError::Oversized {
                len: dropped,
                max: N,
            }));
        }
        if len == 0 {
            return None;
        }
        Some(unstuff(&mut self.buf[..len]))
    }

    /// Bytes of the frame being read so far.
    pub const fn pending(&self) -> usize {
        self.len
    }
}
