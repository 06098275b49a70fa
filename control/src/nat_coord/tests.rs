//! Virtual-time tests of the routing coordinator: several [`MasqNode`]s over one memory store
//! (etcd's semantics, leases on the test's clock).
#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use pipeline::masq::access::{AccessPolicy, AccessTable};
use zeroize::Zeroizing;

#[path = "tests_glue.rs"]
mod glue;

use super::node::successor;
use super::*;
use crate::cluster::store::keys::Name;
use crate::cluster::store::mem::MemStore;
use crate::cluster::store::{Event, Reply, Request, Sealer, Store, StoreError, Ticket};

/// One memory store shared by several nodes: each node's handle gets the answers to its own
/// requests and the events of its own watches.
struct Hub {
    mem: MemStore,
    ticket_owner: HashMap<u64, usize>,
    watch_owner: HashMap<u64, usize>,
    queues: Vec<VecDeque<Event>>,
    current: usize,
    /// A slow store: answers and events reach the nodes only at the next tick.
    slow: bool,
    later: Vec<(usize, Event)>,
    /// Each watch's prefix (the watch being created: `creating`).
    watch_prefix: HashMap<u64, Vec<u8>>,
    creating: Option<Vec<u8>>,
    /// A lagging watch (etcd catches up a watch that starts behind its head in the
    /// background): events of this node's watches on prefixes containing this text are held
    /// in `lagged` until `release_lag`.
    lag: Option<(usize, Vec<u8>)>,
    lagged: Vec<(usize, Event)>,
}

impl Hub {
    fn route(&mut self) {
        let mut evs = Vec::new();
        self.mem.poll(&mut evs);
        for ev in evs {
            let owner = match &ev {
                Event::Done { ticket, result } => {
                    let o = self.ticket_owner.remove(&ticket.0).unwrap_or(self.current);
                    if let Ok(Reply::Watching(w)) = result {
                        self.watch_owner.insert(w.0, o);
                    }
                    o
                }
                // A new watch's catch-up comes before its Done: the submitter's.
                Event::Changes { watch, .. } | Event::Resync { watch, .. } => {
                    if let Some(p) = &self.creating {
                        self.watch_prefix
                            .entry(watch.0)
                            .or_insert_with(|| p.clone());
                    }
                    *self.watch_owner.entry(watch.0).or_insert(self.current)
                }
            };
            if let Event::Done {
                result: Ok(Reply::Watching(w)),
                ..
            } = &ev
            {
                if let Some(p) = &self.creating {
                    self.watch_prefix.insert(w.0, p.clone());
                }
            }
            let lagging = match (&ev, &self.lag) {
                (
                    Event::Changes { watch, .. } | Event::Resync { watch, .. },
                    Some((node, text)),
                ) => {
                    *node == owner
                        && self
                            .watch_prefix
                            .get(&watch.0)
                            .is_some_and(|p| p.windows(text.len()).any(|w| w == text.as_slice()))
                }
                _ => false,
            };
            if lagging {
                self.lagged.push((owner, ev));
            } else if self.slow {
                self.later.push((owner, ev));
            } else {
                self.push(owner, ev);
            }
        }
    }

    fn push(&mut self, owner: usize, ev: Event) {
        while self.queues.len() <= owner {
            self.queues.push(VecDeque::new());
        }
        self.queues[owner].push_back(ev);
    }

    /// The lagging watch catches up: what it held arrives, in order, and it lags no more.
    fn release_lag(&mut self) {
        self.lag = None;
        for (o, ev) in std::mem::take(&mut self.lagged) {
            self.push(o, ev);
        }
    }

    /// A slow store's answers arrive.
    fn deliver(&mut self) {
        self.route();
        for (o, ev) in std::mem::take(&mut self.later) {
            self.push(o, ev);
        }
    }
}

#[derive(Clone)]
struct Handle {
    hub: Rc<RefCell<Hub>>,
    id: usize,
}

impl Store for Handle {
    fn submit(&mut self, req: Request) -> Result<Ticket, StoreError> {
        let mut h = self.hub.borrow_mut();
        h.current = self.id;
        h.creating = match &req {
            Request::Watch { prefix, .. } => Some(prefix.clone()),
            _ => None,
        };
        let t = h.mem.submit(req)?;
        h.ticket_owner.insert(t.0, self.id);
        h.route();
        h.creating = None;
        Ok(t)
    }

    fn poll(&mut self, out: &mut Vec<Event>) {
        let mut h = self.hub.borrow_mut();
        h.route();
        if let Some(q) = h.queues.get_mut(self.id) {
            out.extend(q.drain(..));
        }
    }

    fn wait(&mut self, _t: Ticket, _timeout: Duration) -> Result<Reply, StoreError> {
        Err(StoreError::Timeout)
    }
}

const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);

fn addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, i)
}

fn client(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 9, 0, i)
}

fn flow(proto: Proto, c: Ipv4Addr, cp: u16, sp: u16) -> Flow {
    Flow {
        proto,
        client: SocketAddrV4::new(c, cp),
        server: SocketAddrV4::new(SERVER, sp),
    }
}

struct Net {
    hub: Rc<RefCell<Hub>>,
    sealer: Arc<Sealer>,
    access: Arc<AccessTable>,
    nodes: Vec<Option<MasqNode<Handle>>>,
    outputs: Vec<Vec<Output>>,
    now: u64,
    /// Each node's heartbeat address (`MasqParams::alive`), by index.
    alive: Vec<Option<String>>,
    /// Heartbeats from the first node to the second are lost.
    cut: BTreeSet<(usize, usize)>,
}

impl Net {
    fn new() -> Net {
        let mut mem = MemStore::new();
        mem.advance(1_000);
        Net {
            hub: Rc::new(RefCell::new(Hub {
                mem,
                ticket_owner: HashMap::new(),
                watch_owner: HashMap::new(),
                queues: Vec::new(),
                current: 0,
                slow: false,
                later: Vec::new(),
                watch_prefix: HashMap::new(),
                creating: None,
                lag: None,
                lagged: Vec::new(),
            })),
            sealer: Arc::new(Sealer::new(Zeroizing::new([0x21; 32]))),
            access: Arc::new(AccessTable::allow_all()),
            nodes: Vec::new(),
            outputs: Vec::new(),
            now: 1_000,
            alive: Vec::new(),
            cut: BTreeSet::new(),
        }
    }

    fn add(&mut self, p: MasqParams) -> usize {
        let id = self.nodes.len();
        let h = Handle {
            hub: self.hub.clone(),
            id,
        };
        self.alive.push(p.alive.clone());
        let mut n = MasqNode::new(p, h, self.sealer.clone(), self.access.clone());
        n.start(self.now);
        self.nodes.push(Some(n));
        self.outputs.push(Vec::new());
        self.collect();
        while !self.n(id).is_ready() {
            self.tick(1);
        }
        id
    }

