//! Micro-benchmarks of the sans-IO core: masking, the receive path, UTF-8 validation,
//! the handshake, and an in-memory echo against tungstenite in the same run.
//! Run: `cargo bench --bench core` (add `-- <filter>` to pick groups).

use std::hint::black_box;
use std::io::{self, Read, Write};
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rfc6455::proto::frame::{OpCode, encode_frame};
use rfc6455::proto::mask::{apply_mask, apply_mask_reference};
use rfc6455::proto::utf8::Utf8Validator;
use rfc6455::{Accept, Config, Connection, Event, MessageKind};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nConnection: Upgrade\r\nPragma: no-cache\r\nCache-Control: no-cache\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36\r\nUpgrade: websocket\r\nOrigin: https://example.com\r\nSec-WebSocket-Version: 13\r\nAccept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

// The integration tests' in-memory helpers (an opened server engine, ...).
#[path = "../tests/common/mod.rs"]
mod common;
use common::open_server;

fn masked_frames(kind: MessageKind, payload: &[u8], fragments: usize) -> Vec<u8> {
    let mut v = Vec::new();
    let step = payload.len().div_ceil(fragments).max(1);
    let chunks: Vec<&[u8]> = payload.chunks(step).collect();
    for (i, c) in chunks.iter().enumerate() {
        let op = if i == 0 { kind.opcode() } else { OpCode::Continuation };
        encode_frame(&mut v, i + 1 == chunks.len(), op, Some(KEY), c);
    }
    v
}

