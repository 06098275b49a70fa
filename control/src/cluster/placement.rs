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
//! second holder; a move (issue 18 item 6) will take the SA off the old edge, resume it on
//! the new one above [`SaPlacement::freshest_seq`] plus a jump (the HA argument), and only
//! then place it there.
//!
//! Owns: the records, their placement, the sequence reports. Must never: place an outbound
//! SA on two edges; lower a sequence report.

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

    pub fn remove_outbound(&mut self, id: SaId) -> BTreeSet<EdgeId> {
        self.seq.remove(&id);
        self.outbound
            .remove(&id)
            .map(|r| r.edges)
            .unwrap_or_default()
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

    pub fn bind(&mut self, dst: IpAddr, edges: &BTreeSet<EdgeId>) {
        self.bound.entry(dst).or_default().extend(edges);
    }

    pub fn unbind(&mut self, dst: IpAddr) -> BTreeSet<EdgeId> {
        self.bound.remove(&dst).unwrap_or_default()
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
                .filter(|(_, r)| r.edges.contains(&edge))
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
                final_state: false
            })
        );
        assert!(p.report_seq(1, SaId(1), 900, true));
        assert_eq!(p.freshest_seq(SaId(1)).unwrap().seq, 900);
        assert!(!p.report_seq(1, SaId(77), 1, false));
        p.remove_outbound(SaId(1));
        assert_eq!(p.freshest_seq(SaId(1)), None);
    }
}
