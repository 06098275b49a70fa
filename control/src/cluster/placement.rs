//! The cluster's SA repository, in memory: every CHILD SA direction the crypto node installed
//! (its `proto` record), where it is placed (which edges hold it), the host bindings per
//! edge, and the freshest sequence state of every outbound SA (the edges' reports).
//!
//! The etcd store (issue 18 item 4, `cluster::store`) will keep the same records under its
//! key layout; this type is what the crypto node asks, and the in-memory answer the
//! virtual-time tests run on.
//!
//! An outbound SA is placed on one edge at a time: its sequence number is its AES-GCM nonce,
//! and two edges sending under one key would reuse nonces. [`SaPlacement::place`] refuses a
//! second holder; a move ([`SaPlacement::move_outbound`], issue 18 item 6) takes the SA off
//! the old edge and resumes it on the new one above its *fence*: the highest reservation
//! ever granted to any edge for it ([`SeqState::fence`]; the argument is in
//! `docs/architecture.md`, "Edge-to-edge move"). The edges it left may keep their copy as a
//! *drain* ([`SaPlacement::move_outbound_draining`]) until the LAN's route follows: they are
//! never granted numbers again, so they send only below the holder's start (disjoint ranges).
//!
//! Owns: the records, their placement, the sequence reports and fences, the host bindings.
//! Must never: place an outbound SA on two edges (a drain is not a placement: it gets no
//! numbers); lower a sequence report or a fence.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use proto::sa::SaParams;
use proto::{Direction, SaId, Spi};

use super::msg::EdgeId;

/// The freshest sequence state known of one outbound SA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqState {
    /// The highest sequence number an edge reported used (0: none yet).
    pub seq: u64,
    /// The edge that reported it.
    pub by: Option<EdgeId>,
    /// The report was the SA's final state (it left that edge).
    pub final_state: bool,
    /// The highest sequence number any edge was ever allowed to send under this SA (its
    /// reservations, granted only by the crypto node): no edge can have sent above it.
    pub fence: u64,
}

/// One SA direction and where it is.
#[derive(Clone, Debug)]
pub struct SaRecord {
    pub params: SaParams,
    pub edges: BTreeSet<EdgeId>,
}

/// Why a placement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    #[error("outbound SA {id} is on edge {holder} already: one edge at a time sends under a key")]
    OutboundElsewhere { id: u32, holder: EdgeId },
}

#[derive(Default, Debug)]
pub struct SaPlacement {
    inbound: BTreeMap<Spi, SaRecord>,
    outbound: BTreeMap<SaId, SaRecord>,
    seq: BTreeMap<SaId, SeqState>,
    /// Host bindings (a virtual IP -> the edges that hold it).
    bound: BTreeMap<IpAddr, BTreeSet<EdgeId>>,
    /// Host bindings' contents (a virtual IP -> its source prefix and outbound SA): they
    /// follow their outbound SA when it moves (the LAN return path).
    hosts: BTreeMap<IpAddr, (proto::policy::Prefix, SaId)>,
    /// Outbound SAs that moved, still held (with their host bindings) by the edges they left
    /// until the LAN's traffic for the client reaches the holder ([`Drain`]).
    draining: BTreeMap<SaId, Drain>,
}

/// The edges an outbound SA moved away from that keep it (and its host bindings) until the
/// LAN's route for the client follows the move: they may send only up to the reservation
/// they had (never raised again), all below the holder's start, so the number ranges are
/// disjoint (`docs/architecture.md`, "The LAN return path").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drain {
    /// The holder's start (its first number is above it): a checkpoint of the holder above
    /// it says the LAN's traffic reaches the holder, and the drain ends.
    pub holder_start: u64,
    pub edges: BTreeSet<EdgeId>,
}

impl SaPlacement {
    /// Records `params` placed on `edge`. An inbound SA may be on several edges; an outbound
    /// one on `edge` only (replacing the record is fine on the same edge).
    pub fn place(
        &mut self,
        dir: Direction,
        params: &SaParams,
        edge: EdgeId,
    ) -> Result<(), PlaceError> {
        match dir {
            Direction::Inbound => {
                let r = self.inbound.entry(params.spi).or_insert_with(|| SaRecord {
                    params: params.clone(),
                    edges: BTreeSet::new(),
                });
                r.params = params.clone();
                r.edges.insert(edge);
            }
            Direction::Outbound => {
                if let Some(r) = self.outbound.get(&params.id) {
                    if let Some(h) = r.edges.iter().find(|e| **e != edge) {
                        return Err(PlaceError::OutboundElsewhere {
                            id: params.id.0,
                            holder: *h,
                        });
                    }
                }
                self.outbound.insert(
                    params.id,
                    SaRecord {
                        params: params.clone(),
                        edges: BTreeSet::from([edge]),
                    },
                );
                self.seq.entry(params.id).or_default();
            }
        }
        Ok(())
    }

