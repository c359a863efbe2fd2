//! Rooms across processes through a broker: Redis pub/sub (`redis.rs`, feature
//! `broker-redis`) or NATS (`nats.rs`, feature `broker-nats`). One bridge per process
//! is one more participant on the bus (`bus.rs`): every loop hands it the messages its
//! members send and the rooms it gains or loses; the bridge publishes each message
//! once, subscribes to a room's channel while the process has members in it (so a
//! process receives only the rooms it serves), and hands what other processes publish
//! to the loops with members in the room.
//!
//! On the broker a message travels in an envelope (`envelope.rs`): origin process,
//! sequence number per (origin, room), kind, timestamp, payload. A bridge drops its own
//! messages coming back and duplicates, and counts the messages gaps say it missed.
//! The guarantee: at most once across processes, per-sender order within a room, no
//! duplicates, no echo to the sender; loss only while a broker link is down, counted.
//! This module owns the configuration, the counters, the channel names and the work
//! both brokers share; the drivers hold only the broker's I/O.

// Without a driver only the configuration is used.
#![cfg_attr(not(any(feature = "broker-redis", feature = "broker-nats")), allow(dead_code, unused_imports))]

mod envelope;
#[cfg(feature = "broker-nats")]
mod nats;
#[cfg(feature = "broker-redis")]
mod redis;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::debug;

use self::envelope::{Envelope, Numbering, Streams, Verdict};
use crate::SharedFrame;
use crate::net::bus::{BridgePort, BusItem, BusMember};
use crate::net::metrics::{Histogram, MetricKind, Metrics};
use crate::net::server::Inbox;

/// The environment variable the `rfc6455` program reads a broker password from (when
/// the URL has none).
pub const PASSWORD_ENV: &str = "RFC6455_BROKER_PASSWORD";

/// Payload bytes a message may have to cross the broker, by default (Redis drops a
/// subscriber whose pending output passes 8 MiB for a minute or 32 MiB at once; NATS
/// servers refuse more than 1 MiB by default).
pub const DEFAULT_MAX_BROKER_MESSAGE: usize = 1 << 20;

/// Escaped rooms longer than this are named by their hash (NATS refuses control lines
/// over 4 KiB; long channel names cost every message).
const MAX_ESCAPED_ROOM: usize = 200;

/// Which broker a [`BrokerConfig`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerKind {
    /// Redis pub/sub (`redis://HOST:PORT[/DB]`).
    Redis,
    /// NATS core pub/sub (`nats://HOST:PORT`).
    Nats,
}

/// Where and how a relay process meets the others: the broker's URL, the prefix of
/// its channel names (several deployments can share one broker), the password.
#[derive(Clone)]
pub struct BrokerConfig {
    kind: BrokerKind,
    url: String,
    prefix: String,
    password: Option<String>,
    max_message_size: usize,
}

impl fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerConfig").field("url", &self.display_url()).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// Why a bridge could not be set up.
#[derive(Debug)]
#[non_exhaustive]
pub enum BrokerError {
    /// Not a `redis://` or `nats://` URL, or a malformed one.
    Url(String),
    /// A channel prefix other than 1 to 64 letters, digits, `-` and `_`.
    Prefix(String),
    /// This build has no client for that broker (the feature is off).
    NotBuilt(&'static str),
    /// The bridge's thread could not start.
    Spawn(std::io::Error),
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerError::Url(why) => write!(f, "bad broker URL: {why}"),
            BrokerError::Prefix(p) => {
                write!(f, "bad broker channel prefix {p:?}: use 1 to 64 letters, digits, '-' or '_'")
            }
            BrokerError::NotBuilt(feature) => write!(f, "this build has no {feature} client (feature `{feature}`)"),
            BrokerError::Spawn(e) => write!(f, "cannot start the broker bridge: {e}"),
        }
    }
}

impl std::error::Error for BrokerError {}

