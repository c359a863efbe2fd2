//! RFC 6455 §4: the opening handshake, server and client side.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rfc6455::{Accept, ClientRequest, Config, Connection, Event, HandshakeError, ProtocolError, Reject, State, UsageError};

fn server_answer(request: &[u8]) -> (String, Vec<Event>) {
    let now = Instant::now();
    let mut s = Connection::server(Config::default(), now);
    s.handle_bytes(now, request);
    let out = String::from_utf8_lossy(&drain_output(&mut s)).into_owned();
    (out, events(&mut s))
}

fn status_of(request: &str) -> (u16, String) {
    let (out, evs) = server_answer(request.as_bytes());
    let status = out.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let closed = expect_closed(&evs);
    assert!(matches!(closed.error, Some(ProtocolError::Handshake(_))), "{closed:?}");
    (status, out)
}

#[test]
fn server_accepts_the_rfc_example_and_computes_the_accept_key() {
    let now = Instant::now();
    let mut s = Connection::server(Config::default(), now);
    s.handle_bytes(now, REQUEST.as_bytes());
    let Some(Event::Request(req)) = s.poll_event() else { panic!() };
    assert_eq!(req.path(), "/chat");
    assert_eq!(req.query(), Some("room=1"));
    assert_eq!(req.host(), Some("server.example.com"));
    assert_eq!(req.origin(), Some("http://example.com"));
    assert_eq!(req.subprotocols().collect::<Vec<_>>(), ["chat", "superchat"]);
    assert_eq!(s.state(), State::Connecting);
    s.accept(now, Accept::new().subprotocol("chat").header("X-Server", "rfc6455")).unwrap();
    let out = String::from_utf8(drain_output(&mut s)).unwrap();
    assert!(out.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{out}");
    assert!(out.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{out}");
    assert!(out.contains("Sec-WebSocket-Protocol: chat\r\n"));
    assert!(out.contains("X-Server: rfc6455\r\n"));
    assert!(out.ends_with("\r\n\r\n"));
    assert_eq!(s.poll_event(), Some(Event::Open { subprotocol: Some("chat".into()) }));
    assert_eq!(s.state(), State::Open);
}

#[test]
fn server_refuses_a_subprotocol_that_was_not_offered() {
    let now = Instant::now();
    let mut s = Connection::server(Config::default(), now);
    s.handle_bytes(now, REQUEST.as_bytes());
    let _ = s.poll_event();
    assert!(matches!(s.accept(now, Accept::new().subprotocol("mqtt")), Err(UsageError::SubprotocolNotOffered(_))));
    assert!(matches!(s.accept(now, Accept::new().header("X-Bad", "a\r\nb")), Err(UsageError::InvalidHeaderValue { .. })));
    assert_eq!(s.state(), State::Connecting);
}

#[test]
fn request_trickled_one_byte_at_a_time_with_a_pipelined_frame() {
    let now = Instant::now();
    let mut s = Connection::server(Config::default(), now);
    let mut bytes = REQUEST.as_bytes().to_vec();
    bytes.extend_from_slice(&client_frame(true, rfc6455::OpCode::Text, b"early"));
    for b in &bytes {
        s.handle_bytes(now, std::slice::from_ref(b));
    }
    assert!(matches!(s.poll_event(), Some(Event::Request(_))));
    s.accept(now, Accept::new()).unwrap();
    assert!(matches!(s.poll_event(), Some(Event::Open { .. })));
    assert_eq!(s.poll_event(), Some(Event::Text("early".into())));
}

#[test]
fn bad_requests_get_the_right_status() {
    let ok = REQUEST;
    let cases: Vec<(String, u16)> = vec![
        (ok.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"), 426),
        (ok.replace("Sec-WebSocket-Version: 13\r\n", ""), 426),
        (ok.replace("GET ", "POST "), 405),
        (ok.replace("HTTP/1.1", "HTTP/1.0"), 505),
        (ok.replace("Host: server.example.com\r\n", ""), 400),
        (ok.replace("Upgrade: websocket", "Upgrade: h2c"), 400),
        (ok.replace("Connection: Upgrade", "Connection: keep-alive"), 400),
        (ok.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"), 400),
        (ok.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="), 400),
        (ok.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""), 400),
        ("GARBAGE\0\r\n\r\n".to_owned(), 400),
    ];
    for (req, want) in cases {
        let (status, out) = status_of(&req);
        assert_eq!(status, want, "{req:?} -> {out}");
        if want == 426 {
            assert!(out.contains("Sec-WebSocket-Version: 13\r\n"), "{out}");
        }
    }
}

#[test]
fn token_lists_are_case_insensitive() {
    let req = REQUEST.replace("Upgrade: websocket", "Upgrade: WebSocket").replace("Connection: Upgrade", "Connection: keep-alive, UPGRADE");
    let (out, evs) = server_answer(req.as_bytes());
    assert!(out.is_empty());
    assert!(matches!(evs.first(), Some(Event::Request(_))));
}

#[test]
fn too_many_headers_and_too_large_heads_get_431() {
    let mut many = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(status_of(&many).0, 431);

    let long = format!("GET / HTTP/1.1\r\nHost: h\r\nX-Long: {}\r\n\r\n", "a".repeat(100_000));
    assert_eq!(status_of(&long).0, 431);
    // Never finished, but over the limit: 431 as soon as the limit is passed.
    let (out, _) = server_answer(&vec![b'a'; 9000]);
    assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
}

#[test]
fn handshake_timeout_answers_408_and_closes() {
    let now = Instant::now();
    let mut s = Connection::server(Config::default(), now);
    s.handle_bytes(now, b"GET / HTTP/1.1\r\n");
    let deadline = s.poll_timeout().unwrap();
    assert_eq!(deadline, now + Duration::from_secs(10));
    s.handle_timeout(now + Duration::from_secs(9));
    assert!(s.poll_event().is_none());
    s.handle_timeout(deadline);
    let out = String::from_utf8(drain_output(&mut s)).unwrap();
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    let closed = expect_closed(&events(&mut s));
    assert_eq!(closed.error, Some(ProtocolError::Handshake(HandshakeError::Timeout)));
}

#[test]
fn reject_answers_with_status_and_body() {
    let now = Instant::now();
    let mut s = Connection::server(Config::default(), now);
    s.handle_bytes(now, REQUEST.as_bytes());
    let _ = s.poll_event();
    s.reject(&Reject::new(403).header("X-Why", "origin").body("forbidden")).unwrap();
    let out = String::from_utf8(drain_output(&mut s)).unwrap();
    assert!(out.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{out}");
    assert!(out.contains("X-Why: origin\r\n") && out.contains("Content-Length: 9\r\n") && out.ends_with("forbidden"));
    assert!(matches!(s.poll_event(), Some(Event::Closed(_))));
    assert_eq!(s.state(), State::Closed);
}

fn client_against(response: impl FnOnce(&str) -> String) -> (Connection, Vec<Event>) {
    let now = Instant::now();
    let req = ClientRequest::new("ws://127.0.0.1:9001/lobby?x=1").unwrap().subprotocol("chat").unwrap().origin("http://o.example").unwrap();
    let mut c = Connection::client(Config::default(), &req, now);
    let request = String::from_utf8(drain_output(&mut c)).unwrap();
    assert!(request.starts_with("GET /lobby?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9001\r\n"), "{request}");
    assert!(request.contains("Sec-WebSocket-Protocol: chat\r\n") && request.contains("Origin: http://o.example\r\n"));
    let key = request.lines().find_map(|l| l.strip_prefix("Sec-WebSocket-Key: ")).unwrap();
    let accept = rfc6455::proto::handshake::accept_key(key.as_bytes());
    c.handle_bytes(now, response(&accept).as_bytes());
    let evs = events(&mut c);
    (c, evs)
}

#[test]
fn client_validates_the_response() {
    let good = |a: &str| {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {a}\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
        )
    };
    let (c, evs) = client_against(good);
    assert_eq!(evs, vec![Event::Open { subprotocol: Some("chat".into()) }]);
    assert_eq!(c.response().unwrap().status, 101);

    let (_, evs) = client_against(|_| "HTTP/1.1 302 Found\r\nLocation: ws://elsewhere/\r\n\r\n".into());
    match expect_closed(&evs).error {
        Some(ProtocolError::Handshake(HandshakeError::Status { status: 302, headers })) => {
            assert!(headers.iter().any(|(n, v)| n == "Location" && v == b"ws://elsewhere/"));
        }
        other => panic!("{other:?}"),
    }
    let (_, evs) = client_against(|_| good("AAAAAAAAAAAAAAAAAAAAAAAAAAA="));
    assert_eq!(expect_closed(&evs).error, Some(ProtocolError::Handshake(HandshakeError::BadAccept)));
    let (_, evs) = client_against(|a| good(a).replace("chat\r\n", "mqtt\r\n"));
    assert_eq!(expect_closed(&evs).error, Some(ProtocolError::Handshake(HandshakeError::UnexpectedSubprotocol("mqtt".into()))));
    let (_, evs) = client_against(|a| good(a).replace("\r\n\r\n", "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"));
    assert!(matches!(expect_closed(&evs).error, Some(ProtocolError::Handshake(HandshakeError::UnexpectedExtension(_)))));
    let (_, evs) = client_against(|a| good(a).replace("Upgrade: websocket\r\n", ""));
    assert_eq!(expect_closed(&evs).error, Some(ProtocolError::Handshake(HandshakeError::BadHeader("Upgrade"))));
}

#[test]
fn client_keeps_a_frame_that_arrives_with_the_response() {
    let now = Instant::now();
    let req = ClientRequest::new("ws://h/").unwrap();
    let mut c = Connection::client(Config::default(), &req, now);
    let request = String::from_utf8(drain_output(&mut c)).unwrap();
    let key = request.lines().find_map(|l| l.strip_prefix("Sec-WebSocket-Key: ")).unwrap();
    let accept = rfc6455::proto::handshake::accept_key(key.as_bytes());
    let mut bytes =
        format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n")
            .into_bytes();
    bytes.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
    c.handle_bytes(now, &bytes);
    assert_eq!(events(&mut c), vec![Event::Open { subprotocol: None }, Event::Text("hi".into())]);
}

/// Regression: the core refused `wss://` (`Error::TlsUnsupported`) though TLS is the
/// transport's business; an embedder running it over rustls could not build a client.
#[test]
fn wss_urls_give_the_same_request_as_ws() {
    let req = ClientRequest::new("wss://example.com/chat").unwrap();
    assert!(req.url().secure);
    let mut c = Connection::client(Config::default(), &req, Instant::now());
    let request = String::from_utf8(drain_output(&mut c)).unwrap();
    assert!(request.starts_with("GET /chat HTTP/1.1\r\nHost: example.com\r\n"), "{request}");
    assert_eq!(c.state(), State::Connecting);
}

/// Issue 17: a browser opening the server's address (plain HTTP, no Upgrade) gets a
/// readable answer saying what this is, not a bare 400.
#[test]
fn a_plain_http_request_is_told_this_is_a_websocket_endpoint() {
    let now = Instant::now();
    let mut s = Connection::server(Config::default(), now);
    s.handle_bytes(now, b"GET /lobby HTTP/1.1\r\nHost: chat.example\r\nAccept: text/html\r\n\r\n");
    let closed = expect_closed(&events(&mut s));
    assert_eq!(closed.error, Some(ProtocolError::Handshake(HandshakeError::NotWebSocket)));
    let out = String::from_utf8(drain_output(&mut s)).unwrap();
    assert!(out.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{out}");
    assert!(out.contains("Content-Type: text/plain; charset=utf-8\r\n"), "{out}");
    assert!(out.contains("WebSocket endpoint") && out.contains("ws://HOST:PORT/PATH"), "{out}");
    assert!(out.contains("Connection: Upgrade, close\r\n"), "426 names the upgrade in Connection: {out}");
}

/// With `Config::plain_http`, a plain request is the application's to answer (a page,
/// a health check), in any split, and the connection ends after the answer.
#[test]
fn plain_http_requests_go_to_the_application_when_asked() {
    let request = b"GET /lobby?x=1 HTTP/1.1\r\nHost: chat.example\r\nAccept: text/html\r\n\r\n";
    for split in 1..request.len() {
        let now = Instant::now();
        let mut s = Connection::server(Config { plain_http: true, ..Config::default() }, now);
        s.handle_bytes(now, &request[..split]);
        assert!(s.poll_event().is_none());
        s.handle_bytes(now, &request[split..]);
        let Some(Event::HttpRequest(req)) = s.poll_event() else { panic!("a plain request event") };
        assert_eq!((req.method.as_str(), req.path(), req.query()), ("GET", "/lobby", Some("x=1")));
        assert_eq!(req.header("accept"), Some(&b"text/html"[..]));
        assert_eq!(s.state(), State::Connecting);
        // Anything sent meanwhile is ignored; a second answer is a usage error.
        s.handle_bytes(now, b"more bytes");
        s.respond(&Reject::new(200).header("Content-Type", "text/html").body("<p>hi</p>")).unwrap();
        assert_eq!(s.respond(&Reject::new(200)), Err(UsageError::NoPendingRequest));
        let out = String::from_utf8(drain_output(&mut s)).unwrap();
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\nContent-Length: 9\r\n\r\n<p>hi</p>");
        let closed = expect_closed(&events(&mut s));
        assert_eq!(closed.error, None);
    }
}

#[test]
fn a_head_request_gets_the_head_alone() {
    let now = Instant::now();
    let mut s = Connection::server(Config { plain_http: true, ..Config::default() }, now);
    s.handle_bytes(now, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    let Some(Event::HttpRequest(req)) = s.poll_event() else { panic!("a plain request event") };
    assert_eq!(req.default_response().status(), 426);
    s.respond(&Reject::new(200).body("12345")).unwrap();
    let out = String::from_utf8(drain_output(&mut s)).unwrap();
    assert!(out.ends_with("Content-Length: 5\r\n\r\n"), "{out}");
}

/// `curl --http2` asks `Upgrade: h2c`: an upgrade we may ignore (RFC 9110 §7.8), so a
/// plain request; a client that half-closes after its request still gets the answer;
/// a 204 carries neither body nor Content-Length.
#[test]
fn other_upgrades_half_closed_clients_and_204_under_plain_http() {
    let now = Instant::now();
    let mut s = Connection::server(Config { plain_http: true, ..Config::default() }, now);
    s.handle_bytes(now, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n");
    s.handle_eof(now);
    let Some(Event::HttpRequest(req)) = s.poll_event() else { panic!("a plain request") };
    assert_eq!(req.header("upgrade"), Some(&b"h2c"[..]));
    assert_eq!(s.state(), State::Connecting, "the half-closed client waits for its answer");
    s.respond(&Reject::new(204).body("ignored")).unwrap();
    let out = String::from_utf8(drain_output(&mut s)).unwrap();
    assert_eq!(out, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
    assert!(expect_closed(&events(&mut s)).error.is_none());
}

#[test]
fn upgrades_and_bad_handshakes_are_unchanged_under_plain_http() {
    let now = Instant::now();
    let mut s = Connection::server(Config { plain_http: true, ..Config::default() }, now);
    s.handle_bytes(now, REQUEST.as_bytes());
    assert!(matches!(s.poll_event(), Some(Event::Request(_))));
    // Upgrade asked but no key: still a failed handshake (400), not a page.
    let mut s = Connection::server(Config { plain_http: true, ..Config::default() }, now);
    s.handle_bytes(now, b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n");
    let out = String::from_utf8(drain_output(&mut s)).unwrap();
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    // A plain request that does not finish in time: 408.
    let mut s = Connection::server(Config { plain_http: true, ..Config::default() }, now);
    s.handle_bytes(now, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(matches!(s.poll_event(), Some(Event::HttpRequest(_))));
    s.handle_timeout(now + Duration::from_secs(11));
    let out = String::from_utf8(drain_output(&mut s)).unwrap();
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
}

// ------------------------------------------------ handshakes done by another HTTP stack

/// The header lines of `REQUEST`, as another HTTP stack would hand them over.
fn request_parts(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut headers = vec![
        ("Host", "server.example.com"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Protocol", "chat, superchat"),
    ];
    headers.extend_from_slice(extra);
    headers
}

#[test]
fn a_request_from_parts_gets_the_same_checks_and_the_same_answer_as_one_read_from_bytes() {
    let req = rfc6455::Request::from_parts("GET", "/chat?room=1", request_parts(&[("Origin", "http://example.com")])).unwrap();
    assert_eq!((req.path(), req.query(), req.origin()), ("/chat", Some("room=1"), Some("http://example.com")));
    let accepted = req.negotiate(&Config::default(), Accept::new().subprotocol("chat")).unwrap();
    let mut head = Vec::new();
    accepted.write_head(&mut head);
    // The engine that reads the same request from bytes answers with the same head.
    let now = Instant::now();
    let mut s = Connection::server(Config::default(), now);
    s.handle_bytes(now, REQUEST.as_bytes());
    assert!(matches!(s.poll_event(), Some(Event::Request(_))));
    s.accept(now, Accept::new().subprotocol("chat")).unwrap();
    assert_eq!(String::from_utf8(head).unwrap(), String::from_utf8(drain_output(&mut s)).unwrap());
    assert_eq!(accepted.negotiated().subprotocol.as_deref(), Some("chat"));
    assert!(accepted.headers().contains(&("Sec-WebSocket-Accept".into(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into())));
}

#[test]
fn a_bad_request_from_parts_is_refused_with_its_status_and_implied_headers() {
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16);
    let cases: [Case; 4] = [
        ("POST", request_parts(&[]), 405),
        ("GET", vec![("Host", "h")], 426),
        ("GET", request_parts(&[]).into_iter().map(|(n, v)| if n == "Sec-WebSocket-Version" { (n, "8") } else { (n, v) }).collect(), 426),
        ("GET", request_parts(&[]).into_iter().filter(|(n, _)| *n != "Host").collect(), 400),
    ];
    for (method, headers, status) in cases {
        let err = rfc6455::Request::from_parts(method, "/", headers).unwrap_err();
        let reject = err.rejection().unwrap();
        assert_eq!(reject.status(), status, "{err}");
        assert_eq!(reject.body_bytes(), err.to_string().as_bytes());
        let lines = reject.response_headers().unwrap();
        if status == 426 {
            assert!(lines.contains(&("Sec-WebSocket-Version".into(), "13".into())), "{lines:?}");
        }
        if status == 405 {
            assert!(lines.contains(&("Allow".into(), "GET".into())), "{lines:?}");
        }
        assert!(lines.contains(&("Content-Type".into(), "text/plain; charset=utf-8".into())));
    }
}

#[test]
fn negotiate_refuses_what_the_client_did_not_offer_and_header_injection() {
    let req = rfc6455::Request::from_parts("GET", "/", request_parts(&[])).unwrap();
    assert_eq!(req.negotiate(&Config::default(), Accept::new().subprotocol("mqtt")), Err(UsageError::SubprotocolNotOffered("mqtt".into())));
    let injected = Accept::new().header("X-A", "1\r\nSet-Cookie: x");
    assert!(matches!(req.negotiate(&Config::default(), injected), Err(UsageError::InvalidHeaderValue { .. })));
    // A header the handshake writes itself would contradict it.
    let contradicting = Accept::new().header("Sec-WebSocket-Extensions", "permessage-deflate");
    assert_eq!(req.negotiate(&Config::default(), contradicting), Err(UsageError::ReservedHeader("Sec-WebSocket-Extensions".into())));
}

#[test]
fn header_lines_from_another_stack_are_held_to_what_the_wire_allows() {
    // A subprotocol "offered" with a CR LF inside would otherwise reach the 101.
    let smuggled = request_parts(&[("Sec-WebSocket-Protocol", "chat\r\nSet-Cookie: evil=1")]);
    assert_eq!(rfc6455::Request::from_parts("GET", "/", smuggled).unwrap_err(), HandshakeError::Malformed("header line"));
    let bad_name = request_parts(&[("Bad Name", "v")]);
    assert_eq!(rfc6455::Request::from_parts("GET", "/", bad_name).unwrap_err(), HandshakeError::Malformed("header line"));
    let nul = request_parts(&[("X-A", "v\0")]);
    assert_eq!(rfc6455::Request::from_parts("GET", "/", nul).unwrap_err(), HandshakeError::Malformed("header line"));
    assert_eq!(rfc6455::Request::from_parts("GET", "/a b", request_parts(&[])).unwrap_err(), HandshakeError::Malformed("request target"));
    // A request whose headers were edited after parsing still cannot smuggle a line
    // through the subprotocol answer.
    let mut req = rfc6455::Request::from_parts("GET", "/", request_parts(&[])).unwrap();
    req.headers.push(("Sec-WebSocket-Protocol".into(), b"x\r\nSet-Cookie: evil=1".to_vec()));
    let offered = req.subprotocols().last().unwrap().to_owned();
    assert!(matches!(req.negotiate(&Config::default(), Accept::new().subprotocol(offered)), Err(UsageError::InvalidSubprotocol(_))));
    // The client side checks the same way.
    let hs = rfc6455::ClientHandshake::new(&ClientRequest::new("ws://h/").unwrap(), *b"the sample nonce");
    assert!(matches!(hs.check_response(101, [("Up grade", "websocket")]), Err(HandshakeError::Malformed(_))));
}

#[test]
fn an_upgraded_pair_talks_and_the_early_bytes_come_first() {
    let now = Instant::now();
    let negotiated = rfc6455::Negotiated::new().subprotocol("chat");
    let mut server = Connection::upgraded(rfc6455::Role::Server, Config::default(), &negotiated, now);
    let mut client = Connection::upgraded(rfc6455::Role::Client, Config::default(), &negotiated, now);
    assert_eq!(server.state(), State::Open);
    assert!(server.output().is_empty() && client.output().is_empty(), "nothing is queued to write");
    assert_eq!(server.poll_event(), Some(Event::Open { subprotocol: Some("chat".into()) }));
    assert_eq!(client.poll_event(), Some(Event::Open { subprotocol: Some("chat".into()) }));
    // The frame the other stack read behind the request head goes in first.
    client.send_text("early").unwrap();
    client.send_text("later").unwrap();
    let bytes = drain_output(&mut client);
    let (early, rest) = bytes.split_at(7 + 5 - 1);
    server.handle_bytes(now, early);
    server.handle_bytes(now, rest);
    assert_eq!(events(&mut server), vec![Event::Text("early".into()), Event::Text("later".into())]);
    server.send_text("back").unwrap();
    transfer(&mut server, &mut client, now);
    assert_eq!(client.poll_event(), Some(Event::Text("back".into())));
}

#[cfg(feature = "deflate")]
#[test]
fn deflate_negotiated_from_parts_opens_compressed_connections_on_both_sides() {
    let cfg = Config { deflate: Some(rfc6455::DeflateConfig::default()), ..Config::default() };
    let req = rfc6455::Request::from_parts(
        "GET",
        "/",
        request_parts(&[("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")]),
    )
    .unwrap();
    let accepted = req.negotiate(&cfg, Accept::new()).unwrap();
    let params = accepted.negotiated().deflate.expect("deflate agreed");
    let answer = accepted.headers().iter().find(|(n, _)| n == "Sec-WebSocket-Extensions").map(|(_, v)| v.clone()).unwrap();
    assert_eq!(answer, params.to_header());
    // Without deflate in the server's config, the offer is declined.
    assert_eq!(req.negotiate(&Config::default(), Accept::new()).unwrap().negotiated().deflate, None);

    let now = Instant::now();
    let mut server = Connection::upgraded(rfc6455::Role::Server, cfg.clone(), accepted.negotiated(), now);
    let mut client = Connection::upgraded(rfc6455::Role::Client, cfg, accepted.negotiated(), now);
    assert!(server.is_compressed() && client.is_compressed());
    let text = "compress me ".repeat(100);
    client.send_text(&text).unwrap();
    let wire = drain_output(&mut client);
    assert!(wire.len() < text.len() / 4, "{} bytes on the wire for {}", wire.len(), text.len());
    server.handle_bytes(now, &wire);
    let evs = events(&mut server);
    assert_eq!(evs.last(), Some(&Event::Text(text)));
}

#[test]
fn a_client_request_sent_by_another_stack_is_checked_from_its_status_and_headers() {
    let req = ClientRequest::new("ws://server.example.com:8080/chat").unwrap().subprotocol("chat").unwrap();
    let hs = rfc6455::ClientHandshake::new(&req, *b"the sample nonce");
    let headers = hs.request_headers();
    assert_eq!(headers[0], ("Host".into(), "server.example.com:8080".into()));
    assert!(headers.contains(&("Sec-WebSocket-Key".into(), "dGhlIHNhbXBsZSBub25jZQ==".into())));
    assert!(headers.contains(&("Sec-WebSocket-Protocol".into(), "chat".into())));
    // The raw request is the same lines.
    let mut raw = Vec::new();
    hs.write_request(&mut raw);
    let raw = String::from_utf8(raw).unwrap();
    for (n, v) in &headers {
        assert!(raw.contains(&format!("{n}: {v}\r\n")), "{raw}");
    }

    let good = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ("Sec-WebSocket-Protocol", "chat"),
    ];
    let done = hs.check_response(101, good).unwrap();
    assert_eq!(done.negotiated().subprotocol.as_deref(), Some("chat"));
    let wrong_key = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", "AAAA")];
    assert_eq!(hs.check_response(101, wrong_key).unwrap_err(), HandshakeError::BadAccept);
    assert!(matches!(hs.check_response(403, good).unwrap_err(), HandshakeError::Status { status: 403, .. }));
}