fn sizes() -> [(usize, &'static str); 4] {
    [(16, "16B"), (1024, "1KiB"), (64 * 1024, "64KiB"), (1 << 20, "1MiB")]
}

fn masking(c: &mut Criterion) {
    let mut g = c.benchmark_group("mask");
    for (n, name) in sizes() {
        let mut data = vec![0x55u8; n];
        g.throughput(Throughput::Bytes(n as u64));
        g.bench_with_input(BenchmarkId::new("fast", name), &n, |b, _| b.iter(|| apply_mask(black_box(&mut data), KEY, 1)));
        g.bench_with_input(BenchmarkId::new("reference", name), &n, |b, _| b.iter(|| apply_mask_reference(black_box(&mut data), KEY, 1)));
    }
    g.finish();
}

fn receive(c: &mut Criterion) {
    let mut g = c.benchmark_group("receive");
    for (n, name) in sizes() {
        let text: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
        g.throughput(Throughput::Bytes(n as u64));
        for (kind, kname) in [(MessageKind::Text, "text"), (MessageKind::Binary, "binary")] {
            for frags in [1usize, 4] {
                let bytes = masked_frames(kind, &text, frags);
                let id = BenchmarkId::new(format!("{kname}/{}", if frags == 1 { "whole" } else { "4-fragments" }), name);
                g.bench_with_input(id, &n, |b, _| {
                    let (mut s, now) = open_server(Config::default());
                    b.iter(|| {
                        s.handle_bytes(now, black_box(&bytes));
                        match s.poll_event() {
                            Some(Event::Text(t)) => s.recycle(t.into_bytes()),
                            Some(Event::Binary(v)) => s.recycle(v),
                            e => panic!("{e:?}"),
                        }
                    })
                });
            }
        }
    }
    g.finish();
}

fn utf8(c: &mut Criterion) {
    let mut g = c.benchmark_group("utf8");
    let ascii: Vec<u8> = (0..64 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let mixed: Vec<u8> = "Hello, κόσμε! Привет мир. 日本語のテキスト 🎉 ".repeat(1200).into_bytes()[..64 * 1024].to_vec();
    let mixed = String::from_utf8_lossy(&mixed).into_owned().into_bytes();
    for (name, data) in [("ascii-64KiB", &ascii), ("mixed-64KiB", &mixed)] {
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(BenchmarkId::new("incremental", name), |b| {
            b.iter(|| {
                let mut v = Utf8Validator::new();
                v.feed(black_box(data)).unwrap();
                v.finish().unwrap();
            })
        });
        g.bench_function(BenchmarkId::new("std", name), |b| b.iter(|| std::str::from_utf8(black_box(data)).unwrap().len()));
    }
    g.finish();
}

fn handshake(c: &mut Criterion) {
    c.bench_function("handshake/server-parse-and-accept", |b| {
        let now = Instant::now();
        b.iter(|| {
            let mut s = Connection::server(Config::default(), now);
            s.handle_bytes(now, black_box(REQUEST));
            let _ = s.poll_event();
            s.accept(now, Accept::new()).unwrap();
            black_box(s.output().len())
        })
    });
}

/// An in-memory stream for tungstenite: reads cycle through a buffer of whole frames,
/// writes go to a Vec that the benchmark clears.
struct Mem {
    input: Vec<u8>,
    pos: usize,
    out: Vec<u8>,
}

impl Read for Mem {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.input.len() {
            self.pos = 0;
        }
        let n = buf.len().min(self.input.len() - self.pos);
        buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Mem {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Echo of a batch of 16-byte text messages: receive masked frames, send echo frames.
fn echo(c: &mut Criterion) {
    const BATCH: usize = 256;
    let mut g = c.benchmark_group("echo-16B");
    g.throughput(Throughput::Elements(BATCH as u64));
    let one = masked_frames(MessageKind::Text, b"0123456789abcdef", 1);
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * BATCH).collect();
    g.bench_function("rfc6455", |b| {
        let (mut s, now) = open_server(Config::default());
        b.iter(|| {
            s.handle_bytes(now, black_box(&batch));
            while let Some(ev) = s.poll_event() {
                if let Event::Text(t) = ev {
                    s.send_text(&t).unwrap();
                    s.recycle(t.into_bytes());
                }
            }
            let n = s.bytes_to_write();
            black_box(s.output());
            s.consume_output(n);
        })
    });
    g.bench_function("tungstenite", |b| {
        use tungstenite::protocol::{Role, WebSocket};
        let mem = Mem { input: batch.clone(), pos: 0, out: Vec::new() };
        let mut ws = WebSocket::from_raw_socket(mem, Role::Server, None);
        b.iter(|| {
            for _ in 0..BATCH {
                let msg = ws.read().unwrap();
                ws.write(msg).unwrap();
            }
            ws.flush().unwrap();
            black_box(ws.get_ref().out.len());
            ws.get_mut().out.clear();
        })
    });
    g.finish();
}

/// Compression samples: chat/JSON-like text, structured binary, random binary.
#[cfg(feature = "deflate")]
fn samples() -> Vec<(&'static str, Vec<u8>)> {
    let json: Vec<u8> = (0..2000)
        .flat_map(|i| {
            format!(
                r#"{{"id":{i},"user":"user{}","room":"lobby","text":"message number {i} in the room","ts":{}}},"#,
                i % 37,
                1764158400000u64 + i * 17
            )
            .into_bytes()
        })
        .take(64 * 1024)
        .collect();
    let structured: Vec<u8> = (0..64 * 1024 / 16)
        .flat_map(|i: u32| [i.to_le_bytes(), (i * 3).to_le_bytes(), [1, 0, 0, 0], (i % 7).to_le_bytes()].concat())
        .collect();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let random: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    vec![("json-64KiB", json), ("structured-binary-64KiB", structured), ("random-64KiB", random)]
}

#[cfg(feature = "deflate")]
fn compression(c: &mut Criterion) {
    use rfc6455::proto::deflate::{Deflater, Inflater};
    let mut g = c.benchmark_group("deflate");
    for (name, data) in samples() {
        let mut d = Deflater::new(6, 15, true);
        let mut compressed = Vec::new();
        d.compress(&data, &mut compressed);
        eprintln!("deflate {name}: {} -> {} bytes, ratio {:.2}", data.len(), compressed.len(), data.len() as f64 / compressed.len() as f64);
        g.throughput(Throughput::Bytes(data.len() as u64));
        let mut out = Vec::new();
        g.bench_function(BenchmarkId::new("compress", name), |b| {
            b.iter(|| {
                out.clear();
                d.compress(black_box(&data), &mut out);
            })
        });
        let mut inf = Inflater::new(true);
        let mut plain = Vec::new();
        g.bench_function(BenchmarkId::new("inflate", name), |b| {
            b.iter(|| {
                plain.clear();
                inf.inflate(black_box(&compressed), &mut plain, 1 << 20).unwrap();
                inf.finish(&mut plain, 1 << 20).unwrap();
            })
        });
    }
    g.finish();
}

#[cfg(not(feature = "deflate"))]
fn compression(_: &mut Criterion) {}

criterion_group!(benches, masking, receive, utf8, handshake, echo, compression);
criterion_main!(benches);
