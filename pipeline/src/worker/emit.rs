//! What the worker writes into a frame it forwards: the hop limit (RFC 1624 checksum update),
//! the RFC 6040 ECN outcome after decapsulation, the Ethernet header toward a link.

use crate::port::Frame;
use crate::wire::{checksum, ethernet, ipv4, ipv6, EtherType};

/// Decrements TTL / hop limit of the IP packet after the Ethernet header (RFC 1624 update).
#[inline]
pub(super) fn decrement_hop_limit<F: Frame>(f: &mut F, ipv6: bool) -> bool {
    let Some(ip) = f.data_mut().get_mut(ethernet::HEADER_LEN..) else {
        return false;
    };
    dec_hop(ip, ipv6)
}

#[inline]
fn dec_hop(ip: &mut [u8], ipv6: bool) -> bool {
    if ipv6 {
        let mut p = ipv6::Packet::new_unchecked(ip);
        let h = p.hop_limit();
        p.set_hop_limit(h.saturating_sub(1));
        true
    } else {
        // RFC 1624 incremental update: TTL shares a 16-bit word with the protocol.
        let mut p = ipv4::Packet::new_unchecked(ip);
        let h = p.hop_limit();
        let proto = u16::from(p.protocol());
        let old = (u16::from(h) << 8) | proto;
        let new = (u16::from(h.saturating_sub(1)) << 8) | proto;
        let ck = checksum::update16(p.checksum(), old, new);
        p.set_hop_limit(h.saturating_sub(1));
        p.set_checksum(ck);
        true
    }
}

/// After decapsulation: hop limit minus one and the RFC 6040 ECN outcome.
#[inline]
pub(super) fn rewrite_inner(ip: &mut [u8], ipv6: bool, ecn: u8) -> bool {
    if ipv6 {
        ipv6::Packet::new_unchecked(&mut *ip).set_ecn(ecn);
    } else {
        let mut p = ipv4::Packet::new_unchecked(&mut *ip);
        if p.ecn() != ecn {
            p.set_ecn(ecn);
            p.fill_checksum();
        }
    }
    dec_hop(ip, ipv6)
}

/// Prepends an Ethernet header from `src` to `dst`. False if there is no headroom.
#[inline]
pub(super) fn push_eth_to<F: Frame>(f: &mut F, src: [u8; 6], dst: [u8; 6], ipv6: bool) -> bool {
    if !f.prepend(ethernet::HEADER_LEN) {
        return false;
    }
    // Destination, source, EtherType: three plain copies (every forwarded packet does this).
    let Ok(mut eth) = ethernet::Frame::new_checked(f.data_mut()) else {
        return false;
    };
    eth.set_dst_addr(dst);
    eth.set_src_addr(src);
    eth.set_ethertype(if ipv6 {
        EtherType::Ipv6
    } else {
        EtherType::Ipv4
    });
    true
}
