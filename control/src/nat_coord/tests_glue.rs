//! The glue between the coordinator and a data plane ([`super::glue`]), on virtual time: two
//! nodes over one memory store, their commands applied to the data plane's tables.

use std::net::IpAddr;

use pipeline::masq::{FlowKey, Masq as DpMasq};
use proto::policy::Prefix;
use proto::{Direction, Update};

use super::*;
use crate::nat_coord::glue::{self as glue_mod, Glue, PlaneCmd};
use crate::nat_coord::link::{link_keys, LINK_SA_ID_BASE};
use crate::nat_coord::plane::flow_key;

/// What one node's data plane holds after the commands.
#[derive(Default)]
struct Plane {
    fam: HashMap<FlowKey, DpMasq>,
    served: Vec<Ipv4Addr>,
    announced: Vec<IpAddr>,
    links: BTreeMap<u16, u32>,
    link_in: BTreeSet<u32>,
    out_sas: BTreeMap<u32, u32>,
    in_sas: BTreeSet<u32>,
    users_pushed: usize,
    routes: Vec<(DpMasq, Option<pipeline::masq::Route>)>,
}

impl Plane {
    fn apply(&mut self, c: PlaneCmd) {
        match c {
            PlaneCmd::Fam {
                install: true,
                flow,
                masq,
            } => {
                self.fam.insert(flow, masq);
            }
            PlaneCmd::Fam {
                install: false,
                flow,
                ..
            } => {
                self.fam.remove(&flow);
            }
            PlaneCmd::Route { masq, route } => {
                self.routes.push((masq, route));
            }
            PlaneCmd::Served(s) => self.served = s,
            PlaneCmd::Link { node, out_sa } => {
                self.links.insert(node, out_sa.0);
            }
            PlaneCmd::LinkIn { spi } => {
                self.link_in.insert(spi.0);
            }
            PlaneCmd::Users => self.users_pushed += 1,
            PlaneCmd::Update(Update::Announce { addrs, .. }) => self.announced.extend(addrs),
            PlaneCmd::Update(Update::AddSa { dir, params }) => match dir {
                Direction::Outbound => {
                    self.out_sas.insert(params.id.0, params.spi.0);
                }
                Direction::Inbound => {
                    self.in_sas.insert(params.spi.0);
                }
            },
            PlaneCmd::Update(Update::DeleteInbound { spi }) => {
                self.in_sas.remove(&spi.0);
                self.link_in.remove(&spi.0);
            }
            PlaneCmd::Update(u) => panic!("unexpected {u:?}"),
        }
    }
}

struct World {
    net: Net,
    glue: Vec<Glue<Handle>>,
    planes: Vec<Plane>,
}

impl World {
    fn new() -> World {
        World {
            net: Net::new(),
            glue: Vec::new(),
            planes: Vec::new(),
        }
    }

    fn add(&mut self, name: &str, a: Ipv4Addr, link: Ipv4Addr, inc: u64) -> usize {
        let id = self.glue.len();
        let h = Handle {
            hub: self.net.hub.clone(),
            id,
        };
        let mut p = Net::params(name, &[a]);
        p.link = link.to_string();
        p.incarnation = inc;
        let node = MasqNode::new(p, h, self.net.sealer.clone(), self.net.access.clone());
        let mut g = Glue::new(node, self.net.sealer.clone(), link);
        g.start(
            self.net.access.clone(),
            Arc::new(crate::config::masq::AccessRules::allow_all()),
            self.net.now,
        );
        self.glue.push(g);
        self.planes.push(Plane::default());
        self.tick(20);
        id
    }

    fn pump(&mut self) {
        for (g, p) in self.glue.iter_mut().zip(self.planes.iter_mut()) {
            while let Some(c) = g.poll() {
                p.apply(c);
            }
        }
    }

    fn tick(&mut self, ms: u64) {
        for _ in 0..ms {
            self.net.now += 1;
            let now = self.net.now;
            self.net.hub.borrow_mut().mem.advance(now);
            self.net.hub.borrow_mut().deliver();
            for g in &mut self.glue {
                g.turn(now);
            }
            self.pump();
        }
    }

    /// A packet of `f` at node `i`: the FAM table, else a miss (the worker holds the packet
    /// and tries again when the table changes: here, every tick until it is rewritten).
    fn send(&mut self, i: usize, f: Flow) -> DpMasq {
        let key = flow_key(&f);
        for _ in 0..100 {
            if let Some(m) = self.planes[i].fam.get(&key).copied() {
                return m;
            }
            let now = self.net.now;
            self.glue[i].miss_out(&key, now);
            self.pump();
            self.tick(1);
        }
        panic!("{f:?} never installed at node {i}");
    }
}

