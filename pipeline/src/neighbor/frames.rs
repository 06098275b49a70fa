//! The frames neighbour resolution sends (ARP requests, neighbour solicitations, gratuitous
//! ARP, unsolicited neighbour advertisements) and what received ones say about their sender
//! ([`Hint`]s for the [`NeighborCache`](super::NeighborCache)).
//!
//! Builders write a whole Ethernet frame into the caller's buffer and return its length, or
//! None (and write nothing) if the buffer is too small. ARP frames are 42 bytes: padding to the
//! Ethernet minimum is the port's business, as it is for Linux's own ARP.

use core::net::{Ipv4Addr, Ipv6Addr};

use crate::wire::ethernet::{self, Address, EtherType};
use crate::wire::ndp::{self, NeighborFlags};
use crate::wire::{arp, icmpv6, ipv6, IpProtocol};

/// Length of an ARP frame (Ethernet header + Ethernet/IPv4 ARP).
pub const ARP_FRAME_LEN: usize = ethernet::HEADER_LEN + arp::PACKET_LEN;
/// Length of a solicitation or advertisement frame with its link-layer address option.
pub const ND_FRAME_LEN: usize =
    ethernet::HEADER_LEN + ipv6::HEADER_LEN + ndp::MESSAGE_LEN + ndp::LLADDR_OPT_LEN;
/// The all-nodes multicast address (RFC 4291 2.7.1).
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// Hop limit of every neighbour discovery message (RFC 4861 7.1).
const ND_HOP_LIMIT: u8 = 255;

/// The solicited-node multicast address of `a` (RFC 4291 2.7.1): ff02::1:ff00:0/104 plus
/// `a`'s low 24 bits.
pub fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    let mut s = [0u8; 16];
    s[..2].copy_from_slice(&[0xff, 0x02]);
    s[11..13].copy_from_slice(&[0x01, 0xff]);
    s[13..].copy_from_slice(&o[13..]);
    Ipv6Addr::from(s)
}

/// The Ethernet address of an IPv6 multicast address (RFC 2464 7): 33:33 and its low 32 bits.
pub fn multicast_mac_v6(a: Ipv6Addr) -> Address {
    let o = a.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The Ethernet address of an IPv4 multicast address (RFC 1112 6.4): 01:00:5e and its low 23
/// bits.
pub fn multicast_mac_v4(a: Ipv4Addr) -> Address {
    let o = a.octets();
    [0x01, 0x00, 0x5e, o[1] & 0x7f, o[2], o[3]]
}

fn eth(out: &mut [u8], dst: Address, src: Address, t: EtherType) {
    ethernet::Repr {
        dst_addr: dst,
        src_addr: src,
        ethertype: t,
    }
    .emit(&mut ethernet::Frame::new_unchecked(out));
}

fn arp_frame(out: &mut [u8], eth_dst: Address, repr: &arp::Repr) -> Option<usize> {
    let out = out.get_mut(..ARP_FRAME_LEN)?;
    eth(out, eth_dst, repr.source_hardware_addr, EtherType::Arp);
    let body = out.get_mut(ethernet::HEADER_LEN..)?;
    repr.emit(&mut arp::Packet::new_unchecked(body));
    Some(ARP_FRAME_LEN)
}

/// An ARP request for `target` from `our_ip` at `our_mac`: broadcast, or to `unicast` (a
/// probe of a cached entry, as Linux sends in its PROBE state). The target hardware address is
/// zero.
pub fn arp_request(
    out: &mut [u8],
    our_mac: Address,
    our_ip: Ipv4Addr,
    target: Ipv4Addr,
    unicast: Option<Address>,
) -> Option<usize> {
    let repr = arp::Repr {
        operation: arp::Operation::Request,
        source_hardware_addr: our_mac,
        source_protocol_addr: our_ip,
        target_hardware_addr: [0; 6],
        target_protocol_addr: target,
    };
    arp_frame(out, unicast.unwrap_or(ethernet::BROADCAST), &repr)
}

/// A gratuitous ARP for `addr`, now at `our_mac`: RFC 5227's ARP Announcement (a broadcast
/// request whose sender and target protocol addresses are both `addr`), which makes every
/// host on the link that has `addr` cached take the new MAC.
pub fn gratuitous_arp(out: &mut [u8], our_mac: Address, addr: Ipv4Addr) -> Option<usize> {
    arp_request(out, our_mac, addr, addr, None)
}

/// Ethernet + IPv6 (hop limit 255) + a solicitation or advertisement, checksummed.
pub(crate) fn nd_frame(
    out: &mut [u8],
    eth_dst: Address,
    our_mac: Address,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    repr: &ndp::Repr,
) -> Option<usize> {
    let msg_len = repr.buffer_len();
    let total = ethernet::HEADER_LEN
        .checked_add(ipv6::HEADER_LEN)?
        .checked_add(msg_len)?;
    let out = out.get_mut(..total)?;
    eth(out, eth_dst, our_mac, EtherType::Ipv6);
    let ip = out.get_mut(ethernet::HEADER_LEN..)?;
    ipv6::Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Icmpv6,
        payload_len: msg_len,
        hop_limit: ND_HOP_LIMIT,
        dscp: 0,
        ecn: 0,
        flow_label: 0,
    }
    .emit(&mut ipv6::Packet::new_unchecked(&mut *ip));
    let msg = ip.get_mut(ipv6::HEADER_LEN..)?;
    repr.emit(&mut ndp::Message::new_unchecked(&mut *msg));
    icmpv6::Packet::new_unchecked(msg).fill_checksum(&src, &dst);
    Some(total)
}

