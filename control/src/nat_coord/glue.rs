//! The translation between one node's coordinator ([`MasqNode`]), its link SAs ([`Links`])
//! and its data plane, sans-IO: what a driver thread (`roamgate edge-link`) runs with a clock
//! and a store.
//!
//! In: the data plane's table misses ([`Glue::miss_out`], [`Glue::miss_in`]), clients
//! arriving and leaving ([`Glue::client_attached`], [`Glue::client_left`], from the crypto
//! node's carriers), a new policy ([`Glue::set_access`]), a data plane that restarted empty
//! ([`Glue::data_plane_fresh`]), time ([`Glue::turn`]). Out: [`PlaneCmd`]s, each one update
//! for the data plane (the driver encodes them as `proto` updates).
//!
//! - `Output::FamInstall`/`FamRemove` -> [`PlaneCmd::Fam`]; a miss the node answers at once
//!   (`Rewrite`, `Local`) installs too (the worker re-runs the packets it holds for it).
//! - `Output::Route` -> [`PlaneCmd::Route`], the FAM's node name mapped to its link index
//!   (this node: `Route::Local`); an inbound miss answered `Forward` likewise.
//! - `Output::Serve` -> [`PlaneCmd::Served`] (the whole list) and a gratuitous ARP
//!   (`Update::Announce { wan: false }`).
//! - `Output::Retry`/`RetryInbound` -> the node is asked again (a flow whose client's flows
//!   are now read may need an allocation); its answer installs.
//! - `Output::Peer` -> the link SAs ([`Links`]).
//!
//! Clients: a host client (a virtual IP, /32) is attached to the coordinator at once; the
//! hosts of a site's prefix are attached one by one at their first packet (the coordinator
//! keys clients by address), and all leave with the prefix.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use pipeline::masq::access::{AccessTable, UserId};
use pipeline::masq::{FlowKey, Masq, Route};
use proto::policy::Prefix;
use proto::{SaId, Spi, Update};

use super::link::{LinkCmd, Links};
use super::node::{InVerdict, MasqNode, OutVerdict, Output};
use super::plane::{flow_key, masq_key};
use super::records::{Flow, MasqAddr, Proto};
use crate::cluster::store::{Sealer, Store};
use crate::config::masq::AccessRules;

/// One change for the data plane (short-lived, few at a time: not boxed).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum PlaneCmd {
    /// An ordinary update: link SAs (AddSa, DeleteInbound, RebindOutbound), Announce.
    Update(Update),
    /// The masquerading addresses this node serves now (`Update::SetMasqPlane`).
    Served(Vec<Ipv4Addr>),
    /// `Update::MasqFam`.
    Fam {
        install: bool,
        flow: FlowKey,
        masq: Masq,
    },
    /// `Update::MasqRoute`.
    Route { masq: Masq, route: Option<Route> },
    /// `Update::MasqLink`.
    Link { node: u16, out_sa: SaId },
    /// `Update::MasqLinkIn`.
    LinkIn { spi: Spi },
    /// The client -> user map or the policy changed: `Update::MasqUsers` from
    /// [`Glue::users`] and [`Glue::access`].
    Users,
}

/// Counters of the glue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GlueStats {
    pub misses_out: u64,
    pub misses_in: u64,
    /// Misses for a protocol the coordinator does not carry (not TCP/UDP): dropped.
    pub bad_misses: u64,
    pub attached: u64,
    pub left: u64,
    pub hosts_attached: u64,
}

pub struct Glue<S: Store> {
    node: MasqNode<S>,
    links: Links,
    sealer: Arc<Sealer>,
    access: Arc<AccessTable>,
    rules: Arc<AccessRules>,
    /// Attached clients (their traffic selector) and their users.
    clients: HashMap<Prefix, String>,
    /// Hosts attached to the coordinator one by one (inside a site's prefix).
    hosts: BTreeSet<Ipv4Addr>,
    served: Vec<Ipv4Addr>,
    out: VecDeque<PlaneCmd>,
    pub stats: GlueStats,
}

fn proto_of(n: u8) -> Option<Proto> {
    match n {
        6 => Some(Proto::Tcp),
        17 => Some(Proto::Udp),
        _ => None,
    }
}

