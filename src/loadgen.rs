//! `rfc6455 bench`: a WebSocket load generator (as `wrk` is for HTTP), on one thread.
//!
//! It is built to be cheap per message so that it measures the server, not itself:
//! frames are encoded once and the same bytes are written again and again (masked
//! with a fixed key: fine for a benchmark, never for a browser-facing client), server
//! frames are only delimited, never copied out or unmasked (relay reads a 16-byte
//! stamp; masked server frames are refused unless `--accept-masked`, for the TCP
//! floors that pass client frames on), and everything produced by one read goes out
//! in one write. The opening handshake and the framing are the
//! library's own ([`ClientHandshake`], [`encode_frame`], [`decode_header`]): each
//! connection sends a random key and checks the server's `Sec-WebSocket-Accept`.
//!
//! Modes: `echo` (connections × messages in flight → msg/s, MB/s, round-trip
//! percentiles), `relay` (N clients in one room, S of them sending → deliveries/s and
//! delivery latency), `idle` (open and hold N connections).
//!
//! A run is four parts: [`Bench::connect_all`] opens every connection, the traffic
//! starts ([`Bench::start_traffic`]), [`Bench::drive`] turns the event loop (echo:
//! [`Bench::drive_echo`], relay: [`Bench::drive_relay`] and [`Bench::refill_relay`])
//! while the [`Meter`] warms up and measures, and [`Bench::finish`] reports.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rfc6455::net::{TlsClientOptions, TlsConnector};
use rfc6455::proto::deflate::{DeflateConfig, Deflater};
use rfc6455::proto::frame::{OpCode, decode_header, encode_frame, encode_frame_rsv};
use rfc6455::proto::handshake::ClientHandshake;
use rfc6455::{ClientRequest, MessageKind};
use rustls::pki_types::ServerName;

/// Masking key of every frame the generator sends. RFC 6455 §5.3 asks for a fresh,
/// unpredictable key per frame so that script in a browser cannot choose the bytes an
/// intermediary sees; a benchmark client runs no foreign script and must not spend its
/// time masking, so its frames are masked once, with this key, and reused.
const KEY: [u8; 4] = [0x5a, 0xc3, 0x3c, 0xa5];

/// How long all connections together may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait in one poll, so that progress lines and the end come on time.
const TICK: Duration = Duration::from_millis(100);

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Each connection keeps N messages in flight to an echo server.
    Echo,
    /// N clients in one relay room, S of them sending.
    Relay,
    /// Open N connections and hold them.
    Idle,
}

/// Load parameters: the arguments of `rfc6455 bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct Params {
    /// What to measure.
    #[arg(value_enum)]
    pub mode: Mode,
    /// Server URL.
    #[arg(long, default_value = "ws://127.0.0.1:9002/")]
    pub url: String,
    /// Connections (relay: clients in the room; idle: connections to hold).
    #[arg(long, short = 'c', default_value_t = 64, value_parser = at_least_one)]
    pub connections: usize,
    /// Messages in flight per connection (relay: per sender).
    #[arg(long, short = 'n', default_value_t = 16, value_parser = at_least_one)]
    pub in_flight: usize,
    /// Payload bytes per message (relay: at least 16, for the timestamp).
    #[arg(long, short = 's', default_value_t = 16, value_parser = at_least_one)]
    pub size: usize,
    /// Relay: how many of the clients send.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub senders: usize,
    /// Seconds to measure (idle: to hold the connections).
    #[arg(long, short = 'd', default_value = "5", value_parser = seconds, allow_negative_numbers = true)]
    pub duration: Duration,
    /// Seconds of traffic before measuring.
    #[arg(long, default_value = "1", value_parser = seconds, allow_negative_numbers = true)]
    pub warmup: Duration,
    /// Send binary messages (default text; relay always sends binary).
    #[arg(long)]
    pub binary: bool,
    /// No progress lines, only the summary.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Process id of the server (same machine): report its CPU time and memory.
    /// Repeatable (relay processes and their broker): CPU time summed, memory of the first.
    #[arg(long)]
    pub server_pid: Vec<u32>,
    /// Relay: the clients that do not send connect here instead of --url (another
    /// relay process sharing the room through a broker): every delivery crosses it.
    /// The traffic starts half a second after the connections open, once the other
    /// relay has subscribed to the room.
    #[arg(long, value_name = "URL")]
    pub receivers_url: Option<String>,
    /// Offer permessage-deflate and send compressed messages (echo, idle).
    #[arg(long)]
    pub deflate: bool,
    /// wss://: trust the CA certificates in this PEM file (repeatable).
    #[arg(long = "ca", value_name = "FILE")]
    pub ca_files: Vec<std::path::PathBuf>,
    /// wss://: accept any server certificate (a benchmark against a test certificate).
    #[arg(long)]
    pub insecure: bool,
    /// Accept masked server frames (RFC 6455 §5.1 has a client close on them): for
    /// the TCP floors in benches/peers, which send the clients' own frames back
    /// (echo) or on to the others (relay). Relay stamps are unmasked to be read.
    #[arg(long)]
    pub accept_masked: bool,
}

