//! Hostile input: one test (at least) per attack class that WebSocket implementations
//! have shipped bugs for, against the engine and over 127.0.0.1 against the servers.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::net::*;
use common::*;
use rfc6455::net::{Echo, Relay, ServerConfig};
use rfc6455::proto::frame::{OpCode, encode_frame};
use rfc6455::{ClientRequest, Config, Event, ProtocolError, UsageError};

/// The server's close code (the frames before it are skipped).
fn close_code(s: &mut TcpStream) -> Option<u16> {
    read_until_close(s).1
}

/// The socket is closed by the server (EOF or reset) within the wait.
fn assert_closed_by_server(s: &mut TcpStream) {
    let deadline = Instant::now() + WAIT;
    let mut chunk = [0u8; 4096];
    loop {
        assert!(Instant::now() < deadline, "server did not close the socket");
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                panic!("server did not close the socket")
            }
            Err(_) => return,
        }
    }
}

fn masked(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_frame(&mut v, fin, opcode, Some([9, 8, 7, 6]), payload);
    v
}

// 1. Declared lengths of 2^63-1 and 2^64-1 bytes, then nothing.
#[test]
fn huge_declared_lengths_cost_nothing_and_close_the_connection() {
    let srv = Running::start(ServerConfig::default(), Relay::new());
    for (len_bytes, want) in [([0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], 1009u16), ([0xFF; 8], 1002)] {
        let mut s = raw_client(srv.addr, "/");
        let mut frame = vec![0x82, 0xFF];
        frame.extend_from_slice(&len_bytes);
        frame.extend_from_slice(&[1, 2, 3, 4]);
        s.write_all(&frame).unwrap();
        assert_eq!(close_code(&mut s), Some(want));
        assert_closed_by_server(&mut s);
    }
    srv.wait_until("all sockets closed", |s| s.connections() == 0);
    assert!(srv.stats.peak_pinned_bytes.load(Ordering::Relaxed) < 64 * 1024, "{:?}", srv.stats);
}

