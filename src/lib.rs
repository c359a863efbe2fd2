//! # rfc6455
//!
//! A WebSocket (RFC 6455) engine in two layers:
//!
//! * A sans-IO core ([`Connection`] and the types re-exported here): handshakes, frames, masking, fragmentation, UTF-8
//!   validation, the closing handshake, ping/pong and limits. It owns no socket, no
//!   clock and no thread: bytes and the current time go in, events and bytes come out,
//!   so it can be embedded in any event loop, a game loop or a test.
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

#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

#[doc(hidden)]
pub mod proto;

#[cfg(feature = "net")]
pub mod net;

pub use proto::close::CloseCode;
pub use proto::config::{Config, Delivery};
pub use proto::connection::Connection;
#[cfg(feature = "deflate")]
pub use proto::deflate::{DeflateConfig, DeflateParams};
pub use proto::error::{HandshakeError, ProtocolError, UsageError};
pub use proto::frame::{MessageKind, OpCode};
pub use proto::handshake::{
    Accept, ClientHandshake, ClientHandshakeDone, ClientRequest, Headers, Reject, Request, Response, Url, accept_key,
};
pub use proto::mask::{FixedMaskGenerator, MaskGenerator, RandomMaskGenerator};
pub use proto::types::{CloseFrame, Closed, ControlPayload, Event, MAX_CONTROL_PAYLOAD, Role, SharedFrame, Side, State};
