//! One masquerading node's part of the routing coordinator, sans-IO: HAM and FAM at once.
//!
//! A node talks to the store only through [`Store::submit`] and [`Store::poll`] (never
//! `wait`), and reads no clock: every entry point takes `now_ms`. The data plane asks it
//! about flows its tables miss ([`MasqNode::outbound`], [`MasqNode::inbound`]) and gets
//! table changes back as [`Output`]s.
//!
//! # What it does
//!
//! - **Liveness**: `nodes/<me>` under a lease of `node_ttl_s`, kept alive every third of it.
//! - **Port blocks**: before allocating, a node claims a block (`blocks/<addr>/<hi>`,
//!   create-if-absent) on one of its addresses; addresses may be shared between nodes, blocks
//!   never are. It reads a block's connections (and watches them) before it allocates from it.
//! - **HAM allocation**: an outbound packet of a flow no store record knows: the HAM (the node
//!   that saw it) takes a port of one of its loaded blocks that has no record (live or
//!   quarantined) and creates `conn/..` and `flow/..` in one transaction, both
//!   create-if-absent. The flow's packets wait ([`OutVerdict::Hold`]) until it is committed:
//!   a flow is never rewritten to an address the store did not grant.
//! - **FAM registration**: [`MasqNode::client_attached`] reads the client's flows
//!   (`flow/<client>/`) and their connections and registers this node as their FAM
//!   (compare-on-revision, `fam_epoch` + 1); until that read is back the client's packets
//!   wait. The masquerading address comes from the record, so it is the same on every node.
//! - **HAM lookup**: the HAM watches the connections of its blocks (pushed: a registration
//!   elsewhere reaches it as a watch event) and reads a connection it does not know when an
//!   inbound packet asks for it (pull on a miss).
//! - **FAM removal**: [`MasqNode::client_left`] clears `fam` where it still names this node.
//! - **Expiry**: the FAM sees both directions and releases a connection idle past its
//!   protocol's timeout; the HAM releases one whose FAM is gone (none, or not live) and that
//!   it has not forwarded to for as long. Released: `released_ms` set, `flow/..` deleted.
//!   The data plane rewrites without telling the node, so the FAM first parks a connection
//!   idle as far as it heard (`Output::FamRemove`, the record kept): a packet of it then
//!   misses and asks again (same address, installed again); silent one more timeout, it is
//!   released.
//! - **Port quarantine**: the HAM deletes a released `conn/..` key only `reuse_delay_ms`
//!   after `released_ms`; a port is free only when its key is gone.
//! - **HAM migration**: when a node's lease goes, the next live node in name order takes
//!   over its blocks (compare-on-revision per block: one winner), reads their connections
//!   and serves their addresses ([`Output::Serve`]: address takeover, gratuitous ARP).
//!
//! # Why a live node's block is never taken as an orphan
//!
//! A block is an orphan when its owner has no record in `nodes/`. The node and block views
//! come from two reads and two watches, which the store answers on their own schedules (etcd
//! catches up a watch that starts behind its head in the background, ~100 ms late, while a
//! later one is live at once), so a block record can reach a node before its owner's record
//! does. Two rules make "owner absent" mean "owner gone": a node writes a block (claim, take,
//! its takes after a new lease) only once its own record under its current lease is in the
//! store (it has seen it: [`MasqNode::is_ready`]), so the owner's record is older than its
//! blocks; and a block counts as orphaned only when the node view is complete up to the
//! block's revision (`nodes_rev`: the nodes read, then every nodes watch event), so that
//! older record, had it been there, would have been seen.
//!
//! # Why no (address, port) is handed out twice
//!
//! A connection's key is its (address, port, protocol) and is created only if absent, so the
//! store refuses a second holder whatever a node believes; it is deleted only after the
//! quarantine. A node allocates only from blocks it owns and has read, so it does not even
//! try a port with a record. A successor that takes a block over reads its records before it
//! allocates from it, quarantined ones included.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;

use pipeline::masq::access::{AccessTable, UserId};

use super::liveness::{Heartbeat, Liveness};
use super::records::{
    decode, encode, BlockId, BlockRec, ConnRec, Flow, FlowRec, MasqAddr, MasqKey, MasqLayout,
    NodeRec, Proto, Versioned, RECORD_VERSION,
};
use crate::cluster::store::keys::Name;
use crate::cluster::store::{
    Change, Event, Kv, LeaseId, Reply, Request, Revision, Sealer, Store, StoreError, Ticket, Txn,
    WatchId,
};

/// A node's settings.
#[derive(Clone, Debug)]
pub struct MasqParams {
    pub cluster: Name,
    pub node: Name,
    /// Where the other nodes reach this node's inter-node link.
    pub link: String,
    /// The masquerading addresses this node claims blocks on (may be shared with others).
    pub addrs: Vec<Ipv4Addr>,
    /// Blocks `first_block..=last_block` (port high bytes) of every address.
    pub first_block: u8,
    pub last_block: u8,
    pub node_ttl_s: i64,
    pub udp_idle_ms: u64,
    pub tcp_idle_ms: u64,
    pub reuse_delay_ms: u64,
    /// Published in `nodes/<node>` (see [`NodeRec::incarnation`]): random per start.
    pub incarnation: u64,
    /// Heartbeats (`super::liveness`): where this node hears them (published as
    /// `NodeRec::alive`; `None`: no heartbeats, a death is noticed at the lease's end), how
    /// often it sends them and how long a heard peer may be silent before its successor
    /// revokes its lease.
    pub alive: Option<String>,
    pub heartbeat_ms: u64,
    pub dead_after_ms: u64,
}

impl MasqParams {
    pub fn new(cluster: Name, node: Name, addrs: Vec<Ipv4Addr>) -> MasqParams {
        MasqParams {
            link: String::new(),
            cluster,
            node,
            addrs,
            first_block: 4,
            last_block: 255,
            node_ttl_s: 3,
            udp_idle_ms: 30_000,
            tcp_idle_ms: 2 * 3600 * 1000,
            reuse_delay_ms: 120_000,
            incarnation: 0,
            alive: None,
            heartbeat_ms: 100,
            dead_after_ms: 300,
        }
    }

    fn idle_ms(&self, p: Proto) -> u64 {
        match p {
            Proto::Tcp => self.tcp_idle_ms,
            Proto::Udp => self.udp_idle_ms,
        }
    }
}

/// What an outbound packet of a flow gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutVerdict {
    /// Rewrite the source to this address and port.
    Rewrite(MasqAddr),
    /// Keep it until [`Output::Retry`] for the flow (a store answer is due).
    Hold,
    Drop(MasqDrop),
}

/// What an inbound packet to a masquerading address gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InVerdict {
    /// This node is the FAM: rewrite the destination back to the flow's client.
    Local(Flow),
    /// This node is the HAM: forward to that FAM over the inter-node link.
    Forward(String),
    Hold,
    Drop(MasqDrop),
}

/// Why a packet is dropped (counted in [`MasqStats`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MasqDrop {
    /// From a client that did not attach (no authenticated identity).
    UnknownClient,
    /// The client's user may not reach that destination.
    Denied,
    /// No block could be claimed and the owned ones are full.
    PortsExhausted,
    /// Inbound to a connection that was released.
    Released,
    /// Inbound to a connection whose FAM is gone.
    NoFam,
    /// Inbound to an address this node neither serves nor is FAM of.
    NotMine,
    /// Inbound to a port of our block with no connection.
    NoConnection,
    /// The store refused or failed a request.
    Store,
}

