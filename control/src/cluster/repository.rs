//! The crypto node's SA repository in the cluster store (issue 18 item 4): what the node
//! writes, in which order relative to what it sends, how a node that (re)starts takes the
//! repository over, and [`NodeStore`], the thin loop that carries the node's batches to a
//! [`Store`] backend (etcd, or the memory backend on virtual time) and keeps the edges'
//! liveness records under leases.
//!
//! # What is written (key layout: `store` module)
//!
//! | record | written | removed |
//! |---|---|---|
//! | `ike/<id>`: the IKE SA's durable record (`core::durable`: keys, message ids, our last response, the IV epoch, its CHILD_SAs and their data-plane ids) | after every input that changed it, **before** anything that input queued for an edge | when the IKE SA goes |
//! | `child/<spi>`: both directions of the CHILD_SA as installed (`AddSa`s) and the outbound SA's first fence | with the carriers that install them, **before** they leave; whole again when one direction changes or goes | with its last direction |
//! | `placement/<spi>`: the edges that hold the CHILD_SA, each with its kind (both directions, a watched copy of the inbound SA, or a copy and the outbound SA as a drain after a move, with the holder's start) | once an edge **acknowledged** the carriers holding both `AddSa`s (or the copy) (applied by its data plane), a new one up to 20 ms later with its other edges; whole again at every change | with the inbound SA's delete; an edge is taken out when it lost its data plane; a drain becomes a copy when it ends |
//! | `seq/<spi>`: the freshest outbound sequence report, and fences raised after the first | at most every [`super::crypto_node::SEQ_WRITE_INTERVAL`]; a fence before the reservation that needs it leaves | with the outbound SA |
//! | `edges/<edge>`: a live edge and its process incarnation | at its hello, **under a lease** kept alive while it is connected | by etcd, when the lease expires |
//!
//! One record per CHILD_SA and one placement record per CHILD_SA (not one per direction and
//! per edge) make an install to a forwarding edge with two watched copies three operations
//! (IKE SA, CHILD_SA with its fence, placement) instead of seven. A new CHILD_SA's placement
//! waits [`super::crypto_node::PLACEMENT_WRITE_DELAY`] (20 ms) for the acknowledgements of
//! its other edges, so it is written once; a change to a placement already in the store (a
//! move, an edge lost) goes with the next batch. Nothing waits for a placement: a crash
//! before it is written rekeys the CHILD_SA, as a crash before the acknowledgement does.
//!
//! **Order per key.** etcd applies transactions that are in flight at once in no promised
//! order (each is its own raft proposal), so a record written whole could be overwritten by
//! its older self. [`NodeStore`] never has two unacknowledged transactions that write one
//! key: a batch with such a write waits (and the batches behind it), and a transaction keeps
//! only the last write of each key. `MemStore::reorder_transactions` plays etcd's freedom on
//! virtual time.
//!
//! Each input's writes form one batch; the driver writes batches in order, several per etcd
//! transaction (at most [`MAX_TXN_OPS`] operations: etcd's default `--max-txn-ops` is 128),
//! and keeps a window of them in flight; it tells the node how far they are committed.
//!
//! # Why a crash at any point loses no SA a client uses and never reuses a (SPI, seq)
//!
//! Order per input: store write -> committed -> carriers and IKE messages queued behind it
//! leave -> the edge applies the carriers before it sends the IKE answer -> the edge
//! acknowledges -> the placement is written.
//!
//! - **Crash before the commit**: nothing of the input left the node. The client retransmits
//!   its request; the node that takes over answers it as new (or, for an exchange on an IKE
//!   SA it adopted, from the stored state of before it), exactly as `core::durable` argues
//!   for a disk.
//! - **Crash after the commit, before or while carriers/answers leave**: the new node holds
//!   the IKE SA with the CHILD_SA answered and its stored response; the client retransmits
//!   and gets that response byte for byte. The CHILD_SA has no placement record (no edge
//!   acknowledged it), so the new node rekeys it right after the adoption: fresh keys and
//!   SPIs on the edge that forwards the exchange. An SA the edge may hold from the carrier
//!   that did leave is never installed again under its key: no sequence number is sent twice
//!   under one key. (Such an SA stays on the edge until the edge's data plane restarts:
//!   it has no placement to be deleted through.)
//! - **Crash after the edge applied, before the placement is written**: as above (rekeyed).
//! - **Crash after the placement**: the new node places the CHILD_SA where the record says
//!   and installs nothing: the edge's data plane keeps the SA with its sequence counter, so
//!   the counter runs on and never restarts. The edge's hello carries the incarnation the
//!   store knew: it kept its data plane (one that restarted empty says so, and a new edge
//!   process says hello with a new incarnation: its CHILD_SAs are rekeyed, the path of
//!   `CryptoNode::edge_lost_everything`).
//! - **IKE message ids and IVs**: `core::durable`'s argument, unchanged: requests are stored
//!   with the next id already past them, every adoption continues in a new IV epoch and is
//!   stored (and committed) before its first message leaves.
//! - **Half-open IKE SAs** (between IKE_SA_INIT and IKE_AUTH) are not stored: the exchange's
//!   secret is not written for every IKE_SA_INIT (a flood would become etcd writes). A
//!   client whose IKE_AUTH reaches a node that restarted in between gets no answer and
//!   starts again with IKE_SA_INIT.
//!
//! # SPIs unique cluster-wide
//!
//! Every SPI a crypto node hands out carries its node id in its top bits
//! (`ike::services::spi`, [`crate::ControlCore::for_cluster_node`]); an adopted IKE SA's and
//! CHILD_SA's SPIs are claimed by the adopter's allocator (`Endpoint::adopt`,
//! `SaRepository::adopt_child`), so a node that takes over never hands out an SPI in use.
//!
//! Owns: the order of writes against sends, the recovery. Must never: let a message queued
//! after a write leave before the write is committed; install a stored outbound SA again.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use ike::Instant;
use proto::sa::SaParams;
use proto::Spi;

