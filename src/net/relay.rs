//! The two servers that ship with the crate: the chat relay (every message goes to the
//! other clients of the same room, on every loop of the process) and echo (every
//! message goes back to its sender).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::net::broker::{self, Bridge, BrokerConfig, BrokerError};
use crate::net::bus::{Bus, BusItem, BusMember, Frames};
use crate::net::group::ServerGroup;
use crate::net::handler::{ConnId, Ctx, Handler};
use crate::net::http;
use crate::net::metrics::Metrics;
use crate::net::server::Server;
use crate::{Accept, Closed, HttpRequest, MessageKind, Reject, Request, SharedFrame};

/// The window of the relay's shared compressor (the largest; every client that
/// agrees to no server context takeover with a full window can inflate it).
#[cfg(feature = "deflate")]
const SHARED_WINDOW_BITS: u8 = crate::proto::deflate::MAX_WINDOW_BITS;

/// Frames a relay keeps for reuse.
const FRAME_POOL: usize = 16;
/// Largest message whose frame is kept for reuse.
const FRAME_POOL_MAX: usize = 64 * 1024;

/// Encoded frames kept for reuse once every queue that held them has written them.
#[derive(Debug, Default)]
struct FramePool(Vec<SharedFrame>);

impl FramePool {
    /// A frame for this message: a free pooled one re-encoded, or a new one.
    /// `compressed_with`: the payload is compressed with that window (see
    /// [`SharedFrame::new_compressed`]).
    fn frame(&mut self, kind: MessageKind, payload: &[u8], compressed_with: Option<u8>) -> SharedFrame {
        let reuse = |f: &mut SharedFrame| match compressed_with {
            #[cfg(feature = "deflate")]
            Some(bits) => f.reuse_compressed(kind, payload, bits),
            _ => f.reuse(kind, payload),
        };
        match self.0.iter_mut().position(reuse) {
            // Large frames are not kept: the pool stays small.
            Some(i) if payload.len() > FRAME_POOL_MAX => self.0.swap_remove(i),
            Some(i) => self.0[i].clone(),
            None => {
                let f = match compressed_with {
                    #[cfg(feature = "deflate")]
                    Some(bits) => SharedFrame::new_compressed(kind, payload, bits),
                    _ => SharedFrame::new(kind, payload),
                };
                if self.0.len() < FRAME_POOL && payload.len() <= FRAME_POOL_MAX {
                    self.0.push(f.clone());
                }
                f
            }
        }
    }
}

/// Relays every message to all other clients in the same room. The room is the request
/// path (`/lobby` and `/games` are separate; `/` is the default room). The sender does
/// not get its own message back; per sender, order is preserved. Each relayed message
/// is encoded once and the same bytes are queued for every recipient; with
/// permessage-deflate, recipients that agreed to `server_no_context_takeover` (the relay
/// asks for it) get one compressed encoding, shared likewise. Over several loops
/// ([`Relay::link`]), rooms span them: a message goes once to each loop with members in
/// its room, as the same encoded bytes (see `bus.rs`).
#[derive(Debug, Default)]
pub struct Relay {
    /// Room name -> members on this loop, in join order.
    rooms: HashMap<Arc<str>, Vec<ConnId>>,
    /// Connection -> its room, from the handshake until it closes.
    room_of: HashMap<ConnId, Arc<str>>,
    relayed: u64,
    members: usize,
    /// Serve the chat page to plain HTTP requests.
    page: bool,
    /// The other loops of the process, when linked.
    bus: Option<Bus<Relay>>,
    encoder: Encoder,
}

/// Makes a relayed message's frames, each at most once, from pooled buffers.
#[derive(Debug, Default)]
struct Encoder {
    plain: FramePool,
    #[cfg(feature = "deflate")]
    compressed: FramePool,
    #[cfg(feature = "deflate")]
    deflate: Option<(crate::proto::deflate::Deflater, crate::DeflateConfig, Vec<u8>)>,
}

impl Encoder {
    /// Makes the plain frame if it is not made yet.
    fn plain(&mut self, kind: MessageKind, data: &[u8], frames: &mut Frames) {
        if frames.plain.is_none() {
            frames.plain = Some(self.plain.frame(kind, data, None));
        }
    }