    fn params(name: &str, addrs: &[Ipv4Addr]) -> MasqParams {
        let mut p = MasqParams::new(
            Name::new("c1").unwrap(),
            Name::new(name).unwrap(),
            addrs.to_vec(),
        );
        p.udp_idle_ms = 30_000;
        p.tcp_idle_ms = 600_000;
        p.reuse_delay_ms = 60_000;
        p
    }

    fn n(&mut self, i: usize) -> &mut MasqNode<Handle> {
        self.nodes[i].as_mut().expect("a live node")
    }

    fn collect(&mut self) {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if let Some(n) = n {
                while let Some(o) = n.poll_output() {
                    self.outputs[i].push(o);
                }
            }
        }
    }

    /// Moves time on by `ms` (1 ms steps for short moves, larger beyond).
    fn tick(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            let step = (end - self.now).min(100);
            self.now += step;
            self.hub.borrow_mut().mem.advance(self.now);
            self.hub.borrow_mut().deliver();
            for n in self.nodes.iter_mut().flatten() {
                n.handle_timeout(self.now);
            }
            self.heartbeats();
            self.collect();
        }
    }

    /// Carries the heartbeats due now (those over a cut are lost).
    fn heartbeats(&mut self) {
        let mut sent = Vec::new();
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if let Some(n) = n {
                for (to, b) in n.heartbeats(self.now) {
                    sent.push((i, to, b));
                }
            }
        }
        for (i, to, b) in sent {
            let j = self
                .alive
                .iter()
                .position(|a| a.as_deref() == Some(to.as_str()));
            let Some(j) = j else { continue };
            if self.cut.contains(&(i, j)) {
                continue;
            }
            let now = self.now;
            if let Some(n) = self.nodes[j].as_mut() {
                n.heartbeat_in(&b, now);
            }
        }
    }

    /// `params` with heartbeats every 100 ms, a peer dead after 300 ms of silence.
    fn params_alive(name: &str, addrs: &[Ipv4Addr]) -> MasqParams {
        let mut p = Net::params(name, addrs);
        p.alive = Some(format!("{name}.mgmt:7700"));
        p
    }

    /// Sends an outbound packet of `f` at node `i` until it is rewritten (held packets
    /// retried as the node says), or dropped.
    fn send(&mut self, i: usize, f: Flow) -> OutVerdict {
        let slow = self.hub.borrow().slow;
        for _ in 0..50 {
            let now = self.now;
            let v = self.n(i).outbound(f, now);
            self.collect();
            if v != OutVerdict::Hold {
                return v;
            }
            if slow {
                while !self.outputs[i].contains(&Output::Retry(f)) {
                    self.tick(1);
                }
            }
            assert!(
                self.outputs[i].contains(&Output::Retry(f)),
                "a held flow is retried once the store answered: {:?}",
                self.outputs[i]
            );
            self.outputs[i].retain(|o| o != &Output::Retry(f));
        }
        panic!("{f:?} held for ever at node {i}");
    }

    fn masq(&mut self, i: usize, f: Flow) -> MasqAddr {
        match self.send(i, f) {
            OutVerdict::Rewrite(m) => m,
            other => panic!("{f:?} at node {i}: {other:?}"),
        }
    }

    fn recv(&mut self, i: usize, m: MasqAddr) -> InVerdict {
        let now = self.now;
        let v = self.n(i).inbound(m, now);
        self.collect();
        v
    }

    fn attach(&mut self, i: usize, c: Ipv4Addr, user: &str) {
        let now = self.now;
        self.n(i).client_attached(c, user, now);
        self.collect();
    }

    fn leave(&mut self, i: usize, c: Ipv4Addr) {
        let now = self.now;
        self.n(i).client_left(c, now);
        self.collect();
    }

    fn kill(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    /// Every connection record in the store (by reading it as a fresh observer would).
    fn stored(&mut self) -> BTreeMap<MasqAddr, records::ConnRec> {
        let layout = records::MasqLayout::new(&Name::new("c1").unwrap());
        let mut h = self.hub.borrow_mut();
        let r = h
            .mem
            .call(
                Request::Range {
                    prefix: layout.prefix("conn/"),
                },
                Duration::from_secs(1),
            )
            .unwrap();
        let Reply::Range { kvs, .. } = r else {
            panic!("{r:?}")
        };
        kvs.iter()
            .map(|kv| {
                let Some(records::MasqKey::Conn(m)) = layout.parse(&kv.key) else {
                    panic!("{kv:?}")
                };
                let plain = self.sealer.open(&kv.key, &kv.value).unwrap();
                (m, records::decode(&plain).unwrap())
            })
            .collect()
    }
}

/// A client moves a -> b -> c and back to a with a TCP and a UDP connection open: every node
/// rewrites them to the address and port the HAM granted, the HAM forwards the answers to the
/// node the client is at, and a connection opened at c is homed at c.
#[test]
fn a_client_moving_between_three_nodes_keeps_its_masquerading_address() {
    let mut net = Net::new();
    let a = net.add(Net::params("a", &[addr(1)]));
    let b = net.add(Net::params("b", &[addr(2)]));
    let c = net.add(Net::params("c", &[addr(3)]));
    let cl = client(2);
    let tcp = flow(Proto::Tcp, cl, 40000, 443);
    let udp = flow(Proto::Udp, cl, 5353, 53);

    net.attach(a, cl, "alice");
    let mt = net.masq(a, tcp);
    let mu = net.masq(a, udp);
    assert_eq!(mt.addr, addr(1), "homed at the first node");
    assert_eq!(mt.proto, Proto::Tcp);
    assert!(net.outputs[a].contains(&Output::Serve(addr(1))));
    assert!(net.outputs[a].contains(&Output::FamInstall {
        flow: tcp,
        masq: mt
    }));
    assert_eq!(net.recv(a, mt), InVerdict::Local(tcp));

    let mut epochs = vec![net.stored()[&mt].fam_epoch];
    for (from, to) in [(a, b), (b, c)] {
        net.tick(5);
        net.attach(to, cl, "alice");
        net.leave(from, cl);
        assert_eq!(net.masq(to, tcp), mt);
        assert_eq!(net.masq(to, udp), mu);
        let name = net.n(to).name().to_string();
        assert_eq!(
            net.recv(a, mt),
            InVerdict::Forward(name.clone()),
            "HAM -> FAM"
        );
        assert_eq!(net.recv(a, mu), InVerdict::Forward(name.clone()));
        assert_eq!(net.recv(to, mt), InVerdict::Local(tcp));
        assert!(net.outputs[from].contains(&Output::FamRemove {
            flow: tcp,
            masq: mt
        }));
        assert!(net.outputs[a].contains(&Output::Route {
            masq: mt,
            fam: Some(name.clone())
        }));
        let rec = &net.stored()[&mt];
        assert_eq!(rec.fam.as_deref(), Some(name.as_str()));
        epochs.push(rec.fam_epoch);
    }
    assert_eq!(epochs, vec![1, 2, 3]);
    // A connection opened at c is c's.
    let late = flow(Proto::Tcp, cl, 40001, 443);
    let ml = net.masq(c, late);
    assert_eq!(ml.addr, addr(3));
    // Back to a: a is the FAM of the c-homed one, c forwards to a.
    net.attach(a, cl, "alice");
    net.leave(c, cl);
    assert_eq!(net.masq(a, tcp), mt);
    assert_eq!(net.masq(a, late), ml);
    assert_eq!(net.recv(a, mt), InVerdict::Local(tcp));
    assert_eq!(net.recv(c, ml), InVerdict::Forward("a".into()));
    assert_eq!(net.recv(b, mt), InVerdict::Drop(MasqDrop::NotMine));
    // The data-plane changes at b: installed on arrival, removed on departure.
    assert!(net.outputs[b].contains(&Output::FamInstall {
        flow: tcp,
        masq: mt
    }));
    assert!(net.outputs[b].contains(&Output::FamRemove {
        flow: tcp,
        masq: mt
    }));
}