/// A count that must be at least 1.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A duration in seconds, fractions allowed (`5`, `0.2`).
fn seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s} is not a finite, non-negative number of seconds"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s} seconds: {e}"))
}

impl Params {
    /// Applies the rules of each mode: relay payloads are binary and at least 16
    /// bytes (they carry a timestamp and a sequence number), at most every client
    /// sends, and idle has no warm-up.
    pub fn resolved(mut self) -> Self {
        if self.mode == Mode::Relay {
            self.size = self.size.max(16);
            self.binary = true;
        }
        self.senders = self.senders.min(self.connections);
        if self.mode == Mode::Idle {
            self.warmup = Duration::ZERO;
        }
        self
    }

    fn kind(&self) -> MessageKind {
        if self.binary || self.mode == Mode::Relay { MessageKind::Binary } else { MessageKind::Text }
    }
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
    /// Idle: server resident memory and open connections after the first half was
    /// opened (the second half's cost is the marginal one: code paths, pools and
    /// allocator high-water marks are paid by the first).
    pub server_rss_half: Option<(u64, usize)>,
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

/// CPU time of all of `pids` (none if any is unreadable, or there are none).
fn servers_cpu(pids: &[u32]) -> Option<Duration> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| process_cpu(pid)).sum()
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
                if let Some((half, open_half)) = self.server_rss_half.filter(|&(_, n)| self.open > n) {
                    let added = self.open - open_half;
                    println!(
                        "second half: {:.1} MiB -> {:.1} MiB for {} more: {:.0} bytes per added connection",
                        half as f64 / 1048576.0,
                        after as f64 / 1048576.0,
                        added,
                        after.saturating_sub(half) as f64 / added as f64
                    );
                }
            }
        }
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

/// Where to connect and what to ask for.
struct Target {
    addr: SocketAddr,
    request: ClientRequest,
    deflate: Option<DeflateConfig>,
    /// wss://: the client TLS configuration.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    fn new(p: &Params, url: &str) -> io::Result<Target> {
        let request = ClientRequest::new(url).map_err(|e| invalid(e.to_string()))?;
        let url = request.url();
        if !url.secure && (p.insecure || !p.ca_files.is_empty()) {
            return Err(invalid("--ca and --insecure are for wss:// URLs"));
        }
        if p.insecure && !p.ca_files.is_empty() {
            return Err(invalid("--insecure accepts any certificate: it does not go with --ca"));
        }
        let tls = if url.secure {
            if p.insecure {
                eprintln!("warning: --insecure: the server's certificate is not checked");
            }
            let mut opts = TlsClientOptions::new().insecure(p.insecure);
            for ca in &p.ca_files {
                opts = opts.ca_file(ca);
            }
            Some(TlsConnector::new(&opts).map_err(|e| invalid(e.to_string()))?.rustls_config())
        } else {
            None
        };
        if p.deflate && p.mode == Mode::Relay {
            return Err(invalid("--deflate is for echo and idle (relay payloads carry raw timestamps)"));
        }
        let addr = (url.host.as_str(), url.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address for host"))?;
        // Without client context takeover every message is compressed from scratch,
        // so one compressed frame can be sent again and again.
        let deflate = p.deflate.then(|| DeflateConfig { client_no_context_takeover: true, ..DeflateConfig::default() });
        Ok(Target { addr, request, deflate, tls })
    }

    /// A fresh handshake: a random key for every connection.
    fn handshake(&self) -> Box<ClientHandshake> {
        let hs = ClientHandshake::with_random_key(&self.request);
        Box::new(match &self.deflate {
            Some(cfg) => hs.offer_deflate(cfg),
            None => hs,
        })
    }
}

