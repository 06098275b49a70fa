//! The in-memory backend: etcd's semantics (revisions, transactions, prefix watches with
//! history and compaction, leases) with no thread and no clock, for virtual-time tests.
//!
//! Every request completes inside [`Store::submit`]; watch events are queued in the order the
//! changes were made. Leases expire only when the test moves time with [`MemStore::advance`].
//! It enforces etcd's limits that a batch could otherwise pass here and fail on etcd: at most
//! `max_txn_ops` operations (etcd's `--max-txn-ops`, 128 by default) and no key twice in one
//! transaction.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use super::{
    Change, Event, Kv, LeaseId, Op, Reply, Request, Revision, Store, StoreError, Ticket, Txn,
    WatchId,
};

/// etcd's default `--max-txn-ops`.
pub const ETCD_MAX_TXN_OPS: usize = 128;

struct Lease {
    ttl_s: i64,
    deadline_ms: u64,
    keys: BTreeSet<Vec<u8>>,
}

struct Watch {
    prefix: Vec<u8>,
}

/// The memory store. `now_ms` is virtual time.
pub struct MemStore {
    kvs: BTreeMap<Vec<u8>, Kv>,
    revision: Revision,
    compacted: Revision,
    /// Every change since `compacted` (inclusive), in order.
    history: Vec<Change>,
    leases: BTreeMap<i64, Lease>,
    next_lease: i64,
    watches: BTreeMap<u64, Watch>,
    next_watch: u64,
    next_ticket: u64,
    events: VecDeque<Event>,
    now_ms: u64,
    max_txn_ops: usize,
    /// Tests: transactions held back and applied newest first every `n`-th poll (etcd
    /// applies concurrent transactions in no promised order).
    reorder: Option<(u32, u32)>,
    deferred: Vec<(Ticket, Request)>,
}

