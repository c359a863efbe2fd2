//! Heap allocations per message in steady state, counted by a counting global
//! allocator (per thread, so only the measured thread is counted).
//! Run: `cargo bench --bench allocs`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rfc6455::net::{Echo, Handler, Relay, Server, ServerConfig};
use rfc6455::proto::frame::decode_header;

use rfc6455::proto::frame::{OpCode, encode_frame};
use rfc6455::{Config, Connection, Event, MessageKind, SharedFrame};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static SERVER_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Allocations made on server threads (those that set `SERVER_THREAD`).
static SERVER_ALLOCS: AtomicU64 = AtomicU64::new(0);

fn count() {
    ALLOCS.with(|a| a.set(a.get() + 1));
    if SERVER_THREAD.with(Cell::get) {
        SERVER_ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

// The integration tests' helpers: an opened server engine.
#[path = "../tests/common/mod.rs"]
mod common;

fn open_server(_now: Instant) -> Connection {
    common::open_server(Config::default()).0
}

fn frames(n: usize, size: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for _ in 0..n {
        encode_frame(&mut v, true, OpCode::Text, Some([1, 2, 3, 4]), &vec![b'x'; size]);
    }
    v
}

/// Echo through the engine: receive, hand the message to the app, send it back, recycle.
fn echo(size: usize) -> f64 {
    let now = Instant::now();
    let mut s = open_server(now);
    let batch = frames(64, size);
    let run = |s: &mut Connection| {
        s.handle_bytes(now, &batch);
        while let Some(ev) = s.poll_event() {
            if let Event::Text(t) = ev {
                s.send_text(&t).unwrap();
                s.recycle(t.into_bytes());
            }
        }
        s.consume_output(usize::MAX);
    };
    for _ in 0..100 {
        run(&mut s);
    }
    let before = allocs();
    let rounds = 1000;
    for _ in 0..rounds {
        run(&mut s);
    }
    (allocs() - before) as f64 / (rounds * 64) as f64
}

/// Relay fan-out through engines: one sender, 100 recipients, frames encoded once and
/// reused from a small pool once every recipient has written them.
fn relay(size: usize) -> f64 {
    let now = Instant::now();
    let mut sender = open_server(now);
    let mut recipients: Vec<Connection> = (0..100).map(|_| open_server(now)).collect();
    let batch = frames(16, size);
    let mut pool: Vec<SharedFrame> = Vec::new();
    let run = |sender: &mut Connection, recipients: &mut [Connection], pool: &mut Vec<SharedFrame>| {
        sender.handle_bytes(now, &batch);
        while let Some(ev) = sender.poll_event() {
            if let Event::Text(t) = ev {
                let frame = match pool.iter_mut().position(|f| f.reuse(MessageKind::Text, t.as_bytes())) {
                    Some(i) => pool[i].clone(),
                    None => {
                        let f = SharedFrame::new(MessageKind::Text, t.as_bytes());
                        pool.push(f.clone());
                        f
                    }
                };
                for r in recipients.iter_mut() {
                    r.send_shared(&frame).unwrap();
                }
                sender.recycle(t.into_bytes());
            }
        }
        for r in recipients.iter_mut() {
            r.consume_output(usize::MAX);
        }
    };
    for _ in 0..100 {
        run(&mut sender, &mut recipients, &mut pool);
    }
    let before = allocs();
    let rounds = 200;
    for _ in 0..rounds {
        run(&mut sender, &mut recipients, &mut pool);
    }
    (allocs() - before) as f64 / (rounds * 16) as f64
}

/// Starts a server whose thread's allocations are counted.
fn start<H: Handler + Send + 'static>(handler: H) -> (std::net::SocketAddr, rfc6455::net::ShutdownHandle, std::thread::JoinHandle<()>) {
    let mut server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::default(), handler).unwrap();
    let (addr, handle) = (server.local_addr(), server.shutdown_handle());
    let t = std::thread::spawn(move || {
        SERVER_THREAD.with(|c| c.set(true));
        server.run().unwrap();
    });
    (addr, handle, t)
}

fn raw_client(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(REQUEST).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    s
}

/// Reads exactly `n` frames from `s`.
fn read_frames(s: &mut TcpStream, n: usize, buf: &mut Vec<u8>) {
    let mut got = 0;
    let mut chunk = [0u8; 65536];
    loop {
        while let Ok(Some((h, hl))) = decode_header(buf) {
            let len = h.payload_len as usize;
            if buf.len() < hl + len {
                break;
            }
            buf.drain(..hl + len);
            got += 1;
        }
        if got >= n {
            return;
        }
        let k = s.read(&mut chunk).unwrap();
        assert!(k > 0);
        buf.extend_from_slice(&chunk[..k]);
    }
}

/// The mio echo server over loopback: allocations on the server thread per message.
fn server_echo(size: usize) -> f64 {
    let (addr, handle, t) = start(Echo);
    let mut c = raw_client(addr);
    let batch = frames(16, size);
    let mut buf = Vec::new();
    let mut round = |c: &mut TcpStream| {
        c.write_all(&batch).unwrap();
        read_frames(c, 16, &mut buf);
    };
    for _ in 0..200 {
        round(&mut c);
    }
    let before = SERVER_ALLOCS.load(Ordering::Relaxed);
    let rounds = 2000;
    for _ in 0..rounds {
        round(&mut c);
    }
    let per = (SERVER_ALLOCS.load(Ordering::Relaxed) - before) as f64 / (rounds * 16) as f64;
    drop(c);
    handle.shutdown();
    t.join().unwrap();
    per
}

/// The mio relay over loopback, one sender and 10 recipients.
fn server_relay(size: usize) -> f64 {
    let (addr, handle, t) = start(Relay::new());
    let mut sender = raw_client(addr);
    let mut recipients: Vec<TcpStream> = (0..10).map(|_| raw_client(addr)).collect();
    let batch = frames(16, size.max(1));
    let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); recipients.len()];
    let mut round = |sender: &mut TcpStream, recipients: &mut [TcpStream]| {
        sender.write_all(&batch).unwrap();
        for (r, b) in recipients.iter_mut().zip(bufs.iter_mut()) {
            read_frames(r, 16, b);
        }
    };
    for _ in 0..200 {
        round(&mut sender, &mut recipients);
    }
    let before = SERVER_ALLOCS.load(Ordering::Relaxed);
    let rounds = 1000;
    for _ in 0..rounds {
        round(&mut sender, &mut recipients);
    }
    let per = (SERVER_ALLOCS.load(Ordering::Relaxed) - before) as f64 / (rounds * 16) as f64;
    drop((sender, recipients));
    handle.shutdown();
    t.join().unwrap();
    per
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("| path | message | heap allocations per message |");
    println!("|---|---|---|");
    for size in [16, 1024, 60 * 1024] {
        println!("| engine echo | {size} B | {:.4} |", echo(size));
    }
    for size in [64, 1024] {
        println!("| engine relay, 100 recipients | {size} B | {:.4} |", relay(size));
    }
    for size in [16, 1024] {
        println!("| mio echo server (loopback) | {size} B | {:.4} |", server_echo(size));
    }
    for size in [64, 1024] {
        println!("| mio relay server, 10 recipients (loopback) | {size} B | {:.4} |", server_relay(size));
    }
}
