//! Drivers of the sans-IO core for other runtimes, built only on its public API:
//! [`crate::blocking`] over any `std::io::Read + Write` and, with feature `tokio`,
//! [`crate::tokio`] over any `AsyncRead + AsyncWrite`. This module owns what they
//! share: the error type, the message type they send, and the steps of a handshake
//! done on the stream itself.

use std::fmt;
use std::io;

use crate::{Accept, Connection, Event, HandshakeError, MessageKind, ProtocolError, Reject, Request, SharedFrame, UsageError};

pub mod blocking;
#[cfg(feature = "tokio")]
pub mod tokio;

/// What a driver's operation can fail with.
#[derive(Debug)]
#[non_exhaustive]
pub enum DriverError {
    /// The transport failed (including `UnexpectedEof` when the stream ended during
    /// the opening handshake).
    Io(io::Error),
    /// The opening handshake failed: the peer's bad request or response, a refusal
    /// by the server ([`HandshakeError::Status`]) or a timeout.
    Handshake(HandshakeError),
    /// The server's handler refused the request with this status (server side).
    Rejected(u16),
    /// The caller's mistake: sending after the close, a subprotocol not offered ...
    Usage(UsageError),
    /// A `wss://` URL given to a driver's `connect(url)`, which opens plain TCP only;
    /// wrap a TLS stream yourself and use the stream-taking constructor.
    TlsUnsupported,
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverError::Io(e) => write!(f, "I/O error: {e}"),
            DriverError::Handshake(e) => write!(f, "handshake failed: {e}"),
            DriverError::Rejected(status) => write!(f, "request refused with HTTP status {status}"),
            DriverError::Usage(e) => e.fmt(f),
            DriverError::TlsUnsupported => {
                f.write_str("wss:// needs a TLS stream: connect one and pass it to the stream-taking constructor")
            }
        }
    }
}

impl std::error::Error for DriverError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DriverError::Io(e) => Some(e),
            DriverError::Handshake(e) => Some(e),
            DriverError::Usage(e) => Some(e),
            DriverError::Rejected(_) | DriverError::TlsUnsupported => None,
        }
    }
}

impl From<io::Error> for DriverError {
    fn from(e: io::Error) -> Self {
        DriverError::Io(e)
    }
}

impl From<UsageError> for DriverError {
    fn from(e: UsageError) -> Self {
        DriverError::Usage(e)
    }
}

/// A message for a driver to send. Text and binary payloads are moved into the
/// engine (large ones are queued without a copy); a [`SharedFrame`] is encoded once
/// and sent to many connections.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// A frame encoded once for many connections (servers only).
    Shared(SharedFrame),
}

impl Message {
    /// Queues the message on `conn`.
    pub(crate) fn queue(self, conn: &mut Connection) -> Result<(), UsageError> {
        match self {
            Message::Text(t) => conn.send_owned(MessageKind::Text, t.into_bytes()),
            Message::Binary(b) => conn.send_owned(MessageKind::Binary, b),
            Message::Shared(f) => conn.send_shared(&f),
        }
    }
}

impl From<String> for Message {
    fn from(t: String) -> Self {
        Message::Text(t)
    }
}

impl From<&str> for Message {
    fn from(t: &str) -> Self {
        Message::Text(t.to_owned())
    }
}

impl From<Vec<u8>> for Message {
    fn from(b: Vec<u8>) -> Self {
        Message::Binary(b)
    }
}

impl From<SharedFrame> for Message {
    fn from(f: SharedFrame) -> Self {
        Message::Shared(f)
    }
}

/// The stream failed under `conn`. While open, the connection is aborted and the
/// error is returned for the application. Once the closing handshake has begun, a
/// peer that sent or got its close may reset the connection instead of ending it
/// cleanly: that is its end of stream, not an error. `Interrupted` is no failure.
pub(crate) fn stream_failed(conn: &mut Connection, e: io::Error, now: std::time::Instant) -> Option<io::Error> {
    match e.kind() {
        io::ErrorKind::Interrupted => None,
        _ if conn.state() == crate::State::Open => {
            conn.abort();
            Some(e)
        }
        _ => {
            conn.handle_eof(now);
            None
        }
    }
}

/// The `decide` of a client's handshake: only a server receives requests.
pub(crate) fn client_never_decides(_: &Request) -> Result<Accept, Reject> {
    Err(Reject::new(500))
}

/// Where an opening handshake done on the stream stands after its events are drained.
pub(crate) enum HandshakeStep {
    /// More bytes are needed (or the answer must be written first).
    Continue,
    /// Open: messages may flow.
    Open,
    /// It ended, with this error.
    Failed(DriverError),
}

/// The handshake ended with our HTTP answer `status` (if it could be written).
fn refused(written: Result<(), crate::UsageError>, status: u16) -> HandshakeStep {
    match written {
        Ok(()) => HandshakeStep::Failed(DriverError::Rejected(status)),
        Err(e) => HandshakeStep::Failed(e.into()),
    }
}

/// Drains the events of a connection in its opening handshake: a server's request
/// goes to `decide` and is accepted or rejected; `Open` and `Closed` end it. Events
/// after `Open` stay queued for the driver's reader.
pub(crate) fn drive_handshake(
    conn: &mut Connection,
    now: std::time::Instant,
    decide: &mut dyn FnMut(&Request) -> Result<Accept, Reject>,
) -> HandshakeStep {
    while let Some(event) = conn.poll_event() {
        match event {
            Event::Request(req) => match decide(&req) {
                Ok(accept) => {
                    if let Err(e) = conn.accept(now, accept) {
                        return HandshakeStep::Failed(e.into());
                    }
                }
                Err(reject) => return refused(conn.reject(&reject), reject.status()),
            },
            // A driver serves no plain HTTP (`Config::plain_http`): the standard answer.
            Event::HttpRequest(req) => {
                let answer = req.default_response();
                return refused(conn.respond(&answer), answer.status());
            }
            Event::Open { .. } => return HandshakeStep::Open,
            Event::Closed(closed) => {
                return HandshakeStep::Failed(match closed.error {
                    Some(ProtocolError::Handshake(HandshakeError::UnexpectedEof)) => {
                        DriverError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "the stream ended during the opening handshake"))
                    }
                    Some(ProtocolError::Handshake(e)) => DriverError::Handshake(e),
                    _ => DriverError::Io(io::Error::other("connection closed during the opening handshake")),
                });
            }
            _ => {}
        }
    }
    HandshakeStep::Continue
}