impl Default for MemStore {
    fn default() -> Self {
        MemStore::new()
    }
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore {
            kvs: BTreeMap::new(),
            revision: 1, // etcd starts at 1
            compacted: 0,
            history: Vec::new(),
            leases: BTreeMap::new(),
            next_lease: 0x1000,
            watches: BTreeMap::new(),
            next_watch: 1,
            next_ticket: 1,
            events: VecDeque::new(),
            now_ms: 0,
            max_txn_ops: ETCD_MAX_TXN_OPS,
            reorder: None,
            deferred: Vec::new(),
        }
    }

    /// From now on transactions are applied late and out of order: held back, and applied
    /// newest first at every `every`-th [`Store::poll`] (or a `wait`), as concurrent
    /// transactions may be by etcd.
    pub fn reorder_transactions(&mut self, every: u32) {
        self.reorder = Some((every.max(1), 0));
    }

    fn apply_deferred(&mut self) {
        while let Some((ticket, req)) = self.deferred.pop() {
            let result = self.handle(req);
            self.events.push_back(Event::Done { ticket, result });
        }
    }

    /// The current revision.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Moves virtual time to `now_ms` (never back): expired leases are revoked, each in one
    /// revision that deletes its keys, as etcd does.
    pub fn advance(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let expired: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline_ms <= self.now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.revoke(id);
        }
    }

    fn revoke(&mut self, id: i64) -> bool {
        let Some(lease) = self.leases.remove(&id) else {
            return false;
        };
        let ops: Vec<Op> = lease
            .keys
            .into_iter()
            .map(|key| Op::Delete { key })
            .collect();
        self.apply(&ops);
        true
    }

    fn ticket(&mut self) -> Ticket {
        let t = Ticket(self.next_ticket);
        self.next_ticket = self.next_ticket.wrapping_add(1);
        t
    }

    fn txn(&mut self, txn: &Txn) -> Result<Reply, StoreError> {
        if txn.ops.len() > self.max_txn_ops {
            return Err(StoreError::Refused(
                "too many operations in txn request".into(),
            ));
        }
        let mut seen = BTreeSet::new();
        for op in &txn.ops {
            let key = match op {
                Op::Put { key, lease, .. } => {
                    if let Some(l) = lease {
                        if !self.leases.contains_key(&l.0) {
                            return Err(StoreError::LeaseNotFound(l.0));
                        }
                    }
                    key
                }
                Op::Delete { key } => key,
            };
            if !seen.insert(key.as_slice()) {
                return Err(StoreError::Refused(
                    "duplicate key given in txn request".into(),
                ));
            }
        }
        let holds = txn
            .compare
            .iter()
            .all(|c| self.kvs.get(&c.key).map_or(0, |kv| kv.mod_revision) == c.mod_revision);
        if holds {
            self.apply(&txn.ops);
        }
        Ok(Reply::Txn {
            succeeded: holds,
            revision: self.revision,
        })
    }

    /// Applies ops at the next revision (if any changes something) and queues watch events.
    fn apply(&mut self, ops: &[Op]) {
        let rev = self.revision.saturating_add(1);
        let mut changes = Vec::new();
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    let create_revision = self.kvs.get(key).map_or(rev, |kv| kv.create_revision);
                    if let Some(old) = self.kvs.get(key) {
                        if old.lease != 0 {
                            if let Some(l) = self.leases.get_mut(&old.lease) {
                                l.keys.remove(key);
                            }
                        }
                    }
                    let lease = lease.map_or(0, |l| l.0);
                    if let Some(l) = self.leases.get_mut(&lease) {
                        l.keys.insert(key.clone());
                    }
                    let kv = Kv {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision,
                        mod_revision: rev,
                        lease,
                    };
                    self.kvs.insert(key.clone(), kv.clone());
                    changes.push(Change::Put(kv));
                }
                Op::Delete { key } => {
                    if let Some(old) = self.kvs.remove(key) {
                        if let Some(l) = self.leases.get_mut(&old.lease) {
                            l.keys.remove(key);
                        }
                        changes.push(Change::Delete {
                            key: key.clone(),
                            mod_revision: rev,
                        });
                    }
                }
            }
        }
        if changes.is_empty() {
            return;
        }
        self.revision = rev;
        for (id, w) in &self.watches {
            let mine: Vec<Change> = changes
                .iter()
                .filter(|c| c.key().starts_with(&w.prefix))
                .cloned()
                .collect();
            if !mine.is_empty() {
                self.events.push_back(Event::Changes {
                    watch: WatchId(*id),
                    changes: mine,
                });
            }
        }
        self.history.extend(changes);
    }

    fn range(&self, prefix: &[u8]) -> Vec<Kv> {
        self.kvs
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect()
    }

    fn watch(&mut self, prefix: Vec<u8>, from: Revision) -> WatchId {
        let id = self.next_watch;
        self.next_watch = self.next_watch.wrapping_add(1);
        if from > 0 && from < self.compacted {
            self.events.push_back(Event::Resync {
                watch: WatchId(id),
                kvs: self.range(&prefix),
                revision: self.revision,
            });
        } else if from > 0 {
            let past: Vec<Change> = self
                .history
                .iter()
                .filter(|c| c.revision() >= from && c.key().starts_with(&prefix))
                .cloned()
                .collect();
            if !past.is_empty() {
                self.events.push_back(Event::Changes {
                    watch: WatchId(id),
                    changes: past,
                });
            }
        }
        self.watches.insert(id, Watch { prefix });
        WatchId(id)
    }

    fn handle(&mut self, req: Request) -> Result<Reply, StoreError> {
        match req {
            Request::Txn(txn) => self.txn(&txn),
            Request::Range { prefix } => Ok(Reply::Range {
                kvs: self.range(&prefix),
                revision: self.revision,
            }),
            Request::Watch { prefix, from } => Ok(Reply::Watching(self.watch(prefix, from))),
            Request::CancelWatch(id) => match self.watches.remove(&id.0) {
                Some(_) => Ok(Reply::Done),
                None => Err(StoreError::NoWatch(id.0)),
            },
            Request::LeaseGrant { ttl_s } => {
                let id = self.next_lease;
                self.next_lease = self.next_lease.saturating_add(1);
                let ttl_s = ttl_s.max(1);
                self.leases.insert(
                    id,
                    Lease {
                        ttl_s,
                        deadline_ms: self.deadline(ttl_s),
                        keys: BTreeSet::new(),
                    },
                );
                Ok(Reply::Lease {
                    id: LeaseId(id),
                    ttl_s,
                })
            }
            Request::LeaseKeepAlive(id) => {
                let now = self.now_ms;
                match self.leases.get_mut(&id.0) {
                    Some(l) => {
                        l.deadline_ms = now.saturating_add(secs_ms(l.ttl_s));
                        Ok(Reply::Lease { id, ttl_s: l.ttl_s })
                    }
                    None => Err(StoreError::LeaseNotFound(id.0)),
                }
            }
            Request::LeaseRevoke(id) => match self.revoke(id.0) {
                true => Ok(Reply::Done),
                false => Err(StoreError::LeaseNotFound(id.0)),
            },
            Request::Compact(rev) => {
                if rev <= self.compacted {
                    return Err(StoreError::Compacted(self.compacted));
                }
                if rev > self.revision {
                    return Err(StoreError::Refused(
                        "mvcc: required revision is a future revision".into(),
                    ));
                }
                self.compacted = rev;
                self.history.retain(|c| c.revision() >= rev);
                Ok(Reply::Done)
            }
        }
    }

    fn deadline(&self, ttl_s: i64) -> u64 {
        self.now_ms.saturating_add(secs_ms(ttl_s))
    }
}

