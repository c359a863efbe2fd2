//! The frame header codec (RFC 6455 §5.2): pure functions, no state.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               |Masking-key, if MASK set to 1  |
//! +-------------------------------+-------------------------------+
//! ```

use crate::proto::error::ProtocolError;
use crate::proto::mask::apply_mask;

/// The longest possible frame header: 2 + 8 (64-bit length) + 4 (mask key).
pub const MAX_HEADER_LEN: usize = 14;

/// A frame opcode (§5.2). Reserved values are rejected when decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OpCode {
    /// 0x0: continues a fragmented message.
    Continuation,
    /// 0x1: the first frame of a text message.
    Text,
    /// 0x2: the first frame of a binary message.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// Decodes the 4-bit opcode; `None` for the reserved values 0x3-0x7 and 0xB-0xF.
    pub const fn from_u8(op: u8) -> Option<Self> {
        Some(match op {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    /// The 4-bit wire value.
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Control frames have the high bit of the opcode set (§5.5).
    pub const fn is_control(self) -> bool {
        self.as_u8() & 0x8 != 0
    }
}

/// The kind of a data message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// UTF-8 text.
    Text,
    /// Arbitrary bytes.
    Binary,
}

impl MessageKind {
    /// The opcode of the first frame of a message of this kind.
    pub const fn opcode(self) -> OpCode {
        match self {
            Self::Text => OpCode::Text,
            Self::Binary => OpCode::Binary,
        }
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// RSV1, RSV2, RSV3 as the low three bits.
    pub rsv: u8,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, if the MASK bit is set.
    pub mask: Option<[u8; 4]>,
    /// The payload length in bytes.
    pub payload_len: u64,
}

/// Decodes a frame header from the start of `buf`.
///
/// Returns `Ok(None)` when `buf` is too short to hold the whole header ("need more",
/// never an error), or the header and its length in bytes. Only the rules that need
/// no context are checked here: reserved opcodes and the 64-bit length's top bit.
/// Nothing is allocated, whatever length the header declares.
#[inline]
pub fn decode_header(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(ProtocolError::ReservedOpcode(b0 & 0x0F))?;
    let masked = b1 & 0x80 != 0;
    let (len_bytes, short) = match b1 & 0x7F {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    let header_len = 2 + len_bytes + if masked { 4 } else { 0 };
    if buf.len() < header_len {
        return Ok(None);
    }
    let payload_len = match short {
        Some(n) => n,
        None if len_bytes == 2 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
        None => {
            let n = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            // §5.2: "the most significant bit MUST be 0".
            if n >> 63 != 0 {
                return Err(ProtocolError::InvalidLength);
            }
            n
        }
    };
    // One 4-byte copy (not four byte loads): the key is read back as a word.
    let at = 2 + len_bytes;
    let mask = masked.then(|| <[u8; 4]>::try_from(&buf[at..at + 4]).expect("4 bytes"));
    let header = FrameHeader { fin: b0 & 0x80 != 0, rsv: (b0 >> 4) & 0x7, opcode, mask, payload_len };
    Ok(Some((header, header_len)))
}

/// Encodes a frame header into `dst` and returns its length, using the minimal
/// length encoding (§5.2).
pub fn encode_header(dst: &mut [u8; MAX_HEADER_LEN], fin: bool, opcode: OpCode, mask: Option<[u8; 4]>, len: u64) -> usize {
    dst[0] = (u8::from(fin) << 7) | opcode.as_u8();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = if len < 126 {
        dst[1] = mask_bit | len as u8;
        2
    } else if len <= u64::from(u16::MAX) {
        dst[1] = mask_bit | 126;
        dst[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        dst[1] = mask_bit | 127;
        dst[2..10].copy_from_slice(&len.to_be_bytes());
        10
    };
    if let Some(key) = mask {
        dst[n..n + 4].copy_from_slice(&key);
        n += 4;
    }
    n
}

/// Appends a whole frame (header and payload, masked when `mask` is given) to `out`.
/// The payload is copied once and masked in place in the destination.
pub fn encode_frame(out: &mut Vec<u8>, fin: bool, opcode: OpCode, mask: Option<[u8; 4]>, payload: &[u8]) {
    encode_frame_rsv(out, fin, 0, opcode, mask, payload);
}

/// The RSV1 bit in the low three bits of [`FrameHeader::rsv`]: permessage-deflate's
/// "compressed" flag (RFC 7692 §6).
pub const RSV1: u8 = 0b100;

/// [`encode_frame`] with RSV1-3 set from the low three bits of `rsv` (RSV1 = 0b100
/// marks a compressed message under permessage-deflate).
pub fn encode_frame_rsv(out: &mut Vec<u8>, fin: bool, rsv: u8, opcode: OpCode, mask: Option<[u8; 4]>, payload: &[u8]) {
    let mut hdr = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut hdr, fin, opcode, mask, payload.len() as u64);
    hdr[0] |= (rsv & 0x7) << 4;
    out.reserve(n + payload.len());
    out.extend_from_slice(&hdr[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_5_7_headers() {
        // A single-frame unmasked text message "Hello".
        let (h, n) = decode_header(&[0x81, 0x05]).unwrap().unwrap();
        assert_eq!((h.fin, h.opcode, h.mask, h.payload_len, n), (true, OpCode::Text, None, 5, 2));
        // 256 bytes binary message in a single unmasked frame.
        let (h, n) = decode_header(&[0x82, 0x7E, 0x01, 0x00]).unwrap().unwrap();
        assert_eq!((h.opcode, h.payload_len, n), (OpCode::Binary, 256, 4));
        // 64 KiB binary message in a single unmasked frame.
        let bytes = [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0];
        let (h, n) = decode_header(&bytes).unwrap().unwrap();
        assert_eq!((h.payload_len, n), (65536, 10));
        let mut hdr = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut hdr, true, OpCode::Binary, None, 65536);
        assert_eq!(&hdr[..n], &bytes);
        let n = encode_header(&mut hdr, true, OpCode::Binary, None, 256);
        assert_eq!(&hdr[..n], &[0x82, 0x7E, 0x01, 0x00]);
    }

    #[test]
    fn partial_headers_need_more() {
        let bytes = [0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4];
        for n in 0..bytes.len() {
            assert_eq!(decode_header(&bytes[..n]), Ok(None), "{n}");
        }
        let (h, n) = decode_header(&bytes).unwrap().unwrap();
        assert_eq!((h.mask, n), (Some([1, 2, 3, 4]), 14));
    }

    #[test]
    fn top_bit_and_reserved_opcodes() {
        let bytes = [0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(decode_header(&bytes), Err(ProtocolError::InvalidLength));
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(decode_header(&[0x80 | op, 0]), Err(ProtocolError::ReservedOpcode(op)));
        }
    }
}
