//! The blocking driver `rfc6455::blocking` over real sockets on 127.0.0.1 (port 0
//! listeners) and over mock streams: against tungstenite as the third-party peer,
//! handshake refusals, connections upgraded by another stack, keepalive deadlines,
//! failing and trickling streams, and the two blocking examples run as programs.
//! Every wait is bounded (read timeouts on both ends, joined threads).

#[path = "common/tungstenite_peer.rs"]
mod tungstenite_peer;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rfc6455::blocking::{self, Stream, WebSocket};
use rfc6455::{
    Accept, ClientRequest, CloseCode, CloseFrame, Closed, Config, DriverError, Event, HandshakeError, Message, ProtocolError, Reject,
    Request, Role, Side, State, UsageError,
};
use tungstenite::protocol::CloseFrame as TCloseFrame;
use tungstenite::protocol::Role as TRole;
use tungstenite::{Bytes, Message as TMessage};

/// The longest any test waits for anything.
const WAIT: Duration = Duration::from_secs(10);

/// The key of RFC 6455 §1.3 and its accept value.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const KEY_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

// ---------------------------------------------------------------- helpers

fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// A socket with bounded reads and writes.
fn bounded(tcp: TcpStream) -> TcpStream {
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp.set_write_timeout(Some(WAIT)).unwrap();
    tcp
}

fn request_head(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Reads an HTTP head one byte at a time, so nothing after it is consumed.
fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 8192, "head too long");
        tcp.read_exact(&mut byte).expect("reading an HTTP head");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// A raw client: sends the request, checks the 101 (to the byte), returns the socket.
fn raw_client(addr: SocketAddr, path: &str) -> TcpStream {
    let mut tcp = bounded(TcpStream::connect(addr).unwrap());
    tcp.write_all(request_head(path).as_bytes()).unwrap();
    let head = read_head(&mut tcp);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(head.contains(KEY_ACCEPT), "{head}");
    tcp
}

/// tungstenite as a client (its handshake feature is off: the handshake is done by hand).
fn tungstenite_client(addr: SocketAddr) -> tungstenite::WebSocket<TcpStream> {
    tungstenite::WebSocket::from_raw_socket(raw_client(addr, "/chat"), TRole::Client, None)
}

/// tungstenite as a server: reads the request, answers 101 by hand.
fn tungstenite_server(listener: &TcpListener) -> tungstenite::WebSocket<TcpStream> {
    let (tcp, _) = listener.accept().unwrap();
    let mut tcp = bounded(tcp);
    let head = read_head(&mut tcp);
    let key = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-key")))
        .map(|(_, v)| v.trim().to_owned())
        .expect("Sec-WebSocket-Key");
    let accept = rfc6455::accept_key(key.as_bytes());
    let response =
        format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
    tcp.write_all(response.as_bytes()).unwrap();
    tungstenite::WebSocket::from_raw_socket(tcp, TRole::Server, None)
}

/// A client frame (FIN set, masked) with a short payload.
fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// The events of a session (but the last) and its `Closed`.
type Session = Result<(Vec<Event>, Box<Closed>), DriverError>;

/// Reads events until `Closed`, collecting the others; bounded by the read timeout.
fn read_until_closed<S: Stream>(ws: &mut WebSocket<S>) -> Session {
    ws.set_read_timeout(Some(WAIT));
    let mut events = Vec::new();
    loop {
        match ws.read()? {
            Event::Closed(closed) => return Ok((events, closed)),
            event => events.push(event),
        }
    }
}

/// Serves one connection on `listener` with our blocking server, echoing text and
/// binary, until it closes. Returns what it saw.
fn echo_server(listener: TcpListener, config: Config) -> thread::JoinHandle<Session> {
    thread::spawn(move || {
        let (tcp, _) = listener.accept()?;
        let mut ws = WebSocket::accept(tcp, config)?;
        ws.set_read_timeout(Some(WAIT));
        let mut seen = Vec::new();
        loop {
            match ws.read()? {
                Event::Text(text) => {
                    seen.push(Event::Text(text.clone()));
                    ws.send(Message::Text(text))?;
                }
                Event::Binary(data) => {
                    seen.push(Event::Binary(data.clone()));
                    ws.send(data)?;
                }
                Event::Closed(closed) => return Ok((seen, closed)),
                event => seen.push(event),
            }
        }
    })
}

