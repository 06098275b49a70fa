//! An SA's runtime state leaving the worker: where an outbound SA's sequence numbers stand
//! (checkpoints every so many packets or milliseconds, the warning before the limit), the
//! reservation an owner moves on, an SA's state exported on request, and the final state of
//! an outbound SA with checkpoints when it is deleted.
//!
//! This is what lets an SA continue elsewhere (another worker, process or node) without a
//! sequence number, and so a GCM nonce, being used twice: the owner learns from checkpoints
//! how far the SA got and reserves ahead (`ReserveSeq`); an SA never sends past its
//! reservation (`seq_not_reserved`). The per-packet cost is one compare (`next_report`, on
//! the SA's first cache line); time-based checkpoints cost one compare per poll.
//!
//! It never reads a clock (time is the `now` of the worker's poll) and never reports the
//! same idle SA over and over: a timed checkpoint goes out when the SA sent something since
//! the last one, or when it waits at its reservation.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::reports::crossing_event;
use super::Worker;
use crate::esp::sa::{Checkpoint, OutboundSa};
use crate::ids::SaId;
use crate::msg::{Direction, Event, Reply};
use crate::port::Port;
use crate::stats::Crossing;
use proto::sa::{SaRef, SaState};

/// Outbound SAs that also report by time: a deadline per SA, the earliest one at hand.
#[derive(Default)]
pub(super) struct TimedCheckpoints {
    by_sa: HashMap<SaId, Timed>,
    /// (deadline, SA id, stamp); an entry whose stamp is no longer the SA's is stale (the SA
    /// was replaced or deleted) and is dropped when it comes up.
    due: BinaryHeap<Reverse<(u64, u32, u64)>>,
    stamps: u64,
    /// The earliest deadline (`u64::MAX`: none): what the poll loop compares `now` with.
    pub(super) next: u64,
}

struct Timed {
    stamp: u64,
    period_ns: u64,
    /// The sequence number the last timed checkpoint reported.
    reported: u64,
}

impl TimedCheckpoints {
    /// Starts (or restarts) timed checkpoints of SA `id`, the first `millis` after `now`.
    pub(super) fn start(&mut self, id: SaId, millis: u64, seq: u64, now: u64) {
        self.stamps += 1;
        let period_ns = millis.saturating_mul(1_000_000).max(1);
        self.by_sa.insert(
            id,
            Timed {
                stamp: self.stamps,
                period_ns,
                reported: seq,
            },
        );
        self.due
            .push(Reverse((now.saturating_add(period_ns), id.0, self.stamps)));
        self.refresh();
    }

    pub(super) fn stop(&mut self, id: SaId) {
        self.by_sa.remove(&id);
    }

    fn refresh(&mut self) {
        self.next = self.due.peek().map_or(u64::MAX, |Reverse((t, ..))| *t);
    }
}

impl<P: Port> Worker<P> {
    /// Sets the checkpoints of outbound SAs installed without their own from now on.
    pub fn set_checkpoint_default(&mut self, c: Checkpoint) {
        self.checkpoint_default = c;
    }

    /// Settles an outbound SA's checkpoints as it is installed: its own, or the worker's.
    pub(super) fn settle_checkpoints(&mut self, sa: &mut OutboundSa) {
        let c = sa.checkpoint.unwrap_or(self.checkpoint_default);
        sa.set_checkpoint(c);
        if c.millis > 0 {
            self.timed.start(sa.id, c.millis, sa.seq, self.now);
        } else {
            self.timed.stop(sa.id);
        }
    }

    /// Reports what an outbound packet reached: a lifetime (`crossing`) and whatever its
    /// sequence number made due (a checkpoint, the warning before the limit). Rare: off the
    /// per-packet path.
    #[cold]
    pub(super) fn report_outbound(&mut self, id: SaId, crossing: Option<Crossing>, now: u64) {
        let worker = self.id;
        let Some(sa) = self.sad.outbound_mut(id) else {
            return;
        };
        let lifetime = crossing.and_then(|c| {
            crossing_event(
                worker,
                (sa.id, sa.spi),
                &sa.counters,
                Direction::Outbound,
                c,
                now,
            )
        });
        let due = if sa.seq >= sa.next_report {
            sa.take_due_reports()
        } else {
            Default::default()
        };
        let near_wrap = due.near_wrap.then(|| Event::SeqNearWrap {
            worker,
            id: sa.id,
            spi: sa.spi,
            seq: sa.seq,
            limit: sa.seq_limit(),
        });
        let checkpoint = due.checkpoint.then(|| checkpoint_event(worker, sa));
        for e in [lifetime, near_wrap, checkpoint].into_iter().flatten() {
            self.reply(Reply::Event(e));
        }
    }