    /// The record of inbound SA `spi` (an on-demand carrier sends it).
    pub fn inbound_params(&self, spi: Spi) -> Option<SaParams> {
        self.inbound.get(&spi).map(|r| r.params.clone())
    }

    /// The record of outbound SA `id`.
    pub fn outbound_params(&self, id: SaId) -> Option<&SaParams> {
        self.outbound.get(&id).map(|r| &r.params)
    }

    /// Every inbound SA's SPI.
    pub fn inbound_spis(&self) -> Vec<Spi> {
        self.inbound.keys().copied().collect()
    }

    /// The edges that hold inbound SA `spi`.
    pub fn inbound_edges(&self, spi: Spi) -> BTreeSet<EdgeId> {
        self.inbound
            .get(&spi)
            .map(|r| r.edges.clone())
            .unwrap_or_default()
    }

    /// The edge that holds outbound SA `id`.
    pub fn outbound_edges(&self, id: SaId) -> BTreeSet<EdgeId> {
        self.outbound
            .get(&id)
            .map(|r| r.edges.clone())
            .unwrap_or_default()
    }

    pub fn remove_inbound(&mut self, spi: Spi) -> BTreeSet<EdgeId> {
        self.inbound
            .remove(&spi)
            .map(|r| r.edges)
            .unwrap_or_default()
    }

    /// Removes outbound SA `id`: the edges to tell are its holder and the edges still
    /// draining it.
    pub fn remove_outbound(&mut self, id: SaId) -> BTreeSet<EdgeId> {
        self.seq.remove(&id);
        let mut edges = self
            .outbound
            .remove(&id)
            .map(|r| r.edges)
            .unwrap_or_default();
        edges.extend(
            self.draining
                .remove(&id)
                .map(|d| d.edges)
                .unwrap_or_default(),
        );
        edges
    }

    /// The edges that still hold outbound SA `id` after it moved away from them (they send
    /// on it only what the LAN still routes to them, below the holder's start).
    pub fn draining_edges(&self, id: SaId) -> BTreeSet<EdgeId> {
        self.draining
            .get(&id)
            .map(|d| d.edges.clone())
            .unwrap_or_default()
    }

    /// The holder of outbound SA `id` reported `seq`: if it is above the holder's start (it
    /// sealed LAN traffic for the client), the drain ends. Returns the edges that must now
    /// delete their copy and host bindings (empty: nothing drains, or not yet).
    pub fn end_drain(&mut self, id: SaId, seq: u64) -> BTreeSet<EdgeId> {
        match self.draining.get(&id) {
            Some(d) if seq > d.holder_start => self
                .draining
                .remove(&id)
                .map(|d| d.edges)
                .unwrap_or_default(),
            _ => BTreeSet::new(),
        }
    }

    /// Every SA still draining somewhere: (outbound id, edges).
    pub fn drains(&self) -> Vec<(SaId, BTreeSet<EdgeId>)> {
        self.draining
            .iter()
            .map(|(id, d)| (*id, d.edges.clone()))
            .collect()
    }

    /// A partial update of an outbound SA's tunnel (MOBIKE): the record follows.
    pub fn rebind(
        &mut self,
        id: SaId,
        local: IpAddr,
        remote: IpAddr,
        encap: Option<proto::sa::UdpEncap>,
    ) {
        if let Some(r) = self.outbound.get_mut(&id) {
            r.params.local = local;
            r.params.remote = remote;
            r.params.encap = encap;
        }
    }

    /// Binds `dst` to outbound SA `sa` held by `edges`. Returns the edges whose binding of
    /// `dst` is now stale: `dst` was bound to another SA (a rekey) and they do not hold the new
    /// one (the client's path moved before the rekey, as strongSwan's kernel-libipsec does
    /// after a MOBIKE update); they must drop it. The binding is then where the new SA is.
    pub fn bind(
        &mut self,
        dst: IpAddr,
        src: proto::policy::Prefix,
        sa: SaId,
        edges: &BTreeSet<EdgeId>,
    ) -> BTreeSet<EdgeId> {
        let before = self.hosts.insert(dst, (src, sa));
        let bound = self.bound.entry(dst).or_default();
        if before.is_some_and(|(_, old)| old != sa) {
            let stale = bound.difference(edges).copied().collect();
            *bound = edges.clone();
            return stale;
        }
        bound.extend(edges);
        BTreeSet::new()
    }

