//! The cluster's install figure (`roamgate perf cluster`, issue 18): SA installs per second
//! from the crypto node to three edges through the store, and the carrier round trip for an
//! unknown SPI.
//!
//! What runs, in one thread (the etcd client has its own):
//! - the real [`CryptoNode`] around a real [`ControlCore`] (IKE, durability, placement,
//!   carriers), its batches carried to the store by the real [`NodeStore`] (etcd, or the
//!   memory backend for the comparison and the unit test);
//! - three real [`EdgeForwarder`]s; each over [`PerfLink`], a stand-in data plane that
//!   prepares every update as the agent prepares it for a worker (`pipeline::agent::prepare`:
//!   keys expanded) and applies it to a table of SPIs at once (no worker thread: the
//!   acknowledgement comes when the update is prepared);
//! - the edge <-> crypto node channel in process: every message encoded and decoded by the
//!   `msg` codec, no Noise, no socket;
//! - simulated clients: one `ike::Endpoint` holding every client's IKE SA, each client with its
//!   own address, client `i` behind edge `i % 3`.
//!
//! The clients' IKE_SA_INIT exchanges run first, untimed (they write nothing to the store:
//! half-open IKE SAs are not stored); their IKE_AUTH requests are held. The timed part hands
//! them to their edges, at most `window` installs under way. An install is done when the
//! carriers holding its CHILD_SA's inbound SA (the forwarding edge's own with the outbound SA,
//! and the watched copies on the two others) are **acknowledged as applied by all three
//! edges**; every carrier leaves only after the store committed the records written before it
//! (the IKE SA, both CHILD SA directions), so done means in the store and at the edges. The
//! IKE_AUTH responses are handed to the clients after the timed part; every client must have
//! its CHILD_SA.
//!
//! The unknown-SPI round trip: a fourth edge joins with the spreading of copies off, and its
//! data plane reports ESP for SPIs it lacks, one at a time; timed from the report handed to
//! the edge until its data plane has the inbound SA (the node's answer moves the outbound SA
//! there too, behind a store write of its fence: an etcd round trip is on the path).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use ike::Instant;
use proto::{Datagram, Direction, Event as DpEvent, SaId, Spi, Update};
use zeroize::Zeroizing;

use super::msg::{EdgeId, EdgeMsg, NodeMsg};
use super::repository::{NodeStore, PLACED_COPY};
use super::store::keys::Name;
use super::store::seal::Sealer;
use super::store::{ClusterStore, Record, RecordKey, Store};
use super::{CryptoNode, EdgeForwarder};
use crate::config::ike::{endpoint_config, IkeYaml};
use crate::core::ControlCore;
use crate::driver::{Input, Link, LinkError};
use crate::repo::SaRepository;

const PUBLIC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Client `i` is at 198.18.0.1 + i.
const CLIENT_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PSK: &str = "perf-cluster-psk-not-secret";
const EDGES: usize = 3;

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub clients: usize,
    /// Installs under way at once (IKE_AUTH requests handed to edges, not yet done).
    pub window: usize,
    /// Unknown-SPI round trips to time (one at a time).
    pub unknown: usize,
    /// Give up after this long (per phase).
    pub timeout: Duration,
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub clients: usize,
    pub installs: usize,
    pub install_secs: f64,
    pub installs_per_s: f64,
    pub install_ms_p50: f64,
    pub install_ms_p99: f64,
    /// Handshakes the clients completed (IKE_AUTH responses processed after the timed part).
    pub clients_up: usize,
    /// Per edge: inbound SAs and outbound SAs its data plane holds after the installs.
    pub edge_inbound: Vec<usize>,
    pub edge_outbound: Vec<usize>,
    /// Clients whose inbound SA is on every edge and whose outbound SA is on exactly one.
    pub complete: usize,
    /// What the store holds after the installs: IKE SA, CHILD SA, placement (holder's own),
    /// placement (watched copies) records.
    pub stored_ike: usize,
    pub stored_child: usize,
    pub stored_placed: usize,
    pub stored_copies: usize,
    /// Store transactions and operations the node's driver wrote during the installs.
    pub txns: u64,
    pub ops: u64,
    /// CPU time of this thread (crypto node, edges, clients' driving) during the installs.
    pub cpu_secs: f64,
    pub unknown_ms_p50: f64,
    pub unknown_ms_p99: f64,
    pub unknown_done: usize,
}

