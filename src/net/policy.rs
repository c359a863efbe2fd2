//! The server's policies, in one place: the connection limit, the origin allow-list,
//! backpressure and the slow-consumer policy, and the memory budgets (per connection
//! and process-wide). The loop asks; the policies decide.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use log::warn;

use crate::net::conn::Conn;
use crate::net::server::{ServerConfig, ServerStats};
use crate::{CloseCode, Reject, Request, State};

/// Under memory pressure, connections pinning less than this may still read.
const SMALL_PIN: usize = 16 * 1024;

/// What the server does with a connection whose outgoing buffer passes the high-water mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlowConsumerPolicy {
    /// Send a close frame with this code (behind what is queued), queue nothing more
    /// for it, and drop it when the close timeout passes.
    Close(CloseCode),
    /// Drop the connection at once, discarding what is queued.
    Drop,
}

/// The policies of one server, derived from its [`ServerConfig`].
#[derive(Debug)]
pub(crate) struct Policy {
    high_water_mark: usize,
    slow_consumer: SlowConsumerPolicy,
    allowed_origins: Option<Vec<String>>,
    max_connections: usize,
    connection_budget: usize,
    max_total_memory: usize,
    pub(crate) stats: Arc<ServerStats>,
}

impl Policy {
    pub(crate) fn new(cfg: &ServerConfig, stats: Arc<ServerStats>) -> Self {
        Self {
            high_water_mark: cfg.high_water_mark,
            slow_consumer: cfg.slow_consumer,
            allowed_origins: cfg.allowed_origins.clone(),
            max_connections: cfg.max_connections,
            connection_budget: cfg.connection_budget(),
            max_total_memory: cfg.max_total_memory,
            stats,
        }
    }

    /// A new TCP connection is refused (503) when the server holds this many.
    pub(crate) fn at_connection_limit(&self, live: usize) -> bool {
        live >= self.max_connections
    }

    /// The answer to a request whose `Origin` is not allowed, if it is not.
    pub(crate) fn check_origin(&self, req: &Request) -> Result<(), Reject> {
        let ok = match (&self.allowed_origins, req.origin()) {
            (None, _) => true,
            (Some(list), Some(o)) => list.iter().any(|a| a.eq_ignore_ascii_case(o)),
            (Some(_), None) => false,
        };
        if ok { Ok(()) } else { Err(Reject::new(403).body("origin not allowed")) }
    }

    /// Whether a message may be queued for `conn`. A backlog over the high-water mark
    /// (not one large message onto an empty queue) marks a slow consumer, which gets
    /// the slow-consumer policy once and nothing more: its memory is bounded by the
    /// mark plus one message.
    pub(crate) fn admit(&self, conn: &mut Conn, now: Instant) -> bool {
        if conn.congested {
            return false;
        }
        if conn.engine.bytes_to_write() <= self.high_water_mark {
            return true;
        }
        conn.congested = true;
        self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
        warn!("[{}] slow consumer: {} bytes queued, policy {:?}", conn.peer, conn.engine.bytes_to_write(), self.slow_consumer);
        match self.slow_consumer {
            SlowConsumerPolicy::Close(code) => {
                let _ = conn.engine.close(now, code, "slow consumer");
            }
            SlowConsumerPolicy::Drop => conn.engine.abort(),
        }
        false
    }

    /// A congested connection that drained to half the mark takes messages again.
    pub(crate) fn relieve(&self, conn: &mut Conn) {
        if conn.congested && conn.engine.state() == State::Open && conn.engine.bytes_to_write() <= self.high_water_mark / 2 {
            conn.congested = false;
        }
    }

    /// Backpressure: a paused connection, or one that does not drain its own output,
    /// is not read from.
    pub(crate) fn read_allowed(&self, conn: &Conn) -> bool {
        !conn.paused && conn.engine.bytes_to_write() <= self.high_water_mark
    }

    /// The per-connection memory budget: past it an open connection is closed with
    /// 1008. Returns whether it was.
    pub(crate) fn enforce_connection_budget(&self, conn: &mut Conn, now: Instant) -> bool {
        if conn.pinned <= self.connection_budget || conn.engine.state() != State::Open {
            return false;
        }
        warn!("[{}] pins {} bytes, over the budget of {}: closing", conn.peer, conn.pinned, self.connection_budget);
        let _ = conn.engine.close(now, CloseCode::POLICY_VIOLATION, "memory budget");
        self.stats.over_budget.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The process-wide budget: a connection that pins much reads only if what it may
    /// grow to (its buffer doubling, plus one read of `read_len`) still fits.
    pub(crate) fn read_fits(&self, conn: &Conn, total_pinned: usize, read_len: usize) -> bool {
        conn.pinned < SMALL_PIN || total_pinned + conn.pinned + read_len <= self.max_total_memory
    }
}

/// What all connections of the loop pin, and the connections waiting for it to fall.
#[derive(Debug, Default)]
pub(crate) struct Memory {
    /// Sum of every connection's pinned bytes.
    pub(crate) pinned: usize,
    /// Connections not read from because the process-wide budget was exceeded.
    blocked: Vec<usize>,
    /// The total pinned when they were blocked: they are retried once it falls.
    blocked_at: Option<usize>,
}

impl Memory {
    /// Re-counts what `conn` pins.
    pub(crate) fn update(&mut self, conn: &mut Conn, stats: &ServerStats) {
        let now = conn.engine.buffered_bytes();
        self.pinned = self.pinned + now - conn.pinned;
        conn.pinned = now;
        stats.pinned_bytes.store(self.pinned, Ordering::Relaxed);
        stats.peak_pinned_bytes.fetch_max(self.pinned, Ordering::Relaxed);
    }

    /// `conn` is gone: what it pinned is free.
    pub(crate) fn forget(&mut self, conn: &Conn, stats: &ServerStats) {
        self.pinned -= conn.pinned;
        stats.pinned_bytes.store(self.pinned, Ordering::Relaxed);
    }

    /// `slot` waits for the total to fall.
    pub(crate) fn block(&mut self, slot: usize) {
        self.blocked.push(slot);
        self.blocked_at = Some(self.blocked_at.map_or(self.pinned, |b| b.min(self.pinned)));
    }

    /// The blocked connections, once the total fell below where they were blocked.
    pub(crate) fn unblocked(&mut self) -> Option<Vec<usize>> {
        if self.blocked_at.is_some_and(|at| self.pinned < at) {
            self.blocked_at = None;
            return Some(std::mem::take(&mut self.blocked));
        }
        None
    }
}
