//! RFC 6455 §7: the closing handshake in both directions, timeouts, abort, keepalive.

mod common;

use std::time::Duration;

use common::*;
use rfc6455::proto::frame::OpCode;
use rfc6455::{CloseCode, CloseFrame, Config, Event, ProtocolError, Side, State};

#[test]
fn client_initiated_close() {
    let mut p = Pair::default_open();
    p.client.close(p.now, CloseCode::NORMAL, "bye").unwrap();
    assert_eq!(p.client.state(), State::Closing);
    p.pump();
    // The server replied and is done: it closes TCP first (§7.1.1).
    let s = expect_closed(&p.server_events);
    assert_eq!(s.initiator, Side::Remote);
    assert_eq!(s.received, Some(CloseFrame { code: CloseCode::NORMAL, reason: "bye".into() }));
    assert_eq!(s.sent.as_ref().map(|f| f.code), Some(CloseCode::NORMAL), "the server echoes the code");
    assert!(s.clean);
    // The client got the reply but waits for the server's TCP close.
    assert!(p.client_events.is_empty(), "{:?}", p.client_events);
    assert_eq!(p.client.state(), State::Closing);
    p.client.handle_eof(p.now);
    p.pump();
    let c = expect_closed(&p.client_events);
    assert!(c.clean);
    assert_eq!((c.initiator, c.code(), c.reason()), (Side::Local, CloseCode::NORMAL, ""));
}

#[test]
fn server_initiated_close() {
    let mut p = Pair::default_open();
    p.server.close(p.now, CloseCode::GOING_AWAY, "restart").unwrap();
    p.pump();
    let c_state = p.client.state();
    assert_eq!(c_state, State::Closing, "client waits for TCP close");
    let s = expect_closed(&p.server_events);
    assert!(s.clean);
    assert_eq!(s.initiator, Side::Local);
    p.client.handle_eof(p.now);
    let c = expect_closed(&events(&mut p.client));
    assert_eq!((c.code(), c.reason(), c.initiator), (CloseCode::GOING_AWAY, "restart", Side::Remote));
}

#[test]
fn client_gives_up_waiting_for_tcp_close_after_the_timeout() {
    let mut p = Pair::default_open();
    p.server.close(p.now, CloseCode::NORMAL, "").unwrap();
    p.pump();
    let deadline = p.client.poll_timeout().unwrap();
    assert_eq!(deadline, p.now + Config::default().close_timeout);
    p.advance(Duration::from_secs(4));
    assert!(p.client_events.is_empty());
    p.advance(Duration::from_secs(1));
    assert!(expect_closed(&p.client_events).clean);
}

#[test]
fn close_timeout_when_the_peer_never_answers() {
    let (mut s, now) = open_server(Config::default());
    s.close(now, CloseCode::NORMAL, "").unwrap();
    // Data the peer sent before it saw our close still arrives; only its close ends it.
    s.handle_bytes(now, &client_frame(true, OpCode::Text, b"in flight"));
    assert_eq!(events(&mut s), vec![Event::Text("in flight".into())]);
    s.handle_timeout(now + Duration::from_secs(5));
    let closed = expect_closed(&events(&mut s));
    assert!(!closed.clean);
    assert_eq!(closed.code(), CloseCode::NORMAL);
}

#[test]
fn close_without_status_is_answered_without_status() {
    let (mut s, now) = open_server(Config::default());
    s.handle_bytes(now, &client_frame(true, OpCode::Close, b""));
    let closed = expect_closed(&events(&mut s));
    assert_eq!(closed.code(), CloseCode::NO_STATUS);
    let frames = parse_frames(&drain_output(&mut s));
    assert_eq!(frames, vec![(true, OpCode::Close, vec![])]);
}

#[test]
fn eof_without_close_is_abnormal() {
    let mut p = Pair::default_open();
    p.server.handle_eof(p.now);
    let s = expect_closed(&events(&mut p.server));
    assert_eq!((s.code(), s.clean, s.initiator, s.error), (CloseCode::ABNORMAL, false, Side::Remote, None));
}

