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

/// Runs `rfc6455 client ARGS URL` with `input` on stdin; bounded by `WAIT`.
fn client(url: &str, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rfc6455"))
        .args(["--log", "error", "client"])
        .args(args)
        .arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rfc6455 client");
    child.stdin.take().unwrap().write_all(input).unwrap();
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