/// A payload of `size` bytes that looks like chat or JSON text (compressible, not trivial).
fn sample_payload(size: usize) -> Vec<u8> {
    let text = br#"{"user":"ann","room":"lobby","text":"hello everyone, the match starts in five minutes","ts":1764158400123},"#;
    text.iter().copied().cycle().take(size).collect()
}

/// The data frame every message is: encoded (masked with [`KEY`], and compressed with
/// `--deflate`) once, then copied into the output again and again.
#[derive(Debug)]
struct Frame {
    bytes: Vec<u8>,
    /// Where the payload starts: the length of the encoded header.
    payload_at: usize,
}

impl Frame {
    /// `deflate_bits`: the compression window the server allowed, when it agreed to
    /// permessage-deflate; the message is then compressed once, without context.
    fn build(p: &Params, deflate_bits: Option<u8>) -> Frame {
        let mut bytes = Vec::new();
        let opcode = p.kind().opcode();
        match deflate_bits {
            Some(bits) => {
                let mut compressed = Vec::new();
                Deflater::new(DeflateConfig::default().level, bits, true).compress(&sample_payload(p.size), &mut compressed);
                encode_frame_rsv(&mut bytes, true, 0b100, opcode, Some(KEY), &compressed);
            }
            None => encode_frame(&mut bytes, true, opcode, Some(KEY), &vec![b'x'; p.size]),
        }
        let Ok(Some((header, payload_at))) = decode_header(&bytes) else { unreachable!("a frame we encoded has a header") };
        debug_assert_eq!(payload_at as u64 + header.payload_len, bytes.len() as u64);
        Frame { bytes, payload_at }
    }

    /// Appends the frame with its first 16 payload bytes (fewer if the payload is
    /// shorter) set to the send time and the sequence number, for relay latency.
    fn push_stamped(&self, out: &mut Vec<u8>, nanos: u64, seq: u64) {
        let start = out.len() + self.payload_at;
        out.extend_from_slice(&self.bytes);
        let mut stamp = [0u8; 16];
        stamp[..8].copy_from_slice(&nanos.to_le_bytes());
        stamp[8..].copy_from_slice(&seq.to_le_bytes());
        let payload = &mut out[start..];
        let n = stamp.len().min(payload.len());
        // The payload is masked from its first byte with KEY.
        for (k, (dst, b)) in payload[..n].iter_mut().zip(stamp).enumerate() {
            *dst = b ^ KEY[k & 3];
        }
    }
}

/// Bytes read from the server and not yet delimited into frames.
#[derive(Default)]
struct Inbox {
    buf: Vec<u8>,
    pos: usize,
}

/// What [`Inbox::take_frames`] found.
#[derive(Default)]
struct Taken {
    /// Complete data messages (final data frames).
    messages: u64,
    /// Their payload bytes as sent (compressed ones compressed).
    bytes: u64,
    /// The server sent a close frame, or a frame we cannot read.
    closed: bool,
    /// The server sent a masked frame without `--accept-masked` (it is closed too).
    masked: bool,
}

impl Inbox {
    /// Reads everything the socket holds; false once it is closed or failed (what was
    /// read before stays buffered).
    fn read_from(&mut self, wire: &mut Wire, scratch: &mut [u8]) -> bool {
        loop {
            match wire.read(scratch) {
                Ok(0) => return false,
                Ok(n) => self.buf.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Delimits the complete frames buffered, calling `on_message` with the payload
    /// of each final data frame as it came (server frames are not masked; with
    /// `accept_masked` masked ones are taken too, and their key is passed along),
    /// and drops them from the buffer.
    fn take_frames(&mut self, accept_masked: bool, mut on_message: impl FnMut(&[u8], Option<[u8; 4]>)) -> Taken {
        let mut taken = Taken::default();
        loop {
            let avail = &self.buf[self.pos..];
            let (header, n) = match decode_header(avail) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(_) => {
                    taken.closed = true;
                    break;
                }
            };
            if header.mask.is_some() && !accept_masked {
                taken.closed = true;
                taken.masked = true;
                break;
            }
            let len = header.payload_len as usize;
            if ((avail.len() - n) as u64) < header.payload_len {
                break;
            }
            match header.opcode {
                OpCode::Text | OpCode::Binary | OpCode::Continuation if header.fin => {
                    taken.messages += 1;
                    taken.bytes += len as u64;
                    on_message(&avail[n..n + len], header.mask);
                }
                OpCode::Close => {
                    taken.closed = true;
                    break;
                }
                _ => {}
            }
            self.pos += n + len;
        }
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        taken
    }
}

enum Phase {
    /// TCP connect in progress; the handshake to send once it completes.
    Connecting(Box<ClientHandshake>),
    /// Request sent, reading the response.
    Handshake(Box<ClientHandshake>),
    Open,
    Dead,
}

/// A connection's byte stream: TCP, or TLS over it.
struct Wire {
    stream: TcpStream,
    tls: Option<Box<rustls::ClientConnection>>,
}

impl Wire {
    /// Plaintext read: `WouldBlock` when nothing more is there now.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_mut() else { return self.stream.read(buf) };
        loop {
            match tls.reader().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
            if tls.read_tls(&mut self.stream)? == 0 {
                return Ok(0);
            }
            tls.process_new_packets().map_err(io::Error::other)?;
            // Handshake records in reply go out at once.
            while tls.wants_write() {
                match tls.write_tls(&mut self.stream) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    other => other.map(drop)?,
                }
            }
        }
    }

