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
//! The receive path (frame headers, unmasking, UTF-8, inflate, limits) is the
//! message layer (`message.rs`); permessage-deflate enters through one seam
//! (`compression.rs`); this module owns the phases and what each input does in each.
//!
//! # Phases and transitions
//!
//! | phase | bytes | EOF | timeout | command |
//! |---|---|---|---|---|
//! | ReadRequest (server) | head complete: `Request` event, → AwaitAccept (a plain HTTP request with [`Config::plain_http`]: `HttpRequest` event, → AwaitHttpAnswer); bad head: HTTP error, → Closed | → Closed | handshake: 408, → Closed | — |
//! | AwaitAccept (server) | kept (bounded) for after `accept` | → Closed | handshake: → Closed | `accept`: 101, → Open; `reject`: HTTP status, → Closed |
//! | AwaitHttpAnswer (server, [`Config::plain_http`]) | discarded | kept (a half-closed client still gets its answer) | handshake: 408, → Closed | `respond`: HTTP response, → Closed |
//! | ReadResponse (client) | 101 checked: → Open; else → Closed | → Closed | handshake: → Closed | — |
//! | Open | frames: events; peer's close: reply queued, server → Closed, client → AwaitEof; violation: close code queued, same | → Closed (1006) | keepalive ping; pong or idle timeout: → Closed (1006) | `close`: close frame, → Closing |
//! | Closing (we sent close) | frames as when open (the peer's data already on its way still arrives); peer's close: server → Closed, client → AwaitEof | → Closed | close timeout: → Closed | — |
//! | AwaitEof (client) | ignored | → Closed | close timeout: → Closed | — |
//! | Closed | ignored | ignored | — | `Err` |
//!
//! `abort` goes from any phase to Closed, discarding queued output.
//!
//! # Rules an embedder must know
//!
//! * The peer's mistakes never come back as `Err`: the connection is *failed* (§7.1.7):
//!   a close frame with the right code is queued, nothing more is read, and
//!   [`Event::Closed`] carries the [`ProtocolError`]. `Err` from a command means the
//!   caller's mistake ([`UsageError`]).
//! * [`Event::Closed`] is emitted exactly once and last; it means "write out what is
//!   queued, then close the socket".
//! * **Deferred close.** A close frame that the engine decides on (the reply to the
//!   peer's close, or the close after a protocol error) waits behind the events before
//!   it and is written when [`Connection::poll_event`] passes it. So the application's
//!   answers to those events (an echo of the last good message) go out first; while
//!   such a close is pending, sending is still allowed. Drain `poll_event` before
//!   writing, or the close frame is not yet in the output.
//! * Nothing is allocated from a length the peer declared: buffers grow only as bytes
//!   arrive, and a declared length above the limits fails the connection before any
//!   payload.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::proto::close::CloseCode;
use crate::proto::compression::Compression;
use crate::proto::config::Config;
#[cfg(feature = "deflate")]
use crate::proto::deflate::DeflateParams;
use crate::proto::error::{HandshakeError, ProtocolError, UsageError};
use crate::proto::frame::{MAX_HEADER_LEN, MessageKind, OpCode, RSV1, encode_frame, encode_frame_rsv, encode_header};
use crate::proto::handshake::{
    self, Accept, ClientHandshake, ClientRequest, HeadReader, Negotiated, Reject, Request, RequestHead, Response,
};
use crate::proto::mask::{MaskGenerator, RandomMaskGenerator, apply_mask};
use crate::proto::message::{Control, Inbound, MessageReader};
use crate::proto::output::OutQueue;
use crate::proto::types::{CloseFrame, Closed, ControlPayload, Event, MAX_CONTROL_PAYLOAD, Role, SharedFrame, Side, State};

/// How many of our pings are remembered for round-trip times.
const PINGS_REMEMBERED: usize = 8;
/// Payloads from this size on are queued by reference in `send_owned`; smaller are copied.
const OWNED_SEND_MIN: usize = 4096;
/// An empty output buffer larger than this is released rather than kept.
const OUTPUT_KEEP_MAX: usize = 1 << 20;
/// Longest close reason: a control payload less the 2-byte code (§5.5.1).
const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

#[derive(Debug)]
enum Queued {
    Event(Event),
    /// The deferred close frame (see the module docs).
    WriteClose,
}

