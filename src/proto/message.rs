//! Message assembly, the receive side of an open connection: frame headers accumulated
//! across reads, each frame checked against the rules of RFC 6455 §5 and the limits,
//! payloads unmasked into the message buffer (the one copy), text validated as it
//! arrives, compressed messages inflated within the limit, control payloads collected
//! inline. It hands whole messages (or frames) to a sink as events as they complete, stops at
//! each control frame for the connection to act on, and knows nothing of phases
//! beyond what [`Inbound`] tells it, so it can be tested and fuzzed alone.
//!
//! Memory: nothing is allocated from a length the peer declared. A message buffer grows
//! by doubling as bytes arrive, never past the message limit (plus the frame in
//! progress); buffers handed back by the application are kept as spares (bounded).

use crate::proto::compression::Compression;
use crate::proto::config::{Config, Delivery};
use crate::proto::error::ProtocolError;
use crate::proto::frame::{FrameHeader, MAX_HEADER_LEN, MessageKind, OpCode, RSV1, decode_header};
use crate::proto::mask::{apply_mask, extend_unmasked};
use crate::proto::types::{ControlPayload, Event};
use crate::proto::utf8::Utf8Validator;

/// Most spare message buffers kept for reuse.
const SPARE_BUFFERS: usize = 64;
/// Largest spare message buffer kept for reuse between messages.
const SPARE_BUFFER_MAX: usize = 1 << 20;
/// Most bytes of spare buffers one connection keeps.
const SPARE_BYTES_MAX: usize = 2 << 20;

/// What the connection tells the reader about itself for one read.
pub(crate) struct Inbound<'a> {
    pub(crate) config: &'a Config,
    /// A server expects masked frames, a client unmasked ones (§5.1).
    pub(crate) expect_masked: bool,
    /// permessage-deflate, when negotiated: RSV1 marks compressed messages.
    pub(crate) compression: Option<&'a mut Compression>,
}

/// A complete control frame, returned for the connection to act on; its payload is
/// [`MessageReader::control_payload`] (kept out of the return value, which stays small
/// on the per-message path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Control {
    Ping,
    Pong,
    /// A close frame (its payload not yet parsed).
    Close,
}

/// Where the payload of the frame being received goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sink {
    Control,
    Data,
}

/// The frame whose payload is being received.
#[derive(Clone, Copy, Debug)]
struct InFrame {
    opcode: OpCode,
    fin: bool,
    mask: Option<[u8; 4]>,
    mask_off: usize,
    remaining: u64,
    sink: Sink,
}

/// The data message between its first and last frame.
#[derive(Clone, Copy, Debug)]
struct InMessage {
    kind: MessageKind,
    /// RSV1 on its first frame (permessage-deflate).
    compressed: bool,
    /// Payload bytes declared by its frames so far (for the message limit).
    declared: usize,
    /// [`Delivery::Frames`] of a compressed message: bytes inflated and handed out in
    /// earlier frames (the limit applies to the inflated whole).
    inflated_before: usize,
}

/// The bytes of the message being received, and the proof that text is UTF-8.
///
/// Its fields are private to this module and every method that appends bytes feeds
/// them to the validator in order, so [`MessageBuffer::take_text`] can skip a second
/// validation pass without trusting any caller.
#[derive(Debug, Default)]
struct MessageBuffer {
    bytes: Vec<u8>,
    utf8: Utf8Validator,
    /// The message is text: every appended byte goes through `utf8`.
    text: bool,
    /// `bytes` holds the message from its first byte (nothing was taken mid-message)
    /// and every byte of it was validated successfully: any failed append clears it.
    whole: bool,
    /// `utf8.finish()` returned Ok after the last append.
    finished: bool,
}

impl MessageBuffer {
    /// Starts a new message.
    fn begin(&mut self, text: bool) {
        self.bytes.clear();
        self.utf8.reset();
        self.text = text;
        self.whole = true;
        self.finished = false;
    }

    /// Takes `buf` as storage if the buffer has none.
    fn provide(&mut self, mut buf: Vec<u8>) {
        if self.bytes.capacity() == 0 {
            buf.clear();
            self.bytes = buf;
        }
    }

    fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Makes room for `more` bytes: doubling, but never reserving past `limit` unless
    /// the bytes themselves need it.
    fn grow(&mut self, more: usize, limit: usize) {
        let need = self.bytes.len() + more;
        if need > self.bytes.capacity() {
            let target = (self.bytes.capacity() * 2).min(limit).max(need);
            self.bytes.reserve_exact(target - self.bytes.len());
        }
    }

    /// Validates the bytes appended since `start` if the message is text (§8.1: fail at
    /// the first impossible byte, even inside a frame).
    #[inline]
    fn validate_from(&mut self, start: usize) -> Result<(), ProtocolError> {
        if self.text && self.utf8.feed(&self.bytes[start..]).is_err() {
            self.whole = false;
            return Err(ProtocolError::InvalidUtf8);
        }
        Ok(())
    }

    /// Appends a payload piece, unmasking it on the way; returns the next mask offset.
    fn append_unmasked(&mut self, chunk: &[u8], mask: Option<[u8; 4]>, mask_off: usize, limit: usize) -> Result<usize, ProtocolError> {
        self.finished = false;
        self.grow(chunk.len(), limit);
        let start = self.bytes.len();
        let off = extend_unmasked(&mut self.bytes, chunk, mask, mask_off);
        self.validate_from(start)?;
        Ok(off)
    }

    /// Appends what a compressed payload piece inflates to (at most `room` bytes in the
    /// buffer); returns the next mask offset.
    fn append_inflated(
        &mut self,
        z: &mut Compression,
        chunk: &[u8],
        mask: Option<[u8; 4]>,
        mask_off: usize,
        room: usize,
        max: usize,
    ) -> Result<usize, ProtocolError> {
        self.finished = false;
        let start = self.bytes.len();
        let off = z.inflate_masked(chunk, mask, mask_off, &mut self.bytes, room, max).inspect_err(|_| self.whole = false)?;
        self.validate_from(start)?;
        Ok(off)
    }

    /// Appends the end of a compressed message.
    fn finish_inflated(&mut self, z: &mut Compression, room: usize, max: usize) -> Result<(), ProtocolError> {
        self.finished = false;
        let start = self.bytes.len();
        z.finish(&mut self.bytes, room, max).inspect_err(|_| self.whole = false)?;
        self.validate_from(start)
    }

    /// Text: the message ends here; an unfinished code point is an error.
    fn end_text(&mut self) -> Result<(), ProtocolError> {
        self.utf8.finish().map_err(|_| {
            self.whole = false;
            ProtocolError::InvalidUtf8
        })?;
        self.finished = true;
        Ok(())
    }

    /// Hands out the bytes received so far (one frame's worth, [`Delivery::Frames`]).
    fn take_part(&mut self) -> Vec<u8> {
        self.whole = false;
        std::mem::take(&mut self.bytes)
    }

    /// Hands out a whole binary message.
    fn take_binary(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.bytes)
    }

    /// Hands out a whole text message that [`MessageBuffer::end_text`] accepted.
    #[allow(unsafe_code)]
    fn take_text(&mut self) -> Result<String, ProtocolError> {
        let bytes = std::mem::take(&mut self.bytes);
        if !(self.text && self.whole && self.finished) {
            // Not proven by this buffer's own validator: check the slow way.
            return String::from_utf8(bytes).map_err(|_| ProtocolError::InvalidUtf8);
        }
        self.finished = false;
        // SAFETY: `bytes` is the whole message (`whole`: nothing was taken out since
        // `begin` and no append failed), every byte of it was appended by a method of
        // this type that fed it, in order, to `utf8` and got Ok (`validate_from`), and
        // `utf8.finish()` returned Ok after the last append (`finished`, cleared at the
        // start of every append). The validator
        // accepts exactly the valid UTF-8 streams (tested against `std::str::from_utf8`
        // over arbitrary splits by proptest and the `utf8` fuzz target).
        //
        // It pays: a second pass (`String::from_utf8`) cost as much as all other receive
        // work for large texts (`cargo bench --bench core -- receive/text`, 64 KiB:
        // 5.6 µs with it against 2.5 µs for the same bytes as binary).
        Ok(unsafe { String::from_utf8_unchecked(bytes) })
    }

    /// Forgets the message and releases its memory.
    fn discard(&mut self) {
        *self = Self::default();
    }
}