fn flow_of(k: &FlowKey) -> Option<Flow> {
    Some(Flow {
        proto: proto_of(k.proto)?,
        client: std::net::SocketAddrV4::new(k.client, k.client_port),
        server: std::net::SocketAddrV4::new(k.server, k.server_port),
    })
}

fn masq_of(m: &Masq) -> Option<MasqAddr> {
    Some(MasqAddr {
        proto: proto_of(m.proto)?,
        addr: m.addr,
        port: m.port,
    })
}

fn host(p: &Prefix) -> Option<Ipv4Addr> {
    match p.addr() {
        IpAddr::V4(a) if p.prefix_len() == 32 => Some(a),
        _ => None,
    }
}

impl<S: Store> Glue<S> {
    /// `node` is not started yet; `link` is this node's link address.
    pub fn new(node: MasqNode<S>, sealer: Arc<Sealer>, link: Ipv4Addr) -> Glue<S> {
        let me = node.name().to_string();
        let inc = node.incarnation();
        Glue {
            links: Links::new(&me, link, inc),
            access: Arc::new(AccessTable::allow_all()),
            rules: Arc::new(AccessRules::allow_all()),
            node,
            sealer,
            clients: HashMap::new(),
            hosts: BTreeSet::new(),
            served: Vec::new(),
            out: VecDeque::new(),
            stats: GlueStats::default(),
        }
    }

    pub fn node(&self) -> &MasqNode<S> {
        &self.node
    }

    pub fn node_mut(&mut self) -> &mut MasqNode<S> {
        &mut self.node
    }

    pub fn links(&self) -> &Links {
        &self.links
    }

    /// Starts the coordinator; the data plane gets its (empty) masquerade plane first.
    pub fn start(&mut self, access: Arc<AccessTable>, rules: Arc<AccessRules>, now_ms: u64) {
        self.access = access.clone();
        self.rules = rules;
        self.node.set_access(access);
        self.out.push_back(PlaneCmd::Served(Vec::new()));
        self.out.push_back(PlaneCmd::Users);
        self.node.start(now_ms);
        self.drain(now_ms);
    }

    /// Store answers, watch events and timers.
    pub fn turn(&mut self, now_ms: u64) {
        self.node.handle_timeout(now_ms);
        self.drain(now_ms);
    }

    /// The next command for the data plane.
    pub fn poll(&mut self) -> Option<PlaneCmd> {
        self.out.pop_front()
    }

    /// The policy now in force.
    pub fn access(&self) -> &Arc<AccessTable> {
        &self.access
    }

    /// The worker's `MasqUsers`: the policy's rules and the attached clients' users.
    pub fn masq_users(&self) -> proto::masq::MasqUsers {
        proto::masq::MasqUsers {
            users: self.rules.users.clone(),
            default_allow: self.rules.default_allow,
            clients: self
                .users()
                .into_iter()
                .filter(|(_, u)| (u.0 as usize) < self.rules.users.len())
                .map(|(prefix, u)| proto::masq::MasqClient { prefix, user: u.0 })
                .collect(),
        }
    }

    /// The attached clients and their users' ids (those the policy knows).
    pub fn users(&self) -> Vec<(Prefix, UserId)> {
        let mut v: Vec<(Prefix, UserId)> = self
            .clients
            .iter()
            .filter_map(|(p, u)| Some((*p, self.access.user(u)?)))
            .collect();
        v.sort_by_key(|(p, _)| (p.addr(), p.prefix_len()));
        v
    }

    pub fn served(&self) -> &[Ipv4Addr] {
        &self.served
    }

