//! The connectivity manager wired into the control core (M11): the gateway's
//! [`Manager`](crate::vcm::manager::Manager) and a client's
//! [`DirectClient`](crate::vcm::manager::DirectClient), their messages carried as private-use
//! notify [`NOTIFY_DIRECT_PATH`] inside each client's IKE SA (`ike::Endpoint::send_private`:
//! one INFORMATIONAL each, retransmitted by IKE as every request, RFC 7296 2.1), and a
//! client's actions turned into data-plane updates.
//!
//! - A roamgate client announces that it takes direct paths (`Hello`) once its IKE SA with a
//!   virtual IP is up. The gateway offers a pair only when both clients announced it: other
//!   clients (strongSwan) keep the hairpin through the gateway.
//! - Gateway: a hairpin candidate of the detector whose two clients announced support is
//!   offered a fresh SA pair (keys from the core's CSPRNG, seeded by the driver from the OS);
//!   the manager's messages go to the IKE SA that holds the addressed virtual IP; a message is
//!   taken from the client whose IKE SA it came in (never a field of the message). A client
//!   whose IKE SA goes ends its pairs: the other is told to return.
//! - Client: `InstallInbound` queues the inbound SA's install *before* the `Installed`
//!   acknowledgement's datagram (the core's output queue lets a datagram leave only after the
//!   updates queued before it are applied: `core::output`); `SendDirect` (after the peer's
//!   `PeerReady`) installs the outbound SA and binds the peer's virtual IP to it; liveness is
//!   the inbound direct SA's replay window moving (`ExportSa` every [`PROBE_EVERY`]); no
//!   progress for `FALLBACK` unbinds (back to the gateway path) and reports `Failed`.
//!
//! Nonces: each direction of a pair has its own fresh key and exactly one sender, its
//! outbound SA is installed once per pair (a repeated `PeerReady` is acknowledged without a
//! second install) starting at sequence number 1, and a pair's SAs are deleted at its end and
//! never installed again (a replayed offer of an ended pair is refused): no (key, SPI,
//! sequence number) is used twice.
//!
//! Must never: log key material; send on a direct SA before `PeerReady`; offer a client that
//! did not announce support.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ike::{IkeSaId, Instant};
use proto::policy::Prefix;
use proto::sa::{AeadAlg, Lifetime, Resume, SaKeys, SaParams, SaRef, SaState, UdpEncap};
use proto::{Direction, SaId, Spi, Update};
use rand_core::{RngCore, SeedableRng};
use zeroize::Zeroizing;

use super::ControlCore;
use crate::vcm::direct::{Msg, KEYMAT_LEN, NOTIFY_DIRECT_PATH};
use crate::vcm::manager::{Action, DirectClient, DirectCounts, Keys, Manager};

/// How often a client asks its data plane whether its direct inbound SAs received anything.
pub const PROBE_EVERY: Duration = Duration::from_millis(100);
/// A pair whose direct path failed is not offered again for this long (it stays on the
/// gateway path: a path that NAT or a firewall blocks is not tried again and again).
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);
/// A returned pair's inbound SA stays this long after its outbound went: what the peer sent
/// on the direct path before it took the return in is still opened, not dropped as an unknown
/// SPI.
pub const INBOUND_GRACE: Duration = Duration::from_secs(2);
/// Lifetime given to a direct SA pair (seconds).
pub const DIRECT_LIFETIME_SECS: u32 = 3600;

/// A client's data-plane state of one pair.
struct ClientPair {
    in_spi: Spi,
    in_id: SaId,
    out_id: SaId,
    out_installed: bool,
    bound: bool,
    local_vip: IpAddr,
    peer_vip: IpAddr,
    peer: SocketAddr,
    out_spi: Spi,
    out_keymat: Zeroizing<[u8; KEYMAT_LEN]>,
    /// The inbound SA's replay top at the last probe.
    top: u64,
}

