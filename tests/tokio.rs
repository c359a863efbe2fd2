//! The tokio driver `rfc6455::tokio` as its users meet it:
//!
//! * interop with a third-party implementation (tungstenite, with its own handshake, on
//!   std threads) in both roles, and with our own mio server (`rfc6455::net`), with
//!   permessage-deflate;
//! * the hyper path through the `hyper_echo` example (early frame behind the upgrade
//!   request, deflate and subprotocol negotiation, plain HTTP routes), and the
//!   `tokio_echo` / `tokio_client` examples run as programs;
//! * the engine's timers on paused tokio time over in-memory pipes (keepalive ping,
//!   pong, idle, handshake and close timeouts, to the millisecond);
//! * mock streams: one byte per poll, failing reads and writes, `select!`-cancelled
//!   `next()`, peers that never read (backpressure on `send` and on a ping flood, the
//!   close timeout);
//! * the split halves, with their inherent methods and as `futures` `Stream`/`Sink`.
//!
//! Every server binds 127.0.0.1 port 0, every wait is bounded by `tokio::time::timeout`
//! (real time, or paused time where the test says so) or by socket timeouts, and every
//! task, thread and child process started is stopped.

mod common;

#[path = "common/tungstenite_peer.rs"]
mod tungstenite_peer;

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::thread;
use std::time::Duration;

use common::client_frame;
use common::net::Running;
use futures_util::{SinkExt, StreamExt};
use rfc6455::net::{Echo, ServerConfig};
use rfc6455::tokio::WebSocket;
use rfc6455::{
    Accept, ClientRequest, CloseCode, CloseFrame, Closed, Config, DeflateConfig, DriverError, Event, HandshakeError, Message, Negotiated,
    OpCode, ProtocolError, Reject, Role, Side, State, UsageError,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, DuplexStream, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, sleep, timeout};
use tungstenite::protocol::CloseFrame as TCloseFrame;
use tungstenite::{Bytes, Message as TMessage};

/// The longest a real-time test waits for anything.
const WAIT: Duration = Duration::from_secs(10);

/// The bound of a paused-time test: virtual time, so it costs nothing, yet a hang fails.
const VIRTUAL_WAIT: Duration = Duration::from_secs(3600);

/// The key of RFC 6455 §1.3 and its accept value.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const KEY_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

// ---------------------------------------------------------------- helpers

/// Awaits `f` for at most `limit` on tokio's clock; a longer wait fails the test.
async fn within<F: Future>(limit: Duration, what: &str, f: F) -> F::Output {
    match timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Asserts that `elapsed` (paused time) is `expected`, to the millisecond.
fn assert_at(what: &str, elapsed: Duration, expected: Duration) {
    assert!(elapsed >= expected && elapsed < expected + Duration::from_millis(1), "{what} at {elapsed:?}, expected {expected:?}");
}

/// Awaits `f` for at most [`WAIT`].
async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    within(WAIT, what, f).await
}

/// A spawned task's result, waited for (bounded); its panic is the test's.
async fn join_task<T>(what: &str, task: tokio::task::JoinHandle<T>) -> T {
    bounded(what, task).await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// A std thread's result, waited for without blocking the runtime (bounded; the
/// threads' sockets have timeouts of their own); its panic is the test's.
async fn join_thread<T: Send + 'static>(what: &str, thread: thread::JoinHandle<T>) -> T {
    let joined = bounded(what, tokio::task::spawn_blocking(move || thread.join())).await.unwrap();
    joined.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn deflate() -> Config {
    Config { deflate: Some(DeflateConfig::default()), ..Config::default() }
}

/// Compressible bytes.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Deterministic pseudo-random numbers (xorshift64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Incompressible bytes.
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn frame(code: u16, reason: &str) -> CloseFrame {
    CloseFrame { code: CloseCode(code), reason: reason.to_owned() }
}

/// The next event of `ws` (bounded); panics on an error or the end of the stream.
async fn next_event<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocket<S>) -> Event {
    match bounded("the next event", ws.next()).await {
        Some(Ok(event)) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// Events until `Closed` (each wait bounded by `limit`): those before it, the report,
/// and when it came. Checks that `None` follows it.
async fn closed_within<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocket<S>, limit: Duration) -> (Vec<Event>, Box<Closed>, Instant) {
    let mut events = Vec::new();
    loop {
        match within(limit, "Event::Closed", ws.next()).await {
            Some(Ok(Event::Closed(closed))) => {
                let at = Instant::now();
                assert!(within(limit, "the end of the stream", ws.next()).await.is_none(), "None follows Closed");
                return (events, closed, at);
            }
            Some(Ok(event)) => events.push(event),
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

/// Real time: events until `Closed`, and the report.
async fn until_closed<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocket<S>) -> (Vec<Event>, Box<Closed>) {
    let (events, closed, _) = closed_within(ws, WAIT).await;
    (events, closed)
}

/// Our echo loop: text and binary go back to the sender. Returns what it saw and the
/// report. (Unbounded itself: callers await it through a bounded join.)
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocket<S>) -> Result<(Vec<Event>, Box<Closed>), DriverError> {
    let mut seen = Vec::new();
    while let Some(event) = ws.next().await {
        match event? {
            Event::Text(text) => {
                seen.push(Event::Text(text.clone()));
                ws.send(Message::Text(text)).await?;
            }
            Event::Binary(data) => {
                seen.push(Event::Binary(data.clone()));
                ws.send(Message::Binary(data)).await?;
            }
            Event::Closed(closed) => {
                assert!(ws.next().await.is_none(), "None follows Closed");
                return Ok((seen, closed));
            }
            event => seen.push(event),
        }
    }
    panic!("the stream ended without Event::Closed");
}

/// A listener on 127.0.0.1, port 0.
async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// A blocking socket whose reads and writes give up after [`WAIT`].
fn std_bounded(tcp: StdTcpStream) -> StdTcpStream {
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp.set_write_timeout(Some(WAIT)).unwrap();
    tcp
}

/// tungstenite as a client, with its own handshake.
fn tungstenite_client(addr: SocketAddr, path: &str) -> tungstenite::WebSocket<StdTcpStream> {
    let tcp = std_bounded(StdTcpStream::connect(addr).unwrap());
    let (ws, response) = tungstenite::client(format!("ws://{addr}{path}"), tcp).expect("tungstenite's client handshake");
    assert_eq!(response.status(), 101);
    ws
}

/// The next data or close message tungstenite reads (pongs are counted in `pongs`).
fn tungstenite_read(ws: &mut tungstenite::WebSocket<StdTcpStream>, pongs: &mut usize) -> TMessage {
    loop {
        match ws.read().expect("tungstenite read") {
            TMessage::Pong(_) => *pongs += 1,
            TMessage::Ping(_) => {}
            msg => return msg,
        }
    }
}

fn request_head(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Reads an HTTP head one byte at a time, so nothing after it is consumed.
async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 8192, "head too long");
        head.push(r.read_u8().await.expect("reading an HTTP head"));
    }
    String::from_utf8(head).unwrap()
}

