//! Rooms across relay processes through real brokers (`redis-server`, `nats-server`,
//! started by the tests on free loopback ports): each node is an `rfc6455 relay
//! --broker URL` process with two loops. Cross-node delivery is byte-exact with no
//! echo and no leak into other rooms; three senders on two nodes keep per-sender order
//! with no gap; churn leaves no subscription behind; one PUBLISH per message; the
//! broker link's faults (subscribers killed, broker restarted, broker down at start,
//! broker stopped, a node killed) keep local rooms working, resume cross-node delivery
//! and count what was lost, exactly.

mod common;

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::brokers::{Nats, Redis, free_port, signal};
use common::net::*;
use rfc6455::net::Client;
use rfc6455::{CloseCode, Event, MessageKind};

/// A relay process with a broker, and its admin address (for `/metrics`).
struct Node {
    process: ServerProcess,
    admin: SocketAddr,
}

impl Node {
    fn start(broker: &str) -> Node {
        Node::start_with_env(broker, &[])
    }

    fn start_with_env(broker: &str, env: &[(&str, &str)]) -> Node {
        let args = ["relay", "--listen", "127.0.0.1:0", "--threads", "2", "--no-page", "--admin-listen", "127.0.0.1:0", "--broker", broker];
        let process = ServerProcess::start_with_env(&args, env);
        let admin = process.addr_after("metrics: http://");
        Node { process, admin }
    }

    fn client(&self, room: &str) -> Client {
        Client::connect_url(&format!("ws://{}{room}", self.process.addr)).unwrap()
    }