/// Random moves of several clients among three nodes, with connections opened on the way:
/// a connection's address never changes, and its HAM always sends its answers to the node
/// the client is at.
#[test]
fn random_moves_never_change_a_connections_address() {
    for seed in 1..=5u64 {
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut net = Net::new();
        let names = ["a", "b", "c"];
        for (i, n) in names.iter().enumerate() {
            net.add(Net::params(n, &[addr(i as u8 + 1)]));
        }
        let mut at: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
        let mut conns: BTreeMap<Flow, (MasqAddr, usize)> = BTreeMap::new();
        for step in 0..200 {
            let cl = client(next(4) as u8 + 1);
            match next(3) {
                0 => {
                    // move (or first attach)
                    let to = next(3) as usize;
                    let from = at.insert(cl, to);
                    net.attach(to, cl, "u");
                    if let Some(from) = from.filter(|f| *f != to) {
                        net.leave(from, cl);
                    }
                }
                _ => {
                    let Some(&i) = at.get(&cl) else { continue };
                    let f = flow(
                        if next(2) == 0 { Proto::Tcp } else { Proto::Udp },
                        cl,
                        1000 + next(6) as u16,
                        443,
                    );
                    let m = net.masq(i, f);
                    let (first, home) = *conns.entry(f).or_insert((m, i));
                    assert_eq!(m, first, "seed {seed} step {step}: {f:?} moved address");
                    assert_eq!(m.addr, addr(home as u8 + 1));
                }
            }
            net.tick(1);
            // Every HAM routes every connection to where its client is.
            for (f, (m, home)) in conns.clone() {
                let want = at[f.client.ip()];
                let v = net.recv(home, m);
                if want == home {
                    assert_eq!(v, InVerdict::Local(f), "seed {seed} step {step}");
                } else {
                    assert_eq!(
                        v,
                        InVerdict::Forward(names[want].into()),
                        "seed {seed} step {step}"
                    );
                }
            }
        }
        assert!(conns.len() > 10, "seed {seed}: {} connections", conns.len());
    }
}

/// Three nodes allocating on the same address, UDP connections coming and going (idle
/// expiry, reuse delay): no (address, port) is held by two connections, none is handed out
/// again within the reuse delay, the blocks of the nodes never overlap, and when every
/// port is taken the next flow is refused, not given a port in use.
#[test]
fn no_masquerading_address_is_handed_out_twice() {
    let mut net = Net::new();
    let shared = addr(9);
    for n in ["a", "b", "c"] {
        let mut p = Net::params(n, &[shared]);
        p.first_block = 0x10;
        p.last_block = 0x12; // three blocks in all: one each
        p.udp_idle_ms = 2_000;
        p.reuse_delay_ms = 3_000;
        net.add(p);
    }
    let mut handed: BTreeMap<MasqAddr, (Flow, u64)> = BTreeMap::new();
    let mut released_at: BTreeMap<MasqAddr, u64> = BTreeMap::new();
    let mut exhausted = 0;
    let mut reused = 0;
    let mut k = 0u32;
    for round in 0..40u64 {
        for i in 0..3 {
            let cl = client(i as u8 + 1);
            if round == 0 {
                net.attach(i, cl, "u");
            }
            for _ in 0..40 {
                k += 1;
                let f = flow(Proto::Udp, cl, (k % 60000) as u16 + 1024, 53);
                match net.send(i, f) {
                    OutVerdict::Rewrite(m) => {
                        if let Some((other, _)) = handed.get(&m) {
                            assert_eq!(*other, f, "{m:?} handed to two flows");
                        }
                        if let Some(r) = released_at.get(&m) {
                            reused += 1;
                            assert!(
                                net.now >= r + 3_000,
                                "{m:?} reused {} ms after its release",
                                net.now - r
                            );
                        }
                        handed.insert(m, (f, net.now));
                    }
                    OutVerdict::Drop(MasqDrop::PortsExhausted) => exhausted += 1,
                    other => panic!("{other:?}"),
                }
            }
        }
        net.tick(500);
        // What the store released: no longer handed out.
        let stored = net.stored();
        for (m, rec) in &stored {
            if let Some(at) = rec.released_ms {
                if handed.remove(m).is_some() {
                    released_at.insert(*m, at);
                }
            }
        }
        for m in handed.keys() {
            assert!(stored.contains_key(m), "{m:?} handed out but not stored");
        }
    }
    assert!(exhausted > 0, "the test must fill the blocks");
    assert!(
        reused > 0,
        "and hand ports out again after their quarantine"
    );
    let mut owners = BTreeSet::new();
    for i in 0..3 {
        for b in net.n(i).owned_blocks() {
            assert!(owners.insert(b), "block {b:?} owned twice");
        }
        assert_eq!(net.n(i).owned_blocks().len(), 1);
    }
    assert!(!released_at.is_empty(), "expiry must release some");
    let freed: u64 = (0..3).map(|i| net.n(i).stats.freed).sum();
    assert!(freed > 0, "and the quarantine must end for some");
}