    /// A packet of `flow` missed the FAM table (outbound).
    pub fn miss_out(&mut self, flow: &FlowKey, now_ms: u64) {
        self.stats.misses_out += 1;
        let Some(f) = flow_of(flow) else {
            self.stats.bad_misses += 1;
            return;
        };
        let src = flow.client;
        if !self.hosts.contains(&src) && !self.is_host_client(src) {
            // A host behind an attached site: attach it now (its packets wait for its read).
            // The longest attached prefix holding it.
            let site = self
                .clients
                .iter()
                .filter(|(p, _)| p.contains(IpAddr::V4(src)))
                .max_by_key(|(p, _)| p.prefix_len())
                .map(|(_, u)| u.clone());
            if let Some(user) = site {
                self.hosts.insert(src);
                self.stats.hosts_attached += 1;
                self.node.client_attached(src, &user, now_ms);
            }
        }
        self.ask_out(f, now_ms);
        self.drain(now_ms);
    }

    /// A packet to `masq` missed both tables (inbound).
    pub fn miss_in(&mut self, masq: &Masq, now_ms: u64) {
        self.stats.misses_in += 1;
        let Some(m) = masq_of(masq) else {
            self.stats.bad_misses += 1;
            return;
        };
        self.ask_in(m, now_ms);
        self.drain(now_ms);
    }

    fn is_host_client(&self, a: Ipv4Addr) -> bool {
        self.clients.keys().any(|p| host(p) == Some(a))
    }

    fn ask_out(&mut self, f: Flow, now_ms: u64) {
        if let OutVerdict::Rewrite(m) = self.node.outbound(f, now_ms) {
            self.out.push_back(PlaneCmd::Fam {
                install: true,
                flow: flow_key(&f),
                masq: masq_key(&m),
            });
        }
    }

    fn ask_in(&mut self, m: MasqAddr, now_ms: u64) {
        match self.node.inbound(m, now_ms) {
            InVerdict::Local(flow) => self.out.push_back(PlaneCmd::Fam {
                install: true,
                flow: flow_key(&flow),
                masq: masq_key(&m),
            }),
            InVerdict::Forward(node) => {
                let route = self.route_to(Some(&node));
                self.out.push_back(PlaneCmd::Route {
                    masq: masq_key(&m),
                    route,
                });
            }
            InVerdict::Hold | InVerdict::Drop(_) => {}
        }
    }

    fn route_to(&mut self, fam: Option<&str>) -> Option<Route> {
        let n = fam?;
        if n == self.node.name() {
            return Some(Route::Local);
        }
        self.links.index_or_assign(n).map(Route::Node)
    }

    /// `client` (its traffic selector) has an outbound SA here now, authenticated as `user`.
    pub fn client_attached(&mut self, client: Prefix, user: &str, now_ms: u64) {
        if !client.addr().is_ipv4() {
            return;
        }
        self.stats.attached += 1;
        self.clients.insert(client, user.to_string());
        if let Some(a) = host(&client) {
            self.node.client_attached(a, user, now_ms);
        }
        self.out.push_back(PlaneCmd::Users);
        self.drain(now_ms);
    }

    /// `client` has no outbound SA here any more.
    pub fn client_left(&mut self, client: Prefix, now_ms: u64) {
        if self.clients.remove(&client).is_none() {
            return;
        }
        self.stats.left += 1;
        if let Some(a) = host(&client) {
            self.node.client_left(a, now_ms);
        }
        let inside: Vec<Ipv4Addr> = self
            .hosts
            .iter()
            .copied()
            .filter(|a| client.contains(IpAddr::V4(*a)))
            .collect();
        for a in inside {
            self.hosts.remove(&a);
            self.node.client_left(a, now_ms);
        }
        self.out.push_back(PlaneCmd::Users);
        self.drain(now_ms);
    }

    /// A new policy (a reload): the coordinator's new-flow checks and the worker's table.
    pub fn set_access(&mut self, access: Arc<AccessTable>, rules: Arc<AccessRules>, now_ms: u64) {
        self.access = access.clone();
        self.rules = rules;
        self.node.set_access(access);
        self.out.push_back(PlaneCmd::Users);
        self.drain(now_ms);
    }