    /// A sample of the node's `/metrics` (`name` with its labels, if any).
    fn metric(&self, name: &str) -> u64 {
        let (_, _, body) = http_get(self.admin, "/metrics");
        let text = String::from_utf8(body).unwrap();
        let line = text.lines().find(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ')));
        line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {name} in {text}"))
    }

    /// Waits (bounded) until `metric` satisfies `f`.
    fn wait_metric(&self, name: &str, f: impl Fn(u64) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !f(self.metric(name)) {
            assert!(Instant::now() < deadline, "timed out waiting on {name} (now {})", self.metric(name));
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn lost(&self) -> u64 {
        ["rfc6455_broker_gaps_total", "rfc6455_broker_duplicates_total", "rfc6455_broker_malformed_total"]
            .iter()
            .map(|m| self.metric(m))
            .chain(
                ["queue_full", "link_down", "refused", "too_large"]
                    .iter()
                    .map(|r| self.metric(&format!("rfc6455_broker_dropped_total{{reason=\"{r}\"}}"))),
            )
            .sum()
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit.
    fn terminate(mut self, within: Duration) -> Duration {
        let started = Instant::now();
        signal(&self.process.child, "TERM");
        loop {
            if let Some(status) = self.process.child.try_wait().unwrap() {
                assert!(status.success(), "exit status {status}");
                return started.elapsed();
            }
            assert!(started.elapsed() < within, "still running {within:?} after SIGTERM");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The channel (Redis) or subject (NATS) of `room` with the default prefix.
fn channel(room: &str) -> String {
    rfc6455::net::BrokerConfig::parse("redis://127.0.0.1").unwrap().channel(room)
}

/// Waits (bounded) until `f` holds.
fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A 1 MiB payload that is not all one byte.
fn big_payload() -> Vec<u8> {
    (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

/// The messages a sender sends in the byte-exact tests: text (non-ASCII), empty text,
/// empty binary, 1 MiB binary.
fn assorted() -> Vec<(MessageKind, Vec<u8>)> {
    vec![
        (MessageKind::Text, "héllo ✓ from A".as_bytes().to_vec()),
        (MessageKind::Text, Vec::new()),
        (MessageKind::Binary, Vec::new()),
        (MessageKind::Binary, big_payload()),
    ]
}

/// A sends the assorted messages in its room; every `receivers` gets exactly them.
/// Then a marker from the first receiver is the first thing A receives (the broker
/// sent nothing of A's back), and `others` (members of another room) get the marker
/// `other_marker` sends there as their first message (nothing leaked).
fn exchange(a: &mut Client, receivers: &mut [&mut Client], other_marker: &mut Client, others: &mut [&mut Client]) {
    for (kind, data) in assorted() {
        a.send(kind, &data).unwrap();
    }
    for r in receivers.iter_mut() {
        for (kind, data) in assorted() {
            let (k, d) = next_message(r);
            assert_eq!((k, d.len()), (kind, data.len()));
            assert!(d == data, "payload differs");
        }
    }
    receivers[0].send_text("marker").unwrap();
    assert_eq!(next_message(a), (MessageKind::Text, b"marker".to_vec()), "the sender got something back");
    other_marker.send_text("other room").unwrap();
    for o in others.iter_mut() {
        assert_eq!(next_message(o), (MessageKind::Text, b"other room".to_vec()), "a message leaked into another room");
    }
}

/// Three nodes on one Redis: byte-exact delivery, no echo, no leak, one PUBLISH per
/// message, and a room with members on one node only is subscribed by that node only.
#[test]
fn redis_rooms_span_processes_byte_exact() {
    let redis = Redis::start();
    let nodes: Vec<Node> = (0..3).map(|_| Node::start(&redis.url())).collect();
    let mut a = nodes[0].client("/lobby");
    let mut b = nodes[1].client("/lobby");
    let mut d = nodes[2].client("/lobby");
    let mut c = nodes[1].client("/other");
    let mut e = nodes[0].client("/other");
    let mut alone = nodes[2].client("/alone");
    wait_for("three subscribers of /lobby", || redis.numsub(&channel("/lobby")) == 3);
    wait_for("two subscribers of /other", || redis.numsub(&channel("/other")) == 2);
    wait_for("one subscriber of /alone", || redis.numsub(&channel("/alone")) == 1);
    exchange(&mut a, &mut [&mut b, &mut d], &mut e, &mut [&mut c]);
    alone.send_text("nobody hears this").unwrap();
    // Over the broker's limit (1 MiB by default): it stays local.
    a.send_binary(&vec![7; (1 << 20) + 1]).unwrap();
    a.send_text("after the big one").unwrap();
    assert_eq!(next_message(&mut b).1, b"after the big one");
    assert_eq!(nodes[0].metric("rfc6455_broker_dropped_total{reason=\"too_large\"}"), 1);
    // 4 assorted + 2 markers + 1 alone + 1 after.
    wait_for("8 publishes", || redis.publish_calls() == 8);
    assert_eq!(redis.publish_calls(), 8, "one PUBLISH per message");
    // Assorted to b and d, b's marker to a and d, e's to c, the last one to b and d.
    let received = 4 * 2 + 2 + 1 + 2;
    wait_for("the received counters", || nodes.iter().map(|n| n.metric("rfc6455_broker_received_total")).sum::<u64>() == received);
    assert_eq!(nodes[1].lost() + nodes[2].lost(), 0);
    for n in &nodes {
        assert_eq!(n.metric("rfc6455_broker_up"), 1);
    }
}

const PER_SENDER: usize = 10_000;

/// Three senders on two nodes (two on the first), 10,000 numbered messages each, and
/// one listener per node: every client gets every other sender's messages exactly
/// once, in order; no gap is counted.
fn order_across_nodes(nodes: &[Node], wait_subscribed: impl Fn()) {
    let placement = [0, 0, 1, 0, 1]; // senders 0, 1, 2; then listeners
    let mut clients: Vec<Client> = placement.iter().map(|&n| nodes[n].client("/lobby")).collect();
    wait_subscribed();
    let mut handles = Vec::new();
    for (k, mut client) in clients.drain(..).enumerate() {
        let sender = (k < 3).then_some(k);
        handles.push(thread::spawn(move || {
            if let Some(s) = sender {
                for n in 0..PER_SENDER {
                    client.send_text(&format!("{s}:{n}")).unwrap();
                }
            }
            let expect = if sender.is_some() { 2 * PER_SENDER } else { 3 * PER_SENDER };
            let mut next = [0usize; 3];
            for _ in 0..expect {
                let (_, m) = next_message(&mut client);
                let m = String::from_utf8(m).unwrap();
                let (s, n) = m.split_once(':').unwrap();
                let (s, n): (usize, usize) = (s.parse().unwrap(), n.parse().unwrap());
                assert_ne!(Some(s), sender, "a sender got its own message back");
                assert_eq!(n, next[s], "sender {s}'s messages out of order, repeated or missing");
                next[s] += 1;
            }
            match client.next_event(Some(Duration::from_millis(100))).unwrap() {
                Some(Event::Text(t)) => panic!("an extra message: {t}"),
                _ => client,
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    for n in nodes {
        assert_eq!(n.lost(), 0, "gaps, duplicates or drops counted");
    }
}

#[test]
fn redis_order_three_senders_two_nodes() {
    let redis = Redis::start();
    let nodes: Vec<Node> = (0..2).map(|_| Node::start(&redis.url())).collect();
    order_across_nodes(&nodes, || wait_for("both nodes subscribed", || redis.numsub(&channel("/lobby")) == 2));
    assert_eq!(redis.publish_calls(), 3 * PER_SENDER as u64, "one PUBLISH per message");
}

/// Rooms come and go on both nodes: a node subscribes to exactly the rooms it has
/// members in, and once everyone has left no subscription is left on the broker.
#[test]
fn redis_churn_leaves_no_subscriptions() {
    let redis = Redis::start();
    let nodes: Vec<Node> = (0..2).map(|_| Node::start(&redis.url())).collect();
    for round in 0..3 {
        let mut clients = Vec::new();
        for r in 0..10 {
            let room = format!("/churn/{r}~x.y");
            // Rooms 0-4 on both nodes, 5-7 on the first only, 8-9 on the second only.
            for (n, node) in nodes.iter().enumerate() {
                if r < 5 || (r < 8) == (n == 0) {
                    clients.push(node.client(&room));
                }
            }
        }
        for r in 0..10 {
            let want = if r < 5 { 2 } else { 1 };
            let ch = channel(&format!("/churn/{r}~x.y"));
            wait_for(&format!("round {round}: {want} subscribers of {ch}"), || redis.numsub(&ch) == want);
        }
        for n in &nodes {
            n.wait_metric("rfc6455_broker_subscriptions", |v| v == if std::ptr::eq(n, &nodes[0]) { 8 } else { 7 });
        }
        for mut c in clients {
            c.close(CloseCode::NORMAL, "").unwrap();
            next_closed(&mut c);
        }
        wait_for(&format!("round {round}: no channel left"), || redis.channels("rfc6455.*").is_empty());
        for n in &nodes {
            n.wait_metric("rfc6455_broker_subscriptions", |v| v == 0);
        }
    }
}

/// `A` on node 0 sends messages numbered from `sent` until `until` says stop (it gets
/// the last number received by `b`, on node 1) and `b` has the last one sent; `local`
/// (node 0) must get every one at once. Returns the next number and the numbers `b`
/// received.
fn stream_until(a: &mut Client, local: &mut Client, b: &mut Client, mut sent: u64, until: impl Fn(u64) -> bool) -> (u64, Vec<u64>) {
    let mut got = Vec::new();
    let deadline = Instant::now() + 3 * WAIT;
    loop {
        assert!(Instant::now() < deadline, "the stream did not end ({sent} sent, {} across)", got.len());
        a.send_text(&sent.to_string()).unwrap();
        let (_, m) = next_message(local);
        assert_eq!(m, sent.to_string().into_bytes(), "the local member missed a message");
        sent += 1;
        while let Some(ev) = b.next_event(Some(Duration::from_millis(1))).unwrap() {
            if let Event::Text(t) = ev {
                let n: u64 = t.parse().unwrap();
                assert!(got.last().is_none_or(|&l| n > l), "out of order or repeated: {n} after {:?}", got.last());
                got.push(n);
            }
        }
        if until(got.last().copied().unwrap_or(0)) && got.last() == Some(&(sent - 1)) {
            return (sent, got);
        }
    }
}

/// The subscriber links are killed, then the broker is restarted: the local room keeps
/// working throughout, cross-node delivery resumes within a second of the broker's
/// return, and every message is either delivered or counted lost, exactly.
#[test]
fn redis_link_faults_lose_only_what_is_counted() {
    let mut redis = Redis::start();
    let nodes: Vec<Node> = (0..2).map(|_| Node::start(&redis.url())).collect();
    let (mut a, mut local, mut b) = (nodes[0].client("/lobby"), nodes[0].client("/lobby"), nodes[1].client("/lobby"));
    wait_for("both nodes subscribed", || redis.numsub(&channel("/lobby")) == 2);
    // Running, then the subscriber links killed mid-stream.
    let (sent, _) = stream_until(&mut a, &mut local, &mut b, 0, |last| last >= 50);
    assert_eq!(redis.kill_subscribers(), 2);
    let killed_at = sent;
    let (sent, got) = stream_until(&mut a, &mut local, &mut b, sent, |last| last > killed_at + 200);
    nodes[1].wait_metric("rfc6455_broker_reconnects_total", |v| v >= 1);
    let gaps = nodes[1].metric("rfc6455_broker_gaps_total");
    // `b` had every message before the kill, and the last one sent after it: every
    // message in between that it did not get is a counted gap.
    eprintln!("subscribers killed: {gaps} messages lost and counted, {} delivered", got.len());
    assert!(gaps > 0, "the kill lost nothing: the test proves nothing");
    assert_eq!(got.len() as u64 + gaps, sent - killed_at, "delivered + gaps = sent");
    // The broker restarted (killed and started on its port); the local room works
    // meanwhile.
    redis.kill();
    down_then_back(&nodes, [&mut a, &mut local, &mut b], gaps, || redis.restart());
    for n in &nodes {
        n.wait_metric("rfc6455_broker_up", |v| v == 1);
    }
}

/// Right after the broker answers again: `a` sends a probe every 5 ms (`local`, on
/// its node, gets each) until `b` gets one, which must be within a second.
fn resumes_within_a_second(a: &mut Client, local: &mut Client, b: &mut Client) {
    let back = Instant::now();
    let deadline = back + WAIT;
    let resumed = loop {
        assert!(Instant::now() < deadline, "cross-node delivery did not resume");
        a.send_text("probe").unwrap();
        next_message(local);
        if let Some(Event::Text(t)) = b.next_event(Some(Duration::from_millis(5))).unwrap() {
            assert_eq!(t, "probe");
            break back.elapsed();
        }
    };
    eprintln!("cross-node delivery resumed {resumed:?} after the broker answered again");
    assert!(resumed < Duration::from_secs(1), "resumed after {resumed:?}");
}

/// With the broker down: `a` (node 0) sends 100 messages, which `local` (node 0) gets;
/// then `restart` brings the broker back, and cross-node delivery to `b` (node 1)
/// resumes within a second. The 100 are counted dropped on node 0 and as a gap on
/// node 1 (whose gap counter read `gaps_before`).
fn down_then_back(nodes: &[Node], [a, local, b]: [&mut Client; 3], gaps_before: u64, restart: impl FnOnce()) {
    for _ in 0..100 {
        a.send_text("while down").unwrap();
        next_message(local);
    }
    restart();
    resumes_within_a_second(a, local, b);
    let dropped = nodes[0].metric("rfc6455_broker_dropped_total{reason=\"link_down\"}");
    assert!(dropped >= 100, "messages sent while the broker was down are counted ({dropped})");
    let gaps = nodes[1].metric("rfc6455_broker_gaps_total") - gaps_before;
    assert!(gaps >= dropped, "the receiving node counts them as a gap ({gaps} < {dropped})");
}

/// The broker is not there when the nodes start: they serve their own rooms, say the
/// link is down, and share rooms once it comes up.
#[test]
fn redis_down_at_start_then_up() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let nodes: Vec<Node> = (0..2).map(|_| Node::start(&url)).collect();
    let (mut a, mut local, mut b) = (nodes[0].client("/lobby"), nodes[0].client("/lobby"), nodes[1].client("/lobby"));
    a.send_text("local only").unwrap();
    assert_eq!(next_message(&mut local).1, b"local only");
    assert_eq!(nodes[0].metric("rfc6455_broker_up"), 0);
    let redis = Redis::on(port);
    wait_for("both nodes subscribed", || redis.numsub(&channel("/lobby")) == 2);
    for n in &nodes {
        n.wait_metric("rfc6455_broker_up", |v| v == 1);
        assert!(n.metric("rfc6455_broker_reconnects_total") >= 1);
    }
    a.send_text("across").unwrap();
    assert_eq!(next_message(&mut local).1, b"across");
    assert_eq!(next_message(&mut b).1, b"across");
}

/// The broker stops answering (SIGSTOP): no loop stalls, the local room keeps working;
/// once it answers again (SIGCONT) cross-node delivery resumes, and every message the
/// sender's node took is published or counted dropped.
#[test]
fn redis_stopped_never_stalls_a_loop() {
    let redis = Redis::start();
    let nodes: Vec<Node> = (0..2).map(|_| Node::start(&redis.url())).collect();
    let (mut a, mut local, mut b) = (nodes[0].client("/lobby"), nodes[0].client("/lobby"), nodes[1].client("/lobby"));
    wait_for("both nodes subscribed", || redis.numsub(&channel("/lobby")) == 2);
    let child = redis.child.as_ref().unwrap();
    signal(child, "STOP");
    let started = Instant::now();
    for n in 0..2_000 {
        a.send_text(&n.to_string()).unwrap();
    }
    for n in 0..2_000 {
        assert_eq!(next_message(&mut local).1, n.to_string().into_bytes());
    }
    eprintln!("2,000 local messages relayed in {:?} while the broker was stopped", started.elapsed());
    signal(child, "CONT");
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "cross-node delivery did not resume");
        a.send_text("after").unwrap();
        next_message(&mut local);
        if let Some(Event::Text(t)) = b.next_event(Some(Duration::from_millis(20))).unwrap() {
            if t == "after" {
                break;
            }
        }
    }
    let n = &nodes[0];
    let accounted = || {
        n.metric("rfc6455_broker_published_total")
            + ["queue_full", "link_down"].iter().map(|r| n.metric(&format!("rfc6455_broker_dropped_total{{reason=\"{r}\"}}"))).sum::<u64>()
    };
    wait_for("every message published or counted dropped", || accounted() == n.metric("rfc6455_relay_messages_total"));
}

/// A node killed with SIGKILL: the broker drops its subscriptions, the other nodes'
/// rooms keep working across.
#[test]
fn a_killed_node_leaves_the_others_working() {
    let redis = Redis::start();
    let mut nodes: Vec<Node> = (0..3).map(|_| Node::start(&redis.url())).collect();
    let (mut a, mut b, _c) = (nodes[0].client("/lobby"), nodes[1].client("/lobby"), nodes[2].client("/lobby"));
    wait_for("three subscribers", || redis.numsub(&channel("/lobby")) == 3);
    let killed = nodes.pop().unwrap();
    signal(&killed.process.child, "KILL");
    wait_for("two subscribers", || redis.numsub(&channel("/lobby")) == 2);
    for n in 0..100 {
        a.send_text(&format!("a{n}")).unwrap();
        b.send_text(&format!("b{n}")).unwrap();
    }
    for n in 0..100 {
        assert_eq!(next_message(&mut b).1, format!("a{n}").into_bytes());
        assert_eq!(next_message(&mut a).1, format!("b{n}").into_bytes());
    }
}

/// A node stopped with SIGTERM closes its clients, unsubscribes its rooms and exits
/// at once.
#[test]
fn a_stopped_node_unsubscribes_and_exits() {
    let redis = Redis::start();
    let nodes: Vec<Node> = (0..2).map(|_| Node::start(&redis.url())).collect();
    let (mut a, mut b) = (nodes[0].client("/lobby"), nodes[1].client("/lobby"));
    wait_for("both nodes subscribed", || redis.numsub(&channel("/lobby")) == 2);
    // The client answers the close (a graceful shutdown waits for it).
    let closing = thread::spawn(move || next_closed(&mut a).code());
    let mut nodes = nodes.into_iter();
    let took = nodes.next().unwrap().terminate(WAIT);
    eprintln!("a node with a client and a broker link stopped in {took:?}");
    assert_eq!(closing.join().unwrap(), CloseCode::GOING_AWAY);
    assert_eq!(redis.numsub(&channel("/lobby")), 1);
    b.send_text("still here").unwrap();
    wait_for("its publication", || redis.publish_calls() == 1);
}

/// NATS stops reading (SIGSTOP) while a node publishes large messages: the node's
/// loops keep relaying locally, and SIGTERM still stops it promptly.
#[test]
fn nats_stopped_never_holds_a_node() {
    let nats = Nats::start();
    let node = Node::start(&nats.url());
    let (mut a, mut local) = (node.client("/lobby"), node.client("/lobby"));
    wait_for("the node subscribed", || nats.subjects(&channel("/lobby")).len() == 1);
    signal(&nats.child, "STOP");
    let big = vec![1u8; 60_000];
    for _ in 0..400 {
        a.send_binary(&big).unwrap();
        assert_eq!(next_message(&mut local).1.len(), big.len());
    }
    // The clients leave first: the shutdown then waits for the bridge alone.
    for mut c in [a, local] {
        c.close(CloseCode::NORMAL, "").unwrap();
        next_closed(&mut c);
    }
    let took = node.terminate(WAIT);
    eprintln!("stopped in {took:?} with NATS not reading");
    signal(&nats.child, "CONT");
}

/// The same over NATS: byte-exact (1 MiB payloads: the test server allows 8 MiB), no
/// echo, no leak; and no subscription left once everyone has left.
#[test]
fn nats_rooms_span_processes_byte_exact() {
    let nats = Nats::start();
    let nodes: Vec<Node> = (0..2).map(|_| Node::start(&nats.url())).collect();
    let (mut a, mut b) = (nodes[0].client("/lobby"), nodes[1].client("/lobby"));
    let (mut c, mut e) = (nodes[1].client("/other"), nodes[0].client("/other"));
    // A room whose escaped name would be too long for a NATS subject: named by its hash.
    let long = "/".repeat(1500);
    let (mut l0, mut l1) = (nodes[0].client(&long), nodes[1].client(&long));
    wait_for("both nodes subscribed to the three rooms", || nats.subjects("rfc6455.").len() == 6);
    exchange(&mut a, &mut [&mut b], &mut e, &mut [&mut c]);
    l0.send_text("long room").unwrap();
    assert_eq!(next_message(&mut l1).1, b"long room");
    assert_eq!(nats.in_msgs(), 7, "one publication per message");
    for n in &nodes {
        assert_eq!(n.lost(), 0);
    }
    for mut cl in [a, b, c, e, l0, l1] {
        cl.close(CloseCode::NORMAL, "").unwrap();
        next_closed(&mut cl);
    }
    wait_for("no subject left", || nats.subjects("rfc6455.").is_empty());
}

/// NATS restarted: the local room keeps working, the clients reconnect and
/// resubscribe, cross-node delivery resumes within a second, and the messages sent
/// meanwhile are counted (not published, or a gap on the receiving node).
#[test]
fn nats_restart_resumes_and_counts() {
    let mut nats = Nats::start();
    let nodes: Vec<Node> = (0..2).map(|_| Node::start(&nats.url())).collect();
    let (mut a, mut local, mut b) = (nodes[0].client("/lobby"), nodes[0].client("/lobby"), nodes[1].client("/lobby"));
    wait_for("both nodes subscribed", || nats.subjects(&channel("/lobby")).len() == 2);
    a.send_text("before").unwrap();
    assert_eq!(next_message(&mut b).1, b"before");
    next_message(&mut local);
    nats.kill();
    for n in &nodes {
        n.wait_metric("rfc6455_broker_up", |v| v == 0);
    }
    down_then_back(&nodes, [&mut a, &mut local, &mut b], 0, || nats.restart());
    assert!(nodes[1].metric("rfc6455_broker_reconnects_total") >= 1);
}

#[test]
fn nats_order_three_senders_two_nodes() {
    let nats = Nats::start();
    let nodes: Vec<Node> = (0..2).map(|_| Node::start(&nats.url())).collect();
    order_across_nodes(&nodes, || wait_for("both nodes subscribed", || nats.subjects(&channel("/lobby")).len() == 2));
}

/// An envelope as the bridge writes it (see `src/net/broker/envelope.rs`): version 1,
/// kind (1 text, 2 binary), origin, epoch, sequence, timestamp, payload.
fn envelope(kind: u8, origin: u64, epoch: u64, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![1, kind];
    for n in [origin, epoch, seq, 0] {
        v.extend_from_slice(&n.to_be_bytes());
    }
    v.extend_from_slice(payload);
    v
}

/// Whatever else publishes on a room's channel: what is not a valid envelope (short,
/// another version, an unknown kind, text that is not UTF-8) is dropped and counted;
/// a valid one from an unknown origin is delivered once (a repeat is a counted
/// duplicate, a skipped sequence a counted gap); members get nothing else.
#[test]
fn redis_foreign_messages_are_judged() {
    let redis = Redis::start();
    let node = Node::start(&redis.url());
    let mut b = node.client("/lobby");
    let ch = channel("/lobby");
    wait_for("the node subscribed", || redis.numsub(&ch) == 1);
    let mut wrong_version = envelope(2, 7, 1, 1, b"x");
    wrong_version[0] = 9;
    for bad in [&b"short"[..], &wrong_version, &envelope(3, 7, 1, 1, b"x"), &envelope(1, 7, 1, 1, b"\xff\xfe")] {
        redis.publish(&ch, bad);
    }
    redis.publish(&ch, &envelope(1, 7, 1, 1, "first ✓".as_bytes()));
    redis.publish(&ch, &envelope(1, 7, 1, 1, b"first again"));
    redis.publish(&ch, &envelope(2, 7, 1, 5, b"\x00fifth"));
    assert_eq!(next_message(&mut b), (MessageKind::Text, "first ✓".as_bytes().to_vec()));
    assert_eq!(next_message(&mut b), (MessageKind::Binary, b"\x00fifth".to_vec()));
    node.wait_metric("rfc6455_broker_received_total", |v| v == 2);
    assert_eq!(node.metric("rfc6455_broker_malformed_total"), 4);
    assert_eq!(node.metric("rfc6455_broker_duplicates_total"), 1);
    assert_eq!(node.metric("rfc6455_broker_gaps_total"), 3);
    b.send_text("still fine").unwrap();
    wait_for("its own message published", || redis.publish_calls() == 8);
}

/// The password comes from the URL or from RFC6455_BROKER_PASSWORD; logs never show it.
#[test]
fn redis_password_from_the_url_or_the_environment() {
    let redis = Redis::with_password("s3cret");
    let from_url = Node::start(&format!("redis://:s3cret@127.0.0.1:{}", redis.port));
    assert!(from_url.process.startup.contains(&format!("broker: redis://:***@127.0.0.1:{}", redis.port)), "{}", from_url.process.startup);
    let from_env = Node::start_with_env(&redis.url(), &[("RFC6455_BROKER_PASSWORD", "s3cret")]);
    let (mut a, mut b) = (from_url.client("/lobby"), from_env.client("/lobby"));
    wait_for("both nodes subscribed", || redis.numsub(&channel("/lobby")) == 2);
    a.send_text("authenticated").unwrap();
    assert_eq!(next_message(&mut b).1, b"authenticated");
    let wrong = Node::start_with_env(&redis.url(), &[("RFC6455_BROKER_PASSWORD", "wrong")]);
    wrong.wait_metric("rfc6455_broker_connect_failures_total", |v| v >= 2);
    assert_eq!(wrong.metric("rfc6455_broker_up"), 0);
}

/// A bad `--broker` or `--broker-prefix` is one clear line and a nonzero exit.
#[test]
fn bad_broker_arguments_are_refused() {
    for (args, says) in [
        (&["--broker", "http://127.0.0.1:1"][..], "use redis://HOST:PORT"),
        (&["--broker", "redis://"][..], "bad broker URL"),
        (&["--broker", "redis://127.0.0.1", "--broker-prefix", "a.b"][..], "bad broker channel prefix"),
        (&["--broker-prefix", "x"][..], "--broker"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rfc6455")).arg("relay").args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