    /// Makes the shared compressed frame if this relay compresses a message this large
    /// and it is not made yet; false if there is none.
    #[cfg(feature = "deflate")]
    fn compressed(&mut self, kind: MessageKind, data: &[u8], frames: &mut Frames) -> bool {
        let Some((deflater, cfg, buf)) = self.deflate.as_mut() else { return false };
        if data.len() < cfg.min_size {
            return false;
        }
        if frames.compressed.is_none() {
            buf.clear();
            deflater.compress(data, buf);
            frames.compressed = Some(self.compressed.frame(kind, buf, Some(SHARED_WINDOW_BITS)));
        }
        true
    }

    /// The encodings other loops need: the plain frame always (their recipients may
    /// compress for themselves from it), the shared compressed one when this relay
    /// compresses a message this large.
    fn complete(&mut self, kind: MessageKind, data: &[u8], frames: &mut Frames) {
        self.plain(kind, data, frames);
        #[cfg(feature = "deflate")]
        self.compressed(kind, data, frames);
    }

    /// Queues the message for `members` (but `except`).
    fn fan_out(
        &mut self,
        ctx: &mut Ctx<'_>,
        members: &[ConnId],
        except: Option<ConnId>,
        kind: MessageKind,
        data: &[u8],
        frames: &mut Frames,
    ) {
        for &peer in members {
            if Some(peer) == except {
                continue;
            }
            #[cfg(feature = "deflate")]
            if self.deflate.is_some() {
                let shared_ok = ctx
                    .engine(peer)
                    .and_then(|e| e.deflate_params())
                    .is_some_and(|p| p.server_no_context_takeover && p.server_max_window_bits >= SHARED_WINDOW_BITS);
                if shared_ok && self.compressed(kind, data, frames) {
                    if let Some(frame) = &frames.compressed {
                        ctx.send_shared(peer, frame);
                    }
                    continue;
                }
                if ctx.engine(peer).is_some_and(|e| e.is_compressed()) {
                    // Other parameters (or too small to share): the connection compresses for itself.
                    ctx.send(peer, kind, data);
                    continue;
                }
            }
            self.plain(kind, data, frames);
            if let Some(frame) = &frames.plain {
                ctx.send_shared(peer, frame);
            }
        }
    }
}

impl Relay {
    /// An empty relay.
    pub fn new() -> Self {
        Self::default()
    }

    /// A relay that compresses each relayed message once for the recipients that
    /// negotiated permessage-deflate without server context takeover.
    #[cfg(feature = "deflate")]
    pub fn with_deflate(cfg: crate::DeflateConfig) -> Self {
        let deflater = crate::proto::deflate::Deflater::new(cfg.level, SHARED_WINDOW_BITS, true);
        let encoder = Encoder { deflate: Some((deflater, cfg, Vec::new())), ..Encoder::default() };
        Self { encoder, ..Self::default() }
    }

    /// Serves the chat page (embedded in the binary) to a browser that opens a room's
    /// address: `GET /lobby` gives a page that joins `/lobby` over `ws://` or `wss://`
    /// and sends what is typed as `nick: text`. Room paths are `/` and paths of
    /// letters, digits and `-_~%/` (up to 256 bytes); others (`/favicon.ico`) are 404.
    pub fn with_page(mut self) -> Self {
        self.page = true;
        self
    }

    /// Links the relays of a group's loops (at most 64) so that rooms span them: call
    /// it after [`ServerGroup::bind`] and before [`ServerGroup::run`]. The semantics
    /// stay those of one loop: no echo to the sender, per-sender order for every
    /// recipient; a member that has just joined misses what other loops relay before
    /// they learn of it (their next turn). A loop 65,536 messages (or 64 MiB) behind
    /// loses messages sent to it, counted (`rfc6455_bus_dropped_total`); interest
    /// changes are kept.
    pub fn link(group: &mut ServerGroup<Relay>) {
        let loops = group.loops_mut();
        let inboxes = loops.iter().map(Server::inbox).collect();
        // A group has at most MAX_LOOPS loops (ServerGroup::bind refuses more).
        for (server, bus) in loops.iter_mut().zip(Bus::link(inboxes).unwrap_or_default()) {
            server.handler_mut().bus = Some(bus);
        }
    }

