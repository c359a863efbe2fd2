//! Per-connection state and the table of connections: one socket (non-blocking reads
//! into the loop's shared buffer, vectored writes of an engine's output, the lingering
//! close), its engine, and what the loop knows about it; the table hands out
//! generational [`ConnId`]s and keeps the lists of connections to read and to flush.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Instant;

use mio::net::TcpStream;

use crate::Connection;
use crate::net::handler::ConnId;
use crate::net::tls::Tls;

/// At most this many slices go into one `writev`.
const MAX_IOVECS: usize = 64;

/// The result of one read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read1 {
    /// `n` bytes are in the buffer.
    Data(usize),
    /// Nothing more right now.
    WouldBlock,
    /// The peer ended its stream, or the socket failed.
    Eof,
}

/// A TCP stream, its TLS layer if any, and the I/O state the loop keeps for it.
#[derive(Debug)]
pub(crate) struct Socket {
    pub(crate) stream: TcpStream,
    /// `wss://`: the record layer between the stream and the engine.
    pub(crate) tls: Option<Box<Tls>>,
    /// After the engine is closed and its output flushed, our write side is shut and
    /// we read (and discard) until the peer closes, so that our close frame is not lost
    /// to a reset caused by unread data (a "lingering close").
    pub(crate) lingering: bool,
    /// The peer ended its stream or the socket failed.
    pub(crate) eof: bool,
    /// WRITABLE interest is registered (only while output is pending).
    pub(crate) want_write: bool,
    /// TLS: our `close_notify` is queued.
    notified: bool,
}