/// An edge's data plane stand-in: updates prepared as for a worker, applied at once.
pub struct PerfLink {
    backend: pipeline::crypto::Backend,
    inputs: VecDeque<Input>,
    gen: u64,
    pub inbound: BTreeSet<Spi>,
    pub outbound: BTreeMap<SaId, Spi>,
    pub sent: VecDeque<Datagram>,
    /// Updates the agent refused to prepare.
    pub refused: u64,
}

impl PerfLink {
    pub fn new(backend: pipeline::crypto::Backend) -> PerfLink {
        PerfLink {
            backend,
            inputs: VecDeque::new(),
            gen: 0,
            inbound: BTreeSet::new(),
            outbound: BTreeMap::new(),
            sent: VecDeque::new(),
            refused: 0,
        }
    }
}

impl Link for PerfLink {
    fn pump(&mut self) -> bool {
        false
    }
    fn poll_input(&mut self) -> Option<Input> {
        self.inputs.pop_front()
    }
    fn send_update(&mut self, _worker: u16, update: Update) -> Result<u64, LinkError> {
        if pipeline::agent::prepare(self.backend, &update).is_err() {
            self.refused += 1;
        }
        match &update {
            Update::AddSa {
                dir: Direction::Inbound,
                params,
            } => {
                self.inbound.insert(params.spi);
            }
            Update::AddSa {
                dir: Direction::Outbound,
                params,
            } => {
                self.outbound.insert(params.id, params.spi);
            }
            Update::DeleteInbound { spi } => {
                self.inbound.remove(spi);
            }
            Update::DeleteOutbound { id } => {
                self.outbound.remove(id);
            }
            _ => {}
        }
        self.gen += 1;
        Ok(self.gen)
    }
    fn released(&self, _worker: u16) -> u64 {
        self.gen
    }
    fn send_datagram(&mut self, d: Datagram) -> Result<(), Datagram> {
        self.sent.push_back(d);
        Ok(())
    }
}

struct Edge {
    fwd: EdgeForwarder,
    link: PerfLink,
    /// Carrier number -> the (client, inbound SPI) of the inbound SAs it installs.
    carriers: BTreeMap<u64, Vec<(usize, Spi)>>,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(i).copied().unwrap_or(0.0)
}

fn client_addr(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(
        u32::from(CLIENT_BASE).wrapping_add(i as u32),
    ))
}

fn client_of(a: IpAddr) -> Option<usize> {
    match a {
        IpAddr::V4(v) => usize::try_from(u32::from(v).checked_sub(u32::from(CLIENT_BASE))?).ok(),
        IpAddr::V6(_) => None,
    }
}

/// The IKE exchange type of a datagram and whether it is a response (the endpoint's
/// datagrams carry no non-ESP marker: the socket layer adds it).
fn exchange(d: &Datagram) -> (u8, bool) {
    let p = &d.payload;
    let t = p.get(18).copied().unwrap_or(0);
    (t, p.get(19).is_some_and(|f| f & 0x20 != 0))
}

const IKE_AUTH: u8 = 35;

fn conns(yaml: &str) -> Result<Vec<crate::config::ike::Connection>, String> {
    let p = Path::new("perf cluster");
    crate::config::parse::<IkeYaml>(p, yaml)
        .map_err(err)?
        .validate(p, "ike")
        .map_err(err)
}

/// Called every turn with the store and the wall clock (ms).
pub type Tick<S> = Box<dyn FnMut(&mut S, u64)>;

/// The cluster under test around `store`.
struct Rig<S: Store> {
    start: WallInstant,
    unix_at_start: u64,
    node: CryptoNode,
    store: NodeStore<S>,
    edges: Vec<Edge>,
    clients: ike::Endpoint,
    /// Datagrams for the clients (delivered when `deliver` is set, else kept).
    to_clients: VecDeque<Datagram>,
    deliver: bool,
    /// IKE_AUTH requests held back (phase one), by client.
    held: BTreeMap<usize, Datagram>,
    hold_auth: bool,
    /// Per client: its inbound SPI at the node, the edges that acknowledged it (bits).
    spi: Vec<Option<Spi>>,
    acked: Vec<u8>,
    done_at: Vec<Option<WallInstant>>,
    done: usize,
    tick: Tick<S>,
}

