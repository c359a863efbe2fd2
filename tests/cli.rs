//! `rfc6455 client` run as a process, as people pipe into it: what it prints, what it
//! sends, and its exit code. The servers run in-process on 127.0.0.1 (port 0); every
//! wait is bounded.
#![cfg(feature = "cli")]

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;

use common::net::{Running, WAIT};
use rfc6455::net::{Echo, ServerConfig};

/// Runs `rfc6455 client ARGS URL` with `input` on stdin, then end of input; bounded by `WAIT`.
fn client(url: &str, args: &[&str], input: &[u8]) -> Output {
    let mut child = interactive(url, args);
    // Written from its own thread: the child's stdout is read only by `wait_bounded`,
    // and a large input would otherwise block on a full pipe both ways.
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = wait_bounded(child);
    writer.join().unwrap();
    out
}

/// Regression: at end of input the client closed at once and the engine dropped the
/// echoes still on their way, so `printf 'hello\nworld\n' | rfc6455 client` against an
/// echo server printed nothing in most runs (and exited 0).
#[test]
fn piped_lines_all_come_back_before_the_client_exits() {
    let mut srv = Running::start(ServerConfig::default(), Echo);
    let url = srv.url("/");
    for run in 0..10 {
        let out = client(&url, &[], b"hello\nworld\n");
        assert!(out.status.success(), "run {run}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\nworld\n", "run {run}: {out:?}");
    }
    srv.stop();
}

/// Regression: a line that is not UTF-8 silently ended the input, even with --binary.
#[test]
fn a_line_that_is_not_utf8_is_sent_with_binary_and_reported_without() {
    let mut srv = Running::start(ServerConfig::default(), Echo);
    let url = srv.url("/");
    let input = b"first\na\xffb\nthird\n";
    let out = client(&url, &["--binary"], input);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, input, "{out:?}");

    let out = client(&url, &[], input);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "first\nthird\n", "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2 is not valid UTF-8"), "{err}");
    srv.stop();
}

/// Runs `rfc6455 ARGS` that must be refused before anything starts: exit code 2 and one
/// clear line on stderr containing `says`.
fn refused(args: &[&str], says: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_rfc6455")).args(args).stdin(Stdio::null()).output().expect("run rfc6455");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    assert!(err.contains(says), "{args:?}: {err}");
}

/// Regression: zero durations and sizes were accepted and turned into floods (a ping
/// loop at 79 % CPU, 60,000 pings a second) or closed every first message (1009).
#[test]
fn zero_and_absurd_values_are_refused_with_the_allowed_range() {
    refused(&["relay", "--keepalive", "0"], "allowed are 10ms to 24h");
    refused(&["relay", "--idle-timeout", "0s"], "allowed are 10ms to 24h");
    refused(&["relay", "--keepalive", "30 parsecs"], "unknown unit");
    refused(&["echo", "--max-message-size", "0"], "allowed are 1 to");
    refused(&["echo", "--max-connections", "0"], "--max-connections");
    refused(&["client", "--ping-interval", "0", "ws://127.0.0.1:1/"], "allowed are 10ms to 24h");
    refused(&["--log", "loud", "relay"], "not a log level");
    refused(&["relay", "--listen", "127.0.0.1:99999"], "not an address to listen on");
    refused(&["relay", "--admin-listen", "nowhere"], "not an address to listen on");
    refused(&["relay", "--threads", "0"], "--threads");
    refused(&["echo", "--threads", "65"], "--threads");
}

/// Durations take fractions and units.
#[test]
fn durations_take_fractions_and_units() {
    let mut srv = Running::start(ServerConfig::default(), Echo);
    let out = client(&srv.url("/"), &["--ping-interval", "0.05"], b"x\n");
    assert!(out.status.success(), "{out:?}");
    let out = client(&srv.url("/"), &["--ping-interval", "50ms"], b"x\n");
    assert!(out.status.success(), "{out:?}");
    srv.stop();
}