impl Socket {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self { stream, tls: None, lingering: false, eof: false, want_write: false, notified: false }
    }

    /// A stream under TLS.
    #[cfg(feature = "tls")]
    pub(crate) fn with_tls(stream: TcpStream, tls: Tls) -> Self {
        Self { tls: Some(Box::new(tls)), ..Self::new(stream) }
    }

    /// One read (of plaintext, under TLS), retrying on `Interrupted`.
    pub(crate) fn read_once(&mut self, buf: &mut [u8]) -> Read1 {
        if let Some(tls) = self.tls.as_mut() {
            let read = tls.read(&mut self.stream, buf);
            if read == Read1::Eof {
                self.eof = true;
            }
            return read;
        }
        loop {
            match self.stream.read(buf) {
                Ok(0) => break,
                Ok(n) => return Read1::Data(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Read1::WouldBlock,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.eof = true;
        Read1::Eof
    }

    /// Writes the engine's output until it is empty or the socket would block; one
    /// `writev` carries every queued run. `Err` only for a broken socket.
    pub(crate) fn flush(&mut self, engine: &mut Connection) -> io::Result<()> {
        if let Some(tls) = self.tls.as_mut() {
            return tls.write(&mut self.stream, engine);
        }
        while engine.bytes_to_write() > 0 {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = engine.output_vectored(&mut slices);
            let written = if n == 1 { self.stream.write(&slices[0]) } else { self.stream.write_vectored(&slices[..n]) };
            match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => engine.consume_output(k),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Bytes the peer sent before this socket existed (behind a proxy's answer):
    /// under TLS they are records for the record layer, else the engine's input.
    pub(crate) fn preload(&mut self, bytes: &[u8], engine: &mut Connection, now: Instant) {
        if bytes.is_empty() {
            return;
        }
        match self.tls.as_mut() {
            Some(tls) => tls.preload(bytes),
            None => engine.handle_bytes(now, bytes),
        }
    }

    /// Why the TLS session failed, if it did.
    #[cfg(feature = "tls")]
    pub(crate) fn tls_error(&self) -> Option<&rustls::Error> {
        self.tls.as_ref().and_then(|t| t.error())
    }

    /// Bytes wait to be written: the engine's output, or TLS records.
    pub(crate) fn has_output(&self, engine: &Connection) -> bool {
        engine.bytes_to_write() > 0 || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Ends the TLS session (`close_notify`, once) and writes what the socket takes;
    /// true once nothing is left to write, so the write side may be shut. Plain TCP
    /// has nothing to end.
    pub(crate) fn end_session(&mut self) -> bool {
        let Some(tls) = self.tls.as_mut() else { return true };
        if !self.notified {
            self.notified = true;
            tls.close_notify(&mut self.stream);
        }
        !tls.wants_write()
    }

    /// Starts the lingering close: no more writes (call once [`Socket::end_session`]
    /// is done); wait for the peer's FIN.
    pub(crate) fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
        self.lingering = true;
    }
}

/// One connection: its socket, its engine and the loop's state for it.
pub(crate) struct Conn {
    pub(crate) socket: Socket,
    pub(crate) engine: Connection,
    pub(crate) peer: SocketAddr,
    pub(crate) paused: bool,
    /// The handler saw its request: it gets exactly one `on_close`.
    pub(crate) requested: bool,
    /// Over the high-water mark: nothing more is queued for it.
    pub(crate) congested: bool,
    /// Reading was skipped (paused, or its own output over the mark): edge-triggered
    /// readiness will not fire again for data already waiting, so read when unblocked.
    pub(crate) read_blocked: bool,
    /// When a finished connection is dropped regardless of its peer.
    pub(crate) drop_at: Option<Instant>,
    /// The deadline last pushed on the timer heap.
    pub(crate) timer: Option<Instant>,
    /// Bytes pinned at the last settle (counted in the memory budget).
    pub(crate) pinned: usize,
    /// When it was accepted (for the handshake latency).
    pub(crate) since: Instant,
    /// Accepted on the admin address: plain HTTP only.
    pub(crate) admin: bool,
}

impl Conn {
    pub(crate) fn new(socket: Socket, engine: Connection, peer: SocketAddr, since: Instant, admin: bool) -> Self {
        Self {
            socket,
            engine,
            peer,
            paused: false,
            requested: false,
            congested: false,
            read_blocked: false,
            drop_at: None,
            timer: None,
            pinned: 0,
            since,
            admin,
        }
    }
}

/// A slot of the table; its generation changes each time it is freed.
#[derive(Default)]
struct Slot {
    generation: u32,
    conn: Option<Conn>,
    /// In the dirty list (once per turn, however often it is touched).
    dirty: bool,
}

/// The loop's connections, addressed by slot (mio token) or by [`ConnId`].
#[derive(Default)]
pub(crate) struct Conns {
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    /// Slots touched this turn, each once: flushed at the end of it.
    dirty: Vec<usize>,
    /// Slots to read next turn (budget ran out, resumed, newly accepted).
    pub(crate) reads: Vec<usize>,
}

impl Conns {
    /// Stores `conn` and returns its id.
    pub(crate) fn insert(&mut self, conn: Conn) -> ConnId {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot::default());
            (self.slots.len() - 1) as u32
        });
        let s = &mut self.slots[slot as usize];
        s.conn = Some(conn);
        self.live += 1;
        ConnId { slot, generation: s.generation }
    }

    /// Removes the connection in `slot`; its id becomes unknown for good.
    pub(crate) fn remove(&mut self, slot: usize) -> Option<Conn> {
        let s = self.slots.get_mut(slot)?;
        let conn = s.conn.take()?;
        // Never reuse an id: a slot whose generation would wrap is retired.
        if s.generation < u32::MAX {
            s.generation += 1;
            self.free.push(slot as u32);
        }
        self.live -= 1;
        Some(conn)
    }

    /// Connections held.
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// Number of slots (for iterating over every connection).
    pub(crate) fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The id of the connection in `slot`.
    pub(crate) fn id(&self, slot: usize) -> ConnId {
        ConnId { slot: slot as u32, generation: self.slots.get(slot).map_or(0, |s| s.generation) }
    }

    /// The connection in `slot`, if any.
    pub(crate) fn at(&mut self, slot: usize) -> Option<&mut Conn> {
        self.slots.get_mut(slot).and_then(|s| s.conn.as_mut())
    }

    /// The connection `id`, if it still exists.
    pub(crate) fn get(&self, id: ConnId) -> Option<&Conn> {
        self.slots.get(id.slot as usize).filter(|s| s.generation == id.generation).and_then(|s| s.conn.as_ref())
    }

    /// The connection `id`, if it still exists.
    pub(crate) fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.slots.get_mut(id.slot as usize).filter(|s| s.generation == id.generation).and_then(|s| s.conn.as_mut())
    }

    /// Marks `slot` for flushing at the end of the turn.
    pub(crate) fn touch(&mut self, slot: u32) {
        self.mark(slot as usize);
    }

    /// Marks `slot` for flushing at the end of the turn; a relay turn touches a
    /// recipient once per message, and the list gets it once.
    pub(crate) fn mark(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(slot);
            }
        }
    }

    /// Whether a slot is marked.
    pub(crate) fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Moves the marked slots into `batch` (which must be empty) and unmarks them:
    /// what touches them again goes in the next batch.
    pub(crate) fn take_dirty(&mut self, batch: &mut Vec<usize>) {
        std::mem::swap(batch, &mut self.dirty);
        for &i in batch.iter() {
            if let Some(s) = self.slots.get_mut(i) {
                s.dirty = false;
            }
        }
    }

    /// Unmarks every slot.
    pub(crate) fn clear_dirty(&mut self) {
        let mut batch = Vec::new();
        self.take_dirty(&mut batch);
    }

    /// Reads `slot` on the next turn.
    pub(crate) fn schedule_read(&mut self, slot: u32) {
        self.reads.push(slot as usize);
    }
}

#[cfg(test)]
mod tests {
    /// What every connection costs inline, busy or idle (cold state is boxed until
    /// used): a guard for the idle memory the README reports. The slot is 16 bytes
    /// larger in debug builds, where mio's sockets carry a selector id.
    #[test]
    fn a_connection_stays_small() {
        let (engine, slot) = (size_of::<crate::Connection>(), size_of::<super::Slot>());
        assert!(engine <= 360, "Connection grew to {engine} bytes");
        assert!(slot <= 496, "a connection's slot grew to {slot} bytes");
    }
}