/// A frame as the peer sees it on the wire.
#[derive(Debug, PartialEq, Eq)]
struct RawFrame {
    /// FIN, RSV and opcode.
    b0: u8,
    masked: bool,
    /// Unmasked.
    payload: Vec<u8>,
}

/// Reads one frame from a raw stream.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> RawFrame {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).await.expect("a frame header");
    let len = match h[1] & 0x7f {
        126 => usize::from(r.read_u16().await.unwrap()),
        127 => r.read_u64().await.unwrap() as usize,
        n => usize::from(n),
    };
    let masked = h[1] & 0x80 != 0;
    let mut key = [0u8; 4];
    if masked {
        r.read_exact(&mut key).await.unwrap();
    }
    let mut payload = vec![0; len];
    r.read_exact(&mut payload).await.unwrap();
    if masked {
        payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= key[i % 4]);
    }
    RawFrame { b0: h[0], masked, payload }
}

/// Reads until the end of the stream; returns what came before it.
async fn read_to_eof<R: AsyncRead + Unpin>(r: &mut R) -> Vec<u8> {
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).await.expect("reading to the end of the stream");
    rest
}

/// An unmasked close frame's payload: code and reason.
fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// A WebSocket over one end of an in-memory pipe (64 KiB each way), open as if another
/// stack had done the handshake; the other end is the raw peer.
fn upgraded(role: Role, config: Config) -> (WebSocket<DuplexStream>, DuplexStream) {
    let (ours, peer) = tokio::io::duplex(64 * 1024);
    (WebSocket::upgraded(ours, role, config, &Negotiated::new(), &[]), peer)
}

// ---------------------------------------------------------------- the example programs

/// The directory of the example binaries of this build (tests run from
/// `target/<profile>/deps`), built once per test run so that they are current.
fn examples_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).expect("tests run from target/<profile>/deps");
        let target_dir = profile_dir.parent().expect("target/<profile>");
        let mut cargo = std::process::Command::new(env!("CARGO"));
        cargo.args(["build", "--quiet", "--example", "tokio_echo", "--example", "tokio_client", "--example", "hyper_echo", "--target-dir"]);
        cargo.arg(target_dir).current_dir(env!("CARGO_MANIFEST_DIR"));
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some("release") => {
                cargo.arg("--release");
            }
            Some(other) => {
                cargo.args(["--profile", other]);
            }
        }
        let status = cargo.status().expect("running cargo build --example");
        assert!(status.success(), "cargo build of the examples failed");
        profile_dir.join("examples")
    })
}

/// An example server started with `127.0.0.1:0`; killed when dropped (also when the
/// test panics), by tokio's `kill_on_drop`.
struct ExampleServer {
    addr: SocketAddr,
    _child: tokio::process::Child,
}

impl ExampleServer {
    async fn start(name: &str) -> ExampleServer {
        let mut child = tokio::process::Command::new(examples_dir().join(name))
            .arg("127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        bounded("the startup line", stdout.read_line(&mut line)).await.unwrap();
        let addr = line.trim().strip_prefix("listening on ws://").unwrap_or_else(|| panic!("startup line: {line:?}"));
        let addr: SocketAddr = addr.parse().unwrap();
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
        ExampleServer { addr, _child: child }
    }

    fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

/// A plain HTTP/1.1 GET (connection closed after it); returns the whole answer.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    String::from_utf8(bounded("the HTTP answer", read_to_eof(&mut tcp)).await).unwrap()
}

// ---------------------------------------------------------------- against tungstenite

#[tokio::test]
async fn our_server_echoes_a_tungstenite_client_and_both_see_its_close() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        echo(WebSocket::accept(tcp, Config::default()).await?).await
    });
    let big = pattern(1 << 20);
    let client_big = big.clone();
    let client = thread::spawn(move || {
        let mut ws = tungstenite_client(addr, "/chat");
        ws.send(TMessage::text("hello")).unwrap();
        assert_eq!(ws.read().unwrap(), TMessage::text("hello"));
        ws.send(TMessage::binary(vec![0u8, 1, 2, 255])).unwrap();
        assert_eq!(ws.read().unwrap(), TMessage::binary(vec![0u8, 1, 2, 255]));
        ws.send(TMessage::binary(client_big.clone())).unwrap();
        assert!(ws.read().unwrap() == TMessage::Binary(Bytes::from(client_big)), "the 1 MiB message comes back whole");
        ws.send(TMessage::Ping(Bytes::from_static(b"are you there"))).unwrap();
        assert_eq!(ws.read().unwrap(), TMessage::Pong(Bytes::from_static(b"are you there")));
        ws.close(Some(TCloseFrame { code: 4000.into(), reason: "done".into() })).unwrap();
        match ws.read().unwrap() {
            TMessage::Close(Some(f)) => assert_eq!(u16::from(f.code), 4000, "the server echoes the code"),
            other => panic!("expected the close reply, got {other:?}"),
        }
        assert!(matches!(ws.read(), Err(tungstenite::Error::ConnectionClosed)));
    });
    join_thread("the tungstenite client", client).await;

    let (seen, closed) = join_task("our server", server).await.unwrap();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen[0], Event::Text("hello".into()));
    assert_eq!(seen[1], Event::Binary(vec![0, 1, 2, 255]));
    assert!(seen[2] == Event::Binary(big), "the 1 MiB message arrives whole");
    assert!(matches!(&seen[3], Event::Ping(p) if &***p == b"are you there"), "{:?}", seen[3]);
    assert_eq!(closed.received, Some(frame(4000, "done")));
    assert_eq!(closed.sent.as_ref().map(|f| f.code), Some(CloseCode(4000)));
    assert_eq!(closed.initiator, Side::Remote);
    assert!(closed.clean && closed.error.is_none(), "{closed:?}");
}

#[tokio::test]
async fn our_server_closes_a_tungstenite_client_with_code_and_reason() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut ws = WebSocket::accept(tcp, Config::default()).await?;
        ws.send_text("bye soon").await?;
        ws.close(CloseCode(4001), "server done").await?;
        assert!(matches!(ws.send_text("late").await, Err(DriverError::Usage(UsageError::NotOpen { .. }))));
        Ok::<_, DriverError>(until_closed(&mut ws).await)
    });
    let client = thread::spawn(move || {
        let mut ws = tungstenite_client(addr, "/");
        assert_eq!(ws.read().unwrap(), TMessage::text("bye soon"));
        match ws.read().unwrap() {
            TMessage::Close(Some(f)) => {
                assert_eq!(u16::from(f.code), 4001);
                assert_eq!(f.reason.as_str(), "server done");
            }
            other => panic!("expected the server's close, got {other:?}"),
        }
        // tungstenite answers; the server then ends the TCP connection.
        assert!(matches!(ws.read(), Err(tungstenite::Error::ConnectionClosed)));
    });
    join_thread("the tungstenite client", client).await;
    let (events, closed) = join_task("our server", server).await.unwrap();
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(closed.sent, Some(frame(4001, "server done")));
    assert_eq!(closed.received.as_ref().map(|f| f.code), Some(CloseCode(4001)));
    assert_eq!(closed.initiator, Side::Local);
    assert!(closed.clean, "{closed:?}");
}

