//! The relay on several loops ([`ServerGroup`], `SO_REUSEPORT`), over loopback: rooms
//! span the loops with the single loop's semantics (every message exactly once to
//! every other member, per-sender order, no echo), interest does not go stale under
//! churn, shutdown reaches every loop, and a client that never reads on one loop does
//! not hold up the others. Which loop a client lands on is the kernel's choice: the
//! tests connect until the placement they need is there.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::net::*;
use rfc6455::net::{Client, Inbox, Relay, ServerConfig, ServerGroup, ServerStats};
use rfc6455::{CloseCode, Event, MessageKind};

const LOOPS: usize = 4;

/// A relay on `LOOPS` loops, running on its own threads (stopped on drop, as a
/// [`Running`] server is).
struct Group {
    running: Running,
    stats: Vec<Arc<ServerStats>>,
    inboxes: Vec<Inbox<Relay>>,
}

impl Group {
    fn start(cfg: ServerConfig) -> Group {
        Self::start_with(cfg, |_| Relay::new())
    }

    fn start_with(cfg: ServerConfig, relay: impl FnMut(usize) -> Relay) -> Group {
        let mut group = ServerGroup::bind("127.0.0.1:0".parse().unwrap(), cfg, LOOPS, relay).unwrap();
        Relay::link(&mut group);
        let inboxes = group.loops_mut().iter().map(|s| s.inbox()).collect();
        let (addr, stats, handle) = (group.local_addr(), group.stats(), group.shutdown_handle());
        let thread = Some(thread::spawn(move || group.run()));
        let running = Running { addr, admin: None, handle, stats: stats[0].clone(), thread };
        Group { running, stats, inboxes }
    }

    fn opened(&self) -> Vec<u64> {
        self.stats.iter().map(|s| s.opened.load(Ordering::Relaxed)).collect()
    }

    /// Connects to `room` and says which loop took the connection.
    fn connect(&self, room: &str) -> (Client, usize) {
        let before = self.opened();
        let client = Client::connect_url(&format!("ws://{}{room}", self.running.addr)).unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            let now = self.opened();
            if let Some(i) = (0..LOOPS).find(|&i| now[i] > before[i]) {
                return (client, i);
            }
            assert!(Instant::now() < deadline, "no loop opened the connection");
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Clients in `room` until every loop has at least one; returns them with their loops.
    fn spread(&self, room: &str) -> Vec<(Client, usize)> {
        let mut clients = Vec::new();
        while (0..LOOPS).any(|l| !clients.iter().any(|(_, i)| *i == l)) {
            assert!(clients.len() < 200, "the kernel put 200 connections on fewer than {LOOPS} loops");
            clients.push(self.connect(room));
        }
        clients
    }

    /// A client in `room` on loop `want` (others made on the way are closed).
    fn connect_on(&self, room: &str, want: usize) -> Client {
        for _ in 0..200 {
            let (mut c, i) = self.connect(room);
            if i == want {
                return c;
            }
            c.close(CloseCode::NORMAL, "").unwrap();
            next_closed(&mut c);
        }
        panic!("200 connections and none on loop {want}");
    }

    /// Runs `f` on loop `i`'s relay and returns what it says.
    fn ask<T: Send + 'static>(&self, i: usize, f: impl FnOnce(&Relay) -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        self.inboxes[i].send(move |relay, _| tx.send(f(relay)).unwrap()).unwrap();
        rx.recv_timeout(WAIT).unwrap()
    }
}

/// The texts a client receives until it has `n` of them.
fn receive(c: &mut Client, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| match next_message(c) {
            (MessageKind::Text, t) => String::from_utf8(t).unwrap(),
            other => panic!("{other:?}"),
        })
        .collect()
}

const PER_SENDER: usize = 10_000;

