//! The client proxy step: see `harness::proxy`.
#![no_main]
#[path = "../harness.rs"]
mod harness;
libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::proxy(data));