/// A UDP connection idle past its timeout is released by its FAM; its port stays
/// quarantined (an answer to it is dropped, no new connection gets it) until the reuse delay
/// has passed, then the HAM deletes it.
#[test]
fn udp_idle_expiry_then_quarantine_then_reuse() {
    let mut net = Net::new();
    let mut p = Net::params("a", &[addr(1)]);
    p.first_block = 0x20;
    p.last_block = 0x20;
    net.add(p);
    let cl = client(1);
    net.attach(0, cl, "u");
    let f = flow(Proto::Udp, cl, 5000, 53);
    let m = net.masq(0, f);
    net.tick(20_000);
    assert_eq!(net.masq(0, f), m, "activity keeps it");
    net.tick(29_000);
    assert_eq!(net.recv(0, m), InVerdict::Local(f));
    net.tick(30_100);
    // Idle 30 s as far as the node heard: parked (the data plane's entry removed, the
    // record kept), released only after one more silent timeout.
    assert!(net.outputs[0].contains(&Output::FamRemove { flow: f, masq: m }));
    assert!(
        net.stored()[&m].released_ms.is_none(),
        "parked, not released"
    );
    net.outputs[0].clear();
    net.tick(30_100);
    let rec = net.stored()[&m].clone();
    assert!(rec.released_ms.is_some(), "idle 2 x 30 s: released");
    assert_eq!(rec.fam, None);
    assert_eq!(net.recv(0, m), InVerdict::Drop(MasqDrop::Released));
    assert!(net.outputs[0].contains(&Output::FamRemove { flow: f, masq: m }));
    // The 255 other ports of the block, then nothing: the quarantined one is not handed out.
    let mut got = BTreeSet::new();
    for i in 0..255u16 {
        got.insert(net.masq(0, flow(Proto::Udp, cl, 6000 + i, 53)));
    }
    assert!(!got.contains(&m));
    let next = flow(Proto::Udp, cl, 7000, 53);
    assert_eq!(
        net.send(0, next),
        OutVerdict::Drop(MasqDrop::PortsExhausted)
    );
    // The same flow again is a new connection too: no port either.
    assert_eq!(net.send(0, f), OutVerdict::Drop(MasqDrop::PortsExhausted));
    net.tick(60_100);
    assert!(
        !net.stored().contains_key(&m),
        "freed after the reuse delay"
    );
    // (the others expired meanwhile too; the first free port is handed out again)
    let again = net.masq(0, next);
    assert_eq!(again.addr, addr(1));
    assert!(net.n(0).stats.freed > 0);
}

/// The data plane rewrites a flow's packets without telling the node: at the idle timeout
/// the FAM removes the data plane's entry (parks it) instead of releasing the connection;
/// the flow's next packet misses, asks, and gets the same address back; only a flow silent
/// for one more timeout is released. (A UDP stream longer than the timeout used to be
/// released while it ran and continued from a new address.)
#[test]
fn a_flow_the_data_plane_carries_keeps_its_address_past_the_idle_timeout() {
    let mut net = Net::new();
    let a = net.add(Net::params("a", &[addr(1)]));
    let b = net.add(Net::params("b", &[addr(2)]));
    let cl = client(1);
    net.attach(a, cl, "u");
    let f = flow(Proto::Udp, cl, 5000, 5003);
    let m = net.masq(a, f);
    // At b (a move): b is its FAM, a its HAM.
    net.attach(b, cl, "u");
    net.leave(a, cl);
    assert_eq!(net.masq(b, f), m);
    for round in 0..3 {
        net.outputs[b].clear();
        // The data plane carries the flow for a timeout; nothing reaches the node.
        net.tick(30_100);
        assert!(
            net.outputs[b].contains(&Output::FamRemove { flow: f, masq: m }),
            "round {round}: parked at the timeout: {:?}",
            net.outputs[b]
        );
        let rec = net.stored()[&m].clone();
        assert!(rec.released_ms.is_none(), "round {round}: not released");
        assert_eq!(rec.fam.as_deref(), Some("b"));
        // Its next packet misses in the data plane and asks: the same address.
        assert_eq!(net.send(b, f), OutVerdict::Rewrite(m), "round {round}");
        net.tick(1_000);
        assert!(net.stored()[&m].released_ms.is_none());
    }
    // An answer to the parked flow at its HAM is still forwarded to b meanwhile.
    net.tick(30_100);
    assert_eq!(net.recv(a, m), InVerdict::Forward("b".into()));
    // Silent for one more timeout: released.
    net.tick(30_100);
    let rec = net.stored()[&m].clone();
    assert!(rec.released_ms.is_some(), "silent 2 x 30 s: released");
    assert_eq!(rec.fam, None);
    assert_eq!(net.recv(a, m), InVerdict::Drop(MasqDrop::Released));
}

/// The HAM of two connections fails while one client is at b and another at c: b (the
/// successor of a) takes over a's block and address, reads its connections, and routes the
/// answers to where the clients are; the clients keep their addresses; new connections do
/// not collide with the adopted ones.
#[test]
fn a_failed_ham_s_connections_are_taken_over() {
    let mut net = Net::new();
    let a = net.add(Net::params("a", &[addr(1)]));
    let b = net.add(Net::params("b", &[addr(2)]));
    let c = net.add(Net::params("c", &[addr(3)]));
    let (c1, c2) = (client(1), client(2));
    net.attach(a, c1, "u1");
    net.attach(a, c2, "u2");
    let f1 = flow(Proto::Tcp, c1, 40000, 443);
    let f2 = flow(Proto::Udp, c2, 5000, 53);
    let m1 = net.masq(a, f1);
    let m2 = net.masq(a, f2);
    net.attach(b, c1, "u1");
    net.leave(a, c1);
    net.attach(c, c2, "u2");
    net.leave(a, c2);
    assert_eq!(net.recv(a, m1), InVerdict::Forward("b".into()));
    assert_eq!(net.recv(a, m2), InVerdict::Forward("c".into()));

    net.kill(a);
    // Before the lease runs out nothing moves.
    net.tick(2_000);
    assert!(net.n(b).owned_blocks().iter().all(|bl| bl.addr == addr(2)));
    net.tick(2_000); // ttl 3 s
    assert!(!net.n(b).live_nodes().any(|n| n == "a"));
    assert!(
        net.outputs[b].contains(&Output::Serve(addr(1))),
        "b takes a's address over"
    );
    assert!(!net.outputs[c].contains(&Output::Serve(addr(1))));
    assert_eq!(net.n(b).stats.blocks_taken, 1);
    assert_eq!(net.recv(b, m1), InVerdict::Local(f1));
    assert_eq!(net.recv(b, m2), InVerdict::Forward("c".into()));
    assert_eq!(net.masq(b, f1), m1);
    assert_eq!(net.masq(c, f2), m2);
    // c moves to b and back: b (the new HAM) follows.
    net.attach(b, c2, "u2");
    net.leave(c, c2);
    assert_eq!(net.recv(b, m2), InVerdict::Local(f2));
    // b's new connections avoid the adopted ones.
    for p in 0..600u16 {
        let m = net.masq(b, flow(Proto::Tcp, c1, 10000 + p, 80));
        assert_ne!(m, m1);
    }
    // Two takers cannot both win: c saw the same death and did not take anything.
    assert_eq!(net.n(c).stats.blocks_taken, 0);
}