/// Both ends' state in one core (a gateway uses the manager, a client the other half).
pub(crate) struct DirectPaths {
    manager: Manager,
    /// Gateway: IKE SAs whose client announced direct-path support, with its virtual IP.
    capable: BTreeMap<IkeSaId, IpAddr>,
    client: DirectClient,
    /// Client: the IKE SA of ours that carries the manager's messages, and its local address.
    client_ike: Option<(IkeSaId, SocketAddr)>,
    pairs: BTreeMap<u64, ClientPair>,
    rng: rand_chacha::ChaCha20Rng,
    next_probe: Option<Instant>,
    next_tick: Option<Instant>,
    /// Inbound direct SAs of ended pairs, deleted then (with their id).
    retiring: Vec<(Instant, Spi, SaId)>,
    /// Failed pairs held back from a new offer until then.
    holdoff: Vec<(Instant, IpAddr, IpAddr)>,
    /// The policy changed: pairs it no longer allows return at the next turn.
    revalidate: bool,
    /// Messages refused by decoding or sent by the wrong side.
    pub malformed: u64,
    /// Candidates that stay on the hairpin because a client did not announce support.
    pub unsupported: u64,
    /// Client: NAT keepalives sent to peers (`direct_moves.rs`).
    pub keepalives: u64,
}

impl DirectPaths {
    pub(crate) fn new(seed: [u8; 32]) -> DirectPaths {
        // A seed of its own, derived from the core's (from the OS): never the endpoint's stream.
        let mut s = seed;
        s[0] ^= 0x5a;
        s[31] ^= 0xa5;
        DirectPaths {
            manager: Manager::default(),
            capable: BTreeMap::new(),
            client: DirectClient::default(),
            client_ike: None,
            pairs: BTreeMap::new(),
            rng: rand_chacha::ChaCha20Rng::from_seed(s),
            next_probe: None,
            next_tick: None,
            revalidate: false,
            holdoff: Vec::new(),
            retiring: Vec::new(),
            malformed: 0,
            unsupported: 0,
            keepalives: 0,
        }
    }

    pub(crate) fn revalidate(&mut self) {
        if self.manager.pairs() > 0 {
            self.revalidate = true;
            self.next_tick = Some(Instant::ZERO);
        }
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        let holdoff = self
            .holdoff
            .iter()
            .map(|h| h.0)
            .chain(self.retiring.iter().map(|r| r.0))
            .min();
        [
            self.next_probe,
            self.next_tick,
            self.client.poll_timeout(),
            holdoff,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn keys(&mut self) -> Keys {
        let mut k = || {
            let mut b = Zeroizing::new([0u8; KEYMAT_LEN]);
            self.rng.fill_bytes(&mut b[..]);
            b
        };
        let a = k();
        let b = k();
        Keys([a, b])
    }
}

/// What the view shows of the connectivity manager.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectView {
    pub manager: DirectCounts,
    pub client: DirectCounts,
    pub manager_pairs: usize,
    pub client_pairs: usize,
    pub client_direct: usize,
    pub capable: usize,
    pub unsupported: u64,
    pub malformed: u64,
}

impl ControlCore {
    /// The connectivity manager's counts, both ends.
    pub fn direct_view(&self) -> DirectView {
        let d = &self.direct;
        DirectView {
            manager: d.manager.counts(),
            client: d.client.counts(),
            manager_pairs: d.manager.pairs(),
            client_pairs: d.pairs.len(),
            client_direct: d.pairs.values().filter(|p| p.bound).count(),
            capable: d.capable.len(),
            unsupported: d.unsupported,
            malformed: d.malformed,
        }
    }

    /// Client: the pairs whose outbound traffic goes on the direct SA now (pair, peer virtual
    /// IP).
    pub fn direct_pairs(&self) -> Vec<(u64, IpAddr)> {
        self.direct
            .pairs
            .iter()
            .filter(|(_, p)| p.bound)
            .map(|(k, p)| (*k, p.peer_vip))
            .collect()
    }

