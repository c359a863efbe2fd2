//! The server event loop: accepting, reading, timers, flushing, shutdown, and the
//! policies around the engines (connection limit, origin allow-list, backpressure and
//! slow consumers). What to do with messages is a [`Handler`]'s business.
//!
//! Each loop turn, in a fixed order: read the clock once; `poll` until the earliest
//! deadline; read every ready socket until `WouldBlock` and hand the events to the
//! handler (which may queue frames on other connections); let expired deadlines act;
//! then write every touched connection's output (one `writev` per socket per turn when
//! it all fits) and drop the connections that are finished.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::net::conn::{Read1, Socket};
use crate::{Accept, CloseCode, Closed, Config, Connection, Event, MessageKind, Request, SharedFrame, State};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
/// Reads per connection per turn before others get their turn.
const READ_BUDGET: usize = 16;
/// Under memory pressure, connections pinning less than this may still read.
const SMALL_PIN: usize = 16 * 1024;
/// Most buffers kept in the shared pool, and the largest kept.
const POOL_BUFFERS: usize = 256;
const POOL_BUFFER_MAX: usize = 1 << 20;
/// Most bytes the two pools keep together (bulk traffic reuses large buffers instead of
/// faulting fresh pages in for every message; idle connections still hold none).
const POOL_BYTES_MAX: usize = 32 << 20;
/// Message buffers lent to a connection for one read.
const LEND_PER_READ: usize = 16;

/// Identifies a connection within one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(usize);

/// What the server does with a connection whose outgoing buffer passes the high-water mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowConsumerPolicy {
    /// Send a close frame with this code (behind what is queued), queue nothing more
    /// for it, and drop it when the close timeout passes.
    Close(CloseCode),
    /// Drop the connection at once, discarding what is queued.
    Drop,
}

/// Server settings around the engines.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The engine configuration of every connection.
    pub protocol: Config,
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            protocol: Config::default(),
            read_buffer_size: 64 * 1024,
            max_connections: 10_000,
            high_water_mark: 8 << 20,
            slow_consumer: SlowConsumerPolicy::Close(CloseCode::POLICY_VIOLATION),
            allowed_origins: None,
            shutdown_timeout: Duration::from_secs(5),
            linger: Duration::from_secs(2),
            max_connection_memory: None,
            max_total_memory: 1 << 30,
        }
    }
}

