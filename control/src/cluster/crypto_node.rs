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

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use ike::Instant;
use proto::sa::SaRef;
use proto::{Datagram, Direction, Event, Update};

use super::msg::{ike_spi_i, EdgeId, EdgeMsg, NodeMsg, MAX_CARRIER_UPDATES};
use super::placement::SaPlacement;
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
    /// Edge-to-edge moves: a client's ESP reached another edge, its outbound SA followed.
    pub moves: u64,
    /// Reservations raised on edges (`ReserveSeq`).
    pub grants: u64,
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
    out: VecDeque<NodeMsg>,
    /// Carrier round trips (sent -> acknowledged as applied), most recent last.
    round_trips: VecDeque<Duration>,
    /// Moves to this edge in this input's updates, not yet in a carrier: when each began.
    moves_pending: Vec<Instant>,
    /// Moves to this edge in carriers not yet acknowledged: (carrier number, when it began).
    moves_in_flight: VecDeque<(u64, Instant)>,
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
    /// How far past its last used number an edge may send ([`DEFAULT_SEQ_GRANT`]).
    seq_grant: u64,
    /// Move times: the unknown-SPI report in -> the new edge acknowledged the carrier that
    /// moved the SA (applied to its data plane), most recent last.
    move_times: VecDeque<Duration>,
    pub stats: NodeStats,
}

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
            seq_grant: DEFAULT_SEQ_GRANT,
            move_times: VecDeque::new(),
            stats: NodeStats::default(),
        }
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
            l.moves_pending.clear();
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

    /// The next message for `edge`, oldest first.
    pub fn poll_for(&mut self, edge: EdgeId) -> Option<NodeMsg> {
        self.edges.get_mut(&edge)?.out.pop_front()
    }

    /// A message the driver could not hand to the channel now goes back to the front.
    pub fn unpoll(&mut self, edge: EdgeId, m: NodeMsg) {
        if let Some(l) = self.edges.get_mut(&edge) {
            l.out.push_front(m);
        }
    }

    /// Edges with messages waiting.
    pub fn edges_with_output(&self) -> Vec<EdgeId> {
        self.edges
            .iter()
            .filter(|(_, l)| !l.out.is_empty())
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
        self.core.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.current = None;
            self.core.handle_timeout(now);
            self.drain(now);
        }
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
                if let Some(l) = self.edges.get_mut(&from) {
                    while l
                        .moves_in_flight
                        .front()
                        .is_some_and(|(n, _)| *n <= carrier)
                    {
                        if let Some((_, began)) = l.moves_in_flight.pop_front() {
                            if self.move_times.len() >= ROUND_TRIPS_KEPT {
                                self.move_times.pop_front();
                            }
                            self.move_times
                                .push_back(now.saturating_duration_since(began));
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
    }

    fn hello(&mut self, now: Instant, edge: EdgeId, incarnation: u64, applied: u64) {
        let l = self.edges.entry(edge).or_default();
        l.connected = true;
        let same = l.incarnation == Some(incarnation);
        l.incarnation = Some(incarnation);
        if same {
            // The connection broke, the edge lives: what it did not apply comes again, in
            // order, under the same numbers (it skips what it has).
            l.applied = l.applied.max(applied);
            let again: Vec<NodeMsg> = l
                .unacked
                .iter()
                .filter(|(n, ..)| *n > applied)
                .map(|(n, u, _)| NodeMsg::Carrier {
                    n: *n,
                    updates: u.clone(),
                })
                .collect();
            self.stats.resent += again.len() as u64;
            l.out.extend(again);
            self.log(format!(
                "edge {edge} is back (applied up to carrier {applied})"
            ));
        } else {
            l.next_carrier = 1;
            l.applied = 0;
            l.unacked.clear();
            l.moves_in_flight.clear();
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
        }
    }

    fn report(&mut self, now: Instant, edge: EdgeId, event: Event) {
        match &event {
            Event::SeqCheckpoint { id, seq, .. } => {
                self.placement.report_seq(edge, *id, *seq, false);
                self.refill(edge, *id, *seq);
            }
            Event::SaState {
                id,
                state: proto::sa::SaState::Outbound { seq, .. },
                ..
            } => {
                self.placement.report_seq(edge, *id, *seq, true);
            }
            Event::SaState { .. } => {}
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
        self.stats.grants += 1;
        if let Some(l) = self.edges.get_mut(&edge) {
            l.pending.push(Update::ReserveSeq { id, up_to });
        }
    }

    /// **Edge-to-edge move.** ESP on inbound SPI `spi` reached `edge`: the client's path goes
    /// there now. Its CHILD_SA's outbound SA, if another edge holds it, moves to `edge`,
    /// resumed above the SA's fence (the highest reservation any edge was ever granted, so
    /// above every number any edge can have sent: `docs/architecture.md`, "Edge-to-edge
    /// move"), with its host bindings (the LAN return path); the old edge deletes its copy of
    /// both directions (an old edge that does not hear it still cannot send above the fence:
    /// it never gets a reservation again). The client sees nothing but a forward jump of at
    /// most one grant in our sequence numbers.
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
        if params.checkpoint.is_none() {
            params.checkpoint = Some(self.checkpoint);
        }
        self.placement.move_outbound(id, edge);
        self.placement.grant(id, up_to);
        // The crypto node's own requests to this client (DPD, rekeys) leave by the new edge.
        self.peer_edge.set(params.remote, edge);
        let hosts = self.placement.hosts_of(id);
        for a in &old {
            self.placement.unplace_inbound(spi, *a);
            if let Some(l) = self.edges.get_mut(a) {
                l.pending.push(Update::DeleteOutbound { id });
                for (dst, _) in &hosts {
                    l.pending.push(Update::UnbindHost { dst: *dst });
                }
                l.pending.push(Update::DeleteInbound { spi });
            }
        }
        if let Some(l) = self.edges.get_mut(&edge) {
            l.moves_pending.push(now);
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

    /// The core's outputs, routed.
    fn drain(&mut self, now: Instant) {
        while let Some(o) = self.core.poll_output() {
            match o {
                Output::Update { update, .. } => self.route_update(update),
                Output::Transmit(d) => self.route_datagram(d),
                Output::Log { line, error } => self.logs.push_back((line, error)),
                Output::View(json) => self.view = Some(json),
                // The etcd store (item 4) keeps IKE SAs; without it a restart renegotiates.
                Output::Persist(_) | Output::Forget { .. } => {}
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
        let mut last = 0;
        for chunk in pending.chunks(MAX_CARRIER_UPDATES) {
            let n = l.next_carrier.max(1);
            l.next_carrier = n + 1;
            last = n;
            l.unacked.push_back((n, chunk.to_vec(), now));
            self.stats.carriers += 1;
            self.stats.updates_carried += chunk.len() as u64;
            if l.connected {
                l.out.push_back(NodeMsg::Carrier {
                    n,
                    updates: chunk.to_vec(),
                });
            }
        }
        for began in std::mem::take(&mut l.moves_pending) {
            l.moves_in_flight.push_back((last, began));
        }
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
        match &u {
            Update::AddSa { dir, params } => {
                let target = self.current.or_else(|| self.peer_edge.get(&params.remote));
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
                    }
                }
                self.push_to(&BTreeSet::from([edge]), u);
            }
            Update::DeleteInbound { spi } => {
                let edges = self.placement.remove_inbound(*spi);
                self.push_to(&edges, u);
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
                }
                self.push_to(&edges, u);
            }
            Update::BindHost { dst, src, sa } => {
                let edges = self.placement.outbound_edges(*sa);
                self.placement.bind(*dst, *src, *sa, &edges);
                self.push_to(&edges, u);
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
                let edges = self.placement.outbound_edges(*id);
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
        .find(|e| self.is_connected(*e));
        let Some(edge) = edge else {
            self.stats.no_edge += 1;
            return;
        };
        // The updates queued before this datagram leave ahead of it, on the same channel.
        self.flush(edge, self.now);
        if let Some(l) = self.edges.get_mut(&edge) {
            self.stats.ike_out += 1;
            l.out.push_back(NodeMsg::Ike { datagram: d });
        }
    }

    fn log(&mut self, line: String) {
        self.logs.push_back((format!("cluster: {line}"), false));
    }

    fn error(&mut self, line: String) {
        self.logs.push_back((format!("cluster: {line}"), true));
    }
}
