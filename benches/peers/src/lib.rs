//! Shared bits of the peer servers: reading an upgrade request and answering 101, and
//! the TCP floors' listener, accepting and connections.

use std::io::Write as _;

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §1.3).
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// The 101 response for a complete request head, or None if it has no key.
pub fn response_for(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let key = text.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case("sec-websocket-key").then(|| v.trim().to_owned())
    })?;
    Some(
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            accept_key(&key)
        )
        .into_bytes(),
    )
}

/// The listen address from the first argument.
pub fn addr_arg(default: &str) -> String {
    std::env::args().nth(1).unwrap_or_else(|| default.to_owned())
}

/// The TCP floors' accept loop: every waiting connection goes into the first free slot
/// of `conns` (its mio token), registered once for both directions (edge-triggered,
/// so no interest changes afterwards), made into a connection by `new`.
pub fn accept_into<C>(
    listener: &mio::net::TcpListener,
    poll: &mio::Poll,
    conns: &mut Vec<Option<C>>,
    new: impl Fn(mio::net::TcpStream) -> C,
) {
    while let Ok((mut stream, _)) = listener.accept() {
        let _ = stream.set_nodelay(true);
        let i = conns.iter().position(Option::is_none).unwrap_or_else(|| {
            conns.push(None);
            conns.len() - 1
        });
        let both = mio::Interest::READABLE | mio::Interest::WRITABLE;
        poll.registry().register(&mut stream, mio::Token(i), both).unwrap();
        conns[i] = Some(new(stream));
    }
}

/// A TCP floor's connection (tcp_reflector, tcp_fanout).
pub struct Conn {
    pub stream: mio::net::TcpStream,
    /// Past the handshake: receives what the others send.
    pub open: bool,
    /// The request head, while it is incomplete.
    pub head: Vec<u8>,
    /// Bytes the socket has not taken yet.
    pub pending: Vec<u8>,
}

impl Conn {
    /// A new connection, before its handshake.
    pub fn new(stream: mio::net::TcpStream) -> Conn {
        Conn { stream, open: false, head: Vec::new(), pending: Vec::new() }
    }

    /// Writes `pending` and then `more` (one write while nothing is pending) and keeps
    /// what the socket did not take; false if the connection failed.
    pub fn send(&mut self, more: &[u8]) -> bool {
        if !self.pending.is_empty() {
            // Behind already: keep order, and write when the socket is WRITABLE again.
            self.pending.extend_from_slice(more);
            return true;
        }
        let mut at = 0;
        while at < more.len() {
            match self.stream.write(&more[at..]) {
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        self.pending.extend_from_slice(&more[at..]);
        true
    }

    /// Writes what is pending until the socket would block; false if it failed.
    pub fn flush(&mut self) -> bool {
        while !self.pending.is_empty() {
            match self.stream.write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }
}

/// A TCP floor's poll and listener on `addr` (its token: `usize::MAX`).
pub fn floor_listener(addr: std::net::SocketAddr, what: &str) -> (mio::Poll, mio::net::TcpListener) {
    let poll = mio::Poll::new().unwrap();
    let mut listener = mio::net::TcpListener::bind(addr).unwrap();
    poll.registry().register(&mut listener, mio::Token(usize::MAX), mio::Interest::READABLE).unwrap();
    eprintln!("{what} on {addr}");
    (poll, listener)
}
