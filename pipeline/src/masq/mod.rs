//! Connections that follow a moving client across nodes (issue 21): the data-plane half.
//!
//! A client's TCP/UDP connection has a masquerading (address, port) granted by its home
//! masquerader (HAM, `control::nat_coord`). The node the client talks through now, its foreign
//! masquerader (FAM), rewrites the connection's outbound packets to that address and port
//! ([`FamTable::outbound`]) and its inbound packets back to the client ([`FamTable::inbound`]).
//! Inbound packets reach the HAM (the address is routed there); the HAM looks up the current
//! FAM ([`HamTable::route`]) and forwards the packet unchanged, sealed in ESP tunnel mode
//! on the inter-node SA of that FAM ([`forward`]); the FAM opens it and rewrites it as if it
//! had arrived directly. Checksums are updated incrementally (RFC 1624), as `nat` does.
//!
//! Owns: the FAM's flow table (both directions), the HAM's routes, the rewrites, the
//! inter-node encapsulation. Must never: rewrite a packet of a flow the coordinator did not
//! grant (a miss is punted, [`MasqMiss`]); accept inbound from anyone but the flow's server
//! (endpoint-dependent filtering); panic on any bytes.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

pub mod access;
pub mod forward;

use core::net::Ipv4Addr;
use std::collections::HashMap;

use crate::wire::bytes::{self, Field};
use crate::wire::checksum::{update16, update_ipv4_addr};
use crate::wire::{ipv4, IpProtocol};

/// Why a packet did not pass (counted by the caller).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MasqMiss {
    /// Not a well-formed IPv4 TCP/UDP packet (short, bad header checksum, a fragment).
    Malformed,
    /// Not TCP or UDP.
    Protocol,
    /// No entry: punt to the coordinator (outbound) or drop (inbound, counted).
    NoEntry,
}

pub use proto::masq::{FlowKey, Masq, Route};

/// The key of an inbound packet at the FAM: the masquerading side and the server it must
/// come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct InKey {
    masq: Masq,
    server: Ipv4Addr,
    server_port: u16,
}

mod field {
    use crate::wire::bytes::Field;
    pub const SRC_ADDR: Field = 12..16;
    pub const DST_ADDR: Field = 16..20;
    pub const IP_CHECKSUM: Field = 10..12;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const UDP_CHECKSUM: Field = 6..8;
    pub const TCP_CHECKSUM: Field = 16..18;
}

/// What a rewrite needs of a packet.
struct Parsed {
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    hl: usize,
}

fn parse(ip: &[u8]) -> Result<Parsed, MasqMiss> {
    let p = ipv4::Packet::new_checked(ip).map_err(|_| MasqMiss::Malformed)?;
    if p.version() != 4 || !p.verify_checksum() || p.frag_offset() != 0 || p.more_frags() {
        return Err(MasqMiss::Malformed);
    }
    let proto = match p.next_header() {
        IpProtocol::Tcp => 6,
        IpProtocol::Udp => 17,
        _ => return Err(MasqMiss::Protocol),
    };
    let hl = usize::from(p.header_len());
    let min = if proto == 6 { 20 } else { 8 };
    let l4 = ip.get(hl..).ok_or(MasqMiss::Malformed)?;
    if l4.len() < min {
        return Err(MasqMiss::Malformed);
    }
    Ok(Parsed {
        proto,
        src: p.src_addr(),
        dst: p.dst_addr(),
        sport: bytes::get_u16(l4, field::SRC_PORT),
        dport: bytes::get_u16(l4, field::DST_PORT),
        hl,
    })
}

/// Rewrites one side (source or destination) of the packet to `addr`/`port`, updating the IP
/// header checksum and the transport checksum (pseudo-header and port) incrementally. A UDP
/// checksum of 0 (none) stays 0; a computed 0 is sent as 0xffff (RFC 768).
fn rewrite(ip: &mut [u8], p: &Parsed, source: bool, addr: Ipv4Addr, port: u16) {
    let (af, pf, old_addr, old_port): (Field, Field, Ipv4Addr, u16) = if source {
        (field::SRC_ADDR, field::SRC_PORT, p.src, p.sport)
    } else {
        (field::DST_ADDR, field::DST_PORT, p.dst, p.dport)
    };
    bytes::set_bytes(ip, af, &addr.octets());
    let ck = bytes::get_u16(ip, field::IP_CHECKSUM);
    bytes::set_u16(ip, field::IP_CHECKSUM, update_ipv4_addr(ck, old_addr, addr));
    let Some(l4) = ip.get_mut(p.hl..) else {
        return;
    };
    bytes::set_u16(l4, pf, port);
    let ckf = if p.proto == 6 {
        field::TCP_CHECKSUM
    } else {
        field::UDP_CHECKSUM
    };
    let ck = bytes::get_u16(l4, ckf.clone());
    if p.proto == 17 && ck == 0 {
        return;
    }
    let mut ck = update16(update_ipv4_addr(ck, old_addr, addr), old_port, port);
    if p.proto == 17 && ck == 0 {
        ck = 0xffff;
    }
    bytes::set_u16(l4, ckf, ck);
}

/// The FAM's table: the flows whose client talks through this node.
#[derive(Debug, Default)]
pub struct FamTable {
    out: HashMap<FlowKey, Masq>,
    inb: HashMap<InKey, FlowKey>,
}