impl BrokerConfig {
    /// Reads `redis://[:PASSWORD@]HOST[:PORT][/DB]` (pub/sub ignores the database: the
    /// prefix separates deployments) or `nats://[USER:PASSWORD@|TOKEN@]HOST[:PORT]`.
    /// The channel prefix is `rfc6455`; messages up to [`DEFAULT_MAX_BROKER_MESSAGE`]
    /// cross.
    pub fn parse(url: &str) -> Result<Self, BrokerError> {
        let kind = match url.split_once("://").map(|(scheme, _)| scheme) {
            Some("redis") => BrokerKind::Redis,
            Some("nats") => BrokerKind::Nats,
            // Not the whole URL: it may hold a password.
            Some(scheme) => return Err(BrokerError::Url(format!("scheme {scheme:?}: use redis://HOST:PORT or nats://HOST:PORT"))),
            None => return Err(BrokerError::Url("use redis://HOST:PORT or nats://HOST:PORT".to_owned())),
        };
        let cfg =
            Self { kind, url: url.to_owned(), prefix: "rfc6455".to_owned(), password: None, max_message_size: DEFAULT_MAX_BROKER_MESSAGE };
        cfg.check_url()?;
        Ok(cfg)
    }

    /// Names channels `PREFIX.room.ROOM` (default prefix: `rfc6455`).
    pub fn prefix(mut self, prefix: &str) -> Result<Self, BrokerError> {
        let ok = (1..=64).contains(&prefix.len()) && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(BrokerError::Prefix(prefix.to_owned()));
        }
        self.prefix = prefix.to_owned();
        Ok(self)
    }

    /// The password (Redis `AUTH`) or token (NATS), used when the URL has none.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// The largest payload that crosses the broker (default
    /// [`DEFAULT_MAX_BROKER_MESSAGE`]; never more than the relay's own limit): larger
    /// messages stay local and are counted, larger ones from the broker are dropped.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// The broker's limit, or `limit` if smaller.
    pub(crate) fn max_message_size_or_less(&self, limit: usize) -> usize {
        self.max_message_size.min(limit)
    }

    /// Which broker.
    pub fn kind(&self) -> BrokerKind {
        self.kind
    }

    /// The URL with any password or token replaced by `***` (for logs).
    pub fn display_url(&self) -> String {
        let Some((scheme, rest)) = self.url.split_once("://") else { return self.url.clone() };
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let authority = match authority.rsplit_once('@') {
            Some((user, host)) => match user.split_once(':') {
                Some((name, _)) => format!("{name}:***@{host}"),
                // nats://TOKEN@HOST
                None if self.kind == BrokerKind::Nats => format!("***@{host}"),
                None => format!("{user}@{host}"),
            },
            None => authority.to_owned(),
        };
        let slash = if rest.contains('/') { "/" } else { "" };
        format!("{scheme}://{authority}{slash}{path}")
    }

    /// The broker's channel (Redis) or subject (NATS) for `room`: the prefix, `.room.`,
    /// then the room with every byte other than a letter, digit, `-` or `_` written
    /// `%XX` (no wildcard, separator or space reaches the broker; distinct rooms get
    /// distinct channels). An empty room, or one longer than 200 bytes so written, is
    /// named `h.` and the hex SHA-256 of the room instead (escaped rooms have no `.`).
    pub fn channel(&self, room: &str) -> String {
        use std::fmt::Write;
        let mut name = format!("{}.room.", self.prefix);
        let start = name.len();
        for b in room.bytes() {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                name.push(b as char);
            } else {
                let _ = write!(name, "%{b:02X}");
            }
            if name.len() - start > MAX_ESCAPED_ROOM {
                break;
            }
        }
        if room.is_empty() || name.len() - start > MAX_ESCAPED_ROOM {
            use sha2::Digest;
            name.truncate(start);
            name.push_str("h.");
            for b in sha2::Sha256::digest(room.as_bytes()) {
                let _ = write!(name, "{b:02x}");
            }
        }
        name
    }

    fn check_url(&self) -> Result<(), BrokerError> {
        match self.kind {
            #[cfg(feature = "broker-redis")]
            BrokerKind::Redis => redis::check_url(self),
            #[cfg(feature = "broker-nats")]
            BrokerKind::Nats => nats::check_url(self),
            #[allow(unreachable_patterns)]
            kind => Err(not_built(kind)),
        }
    }
}

