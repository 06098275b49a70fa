//! The hold of an outbound SA installed with one (`Resume::hold_us`: a cluster edge that took
//! over a client's outbound SA at a move). What the SA seals from its first packet until the
//! hold's end waits here, sealed and in order, and leaves when the hold ends: what the old
//! edge sealed before the LAN's route flipped reaches the client first, so the client's
//! anti-replay window has not yet jumped to the new edge's numbers when it arrives
//! (`docs/architecture.md`, "Packets lost at a move").
//!
//! Owns: the deadlines of the SAs that hold (a few at a time: one per client that moved in
//! the last milliseconds) and the frames held. Never drops a held frame: beyond
//! [`HOLD_MAX`] frames the oldest leaves early (counted), and a stopping worker sends them
//! all. Never reorders one SA's frames: they leave in the order they were sealed, and a
//! frame sealed after its SA's hold ended goes behind the held ones (they left in the turn
//! the hold ended, before any frame was received).

use core::net::IpAddr;
use std::collections::VecDeque;

use super::{Side, Verdict, Worker};
use crate::port::Port;
use crate::stats::Traffic;
use proto::SaId;

/// At most this many frames wait in holds (all SAs together); beyond it the oldest leaves
/// early. 10 ms at 100,000 packets/s: a burst of the LAN's traffic to the clients that
/// moved in the last few milliseconds, and a small part of a port's frame pool.
pub const HOLD_MAX: usize = 1024;

/// A sealed frame that waits for its SA's hold to end, and where it goes then (the WAN, or
/// the WAN's next hop to resolve).
pub(super) struct Held<F> {
    pub until: u64,
    pub hop: Option<IpAddr>,
    pub frame: F,
}

/// The holds in progress: (SA, end in the worker's clock).
pub(super) struct Holds {
    pub ends: Vec<(SaId, u64)>,
    /// The earliest end among the held frames (u64::MAX: none held).
    pub next: u64,
}

impl Default for Holds {
    fn default() -> Self {
        Holds {
            ends: Vec::new(),
            next: u64::MAX,
        }
    }
}

impl<P: Port> Worker<P> {
    /// Outbound SA `id` (which holds) sealed a packet at `now`: until when it waits, or None
    /// when the hold is over (and the SA no longer holds). The first packet starts the hold.
    #[cold]
    pub(super) fn hold_until(&mut self, id: SaId, now: u64) -> Option<u64> {
        let until = match self.holds.ends.iter().find(|(s, _)| *s == id) {
            Some((_, u)) => *u,
            None => {
                let us = self.sad.outbound_mut(id).map_or(0, |sa| sa.hold_us);
                let u = now.saturating_add(u64::from(us) * 1000);
                self.holds.ends.push((id, u));
                u
            }
        };
        if now < until {
            return Some(until);
        }
        self.end_hold(id);
        None
    }

    /// SA `id` holds no more (its hold ended, or it was replaced or deleted).
    pub(super) fn end_hold(&mut self, id: SaId) {
        self.holds.ends.retain(|(s, _)| *s != id);
        if let Some(sa) = self.sad.outbound_mut(id) {
            sa.holding = false;
        }
    }

    /// A sealed frame waits until `until`; past [`HOLD_MAX`] the oldest held frame leaves now.
    pub(super) fn hold(&mut self, f: P::Frame, until: u64, hop: Option<IpAddr>) {
        if self.held.len() >= HOLD_MAX {
            if let Some(h) = self.held.pop_front() {
                self.counters.count(Traffic::HoldReleasedEarly, 1);
                self.send_held(h);
            }
        }
        self.counters.count(Traffic::Held, 1);
        self.holds.next = self.holds.next.min(until);
        self.held.push_back(Held {
            until,
            hop,
            frame: f,
        });
    }

    /// Sends the held frames whose hold ended by `now` (all of them with `u64::MAX`), in the
    /// order they were sealed. Returns how many left.
    pub(super) fn release_held(&mut self, now: u64) -> usize {
        if self.held.is_empty() || now < self.holds.next {
            return 0;
        }
        let mut sent = 0;
        let mut keep = VecDeque::with_capacity(self.held.len());
        self.holds.next = u64::MAX;
        for h in core::mem::take(&mut self.held) {
            if h.until <= now {
                self.send_held(h);
                sent += 1;
            } else {
                self.holds.next = self.holds.next.min(h.until);
                keep.push_back(h);
            }
        }
        self.held = keep;
        sent
    }

    fn send_held(&mut self, h: Held<P::Frame>) {
        let v = match h.hop {
            None => Verdict::ToWan,
            Some(hop) => Verdict::Resolve(Side::Wan, hop),
        };
        self.dispatch(h.frame, Side::Lan, v);
    }
}
