//! `rfc6455 bench`, the load generator, run as a program: it checks the server's
//! handshake, says why when no connection opens, and sends what it negotiated.
#![cfg(feature = "cli")]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output};

use common::net::Running;
use rfc6455::Config;
use rfc6455::net::{Echo, Relay, ServerConfig};
use rfc6455::proto::deflate::DeflateConfig;

/// Runs `rfc6455 bench ARGS` for a short while and returns its output.
fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rfc6455"))
        .args(["--log", "error", "bench"])
        .args(args)
        .args(["-d", "0.3", "--warmup", "0.1", "-q"])
        .output()
        .expect("run rfc6455 bench")
}

/// The summary row: (open connections, messages, errors).
fn summary(out: &Output) -> (usize, u64, u64) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| Echo") || l.starts_with("| Relay") || l.starts_with("| Idle"))
        .unwrap_or_else(|| panic!("no summary row; stdout: {stdout}; stderr: {stderr}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    (cells[2].parse().unwrap(), cells[4].parse().unwrap(), cells[10].parse().unwrap())
}

/// A TCP server that answers every request head with `response` and closes.
fn fake_server(response: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let Some(_head) = read_head(&mut s) else { return };
                let _ = s.write_all(response);
                // Hold the socket open a little: a wrong answer must be caught by
                // checking it, not by the connection ending.
                std::thread::sleep(std::time::Duration::from_secs(2));
            });
        }
    });
    addr
}

#[test]
fn a_wrong_accept_key_opens_nothing_and_says_so() {
    // The accept of the RFC's sample key, whatever key the client sent.
    let addr = fake_server(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    );
    let out = bench(&["echo", "--url", &format!("ws://{addr}/"), "-c", "4"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "stdout: {}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains("no connection opened") && stderr.contains("Sec-WebSocket-Accept does not match"), "{stderr}");
}

#[test]
fn a_refusal_names_the_status() {
    let addr = fake_server(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
    let out = bench(&["echo", "--url", &format!("ws://{addr}/"), "-c", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("HTTP 403"), "{stderr}");
}

#[test]
fn echo_runs_against_the_echo_server() {
    let srv = Running::start(ServerConfig::default(), Echo);
    let out = bench(&["echo", "--url", &srv.url("/"), "-c", "4", "-n", "2", "-s", "16"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (open, messages, errors) = summary(&out);
    assert_eq!((open, errors), (4, 0));
    assert!(messages > 0);
}

fn deflate_server() -> ServerConfig {
    ServerConfig { engine: Config { deflate: Some(DeflateConfig::default()), ..Config::default() }, ..ServerConfig::default() }
}

#[test]
fn deflate_with_tiny_and_large_payloads() {
    // 4 bytes compress to more than 4; 64 KiB to far less (the old payload offset
    // arithmetic underflowed on one of them).
    let srv = Running::start(deflate_server(), Echo);
    for size in ["4", "65536"] {
        let out = bench(&["echo", "--url", &srv.url("/"), "-c", "2", "-n", "2", "-s", size, "--deflate"]);
        assert!(out.status.success(), "size {size}: {}", String::from_utf8_lossy(&out.stderr));
        let (open, messages, errors) = summary(&out);
        assert_eq!((open, errors), (2, 0), "size {size}");
        assert!(messages > 0, "size {size}");
    }
}

#[test]
fn deflate_refused_by_the_server_is_an_error() {
    let srv = Running::start(ServerConfig::default(), Echo);
    let out = bench(&["echo", "--url", &srv.url("/"), "-c", "2", "--deflate"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("did not accept permessage-deflate"), "{stderr}");
}

#[test]
fn relay_delivers_stamped_messages() {
    let srv = Running::start(ServerConfig::default(), Relay::new());
    let out = bench(&["relay", "--url", &srv.url("/room"), "-c", "5", "--senders", "2", "-n", "4", "-s", "64"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (open, deliveries, errors) = summary(&out);
    assert_eq!((open, errors), (5, 0));
    assert!(deliveries > 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Latencies come from the stamps: a p50 is printed.
    assert!(!stdout.lines().nth(2).unwrap().contains("| - |"), "{stdout}");
}

/// A raw fan-out as benches/peers' tcp_fanout is: answers the handshake, then writes
/// every byte read from one connection to every other one, so the receivers get the
/// sender's masked client frames. `clients` connections; a thread each.
fn masked_fanout(clients: usize) -> SocketAddr {
    use std::sync::{Arc, Mutex};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let open: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        for stream in listener.incoming().take(clients) {
            let Ok(mut s) = stream else { continue };
            let open = open.clone();
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let Some(head) = read_head(&mut s) else { return };
                let mut buf = [0u8; 4096];
                let text = String::from_utf8_lossy(&head).into_owned();
                let key = text
                    .lines()
                    .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-key")))
                    .map(|(_, v)| v.trim().to_owned())
                    .unwrap();
                let accept = rfc6455::proto::handshake::accept_key(key.as_bytes());
                let resp = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                let me = s.local_addr().ok().zip(s.peer_addr().ok());
                {
                    let mut all = open.lock().unwrap();
                    s.write_all(resp.as_bytes()).unwrap();
                    all.push(s.try_clone().unwrap());
                }
                loop {
                    let n = match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    for o in open.lock().unwrap().iter_mut() {
                        if o.local_addr().ok().zip(o.peer_addr().ok()) != me {
                            let _ = o.write_all(&buf[..n]);
                        }
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn relay_reads_masked_frames_only_when_told() {
    // Against a raw fan-out the stamps arrive masked: with --accept-masked they are
    // read (deliveries, latencies, no errors); without it the frames are refused.
    let url = format!("ws://{}/", masked_fanout(4));
    let out = bench(&["relay", "--url", &url, "-c", "4", "-n", "4", "-s", "64", "--accept-masked"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (open, deliveries, errors) = summary(&out);
    assert_eq!((open, errors), (4, 0));
    // The sender's window refills only if the stamps' sequence numbers were read.
    assert!(deliveries > 3 * 4, "{deliveries}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.lines().nth(2).unwrap().contains("| - |"), "{stdout}");

    let url = format!("ws://{}/", masked_fanout(4));
    let out = bench(&["relay", "--url", &url, "-c", "4", "-n", "4", "-s", "64"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("masked frame") && stderr.contains("--accept-masked"), "{stderr}");
    let (_, deliveries, errors) = summary(&out);
    assert_eq!((deliveries, errors), (0, 3));
}

#[test]
fn bad_arguments_are_refused_by_the_parser() {
    for args in [&["echo", "-c", "0"][..], &["echo", "-s", "0"], &["echo", "-d", "-1"], &["echo", "--warmup", "NaN"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_rfc6455")).arg("bench").args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("invalid value"), "{args:?}: {stderr}");
    }
}

/// Reads a request head (through its blank line) from `s`; `None` if it closes first.
fn read_head(s: &mut impl Read) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}
