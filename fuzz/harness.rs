//! Fuzz harnesses, shared by the cargo-fuzz targets (`fuzz/fuzz_targets/`) and by
//! `tests/fuzz_regressions.rs`, which replays the seed corpus and every crash found
//! through plain `cargo test`.
//!
//! The oracle: the input is accepted or rejected with the documented close code or
//! status; never a panic; memory held stays within the configured limits whatever
//! lengths the input declares; `Closed` comes at most once and last.
//!
//! Inputs that feed an engine start with one byte that chooses how the rest is split
//! into reads (0: one read; otherwise chunk sizes from a generator seeded by it), so the
//! fuzzer chooses the split points too.
#![allow(dead_code)]

// The in-memory helpers of the integration tests, shared rather than copied.
#[path = "../tests/common/mod.rs"]
mod common;
use common::drain_output;

use std::time::{Duration, Instant};

use rfc6455::proto::mask::{apply_mask, apply_mask_reference};
use rfc6455::proto::utf8::Utf8Validator;
use rfc6455::proxy::{MAX_RESPONSE_HEAD, Proxy, ProxyError, ProxyHandshake, ProxyStep, Target};
use rfc6455::{Accept, ClientRequest, CloseCode, Config, Connection, Event, FixedMaskGenerator, MessageKind, State};

/// Small limits, so that the limit paths are reachable.
fn config() -> Config {
    Config { max_message_size: 64 * 1024, max_frame_size: 32 * 1024, max_handshake_size: 2048, max_headers: 16, ..Config::default() }
}

/// Splits `data` (after its first byte) into reads as the first byte says.
fn reads(data: &[u8]) -> Vec<&[u8]> {
    let Some((&mode, rest)) = data.split_first() else { return vec![] };
    if mode == 0 {
        return vec![rest];
    }
    let mut state = u32::from(mode).wrapping_mul(0x9E37_79B9) | 1;
    let max = [1usize, 2, 3, 7, 16, 64, 500][usize::from(mode) % 7];
    let mut out = Vec::new();
    let mut rest = rest;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state as usize % max + 1).min(rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
    }
    out
}

/// Drains events and checks the invariants that hold after any input.
struct Watch {
    closed: bool,
    events: Vec<Event>,
}

impl Watch {
    fn new() -> Self {
        Watch { closed: false, events: Vec::new() }
    }

    fn drain(&mut self, c: &mut Connection) {
        while let Some(e) = c.poll_event() {
            assert!(!self.closed, "event after Closed: {e:?}");
            if let Event::Closed(_) = e {
                self.closed = true;
                assert_eq!(c.state(), State::Closed);
            }
            self.events.push(e);
        }
        let cfg = c.config();
        // Pinned memory is bounded by the limits, not by declared lengths.
        let bound = 2 * cfg.max_message_size + 2 * cfg.max_handshake_size + 64 * 1024 + c.bytes_to_write();
        assert!(c.buffered_bytes() <= bound, "{} bytes pinned", c.buffered_bytes());
    }
}

