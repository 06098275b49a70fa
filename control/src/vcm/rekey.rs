//! Rekeying a live direct SA pair before its lifetime ends (issue 20, item 5), both ends.
//!
//! The manager rekeys an established pair at its soft lifetime ([`SOFT_PERMILLE`] of the
//! lifetime less up to [`JITTER_PERMILLE`], random: two pairs offered together do not rekey
//! together) with a fresh pair: new keys from the caller's CSPRNG, new SPIs from the reserved
//! range (unique among live pairs, so never the old pair's), offered as [`Msg::Rekey`] naming
//! the pair it replaces. The ack order is an offer's: each client installs the new inbound SA,
//! then acknowledges (`Installed`); the manager relays `PeerReady` only after the other's
//! `Installed`; only then does a client move its outbound to the new SA
//! ([`Action::Rekeyed`]: the old outbound SA is deleted then). The old inbound SA stays until
//! both moved (both `Switching` of the new pair): then the manager sends `Return` of the old
//! pair, which deletes only its SAs (the inbound after the grace of `INBOUND_GRACE`).
//!
//! A client whose outbound direct SA nears its last sequence number (direct SAs have no ESN:
//! 2^32 - 1, reached in minutes at line rate) asks for the rekey at once
//! ([`Msg::RekeyNeeded`]); the manager then rekeys the pair as at its soft lifetime.
//!
//! A rekey that does not get through (a client does not answer) is returned like a pair that
//! does not get through (`GIVE_UP`), and by [`LAST_CHANCE_PERMILLE`] of the old pair's
//! lifetime at the latest: both pairs go back to the gateway path before the hard lifetime.
//! A client also keeps each pair's hard lifetime from its own install (later than the
//! manager's start): at it, an unrekeyed pair goes back to the gateway path and reports
//! `Idle` (a safety net: the manager's last chance comes first).

use core::time::Duration;

use ike::Instant;

use super::{Action, DirectClient, Keys, Manager, Member, Msg, Offer, Pair, Phase};

/// The soft lifetime before jitter, in thousandths of the lifetime.
pub const SOFT_PERMILLE: u64 = 850;
/// Up to this much (thousandths of the lifetime) earlier, at random.
pub const JITTER_PERMILLE: u64 = 100;
/// A pair not rekeyed by then (thousandths of its lifetime) is returned to the gateway path.
pub const LAST_CHANCE_PERMILLE: u64 = 950;

/// A pair's rekey state, in the manager.
pub(super) struct PairRekey {
    lifetime_ms: u64,
    rekey_at: Option<Instant>,
    /// This pair is the successor of that one (rekey under way).
    pub(super) replaces: Option<u64>,
    /// This pair is being replaced by that one (rekey under way).
    replaced_by: Option<u64>,
    /// Replaced: its traffic moved to its successor; it only waits for its SAs' deletion.
    pub(super) retired: bool,
}

impl PairRekey {
    pub(super) fn new(lifetime_secs: u32) -> PairRekey {
        PairRekey {
            lifetime_ms: u64::from(lifetime_secs).saturating_mul(1000),
            rekey_at: None,
            replaces: None,
            replaced_by: None,
            retired: false,
        }
    }
}

fn permille(ms: u64, pm: u64) -> Duration {
    Duration::from_millis(ms.saturating_mul(pm) / 1000)
}

/// Both installed, both moved, none returning.
fn established(p: &Pair) -> bool {
    p.m.iter()
        .all(|m: &Member| m.installed && !m.ready_pending && m.returning.is_none())
}

impl Manager {
    /// Rekeys `pair` at its soft lifetime; `jitter` (random bits from the caller's CSPRNG)
    /// picks how much earlier.
    pub fn schedule_rekey(&mut self, pair: u64, jitter: u32) {
        if let Some(p) = self.pairs.get_mut(&pair) {
            let l = p.rk.lifetime_ms;
            let early =
                (l.saturating_mul(JITTER_PERMILLE) / 1000).saturating_mul(u64::from(jitter)) >> 32;
            let soft = permille(l, SOFT_PERMILLE).saturating_sub(Duration::from_millis(early));
            p.rk.rekey_at = Some(p.started.saturating_add(soft));
        }
    }

    /// The next pair whose soft lifetime came: the caller rekeys it ([`Manager::rekey`]).
    pub fn poll_rekey_due(&mut self) -> Option<u64> {
        self.rekey_due.pop_front()
    }

