//! A connection we initiate comes back by itself: when its IKE SA goes down because of the
//! peer (an INFORMATIONAL delete from the gateway, retransmissions that ran out: dead-peer
//! detection or an unanswered IKE_SA_INIT, a refused exchange), it is initiated again after a
//! bounded exponential back-off, and every reason is counted.
//!
//! Sans-IO: [`Reconnect`] is told what the endpoint reported ([`Reconnect::initiated`],
//! [`Reconnect::up`], [`Reconnect::rekeyed`], [`Reconnect::down`]) with the time, and says
//! which connections are due ([`Reconnect::take_due`], [`Reconnect::next_due`]); the core
//! initiates them. Back-off: 1 s after the first loss, then doubling per failed attempt, at
//! most 60 s; an IKE SA that comes up resets it. Our own deletes (a reload, shutdown, the
//! operator) never reconnect.
//!
//! Owns: the schedule and the counters. Must never: initiate anything itself, or reconnect a
//! connection the operator closed.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use ike::{DownReason, IkeSaId, Instant};

/// The first retry's delay.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
/// The longest delay between two attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// Why a connection is reconnected (the counters' labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Why {
    /// The peer deleted the IKE SA (INFORMATIONAL delete).
    PeerDeleted,
    /// An established IKE SA's retransmissions ran out: dead-peer detection (or any request)
    /// went unanswered.
    DeadPeer,
    /// The IKE SA never came up: IKE_SA_INIT / IKE_AUTH unanswered.
    ConnectTimeout,
    /// The peer refused it (authentication, proposals, EAP, a malformed exchange).
    Refused,
    /// The peer lost the IKE SA (it restarted): a hint (an unprotected INVALID_SPI or
    /// INVALID_IKE_SPI) started a liveness check that only INVALID_IKE_SPI answered
    /// (`ike::exchange::hint`): sooner than dead-peer detection.
    PeerRestarted,
}

impl Why {
    /// Every reason, for views that list zeros too.
    pub const ALL: [Why; 5] = [
        Why::PeerDeleted,
        Why::DeadPeer,
        Why::ConnectTimeout,
        Why::Refused,
        Why::PeerRestarted,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Why::PeerDeleted => "peer_deleted",
            Why::DeadPeer => "dead_peer",
            Why::ConnectTimeout => "connect_timeout",
            Why::Refused => "refused",
            Why::PeerRestarted => "peer_restarted",
        }
    }
}

/// One connection's state.
#[derive(Clone, Copy, Debug, Default)]
struct Conn {
    /// Attempts since the last IKE SA that came up.
    failures: u32,
    /// When it is initiated again (None: not scheduled).
    due: Option<Instant>,
}

/// The schedule of reconnects of the connections we initiate.
#[derive(Debug, Default)]
pub struct Reconnect {
    /// IKE SAs of ours by the connection they belong to (and whether they came up).
    sas: HashMap<IkeSaId, (String, bool)>,
    conns: BTreeMap<String, Conn>,
    counts: BTreeMap<Why, u64>,
    /// Attempts made (connections initiated again).
    pub attempts: u64,
    /// No reconnects (shutting down).
    pub stopped: bool,
}

impl Reconnect {
    /// We initiated IKE SA `ike` for connection `name`.
    pub fn initiated(&mut self, ike: IkeSaId, name: &str) {
        self.sas.insert(ike, (name.to_owned(), false));
    }

    /// IKE SA `ike` of connection `name` is up: the back-off starts again from the beginning.
    pub fn up(&mut self, ike: IkeSaId, name: &str) {
        if let Some(s) = self.sas.get_mut(&ike) {
            s.1 = true;
        }
        if let Some(c) = self.conns.get_mut(name) {
            *c = Conn::default();
        }
    }

    /// IKE SA `old` was rekeyed into `new`.
    pub fn rekeyed(&mut self, old: IkeSaId, new: IkeSaId) {
        if let Some(s) = self.sas.remove(&old) {
            self.sas.insert(new, s);
        }
    }

    /// IKE SA `ike` went down for `reason`. If it was one of ours and the reason is the
    /// peer's, its connection is scheduled: returns the connection, why, and when.
    pub fn down(
        &mut self,
        now: Instant,
        ike: IkeSaId,
        reason: &DownReason,
    ) -> Option<(String, Why, Instant)> {
        let (name, was_up) = self.sas.remove(&ike)?;
        let why = match reason {
            DownReason::PeerDeleted => Why::PeerDeleted,
            DownReason::PeerLostState => Why::PeerRestarted,
            DownReason::Timeout if was_up => Why::DeadPeer,
            DownReason::Timeout => Why::ConnectTimeout,
            DownReason::AuthFailed
            | DownReason::NoProposal
            | DownReason::InvalidSyntax
            | DownReason::ReturnRoutability
            | DownReason::EapFailed { .. } => Why::Refused,
            // Our own delete, or a rekey (the new IKE SA carries on).
            DownReason::Deleted | DownReason::Rekeyed | DownReason::Replaced => return None,
        };
        if self.stopped {
            return None;
        }
        *self.counts.entry(why).or_default() += 1;
        let c = self.conns.entry(name.clone()).or_default();
        let delay = FIRST_DELAY
            .saturating_mul(1u32 << c.failures.min(16))
            .min(MAX_DELAY);
        c.failures = c.failures.saturating_add(1);
        let due = now.saturating_add(delay);
        // Another IKE SA of the connection may have scheduled it already: the earlier wins.
        c.due = Some(c.due.map_or(due, |d| d.min(due)));
        Some((name, why, due))
    }

