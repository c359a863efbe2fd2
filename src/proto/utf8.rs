//! Incremental, fail-fast UTF-8 validation (RFC 6455 §8.1) for text messages and
//! close reasons whose bytes arrive in pieces.
//!
//! The validator carries at most three bytes of an unfinished code point between
//! calls and hands everything else to `std::str::from_utf8`, which has a word-at-a-
//! time ASCII fast path and, on error, says whether the input was *invalid* or only
//! *incomplete*. An invalid prefix (an overlong lead, a surrogate, a value above
//! U+10FFFF) is reported at the byte where it becomes impossible, not at the end
//! of the frame or message.

/// The input can never become valid UTF-8, whatever bytes follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidUtf8;

/// Validates a byte stream piece by piece.
#[derive(Clone, Copy, Debug, Default)]
pub struct Utf8Validator {
    partial: [u8; 4],
    len: u8,
}

/// Number of bytes in the code point that starts with `lead` (only called on leads
/// that `from_utf8` reported as the start of an incomplete sequence).
fn width(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

impl Utf8Validator {
    /// A validator at the start of a stream.
    pub const fn new() -> Self {
        Self { partial: [0; 4], len: 0 }
    }

    /// Validates the next piece of the stream. Fails at the first byte that makes
    /// the stream invalid; a code point cut at the end of `bytes` is remembered.
    #[inline]
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), InvalidUtf8> {
        if self.len > 0 {
            let have = usize::from(self.len);
            let take = (width(self.partial[0]) - have).min(bytes.len());
            self.partial[have..have + take].copy_from_slice(&bytes[..take]);
            match std::str::from_utf8(&self.partial[..have + take]) {
                Ok(_) => {
                    self.len = 0;
                    bytes = &bytes[take..];
                }
                Err(e) if e.error_len().is_none() => {
                    // Still incomplete: `take` was all of `bytes`.
                    self.len += take as u8;
                    return Ok(());
                }
                Err(_) => return Err(InvalidUtf8),
            }
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &bytes[e.valid_up_to()..];
                self.partial[..tail.len()].copy_from_slice(tail);
                self.len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// Whether the stream so far ends on a code point boundary.
    pub fn is_complete(&self) -> bool {
        self.len == 0
    }

    /// Ends the stream: an unfinished code point is an error.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let complete = self.is_complete();
        self.len = 0;
        if complete { Ok(()) } else { Err(InvalidUtf8) }
    }

    /// Forgets any unfinished code point.
    pub fn reset(&mut self) {
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_validate(bytes: &[u8], at: &[usize]) -> bool {
        let mut v = Utf8Validator::new();
        let mut prev = 0;
        for &a in at.iter().chain(std::iter::once(&bytes.len())) {
            if v.feed(&bytes[prev..a]).is_err() {
                return false;
            }
            prev = a;
        }
        v.finish().is_ok()
    }

    #[test]
    fn split_code_points_are_carried() {
        let s = "κόσμε 𝄞 €".as_bytes();
        for i in 0..=s.len() {
            for j in i..=s.len() {
                assert!(split_validate(s, &[i, j]), "{i} {j}");
            }
        }
    }

    #[test]
    fn fails_fast_inside_a_code_point() {
        // U+110000 and above: F4 90 can never be valid, even before the rest arrives.
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[0xF4]), Ok(()));
        assert_eq!(v.feed(&[0x90]), Err(InvalidUtf8));
        // A surrogate: ED A0.
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[b'a', 0xED, 0xA0]), Err(InvalidUtf8));
        // Truncated at the end is only caught by finish().
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[0xE2, 0x82]), Ok(()));
        assert_eq!(v.finish(), Err(InvalidUtf8));
    }
}