/// A Neighbor Solicitation for `target` from `our_ip` with our source link-layer address
/// option (RFC 4861 7.2.2): to `target`'s solicited-node address, or to `target` itself at
/// `unicast` (a probe of a cached entry, 7.3.3).
pub fn neighbor_solicitation(
    out: &mut [u8],
    our_mac: Address,
    our_ip: Ipv6Addr,
    target: Ipv6Addr,
    unicast: Option<Address>,
) -> Option<usize> {
    let (dst, eth_dst) = match unicast {
        Some(mac) => (target, mac),
        None => {
            let group = solicited_node(target);
            (group, multicast_mac_v6(group))
        }
    };
    let repr = ndp::Repr::NeighborSolicit {
        target_addr: target,
        lladdr: Some(our_mac),
    };
    nd_frame(out, eth_dst, our_mac, our_ip, dst, &repr)
}

/// An unsolicited Neighbor Advertisement for `addr`, now at `our_mac` (RFC 4861 7.2.6): to
/// all-nodes, Override set so that caches take the new address, Solicited clear, Router as
/// given (a gateway forwards, so it is one).
pub fn unsolicited_advertisement(
    out: &mut [u8],
    our_mac: Address,
    addr: Ipv6Addr,
    router: bool,
) -> Option<usize> {
    let repr = ndp::Repr::NeighborAdvert {
        flags: NeighborFlags {
            router,
            solicited: false,
            override_: true,
        },
        target_addr: addr,
        lladdr: Some(our_mac),
    };
    nd_frame(
        out,
        multicast_mac_v6(ALL_NODES),
        our_mac,
        addr,
        ALL_NODES,
        &repr,
    )
}

/// What a received frame says about a neighbour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hint<A> {
    /// The neighbour's protocol address.
    pub addr: A,
    /// Its link-layer address, if the frame carries one.
    pub mac: Option<Address>,
    pub kind: HintKind,
}

/// How much a [`Hint`] is worth (RFC 4861 7.2.3, 7.2.5; RFC 826 and Linux's `arp_process`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HintKind {
    /// An answer to our solicitation: proof of reachability (a Neighbor Advertisement with
    /// Solicited set; an ARP reply unicast to us).
    Confirmation {
        /// The advertisement may replace a cached link-layer address (ARP always may).
        override_: bool,
    },
    /// Said without our asking (an advertisement with Solicited clear, gratuitous ARP, any
    /// ARP not for us): updates an existing entry, never creates one.
    Unsolicited { override_: bool },
    /// The neighbour asked for our address and told us its own: may create a STALE entry
    /// (gleaning; RFC 4861 7.2.3, RFC 826).
    Solicitation,
}

