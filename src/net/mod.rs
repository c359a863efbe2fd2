//! The mio event loop that drives the sans-IO core: a non-blocking server with
//! pluggable [`Handler`]s (the [`Relay`] and [`Echo`] servers ship here), and a
//! [`Client`]. This is the only part of the crate with sockets and a clock; it holds
//! no protocol logic.

mod client;
mod conn;
mod relay;
mod server;

pub use client::{Client, ClientError, ClientOptions};
pub use relay::{Echo, Relay};
pub use server::{ConnId, Ctx, Handler, Rejection, Server, ServerConfig, ServerStats, ShutdownHandle, SlowConsumerPolicy};
