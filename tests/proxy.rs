//! The client proxy step (`rfc6455::proxy`): exact bytes sent, answers fed in every
//! split, every error, environment selection and URL parsing.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use rfc6455::proxy::{MAX_RESPONSE_HEAD, Proxy, ProxyError, ProxyHandshake, ProxyKind, ProxyStep, Target, no_proxy_matches};

// ---------------------------------------------------------------------------------
// Driving a machine

/// How a negotiation ended when fed some chunks.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// All bytes fed, answer incomplete.
    NeedMore,
    /// Tunnel open; the bytes that followed the answer (from the last chunk and
    /// any chunks after it).
    Done {
        tunnel: Vec<u8>,
    },
    Failed(ProxyError),
}

/// The verdict and every byte the machine asked to send.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    verdict: Verdict,
    sent: Vec<u8>,
}

fn drain(hs: &mut ProxyHandshake, sent: &mut Vec<u8>) {
    let out = hs.output().to_vec();
    hs.consume_output(out.len());
    sent.extend_from_slice(&out);
    assert!(hs.output().is_empty());
}

/// Feeds `chunks` in order, writing the output before each read as a driver would.
fn run(mut hs: ProxyHandshake, chunks: &[&[u8]]) -> Outcome {
    let mut sent = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        drain(&mut hs, &mut sent);
        match hs.handle_bytes(chunk) {
            Ok(ProxyStep::NeedMore) => assert!(!hs.is_done()),
            Ok(ProxyStep::Done { leftover }) => {
                assert!(hs.is_done());
                assert!(leftover <= chunk.len());
                drain(&mut hs, &mut sent);
                let mut tunnel = chunk[chunk.len() - leftover..].to_vec();
                chunks[i + 1..].iter().for_each(|c| tunnel.extend_from_slice(c));
                // Refused from now on, even empty reads.
                assert_eq!(hs.handle_bytes(b"x"), Err(ProxyError::Finished));
                assert_eq!(hs.handle_bytes(b""), Err(ProxyError::Finished));
                assert_eq!(hs.buffered_bytes(), 0, "the answer's buffer is freed");
                return Outcome { verdict: Verdict::Done { tunnel }, sent };
            }
            Err(e) => {
                assert!(!hs.is_done());
                // The same error again, whatever is fed next.
                assert_eq!(hs.handle_bytes(b"more"), Err(e.clone()));
                assert_eq!(hs.handle_eof(), e);
                drain(&mut hs, &mut sent);
                return Outcome { verdict: Verdict::Failed(e), sent };
            }
        }
        assert!(hs.buffered_bytes() <= MAX_RESPONSE_HEAD);
    }
    drain(&mut hs, &mut sent);
    Outcome { verdict: Verdict::NeedMore, sent }
}

/// Feeds `answer` in one piece, byte by byte, and split in two at every point, and
/// checks that all give the same outcome; returns it.
fn run_every_split(make: &dyn Fn() -> ProxyHandshake, answer: &[u8]) -> Outcome {
    let whole = run(make(), &[answer]);
    let bytes: Vec<&[u8]> = answer.chunks(1).collect();
    assert_eq!(run(make(), &bytes), whole, "byte by byte: {answer:?}");
    for i in 0..=answer.len() {
        let (a, b) = answer.split_at(i);
        assert_eq!(run(make(), &[a, b]), whole, "split at {i}: {answer:?}");
    }
    whole
}

/// Makes a fresh machine for a scenario.
type Maker = fn() -> ProxyHandshake;

/// Expected user name and password.
type Credentials<'a> = Option<(&'a str, &'a str)>;

fn proxy(url: &str) -> Proxy {
    Proxy::parse(url).unwrap()
}

fn machine(url: &str, target: Target) -> ProxyHandshake {
    ProxyHandshake::new(&proxy(url), target).unwrap()
}

fn name(host: &str, port: u16) -> Target {
    Target::Name(host.into(), port)
}

fn done(tunnel: &[u8]) -> Verdict {
    Verdict::Done { tunnel: tunnel.to_vec() }
}

// ---------------------------------------------------------------------------------
// HTTP CONNECT: requests

#[test]
fn http_connect_request_without_credentials() {
    let hs = machine("http://proxy.example:3128", name("example.com", 443));
    assert_eq!(hs.output(), b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
}

#[test]
fn http_connect_request_with_basic_credentials() {
    // RFC 7617 §2's example: Aladdin / open sesame.
    let hs = machine("http://Aladdin:open%20sesame@proxy.example:3128", name("example.com", 80));
    assert_eq!(
        hs.output(),
        b"CONNECT example.com:80 HTTP/1.1\r\nHost: example.com:80\r\n\
          Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\r\n"
    );
    // A user with no password: "user:".
    let hs = machine("http://user@p", name("h", 80));
    assert_eq!(hs.output(), b"CONNECT h:80 HTTP/1.1\r\nHost: h:80\r\nProxy-Authorization: Basic dXNlcjo=\r\n\r\n");
}

#[test]
fn http_connect_request_ipv6_and_address_targets() {
    let expect = b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n";
    assert_eq!(machine("http://p:1", name("2001:db8::1", 443)).output(), expect);
    assert_eq!(machine("http://p:1", name("[2001:db8::1]", 443)).output(), expect);
    let v6 = SocketAddr::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(), 443);
    assert_eq!(machine("http://p:1", Target::Addr(v6)).output(), expect);
    let v4 = SocketAddr::new(Ipv4Addr::new(192, 0, 2, 7).into(), 8080);
    assert_eq!(machine("http://p:1", Target::Addr(v4)).output(), b"CONNECT 192.0.2.7:8080 HTTP/1.1\r\nHost: 192.0.2.7:8080\r\n\r\n");
}

