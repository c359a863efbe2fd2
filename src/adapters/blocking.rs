//! A blocking driver of the sans-IO core over any `std::io::Read + Write` stream (a
//! `TcpStream`, a `UnixStream`, later a TLS stream): the shape for scripts, tests and
//! thread-per-connection servers. This module owns the driving loop of one
//! connection: the opening handshake done on the stream, one read buffer, the read
//! timeout set from the engine's deadlines, and vectored writes of its output.
//!
//! ```no_run
//! use rfc6455::blocking;
//! use rfc6455::{CloseCode, Config, Event};
//!
//! let mut ws = blocking::connect("ws://127.0.0.1:9002/", Config::default())?;
//! ws.send_text("hello")?;
//! ws.close(CloseCode::NORMAL, "bye")?;
//! loop {
//!     match ws.read()? {
//!         Event::Text(text) => println!("{text}"),
//!         Event::Closed(closed) => break println!("closed: {}", closed.code()),
//!         _ => {}
//!     }
//! }
//! # Ok::<(), rfc6455::DriverError>(())
//! ```
//!
//! A server accepts on a listener and drives each connection on its own thread:
//!
//! ```no_run
//! use std::net::TcpListener;
//! use rfc6455::blocking::WebSocket;
//! use rfc6455::{Config, Event, Message};
//!
//! let listener = TcpListener::bind("127.0.0.1:9002")?;
//! for stream in listener.incoming() {
//!     let stream = stream?;
//!     std::thread::spawn(move || -> Result<(), rfc6455::DriverError> {
//!         let mut ws = WebSocket::accept(stream, Config::default())?;
//!         loop {
//!             match ws.read()? {
//!                 Event::Text(text) => ws.send(Message::Text(text))?,
//!                 Event::Closed(_) => return Ok(()),
//!                 _ => {}
//!             }
//!         }
//!     });
//! }
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # How the stream is used
//!
//! The stream must be in blocking mode. Before each blocking read the driver sets the
//! stream's read timeout to the engine's next deadline (keepalive pings, pong, idle,
//! handshake and close timeouts), so a read that times out lets the deadline act;
//! the driver owns that setting (to bound a wait, use [`WebSocket::set_read_timeout`]
//! instead). Writes go out at once: every command
//! writes everything queued before it returns, and [`WebSocket::read`] writes what
//! the engine queued (pongs, the close reply) before it blocks.
//!
//! Writes block while the peer does not read (TCP backpressure), like any blocking
//! socket's. To bound them, set a write timeout on the stream (for a `TcpStream`,
//! `ws.get_mut().set_write_timeout(..)`): a write that times out is an I/O error.
//!
//! Any I/O error ends the connection: the engine is aborted (queued output is
//! discarded), the error is returned, and [`WebSocket::read`] then hands out the
//! events already received and a last [`Event::Closed`]. Errors of the caller
//! ([`DriverError::Usage`]) change nothing.
//!
//! After [`Event::Closed`] the driver has written all it had to; dropping the
//! [`WebSocket`] drops the stream, which closes a `TcpStream` (RFC 6455 §7.1.1: the
//! server closes the TCP connection first; a client waits for that end of stream).

use std::io::{self, IoSlice, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::adapters::{DriverError, HandshakeStep, Message, client_never_decides, drive_handshake, stream_failed};
use crate::{Accept, ClientRequest, CloseCode, Config, Connection, Event, Negotiated, Reject, Request, Role, State, UsageError};

/// Size of the read buffer, one per connection.
const READ_BUF_LEN: usize = 16 << 10;
/// Most output runs handed to one `write_vectored` call.
const MAX_WRITE_SLICES: usize = 64;
/// Shortest read timeout set on the stream (zero would mean "no timeout").
const MIN_READ_TIMEOUT: Duration = Duration::from_millis(1);

/// A stream a blocking driver can wait on with a deadline.
pub trait Stream: Read + Write {
    /// Sets how long a read may block before it fails with `WouldBlock` or
    /// `TimedOut` (`None`: forever), as [`TcpStream::set_read_timeout`] does.
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

impl Stream for TcpStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
}

#[cfg(unix)]
impl Stream for std::os::unix::net::UnixStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, timeout)
    }
}

