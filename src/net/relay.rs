//! The two servers that ship with the crate: the chat relay (every message goes to the
//! other clients of the same room, on every loop of the process) and echo (every
//! message goes back to its sender).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::net::broker::{self, Bridge, BrokerConfig, BrokerError};
use crate::net::bus::{Bus, BusItem, BusMember, Frames};
use crate::net::group::ServerGroup;
use crate::net::handler::{ConnId, Ctx, Handler};
use crate::net::http;
use crate::net::metrics::Metrics;
use crate::net::server::Server;
use crate::proto::frame::encode_frame;
use crate::{Accept, Closed, HttpRequest, MessageKind, Reject, Request, SharedFrame};

/// The window of the relay's shared compressor (the largest; every client that
/// agrees to no server context takeover with a full window can inflate it).
#[cfg(feature = "deflate")]
const SHARED_WINDOW_BITS: u8 = crate::proto::deflate::MAX_WINDOW_BITS;

/// Frames a relay keeps for reuse.
const FRAME_POOL: usize = 16;
/// Largest message that is corked (queued with the rest of its room's turn as one
/// run); larger ones are shared alone, without a copy.
const CORK_MESSAGE_MAX: usize = 1024;
/// Largest message whose frame is kept for reuse.
const FRAME_POOL_MAX: usize = 64 * 1024;
/// A room's cork is delivered early once it holds this many bytes (so its frame is
/// pooled too, and a member is at most this far past the high-water mark) ...
const CORK_BYTES_MAX: usize = FRAME_POOL_MAX;
/// ... or this many messages.
const CORK_MESSAGES_MAX: usize = 4096;
/// How many message starts an empty cork keeps room for.
const CORK_KEEP_STARTS: usize = 1024;

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
        let make = || match compressed_with {
            #[cfg(feature = "deflate")]
            Some(bits) => SharedFrame::new_compressed(kind, payload, bits),
            _ => SharedFrame::new(kind, payload),
        };
        self.take(payload.len(), reuse, make)
    }

    /// A frame holding `frames` (a cork's bytes): a free pooled one refilled, or new.
    fn frames(&mut self, frames: &[u8]) -> SharedFrame {
        self.take(frames.len(), |f| f.reuse_for_frames(frames), || SharedFrame::from_frames(frames))
    }

    /// The first pooled frame `reuse` could refill, else `make`'s; frames of more than
    /// `FRAME_POOL_MAX` bytes are not kept, so the pool stays small.
    fn take(&mut self, len: usize, reuse: impl FnMut(&mut SharedFrame) -> bool, make: impl FnOnce() -> SharedFrame) -> SharedFrame {
        match self.0.iter_mut().position(reuse) {
            Some(i) if len > FRAME_POOL_MAX => self.0.swap_remove(i),
            Some(i) => self.0[i].clone(),
            None => {
                let f = make();
                if self.0.len() < FRAME_POOL && len <= FRAME_POOL_MAX {
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
/// is encoded once and the same bytes are queued for every recipient; small ones are
/// corked: a room's messages of one loop turn go to each member as one run at the end
/// of the turn (a member that sent some of them gets a copy of the rest); with
/// permessage-deflate, recipients that agreed to `server_no_context_takeover` (the relay
/// asks for it) get one compressed encoding, shared likewise. Over several loops
/// ([`Relay::link`]), rooms span them: a message goes once to each loop with members in
/// its room, as the same encoded bytes (see `bus.rs`).
#[derive(Debug, Default)]
pub struct Relay {
    rooms: Rooms,
    /// Scratch for delivering corks: (sender, message index) sorted, and byte ranges.
    own: Vec<(ConnId, usize)>,
    parts: Vec<Range<usize>>,
    relayed: u64,
    /// Serve the chat page to plain HTTP requests.
    page: bool,
    /// The other loops of the process, when linked.
    bus: Option<Bus<Relay>>,
    encoder: Encoder,
}

/// A room on this loop: its members, and the connections that asked for it and
/// are not open yet.
#[derive(Debug)]
struct Room {
    name: Arc<str>,
    members: Vec<ConnId>,
    waiting: u32,
    cork: Cork,
}

/// A room's small messages of this loop turn, encoded back to back and queued for
/// each member as one run at the end of the turn (uWebSockets' corking): one queue
/// entry, one admission check and one reference count per member per turn, instead
/// of per message. A member that sent some of them gets the rest (no echo).
#[derive(Debug, Default)]
struct Cork {
    bytes: Vec<u8>,
    /// Where each message starts in `bytes`, and its sender if it is on this loop.
    starts: Vec<(usize, Option<ConnId>)>,
}

impl Cork {
    fn push(&mut self, sender: Option<ConnId>, frame: impl FnOnce(&mut Vec<u8>)) {
        self.starts.push((self.bytes.len(), sender));
        frame(&mut self.bytes);
    }

    /// Where message `i` ends.
    fn end(&self, i: usize) -> usize {
        self.starts.get(i + 1).map_or(self.bytes.len(), |&(s, _)| s)
    }

    /// Empties it. The bytes keep their capacity (at most a full cork, 128 KiB); a
    /// list of starts that a burst of tiny messages grew is given back.
    fn clear(&mut self) {
        self.bytes.clear();
        self.starts.clear();
        if self.starts.capacity() > CORK_KEEP_STARTS {
            self.starts = Vec::new();
        }
    }
}

/// Where a connection is, from its request until it closes (indexed by its slot).
#[derive(Clone, Copy, Debug, Default)]
enum Seat {
    #[default]
    Empty,
    /// Asked for room `room`, not open yet.
    Waiting { generation: u32, room: u32 },
    /// A member of room `room`, at `at` in its members.
    Member { generation: u32, room: u32, at: u32 },
}

/// The loop's rooms and who is in them: a connection finds its room by its slot, a
/// room its members by index; joining and leaving are O(1). Rooms are kept while
/// anyone is in or waiting for them.
#[derive(Debug, Default)]
struct Rooms {
    rooms: Vec<Option<Room>>,
    free: Vec<u32>,
    by_name: HashMap<Arc<str>, u32>,
    seats: Vec<Seat>,
    /// Rooms whose cork holds messages (a room may appear twice; its cork is then empty).
    corked_rooms: Vec<u32>,
    /// Connections with a seat.
    tracked: usize,
    /// Open members, over all rooms.
    members: usize,
    /// Rooms with at least one open member.
    occupied: usize,
}

impl Rooms {
    /// Connection `id` asks for room `name` (its request).
    fn wait(&mut self, id: ConnId, name: &str) {
        let room = match self.by_name.get(name) {
            Some(&r) => r,
            None => {
                let name: Arc<str> = Arc::from(name);
                let room = Room { name: name.clone(), members: Vec::new(), waiting: 0, cork: Cork::default() };
                let r = match self.free.pop() {
                    Some(r) => {
                        self.rooms[r as usize] = Some(room);
                        r
                    }
                    None => {
                        self.rooms.push(Some(room));
                        (self.rooms.len() - 1) as u32
                    }
                };
                self.by_name.insert(name, r);
                r
            }
        };
        if let Some(r) = self.room_mut(room) {
            r.waiting += 1;
        }
        let slot = id.slot as usize;
        if self.seats.len() <= slot {
            self.seats.resize(slot + 1, Seat::Empty);
        }
        self.seats[slot] = Seat::Waiting { generation: id.generation, room };
        self.tracked += 1;
    }

    /// Connection `id` opened: it becomes a member of the room it asked for. Returns
    /// the room and whether it is the room's first member.
    fn join(&mut self, id: ConnId) -> Option<(Arc<str>, bool)> {
        let Seat::Waiting { generation, room } = self.seat(id)? else { return None };
        let r = self.room_mut(room)?;
        r.waiting -= 1;
        r.members.push(id);
        let (at, first, name) = ((r.members.len() - 1) as u32, r.members.len() == 1, r.name.clone());
        self.seats[id.slot as usize] = Seat::Member { generation, room, at };
        self.members += 1;
        self.occupied += usize::from(first);
        Some((name, first))
    }

    /// Connection `id` is gone. Returns its room and whether it was the room's last
    /// member, if it was a member.
    fn leave(&mut self, id: ConnId) -> Option<(Arc<str>, bool)> {
        let seat = self.seat(id)?;
        self.seats[id.slot as usize] = Seat::Empty;
        self.tracked -= 1;
        let (room, left) = match seat {
            Seat::Empty => return None,
            Seat::Waiting { room, .. } => {
                let r = self.room_mut(room)?;
                r.waiting -= 1;
                (room, None)
            }
            Seat::Member { room, at, .. } => {
                let r = self.room_mut(room)?;
                r.members.swap_remove(at as usize);
                let moved = r.members.get(at as usize).copied();
                let last = r.members.is_empty();
                let name = r.name.clone();
                if let Some(Seat::Member { at: a, .. }) = moved.and_then(|m| self.seats.get_mut(m.slot as usize)) {
                    *a = at;
                }
                self.members -= 1;
                self.occupied -= usize::from(last);
                (room, Some((name, last)))
            }
        };
        if self.room_mut(room).is_some_and(|r| r.members.is_empty() && r.waiting == 0) {
            if let Some(r) = self.rooms[room as usize].take() {
                self.by_name.remove(&r.name);
                self.free.push(room);
            }
        }
        left
    }

    /// `id`'s seat, if it has one (and the slot is not another connection's).
    fn seat(&self, id: ConnId) -> Option<Seat> {
        match *self.seats.get(id.slot as usize)? {
            Seat::Empty => None,
            s @ (Seat::Waiting { generation, .. } | Seat::Member { generation, .. }) => (generation == id.generation).then_some(s),
        }
    }

    fn room_mut(&mut self, room: u32) -> Option<&mut Room> {
        self.rooms.get_mut(room as usize)?.as_mut()
    }

    /// The room `id` is a member of, and its index.
    fn room_of_member(&self, id: ConnId) -> Option<(u32, &Room)> {
        let Seat::Member { room, .. } = self.seat(id)? else { return None };
        Some((room, self.rooms.get(room as usize)?.as_ref()?))
    }

    /// The room named `name`, if anyone is in it or waiting for it, and its index.
    fn named(&self, name: &str) -> Option<(u32, &Room)> {
        let &r = self.by_name.get(name)?;
        Some((r, self.rooms.get(r as usize)?.as_ref()?))
    }

    /// Adds a message to room `r`'s cork; true if the cork is now full (to be
    /// delivered at once).
    fn add_to_cork(&mut self, r: u32, sender: Option<ConnId>, frame: impl FnOnce(&mut Vec<u8>)) -> bool {
        let Some(room) = self.room_mut(r) else { return false };
        if room.cork.starts.is_empty() {
            self.corked_rooms.push(r);
        }
        let Some(room) = self.room_mut(r) else { return false };
        room.cork.push(sender, frame);
        room.cork.bytes.len() >= CORK_BYTES_MAX || room.cork.starts.len() >= CORK_MESSAGES_MAX
    }

    /// Open members of the room named `name`.
    fn members(&self, name: &str) -> usize {
        self.named(name).map_or(0, |(_, r)| r.members.len())
    }

    /// Names of the rooms with open members.
    fn occupied_names(&self) -> impl Iterator<Item = &str> {
        self.rooms.iter().flatten().filter(|r| !r.members.is_empty()).map(|r| &*r.name)
    }
}

/// Makes a relayed message's frames, each at most once, from pooled buffers.
#[derive(Debug, Default)]
struct Encoder {
    plain: FramePool,
    /// Corked turns, as frames to share.
    cork_frames: FramePool,
    #[cfg(feature = "deflate")]
    compressed: FramePool,
    #[cfg(feature = "deflate")]
    deflate: Option<(crate::proto::deflate::Deflater, crate::DeflateConfig, Vec<u8>)>,
}

impl Encoder {
    /// Whether a message of `len` bytes is corked: small, and not compressed (a
    /// compressing relay queues each message by itself).
    fn should_cork(&self, len: usize) -> bool {
        #[cfg(feature = "deflate")]
        if self.deflate.is_some() {
            return false;
        }
        len <= CORK_MESSAGE_MAX
    }

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
        self.rooms.members(room)
    }

    /// Messages relayed so far by this loop (each counted once, whatever the number of
    /// recipients).
    pub fn relayed(&self) -> u64 {
        self.relayed
    }

    /// Connections the relay keeps state for (from their request until they end).
    pub fn tracked(&self) -> usize {
        self.rooms.tracked
    }

    /// Messages lost between the loops of the process (a full lane, a stopped loop).
    pub fn dropped_between_loops(&self) -> u64 {
        self.bus.as_ref().map_or(0, |b| b.shared.dropped.load(Ordering::Relaxed))
    }

    /// Rooms that other loops have members in, as this loop knows them.
    pub fn rooms_elsewhere(&self) -> Vec<String> {
        self.bus.as_ref().map_or_else(Vec::new, |b| b.remote_rooms().map(str::to_owned).collect())
    }

    /// Queues room `r`'s cork for its members, each once, without their own messages.
    fn uncork(&mut self, ctx: &mut Ctx<'_>, r: u32) {
        let Some(room) = self.rooms.room_mut(r) else { return };
        let cork = &room.cork;
        if cork.starts.is_empty() {
            return;
        }
        let frame = self.encoder.cork_frames.frames(&cork.bytes);
        let total = cork.starts.len();
        // Each sender's own messages, found by binary search per member.
        self.own.clear();
        self.own.extend(cork.starts.iter().enumerate().filter_map(|(i, &(_, s))| Some((s?, i))));
        self.own.sort_unstable();
        for &m in &room.members {
            let from = self.own.partition_point(|&(s, _)| s < m);
            let to = from + self.own[from..].partition_point(|&(s, _)| s == m);
            if from == to {
                ctx.send_corked(m, &frame, total);
                continue;
            }
            // The gaps between its own messages.
            self.parts.clear();
            let mut start = 0;
            for &(_, i) in &self.own[from..to] {
                let (own_start, own_end) = (cork.starts[i].0, cork.end(i));
                if own_start > start {
                    self.parts.push(start..own_start);
                }
                start = own_end;
            }
            if start < cork.bytes.len() {
                self.parts.push(start..cork.bytes.len());
            }
            if !self.parts.is_empty() {
                ctx.send_corked_parts(m, &frame, &self.parts, total - (to - from));
            }
        }
        room.cork.clear();
    }

    /// Queues every cork (the end of the turn).
    fn uncork_all(&mut self, ctx: &mut Ctx<'_>) {
        let mut corked = std::mem::take(&mut self.rooms.corked_rooms);
        for &r in &corked {
            self.uncork(ctx, r);
        }
        corked.clear();
        self.rooms.corked_rooms = corked;
    }

    /// A member joined (`+1`) or left (`-1`) `room` on this loop: other loops learn
    /// when the room gains its first member here or loses its last.
    fn membership_changed(&mut self, room: &Arc<str>, now_empty_or_first: Option<bool>) {
        let members = self.rooms.members;
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
                    let (Some((r, room)), Some(plain)) = (self.rooms.named(&room), frames.plain.clone()) else { continue };
                    if room.members.is_empty() {
                        continue; // only connections not open yet: they do not get it
                    }
                    if self.encoder.should_cork(plain.payload().len()) {
                        if self.rooms.add_to_cork(r, None, |b| b.extend_from_slice(plain.as_bytes())) {
                            self.uncork(ctx, r);
                        }
                        continue;
                    }
                    // Behind what is corked for the room, in order.
                    self.uncork(ctx, r);
                    let Some(room) = self.rooms.room_mut(r) else { continue };
                    self.encoder.fan_out(ctx, &room.members, None, kind, plain.payload(), &mut frames);
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
                let mut rooms: HashSet<&str> = self.rooms.occupied_names().collect();
                rooms.extend(bus.remote_rooms());
                let members = bus.shared.members.iter().map(|m| m.load(Ordering::Relaxed)).sum::<usize>();
                let relayed = bus.shared.relayed.iter().map(|r| r.load(Ordering::Relaxed)).sum::<u64>();
                (rooms.len(), members, relayed)
            }
            None => (self.rooms.occupied, self.rooms.members, self.relayed),
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
        self.rooms.wait(id, req.path());
        Ok(Accept::new())
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        // What the room relayed before this member joined is not for it.
        if let Some(Seat::Waiting { room, .. }) = self.rooms.seat(id) {
            self.uncork(ctx, room);
        }
        if let Some((room, first)) = self.rooms.join(id) {
            self.membership_changed(&room, first.then_some(true));
        }
    }

    /// The sender's room is found by its slot (no hashing); a small message is added to
    /// the room's cork, a larger one is shared at once. When linked, one lookup (the
    /// loops interested); no reference count is touched unless the message crosses.
    fn on_message(&mut self, ctx: &mut Ctx<'_>, id: ConnId, kind: MessageKind, data: &[u8]) {
        let Some((r, _)) = self.rooms.room_of_member(id) else { return };
        self.relayed += 1;
        let mut frames = Frames::default();
        if self.encoder.should_cork(data.len()) {
            if self.rooms.add_to_cork(r, Some(id), |b| encode_frame(b, true, kind.opcode(), None, data)) {
                self.uncork(ctx, r);
            }
        } else {
            // Behind what is corked for the room, in order.
            self.uncork(ctx, r);
            let Some((_, room)) = self.rooms.room_of_member(id) else { return };
            self.encoder.fan_out(ctx, &room.members, Some(id), kind, data, &mut frames);
        }
        let Some((_, room)) = self.rooms.room_of_member(id) else { return };
        if let Some(bus) = self.bus.as_mut() {
            bus.count_relayed();
            let loops = bus.interested(&room.name);
            if loops != 0 {
                self.encoder.complete(kind, data, &mut frames);
                bus.forward(loops, &room.name, kind, &frames);
            }
            if bus.has_bridge() {
                self.encoder.plain(kind, data, &mut frames);
                bus.publish(&room.name, kind, &frames);
            }
        }
    }

    /// Also called for connections that never opened: their seat goes too.
    fn on_close(&mut self, _ctx: &mut Ctx<'_>, id: ConnId, _closed: &Closed) {
        if let Some((room, last)) = self.rooms.leave(id) {
            self.membership_changed(&room, last.then_some(false));
        }
    }

    fn end_of_turn(&mut self, ctx: &mut Ctx<'_>) -> bool {
        self.uncork_all(ctx);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn id(slot: u32, generation: u32) -> ConnId {
        ConnId { slot, generation }
    }

    /// Every member's seat points at its place in its room, and the counters agree.
    fn check(rooms: &Rooms) {
        let mut members = 0;
        for (r, room) in rooms.rooms.iter().enumerate() {
            let Some(room) = room else { continue };
            for (at, m) in room.members.iter().enumerate() {
                let Some(Seat::Member { room: rr, at: a, .. }) = rooms.seat(*m) else { panic!("{m:?} has no member seat") };
                assert_eq!((rr as usize, a as usize), (r, at));
            }
            members += room.members.len();
            assert_eq!(rooms.by_name.get(&room.name), Some(&(r as u32)));
        }
        assert_eq!(rooms.members, members);
        assert_eq!(rooms.occupied, rooms.occupied_names().count());
    }

    #[test]
    fn seats_stay_consistent_when_members_leave_in_any_order() {
        let mut rooms = Rooms::default();
        for slot in 0..300 {
            rooms.wait(id(slot, 1), if slot % 3 == 0 { "/a" } else { "/b" });
        }
        assert_eq!(rooms.tracked, 300);
        assert_eq!(rooms.join(id(0, 1)), Some((Arc::from("/a"), true)));
        assert_eq!(rooms.join(id(0, 1)), None, "joins once");
        for slot in 1..300 {
            rooms.join(id(slot, 1));
        }
        check(&rooms);
        assert_eq!(rooms.members("/a"), 100);
        // A stale id (an earlier generation of the slot) finds nothing.
        assert_eq!(rooms.leave(id(5, 0)), None);
        // Leave in a scrambled order; the last member of each room says so.
        let mut order: Vec<u32> = (0..300).map(|i| (i * 7919) % 300).collect();
        order.dedup();
        let mut lasts = Vec::new();
        for (n, slot) in order.iter().enumerate() {
            let (room, last) = rooms.leave(id(*slot, 1)).expect("a member");
            if last {
                lasts.push(room);
            }
            if n % 37 == 0 {
                check(&rooms);
            }
        }
        lasts.sort();
        assert_eq!(lasts, vec![Arc::from("/a"), Arc::from("/b")]);
        assert_eq!((rooms.tracked, rooms.members, rooms.occupied, rooms.by_name.len()), (0, 0, 0, 0));
    }

    #[test]
    fn a_room_only_waited_for_goes_when_its_connection_does() {
        let mut rooms = Rooms::default();
        rooms.wait(id(3, 7), "/x");
        assert_eq!(rooms.occupied, 0);
        assert!(rooms.named("/x").is_some());
        assert_eq!(rooms.leave(id(3, 7)), None, "never a member");
        assert!(rooms.named("/x").is_none());
        // Its index is reused by the next room.
        rooms.wait(id(4, 1), "/y");
        assert_eq!(rooms.rooms.len(), 1);
    }
}