/// What an ARP frame (from its Ethernet header) says about its sender, given our MAC and our
/// address on the link. None for anything that is not a well-formed Ethernet/IPv4 ARP, an ARP
/// probe (sender 0.0.0.0, RFC 5227), a sender with a group or zero MAC, or one claiming our
/// own address.
pub fn arp_hint(frame: &[u8], our_mac: Address, ours: Option<Ipv4Addr>) -> Option<Hint<Ipv4Addr>> {
    let f = ethernet::Frame::new_checked(frame).ok()?;
    if f.ethertype() != EtherType::Arp {
        return None;
    }
    let p = arp::Packet::new_checked(f.payload()).ok()?;
    let r = arp::Repr::parse(&p).ok()?;
    let sender = r.source_protocol_addr;
    let mac = r.source_hardware_addr;
    if sender.is_unspecified()
        || sender.is_broadcast()
        || sender.is_multicast()
        || ethernet::is_multicast(&mac)
        || mac == [0; 6]
        || Some(sender) == ours
    {
        return None;
    }
    let for_us = ours.is_some() && Some(r.target_protocol_addr) == ours;
    let kind = match r.operation {
        arp::Operation::Request if for_us => HintKind::Solicitation,
        arp::Operation::Reply if for_us && f.dst_addr() == our_mac => {
            HintKind::Confirmation { override_: true }
        }
        _ => HintKind::Unsolicited { override_: true },
    };
    Some(Hint {
        addr: sender,
        mac: Some(mac),
        kind,
    })
}

/// What a neighbour discovery frame (from its Ethernet header) says, given our addresses on
/// the link: a Neighbor Advertisement about its target (RFC 4861 7.1.2 checked: hop limit
/// 255, checksum, code 0, target not multicast, Solicited clear when sent to a multicast
/// address), or a Neighbor Solicitation for one of `ours` about its sender (7.1.1, with a
/// source link-layer address, not from the unspecified address). None for anything else,
/// including an advertisement of one of our own addresses.
pub fn nd_hint(frame: &[u8], ours: &[Ipv6Addr]) -> Option<Hint<Ipv6Addr>> {
    let f = ethernet::Frame::new_checked(frame).ok()?;
    if f.ethertype() != EtherType::Ipv6 {
        return None;
    }
    let ip = ipv6::Packet::new_checked(f.payload()).ok()?;
    // Neighbour discovery is never behind extension headers in practice, and RFC 4861's
    // validation is written for the bare header: anything else is not ours to read.
    if ip.version() != 6 || ip.next_header() != IpProtocol::Icmpv6 || ip.hop_limit() != ND_HOP_LIMIT
    {
        return None;
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let msg = ndp::Message::new_checked(ip.payload()).ok()?;
    match ndp::Repr::parse(&msg, &src, &dst).ok()? {
        ndp::Repr::NeighborAdvert {
            flags,
            target_addr,
            lladdr,
        } => {
            if (flags.solicited && dst.is_multicast()) || ours.contains(&target_addr) {
                return None;
            }
            let override_ = flags.override_;
            let kind = if flags.solicited {
                HintKind::Confirmation { override_ }
            } else {
                HintKind::Unsolicited { override_ }
            };
            Some(Hint {
                addr: target_addr,
                mac: lladdr,
                kind,
            })
        }
        ndp::Repr::NeighborSolicit {
            target_addr,
            lladdr,
        } => {
            let mac = lladdr?;
            if !ours.contains(&target_addr)
                || src.is_unspecified()
                || src.is_multicast()
                || ethernet::is_multicast(&mac)
            {
                return None;
            }
            Some(Hint {
                addr: src,
                mac: Some(mac),
                kind: HintKind::Solicitation,
            })
        }
    }
}