    /// Gateway: sends every pair `vip` is part of back to the gateway path (an operator's
    /// request, or the client came inside).
    pub fn return_direct(&mut self, now: Instant, vip: IpAddr) -> usize {
        let pairs = self.direct.manager.pairs_of(vip);
        for &p in &pairs {
            self.direct.manager.return_pair(now, p);
        }
        self.flush_manager(now);
        pairs.len()
    }

    /// An IKE event the connectivity manager cares about (after the repository saw it).
    pub(super) fn direct_on_event(&mut self, now: Instant, e: &ike::Event) {
        match e {
            ike::Event::IkeUp {
                ike,
                local,
                virtual_ip: Some(_),
                virtual_ip_is_ours: true,
                ..
            } => {
                // A roamgate client: announce that we take direct paths.
                self.direct.client_ike = Some((*ike, *local));
                let hello = Msg::Hello.encode();
                let _ = self
                    .endpoint
                    .send_private(now, *ike, NOTIFY_DIRECT_PATH, &hello);
            }
            ike::Event::IkeRekeyed { old, new, .. } => {
                if let Some(vip) = self.direct.capable.remove(old) {
                    self.direct.capable.insert(*new, vip);
                }
                if let Some((i, l)) = self.direct.client_ike {
                    if i == *old {
                        self.direct.client_ike = Some((*new, l));
                    }
                }
            }
            ike::Event::IkeDown { ike, .. } => {
                if let Some(vip) = self.direct.capable.remove(ike) {
                    // Its pairs end: the other client returns to the gateway path.
                    let pairs = self.direct.manager.member_gone(now, vip);
                    if !pairs.is_empty() {
                        self.out.log(format!(
                            "vcm: {vip} is gone: its direct pairs {pairs:?} return"
                        ));
                    }
                    self.flush_manager(now);
                }
                if self.direct.client_ike.is_some_and(|(i, _)| i == *ike) {
                    // Our gateway is gone: every direct pair ends here (the peer's gateway
                    // returns it).
                    self.direct.client_ike = None;
                    let pairs: Vec<u64> = self.direct.pairs.keys().copied().collect();
                    for p in pairs {
                        self.direct_delete_pair(now, p);
                    }
                }
            }
            ike::Event::IkeMoved {
                ike, local, remote, ..
            } => self.direct_moved(now, *ike, *local, *remote),
            ike::Event::PrivateNotify { ike, kind, data } if *kind == NOTIFY_DIRECT_PATH => {
                let msg = match Msg::decode(&data.0) {
                    Ok(m) => m,
                    Err(err) => {
                        self.direct.malformed += 1;
                        self.out
                            .log(format!("vcm: a malformed message refused ({err})"));
                        return;
                    }
                };
                if self.direct.client_ike.is_some_and(|(i, _)| i == *ike) {
                    self.direct.client.handle(now, &msg);
                    self.client_actions(now);
                } else if let Some(vip) = self.vip_of(*ike) {
                    if msg == Msg::Hello {
                        if self.direct.capable.insert(*ike, vip).is_none() {
                            self.out
                                .log(format!("vcm: {vip} announced direct-path support"));
                        }
                        return;
                    }
                    self.direct.manager.handle(now, vip, &msg);
                    // A rekey a client asked for (`RekeyNeeded`) is offered at once.
                    self.direct_rekeys(now);
                    self.flush_manager(now);
                } else {
                    self.direct.malformed += 1;
                }
            }
            _ => {}
        }
    }

    /// The virtual IP we leased to the client of IKE SA `ike`.
    fn vip_of(&self, ike: IkeSaId) -> Option<IpAddr> {
        self.endpoint
            .leases()
            .into_iter()
            .find(|(_, i)| *i == ike)
            .map(|(v, _)| IpAddr::V4(v))
    }

    fn ike_of_vip(&self, vip: IpAddr) -> Option<IkeSaId> {
        let IpAddr::V4(v4) = vip else { return None };
        self.endpoint
            .leases()
            .into_iter()
            .find(|(l, _)| *l == v4)
            .map(|(_, i)| i)
    }