impl<S: Store> Rig<S> {
    fn now(&self) -> Instant {
        Instant::from_nanos(self.start.elapsed().as_nanos() as u64)
    }

    fn wall_ms(&self) -> u64 {
        self.unix_at_start + self.start.elapsed().as_millis() as u64
    }

    fn add_edge(&mut self, id: usize, backend: pipeline::crypto::Backend) {
        let mut fwd = EdgeForwarder::new(id as EdgeId, 0xed9e_0000 + id as u64);
        self.node.edge_up(id as EdgeId);
        fwd.connected();
        self.edges.push(Edge {
            fwd,
            link: PerfLink::new(backend),
            carriers: BTreeMap::new(),
        });
    }

    /// One pass over everything; true if anything moved.
    fn turn(&mut self) -> Result<bool, String> {
        let mut moved = false;
        let now = self.now();
        let wall = self.wall_ms();
        (self.tick)(self.store.repo().store(), wall);
        for (i, e) in self.edges.iter_mut().enumerate() {
            moved |= e.fwd.turn(&mut e.link);
            while let Some(m) = e.fwd.poll_to_node() {
                moved = true;
                let m = EdgeMsg::decode(&m.encode().map_err(err)?).map_err(err)?;
                if let EdgeMsg::Applied { carrier, .. } = &m {
                    let rest = e.carriers.split_off(&(carrier + 1));
                    for (_, sas) in std::mem::replace(&mut e.carriers, rest) {
                        for (c, spi) in sas {
                            if self.spi.get(c).copied().flatten() != Some(spi) {
                                continue;
                            }
                            let Some(bits) = self.acked.get_mut(c) else {
                                continue;
                            };
                            let before = *bits;
                            *bits |= 1 << i;
                            if before & 0b111 != 0b111 && *bits & 0b111 == 0b111 {
                                if let Some(d) = self.done_at.get_mut(c) {
                                    *d = Some(WallInstant::now());
                                    self.done += 1;
                                }
                            }
                        }
                    }
                }
                self.node.set_wall_clock(wall);
                self.node.handle(now, i as EdgeId, m);
            }
            while let Some(d) = e.link.sent.pop_front() {
                moved = true;
                self.to_clients.push_back(d);
            }
        }
        if self.node.poll_timeout().is_some_and(|t| t <= now) {
            moved = true;
        }
        let t = WallInstant::now();
        if self.node.handle_timeout(now) {
            self.node.core_mut().set_view_cost(t.elapsed());
        }
        moved |= self.store.turn(&mut self.node, now, wall);
        for (i, e) in self.edges.iter_mut().enumerate() {
            while let Some(m) = self.node.poll_for(i as EdgeId) {
                moved = true;
                let m = NodeMsg::decode(&m.encode().map_err(err)?).map_err(err)?;
                if let NodeMsg::Carrier { n, updates } = &m {
                    let sas: Vec<(usize, Spi)> = updates
                        .iter()
                        .filter_map(|u| match u {
                            Update::AddSa {
                                dir: Direction::Inbound,
                                params,
                            } => Some((client_of(params.remote)?, params.spi)),
                            _ => None,
                        })
                        .collect();
                    for (c, spi) in &sas {
                        if let Some(s) = self.spi.get_mut(*c) {
                            s.get_or_insert(*spi);
                        }
                    }
                    if !sas.is_empty() {
                        e.carriers.insert(*n, sas);
                    }
                }
                e.fwd.handle_node(m, &mut e.link).map_err(err)?;
            }
        }
        // The clients.
        if self.deliver {
            while let Some(d) = self.to_clients.pop_front() {
                moved = true;
                self.clients.handle(
                    now,
                    SocketAddr::new(d.dst, d.dst_port),
                    SocketAddr::new(d.src, d.src_port),
                    &d.payload,
                );
            }
        }
        while let Some(t) = self.clients.poll_transmit() {
            moved = true;
            let d = Datagram {
                src: t.src.ip(),
                dst: t.dst.ip(),
                src_port: t.src.port(),
                dst_port: t.dst.port(),
                payload: t.data,
            };
            let Some(c) = client_of(d.src) else {
                continue;
            };
            let (x, response) = exchange(&d);
            if self.hold_auth && x == IKE_AUTH && !response {
                // The first of each client's (a retransmission is not kept).
                self.held.entry(c).or_insert(d);
                continue;
            }
            if let Some(e) = self.edges.get_mut(c % EDGES) {
                e.link.inputs.push_back(Input::Datagram(d));
            }
        }
        Ok(moved)
    }

