//! Replays the fuzz seed corpus (`fuzz/seeds/<target>/`) and every input that once
//! crashed a target (`fuzz/regressions/<target>/`) through the same harnesses the
//! fuzzer runs, so plain `cargo test` guards against regressions without the fuzzer.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let result = std::panic::catch_unwind(|| run(&data));
            assert!(result.is_ok(), "{target}: {} fails", path.display());
            n += 1;
        }
    }
    assert!(n > 0, "no inputs for {target}");
}

#[test]
fn handshake_server() {
    replay("handshake_server", harness::handshake_server);
}

#[test]
fn handshake_client() {
    replay("handshake_client", harness::handshake_client);
}

#[test]
fn frames_server() {
    replay("frames_server", harness::frames_server);
}

#[test]
fn frames_deflate() {
    replay("frames_deflate", harness::frames_deflate);
}

#[test]
fn frames_client() {
    replay("frames_client", harness::frames_client);
}

#[test]
fn utf8() {
    replay("utf8", harness::utf8);
}

#[test]
fn mask() {
    replay("mask", harness::mask);
}

#[test]
fn roundtrip() {
    replay("roundtrip", harness::roundtrip);
}

#[test]
fn api_sequence() {
    replay("api_sequence", harness::api_sequence);
}

#[test]
fn proxy() {
    replay("proxy", harness::proxy);
}