    /// Gateway: a hairpin candidate; offered when both clients announced support.
    pub(super) fn direct_offer(&mut self, now: Instant, a: IpAddr, b: IpAddr) -> bool {
        let addr = |core: &Self, vip| -> Option<SocketAddr> {
            let ike = core.ike_of_vip(vip)?;
            if !core.direct.capable.contains_key(&ike) {
                return None;
            }
            core.endpoint.remote_of(ike)
        };
        let (Some(pa), Some(pb)) = (addr(self, a), addr(self, b)) else {
            self.direct.unsupported += 1;
            self.out.log(format!(
                "vcm: {a} <-> {b} stays on the hairpin (a client did not announce direct-path support)"
            ));
            return false;
        };
        if self.direct_inside(pa, pb) {
            return false;
        }
        let keys = self.direct.keys();
        let lifetime = self.direct_lifetime();
        let pair = self
            .direct
            .manager
            .offer(now, (a, pa), (b, pb), keys, lifetime);
        self.direct_schedule_rekey(pair);
        self.out.log(format!(
            "vcm: pair {pair}: direct SA pair offered to {a} (at {pa}) and {b} (at {pb})"
        ));
        self.flush_manager(now);
        true
    }

    /// The manager's messages into the clients' IKE SAs; its timer.
    pub(super) fn flush_manager(&mut self, now: Instant) {
        while let Some((vip, msg)) = self.direct.manager.poll_transmit() {
            let Some(ike) = self.ike_of_vip(vip) else {
                continue;
            };
            let data = msg.encode();
            if let Err(e) = self
                .endpoint
                .send_private(now, ike, NOTIFY_DIRECT_PATH, &data)
            {
                self.out.log(format!("vcm: to {vip}: {e}"));
            }
        }
        while let Some((pair, a, b)) = self.direct.manager.poll_ended() {
            if self.direct.manager.take_failed(pair) {
                // Stays offered in the detector's eyes until the hold-off ends.
                self.out.log(format!(
                    "vcm: pair {pair} ({a} <-> {b}) back on the gateway path: the direct path failed, not offered again for {} s",
                    RETRY_AFTER_FAILURE.as_secs()
                ));
                self.direct
                    .holdoff
                    .push((now.saturating_add(RETRY_AFTER_FAILURE), a, b));
                continue;
            }
            self.out.log(format!(
                "vcm: pair {pair} ({a} <-> {b}) back on the gateway path"
            ));
            if let Some(d) = self.vcm.as_mut() {
                d.forget(a, b);
            }
        }
        self.direct.next_tick = (self.direct.manager.pairs() > 0)
            .then(|| now.saturating_add(crate::vcm::manager::RETRANSMIT));
    }

