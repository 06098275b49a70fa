//! The connectivity manager's protocol (M11), both ends, sans-IO: [`Manager`] on the gateway
//! hands a pair of road warriors a fresh direct SA pair and relays their acknowledgements;
//! [`DirectClient`] on each client installs, acknowledges, switches and falls back.
//!
//! The ordering rule: a client installs its inbound SA before it acknowledges the offer
//! (`Installed`); the manager tells a client `PeerReady` only after the *other* client's
//! `Installed`; a client sends on the direct SA only after `PeerReady`. So no packet is ever
//! sent on a direct SA before its receiver installed it, whatever the network does to the
//! manager's messages (lost, late, reordered, repeated: requests are sent again until
//! acknowledged, and every message is idempotent).
//!
//! After `PeerReady` a client sends on both paths (dual path) until the first authenticated
//! packet arrives on the direct one; with no authenticated packet on the direct path for
//! [`FALLBACK`] it goes back to the gateway path and says so (`Failed`); the manager then
//! returns the other client too.
//!
//! Refused and counted, never acted on: a message for a pair the receiver does not know (a
//! forged id, or one replayed after its pair ended), from a client that is not a member of the
//! pair, or of the wrong direction. Messages travel inside each client's IKE SA (authenticated
//! by it), so "from" is the IKE SA's client, never a field of the message.

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ike::Instant;
use zeroize::Zeroizing;

use super::direct::{DirectSa, Msg, Offer, DIRECT_SPI_BASE, KEYMAT_LEN};

/// A request not acknowledged is sent again this often.
pub const RETRANSMIT: Duration = Duration::from_millis(200);
/// A pair whose offer or relay is not acknowledged for this long is returned.
pub const GIVE_UP: Duration = Duration::from_secs(5);
/// No authenticated packet on the direct path for this long: back to the gateway path.
pub const FALLBACK: Duration = Duration::from_secs(1);

/// Refusals and outcomes, per end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectCounts {
    pub offers: u64,
    pub unknown_pair: u64,
    pub not_member: u64,
    pub wrong_direction: u64,
    pub duplicates: u64,
    pub failed: u64,
    /// Direct paths that worked and went quiet.
    pub idle: u64,
    pub returned: u64,
    /// Manager: pairs whose rekey completed (both moved to the successor); client: pairs it
    /// moved to their successor.
    pub rekeys: u64,
    /// Client: pairs that reached their hard lifetime unrekeyed (back on the gateway path).
    pub expired: u64,
    /// Moves of a peer relayed (manager) or taken (client).
    pub moves: u64,
    /// Rekeys asked for because an outbound direct SA neared its last sequence number: asked
    /// by the client, taken by the manager.
    pub rekeys_asked: u64,
}

/// One client of a pair as the manager tracks it.
struct Member {
    vip: IpAddr,
    offer: Offer,
    installed: bool,
    /// `PeerReady` sent (the other installed) and not yet acknowledged.
    ready_pending: bool,
    /// Return sent and not yet acknowledged (`None`: not returning).
    returning: Option<bool>,
    last_sent: Instant,
}

struct Pair {
    m: [Member; 2],
    started: Instant,
    /// Rekey state (`rekey.rs`).
    rk: rekey::PairRekey,
}

/// Fresh key material for one pair: two directions' AES-128-GCM keys and salts, from the
/// caller's CSPRNG.
pub struct Keys(pub [Zeroizing<[u8; KEYMAT_LEN]>; 2]);

/// The gateway's end.
#[derive(Default)]
pub struct Manager {
    pairs: BTreeMap<u64, Pair>,
    next_pair: u64,
    next_spi: u32,
    out: VecDeque<(IpAddr, Msg)>,
    ended: VecDeque<(u64, IpAddr, IpAddr)>,
    /// Pairs a client reported `Failed` (until they end): their clients are not offered
    /// again soon.
    failed: BTreeSet<u64>,
    /// Moves not yet acknowledged: (pair, member told) -> (move, first and last sent).
    moves: BTreeMap<(u64, usize), (u32, SocketAddr, Instant, Instant)>,
    move_seq: u32,
    counts: DirectCounts,
    /// Pairs whose soft lifetime came: the caller rekeys them ([`Manager::rekey`]).
    rekey_due: VecDeque<u64>,
}

impl Manager {
    pub fn counts(&self) -> DirectCounts {
        self.counts
    }

    pub fn pairs(&self) -> usize {
        self.pairs.len()
    }