/// A bridge's counters, readable from any thread (the relay's `/metrics` shows them).
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct BrokerStats {
    /// The publishing link is up.
    pub(crate) publisher_up: AtomicBool,
    /// The subscribing link is up (and subscribed to every room).
    pub(crate) subscriber_up: AtomicBool,
    /// Times a link was established again after it was lost (or never came up).
    pub reconnects: AtomicU64,
    /// Connection attempts that failed (refused, timed out, authentication).
    pub connect_failures: AtomicU64,
    /// Messages published (each once per origin process).
    pub published: AtomicU64,
    /// Messages from other processes handed to this process's loops.
    pub received: AtomicU64,
    /// Messages of other processes that never arrived, by their sequence numbers.
    pub gaps: AtomicU64,
    /// Messages that arrived again (dropped).
    pub duplicates: AtomicU64,
    /// Messages dropped because a queue between the loops and the bridge was full.
    pub dropped_queue: AtomicU64,
    /// Messages not published because the link was down (or whose fate is unknown:
    /// the link failed while they were on their way).
    pub dropped_link_down: AtomicU64,
    /// Messages the broker refused (an error reply, such as an ACL denial).
    pub dropped_refused: AtomicU64,
    /// Messages over the size limit (the relay's, or the broker's when publishing).
    pub dropped_too_large: AtomicU64,
    /// Broker messages that were not a valid envelope (dropped).
    pub malformed: AtomicU64,
    /// Channels subscribed now.
    pub subscriptions: AtomicUsize,
    /// From publication to reception by this bridge (clocks of both processes).
    pub(crate) lag: Histogram,
}

impl BrokerStats {
    /// Whether the link is up: publishing, and subscribed to every room.
    pub fn up(&self) -> bool {
        self.publisher_up.load(Ordering::Acquire) && self.subscriber_up.load(Ordering::Acquire)
    }

    /// Messages the broker link lost or refused, as seen by this process: gaps plus
    /// everything dropped.
    pub fn lost(&self) -> u64 {
        [&self.gaps, &self.dropped_queue, &self.dropped_link_down, &self.dropped_refused, &self.dropped_too_large]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn write_metrics(&self, m: &mut Metrics) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        m.gauge("rfc6455_broker_up", "1 while the broker link is up (publishing and subscribed).", u64::from(self.up()));
        m.counter("rfc6455_broker_reconnects_total", "Broker links established again after a loss.", get(&self.reconnects));
        m.counter("rfc6455_broker_connect_failures_total", "Broker connection attempts that failed.", get(&self.connect_failures));
        m.counter("rfc6455_broker_published_total", "Messages published to the broker (once per message).", get(&self.published));
        m.counter("rfc6455_broker_received_total", "Messages from other processes delivered to this one's loops.", get(&self.received));
        m.counter("rfc6455_broker_gaps_total", "Messages of other processes that never arrived (sequence gaps).", get(&self.gaps));
        m.counter("rfc6455_broker_duplicates_total", "Messages from the broker that arrived twice (dropped).", get(&self.duplicates));
        m.counter("rfc6455_broker_malformed_total", "Broker messages that were not a valid envelope.", get(&self.malformed));
        if m.family("rfc6455_broker_dropped_total", MetricKind::Counter, "Messages dropped on the way to or from the broker, by reason.") {
            for (reason, c) in [
                ("queue_full", &self.dropped_queue),
                ("link_down", &self.dropped_link_down),
                ("refused", &self.dropped_refused),
                ("too_large", &self.dropped_too_large),
            ] {
                m.sample("rfc6455_broker_dropped_total", &[("reason", reason)], get(c));
            }
        }
        m.gauge("rfc6455_broker_subscriptions", "Broker channels subscribed now.", self.subscriptions.load(Ordering::Relaxed) as u64);
        self.lag.write(m, "rfc6455_broker_lag_seconds", "From publication by another process to reception here.");
    }
}

