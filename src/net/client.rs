//! A WebSocket client on its own small mio loop: connect, handshake, then send and
//! receive with timeouts. Other threads can wake a waiting client (for example a
//! thread reading stdin) through its [`ClientWaker`].

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::net::conn::{Read1, Socket};
use crate::proxy::{Proxy, ProxyError, ProxyHandshake, ProxyStep, Target as ProxyTarget};
use crate::{ClientRequest, CloseCode, Closed, Config, Connection, Event, MaskGenerator, MessageKind, State, UsageError};

const SOCKET: Token = Token(0);
const WAKER: Token = Token(1);

/// How a client connects: the request (URL, subprotocols, origin, headers) and the
/// settings around it.
#[non_exhaustive]
pub struct ClientOptions {
    /// What to ask the server for.
    pub request: ClientRequest,
    /// Engine configuration (limits, timeouts, keepalive, permessage-deflate).
    pub config: Config,
    /// Time allowed for TCP connect plus handshake. Default 10 s.
    pub connect_timeout: Duration,
    /// Read buffer size (Qt's `setReadBufferSize`). Default 64 KiB.
    pub read_buffer_size: usize,
    /// Replaces the default CSPRNG mask generator (Qt's `setMaskGenerator`).
    pub mask_generator: Option<Box<dyn MaskGenerator>>,
    /// TLS for `wss://` URLs (trust anchors, `insecure`, client certificate). `None`:
    /// the system's trust store. Qt's `setSslConfiguration`.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::net::tls::TlsConnector>,
    /// Reach the server through this proxy (HTTP CONNECT or SOCKS5; Qt's
    /// `setProxy`). `None`: directly (for the `https_proxy`/`no_proxy` environment
    /// convention, pass [`Proxy::from_env`]'s answer).
    pub proxy: Option<Proxy>,
}