    /// Removes the host binding of `dst`: the edges to tell are those bound and those still
    /// draining its outbound SA (they keep the binding while they drain).
    pub fn unbind(&mut self, dst: IpAddr) -> BTreeSet<EdgeId> {
        let sa = self.hosts.remove(&dst).map(|(_, sa)| sa);
        let mut edges = self.bound.remove(&dst).unwrap_or_default();
        if let Some(sa) = sa {
            edges.extend(self.draining_edges(sa));
        }
        edges
    }

    /// The host bindings that protect with outbound SA `id`: (virtual IP, source prefix).
    pub fn hosts_of(&self, id: SaId) -> Vec<(IpAddr, proto::policy::Prefix)> {
        self.hosts
            .iter()
            .filter(|(_, (_, sa))| *sa == id)
            .map(|(dst, (src, _))| (*dst, *src))
            .collect()
    }

    /// Every host binding and the edges that hold it (the LAN return path: traffic to the
    /// virtual IP must reach one of these edges).
    pub fn host_edges(&self) -> Vec<(IpAddr, BTreeSet<EdgeId>)> {
        self.bound.iter().map(|(d, e)| (*d, e.clone())).collect()
    }

    /// Records that reservation `up_to` of outbound SA `id` was (or is about to be) sent to
    /// an edge: the fence only moves up. Returns the fence.
    pub fn grant(&mut self, id: SaId, up_to: u64) -> u64 {
        let Some(s) = self.seq.get_mut(&id) else {
            return 0;
        };
        s.fence = s.fence.max(up_to);
        s.fence
    }

    /// Moves outbound SA `id` to edge `to` (the old holder must have been told to delete it,
    /// or be unable to send above the fence: it never gets a reservation again), with its
    /// host bindings. Returns the old holders, or None if the repository does not hold `id`.
    pub fn move_outbound(&mut self, id: SaId, to: EdgeId) -> Option<BTreeSet<EdgeId>> {
        let r = self.outbound.get_mut(&id)?;
        let old = std::mem::replace(&mut r.edges, BTreeSet::from([to]));
        for (dst, (_, sa)) in &self.hosts {
            if *sa == id {
                self.bound.insert(*dst, BTreeSet::from([to]));
            }
        }
        if let Some(d) = self.draining.get_mut(&id) {
            // Back to an edge that still drains it: that copy is replaced (above the fence).
            d.edges.remove(&to);
            if d.edges.is_empty() {
                self.draining.remove(&id);
            }
        }
        Some(old)
    }

    /// Like [`SaPlacement::move_outbound`], but the old holders keep their copy (and host
    /// bindings) as a *drain* until the new holder reports a number above `holder_start`
    /// ([`SaPlacement::end_drain`]): the LAN's route for the client still leads there for a
    /// while after the move. They never get a reservation again (the caller's `refill` asks
    /// [`SaPlacement::outbound_edges`], which names only the holder).
    pub fn move_outbound_draining(
        &mut self,
        id: SaId,
        to: EdgeId,
        holder_start: u64,
    ) -> Option<BTreeSet<EdgeId>> {
        let old = self.move_outbound(id, to)?;
        let d = self.draining.entry(id).or_default();
        d.holder_start = holder_start;
        d.edges.extend(old.iter().filter(|e| **e != to));
        if d.edges.is_empty() {
            self.draining.remove(&id);
        }
        Some(old)
    }

    /// Takes edge `edge` off inbound SA `spi` (its client moved away).
    pub fn unplace_inbound(&mut self, spi: Spi, edge: EdgeId) -> bool {
        self.inbound
            .get_mut(&spi)
            .is_some_and(|r| r.edges.remove(&edge))
    }

    /// An edge's sequence report of outbound SA `id`: kept if it is the freshest (reports only
    /// move up; an SA the repository does not hold is ignored: false).
    pub fn report_seq(&mut self, edge: EdgeId, id: SaId, seq: u64, final_state: bool) -> bool {
        let Some(s) = self.seq.get_mut(&id) else {
            return false;
        };
        if seq >= s.seq {
            *s = SeqState {
                seq,
                by: Some(edge),
                final_state,
                fence: s.fence.max(seq),
            };
        }
        true
    }

    /// The freshest sequence state of outbound SA `id`.
    pub fn freshest_seq(&self, id: SaId) -> Option<SeqState> {
        self.seq.get(&id).copied()
    }