/// A running bridge: stops (unsubscribing everything) when dropped or [`Bridge::stop`]ped.
#[must_use = "dropping the bridge stops sharing rooms"]
pub struct Bridge {
    url: String,
    stop: Arc<AtomicBool>,
    wake: Wake,
    threads: Vec<JoinHandle<()>>,
    stats: Arc<BrokerStats>,
}

impl fmt::Debug for Bridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bridge").field("stats", &self.stats).finish_non_exhaustive()
    }
}

impl Bridge {
    /// The bridge's counters.
    pub fn stats(&self) -> &Arc<BrokerStats> {
        &self.stats
    }

    /// The broker's URL, without its password.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the bridge's threads and waits for them.
    pub fn stop(self) {}
}

/// How long dropping a bridge waits for its threads (a broker that stopped answering
/// holds a thread up to a command's timeout; beyond, the threads are left to end).
const STOP_WAIT: Duration = Duration::from_secs(5);

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        (self.wake)();
        let deadline = std::time::Instant::now() + STOP_WAIT;
        while self.threads.iter().any(|t| !t.is_finished()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for t in self.threads.drain(..) {
            if t.is_finished() {
                let _ = t.join();
            } else {
                log::warn!("broker {}: the bridge did not stop in {STOP_WAIT:?}; leaving it", self.url);
            }
        }
    }
}

/// What a driver gets to run: the configuration, the bus port, the routes, the flag
/// that stops it, this process's origin id.
pub(crate) struct Job<H> {
    pub(crate) cfg: BrokerConfig,
    pub(crate) port: Arc<BridgePort<H>>,
    pub(crate) routes: Arc<Routes>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) origin: u64,
}

impl<H> Job<H> {
    /// The same job, for another of the driver's threads.
    #[cfg_attr(not(feature = "broker-redis"), allow(dead_code))]
    pub(crate) fn share(&self) -> Self {
        Self { cfg: self.cfg.clone(), port: self.port.clone(), routes: self.routes.clone(), stop: self.stop.clone(), origin: self.origin }
    }

    /// The bridge is stopping.
    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Sleeps `d` unless the bridge stops first (checked every 10 ms).
    #[cfg_attr(not(feature = "broker-redis"), allow(dead_code))]
    pub(crate) fn sleep(&self, d: Duration) {
        let until = std::time::Instant::now() + d;
        while !self.stopped() {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(10)));
        }
    }
}

/// Wakes a driver's thread (callable from any thread).
pub(crate) type Wake = Arc<dyn Fn() + Send + Sync>;

/// What a driver's `start` returns: its threads and the function that wakes it.
pub(crate) struct Started {
    pub(crate) threads: Vec<JoinHandle<()>>,
    pub(crate) wake: Wake,
}

/// Starts the bridge for the loops whose inboxes are given; returns it and the port
/// each loop's bus attaches to.
pub(crate) fn start<H: BusMember + Send>(cfg: &BrokerConfig, inboxes: Vec<Inbox<H>>) -> Result<(Bridge, Arc<BridgePort<H>>), BrokerError> {
    let stats = Arc::new(BrokerStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    // The driver's wake function exists only once it has started: the port calls it
    // through this slot.
    let slot: Arc<Mutex<Option<Wake>>> = Arc::default();
    let call = slot.clone();
    let wake_port = Box::new(move || {
        if let Some(wake) = call.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            wake();
        }
    });
    let port = Arc::new(BridgePort::new(inboxes, stats.clone(), wake_port));
    let job = Job { cfg: cfg.clone(), port: port.clone(), routes: Arc::default(), stop: stop.clone(), origin: rand::random() };
    let started = start_driver(job)?;
    *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(started.wake.clone());
    let bridge = Bridge { url: cfg.display_url(), stop, wake: started.wake, threads: started.threads, stats };
    Ok((bridge, port))
}

fn start_driver<H: BusMember + Send>(job: Job<H>) -> Result<Started, BrokerError> {
    match job.cfg.kind {
        #[cfg(feature = "broker-redis")]
        BrokerKind::Redis => redis::start(job),
        #[cfg(feature = "broker-nats")]
        BrokerKind::Nats => nats::start(job),
        #[allow(unreachable_patterns)]
        kind => Err(not_built(kind)),
    }
}