fn frame(code: u16, reason: &str) -> CloseFrame {
    CloseFrame { code: CloseCode(code), reason: reason.to_owned() }
}

// ---------------------------------------------------------------- against tungstenite

#[test]
fn server_echoes_a_tungstenite_client_and_both_see_its_close() {
    let (listener, addr) = listen();
    let server = echo_server(listener, Config::default());
    let mut client = tungstenite_client(addr);

    client.send(TMessage::text("hello")).unwrap();
    assert_eq!(client.read().unwrap(), TMessage::text("hello"));
    client.send(TMessage::binary(vec![0u8, 1, 2, 255])).unwrap();
    assert_eq!(client.read().unwrap(), TMessage::binary(vec![0u8, 1, 2, 255]));
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    client.send(TMessage::binary(big.clone())).unwrap();
    assert_eq!(client.read().unwrap(), TMessage::Binary(Bytes::from(big.clone())));
    client.send(TMessage::Ping(Bytes::from_static(b"are you there"))).unwrap();
    assert_eq!(client.read().unwrap(), TMessage::Pong(Bytes::from_static(b"are you there")));

    client.close(Some(TCloseFrame { code: 4000.into(), reason: "done".into() })).unwrap();
    match client.read().unwrap() {
        TMessage::Close(Some(f)) => assert_eq!(u16::from(f.code), 4000, "the server echoes the code"),
        other => panic!("expected the close reply, got {other:?}"),
    }
    assert!(matches!(client.read(), Err(tungstenite::Error::ConnectionClosed)));

    let (seen, closed) = server.join().unwrap().unwrap();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen[0], Event::Text("hello".into()));
    assert_eq!(seen[1], Event::Binary(vec![0, 1, 2, 255]));
    assert!(seen[2] == Event::Binary(big), "the 1 MiB message arrives whole");
    assert!(matches!(&seen[3], Event::Ping(p) if &***p == b"are you there"));
    assert_eq!(closed.received, Some(frame(4000, "done")));
    assert_eq!(closed.initiator, Side::Remote);
    assert!(closed.clean && closed.error.is_none(), "{closed:?}");
}

#[test]
fn server_close_reaches_a_tungstenite_client() {
    let (listener, addr) = listen();
    let server = thread::spawn(move || -> Result<Box<Closed>, DriverError> {
        let (tcp, _) = listener.accept()?;
        let mut ws = WebSocket::accept(tcp, Config::default())?;
        ws.send_text("bye soon")?;
        ws.close(CloseCode(4001), "server done")?;
        assert!(matches!(ws.send_text("late"), Err(DriverError::Usage(UsageError::NotOpen { .. }))));
        let (events, closed) = read_until_closed(&mut ws)?;
        assert!(events.is_empty(), "{events:?}");
        Ok(closed)
    });
    let mut client = tungstenite_client(addr);
    assert_eq!(client.read().unwrap(), TMessage::text("bye soon"));
    match client.read().unwrap() {
        TMessage::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 4001);
            assert_eq!(f.reason.as_str(), "server done");
        }
        other => panic!("expected the server's close, got {other:?}"),
    }
    // tungstenite answered the close; the server then ends the TCP connection.
    assert!(matches!(client.read(), Err(tungstenite::Error::ConnectionClosed)));
    let closed = server.join().unwrap().unwrap();
    assert_eq!(closed.sent, Some(frame(4001, "server done")));
    assert_eq!(closed.received.as_ref().map(|f| f.code), Some(CloseCode(4001)));
    assert_eq!(closed.initiator, Side::Local);
    assert!(closed.clean);
}

