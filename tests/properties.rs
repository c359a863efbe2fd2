//! Property tests: the same bytes split at arbitrary points give the same events;
//! masking is an involution equal to the reference; the incremental UTF-8 validator
//! agrees with `std::str::from_utf8` on any bytes split anywhere.

mod common;

use common::*;
use proptest::prelude::*;
use rfc6455::proto::mask::{apply_mask, apply_mask_reference};
use rfc6455::proto::utf8::Utf8Validator;
use rfc6455::{Config, Connection, Event, MessageKind};

#[derive(Clone, Debug)]
enum Msg {
    Text(String, usize),
    Binary(Vec<u8>, usize),
    Ping(Vec<u8>),
}

fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        (any::<String>(), 1usize..5).prop_map(|(s, f)| Msg::Text(s, f)),
        (proptest::collection::vec(any::<u8>(), 0..300), 1usize..5).prop_map(|(b, f)| Msg::Binary(b, f)),
        proptest::collection::vec(any::<u8>(), 0..126).prop_map(Msg::Ping),
    ]
}

/// Encodes messages with `sender`, fragmenting each into `f` frames (text split at
/// byte positions, so code points may be cut between frames).
fn encode(sender: &mut Connection, msgs: &[Msg], now: std::time::Instant) -> Vec<u8> {
    for m in msgs {
        match m {
            Msg::Ping(p) => sender.ping(now, p).unwrap(),
            Msg::Text(s, f) => send_fragmented(sender, MessageKind::Text, s.as_bytes(), *f),
            Msg::Binary(b, f) => send_fragmented(sender, MessageKind::Binary, b, *f),
        }
    }
    drain_output(sender)
}

fn send_fragmented(c: &mut Connection, kind: MessageKind, data: &[u8], frames: usize) {
    let step = data.len().div_ceil(frames).max(1);
    let chunks: Vec<&[u8]> = if data.is_empty() { vec![data] } else { data.chunks(step).collect() };
    for (i, chunk) in chunks.iter().enumerate() {
        c.send_fragment(kind, chunk, i + 1 == chunks.len()).unwrap();
    }
}

fn expected(msgs: &[Msg]) -> Vec<Event> {
    msgs.iter()
        .map(|m| match m {
            Msg::Text(s, _) => Event::Text(s.clone()),
            Msg::Binary(b, _) => Event::Binary(b.clone()),
            Msg::Ping(p) => Event::Ping(Box::new(rfc6455::ControlPayload::new(p).unwrap())),
        })
        .collect()
}

fn feed_split(receiver: &mut Connection, bytes: &[u8], cuts: &[usize], now: std::time::Instant) -> Vec<Event> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut prev = 0;
    for c in cuts.into_iter().chain(std::iter::once(bytes.len())) {
        receiver.handle_bytes(now, &bytes[prev..c]);
        prev = c;
    }
    events(receiver)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn client_to_server_any_split(msgs in proptest::collection::vec(msg(), 0..12), cuts in proptest::collection::vec(any::<usize>(), 0..40)) {
        let (mut client, now) = open_client(Config::default());
        let bytes = encode(&mut client, &msgs, now);
        let (mut whole, _) = open_server(Config::default());
        whole.handle_bytes(now, &bytes);
        let (mut split, _) = open_server(Config::default());
        let got = feed_split(&mut split, &bytes, &cuts, now);
        prop_assert_eq!(&got, &events(&mut whole));
        prop_assert_eq!(got, expected(&msgs));
    }

    #[test]
    fn server_to_client_any_split(msgs in proptest::collection::vec(msg(), 0..12), cuts in proptest::collection::vec(any::<usize>(), 0..40)) {
        let (mut server, now) = open_server(Config::default());
        let bytes = encode(&mut server, &msgs, now);
        let (mut client, _) = open_client(Config::default());
        let got = feed_split(&mut client, &bytes, &cuts, now);
        prop_assert_eq!(got, expected(&msgs));
    }

    #[test]
    fn garbage_never_panics_and_closes_once(bytes in proptest::collection::vec(any::<u8>(), 0..600), cuts in proptest::collection::vec(any::<usize>(), 0..20)) {
        let (mut server, now) = open_server(Config { max_message_size: 256, max_frame_size: 128, ..Config::default() });
        let evs = feed_split(&mut server, &bytes, &cuts, now);
        let closes = evs.iter().filter(|e| matches!(e, Event::Closed(_))).count();
        prop_assert!(closes <= 1);
        if closes == 1 {
            prop_assert!(matches!(evs.last(), Some(Event::Closed(_))));
        }
        prop_assert!(server.buffered_bytes() < 64 * 1024);
    }

    #[test]
    fn masking_is_an_involution_equal_to_the_reference(data in proptest::collection::vec(any::<u8>(), 0..200), key in any::<[u8; 4]>(), off in 0usize..4, split in any::<usize>()) {
        let mut fast = data.clone();
        let at = split % (data.len() + 1);
        let next = apply_mask(&mut fast[..at], key, off);
        apply_mask(&mut fast[at..], key, next);
        let mut reference = data.clone();
        apply_mask_reference(&mut reference, key, off);
        prop_assert_eq!(&fast, &reference);
        apply_mask(&mut fast, key, off);
        prop_assert_eq!(fast, data);
    }

    #[test]
    fn utf8_validator_agrees_with_std(parts in proptest::collection::vec(prop_oneof![any::<String>().prop_map(String::into_bytes), proptest::collection::vec(any::<u8>(), 0..8)], 0..6), cuts in proptest::collection::vec(any::<usize>(), 0..10)) {
        let bytes: Vec<u8> = parts.concat();
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut v = Utf8Validator::new();
        let mut prev = 0;
        let mut ok = true;
        let mut failed_at = None;
        for c in cuts.into_iter().chain(std::iter::once(bytes.len())) {
            if v.feed(&bytes[prev..c]).is_err() {
                ok = false;
                failed_at = Some(c);
                break;
            }
            prev = c;
        }
        let ok = ok && v.finish().is_ok();
        let std_result = std::str::from_utf8(&bytes);
        prop_assert_eq!(ok, std_result.is_ok());
        // Fail fast: the piece that failed contains the first invalid byte.
        if let (Some(c), Err(e)) = (failed_at, std_result) {
            prop_assert!(e.error_len().is_some());
            prop_assert!(e.valid_up_to() < c);
        }
    }
}
