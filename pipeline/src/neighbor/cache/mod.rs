//! The neighbour cache: protocol address -> MAC for next hops and LAN hosts, with RFC 4861's
//! reachability states (7.3.2), used for ARP as well, as Linux's neighbour layer does.
//!
//! ```text
//!  state       event                                     next                action
//!  (none)      frame to send                             INCOMPLETE          solicit, queue it
//!  (none)      a solicitation to us, with its MAC        STALE               (gleaning)
//!  INCOMPLETE  retrans, fewer than multicast_solicit     INCOMPLETE          solicit again
//!  INCOMPLETE  retrans, all sent                         (gone)              queue: Unreachable
//!  INCOMPLETE  answer: solicited / other                 REACHABLE / STALE   queue: Transmit
//!  REACHABLE   reachable time                            STALE
//!  STALE       frame sent (at once, to the cached MAC)   DELAY
//!  STALE       unused for stale_ns                       (gone)
//!  DELAY       delay_first_probe                         PROBE               unicast solicit
//!  PROBE       retrans, fewer than unicast_solicit       PROBE               unicast solicit
//!  PROBE       retrans, all sent                         (gone)
//!  any usable  confirmation (solicited answer)           REACHABLE
//!  any usable  another MAC, overriding                   STALE, new MAC
//! ```
//!
//! Sans-IO: frames to send toward an address come in with `now` ([`NeighborCache::resolve`]);
//! what received ARP and ND frames say comes in as [`Hint`]s ([`NeighborCache::learn`]); the
//! cache answers at once with a MAC or keeps the frame, and leaves [`Action`]s (solicit this
//! address, transmit these released frames, these frames are unreachable) for the caller to
//! take with [`NeighborCache::poll_action`]. Timers are deadlines on the caller's clock
//! ([`NeighborCache::handle_timeout`], [`NeighborCache::next_deadline`]).
//!
//! Simplifications: an entry whose solicitations go unanswered is deleted (RFC 4861 7.3.3's
//! SHOULD), so the next frame starts a new resolution, as Linux does; there are no
//! upper-layer reachability confirmations (a gateway forwards, it has no connections of its
//! own), so an entry in use is re-verified by a unicast probe about once per reachable time;
//! the reachable time is drawn per entry (0.5 to 1.5 times the base, RFC 4861 6.3.2's
//! factors) rather than per interface, which spreads the probes of entries learned together;
//! the Router flag is not tracked (there is no default router list here).
//!
//! Limits: at most `capacity` entries (the least recently used non-permanent one makes way;
//! gleaning only ever replaces an unused STALE one), `queue_len` frames per unresolved address
//! (the oldest makes way, as Linux's `unres_qlen`) and `max_queued` in all.
#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use core::fmt;
use core::hash::Hash;
use core::net::{Ipv4Addr, Ipv6Addr};
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};

use super::frames::{multicast_mac_v4, multicast_mac_v6, Hint, HintKind};
use crate::wire::ethernet::{self, Address};

#[cfg(test)]
mod tests;

const SEC: u64 = 1_000_000_000;
const NEVER: u64 = u64::MAX;
const NIL: usize = usize::MAX;

/// A protocol address the cache resolves.
pub trait NeighborAddr: Copy + Eq + Hash + fmt::Debug {
    /// The MAC a broadcast or multicast address maps to (no resolution needed), or None.
    fn group_mac(&self) -> Option<Address>;
    /// The unspecified address, which nobody has.
    fn is_unspecified_addr(&self) -> bool;
}

impl NeighborAddr for Ipv4Addr {
    fn group_mac(&self) -> Option<Address> {
        if self.is_broadcast() {
            Some(ethernet::BROADCAST)
        } else if self.is_multicast() {
            Some(multicast_mac_v4(*self))
        } else {
            None
        }
    }

    fn is_unspecified_addr(&self) -> bool {
        self.is_unspecified()
    }
}

impl NeighborAddr for Ipv6Addr {
    fn group_mac(&self) -> Option<Address> {
        self.is_multicast().then(|| multicast_mac_v6(*self))
    }

    fn is_unspecified_addr(&self) -> bool {
        self.is_unspecified()
    }
}

