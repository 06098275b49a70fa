//! The replicated state of a pair: what the active holds and the standby mirrors.
//!
//! This module owns the [`Table`] and the one rule every record is applied by: idempotent and
//! versioned. An IKE SA, a CHILD SA or a lease changes only for a newer version (a deletion
//! leaves a tombstone with its version, so a late older record cannot bring it back); sequence
//! checkpoints, grants and replay marks only move up. Applying a record twice, or an older one
//! after a newer one, changes nothing. It also turns the table back into records (a snapshot).
//! It never decides what to send and never talks to a data plane.

use std::collections::BTreeMap;
use std::net::IpAddr;

use proto::sa::{ReplayState, SaParams};
use proto::{Direction, SaId};
use zeroize::Zeroizing;

use super::record::{ChildKey, Record};

/// One CHILD SA direction in the table.
#[derive(Clone, Debug)]
pub struct ChildEntry {
    pub version: u64,
    pub params: Box<SaParams>,
    /// Outbound: the last sequence number reported used.
    pub checkpoint: u64,
    /// Outbound: the highest number any grant covered (the fence).
    pub fence: u64,
    /// Inbound: the last replicated anti-replay window.
    pub replay: Option<ReplayState>,
}

/// Something that was there at `version` and is gone.
#[derive(Clone, Copy, Debug)]
struct Tombstone(u64);

/// An IKE SA record: its version and the ike crate's bytes.
type IkeEntry = (u64, Zeroizing<Vec<u8>>);

/// The state of a pair.
#[derive(Default)]
pub struct Table {
    ike: BTreeMap<u64, Result<IkeEntry, Tombstone>>,
    children: BTreeMap<ChildKey, Result<ChildEntry, Tombstone>>,
    leases: BTreeMap<IpAddr, Result<(u64, u64), Tombstone>>,
    /// Marks for outbound SAs whose install has not arrived yet (a checkpoint or grant can
    /// overtake nothing in an ordered log, but a snapshot sends installs first anyway).
    early: BTreeMap<SaId, (u64, u64)>,
}

/// What applying a record did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Changed,
    /// Older than or equal to what the table holds: nothing changed.
    Stale,
    /// A control record (snapshot bounds, handover): for the pair, not the table.
    Control,
}

impl Table {
    /// Applies one record.
    pub fn apply(&mut self, rec: &Record) -> Applied {
        match rec {
            Record::IkeSa { id, version, bytes } => {
                if newer(self.ike.get(id).map(|e| e.as_ref().map(|v| v.0)), *version) {
                    self.ike.insert(*id, Ok((*version, bytes.clone())));
                    return Applied::Changed;
                }
            }
            Record::IkeSaGone { id, version } => {
                if newer(self.ike.get(id).map(|e| e.as_ref().map(|v| v.0)), *version) {
                    self.ike.insert(*id, Err(Tombstone(*version)));
                    return Applied::Changed;
                }
            }
            Record::ChildSa {
                version,
                dir,
                params,
            } => {
                let key = ChildKey::new(*dir, params.id);
                let old = self.children.get(&key);
                if newer(old.map(|e| e.as_ref().map(|c| c.version)), *version) {
                    // A CHILD SA's sequence state survives a newer install of the same SA (a
                    // rebind): it never moves down.
                    let (mut checkpoint, mut fence) = match old {
                        Some(Ok(c)) => (c.checkpoint, c.fence),
                        _ => (0, 0),
                    };
                    if *dir == Direction::Outbound {
                        if let Some((c, f)) = self.early.remove(&params.id) {
                            checkpoint = checkpoint.max(c);
                            fence = fence.max(f);
                        }
                        checkpoint = checkpoint.max(params.resume.seq);
                        fence = fence.max(params.resume.seq);
                    }
                    let replay = match old {
                        Some(Ok(c)) => c.replay.clone(),
                        _ => params.resume.replay.clone(),
                    };
                    self.children.insert(
                        key,
                        Ok(ChildEntry {
                            version: *version,
                            params: params.clone(),
                            checkpoint,
                            fence,
                            replay,
                        }),
                    );
                    return Applied::Changed;
                }
            }
            Record::ChildSaGone { key, version } => {
                if newer(
                    self.children
                        .get(key)
                        .map(|e| e.as_ref().map(|c| c.version)),
                    *version,
                ) {
                    self.children.insert(*key, Err(Tombstone(*version)));
                    return Applied::Changed;
                }
            }
            Record::SeqCheckpoint { id, seq } => {
                return self.raise(*id, *seq, 0);
            }
            Record::SeqGrant { id, up_to } => {
                return self.raise(*id, 0, *up_to);
            }
            Record::ReplayMark { id, replay } => {
                let key = ChildKey::new(Direction::Inbound, *id);
                if let Some(Ok(c)) = self.children.get_mut(&key) {
                    if c.replay.as_ref().is_none_or(|r| replay.top > r.top) {
                        c.replay = Some(replay.clone());
                        return Applied::Changed;
                    }
                }
            }
            Record::Lease { addr, ike, version } => {
                if newer(
                    self.leases.get(addr).map(|e| e.as_ref().map(|v| v.0)),
                    *version,
                ) {
                    self.leases.insert(*addr, Ok((*version, *ike)));
                    return Applied::Changed;
                }
            }
            Record::LeaseGone { addr, version } => {
                if newer(
                    self.leases.get(addr).map(|e| e.as_ref().map(|v| v.0)),
                    *version,
                ) {
                    self.leases.insert(*addr, Err(Tombstone(*version)));
                    return Applied::Changed;
                }
            }
            Record::SnapshotBegin { .. } | Record::SnapshotEnd { .. } | Record::Handover { .. } => {
                return Applied::Control
            }
        }
        Applied::Stale
    }