#[derive(Debug)]
enum Phase {
    /// Server: reading the request head.
    ReadRequest(Box<HeadReader>),
    /// Server: request emitted, waiting for accept or reject.
    AwaitAccept(Box<Pending>),
    /// Server: a plain HTTP request emitted ([`Config::plain_http`]), waiting for
    /// `respond`; what the client sends meanwhile is discarded.
    AwaitHttpAnswer {
        head_only: bool,
    },
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

/// A server's request waiting for accept or reject, and the bytes the client sent
/// right behind it (kept for after the accept).
#[derive(Debug)]
struct Pending {
    request: Request,
    early: Vec<u8>,
}

/// Keepalive state.
#[derive(Debug)]
struct Keepalive {
    next_ping: Option<Instant>,
    last_received: Instant,
    /// Allocated with the first ping: a connection that never pings carries a pointer.
    pings: Option<Box<Pings>>,
}

/// Our pings and what their pongs measured.
#[derive(Debug, Default)]
struct Pings {
    /// The last pings sent (at most [`PINGS_REMEMBERED`]), with when.
    sent: VecDeque<(ControlPayload, Instant)>,
    /// The last keepalive ping's number (its payload).
    seq: u64,
    /// A pong is due by then.
    pong_deadline: Option<Instant>,
    last_rtt: Option<Duration>,
}

/// How the connection ends: who started it, the close frames, the error. Boxed when
/// the ending starts: an open connection carries a pointer, not a hundred bytes.
#[derive(Debug, Default)]
struct Ending {
    initiator: Option<Side>,
    close_sent: Option<CloseFrame>,
    close_received: Option<CloseFrame>,
    error: Option<ProtocolError>,
}

/// What only some connections have, boxed: a client's mask generator and the
/// server's response, the agreed subprotocol.
#[derive(Default)]
struct Extras {
    masks: Option<Box<dyn MaskGenerator>>,
    response: Option<Response>,
    subprotocol: Option<String>,
}

impl Keepalive {
    /// When the answer to our last keepalive ping is due, if one is awaited.
    fn pong_deadline(&self) -> Option<Instant> {
        self.pings.as_ref()?.pong_deadline
    }
}

impl Extras {
    /// A client's next masking key; servers do not mask. (A function of the field,
    /// not of the connection, so that other fields may be borrowed meanwhile.)
    fn next_mask(extras: &mut Option<Box<Self>>) -> Option<[u8; 4]> {
        extras.as_mut()?.masks.as_mut().map(|m| m.next_key())
    }
}

/// One WebSocket connection's protocol state. See the module docs for how to drive it.
pub struct Connection {
    role: Role,
    /// Shared by all connections of a server (one allocation, not one per connection).
    config: Arc<Config>,
    phase: Phase,
    extras: Option<Box<Extras>>,
    /// permessage-deflate, when negotiated.
    compression: Option<Box<Compression>>,

    reader: MessageReader,
    out: OutQueue,
    /// Kind of the fragmented message being sent, between its first and last frame.
    send_kind: Option<MessageKind>,

    events: VecDeque<Queued>,
    /// A close frame is decided but waits in `events` (see the module docs).
    close_pending: bool,
    /// The event queue was released once after the handshake.
    events_trimmed: bool,

