//! RFC 6455 §5: frames, masking, fragmentation, control frames, and one test per
//! failure rule asserting the close code that goes out on the wire.

mod common;

use common::*;
use rfc6455::proto::frame::OpCode;
use rfc6455::{CloseCode, Config, Delivery, Event, MessageKind, ProtocolError, Side, State};

#[test]
fn rfc_5_7_single_frame_unmasked_text_to_a_client() {
    let (mut c, now) = open_client(Config::default());
    c.handle_bytes(now, &[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    assert_eq!(c.poll_event(), Some(Event::Text("Hello".into())));
}

#[test]
fn rfc_5_7_single_frame_masked_text_to_a_server() {
    let (mut s, now) = open_server(Config::default());
    s.handle_bytes(now, &[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    assert_eq!(s.poll_event(), Some(Event::Text("Hello".into())));
}

#[test]
fn rfc_5_7_client_sends_masked_hello() {
    let (mut c, _) = open_client(Config::default());
    c.send_text("Hello").unwrap();
    assert_eq!(drain_output(&mut c), [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
}

#[test]
fn rfc_5_7_fragmented_unmasked_text() {
    let (mut c, now) = open_client(Config::default());
    c.handle_bytes(now, &[0x01, 0x03, 0x48, 0x65, 0x6c]);
    assert_eq!(c.poll_event(), None);
    c.handle_bytes(now, &[0x80, 0x02, 0x6c, 0x6f]);
    assert_eq!(c.poll_event(), Some(Event::Text("Hello".into())));
}

#[test]
fn rfc_5_7_fragments_as_frame_events() {
    let cfg = Config { delivery: Delivery::Frames, ..Config::default() };
    let (mut c, now) = open_client(cfg);
    c.handle_bytes(now, &[0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f]);
    assert_eq!(
        events(&mut c),
        vec![
            Event::Frame { kind: MessageKind::Text, data: b"Hel".to_vec(), fin: false },
            Event::Frame { kind: MessageKind::Text, data: b"lo".to_vec(), fin: true },
        ]
    );
}

#[test]
fn rfc_5_7_ping_is_answered_with_a_pong() {
    // Unmasked ping to a client: the pong goes back masked with the same payload.
    let (mut c, now) = open_client(Config::default());
    c.handle_bytes(now, &[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    assert!(matches!(c.poll_event(), Some(Event::Ping(p)) if &**p == b"Hello"));
    let out = drain_output(&mut c);
    assert_eq!(out, [0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
}

#[test]
fn rfc_5_7_large_binary_headers() {
    let (mut s, now) = open_server(Config::default());
    for len in [256usize, 65536] {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        s.send_binary(&payload).unwrap();
        let out = drain_output(&mut s);
        if len == 256 {
            assert_eq!(&out[..4], &[0x82, 0x7E, 0x01, 0x00]);
        } else {
            assert_eq!(&out[..10], &[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]);
        }
        assert_eq!(&out[out.len() - len..], &payload[..]);
        // And received back through the server as masked client frames.
        s.handle_bytes(now, &client_frame(true, OpCode::Binary, &payload));
        assert_eq!(s.poll_event(), Some(Event::Binary(payload)));
    }
}

#[test]
fn control_frames_between_fragments() {
    let (mut s, now) = open_server(Config::default());
    let mut bytes = client_frame(false, OpCode::Text, b"Hel");
    bytes.extend(client_frame(true, OpCode::Ping, b"p"));
    bytes.extend(client_frame(true, OpCode::Continuation, b"lo"));
    s.handle_bytes(now, &bytes);
    let evs = events(&mut s);
    assert!(matches!(&evs[0], Event::Ping(p) if &***p == b"p"));
    assert_eq!(evs[1], Event::Text("Hello".into()));
}

/// Feeds bytes to an open server and returns the close code it sent, asserting that
/// nothing but the closing reached the application.
fn server_fails_with(bytes: &[u8], cfg: Config) -> (CloseCode, ProtocolError) {
    let (mut s, now) = open_server(cfg);
    s.handle_bytes(now, bytes);
    let evs = events(&mut s);
    let closed = expect_closed(&evs);
    assert_eq!(evs.len(), 1, "nothing from a bad frame reaches the application: {evs:?}");
    assert_eq!(s.state(), State::Closed);
    let frames = parse_frames(&drain_output(&mut s));
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].1, OpCode::Close);
    assert_eq!(closed.initiator, Side::Local);
    (close_code_of(&frames[0].2).unwrap(), closed.error.unwrap())
}

#[test]
fn failure_rules_send_1002() {
    use ProtocolError::*;
    let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
        (raw_frame(0x83, true, b""), ReservedOpcode(3)),
        (raw_frame(0x8B, true, b""), ReservedOpcode(0xB)),
        (raw_frame(0xC1, true, b"x"), ReservedBits(4)),
        (raw_frame(0xA1, true, b"x"), ReservedBits(2)),
        (raw_frame(0x91, true, b"x"), ReservedBits(1)),
        (raw_frame(0x81, false, b"x"), UnmaskedFrame),
        (raw_frame(0x09, true, b"x"), FragmentedControlFrame),
        (raw_frame(0x80, true, b"x"), UnexpectedContinuation),
        ([raw_frame(0x01, true, b"a"), raw_frame(0x81, true, b"b")].concat(), ExpectedContinuation),
        ([raw_frame(0x02, true, b"a"), raw_frame(0x82, true, b"b")].concat(), ExpectedContinuation),
        (raw_frame(0x88, true, b"\x03"), InvalidClosePayload),
        (raw_frame(0x88, true, &999u16.to_be_bytes()), InvalidCloseCode(999)),
        (raw_frame(0x88, true, &1005u16.to_be_bytes()), InvalidCloseCode(1005)),
        (raw_frame(0x88, true, &5000u16.to_be_bytes()), InvalidCloseCode(5000)),
    ];
    for (bytes, want) in cases {
        let (code, err) = server_fails_with(&bytes, Config::default());
        assert_eq!((code, &err), (CloseCode::PROTOCOL_ERROR, &want), "{bytes:x?}");
    }
    // A control frame over 125 bytes.
    let mut big_ping = vec![0x89, 0xFE, 0x00, 0x7E, 1, 2, 3, 4];
    big_ping.extend(vec![0u8; 126]);
    assert_eq!(server_fails_with(&big_ping, Config::default()), (CloseCode::PROTOCOL_ERROR, ControlFrameTooLong(126)));
    // A 64-bit length with the top bit set: 2^64-1, then nothing.
    let bytes = [0x82, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4];
    assert_eq!(server_fails_with(&bytes, Config::default()), (CloseCode::PROTOCOL_ERROR, InvalidLength));
}

#[test]
fn client_rejects_masked_server_frames_then_waits_for_the_server_to_close() {
    let (mut c, now) = open_client(Config::default());
    c.handle_bytes(now, &raw_frame(0x81, true, b"x"));
    assert_eq!(events(&mut c), vec![], "nothing from the bad frame, no Closed before TCP closes");
    assert_eq!(c.state(), State::Closing);
    let frames = parse_frames(&drain_output(&mut c));
    assert_eq!(close_code_of(&frames[0].2), Some(CloseCode::PROTOCOL_ERROR));
    // §7.1.7: nothing more is processed, not even a close.
    c.handle_bytes(now, &[0x88, 0x02, 0x03, 0xe8]);
    c.handle_eof(now);
    let closed = expect_closed(&events(&mut c));
    assert_eq!(closed.error, Some(ProtocolError::MaskedFrame));
    assert_eq!(closed.code(), CloseCode::PROTOCOL_ERROR);
    assert!(!closed.clean);
}

#[test]
fn invalid_utf8_fails_fast_with_1007_inside_a_partial_frame() {
    let (mut s, now) = open_server(Config::default());
    // A 100-byte text frame whose 3rd byte makes it invalid: fails before the rest arrives.
    let mut payload = b"ab\xF4\x90".to_vec();
    payload.resize(100, b'a');
    let frame = client_frame(true, OpCode::Text, &payload);
    s.handle_bytes(now, &frame[..6 + 4]);
    let closed = expect_closed(&events(&mut s));
    assert_eq!(closed.error, Some(ProtocolError::InvalidUtf8));
    let frames = parse_frames(&drain_output(&mut s));
    assert_eq!(close_code_of(&frames[0].2), Some(CloseCode::INVALID_PAYLOAD));
}

#[test]
fn invalid_utf8_split_across_fragments_and_truncated_at_the_end() {
    // A code point split across two frames is fine.
    let (mut s, now) = open_server(Config::default());
    let euro = "€".as_bytes();
    s.handle_bytes(now, &[client_frame(false, OpCode::Text, &euro[..1]), client_frame(true, OpCode::Continuation, &euro[1..])].concat());
    assert_eq!(s.poll_event(), Some(Event::Text("€".into())));
    // A message that ends inside a code point is 1007.
    let (code, err) = server_fails_with(&client_frame(true, OpCode::Text, &euro[..2]), Config::default());
    assert_eq!((code, err), (CloseCode::INVALID_PAYLOAD, ProtocolError::InvalidUtf8));
    // So is a close reason that is not UTF-8.
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"\xff");
    let (code, err) = server_fails_with(&client_frame(true, OpCode::Close, &close), Config::default());
    assert_eq!((code, err), (CloseCode::INVALID_PAYLOAD, ProtocolError::InvalidUtf8));
}

#[test]
fn size_limits_send_1009_before_any_payload() {
    let cfg = Config { max_message_size: 1000, max_frame_size: 600, ..Config::default() };
    // One frame over the frame limit: only its header has arrived.
    let mut hdr = client_frame(true, OpCode::Binary, &[0u8; 601]);
    hdr.truncate(8);
    let (code, err) = server_fails_with(&hdr, cfg.clone());
    assert_eq!((code, err), (CloseCode::MESSAGE_TOO_BIG, ProtocolError::FrameTooBig { limit: 600 }));
    // Fragments adding up past the message limit.
    let bytes = [client_frame(false, OpCode::Binary, &[0u8; 500]), client_frame(true, OpCode::Continuation, &[0u8; 501])].concat();
    let (code, err) = server_fails_with(&bytes, cfg.clone());
    assert_eq!((code, err), (CloseCode::MESSAGE_TOO_BIG, ProtocolError::MessageTooBig { limit: 1000 }));
    // Exactly at the limit is fine.
    let (mut s, now) = open_server(cfg);
    s.handle_bytes(
        now,
        &[client_frame(false, OpCode::Binary, &[7u8; 500]), client_frame(true, OpCode::Continuation, &[7u8; 500])].concat(),
    );
    assert_eq!(s.poll_event(), Some(Event::Binary(vec![7u8; 1000])));
}

#[test]
fn a_huge_declared_length_costs_nothing() {
    let (mut s, now) = open_server(Config::default());
    // 2^63-1 bytes declared, nothing follows: 1009 at once, no allocation.
    s.handle_bytes(now, &[0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4]);
    assert!(s.buffered_bytes() < 4096, "{}", s.buffered_bytes());
    let closed = expect_closed(&events(&mut s));
    assert!(matches!(closed.error, Some(ProtocolError::FrameTooBig { .. })));
}

#[test]
fn bytes_after_a_failure_are_ignored() {
    let (mut s, now) = open_server(Config::default());
    let bytes = [raw_frame(0x83, true, b""), client_frame(true, OpCode::Text, b"after")].concat();
    s.handle_bytes(now, &bytes);
    s.handle_bytes(now, &client_frame(true, OpCode::Text, b"later"));
    let evs = events(&mut s);
    assert_eq!(evs.len(), 1);
    expect_closed(&evs);
}

#[test]
fn commands_check_their_arguments() {
    let (mut s, now) = open_server(Config::default());
    assert_eq!(s.ping(now, &[0; 126]), Err(rfc6455::UsageError::ControlPayloadTooLong(126)));
    assert_eq!(s.close(now, CloseCode(1005), ""), Err(rfc6455::UsageError::InvalidCloseCode(1005)));
    assert_eq!(s.close(now, CloseCode::NORMAL, &"x".repeat(124)), Err(rfc6455::UsageError::CloseReasonTooLong(124)));
    s.send_fragment(MessageKind::Text, b"a", false).unwrap();
    assert_eq!(s.send_text("b"), Err(rfc6455::UsageError::FragmentSequence));
    assert_eq!(s.send_fragment(MessageKind::Binary, b"b", true), Err(rfc6455::UsageError::FragmentSequence));
    s.ping(now, b"mid").unwrap();
    s.send_fragment(MessageKind::Text, b"b", true).unwrap();
    let frames = parse_frames(&drain_output(&mut s));
    let ops: Vec<_> = frames.iter().map(|f| (f.0, f.1)).collect();
    assert_eq!(ops, vec![(false, OpCode::Text), (true, OpCode::Ping), (true, OpCode::Continuation)]);
    s.close(now, CloseCode::NORMAL, "bye").unwrap();
    assert!(matches!(s.send_text("x"), Err(rfc6455::UsageError::NotOpen { .. })));
}

#[test]
fn answers_to_events_before_a_failure_go_out_before_the_close_frame() {
    // A good message and a bad frame in one read: the echo of the good message is
    // written before the 1002 close frame (Autobahn 3.2, 4.1.3 ...).
    let (mut s, now) = open_server(Config::default());
    s.handle_bytes(now, &[client_frame(true, OpCode::Text, b"ok"), raw_frame(0xC1, true, b"x")].concat());
    let Some(Event::Text(t)) = s.poll_event() else { panic!() };
    s.send_text(&t).unwrap();
    assert!(s.close(now, CloseCode::NORMAL, "").is_err(), "a close frame is already decided");
    expect_closed(&events(&mut s));
    assert!(s.send_text("too late").is_err());
    let frames = parse_frames(&drain_output(&mut s));
    assert_eq!(frames[0], (true, OpCode::Text, b"ok".to_vec()));
    assert_eq!(frames[1].1, OpCode::Close);
    assert_eq!(close_code_of(&frames[1].2), Some(CloseCode::PROTOCOL_ERROR));
    assert_eq!(frames.len(), 2);
}

#[test]
fn answers_to_events_before_a_close_go_out_before_the_close_reply() {
    let (mut s, now) = open_server(Config::default());
    s.handle_bytes(now, &[client_frame(true, OpCode::Binary, b"last"), client_frame(true, OpCode::Close, &[0x03, 0xe8])].concat());
    let Some(Event::Binary(b)) = s.poll_event() else { panic!() };
    s.send_binary(&b).unwrap();
    let closed = expect_closed(&events(&mut s));
    assert!(closed.clean);
    let frames = parse_frames(&drain_output(&mut s));
    assert_eq!(frames.iter().map(|f| f.1).collect::<Vec<_>>(), vec![OpCode::Binary, OpCode::Close]);
}

/// Regression (Autobahn 9.1.6 with the defaults): a message buffer whose capacity is
/// not a power of two (a buffer handed back by the application or a pool) doubled
/// past the message limit, so a 16 MiB message pinned 32 MiB. Growth now stops at the
/// limit, whatever the starting capacity and however the bytes arrive.
#[test]
fn a_message_at_the_limit_never_reserves_past_it() {
    let limit = 1 << 20;
    for start in [0usize, 3000, 100_000, 700_001] {
        for kind in [OpCode::Text, OpCode::Binary] {
            let cfg = Config { max_message_size: limit, max_frame_size: limit, ..Config::default() };
            let (mut s, now) = open_server(cfg);
            if start > 0 {
                s.recycle(Vec::with_capacity(start));
            }
            // What the connection pins besides message buffers (its output buffer).
            let base = s.buffered_bytes() - start;
            let frame = client_frame(true, kind, &vec![b'a'; limit]);
            let mut peak = 0;
            for piece in frame.chunks(65_536) {
                s.handle_bytes(now, piece);
                peak = peak.max(s.buffered_bytes() - base);
            }
            let got = events(&mut s);
            assert!(matches!(&got[..], [Event::Text(t)] if t.len() == limit) || matches!(&got[..], [Event::Binary(b)] if b.len() == limit));
            assert!(peak <= limit + start, "start {start}: pinned {peak} for a message of {limit}");
        }
    }
}

/// The same bound for a message spread over many small fragments, which must also not
/// cost quadratic copying (growth still doubles up to the limit).
#[test]
fn many_fragments_grow_the_buffer_geometrically_up_to_the_limit() {
    let limit = 1 << 20;
    let cfg = Config { max_message_size: limit, max_frame_size: limit, ..Config::default() };
    let (mut s, now) = open_server(cfg);
    let base = s.buffered_bytes();
    let piece = vec![b'b'; 1000];
    let n = limit / piece.len();
    let mut peak = 0;
    for i in 0..n {
        let op = if i == 0 { OpCode::Binary } else { OpCode::Continuation };
        s.handle_bytes(now, &client_frame(i == n - 1, op, &piece));
        peak = peak.max(s.buffered_bytes() - base);
    }
    assert!(matches!(&events(&mut s)[..], [Event::Binary(b)] if b.len() == n * piece.len()));
    assert!(peak <= limit, "pinned {peak}");
}

/// Issue 17: a failed connection's close frame says why, readably, within the 123 bytes
/// a reason may have (before, the peer saw only `1009 ""`).
#[test]
fn a_failure_close_carries_a_readable_reason() {
    let cfg = Config { max_message_size: 1000, max_frame_size: 1000, ..Config::default() };
    let (mut s, now) = open_server(cfg);
    s.handle_bytes(now, &client_frame(true, OpCode::Binary, &[0u8; 1001]));
    let _ = events(&mut s);
    let frames = parse_frames(&drain_output(&mut s));
    let (_, op, payload) = frames.last().unwrap();
    assert_eq!(*op, OpCode::Close);
    assert_eq!(close_code_of(payload), Some(CloseCode::MESSAGE_TOO_BIG));
    assert_eq!(std::str::from_utf8(&payload[2..]).unwrap(), "frame larger than 1000 bytes");
    // Invalid UTF-8 in text: 1007 with its reason.
    let (mut s, now) = open_server(Config::default());
    s.handle_bytes(now, &client_frame(true, OpCode::Text, b"ok \xff"));
    let _ = events(&mut s);
    let frames = parse_frames(&drain_output(&mut s));
    let (_, _, payload) = frames.last().unwrap();
    assert_eq!(close_code_of(payload), Some(CloseCode::INVALID_PAYLOAD));
    assert_eq!(std::str::from_utf8(&payload[2..]).unwrap(), "invalid UTF-8 in text");
    assert!(payload.len() <= 125);
}