    /// Writes plaintext; under TLS it is accepted into records, which are written
    /// until the socket would block.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.tls.is_none() {
            return self.stream.write(data);
        }
        // Records first: a full socket stops them, not the plaintext rustls took.
        self.write_records()?;
        let taken = self.tls.as_mut().map_or(Ok(0), |tls| tls.writer().write(data))?;
        self.write_records()?;
        if taken == 0 { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(taken) }
    }

    /// Writes TLS records until none is left (true) or the socket would block (false).
    fn write_records(&mut self) -> io::Result<bool> {
        let Some(tls) = self.tls.as_mut() else { return Ok(true) };
        while tls.wants_write() {
            match tls.write_tls(&mut self.stream) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                other => other.map(drop)?,
            }
        }
        Ok(true)
    }

    /// TLS records wait for the socket.
    fn wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.wants_write())
    }
}

struct Conn {
    wire: Wire,
    phase: Phase,
    inbox: Inbox,
    out: Vec<u8>,
    out_pos: usize,
    /// Echo: send times of the messages in flight, oldest first.
    sent: VecDeque<Instant>,
    /// Whether WRITABLE interest is registered.
    want_write: bool,
    /// The compression window the server allowed us, if it agreed to deflate.
    deflate_bits: Option<u8>,
}

