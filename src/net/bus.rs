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
//! per-sender order holds. A lane holds at most 65,536 messages and 64 MiB of
//! frames: beyond, messages for it are dropped and counted; interest changes are
//! always kept, so the tables never go stale. Each loop reads only its own table. The
//! broker bridge (`broker/`) has a lane from each loop and one to each loop too.
//!
//! The window: a member that joins on one loop misses what other loops relay before
//! they have taken its loop's interest change (the next turn of each); a message
//! already on its way may reach a member that joined just after it was sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::net::broker::BrokerStats;
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
    #[cfg_attr(not(feature = "deflate"), allow(dead_code))]
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
    queued: Mutex<Queued>,
    scheduled: AtomicBool,
}

/// What waits in a lane, and the bytes of its messages' frames.
#[derive(Debug, Default)]
struct Queued {
    items: Vec<BusItem>,
    bytes: usize,
}

/// Messages a lane holds at most, and the bytes of their frames; beyond either, a
/// turn's messages for it are dropped (counted) and its interest changes kept.
const LANE_MAX: usize = 1 << 16;
const LANE_MAX_BYTES: usize = 64 << 20;

impl Queued {
    /// Appends `item`: a message beyond [`LANE_MAX`] or [`LANE_MAX_BYTES`] is dropped
    /// and counted in `dropped`, an interest change always kept. True if a message was
    /// appended.
    fn push(&mut self, item: BusItem, dropped: &AtomicU64) -> bool {
        let bytes = item.bytes();
        match item {
            BusItem::Message { .. } if self.items.len() >= LANE_MAX || self.bytes + bytes > LANE_MAX_BYTES => {
                dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
            BusItem::Message { .. } => {
                self.bytes += bytes;
                self.items.push(item);
                true
            }
            BusItem::Interest { .. } => {
                self.items.push(item);
                false
            }
        }
    }
}

impl BusItem {
    /// The bytes a queued item holds (its frames).
    fn bytes(&self) -> usize {
        match self {
            BusItem::Message { frames, .. } => {
                frames.plain.as_ref().map_or(0, |f| f.as_bytes().len()) + frames.compressed.as_ref().map_or(0, |f| f.as_bytes().len())
            }
            BusItem::Interest { .. } => 0,
        }
    }
}

impl Lane {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.queued.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `items` in order (see [`Queued::push`]); returns the messages appended.
    fn append(&self, items: &mut Vec<BusItem>, dropped: &AtomicU64) -> u64 {
        let mut queued = self.lock();
        items.drain(..).map(|item| u64::from(queued.push(item, dropped))).sum()
    }

    /// Appends one item (see [`Queued::push`]).
    fn push(&self, item: BusItem, dropped: &AtomicU64) {
        self.lock().push(item, dropped);
    }

    /// Whether nothing waits in the lane.
    fn is_empty(&self) -> bool {
        self.lock().items.is_empty()
    }

