//! Rooms across the loops of a process: each relay loop keeps an interest table (for
//! each room, which other loops have members in it), learns of changes from the other
//! loops, and sends a relayed message once to each interested loop, as the frames it
//! already encoded (shared bytes, no copy per loop or per recipient).
//!
//! What a loop has for another in one turn is appended, in the order it was made, to
//! the lane between them (one lock per loop pair per turn, none per message), and a
//! job that takes the lane's items goes into the other loop's [`Inbox`] unless one is
//! already waiting there: at most one job per lane is pending, so the bus never fills
//! an inbox, and a loop that falls behind takes everything waiting in one go.
//! Interest changes and messages from one loop reach every other loop in order, so
//! per-sender order holds. A lane holds at most 65,536 items: beyond, messages for it
//! are dropped and counted; interest changes are always kept, so the tables never go
//! stale. Each loop reads only its own table.
//!
//! The window: a member that joins on one loop misses what other loops relay before
//! they have taken its loop's interest change (the next turn of each); a message
//! already on its way may reach a member that joined just after it was sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

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

/// The way from one loop to another: the items waiting, and whether a job that will
/// take them is already in the receiver's inbox. At most one such job is pending per
/// lane, so the bus never fills an inbox, however far behind a loop falls.
#[derive(Debug, Default)]
struct Lane {
    items: Mutex<Vec<BusItem>>,
    scheduled: AtomicBool,
}

/// Items a lane holds at most; beyond, a turn's messages for it are dropped (counted)
/// and its interest changes kept.
const LANE_MAX: usize = 1 << 16;

/// One loop's end of the bus.
pub(crate) struct Bus<H> {
    me: usize,
    /// Every loop's inbox (this loop's included, unused).
    inboxes: Vec<Inbox<H>>,
    /// To each loop (this loop's own unused).
    lanes: Vec<Arc<Lane>>,
    /// Loops that have stopped: nothing more is sent to them.
    gone: u64,
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
    /// One bus per loop, linking the loops whose inboxes are given; `None` beyond
    /// [`MAX_LOOPS`].
    pub(crate) fn link(inboxes: Vec<Inbox<H>>) -> Option<Vec<Bus<H>>> {
        let n = inboxes.len();
        if n > MAX_LOOPS {
            return None;
        }
        let shared = Arc::new(BusShared {
            members: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            relayed: (0..n).map(|_| AtomicU64::new(0)).collect(),
            crossed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        // lanes[from][to]
        let lanes: Vec<Vec<Arc<Lane>>> = (0..n).map(|_| (0..n).map(|_| Arc::default()).collect()).collect();
        let buses = lanes
            .into_iter()
            .enumerate()
            .map(|(me, lanes)| Bus {
                me,
                inboxes: inboxes.clone(),
                lanes,
                gone: 0,
                remote: HashMap::new(),
                outgoing: (0..n).map(|_| Vec::new()).collect(),
                shared: shared.clone(),
                relayed: 0,
            })
            .collect();
        Some(buses)
    }

    /// Tells every other loop that this one has members in `room` now, or no longer.
    pub(crate) fn announce(&mut self, room: &Arc<str>, member: bool) {
        for (i, out) in self.outgoing.iter_mut().enumerate() {
            if i != self.me && self.gone & (1 << i) == 0 {
                out.push(BusItem::Interest { room: room.clone(), from: self.me, member });
            }
        }
    }

    /// The loops other than this one with members in `room` (a bit set; 0: none).
    pub(crate) fn interested(&self, room: &str) -> u64 {
        self.remote.get(room).map_or(0, |&m| m & !self.gone)
    }

    /// Queues a message of `room` for the loops in `loops` (from [`Bus::interested`]).
    pub(crate) fn forward(&mut self, loops: u64, room: &Arc<str>, kind: MessageKind, frames: &Frames) {
        for (i, out) in self.outgoing.iter_mut().enumerate() {
            if loops & (1 << i) != 0 {
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

    /// Hands each loop what this turn has for it: appended to its lane, and a job that
    /// takes the lane's items put in its inbox unless one is there already. Returns
    /// true if a lane could not be scheduled (its inbox was full): call again soon.
    pub(crate) fn flush(&mut self) -> bool {
        self.shared.relayed[self.me].store(self.relayed, Ordering::Relaxed);
        let mut retry = false;
        for i in 0..self.outgoing.len() {
            let lane = self.lanes[i].clone();
            {
                let mut items = lane.items.lock().unwrap_or_else(PoisonError::into_inner);
                if self.outgoing[i].is_empty() && items.is_empty() {
                    continue;
                }
                let mut crossed = 0;
                for item in self.outgoing[i].drain(..) {
                    match item {
                        BusItem::Message { .. } if items.len() >= LANE_MAX => {
                            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        BusItem::Message { .. } => {
                            crossed += 1;
                            items.push(item);
                        }
                        BusItem::Interest { .. } => items.push(item),
                    }
                }
                self.shared.crossed.fetch_add(crossed, Ordering::Relaxed);
            }
            if lane.scheduled.swap(true, Ordering::AcqRel) {
                continue; // its job is waiting in the inbox and will take these too
            }
            let taker = lane.clone();
            let job = move |h: &mut H, ctx: &mut Ctx<'_>| {
                // Cleared before taking: items added after the take schedule a new job.
                taker.scheduled.store(false, Ordering::Release);
                let items = std::mem::take(&mut *taker.items.lock().unwrap_or_else(PoisonError::into_inner));
                h.receive(ctx, items);
            };
            match self.inboxes[i].send(job) {
                Ok(()) => {}
                Err(InboxError::Full) => {
                    lane.scheduled.store(false, Ordering::Release);
                    retry = true;
                }
                Err(InboxError::Closed) => {
                    // That loop has stopped: forget it.
                    self.gone |= 1 << i;
                    let dropped = std::mem::take(&mut *lane.items.lock().unwrap_or_else(PoisonError::into_inner));
                    let lost = dropped.iter().filter(|it| matches!(it, BusItem::Message { .. })).count() as u64;
                    self.shared.dropped.fetch_add(lost, Ordering::Relaxed);
                    for mask in self.remote.values_mut() {
                        *mask &= !(1 << i);
                    }
                    self.remote.retain(|_, m| *m != 0);
                }
            }
        }
        retry
    }
}