fn secs_ms(s: i64) -> u64 {
    u64::try_from(s).unwrap_or(0).saturating_mul(1000)
}

impl Store for MemStore {
    fn submit(&mut self, req: Request) -> Result<Ticket, StoreError> {
        let ticket = self.ticket();
        if self.reorder.is_some() && matches!(req, Request::Txn(_)) {
            self.deferred.push((ticket, req));
            return Ok(ticket);
        }
        let result = self.handle(req);
        self.events.push_back(Event::Done { ticket, result });
        Ok(ticket)
    }

    fn poll(&mut self, out: &mut Vec<Event>) {
        if let Some((every, n)) = &mut self.reorder {
            *n = n.wrapping_add(1);
            if *n % *every == 0 {
                self.apply_deferred();
            }
        }
        out.extend(self.events.drain(..));
    }

    fn wait(&mut self, ticket: Ticket, _timeout: Duration) -> Result<Reply, StoreError> {
        self.apply_deferred();
        let pos = self
            .events
            .iter()
            .position(|e| matches!(e, Event::Done { ticket: t, .. } if *t == ticket));
        match pos.and_then(|p| self.events.remove(p)) {
            Some(Event::Done { result, .. }) => result,
            // Every request completes in submit: a ticket not queued was already polled.
            _ => Err(StoreError::Timeout),
        }
    }
}