use super::crypto_node::CryptoNode;
use super::msg::EdgeId;
use super::store::keys::Name;
use super::store::repo::Update as StoreUpdate;
use super::store::{
    ClusterStore, LeaseId, Op, Record, RecordKey, Reply, Request, Store, StoreError, Ticket, Txn,
};
use crate::core::durable::StoredIkeSa;

/// The most operations the driver puts in one etcd transaction.
pub const MAX_TXN_OPS: usize = 128;

/// One write of the node.
#[derive(Clone, Debug)]
pub enum StoreOp {
    Put(RecordKey, Record),
    Delete(RecordKey),
}

/// The writes of one input, numbered from 1 (see [`CryptoNode::store_committed`]).
#[derive(Clone, Debug)]
pub struct StoreBatch {
    pub n: u64,
    pub ops: Vec<StoreOp>,
}

/// An edge's name in the store's keys.
pub fn edge_name(edge: EdgeId) -> Name {
    // "edge-" and at most five digits: always a valid name.
    Name::new(&format!("edge-{edge}")).unwrap_or_else(|_| unreachable_name())
}

#[cold]
fn unreachable_name() -> Name {
    // `edge-N` is within the name's alphabet and length; this keeps the type total.
    Name::new("edge").unwrap_or_else(|_| unreachable_name())
}

/// The edge an `edges/`, `placement/` name stands for.
pub fn parse_edge_name(n: &Name) -> Option<EdgeId> {
    n.as_str().strip_prefix("edge-")?.parse().ok()
}

/// A placement record's kind for an edge that holds both directions of a CHILD SA.
pub const PLACED_CHILD: u8 = 1;
/// A placement record's kind for an edge that holds a watched copy of its inbound SA.
pub const PLACED_COPY: u8 = 2;
/// A placement record's kind for an edge the CHILD SA's outbound SA moved away from that
/// still holds it as a drain (below the record's `drain_start`), and a copy of its inbound SA.
pub const PLACED_DRAIN: u8 = 3;