    /// The connection is no longer configured, or has an IKE SA again by other means.
    pub fn forget(&mut self, name: &str) {
        self.conns.remove(name);
    }

    /// The earliest scheduled reconnect.
    pub fn next_due(&self) -> Option<Instant> {
        if self.stopped {
            return None;
        }
        self.conns.values().filter_map(|c| c.due).min()
    }

    /// The connections due at `now` (each unscheduled: the next loss schedules it again).
    pub fn take_due(&mut self, now: Instant) -> Vec<String> {
        if self.stopped {
            return Vec::new();
        }
        let mut v = Vec::new();
        for (name, c) in self.conns.iter_mut() {
            if c.due.is_some_and(|d| d <= now) {
                c.due = None;
                v.push(name.clone());
            }
        }
        self.attempts += v.len() as u64;
        v
    }

    /// Losses that scheduled a reconnect, by reason.
    pub fn counts(&self) -> impl Iterator<Item = (Why, u64)> + '_ {
        self.counts.iter().map(|(w, n)| (*w, *n))
    }

    /// Failed attempts of `name` since it was last up.
    pub fn failures(&self, name: &str) -> u32 {
        self.conns.get(name).map_or(0, |c| c.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> Instant {
        Instant::ZERO.saturating_add(Duration::from_secs(s))
    }

    fn sa(n: u64) -> IkeSaId {
        IkeSaId(ike::IkeSpi(n))
    }

    #[test]
    fn the_back_off_doubles_to_its_bound_and_an_ike_sa_that_comes_up_resets_it() {
        let mut r = Reconnect::default();
        let mut now = t(0);
        let mut delays = Vec::new();
        for i in 0..10u64 {
            let ike = sa(i);
            r.initiated(ike, "gw");
            let (name, why, due) = r.down(now, ike, &DownReason::Timeout).unwrap();
            assert_eq!((name.as_str(), why), ("gw", Why::ConnectTimeout));
            assert_eq!(r.next_due(), Some(due));
            assert!(r
                .take_due(Instant::from_nanos(due.as_nanos() - 1))
                .is_empty());
            assert_eq!(r.take_due(due), vec!["gw".to_owned()]);
            assert_eq!(r.next_due(), None, "taken");
            delays.push(due.saturating_duration_since(now).as_secs());
            now = due;
        }
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        assert_eq!(r.attempts, 10);
        // Up again: the next loss waits 1 s, and counts as a dead peer (it was up).
        r.initiated(sa(99), "gw");
        r.up(sa(99), "gw");
        assert_eq!(r.failures("gw"), 0);
        let (_, why, due) = r.down(now, sa(99), &DownReason::Timeout).unwrap();
        assert_eq!(why, Why::DeadPeer);
        assert_eq!(due, now.saturating_add(FIRST_DELAY));
        let counts: Vec<_> = r.counts().collect();
        assert_eq!(counts, [(Why::DeadPeer, 1), (Why::ConnectTimeout, 10)]);
    }

    #[test]
    fn only_the_peers_doing_reconnects_and_a_rekey_carries_the_connection_over() {
        let mut r = Reconnect::default();
        r.initiated(sa(1), "gw");
        r.up(sa(1), "gw");
        assert!(r.down(t(5), sa(1), &DownReason::Deleted).is_none(), "ours");
        r.initiated(sa(2), "gw");
        r.up(sa(2), "gw");
        assert!(r.down(t(5), sa(2), &DownReason::Rekeyed).is_none());
        // A rekeyed IKE SA is still the connection's.
        r.initiated(sa(3), "gw");
        r.up(sa(3), "gw");
        r.rekeyed(sa(3), sa(4));
        let (name, why, _) = r.down(t(9), sa(4), &DownReason::PeerDeleted).unwrap();
        assert_eq!((name.as_str(), why), ("gw", Why::PeerDeleted));
        // An IKE SA the peer started (not in our books) is not ours to reconnect.
        assert!(r.down(t(9), sa(7), &DownReason::PeerDeleted).is_none());
        // A peer that lost the IKE SA (a hinted liveness check: `ike`'s `exchange::hint`).
        r.initiated(sa(8), "gw");
        r.up(sa(8), "gw");
        let (_, why, _) = r.down(t(9), sa(8), &DownReason::PeerLostState).unwrap();
        assert_eq!(why, Why::PeerRestarted);
        // Refusals retry too, on the same back-off.
        r.initiated(sa(5), "other");
        let (_, why, due) = r.down(t(9), sa(5), &DownReason::AuthFailed).unwrap();
        assert_eq!((why, due), (Why::Refused, t(10)));
        // Shutting down: nothing is scheduled, nothing comes due.
        r.stopped = true;
        assert_eq!(r.next_due(), None);
        assert!(r.take_due(t(100)).is_empty());
        r.initiated(sa(6), "gw");
        assert!(r.down(t(100), sa(6), &DownReason::PeerDeleted).is_none());
    }
}
