//! Rooms across the loops of a process: each relay loop keeps an interest table (for
//! each room, which other loops have members in it), learns of changes from the other
//! loops, and sends a relayed message once to each interested loop, as the frames it
//! already encoded (shared bytes, no copy per loop or per recipient).
//!
//! Everything a loop sends another in one turn goes as one batch through the other
//! loop's [`Inbox`] (one channel send and one wake per loop pair per turn), in the
//! order it was made: interest changes and messages from one loop reach every other
//! loop in order, so per-sender order holds. No lock is taken per message: each loop
//! reads only its own table. A loop whose inbox is full (it is far behind) loses the
//! messages of that batch, counted; interest changes are kept and sent next turn, so
//! the tables never go stale.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::net::handler::Ctx;
use crate::net::server::{Inbox, InboxError};
use crate::{MessageKind, SharedFrame};

/// The most loops a bus links (the interest table is a bit set).
pub const MAX_LOOPS: usize = 64;

/// One thing a loop tells another, in the order it happened.
#[derive(Clone, Debug)]
pub(crate) enum BusItem {
    /// Loop `from` now has members in `room` (or no longer).
    Interest { room: Arc<str>, from: usize, member: bool },
    /// A message for every member of `room` on the receiving loop.
    Message { room: Arc<str>, kind: MessageKind, frames: Frames },
}

/// A message's encodings, made once on its loop and shared with every other.
#[derive(Clone, Debug, Default)]
pub(crate) struct Frames {
    pub(crate) plain: Option<SharedFrame>,
    pub(crate) compressed: Option<SharedFrame>,
}

/// What the buses of a process share: counters, read by `/metrics`.
#[derive(Debug)]
pub(crate) struct BusShared {
    /// Members on each loop (a gauge each loop keeps).
    pub(crate) members: Vec<AtomicUsize>,
    /// Messages relayed by each loop.
    pub(crate) relayed: Vec<AtomicU64>,
    /// Messages sent to another loop (once per interested loop).
    pub(crate) crossed: AtomicU64,
    /// Messages lost because a loop's inbox was full.
    pub(crate) dropped: AtomicU64,
}

/// Receives what other loops send (implemented by the relay).
pub(crate) trait BusMember: Sized + 'static {
    fn receive(&mut self, ctx: &mut Ctx<'_>, items: Vec<BusItem>);
}

/// One loop's end of the bus.
pub(crate) struct Bus<H> {
    me: usize,
    /// Every loop's inbox (this loop's included, unused).
    inboxes: Vec<Inbox<H>>,
    /// Room -> bit set of the other loops with members in it.
    remote: HashMap<Arc<str>, u64>,
    /// Per loop: what this turn has for it.
    outgoing: Vec<Vec<BusItem>>,
    pub(crate) shared: Arc<BusShared>,
    /// Messages relayed here, published to `shared` once per turn.
    relayed: u64,
}

impl<H> std::fmt::Debug for Bus<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("me", &self.me).field("rooms_elsewhere", &self.remote.len()).finish_non_exhaustive()
    }
}

impl<H: BusMember> Bus<H> {
    /// One bus per loop, linking the loops whose inboxes are given (at most [`MAX_LOOPS`]).
    pub(crate) fn link(inboxes: Vec<Inbox<H>>) -> Vec<Bus<H>> {
        let n = inboxes.len().min(MAX_LOOPS);
        let shared = Arc::new(BusShared {
            members: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            relayed: (0..n).map(|_| AtomicU64::new(0)).collect(),
            crossed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        (0..n)
            .map(|me| Bus {
                me,
                inboxes: inboxes[..n].to_vec(),
                remote: HashMap::new(),
                outgoing: (0..n).map(|_| Vec::new()).collect(),
                shared: shared.clone(),
                relayed: 0,
            })
            .collect()
    }

    /// Tells every other loop that this one has members in `room` now, or no longer.
    pub(crate) fn announce(&mut self, room: &Arc<str>, member: bool) {
        for (i, out) in self.outgoing.iter_mut().enumerate() {
            if i != self.me {
                out.push(BusItem::Interest { room: room.clone(), from: self.me, member });
            }
        }
    }

    /// Whether another loop has members in `room`.
    pub(crate) fn wanted(&self, room: &str) -> bool {
        self.remote.get(room).is_some_and(|&m| m != 0)
    }

    /// Queues a message of `room` for every loop with members there.
    pub(crate) fn forward(&mut self, room: &Arc<str>, kind: MessageKind, frames: &Frames) {
        let Some(&mask) = self.remote.get(&**room) else { return };
        for (i, out) in self.outgoing.iter_mut().enumerate() {
            if mask & (1 << i) != 0 {
                out.push(BusItem::Message { room: room.clone(), kind, frames: frames.clone() });
            }
        }
    }

    /// Applies another loop's interest change.
    pub(crate) fn interest(&mut self, room: Arc<str>, from: usize, member: bool) {
        let bit = 1u64 << from;
        if member {
            *self.remote.entry(room).or_default() |= bit;
        } else if let Some(mask) = self.remote.get_mut(&room) {
            *mask &= !bit;
            if *mask == 0 {
                self.remote.remove(&room);
            }
        }
    }

    /// Counts a message relayed by this loop.
    pub(crate) fn count_relayed(&mut self) {
        self.relayed += 1;
    }

    /// This loop's members now (a gauge for `/metrics`).
    pub(crate) fn set_members(&self, members: usize) {
        self.shared.members[self.me].store(members, Ordering::Relaxed);
    }

    /// Rooms with members on other loops.
    pub(crate) fn remote_rooms(&self) -> impl Iterator<Item = &str> {
        self.remote.keys().map(|r| &**r)
    }

    /// Sends each loop its batch of this turn: one inbox job and one wake per loop.
    pub(crate) fn flush(&mut self) {
        self.shared.relayed[self.me].store(self.relayed, Ordering::Relaxed);
        for i in 0..self.outgoing.len() {
            if self.outgoing[i].is_empty() {
                continue;
            }
            let items = std::mem::take(&mut self.outgoing[i]);
            let crossed = items.iter().filter(|it| matches!(it, BusItem::Message { .. })).count() as u64;
            let interests: Vec<BusItem> = items.iter().filter(|it| matches!(it, BusItem::Interest { .. })).cloned().collect();
            match self.inboxes[i].send(move |h: &mut H, ctx: &mut Ctx<'_>| h.receive(ctx, items)) {
                Ok(()) => {
                    self.shared.crossed.fetch_add(crossed, Ordering::Relaxed);
                }
                Err(InboxError::Full | InboxError::Closed) => {
                    // Interest changes are kept for next turn; the messages are lost, counted.
                    self.outgoing[i] = interests;
                    self.shared.dropped.fetch_add(crossed, Ordering::Relaxed);
                }
            }
        }
    }
}