#[test]
fn client_talks_to_a_tungstenite_server() {
    let (listener, addr) = listen();
    let server = thread::spawn(move || {
        let mut ws = tungstenite_server(&listener);
        tungstenite_peer::echo_until_close(&mut ws)
    });

    let mut ws = blocking::connect(&format!("ws://{addr}/chat"), Config::default()).unwrap();
    assert_eq!(ws.connection().state(), State::Open);
    ws.send_text("hi there").unwrap();
    ws.send_binary(&[9, 8, 7]).unwrap();
    ws.ping(b"p1").unwrap();
    ws.set_read_timeout(Some(WAIT));
    assert_eq!(ws.read().unwrap(), Event::Text("hi there".into()));
    assert_eq!(ws.read().unwrap(), Event::Binary(vec![9, 8, 7]));
    match ws.read().unwrap() {
        Event::Pong { payload, rtt } => {
            assert_eq!(&**payload, b"p1");
            assert!(rtt.is_some(), "the pong answers our ping");
        }
        other => panic!("expected a pong, got {other:?}"),
    }
    ws.close(CloseCode::NORMAL, "client done").unwrap();
    let (events, closed) = read_until_closed(&mut ws).unwrap();
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(closed.sent, Some(frame(1000, "client done")));
    assert_eq!(closed.received.as_ref().map(|f| f.code), Some(CloseCode::NORMAL));
    assert!(closed.clean, "{closed:?}");
    assert!(matches!(ws.read(), Err(DriverError::Usage(UsageError::NotOpen { state: State::Closed }))));

    let seen = server.join().unwrap();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0], TMessage::text("hi there"));
    assert_eq!(seen[1], TMessage::binary(vec![9u8, 8, 7]));
    match &seen[2] {
        TMessage::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 1000);
            assert_eq!(f.reason.as_str(), "client done");
        }
        other => panic!("expected our close, got {other:?}"),
    }
}

// ---------------------------------------------------------------- handshakes

#[test]
fn accept_with_rejects_with_403() {
    let (listener, addr) = listen();
    let server = thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        WebSocket::accept_with(tcp, Config::default(), |req: &Request| {
            assert_eq!(req.path(), "/private");
            Err(Reject::new(403).body("no entry"))
        })
        .map(|_| ())
    });
    let err = blocking::connect(&format!("ws://{addr}/private"), Config::default()).unwrap_err();
    match err {
        DriverError::Handshake(HandshakeError::Status { status, .. }) => assert_eq!(status, 403),
        other => panic!("expected HTTP 403, got {other:?}"),
    }
    assert!(matches!(server.join().unwrap(), Err(DriverError::Rejected(403))));
}

#[test]
fn accept_with_picks_a_subprotocol() {
    let (listener, addr) = listen();
    let server = thread::spawn(move || -> Result<Option<String>, DriverError> {
        let (tcp, _) = listener.accept()?;
        let ws = WebSocket::accept_with(tcp, Config::default(), |req| {
            let chosen = req.subprotocols().find(|p| *p == "chat").map(str::to_owned);
            Ok(chosen.map_or_else(Accept::new, |p| Accept::new().subprotocol(p)))
        })?;
        Ok(ws.connection().subprotocol().map(str::to_owned))
    });
    let tcp = TcpStream::connect(addr).unwrap();
    let request = ClientRequest::new(&format!("ws://{addr}/")).unwrap().subprotocol("chat").unwrap();
    let ws = WebSocket::connect(tcp, Config::default(), &request).unwrap();
    assert_eq!(ws.connection().subprotocol(), Some("chat"));
    assert_eq!(server.join().unwrap().unwrap().as_deref(), Some("chat"));
}

#[test]
fn a_bad_request_is_answered_before_the_error_returns() {
    let (listener, addr) = listen();
    let server = thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        WebSocket::accept(tcp, Config::default()).map(|_| ())
    });
    let mut tcp = bounded(TcpStream::connect(addr).unwrap());
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 426 "), "{answer}");
    assert!(matches!(server.join().unwrap(), Err(DriverError::Handshake(HandshakeError::NotWebSocket))));
}