/// The error for a broker whose client this build lacks.
fn not_built(kind: BrokerKind) -> BrokerError {
    BrokerError::NotBuilt(match kind {
        BrokerKind::Redis => "broker-redis",
        BrokerKind::Nats => "broker-nats",
    })
}

/// The channels the process needs now: for each, its room, the loops with members in
/// it (a bit set) and a generation (a room that empties and fills again is a new
/// one). The publishing side writes it as rooms come and go; the receiving side reads
/// it per message, and subscribes to match it.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    table: Mutex<RouteTable>,
    /// The set of channels changed since the receiving side last matched it.
    changed: AtomicBool,
}

#[derive(Debug, Default)]
struct RouteTable {
    routes: HashMap<Arc<str>, Route>,
    next_generation: u64,
}

/// A channel's room, the loops with members in it, its generation.
#[derive(Clone, Debug)]
pub(crate) struct Route {
    pub(crate) room: Arc<str>,
    pub(crate) loops: u64,
    pub(crate) generation: u64,
}

/// What the receiving side must do to match the routes.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// Channels to subscribe.
    pub(crate) subscribe: Vec<Arc<str>>,
    /// Channels to unsubscribe.
    pub(crate) unsubscribe: Vec<Arc<str>>,
}

impl Routes {
    fn lock(&self) -> std::sync::MutexGuard<'_, RouteTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The route of `channel`, if the process still needs it.
    pub(crate) fn get(&self, channel: &str) -> Option<Route> {
        self.lock().routes.get(channel).cloned()
    }

    /// Whether the set of channels changed since the last call (and clears it).
    pub(crate) fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::AcqRel)
    }

    /// Marks the set changed (after a new link: everything is to subscribe).
    pub(crate) fn mark_changed(&self) {
        self.changed.store(true, Ordering::Release);
    }
}

impl RouteTable {
    /// Loop `from` has members in `room` (on `channel`) now.
    fn join(&mut self, channel: &Arc<str>, room: &Arc<str>, from: usize) -> bool {
        let bit = 1u64 << from;
        if let Some(route) = self.routes.get_mut(channel) {
            route.loops |= bit;
            return false;
        }
        self.next_generation += 1;
        let route = Route { room: room.clone(), loops: bit, generation: self.next_generation };
        self.routes.insert(channel.clone(), route);
        true
    }

    /// Loop `from` has no members in the room of `channel` any more; true if the room
    /// has none left in the process (its route is gone).
    fn leave(&mut self, channel: &str, from: usize) -> bool {
        let Some(route) = self.routes.get_mut(channel) else { return false };
        route.loops &= !(1u64 << from);
        if route.loops != 0 {
            return false;
        }
        self.routes.remove(channel);
        true
    }
}

/// One message to publish.
#[derive(Debug)]
pub(crate) struct Publish {
    pub(crate) channel: Arc<str>,
    pub(crate) bytes: Vec<u8>,
}

/// The publishing side's state: each room's channel, and its numbering.
#[derive(Debug)]
pub(crate) struct Outbound {
    origin: u64,
    cfg: BrokerConfig,
    channels: HashMap<Arc<str>, Arc<str>>,
    numbering: Numbering,
    routes: Arc<Routes>,
    stats: Arc<BrokerStats>,
}

impl Outbound {
    pub(crate) fn new<H>(job: &Job<H>) -> Self {
        Self {
            origin: job.origin,
            cfg: job.cfg.clone(),
            channels: HashMap::new(),
            numbering: Numbering::new(),
            routes: job.routes.clone(),
            stats: job.port.stats.clone(),
        }
    }