    /// Takes everything waiting, and lets the next append schedule a new taker.
    fn take(&self) -> Vec<BusItem> {
        // Cleared before taking: items added after the take schedule a new job.
        self.scheduled.store(false, Ordering::Release);
        std::mem::take(&mut *self.lock()).items
    }
}

/// Puts a job that takes `lane`'s items into `inbox`, unless one is waiting there
/// already (then that one takes them too). On an error the lane is not scheduled.
fn hand_over<H: BusMember>(lane: &Arc<Lane>, inbox: &Inbox<H>) -> Result<(), InboxError> {
    if lane.scheduled.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    let taker = lane.clone();
    let sent = inbox.send(move |h: &mut H, ctx: &mut Ctx<'_>| h.receive(ctx, taker.take()));
    if sent.is_err() {
        lane.scheduled.store(false, Ordering::Release);
    }
    sent
}

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
    /// The broker bridge of the process, if any, and what this turn has for it.
    bridge: Option<Arc<BridgePort<H>>>,
    to_bridge: Vec<BusItem>,
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
                bridge: None,
                to_bridge: Vec::new(),
            })
            .collect();
        Some(buses)
    }

    /// Connects this loop to the process's broker bridge.
    pub(crate) fn attach(&mut self, bridge: Arc<BridgePort<H>>) {
        self.bridge = Some(bridge);
    }

    /// The bridge's counters, if the process has one.
    pub(crate) fn bridge(&self) -> Option<&BridgePort<H>> {
        self.bridge.as_deref()
    }

    /// Tells every other loop (and the bridge) that this one has members in `room`
    /// now, or no longer.
    pub(crate) fn announce(&mut self, room: &Arc<str>, member: bool) {
        if self.bridge.is_some() {
            self.to_bridge.push(BusItem::Interest { room: room.clone(), from: self.me, member });
        }
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

    /// Whether messages relayed here go to the broker too (then [`Bus::publish`] them).
    pub(crate) fn has_bridge(&self) -> bool {
        self.bridge.is_some()
    }

    /// Queues a message of `room` for the broker (its plain frame carries the payload).
    pub(crate) fn publish(&mut self, room: &Arc<str>, kind: MessageKind, frames: &Frames) {
        self.to_bridge.push(BusItem::Message { room: room.clone(), kind, frames: frames.clone() });
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

    /// Appends this turn's items for the bridge to its lane from this loop, and wakes
    /// the bridge unless it has been woken and not taken them yet.
    fn flush_to_bridge(&mut self) {
        let Some(bridge) = &self.bridge else { return };
        if self.to_bridge.is_empty() {
            return;
        }
        if bridge.closed.load(Ordering::Acquire) {
            let lost = self.to_bridge.drain(..).filter(|it| matches!(it, BusItem::Message { .. })).count() as u64;
            bridge.stats.dropped_link_down.fetch_add(lost, Ordering::Relaxed);
            return;
        }
        let lane = &bridge.from_loops[self.me];
        lane.append(&mut self.to_bridge, &bridge.stats.dropped_queue);
        if !lane.scheduled.swap(true, Ordering::AcqRel) {
            (bridge.wake)();
        }
    }

    /// Hands each loop what this turn has for it: appended to its lane, and a job that
    /// takes the lane's items put in its inbox unless one is there already. Returns
    /// true if a lane could not be scheduled (its inbox was full): call again soon.
    pub(crate) fn flush(&mut self) -> bool {
        self.shared.relayed[self.me].store(self.relayed, Ordering::Relaxed);
        self.flush_to_bridge();
        let mut retry = false;
        for i in 0..self.outgoing.len() {
            let lane = self.lanes[i].clone();
            if self.outgoing[i].is_empty() && lane.is_empty() {
                continue;
            }
            let crossed = lane.append(&mut self.outgoing[i], &self.shared.dropped);
            self.shared.crossed.fetch_add(crossed, Ordering::Relaxed);
            match hand_over(&lane, &self.inboxes[i]) {
                Ok(()) => {}
                Err(InboxError::Full) => retry = true,
                Err(InboxError::Closed) => {
                    // That loop has stopped: forget it.
                    self.gone |= 1 << i;
                    let dropped = lane.take();
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

/// The broker bridge's end of the bus (see `broker/`): a lane from each loop, which it
/// takes when woken, and a lane to each loop, handed over as a loop would.
pub(crate) struct BridgePort<H> {
    from_loops: Vec<Arc<Lane>>,
    to_loops: Vec<Arc<Lane>>,
    inboxes: Vec<Inbox<H>>,
    /// Wakes the bridge's thread that takes the loops' lanes.
    wake: Box<dyn Fn() + Send + Sync>,
    /// Lanes to loops whose inbox was full: handed over again by [`BridgePort::retry`].
    pending: AtomicU64,
    /// The bridge has stopped: the loops queue nothing more for it.
    closed: AtomicBool,
    pub(crate) stats: Arc<BrokerStats>,
}

impl<H> std::fmt::Debug for BridgePort<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgePort").field("loops", &self.inboxes.len()).finish_non_exhaustive()
    }
}

impl<H: BusMember> BridgePort<H> {
    /// A port to the loops whose inboxes are given; `wake` is called (from a loop's
    /// thread) when a loop has queued items for the bridge.
    pub(crate) fn new(inboxes: Vec<Inbox<H>>, stats: Arc<BrokerStats>, wake: Box<dyn Fn() + Send + Sync>) -> Self {
        let n = inboxes.len();
        Self {
            from_loops: (0..n).map(|_| Arc::default()).collect(),
            to_loops: (0..n).map(|_| Arc::default()).collect(),
            inboxes,
            wake,
            pending: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            stats,
        }
    }

    /// Everything the loops have queued for the bridge, loop by loop (each loop's in
    /// its order).
    #[cfg_attr(not(any(feature = "broker-redis", feature = "broker-nats")), allow(dead_code))]
    pub(crate) fn take(&self) -> Vec<BusItem> {
        let mut all = Vec::new();
        for lane in &self.from_loops {
            all.append(&mut lane.take());
        }
        all
    }

    /// Hands a message of `room` from another process to the loops in `loops` (a bit
    /// set) for their members. A loop whose inbox is full gets it at the next
    /// [`BridgePort::retry`]; a lane that is full drops it (counted).
    pub(crate) fn deliver(&self, loops: u64, room: &Arc<str>, kind: MessageKind, frame: &SharedFrame) {
        for (i, lane) in self.to_loops.iter().enumerate() {
            if loops & (1 << i) == 0 {
                continue;
            }
            let frames = Frames { plain: Some(frame.clone()), compressed: None };
            lane.push(BusItem::Message { room: room.clone(), kind, frames }, &self.stats.dropped_queue);
            self.hand_over(i);
        }
    }

    /// The bridge has stopped taking items: the loops drop them from now on (counted).
    #[cfg_attr(not(any(feature = "broker-redis", feature = "broker-nats")), allow(dead_code))]
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for lane in &self.from_loops {
            let lost = lane.take().iter().filter(|it| matches!(it, BusItem::Message { .. })).count() as u64;
            self.stats.dropped_link_down.fetch_add(lost, Ordering::Relaxed);
        }
    }

    /// Hands over again the lanes whose loop's inbox was full.
    pub(crate) fn retry(&self) {
        let pending = self.pending.swap(0, Ordering::AcqRel);
        for i in 0..self.to_loops.len() {
            if pending & (1 << i) != 0 {
                self.hand_over(i);
            }
        }
    }

    fn hand_over(&self, i: usize) {
        match hand_over(&self.to_loops[i], &self.inboxes[i]) {
            Ok(()) => {}
            Err(InboxError::Full) => {
                self.pending.fetch_or(1 << i, Ordering::AcqRel);
            }
            Err(InboxError::Closed) => {
                // That loop has stopped: what waits for it is lost.
                let lost = self.to_loops[i].take();
                let lost = lost.iter().filter(|it| matches!(it, BusItem::Message { .. })).count() as u64;
                self.stats.dropped_queue.fetch_add(lost, Ordering::Relaxed);
            }
        }
    }
}