/// Buffers handed back by the application, for the next messages.
#[derive(Debug, Default)]
struct Spares {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
}

impl Spares {
    fn put(&mut self, mut buf: Vec<u8>) {
        let cap = buf.capacity();
        if cap > 0 && cap <= SPARE_BUFFER_MAX && self.bufs.len() < SPARE_BUFFERS && self.bytes + cap <= SPARE_BYTES_MAX {
            buf.clear();
            self.bytes += cap;
            self.bufs.push(buf);
        }
    }

    fn take(&mut self) -> Option<Vec<u8>> {
        let buf = self.bufs.pop()?;
        self.bytes -= buf.capacity();
        Some(buf)
    }
}

/// The receive side of an open connection. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct MessageReader {
    hdr: [u8; MAX_HEADER_LEN],
    /// Bytes of an incomplete header in `hdr` (fewer than `MAX_HEADER_LEN`).
    hdr_len: u8,
    frame: Option<InFrame>,
    message: Option<InMessage>,
    buf: MessageBuffer,
    spares: Spares,
    /// The control frame being received; allocated on the first one (idle connections
    /// that never see a control frame do not carry its 125 bytes).
    ctrl: Option<Box<ControlPayload>>,
}

impl MessageReader {
    /// Consumes bytes from the front of `data` until one unit is complete (returned) or
    /// `data` is exhausted (`Ok(None)`). An error is the peer's fault; the caller fails
    /// the connection and reads nothing more.
    ///
    /// Data units (messages, or frames with [`Delivery::Frames`]) go to `deliver` as
    /// they complete, without leaving the loop; a control frame is returned, because
    /// the connection must act on it (answer a ping, end on a close) before any byte
    /// after it is read. After an error the caller abandons the reader (a failed
    /// connection reads nothing more); the text fast path does not depend on it.
    // Never inlined into the connection: measured, the merged function was much slower
    // (register pressure in the large caller; `cargo bench --bench core -- receive`).
    #[inline(never)]
    pub(crate) fn read(
        &mut self,
        data: &mut &[u8],
        cx: &mut Inbound<'_>,
        deliver: &mut impl FnMut(Event),
    ) -> Result<Option<Control>, ProtocolError> {
        while !data.is_empty() || self.frame.is_some_and(|f| f.remaining == 0) {
            if let Some(frame) = self.frame.as_mut() {
                let n = frame.remaining.min(data.len() as u64) as usize;
                frame.remaining -= n as u64;
                let (chunk, rest) = data.split_at(n);
                *data = rest;
                if n > 0 {
                    self.payload(chunk, cx)?;
                }
                if self.frame.is_some_and(|f| f.remaining == 0) {
                    if let Some(control) = self.frame_end(cx, deliver)? {
                        return Ok(Some(control));
                    }
                }
                continue;
            }
            let Some(h) = self.header(data)? else { return Ok(None) };
            let sink = self.start_frame(&h, cx)?;
            let len = h.payload_len;
            if sink == Sink::Data && len > 0 && data.len() as u64 >= len {
                // Fast path: the whole data frame is here, so its payload goes straight
                // into the message without the in-progress frame state.
                let (chunk, rest) = data.split_at(len as usize);
                *data = rest;
                self.data_payload(chunk, h.mask, 0, cx)?;
                self.data_frame_end(h.fin, cx, deliver)?;
                continue;
            }
            self.frame = Some(InFrame { opcode: h.opcode, fin: h.fin, mask: h.mask, mask_off: 0, remaining: len, sink });
        }
        Ok(None)
    }

