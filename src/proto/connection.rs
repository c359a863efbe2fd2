//! The connection state machine: one WebSocket endpoint, client or server, without I/O.
//!
//! # Theory of operation
//!
//! A [`Connection`] is driven by three kinds of input, each given the current time:
//! bytes from the peer ([`Connection::handle_bytes`], split anywhere), the end of the
//! peer's stream ([`Connection::handle_eof`]) and the passing of a deadline
//! ([`Connection::handle_timeout`]). Commands from the application (send, ping, close,
//! accept or reject a handshake, abort) are method calls. After any input or command
//! the caller collects the outputs: events ([`Connection::poll_event`]), bytes to write
//! ([`Connection::output`] / [`Connection::output_vectored`], then
//! [`Connection::consume_output`]) and the next deadline ([`Connection::poll_timeout`]).
//!
//! Phases: a server reads the request head, emits [`Event::Request`] and waits for
//! [`Connection::accept`] or [`Connection::reject`]; a client writes its request at
//! construction and reads the response. Both then are *open*. Closing follows RFC 6455
//! §7.1: whoever closes first sends a close frame and waits for the peer's (ignoring
//! data meanwhile); the server then closes TCP at once, the client waits for the
//! server to do so ([`Config::close_timeout`] bounds every wait).
//!
//! The peer's mistakes never come back as `Err`: the connection is *failed* (§7.1.7): a
//! close frame with the right code is queued, nothing more is read, and
//! [`Event::Closed`] carries the [`ProtocolError`]. `Err` from a command means the
//! caller's mistake ([`Error`]). [`Event::Closed`] is emitted exactly once and last;
//! it means "write out what is queued, then close the socket".
//!
//! Received payloads are unmasked while being copied into the message buffer (the one
//! copy), text is validated as it arrives and fails at the first bad byte, and nothing
//! is allocated from a length the peer declared: buffers grow only as bytes arrive,
//! and a declared length above the limits fails the connection before any payload.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::proto::close::CloseCode;
use crate::proto::config::{Config, Delivery};
#[cfg(feature = "deflate")]
use crate::proto::deflate::{self, DeflateParams, InflateError, Session};
use crate::proto::error::{Error, HandshakeError, ProtocolError};
use crate::proto::frame::{FrameHeader, MAX_HEADER_LEN, MessageKind, OpCode, decode_header, encode_frame, encode_frame_rsv};
use crate::proto::handshake::{self, Accept, ClientRequest, HeadReader, Request, Response};
use crate::proto::mask::{MaskGenerator, RandomMaskGenerator, extend_unmasked};
use crate::proto::output::OutQueue;
use crate::proto::utf8::Utf8Validator;

/// Which end of the connection this engine is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Sends masked frames, expects unmasked ones.
    Client,
    /// Sends unmasked frames, expects masked ones.
    Server,
}

/// The connection state, as Qt's `QAbstractSocket::SocketState` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

/// The payload of a control frame: at most 125 bytes, held inline (no allocation).
#[derive(Clone, Copy)]
pub struct ControlPayload {
    buf: [u8; 125],
    len: u8,
}

impl ControlPayload {
    const EMPTY: Self = Self { buf: [0; 125], len: 0 };

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
pub enum Event {
    /// Server: a valid opening handshake request; answer it with
    /// [`Connection::accept`] or [`Connection::reject`].
    Request(Box<Request>),
    /// The handshake is done; messages may flow.
    Open {
        /// The subprotocol agreed on, if any.
        protocol: Option<String>,
    },
    /// A whole text message ([`Delivery::Messages`]).
    Text(String),
    /// A whole binary message ([`Delivery::Messages`]).
    Binary(Vec<u8>),
    /// One data frame ([`Delivery::Frames`]). For text, the frames of a message
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
/// is a reference-count increment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedFrame(Arc<Vec<u8>>);

impl SharedFrame {
    /// Encodes a whole message as a single unmasked frame.
    pub fn new(kind: MessageKind, payload: &[u8]) -> Self {
        let mut v = Vec::with_capacity(payload.len() + MAX_HEADER_LEN);
        encode_frame(&mut v, true, kind.opcode(), None, payload);
        Self(Arc::new(v))
    }

    /// Encodes a message already compressed for permessage-deflate (RSV1 set): one
    /// compression for every recipient that negotiated `server_no_context_takeover`.
    pub fn new_compressed(kind: MessageKind, compressed: &[u8]) -> Self {
        let mut v = Vec::with_capacity(compressed.len() + MAX_HEADER_LEN);
        encode_frame_rsv(&mut v, true, 0b100, kind.opcode(), None, compressed);
        Self(Arc::new(v))
    }

    /// Re-encodes this frame with a new message, reusing its buffer, if no connection
    /// still holds it. Returns false (and changes nothing) while it is shared, so a
    /// relay can keep a few frames and reuse whichever has been written everywhere.
    pub fn reuse(&mut self, kind: MessageKind, payload: &[u8]) -> bool {
        self.reuse_rsv(0, kind, payload)
    }

    /// [`SharedFrame::reuse`] for a message compressed as by [`SharedFrame::new_compressed`].
    pub fn reuse_compressed(&mut self, kind: MessageKind, compressed: &[u8]) -> bool {
        self.reuse_rsv(0b100, kind, compressed)
    }