macro_rules! drops {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal; )*) => {
        /// Why the cache dropped a frame.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum NeighborDrop { $( $(#[$doc])* $variant, )* }

        impl NeighborDrop {
            pub const ALL: &'static [NeighborDrop] = &[$(NeighborDrop::$variant,)*];
            pub const COUNT: usize = Self::ALL.len();

            /// The counter's stable name (what the worker's drop reason is called).
            pub const fn name(self) -> &'static str {
                match self { $(NeighborDrop::$variant => $name,)* }
            }
        }
    };
}

drops! {
    /// The address's queue was full: its oldest frame made way for a newer one.
    QueueOverflow => "neighbor_queue_overflow";
    /// Every queue together holds `max_queued` frames: this one was not queued.
    QueueFull => "neighbor_queue_full";
    /// Resolution failed (no answer to the solicitations), or the address is unspecified.
    Unresolved => "neighbor_unresolved";
    /// The cache was full of permanent entries, or the entry queueing the frame was pushed
    /// out by a newer one.
    CacheFull => "neighbor_cache_full";
}

impl fmt::Display for NeighborDrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Timers and limits of a [`NeighborCache`] (defaults: RFC 4861 10's constants, Linux's
/// table sizes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighborConfig {
    /// Entries, permanent ones included (Linux's gc_thresh3).
    pub capacity: usize,
    /// BaseReachableTime: a confirmed entry is REACHABLE for 0.5 to 1.5 times this.
    pub reachable_ns: u64,
    /// RetransTimer: between solicitations.
    pub retrans_ns: u64,
    /// DELAY_FIRST_PROBE_TIME: a STALE entry used for sending waits this long before its
    /// first unicast probe.
    pub delay_first_probe_ns: u64,
    /// MAX_MULTICAST_SOLICIT: broadcast/multicast solicitations before giving up.
    pub multicast_solicit: u8,
    /// MAX_UNICAST_SOLICIT: unicast probes before giving up.
    pub unicast_solicit: u8,
    /// An unused STALE entry goes after this long (Linux's gc_stale_time).
    pub stale_ns: u64,
    /// Frames kept per unresolved address (Linux's old unres_qlen).
    pub queue_len: usize,
    /// Frames kept in all.
    pub max_queued: usize,
    /// Seeds the reachable-time jitter.
    pub seed: u64,
}

impl Default for NeighborConfig {
    fn default() -> Self {
        NeighborConfig {
            capacity: 1024,
            reachable_ns: 30 * SEC,
            retrans_ns: SEC,
            delay_first_probe_ns: 5 * SEC,
            multicast_solicit: 3,
            unicast_solicit: 3,
            stale_ns: 60 * SEC,
            queue_len: 3,
            max_queued: 256,
            seed: 0x5eed_a11c_e0ff_1ce5,
        }
    }
}

/// A limit that cannot work, naming the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub field: &'static str,
    pub problem: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for ConfigError {}

impl NeighborConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, problem| Err(ConfigError { field, problem });
        if self.capacity == 0 || self.capacity > 1 << 20 {
            return err("capacity", "must be 1 to 1048576");
        }
        if self.reachable_ns == 0 || self.retrans_ns == 0 || self.stale_ns == 0 {
            return err("timers", "reachable, retrans and stale times must not be 0");
        }
        if self.multicast_solicit == 0 {
            return err("multicast_solicit", "must be at least 1");
        }
        if self.queue_len == 0 || self.queue_len > 64 {
            return err("queue_len", "must be 1 to 64");
        }
        Ok(())
    }
}

/// RFC 4861 7.3.2's states, and PERMANENT for configured neighbours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NeighborState {
    /// Being resolved: solicitations sent, frames queued.
    Incomplete,
    /// Confirmed recently.
    Reachable,
    /// Usable, not confirmed recently.
    Stale,
    /// Used while STALE: a probe follows unless a confirmation comes first.
    Delay,
    /// Being re-verified with unicast probes (still used meanwhile).
    Probe,
    /// Configured (`neighbor_mac`): never expires, never replaced by what the link says.
    Permanent,
}