// 2. Handshake trickled byte by byte: linear work; a slow-loris client is timed out.
#[test]
fn a_slow_loris_client_gets_408_and_is_closed() {
    let cfg = ServerConfig {
        engine: Config { handshake_timeout: Some(Duration::from_millis(300)), ..Config::default() },
        ..ServerConfig::default()
    };
    let srv = Running::start(cfg, Relay::new());
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    for b in b"GET / HTTP/1.1\r\nHost: x\r\n" {
        s.write_all(std::slice::from_ref(b)).unwrap();
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(out.starts_with(b"HTTP/1.1 408 "), "{}", String::from_utf8_lossy(&out));
}

#[test]
fn a_request_trickled_one_byte_per_read_still_opens() {
    let now = Instant::now();
    let mut s = rfc6455::Connection::server(Config::default(), now);
    // The largest head allowed, one byte per read: each byte is scanned a bounded
    // number of times (see the HeadReader unit test for the count).
    let mut req = REQUEST.replace("\r\n\r\n", "\r\n").into_bytes();
    let filler = format!("X-Filler: {}\r\n\r\n", "a".repeat(8192 - req.len() - 16));
    req.extend_from_slice(filler.as_bytes());
    assert!(req.len() <= 8192);
    for b in &req {
        s.handle_bytes(now, std::slice::from_ref(b));
    }
    assert!(matches!(s.poll_event(), Some(Event::Request(_))));
}

// 3. Too many headers, too long a head: 431.
#[test]
fn too_many_or_too_large_headers_get_431_over_tcp() {
    let srv = Running::start(ServerConfig::default(), Relay::new());
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let long = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n", "a".repeat(1 << 20));
    for req in [many, long] {
        let mut s = TcpStream::connect(srv.addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let _ = s.write_all(req.as_bytes()); // the server may close before all of it is written
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(out.starts_with(b"HTTP/1.1 431 "), "{}", String::from_utf8_lossy(&out));
    }
}

// 4. Fragment floods: memory is bounded by configuration, not by fragment count.
#[test]
fn a_million_empty_fragments_pin_nothing() {
    let (mut s, now) = open_server(Config::default());
    s.handle_bytes(now, &masked(OpCode::Binary, false, b""));
    let empty = masked(OpCode::Continuation, false, b"");
    let batch: Vec<u8> = empty.iter().copied().cycle().take(empty.len() * 10_000).collect();
    for _ in 0..100 {
        s.handle_bytes(now, &batch);
        assert!(s.buffered_bytes() < 4096, "{}", s.buffered_bytes());
    }
    assert_eq!(s.poll_event(), None);
    s.handle_bytes(now, &masked(OpCode::Continuation, true, b"end"));
    assert_eq!(s.poll_event(), Some(Event::Binary(b"end".to_vec())));
}

#[test]
fn many_fragments_just_under_the_limit_pin_at_most_the_limit() {
    let limit = 1 << 20;
    let cfg = Config { max_message_size: limit, ..Config::default() };
    let (mut s, now) = open_server(cfg);
    let piece = vec![b'a'; 1000];
    s.handle_bytes(now, &masked(OpCode::Text, false, &piece));
    let mut sent = 1000;
    while sent + 1000 <= limit {
        s.handle_bytes(now, &masked(OpCode::Continuation, false, &piece));
        sent += 1000;
        assert!(s.buffered_bytes() <= 2 * limit, "{}", s.buffered_bytes());
    }
    // One more fragment passes the limit: 1009 before its payload is read.
    s.handle_bytes(now, &masked(OpCode::Continuation, false, &piece)[..8]);
    let closed = expect_closed(&events(&mut s));
    assert_eq!(closed.error, Some(ProtocolError::MessageTooBig { limit }));
    assert!(s.buffered_bytes() < 4096, "the partial message is released: {}", s.buffered_bytes());
}

// 5. A client that never reads while the server has data for it.
#[test]
fn an_echo_client_that_never_reads_meets_backpressure_with_bounded_memory() {
    let cfg = ServerConfig { high_water_mark: 1 << 20, ..ServerConfig::default() };
    let srv = Running::start(cfg, Echo);
    let mut s = raw_client(srv.addr, "/");
    s.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
    let frame = masked(OpCode::Binary, true, &vec![7u8; 64 * 1024]);
    let mut written = 0usize;
    // Write until the server stops reading (our writes time out) or 256 MiB.
    while written < 256 << 20 {
        match s.write(&frame) {
            Ok(n) => written += n,
            Err(_) => break,
        }
    }
    assert!(written < 256 << 20, "the server kept reading from a client that never reads");
    let peak = srv.stats.peak_pinned_bytes.load(Ordering::Relaxed);
    // The mark, plus one message, plus buffers: not the megabytes written.
    // (Capacity is counted, and a Vec may double: twice the mark plus a message.)
    assert!(peak < 2 * ((1 << 20) + 2 * 64 * 1024) + 256 * 1024, "peak pinned {peak}, written {written}");
}

// 6. Protocol violations get the right code and nothing reaches the other clients.
#[test]
fn violations_close_with_the_right_code_and_relay_nothing() {
    let cfg = ServerConfig { engine: Config { max_message_size: 1 << 16, ..Config::default() }, ..ServerConfig::default() };
    let srv = Running::start(cfg, Relay::new());
    let mut watcher = srv.connect("/room");
    let mut helper = srv.connect("/room");
    let bad_close_reason = [&1000u16.to_be_bytes()[..], b"\xff"].concat();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "unmasked",
            {
                let mut v = Vec::new();
                encode_frame(&mut v, true, OpCode::Text, None, b"leak");
                v
            },
            1002,
        ),
        (
            "reserved opcode",
            {
                let mut v = masked(OpCode::Text, true, b"leak");
                v[0] = 0x83;
                v
            },
            1002,
        ),
        (
            "rsv bits",
            {
                let mut v = masked(OpCode::Text, true, b"leak");
                v[0] |= 0x70;
                v
            },
            1002,
        ),
        ("long ping", masked(OpCode::Ping, true, &[0u8; 126]), 1002),
        ("fragmented ping", masked(OpCode::Ping, false, b"x"), 1002),
        ("1-byte close", masked(OpCode::Close, true, b"\x03"), 1002),
        ("invalid close code", masked(OpCode::Close, true, &1005u16.to_be_bytes()), 1002),
        ("invalid close reason", masked(OpCode::Close, true, &bad_close_reason), 1007),
        ("invalid utf-8", masked(OpCode::Text, true, b"le\xc0\xafak"), 1007),
        ("too big", masked(OpCode::Binary, true, &vec![0u8; (1 << 16) + 1]), 1009),
        ("text then bad continuation", [masked(OpCode::Text, false, b"le"), masked(OpCode::Text, true, b"ak")].concat(), 1002),
    ];
    for (what, bytes, want) in cases {
        let mut s = raw_client(srv.addr, "/room");
        s.write_all(&bytes).unwrap();
        // Data after the violation is not processed either.
        let _ = s.write_all(&masked(OpCode::Text, true, b"after"));
        assert_eq!(close_code(&mut s), Some(want), "{what}");
        helper.send_text(&format!("sentinel {what}")).unwrap();
        let mut got = None;
        while got.is_none() {
            match watcher.next_event(Some(WAIT)).unwrap() {
                Some(Event::Text(t)) => got = Some(t),
                Some(Event::Binary(b)) => panic!("{what}: relayed {b:?}"),
                Some(Event::Closed(c)) => panic!("{c:?}"),
                None => panic!("timeout"),
                _ => {}
            }
        }
        assert_eq!(got.unwrap(), format!("sentinel {what}"), "{what}: something from the bad frame was relayed");
    }
}

