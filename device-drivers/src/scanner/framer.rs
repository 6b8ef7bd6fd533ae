//! Scanner frames: a suffix (CR, CR LF) or, without one, a pause between characters ends a
//! frame. In suffix mode a partial frame left idle past the gap is a frame that lost its
//! suffix: it is dropped and reported, so it cannot glue itself to the next scan. Pure: the
//! caller brings the clock.
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How the scanner ends each barcode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScanSuffix {
    Cr,
    CrLf,
    /// No suffix: a frame ends when no character arrives for the inter-character timeout.
    None,
}

impl std::str::FromStr for ScanSuffix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cr" => Ok(ScanSuffix::Cr),
            "crlf" | "cr-lf" | "cr lf" => Ok(ScanSuffix::CrLf),
            "none" => Ok(ScanSuffix::None),
            other => Err(format!("suffix {other:?}: cr, crlf or none")),
        }
    }
}

impl ScanSuffix {
    pub fn bytes(self) -> &'static [u8] {
        match self {
            ScanSuffix::Cr => b"\r",
            ScanSuffix::CrLf => b"\r\n",
            ScanSuffix::None => b"",
        }
    }
}

/// What the framer found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Framed {
    Frame(Vec<u8>),
    /// More than `max` bytes without an end: dropped whole.
    Overlong {
        max: usize,
        dropped: usize,
    },
    /// Bytes that stopped arriving before their suffix: dropped.
    MissingSuffix(Vec<u8>),
}

/// Splits scanner bytes into frames.
#[derive(Debug)]
pub struct ScanFramer {
    suffix: ScanSuffix,
    max_len: usize,
    gap: Duration,
    buf: Vec<u8>,
    discarding: usize,
    last: Option<Instant>,
}

impl ScanFramer {
    /// `gap`: the inter-character timeout (ends a frame without suffix; drops a partial frame
    /// with one).
    pub fn new(suffix: ScanSuffix, max_len: usize, gap: Duration) -> Self {
        ScanFramer {
            suffix,
            max_len: max_len.max(1),
            gap,
            buf: Vec::new(),
            discarding: 0,
            last: None,
        }
    }

    /// Feeds bytes received at `now`.
    pub fn push(&mut self, bytes: &[u8], now: Instant, out: &mut Vec<Framed>) {
        // A pause before these bytes ends what came before.
        self.poll(now, out);
        for &b in bytes {
            let end = match self.suffix {
                ScanSuffix::Cr => b == b'\r',
                ScanSuffix::CrLf => b == b'\n',
                ScanSuffix::None => false,
            };
            if end {
                if self.discarding > 0 {
                    out.push(Framed::Overlong {
                        max: self.max_len,
                        dropped: self.discarding,
                    });
                    self.discarding = 0;
                } else {
                    if self.suffix == ScanSuffix::CrLf && self.buf.last() == Some(&b'\r') {
                        self.buf.pop();
                    }
                    out.push(Framed::Frame(std::mem::take(&mut self.buf)));
                }
                self.buf.clear();
                continue;
            }
            if self.discarding > 0 {
                self.discarding += 1;
            } else if self.buf.len() >= self.max_len {
                self.discarding = self.buf.len() + 1;
                self.buf.clear();
            } else {
                self.buf.push(b);
            }
        }
        self.last = Some(now);
    }