impl FamTable {
    pub fn new() -> FamTable {
        FamTable::default()
    }

    pub fn len(&self) -> usize {
        self.out.len()
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Installs (or replaces) a flow's masquerading address.
    pub fn install(&mut self, flow: FlowKey, masq: Masq) {
        if let Some(old) = self.out.insert(flow, masq) {
            self.inb.remove(&in_key(&flow, old));
        }
        self.inb.insert(in_key(&flow, masq), flow);
    }

    /// A flow's masquerading address, if installed.
    pub fn get(&self, flow: &FlowKey) -> Option<Masq> {
        self.out.get(flow).copied()
    }

    pub fn remove(&mut self, flow: &FlowKey) {
        if let Some(m) = self.out.remove(flow) {
            self.inb.remove(&in_key(flow, m));
        }
    }

    /// The flow key of an outbound (client -> server) packet, to ask the coordinator about
    /// on a miss.
    pub fn flow_of(ip: &[u8]) -> Result<FlowKey, MasqMiss> {
        let p = parse(ip)?;
        Ok(FlowKey {
            proto: p.proto,
            client: p.src,
            client_port: p.sport,
            server: p.dst,
            server_port: p.dport,
        })
    }

    /// Client -> server: the source becomes the masquerading address and port.
    pub fn outbound(&self, ip: &mut [u8]) -> Result<Masq, MasqMiss> {
        let p = parse(ip)?;
        let key = FlowKey {
            proto: p.proto,
            client: p.src,
            client_port: p.sport,
            server: p.dst,
            server_port: p.dport,
        };
        let m = *self.out.get(&key).ok_or(MasqMiss::NoEntry)?;
        rewrite(ip, &p, true, m.addr, m.port);
        Ok(m)
    }

    /// Server -> masquerading address (directly, or forwarded by the HAM and opened): the
    /// destination becomes the client's address and port.
    pub fn inbound(&self, ip: &mut [u8]) -> Result<FlowKey, MasqMiss> {
        let p = parse(ip)?;
        let key = InKey {
            masq: Masq {
                proto: p.proto,
                addr: p.dst,
                port: p.dport,
            },
            server: p.src,
            server_port: p.sport,
        };
        let f = *self.inb.get(&key).ok_or(MasqMiss::NoEntry)?;
        rewrite(ip, &p, false, f.client, f.client_port);
        Ok(f)
    }
}

fn in_key(f: &FlowKey, m: Masq) -> InKey {
    InKey {
        masq: m,
        server: f.server,
        server_port: f.server_port,
    }
}

/// The HAM's routes: masquerading address and port -> current FAM.
#[derive(Debug, Default)]
pub struct HamTable {
    routes: HashMap<Masq, Route>,
}

impl HamTable {
    pub fn new() -> HamTable {
        HamTable::default()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn set(&mut self, masq: Masq, route: Option<Route>) {
        match route {
            Some(r) => {
                self.routes.insert(masq, r);
            }
            None => {
                self.routes.remove(&masq);
            }
        }
    }

    /// The route of an inbound packet (by destination address and port).
    pub fn route(&self, ip: &[u8]) -> Result<Route, MasqMiss> {
        let p = parse(ip)?;
        self.routes
            .get(&Masq {
                proto: p.proto,
                addr: p.dst,
                port: p.dport,
            })
            .copied()
            .ok_or(MasqMiss::NoEntry)
    }
}

#[cfg(test)]
mod tests;

/// The worker's per-user check (`Update::MasqUsers`): the access table and which client
/// source is which user (host addresses by exact match, wider prefixes longest first).
#[derive(Debug)]
pub struct MasqUsersTable {
    pub access: access::AccessTable,
    hosts: HashMap<Ipv4Addr, access::UserId>,
    /// Non-host client prefixes, longest first.
    nets: Vec<(proto::policy::Prefix, access::UserId)>,
}

impl MasqUsersTable {
    pub fn new(t: &proto::masq::MasqUsers) -> MasqUsersTable {
        let mut hosts = HashMap::new();
        let mut nets = Vec::new();
        for c in &t.clients {
            let u = access::UserId(c.user);
            match c.prefix.addr() {
                core::net::IpAddr::V4(a) if c.prefix.prefix_len() == 32 => {
                    hosts.insert(a, u);
                }
                _ => nets.push((c.prefix, u)),
            }
        }
        nets.sort_by_key(|(p, _)| core::cmp::Reverse(p.prefix_len()));
        MasqUsersTable {
            access: access::AccessTable::from_users(t),
            hosts,
            nets,
        }
    }

    /// The user a client source is checked as.
    #[inline]
    pub fn user(&self, src: Ipv4Addr) -> Option<access::UserId> {
        if let Some(u) = self.hosts.get(&src) {
            return Some(*u);
        }
        self.nets
            .iter()
            .find(|(p, _)| p.contains(core::net::IpAddr::V4(src)))
            .map(|(_, u)| *u)
    }

    /// Whether the client `src` may send this packet (`dst`, protocol, destination port).
    #[inline]
    pub fn allows(&self, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, port: u16) -> Option<bool> {
        let u = self.user(src)?;
        Some(
            self.access
                .allows(u, core::net::IpAddr::V4(dst), proto, port),
        )
    }
}
