//! # rfc6455
//!
//! A WebSocket (RFC 6455) engine in two layers:
//!
//! * A sans-IO core ([`Connection`] and the types re-exported here): handshakes, frames, masking, fragmentation, UTF-8
//!   validation, the closing handshake, ping/pong and limits. It owns no socket, no
//!   clock and no thread: bytes and the current time go in, events and bytes come out,
//!   so it can be embedded in any event loop, a game loop or a test.
//! * [`proxy`]: the client's proxy step (HTTP CONNECT, SOCKS5), sans-IO as well.
//! * `net` (feature `net`, on by default), a small mio event loop that drives the core:
//!   the relay and echo servers and a blocking-style client.
//!
//! ## Driving the core
//!
//! The contract: after every input (`handle_bytes`, `handle_eof`, `handle_timeout`)
//! and every command (`send_text`, `ping`, `close`, `accept` ...), drain the events,
//! write out the output, and wake up again at `poll_timeout`. The peer's misbehaviour
//! never surfaces as `Err`; it ends in [`Event::Closed`] with the close code that was
//! sent. Here a client and a server engine talk to each other in memory:
//!
//! ```
//! use std::time::Instant;
//! use rfc6455::{Accept, ClientRequest, Config, Connection, Event};
//!
//! let now = Instant::now();
//! let mut client = Connection::client(Config::default(), &ClientRequest::new("ws://example.com/chat").unwrap(), now);
//! let mut server = Connection::server(Config::default(), now);
//!
//! // Move every queued byte from one engine to the other (a socket would do this).
//! fn pump(from: &mut Connection, to: &mut Connection, now: Instant) {
//!     while !from.output().is_empty() {
//!         let bytes = from.output().to_vec();
//!         from.consume_output(bytes.len());
//!         to.handle_bytes(now, &bytes);
//!     }
//! }
//!
//! pump(&mut client, &mut server, now);
//! let Some(Event::Request(req)) = server.poll_event() else { panic!() };
//! assert_eq!(req.path(), "/chat");
//! server.accept(now, Accept::new()).unwrap();
//! pump(&mut server, &mut client, now);
//! assert!(matches!(client.poll_event(), Some(Event::Open { .. })));
//!
//! client.send_text("hello").unwrap();
//! pump(&mut client, &mut server, now);
//! assert!(matches!(server.poll_event(), Some(Event::Open { .. })));
//! assert_eq!(server.poll_event(), Some(Event::Text("hello".into())));
//! ```

//!
//! ## Drivers
//!
//! * [`blocking`]: a `WebSocket` over any `Read + Write` stream, for scripts, tests
//!   and thread-per-connection servers.
//! * `rfc6455::tokio` (feature `tokio`, on by default): a `WebSocket` over any
//!   `AsyncRead + AsyncWrite` stream, with `next`/`send`/`feed`, `futures`
//!   `Stream`/`Sink`, and reader/writer halves.
//! * `net` (feature `net`): the mio event loop with the relay and echo servers, TLS
//!   (feature `tls`) and client proxies.
//!
//! With hyper or axum, the HTTP stack parses the upgrade request and this crate
//! decides the answer without I/O: [`Request::from_parts`] checks the request,
//! [`Request::negotiate`] gives the 101 response's headers (subprotocol,
//! permessage-deflate) and the [`Negotiated`] parameters, and the upgraded stream
//! becomes a `rfc6455::tokio::WebSocket::upgraded` (see `examples/hyper_echo.rs`). A client
//! whose HTTP request is sent by another stack uses [`ClientHandshake::request_headers`]
//! and [`ClientHandshake::check_response`], then [`Connection::upgraded`].
//!
//! ## Writing a driver for another runtime
//!
//! A driver owns a socket (or any byte stream), a clock and a [`Connection`], and
//! repeats one cycle; the tokio and blocking drivers (`src/adapters/`) are worked examples.
//!
//! 1. **Start.** [`Connection::server`] reads the request itself (drain
//!    [`Event::Request`] and answer with [`Connection::accept`] or
//!    [`Connection::reject`]; with [`Config::plain_http`], a plain HTTP request comes
//!    as [`Event::HttpRequest`], answered with [`Connection::respond`]);
//!    [`Connection::client`] queues its request at once;
//!    [`Connection::upgraded`] starts open when another stack did the handshake. Bytes
//!    that stack read past the head are the first frames: [`Connection::handle_bytes`]
//!    them before anything read from the socket.
//! 2. **Read** what the socket has and hand it to [`Connection::handle_bytes`] with
//!    the current time; a read of 0 bytes (end of stream) is
//!    [`Connection::handle_eof`]. An error on a connection still open is an abort
//!    ([`Connection::abort`]); once the closing handshake has begun, a reset is just
//!    the peer's end of stream.
//! 3. **Drain the events** with [`Connection::poll_event`] until `None`, and act on
//!    them. The engine's own answers (pongs, the reply to a close, the close after a
//!    protocol error) wait behind the events before them: a close frame is in the
//!    output only after the events before it are drained, so the application's
//!    answers to those events go out first.
//! 4. **Write** [`Connection::output_vectored`] (or [`Connection::output`]) and
//!    [`Connection::consume_output`] what the socket took; a partial write consumes
//!    part. Writing everything that one read produced in one vectored write is what
//!    makes small messages cheap.
//! 5. **Sleep** until input, or until [`Connection::poll_timeout`], then call
//!    [`Connection::handle_timeout`]: handshake, close, keepalive, pong and idle
//!    deadlines are all there.
//! 6. **Backpressure.** While [`Connection::bytes_to_write`] is above a limit,
//!    stop reading (a peer that sends pings but never reads cannot grow the output)
//!    and make senders wait.
//! 7. **The end.** [`Event::Closed`] is emitted once, last: write out what is
//!    queued, then close the socket (a client waits for the server to close first,
//!    within the close timeout, which the engine runs).

#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

#[doc(hidden)]
pub mod proto;

pub mod proxy;

#[cfg(feature = "net")]
pub mod net;

mod adapters;
pub use adapters::blocking;
#[cfg(feature = "tokio")]
pub use adapters::tokio;
pub use adapters::{DriverError, Message};

pub use proto::close::CloseCode;
pub use proto::config::{Config, Delivery};
pub use proto::connection::Connection;
#[cfg(feature = "deflate")]
pub use proto::deflate::{DeflateConfig, DeflateParams};
pub use proto::error::{HandshakeError, ProtocolError, UsageError};
pub use proto::frame::{MessageKind, OpCode};
pub use proto::handshake::{
    Accept, Accepted, ClientHandshake, ClientHandshakeDone, ClientRequest, Headers, HttpRequest, Negotiated, Reject, Request, Response,
    Url, accept_key,
};
pub use proto::mask::{FixedMaskGenerator, MaskGenerator, RandomMaskGenerator};
pub use proto::types::{CloseFrame, Closed, ControlPayload, Event, MAX_CONTROL_PAYLOAD, Role, SharedFrame, Side, State};