    /// Ends a frame that has been idle for the gap.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Framed>) {
        let Some(last) = self.last else { return };
        if now.saturating_duration_since(last) < self.gap {
            return;
        }
        self.last = None;
        if self.discarding > 0 {
            out.push(Framed::Overlong {
                max: self.max_len,
                dropped: self.discarding,
            });
            self.discarding = 0;
            return;
        }
        if self.buf.is_empty() {
            return;
        }
        let bytes = std::mem::take(&mut self.buf);
        out.push(match self.suffix {
            ScanSuffix::None => Framed::Frame(bytes),
            // A lone CR of a CR LF scanner is noise at the end, not a frame of its own.
            ScanSuffix::Cr | ScanSuffix::CrLf => Framed::MissingSuffix(bytes),
        });
    }

    /// When [`poll`](Self::poll) may next have something to say.
    pub fn deadline(&self) -> Option<Instant> {
        if self.buf.is_empty() && self.discarding == 0 {
            None
        } else {
            self.last.map(|l| l + self.gap)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GAP: Duration = Duration::from_millis(50);

    fn run(suffix: ScanSuffix, chunks: &[(&[u8], u64)], end_ms: u64) -> Vec<Framed> {
        let t0 = Instant::now();
        let mut f = ScanFramer::new(suffix, 32, GAP);
        let mut out = Vec::new();
        for (bytes, at) in chunks {
            f.push(bytes, t0 + Duration::from_millis(*at), &mut out);
        }
        f.poll(t0 + Duration::from_millis(end_ms), &mut out);
        out
    }

    fn frame(b: &[u8]) -> Framed {
        Framed::Frame(b.to_vec())
    }

    #[test]
    fn suffixes_split_frames_across_chunks() {
        assert_eq!(
            run(
                ScanSuffix::Cr,
                &[(b"]E0950", 0), (b"1\r]E4", 10), (b"1\r", 20)],
                25
            ),
            [frame(b"]E09501"), frame(b"]E41")]
        );
        assert_eq!(
            run(ScanSuffix::CrLf, &[(b"ab\r", 0), (b"\ncd\r\n", 1)], 2),
            [frame(b"ab"), frame(b"cd")]
        );
    }

    #[test]
    fn without_suffix_a_pause_ends_the_frame() {
        assert_eq!(
            run(
                ScanSuffix::None,
                &[(b"]E0", 0), (b"123", 20), (b"456", 100)],
                120
            ),
            [frame(b"]E0123")]
        );
        assert_eq!(
            run(
                ScanSuffix::None,
                &[(b"]E0", 0), (b"123", 20), (b"456", 100)],
                200
            ),
            [frame(b"]E0123"), frame(b"456")]
        );
    }

    #[test]
    fn a_frame_that_lost_its_suffix_is_dropped_and_the_next_one_is_clean() {
        assert_eq!(
            run(ScanSuffix::Cr, &[(b"]E012", 0), (b"]E4123\r", 200)], 300),
            [Framed::MissingSuffix(b"]E012".to_vec()), frame(b"]E4123")]
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_at_any_pace_stay_bounded(
            chunks in proptest::collection::vec(
                (proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80), 0u64..120),
                0..20,
            ),
            suffix in proptest::sample::select(vec![ScanSuffix::Cr, ScanSuffix::CrLf, ScanSuffix::None]),
        ) {
            let t0 = Instant::now();
            let mut f = ScanFramer::new(suffix, 32, GAP);
            let mut out = Vec::new();
            let mut at = 0;
            for (bytes, pause) in &chunks {
                at += pause;
                f.push(bytes, t0 + Duration::from_millis(at), &mut out);
                proptest::prop_assert!(f.buf.len() <= 32);
            }
            f.poll(t0 + Duration::from_millis(at + 1000), &mut out);
            proptest::prop_assert!(f.deadline().is_none());
            for o in out {
                if let Framed::Frame(b) | Framed::MissingSuffix(b) = o {
                    proptest::prop_assert!(b.len() <= 32);
                }
            }
        }
    }

    #[test]
    fn overlong_noise_is_bounded_and_reported() {
        let noise = [b'x'; 100];
        assert_eq!(
            run(ScanSuffix::Cr, &[(&noise, 0), (b"\rok\r", 1)], 2),
            [
                Framed::Overlong {
                    max: 32,
                    dropped: 100
                },
                frame(b"ok")
            ]
        );
        assert_eq!(
            run(ScanSuffix::None, &[(&noise, 0)], 100),
            [Framed::Overlong {
                max: 32,
                dropped: 100
            }]
        );
    }
}
