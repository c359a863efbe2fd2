//! A relayed message as it travels through the broker, and the sequence bookkeeping
//! on both ends: the publisher numbers each (origin, room) stream, a receiver drops
//! its own messages and duplicates, and counts the messages a gap says it missed.
//!
//! Layout (big-endian): version (1 byte), kind (1: text, 2: binary), origin (8),
//! epoch (8), sequence (8), timestamp in microseconds since the Unix epoch (8), then
//! the payload. An epoch starts a stream: a process that leaves a room and joins it
//! again numbers from 1 in a new epoch, and receivers take that as a new stream.

use std::collections::HashMap;
use std::sync::Arc;

use crate::MessageKind;

const VERSION: u8 = 1;
/// Bytes before the payload.
pub(crate) const HEADER_LEN: usize = 34;

/// A decoded envelope, borrowing its payload.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Envelope<'a> {
    pub(crate) kind: MessageKind,
    pub(crate) origin: u64,
    pub(crate) epoch: u64,
    pub(crate) seq: u64,
    pub(crate) micros: u64,
    pub(crate) payload: &'a [u8],
}

/// Why an envelope from the broker was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Malformed {
    /// Shorter than the header, another version, or an unknown kind.
    Header,
    /// A text message that is not UTF-8.
    Utf8,
}

impl Envelope<'_> {
    /// Appends the encoded envelope to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(HEADER_LEN + self.payload.len());
        out.push(VERSION);
        out.push(match self.kind {
            MessageKind::Text => 1,
            MessageKind::Binary => 2,
        });
        for n in [self.origin, self.epoch, self.seq, self.micros] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(self.payload);
    }

    /// Decodes `bytes`; a text payload must be UTF-8.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Envelope<'_>, Malformed> {
        let (header, payload) = bytes.split_at_checked(HEADER_LEN).ok_or(Malformed::Header)?;
        if header[0] != VERSION {
            return Err(Malformed::Header);
        }
        let kind = match header[1] {
            1 => MessageKind::Text,
            2 => MessageKind::Binary,
            _ => return Err(Malformed::Header),
        };
        if kind == MessageKind::Text && std::str::from_utf8(payload).is_err() {
            return Err(Malformed::Utf8);
        }
        let n = |i: usize| u64::from_be_bytes(header[2 + 8 * i..10 + 8 * i].try_into().unwrap_or_default());
        Ok(Envelope { kind, origin: n(0), epoch: n(1), seq: n(2), micros: n(3), payload })
    }
}

/// What a receiver makes of an envelope's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Deliver it; `missed` messages of its stream never arrived before it.
    Deliver { missed: u64 },
    /// This process published it: the broker sent it back.
    Own,
    /// Already delivered (or older than what was).
    Duplicate,
}

/// Streams a receiver remembers per room (beyond, the oldest-seen is forgotten: its
/// next message starts it again, with no gap counted).
const ORIGINS_PER_ROOM: usize = 1024;
/// The most messages one envelope may say were missed (a forged sequence number must
/// not wrap the counter).
const MAX_GAP: u64 = 1 << 32;

/// The receiving end's view of every stream it hears: for each subscribed room, for
/// each origin, the epoch and the last sequence number delivered. A room's entries go
/// when it is unsubscribed (one removal); a room keeps at most
/// [`ORIGINS_PER_ROOM`] origins (processes that restarted leave theirs behind).
#[derive(Debug)]
pub(crate) struct Streams {
    me: u64,
    rooms: HashMap<Arc<str>, HashMap<u64, (u64, u64)>>,
}

impl Streams {
    /// Streams heard by the process whose origin id is `me`.
    pub(crate) fn new(me: u64) -> Self {
        Self { me, rooms: HashMap::new() }
    }

    /// Judges an envelope of `room` and remembers it if it is delivered. The first
    /// message of a stream (or of a new epoch) counts no gap: the receiver may have
    /// subscribed in the middle of it.
    pub(crate) fn judge(&mut self, room: &Arc<str>, env: &Envelope<'_>) -> Verdict {
        if env.origin == self.me {
            return Verdict::Own;
        }
        let origins = match self.rooms.get_mut(room) {
            Some(origins) => origins,
            None => self.rooms.entry(room.clone()).or_default(),
        };
        let missed = match origins.get(&env.origin) {
            Some(&(epoch, last)) if epoch == env.epoch && env.seq <= last => return Verdict::Duplicate,
            Some(&(epoch, last)) if epoch == env.epoch => (env.seq - last - 1).min(MAX_GAP),
            Some(&(epoch, _)) if env.epoch < epoch => return Verdict::Duplicate,
            Some(_) => 0,
            None => {
                if origins.len() >= ORIGINS_PER_ROOM {
                    let evicted = origins.keys().next().copied();
                    evicted.map(|o| origins.remove(&o));
                }
                0
            }
        };
        origins.insert(env.origin, (env.epoch, env.seq));
        Verdict::Deliver { missed }
    }