    /// An edge lost everything (its data plane restarted empty, or it went for good): it
    /// holds nothing any more. Returns the outbound SA ids it held.
    pub fn forget_edge(&mut self, edge: EdgeId) -> Vec<SaId> {
        for r in self.inbound.values_mut() {
            r.edges.remove(&edge);
        }
        let mut gone = Vec::new();
        for (id, r) in self.outbound.iter_mut() {
            if r.edges.remove(&edge) {
                gone.push(*id);
            }
        }
        for e in self.bound.values_mut() {
            e.remove(&edge);
        }
        // A drain it held is simply over (the holder is elsewhere: nothing to rekey).
        self.draining.retain(|_, d| {
            d.edges.remove(&edge);
            !d.edges.is_empty()
        });
        gone
    }

    /// What edge `edge` holds: (inbound SPIs, outbound ids).
    pub fn held_by(&self, edge: EdgeId) -> (Vec<Spi>, Vec<SaId>) {
        (
            self.inbound
                .iter()
                .filter(|(_, r)| r.edges.contains(&edge))
                .map(|(s, _)| *s)
                .collect(),
            self.outbound
                .iter()
                .filter(|(id, r)| {
                    r.edges.contains(&edge)
                        || self
                            .draining
                            .get(id)
                            .is_some_and(|d| d.edges.contains(&edge))
                })
                .map(|(i, _)| *i)
                .collect(),
        )
    }

