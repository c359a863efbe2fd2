//! The NATS driver of the bridge: `async-nats` (the maintained client; the blocking
//! `nats` crate is deprecated) on a current-thread tokio runtime inside the bridge's
//! own thread. One task takes what the loops queued when woken and publishes it;
//! another keeps the subscriptions in step with the rooms (checked every 10 ms) and
//! hands what arrives to the loops, fed by one task per subscribed room; the client
//! reconnects (with our backoff) and resubscribes by itself. While the link is down, messages are
//! dropped and counted rather than queued for later.

use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event, Message, ServerAddr, Subscriber};
use futures_core::Stream;
use log::{info, warn};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use super::{BrokerConfig, BrokerError, BrokerStats, Inbound, Job, Outbound, Publish, Started, backoff};
use crate::net::bus::BusMember;

/// Messages forwarded from the room tasks and not handled yet.
const FORWARDED: usize = 4096;
/// Connecting, and handing a batch to the client, may take this long.
const TIMEOUT: Duration = Duration::from_secs(2);
/// The client pings the server this often (a dead link is noticed after two).
const PING_EVERY: Duration = Duration::from_secs(5);
/// A link that lasted less than this before failing does not reset the backoff.
const STABLE: Duration = Duration::from_secs(5);
/// Commands the client queues before `publish` waits.
const CLIENT_CAPACITY: usize = 4096;
/// Messages a subscription buffers before the client drops them (a slow consumer:
/// the gaps show it); async-nats's default.
const SUBSCRIPTION_CAPACITY: usize = 65_536;
/// How often the receiver looks at room changes, refused hand-overs and the stop flag.
const TICK: Duration = Duration::from_millis(10);

pub(super) fn check_url(cfg: &BrokerConfig) -> Result<(), BrokerError> {
    server_addr(cfg).map(drop)
}

fn server_addr(cfg: &BrokerConfig) -> Result<ServerAddr, BrokerError> {
    cfg.url.parse::<ServerAddr>().map_err(|e| BrokerError::Url(e.to_string()))
}

pub(super) fn start<H: BusMember + Send>(job: Job<H>) -> Result<Started, BrokerError> {
    let addr = server_addr(&job.cfg)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(BrokerError::Spawn)?;
    let notify = Arc::new(Notify::new());
    let woken = notify.clone();
    let thread = thread::Builder::new()
        .name("broker-nats".into())
        .spawn(move || runtime.block_on(run(job, addr, woken)))
        .map_err(BrokerError::Spawn)?;
    Ok(Started { threads: vec![thread], wake: Arc::new(move || notify.notify_one()) })
}

/// The link's history, for the counters and the backoff.
#[derive(Default)]
struct Link {
    /// When the current (or last) connection came up.
    connected_at: Mutex<Option<Instant>>,
    /// Connections in a row that failed soon after they came up (or failed attempts
    /// before the first one).
    short_lived: AtomicU32,
}

/// Connection options: reconnect forever with our backoff (which keeps growing while
/// links fail soon after coming up), link state in the counters, and a ping often
/// enough to notice a dead link.
fn options<H>(job: &Job<H>) -> ConnectOptions {
    let stats = job.port.stats.clone();
    let url = job.cfg.display_url();
    let link = Arc::new(Link::default());
    let (failures, delays) = (stats.clone(), link.clone());
    let options = ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(TIMEOUT)
        .ping_interval(PING_EVERY)
        .client_capacity(CLIENT_CAPACITY)
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        // The server does not send our own messages back.
        .no_echo()
        // Asked before attempt `n` (from 1) of a series: n - 1 have failed.
        .reconnect_delay_callback(move |n| {
            if n > 1 {
                failures.connect_failures.fetch_add(1, Ordering::Relaxed);
            }
            let failed = (n as u32).saturating_sub(1) + delays.short_lived.load(Ordering::Relaxed);
            if failed == 0 { Duration::ZERO } else { backoff(failed - 1) }
        })
        .event_callback(move |event| {
            on_event(&stats, &link, &url, &event);
            async {}
        });
    match &job.cfg.password {
        Some(token) if !job.cfg.url.contains('@') => options.token(token.clone()),
        _ => options,
    }
}

fn on_event(stats: &BrokerStats, link: &Link, url: &str, event: &Event) {
    let mut connected_at = link.connected_at.lock().unwrap_or_else(PoisonError::into_inner);
    match event {
        Event::Connected => {
            stats.publisher_up.store(true, Ordering::Release);
            stats.subscriber_up.store(true, Ordering::Release);
            // After a loss, or after failed attempts at the start.
            if connected_at.is_some() || stats.connect_failures.load(Ordering::Relaxed) > 0 {
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
                info!("broker {url}: link up again");
            }
            *connected_at = Some(Instant::now());
        }
        Event::Disconnected => {
            stats.publisher_up.store(false, Ordering::Release);
            stats.subscriber_up.store(false, Ordering::Release);
            if connected_at.is_some_and(|at| at.elapsed() < STABLE) {
                link.short_lived.fetch_add(1, Ordering::Relaxed);
            } else {
                link.short_lived.store(0, Ordering::Relaxed);
            }
            warn!("broker {url}: link lost; local rooms keep working, reconnecting");
        }
        Event::SlowConsumer(_) => warn!("broker {url}: this bridge is a slow consumer (the gaps counter shows the loss)"),
        other => info!("broker {url}: {other}"),
    }
}