/// What the store holds, decoded, for [`CryptoNode::recover`].
#[derive(Debug, Default)]
pub struct Recovered {
    pub ike: Vec<StoredIkeSa>,
    /// (inbound SPI of the CHILD_SA, outbound) -> the SA as installed.
    pub children: BTreeMap<(Spi, bool), SaParams>,
    /// Inbound SPI -> the edges that acknowledged both directions.
    pub placements: BTreeMap<Spi, BTreeSet<EdgeId>>,
    /// Inbound SPI -> the edges that acknowledged a watched copy of the inbound SA (the
    /// draining edges among them).
    pub copies: BTreeMap<Spi, BTreeSet<EdgeId>>,
    /// Inbound SPI -> the edges that drain its outbound SA, and the holder's start.
    pub drains: BTreeMap<Spi, (BTreeSet<EdgeId>, u64)>,
    /// Inbound SPI -> the freshest outbound sequence state: the higher of the CHILD_SA
    /// record's first fence and its `seq/` record.
    pub seqs: BTreeMap<Spi, (u64,)>,
    /// Inbound SPI -> the first fence the CHILD_SA's record holds (written again as it was
    /// when the record is).
    pub fences: BTreeMap<Spi, u64>,
    /// Live edges (their lease has not expired) -> their incarnation.
    pub edges: BTreeMap<EdgeId, u64>,
    /// Records that did not decode (counted, not used).
    pub unreadable: usize,
}

/// What a recovery did.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    pub adopted: usize,
    /// CHILD_SAs left on their edges as they are.
    pub kept: usize,
    /// CHILD_SAs rekeyed (no edge acknowledged them before the crash).
    pub rekeyed: usize,
    pub refused: Vec<(ike::IkeSaId, String)>,
    pub orphans_deleted: usize,
    /// Watched inbound copies left on their edges (their CHILD_SA kept).
    pub copies_kept: usize,
    /// Drains of moved outbound SAs taken over (ended by the holder's checkpoint).
    pub drains_kept: usize,
    /// Watched inbound copies of CHILD_SAs not kept: their records deleted, the SAs deleted
    /// on their edges at hello.
    pub copies_deleted: usize,
    /// The store's revision it was read at.
    pub revision: i64,
}

/// Counters of [`NodeStore`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStoreStats {
    pub txns: u64,
    pub ops: u64,
    pub failed: u64,
    pub leases: u64,
    pub keepalives: u64,
    /// Times a batch waited for a key an unacknowledged transaction writes.
    pub waits: u64,
}

enum Lease {
    Granting { ticket: Ticket, incarnation: u64 },
    Live { id: LeaseId, renewed: Instant },
}

/// Carries a [`CryptoNode`]'s batches to a store and its edges' liveness into leases.
pub struct NodeStore<S: Store> {
    repo: ClusterStore<S>,
    /// Transactions in flight: ticket, the batch they complete (0: none yet), the txn (kept
    /// to write it again after a failure).
    in_flight: VecDeque<(Ticket, u64, Txn, bool)>,
    leases: BTreeMap<EdgeId, Lease>,
    lease_ttl_s: i64,
    /// The most transactions in flight (back-pressure: the node's batches wait).
    window: usize,
    /// Keys written by transactions not yet acknowledged (with how many): etcd does not
    /// apply concurrent transactions in the order they were sent, so a later write of one of
    /// these keys waits until the earlier one is applied (else a record written whole, the
    /// placement after a third edge's acknowledgement, could be overwritten by its older
    /// self).
    keys_in_flight: HashMap<Vec<u8>, u32>,
    /// The rest of a batch that waits for one of its keys (its number, its ops).
    held: Option<(u64, VecDeque<StoreOp>)>,
    updates: Vec<StoreUpdate>,
    pub stats: NodeStoreStats,
}