    /// (inbound, outbound) records.
    pub fn counts(&self) -> (usize, usize) {
        (self.inbound.len(), self.outbound.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::testing::child_params;

    #[test]
    fn an_outbound_sa_has_one_edge_and_an_inbound_one_may_have_several() {
        let mut p = SaPlacement::default();
        let o = child_params(SaId(1), 0x100);
        p.place(Direction::Outbound, &o, 1).unwrap();
        p.place(Direction::Outbound, &o, 1).unwrap();
        assert_eq!(
            p.place(Direction::Outbound, &o, 2),
            Err(PlaceError::OutboundElsewhere { id: 1, holder: 1 })
        );
        let i = child_params(SaId(2), 0x200);
        p.place(Direction::Inbound, &i, 1).unwrap();
        p.place(Direction::Inbound, &i, 2).unwrap();
        assert_eq!(p.inbound_edges(Spi(0x200)), BTreeSet::from([1, 2]));
        assert_eq!(p.outbound_edges(SaId(1)), BTreeSet::from([1]));
        assert_eq!(p.forget_edge(1), vec![SaId(1)]);
        assert_eq!(p.inbound_edges(Spi(0x200)), BTreeSet::from([2]));
        // Once the old edge is gone, the SA may be placed elsewhere (a move does this after
        // resuming it above the freshest report).
        p.place(Direction::Outbound, &o, 2).unwrap();
    }

    #[test]
    fn sequence_reports_only_move_up_and_say_who_reported() {
        let mut p = SaPlacement::default();
        p.place(Direction::Outbound, &child_params(SaId(1), 0x100), 1)
            .unwrap();
        assert!(p.report_seq(1, SaId(1), 500, false));
        assert!(p.report_seq(2, SaId(1), 400, false));
        assert_eq!(
            p.freshest_seq(SaId(1)),
            Some(SeqState {
                seq: 500,
                by: Some(1),
                final_state: false,
                fence: 500,
            })
        );
        assert!(p.report_seq(1, SaId(1), 900, true));
        assert_eq!(p.freshest_seq(SaId(1)).unwrap().seq, 900);
        assert!(!p.report_seq(1, SaId(77), 1, false));
        p.remove_outbound(SaId(1));
        assert_eq!(p.freshest_seq(SaId(1)), None);
    }

    #[test]
    fn a_move_takes_the_outbound_sa_and_its_host_bindings_to_the_new_edge_and_fences_only_rise() {
        let mut p = SaPlacement::default();
        let o = child_params(SaId(1), 0x100);
        p.place(Direction::Outbound, &o, 1).unwrap();
        let vip: IpAddr = "10.99.0.1".parse().unwrap();
        let src: proto::policy::Prefix = "10.9.0.0/24".parse().unwrap();
        p.bind(vip, src, SaId(1), &BTreeSet::from([1]));
        assert_eq!(p.grant(SaId(1), 1000), 1000);
        assert_eq!(p.grant(SaId(1), 10), 1000, "a fence never goes down");
        assert_eq!(
            p.grant(SaId(9), 10),
            0,
            "an SA the repository does not hold"
        );
        p.report_seq(1, SaId(1), 1500, false);
        assert_eq!(p.freshest_seq(SaId(1)).unwrap().fence, 1500);
        assert_eq!(p.move_outbound(SaId(1), 2), Some(BTreeSet::from([1])));
        assert_eq!(p.outbound_edges(SaId(1)), BTreeSet::from([2]));
        assert_eq!(p.host_edges(), vec![(vip, BTreeSet::from([2]))]);
        assert_eq!(p.hosts_of(SaId(1)), vec![(vip, src)]);
        assert_eq!(p.move_outbound(SaId(7), 2), None);
        // The old edge can no longer be placed the SA while the new one holds it.
        assert!(p.place(Direction::Outbound, &o, 1).is_err());
    }

    #[test]
    fn a_binding_to_a_new_sa_elsewhere_leaves_the_old_edges_stale() {
        let mut p = SaPlacement::default();
        let vip: IpAddr = "10.99.0.1".parse().unwrap();
        let src: proto::policy::Prefix = "10.9.0.0/24".parse().unwrap();
        assert!(p.bind(vip, src, SaId(1), &BTreeSet::from([1])).is_empty());
        // The same SA again (another edge took a copy): added.
        assert!(p.bind(vip, src, SaId(1), &BTreeSet::from([2])).is_empty());
        assert_eq!(p.host_edges(), vec![(vip, BTreeSet::from([1, 2]))]);
        // A rekey placed the new SA at edge 2: edge 1's binding is stale.
        assert_eq!(
            p.bind(vip, src, SaId(3), &BTreeSet::from([2])),
            BTreeSet::from([1])
        );
        assert_eq!(p.host_edges(), vec![(vip, BTreeSet::from([2]))]);
        assert_eq!(p.hosts_of(SaId(3)), vec![(vip, src)]);
        // A rekey on the same edge: nothing stale.
        assert!(p.bind(vip, src, SaId(4), &BTreeSet::from([2])).is_empty());
    }

    #[test]
    fn a_drained_move_keeps_the_old_edges_until_the_holder_reports_above_its_start() {
        let mut p = SaPlacement::default();
        let o = child_params(SaId(1), 0x100);
        p.place(Direction::Outbound, &o, 1).unwrap();
        let vip: IpAddr = "10.99.0.1".parse().unwrap();
        let src: proto::policy::Prefix = "10.9.0.0/24".parse().unwrap();
        p.bind(vip, src, SaId(1), &BTreeSet::from([1]));
        // 1 -> 2 (drain on 1), then 2 -> 3 before it ended (drain on 1 and 2).
        p.move_outbound_draining(SaId(1), 2, 1000).unwrap();
        assert_eq!(p.outbound_edges(SaId(1)), BTreeSet::from([2]));
        assert_eq!(p.draining_edges(SaId(1)), BTreeSet::from([1]));
        assert_eq!(
            p.host_edges(),
            vec![(vip, BTreeSet::from([2]))],
            "designation"
        );
        assert_eq!(p.held_by(1).1, vec![SaId(1)], "a drain still holds it");
        p.move_outbound_draining(SaId(1), 3, 2000).unwrap();
        assert_eq!(p.draining_edges(SaId(1)), BTreeSet::from([1, 2]));
        // Only a number above the holder's latest start ends it.
        assert!(p.end_drain(SaId(1), 2000).is_empty());
        assert_eq!(p.end_drain(SaId(1), 2001), BTreeSet::from([1, 2]));
        assert!(p.drains().is_empty());
        // Back to an edge that drains it: that edge holds it, the one it left drains.
        p.move_outbound_draining(SaId(1), 1, 3000).unwrap();
        p.move_outbound_draining(SaId(1), 3, 4000).unwrap();
        p.move_outbound_draining(SaId(1), 1, 5000).unwrap();
        assert_eq!(p.outbound_edges(SaId(1)), BTreeSet::from([1]));
        assert_eq!(p.draining_edges(SaId(1)), BTreeSet::from([3]));
        // An edge that loses everything leaves its drain without a rekey (not "gone").
        assert!(p.forget_edge(3).is_empty());
        assert!(p.drains().is_empty());
        // Unbinding and removing reach the draining edges too.
        p.move_outbound_draining(SaId(1), 2, 6000).unwrap();
        assert_eq!(p.unbind(vip), BTreeSet::from([1, 2]));
        assert_eq!(p.remove_outbound(SaId(1)), BTreeSet::from([1, 2]));
        assert!(p.drains().is_empty());
    }
}
