//! The public value types of a connection: its role and state, the events it reports,
//! how it ended, control payloads, and frames shared by many connections.

use std::sync::Arc;
use std::time::Duration;

use crate::proto::close::CloseCode;
use crate::proto::error::ProtocolError;
use crate::proto::frame::{MAX_HEADER_LEN, MessageKind, RSV1, encode_frame, encode_frame_rsv};
use crate::proto::handshake::{HttpRequest, Request};

/// Which end of the connection this engine is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Sends masked frames, expects unmasked ones.
    Client,
    /// Sends unmasked frames, expects masked ones.
    Server,
}

/// The connection state: the four values of the W3C WebSocket `readyState`
/// (CONNECTING, OPEN, CLOSING, CLOSED), which Qt's `state()` also mirrors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// The opening handshake is in progress.
    Connecting,
    /// Messages flow both ways.
    Open,
    /// A close frame was sent or received; waiting for the closing handshake to end.
    Closing,
    /// Finished: [`Event::Closed`] has been emitted.
    Closed,
}

/// One side of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// This engine (or its application).
    Local,
    /// The peer.
    Remote,
}

/// The code and reason carried by a close frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code ([`CloseCode::NO_STATUS`] when the frame had no payload).
    pub code: CloseCode,
    /// The UTF-8 reason, possibly empty.
    pub reason: String,
}

/// How a connection ended; the payload of [`Event::Closed`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Closed {
    /// Who started the closing: sent the first close frame, failed the connection,
    /// dropped it, or ended the stream.
    pub initiator: Side,
    /// The close frame we sent, if any.
    pub sent: Option<CloseFrame>,
    /// The close frame we received, if any.
    pub received: Option<CloseFrame>,
    /// Whether close frames went both ways (the closing handshake completed).
    pub clean: bool,
    /// The peer's fault that ended the connection, if one did.
    pub error: Option<ProtocolError>,
}

impl Closed {
    /// The code that describes the closure (Qt's `closeCode()`): the peer's close code
    /// if it sent one, otherwise the one we sent, otherwise 1006 (abnormal).
    pub fn code(&self) -> CloseCode {
        self.received.as_ref().or(self.sent.as_ref()).map_or(CloseCode::ABNORMAL, |f| f.code)
    }

    /// The reason that goes with [`Closed::code`] (Qt's `closeReason()`).
    pub fn reason(&self) -> &str {
        self.received.as_ref().or(self.sent.as_ref()).map_or("", |f| f.reason.as_str())
    }
}

/// Largest payload of a control frame (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// The payload of a control frame: at most 125 bytes, held inline (no allocation).
#[derive(Clone, Copy)]
pub struct ControlPayload {
    pub(crate) buf: [u8; MAX_CONTROL_PAYLOAD],
    pub(crate) len: u8,
}

impl ControlPayload {
    pub(crate) const EMPTY: Self = Self { buf: [0; MAX_CONTROL_PAYLOAD], len: 0 };

    /// Copies up to 125 bytes; `None` if `bytes` is longer.
    pub fn new(bytes: &[u8]) -> Option<Self> {
        let mut p = Self::EMPTY;
        p.buf.get_mut(..bytes.len())?.copy_from_slice(bytes);
        p.len = bytes.len() as u8;
        Some(p)
    }
}

impl std::ops::Deref for ControlPayload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl PartialEq for ControlPayload {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for ControlPayload {}

impl std::fmt::Debug for ControlPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ControlPayload({:?})", &**self)
    }
}

/// What the engine reports to the application. Rare, large payloads (the handshake
/// request, control payloads, the closing report) are boxed so that the event, moved
/// once per message through the queue, stays small.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Server: a valid opening handshake request; answer it with
    /// [`crate::Connection::accept`] or [`crate::Connection::reject`].
    Request(Box<Request>),
    /// Server with [`crate::Config::plain_http`]: a plain HTTP request (no upgrade
    /// asked); answer it with [`crate::Connection::respond`].
    HttpRequest(Box<HttpRequest>),
    /// The handshake is done; messages may flow.
    Open {
        /// The subprotocol agreed on, if any.
        subprotocol: Option<String>,
    },
    /// A whole text message ([`crate::Delivery::Messages`]).
    Text(String),
    /// A whole binary message ([`crate::Delivery::Messages`]).
    Binary(Vec<u8>),
    /// One data frame ([`crate::Delivery::Frames`]). For text, the frames of a message
    /// together are valid UTF-8; one frame alone may end inside a code point.
    Frame {
        /// The message's kind (continuation frames report their message's kind).
        kind: MessageKind,
        /// The unmasked payload.
        data: Vec<u8>,
        /// The last frame of the message.
        fin: bool,
    },
    /// A ping arrived; the pong has already been queued.
    Ping(Box<ControlPayload>),
    /// A pong arrived. `rtt` is the time since the matching ping was sent, when this
    /// pong answers one of ours (Qt's `pong(elapsedTime, payload)`).
    Pong {
        /// The pong's payload.
        payload: Box<ControlPayload>,
        /// Round-trip time of the ping it answers.
        rtt: Option<Duration>,
    },
    /// The connection is over. Always the last event, emitted exactly once.
    Closed(Box<Closed>),
}