/// A block record can reach a node before its owner's record does (two watches, answered
/// on their own schedules): the owner is then live, and its block is not an orphan.
#[test]
fn a_block_seen_before_its_owners_record_is_not_taken_over() {
    let mut net = Net::new();
    // b is up first; its watch of the nodes then lags behind its watch of the blocks.
    let b = net.add(Net::params("b", &[addr(2)]));
    net.hub.borrow_mut().lag = Some((b, b"nodes/".to_vec()));
    let a = net.add(Net::params("a", &[addr(1)]));
    net.attach(a, client(1), "u1");
    let f = flow(Proto::Tcp, client(1), 40000, 443);
    let m = net.masq(a, f);
    assert_eq!(m.addr, addr(1));
    net.tick(500);
    assert!(
        !net.n(b).live_nodes().any(|n| n == "a"),
        "the test's lag holds a's record back from b"
    );
    assert!(
        net.n(b).owned_blocks().iter().all(|bl| bl.addr == addr(2)),
        "b took a block of a live node: {:?}",
        net.outputs[b]
    );
    assert!(!net.outputs[b].contains(&Output::Serve(addr(1))));
    assert!(!net.outputs[a].contains(&Output::Unserve(addr(1))));

    // The watch catches up: b sees a, and a's block stays a's.
    net.hub.borrow_mut().release_lag();
    net.tick(500);
    assert!(net.n(b).live_nodes().any(|n| n == "a"));
    assert_eq!(net.n(b).stats.blocks_taken, 0);
    assert_eq!(net.recv(a, m), InVerdict::Local(f));

    // A real death is still taken over once its record goes (ttl 3 s): the client, moved
    // to b first, keeps its connection.
    net.attach(b, client(1), "u1");
    net.leave(a, client(1));
    assert_eq!(net.recv(a, m), InVerdict::Forward("b".into()));
    net.kill(a);
    net.tick(4_000);
    assert!(net.outputs[b].contains(&Output::Serve(addr(1))));
    assert_eq!(net.n(b).stats.blocks_taken, 1);
    assert_eq!(net.recv(b, m), InVerdict::Local(f));
}

#[test]
fn the_successor_is_the_next_live_name() {
    let live: BTreeSet<String> = ["a", "c", "e"].iter().map(|s| s.to_string()).collect();
    assert_eq!(successor(&live, "b").as_deref(), Some("c"));
    assert_eq!(successor(&live, "e").as_deref(), Some("a"));
    assert_eq!(successor(&live, "z").as_deref(), Some("a"));
    let one: BTreeSet<String> = ["a".to_string()].into();
    assert_eq!(successor(&one, "a"), None);
}

/// alice and bob roam a -> b: each gets its own rules on both nodes; a policy change applies
/// to an established flow from its next packet.
#[test]
fn per_user_policy_follows_the_user_to_every_node() {
    let policy = |alice_https: &str| {
        let yaml = format!(
            "default: deny\nusers:\n  alice@example.org:\n    rules:\n      - {{ dst: 192.0.2.0/24, proto: tcp, ports: 443, action: {alice_https} }}\n  bob@example.org:\n    rules:\n      - {{ dst: 192.0.2.80/32, proto: udp, ports: 53, action: allow }}\n"
        );
        let p: AccessPolicy = serde_saphyr::from_str(&yaml).unwrap();
        Arc::new(p.compile().unwrap())
    };
    let mut net = Net::new();
    net.access = policy("allow");
    let a = net.add(Net::params("a", &[addr(1)]));
    let b = net.add(Net::params("b", &[addr(2)]));
    let (alice, bob) = (client(1), client(2));
    let https = |c| flow(Proto::Tcp, c, 40000, 443);
    let dns = |c| flow(Proto::Udp, c, 5000, 53);
    let stranger = client(3);
    for node in [a, b] {
        net.attach(node, alice, "alice@example.org");
        net.attach(node, bob, "bob@example.org");
        net.attach(node, stranger, "mallory");
        assert!(matches!(
            net.send(node, https(alice)),
            OutVerdict::Rewrite(_)
        ));
        assert_eq!(
            net.send(node, dns(alice)),
            OutVerdict::Drop(MasqDrop::Denied)
        );
        assert!(matches!(net.send(node, dns(bob)), OutVerdict::Rewrite(_)));
        assert_eq!(
            net.send(node, https(bob)),
            OutVerdict::Drop(MasqDrop::Denied)
        );
        assert_eq!(
            net.send(node, https(stranger)),
            OutVerdict::Drop(MasqDrop::Denied)
        );
        // Without attaching there is no identity: refused.
        assert_eq!(
            net.send(node, https(client(9))),
            OutVerdict::Drop(MasqDrop::UnknownClient)
        );
        if node == a {
            net.leave(a, alice);
            net.leave(a, bob);
        }
    }
    // The rule changes: alice's established HTTPS flow at b is refused from the next packet.
    let t = policy("deny");
    net.n(b).set_access(t);
    assert_eq!(
        net.send(b, https(alice)),
        OutVerdict::Drop(MasqDrop::Denied)
    );
    assert_eq!(net.n(b).stats.drops["Denied"], 4);
}

/// A record that does not open (another cluster key) is counted and ignored, not believed.
#[test]
fn a_record_sealed_with_another_key_is_not_believed() {
    let mut net = Net::new();
    let a = net.add(Net::params("a", &[addr(1)]));
    let layout = records::MasqLayout::new(&Name::new("c1").unwrap());
    let forged = records::BlockRec {
        v: records::RECORD_VERSION,
        owner: "mallory".into(),
        epoch: 9,
    };
    let key = layout.key(&records::MasqKey::Block(BlockId {
        addr: addr(1),
        hi: 4,
    }));
    let other = Sealer::new(Zeroizing::new([0x99; 32]));
    let value = other.seal(&key, &records::encode(&forged)).unwrap();
    let mut txn = crate::cluster::store::Txn::default();
    txn.put(key, value, None);
    net.hub
        .borrow_mut()
        .mem
        .call(Request::Txn(txn), Duration::from_secs(1))
        .unwrap();
    net.tick(1);
    assert_eq!(net.n(a).stats.bad_records, 1);
    assert!(net.n(a).owned_blocks().is_empty());
    // Its claim of that block fails at the store; it takes the next one.
    net.attach(a, client(1), "u");
    let m = net.masq(a, flow(Proto::Tcp, client(1), 1, 2));
    assert_eq!(
        m.block(),
        BlockId {
            addr: addr(1),
            hi: 5
        }
    );
}

