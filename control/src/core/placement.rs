//! Placement: which worker of the data plane owns each SA, and so which workers an update
//! goes to.
//!
//! The rule:
//! - an inbound SA belongs to the worker whose id its SPI carries (the worker bits the `ike`
//!   crate's SPI allocator reserves, [`ike::services::spi::SpiLayout`]), so the data plane can
//!   steer inbound ESP to its owner by the SPI alone; an SPI we did not choose (a static SA)
//!   goes by the same bits, modulo the number of workers;
//! - an outbound SA belongs to the worker that owns its CHILD_SA's inbound SA (one worker
//!   holds both directions of a peer's traffic); a static outbound SA, which pairs with
//!   nothing, goes by its remote address;
//! - everything every worker needs (the policy, host bindings, the masquerade, the WAN
//!   addresses) goes to every worker.
//!
//! An update naming an SA goes only to its owner, so its keys are expanded once (by the one
//! worker's agent that builds it).
//!
//! Owns: the SPI layout of this data plane, the outbound SAs' owners.
//! Must never: send an SA's keys to a worker that does not own it; route by anything but
//! the SA's SPI or id (the data plane must be able to do the same).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use ike::services::spi::SpiLayout;
use ike::ChildSpi;
use proto::policy::{Action as PolicyAction, Prefix, Rule, Selector};
use proto::sa::SaRef;
use proto::{Direction, SaId, Spi, Update};

/// Where the SAs of one data plane live.
#[derive(Debug)]
pub struct Placement {
    workers: u16,
    layout: SpiLayout,
    /// Outbound SA id -> owner (inbound SAs carry theirs in the SPI).
    outbound: HashMap<SaId, u16>,
    /// With several workers: per-worker host bindings (per-core CHILD_SAs of road warriors).
    hosts: HostCopies,
}

/// Host bindings as each worker got them, when a worker owns an outbound SA with the same
/// selectors as the bound one (a per-core sibling, RFC 9611): that worker binds the host to
/// its own SA.
#[derive(Debug, Default)]
struct HostCopies {
    /// Outbound SA id -> its selectors (local, remote).
    ts: HashMap<SaId, (Prefix, Prefix)>,
    /// Selectors -> the outbound SAs that have them.
    by_ts: HashMap<(Prefix, Prefix), Vec<SaId>>,
    /// Host -> its binding as the repository made it (source prefix, SA).
    bound: HashMap<IpAddr, (Prefix, SaId)>,
    /// SA -> the (host, worker) bindings that name it in place of the repository's SA.
    substituted: HashMap<SaId, Vec<(IpAddr, u16)>>,
    /// Host -> the (worker, SA) substitutions of its binding (the reverse of `substituted`).
    by_host: HashMap<IpAddr, Vec<(u16, SaId)>>,
}

/// The bits a worker id takes in an SPI for `workers` workers (0 for one).
pub fn worker_bits(workers: u16) -> u8 {
    let mut bits = 0u8;
    while (1u32 << bits) < u32::from(workers) {
        bits += 1;
    }
    bits
}

impl Placement {
    /// A data plane of `workers` workers (at least one) on one node.
    pub fn new(workers: u16) -> Placement {
        let workers = workers.max(1);
        let layout = SpiLayout::new(0, 0, worker_bits(workers), 0)
            .expect("at most 16 worker bits for a u16 count of workers");
        Placement {
            workers,
            layout,
            outbound: HashMap::new(),
            hosts: HostCopies::default(),
        }
    }

    /// A cluster crypto node's: one worker per edge (edges run one worker for now), the
    /// node id in the top `node_bits` bits of every SPI.
    pub fn for_node(
        node_bits: u8,
        node: u32,
    ) -> Result<Placement, ike::services::spi::SpiLayoutError> {
        Ok(Placement {
            workers: 1,
            layout: SpiLayout::new(node_bits, node, 0, 0)?,
            outbound: HashMap::new(),
            hosts: HostCopies::default(),
        })
    }

    pub fn workers(&self) -> u16 {
        self.workers
    }

    /// The SPI layout the IKE endpoint's allocator must use, so that SPIs say their owner.
    pub fn layout(&self) -> SpiLayout {
        self.layout
    }