    /// The data plane restarted empty: a new incarnation for the link SAs (published), and
    /// everything the data plane held sent again (routes come back with the next misses).
    pub fn data_plane_fresh(&mut self, incarnation: u64, now_ms: u64) {
        self.out.clear();
        self.out.push_back(PlaneCmd::Served(self.served.clone()));
        self.out.push_back(PlaneCmd::Users);
        if !self.served.is_empty() {
            self.out.push_back(PlaneCmd::Update(Update::Announce {
                wan: false,
                addrs: self.served.iter().map(|a| IpAddr::V4(*a)).collect(),
            }));
        }
        self.links.data_plane_fresh(&self.sealer, incarnation);
        self.take_links();
        let fams: Vec<(FlowKey, Masq)> = self
            .node
            .fam_flows()
            .map(|(f, m)| (flow_key(f), masq_key(m)))
            .collect();
        for (flow, masq) in fams {
            self.out.push_back(PlaneCmd::Fam {
                install: true,
                flow,
                masq,
            });
        }
        self.node.set_incarnation(incarnation, now_ms);
        self.drain(now_ms);
    }

    fn take_links(&mut self) {
        for c in self.links.take() {
            self.out.push_back(match c {
                LinkCmd::Update(u) => PlaneCmd::Update(u),
                LinkCmd::Out { node, out_sa } => PlaneCmd::Link { node, out_sa },
                LinkCmd::In { spi } => PlaneCmd::LinkIn { spi },
            });
        }
    }

    /// The coordinator's outputs into commands (bounded: a retry that yields more outputs
    /// is taken in the same loop, each output once).
    fn drain(&mut self, now_ms: u64) {
        while let Some(o) = self.node.poll_output() {
            match o {
                Output::FamInstall { flow, masq } => self.out.push_back(PlaneCmd::Fam {
                    install: true,
                    flow: flow_key(&flow),
                    masq: masq_key(&masq),
                }),
                Output::FamRemove { flow, masq } => self.out.push_back(PlaneCmd::Fam {
                    install: false,
                    flow: flow_key(&flow),
                    masq: masq_key(&masq),
                }),
                Output::Route { masq, fam } => {
                    let route = self.route_to(fam.as_deref());
                    self.out.push_back(PlaneCmd::Route {
                        masq: masq_key(&masq),
                        route,
                    });
                }
                Output::Retry(flow) => self.ask_out(flow, now_ms),
                Output::RetryInbound(masq) => self.ask_in(masq, now_ms),
                Output::Serve(a) => {
                    if !self.served.contains(&a) {
                        self.served.push(a);
                    }
                    self.out.push_back(PlaneCmd::Served(self.served.clone()));
                    self.out.push_back(PlaneCmd::Update(Update::Announce {
                        wan: false,
                        addrs: vec![IpAddr::V4(a)],
                    }));
                }
                Output::Unserve(a) => {
                    self.served.retain(|s| *s != a);
                    self.out.push_back(PlaneCmd::Served(self.served.clone()));
                }
                Output::Peer { node, link } => {
                    let rec = link.as_ref().map(|(l, i)| (l.as_str(), *i));
                    self.links.peer(&self.sealer, &node, rec);
                    self.take_links();
                }
            }
        }
    }
}

/// The data-plane updates of one command; `clients`, `exclude` and `link` are the fixed part
/// of the node's masquerade plane (its file's `masq` section).
pub fn updates<S: Store>(
    cmd: PlaneCmd,
    glue: &Glue<S>,
    clients: &[Prefix],
    exclude: &[Prefix],
    link: Ipv4Addr,
) -> Vec<Update> {
    vec![match cmd {
        PlaneCmd::Update(u) => u,
        PlaneCmd::Served(served) => Update::SetMasqPlane {
            plane: Some(proto::masq::MasqPlane {
                clients: clients.to_vec(),
                exclude: exclude.to_vec(),
                served,
                link_addr: link,
            }),
        },
        PlaneCmd::Fam {
            install,
            flow,
            masq,
        } => Update::MasqFam {
            install,
            flow,
            masq,
        },
        PlaneCmd::Route { masq, route } => Update::MasqRoute { masq, route },
        PlaneCmd::Link { node, out_sa } => Update::MasqLink {
            node,
            out_sa: Some(out_sa),
        },
        PlaneCmd::LinkIn { spi } => Update::MasqLinkIn { spi, install: true },
        PlaneCmd::Users => Update::MasqUsers {
            table: glue.masq_users(),
        },
    }]
}
