//! The server event loop: accepting, reading, timers, flushing, shutdown, and input
//! from other threads. What to do with messages is a [`Handler`]'s business; the
//! policies around the engines live in `policy.rs`, per-connection state in `conn.rs`,
//! buffer reuse in `pool.rs`.
//!
//! Each loop turn, in a fixed order: read the clock once; `poll` until the earliest
//! deadline; run what other threads sent through the [`Inbox`]; read every ready
//! socket until `WouldBlock` and hand the events to the handler (which may queue
//! frames on other connections); let expired deadlines act; then write every touched
//! connection's output (one `writev` per socket per turn when it all fits) and drop
//! the connections that are finished.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::net::conn::{Conn, Conns, Read1, Socket};
use crate::net::handler::{Ctx, Handler};
use crate::net::http;
pub use crate::net::metrics::ServerStats;
use crate::net::metrics::{Metrics, TurnCounts};
use crate::net::policy::{Memory, Policy, SlowConsumerPolicy};
use crate::net::pool::Pool;
use crate::{CloseCode, Closed, Config, Connection, Delivery, Event, MessageKind, ProtocolError, Reject, State};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const ADMIN: Token = Token(usize::MAX - 3);
/// Reads per connection per turn before others get their turn.
const READ_BUDGET: usize = 16;
/// Jobs the inbox holds before senders are refused; also the most run per loop turn.
const INBOX_CAPACITY: usize = 4096;
/// How soon the loop comes back when the handler has work it could not finish.
const RETRY_SOON: Duration = Duration::from_millis(1);
/// Connections the admin address holds at once (beyond it, new ones are closed at
/// once); they count in no public limit or gauge.
const ADMIN_MAX_CONNECTIONS: usize = 32;

/// Server settings around the engines.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The engine configuration of every connection (limits, timeouts, keepalive,
    /// delivery, permessage-deflate). The server turns [`Config::plain_http`] on
    /// whatever it says here: it answers plain requests itself (health, metrics) or
    /// through [`Handler::on_http`].
    pub engine: Config,
    /// Size of the read buffer shared by all connections (Qt's `setReadBufferSize`).
    /// Default 64 KiB.
    pub read_buffer_size: usize,
    /// Most simultaneous connections; beyond it new clients get `503` and are closed.
    /// Default 10,000.
    pub max_connections: usize,
    /// Outgoing bytes a connection may have queued (Qt's `bytesToWrite`): a message
    /// for a connection whose backlog is over it triggers the slow-consumer policy, so
    /// a connection holds at most this plus one message. A connection over it is also
    /// not read from, so an echo client that does not read meets TCP backpressure.
    /// Default 8 MiB.
    pub high_water_mark: usize,
    /// What happens to a connection over the high-water mark. Default close with 1008.
    pub slow_consumer: SlowConsumerPolicy,
    /// If set, only requests whose `Origin` is in the list are accepted; others get 403.
    pub allowed_origins: Option<Vec<String>>,
    /// How long a graceful shutdown waits for clients to answer the 1001 close. Default 5 s.
    pub shutdown_timeout: Duration,
    /// How long a finished connection waits for the peer's FIN after ours. Default 2 s.
    pub linger: Duration,
    /// Bytes one connection may pin (partial message, queued output, buffers; see
    /// [`Connection::buffered_bytes`]); past it the connection is closed with 1008.
    /// Default: the largest message plus the high-water mark plus 1 MiB.
    pub max_connection_memory: Option<usize>,
    /// Bytes all connections together may pin. A connection that pins 16 KiB or more
    /// is not read from while what it may grow to by one more read would pass this
    /// total; it is retried when the total falls (its peer meets TCP backpressure;
    /// nothing accepted is dropped). Connections that pin little carry on, so the
    /// total stays under this plus at most 32 KiB per connection. Default 1 GiB.
    pub max_total_memory: usize,
    /// The admin address: plain HTTP only, `/metrics` (Prometheus text format) and
    /// `/healthz`, kept off the public port so metrics are never exposed by accident.
    /// Bind it to loopback or a private network. Default `None`: no admin address.
    pub admin_listen: Option<SocketAddr>,
    /// `wss://`: every accepted connection speaks TLS with this certificate (the
    /// handshake timeout covers the TLS handshake too). Default `None`: plain TCP.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::net::tls::TlsAcceptor>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            engine: Config::default(),
            read_buffer_size: 64 * 1024,
            max_connections: 10_000,
            high_water_mark: 8 << 20,
            slow_consumer: SlowConsumerPolicy::Close(CloseCode::POLICY_VIOLATION),
            allowed_origins: None,
            shutdown_timeout: Duration::from_secs(5),
            linger: Duration::from_secs(2),
            max_connection_memory: None,
            max_total_memory: 1 << 30,
            admin_listen: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl ServerConfig {
    /// The bytes one connection may pin: [`ServerConfig::max_connection_memory`] or
    /// its default.
    pub fn connection_budget(&self) -> usize {
        self.max_connection_memory.unwrap_or(self.engine.max_message_size + self.high_water_mark + (1 << 20))
    }
}

