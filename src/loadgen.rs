//! `rfc6455 bench`: a WebSocket load generator (as `wrk` is for HTTP), on one thread.
//!
//! It is built to be cheap per message so that it measures the server, not itself:
//! frames are encoded once and the same bytes are written again and again (masked
//! with a fixed key: fine for a benchmark, never for a browser-facing client), server
//! frames are only delimited, never copied out or unmasked, and everything produced
//! by one read goes out in one write.
//!
//! Modes: `echo` (connections × messages in flight → msg/s, MB/s, round-trip
//! percentiles), `relay` (N clients in one room, S of them sending → deliveries/s and
//! delivery latency), `idle` (open and hold N connections).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rfc6455::proto::frame::{OpCode, decode_header, encode_frame};
use rfc6455::{MessageKind, Url};

/// Fixed masking key of the generator's frames.
const KEY: [u8; 4] = [0x5a, 0xc3, 0x3c, 0xa5];

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Echo,
    Relay,
    Idle,
}

/// Load parameters.
#[derive(Clone, Debug)]
pub struct Params {
    pub mode: Mode,
    pub url: String,
    pub connections: usize,
    pub in_flight: usize,
    pub size: usize,
    pub senders: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub kind: MessageKind,
    pub quiet: bool,
    /// The server's process id: its CPU time and memory are sampled from /proc.
    pub server_pid: Option<u32>,
    /// Offer permessage-deflate (without client context takeover, so one compressed
    /// frame can be sent again and again) and send compressed messages.
    pub deflate: bool,
}

/// Results of one run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub elapsed: Duration,
    pub messages: u64,
    pub bytes: u64,
    pub errors: u64,
    pub open: usize,
    pub latencies_us: Vec<u32>,
    pub connect_time: Duration,
    /// Server CPU time (all threads) during the measured window.
    pub server_cpu: Option<Duration>,
    /// Server resident memory before connecting and with every connection open.
    pub server_rss: Option<(u64, u64)>,
}