/// The application side of a server: decides on handshakes and reacts to messages.
pub trait Handler {
    /// Decides on a valid handshake request. The default accepts it as is.
    fn on_request(&mut self, _id: ConnId, _peer: SocketAddr, _req: &Request) -> Result<Accept, Rejection> {
        Ok(Accept::new())
    }
    /// The connection is open.
    fn on_open(&mut self, _ctx: &mut Ctx<'_>, _id: ConnId) {}
    /// A whole message arrived. `data` is only borrowed: its buffer is reused.
    fn on_message(&mut self, ctx: &mut Ctx<'_>, id: ConnId, kind: MessageKind, data: &[u8]);
    /// A whole message arrived, owned. The default lends it to [`Handler::on_message`]
    /// and returns the buffer for reuse; a handler that passes the buffer on (see
    /// [`Ctx::send_owned`]) returns `None`.
    fn on_message_owned(&mut self, ctx: &mut Ctx<'_>, id: ConnId, kind: MessageKind, data: Vec<u8>) -> Option<Vec<u8>> {
        self.on_message(ctx, id, kind, &data);
        Some(data)
    }
    /// The connection is over (called once, for connections that were opened).
    fn on_close(&mut self, _ctx: &mut Ctx<'_>, _id: ConnId, _closed: &Closed) {}
}

/// A handshake refusal: HTTP status and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The HTTP status (4xx or 5xx).
    pub status: u16,
    /// The response body.
    pub body: String,
}

struct Entry {
    socket: Socket,
    engine: Connection,
    peer: SocketAddr,
    paused: bool,
    opened: bool,
    /// Over the high-water mark: nothing more is queued for it.
    congested: bool,
    /// Reading was skipped (paused, or its own output over the mark): edge-triggered
    /// readiness will not fire again for data already waiting, so read when unblocked.
    read_blocked: bool,
    /// When a finished connection is dropped regardless of its peer.
    drop_at: Option<Instant>,
    /// The deadline last pushed on the timer heap.
    timer: Option<Instant>,
    /// Bytes pinned at the last settle (counted in `Table::pinned`).
    pinned: usize,
}

/// The parts of the server a handler may touch.
struct Table {
    conns: Vec<Option<Entry>>,
    /// Connections touched this turn: flushed at the end of it.
    dirty: Vec<usize>,
    /// Connections to read next turn (budget ran out, resumed, newly accepted).
    reads: Vec<usize>,
    stats: Arc<ServerStats>,
    /// Message buffers shared by all connections (idle connections hold none).
    pool: Vec<Vec<u8>>,
    /// Output buffers shared likewise.
    out_pool: Vec<Vec<u8>>,
    /// Bytes held by both pools.
    pool_bytes: usize,
    /// Sum of every connection's pinned bytes.
    pinned: usize,
    /// Connections not read from because the process-wide budget was exceeded.
    memory_blocked: Vec<usize>,
    /// The total pinned when they were blocked: they are retried once it falls.
    blocked_at: Option<usize>,
}

impl Table {
    fn get(&mut self, i: usize) -> Option<&mut Entry> {
        self.conns.get_mut(i).and_then(Option::as_mut)
    }

    /// Returns a message buffer to the shared pool.
    fn give_back(&mut self, buf: Option<Vec<u8>>) {
        if let Some(buf) = buf {
            pool_put(&mut self.pool, &mut self.pool_bytes, buf);
        }
    }

    /// Lends pooled buffers to connection `i` before a read: message buffers for the
    /// messages it may complete, and an output buffer if it has none.
    fn lend_buffers(&mut self, i: usize) {
        let Table { conns, pool, out_pool, pool_bytes, .. } = self;
        let Some(entry) = conns.get_mut(i).and_then(Option::as_mut) else { return };
        for buf in pool.drain(pool.len().saturating_sub(LEND_PER_READ)..) {
            *pool_bytes -= buf.capacity();
            entry.engine.recycle(buf);
        }
        if entry.engine.bytes_to_write() == 0 {
            if let Some(buf) = out_pool.pop() {
                *pool_bytes -= buf.capacity();
                entry.engine.lend_output_buffer(buf);
            }
        }
    }

    /// Takes back what connection `i` does not use: spare message buffers, and its
    /// output buffer once nothing is queued (idle connections hold none).
    fn take_back_buffers(&mut self, i: usize) {
        let Table { conns, pool, out_pool, pool_bytes, .. } = self;
        let Some(entry) = conns.get_mut(i).and_then(Option::as_mut) else { return };
        while let Some(buf) = entry.engine.take_spare() {
            pool_put(pool, pool_bytes, buf);
        }
        if let Some(buf) = entry.engine.reclaim_output_buffer() {
            pool_put(out_pool, pool_bytes, buf);
        }
    }

    /// Re-counts what connection `i` pins.
    fn update_pinned(&mut self, i: usize) {
        let Some(entry) = self.conns.get_mut(i).and_then(Option::as_mut) else { return };
        let now = entry.engine.buffered_bytes();
        self.pinned = self.pinned + now - entry.pinned;
        entry.pinned = now;
        self.stats.pinned_bytes.store(self.pinned, Ordering::Relaxed);
        self.stats.peak_pinned_bytes.fetch_max(self.pinned, Ordering::Relaxed);
    }
}

/// Access to the server's connections from inside a [`Handler`].
pub struct Ctx<'a> {
    table: &'a mut Table,
    now: Instant,
    cfg: &'a ServerConfig,
}

impl Ctx<'_> {
    fn entry(&self, id: ConnId) -> Option<&Entry> {
        self.table.conns.get(id.0).and_then(Option::as_ref)
    }