    /// The owner of the inbound SA with this SPI.
    pub fn inbound_owner(&self, spi: Spi) -> u16 {
        let w = self.layout.worker_of(ChildSpi(spi.0));
        u16::try_from(w % u32::from(self.workers)).unwrap_or(0)
    }

    /// The owner of outbound SA `id`, if it was placed.
    pub fn outbound_owner(&self, id: SaId) -> Option<u16> {
        self.outbound.get(&id).copied()
    }

    /// Records where an outbound SA already lives (an adopted CHILD_SA's, which the data plane
    /// kept: its owner is its inbound SA's, as at its install).
    pub fn place_adopted(&mut self, out_id: SaId, spi_in: Spi) {
        let w = self.inbound_owner(spi_in);
        self.outbound.insert(out_id, w);
    }

    fn by_address(&self, a: IpAddr) -> u16 {
        let h = match a {
            IpAddr::V4(v) => u32::from(v),
            IpAddr::V6(v) => {
                let o = v.octets();
                u32::from_be_bytes([o[12], o[13], o[14], o[15]])
            }
        };
        u16::try_from(h % u32::from(self.workers)).unwrap_or(0)
    }

    fn all(&self, u: Update) -> Vec<(u16, Update)> {
        (0..self.workers).map(|w| (w, u.clone())).collect()
    }

    /// The workers `u` goes to, each with its copy. `paired_inbound` names the inbound SPI of
    /// the CHILD_SA an outbound SA (id, SPI) belongs to, if any.
    pub fn route(
        &mut self,
        u: Update,
        paired_inbound: impl Fn(SaId, Spi) -> Option<Spi>,
    ) -> Vec<(u16, Update)> {
        match &u {
            Update::AddSa {
                dir: Direction::Inbound,
                params,
            } => vec![(self.inbound_owner(params.spi), u)],
            Update::AddSa {
                dir: Direction::Outbound,
                params,
            } => {
                let w = match paired_inbound(params.id, params.spi) {
                    Some(spi_in) => self.inbound_owner(spi_in),
                    None => self.by_address(params.remote),
                };
                self.outbound.insert(params.id, w);
                if self.workers > 1 {
                    let key = (params.local_ts, params.remote_ts);
                    self.hosts.ts.insert(params.id, key);
                    self.hosts.by_ts.entry(key).or_default().push(params.id);
                }
                vec![(w, u)]
            }
            Update::DeleteInbound { spi } => vec![(self.inbound_owner(*spi), u)],
            Update::DeleteOutbound { id } => {
                // Bindings that named this SA in place of the repository's get theirs (or
                // another sibling) back first.
                let mut v = self.forget_host_sa(*id);
                match self.outbound.remove(id) {
                    Some(w) => v.push((w, u)),
                    None => v.extend(self.all(u)),
                }
                v
            }
            Update::BindHost { dst, src, sa } if self.workers > 1 => {
                let (dst, src, sa) = (*dst, *src, *sa);
                self.unbind_copies(dst);
                self.hosts.bound.insert(dst, (src, sa));
                (0..self.workers)
                    .map(|w| (w, self.bind_for(w, dst, src, sa)))
                    .collect()
            }
            Update::BindHostDual { dst, .. } if self.workers > 1 => {
                // Replaces an ordinary binding of `dst` (and its per-worker substitutions).
                let dst = *dst;
                self.unbind_copies(dst);
                self.hosts.bound.remove(&dst);
                self.all(u)
            }
            Update::UnbindHost { dst } if self.workers > 1 => {
                let dst = *dst;
                self.unbind_copies(dst);
                self.hosts.bound.remove(&dst);
                self.all(u)
            }
            Update::ReserveSeq { id, .. }
            | Update::CapSeq { id, .. }
            | Update::ExportSa {
                sa: SaRef::Outbound(id),
            } => match self.outbound_owner(*id) {
                Some(w) => vec![(w, u)],
                None => self.all(u),
            },
            Update::ExportSa {
                sa: SaRef::Inbound(spi),
            } => vec![(self.inbound_owner(*spi), u)],
            Update::RebindOutbound {
                ids,
                local,
                remote,
                encap,
            } => {
                // One update per owner, with that owner's SAs.
                let mut per: Vec<(u16, Vec<SaId>)> = Vec::new();
                for id in ids {
                    let w = self.outbound_owner(*id);
                    let targets: Vec<u16> = match w {
                        Some(w) => vec![w],
                        None => (0..self.workers).collect(),
                    };
                    for w in targets {
                        match per.iter_mut().find(|(x, _)| *x == w) {
                            Some((_, v)) => v.push(*id),
                            None => per.push((w, vec![*id])),
                        }
                    }
                }
                per.sort_by_key(|(w, _)| *w);
                per.into_iter()
                    .map(|(w, ids)| {
                        (
                            w,
                            Update::RebindOutbound {
                                ids,
                                local: *local,
                                remote: *remote,
                                encap: *encap,
                            },
                        )
                    })
                    .collect()
            }
            Update::ReplaceSpd { rules } => {
                // Per-core CHILD_SAs (RFC 9611), or any CHILD_SAs with identical selectors:
                // each worker's copy protects with an SA it owns where one has the rule's
                // selector, so the sending worker seals with its own SA (no hand-off).
                if self.workers < 2 {
                    return vec![(0, u)];
                }
                (0..self.workers)
                    .map(|w| {
                        (
                            w,
                            Update::ReplaceSpd {
                                rules: self.rules_for(w, rules),
                            },
                        )
                    })
                    .collect()
            }
            Update::SetMasquerade { .. }
            | Update::SetVirtualIp { .. }
            | Update::BindHost { .. }
            | Update::BindHostDual { .. }
            | Update::UnbindHost { .. }
            | Update::SetWanAddresses { .. } => self.all(u),
            // A gratuitous ARP / unsolicited NA is one frame on the wire: one worker sends it.
            Update::Announce { .. } => vec![(0, u)],
            // A group SA generation lives with the worker its SPI names (as an inbound SA:
            // group SPIs all start 0xff0, so up to 256 workers put every generation on one);
            // the sending generation is named to that worker; the endpoints go everywhere
            // (only the holder reads them). See `proto::group`.
            Update::AddGroupSa { params } => vec![(self.inbound_owner(params.spi), u)],
            Update::DeleteGroupSa { spi } | Update::SendOnGroupSa { spi, .. } => {
                vec![(self.inbound_owner(*spi), u)]
            }
            Update::SetGroupPeers { .. } => self.all(u),
            // The masquerade's tables are every worker's (a flow's packets may reach any);
            // a link SA's SPI names the worker its inbound SA lives on.
            Update::MasqLinkIn { spi, .. } => vec![(self.inbound_owner(*spi), u)],
            Update::SetMasqPlane { .. }
            | Update::MasqFam { .. }
            | Update::MasqRoute { .. }
            | Update::MasqLink { .. }
            | Update::MasqUsers { .. } => self.all(u),
        }
    }

