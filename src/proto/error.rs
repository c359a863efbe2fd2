//! Errors. [`ProtocolError`] is the peer's fault: it never comes back from an input
//! call, it ends the connection and is reported in [`crate::Closed`], and it maps to
//! the close code (or HTTP status) we sent. [`UsageError`] is the caller's mistake
//! and is returned from commands.

use std::fmt;

use crate::proto::close::CloseCode;
use crate::proto::types::State;

/// Something the peer did wrong, or a deadline it missed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The opening handshake failed (see [`HandshakeError`]).
    Handshake(HandshakeError),
    /// An opcode reserved for future use (§5.2): 1002.
    ReservedOpcode(u8),
    /// RSV1-3 set without an extension that defines them (§5.2): 1002.
    ReservedBits(u8),
    /// A 64-bit payload length with the most significant bit set (§5.2): 1002.
    InvalidLength,
    /// A control frame with a payload over 125 bytes (§5.5): 1002.
    ControlFrameTooLong(u64),
    /// A control frame without FIN (§5.5): 1002.
    FragmentedControlFrame,
    /// A client frame without a mask (§5.1): 1002.
    UnmaskedFrame,
    /// A server frame with a mask (§5.1): 1002.
    MaskedFrame,
    /// A continuation frame with no message in progress (§5.4): 1002.
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is in progress (§5.4): 1002.
    ExpectedContinuation,
    /// A close frame with a 1-byte payload (§5.5.1): 1002.
    InvalidClosePayload,
    /// A close code that may not appear on the wire (§7.4): 1002.
    InvalidCloseCode(u16),
    /// Text (or a close reason) that is not UTF-8 (§8.1): 1007.
    InvalidUtf8,
    /// A compressed message that is not valid deflate data (RFC 7692 §8): 1007.
    InvalidCompressedData,
    /// A frame payload over [`crate::Config::max_frame_size`]: 1009.
    FrameTooBig {
        /// The configured limit.
        limit: usize,
    },
    /// A message over [`crate::Config::max_message_size`]: 1009.
    MessageTooBig {
        /// The configured limit.
        limit: usize,
    },
    /// Keepalive: no pong within [`crate::Config::pong_timeout`]: dropped, 1006.
    PongTimeout,
    /// Nothing received within [`crate::Config::idle_timeout`]: dropped, 1006.
    IdleTimeout,
}