    /// The next message to send: to the client holding virtual IP `.0`, inside its IKE SA.
    pub fn poll_transmit(&mut self) -> Option<(IpAddr, Msg)> {
        self.out.pop_front()
    }

    /// A pair that ended (both back on the gateway path): (pair, a, b).
    pub fn poll_ended(&mut self) -> Option<(u64, IpAddr, IpAddr)> {
        self.ended.pop_front()
    }

    /// Whether a client of ended pair `pair` reported its direct path failed (asked once: the
    /// answer is forgotten).
    pub fn take_failed(&mut self, pair: u64) -> bool {
        self.failed.remove(&pair)
    }

    /// Two SPIs from the reserved range not used by a live pair.
    fn spis(&mut self) -> [u32; 2] {
        let live: BTreeSet<u32> = self
            .pairs
            .values()
            .flat_map(|p| p.m.iter().map(|m| m.offer.inbound.spi))
            .collect();
        let mut take = || loop {
            self.next_spi = (self.next_spi + 1) & !ike::services::spi::DIRECT_SPI_MASK;
            let s = DIRECT_SPI_BASE | self.next_spi.max(1);
            if !live.contains(&s) {
                return s;
            }
        };
        let a = take();
        let b = take();
        [a, b]
    }

    /// Offers clients `a` and `b` (virtual IP, address and port as the gateway sees them) a
    /// direct SA pair keyed with `keys`; returns the pair's id.
    pub fn offer(
        &mut self,
        now: Instant,
        a: (IpAddr, SocketAddr),
        b: (IpAddr, SocketAddr),
        keys: Keys,
        lifetime_secs: u32,
    ) -> u64 {
        self.next_pair += 1;
        let pair = self.next_pair;
        let [spi_a, spi_b] = self.spis();
        let [k_ab, k_ba] = keys.0;
        let sa = |spi, k: &Zeroizing<[u8; KEYMAT_LEN]>| DirectSa {
            spi,
            keymat: k.clone(),
        };
        // A receives on spi_a what B seals with k_ba; B receives on spi_b what A seals with k_ab.
        let offer_a = Offer {
            inbound: sa(spi_a, &k_ba),
            outbound: sa(spi_b, &k_ab),
            peer: b.1,
            local_ts: a.0,
            remote_ts: b.0,
            lifetime_secs,
        };
        let offer_b = Offer {
            inbound: sa(spi_b, &k_ab),
            outbound: sa(spi_a, &k_ba),
            peer: a.1,
            local_ts: b.0,
            remote_ts: a.0,
            lifetime_secs,
        };
        let member = |vip, offer| Member {
            vip,
            offer,
            installed: false,
            ready_pending: false,
            returning: None,
            last_sent: now,
        };
        let p = Pair {
            m: [member(a.0, offer_a), member(b.0, offer_b)],
            started: now,
            rk: rekey::PairRekey::new(lifetime_secs),
        };
        for m in &p.m {
            self.out.push_back((
                m.vip,
                Msg::Offer {
                    pair,
                    offer: m.offer.clone(),
                },
            ));
        }
        self.pairs.insert(pair, p);
        self.counts.offers += 1;
        pair
    }

    /// Sends both clients of `pair` back to the gateway path (a client came inside, its IKE
    /// SA went, the pair is no longer wanted).
    pub fn return_pair(&mut self, now: Instant, pair: u64) {
        if let Some(link) = self.unlink(pair) {
            self.return_pair(now, link);
        }
        if let Some(p) = self.pairs.get_mut(&pair) {
            for m in p.m.iter_mut() {
                if m.returning.is_none() {
                    m.returning = Some(true);
                    m.last_sent = now;
                    self.out.push_back((m.vip, Msg::Return { pair }));
                }
            }
        }
    }

    /// The live pairs client `vip` is part of.
    pub fn pairs_of(&self, vip: IpAddr) -> Vec<u64> {
        self.pairs
            .iter()
            .filter(|(_, p)| p.m.iter().any(|m| m.vip == vip))
            .map(|(k, _)| *k)
            .collect()
    }

    /// Client `vip` is gone (its IKE SA went): it can neither be told nor answer, so it
    /// counts as returned; the other client of each of its pairs is told to return. Returns
    /// those pairs.
    pub fn member_gone(&mut self, now: Instant, vip: IpAddr) -> Vec<u64> {
        let pairs = self.pairs_of(vip);
        for &pair in &pairs {
            self.return_pair(now, pair);
            if let Some(p) = self.pairs.get_mut(&pair) {
                if let Some(m) = p.m.iter_mut().find(|m| m.vip == vip) {
                    m.returning = Some(false);
                }
            }
            // Drop what was queued for the gone one.
            self.out.retain(|(to, m)| !(*to == vip && m.pair() == pair));
            self.end_if_returned(pair);
        }
        pairs
    }

