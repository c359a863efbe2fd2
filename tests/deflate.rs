//! permessage-deflate (RFC 7692): negotiation, compressed messages both ways, context
//! takeover, RSV1 rules, decompression bombs, and the relay's compress-once fan-out.
mod common;

use std::io::{Read, Write};
use std::time::Instant;

use common::net::*;
use common::*;
use rfc6455::net::{Client, ClientOptions, Relay, ServerConfig};
use rfc6455::proto::deflate::{DeflateConfig, Deflater};
use rfc6455::proto::frame::{OpCode, decode_header, encode_frame_rsv};
use rfc6455::{ClientRequest, CloseCode, Config, Event, MessageKind, ProtocolError, SharedFrame, UsageError};

fn deflate_cfg(d: DeflateConfig) -> Config {
    Config { deflate: Some(d), ..Config::default() }
}

/// Frames on the wire: (rsv, opcode, payload as sent).
fn wire(bytes: &[u8]) -> Vec<(u8, OpCode, usize)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Ok(Some((h, n))) = decode_header(rest) {
        out.push((h.rsv, h.opcode, h.payload_len as usize));
        rest = &rest[n + h.payload_len as usize..];
    }
    out
}

#[test]
fn negotiated_messages_are_compressed_both_ways() {
    let mut p = Pair::open(deflate_cfg(DeflateConfig::default()), deflate_cfg(DeflateConfig::default()));
    assert!(p.client.deflate_params().is_some() && p.server.deflate_params().is_some());
    let text = "the quick brown fox jumps over the lazy dog ".repeat(100);
    for _ in 0..3 {
        p.client.send_text(&text).unwrap();
        let bytes = drain_output(&mut p.client);
        let frames = wire(&bytes);
        assert_eq!(frames[0].0, 0b100, "RSV1 marks the compressed message");
        assert!(frames[0].2 < text.len() / 5, "compressed to {} of {}", frames[0].2, text.len());
        p.server.handle_bytes(p.now, &bytes);
        assert_eq!(p.server.poll_event(), Some(Event::Text(text.clone())));
        p.server.send_binary(text.as_bytes()).unwrap();
        let bytes = drain_output(&mut p.server);
        assert_eq!(wire(&bytes)[0].0, 0b100);
        p.client.handle_bytes(p.now, &bytes);
        assert_eq!(p.client.poll_event(), Some(Event::Binary(text.clone().into_bytes())));
    }
    // Short messages go uncompressed (RSV1 clear), which is always allowed.
    p.client.send_text("hi").unwrap();
    let bytes = drain_output(&mut p.client);
    assert_eq!(wire(&bytes)[0].0, 0);
    p.server.handle_bytes(p.now, &bytes);
    assert_eq!(p.server.poll_event(), Some(Event::Text("hi".into())));
}

#[test]
fn context_takeover_makes_repeats_cheaper_and_no_context_takeover_does_not() {
    let text = "a fairly unique sentence about websockets, compression and windows. ".repeat(4);
    let sizes = |server: DeflateConfig| {
        let mut p = Pair::open(deflate_cfg(DeflateConfig::default()), deflate_cfg(server));
        (0..2)
            .map(|_| {
                p.server.send_text(&text).unwrap();
                let bytes = drain_output(&mut p.server);
                p.client.handle_bytes(p.now, &bytes);
                assert_eq!(p.client.poll_event(), Some(Event::Text(text.clone())));
                wire(&bytes)[0].2
            })
            .collect::<Vec<_>>()
    };
    let with = sizes(DeflateConfig::default());
    assert!(with[1] < with[0] / 2, "the second message refers back to the first: {with:?}");
    let without = sizes(DeflateConfig { server_no_context_takeover: true, ..DeflateConfig::default() });
    assert_eq!(without[0], without[1], "each message stands alone: {without:?}");
}

