//! The application side of a server: the [`Handler`] trait, the connection ids it is
//! given, and [`Ctx`], its access to the loop's connections while it runs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::net::conn::Conns;
use crate::net::metrics::{Metrics, TurnCounts};
use crate::net::policy::Policy;
use crate::net::pool::Pool;
use crate::{Accept, CloseCode, Closed, Connection, HttpRequest, MessageKind, Reject, Request, SharedFrame};

/// Identifies a connection within one server. Ids are never reused while the server
/// runs: an id kept after [`Handler::on_close`] is simply unknown to every [`Ctx`]
/// method, never another connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

/// The application side of a server: decides on handshakes and reacts to messages.
///
/// Every connection that reaches [`Handler::on_request`] gets exactly one
/// [`Handler::on_close`], whether it opened or not, so state kept from the request
/// can always be released.
pub trait Handler {
    /// Whether [`Handler::on_frame`] is implemented. A server whose engine delivers
    /// frames ([`crate::Delivery::Frames`]) refuses to bind a handler without it,
    /// rather than drop the data.
    const HANDLES_FRAMES: bool = false;

    /// Decides on a valid handshake request. The default accepts it as is.
    fn on_request(&mut self, _id: ConnId, _peer: SocketAddr, _req: &Request) -> Result<Accept, Reject> {
        Ok(Accept::new())
    }
    /// A plain HTTP request (no upgrade) on the server's port, other than `/healthz`
    /// (reserved: the server answers it). Return the answer, or `None` for the default
    /// ([`HttpRequest::default_response`]: 426 to `GET`, 405 to other methods). The
    /// connection ends after the answer (`Connection: close`); a `HEAD` gets its head.
    fn on_http(&mut self, _id: ConnId, _peer: SocketAddr, _req: &HttpRequest) -> Option<Reject> {
        None
    }
    /// Adds the handler's own metrics to the admin address's `/metrics` page (after
    /// the server's). The default adds none.
    fn metrics(&self, _out: &mut Metrics) {}
    /// The connection is open.
    fn on_open(&mut self, _ctx: &mut Ctx<'_>, _id: ConnId) {}
    /// A whole message arrived. `data` is only borrowed: its buffer is reused.
    fn on_message(&mut self, ctx: &mut Ctx<'_>, id: ConnId, kind: MessageKind, data: &[u8]);
    /// A whole message arrived, owned. The default lends it to [`Handler::on_message`]
    /// and returns the buffer for reuse; a handler that passes the buffer on (see
    /// [`Ctx::send_owned`]) returns `None`.
    fn on_message_owned(&mut self, ctx: &mut Ctx<'_>, id: ConnId, kind: MessageKind, data: Vec<u8>) -> Option<Vec<u8>> {
        self.on_message(ctx, id, kind, &data);
        Some(data)
    }
    /// One data frame arrived ([`crate::Delivery::Frames`], Qt's
    /// `textFrameReceived(frame, isLastFrame)`): `kind` is its message's kind, `fin`
    /// marks the last frame. Text frames together are UTF-8; one alone may end inside
    /// a code point. Set [`Handler::HANDLES_FRAMES`] when implementing it.
    fn on_frame(&mut self, _ctx: &mut Ctx<'_>, _id: ConnId, _kind: MessageKind, _data: &[u8], _fin: bool) {}
    /// A ping arrived (the pong is already queued).
    fn on_ping(&mut self, _ctx: &mut Ctx<'_>, _id: ConnId, _payload: &[u8]) {}
    /// A pong arrived; `rtt` is the round-trip time when it answers one of our pings
    /// (keepalive or [`Ctx::ping`]).
    fn on_pong(&mut self, _ctx: &mut Ctx<'_>, _id: ConnId, _payload: &[u8], _rtt: Option<Duration>) {}
    /// The connection is over: called once for every connection that got
    /// [`Handler::on_request`], opened or not.
    fn on_close(&mut self, _ctx: &mut Ctx<'_>, _id: ConnId, _closed: &Closed) {}
    /// Once per loop turn, after the reads, timers and writes: the place to hand what
    /// the turn gathered to other threads in one batch (a relay's bus). Return true to
    /// have the loop come back soon (within a millisecond) even if nothing happens, to
    /// retry what could not be handed over. What it queues on connections is written
    /// in the same turn.
    fn end_of_turn(&mut self, _ctx: &mut Ctx<'_>) -> bool {
        false
    }
}

/// Access to the server's connections from inside a [`Handler`] (or a closure run
/// through the server's [`crate::net::Inbox`]).
pub struct Ctx<'a> {
    pub(crate) conns: &'a mut Conns,
    pub(crate) now: Instant,
    pub(crate) policy: &'a Policy,
    pub(crate) counts: &'a mut TurnCounts,
    pub(crate) pool: &'a mut Pool,
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("now", &self.now).finish_non_exhaustive()
    }
}

impl Ctx<'_> {
    /// The time this loop turn started.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Sends a message to `id` (copied once into its output). Returns false if the
    /// connection is gone, not open, or congested.
    pub fn send(&mut self, id: ConnId, kind: MessageKind, data: &[u8]) -> bool {
        self.queue_message(id, data.len(), |e| e.send(kind, data).is_ok())
    }

    /// Sends a message whose buffer is handed over (no copy; the buffer is reused once
    /// written). Same result as `send`.
    pub fn send_owned(&mut self, id: ConnId, kind: MessageKind, data: Vec<u8>) -> bool {
        self.queue_message(id, data.len(), move |e| e.send_owned(kind, data).is_ok())
    }

    /// Queues a frame encoded once for many recipients (no copy). Same result as
    /// `send`; also false for a compressed frame the connection cannot inflate.
    pub fn send_shared(&mut self, id: ConnId, frame: &SharedFrame) -> bool {
        self.queue_message(id, frame.as_bytes().len(), |e| e.send_shared(frame).is_ok())
    }

    /// Queues `messages` whole frames encoded back to back in `frame` (a relay's
    /// corked turn) for `id`, as one run. Same result as `send`.
    pub(crate) fn send_corked(&mut self, id: ConnId, frame: &SharedFrame, messages: usize) -> bool {
        let len = frame.as_bytes().len();
        self.queue_messages(id, messages, len, |e| e.send_shared(frame).is_ok())
    }

    /// [`Ctx::send_corked`] for the byte ranges `parts` of `frame` only (the turn
    /// without `id`'s own messages), holding `messages` frames.
    pub(crate) fn send_corked_parts(&mut self, id: ConnId, frame: &SharedFrame, parts: &[std::ops::Range<usize>], messages: usize) -> bool {
        let len = parts.iter().map(ExactSizeIterator::len).sum();
        self.queue_messages(id, messages, len, |e| e.send_shared_parts(frame, parts).is_ok())
    }

    /// Sends a ping to `id`; its pong reaches [`Handler::on_pong`] with the round-trip time.
    pub fn ping(&mut self, id: ConnId, payload: &[u8]) -> bool {
        let now = self.now;
        self.queue(id, |e| e.ping(now, payload).is_ok())
    }

    /// Queues a message of `len` bytes with `f`, as `queue`, and counts it if queued.
    fn queue_message(&mut self, id: ConnId, len: usize, f: impl FnOnce(&mut Connection) -> bool) -> bool {
        self.queue_messages(id, 1, len, f)
    }

    /// Queues `messages` messages of `len` bytes in all with `f`, as `queue`, and
    /// counts them if queued.
    fn queue_messages(&mut self, id: ConnId, messages: usize, len: usize, f: impl FnOnce(&mut Connection) -> bool) -> bool {
        let ok = self.queue(id, f);
        if ok {
            self.counts.sent(messages, len);
        }
        ok
    }

    fn queue(&mut self, id: ConnId, f: impl FnOnce(&mut Connection) -> bool) -> bool {
        let (policy, now) = (self.policy, self.now);
        let Some(conn) = self.conns.get_mut(id) else { return false };
        self.pool.lend_output(conn);
        let ok = policy.admit(conn, now) && f(&mut conn.engine);
        self.conns.touch(id.slot);
        ok
    }

    /// Starts the closing handshake with `id`.
    pub fn close(&mut self, id: ConnId, code: CloseCode, reason: &str) {
        let now = self.now;
        if let Some(c) = self.conns.get_mut(id) {
            let _ = c.engine.close(now, code, reason);
            self.conns.touch(id.slot);
        }
    }

    /// Stops reading from `id` (flow control, like Qt's `setReadBufferSize` limit or
    /// a paused stream); its peer meets TCP backpressure.
    pub fn pause(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(id) {
            c.paused = true;
        }
    }

    /// Resumes reading from `id`.
    pub fn resume(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(id) {
            c.paused = false;
            self.conns.schedule_read(id.slot);
        }
    }

    /// Bytes queued for `id` (Qt's `bytesToWrite`).
    pub fn bytes_to_write(&self, id: ConnId) -> usize {
        self.conns.get(id).map_or(0, |c| c.engine.bytes_to_write())
    }

    /// The peer address of `id`.
    pub fn peer(&self, id: ConnId) -> Option<SocketAddr> {
        self.conns.get(id).map(|c| c.peer)
    }

    /// The engine of `id` (state, close codes, RTT ...).
    pub fn engine(&self, id: ConnId) -> Option<&Connection> {
        self.conns.get(id).map(|c| &c.engine)
    }
}