/// Three senders on three different loops, 10,000 numbered messages each; every client
/// of the room (on every loop) gets every other sender's messages exactly once, in
/// order, and none of its own.
#[test]
fn rooms_span_the_loops_every_message_once_in_order() {
    let group = Group::start(ServerConfig::default());
    let mut clients = group.spread("/lobby");
    // Senders: the first client found on loops 0, 1 and 2.
    let senders: Vec<usize> = (0..3).map(|l| clients.iter().position(|(_, i)| *i == l).unwrap()).collect();
    let total = clients.len();
    let deadline = Instant::now() + WAIT;
    while group.ask(3, |r| r.rooms_elsewhere().len()) != 1 || (0..LOOPS).any(|l| group.ask(l, |r| r.members("/lobby")) == 0) {
        assert!(Instant::now() < deadline, "interest did not spread");
        thread::sleep(Duration::from_millis(5));
    }
    let mut handles = Vec::new();
    for (k, mut client) in clients.drain(..).map(|(c, _)| c).enumerate() {
        let sender = senders.iter().position(|&s| s == k);
        handles.push(thread::spawn(move || {
            if let Some(s) = sender {
                for n in 0..PER_SENDER {
                    client.send_text(&format!("{s}:{n}")).unwrap();
                }
            }
            let expect = if sender.is_some() { 2 * PER_SENDER } else { 3 * PER_SENDER };
            let got = receive(&mut client, expect);
            let mut next = [0usize; 3];
            for m in got {
                let (s, n) = m.split_once(':').unwrap();
                let (s, n): (usize, usize) = (s.parse().unwrap(), n.parse().unwrap());
                assert_ne!(Some(s), sender, "a sender got its own message back");
                assert_eq!(n, next[s], "sender {s}'s messages out of order or repeated");
                next[s] += 1;
            }
            client
        }));
    }
    let mut clients: Vec<Client> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    // Nothing more: one extra message from each would show up as out of order above,
    // a duplicate would be a 10,001st message; check the queues are empty.
    for c in &mut clients {
        match c.next_event(Some(Duration::from_millis(50))).unwrap() {
            None => {}
            Some(Event::Text(t)) => panic!("an extra message: {t}"),
            Some(_) => {}
        }
    }
    let relayed: u64 = (0..LOOPS).map(|l| group.ask(l, Relay::relayed)).sum();
    assert_eq!(relayed, 3 * PER_SENDER as u64);
    assert_eq!(group.ask(0, Relay::dropped_between_loops), 0);
    eprintln!("{total} clients over {LOOPS} loops");
}