    /// Offers the clients of established pair `old` its successor, keyed with `keys`; returns
    /// the new pair's id (None: `old` is not live and established, or already being replaced).
    pub fn rekey(&mut self, now: Instant, old: u64, keys: Keys) -> Option<u64> {
        let p = self.pairs.get(&old)?;
        if !established(p) || p.rk.replaced_by.is_some() || p.rk.retired {
            return None;
        }
        // Each member's address is in the other's offer.
        let a = (p.m[0].vip, p.m[1].offer.peer);
        let b = (p.m[1].vip, p.m[0].offer.peer);
        let lifetime = p.m[0].offer.lifetime_secs;
        let new = self.offer(now, a, b, keys, lifetime);
        // The two offers just queued go as the rekey of `old`.
        for (_, m) in self.out.iter_mut() {
            let offer: Offer = match m {
                Msg::Offer { pair, offer } if *pair == new => offer.clone(),
                _ => continue,
            };
            *m = Msg::Rekey {
                pair: new,
                replaces: old,
                offer,
            };
        }
        if let Some(n) = self.pairs.get_mut(&new) {
            n.rk.replaces = Some(old);
        }
        if let Some(o) = self.pairs.get_mut(&old) {
            o.rk.replaced_by = Some(new);
        }
        Some(new)
    }

    /// A member's [`Msg::RekeyNeeded`]: its outbound direct SA nears the end of its sequence
    /// numbers, so the pair is due now rather than at its soft lifetime. False (nothing done)
    /// when the pair is not established, is already being replaced (that rekey serves) or is
    /// retired.
    pub(super) fn rekey_asked(&mut self, pair: u64) -> bool {
        let Some(p) = self.pairs.get_mut(&pair) else {
            return false;
        };
        let free = p.rk.replaces.is_none() && p.rk.replaced_by.is_none() && !p.rk.retired;
        if !free || !established(p) || p.m.iter().any(|m| m.returning.is_some()) {
            return false;
        }
        p.rk.rekey_at = None;
        if !self.rekey_due.contains(&pair) {
            self.rekey_due.push_back(pair);
        }
        true
    }

    /// Whether `pair` is a successor whose rekey is under way.
    pub fn rekey_pending(&self, pair: u64) -> bool {
        self.pairs
            .get(&pair)
            .is_some_and(|p| p.rk.replaces.is_some() || p.rk.replaced_by.is_some())
    }

    /// Breaks the link of a rekey under way; returns the other pair of it.
    pub(super) fn unlink(&mut self, pair: u64) -> Option<u64> {
        let p = self.pairs.get_mut(&pair)?;
        let link = p.rk.replaces.take().or(p.rk.replaced_by.take())?;
        if let Some(o) = self.pairs.get_mut(&link) {
            o.rk.replaces = None;
            o.rk.replaced_by = None;
        }
        Some(link)
    }

    /// After a `Switching` of `pair`: if it is a successor and both clients moved to it, the
    /// old pair is retired (its SAs deleted by a `Return`, its traffic stays on the successor).
    pub(super) fn rekey_complete(&mut self, now: Instant, pair: u64) {
        let Some(p) = self.pairs.get_mut(&pair) else {
            return;
        };
        let Some(old) = p.rk.replaces else {
            return;
        };
        if !established(p) {
            return;
        }
        p.rk.replaces = None;
        if let Some(o) = self.pairs.get_mut(&old) {
            o.rk.replaced_by = None;
            o.rk.retired = true;
        }
        self.counts.rekeys += 1;
        self.return_pair(now, old);
    }

    /// Soft lifetimes due; pairs at their last chance returned.
    pub(super) fn rekey_timers(&mut self, now: Instant) {
        let mut last_chance = Vec::new();
        for (&pair, p) in self.pairs.iter_mut() {
            if p.rk.retired || p.m.iter().any(|m| m.returning.is_some()) {
                continue;
            }
            let last = p
                .started
                .saturating_add(permille(p.rk.lifetime_ms, LAST_CHANCE_PERMILLE));
            if now >= last {
                last_chance.push(pair);
                continue;
            }
            let free = p.rk.replaces.is_none() && p.rk.replaced_by.is_none();
            if free && established(p) && p.rk.rekey_at.is_some_and(|t| t <= now) {
                p.rk.rekey_at = None;
                self.rekey_due.push_back(pair);
            }
        }
        for pair in last_chance {
            self.counts.expired += 1;
            self.return_pair(now, pair);
        }
    }
}

/// How long after asking for a rekey ([`Msg::RekeyNeeded`]) a pair may still seal on its
/// outbound SA: not moved to a successor by then, it goes back to the gateway path as at its
/// hard lifetime (the data plane's warning comes 2^24 packets before the last sequence
/// number: about 1.7 s at 10 Mpps).
pub const SEQ_WRAP_GRACE: Duration = Duration::from_secs(1);

