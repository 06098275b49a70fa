//! The connectivity manager's first half: hairpin detection (M10). The data plane forwards
//! traffic between two road warriors through the gateway on its own and reports the pairs it
//! forwarded (`Event::Hairpin`: packets and bytes of one second, per worker); this module
//! decides which pairs are candidates for a direct path: a rate at or above the configured
//! threshold, both clients known (a virtual IP leased to an established IKE SA) and both
//! allowed by the per-user policy (`vcm.direct_paths`).
//!
//! Owns the pair table (bounded: [`MAX_PAIRS`], the least recently seen pair goes first) and
//! the counts of every decision. Sans-IO: `now` comes in, the caller resolves addresses to
//! identities. Must never offer the same pair twice while it is offered, nor a pair in which
//! either client is not allowed.

use core::net::IpAddr;
use std::collections::HashMap;

use ike::Instant;

use crate::config::vcm::VcmPolicy;

pub mod direct;
pub mod manager;

/// Pairs remembered at once.
pub const MAX_PAIRS: usize = 4096;

/// A pair not reported for this long is forgotten (its offer too).
pub const PAIR_IDLE: core::time::Duration = core::time::Duration::from_secs(30);

/// Two road warriors found talking through the gateway often enough, both allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The pair in address order (`a < b`), with who each is.
    pub a: (IpAddr, String),
    pub b: (IpAddr, String),
    /// The rate that made it one (packets per second).
    pub pps: u64,
}

/// What became of one report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Candidate(Candidate),
    /// Below the threshold (not counted again once offered).
    BelowThreshold,
    /// A virtual IP that no established IKE SA holds.
    UnknownClient,
    /// One of the two may not get a direct path.
    NotAllowed,
    /// Offered already.
    Offered,
}

/// Counts of the decisions, for the view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DetectCounts {
    pub reports: u64,
    pub candidates: u64,
    pub below_threshold: u64,
    pub unknown_client: u64,
    pub not_allowed: u64,
    pub evicted: u64,
}

struct Pair {
    last_seen: Instant,
    offered: bool,
}

/// The pair table and the policy.
pub struct HairpinDetector {
    policy: VcmPolicy,
    pairs: HashMap<(IpAddr, IpAddr), Pair>,
    counts: DetectCounts,
}

impl HairpinDetector {
    pub fn new(policy: VcmPolicy) -> Self {
        HairpinDetector {
            policy,
            pairs: HashMap::new(),
            counts: DetectCounts::default(),
        }
    }

    pub fn counts(&self) -> DetectCounts {
        self.counts
    }

    pub fn pairs(&self) -> usize {
        self.pairs.len()
    }

    /// Lifetime of a direct SA pair (seconds), `vcm.direct_lifetime_secs`.
    pub fn direct_lifetime_secs(&self) -> u32 {
        self.policy.direct_lifetime_secs
    }

    /// Whether the policy allows identity `id` a direct path.
    pub fn allows(&self, id: &str) -> bool {
        self.policy.allows(id)
    }

    /// Whether address `a` lies inside the protected network (`vcm.inside`).
    pub fn inside(&self, a: IpAddr) -> bool {
        self.policy.inside(a)
    }

    /// A new policy (reload): offers stand; the next reports are judged by it.
    pub fn set_policy(&mut self, policy: VcmPolicy) {
        self.policy = policy;
    }

    /// One worker's report: `packets` from `src` to `dst` over `millis`. `who` names the
    /// client holding a virtual IP (None: no established IKE SA holds it).
    pub fn observe(
        &mut self,
        now: Instant,
        (src, dst): (IpAddr, IpAddr),
        packets: u64,
        millis: u32,
        who: impl Fn(IpAddr) -> Option<String>,
    ) -> Decision {
        self.counts.reports += 1;
        let key = if src <= dst { (src, dst) } else { (dst, src) };
        if let Some(p) = self.pairs.get_mut(&key) {
            p.last_seen = now;
            if p.offered {
                return Decision::Offered;
            }
        }
        let pps = packets.saturating_mul(1000) / u64::from(millis.max(1));
        if pps < self.policy.threshold_pps {
            self.counts.below_threshold += 1;
            return Decision::BelowThreshold;
        }
        let (Some(ida), Some(idb)) = (who(key.0), who(key.1)) else {
            self.counts.unknown_client += 1;
            return Decision::UnknownClient;
        };
        if !self.policy.allows(&ida) || !self.policy.allows(&idb) {
            self.counts.not_allowed += 1;
            return Decision::NotAllowed;
        }
        if !self.pairs.contains_key(&key) && self.pairs.len() >= MAX_PAIRS {
            self.evict_oldest();
        }
        self.pairs.insert(
            key,
            Pair {
                last_seen: now,
                offered: true,
            },
        );
        self.counts.candidates += 1;
        Decision::Candidate(Candidate {
            a: (key.0, ida),
            b: (key.1, idb),
            pps,
        })
    }

    /// The pair's direct path ended (refused, failed, returned): it may be offered again.
    pub fn forget(&mut self, a: IpAddr, b: IpAddr) {
        let key = if a <= b { (a, b) } else { (b, a) };
        self.pairs.remove(&key);
    }

    /// Forgets every pair with `member`: a client that left the protected network may be
    /// offered a direct path at the pair's next report (a candidate refused while it was
    /// inside is otherwise kept until it goes quiet).
    pub fn forget_member(&mut self, member: IpAddr) {
        self.pairs.retain(|k, _| k.0 != member && k.1 != member);
    }

    /// Forgets pairs not reported for longer than [`PAIR_IDLE`].
    pub fn expire(&mut self, now: Instant) {
        self.pairs
            .retain(|_, p| now.saturating_duration_since(p.last_seen) <= PAIR_IDLE);
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .pairs
            .iter()
            .min_by_key(|(_, p)| p.last_seen)
            .map(|(k, _)| *k);
        if let Some(k) = oldest {
            self.pairs.remove(&k);
            self.counts.evicted += 1;
        }
    }
}

#[cfg(test)]
mod tests;