impl ClientOptions {
    /// Options for `request` with the defaults.
    pub fn new(request: ClientRequest) -> Self {
        Self {
            request,
            config: Config::default(),
            connect_timeout: Duration::from_secs(10),
            read_buffer_size: 64 * 1024,
            mask_generator: None,
            #[cfg(feature = "tls")]
            tls: None,
            proxy: None,
        }
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("request", &self.request)
            .field("config", &self.config)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_buffer_size", &self.read_buffer_size)
            .field("mask_generator", &self.mask_generator.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// Wakes a thread blocked in [`Client::next_event`] from another thread.
#[derive(Clone, Debug)]
pub struct ClientWaker(Arc<Waker>);

impl ClientWaker {
    /// Makes the waiting `next_event` return `Ok(None)` at once.
    pub fn wake(&self) -> io::Result<()> {
        self.0.wake()
    }
}

/// Why a client could not connect.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// Bad URL or options (the caller's mistake).
    Invalid(UsageError),
    /// A `wss://` URL in a build without the `tls` feature.
    TlsUnsupported,
    /// The TLS configuration could not be built (unreadable CA or certificate file ...).
    #[cfg(feature = "tls")]
    TlsConfig(crate::net::tls::TlsError),
    /// The TLS handshake failed: the server's certificate was refused (unknown issuer,
    /// name mismatch, expired ...) or the server refused ours.
    #[cfg(feature = "tls")]
    Tls(rustls::Error),
    /// Name resolution or TCP failed (refused, reset ...).
    Io(io::Error),
    /// The connection ended before it opened (bad handshake: HTTP status, bad accept ...).
    Closed(Closed),
    /// Connect or handshake took longer than the connect timeout.
    Timeout,
    /// The proxy refused or failed to open the tunnel.
    Proxy(ProxyError),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Invalid(e) => write!(f, "{e}"),
            ClientError::TlsUnsupported => f.write_str("wss:// needs TLS, which this build leaves out (feature `tls`)"),
            #[cfg(feature = "tls")]
            ClientError::TlsConfig(e) => write!(f, "{e}"),
            #[cfg(feature = "tls")]
            ClientError::Tls(e) => {
                write!(f, "TLS handshake failed: {}", crate::net::tls::describe(e))?;
                match e {
                    rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
                        f.write_str("; --ca FILE adds a CA to trust")
                    }
                    rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
                        f.write_str(" (--client-cert, --client-key)")
                    }
                    _ => Ok(()),
                }
            }
            ClientError::Io(e) => write!(f, "connection failed: {e}"),
            ClientError::Closed(c) => match &c.error {
                Some(e) => write!(f, "{e}"),
                None => write!(f, "connection closed during the handshake ({})", c.code()),
            },
            ClientError::Timeout => f.write_str("connect timed out"),
            ClientError::Proxy(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

impl From<UsageError> for ClientError {
    fn from(e: UsageError) -> Self {
        ClientError::Invalid(e)
    }
}

/// A connected WebSocket client.
#[derive(Debug)]
pub struct Client {
    poll: Poll,
    events: Events,
    socket: Socket,
    engine: Connection,
    waker: Arc<Waker>,
    buf: Vec<u8>,
    queue: VecDeque<Event>,
    peer: SocketAddr,
}

impl Client {
    /// Connects to a `ws://` URL with default options, performs the handshake and
    /// returns once the connection is open.
    pub fn connect_url(url: &str) -> Result<Client, ClientError> {
        Self::connect(ClientOptions::new(ClientRequest::new(url)?))
    }

    /// Connects as `opts` say, performs the handshake and returns once the connection
    /// is open.
    pub fn connect(opts: ClientOptions) -> Result<Client, ClientError> {
        let req = opts.request;
        #[cfg(feature = "tls")]
        let tls = match (req.url().secure, opts.tls) {
            (false, _) => None,
            (true, Some(connector)) => Some(connector),
            (true, None) => Some(crate::net::tls::TlsConnector::new(&Default::default()).map_err(ClientError::TlsConfig)?),
        };
        #[cfg(not(feature = "tls"))]
        if req.url().secure {
            return Err(ClientError::TlsUnsupported);
        }
        let start = Instant::now();
        let deadline = start + opts.connect_timeout;
        let now = Instant::now();
        let engine = match opts.mask_generator {
            Some(m) => Connection::client_with_mask_generator(opts.config, &req, m, now),
            None => Connection::client(opts.config, &req, now),
        };
        // Through a proxy, TCP goes to the proxy and the tunnel to the server.
        let addrs: Vec<SocketAddr> = match &opts.proxy {
            Some(proxy) => (proxy.host(), proxy.port())
                .to_socket_addrs()
                .map_err(|e| io::Error::new(e.kind(), format!("cannot resolve the proxy {proxy}: {e}")))?
                .collect(),
            None => (req.url().host.as_str(), req.url().port).to_socket_addrs()?.collect(),
        };
        let mut last_err = io::Error::new(io::ErrorKind::NotFound, "host has no addresses");
        let mut poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        for addr in addrs {
            match connect_one(&mut poll, addr, deadline) {
                Ok(mut stream) => {
                    let early = match &opts.proxy {
                        Some(proxy) => tunnel(&mut poll, &mut stream, proxy, req.url(), deadline)?,
                        None => Vec::new(),
                    };
                    #[cfg(feature = "tls")]
                    let socket = match &tls {
                        Some(connector) => Socket::with_tls(stream, connector.connect(&req.url().host).map_err(ClientError::Tls)?),
                        None => Socket::new(stream),
                    };
                    #[cfg(not(feature = "tls"))]
                    let socket = Socket::new(stream);
                    let mut client = Client {
                        poll,
                        events: Events::with_capacity(16),
                        socket,
                        engine,
                        waker,
                        buf: vec![0; opts.read_buffer_size.max(1024)],
                        queue: VecDeque::new(),
                        peer: addr,
                    };
                    // What the server sent right behind the proxy's answer.
                    client.socket.preload(&early, &mut client.engine, now);
                    client.handshake(deadline)?;
                    return Ok(client);
                }
                Err(e) => {
                    last_err = match &opts.proxy {
                        Some(proxy) => io::Error::new(e.kind(), format!("cannot reach the proxy {proxy}: {e}")),
                        None => e,
                    }
                }
            }
        }
        if Instant::now() >= deadline { Err(ClientError::Timeout) } else { Err(last_err.into()) }
    }

    fn handshake(&mut self, deadline: Instant) -> Result<(), ClientError> {
        loop {
            if let Err(e) = self.turn(Some(deadline.saturating_duration_since(Instant::now()))) {
                // A TLS failure shows up as a failed write: report what TLS said.
                #[cfg(feature = "tls")]
                if let Some(tls) = self.socket.tls_error() {
                    return Err(ClientError::Tls(tls.clone()));
                }
                return Err(e.into());
            }
            while let Some(ev) = self.engine.poll_event() {
                match ev {
                    Event::Open { .. } => return Ok(()),
                    Event::Closed(c) => {
                        #[cfg(feature = "tls")]
                        if let Some(e) = self.socket.tls_error() {
                            return Err(ClientError::Tls(e.clone()));
                        }
                        return Err(ClientError::Closed(*c));
                    }
                    other => self.queue.push_back(other),
                }
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout);
            }
        }
    }

    /// One loop turn: flush, wait for readiness or `timeout` (or the engine's own
    /// deadline), read what arrived, let deadlines act. Returns true if woken.
    fn turn(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        self.flush_now()?;
        let now = Instant::now();
        let engine_deadline = self.engine.poll_timeout().map(|t| t.saturating_duration_since(now));
        let wait = match (timeout, engine_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let interest = if self.socket.has_output(&self.engine) { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        if interest.is_writable() != self.socket.want_write {
            self.poll.registry().reregister(&mut self.socket.stream, SOCKET, interest)?;
            self.socket.want_write = interest.is_writable();
        }
        match self.poll.poll(&mut self.events, wait) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(false),
            Err(e) => return Err(e),
        }
        let woken = self.events.iter().any(|e| e.token() == WAKER);
        let now = Instant::now();
        self.read_available(now);
        self.engine.handle_timeout(now);
        self.flush_now()?;
        Ok(woken)
    }

    fn read_available(&mut self, now: Instant) {
        while !self.socket.eof && self.engine.state() != State::Closed {
            match self.socket.read_once(&mut self.buf) {
                Read1::Data(n) => self.engine.handle_bytes(now, &self.buf[..n]),
                Read1::WouldBlock => return,
                Read1::Eof => self.engine.handle_eof(now),
            }
        }
    }

    fn flush_now(&mut self) -> io::Result<()> {
        if self.socket.eof {
            return Ok(());
        }
        if let Err(e) = self.socket.flush(&mut self.engine) {
            self.socket.eof = true;
            self.engine.abort();
            return Err(e);
        }
        Ok(())
    }

    /// Waits up to `timeout` (forever with `None`) for the next event. Returns
    /// `Ok(None)` on timeout or when woken through [`Client::waker`]. After
    /// [`Event::Closed`] it returns `Ok(None)` at once.
    pub fn next_event(&mut self, timeout: Option<Duration>) -> io::Result<Option<Event>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(ev) = self.queue.pop_front().or_else(|| self.engine.poll_event()) {
                if let Event::Closed(_) = ev {
                    // "Closed" means: flush, then close the socket.
                    let _ = self.flush_now();
                    self.socket.end_session();
                    let _ = self.socket.stream.shutdown(std::net::Shutdown::Both);
                    self.socket.eof = true;
                }
                return Ok(Some(ev));
            }
            if self.engine.state() == State::Closed {
                return Ok(None);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Ok(None);
            }
            if self.turn(left)? {
                if let Some(ev) = self.engine.poll_event() {
                    self.queue.push_back(ev);
                }
                if self.queue.is_empty() {
                    return Ok(None);
                }
            }
        }
    }