impl Conn {
    /// Writes what is queued; false if the connection died.
    fn flush(&mut self) -> bool {
        while self.out_pos < self.out.len() {
            match self.wire.write(&self.out[self.out_pos..]) {
                Ok(0) => return false,
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        match self.wire.write_records() {
            Ok(true) => {}
            Ok(false) => return true,
            Err(_) => return false,
        }
        self.out.clear();
        self.out_pos = 0;
        true
    }

    /// Whether a non-blocking connect has completed: `Ok(false)` while it is still in
    /// progress, `Err` once it failed.
    fn connected(&self, event: &mio::event::Event) -> io::Result<bool> {
        if let Some(e) = self.wire.stream.take_error()? {
            return Err(e);
        }
        match self.wire.stream.peer_addr() {
            Ok(_) => Ok(true),
            Err(_) if event.is_error() || event.is_write_closed() => {
                Err(io::Error::new(io::ErrorKind::ConnectionRefused, "connect failed"))
            }
            Err(_) => Ok(false),
        }
    }
}

/// The warm-up and the measured window, and the progress lines.
struct Meter {
    /// When counting starts (after the warm-up).
    start: Instant,
    /// When the run ends.
    end: Instant,
    measuring: bool,
    last_progress: Instant,
    last_count: u64,
    cpu_at_start: Option<Duration>,
    rss_before: Option<u64>,
}

impl Meter {
    fn new(p: &Params, now: Instant, rss_before: Option<u64>) -> Meter {
        let start = now + p.warmup;
        Meter { start, end: start + p.duration, measuring: false, last_progress: now, last_count: 0, cpu_at_start: None, rss_before }
    }

    /// Starts counting once the warm-up is over (forgetting what came before) and
    /// prints a progress line every second.
    fn tick(&mut self, now: Instant, p: &Params, report: &mut Report) {
        if !self.measuring && now >= self.start {
            self.measuring = true;
            self.cpu_at_start = servers_cpu(&p.server_pid);
            if let (Some(&pid), Some(before)) = (p.server_pid.first(), self.rss_before) {
                report.server_rss = process_rss(pid).map(|after| (before, after));
            }
            report.messages = 0;
            report.bytes = 0;
            report.latencies_us.clear();
            self.last_count = 0;
            self.last_progress = now;
        }
        if !p.quiet && self.measuring && now - self.last_progress >= Duration::from_secs(1) {
            let rate = (report.messages - self.last_count) as f64 / (now - self.last_progress).as_secs_f64();
            let unit = if p.mode == Mode::Relay { "deliveries" } else { "msg" };
            eprintln!("  t={:.0}s {rate:.0} {unit}/s", (now - self.start).as_secs_f64());
            self.last_progress = now;
            self.last_count = report.messages;
        }
    }

    /// Ends the run: the measured time and the server's CPU time over it.
    fn finish(&self, p: &Params, report: &mut Report) {
        report.elapsed = if self.measuring { Instant::now() - self.start } else { Duration::ZERO };
        if let Some(start) = self.cpu_at_start {
            report.server_cpu = servers_cpu(&p.server_pid).map(|end| end.saturating_sub(start));
        }
    }
}

/// Relay bookkeeping: each sender keeps `in_flight` messages that have not reached
/// every other client yet.
struct RelayState {
    /// Time zero of the timestamps in the payloads.
    epoch: Instant,
    seq: u64,
    /// Per sender, its messages not yet delivered everywhere, oldest first.
    window: Vec<VecDeque<u64>>,
    /// Deliveries so far of each message in a window.
    deliveries: HashMap<u64, u64>,
    /// How many deliveries make a message complete: every client but the sender.
    recipients: u64,
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

/// A run in progress.
struct Bench<'p> {
    p: &'p Params,
    poll: Poll,
    conns: Vec<Conn>,
    /// The read buffer shared by all connections.
    scratch: Vec<u8>,
    frame: Frame,
    report: Report,
    open: usize,
    dead: usize,
    /// Connections that failed to open, and why the first one did.
    failed: usize,
    first_failure: Option<String>,
    /// Whether the traffic has started (echo answers and relay refills wait for it).
    traffic: bool,
    /// Whether a masked server frame was refused (said once).
    masked_seen: bool,
    meter: Meter,
    relay: RelayState,
}

/// How long a cross-process relay run waits before sending.
const CROSS_PROCESS_SETTLE: Duration = Duration::from_millis(500);

/// Runs the load and returns its report.
pub fn run(p: &Params) -> io::Result<Report> {
    let target = Target::new(p, &p.url)?;
    let receivers = match &p.receivers_url {
        Some(_) if p.mode != Mode::Relay => return Err(invalid("--receivers-url is for relay")),
        Some(url) => Target::new(p, url)?,
        None => Target::new(p, &p.url)?,
    };
    let mut events = Events::with_capacity(4096);
    let mut bench = Bench::connect_all(p, [&target, &receivers], &mut events)?;
    if p.receivers_url.is_some() {
        // A message sent before the broker knows of the receivers' relay is lost.
        std::thread::sleep(CROSS_PROCESS_SETTLE);
    }
    bench.start_traffic();
    bench.drive(&mut events)?;
    Ok(bench.finish())
}

impl<'p> Bench<'p> {
    /// Starts one more connection to `target` (TCP, then its handshake).
    fn connect(&mut self, target: &Target) -> io::Result<()> {
        let mut stream = TcpStream::connect(target.addr)?;
        self.poll.registry().register(&mut stream, Token(self.conns.len()), Interest::READABLE | Interest::WRITABLE)?;
        let tls = match &target.tls {
            Some(config) => {
                let name = ServerName::try_from(target.request.url().host.clone()).map_err(|e| invalid(e.to_string()))?;
                Some(Box::new(rustls::ClientConnection::new(config.clone(), name).map_err(io::Error::other)?))
            }
            None => None,
        };
        self.conns.push(Conn {
            wire: Wire { stream, tls },
            phase: Phase::Connecting(target.handshake()),
            inbox: Inbox::default(),
            out: Vec::new(),
            out_pos: 0,
            sent: VecDeque::new(),
            want_write: true,
            deflate_bits: None,
        });
        Ok(())
    }

    /// Opens every connection (TCP, then the handshake, each with its own key) and
    /// waits until each is open or has failed. Fails when none opened, naming why.
    /// `targets`: the senders' (relay; everyone's otherwise) and the other clients'.
    fn connect_all(p: &'p Params, targets: [&Target; 2], events: &mut Events) -> io::Result<Bench<'p>> {
        let rss_before = p.server_pid.first().and_then(|&pid| process_rss(pid));
        let start = Instant::now();
        let senders = if p.mode == Mode::Relay { p.senders } else { 0 };
        let mut bench = Bench {
            p,
            poll: Poll::new()?,
            conns: Vec::with_capacity(p.connections),
            scratch: vec![0u8; 256 * 1024],
            frame: Frame { bytes: Vec::new(), payload_at: 0 },
            report: Report::default(),
            open: 0,
            dead: 0,
            failed: 0,
            first_failure: None,
            traffic: false,
            masked_seen: false,
            meter: Meter::new(p, start, rss_before),
            relay: RelayState {
                epoch: start,
                seq: 0,
                window: vec![VecDeque::new(); senders],
                deliveries: HashMap::new(),
                recipients: p.connections.saturating_sub(1) as u64,
            },
        };
        let on_first = if p.mode == Mode::Relay { p.senders } else { p.connections };
        // Idle: two waves, and the server's memory between them.
        let half = if p.mode == Mode::Idle && p.connections >= 2 { p.connections / 2 } else { p.connections };
        let deadline = start + CONNECT_TIMEOUT;
        for wave in [0..half, half..p.connections] {
            for i in wave {
                bench.connect(targets[usize::from(i >= on_first)])?;
            }
            while bench.open + bench.dead < bench.conns.len() {
                let now = Instant::now();
                if now >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("only {} of {} connections opened", bench.open, p.connections),
                    ));
                }
                bench.turn(events, (deadline - now).min(TICK))?;
            }
            if bench.conns.len() == half && half < p.connections {
                bench.report.server_rss_half = p.server_pid.first().and_then(|&pid| process_rss(pid)).map(|rss| (rss, bench.open));
            }
        }
        let reason = bench.first_failure.as_deref().unwrap_or("unknown");
        if bench.open == 0 {
            return Err(io::Error::new(io::ErrorKind::ConnectionRefused, format!("no connection opened: {reason}")));
        }
        if bench.failed > 0 {
            eprintln!("{} of {} connections failed to open; the first: {reason}", bench.failed, p.connections);
        }
        bench.report.connect_time = start.elapsed();
        bench.report.open = bench.open;
        // With --deflate every open connection agreed to it; compress with the
        // smallest window any of them allowed.
        let bits = bench.conns.iter().filter(|c| matches!(c.phase, Phase::Open)).filter_map(|c| c.deflate_bits).min();
        bench.frame = Frame::build(p, bits);
        Ok(bench)
    }