/// What the caller should do, taken with [`NeighborCache::poll_action`].
#[derive(Debug, PartialEq, Eq)]
pub enum Action<A, F> {
    /// Send a solicitation (ARP request / Neighbor Solicitation) for `target`: broadcast or
    /// multicast, or unicast to a cached MAC (a probe).
    Solicit { target: A, unicast: Option<Address> },
    /// A queued frame's address is resolved: send it to `mac`.
    Transmit { mac: Address, frame: F },
    /// Resolution of `target` failed: the frame is dropped (counted as
    /// [`NeighborDrop::Unresolved`]); RFC 4861 7.2.2 and RFC 1812 4.3.3.1 want an ICMP
    /// "address unreachable" for it.
    Unreachable { target: A, frame: F },
}

/// What [`NeighborCache::resolve`] did with a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolution<F> {
    /// Send it to this MAC now.
    Ready(Address, F),
    /// Kept until the address resolves (or fails).
    Queued,
    /// Dropped, for this reason (and counted).
    Dropped(NeighborDrop),
}

/// What [`NeighborCache::learn`] did with a hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learned {
    /// A new STALE entry (gleaned from a solicitation).
    Created,
    /// An INCOMPLETE entry resolved (its frames are released).
    Resolved,
    /// An entry confirmed, moved to STALE, or given a new MAC.
    Updated,
    /// Nothing changed (no entry and nothing to glean, a permanent entry, an advertisement
    /// without Override for another MAC, ...).
    Ignored,
}

/// Counters of one cache.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NeighborCounters {
    /// Frames dropped, per [`NeighborDrop`] (index `reason as usize`).
    pub drops: [u64; NeighborDrop::COUNT],
    /// Broadcast/multicast solicitations asked for.
    pub solicits: u64,
    /// Unicast probes asked for.
    pub probes: u64,
    /// Addresses resolved (INCOMPLETE to usable).
    pub resolved: u64,
    /// Addresses given up on: resolution or re-verification unanswered.
    pub no_answer: u64,
    /// Entries pushed out by a full cache.
    pub evicted: u64,
    /// Entries created from a solicitation to us.
    pub gleaned: u64,
    /// Solicitations to us not gleaned because the cache had no unused entry to spare.
    pub glean_skipped: u64,
    /// Entries whose MAC changed (a gratuitous ARP, an overriding advertisement, ...).
    pub mac_changed: u64,
    /// Unused STALE entries removed.
    pub expired: u64,
}

impl NeighborCounters {
    pub fn drop_count(&self, r: NeighborDrop) -> u64 {
        self.drops.get(r as usize).copied().unwrap_or(0)
    }

    fn add_drop(&mut self, r: NeighborDrop) {
        if let Some(c) = self.drops.get_mut(r as usize) {
            *c = c.wrapping_add(1);
        }
    }
}

fn inc(c: &mut u64) {
    *c = c.wrapping_add(1);
}

#[derive(Debug)]
struct Entry<A, F> {
    addr: A,
    mac: Address,
    state: NeighborState,
    /// When the state's timer fires (NEVER for PERMANENT).
    deadline: u64,
    /// Solicitations sent in this INCOMPLETE or PROBE phase.
    sent: u8,
    queue: VecDeque<F>,
    /// Least recently used first; PERMANENT entries are not in the list.
    prev: usize,
    next: usize,
    in_use: bool,
}

/// The neighbour cache of one link and one address family. `F` is the frame type it queues.
pub struct NeighborCache<A: NeighborAddr, F> {
    cfg: NeighborConfig,
    entries: Vec<Entry<A, F>>,
    free: Vec<usize>,
    index: HashMap<A, usize, RandomState>,
    lru_head: usize,
    lru_tail: usize,
    queued: usize,
    actions: VecDeque<Action<A, F>>,
    /// No deadline is earlier than this (it may be earlier than every deadline).
    next_deadline: u64,
    rng: u64,
    counters: NeighborCounters,
}

impl<A: NeighborAddr, F> NeighborCache<A, F> {
    /// An empty cache with these limits (checked).
    pub fn new(cfg: NeighborConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let n = cfg.capacity;
        Ok(NeighborCache {
            entries: Vec::with_capacity(n),
            free: Vec::with_capacity(n),
            index: HashMap::with_capacity_and_hasher(n, RandomState::new()),
            lru_head: NIL,
            lru_tail: NIL,
            queued: 0,
            actions: VecDeque::with_capacity(n.saturating_add(cfg.max_queued)),
            next_deadline: NEVER,
            rng: cfg.seed | 1,
            counters: NeighborCounters::default(),
            cfg,
        })
    }