    /// The time this loop turn started.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Sends a message to `id` (copied once into its output). Returns false if the
    /// connection is gone, not open, or congested.
    pub fn send(&mut self, id: ConnId, kind: MessageKind, data: &[u8]) -> bool {
        self.queue(id, |e| e.send(kind, data).is_ok())
    }

    /// Sends a message whose buffer is handed over (no copy; the buffer is reused once
    /// written). Same result as `send`.
    pub fn send_owned(&mut self, id: ConnId, kind: MessageKind, data: Vec<u8>) -> bool {
        self.queue(id, move |e| e.send_owned(kind, data).is_ok())
    }

    /// Queues a frame encoded once for many recipients (no copy). Same result as `send`.
    pub fn send_shared(&mut self, id: ConnId, frame: &SharedFrame) -> bool {
        self.queue(id, |e| e.send_shared(frame).is_ok())
    }

    fn queue(&mut self, id: ConnId, f: impl FnOnce(&mut Connection) -> bool) -> bool {
        let (hwm, policy, now) = (self.cfg.high_water_mark, self.cfg.slow_consumer, self.now);
        let Table { conns, dirty, stats, .. } = &mut *self.table;
        let Some(entry) = conns.get_mut(id.0).and_then(Option::as_mut) else { return false };
        if entry.congested {
            return false;
        }
        // A backlog over the mark (not one large message onto an empty queue) marks a
        // slow consumer: its memory is bounded by the mark plus one message.
        if entry.engine.bytes_to_write() > hwm {
            entry.congested = true;
            stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
            warn!("[{}] slow consumer: {} bytes queued, policy {:?}", entry.peer, entry.engine.bytes_to_write(), policy);
            match policy {
                SlowConsumerPolicy::Close(code) => {
                    let _ = entry.engine.close(now, code, "slow consumer");
                }
                SlowConsumerPolicy::Drop => entry.engine.abort(),
            }
            dirty.push(id.0);
            return false;
        }
        let ok = f(&mut entry.engine);
        dirty.push(id.0);
        ok
    }

    /// Starts the closing handshake with `id`.
    pub fn close(&mut self, id: ConnId, code: CloseCode, reason: &str) {
        let now = self.now;
        if let Some(e) = self.table.get(id.0) {
            let _ = e.engine.close(now, code, reason);
            self.table.dirty.push(id.0);
        }
    }

    /// Stops reading from `id` (Qt's pause mode); its peer meets TCP backpressure.
    pub fn pause(&mut self, id: ConnId) {
        if let Some(e) = self.table.get(id.0) {
            e.paused = true;
        }
    }

    /// Resumes reading from `id`.
    pub fn resume(&mut self, id: ConnId) {
        if let Some(e) = self.table.get(id.0) {
            e.paused = false;
            self.table.reads.push(id.0);
        }
    }

    /// Bytes queued for `id` (Qt's `bytesToWrite`).
    pub fn bytes_to_write(&self, id: ConnId) -> usize {
        self.entry(id).map_or(0, |e| e.engine.bytes_to_write())
    }

    /// The peer address of `id`.
    pub fn peer(&self, id: ConnId) -> Option<SocketAddr> {
        self.entry(id).map(|e| e.peer)
    }

    /// The engine of `id` (state, close codes, RTT ...).
    pub fn engine(&self, id: ConnId) -> Option<&Connection> {
        self.entry(id).map(|e| &e.engine)
    }
}

/// Counters a running server publishes, readable from any thread.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Sockets currently held (any state).
    pub connections: AtomicUsize,
    /// Connections whose handshake completed.
    pub opened: AtomicU64,
    /// TCP connections refused at the connection limit.
    pub refused: AtomicU64,
    /// Connections closed under the slow-consumer policy.
    pub slow_consumers: AtomicU64,
    /// Connections closed for passing the per-connection memory budget.
    pub over_budget: AtomicU64,
    /// Bytes all connections pin now (see [`ServerConfig::max_total_memory`]).
    pub pinned_bytes: AtomicUsize,
    /// The most bytes all connections pinned at once.
    pub peak_pinned_bytes: AtomicUsize,
}

