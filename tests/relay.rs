//! The relay and echo servers and the client over 127.0.0.1: rooms, ordering, large
//! messages, abrupt disconnects, bad handshakes, slow consumers, limits and shutdown.
//! Every server binds port 0 on 127.0.0.1 and every wait is bounded.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::net::*;
use rfc6455::net::{Client, ClientError, ClientOptions, Echo, Relay, ServerConfig};
use rfc6455::proto::frame::{OpCode, encode_frame};
use rfc6455::{ClientRequest, CloseCode, Config, Event, HandshakeError, MessageKind, ProtocolError};

fn text(s: &str) -> (MessageKind, Vec<u8>) {
    (MessageKind::Text, s.as_bytes().to_vec())
}

#[test]
fn relay_delivers_to_the_others_in_the_room_exactly_once() {
    let mut srv = Running::start(ServerConfig::default(), Relay::new());
    let mut a = srv.connect("/lobby");
    let mut b = srv.connect("/lobby");
    let mut c = srv.connect("/lobby");
    let mut d = srv.connect("/games");
    let mut e = srv.connect("/games");

    a.send_text("hello from a").unwrap();
    assert_eq!(next_message(&mut b), text("hello from a"));
    assert_eq!(next_message(&mut c), text("hello from a"));
    a.send_binary(&[0, 1, 2, 255]).unwrap();
    assert_eq!(next_message(&mut b), (MessageKind::Binary, vec![0, 1, 2, 255]));
    assert_eq!(next_message(&mut c), (MessageKind::Binary, vec![0, 1, 2, 255]));

    // Sentinels: anything A's messages wrongly produced would arrive before them.
    b.send_text("sentinel from b").unwrap();
    assert_eq!(next_message(&mut a), text("sentinel from b"), "the sender does not get its own message");
    assert_eq!(next_message(&mut c), text("sentinel from b"), "no duplicates");
    e.send_text("sentinel from e").unwrap();
    assert_eq!(next_message(&mut d), text("sentinel from e"), "other rooms get nothing");
    drop((a, b, c, d, e));
    srv.stop();
}

#[test]
fn relay_carries_a_1_mib_message_and_10000_messages_in_order() {
    let mut srv = Running::start(ServerConfig::default(), Relay::new());
    let mut a = srv.connect("/");
    let mut b = srv.connect("/");
    let big: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    a.send_binary(&big).unwrap();
    assert_eq!(next_message(&mut b), (MessageKind::Binary, big));

    for i in 0..10_000 {
        a.send_text(&format!("m{i}")).unwrap();
    }
    assert!(a.flush(WAIT).unwrap());
    for i in 0..10_000 {
        assert_eq!(next_message(&mut b), text(&format!("m{i}")));
    }
    drop((a, b));
    srv.stop();
}

/// Senders in one room write bursts that mix corked (small) and shared (large)
/// messages, so one loop turn holds several senders' messages: every member gets
/// every other sender's messages once and in that sender's order, and never its own.
#[test]
fn corked_turns_keep_each_senders_order_without_echo_across_sizes() {
    const N: usize = 200;
    let sizes = [10usize, 1500, 70, 5000, 1, 1024, 1025];
    let body = |s: usize, i: usize| {
        let mut m = format!("{s}:{i}:");
        while m.len() < sizes[i % sizes.len()] {
            m.push('x');
        }
        m
    };
    let mut srv = Running::start(ServerConfig::default(), Relay::new());
    let mut clients: Vec<_> = (0..4).map(|_| srv.connect("/mix")).collect();
    for i in 0..N {
        for (s, c) in clients[..3].iter_mut().enumerate() {
            c.send_text(&body(s, i)).unwrap();
        }
    }
    for c in &mut clients[..3] {
        assert!(c.flush(WAIT).unwrap());
    }
    for (me, c) in clients.iter_mut().enumerate() {
        let mut next = [0usize; 3];
        let expected = if me < 3 { 2 * N } else { 3 * N };
        for _ in 0..expected {
            let (kind, bytes) = next_message(c);
            assert_eq!(kind, MessageKind::Text);
            let text = String::from_utf8(bytes).unwrap();
            let mut fields = text.splitn(3, ':');
            let s: usize = fields.next().unwrap().parse().unwrap();
            let i: usize = fields.next().unwrap().parse().unwrap();
            assert_ne!(s, me, "client {me} got its own message back");
            assert_eq!(i, next[s], "client {me}: sender {s}'s order");
            assert_eq!(text, body(s, i));
            next[s] += 1;
        }
    }
    // Nothing else was queued: the next message anyone gets is this one.
    clients[3].send_text("end").unwrap();
    for c in &mut clients[..3] {
        assert_eq!(next_message(c), text("end"));
    }
    drop(clients);
    srv.stop();
}