#[test]
fn the_response_header_states_the_agreement() {
    let now = Instant::now();
    let mut s =
        rfc6455::Connection::server(deflate_cfg(DeflateConfig { server_no_context_takeover: true, ..DeflateConfig::default() }), now);
    let req = REQUEST
        .replace("\r\n\r\n", "\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits; server_max_window_bits=10\r\n\r\n");
    s.handle_bytes(now, req.as_bytes());
    let _ = s.poll_event();
    s.accept(now, rfc6455::Accept::new()).unwrap();
    let out = String::from_utf8(drain_output(&mut s)).unwrap();
    assert!(
        out.contains("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; server_max_window_bits=10\r\n"),
        "{out}"
    );
    // An invalid offer is declined: no extension in the response.
    let mut s = rfc6455::Connection::server(deflate_cfg(DeflateConfig::default()), now);
    let req = REQUEST.replace("\r\n\r\n", "\r\nSec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=99\r\n\r\n");
    s.handle_bytes(now, req.as_bytes());
    let _ = s.poll_event();
    s.accept(now, rfc6455::Accept::new()).unwrap();
    let out = String::from_utf8(drain_output(&mut s)).unwrap();
    assert!(!out.contains("Extensions"), "{out}");
    assert!(!s.is_compressed());
}

#[test]
fn rsv1_is_only_allowed_on_the_first_frame_of_a_negotiated_message() {
    let cfg = deflate_cfg(DeflateConfig::default());
    // Without negotiation RSV1 is 1002 (covered in framing.rs); with it, on a
    // continuation or a control frame it is still 1002.
    let mut p = Pair::open(cfg.clone(), cfg);
    let mut bytes = Vec::new();
    encode_frame_rsv(&mut bytes, false, 0, OpCode::Text, Some([1, 2, 3, 4]), b"ab");
    encode_frame_rsv(&mut bytes, true, 0b100, OpCode::Continuation, Some([1, 2, 3, 4]), b"cd");
    p.server.handle_bytes(p.now, &bytes);
    let closed = expect_closed(&events(&mut p.server));
    assert_eq!(closed.error, Some(ProtocolError::ReservedBits(0b100)));
    let mut p = Pair::open(deflate_cfg(DeflateConfig::default()), deflate_cfg(DeflateConfig::default()));
    let mut bytes = Vec::new();
    encode_frame_rsv(&mut bytes, true, 0b100, OpCode::Ping, Some([1, 2, 3, 4]), b"");
    p.server.handle_bytes(p.now, &bytes);
    assert_eq!(expect_closed(&events(&mut p.server)).error, Some(ProtocolError::ReservedBits(0b100)));
}

#[test]
fn corrupt_deflate_data_is_1007() {
    let mut p = Pair::open(deflate_cfg(DeflateConfig::default()), deflate_cfg(DeflateConfig::default()));
    let mut bytes = Vec::new();
    encode_frame_rsv(&mut bytes, true, 0b100, OpCode::Binary, Some([1, 2, 3, 4]), &[0xff, 0xff, 0xff, 0xff, 0x00]);
    p.server.handle_bytes(p.now, &bytes);
    let closed = expect_closed(&events(&mut p.server));
    assert_eq!(closed.error, Some(ProtocolError::InvalidCompressedData));
    assert_eq!(closed.sent.unwrap().code, CloseCode::INVALID_PAYLOAD);
}

/// 16 MiB of zeros, compressed (over 1000:1), made once.
fn bomb() -> &'static [u8] {
    static BOMB: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BOMB.get_or_init(|| {
        let mut d = Deflater::new(9, 15, true);
        let mut out = Vec::new();
        d.compress(&vec![0u8; 16 << 20], &mut out);
        out
    })
}

#[test]
fn a_1000_to_1_bomb_is_stopped_at_the_limit() {
    let limit = 1 << 20;
    let cfg = Config { max_message_size: limit, deflate: Some(DeflateConfig::default()), ..Config::default() };
    let mut p = Pair::open(deflate_cfg(DeflateConfig::default()), cfg);
    let payload = bomb();
    assert!(payload.len() * 1000 < 16 << 20, "ratio over 1000:1 ({} bytes)", payload.len());
    let mut bytes = Vec::new();
    encode_frame_rsv(&mut bytes, true, 0b100, OpCode::Binary, Some([1, 2, 3, 4]), payload);
    p.server.handle_bytes(p.now, &bytes);
    let evs = events(&mut p.server);
    let closed = expect_closed(&evs);
    assert_eq!(closed.error, Some(ProtocolError::MessageTooBig { limit }));
    assert_eq!(closed.sent.unwrap().code, CloseCode::MESSAGE_TOO_BIG);
    assert!(p.server.buffered_bytes() < 256 * 1024, "{}", p.server.buffered_bytes());
}