    /// Worker `w`'s binding of host `dst`: to its own outbound SA with `sa`'s selectors (the
    /// newest), else to `sa`.
    fn bind_for(&mut self, w: u16, dst: IpAddr, src: Prefix, sa: SaId) -> Update {
        let own = self
            .hosts
            .ts
            .get(&sa)
            .and_then(|k| self.hosts.by_ts.get(k))
            .and_then(|ids| {
                ids.iter()
                    .copied()
                    .filter(|id| self.outbound.get(id) == Some(&w))
                    .max_by_key(|id| id.0)
            });
        let id = match own {
            _ if self.outbound.get(&sa) == Some(&w) => sa,
            Some(mine) if mine != sa => {
                self.hosts.by_host.entry(dst).or_default().push((w, mine));
                self.hosts
                    .substituted
                    .entry(mine)
                    .or_default()
                    .push((dst, w));
                mine
            }
            _ => sa,
        };
        Update::BindHost { dst, src, sa: id }
    }

    /// Forgets the per-worker substitutions of host `dst`.
    fn unbind_copies(&mut self, dst: IpAddr) {
        for (w, id) in self.hosts.by_host.remove(&dst).unwrap_or_default() {
            if let Some(v) = self.hosts.substituted.get_mut(&id) {
                v.retain(|x| *x != (dst, w));
                if v.is_empty() {
                    self.hosts.substituted.remove(&id);
                }
            }
        }
    }