    /// Applies what the loops queued: interest changes update the routes (and the set
    /// of channels), messages become envelopes to publish, in order. A message larger
    /// than the broker's limit stays local (counted, and no sequence number spent).
    pub(crate) fn absorb(&mut self, items: Vec<BusItem>) -> Vec<Publish> {
        let now = unix_micros();
        let mut out = Vec::new();
        for item in items {
            match item {
                BusItem::Interest { room, from, member } => self.interest(room, from, member),
                BusItem::Message { room, kind, frames } => {
                    let (Some(channel), Some(frame)) = (self.channels.get(&room), frames.plain) else {
                        debug!("broker: a message for {room:?}, which has no members here");
                        continue;
                    };
                    if frame.payload().len() > self.cfg.max_message_size {
                        self.stats.dropped_too_large.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let (epoch, seq) = self.numbering.next(&room);
                    let env = Envelope { kind, origin: self.origin, epoch, seq, micros: now, payload: frame.payload() };
                    let mut bytes = Vec::new();
                    env.encode(&mut bytes);
                    out.push(Publish { channel: channel.clone(), bytes });
                }
            }
        }
        out
    }

    fn interest(&mut self, room: Arc<str>, from: usize, member: bool) {
        let mut table = self.routes.lock();
        if member {
            let channel = self.channels.entry(room.clone()).or_insert_with(|| Arc::from(self.cfg.channel(&room)));
            if table.join(channel, &room, from) {
                self.routes.mark_changed();
            }
        } else if let Some(channel) = self.channels.get(&room) {
            if table.leave(channel, from) {
                self.routes.mark_changed();
                self.channels.remove(&room);
                self.numbering.end(&room);
            }
        }
    }
}

/// Envelope timestamps further from this process's clock than this are not timed (a
/// wrong clock or a forged envelope must not skew the lag histogram).
const PLAUSIBLE_LAG: Duration = Duration::from_secs(3600);

/// The receiving side's state: the streams heard, and the channels subscribed.
#[derive(Debug)]
pub(crate) struct Inbound<H> {
    port: Arc<BridgePort<H>>,
    routes: Arc<Routes>,
    streams: Streams,
    max_message_size: usize,
    /// Channel -> room and generation, as subscribed on the current link.
    subscribed: HashMap<Arc<str>, (Arc<str>, u64)>,
}

impl<H: BusMember> Inbound<H> {
    pub(crate) fn new(job: &Job<H>) -> Self {
        Self {
            port: job.port.clone(),
            routes: job.routes.clone(),
            streams: Streams::new(job.origin),
            max_message_size: job.cfg.max_message_size,
            subscribed: HashMap::new(),
        }
    }