    fn raise(&mut self, id: SaId, checkpoint: u64, fence: u64) -> Applied {
        let key = ChildKey::new(Direction::Outbound, id);
        match self.children.get_mut(&key) {
            Some(Ok(c)) => {
                let before = (c.checkpoint, c.fence);
                c.checkpoint = c.checkpoint.max(checkpoint);
                c.fence = c.fence.max(fence).max(c.checkpoint);
                if (c.checkpoint, c.fence) != before {
                    return Applied::Changed;
                }
                Applied::Stale
            }
            Some(Err(_)) => Applied::Stale,
            None => {
                let e = self.early.entry(id).or_insert((0, 0));
                e.0 = e.0.max(checkpoint);
                e.1 = e.1.max(fence);
                Applied::Changed
            }
        }
    }

    /// Forgets everything (a resync starts from nothing but the snapshot).
    pub fn clear(&mut self) {
        *self = Table::default();
    }

    /// The live CHILD SA directions.
    pub fn children(&self) -> impl Iterator<Item = (&ChildKey, &ChildEntry)> {
        self.children
            .iter()
            .filter_map(|(k, e)| e.as_ref().ok().map(|c| (k, c)))
    }

    pub fn child(&self, key: &ChildKey) -> Option<&ChildEntry> {
        self.children.get(key).and_then(|e| e.as_ref().ok())
    }

    /// The live IKE SA records.
    /// The highest version of any IKE SA, CHILD SA or lease record the table holds
    /// (tombstones included): a node that becomes active numbers its records above it.
    pub fn max_version(&self) -> u64 {
        let ike = self.ike.values().map(|e| match e {
            Ok((v, _)) => *v,
            Err(Tombstone(v)) => *v,
        });
        let children = self.children.values().map(|e| match e {
            Ok(c) => c.version,
            Err(Tombstone(v)) => *v,
        });
        let leases = self.leases.values().map(|e| match e {
            Ok((v, _)) => *v,
            Err(Tombstone(v)) => *v,
        });
        ike.chain(children).chain(leases).max().unwrap_or(0)
    }

    pub fn ike_sas(&self) -> impl Iterator<Item = (u64, u64, &[u8])> {
        self.ike
            .iter()
            .filter_map(|(id, e)| e.as_ref().ok().map(|(v, b)| (*id, *v, b.as_slice())))
    }

    /// The live leases: address -> IKE SA id.
    pub fn leases(&self) -> impl Iterator<Item = (IpAddr, u64)> + '_ {
        self.leases
            .iter()
            .filter_map(|(a, e)| e.as_ref().ok().map(|(_, ike)| (*a, *ike)))
    }

    /// The whole table as records (installs before their marks), tombstones included (a
    /// standby that held something the snapshot deleted learns it is gone).
    pub fn snapshot(&self) -> Vec<Record> {
        let mut out = Vec::new();
        for (id, e) in &self.ike {
            out.push(match e {
                Ok((version, bytes)) => Record::IkeSa {
                    id: *id,
                    version: *version,
                    bytes: bytes.clone(),
                },
                Err(Tombstone(version)) => Record::IkeSaGone {
                    id: *id,
                    version: *version,
                },
            });
        }
        for (key, e) in &self.children {
            match e {
                Ok(c) => {
                    out.push(Record::ChildSa {
                        version: c.version,
                        dir: key.dir(),
                        params: c.params.clone(),
                    });
                    if key.dir_out {
                        out.push(Record::SeqCheckpoint {
                            id: key.id,
                            seq: c.checkpoint,
                        });
                        out.push(Record::SeqGrant {
                            id: key.id,
                            up_to: c.fence,
                        });
                    } else if let Some(r) = &c.replay {
                        out.push(Record::ReplayMark {
                            id: key.id,
                            replay: r.clone(),
                        });
                    }
                }
                Err(Tombstone(version)) => out.push(Record::ChildSaGone {
                    key: *key,
                    version: *version,
                }),
            }
        }
        for (addr, e) in &self.leases {
            out.push(match e {
                Ok((version, ike)) => Record::Lease {
                    addr: *addr,
                    ike: *ike,
                    version: *version,
                },
                Err(Tombstone(version)) => Record::LeaseGone {
                    addr: *addr,
                    version: *version,
                },
            });
        }
        out
    }

    /// Drops the tombstones (a bound on what deletions cost: only where no older record can
    /// arrive any more, i.e. on a node that is not receiving a log).
    pub fn compact(&mut self) {
        self.ike.retain(|_, e| e.is_ok());
        self.children.retain(|_, e| e.is_ok());
        self.leases.retain(|_, e| e.is_ok());
    }

    /// A digest of the live state (tests compare the two nodes' tables with it).
    pub fn summary(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .ike_sas()
            .map(|(id, ver, b)| format!("ike {id} v{ver} {}", b.len()))
            .collect();
        v.extend(self.children().map(|(k, c)| {
            format!(
                "child {:?} v{} spi {:#x} cp {} fence {} replay {:?}",
                k,
                c.version,
                c.params.spi.0,
                c.checkpoint,
                c.fence,
                c.replay.as_ref().map(|r| r.top)
            )
        }));
        v.extend(self.leases().map(|(a, i)| format!("lease {a} {i}")));
        v
    }
}