/// Changes for the data plane and the driver, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// FAM: rewrite `flow`'s outbound to `masq` and `masq`'s inbound back to the flow.
    FamInstall {
        flow: Flow,
        masq: MasqAddr,
    },
    FamRemove {
        flow: Flow,
        masq: MasqAddr,
    },
    /// HAM: inbound to `masq` goes to this FAM (None: nowhere, drop).
    Route {
        masq: MasqAddr,
        fam: Option<String>,
    },
    /// Held packets of the flow may be asked about again.
    Retry(Flow),
    RetryInbound(MasqAddr),
    /// This node now allocates on `addr` (claimed or taken over): hold the address, announce
    /// it (gratuitous ARP).
    Serve(Ipv4Addr),
    /// Another node's record appeared or changed (`Some`: its link address and incarnation)
    /// or went (its lease ran out): the inter-node link SAs with it follow (`super::link`).
    Peer {
        node: String,
        link: Option<(String, u64)>,
    },
    /// This node no longer allocates on `addr` (its blocks there were taken over while its
    /// lease was gone): stop answering for it.
    Unserve(Ipv4Addr),
}

/// Counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MasqStats {
    pub allocated: u64,
    pub registered: u64,
    pub released: u64,
    pub freed: u64,
    pub blocks_claimed: u64,
    pub blocks_taken: u64,
    pub pulls: u64,
    pub create_conflicts: u64,
    pub stale_writes: u64,
    pub store_errors: u64,
    pub bad_records: u64,
    /// Peers' leases this node revoked after their heartbeats stopped.
    pub peers_revoked: u64,
    /// Times this node's own lease went while it ran (its addresses withdrawn, registered
    /// again).
    pub lease_lost: u64,
    pub heartbeats_in: u64,
    /// Datagrams on the heartbeat socket that are not a heartbeat of this cluster's nodes.
    pub heartbeats_bad: u64,
    pub drops: BTreeMap<String, u64>,
}

struct ConnState {
    rec: ConnRec,
    rev: Revision,
    /// Last packet this node saw of it (FAM: both directions; HAM: forwarded inbound).
    last_ms: u64,
    /// A write of ours is in flight: do not start another.
    busy: bool,
    /// What that write puts.
    written: Option<ConnRec>,
}

struct Client {
    user: String,
    uid: Option<UserId>,
    /// Store reads outstanding before its flows are known.
    loading: usize,
}

enum Pending {
    Grant,
    Revoke(String),
    PutNode(LeaseId),
    KeepAlive(LeaseId),
    LoadNodes,
    LoadBlocks,
    /// The watch of `nodes/` (its id tells its resyncs apart).
    NodesWatch,
    Watch,
    Claim(BlockId),
    Take(BlockId, u64),
    LoadBlockConns(BlockId),
    Create {
        masq: MasqAddr,
        flow: Flow,
    },
    LoadClient(Ipv4Addr),
    PullConn {
        masq: MasqAddr,
        client: Option<Ipv4Addr>,
    },
    Register(MasqAddr),
    Unregister(MasqAddr),
    Release(MasqAddr),
    Free(MasqAddr),
}

/// One node of the coordinator (see the module doc).
pub struct MasqNode<S: Store> {
    p: MasqParams,
    store: S,
    layout: MasqLayout,
    sealer: Arc<Sealer>,
    access: Arc<AccessTable>,
    lease: Option<LeaseId>,
    next_keepalive_ms: u64,
    /// A grant is in flight (at start, or after the lease went).
    granting: bool,
    /// The lease went while this node ran: at the next grant, compete again for the blocks
    /// still recorded as ours (compare-on-revision) instead of serving them as they are.
    rejoin: bool,
    /// After a refused grant: when to ask again.
    regrant_at_ms: u64,
    /// Our own record as the store last showed it under the current lease (its revision): a
    /// deletion of `nodes/<me>` older than it is of an earlier lease.
    my_record: Option<Revision>,
    /// Our record's write failed for a reason other than the lease: written again at the
    /// next keep-alive.
    put_node_again: bool,
    /// The node view (`nodes`) holds every change to `nodes/` up to this revision: a block
    /// written later may have an owner whose record has not reached us yet (module doc).
    nodes_rev: Revision,
    nodes_watch: Option<WatchId>,
    liveness: Liveness,
    next_heartbeat_ms: u64,
    nodes_loaded: bool,
    blocks_loaded: bool,
    nodes: BTreeSet<String>,
    /// Other nodes' records as last read (link address, incarnation).
    peers: BTreeMap<String, (String, u64)>,
    blocks: BTreeMap<BlockId, (BlockRec, Revision)>,
    /// Owned blocks whose connections have been read.
    ready_blocks: BTreeSet<BlockId>,
    claiming: Option<BlockId>,
    /// Blocks whose claim the store refused (someone holds them, perhaps with a record we
    /// cannot read): not tried again.
    refused: BTreeSet<BlockId>,
    taking: BTreeSet<BlockId>,
    served: BTreeSet<Ipv4Addr>,
    cursor: BTreeMap<BlockId, u16>,
    conns: BTreeMap<MasqAddr, ConnState>,
    fam: HashMap<Flow, MasqAddr>,
    /// FAM flows idle (as far as this node heard) whose data-plane entry was removed to learn
    /// whether they are (`Output::FamRemove`; when): the data plane rewrites without telling
    /// the node, so a flow it still carries misses at its next packet and asks again, which
    /// installs it again with the same address. Released one timeout later if it did not.
    parked: HashMap<Flow, u64>,
    creating: BTreeMap<MasqAddr, Flow>,
    creating_flows: BTreeSet<Flow>,
    clients: HashMap<Ipv4Addr, Client>,
    held: BTreeSet<Flow>,
    held_in: BTreeSet<MasqAddr>,
    pending: HashMap<Ticket, Pending>,
    out: VecDeque<Output>,
    raw: Vec<Event>,
    now_ms: u64,
    /// When the lease was granted (the node record's `started_ms`).
    started_ms: u64,
    pub stats: MasqStats,
}

impl<S: Store> MasqNode<S> {
    pub fn new(
        p: MasqParams,
        store: S,
        sealer: Arc<Sealer>,
        access: Arc<AccessTable>,
    ) -> MasqNode<S> {
        MasqNode {
            layout: MasqLayout::new(&p.cluster),
            p,
            store,
            sealer,
            access,
            lease: None,
            next_keepalive_ms: u64::MAX,
            granting: false,
            rejoin: false,
            regrant_at_ms: u64::MAX,
            my_record: None,
            put_node_again: false,
            nodes_rev: 0,
            nodes_watch: None,
            liveness: Liveness::default(),
            next_heartbeat_ms: 0,
            nodes_loaded: false,
            blocks_loaded: false,
            nodes: BTreeSet::new(),
            peers: BTreeMap::new(),
            blocks: BTreeMap::new(),
            ready_blocks: BTreeSet::new(),
            claiming: None,
            refused: BTreeSet::new(),
            taking: BTreeSet::new(),
            served: BTreeSet::new(),
            cursor: BTreeMap::new(),
            conns: BTreeMap::new(),
            fam: HashMap::new(),
            parked: HashMap::new(),
            creating: BTreeMap::new(),
            creating_flows: BTreeSet::new(),
            clients: HashMap::new(),
            held: BTreeSet::new(),
            held_in: BTreeSet::new(),
            pending: HashMap::new(),
            out: VecDeque::new(),
            raw: Vec::new(),
            now_ms: 0,
            started_ms: 0,
            stats: MasqStats::default(),
        }
    }

    pub fn name(&self) -> &str {
        self.p.node.as_str()
    }

    pub fn store(&mut self) -> &mut S {
        &mut self.store
    }

    /// A new per-user policy (a reload): applies to the next packet of every flow.
    pub fn set_access(&mut self, access: Arc<AccessTable>) {
        self.access = access;
        for c in self.clients.values_mut() {
            c.uid = access_id(&self.access, &c.user);
        }
    }