// ---------------------------------------------------------------------------------
// HTTP CONNECT: answers

fn http() -> ProxyHandshake {
    machine("http://proxy:3128", name("example.com", 443))
}

fn http_auth() -> ProxyHandshake {
    machine("http://ann:pw@proxy:3128", name("example.com", 443))
}

#[test]
fn http_200_opens_the_tunnel_and_keeps_the_bytes_after_it() {
    let out = run_every_split(&http, b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x01\x02\x00");
    assert_eq!(out.verdict, done(b"\x16\x03\x01\x02\x00"));
    assert_eq!(out.sent, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
    let out = run_every_split(&http, b"HTTP/1.1 200 Connection established\r\nProxy-Agent: x\r\n\r\n");
    assert_eq!(out.verdict, done(b""));
}

#[test]
fn http_other_2xx_forms_are_success() {
    for answer in [
        &b"HTTP/1.0 200 OK\r\n\r\nGET"[..],
        b"HTTP/1.1 204 No Content\r\n\r\nGET",
        b"HTTP/1.1 200 OK\n\nGET",
        b"HTTP/1.1 200\r\n\r\nGET",
        // A 2xx to CONNECT has no body (RFC 9110 §9.3.6): what follows is the tunnel.
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nGET",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nGET",
        // Interim 1xx responses are skipped.
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nGET",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nGET",
    ] {
        assert_eq!(run_every_split(&http, answer).verdict, done(b"GET"), "{answer:?}");
    }
}

#[test]
fn http_incomplete_answer_needs_more() {
    for answer in [&b""[..], b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\n\r", b"HTTP/1.1 100 Continue\r\n\r\n"] {
        assert_eq!(run_every_split(&http, answer).verdict, Verdict::NeedMore, "{answer:?}");
    }
}

#[test]
fn http_407_without_and_with_credentials() {
    let answer = b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 0\r\n\r\n";
    let e = |sent| ProxyError::AuthRequired { challenge: Some("Basic realm=\"corp\"".into()), credentials_sent: sent };
    assert_eq!(run_every_split(&http, answer).verdict, Verdict::Failed(e(false)));
    assert_eq!(run_every_split(&http_auth, answer).verdict, Verdict::Failed(e(true)));
    assert_eq!(
        e(false).to_string(),
        "proxy requires authentication (HTTP 407) and the proxy URL has no user:password (it asks for: Basic realm=\"corp\")"
    );
    assert_eq!(
        e(true).to_string(),
        "proxy refused the credentials: HTTP 407 Proxy Authentication Required (it asks for: Basic realm=\"corp\")"
    );

    // Several challenges are joined; none gives no challenge.
    let two = b"HTTP/1.1 407 x\r\nProxy-Authenticate: Negotiate\r\nProxy-Authenticate: Basic realm=\"a\"\r\n\r\n";
    let Verdict::Failed(ProxyError::AuthRequired { challenge, .. }) = run_every_split(&http, two).verdict else { panic!() };
    assert_eq!(challenge.as_deref(), Some("Negotiate, Basic realm=\"a\""));
    let none = run_every_split(&http, b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n").verdict;
    assert_eq!(none, Verdict::Failed(ProxyError::AuthRequired { challenge: None, credentials_sent: false }));
}

#[test]
fn http_other_statuses_are_refusals() {
    for (answer, code, reason, line) in [
        (&b"HTTP/1.1 403 Forbidden\r\n\r\n"[..], 403, "Forbidden", "proxy refused the tunnel: HTTP 403 Forbidden"),
        (
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 5\r\n\r\nerror",
            502,
            "Bad Gateway",
            "proxy refused the tunnel: HTTP 502 Bad Gateway",
        ),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", 101, "Switching Protocols", "proxy refused the tunnel: HTTP 101 Switching Protocols"),
        (b"HTTP/1.1 302 Found\r\nLocation: /\r\n\r\n", 302, "Found", "proxy refused the tunnel: HTTP 302 Found"),
        (b"HTTP/1.1 503\r\n\r\n", 503, "", "proxy refused the tunnel: HTTP 503"),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\n\r\n", 404, "Not Found", "proxy refused the tunnel: HTTP 404 Not Found"),
    ] {
        let e = ProxyError::Status { code, reason: reason.into() };
        assert_eq!(run_every_split(&http, answer).verdict, Verdict::Failed(e.clone()), "{answer:?}");
        assert_eq!(e.to_string(), line);
    }
}

#[test]
fn http_garbage_is_malformed() {
    for answer in [
        &b"SSH-2.0-OpenSSH_9.6\r\n\r\n"[..],
        b"\x05\x00\r\n\r\n",
        b"\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
    ] {
        let out = run_every_split(&http, answer);
        assert!(matches!(&out.verdict, Verdict::Failed(ProxyError::Malformed(_))), "{answer:?}: {out:?}");
    }
    let Verdict::Failed(e) = run(http(), &[b"junk\r\n\r\n"]).verdict else { panic!() };
    assert!(e.to_string().starts_with("malformed proxy answer: HTTP CONNECT response: "), "{e}");
}

#[test]
fn http_too_many_header_lines_is_malformed() {
    let mut answer = b"HTTP/1.1 200 OK\r\n".to_vec();
    (0..65).for_each(|i| answer.extend_from_slice(format!("X-{i}: v\r\n").as_bytes()));
    answer.extend_from_slice(b"\r\n");
    let Verdict::Failed(ProxyError::Malformed(why)) = run(http(), &[&answer]).verdict else { panic!() };
    assert_eq!(why, "HTTP CONNECT response: more than 64 header lines");
}

/// A 200 head of exactly `len` bytes.
fn head_of_len(len: usize) -> Vec<u8> {
    let start = b"HTTP/1.1 200 OK\r\nX-Pad: ";
    let mut head = start.to_vec();
    head.resize(len - 4, b'p');
    head.extend_from_slice(b"\r\n\r\n");
    head
}

#[test]
fn http_head_is_bounded_at_8_kib() {
    // Exactly the bound is fine, with the tunnel's bytes after it.
    let mut answer = head_of_len(MAX_RESPONSE_HEAD);
    answer.extend_from_slice(b"tail");
    assert_eq!(run(http(), &[&answer]).verdict, done(b"tail"));
    let bytes: Vec<&[u8]> = answer.chunks(1).collect();
    assert_eq!(run(http(), &bytes).verdict, done(b"tail"));

    // One byte more is refused as soon as the bound is passed, whatever the split.
    let answer = head_of_len(MAX_RESPONSE_HEAD + 1);
    for i in [0, 1, 100, MAX_RESPONSE_HEAD - 1, MAX_RESPONSE_HEAD, MAX_RESPONSE_HEAD + 1] {
        let (a, b) = answer.split_at(i);
        assert_eq!(run(http(), &[a, b]).verdict, Verdict::Failed(ProxyError::ResponseTooLarge), "split at {i}");
    }
    let endless = vec![b'x'; 3 * MAX_RESPONSE_HEAD];
    let mut hs = http();
    let chunks: Vec<&[u8]> = endless.chunks(1000).collect();
    for c in &chunks[..8] {
        assert_eq!(hs.handle_bytes(c), Ok(ProxyStep::NeedMore));
        assert!(hs.buffered_bytes() <= MAX_RESPONSE_HEAD);
    }
    assert_eq!(hs.handle_bytes(chunks[8]), Err(ProxyError::ResponseTooLarge));
    assert_eq!(hs.buffered_bytes(), 0);
    assert_eq!(ProxyError::ResponseTooLarge.to_string(), "proxy's answer to CONNECT exceeds 8192 bytes without ending its header section");
}

#[test]
fn http_network_text_in_errors_is_one_printable_line() {
    let answer = b"HTTP/1.1 403 Forbidden\x1b[2J\r\n\r\n";
    let Verdict::Failed(e) = run(http(), &[answer]).verdict else { panic!() };
    assert!(!e.to_string().chars().any(char::is_control), "{e:?}");
    let long = format!("HTTP/1.1 407 x\r\nProxy-Authenticate: Basic realm=\"{}\"\r\n\r\n", "r".repeat(1000));
    let Verdict::Failed(e) = run(http(), &[long.as_bytes()]).verdict else { panic!() };
    assert!(e.to_string().len() < 400, "{e}");
}

// ---------------------------------------------------------------------------------
// SOCKS5: requests

#[test]
fn socks5_no_auth_ipv4_target() {
    let target = Target::Addr(SocketAddr::new(Ipv4Addr::new(192, 0, 2, 7).into(), 443));
    let mut hs = machine("socks5://p", target);
    // Greeting: VER 5, NMETHODS 1, METHODS {0x00 no authentication}.
    assert_eq!(hs.output(), [0x05, 0x01, 0x00]);
    hs.consume_output(3);
    // Selection of 0x00; then CONNECT: VER, CMD 1, RSV, ATYP 1, 4 bytes, port 443.
    assert_eq!(hs.handle_bytes(&[0x05, 0x00]), Ok(ProxyStep::NeedMore));
    assert_eq!(hs.output(), [0x05, 0x01, 0x00, 0x01, 192, 0, 2, 7, 0x01, 0xbb]);
}

#[test]
fn socks5_ipv6_target() {
    let ip = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    for target in [Target::Addr(SocketAddr::new(ip.into(), 80)), name("2001:db8::1", 80), name("[2001:db8::1]", 80)] {
        let mut hs = machine("socks5h://p", target);
        hs.consume_output(3);
        hs.handle_bytes(&[0x05, 0x00]).unwrap();
        let mut expect = vec![0x05, 0x01, 0x00, 0x04];
        expect.extend_from_slice(&ip.octets());
        expect.extend_from_slice(&[0x00, 0x50]);
        assert_eq!(hs.output(), expect);
    }
}

#[test]
fn socks5_domain_target_and_ip_literal_names() {
    let mut hs = machine("socks5h://p", name("example.com", 8080));
    hs.consume_output(3);
    hs.handle_bytes(&[0x05, 0x00]).unwrap();
    assert_eq!(hs.output(), b"\x05\x01\x00\x03\x0bexample.com\x1f\x90");

    // A name given to socks5:// is still sent as a domain; an IP literal as an address.
    let mut hs = machine("socks5://p", name("example.com", 80));
    hs.consume_output(3);
    hs.handle_bytes(&[0x05, 0x00]).unwrap();
    assert_eq!(hs.output(), b"\x05\x01\x00\x03\x0bexample.com\x00\x50");
    let mut hs = machine("socks5h://p", name("10.1.2.3", 80));
    hs.consume_output(3);
    hs.handle_bytes(&[0x05, 0x00]).unwrap();
    assert_eq!(hs.output(), b"\x05\x01\x00\x01\x0a\x01\x02\x03\x00\x50");

    // 255 bytes is the most a domain may have.
    let long = format!("{}.com", "a".repeat(251));
    assert_eq!(long.len(), 255);
    let mut hs = machine("socks5h://p", name(&long, 1));
    hs.consume_output(3);
    hs.handle_bytes(&[0x05, 0x00]).unwrap();
    assert_eq!(hs.output()[4], 255);
    assert_eq!(hs.output().len(), 4 + 1 + 255 + 2);
}

#[test]
fn socks5_username_password() {
    let mut hs = machine("socks5://ann:s%3Acret@p:1080", name("example.com", 443));
    // Greeting offers 0x00 and 0x02.
    assert_eq!(hs.output(), [0x05, 0x02, 0x00, 0x02]);
    hs.consume_output(4);
    // 0x02 chosen: RFC 1929 request VER 1, ULEN, UNAME, PLEN, PASSWD.
    assert_eq!(hs.handle_bytes(&[0x05, 0x02]), Ok(ProxyStep::NeedMore));
    assert_eq!(hs.output(), b"\x01\x03ann\x06s:cret");
    hs.consume_output(2);
    assert_eq!(hs.output(), b"ann\x06s:cret", "partial writes leave the rest");
    hs.consume_output(usize::MAX);
    assert!(hs.output().is_empty());
    assert_eq!(hs.handle_bytes(&[0x01, 0x00]), Ok(ProxyStep::NeedMore));
    assert_eq!(hs.output(), b"\x05\x01\x00\x03\x0bexample.com\x01\xbb");
}

// ---------------------------------------------------------------------------------
// SOCKS5: answers

const OK_IPV4: &[u8] = b"\x05\x00\x00\x01\x0a\x00\x00\x01\x1f\x90";

fn socks() -> ProxyHandshake {
    machine("socks5h://proxy:1080", name("example.com", 443))
}

fn socks_auth() -> ProxyHandshake {
    machine("socks5h://ann:pw@proxy:1080", name("example.com", 443))
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

const CONNECT_EXAMPLE: &[u8] = b"\x05\x01\x00\x03\x0bexample.com\x01\xbb";

#[test]
fn socks5_success_replies_by_bound_address_type() {
    let ok_v6 = cat(&[b"\x05\x00\x00\x04", &[0xfe; 16], b"\x04\x38"]);
    let ok_domain = b"\x05\x00\x00\x03\x0fproxy.internal.\x04\x38".to_vec();
    let ok_empty_domain = b"\x05\x00\x00\x03\x00\x04\x38".to_vec();
    for reply in [OK_IPV4, &ok_v6, &ok_domain, &ok_empty_domain] {
        let out = run_every_split(&socks, &cat(&[b"\x05\x00", reply, b"\x16\x03"]));
        assert_eq!(out.verdict, done(b"\x16\x03"), "{reply:?}");
        assert_eq!(out.sent, cat(&[b"\x05\x01\x00", CONNECT_EXAMPLE]));
        // Without the tunnel's bytes: leftover 0.
        assert_eq!(run_every_split(&socks, &cat(&[b"\x05\x00", reply])).verdict, done(b""));
    }
}

#[test]
fn socks5_with_credentials_full_exchange() {
    let out = run_every_split(&socks_auth, &cat(&[b"\x05\x02", b"\x01\x00", OK_IPV4, b"hello"]));
    assert_eq!(out.verdict, done(b"hello"));
    assert_eq!(out.sent, cat(&[b"\x05\x02\x00\x02", b"\x01\x03ann\x02pw", CONNECT_EXAMPLE]));
    // Some servers answer the RFC 1929 request with version 5: accepted.
    assert_eq!(run_every_split(&socks_auth, &cat(&[b"\x05\x02", b"\x05\x00", OK_IPV4])).verdict, done(b""));
    // The proxy may choose "no authentication" though we offered both.
    let out = run_every_split(&socks_auth, &cat(&[b"\x05\x00", OK_IPV4]));
    assert_eq!(out.verdict, done(b""));
    assert_eq!(out.sent, cat(&[b"\x05\x02\x00\x02", CONNECT_EXAMPLE]));
}

#[test]
fn socks5_incomplete_answers_need_more() {
    for answer in [&b""[..], b"\x05", b"\x05\x00", b"\x05\x00\x05\x00\x00", b"\x05\x00\x05\x00\x00\x03\x05abcd\x00"] {
        assert_eq!(run_every_split(&socks, answer).verdict, Verdict::NeedMore, "{answer:?}");
    }
    assert_eq!(run_every_split(&socks_auth, b"\x05\x02\x01").verdict, Verdict::NeedMore);
}

#[test]
fn socks5_method_selection_errors() {
    let cases: [(Maker, &[u8], ProxyError, &str); 6] = [
        (
            socks,
            b"\x05\xff",
            ProxyError::NoAcceptableMethod { credentials_offered: false },
            "SOCKS5 proxy: does not accept connections without authentication (add user:password to the proxy URL?)",
        ),
        (
            socks_auth,
            b"\x05\xff",
            ProxyError::NoAcceptableMethod { credentials_offered: true },
            "SOCKS5 proxy: accepts neither no authentication nor username/password",
        ),
        (
            socks,
            b"\x05\x02",
            ProxyError::UnexpectedMethod(2),
            "SOCKS5 proxy: requires username/password authentication, and the proxy URL has none",
        ),
        (socks_auth, b"\x05\x01", ProxyError::UnexpectedMethod(1), "SOCKS5 proxy: chose authentication method 0x01, which was not offered"),
        (socks, b"\x04\x5a", ProxyError::SocksVersion(4), "SOCKS5 proxy: the answer has version 0x04, not 5 (is it a SOCKS5 proxy?)"),
        (
            socks,
            b"HTTP/1.1 400 Bad Request\r\n\r\n",
            ProxyError::SocksVersion(b'H'),
            "SOCKS5 proxy: the answer has version 0x48, not 5 (is it a SOCKS5 proxy?)",
        ),
    ];
    for (make, answer, err, line) in cases {
        assert_eq!(run_every_split(&make, answer).verdict, Verdict::Failed(err.clone()), "{answer:?}");
        assert_eq!(err.to_string(), line);
    }
}

#[test]
fn socks5_authentication_failure() {
    for status in [1u8, 0xff] {
        let out = run_every_split(&socks_auth, &[0x05, 0x02, 0x01, status]);
        assert_eq!(out.verdict, Verdict::Failed(ProxyError::AuthFailed { status }));
        assert_eq!(out.sent, cat(&[b"\x05\x02\x00\x02", b"\x01\x03ann\x02pw"]), "no CONNECT after a failure");
    }
    assert_eq!(ProxyError::AuthFailed { status: 1 }.to_string(), "SOCKS5 proxy: username/password authentication failed (status 1)");
}

#[test]
fn socks5_reply_codes_in_rfc_words() {
    let texts = [
        "general SOCKS server failure",
        "connection not allowed by ruleset",
        "network unreachable",
        "host unreachable",
        "connection refused",
        "TTL expired",
        "command not supported",
        "address type not supported",
    ];
    for (code, text) in (1u8..=8).zip(texts) {
        let reply = [0x05, code, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
        let out = run_every_split(&socks, &cat(&[b"\x05\x00", &reply]));
        assert_eq!(out.verdict, Verdict::Failed(ProxyError::SocksReply(code)));
        assert_eq!(ProxyError::socks_reply_text(code), text);
        assert_eq!(ProxyError::SocksReply(code).to_string(), format!("SOCKS5 proxy could not open the tunnel: {text} (reply {code})"));
    }
    assert_eq!(ProxyError::SocksReply(0x2a).to_string(), "SOCKS5 proxy could not open the tunnel: unassigned reply code (reply 42)");
    // The refusal is known from the second byte on; the rest of the reply is not awaited.
    assert_eq!(run_every_split(&socks, b"\x05\x00\x05\x05").verdict, Verdict::Failed(ProxyError::SocksReply(5)));
}

#[test]
fn socks5_malformed_replies() {
    assert_eq!(run_every_split(&socks, b"\x05\x00\x04\x00").verdict, Verdict::Failed(ProxyError::SocksVersion(4)));
    let out = run_every_split(&socks, b"\x05\x00\x05\x00\x00\x02\x00\x00");
    assert_eq!(out.verdict, Verdict::Failed(ProxyError::Malformed("SOCKS5 CONNECT reply: unknown address type 0x02".into())));
    let Verdict::Failed(e) = out.verdict else { panic!() };
    assert_eq!(e.to_string(), "malformed proxy answer: SOCKS5 CONNECT reply: unknown address type 0x02");
}

// ---------------------------------------------------------------------------------
// Lifecycle and the remaining errors

#[test]
fn end_of_stream_names_the_step() {
    let step = |hs: &mut ProxyHandshake| match hs.handle_eof() {
        ProxyError::UnexpectedEof { step } => step,
        e => panic!("{e:?}"),
    };
    let mut hs = http();
    hs.handle_bytes(b"HTTP/1.1 200").unwrap();
    assert_eq!(step(&mut hs), "the HTTP CONNECT response");
    assert_eq!(hs.handle_bytes(b" OK\r\n\r\n"), Err(ProxyError::UnexpectedEof { step: "the HTTP CONNECT response" }), "failed for good");
    assert_eq!(step(&mut socks()), "the SOCKS5 method selection");
    let mut hs = socks_auth();
    hs.handle_bytes(b"\x05\x02").unwrap();
    assert_eq!(step(&mut hs), "the SOCKS5 username/password authentication");
    let mut hs = socks();
    hs.handle_bytes(b"\x05\x00\x05\x00").unwrap();
    let e = hs.handle_eof();
    assert_eq!(e.to_string(), "proxy closed the connection during the SOCKS5 CONNECT reply");

    let mut hs = socks();
    hs.handle_bytes(&cat(&[b"\x05\x00", OK_IPV4])).unwrap();
    assert_eq!(hs.handle_eof(), ProxyError::Finished);
    assert_eq!(ProxyError::Finished.to_string(), "the proxy handshake is finished: further bytes belong to the tunnel");
}

#[test]
fn invalid_targets_are_refused_at_construction() {
    let p = proxy("socks5h://p");
    for bad in ["", "exa mple.com", "a/b", "h\r\nX: y", "[::1", "[nope]", "ümlaut.example"] {
        let e = ProxyHandshake::new(&p, name(bad, 80)).unwrap_err();
        assert!(matches!(e, ProxyError::InvalidTarget(_)), "{bad:?}: {e:?}");
        assert!(e.to_string().starts_with("invalid target for the proxy: "), "{e}");
        assert!(ProxyHandshake::new(&proxy("http://p"), name(bad, 80)).is_err(), "{bad:?}");
    }
    let long = "a".repeat(256);
    assert!(matches!(ProxyHandshake::new(&p, name(&long, 80)), Err(ProxyError::InvalidTarget(_))));
}

#[test]
fn errors_are_std_errors_and_one_line() {
    fn is_error<E: std::error::Error + Send + Sync + 'static>(_: &E) {}
    let all = [
        ProxyError::InvalidUrl("x".into()),
        ProxyError::InvalidTarget("x".into()),
        ProxyError::Status { code: 403, reason: "Forbidden".into() },
        ProxyError::AuthRequired { challenge: None, credentials_sent: true },
        ProxyError::ResponseTooLarge,
        ProxyError::Malformed("x".into()),
        ProxyError::SocksVersion(4),
        ProxyError::NoAcceptableMethod { credentials_offered: true },
        ProxyError::UnexpectedMethod(3),
        ProxyError::AuthFailed { status: 1 },
        ProxyError::SocksReply(1),
        ProxyError::UnexpectedEof { step: "the SOCKS5 CONNECT reply" },
        ProxyError::Finished,
    ];
    for e in &all {
        is_error(e);
        let line = e.to_string();
        assert!(!line.is_empty() && !line.contains('\n'), "{line:?}");
    }
}

#[test]
fn debug_of_a_handshake_hides_credentials() {
    let hs = machine("http://ann:hunter2@p:1", name("h", 80));
    let dbg = format!("{hs:?}");
    assert!(!dbg.contains("hunter2") && !dbg.contains("aHVudGVyMg"), "{dbg}");
    assert!(dbg.contains("the HTTP CONNECT response"), "{dbg}");
}

// ---------------------------------------------------------------------------------
// Proxy URLs

#[test]
fn proxy_urls_that_parse() {
    let cases: &[(&str, ProxyKind, &str, u16, Credentials)] = &[
        ("http://proxy.example:3128", ProxyKind::Http, "proxy.example", 3128, None),
        ("http://proxy.example", ProxyKind::Http, "proxy.example", 80, None),
        ("http://proxy.example:", ProxyKind::Http, "proxy.example", 80, None),
        ("http://proxy.example:3128/", ProxyKind::Http, "proxy.example", 3128, None),
        ("HTTP://Proxy.EXAMPLE:3128", ProxyKind::Http, "proxy.example", 3128, None),
        ("socks5://10.0.0.1", ProxyKind::Socks5, "10.0.0.1", 1080, None),
        ("socks5h://[::1]:9050", ProxyKind::Socks5h, "::1", 9050, None),
        ("socks5h://[2001:DB8::1]", ProxyKind::Socks5h, "2001:db8::1", 1080, None),
        ("http://ann:pw@p:1", ProxyKind::Http, "p", 1, Some(("ann", "pw"))),
        ("http://ann@p:1", ProxyKind::Http, "p", 1, Some(("ann", ""))),
        ("http://a%40b.c:p%3Aw%2Fx%25@p:1", ProxyKind::Http, "p", 1, Some(("a@b.c", "p:w/x%"))),
        ("http://ann:p@ss@p:1", ProxyKind::Http, "p", 1, Some(("ann", "p@ss"))),
        ("socks5://%C3%A9t%C3%A9:%20@p", ProxyKind::Socks5, "p", 1080, Some(("été", " "))),
    ];
    for &(url, kind, host, port, creds) in cases {
        let p = Proxy::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!((p.kind(), p.host(), p.port()), (kind, host, port), "{url}");
        assert_eq!(p.username().zip(p.password()), creds, "{url}");
    }
    assert_eq!(ProxyKind::Http.default_port(), 80);
    assert_eq!(ProxyKind::Socks5.default_port(), 1080);
    assert!(ProxyKind::Http.resolves_names() && ProxyKind::Socks5h.resolves_names() && !ProxyKind::Socks5.resolves_names());
}

#[test]
fn proxy_urls_that_do_not_parse() {
    let cases = [
        ("proxy.example:3128", "missing scheme"),
        ("https://proxy.example", "https:// proxies"),
        ("socks4://p", "unsupported scheme \"socks4\""),
        ("ftp://p", "unsupported scheme"),
        ("http://", "missing host"),
        ("http://:3128", "missing host"),
        ("http://user:pw@", "missing host"),
        ("http://p:0", "port"),
        ("http://p:65536", "port"),
        ("http://p:+80", "port"),
        ("http://p:8o", "port"),
        ("http://p:1:2", "brackets"),
        ("http://::1:80", "brackets"),
        ("http://[::1", "unclosed ["),
        ("http://[nope]:1", "invalid IPv6"),
        ("http://[::1]x", "after ]"),
        ("http://p:1#frag", "fragments"),
        ("http://p:1?q", "query"),
        ("http://p:1/path", "no path"),
        ("http://pro xy:1", "invalid host"),
        ("http://p\u{e9}:1", "invalid host"),
        ("http://:pw@p", "empty user name"),
        ("http://a%zz:pw@p", "percent-encoding"),
        ("http://a:%FF@p", "percent-encoding"),
        ("http://a%3Ab:pw@p", "cannot contain ':'"),
        ("socks5://ann@p", "1 to 255 bytes"),
        ("socks5h://ann:@p", "1 to 255 bytes"),
    ];
    for (url, why) in cases {
        match Proxy::parse(url) {
            Err(ProxyError::InvalidUrl(reason)) => assert!(reason.contains(why), "{url}: {reason:?} lacks {why:?}"),
            other => panic!("{url}: {other:?}"),
        }
    }
    let long = "x".repeat(256);
    assert!(Proxy::parse(&format!("socks5://{long}:pw@p")).is_err());
    assert!(Proxy::parse(&format!("socks5://ann:{long}@p")).is_err());
    assert!(Proxy::parse(&format!("socks5://{}:{}@p", "u".repeat(255), "p".repeat(255))).is_ok());
    assert!(Proxy::parse(&format!("http://{long}:{long}@p")).is_ok(), "no length limit for Basic");
}

#[test]
fn url_errors_never_quote_the_password() {
    for url in ["http://ann:hunter2/x@p:1", "http://ann:hunter2@p:99999", "http://ann:hunter2@[::1", "socks5://ann:hunter2@p:1?q"] {
        let e = Proxy::parse(url).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{url}: {e}");
    }
    let e = Proxy::parse("http://ann:hun/ter2@p:1").unwrap_err();
    assert!(e.to_string().contains("percent-encode"), "{e}");
}

#[test]
fn debug_and_display_hide_the_password() {
    let p = proxy("socks5h://ann:hunter2@proxy.example:1080");
    let dbg = format!("{p:?}");
    assert!(!dbg.contains("hunter2"), "{dbg}");
    assert_eq!(dbg, "Proxy { kind: Socks5h, host: \"proxy.example\", port: 1080, username: Some(\"ann\"), password: Some(\"<hidden>\") }");
    assert_eq!(p.to_string(), "socks5h://ann:***@proxy.example:1080");
    assert_eq!(proxy("http://[::1]").to_string(), "http://[::1]:80");
    assert_eq!(proxy("http://a%40b:x@p:1").to_string(), "http://a%40b:***@p:1");
    assert_eq!(format!("{:?}", proxy("http://p")), "Proxy { kind: Http, host: \"p\", port: 80, username: None, password: None }");
}

// ---------------------------------------------------------------------------------
// The environment

/// `from_env_with` over a table of variables.
fn env(secure: bool, host: &str, port: u16, vars: &[(&str, &str)]) -> Result<Option<String>, ProxyError> {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Proxy::from_env_with(secure, host, port, |name| map.get(name).cloned()).map(|p| p.map(|p| p.to_string()))
}

fn chosen(url: &str) -> Result<Option<String>, ProxyError> {
    Ok(Some(url.to_owned()))
}

#[test]
fn env_variable_selection() {
    let h = "example.com";
    // wss: https_proxy, HTTPS_PROXY, all_proxy, ALL_PROXY, lower case first.
    assert_eq!(env(true, h, 443, &[("https_proxy", "http://a:1"), ("HTTPS_PROXY", "http://b:1")]), chosen("http://a:1"));
    assert_eq!(env(true, h, 443, &[("HTTPS_PROXY", "http://b:1"), ("all_proxy", "http://c:1")]), chosen("http://b:1"));
    assert_eq!(env(true, h, 443, &[("http_proxy", "http://x:1"), ("all_proxy", "socks5h://c:1")]), chosen("socks5h://c:1"));
    assert_eq!(env(true, h, 443, &[("all_proxy", "socks5://c:1"), ("ALL_PROXY", "http://d:1")]), chosen("socks5://c:1"));
    assert_eq!(env(true, h, 443, &[("ALL_PROXY", "http://d:1")]), chosen("http://d:1"));
    // ws: http_proxy only (HTTP_PROXY is ignored, as curl does: httpoxy), then all_proxy.
    assert_eq!(env(false, h, 80, &[("http_proxy", "http://a:1"), ("https_proxy", "http://b:1")]), chosen("http://a:1"));
    assert_eq!(env(false, h, 80, &[("HTTP_PROXY", "http://evil:1")]), Ok(None));
    assert_eq!(env(false, h, 80, &[("HTTP_PROXY", "http://evil:1"), ("ALL_PROXY", "http://d:1")]), chosen("http://d:1"));
    assert_eq!(env(false, h, 80, &[("https_proxy", "http://b:1")]), Ok(None), "https_proxy is for wss");
    // Empty and blank values count as unset.
    assert_eq!(env(true, h, 443, &[("https_proxy", ""), ("HTTPS_PROXY", "http://b:1")]), chosen("http://b:1"));
    assert_eq!(env(true, h, 443, &[("https_proxy", "  "), ("all_proxy", "http://c:1")]), chosen("http://c:1"));
    assert_eq!(env(true, h, 443, &[]), Ok(None));
    // Without a scheme, http:// (as curl); surrounding blanks are trimmed.
    assert_eq!(env(true, h, 443, &[("https_proxy", " proxy.corp:3128 ")]), chosen("http://proxy.corp:3128"));
    // A bad value is an error naming the variable.
    let Err(e) = env(true, h, 443, &[("HTTPS_PROXY", "https://p")]) else { panic!() };
    assert!(e.to_string().starts_with("invalid proxy URL: HTTPS_PROXY: https:// proxies"), "{e}");
}

#[test]
fn env_no_proxy() {
    let p = ("https_proxy", "http://p:1");
    let bypass = |host: &str, port: u16, list: &str| env(true, host, port, &[p, ("no_proxy", list)]) == Ok(None);
    assert!(bypass("example.com", 443, "example.com"));
    assert!(!bypass("example.org", 443, "example.com"));
    // Lower case first; empty counts as unset.
    assert_eq!(env(true, "a.com", 443, &[p, ("no_proxy", "b.com"), ("NO_PROXY", "a.com")]), chosen("http://p:1"));
    assert_eq!(env(true, "a.com", 443, &[p, ("no_proxy", ""), ("NO_PROXY", "a.com")]), Ok(None));
    assert_eq!(env(true, "a.com", 443, &[p, ("NO_PROXY", "*")]), Ok(None));
    // A bypassed host does not even read the proxy variable.
    assert_eq!(env(true, "a.com", 443, &[("https_proxy", "bad://"), ("no_proxy", "a.com")]), Ok(None));
}

#[test]
fn no_proxy_forms() {
    let cases: &[(&str, &str, u16, bool)] = &[
        ("*", "anything.example", 1, true),
        ("a.com, *", "b.com", 1, true),
        ("example.com", "example.com", 443, true),
        ("example.com", "a.example.com", 443, true),
        ("example.com", "a.b.example.com", 443, true),
        ("example.com", "badexample.com", 443, false),
        ("example.com", "example.com.evil", 443, false),
        (".example.com", "example.com", 443, true),
        (".example.com", "a.example.com", 443, true),
        ("*.example.com", "a.example.com", 443, true),
        ("EXAMPLE.com", "a.Example.COM", 443, true),
        ("example.com.", "example.com", 443, true),
        ("example.com", "example.com.", 443, true),
        ("localhost,127.0.0.1", "127.0.0.1", 80, true),
        ("localhost 127.0.0.1", "localhost", 80, true),
        ("localhost\t,\n 10.0.0.1", "10.0.0.1", 80, true),
        ("127.0.0.1", "127.0.0.2", 80, false),
        ("0.1", "10.0.0.1", 80, false),
        ("10.0.0.1", "x.10.0.0.1", 80, false),
        ("::1", "::1", 80, true),
        ("::1", "[::1]", 80, true),
        ("[::1]", "::1", 80, true),
        ("0:0::1", "::1", 80, true),
        ("[::1]:8080", "::1", 8080, true),
        ("[::1]:8080", "::1", 80, false),
        ("example.com:8080", "example.com", 8080, true),
        ("example.com:8080", "example.com", 443, false),
        ("example.com:8080", "a.example.com", 8080, true),
        ("example.com:x", "example.com", 443, false),
        ("", "example.com", 443, false),
        (",,", "example.com", 443, false),
        (".", "example.com", 443, false),
        ("10.0.0.0/8", "10.1.2.3", 443, false),
    ];
    for &(list, host, port, expect) in cases {
        assert_eq!(no_proxy_matches(list, host, port), expect, "{list:?} vs {host}:{port}");
    }
}

// ---------------------------------------------------------------------------------
// The fuzz seeds (fuzz/seeds/proxy/): first byte chooses the split, the rest is the
// proxy's answer. Here each is fed, in every 2-way split, to the three machines the
// fuzz target drives.

#[test]
fn fuzz_seeds_give_the_same_result_in_every_split() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/proxy");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        let answer = data.get(1..).unwrap_or_default();
        for make in [http_auth as Maker, socks, socks_auth] {
            run_every_split(&make, answer);
        }
        n += 1;
    }
    assert!(n >= 4, "{n} seeds");
}