#[test]
fn abort_discards_output_and_closes_at_once() {
    let mut p = Pair::default_open();
    p.client.send_text("never sent").unwrap();
    assert!(p.client.bytes_to_write() > 0);
    p.client.abort();
    assert_eq!(p.client.bytes_to_write(), 0);
    let c = expect_closed(&events(&mut p.client));
    assert_eq!((c.initiator, c.code()), (Side::Local, CloseCode::ABNORMAL));
    p.client.abort();
    assert_eq!(p.client.poll_event(), None, "Closed exactly once");
}

#[test]
fn ping_pong_reports_round_trip_time() {
    let mut p = Pair::default_open();
    p.client.ping(p.now, b"t1").unwrap();
    transfer(&mut p.client, &mut p.server, p.now);
    p.now += Duration::from_millis(42);
    p.pump();
    assert!(matches!(&p.server_events[0], Event::Ping(x) if &***x == b"t1"));
    match &p.client_events[0] {
        Event::Pong { payload, rtt } => {
            assert_eq!(&***payload, b"t1");
            assert_eq!(*rtt, Some(Duration::from_millis(42)));
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(p.client.last_rtt(), Some(Duration::from_millis(42)));
    // An unsolicited pong has no round-trip time.
    p.server.pong(b"hb").unwrap();
    p.pump();
    assert!(matches!(&p.client_events[1], Event::Pong { rtt: None, .. }));
}

#[test]
fn keepalive_pings_and_drops_a_silent_peer() {
    let cfg = Config { ping_interval: Some(Duration::from_secs(10)), pong_timeout: Duration::from_secs(3), ..Config::default() };
    let mut p = Pair::open(cfg, Config::default());
    assert_eq!(p.client.poll_timeout(), Some(p.now + Duration::from_secs(10)));
    p.advance(Duration::from_secs(10));
    assert!(matches!(p.server_events[0], Event::Ping(_)));
    assert!(matches!(p.client_events[0], Event::Pong { rtt: Some(_), .. }));
    // Now the server stops answering: the next ping goes unanswered.
    p.now += Duration::from_secs(10);
    p.client.handle_timeout(p.now);
    let ping = drain_output(&mut p.client);
    assert_eq!(parse_frames(&ping)[0].1, OpCode::Ping);
    p.now += Duration::from_secs(3);
    p.client.handle_timeout(p.now);
    let c = expect_closed(&events(&mut p.client));
    assert_eq!((c.code(), c.error), (CloseCode::ABNORMAL, Some(ProtocolError::PongTimeout)));
    assert_eq!(p.client.bytes_to_write(), 0, "nothing is sent to a dead peer");
}

#[test]
fn idle_timeout_drops_a_silent_peer() {
    let cfg = Config { idle_timeout: Some(Duration::from_secs(30)), ..Config::default() };
    let (mut s, now) = open_server(cfg);
    s.handle_bytes(now + Duration::from_secs(20), &client_frame(true, OpCode::Ping, b""));
    s.handle_timeout(now + Duration::from_secs(30));
    assert!(!events(&mut s).iter().any(|e| matches!(e, Event::Closed(_))));
    s.handle_timeout(now + Duration::from_secs(50));
    assert_eq!(expect_closed(&events(&mut s)).error, Some(ProtocolError::IdleTimeout));
}

/// Regression (issue 17): a client that closed at the end of its input lost the echoes
/// still on their way, because the engine discarded data frames once it had sent its
/// close. RFC 6455 §7.1 lets them arrive until the peer's close frame.
#[test]
fn messages_in_flight_when_we_close_are_delivered_before_the_close() {
    let mut p = Pair::default_open();
    p.client.send_text("hello").unwrap();
    p.client.send_text("world").unwrap();
    p.client.close(p.now, CloseCode::NORMAL, "").unwrap();
    // The server echoes each message, then answers the close (the deferred close frame
    // goes out after its answers).
    let now = p.now;
    let out = drain_output(&mut p.client);
    p.server.handle_bytes(now, &out);
    while let Some(ev) = p.server.poll_event() {
        if let Event::Text(t) = ev {
            p.server.send_text(&t).unwrap();
        }
    }
    let back = drain_output(&mut p.server);
    p.client.handle_bytes(now, &back);
    p.client.handle_eof(now);
    let got = events(&mut p.client);
    assert_eq!(got[..2], [Event::Text("hello".into()), Event::Text("world".into())], "{got:?}");
    let closed = expect_closed(&got);
    assert!(closed.clean, "{closed:?}");
}
