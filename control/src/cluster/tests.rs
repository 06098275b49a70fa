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
}

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
        };
        for i in 0..edges {
            let mut link = SimLink::new(1);
            link.ack_delay = Duration::from_millis(5);
            c.edges.push(Edge {
                fwd: EdgeForwarder::new(i as EdgeId, 0x1000 + i as u64),
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
        // No other edge got this client's keys.
        for e in 0..3 {
            let held = w.holds(e, spis[0]);
            assert_eq!(
                held,
                (e == auth_edge, e == auth_edge),
                "edge {e}, client {i}"
            );
        }
        // The placement says the same.
        let p = w.node.placement();
        assert_eq!(
            p.inbound_edges(spis[0].0),
            BTreeSet::from([auth_edge as EdgeId])
        );
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