#[test]
fn an_abrupt_disconnect_is_removed_and_the_others_carry_on() {
    let mut srv = Running::start(ServerConfig::default(), Relay::new());
    let mut a = srv.connect("/");
    let mut b = srv.connect("/");
    let mut c = srv.connect("/");
    srv.wait_connections(3);
    b.abort(); // no close frame, TCP gone
    drop(b);
    srv.wait_connections(2);
    a.send_text("still here").unwrap();
    assert_eq!(next_message(&mut c), text("still here"));
    drop((a, c));
    srv.stop();
}

/// Sends raw bytes and reads until EOF (bounded).
fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("server closes the socket");
    out
}

#[test]
fn a_bad_version_gets_426_and_the_socket_closes() {
    let srv = Running::start(ServerConfig::default(), Relay::new());
    let req = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n";
    let out = String::from_utf8(raw_exchange(srv.addr, req.as_bytes())).unwrap();
    assert!(out.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{out}");
    assert!(out.contains("Sec-WebSocket-Version: 13\r\n"), "{out}");
    srv.wait_connections(0);
}

#[test]
fn the_origin_allow_list_answers_403() {
    let cfg = ServerConfig { allowed_origins: Some(vec!["https://good.example".into()]), ..ServerConfig::default() };
    let srv = Running::start(cfg, Relay::new());
    let opts = |o: &str| ClientOptions::new(ClientRequest::new(&srv.url("/")).unwrap().origin(o).unwrap());
    assert!(Client::connect(opts("https://good.example")).is_ok());
    match Client::connect(opts("https://evil.example")) {
        Err(ClientError::Closed(c)) => {
            assert!(matches!(c.error, Some(ProtocolError::Handshake(HandshakeError::Status { status: 403, .. }))), "{c:?}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("accepted a bad origin"),
    }
}

#[test]
fn past_the_connection_limit_new_clients_get_503_and_the_others_are_fine() {
    let cfg = ServerConfig { max_connections: 2, ..ServerConfig::default() };
    let mut srv = Running::start(cfg, Relay::new());
    let mut a = srv.connect("/");
    let mut b = srv.connect("/");
    match Client::connect_url(&srv.url("/")) {
        Err(ClientError::Closed(c)) => {
            assert!(matches!(c.error, Some(ProtocolError::Handshake(HandshakeError::Status { status: 503, .. }))), "{c:?}")
        }
        Err(ClientError::Io(_)) => {} // the 503 may race with the reset
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("accepted past the limit"),
    }
    assert_eq!(srv.stats.refused.load(std::sync::atomic::Ordering::Relaxed), 1);
    a.send_text("fine").unwrap();
    assert_eq!(next_message(&mut b), text("fine"));
    drop((a, b));
    srv.stop();
}

#[test]
fn a_client_that_never_reads_meets_the_slow_consumer_policy() {
    let cfg = ServerConfig {
        high_water_mark: 256 * 1024,
        engine: Config { close_timeout: Duration::from_secs(30), ..Config::default() },
        ..ServerConfig::default()
    };
    let mut srv = Running::start(cfg, Relay::new());
    let mut sender = srv.connect("/");
    let mut good = srv.connect("/");
    let mut stuck = raw_client(srv.addr, "/");
    srv.wait_connections(3);
    let payload = vec![b'x'; 16 * 1024];
    let count = 2000; // 32 MiB: far more than loopback socket buffers hold
    // Lockstep: the well-behaved client reads each message before the next is sent,
    // so only the stuck one falls behind.
    for _ in 0..count {
        sender.send_binary(&payload).unwrap();
        assert_eq!(next_message(&mut good).1.len(), payload.len());
    }
    assert_eq!(srv.stats.slow_consumers.load(std::sync::atomic::Ordering::Relaxed), 1);
    // The stuck client finally reads: part of the stream, then close 1008.
    let (frames, code) = read_until_close(&mut stuck);
    assert_eq!(code, Some(1008));
    assert!(frames < count, "queuing stopped at the mark: {frames} frames");
    drop((sender, good, stuck));
    srv.stop();
}

#[test]
fn shutdown_sends_1001_to_everyone() {
    let mut srv = Running::start(ServerConfig::default(), Relay::new());
    let mut clients: Vec<Client> = (0..3).map(|_| srv.connect("/")).collect();
    srv.wait_connections(3);
    srv.handle.shutdown();
    for c in &mut clients {
        let closed = next_closed(c);
        assert_eq!(closed.code(), CloseCode::GOING_AWAY);
        assert!(closed.clean, "{closed:?}");
    }
    let t = srv.thread.take().unwrap();
    t.join().unwrap().unwrap();
    assert!(TcpStream::connect(srv.addr).is_err(), "no longer listening");
}

#[test]
fn echo_sends_every_message_back_unchanged() {
    let mut srv = Running::start(ServerConfig::default(), Echo);
    let mut c = srv.connect("/");
    c.send_text("héllo").unwrap();
    assert_eq!(next_message(&mut c), text("héllo"));
    c.send_binary(b"\x00\xff").unwrap();
    assert_eq!(next_message(&mut c), (MessageKind::Binary, b"\x00\xff".to_vec()));
    c.ping(b"rtt").unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline);
        if let Some(Event::Pong { payload, rtt }) = c.next_event(Some(WAIT)).unwrap() {
            assert_eq!(&**payload, b"rtt");
            assert!(rtt.is_some());
            break;
        }
    }
    c.close(CloseCode::NORMAL, "done").unwrap();
    let closed = next_closed(&mut c);
    assert!(closed.clean);
    assert_eq!((closed.code(), closed.reason()), (CloseCode::NORMAL, ""));
    assert_eq!(c.engine().close_sent().unwrap().reason, "done");
    srv.stop();
}

#[test]
fn echo_fails_a_protocol_violation_with_1002_over_tcp() {
    let srv = Running::start(ServerConfig::default(), Echo);
    let mut s = raw_client(srv.addr, "/");
    // A good frame, then a frame with RSV1 set, in one write.
    let mut bytes = Vec::new();
    encode_frame(&mut bytes, true, OpCode::Text, Some([1, 2, 3, 4]), b"ok");
    let mut bad = Vec::new();
    encode_frame(&mut bad, true, OpCode::Text, Some([1, 2, 3, 4]), b"bad");
    bad[0] |= 0x40;
    bytes.extend_from_slice(&bad);
    s.write_all(&bytes).unwrap();
    let (frames, code) = read_until_close(&mut s);
    assert_eq!((frames, code), (1, Some(1002)), "the echo of the good frame, then the close");
    drop(s);
    srv.wait_connections(0);
}

#[test]
fn a_refused_connection_is_a_clear_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut opts = ClientOptions::new(ClientRequest::new(&format!("ws://127.0.0.1:{port}/")).unwrap());
    opts.connect_timeout = Duration::from_secs(5);
    assert!(matches!(Client::connect(opts), Err(ClientError::Io(_))));
}