impl<S: Store> NodeStore<S> {
    /// `lease_ttl_s`: how long an edge's record outlives its last keep-alive.
    pub fn new(repo: ClusterStore<S>, lease_ttl_s: i64) -> NodeStore<S> {
        NodeStore {
            repo,
            in_flight: VecDeque::new(),
            leases: BTreeMap::new(),
            lease_ttl_s: lease_ttl_s.max(2),
            window: 64,
            keys_in_flight: HashMap::new(),
            held: None,
            updates: Vec::new(),
            stats: NodeStoreStats::default(),
        }
    }

    pub fn repo(&mut self) -> &mut ClusterStore<S> {
        &mut self.repo
    }

    /// The repository back (what is in flight is forgotten: a crash's view).
    pub fn into_repo(self) -> ClusterStore<S> {
        self.repo
    }

    /// Reads the whole repository (blocking, at start) and hands it to the node.
    pub fn recover(
        &mut self,
        node: &mut CryptoNode,
        now: Instant,
        timeout: Duration,
    ) -> Result<RecoveryReport, StoreError> {
        let (entries, revision) = self.repo.load("", timeout)?;
        let mut rec = Recovered::default();
        for e in entries {
            match (e.key, e.record) {
                (RecordKey::Ike(_), Record::IkeSa { bytes, .. }) => {
                    match StoredIkeSa::from_bytes(&bytes) {
                        Ok(s) => rec.ike.push(s),
                        Err(err) => {
                            rec.unreadable += 1;
                            tracing::warn!(target: "cluster", "a stored IKE SA does not read: {err}");
                        }
                    }
                }
                (
                    RecordKey::Child(spi),
                    Record::Child {
                        inbound,
                        outbound,
                        fence,
                        ..
                    },
                ) => {
                    if let Some(p) = inbound {
                        rec.children.insert((Spi(spi), false), *p);
                    }
                    if let Some(p) = outbound {
                        rec.children.insert((Spi(spi), true), *p);
                        rec.fences.insert(Spi(spi), fence);
                        let s = rec.seqs.entry(Spi(spi)).or_insert((0,));
                        s.0 = s.0.max(fence);
                    }
                }
                (
                    RecordKey::Placement(spi),
                    Record::Placement {
                        edges, drain_start, ..
                    },
                ) => {
                    for (e, kind) in edges {
                        let into = match kind {
                            PLACED_COPY => &mut rec.copies,
                            PLACED_DRAIN => {
                                let d = rec.drains.entry(Spi(spi)).or_default();
                                d.0.insert(e);
                                d.1 = drain_start;
                                &mut rec.copies
                            }
                            _ => &mut rec.placements,
                        };
                        into.entry(Spi(spi)).or_default().insert(e);
                    }
                }
                (RecordKey::Seq(spi), Record::Seq { seq, .. }) => {
                    let s = rec.seqs.entry(Spi(spi)).or_insert((0,));
                    s.0 = s.0.max(seq);
                }
                (RecordKey::Edge(name), Record::Edge { incarnation, .. }) => {
                    if let Some(e) = parse_edge_name(&name) {
                        rec.edges.insert(e, incarnation);
                    }
                }
                _ => {}
            }
        }
        let mut report = node.recover(now, rec);
        report.revision = revision;
        Ok(report)
    }