    fn reuse_rsv(&mut self, rsv: u8, kind: MessageKind, payload: &[u8]) -> bool {
        match Arc::get_mut(&mut self.0) {
            Some(v) => {
                v.clear();
                encode_frame_rsv(v, true, rsv, kind.opcode(), None, payload);
                true
            }
            None => false,
        }
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

#[derive(Debug)]
enum Queued {
    Event(Event),
    WriteClose,
}

/// What a client checks the response against.
#[derive(Debug)]
struct ClientHandshake {
    expected_accept: String,
    offered: Vec<String>,
}

#[derive(Debug)]
enum Phase {
    /// Server: reading the request head.
    ReadRequest,
    /// Server: request emitted, waiting for accept or reject.
    AwaitAccept(Box<Request>),
    /// Client: request written, reading the response head.
    ReadResponse(Box<ClientHandshake>),
    Open,
    /// We sent a close frame and wait for the peer's.
    Closing,
    /// Client: closing handshake done (or connection failed); waiting for the server
    /// to close TCP (§7.1.1), reading nothing.
    AwaitEof,
    Closed,
}

/// Where the payload of the frame being received goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sink {
    Control,
    Data,
    Skip,
}

#[derive(Clone, Copy, Debug)]
struct InFrame {
    opcode: OpCode,
    fin: bool,
    mask: Option<[u8; 4]>,
    mask_off: usize,
    remaining: u64,
    sink: Sink,
}

/// How many of our pings are remembered for round-trip times.
const PINGS_REMEMBERED: usize = 8;
/// Most spare message buffers kept for reuse, and the largest kept.
const SPARE_BUFFERS: usize = 64;
/// Largest spare message buffer kept for reuse between messages.
const SPARE_BUFFER_MAX: usize = 1 << 20;
/// Payloads from this size on are queued by reference in `send_owned`; smaller are copied.
const OWNED_SEND_MIN: usize = 4096;
/// Most bytes of spare buffers one connection keeps.
const SPARE_BYTES_MAX: usize = 2 << 20;
/// An empty output buffer larger than this is released rather than kept.
const OUTPUT_KEEP_MAX: usize = 1 << 20;

/// One WebSocket connection's protocol state. See the module docs for how to drive it.
pub struct Connection {
    role: Role,
    /// Shared by all connections of a server (one allocation, not one per connection).
    config: Arc<Config>,
    phase: Phase,
    masks: Option<Box<dyn MaskGenerator>>,

    head: HeadReader,
    /// Server: bytes that followed the request head, kept until accept.
    early: Vec<u8>,
    response: Option<Box<Response>>,
    protocol: Option<String>,

    // Receiving.
    hdr: [u8; MAX_HEADER_LEN],
    hdr_len: usize,
    frame: Option<InFrame>,
    /// After failing the connection nothing more is read (§7.1.7).
    discard: bool,
    /// Kind of the data message being received, between its first and last frame.
    msg_kind: Option<MessageKind>,
    /// That message is compressed (RSV1 on its first frame, permessage-deflate).
    msg_compressed: bool,
    /// Frames delivery of a compressed message: bytes inflated in earlier frames.
    inflated_before: usize,
    /// permessage-deflate, when negotiated.
    #[cfg(feature = "deflate")]
    pz: Option<Box<Session>>,
    /// Bytes of that message received so far (across frames, for the limit).
    msg_len: usize,
    msg: Vec<u8>,
    /// Buffers handed back by the application for the next messages.
    spares: Vec<Vec<u8>>,
    spare_bytes: usize,
    utf8: Utf8Validator,
    /// The control frame being received; allocated on the first one (idle connections
    /// that never see a control frame do not carry its 125 bytes).
    ctrl: Option<Box<ControlPayload>>,

    // Sending.
    out: OutQueue,
    /// Kind of the fragmented message being sent, between its first and last frame.
    send_kind: Option<MessageKind>,

    events: VecDeque<Queued>,
    /// A close frame is decided but waits in `events` behind earlier events, so that the
    /// application's answers to those events go out before it; sending is still allowed.
    close_pending: bool,
    /// The event queue was released once after the handshake.
    events_trimmed: bool,

    // Closing.
    initiator: Option<Side>,
    close_sent: Option<CloseFrame>,
    close_received: Option<CloseFrame>,
    error: Option<ProtocolError>,

