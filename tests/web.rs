//! The server's plain-HTTP face over loopback: the relay's chat page (headers, HEAD,
//! 404, 405, the handshake's limits), `/healthz` on both ports, and the Prometheus
//! page on the admin address, parsed by a third-party parser and checked against what
//! the test did. (The page in a real browser: tests/browser.rs.)

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::net::*;
use rfc6455::net::{Relay, ServerConfig};
use rfc6455::{CloseCode, Config, MessageKind};

fn with_admin() -> ServerConfig {
    ServerConfig { admin_listen: Some("127.0.0.1:0".parse().unwrap()), ..ServerConfig::default() }
}

#[test]
fn the_relay_serves_its_chat_page_on_room_paths() {
    let server = Running::start(ServerConfig::default(), Relay::new().with_page());
    let (status, head, body) = http_get(server.addr, "/lobby");
    assert_eq!(status, 200, "{head}");
    assert_eq!(head_value(&head, "Content-Type"), Some("text/html; charset=utf-8"));
    assert_eq!(head_value(&head, "X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(head_value(&head, "Connection"), Some("close"));
    assert_eq!(head_value(&head, "Cache-Control"), Some("no-cache"));
    let csp = head_value(&head, "Content-Security-Policy").unwrap();
    assert!(csp.starts_with("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
    let page = String::from_utf8(body).unwrap();
    for id in ["id=\"message\"", "id=\"messages\"", "id=\"nick\"", "id=\"status\""] {
        assert!(page.contains(id), "the page has {id}");
    }
    let length: usize = head_value(&head, "Content-Length").unwrap().parse().unwrap();
    assert_eq!(length, page.len());

    // HEAD: the same head, no body.
    let (status, head, body) = http_exchange(server.addr, "HEAD /lobby HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(head_value(&head, "Content-Length").unwrap().parse::<usize>().unwrap(), length);

    assert_eq!(http_get(server.addr, "/favicon.ico").0, 404);
    let (status, head, _) = http_exchange(server.addr, "POST /lobby HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi");
    assert_eq!((status, head_value(&head, "Allow")), (405, Some("GET, HEAD")));
    let (status, _, body) = http_get(server.addr, "/healthz");
    assert_eq!((status, body.as_slice()), (200, &b"ok\n"[..]));
    // A WebSocket client still joins the same path.
    let _ws = server.connect("/lobby");
    server.wait_until("the client's open", |s| s.opened.load(std::sync::atomic::Ordering::Relaxed) == 1);
    assert_eq!(server.stats.http_responses(200), 3);
    assert_eq!(server.stats.http_responses(404), 1);
}

#[test]
fn without_the_page_a_browser_is_told_this_is_a_websocket_endpoint() {
    let server = Running::start(ServerConfig::default(), Relay::new());
    let (status, head, body) = http_get(server.addr, "/lobby");
    assert_eq!(status, 426, "{head}");
    assert_eq!(head_value(&head, "Upgrade"), Some("websocket"));
    assert!(String::from_utf8(body).unwrap().contains("WebSocket"));
    let (status, _, body) = http_exchange(server.addr, "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((status, body.len()), (426, 0));
    // Health is the server's, page or not.
    assert_eq!(http_get(server.addr, "/healthz").0, 200);
}

#[test]
fn plain_requests_meet_the_handshake_limits() {
    let engine = Config { handshake_timeout: Some(Duration::from_millis(300)), ..Config::default() };
    let server = Running::start(ServerConfig { engine, ..ServerConfig::default() }, Relay::new().with_page());
    // A head over the size limit: 431.
    let big = format!("GET /lobby HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "a".repeat(9000));
    assert_eq!(http_exchange(server.addr, &big).0, 431);
    // A slow head: 408 when the handshake time is up, and the socket ends.
    let started = Instant::now();
    let (status, _, _) = http_exchange(server.addr, "GET /lobby HTTP/1.1\r\nHost: x\r\n");
    assert_eq!(status, 408);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(290) && waited < Duration::from_secs(3), "{waited:?}");
    server.wait_connections(0);
}

/// Scrapes the admin address: `name{labels}` -> value, parsed by `prometheus-parse`.
fn scrape(addr: std::net::SocketAddr) -> HashMap<String, f64> {
    let (status, head, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{head}");
    assert_eq!(head_value(&head, "Content-Type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let text = String::from_utf8(body).unwrap();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("a valid exposition");
    let mut out = HashMap::new();
    for s in scrape.samples {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let key = if labels.is_empty() { s.metric.clone() } else { format!("{}{{{}}}", s.metric, labels.join(",")) };
        let value = match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(buckets) => {
                for b in &buckets {
                    out.insert(format!("{}_bucket{{le={}}}", s.metric, b.less_than), b.count);
                }
                continue;
            }
            prometheus_parse::Value::Summary(_) => continue,
        };
        out.insert(key, value);
    }
    assert!(text.contains("# TYPE rfc6455_handshake_seconds histogram"), "{text}");
    out
}

#[test]
fn metrics_on_the_admin_address_count_what_happened() {
    let cfg = ServerConfig { allowed_origins: Some(vec!["http://good.example".into()]), ..with_admin() };
    let server = Running::start(cfg, Relay::new().with_page());
    let admin = server.admin.unwrap();
    let origin = "Origin: http://good.example\r\n";
    let (a, _) = raw_client_with(server.addr, "/lobby", origin);
    let mut b = rfc6455::net::Client::connect(rfc6455::net::ClientOptions::new(
        rfc6455::ClientRequest::new(&server.url("/lobby")).unwrap().origin("http://good.example").unwrap(),
    ))
    .unwrap();
    server.wait_until("two opens", |s| s.opened.load(std::sync::atomic::Ordering::Relaxed) == 2);
    for text in ["one", "two", "three"] {
        b.send(MessageKind::Text, text.as_bytes()).unwrap();
    }
    // Refusals: a bad key (400), a foreign origin (403).
    let mut bad = TcpStream::connect(server.addr).unwrap();
    bad.write_all(b"GET /lobby HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut evil = TcpStream::connect(server.addr).unwrap();
    evil.write_all(b"GET /lobby HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    server.wait_until("the refusals", |s| s.rejected(400) == 1 && s.rejected_origin.load(std::sync::atomic::Ordering::Relaxed) == 1);
    server.wait_until("three deliveries", |s| s.messages_sent.load(std::sync::atomic::Ordering::Relaxed) == 3);

    let m = scrape(admin);
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("{k} missing from {m:#?}"));
    assert_eq!(get("rfc6455_opened_total"), 2.0);
    assert_eq!(get("rfc6455_messages_received_total"), 3.0);
    assert_eq!(get("rfc6455_messages_sent_total"), 3.0);
    assert_eq!(get("rfc6455_received_bytes_total"), 11.0);
    assert_eq!(get("rfc6455_relay_rooms"), 1.0);
    assert_eq!(get("rfc6455_relay_members"), 2.0);
    assert_eq!(get("rfc6455_relay_messages_total"), 3.0);
    assert_eq!(get("rfc6455_rejected_total{reason=handshake,status=400}"), 1.0);
    assert_eq!(get("rfc6455_rejected_total{reason=origin,status=403}"), 1.0);
    assert_eq!(get("rfc6455_rejected_total{reason=limit,status=503}"), 0.0);
    assert_eq!(get("rfc6455_handshake_seconds_bucket{le=inf}"), 2.0);
    // a, b, the bad key and the foreign origin (the admin address's scrapes are not counted).
    assert_eq!(get("rfc6455_accepted_total"), 4.0);
    // a and b, and the two refused sockets while they linger; never the scrape's own.
    let held = get("rfc6455_connections");
    assert!((2.0..=4.0).contains(&held), "{held}");

    // A clean close by the client: one 1000 each way.
    b.close(CloseCode::NORMAL, "bye").unwrap();
    next_closed(&mut b);
    server.wait_until("the close", |s| s.connections() <= 3);
    let deadline = Instant::now() + WAIT;
    let m = loop {
        let m = scrape(admin);
        if m.get("rfc6455_close_codes_total{code=1000,direction=received}") == Some(&1.0) || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(m.get("rfc6455_close_codes_total{code=1000,direction=received}"), Some(&1.0), "{m:#?}");
    assert_eq!(m.get("rfc6455_close_codes_total{code=1000,direction=sent}"), Some(&1.0), "{m:#?}");
    assert_eq!(m.get("rfc6455_relay_members"), Some(&1.0));

    // Metrics only on the admin address: on the public port, /metrics is a room's page.
    let (_, _, public) = http_get(server.addr, "/metrics");
    assert!(!String::from_utf8_lossy(&public).contains("rfc6455_opened_total"));
    // The admin address speaks no WebSocket and serves nothing else.
    let (status, _, _) = http_exchange(
        admin,
        "GET /lobby HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert_eq!(status, 404);
    assert_eq!(http_get(admin, "/lobby").0, 404);
    assert_eq!(http_get(admin, "/healthz").0, 200);
    drop(a);
}

#[test]
fn health_says_503_while_the_server_shuts_down() {
    let cfg = ServerConfig { shutdown_timeout: Duration::from_secs(5), ..with_admin() };
    let mut server = Running::start(cfg, Relay::new());
    let admin = server.admin.unwrap();
    assert_eq!(http_get(admin, "/healthz").0, 200);
    // A client that never answers the 1001 holds the shutdown open.
    let mut silent = raw_client(server.addr, "/lobby");
    server.wait_connections(1);
    server.handle.shutdown();
    let deadline = Instant::now() + WAIT;
    let (status, head, body) = loop {
        let answer = http_get(admin, "/healthz");
        if answer.0 != 200 || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!((status, body.as_slice()), (503, &b"shutting down\n"[..]), "{head}");
    assert_eq!(read_until_close(&mut silent).1, Some(1001));
    drop(silent);
    server.stop();
}