    /// Moves what can move, without blocking: the node's batches into transactions, the
    /// completions back to the node, leases granted and kept alive. True if anything moved.
    pub fn turn(&mut self, node: &mut CryptoNode, now: Instant, wall_ms: u64) -> bool {
        let mut moved = false;
        // What could not be submitted goes again, in place.
        for x in self.in_flight.iter_mut() {
            if x.0 == Ticket(u64::MAX) {
                if let Ok(t) = self.repo.submit(x.2.clone()) {
                    x.0 = t;
                }
            }
        }
        // Completions first (a window slot may free up).
        self.repo.poll(&mut self.updates);
        for u in std::mem::take(&mut self.updates) {
            let StoreUpdate::Done { ticket, result } = u else {
                continue;
            };
            moved = true;
            if let Some(i) = self.in_flight.iter().position(|(t, ..)| *t == ticket) {
                match result {
                    Ok(Reply::Txn { .. }) => {
                        if let Some(x) = self.in_flight.get_mut(i) {
                            x.3 = true;
                            for op in &x.2.ops {
                                let (Op::Put { key, .. } | Op::Delete { key }) = op;
                                if let Some(n) = self.keys_in_flight.get_mut(key) {
                                    *n -= 1;
                                    if *n == 0 {
                                        self.keys_in_flight.remove(key);
                                    }
                                }
                            }
                        }
                    }
                    other => {
                        // Written again, in place (the batches behind it wait meanwhile).
                        self.stats.failed += 1;
                        tracing::warn!(target: "cluster", "a store write failed, writing it again: {:?}",
                            other.err());
                        let txn = self
                            .in_flight
                            .get(i)
                            .map(|x| x.2.clone())
                            .unwrap_or_default();
                        match self.repo.submit(txn) {
                            Ok(t) => {
                                if let Some(x) = self.in_flight.get_mut(i) {
                                    x.0 = t;
                                }
                            }
                            Err(e) => {
                                tracing::warn!(target: "cluster", "the store refused a write: {e}")
                            }
                        }
                    }
                }
                continue;
            }
            let granted = self.leases.iter().find_map(|(e, l)| match l {
                Lease::Granting {
                    ticket: t,
                    incarnation,
                } if *t == ticket => Some((*e, *incarnation)),
                _ => None,
            });
            if let Some((edge, incarnation)) = granted {
                match result {
                    Ok(Reply::Lease { id, .. }) => {
                        self.stats.leases += 1;
                        self.leases.insert(edge, Lease::Live { id, renewed: now });
                        let mut t = Txn::default();
                        let rec = Record::Edge {
                            address: format!("edge {edge}"),
                            started_ms: wall_ms,
                            incarnation,
                        };
                        if self
                            .repo
                            .put(&mut t, &RecordKey::Edge(edge_name(edge)), &rec, Some(id))
                            .is_ok()
                        {
                            let _ = self.repo.submit(t);
                        }
                    }
                    _ => {
                        self.leases.remove(&edge);
                    }
                }
            }
        }
        // Committed as far as the oldest unfinished transaction.
        while self.in_flight.front().is_some_and(|x| x.3) {
            if let Some((_, n, _, _)) = self.in_flight.pop_front() {
                if n > 0 {
                    node.store_committed(n);
                }
            }
        }
        moved |= self.pack(|| node.poll_store());
        // Edges' liveness.
        while let Some((edge, incarnation)) = node.poll_edge_live() {
            moved = true;
            if let Some(Lease::Live { id, .. }) = self.leases.remove(&edge) {
                let _ = self.repo.store().submit(Request::LeaseRevoke(id));
            }
            match self.repo.store().submit(Request::LeaseGrant {
                ttl_s: self.lease_ttl_s,
            }) {
                Ok(ticket) => {
                    self.leases.insert(
                        edge,
                        Lease::Granting {
                            ticket,
                            incarnation,
                        },
                    );
                }
                Err(e) => tracing::warn!(target: "cluster", "no lease for edge {edge}: {e}"),
            }
        }
        let every = self.keepalive_every();
        // An edge that is gone is left to its lease: etcd deletes its record when it runs
        // out (a crypto node that restarts within it still knows the edge's incarnation).
        self.leases
            .retain(|edge, l| matches!(l, Lease::Granting { .. }) || node.is_connected(*edge));
        let mut renew = Vec::new();
        for l in self.leases.values_mut() {
            if let Lease::Live { id, renewed } = l {
                if now.saturating_duration_since(*renewed) >= every {
                    *renewed = now;
                    renew.push(*id);
                }
            }
        }
        for id in renew {
            self.stats.keepalives += 1;
            let _ = self.repo.store().submit(Request::LeaseKeepAlive(id));
        }
        moved
    }

