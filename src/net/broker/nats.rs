//! The NATS driver of the bridge: `async-nats` (the maintained client; the blocking
//! `nats` crate is deprecated) on a current-thread tokio runtime inside the bridge's
//! own thread. One task takes what the loops queued when woken and publishes it;
//! one task per subscribed room forwards its messages; the client reconnects (with
//! our backoff) and resubscribes by itself. While the link is down, messages are
//! dropped and counted rather than queued for later.

use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

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
/// How often the driver looks at the stop flag and at refused hand-overs.
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

/// Connection options: reconnect forever with our backoff, link state in the counters.
fn options<H>(job: &Job<H>) -> ConnectOptions {
    let stats = job.port.stats.clone();
    let url = job.cfg.display_url();
    let connected_before = Arc::new(AtomicBool::new(false));
    let failures = stats.clone();
    let options = ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        // The server does not send our own messages back.
        .no_echo()
        // Asked before attempt `n` (from 1) of a series: n - 1 have failed.
        .reconnect_delay_callback(move |n| {
            if n <= 1 {
                return Duration::ZERO;
            }
            failures.connect_failures.fetch_add(1, Ordering::Relaxed);
            backoff(n as u32 - 2)
        })
        .event_callback(move |event| {
            on_event(&stats, &connected_before, &url, &event);
            async {}
        });
    match &job.cfg.password {
        Some(token) if !job.cfg.url.contains('@') => options.token(token.clone()),
        _ => options,
    }
}

fn on_event(stats: &BrokerStats, connected_before: &AtomicBool, url: &str, event: &Event) {
    match event {
        Event::Connected => {
            stats.up.store(true, Ordering::Release);
            if connected_before.swap(true, Ordering::AcqRel) {
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
                info!("broker {url}: link up again");
            }
        }
        Event::Disconnected => {
            stats.up.store(false, Ordering::Release);
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
            return;
        }
    };
    tokio::spawn(warn_if_not_connected(client.clone(), job.cfg.display_url()));
    let mut bridge = Nats { client, outbound: Outbound::new(&job), inbound: Inbound::new(&job), rooms: HashMap::new() };
    let (tx, mut rx) = mpsc::channel::<(Arc<str>, Message)>(FORWARDED);
    let mut tick = tokio::time::interval(TICK);
    while !job.stopped() {
        tokio::select! {
            () = woken.notified() => {
                let batch = bridge.outbound.absorb(job.port.take());
                bridge.publish(batch, &job).await;
                if bridge.inbound.routes.take_changed() {
                    bridge.resubscribe(&tx).await;
                }
            }
            Some((channel, msg)) = rx.recv() => bridge.inbound.receive(&channel, &msg.payload),
            _ = tick.tick() => bridge.inbound.retry(),
        }
    }
    for (_, task) in bridge.rooms.drain() {
        task.abort();
    }
    // Let the subscribers' unsubscriptions reach the client, then send what it holds
    // (not waiting on a broker that is gone).
    tokio::task::yield_now().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), bridge.client.flush()).await;
}

/// The client connects in the background: says so if it has not after a second.
async fn warn_if_not_connected(client: Client, url: String) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    if client.connection_state() != State::Connected {
        warn!("broker {url}: cannot connect; local rooms keep working, retrying");
    }
}

/// The driver's state on its thread.
struct Nats<H> {
    client: Client,
    outbound: Outbound,
    inbound: Inbound<H>,
    /// Channel -> the task forwarding its messages (aborting it unsubscribes).
    rooms: HashMap<Arc<str>, JoinHandle<()>>,
}

impl<H: BusMember> Nats<H> {
    /// Publishes `batch`, or drops it (counted) while the link is down.
    async fn publish(&mut self, batch: Vec<Publish>, job: &Job<H>) {
        let stats = &job.port.stats;
        for p in batch {
            if self.client.connection_state() != State::Connected {
                stats.dropped_link_down.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match self.client.publish(p.channel.to_string(), p.bytes.into()).await {
                Ok(()) => stats.published.fetch_add(1, Ordering::Relaxed),
                Err(e) if matches!(e.kind(), async_nats::client::PublishErrorKind::MaxPayloadExceeded) => {
                    stats.dropped_too_large.fetch_add(1, Ordering::Relaxed)
                }
                Err(_) => stats.dropped_link_down.fetch_add(1, Ordering::Relaxed),
            };
        }
    }

    /// Subscribes and unsubscribes to match the process's rooms.
    async fn resubscribe(&mut self, tx: &mpsc::Sender<(Arc<str>, Message)>) {
        let (add, remove) = self.inbound.changes();
        for channel in remove {
            if let Some(task) = self.rooms.remove(&channel) {
                task.abort();
            }
        }
        for channel in add {
            match self.client.subscribe(channel.to_string()).await {
                Ok(sub) => {
                    let task = tokio::spawn(forward(channel.clone(), sub, tx.clone()));
                    self.rooms.insert(channel, task);
                }
                Err(e) => {
                    // Tried again at the next change.
                    warn!("broker: cannot subscribe to {channel}: {e}");
                    self.inbound.subscribed.remove(&channel);
                    self.inbound.routes.mark_changed();
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
