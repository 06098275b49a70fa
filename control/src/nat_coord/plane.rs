//! A node's data-plane tables as the coordinator's outputs build them: the glue between
//! [`MasqNode`](super::MasqNode)'s [`Output`]s and `pipeline::masq` (the worker's tables),
//! and the order a node's packets take through them. The drivers that will run it on a
//! worker are not built yet; the in-process path test (`tests_path.rs`) runs it on real
//! packets.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use pipeline::masq::{FamTable, FlowKey, HamTable, Masq, MasqMiss, Route};

use super::node::Output;
use super::records::{Flow, MasqAddr};

/// The data-plane key of a coordinator flow.
pub fn flow_key(f: &Flow) -> FlowKey {
    FlowKey {
        proto: f.proto.number(),
        client: *f.client.ip(),
        client_port: f.client.port(),
        server: *f.server.ip(),
        server_port: f.server.port(),
    }
}

/// The data-plane form of a masquerading address.
pub fn masq_key(m: &MasqAddr) -> Masq {
    Masq {
        proto: m.proto.number(),
        addr: m.addr,
        port: m.port,
    }
}

/// What happens to an inbound packet at a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InPath {
    /// Rewritten to the client (this node is its FAM).
    Deliver,
    /// Unchanged, to the FAM with this link index: seal it on that node's inter-node SA.
    Forward(u16),
    /// Neither: ask the coordinator (`MasqNode::inbound`), or drop.
    Miss(MasqMiss),
}

/// One node's tables.
#[derive(Debug, Default)]
pub struct NodePlane {
    pub fam: FamTable,
    pub ham: HamTable,
    /// Node name -> link index (the inter-node SA to use).
    pub links: BTreeMap<String, u16>,
    /// The masquerading addresses this node holds (`Output::Serve`).
    pub serves: Vec<Ipv4Addr>,
}

impl NodePlane {
    /// Applies one coordinator output (`Retry*` are the driver's, ignored here).
    pub fn apply(&mut self, o: &Output) {
        match o {
            Output::FamInstall { flow, masq } => self.fam.install(flow_key(flow), masq_key(masq)),
            Output::FamRemove { flow, .. } => self.fam.remove(&flow_key(flow)),
            Output::Route { masq, fam } => {
                let route = fam
                    .as_ref()
                    .and_then(|n| self.links.get(n))
                    .map(|i| Route::Node(*i));
                self.ham.set(masq_key(masq), route);
            }
            Output::Serve(a) => {
                if !self.serves.contains(a) {
                    self.serves.push(*a);
                }
            }
            Output::Unserve(a) => self.serves.retain(|s| s != a),
            Output::Retry(_) | Output::RetryInbound(_) | Output::Peer { .. } => {}
        }
    }

    /// An inbound packet to a masquerading address: the FAM's rewrite first (the HAM may be
    /// the FAM too), else the HAM's route.
    pub fn inbound(&self, ip: &mut [u8]) -> InPath {
        match self.fam.inbound(ip) {
            Ok(_) => InPath::Deliver,
            Err(MasqMiss::NoEntry) => match self.ham.route(ip) {
                Ok(Route::Node(i)) => InPath::Forward(i),
                Ok(Route::Local) => InPath::Miss(MasqMiss::NoEntry),
                Err(e) => InPath::Miss(e),
            },
            Err(e) => InPath::Miss(e),
        }
    }
}
