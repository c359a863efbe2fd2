//! The engine's outgoing byte queue: bytes the engine encoded itself, interleaved
//! with frames encoded once and shared by many connections (relay fan-out). The
//! caller drains it with one `write` or `writev` per turn, partially if it must.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;

/// Shared frames up to this size are copied rather than referenced (measured:
/// README, Performance).
pub(crate) const COPY_AT_MOST: usize = 1024;

/// Runs an empty queue keeps room for (a burst of large frames grows the list; it
/// shrinks back once written).
const SEGS_KEEP: usize = 16;

/// One run of queued bytes.
#[derive(Debug)]
enum Seg {
    /// The next `n` unsent bytes of the inline buffer.
    Inline(usize),
    /// A shared frame and how much of it has been sent.
    Shared(Arc<Vec<u8>>, usize),
    /// A payload handed over by the application, and how much of it has been sent.
    Owned(Vec<u8>, usize),
}

/// An ordered queue of outgoing bytes.
#[derive(Debug, Default)]
pub(crate) struct OutQueue {
    buf: Vec<u8>,
    pos: usize,
    segs: VecDeque<Seg>,
    total: usize,
    /// Bytes held by queued shared frames and owned payloads (until fully written).
    shared: usize,
}

impl OutQueue {
    /// Appends bytes written by `f` into the inline buffer.
    pub(crate) fn write_with(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        let before = self.buf.len();
        f(&mut self.buf);
        let n = self.buf.len() - before;
        if n == 0 {
            return;
        }
        self.total += n;
        match self.segs.back_mut() {
            Some(Seg::Inline(m)) => *m += n,
            _ => self.segs.push_back(Seg::Inline(n)),
        }
    }

    /// Appends a shared frame: a small one is copied into the inline buffer (a turn's
    /// small frames leave as one contiguous run: one iovec, no reference count per
    /// frame), a larger one is queued without a copy.
    pub(crate) fn push_frame(&mut self, bytes: &Arc<Vec<u8>>) {
        if bytes.len() <= COPY_AT_MOST {
            self.write_with(|b| b.extend_from_slice(bytes));
        } else {
            self.push_shared(bytes.clone());
        }
    }

    /// Appends a shared frame without copying it.
    pub(crate) fn push_shared(&mut self, bytes: Arc<Vec<u8>>) {
        if bytes.is_empty() {
            return;
        }
        self.total += bytes.len();
        self.shared += bytes.len();
        self.segs.push_back(Seg::Shared(bytes, 0));
    }

    /// Appends a payload without copying it (zero-copy echo of a received message);
    /// an empty one is handed straight back.
    pub(crate) fn push_owned(&mut self, bytes: Vec<u8>) -> Option<Vec<u8>> {
        if bytes.is_empty() {
            return Some(bytes);
        }
        self.total += bytes.len();
        self.shared += bytes.capacity();
        self.segs.push_back(Seg::Owned(bytes, 0));
        None
    }

    /// Bytes waiting to be written.
    pub(crate) fn len(&self) -> usize {
        self.total
    }

    /// Memory held (capacity of the inline buffer plus queued shared frames).
    pub(crate) fn footprint(&self) -> usize {
        self.buf.capacity() + self.shared
    }

    /// The first contiguous run of queued bytes (empty when nothing is queued).
    pub(crate) fn front(&self) -> &[u8] {
        match self.segs.front() {
            Some(Seg::Inline(n)) => &self.buf[self.pos..self.pos + n],
            Some(Seg::Shared(a, off)) => &a[*off..],
            Some(Seg::Owned(v, off)) => &v[*off..],
            None => &[],
        }
    }