    /// Registers the node (lease), reads the live nodes and the blocks, and watches both.
    pub fn start(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        self.grant();
        let prefix = self.layout.prefix("nodes/");
        self.submit(Request::Range { prefix }, Pending::LoadNodes);
        let prefix = self.layout.prefix("blocks/");
        self.submit(Request::Range { prefix }, Pending::LoadBlocks);
        self.pump(now_ms);
    }

    /// A new incarnation (the data plane restarted empty: its link SAs' sequence numbers
    /// start again, so their keys must be new): the node record is written again with it.
    pub fn set_incarnation(&mut self, incarnation: u64, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        self.p.incarnation = incarnation;
        if self.lease.is_some() {
            self.put_node();
        }
        self.pump(now_ms);
    }

    /// This node's incarnation as published.
    pub fn incarnation(&self) -> u64 {
        self.p.incarnation
    }

    /// The other live nodes' link addresses and incarnations as last read.
    pub fn peers(&self) -> impl Iterator<Item = (&str, &(String, u64))> {
        self.peers.iter().map(|(n, l)| (n.as_str(), l))
    }

    fn put_node(&mut self) {
        let Some(id) = self.lease else {
            return;
        };
        let rec = NodeRec {
            v: RECORD_VERSION,
            link: self.p.link.clone(),
            started_ms: self.started_ms,
            incarnation: self.p.incarnation,
            alive: self.p.alive.clone(),
        };
        let key = self.layout.key(&MasqKey::Node(self.p.node.clone()));
        let mut txn = Txn::default();
        if self.put(&mut txn, key, &rec, Some(id)).is_ok() {
            self.submit(Request::Txn(txn), Pending::PutNode(id));
        }
    }

    /// Whether the node is registered (its record under its current lease seen in the store)
    /// and has read the nodes and blocks. Blocks are claimed and taken only when it is.
    pub fn is_ready(&self) -> bool {
        self.lease.is_some() && self.my_record.is_some() && self.nodes_loaded && self.blocks_loaded
    }

    /// The next outputs, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The live nodes as this node sees them.
    pub fn live_nodes(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(String::as_str)
    }

    /// The blocks this node owns.
    pub fn owned_blocks(&self) -> Vec<BlockId> {
        self.blocks
            .iter()
            .filter(|(_, (r, _))| r.owner == self.name())
            .map(|(b, _)| *b)
            .collect()
    }

    /// The connection record of `masq` as this node knows it.
    pub fn conn(&self, masq: &MasqAddr) -> Option<&ConnRec> {
        self.conns.get(masq).map(|c| &c.rec)
    }

    /// The flows this node is the FAM of.
    pub fn fam_flows(&self) -> impl Iterator<Item = (&Flow, &MasqAddr)> {
        self.fam.iter()
    }