/// Clients join and leave rooms on every loop; once all have left, no loop thinks any
/// other has members anywhere.
#[test]
fn join_and_leave_churn_leaves_no_stale_interest() {
    let group = Group::start(ServerConfig::default());
    for round in 0..3 {
        let mut clients = Vec::new();
        for r in 0..5 {
            clients.extend(group.spread(&format!("/room{r}")).into_iter().map(|(c, _)| c));
        }
        let deadline = Instant::now() + WAIT;
        while (0..LOOPS).any(|l| group.ask(l, |r| r.rooms_elsewhere().len()) != 5) {
            assert!(Instant::now() < deadline, "round {round}: every loop learns of the 5 rooms elsewhere");
            thread::sleep(Duration::from_millis(5));
        }
        for mut c in clients {
            c.close(CloseCode::NORMAL, "").unwrap();
            next_closed(&mut c);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let stale: Vec<Vec<String>> = (0..LOOPS).map(|l| group.ask(l, Relay::rooms_elsewhere)).collect();
            let tracked: usize = (0..LOOPS).map(|l| group.ask(l, Relay::tracked)).sum();
            if stale.iter().all(Vec::is_empty) && tracked == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: stale interest {stale:?}, {tracked} tracked");
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A graceful shutdown closes the clients of every loop with 1001 and returns.
#[test]
fn shutdown_closes_every_loops_clients_with_1001() {
    let mut group = Group::start(ServerConfig::default());
    let clients = group.spread("/lobby");
    let handle = group.running.handle.clone();
    let stopper = thread::spawn(move || handle.shutdown());
    for (mut c, l) in clients {
        let closed = next_closed(&mut c);
        assert_eq!(closed.code(), CloseCode::GOING_AWAY, "a client on loop {l}");
    }
    stopper.join().unwrap();
    group.running.stop();
}

/// A client that never reads, on loop 0, in a room whose sender is on loop 1 and whose
/// other reader is on loop 2: the sender's messages all reach the reader, the silent
/// one is closed as a slow consumer, and memory stays bounded.
#[test]
fn a_client_that_never_reads_does_not_hold_up_other_loops() {
    let cfg = ServerConfig { high_water_mark: 1 << 20, ..ServerConfig::default() };
    let group = Group::start(cfg);
    // A client we simply never read from.
    let silent = group.connect_on("/feed", 0);
    let mut reader = group.connect_on("/feed", 2);
    let mut sender = group.connect_on("/feed", 1);
    let deadline = Instant::now() + WAIT;
    while group.ask(1, |r| r.rooms_elsewhere().len()) != 1 || group.ask(2, |r| r.members("/feed")) != 1 {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(5));
    }
    const N: usize = 400;
    let payload = vec![b'x'; 64 * 1024];
    // The reader keeps up (the sender stays at most 8 messages, 512 KiB, ahead of it:
    // under the 1 MiB mark even on a slow machine); the silent client falls behind.
    let got = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let progress = got.clone();
    let reading = thread::spawn(move || {
        for n in 0..N {
            let (_, data) = next_message(&mut reader);
            assert_eq!(&data[..8], format!("{n:08}").as_bytes());
            progress.store(n + 1, Ordering::Release);
        }
        reader
    });
    for n in 0..N {
        let deadline = Instant::now() + WAIT;
        while n >= got.load(Ordering::Acquire) + 8 {
            assert!(Instant::now() < deadline, "the reader stalled at {}", got.load(Ordering::Acquire));
            assert!(sender.flush(Duration::from_millis(1)).is_ok());
        }
        let mut msg = format!("{n:08}").into_bytes();
        msg.extend_from_slice(&payload[8..]);
        sender.send(MessageKind::Binary, &msg).unwrap();
    }
    assert!(sender.flush(WAIT).unwrap(), "the sender's messages left");
    let _reader = reading.join().unwrap();
    let deadline = Instant::now() + WAIT;
    while group.stats[0].slow_consumers.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the silent client was not closed");
        thread::sleep(Duration::from_millis(5));
    }
    let peak = group.stats[0].peak_pinned_bytes.load(Ordering::Relaxed);
    assert!(peak < 4 << 20, "loop 0 pinned {peak} bytes for a client that never reads");
    drop(silent);
}

/// With permessage-deflate the relay compresses a message once on its sender's loop
/// and the other loops pass on that encoding: clients that negotiated deflate and
/// clients that did not, on every loop, all get the message as sent.
#[test]
fn compressed_messages_cross_the_loops() {
    use rfc6455::net::ClientOptions;
    use rfc6455::{ClientRequest, Config, DeflateConfig};
    let d = DeflateConfig { server_no_context_takeover: true, ..DeflateConfig::default() };
    let cfg = ServerConfig { engine: Config { deflate: Some(d.clone()), ..Config::default() }, ..ServerConfig::default() };
    let group = Group::start_with(cfg, move |_| Relay::with_deflate(d.clone()));
    let url = format!("ws://{}/z", group.running.addr);
    let mut clients = Vec::new();
    while (0..LOOPS).any(|l| clients.iter().filter(|(_, i, _)| *i == l).count() < 2) {
        assert!(clients.len() < 200, "placement");
        let deflate = clients.len() % 2 == 0;
        let before = group.opened();
        let mut opts = ClientOptions::new(ClientRequest::new(&url).unwrap());
        opts.config = Config { deflate: deflate.then(DeflateConfig::default), ..Config::default() };
        let c = Client::connect(opts).unwrap();
        assert_eq!(c.engine().deflate_params().is_some(), deflate);
        let deadline = Instant::now() + WAIT;
        let l = loop {
            let now = group.opened();
            if let Some(i) = (0..LOOPS).find(|&i| now[i] > before[i]) {
                break i;
            }
            assert!(Instant::now() < deadline);
            thread::sleep(Duration::from_millis(1));
        };
        clients.push((c, l, deflate));
    }
    let deadline = Instant::now() + WAIT;
    while (0..LOOPS).any(|l| group.ask(l, |r| r.rooms_elsewhere().len()) != 1) {
        assert!(Instant::now() < deadline, "interest did not spread");
        thread::sleep(Duration::from_millis(5));
    }
    let long = "compress me once for every loop. ".repeat(100);
    let (sender, rest) = clients.split_first_mut().unwrap();
    sender.0.send_text(&long).unwrap();
    sender.0.send_text("short").unwrap();
    for (c, l, deflate) in rest {
        assert_eq!(receive(c, 2), [long.clone(), "short".to_owned()], "a client on loop {l} (deflate: {deflate})");
    }
}