    /// Accumulates a frame header across reads; `None` until it is complete.
    fn header(&mut self, data: &mut &[u8]) -> Result<Option<FrameHeader>, ProtocolError> {
        if self.hdr_len == 0 {
            return match decode_header(data)? {
                Some((h, n)) => {
                    *data = &data[n..];
                    Ok(Some(h))
                }
                None => {
                    self.hdr[..data.len()].copy_from_slice(data);
                    self.hdr_len = data.len() as u8;
                    *data = &[];
                    Ok(None)
                }
            };
        }
        let old = usize::from(self.hdr_len);
        let take = (MAX_HEADER_LEN - old).min(data.len());
        self.hdr[old..old + take].copy_from_slice(&data[..take]);
        match decode_header(&self.hdr[..old + take])? {
            Some((h, n)) => {
                self.hdr_len = 0;
                *data = &data[n - old..];
                Ok(Some(h))
            }
            None => {
                self.hdr_len = (old + take) as u8;
                *data = &data[take..];
                Ok(None)
            }
        }
    }

    /// Checks a frame header and decides where its payload goes.
    fn start_frame(&mut self, h: &FrameHeader, cx: &mut Inbound<'_>) -> Result<Sink, ProtocolError> {
        self.check(h, cx)?;
        let sink = if h.opcode.is_control() {
            self.ctrl.get_or_insert_with(|| Box::new(ControlPayload::EMPTY)).len = 0;
            Sink::Control
        } else {
            let len = h.payload_len as usize;
            // Storage for the payload: a spare, if the buffer has none (every frame of a
            // frame delivery starts with an empty one).
            if self.buf.capacity() == 0 {
                if let Some(spare) = self.spares.take() {
                    self.buf.provide(spare);
                }
            }
            match self.message.as_mut() {
                Some(m) => m.declared += len,
                None => {
                    let kind = if h.opcode == OpCode::Text { MessageKind::Text } else { MessageKind::Binary };
                    self.message = Some(InMessage { kind, compressed: h.rsv & RSV1 != 0, declared: len, inflated_before: 0 });
                    self.buf.begin(kind == MessageKind::Text);
                }
            }
            Sink::Data
        };
        Ok(sink)
    }