/// Stops a running server from another thread (or a signal-handling thread).
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    flag: Arc<AtomicBool>,
    /// Every loop that watches the flag (one, or each loop of a [`crate::net::ServerGroup`]).
    wakers: Vec<Arc<Waker>>,
}

impl ShutdownHandle {
    /// Asks the server to shut down gracefully: stop accepting, send 1001 to every
    /// client, wait for their closes up to the shutdown timeout, then return from `run`.
    pub fn shutdown(&self) {
        self.flag.store(true, Ordering::SeqCst);
        for w in &self.wakers {
            let _ = w.wake();
        }
    }
}

/// What the loops of one process share: the shutdown flag, the count of connections
/// (the connection limit is per process) and every loop's counters (for `/metrics`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Shared {
    pub(crate) shutdown: Arc<AtomicBool>,
    pub(crate) connections: Arc<AtomicUsize>,
    pub(crate) siblings: Arc<std::sync::Mutex<Vec<Arc<ServerStats>>>>,
}

impl Shared {
    /// A handle that stops every loop of the group whose wakers are given.
    pub(crate) fn shutdown_handle(&self, wakers: Vec<Arc<Waker>>) -> ShutdownHandle {
        ShutdownHandle { flag: self.shutdown.clone(), wakers }
    }
}

/// Work sent to a loop from another thread: runs on the loop with its handler and a
/// [`Ctx`], between polls.
type Job<H> = Box<dyn FnOnce(&mut H, &mut Ctx<'_>) + Send>;

/// Sends work to a running server from other threads (a broker bridge, another loop,
/// a timer thread). Bounded: when the loop falls behind, [`Inbox::send`] refuses and
/// the refusal is counted ([`ServerStats::inbox_overflows`]); it never blocks.
pub struct Inbox<H> {
    tx: SyncSender<Job<H>>,
    waker: Arc<Waker>,
    stats: Arc<ServerStats>,
}

impl<H> Clone for Inbox<H> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), waker: self.waker.clone(), stats: self.stats.clone() }
    }
}

impl<H> std::fmt::Debug for Inbox<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox").finish_non_exhaustive()
    }
}

/// Why [`Inbox::send`] refused a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InboxError {
    /// The loop has this many jobs waiting already.
    Full,
    /// The server is gone.
    Closed,
}

impl std::fmt::Display for InboxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InboxError::Full => f.write_str("the server's inbox is full"),
            InboxError::Closed => f.write_str("the server has stopped"),
        }
    }
}

impl std::error::Error for InboxError {}

