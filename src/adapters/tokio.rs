//! The tokio driver (feature `tokio`): the sans-IO [`Connection`] over any
//! [`AsyncRead`] + [`AsyncWrite`] stream, a TCP stream, a TLS stream or a connection
//! that hyper or axum upgraded.
//!
//! ```no_run
//! # async fn run() -> Result<(), rfc6455::DriverError> {
//! use rfc6455::{Config, Event, Message};
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9002").await?;
//! let (tcp, _) = listener.accept().await?;
//! let mut ws = rfc6455::tokio::WebSocket::accept(tcp, Config::default()).await?;
//! while let Some(event) = ws.next().await {
//!     match event? {
//!         Event::Text(text) => ws.send(Message::Text(text)).await?,
//!         Event::Binary(data) => ws.send(Message::Binary(data)).await?,
//!         Event::Closed(closed) => println!("closed: {}", closed.code()),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # How it drives the engine
//!
//! Everything happens inside `poll`: [`WebSocket::next`] writes what is queued (one
//! vectored write of up to 64 slices per call), fires the engine's deadlines from a
//! `tokio::time` sleep (keepalive pings, pong, idle, handshake and close timeouts),
//! reads into one 16 KiB buffer and hands the bytes to the engine; payloads are
//! moved out of the engine, never copied again. The engine's `now` is
//! `tokio::time::Instant::now()`, so paused test time drives it too.
//!
//! * **Batching.** `next` writes everything queued before it waits for input, so a
//!   loop that answers each event with [`WebSocket::feed`] sends all the answers to
//!   one read in one write; [`WebSocket::send`] writes at once.
//! * **Cancel safety.** [`WebSocket::next`] is cancel-safe: an event is taken from the
//!   engine only in the poll that returns it, so a `next()` dropped by `select!`
//!   loses nothing. [`WebSocket::send`] is not: dropped before completion, the
//!   message may or may not have been queued (as with any `Sink::send`).
//! * **Reading is required.** Pongs, the closing handshake and the timers run while
//!   the stream is read; a writer that never reads never learns that the peer closed.
//! * **Backpressure.** While more than [`WebSocket::set_write_buffer_limit`] bytes
//!   wait to be written, `send` waits for the socket and `next` stops reading (a peer
//!   that sends pings but never reads cannot grow our output without bound).
//! * **The end.** [`Event::Closed`] is the last item, after the close frame was
//!   written and the write side shut down; then `None`. An I/O error is returned
//!   once, followed by `Closed` (1006) and `None`.
//! * **Split.** [`WebSocket::split`] gives a reader and a writer for two tasks. They
//!   share the engine behind a mutex held only inside `poll`, never across `.await`.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker, ready};
use std::time::Instant;

use ::tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use ::tokio::net::TcpStream;
use ::tokio::time::Sleep;
use futures_core::{FusedStream, Stream};
use futures_sink::Sink;

use super::{DriverError, HandshakeStep, Message, client_never_decides, drive_handshake, stream_failed};
use crate::{Accept, ClientRequest, CloseCode, Closed, Config, Connection, Event, Negotiated, Reject, Request, Role};

/// Bytes read per `read` call.
const READ_BUFFER: usize = 16 * 1024;
/// Most slices handed to one vectored write.
const MAX_SLICES: usize = 64;
/// Default of [`WebSocket::set_write_buffer_limit`].
const DEFAULT_WRITE_LIMIT: usize = 1 << 20;

/// The engine's clock: tokio's, so that paused test time moves it.
fn now() -> Instant {
    ::tokio::time::Instant::now().into_std()
}

/// A WebSocket over a tokio stream. See the module docs.
pub struct WebSocket<S> {
    core: Core<S>,
}

impl<S> std::fmt::Debug for WebSocket<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket").field("core", &self.core).finish()
    }
}