    /// Outbound SA `id` goes: out of the selector index, and every worker's binding that
    /// named it in place of the repository's SA is bound again (to the repository's SA or
    /// another sibling of that worker), before the SA's delete.
    fn forget_host_sa(&mut self, id: SaId) -> Vec<(u16, Update)> {
        if let Some(k) = self.hosts.ts.remove(&id) {
            if let Some(v) = self.hosts.by_ts.get_mut(&k) {
                v.retain(|x| *x != id);
                if v.is_empty() {
                    self.hosts.by_ts.remove(&k);
                }
            }
        }
        let Some(copies) = self.hosts.substituted.remove(&id) else {
            return Vec::new();
        };
        for (dst, w) in &copies {
            if let Some(v) = self.hosts.by_host.get_mut(dst) {
                v.retain(|x| *x != (*w, id));
                if v.is_empty() {
                    self.hosts.by_host.remove(dst);
                }
            }
        }
        copies
            .into_iter()
            .filter_map(|(dst, w)| {
                let (src, sa) = *self.hosts.bound.get(&dst)?;
                Some((w, self.bind_for(w, dst, src, sa)))
            })
            .collect()
    }

    /// Worker `w`'s copy of an SPD: a rule that protects with another worker's outbound SA
    /// takes the first SA of `w` that a rule with the same selector names, if any. A rule
    /// whose selector an earlier rule has is left out: first match wins, so it could never
    /// match (with per-core CHILD_SAs every worker's copy would otherwise hold one rule per
    /// sibling, all naming that worker's own SA: N rules per tunnel in each of N workers).
    fn rules_for(&self, w: u16, rules: &[Rule]) -> Vec<Rule> {
        let mut own: HashMap<Selector, SaId> = HashMap::new();
        for r in rules {
            if let PolicyAction::Protect(id) = r.action {
                if self.outbound_owner(id) == Some(w) {
                    own.entry(r.selector).or_insert(id);
                }
            }
        }
        let mut seen: HashSet<Selector> = HashSet::with_capacity(rules.len());
        rules
            .iter()
            .filter(|r| seen.insert(r.selector))
            .map(|r| match r.action {
                PolicyAction::Protect(id) if self.outbound_owner(id) != Some(w) => {
                    match own.get(&r.selector) {
                        Some(mine) => Rule {
                            action: PolicyAction::Protect(*mine),
                            ..*r
                        },
                        None => *r,
                    }
                }
                _ => *r,
            })
            .collect()
    }

