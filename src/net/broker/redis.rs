//! The Redis driver of the bridge, with the `redis` crate (blocking, no runtime), over
//! two connections as Redis pub/sub needs: a publisher thread that takes what the
//! loops queued when woken and sends it as pipelines of `PUBLISH`es, and a subscriber
//! thread that reads messages and (un)subscribes in batches to match the rooms the
//! process has (checked between messages, at least every 10 ms), pinging a quiet link
//! so a dead one is noticed. Each thread reconnects on its own with backoff; while the
//! publisher is down, messages are dropped and counted (their sequence numbers are
//! spent, so receivers see the gap).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use log::{info, warn};
use redis::{Client, Connection, ConnectionInfo, IntoConnectionInfo, PubSub, RedisError, RedisResult};

use super::{BrokerConfig, BrokerError, Inbound, Job, Outbound, Publish, Started, backoff};
use crate::net::bus::BusMember;

/// How long the subscriber waits for a message before it looks at room changes.
const POLL: Duration = Duration::from_millis(10);
/// Connecting, any command, and a whole batch of pipelines may take this long.
const TIMEOUT: Duration = Duration::from_secs(2);
/// A quiet subscriber link is pinged this often.
const PING_EVERY: Duration = Duration::from_secs(5);
/// A link that lasted less than this before failing does not reset the backoff.
const STABLE: Duration = Duration::from_secs(5);
/// Commands per pipeline, and channels per `SUBSCRIBE`.
const BATCH: usize = 1024;
/// Bytes per pipeline (beyond, the batch goes in several; the stop flag and the
/// batch's deadline are checked between them).
const BATCH_BYTES: usize = 256 << 10;

pub(super) fn check_url(cfg: &BrokerConfig) -> Result<(), BrokerError> {
    connection_info(cfg).map(drop)
}

fn connection_info(cfg: &BrokerConfig) -> Result<ConnectionInfo, BrokerError> {
    let info = cfg.url.as_str().into_connection_info().map_err(|e| BrokerError::Url(e.to_string()))?;
    Ok(match (&cfg.password, info.redis_settings().password()) {
        (Some(password), None) => {
            let settings = info.redis_settings().clone().set_password(password);
            info.set_redis_settings(settings)
        }
        _ => info,
    })
}

pub(super) fn start<H: BusMember + Send>(job: Job<H>) -> Result<Started, BrokerError> {
    let client = Client::open(connection_info(&job.cfg)?).map_err(|e| BrokerError::Url(e.to_string()))?;
    let subscriber = {
        let (client, inbound, job) = (client.clone(), Inbound::new(&job), job.share());
        thread::Builder::new()
            .name("broker-sub".into())
            .spawn(move || subscribe_loop(&client, inbound, &job))
            .map_err(BrokerError::Spawn)?
    };
    let (outbound, stop) = (Outbound::new(&job), job.stop.clone());
    let publisher = thread::Builder::new().name("broker-pub".into()).spawn(move || publish_loop(&client, outbound, &job));
    let publisher = publisher.map_err(|e| {
        stop.store(true, Ordering::Release); // the subscriber ends too
        BrokerError::Spawn(e)
    })?;
    let waker = publisher.thread().clone();
    Ok(Started { threads: vec![publisher, subscriber], wake: Arc::new(move || waker.unpark()) })
}

/// One link's connection attempts: the outage is logged once, the return too.
struct Attempts {
    what: &'static str,
    /// Failed attempts (or links that failed soon after connecting) in a row: the next
    /// success is a reconnect, and the next wait grows with it.
    failures: u32,
    /// When the link came up.
    since: Instant,
}

impl Attempts {
    fn new(what: &'static str) -> Self {
        Self { what, failures: 0, since: Instant::now() }
    }

    fn connect<H>(&mut self, client: &Client, job: &Job<H>) -> Option<Connection> {
        let con = client.get_connection_with_timeout(TIMEOUT).and_then(|con| {
            con.set_write_timeout(Some(TIMEOUT))?;
            con.set_read_timeout(Some(TIMEOUT))?;
            Ok(con)
        });
        match con {
            Ok(con) => {
                if self.failures > 0 {
                    job.port.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    info!("broker {}: {} link up again", job.cfg.display_url(), self.what);
                }
                self.since = Instant::now();
                Some(con)
            }
            Err(e) => {
                job.port.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                if self.failures == 0 {
                    warn!(
                        "broker {}: cannot connect the {} link ({e}); local rooms keep working, retrying",
                        job.cfg.display_url(),
                        self.what
                    );
                }
                self.failures += 1;
                None
            }
        }
    }

    fn lost<H>(&mut self, job: &Job<H>, e: &RedisError) {
        warn!("broker {}: {} link lost ({e}); local rooms keep working, reconnecting", job.cfg.display_url(), self.what);
        // A link that keeps failing right after it comes up backs off further.
        self.failures = if self.since.elapsed() < STABLE { self.failures + 1 } else { 1 };
    }

    /// The wait before the next attempt.
    fn wait(&self) -> Duration {
        backoff(self.failures.saturating_sub(1))
    }
}

