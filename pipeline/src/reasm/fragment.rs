//! One fragment as the reassembler reads it: its datagram's key, its data and, for the
//! offset-0 fragment, the headers the reassembled packet keeps.

use core::net::{Ipv4Addr, Ipv6Addr};

use super::{ReasmDrop, V6_MAX_UNFRAGMENTABLE};
use crate::wire::{ipv4, ipv6, ipv6frag, IpProtocol};

/// A datagram's identity: RFC 791 (source, destination, protocol, identification); RFC 8200
/// (source, destination, identification).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Key {
    pub(super) src: u128,
    pub(super) dst: u128,
    pub(super) ident: u32,
    /// IPv4's protocol; 0 for IPv6.
    pub(super) proto: u8,
    pub(super) v6: bool,
}

/// Whose quota a datagram counts against: an IPv4 address, or an IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct SourceKey {
    pub(super) addr: u128,
    pub(super) v6: bool,
}

impl SourceKey {
    pub(super) fn v4(a: Ipv4Addr) -> SourceKey {
        SourceKey {
            addr: u128::from(u32::from(a)),
            v6: false,
        }
    }

    pub(super) fn v6(a: Ipv6Addr) -> SourceKey {
        SourceKey {
            addr: u128::from(a) & !u128::from(u64::MAX),
            v6: true,
        }
    }
}

/// One parsed fragment.
pub(super) struct Fragment<'a> {
    pub(super) key: Key,
    pub(super) source: SourceKey,
    pub(super) offset: usize,
    pub(super) more: bool,
    pub(super) data: &'a [u8],
    /// What the reassembled packet keeps in front of the data (used from the offset-0
    /// fragment): IPv4's header, IPv6's unfragmentable part.
    pub(super) header: &'a [u8],
    /// IPv6: the offset in `header` of the byte naming the Fragment header.
    pub(super) nh_at: usize,
    /// IPv4's protocol; IPv6: the Fragment header's next header.
    pub(super) upper: u8,
    pub(super) ecn: u8,
    pub(super) atomic: bool,
}

pub(super) const ECN_NOT_ECT: u8 = 1;
pub(super) const ECN_CE: u8 = 8;

pub(super) fn ecn_bit(codepoint: u8) -> u8 {
    1 << (codepoint & 3)
}

/// The smallest upper-layer header a first fragment must hold whole.
pub(super) fn upper_header_len(p: IpProtocol) -> usize {
    match p {
        IpProtocol::Tcp => 20,
        IpProtocol::Udp | IpProtocol::Esp | IpProtocol::Icmp | IpProtocol::Icmpv6 => 8,
        _ => 0,
    }
}

pub(super) fn parse(ip: &[u8]) -> Result<Option<Fragment<'_>>, ReasmDrop> {
    match ip.first().map(|b| b >> 4) {
        Some(4) => parse_v4(ip),
        Some(6) => parse_v6(ip),
        _ => Err(ReasmDrop::Malformed),
    }
}

pub(super) fn parse_v4(ip: &[u8]) -> Result<Option<Fragment<'_>>, ReasmDrop> {
    let p = ipv4::Packet::new_checked(ip).map_err(|_| ReasmDrop::Malformed)?;
    if !p.verify_checksum() {
        return Err(ReasmDrop::Malformed);
    }
    if !p.is_fragment() {
        return Ok(None);
    }
    let offset = usize::from(p.frag_offset());
    // Within the buffer: `new_checked` checked both lengths.
    let (hl, total) = (usize::from(p.header_len()), usize::from(p.total_len()));
    let header = ip.get(..hl).ok_or(ReasmDrop::Malformed)?;
    let data = ip.get(hl..total).ok_or(ReasmDrop::Malformed)?;
    let more = p.more_frags();
    check_length(more, data.len())?;
    if offset == 0 && data.len() < upper_header_len(p.next_header()) {
        return Err(ReasmDrop::TinyFirstFragment);
    }
    Ok(Some(Fragment {
        key: Key {
            src: u128::from(u32::from(p.src_addr())),
            dst: u128::from(u32::from(p.dst_addr())),
            ident: u32::from(p.ident()),
            proto: p.protocol(),
            v6: false,
        },
        source: SourceKey::v4(p.src_addr()),
        offset,
        more,
        data,
        header,
        nh_at: 0,
        upper: p.protocol(),
        ecn: p.ecn(),
        atomic: false,
    }))
}

pub(super) fn parse_v6(ip: &[u8]) -> Result<Option<Fragment<'_>>, ReasmDrop> {
    let p = ipv6::Packet::new_checked(ip).map_err(|_| ReasmDrop::Malformed)?;
    let Some(loc) = ipv6frag::locate(&p).map_err(|_| ReasmDrop::Malformed)? else {
        return Ok(None);
    };
    let total = p.total_len();
    let fh = ipv6frag::Header::new_checked(ip.get(loc.header_at..total).unwrap_or(&[]))
        .map_err(|_| ReasmDrop::Malformed)?;
    let data = ip.get(loc.data_at()..total).ok_or(ReasmDrop::Malformed)?;
    let header = ip.get(..loc.header_at).ok_or(ReasmDrop::Malformed)?;
    let offset = usize::from(fh.frag_offset());
    let more = fh.more_frags();
    let atomic = fh.is_atomic();
    if !atomic {
        check_length(more, data.len())?;
    }
    if offset == 0 {
        if loc.header_at > V6_MAX_UNFRAGMENTABLE {
            return Err(ReasmDrop::HeadersTooLong);
        }
        if !atomic {
            first_fragment_chain(fh.next_header(), data)?;
        }
    }
    Ok(Some(Fragment {
        key: Key {
            src: u128::from(p.src_addr()),
            dst: u128::from(p.dst_addr()),
            ident: fh.ident(),
            proto: 0,
            v6: true,
        },
        source: SourceKey::v6(p.src_addr()),
        offset,
        more,
        data,
        header,
        nh_at: loc.next_header_at,
        upper: u8::from(fh.next_header()),
        ecn: p.ecn(),
        atomic,
    }))
}

/// RFC 8200 4.5: a non-last fragment's length is a non-zero multiple of 8; an empty fragment
/// carries nothing (Linux drops it too).
pub(super) fn check_length(more: bool, len: usize) -> Result<(), ReasmDrop> {
    if len == 0 || (more && len % 8 != 0) {
        Err(ReasmDrop::BadLength)
    } else {
        Ok(())
    }
}

/// RFC 7112: the first fragment holds every extension header after the Fragment header and
/// the upper-layer header.
pub(super) fn first_fragment_chain(first: IpProtocol, data: &[u8]) -> Result<(), ReasmDrop> {
    if first == IpProtocol::HOP_BY_HOP {
        return Err(ReasmDrop::Malformed);
    }
    let u = match ipv6::walk_ext_headers(first, data) {
        Ok(u) => u,
        Err(crate::wire::Error::Truncated) => return Err(ReasmDrop::TinyFirstFragment),
        Err(_) => return Err(ReasmDrop::Malformed),
    };
    if u.fragmented {
        return Err(ReasmDrop::Malformed);
    }
    if u.offset.saturating_add(upper_header_len(u.protocol)) > data.len() {
        return Err(ReasmDrop::TinyFirstFragment);
    }
    Ok(())
}