    /// [`Relay::link`], and rooms span processes too: every process started with the
    /// same broker (and channel prefix) shares its rooms with the others. Returns the
    /// running bridge (drop it after [`ServerGroup::run`] returns). The broker need
    /// not be up: the relay serves its own rooms meanwhile and the bridge retries.
    /// Across processes: at most once, per-sender order within a room, no duplicates,
    /// no echo; messages are lost only while a broker link is down, and counted.
    pub fn link_with_broker(group: &mut ServerGroup<Relay>, broker: &BrokerConfig) -> Result<Bridge, BrokerError> {
        let loops = group.loops_mut();
        let inboxes: Vec<_> = loops.iter().map(Server::inbox).collect();
        // Nothing larger than the relay itself accepts crosses.
        let limit = loops.first().map_or(usize::MAX, Server::max_message_size);
        let broker = broker.clone().max_message_size(broker.max_message_size_or_less(limit));
        let (bridge, port) = broker::start(&broker, inboxes.clone())?;
        for (server, mut bus) in loops.iter_mut().zip(Bus::link(inboxes).unwrap_or_default()) {
            bus.attach(port.clone());
            server.handler_mut().bus = Some(bus);
        }
        Ok(bridge)
    }

    /// Members of `room` that are open (on this loop).
    pub fn members(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, Vec::len)
    }

    /// Messages relayed so far by this loop (each counted once, whatever the number of
    /// recipients).
    pub fn relayed(&self) -> u64 {
        self.relayed
    }

    /// Connections the relay keeps state for (from their request until they end).
    pub fn tracked(&self) -> usize {
        self.room_of.len()
    }

    /// Messages lost between the loops of the process (a full lane, a stopped loop).
    pub fn dropped_between_loops(&self) -> u64 {
        self.bus.as_ref().map_or(0, |b| b.shared.dropped.load(Ordering::Relaxed))
    }

    /// Rooms that other loops have members in, as this loop knows them.
    pub fn rooms_elsewhere(&self) -> Vec<String> {
        self.bus.as_ref().map_or_else(Vec::new, |b| b.remote_rooms().map(str::to_owned).collect())
    }

    /// A member joined (`+1`) or left (`-1`) `room` on this loop: other loops learn
    /// when the room gains its first member here or loses its last.
    fn membership_changed(&mut self, room: &Arc<str>, now_empty_or_first: Option<bool>) {
        let members = self.members;
        if let Some(bus) = self.bus.as_mut() {
            bus.set_members(members);
            if let Some(member) = now_empty_or_first {
                bus.announce(room, member);
            }
        }
    }
}

impl BusMember for Relay {
    /// What other loops sent this turn, in their order.
    fn receive(&mut self, ctx: &mut Ctx<'_>, items: Vec<BusItem>) {
        for item in items {
            match item {
                BusItem::Interest { room, from, member } => {
                    if let Some(bus) = self.bus.as_mut() {
                        bus.interest(room, from, member);
                    }
                }
                BusItem::Message { room, kind, mut frames } => {
                    let (Some(members), Some(plain)) = (self.rooms.get(&room), frames.plain.clone()) else { continue };
                    self.encoder.fan_out(ctx, members, None, kind, plain.payload(), &mut frames);
                }
            }
        }
    }
}

impl Handler for Relay {
    fn on_http(&mut self, _id: ConnId, _peer: SocketAddr, req: &HttpRequest) -> Option<Reject> {
        self.page.then(|| http::chat_page(req))
    }