    /// Fills `dst` with the queued runs, in order; returns how many were filled.
    pub(crate) fn slices<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut pos = self.pos;
        let mut filled = 0;
        for (seg, slot) in self.segs.iter().zip(dst.iter_mut()) {
            *slot = IoSlice::new(match seg {
                Seg::Inline(n) => {
                    let s = &self.buf[pos..pos + n];
                    pos += n;
                    s
                }
                Seg::Shared(a, off) => &a[*off..],
                Seg::Owned(v, off) => &v[*off..],
            });
            filled += 1;
        }
        filled
    }

    /// Marks `n` bytes as written (clamped to what is queued); each owned payload
    /// fully written goes to `written`, for reuse as a message buffer.
    pub(crate) fn consume(&mut self, n: usize, written: &mut impl FnMut(Vec<u8>)) {
        let mut n = n.min(self.total);
        self.total -= n;
        while n > 0 {
            let Some(seg) = self.segs.front_mut() else { break };
            match seg {
                Seg::Inline(m) => {
                    let k = n.min(*m);
                    *m -= k;
                    self.pos += k;
                    n -= k;
                    if *m == 0 {
                        self.segs.pop_front();
                    }
                }
                Seg::Shared(a, off) => {
                    let k = n.min(a.len() - *off);
                    *off += k;
                    n -= k;
                    if *off == a.len() {
                        self.shared -= a.len();
                        self.segs.pop_front();
                    }
                }
                Seg::Owned(v, off) => {
                    let k = n.min(v.len() - *off);
                    *off += k;
                    n -= k;
                    if *off == v.len() {
                        self.shared -= v.capacity();
                        if let Some(Seg::Owned(v, _)) = self.segs.pop_front() {
                            written(v);
                        }
                    }
                }
            }
        }
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos >= 64 * 1024 && self.pos * 2 >= self.buf.len() {
            // Keep the inline buffer from growing forever under steady partial writes.
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// Drops everything queued (abort).
    pub(crate) fn clear(&mut self) {
        self.buf = Vec::new();
        self.pos = 0;
        self.segs.clear();
        self.total = 0;
        self.shared = 0;
    }

    /// Installs `buf` as the inline buffer if there is none.
    pub(crate) fn lend(&mut self, mut buf: Vec<u8>) {
        if self.buf.capacity() == 0 {
            buf.clear();
            self.buf = buf;
            self.pos = 0;
        }
    }

    /// Gives the inline buffer back when nothing is queued.
    pub(crate) fn reclaim(&mut self) -> Option<Vec<u8>> {
        if self.total == 0 && self.buf.capacity() > 0 {
            self.pos = 0;
            Some(std::mem::take(&mut self.buf))
        } else {
            None
        }
    }

    /// Releases memory a burst left when nothing is queued: the inline buffer beyond
    /// `keep` bytes, the run list beyond [`SEGS_KEEP`] entries.
    pub(crate) fn shrink_if_empty(&mut self, keep: usize) {
        if self.total != 0 {
            return;
        }
        if self.buf.capacity() > keep {
            self.buf = Vec::new();
        }
        if self.segs.capacity() > SEGS_KEEP {
            self.segs = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_leaves_no_memory_behind() {
        let mut q = OutQueue::default();
        let big = Arc::new(vec![1u8; COPY_AT_MOST + 1]);
        for _ in 0..1000 {
            q.push_frame(&big);
        }
        assert!(q.segs.capacity() >= 1000);
        q.consume(q.len(), &mut drop);
        q.shrink_if_empty(1 << 20);
        assert!(q.segs.capacity() <= SEGS_KEEP);
    }

    #[test]
    fn small_frames_are_copied_into_one_run() {
        let mut q = OutQueue::default();
        let small = Arc::new(vec![2u8; COPY_AT_MOST]);
        q.push_frame(&small);
        q.push_frame(&small);
        assert_eq!(Arc::strong_count(&small), 1);
        let mut slices = [IoSlice::new(&[]); 4];
        assert_eq!(q.slices(&mut slices), 1);
        assert_eq!(q.len(), 2 * COPY_AT_MOST);
    }

    #[test]
    fn interleaves_inline_and_shared_in_order() {
        let mut q = OutQueue::default();
        q.write_with(|b| b.extend_from_slice(b"ab"));
        q.push_shared(Arc::new(b"cd".to_vec()));
        q.write_with(|b| b.extend_from_slice(b"e"));
        q.write_with(|b| b.extend_from_slice(b"f"));
        assert_eq!(q.len(), 6);
        let mut slots = [IoSlice::new(&[]); 8];
        let n = q.slices(&mut slots);
        let joined: Vec<u8> = slots[..n].iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(joined, b"abcdef");
        let mut out = Vec::new();
        while q.len() > 0 {
            let f = q.front();
            out.push(f[0]);
            q.consume(1, &mut drop);
        }
        assert_eq!(out, b"abcdef");
    }
}
