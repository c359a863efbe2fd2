//! Buffer reuse, one owner: the message and output buffers shared by every connection
//! of a loop, and the lists that hold a connection's spare message buffers. A
//! connection borrows them for a read (or a flush) and gives back what it did not
//! keep, so idle connections hold none and busy ones fault no fresh pages per message.

use crate::net::conn::Conn;

/// Most buffers kept in each pool, and the largest kept.
const POOL_BUFFERS: usize = 256;
const POOL_BUFFER_MAX: usize = 1 << 20;
/// Most bytes the two pools keep together.
const POOL_BYTES_MAX: usize = 32 << 20;
/// Message buffers lent to a connection for one read.
const LEND_PER_READ: usize = 16;

/// The loop's buffer pools.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    /// Message buffers.
    messages: Vec<Vec<u8>>,
    /// Output buffers.
    outputs: Vec<Vec<u8>>,
    /// Empty lists for a connection's spare message buffers.
    lists: Vec<Vec<Vec<u8>>>,
    /// Bytes held by both.
    bytes: usize,
}

impl Pool {
    /// Keeps a message buffer that came back from a handler.
    pub(crate) fn give_back(&mut self, buf: Option<Vec<u8>>) {
        if let Some(buf) = buf {
            Self::put(&mut self.messages, &mut self.bytes, buf);
        }
    }

    /// Lends buffers to `conn` before a read: message buffers for the messages it may
    /// complete, and an output buffer if it has none queued.
    pub(crate) fn lend(&mut self, conn: &mut Conn) {
        self.lend_spare_list(conn);
        for buf in self.messages.drain(self.messages.len().saturating_sub(LEND_PER_READ)..) {
            self.bytes -= buf.capacity();
            conn.engine.recycle(buf);
        }
        self.lend_output(conn);
    }

    /// Lends a list for spare message buffers to `conn` if it has none: what it gets
    /// (lent, or handed back by its output queue) is kept in pooled memory.
    pub(crate) fn lend_spare_list(&mut self, conn: &mut Conn) {
        if let Some(list) = self.lists.pop() {
            if let Some(list) = conn.engine.lend_spare_list(list) {
                self.lists.push(list);
            }
        }
    }

    /// Lends an output buffer to `conn` if it has nothing queued (so it has none): a
    /// relay recipient writes its turn's frames into a buffer already faulted in.
    pub(crate) fn lend_output(&mut self, conn: &mut Conn) {
        if conn.engine.bytes_to_write() == 0 {
            if let Some(buf) = self.outputs.pop() {
                self.bytes -= buf.capacity();
                conn.engine.lend_output_buffer(buf);
            }
        }
    }

    /// Takes back what `conn` does not use: spare message buffers, and its output
    /// buffer once nothing is queued.
    pub(crate) fn take_back(&mut self, conn: &mut Conn) {
        while let Some(buf) = conn.engine.take_spare() {
            Self::put(&mut self.messages, &mut self.bytes, buf);
        }
        if let Some(list) = conn.engine.take_spare_list() {
            if self.lists.len() < POOL_BUFFERS {
                self.lists.push(list);
            }
        }
        if let Some(buf) = conn.engine.reclaim_output_buffer() {
            Self::put(&mut self.outputs, &mut self.bytes, buf);
        }
    }

    /// Keeps `buf` in `pool` if it is worth keeping and there is room.
    fn put(pool: &mut Vec<Vec<u8>>, bytes: &mut usize, mut buf: Vec<u8>) {
        let cap = buf.capacity();
        if cap > 0 && cap <= POOL_BUFFER_MAX && pool.len() < POOL_BUFFERS && *bytes + cap <= POOL_BYTES_MAX {
            buf.clear();
            *bytes += cap;
            pool.push(buf);
        }
    }
}