/// The store answers a millisecond later (as etcd does, a round trip and a quorum write):
/// a new flow waits for its commit, a client that shows up waits for its flows, one block
/// is claimed however many flows wait for it, and the HAM learns of the move by its watch.
#[test]
fn with_a_slow_store_packets_wait_for_the_answers_they_need() {
    let mut net = Net::new();
    net.hub.borrow_mut().slow = true;
    let a = net.add(Net::params("a", &[addr(1)]));
    let b = net.add(Net::params("b", &[addr(2)]));
    let cl = client(1);
    net.attach(a, cl, "u");
    let flows: Vec<Flow> = (0..5).map(|i| flow(Proto::Udp, cl, 5000 + i, 53)).collect();
    let now = net.now;
    assert_eq!(
        net.n(a).outbound(flows[0], now),
        OutVerdict::Hold,
        "the client's flows are not read yet"
    );
    net.tick(1);
    // All five ask before the store has answered anything.
    for f in &flows {
        let now = net.now;
        assert_eq!(net.n(a).outbound(*f, now), OutVerdict::Hold);
    }
    // The claim is answered, the block's read is not yet: still no second claim.
    net.tick(1);
    assert_eq!(net.n(a).stats.blocks_claimed, 1);
    let now = net.now;
    assert_eq!(net.n(a).outbound(flows[0], now), OutVerdict::Hold);
    let ms: Vec<MasqAddr> = flows.iter().map(|f| net.masq(a, *f)).collect();
    let distinct: BTreeSet<MasqAddr> = ms.iter().copied().collect();
    assert_eq!(distinct.len(), 5);
    assert_eq!(net.n(a).stats.blocks_claimed, 1, "one block for all");
    assert_eq!(net.n(a).owned_blocks().len(), 1);

    net.attach(b, cl, "u");
    net.leave(a, cl);
    let now = net.now;
    assert_eq!(
        net.n(b).outbound(flows[0], now),
        OutVerdict::Hold,
        "b has not read the client's flows yet"
    );
    for (f, m) in flows.iter().zip(&ms) {
        assert_eq!(net.masq(b, *f), *m);
    }
    assert_eq!(net.n(b).stats.blocks_claimed, 0, "b allocated nothing");
    net.tick(2);
    for (f, m) in flows.iter().zip(&ms) {
        assert_eq!(net.recv(a, *m), InVerdict::Forward("b".into()), "{f:?}");
    }
}

mod path {
    //! Real packets through the tables the coordinator's outputs build (`plane`) and ESP
    //! between the nodes: the client's connection, the server's view, the HAM's forward.
    use super::*;
    use crate::nat_coord::plane::{InPath, NodePlane};
    use pipeline::crypto::{AeadAlg, Backend, EspAlg};
    use pipeline::esp::sa::{build_inbound, build_outbound, OutboundSa, SaKeys, SaParams};
    use pipeline::ids::{SaId, Spi};
    use pipeline::masq::forward::{open_from_ham, seal_to_fam};
    use pipeline::port::mem::MemFrame;
    use pipeline::port::Frame;
    use pipeline::sad::Sad;
    use pipeline::spd::Prefix;
    use pipeline::wire::{ipv4, tcp, IpProtocol};
    use std::net::IpAddr;