/// CPU time of every thread of `pid`, from /proc/PID/task/*/schedstat (nanoseconds).
fn process_cpu(pid: u32) -> Option<Duration> {
    let mut total = 0u64;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = entry.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).ok()?;
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// Resident memory of `pid` in bytes, from /proc/PID/status.
fn process_rss(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

impl Report {
    fn percentile(&self, p: f64) -> Option<f64> {
        if self.latencies_us.is_empty() {
            return None;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        Some(f64::from(self.latencies_us[i]) / 1000.0)
    }

    /// Prints the summary table.
    pub fn print(&mut self, p: &Params) {
        self.latencies_us.sort_unstable();
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let what = match p.mode {
            Mode::Echo => "messages",
            Mode::Relay => "deliveries",
            Mode::Idle => "connections",
        };
        let fmt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
        println!("| mode | connections | size | {what} | {what}/s | MB/s | p50 ms | p99 ms | p99.9 ms | errors |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {:?} | {} | {} | {} | {:.0} | {:.1} | {} | {} | {} | {} |",
            p.mode,
            self.open,
            p.size,
            self.messages,
            self.messages as f64 / secs,
            self.bytes as f64 / secs / 1e6,
            fmt(self.percentile(0.5)),
            fmt(self.percentile(0.99)),
            fmt(self.percentile(0.999)),
            self.errors
        );
        if let Some(cpu) = self.server_cpu {
            let c = cpu.as_secs_f64();
            println!(
                "server CPU {:.3} s over {:.3} s ({:.0} %): {:.0} {what} per server CPU-second",
                c,
                secs,
                100.0 * c / secs,
                if c > 0.0 { self.messages as f64 / c } else { 0.0 }
            );
        }
        if p.mode == Mode::Idle {
            println!("opened {} connections in {:.3} s", self.open, self.connect_time.as_secs_f64());
            if let Some((before, after)) = self.server_rss {
                let per = after.saturating_sub(before) as f64 / self.open.max(1) as f64;
                println!(
                    "server RSS {:.1} MiB -> {:.1} MiB: {:.0} bytes per open connection",
                    before as f64 / 1048576.0,
                    after as f64 / 1048576.0,
                    per
                );
            }
        }
    }
}

#[derive(PartialEq, Eq)]
enum Phase {
    Connecting,
    Handshake,
    Open,
    Dead,
}

struct Conn {
    stream: TcpStream,
    phase: Phase,
    rbuf: Vec<u8>,
    rpos: usize,
    out: Vec<u8>,
    out_pos: usize,
    sent: VecDeque<Instant>,
    sender: bool,
    want_write: bool,
}

impl Conn {
    fn queue(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Writes what is queued; false if the connection died.
    fn flush(&mut self) -> bool {
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return false,
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        self.out.clear();
        self.out_pos = 0;
        true
    }
}

fn request(url: &Url, deflate: bool) -> Vec<u8> {
    let ext = if deflate { "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n" } else { "" };
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n",
        url.resource,
        url.host_header()
    )
    .into_bytes()
}

/// A payload of `size` bytes that looks like chat or JSON text (compressible, not trivial).
fn sample_payload(size: usize) -> Vec<u8> {
    let text = br#"{"user":"ann","room":"lobby","text":"hello everyone, the match starts in five minutes","ts":1764158400123},"#;
    text.iter().copied().cycle().take(size).collect()
}

/// Runs the load and returns its report.
pub fn run(p: &Params) -> io::Result<Report> {
    let url = Url::parse(&p.url).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    if url.secure {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "wss:// is not supported"));
    }
    let addr: SocketAddr = (url.host.as_str(), url.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address for host"))?;
    let req = request(&url, p.deflate);
    if p.deflate && p.mode == Mode::Relay {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "--deflate is for echo and idle (relay payloads carry raw timestamps)"));
    }
    let rss_before = p.server_pid.and_then(process_rss);
    let mut cpu_at_start = None;
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut conns: Vec<Conn> = Vec::with_capacity(p.connections);
    let start_connect = Instant::now();
    for i in 0..p.connections {
        let mut stream = TcpStream::connect(addr)?;
        poll.registry().register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE)?;
        conns.push(Conn {
            stream,
            phase: Phase::Connecting,
            rbuf: Vec::new(),
            rpos: 0,
            out: Vec::new(),
            out_pos: 0,
            sent: VecDeque::new(),
            sender: p.mode == Mode::Relay && i < p.senders,
            want_write: true,
        });
    }

    // Frames are built once: a payload of `size` bytes, masked (and compressed once,
    // without context, with --deflate).
    let mut frame = Vec::new();
    let payload = if p.deflate { sample_payload(p.size) } else { vec![b'x'; p.size] };
    if p.deflate {
        let mut compressed = Vec::new();
        rfc6455::proto::deflate::Deflater::new(6, 15, true).compress(&payload, &mut compressed);
        rfc6455::proto::frame::encode_frame_rsv(&mut frame, true, 0b100, p.kind.opcode(), Some(KEY), &compressed);
    } else {
        encode_frame(&mut frame, true, p.kind.opcode(), Some(KEY), &payload);
    }
    let frame_payload_offset = frame.len() - p.size;
    let mut rbuf = vec![0u8; 256 * 1024];
    let mut report = Report::default();
    let mut open = 0usize;
    let mut dead = 0usize;
    let connect_deadline = Instant::now() + Duration::from_secs(30);
    let mut measuring = false;
    let mut measure_start = Instant::now();
    let mut run_end: Option<Instant> = None;
    let mut last_progress = Instant::now();
    let mut last_count = 0u64;
    let recipients = (p.connections.saturating_sub(1)) as u64;
    // Relay: a sender may have `in_flight` messages not yet delivered everywhere.
    let mut relay_window: Vec<VecDeque<u64>> = vec![VecDeque::new(); p.senders.max(1)];
    let mut relay_seq = 0u64;
    let mut deliveries_per_msg: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    let epoch = Instant::now();

    loop {
        let now = Instant::now();
        if let Some(end) = run_end {
            if now >= end {
                break;
            }
        } else if open + dead == p.connections {
            // All connected: warm up, then measure.
            if open == 0 {
                return Err(io::Error::new(io::ErrorKind::ConnectionRefused, "no connection opened"));
            }
            report.connect_time = now - start_connect;
            measure_start = now + p.warmup;
            run_end = Some(measure_start + p.duration);
            if !p.quiet {
                eprintln!(
                    "{open} connections open in {:.3} s; running {:?} for {:?}",
                    report.connect_time.as_secs_f64(),
                    p.mode,
                    p.duration
                );
            }
            // Start the traffic.
            for (i, c) in conns.iter_mut().enumerate() {
                if c.phase != Phase::Open {
                    continue;
                }
                match p.mode {
                    Mode::Echo => {
                        for _ in 0..p.in_flight {
                            c.queue(&frame);
                            c.sent.push_back(now);
                        }
                    }
                    Mode::Relay if c.sender => {
                        for _ in 0..p.in_flight {
                            relay_seq += 1;
                            queue_stamped(c, &frame, frame_payload_offset, epoch, relay_seq);
                            relay_window[i].push_back(relay_seq);
                            deliveries_per_msg.insert(relay_seq, 0);
                        }
                    }
                    _ => {}
                }
                if !c.flush() {
                    c.phase = Phase::Dead;
                    report.errors += 1;
                }
            }
        } else if now >= connect_deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("only {open} of {} connections opened", p.connections)));
        }
        if !measuring && run_end.is_some() && now >= measure_start {
            measuring = true;
            cpu_at_start = p.server_pid.and_then(process_cpu);
            if let (Some(pid), Some(before)) = (p.server_pid, rss_before) {
                report.server_rss = process_rss(pid).map(|after| (before, after));
            }
            report.messages = 0;
            report.bytes = 0;
            report.latencies_us.clear();
            last_count = 0;
        }
        if !p.quiet && now - last_progress >= Duration::from_secs(1) && measuring {
            let rate = (report.messages - last_count) as f64 / (now - last_progress).as_secs_f64();
            eprintln!(
                "  t={:.0}s {:.0} {}/s",
                (now - measure_start).as_secs_f64(),
                rate,
                if p.mode == Mode::Relay { "deliveries" } else { "msg" }
            );
            last_progress = now;
            last_count = report.messages;
        }
        let timeout = run_end.map_or(Duration::from_millis(100), |e| e.saturating_duration_since(now).min(Duration::from_millis(100)));
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        for ev in events.iter() {
            let i = ev.token().0;
            let c = &mut conns[i];
            if c.phase == Phase::Dead {
                continue;
            }
            if c.phase == Phase::Connecting && (ev.is_writable() || ev.is_readable()) {
                if c.stream.peer_addr().is_err() {
                    if ev.is_error() || ev.is_write_closed() {
                        c.phase = Phase::Dead;
                        dead += 1;
                        report.errors += 1;
                    }
                    continue;
                }
                let _ = c.stream.set_nodelay(true);
                c.phase = Phase::Handshake;
                c.queue(&req);
            }
            if ev.is_writable() && !c.flush() {
                kill(c, &mut open, &mut dead, &mut report);
                continue;
            }
            if !ev.is_readable() {
                continue;
            }
            // Read everything there is.
            loop {
                match c.stream.read(&mut rbuf) {
                    Ok(0) => {
                        kill(c, &mut open, &mut dead, &mut report);
                        break;
                    }
                    Ok(n) => c.rbuf.extend_from_slice(&rbuf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        kill(c, &mut open, &mut dead, &mut report);
                        break;
                    }
                }
            }
            if c.phase == Phase::Dead {
                continue;
            }
            if c.phase == Phase::Handshake {
                let Some(end) = c.rbuf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                if !c.rbuf.starts_with(b"HTTP/1.1 101") {
                    eprintln!("handshake refused: {}", String::from_utf8_lossy(&c.rbuf[..end]).lines().next().unwrap_or(""));
                    c.phase = Phase::Dead;
                    dead += 1;
                    report.errors += 1;
                    continue;
                }
                c.rpos = end + 4;
                c.phase = Phase::Open;
                open += 1;
                report.open = open;
            }
            // Delimit the frames that are complete.
            let mut got = 0u64;
            loop {
                let avail = &c.rbuf[c.rpos..];
                let Ok(Some((h, n))) = decode_header(avail) else { break };
                let len = h.payload_len as usize;
                if avail.len() < n + len {
                    break;
                }
                match h.opcode {
                    OpCode::Text | OpCode::Binary | OpCode::Continuation if h.fin => {
                        got += 1;
                        if measuring {
                            report.bytes += len as u64;
                        }
                        match p.mode {
                            Mode::Echo => {
                                if let Some(t) = c.sent.pop_front() {
                                    if measuring {
                                        report.latencies_us.push((now - t).as_micros().min(u128::from(u32::MAX)) as u32);
                                    }
                                }
                            }
                            Mode::Relay if len >= 16 => {
                                let pl = &avail[n..n + 16];
                                let ts = u64::from_le_bytes(pl[..8].try_into().expect("8 bytes"));
                                let seq = u64::from_le_bytes(pl[8..16].try_into().expect("8 bytes"));
                                if measuring {
                                    let sent = epoch + Duration::from_nanos(ts);
                                    report.latencies_us.push((now - sent).as_micros().min(u128::from(u32::MAX)) as u32);
                                }
                                if let Some(d) = deliveries_per_msg.get_mut(&seq) {
                                    *d += 1;
                                }
                            }
                            _ => {}
                        }
                    }
                    OpCode::Close => {
                        kill(c, &mut open, &mut dead, &mut report);
                        break;
                    }
                    _ => {}
                }
                c.rpos += n + len;
            }
            if c.phase == Phase::Dead {
                continue;
            }
            if c.rpos == c.rbuf.len() {
                c.rbuf.clear();
                c.rpos = 0;
            } else if c.rpos > 64 * 1024 {
                c.rbuf.drain(..c.rpos);
                c.rpos = 0;
            }
            if measuring {
                report.messages += got;
            }
            if p.mode == Mode::Echo && run_end.is_some() {
                for _ in 0..got {
                    c.queue(&frame);
                    c.sent.push_back(now);
                }
            }
            if !c.flush() {
                kill(c, &mut open, &mut dead, &mut report);
            }
        }
        // Relay senders: refill windows with messages delivered everywhere.
        if p.mode == Mode::Relay && run_end.is_some() {
            for s in 0..p.senders.min(conns.len()) {
                let mut freed = 0;
                while let Some(&seq) = relay_window[s].front() {
                    if deliveries_per_msg.get(&seq).copied().unwrap_or(recipients) >= recipients {
                        deliveries_per_msg.remove(&seq);
                        relay_window[s].pop_front();
                        freed += 1;
                    } else {
                        break;
                    }
                }
                let c = &mut conns[s];
                if c.phase != Phase::Open || freed == 0 {
                    continue;
                }
                for _ in 0..freed {
                    relay_seq += 1;
                    queue_stamped(c, &frame, frame_payload_offset, epoch, relay_seq);
                    relay_window[s].push_back(relay_seq);
                    deliveries_per_msg.insert(relay_seq, 0);
                }
                if !c.flush() {
                    kill(c, &mut open, &mut dead, &mut report);
                }
            }
        }
        // Keep WRITABLE interest only where output is pending.
        for (i, c) in conns.iter_mut().enumerate() {
            let pending = c.out_pos < c.out.len() || c.phase == Phase::Connecting;
            if pending != c.want_write && c.phase != Phase::Dead {
                let interest = if pending { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
                let _ = poll.registry().reregister(&mut c.stream, Token(i), interest);
                c.want_write = pending;
            }
        }
    }
    report.elapsed = if measuring { Instant::now() - measure_start } else { Duration::ZERO };
    if let (Some(pid), Some(start)) = (p.server_pid, cpu_at_start) {
        report.server_cpu = process_cpu(pid).map(|end| end.saturating_sub(start));
    }
    report.open = open;
    // Close politely: a close frame each, then drop.
    let mut close = Vec::new();
    encode_frame(&mut close, true, OpCode::Close, Some(KEY), &[0x03, 0xe8]);
    for c in &mut conns {
        if c.phase == Phase::Open {
            c.queue(&close);
            let _ = c.flush();
        }
    }
    Ok(report)
}

fn kill(c: &mut Conn, open: &mut usize, dead: &mut usize, report: &mut Report) {
    if c.phase == Phase::Open {
        *open -= 1;
    }
    if c.phase != Phase::Dead {
        *dead += 1;
        report.errors += 1;
    }
    c.phase = Phase::Dead;
}

/// Queues `frame` with its first 16 payload bytes set to (send time, sequence number).
fn queue_stamped(c: &mut Conn, frame: &[u8], payload_at: usize, epoch: Instant, seq: u64) {
    let start = c.out.len();
    c.out.extend_from_slice(frame);
    let ts = epoch.elapsed().as_nanos() as u64;
    let mut stamp = [0u8; 16];
    stamp[..8].copy_from_slice(&ts.to_le_bytes());
    stamp[8..].copy_from_slice(&seq.to_le_bytes());
    let n = stamp.len().min(frame.len() - payload_at);
    for (k, b) in stamp[..n].iter().enumerate() {
        // The payload is masked from its first byte with KEY.
        c.out[start + payload_at + k] = b ^ KEY[k & 3];
    }
}