#[test]
fn a_stream_that_ends_during_the_handshake_is_an_unexpected_eof() {
    let (listener, addr) = listen();
    let server = thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        WebSocket::accept(tcp, Config::default()).map(|_| ())
    });
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    drop(tcp);
    match server.join().unwrap() {
        Err(DriverError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
        other => panic!("expected UnexpectedEof, got {other:?}"),
    }
}

#[test]
fn wss_urls_are_refused_with_a_clear_message() {
    let err = blocking::connect("wss://127.0.0.1:1/", Config::default()).unwrap_err();
    assert!(matches!(err, DriverError::TlsUnsupported), "{err:?}");
    assert!(err.to_string().contains("TLS"), "{err}");
}

#[test]
fn upgraded_feeds_the_early_bytes_first() {
    let (listener, addr) = listen();
    let server = thread::spawn(move || -> Result<Vec<Event>, DriverError> {
        let (tcp, _) = listener.accept()?;
        let mut tcp = bounded(tcp);
        // Another stack's job, done by hand: read until the head is complete.
        let mut buf = Vec::new();
        let head_len = loop {
            let mut chunk = [0u8; 1024];
            let n = tcp.read(&mut chunk)?;
            assert!(n > 0, "the client ended its stream");
            buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut parsed = httparse::Request::new(&mut headers);
            if let httparse::Status::Complete(len) = parsed.parse(&buf).unwrap() {
                break len;
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Request::new(&mut headers);
        parsed.parse(&buf).unwrap();
        let request =
            Request::from_parts(parsed.method.unwrap(), parsed.path.unwrap(), parsed.headers.iter().map(|h| (h.name, h.value))).unwrap();
        let config = Config::default();
        let accepted = request.negotiate(&config, Accept::new()).unwrap();
        let mut head = Vec::new();
        accepted.write_head(&mut head);
        tcp.write_all(&head)?;
        let early = &buf[head_len..];
        assert!(!early.is_empty(), "the first frame came with the request");
        let mut ws = WebSocket::upgraded(tcp, Role::Server, config, accepted.negotiated(), early);
        let (events, closed) = read_until_closed(&mut ws)?;
        assert_eq!(closed.received, Some(frame(1000, "")));
        Ok(events)
    });

    let mut tcp = bounded(TcpStream::connect(addr).unwrap());
    let mut first_write = request_head("/up").into_bytes();
    first_write.extend(masked_frame(0x1, b"early bird"));
    tcp.write_all(&first_write).unwrap();
    let head = read_head(&mut tcp);
    assert!(head.starts_with("HTTP/1.1 101 ") && head.contains(KEY_ACCEPT), "{head}");
    tcp.write_all(&masked_frame(0x1, b"second")).unwrap();
    tcp.write_all(&masked_frame(0x8, &1000u16.to_be_bytes())).unwrap();
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, [0x88, 2, 0x03, 0xE8], "the server's close reply, then the end of the stream");

    let events = server.join().unwrap().unwrap();
    assert_eq!(events, [Event::Text("early bird".into()), Event::Text("second".into())]);
}

// ---------------------------------------------------------------- deadlines

/// Runs our server on one connection with `config`, a raw client that completes the
/// handshake and then never sends anything; returns the server's `Closed` and how long it took.
fn silent_peer(config: Config) -> (Box<Closed>, Duration) {
    let (listener, addr) = listen();
    let server = thread::spawn(move || -> Result<(Box<Closed>, Duration), DriverError> {
        let (tcp, _) = listener.accept()?;
        // Before the connection opens, so every deadline lies after it.
        let start = Instant::now();
        let mut ws = WebSocket::accept(tcp, config)?;
        let (events, closed) = read_until_closed(&mut ws)?;
        assert!(events.is_empty(), "{events:?}");
        Ok((closed, start.elapsed()))
    });
    let tcp = raw_client(addr, "/");
    let result = server.join().unwrap().unwrap();
    drop(tcp);
    result
}

#[test]
fn keepalive_drops_a_peer_that_never_answers_pings() {
    let config = Config {
        ping_interval: Some(Duration::from_millis(50)),
        pong_timeout: Duration::from_millis(100),
        idle_timeout: Some(Duration::from_secs(5)),
        ..Config::default()
    };
    let (closed, took) = silent_peer(config);
    assert_eq!(closed.error, Some(ProtocolError::PongTimeout));
    assert_eq!(closed.code(), CloseCode::ABNORMAL);
    assert!(took >= Duration::from_millis(150) && took < Duration::from_secs(3), "{took:?}");
}

#[test]
fn idle_timeout_drops_a_silent_peer() {
    let config = Config { idle_timeout: Some(Duration::from_millis(100)), ..Config::default() };
    let (closed, took) = silent_peer(config);
    assert_eq!(closed.error, Some(ProtocolError::IdleTimeout));
    assert!(took >= Duration::from_millis(100) && took < Duration::from_secs(3), "{took:?}");
}

#[test]
fn handshake_timeout_answers_408() {
    let (listener, addr) = listen();
    let server = thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let config = Config { handshake_timeout: Some(Duration::from_millis(100)), ..Config::default() };
        WebSocket::accept(tcp, config).map(|_| ())
    });
    let mut tcp = bounded(TcpStream::connect(addr).unwrap());
    tcp.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(matches!(server.join().unwrap(), Err(DriverError::Handshake(HandshakeError::Timeout))));
}