    /// Sends a text message.
    pub fn send_text(&mut self, text: &str) -> Result<(), UsageError> {
        self.engine.send_text(text)?;
        let _ = self.flush_now();
        Ok(())
    }

    /// Sends a binary message.
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), UsageError> {
        self.engine.send_binary(data)?;
        let _ = self.flush_now();
        Ok(())
    }

    /// Sends a message of `kind`.
    pub fn send(&mut self, kind: MessageKind, data: &[u8]) -> Result<(), UsageError> {
        self.engine.send(kind, data)?;
        let _ = self.flush_now();
        Ok(())
    }

    /// Sends a ping; the pong event carries the round-trip time.
    pub fn ping(&mut self, payload: &[u8]) -> Result<(), UsageError> {
        self.engine.ping(Instant::now(), payload)?;
        let _ = self.flush_now();
        Ok(())
    }

    /// Starts the closing handshake; keep calling [`Client::next_event`] until
    /// [`Event::Closed`].
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), UsageError> {
        self.engine.close(Instant::now(), code, reason)?;
        let _ = self.flush_now();
        Ok(())
    }

    /// Drops the connection at once, discarding queued output.
    pub fn abort(&mut self) {
        self.engine.abort();
        let _ = self.socket.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Waits until all queued output is written or `timeout` passes (Qt's `flush()`).
    /// Returns whether everything was written.
    pub fn flush(&mut self, timeout: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + timeout;
        while self.socket.has_output(&self.engine) && !self.socket.eof {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            self.turn(Some(left))?;
            // Keep events for next_event.
            while let Some(ev) = self.engine.poll_event() {
                self.queue.push_back(ev);
            }
        }
        Ok(!self.socket.has_output(&self.engine))
    }

    /// Wakes a thread blocked in [`Client::next_event`] from another thread.
    pub fn waker(&self) -> ClientWaker {
        ClientWaker(self.waker.clone())
    }

    /// Bytes not yet written (Qt's `bytesToWrite()`).
    pub fn bytes_to_write(&self) -> usize {
        self.engine.bytes_to_write()
    }

    /// Connection state.
    pub fn state(&self) -> State {
        self.engine.state()
    }

    /// The server's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The engine (protocol, response headers, close frames, RTT ...).
    pub fn engine(&self) -> &Connection {
        &self.engine
    }
}

/// Opens the tunnel through `proxy` to the server of `url` on a connected `stream`
/// (the proxy's own small sans-IO negotiation, driven here until `deadline`).
/// Returns the bytes that followed the proxy's answer: the first of the tunnel.
fn tunnel(poll: &mut Poll, stream: &mut TcpStream, proxy: &Proxy, url: &crate::Url, deadline: Instant) -> Result<Vec<u8>, ClientError> {
    let target = if proxy.kind().resolves_names() {
        ProxyTarget::Name(url.host.clone(), url.port)
    } else {
        // We resolve: an address of the family the proxy itself was reached over,
        // else the first (the proxy tries the one address it is given).
        let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port).to_socket_addrs()?.collect();
        let family_v4 = stream.peer_addr().map(|a| a.is_ipv4()).unwrap_or(true);
        let addr = addrs.iter().find(|a| a.is_ipv4() == family_v4).or(addrs.first()).copied();
        ProxyTarget::Addr(addr.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the server's host has no addresses"))?)
    };
    let mut hs = ProxyHandshake::new(proxy, target).map_err(ClientError::Proxy)?;
    poll.registry().reregister(stream, SOCKET, Interest::READABLE | Interest::WRITABLE)?;
    let mut events = Events::with_capacity(4);
    let mut buf = [0u8; 4096];
    loop {
        written_all(stream, &mut hs)?;
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return Err(ClientError::Proxy(hs.handle_eof())),
                Ok(n) => {
                    if let ProxyStep::Done { leftover } = hs.handle_bytes(&buf[..n]).map_err(ClientError::Proxy)? {
                        poll.registry().reregister(stream, SOCKET, Interest::READABLE)?;
                        return Ok(buf[n - leftover..n].to_vec());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        // An answer read may call for the next request (SOCKS5 steps): write it first.
        if !hs.output().is_empty() && written_all(stream, &mut hs)? {
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout);
        }
        match poll.poll(&mut events, Some(left)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes the proxy handshake's output until it is empty (true) or the socket would
/// block (false).
fn written_all(stream: &mut TcpStream, hs: &mut ProxyHandshake) -> io::Result<bool> {
    while !hs.output().is_empty() {
        match stream.write(hs.output()) {
            Ok(n) => hs.consume_output(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Non-blocking connect to one address, waiting for it to complete until `deadline`.
fn connect_one(poll: &mut Poll, addr: SocketAddr, deadline: Instant) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    poll.registry().register(&mut stream, SOCKET, Interest::WRITABLE)?;
    let mut events = Events::with_capacity(4);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let _ = poll.registry().deregister(&mut stream);
            return Err(io::ErrorKind::TimedOut.into());
        }
        match poll.poll(&mut events, Some(left)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if !events.iter().any(|e| e.token() == SOCKET) {
            continue;
        }
        if let Some(e) = stream.take_error()? {
            let _ = poll.registry().deregister(&mut stream);
            return Err(e);
        }
        match stream.peer_addr() {
            Ok(_) => {
                let _ = stream.set_nodelay(true);
                poll.registry().reregister(&mut stream, SOCKET, Interest::READABLE)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => continue,
            Err(e) => {
                let _ = poll.registry().deregister(&mut stream);
                return Err(e);
            }
        }
    }
}