    /// Turns until nothing moves for a while (or `until` says done).
    fn run_until(
        &mut self,
        timeout: Duration,
        what: &str,
        mut until: impl FnMut(&Self) -> bool,
    ) -> Result<(), String> {
        let t0 = WallInstant::now();
        loop {
            let moved = self.turn()?;
            if until(self) {
                return Ok(());
            }
            if t0.elapsed() > timeout {
                return Err(format!("perf cluster: {what} not done in {timeout:?}"));
            }
            if !moved {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }
}

/// CPU time (user + system) of the calling thread, from `/proc/thread-self/stat` (zero where
/// it cannot be read). Shared with the perf lab's handshake figure.
pub fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|s| s.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the ')'.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // USER_HZ is 100 on Linux (sysconf(_SC_CLK_TCK); fixed by the kernel ABI for /proc).
    Duration::from_millis(ticks * 10)
}

/// Runs the figure against `store`; `tick` is called every turn with the wall clock (ms)
/// (the memory backend's leases run on it; etcd needs nothing).
pub fn run<S: Store>(plan: &Plan, store: S, tick: Tick<S>) -> Result<Figures, String> {
    let backend = pipeline::crypto::best_backend();
    let pool_bits = 32 - (usize::BITS - (plan.clients + 16).leading_zeros()).max(8);
    let node_conns = conns(&format!(
        "connections:\n  - {{ name: rw, local_id: gw.perf.test, remote_id: rw.perf.test, \
         psk: \"{PSK}\", local_ts: [10.9.0.0/24], pool: 10.64.0.0/{pool_bits} }}\n"
    ))?;
    let client_conns = conns(&format!(
        "connections:\n  - {{ name: rw, local_id: rw.perf.test, remote_id: gw.perf.test, \
         psk: \"{PSK}\", local_ts: [0.0.0.0/0], remote_ts: [10.9.0.0/24], request_vip: true }}\n"
    ))?;
    let mut core = ControlCore::for_cluster_node(
        node_conns,
        SaRepository::new(Vec::new(), 64),
        crate::driver::inproc::os_seed(),
        IpAddr::V4(PUBLIC),
        4,
        5,
    )
    .map_err(err)?;
    core.set_quiet();
    // Every client half-open at once (their IKE_AUTHs are held): no cookies, no cap below
    // the crowd, no expiry within the run. The figure is about installs, not admission.
    core.set_admission((
        ike::Admission {
            cookie_threshold: u32::MAX,
            half_open_max: u32::try_from(plan.clients + 1024).unwrap_or(u32::MAX),
            half_open_per_source: 16,
            ..ike::Admission::default()
        },
        Duration::from_secs(3600),
    ));
    let mut node = CryptoNode::new(core);
    node.enable_store();
    node.set_incarnation(0x9e2f_0000_0000_0001);
    let unix_at_start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    node.set_wall_clock(unix_at_start);
    let mut key = Zeroizing::new([0u8; 32]);
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key[..])
        .map_err(|_| "random".to_string())?;
    let cluster = Name::new(&format!(
        "perf-cluster-{}-{}",
        std::process::id(),
        unix_at_start % 1_000_000
    ))
    .map_err(err)?;
    let repo = ClusterStore::new(store, &cluster, Arc::new(Sealer::new(key)));
    let mut rig = Rig {
        start: WallInstant::now(),
        unix_at_start,
        node,
        store: NodeStore::new(repo, 10),
        edges: Vec::new(),
        clients: ike::Endpoint::new(
            endpoint_config(&client_conns),
            crate::driver::inproc::os_seed(),
        ),
        to_clients: VecDeque::new(),
        deliver: true,
        held: BTreeMap::new(),
        hold_auth: true,
        spi: vec![None; plan.clients],
        acked: vec![0; plan.clients],
        done_at: vec![None; plan.clients],
        done: 0,
        tick,
    };
    for i in 0..EDGES {
        rig.add_edge(i, backend);
    }
    rig.run_until(plan.timeout, "the edges' hellos", |r| {
        (0..EDGES).all(|i| r.node.is_connected(i as EdgeId))
    })?;