    fn tcp_pkt(src: Ipv4Addr, sp: u16, dst: Ipv4Addr, dp: u16, payload: &[u8]) -> Vec<u8> {
        let r = tcp::Repr {
            src_port: sp,
            dst_port: dp,
            seq_number: 1,
            ack_number: 1,
            flags: tcp::Flags::default(),
            window_len: 1000,
            payload_len: payload.len(),
        };
        let mut l4 = vec![0u8; r.buffer_len()];
        let mut t = tcp::Packet::new_unchecked(&mut l4[..]);
        r.emit(&mut t);
        t.payload_mut().copy_from_slice(payload);
        t.fill_checksum(&IpAddr::V4(src), &IpAddr::V4(dst));
        let ip = ipv4::Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: l4.len(),
            hop_limit: 64,
            dscp: 0,
            ecn: 0,
            ident: 1,
            dont_frag: true,
        };
        let mut b = vec![0u8; ip.buffer_len()];
        ip.emit(&mut ipv4::Packet::new_unchecked(&mut b[..]));
        b[20..].copy_from_slice(&l4);
        b
    }

    /// Source and destination of a packet whose checksums, recomputed, are right.
    fn check(pkt: &[u8]) -> (SocketAddrV4, SocketAddrV4) {
        let p = ipv4::Packet::new_checked(pkt).unwrap();
        assert!(p.verify_checksum());
        let t = tcp::Packet::new_checked(&pkt[20..]).unwrap();
        assert!(t.verify_checksum(&IpAddr::V4(p.src_addr()), &IpAddr::V4(p.dst_addr())));
        (
            SocketAddrV4::new(p.src_addr(), t.src_port()),
            SocketAddrV4::new(p.dst_addr(), t.dst_port()),
        )
    }

    fn node_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(203, 0, 113, i as u8 + 1)
    }

    fn sa(i: usize, j: usize) -> SaParams {
        let alg = EspAlg::Aead(AeadAlg::AesGcm128);
        let keymat: Vec<u8> = (0..alg.keymat_len())
            .map(|k| (k as u8) ^ ((i * 16 + j) as u8))
            .collect();
        let spi = 0xb000_0000 | ((i as u32) << 4) | j as u32;
        SaParams {
            id: SaId(spi),
            spi: Spi(spi),
            keys: SaKeys::from_keymat(alg, &keymat).unwrap(),
            esn: true,
            replay_window: 64,
            local: IpAddr::V4(node_ip(i)),
            remote: IpAddr::V4(node_ip(j)),
            encap: None,
            local_ts: "0.0.0.0/0".parse::<Prefix>().unwrap(),
            remote_ts: "0.0.0.0/0".parse::<Prefix>().unwrap(),
            outer_ttl: 64,
            resume: Default::default(),
            checkpoint: None,
            lifetime: Default::default(),
        }
    }

    fn backend() -> Backend {
        [Backend::IpsecMb, Backend::Ring]
            .into_iter()
            .find(|b| pipeline::crypto::available(*b))
            .unwrap()
    }

    struct Rig {
        net: Net,
        planes: Vec<NodePlane>,
        out: Vec<Vec<Option<OutboundSa>>>,
        sads: Vec<Sad>,
        alive: Vec<bool>,
        /// What the server saw: the connection's source.
        server_saw: BTreeSet<SocketAddrV4>,
        forwarded: usize,
    }

    impl Rig {
        fn sync(&mut self) {
            for i in 0..self.planes.len() {
                for o in self.net.outputs[i].drain(..) {
                    self.planes[i].apply(&o);
                }
            }
        }

        /// The client at node `i` sends; the server gets it. Returns the source it saw.
        fn client_sends(&mut self, i: usize, f: Flow) -> SocketAddrV4 {
            let mut pkt = tcp_pkt(
                *f.client.ip(),
                f.client.port(),
                *f.server.ip(),
                f.server.port(),
                b"up",
            );
            if self.planes[i].fam.outbound(&mut pkt).is_err() {
                // A miss: the coordinator decides, its outputs fill the table.
                self.net.masq(i, f);
                self.sync();
                self.planes[i].fam.outbound(&mut pkt).unwrap();
            }
            let (src, dst) = check(&pkt);
            assert_eq!(dst, f.server);
            self.server_saw.insert(src);
            src
        }

        /// The server answers `to`; the node holding the address (the router's choice: the
        /// live node that serves it) delivers it to the client directly or through the FAM.
        /// Returns the node that delivered it.
        fn server_answers(&mut self, to: SocketAddrV4, f: Flow) -> usize {
            let h = (0..self.planes.len())
                .find(|i| self.alive[*i] && self.planes[*i].serves.contains(to.ip()))
                .expect("a live node holds the address");
            let mut pkt = tcp_pkt(
                *f.server.ip(),
                f.server.port(),
                *to.ip(),
                to.port(),
                b"down",
            );
            let mut path = self.planes[h].inbound(&mut pkt);
            if let InPath::Miss(_) = path {
                let m = MasqAddr {
                    proto: f.proto,
                    addr: *to.ip(),
                    port: to.port(),
                };
                let _ = self.net.recv(h, m);
                self.sync();
                path = self.planes[h].inbound(&mut pkt);
            }
            match path {
                InPath::Deliver => {
                    assert_eq!(check(&pkt), (f.server, f.client));
                    h
                }
                InPath::Forward(j) => {
                    let j = usize::from(j);
                    let mut frame = MemFrame::from_bytes(&pkt).unwrap();
                    seal_to_fam(self.out[h][j].as_mut().unwrap(), &mut frame).unwrap();
                    let outer = ipv4::Packet::new_checked(frame.data()).unwrap();
                    assert_eq!(outer.next_header(), IpProtocol::Esp);
                    assert_eq!(
                        (outer.src_addr(), outer.dst_addr()),
                        (node_ip(h), node_ip(j))
                    );
                    let mut at_j = MemFrame::from_bytes(frame.data()).unwrap();
                    open_from_ham(&mut self.sads[j], &mut at_j, self.net.now).unwrap();
                    let mut inner = at_j.data().to_vec();
                    assert_eq!(
                        self.planes[j].inbound(&mut inner),
                        InPath::Deliver,
                        "forwarded {h} -> {j}: {:?}",
                        self.planes[j].fam
                    );
                    assert_eq!(check(&inner), (f.server, f.client));
                    self.forwarded += 1;
                    j
                }
                InPath::Miss(e) => panic!("answer to {to} dropped at node {h}: {e:?}"),
            }
        }
    }

    /// A TCP connection from a client that moves a -> b -> c, then its HAM (a) fails, then it
    /// moves back to b: the server always sees the same source, every answer reaches the
    /// client (forwarded in ESP by the HAM while the client is elsewhere), checksums right.
    #[test]
    fn packets_follow_the_client_and_the_server_sees_one_source() {
        let mut net = Net::new();
        let names = ["a", "b", "c"];
        for (i, n) in names.iter().enumerate() {
            net.add(Net::params(n, &[addr(i as u8 + 1)]));
        }
        let mut planes = Vec::new();
        let mut out = Vec::new();
        let mut sads = Vec::new();
        for i in 0..3 {
            let mut p = NodePlane::default();
            let mut row = Vec::new();
            let mut sad = Sad::with_capacity(8, 9);
            for (j, n) in names.iter().enumerate() {
                if i == j {
                    row.push(None);
                    continue;
                }
                p.links.insert(n.to_string(), j as u16);
                row.push(Some(build_outbound(backend(), &sa(i, j)).unwrap()));
                // The inbound half of j -> i.
                let mut back = sa(j, i);
                std::mem::swap(&mut back.local, &mut back.remote);
                sad.insert_inbound(build_inbound(backend(), &back).unwrap());
            }
            planes.push(p);
            out.push(row);
            sads.push(sad);
        }
        let mut rig = Rig {
            net,
            planes,
            out,
            sads,
            alive: vec![true; 3],
            server_saw: BTreeSet::new(),
            forwarded: 0,
        };
        rig.sync();
        let cl = client(7);
        let f = flow(Proto::Tcp, cl, 40000, 443);
        rig.net.attach(0, cl, "alice");
        rig.sync();
        let src = rig.client_sends(0, f);
        assert_eq!(rig.server_answers(src, f), 0);
        for (from, to) in [(0, 1), (1, 2)] {
            rig.net.tick(10);
            rig.net.attach(to, cl, "alice");
            rig.net.leave(from, cl);
            // The HAM hears of the registration by its watch on its next turn (the window
            // in which it still forwards to the old FAM: `docs/masq.md`).
            rig.net.tick(1);
            rig.sync();
            for _ in 0..3 {
                assert_eq!(rig.client_sends(to, f), src);
                assert_eq!(rig.server_answers(src, f), to, "delivered by the FAM");
            }
        }
        // a fails; b takes its block and address over after the lease.
        rig.alive[0] = false;
        rig.net.kill(0);
        rig.net.tick(4_000);
        rig.sync();
        assert!(rig.planes[1].serves.contains(src.ip()));
        assert_eq!(rig.client_sends(2, f), src);
        assert_eq!(rig.server_answers(src, f), 2, "b forwards to c");
        rig.net.attach(1, cl, "alice");
        rig.net.leave(2, cl);
        rig.net.tick(1);
        rig.sync();
        assert_eq!(rig.client_sends(1, f), src);
        assert_eq!(rig.server_answers(src, f), 1, "b is HAM and FAM now");
        assert_eq!(rig.server_saw.len(), 1, "one source: {:?}", rig.server_saw);
        assert_eq!(rig.forwarded, 3 + 3 + 1);
    }
}

/// A HAM that dies is noticed by its heartbeats' silence: its successor revokes its lease
/// and takes its block and address over within a few hundred milliseconds, long before the
/// lease (3 s) would have run out; the other node does nothing.
#[test]
fn a_silent_ham_is_revoked_by_its_successor_long_before_its_lease_ends() {
    let mut net = Net::new();
    let a = net.add(Net::params_alive("a", &[addr(1)]));
    let b = net.add(Net::params_alive("b", &[addr(2)]));
    let c = net.add(Net::params_alive("c", &[addr(3)]));
    let c1 = client(1);
    net.attach(a, c1, "u1");
    let f1 = flow(Proto::Tcp, c1, 40000, 443);
    let m1 = net.masq(a, f1);
    net.attach(c, c1, "u1");
    net.leave(a, c1);
    // Everyone hears everyone; nobody is judged while they talk.
    net.tick(1_000);
    for i in [a, b, c] {
        assert!(net.n(i).stats.heartbeats_in >= 18, "{:?}", net.n(i).stats);
        assert_eq!(net.n(i).stats.peers_revoked, 0);
        assert_eq!(net.n(i).stats.heartbeats_bad, 0);
    }
    net.kill(a);
    let died = net.now;
    let mut taken_after = None;
    for _ in 0..100 {
        net.tick(10);
        if net.outputs[b].contains(&Output::Serve(addr(1))) {
            taken_after = Some(net.now - died);
            break;
        }
    }
    let taken_after = taken_after.expect("b took a's address over");
    assert!(
        (300..=500).contains(&taken_after),
        "taken over {taken_after} ms after the death (dead after 300 ms of silence)"
    );
    assert_eq!(net.n(b).stats.peers_revoked, 1);
    assert_eq!(
        net.n(c).stats.peers_revoked,
        0,
        "only the successor revokes"
    );
    assert_eq!(net.n(b).stats.blocks_taken, 1);
    assert!(!net.outputs[c].contains(&Output::Serve(addr(1))));
    // The connection goes on through its new HAM.
    assert_eq!(net.recv(b, m1), InVerdict::Forward("c".into()));
    assert_eq!(net.masq(c, f1), m1);
}

