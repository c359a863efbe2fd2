//! The client proxy step (`rfc6455::proxy`): arbitrary answers fed to an HTTP CONNECT
//! machine (with and without credentials) and to SOCKS5 machines (with and without
//! credentials).
//!
//! Input: one byte that chooses how the rest is split into reads (as in
//! `fuzz/harness.rs`), then the proxy's answer. The oracle: never a panic; the memory
//! held stays within `MAX_RESPONSE_HEAD`; what is sent stays small; `leftover` never
//! exceeds the read; and the outcome (verdict, bytes after the answer, bytes sent) is
//! the same whatever the split.
#![no_main]

use rfc6455::proxy::{MAX_RESPONSE_HEAD, Proxy, ProxyError, ProxyHandshake, ProxyStep, Target};

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));

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

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    NeedMore,
    Done { tunnel: Vec<u8> },
    Failed(ProxyError),
}

const PROXIES: [&str; 4] = ["http://proxy:3128", "http://ann:pw@proxy:3128", "socks5h://proxy:1080", "socks5h://ann:pw@proxy:1080"];

fn run(data: &[u8]) {
    let Some((_, answer)) = data.split_first() else { return };
    let chunks = reads(data);
    for url in PROXIES {
        let proxy = Proxy::parse(url).expect("a valid proxy URL");
        let make = || ProxyHandshake::new(&proxy, Target::Name("example.com".into(), 443)).expect("a valid target");
        let split = feed(make(), &chunks);
        let whole = feed(make(), &[answer]);
        assert_eq!(split, whole, "{url}: the split changed the outcome");
    }
}

/// Feeds the reads, writing the output before each as a driver would; returns the
/// verdict and every byte sent.
fn feed(mut hs: ProxyHandshake, chunks: &[&[u8]]) -> (Verdict, Vec<u8>) {
    let mut sent = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        drain(&mut hs, &mut sent);
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
                drain(&mut hs, &mut sent);
                return (Verdict::Done { tunnel }, sent);
            }
            Err(e) => {
                assert!(!e.to_string().contains('\n'));
                assert_eq!(hs.handle_bytes(b"x"), Err(e.clone()), "errors are final");
                drain(&mut hs, &mut sent);
                return (Verdict::Failed(e), sent);
            }
        }
    }
    drain(&mut hs, &mut sent);
    if !hs.is_done() {
        let eof = hs.handle_eof();
        assert!(matches!(eof, ProxyError::UnexpectedEof { .. }), "{eof:?}");
    }
    (Verdict::NeedMore, sent)
}

/// Moves the output to `sent`, as a socket that takes everything would.
fn drain(hs: &mut ProxyHandshake, sent: &mut Vec<u8>) {
    sent.extend_from_slice(hs.output());
    hs.consume_output(usize::MAX);
    assert!(hs.output().is_empty());
}
