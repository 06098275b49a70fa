//! The per-connection masquerade (issue 21, `docs/masq.md`) as data: a connection's key, its
//! masquerading address and port, where the home masquerader (HAM) sends an answer, what a
//! node masquerades, and the compiled per-user access rules. The tables that use them are the
//! data plane's (`pipeline::masq`); the coordinator that decides them is the control plane's
//! (`control::nat_coord`).

use core::net::Ipv4Addr;

use crate::policy::{PortRange, Prefix};

/// A connection's key as the client sends it: protocol number (6 TCP, 17 UDP), client address
/// and port, server address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub proto: u8,
    pub client: Ipv4Addr,
    pub client_port: u16,
    pub server: Ipv4Addr,
    pub server_port: u16,
}

/// A masquerading address and port of one protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Masq {
    pub proto: u8,
    pub addr: Ipv4Addr,
    pub port: u16,
}

/// Where the HAM sends an inbound packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// This node is the flow's FAM too (the FAM table has the flow).
    Local,
    /// Forward over the inter-node link to node `i` (the index named by `Update::MasqLink`).
    Node(u16),
}

/// What one node masquerades (`Update::SetMasqPlane`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasqPlane {
    /// Prefixes of the clients' inner addresses (a roamgate client's LAN, a pool of virtual
    /// IPs) whose decrypted IPv4 traffic is masqueraded.
    pub clients: Vec<Prefix>,
    /// Destination prefixes never masqueraded (the client's traffic goes its usual way).
    pub exclude: Vec<Prefix>,
    /// Masquerading addresses whose answers arrive at this node's LAN port: the worker
    /// answers ARP for them there (a takeover adds one, then `Update::Announce { wan: false }`).
    pub served: Vec<Ipv4Addr>,
    /// This node's address on the inter-node link (the outer source of its link SAs).
    pub link_addr: Ipv4Addr,
}

/// One compiled access rule: destination prefix, protocol (`None`: any), destination ports,
/// allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserRule {
    pub dst: Prefix,
    pub proto: Option<u8>,
    pub ports: PortRange,
    pub allow: bool,
}

/// A client (inner source prefix) and the user (index into [`MasqUsers::users`]) its traffic
/// is checked as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MasqClient {
    pub prefix: Prefix,
    pub user: u32,
}

/// The compiled per-user access table (`pipeline::masq::access::AccessTable`) and which
/// client is which user (`Update::MasqUsers`). Replaces what was set before, between two
/// packets: the next packet of an established flow is checked against it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasqUsers {
    /// Per user, its rules in order (own, then its groups', first match wins).
    pub users: Vec<Vec<UserRule>>,
    /// What no rule of the user matches.
    pub default_allow: bool,
    /// Client prefix -> user; the longest prefix containing the source wins. A masqueraded
    /// source no client prefix contains is denied (`masq_no_user`).
    pub clients: Vec<MasqClient>,
}

/// What a table miss was about (`Event::MasqMiss`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MasqMissKey {
    /// Outbound: a client's packet of a flow the FAM table does not have (ask
    /// `MasqNode::outbound`; answered by `Update::MasqFam`).
    Out(FlowKey),
    /// Inbound: a packet to a masquerading address and port that neither the FAM table nor
    /// the HAM's routes have (ask `MasqNode::inbound`; answered by `Update::MasqRoute` or
    /// `Update::MasqFam`).
    In(Masq),
}