    /// Whether worker `w` should get `u` when it restarted empty (its own SAs and what every
    /// worker needs).
    pub fn is_for(&self, w: u16, u: &Update) -> bool {
        match u {
            Update::AddSa {
                dir: Direction::Inbound,
                params,
            } => self.inbound_owner(params.spi) == w,
            Update::AddSa {
                dir: Direction::Outbound,
                params,
            } => self.outbound_owner(params.id).is_none_or(|o| o == w),
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ike::services::spi::SpiAllocator;
    use proto::sa::{AeadAlg, SaKeys, SaParams};
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};

    fn params(id: u32, spi: u32) -> SaParams {
        SaParams {
            id: SaId(id),
            spi: Spi(spi),
            keys: SaKeys::from_keymat(AeadAlg::AesGcm128, &[7; 20]).unwrap(),
            esn: true,
            replay_window: 64,
            local: "192.0.2.1".parse().unwrap(),
            remote: "192.0.2.2".parse().unwrap(),
            encap: None,
            local_ts: "10.1.0.0/24".parse().unwrap(),
            remote_ts: "10.2.0.0/24".parse().unwrap(),
            outer_ttl: 64,
            resume: Default::default(),
            checkpoint: None,
            lifetime: Default::default(),
        }
    }

    /// Every generation of a group goes to the one worker the data plane steers group ESP
    /// to, for any group SPI and up to 256 workers; the endpoints go to every worker.
    #[test]
    fn group_sas_go_to_the_worker_the_data_plane_steers_them_to() {
        use proto::group::{GroupPeer, GroupSaParams};
        for workers in [1u16, 2, 3, 4, 7, 16, 255, 256] {
            let mut p = Placement::new(workers);
            let mut owners = std::collections::BTreeSet::new();
            for spi in [0xff00_0000u32, 0xff00_0001, 0xff12_3456, 0xff7f_ffff] {
                let u = Update::AddGroupSa {
                    params: GroupSaParams {
                        id: SaId(1 << 20),
                        spi: Spi(spi),
                        keys: SaKeys::from_keymat(AeadAlg::AesGcm128, &[7; 20]).unwrap(),
                        sender_id: Some(1),
                        sender_id_bits: 8,
                        replay_window: 64,
                        src_ts: "10.0.0.0/8".parse().unwrap(),
                        dst_ts: "10.0.0.0/8".parse().unwrap(),
                        send: true,
                    },
                };
                let to: Vec<u16> = p.route(u, |_, _| None).into_iter().map(|x| x.0).collect();
                assert_eq!(to, [pipeline::handoff::spi_owner(Spi(spi), workers)]);
                let to: Vec<u16> = p
                    .route(
                        Update::SendOnGroupSa {
                            id: SaId(1 << 20),
                            spi: Spi(spi),
                        },
                        |_, _| None,
                    )
                    .into_iter()
                    .map(|x| x.0)
                    .collect();
                owners.extend(to);
            }
            assert_eq!(owners.len(), 1, "{workers} workers: {owners:?}");
            let peers = Update::SetGroupPeers {
                id: SaId(1 << 20),
                local: "192.0.2.1".parse().unwrap(),
                outer_ttl: 64,
                peers: vec![GroupPeer {
                    lan: "10.2.0.0/24".parse().unwrap(),
                    outer: "192.0.2.2".parse().unwrap(),
                }],
                rekey_multicast: None,
            };
            assert_eq!(p.route(peers, |_, _| None).len(), usize::from(workers));
        }
    }

    #[test]
    fn the_data_plane_finds_the_same_inbound_owner() {
        // The workers hand ESP to the owner by `pipeline::handoff::spi_owner`: it must name
        // the worker this placement sent the SA to, for allocated and foreign (static) SPIs.
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        for workers in 1..=9u16 {
            let p = Placement::new(workers);
            assert_eq!(
                pipeline::handoff::worker_bits(workers),
                worker_bits(workers)
            );
            let mut spis = SpiAllocator::new(p.layout()).spread_over(u32::from(workers));
            for _ in 0..64 {
                let allocated = Spi(spis.child_spi(&mut rng).0);
                let foreign = Spi(rng.next_u32());
                for spi in [allocated, foreign] {
                    assert_eq!(
                        pipeline::handoff::spi_owner(spi, workers),
                        p.inbound_owner(spi),
                        "{workers} workers, {spi:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn each_worker_binds_a_host_to_its_own_per_core_sibling_and_gets_it_back_when_it_goes() {
        // Updates have no PartialEq: compared by their Debug form.
        let d = |v: Vec<(u16, Update)>| format!("{v:?}");
        let mut p = Placement::new(2);
        // Outbound SAs 10 (its CHILD_SA's inbound SPI on worker 0) and 11 (worker 1), same
        // selectors; 12 on worker 1 with other selectors.
        let pairs = |id: SaId, _: Spi| match id.0 {
            10 => Some(Spi(0x1000_0000)),
            _ => Some(Spi(0x9000_0000)),
        };
        for id in [10, 11] {
            let u = Update::AddSa {
                dir: Direction::Outbound,
                params: params(id, 0x500 + id),
            };
            assert_eq!(p.route(u, pairs).len(), 1);
        }
        let mut other = params(12, 0x512);
        other.remote_ts = "10.3.0.0/24".parse().unwrap();
        p.route(
            Update::AddSa {
                dir: Direction::Outbound,
                params: other,
            },
            pairs,
        );
        assert_eq!(p.outbound_owner(SaId(10)), Some(0));
        assert_eq!(p.outbound_owner(SaId(11)), Some(1));
        let dst: IpAddr = "10.99.0.7".parse().unwrap();
        let src = "10.1.0.0/24".parse().unwrap();
        let bind = |sa: u32| Update::BindHost {
            dst,
            src,
            sa: SaId(sa),
        };
        assert_eq!(
            d(p.route(bind(10), pairs)),
            d(vec![(0, bind(10)), (1, bind(11))]),
            "worker 1 seals with its own sibling"
        );
        // 11 goes: worker 1 is bound to 10 again before the delete reaches it.
        assert_eq!(
            d(p.route(Update::DeleteOutbound { id: SaId(11) }, pairs)),
            d(vec![
                (1, bind(10)),
                (1, Update::DeleteOutbound { id: SaId(11) })
            ])
        );
        // Without a sibling on the worker, the repository's SA for all.
        assert_eq!(
            d(p.route(bind(10), pairs)),
            d(vec![(0, bind(10)), (1, bind(10))])
        );
        // On probation (dual path): every worker gets it as it is (the copy is made only
        // where the SA lives), and an earlier binding's substitutions are forgotten.
        p.route(bind(10), pairs);
        let dual = Update::BindHostDual {
            dst,
            src,
            sa: SaId(10),
        };
        assert_eq!(
            d(p.route(dual.clone(), pairs)),
            d(vec![(0, dual.clone()), (1, dual)])
        );
        assert!(!p.hosts.bound.contains_key(&dst));
        // One worker: the update as it is.
        let mut one = Placement::new(1);
        assert_eq!(d(one.route(bind(10), pairs)), d(vec![(0, bind(10))]));
    }

    #[test]
    fn worker_bits_cover_the_workers() {
        assert_eq!(
            [1, 2, 3, 4, 5, 8, 9].map(worker_bits),
            [0, 1, 2, 2, 3, 3, 4]
        );
    }

    #[test]
    fn an_sa_goes_to_its_owner_only_and_shared_state_to_every_worker() {
        let mut p = Placement::new(4);
        let mut spis = SpiAllocator::new(p.layout()).spread_over(4);
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        for k in 0..16u32 {
            let spi_in = Spi(spis.child_spi(&mut rng).0);
            let owner = p.inbound_owner(spi_in);
            assert_eq!(u32::from(owner), k % 4, "SPIs take the workers in turn");
            let add_in = Update::AddSa {
                dir: Direction::Inbound,
                params: params(2 * k, spi_in.0),
            };
            let routed = p.route(add_in, |_, _| None);
            assert_eq!(routed.len(), 1);
            assert_eq!(routed[0].0, owner);
            // Its outbound SA follows it.
            let add_out = Update::AddSa {
                dir: Direction::Outbound,
                params: params(2 * k + 1, 0x1000 + k),
            };
            let routed = p.route(add_out, |id, _| (id.0 == 2 * k + 1).then_some(spi_in));
            assert_eq!(routed.iter().map(|r| r.0).collect::<Vec<_>>(), [owner]);
            let del = p.route(
                Update::DeleteOutbound {
                    id: SaId(2 * k + 1),
                },
                |_, _| None,
            );
            assert_eq!(del.iter().map(|r| r.0).collect::<Vec<_>>(), [owner]);
            let del = p.route(Update::DeleteInbound { spi: spi_in }, |_, _| None);
            assert_eq!(del.iter().map(|r| r.0).collect::<Vec<_>>(), [owner]);
        }
        let spd = p.route(Update::ReplaceSpd { rules: vec![] }, |_, _| None);
        assert_eq!(spd.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1, 2, 3]);
    }

    #[test]
    fn a_rebind_is_split_by_owner() {
        let mut p = Placement::new(2);
        for (id, w) in [(10u32, 0u16), (11, 1), (12, 0)] {
            p.outbound.insert(SaId(id), w);
        }
        let r = p.route(
            Update::RebindOutbound {
                ids: vec![SaId(10), SaId(11), SaId(12)],
                local: "192.0.2.9".parse().unwrap(),
                remote: "192.0.2.2".parse().unwrap(),
                encap: None,
            },
            |_, _| None,
        );
        let got: Vec<(u16, Vec<SaId>)> = r
            .into_iter()
            .map(|(w, u)| match u {
                Update::RebindOutbound { ids, .. } => (w, ids),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(got, [(0, vec![SaId(10), SaId(12)]), (1, vec![SaId(11)])]);
    }

    #[test]
    fn one_worker_owns_everything() {
        let mut p = Placement::new(1);
        for spi in [0x100u32, 0xdead_beef, u32::MAX] {
            assert_eq!(p.inbound_owner(Spi(spi)), 0);
        }
        let r = p.route(
            Update::AddSa {
                dir: Direction::Outbound,
                params: params(1, 0x4242),
            },
            |_, _| None,
        );
        assert_eq!(r[0].0, 0);
    }
}