#[cfg(test)]
#[allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(1);

    fn put(s: &mut MemStore, k: &str, v: &str) -> Revision {
        let mut t = Txn::default();
        t.put(k.into(), v.into(), None);
        match s.call(Request::Txn(t), T) {
            Ok(Reply::Txn {
                succeeded: true,
                revision,
            }) => revision,
            other => panic!("{other:?}"),
        }
    }

    fn drain(s: &mut MemStore) -> Vec<Event> {
        let mut v = Vec::new();
        s.poll(&mut v);
        v
    }

    #[test]
    fn a_txn_is_one_revision_and_compares_guard_it() {
        let mut s = MemStore::new();
        let r1 = put(&mut s, "/a/1", "x");
        let mut t = Txn::default();
        t.put("/a/2".into(), "y".into(), None).delete("/a/1".into());
        let Ok(Reply::Txn { revision: r2, .. }) = s.call(Request::Txn(t), T) else {
            panic!()
        };
        assert_eq!(r2, r1 + 1);
        // A compare on a stale revision fails and changes nothing.
        let mut t = Txn::default();
        t.when("/a/2".into(), r1)
            .put("/a/2".into(), "z".into(), None);
        assert_eq!(
            s.call(Request::Txn(t), T),
            Ok(Reply::Txn {
                succeeded: false,
                revision: r2
            })
        );
        // Create-if-absent: mod revision 0.
        let mut t = Txn::default();
        t.when("/a/3".into(), 0)
            .put("/a/3".into(), "n".into(), None);
        assert!(matches!(
            s.call(Request::Txn(t.clone()), T),
            Ok(Reply::Txn {
                succeeded: true,
                ..
            })
        ));
        assert!(matches!(
            s.call(Request::Txn(t), T),
            Ok(Reply::Txn {
                succeeded: false,
                ..
            })
        ));
        let Ok(Reply::Range { kvs, revision }) = s.call(
            Request::Range {
                prefix: "/a/".into(),
            },
            T,
        ) else {
            panic!()
        };
        assert_eq!(revision, s.revision());
        let keys: Vec<_> = kvs.iter().map(|kv| kv.key.clone()).collect();
        assert_eq!(keys, vec![b"/a/2".to_vec(), b"/a/3".to_vec()]);
    }

    #[test]
    fn etcd_limits_are_enforced() {
        let mut s = MemStore::new();
        let mut t = Txn::default();
        for i in 0..=ETCD_MAX_TXN_OPS {
            t.put(format!("/k/{i}").into(), vec![], None);
        }
        assert!(matches!(
            s.call(Request::Txn(t), T),
            Err(StoreError::Refused(_))
        ));
        let mut t = Txn::default();
        t.put("/k".into(), vec![], None).delete("/k".into());
        assert!(matches!(
            s.call(Request::Txn(t), T),
            Err(StoreError::Refused(_))
        ));
        let mut t = Txn::default();
        t.put("/k".into(), vec![], Some(LeaseId(77)));
        assert_eq!(
            s.call(Request::Txn(t), T),
            Err(StoreError::LeaseNotFound(77))
        );
    }

    #[test]
    fn watch_replays_history_in_order_then_follows() {
        let mut s = MemStore::new();
        let r1 = put(&mut s, "/w/a", "1");
        put(&mut s, "/other", "x");
        put(&mut s, "/w/b", "2");
        drain(&mut s);
        let Ok(Reply::Watching(w)) = s.call(
            Request::Watch {
                prefix: "/w/".into(),
                from: r1,
            },
            T,
        ) else {
            panic!()
        };
        let ev = drain(&mut s);
        let Some(Event::Changes { watch, changes }) = ev.first() else {
            panic!("{ev:?}")
        };
        assert_eq!(*watch, w);
        let revs: Vec<_> = changes.iter().map(|c| c.revision()).collect();
        assert_eq!(revs, vec![r1, r1 + 2]);
        let r4 = put(&mut s, "/w/a", "3");
        let ev = drain(&mut s);
        assert!(ev.iter().any(|e| matches!(e, Event::Changes { changes, .. } if changes.len() == 1 && changes[0].revision() == r4)));
    }

    #[test]
    fn a_watch_from_a_compacted_revision_resyncs_and_continues() {
        let mut s = MemStore::new();
        let r1 = put(&mut s, "/w/a", "1");
        put(&mut s, "/w/b", "2");
        let r3 = put(&mut s, "/w/a", "3");
        assert_eq!(s.call(Request::Compact(r3), T), Ok(Reply::Done));
        drain(&mut s);
        let Ok(Reply::Watching(_)) = s.call(
            Request::Watch {
                prefix: "/w/".into(),
                from: r1,
            },
            T,
        ) else {
            panic!()
        };
        let ev = drain(&mut s);
        match ev.as_slice() {
            [Event::Resync { kvs, revision, .. }] => {
                assert_eq!(*revision, r3);
                assert_eq!(kvs.len(), 2);
                assert_eq!(kvs[0].value, b"3");
            }
            other => panic!("{other:?}"),
        }
        // From the compaction point itself: the history is there.
        s.call(
            Request::Watch {
                prefix: "/w/".into(),
                from: r3,
            },
            T,
        )
        .ok();
        assert!(
            matches!(drain(&mut s).as_slice(), [Event::Changes { changes, .. }] if changes.len() == 1)
        );
    }

    #[test]
    fn a_lease_deletes_its_keys_when_it_expires_unless_kept_alive() {
        let mut s = MemStore::new();
        let Ok(Reply::Lease { id, .. }) = s.call(Request::LeaseGrant { ttl_s: 2 }, T) else {
            panic!()
        };
        let mut t = Txn::default();
        t.put("/e/edge-1".into(), "up".into(), Some(id));
        s.call(Request::Txn(t), T).ok();
        let Ok(Reply::Watching(_)) = s.call(
            Request::Watch {
                prefix: "/e/".into(),
                from: 0,
            },
            T,
        ) else {
            panic!()
        };
        s.advance(1500);
        assert_eq!(
            s.call(Request::LeaseKeepAlive(id), T),
            Ok(Reply::Lease { id, ttl_s: 2 })
        );
        s.advance(3000);
        assert_eq!(
            s.range(b"/e/").len(),
            1,
            "kept alive at 1.5 s: lives to 3.5 s"
        );
        drain(&mut s);
        s.advance(3500);
        assert!(s.range(b"/e/").is_empty());
        assert!(drain(&mut s).iter().any(
            |e| matches!(e, Event::Changes { changes, .. } if matches!(changes.as_slice(), [Change::Delete { .. }]))
        ));
        assert_eq!(
            s.call(Request::LeaseKeepAlive(id), T),
            Err(StoreError::LeaseNotFound(id.0))
        );
    }
}
