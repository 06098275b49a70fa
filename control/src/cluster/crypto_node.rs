//! The crypto node, sans-IO: IKE for every edge of the cluster, as the edge's address.
//!
//! A [`CryptoNode`] holds one [`ControlCore`] (the IKE endpoint, the CHILD_SA repository,
//! the decisions), the cluster's SA placement ([`SaPlacement`]) and, per edge, the numbered
//! SA carriers not yet acknowledged and the messages waiting to be sent. Inputs, each with an
//! explicit `now`: an edge's messages ([`CryptoNode::handle`]), a connection that came or went
//! ([`CryptoNode::edge_up`], [`CryptoNode::edge_down`]), timeouts. Outputs: per edge
//! [`NodeMsg`]s ([`CryptoNode::poll_for`]), log lines, the IKE view.
//!
//! **IKE as the edge's address.** An edge forwards every IKE datagram unchanged, tagged with
//! the outer addresses and ports it came from and to; the endpoint answers from the address
//! the request came to (`Datagram::dst`), so a client sees one gateway whichever edge its
//! packets reach. An answer (or a request of ours) goes back through the edge that forwarded
//! the latest message of its IKE SA (by the initiator's SPI in the IKE header), else the
//! latest edge of that peer address: one IKE SA may see IKE_SA_INIT through edge A and
//! IKE_AUTH through edge B.
//!
//! **Pro-active distribution.** The core queues a CHILD_SA's updates ahead of the datagram of
//! the exchange that made it; here the updates of one input go into one carrier to the edge
//! that forwarded that input, and the carrier is queued on that edge's channel before the
//! answer. The edge applies a carrier to its data plane before it sends any datagram that
//! came after it (`cluster::edge`), so the first ESP packet after the IKE_AUTH response finds
//! its SA. The placement records which edge holds what.
//!
//! **On demand.** An edge reporting ESP for an SPI it does not hold (`Event::UnknownSpi`,
//! rate-limited by the data plane to one report per 10 ms) gets the inbound SA in a
//! carrier if the repository has it; the packets before it arrives are dropped and counted
//! by the edge's data plane (`unknown_spi`), not held: ESP is end-to-end retransmitted by the
//! traffic's own protocols, and holding packets in the fast path would cost every packet.
//!
//! **Moves between edges.** The unknown-SPI report of an edge that another edge's client now
//! reaches also moves the CHILD_SA's outbound SA and host binding there ([`CryptoNode`]'s
//! `follow`), resumed above the SA's fence: every outbound SA on an edge carries a
//! reservation the node raises on its checkpoints (`refill`) and records as the fence first,
//! so no edge can have sent above it. The argument: `docs/architecture.md`, "Edge-to-edge
//! move".
//!
//! **Carriers across reconnects.** Carriers are numbered per edge and acknowledged; an edge
//! that reconnects with the same incarnation gets every unacknowledged carrier again and
//! skips the numbers it applied (an outbound SA installed twice would start its sequence
//! numbers again: a GCM nonce reuse). An edge with a new incarnation, or one whose data plane
//! restarted empty, holds nothing: its placement is forgotten and every CHILD_SA whose SAs it
//! held is rekeyed (fresh keys, so no sequence number is ever sent twice under one key).
//!
//! Owns: the routing of updates and datagrams to edges, carrier numbering, the placement.
//! Must never: read a clock; send an outbound SA to a second edge; send a datagram to an edge
//! ahead of a carrier queued before it; log key material.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use ike::Instant;
use proto::sa::SaRef;
use proto::{Datagram, Direction, Event, Update};

use super::filter::{Client, Filters};
use super::msg::{ike_spi_i, EdgeId, EdgeMsg, NodeMsg, MAX_CARRIER_UPDATES};
use super::placement::SaPlacement;
use super::repository::{
    edge_name, Recovered, RecoveryReport, StoreBatch, StoreOp, PLACED_CHILD, PLACED_COPY,
    PLACED_DRAIN,
};

/// A carrier's inbound SA of a CHILD_SA (the holder's own).
const CARRIED_IN: u8 = 1;
/// A carrier's outbound SA of a CHILD_SA.
const CARRIED_OUT: u8 = 2;
/// A carrier's watched copy of a CHILD_SA's inbound SA (ahead of the client).
const CARRIED_COPY: u8 = 4;
use super::store::{Record, RecordKey};
use crate::core::{ControlCore, Output};

/// The most IKE SAs / peer addresses whose last edge is remembered (oldest forgotten first).
const MAX_ROUTES: usize = 1 << 18;

/// How often an edge's outbound SA reports its sequence number unless the core asked for
/// its own checkpoints: the repository's freshest state, which a move will resume above.
pub const DEFAULT_CHECKPOINT: proto::sa::Checkpoint = proto::sa::Checkpoint {
    packets: 4096,
    millis: 100,
};

/// How many sequence numbers past the last one used an outbound SA on an edge may send
/// (its reservation, raised as its checkpoints come in). Half of it must outlast a
/// checkpoint interval at the highest rate (4096 packets + 1M packets/s x 200 ms); the whole
/// is the most a move jumps, and what an edge cut off from the crypto node may still send
/// per SA before the SA holds (52 s at 10,000 packets/s). 2^32 / 2^19: an SA without ESN
/// survives 8192 moves before it must be rekeyed.
pub const DEFAULT_SEQ_GRANT: u64 = 1 << 19;

/// Counters of the node (the view and the tests read them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Moves applied by their new edge (the LAN's designation follows: `designated_hosts`).
    pub moves_applied: u64,
    pub ike_in: u64,
    pub ike_out: u64,
    pub carriers: u64,
    pub updates_carried: u64,
    /// Datagrams with no connected edge to leave through (IKE retransmits them).
    pub no_edge: u64,
    /// Updates that named no SA any edge holds, or an SA on no edge.
    pub unplaced: u64,
    /// Messages from an edge that did not say hello first, or named another edge.
    pub refused: u64,
    /// Inbound SAs sent on demand (an edge reported an unknown SPI we hold).
    pub on_demand: u64,
    /// Carriers sent again after a reconnect.
    pub resent: u64,
    /// Store batches handed to the driver, and messages that waited for one.
    pub store_batches: u64,
    pub store_ops: u64,
    /// Edges that said hello to this node after a restart with the incarnation the store
    /// knew: their SAs were kept.
    pub edges_kept: u64,
    /// Edge-to-edge moves: a client's ESP reached another edge, its outbound SA followed.
    pub moves: u64,
    /// Reservations raised on edges (`ReserveSeq`).
    pub grants: u64,
    /// CHILD SA directions an edge filter placed on an encryption node (issue 18 item 7).
    pub on_encryption_node: u64,
    /// Unknown-SPI reports for SAs on an encryption node (ESP that reached an edge before
    /// the filter's policy did): not answered, the SA stays where the filter put it.
    pub filtered_unknown_spi: u64,
    /// Watched copies of inbound SAs sent to edges other than the forwarding one (ahead of
    /// the client: `spread`), and copies re-armed after a move with the merged window.
    pub spread: u64,
    pub rearmed: u64,
    /// First authentic packets at an edge of a watched inbound SA (what moves a client now).
    pub first_use: u64,
    /// First uses that moved nothing: the packet was older than one another copy had
    /// already accepted (a straggler the client sent before its path changed, read at the
    /// edge it left after that edge's copy was watched again).
    pub stale_first_use: u64,
    /// Moves whose old edge kept its outbound SA and host binding (capped at its
    /// reservation) until the LAN's traffic for the client reached the new edge, and drains
    /// ended by the new holder's first checkpoint above its start.
    pub drains: u64,
    pub drains_ended: u64,
}

#[derive(Default)]
struct EdgeLink {
    connected: bool,
    incarnation: Option<u64>,
    next_carrier: u64,
    applied: u64,
    /// Sent, not acknowledged: (number, updates, when sent).
    unacked: VecDeque<(u64, Vec<Update>, Instant)>,
    /// This input's updates for this edge, not yet in a carrier.
    pending: Vec<Update>,
    /// Messages, each with the store batch that must be committed before it leaves.
    out: VecDeque<(u64, NodeMsg)>,
    /// Carrier round trips (sent -> acknowledged as applied), most recent last.
    round_trips: VecDeque<Duration>,
    /// Moves to this edge in this input's updates, not yet in a carrier: when each began, the
    /// host addresses it designates here.
    moves_pending: Vec<(Instant, Vec<IpAddr>)>,
    /// Moves to this edge in carriers not yet acknowledged: (carrier number, when it began,
    /// its hosts).
    moves_in_flight: VecDeque<(u64, Instant, Vec<IpAddr>)>,
}

/// A bounded map from keys to the edge seen last.
struct Routes<K> {
    map: HashMap<K, EdgeId>,
    order: VecDeque<K>,
}