    // Phase one (untimed): every client's IKE_SA_INIT; IKE_AUTH requests held.
    let gw = SocketAddr::new(IpAddr::V4(PUBLIC), 500);
    let mut started = 0;
    let t0 = WallInstant::now();
    while rig.held.len() < plan.clients {
        while started < plan.clients && started - rig.held.len() < 256 {
            let now = rig.now();
            rig.clients
                .connect(now, "rw", SocketAddr::new(client_addr(started), 500), gw)
                .map_err(|e| format!("{e:?}"))?;
            started += 1;
        }
        // Anything dropped (admission) is retransmitted; retransmitted IKE_AUTHs are not
        // kept twice.
        let now = rig.now();
        if rig.clients.poll_timeout().is_some_and(|t| t <= now) {
            rig.clients.handle_timeout(now);
        }
        if !rig.turn()? {
            std::thread::sleep(Duration::from_micros(50));
        }
        if t0.elapsed() > plan.timeout {
            return Err(format!(
                "perf cluster: {} of {} IKE_SA_INITs done in {:?}",
                rig.held.len(),
                plan.clients,
                plan.timeout
            ));
        }
    }
    rig.hold_auth = false;
    rig.deliver = false;
    tracing::info!(target: "cluster", clients = plan.clients, secs = t0.elapsed().as_secs_f64(),
        "perf cluster: IKE_SA_INITs done");

