//! The typed SA repository over a [`Store`]: records in, records out, sealed on the way.
//!
//! A write is a batch ([`Txn`]) that the caller fills with [`ClusterStore::put`] and
//! [`ClusterStore::delete`] (and, for an owner's write, [`ClusterStore::when`]) and submits
//! as one transaction. Reads ([`ClusterStore::load`]) and watch events come back decoded;
//! a key outside the layout, a value that does not open (tampered, moved, another cluster
//! key) or does not decode is never returned: it is counted in [`RepoStats`] and logged with
//! its key (never its bytes).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::keys::{Layout, Name, RecordKey};
use super::record::{EncodeError, Record};
use super::seal::{SealError, Sealer};
use super::{
    Change, Event, Kv, LeaseId, Reply, Request, Revision, Store, StoreError, Ticket, Txn, WatchId,
};

/// Records that were read and not returned.
#[derive(Debug, Default)]
pub struct RepoStats {
    /// Keys under the cluster's root that are not of the layout.
    pub bad_key: AtomicU64,
    /// Values that did not open with the cluster key at their key (also counted by the
    /// sealer).
    pub refused: AtomicU64,
    /// Values that opened but did not decode, or whose kind does not match their key.
    pub bad_value: AtomicU64,
}

/// Why a record was not written.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("a {record} record cannot be stored at {key:?}")]
    KindMismatch {
        record: &'static str,
        key: RecordKey,
    },
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// One decoded record with its revisions.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: RecordKey,
    pub record: Record,
    pub mod_revision: Revision,
    pub lease: i64,
}

/// Typed events of [`ClusterStore::poll`].
#[derive(Debug, PartialEq)]
pub enum Update {
    Done {
        ticket: Ticket,
        result: Result<Reply, StoreError>,
    },
    Put {
        watch: WatchId,
        entry: Entry,
    },
    Deleted {
        watch: WatchId,
        key: RecordKey,
        revision: Revision,
    },
    /// Replace everything the watch covers with `entries` (its resume point was compacted).
    Resync {
        watch: WatchId,
        entries: Vec<Entry>,
        revision: Revision,
    },
}

/// The repository of one cluster over a store backend.
pub struct ClusterStore<S: Store> {
    store: S,
    layout: Layout,
    sealer: Arc<Sealer>,
    pub stats: RepoStats,
    raw: Vec<Event>,
}

fn kind(rec: &Record) -> &'static str {
    match rec {
        Record::IkeSa { .. } => "IKE SA",
        Record::Child { .. } => "CHILD SA",
        Record::Placement { .. } => "placement",
        Record::Seq { .. } => "sequence",
        Record::Edge { .. } => "edge",
        Record::SpiBlock { .. } => "SPI block",
    }
}

fn fits(key: &RecordKey, rec: &Record) -> bool {
    match (key, rec) {
        (RecordKey::Ike(k), Record::IkeSa { id, .. }) => k == id,
        (RecordKey::Child(spi), Record::Child { inbound, .. }) => {
            inbound.as_ref().is_none_or(|p| p.spi.0 == *spi)
        }
        (RecordKey::Placement(_), Record::Placement { .. })
        | (RecordKey::Seq(_), Record::Seq { .. })
        | (RecordKey::Edge(_), Record::Edge { .. })
        | (RecordKey::SpiBlock(_), Record::SpiBlock { .. }) => true,
        _ => false,
    }
}

