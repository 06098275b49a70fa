//! Answers neighbour discovery for the gateway's own addresses: ARP requests (RFC 826) and
//! IPv6 neighbour solicitations (RFC 4861 section 7.2.4), turned into replies in place.
//!
//! On real ports the gateway's interfaces belong to roamgate, not to the kernel, so nobody else
//! can tell a router or host on the link which MAC our address has. Next hops are still
//! configured statically (`neighbor_mac`); resolving them is not done here.
//!
//! Everything here reads attacker-controlled bytes: nothing may panic.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use core::net::{Ipv4Addr, Ipv6Addr};

use crate::wire::{checksum, ethernet, IpProtocol};

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

const ARP_LEN: usize = 28;
const ICMPV6_NS: u8 = 135;
const ICMPV6_NA: u8 = 136;
/// IPv6 header + ICMPv6 NS (type, code, checksum, reserved, target).
const NS_MIN: usize = 40 + 24;

/// Looks at `frame` (starting at the Ethernet header) and answers it in place if it asks for
/// one of our addresses. The frame's length is unchanged for ARP; for NS it becomes an NA of
/// exactly `eth + 40 + 32` bytes, which always fits in the request's buffer.
pub fn respond(
    frame: &mut [u8],
    mac: [u8; 6],
    addr4: Option<Ipv4Addr>,
    addr6: Option<Ipv6Addr>,
) -> (Outcome, usize) {
    let len = frame.len();
    let Some(&[hi, lo]) = frame.get(12..14) else {
        return (Outcome::NotNeighbor, len);
    };
    match u16::from_be_bytes([hi, lo]) {
        0x0806 => (arp(frame, mac, addr4), len),
        0x86dd => ns(frame, mac, addr6),
        _ => (Outcome::NotNeighbor, len),
    }
}

fn arp(frame: &mut [u8], mac: [u8; 6], addr4: Option<Ipv4Addr>) -> Outcome {
    let Some(ours) = addr4 else {
        return Outcome::Ignored;
    };
    let Some(a) = frame.get_mut(ethernet::HEADER_LEN..ethernet::HEADER_LEN + ARP_LEN) else {
        return Outcome::Ignored;
    };
    // Ethernet/IPv4 request: htype 1, ptype 0x0800, hlen 6, plen 4, oper 1.
    if a.get(0..8) != Some(&[0, 1, 8, 0, 6, 4, 0, 1][..]) {
        return Outcome::Ignored;
    }
    let mut sha = [0u8; 6];
    let mut spa = [0u8; 4];
    let mut tpa = [0u8; 4];
    sha.copy_from_slice(a.get(8..14).unwrap_or(&[0; 6]));
    spa.copy_from_slice(a.get(14..18).unwrap_or(&[0; 4]));
    tpa.copy_from_slice(a.get(24..28).unwrap_or(&[0; 4]));
    if Ipv4Addr::from(tpa) != ours || sha[0] & 1 != 0 {
        return Outcome::Ignored;
    }
    // oper = reply; sender = us; target = the asker.
    let mut reply = [0u8; ARP_LEN];
    reply[..6].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
    reply[6..8].copy_from_slice(&2u16.to_be_bytes());
    reply[8..14].copy_from_slice(&mac);
    reply[14..18].copy_from_slice(&tpa);
    reply[18..24].copy_from_slice(&sha);
    reply[24..28].copy_from_slice(&spa);
    a.copy_from_slice(&reply);
    set_eth(frame, sha, mac);
    Outcome::Replied
}

fn set_eth(frame: &mut [u8], dst: [u8; 6], src: [u8; 6]) {
    if let Some(d) = frame.get_mut(..6) {
        d.copy_from_slice(&dst);
    }
    if let Some(s) = frame.get_mut(6..12) {
        s.copy_from_slice(&src);
    }
}