impl ProtocolError {
    /// The close code this error is answered with. [`CloseCode::ABNORMAL`] (1006) means
    /// no close frame is sent (handshake failures, timeouts).
    pub fn close_code(&self) -> CloseCode {
        use ProtocolError::*;
        match self {
            Handshake(_) | PongTimeout | IdleTimeout => CloseCode::ABNORMAL,
            InvalidUtf8 | InvalidCompressedData => CloseCode::INVALID_PAYLOAD,
            FrameTooBig { .. } | MessageTooBig { .. } => CloseCode::MESSAGE_TOO_BIG,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ProtocolError::*;
        match self {
            Handshake(e) => write!(f, "handshake failed: {e}"),
            ReservedOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            ReservedBits(bits) => write!(f, "reserved bits set ({bits:#05b}) without an extension"),
            InvalidLength => f.write_str("64-bit payload length with the top bit set"),
            ControlFrameTooLong(n) => write!(f, "control frame payload of {n} bytes (max 125)"),
            FragmentedControlFrame => f.write_str("fragmented control frame"),
            UnmaskedFrame => f.write_str("unmasked frame from a client"),
            MaskedFrame => f.write_str("masked frame from a server"),
            UnexpectedContinuation => f.write_str("continuation frame without a message in progress"),
            ExpectedContinuation => f.write_str("new data frame inside a fragmented message"),
            InvalidClosePayload => f.write_str("close frame with a 1-byte payload"),
            InvalidCloseCode(c) => write!(f, "invalid close code {c}"),
            InvalidUtf8 => f.write_str("invalid UTF-8 in text"),
            InvalidCompressedData => f.write_str("invalid deflate data in a compressed message"),
            FrameTooBig { limit } => write!(f, "frame larger than {limit} bytes"),
            MessageTooBig { limit } => write!(f, "message larger than {limit} bytes"),
            PongTimeout => f.write_str("no pong within the keepalive timeout"),
            IdleTimeout => f.write_str("nothing received within the idle timeout"),
        }
    }
}

impl std::error::Error for ProtocolError {}

impl From<HandshakeError> for ProtocolError {
    fn from(e: HandshakeError) -> Self {
        ProtocolError::Handshake(e)
    }
}

/// Why an opening handshake failed. On the server side each maps to the HTTP status
/// that was sent ([`HandshakeError::http_status`]); on the client side it describes
/// the server's response.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The head is not valid HTTP/1.1: 400.
    Malformed(&'static str),
    /// The head exceeded [`crate::Config::max_handshake_size`]: 431.
    HeadTooLarge,
    /// More than [`crate::Config::max_headers`] header lines: 431.
    TooManyHeaders,
    /// The request method is not GET (§4.2.1): 405.
    MethodNotAllowed,
    /// The HTTP version is below 1.1 (§4.2.1): 505.
    HttpVersion,
    /// A required header is missing or wrong (`Host`, `Upgrade`, `Connection`,
    /// `Sec-WebSocket-Key`), or a single-valued header is repeated: 400.
    BadHeader(&'static str),
    /// `Sec-WebSocket-Version` is not 13 (§4.2.2): 426 with `Sec-WebSocket-Version: 13`.
    UnsupportedVersion,
    /// A plain HTTP request (no `Upgrade` header): 426, with a body that says this is a
    /// WebSocket endpoint and how to connect.
    NotWebSocket,
    /// The connection ended before the handshake completed.
    UnexpectedEof,
    /// The handshake did not complete within [`crate::Config::handshake_timeout`]
    /// (a server answers 408).
    Timeout,
    /// Client: the server answered with a status other than 101 (a redirect, an auth
    /// challenge, a rejection); its headers are kept so they can be acted on.
    Status {
        /// The HTTP status.
        status: u16,
        /// The response's header lines.
        headers: Vec<(String, Vec<u8>)>,
    },
    /// Client: `Sec-WebSocket-Accept` does not match our key (§4.1).
    BadAccept,
    /// Client: the server chose a subprotocol we did not offer (§4.1).
    UnexpectedSubprotocol(String),
    /// Client: the server used an extension we did not offer (§4.1).
    UnexpectedExtension(String),
}

impl HandshakeError {
    /// The HTTP status a server answers this error with, if it answers at all.
    pub fn http_status(&self) -> Option<u16> {
        use HandshakeError::*;
        Some(match self {
            Malformed(_) | BadHeader(_) => 400,
            HeadTooLarge | TooManyHeaders => 431,
            MethodNotAllowed => 405,
            HttpVersion => 505,
            UnsupportedVersion | NotWebSocket => 426,
            Timeout => 408,
            _ => return None,
        })
    }

    /// The refusal a server answers this error with (status, implied headers, the
    /// error as a plain-text body), if it answers at all: what another HTTP stack
    /// sends when [`crate::Request::from_parts`] fails.
    pub fn rejection(&self) -> Option<crate::Reject> {
        Some(crate::Reject::new(self.http_status()?).body(self.to_string()))
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use HandshakeError::*;
        match self {
            Malformed(what) => write!(f, "malformed HTTP head: {what}"),
            HeadTooLarge => f.write_str("handshake head too large"),
            TooManyHeaders => f.write_str("too many header lines"),
            MethodNotAllowed => f.write_str("method is not GET"),
            HttpVersion => f.write_str("HTTP version below 1.1"),
            BadHeader(what) => write!(f, "bad or missing header: {what}"),
            UnsupportedVersion => f.write_str("unsupported Sec-WebSocket-Version (need 13)"),
            NotWebSocket => f.write_str(
                "this is a WebSocket endpoint (RFC 6455), not a web page: connect with a WebSocket client \
                 to ws://HOST:PORT/PATH, this server's address and path",
            ),
            UnexpectedEof => f.write_str("connection closed during the handshake"),
            Timeout => f.write_str("handshake timed out"),
            Status { status, .. } => write!(f, "server answered HTTP {status} instead of 101"),
            BadAccept => f.write_str("Sec-WebSocket-Accept does not match the key"),
            UnexpectedSubprotocol(p) => write!(f, "server chose subprotocol {p:?} that was not offered"),
            UnexpectedExtension(e) => write!(f, "server used extension {e:?} that was not offered"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// A mistake by the caller of the engine (or of a driver built on it): a command that
/// the current state or the protocol does not allow, or an argument that could not go
/// on the wire. Nothing was queued; the connection is unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UsageError {
    /// The command needs an open connection; this one is in `state`.
    NotOpen {
        /// The state the connection was in.
        state: State,
    },
    /// `accept` or `reject` without a request waiting for an answer.
    NoPendingRequest,
    /// A control frame payload over 125 bytes (§5.5).
    ControlPayloadTooLong(usize),
    /// A close code that may not be sent (§7.4).
    InvalidCloseCode(u16),
    /// A close reason over 123 bytes (§5.5.1).
    CloseReasonTooLong(usize),
    /// A fragmented send changed kind mid-message, or a whole message was sent while a
    /// fragmented one is in progress.
    FragmentSequence,
    /// A header name that is not an HTTP token.
    InvalidHeaderName(String),
    /// A header value with CR, LF, NUL or another control character (header injection).
    InvalidHeaderValue {
        /// The header's name.
        name: String,
    },
    /// A header that the handshake sets itself (`Host`, `Upgrade`, `Sec-WebSocket-*` ...).
    ReservedHeader(String),
    /// A subprotocol name that is not an HTTP token.
    InvalidSubprotocol(String),
    /// The server chose a subprotocol the client did not offer (§4.2.2).
    SubprotocolNotOffered(String),
    /// A rejection status that is not a final HTTP status other than 101 (200-599).
    InvalidStatus(u16),
    /// The URL is not a valid `ws://` or `wss://` URL.
    InvalidUrl(String),
    /// The command is only for the other role (e.g. shared frames are server-only).
    WrongRole,
    /// A compressed [`crate::SharedFrame`] for a connection that did not negotiate
    /// permessage-deflate with parameters that can inflate it.
    CompressionMismatch,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use UsageError::*;
        match self {
            NotOpen { state } => write!(f, "the connection is not open (it is {state:?})"),
            NoPendingRequest => f.write_str("no handshake request is waiting for an answer"),
            ControlPayloadTooLong(n) => write!(f, "control payload of {n} bytes (max 125)"),
            InvalidCloseCode(c) => write!(f, "close code {c} may not be sent"),
            CloseReasonTooLong(n) => write!(f, "close reason of {n} bytes (max 123)"),
            FragmentSequence => f.write_str("fragmented send out of sequence"),
            InvalidHeaderName(n) => write!(f, "invalid header name {n:?} (not an HTTP token)"),
            InvalidHeaderValue { name } => write!(f, "invalid value for header {name:?} (control characters)"),
            ReservedHeader(n) => write!(f, "header {n:?} is set by the handshake"),
            InvalidSubprotocol(p) => write!(f, "invalid subprotocol {p:?} (not an HTTP token)"),
            SubprotocolNotOffered(p) => write!(f, "subprotocol {p:?} was not offered by the client"),
            InvalidStatus(s) => write!(f, "HTTP status {s} cannot reject a handshake (200-599, not 101)"),
            InvalidUrl(u) => write!(f, "invalid WebSocket URL: {u}"),
            WrongRole => f.write_str("command not available for this role"),
            CompressionMismatch => f.write_str("compressed shared frame for a connection that cannot inflate it"),
        }
    }
}

impl std::error::Error for UsageError {}