impl DirectClient {
    /// Our data plane warned that `pair`'s outbound direct SA nears its last sequence number:
    /// the gateway is asked for the rekey now, and the pair ends [`SEQ_WRAP_GRACE`] from now
    /// unless its successor took its traffic by then. False: the pair does not send directly
    /// here.
    pub fn seq_near_wrap(&mut self, now: Instant, pair: u64) -> bool {
        if !self.sends_direct(pair) {
            return false;
        }
        let end = now.saturating_add(SEQ_WRAP_GRACE);
        let hard = self.hard.entry(pair).or_insert(end);
        *hard = (*hard).min(end);
        self.counts.rekeys_asked += 1;
        self.out.push_back(Msg::RekeyNeeded { pair });
        true
    }

    pub(super) fn set_hard(&mut self, now: Instant, pair: u64, lifetime_secs: u32) {
        self.hard.insert(
            pair,
            now.saturating_add(Duration::from_secs(u64::from(lifetime_secs))),
        );
    }

    /// A `Rekey`: installed like an offer; remembered as the successor of `replaces` when that
    /// pair sends directly here (else it is an ordinary offer).
    pub(super) fn rekey_offer(
        &mut self,
        now: Instant,
        pair: u64,
        replaces: u64,
        offer: &Offer,
        known: bool,
        ended: bool,
    ) {
        if known {
            // Our acknowledgement was lost: again, without a second install.
            self.counts.duplicates += 1;
            self.out.push_back(Msg::Installed { pair });
            return;
        }
        if ended || self.ended.back().is_some_and(|&e| pair < e) {
            self.counts.unknown_pair += 1;
            return;
        }
        self.counts.offers += 1;
        self.actions.push_back(Action::InstallInbound {
            pair,
            offer: offer.clone(),
        });
        self.pairs.insert(pair, Phase::Installed);
        self.set_hard(now, pair, offer.lifetime_secs);
        if matches!(
            self.pairs.get(&replaces),
            Some(Phase::Dual { .. } | Phase::Direct { .. })
        ) {
            self.succ.insert(pair, replaces);
        }
        self.out.push_back(Msg::Installed { pair });
    }

    /// Whether `PeerReady` of `pair` moves a live pair's traffic onto it.
    pub(super) fn takes_over(&self, pair: u64) -> bool {
        self.succ.get(&pair).is_some_and(|old| {
            matches!(
                self.pairs.get(old),
                Some(Phase::Dual { .. } | Phase::Direct { .. })
            )
        })
    }

    /// The peer installed the successor's inbound SA: our traffic moves onto it; the old pair
    /// keeps only its inbound SA.
    pub(super) fn move_to(&mut self, pair: u64) {
        let Some(old) = self.succ.remove(&pair) else {
            return;
        };
        // The successor carries on the old pair's liveness.
        let phase = match self.pairs.get(&old) {
            Some(&Phase::Dual { since }) => Phase::Dual { since },
            Some(&Phase::Direct { last_rx }) => Phase::Direct { last_rx },
            _ => return,
        };
        self.actions.push_back(Action::Rekeyed { pair, old });
        self.pairs.insert(pair, phase);
        self.pairs.insert(old, Phase::Replaced { by: pair });
        self.hard.remove(&old);
        self.counts.rekeys += 1;
        self.out.push_back(Msg::Switching { pair });
    }

    /// Whether the pair's inbound direct SA may still receive (probed for liveness).
    pub fn listens(&self, pair: u64) -> bool {
        matches!(
            self.pairs.get(&pair),
            Some(Phase::Dual { .. } | Phase::Direct { .. } | Phase::Replaced { .. })
        )
    }

    /// Hard lifetimes: a pair still sending at its hard lifetime goes back to the gateway
    /// path, its SAs are deleted, and it reports `Idle` (the gateway returns it).
    pub(super) fn hard_lifetimes(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .hard
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(p, _)| *p)
            .collect();
        for pair in due {
            self.hard.remove(&pair);
            if matches!(
                self.pairs.get(&pair),
                Some(Phase::Installed | Phase::Dual { .. } | Phase::Direct { .. })
            ) {
                self.counts.expired += 1;
                self.succ.remove(&pair);
                self.actions.push_back(Action::BackToGateway { pair });
                // Its outbound SA goes now (the inbound after the grace): nothing is sealed
                // with its key past the hard lifetime.
                self.actions.push_back(Action::DeleteSas { pair });
                self.pairs.insert(
                    pair,
                    Phase::Failed {
                        last_sent: now,
                        idle: true,
                    },
                );
                self.out.push_back(Msg::Idle { pair });
            }
        }
    }
}