    // Time.
    handshake_deadline: Option<Instant>,
    close_deadline: Option<Instant>,
    next_ping: Option<Instant>,
    pong_deadline: Option<Instant>,
    last_received: Instant,
    pings: VecDeque<(ControlPayload, Instant)>,
    ping_seq: u64,
    last_rtt: Option<Duration>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("role", &self.role)
            .field("phase", &self.phase)
            .field("bytes_to_write", &self.out.len())
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl Connection {
    fn new(role: Role, config: Arc<Config>, phase: Phase, masks: Option<Box<dyn MaskGenerator>>, now: Instant) -> Self {
        Self {
            role,
            handshake_deadline: config.handshake_timeout.map(|t| now + t),
            config,
            phase,
            masks,
            head: HeadReader::default(),
            early: Vec::new(),
            response: None,
            protocol: None,
            hdr: [0; MAX_HEADER_LEN],
            hdr_len: 0,
            frame: None,
            discard: false,
            msg_kind: None,
            msg_compressed: false,
            inflated_before: 0,
            #[cfg(feature = "deflate")]
            pz: None,
            msg_len: 0,
            msg: Vec::new(),
            spares: Vec::new(),
            spare_bytes: 0,
            utf8: Utf8Validator::new(),
            ctrl: None,
            out: OutQueue::default(),
            send_kind: None,
            events: VecDeque::new(),
            close_pending: false,
            events_trimmed: false,
            initiator: None,
            close_sent: None,
            close_received: None,
            error: None,
            close_deadline: None,
            next_ping: None,
            pong_deadline: None,
            last_received: now,
            pings: VecDeque::new(),
            ping_seq: 0,
            last_rtt: None,
        }
    }

    /// A server endpoint, waiting for the client's request.
    pub fn server(config: impl Into<Arc<Config>>, now: Instant) -> Self {
        Self::new(Role::Server, config.into(), Phase::ReadRequest, None, now)
    }

    /// A client endpoint; its request is queued for writing at once. Masking keys and
    /// the handshake key come from an OS-seeded CSPRNG.
    pub fn client(config: impl Into<Arc<Config>>, request: &ClientRequest, now: Instant) -> Result<Self, Error> {
        Self::client_with_mask_generator(config, request, Box::new(RandomMaskGenerator::new()), now)
    }

    /// A client endpoint whose masking keys (and handshake key) come from `masks`
    /// (Qt's `setMaskGenerator`).
    pub fn client_with_mask_generator(
        config: impl Into<Arc<Config>>,
        request: &ClientRequest,
        mut masks: Box<dyn MaskGenerator>,
        now: Instant,
    ) -> Result<Self, Error> {
        let config: Arc<Config> = config.into();
        if request.url().secure {
            return Err(Error::TlsUnsupported);
        }
        let mut key = [0u8; 16];
        for chunk in key.chunks_exact_mut(4) {
            chunk.copy_from_slice(&masks.next_key());
        }
        let mut expected_accept = String::new();
        let mut out = OutQueue::default();
        #[cfg(feature = "deflate")]
        let offer = config.deflate.as_ref().map(deflate::client_offer);
        #[cfg(not(feature = "deflate"))]
        let offer: Option<String> = None;
        out.write_with(|b| expected_accept = request.write(b, key, offer.as_deref()));
        let phase = Phase::ReadResponse(Box::new(ClientHandshake { expected_accept, offered: request.protocols.clone() }));
        let mut conn = Self::new(Role::Client, config, phase, Some(masks), now);
        conn.out = out;
        Ok(conn)
    }

    /// Replaces the client's mask generator. Servers do not mask.
    pub fn set_mask_generator(&mut self, masks: Box<dyn MaskGenerator>) -> Result<(), Error> {
        match self.role {
            Role::Client => {
                self.masks = Some(masks);
                Ok(())
            }
            Role::Server => Err(Error::WrongRole),
        }
    }

    // ------------------------------------------------------------------ inputs

    /// Feeds bytes received from the peer, split anywhere.
    pub fn handle_bytes(&mut self, now: Instant, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.last_received = now;
        match &self.phase {
            Phase::ReadRequest => self.read_request(now, data),
            Phase::AwaitAccept(_) => {
                // The client may pipeline frames behind its request; keep them (bounded).
                if self.early.len() + data.len() > self.config.max_message_size {
                    let limit = self.config.max_message_size;
                    self.fail(now, ProtocolError::MessageTooBig { limit });
                } else {
                    self.early.extend_from_slice(data);
                }
            }
            Phase::ReadResponse(_) => self.read_response(now, data),
            Phase::Open | Phase::Closing => self.read_frames(now, data),
            Phase::AwaitEof | Phase::Closed => {}
        }
    }

    /// The peer ended its stream (read returned 0).
    pub fn handle_eof(&mut self, _now: Instant) {
        match self.phase {
            Phase::Closed => {}
            Phase::ReadRequest | Phase::AwaitAccept(_) | Phase::ReadResponse(_) => {
                self.error.get_or_insert(ProtocolError::Handshake(HandshakeError::UnexpectedEof));
                self.initiator.get_or_insert(Side::Remote);
                self.finish();
            }
            _ => {
                self.initiator.get_or_insert(Side::Remote);
                self.finish();
            }
        }
    }

    /// Lets deadlines act: handshake and close timeouts, keepalive pings, pong and idle
    /// timeouts. Call it when [`Connection::poll_timeout`] has passed (calling it
    /// early is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        let due = |d: Option<Instant>| d.is_some_and(|d| d <= now);
        match self.phase {
            Phase::Closed => {}
            Phase::ReadRequest | Phase::AwaitAccept(_) | Phase::ReadResponse(_) => {
                if due(self.handshake_deadline) {
                    self.fail_handshake(HandshakeError::Timeout);
                }
            }
            Phase::Closing | Phase::AwaitEof => {
                if due(self.close_deadline) {
                    self.finish();
                }
            }
            Phase::Open => {
                if self.config.idle_timeout.is_some_and(|t| self.last_received + t <= now) {
                    self.drop_connection(ProtocolError::IdleTimeout);
                } else if due(self.pong_deadline) {
                    self.drop_connection(ProtocolError::PongTimeout);
                } else if due(self.next_ping) {
                    self.ping_seq += 1;
                    let payload = self.ping_seq.to_be_bytes();
                    let _ = self.ping(now, &payload);
                    self.pong_deadline.get_or_insert(now + self.config.pong_timeout);
                    self.next_ping = self.config.ping_interval.map(|i| now + i);
                }
            }
        }
    }

    // ------------------------------------------------------------------ commands

    /// Server: accepts the pending request (answers 101) and opens the connection.
    /// Frames the client sent right behind its request are processed now.
    pub fn accept(&mut self, now: Instant, accept: Accept) -> Result<(), Error> {
        let Phase::AwaitAccept(req) = &self.phase else {
            return Err(Error::InvalidState("no pending request to accept"));
        };
        #[cfg(feature = "deflate")]
        let pz = self.config.deflate.as_ref().and_then(|cfg| {
            deflate::negotiate_server(
                req.headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-extensions"))
                    .filter_map(|(_, v)| std::str::from_utf8(v).ok()),
                cfg,
            )
            .map(|params| Box::new(Session::new(params, cfg, true)))
        });
        #[cfg(feature = "deflate")]
        let ext = pz.as_ref().map(|z| z.params.to_header());
        #[cfg(not(feature = "deflate"))]
        let ext: Option<String> = None;
        let mut result = Ok(());
        self.out.write_with(|b| result = handshake::write_accept(b, req, &accept, ext.as_deref()));
        result?;
        #[cfg(feature = "deflate")]
        {
            self.pz = pz;
        }
        self.protocol = accept.protocol;
        self.open(now);
        let early = std::mem::take(&mut self.early);
        if !early.is_empty() {
            self.read_frames(now, &early);
        }
        Ok(())
    }