    /// Forgets the streams of `room` (unsubscribed: what it misses now is not a gap).
    pub(crate) fn forget(&mut self, room: &str) {
        self.rooms.remove(room);
    }

    /// Forgets the streams of every room but those `keep` says to keep.
    pub(crate) fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.rooms.retain(|room, _| keep(room));
    }
}

/// The publishing end: each room's epoch and last sequence number, while the process
/// has members in it.
#[derive(Debug)]
pub(crate) struct Numbering {
    next_epoch: u64,
    rooms: HashMap<Arc<str>, (u64, u64)>,
}

impl Numbering {
    /// No stream yet; epochs increase from 1 (a restarted process has a new origin).
    pub(crate) fn new() -> Self {
        Self { next_epoch: 1, rooms: HashMap::new() }
    }

    /// The (epoch, sequence) of the next message of `room`.
    pub(crate) fn next(&mut self, room: &Arc<str>) -> (u64, u64) {
        let next_epoch = &mut self.next_epoch;
        let entry = self.rooms.entry(room.clone()).or_insert_with(|| {
            *next_epoch += 1;
            (*next_epoch - 1, 0)
        });
        entry.1 += 1;
        *entry
    }

    /// The process has no members in `room` any more: its stream ends.
    pub(crate) fn end(&mut self, room: &str) {
        self.rooms.remove(room);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(origin: u64, epoch: u64, seq: u64) -> Envelope<'static> {
        Envelope { kind: MessageKind::Binary, origin, epoch, seq, micros: 7, payload: b"\xff\x00" }
    }

    #[test]
    fn round_trip_and_refusals() {
        let mut out = Vec::new();
        env(1, 2, 3).encode(&mut out);
        assert_eq!(out.len(), HEADER_LEN + 2);
        assert_eq!(Envelope::decode(&out), Ok(env(1, 2, 3)));
        assert_eq!(Envelope::decode(&out[..HEADER_LEN - 1]), Err(Malformed::Header));
        let mut text = out.clone();
        text[1] = 1;
        assert_eq!(Envelope::decode(&text), Err(Malformed::Utf8));
        text[1] = 3;
        assert_eq!(Envelope::decode(&text), Err(Malformed::Header));
        text[0] = 2;
        assert_eq!(Envelope::decode(&text), Err(Malformed::Header));
    }

    #[test]
    fn gaps_duplicates_epochs_and_own() {
        let room: Arc<str> = Arc::from("/r");
        let mut s = Streams::new(9);
        assert_eq!(s.judge(&room, &env(9, 1, 1)), Verdict::Own);
        assert_eq!(s.judge(&room, &env(1, 5, 10)), Verdict::Deliver { missed: 0 });
        assert_eq!(s.judge(&room, &env(1, 5, 11)), Verdict::Deliver { missed: 0 });
        assert_eq!(s.judge(&room, &env(1, 5, 11)), Verdict::Duplicate);
        assert_eq!(s.judge(&room, &env(1, 5, 15)), Verdict::Deliver { missed: 3 });
        assert_eq!(s.judge(&room, &env(1, 4, 99)), Verdict::Duplicate);
        assert_eq!(s.judge(&room, &env(1, 6, 1)), Verdict::Deliver { missed: 0 });
        assert_eq!(s.judge(&room, &env(1, 6, u64::MAX)), Verdict::Deliver { missed: MAX_GAP });
        s.forget("/r");
        assert_eq!(s.judge(&room, &env(1, 6, 50)), Verdict::Deliver { missed: 0 });
    }

    #[test]
    fn a_room_remembers_a_bounded_number_of_origins() {
        let room: Arc<str> = Arc::from("/r");
        let mut s = Streams::new(0);
        for origin in 1..=ORIGINS_PER_ROOM as u64 + 10 {
            assert_eq!(s.judge(&room, &env(origin, 1, 1)), Verdict::Deliver { missed: 0 });
        }
        assert_eq!(s.rooms["/r"].len(), ORIGINS_PER_ROOM);
    }

    #[test]
    fn numbering_restarts_in_a_new_epoch() {
        let room: Arc<str> = Arc::from("/r");
        let mut n = Numbering::new();
        assert_eq!(n.next(&room), (1, 1));
        assert_eq!(n.next(&room), (1, 2));
        n.end("/r");
        assert_eq!(n.next(&room), (2, 1));
    }
}