/// The engine, its stream and the driver's state: what both halves share.
struct Core<S> {
    io: S,
    conn: Connection,
    buf: Box<[u8]>,
    timer: Pin<Box<Sleep>>,
    /// The deadline the timer is set to.
    timer_at: Option<Instant>,
    write_limit: usize,
    /// The engine reported `Closed`: flush, shut down, then return it.
    closing: Option<Box<Closed>>,
    /// `Closed` was returned: the stream has ended.
    finished: bool,
    /// When the last write and the shutdown after `Closed` are given up.
    finish_by: Option<Instant>,
}

impl<S> std::fmt::Debug for Core<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").field("conn", &self.conn).field("finished", &self.finished).finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Core<S> {
    fn new(io: S, conn: Connection) -> Self {
        Self {
            io,
            conn,
            buf: vec![0; READ_BUFFER].into_boxed_slice(),
            timer: Box::pin(::tokio::time::sleep_until(::tokio::time::Instant::now())),
            timer_at: None,
            write_limit: DEFAULT_WRITE_LIMIT,
            closing: None,
            finished: false,
            finish_by: None,
        }
    }

    /// Writes everything queued, then flushes the stream.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.bytes_to_write() > 0 {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let n = self.conn.output_vectored(&mut slices);
            let written = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.conn.consume_output(written);
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Writes everything queued for the application (send, flush, the sink): an I/O
    /// error ends the connection here, so that it is returned once and `next` then
    /// yields `Closed` (1006) and `None`.
    fn poll_flush_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), DriverError>> {
        match ready!(self.poll_write_out(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.conn.abort();
                }
                Poll::Ready(Err(e.into()))
            }
        }
    }

    /// One step of input: a deadline that passed, or one read. `Pending` when neither
    /// is ready (the waker is registered with both).
    fn poll_input(&mut self, cx: &mut Context<'_>, may_read: bool) -> Poll<io::Result<()>> {
        if let Some(at) = self.conn.poll_timeout() {
            if self.timer_at != Some(at) {
                self.timer.as_mut().reset(::tokio::time::Instant::from_std(at));
                self.timer_at = Some(at);
            }
            if self.timer.as_mut().poll(cx).is_ready() {
                self.timer_at = None;
                self.conn.handle_timeout(now());
                return Poll::Ready(Ok(()));
            }
        }
        if !may_read {
            return Poll::Pending;
        }
        let mut rb = ReadBuf::new(&mut self.buf);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
        match rb.filled() {
            [] => self.conn.handle_eof(now()),
            data => self.conn.handle_bytes(now(), data),
        }
        Poll::Ready(Ok(()))
    }

    /// The next event for the application (see the module docs).
    fn poll_next_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Event, DriverError>>> {
        loop {
            if self.finished {
                return Poll::Ready(None);
            }
            if self.closing.is_some() {
                return self.poll_finish(cx).map(|closed| Some(Ok(Event::Closed(closed))));
            }
            match self.conn.poll_event() {
                Some(Event::Closed(closed)) => self.closing = Some(closed),
                Some(Event::Open { .. } | Event::Request(_)) => {}
                Some(event) => return Poll::Ready(Some(Ok(event))),
                None => {
                    // Everything queued meanwhile (answers fed by the application,
                    // pongs) leaves in one write before waiting for input.
                    if let Poll::Ready(Err(e)) = self.poll_write_out(cx) {
                        if let Some(e) = self.stream_failed(e) {
                            return Poll::Ready(Some(Err(e)));
                        }
                        continue;
                    }
                    let may_read = self.conn.bytes_to_write() <= self.write_limit;
                    if let Err(e) = ready!(self.poll_input(cx, may_read)) {
                        if let Some(e) = self.stream_failed(e) {
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
            }
        }
    }

    /// See [`stream_failed`]: the error to return, if the failure is one.
    fn stream_failed(&mut self, e: io::Error) -> Option<DriverError> {
        stream_failed(&mut self.conn, e, now()).map(DriverError::Io)
    }

    /// After the engine's `Closed`: writes the rest (the close frame), shuts the write
    /// side down, and hands the report over once. Write errors no longer matter, and
    /// neither does a peer that stops reading: after `close_timeout` the rest is
    /// abandoned (no deadline of the engine's is left to wake us).
    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Box<Closed>> {
        let at = *self.finish_by.get_or_insert_with(|| now() + self.conn.config().close_timeout);
        let done = match self.poll_write_out(cx) {
            Poll::Ready(_) => Pin::new(&mut self.io).poll_shutdown(cx).map(|_| ()),
            Poll::Pending => Poll::Pending,
        };
        if done.is_pending() {
            if self.timer_at != Some(at) {
                self.timer.as_mut().reset(::tokio::time::Instant::from_std(at));
                self.timer_at = Some(at);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        self.finished = true;
        Poll::Ready(self.closing.take().expect("poll_finish runs only while closing"))
    }

    /// Writes what the stream takes now, without waiting for the rest (the next
    /// `next()` writes it). An I/O error ends the connection as in `poll_flush_out`.
    fn poll_try_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), DriverError>> {
        match self.poll_flush_out(cx) {
            Poll::Pending => Poll::Ready(Ok(())),
            ready => ready,
        }
    }

    /// Waits until the output is below the write limit (backpressure for senders).
    fn poll_send_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), DriverError>> {
        while self.conn.bytes_to_write() > self.write_limit {
            ready!(self.poll_flush_out(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Runs the opening handshake to its end: open (`Ok`) or failed, after writing
    /// the answer (a refusal, or nothing).
    async fn handshake<F: FnMut(&Request) -> Result<Accept, Reject>>(&mut self, decide: &mut F) -> Result<(), DriverError> {
        loop {
            match drive_handshake(&mut self.conn, now(), decide) {
                HandshakeStep::Open => {
                    poll_fn(|cx| self.poll_write_out(cx)).await?;
                    return Ok(());
                }
                HandshakeStep::Failed(e) => {
                    // The refusal goes out, unless the peer does not read it in time.
                    let limit = self.conn.config().close_timeout;
                    let answer = async {
                        let _ = poll_fn(|cx| self.poll_write_out(cx)).await;
                        let _ = poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await;
                    };
                    let _ = ::tokio::time::timeout(limit, answer).await;
                    return Err(e);
                }
                HandshakeStep::Continue => {}
            }
            poll_fn(|cx| self.poll_write_out(cx)).await?;
            poll_fn(|cx| self.poll_input(cx, true)).await?;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// Server: reads the client's opening handshake from `stream` and accepts it.
    pub async fn accept(stream: S, config: impl Into<Arc<Config>>) -> Result<Self, DriverError> {
        Self::accept_with(stream, config, |_| Ok(Accept::new())).await
    }

    /// Server: reads the opening handshake and lets `decide` answer it: an
    /// [`Accept`] (subprotocol, headers) opens the connection, a [`Reject`] is written
    /// to the client and returned as [`DriverError::Rejected`]. The handshake is
    /// bounded by [`Config::handshake_timeout`].
    pub async fn accept_with(
        stream: S,
        config: impl Into<Arc<Config>>,
        mut decide: impl FnMut(&Request) -> Result<Accept, Reject>,
    ) -> Result<Self, DriverError> {
        let mut core = Core::new(stream, Connection::server(config, now()));
        core.handshake(&mut decide).await?;
        Ok(Self { core })
    }

    /// Client: sends `request` on a connected `stream` (TCP, or TLS for `wss://`) and
    /// checks the server's answer. The server's refusal is
    /// [`DriverError::Handshake`] with [`crate::HandshakeError::Status`].
    pub async fn connect(stream: S, config: impl Into<Arc<Config>>, request: &ClientRequest) -> Result<Self, DriverError> {
        let mut core = Core::new(stream, Connection::client(config, request, now()));
        core.handshake(&mut client_never_decides).await?;
        Ok(Self { core })
    }

    /// A connection whose handshake another stack did (hyper's `upgrade::on`, axum's
    /// `WebSocketUpgrade`, an HTTP client): open at once with what was `negotiated`
    /// ([`Request::negotiate`] on a server, [`crate::ClientHandshakeDone::negotiated`]
    /// on a client). `early` holds the bytes that stack read past the handshake head
    /// (hyper's `Upgraded` replays them itself: pass `&[]`); they are the first frames.
    pub fn upgraded(stream: S, role: Role, config: impl Into<Arc<Config>>, negotiated: &Negotiated, early: &[u8]) -> Self {
        let mut conn = Connection::upgraded(role, config, negotiated, now());
        conn.handle_bytes(now(), early);
        Self { core: Core::new(stream, conn) }
    }

    /// The next event: [`Event::Text`], [`Event::Binary`] (or [`Event::Frame`] with
    /// [`crate::Delivery::Frames`]), [`Event::Ping`], [`Event::Pong`], and last
    /// [`Event::Closed`]; then `None`. Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<Event, DriverError>> {
        poll_fn(|cx| self.core.poll_next_event(cx)).await
    }

    /// Sends a message and writes it out.
    pub async fn send(&mut self, message: impl Into<Message>) -> Result<(), DriverError> {
        poll_fn(|cx| self.core.poll_send_ready(cx)).await?;
        message.into().queue(&mut self.core.conn)?;
        self.flush().await
    }

    /// Sends a text message (copied) and writes it out.
    pub async fn send_text(&mut self, text: &str) -> Result<(), DriverError> {
        poll_fn(|cx| self.core.poll_send_ready(cx)).await?;
        self.core.conn.send_text(text)?;
        self.flush().await
    }

    /// Queues a message without writing it: for many small messages, feed them
    /// and [`WebSocket::flush`] once (one vectored write for all of them).
    pub async fn feed(&mut self, message: impl Into<Message>) -> Result<(), DriverError> {
        poll_fn(|cx| self.core.poll_send_ready(cx)).await?;
        Ok(message.into().queue(&mut self.core.conn)?)
    }

    /// Sends a ping (at most 125 bytes); its pong comes as [`Event::Pong`] with the
    /// round-trip time.
    pub async fn ping(&mut self, payload: &[u8]) -> Result<(), DriverError> {
        self.core.conn.ping(now(), payload)?;
        self.flush().await
    }

    /// Starts the closing handshake: queues a close frame with `code` and `reason` and
    /// writes what the socket takes now, without waiting for a peer that does not
    /// read. Keep calling [`WebSocket::next`] until [`Event::Closed`]: it writes the
    /// rest and completes the handshake, within [`Config::close_timeout`].
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), DriverError> {
        self.core.conn.close(now(), code, reason)?;
        poll_fn(|cx| self.core.poll_try_write(cx)).await
    }

    /// Writes out everything queued.
    pub async fn flush(&mut self) -> Result<(), DriverError> {
        poll_fn(|cx| self.core.poll_flush_out(cx)).await
    }

    /// Sets how many queued bytes make senders wait (`feed`, `send`, the sink's
    /// `poll_ready`) and the reader pause (default 1 MiB).
    pub fn set_write_buffer_limit(&mut self, bytes: usize) {
        self.core.write_limit = bytes;
    }

    /// The engine: state, negotiated subprotocol and compression, last RTT ...
    pub fn connection(&self) -> &Connection {
        &self.core.conn
    }

    /// The engine, for commands this driver does not wrap (fragmented sends, `pong`,
    /// `abort`); what they queue is written by the next `flush` or `next`. Do not feed
    /// it input or poll its events here.
    pub fn connection_mut(&mut self) -> &mut Connection {
        &mut self.core.conn
    }

    /// The stream.
    pub fn get_ref(&self) -> &S {
        &self.core.io
    }

    /// The stream, for socket options. Reading or writing it directly corrupts the
    /// connection.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.core.io
    }

    /// Splits into a reader and a writer for two tasks (see the module docs).
    pub fn split(self) -> (WebSocketReader<S>, WebSocketWriter<S>) {
        let shared = Arc::new(Shared { core: Mutex::new(self.core), wakers: Arc::new(WakerPair::default()) });
        (WebSocketReader { shared: shared.clone() }, WebSocketWriter { shared })
    }
}

/// Client over TCP: resolves the URL's host, connects and runs the handshake.
/// `wss://` needs a TLS stream: connect it and use [`WebSocket::connect`].
pub async fn connect(url: &str, config: impl Into<Arc<Config>>) -> Result<WebSocket<TcpStream>, DriverError> {
    let request = ClientRequest::new(url)?;
    let url = request.url();
    if url.secure {
        return Err(DriverError::TlsUnsupported);
    }
    let tcp = TcpStream::connect((url.host.as_str(), url.port)).await?;
    tcp.set_nodelay(true)?;
    WebSocket::connect(tcp, config, &request).await
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WebSocket<S> {
    type Item = Result<Event, DriverError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().core.poll_next_event(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> FusedStream for WebSocket<S> {
    fn is_terminated(&self) -> bool {
        self.core.finished
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WebSocket<S> {
    type Error = DriverError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), DriverError>> {
        self.get_mut().core.poll_send_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), DriverError> {
        Ok(item.queue(&mut self.get_mut().core.conn)?)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), DriverError>> {
        self.get_mut().core.poll_flush_out(cx)
    }

    /// Sends a close frame (1000) if none was sent, and writes it out. The closing
    /// handshake completes on the reading side.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), DriverError>> {
        let core = &mut self.get_mut().core;
        if core.conn.close_sent().is_none() && core.conn.state() == crate::State::Open {
            core.conn.close(now(), CloseCode::NORMAL, "")?;
        }
        core.poll_flush_out(cx)
    }
}

// ---------------------------------------------------------------- the halves

/// What the reader and the writer share.
struct Shared<S> {
    core: Mutex<Core<S>>,
    wakers: Arc<WakerPair>,
}

/// Both halves may wait on the same stream (the reader writes pongs and the close
/// reply), and a stream remembers one waker per direction: every poll through a half
/// registers that half's waker here and passes this pair on, so a ready stream wakes
/// whichever halves wait.
#[derive(Default)]
struct WakerPair {
    slots: Mutex<[Option<Waker>; 2]>,
}

const READER: usize = 0;
const WRITER: usize = 1;

impl WakerPair {
    fn register(&self, slot: usize, waker: &Waker) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        match &slots[slot] {
            Some(w) if w.will_wake(waker) => {}
            _ => slots[slot] = Some(waker.clone()),
        }
    }
}

impl WakerPair {
    fn wake_slot(&self, slot: usize) {
        let taken = self.slots.lock().unwrap_or_else(|e| e.into_inner())[slot].take();
        if let Some(w) = taken {
            w.wake();
        }
    }
}

impl Wake for WakerPair {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let taken = std::mem::take(&mut *self.slots.lock().unwrap_or_else(|e| e.into_inner()));
        taken.into_iter().flatten().for_each(Waker::wake);
    }
}

impl<S> Shared<S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Core<S>> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the core with a context whose waker wakes the halves that wait.
    /// After the writer's turn the reader is woken if the engine's state or deadline
    /// changed (a close started, a failed write aborted it): only the reader runs
    /// timers and hands out `Closed`.
    fn with_core<T>(&self, slot: usize, cx: &mut Context<'_>, f: impl FnOnce(&mut Core<S>, &mut Context<'_>) -> T) -> T {
        self.wakers.register(slot, cx.waker());
        let waker = Waker::from(self.wakers.clone());
        let mut cx = Context::from_waker(&waker);
        let mut core = self.lock();
        let before = (core.conn.state(), core.conn.poll_timeout());
        let result = f(&mut core, &mut cx);
        if slot == WRITER && (core.conn.state(), core.conn.poll_timeout()) != before {
            self.wakers.wake_slot(READER);
        }
        result
    }

    /// A command on the engine from the writer; the reader is woken as in `with_core`.
    fn command<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> T {
        let mut core = self.lock();
        let before = (core.conn.state(), core.conn.poll_timeout());
        let result = f(&mut core.conn);
        if (core.conn.state(), core.conn.poll_timeout()) != before {
            self.wakers.wake_slot(READER);
        }
        result
    }
}

/// The reading half of a split [`WebSocket`]: events, timers, the closing handshake.
pub struct WebSocketReader<S> {
    shared: Arc<Shared<S>>,
}

/// The writing half of a split [`WebSocket`].
pub struct WebSocketWriter<S> {
    shared: Arc<Shared<S>>,
}

impl<S> std::fmt::Debug for WebSocketReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketReader").finish_non_exhaustive()
    }
}

impl<S> std::fmt::Debug for WebSocketWriter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketWriter").finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocketReader<S> {
    /// Puts the halves of one [`WebSocket`] back together; halves of two different
    /// ones come back unchanged.
    pub fn reunite(self, writer: WebSocketWriter<S>) -> Result<WebSocket<S>, (WebSocketReader<S>, WebSocketWriter<S>)> {
        if !Arc::ptr_eq(&self.shared, &writer.shared) {
            return Err((self, writer));
        }
        drop(writer);
        let shared = Arc::try_unwrap(self.shared).unwrap_or_else(|_| unreachable!("both halves were given"));
        Ok(WebSocket { core: shared.core.into_inner().unwrap_or_else(|e| e.into_inner()) })
    }

    /// As [`WebSocket::next`]; cancel-safe.
    pub async fn next(&mut self) -> Option<Result<Event, DriverError>> {
        poll_fn(|cx| self.shared.with_core(READER, cx, Core::poll_next_event)).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WebSocketReader<S> {
    type Item = Result<Event, DriverError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.shared.with_core(READER, cx, Core::poll_next_event)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocketWriter<S> {
    /// As [`WebSocket::send`].
    pub async fn send(&mut self, message: impl Into<Message>) -> Result<(), DriverError> {
        self.feed(message).await?;
        self.flush().await
    }

    /// As [`WebSocket::feed`]: queue now, write at the next flush.
    pub async fn feed(&mut self, message: impl Into<Message>) -> Result<(), DriverError> {
        poll_fn(|cx| self.shared.with_core(WRITER, cx, Core::poll_send_ready)).await?;
        let message = message.into();
        Ok(self.shared.command(|conn| message.queue(conn))?)
    }

    /// As [`WebSocket::ping`].
    pub async fn ping(&mut self, payload: &[u8]) -> Result<(), DriverError> {
        self.shared.command(|conn| conn.ping(now(), payload))?;
        self.flush().await
    }

    /// As [`WebSocket::close`]; the reader sees [`Event::Closed`] when it completes.
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), DriverError> {
        self.shared.command(|conn| conn.close(now(), code, reason))?;
        poll_fn(|cx| self.shared.with_core(WRITER, cx, Core::poll_try_write)).await
    }

    /// Writes out everything queued.
    pub async fn flush(&mut self) -> Result<(), DriverError> {
        poll_fn(|cx| self.shared.with_core(WRITER, cx, Core::poll_flush_out)).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WebSocketWriter<S> {
    type Error = DriverError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), DriverError>> {
        self.shared.with_core(WRITER, cx, Core::poll_send_ready)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), DriverError> {
        Ok(self.shared.command(|conn| item.queue(conn))?)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), DriverError>> {
        self.shared.with_core(WRITER, cx, Core::poll_flush_out)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), DriverError>> {
        self.shared.with_core(WRITER, cx, |core, cx| {
            if core.conn.close_sent().is_none() && core.conn.state() == crate::State::Open {
                core.conn.close(now(), CloseCode::NORMAL, "")?;
            }
            core.poll_flush_out(cx)
        })
    }
}