    fn end_if_returned(&mut self, pair: u64) {
        let done = self
            .pairs
            .get(&pair)
            .is_some_and(|p| p.m.iter().all(|m| m.returning == Some(false)));
        if done {
            if let Some(p) = self.pairs.remove(&pair) {
                self.counts.returned += 1;
                if !p.rk.retired {
                    self.ended.push_back((pair, p.m[0].vip, p.m[1].vip));
                }
            }
        }
    }

    /// A message from the client holding virtual IP `from` (its IKE SA vouches for that).
    pub fn handle(&mut self, now: Instant, from: IpAddr, msg: &Msg) {
        let pair = msg.pair();
        let Some(p) = self.pairs.get_mut(&pair) else {
            self.counts.unknown_pair += 1;
            return;
        };
        let Some(i) = p.m.iter().position(|m| m.vip == from) else {
            self.counts.not_member += 1;
            return;
        };
        let other = 1 - i;
        match msg {
            Msg::Installed { .. } => {
                if p.m[i].installed {
                    self.counts.duplicates += 1;
                    return;
                }
                p.m[i].installed = true;
                // The other may now send to this one.
                if p.m[other].returning.is_none() {
                    p.m[other].ready_pending = true;
                    p.m[other].last_sent = now;
                    self.out
                        .push_back((p.m[other].vip, Msg::PeerReady { pair }));
                }
            }
            Msg::Switching { .. } => {
                if !p.m[i].ready_pending {
                    self.counts.duplicates += 1;
                }
                p.m[i].ready_pending = false;
            }
            Msg::Idle { .. } => {
                self.counts.idle += 1;
                self.return_pair(now, pair);
            }
            Msg::Failed { .. } => {
                self.counts.failed += 1;
                self.failed.insert(pair);
                // The failing client is back already; it still gets a Return to delete its
                // SAs, and so does the other.
                self.return_pair(now, pair);
            }
            Msg::Returned { .. } => {
                if p.m[i].returning != Some(true) {
                    self.counts.duplicates += 1;
                    return;
                }
                p.m[i].returning = Some(false);
                if p.m.iter().all(|m| m.returning == Some(false)) {
                    let (a, b) = (p.m[0].vip, p.m[1].vip);
                    // A pair retired by its rekey: its traffic is on the successor.
                    let retired = p.rk.retired;
                    self.pairs.remove(&pair);
                    self.counts.returned += 1;
                    if !retired {
                        self.ended.push_back((pair, a, b));
                    }
                }
            }
            Msg::Moved { seq, .. } => self.moved_acked(pair, i, *seq),
            Msg::RekeyNeeded { .. } => {
                if self.rekey_asked(pair) {
                    self.counts.rekeys_asked += 1;
                } else {
                    self.counts.duplicates += 1;
                }
            }
            Msg::Offer { .. }
            | Msg::PeerReady { .. }
            | Msg::Return { .. }
            | Msg::Rekey { .. }
            | Msg::PeerMoved { .. }
            | Msg::Hello => {
                self.counts.wrong_direction += 1;
            }
        }
        if matches!(msg, Msg::Switching { .. }) {
            self.rekey_complete(now, pair);
        }
    }

    /// Sends again what is not acknowledged; returns pairs that took too long.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.rekey_timers(now);
        let mut give_up = Vec::new();
        for (&pair, p) in self.pairs.iter_mut() {
            let stuck = p.m.iter().any(|m| !m.installed || m.ready_pending);
            if stuck
                && p.m.iter().all(|m| m.returning.is_none())
                && now.saturating_duration_since(p.started) >= GIVE_UP
            {
                give_up.push(pair);
                continue;
            }
            for m in p.m.iter_mut() {
                if now.saturating_duration_since(m.last_sent) < RETRANSMIT {
                    continue;
                }
                let msg = if m.returning == Some(true) {
                    Msg::Return { pair }
                } else if m.returning.is_some() {
                    continue;
                } else if !m.installed {
                    match p.rk.replaces {
                        Some(replaces) => Msg::Rekey {
                            pair,
                            replaces,
                            offer: m.offer.clone(),
                        },
                        None => Msg::Offer {
                            pair,
                            offer: m.offer.clone(),
                        },
                    }
                } else if m.ready_pending {
                    Msg::PeerReady { pair }
                } else {
                    continue;
                };
                m.last_sent = now;
                self.out.push_back((m.vip, msg));
            }
        }
        for pair in give_up {
            self.return_pair(now, pair);
        }
        self.moves_timeout(now);
    }
}