#[test]
fn a_bomb_spread_over_many_fragments_is_stopped_too() {
    let limit = 1 << 20;
    let cfg = Config { max_message_size: limit, deflate: Some(DeflateConfig::default()), ..Config::default() };
    let mut p = Pair::open(deflate_cfg(DeflateConfig::default()), cfg);
    let payload = bomb();
    let mut bytes = Vec::new();
    let pieces: Vec<&[u8]> = payload.chunks(16).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let (rsv, op) = if i == 0 { (0b100, OpCode::Binary) } else { (0, OpCode::Continuation) };
        encode_frame_rsv(&mut bytes, i + 1 == pieces.len(), rsv, op, Some([1, 2, 3, 4]), piece);
    }
    let mut peak = 0;
    for chunk in bytes.chunks(100) {
        p.server.handle_bytes(p.now, chunk);
        peak = peak.max(p.server.buffered_bytes());
    }
    let closed = expect_closed(&events(&mut p.server));
    assert_eq!(closed.error, Some(ProtocolError::MessageTooBig { limit }));
    assert!(peak <= limit + 256 * 1024, "peak {peak}");
}

#[test]
fn fragmented_compressed_messages_and_frame_delivery() {
    let cfg = Config { delivery: rfc6455::Delivery::Frames, deflate: Some(DeflateConfig::default()), ..Config::default() };
    let mut p = Pair::open(deflate_cfg(DeflateConfig::default()), cfg);
    let text = "κόσμε ".repeat(1000);
    let mut d = Deflater::new(6, 15, false);
    let mut c = Vec::new();
    d.compress(text.as_bytes(), &mut c);
    let mut bytes = Vec::new();
    let half = c.len() / 2;
    encode_frame_rsv(&mut bytes, false, 0b100, OpCode::Text, Some([1, 2, 3, 4]), &c[..half]);
    encode_frame_rsv(&mut bytes, true, 0, OpCode::Continuation, Some([1, 2, 3, 4]), &c[half..]);
    p.server.handle_bytes(p.now, &bytes);
    let mut got = Vec::new();
    let mut fins = 0;
    for e in events(&mut p.server) {
        if let Event::Frame { data, fin, .. } = e {
            got.extend(data);
            fins += usize::from(fin);
        }
    }
    assert_eq!(fins, 1);
    assert_eq!(String::from_utf8(got).unwrap(), text);
}

