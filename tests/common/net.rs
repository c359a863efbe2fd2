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
    /// The admin address, when the configuration asks for one.
    pub admin: Option<SocketAddr>,
    pub handle: ShutdownHandle,
    pub stats: Arc<ServerStats>,
    pub thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Running {
    pub fn start<H: Handler + Send + 'static>(cfg: ServerConfig, handler: H) -> Running {
        let mut server = Server::bind("127.0.0.1:0".parse().unwrap(), cfg, handler).unwrap();
        let (addr, handle, stats) = (server.local_addr(), server.shutdown_handle(), server.stats());
        let admin = server.admin_addr();
        let thread = std::thread::spawn(move || server.run());
        Running { addr, admin, handle, stats, thread: Some(thread) }
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

/// `rfc6455 ARGS` (a server) as a child process, with the addresses its startup line
/// gives; killed on drop.
pub struct ServerProcess {
    pub child: std::process::Child,
    /// The startup line, e.g. `relay listening on ws://127.0.0.1:PORT; chat page: ...`.
    pub startup: String,
    /// The WebSocket address it listens on.
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Starts `rfc6455 ARGS` (logging at info) and waits, bounded, for its startup line.
    pub fn start(args: &[&str]) -> ServerProcess {
        Self::start_with_env(args, &[])
    }

    /// [`ServerProcess::start`] with these environment variables set.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rfc6455"))
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .args(["--log", "info"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run rfc6455");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the log to its end (so the child never blocks on a full pipe); the
        // startup line goes back.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(" listening on ") {
                    let _ = tx.send(line);
                }
            }
        });
        let Ok(line) = rx.recv_timeout(WAIT) else {
            let _ = child.kill();
            panic!("rfc6455 {args:?} printed no startup line");
        };
        let startup = line[line.find(" listening on ").unwrap()..].to_owned();
        let addr = url_in(&startup, "://").parse().expect("the startup line names the address");
        ServerProcess { child, startup, addr }
    }

    /// The `host:port` after `marker` (e.g. `metrics: http://`) in the startup line.
    pub fn addr_after(&self, marker: &str) -> SocketAddr {
        url_in(&self.startup, marker).parse().unwrap_or_else(|_| panic!("no {marker} in {:?}", self.startup))
    }
}

/// The `host:port` right after the first `marker` in `line`.
fn url_in<'a>(line: &'a str, marker: &str) -> &'a str {
    let rest = line.find(marker).map_or("", |i| &line[i + marker.len()..]);
    rest.split(['/', ';', ' ']).next().unwrap_or("")
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `request` (a whole HTTP request head, CRLFs included) and reads the response
/// until the server closes: returns the status, the head and the body.
pub fn http_exchange(addr: SocketAddr, request: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let end = all.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head") + 4;
    let head = String::from_utf8(all[..end].to_vec()).unwrap();
    let status = head.get(9..12).and_then(|s| s.parse().ok()).expect("a status line");
    (status, head, all[end..].to_vec())
}

/// `GET path` over plain HTTP/1.1: status, head, body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    http_exchange(addr, &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n"))
}

/// The value of header `name` in a response head (case-insensitive name).
pub fn head_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().filter_map(|l| l.split_once(':')).find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim())
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