#[tokio::test]
async fn our_client_talks_to_a_tungstenite_server() {
    let (listener, addr) = listen().await;
    let listener = listener.into_std().unwrap();
    listener.set_nonblocking(false).unwrap();
    let server = thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let mut ws = tungstenite::accept(std_bounded(tcp)).expect("tungstenite's server handshake");
        tungstenite_peer::echo_until_close(&mut ws)
    });

    let mut ws = bounded("connect", rfc6455::tokio::connect(&format!("ws://{addr}/chat"), Config::default())).await.unwrap();
    assert_eq!(ws.connection().state(), State::Open);
    let big = pattern(1 << 20);
    ws.send_text("hi there").await.unwrap();
    ws.send(vec![9u8, 8, 7]).await.unwrap();
    ws.send(big.clone()).await.unwrap();
    ws.ping(b"p1").await.unwrap();
    assert_eq!(next_event(&mut ws).await, Event::Text("hi there".into()));
    assert_eq!(next_event(&mut ws).await, Event::Binary(vec![9, 8, 7]));
    assert!(next_event(&mut ws).await == Event::Binary(big.clone()), "the 1 MiB message comes back whole");
    match next_event(&mut ws).await {
        Event::Pong { payload, rtt } => {
            assert_eq!(&**payload, b"p1");
            assert!(rtt.is_some(), "the pong answers our ping");
        }
        other => panic!("expected a pong, got {other:?}"),
    }
    ws.close(CloseCode::NORMAL, "client done").await.unwrap();
    let (events, closed) = until_closed(&mut ws).await;
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(closed.sent, Some(frame(1000, "client done")));
    assert_eq!(closed.received.as_ref().map(|f| f.code), Some(CloseCode::NORMAL));
    assert!(closed.clean && closed.error.is_none(), "{closed:?}");
    assert!(matches!(ws.send_text("late").await, Err(DriverError::Usage(UsageError::NotOpen { state: State::Closed }))));

    let seen = join_thread("the tungstenite server", server).await;
    assert_eq!(seen.len(), 4, "{} messages", seen.len());
    assert_eq!(seen[0], TMessage::text("hi there"));
    assert_eq!(seen[1], TMessage::binary(vec![9u8, 8, 7]));
    assert!(seen[2] == TMessage::Binary(Bytes::from(big)));
    match &seen[3] {
        TMessage::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 1000);
            assert_eq!(f.reason.as_str(), "client done");
        }
        other => panic!("expected our close, got {other:?}"),
    }
}

// ---------------------------------------------------------------- handshakes

#[tokio::test]
async fn accept_reads_a_frame_sent_with_the_request() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        echo(WebSocket::accept(tcp, Config::default()).await?).await
    });
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut first_write = request_head("/pipelined").into_bytes();
    first_write.extend(client_frame(true, OpCode::Text, b"early bird"));
    tcp.write_all(&first_write).await.unwrap();
    let head = bounded("the 101", read_head(&mut tcp)).await;
    assert!(head.starts_with("HTTP/1.1 101 ") && head.contains(KEY_ACCEPT), "{head}");
    let echoed = bounded("the echo", read_frame(&mut tcp)).await;
    assert_eq!(echoed, RawFrame { b0: 0x81, masked: false, payload: b"early bird".to_vec() });
    tcp.write_all(&client_frame(true, OpCode::Close, &close_payload(1000, ""))).await.unwrap();
    let rest = bounded("the close reply and the end of the stream", read_to_eof(&mut tcp)).await;
    assert_eq!(rest, [0x88, 2, 0x03, 0xE8]);
    let (seen, closed) = join_task("our server", server).await.unwrap();
    assert_eq!(seen, [Event::Text("early bird".into())]);
    assert!(closed.clean);
}

#[tokio::test]
async fn accept_with_refuses_and_the_client_sees_the_status() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        WebSocket::accept_with(tcp, Config::default(), |req| {
            assert_eq!(req.path(), "/private");
            Err(Reject::new(403).body("no entry"))
        })
        .await
        .map(|_| ())
    });
    match bounded("connect", rfc6455::tokio::connect(&format!("ws://{addr}/private"), Config::default())).await {
        Err(DriverError::Handshake(HandshakeError::Status { status, .. })) => assert_eq!(status, 403),
        other => panic!("expected HTTP 403, got {other:?}"),
    }
    assert!(matches!(join_task("our server", server).await, Err(DriverError::Rejected(403))));
}

#[tokio::test]
async fn accept_with_picks_a_subprotocol_and_wss_is_refused() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let ws = WebSocket::accept_with(tcp, Config::default(), |req| {
            let chosen = req.subprotocols().find(|p| *p == "chat").map(str::to_owned);
            Ok(chosen.map_or_else(Accept::new, |p| Accept::new().subprotocol(p)))
        })
        .await?;
        Ok::<_, DriverError>(ws.connection().subprotocol().map(str::to_owned))
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let request = ClientRequest::new(&format!("ws://{addr}/")).unwrap().subprotocol("superchat").unwrap().subprotocol("chat").unwrap();
    let ws = bounded("connect", WebSocket::connect(tcp, Config::default(), &request)).await.unwrap();
    assert_eq!(ws.connection().subprotocol(), Some("chat"));
    assert_eq!(join_task("our server", server).await.unwrap().as_deref(), Some("chat"));

    let err = rfc6455::tokio::connect("wss://127.0.0.1:1/", Config::default()).await.unwrap_err();
    assert!(matches!(err, DriverError::TlsUnsupported), "{err:?}");
}

// ---------------------------------------------------------------- against our mio server

#[tokio::test]
async fn our_client_talks_to_our_mio_server_with_deflate() {
    let server = Running::start(ServerConfig { engine: deflate(), ..ServerConfig::default() }, Echo);
    let mut ws = bounded("connect", rfc6455::tokio::connect(&server.url("/echo"), deflate())).await.unwrap();
    assert!(ws.connection().is_compressed(), "permessage-deflate agreed with the mio server");
    let text = "all work and no play makes jack a dull boy. ".repeat(2000);
    let noise = Rng(7).bytes(100_000);
    ws.send_text("short").await.unwrap();
    ws.send_text(&text).await.unwrap();
    ws.send(pattern(300_000)).await.unwrap();
    ws.send(noise.clone()).await.unwrap();
    assert_eq!(next_event(&mut ws).await, Event::Text("short".into()));
    assert!(next_event(&mut ws).await == Event::Text(text), "the compressed text comes back");
    assert!(next_event(&mut ws).await == Event::Binary(pattern(300_000)), "the compressed binary comes back");
    assert!(next_event(&mut ws).await == Event::Binary(noise), "the incompressible binary comes back");
    ws.close(CloseCode::NORMAL, "done").await.unwrap();
    let (events, closed) = until_closed(&mut ws).await;
    assert!(events.is_empty(), "{events:?}");
    assert!(closed.clean && closed.error.is_none(), "{closed:?}");
    assert_eq!(closed.received.as_ref().map(|f| f.code), Some(CloseCode::NORMAL));
}