#[test]
fn the_relay_compresses_once_for_all_recipients() {
    let d = DeflateConfig { server_no_context_takeover: true, ..DeflateConfig::default() };
    let cfg = ServerConfig { engine: deflate_cfg(d.clone()), ..ServerConfig::default() };
    let srv = Running::start(cfg, Relay::with_deflate(d));
    let mut opts = ClientOptions::new(ClientRequest::new(&srv.url("/room")).unwrap());
    opts.config = deflate_cfg(DeflateConfig::default());
    let mut sender = Client::connect(opts).unwrap();
    assert!(sender.engine().deflate_params().unwrap().server_no_context_takeover, "the relay imposes it");
    // Two raw recipients that offered deflate: compare the bytes they get.
    let raw = || {
        let (s, head) = raw_client_with(srv.addr, "/room", "Sec-WebSocket-Extensions: permessage-deflate\r\n");
        assert!(head.contains("permessage-deflate; server_no_context_takeover"), "{head}");
        s
    };
    let mut r1 = raw();
    let mut r2 = raw();
    // Make sure both are registered: a message from r1 reaches the sender.
    let mut hello = Vec::new();
    encode_frame_rsv(&mut hello, true, 0, OpCode::Text, Some([1, 2, 3, 4]), b"hello");
    r1.write_all(&hello).unwrap();
    loop {
        if let Some(Event::Text(t)) = sender.next_event(Some(WAIT)).unwrap() {
            assert_eq!(t, "hello");
            break;
        }
    }
    let text = "relay me, relay me, compressed once for everyone. ".repeat(50);
    sender.send_text(&text).unwrap();
    let read_frame = |s: &mut std::net::TcpStream, buf: &mut Vec<u8>| {
        let mut chunk = [0u8; 4096];
        loop {
            if let Ok(Some((h, n))) = decode_header(buf) {
                let end = n + h.payload_len as usize;
                if buf.len() >= end {
                    let frame: Vec<u8> = buf.drain(..end).collect();
                    if h.opcode == OpCode::Text {
                        return frame;
                    }
                    continue;
                }
            }
            let k = s.read(&mut chunk).unwrap();
            assert!(k > 0);
            buf.extend_from_slice(&chunk[..k]);
        }
    };
    // r1 also gets the frame ("hello" was r1's own, so not relayed back to it).
    let (mut b1, mut b2) = (Vec::new(), Vec::new());
    let f1 = read_frame(&mut r1, &mut b1);
    let hello_for_r2 = read_frame(&mut r2, &mut b2);
    assert_eq!(&hello_for_r2[2..], b"hello", "r2 first gets r1's short, uncompressed message");
    let f2 = read_frame(&mut r2, &mut b2);
    assert_eq!(f1, f2, "the same encoded bytes for both recipients");
    assert_eq!((f1[0] >> 4) & 0b100, 0b100, "compressed");
    assert!(f1.len() < text.len() / 5);
    drop((sender, r1, r2));
}

/// Regression: `send_shared` queued an RSV1 frame to a connection that never
/// negotiated permessage-deflate (a protocol violation on the wire, 1002 at the peer).
/// A compressed shared frame now goes only where it can be inflated; elsewhere it is
/// the caller's error and nothing is queued.
#[test]
fn a_compressed_shared_frame_goes_only_where_it_can_be_inflated() {
    let mut compressed = Vec::new();
    Deflater::new(6, 15, true).compress(b"hello hello hello", &mut compressed);
    let frame = SharedFrame::new_compressed(MessageKind::Text, &compressed, 15);
    let plain = SharedFrame::new(MessageKind::Text, b"hello");

    // Not negotiated (the client offered nothing).
    let (mut s, _) = open_server(deflate_cfg(DeflateConfig::default()));
    assert_eq!(s.send_shared(&frame), Err(UsageError::CompressionMismatch));
    assert_eq!(s.bytes_to_write(), 0, "nothing queued");
    assert_eq!(s.send_shared(&plain), Ok(()));

    // Negotiated with context takeover: a frame compressed alone would not decode in
    // the client's running context, so it is refused too.
    let mut p = Pair::open(deflate_cfg(DeflateConfig::default()), deflate_cfg(DeflateConfig::default()));
    assert!(!p.server.deflate_params().unwrap().server_no_context_takeover);
    assert_eq!(p.server.send_shared(&frame), Err(UsageError::CompressionMismatch));

    // Negotiated without server context takeover and a full window: it goes, and the
    // client inflates it.
    let imposed = DeflateConfig { server_no_context_takeover: true, ..DeflateConfig::default() };
    let mut p = Pair::open(deflate_cfg(DeflateConfig::default()), deflate_cfg(imposed));
    assert_eq!(p.server.send_shared(&frame), Ok(()));
    p.pump();
    assert_eq!(p.client_events, vec![Event::Text("hello hello hello".into())]);

    // A smaller negotiated window cannot take a frame compressed with 15 bits.
    let small = DeflateConfig { server_no_context_takeover: true, server_max_window_bits: 10, ..DeflateConfig::default() };
    let offer = DeflateConfig { server_max_window_bits: 10, ..DeflateConfig::default() };
    let mut p = Pair::open(deflate_cfg(offer), deflate_cfg(small));
    assert_eq!(p.server.deflate_params().unwrap().server_max_window_bits, 10);
    assert_eq!(p.server.send_shared(&frame), Err(UsageError::CompressionMismatch));
}