    /// Server: rejects the pending request with an HTTP `status` (not 101), extra
    /// headers and a body, and ends the connection.
    pub fn reject(&mut self, status: u16, headers: &[(String, String)], body: &[u8]) -> Result<(), Error> {
        if !matches!(self.phase, Phase::AwaitAccept(_)) {
            return Err(Error::InvalidState("no pending request to reject"));
        }
        let mut result = Ok(());
        self.out.write_with(|b| result = handshake::write_rejection(b, status, headers, body));
        result?;
        self.initiator = Some(Side::Local);
        self.finish();
        Ok(())
    }

    /// Sends a whole text message in one frame.
    pub fn send_text(&mut self, text: &str) -> Result<(), Error> {
        self.send(MessageKind::Text, text.as_bytes())
    }

    /// Sends a whole binary message in one frame.
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), Error> {
        self.send(MessageKind::Binary, data)
    }

    /// Sends a whole message in one frame. Text must be valid UTF-8 (`&str` callers
    /// guarantee it; use [`Connection::send_text`]).
    pub fn send(&mut self, kind: MessageKind, data: &[u8]) -> Result<(), Error> {
        self.check_open()?;
        if self.send_kind.is_some() {
            return Err(Error::FragmentSequence);
        }
        #[cfg(feature = "deflate")]
        if let Some(pz) = self.pz.as_mut() {
            if pz.wants(data.len()) {
                // RFC 7692 §6.1: a compressed message has RSV1 set on its first frame.
                pz.compress(data);
                let mask = self.masks.as_mut().map(|m| m.next_key());
                self.out.write_with(|b| encode_frame_rsv(b, true, 0b100, kind.opcode(), mask, &pz.scratch));
                return Ok(());
            }
        }
        self.write_frame(true, kind.opcode(), data);
        Ok(())
    }

    /// Sends a whole message in one frame without copying its payload: `data` is queued
    /// as is (masked in place by a client) and reused as a message buffer once written.
    /// An echo server hands a received message straight back this way.
    pub fn send_owned(&mut self, kind: MessageKind, mut data: Vec<u8>) -> Result<(), Error> {
        self.check_open()?;
        if self.send_kind.is_some() {
            return Err(Error::FragmentSequence);
        }
        // Small payloads are cheaper copied (one contiguous write) than queued apart.
        #[cfg(feature = "deflate")]
        let compress = self.pz.as_ref().is_some_and(|z| z.wants(data.len()));
        #[cfg(not(feature = "deflate"))]
        let compress = false;
        if compress || data.len() < OWNED_SEND_MIN {
            self.send(kind, &data)?;
            self.recycle(data);
            return Ok(());
        }
        let mask = self.masks.as_mut().map(|m| m.next_key());
        let mut hdr = [0u8; MAX_HEADER_LEN];
        let n = crate::proto::frame::encode_header(&mut hdr, true, kind.opcode(), mask, data.len() as u64);
        self.out.write_with(|b| b.extend_from_slice(&hdr[..n]));
        if let Some(key) = mask {
            crate::proto::mask::apply_mask(&mut data, key, 0);
        }
        self.out.push_owned(data);
        Ok(())
    }

    /// Sends one frame of a fragmented message: the first call starts a message of
    /// `kind`, later calls (same `kind`) continue it, `fin` ends it. Control frames may
    /// be sent in between.
    pub fn send_fragment(&mut self, kind: MessageKind, data: &[u8], fin: bool) -> Result<(), Error> {
        self.check_open()?;
        let opcode = match self.send_kind {
            None => kind.opcode(),
            Some(k) if k == kind => OpCode::Continuation,
            Some(_) => return Err(Error::FragmentSequence),
        };
        self.send_kind = if fin { None } else { Some(kind) };
        self.write_frame(fin, opcode, data);
        Ok(())
    }

    /// Server: queues a frame encoded once for many connections, without copying it.
    pub fn send_shared(&mut self, frame: &SharedFrame) -> Result<(), Error> {
        if self.role != Role::Server {
            return Err(Error::WrongRole);
        }
        self.check_open()?;
        if self.send_kind.is_some() {
            return Err(Error::FragmentSequence);
        }
        self.out.push_shared(frame.0.clone());
        Ok(())
    }

    /// Sends a ping (at most 125 bytes). The matching pong reports its round-trip time.
    pub fn ping(&mut self, now: Instant, payload: &[u8]) -> Result<(), Error> {
        let p = ControlPayload::new(payload).ok_or(Error::ControlPayloadTooLong(payload.len()))?;
        self.check_open()?;
        if self.pings.len() == PINGS_REMEMBERED {
            self.pings.pop_front();
        }
        self.pings.push_back((p, now));
        self.write_frame(true, OpCode::Ping, payload);
        Ok(())
    }

    /// Sends an unsolicited pong (a one-way heartbeat, §5.5.3).
    pub fn pong(&mut self, payload: &[u8]) -> Result<(), Error> {
        if payload.len() > 125 {
            return Err(Error::ControlPayloadTooLong(payload.len()));
        }
        self.check_open()?;
        self.write_frame(true, OpCode::Pong, payload);
        Ok(())
    }

    /// Starts the closing handshake with `code` (one that may be sent, §7.4) and a
    /// UTF-8 `reason` of at most 123 bytes. Nothing but the peer's close is read after.
    pub fn close(&mut self, now: Instant, code: CloseCode, reason: &str) -> Result<(), Error> {
        if !code.is_sendable() {
            return Err(Error::InvalidCloseCode(code.0));
        }
        if reason.len() > 123 {
            return Err(Error::CloseReasonTooLong(reason.len()));
        }
        // Not while a close frame is already decided (close_pending): one close frame only.
        if !matches!(self.phase, Phase::Open) {
            return Err(Error::InvalidState("connection is not open"));
        }
        self.initiator = Some(Side::Local);
        self.close_sent = Some(CloseFrame { code, reason: reason.to_owned() });
        self.write_close(code, reason);
        self.phase = Phase::Closing;
        self.close_deadline = Some(now + self.config.close_timeout);
        Ok(())
    }