fn newer(held: Option<Result<u64, &Tombstone>>, version: u64) -> bool {
    match held {
        None => true,
        Some(Ok(v)) => version > v,
        Some(Err(Tombstone(v))) => version > *v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::testing::child_params;

    #[test]
    fn records_apply_idempotently_and_never_go_back() {
        let mut t = Table::default();
        let install = Record::ChildSa {
            version: 2,
            dir: Direction::Outbound,
            params: Box::new(child_params(SaId(1), 0x100)),
        };
        assert_eq!(t.apply(&install), Applied::Changed);
        assert_eq!(t.apply(&install), Applied::Stale);
        let older = Record::ChildSa {
            version: 1,
            dir: Direction::Outbound,
            params: Box::new(child_params(SaId(1), 0x999)),
        };
        assert_eq!(t.apply(&older), Applied::Stale);
        let key = ChildKey::new(Direction::Outbound, SaId(1));
        assert_eq!(t.child(&key).unwrap().params.spi.0, 0x100);

        t.apply(&Record::SeqGrant {
            id: SaId(1),
            up_to: 500,
        });
        t.apply(&Record::SeqCheckpoint {
            id: SaId(1),
            seq: 100,
        });
        assert_eq!(
            t.apply(&Record::SeqGrant {
                id: SaId(1),
                up_to: 400
            }),
            Applied::Stale
        );
        assert_eq!(
            t.apply(&Record::SeqCheckpoint {
                id: SaId(1),
                seq: 50
            }),
            Applied::Stale
        );
        let c = t.child(&key).unwrap();
        assert_eq!((c.checkpoint, c.fence), (100, 500));

        // A deletion beats an older install; a newer install after it comes back.
        t.apply(&Record::ChildSaGone { key, version: 3 });
        assert!(t.child(&key).is_none());
        assert_eq!(t.apply(&install), Applied::Stale);
    }

    #[test]
    fn a_snapshot_rebuilds_the_same_table() {
        let mut a = Table::default();
        for i in 1..5u32 {
            for dir in [Direction::Inbound, Direction::Outbound] {
                a.apply(&Record::ChildSa {
                    version: 1,
                    dir,
                    params: Box::new(child_params(SaId(i), 0x100 + i)),
                });
            }
            a.apply(&Record::SeqGrant {
                id: SaId(i),
                up_to: 1000 * u64::from(i),
            });
            a.apply(&Record::ReplayMark {
                id: SaId(i),
                replay: ReplayState {
                    top: 77,
                    seen: vec![1],
                },
            });
            a.apply(&Record::IkeSa {
                id: u64::from(i),
                version: 1,
                bytes: Zeroizing::new(vec![i as u8; 40]),
            });
        }
        a.apply(&Record::Lease {
            addr: "10.99.0.3".parse().unwrap(),
            ike: 3,
            version: 1,
        });
        a.apply(&Record::IkeSaGone { id: 2, version: 2 });
        let mut b = Table::default();
        // Something the active deleted meanwhile: the tombstone removes it.
        b.apply(&Record::IkeSa {
            id: 2,
            version: 1,
            bytes: Zeroizing::new(vec![0; 3]),
        });
        for r in a.snapshot() {
            b.apply(&r);
        }
        assert_eq!(a.summary(), b.summary());
        assert!(!b.summary().iter().any(|s| s.starts_with("ike 2 ")));
    }
}

#[cfg(test)]
mod max_version_tests {
    use super::*;

    #[test]
    fn the_highest_version_counts_tombstones_too() {
        let mut t = Table::default();
        assert_eq!(t.max_version(), 0);
        t.apply(&Record::IkeSa {
            id: 1,
            version: 5,
            bytes: Zeroizing::new(vec![1, 2, 3]),
        });
        t.apply(&Record::IkeSaGone { id: 2, version: 9 });
        t.apply(&Record::Lease {
            addr: "10.99.0.1".parse().unwrap(),
            ike: 1,
            version: 3,
        });
        assert_eq!(t.max_version(), 9);
        // A record below that is stale: what a node that took over must number above.
        t.apply(&Record::IkeSa {
            id: 1,
            version: 4,
            bytes: Zeroizing::new(vec![9]),
        });
        assert_eq!(
            t.ike_sas().next().map(|(_, v, b)| (v, b.to_vec())),
            Some((5, vec![1, 2, 3]))
        );
    }
}