impl<S: Store> ClusterStore<S> {
    pub fn new(store: S, cluster: &Name, sealer: Arc<Sealer>) -> ClusterStore<S> {
        ClusterStore {
            store,
            layout: Layout::new(cluster),
            sealer,
            stats: RepoStats::default(),
            raw: Vec::new(),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn store(&mut self) -> &mut S {
        &mut self.store
    }

    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// Adds a sealed put of `rec` at `key` to the batch.
    pub fn put(
        &self,
        batch: &mut Txn,
        key: &RecordKey,
        rec: &Record,
        lease: Option<LeaseId>,
    ) -> Result<(), PutError> {
        if !fits(key, rec) {
            return Err(PutError::KindMismatch {
                record: kind(rec),
                key: key.clone(),
            });
        }
        let path = self.layout.key(key);
        let plain = rec.encode()?;
        let value = self.sealer.seal(&path, &plain)?;
        batch.put(path, value, lease);
        Ok(())
    }

    pub fn delete(&self, batch: &mut Txn, key: &RecordKey) {
        batch.delete(self.layout.key(key));
    }

    /// The batch applies only if `key` is still at `mod_revision` (0: absent).
    pub fn when(&self, batch: &mut Txn, key: &RecordKey, mod_revision: Revision) {
        batch.when(self.layout.key(key), mod_revision);
    }

    pub fn submit(&mut self, batch: Txn) -> Result<Ticket, StoreError> {
        self.store.submit(Request::Txn(batch))
    }

    /// Decodes one stored value, or counts why not.
    pub fn decode(&self, kv: &Kv) -> Option<Entry> {
        let Some(key) = self.layout.parse(&kv.key) else {
            self.stats.bad_key.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "control", key = %String::from_utf8_lossy(&kv.key),
                "cluster store: a key outside the layout, ignored");
            return None;
        };
        let plain = match self.sealer.open(&kv.key, &kv.value) {
            Ok(p) => p,
            Err(_) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "control", key = %String::from_utf8_lossy(&kv.key),
                    "cluster store: a value that does not open with the cluster key (tampered, moved or another key), refused");
                return None;
            }
        };
        match Record::decode(&plain) {
            Ok(record) if fits(&key, &record) => Some(Entry {
                key,
                record,
                mod_revision: kv.mod_revision,
                lease: kv.lease,
            }),
            other => {
                self.stats.bad_value.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "control", key = %String::from_utf8_lossy(&kv.key),
                    error = ?other.err(), "cluster store: a value that does not decode for its key, ignored");
                None
            }
        }
    }

    /// Every record under `kind` (a prefix of [`Layout::prefix`], `""` for all) and the
    /// revision they were read at (watch from `revision + 1` to follow on).
    pub fn load(
        &mut self,
        kind: &str,
        timeout: Duration,
    ) -> Result<(Vec<Entry>, Revision), StoreError> {
        let prefix = self.layout.prefix(kind);
        match self.store.call(Request::Range { prefix }, timeout)? {
            Reply::Range { kvs, revision } => Ok((
                kvs.iter().filter_map(|kv| self.decode(kv)).collect(),
                revision,
            )),
            other => Err(StoreError::Refused(format!("unexpected reply {other:?}"))),
        }
    }

    /// Watches `kind` from `from` (0: from now).
    pub fn watch(&mut self, kind: &str, from: Revision) -> Result<Ticket, StoreError> {
        let prefix = self.layout.prefix(kind);
        self.store.submit(Request::Watch { prefix, from })
    }

    /// Completions and decoded watch events, in order, without blocking.
    pub fn poll(&mut self, out: &mut Vec<Update>) {
        self.store.poll(&mut self.raw);
        let raw = std::mem::take(&mut self.raw);
        for ev in raw {
            match ev {
                Event::Done { ticket, result } => out.push(Update::Done { ticket, result }),
                Event::Changes { watch, changes } => {
                    for c in changes {
                        match c {
                            Change::Put(kv) => {
                                if let Some(entry) = self.decode(&kv) {
                                    out.push(Update::Put { watch, entry });
                                }
                            }
                            Change::Delete { key, mod_revision } => match self.layout.parse(&key) {
                                Some(key) => out.push(Update::Deleted {
                                    watch,
                                    key,
                                    revision: mod_revision,
                                }),
                                None => {
                                    self.stats.bad_key.fetch_add(1, Ordering::Relaxed);
                                }
                            },
                        }
                    }
                }
                Event::Resync {
                    watch,
                    kvs,
                    revision,
                } => out.push(Update::Resync {
                    watch,
                    entries: kvs.iter().filter_map(|kv| self.decode(kv)).collect(),
                    revision,
                }),
            }
        }
    }

    /// Raises the outbound sequence checkpoint of `spi` to `seq` unless the store already
    /// holds a higher one (compare-on-revision: concurrent reporters cannot move it down).
    /// Returns the checkpoint the store holds afterwards.
    pub fn raise_seq(
        &mut self,
        spi: u32,
        seq: u64,
        reporter: &Name,
        at_ms: u64,
        timeout: Duration,
    ) -> Result<u64, StoreError> {
        let key = RecordKey::Seq(spi);
        let path = self.layout.key(&key);
        // A few rounds: each lost race means someone else raised it meanwhile.
        for _ in 0..16 {
            let (current, rev) = match self.store.call(
                Request::Range {
                    prefix: path.clone(),
                },
                timeout,
            )? {
                Reply::Range { kvs, .. } => match kvs.iter().find(|kv| kv.key == path) {
                    Some(kv) => match self.decode(kv) {
                        Some(Entry {
                            record: Record::Seq { seq, .. },
                            ..
                        }) => (Some(seq), kv.mod_revision),
                        // Unreadable: overwrite it (counted by decode).
                        _ => (None, kv.mod_revision),
                    },
                    None => (None, 0),
                },
                other => return Err(StoreError::Refused(format!("unexpected reply {other:?}"))),
            };
            if let Some(cur) = current {
                if cur >= seq {
                    return Ok(cur);
                }
            }
            let mut t = Txn::default();
            t.when(path.clone(), rev);
            let rec = Record::Seq {
                seq,
                at_ms,
                reporter: reporter.to_string(),
            };
            self.put(&mut t, &key, &rec, None)
                .map_err(|e| StoreError::Refused(e.to_string()))?;
            if let Reply::Txn {
                succeeded: true, ..
            } = self.store.call(Request::Txn(t), timeout)?
            {
                return Ok(seq);
            }
        }
        Err(StoreError::Refused(
            "sequence checkpoint contended 16 times".into(),
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::cluster::store::mem::MemStore;
    use crate::ha::testing::child_params;
    use proto::SaId;
    use zeroize::Zeroizing;

    const T: Duration = Duration::from_secs(1);

    fn repo() -> ClusterStore<MemStore> {
        ClusterStore::new(
            MemStore::new(),
            &Name::new("test").unwrap(),
            Arc::new(Sealer::new(Zeroizing::new([3; 32]))),
        )
    }

    fn client_batch(r: &ClusterStore<MemStore>, i: u32, edge: u16) -> Txn {
        let spi = 0xc000_0000 | i;
        let mut t = Txn::default();
        r.put(
            &mut t,
            &RecordKey::Ike(u64::from(i)),
            &Record::IkeSa {
                id: u64::from(i),
                version: 1,
                bytes: Zeroizing::new(vec![0x42; 200]),
            },
            None,
        )
        .unwrap();
        r.put(
            &mut t,
            &RecordKey::Child(spi),
            &Record::Child {
                version: 1,
                inbound: Some(Box::new(child_params(SaId(i), spi))),
                outbound: Some(Box::new(child_params(SaId(i | 0x100), 0xd000_0000 | i))),
                fence: 1 << 20,
            },
            None,
        )
        .unwrap();
        r.put(
            &mut t,
            &RecordKey::Placement(spi),
            &Record::Placement {
                at_ms: 10,
                drain_start: 0,
                edges: vec![(edge, 1)],
            },
            None,
        )
        .unwrap();
        t
    }

    #[test]
    fn records_round_trip_sealed_and_a_second_node_recovers_them() {
        let mut r = repo();
        for i in 0..5 {
            let t = client_batch(&r, i, 1);
            r.store().call(Request::Txn(t), T).unwrap();
        }
        let (all, rev) = r.load("", T).unwrap();
        assert_eq!(all.len(), 15);
        assert_eq!(rev, r.store().revision());
        // No plaintext in the store.
        let Ok(Reply::Range { kvs, .. }) = r.store().call(
            Request::Range {
                prefix: b"/roamgate/".to_vec(),
            },
            T,
        ) else {
            panic!()
        };
        assert!(kvs
            .iter()
            .all(|kv| !kv.value.windows(8).any(|w| w == [0x42; 8])));
        let (ikes, _) = r.load("ike/", T).unwrap();
        assert_eq!(ikes.len(), 5);
        assert!(
            matches!(&ikes[2].record, Record::IkeSa { id: 2, bytes, .. } if bytes.len() == 200)
        );
    }

    #[test]
    fn a_record_of_the_wrong_kind_for_its_key_is_not_written() {
        let r = repo();
        let mut t = Txn::default();
        let e = r
            .put(
                &mut t,
                &RecordKey::Ike(1),
                &Record::IkeSa {
                    id: 2,
                    version: 1,
                    bytes: Zeroizing::new(vec![]),
                },
                None,
            )
            .unwrap_err();
        assert!(matches!(e, PutError::KindMismatch { .. }));
        let e = r.put(
            &mut t,
            &RecordKey::Child(2),
            &Record::Child {
                version: 1,
                inbound: Some(Box::new(child_params(SaId(1), 1))),
                outbound: None,
                fence: 0,
            },
            None,
        );
        assert!(e.is_err());
        assert!(t.ops.is_empty());
    }

    #[test]
    fn tampered_or_moved_values_are_refused_and_counted_never_returned() {
        let mut r = repo();
        let t = client_batch(&r, 1, 1);
        r.store().call(Request::Txn(t), T).unwrap();
        let ike = r.layout().key(&RecordKey::Ike(1));
        let Ok(Reply::Range { kvs, .. }) = r.store().call(
            Request::Range {
                prefix: ike.clone(),
            },
            T,
        ) else {
            panic!()
        };
        // Someone with write access to etcd but not the cluster key: flips a byte, and copies
        // a sealed value to another SA's key.
        let mut bad = kvs[0].value.clone();
        let n = bad.len();
        bad[n - 20] ^= 0x80;
        let mut t = Txn::default();
        t.put(ike.clone(), bad, None);
        t.put(
            r.layout().key(&RecordKey::Ike(2)),
            kvs[0].value.clone(),
            None,
        );
        t.put(b"/roamgate/test/ike/zz".to_vec(), vec![1], None);
        r.store().call(Request::Txn(t), T).unwrap();
        let (ikes, _) = r.load("ike/", T).unwrap();
        assert!(ikes.is_empty(), "{ikes:?}");
        assert_eq!(r.stats.refused.load(Ordering::Relaxed), 2);
        assert_eq!(r.stats.bad_key.load(Ordering::Relaxed), 1);
        assert_eq!(r.sealer().stats.refused.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn watch_gives_decoded_changes_and_a_resync_after_compaction() {
        let mut r = repo();
        let t = client_batch(&r, 1, 1);
        r.store().call(Request::Txn(t), T).unwrap();
        let (_, rev) = r.load("", T).unwrap();
        let wt = r.watch("", rev + 1).unwrap();
        let t = client_batch(&r, 2, 1);
        r.submit(t).unwrap();
        let mut out = Vec::new();
        r.poll(&mut out);
        let watch = match &out[0] {
            Update::Done {
                ticket,
                result: Ok(Reply::Watching(w)),
            } if *ticket == wt => *w,
            other => panic!("{other:?}"),
        };
        let puts = out
            .iter()
            .filter(|u| matches!(u, Update::Put { watch: w, entry } if *w == watch && entry.mod_revision == rev + 1))
            .count();
        assert_eq!(puts, 3);
        // Compact past the revision and watch from before it: a resync with both clients.
        let now = r.store().revision();
        r.store().call(Request::Compact(now), T).unwrap();
        r.watch("", rev).unwrap();
        out.clear();
        r.poll(&mut out);
        assert!(out.iter().any(|u| matches!(u, Update::Resync { entries, revision, .. } if entries.len() == 6 && *revision == now)));
    }

    #[test]
    fn the_sequence_checkpoint_only_moves_up() {
        let mut r = repo();
        let a = Name::new("edge-a").unwrap();
        let b = Name::new("edge-b").unwrap();
        assert_eq!(r.raise_seq(7, 100, &a, 1, T).unwrap(), 100);
        assert_eq!(r.raise_seq(7, 50, &b, 2, T).unwrap(), 100);
        assert_eq!(r.raise_seq(7, 150, &b, 3, T).unwrap(), 150);
        let (seqs, _) = r.load("seq/", T).unwrap();
        assert!(
            matches!(&seqs[0].record, Record::Seq { seq: 150, reporter, .. } if reporter == "edge-b")
        );
    }

    #[test]
    fn an_edge_key_goes_with_its_lease() {
        let mut r = repo();
        let Ok(Reply::Lease { id, .. }) = r.store().call(Request::LeaseGrant { ttl_s: 3 }, T)
        else {
            panic!()
        };
        let edge = Name::new("edge-c").unwrap();
        let mut t = Txn::default();
        r.put(
            &mut t,
            &RecordKey::Edge(edge.clone()),
            &Record::Edge {
                address: "127.0.0.1:4700".into(),
                started_ms: 0,
                incarnation: 1,
            },
            Some(id),
        )
        .unwrap();
        r.store().call(Request::Txn(t), T).unwrap();
        assert_eq!(r.load("edges/", T).unwrap().0.len(), 1);
        r.store().advance(3_000);
        assert!(r.load("edges/", T).unwrap().0.is_empty());
    }
}
