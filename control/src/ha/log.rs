//! The active's sync log: the records it has to get to its standby, in order, until acked.
//!
//! This module owns the entries between "appended" and "acknowledged": their indices, how
//! many may be on the wire unacknowledged (the window: the channel's back-pressure stops the
//! log, not the other way round), and the bound on the backlog. A standby that falls behind by
//! more than [`SyncLog::limit`] entries is not waited for and not silently skipped either:
//! [`SyncLog::append`] says so, the pair counts it and marks the standby out of sync, and the
//! standby is brought back by a snapshot, whose entries do not count against the bound (it is
//! as large as the state, which the bound must not limit). It never drops an entry that is
//! not acknowledged except by that reset, and never reads a clock.

use std::collections::VecDeque;

use super::record::Record;

/// The standby is too far behind: the backlog was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfSync {
    /// Entries that were waiting.
    pub backlog: usize,
}

struct Entry {
    index: u64,
    record: Record,
    /// Counts against the bound (false for snapshot entries).
    counted: bool,
}

/// The log of one active.
pub struct SyncLog {
    entries: VecDeque<Entry>,
    /// The index the next appended entry gets.
    next: u64,
    /// Everything up to here is acknowledged.
    acked: u64,
    /// Everything up to here was handed to the channel.
    sent: u64,
    counted: usize,
    limit: usize,
    window: u64,
}

impl SyncLog {
    /// A log whose first entry will be `first`; at most `window` entries unacknowledged on
    /// the wire and `limit` counted entries waiting.
    pub fn new(first: u64, window: usize, limit: usize) -> SyncLog {
        let prev = first.saturating_sub(1);
        SyncLog {
            entries: VecDeque::new(),
            next: first,
            acked: prev,
            sent: prev,
            counted: 0,
            limit: limit.max(1),
            window: u64::try_from(window.max(1)).unwrap_or(u64::MAX),
        }
    }

    /// Appends a record; its index. Beyond the bound the backlog is dropped and the caller
    /// must resync the standby with a snapshot.
    pub fn append(&mut self, record: Record) -> Result<u64, OutOfSync> {
        if self.counted >= self.limit {
            let backlog = self.entries.len();
            self.reset();
            return Err(OutOfSync { backlog });
        }
        Ok(self.push(record, true))
    }

    /// Appends a snapshot's records (not counted against the bound); the index of the last.
    pub fn append_snapshot(&mut self, records: impl IntoIterator<Item = Record>) -> u64 {
        let mut last = self.next.saturating_sub(1);
        for r in records {
            last = self.push(r, false);
        }
        last
    }

    fn push(&mut self, record: Record, counted: bool) -> u64 {
        let index = self.next;
        self.next = self.next.saturating_add(1);
        self.entries.push_back(Entry {
            index,
            record,
            counted,
        });
        if counted {
            self.counted = self.counted.saturating_add(1);
        }
        index
    }

    /// Drops everything waiting (indices go on: the standby sees the jump and the snapshot
    /// that follows starts with `SnapshotBegin`).
    pub fn reset(&mut self) {
        self.entries.clear();
        self.counted = 0;
        self.acked = self.next.saturating_sub(1);
        self.sent = self.acked;
    }

    /// The next entry to hand to the channel, if the window has room.
    pub fn next_to_send(&mut self) -> Option<(u64, &Record)> {
        if self.sent.saturating_sub(self.acked) >= self.window {
            return None;
        }
        let want = self.sent.saturating_add(1);
        let e = self.entries.iter().find(|e| e.index == want)?;
        self.sent = want;
        Some((e.index, &e.record))
    }

    /// The standby applied everything up to `index`; whether that moved the mark.
    pub fn ack(&mut self, index: u64) -> bool {
        let index = index.min(self.sent);
        if index <= self.acked {
            return false;
        }
        self.acked = index;
        while self.entries.front().is_some_and(|e| e.index <= index) {
            if let Some(e) = self.entries.pop_front() {
                if e.counted {
                    self.counted = self.counted.saturating_sub(1);
                }
            }
        }
        true
    }

    /// A new connection: everything not acknowledged goes again (the standby ignores what it
    /// already applied).
    pub fn rewind(&mut self) {
        self.sent = self.acked;
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The index of the last appended entry.
    pub fn last(&self) -> u64 {
        self.next.saturating_sub(1)
    }

    /// Counted entries waiting.
    pub fn backlog(&self) -> usize {
        self.counted
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::SaId;

    fn cp(seq: u64) -> Record {
        Record::SeqCheckpoint { id: SaId(1), seq }
    }

    #[test]
    fn entries_go_in_order_within_the_window_and_again_after_a_rewind() {
        let mut l = SyncLog::new(1, 2, 10);
        for i in 0..4 {
            assert_eq!(l.append(cp(i)), Ok(i + 1));
        }
        assert_eq!(l.next_to_send().map(|e| e.0), Some(1));
        assert_eq!(l.next_to_send().map(|e| e.0), Some(2));
        assert!(l.next_to_send().is_none(), "window of 2");
        assert!(l.ack(1));
        assert!(!l.ack(1));
        assert_eq!(l.next_to_send().map(|e| e.0), Some(3));
        l.rewind();
        assert_eq!(l.next_to_send().map(|e| e.0), Some(2));
        // An ack beyond what was sent is cut to it.
        l.ack(99);
        assert_eq!(l.acked(), 2);
    }

    #[test]
    fn beyond_the_bound_the_backlog_is_dropped_and_said() {
        let mut l = SyncLog::new(1, 4, 3);
        for i in 0..3 {
            l.append(cp(i)).unwrap();
        }
        assert_eq!(l.append(cp(9)), Err(OutOfSync { backlog: 3 }));
        assert_eq!(l.backlog(), 0);
        // Snapshot entries do not count; indices go on.
        let end = l.append_snapshot((0..10).map(cp));
        assert_eq!(end, 13);
        assert_eq!(l.backlog(), 0);
        assert_eq!(l.next_to_send().map(|e| e.0), Some(4));
    }
}