    /// Puts the first messages in flight (echo: `in_flight` per connection; relay:
    /// `in_flight` per sender) and starts the warm-up.
    fn start_traffic(&mut self) {
        let now = Instant::now();
        self.meter = Meter::new(self.p, now, self.meter.rss_before);
        self.traffic = true;
        if !self.p.quiet {
            eprintln!(
                "{} connections open in {:.3} s; running {:?} for {:?}",
                self.open,
                self.report.connect_time.as_secs_f64(),
                self.p.mode,
                self.p.duration
            );
        }
        for i in 0..self.conns.len() {
            if !matches!(self.conns[i].phase, Phase::Open) {
                continue;
            }
            match self.p.mode {
                Mode::Echo => {
                    let c = &mut self.conns[i];
                    for _ in 0..self.p.in_flight {
                        c.out.extend_from_slice(&self.frame.bytes);
                        c.sent.push_back(now);
                    }
                }
                Mode::Relay if i < self.relay.window.len() => self.send_relay(i, self.p.in_flight),
                _ => {}
            }
            self.flush(i);
            self.sync_interest(i);
        }
    }

    /// Turns the event loop until the end of the run.
    fn drive(&mut self, events: &mut Events) -> io::Result<()> {
        loop {
            let now = Instant::now();
            if now >= self.meter.end {
                return Ok(());
            }
            self.meter.tick(now, self.p, &mut self.report);
            self.turn(events, (self.meter.end - now).min(TICK))?;
        }
    }

    /// Stops the clock, closes the open connections politely (a close frame each)
    /// and returns the report.
    fn finish(mut self) -> Report {
        self.meter.finish(self.p, &mut self.report);
        self.report.open = self.open;
        let mut close = Vec::new();
        encode_frame(&mut close, true, OpCode::Close, Some(KEY), &[0x03, 0xe8]);
        for c in &mut self.conns {
            if matches!(c.phase, Phase::Open) {
                c.out.extend_from_slice(&close);
                let _ = c.flush();
            }
        }
        self.report
    }