    /// Client: the manager's actions into data-plane updates, its messages into our IKE SA.
    fn client_actions(&mut self, now: Instant) {
        while let Some(a) = self.direct.client.poll_action() {
            match a {
                Action::InstallInbound { pair, offer } => {
                    let Some((_, local)) = self.direct.client_ike else {
                        continue;
                    };
                    let in_id = self.repo.alloc_direct_id();
                    let out_id = self.repo.alloc_direct_id();
                    let p = ClientPair {
                        in_spi: Spi(offer.inbound.spi),
                        in_id,
                        out_id,
                        out_installed: false,
                        bound: false,
                        local_vip: offer.local_ts,
                        peer_vip: offer.remote_ts,
                        peer: offer.peer,
                        out_spi: Spi(offer.outbound.spi),
                        out_keymat: offer.outbound.keymat.clone(),
                        top: 0,
                    };
                    if let Some(params) = direct_params(
                        &p,
                        local.ip(),
                        in_id,
                        p.in_spi,
                        &offer.inbound.keymat,
                        self.repo.replay_window(),
                    ) {
                        self.route(Update::AddSa {
                            dir: Direction::Inbound,
                            params,
                        });
                    }
                    self.out.log(format!(
                        "vcm: pair {pair}: inbound direct SA {:08x} from {} installed",
                        p.in_spi.0, p.peer
                    ));
                    self.direct.pairs.insert(pair, p);
                    self.direct_keepalive(pair);
                }
                Action::SendDirect { pair } => {
                    let Some((_, local)) = self.direct.client_ike else {
                        continue;
                    };
                    let Some(p) = self.direct.pairs.get_mut(&pair) else {
                        continue;
                    };
                    let params =
                        direct_params(p, local.ip(), p.out_id, p.out_spi, &p.out_keymat, 0);
                    let (dst, src, sa) = (p.peer_vip, p.local_vip, p.out_id);
                    let first = !p.out_installed;
                    p.out_installed = true;
                    p.bound = true;
                    if let (Some(params), true) = (params, first) {
                        self.route(Update::AddSa {
                            dir: Direction::Outbound,
                            params,
                        });
                    }
                    if let Some(src) = host_prefix(src) {
                        // On probation: the gateway path goes on, a copy takes the direct SA
                        // until the first authenticated packet on the direct path.
                        self.route(Update::BindHostDual { dst, src, sa });
                    }
                    self.out.log(format!(
                        "vcm: pair {pair}: sending to {dst} on the direct SA and the gateway path (dual path until the direct one is proven)"
                    ));
                    self.direct.next_probe = Some(now);
                }
                Action::DirectOnly { pair } => self.direct_only(pair),
                Action::BackToGateway { pair } => {
                    if let Some(p) = self.direct.pairs.get_mut(&pair) {
                        if p.bound {
                            p.bound = false;
                            let dst = p.peer_vip;
                            self.route(Update::UnbindHost { dst });
                            self.out.log(format!(
                                "vcm: pair {pair}: back to the gateway path for {dst}"
                            ));
                        }
                    }
                }
                Action::DeleteSas { pair } => self.direct_delete_pair(now, pair),
                Action::Rekeyed { pair, old } => self.direct_rekeyed(now, pair, old),
                Action::Rebind { pair, peer } => self.direct_rebind(pair, peer),
            }
        }
        if let Some((ike, _)) = self.direct.client_ike {
            while let Some(m) = self.direct.client.poll_transmit() {
                let data = m.encode();
                let _ = self
                    .endpoint
                    .send_private(now, ike, NOTIFY_DIRECT_PATH, &data);
            }
        }
    }

    /// The first authenticated packet on the pair's direct path: its binding leaves probation
    /// (the gateway path stops carrying a copy of what goes direct).
    fn direct_only(&mut self, pair: u64) {
        let Some(p) = self.direct.pairs.get(&pair) else {
            return;
        };
        if !p.bound {
            return;
        }
        let (dst, sa) = (p.peer_vip, p.out_id);
        if let Some(src) = host_prefix(p.local_vip) {
            self.route(Update::BindHost { dst, src, sa });
        }
        self.out.log(format!(
            "vcm: pair {pair}: the direct path is proven: {dst} on the direct SA only"
        ));
    }

    fn direct_delete_pair(&mut self, now: Instant, pair: u64) {
        let Some(p) = self.direct.pairs.remove(&pair) else {
            return;
        };
        if p.bound {
            self.route(Update::UnbindHost { dst: p.peer_vip });
        }
        if p.out_installed {
            self.route(Update::DeleteOutbound { id: p.out_id });
        }
        self.repo.release_direct_id(p.out_id);
        self.direct
            .retiring
            .push((now.saturating_add(INBOUND_GRACE), p.in_spi, p.in_id));
    }

    /// A data-plane SA state: true if it was a direct inbound SA's (liveness), consumed.
    pub(super) fn direct_sa_state(&mut self, now: Instant, spi: Spi, state: &SaState) -> bool {
        let SaState::Inbound { replay } = state else {
            return false;
        };
        let Some((&pair, p)) = self.direct.pairs.iter_mut().find(|(_, p)| p.in_spi == spi) else {
            return false;
        };
        if replay.top > p.top {
            p.top = replay.top;
            self.direct.client.direct_authenticated(now, pair);
            self.client_actions(now);
        }
        true
    }