    /// Ends the connection at once (Qt's `abort()`): queued output is discarded, no
    /// close frame is sent, and [`Event::Closed`] follows.
    pub fn abort(&mut self) {
        if self.close_pending {
            self.close_pending = false;
            self.events.retain(|q| matches!(q, Queued::Event(_)));
        }
        if !matches!(self.phase, Phase::Closed) {
            self.out.clear();
            self.initiator.get_or_insert(Side::Local);
            self.finish();
        }
    }

    /// Hands a message buffer back (from [`Event::Binary`], [`Event::Frame`], or a
    /// `String` from [`Event::Text`] via `into_bytes`) so the next message reuses it.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() > 0
            && buf.capacity() <= SPARE_BUFFER_MAX
            && self.spares.len() < SPARE_BUFFERS
            && self.spare_bytes + buf.capacity() <= SPARE_BYTES_MAX
        {
            buf.clear();
            self.spare_bytes += buf.capacity();
            self.spares.push(buf);
        }
    }

    /// Takes back the spare buffer held for the next message, if any: an event loop can
    /// keep one pool of buffers for all its connections, so idle connections hold none.
    pub fn take_spare(&mut self) -> Option<Vec<u8>> {
        let buf = self.spares.pop()?;
        self.spare_bytes -= buf.capacity();
        Some(buf)
    }

    /// Lends an empty buffer for the output queue, if it has none (see
    /// [`Connection::take_spare`]; an event loop pools these too).
    pub fn lend_output_buffer(&mut self, buf: Vec<u8>) {
        self.out.lend(buf);
    }

    /// Takes the output queue's buffer back when nothing is queued.
    pub fn reclaim_output_buffer(&mut self) -> Option<Vec<u8>> {
        self.out.reclaim()
    }

    // ------------------------------------------------------------------ outputs

    /// The next event, if any. Drain after every input or command.
    pub fn poll_event(&mut self) -> Option<Event> {
        loop {
            let Some(next) = self.events.pop_front() else {
                // The handshake's events are done with: an idle connection holds no
                // queue (a busy one allocates it once more, then keeps it).
                if !self.events_trimmed && self.events.capacity() > 0 && matches!(self.phase, Phase::Open) {
                    self.events_trimmed = true;
                    self.events = VecDeque::new();
                }
                return None;
            };
            match next {
                Queued::Event(e) => return Some(e),
                Queued::WriteClose => {
                    self.close_pending = false;
                    if let Some(f) = self.close_sent.clone() {
                        self.write_close(f.code, &f.reason);
                    }
                }
            }
        }
    }

    /// The first contiguous run of bytes to write (empty when there is none).
    pub fn output(&self) -> &[u8] {
        self.out.front()
    }

    /// Fills `dst` with all queued runs for one vectored write; returns how many.
    pub fn output_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        self.out.slices(dst)
    }

    /// Marks `n` bytes of the output as written.
    pub fn consume_output(&mut self, n: usize) {
        self.out.consume(n);
        while let Some(buf) = self.out.take_done() {
            self.recycle(buf);
        }
        if self.out.len() == 0 {
            self.out.shrink_if_empty(OUTPUT_KEEP_MAX);
        }
    }