impl<H> Inbox<H> {
    /// Runs `job` on the loop's thread at its next turn, with the handler and a [`Ctx`].
    pub fn send(&self, job: impl FnOnce(&mut H, &mut Ctx<'_>) + Send + 'static) -> Result<(), InboxError> {
        match self.tx.try_send(Box::new(job)) {
            Ok(()) => {
                let _ = self.waker.wake();
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                self.stats.inbox_overflows.fetch_add(1, Ordering::Relaxed);
                Err(InboxError::Full)
            }
            Err(TrySendError::Disconnected(_)) => Err(InboxError::Closed),
        }
    }
}

/// A non-blocking WebSocket server on one thread.
pub struct Server<H: Handler> {
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    /// The admin address's listener (kept through a graceful shutdown, so `/healthz`
    /// can say 503).
    admin: Option<TcpListener>,
    /// A graceful shutdown has begun.
    draining: bool,
    /// Connections held on the admin address.
    admin_live: usize,
    /// Per-turn counts, published to `stats` at the end of each turn.
    counts: TurnCounts,
    cfg: ServerConfig,
    handler: H,
    conns: Conns,
    pool: Pool,
    policy: Policy,
    memory: Memory,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    read_buf: Vec<u8>,
    shutdown: Arc<AtomicBool>,
    waker: Arc<Waker>,
    /// What the loops of one process share (one loop: its own).
    shared: Shared,
    inbox_tx: SyncSender<Job<H>>,
    inbox: Receiver<Job<H>>,
    /// The last turn ran a full batch of jobs: poll without waiting.
    inbox_backlog: bool,
    /// The handler asked to come back soon ([`Handler::end_of_turn`]).
    handler_retry: bool,
    stats: Arc<ServerStats>,
    /// The engine configuration, shared by every connection.
    engine_config: Arc<Config>,
    /// Reused lists (no allocation per loop turn).
    readable: Vec<usize>,
    scratch: Vec<usize>,
}

impl<H: Handler> std::fmt::Debug for Server<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("local_addr", &self.local_addr).field("connections", &self.conns.live()).finish_non_exhaustive()
    }
}

impl<H: Handler> Server<H> {
    /// Binds `addr` and prepares the loop. Fails with `InvalidInput` when the engine
    /// delivers frames ([`Delivery::Frames`]) and the handler does not handle them.
    pub fn bind(addr: SocketAddr, cfg: ServerConfig, handler: H) -> io::Result<Self> {
        Self::with_listener(TcpListener::bind(addr)?, cfg, handler, Shared::default())
    }