    /// The rules a header must follow given the state (§5.1, §5.2, §5.4, §5.5) and the limits.
    fn check(&self, h: &FrameHeader, cx: &Inbound<'_>) -> Result<(), ProtocolError> {
        // §5.2: RSV1-3 "MUST be 0 unless an extension is negotiated". RFC 7692 §6:
        // permessage-deflate gives RSV1 a meaning on the first frame of a data message only.
        let rsv1_allowed = cx.compression.is_some() && matches!(h.opcode, OpCode::Text | OpCode::Binary);
        if h.rsv & !(if rsv1_allowed { RSV1 } else { 0 }) != 0 {
            return Err(ProtocolError::ReservedBits(h.rsv));
        }
        match (cx.expect_masked, h.mask.is_some()) {
            (true, false) => return Err(ProtocolError::UnmaskedFrame),
            (false, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        if h.opcode.is_control() {
            if h.payload_len > crate::proto::types::MAX_CONTROL_PAYLOAD as u64 {
                return Err(ProtocolError::ControlFrameTooLong(h.payload_len));
            }
            if !h.fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
            return Ok(());
        }
        match (h.opcode, self.message.is_some()) {
            (OpCode::Continuation, false) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, true) => return Err(ProtocolError::ExpectedContinuation),
            _ => {}
        }
        if h.payload_len > cx.config.max_frame_size as u64 {
            return Err(ProtocolError::FrameTooBig { limit: cx.config.max_frame_size });
        }
        let so_far = self.message.map_or(0, |m| m.declared) as u64;
        if so_far + h.payload_len > cx.config.max_message_size as u64 {
            return Err(ProtocolError::MessageTooBig { limit: cx.config.max_message_size });
        }
        Ok(())
    }

    /// Moves a piece of the current frame's payload to where it goes.
    fn payload(&mut self, chunk: &[u8], cx: &mut Inbound<'_>) -> Result<(), ProtocolError> {
        let Some(frame) = self.frame.as_mut() else { return Ok(()) };
        match frame.sink {
            Sink::Control => {
                let Some(ctrl) = self.ctrl.as_deref_mut() else { return Ok(()) };
                let at = usize::from(ctrl.len);
                let dst = &mut ctrl.buf[at..at + chunk.len()];
                dst.copy_from_slice(chunk);
                if let Some(key) = frame.mask {
                    frame.mask_off = apply_mask(dst, key, frame.mask_off);
                }
                ctrl.len += chunk.len() as u8;
            }
            Sink::Data => {
                let (mask, off) = (frame.mask, frame.mask_off);
                let next = self.data_payload(chunk, mask, off, cx)?;
                if let Some(frame) = self.frame.as_mut() {
                    frame.mask_off = next;
                }
            }
        }
        Ok(())
    }

    /// Appends a piece of a data frame's payload to the message (inflating it if the
    /// message is compressed); returns the next mask offset.
    fn data_payload(&mut self, chunk: &[u8], mask: Option<[u8; 4]>, mask_off: usize, cx: &mut Inbound<'_>) -> Result<usize, ProtocolError> {
        let max = cx.config.max_message_size;
        match (&self.message, cx.compression.as_deref_mut()) {
            (Some(m), Some(z)) if m.compressed => {
                let room = max - m.inflated_before;
                self.buf.append_inflated(z, chunk, mask, mask_off, room, max)
            }
            (Some(_), _) => self.buf.append_unmasked(chunk, mask, mask_off, max),
            (None, _) => Ok(mask_off),
        }
    }

    /// The current frame is complete: a control frame is returned; a message (or
    /// frame) that it completes goes to `deliver`.
    fn frame_end(&mut self, cx: &mut Inbound<'_>, deliver: &mut impl FnMut(Event)) -> Result<Option<Control>, ProtocolError> {
        let Some(frame) = self.frame.take() else { return Ok(None) };
        match frame.sink {
            Sink::Control => Ok(Some(match frame.opcode {
                OpCode::Ping => Control::Ping,
                OpCode::Pong => Control::Pong,
                _ => Control::Close,
            })),
            Sink::Data => {
                self.data_frame_end(frame.fin, cx, deliver)?;
                Ok(None)
            }
        }
    }

    /// A data frame is complete: with [`Delivery::Frames`] it is handed out; with
    /// [`Delivery::Messages`] only the last frame completes something.
    /// The event goes to `deliver` from here: returned through memory instead, it was
    /// copied back with a store-forwarding stall (measured: `cargo bench --bench core
    /// -- receive`).
    fn data_frame_end(&mut self, fin: bool, cx: &mut Inbound<'_>, deliver: &mut impl FnMut(Event)) -> Result<(), ProtocolError> {
        let Some(m) = self.message.as_mut() else { return Err(ProtocolError::UnexpectedContinuation) };
        let (kind, max) = (m.kind, cx.config.max_message_size);
        if fin {
            if let (true, Some(z)) = (m.compressed, cx.compression.as_deref_mut()) {
                self.buf.finish_inflated(z, max - m.inflated_before, max)?;
            }
            if kind == MessageKind::Text {
                self.buf.end_text()?;
            }
        }
        match cx.config.delivery {
            Delivery::Frames => {
                m.inflated_before += self.buf.bytes.len();
                deliver(Event::Frame { kind, data: self.buf.take_part(), fin });
            }
            Delivery::Messages if !fin => return Ok(()),
            Delivery::Messages => match kind {
                MessageKind::Binary => deliver(Event::Binary(self.buf.take_binary())),
                MessageKind::Text => deliver(Event::Text(self.buf.take_text()?)),
            },
        }
        if fin {
            self.message = None;
        }
        Ok(())
    }

    /// The payload of the control frame [`MessageReader::read`] just returned.
    pub(crate) fn control_payload(&self) -> ControlPayload {
        self.ctrl.as_deref().copied().unwrap_or(ControlPayload::EMPTY)
    }

    /// Hands a buffer back for later messages.
    pub(crate) fn recycle(&mut self, buf: Vec<u8>) {
        self.spares.put(buf);
    }

    /// Takes back a spare buffer (an event loop pools them across connections).
    pub(crate) fn take_spare(&mut self) -> Option<Vec<u8>> {
        self.spares.take()
    }

    /// Installs `list` as the container of the spares if they have none; else hands
    /// it back.
    #[cfg(feature = "net")]
    pub(crate) fn lend_spare_list(&mut self, mut list: Vec<Vec<u8>>) -> Option<Vec<Vec<u8>>> {
        if self.spares.bufs.capacity() > 0 {
            return Some(list);
        }
        list.clear();
        self.spares.bufs = list;
        None
    }

    /// Takes the spares' container back once it holds no buffer.
    #[cfg(feature = "net")]
    pub(crate) fn take_spare_list(&mut self) -> Option<Vec<Vec<u8>>> {
        (self.spares.bufs.is_empty() && self.spares.bufs.capacity() > 0).then(|| std::mem::take(&mut self.spares.bufs))
    }

    /// Bytes this reader pins: the message buffer and the spares.
    pub(crate) fn footprint(&self) -> usize {
        self.buf.capacity() + self.spares.bytes
    }

    /// Stops assembling: the frame and message in progress are forgotten, their memory released.
    pub(crate) fn abandon(&mut self) {
        self.frame = None;
        self.message = None;
        self.buf.discard();
    }

    /// Releases everything (the connection is closed).
    pub(crate) fn release(&mut self) {
        self.abandon();
        self.spares = Spares::default();
        self.ctrl = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_in_pieces(s: &str, at: usize) -> MessageBuffer {
        let mut b = MessageBuffer::default();
        b.begin(true);
        let (x, y) = s.as_bytes().split_at(at);
        b.append_unmasked(x, None, 0, 1 << 20).unwrap();
        b.append_unmasked(y, None, 0, 1 << 20).unwrap();
        b
    }

    #[test]
    fn the_fast_conversion_equals_the_checked_one() {
        for s in ["", "ascii", "κόσμε", "𝄞 and € and \u{10FFFF}"] {
            for at in 0..=s.len() {
                let mut b = text_in_pieces(s, at);
                b.end_text().unwrap();
                assert_eq!(b.take_text().unwrap(), s);
            }
        }
    }

    /// The unchecked conversion is only reachable with this buffer's own proof: bytes
    /// taken out mid-message, or appended after the end, fall back to the checked one,
    /// so no caller can turn an invalid remainder into a `String`.
    #[test]
    fn without_the_whole_message_the_check_is_not_skipped() {
        let s = "€uro";
        let mut b = text_in_pieces(s, 1);
        // Frame delivery took the first byte of '€' out; the rest alone is not UTF-8.
        let mut b2 = MessageBuffer::default();
        b2.begin(true);
        b2.append_unmasked(&s.as_bytes()[..1], None, 0, 64).unwrap();
        assert_eq!(b2.take_part(), [0xE2]);
        b2.append_unmasked(&s.as_bytes()[1..], None, 0, 64).unwrap();
        b2.end_text().unwrap();
        assert_eq!(b2.take_text(), Err(ProtocolError::InvalidUtf8));
        // Not ended: checked too (and here valid).
        assert_eq!(b.take_text().unwrap(), s);
        // Binary bytes never pass as text unchecked.
        let mut b3 = MessageBuffer::default();
        b3.begin(false);
        b3.append_unmasked(&[0xff], None, 0, 64).unwrap();
        assert_eq!(b3.take_text(), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn invalid_text_fails_at_the_first_impossible_byte() {
        let mut b = MessageBuffer::default();
        b.begin(true);
        b.append_unmasked(b"ok ", None, 0, 64).unwrap();
        assert_eq!(b.append_unmasked(&[0xED, 0xA0], None, 0, 64), Err(ProtocolError::InvalidUtf8));
        // Even a caller that goes on after the error cannot get the bytes as text
        // unchecked: the failed append took the buffer's proof away for good.
        let _ = b.end_text();
        assert_eq!(b.take_text(), Err(ProtocolError::InvalidUtf8));
    }
}
