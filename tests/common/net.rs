//! Helpers for tests over 127.0.0.1: a server on its own thread (port 0, stopped on
//! drop), a raw-socket client, and bounded waits for client events.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rfc6455::net::{Client, Handler, Server, ServerConfig, ServerStats, ShutdownHandle};
use rfc6455::proto::frame::{OpCode, decode_header};
use rfc6455::{Closed, Event, MessageKind};

/// The longest any test waits for anything.
pub const WAIT: Duration = Duration::from_secs(10);

/// A server running on its own thread on 127.0.0.1 (a free port); shut down on drop.
pub struct Running {
    pub addr: SocketAddr,
    pub handle: ShutdownHandle,
    pub stats: Arc<ServerStats>,
    pub thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Running {
    pub fn start<H: Handler + Send + 'static>(cfg: ServerConfig, handler: H) -> Running {
        let mut server = Server::bind("127.0.0.1:0".parse().unwrap(), cfg, handler).unwrap();
        let (addr, handle, stats) = (server.local_addr(), server.shutdown_handle(), server.stats());
        let thread = std::thread::spawn(move || server.run());
        Running { addr, handle, stats, thread: Some(thread) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// A library client connected to `path`.
    pub fn connect(&self, path: &str) -> Client {
        Client::connect_url(&self.url(path)).unwrap()
    }

    /// Waits (bounded) until the server's counters satisfy `f`.
    pub fn wait_until(&self, what: &str, f: impl Fn(&ServerStats) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !f(&self.stats) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {:?}", self.stats);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the server holds `n` sockets.
    pub fn wait_connections(&self, n: usize) {
        self.wait_until(&format!("{n} connections"), |s| s.connections() == n);
    }

    /// Shuts the server down and checks that `run` returned Ok.
    pub fn stop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Performs a handshake on a raw socket (with `extra` header lines, each ending in
/// CRLF) and returns the socket and the response head.
pub fn raw_client_with(addr: SocketAddr, path: &str, extra: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    (s, String::from_utf8(head).unwrap())
}

/// A raw socket past the handshake (for a client that never reads, or sends bad frames).
pub fn raw_client(addr: SocketAddr, path: &str) -> TcpStream {
    raw_client_with(addr, path, "").0
}

/// Reads server frames until a close frame; returns (data frames before it, its code),
/// or no code if the socket ended first.
pub fn read_until_close(s: &mut TcpStream) -> (usize, Option<u16>) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    let mut frames = 0;
    loop {
        while let Ok(Some((h, n))) = decode_header(&buf) {
            let len = h.payload_len as usize;
            if buf.len() < n + len {
                break;
            }
            if h.opcode == OpCode::Close {
                return (frames, Some(u16::from_be_bytes([buf[n], buf[n + 1]])));
            }
            frames += 1;
            buf.drain(..n + len);
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return (frames, None),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

/// The next data message, skipping control events; panics on timeout or close.
pub fn next_message(c: &mut Client) -> (MessageKind, Vec<u8>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for a message");
        match c.next_event(Some(left)).unwrap() {
            Some(Event::Text(t)) => return (MessageKind::Text, t.into_bytes()),
            Some(Event::Binary(b)) => return (MessageKind::Binary, b),
            Some(Event::Closed(c)) => panic!("closed while waiting for a message: {c:?}"),
            _ => {}
        }
    }
}

/// The close report of `c`, waiting (bounded) for it.
pub fn next_closed(c: &mut Client) -> Closed {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for the close");
        if let Some(Event::Closed(closed)) = c.next_event(Some(left)).unwrap() {
            return *closed;
        }
    }
}