/// A URL error names the URL once and does not pretend a connection was tried.
#[test]
fn a_bad_url_is_a_url_error() {
    let out = client("ws://127.0.0.1:9001:9/", &[], b"");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(err.contains("invalid WebSocket URL") && !err.contains("cannot connect"), "{err}");
    assert_eq!(err.matches("ws://127.0.0.1:9001:9/").count(), 1, "{err}");
}

/// `--listen PORT` listens on 127.0.0.1:PORT.
#[test]
fn a_bare_port_listens_on_loopback() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_rfc6455"))
        .args(["--log", "error", "echo", "--listen", &port.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .expect("run rfc6455 echo");
    let url = format!("ws://127.0.0.1:{port}/");
    let deadline = std::time::Instant::now() + WAIT;
    let mut c = loop {
        match rfc6455::net::Client::connect_url(&url) {
            Ok(c) => break c,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => {
                let _ = server.kill();
                panic!("nothing listens on {url}: {e}");
            }
        }
    };
    c.send_text("on loopback").unwrap();
    let got = common::net::next_message(&mut c);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(got.1, b"on loopback");
}

/// The client names the close code's meaning and the reason.
#[test]
fn the_client_prints_the_close_code_with_its_meaning() {
    let mut srv = Running::start(ServerConfig::default(), Echo);
    // The echo of a 20-byte line is over the client's own limit of 8 bytes: it fails
    // the connection and says why. (The close code is 1009 when the echo comes first,
    // 1000 when the end of input closed first; either is named.)
    let out = client(&srv.url("/"), &["--max-message-size", "8"], b"twenty bytes of text\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(err.contains("closed: 1009 message too big") || err.contains("closed: 1000 normal closure"), "{err}");
    assert!(err.contains("larger than 8 bytes"), "{err}");
    srv.stop();
}

/// Starts `rfc6455 client ARGS URL` with stdin kept open (an interactive session).
fn interactive(url: &str, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_rfc6455"))
        .args(["--log", "error", "client"])
        .args(args)
        .arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rfc6455 client")
}

/// Waits (bounded) for a child to exit; kills it and fails the test otherwise.
fn wait_bounded(child: std::process::Child) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()).unwrap());
    match rx.recv_timeout(WAIT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("rfc6455 client did not exit within {WAIT:?}");
        }
    }
}

/// `--count N` closes and exits after N messages, with stdin still open.
#[test]
fn count_exits_after_n_messages() {
    let mut srv = Running::start(ServerConfig::default(), Echo);
    let mut child = interactive(&srv.url("/"), &["--count", "2", "--quiet"]);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"one\ntwo\nthree\n").unwrap();
    let out = wait_bounded(child);
    drop(stdin);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "--quiet prints nothing else");
    srv.stop();
}

/// Ctrl-C (SIGINT) closes with 1000 and exits 0.
#[test]
fn an_interrupt_closes_cleanly() {
    use std::io::{BufRead, BufReader};
    let mut srv = Running::start(ServerConfig::default(), Echo);
    let mut child = interactive(&srv.url("/"), &[]);
    let stdin = child.stdin.take().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.starts_with("connected to"), "{line}");
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = wait_bounded(child);
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(out.status.success(), "{out:?} {rest}");
    assert!(rest.contains("closed: 1000 normal closure"), "{rest}");
    srv.stop();
}

/// Fatal errors reach stderr in the client's `error: ...` style whatever the log level.
#[test]
fn a_fatal_error_is_printed_even_with_logging_off() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_rfc6455"))
        .args(["--log", "off", "echo", "--listen", &addr])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(err.starts_with(&format!("error: cannot listen on {addr}")), "{err}");
}

