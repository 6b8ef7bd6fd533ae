//! Splitting a serial byte stream into frames by a configurable suffix, with a hard size bound.
/// How a device ends each frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suffix {
    /// Carriage return (0x0D).
    Cr,
    /// CR LF.
    CrLf,
    /// Line feed (0x0A).
    Lf,
}

/// Why bytes were dropped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame longer than {max} bytes without a suffix; {dropped} bytes dropped")]
    Overlong { max: usize, dropped: usize },
}

/// Accumulates bytes and yields complete frames (without the suffix). A frame that grows past
/// `max_len` without a suffix is dropped whole and reported, so line noise can never grow memory.
#[derive(Debug)]
pub struct LineFramer {
    suffix: Suffix,
    max_len: usize,
    buf: Vec<u8>,
    discarding: usize,
}

impl LineFramer {
    pub fn new(suffix: Suffix, max_len: usize) -> Self {
        LineFramer {
            suffix,
            max_len,
            buf: Vec::with_capacity(max_len.min(256)),
            discarding: 0,
        }
    }

    /// Feeds bytes; returns the frames they complete and any overlong frame that was dropped.
    pub fn push(&mut self, bytes: &[u8]) -> (Vec<Vec<u8>>, Vec<FrameError>) {
        let mut frames = Vec::new();
        let mut errors = Vec::new();
        for &b in bytes {
            let end = match self.suffix {
                Suffix::Cr => b == b'\r',
                Suffix::Lf => b == b'\n',
                // CR LF: the frame ends at LF; a CR right before it is stripped below.
                Suffix::CrLf => b == b'\n',
            };
            if end {
                if self.discarding > 0 {
                    errors.push(FrameError::Overlong {
                        max: self.max_len,
                        dropped: self.discarding,
                    });
                    self.discarding = 0;
                } else {
                    if self.suffix == Suffix::CrLf && self.buf.last() == Some(&b'\r') {
                        self.buf.pop();
                    }
                    frames.push(std::mem::take(&mut self.buf));
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
        (frames, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(suffix: Suffix, max: usize, chunks: &[&[u8]], expect: &[&[u8]], overlong: usize) {
        let mut f = LineFramer::new(suffix, max);
        let mut got = Vec::new();
        let mut errs = 0;
        for c in chunks {
            let (fr, er) = f.push(c);
            got.extend(fr);
            errs += er.len();
        }
        let expect: Vec<Vec<u8>> = expect.iter().map(|e| e.to_vec()).collect();
        assert_eq!(got, expect);
        assert_eq!(errs, overlong);
    }

    #[test]
    fn splits_on_each_suffix_across_chunks() {
        check(
            Suffix::Cr,
            64,
            &[b"]E0950110", b"1531000\r]E4"],
            &[b"]E09501101531000"],
            0,
        );
        check(
            Suffix::CrLf,
            64,
            &[b"S S   1.500 kg\r", b"\nS D"],
            &[b"S S   1.500 kg"],
            0,
        );
        check(Suffix::Lf, 64, &[b"a\nb\n"], &[b"a", b"b"], 0);
    }

    #[test]
    fn overlong_noise_is_dropped_and_reported_then_framing_recovers() {
        let noise = vec![b'x'; 100];
        check(Suffix::Cr, 16, &[&noise, b"\r", b"ok\r"], &[b"ok"], 1);
    }
}
