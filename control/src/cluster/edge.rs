//! An edge's stateless IKE forwarder and SA carrier applier, sans-IO.
//!
//! An [`EdgeForwarder`] sits where `roamgate run`'s control core sits, on the same [`Link`]
//! to the data plane (the shared-memory channel in `roamgate edge`, a simulated data plane
//! in the tests), and on the edge's channel to the crypto node:
//!
//! - every IKE datagram the data plane punts (UDP 500, UDP 4500 with the non-ESP marker) goes
//!   to the crypto node unchanged, tagged with this edge and its outer addresses and ports
//!   ([`EdgeMsg::Ike`]); nothing about IKE is kept here;
//! - data-plane reports go up ([`EdgeMsg::Report`]): sequence checkpoints and final SA states
//!   are the sequence reports the repository keeps the freshest state from;
//! - carrier numbers belong to one crypto node incarnation ([`NodeMsg::Welcome`]): after a
//!   new one (the node restarted from the store) the count starts again;
//! - SA carriers ([`NodeMsg::Carrier`]) go to the data plane in order, each number once (a
//!   carrier sent again after a reconnect is skipped: an outbound SA installed twice would
//!   send its sequence numbers again), and are acknowledged once the data plane released
//!   them ([`Link::released`]);
//! - IKE datagrams from the crypto node ([`NodeMsg::Ike`]) are sent after every carrier that
//!   came before them is released, so an IKE_AUTH response never leaves ahead of its
//!   CHILD_SA's SAs.
//!
//! Back-pressure, not loss: while more than [`MAX_TO_NODE`] messages wait for the channel,
//! the forwarder takes nothing from the data plane (its punt ring fills and the data plane
//! counts what it cannot hold, as under a stalled control plane). Without a connection,
//! punted IKE is dropped and counted (`ike_no_node`; the client retransmits), reports are
//! dropped (checkpoints come again).
//!
//! Owns: carrier order and numbering on this side, held datagrams. Must never: interpret IKE;
//! apply a carrier number twice; send a datagram ahead of a carrier received before it.

use std::collections::{HashMap, VecDeque};

use proto::policy::Prefix;
use proto::{Datagram, Direction, SaId, Update};

use super::msg::{EdgeId, EdgeMsg, NodeMsg};
use crate::driver::{Input, Link, LinkError};

/// Messages waiting for the channel above which the data plane's input is left where it is.
pub const MAX_TO_NODE: usize = 1024;

/// A client arriving at or leaving this edge (issue 21: the masquerade registers this node
/// as the FAM of its connections, or stops being it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// The first outbound SA of `client` (its traffic selector: a virtual IP, or the prefix
    /// behind a site) is installed here, authenticated as `user`.
    Attached { client: Prefix, user: String },
    /// Its last outbound SA here is gone (deleted, moved away without a drain, or the end of
    /// a move's drain; or the data plane restarted empty).
    Left { client: Prefix },
    /// The data plane restarted empty (after the `Left` of every client it held): what the
    /// masquerade had installed there is gone too.
    DataplaneFresh,
}

/// Which clients have outbound SAs here, from the carriers and the crypto node's
/// [`NodeMsg::Users`] (off unless [`EdgeForwarder::track_clients`]).
#[derive(Default)]
struct Clients {
    on: bool,
    /// Identities of the outbound SAs of the next carrier.
    users: HashMap<SaId, String>,
    /// Installed outbound SA -> its client.
    sas: HashMap<SaId, Prefix>,
    /// Client -> (outbound SAs here, user).
    here: HashMap<Prefix, (usize, String)>,
    events: VecDeque<ClientEvent>,
    /// The data plane's masquerade table misses, for the masquerade's driver.
    misses: VecDeque<proto::masq::MasqMissKey>,
}

/// Table misses kept for the masquerade's driver at most (more are dropped and counted: the
/// worker asks again while it holds the packet).
pub const MAX_MISSES: usize = 4096;

impl Clients {
    fn update(&mut self, u: &Update) {
        match u {
            Update::AddSa {
                dir: Direction::Outbound,
                params,
            } => {
                if self.sas.contains_key(&params.id) {
                    // The same SA again (resumed, moved back): nothing new.
                    return;
                }
                // A client that did not authenticate with an identity is not tracked: the
                // masquerade refuses its packets (no user).
                let Some(user) = self.users.remove(&params.id) else {
                    return;
                };
                let client = params.remote_ts;
                self.sas.insert(params.id, client);
                let e = self.here.entry(client).or_insert((0, user.clone()));
                e.0 += 1;
                if e.0 == 1 {
                    e.1 = user.clone();
                    self.events
                        .push_back(ClientEvent::Attached { client, user });
                }
            }
            Update::DeleteOutbound { id } => {
                let Some(client) = self.sas.remove(id) else {
                    return;
                };
                if let Some(e) = self.here.get_mut(&client) {
                    e.0 = e.0.saturating_sub(1);
                    if e.0 == 0 {
                        self.here.remove(&client);
                        self.events.push_back(ClientEvent::Left { client });
                    }
                }
            }
            _ => {}
        }
    }