fn ns(frame: &mut [u8], mac: [u8; 6], addr6: Option<Ipv6Addr>) -> (Outcome, usize) {
    let len = frame.len();
    let Some(ip) = frame.get(ethernet::HEADER_LEN..) else {
        return (Outcome::NotNeighbor, len);
    };
    // Only a bare IPv6 header followed by ICMPv6 type 135 is a solicitation; anything else is
    // ordinary IPv6 for the data path.
    if ip.len() < NS_MIN
        || ip.first().map(|b| b >> 4) != Some(6)
        || ip.get(6) != Some(&u8::from(IpProtocol::Icmpv6))
        || ip.get(40) != Some(&ICMPV6_NS)
    {
        return (Outcome::NotNeighbor, len);
    }
    let Some(ours) = addr6 else {
        return (Outcome::Ignored, len);
    };
    let octets = |r: core::ops::Range<usize>| -> [u8; 16] {
        let mut a = [0u8; 16];
        a.copy_from_slice(ip.get(r).unwrap_or(&[0; 16]));
        a
    };
    let src = Ipv6Addr::from(octets(8..24));
    let target = Ipv6Addr::from(octets(48..64));
    let payload_len = match ip.get(4..6) {
        Some(&[hi, lo]) => usize::from(u16::from_be_bytes([hi, lo])),
        _ => 0,
    };
    // RFC 4861 7.1.1: hop limit 255, code 0, ICMP length >= 24, checksum valid, target not
    // multicast.
    if ip.get(7) != Some(&255)
        || ip.get(41) != Some(&0)
        || payload_len < 24
        || ip.len() < 40 + payload_len
        || target.is_multicast()
        || target != ours
    {
        return (Outcome::Ignored, len);
    }
    let icmp = ip.get(40..40 + payload_len).unwrap_or(&[]);
    let dst = Ipv6Addr::from(octets(24..40));
    let sum = checksum::combine(&[
        checksum::pseudo_header_v6(&src, &dst, IpProtocol::Icmpv6, payload_len as u32),
        checksum::data(icmp),
    ]);
    if sum != 0xffff {
        return (Outcome::Ignored, len);
    }
    // The asker's link-layer address: the source link-layer option if present, else the
    // Ethernet source. From the unspecified address (DAD), answer to all-nodes.
    let mut asker_mac = [0u8; 6];
    asker_mac.copy_from_slice(frame.get(6..12).unwrap_or(&[0; 6]));
    let (reply_dst, solicited) = if src.is_unspecified() {
        (Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), false)
    } else {
        (src, true)
    };
    let eth_dst = if solicited {
        asker_mac
    } else {
        [0x33, 0x33, 0, 0, 0, 1]
    };

    // Build the advertisement: IPv6 header, NA with S (if solicited) and O flags, and our
    // target link-layer address option.
    let na_len = 32usize;
    let mut na = [0u8; 40 + 32];
    na[0] = 0x60;
    na[4..6].copy_from_slice(&(na_len as u16).to_be_bytes());
    na[6] = u8::from(IpProtocol::Icmpv6);
    na[7] = 255;
    na[8..24].copy_from_slice(&ours.octets());
    na[24..40].copy_from_slice(&reply_dst.octets());
    na[40] = ICMPV6_NA;
    na[44] = if solicited { 0x60 } else { 0x20 };
    na[48..64].copy_from_slice(&ours.octets());
    na[64] = 2; // target link-layer address
    na[65] = 1; // length in units of 8 bytes
    na[66..72].copy_from_slice(&mac);
    let c = !checksum::combine(&[
        checksum::pseudo_header_v6(&ours, &reply_dst, IpProtocol::Icmpv6, na_len as u32),
        checksum::data(&na[40..]),
    ]);
    na[42..44].copy_from_slice(&c.to_be_bytes());
    let new_len = ethernet::HEADER_LEN + na.len();
    let Some(body) = frame.get_mut(ethernet::HEADER_LEN..new_len) else {
        return (Outcome::Ignored, len);
    };
    body.copy_from_slice(&na);
    set_eth(frame, eth_dst, mac);
    (Outcome::Replied, new_len)
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::indexing_slicing, clippy::unwrap_used)]
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0xaa, 1];
    const HOST: [u8; 6] = [2, 0, 0, 0, 0x0a, 0xfe];

    pub(crate) fn arp_request(target: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&HOST);
        f.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&HOST);
        f.extend_from_slice(&[10, 1, 0, 10]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target);
        f.resize(60, 0);
        f
    }

    #[test]
    fn arp_request_for_us_becomes_a_reply() {
        let mut f = arp_request([10, 1, 0, 1]);
        let (o, len) = respond(&mut f, MAC, Some(Ipv4Addr::new(10, 1, 0, 1)), None);
        assert_eq!((o, len), (Outcome::Replied, 60));
        assert_eq!(&f[0..6], &HOST);
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[20..22], &[0, 2], "oper reply");
        assert_eq!(&f[22..28], &MAC);
        assert_eq!(&f[28..32], &[10, 1, 0, 1]);
        assert_eq!(&f[32..38], &HOST);
        assert_eq!(&f[38..42], &[10, 1, 0, 10]);
    }

    #[test]
    fn arp_for_others_and_garbage_is_ignored() {
        let ours = Some(Ipv4Addr::new(10, 1, 0, 1));
        let mut f = arp_request([10, 1, 0, 99]);
        assert_eq!(respond(&mut f, MAC, ours, None).0, Outcome::Ignored);
        let mut f = arp_request([10, 1, 0, 1]);
        f[21] = 2; // a reply, not a request
        assert_eq!(respond(&mut f, MAC, ours, None).0, Outcome::Ignored);
        for n in 0..42 {
            let mut f = arp_request([10, 1, 0, 1]);
            f.truncate(n);
            let (o, _) = respond(&mut f, MAC, ours, None);
            assert_ne!(o, Outcome::Replied, "truncated to {n}");
        }
    }

    fn ns_frame(target: Ipv6Addr, src: Ipv6Addr) -> Vec<u8> {
        let dst: Ipv6Addr = "ff02::1:ff00:1".parse().unwrap();
        let mut icmp = vec![ICMPV6_NS, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&target.octets());
        icmp.extend_from_slice(&[1, 1]);
        icmp.extend_from_slice(&HOST);
        let c = !checksum::combine(&[
            checksum::pseudo_header_v6(&src, &dst, IpProtocol::Icmpv6, icmp.len() as u32),
            checksum::data(&icmp),
        ]);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut f = vec![0x33, 0x33, 0xff, 0, 0, 1];
        f.extend_from_slice(&HOST);
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        f.extend_from_slice(&[58, 255]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(&icmp);
        f
    }

    #[test]
    fn neighbor_solicitation_for_us_becomes_an_advertisement() {
        let ours: Ipv6Addr = "fd00:a::1".parse().unwrap();
        let host: Ipv6Addr = "fd00:a::10".parse().unwrap();
        let mut f = ns_frame(ours, host);
        let (o, len) = respond(&mut f, MAC, None, Some(ours));
        assert_eq!(o, Outcome::Replied);
        assert_eq!(len, 14 + 72);
        let f = &f[..len];
        assert_eq!(&f[0..6], &HOST);
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[22..38], &ours.octets());
        assert_eq!(&f[38..54], &host.octets());
        assert_eq!(f[54], ICMPV6_NA);
        assert_eq!(f[58], 0x60, "solicited + override");
        assert_eq!(&f[62..78], &ours.octets());
        assert_eq!(&f[80..86], &MAC);
        // The checksum verifies.
        let sum = checksum::combine(&[
            checksum::pseudo_header_v6(&ours, &host, IpProtocol::Icmpv6, 32),
            checksum::data(&f[54..]),
        ]);
        assert_eq!(sum, 0xffff);
    }

    #[test]
    fn solicitations_that_are_not_ours_or_invalid_are_ignored() {
        let ours: Ipv6Addr = "fd00:a::1".parse().unwrap();
        let host: Ipv6Addr = "fd00:a::10".parse().unwrap();
        let mut f = ns_frame("fd00:a::2".parse().unwrap(), host);
        assert_eq!(respond(&mut f, MAC, None, Some(ours)).0, Outcome::Ignored);
        let mut f = ns_frame(ours, host);
        f[21] = 64; // hop limit must be 255
        assert_eq!(respond(&mut f, MAC, None, Some(ours)).0, Outcome::Ignored);
        let mut f = ns_frame(ours, host);
        f[60] ^= 1; // checksum breaks
        assert_eq!(respond(&mut f, MAC, None, Some(ours)).0, Outcome::Ignored);
        for n in 0..f.len() {
            let mut g = ns_frame(ours, host);
            g.truncate(n);
            assert_ne!(respond(&mut g, MAC, None, Some(ours)).0, Outcome::Replied);
        }
    }
}