    fn metrics(&self, m: &mut Metrics) {
        let (rooms, members, relayed) = match &self.bus {
            Some(bus) => {
                let mut rooms: HashSet<&str> = self.rooms.keys().map(|r| &**r).collect();
                rooms.extend(bus.remote_rooms());
                let members = bus.shared.members.iter().map(|m| m.load(Ordering::Relaxed)).sum::<usize>();
                let relayed = bus.shared.relayed.iter().map(|r| r.load(Ordering::Relaxed)).sum::<u64>();
                (rooms.len(), members, relayed)
            }
            None => (self.rooms.len(), self.members, self.relayed),
        };
        m.gauge("rfc6455_relay_rooms", "Rooms with at least one open member.", rooms as u64);
        m.gauge("rfc6455_relay_members", "Open connections in rooms.", members as u64);
        m.counter("rfc6455_relay_messages_total", "Messages relayed (each once, whatever the recipients).", relayed);
        if let Some(bus) = &self.bus {
            let crossed = bus.shared.crossed.load(Ordering::Relaxed);
            m.counter("rfc6455_bus_messages_total", "Messages sent to another loop (once per interested loop).", crossed);
            let dropped = bus.shared.dropped.load(Ordering::Relaxed);
            m.counter("rfc6455_bus_dropped_total", "Messages lost to a loop whose inbox was full.", dropped);
            if let Some(bridge) = bus.bridge() {
                bridge.stats.write_metrics(m);
            }
        }
    }

    fn on_request(&mut self, id: ConnId, _peer: SocketAddr, req: &Request) -> Result<Accept, Reject> {
        self.room_of.insert(id, Arc::from(req.path()));
        Ok(Accept::new())
    }

    fn on_open(&mut self, _ctx: &mut Ctx<'_>, id: ConnId) {
        let Some(room) = self.room_of.get(&id).cloned() else { return };
        let members = self.rooms.entry(room.clone()).or_default();
        members.push(id);
        let first = members.len() == 1;
        self.members += 1;
        self.membership_changed(&room, first.then_some(true));
    }

    /// Two lookups (the sender's room, its members) and, when linked, one more (the
    /// loops interested); no reference count is touched unless the message crosses.
    fn on_message(&mut self, ctx: &mut Ctx<'_>, id: ConnId, kind: MessageKind, data: &[u8]) {
        let Some(room) = self.room_of.get(&id) else { return };
        let Some(members) = self.rooms.get(room) else { return };
        self.relayed += 1;
        let mut frames = Frames::default();
        self.encoder.fan_out(ctx, members, Some(id), kind, data, &mut frames);
        if let Some(bus) = self.bus.as_mut() {
            bus.count_relayed();
            let loops = bus.interested(room);
            if loops != 0 {
                self.encoder.complete(kind, data, &mut frames);
                bus.forward(loops, room, kind, &frames);
            }
            if bus.has_bridge() {
                self.encoder.plain(kind, data, &mut frames);
                bus.publish(room, kind, &frames);
            }
        }
    }

    /// Also called for connections that never opened: their room entry goes too.
    fn on_close(&mut self, _ctx: &mut Ctx<'_>, id: ConnId, _closed: &Closed) {
        let Some(room) = self.room_of.remove(&id) else { return };
        let Some(members) = self.rooms.get_mut(&room) else { return };
        let before = members.len();
        members.retain(|&m| m != id);
        if members.len() == before {
            return; // it never opened
        }
        self.members -= 1;
        let last = members.is_empty();
        if last {
            self.rooms.remove(&room);
        }
        self.membership_changed(&room, last.then_some(false));
    }

    fn end_of_turn(&mut self, _ctx: &mut Ctx<'_>) -> bool {
        self.bus.as_mut().is_some_and(Bus::flush)
    }
}

/// Sends every message back to its sender unchanged (text stays text).
#[derive(Debug, Default)]
pub struct Echo;

impl Handler for Echo {
    fn on_message(&mut self, ctx: &mut Ctx<'_>, id: ConnId, kind: MessageKind, data: &[u8]) {
        ctx.send(id, kind, data);
    }

    /// The received buffer goes straight back out: no copy of the payload.
    fn on_message_owned(&mut self, ctx: &mut Ctx<'_>, id: ConnId, kind: MessageKind, data: Vec<u8>) -> Option<Vec<u8>> {
        ctx.send_owned(id, kind, data);
        None
    }
}