async fn run<H: BusMember>(job: Job<H>, addr: ServerAddr, woken: Arc<Notify>) {
    let client = match options(&job).connect(addr).await {
        Ok(client) => client,
        Err(e) => {
            // With retry_on_initial_connect this is a configuration error.
            warn!("broker {}: cannot start the NATS client ({e}); rooms stay local", job.cfg.display_url());
            job.port.close();
            return;
        }
    };
    tokio::spawn(warn_if_not_connected(client.clone(), job.cfg.display_url()));
    // Publishing and receiving go on side by side: a large batch to publish never
    // holds up what arrives.
    let publisher = Publisher { client: client.clone(), outbound: Outbound::new(&job), job: job.share() };
    let publishing = tokio::spawn(publisher.run(woken));
    let receiver = Receiver { client: client.clone(), inbound: Inbound::new(&job), rooms: HashMap::new() };
    receiver.run(&job).await;
    let _ = publishing.await;
    job.port.close();
    // Send what the client holds (not waiting on a broker that is gone).
    let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
}

/// The client connects in the background: says so if it has not after a second.
async fn warn_if_not_connected(client: Client, url: String) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    if client.connection_state() != State::Connected {
        warn!("broker {url}: cannot connect; local rooms keep working, retrying");
    }
}

/// The task that publishes what the loops queue.
struct Publisher<H> {
    client: Client,
    outbound: Outbound,
    job: Job<H>,
}

impl<H: BusMember> Publisher<H> {
    /// Takes the loops' lanes each time they wake it; once the bridge stops, publishes
    /// what they queued last and returns.
    async fn run(mut self, woken: Arc<Notify>) {
        loop {
            woken.notified().await;
            let stopping = self.job.stopped();
            let batch = self.outbound.absorb(self.job.port.take());
            self.publish(batch).await;
            if stopping {
                return;
            }
        }
    }

    /// Hands `batch` to the client (which sends it in the background), or drops it
    /// (counted) while the link is down. A client whose queue stays full (a broker
    /// that stopped reading) gets [`TIMEOUT`] for the whole batch; the rest is dropped.
    async fn publish(&mut self, batch: Vec<Publish>) {
        let stats = &self.job.port.stats;
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        let total = batch.len();
        for (i, p) in batch.into_iter().enumerate() {
            if self.client.connection_state() != State::Connected {
                stats.dropped_link_down.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let sent = tokio::time::timeout_at(deadline, self.client.publish(p.channel.to_string(), p.bytes.into()));
            match sent.await {
                Ok(Ok(())) => stats.published.fetch_add(1, Ordering::Relaxed),
                Ok(Err(e)) if matches!(e.kind(), async_nats::client::PublishErrorKind::MaxPayloadExceeded) => {
                    stats.dropped_too_large.fetch_add(1, Ordering::Relaxed)
                }
                Ok(Err(_)) => stats.dropped_link_down.fetch_add(1, Ordering::Relaxed),
                Err(_) => {
                    warn!("broker {}: the NATS client has been full for {TIMEOUT:?}", self.job.cfg.display_url());
                    stats.dropped_link_down.fetch_add((total - i) as u64, Ordering::Relaxed);
                    return;
                }
            };
        }
    }
}

/// The task that keeps the subscriptions in step with the rooms and hands what
/// arrives to the loops.
struct Receiver<H> {
    client: Client,
    inbound: Inbound<H>,
    /// Channel -> the task forwarding its messages (aborting it unsubscribes).
    rooms: HashMap<Arc<str>, JoinHandle<()>>,
}

impl<H: BusMember> Receiver<H> {
    /// Until the bridge stops: messages as they come, room changes and refused
    /// hand-overs at least every [`TICK`].
    async fn run(mut self, job: &Job<H>) {
        let (tx, mut rx) = mpsc::channel::<(Arc<str>, Message)>(FORWARDED);
        let mut tick = tokio::time::interval(TICK);
        while !job.stopped() {
            tokio::select! {
                Some((channel, msg)) = rx.recv() => self.inbound.receive(&channel, &msg.payload),
                _ = tick.tick() => {
                    if self.inbound.routes.take_changed() {
                        self.resubscribe(&tx).await;
                    }
                    self.inbound.retry();
                }
            }
        }
        for (_, task) in self.rooms.drain() {
            task.abort(); // its subscriber unsubscribes when dropped
        }
        // Let the unsubscriptions reach the client.
        tokio::task::yield_now().await;
    }

    /// Subscribes and unsubscribes to match the process's rooms.
    async fn resubscribe(&mut self, tx: &mpsc::Sender<(Arc<str>, Message)>) {
        let changes = self.inbound.changes();
        for channel in changes.unsubscribe {
            if let Some(task) = self.rooms.remove(&channel) {
                task.abort();
            }
        }
        for channel in changes.subscribe {
            match self.client.subscribe(channel.to_string()).await {
                Ok(sub) => {
                    let task = tokio::spawn(forward(channel.clone(), sub, tx.clone()));
                    self.rooms.insert(channel, task);
                }
                Err(e) => {
                    warn!("broker: cannot subscribe to {channel}: {e}");
                    self.inbound.not_subscribed(&channel);
                }
            }
        }
    }
}

/// Forwards a room's messages to the driver, in order.
async fn forward(channel: Arc<str>, mut sub: Subscriber, tx: mpsc::Sender<(Arc<str>, Message)>) {
    while let Some(msg) = poll_fn(|cx| Pin::new(&mut sub).poll_next(cx)).await {
        if tx.send((channel.clone(), msg)).await.is_err() {
            return;
        }
    }
}