/// `--listen localhost:PORT` resolves the name.
#[test]
fn a_listen_address_may_be_a_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_rfc6455"))
        .args(["echo", "--listen", "nonexistent.invalid:9001"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "an unresolvable name is refused by the parser: {out:?}");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_rfc6455"))
        .args(["--log", "error", "echo", "--listen", &format!("localhost:{port}")])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let connected = loop {
        // localhost may resolve to ::1 or 127.0.0.1 first: either is fine.
        let ok = ["127.0.0.1", "[::1]"].iter().any(|h| rfc6455::net::Client::connect_url(&format!("ws://{h}:{port}/")).is_ok());
        if ok || std::time::Instant::now() >= deadline {
            break ok;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _ = server.kill();
    let _ = server.wait();
    assert!(connected, "nothing listened on localhost:{port}");
}

/// A large piped input is interleaved with reading the replies: nothing piles up on the
/// server (which would close a client whose backlog passed its high-water mark).
#[test]
fn a_large_piped_input_comes_back_whole() {
    let mut srv = Running::start(ServerConfig::default(), Echo);
    let line = "x".repeat(999);
    let input: String = (0..12_000).map(|_| format!("{line}\n")).collect();
    let out = client(&srv.url("/"), &["--quiet"], input.as_bytes());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout.len(), input.len());
    srv.stop();
}

/// With `--count`, the end of input does not end the session: the messages do.
#[test]
fn count_waits_for_its_messages_after_end_of_input() {
    let mut srv = Running::start(ServerConfig::default(), Echo);
    let out = client(&srv.url("/"), &["--count", "2"], b"one\ntwo\n");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");
    srv.stop();
}

/// `--log` takes module filters as RUST_LOG does, and refuses nonsense.
#[test]
fn log_takes_module_filters() {
    // Accepted: the run goes as far as listening (on a busy port: exit 1, not a usage error).
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out =
        Command::new(env!("CARGO_BIN_EXE_rfc6455")).args(["--log", "rfc6455=debug,warn", "echo", "--listen", &addr]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_rfc6455")).args(["--log", "rfc6455=loud", "echo", "--listen", &addr]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a log level"), "{out:?}");
}

/// The relay's startup line gives the chat page's address and the metrics address,
/// and both answer.
#[test]
fn the_relay_prints_where_its_page_and_metrics_are() {
    use common::net::{ServerProcess, http_get};
    let relay = ServerProcess::start(&["relay", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
    let page = relay.addr_after("chat page: http://");
    assert_eq!(page, relay.addr);
    assert!(relay.startup.contains(&format!("chat page: http://{page}/lobby")), "{}", relay.startup);
    assert_eq!(http_get(page, "/lobby").0, 200);
    let admin = relay.addr_after("metrics: http://");
    let (status, _, body) = http_get(admin, "/metrics");
    assert_eq!(status, 200);
    assert!(String::from_utf8(body).unwrap().contains("rfc6455_relay_rooms 0"));
    // --no-page: no page, and the startup line does not offer one.
    let bare = ServerProcess::start(&["relay", "--listen", "127.0.0.1:0", "--no-page"]);
    assert!(!bare.startup.contains("chat page"), "{}", bare.startup);
    assert_eq!(http_get(bare.addr, "/lobby").0, 426);
}

/// `--threads 3`: three loops on one port; clients that land on different loops share
/// a room, and the metrics sum every loop.
#[test]
fn the_relay_on_several_loops_shares_rooms() {
    use common::net::{ServerProcess, http_get, next_message};
    let relay = ServerProcess::start(&["relay", "--listen", "127.0.0.1:0", "--threads", "3", "--admin-listen", "127.0.0.1:0"]);
    assert!(relay.startup.contains("(3 loops)"), "{}", relay.startup);
    let url = format!("ws://{}/lobby", relay.addr);
    let mut clients: Vec<rfc6455::net::Client> = (0..12).map(|_| rfc6455::net::Client::connect_url(&url).unwrap()).collect();
    let admin = relay.addr_after("metrics: http://");
    let deadline = std::time::Instant::now() + WAIT;
    while !String::from_utf8(http_get(admin, "/metrics").2).unwrap().contains("rfc6455_relay_members 12\n") {
        assert!(std::time::Instant::now() < deadline, "12 members over the loops");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(200)); // interest reaches every loop (next turn of each)
    clients[0].send_text("to everyone").unwrap();
    for c in &mut clients[1..] {
        assert_eq!(next_message(c).1, b"to everyone");
    }
}
