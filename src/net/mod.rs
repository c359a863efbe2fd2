//! The mio event loop that drives the sans-IO core: a non-blocking server with
//! pluggable [`Handler`]s (the [`Relay`] and [`Echo`] servers ship here), and a
//! [`Client`]. This is the only part of the crate with sockets and a clock; it holds
//! no protocol logic.
//!
//! Rooms: `server.rs` the loop (and its [`Inbox`] for input from other threads),
//! `handler.rs` the application API, `conn.rs` per-connection state and the id table,
//! `http.rs` plain HTTP (chat page, health, metrics), `metrics.rs` the counters and
//! their Prometheus page,
//! `policy.rs` limits, budgets and the slow-consumer policy, `pool.rs` buffer reuse,
//! `relay.rs` the shipped handlers, `bus.rs` rooms across loops, `broker/` rooms
//! across processes (Redis, NATS), `group.rs` several loops, `client.rs` the client, `tls.rs` the TLS transport
//! (feature `tls`).

mod broker;
mod bus;
mod client;
mod conn;
mod group;
mod handler;
mod http;
mod metrics;
mod policy;
mod pool;
mod relay;
mod server;
mod tls;

pub use broker::{
    Bridge, BrokerConfig, BrokerError, BrokerKind, BrokerStats, DEFAULT_MAX_BROKER_MESSAGE, PASSWORD_ENV as BROKER_PASSWORD_ENV,
};
pub use client::{Client, ClientError, ClientOptions, ClientWaker};
pub use group::ServerGroup;
pub use handler::{ConnId, Ctx, Handler};
pub use metrics::{MetricKind, Metrics};
pub use policy::SlowConsumerPolicy;
pub use relay::{Echo, Relay};
pub use server::{Inbox, InboxError, Server, ServerConfig, ServerStats, ShutdownHandle};
#[cfg(feature = "tls")]
pub use tls::{TlsAcceptor, TlsClientOptions, TlsConnector, TlsError, TlsFiles, describe as describe_tls_error};