impl<K: std::hash::Hash + Eq + Copy> Routes<K> {
    fn new() -> Self {
        Routes {
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }
    fn set(&mut self, k: K, e: EdgeId) {
        if self.map.insert(k, e).is_none() {
            self.order.push_back(k);
            if self.order.len() > MAX_ROUTES {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
    fn get(&self, k: &K) -> Option<EdgeId> {
        self.map.get(k).copied()
    }
}

pub struct CryptoNode {
    core: ControlCore,
    placement: SaPlacement,
    edges: BTreeMap<EdgeId, EdgeLink>,
    /// IKE SA (initiator's SPI) -> the edge that forwarded its latest message.
    ike_edge: Routes<u64>,
    /// Peer address -> the edge that forwarded its latest IKE message.
    peer_edge: Routes<IpAddr>,
    /// What every edge needs whatever SAs it holds (policy, masquerade), latest of each kind.
    globals: BTreeMap<u8, Update>,
    /// The edge whose input is being handled.
    current: Option<EdgeId>,
    logs: VecDeque<(String, bool)>,
    view: Option<String>,
    /// The `now` of the input being handled.
    now: Instant,
    /// Sequence checkpoints of outbound SAs sent to edges.
    checkpoint: proto::sa::Checkpoint,
    /// This process's incarnation (the welcome of every hello says it).
    incarnation: u64,
    /// The SA repository in the store, when there is one.
    store: Option<StoreState>,
    /// How far past its last used number an edge may send ([`DEFAULT_SEQ_GRANT`]).
    seq_grant: u64,
    /// Watched copies the store says edges hold of CHILD_SAs this node did not keep at its
    /// recovery: deleted on each edge when it says hello as the process the store knew.
    orphan_copies: BTreeMap<EdgeId, Vec<proto::Spi>>,
    /// Inbound SAs go to every connected edge when they are made (a watched copy on each
    /// edge but the forwarding one), so ESP decrypts wherever the client's path goes.
    spread: bool,
    /// Per edge, the edges its clients' inbound SAs are copied to (`cluster.neighbours`; an
    /// edge not listed: every edge).
    neighbours: BTreeMap<EdgeId, BTreeSet<EdgeId>>,
    /// Host addresses whose move is not applied yet, and the edges still designated for them
    /// (`designated_hosts`).
    designation_wait: HashMap<IpAddr, BTreeSet<EdgeId>>,
    /// Moves leave the old edge its outbound SA and host binding until the LAN's traffic
    /// reaches the new edge (`end_drain`); off: the old edge deletes them at the move.
    drain_moves: bool,
    /// At a move the new edge holds what it seals in its first this many microseconds
    /// (`Resume::hold_us`): the old edge's packets in flight reach the client first.
    move_hold_us: u32,
    /// Inbound SPI -> the union of the replay windows edges reported for it (first use,
    /// the old edge's export at a move): the floor every copy is re-armed with.
    marks: HashMap<proto::Spi, proto::sa::ReplayState>,
    /// Move times: the unknown-SPI report in -> the new edge acknowledged the carrier that
    /// moved the SA (applied to its data plane), most recent last.
    move_times: VecDeque<Duration>,
    /// Edge filters and encryption nodes (issue 18 item 7; `super::filter`).
    filters: FilterState,
    pub stats: NodeStats,
}

/// What the node keeps for the edge filters.
#[derive(Default)]
struct FilterState {
    filters: Filters,
    /// Connected clients by their CHILD_SA's inbound SPI.
    clients: BTreeMap<proto::Spi, Client>,
    /// The gateway addresses the clients' SAs use (the edges' shared public address).
    public: BTreeSet<IpAddr>,
    /// The core's latest policy: the filters' rules go in front of it.
    base: Vec<proto::policy::Rule>,
    /// Inbound SPIs of CHILD_SAs a filter placed on an encryption node.
    on_node: HashSet<proto::Spi>,
}

/// One CHILD_SA's record as last written.
#[derive(Default)]
struct StoredChild {
    inbound: Option<Box<proto::sa::SaParams>>,
    outbound: Option<Box<proto::sa::SaParams>>,
    /// The outbound SA's first fence (later fences go to `seq/<spi>`).
    fence: u64,
}

/// What the node keeps of its writes to the store (see [`CryptoNode::enable_store`]).
#[derive(Default)]
struct StoreState {
    /// This input's writes, not yet a batch.
    ops: Vec<StoreOp>,
    /// The number the batch being filled will get (batches count from 1).
    next: u64,
    /// Every batch up to this one is committed.
    committed: u64,
    /// Messages queued from now on wait for this batch (0: none).
    gate: u64,
    ready: VecDeque<StoreBatch>,
    /// Outbound SA id -> the inbound SPI of its CHILD_SA (the key both directions live under).
    pair: HashMap<proto::SaId, proto::Spi>,
    /// What each CHILD_SA's record holds (`child/<spi>`, by inbound SPI): a change to one
    /// direction writes the record whole, so one key (one etcd operation) carries both.
    children: HashMap<proto::Spi, StoredChild>,
    /// What each CHILD_SA's placement record holds (`placement/<spi>`): the edges that
    /// acknowledged it, with [`PLACED_CHILD`] or [`PLACED_COPY`].
    placed: HashMap<proto::Spi, BTreeMap<EdgeId, u8>>,
    /// The holder's start of each CHILD_SA whose outbound SA drains on an old edge
    /// ([`PLACED_DRAIN`] in its placement record).
    drain_start: HashMap<proto::Spi, u64>,
    /// Records this input changed, written whole (or deleted, if empty) when its batch is
    /// sealed.
    child_dirty: BTreeSet<proto::Spi>,
    placed_dirty: HashSet<proto::Spi>,
    /// The dirty placements in the order of their first change not yet written: each is
    /// written [`PLACEMENT_WRITE_DELAY`] after it, so the acknowledgements of one install's
    /// edges (both directions at one, a copy at each other) become one write.
    placed_queue: VecDeque<(Instant, proto::Spi)>,
    /// Placement records in the store (written at least once): a change to one of these (an
    /// SA moved, an edge lost) is written with the next batch, not delayed.
    placed_written: HashSet<proto::Spi>,
    placed_urgent: bool,
    /// The AddSa directions a carrier holds, by (edge, carrier number): (inbound SPI of the
    /// CHILD_SA, [`CARRIED_IN`], [`CARRIED_OUT`] or [`CARRIED_COPY`]).
    carried: BTreeMap<(EdgeId, u64), Vec<(proto::Spi, u8)>>,
    /// Directions an edge applied of a CHILD_SA not yet recorded as placed (bit 0 inbound,
    /// bit 1 outbound).
    applied: HashMap<(EdgeId, proto::Spi), u8>,
    /// Edge incarnations the store knew when this node recovered.
    known_edges: BTreeMap<EdgeId, u64>,
    /// Edges that said hello: (edge, incarnation) for the driver's lease.
    live: VecDeque<(EdgeId, u64)>,
    /// Outbound SAs whose sequence state changed since it was last written.
    seq_dirty: BTreeSet<proto::SaId>,
    seq_written: Option<Instant>,
    wall_ms: u64,
}

/// How often the freshest sequence states are written (each is an etcd write per SA: the
/// edges report every 100 ms; a restart does not need them, a move resumes above them plus a
/// jump).
pub const SEQ_WRITE_INTERVAL: Duration = Duration::from_secs(1);

impl StoreState {
    /// `spi`'s placement record changed at `now`: written with the first batch sealed
    /// [`PLACEMENT_WRITE_DELAY`] after its first change not yet written (at once if the
    /// store holds it already).
    fn placed_changed(&mut self, spi: proto::Spi, now: Instant) {
        if self.placed_dirty.insert(spi) {
            self.placed_queue.push_back((now, spi));
        }
        self.placed_urgent |= self.placed_written.contains(&spi);
    }
}

/// How long a placement change waits for others before it is written (nothing waits for a
/// placement: a crash in between only rekeys the CHILD_SA, as a crash before the edge's
/// acknowledgement does).
pub const PLACEMENT_WRITE_DELAY: Duration = Duration::from_millis(20);

const ROUND_TRIPS_KEPT: usize = 4096;

impl CryptoNode {
    /// A node around `core` (built with [`ControlCore::for_cluster_node`]).
    pub fn new(core: ControlCore) -> CryptoNode {
        let mut globals = BTreeMap::new();
        globals.insert(
            0,
            Update::ReplaceSpd {
                rules: core.policy_rules(),
            },
        );
        CryptoNode {
            core,
            placement: SaPlacement::default(),
            edges: BTreeMap::new(),
            ike_edge: Routes::new(),
            peer_edge: Routes::new(),
            globals,
            current: None,
            logs: VecDeque::new(),
            view: None,
            now: Instant::ZERO,
            checkpoint: DEFAULT_CHECKPOINT,
            incarnation: 0,
            store: None,
            seq_grant: DEFAULT_SEQ_GRANT,
            spread: true,
            neighbours: BTreeMap::new(),
            designation_wait: HashMap::new(),
            drain_moves: true,
            move_hold_us: super::config::DEFAULT_MOVE_HOLD_MS * 1000,
            orphan_copies: BTreeMap::new(),
            marks: HashMap::new(),
            move_times: VecDeque::new(),
            filters: FilterState::default(),
            stats: NodeStats::default(),
        }
    }

    /// The edge filters and encryption nodes of the `cluster` section (issue 18 item 7).
    pub fn set_filters(&mut self, filters: Filters) {
        self.filters.filters = filters;
        self.filters.base = self.core.policy_rules();
        let rules = self.filtered_policy();
        self.globals.insert(0, Update::ReplaceSpd { rules });
    }

    /// The filters, the clients they hold and where, for the `cluster` view.
    pub fn filter_view(&self) -> serde_json::Value {
        let f = &self.filters;
        let clients: Vec<serde_json::Value> = f
            .clients
            .iter()
            .map(|(spi, c)| {
                serde_json::json!({
                    "spi_in": format!("{:08x}", spi.0),
                    "identity": c.identity,
                    "vip": c.vip.map(|v| v.to_string()),
                    "outer": c.outer.to_string(),
                    "on_encryption_node": f.on_node.contains(spi),
                    "rules": f.filters.rules.iter().enumerate()
                        .filter(|(_, r)| r.matches(c)).map(|(i, _)| i).collect::<Vec<_>>(),
                })
            })
            .collect();
        let mut v = f.filters.view();
        v["clients"] = clients.into();
        v
    }

    fn is_encryption_node(&self, e: EdgeId) -> bool {
        self.filters.filters.encryption_nodes.contains(&e)
    }

    /// The policy every edge holds: the filters' rules for the connected clients in front of
    /// the core's.
    fn filtered_policy(&self) -> Vec<proto::policy::Rule> {
        let f = &self.filters;
        let public: Vec<IpAddr> = f.public.iter().copied().collect();
        let mut rules = f.filters.spd_rules(f.clients.values(), &public);
        rules.extend(f.base.iter().copied());
        rules
    }

    /// An SA direction the core installs: the client it belongs to is recorded for the
    /// filters (the policy changes when it is new), and the encryption node a filter names
    /// for it is where it goes (None: the forwarding edge, as without filters).
    fn filter_place(&mut self, dir: Direction, params: &proto::sa::SaParams) -> Option<EdgeId> {
        if self.filters.filters.is_empty() {
            return None;
        }
        let spi_in = match dir {
            Direction::Inbound => params.spi,
            Direction::Outbound => proto::Spi(self.core.child_of_sa(params.id, params.spi)?.0),
        };
        let host = if params.remote_ts.addr().is_ipv4() {
            32
        } else {
            128
        };
        let client = Client {
            identity: self.core.child_peer_identity(spi_in),
            vip: (params.remote_ts.prefix_len() == host).then(|| params.remote_ts.addr()),
            outer: params.remote,
            encap: params.encap.is_some(),
        };
        let node = self
            .filters
            .filters
            .encryption_node(&client)
            .map(|(_, n)| n);
        let new_public = self.filters.public.insert(params.local);
        let changed = self.filters.clients.get(&spi_in) != Some(&client);
        if changed || new_public {
            self.filters.clients.insert(spi_in, client);
            self.push_policy();
        }
        match node {
            Some(n) => {
                self.filters.on_node.insert(spi_in);
                self.stats.on_encryption_node += 1;
                Some(n)
            }
            None => {
                self.filters.on_node.remove(&spi_in);
                None
            }
        }
    }

    /// The client of outbound SA `id` moved (MOBIKE, a NAT mapping change): its filter rules
    /// follow its new outer address (the edges pass its ESP, its direct hosts, drop the rest
    /// for the address it uses now, and no longer for the old one).
    fn filter_rebind(&mut self, id: proto::SaId, remote: IpAddr, encap: bool) {
        if self.filters.filters.is_empty() {
            return;
        }
        let Some(spi_out) = self.placement.outbound_params(id).map(|p| p.spi) else {
            return;
        };
        let Some(spi_in) = self.core.child_of_sa(id, spi_out).map(|c| proto::Spi(c.0)) else {
            return;
        };
        let Some(c) = self.filters.clients.get_mut(&spi_in) else {
            return;
        };
        if c.outer != remote || c.encap != encap {
            c.outer = remote;
            c.encap = encap;
            self.push_policy();
        }
    }

    /// The client of a CHILD_SA that went: its filter rules go from the policy.
    fn filter_forget(&mut self, spi_in: proto::Spi) {
        self.filters.on_node.remove(&spi_in);
        if self.filters.clients.remove(&spi_in).is_some() {
            self.push_policy();
        }
    }

    fn push_policy(&mut self) {
        let u = Update::ReplaceSpd {
            rules: self.filtered_policy(),
        };
        self.globals.insert(0, u.clone());
        let all = self.all_edges();
        self.push_to(&all, u);
    }

    /// This process's incarnation (random, new at every start: edges count carriers per
    /// incarnation).
    pub fn set_incarnation(&mut self, incarnation: u64) {
        self.incarnation = incarnation;
    }

    /// Keeps the SA repository in a store from now on (see `cluster::repository` for what is
    /// written when, and why a crash loses nothing a client uses): every change is handed
    /// out as a [`StoreBatch`] ([`CryptoNode::poll_store`]), and what was queued for an edge
    /// after a batch leaves only once the driver says it is committed
    /// ([`CryptoNode::store_committed`]).
    pub fn enable_store(&mut self) {
        self.core.enable_durability();
        self.store = Some(StoreState {
            next: 1,
            ..StoreState::default()
        });
    }

    /// The wall clock (milliseconds since the Unix epoch) for what is written.
    pub fn set_wall_clock(&mut self, unix_ms: u64) {
        self.core.set_wall_clock(unix_ms);
        if let Some(st) = &mut self.store {
            st.wall_ms = unix_ms;
        }
    }

    /// The next batch of writes for the store, oldest first: write them in order, each all
    /// or none.
    pub fn poll_store(&mut self) -> Option<StoreBatch> {
        self.store.as_mut()?.ready.pop_front()
    }

    /// Every batch up to `n` is committed: what waited for it may leave.
    pub fn store_committed(&mut self, n: u64) {
        if let Some(st) = &mut self.store {
            st.committed = st.committed.max(n);
        }
    }

    /// Every batch up to this one is committed (0: none, or no store).
    pub fn store_committed_through(&self) -> u64 {
        self.store.as_ref().map_or(0, |s| s.committed)
    }

    /// An edge said hello (edge, its incarnation): the driver keeps its liveness record
    /// under a lease.
    pub fn poll_edge_live(&mut self) -> Option<(EdgeId, u64)> {
        self.store.as_mut()?.live.pop_front()
    }

    /// Messages waiting for the store (queued behind a batch not yet committed).
    pub fn waiting_for_store(&self) -> usize {
        let committed = self.store.as_ref().map_or(u64::MAX, |s| s.committed);
        self.edges
            .values()
            .map(|l| l.out.iter().filter(|(g, _)| *g > committed).count())
            .sum()
    }

    /// Placement records changed and not yet handed out as a batch (they wait
    /// [`PLACEMENT_WRITE_DELAY`] for the rest of their install's acknowledgements).
    pub fn placements_pending(&self) -> usize {
        self.store.as_ref().map_or(0, |s| s.placed_dirty.len())
    }

    /// A node that (re)starts takes over the repository the store holds: every IKE SA is
    /// adopted as it was (message ids, keys, CHILD_SAs), the placement and the freshest
    /// sequence states come back, and only CHILD_SAs the store does not know to be on an edge
    /// are rekeyed. Call once, after [`CryptoNode::enable_store`], before any edge's hello.
    pub fn recover(&mut self, now: Instant, rec: Recovered) -> RecoveryReport {
        self.now = now;
        let mut report = RecoveryReport::default();
        let mut installed = BTreeSet::new();
        let mut stored = Vec::with_capacity(rec.ike.len());
        for mut s in rec.ike {
            let mut route = None;
            s.sas.retain(|c| {
                let spi_in = proto::Spi(c.spi_in.0);
                let (Some(pin), Some(pout), Some(edges)) = (
                    rec.children.get(&(spi_in, false)),
                    rec.children.get(&(spi_in, true)),
                    rec.placements.get(&spi_in),
                ) else {
                    report.rekeyed += 1;
                    return false;
                };
                let Some(first) = edges.iter().next().copied() else {
                    report.rekeyed += 1;
                    return false;
                };
                for e in edges {
                    let _ = self.placement.place(Direction::Inbound, pin, *e);
                }
                // The watched copies stay where they are: deleted with their CHILD_SA.
                for e in rec.copies.get(&spi_in).into_iter().flatten() {
                    if !edges.contains(e) {
                        let _ = self.placement.place(Direction::Inbound, pin, *e);
                        report.copies_kept += 1;
                    }
                }
                // A drain in the store: the outbound SA goes to the draining edges first and
                // moves on to the holder, so that the holder's first checkpoint above its
                // start ends the drain as it would have before the restart.
                let drain = rec
                    .drains
                    .get(&spi_in)
                    .filter(|(d, _)| !d.is_empty() && !d.contains(&first));
                match drain {
                    Some((d, start)) => {
                        let mut d = d.iter();
                        if let Some(e) = d.next() {
                            let _ = self.placement.place(Direction::Outbound, pout, *e);
                        }
                        for e in d.chain([&first]) {
                            self.placement.move_outbound_draining(pout.id, *e, *start);
                        }
                        report.drains_kept += 1;
                    }
                    None => {
                        let _ = self.placement.place(Direction::Outbound, pout, first);
                    }
                }
                let fence = rec.seqs.get(&spi_in).map(|s| s.0);
                if let Some(seq) = fence {
                    self.placement.report_seq(first, pout.id, seq, false);
                }
                if let Some(st) = &mut self.store {
                    st.pair.insert(pout.id, spi_in);
                    st.children.insert(
                        spi_in,
                        StoredChild {
                            inbound: Some(Box::new(pin.clone())),
                            outbound: Some(Box::new(pout.clone())),
                            fence: rec.fences.get(&spi_in).copied().unwrap_or(0),
                        },
                    );
                    st.placed_written.insert(spi_in);
                    let held = st.placed.entry(spi_in).or_default();
                    for e in edges {
                        held.insert(*e, PLACED_CHILD);
                    }
                    for e in rec.copies.get(&spi_in).into_iter().flatten() {
                        held.entry(*e).or_insert(PLACED_COPY);
                    }
                    if let Some((d, start)) = drain {
                        for e in d {
                            held.insert(*e, PLACED_DRAIN);
                        }
                        st.drain_start.insert(spi_in, *start);
                    }
                }
                installed.insert(c.spi_in);
                route = Some(first);
                report.kept += 1;
                true
            });
            if let Some(e) = route {
                self.ike_edge.set(s.record.spi_i.0, e);
                self.peer_edge.set(s.record.remote.ip(), e);
            }
            stored.push(s);
        }
        // Copies of CHILD_SAs not kept (no edge held both directions, or gone from their IKE
        // SA): their records go now, the SAs when the edge that holds them says hello.
        for (spi, edges) in &rec.copies {
            if installed.contains(&ike::ChildSpi(spi.0)) {
                continue;
            }
            let holders = rec.placements.get(spi);
            for e in edges {
                if holders.is_some_and(|p| p.contains(e)) {
                    continue;
                }
                self.orphan_copies.entry(*e).or_default().push(*spi);
                report.copies_deleted += 1;
            }
            // The record keeps the edges that held both directions (as before the crash).
            if let Some(st) = &mut self.store {
                let left: BTreeMap<EdgeId, u8> = holders
                    .into_iter()
                    .flatten()
                    .map(|e| (*e, PLACED_CHILD))
                    .collect();
                st.placed.insert(*spi, left);
                st.placed_written.insert(*spi);
                st.placed_changed(*spi, now);
            }
        }
        if let Some(st) = &mut self.store {
            st.known_edges = rec.edges;
        }
        let adopted = self.core.adopt_stored_keeping(now, stored, &installed);
        report.adopted = adopted.adopted.len();
        report.refused = adopted.refused;
        report.orphans_deleted = adopted.orphans_deleted;
        self.log(format!(
            "recovered from the store: {} IKE SA(s), {} CHILD_SA(s) kept where they are, {} rekeyed, {} refused",
            report.adopted,
            report.kept,
            report.rekeyed,
            report.refused.len()
        ));
        self.drain(now);
        // The adopted IKE SAs, written again in their new IV epoch, before anything is sent.
        self.seal_batch(now);
        report
    }

    pub fn core(&self) -> &ControlCore {
        &self.core
    }

    pub fn core_mut(&mut self) -> &mut ControlCore {
        &mut self.core
    }

    pub fn placement(&self) -> &SaPlacement {
        &self.placement
    }

    /// Sets how often outbound SAs on edges report their sequence numbers.
    pub fn set_checkpoint(&mut self, c: proto::sa::Checkpoint) {
        self.checkpoint = c;
    }

    /// Sends inbound SAs to every connected edge when they are made (true, the default) or
    /// only to the forwarding edge, the others getting them on demand (false).
    /// Off: a move deletes the old edge's outbound SA and host binding at once (the LAN's
    /// traffic that still reaches it until the route follows is lost); on (the default): it
    /// drains them (`docs/architecture.md`, "The LAN return path").
    pub fn set_drain_moves(&mut self, on: bool) {
        self.drain_moves = on;
    }

    /// How long the new edge holds what it seals for a client that moved to it (from its
    /// first packet; 0: no hold): `docs/architecture.md`, "Packets lost at a move".
    pub fn set_move_hold(&mut self, hold: Duration) {
        self.move_hold_us = u32::try_from(hold.as_micros()).unwrap_or(u32::MAX);
    }

    /// `cluster.neighbours`: a client at edge `e` gets watched copies of its inbound SAs on
    /// `neighbours[e]` only (an edge not in the map: on every edge).
    pub fn set_neighbours(&mut self, neighbours: BTreeMap<EdgeId, BTreeSet<EdgeId>>) {
        self.neighbours = neighbours;
    }

    /// Where the LAN must send each host address's traffic (a client's virtual IP): its
    /// outbound SA's holder, but while a move is not applied yet (its carrier waits for the
    /// store, or is on its way) the edges it moved from, which still hold the SA and the
    /// binding and seal below the new holder's start. A LAN that flipped to the new edge
    /// earlier would reach an edge without the SA, or one that drains an older copy of it.
    pub fn designated_hosts(&self) -> Vec<(IpAddr, BTreeSet<EdgeId>)> {
        self.placement
            .host_edges()
            .into_iter()
            .map(|(h, e)| match self.designation_wait.get(&h) {
                Some(old) => (h, old.clone()),
                None => (h, e),
            })
            .collect()
    }

    /// `cluster.neighbours` as set.
    pub fn neighbours(&self) -> &BTreeMap<EdgeId, BTreeSet<EdgeId>> {
        &self.neighbours
    }

    /// Whether a client at `home` gets a watched copy of its inbound SAs on `e`.
    fn copies_to(&self, home: EdgeId, e: EdgeId) -> bool {
        e != home
            && self.is_connected(e)
            && !self.is_encryption_node(e)
            && self.neighbours.get(&home).is_none_or(|n| n.contains(&e))
    }

    /// A watched copy of inbound SA `spi` (with the windows known so far) goes to `e`.
    fn copy_to(&mut self, spi: proto::Spi, e: EdgeId) {
        let Some(mut p) = self.placement.inbound_params(spi) else {
            return;
        };
        let _ = self.placement.place(Direction::Inbound, &p, e);
        p.resume.replay = self.marks.get(&spi).cloned();
        p.checkpoint = Some(self.checkpoint);
        if let Some(l) = self.edges.get_mut(&e) {
            self.stats.spread += 1;
            l.pending.push(Update::AddSa {
                dir: Direction::Inbound,
                params: p,
            });
        }
    }

    pub fn set_spread(&mut self, on: bool) {
        self.spread = on;
    }

    /// Sets how many numbers past its last used one an edge may send under an outbound SA
    /// (at least 2: half of it is the refill threshold).
    pub fn set_seq_grant(&mut self, n: u64) {
        self.seq_grant = n.max(2);
    }

    /// A connection from `edge` is up; it is known once its hello arrives.
    pub fn edge_up(&mut self, edge: EdgeId) {
        self.edges.entry(edge).or_default();
    }

    /// The connection of `edge` went: what waited for it is dropped (datagrams: IKE
    /// retransmits; carriers stay unacknowledged and are sent again on the next connection).
    pub fn edge_down(&mut self, edge: EdgeId) {
        if let Some(l) = self.edges.get_mut(&edge) {
            l.connected = false;
            l.out.clear();
            l.pending.clear();
            for (_, hosts) in std::mem::take(&mut l.moves_pending) {
                for h in hosts {
                    self.designation_wait.remove(&h);
                }
            }
        }
    }

    /// Is edge `edge` connected and past its hello?
    pub fn is_connected(&self, edge: EdgeId) -> bool {
        self.edges.get(&edge).is_some_and(|l| l.connected)
    }

    /// Messages waiting for `edge` (the driver stops reading that edge's input above a bound:
    /// back-pressure, not loss).
    pub fn backlog(&self, edge: EdgeId) -> usize {
        self.edges.get(&edge).map_or(0, |l| l.out.len())
    }

    fn committed(&self) -> u64 {
        self.store.as_ref().map_or(u64::MAX, |s| s.committed)
    }

    /// The next message for `edge`, oldest first, unless it waits for the store.
    pub fn poll_for(&mut self, edge: EdgeId) -> Option<NodeMsg> {
        let committed = self.committed();
        let l = self.edges.get_mut(&edge)?;
        if l.out.front().is_some_and(|(g, _)| *g <= committed) {
            return l.out.pop_front().map(|(_, m)| m);
        }
        None
    }

    /// A message the driver could not hand to the channel now goes back to the front.
    pub fn unpoll(&mut self, edge: EdgeId, m: NodeMsg) {
        if let Some(l) = self.edges.get_mut(&edge) {
            l.out.push_front((0, m));
        }
    }

    /// Edges with messages that may leave now.
    pub fn edges_with_output(&self) -> Vec<EdgeId> {
        let committed = self.committed();
        self.edges
            .iter()
            .filter(|(_, l)| l.out.front().is_some_and(|(g, _)| *g <= committed))
            .map(|(e, _)| *e)
            .collect()
    }

    pub fn poll_log(&mut self) -> Option<(String, bool)> {
        self.logs.pop_front()
    }

    /// The IKE view last rebuilt (JSON), taken once.
    pub fn take_view(&mut self) -> Option<String> {
        self.view.take()
    }

    /// Carrier round trips of `edge` measured so far (send -> applied acknowledgement).
    pub fn round_trips(&self, edge: EdgeId) -> Vec<Duration> {
        self.edges
            .get(&edge)
            .map(|l| l.round_trips.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Move times measured so far (the unknown-SPI report in -> the new edge applied the
    /// moved SA), most recent last.
    pub fn move_times(&self) -> Vec<Duration> {
        self.move_times.iter().copied().collect()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let placements = self
            .store
            .as_ref()
            .and_then(|st| st.placed_queue.front())
            .map(|(t, _)| t.saturating_add(PLACEMENT_WRITE_DELAY));
        match (self.core.poll_timeout(), placements) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the core's timers that are due. True when the core rebuilt its IKE view: the
    /// driver then tells the core what the call took (`ControlCore::set_view_cost`), so
    /// rebuilds keep to their share of the time (with 10,000 IKE SAs a rebuild costs tens of
    /// milliseconds).
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        self.now = now;
        let mut view = false;
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.current = None;
            view = self.core.handle_timeout(now);
            self.drain(now);
        }
        self.seal_batch(now);
        view
    }

    /// One message from the connection of `from` (the edge it said hello as).
    pub fn handle(&mut self, now: Instant, from: EdgeId, msg: EdgeMsg) {
        self.now = now;
        if msg.edge() != from {
            self.stats.refused += 1;
            self.error(format!(
                "edge {from} sent a message as edge {}: ignored",
                msg.edge()
            ));
            return;
        }
        if let EdgeMsg::Hello {
            incarnation,
            applied,
            ..
        } = msg
        {
            self.hello(now, from, incarnation, applied);
            self.seal_batch(now);
            return;
        }
        if !self.is_connected(from) {
            self.stats.refused += 1;
            return;
        }
        self.current = Some(from);
        match msg {
            EdgeMsg::Hello { .. } => {}
            EdgeMsg::Ike { datagram, .. } => {
                self.stats.ike_in += 1;
                if let Some(spi) = ike_spi_i(&datagram.payload) {
                    self.ike_edge.set(spi, from);
                }
                self.peer_edge.set(datagram.src, from);
                self.core.handle_datagram(now, &datagram);
            }
            EdgeMsg::Report { event, .. } => self.report(now, from, event),
            EdgeMsg::Applied { carrier, .. } => {
                self.placed(from, carrier);
                if let Some(l) = self.edges.get_mut(&from) {
                    while l
                        .moves_in_flight
                        .front()
                        .is_some_and(|(n, _, _)| *n <= carrier)
                    {
                        if let Some((_, began, hosts)) = l.moves_in_flight.pop_front() {
                            if self.move_times.len() >= ROUND_TRIPS_KEPT {
                                self.move_times.pop_front();
                            }
                            self.move_times
                                .push_back(now.saturating_duration_since(began));
                            // Applied: the LAN may route these hosts here now.
                            for h in hosts {
                                self.designation_wait.remove(&h);
                            }
                            self.stats.moves_applied += 1;
                        }
                    }
                    l.applied = l.applied.max(carrier);
                    while l.unacked.front().is_some_and(|(n, ..)| *n <= carrier) {
                        if let Some((_, _, sent)) = l.unacked.pop_front() {
                            if l.round_trips.len() >= ROUND_TRIPS_KEPT {
                                l.round_trips.pop_front();
                            }
                            l.round_trips.push_back(now.saturating_duration_since(sent));
                        }
                    }
                }
            }
            EdgeMsg::DataplaneFresh { .. } => self.edge_lost_everything(now, from),
        }
        self.drain(now);
        self.current = None;
        self.seal_batch(now);
    }

    /// The writes of this input become a batch (and the freshest sequence states, at most
    /// every [`SEQ_WRITE_INTERVAL`]).
    fn seal_batch(&mut self, now: Instant) {
        let Some(st) = &mut self.store else {
            return;
        };
        for spi in std::mem::take(&mut st.child_dirty) {
            match st.children.get(&spi) {
                Some(c) if c.inbound.is_some() || c.outbound.is_some() => {
                    st.ops.push(StoreOp::Put(
                        RecordKey::Child(spi.0),
                        Record::Child {
                            version: 1,
                            inbound: c.inbound.clone(),
                            outbound: c.outbound.clone(),
                            fence: c.fence,
                        },
                    ))
                }
                _ => {
                    st.children.remove(&spi);
                    st.ops.push(StoreOp::Delete(RecordKey::Child(spi.0)));
                }
            }
        }
        let urgent = std::mem::take(&mut st.placed_urgent);
        while let Some((t, spi)) = st.placed_queue.front().copied() {
            if !urgent && now.saturating_duration_since(t) < PLACEMENT_WRITE_DELAY {
                break;
            }
            st.placed_queue.pop_front();
            if st.placed_dirty.remove(&spi) {
                match st.placed.get(&spi) {
                    Some(edges) if !edges.is_empty() => {
                        st.ops.push(StoreOp::Put(
                            RecordKey::Placement(spi.0),
                            Record::Placement {
                                at_ms: st.wall_ms,
                                drain_start: st.drain_start.get(&spi).copied().unwrap_or(0),
                                edges: edges.iter().map(|(e, k)| (*e, *k)).collect(),
                            },
                        ));
                        st.placed_written.insert(spi);
                    }
                    _ => {
                        st.placed.remove(&spi);
                        st.drain_start.remove(&spi);
                        st.placed_written.remove(&spi);
                        st.ops.push(StoreOp::Delete(RecordKey::Placement(spi.0)));
                    }
                }
            }
        }
        if !st.seq_dirty.is_empty()
            && st
                .seq_written
                .is_none_or(|t| now.saturating_duration_since(t) >= SEQ_WRITE_INTERVAL)
        {
            st.seq_written = Some(now);
            for id in std::mem::take(&mut st.seq_dirty) {
                let (Some(spi), Some(seq)) = (st.pair.get(&id), self.placement.freshest_seq(id))
                else {
                    continue;
                };
                // The fence, not the last report: a node that recovers from the store must
                // resume a moved SA above every number an edge may have sent (its
                // reservation), and a reservation is never above the fence.
                st.ops.push(StoreOp::Put(
                    RecordKey::Seq(spi.0),
                    Record::Seq {
                        seq: seq.seq.max(seq.fence),
                        at_ms: st.wall_ms,
                        reporter: seq.by.map(|e| edge_name(e).to_string()).unwrap_or_default(),
                    },
                ));
            }
        }
        if st.ops.is_empty() {
            return;
        }
        let n = st.next;
        st.next += 1;
        self.stats.store_batches += 1;
        self.stats.store_ops += st.ops.len() as u64;
        st.ready.push_back(StoreBatch {
            n,
            ops: std::mem::take(&mut st.ops),
        });
    }

    /// Edge `edge` applied every carrier up to `carrier`: the CHILD_SAs whose both directions
    /// it now holds are recorded as placed there.
    fn placed(&mut self, edge: EdgeId, carrier: u64) {
        let Some(st) = &mut self.store else {
            return;
        };
        let done: Vec<(EdgeId, u64)> = st
            .carried
            .range((edge, 0)..=(edge, carrier))
            .map(|(k, _)| *k)
            .collect();
        for k in done {
            for (spi, kind) in st.carried.remove(&k).unwrap_or_default() {
                let version = if kind == CARRIED_COPY {
                    // A copy is recorded as one (a node that recovers deletes it with its
                    // CHILD_SA, or keeps it there); an edge the outbound SA left (a move)
                    // holds a copy from its re-arm on.
                    st.applied.remove(&(edge, spi));
                    PLACED_COPY
                } else {
                    let bits = st.applied.entry((edge, spi)).or_default();
                    *bits |= kind;
                    if *bits != CARRIED_IN | CARRIED_OUT {
                        continue;
                    }
                    st.applied.remove(&(edge, spi));
                    PLACED_CHILD
                };
                let held = st.placed.entry(spi).or_default();
                if version == PLACED_COPY && held.get(&edge) == Some(&PLACED_DRAIN) {
                    // The re-armed copy of an edge that still drains the outbound SA.
                    continue;
                }
                held.insert(edge, version);
                st.placed_changed(spi, self.now);
            }
        }
    }

    /// Queues `op`; `gate`: what is queued for edges from now on waits for it.
    /// A reservation for outbound SA `id` is about to leave: its fence goes to the store
    /// first (the messages queued after it wait for the batch), so a node that restarts from
    /// the store knows a number above everything any edge may send on it.
    fn persist_fence(&mut self, id: proto::SaId) {
        let Some(st) = &self.store else {
            return;
        };
        let (Some(spi), Some(seq)) = (st.pair.get(&id).copied(), self.placement.freshest_seq(id))
        else {
            return;
        };
        let at_ms = st.wall_ms;
        if let Some(st) = &mut self.store {
            // Granted with the install: the fence rides in the CHILD_SA's record, written
            // in this same batch (one operation fewer per install).
            if st.child_dirty.contains(&spi) {
                if let Some(c) = st
                    .children
                    .get_mut(&spi)
                    .filter(|c| c.outbound.as_ref().is_some_and(|o| o.id == id))
                {
                    c.fence = seq.seq.max(seq.fence);
                    st.gate = st.next;
                    return;
                }
            }
        }
        self.store_op(
            StoreOp::Put(
                RecordKey::Seq(spi.0),
                Record::Seq {
                    seq: seq.seq.max(seq.fence),
                    at_ms,
                    reporter: seq.by.map(|e| edge_name(e).to_string()).unwrap_or_default(),
                },
            ),
            true,
        );
    }

    fn store_op(&mut self, op: StoreOp, gate: bool) {
        if let Some(st) = &mut self.store {
            st.ops.push(op);
            if gate {
                st.gate = st.next;
            }
        }
    }

    fn gate(&self) -> u64 {
        self.store.as_ref().map_or(0, |s| s.gate)
    }

    fn hello(&mut self, now: Instant, edge: EdgeId, incarnation: u64, applied: u64) {
        let gate = self.gate();
        let welcome = self.incarnation;
        let known = self
            .store
            .as_mut()
            .and_then(|st| {
                st.live.push_back((edge, incarnation));
                st.known_edges.remove(&edge)
            })
            .is_some_and(|inc| inc == incarnation);
        let l = self.edges.entry(edge).or_default();
        l.connected = true;
        l.out.push_front((
            0,
            NodeMsg::Welcome {
                incarnation: welcome,
            },
        ));
        if known && l.incarnation.is_none() {
            // This node restarted (or took over) from the store, and the edge is the process
            // the store knew: it holds what it was sent. Carriers count from 1 again (the
            // welcome said so); the policy comes again.
            l.incarnation = Some(incarnation);
            l.next_carrier = 1;
            l.applied = 0;
            l.unacked.clear();
            self.stats.edges_kept += 1;
            let (spis, ids) = self.placement.held_by(edge);
            self.log(format!(
                "edge {edge} is back after this node's restart and keeps {} inbound and {} outbound SA(s)",
                spis.len(),
                ids.len()
            ));
            let globals: Vec<Update> = self.globals.values().cloned().collect();
            let orphans = self.orphan_copies.remove(&edge).unwrap_or_default();
            if let Some(l) = self.edges.get_mut(&edge) {
                l.pending.extend(globals);
                l.pending
                    .extend(orphans.into_iter().map(|spi| Update::DeleteInbound { spi }));
            }
            // Copies it lacks (made while it was away, or not acknowledged before the
            // restart) come again.
            self.spread_to(edge);
            self.flush(edge, now);
            return;
        }
        // A new process holds nothing: no copy to delete there.
        self.orphan_copies.remove(&edge);
        let l = self.edges.entry(edge).or_default();
        let same = l.incarnation == Some(incarnation);
        l.incarnation = Some(incarnation);
        if same {
            // The connection broke, the edge lives: what it did not apply comes again, in
            // order, under the same numbers (it skips what it has).
            l.applied = l.applied.max(applied);
            let again: Vec<(u64, Vec<Update>)> = l
                .unacked
                .iter()
                .filter(|(n, ..)| *n > applied)
                .map(|(n, u, _)| (*n, u.clone()))
                .collect();
            self.stats.resent += again.len() as u64;
            let mut msgs = Vec::new();
            for (n, updates) in again {
                if let Some(users) = self.users_of(&updates) {
                    msgs.push((gate, users));
                }
                msgs.push((gate, NodeMsg::Carrier { n, updates }));
            }
            if let Some(l) = self.edges.get_mut(&edge) {
                l.out.extend(msgs);
            }
            self.log(format!(
                "edge {edge} is back (applied up to carrier {applied})"
            ));
        } else {
            l.next_carrier = 1;
            l.applied = 0;
            l.unacked.clear();
            for (_, _, hosts) in std::mem::take(&mut l.moves_in_flight) {
                for h in hosts {
                    self.designation_wait.remove(&h);
                }
            }
            self.log(format!(
                "edge {edge} joined (incarnation {incarnation:016x})"
            ));
            self.current = Some(edge);
            self.edge_lost_everything(now, edge);
            self.drain(now);
            self.current = None;
        }
    }

    /// `edge` holds nothing any more: its placement goes, and every CHILD_SA whose SAs it
    /// held is rekeyed (the new SAs go to the edge that forwards the exchange).
    fn edge_lost_everything(&mut self, now: Instant, edge: EdgeId) {
        let (spis, _) = self.placement.held_by(edge);
        if let Some(st) = &mut self.store {
            for spi in &spis {
                if let Some(held) = st.placed.get_mut(spi) {
                    held.remove(&edge);
                }
                st.placed_changed(*spi, now);
            }
            st.applied.retain(|(e, _), _| *e != edge);
            st.carried.retain(|(e, _), _| *e != edge);
        }
        let gone = self.placement.forget_edge(edge);
        if !gone.is_empty() || !spis.is_empty() {
            self.log(format!(
                "edge {edge} lost {} inbound and {} outbound SA(s): rekeying their CHILD_SAs",
                spis.len(),
                gone.len()
            ));
        }
        for id in gone {
            // The outbound SA's CHILD_SA is found by (id, its outbound SPI); every rekey
            // below is make-before-break on the edge that forwards the exchange.
            let spi = self
                .placement
                .outbound_params(id)
                .map(|p| p.spi)
                .unwrap_or(proto::Spi(0));
            self.placement.remove_outbound(id);
            self.core.rekey_sa(now, id, spi);
        }
        // A global update the edge lost comes again.
        let globals: Vec<Update> = self.globals.values().cloned().collect();
        if let Some(l) = self.edges.get_mut(&edge) {
            if l.pending.is_empty() {
                l.pending.extend(globals);
            }
        } // The copies of the other edges' clients' inbound SAs, ahead of them.
        self.spread_to(edge);
    }

    fn report(&mut self, now: Instant, edge: EdgeId, event: Event) {
        match &event {
            Event::SeqCheckpoint { id, seq, .. } => {
                if self.placement.report_seq(edge, *id, *seq, false) {
                    if let Some(st) = &mut self.store {
                        st.seq_dirty.insert(*id);
                    }
                }
                self.refill(edge, *id, *seq);
                self.end_drain(edge, *id, *seq);
            }
            Event::SaState {
                id,
                state: proto::sa::SaState::Outbound { seq, .. },
                ..
            } => {
                if self.placement.report_seq(edge, *id, *seq, true) {
                    if let Some(st) = &mut self.store {
                        st.seq_dirty.insert(*id);
                    }
                }
            }
            Event::SaState {
                generation,
                spi,
                state: proto::sa::SaState::Inbound { replay },
                ..
            } => {
                if self.placement.inbound_params(*spi).is_none() {
                    return;
                }
                let prior = self.marks.remove(spi);
                // The client numbers its packets in the order it sends them: a first use
                // whose window goes no higher than what the copies already reported carries
                // a packet sent before one another edge accepted, not the client's path now.
                let stale = prior.as_ref().is_some_and(|m| replay.top <= m.top);
                let merged = match prior {
                    Some(m) => merge_replay(&m, replay),
                    None => replay.clone(),
                };
                self.marks.insert(*spi, merged);
                if *generation == 0 && stale {
                    // A straggler at an edge the client left: the copy is watched again (a
                    // client that really comes back is noticed by its next packet).
                    self.stats.first_use += 1;
                    self.stats.stale_first_use += 1;
                    self.rearm(*spi);
                } else if *generation == 0 {
                    // A watched copy's first packet: the client's path reaches this edge.
                    self.stats.first_use += 1;
                    self.follow(now, edge, *spi);
                } else {
                    // The old edge's window after a move: every copy continues above it.
                    self.rearm(*spi);
                }
            }
            Event::UnknownSpi { spi, .. } if self.filters.on_node.contains(spi) => {
                // A filter keeps this CHILD_SA on an encryption node; the edge's policy to
                // pass its ESP there is on its way (it left with the SA's carrier).
                self.stats.filtered_unknown_spi += 1;
            }
            Event::UnknownSpi { spi, .. } => {
                if let Some(params) = self.placement.inbound_params(*spi) {
                    if !self.placement.inbound_edges(*spi).contains(&edge) {
                        self.stats.on_demand += 1;
                        let _ = self.placement.place(Direction::Inbound, &params, edge);
                        if let Some(l) = self.edges.get_mut(&edge) {
                            l.pending.push(Update::AddSa {
                                dir: Direction::Inbound,
                                params,
                            });
                        }
                    }
                    self.follow(now, edge, *spi);
                }
                self.core.handle_dataplane_event(now, &event);
            }
            _ => self.core.handle_dataplane_event(now, &event),
        }
    }

    /// An edge reported outbound SA `id` at `seq`: if it holds the SA and fewer than half a
    /// grant is left, its reservation goes up (recorded as the fence before it is queued).
    fn refill(&mut self, edge: EdgeId, id: proto::SaId, seq: u64) {
        if !self.placement.outbound_edges(id).contains(&edge) {
            // An old holder's late report: it never gets numbers again.
            return;
        }
        let Some(st) = self.placement.freshest_seq(id) else {
            return;
        };
        if st.fence.saturating_sub(seq) >= self.seq_grant / 2 {
            return;
        }
        let up_to = seq.saturating_add(self.seq_grant);
        self.placement.grant(id, up_to);
        self.persist_fence(id);
        self.stats.grants += 1;
        if let Some(l) = self.edges.get_mut(&edge) {
            l.pending.push(Update::ReserveSeq { id, up_to });
        }
    }

    /// The holder `edge` of outbound SA `id` reported `seq`: above its start, it sealed LAN
    /// traffic for the client (the LAN's route follows the move), so the edges the SA moved
    /// away from delete their copy and host bindings now.
    fn end_drain(&mut self, edge: EdgeId, id: proto::SaId, seq: u64) {
        if !self.placement.outbound_edges(id).contains(&edge) {
            return;
        }
        let gone = self.placement.end_drain(id, seq);
        if gone.is_empty() {
            return;
        }
        self.stats.drains_ended += 1;
        let now = self.now;
        if let Some(st) = &mut self.store {
            if let Some(spi) = st.pair.get(&id).copied() {
                st.drain_start.remove(&spi);
                if let Some(held) = st.placed.get_mut(&spi) {
                    for e in &gone {
                        if let Some(k) = held.get_mut(e) {
                            // The edge keeps its copy of the inbound SA.
                            *k = PLACED_COPY;
                        }
                    }
                }
                st.placed_changed(spi, now);
            }
        }
        let hosts = self.placement.hosts_of(id);
        for a in &gone {
            if let Some(l) = self.edges.get_mut(a) {
                l.pending.push(Update::DeleteOutbound { id });
                for (dst, _) in &hosts {
                    l.pending.push(Update::UnbindHost { dst: *dst });
                }
            }
        }
        self.log(format!(
            "SA {}: the LAN's traffic reaches edge {edge} (sequence {seq}); edge(s) {gone:?} stop draining it",
            id.0
        ));
    }

    /// **Edge-to-edge move.** ESP on inbound SPI `spi` reached `edge`: the client's path goes
    /// there now. Its CHILD_SA's outbound SA, if another edge holds it, moves to `edge`,
    /// resumed above the SA's fence (the highest reservation any edge was ever granted, so
    /// above every number any edge can have sent: `docs/architecture.md`, "Edge-to-edge
    /// move"), with its host bindings (the designation of the LAN return path). The old edge
    /// keeps its outbound SA and host binding as a drain (it seals what the LAN still routes
    /// to it, up to the reservation it had, all below the new edge's start) until the new
    /// edge's checkpoint shows the LAN's traffic reaches it (`end_drain`); an old edge that
    /// never hears of it still cannot send above the fence: it never gets a reservation
    /// again. The client sees nothing but a forward jump of at most one grant in our
    /// sequence numbers.
    fn follow(&mut self, now: Instant, edge: EdgeId, spi: proto::Spi) {
        let Some(ch) = self.core.child_sas(spi) else {
            return;
        };
        let id = ch.out_id;
        let old = self.placement.outbound_edges(id);
        if old.is_empty() || old.contains(&edge) {
            return;
        }
        let (Some(mut params), Some(st)) = (
            self.placement.outbound_params(id).cloned(),
            self.placement.freshest_seq(id),
        ) else {
            return;
        };
        let start = st.fence.max(st.seq);
        let limit = if params.esn {
            u64::MAX
        } else {
            u64::from(u32::MAX)
        };
        if start >= limit.saturating_sub(self.seq_grant) {
            // Too few numbers left to move it: a fresh CHILD_SA instead (it goes to the edge
            // that forwards the exchange).
            self.error(format!(
                "SA {} cannot move to edge {edge}: its sequence numbers are used up; rekeying",
                id.0
            ));
            self.core.rekey_sa(now, id, params.spi);
            return;
        }
        let up_to = start.saturating_add(self.seq_grant);
        params.resume.seq = start;
        params.resume.seq_reserved = Some(up_to);
        // What the old edge sealed before the LAN's route flipped may still be on its way:
        // the new edge's first packets wait for it (its higher numbers would move the
        // client's replay window past it).
        params.resume.hold_us = self.move_hold_us;
        if params.checkpoint.is_none() {
            params.checkpoint = Some(self.checkpoint);
        }
        if self.drain_moves {
            // The old edges keep sealing what the LAN still routes to them (below `start`)
            // until the new edge's checkpoint shows the LAN's traffic reaches it (`end_drain`).
            self.placement.move_outbound_draining(id, edge, start);
            self.stats.drains += 1;
        } else {
            self.placement.move_outbound(id, edge);
        }
        if let Some(st) = &mut self.store {
            // The drain goes to the store with the move (a node that recovers ends it as
            // this one would: `end_drain`).
            let drains = self.placement.draining_edges(id);
            let held = st.placed.entry(spi).or_default();
            for (e, k) in held.iter_mut() {
                if *k == PLACED_DRAIN && !drains.contains(e) {
                    *k = PLACED_COPY;
                }
            }
            for e in &drains {
                held.insert(*e, PLACED_DRAIN);
            }
            if drains.is_empty() {
                st.drain_start.remove(&spi);
            } else {
                st.drain_start.insert(spi, start);
            }
            st.placed_changed(spi, now);
        }
        self.placement.grant(id, up_to);
        self.persist_fence(id);
        // The crypto node's own requests to this client (DPD, rekeys) leave by the new edge.
        self.peer_edge.set(params.remote, edge);
        let hosts = self.placement.hosts_of(id);
        for a in &old {
            if !self.spread {
                self.placement.unplace_inbound(spi, *a);
            }
            if let Some(l) = self.edges.get_mut(a) {
                if !self.drain_moves {
                    l.pending.push(Update::DeleteOutbound { id });
                    for (dst, _) in &hosts {
                        l.pending.push(Update::UnbindHost { dst: *dst });
                    }
                }
                if self.spread {
                    // The inbound copy stays (the client may come back, or its packets in
                    // flight still arrive): its window comes back, and every copy is
                    // re-armed above the union of the windows (`rearm`).
                    l.pending.push(Update::ExportSa {
                        sa: SaRef::Inbound(spi),
                    });
                } else {
                    l.pending.push(Update::DeleteInbound { spi });
                }
            }
        }
        if self.spread && !self.neighbours.is_empty() {
            // Ahead of the client again: its new edge's neighbours that lack a copy get one
            // (the copies elsewhere stay, re-armed with the others).
            let have = self.placement.inbound_edges(spi);
            let to: Vec<EdgeId> = self
                .edges
                .keys()
                .copied()
                .filter(|e| !have.contains(e) && self.copies_to(edge, *e))
                .collect();
            for e in to {
                self.copy_to(spi, e);
            }
        }
        // The LAN's routing follows `designated_hosts`: the old edges stay designated until
        // the new edge applied the moved SA and its bindings (with a store the carrier waits
        // for the fence's commit; an old edge that drains seals meanwhile, below the start).
        for (dst, _) in &hosts {
            self.designation_wait
                .entry(*dst)
                .or_insert_with(|| old.clone());
        }
        if let Some(l) = self.edges.get_mut(&edge) {
            l.moves_pending
                .push((now, hosts.iter().map(|(d, _)| *d).collect()));
            l.pending.push(Update::AddSa {
                dir: Direction::Outbound,
                params,
            });
            for (dst, src) in hosts {
                l.pending.push(Update::BindHost { dst, src, sa: id });
            }
        }
        self.stats.moves += 1;
        self.log(format!(
            "SA {} (SPI {:08x}) moved from edge(s) {old:?} to edge {edge}, resuming above {start}",
            id.0, spi.0
        ));
    }

    /// Every edge's copy of inbound SA `spi` is installed again over itself with the merged
    /// window (`marks`): the data plane unites it with the copy's own (same SA: the window
    /// only gains), so no copy accepts a number another copy reported; the copies on edges
    /// that do not hold the CHILD_SA's outbound SA are watched again (a client that comes back
    /// is noticed by its first packet).
    fn rearm(&mut self, spi: proto::Spi) {
        let Some(mut params) = self.placement.inbound_params(spi) else {
            return;
        };
        params.resume.replay = self.marks.get(&spi).cloned();
        let home = self
            .core
            .child_sas(spi)
            .map(|c| self.placement.outbound_edges(c.out_id))
            .unwrap_or_default();
        for e in self.placement.inbound_edges(spi) {
            let mut p = params.clone();
            p.checkpoint = (!home.contains(&e)).then_some(self.checkpoint);
            if let Some(l) = self.edges.get_mut(&e) {
                self.stats.rearmed += 1;
                l.pending.push(Update::AddSa {
                    dir: Direction::Inbound,
                    params: p,
                });
            }
        }
    }

    /// A watched copy of every inbound SA whose outbound SA another connected edge holds goes
    /// to `edge` (an edge that joined or came back empty).
    fn spread_to(&mut self, edge: EdgeId) {
        if !self.spread || self.is_encryption_node(edge) {
            return;
        }
        for spi in self.placement.inbound_spis() {
            if self.filters.on_node.contains(&spi) {
                // Held by its encryption node alone.
                continue;
            }
            let Some(ch) = self.core.child_sas(spi) else {
                continue;
            };
            let holders = self.placement.outbound_edges(ch.out_id);
            if holders.contains(&edge)
                || !holders
                    .iter()
                    .any(|h| self.is_connected(*h) && self.copies_to(*h, edge))
                || self.placement.inbound_edges(spi).contains(&edge)
            {
                continue;
            }
            self.copy_to(spi, edge);
        }
    }

    /// The core's outputs, routed.
    fn drain(&mut self, now: Instant) {
        while let Some(o) = self.core.poll_output() {
            match o {
                Output::Update { update, .. } => self.route_update(update),
                Output::Transmit(d) => self.route_datagram(d),
                Output::Log { line, error } => self.logs.push_back((line, error)),
                Output::View(json) => self.view = Some(json),
                // Persist before send: what is queued after it waits for its batch.
                Output::Persist(batch) => {
                    for (id, bytes) in batch {
                        self.store_op(
                            StoreOp::Put(
                                RecordKey::Ike(id.0 .0),
                                Record::IkeSa {
                                    id: id.0 .0,
                                    version: u64::from(crate::core::durable::VERSION),
                                    bytes: bytes.0,
                                },
                            ),
                            true,
                        );
                    }
                }
                Output::Forget { ike } => {
                    self.store_op(StoreOp::Delete(RecordKey::Ike(ike.0 .0)), false)
                }
            }
        }
        let edges: Vec<EdgeId> = self.edges.keys().copied().collect();
        for e in edges {
            self.flush(e, now);
        }
    }

    /// This input's updates for `edge` into numbered carriers.
    fn flush(&mut self, edge: EdgeId, now: Instant) {
        let Some(l) = self.edges.get_mut(&edge) else {
            return;
        };
        if l.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut l.pending);
        let gate = self.store.as_ref().map_or(0, |s| s.gate);
        let users: Vec<Option<NodeMsg>> = pending
            .chunks(MAX_CARRIER_UPDATES)
            .map(|c| self.users_of(c))
            .collect();
        let Some(l) = self.edges.get_mut(&edge) else {
            return;
        };
        let mut last = 0;
        for (chunk, users) in pending.chunks(MAX_CARRIER_UPDATES).zip(users) {
            let n = l.next_carrier.max(1);
            l.next_carrier = n + 1;
            last = n;
            l.unacked.push_back((n, chunk.to_vec(), now));
            self.stats.carriers += 1;
            self.stats.updates_carried += chunk.len() as u64;
            if let Some(st) = &mut self.store {
                let adds: Vec<(proto::Spi, u8)> = chunk
                    .iter()
                    .filter_map(|u| match u {
                        // A watched inbound SA is a copy (`route_update`, `spread_to`,
                        // `rearm`); the holder's own is not watched.
                        Update::AddSa {
                            dir: Direction::Inbound,
                            params,
                        } => Some((
                            params.spi,
                            if params.checkpoint.is_some() {
                                CARRIED_COPY
                            } else {
                                CARRIED_IN
                            },
                        )),
                        Update::AddSa {
                            dir: Direction::Outbound,
                            params,
                        } => st.pair.get(&params.id).map(|s| (*s, CARRIED_OUT)),
                        _ => None,
                    })
                    .collect();
                if !adds.is_empty() {
                    st.carried.insert((edge, n), adds);
                }
            }
            if l.connected {
                if let Some(users) = users {
                    l.out.push_back((gate, users));
                }
                l.out.push_back((
                    gate,
                    NodeMsg::Carrier {
                        n,
                        updates: chunk.to_vec(),
                    },
                ));
            }
        }
        for (began, hosts) in std::mem::take(&mut l.moves_pending) {
            l.moves_in_flight.push_back((last, began, hosts));
        }
    }

    /// Who the clients of the outbound SAs `updates` install are (`NodeMsg::Users`): the
    /// identity of each one's IKE SA (EAP identity, else IKE identity).
    fn users_of(&self, updates: &[Update]) -> Option<NodeMsg> {
        let users: Vec<(proto::SaId, String)> = updates
            .iter()
            .filter_map(|u| match u {
                Update::AddSa {
                    dir: Direction::Outbound,
                    params,
                } => {
                    let child = self.core.child_of_sa(params.id, params.spi)?;
                    let who = self.core.child_peer_identity(proto::Spi(child.0))?;
                    Some((params.id, who))
                }
                _ => None,
            })
            .filter(|(_, who)| who.len() <= super::msg::MAX_IDENTITY)
            .collect();
        (!users.is_empty()).then_some(NodeMsg::Users { users })
    }

    fn push_to(&mut self, edges: &BTreeSet<EdgeId>, u: Update) {
        if edges.is_empty() {
            self.stats.unplaced += 1;
            return;
        }
        for e in edges {
            if let Some(l) = self.edges.get_mut(e) {
                l.pending.push(u.clone());
            }
        }
    }

    fn all_edges(&self) -> BTreeSet<EdgeId> {
        self.edges.keys().copied().collect()
    }

    fn route_update(&mut self, mut u: Update) {
        if let Update::AddSa {
            dir: Direction::Outbound,
            params,
        } = &mut u
        {
            // Every outbound SA reports where its sequence numbers stand (the sequence
            // reports the repository keeps the freshest of), and may send only up to its
            // reservation, which the node raises as the reports come (the fence of a move).
            if params.checkpoint.is_none() {
                params.checkpoint = Some(self.checkpoint);
            }
            let up_to = params.resume.seq.saturating_add(self.seq_grant);
            params.resume.seq_reserved =
                Some(params.resume.seq_reserved.map_or(up_to, |r| r.min(up_to)));
        }
        if let Update::ReplaceSpd { rules } = &mut u {
            if !self.filters.filters.is_empty() {
                self.filters.base = std::mem::take(rules);
                *rules = self.filtered_policy();
            }
        }
        self.record_update(&u);
        match &u {
            Update::AddSa { dir, params } => {
                let target = self
                    .filter_place(*dir, params)
                    .or_else(|| self.current.filter(|e| !self.is_encryption_node(*e)))
                    .or_else(|| self.peer_edge.get(&params.remote));
                let Some(edge) = target else {
                    self.stats.unplaced += 1;
                    self.error(format!(
                        "SA {} (SPI {:08x}) has no edge to go to",
                        params.id.0, params.spi.0
                    ));
                    return;
                };
                let edge = match self.placement.place(*dir, params, edge) {
                    Ok(()) => edge,
                    Err(e) => {
                        // Kept where it is (a move is issue 18 item 6).
                        self.error(format!("{e}"));
                        match self.placement.outbound_edges(params.id).first() {
                            Some(h) => *h,
                            None => return,
                        }
                    }
                };
                if *dir == Direction::Outbound {
                    if let Some(r) = params.resume.seq_reserved {
                        self.placement.grant(params.id, r);
                        self.persist_fence(params.id);
                    }
                }
                // An SA a filter put on an encryption node is held there alone (edges never
                // get its keys), and encryption nodes get no copies of edges' clients.
                let copies: Vec<EdgeId> = if *dir == Direction::Inbound
                    && self.spread
                    && !self.filters.on_node.contains(&params.spi)
                {
                    self.edges
                        .keys()
                        .copied()
                        .filter(|e| self.copies_to(edge, *e))
                        .collect()
                } else {
                    Vec::new()
                };
                if !copies.is_empty() {
                    // Ahead of the client: a watched copy on every other edge, so its ESP
                    // decrypts wherever the router sends it, and its first packet there moves
                    // the outbound SA (`follow`).
                    let mut watched = params.clone();
                    watched.checkpoint = Some(self.checkpoint);
                    for e in copies {
                        let _ = self.placement.place(Direction::Inbound, &watched, e);
                        if let Some(l) = self.edges.get_mut(&e) {
                            self.stats.spread += 1;
                            l.pending.push(Update::AddSa {
                                dir: Direction::Inbound,
                                params: watched.clone(),
                            });
                        }
                    }
                    // The record keeps the forwarding edge's (unwatched) form.
                    let _ = self.placement.place(Direction::Inbound, params, edge);
                }
                self.push_to(&BTreeSet::from([edge]), u);
            }
            Update::DeleteInbound { spi } => {
                let spi = *spi;
                self.marks.remove(&spi);
                let edges = self.placement.remove_inbound(spi);
                self.push_to(&edges, u);
                self.filter_forget(spi);
            }
            Update::DeleteOutbound { id } => {
                let edges = self.placement.remove_outbound(*id);
                self.push_to(&edges, u);
            }
            Update::RebindOutbound {
                ids,
                local,
                remote,
                encap,
            } => {
                let mut edges = BTreeSet::new();
                for id in ids {
                    self.placement.rebind(*id, *local, *remote, *encap);
                    edges.extend(self.placement.outbound_edges(*id));
                    edges.extend(self.placement.draining_edges(*id));
                }
                // The policy first: the edges pass the client's ESP from its new address
                // before its SA sends there.
                for id in ids {
                    self.filter_rebind(*id, *remote, encap.is_some());
                }
                self.push_to(&edges, u);
            }
            // A binding on probation comes only from a `roamgate client`'s connectivity
            // manager, never from a crypto node's core: taken as a binding all the same.
            Update::BindHost { dst, src, sa } | Update::BindHostDual { dst, src, sa } => {
                let edges = self.placement.outbound_edges(*sa);
                let stale = self.placement.bind(*dst, *src, *sa, &edges);
                let dst = *dst;
                self.push_to(&edges, u);
                // Bound to a new SA (a rekey) at other edges: the old ones' binding would
                // seal the LAN's traffic with the SA about to go.
                if !stale.is_empty() {
                    self.push_to(&stale, Update::UnbindHost { dst });
                }
            }
            Update::UnbindHost { dst } => {
                let edges = self.placement.unbind(*dst);
                self.push_to(&edges, u);
            }
            Update::ReserveSeq { id, up_to } => {
                self.placement.grant(*id, *up_to);
                let edges = self.placement.outbound_edges(*id);
                self.push_to(&edges, u);
            }
            Update::CapSeq { id, .. } => {
                let mut edges = self.placement.outbound_edges(*id);
                edges.extend(self.placement.draining_edges(*id));
                self.push_to(&edges, u);
            }
            Update::ExportSa { sa } => {
                let edges = match sa {
                    SaRef::Inbound(spi) => self.placement.inbound_edges(*spi),
                    SaRef::Outbound(id) => self.placement.outbound_edges(*id),
                };
                self.push_to(&edges, u);
            }
            Update::ReplaceSpd { .. }
            | Update::SetMasquerade { .. }
            | Update::SetVirtualIp { .. } => {
                let k = match &u {
                    Update::ReplaceSpd { .. } => 0,
                    Update::SetMasquerade { .. } => 1,
                    _ => 2,
                };
                self.globals.insert(k, u.clone());
                let all = self.all_edges();
                self.push_to(&all, u);
            }
            // An edge's own addresses are its file's, never the crypto node's.
            Update::SetWanAddresses { .. } | Update::Announce { .. } => {}
            // Group SAs (RFC 9838) are a gateway's, not a cluster's: not placed on edges.
            Update::AddGroupSa { .. }
            | Update::DeleteGroupSa { .. }
            | Update::SendOnGroupSa { .. }
            | Update::SetGroupPeers { .. } => {
                self.error("group SAs are not supported on a cluster crypto node".into());
            }
            // The per-connection masquerade is an edge's own (its `masq:` driver), never
            // the crypto node's core's.
            Update::SetMasqPlane { .. }
            | Update::MasqFam { .. }
            | Update::MasqRoute { .. }
            | Update::MasqLink { .. }
            | Update::MasqLinkIn { .. }
            | Update::MasqUsers { .. } => {}
        }
    }

    /// The store's side of an update the core made: CHILD SA records written (before the
    /// carrier that installs them leaves), and removed with their placement and sequence
    /// state when the SA goes.
    fn record_update(&mut self, u: &Update) {
        if self.store.is_none() {
            return;
        }
        match u {
            Update::AddSa { dir, params } => {
                let spi_in = match dir {
                    Direction::Inbound => Some(params.spi),
                    Direction::Outbound => self
                        .core
                        .child_of_sa(params.id, params.spi)
                        .map(|c| proto::Spi(c.0)),
                };
                let Some(spi_in) = spi_in else {
                    return;
                };
                let Some(st) = &mut self.store else {
                    return;
                };
                let c = st.children.entry(spi_in).or_default();
                let p = Some(Box::new(params.clone()));
                if *dir == Direction::Outbound {
                    st.pair.insert(params.id, spi_in);
                    c.outbound = p;
                } else {
                    c.inbound = p;
                }
                st.child_dirty.insert(spi_in);
                // What is queued for edges from now on waits for the record.
                st.gate = st.next;
            }
            Update::DeleteInbound { spi } => {
                let Some(st) = &mut self.store else {
                    return;
                };
                if let Some(c) = st.children.get_mut(spi) {
                    c.inbound = None;
                }
                st.child_dirty.insert(*spi);
                st.placed.remove(spi);
                st.placed_changed(*spi, self.now);
            }
            Update::RebindOutbound {
                ids,
                local,
                remote,
                encap,
            } => {
                // The record holds the SA as the edges have it: a node that recovers and
                // moves it to another edge installs it with the addresses it uses now.
                let Some(st) = &mut self.store else {
                    return;
                };
                for id in ids {
                    let Some(spi) = st.pair.get(id).copied() else {
                        continue;
                    };
                    if let Some(o) = st.children.get_mut(&spi).and_then(|c| c.outbound.as_mut()) {
                        o.local = *local;
                        o.remote = *remote;
                        o.encap = *encap;
                        st.child_dirty.insert(spi);
                        st.gate = st.next;
                    }
                }
            }
            Update::DeleteOutbound { id } => {
                let Some(st) = &mut self.store else {
                    return;
                };
                if let Some(spi) = st.pair.remove(id) {
                    if let Some(c) = st.children.get_mut(&spi) {
                        c.outbound = None;
                    }
                    st.child_dirty.insert(spi);
                    st.ops.push(StoreOp::Delete(RecordKey::Seq(spi.0)));
                }
            }
            _ => {}
        }
    }

    fn route_datagram(&mut self, d: Datagram) {
        // The edge of the IKE SA's latest message, else the peer's latest edge, else the one
        // whose input this is: the first of them that is connected (one that died leaves
        // the others; any edge reaches the client from the shared address).
        let edge = [
            ike_spi_i(&d.payload).and_then(|s| self.ike_edge.get(&s)),
            self.peer_edge.get(&d.dst),
            self.current,
        ]
        .into_iter()
        .flatten()
        .find(|e| self.is_connected(*e) && !self.is_encryption_node(*e))
        // Every edge answers from the same public address: any connected one will do for an
        // IKE SA no edge forwarded yet (one adopted from the store).
        .or_else(|| {
            self.edges
                .iter()
                .find(|(e, l)| l.connected && !self.is_encryption_node(**e))
                .map(|(e, _)| *e)
        });
        let Some(edge) = edge else {
            self.stats.no_edge += 1;
            return;
        };
        // The updates queued before this datagram leave ahead of it, on the same channel.
        self.flush(edge, self.now);
        let gate = self.gate();
        if let Some(l) = self.edges.get_mut(&edge) {
            self.stats.ike_out += 1;
            l.out.push_back((gate, NodeMsg::Ike { datagram: d }));
        }
    }

    fn log(&mut self, line: String) {
        self.logs.push_back((format!("cluster: {line}"), false));
    }

    fn error(&mut self, line: String) {
        self.logs.push_back((format!("cluster: {line}"), true));
    }
}

/// The union of two exports of one inbound SA's window (same width): every number either
/// refused is refused (bit `i` is sequence number `top - i`).
fn merge_replay(a: &proto::sa::ReplayState, b: &proto::sa::ReplayState) -> proto::sa::ReplayState {
    if a.seen.len() != b.seen.len() {
        return if b.top > a.top { b.clone() } else { a.clone() };
    }
    let top = a.top.max(b.top);
    let width = (a.seen.len() as u64) * 64;
    let mut seen = vec![0u64; a.seen.len()];
    for s in [a, b] {
        for i in 0..width.min(s.top) {
            if s.seen[(i / 64) as usize] & (1 << (i % 64)) == 0 {
                continue;
            }
            let j = top - (s.top - i);
            if j < width {
                seen[(j / 64) as usize] |= 1 << (j % 64);
            }
        }
    }
    proto::sa::ReplayState { top, seen }
}
