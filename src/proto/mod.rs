//! The sans-IO core: everything RFC 6455 asks of an endpoint, as pure state machines.
//! Nothing here touches a socket, a thread or the clock; time is passed in as
//! `Instant`s and bytes as slices. See [`connection`] for the theory of operation.
//!
//! The public API is what the crate root re-exports. This module is public only for
//! the crate's own benchmarks, fuzz targets and load generator (the frame codec,
//! masking, UTF-8 and deflate pieces they test alone); it is hidden from the docs and
//! may change in any release.

pub mod close;
mod compression;
pub mod config;
pub mod connection;
#[cfg(feature = "deflate")]
pub mod deflate;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod mask;
mod message;
mod output;
pub mod types;
pub mod utf8;