    /// The connectivity manager's timers: retransmissions, the client's fallback, probes.
    pub(super) fn direct_timeout(&mut self, now: Instant) {
        let (gone, keep): (Vec<_>, Vec<_>) =
            self.direct.retiring.drain(..).partition(|r| r.0 <= now);
        self.direct.retiring = keep;
        for (_, spi, id) in gone {
            self.route(Update::DeleteInbound { spi });
            self.repo.release_direct_id(id);
        }
        let due: Vec<(IpAddr, IpAddr)> = self
            .direct
            .holdoff
            .iter()
            .filter(|h| h.0 <= now)
            .map(|h| (h.1, h.2))
            .collect();
        if !due.is_empty() {
            self.direct.holdoff.retain(|h| h.0 > now);
            if let Some(d) = self.vcm.as_mut() {
                for (a, b) in due {
                    d.forget(a, b);
                }
            }
        }
        if std::mem::take(&mut self.direct.revalidate) {
            let vips: Vec<IpAddr> = self.direct.capable.values().copied().collect();
            for vip in vips {
                let id = self
                    .ike_of_vip(vip)
                    .and_then(|ike| self.endpoint.peer_identity(ike));
                let allowed = match (&self.vcm, id) {
                    (Some(d), Some(id)) => d.allows(&id),
                    _ => false,
                };
                if !allowed {
                    let n = self.return_direct(now, vip);
                    if n > 0 {
                        self.out.log(format!(
                            "vcm: {vip} no longer allowed a direct path: {n} pair(s) return"
                        ));
                    }
                }
            }
        }
        if self.direct.next_tick.is_some_and(|t| t <= now) {
            self.direct.manager.handle_timeout(now);
            self.direct_rekeys(now);
            self.flush_manager(now);
        }
        if self.direct.client.poll_timeout().is_some_and(|t| t <= now) {
            self.direct.client.handle_timeout(now);
            self.client_actions(now);
        }
        if self.direct.next_probe.is_some_and(|t| t <= now) {
            let spis: Vec<Spi> = self
                .direct
                .pairs
                .iter()
                .filter(|(k, _)| self.direct.client.listens(**k))
                .map(|(_, p)| p.in_spi)
                .collect();
            for spi in &spis {
                self.route(Update::ExportSa {
                    sa: SaRef::Inbound(*spi),
                });
            }
            self.direct.next_probe = (!spis.is_empty()).then(|| now.saturating_add(PROBE_EVERY));
            self.direct_keepalives_unproven();
        }
    }
}

#[path = "direct_moves.rs"]
mod moves;

fn host_prefix(a: IpAddr) -> Option<Prefix> {
    Prefix::new(a, if a.is_ipv4() { 32 } else { 128 }).ok()
}

/// One direction of a direct SA: ESP in UDP (RFC 3948) between our IKE address and the peer's
/// as the gateway saw it (port 4500 when the gateway saw 500: no NAT in front of it), host to
/// host between the two virtual IPs. `replay_window` 0: outbound.
fn direct_params(
    p: &ClientPair,
    local: IpAddr,
    id: SaId,
    spi: Spi,
    keymat: &[u8; KEYMAT_LEN],
    replay_window: u32,
) -> Option<SaParams> {
    let keys = SaKeys::from_keymat(AeadAlg::AesGcm128, keymat).ok()?;
    let (local_ts, remote_ts) = (host_prefix(p.local_vip)?, host_prefix(p.peer_vip)?);
    let remote_port = if p.peer.port() == 500 {
        4500
    } else {
        p.peer.port()
    };
    Some(SaParams {
        id,
        spi,
        keys,
        esn: false,
        replay_window: if replay_window == 0 {
            64
        } else {
            replay_window
        },
        local,
        remote: p.peer.ip(),
        encap: Some(UdpEncap {
            local_port: 4500,
            remote_port,
        }),
        local_ts,
        remote_ts,
        outer_ttl: 64,
        lifetime: Lifetime::default(),
        resume: Resume::default(),
        checkpoint: None,
    })
}

#[path = "direct_rekey.rs"]
mod rekey;