impl<S: Stream + ?Sized> Stream for Box<S> {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        (**self).set_read_timeout(timeout)
    }
}

impl<S: Stream + ?Sized> Stream for &mut S {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        (**self).set_read_timeout(timeout)
    }
}

/// Opens a client connection to a `ws://` URL: resolves the host, connects over TCP
/// (each address in turn, each attempt bounded by [`Config::handshake_timeout`];
/// `TCP_NODELAY` on, as messages are written whole) and does the opening
/// handshake. `wss://` needs TLS, which this function does not do: it fails with
/// [`DriverError::TlsUnsupported`]; connect a TLS stream yourself and use
/// [`WebSocket::connect`].
pub fn connect(url: &str, config: impl Into<Arc<Config>>) -> Result<WebSocket<TcpStream>, DriverError> {
    let config: Arc<Config> = config.into();
    let request = ClientRequest::new(url)?;
    if request.url().secure {
        return Err(DriverError::TlsUnsupported);
    }
    let target = request.url();
    let stream = connect_tcp((target.host.as_str(), target.port), config.handshake_timeout)?;
    stream.set_nodelay(true)?;
    WebSocket::connect(stream, config, &request)
}

/// Connects to the first of the resolved addresses that answers, each attempt
/// bounded by `timeout`; the last attempt's error otherwise.
fn connect_tcp(target: impl ToSocketAddrs, timeout: Option<Duration>) -> io::Result<TcpStream> {
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "the host resolved to no address");
    for addr in target.to_socket_addrs()? {
        let attempt = match timeout {
            Some(t) => TcpStream::connect_timeout(&addr, t),
            None => TcpStream::connect(addr),
        };
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

/// One WebSocket connection over a blocking stream `S`. See the module docs.
pub struct WebSocket<S> {
    stream: S,
    conn: Connection,
    /// The one read buffer, reused for every read.
    read_buf: Vec<u8>,
    /// The read timeout last set on the stream (`None`: not set by us yet).
    stream_timeout: Option<Option<Duration>>,
    /// The caller's bound on one call to `read` ([`WebSocket::set_read_timeout`]).
    read_timeout: Option<Duration>,
    /// [`Event::Closed`] has been returned: nothing more to read.
    finished: bool,
}

impl<S: std::fmt::Debug> std::fmt::Debug for WebSocket<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket")
            .field("stream", &self.stream)
            .field("conn", &self.conn)
            .field("read_timeout", &self.read_timeout)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl<S: Stream> WebSocket<S> {
    /// Server: reads the client's request from `stream` and accepts it (101, with
    /// permessage-deflate if `config` enables it and the client offers it). A bad
    /// request is answered with its HTTP error status, written before this returns
    /// [`DriverError::Handshake`].
    pub fn accept(stream: S, config: impl Into<Arc<Config>>) -> Result<Self, DriverError> {
        Self::accept_with(stream, config, |_| Ok(Accept::new()))
    }

    /// Server: reads the client's request and lets `decide` answer it: an [`Accept`]
    /// (a subprotocol, extra headers) opens the connection; a [`Reject`] writes the
    /// refusal and returns [`DriverError::Rejected`] with its status.
    pub fn accept_with(
        stream: S,
        config: impl Into<Arc<Config>>,
        mut decide: impl FnMut(&Request) -> Result<Accept, Reject>,
    ) -> Result<Self, DriverError> {
        let conn = Connection::server(config, Instant::now());
        Self::new(stream, conn).handshake(&mut decide)
    }

    /// Client: does the opening handshake of `request` over an already connected
    /// `stream`. A response other than 101 fails with [`DriverError::Handshake`]
    /// ([`crate::HandshakeError::Status`] carries the status and headers).
    pub fn connect(stream: S, config: impl Into<Arc<Config>>, request: &ClientRequest) -> Result<Self, DriverError> {
        let conn = Connection::client(config, request, Instant::now());
        Self::new(stream, conn).handshake(&mut client_never_decides)
    }

    /// A connection whose opening handshake another stack did, open from the start
    /// with what was `negotiated` (see [`Connection::upgraded`]). `early` holds the
    /// bytes that stack read past the handshake head: they are the first frames and
    /// are processed before anything read from `stream`.
    pub fn upgraded(stream: S, role: Role, config: impl Into<Arc<Config>>, negotiated: &Negotiated, early: &[u8]) -> Self {
        let now = Instant::now();
        let mut conn = Connection::upgraded(role, config, negotiated, now);
        conn.handle_bytes(now, early);
        Self::new(stream, conn)
    }

    fn new(stream: S, conn: Connection) -> Self {
        Self { stream, conn, read_buf: vec![0; READ_BUF_LEN], stream_timeout: None, read_timeout: None, finished: false }
    }

    /// Runs the opening handshake to its end; its answer (101 or a refusal) is
    /// written before this returns.
    fn handshake(mut self, decide: &mut dyn FnMut(&Request) -> Result<Accept, Reject>) -> Result<Self, DriverError> {
        loop {
            match drive_handshake(&mut self.conn, Instant::now(), decide) {
                HandshakeStep::Continue => {
                    self.write_output()?;
                    self.read_into_engine(None)?;
                }
                HandshakeStep::Open => {
                    self.write_output()?;
                    return Ok(self);
                }
                HandshakeStep::Failed(e) => {
                    // The refusal or error status goes out; the handshake's own error is
                    // the one worth reporting, not a failure to write it.
                    let _ = self.write_output();
                    return Err(e);
                }
            }
        }
    }

    /// The next received event: [`Event::Text`], [`Event::Binary`], [`Event::Frame`]
    /// (with [`crate::Delivery::Frames`]), [`Event::Ping`] (already answered) or
    /// [`Event::Pong`]. Blocks until one arrives, letting keepalive and timeouts act
    /// meanwhile; writes queued output (pongs, the reply to the peer's close) before
    /// it blocks. Never returns [`Event::Open`] or [`Event::Request`].
    ///
    /// [`Event::Closed`] comes once, last, after everything queued has been written.
    /// After it (or after an I/O error and the events that follow it), `read` fails
    /// with [`DriverError::Usage`]\([`UsageError::NotOpen`]\) in state
    /// [`State::Closed`].
    pub fn read(&mut self) -> Result<Event, DriverError> {
        let give_up = self.read_timeout.map(|t| Instant::now() + t);
        loop {
            if self.finished {
                return Err(UsageError::NotOpen { state: State::Closed }.into());
            }
            if let Some(event) = self.next_event() {
                return Ok(event);
            }
            self.write_output()?;
            self.read_into_engine(give_up)?;
        }
    }

    /// The next event for the application, if the engine has one. `Closed` is
    /// returned once its last bytes are written.
    fn next_event(&mut self) -> Option<Event> {
        loop {
            match self.conn.poll_event()? {
                Event::Open { .. } | Event::Request(_) => continue,
                Event::Closed(closed) => {
                    // The connection is over either way: a failure to write its last
                    // bytes (the close reply to a vanished peer) is not worth an error.
                    let _ = self.write_output();
                    self.finished = true;
                    return Some(Event::Closed(closed));
                }
                event => return Some(event),
            }
        }
    }

    /// Sends a message (text, binary, or a [`crate::SharedFrame`] on a server) and
    /// writes it out. Text and binary payloads are moved, not copied.
    pub fn send(&mut self, msg: impl Into<Message>) -> Result<(), DriverError> {
        msg.into().queue(&mut self.conn)?;
        self.flush()
    }

    /// Sends a text message and writes it out.
    pub fn send_text(&mut self, text: &str) -> Result<(), DriverError> {
        self.conn.send_text(text)?;
        self.flush()
    }

    /// Sends a binary message and writes it out.
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), DriverError> {
        self.conn.send_binary(data)?;
        self.flush()
    }

    /// Sends a ping (at most 125 bytes) and writes it out; its pong comes back from
    /// [`WebSocket::read`] as [`Event::Pong`] with the round-trip time.
    pub fn ping(&mut self, payload: &[u8]) -> Result<(), DriverError> {
        self.conn.ping(Instant::now(), payload)?;
        self.flush()
    }

    /// Starts the closing handshake: sends a close frame with `code` and `reason` (at
    /// most 123 bytes). Nothing more may be sent; call [`WebSocket::read`] until
    /// [`Event::Closed`] to receive what the peer still sends and complete the
    /// handshake (waiting for the peer's answer is bounded by
    /// [`Config::close_timeout`]; writing is bounded as every write is, see the
    /// module docs).
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), DriverError> {
        self.conn.close(Instant::now(), code, reason)?;
        self.flush()
    }

    /// Writes out everything queued (and flushes the stream). The commands above do
    /// this themselves; it is for output queued through [`WebSocket::connection_mut`].
    pub fn flush(&mut self) -> Result<(), DriverError> {
        self.write_output()
    }

    /// Bounds how long one call to [`WebSocket::read`] may wait (`None`, the default:
    /// forever). When it passes without an event, `read` fails with an I/O error of
    /// kind `TimedOut` and the connection stays usable.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    /// The engine: state, negotiated subprotocol and compression, close frames, RTT.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The engine, for commands this driver does not wrap (fragmented sends, pongs,
    /// `abort`). Output they queue is written by [`WebSocket::flush`] or the next
    /// driver call; do not call the engine's inputs or `poll_event` here.
    pub fn connection_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// The stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The stream, for socket options. Reading or writing it directly corrupts the
    /// connection.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// The stream, giving up the connection: output not yet written is dropped. The
    /// read timeout the driver set is cleared.
    pub fn into_inner(self) -> S {
        let _ = self.stream.set_read_timeout(None);
        self.stream
    }

    // ------------------------------------------------------------------ I/O

    /// Writes everything the engine has queued, in vectored writes of up to 64
    /// runs, then flushes the stream. An I/O error aborts the connection.
    fn write_output(&mut self) -> Result<(), DriverError> {
        let result = self.write_queued().and_then(|()| retry_interrupted(|| self.stream.flush()));
        result.map_err(|e| self.fail_io(e))
    }

    fn write_queued(&mut self) -> io::Result<()> {
        while self.conn.bytes_to_write() > 0 {
            let mut slices = [IoSlice::new(&[]); MAX_WRITE_SLICES];
            let count = self.conn.output_vectored(&mut slices);
            let written = match self.stream.write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "the stream accepted no bytes")),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.conn.consume_output(written);
        }
        Ok(())
    }

    /// One blocking read into the engine: bytes, the end of the stream, or a deadline
    /// that passed. Fails with `TimedOut` once `give_up` (the caller's bound) passes.
    fn read_into_engine(&mut self, give_up: Option<Instant>) -> Result<(), DriverError> {
        let now = Instant::now();
        if give_up.is_some_and(|g| g <= now) {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no WebSocket event within the read timeout").into());
        }
        let wake = earliest(self.conn.poll_timeout(), give_up);
        if wake.is_some_and(|w| w <= now) {
            self.conn.handle_timeout(now);
            return Ok(());
        }
        let timeout = wake.map(|w| (w - now).max(MIN_READ_TIMEOUT));
        self.set_stream_timeout(timeout).map_err(|e| self.fail_io(e))?;
        match self.stream.read(&mut self.read_buf) {
            Ok(0) => self.conn.handle_eof(Instant::now()),
            Ok(n) => self.conn.handle_bytes(Instant::now(), &self.read_buf[..n]),
            Err(e) if is_timeout(&e) => self.conn.handle_timeout(Instant::now()),
            Err(e) => {
                if let Some(e) = stream_failed(&mut self.conn, e, Instant::now()) {
                    return Err(DriverError::Io(e));
                }
            }
        }
        Ok(())
    }

    /// Sets the stream's read timeout, unless it is already that.
    fn set_stream_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if self.stream_timeout != Some(timeout) {
            self.stream.set_read_timeout(timeout)?;
            self.stream_timeout = Some(timeout);
        }
        Ok(())
    }

    /// The stream failed: the connection is over (the engine is aborted, so `read`
    /// ends with `Closed`). Returns the error to report.
    fn fail_io(&mut self, e: io::Error) -> DriverError {
        self.conn.abort();
        DriverError::Io(e)
    }
}

/// The earlier of two optional instants.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A read that ended because the read timeout passed (`WouldBlock` on Unix,
/// `TimedOut` on Windows).
fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

fn retry_interrupted(mut op: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