/// A server frame encoded once and shared by many connections: server frames are
/// unmasked, so the bytes are the same for every recipient (relay fan-out). Cloning
/// is a reference-count increment. A compressed frame remembers the window it was
/// compressed with, so it goes only to connections that can inflate it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedFrame {
    bytes: Arc<Vec<u8>>,
    /// permessage-deflate: the compressor's window bits (the message was compressed
    /// alone, without context takeover). `None`: not compressed.
    compressed_with: Option<u8>,
}

impl SharedFrame {
    /// Encodes a whole message as a single unmasked frame.
    pub fn new(kind: MessageKind, payload: &[u8]) -> Self {
        let mut v = Vec::with_capacity(payload.len() + MAX_HEADER_LEN);
        encode_frame(&mut v, true, kind.opcode(), None, payload);
        Self { bytes: Arc::new(v), compressed_with: None }
    }

    /// Encodes a message already compressed for permessage-deflate (RSV1 set), by a
    /// compressor with `window_bits` that was reset after it (no context takeover):
    /// one compression for every recipient that negotiated `server_no_context_takeover`
    /// and a window at least that large. [`crate::Connection::send_shared`] refuses it
    /// for any other connection.
    #[cfg(feature = "deflate")]
    pub fn new_compressed(kind: MessageKind, compressed: &[u8], window_bits: u8) -> Self {
        let mut v = Vec::with_capacity(compressed.len() + MAX_HEADER_LEN);
        encode_frame_rsv(&mut v, true, RSV1, kind.opcode(), None, compressed);
        Self { bytes: Arc::new(v), compressed_with: Some(window_bits) }
    }

    /// Re-encodes this frame with a new message, reusing its buffer, if no connection
    /// still holds it. Returns false (and changes nothing) while it is shared, so a
    /// relay can keep a few frames and reuse whichever has been written everywhere.
    pub fn reuse(&mut self, kind: MessageKind, payload: &[u8]) -> bool {
        self.reuse_rsv(None, kind, payload)
    }

    /// [`SharedFrame::reuse`] for a message compressed as by [`SharedFrame::new_compressed`].
    #[cfg(feature = "deflate")]
    pub fn reuse_compressed(&mut self, kind: MessageKind, compressed: &[u8], window_bits: u8) -> bool {
        self.reuse_rsv(Some(window_bits), kind, compressed)
    }

    fn reuse_rsv(&mut self, compressed_with: Option<u8>, kind: MessageKind, payload: &[u8]) -> bool {
        let rsv = if compressed_with.is_some() { RSV1 } else { 0 };
        self.refill(compressed_with, |v| encode_frame_rsv(v, true, rsv, kind.opcode(), None, payload))
    }

    /// Rewrites the bytes with `fill` if no connection still holds them.
    fn refill(&mut self, compressed_with: Option<u8>, fill: impl FnOnce(&mut Vec<u8>)) -> bool {
        match Arc::get_mut(&mut self.bytes) {
            Some(v) => {
                v.clear();
                fill(v);
                self.compressed_with = compressed_with;
                true
            }
            None => false,
        }
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The message's payload (as encoded: compressed if the frame is).
    pub fn payload(&self) -> &[u8] {
        let header = match self.bytes.get(1).map(|b| b & 0x7F) {
            Some(127) => 10,
            Some(126) => 4,
            _ => 2,
        };
        self.bytes.get(header..).unwrap_or_default()
    }

    /// The window bits of the compressor, if the frame is compressed.
    pub fn compressed_with(&self) -> Option<u8> {
        self.compressed_with
    }

    pub(crate) fn arc(&self) -> &Arc<Vec<u8>> {
        &self.bytes
    }

    /// Whole unmasked, uncompressed frames already encoded back to back (a relay's
    /// corked turn), shared like one frame.
    #[cfg(feature = "net")]
    pub(crate) fn from_frames(frames: &[u8]) -> Self {
        Self { bytes: Arc::new(frames.to_vec()), compressed_with: None }
    }

    /// [`SharedFrame::reuse`] for [`SharedFrame::from_frames`].
    #[cfg(feature = "net")]
    pub(crate) fn reuse_for_frames(&mut self, frames: &[u8]) -> bool {
        self.refill(None, |v| v.extend_from_slice(frames))
    }
}