impl ServerStats {
    /// Sockets currently held.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// Stops a running server from another thread (or a signal-handling thread).
#[derive(Clone)]
pub struct ShutdownHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl ShutdownHandle {
    /// Asks the server to shut down gracefully: stop accepting, send 1001 to every
    /// client, wait for their closes up to the shutdown timeout, then return from `run`.
    pub fn shutdown(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

/// A non-blocking WebSocket server on one thread.
pub struct Server<H: Handler> {
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    cfg: ServerConfig,
    handler: H,
    table: Table,
    free: Vec<usize>,
    live: usize,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    read_buf: Vec<u8>,
    shutdown: Arc<AtomicBool>,
    waker: Arc<Waker>,
    stats: Arc<ServerStats>,
    /// The engine configuration, shared by every connection.
    protocol: Arc<Config>,
    /// Reused lists (no allocation per loop turn).
    readable: Vec<usize>,
    scratch: Vec<usize>,
}

impl<H: Handler> Server<H> {
    /// Binds `addr` and prepares the loop.
    pub fn bind(addr: SocketAddr, cfg: ServerConfig, handler: H) -> io::Result<Self> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(addr)?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stats = Arc::new(ServerStats::default());
        let protocol = Arc::new(cfg.protocol.clone());
        Ok(Self {
            local_addr: listener.local_addr()?,
            poll,
            listener: Some(listener),
            read_buf: vec![0; cfg.read_buffer_size.max(1024)],
            cfg,
            handler,
            table: Table {
                conns: Vec::new(),
                dirty: Vec::new(),
                reads: Vec::new(),
                stats: stats.clone(),
                pool: Vec::new(),
                out_pool: Vec::new(),
                pool_bytes: 0,
                pinned: 0,
                memory_blocked: Vec::new(),
                blocked_at: None,
            },
            free: Vec::new(),
            live: 0,
            timers: BinaryHeap::new(),
            shutdown: Arc::new(AtomicBool::new(false)),
            waker,
            stats,
            readable: Vec::new(),
            scratch: Vec::new(),
            protocol,
        })
    }

    /// The address the server listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that stops the server from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle { flag: self.shutdown.clone(), waker: self.waker.clone() }
    }

    /// Live counters, shareable with other threads.
    pub fn stats(&self) -> Arc<ServerStats> {
        self.stats.clone()
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Number of connections currently held (any state).
    pub fn connections(&self) -> usize {
        self.live
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
            }
            if let Some(deadline) = shutdown_deadline {
                if self.live == 0 || now >= deadline {
                    info!("shutdown complete ({} connections left)", self.live);
                    return Ok(());
                }
            }
            let mut timeout = self.timers.peek().map(|Reverse((t, _))| t.saturating_duration_since(now));
            if let Some(d) = shutdown_deadline {
                let left = d.saturating_duration_since(now);
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            if !self.table.reads.is_empty() {
                timeout = Some(Duration::ZERO);
            }
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            let mut readable = std::mem::take(&mut self.readable);
            std::mem::swap(&mut readable, &mut self.table.reads);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(now),
                    WAKER => {}
                    Token(i) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            readable.push(i);
                        }
                        if event.is_writable() {
                            self.table.dirty.push(i);
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
        }
    }