    pub fn config(&self) -> &NeighborConfig {
        &self.cfg
    }

    pub fn counters(&self) -> &NeighborCounters {
        &self.counters
    }

    /// Entries in the cache.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Frames queued for unresolved addresses.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// The state and MAC of `addr`'s entry (the MAC is meaningless while INCOMPLETE).
    pub fn entry(&self, addr: A) -> Option<(NeighborState, Address)> {
        let e = self.entries.get(*self.index.get(&addr)?)?;
        Some((e.state, e.mac))
    }

    /// The earliest time [`handle_timeout`](Self::handle_timeout) has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        (self.next_deadline != NEVER).then_some(self.next_deadline)
    }

    /// The next thing to do, oldest first. Take them all after every call.
    pub fn poll_action(&mut self) -> Option<Action<A, F>> {
        self.actions.pop_front()
    }

    /// A configured neighbour (`neighbor_mac`): PERMANENT, whatever the link says. Replaces
    /// an entry for `addr`. `CacheFull` if every entry is permanent already.
    pub fn add_permanent(&mut self, addr: A, mac: Address) -> Result<(), NeighborDrop> {
        let i = match self.index.get(&addr).copied() {
            Some(i) => {
                self.flush_queue(i, NeighborDrop::CacheFull);
                self.lru_unlink(i);
                i
            }
            None => self.alloc(addr, true).ok_or(NeighborDrop::CacheFull)?,
        };
        if let Some(e) = self.entries.get_mut(i) {
            e.mac = mac;
            e.state = NeighborState::Permanent;
            e.deadline = NEVER;
        }
        Ok(())
    }

    /// Forgets `addr` (its queued frames are dropped as `CacheFull`). True if it was there.
    pub fn remove(&mut self, addr: A) -> bool {
        match self.index.get(&addr).copied() {
            Some(i) => {
                self.flush_queue(i, NeighborDrop::CacheFull);
                self.release(i);
                true
            }
            None => false,
        }
    }

    /// The MAC to send to `addr` now, if there is a usable one (never creates an entry).
    /// A STALE entry starts its DELAY timer, as any use does.
    pub fn lookup(&mut self, addr: A, now: u64) -> Option<Address> {
        if let Some(m) = addr.group_mac() {
            return Some(m);
        }
        let i = *self.index.get(&addr)?;
        self.use_entry(i, now)
    }

    /// A frame for `addr`: its MAC now, or the frame is kept until `addr` resolves (the first
    /// frame for an unknown address creates an INCOMPLETE entry and asks for a solicitation).
    pub fn resolve(&mut self, addr: A, frame: F, now: u64) -> Resolution<F> {
        if let Some(m) = addr.group_mac() {
            return Resolution::Ready(m, frame);
        }
        if addr.is_unspecified_addr() {
            self.counters.add_drop(NeighborDrop::Unresolved);
            return Resolution::Dropped(NeighborDrop::Unresolved);
        }
        let i = match self.index.get(&addr).copied() {
            Some(i) => {
                if let Some(mac) = self.use_entry(i, now) {
                    return Resolution::Ready(mac, frame);
                }
                i
            }
            None => {
                let Some(i) = self.alloc(addr, false) else {
                    self.counters.add_drop(NeighborDrop::CacheFull);
                    return Resolution::Dropped(NeighborDrop::CacheFull);
                };
                if let Some(e) = self.entries.get_mut(i) {
                    e.state = NeighborState::Incomplete;
                    e.sent = 1;
                }
                self.set_deadline(i, now.saturating_add(self.cfg.retrans_ns));
                inc(&mut self.counters.solicits);
                self.push_action(Action::Solicit {
                    target: addr,
                    unicast: None,
                });
                i
            }
        };
        self.enqueue(i, frame)
    }

    /// Takes what a received frame says about a neighbour (RFC 4861 7.2.3 and 7.2.5; RFC 826's
    /// merge for ARP, whose hints always override).
    pub fn learn(&mut self, hint: Hint<A>, now: u64) -> Learned {
        if hint.addr.group_mac().is_some() || hint.addr.is_unspecified_addr() {
            return Learned::Ignored;
        }
        let Some(i) = self.index.get(&hint.addr).copied() else {
            return match (hint.kind, hint.mac) {
                (HintKind::Solicitation, Some(mac)) => self.glean(hint.addr, mac, now),
                _ => Learned::Ignored,
            };
        };
        let Some((state, cached)) = self.entries.get(i).map(|e| (e.state, e.mac)) else {
            return Learned::Ignored;
        };
        match state {
            NeighborState::Permanent => Learned::Ignored,
            NeighborState::Incomplete => {
                let Some(mac) = hint.mac else {
                    return Learned::Ignored;
                };
                let confirmed = matches!(hint.kind, HintKind::Confirmation { .. });
                self.set_mac(i, mac);
                if confirmed {
                    self.enter_reachable(i, now);
                } else {
                    self.enter_stale(i, now);
                }
                inc(&mut self.counters.resolved);
                self.release_queue(i);
                Learned::Resolved
            }
            _ => {
                let changed = hint.mac.is_some_and(|m| m != cached);
                match hint.kind {
                    HintKind::Solicitation => {
                        if let (true, Some(mac)) = (changed, hint.mac) {
                            self.set_mac(i, mac);
                            inc(&mut self.counters.mac_changed);
                            self.enter_stale(i, now);
                            return Learned::Updated;
                        }
                        Learned::Ignored
                    }
                    HintKind::Confirmation { override_ } | HintKind::Unsolicited { override_ } => {
                        let confirmed = matches!(hint.kind, HintKind::Confirmation { .. });
                        if changed && !override_ {
                            if state == NeighborState::Reachable {
                                self.enter_stale(i, now);
                                return Learned::Updated;
                            }
                            return Learned::Ignored;
                        }
                        if let (true, Some(mac)) = (changed, hint.mac) {
                            self.set_mac(i, mac);
                            inc(&mut self.counters.mac_changed);
                        }
                        if confirmed {
                            self.enter_reachable(i, now);
                            Learned::Updated
                        } else if changed {
                            self.enter_stale(i, now);
                            Learned::Updated
                        } else {
                            Learned::Ignored
                        }
                    }
                }
            }
        }
    }

    /// Runs every timer due at `now`: retransmits, probes, state changes, removals.
    pub fn handle_timeout(&mut self, now: u64) {
        if now < self.next_deadline {
            return;
        }
        let mut next = NEVER;
        for i in 0..self.entries.len() {
            let Some(e) = self.entries.get(i) else { break };
            if !e.in_use {
                continue;
            }
            if e.deadline <= now {
                self.fire(i, now);
            }
            if let Some(e) = self.entries.get(i) {
                if e.in_use {
                    next = next.min(e.deadline);
                }
            }
        }
        self.next_deadline = next;
    }

    fn fire(&mut self, i: usize, now: u64) {
        let Some((state, sent, addr, mac)) = self
            .entries
            .get(i)
            .map(|e| (e.state, e.sent, e.addr, e.mac))
        else {
            return;
        };
        let retrans = now.saturating_add(self.cfg.retrans_ns);
        match state {
            NeighborState::Incomplete if sent < self.cfg.multicast_solicit => {
                self.solicit(i, addr, None, retrans);
            }
            NeighborState::Incomplete => {
                inc(&mut self.counters.no_answer);
                while let Some(frame) = self.pop_queued(i) {
                    self.counters.add_drop(NeighborDrop::Unresolved);
                    self.push_action(Action::Unreachable {
                        target: addr,
                        frame,
                    });
                }
                self.release(i);
            }
            NeighborState::Reachable => self.enter_stale(i, now),
            NeighborState::Stale => {
                inc(&mut self.counters.expired);
                self.release(i);
            }
            NeighborState::Delay => {
                if let Some(e) = self.entries.get_mut(i) {
                    e.state = NeighborState::Probe;
                    e.sent = 0;
                }
                self.solicit(i, addr, Some(mac), retrans);
            }
            NeighborState::Probe if sent < self.cfg.unicast_solicit => {
                self.solicit(i, addr, Some(mac), retrans);
            }
            NeighborState::Probe => {
                inc(&mut self.counters.no_answer);
                self.release(i);
            }
            NeighborState::Permanent => {
                if let Some(e) = self.entries.get_mut(i) {
                    e.deadline = NEVER;
                }
            }
        }
    }

    fn solicit(&mut self, i: usize, target: A, unicast: Option<Address>, deadline: u64) {
        if let Some(e) = self.entries.get_mut(i) {
            e.sent = e.sent.saturating_add(1);
            e.deadline = deadline;
        }
        if unicast.is_some() {
            inc(&mut self.counters.probes);
        } else {
            inc(&mut self.counters.solicits);
        }
        self.push_action(Action::Solicit { target, unicast });
    }

    /// A usable entry's MAC (touching it); None while INCOMPLETE.
    fn use_entry(&mut self, i: usize, now: u64) -> Option<Address> {
        let (state, mac) = self.entries.get(i).map(|e| (e.state, e.mac))?;
        match state {
            NeighborState::Incomplete => return None,
            NeighborState::Stale => {
                if let Some(e) = self.entries.get_mut(i) {
                    e.state = NeighborState::Delay;
                }
                self.set_deadline(i, now.saturating_add(self.cfg.delay_first_probe_ns));
            }
            _ => {}
        }
        if state != NeighborState::Permanent {
            self.lru_touch(i);
        }
        Some(mac)
    }

    fn glean(&mut self, addr: A, mac: Address, now: u64) -> Learned {
        // Only a free slot or an unused STALE entry: a flood of solicitations from made-up
        // senders must not push out the neighbours in use.
        let spare = self.index.len() < self.cfg.capacity
            || self
                .entries
                .get(self.lru_head)
                .is_some_and(|e| e.state == NeighborState::Stale);
        if !spare {
            inc(&mut self.counters.glean_skipped);
            return Learned::Ignored;
        }
        let Some(i) = self.alloc(addr, false) else {
            inc(&mut self.counters.glean_skipped);
            return Learned::Ignored;
        };
        self.set_mac(i, mac);
        self.enter_stale(i, now);
        inc(&mut self.counters.gleaned);
        Learned::Created
    }

    fn set_mac(&mut self, i: usize, mac: Address) {
        if let Some(e) = self.entries.get_mut(i) {
            e.mac = mac;
        }
    }

    fn enter_reachable(&mut self, i: usize, now: u64) {
        let t = self.reachable_time();
        if let Some(e) = self.entries.get_mut(i) {
            e.state = NeighborState::Reachable;
            e.sent = 0;
        }
        self.set_deadline(i, now.saturating_add(t));
    }

    fn enter_stale(&mut self, i: usize, now: u64) {
        if let Some(e) = self.entries.get_mut(i) {
            e.state = NeighborState::Stale;
            e.sent = 0;
        }
        self.set_deadline(i, now.saturating_add(self.cfg.stale_ns));
    }

    /// Uniform in [0.5, 1.5) times the base (RFC 4861 6.3.2).
    fn reachable_time(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let base = self.cfg.reachable_ns;
        let r = u128::from(self.rng % 1024);
        let jitter = u128::from(base).saturating_mul(r) / 1024;
        (base / 2).saturating_add(u64::try_from(jitter).unwrap_or(base))
    }

    fn set_deadline(&mut self, i: usize, at: u64) {
        if let Some(e) = self.entries.get_mut(i) {
            e.deadline = at;
        }
        self.next_deadline = self.next_deadline.min(at);
    }

    fn enqueue(&mut self, i: usize, frame: F) -> Resolution<F> {
        let full = self
            .entries
            .get(i)
            .is_some_and(|e| e.queue.len() >= self.cfg.queue_len);
        if full {
            // The oldest makes way: the newest frames are the ones still worth sending.
            if self.pop_queued(i).is_some() {
                self.counters.add_drop(NeighborDrop::QueueOverflow);
            }
        } else if self.queued >= self.cfg.max_queued {
            self.counters.add_drop(NeighborDrop::QueueFull);
            return Resolution::Dropped(NeighborDrop::QueueFull);
        }
        match self.entries.get_mut(i) {
            Some(e) => {
                e.queue.push_back(frame);
                self.queued = self.queued.saturating_add(1);
                Resolution::Queued
            }
            None => Resolution::Dropped(NeighborDrop::CacheFull),
        }
    }

    fn pop_queued(&mut self, i: usize) -> Option<F> {
        let f = self.entries.get_mut(i)?.queue.pop_front()?;
        self.queued = self.queued.saturating_sub(1);
        Some(f)
    }

    fn release_queue(&mut self, i: usize) {
        let Some(mac) = self.entries.get(i).map(|e| e.mac) else {
            return;
        };
        while let Some(frame) = self.pop_queued(i) {
            self.push_action(Action::Transmit { mac, frame });
        }
    }

    fn flush_queue(&mut self, i: usize, r: NeighborDrop) {
        while self.pop_queued(i).is_some() {
            self.counters.add_drop(r);
        }
    }

    fn push_action(&mut self, a: Action<A, F>) {
        // Bounded by what the caller left untaken: solicitations are repeated by the timers,
        // and frames are dropped (counted) rather than kept without limit.
        let bound = self.cfg.capacity.saturating_add(self.cfg.max_queued);
        if self.actions.len() < bound {
            self.actions.push_back(a);
        } else if let Action::Transmit { .. } | Action::Unreachable { .. } = a {
            self.counters.add_drop(NeighborDrop::QueueFull);
        }
    }

    /// A fresh entry for `addr` (not yet in any state), pushing out the least recently used
    /// one if the cache is full. None if every entry is permanent.
    fn alloc(&mut self, addr: A, permanent: bool) -> Option<usize> {
        if self.index.len() >= self.cfg.capacity {
            let victim = self.lru_head;
            if victim == NIL {
                return None;
            }
            self.flush_queue(victim, NeighborDrop::CacheFull);
            self.release(victim);
            inc(&mut self.counters.evicted);
        }
        let entry = Entry {
            addr,
            mac: [0; 6],
            state: NeighborState::Incomplete,
            deadline: NEVER,
            sent: 0,
            queue: VecDeque::new(),
            prev: NIL,
            next: NIL,
            in_use: true,
        };
        let i = match self.free.pop() {
            Some(i) => {
                let e = self.entries.get_mut(i)?;
                let queue = core::mem::take(&mut e.queue);
                *e = Entry { queue, ..entry };
                i
            }
            None => {
                let i = self.entries.len();
                let mut entry = entry;
                entry.queue = VecDeque::with_capacity(self.cfg.queue_len);
                self.entries.push(entry);
                i
            }
        };
        self.index.insert(addr, i);
        if !permanent {
            self.lru_push(i);
        }
        Some(i)
    }

    fn release(&mut self, i: usize) {
        self.lru_unlink(i);
        let Some(e) = self.entries.get_mut(i) else {
            return;
        };
        if !e.in_use {
            return;
        }
        e.in_use = false;
        e.deadline = NEVER;
        let addr = e.addr;
        self.index.remove(&addr);
        self.free.push(i);
    }

    fn lru_push(&mut self, i: usize) {
        let tail = self.lru_tail;
        if let Some(e) = self.entries.get_mut(i) {
            e.prev = tail;
            e.next = NIL;
        }
        match self.entries.get_mut(tail) {
            Some(t) => t.next = i,
            None => self.lru_head = i,
        }
        self.lru_tail = i;
    }

    fn lru_unlink(&mut self, i: usize) {
        let Some((prev, next)) = self.entries.get(i).map(|e| (e.prev, e.next)) else {
            return;
        };
        if prev == NIL && self.lru_head != i {
            return; // not in the list
        }
        match self.entries.get_mut(prev) {
            Some(p) => p.next = next,
            None => self.lru_head = next,
        }
        match self.entries.get_mut(next) {
            Some(n) => n.prev = prev,
            None => self.lru_tail = prev,
        }
        if let Some(e) = self.entries.get_mut(i) {
            e.prev = NIL;
            e.next = NIL;
        }
    }

    fn lru_touch(&mut self, i: usize) {
        if self.lru_tail != i {
            self.lru_unlink(i);
            self.lru_push(i);
        }
    }
}