// 7. Header injection is refused before anything is sent.
#[test]
fn header_injection_is_refused_before_connecting() {
    let srv = Running::start(ServerConfig::default(), Relay::new());
    let req = ClientRequest::new(&format!("ws://{}/", srv.addr)).unwrap();
    for attempt in [
        req.clone().header("X-A", "1\r\nInjected: yes"),
        req.clone().header("X-A", "nul\0"),
        req.clone().subprotocol("chat\r\nX: y"),
        req.clone().origin("http://o\n"),
    ] {
        match attempt {
            Err(UsageError::InvalidHeaderValue { .. } | UsageError::InvalidSubprotocol(_)) => {}
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("accepted an injected header"),
        }
    }
    assert_eq!(srv.stats.opened.load(Ordering::Relaxed), 0);
    assert_eq!(srv.stats.connections(), 0);
}

// 8. Half-open peers and peers that stop mid-frame are timed out.
#[test]
fn a_peer_that_stops_mid_frame_is_dropped_by_the_idle_timeout() {
    let cfg =
        ServerConfig { engine: Config { idle_timeout: Some(Duration::from_millis(300)), ..Config::default() }, ..ServerConfig::default() };
    let srv = Running::start(cfg, Relay::new());
    let mut s = raw_client(srv.addr, "/");
    let frame = masked(OpCode::Binary, true, &[1u8; 1000]);
    s.write_all(&frame[..500]).unwrap();
    let start = Instant::now();
    assert_closed_by_server(&mut s);
    assert!(start.elapsed() >= Duration::from_millis(250));
    drop(s);
    srv.wait_until("the socket is released", |s| s.connections() == 0);
}

#[test]
fn keepalive_drops_a_peer_that_does_not_answer_pings() {
    let cfg = ServerConfig {
        engine: Config { ping_interval: Some(Duration::from_millis(100)), pong_timeout: Duration::from_millis(200), ..Config::default() },
        ..ServerConfig::default()
    };
    let srv = Running::start(cfg, Relay::new());
    let mut s = raw_client(srv.addr, "/"); // reads nothing, answers nothing
    assert_closed_by_server(&mut s);
    drop(s);
    srv.wait_until("the socket is released", |s| s.connections() == 0);
}

// Memory accounting: hostile clients pinning all they can, well-behaved ones unaffected.
#[test]
fn two_hundred_hostile_clients_stay_within_the_memory_budget() {
    let budget = 8 << 20;
    let cfg = ServerConfig {
        max_total_memory: budget,
        read_buffer_size: 16 * 1024,
        shutdown_timeout: Duration::from_millis(200),
        engine: Config { max_message_size: 4 << 20, max_frame_size: 4 << 20, ..Config::default() },
        ..ServerConfig::default()
    };
    let srv = Running::start(cfg, Relay::new());
    let mut alice = srv.connect("/chat");
    let mut bob = srv.connect("/chat");
    let mut hostile = Vec::new();
    for _ in 0..200 {
        let s = raw_client(srv.addr, "/evil");
        s.set_nonblocking(true).unwrap();
        hostile.push(s);
    }
    // Each declares a 4 MiB message and sends as much of it as the server takes.
    let mut frame = vec![0x82, 0xFF];
    frame.extend_from_slice(&(4u64 << 20).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    for s in &mut hostile {
        s.write_all(&frame).unwrap();
    }
    let chunk = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut round = 0;
    while Instant::now() < deadline {
        for s in &mut hostile {
            let _ = s.write(&chunk); // WouldBlock once the server stops reading
        }
        round += 1;
        // Meanwhile the well-behaved clients keep talking.
        alice.send_text(&format!("hi {round}")).unwrap();
        loop {
            match bob.next_event(Some(WAIT)).unwrap() {
                Some(Event::Text(t)) => {
                    assert_eq!(t, format!("hi {round}"));
                    break;
                }
                Some(Event::Closed(c)) => panic!("{c:?}"),
                None => panic!("bob got nothing under attack"),
                _ => {}
            }
        }
    }
    let peak = srv.stats.peak_pinned_bytes.load(Ordering::Relaxed);
    let slack = 200 * 32 * 1024; // at most one read (and its Vec growth) per connection past the line
    assert!(peak <= budget + slack, "peak pinned {peak} > budget {budget} + {slack}");
    assert!(peak >= budget / 2, "the attack did not get near the budget ({peak}): test is not testing");
    bob.send_binary(&[1, 2, 3]).unwrap();
    match alice.next_event(Some(WAIT)).unwrap() {
        Some(Event::Binary(b)) => assert_eq!(b, vec![1, 2, 3]),
        other => panic!("{other:?}"),
    }
    eprintln!("peak pinned {peak} bytes for 200 hostile clients, budget {budget}");
}