/// A node whose heartbeats do not reach its successor (it is alive: a partition) loses its
/// lease; it withdraws its address at once, registers again under a new lease and is not
/// judged again until its heartbeats are heard; the block went to the successor, and no
/// (address, port) is handed out twice.
#[test]
fn a_node_suspected_while_alive_withdraws_its_address_and_registers_again() {
    let mut net = Net::new();
    let a = net.add(Net::params_alive("a", &[addr(1)]));
    let b = net.add(Net::params_alive("b", &[addr(2)]));
    let c1 = client(1);
    net.attach(a, c1, "u1");
    let f1 = flow(Proto::Udp, c1, 5000, 53);
    let m1 = net.masq(a, f1);
    net.tick(500);
    net.outputs[a].clear();
    net.cut.insert((a, b));
    net.tick(1_000);
    assert_eq!(net.n(b).stats.peers_revoked, 1);
    let st = net.n(a).stats.clone();
    assert_eq!(st.lease_lost, 1, "{st:?}");
    assert!(
        net.outputs[a].contains(&Output::Unserve(addr(1))),
        "a withdrew its address: {:?}",
        net.outputs[a]
    );
    assert!(net.outputs[b].contains(&Output::Serve(addr(1))));
    assert!(net.n(a).is_ready(), "a registered again");
    assert!(net.n(b).live_nodes().any(|n| n == "a"));
    // a is not served twice: only b answers for the block it took.
    let a_serves_again = net.outputs[a]
        .iter()
        .rposition(|o| *o == Output::Serve(addr(1)));
    let a_unserved = net.outputs[a]
        .iter()
        .rposition(|o| *o == Output::Unserve(addr(1)));
    assert!(
        a_serves_again.is_none_or(|s| a_unserved.is_some_and(|u| u > s))
            || net.n(a).owned_blocks().iter().any(|bl| bl.addr == addr(1)),
        "a serves addr(1) again only from a block of its own: {:?}",
        net.outputs[a]
    );
    let b_blocks = net.n(b).owned_blocks();
    assert!(net
        .n(a)
        .owned_blocks()
        .iter()
        .all(|bl| !b_blocks.contains(bl)));
    // Still cut: not judged again (never heard under its new lease).
    net.tick(2_000);
    assert_eq!(net.n(b).stats.peers_revoked, 1);
    assert_eq!(net.n(a).stats.lease_lost, 1);
    // b is the HAM now; a's new connections come from another block.
    assert_eq!(net.recv(b, m1), InVerdict::Forward("a".into()));
    for p in 0..300u16 {
        let m = net.masq(a, flow(Proto::Tcp, c1, 20000 + p, 80));
        assert_ne!(m, m1);
        let hi = (m.port >> 8) as u8;
        assert!(
            !b_blocks.contains(&BlockId { addr: m.addr, hi }),
            "{m:?} is in a block of b's"
        );
    }
}

/// A lone node whose lease went (revoked from outside) competes for its own blocks again and
/// serves them again: withdrawn first, then served.
#[test]
fn a_lone_node_that_lost_its_lease_takes_its_blocks_back() {
    let mut net = Net::new();
    let a = net.add(Net::params_alive("a", &[addr(1)]));
    let c1 = client(1);
    net.attach(a, c1, "u1");
    let f1 = flow(Proto::Udp, c1, 5000, 53);
    let m1 = net.masq(a, f1);
    net.outputs[a].clear();
    let lease = {
        let layout = records::MasqLayout::new(&Name::new("c1").unwrap());
        let mut h = net.hub.borrow_mut();
        let r = h
            .mem
            .call(
                Request::Range {
                    prefix: layout.prefix("nodes/"),
                },
                Duration::from_secs(1),
            )
            .unwrap();
        let Reply::Range { kvs, .. } = r else {
            panic!("{r:?}")
        };
        kvs[0].lease
    };
    net.hub
        .borrow_mut()
        .mem
        .call(
            Request::LeaseRevoke(crate::cluster::store::LeaseId(lease)),
            Duration::from_secs(1),
        )
        .unwrap();
    net.tick(200);
    assert_eq!(net.n(a).stats.lease_lost, 1);
    let o = &net.outputs[a];
    let u = o.iter().position(|x| *x == Output::Unserve(addr(1)));
    let s = o.iter().position(|x| *x == Output::Serve(addr(1)));
    assert!(matches!((u, s), (Some(u), Some(s)) if u < s), "{o:?}");
    assert_eq!(net.masq(a, f1), m1);
}

/// The data plane forwards and rewrites without telling the nodes, so a busy connection looks
/// idle at its HAM. A move more than a timeout after its first packet leaves it without a FAM
/// for a moment: the HAM must not take that for the end of an idle connection (it released
/// a minute-long UDP stream this way in the namespace test, which then went dark).
#[test]
fn a_move_long_after_a_connection_began_does_not_release_it_at_its_ham() {
    let mut net = Net::new();
    let a = net.add(Net::params("a", &[addr(1)]));
    let b = net.add(Net::params("b", &[addr(2)]));
    let c = net.add(Net::params("c", &[addr(3)]));
    let cl = client(1);
    net.attach(a, cl, "u");
    let f = flow(Proto::Udp, cl, 5000, 53);
    let m = net.masq(a, f);
    net.attach(b, cl, "u");
    net.leave(a, cl);
    assert_eq!(net.masq(b, f), m);
    // 40 s of traffic the nodes never hear of (b parks the flow at 30 s; its next packet
    // installs it again).
    net.tick(40_000);
    assert_eq!(net.masq(b, f), m);
    // The move: b lets go 200 ms before c registers (etcd's round trips; a move's order).
    net.leave(b, cl);
    net.tick(200);
    net.attach(c, cl, "u");
    net.tick(50);
    let rec = net.stored()[&m].clone();
    assert_eq!(rec.released_ms, None, "released at the move: {rec:?}");
    assert_eq!(rec.fam.as_deref(), Some("c"));
    assert_eq!(net.masq(c, f), m);
    assert_eq!(net.recv(a, m), InVerdict::Forward("c".into()));
    // A client that really left (no FAM) is released a timeout later.
    net.leave(c, cl);
    net.tick(29_000);
    assert_eq!(net.stored()[&m].released_ms, None);
    net.tick(2_000);
    assert!(net.stored()[&m].released_ms.is_some());
}
