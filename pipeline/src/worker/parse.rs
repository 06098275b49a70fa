//! What the worker reads of a frame's headers: the flow key and the few IP fields it acts on,
//! through the `wire` views (checked before any field is read).

use core::net::IpAddr;

use crate::esp::tunnel::{NH_IPV4, NH_IPV6};
use crate::spd::FlowKey;
use crate::stats::DropReason;
use crate::wire::{ethernet, icmpv4, icmpv6, ipv4, ipv6, tcp, udp, EtherType, IpProtocol};

/// What the worker needs from an IP header.
pub(super) struct IpInfo {
    pub(super) key: FlowKey,
    pub(super) ipv6: bool,
    pub(super) header_len: usize,
    pub(super) hop_limit: u8,
    pub(super) dscp: u8,
    pub(super) ecn: u8,
    pub(super) fragment: bool,
}

/// The outer source and destination of an Ethernet + IP frame (for reports).
pub(super) fn outer_addrs(frame: &[u8]) -> Option<(IpAddr, IpAddr)> {
    let ip = frame.get(ethernet::HEADER_LEN..)?;
    match ip.first()? >> 4 {
        4 => {
            let p = ipv4::Packet::new_checked(ip).ok()?;
            Some((p.src_addr().into(), p.dst_addr().into()))
        }
        6 => {
            let p = ipv6::Packet::new_checked(ip).ok()?;
            Some((p.src_addr().into(), p.dst_addr().into()))
        }
        _ => None,
    }
}

/// The UDP source port of an Ethernet + IP frame that carries UDP (ESP in UDP), for reports.
pub(super) fn outer_udp_src_port(frame: &[u8]) -> Option<u16> {
    let info = parse_ip(frame).ok()?;
    (IpProtocol::from(info.key.proto) == IpProtocol::Udp).then_some(info.key.src_port)
}

/// Parses Ethernet + IP (+ the first transport bytes for the flow key).
#[inline(always)]
pub(super) fn parse_ip(frame: &[u8]) -> Result<IpInfo, DropReason> {
    let eth = ethernet::Frame::new_checked(frame).map_err(|_| DropReason::MalformedFrame)?;
    let ipv6 = match eth.ethertype() {
        EtherType::Ipv4 => false,
        EtherType::Ipv6 => true,
        _ => return Err(DropReason::MalformedFrame),
    };
    let ip = frame.get(ethernet::HEADER_LEN..).unwrap_or(&[]);
    if ipv6 {
        parse_ipv6(ip)
    } else {
        parse_ipv4(ip)
    }
}

/// Parses a bare IP packet (no Ethernet header) of either family.
pub(super) fn parse_l3(ip: &[u8]) -> Result<IpInfo, DropReason> {
    match ip.first().map(|b| b >> 4) {
        Some(4) => parse_ipv4(ip),
        Some(6) => parse_ipv6(ip),
        _ => Err(DropReason::MalformedIp),
    }
}

#[inline(always)]
pub(super) fn parse_inner(ip: &[u8], next_header: u8) -> Result<IpInfo, DropReason> {
    let version = ip.first().map(|b| b >> 4);
    match (next_header, version) {
        (NH_IPV4, Some(4)) => parse_ipv4(ip).map_err(|_| DropReason::InnerMalformed),
        (NH_IPV6, Some(6)) => parse_ipv6(ip).map_err(|_| DropReason::InnerMalformed),
        _ => Err(DropReason::BadNextHeader),
    }
}

#[inline(always)]
pub(super) fn ports(proto: u8, l4: &[u8]) -> (u16, u16) {
    // Read where the bytes are (a field past the end reads 0, as the views do for a buffer
    // they were not checked against): a short segment still gets a flow key; its own header
    // checks belong to whoever receives it.
    match IpProtocol::from(proto) {
        IpProtocol::Tcp => {
            let t = tcp::Packet::new_unchecked(l4);
            (t.src_port(), t.dst_port())
        }
        IpProtocol::Udp => {
            let u = udp::Packet::new_unchecked(l4);
            (u.src_port(), u.dst_port())
        }
        // ICMP: type and code stand in for the ports (RFC 4301 4.4.1.1).
        IpProtocol::Icmp => {
            let i = icmpv4::Packet::new_unchecked(l4);
            (u16::from(u8::from(i.msg_type())), u16::from(i.msg_code()))
        }
        IpProtocol::Icmpv6 => {
            let i = icmpv6::Packet::new_unchecked(l4);
            (u16::from(u8::from(i.msg_type())), u16::from(i.msg_code()))
        }
        _ => (0, 0),
    }
}

#[inline(always)]
fn parse_ipv4(ip: &[u8]) -> Result<IpInfo, DropReason> {
    let p = ipv4::Packet::new_checked(ip).map_err(|_| DropReason::MalformedIp)?;
    if !p.verify_checksum() {
        return Err(DropReason::IpChecksum);
    }
    let proto = p.protocol();
    let fragment = p.more_frags() || p.frag_offset() != 0;
    let (src_port, dst_port) = if p.frag_offset() == 0 {
        ports(proto, p.payload())
    } else {
        (0, 0)
    };
    Ok(IpInfo {
        key: FlowKey {
            src: IpAddr::V4(p.src_addr()),
            dst: IpAddr::V4(p.dst_addr()),
            proto,
            src_port,
            dst_port,
        },
        ipv6: false,
        header_len: usize::from(p.header_len()),
        hop_limit: p.hop_limit(),
        dscp: p.dscp(),
        ecn: p.ecn(),
        fragment,
    })
}

#[inline(always)]
fn parse_ipv6(ip: &[u8]) -> Result<IpInfo, DropReason> {
    let p = ipv6::Packet::new_checked(ip).map_err(|_| DropReason::MalformedIp)?;
    let upper = ipv6::upper_layer(&p).map_err(|_| DropReason::MalformedIp)?;
    let proto = u8::from(upper.protocol);
    let l4 = ip.get(upper.offset..).unwrap_or(&[]);
    let (src_port, dst_port) = if upper.fragment_offset == 0 {
        ports(proto, l4)
    } else {
        (0, 0)
    };
    Ok(IpInfo {
        key: FlowKey {
            src: IpAddr::V6(p.src_addr()),
            dst: IpAddr::V6(p.dst_addr()),
            proto,
            src_port,
            dst_port,
        },
        ipv6: true,
        header_len: upper.offset,
        hop_limit: p.hop_limit(),
        dscp: p.dscp(),
        ecn: p.ecn(),
        fragment: upper.fragmented,
    })
}