    /// A loop on a listener already bound (one of a group's, with `SO_REUSEPORT`).
    pub(crate) fn with_listener(mut listener: TcpListener, cfg: ServerConfig, handler: H, shared: Shared) -> io::Result<Self> {
        if cfg.engine.delivery == Delivery::Frames && !H::HANDLES_FRAMES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the engine delivers frames (Delivery::Frames) but the handler does not handle them (Handler::HANDLES_FRAMES)",
            ));
        }
        let poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let admin = match cfg.admin_listen {
            Some(a) => {
                let mut l = TcpListener::bind(a).map_err(|e| io::Error::new(e.kind(), format!("admin address {a}: {e}")))?;
                poll.registry().register(&mut l, ADMIN, Interest::READABLE)?;
                Some(l)
            }
            None => None,
        };
        // Plain HTTP requests reach the server (health, metrics) and the handler (pages).
        let engine_config = Config { plain_http: true, ..cfg.engine.clone() };
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stats = Arc::new(ServerStats::default());
        shared.siblings.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(stats.clone());
        let (inbox_tx, inbox) = sync_channel(INBOX_CAPACITY);
        Ok(Self {
            local_addr: listener.local_addr()?,
            poll,
            listener: Some(listener),
            admin,
            draining: false,
            admin_live: 0,
            counts: TurnCounts::default(),
            read_buf: vec![0; cfg.read_buffer_size.max(1024)],
            engine_config: Arc::new(engine_config),
            policy: Policy::new(&cfg, stats.clone()),
            cfg,
            handler,
            conns: Conns::default(),
            pool: Pool::default(),
            memory: Memory::default(),
            timers: BinaryHeap::new(),
            shutdown: shared.shutdown.clone(),
            waker,
            shared,
            inbox_tx,
            inbox,
            inbox_backlog: false,
            handler_retry: false,
            stats,
            readable: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// The address the server listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin address ([`ServerConfig::admin_listen`]), once bound.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// A handle that stops the server from another thread (for the loops of a
    /// [`crate::net::ServerGroup`], use the group's: this one wakes only this loop).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle { flag: self.shutdown.clone(), wakers: vec![self.waker.clone()] }
    }

    /// The largest message the loop's connections accept.
    pub(crate) fn max_message_size(&self) -> usize {
        self.cfg.engine.max_message_size
    }

    /// A handle that runs work on the loop from other threads.
    pub fn inbox(&self) -> Inbox<H> {
        Inbox { tx: self.inbox_tx.clone(), waker: self.waker.clone(), stats: self.stats.clone() }
    }

    /// Live counters, shareable with other threads.
    pub fn stats(&self) -> Arc<ServerStats> {
        self.stats.clone()
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The handler, to set it up before `run` (a relay's bus, say).
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }

    /// The waker of this loop (a group's shutdown handle wakes every loop).
    pub(crate) fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// Number of connections currently held (any state), the admin address's aside.
    pub fn connections(&self) -> usize {
        self.conns.live() - self.admin_live
    }

    /// Runs until shut down through a [`ShutdownHandle`]; returns after the graceful close.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut shutdown_deadline: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if shutdown_deadline.is_none() && self.shutdown.load(Ordering::SeqCst) {
                shutdown_deadline = Some(self.begin_shutdown(now));
                self.flush_dirty(now);
                self.counts.publish(&self.stats);
            }
            if let Some(deadline) = shutdown_deadline {
                if self.connections() == 0 || now >= deadline {
                    info!("shutdown complete ({} connections left)", self.connections());
                    self.drop_all(now);
                    self.counts.publish(&self.stats);
                    return Ok(());
                }
            }
            let mut timeout = self.timers.peek().map(|Reverse((t, _))| t.saturating_duration_since(now));
            if let Some(d) = shutdown_deadline {
                let left = d.saturating_duration_since(now);
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            if !self.conns.reads.is_empty() || self.inbox_backlog {
                timeout = Some(Duration::ZERO);
            } else if self.handler_retry {
                timeout = Some(timeout.map_or(RETRY_SOON, |t| t.min(RETRY_SOON)));
            }
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.drop_all(Instant::now());
                    self.counts.publish(&self.stats);
                    return Err(e);
                }
            }
            let now = Instant::now();
            self.run_inbox(now);
            let mut readable = std::mem::take(&mut self.readable);
            std::mem::swap(&mut readable, &mut self.conns.reads);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(now, false),
                    ADMIN => self.accept_all(now, true),
                    WAKER => {}
                    Token(i) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            readable.push(i);
                        }
                        if event.is_writable() {
                            self.conns.mark(i);
                        }
                    }
                }
            }
            readable.sort_unstable();
            readable.dedup();
            for &i in &readable {
                self.read_conn(i, now);
            }
            readable.clear();
            self.readable = readable;
            self.run_timers(now);
            self.flush_dirty(now);
            self.end_turn(now);
            self.counts.publish(&self.stats);
        }
    }

    /// Lets the handler act once per turn, after the writes ([`Handler::end_of_turn`]),
    /// and writes what it queued.
    fn end_turn(&mut self, now: Instant) {
        let mut ctx = Ctx { conns: &mut self.conns, now, policy: &self.policy, counts: &mut self.counts, pool: &mut self.pool };
        self.handler_retry = self.handler.end_of_turn(&mut ctx);
        if self.conns.has_dirty() {
            self.flush_dirty(now);
        }
    }

    /// Runs the jobs other threads sent, at most a channel's worth per turn so that
    /// producers cannot starve reads, timers and writes; the rest wait one turn.
    fn run_inbox(&mut self, now: Instant) {
        let mut ran = 0;
        while ran < INBOX_CAPACITY {
            let Ok(job) = self.inbox.try_recv() else { break };
            job(
                &mut self.handler,
                &mut Ctx { conns: &mut self.conns, now, policy: &self.policy, counts: &mut self.counts, pool: &mut self.pool },
            );
            ran += 1;
        }
        self.inbox_backlog = ran == INBOX_CAPACITY;
    }

    /// Accepts every waiting connection on the public listener, or on the admin one.
    fn accept_all(&mut self, now: Instant, admin: bool) {
        loop {
            let listener = if admin { self.admin.as_ref() } else { self.listener.as_ref() };
            let Some(listener) = listener else { return };
            match listener.accept() {
                Ok((stream, peer)) if admin => {
                    if self.admin_live >= ADMIN_MAX_CONNECTIONS {
                        warn!("[{peer}] admin address: at its limit of {ADMIN_MAX_CONNECTIONS} connections");
                        continue;
                    }
                    let _ = self.register(Socket::new(stream), peer, now, true);
                }
                Ok((stream, peer)) => {
                    self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                    // The slot is taken before the check, so loops accepting at once
                    // cannot pass the process's limit together.
                    if self.policy.at_connection_limit(self.shared.connections.fetch_add(1, Ordering::Relaxed)) {
                        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
                        // Counted before the answer, which the client may see at once.
                        self.stats.refused.fetch_add(1, Ordering::Relaxed);
                        refuse_overloaded(stream, peer, self.cfg.max_connections);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let registered = self.transport_for(stream, peer).is_some_and(|socket| self.register(socket, peer, now, false));
                    if !registered {
                        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // E.g. EMFILE: log it and try again on the next readiness.
                    warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Takes a new connection into the table and the poll (or drops it if it cannot
    /// be registered).
    /// (A public connection's place in the process's count is taken by the caller.)
    fn register(&mut self, socket: Socket, peer: SocketAddr, now: Instant, admin: bool) -> bool {
        let engine = Connection::server(self.engine_config.clone(), now);
        let id = self.conns.insert(Conn::new(socket, engine, peer, now, admin));
        let slot = id.slot as usize;
        let Some(conn) = self.conns.at(slot) else { return false };
        if let Err(e) = self.poll.registry().register(&mut conn.socket.stream, Token(slot), Interest::READABLE) {
            warn!("[{peer}] register failed: {e}");
            self.conns.remove(slot);
            return false;
        }
        if admin {
            self.admin_live += 1;
        }
        self.stats.connections.store(self.connections(), Ordering::Relaxed);
        debug!("[{peer}] accepted");
        // Edge-triggered: data may already be waiting.
        self.conns.reads.push(slot);
        self.conns.mark(slot);
        true
    }

    /// The socket for a new connection: plain, or under TLS when configured.
    fn transport_for(&self, stream: mio::net::TcpStream, peer: SocketAddr) -> Option<Socket> {
        #[cfg(feature = "tls")]
        if let Some(acceptor) = &self.cfg.tls {
            return match acceptor.accept() {
                Ok(tls) => Some(Socket::with_tls(stream, tls)),
                Err(e) => {
                    warn!("[{peer}] TLS setup failed: {e}");
                    None
                }
            };
        }
        let _ = peer;
        Some(Socket::new(stream))
    }

    fn read_conn(&mut self, i: usize, now: Instant) {
        for _ in 0..READ_BUDGET {
            let (total_pinned, read_len) = (self.memory.pinned, self.read_buf.len());
            let Some(conn) = self.conns.at(i) else { return };
            if conn.socket.eof {
                return;
            }
            let lingering = conn.socket.lingering;
            if !lingering {
                if !self.policy.read_allowed(conn) {
                    conn.read_blocked = true;
                    self.conns.mark(i);
                    return;
                }
                if !self.policy.read_fits(conn, total_pinned, read_len) {
                    self.memory.block(i);
                    return;
                }
            }
            match conn.socket.read_once(&mut self.read_buf) {
                Read1::WouldBlock => {
                    // TLS: what was read may call for records in reply (handshake).
                    if conn.socket.tls.is_some() {
                        self.conns.mark(i);
                    }
                    return;
                }
                Read1::Data(_) if lingering => {}
                Read1::Data(n) => {
                    // Lend pooled buffers for the messages of this read (and for the
                    // output), and take back what was not used: idle connections hold none.
                    self.pool.lend(conn);
                    conn.engine.handle_bytes(now, &self.read_buf[..n]);
                    self.dispatch(now, i);
                    if let Some(conn) = self.conns.at(i) {
                        self.pool.take_back(conn);
                        self.memory.update(conn, &self.stats);
                    }
                }
                Read1::Eof => {
                    #[cfg(feature = "tls")]
                    if let Some(e) = conn.socket.tls_error() {
                        debug!("[{}] TLS: {}", conn.peer, crate::net::tls::describe(e));
                    }
                    if !lingering {
                        conn.engine.handle_eof(now);
                        self.dispatch(now, i);
                    }
                    self.conns.mark(i);
                    return;
                }
            }
        }
        self.conns.reads.push(i);
    }

    fn run_timers(&mut self, now: Instant) {
        while let Some(&Reverse((t, i))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.conns.at(i) else { continue };
            if conn.timer != Some(t) {
                continue; // superseded (an earlier deadline took its place, or the slot was reused)
            }
            conn.timer = None;
            if conn.drop_at.is_some_and(|d| d <= now) {
                if conn.engine.state() != State::Closed {
                    conn.engine.abort();
                    self.dispatch(now, i);
                }
                self.remove(i);
                continue;
            }
            conn.engine.handle_timeout(now);
            self.dispatch(now, i);
        }
    }

    fn flush_dirty(&mut self, now: Instant) {
        // Two lists swapped back and forth: no allocation per turn.
        let mut batch = std::mem::take(&mut self.scratch);
        while self.conns.has_dirty() {
            self.conns.take_dirty(&mut batch);
            batch.sort_unstable();
            // Handlers may touch more connections while these settle (on_close).
            for &i in &batch {
                self.settle(i, now);
            }
            batch.clear();
        }
        self.scratch = batch;
        if let Some(blocked) = self.memory.unblocked() {
            self.conns.reads.extend(blocked);
        }
    }

    /// Writes a connection's output, applies the budgets, updates its interest and
    /// timer, and drops it if done.
    fn settle(&mut self, i: usize, now: Instant) {
        let (linger, close_timeout) = (self.cfg.linger, self.cfg.engine.close_timeout);
        let Some(conn) = self.conns.at(i) else { return };
        // Payloads the flush finishes come back as spare buffers: into a pooled list.
        self.pool.lend_spare_list(conn);
        if !conn.socket.lingering && conn.socket.flush(&mut conn.engine).is_err() {
            conn.socket.eof = true;
            conn.engine.abort();
            self.dispatch(now, i);
        }
        let Some(conn) = self.conns.at(i) else { return };
        self.pool.take_back(conn);
        self.memory.update(conn, &self.stats);
        if self.policy.enforce_connection_budget(conn, now) {
            self.dispatch(now, i);
        }
        let Some(conn) = self.conns.at(i) else { return };
        let closed = conn.engine.state() == State::Closed;
        if closed && conn.socket.eof {
            // The peer is gone; a TLS session still gets our close_notify, as the socket takes it.
            conn.socket.end_session();
            return self.remove(i);
        }
        // Under TLS the write side is shut once close_notify has left too.
        if closed && !conn.socket.has_output(&conn.engine) && !conn.socket.lingering && conn.socket.end_session() {
            conn.socket.shutdown_write();
            conn.drop_at = Some(now + linger);
            // The peer's FIN may already be waiting.
            self.conns.reads.push(i);
        } else if closed && conn.drop_at.is_none() {
            // Output that will not drain gets a bounded time, then the socket is dropped.
            conn.drop_at = Some(now + linger.max(close_timeout));
        }
        let Some(conn) = self.conns.at(i) else { return };
        self.policy.relieve(conn);
        if conn.read_blocked && self.policy.read_allowed(conn) {
            conn.read_blocked = false;
            self.conns.reads.push(i);
        }
        let Some(conn) = self.conns.at(i) else { return };
        // WRITABLE interest only while output is pending.
        let want_write = conn.socket.has_output(&conn.engine) && !conn.socket.lingering;
        if want_write != conn.socket.want_write {
            let interest = if want_write { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            if self.poll.registry().reregister(&mut conn.socket.stream, Token(i), interest).is_ok() {
                conn.socket.want_write = want_write;
            }
        }
        let deadline = match (conn.engine.poll_timeout(), conn.drop_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // One live heap entry per connection: a deadline that moved later (the idle
        // timeout after every read) keeps the earlier entry, which wakes the loop once,
        // finds nothing due, and is replaced; only an earlier deadline adds an entry.
        if let Some(d) = deadline {
            if conn.timer.is_none_or(|t| d < t) {
                conn.timer = Some(d);
                self.timers.push(Reverse((d, i)));
            }
        }
    }

    /// Drops connection `i`'s socket. Events it still holds (an abort by the
    /// slow-consumer policy, say) reach the handler first, so `on_close` is never lost.
    fn remove(&mut self, i: usize) {
        if self.conns.at(i).is_some_and(|c| c.requested) {
            self.dispatch(Instant::now(), i);
        }
        if let Some(mut conn) = self.conns.remove(i) {
            if conn.admin {
                self.admin_live -= 1;
            } else {
                self.shared.connections.fetch_sub(1, Ordering::Relaxed);
            }
            self.memory.forget(&conn, &self.stats);
            let _ = self.poll.registry().deregister(&mut conn.socket.stream);
            self.stats.connections.store(self.connections(), Ordering::Relaxed);
            debug!("[{}] socket closed", conn.peer);
        }
    }

    /// The shutdown deadline passed: every connection still held is aborted (its
    /// handler hears of it) and dropped.
    fn drop_all(&mut self, now: Instant) {
        for i in 0..self.conns.slots() {
            let Some(conn) = self.conns.at(i) else { continue };
            conn.engine.abort();
            self.dispatch(now, i);
            self.remove(i);
        }
        self.conns.clear_dirty();
    }

    fn begin_shutdown(&mut self, now: Instant) -> Instant {
        info!("shutting down: closing {} connections with 1001", self.connections());
        self.draining = true;
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        for i in 0..self.conns.slots() {
            let Some(conn) = self.conns.at(i) else { continue };
            if conn.admin {
                continue; // answered as usual (/healthz: 503)
            }
            match conn.engine.state() {
                State::Open => {
                    let _ = conn.engine.close(now, CloseCode::GOING_AWAY, "server shutting down");
                }
                State::Connecting => conn.engine.abort(),
                _ => {}
            }
            self.dispatch(now, i);
        }
        now + self.cfg.shutdown_timeout
    }

    /// Hands connection `i`'s pending events to the handler, answering handshakes
    /// (after the origin policy) and giving message buffers back to the pool.
    fn dispatch(&mut self, now: Instant, i: usize) {
        let id = self.conns.id(i);
        self.conns.mark(i);
        loop {
            let Some(conn) = self.conns.at(i) else { return };
            let peer = conn.peer;
            let Some(event) = conn.engine.poll_event() else { return };
            let (admin, since) = (conn.admin, conn.since);
            let handler = &mut self.handler;
            let mut ctx = Ctx { conns: &mut self.conns, now, policy: &self.policy, counts: &mut self.counts, pool: &mut self.pool };
            match event {
                Event::Request(req) => {
                    let decision = if admin {
                        Err(Reject::new(404).body("the admin address serves /metrics and /healthz only\n"))
                    } else if let Err(r) = self.policy.check_origin(&req) {
                        self.stats.rejected_origin.fetch_add(1, Ordering::Relaxed);
                        Err(r)
                    } else {
                        if let Some(c) = ctx.conns.at(i) {
                            c.requested = true;
                        }
                        let decision = handler.on_request(id, peer, &req);
                        if let Err(r) = &decision {
                            self.stats.rejected_handler.add(r.status());
                        }
                        decision
                    };
                    let Some(conn) = ctx.conns.at(i) else { return };
                    answer_request(&mut conn.engine, now, peer, &req.target, decision);
                }
                Event::HttpRequest(req) => {
                    let response = if admin {
                        http::admin_answer(&req, self.draining, || self.metrics_page())
                    } else {
                        http::public_answer(&req, |req| handler.on_http(id, peer, req))
                    };
                    let Some(conn) = self.conns.at(i) else { return };
                    let status = match conn.engine.respond(&response) {
                        Ok(()) => response.status(),
                        Err(e) => {
                            warn!("[{peer}] HTTP answer failed: {e}");
                            let _ = conn.engine.respond(&Reject::new(500));
                            500
                        }
                    };
                    debug!("[{peer}] {} {} -> {status}", req.method, req.target);
                    // Scrapes and probes of the admin address are not the public's traffic.
                    if !admin {
                        self.stats.http_responses.add(status);
                    }
                }
                Event::Open { .. } => {
                    self.stats.opened.fetch_add(1, Ordering::Relaxed);
                    self.stats.handshake_latency.observe(now.saturating_duration_since(since));
                    info!("[{peer}] connected");
                    handler.on_open(&mut ctx, id);
                }
                Event::Text(text) => {
                    ctx.counts.received(text.len());
                    let back = handler.on_message_owned(&mut ctx, id, MessageKind::Text, text.into_bytes());
                    self.pool.give_back(back);
                }
                Event::Binary(data) => {
                    ctx.counts.received(data.len());
                    let back = handler.on_message_owned(&mut ctx, id, MessageKind::Binary, data);
                    self.pool.give_back(back);
                }
                Event::Frame { kind, data, fin } => {
                    if fin {
                        ctx.counts.received(0);
                    }
                    ctx.counts.received_bytes(data.len());
                    handler.on_frame(&mut ctx, id, kind, &data, fin);
                    self.pool.give_back(Some(data));
                }
                Event::Ping(payload) => handler.on_ping(&mut ctx, id, &payload),
                Event::Pong { payload, rtt } => handler.on_pong(&mut ctx, id, &payload, rtt),
                Event::Closed(closed) => {
                    self.stats.count_closes(&closed);
                    match handshake_refusal(&closed) {
                        Some(status) if !admin => self.stats.rejected_handshake.add(status),
                        _ => {}
                    }
                    let requested = ctx.conns.at(i).is_some_and(|c| c.requested);
                    match &closed.error {
                        Some(err) => info!("[{peer}] disconnected: {} {:?} ({err})", closed.code(), closed.reason()),
                        // A plain HTTP exchange (a page, a probe, a scrape) is no disconnection.
                        None if !requested => debug!("[{peer}] HTTP exchange done"),
                        None => info!("[{peer}] disconnected: {} {:?}", closed.code(), closed.reason()),
                    }
                    if ctx.conns.at(i).is_some_and(|c| std::mem::take(&mut c.requested)) {
                        handler.on_close(&mut ctx, id, &closed);
                    }
                }
            }
        }
    }
}

impl<H: Handler> Server<H> {
    /// The admin address's `/metrics` page: the counters of every loop of the process,
    /// summed, then the handler's.
    fn metrics_page(&self) -> Metrics {
        let mut m = Metrics::new();
        let total = {
            let siblings = self.shared.siblings.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            ServerStats::sum(siblings.iter().map(|s| &**s))
        };
        total.write_metrics(&mut m);
        self.handler.metrics(&mut m);
        m
    }
}

/// The status the engine answered a failed handshake with, if it answered.
fn handshake_refusal(closed: &Closed) -> Option<u16> {
    match &closed.error {
        Some(ProtocolError::Handshake(e)) => e.http_status(),
        _ => None,
    }
}

/// Overload shedding at the connection limit: a best-effort fixed answer, then close.
fn refuse_overloaded(stream: mio::net::TcpStream, peer: SocketAddr, limit: usize) {
    use std::io::Write;
    let mut s = stream;
    let _ = s.write(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    let _ = s.shutdown(std::net::Shutdown::Write);
    warn!("[{peer}] refused: at the limit of {limit} connections");
}

/// Writes the handler's (or the origin policy's) answer to a handshake.
fn answer_request(engine: &mut Connection, now: Instant, peer: SocketAddr, target: &str, decision: Result<crate::Accept, Reject>) {
    match decision {
        Ok(accept) => {
            if let Err(e) = engine.accept(now, accept) {
                warn!("[{peer}] accept failed: {e}");
                let _ = engine.reject(&Reject::new(500));
            }
        }
        Err(r) => {
            info!("[{peer}] rejected with {} for {target}", r.status());
            if let Err(e) = engine.reject(&r) {
                warn!("[{peer}] rejection failed: {e}");
                let _ = engine.reject(&Reject::new(500));
            }
        }
    }
}