    /// The earliest instant at which [`Connection::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let min = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match self.phase {
            Phase::Closed => None,
            Phase::ReadRequest | Phase::AwaitAccept(_) | Phase::ReadResponse(_) => self.handshake_deadline,
            Phase::Closing | Phase::AwaitEof => self.close_deadline,
            Phase::Open => {
                let idle = self.config.idle_timeout.map(|t| self.last_received + t);
                min(min(self.next_ping, self.pong_deadline), idle)
            }
        }
    }

    // ------------------------------------------------------------------ getters

    /// Client or server.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The connection's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Connecting, open, closing or closed.
    pub fn state(&self) -> State {
        match self.phase {
            Phase::ReadRequest | Phase::AwaitAccept(_) | Phase::ReadResponse(_) => State::Connecting,
            Phase::Open => State::Open,
            Phase::Closing | Phase::AwaitEof => State::Closing,
            Phase::Closed => State::Closed,
        }
    }

    /// Bytes queued for writing (Qt's `bytesToWrite()`).
    pub fn bytes_to_write(&self) -> usize {
        self.out.len()
    }

    /// Bytes of memory this connection pins: partial message, buffers, output queue,
    /// pending events' payloads are not included (the application owns those).
    pub fn buffered_bytes(&self) -> usize {
        #[cfg(feature = "deflate")]
        let pz = self.pz.as_ref().map_or(0, |z| z.footprint());
        #[cfg(not(feature = "deflate"))]
        let pz = 0;
        pz + self.msg.capacity() + self.spare_bytes + self.out.footprint() + self.head.capacity() + self.early.capacity()
    }

    /// The close frame received from the peer, if any (Qt's `closeCode()`/`closeReason()`).
    pub fn close_received(&self) -> Option<&CloseFrame> {
        self.close_received.as_ref()
    }

    /// The close frame we sent, if any.
    pub fn close_sent(&self) -> Option<&CloseFrame> {
        self.close_sent.as_ref()
    }

    /// The agreed subprotocol, once open.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// Client: the server's 101 response, once open.
    pub fn response(&self) -> Option<&Response> {
        self.response.as_deref()
    }

    /// The permessage-deflate parameters, if the extension was negotiated.
    #[cfg(feature = "deflate")]
    pub fn deflate_params(&self) -> Option<DeflateParams> {
        self.pz.as_ref().map(|z| z.params)
    }

    /// Whether permessage-deflate was negotiated.
    pub fn is_compressed(&self) -> bool {
        #[cfg(feature = "deflate")]
        return self.pz.is_some();
        #[cfg(not(feature = "deflate"))]
        return false;
    }

    /// The last measured ping round-trip time.
    pub fn last_rtt(&self) -> Option<Duration> {
        self.last_rtt
    }

    // ------------------------------------------------------------------ internals

    fn check_open(&self) -> Result<(), Error> {
        match self.phase {
            Phase::Open => Ok(()),
            _ if self.close_pending => Ok(()),
            _ => Err(Error::InvalidState("connection is not open")),
        }
    }

    fn emit(&mut self, e: Event) {
        self.events.push_back(Queued::Event(e));
    }

    /// Encodes one frame into the output, masked with a fresh key for clients (§5.3).
    fn write_frame(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) {
        let mask = self.masks.as_mut().map(|m| m.next_key());
        self.out.write_with(|b| encode_frame(b, fin, opcode, mask, payload));
    }

    /// Sends a close frame: now, or, when events are waiting to be polled, right after
    /// them (see `close_pending`).
    fn send_close(&mut self, code: CloseCode, reason: &str) {
        self.close_sent = Some(CloseFrame { code, reason: reason.to_owned() });
        if self.events.is_empty() {
            self.write_close(code, reason);
        } else {
            self.close_pending = true;
            self.events.push_back(Queued::WriteClose);
        }
    }

    fn write_close(&mut self, code: CloseCode, reason: &str) {
        let mut payload = [0u8; 125];
        let n = if code == CloseCode::NO_STATUS {
            0
        } else {
            payload[..2].copy_from_slice(&code.0.to_be_bytes());
            payload[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
            2 + reason.len()
        };
        self.write_frame(true, OpCode::Close, &payload[..n]);
    }

    fn open(&mut self, now: Instant) {
        self.phase = Phase::Open;
        self.head.clear();
        self.handshake_deadline = None;
        self.next_ping = self.config.ping_interval.map(|i| now + i);
        self.emit(Event::Open { protocol: self.protocol.clone() });
    }

    fn read_request(&mut self, now: Instant, data: &[u8]) {
        let rest = match self.head.push(data, self.config.max_handshake_size) {
            Ok(None) => return,
            Ok(Some(rest)) => rest,
            Err(e) => return self.fail_handshake(e),
        };
        match handshake::parse_request(self.head.head(), self.config.max_headers) {
            Ok(req) => {
                self.head.clear();
                self.early.extend_from_slice(rest);
                self.emit(Event::Request(Box::new(req.clone())));
                self.phase = Phase::AwaitAccept(Box::new(req));
                let _ = now;
            }
            Err(e) => self.fail_handshake(e),
        }
    }

    fn read_response(&mut self, now: Instant, data: &[u8]) {
        let rest = match self.head.push(data, self.config.max_handshake_size) {
            Ok(None) => return,
            Ok(Some(rest)) => rest,
            Err(e) => return self.fail_handshake(e),
        };
        let Phase::ReadResponse(hs) = &self.phase else {
            return;
        };
        #[cfg(feature = "deflate")]
        let mut negotiated: Option<DeflateParams> = None;
        #[cfg(feature = "deflate")]
        let deflate_cfg = self.config.deflate.clone();
        // Any extension in the response must be one we offered (§4.1).
        let mut check_ext = |value: &str| -> Result<(), HandshakeError> {
            #[cfg(feature = "deflate")]
            if let Some(cfg) = &deflate_cfg {
                negotiated = Some(deflate::accept_response(value, cfg)?);
                return Ok(());
            }
            Err(HandshakeError::UnexpectedExtension(value.to_owned()))
        };
        let parsed = handshake::parse_response(self.head.head(), self.config.max_headers, &hs.expected_accept, &hs.offered, &mut check_ext);
        #[cfg(feature = "deflate")]
        if let (Some(params), Some(cfg)) = (negotiated, &self.config.deflate) {
            self.pz = Some(Box::new(Session::new(params, cfg, false)));
        }
        match parsed {
            Ok(resp) => {
                self.protocol = resp.protocol.clone();
                self.response = Some(Box::new(resp));
                self.open(now);
                self.read_frames(now, rest);
            }
            Err(e) => self.fail_handshake(e),
        }
    }

    /// Ends a failed handshake; a server answers with the matching HTTP status.
    fn fail_handshake(&mut self, e: HandshakeError) {
        if self.role == Role::Server {
            if let Some(status) = e.http_status() {
                let body = e.to_string();
                self.out.write_with(|b| {
                    let _ = handshake::write_rejection(b, status, &[], body.as_bytes());
                });
            }
        }
        self.error = Some(ProtocolError::Handshake(e));
        self.initiator = Some(Side::Local);
        self.finish();
    }

    /// The frame loop: headers, then payload, as many frames as `data` holds.
    fn read_frames(&mut self, now: Instant, mut data: &[u8]) {
        while !data.is_empty() && !self.discard && matches!(self.phase, Phase::Open | Phase::Closing) {
            if let Some(frame) = self.frame.as_mut() {
                let n = frame.remaining.min(data.len() as u64) as usize;
                frame.remaining -= n as u64;
                let (chunk, rest) = data.split_at(n);
                data = rest;
                self.on_payload(now, chunk);
                if self.frame.is_some_and(|f| f.remaining == 0) && !self.discard {
                    self.on_frame_end(now);
                }
                continue;
            }
            let parsed = if self.hdr_len == 0 {
                match decode_header(data) {
                    Ok(Some((h, n))) => Ok((h, n)),
                    Ok(None) => {
                        self.hdr[..data.len()].copy_from_slice(data);
                        self.hdr_len = data.len();
                        return;
                    }
                    Err(e) => Err(e),
                }
            } else {
                let old = self.hdr_len;
                let take = (MAX_HEADER_LEN - old).min(data.len());
                self.hdr[old..old + take].copy_from_slice(&data[..take]);
                match decode_header(&self.hdr[..old + take]) {
                    Ok(Some((h, n))) => {
                        self.hdr_len = 0;
                        Ok((h, n - old))
                    }
                    Ok(None) => {
                        self.hdr_len = old + take;
                        return;
                    }
                    Err(e) => Err(e),
                }
            };
            match parsed {
                Ok((h, used)) => {
                    data = &data[used..];
                    self.start_frame(now, h);
                }
                Err(e) => return self.fail(now, e),
            }
        }
    }

    /// Checks a frame header against the connection's state and decides where its
    /// payload goes.
    fn start_frame(&mut self, now: Instant, h: FrameHeader) {
        if let Err(e) = self.check_frame(&h) {
            return self.fail(now, e);
        }
        let closing = matches!(self.phase, Phase::Closing);
        let sink = if h.opcode.is_control() {
            self.ctrl.get_or_insert_with(|| Box::new(ControlPayload::EMPTY)).len = 0;
            Sink::Control
        } else if closing {
            // §7.1.2 (after sending close): nothing but the peer's close is processed.
            Sink::Skip
        } else {
            if h.opcode != OpCode::Continuation {
                self.msg_kind = Some(if h.opcode == OpCode::Text { MessageKind::Text } else { MessageKind::Binary });
                self.msg_len = 0;
                self.msg_compressed = h.rsv & 0b100 != 0;
                // A message's buffer holds only its own bytes (into_validated_string relies on it).
                self.msg.clear();
                self.inflated_before = 0;
                self.utf8.reset();
            }
            self.msg_len += h.payload_len as usize;
            Sink::Data
        };
        self.frame = Some(InFrame { opcode: h.opcode, fin: h.fin, mask: h.mask, mask_off: 0, remaining: h.payload_len, sink });
        if h.payload_len == 0 {
            self.on_frame_end(now);
        }
    }

    fn check_frame(&self, h: &FrameHeader) -> Result<(), ProtocolError> {
        // §5.2: RSV1-3 "MUST be 0 unless an extension is negotiated". RFC 7692 §6:
        // permessage-deflate gives RSV1 a meaning on the first frame of a data message only.
        let rsv1_allowed = self.is_compressed() && matches!(h.opcode, OpCode::Text | OpCode::Binary);
        if h.rsv & !(if rsv1_allowed { 0b100 } else { 0 }) != 0 {
            return Err(ProtocolError::ReservedBits(h.rsv));
        }
        // §5.1: clients mask every frame, servers mask none.
        match (self.role, h.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        if h.opcode.is_control() {
            // §5.5: control frames have a payload of 125 bytes or less and are not fragmented.
            if h.payload_len > 125 {
                return Err(ProtocolError::ControlFrameTooLong(h.payload_len));
            }
            if !h.fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
            return Ok(());
        }
        if matches!(self.phase, Phase::Closing) {
            return Ok(());
        }
        // §5.4: continuation only inside a message; a new message only outside one.
        match (h.opcode, self.msg_kind) {
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, Some(_)) => return Err(ProtocolError::ExpectedContinuation),
            _ => {}
        }
        if h.payload_len > self.config.max_frame_size as u64 {
            return Err(ProtocolError::FrameTooBig { limit: self.config.max_frame_size });
        }
        let so_far = if h.opcode == OpCode::Continuation { self.msg_len as u64 } else { 0 };
        if so_far + h.payload_len > self.config.max_message_size as u64 {
            return Err(ProtocolError::MessageTooBig { limit: self.config.max_message_size });
        }
        Ok(())
    }

    fn on_payload(&mut self, now: Instant, chunk: &[u8]) {
        let Some(frame) = self.frame.as_mut() else { return };
        match frame.sink {
            Sink::Skip => {}
            Sink::Control => {
                let Some(ctrl) = self.ctrl.as_deref_mut() else { return };
                let at = usize::from(ctrl.len);
                let dst = &mut ctrl.buf[at..at + chunk.len()];
                dst.copy_from_slice(chunk);
                if let Some(key) = frame.mask {
                    frame.mask_off = crate::proto::mask::apply_mask(dst, key, frame.mask_off);
                }
                ctrl.len += chunk.len() as u8;
            }
            Sink::Data => {
                if self.msg.capacity() == 0 {
                    if let Some(spare) = self.spares.pop() {
                        self.spare_bytes -= spare.capacity();
                        self.msg = spare;
                    }
                }
                let start = self.msg.len();
                if self.msg_compressed {
                    // Unmask into the scratch buffer, then inflate (bounded) onto the message.
                    #[cfg(feature = "deflate")]
                    if let Some(pz) = self.pz.as_mut() {
                        pz.scratch.clear();
                        frame.mask_off = extend_unmasked(&mut pz.scratch, chunk, frame.mask, frame.mask_off);
                        let limit = self.config.max_message_size - self.inflated_before;
                        if let Err(e) = pz.inflate_scratch(&mut self.msg, limit) {
                            return self.fail_inflate(now, e);
                        }
                    }
                } else {
                    frame.mask_off = extend_unmasked(&mut self.msg, chunk, frame.mask, frame.mask_off);
                }
                // §8.1: fail fast on invalid UTF-8, even inside a partially received frame.
                if self.msg_kind == Some(MessageKind::Text) && self.utf8.feed(&self.msg[start..]).is_err() {
                    self.fail(now, ProtocolError::InvalidUtf8);
                }
            }
        }
    }

    fn on_frame_end(&mut self, now: Instant) {
        let Some(frame) = self.frame.take() else { return };
        match frame.sink {
            Sink::Skip => {}
            Sink::Control => {
                let payload = self.ctrl.as_deref().copied().unwrap_or(ControlPayload::EMPTY);
                match frame.opcode {
                    OpCode::Ping => self.on_ping(payload),
                    OpCode::Pong => self.on_pong(now, payload),
                    _ => self.on_close(now, &payload),
                }
            }
            Sink::Data => {
                let kind = self.msg_kind.unwrap_or(MessageKind::Binary);
                #[cfg(feature = "deflate")]
                if frame.fin && self.msg_compressed {
                    if let Some(pz) = self.pz.as_mut() {
                        // RFC 7692 §7.2.2: the removed 00 00 ff ff tail ends the message.
                        let start = self.msg.len();
                        let limit = self.config.max_message_size - self.inflated_before;
                        if let Err(e) = pz.finish(&mut self.msg, limit) {
                            return self.fail_inflate(now, e);
                        }
                        if kind == MessageKind::Text && self.utf8.feed(&self.msg[start..]).is_err() {
                            return self.fail(now, ProtocolError::InvalidUtf8);
                        }
                    }
                }
                if frame.fin && kind == MessageKind::Text && self.utf8.finish().is_err() {
                    return self.fail(now, ProtocolError::InvalidUtf8);
                }
                match self.config.delivery {
                    Delivery::Frames => {
                        self.inflated_before += self.msg.len();
                        let data = self.take_msg();
                        self.emit(Event::Frame { kind, data, fin: frame.fin });
                    }
                    Delivery::Messages if frame.fin => {
                        let data = self.take_msg();
                        let event = match kind {
                            MessageKind::Binary => Event::Binary(data),
                            // Every byte went through `self.utf8`, which just finished Ok.
                            MessageKind::Text => Event::Text(crate::proto::utf8::into_validated_string(data)),
                        };
                        self.emit(event);
                    }
                    Delivery::Messages => {}
                }
                if frame.fin {
                    self.msg_kind = None;
                    self.msg_len = 0;
                }
            }
        }
    }

    #[cfg(feature = "deflate")]
    fn fail_inflate(&mut self, now: Instant, e: InflateError) {
        let err = match e {
            InflateError::TooBig => ProtocolError::MessageTooBig { limit: self.config.max_message_size },
            InflateError::Corrupt => ProtocolError::InvalidCompressedData,
        };
        self.fail(now, err);
    }

    fn take_msg(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.msg)
    }

    fn on_ping(&mut self, payload: ControlPayload) {
        if matches!(self.phase, Phase::Open) {
            // §5.5.2: answer with a pong carrying the same application data.
            self.write_frame(true, OpCode::Pong, &payload);
        }
        self.emit(Event::Ping(Box::new(payload)));
    }

    fn on_pong(&mut self, now: Instant, payload: ControlPayload) {
        self.pong_deadline = None;
        let rtt = self.pings.iter().position(|(p, _)| *p == payload).map(|i| {
            let sent = self.pings[i].1;
            self.pings.drain(..=i);
            now.saturating_duration_since(sent)
        });
        if rtt.is_some() {
            self.last_rtt = rtt;
        }
        self.emit(Event::Pong { payload: Box::new(payload), rtt });
    }

    fn on_close(&mut self, now: Instant, payload: &[u8]) {
        // §5.5.1: empty, or a 2-byte code followed by a UTF-8 reason.
        let received = match payload {
            [] => CloseFrame { code: CloseCode::NO_STATUS, reason: String::new() },
            [_] => return self.fail(now, ProtocolError::InvalidClosePayload),
            [hi, lo, reason @ ..] => {
                let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
                if !code.is_sendable() {
                    return self.fail(now, ProtocolError::InvalidCloseCode(code.0));
                }
                match std::str::from_utf8(reason) {
                    Ok(r) => CloseFrame { code, reason: r.to_owned() },
                    Err(_) => return self.fail(now, ProtocolError::InvalidUtf8),
                }
            }
        };
        if matches!(self.phase, Phase::Open) {
            // §5.5.1: reply with a close frame, echoing the status code.
            self.initiator = Some(Side::Remote);
            self.send_close(received.code, "");
        }
        self.close_received = Some(received);
        self.end_closing_handshake(now);
    }

    /// Both close frames are out (or we failed): the server closes TCP now, the client
    /// waits for the server to do it (§7.1.1).
    fn end_closing_handshake(&mut self, now: Instant) {
        self.discard = true;
        match self.role {
            Role::Server => self.finish(),
            Role::Client => {
                self.phase = Phase::AwaitEof;
                self.close_deadline = Some(now + self.config.close_timeout);
            }
        }
    }

    /// _Fail the WebSocket Connection_ (§7.1.7): send a close frame with the error's
    /// code if open, then stop reading.
    fn fail(&mut self, now: Instant, e: ProtocolError) {
        if matches!(self.phase, Phase::Closed | Phase::AwaitEof) {
            return;
        }
        let was_connecting = matches!(self.phase, Phase::AwaitAccept(_));
        if matches!(self.phase, Phase::Open) {
            let code = e.close_code();
            if code.is_sendable() {
                self.send_close(code, "");
            }
        }
        self.initiator.get_or_insert(Side::Local);
        self.error = Some(e);
        self.frame = None;
        self.msg = Vec::new();
        if was_connecting {
            self.finish();
        } else {
            self.end_closing_handshake(now);
        }
    }

    /// Drops a dead peer: no close frame, queued output discarded (it cannot drain).
    fn drop_connection(&mut self, e: ProtocolError) {
        self.out.clear();
        self.error = Some(e);
        self.initiator = Some(Side::Local);
        self.finish();
    }

    fn finish(&mut self) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        self.phase = Phase::Closed;
        self.discard = true;
        self.frame = None;
        self.msg = Vec::new();
        self.spares = Vec::new();
        self.spare_bytes = 0;
        self.early = Vec::new();
        self.head.clear();
        self.handshake_deadline = None;
        self.close_deadline = None;
        self.next_ping = None;
        self.pong_deadline = None;
        let closed = Closed {
            initiator: self.initiator.unwrap_or(Side::Remote),
            clean: self.close_sent.is_some() && self.close_received.is_some(),
            sent: self.close_sent.clone(),
            received: self.close_received.clone(),
            error: self.error.clone(),
        };
        self.emit(Event::Closed(Box::new(closed)));
    }
}
