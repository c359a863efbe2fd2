//! The two servers that ship with the crate: the chat relay (every message goes to the
//! other clients of the same room) and echo (every message goes back to its sender).

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::net::handler::{ConnId, Ctx, Handler};
use crate::net::http;
use crate::net::metrics::Metrics;
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
/// asks for it) get one compressed encoding, shared likewise.
#[derive(Debug, Default)]
pub struct Relay {
    /// Room name -> members, in join order.
    rooms: HashMap<String, Vec<ConnId>>,
    /// Connection -> its room, from the handshake until it closes.
    room_of: HashMap<ConnId, String>,
    relayed: u64,
    /// Serve the chat page to plain HTTP requests.
    page: bool,
    plain: FramePool,
    #[cfg(feature = "deflate")]
    compressed: FramePool,
    #[cfg(feature = "deflate")]
    deflate: Option<(crate::proto::deflate::Deflater, crate::DeflateConfig, Vec<u8>)>,
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
        Self { deflate: Some((deflater, cfg, Vec::new())), ..Self::default() }
    }

    /// Serves the chat page (embedded in the binary) to a browser that opens a room's
    /// address: `GET /lobby` gives a page that joins `/lobby` over `ws://` or `wss://`
    /// and sends what is typed as `nick: text`. Room paths are `/` and paths of
    /// letters, digits and `-_~%/` (up to 256 bytes); others (`/favicon.ico`) are 404.
    pub fn with_page(mut self) -> Self {
        self.page = true;
        self
    }

    /// Members of `room` that are open.
    pub fn members(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, Vec::len)
    }

    /// Messages relayed so far (each counted once, whatever the number of recipients).
    pub fn relayed(&self) -> u64 {
        self.relayed
    }

    /// Connections the relay keeps state for (from their request until they end).
    pub fn tracked(&self) -> usize {
        self.room_of.len()
    }
}

impl Handler for Relay {
    fn on_http(&mut self, _id: ConnId, _peer: SocketAddr, req: &HttpRequest) -> Option<Reject> {
        self.page.then(|| http::chat_page(req))
    }

    fn metrics(&self, m: &mut Metrics) {
        m.gauge("rfc6455_relay_rooms", "Rooms with at least one open member.", self.rooms.len() as u64);
        let members = self.rooms.values().map(Vec::len).sum::<usize>();
        m.gauge("rfc6455_relay_members", "Open connections in rooms.", members as u64);
        m.counter("rfc6455_relay_messages_total", "Messages relayed (each once, whatever the recipients).", self.relayed);
    }

    fn on_request(&mut self, id: ConnId, _peer: SocketAddr, req: &Request) -> Result<Accept, Reject> {
        self.room_of.insert(id, req.path().to_owned());
        Ok(Accept::new())
    }

    fn on_open(&mut self, _ctx: &mut Ctx<'_>, id: ConnId) {
        if let Some(room) = self.room_of.get(&id) {
            self.rooms.entry(room.clone()).or_default().push(id);
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, id: ConnId, kind: MessageKind, data: &[u8]) {
        let Some(members) = self.room_of.get(&id).and_then(|room| self.rooms.get(room)) else { return };
        self.relayed += 1;
        if members.len() < 2 {
            return;
        }
        // Each encoding is made at most once, on first need.
        let mut plain: Option<SharedFrame> = None;
        #[cfg(feature = "deflate")]
        let mut compressed: Option<SharedFrame> = None;
        for &peer in members {
            if peer == id {
                continue;
            }
            #[cfg(feature = "deflate")]
            if let Some((deflater, cfg, buf)) = self.deflate.as_mut() {
                let shared_ok = ctx
                    .engine(peer)
                    .and_then(|e| e.deflate_params())
                    .is_some_and(|p| p.server_no_context_takeover && p.server_max_window_bits >= SHARED_WINDOW_BITS);
                if shared_ok && data.len() >= cfg.min_size {
                    let frame = compressed.get_or_insert_with(|| {
                        buf.clear();
                        deflater.compress(data, buf);
                        self.compressed.frame(kind, buf, Some(SHARED_WINDOW_BITS))
                    });
                    ctx.send_shared(peer, frame);
                    continue;
                }
                if ctx.engine(peer).is_some_and(|e| e.is_compressed()) {
                    // Other parameters: the connection compresses for itself.
                    ctx.send(peer, kind, data);
                    continue;
                }
            }
            let frame = plain.get_or_insert_with(|| self.plain.frame(kind, data, None));
            ctx.send_shared(peer, frame);
        }
    }

    /// Also called for connections that never opened: their room entry goes too.
    fn on_close(&mut self, _ctx: &mut Ctx<'_>, id: ConnId, _closed: &Closed) {
        if let Some(room) = self.room_of.remove(&id) {
            if let Some(members) = self.rooms.get_mut(&room) {
                members.retain(|&m| m != id);
                if members.is_empty() {
                    self.rooms.remove(&room);
                }
            }
        }
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
