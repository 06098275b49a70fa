//! Neighbours on the gateway's links: answering ARP requests (RFC 826) and neighbour
//! solicitations (RFC 4861 7.2.4) for our own addresses, resolving the MACs of next hops and
//! LAN hosts ([`NeighborCache`]: ARP and neighbour discovery, RFC 4861 7.3's states), and the
//! frames both send ([`frames`]: requests, solicitations, gratuitous ARP and unsolicited
//! advertisements for an address we take over).
//!
//! On real ports the gateway's interfaces belong to roamgate, not to the kernel, so nobody else
//! answers for our addresses or resolves our neighbours.
//!
//! What it must never do: panic on any bytes (everything here reads attacker-controlled
//! frames); answer for an address that is not ours; let what the link says replace a
//! configured (`neighbor_mac`) neighbour; hold more entries or frames than its limits; read a
//! clock or send anything itself (`now` comes in, [`Action`]s go out).
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use core::net::{Ipv4Addr, Ipv6Addr};

use crate::wire::ethernet::{self, Address, EtherType};
use crate::wire::ndp::{self, NeighborFlags};
use crate::wire::{arp, ipv6, IpProtocol};

pub mod cache;
pub mod frames;

pub use cache::{
    Action, Learned, NeighborAddr, NeighborCache, NeighborConfig, NeighborCounters, NeighborDrop,
    NeighborState, Resolution,
};
pub use frames::{Hint, HintKind};

/// What a frame was, for the neighbour responder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The frame now holds the reply; send it back out of the port it came in on.
    Replied,
    /// Neighbour traffic, but not a question about our address (or malformed): drop it.
    Ignored,
    /// Not ARP and not a neighbour solicitation: the caller goes on with it.
    NotNeighbor,
}

/// Looks at `frame` (starting at the Ethernet header) and answers it in place if it asks for
/// one of our addresses. The frame's length is unchanged for ARP; for a solicitation it
/// becomes an advertisement of exactly [`frames::ND_FRAME_LEN`] bytes, which the caller makes
/// sure fits in the buffer (a shorter buffer: `Ignored`).
pub fn respond(
    frame: &mut [u8],
    mac: Address,
    addr4: Option<Ipv4Addr>,
    addr6: Option<Ipv6Addr>,
) -> (Outcome, usize) {
    let len = frame.len();
    let Ok(eth) = ethernet::Frame::new_checked(&*frame) else {
        return (Outcome::NotNeighbor, len);
    };
    match eth.ethertype() {
        EtherType::Arp => (arp_reply(frame, mac, addr4), len),
        EtherType::Ipv6 => na_reply(frame, mac, addr6),
        _ => (Outcome::NotNeighbor, len),
    }
}

/// An ARP request for `addr4` becomes its reply: sender us, target the asker (RFC 826).
fn arp_reply(frame: &mut [u8], mac: Address, addr4: Option<Ipv4Addr>) -> Outcome {
    let Some(ours) = addr4 else {
        return Outcome::Ignored;
    };
    let Some(body) = frame.get(ethernet::HEADER_LEN..) else {
        return Outcome::Ignored;
    };
    let Ok(req) = arp::Packet::new_checked(body).and_then(|p| arp::Repr::parse(&p)) else {
        return Outcome::Ignored;
    };
    if req.operation != arp::Operation::Request
        || req.target_protocol_addr != ours
        || ethernet::is_multicast(&req.source_hardware_addr)
    {
        return Outcome::Ignored;
    }
    let reply = arp::Repr {
        operation: arp::Operation::Reply,
        source_hardware_addr: mac,
        source_protocol_addr: ours,
        target_hardware_addr: req.source_hardware_addr,
        target_protocol_addr: req.source_protocol_addr,
    };
    let Some(body) = frame.get_mut(ethernet::HEADER_LEN..) else {
        return Outcome::Ignored;
    };
    reply.emit(&mut arp::Packet::new_unchecked(body));
    set_eth(frame, req.source_hardware_addr, mac);
    Outcome::Replied
}

fn set_eth(frame: &mut [u8], dst: Address, src: Address) {
    let mut f = ethernet::Frame::new_unchecked(frame);
    f.set_dst_addr(dst);
    f.set_src_addr(src);
}

/// A neighbour solicitation for `addr6` becomes our advertisement (RFC 4861 7.2.4): to the
/// asker with Solicited set, or to all-nodes if it asked from the unspecified address (DAD).
fn na_reply(frame: &mut [u8], mac: Address, addr6: Option<Ipv6Addr>) -> (Outcome, usize) {
    let len = frame.len();
    let body = frame.get(ethernet::HEADER_LEN..).unwrap_or(&[]);
    let Ok(ip) = ipv6::Packet::new_checked(body) else {
        return (Outcome::NotNeighbor, len);
    };
    // Only a bare IPv6 header followed by a solicitation is one; anything else is ordinary
    // IPv6 for the data path.
    let icmp = ip.payload();
    if ip.version() != 6
        || ip.next_header() != IpProtocol::Icmpv6
        || icmp.first() != Some(&ndp::TYPE_NS)
    {
        return (Outcome::NotNeighbor, len);
    }
    let Some(ours) = addr6 else {
        return (Outcome::Ignored, len);
    };
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    // RFC 4861 7.1.1: hop limit 255, checksum, code 0, length, options, target not
    // multicast; from the unspecified address only to a solicited-node address and without a
    // source link-layer address.
    let Ok(msg) = ndp::Message::new_checked(icmp) else {
        return (Outcome::Ignored, len);
    };
    let Ok(ndp::Repr::NeighborSolicit {
        target_addr,
        lladdr,
    }) = ndp::Repr::parse(&msg, &src, &dst)
    else {
        return (Outcome::Ignored, len);
    };
    let dad = src.is_unspecified();
    if ip.hop_limit() != 255
        || target_addr != ours
        || (dad && (lladdr.is_some() || dst != frames::solicited_node(target_addr)))
    {
        return (Outcome::Ignored, len);
    }
    let asker_mac = lladdr.unwrap_or_else(|| ethernet::Frame::new_unchecked(&*frame).src_addr());
    let (reply_dst, eth_dst) = if dad {
        (
            frames::ALL_NODES,
            frames::multicast_mac_v6(frames::ALL_NODES),
        )
    } else {
        (src, asker_mac)
    };
    // A gateway forwards: it is a router (7.2.4: the Router flag MUST say so).
    let na = ndp::Repr::NeighborAdvert {
        flags: NeighborFlags {
            router: true,
            solicited: !dad,
            override_: true,
        },
        target_addr: ours,
        lladdr: Some(mac),
    };
    // Writes nothing unless the whole advertisement fits.
    match frames::nd_frame(frame, eth_dst, mac, ours, reply_dst, &na) {
        Some(n) => (Outcome::Replied, n),
        None => (Outcome::Ignored, len),
    }
}

#[cfg(test)]
pub(crate) mod tests;