fn publish_loop<H: BusMember>(client: &Client, mut outbound: Outbound, job: &Job<H>) {
    let stats = &job.port.stats;
    let mut attempts = Attempts::new("publisher");
    let mut con: Option<Connection> = None;
    let mut next_try = Instant::now();
    loop {
        let stopping = job.stopped();
        if con.is_none() && Instant::now() >= next_try && !stopping {
            con = attempts.connect(client, job);
            stats.publisher_up.store(con.is_some(), Ordering::Release);
            next_try = Instant::now() + attempts.wait();
        }
        // Once stopping, what the loops queued last is still published (or counted).
        let items = job.port.take();
        if items.is_empty() {
            if stopping {
                job.port.close();
                return;
            }
            let idle = if con.is_some() { TIMEOUT } else { next_try.saturating_duration_since(Instant::now()) };
            thread::park_timeout(idle);
            continue;
        }
        let batch = outbound.absorb(items);
        if let Err(e) = publish(con.as_mut(), &batch, job) {
            attempts.lost(job, &e);
            con = None;
            stats.publisher_up.store(false, Ordering::Release);
            next_try = Instant::now() + attempts.wait();
        }
    }
}

/// Publishes `batch` in pipelines. Without a link, or from a failed pipeline on (its
/// fate unknown), or past the batch's deadline, the rest is dropped and counted; an
/// error reply (the broker refused) is counted and the link kept.
fn publish<H>(mut con: Option<&mut Connection>, batch: &[Publish], job: &Job<H>) -> RedisResult<()> {
    let stats = &job.port.stats;
    let deadline = Instant::now() + TIMEOUT;
    let mut rest = batch;
    while !rest.is_empty() {
        let Some(c) = con.as_deref_mut() else { break };
        if Instant::now() >= deadline {
            stats.dropped_link_down.fetch_add(rest.len() as u64, Ordering::Relaxed);
            return Err(RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "publishing a batch took too long")));
        }
        let n = pipeline_len(rest);
        let mut pipe = redis::pipe();
        for p in &rest[..n] {
            pipe.cmd("PUBLISH").arg(&*p.channel).arg(&p.bytes).ignore();
        }
        match pipe.query::<()>(c) {
            Ok(()) => stats.published.fetch_add(n as u64, Ordering::Relaxed),
            Err(e) if !e.is_io_error() && !e.is_connection_dropped() && !e.is_timeout() => {
                warn!("broker {}: a PUBLISH was refused ({e})", job.cfg.display_url());
                stats.dropped_refused.fetch_add(n as u64, Ordering::Relaxed)
            }
            Err(e) => {
                stats.dropped_link_down.fetch_add(rest.len() as u64, Ordering::Relaxed);
                return Err(e);
            }
        };
        rest = &rest[n..];
    }
    stats.dropped_link_down.fetch_add(rest.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// How many of `rest` go in the next pipeline (at least one).
fn pipeline_len(rest: &[Publish]) -> usize {
    let mut bytes = 0;
    let n = rest.iter().take(BATCH).take_while(|p| {
        bytes += p.bytes.len();
        bytes <= BATCH_BYTES
    });
    n.count().max(1)
}

fn subscribe_loop<H: BusMember>(client: &Client, mut inbound: Inbound<H>, job: &Job<H>) {
    let stats = &job.port.stats;
    let mut attempts = Attempts::new("subscriber");
    while !job.stopped() {
        let Some(mut con) = attempts.connect(client, job) else {
            job.sleep(attempts.wait());
            continue;
        };
        inbound.relinked();
        let served = serve(con.as_pubsub(), &mut inbound, &stats.subscriber_up, job);
        stats.subscriber_up.store(false, Ordering::Release);
        if let Err(e) = served {
            attempts.lost(job, &e);
            job.sleep(attempts.wait());
        }
    }
}

/// Reads messages on one link until it fails or the bridge stops, keeping the
/// subscriptions in step with the process's rooms.
fn serve<H: BusMember>(mut ps: PubSub<'_>, inbound: &mut Inbound<H>, up: &AtomicBool, job: &Job<H>) -> RedisResult<()> {
    ps.set_read_timeout(Some(POLL))?;
    let mut heard = Instant::now();
    while !job.stopped() {
        if inbound.routes.take_changed() {
            resubscribe(&mut ps, inbound)?;
            // Subscribed to every current room: the link is up.
            up.store(true, Ordering::Release);
        }
        inbound.retry();
        match ps.get_message() {
            Ok(msg) => {
                heard = Instant::now();
                inbound.receive(msg.get_channel_name(), msg.get_payload_bytes());
            }
            Err(e) if e.is_timeout() => {
                if heard.elapsed() >= PING_EVERY {
                    ping(&mut ps)?;
                    heard = Instant::now();
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Pings a quiet link: a link that died without a reset fails here.
fn ping(ps: &mut PubSub<'_>) -> RedisResult<()> {
    ps.set_read_timeout(Some(TIMEOUT))?;
    ps.ping::<redis::Value>()?;
    ps.set_read_timeout(Some(POLL))
}

/// (Un)subscribes in batches to match the process's rooms.
fn resubscribe<H: BusMember>(ps: &mut PubSub<'_>, inbound: &mut Inbound<H>) -> RedisResult<()> {
    let changes = inbound.changes();
    if changes.subscribe.is_empty() && changes.unsubscribe.is_empty() {
        return Ok(());
    }
    // The replies may take longer than a poll.
    ps.set_read_timeout(Some(TIMEOUT))?;
    for chunk in changes.subscribe.chunks(BATCH) {
        ps.subscribe(chunk.iter().map(|c| &**c).collect::<Vec<&str>>())?;
    }
    for chunk in changes.unsubscribe.chunks(BATCH) {
        ps.unsubscribe(chunk.iter().map(|c| &**c).collect::<Vec<&str>>())?;
    }
    ps.set_read_timeout(Some(POLL))
}