    ending: Option<Box<Ending>>,
    /// The handshake's deadline while connecting, the close's while closing.
    deadline: Option<Instant>,
    keepalive: Keepalive,
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
            deadline: config.handshake_timeout.map(|t| now + t),
            config,
            phase,
            extras: masks.map(|m| Box::new(Extras { masks: Some(m), ..Extras::default() })),
            compression: None,
            reader: MessageReader::default(),
            out: OutQueue::default(),
            send_kind: None,
            events: VecDeque::new(),
            close_pending: false,
            events_trimmed: false,
            ending: None,
            keepalive: Keepalive { next_ping: None, last_received: now, pings: None },
        }
    }

    /// A server endpoint, waiting for the client's request.
    pub fn server(config: impl Into<Arc<Config>>, now: Instant) -> Self {
        Self::new(Role::Server, config.into(), Phase::ReadRequest(Box::default()), None, now)
    }

    /// A client endpoint; its request is queued for writing at once. Masking keys and
    /// the handshake key come from an OS-seeded CSPRNG. `ws://` and `wss://` URLs give
    /// the same request: TLS, if any, is the transport's business.
    pub fn client(config: impl Into<Arc<Config>>, request: &ClientRequest, now: Instant) -> Self {
        Self::client_with_mask_generator(config, request, Box::new(RandomMaskGenerator::new()), now)
    }

    /// A client endpoint whose masking keys (and handshake key) come from `masks`
    /// (Qt's `setMaskGenerator`).
    pub fn client_with_mask_generator(
        config: impl Into<Arc<Config>>,
        request: &ClientRequest,
        mut masks: Box<dyn MaskGenerator>,
        now: Instant,
    ) -> Self {
        let config: Arc<Config> = config.into();
        let mut key = [0u8; 16];
        for chunk in key.chunks_exact_mut(4) {
            chunk.copy_from_slice(&masks.next_key());
        }
        let hs = ClientHandshake::new(request, key).limits(config.max_handshake_size, config.max_headers);
        let hs = Compression::offer(&config, hs);
        let mut out = OutQueue::default();
        out.write_with(|b| hs.write_request(b));
        let mut conn = Self::new(Role::Client, config, Phase::ReadResponse(Box::new(hs)), Some(masks), now);
        conn.out = out;
        conn
    }

    /// A connection whose opening handshake another stack did (hyper, axum, an HTTP
    /// client): open from the start with what was `negotiated` (from
    /// [`Request::negotiate`] on a server, [`crate::ClientHandshakeDone::negotiated`] on a
    /// client), nothing queued to write. Its first event is [`Event::Open`]. Bytes
    /// the other stack read past the handshake head are the first frames: feed them
    /// to [`Connection::handle_bytes`] before anything read from the socket.
    ///
    /// A client's masking keys come from an OS-seeded CSPRNG
    /// ([`Connection::set_mask_generator`] replaces it). With deflate agreed but off
    /// in `config`, the compressor uses the default `DeflateConfig`.
    pub fn upgraded(role: Role, config: impl Into<Arc<Config>>, negotiated: &Negotiated, now: Instant) -> Self {
        let masks: Option<Box<dyn MaskGenerator>> = match role {
            Role::Client => Some(Box::new(RandomMaskGenerator::new())),
            Role::Server => None,
        };
        let mut conn = Self::new(role, config.into(), Phase::Open, masks, now);
        conn.start(negotiated);
        conn.open(now);
        conn
    }

    /// Replaces the client's mask generator. Servers do not mask.
    pub fn set_mask_generator(&mut self, masks: Box<dyn MaskGenerator>) -> Result<(), UsageError> {
        match self.role {
            Role::Client => {
                self.extras_mut().masks = Some(masks);
                Ok(())
            }
            Role::Server => Err(UsageError::WrongRole),
        }
    }

    // ------------------------------------------------------------------ inputs

    /// Feeds bytes received from the peer, split anywhere.
    pub fn handle_bytes(&mut self, now: Instant, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.keepalive.last_received = now;
        match &mut self.phase {
            Phase::ReadRequest(_) => self.read_request(data),
            Phase::AwaitAccept(pending) => {
                // The client may pipeline frames behind its request; keep them (bounded).
                if pending.early.len() + data.len() > self.config.max_message_size {
                    let limit = self.config.max_message_size;
                    self.fail(now, ProtocolError::MessageTooBig { limit });
                } else {
                    pending.early.extend_from_slice(data);
                }
            }
            Phase::ReadResponse(_) => self.read_response(now, data),
            Phase::Open | Phase::Closing => self.read_frames(now, data),
            Phase::AwaitHttpAnswer { .. } | Phase::AwaitEof | Phase::Closed => {}
        }
    }

    /// The peer ended its stream (read returned 0).
    pub fn handle_eof(&mut self, _now: Instant) {
        match self.phase {
            Phase::Closed => {}
            // The request is whole: a client that half-closed after it still gets the answer.
            Phase::AwaitHttpAnswer { .. } => {}
            Phase::ReadRequest(_) | Phase::AwaitAccept(_) | Phase::ReadResponse(_) => {
                let ending = self.ending_mut();
                ending.error.get_or_insert(ProtocolError::Handshake(HandshakeError::UnexpectedEof));
                ending.initiator.get_or_insert(Side::Remote);
                self.finish();
            }
            _ => {
                self.ending_mut().initiator.get_or_insert(Side::Remote);
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
            Phase::ReadRequest(_) | Phase::AwaitAccept(_) | Phase::AwaitHttpAnswer { .. } | Phase::ReadResponse(_) => {
                if due(self.deadline) {
                    self.fail_handshake(HandshakeError::Timeout);
                }
            }
            Phase::Closing | Phase::AwaitEof => {
                if due(self.deadline) {
                    self.finish();
                }
            }
            Phase::Open => {
                let ka = &self.keepalive;
                if self.config.idle_timeout.is_some_and(|t| ka.last_received + t <= now) {
                    self.drop_connection(ProtocolError::IdleTimeout);
                } else if due(ka.pong_deadline()) {
                    self.drop_connection(ProtocolError::PongTimeout);
                } else if due(ka.next_ping) {
                    let pong_due = now + self.config.pong_timeout;
                    let pings = self.keepalive.pings.get_or_insert_with(Box::default);
                    pings.seq += 1;
                    pings.pong_deadline.get_or_insert(pong_due);
                    let payload = pings.seq.to_be_bytes();
                    let _ = self.ping(now, &payload);
                    self.keepalive.next_ping = self.config.ping_interval.map(|i| now + i);
                }
            }
        }
    }

    // ------------------------------------------------------------------ commands

    /// Server: accepts the pending request (answers 101) and opens the connection.
    /// Frames the client sent right behind its request are processed now.
    pub fn accept(&mut self, now: Instant, accept: Accept) -> Result<(), UsageError> {
        let Phase::AwaitAccept(pending) = &self.phase else {
            return Err(UsageError::NoPendingRequest);
        };
        let accepted = pending.request.negotiate(&self.config, accept)?;
        self.out.write_with(|b| accepted.write_head(b));
        let Phase::AwaitAccept(pending) = std::mem::replace(&mut self.phase, Phase::Open) else { unreachable!("checked above") };
        self.start(accepted.negotiated());
        self.open(now);
        if !pending.early.is_empty() {
            self.read_frames(now, &pending.early);
        }
        Ok(())
    }

    /// Server: rejects the pending request with an HTTP status (not 101), extra
    /// headers and a body, and ends the connection.
    pub fn reject(&mut self, reject: &Reject) -> Result<(), UsageError> {
        if !matches!(self.phase, Phase::AwaitAccept(_)) {
            return Err(UsageError::NoPendingRequest);
        }
        self.answer_and_finish(reject, true)
    }

    /// Server: answers the pending plain HTTP request ([`Event::HttpRequest`]) with
    /// `response` (any status 200-599; a `HEAD` gets the head alone) and ends the
    /// connection (`Connection: close`).
    pub fn respond(&mut self, response: &Reject) -> Result<(), UsageError> {
        let Phase::AwaitHttpAnswer { head_only } = self.phase else {
            return Err(UsageError::NoPendingRequest);
        };
        self.answer_and_finish(response, !head_only)
    }

    fn answer_and_finish(&mut self, response: &Reject, with_body: bool) -> Result<(), UsageError> {
        let mut result = Ok(());
        self.out.write_with(|b| result = handshake::write_response(b, response, with_body));
        result?;
        self.ending_mut().initiator = Some(Side::Local);
        self.finish();
        Ok(())
    }

    /// Sends a whole text message in one frame.
    pub fn send_text(&mut self, text: &str) -> Result<(), UsageError> {
        self.send(MessageKind::Text, text.as_bytes())
    }

    /// Sends a whole binary message in one frame.
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), UsageError> {
        self.send(MessageKind::Binary, data)
    }

    /// Sends a whole message in one frame. Text must be valid UTF-8 (`&str` callers
    /// guarantee it; use [`Connection::send_text`]).
    pub fn send(&mut self, kind: MessageKind, data: &[u8]) -> Result<(), UsageError> {
        self.check_can_send_message()?;
        if let Some(z) = self.compression.as_mut().filter(|z| z.wants(data.len())) {
            // RFC 7692 §6.1: a compressed message has RSV1 set on its first frame.
            let compressed = z.compress(data);
            let mask = Extras::next_mask(&mut self.extras);
            self.out.write_with(|b| encode_frame_rsv(b, true, RSV1, kind.opcode(), mask, compressed));
            return Ok(());
        }
        self.write_frame(true, kind.opcode(), data);
        Ok(())
    }

    /// Sends a whole message in one frame without copying its payload: `data` is queued
    /// as is (masked in place by a client) and reused as a message buffer once written.
    /// An echo server hands a received message straight back this way.
    pub fn send_owned(&mut self, kind: MessageKind, mut data: Vec<u8>) -> Result<(), UsageError> {
        self.check_can_send_message()?;
        // Small payloads are cheaper copied (one contiguous write) than queued apart.
        let compress = self.compression.as_ref().is_some_and(|z| z.wants(data.len()));
        if compress || data.len() < OWNED_SEND_MIN {
            self.send(kind, &data)?;
            self.recycle(data);
            return Ok(());
        }
        let mask = Extras::next_mask(&mut self.extras);
        let mut hdr = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut hdr, true, kind.opcode(), mask, data.len() as u64);
        self.out.write_with(|b| b.extend_from_slice(&hdr[..n]));
        if let Some(key) = mask {
            apply_mask(&mut data, key, 0);
        }
        if let Some(empty) = self.out.push_owned(data) {
            self.recycle(empty);
        }
        Ok(())
    }

    /// Sends one frame of a fragmented message: the first call starts a message of
    /// `kind`, later calls (same `kind`) continue it, `fin` ends it. Control frames may
    /// be sent in between.
    pub fn send_fragment(&mut self, kind: MessageKind, data: &[u8], fin: bool) -> Result<(), UsageError> {
        self.check_open()?;
        let opcode = match self.send_kind {
            None => kind.opcode(),
            Some(k) if k == kind => OpCode::Continuation,
            Some(_) => return Err(UsageError::FragmentSequence),
        };
        self.send_kind = if fin { None } else { Some(kind) };
        self.write_frame(fin, opcode, data);
        Ok(())
    }

    /// Server: queues a frame encoded once for many connections, without copying it.
    /// A compressed frame goes only to a connection that negotiated permessage-deflate
    /// with parameters that can inflate it ([`UsageError::CompressionMismatch`]).
    pub fn send_shared(&mut self, frame: &SharedFrame) -> Result<(), UsageError> {
        self.check_can_send_shared(frame)?;
        self.out.push_frame(frame.arc());
        Ok(())
    }

    /// Server: copies the byte ranges `parts` of `frame` (each made of whole frames,
    /// as a relay's corked turn is) into the output: the turn minus what this
    /// connection sent itself. Ranges outside the frame are skipped.
    #[cfg(feature = "net")]
    pub(crate) fn send_shared_parts(&mut self, frame: &SharedFrame, parts: &[std::ops::Range<usize>]) -> Result<(), UsageError> {
        self.check_can_send_shared(frame)?;
        let bytes = frame.as_bytes();
        self.out.write_with(|b| {
            for part in parts {
                b.extend_from_slice(bytes.get(part.clone()).unwrap_or_default());
            }
        });
        Ok(())
    }

    /// Sends a ping (at most 125 bytes). The matching pong reports its round-trip time.
    pub fn ping(&mut self, now: Instant, payload: &[u8]) -> Result<(), UsageError> {
        let p = ControlPayload::new(payload).ok_or(UsageError::ControlPayloadTooLong(payload.len()))?;
        self.check_open()?;
        let sent = &mut self.keepalive.pings.get_or_insert_with(Box::default).sent;
        if sent.len() == PINGS_REMEMBERED {
            sent.pop_front();
        }
        sent.push_back((p, now));
        self.write_frame(true, OpCode::Ping, payload);
        Ok(())
    }

    /// Sends an unsolicited pong (a one-way heartbeat, §5.5.3).
    pub fn pong(&mut self, payload: &[u8]) -> Result<(), UsageError> {
        if payload.len() > MAX_CONTROL_PAYLOAD {
            return Err(UsageError::ControlPayloadTooLong(payload.len()));
        }
        self.check_open()?;
        self.write_frame(true, OpCode::Pong, payload);
        Ok(())
    }

    /// Starts the closing handshake with `code` (one that may be sent, §7.4) and a
    /// UTF-8 `reason` of at most 123 bytes. Nothing more may be sent; what the peer sent
    /// before it saw our close still arrives as events, until its close frame.
    pub fn close(&mut self, now: Instant, code: CloseCode, reason: &str) -> Result<(), UsageError> {
        if !code.is_sendable() {
            return Err(UsageError::InvalidCloseCode(code.0));
        }
        if reason.len() > MAX_CLOSE_REASON {
            return Err(UsageError::CloseReasonTooLong(reason.len()));
        }
        // Not while a close frame is already decided (close_pending): one close frame only.
        if !matches!(self.phase, Phase::Open) {
            return Err(UsageError::NotOpen { state: self.state() });
        }
        let ending = self.ending_mut();
        ending.initiator = Some(Side::Local);
        ending.close_sent = Some(CloseFrame { code, reason: reason.to_owned() });
        self.write_close(code, reason);
        self.phase = Phase::Closing;
        self.deadline = Some(now + self.config.close_timeout);
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
            self.ending_mut().initiator.get_or_insert(Side::Local);
            self.finish();
        }
    }

    /// Hands a message buffer back (from [`Event::Binary`], [`Event::Frame`], or a
    /// `String` from [`Event::Text`] via `into_bytes`) so the next message reuses it.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.reader.recycle(buf);
    }

    /// Takes back the spare buffer held for the next message, if any: an event loop can
    /// keep one pool of buffers for all its connections, so idle connections hold none.
    pub fn take_spare(&mut self) -> Option<Vec<u8>> {
        self.reader.take_spare()
    }

    /// Lends an empty list to hold spare buffers, if the connection has none: the event
    /// loop pools buffers ([`Connection::take_spare`]) and their lists too, so a
    /// connection at rest holds neither. Returns `list` if it was not needed.
    #[cfg(feature = "net")]
    pub(crate) fn lend_spare_list(&mut self, list: Vec<Vec<u8>>) -> Option<Vec<Vec<u8>>> {
        self.reader.lend_spare_list(list)
    }

    /// Takes the list of spare buffers back once [`Connection::take_spare`] has
    /// emptied it.
    #[cfg(feature = "net")]
    pub(crate) fn take_spare_list(&mut self) -> Option<Vec<Vec<u8>>> {
        self.reader.take_spare_list()
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

    /// The next event, if any. Drain after every input or command: a deferred close
    /// frame is written when this passes it (see the module docs).
    #[must_use = "events carry the received messages and the end of the connection"]
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
                    if let Some(f) = self.ending.as_ref().and_then(|e| e.close_sent.clone()) {
                        self.write_close(f.code, &f.reason);
                    }
                    self.release_compression_when_done();
                }
            }
        }
    }

    /// The first contiguous run of bytes to write (empty when there is none).
    #[must_use]
    pub fn output(&self) -> &[u8] {
        self.out.front()
    }

    /// Fills `dst` with all queued runs for one vectored write; returns how many.
    #[must_use]
    pub fn output_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        self.out.slices(dst)
    }

    /// Marks `n` bytes of the output as written.
    pub fn consume_output(&mut self, n: usize) {
        let reader = &mut self.reader;
        self.out.consume(n, &mut |buf| reader.recycle(buf));
        if self.out.len() == 0 {
            self.out.shrink_if_empty(OUTPUT_KEEP_MAX);
        }
    }

    /// The earliest instant at which [`Connection::handle_timeout`] has work to do.
    #[must_use = "a connection that is not woken at its deadline misses its timeouts"]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let min = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match self.phase {
            Phase::Closed => None,
            Phase::ReadRequest(_)
            | Phase::AwaitAccept(_)
            | Phase::AwaitHttpAnswer { .. }
            | Phase::ReadResponse(_)
            | Phase::Closing
            | Phase::AwaitEof => self.deadline,
            Phase::Open => {
                let ka = &self.keepalive;
                let idle = self.config.idle_timeout.map(|t| ka.last_received + t);
                min(min(ka.next_ping, ka.pong_deadline()), idle)
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
            Phase::ReadRequest(_) | Phase::AwaitAccept(_) | Phase::AwaitHttpAnswer { .. } | Phase::ReadResponse(_) => State::Connecting,
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
    /// compression state. Pending events' payloads are not included (the application
    /// owns those).
    pub fn buffered_bytes(&self) -> usize {
        let phase = match &self.phase {
            Phase::ReadRequest(head) => head.capacity(),
            Phase::AwaitAccept(pending) => pending.early.capacity(),
            Phase::ReadResponse(hs) => hs.buffered_bytes(),
            _ => 0,
        };
        let z = self.compression.as_ref().map_or(0, |z| z.footprint());
        z + self.reader.footprint() + self.out.footprint() + phase
    }

    /// The close frame received from the peer, if any (Qt's `closeCode()`/`closeReason()`).
    pub fn close_received(&self) -> Option<&CloseFrame> {
        self.ending.as_ref()?.close_received.as_ref()
    }

    /// The close frame we sent, if any.
    pub fn close_sent(&self) -> Option<&CloseFrame> {
        self.ending.as_ref()?.close_sent.as_ref()
    }

    /// The agreed subprotocol, once open.
    pub fn subprotocol(&self) -> Option<&str> {
        self.extras.as_ref()?.subprotocol.as_deref()
    }

    /// Client: the server's 101 response, once open.
    pub fn response(&self) -> Option<&Response> {
        self.extras.as_ref()?.response.as_ref()
    }

    /// The permessage-deflate parameters, if the extension was negotiated.
    #[cfg(feature = "deflate")]
    pub fn deflate_params(&self) -> Option<DeflateParams> {
        self.compression.as_ref().map(|z| z.params())
    }

    /// Whether permessage-deflate was negotiated.
    pub fn is_compressed(&self) -> bool {
        self.compression.is_some()
    }

    /// The last measured ping round-trip time.
    pub fn last_rtt(&self) -> Option<Duration> {
        self.keepalive.pings.as_ref()?.last_rtt
    }

    // ------------------------------------------------------------------ internals

    /// Open, or a close decided but not yet written (answers still go out before it).
    fn check_open(&self) -> Result<(), UsageError> {
        match self.phase {
            Phase::Open => Ok(()),
            _ if self.close_pending => Ok(()),
            _ => Err(UsageError::NotOpen { state: self.state() }),
        }
    }

    /// A shared frame may be sent: by a server, as a whole message, and if compressed,
    /// with parameters this connection can inflate.
    fn check_can_send_shared(&self, frame: &SharedFrame) -> Result<(), UsageError> {
        if self.role != Role::Server {
            return Err(UsageError::WrongRole);
        }
        self.check_can_send_message()?;
        if let Some(bits) = frame.compressed_with() {
            if !self.compression.as_ref().is_some_and(|z| z.accepts_shared(bits)) {
                return Err(UsageError::CompressionMismatch);
            }
        }
        Ok(())
    }

    /// A whole message may be sent: open, and no fragmented message in progress.
    fn check_can_send_message(&self) -> Result<(), UsageError> {
        self.check_open()?;
        if self.send_kind.is_some() {
            return Err(UsageError::FragmentSequence);
        }
        Ok(())
    }

    /// Once closed with no deferred close left (nothing can be sent or received any
    /// more), the compression state's memory goes; a lingering socket pins none of it.
    fn release_compression_when_done(&mut self) {
        if matches!(self.phase, Phase::Closed) && !self.close_pending {
            if let Some(z) = self.compression.as_mut() {
                z.release();
            }
        }
    }

    /// The ending's record, started on first use.
    fn ending_mut(&mut self) -> &mut Ending {
        self.ending.get_or_insert_with(Box::default)
    }

    /// The extras' record, started on first use.
    fn extras_mut(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Box::default)
    }

    fn emit(&mut self, e: Event) {
        self.events.push_back(Queued::Event(e));
    }

    /// Encodes one frame into the output, masked with a fresh key for clients (§5.3).
    fn write_frame(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) {
        let mask = Extras::next_mask(&mut self.extras);
        self.out.write_with(|b| encode_frame(b, fin, opcode, mask, payload));
    }

    /// Sends a close frame: now, or, when events are waiting to be polled, right after
    /// them (see `close_pending`).
    fn send_close(&mut self, code: CloseCode, reason: &str) {
        self.ending_mut().close_sent = Some(CloseFrame { code, reason: reason.to_owned() });
        if self.events.is_empty() {
            self.write_close(code, reason);
        } else {
            self.close_pending = true;
            self.events.push_back(Queued::WriteClose);
        }
    }

    fn write_close(&mut self, code: CloseCode, reason: &str) {
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
        let n = if code == CloseCode::NO_STATUS {
            0
        } else {
            payload[..2].copy_from_slice(&code.0.to_be_bytes());
            payload[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
            2 + reason.len()
        };
        self.write_frame(true, OpCode::Close, &payload[..n]);
    }

    /// Takes on what the handshake agreed.
    fn start(&mut self, negotiated: &Negotiated) {
        self.compression = Compression::open(&self.config, negotiated, self.role);
        if let Some(p) = &negotiated.subprotocol {
            self.extras_mut().subprotocol = Some(p.clone());
        }
    }

    fn open(&mut self, now: Instant) {
        self.phase = Phase::Open;
        self.deadline = None;
        self.keepalive.next_ping = self.config.ping_interval.map(|i| now + i);
        let subprotocol = self.subprotocol().map(str::to_owned);
        self.emit(Event::Open { subprotocol });
    }

    fn read_request(&mut self, data: &[u8]) {
        let Phase::ReadRequest(head) = &mut self.phase else { return };
        let rest = match head.push(data, self.config.max_handshake_size) {
            Ok(None) => return,
            Ok(Some(rest)) => rest,
            Err(e) => return self.fail_handshake(e),
        };
        match handshake::parse_request(head.head(), self.config.max_headers, self.config.plain_http) {
            Ok(RequestHead::Upgrade(req)) => {
                self.emit(Event::Request(Box::new(req.clone())));
                self.phase = Phase::AwaitAccept(Box::new(Pending { request: req, early: rest.to_vec() }));
            }
            Ok(RequestHead::Plain(req)) => {
                self.phase = Phase::AwaitHttpAnswer { head_only: req.method == "HEAD" };
                self.emit(Event::HttpRequest(Box::new(req)));
            }
            Err(e) => self.fail_handshake(e),
        }
    }

    fn read_response(&mut self, now: Instant, data: &[u8]) {
        let Phase::ReadResponse(hs) = &mut self.phase else { return };
        match hs.push(data) {
            Ok(None) => {}
            Ok(Some(done)) => {
                self.start(&done.negotiated());
                self.extras_mut().response = Some(done.response);
                self.open(now);
                self.read_frames(now, &data[data.len() - done.rest..]);
            }
            Err(e) => self.fail_handshake(e),
        }
    }

    /// Ends a failed handshake; a server answers with the matching HTTP status.
    fn fail_handshake(&mut self, e: HandshakeError) {
        if self.role == Role::Server {
            if let Some(reject) = e.rejection() {
                self.out.write_with(|b| {
                    let _ = handshake::write_response(b, &reject, true);
                });
            }
        }
        let ending = self.ending_mut();
        ending.error = Some(ProtocolError::Handshake(e));
        ending.initiator = Some(Side::Local);
        self.finish();
    }

    /// Feeds frames to the message layer: messages become events as they complete;
    /// each control frame is acted on before anything after it is read, for as long
    /// as the phase reads frames.
    fn read_frames(&mut self, now: Instant, mut data: &[u8]) {
        while let Phase::Open | Phase::Closing = self.phase {
            let mut cx =
                Inbound { config: &self.config, expect_masked: self.role == Role::Server, compression: self.compression.as_deref_mut() };
            let events = &mut self.events;
            let mut deliver = |event| events.push_back(Queued::Event(event));
            match self.reader.read(&mut data, &mut cx, &mut deliver) {
                Ok(Some(control)) => {
                    let payload = self.reader.control_payload();
                    match control {
                        Control::Ping => self.on_ping(payload),
                        Control::Pong => self.on_pong(now, payload),
                        Control::Close => self.on_close(now, &payload),
                    }
                }
                Ok(None) => return,
                Err(e) => return self.fail(now, e),
            }
        }
    }

    fn on_ping(&mut self, payload: ControlPayload) {
        if matches!(self.phase, Phase::Open) {
            // §5.5.2: answer with a pong carrying the same application data.
            self.write_frame(true, OpCode::Pong, &payload);
        }
        self.emit(Event::Ping(Box::new(payload)));
    }

    fn on_pong(&mut self, now: Instant, payload: ControlPayload) {
        let rtt = self.keepalive.pings.as_mut().and_then(|pings| {
            pings.pong_deadline = None;
            let rtt = pings.sent.iter().position(|(p, _)| *p == payload).map(|i| {
                let sent = pings.sent[i].1;
                pings.sent.drain(..=i);
                now.saturating_duration_since(sent)
            });
            if rtt.is_some() {
                pings.last_rtt = rtt;
            }
            rtt
        });
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
            self.ending_mut().initiator = Some(Side::Remote);
            self.send_close(received.code, "");
        }
        self.ending_mut().close_received = Some(received);
        self.end_closing_handshake(now);
    }

    /// Both close frames are out (or we failed): the server closes TCP now, the client
    /// waits for the server to do it (§7.1.1). Nothing more is read either way.
    fn end_closing_handshake(&mut self, now: Instant) {
        match self.role {
            Role::Server => self.finish(),
            Role::Client => {
                self.phase = Phase::AwaitEof;
                self.reader.abandon();
                self.deadline = Some(now + self.config.close_timeout);
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
                // The peer reads why (within the 123 bytes a close reason may have).
                let reason = e.to_string();
                self.send_close(code, truncate_at_char(&reason, MAX_CLOSE_REASON));
            }
        }
        let ending = self.ending_mut();
        ending.initiator.get_or_insert(Side::Local);
        ending.error = Some(e);
        self.reader.abandon();
        if was_connecting {
            self.finish();
        } else {
            self.end_closing_handshake(now);
        }
    }

    /// Drops a dead peer: no close frame, queued output discarded (it cannot drain).
    fn drop_connection(&mut self, e: ProtocolError) {
        self.out.clear();
        let ending = self.ending_mut();
        ending.error = Some(e);
        ending.initiator = Some(Side::Local);
        self.finish();
    }

    fn finish(&mut self) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        self.phase = Phase::Closed;
        self.reader.release();
        self.release_compression_when_done();
        self.deadline = None;
        self.keepalive.next_ping = None;
        if let Some(pings) = self.keepalive.pings.as_mut() {
            pings.pong_deadline = None;
        }
        let ending = self.ending_mut();
        let closed = Closed {
            initiator: ending.initiator.unwrap_or(Side::Remote),
            clean: ending.close_sent.is_some() && ending.close_received.is_some(),
            sent: ending.close_sent.clone(),
            received: ending.close_received.clone(),
            error: ending.error.clone(),
        };
        self.emit(Event::Closed(Box::new(closed)));
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate_at_char(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