/// What a client's data plane is told to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Install the pair's inbound SA (before the acknowledgement leaves).
    InstallInbound { pair: u64, offer: Offer },
    /// Install the outbound SA and send on it too, keeping the gateway path (dual path).
    SendDirect { pair: u64 },
    /// The direct path proved itself: stop sending the pair's traffic through the gateway.
    DirectOnly { pair: u64 },
    /// Back to the gateway path only.
    BackToGateway { pair: u64 },
    /// Rekey: install `pair`'s outbound SA and move the traffic of pair `old` onto it; delete
    /// `old`'s outbound SA (its inbound stays until `old` is returned).
    Rekeyed { pair: u64, old: u64 },
    /// Delete the pair's SAs.
    DeleteSas { pair: u64 },
    /// The peer moved: send the pair's direct traffic to `peer` (same SAs, no rekey).
    Rebind { pair: u64, peer: SocketAddr },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Installed,
    Dual {
        since: Instant,
    },
    Direct {
        last_rx: Instant,
    },
    /// Back on the gateway path, reporting why until the gateway returns the pair (`idle`: the
    /// direct path had worked and went quiet).
    Failed {
        last_sent: Instant,
        idle: bool,
    },
    /// Rekeyed: the traffic moved to pair `by`; only the inbound SA is left (what the peer
    /// sealed before it moved), until the gateway's `Return` (then its grace).
    Replaced {
        by: u64,
    },
}

/// Pairs a client remembers as ended (bounded): a replayed offer of one is refused.
const ENDED_KEPT: usize = 1024;

/// A client's end.
#[derive(Default)]
pub struct DirectClient {
    pairs: BTreeMap<u64, Phase>,
    ended: VecDeque<u64>,
    out: VecDeque<Msg>,
    actions: VecDeque<Action>,
    /// The latest move taken per live pair (`moves.rs`).
    move_seq: BTreeMap<u64, u32>,
    counts: DirectCounts,
    /// Rekeys under way: successor pair -> the pair it replaces.
    succ: BTreeMap<u64, u64>,
    /// Each pair's hard lifetime (from its install).
    hard: BTreeMap<u64, Instant>,
}

impl DirectClient {
    pub fn counts(&self) -> DirectCounts {
        self.counts
    }

    /// The next message for the gateway (inside our IKE SA).
    pub fn poll_transmit(&mut self) -> Option<Msg> {
        self.out.pop_front()
    }

    /// The next thing for our data plane.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Whether the pair sends on its direct SA (dual path or direct only).
    pub fn sends_direct(&self, pair: u64) -> bool {
        matches!(
            self.pairs.get(&pair),
            Some(Phase::Dual { .. } | Phase::Direct { .. })
        )
    }

    fn end(&mut self, pair: u64) {
        self.pairs.remove(&pair);
        self.hard.remove(&pair);
        self.succ.remove(&pair);
        if self.ended.len() >= ENDED_KEPT {
            self.ended.pop_front();
        }
        self.ended.push_back(pair);
    }