// ---------------------------------------------------------------- the hyper example

#[tokio::test]
async fn hyper_example_answers_an_upgrade_and_the_frame_sent_with_it() {
    let server = ExampleServer::start("hyper_echo").await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    // The upgrade request and the first frame in one write: hyper reads past the head.
    let mut first_write = request_head("/echo").into_bytes();
    first_write.extend(client_frame(true, OpCode::Text, b"early bird"));
    tcp.write_all(&first_write).await.unwrap();
    let head = bounded("the 101", read_head(&mut tcp)).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(head.contains(KEY_ACCEPT), "{head}");
    let echoed = bounded("the echo of the early frame", read_frame(&mut tcp)).await;
    assert_eq!(echoed, RawFrame { b0: 0x81, masked: false, payload: b"early bird".to_vec() });

    tcp.write_all(&client_frame(true, OpCode::Text, b"second")).await.unwrap();
    let echoed = bounded("the echo of the second frame", read_frame(&mut tcp)).await;
    assert_eq!(echoed.payload, b"second");
    tcp.write_all(&client_frame(true, OpCode::Close, &1000u16.to_be_bytes())).await.unwrap();
    let rest = bounded("the close reply and the end of the stream", read_to_eof(&mut tcp)).await;
    assert_eq!(rest, [0x88, 2, 0x03, 0xE8], "the close reply, then the end of the stream");
}

#[tokio::test]
async fn hyper_example_negotiates_deflate_and_the_echo_subprotocol() {
    let server = ExampleServer::start("hyper_echo").await;
    let request = ClientRequest::new(&server.url("/room")).unwrap().subprotocol("echo").unwrap();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut ws = bounded("connect", WebSocket::connect(tcp, deflate(), &request)).await.unwrap();
    assert!(ws.connection().is_compressed(), "permessage-deflate agreed through hyper");
    assert_eq!(ws.connection().subprotocol(), Some("echo"));
    let text = "compress me, compress me. ".repeat(1000);
    ws.send_text(&text).await.unwrap();
    assert!(next_event(&mut ws).await == Event::Text(text));
    ws.send(pattern(70_000)).await.unwrap();
    assert!(next_event(&mut ws).await == Event::Binary(pattern(70_000)));
    ws.close(CloseCode::NORMAL, "").await.unwrap();
    let (events, closed) = until_closed(&mut ws).await;
    assert!(events.is_empty(), "{events:?}");
    assert!(closed.clean && closed.error.is_none(), "{closed:?}");

    // Without the offer, no subprotocol is chosen.
    let mut plain = bounded("connect", rfc6455::tokio::connect(&server.url("/"), Config::default())).await.unwrap();
    assert_eq!(plain.connection().subprotocol(), None);
    assert!(!plain.connection().is_compressed());
    plain.close(CloseCode::NORMAL, "").await.unwrap();
    assert!(until_closed(&mut plain).await.1.clean);
}

#[tokio::test]
async fn hyper_example_serves_plain_http_beside_websockets() {
    let server = ExampleServer::start("hyper_echo").await;
    let health = http_get(server.addr, "/health").await;
    assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
    assert!(health.ends_with("\r\n\r\nok\n"), "{health}");

    let plain = http_get(server.addr, "/").await;
    assert!(plain.starts_with("HTTP/1.1 426 "), "{plain}");
    let head = plain.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(head.lines().any(|l| l == "sec-websocket-version: 13"), "{plain}");
    assert!(head.lines().any(|l| l == "upgrade: websocket"), "{plain}");
}

// ---------------------------------------------------------------- the tokio examples

#[tokio::test]
async fn tokio_example_client_and_echo_server_talk() {
    let server = ExampleServer::start("tokio_echo").await;
    let mut client = tokio::process::Command::new(examples_dir().join("tokio_client"))
        .arg(server.url("/"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(b"hello\nworld\n").await.unwrap();
    drop(stdin);
    let out = bounded("the client to exit", client.wait_with_output()).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "client failed: {}, stderr: {stderr}", out.status);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "hello\nworld\n");

    // A failed connection: `error: ...` and status 1.
    let refused = bounded(
        "the refused client to exit",
        tokio::process::Command::new(examples_dir().join("tokio_client"))
            .arg("ws://127.0.0.1:1/")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).starts_with("error: "), "{refused:?}");
}

// ---------------------------------------------------------------- timers on paused time