#[test]
fn the_glue_turns_outputs_into_table_updates_and_links_and_follows_a_moving_client() {
    let mut w = World::new();
    let la: Ipv4Addr = "10.8.0.2".parse().unwrap();
    let lb: Ipv4Addr = "10.8.0.3".parse().unwrap();
    let a = w.add("a", addr(1), la, 0xa1);
    let b = w.add("b", addr(2), lb, 0xb1);
    w.tick(10);
    // Links both ways, each node's outbound SA the other's inbound one.
    let ib = w.glue[a].links().index("b").unwrap();
    let ia = w.glue[b].links().index("a").unwrap();
    let a_out = w.planes[a].out_sas[&(LINK_SA_ID_BASE + u32::from(ib))];
    assert_eq!(w.planes[a].links[&ib], LINK_SA_ID_BASE + u32::from(ib));
    assert!(w.planes[b].link_in.contains(&a_out));
    assert!(w.planes[b].in_sas.contains(&a_out));
    assert_eq!(
        a_out,
        link_keys(&w.net.sealer, "a", 0xa1, "b").unwrap().spi.0
    );
    let b_out = w.planes[b].out_sas[&(LINK_SA_ID_BASE + u32::from(ia))];
    assert!(w.planes[a].link_in.contains(&b_out));

    // A host client at a: its first packet allocates at a (HAM = FAM), a serves addr(1).
    let vip = Prefix::new(IpAddr::V4(client(2)), 32).unwrap();
    let now = w.net.now;
    w.glue[a].client_attached(vip, "alice", now);
    w.pump();
    let users = w.glue[a].users();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].0, vip);
    let f = flow(Proto::Tcp, client(2), 40000, 443);
    let m = w.send(a, f);
    assert_eq!(m.addr, addr(1));
    assert_eq!(w.planes[a].served, vec![addr(1)]);
    assert_eq!(w.planes[a].announced, vec![IpAddr::V4(addr(1))]);

    // The client moves to b: b installs the same masquerading address, a removes it and
    // routes the connection's answers to b over the link.
    let now = w.net.now;
    w.glue[b].client_attached(vip, "alice", now);
    w.glue[a].client_left(vip, now);
    w.pump();
    w.tick(10);
    assert_eq!(w.send(b, f), m, "the same source at the server");
    assert_eq!(w.planes[a].fam.get(&flow_key(&f)), None);
    let routed = w.planes[a]
        .routes
        .iter()
        .rev()
        .find(|(k, _)| *k == m)
        .map(|(_, r)| *r);
    assert_eq!(routed, Some(Some(pipeline::masq::Route::Node(ib))));
    assert_eq!(w.glue[a].users(), vec![]);

    // A site behind a client (a prefix): its hosts are attached at their first packet.
    let site = Prefix::new("10.7.0.0".parse().unwrap(), 24).unwrap();
    let now = w.net.now;
    w.glue[b].client_attached(site, "bob", now);
    let g = flow(Proto::Udp, "10.7.0.10".parse().unwrap(), 5000, 53);
    let mg = w.send(b, g);
    assert_eq!(mg.addr, addr(2), "homed at b");
    assert_eq!(w.glue[b].stats.hosts_attached, 1);
    // A host of no attached client is refused (no user): never installed.
    let stranger = flow(Proto::Udp, "10.6.0.1".parse().unwrap(), 5000, 53);
    let now = w.net.now;
    w.glue[b].miss_out(&flow_key(&stranger), now);
    w.tick(5);
    assert_eq!(w.planes[b].fam.get(&flow_key(&stranger)), None);
    // The site leaves b: its host's flow is removed there.
    let now = w.net.now;
    w.glue[b].client_left(site, now);
    w.pump();
    assert_eq!(w.planes[b].fam.get(&flow_key(&g)), None);

    // a's data plane restarts empty: a new incarnation, a new outbound link SA (new key and
    // SPI); b replaces its inbound SA from a when it reads a's new record.
    let now = w.net.now;
    w.planes[a] = Plane::default();
    w.glue[a].data_plane_fresh(0xa2, now);
    w.pump();
    w.tick(10);
    let a_out2 = w.planes[a].out_sas[&(LINK_SA_ID_BASE + u32::from(ib))];
    assert_ne!(a_out2, a_out);
    assert_eq!(
        a_out2,
        link_keys(&w.net.sealer, "a", 0xa2, "b").unwrap().spi.0
    );
    assert!(w.planes[b].in_sas.contains(&a_out2));
    assert!(!w.planes[b].in_sas.contains(&a_out), "the old one deleted");
    assert!(w.planes[b].link_in.contains(&a_out2));
    // What a served and its inbound link from b came back with the restart.
    assert_eq!(w.planes[a].served, vec![addr(1)]);
    assert!(w.planes[a].link_in.contains(&b_out));
    assert!(w.planes[a].users_pushed >= 1);

    // The commands as proto updates: the plane with the file's fixed part, the users.
    let clients = [site];
    let ex = [Prefix::new("10.8.0.0".parse().unwrap(), 24).unwrap()];
    let u = glue_mod::updates(
        PlaneCmd::Served(vec![addr(1)]),
        &w.glue[a],
        &clients,
        &ex,
        la,
    );
    let Update::SetMasqPlane { plane: Some(p) } = &u[0] else {
        panic!("{u:?}")
    };
    assert_eq!(
        (p.served.clone(), p.link_addr, p.clients.clone()),
        (vec![addr(1)], la, vec![site])
    );
    let now = w.net.now;
    w.glue[b].client_attached(vip, "alice", now);
    let u = glue_mod::updates(PlaneCmd::Users, &w.glue[b], &clients, &ex, lb);
    let Update::MasqUsers { table } = &u[0] else {
        panic!("{u:?}")
    };
    assert_eq!(table.clients.len(), 1);
    assert_eq!(table.clients[0].prefix, vip);
    assert!(table.default_allow);
}