fn feed(c: &mut Connection, data: &[u8], now: Instant) -> Watch {
    let mut w = Watch::new();
    let mut input = 0;
    for chunk in reads(data) {
        c.handle_bytes(now, chunk);
        input += chunk.len();
        w.drain(c);
        // Output is proportional to input (pongs, close frames, an HTTP error).
        assert!(c.bytes_to_write() <= 2 * input + 4096, "{} bytes to write for {input} bytes in", c.bytes_to_write());
    }
    c.handle_timeout(now + Duration::from_secs(3600));
    w.drain(c);
    c.handle_eof(now + Duration::from_secs(3600));
    w.drain(c);
    assert!(w.closed, "every connection ends after EOF and timeouts");
    w
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn open_server(now: Instant) -> Connection {
    let mut s = Connection::server(config(), now);
    s.handle_bytes(now, REQUEST);
    assert!(matches!(s.poll_event(), Some(Event::Request(_))));
    s.accept(now, Accept::new()).unwrap();
    assert!(matches!(s.poll_event(), Some(Event::Open { .. })));
    drain_output(&mut s);
    s
}

fn new_client(now: Instant) -> (Connection, String) {
    let req = ClientRequest::new("ws://h/").unwrap();
    let mut c = Connection::client_with_mask_generator(config(), &req, Box::new(FixedMaskGenerator([1, 2, 3, 4])), now);
    let request = String::from_utf8(drain_output(&mut c)).unwrap();
    let key = request.lines().find_map(|l| l.strip_prefix("Sec-WebSocket-Key: ")).unwrap().to_owned();
    (c, rfc6455::proto::handshake::accept_key(key.as_bytes()))
}

fn open_client(now: Instant) -> Connection {
    let (mut c, accept) = new_client(now);
    let resp =
        format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
    c.handle_bytes(now, resp.as_bytes());
    assert!(matches!(c.poll_event(), Some(Event::Open { .. })));
    c
}

/// Arbitrary request bytes to a server.
/// Each input goes to a server that answers plain HTTP itself and to one that hands
/// plain requests over.
pub fn handshake_server(data: &[u8]) {
    handshake_server_with(data, false);
    handshake_server_with(data, true);
}

fn handshake_server_with(data: &[u8], plain_http: bool) {
    let now = Instant::now();
    let mut s = Connection::server(Config { plain_http, ..config() }, now);
    let mut w = Watch::new();
    for chunk in reads(data) {
        s.handle_bytes(now, chunk);
        while let Some(e) = s.poll_event() {
            if let Event::Request(req) = &e {
                // Whatever was accepted is a valid RFC 6455 request.
                assert!(req.target.starts_with('/') || !req.target.is_empty());
                let _ = req.subprotocols().count();
                s.accept(now, Accept::new()).unwrap();
            }
            if let Event::HttpRequest(req) = &e {
                // Only a server that takes them, and only requests with no key that ask for no
                // WebSocket upgrade (another upgrade, `h2c`, may be ignored). A header value
                // that is not UTF-8 names no token (as everywhere in the handshake).
                let upgrade = std::str::from_utf8(req.header("upgrade").unwrap_or_default()).unwrap_or("");
                let websocket = upgrade.split(',').any(|t| t.trim().eq_ignore_ascii_case("websocket"));
                assert!(plain_http && req.header("sec-websocket-key").is_none() && !websocket, "{req:?}");
                s.respond(&rfc6455::Reject::new(200).body("page")).unwrap();
                let out = drain_output(&mut s);
                assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"), "{out:?}");
                assert_eq!(out.ends_with(b"\r\n\r\npage"), req.method != "HEAD", "{out:?}");
            }
            assert!(!w.closed);
            w.closed |= matches!(e, Event::Closed(_));
        }
        w.drain(&mut s);
    }
    // Whatever happened, the server wrote nothing but an HTTP response (and frames after 101).
    let out = drain_output(&mut s);
    assert!(out.is_empty() || out.starts_with(b"HTTP/1.1 "), "{out:?}");
}

/// Arbitrary response bytes to a client.
pub fn handshake_client(data: &[u8]) {
    let now = Instant::now();
    let (mut c, accept) = new_client(now);
    // Half the inputs start from a valid 101 head so the fuzzer reaches the frame layer.
    let mut input = Vec::new();
    if data.first().is_some_and(|b| b & 0x80 != 0) {
        input.push(data[0]);
        input.extend_from_slice(
            format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n")
                .as_bytes(),
        );
        input.extend_from_slice(&data[1..]);
    } else {
        input.extend_from_slice(data);
    }
    let w = feed(&mut c, &input, now);
    if let Some(Event::Open { subprotocol: protocol }) = w.events.first() {
        assert!(protocol.is_none(), "we offered no subprotocol");
    }
}

/// Arbitrary bytes to an open server, in arbitrary reads.
pub fn frames_server(data: &[u8]) {
    let now = Instant::now();
    let mut s = open_server(now);
    check_messages(&feed(&mut s, data, now), &config());
}

/// Arbitrary bytes to an open server that negotiated permessage-deflate: compressed
/// messages, bombs, corrupt streams, RSV1 in the wrong places.
pub fn frames_deflate(data: &[u8]) {
    let now = Instant::now();
    let cfg = Config { deflate: Some(rfc6455::proto::deflate::DeflateConfig::default()), ..config() };
    let mut s = Connection::server(cfg.clone(), now);
    let req = String::from_utf8_lossy(REQUEST).replace("\r\n\r\n", "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n");
    s.handle_bytes(now, req.as_bytes());
    assert!(matches!(s.poll_event(), Some(Event::Request(_))));
    s.accept(now, Accept::new()).unwrap();
    assert!(matches!(s.poll_event(), Some(Event::Open { .. })));
    assert!(s.is_compressed());
    drain_output(&mut s);
    check_messages(&feed(&mut s, data, now), &cfg);
}

/// Arbitrary bytes to an open client, in arbitrary reads.
pub fn frames_client(data: &[u8]) {
    let now = Instant::now();
    let mut c = open_client(now);
    check_messages(&feed(&mut c, data, now), &config());
}

fn check_messages(w: &Watch, cfg: &Config) {
    for e in &w.events {
        match e {
            Event::Binary(b) => assert!(b.len() <= cfg.max_message_size),
            Event::Text(t) => {
                assert!(t.len() <= cfg.max_message_size);
                // The message layer builds text without a second UTF-8 pass (its one
                // `unsafe`): check every string it produced the slow way.
                assert!(std::str::from_utf8(t.as_bytes()).is_ok(), "invalid UTF-8 in a Text event: {:x?}", t.as_bytes());
            }
            Event::Frame { data, .. } => assert!(data.len() <= cfg.max_message_size),
            Event::Closed(c) => {
                if let Some(err) = &c.error {
                    let code = err.close_code();
                    assert!(code == CloseCode::ABNORMAL || code.is_sendable());
                    if code.is_sendable() {
                        assert_eq!(c.sent.as_ref().map(|f| f.code), Some(code), "{c:?}");
                    }
                }
            }
            _ => {}
        }
    }
}

/// The UTF-8 validator against `std::str::from_utf8`, over arbitrary splits.
pub fn utf8(data: &[u8]) {
    let pieces = reads(data);
    let whole: Vec<u8> = pieces.concat();
    let mut v = Utf8Validator::new();
    let mut ok = true;
    for p in &pieces {
        if v.feed(p).is_err() {
            ok = false;
            break;
        }
    }
    let ok = ok && v.finish().is_ok();
    assert_eq!(ok, std::str::from_utf8(&whole).is_ok(), "{whole:x?}");
}

/// Fast masking against the byte-by-byte reference, at every key offset and split.
pub fn mask(data: &[u8]) {
    if data.len() < 6 {
        return;
    }
    let key = [data[0], data[1], data[2], data[3]];
    let offset = usize::from(data[4]) % 4;
    let payload = &data[5..];
    let split = usize::from(data[4]) % (payload.len() + 1);
    let mut fast = payload.to_vec();
    let next = apply_mask(&mut fast[..split], key, offset);
    apply_mask(&mut fast[split..], key, next);
    let mut reference = payload.to_vec();
    apply_mask_reference(&mut reference, key, offset);
    assert_eq!(fast, reference);
    apply_mask(&mut fast, key, offset);
    assert_eq!(fast, payload, "masking is an involution");
}

/// Arbitrary messages encoded by one engine and decoded by the other.
pub fn roundtrip(data: &[u8]) {
    let now = Instant::now();
    let mut expected = Vec::new();
    let mut client = open_client(now);
    let mut server = open_server(now);
    let mut rest = data;
    while let [hdr, len, tail @ ..] = rest {
        let n = (usize::from(*len) * 37).min(tail.len());
        let (body, after) = tail.split_at(n);
        rest = after;
        let frames = usize::from(hdr >> 4) + 1;
        let (kind, payload) = if hdr & 1 == 0 {
            (MessageKind::Binary, body.to_vec())
        } else {
            (MessageKind::Text, String::from_utf8_lossy(body).into_owned().into_bytes())
        };
        let (sender, to_server) = if hdr & 2 == 0 { (&mut client, true) } else { (&mut server, false) };
        if hdr & 4 != 0 && payload.len() <= 125 {
            sender.ping(now, &payload).unwrap();
            expected.push((to_server, Event::Ping(Box::new(rfc6455::ControlPayload::new(&payload).unwrap()))));
            continue;
        }
        let step = payload.len().div_ceil(frames).max(1);
        let chunks: Vec<&[u8]> = if payload.is_empty() { vec![&payload[..]] } else { payload.chunks(step).collect() };
        for (i, c) in chunks.iter().enumerate() {
            sender.send_fragment(kind, c, i + 1 == chunks.len()).unwrap();
        }
        let event = match kind {
            MessageKind::Text => Event::Text(String::from_utf8(payload).unwrap()),
            MessageKind::Binary => Event::Binary(payload),
        };
        expected.push((to_server, event));
    }
    let to_server = drain_output(&mut client);
    let to_client = drain_output(&mut server);
    server.handle_bytes(now, &to_server);
    client.handle_bytes(now, &to_client);
    let got_server: Vec<Event> = std::iter::from_fn(|| server.poll_event()).collect();
    let got_client: Vec<Event> = std::iter::from_fn(|| client.poll_event()).collect();
    let want_server: Vec<Event> = expected.iter().filter(|(s, _)| *s).map(|(_, e)| e.clone()).collect();
    let want_client: Vec<Event> = expected.iter().filter(|(s, _)| !*s).map(|(_, e)| e.clone()).collect();
    assert_eq!(got_server, want_server);
    assert_eq!(got_client, want_client);
}

/// Arbitrary interleavings of commands, partial transfers, time and EOF on a pair.
pub fn api_sequence(data: &[u8]) {
    let mut now = Instant::now();
    let (mut client, accept) = new_client(now);
    let mut server = Connection::server(config(), now);
    let mut c_to_s = drain_output(&mut client);
    let mut s_to_c: Vec<u8> = Vec::new();
    let (mut wc, mut ws) = (Watch::new(), Watch::new());
    let _ = accept;
    let mut sent_by_app = 0usize;
    for op in data.chunks(2) {
        let (code, arg) = (op[0], op.get(1).copied().unwrap_or(0));
        let len = usize::from(arg);
        let payload = vec![arg; len];
        match code % 12 {
            0 => {
                let _ = client.send_text(&"é".repeat(len / 2));
                sent_by_app += len;
            }
            1 => {
                let _ = server.send_binary(&payload);
                sent_by_app += len;
            }
            2 => {
                let _ = client.ping(now, &payload[..len.min(125)]);
            }
            3 => {
                let _ = server.ping(now, &payload[..len.min(126)]);
            }
            4 => {
                let _ = client.close(now, CloseCode(u16::from(arg) * 20), "bye");
            }
            5 => {
                let _ = server.close(now, CloseCode::NORMAL, "");
            }
            6 => now += Duration::from_millis(u64::from(arg) * 100),
            7 => {
                let n = len.min(c_to_s.len());
                server.handle_bytes(now, &c_to_s[..n]);
                c_to_s.drain(..n);
            }
            8 => {
                let n = len.min(s_to_c.len());
                client.handle_bytes(now, &s_to_c[..n]);
                s_to_c.drain(..n);
            }
            9 => {
                if arg & 1 == 0 {
                    client.handle_eof(now);
                } else {
                    server.handle_eof(now);
                }
            }
            10 => {
                if arg & 1 == 0 {
                    client.abort();
                } else {
                    server.abort();
                }
            }
            _ => {
                client.handle_timeout(now);
                server.handle_timeout(now);
            }
        }
        // The server accepts whatever request it gets.
        while let Some(e) = server.poll_event() {
            if let Event::Request(_) = e {
                server.accept(now, Accept::new()).unwrap();
            }
            assert!(!ws.closed, "event after Closed");
            ws.closed |= matches!(e, Event::Closed(_));
        }
        wc.drain(&mut client);
        ws.drain(&mut server);
        c_to_s.extend(drain_output(&mut client));
        s_to_c.extend(drain_output(&mut server));
        // Queued bytes never exceed what the application sent plus framing overhead.
        let bound = 2 * sent_by_app + 64 * 1024 + 300 * data.len();
        assert!(c_to_s.len() + s_to_c.len() <= bound, "unbounded output");
    }
}

// ------------------------------------------------------------------ the proxy step

#[derive(Debug, PartialEq, Eq)]
enum ProxyVerdict {
    NeedMore,
    Done { tunnel: Vec<u8> },
    Failed(ProxyError),
}

const PROXIES: [&str; 4] = ["http://proxy:3128", "http://ann:pw@proxy:3128", "socks5h://proxy:1080", "socks5h://ann:pw@proxy:1080"];

/// The client proxy step (`rfc6455::proxy`): the answer after the first byte goes, in
/// the reads that byte chooses and whole, to HTTP CONNECT and SOCKS5 machines with and
/// without credentials. Never a panic; the memory held stays within
/// `MAX_RESPONSE_HEAD`; what is sent stays small; `leftover` never exceeds the read;
/// the outcome (verdict, bytes after the answer, bytes sent) is the same whatever the split.
pub fn proxy(data: &[u8]) {
    let Some((_, answer)) = data.split_first() else { return };
    let chunks = reads(data);
    for url in PROXIES {
        let proxy = Proxy::parse(url).expect("a valid proxy URL");
        let make = || ProxyHandshake::new(&proxy, Target::Name("example.com".into(), 443)).expect("a valid target");
        let split = feed_proxy(make(), &chunks);
        let whole = feed_proxy(make(), &[answer]);
        assert_eq!(split, whole, "{url}: the split changed the outcome");
    }
}

/// Feeds the reads, writing the output before each as a driver would; returns the
/// verdict and every byte sent.
fn feed_proxy(mut hs: ProxyHandshake, chunks: &[&[u8]]) -> (ProxyVerdict, Vec<u8>) {
    let mut sent = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        drain_proxy(&mut hs, &mut sent);
        let step = hs.handle_bytes(chunk);
        assert!(hs.buffered_bytes() <= MAX_RESPONSE_HEAD, "{} bytes held", hs.buffered_bytes());
        assert!(sent.len() + hs.output().len() <= 1024, "{} bytes to send", sent.len() + hs.output().len());
        match step {
            Ok(ProxyStep::NeedMore) => assert!(!hs.is_done()),
            Ok(ProxyStep::Done { leftover }) => {
                assert!(leftover <= chunk.len());
                assert!(hs.is_done());
                assert_eq!(hs.handle_bytes(b"x"), Err(ProxyError::Finished));
                let mut tunnel = chunk[chunk.len() - leftover..].to_vec();
                chunks[i + 1..].iter().for_each(|c| tunnel.extend_from_slice(c));
                drain_proxy(&mut hs, &mut sent);
                return (ProxyVerdict::Done { tunnel }, sent);
            }
            Err(e) => {
                assert!(!e.to_string().contains('\n'));
                assert_eq!(hs.handle_bytes(b"x"), Err(e.clone()), "errors are final");
                drain_proxy(&mut hs, &mut sent);
                return (ProxyVerdict::Failed(e), sent);
            }
        }
    }
    drain_proxy(&mut hs, &mut sent);
    if !hs.is_done() {
        let eof = hs.handle_eof();
        assert!(matches!(eof, ProxyError::UnexpectedEof { .. }), "{eof:?}");
    }
    (ProxyVerdict::NeedMore, sent)
}

/// Moves the output to `sent`, as a socket that takes everything would.
fn drain_proxy(hs: &mut ProxyHandshake, sent: &mut Vec<u8>) {
    sent.extend_from_slice(hs.output());
    hs.consume_output(usize::MAX);
    assert!(hs.output().is_empty());
}