#[test]
fn read_timeout_leaves_the_connection_usable() {
    let (listener, addr) = listen();
    let server = echo_server(listener, Config::default());
    let mut ws = blocking::connect(&format!("ws://{addr}/"), Config::default()).unwrap();
    ws.set_read_timeout(Some(Duration::from_millis(30)));
    let start = Instant::now();
    match ws.read() {
        Err(DriverError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::TimedOut),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_millis(30) && start.elapsed() < Duration::from_secs(3));
    ws.send_text("still here").unwrap();
    assert_eq!(ws.read().unwrap(), Event::Text("still here".into()));
    ws.close(CloseCode::NORMAL, "").unwrap();
    let (_, closed) = read_until_closed(&mut ws).unwrap();
    assert!(closed.clean);
    server.join().unwrap().unwrap();
}

// ---------------------------------------------------------------- mock streams

/// Reads from a fixed input; every write fails with `BrokenPipe`.
#[derive(Debug)]
struct BrokenWrites {
    input: io::Cursor<Vec<u8>>,
}

impl Read for BrokenWrites {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for BrokenWrites {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::BrokenPipe.into())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream for BrokenWrites {
    fn set_read_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failing_write_is_an_io_error_during_the_handshake() {
    let input = io::Cursor::new(request_head("/").into_bytes());
    match WebSocket::accept(BrokenWrites { input }, Config::default()) {
        Err(DriverError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::BrokenPipe),
        other => panic!("expected BrokenPipe, got {other:?}"),
    }
}

#[test]
fn a_failing_write_ends_an_open_connection() {
    let early = masked_frame(0x1, b"before the failure");
    let stream = BrokenWrites { input: io::Cursor::new(Vec::new()) };
    let mut ws = WebSocket::upgraded(stream, Role::Server, Config::default(), &rfc6455::Negotiated::new(), &early);
    match ws.send_text("lost") {
        Err(DriverError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::BrokenPipe),
        other => panic!("expected BrokenPipe, got {other:?}"),
    }
    // What was received before still comes out, then the end.
    assert_eq!(ws.read().unwrap(), Event::Text("before the failure".into()));
    assert!(matches!(ws.read().unwrap(), Event::Closed(_)));
    assert!(matches!(ws.read(), Err(DriverError::Usage(UsageError::NotOpen { state: State::Closed }))));
    assert!(matches!(ws.send_text("more"), Err(DriverError::Usage(UsageError::NotOpen { .. }))));
}

/// A stream that reads and writes at most one byte per call.
struct Trickle(UnixStream);

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(1);
        self.0.read(&mut buf[..n])
    }
}

