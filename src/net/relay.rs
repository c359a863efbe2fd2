//! The two servers that ship with the crate: the chat relay (every message goes to the
//! other clients of the same room) and echo (every message goes back to its sender).

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::net::server::{ConnId, Ctx, Handler, Rejection};
use crate::{Accept, Closed, MessageKind, Request, SharedFrame};

/// Frames a relay keeps for reuse.
const FRAME_POOL: usize = 16;
/// Largest message whose frame is kept for reuse.
const FRAME_POOL_MAX: usize = 64 * 1024;

/// Relays every message to all other clients in the same room. The room is the request
/// path (`/lobby` and `/games` are separate; `/` is the default room). The sender does
/// not get its own message back; per sender, order is preserved. Each relayed message
/// is encoded once and the same bytes are queued for every recipient.
#[derive(Debug, Default)]
pub struct Relay {
    /// Room name -> members, in join order.
    rooms: HashMap<String, Vec<ConnId>>,
    /// Connection -> its room, from the handshake until it closes.
    room_of: HashMap<ConnId, String>,
    relayed: u64,
    /// Encoded frames kept for reuse once every recipient has written them.
    frames: Vec<SharedFrame>,
}

impl Relay {
    /// An empty relay.
    pub fn new() -> Self {
        Self::default()
    }

    /// Members of `room` that are open.
    pub fn members(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, Vec::len)
    }

    /// Messages relayed so far (each counted once, whatever the number of recipients).
    pub fn relayed(&self) -> u64 {
        self.relayed
    }
}

impl Handler for Relay {
    fn on_request(&mut self, id: ConnId, _peer: SocketAddr, req: &Request) -> Result<Accept, Rejection> {
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
        // Reuse a frame no queue holds any more (no allocation in steady state).
        let frame = match self.frames.iter_mut().position(|f| f.reuse(kind, data)) {
            // Large frames are not kept: the pool stays small.
            Some(i) if data.len() > FRAME_POOL_MAX => self.frames.swap_remove(i),
            Some(i) => self.frames[i].clone(),
            None => {
                let f = SharedFrame::new(kind, data);
                if self.frames.len() < FRAME_POOL && data.len() <= FRAME_POOL_MAX {
                    self.frames.push(f.clone());
                }
                f
            }
        };
        for &peer in members {
            if peer != id {
                ctx.send_shared(peer, &frame);
            }
        }
    }

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
}