    fn accept_all(&mut self, now: Instant) {
        loop {
            let Some(listener) = self.listener.as_ref() else { return };
            match listener.accept() {
                Ok((stream, peer)) => {
                    if self.live >= self.cfg.max_connections {
                        // Overload shedding: a best-effort fixed answer, then close.
                        use std::io::Write;
                        let mut s = stream;
                        let _ = s.write(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
                        let _ = s.shutdown(std::net::Shutdown::Write);
                        warn!("[{peer}] refused: at the limit of {} connections", self.cfg.max_connections);
                        self.stats.refused.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let idx = self.free.pop().unwrap_or_else(|| {
                        self.table.conns.push(None);
                        self.table.conns.len() - 1
                    });
                    let mut socket = Socket::new(stream);
                    if let Err(e) = self.poll.registry().register(&mut socket.stream, Token(idx), Interest::READABLE) {
                        warn!("[{peer}] register failed: {e}");
                        self.free.push(idx);
                        continue;
                    }
                    let engine = Connection::server(self.protocol.clone(), now);
                    self.table.conns[idx] = Some(Entry {
                        socket,
                        engine,
                        peer,
                        paused: false,
                        opened: false,
                        congested: false,
                        read_blocked: false,
                        drop_at: None,
                        timer: None,
                        pinned: 0,
                    });
                    self.live += 1;
                    self.stats.connections.store(self.live, Ordering::Relaxed);
                    debug!("[{peer}] accepted");
                    // Edge-triggered: data may already be waiting.
                    self.table.reads.push(idx);
                    self.table.dirty.push(idx);
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

    fn read_conn(&mut self, i: usize, now: Instant) {
        let (hwm, max_total) = (self.cfg.high_water_mark, self.cfg.max_total_memory);
        for _ in 0..READ_BUDGET {
            let total_pinned = self.table.pinned;
            let Some(entry) = self.table.get(i) else { return };
            if entry.socket.eof {
                return;
            }
            let lingering = entry.socket.lingering;
            if !lingering {
                // Pause mode, and backpressure: a connection that does not drain its
                // own output is not read from.
                if entry.paused || entry.engine.bytes_to_write() > hwm {
                    entry.read_blocked = true;
                    self.table.dirty.push(i);
                    return;
                }
                // The process-wide budget: a connection that pins much reads only if
                // what it may grow to (its buffer doubling, plus one read) still fits.
                if entry.pinned >= SMALL_PIN && total_pinned + entry.pinned + self.read_buf.len() > max_total {
                    self.table.memory_blocked.push(i);
                    self.table.blocked_at = Some(self.table.blocked_at.map_or(total_pinned, |b| b.min(total_pinned)));
                    return;
                }
            }
            match entry.socket.read_once(&mut self.read_buf) {
                Read1::WouldBlock => return,
                Read1::Data(_) if lingering => {}
                Read1::Data(n) => {
                    // Lend pooled buffers for the messages of this read (and for the
                    // output), and take back what was not used: idle connections hold none.
                    self.table.lend_buffers(i);
                    if let Some(entry) = self.table.get(i) {
                        entry.engine.handle_bytes(now, &self.read_buf[..n]);
                    }
                    dispatch(&mut self.handler, &mut self.table, &self.cfg, now, i);
                    self.table.take_back_buffers(i);
                    self.table.update_pinned(i);
                }
                Read1::Eof => {
                    if !lingering {
                        entry.engine.handle_eof(now);
                        dispatch(&mut self.handler, &mut self.table, &self.cfg, now, i);
                    }
                    self.table.dirty.push(i);
                    return;
                }
            }
        }
        self.table.reads.push(i);
    }

    fn run_timers(&mut self, now: Instant) {
        while let Some(&Reverse((t, i))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(entry) = self.table.get(i) else { continue };
            if entry.timer != Some(t) {
                continue; // superseded (an earlier deadline took its place, or the slot was reused)
            }
            entry.timer = None;
            if entry.drop_at.is_some_and(|d| d <= now) {
                if entry.engine.state() != State::Closed {
                    entry.engine.abort();
                    dispatch(&mut self.handler, &mut self.table, &self.cfg, now, i);
                }
                self.remove(i);
                continue;
            }
            entry.engine.handle_timeout(now);
            dispatch(&mut self.handler, &mut self.table, &self.cfg, now, i);
        }
    }

    fn flush_dirty(&mut self, now: Instant) {
        // Two lists swapped back and forth: no allocation per turn.
        let mut batch = std::mem::take(&mut self.scratch);
        while !self.table.dirty.is_empty() {
            std::mem::swap(&mut batch, &mut self.table.dirty);
            batch.sort_unstable();
            batch.dedup();
            // Handlers may touch more connections while these settle (on_close).
            for &i in &batch {
                self.settle(i, now);
            }
            batch.clear();
        }
        self.scratch = batch;
        if self.table.blocked_at.is_some_and(|at| self.table.pinned < at) {
            self.table.blocked_at = None;
            let blocked = std::mem::take(&mut self.table.memory_blocked);
            self.table.reads.extend(blocked);
        }
    }

    /// Writes a connection's output, updates its interest and timer, drops it if done.
    fn settle(&mut self, i: usize, now: Instant) {
        let (linger, close_timeout, hwm) = (self.cfg.linger, self.cfg.protocol.close_timeout, self.cfg.high_water_mark);
        let Some(entry) = self.table.get(i) else { return };
        if !entry.socket.lingering && entry.socket.flush(&mut entry.engine).is_err() {
            entry.socket.eof = true;
            entry.engine.abort();
            dispatch(&mut self.handler, &mut self.table, &self.cfg, now, i);
        }
        self.table.take_back_buffers(i);
        self.table.update_pinned(i);
        let budget = self.cfg.max_connection_memory.unwrap_or(self.cfg.protocol.max_message_size + hwm + (1 << 20));
        let Some(entry) = self.table.get(i) else { return };
        if entry.pinned > budget && entry.engine.state() == State::Open {
            warn!("[{}] pins {} bytes, over the budget of {budget}: closing", entry.peer, entry.pinned);
            let _ = entry.engine.close(now, CloseCode::POLICY_VIOLATION, "memory budget");
            self.table.stats.over_budget.fetch_add(1, Ordering::Relaxed);
            dispatch(&mut self.handler, &mut self.table, &self.cfg, now, i);
        }
        let Some(entry) = self.table.get(i) else { return };
        let closed = entry.engine.state() == State::Closed;
        if closed && entry.socket.eof {
            return self.remove(i);
        }
        if closed && entry.engine.bytes_to_write() == 0 && !entry.socket.lingering {
            entry.socket.shutdown_write();
            entry.drop_at = Some(now + linger);
            // The peer's FIN may already be waiting.
            self.table.reads.push(i);
        } else if closed && entry.drop_at.is_none() {
            // Output that will not drain gets a bounded time, then the socket is dropped.
            entry.drop_at = Some(now + linger.max(close_timeout));
        }
        let Some(entry) = self.table.get(i) else { return };
        if entry.congested && entry.engine.state() == State::Open && entry.engine.bytes_to_write() <= hwm / 2 {
            entry.congested = false;
        }
        if entry.read_blocked && !entry.paused && entry.engine.bytes_to_write() <= hwm {
            entry.read_blocked = false;
            self.table.reads.push(i);
        }
        let Some(entry) = self.table.get(i) else { return };
        // WRITABLE interest only while output is pending.
        let want_write = entry.engine.bytes_to_write() > 0 && !entry.socket.lingering;
        if want_write != entry.socket.want_write {
            let interest = if want_write { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            if self.poll.registry().reregister(&mut entry.socket.stream, Token(i), interest).is_ok() {
                entry.socket.want_write = want_write;
            }
        }
        let deadline = match (entry.engine.poll_timeout(), entry.drop_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // One live heap entry per connection: a deadline that moved later (the idle
        // timeout after every read) keeps the earlier entry, which wakes the loop once,
        // finds nothing due, and is replaced; only an earlier deadline adds an entry.
        if let Some(d) = deadline {
            if entry.timer.is_none_or(|t| d < t) {
                entry.timer = Some(d);
                self.timers.push(Reverse((d, i)));
            }
        }
    }

    fn remove(&mut self, i: usize) {
        if let Some(mut entry) = self.table.conns.get_mut(i).and_then(Option::take) {
            self.table.pinned -= entry.pinned;
            self.table.stats.pinned_bytes.store(self.table.pinned, Ordering::Relaxed);
            let _ = self.poll.registry().deregister(&mut entry.socket.stream);
            self.free.push(i);
            self.live -= 1;
            self.stats.connections.store(self.live, Ordering::Relaxed);
            debug!("[{}] socket closed", entry.peer);
        }
    }

    fn begin_shutdown(&mut self, now: Instant) -> Instant {
        info!("shutting down: closing {} connections with 1001", self.live);
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        for i in 0..self.table.conns.len() {
            let Some(entry) = self.table.get(i) else { continue };
            match entry.engine.state() {
                State::Open => {
                    let _ = entry.engine.close(now, CloseCode::GOING_AWAY, "server shutting down");
                }
                State::Connecting => entry.engine.abort(),
                _ => {}
            }
            dispatch(&mut self.handler, &mut self.table, &self.cfg, now, i);
        }
        now + self.cfg.shutdown_timeout
    }
}

/// Keeps `buf` in `pool` if it is worth keeping and the pools have room.
fn pool_put(pool: &mut Vec<Vec<u8>>, pool_bytes: &mut usize, mut buf: Vec<u8>) {
    let cap = buf.capacity();
    if cap > 0 && cap <= POOL_BUFFER_MAX && pool.len() < POOL_BUFFERS && *pool_bytes + cap <= POOL_BYTES_MAX {
        buf.clear();
        *pool_bytes += cap;
        pool.push(buf);
    }
}

/// Hands connection `i`'s pending events to the handler, answering handshakes (with the
/// origin policy) and giving message buffers back to the engine.
fn dispatch<H: Handler>(handler: &mut H, table: &mut Table, cfg: &ServerConfig, now: Instant, i: usize) {
    let id = ConnId(i);
    table.dirty.push(i);
    loop {
        let Some(entry) = table.get(i) else { return };
        let peer = entry.peer;
        let Some(event) = entry.engine.poll_event() else { return };
        match event {
            Event::Request(req) => {
                let origin_ok = match (&cfg.allowed_origins, req.origin()) {
                    (None, _) => true,
                    (Some(list), Some(o)) => list.iter().any(|a| a.eq_ignore_ascii_case(o)),
                    (Some(_), None) => false,
                };
                let decision = if origin_ok {
                    handler.on_request(id, peer, &req)
                } else {
                    Err(Rejection { status: 403, body: "origin not allowed".into() })
                };
                let engine = &mut entry.engine;
                match decision {
                    Ok(accept) => {
                        if let Err(e) = engine.accept(now, accept) {
                            warn!("[{peer}] accept failed: {e}");
                            let _ = engine.reject(500, &[], b"");
                        }
                    }
                    Err(r) => {
                        info!("[{peer}] rejected with {} for {}: {}", r.status, req.target, r.body);
                        if engine.reject(r.status, &[], r.body.as_bytes()).is_err() {
                            let _ = engine.reject(500, &[], b"");
                        }
                    }
                }
            }
            Event::Open { .. } => {
                entry.opened = true;
                table.stats.opened.fetch_add(1, Ordering::Relaxed);
                info!("[{peer}] connected");
                handler.on_open(&mut Ctx { table, now, cfg }, id);
            }
            Event::Text(text) => {
                let back = handler.on_message_owned(&mut Ctx { table, now, cfg }, id, MessageKind::Text, text.into_bytes());
                table.give_back(back);
            }
            Event::Binary(data) => {
                let back = handler.on_message_owned(&mut Ctx { table, now, cfg }, id, MessageKind::Binary, data);
                table.give_back(back);
            }
            Event::Frame { .. } | Event::Ping(_) | Event::Pong { .. } => {}
            Event::Closed(closed) => {
                let opened = entry.opened;
                match &closed.error {
                    Some(err) => info!("[{peer}] disconnected: {} {:?} ({err})", closed.code(), closed.reason()),
                    None => info!("[{peer}] disconnected: {} {:?}", closed.code(), closed.reason()),
                }
                if opened {
                    handler.on_close(&mut Ctx { table, now, cfg }, id, &closed);
                }
            }
        }
    }
}
