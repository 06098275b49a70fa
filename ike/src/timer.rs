//! Timers: a small table of deadlines per IKE SA ([`TimerTable`], indexed by [`Timer`]) and
//! the endpoint's ordered set of each IKE SA's earliest one ([`Deadlines`]), so that finding
//! what is due never walks every IKE SA.
//!
//! Owns: deadline bookkeeping.
//! Must never: hold an IKE SA under a deadline other than its table's earliest (the endpoint
//! re-files an IKE SA after every operation on it).

use std::collections::BTreeSet;

use crate::ids::IkeSaId;
use crate::time::Instant;

/// What an IKE SA may be waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    /// Our outstanding request is due for retransmission (or, after the last try, the peer is
    /// dead).
    Retransmit,
    /// A responder's IKE SA that was never authenticated expires.
    HalfOpen,
    /// The IKE SA is due for a rekey.
    IkeRekey,
    /// The earliest CHILD_SA rekey (the children hold their own times).
    ChildRekey,
    /// The earliest CHILD_SA hard lifetime.
    ChildExpire,
    /// Nothing heard for the liveness interval: check the peer.
    Liveness,
    /// The oldest unfinished reassembly of a fragmented message (RFC 7383) expires.
    Reassembly,
}

impl Timer {
    pub(crate) const ALL: [Timer; 7] = [
        Timer::Retransmit,
        Timer::HalfOpen,
        Timer::IkeRekey,
        Timer::ChildRekey,
        Timer::ChildExpire,
        Timer::Liveness,
        Timer::Reassembly,
    ];
}

/// One deadline per [`Timer`] (`None`: not armed).
#[derive(Clone, Debug, Default)]
pub(crate) struct TimerTable([Option<Instant>; Timer::ALL.len()]);

impl TimerTable {
    pub(crate) fn set(&mut self, t: Timer, at: Option<Instant>) {
        if let Some(slot) = self.0.get_mut(t as usize) {
            *slot = at;
        }
    }

    pub(crate) fn get(&self, t: Timer) -> Option<Instant> {
        self.0.get(t as usize).copied().flatten()
    }

    /// The earliest armed deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }

    /// The timers due at `now`, disarmed (their handler re-arms what repeats).
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<Timer> {
        let mut due = Vec::new();
        for t in Timer::ALL {
            if self.get(t).is_some_and(|at| at <= now) {
                self.set(t, None);
                due.push(t);
            }
        }
        due
    }
}

/// Every IKE SA's earliest deadline, in order.
#[derive(Debug, Default)]
pub(crate) struct Deadlines(BTreeSet<(Instant, IkeSaId)>);

impl Deadlines {
    /// Re-files IKE SA `id` from `old` (what it was filed under) to `new`.
    pub(crate) fn refile(&mut self, id: IkeSaId, old: Option<Instant>, new: Option<Instant>) {
        if old == new {
            return;
        }
        if let Some(o) = old {
            self.0.remove(&(o, id));
        }
        if let Some(n) = new {
            self.0.insert((n, id));
        }
    }

    pub(crate) fn first(&self) -> Option<Instant> {
        self.0.first().map(|(t, _)| *t)
    }

    /// Takes out every IKE SA due at `now`, earliest first.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<IkeSaId> {
        let mut due = Vec::new();
        while let Some((t, id)) = self.0.first().copied() {
            if t > now {
                break;
            }
            self.0.remove(&(t, id));
            due.push(id);
        }
        due
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::IkeSpi;

    fn at(n: u64) -> Instant {
        Instant::from_nanos(n)
    }

    #[test]
    fn table_and_deadlines() {
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        t.set(Timer::Liveness, Some(at(30)));
        t.set(Timer::Retransmit, Some(at(10)));
        assert_eq!(t.next(), Some(at(10)));
        assert_eq!(t.take_due(at(10)), vec![Timer::Retransmit]);
        assert_eq!(t.next(), Some(at(30)));

        let (a, b) = (IkeSaId(IkeSpi(1)), IkeSaId(IkeSpi(2)));
        let mut d = Deadlines::default();
        d.refile(a, None, Some(at(30)));
        d.refile(b, None, Some(at(20)));
        d.refile(a, Some(at(30)), Some(at(5)));
        assert_eq!(d.len(), 2, "re-filing moves, never duplicates");
        assert_eq!(d.first(), Some(at(5)));
        assert_eq!(d.take_due(at(20)), vec![a, b]);
        assert_eq!(d.first(), None);
    }
}