impl Write for Trickle {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(1);
        self.0.write(&buf[..n])
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl Stream for Trickle {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.0.set_read_timeout(timeout)
    }
}

/// Both ends compress when the crate can (so inflate and deflate see one byte at a time too).
fn trickle_config() -> Config {
    #[cfg(feature = "deflate")]
    return Config { deflate: Some(rfc6455::DeflateConfig::default()), ..Config::default() };
    #[cfg(not(feature = "deflate"))]
    Config::default()
}

#[test]
fn one_byte_reads_and_writes_still_work() {
    let (a, b) = UnixStream::pair().unwrap();
    let server = thread::spawn(move || -> Session {
        let mut ws = WebSocket::accept(Trickle(a), trickle_config())?;
        ws.set_read_timeout(Some(WAIT));
        let mut seen = Vec::new();
        loop {
            match ws.read()? {
                Event::Text(t) => {
                    seen.push(Event::Text(t.clone()));
                    ws.send(t)?;
                }
                Event::Binary(d) => {
                    seen.push(Event::Binary(d.clone()));
                    ws.send(d)?;
                }
                Event::Closed(c) => return Ok((seen, c)),
                e => seen.push(e),
            }
        }
    });
    let request = ClientRequest::new("ws://localhost/trickle").unwrap();
    let mut ws = WebSocket::connect(Trickle(b), trickle_config(), &request).unwrap();
    assert_eq!(ws.connection().is_compressed(), cfg!(feature = "deflate"));
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 256) as u8).collect();
    ws.send_text("héllo, one byte at a time").unwrap();
    ws.send(data.clone()).unwrap();
    ws.set_read_timeout(Some(WAIT));
    assert_eq!(ws.read().unwrap(), Event::Text("héllo, one byte at a time".into()));
    assert!(ws.read().unwrap() == Event::Binary(data.clone()));
    ws.close(CloseCode::NORMAL, "done").unwrap();
    let (_, closed) = read_until_closed(&mut ws).unwrap();
    assert!(closed.clean, "{closed:?}");
    let (seen, server_closed) = server.join().unwrap().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(server_closed.received, Some(frame(1000, "done")));
}

// ---------------------------------------------------------------- the examples

/// Kills the child process when dropped (also when the test panics).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The directory of the example binaries of this build (tests run from
/// `target/<profile>/deps`), built first so that they are current.
fn examples_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).expect("tests run from target/<profile>/deps");
    let target_dir = profile_dir.parent().expect("target/<profile>");
    let mut cargo = Command::new(env!("CARGO"));
    cargo.args(["build", "--quiet", "--example", "blocking_echo", "--example", "blocking_client", "--target-dir"]);
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
}

/// Waits (bounded) for a child to exit.
fn wait_bounded(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the client did not exit in time");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn example_client_and_echo_server_talk() {
    let dir = examples_dir();
    let mut server = KillOnDrop(
        Command::new(dir.join("blocking_echo")).arg("127.0.0.1:0").stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap(),
    );
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("startup line: {line:?}")).to_owned();
    assert!(url.starts_with("ws://127.0.0.1:") && !url.ends_with(":0"), "{url}");

    let mut client = KillOnDrop(
        Command::new(dir.join("blocking_client"))
            .arg(format!("{url}/"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    client.0.stdin.take().unwrap().write_all(b"hello\nworld\n").unwrap();
    let status = wait_bounded(&mut client.0);
    let mut stdout = String::new();
    client.0.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    let mut stderr = String::new();
    client.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "client failed: {status}, stderr: {stderr}");
    assert_eq!(stdout, "hello\nworld\n");

    // A failed connection: `error: ...` and status 1.
    let refused = Command::new(dir.join("blocking_client")).arg("ws://127.0.0.1:1/").stdin(Stdio::null()).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).starts_with("error: "), "{refused:?}");
}