    /// A message from the gateway.
    pub fn handle(&mut self, now: Instant, msg: &Msg) {
        let pair = msg.pair();
        let known = self.pairs.get(&pair).copied();
        let ended = self.ended.contains(&pair);
        match msg {
            Msg::Offer { offer, .. } => {
                if known.is_some() {
                    // Our acknowledgement was lost: again, without a second install.
                    self.counts.duplicates += 1;
                    self.out.push_back(Msg::Installed { pair });
                } else if ended || self.ended.back().is_some_and(|&e| pair < e) {
                    // A replay of an offer whose pair is over.
                    self.counts.unknown_pair += 1;
                } else {
                    self.counts.offers += 1;
                    self.actions.push_back(Action::InstallInbound {
                        pair,
                        offer: offer.clone(),
                    });
                    self.pairs.insert(pair, Phase::Installed);
                    self.out.push_back(Msg::Installed { pair });
                    self.set_hard(now, pair, offer.lifetime_secs);
                }
            }
            Msg::Rekey {
                replaces, offer, ..
            } => self.rekey_offer(now, pair, *replaces, offer, known.is_some(), ended),
            Msg::PeerReady { .. } => match known {
                Some(Phase::Installed) if self.takes_over(pair) => self.move_to(pair),
                Some(Phase::Installed) => {
                    self.actions.push_back(Action::SendDirect { pair });
                    self.pairs.insert(pair, Phase::Dual { since: now });
                    self.out.push_back(Msg::Switching { pair });
                }
                Some(_) => {
                    self.counts.duplicates += 1;
                    self.out.push_back(Msg::Switching { pair });
                }
                None => self.counts.unknown_pair += 1,
            },
            Msg::Return { .. } => {
                if known.is_some() {
                    if !matches!(known, Some(Phase::Failed { .. } | Phase::Replaced { .. })) {
                        self.actions.push_back(Action::BackToGateway { pair });
                    }
                    self.actions.push_back(Action::DeleteSas { pair });
                    self.end(pair);
                    self.counts.returned += 1;
                    self.out.push_back(Msg::Returned { pair });
                } else if ended {
                    self.counts.duplicates += 1;
                    self.out.push_back(Msg::Returned { pair });
                } else {
                    self.counts.unknown_pair += 1;
                }
            }
            Msg::PeerMoved { seq, peer, .. } => {
                self.peer_moved(pair, *seq, *peer, known.is_some(), ended)
            }
            Msg::Installed { .. }
            | Msg::Switching { .. }
            | Msg::Failed { .. }
            | Msg::Idle { .. }
            | Msg::Returned { .. }
            | Msg::Moved { .. }
            | Msg::RekeyNeeded { .. }
            | Msg::Hello => self.counts.wrong_direction += 1,
            // The Rekey arm above.
        }
    }

    /// An authenticated packet arrived on the pair's direct inbound SA.
    pub fn direct_authenticated(&mut self, now: Instant, pair: u64) {
        match self.pairs.get(&pair) {
            Some(Phase::Dual { .. }) => {
                self.actions.push_back(Action::DirectOnly { pair });
                self.pairs.insert(pair, Phase::Direct { last_rx: now });
            }
            Some(Phase::Direct { .. }) => {
                self.pairs.insert(pair, Phase::Direct { last_rx: now });
            }
            // The peer still seals on the old SA: the path lives.
            Some(&Phase::Replaced { by }) => self.direct_authenticated(now, by),
            _ => {}
        }
    }

    /// Fallback and the `Failed` (or `Idle`) report sent again until the gateway returns the
    /// pair.
    pub fn handle_timeout(&mut self, now: Instant) {
        let report = |pair, idle| {
            if idle {
                Msg::Idle { pair }
            } else {
                Msg::Failed { pair }
            }
        };
        self.hard_lifetimes(now);
        let mut failed = Vec::new();
        for (&pair, phase) in self.pairs.iter_mut() {
            match *phase {
                Phase::Dual { since: t } | Phase::Direct { last_rx: t }
                    if now.saturating_duration_since(t) >= FALLBACK =>
                {
                    let idle = matches!(*phase, Phase::Direct { .. });
                    failed.push((pair, idle));
                    *phase = Phase::Failed {
                        last_sent: now,
                        idle,
                    };
                }
                Phase::Failed { last_sent, idle }
                    if now.saturating_duration_since(last_sent) >= RETRANSMIT =>
                {
                    *phase = Phase::Failed {
                        last_sent: now,
                        idle,
                    };
                    self.out.push_back(report(pair, idle));
                }
                _ => {}
            }
        }
        for (pair, idle) in failed {
            if idle {
                self.counts.idle += 1;
            } else {
                self.counts.failed += 1;
            }
            self.actions.push_back(Action::BackToGateway { pair });
            self.out.push_back(report(pair, idle));
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) has something to do next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pairs
            .values()
            .filter_map(|p| match *p {
                Phase::Dual { since: t } | Phase::Direct { last_rx: t } => {
                    Some(t.saturating_add(FALLBACK))
                }
                Phase::Failed { last_sent, .. } => Some(last_sent.saturating_add(RETRANSMIT)),
                Phase::Installed | Phase::Replaced { .. } => None,
            })
            .chain(self.hard.values().copied())
            .min()
    }
}

#[cfg(test)]
#[path = "manager_tests.rs"]
mod tests;

#[path = "moves.rs"]
mod moves;
#[path = "rekey.rs"]
pub mod rekey;