    /// One poll and the handling of its events.
    fn turn(&mut self, events: &mut Events, timeout: Duration) -> io::Result<()> {
        match self.poll.poll(events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        for ev in events.iter() {
            let i = ev.token().0;
            self.on_event(i, ev, now);
            self.sync_interest(i);
        }
        if self.traffic && self.p.mode == Mode::Relay {
            self.refill_relay();
        }
        Ok(())
    }

    fn on_event(&mut self, i: usize, ev: &mio::event::Event, now: Instant) {
        match self.conns[i].phase {
            Phase::Dead => return,
            Phase::Connecting(_) if !(ev.is_writable() || ev.is_readable()) => return,
            _ => {}
        }
        if matches!(self.conns[i].phase, Phase::Connecting(_)) && !self.on_connect(i, ev) {
            return;
        }
        let c = &mut self.conns[i];
        if ev.is_writable() && !c.flush() {
            return self.kill(i);
        }
        if !ev.is_readable() {
            return;
        }
        let alive = c.inbox.read_from(&mut c.wire, &mut self.scratch);
        if matches!(c.phase, Phase::Handshake(_)) && !self.on_response(i, alive) {
            return;
        }
        match self.p.mode {
            Mode::Echo => self.drive_echo(i, now),
            Mode::Relay => self.drive_relay(i, now),
            Mode::Idle => self.drive_idle(i),
        }
        if !alive {
            self.kill(i);
        }
    }

    /// A connect finished (or failed): the request goes out; true once it is queued.
    fn on_connect(&mut self, i: usize, ev: &mio::event::Event) -> bool {
        let c = &mut self.conns[i];
        match c.connected(ev) {
            Ok(false) => false,
            Ok(true) => {
                let _ = c.wire.stream.set_nodelay(true);
                let Phase::Connecting(hs) = std::mem::replace(&mut c.phase, Phase::Dead) else { return false };
                hs.write_request(&mut c.out);
                c.phase = Phase::Handshake(hs);
                true
            }
            Err(e) => {
                let why = format!("cannot connect to {}: {e}", self.p.url);
                self.fail(i, why);
                false
            }
        }
    }

    /// Feeds the response bytes read so far to the handshake; true once it opened.
    fn on_response(&mut self, i: usize, alive: bool) -> bool {
        let c = &mut self.conns[i];
        let Phase::Handshake(hs) = &mut c.phase else { return false };
        let result = hs.push(c.inbox.pending());
        match result {
            Ok(None) if alive => {
                // The handshake keeps what it needs of the head.
                c.inbox.buf.clear();
                false
            }
            Ok(None) => {
                self.fail(i, "the server closed the connection during the handshake");
                false
            }
            Err(e) => {
                self.fail(i, format!("handshake failed: {e}"));
                false
            }
            Ok(Some(done)) => {
                if self.p.deflate && done.deflate.is_none() {
                    self.fail(i, "the server did not accept permessage-deflate (--deflate needs a server that does)");
                    return false;
                }
                // What followed the head (frames) stays in the inbox.
                c.inbox.pos = c.inbox.buf.len() - done.rest;
                c.deflate_bits = done.deflate.map(|d| d.client_max_window_bits);
                c.phase = Phase::Open;
                self.open += 1;
                true
            }
        }
    }

    /// Echo: every message that comes back is timed and sent again, all in one write.
    fn drive_echo(&mut self, i: usize, now: Instant) {
        let c = &mut self.conns[i];
        let (measuring, latencies) = (self.meter.measuring, &mut self.report.latencies_us);
        let taken = c.inbox.take_frames(self.p.accept_masked, |_, _| {
            if let Some(t) = c.sent.pop_front() {
                if measuring {
                    latencies.push(micros(now - t));
                }
            }
        });
        if self.traffic {
            for _ in 0..taken.messages {
                c.out.extend_from_slice(&self.frame.bytes);
                c.sent.push_back(now);
            }
        }
        self.settle(i, &taken);
    }

    /// Relay: every delivery is timed from the stamp in its payload and counted
    /// against its message; [`Bench::refill_relay`] sends more.
    fn drive_relay(&mut self, i: usize, now: Instant) {
        let c = &mut self.conns[i];
        let (measuring, latencies, relay) = (self.meter.measuring, &mut self.report.latencies_us, &mut self.relay);
        let taken = c.inbox.take_frames(self.p.accept_masked, |payload, mask| {
            let Some(stamp) = payload.get(..16) else { return };
            let mut stamp: [u8; 16] = stamp.try_into().expect("16 bytes");
            if let Some(key) = mask {
                for (k, b) in stamp.iter_mut().enumerate() {
                    *b ^= key[k & 3];
                }
            }
            let nanos = u64::from_le_bytes(stamp[..8].try_into().expect("8 bytes"));
            let seq = u64::from_le_bytes(stamp[8..].try_into().expect("8 bytes"));
            if measuring {
                latencies.push(micros(now.saturating_duration_since(relay.epoch + Duration::from_nanos(nanos))));
            }
            if let Some(d) = relay.deliveries.get_mut(&seq) {
                *d += 1;
            }
        });
        self.settle(i, &taken);
    }

    /// Idle: whatever the server sends is only delimited.
    fn drive_idle(&mut self, i: usize) {
        let taken = self.conns[i].inbox.take_frames(self.p.accept_masked, |_, _| {});
        self.settle(i, &taken);
    }

    /// Counts what a connection received, then writes its output or ends it.
    fn settle(&mut self, i: usize, taken: &Taken) {
        if taken.masked && !std::mem::replace(&mut self.masked_seen, true) {
            eprintln!(
                "the server sent a masked frame (RFC 6455 §5.1: a client closes the connection); \
                 --accept-masked takes them (a TCP floor that passes client frames on)"
            );
        }
        if self.meter.measuring {
            self.report.messages += taken.messages;
            self.report.bytes += taken.bytes;
        }
        if taken.closed {
            self.kill(i);
        } else {
            self.flush(i);
        }
    }

    /// Relay senders: a message delivered to every other client leaves its sender's
    /// window, and a new one takes its place.
    fn refill_relay(&mut self) {
        for s in 0..self.relay.window.len() {
            let relay = &mut self.relay;
            let mut freed = 0;
            while let Some(&seq) = relay.window[s].front() {
                if relay.deliveries.get(&seq).copied().unwrap_or(relay.recipients) < relay.recipients {
                    break;
                }
                relay.deliveries.remove(&seq);
                relay.window[s].pop_front();
                freed += 1;
            }
            if freed > 0 && matches!(self.conns[s].phase, Phase::Open) {
                self.send_relay(s, freed);
                self.flush(s);
                self.sync_interest(s);
            }
        }
    }

    /// Queues `count` stamped messages on relay sender `s`.
    fn send_relay(&mut self, s: usize, count: usize) {
        let relay = &mut self.relay;
        let out = &mut self.conns[s].out;
        for _ in 0..count {
            relay.seq += 1;
            self.frame.push_stamped(out, relay.epoch.elapsed().as_nanos() as u64, relay.seq);
            relay.window[s].push_back(relay.seq);
            relay.deliveries.insert(relay.seq, 0);
        }
    }

    /// Writes what connection `i` has queued; it dies if the socket failed.
    fn flush(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if matches!(c.phase, Phase::Open | Phase::Handshake(_)) && !c.flush() {
            self.kill(i);
        }
    }

    /// A connection that could not open: counted as an error, with the reason kept.
    fn fail(&mut self, i: usize, why: impl Into<String>) {
        if !matches!(self.conns[i].phase, Phase::Dead) {
            self.first_failure.get_or_insert_with(|| why.into());
        }
        self.kill(i);
    }

    /// Ends connection `i` (once), counting an error.
    fn kill(&mut self, i: usize) {
        let c = &mut self.conns[i];
        match c.phase {
            Phase::Dead => return,
            Phase::Open => self.open -= 1,
            Phase::Connecting(_) | Phase::Handshake(_) => {
                self.failed += 1;
                self.first_failure.get_or_insert_with(|| "the connection was lost during the handshake".to_owned());
            }
        }
        c.phase = Phase::Dead;
        self.dead += 1;
        self.report.errors += 1;
        let _ = self.poll.registry().deregister(&mut c.wire.stream);
        let _ = c.wire.stream.shutdown(Shutdown::Both);
        c.out = Vec::new();
        c.inbox = Inbox::default();
    }

    /// Keeps WRITABLE interest only while output is pending (or connecting).
    fn sync_interest(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let pending = match c.phase {
            Phase::Dead => return,
            Phase::Connecting(_) => true,
            _ => c.out_pos < c.out.len() || c.wire.wants_write(),
        };
        if pending != c.want_write {
            let interest = if pending { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            let _ = self.poll.registry().reregister(&mut c.wire.stream, Token(i), interest);
            c.want_write = pending;
        }
    }
}