    /// The timed checkpoints whose deadline `now` passed.
    pub(super) fn timed_checkpoints(&mut self, now: u64) {
        while let Some(&Reverse((at, id, stamp))) = self.timed.due.peek() {
            if at > now {
                break;
            }
            self.timed.due.pop();
            let id = SaId(id);
            let Some(t) = self.timed.by_sa.get_mut(&id).filter(|t| t.stamp == stamp) else {
                continue;
            };
            let Some(sa) = self.sad.outbound(id) else {
                self.timed.by_sa.remove(&id);
                continue;
            };
            let waiting = sa.seq >= sa.seq_max();
            let event = (sa.seq != t.reported || waiting).then(|| checkpoint_event(self.id, sa));
            t.reported = sa.seq;
            // A worker that fell behind does not catch up with a burst of checkpoints.
            let next = at.saturating_add(t.period_ns).max(now.saturating_add(1));
            self.timed.due.push(Reverse((next, id.0, stamp)));
            if let Some(e) = event {
                self.reply(Reply::Event(e));
            }
        }
        self.timed.refresh();
    }

    /// One SA's state, for the `ExportSa` command of this turn's generation.
    pub(super) fn export_sa(&mut self, which: SaRef) -> Result<(), &'static str> {
        let (id, spi, state) = match which {
            SaRef::Outbound(id) => {
                let sa = self.sad.outbound(id).ok_or("no outbound SA with that id")?;
                let state = SaState::Outbound {
                    seq: sa.seq,
                    seq_reserved: sa.seq_reserved(),
                };
                (sa.id, sa.spi, state)
            }
            SaRef::Inbound(spi) => {
                let sa = self.sad.inbound(spi).ok_or("no inbound SA with that SPI")?;
                let state = SaState::Inbound {
                    replay: sa.replay.export(),
                };
                (sa.id, sa.spi, state)
            }
        };
        let e = Event::SaState {
            worker: self.id,
            generation: self.generation,
            id,
            spi,
            state,
        };
        self.reply(Reply::Event(e));
        Ok(())
    }

    /// A removed outbound SA's final state (`Event::SaState` under the removing command's
    /// generation): the last sequence number it used, which a successor continues after.
    pub(super) fn final_state(&mut self, sa: &OutboundSa) {
        let e = Event::SaState {
            worker: self.id,
            generation: self.generation,
            id: sa.id,
            spi: sa.spi,
            state: SaState::Outbound {
                seq: sa.seq,
                seq_reserved: sa.seq_reserved(),
            },
        };
        self.reply(Reply::Event(e));
    }

    /// Lowers an outbound SA's reservation to at most `ahead` past the last number it used and
    /// reports its state under this command's generation: the reported `seq_reserved` is a
    /// ceiling nothing is sealed above afterwards (this command runs between packets).
    pub(super) fn cap_seq(&mut self, id: SaId, ahead: u64) -> Result<(), &'static str> {
        let sa = self
            .sad
            .outbound_mut(id)
            .ok_or("no outbound SA with that id")?;
        sa.cap(ahead);
        let e = Event::SaState {
            worker: self.id,
            generation: self.generation,
            id: sa.id,
            spi: sa.spi,
            state: SaState::Outbound {
                seq: sa.seq,
                seq_reserved: sa.seq_reserved(),
            },
        };
        self.reply(Reply::Event(e));
        Ok(())
    }

    /// Raises an outbound SA's reservation.
    pub(super) fn reserve_seq(&mut self, id: SaId, up_to: u64) -> Result<(), &'static str> {
        let sa = self
            .sad
            .outbound_mut(id)
            .ok_or("no outbound SA with that id")?;
        sa.reserve(up_to);
        Ok(())
    }
}

fn checkpoint_event(worker: u16, sa: &OutboundSa) -> Event {
    Event::SeqCheckpoint {
        worker,
        id: sa.id,
        spi: sa.spi,
        seq: sa.seq,
        seq_reserved: sa.seq_reserved(),
    }
}
