//! The server's handler API over 127.0.0.1: connection ids that never alias, frame
//! delivery, ping/pong callbacks, one end callback per request, the inbox, and the
//! default limits (Autobahn 9.1.6). Every server binds port 0 and every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::net::*;
use rfc6455::net::{ConnId, Ctx, Echo, Handler, Relay, Server, ServerConfig};
use rfc6455::{
    Accept, ClientRequest, CloseCode, Closed, Config, Delivery, Event, HandshakeError, MessageKind, ProtocolError, Reject, Request,
};

/// Shared record of what a test handler saw.
type Log = Arc<Mutex<Vec<String>>>;

fn log_lines(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

fn wait_log(log: &Log, what: &str, f: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f(&log.lock().unwrap()) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {:?}", log_lines(log));
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Asks the loop itself (through its inbox) how many connections the relay tracks,
/// until it is `n` (bounded).
fn wait_tracked(inbox: &rfc6455::net::Inbox<Relay>, n: usize, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (tx, rx) = std::sync::mpsc::channel();
        inbox.send(move |relay: &mut Relay, _ctx| tx.send(relay.tracked()).unwrap()).unwrap();
        if rx.recv_timeout(WAIT).unwrap() == n {
            return;
        }
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Keeps the id of the first connection and, when a later one opens, tries to reach
/// the first through it.
struct StaleIds {
    first: Option<ConnId>,
    log: Log,
}

impl Handler for StaleIds {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        match self.first {
            None => self.first = Some(id),
            Some(old) => {
                let reached = ctx.send(old, MessageKind::Text, b"meant for the first connection");
                let engine = ctx.engine(old).is_some();
                self.log.lock().unwrap().push(format!("stale send {reached}, engine {engine}, same id {}", old == id));
            }
        }
    }
    fn on_message(&mut self, _: &mut Ctx<'_>, _: ConnId, _: MessageKind, _: &[u8]) {}
}

/// Regression: `ConnId` was a reused slab index, so a handler that kept an id after
/// `on_close` reached whichever connection took the slot next.
#[test]
fn an_id_kept_after_close_reaches_no_other_connection() {
    let log = Log::default();
    let mut srv = Running::start(ServerConfig::default(), StaleIds { first: None, log: log.clone() });
    let mut a = srv.connect("/");
    a.close(CloseCode::NORMAL, "").unwrap();
    let _ = next_closed(&mut a);
    srv.wait_connections(0);
    let mut b = srv.connect("/");
    wait_log(&log, "the second open", |l| !l.is_empty());
    assert_eq!(log_lines(&log), ["stale send false, engine false, same id false"]);
    // Nothing arrives at B: a ping round trip proves the queue is empty.
    b.ping(b"sync").unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        match b.next_event(Some(WAIT)).unwrap() {
            Some(Event::Pong { .. }) => break,
            Some(Event::Text(t)) => panic!("the second connection got {t:?}"),
            _ => assert!(Instant::now() < deadline, "no pong"),
        }
    }
    srv.stop();
}

/// Echoes every frame back as a frame of the same shape and records ping/pong callbacks.
struct FrameEcho {
    log: Log,
}

impl Handler for FrameEcho {
    const HANDLES_FRAMES: bool = true;

    fn on_open(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        ctx.ping(id, b"rtt?");
    }
    fn on_message(&mut self, _: &mut Ctx<'_>, _: ConnId, _: MessageKind, _: &[u8]) {
        panic!("whole messages are not delivered in frame mode");
    }
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, id: ConnId, kind: MessageKind, data: &[u8], fin: bool) {
        self.log.lock().unwrap().push(format!("frame {kind:?} {:?} fin={fin}", String::from_utf8_lossy(data)));
        if fin {
            ctx.send(id, kind, b"got it");
        }
    }
    fn on_ping(&mut self, _: &mut Ctx<'_>, _: ConnId, payload: &[u8]) {
        self.log.lock().unwrap().push(format!("ping {:?}", String::from_utf8_lossy(payload)));
    }
    fn on_pong(&mut self, _: &mut Ctx<'_>, _: ConnId, payload: &[u8], rtt: Option<Duration>) {
        self.log.lock().unwrap().push(format!("pong {:?} rtt {}", String::from_utf8_lossy(payload), rtt.is_some()));
    }
}

fn frames_config() -> ServerConfig {
    ServerConfig { engine: Config { delivery: Delivery::Frames, ..Config::default() }, ..ServerConfig::default() }
}

/// Regression: with `Delivery::Frames` the server's dispatch dropped every
/// `Event::Frame` (and every ping and pong) on the floor.
#[test]
fn frame_delivery_reaches_the_handler_with_ping_and_pong() {
    let log = Log::default();
    let mut srv = Running::start(frames_config(), FrameEcho { log: log.clone() });
    let mut s = raw_client(srv.addr, "/");
    use std::io::Write;
    let mut bytes = common::client_frame(false, rfc6455::OpCode::Text, b"hel");
    bytes.extend(common::client_frame(true, rfc6455::OpCode::Ping, b"are you there"));
    bytes.extend(common::client_frame(true, rfc6455::OpCode::Continuation, b"lo"));
    s.write_all(&bytes).unwrap();
    wait_log(&log, "two frames and a ping", |l| l.len() >= 3);
    let lines = log_lines(&log);
    assert!(lines.contains(&r#"frame Text "hel" fin=false"#.to_owned()), "{lines:?}");
    assert!(lines.contains(&r#"frame Text "lo" fin=true"#.to_owned()), "{lines:?}");
    assert!(lines.contains(&r#"ping "are you there""#.to_owned()), "{lines:?}");
    drop(s);

    // A library client answers the server's ping: the pong reaches on_pong with an RTT.
    let log2 = Log::default();
    let mut srv2 = Running::start(frames_config(), FrameEcho { log: log2.clone() });
    let mut c = srv2.connect("/");
    c.send_text("x").unwrap();
    assert_eq!(next_message(&mut c), (MessageKind::Text, b"got it".to_vec()));
    wait_log(&log2, "the pong", |l| l.iter().any(|x| x.starts_with("pong")));
    assert!(log_lines(&log2).contains(&r#"pong "rtt?" rtt true"#.to_owned()), "{:?}", log_lines(&log2));
    srv.stop();
    srv2.stop();
}

#[test]
fn a_handler_without_frames_is_refused_for_frame_delivery() {
    let err = Server::bind("127.0.0.1:0".parse().unwrap(), frames_config(), Echo).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("HANDLES_FRAMES"), "{err}");
}

/// Counts requests and end callbacks; rejects `/private` and picks an unoffered
/// subprotocol on `/broken` (so the engine's accept fails).
struct Ledger {
    log: Log,
}

impl Handler for Ledger {
    fn on_request(&mut self, _id: ConnId, _peer: SocketAddr, req: &Request) -> Result<Accept, Reject> {
        self.log.lock().unwrap().push(format!("request {}", req.path()));
        match req.path() {
            "/private" => Err(Reject::new(401).header("WWW-Authenticate", "Bearer").body("who are you?")),
            "/broken" => Ok(Accept::new().subprotocol("never-offered")),
            _ => Ok(Accept::new()),
        }
    }
    fn on_message(&mut self, _: &mut Ctx<'_>, _: ConnId, _: MessageKind, _: &[u8]) {}
    fn on_close(&mut self, _: &mut Ctx<'_>, _: ConnId, closed: &Closed) {
        let status = match &closed.error {
            Some(ProtocolError::Handshake(e)) => format!("handshake {e}"),
            _ => format!("code {}", closed.code()),
        };
        self.log.lock().unwrap().push(format!("close {status}"));
    }
}

/// Regression: `on_close` ran only for opened connections, so state kept from
/// `on_request` leaked when the handshake then failed (the relay's `room_of`).
#[test]
fn every_request_gets_exactly_one_end_callback() {
    let log = Log::default();
    let mut srv = Running::start(ServerConfig::default(), Ledger { log: log.clone() });
    match rfc6455::net::Client::connect_url(&srv.url("/private")) {
        Err(rfc6455::net::ClientError::Closed(c)) => match c.error {
            Some(ProtocolError::Handshake(HandshakeError::Status { status: 401, headers })) => {
                assert!(headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("www-authenticate") && v == b"Bearer"), "{headers:?}");
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    assert!(rfc6455::net::Client::connect_url(&srv.url("/broken")).is_err());
    let mut ok = srv.connect("/fine");
    ok.close(CloseCode::NORMAL, "").unwrap();
    let _ = next_closed(&mut ok);
    wait_log(&log, "three end callbacks", |l| l.iter().filter(|x| x.starts_with("close")).count() >= 3);
    srv.wait_connections(0);
    let lines = log_lines(&log);
    assert_eq!(lines.iter().filter(|x| x.starts_with("request")).count(), 3, "{lines:?}");
    assert_eq!(lines.iter().filter(|x| x.starts_with("close")).count(), 3, "{lines:?}");
    srv.stop();
}

#[test]
fn the_relay_tracks_nothing_after_its_clients_leave() {
    let relay = Relay::new();
    let mut server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::default(), relay).unwrap();
    let addr = server.local_addr();
    let (handle, inbox) = (server.shutdown_handle(), server.inbox());
    let thread = std::thread::spawn(move || {
        server.run().unwrap();
        server.handler().tracked()
    });
    let mut c = rfc6455::net::Client::connect_url(&format!("ws://{addr}/room")).unwrap();
    c.close(CloseCode::NORMAL, "").unwrap();
    let _ = next_closed(&mut c);
    wait_tracked(&inbox, 0, "the relay still tracks a closed connection");
    handle.shutdown();
    assert_eq!(thread.join().unwrap(), 0);
}

/// Regression: with the default configuration the echo server closed a 16 MiB text
/// message (Autobahn 9.1.6) with 1008: its buffer's capacity doubled past the message
/// and the connection pinned 32 MiB, over its 25 MiB budget.
#[test]
fn the_default_echo_server_echoes_a_message_at_the_limit() {
    let mut srv = Running::start(ServerConfig::default(), Echo);
    let mut c = rfc6455::net::Client::connect(rfc6455::net::ClientOptions::new(ClientRequest::new(&srv.url("/")).unwrap())).unwrap();
    let limit = Config::default().max_message_size;
    let text = "*".repeat(limit);
    c.send_text(&text).unwrap();
    let (kind, data) = next_message(&mut c);
    assert_eq!((kind, data.len()), (MessageKind::Text, limit));
    assert_eq!(srv.stats.over_budget.load(std::sync::atomic::Ordering::Relaxed), 0);
    srv.stop();
}

/// Remembers open connections, so work sent through the inbox can reach them.
#[derive(Default)]
struct Members(Vec<ConnId>);

impl Handler for Members {
    fn on_open(&mut self, _: &mut Ctx<'_>, id: ConnId) {
        self.0.push(id);
    }
    fn on_message(&mut self, _: &mut Ctx<'_>, _: ConnId, _: MessageKind, _: &[u8]) {}
    fn on_close(&mut self, _: &mut Ctx<'_>, id: ConnId, _: &Closed) {
        self.0.retain(|&m| m != id);
    }
}

#[test]
fn the_inbox_runs_work_from_other_threads_on_the_loop() {
    let mut server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::default(), Members::default()).unwrap();
    let (addr, handle, inbox) = (server.local_addr(), server.shutdown_handle(), server.inbox());
    let thread = std::thread::spawn(move || server.run());
    let mut a = rfc6455::net::Client::connect_url(&format!("ws://{addr}/")).unwrap();
    let mut b = rfc6455::net::Client::connect_url(&format!("ws://{addr}/")).unwrap();
    let sender = std::thread::spawn(move || {
        let deadline = Instant::now() + WAIT;
        loop {
            let (tx, rx) = std::sync::mpsc::channel();
            inbox
                .send(move |m: &mut Members, ctx: &mut Ctx<'_>| {
                    let sent = m.0.iter().filter(|&&id| ctx.send(id, MessageKind::Text, b"from another thread")).count();
                    tx.send(sent).unwrap();
                })
                .unwrap();
            if rx.recv_timeout(WAIT).unwrap() == 2 {
                return;
            }
            assert!(Instant::now() < deadline, "the loop never saw both connections");
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    sender.join().unwrap();
    for c in [&mut a, &mut b] {
        // Earlier rounds may have reached one of them before the other opened.
        loop {
            let (kind, data) = next_message(c);
            assert_eq!((kind, data.as_slice()), (MessageKind::Text, &b"from another thread"[..]));
            if c.next_event(Some(Duration::from_millis(50))).unwrap().is_none() {
                break;
            }
        }
    }
    handle.shutdown();
    thread.join().unwrap().unwrap();
}

/// Records end callbacks and nothing else.
struct Ends(Log);

impl Handler for Ends {
    fn on_message(&mut self, _: &mut Ctx<'_>, _: ConnId, _: MessageKind, _: &[u8]) {}
    fn on_close(&mut self, _: &mut Ctx<'_>, _: ConnId, closed: &Closed) {
        self.0.lock().unwrap().push(format!("close {}", closed.code()));
    }
}

/// Regression (found in review): the slow-consumer policy `Drop` aborted the engine
/// from inside `Ctx::send`, and the connection was removed with its `Closed` event
/// unread, so the handler never heard of it (the relay kept its room entry).
#[test]
fn a_consumer_dropped_as_slow_still_gets_its_end_callback() {
    use rfc6455::net::SlowConsumerPolicy;
    use std::io::Write;
    let cfg = ServerConfig { high_water_mark: 64 << 10, slow_consumer: SlowConsumerPolicy::Drop, ..ServerConfig::default() };
    let mut server = Server::bind("127.0.0.1:0".parse().unwrap(), cfg, Relay::new()).unwrap();
    let (addr, handle, inbox, stats) = (server.local_addr(), server.shutdown_handle(), server.inbox(), server.stats());
    let thread = std::thread::spawn(move || server.run());
    // A member that never reads, and a sender that floods the room.
    let _sleeper = raw_client(addr, "/room");
    let mut sender = raw_client(addr, "/room");
    let frame = common::client_frame(true, rfc6455::OpCode::Binary, &vec![1u8; 64 << 10]);
    let deadline = Instant::now() + WAIT;
    while stats.slow_consumers.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the sleeper never became a slow consumer");
        sender.write_all(&frame).unwrap();
    }
    // The sleeper's entry goes once its socket is dropped: only the sender remains.
    wait_tracked(&inbox, 1, "the dropped consumer's room entry was never released");
    handle.shutdown();
    thread.join().unwrap().unwrap();
}

/// Regression (found in review): at the shutdown deadline `run` returned with clients
/// that never answered the 1001 still held, and their handler never heard of them.
#[test]
fn clients_that_ignore_shutdown_still_get_their_end_callback() {
    let log = Log::default();
    let cfg = ServerConfig { shutdown_timeout: Duration::from_millis(200), ..ServerConfig::default() };
    let mut server = Server::bind("127.0.0.1:0".parse().unwrap(), cfg, Ends(log.clone())).unwrap();
    let (addr, handle, stats) = (server.local_addr(), server.shutdown_handle(), server.stats());
    let thread = std::thread::spawn(move || server.run());
    // A raw client completes the handshake and then never reads nor answers.
    let _mute = raw_client(addr, "/");
    let deadline = Instant::now() + WAIT;
    while stats.opened.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "never opened");
        std::thread::sleep(Duration::from_millis(5));
    }
    handle.shutdown();
    thread.join().unwrap().unwrap();
    assert_eq!(log_lines(&log).len(), 1, "{:?}", log_lines(&log));
}
