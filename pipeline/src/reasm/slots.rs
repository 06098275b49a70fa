//! The slot table's parts: a datagram's slot, the pieces of data it holds, and the
//! intrusive lists that order slots by age and by source.

use super::fragment::{Key, SourceKey};
use super::{V4_ROOM, V6_MAX_UNFRAGMENTABLE};

pub(super) const NIL: usize = usize::MAX;

/// Intrusive doubly linked list links, by slot index.
#[derive(Clone, Copy, Debug)]
pub(super) struct Links {
    pub(super) prev: usize,
    pub(super) next: usize,
}

pub(super) const UNLINKED: Links = Links {
    prev: NIL,
    next: NIL,
};

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct List {
    pub(super) head: Option<usize>,
    pub(super) tail: Option<usize>,
    pub(super) len: usize,
}

/// Which of a slot's two link pairs a list threads through.
#[derive(Clone, Copy)]
pub(super) enum Thread {
    /// Age order: the active list, or the discarded list.
    Age,
    /// A source's active datagrams.
    Source,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    Free,
    Active,
    /// Discarded (RFC 5722): later fragments are dropped until the deadline.
    Discarded,
    /// Returned by the last call; its buffer is reclaimed at the next one.
    Completed,
}

/// One fragment's range of data, in bytes from the start of the datagram's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Piece {
    pub(super) start: usize,
    pub(super) end: usize,
}

#[derive(Debug)]
pub(super) struct Slot {
    pub(super) state: State,
    pub(super) key: Key,
    pub(super) source: SourceKey,
    pub(super) deadline: u64,
    pub(super) age: Links,
    pub(super) by_source: Links,
    /// Header room, then the data: data byte `i` is at `room + i`.
    pub(super) buf: Vec<u8>,
    /// Held fragments, sorted and disjoint.
    pub(super) pieces: Vec<Piece>,
    /// Data bytes held.
    pub(super) held: usize,
    /// The data length, once the last fragment arrived.
    pub(super) total: Option<usize>,
    /// The kept header's length, once the offset-0 fragment arrived (0 before).
    pub(super) header_len: usize,
    /// IPv6: where in the kept header the byte naming the Fragment header is.
    pub(super) nh_at: usize,
    /// IPv6: the upper-layer protocol, from the offset-0 fragment's Fragment header.
    pub(super) upper: u8,
    /// ECN codepoints seen, one bit each.
    pub(super) ecn: u8,
    /// Where the returned packet starts and ends in `buf` (`State::Completed`).
    pub(super) out: (usize, usize),
}

impl Slot {
    pub(super) fn new(max_fragments: usize) -> Slot {
        Slot {
            state: State::Free,
            key: Key {
                src: 0,
                dst: 0,
                ident: 0,
                proto: 0,
                v6: false,
            },
            source: SourceKey { addr: 0, v6: false },
            deadline: 0,
            age: UNLINKED,
            by_source: UNLINKED,
            buf: Vec::new(),
            pieces: Vec::with_capacity(max_fragments),
            held: 0,
            total: None,
            header_len: 0,
            nh_at: 0,
            upper: 0,
            ecn: 0,
            out: (0, 0),
        }
    }

    pub(super) fn room(&self) -> usize {
        if self.key.v6 {
            V6_MAX_UNFRAGMENTABLE
        } else {
            V4_ROOM
        }
    }

    pub(super) fn links(&mut self, t: Thread) -> &mut Links {
        match t {
            Thread::Age => &mut self.age,
            Thread::Source => &mut self.by_source,
        }
    }
}

/// A source's active datagrams, oldest first.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct SourceEntry {
    pub(super) list: List,
}

pub(super) fn push_back(slots: &mut [Slot], list: &mut List, t: Thread, i: usize) {
    let tail = list.tail;
    if let Some(s) = slots.get_mut(i) {
        *s.links(t) = Links {
            prev: tail.unwrap_or(NIL),
            next: NIL,
        };
    }
    match tail.and_then(|t_| slots.get_mut(t_)) {
        Some(ts) => ts.links(t).next = i,
        None => list.head = Some(i),
    }
    list.tail = Some(i);
    list.len = list.len.saturating_add(1);
}

pub(super) fn unlink(slots: &mut [Slot], list: &mut List, t: Thread, i: usize) {
    let Some(l) = slots.get_mut(i).map(|s| *s.links(t)) else {
        return;
    };
    match slots.get_mut(l.prev) {
        Some(p) => p.links(t).next = l.next,
        None if list.head == Some(i) => list.head = (l.next != NIL).then_some(l.next),
        None => return,
    }
    match slots.get_mut(l.next) {
        Some(n) => n.links(t).prev = l.prev,
        None => list.tail = (l.prev != NIL).then_some(l.prev),
    }
    if let Some(s) = slots.get_mut(i) {
        *s.links(t) = UNLINKED;
    }
    list.len = list.len.saturating_sub(1);
}