    /// The data plane holds nothing any more.
    fn all_left(&mut self) {
        self.sas.clear();
        let mut gone: Vec<Prefix> = self.here.drain().map(|(c, _)| c).collect();
        gone.sort_by_key(|p| (p.addr(), p.prefix_len()));
        self.events
            .extend(gone.into_iter().map(|client| ClientEvent::Left { client }));
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EdgeStats {
    pub ike_forwarded: u64,
    pub ike_sent: u64,
    pub ike_no_node: u64,
    pub carriers: u64,
    pub carriers_skipped: u64,
    pub carrier_gaps: u64,
    pub updates: u64,
    pub reports: u64,
    pub masq_misses_dropped: u64,
}

pub struct EdgeForwarder {
    id: EdgeId,
    incarnation: u64,
    connected: bool,
    /// The last carrier handed to the data plane.
    received: u64,
    /// The last carrier the data plane released.
    applied: u64,
    /// Carriers handed over, not yet released: (number, generation of its last update).
    in_flight: VecDeque<(u64, u64)>,
    /// Datagrams waiting for the generation of the last update sent before them.
    held: VecDeque<(Datagram, u64)>,
    sent_gen: u64,
    to_node: VecDeque<EdgeMsg>,
    /// The data plane restarted empty while no crypto node listened: said after the hello.
    fresh_pending: bool,
    /// The incarnation of the crypto node that numbered the carriers counted above.
    node: Option<u64>,
    /// Connected, the node's welcome not yet here: acknowledgements wait (they count in the
    /// numbering of the node they were for, which may not be the one that answers).
    awaiting_welcome: bool,
    clients: Clients,
    pub stats: EdgeStats,
}

impl EdgeForwarder {
    /// Edge `id`; `incarnation` must differ between starts of the process (random).
    pub fn new(id: EdgeId, incarnation: u64) -> EdgeForwarder {
        EdgeForwarder {
            id,
            incarnation,
            connected: false,
            received: 0,
            applied: 0,
            in_flight: VecDeque::new(),
            held: VecDeque::new(),
            sent_gen: 0,
            to_node: VecDeque::new(),
            fresh_pending: false,
            node: None,
            awaiting_welcome: false,
            clients: Clients::default(),
            stats: EdgeStats::default(),
        }
    }

    /// Keep track of which clients are here ([`ClientEvent`]s from [`Self::poll_client`]):
    /// the masquerade's driver turns it on.
    pub fn track_clients(&mut self, on: bool) {
        self.clients.on = on;
        if !on {
            self.clients = Clients::default();
        }
    }

    /// The next masquerade table miss of the data plane (with [`Self::track_clients`]; they
    /// are not reported to the crypto node).
    pub fn poll_masq_miss(&mut self) -> Option<proto::masq::MasqMissKey> {
        self.clients.misses.pop_front()
    }

    /// The next client arrival or departure (with [`Self::track_clients`]).
    pub fn poll_client(&mut self) -> Option<ClientEvent> {
        self.clients.events.pop_front()
    }

    pub fn id(&self) -> EdgeId {
        self.id
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The channel to the crypto node is up: the hello goes first.
    pub fn connected(&mut self) {
        self.connected = true;
        self.awaiting_welcome = true;
        self.to_node.clear();
        self.to_node.push_back(EdgeMsg::Hello {
            edge: self.id,
            incarnation: self.incarnation,
            applied: self.applied,
        });
        if std::mem::take(&mut self.fresh_pending) {
            self.to_node
                .push_back(EdgeMsg::DataplaneFresh { edge: self.id });
        }
    }

    /// The channel went: what waited for it goes (IKE is retransmitted, checkpoints come
    /// again, carriers the node did not see acknowledged are sent again by it).
    pub fn disconnected(&mut self) {
        self.connected = false;
        self.to_node.clear();
    }

    /// The next message for the crypto node.
    pub fn poll_to_node(&mut self) -> Option<EdgeMsg> {
        self.to_node.pop_front()
    }

    /// A message the channel could not take now goes back to the front.
    pub fn unpoll(&mut self, m: EdgeMsg) {
        self.to_node.push_front(m);
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// A message from the crypto node.
    pub fn handle_node<L: Link>(&mut self, msg: NodeMsg, link: &mut L) -> Result<(), LinkError> {
        match msg {
            NodeMsg::Carrier { n, updates } => {
                if n <= self.received {
                    self.stats.carriers_skipped += 1;
                    self.clients.users.clear();
                    // Say again how far we are (the node may have missed it).
                    self.to_node.push_back(EdgeMsg::Applied {
                        edge: self.id,
                        carrier: self.applied,
                    });
                    return Ok(());
                }
                if n != self.received + 1 {
                    self.stats.carrier_gaps += 1;
                    tracing::warn!(target: "cluster",
                        "carrier {n} after {}: carriers were lost", self.received);
                }
                self.stats.carriers += 1;
                for u in updates {
                    self.stats.updates += 1;
                    if self.clients.on {
                        self.clients.update(&u);
                    }
                    self.sent_gen = link.send_update(0, u)?;
                }
                self.clients.users.clear();
                self.received = n;
                self.in_flight.push_back((n, self.sent_gen));
            }
            NodeMsg::Ike { datagram } => self.held.push_back((datagram, self.sent_gen)),
            NodeMsg::Users { users } => {
                if self.clients.on {
                    // For the next carrier only (its outbound SAs).
                    self.clients.users = users.into_iter().collect();
                }
            }
            NodeMsg::Welcome { incarnation } => {
                if self.node.is_some_and(|n| n != incarnation) {
                    // Another crypto node process (a restart, or a second node that took over
                    // from the store): its carriers are numbered from 1. What the data plane
                    // holds stays; what is in flight is released by generation as before.
                    tracing::info!(target: "cluster",
                        "a new crypto node incarnation {incarnation:016x}: carriers counted from 1");
                    self.received = 0;
                    self.applied = 0;
                    self.in_flight.clear();
                } else if self.awaiting_welcome && self.applied > 0 {
                    // The same node: what was applied while the welcome was on its way.
                    self.to_node.push_back(EdgeMsg::Applied {
                        edge: self.id,
                        carrier: self.applied,
                    });
                }
                self.awaiting_welcome = false;
                self.node = Some(incarnation);
            }
        }
        Ok(())
    }

    /// Moves what can move: the data plane's inputs up (unless the channel is backed up),
    /// released carriers acknowledged, held datagrams out. True if anything moved.
    pub fn turn<L: Link>(&mut self, link: &mut L) -> bool {
        let mut work = link.pump();
        while self.to_node.len() < MAX_TO_NODE {
            let Some(input) = link.poll_input() else {
                break;
            };
            work = true;
            match input {
                Input::Datagram(d) => {
                    if self.connected {
                        self.stats.ike_forwarded += 1;
                        self.to_node.push_back(EdgeMsg::Ike {
                            edge: self.id,
                            datagram: d,
                        });
                    } else {
                        self.stats.ike_no_node += 1;
                    }
                }
                Input::Event(proto::Event::MasqMiss { key, .. }) => {
                    // The masquerade's, never the crypto node's.
                    if self.clients.on && self.clients.misses.len() < MAX_MISSES {
                        self.clients.misses.push_back(key);
                    } else {
                        self.stats.masq_misses_dropped += 1;
                    }
                }
                Input::Event(event) => {
                    if self.connected {
                        self.stats.reports += 1;
                        self.to_node.push_back(EdgeMsg::Report {
                            edge: self.id,
                            event,
                        });
                    }
                }
                Input::Fresh { .. } => {
                    // What was in flight died with the data plane.
                    self.in_flight.clear();
                    if self.clients.on {
                        self.clients.all_left();
                        self.clients.events.push_back(ClientEvent::DataplaneFresh);
                    }
                    if self.connected {
                        self.to_node
                            .push_back(EdgeMsg::DataplaneFresh { edge: self.id });
                    } else {
                        self.fresh_pending = true;
                    }
                }
            }
        }
        let released = link.released(0);
        let mut acked = None;
        while self.in_flight.front().is_some_and(|(_, g)| *g <= released) {
            if let Some((n, _)) = self.in_flight.pop_front() {
                self.applied = n;
                acked = Some(n);
            }
        }
        if let Some(n) = acked {
            work = true;
            if self.connected && !self.awaiting_welcome {
                self.to_node.push_back(EdgeMsg::Applied {
                    edge: self.id,
                    carrier: n,
                });
            }
        }
        while self.held.front().is_some_and(|(_, g)| *g <= released) {
            let Some((d, g)) = self.held.pop_front() else {
                break;
            };
            if let Err(d) = link.send_datagram(d) {
                self.held.push_front((d, g));
                break;
            }
            self.stats.ike_sent += 1;
            work = true;
        }
        work
    }
}

/// What an update does, for a debug line (no keys).
pub fn describe(u: &Update) -> &'static str {
    match u {
        Update::AddSa { .. } => "add SA",
        Update::DeleteInbound { .. } | Update::DeleteOutbound { .. } => "delete SA",
        Update::RebindOutbound { .. } => "rebind",
        Update::ReplaceSpd { .. } => "policy",
        Update::BindHost { .. } | Update::BindHostDual { .. } | Update::UnbindHost { .. } => {
            "host binding"
        }
        _ => "other",
    }
}
