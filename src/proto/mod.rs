//! The sans-IO core: everything RFC 6455 asks of an endpoint, as pure state machines.
//! Nothing here touches a socket, a thread or the clock; time is passed in as
//! `Instant`s and bytes as slices. See [`connection`] for the theory of operation.

pub mod close;
pub mod config;
pub mod connection;
#[cfg(feature = "deflate")]
pub mod deflate;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod mask;
mod output;
pub mod utf8;