    /// Store answers and watch events, then timers: call on every turn.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let now = self.now_ms;
        if let Some(lease) = self.lease {
            if now >= self.next_keepalive_ms {
                self.submit(Request::LeaseKeepAlive(lease), Pending::KeepAlive(lease));
                self.next_keepalive_ms = now.saturating_add(self.keepalive_every());
                if std::mem::take(&mut self.put_node_again) {
                    self.put_node();
                }
            }
        }
        if self.lease.is_none() && !self.granting && now >= self.regrant_at_ms {
            self.grant();
        }
        self.expire(now);
        self.judge(now);
        self.take_over_orphans();
        self.pump(now);
    }

    fn keepalive_every(&self) -> u64 {
        (self.p.node_ttl_s.max(1) as u64).saturating_mul(1000) / 3
    }

    /// The client `client` (virtual address) attached here, authenticated as `user`: read its
    /// flows and register as their FAM. Its packets wait until that read is back.
    pub fn client_attached(&mut self, client: Ipv4Addr, user: &str, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let uid = access_id(&self.access, user);
        self.clients.insert(
            client,
            Client {
                user: user.to_string(),
                uid,
                loading: 1,
            },
        );
        let prefix = self.layout.client_flows(client);
        self.submit(Request::Range { prefix }, Pending::LoadClient(client));
        self.pump(now_ms);
    }

    /// The client left this node (moved on or disconnected): this node stops being the FAM of
    /// its flows (the record's `fam` cleared where it still names this node).
    pub fn client_left(&mut self, client: Ipv4Addr, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        self.clients.remove(&client);
        let mine: Vec<(Flow, MasqAddr)> = self
            .fam
            .iter()
            .filter(|(f, _)| f.client.ip() == &client)
            .map(|(f, m)| (*f, *m))
            .collect();
        for (flow, masq) in mine {
            self.fam.remove(&flow);
            self.out.push_back(Output::FamRemove { flow, masq });
            let me = self.name().to_string();
            let Some(c) = self.conns.get_mut(&masq) else {
                continue;
            };
            if c.rec.fam.as_deref() == Some(me.as_str()) && c.rec.released_ms.is_none() && !c.busy {
                c.busy = true;
                let mut rec = c.rec.clone();
                rec.fam = None;
                let rev = c.rev;
                c.written = Some(rec.clone());
                self.write_conn(masq, &rec, rev, None, Pending::Unregister(masq));
            }
        }
        self.pump(now_ms);
    }

    /// An outbound packet of `flow` that the data plane's table missed (or any, in tests).
    pub fn outbound(&mut self, flow: Flow, now_ms: u64) -> OutVerdict {
        // What the store said meanwhile first (a registration elsewhere, a release).
        self.pump(now_ms);
        let now = self.now_ms;
        let client = *flow.client.ip();
        let Some(c) = self.clients.get(&client) else {
            return self.drop_out(MasqDrop::UnknownClient);
        };
        let allowed = c.uid.is_some_and(|u| {
            self.access.allows(
                u,
                std::net::IpAddr::V4(*flow.server.ip()),
                flow.proto.number(),
                flow.server.port(),
            )
        });
        if !allowed {
            return self.drop_out(MasqDrop::Denied);
        }
        if c.loading > 0 || self.creating_flows.contains(&flow) {
            self.held.insert(flow);
            return OutVerdict::Hold;
        }
        if let Some(m) = self.fam.get(&flow).copied() {
            if let Some(cs) = self.conns.get_mut(&m) {
                cs.last_ms = now;
            }
            // Parked: the data plane asked again, the answer installs it again.
            self.parked.remove(&flow);
            return OutVerdict::Rewrite(m);
        }
        // A new connection: this node is its HAM.
        match self.allocate(flow.proto) {
            Some(masq) => self.create(flow, masq),
            None => {
                if !self.claim_block() {
                    return self.drop_out(MasqDrop::PortsExhausted);
                }
            }
        }
        self.held.insert(flow);
        self.pump(now);
        // The memory store answers inside the call.
        match self.fam.get(&flow) {
            Some(m) => {
                self.held.remove(&flow);
                OutVerdict::Rewrite(*m)
            }
            None => OutVerdict::Hold,
        }
    }

    /// An inbound packet to `masq` that the data plane's table missed (or any, in tests).
    pub fn inbound(&mut self, masq: MasqAddr, now_ms: u64) -> InVerdict {
        self.pump(now_ms);
        if let Some(v) = self.in_verdict(masq) {
            return v;
        }
        self.held_in.insert(masq);
        self.pull(masq, None);
        self.pump(now_ms);
        // The memory store answers inside the call.
        if self.conns.contains_key(&masq) || self.ready_blocks.contains(&masq.block()) {
            self.held_in.remove(&masq);
            if let Some(v) = self.in_verdict(masq) {
                return v;
            }
        }
        InVerdict::Hold
    }

    /// The verdict for `masq` from what this node knows, None: read the store first.
    fn in_verdict(&mut self, masq: MasqAddr) -> Option<InVerdict> {
        let now = self.now_ms;
        let me = self.name().to_string();
        let owns = self.owns(masq.block());
        let ready = self.ready_blocks.contains(&masq.block());
        let creating = self.creating.contains_key(&masq);
        let Some(c) = self.conns.get_mut(&masq) else {
            if !owns {
                return Some(self.drop_in(MasqDrop::NotMine));
            }
            if ready && !creating {
                // Our block, read and watched: no such connection.
                return Some(self.drop_in(MasqDrop::NoConnection));
            }
            return None;
        };
        if c.rec.released_ms.is_some() {
            return Some(self.drop_in(MasqDrop::Released));
        }
        if c.rec.fam.as_deref() == Some(me.as_str()) && self.fam.contains_key(&c.rec.flow) {
            c.last_ms = now;
            self.parked.remove(&c.rec.flow);
            return Some(InVerdict::Local(c.rec.flow));
        }
        if !owns {
            return Some(self.drop_in(MasqDrop::NotMine));
        }
        match c.rec.fam.clone() {
            Some(f) if self.nodes.contains(&f) && f != me => {
                c.last_ms = now;
                Some(InVerdict::Forward(f))
            }
            _ => Some(self.drop_in(MasqDrop::NoFam)),
        }
    }

    fn drop_out(&mut self, why: MasqDrop) -> OutVerdict {
        *self.stats.drops.entry(format!("{why:?}")).or_default() += 1;
        OutVerdict::Drop(why)
    }

    fn drop_in(&mut self, why: MasqDrop) -> InVerdict {
        *self.stats.drops.entry(format!("{why:?}")).or_default() += 1;
        InVerdict::Drop(why)
    }

    fn owns(&self, b: BlockId) -> bool {
        self.blocks
            .get(&b)
            .is_some_and(|(r, _)| r.owner == self.name())
    }

    /// A free port of a loaded block of ours, or None.
    fn allocate(&mut self, proto: Proto) -> Option<MasqAddr> {
        let blocks: Vec<BlockId> = self
            .ready_blocks
            .iter()
            .copied()
            .filter(|b| self.owns(*b))
            .collect();
        for b in blocks {
            let start = self.cursor.get(&b).copied().unwrap_or(0);
            for i in 0..=255u16 {
                let lo = (start.wrapping_add(i) & 0xff) as u8;
                let port = (u16::from(b.hi) << 8) | u16::from(lo);
                let m = MasqAddr {
                    proto,
                    addr: b.addr,
                    port,
                };
                if !self.conns.contains_key(&m) && !self.creating.contains_key(&m) {
                    self.cursor.insert(b, u16::from(lo).wrapping_add(1) & 0xff);
                    return Some(m);
                }
            }
        }
        None
    }

    /// Claims the first unclaimed block on our addresses; false if none is left.
    fn claim_block(&mut self) -> bool {
        // Not before our record is in the store (module doc): the held flows are retried
        // when it is.
        if self.claiming.is_some() || !self.is_ready() {
            return true;
        }
        // A block of ours is still being read: allocate from it once it is.
        if self
            .blocks
            .iter()
            .any(|(b, (r, _))| r.owner == self.name() && !self.ready_blocks.contains(b))
        {
            return true;
        }
        for addr in self.p.addrs.clone() {
            for hi in self.p.first_block..=self.p.last_block {
                let b = BlockId { addr, hi };
                if self.blocks.contains_key(&b) || self.refused.contains(&b) {
                    continue;
                }
                let rec = BlockRec {
                    v: RECORD_VERSION,
                    owner: self.name().to_string(),
                    epoch: 0,
                };
                let mut txn = Txn::default();
                let key = self.layout.key(&MasqKey::Block(b));
                txn.when(key.clone(), 0);
                if self.put(&mut txn, key, &rec, None).is_err() {
                    return false;
                }
                self.claiming = Some(b);
                self.submit(Request::Txn(txn), Pending::Claim(b));
                return true;
            }
        }
        false
    }

    fn create(&mut self, flow: Flow, masq: MasqAddr) {
        let me = self.name().to_string();
        let user = self
            .clients
            .get(flow.client.ip())
            .map(|c| c.user.clone())
            .unwrap_or_default();
        let rec = ConnRec {
            v: RECORD_VERSION,
            flow,
            user,
            fam: Some(me),
            fam_epoch: 1,
            created_ms: self.now_ms,
            released_ms: None,
        };
        let frec = FlowRec {
            v: RECORD_VERSION,
            masq,
        };
        let ck = self.layout.key(&MasqKey::Conn(masq));
        let fk = self.layout.key(&MasqKey::Flow(flow));
        let mut txn = Txn::default();
        txn.when(ck.clone(), 0).when(fk.clone(), 0);
        if self.put(&mut txn, ck, &rec, None).is_err()
            || self.put(&mut txn, fk, &frec, None).is_err()
        {
            return;
        }
        self.creating.insert(masq, flow);
        self.creating_flows.insert(flow);
        self.submit(Request::Txn(txn), Pending::Create { masq, flow });
    }

    fn pull(&mut self, masq: MasqAddr, client: Option<Ipv4Addr>) {
        self.stats.pulls += 1;
        let prefix = self.layout.key(&MasqKey::Conn(masq));
        self.submit(
            Request::Range { prefix },
            Pending::PullConn { masq, client },
        );
    }

    /// Writes `rec` at `masq`'s key over revision `rev`; `delete_flow`: also delete that flow
    /// key.
    fn write_conn(
        &mut self,
        masq: MasqAddr,
        rec: &ConnRec,
        rev: Revision,
        delete_flow: Option<Flow>,
        then: Pending,
    ) {
        let ck = self.layout.key(&MasqKey::Conn(masq));
        let mut txn = Txn::default();
        txn.when(ck.clone(), rev);
        if self.put(&mut txn, ck, rec, None).is_err() {
            return;
        }
        if let Some(f) = delete_flow {
            txn.delete(self.layout.key(&MasqKey::Flow(f)));
        }
        self.submit(Request::Txn(txn), then);
    }

    fn put<T: serde::Serialize>(
        &mut self,
        txn: &mut Txn,
        key: Vec<u8>,
        rec: &T,
        lease: Option<LeaseId>,
    ) -> Result<(), ()> {
        match self.sealer.seal(&key, &encode(rec)) {
            Ok(v) => {
                txn.put(key, v, lease);
                Ok(())
            }
            Err(_) => {
                self.stats.store_errors += 1;
                Err(())
            }
        }
    }

    fn open<T: for<'de> serde::Deserialize<'de> + Versioned>(&mut self, kv: &Kv) -> Option<T> {
        let r = self
            .sealer
            .open(&kv.key, &kv.value)
            .ok()
            .and_then(|plain| decode::<T>(&plain));
        if r.is_none() {
            self.stats.bad_records += 1;
            tracing::warn!(target: "control", key = %String::from_utf8_lossy(&kv.key),
                "masq coordinator: a record that does not open or decode, ignored");
        }
        r
    }

    fn submit(&mut self, req: Request, then: Pending) {
        match self.store.submit(req) {
            Ok(t) => {
                self.pending.insert(t, then);
            }
            Err(e) => {
                self.stats.store_errors += 1;
                tracing::warn!(target: "control", error = %e, "masq coordinator: store request not submitted");
            }
        }
    }

    /// Handles every store answer and watch event that is ready.
    fn pump(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        loop {
            self.store.poll(&mut self.raw);
            if self.raw.is_empty() {
                return;
            }
            let evs = std::mem::take(&mut self.raw);
            for ev in evs {
                match ev {
                    Event::Done { ticket, result } => {
                        if let Some(p) = self.pending.remove(&ticket) {
                            self.done(p, result);
                        }
                    }
                    Event::Changes { changes, .. } => {
                        for c in changes {
                            self.change(c);
                        }
                    }
                    Event::Resync {
                        watch,
                        kvs,
                        revision,
                    } => {
                        if self.nodes_watch == Some(watch) {
                            self.nodes_rev = self.nodes_rev.max(revision);
                        }
                        // Everything the watch covers: puts for what is there (a key that
                        // went meanwhile stays until its own delete or a later read).
                        for kv in kvs {
                            self.change(Change::Put(kv));
                        }
                    }
                }
            }
        }
    }

    fn done(&mut self, p: Pending, result: Result<Reply, StoreError>) {
        let now = self.now_ms;
        let reply = match result {
            Ok(r) => r,
            Err(e) => {
                match (&p, &e) {
                    (
                        Pending::KeepAlive(id) | Pending::PutNode(id),
                        StoreError::LeaseNotFound(_),
                    ) if self.lease == Some(*id) => {
                        self.lost_lease("the store refused its keep-alive");
                    }
                    (Pending::Revoke(n), _) => {
                        // Gone already (expired, or another node revoked it first).
                        tracing::debug!(target: "control", node = %n, error = %e,
                            "masq coordinator: revoking a silent node's lease");
                    }
                    (Pending::Grant, _) => {
                        self.stats.store_errors += 1;
                        tracing::warn!(target: "control", error = %e,
                            "masq coordinator: no lease (trying again)");
                        self.granting = false;
                        self.regrant_at_ms = now.saturating_add(self.keepalive_every().max(100));
                    }
                    _ => {
                        self.stats.store_errors += 1;
                        tracing::warn!(target: "control", error = %e, "masq coordinator: store request failed");
                    }
                }
                self.failed(p);
                return;
            }
        };
        match (p, reply) {
            (Pending::Grant, Reply::Lease { id, .. }) => {
                self.granting = false;
                self.lease = Some(id);
                self.my_record = None;
                self.next_keepalive_ms = now.saturating_add(self.keepalive_every());
                self.started_ms = now;
                self.put_node();
                self.nodes.insert(self.name().to_string());
                // The blocks still recorded as ours (`rejoin`) are competed for once our
                // record is seen (`registered`).
            }
            (Pending::LoadNodes, Reply::Range { kvs, revision }) => {
                self.nodes_rev = self.nodes_rev.max(revision);
                for kv in kvs {
                    self.change(Change::Put(kv));
                }
                self.nodes_loaded = true;
                let prefix = self.layout.prefix("nodes/");
                self.submit(
                    Request::Watch {
                        prefix,
                        from: revision.saturating_add(1),
                    },
                    Pending::NodesWatch,
                );
                self.registered();
            }
            (Pending::NodesWatch, Reply::Watching(id)) => self.nodes_watch = Some(id),
            (Pending::LoadBlocks, Reply::Range { kvs, revision }) => {
                for kv in kvs {
                    self.change(Change::Put(kv));
                }
                self.blocks_loaded = true;
                // Blocks of ours from an earlier run of this node: read their connections.
                for b in self.owned_blocks() {
                    self.load_block(b);
                }
                self.registered();
                let prefix = self.layout.prefix("blocks/");
                self.submit(
                    Request::Watch {
                        prefix,
                        from: revision.saturating_add(1),
                    },
                    Pending::Watch,
                );
            }
            (
                Pending::Claim(b),
                Reply::Txn {
                    succeeded,
                    revision,
                },
            ) => {
                self.claiming = None;
                if !succeeded {
                    self.refused.insert(b);
                }
                if succeeded {
                    // Ours from this revision on (the watch brings the same record later).
                    self.own(b, 0, revision);
                    self.stats.blocks_claimed += 1;
                    // The block's record arrives by the blocks watch; read its (no)
                    // connections and watch them: the held flows retry after that read.
                    self.load_block(b);
                } else {
                    // Lost: the blocks watch brings the winner's record.
                    self.retry_held();
                }
            }
            (
                Pending::Take(b, epoch),
                Reply::Txn {
                    succeeded,
                    revision,
                },
            ) => {
                self.taking.remove(&b);
                if succeeded {
                    self.own(b, epoch, revision);
                    self.stats.blocks_taken += 1;
                    tracing::info!(target: "control", block = ?b, node = %self.p.node,
                        "masq coordinator: took over a block of a failed node");
                    self.load_block(b);
                }
            }
            (Pending::LoadBlockConns(b), Reply::Range { kvs, revision }) => {
                for kv in kvs {
                    self.change(Change::Put(kv));
                }
                self.ready_blocks.insert(b);
                if self.served.insert(b.addr) {
                    self.out.push_back(Output::Serve(b.addr));
                }
                let prefix = self.layout.block_conns(b);
                self.submit(
                    Request::Watch {
                        prefix,
                        from: revision.saturating_add(1),
                    },
                    Pending::Watch,
                );
                let waiting: Vec<MasqAddr> = self
                    .held_in
                    .iter()
                    .filter(|m| m.block() == b)
                    .copied()
                    .collect();
                for m in waiting {
                    self.held_in.remove(&m);
                    self.out.push_back(Output::RetryInbound(m));
                }
                self.retry_held();
            }
            (
                Pending::Create { masq, flow },
                Reply::Txn {
                    succeeded,
                    revision,
                },
            ) => {
                self.creating.remove(&masq);
                self.creating_flows.remove(&flow);
                if succeeded {
                    self.stats.allocated += 1;
                    let rec = ConnRec {
                        v: RECORD_VERSION,
                        flow,
                        user: self
                            .clients
                            .get(flow.client.ip())
                            .map(|c| c.user.clone())
                            .unwrap_or_default(),
                        fam: Some(self.name().to_string()),
                        fam_epoch: 1,
                        created_ms: now,
                        released_ms: None,
                    };
                    self.learn(masq, rec, revision);
                    self.fam.insert(flow, masq);
                    self.out.push_back(Output::FamInstall { flow, masq });
                } else {
                    // The flow exists (another node created it meanwhile) or the port is
                    // taken: read the flow's record and follow it.
                    self.stats.create_conflicts += 1;
                    let prefix = self.layout.key(&MasqKey::Flow(flow));
                    let client = *flow.client.ip();
                    if let Some(c) = self.clients.get_mut(&client) {
                        c.loading += 1;
                    }
                    self.submit(Request::Range { prefix }, Pending::LoadClient(client));
                }
                if self.held.remove(&flow) {
                    self.out.push_back(Output::Retry(flow));
                }
            }
            (Pending::LoadClient(client), Reply::Range { kvs, .. }) => {
                for kv in kvs {
                    let Some(MasqKey::Flow(_)) = self.layout.parse(&kv.key) else {
                        self.stats.bad_records += 1;
                        continue;
                    };
                    if let Some(fr) = self.open::<FlowRec>(&kv) {
                        if let Some(c) = self.clients.get_mut(&client) {
                            c.loading += 1;
                        }
                        self.pull(fr.masq, Some(client));
                    }
                }
                self.loaded_one(client);
            }
            (Pending::PullConn { masq, client }, Reply::Range { kvs, .. }) => {
                let key = self.layout.key(&MasqKey::Conn(masq));
                let found = kvs.iter().find(|kv| kv.key == key).cloned();
                if let Some(kv) = found {
                    self.change(Change::Put(kv));
                }
                if let Some(client) = client {
                    self.register(masq, client);
                    self.loaded_one(client);
                }
                if self.held_in.remove(&masq) {
                    self.out.push_back(Output::RetryInbound(masq));
                }
            }
            (
                Pending::Register(masq),
                Reply::Txn {
                    succeeded,
                    revision,
                },
            ) => {
                if !succeeded {
                    // Someone wrote first (the HAM, or the node the client was at): read it
                    // again and register again if the client is still here.
                    self.stats.stale_writes += 1;
                    if let Some(c) = self.conns.get_mut(&masq) {
                        c.busy = false;
                        c.written = None;
                        let client = *c.rec.flow.client.ip();
                        if let Some(cl) = self.clients.get_mut(&client) {
                            cl.loading += 1;
                            self.stats.pulls += 1;
                            let prefix = self.layout.key(&MasqKey::Conn(masq));
                            self.submit(
                                Request::Range { prefix },
                                Pending::PullConn {
                                    masq,
                                    client: Some(client),
                                },
                            );
                        }
                    }
                    return;
                }
                self.after_write(masq, succeeded, revision, |me, masq| {
                    me.stats.registered += 1;
                    if let Some(c) = me.conns.get(&masq) {
                        let flow = c.rec.flow;
                        let parked = me.parked.remove(&flow).is_some();
                        if me.fam.insert(flow, masq).is_none() || parked {
                            me.out.push_back(Output::FamInstall { flow, masq });
                        }
                    }
                });
            }
            (
                Pending::Unregister(masq),
                Reply::Txn {
                    succeeded,
                    revision,
                },
            ) => {
                self.after_write(masq, succeeded, revision, |_, _| {});
            }
            (
                Pending::Release(masq),
                Reply::Txn {
                    succeeded,
                    revision,
                },
            ) => {
                self.after_write(masq, succeeded, revision, |me, masq| {
                    me.stats.released += 1;
                    if let Some(c) = me.conns.get(&masq) {
                        let flow = c.rec.flow;
                        if me.fam.remove(&flow).is_some() {
                            me.out.push_back(Output::FamRemove { flow, masq });
                        }
                    }
                });
            }
            (Pending::Free(masq), Reply::Txn { succeeded, .. }) => {
                if succeeded {
                    self.stats.freed += 1;
                    self.forget(masq);
                } else if let Some(c) = self.conns.get_mut(&masq) {
                    c.busy = false;
                }
            }
            (
                Pending::PutNode(_) | Pending::KeepAlive(_) | Pending::Watch | Pending::NodesWatch,
                _,
            ) => {}
            (Pending::Revoke(n), _) => {
                tracing::info!(target: "control", node = %n, "masq coordinator: a silent node's lease revoked");
            }
            (_, other) => {
                self.stats.store_errors += 1;
                tracing::warn!(target: "control", reply = ?other, "masq coordinator: unexpected store reply");
            }
        }
    }

    /// After a compare-on-revision write of a connection: on success the record is what we
    /// wrote (applied here, the watch may bring it again); on failure someone wrote first:
    /// read it again.
    fn after_write(
        &mut self,
        masq: MasqAddr,
        succeeded: bool,
        revision: Revision,
        then: impl FnOnce(&mut Self, MasqAddr),
    ) {
        if let Some(c) = self.conns.get_mut(&masq) {
            c.busy = false;
        }
        if succeeded {
            if let Some(c) = self.conns.get_mut(&masq) {
                if let Some(rec) = c.written.take() {
                    c.rec = rec;
                    c.rev = c.rev.max(revision);
                }
            }
            then(self, masq);
            self.route(masq);
            self.prune(masq);
        } else {
            self.stats.stale_writes += 1;
            self.pull(masq, None);
        }
    }

    fn failed(&mut self, p: Pending) {
        match p {
            Pending::Claim(_) => {
                self.claiming = None;
                self.retry_held();
            }
            Pending::Take(b, _) => {
                self.taking.remove(&b);
            }
            Pending::PutNode(id) if self.lease == Some(id) && self.my_record.is_none() => {
                self.put_node_again = true;
            }
            Pending::Create { masq, flow } => {
                self.creating.remove(&masq);
                self.creating_flows.remove(&flow);
                if self.held.remove(&flow) {
                    self.out.push_back(Output::Retry(flow));
                }
            }
            Pending::LoadClient(c)
            | Pending::PullConn {
                client: Some(c), ..
            } => {
                self.loaded_one(c);
            }
            Pending::Register(m)
            | Pending::Unregister(m)
            | Pending::Release(m)
            | Pending::Free(m) => {
                if let Some(c) = self.conns.get_mut(&m) {
                    c.busy = false;
                    c.written = None;
                }
            }
            _ => {}
        }
    }

    fn loaded_one(&mut self, client: Ipv4Addr) {
        let done = match self.clients.get_mut(&client) {
            Some(c) => {
                c.loading = c.loading.saturating_sub(1);
                c.loading == 0
            }
            None => false,
        };
        if done {
            let flows: Vec<Flow> = self
                .held
                .iter()
                .filter(|f| f.client.ip() == &client)
                .copied()
                .collect();
            for f in flows {
                self.held.remove(&f);
                self.out.push_back(Output::Retry(f));
            }
        }
    }

    fn retry_held(&mut self) {
        let flows: Vec<Flow> = self
            .held
            .iter()
            .filter(|f| !self.creating_flows.contains(f))
            .copied()
            .collect();
        for f in flows {
            let loading = self
                .clients
                .get(f.client.ip())
                .is_some_and(|c| c.loading > 0);
            if !loading {
                self.held.remove(&f);
                self.out.push_back(Output::Retry(f));
            }
        }
    }

    /// Registers this node as the FAM of `masq` (a connection of `client`), if the record is
    /// live.
    fn register(&mut self, masq: MasqAddr, client: Ipv4Addr) {
        let me = self.name().to_string();
        let Some(c) = self.conns.get_mut(&masq) else {
            return;
        };
        if c.rec.released_ms.is_some() || c.rec.flow.client.ip() != &client {
            return;
        }
        c.last_ms = self.now_ms;
        if c.rec.fam.as_deref() == Some(me.as_str()) {
            let flow = c.rec.flow;
            let parked = self.parked.remove(&flow).is_some();
            if self.fam.insert(flow, masq).is_none() || parked {
                self.out.push_back(Output::FamInstall { flow, masq });
            }
            return;
        }
        if c.busy {
            return;
        }
        c.busy = true;
        let mut rec = c.rec.clone();
        rec.fam = Some(me);
        rec.fam_epoch = rec.fam_epoch.saturating_add(1);
        let rev = c.rev;
        c.written = Some(rec.clone());
        // The flow's address is known: rewrite at once, the registration is for the HAM.
        let flow = rec.flow;
        let parked = self.parked.remove(&flow).is_some();
        if self.fam.insert(flow, masq).is_none() || parked {
            self.out.push_back(Output::FamInstall { flow, masq });
        }
        self.write_conn(masq, &rec, rev, None, Pending::Register(masq));
    }

    /// Records that the store gave us `b` at `revision`.
    fn own(&mut self, b: BlockId, epoch: u64, revision: Revision) {
        let newer = self.blocks.get(&b).is_none_or(|(_, r)| *r < revision);
        if newer {
            let rec = BlockRec {
                v: RECORD_VERSION,
                owner: self.name().to_string(),
                epoch,
            };
            self.blocks.insert(b, (rec, revision));
        }
    }

    fn load_block(&mut self, b: BlockId) {
        let prefix = self.layout.block_conns(b);
        self.submit(Request::Range { prefix }, Pending::LoadBlockConns(b));
    }

    /// Applies a stored change (a read, a watch event).
    fn change(&mut self, c: Change) {
        let (key, kv) = match &c {
            Change::Put(kv) => (kv.key.clone(), Some(kv)),
            Change::Delete { key, .. } => (key.clone(), None),
        };
        let Some(k) = self.layout.parse(&key) else {
            self.stats.bad_records += 1;
            return;
        };
        if matches!(k, MasqKey::Node(_)) {
            self.nodes_rev = self.nodes_rev.max(c.revision());
        }
        match (k, kv) {
            (MasqKey::Node(n), Some(kv)) => {
                if let Some(rec) = self.open::<NodeRec>(kv) {
                    if n.as_str() == self.name() {
                        if self.lease.is_some_and(|l| l.0 == kv.lease) {
                            self.my_record = Some(kv.mod_revision);
                            self.registered();
                        }
                        // A record of an earlier lease of ours (being replaced): not live.
                        return;
                    }
                    let appeared = self.nodes.insert(n.as_str().to_string());
                    self.liveness
                        .peer(n.as_str(), kv.lease, rec.alive.as_deref());
                    if appeared {
                        // Connections registered to it before its record reached us were
                        // routed nowhere (their FAM was not live here yet): route them now.
                        let waiting: Vec<MasqAddr> = self
                            .conns
                            .iter()
                            .filter(|(_, c)| c.rec.fam.as_deref() == Some(n.as_str()))
                            .map(|(m, _)| *m)
                            .collect();
                        for m in waiting {
                            self.route(m);
                        }
                    }
                    let link = (rec.link, rec.incarnation);
                    if self.peers.get(n.as_str()) != Some(&link) {
                        self.peers.insert(n.as_str().to_string(), link.clone());
                        self.out.push_back(Output::Peer {
                            node: n.as_str().to_string(),
                            link: Some(link),
                        });
                    }
                }
            }
            (MasqKey::Node(n), None) => {
                if n.as_str() == self.name() {
                    let deleted_at = match &c {
                        Change::Delete { mod_revision, .. } => *mod_revision,
                        Change::Put(_) => 0,
                    };
                    if self.my_record.is_some_and(|r| r < deleted_at) {
                        self.lost_lease("its record was deleted (lease revoked or expired)");
                    }
                } else {
                    self.liveness.gone(n.as_str());
                    self.nodes.remove(n.as_str());
                    if self.peers.remove(n.as_str()).is_some() {
                        self.out.push_back(Output::Peer {
                            node: n.as_str().to_string(),
                            link: None,
                        });
                    }
                    tracing::info!(target: "control", node = %n, "masq coordinator: a node's lease went");
                    // Connections it was the FAM of: the HAM forwards nowhere now, and waits
                    // a whole timeout from now for the client to show up elsewhere.
                    let now = self.now_ms;
                    let gone: Vec<MasqAddr> = self
                        .conns
                        .iter_mut()
                        .filter(|(_, c)| c.rec.fam.as_deref() == Some(n.as_str()))
                        .map(|(m, c)| {
                            c.last_ms = now;
                            *m
                        })
                        .collect();
                    for m in gone {
                        self.route(m);
                    }
                    self.take_over_orphans();
                }
            }
            (MasqKey::Block(b), Some(kv)) => {
                let rev = kv.mod_revision;
                if let Some(rec) = self.open::<BlockRec>(kv) {
                    let newer = self.blocks.get(&b).is_none_or(|(_, r)| *r < rev);
                    if newer {
                        let mine_now = rec.owner == self.name();
                        self.blocks.insert(b, (rec, rev));
                        if !mine_now && self.ready_blocks.remove(&b) {
                            self.unserve_if_unused(b.addr);
                        }
                    }
                }
            }
            (MasqKey::Block(b), None) => {
                self.blocks.remove(&b);
                if self.ready_blocks.remove(&b) {
                    self.unserve_if_unused(b.addr);
                }
            }
            (MasqKey::Conn(m), Some(kv)) => {
                let rev = kv.mod_revision;
                if let Some(rec) = self.open::<ConnRec>(kv) {
                    if rec.flow.proto != m.proto {
                        self.stats.bad_records += 1;
                        return;
                    }
                    self.learn(m, rec, rev);
                }
            }
            (MasqKey::Conn(m), None) => self.forget(m),
            (MasqKey::Flow(_), _) => {}
        }
    }

    /// Takes a record of `m` at revision `rev` if it is newer than what we have.
    fn learn(&mut self, m: MasqAddr, rec: ConnRec, rev: Revision) {
        let me = self.name().to_string();
        let now = self.now_ms;
        match self.conns.get_mut(&m) {
            Some(c) if c.rev >= rev => return,
            Some(c) => {
                // A FAM that registered or left is a sign of life the data plane does not
                // give (it forwards and rewrites without telling the node): without it a
                // HAM would release a busy connection in the gap of a move made more than
                // a timeout after the connection began, as idle since its first packet.
                if c.rec.fam != rec.fam {
                    c.last_ms = now;
                }
                c.rec = rec;
                c.rev = rev;
            }
            None => {
                self.conns.insert(
                    m,
                    ConnState {
                        rec,
                        rev,
                        last_ms: now,
                        busy: false,
                        written: None,
                    },
                );
            }
        }
        // Another node is its FAM now, or it was released: stop rewriting it here.
        if let Some(c) = self.conns.get(&m) {
            let flow = c.rec.flow;
            let still_mine =
                c.rec.fam.as_deref() == Some(me.as_str()) && c.rec.released_ms.is_none();
            if !still_mine && self.fam.get(&flow) == Some(&m) {
                self.fam.remove(&flow);
                self.out.push_back(Output::FamRemove { flow, masq: m });
            }
        }
        self.route(m);
        // Kept while a registration of ours is being decided (the pull that follows a
        // conflict) or while a client of ours might still register it.
        let client_here = self
            .conns
            .get(&m)
            .is_some_and(|c| self.clients.contains_key(c.rec.flow.client.ip()));
        if !client_here {
            self.prune(m);
        }
    }

    /// Drops a record this node neither serves (HAM) nor rewrites (FAM): nobody pushes its
    /// changes here.
    fn prune(&mut self, m: MasqAddr) {
        if self.owns(m.block()) {
            return;
        }
        let keep = self
            .conns
            .get(&m)
            .is_some_and(|c| c.busy || self.fam.get(&c.rec.flow) == Some(&m));
        if !keep {
            self.conns.remove(&m);
        }
    }

    fn forget(&mut self, m: MasqAddr) {
        if let Some(c) = self.conns.remove(&m) {
            if self.fam.get(&c.rec.flow) == Some(&m) {
                self.fam.remove(&c.rec.flow);
                self.out.push_back(Output::FamRemove {
                    flow: c.rec.flow,
                    masq: m,
                });
            }
            if self.owns(m.block()) {
                self.out.push_back(Output::Route { masq: m, fam: None });
            }
        }
    }

    /// HAM: tells the data plane where `m`'s inbound goes.
    fn route(&mut self, m: MasqAddr) {
        if !self.owns(m.block()) {
            return;
        }
        let me = self.name();
        let fam = self.conns.get(&m).and_then(|c| {
            let f = c.rec.fam.as_ref()?;
            (c.rec.released_ms.is_none() && f != me && self.nodes.contains(f)).then(|| f.clone())
        });
        self.out.push_back(Output::Route { masq: m, fam });
    }

    /// Idle connections released (FAM, or HAM for FAM-less ones), quarantined ones freed.
    fn expire(&mut self, now: u64) {
        let me = self.name().to_string();
        let mut release = Vec::new();
        let mut park = Vec::new();
        let mut free = Vec::new();
        // Flows that left the FAM table otherwise (moved on, released, forgotten).
        let fam = &self.fam;
        self.parked.retain(|f, _| fam.contains_key(f));
        for (m, c) in &self.conns {
            if c.busy {
                continue;
            }
            let owns = self
                .blocks
                .get(&m.block())
                .is_some_and(|(r, _)| r.owner == me);
            match c.rec.released_ms {
                Some(at) => {
                    if owns && now >= at.saturating_add(self.p.reuse_delay_ms) {
                        free.push((*m, c.rev));
                    }
                }
                None => {
                    let idle = now.saturating_sub(c.last_ms) >= self.p.idle_ms(m.proto);
                    let fam_here = c.rec.fam.as_deref() == Some(me.as_str())
                        && self.fam.contains_key(&c.rec.flow);
                    let fam_gone = match &c.rec.fam {
                        None => true,
                        Some(f) => !self.nodes.contains(f),
                    };
                    if idle && fam_here {
                        // What this node last heard is not what the data plane last
                        // rewrote: park first, release only if it then stays silent for a
                        // whole timeout (so a connection goes between one and two timeouts
                        // after its last packet).
                        match self.parked.get(&c.rec.flow) {
                            None => park.push((c.rec.flow, *m)),
                            Some(at) if now.saturating_sub(*at) >= self.p.idle_ms(m.proto) => {
                                release.push(*m)
                            }
                            Some(_) => {}
                        }
                    } else if idle && owns && fam_gone {
                        release.push(*m);
                    }
                }
            }
        }
        for (flow, masq) in park {
            self.parked.insert(flow, now);
            self.out.push_back(Output::FamRemove { flow, masq });
        }
        for m in release {
            let Some(c) = self.conns.get_mut(&m) else {
                continue;
            };
            c.busy = true;
            let mut rec = c.rec.clone();
            rec.fam = None;
            rec.released_ms = Some(now);
            let rev = c.rev;
            let flow = rec.flow;
            c.written = Some(rec.clone());
            self.write_conn(m, &rec, rev, Some(flow), Pending::Release(m));
        }
        for (m, rev) in free {
            if let Some(c) = self.conns.get_mut(&m) {
                c.busy = true;
            }
            let key = self.layout.key(&MasqKey::Conn(m));
            let mut txn = Txn::default();
            txn.when(key.clone(), rev).delete(key);
            self.submit(Request::Txn(txn), Pending::Free(m));
        }
    }

    /// Blocks whose owner is not live: the owner's successor (the next live node in name
    /// order) takes them over; compare-on-revision makes one taker win.
    fn take_over_orphans(&mut self) {
        if !self.is_ready() {
            return;
        }
        let me = self.name().to_string();
        let orphans: Vec<(BlockId, BlockRec, Revision)> = self
            .blocks
            .iter()
            .filter(|(b, (r, rev))| {
                !self.nodes.contains(&r.owner) && *rev <= self.nodes_rev && !self.taking.contains(b)
            })
            .map(|(b, (r, rev))| (*b, r.clone(), *rev))
            .collect();
        for (b, rec, rev) in orphans {
            if successor(&self.nodes, &rec.owner).as_deref() != Some(me.as_str()) {
                continue;
            }
            self.take(b, &rec, rev);
        }
    }

    /// Claims block `b` (recorded as `rec` at `rev`) for this node, compare-on-revision.
    fn take(&mut self, b: BlockId, rec: &BlockRec, rev: Revision) {
        let new = BlockRec {
            v: RECORD_VERSION,
            owner: self.name().to_string(),
            epoch: rec.epoch.saturating_add(1),
        };
        let key = self.layout.key(&MasqKey::Block(b));
        let mut txn = Txn::default();
        txn.when(key.clone(), rev);
        if self.put(&mut txn, key, &new, None).is_ok() {
            self.taking.insert(b);
            self.submit(Request::Txn(txn), Pending::Take(b, new.epoch));
        }
    }

    /// Our record under the current lease is in the store and the nodes are read: the flows
    /// held for a block claim are retried, and after a lost lease the blocks still recorded
    /// as ours are competed for again (a successor may be taking them now: one of us wins
    /// each).
    fn registered(&mut self) {
        if !self.is_ready() {
            return;
        }
        if std::mem::take(&mut self.rejoin) {
            let mine: Vec<(BlockId, BlockRec, Revision)> = self
                .blocks
                .iter()
                .filter(|(b, (r, _))| r.owner == self.name() && !self.taking.contains(b))
                .map(|(b, (r, rev))| (*b, r.clone(), *rev))
                .collect();
            for (b, rec, rev) in mine {
                self.take(b, &rec, rev);
            }
        }
        self.retry_held();
    }

    /// No ready block of ours is on `addr` any more: stop serving it.
    fn unserve_if_unused(&mut self, addr: Ipv4Addr) {
        if !self.ready_blocks.iter().any(|b| b.addr == addr) && self.served.remove(&addr) {
            tracing::info!(target: "control", %addr, node = %self.p.node,
                "masq coordinator: no block of ours on the address any more: withdrawn");
            self.out.push_back(Output::Unserve(addr));
        }
    }

    /// Our lease went while we ran (revoked after a false suspicion, or expired during a
    /// partition): a successor may be taking our blocks, so withdraw every address now and
    /// register again; the blocks still recorded as ours are competed for at the new grant.
    fn lost_lease(&mut self, why: &str) {
        if self.lease.take().is_none() {
            return;
        }
        self.stats.lease_lost += 1;
        tracing::warn!(target: "control", node = %self.p.node, why,
            "masq coordinator: this node's lease went while it ran: addresses withdrawn, registering again");
        self.next_keepalive_ms = u64::MAX;
        self.my_record = None;
        let me = self.name().to_string();
        self.nodes.remove(&me);
        for a in std::mem::take(&mut self.served) {
            self.out.push_back(Output::Unserve(a));
        }
        self.ready_blocks.clear();
        self.rejoin = true;
        self.grant();
    }

    fn grant(&mut self) {
        self.granting = true;
        self.regrant_at_ms = u64::MAX;
        self.submit(
            Request::LeaseGrant {
                ttl_s: self.p.node_ttl_s,
            },
            Pending::Grant,
        );
    }

    /// The heartbeats due now (`super::liveness`): (address, datagram) for each peer that
    /// publishes a heartbeat address. None without `alive` or a lease.
    pub fn heartbeats(&mut self, now_ms: u64) -> Vec<(String, Vec<u8>)> {
        let (Some(lease), Some(_)) = (self.lease, self.p.alive.as_ref()) else {
            return Vec::new();
        };
        if now_ms < self.next_heartbeat_ms {
            return Vec::new();
        }
        self.next_heartbeat_ms = now_ms.saturating_add(self.p.heartbeat_ms.max(1));
        let hb = Heartbeat {
            cluster: self.p.cluster.as_str().to_string(),
            node: self.name().to_string(),
            lease: lease.0,
        }
        .encode();
        self.liveness
            .targets()
            .map(|(_, a)| (a.to_string(), hb.clone()))
            .collect()
    }

    /// A datagram on the heartbeat socket.
    pub fn heartbeat_in(&mut self, b: &[u8], now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        match Heartbeat::decode(b) {
            Some(h)
                if h.cluster == self.p.cluster.as_str()
                    && self.liveness.heard(&h.node, h.lease, self.now_ms) =>
            {
                self.stats.heartbeats_in += 1;
            }
            _ => self.stats.heartbeats_bad += 1,
        }
    }

    /// Heard peers silent past `dead_after_ms` whose blocks this node would take: their
    /// leases are revoked (the take-over follows the deletion of their records).
    fn judge(&mut self, now: u64) {
        if self.p.alive.is_none() || !self.is_ready() {
            return;
        }
        let me = self.name().to_string();
        for (n, lease) in self.liveness.silent(now, self.p.dead_after_ms) {
            if !self.nodes.contains(&n) || successor(&self.nodes, &n).as_deref() != Some(&me) {
                continue;
            }
            self.liveness.mark_revoked(&n);
            self.stats.peers_revoked += 1;
            tracing::warn!(target: "control", node = %n, silent_ms = self.p.dead_after_ms,
                "masq coordinator: no heartbeat from a node: revoking its lease to take its blocks over");
            self.submit(Request::LeaseRevoke(LeaseId(lease)), Pending::Revoke(n));
        }
    }
}

/// The live node after `failed` in name order (wrapping), `failed` itself excluded.
pub fn successor(live: &BTreeSet<String>, failed: &str) -> Option<String> {
    live.iter()
        .find(|n| n.as_str() > failed)
        .or_else(|| live.iter().find(|n| n.as_str() != failed))
        .cloned()
}

fn access_id(t: &AccessTable, user: &str) -> Option<UserId> {
    t.user(user)
}