#[tokio::test(start_paused = true)]
async fn keepalive_pings_leave_at_each_ping_interval() {
    let interval = Duration::from_secs(30);
    let config = Config { ping_interval: Some(interval), pong_timeout: Duration::from_secs(10), ..Config::default() };
    let start = Instant::now();
    let (mut ws, mut peer) = upgraded(Role::Server, config);
    let peer = tokio::spawn(async move {
        let mut pings = Vec::new();
        for _ in 0..2 {
            let ping = read_frame(&mut peer).await;
            pings.push((start.elapsed(), ping.b0, ping.masked, ping.payload.clone()));
            peer.write_all(&client_frame(true, OpCode::Pong, &ping.payload)).await.unwrap();
        }
        // Then the peer goes away.
        pings
    });
    let (events, closed, _) = closed_within(&mut ws, VIRTUAL_WAIT).await;
    let pings = join_task("the peer", peer).await;
    assert_eq!(pings.len(), 2);
    for (i, (at, b0, masked, payload)) in pings.into_iter().enumerate() {
        let seq = i as u64 + 1;
        assert_at(&format!("ping {seq}"), at, interval * seq as u32);
        assert_eq!(b0, 0x89, "an unmasked FIN ping");
        assert!(!masked, "server frames are unmasked");
        assert_eq!(payload, seq.to_be_bytes(), "the keepalive's sequence number");
    }
    assert_eq!(events.len(), 2, "{events:?}");
    for event in &events {
        assert!(matches!(event, Event::Pong { rtt: Some(rtt), .. } if rtt.is_zero()), "answered at once: {event:?}");
    }
    // The peer dropped its end: the end of the stream, no keepalive error.
    assert_eq!(closed.error, None, "{closed:?}");
    assert_eq!(closed.code(), CloseCode::ABNORMAL);
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_never_answers_pings_is_dropped_at_pong_timeout() {
    let (interval, pong_timeout) = (Duration::from_secs(30), Duration::from_secs(10));
    let config = Config { ping_interval: Some(interval), pong_timeout, ..Config::default() };
    let start = Instant::now();
    let (mut ws, mut peer) = upgraded(Role::Server, config);
    let peer = tokio::spawn(async move {
        let ping = read_frame(&mut peer).await;
        let ping_at = start.elapsed();
        let rest = read_to_eof(&mut peer).await;
        (ping, ping_at, rest, start.elapsed())
    });
    let (events, closed, at) = closed_within(&mut ws, VIRTUAL_WAIT).await;
    let elapsed = at - start;
    assert_at("Closed", elapsed, interval + pong_timeout);
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(closed.error, Some(ProtocolError::PongTimeout));
    assert_eq!(closed.code(), CloseCode::ABNORMAL);
    assert_eq!(closed.sent, None, "a dead peer gets no close frame");
    assert_eq!(closed.initiator, Side::Local);

    let (ping, ping_at, rest, eof_at) = join_task("the peer", peer).await;
    assert_eq!(ping.b0, 0x89);
    assert_at("the ping", ping_at, interval);
    assert!(rest.is_empty(), "nothing after the ping but the end of the stream: {rest:?}");
    assert_eq!(eof_at, elapsed, "the stream ends with the Closed event");
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_drops_a_silent_peer_at_idle_timeout() {
    let idle = Duration::from_secs(15);
    let start = Instant::now();
    let (mut ws, peer) = upgraded(Role::Server, Config { idle_timeout: Some(idle), ..Config::default() });
    let (events, closed, at) = closed_within(&mut ws, VIRTUAL_WAIT).await;
    assert_at("Closed", at - start, idle);
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(closed.error, Some(ProtocolError::IdleTimeout));
    assert_eq!(closed.code(), CloseCode::ABNORMAL);
    drop(peer);
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_counts_from_the_last_bytes_received() {
    let idle = Duration::from_secs(15);
    let start = Instant::now();
    let (mut ws, mut peer) = upgraded(Role::Server, Config { idle_timeout: Some(idle), ..Config::default() });
    let peer = tokio::spawn(async move {
        sleep(Duration::from_secs(10)).await;
        peer.write_all(&client_frame(true, OpCode::Text, b"still here")).await.unwrap();
        read_to_eof(&mut peer).await
    });
    let (events, closed, at) = closed_within(&mut ws, VIRTUAL_WAIT).await;
    assert_at("Closed", at - start, Duration::from_secs(10) + idle);
    assert_eq!(events, [Event::Text("still here".into())]);
    assert_eq!(closed.error, Some(ProtocolError::IdleTimeout));
    assert!(join_task("the peer", peer).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn close_timeout_ends_a_close_the_peer_never_answers() {
    let close_timeout = Duration::from_secs(3);
    let (mut ws, mut peer) = upgraded(Role::Server, Config { close_timeout, ..Config::default() });
    let start = Instant::now();
    ws.close(CloseCode::NORMAL, "bye").await.unwrap();
    let peer = tokio::spawn(async move {
        let close = read_frame(&mut peer).await;
        (close, read_to_eof(&mut peer).await, Instant::now())
    });
    let (events, closed, at) = closed_within(&mut ws, VIRTUAL_WAIT).await;
    assert_at("Closed", at - start, close_timeout);
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(closed.sent, Some(frame(1000, "bye")));
    assert_eq!(closed.received, None);
    assert!(!closed.clean);
    assert_eq!(closed.error, None);
    assert_eq!(closed.initiator, Side::Local);

    let (close, rest, eof_at) = join_task("the peer", peer).await;
    assert_eq!(close, RawFrame { b0: 0x88, masked: false, payload: close_payload(1000, "bye") });
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(eof_at, at);
}

#[tokio::test(start_paused = true)]
async fn a_client_waits_at_most_close_timeout_for_the_server_to_end_tcp() {
    let close_timeout = Duration::from_secs(3);
    let (mut ws, mut peer) = upgraded(Role::Client, Config { close_timeout, ..Config::default() });
    let start = Instant::now();
    ws.close(CloseCode::NORMAL, "").await.unwrap();
    // The server answers the close at once but never ends TCP (RFC 6455 §7.1.1 says it should).
    let close = within(VIRTUAL_WAIT, "our close frame", read_frame(&mut peer)).await;
    assert_eq!((close.b0, close.masked, close.payload), (0x88, true, close_payload(1000, "")), "client frames are masked");
    peer.write_all(&[0x88, 2, 0x03, 0xE8]).await.unwrap();
    let (events, closed, at) = closed_within(&mut ws, VIRTUAL_WAIT).await;
    assert_at("Closed", at - start, close_timeout);
    assert!(events.is_empty(), "{events:?}");
    assert!(closed.clean, "the closing handshake completed: {closed:?}");
    assert_eq!(closed.error, None);
    drop(peer);
}

#[tokio::test(start_paused = true)]
async fn handshake_timeout_answers_408_at_the_deadline() {
    let handshake_timeout = Duration::from_secs(5);
    let (ours, mut peer) = tokio::io::duplex(64 * 1024);
    let start = Instant::now();
    let server = tokio::spawn(async move {
        let result = WebSocket::accept(ours, Config { handshake_timeout: Some(handshake_timeout), ..Config::default() }).await;
        (result.map(|_| ()), start.elapsed())
    });
    peer.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let answer = String::from_utf8(within(VIRTUAL_WAIT, "the 408", read_to_eof(&mut peer)).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    let (result, elapsed) = join_task("our server", server).await;
    assert!(matches!(result, Err(DriverError::Handshake(HandshakeError::Timeout))), "{result:?}");
    assert_at("the handshake's end", elapsed, handshake_timeout);
}

// ---------------------------------------------------------------- mock streams

/// Reads and writes at most one byte per poll, and answers every other poll with
/// `Pending` (waking itself at once).
struct Trickle {
    inner: DuplexStream,
    skip_read: bool,
    skip_write: bool,
}

impl Trickle {
    fn new(inner: DuplexStream) -> Self {
        Self { inner, skip_read: false, skip_write: false }
    }
}

impl AsyncRead for Trickle {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.skip_read = !this.skip_read;
        if this.skip_read {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let mut one = [0u8; 1];
        let mut small = ReadBuf::new(&mut one[..buf.remaining().min(1)]);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut small))?;
        buf.put_slice(small.filled());
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Trickle {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.skip_write = !this.skip_write;
        if this.skip_write {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_write(cx, &buf[..buf.len().min(1)])
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn one_byte_per_poll_still_works_with_deflate() {
    let (a, b) = tokio::io::duplex(256 * 1024);
    let server = tokio::spawn(async move { echo(WebSocket::accept(Trickle::new(a), deflate()).await?).await });
    let request = ClientRequest::new("ws://localhost/trickle").unwrap();
    let mut ws = bounded("connect", WebSocket::connect(Trickle::new(b), deflate(), &request)).await.unwrap();
    assert!(ws.connection().is_compressed());
    let text = format!("héllo, one byte at a time; {}", "abc".repeat(33_000));
    let noise = Rng(3).bytes(100_000);
    ws.send_text("héllo").await.unwrap();
    ws.send_text(&text).await.unwrap();
    ws.send(noise.clone()).await.unwrap();
    assert_eq!(next_event(&mut ws).await, Event::Text("héllo".into()));
    assert!(next_event(&mut ws).await == Event::Text(text.clone()), "the 100 KB text comes back");
    assert!(next_event(&mut ws).await == Event::Binary(noise.clone()), "the 100 KB binary comes back");
    ws.close(CloseCode::NORMAL, "done").await.unwrap();
    let (events, closed) = until_closed(&mut ws).await;
    assert!(events.is_empty(), "{events:?}");
    assert!(closed.clean, "{closed:?}");
    let (seen, server_closed) = join_task("our server", server).await.unwrap();
    assert_eq!(seen.len(), 3);
    assert!(seen[2] == Event::Binary(noise));
    assert_eq!(server_closed.received, Some(frame(1000, "done")));
    assert!(server_closed.clean);
}

/// Reads from a fixed input (then waits forever, never waking) or fails every read
/// with `read_error`; every write fails with `write_error`, if set.
#[derive(Debug)]
struct Faulty {
    input: io::Cursor<Vec<u8>>,
    read_error: Option<io::ErrorKind>,
    write_error: Option<io::ErrorKind>,
}

impl AsyncRead for Faulty {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(kind) = this.read_error {
            return Poll::Ready(Err(kind.into()));
        }
        let rest = &this.input.get_ref()[this.input.position() as usize..];
        if rest.is_empty() {
            return Poll::Pending;
        }
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        this.input.set_position(this.input.position() + n as u64);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Faulty {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.write_error {
            Some(kind) => Poll::Ready(Err(kind.into())),
            None => Poll::Ready(Ok(buf.len())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_failing_write_during_the_handshake_is_an_io_error() {
    let stream =
        Faulty { input: io::Cursor::new(request_head("/").into_bytes()), read_error: None, write_error: Some(io::ErrorKind::BrokenPipe) };
    match bounded("accept", WebSocket::accept(stream, Config::default())).await {
        Err(DriverError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::BrokenPipe),
        other => panic!("expected BrokenPipe, got {other:?}"),
    }
}

/// The module docs: "An I/O error is returned once, followed by `Closed` (1006) and
/// `None`." Here `send` hits the error; `next` must not report it a second time.
#[tokio::test]
async fn a_failing_write_is_returned_once_then_closed_then_none() {
    let early = client_frame(true, OpCode::Text, b"before the failure");
    let stream = Faulty { input: io::Cursor::new(Vec::new()), read_error: None, write_error: Some(io::ErrorKind::BrokenPipe) };
    let mut ws = WebSocket::upgraded(stream, Role::Server, Config::default(), &Negotiated::new(), &early);
    match bounded("send", ws.send_text("lost")).await {
        Err(DriverError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::BrokenPipe),
        other => panic!("expected BrokenPipe, got {other:?}"),
    }
    // What was received before still comes out, then the end: the error is not repeated.
    let mut rest = Vec::new();
    while let Some(item) = bounded("the next item", ws.next()).await {
        rest.push(item.map_err(|e| e.to_string()));
        assert!(rest.len() < 10, "{rest:?}");
    }
    assert_eq!(rest.len(), 2, "Text, then Closed, then None: {rest:?}");
    assert_eq!(rest[0], Ok(Event::Text("before the failure".into())));
    match &rest[1] {
        Ok(Event::Closed(closed)) => assert_eq!(closed.code(), CloseCode::ABNORMAL, "{closed:?}"),
        other => panic!("expected Closed (1006), got {other:?}"),
    }
    assert!(matches!(ws.send_text("more").await, Err(DriverError::Usage(UsageError::NotOpen { .. }))));
}

#[tokio::test]
async fn a_failing_read_is_returned_once_then_closed_then_none() {
    let stream = Faulty { input: io::Cursor::new(Vec::new()), read_error: Some(io::ErrorKind::ConnectionReset), write_error: None };
    let mut ws = WebSocket::upgraded(stream, Role::Server, Config::default(), &Negotiated::new(), &[]);
    match bounded("next", ws.next()).await {
        Some(Err(DriverError::Io(e))) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
        other => panic!("expected ConnectionReset, got {other:?}"),
    }
    match bounded("next", ws.next()).await {
        Some(Ok(Event::Closed(closed))) => {
            assert_eq!(closed.code(), CloseCode::ABNORMAL);
            assert!(!closed.clean);
        }
        other => panic!("expected Closed (1006), got {other:?}"),
    }
    assert!(bounded("next", ws.next()).await.is_none());
    assert!(bounded("next", ws.next()).await.is_none(), "None stays None");
}

#[tokio::test]
async fn a_next_cancelled_by_select_loses_nothing() {
    const COUNT: usize = 1000;
    let (listener, addr) = listen().await;
    let sender = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut ws = WebSocket::accept(tcp, Config::default()).await?;
        let mut rng = Rng(0x5eed);
        for i in 0..COUNT {
            // Some messages span many reads, so that cancellation hits mid-message.
            let len = if i % 10 == 0 { 40_000 } else { (rng.next() % 2000) as usize };
            ws.send(Message::Text(format!("{i:04}:{}", "x".repeat(len)))).await?;
            if rng.next() % 4 == 0 {
                sleep(Duration::from_micros(rng.next() % 2000)).await;
            }
        }
        Ok::<_, DriverError>(until_closed(&mut ws).await)
    });
    let mut ws = bounded("connect", rfc6455::tokio::connect(&format!("ws://{addr}/"), Config::default())).await.unwrap();
    let mut next = 0;
    let mut cancelled = 0;
    within(WAIT * 6, "all the messages", async {
        while next < COUNT {
            tokio::select! {
                event = ws.next() => match event {
                    Some(Ok(Event::Text(text))) => {
                        let (n, padding) = text.split_once(':').expect("a numbered message");
                        assert_eq!(n.parse::<usize>().unwrap(), next, "in order, none lost");
                        assert!(padding.bytes().all(|b| b == b'x'));
                        next += 1;
                    }
                    other => panic!("expected message {next}, got {other:?}"),
                },
                _ = sleep(Duration::from_micros(300)) => cancelled += 1,
            }
        }
    })
    .await;
    assert_eq!(next, COUNT);
    assert!(cancelled > 0, "next() was never cancelled");
    ws.close(CloseCode::NORMAL, "").await.unwrap();
    assert!(until_closed(&mut ws).await.1.clean);
    let (events, closed) = join_task("the sender", sender).await.unwrap();
    assert!(events.is_empty(), "{events:?}");
    assert!(closed.clean);
}

#[tokio::test(start_paused = true)]
async fn send_waits_while_a_peer_that_never_reads_holds_the_limit() {
    let limit = 256 * 1024;
    let len = 64 * 1024;
    // One message's frame: the payload and a 10-byte header (unmasked, 64-bit length).
    let framed = len + 10;
    let (mut ws, mut peer) = upgraded(Role::Server, Config::default());
    ws.set_write_buffer_limit(limit);
    let mut queued = 0;
    let mut stalled = 0;
    for i in 0..24u8 {
        let before = ws.connection().bytes_to_write();
        // `send` is not cancel-safe: a send that times out may have queued its message.
        let sent = timeout(Duration::from_secs(1), ws.send(vec![i; len])).await;
        let after = ws.connection().bytes_to_write();
        assert!(after <= limit + framed, "attempt {i}: {after} bytes queued, over the limit plus one message");
        if after > before {
            queued += 1;
            stalled = 0;
        } else {
            assert!(sent.is_err(), "attempt {i}: a send that queued nothing must still be waiting");
            stalled += 1;
        }
    }
    assert!(stalled >= 10, "sends wait while the output is over the limit (stalled {stalled})");
    assert_eq!(ws.connection().bytes_to_write() + len, queued * framed, "the pipe holds 64 KiB, the rest is queued");

    // The peer starts reading: every queued message arrives intact, then our close.
    let reader = tokio::spawn(async move {
        let mut frames = Vec::new();
        loop {
            let f = read_frame(&mut peer).await;
            let done = f.b0 == 0x88;
            frames.push(f);
            if done {
                return (frames, peer);
            }
        }
    });
    // `close` queues the frame; `next` writes the rest while the peer reads.
    within(VIRTUAL_WAIT, "the close to be queued", ws.close(CloseCode::NORMAL, "")).await.unwrap();
    let (_, closed, _) = closed_within(&mut ws, VIRTUAL_WAIT).await;
    assert_eq!(closed.sent.as_ref().map(|f| f.code), Some(CloseCode::NORMAL));
    let (frames, peer) = join_task("the peer", reader).await;
    assert_eq!(frames.len(), queued + 1);
    for (i, f) in frames[..queued].iter().enumerate() {
        assert_eq!((f.b0, f.payload.len()), (0x82, len), "message {i}");
        assert!(f.payload.iter().all(|&b| usize::from(b) == i), "message {i} intact");
    }
    drop(peer);
}

#[tokio::test(start_paused = true)]
async fn a_ping_flood_from_a_peer_that_never_reads_is_bounded() {
    let limit = 64 * 1024;
    let (mut ws, peer) = upgraded(Role::Server, Config::default());
    ws.set_write_buffer_limit(limit);
    let (peer_read, mut peer_write) = tokio::io::split(peer);
    let written = Arc::new(AtomicUsize::new(0));
    let flood = tokio::spawn({
        let written = written.clone();
        async move {
            let _never_read = peer_read;
            let batch = client_frame(true, OpCode::Ping, &[0x55; 125]).repeat(64);
            loop {
                peer_write.write_all(&batch).await.unwrap();
                written.fetch_add(batch.len(), Ordering::Relaxed);
            }
        }
    });
    let mut pings = 0usize;
    let mut most = 0;
    loop {
        match timeout(Duration::from_secs(1), ws.next()).await {
            Ok(Some(Ok(Event::Ping(_)))) => pings += 1,
            Ok(other) => panic!("expected pings, got {other:?}"),
            // Nothing more: the server stopped reading.
            Err(_) => break,
        }
        most = most.max(ws.connection().bytes_to_write());
        assert!(pings < 1_000_000, "the server never stopped reading");
    }
    // One 16 KiB read of 131-byte pings queues less than 16 KiB of 127-byte pongs.
    assert!(most <= limit + 16 * 1024, "output grew to {most} bytes");
    assert!(ws.connection().bytes_to_write() > limit, "it stopped because of the limit");
    // The peer's flood is stuck too: nothing is read from it any more.
    let stuck_at = written.load(Ordering::Relaxed);
    assert!(timeout(Duration::from_secs(60), ws.next()).await.is_err(), "still nothing read");
    assert_eq!(written.load(Ordering::Relaxed), stuck_at);
    assert!(pings * 131 <= stuck_at, "{pings} pings read, {stuck_at} bytes written");
    flood.abort();
}

/// A close to a peer that never reads: the close timeout must still end the
/// connection, even though the close frame can never be written.
#[tokio::test(start_paused = true)]
async fn close_timeout_ends_a_connection_whose_peer_never_reads() {
    let close_timeout = Duration::from_secs(3);
    let (mut ws, peer) = upgraded(Role::Server, Config { close_timeout, ..Config::default() });
    ws.set_write_buffer_limit(256 * 1024);
    // 1 MiB queued; the pipe takes 64 KiB of it.
    ws.feed(vec![1u8; 1 << 20]).await.unwrap();
    let start = Instant::now();
    // The close frame is queued and `close` returns at once, though the peer reads nothing.
    within(Duration::from_millis(1), "close", ws.close(CloseCode::NORMAL, "")).await.unwrap();
    assert_eq!(ws.connection().state(), State::Closing);
    // Nothing can arrive before it: the next item must be Closed.
    let next = timeout(close_timeout * 2, ws.next()).await;
    let (state, queued) = (ws.connection().state(), ws.connection().bytes_to_write());
    let Ok(Some(Ok(Event::Closed(closed)))) = next else {
        panic!("no Closed within 2 x close_timeout (got {next:?}); the engine is {state:?} with {queued} bytes still queued");
    };
    assert!(start.elapsed() >= close_timeout, "{:?}", start.elapsed());
    assert_eq!(closed.sent.as_ref().map(|f| f.code), Some(CloseCode::NORMAL));
    assert_eq!(closed.received, None);
    assert!(!closed.clean);
    assert!(within(VIRTUAL_WAIT, "the end of the stream", ws.next()).await.is_none(), "None follows Closed");
    drop(peer);
}

/// The peer closes, then never reads: our close reply waits behind output it will
/// never take. The engine is done at once; the driver must not wait for ever to
/// write it (it has no deadline left to wake it), but hand out `Closed` in bounded time.
#[tokio::test(start_paused = true)]
async fn a_peer_that_closes_and_never_reads_still_gets_closed() {
    let close_timeout = Duration::from_secs(3);
    let (mut ws, mut peer) = upgraded(Role::Server, Config { close_timeout, ..Config::default() });
    ws.set_write_buffer_limit(4 << 20);
    // 1 MiB queued (under the limit, so reading goes on); the pipe takes 64 KiB of it.
    ws.feed(vec![1u8; 1 << 20]).await.unwrap();
    peer.write_all(&client_frame(true, OpCode::Close, &close_payload(1000, "bye"))).await.unwrap();
    let start = Instant::now();
    let next = timeout(close_timeout * 2, ws.next()).await;
    let (state, queued) = (ws.connection().state(), ws.connection().bytes_to_write());
    let Ok(Some(Ok(Event::Closed(closed)))) = next else {
        panic!("no Closed within 2 x close_timeout (got {next:?}); the engine is {state:?} with {queued} bytes still queued");
    };
    assert!(start.elapsed() <= close_timeout * 2, "{:?}", start.elapsed());
    assert_eq!(closed.received, Some(frame(1000, "bye")));
    assert_eq!(closed.initiator, Side::Remote);
    assert!(within(VIRTUAL_WAIT, "the end of the stream", ws.next()).await.is_none(), "None follows Closed");
    drop(peer);
}

// ---------------------------------------------------------------- the split halves

#[tokio::test]
async fn split_halves_echo_through_a_channel_to_a_tungstenite_client() {
    const COUNT: usize = 200;
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let (mut reader, mut writer) = WebSocket::accept(tcp, Config::default()).await?.split();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(8);
        let writer_task = tokio::spawn(async move {
            let mut sent = 0;
            while let Some(text) = rx.recv().await {
                writer.send(Message::Text(text)).await?;
                sent += 1;
            }
            Ok::<_, DriverError>(sent)
        });
        let mut pings = 0;
        let closed = loop {
            match reader.next().await.expect("Closed comes before the end")? {
                Event::Text(text) => tx.send(text).await.unwrap(),
                Event::Ping(_) => pings += 1,
                Event::Closed(closed) => break closed,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert!(reader.next().await.is_none(), "None follows Closed");
        drop(tx);
        let sent = writer_task.await.unwrap()?;
        Ok::<_, DriverError>((sent, pings, closed))
    });
    let client = thread::spawn(move || {
        let mut ws = tungstenite_client(addr, "/split");
        let mut pongs = 0;
        for i in 0..COUNT {
            ws.send(TMessage::text(format!("message {i}"))).unwrap();
            if i % 50 == 0 {
                ws.send(TMessage::Ping(Bytes::from_static(b"ping"))).unwrap();
            }
        }
        for i in 0..COUNT {
            assert_eq!(tungstenite_read(&mut ws, &mut pongs), TMessage::text(format!("message {i}")));
        }
        ws.close(Some(TCloseFrame { code: 1000.into(), reason: "bye".into() })).unwrap();
        match tungstenite_read(&mut ws, &mut pongs) {
            TMessage::Close(Some(f)) => assert_eq!(u16::from(f.code), 1000),
            other => panic!("expected the close reply, got {other:?}"),
        }
        assert!(matches!(ws.read(), Err(tungstenite::Error::ConnectionClosed)));
        pongs
    });
    let pongs = join_thread("the tungstenite client", client).await;
    let (sent, pings, closed) = join_task("our server", server).await.unwrap();
    assert_eq!(sent, COUNT);
    assert_eq!(pings, COUNT / 50);
    assert_eq!(pongs, COUNT / 50, "the reader half answered every ping");
    assert_eq!(closed.received, Some(frame(1000, "bye")));
    assert!(closed.clean, "{closed:?}");
}

#[tokio::test]
async fn split_halves_as_futures_stream_and_sink() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let (mut reader, mut writer) = WebSocket::accept(tcp, Config::default()).await?.split();
        for _ in 0..3 {
            match StreamExt::next(&mut reader).await.expect("an event")? {
                Event::Text(text) => SinkExt::send(&mut writer, Message::Text(text.to_uppercase())).await?,
                other => panic!("expected text, got {other:?}"),
            }
        }
        // `feed` twice, one flush.
        SinkExt::feed(&mut writer, Message::from("fed 1")).await?;
        SinkExt::feed(&mut writer, Message::Binary(vec![2])).await?;
        // The sink is generic over what it takes: flush and close name the item type.
        SinkExt::flush(&mut writer).await?;
        SinkExt::close(&mut writer).await?;
        let mut events = Vec::new();
        let closed = loop {
            match StreamExt::next(&mut reader).await.expect("Closed comes before the end")? {
                Event::Closed(closed) => break closed,
                event => events.push(event),
            }
        };
        assert!(StreamExt::next(&mut reader).await.is_none(), "None follows Closed");
        Ok::<_, DriverError>((events, closed))
    });
    let client = thread::spawn(move || {
        let mut ws = tungstenite_client(addr, "/sink");
        for word in ["one", "two", "three"] {
            ws.send(TMessage::text(word)).unwrap();
        }
        let mut got = Vec::new();
        let mut pongs = 0;
        loop {
            match tungstenite_read(&mut ws, &mut pongs) {
                TMessage::Close(frame) => {
                    got.push(TMessage::Close(frame));
                    break;
                }
                msg => got.push(msg),
            }
        }
        // tungstenite answers the close; the server then ends the TCP connection.
        assert!(matches!(ws.read(), Err(tungstenite::Error::ConnectionClosed)));
        got
    });
    let got = join_thread("the tungstenite client", client).await;
    assert_eq!(got.len(), 6, "{got:?}");
    assert_eq!(
        got[..5],
        [TMessage::text("ONE"), TMessage::text("TWO"), TMessage::text("THREE"), TMessage::text("fed 1"), TMessage::binary(vec![2u8])]
    );
    match &got[5] {
        TMessage::Close(Some(f)) => assert_eq!(u16::from(f.code), 1000, "SinkExt::close sends 1000"),
        other => panic!("expected a close frame, got {other:?}"),
    }
    let (events, closed) = join_task("our server", server).await.unwrap();
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(closed.sent.as_ref().map(|f| f.code), Some(CloseCode::NORMAL));
    assert_eq!(closed.received.as_ref().map(|f| f.code), Some(CloseCode::NORMAL));
    assert_eq!(closed.initiator, Side::Local);
    assert!(closed.clean, "{closed:?}");
}

/// The writer half starts the close; the reader, parked in `next()` with no deadline
/// of its own, must still be woken to run the close timeout and hand out `Closed`.
#[tokio::test(start_paused = true)]
async fn a_close_from_the_writer_half_times_out_on_the_reader_half() {
    let close_timeout = Duration::from_secs(3);
    let (ws, peer) = upgraded(Role::Server, Config { close_timeout, ..Config::default() });
    let (mut reader, mut writer) = ws.split();
    let start = Instant::now();
    let reading = tokio::spawn(async move {
        let item = reader.next().await;
        (item, Instant::now(), reader)
    });
    // Let the reader park first, with nothing to wait for but the stream.
    tokio::task::yield_now().await;
    writer.close(CloseCode::NORMAL, "bye").await.unwrap();
    let (item, at, reader) = join_task("the reader", reading).await;
    let Some(Ok(Event::Closed(closed))) = item else { panic!("expected Closed, got {item:?}") };
    assert_at("Closed", at - start, close_timeout);
    assert_eq!(closed.sent, Some(frame(1000, "bye")));
    // The halves come back together.
    let ws = reader.reunite(writer).map_err(|_| "the halves of one WebSocket").unwrap();
    assert_eq!(ws.connection().state(), State::Closed);
    drop(peer);
}