    /// A message from the broker on `channel`: judged, counted, and handed to the loops
    /// with members in its room.
    pub(crate) fn receive(&mut self, channel: &str, bytes: &[u8]) {
        let Some(route) = self.routes.get(channel) else { return }; // just unsubscribed
        let stats = &self.port.stats;
        let env = match Envelope::decode(bytes) {
            Ok(env) => env,
            Err(why) => {
                debug!("broker: a malformed message on {channel} ({why:?}, {} bytes)", bytes.len());
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if env.payload.len() > self.max_message_size {
            stats.dropped_too_large.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.streams.judge(&route.room, &env) {
            Verdict::Own => {}
            Verdict::Duplicate => {
                stats.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Deliver { missed } => {
                stats.gaps.fetch_add(missed, Ordering::Relaxed);
                stats.received.fetch_add(1, Ordering::Relaxed);
                let lag = Duration::from_micros(unix_micros().saturating_sub(env.micros));
                if env.micros <= unix_micros() + 60_000_000 && lag < PLAUSIBLE_LAG {
                    stats.lag.observe(lag);
                }
                let frame = SharedFrame::new(env.kind, env.payload);
                self.port.deliver(route.loops, &route.room, env.kind, &frame);
            }
        }
    }

    /// What to subscribe and unsubscribe now, read from the routes in one go. A room
    /// that left (or left and came back, a new generation) has its streams forgotten:
    /// what it missed while the process had no members is no gap.
    pub(crate) fn changes(&mut self) -> Changes {
        let mut changes = Changes::default();
        {
            let table = self.routes.lock();
            self.subscribed.retain(|channel, (room, generation)| match table.routes.get(channel) {
                Some(route) if route.generation == *generation => true,
                Some(route) => {
                    self.streams.forget(room);
                    *generation = route.generation;
                    true
                }
                None => {
                    self.streams.forget(room);
                    changes.unsubscribe.push(channel.clone());
                    false
                }
            });
            for (channel, route) in &table.routes {
                if !self.subscribed.contains_key(channel) {
                    self.subscribed.insert(channel.clone(), (route.room.clone(), route.generation));
                    changes.subscribe.push(channel.clone());
                }
            }
        }
        self.port.stats.subscriptions.store(self.subscribed.len(), Ordering::Relaxed);
        changes
    }

    /// `channel` could not be subscribed: it is tried again at the next change.
    #[cfg_attr(not(feature = "broker-nats"), allow(dead_code))]
    pub(crate) fn not_subscribed(&mut self, channel: &str) {
        self.subscribed.remove(channel);
        self.routes.mark_changed();
        self.port.stats.subscriptions.store(self.subscribed.len(), Ordering::Relaxed);
    }

    /// A new link: nothing is subscribed on it yet (NATS clients resubscribe by
    /// themselves). Rooms that left while the link was down are forgotten.
    #[cfg_attr(not(feature = "broker-redis"), allow(dead_code))]
    pub(crate) fn relinked(&mut self) {
        {
            let table = self.routes.lock();
            self.streams.retain(|room| table.routes.values().any(|r| &*r.room == room));
        }
        self.subscribed.clear();
        self.routes.mark_changed();
        self.port.stats.subscriptions.store(0, Ordering::Relaxed);
    }

    /// Hands over again what a full inbox refused.
    pub(crate) fn retry(&self) {
        self.port.retry();
    }
}

/// Microseconds since the Unix epoch (envelope timestamps).
fn unix_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// The wait before reconnection attempt `attempt` (0-based): 50 ms doubling to 400 ms,
/// each with up to 25 % jitter, so a returning broker is met within half a second.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let base = 50u64 << attempt.min(3);
    Duration::from_millis(base + rand::random_range(0..=base / 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_escape_rooms() {
        let cfg = BrokerConfig { kind: BrokerKind::Redis, url: String::new(), prefix: "p".into(), password: None, max_message_size: 1 };
        assert_eq!(cfg.channel("/lobby"), "p.room.%2Flobby");
        assert_eq!(cfg.channel("/a.b*>c %"), "p.room.%2Fa%2Eb%2A%3Ec%20%25");
        assert_ne!(cfg.channel("/a_b"), cfg.channel("/a%5Fb"));
        let hashed = |c: String| c.strip_prefix("p.room.h.").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(hashed(cfg.channel("")));
        assert!(hashed(cfg.channel(&"/".repeat(1500))));
        assert!(!hashed(cfg.channel(&"a".repeat(200))));
        assert!(hashed(cfg.channel(&"a".repeat(201))));
        assert_ne!(cfg.channel(&"a".repeat(300)), cfg.channel(&"a".repeat(301)));
    }

    #[test]
    fn urls_are_checked_and_passwords_hidden() {
        assert!(matches!(BrokerConfig::parse("http://x"), Err(BrokerError::Url(_))));
        assert!(matches!(BrokerConfig::parse("redis:/x"), Err(BrokerError::Url(_))));
        let cfg = BrokerConfig {
            kind: BrokerKind::Redis,
            url: "redis://:s3cret@h:1/2".into(),
            prefix: "p".into(),
            password: None,
            max_message_size: 1,
        };
        assert_eq!(cfg.display_url(), "redis://:***@h:1/2");
        let nats = BrokerConfig { kind: BrokerKind::Nats, url: "nats://t0ken@h:4222".into(), ..cfg.clone() };
        assert_eq!(nats.display_url(), "nats://***@h:4222");
        match BrokerConfig::parse("http://u:s3cret@h") {
            Err(BrokerError::Url(why)) => assert!(!why.contains("s3cret"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(cfg.clone().prefix("ok-1_2").is_ok());
        assert!(matches!(cfg.clone().prefix("a.b"), Err(BrokerError::Prefix(_))));
        assert!(matches!(cfg.prefix(""), Err(BrokerError::Prefix(_))));
    }

    #[test]
    fn backoff_stays_under_half_a_second() {
        assert!((0..20).all(|a| backoff(a) <= Duration::from_millis(500)));
        assert!(backoff(0) >= Duration::from_millis(50));
    }
}
