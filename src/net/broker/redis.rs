//! The Redis driver of the bridge, with the `redis` crate (blocking, no runtime), over
//! two connections as Redis pub/sub needs: a publisher thread that takes what the
//! loops queued when woken and sends each batch as one pipeline of `PUBLISH`es, and a
//! subscriber thread that reads messages and (un)subscribes in batches to match the
//! rooms the process has (checked between messages, at least every 10 ms). Each
//! thread reconnects on its own with backoff; while the publisher is down, messages
//! are dropped and counted (their sequence numbers are spent, so receivers see the gap).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use log::{info, warn};
use redis::{Client, Connection, ConnectionInfo, IntoConnectionInfo, PubSub, RedisResult};

use super::{BrokerConfig, BrokerError, Inbound, Job, Outbound, Publish, Started, backoff};
use crate::net::bus::BusMember;

/// How long the subscriber waits for a message before it looks at room changes.
const POLL: Duration = Duration::from_millis(10);
/// Connecting, and any command on an established link, may take this long.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Commands per pipeline, and channels per `SUBSCRIBE`.
const BATCH: usize = 1024;
/// Bytes per pipeline (beyond, the batch goes in several).
const BATCH_BYTES: usize = 4 << 20;

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

/// The two links' states; the bridge is up when both are.
#[derive(Default)]
struct Links {
    publisher: AtomicBool,
    subscriber: AtomicBool,
}

impl Links {
    fn set<H>(&self, job: &Job<H>, link: &AtomicBool, up: bool) {
        link.store(up, Ordering::Release);
        let both = self.publisher.load(Ordering::Acquire) && self.subscriber.load(Ordering::Acquire);
        job.port.stats.up.store(both, Ordering::Release);
    }
}

pub(super) fn start<H: BusMember + Send>(job: Job<H>) -> Result<Started, BrokerError> {
    let client = Client::open(connection_info(&job.cfg)?).map_err(|e| BrokerError::Url(e.to_string()))?;
    let links = Arc::new(Links::default());
    let subscriber = {
        let (client, links, inbound, job) = (client.clone(), links.clone(), Inbound::new(&job), job.share());
        thread::Builder::new()
            .name("broker-sub".into())
            .spawn(move || subscribe_loop(&client, &links, inbound, &job))
            .map_err(BrokerError::Spawn)?
    };
    let outbound = Outbound::new(&job);
    let publisher = thread::Builder::new()
        .name("broker-pub".into())
        .spawn(move || publish_loop(&client, &links, outbound, &job))
        .map_err(BrokerError::Spawn)?;
    let waker = publisher.thread().clone();
    Ok(Started { threads: vec![publisher, subscriber], wake: Arc::new(move || waker.unpark()) })
}

/// One link's connection attempts: the outage is logged once, the return too.
struct Attempts {
    what: &'static str,
    /// Failed attempts (or 1 after a loss) since the link was last up: the next
    /// success is a reconnect.
    failures: u32,
}