    // Phase two (timed): the IKE_AUTH requests to their edges, `window` under way.
    let store0 = rig.store.stats.clone();
    let cpu0 = thread_cpu();
    let begin = WallInstant::now();
    let mut held: VecDeque<(usize, Datagram)> = std::mem::take(&mut rig.held).into_iter().collect();
    let mut punted_at: Vec<Option<WallInstant>> = vec![None; plan.clients];
    let mut punted = 0usize;
    let window = plan.window.max(1);
    loop {
        while punted - rig.done < window {
            let Some((c, d)) = held.pop_front() else {
                break;
            };
            if let Some(p) = punted_at.get_mut(c) {
                *p = Some(WallInstant::now());
            }
            punted += 1;
            if let Some(e) = rig.edges.get_mut(c % EDGES) {
                e.link.inputs.push_back(Input::Datagram(d));
            }
        }
        let moved = rig.turn()?;
        if rig.done >= plan.clients {
            break;
        }
        if begin.elapsed() > plan.timeout {
            return Err(format!(
                "perf cluster: {} of {} installs done in {:?}",
                rig.done, plan.clients, plan.timeout
            ));
        }
        if !moved {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
    let last = rig.done_at.iter().flatten().max().copied().unwrap_or(begin);
    let install_secs = last.saturating_duration_since(begin).as_secs_f64();
    let cpu_secs = thread_cpu().saturating_sub(cpu0).as_secs_f64();
    let mut lat: Vec<f64> = punted_at
        .iter()
        .zip(&rig.done_at)
        .filter_map(|(p, d)| Some(d.as_ref()?.saturating_duration_since(*p.as_ref()?)))
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    lat.sort_by(f64::total_cmp);
    let (txns, ops) = (
        rig.store.stats.txns - store0.txns,
        rig.store.stats.ops - store0.ops,
    );

    // The placements written, the clients answered.
    rig.deliver = true;
    rig.run_until(plan.timeout, "the placements and answers", |r| {
        r.to_clients.is_empty()
            && r.node.waiting_for_store() == 0
            && r.node.placements_pending() == 0
            && r.store.in_flight() == 0
            && r.node.stats.store_batches == r.stored_through()
    })?;
    let mut clients_up = 0;
    while let Some(e) = rig.clients.poll_event() {
        if matches!(&e, ike::Event::ChildUp(c) if c.rekey_of.is_none()) {
            clients_up += 1;
        }
    }
    let mut f = Figures {
        clients: plan.clients,
        installs: rig.done,
        install_secs,
        installs_per_s: rig.done as f64 / install_secs.max(1e-9),
        install_ms_p50: quantile(&lat, 0.5),
        install_ms_p99: quantile(&lat, 0.99),
        clients_up,
        txns,
        ops,
        cpu_secs,
        ..Figures::default()
    };
    for e in &rig.edges {
        f.edge_inbound.push(e.link.inbound.len());
        f.edge_outbound.push(e.link.outbound.len());
    }
    // Complete: the inbound SA on every edge, and one outbound SA for it on exactly one.
    let mut out_holders: HashMap<SaId, usize> = HashMap::new();
    for e in &rig.edges {
        for id in e.link.outbound.keys() {
            *out_holders.entry(*id).or_default() += 1;
        }
    }
    f.complete = rig
        .spi
        .iter()
        .flatten()
        .filter(|s| rig.edges.iter().all(|e| e.link.inbound.contains(*s)))
        .filter(|s| {
            rig.node
                .core()
                .child_sas(**s)
                .is_some_and(|ch| out_holders.get(&ch.out_id) == Some(&1))
        })
        .count();
    let (entries, _) = rig.store.repo().load("", plan.timeout).map_err(err)?;
    for e in entries {
        match (e.key, e.record) {
            (RecordKey::Ike(_), _) => f.stored_ike += 1,
            (
                RecordKey::Child(_),
                Record::Child {
                    inbound, outbound, ..
                },
            ) => f.stored_child += usize::from(inbound.is_some()) + usize::from(outbound.is_some()),
            (RecordKey::Placement(_), Record::Placement { edges, .. }) => {
                for (_, kind) in edges {
                    if kind == PLACED_COPY {
                        f.stored_copies += 1;
                    } else {
                        f.stored_placed += 1;
                    }
                }
            }
            _ => {}
        }
    }

    // The unknown-SPI round trip: a fourth edge, copies no longer spread.
    rig.node.set_spread(false);
    rig.add_edge(EDGES, backend);
    rig.run_until(plan.timeout, "the fourth edge's hello", |r| {
        r.node.is_connected(EDGES as EdgeId)
    })?;
    let mut rtt = Vec::new();
    let step = (plan.clients / plan.unknown.max(1)).max(1);
    for c in (0..plan.clients).step_by(step).take(plan.unknown) {
        let Some(spi) = rig.spi.get(c).copied().flatten() else {
            continue;
        };
        let t = WallInstant::now();
        if let Some(e) = rig.edges.get_mut(EDGES) {
            e.link.inputs.push_back(Input::Event(DpEvent::UnknownSpi {
                worker: 0,
                spi,
                src: client_addr(c),
                src_port: 4500,
                dst: IpAddr::V4(PUBLIC),
                packets: 1,
            }));
        }
        rig.run_until(plan.timeout, "an unknown SPI's carrier", |r| {
            r.edges
                .get(EDGES)
                .is_some_and(|e| e.link.inbound.contains(&spi))
        })?;
        rtt.push(t.elapsed().as_secs_f64() * 1e3);
    }
    rtt.sort_by(f64::total_cmp);
    f.unknown_done = rtt.len();
    f.unknown_ms_p50 = quantile(&rtt, 0.5);
    f.unknown_ms_p99 = quantile(&rtt, 0.99);
    Ok(f)
}

impl<S: Store> Rig<S> {
    /// The last batch the store committed (every batch up to it).
    fn stored_through(&self) -> u64 {
        self.node.store_committed_through()
    }
}

/// The figure on the memory backend (no etcd: what the node and edges do on their own).
pub fn run_mem(plan: &Plan) -> Result<Figures, String> {
    run(
        plan,
        super::store::mem::MemStore::new(),
        Box::new(|s: &mut super::store::mem::MemStore, ms| s.advance(ms)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sa_reaches_every_edge_and_the_store_on_the_memory_backend() {
        let plan = Plan {
            clients: 60,
            window: 16,
            unknown: 5,
            timeout: Duration::from_secs(60),
        };
        let f = run_mem(&plan).unwrap();
        assert_eq!(f.installs, 60, "{f:?}");
        assert_eq!(f.clients_up, 60, "every client has its CHILD_SA: {f:?}");
        assert_eq!(f.complete, 60, "{f:?}");
        assert_eq!(f.edge_inbound, vec![60, 60, 60], "{f:?}");
        assert_eq!(f.edge_outbound, vec![20, 20, 20], "{f:?}");
        assert_eq!(
            (
                f.stored_ike,
                f.stored_child,
                f.stored_placed,
                f.stored_copies
            ),
            (60, 120, 60, 120),
            "{f:?}"
        );
        assert_eq!(f.unknown_done, 5, "{f:?}");
        assert!(f.install_ms_p99 >= f.install_ms_p50);
    }
}

/// The figure through etcd, with its baselines from the same run.
#[cfg(feature = "etcd")]
#[derive(Clone, Debug)]
pub struct EtcdFigures {
    pub etcd: Figures,
    /// The same run on the memory backend (what the node and edges do without etcd).
    pub mem: Option<Figures>,
    /// etcd's single puts per second through the same client (`raw_put_bytes` each,
    /// `raw_window` in flight), measured right after the installs on the same cluster.
    pub raw_puts_per_s: f64,
    pub raw_puts: usize,
    pub raw_put_bytes: usize,
    pub raw_window: usize,
    pub check_perf: Option<String>,
    pub check_perf_writes_per_s: Option<f64>,
}

/// Runs the figure through etcd at `endpoints`, or a local 3-member cluster started under
/// `dir`; then etcd's own put rate (and `etcdctl check perf --load <check_perf>` on a local
/// cluster), then, if `mem`, the same run on the memory backend.
#[cfg(feature = "etcd")]
pub fn run_etcd(
    plan: &Plan,
    endpoints: Option<Vec<String>>,
    dir: &Path,
    check_perf: Option<&str>,
    mem: bool,
) -> Result<EtcdFigures, String> {
    use super::store::etcd::{EtcdOptions, EtcdStore};
    use super::store::local::LocalEtcd;
    let local = match &endpoints {
        Some(_) => None,
        None => {
            let _ = std::fs::remove_dir_all(dir);
            Some(LocalEtcd::start(dir, 3, None).map_err(err)?)
        }
    };
    let eps = match (&endpoints, &local) {
        (Some(e), _) => e.clone(),
        (None, Some(l)) => l.endpoints(),
        (None, None) => return Err("no etcd".into()),
    };
    let result: Result<EtcdFigures, String> = (|| {
        let opts = EtcdOptions::new(eps.clone());
        // The node's driver keeps 64 transactions in flight: the baseline the same.
        let raw_window = 64;
        let store = EtcdStore::connect(opts.clone()).map_err(err)?;
        let etcd = run(plan, store, Box::new(|_: &mut EtcdStore, _| {}))?;
        let mut store = EtcdStore::connect(opts).map_err(err)?;
        let raw_puts = (plan.clients * 2).clamp(200, 4000);
        let raw_put_bytes = 512;
        let raw_puts_per_s =
            super::store::perf::raw_puts(&mut store, raw_puts, raw_put_bytes, raw_window)?;
        let (check_perf, check_perf_writes_per_s) = match (check_perf, &local) {
            (Some(load), Some(l)) => super::store::perf::check_perf(l, load)?,
            _ => (None, None),
        };
        Ok(EtcdFigures {
            etcd,
            mem: None,
            raw_puts_per_s,
            raw_puts,
            raw_put_bytes,
            raw_window,
            check_perf,
            check_perf_writes_per_s,
        })
    })();
    drop(local);
    if endpoints.is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
    let mut r = result?;
    if mem {
        r.mem = Some(run_mem(plan)?);
    }
    Ok(r)
}
