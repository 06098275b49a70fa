//! A crypto node, three edges and road-warrior clients on one virtual clock.
//!
//! The clients (bare `ike::Endpoint`s) all talk to one public address; a router in front of
//! the edges picks, per datagram, which edge gets it (the test decides). Each edge is an
//! [`EdgeForwarder`] over a simulated data plane (`crate::testing::SimLink`, acknowledging
//! updates after `ack_delay`); the edge <-> crypto node channel carries the encoded messages
//! (so the codec is on the path) with a delay. Every datagram an edge's data plane sends is
//! recorded with what that data plane held at that moment.

use std::collections::{BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ike::Instant;
use proto::{Datagram, Direction, Event as DpEvent, SaId, Spi, Update};

use super::*;
use crate::config::ike::IkeYaml;
use crate::core::ControlCore;
use crate::repo::SaRepository;
use crate::testing::SimLink;

#[path = "tests_restart.rs"]
mod restart;

#[path = "tests_filter.rs"]
mod filter;

const PUBLIC: &str = "192.0.2.1";
const NODE: &str = "connections:
  - { name: rw, local_id: gw.test, remote_id: rw.test, psk: \"cluster-test-psk\",
      local_ts: [10.9.0.0/24], pool: 10.99.0.0/24 }
";
const CLIENT: &str = "connections:
  - { name: rw, local_id: rw.test, remote_id: gw.test, psk: \"cluster-test-psk\",
      local_ts: [0.0.0.0/0], remote_ts: [10.9.0.0/24], request_vip: true }
";

const IKE_SA_INIT: u8 = 34;
const IKE_AUTH: u8 = 35;

fn exchange(payload: &[u8]) -> (u8, bool) {
    let t = payload.get(18).copied().unwrap_or(0);
    let response = payload.get(19).is_some_and(|f| f & 0x20 != 0);
    (t, response)
}

struct Edge {
    fwd: EdgeForwarder,
    link: SimLink,
    /// The channel is up (both ends know).
    up: bool,
}

struct Client {
    endpoint: ike::Endpoint,
    addr: IpAddr,
    events: Vec<ike::Event>,
}

/// One datagram an edge's data plane sent, and what it held then.
#[derive(Debug)]
struct Sent {
    at: Instant,
    edge: usize,
    d: Datagram,
    inbound: BTreeSet<Spi>,
    outbound: BTreeSet<Spi>,
}

type Router = Box<dyn FnMut(IpAddr, &Datagram) -> usize>;

struct Cluster {
    now: Instant,
    node: CryptoNode,
    edges: Vec<Edge>,
    clients: Vec<Client>,
    router: Router,
    /// (due, edge index, bytes): edge -> node and node -> edge.
    up: VecDeque<(Instant, usize, Vec<u8>)>,
    down: VecDeque<(Instant, usize, Vec<u8>)>,
    delay: Duration,
    sent: Vec<Sent>,
    delivered: usize,
    traffic: Traffic,
}

/// ESP of the clients' flows on the virtual clock (`Cluster::run_traffic`): each client's
/// ESP reaches the edge `at[client]` names (the router's path), which delivers it if its
/// data plane holds the inbound SA and otherwise drops it and reports the unknown SPI (at
/// most once per `UNKNOWN_EVERY` per edge, as the data plane does); every edge whose data
/// plane holds a client's outbound SA sends `out_per_ms` packets a millisecond on it (the
/// old edge too, until its delete is applied, or for ever when it is cut off) and reports
/// checkpoints. Every (SPI, sequence number) sent is kept for the duplicate audit.
#[derive(Default)]
struct Traffic {
    at: Vec<usize>,
    /// Edges that are gone (killed): they neither receive nor send.
    dead: Vec<bool>,
    in_per_ms: u64,
    out_per_ms: u64,
    delivered: Vec<u64>,
    lost: Vec<u64>,
    /// The last sequence number each client sent on its inbound SA (ours).
    in_seq: Vec<u64>,
    last_unknown: Vec<Option<Instant>>,
    /// (edge, SPI, sequence number) of every outbound packet, in order.
    wire: Vec<(usize, Spi, u64)>,
    /// The LAN's route for each client's virtual IP: None, the crypto node's designation as
    /// it stands (a routing that follows at once); Some(e), edge e (a routing that lags).
    lan_at: Vec<Option<usize>>,
    /// The LAN reaches every edge that holds the client's outbound SA (the old model: an
    /// edge cut off from the crypto node goes on sealing).
    lan_every_holder: bool,
    /// LAN -> client packets that reached an edge without the client's host binding or
    /// outbound SA (dropped there), and at the client those its replay window refused.
    back_lost: Vec<u64>,
    back_refused: Vec<u64>,
    /// The client's replay window on its inbound SA (ours outbound): top and the numbers
    /// accepted within `BACK_WINDOW` of it.
    back_seen: Vec<BTreeSet<u64>>,
    /// Each edge's way to the clients (its data plane's queue and the path after it): an
    /// edge that lags behind another delivers what it sealed before a move after what the
    /// other sealed after it, unless the new edge holds its first packets (`Resume::hold_us`).
    edge_delay: Vec<Duration>,
    /// LAN -> client packets on their way: (arrival, order sealed, client, SPI, number).
    in_flight: BTreeSet<(Instant, u64, usize, Spi, u64)>,
    sealed_n: u64,
}

/// The client's replay window (packets) in the LAN -> client audit.
const BACK_WINDOW: u64 = 64;

const UNKNOWN_EVERY: Duration = Duration::from_millis(10);
const CHECKPOINT_EVERY_MS: u64 = 10;

impl Cluster {
    fn new(edges: usize, clients: usize) -> Cluster {
        let p = Path::new("node.yaml");
        let conns = crate::config::parse::<IkeYaml>(p, NODE)
            .unwrap()
            .validate(p, "ike")
            .unwrap();
        let mut core = ControlCore::for_cluster_node(
            conns,
            SaRepository::new(Vec::new(), 64),
            [7; 32],
            PUBLIC.parse().unwrap(),
            4,
            5,
        )
        .unwrap();
        core.set_quiet();
        let mut c = Cluster {
            now: Instant::ZERO,
            node: CryptoNode::new(core),
            edges: Vec::new(),
            clients: Vec::new(),
            router: Box::new(|_, _| 0),
            up: VecDeque::new(),
            down: VecDeque::new(),
            delay: Duration::from_millis(2),
            sent: Vec::new(),
            delivered: 0,
            traffic: Traffic::default(),
        };
        c.traffic.dead = vec![false; edges];
        c.traffic.last_unknown = vec![None; edges];
        c.traffic.at = vec![0; clients];
        c.traffic.delivered = vec![0; clients];
        c.traffic.lost = vec![0; clients];
        c.traffic.in_seq = vec![0; clients];
        c.traffic.lan_at = vec![None; clients];
        c.traffic.back_lost = vec![0; clients];
        c.traffic.back_refused = vec![0; clients];
        c.traffic.back_seen = vec![BTreeSet::new(); clients];
        c.traffic.edge_delay = vec![Duration::ZERO; edges];
        for i in 0..edges {
            let mut link = SimLink::new(1);
            link.ack_delay = Duration::from_millis(5);
            c.edges.push(Edge {
                fwd: {
                    let mut f = EdgeForwarder::new(i as EdgeId, 0x1000 + i as u64);
                    f.track_clients(true);
                    f
                },
                link,
                up: false,
            });
            c.connect(i);
        }
        let pc = Path::new("client.yaml");
        let conns = crate::config::parse::<IkeYaml>(pc, CLIENT)
            .unwrap()
            .validate(pc, "ike")
            .unwrap();
        for i in 0..clients {
            c.clients.push(Client {
                endpoint: ike::Endpoint::new(
                    crate::config::ike::endpoint_config(&conns),
                    [0x80 | i as u8; 32],
                ),
                addr: format!("198.51.100.{}", 10 + i).parse().unwrap(),
                events: Vec::new(),
            });
        }
        c.settle();
        c
    }

    fn connect(&mut self, i: usize) {
        let e = &mut self.edges[i];
        e.up = true;
        self.node.edge_up(i as EdgeId);
        e.fwd.connected();
    }

    fn disconnect(&mut self, i: usize) {
        self.edges[i].up = false;
        self.edges[i].fwd.disconnected();
        self.node.edge_down(i as EdgeId);
        self.up.retain(|(_, e, _)| *e != i);
        self.down.retain(|(_, e, _)| *e != i);
    }

    /// Client `c`'s address changes to `to`; it tells the gateway by MOBIKE.
    fn roam(&mut self, c: usize, to: IpAddr) {
        let now = self.now;
        let cl = &mut self.clients[c];
        let ike = cl.endpoint.list()[0].0;
        cl.addr = to;
        cl.endpoint.roam(now, ike, to, vec![]).unwrap();
    }

    fn client_connect(&mut self, i: usize) {
        let now = self.now;
        let c = &mut self.clients[i];
        c.endpoint
            .connect(
                now,
                "rw",
                SocketAddr::new(c.addr, 500),
                SocketAddr::new(PUBLIC.parse().unwrap(), 500),
            )
            .unwrap();
    }

    fn settle(&mut self) {
        loop {
            let mut moved = false;
            let now = self.now;
            // Edges: data plane <-> forwarder, forwarder -> channel.
            for (i, e) in self.edges.iter_mut().enumerate() {
                e.link.advance(now);
                moved |= e.fwd.turn(&mut e.link);
                while let Some(m) = e.fwd.poll_to_node() {
                    moved = true;
                    if e.up {
                        self.up.push_back((
                            now.saturating_add(self.delay),
                            i,
                            m.encode().unwrap().to_vec(),
                        ));
                    }
                }
                for d in e.link.sent.drain(..) {
                    moved = true;
                    let w = &e.link.workers[0];
                    self.sent.push(Sent {
                        at: now,
                        edge: i,
                        inbound: w.inbound.keys().copied().collect(),
                        outbound: w.outbound.values().copied().collect(),
                        d,
                    });
                }
            }
            // The channel, both ways.
            while self.up.front().is_some_and(|(t, ..)| *t <= now) {
                let (_, i, b) = self.up.pop_front().unwrap();
                moved = true;
                self.node
                    .handle(now, i as EdgeId, EdgeMsg::decode(&b).unwrap());
            }
            self.node.handle_timeout(now);
            for i in 0..self.edges.len() {
                while let Some(m) = self.node.poll_for(i as EdgeId) {
                    moved = true;
                    self.down.push_back((
                        now.saturating_add(self.delay),
                        i,
                        m.encode().unwrap().to_vec(),
                    ));
                }
            }
            while self.down.front().is_some_and(|(t, ..)| *t <= now) {
                let (_, i, b) = self.down.pop_front().unwrap();
                moved = true;
                let e = &mut self.edges[i];
                e.fwd
                    .handle_node(NodeMsg::decode(&b).unwrap(), &mut e.link)
                    .unwrap();
            }
            // Edges' datagrams reach the clients; clients' reach an edge by the router.
            while self.delivered < self.sent.len() {
                let d = self.sent[self.delivered].d.clone();
                self.delivered += 1;
                if let Some(c) = self.clients.iter_mut().find(|c| c.addr == d.dst) {
                    c.endpoint.handle(
                        now,
                        SocketAddr::new(d.dst, d.dst_port),
                        SocketAddr::new(d.src, d.src_port),
                        &d.payload,
                    );
                    moved = true;
                }
            }
            for ci in 0..self.clients.len() {
                let c = &mut self.clients[ci];
                if c.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                    moved = true;
                    c.endpoint.handle_timeout(now);
                }
                while let Some(e) = c.endpoint.poll_event() {
                    c.events.push(e);
                }
                let mut wire = Vec::new();
                while let Some(t) = c.endpoint.poll_transmit() {
                    wire.push(Datagram {
                        src: t.src.ip(),
                        dst: t.dst.ip(),
                        src_port: t.src.port(),
                        dst_port: t.dst.port(),
                        payload: t.data,
                    });
                }
                let addr = c.addr;
                for d in wire {
                    moved = true;
                    let e = (self.router)(addr, &d);
                    self.edges[e].link.punt(d);
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut t: Vec<Instant> = Vec::new();
        t.extend(self.node.poll_timeout());
        t.extend(self.edges.iter().filter_map(|e| e.link.next_due()));
        t.extend(self.up.front().map(|x| x.0));
        t.extend(self.down.front().map(|x| x.0));
        t.extend(
            self.clients
                .iter()
                .filter_map(|c| c.endpoint.poll_timeout()),
        );
        t.into_iter().min()
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now.saturating_add(d);
        loop {
            self.settle();
            match self.next_deadline() {
                Some(n) if n <= end => {
                    self.now = if n > self.now {
                        n
                    } else {
                        self.now.saturating_add(Duration::from_millis(1))
                    };
                }
                _ => {
                    self.now = end;
                    self.settle();
                    return;
                }
            }
        }
    }

    /// Client `i`'s CHILD_SAs as (its outbound SPI = our inbound, its inbound = our outbound).
    fn child_spis(&self, i: usize) -> Vec<(Spi, Spi)> {
        self.clients[i]
            .events
            .iter()
            .filter_map(|e| match e {
                ike::Event::ChildUp(c) => Some((Spi(c.outbound.spi.0), Spi(c.inbound.spi.0))),
                _ => None,
            })
            .collect()
    }

    /// Runs for `d` with the clients' flows (see [`Traffic`]), one step a millisecond.
    fn run_traffic(&mut self, d: Duration) {
        let steps = d.as_millis() as u64;
        for _ in 0..steps {
            self.run_for(Duration::from_millis(1));
            self.traffic_step();
        }
    }

    fn traffic_step(&mut self) {
        let now = self.now;
        let tick = now.saturating_duration_since(Instant::ZERO).as_millis() as u64;
        for c in 0..self.clients.len() {
            let Some(&(ours_in, ours_out)) = self.child_spis(c).last() else {
                continue;
            };
            // The client's ESP, at the edge of its path.
            let e = self.traffic.at[c];
            let t = &mut self.traffic;
            t.in_seq[c] += t.in_per_ms;
            let (held, first) = if t.dead[e] || t.in_per_ms == 0 {
                (false, None)
            } else {
                self.edges[e].link.workers[0].receive_inbound(ours_in, t.in_seq[c])
            };
            if let Some(ev) = first {
                self.edges[e].link.report(ev);
            }
            if t.dead[e] {
                t.lost[c] += t.in_per_ms;
            } else if held {
                t.delivered[c] += t.in_per_ms;
            } else if t.in_per_ms > 0 {
                t.lost[c] += t.in_per_ms;
                if t.last_unknown[e]
                    .is_none_or(|l| now.saturating_duration_since(l) >= UNKNOWN_EVERY)
                {
                    t.last_unknown[e] = Some(now);
                    let src = self.clients[c].addr;
                    self.edges[e].link.report(DpEvent::UnknownSpi {
                        worker: 0,
                        spi: ours_in,
                        src,
                        src_port: 4500,
                        dst: PUBLIC.parse().unwrap(),
                        packets: 1,
                    });
                }
            }
            // LAN traffic to the client: to the edge the LAN's route names (or to every edge
            // that holds its outbound SA), sealed there if that edge holds the client's
            // outbound SA and host binding, else dropped; checkpoints from every holder.
            let designated = self.node.core().child_sas(ours_in).and_then(|ch| {
                self.node
                    .placement()
                    .outbound_edges(ch.out_id)
                    .first()
                    .copied()
            });
            let lan = self.traffic.lan_at[c].or(designated.map(usize::from));
            let mut sealed_by_lan = false;
            for (i, edge) in self.edges.iter_mut().enumerate() {
                if self.traffic.dead[i] {
                    continue;
                }
                let w = &mut edge.link.workers[0];
                let Some(id) = w
                    .outbound
                    .iter()
                    .find(|(_, s)| **s == ours_out)
                    .map(|(id, _)| *id)
                else {
                    continue;
                };
                let reached = self.traffic.lan_every_holder || lan == Some(i);
                if reached && (self.traffic.lan_every_holder || w.bound.values().any(|s| *s == id))
                {
                    sealed_by_lan |= lan == Some(i);
                    let sent = w.send_outbound_at(id, self.traffic.out_per_ms, now);
                    let t = &mut self.traffic;
                    t.back_lost[c] += t.out_per_ms - sent.len() as u64;
                    for (spi, seq, leaves) in sent {
                        t.wire.push((i, spi, seq));
                        let arrives = leaves.saturating_add(t.edge_delay[i]);
                        t.sealed_n += 1;
                        t.in_flight.insert((arrives, t.sealed_n, c, spi, seq));
                    }
                }
                if tick % CHECKPOINT_EVERY_MS == 0 {
                    let (seq, reserved) = w.out_seq[&id];
                    edge.link.report(DpEvent::SeqCheckpoint {
                        worker: 0,
                        id,
                        spi: ours_out,
                        seq,
                        seq_reserved: reserved,
                    });
                }
            }
            if !self.traffic.lan_every_holder && !sealed_by_lan {
                self.traffic.back_lost[c] += self.traffic.out_per_ms;
            }
        }
        // What reached the clients by now, in the order it arrives: their replay windows.
        let t = &mut self.traffic;
        while let Some(&(arrives, n, c, spi, seq)) = t.in_flight.first() {
            if arrives > now {
                break;
            }
            t.in_flight.remove(&(arrives, n, c, spi, seq));
            let seen = &mut t.back_seen[c];
            let top = seen.last().copied().unwrap_or(0);
            if seq + BACK_WINDOW <= top || seen.contains(&seq) {
                t.back_refused[c] += 1;
            } else {
                seen.insert(seq);
                while seen
                    .first()
                    .is_some_and(|f| f + BACK_WINDOW <= *seen.last().unwrap())
                {
                    seen.pop_first();
                }
            }
        }
    }

    /// (SPI, sequence number) pairs sent more than once.
    fn duplicates(&self) -> Vec<(Spi, u64)> {
        let mut seen = std::collections::HashSet::new();
        self.traffic
            .wire
            .iter()
            .filter(|(_, s, n)| !seen.insert((*s, *n)))
            .map(|(_, s, n)| (*s, *n))
            .collect()
    }

    /// IKE datagrams the edges sent to client `c` at or after `since`.
    fn ike_to_client_since(&self, c: usize, since: Instant) -> usize {
        let a = self.clients[c].addr;
        self.sent
            .iter()
            .filter(|s| s.at >= since && s.d.dst == a)
            .count()
    }

    /// The edges that sent outbound packets of `spi`, in order of their first packet, with
    /// (first, last) sequence number of each run.
    fn runs(&self, spi: Spi) -> Vec<(usize, u64, u64)> {
        let mut runs: Vec<(usize, u64, u64)> = Vec::new();
        for (e, s, n) in &self.traffic.wire {
            if *s != spi {
                continue;
            }
            match runs.last_mut() {
                Some(r) if r.0 == *e => r.2 = *n,
                _ => runs.push((*e, *n, *n)),
            }
        }
        runs
    }

    fn holds(&self, edge: usize, (ours_in, ours_out): (Spi, Spi)) -> (bool, bool) {
        let w = &self.edges[edge].link.workers[0];
        (
            w.inbound.contains_key(&ours_in),
            w.outbound.values().any(|s| *s == ours_out),
        )
    }
}

/// Client `c`'s IKE_SA_INIT goes to edge `c % 3`, everything after it to edge `(c + 1) % 3`.
fn init_here_auth_there() -> Router {
    Box::new(|addr, d| {
        let c = match addr {
            IpAddr::V4(v) => usize::from(v.octets()[3]) - 10,
            IpAddr::V6(_) => 0,
        };
        if exchange(&d.payload).0 == IKE_SA_INIT {
            c % 3
        } else {
            (c + 1) % 3
        }
    })
}

#[test]
fn ike_sa_init_via_one_edge_and_ike_auth_via_another_and_the_sa_is_at_the_forwarding_edge_before_the_response(
) {
    let mut w = Cluster::new(3, 3);
    w.router = init_here_auth_there();
    for i in 0..3 {
        w.client_connect(i);
    }
    w.run_for(Duration::from_secs(1));
    for i in 0..3 {
        let spis = w.child_spis(i);
        assert_eq!(spis.len(), 1, "client {i} has its CHILD_SA");
        let auth_edge = (i + 1) % 3;
        // The IKE_AUTH response left through the edge that forwarded the IKE_AUTH request,
        // from the public address the request came to, and that edge held both SAs then.
        let resp: Vec<&Sent> = w
            .sent
            .iter()
            .filter(|s| s.d.dst == w.clients[i].addr && exchange_of(s) == (IKE_AUTH, true))
            .collect();
        assert_eq!(resp.len(), 1, "one IKE_AUTH response to client {i}");
        let r = resp[0];
        assert_eq!(
            r.edge, auth_edge,
            "client {i}'s response left by its IKE_AUTH edge"
        );
        assert_eq!(r.d.src, PUBLIC.parse::<IpAddr>().unwrap());
        assert!(
            r.inbound.contains(&spis[0].0) && r.outbound.contains(&spis[0].1),
            "edge {auth_edge} held client {i}'s SAs when the IKE_AUTH response left: {r:?}"
        );
        let init: Vec<&Sent> = w
            .sent
            .iter()
            .filter(|s| s.d.dst == w.clients[i].addr && exchange_of(s) == (IKE_SA_INIT, true))
            .collect();
        assert_eq!(init.len(), 1);
        assert_eq!(
            init[0].edge,
            i % 3,
            "the IKE_SA_INIT response by the INIT edge"
        );
        // The outbound SA is at the IKE_AUTH edge only; every edge holds the inbound SA
        // (ahead of the client), watched everywhere but at the IKE_AUTH edge.
        for e in 0..3 {
            let held = w.holds(e, spis[0]);
            assert_eq!(held, (true, e == auth_edge), "edge {e}, client {i}");
            let watched = w.edges[e].link.workers[0].watched.contains(&spis[0].0);
            assert_eq!(watched, e != auth_edge, "edge {e}, client {i}");
        }
        // The placement says the same.
        let p = w.node.placement();
        assert_eq!(p.inbound_edges(spis[0].0), BTreeSet::from([0, 1, 2]));
    }
    // Every edge got the policy when it joined, and the carriers were acknowledged.
    for e in 0..3 {
        assert!(w.edges[e].link.workers[0].policies() >= 1);
        assert!(!w.node.round_trips(e as EdgeId).is_empty());
    }
    assert_eq!(w.node.stats.no_edge, 0);
}

fn exchange_of(s: &Sent) -> (u8, bool) {
    exchange(&s.d.payload)
}

#[test]
fn every_spi_the_crypto_node_hands_out_carries_its_node_id() {
    let mut w = Cluster::new(3, 3);
    w.router = init_here_auth_there();
    for i in 0..3 {
        w.client_connect(i);
    }
    w.run_for(Duration::from_secs(1));
    let layout = ike::services::SpiLayout::new(4, 5, 0, 0).unwrap();
    let mut n = 0;
    for i in 0..3 {
        for (ours_in, _) in w.child_spis(i) {
            assert_eq!(layout.node_of_child(ike::ChildSpi(ours_in.0)), 5);
            n += 1;
        }
    }
    assert_eq!(n, 3);
}

/// Every client up through edge `edge` (INIT and AUTH alike).
fn all_via(edge: usize) -> Router {
    Box::new(move |_, _| edge)
}

fn adds_of(w: &Cluster, edge: usize, spi: Spi) -> usize {
    w.edges[edge].link.workers[0]
        .received
        .iter()
        .filter(|u| matches!(u, Update::AddSa { params, .. } if params.spi == spi))
        .count()
}

/// Edge 1's channel is cut when `when` says, for `down_for`, while the client's IKE_AUTH
/// goes through edge 1; returns the world once the client is up.
fn cut_during_auth(when: fn(&Cluster) -> bool, down_for: Duration) -> Cluster {
    let mut w = Cluster::new(3, 1);
    w.router = all_via(1);
    w.client_connect(0);
    let mut cut = false;
    for _ in 0..2000 {
        w.run_for(Duration::from_micros(500));
        if !cut && when(&w) {
            w.disconnect(1);
            cut = true;
            w.run_for(down_for);
            w.connect(1);
        }
        if !w.child_spis(0).is_empty() {
            break;
        }
    }
    assert!(cut, "the cut happened");
    w.run_for(Duration::from_secs(3));
    w
}

#[test]
fn a_carrier_lost_with_its_connection_is_sent_again_and_installed_once() {
    // The CHILD_SA's carrier (edge 1's second) is on the wire when the connection goes.
    let w = cut_during_auth(
        |w| w.node.stats.carriers >= 4 && w.edges[1].fwd.stats.carriers < 2,
        Duration::from_millis(20),
    );
    let spis = w.child_spis(0);
    assert_eq!(spis.len(), 1, "the client is up after the reconnect");
    assert!(w.node.stats.resent >= 1, "{:?}", w.node.stats);
    assert_eq!(
        adds_of(&w, 1, spis[0].1),
        1,
        "the outbound SA was installed once"
    );
    assert_eq!(w.holds(1, spis[0]), (true, true));
}

#[test]
fn a_carrier_received_but_not_acknowledged_is_sent_again_and_skipped() {
    // The edge has the carrier, its data plane has not applied it yet (5 ms), and the
    // connection comes back at once: the node sends it again, the edge skips it.
    let w = cut_during_auth(
        |w| w.edges[1].fwd.stats.carriers >= 2,
        Duration::from_micros(500),
    );
    let spis = w.child_spis(0);
    assert_eq!(spis.len(), 1);
    assert!(w.node.stats.resent >= 1, "{:?}", w.node.stats);
    assert!(
        w.edges[1].fwd.stats.carriers_skipped >= 1,
        "{:?}",
        w.edges[1].fwd.stats
    );
    assert_eq!(
        adds_of(&w, 1, spis[0].1),
        1,
        "the outbound SA was installed once"
    );
    assert_eq!(w.holds(1, spis[0]), (true, true));
}

#[test]
fn an_edge_whose_data_plane_restarted_empty_gets_the_policy_again_and_its_child_sas_are_rekeyed() {
    let mut w = Cluster::new(3, 2);
    w.router = all_via(2);
    w.client_connect(0);
    w.client_connect(1);
    w.run_for(Duration::from_secs(1));
    let before: Vec<(Spi, Spi)> = (0..2).flat_map(|i| w.child_spis(i)).collect();
    assert_eq!(before.len(), 2);
    let policies = w.edges[2].link.workers[0].policies();
    w.edges[2].link.restart(0);
    w.run_for(Duration::from_secs(2));
    assert!(w.edges[2].link.workers[0].policies() > policies);
    for i in 0..2 {
        let spis = w.child_spis(i);
        assert_eq!(spis.len(), 2, "client {i}'s CHILD_SA was rekeyed");
        let new = spis[1];
        assert!(!before.contains(&new));
        assert_eq!(
            w.holds(2, new),
            (true, true),
            "client {i}'s new SAs at edge 2"
        );
    }
}

#[test]
fn esp_for_an_unknown_spi_at_another_edge_gets_the_inbound_sa_on_demand_and_the_outbound_follows() {
    let mut w = Cluster::new(3, 1);
    // Inbound SAs to the forwarding edge only (the copies ahead of the client are off).
    w.node.set_spread(false);
    w.router = all_via(0);
    w.client_connect(0);
    w.run_for(Duration::from_secs(1));
    let spis = w.child_spis(0)[0];
    assert_eq!(w.holds(1, spis), (false, false));
    // The client's ESP starts reaching edge 1: its data plane reports the unknown SPI.
    w.edges[1].link.report(DpEvent::UnknownSpi {
        worker: 0,
        spi: spis.0,
        src: w.clients[0].addr,
        src_port: 4500,
        dst: PUBLIC.parse().unwrap(),
        packets: 1,
    });
    w.run_for(Duration::from_millis(100));
    assert_eq!(w.node.stats.on_demand, 1);
    // The client's ESP reaches edge 1 now: the inbound SA on demand, the outbound SA
    // follows (a move), edge 0 lets the inbound SA go and drains its outbound SA until the
    // LAN's traffic for the client reaches edge 1.
    assert_eq!(w.holds(1, spis), (true, true));
    assert_eq!(w.holds(0, spis), (false, true));
    assert_eq!(w.node.stats.moves, 1);
    w.traffic.at[0] = 1;
    w.traffic.out_per_ms = 10;
    w.run_traffic(Duration::from_millis(30));
    assert_eq!(w.holds(0, spis), (false, false), "the drain ended");
    assert_eq!(w.traffic.back_lost[0], 0);
    w.traffic.out_per_ms = 0;
    assert_eq!(
        w.node.placement().inbound_edges(spis.0),
        BTreeSet::from([1])
    );
    // An SPI nobody holds gets nothing.
    w.edges[1].link.report(DpEvent::UnknownSpi {
        worker: 0,
        spi: Spi(0x1234_5678),
        src: w.clients[0].addr,
        src_port: 4500,
        dst: PUBLIC.parse().unwrap(),
        packets: 1,
    });
    w.run_for(Duration::from_millis(100));
    assert_eq!(w.node.stats.on_demand, 1);
}

#[test]
fn sequence_reports_reach_the_repository_and_only_the_freshest_is_kept() {
    let mut w = Cluster::new(3, 1);
    w.router = all_via(0);
    w.client_connect(0);
    w.run_for(Duration::from_secs(1));
    let (_, ours_out) = w.child_spis(0)[0];
    let id: SaId = *w.edges[0].link.workers[0]
        .outbound
        .iter()
        .find(|(_, s)| **s == ours_out)
        .unwrap()
        .0;
    for seq in [100, 5000, 4000] {
        w.edges[0].link.report(DpEvent::SeqCheckpoint {
            worker: 0,
            id,
            spi: ours_out,
            seq,
            seq_reserved: None,
        });
    }
    w.run_for(Duration::from_millis(50));
    let s = w.node.placement().freshest_seq(id).unwrap();
    assert_eq!((s.seq, s.by, s.final_state), (5000, Some(0), false));
    // The edge's outbound SA was installed with checkpoints on (the reports come by
    // themselves from a real data plane).
    let carried = w.edges[0].link.workers[0].received.iter().any(|u| {
        matches!(u, Update::AddSa { dir: Direction::Outbound, params }
            if params.id == id && params.checkpoint == Some(crypto_node::DEFAULT_CHECKPOINT))
    });
    assert!(carried);
    assert_eq!(
        w.node.placement().outbound_params(id).map(|p| p.spi),
        Some(ours_out)
    );
}

#[test]
fn a_backed_up_channel_stops_the_edge_taking_from_its_data_plane_and_nothing_is_lost() {
    let mut link = SimLink::new(1);
    let mut fwd = EdgeForwarder::new(4, 1);
    fwd.connected();
    assert!(matches!(
        fwd.poll_to_node(),
        Some(EdgeMsg::Hello { edge: 4, .. })
    ));
    let n = 3 * edge::MAX_TO_NODE;
    for i in 0..n {
        link.punt(Datagram {
            src: "198.51.100.1".parse().unwrap(),
            dst: PUBLIC.parse().unwrap(),
            src_port: 500,
            dst_port: 500,
            payload: (i as u32).to_be_bytes().to_vec(),
        });
    }
    fwd.turn(&mut link);
    assert_eq!(fwd.stats.ike_forwarded as usize, edge::MAX_TO_NODE);
    let mut got = Vec::new();
    loop {
        fwd.turn(&mut link);
        let before = got.len();
        while let Some(m) = fwd.poll_to_node() {
            if let EdgeMsg::Ike { datagram, .. } = m {
                got.push(u32::from_be_bytes(
                    datagram.payload[..4].try_into().unwrap(),
                ));
            }
        }
        if got.len() == before {
            break;
        }
    }
    assert_eq!(got, (0..n as u32).collect::<Vec<_>>(), "all, in order");
    assert_eq!(fwd.stats.ike_no_node, 0);
}

#[test]
fn a_message_from_an_edge_that_names_another_edge_is_refused() {
    let mut w = Cluster::new(2, 0);
    let now = w.now;
    w.node.handle(now, 0, EdgeMsg::DataplaneFresh { edge: 1 });
    assert_eq!(w.node.stats.refused, 1);
    // And one before its hello.
    w.node.edge_up(7);
    w.node.handle(
        now,
        7,
        EdgeMsg::Applied {
            edge: 7,
            carrier: 1,
        },
    );
    assert_eq!(w.node.stats.refused, 2);
}

// ---- edge-to-edge moves (issue 18 item 6) ---------------------------------------------------

/// A world of 3 edges and `clients` clients, all up through edge `first` with their flows on
/// (10 packets a millisecond each way: 10,000 packets/s).
fn flowing(clients: usize, first: usize) -> Cluster {
    let mut w = Cluster::new(3, clients);
    w.router = all_via(first);
    for c in 0..clients {
        w.client_connect(c);
        w.traffic.at[c] = first;
    }
    w.run_for(Duration::from_secs(1));
    for c in 0..clients {
        assert_eq!(w.child_spis(c).len(), 1, "client {c} is up");
    }
    w.traffic.in_per_ms = 10;
    w.traffic.out_per_ms = 10;
    w.run_traffic(Duration::from_millis(100));
    w
}

/// The client's path goes to `to`: its IKE (none comes) and its ESP.
fn steer(w: &mut Cluster, c: usize, to: usize) {
    w.traffic.at[c] = to;
    w.router = all_via(to);
}

fn out_id(w: &Cluster, edge: usize, ours_out: Spi) -> Option<SaId> {
    w.edges[edge].link.workers[0]
        .outbound
        .iter()
        .find(|(_, s)| **s == ours_out)
        .map(|(id, _)| *id)
}

#[test]
fn a_client_moves_mid_flow_and_the_new_edge_sends_above_every_number_the_old_one_used() {
    let mut w = flowing(1, 0);
    let spis = w.child_spis(0)[0];
    let vip = w.node.placement().host_edges();
    assert_eq!(vip.len(), 1, "the client's virtual IP is bound: {vip:?}");
    assert_eq!(vip[0].1, BTreeSet::from([0]));
    let t_move = w.now;
    let seq_at_move = w.traffic.in_seq[0];
    steer(&mut w, 0, 1);
    w.run_traffic(Duration::from_millis(200));
    assert_eq!(w.node.stats.moves, 1, "{:?}", w.node.stats);
    assert_eq!(w.node.stats.first_use, 1, "{:?}", w.node.stats);
    assert_eq!(w.holds(1, spis), (true, true), "both directions at edge 1");
    assert_eq!(
        w.holds(0, spis),
        (true, false),
        "edge 0 let the outbound SA go and keeps its inbound copy"
    );
    // Every copy continues above what the client sent through edge 0 (the old edge's
    // window, merged and installed again everywhere): a replay of any of it is refused at
    // every edge; edge 0's copy is watched again, edge 1's (now the client's) is not.
    for e in 0..3 {
        let (top, _) = w.edges[e].link.workers[0].in_top[&spis.0];
        assert!(
            top >= seq_at_move,
            "edge {e}: window top {top} < {seq_at_move}"
        );
        let watched = w.edges[e].link.workers[0].watched.contains(&spis.0);
        assert_eq!(watched, e != 1, "edge {e}");
    }
    // The LAN return path: the host binding went with the outbound SA.
    assert_eq!(
        w.node.placement().host_edges(),
        vec![(vip[0].0, BTreeSet::from([1]))]
    );
    let bound_at_1 = w.edges[1].link.workers[0]
        .received
        .iter()
        .any(|u| matches!(u, Update::BindHost { dst, .. } if *dst == vip[0].0));
    assert!(bound_at_1);
    // Edge 0 sent, then edge 1, each number once, edge 1 above all of edge 0's (whatever
    // the order their data planes applied the move in: edge 0 is held at its fence).
    let runs = w.runs(spis.1);
    let top0 = runs.iter().filter(|r| r.0 == 0).map(|r| r.2).max().unwrap();
    let first1 = runs.iter().filter(|r| r.0 == 1).map(|r| r.1).min().unwrap();
    assert!(first1 > top0, "{runs:?}");
    assert!(
        first1 - top0 <= crypto_node::DEFAULT_SEQ_GRANT,
        "the jump is at most one grant: {runs:?}"
    );
    assert_eq!(w.duplicates(), vec![]);
    // No IKE reached the client because of the move.
    assert_eq!(w.ike_to_client_since(0, t_move), 0);
    // Inbound: the copy at edge 1 was there before the client: nothing is lost.
    let lost = w.traffic.lost[0];
    assert_eq!(lost, 0, "inbound packets lost at the move");
    println!("move: lost {lost} inbound packets at 10/ms; runs {runs:?}");
}

#[test]
fn a_straggler_read_at_the_edge_the_client_left_does_not_move_it_back_and_a_real_return_does() {
    let mut w = flowing(1, 0);
    let spis = w.child_spis(0)[0];
    let seq_at_move = w.traffic.in_seq[0];
    steer(&mut w, 0, 1);
    w.run_traffic(Duration::from_millis(200));
    assert_eq!(w.node.stats.moves, 1, "{:?}", w.node.stats);
    assert!(w.edges[0].link.workers[0].watched.contains(&spis.0));
    // A packet the client sent before its path changed, read at edge 0 after edge 0's copy
    // was watched again: its first use there carries nothing newer than edge 1 reported.
    let (held, first) = w.edges[0].link.workers[0].receive_inbound(spis.0, seq_at_move - 3);
    assert!(held);
    w.edges[0]
        .link
        .report(first.expect("the watched copy reports its first packet"));
    w.run_traffic(Duration::from_millis(100));
    assert_eq!(
        w.node.stats.moves, 1,
        "a straggler moved the client: {:?}",
        w.node.stats
    );
    assert_eq!(w.node.stats.stale_first_use, 1, "{:?}", w.node.stats);
    assert_eq!(
        w.holds(1, spis),
        (true, true),
        "edge 1 keeps both directions"
    );
    assert!(!w.holds(0, spis).1, "edge 0 does not hold the outbound SA");
    assert!(
        w.edges[0].link.workers[0].watched.contains(&spis.0),
        "edge 0's copy is watched again"
    );
    // The client really comes back: its next packet is newer than all, the SA follows.
    steer(&mut w, 0, 0);
    w.run_traffic(Duration::from_millis(200));
    assert_eq!(w.node.stats.moves, 2, "{:?}", w.node.stats);
    assert_eq!(w.node.stats.stale_first_use, 1);
    assert_eq!(w.holds(0, spis), (true, true));
    assert_eq!(w.duplicates(), vec![]);
    assert_eq!(w.traffic.lost[0], 0);
}

#[test]
fn a_move_between_ike_sa_init_and_ike_auth_and_then_mid_flow() {
    let mut w = Cluster::new(3, 1);
    // IKE_SA_INIT via edge 0, IKE_AUTH via edge 1 (client 0: init_here_auth_there).
    w.router = init_here_auth_there();
    w.client_connect(0);
    w.run_for(Duration::from_secs(1));
    let spis = w.child_spis(0)[0];
    assert_eq!(w.holds(1, spis), (true, true), "at the IKE_AUTH edge");
    w.traffic.at[0] = 1;
    w.traffic.in_per_ms = 10;
    w.traffic.out_per_ms = 10;
    w.run_traffic(Duration::from_millis(50));
    assert_eq!(w.traffic.lost[0], 0, "the first ESP found its SA");
    let t = w.now;
    steer(&mut w, 0, 2);
    w.run_traffic(Duration::from_millis(100));
    assert_eq!(w.node.stats.moves, 1);
    assert_eq!(w.holds(2, spis), (true, true));
    assert_eq!(w.duplicates(), vec![]);
    assert_eq!(w.ike_to_client_since(0, t), 0);
}

#[test]
fn twenty_ping_pong_moves_never_send_a_sequence_number_twice_and_send_no_ike() {
    let mut w = flowing(2, 0);
    let t0 = w.now;
    // Client 0 ping-pongs between edges 0 and 1 (every 30 ms: shorter than a checkpoint
    // interval would be on a real data plane), client 1 walks round all three.
    let mut path = [0usize, 0];
    let mut seq_at_last_move = Vec::new();
    for m in 1..=20 {
        path[0] = m % 2;
        path[1] = m % 3;
        seq_at_last_move = w.traffic.in_seq.clone();
        w.traffic.at = path.to_vec();
        w.router = all_via(path[0]);
        w.run_traffic(Duration::from_millis(30));
    }
    w.run_traffic(Duration::from_millis(100));
    assert_eq!(w.duplicates(), vec![]);
    // Inbound: every edge held a copy before the client came: nothing lost at any move; and
    // after the last move every copy continues above what the client sent before it.
    assert_eq!(w.traffic.lost, vec![0, 0], "inbound packets lost");
    for (c, at_move) in seq_at_last_move.iter().enumerate() {
        let spi = w.child_spis(c)[0].0;
        for (e, edge) in w.edges.iter().enumerate() {
            let (top, _) = edge.link.workers[0].in_top[&spi];
            assert!(top >= *at_move, "client {c}, edge {e}: {top}");
        }
    }
    for (c, at) in path.iter().enumerate() {
        let spis = w.child_spis(c);
        assert_eq!(spis.len(), 1, "client {c}: no new CHILD_SA");
        assert_eq!(w.holds(*at, spis[0]), (true, true), "client {c}");
        assert_eq!(w.ike_to_client_since(c, t0), 0, "client {c}");
        let runs = w.runs(spis[0].1);
        // Each run starts above where every earlier run ended.
        let mut top = 0;
        for r in &runs {
            assert!(r.1 > top, "client {c}: {runs:?}");
            top = top.max(r.2);
        }
    }
    // Client 0 moved 20 times; client 1 on 14 of its 20 steps (m % 3 repeats none in a
    // row; it starts at 0 and the first step, 1, is a move: all 20 are moves).
    assert_eq!(w.node.stats.moves, 40, "{:?}", w.node.stats);
    let lost: Vec<u64> = w.traffic.lost.clone();
    println!(
        "ping-pong: lost {lost:?} over 20 moves each, delivered {:?}",
        w.traffic.delivered
    );
}

#[test]
fn an_edge_killed_its_clients_move_to_the_others_without_ike() {
    let mut w = flowing(3, 2);
    let before: Vec<(Spi, Spi)> = (0..3).map(|c| w.child_spis(c)[0]).collect();
    let t = w.now;
    // Edge 2 dies: its channel goes, its data plane neither receives nor sends. The router
    // sends its clients to edges 0 and 1.
    w.traffic.dead[2] = true;
    w.disconnect(2);
    w.run_traffic(Duration::from_millis(20));
    for c in 0..3 {
        w.traffic.at[c] = c % 2;
    }
    w.run_traffic(Duration::from_millis(200));
    assert_eq!(w.node.stats.moves, 3);
    for (c, b) in before.iter().enumerate() {
        assert_eq!(w.child_spis(c), vec![*b], "client {c} kept its CHILD_SA");
        assert_eq!(w.holds(c % 2, *b), (true, true), "client {c}");
        assert_eq!(w.ike_to_client_since(c, t), 0);
        assert!(w.traffic.delivered[c] > 0);
    }
    assert_eq!(w.duplicates(), vec![]);
    // The dead edge holds no outbound SA (its inbound copies stay placed until it comes
    // back empty or the SAs go: they are deleted there then).
    assert_eq!(w.node.placement().held_by(2).1, vec![]);
}

#[test]
fn an_old_edge_cut_off_from_the_crypto_node_sends_on_up_to_its_fence_and_never_into_the_new_edge_s_numbers(
) {
    let mut w = Cluster::new(3, 1);
    // A small grant, so the cut-off edge runs into its reservation within the test.
    w.node.set_seq_grant(2000);
    w.router = all_via(0);
    w.client_connect(0);
    w.run_for(Duration::from_secs(1));
    let spis = w.child_spis(0)[0];
    w.traffic.in_per_ms = 10;
    w.traffic.out_per_ms = 10;
    w.run_traffic(Duration::from_millis(500));
    let id = out_id(&w, 0, spis.1).unwrap();
    let granted = w.node.stats.grants;
    assert!(
        granted >= 1,
        "the reservation was raised as the checkpoints came"
    );
    // Edge 0 loses its channel but lives: it keeps sending to the client (its LAN still
    // routes to it) and never hears of the move.
    w.traffic.lan_every_holder = true;
    w.disconnect(0);
    steer(&mut w, 0, 1);
    w.run_traffic(Duration::from_millis(500));
    assert_eq!(w.node.stats.moves, 1);
    let fence_at_move = w.runs(spis.1)[1].1 - 1;
    let (used0, reserved0) = w.edges[0].link.workers[0].out_seq[&id];
    assert_eq!(
        Some(used0),
        reserved0,
        "edge 0 is held at its reservation ({used0})"
    );
    assert!(used0 <= fence_at_move, "{used0} <= {fence_at_move}");
    assert_eq!(w.duplicates(), vec![]);
    let runs = w.runs(spis.1);
    assert!(runs.iter().any(|r| r.0 == 1), "edge 1 sends: {runs:?}");
}

/// Client 0 flowing through edge 0 (both ways, 10 packets/ms), the LAN's route for its
/// virtual IP pinned to edge 0; then the router moves its path to edge 1 and the LAN's route
/// follows `lag` later. Returns the cluster after another 100 ms.
fn move_with_lagging_lan_route(drain: bool, lag: Duration) -> (Cluster, (Spi, Spi)) {
    let mut w = flowing(1, 0);
    w.node.set_drain_moves(drain);
    let spis = w.child_spis(0)[0];
    w.traffic.lan_at[0] = Some(0);
    steer(&mut w, 0, 1);
    w.run_traffic(lag);
    assert_eq!(w.node.stats.moves, 1, "{:?}", w.node.stats);
    assert_eq!(
        w.node.placement().host_edges()[0].1,
        BTreeSet::from([1]),
        "the designation moved with the client's ESP"
    );
    w.traffic.lan_at[0] = Some(1);
    w.run_traffic(Duration::from_millis(100));
    (w, spis)
}

#[test]
fn the_old_edge_seals_the_lan_s_traffic_until_the_lan_s_route_follows_the_move() {
    let (w, spis) = move_with_lagging_lan_route(true, Duration::from_millis(40));
    let vip = w.node.placement().host_edges()[0].0;
    // Nothing lost either way: the old edge sealed what the LAN still sent it (below the new
    // edge's start), the new edge what came after the route flipped.
    assert_eq!(w.traffic.back_lost[0], 0, "LAN -> client lost at the move");
    assert_eq!(
        w.traffic.back_refused[0], 0,
        "refused by the client's window"
    );
    assert_eq!(w.traffic.lost[0], 0, "client -> LAN lost at the move");
    assert_eq!(w.duplicates(), vec![]);
    let runs = w.runs(spis.1);
    assert_eq!(
        runs.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![0, 1],
        "{runs:?}"
    );
    assert!(runs[1].1 > runs[0].2, "the new edge starts above: {runs:?}");
    // The old edge sealed for the whole lag (40 ms at 10/ms) after the move.
    assert!(
        runs[0].2 - runs[0].1 + 1 >= (100 + 40) * 10 - 20,
        "edge 0 sealed during the lag: {runs:?}"
    );
    // Once the new edge's checkpoint showed the LAN's traffic there, the drain ended: the
    // old edge deleted its outbound SA and binding; the SA is at edge 1 alone.
    assert_eq!(w.node.stats.drains, 1);
    assert_eq!(w.node.stats.drains_ended, 1);
    assert!(w.node.placement().drains().is_empty());
    assert_eq!(w.holds(0, spis), (true, false));
    assert!(!w.edges[0].link.workers[0].bound.contains_key(&vip));
    assert_eq!(w.holds(1, spis), (true, true));
    assert!(w.edges[1].link.workers[0].bound.contains_key(&vip));
    println!("drained move: runs {runs:?}");
}

/// A client whose path moved to another edge before any of its ESP did (strongSwan's
/// kernel-libipsec after a MOBIKE update: its outbound SA cannot move, so it rekeys the
/// CHILD_SA first and sends on the new one): the new SAs are placed at the edge the rekey came
/// through, and the host binding goes with them. The old edge drops its binding (it would seal
/// the LAN's traffic with an SA about to go) and the designation names the new edge alone.
#[test]
fn a_child_sa_rekeyed_through_another_edge_takes_the_host_binding_off_the_old_edge() {
    let mut w = Cluster::new(3, 1);
    w.router = all_via(0);
    w.client_connect(0);
    w.run_for(Duration::from_secs(1));
    let old = w.child_spis(0)[0];
    let (vip, edges) = w.node.placement().host_edges()[0].clone();
    assert_eq!(edges, BTreeSet::from([0]));
    assert!(w.edges[0].link.workers[0].bound.contains_key(&vip));
    // Its IKE now reaches edge 1; it rekeys before sending any ESP there.
    w.router = all_via(1);
    let ike = w.clients[0]
        .endpoint
        .list()
        .into_iter()
        .find(|s| s.2)
        .unwrap()
        .0;
    let now = w.now;
    w.clients[0]
        .endpoint
        .rekey_child(now, ike, ike::ChildSpi(old.1 .0))
        .unwrap();
    w.run_for(Duration::from_secs(2));
    let spis = w.child_spis(0);
    assert_eq!(spis.len(), 2, "the CHILD_SA was rekeyed");
    let new = spis[1];
    assert_eq!(w.holds(1, new), (true, true), "the new SAs at edge 1");
    let new_id = out_id(&w, 1, new.1).expect("the new outbound SA's id at edge 1");
    assert_eq!(
        w.node.placement().host_edges(),
        vec![(vip, BTreeSet::from([1]))],
        "the designation follows the new SA"
    );
    assert_eq!(w.edges[1].link.workers[0].bound.get(&vip), Some(&new_id));
    assert!(
        !w.edges[0].link.workers[0].bound.contains_key(&vip),
        "edge 0 dropped its binding: {:?}",
        w.edges[0].link.workers[0].bound
    );
    assert_eq!(w.holds(0, old), (false, false), "the old SAs are gone");
}

fn client_events(w: &mut Cluster, edge: usize) -> Vec<edge::ClientEvent> {
    std::iter::from_fn(|| w.edges[edge].fwd.poll_client()).collect()
}

/// Issue 21: an edge hears which client arrives with which user when the client's outbound SA
/// is placed there, and that it left when the move's drain ends (or without a drain, at the
/// move); the masquerade registers and unregisters the edge as its connections' FAM on these.
#[test]
fn an_edge_is_told_who_arrives_and_when_the_client_left_at_the_end_of_the_drain() {
    for drain in [true, false] {
        let mut w = flowing(1, 0);
        w.node.set_drain_moves(drain);
        let vip = w.node.placement().host_edges()[0].0;
        let client = proto::policy::Prefix::new(vip, 32).unwrap();
        let attached = edge::ClientEvent::Attached {
            client,
            user: "rw.test".into(),
        };
        assert_eq!(client_events(&mut w, 0), vec![attached.clone()]);
        w.traffic.lan_at[0] = Some(0);
        steer(&mut w, 0, 1);
        w.run_traffic(Duration::from_millis(20));
        assert_eq!(
            client_events(&mut w, 1),
            vec![attached.clone()],
            "drain {drain}"
        );
        let left = edge::ClientEvent::Left { client };
        if drain {
            // Still sealing the LAN's traffic for the client: not left yet.
            assert_eq!(client_events(&mut w, 0), vec![], "drain {drain}");
            w.traffic.lan_at[0] = Some(1);
            w.run_traffic(Duration::from_millis(100));
            assert_eq!(w.node.stats.drains_ended, 1);
        }
        assert_eq!(
            client_events(&mut w, 0),
            vec![left.clone()],
            "drain {drain}"
        );
        assert_eq!(client_events(&mut w, 2), vec![], "edge 2 never held it");
        // And back: edge 0 is told again, edge 1 that it left.
        steer(&mut w, 0, 0);
        w.traffic.lan_at[0] = Some(0);
        w.run_traffic(Duration::from_millis(200));
        assert_eq!(
            client_events(&mut w, 0),
            vec![attached.clone()],
            "drain {drain}"
        );
        assert_eq!(client_events(&mut w, 1), vec![left], "drain {drain}");
    }
}

#[test]
fn without_the_drain_the_lan_s_traffic_to_the_old_edge_is_lost_until_the_route_follows() {
    // The comparison the drain is for: the old edge deletes its SA at the move.
    let (w, _) = move_with_lagging_lan_route(false, Duration::from_millis(40));
    let lost = w.traffic.back_lost[0];
    assert!(
        (300..=400).contains(&lost),
        "about the lag less the move's round trip (10/ms): {lost}"
    );
    assert_eq!(w.duplicates(), vec![]);
    println!("move without drain: {lost} LAN -> client packets lost");
}

#[test]
fn twenty_moves_with_a_lagging_lan_route_lose_nothing_back_and_never_send_a_number_twice() {
    let mut w = flowing(2, 0);
    // Edge 0's way to the clients lags edge 1's by 3 ms and edge 2's by 1 ms: what an edge
    // sealed just before the LAN's route left it can arrive after the next edge's first
    // packets, which the hold (5 ms by default) keeps back.
    w.traffic.edge_delay = vec![
        Duration::from_millis(3),
        Duration::ZERO,
        Duration::from_millis(2),
    ];
    let t0 = w.now;
    let mut path = [0usize, 0];
    let before: Vec<(Spi, Spi)> = (0..2).map(|c| w.child_spis(c)[0]).collect();
    for m in 1..=20 {
        // Client 0 ping-pongs between edges 0 and 1, client 1 walks round all three; the
        // LAN's routes follow 15 ms (client 0) and 45 ms (client 1) after each move, so
        // client 1's next move comes before the drain of the one before has ended.
        let prev = path;
        path[0] = m % 2;
        path[1] = m % 3;
        w.traffic.at = path.to_vec();
        w.router = all_via(path[0]);
        w.traffic.lan_at = vec![Some(prev[0]), Some(prev[1])];
        w.run_traffic(Duration::from_millis(15));
        w.traffic.lan_at[0] = Some(path[0]);
        w.run_traffic(Duration::from_millis(30));
        w.traffic.lan_at[1] = Some(path[1]);
        w.run_traffic(Duration::from_millis(5));
    }
    w.traffic.lan_at = vec![None, None];
    w.run_traffic(Duration::from_millis(100));
    assert_eq!(w.duplicates(), vec![]);
    assert_eq!(w.traffic.back_lost, vec![0, 0], "LAN -> client lost");
    assert_eq!(w.traffic.back_refused, vec![0, 0], "refused by the clients");
    assert_eq!(w.traffic.lost, vec![0, 0], "client -> LAN lost");
    assert_eq!(w.node.stats.moves, 40, "{:?}", w.node.stats);
    for (c, at) in path.iter().enumerate() {
        assert_eq!(
            w.child_spis(c),
            vec![before[c]],
            "client {c}: no new CHILD_SA"
        );
        assert_eq!(w.ike_to_client_since(c, t0), 0, "client {c}");
        for e in 0..3 {
            let want = e == *at;
            assert_eq!(w.holds(e, before[c]).1, want, "client {c}, edge {e}");
        }
    }
    assert!(w.node.placement().drains().is_empty());
    println!(
        "20 moves with lagging LAN routes: drains {} ended {}",
        w.node.stats.drains, w.node.stats.drains_ended
    );
}

/// Client 0 flowing through edge 0, whose way to the client lags edge 1's by `old_lag` (its
/// queue, or its data plane waiting for a CPU); the router moves the client to edge 1, the
/// LAN's route follows 20 ms later, and the crypto node's moves hold the new edge's first
/// packets for `hold`. Returns the cluster after another 100 ms.
fn move_from_a_lagging_edge(hold: Duration, old_lag: Duration) -> (Cluster, (Spi, Spi)) {
    let mut w = flowing(1, 0);
    w.node.set_move_hold(hold);
    w.traffic.edge_delay[0] = old_lag;
    let spis = w.child_spis(0)[0];
    w.traffic.lan_at[0] = Some(0);
    steer(&mut w, 0, 1);
    w.run_traffic(Duration::from_millis(20));
    assert_eq!(w.node.stats.moves, 1, "{:?}", w.node.stats);
    w.traffic.lan_at[0] = Some(1);
    w.run_traffic(Duration::from_millis(100));
    assert!(w.traffic.in_flight.is_empty());
    (w, spis)
}

#[test]
fn the_new_edge_holds_its_first_packets_so_the_old_edge_s_in_flight_ones_are_not_refused() {
    let (w, spis) = move_from_a_lagging_edge(Duration::from_millis(5), Duration::from_millis(3));
    assert_eq!(w.traffic.back_lost[0], 0, "LAN -> client lost at the move");
    assert_eq!(
        w.traffic.back_refused[0], 0,
        "refused by the client's window"
    );
    assert_eq!(w.duplicates(), vec![]);
    let runs = w.runs(spis.1);
    assert_eq!(
        runs.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![0, 1],
        "{runs:?}"
    );
    assert!(runs[1].1 > runs[0].2, "the new edge starts above: {runs:?}");
    // The hold went with the move and ended: the new edge sends at once again.
    assert!(w.edges[1].link.workers[0].received.iter().any(|u| matches!(
        u,
        Update::AddSa { dir: Direction::Outbound, params } if params.resume.hold_us == 5000
    )));
    assert!(w.edges[1].link.workers[0].hold.is_empty());
}

#[test]
fn without_the_hold_the_old_edge_s_packets_in_flight_at_the_flip_are_refused_by_the_client() {
    // The comparison the hold is for: the old edge's last 2 ms (10 packets/ms) arrive after
    // the new edge's first packet moved the client's window a grant up.
    let (w, _) = move_from_a_lagging_edge(Duration::ZERO, Duration::from_millis(3));
    let refused = w.traffic.back_refused[0];
    assert!(
        (10..=30).contains(&refused),
        "about the old edge's lag (10/ms): {refused}"
    );
    assert_eq!(w.traffic.back_lost[0], 0, "every packet was sealed");
    assert_eq!(w.duplicates(), vec![]);
    // A hold shorter than the lag saves only part of them.
    let (w, _) = move_from_a_lagging_edge(Duration::from_millis(1), Duration::from_millis(3));
    let part = w.traffic.back_refused[0];
    assert!(0 < part && part < refused, "{part} of {refused}");
    println!("move from a 3 ms lagging edge: {refused} refused without the hold, {part} with 1 ms");
}

#[test]
fn copies_go_to_the_neighbours_of_the_client_s_edge_and_a_jump_elsewhere_takes_the_unknown_spi_path(
) {
    // Four edges in a line: 0 - 1 - 2 - 3.
    let mut w = Cluster::new(4, 1);
    w.node.set_neighbours(std::collections::BTreeMap::from([
        (0, BTreeSet::from([1])),
        (1, BTreeSet::from([0, 2])),
        (2, BTreeSet::from([1, 3])),
        (3, BTreeSet::from([2])),
    ]));
    w.router = all_via(0);
    w.client_connect(0);
    w.traffic.at[0] = 0;
    w.run_for(Duration::from_secs(1));
    let spis = w.child_spis(0)[0];
    let inbound_at =
        |w: &Cluster| -> Vec<usize> { (0..4).filter(|e| w.holds(*e, spis).0).collect() };
    assert_eq!(w.holds(0, spis), (true, true));
    assert_eq!(
        inbound_at(&w),
        vec![0, 1],
        "a copy at edge 0's neighbour only"
    );
    w.traffic.in_per_ms = 10;
    w.traffic.out_per_ms = 10;
    w.run_traffic(Duration::from_millis(100));
    // To a neighbour: the copy was there before the client, nothing lost; edge 1's
    // neighbour 2 gets a copy now.
    steer(&mut w, 0, 1);
    w.run_traffic(Duration::from_millis(200));
    assert_eq!(w.node.stats.moves, 1, "{:?}", w.node.stats);
    assert_eq!(w.node.stats.on_demand, 0);
    assert_eq!(w.holds(1, spis), (true, true));
    assert_eq!(w.traffic.lost[0], 0);
    assert_eq!(inbound_at(&w), vec![0, 1, 2]);
    // A jump to edge 3 (no neighbour of 1, no copy): the unknown-SPI report brings the SA
    // and moves the outbound SA; the packets before it are lost, nothing is sent twice.
    steer(&mut w, 0, 3);
    w.run_traffic(Duration::from_millis(300));
    assert_eq!(w.node.stats.moves, 2, "{:?}", w.node.stats);
    assert_eq!(w.node.stats.on_demand, 1);
    assert_eq!(w.holds(3, spis), (true, true));
    assert!(w.traffic.delivered[0] > 0);
    assert_eq!(w.duplicates(), vec![]);
    println!(
        "neighbours: lost at the jump to a non-neighbour: {}",
        w.traffic.lost[0]
    );
}

#[test]
fn the_lan_is_sent_to_a_moved_client_s_new_edge_only_once_it_applied_the_move() {
    let mut w = flowing(1, 0);
    let spis = w.child_spis(0)[0];
    let vip = w.node.placement().host_edges()[0].0;
    assert_eq!(w.node.designated_hosts(), vec![(vip, BTreeSet::from([0]))]);
    steer(&mut w, 0, 1);
    let mut before_applied = 0;
    for _ in 0..50 {
        w.run_traffic(Duration::from_millis(1));
        if w.node.stats.moves == 1 && !w.holds(1, spis).1 {
            // Moved in the node, not yet in edge 1's data plane: the LAN stays with edge 0
            // (which drains: it still holds the SA and the binding).
            assert_eq!(w.node.designated_hosts(), vec![(vip, BTreeSet::from([0]))]);
            assert_eq!(
                w.node.placement().host_edges(),
                vec![(vip, BTreeSet::from([1]))]
            );
            before_applied += 1;
        }
    }
    assert!(
        before_applied > 0,
        "the move was seen before it was applied"
    );
    assert!(w.holds(1, spis).1);
    assert_eq!(w.node.designated_hosts(), vec![(vip, BTreeSet::from([1]))]);
    assert_eq!(w.duplicates(), vec![]);
}