impl Attempts {
    fn new(what: &'static str) -> Self {
        Self { what, failures: 0 }
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
                self.failures = 0;
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

    fn lost<H>(&mut self, job: &Job<H>, e: &redis::RedisError) {
        warn!("broker {}: {} link lost ({e}); local rooms keep working, reconnecting", job.cfg.display_url(), self.what);
        self.failures = 1;
    }

    /// The wait before the next attempt.
    fn wait(&self) -> Duration {
        backoff(self.failures.saturating_sub(1))
    }
}

fn publish_loop<H: BusMember>(client: &Client, links: &Links, mut outbound: Outbound, job: &Job<H>) {
    let mut attempts = Attempts::new("publisher");
    let mut con: Option<Connection> = None;
    let mut next_try = Instant::now();
    while !job.stopped() {
        if con.is_none() && Instant::now() >= next_try {
            con = attempts.connect(client, job);
            links.set(job, &links.publisher, con.is_some());
            next_try = Instant::now() + attempts.wait();
        }
        let items = job.port.take();
        if items.is_empty() {
            let idle = if con.is_some() { TIMEOUT } else { next_try.saturating_duration_since(Instant::now()) };
            thread::park_timeout(idle);
            continue;
        }
        let batch = outbound.absorb(items);
        if let Err(e) = publish(con.as_mut(), batch, job) {
            attempts.lost(job, &e);
            con = None;
            links.set(job, &links.publisher, false);
            next_try = Instant::now() + attempts.wait();
        }
    }
}

/// Publishes `batch` in pipelines; without a link, or from the first failed pipeline
/// on, the rest is dropped and counted.
fn publish<H>(mut con: Option<&mut Connection>, batch: Vec<Publish>, job: &Job<H>) -> RedisResult<()> {
    let stats = &job.port.stats;
    let mut rest = batch.as_slice();
    while !rest.is_empty() {
        let Some(c) = con.as_deref_mut() else { break };
        let mut bytes = 0;
        let n = rest.iter().take(BATCH).take_while(|p| {
            bytes += p.bytes.len();
            bytes <= BATCH_BYTES
        });
        let n = n.count().max(1);
        let mut pipe = redis::pipe();
        for p in &rest[..n] {
            pipe.cmd("PUBLISH").arg(&*p.channel).arg(&p.bytes).ignore();
        }
        if let Err(e) = pipe.query::<()>(c) {
            stats.dropped_link_down.fetch_add(rest.len() as u64, Ordering::Relaxed);
            return Err(e);
        }
        stats.published.fetch_add(n as u64, Ordering::Relaxed);
        rest = &rest[n..];
    }
    stats.dropped_link_down.fetch_add(rest.len() as u64, Ordering::Relaxed);
    Ok(())
}

fn subscribe_loop<H: BusMember>(client: &Client, links: &Links, mut inbound: Inbound<H>, job: &Job<H>) {
    let mut attempts = Attempts::new("subscriber");
    while !job.stopped() {
        let Some(mut con) = attempts.connect(client, job) else {
            job.sleep(attempts.wait());
            continue;
        };
        inbound.relinked();
        let served = serve(con.as_pubsub(), &mut inbound, links, job);
        links.set(job, &links.subscriber, false);
        if let Err(e) = served {
            attempts.lost(job, &e);
            job.sleep(attempts.wait());
        }
    }
}

/// Reads messages on one link until it fails or the bridge stops, keeping the
/// subscriptions in step with the process's rooms.
fn serve<H: BusMember>(mut ps: PubSub<'_>, inbound: &mut Inbound<H>, links: &Links, job: &Job<H>) -> RedisResult<()> {
    ps.set_read_timeout(Some(POLL))?;
    let mut first = true;
    while !job.stopped() {
        if inbound.routes.take_changed() {
            resubscribe(&mut ps, inbound)?;
        }
        if first {
            // Subscribed to every current room: the link is up.
            links.set(job, &links.subscriber, true);
            first = false;
        }
        inbound.retry();
        match ps.get_message() {
            Ok(msg) => inbound.receive(msg.get_channel_name(), msg.get_payload_bytes()),
            Err(e) if e.is_timeout() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// (Un)subscribes in batches to match the process's rooms.
fn resubscribe<H: BusMember>(ps: &mut PubSub<'_>, inbound: &mut Inbound<H>) -> RedisResult<()> {
    let (add, remove) = inbound.changes();
    if add.is_empty() && remove.is_empty() {
        return Ok(());
    }
    // The replies may take longer than a poll.
    ps.set_read_timeout(Some(TIMEOUT))?;
    for chunk in add.chunks(BATCH) {
        ps.subscribe(chunk.iter().map(|c| &**c).collect::<Vec<&str>>())?;
    }
    for chunk in remove.chunks(BATCH) {
        ps.unsubscribe(chunk.iter().map(|c| &**c).collect::<Vec<&str>>())?;
    }
    ps.set_read_timeout(Some(POLL))
}