    /// Packs batches from `next` into transactions, in order, while the window has room; a
    /// write of a key that a transaction in flight writes waits for it (and everything
    /// behind waits too). True if a batch was taken.
    pub(crate) fn pack(&mut self, mut next: impl FnMut() -> Option<StoreBatch>) -> bool {
        let mut moved = false;
        let mut txn = Txn::default();
        let mut last = 0;
        'batches: while self.in_flight.len() < self.window {
            let (n, mut ops, was_held) = match self.held.take() {
                Some((n, ops)) => (n, ops, true),
                None => match next() {
                    Some(b) => (b.n, VecDeque::from(b.ops), false),
                    None => break,
                },
            };
            // A batch still waiting is no progress (the driver's loop may sleep).
            moved |= !was_held;
            while let Some(op) = ops.pop_front() {
                // A full transaction goes first: its keys are in flight from here on.
                if txn.ops.len() >= MAX_TXN_OPS {
                    self.send(std::mem::take(&mut txn), last);
                }
                let key = match &op {
                    StoreOp::Put(k, _) | StoreOp::Delete(k) => k,
                };
                if self
                    .keys_in_flight
                    .contains_key(&self.repo.layout().key(key))
                {
                    ops.push_front(op);
                    self.held = Some((n, ops));
                    if !was_held {
                        self.stats.waits += 1;
                    }
                    break 'batches;
                }
                moved = true;
                match op {
                    StoreOp::Put(k, r) => {
                        if let Err(e) = self.repo.put(&mut txn, &k, &r, None) {
                            tracing::warn!(target: "cluster", "a record was not written: {e}");
                        }
                    }
                    StoreOp::Delete(k) => self.repo.delete(&mut txn, &k),
                }
            }
            last = n;
        }
        if !txn.ops.is_empty() {
            // `last` may be 0: the ops of a batch whose rest waits complete nothing yet.
            self.send(txn, last);
        } else if last > 0 {
            // Every op of the last batch went out already: mark the last txn.
            if let Some(x) = self.in_flight.back_mut() {
                x.1 = x.1.max(last);
            }
        }
        moved
    }

    /// Tests: forgets which keys are in flight (what the driver did before it waited).
    #[cfg(test)]
    pub(crate) fn forget_keys_in_flight(&mut self) {
        self.keys_in_flight.clear();
    }

    fn keepalive_every(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.lease_ttl_s / 3).unwrap_or(1).max(1))
    }

    /// When the next keep-alive is due (a virtual-time loop must come back by then).
    pub fn next_deadline(&self) -> Option<Instant> {
        let every = self.keepalive_every();
        self.leases
            .values()
            .filter_map(|l| match l {
                Lease::Live { renewed, .. } => Some(renewed.saturating_add(every)),
                Lease::Granting { .. } => None,
            })
            .min()
    }

    fn send(&mut self, mut txn: Txn, completes: u64) {
        // etcd refuses a key twice in one transaction: the last write of a key wins (an IKE
        // SA changed by several inputs whose batches share this transaction).
        let mut seen = std::collections::HashSet::new();
        let mut ops: Vec<Op> = std::mem::take(&mut txn.ops)
            .into_iter()
            .rev()
            .filter(|op| {
                seen.insert(match op {
                    Op::Put { key, .. } | Op::Delete { key } => key.clone(),
                })
            })
            .collect();
        ops.reverse();
        txn.ops = ops;
        for op in &txn.ops {
            let (Op::Put { key, .. } | Op::Delete { key }) = op;
            *self.keys_in_flight.entry(key.clone()).or_insert(0) += 1;
        }
        self.stats.txns += 1;
        self.stats.ops += txn.ops.len() as u64;
        match self.repo.submit(txn.clone()) {
            Ok(t) => self.in_flight.push_back((t, completes, txn, false)),
            Err(e) => {
                // Kept in order and written again by the next turn's failure path.
                self.stats.failed += 1;
                tracing::warn!(target: "cluster", "a store write was not submitted: {e}");
                self.in_flight
                    .push_back((Ticket(u64::MAX), completes, txn, false));
            }
        }
    }

    /// Transactions in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}
