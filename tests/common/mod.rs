//! Shared test helpers: an in-memory client/server pair with a simulated clock, and a
//! raw frame writer/reader for talking to one engine byte by byte.
#![allow(dead_code)]

#[cfg(feature = "cli")]
pub mod brokers;
#[cfg(feature = "net")]
pub mod net;

use std::time::{Duration, Instant};

use rfc6455::proto::frame::{OpCode, decode_header, encode_frame};
use rfc6455::proto::mask::apply_mask;
use rfc6455::{Accept, ClientRequest, CloseCode, Closed, Config, Connection, Event, FixedMaskGenerator};

/// A client and a server engine wired together in memory, with a simulated clock.
pub struct Pair {
    pub client: Connection,
    pub server: Connection,
    pub now: Instant,
    pub client_events: Vec<Event>,
    pub server_events: Vec<Event>,
}

impl Pair {
    /// Creates both engines and completes the handshake.
    pub fn open(client_cfg: Config, server_cfg: Config) -> Pair {
        let now = Instant::now();
        let req = ClientRequest::new("ws://localhost/test").unwrap();
        let client = Connection::client(client_cfg, &req, now);
        let server = Connection::server(server_cfg, now);
        let mut p = Pair { client, server, now, client_events: vec![], server_events: vec![] };
        p.pump();
        let Some(Event::Request(_)) = p.server_events.first() else { panic!("no request: {:?}", p.server_events) };
        p.server.accept(p.now, Accept::new()).unwrap();
        p.pump();
        assert!(matches!(p.client_events.first(), Some(Event::Open { .. })), "{:?}", p.client_events);
        p.client_events.clear();
        p.server_events.clear();
        p
    }

    pub fn default_open() -> Pair {
        Self::open(Config::default(), Config::default())
    }

    /// Moves all queued bytes both ways until quiet, collecting events.
    pub fn pump(&mut self) {
        for _ in 0..1000 {
            // Events first: polling them may release a deferred close frame.
            let before = self.client_events.len() + self.server_events.len();
            self.client_events.extend(std::iter::from_fn(|| self.client.poll_event()));
            self.server_events.extend(std::iter::from_fn(|| self.server.poll_event()));
            let polled = self.client_events.len() + self.server_events.len() - before;
            let moved = transfer(&mut self.client, &mut self.server, self.now) + transfer(&mut self.server, &mut self.client, self.now);
            if moved == 0 && polled == 0 {
                return;
            }
        }
        panic!("pump did not settle");
    }

    /// Advances the simulated clock and lets both engines' deadlines act.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
        self.pump();
    }
}

/// Moves every queued byte from `from` to `to`; returns how many.
pub fn transfer(from: &mut Connection, to: &mut Connection, now: Instant) -> usize {
    let mut n = 0;
    loop {
        let chunk = from.output().to_vec();
        if chunk.is_empty() {
            return n;
        }
        from.consume_output(chunk.len());
        n += chunk.len();
        to.handle_bytes(now, &chunk);
    }
}

/// Everything queued for writing, drained.
pub fn drain_output(c: &mut Connection) -> Vec<u8> {
    let mut all = Vec::new();
    loop {
        let chunk = c.output().to_vec();
        if chunk.is_empty() {
            return all;
        }
        c.consume_output(chunk.len());
        all.extend_from_slice(&chunk);
    }
}

pub fn events(c: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

/// A frame as a client would send it (masked with a fixed key).
pub fn client_frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_frame(&mut v, fin, opcode, Some([0x37, 0xfa, 0x21, 0x3d]), payload);
    v
}

/// A raw frame byte: lets tests set any bits.
pub fn raw_frame(b0: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![b0];
    assert!(payload.len() < 126);
    v.push(if masked { 0x80 } else { 0 } | payload.len() as u8);
    if masked {
        let key = [1, 2, 3, 4];
        v.extend_from_slice(&key);
        let mut p = payload.to_vec();
        apply_mask(&mut p, key, 0);
        v.extend_from_slice(&p);
    } else {
        v.extend_from_slice(payload);
    }
    v
}

/// Decodes a stream of frames (as a peer would see them): (fin, opcode, unmasked payload).
pub fn parse_frames(mut bytes: &[u8]) -> Vec<(bool, OpCode, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (h, n) = decode_header(bytes).unwrap().expect("complete frame");
        let len = h.payload_len as usize;
        let mut p = bytes[n..n + len].to_vec();
        if let Some(k) = h.mask {
            apply_mask(&mut p, k, 0);
        }
        out.push((h.fin, h.opcode, p));
        bytes = &bytes[n + len..];
    }
    out
}

/// The close code in a close frame payload.
pub fn close_code_of(payload: &[u8]) -> Option<CloseCode> {
    (payload.len() >= 2).then(|| CloseCode(u16::from_be_bytes([payload[0], payload[1]])))
}

pub const REQUEST: &str = "GET /chat?room=1 HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A server engine that has accepted `REQUEST`, its 101 response drained.
pub fn open_server(cfg: Config) -> (Connection, Instant) {
    let now = Instant::now();
    let mut s = Connection::server(cfg, now);
    s.handle_bytes(now, REQUEST.as_bytes());
    assert!(matches!(s.poll_event(), Some(Event::Request(_))));
    s.accept(now, Accept::new()).unwrap();
    assert!(matches!(s.poll_event(), Some(Event::Open { .. })));
    drain_output(&mut s);
    (s, now)
}

/// A client engine that completed its handshake against a canned 101.
pub fn open_client(cfg: Config) -> (Connection, Instant) {
    let now = Instant::now();
    let req = ClientRequest::new("ws://server.example.com/chat").unwrap();
    let mut c = Connection::client_with_mask_generator(cfg, &req, Box::new(FixedMaskGenerator([0x37, 0xfa, 0x21, 0x3d])), now);
    let request = drain_output(&mut c);
    let text = String::from_utf8(request).unwrap();
    let key = text.lines().find_map(|l| l.strip_prefix("Sec-WebSocket-Key: ")).unwrap();
    let accept = rfc6455::proto::handshake::accept_key(key.as_bytes());
    let resp =
        format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
    c.handle_bytes(now, resp.as_bytes());
    assert!(matches!(c.poll_event(), Some(Event::Open { .. })));
    (c, now)
}

/// The last event must be Closed; returns it.
pub fn expect_closed(events: &[Event]) -> Closed {
    match events.last() {
        Some(Event::Closed(c)) => (**c).clone(),
        other => panic!("expected Closed last, got {other:?} in {events:?}"),
    }
}
