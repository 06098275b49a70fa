//! IPv6 headers (RFC 8200) and a bounded walk over the extension headers in front of the
//! upper-layer header.
//!
//! The payload is bounded by the payload length field. Jumbograms (payload length 0 with a
//! Jumbo Payload option, RFC 2675) are not supported: they read as an empty payload.

use core::net::Ipv6Addr;

use super::bytes::{self, Field};
use super::{Error, IpProtocol, Result};

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;
/// The IPv6 minimum link MTU (RFC 8200 5); ICMPv6 errors are bounded by it (RFC 4443 2.4).
pub const MIN_MTU: usize = 1280;
/// At most this many extension headers are walked before giving up with `Unsupported`.
pub const MAX_EXT_HEADERS: usize = 8;

mod field {
    use super::Field;
    pub const VER_TC_FLOW: Field = 0..4;
    pub const LENGTH: Field = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Field = 8..24;
    pub const DST_ADDR: Field = 24..40;
}

/// Offsets inside an extension header.
mod ext {
    /// Next header: every extension header's first byte.
    pub const NEXT_HEADER: usize = 0;
    /// Hdr Ext Len (Hop-by-Hop, Routing, Destination): 8-octet units after the first 8.
    pub const LENGTH: usize = 1;
    /// The Fragment header's offset and M flag.
    pub const FRAG_OFF: super::Field = 2..4;
    /// The Fragment header's identification.
    pub const FRAG_IDENT: super::Field = 4..8;
    /// Length of the Fragment header, and the smallest extension header.
    pub const MIN_LEN: usize = 8;
}

/// A view of an IPv6 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps `buffer` and runs [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// `Truncated` if the buffer is shorter than the fixed header plus the payload length.
    /// The version is not checked here ([`Repr::parse`] does).
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN || len - HEADER_LEN < usize::from(self.payload_len()) {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    fn word0(&self) -> u32 {
        bytes::get_u32(self.b(), field::VER_TC_FLOW)
    }

    pub fn version(&self) -> u8 {
        (self.word0() >> 28) as u8
    }

    pub fn traffic_class(&self) -> u8 {
        (self.word0() >> 20) as u8
    }

    pub fn dscp(&self) -> u8 {
        self.traffic_class() >> 2
    }

    pub fn ecn(&self) -> u8 {
        self.traffic_class() & 0x03
    }

    pub fn flow_label(&self) -> u32 {
        self.word0() & 0x000f_ffff
    }

    pub fn payload_len(&self) -> u16 {
        bytes::get_u16(self.b(), field::LENGTH)
    }

    /// The fixed header's next header (see [`upper_layer`] for the upper-layer protocol).
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol::from(bytes::get_u8(self.b(), field::NXT_HDR))
    }

    pub fn hop_limit(&self) -> u8 {
        bytes::get_u8(self.b(), field::HOP_LIMIT)
    }

    pub fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(bytes::get_array::<16>(self.b(), field::SRC_ADDR))
    }

    pub fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(bytes::get_array::<16>(self.b(), field::DST_ADDR))
    }

    /// Total length: fixed header plus payload length.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + usize::from(self.payload_len())
    }

    /// Everything after the fixed header (extension headers included), bounded by the payload
    /// length.
    pub fn payload(&self) -> &[u8] {
        bytes::slice(self.b(), HEADER_LEN..self.total_len())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    fn set_word0(&mut self, v: u32) {
        bytes::set_u32(self.bm(), field::VER_TC_FLOW, v);
    }

    pub fn set_version(&mut self, v: u8) {
        let w = self.word0();
        self.set_word0((w & 0x0fff_ffff) | (u32::from(v & 0x0f) << 28));
    }

    pub fn set_traffic_class(&mut self, tc: u8) {
        let w = self.word0();
        self.set_word0((w & 0xf00f_ffff) | (u32::from(tc) << 20));
    }

    pub fn set_dscp(&mut self, v: u8) {
        let tc = self.traffic_class();
        self.set_traffic_class((tc & 0x03) | (v << 2));
    }

    pub fn set_ecn(&mut self, v: u8) {
        let tc = self.traffic_class();
        self.set_traffic_class((tc & 0xfc) | (v & 0x03));
    }

    pub fn set_flow_label(&mut self, v: u32) {
        let w = self.word0();
        self.set_word0((w & 0xfff0_0000) | (v & 0x000f_ffff));
    }

    pub fn set_payload_len(&mut self, v: u16) {
        bytes::set_u16(self.bm(), field::LENGTH, v);
    }

    pub fn set_next_header(&mut self, p: IpProtocol) {
        bytes::set_u8(self.bm(), field::NXT_HDR, p.into());
    }

    pub fn set_hop_limit(&mut self, v: u8) {
        bytes::set_u8(self.bm(), field::HOP_LIMIT, v);
    }

    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        bytes::set_bytes(self.bm(), field::SRC_ADDR, &a.octets());
    }

    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        bytes::set_bytes(self.bm(), field::DST_ADDR, &a.octets());
    }

    /// The payload, bounded by the payload length.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.total_len();
        bytes::slice_mut(self.bm(), HEADER_LEN..end)
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// Where the upper-layer header of an IPv6 packet is, after the extension headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UpperLayer {
    /// The upper-layer protocol (the last next header seen). May be `NoNextHeader`, or an
    /// extension header if the walk stopped at a non-first fragment.
    pub protocol: IpProtocol,
    /// Offset of the upper-layer header. From [`upper_layer`]: from the start of the IPv6
    /// header. From [`walk_ext_headers`]: from the start of the payload it was given.
    pub offset: usize,
    /// A Fragment header was seen.
    pub fragmented: bool,
    /// The fragment offset in bytes (0 if not fragmented). Non-zero means the upper-layer
    /// header is not in this packet: `offset` is where the fragment's data starts.
    pub fragment_offset: u16,
    /// The Fragment header's M flag.
    pub more_frags: bool,
    /// The Fragment header's identification (0 if not fragmented).
    pub fragment_ident: u32,
}

/// Walks the extension headers of a checked packet. See [`walk_ext_headers`].
pub fn upper_layer<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<UpperLayer> {
    packet.check_len()?;
    let mut u = walk_ext_headers(packet.next_header(), packet.payload())?;
    u.offset = u.offset.checked_add(HEADER_LEN).ok_or(Error::Malformed)?;
    Ok(u)
}

/// Walks Hop-by-Hop, Routing, Destination Options and Fragment headers starting with `first`
/// over `payload` (what follows the fixed header) to the upper-layer protocol.
///
/// Checks: every header lies within `payload` (`Truncated`), Hop-by-Hop only comes first
/// (`Malformed`, RFC 8200 4.1), at most [`MAX_EXT_HEADERS`] headers (`Unsupported`). The walk
/// stops at the first protocol that is not one of those four, and after a Fragment header with
/// a non-zero offset (what follows it is data, not a header). AH is not walked: it is returned
/// as the upper layer.
pub fn walk_ext_headers(first: IpProtocol, payload: &[u8]) -> Result<UpperLayer> {
    let mut u = UpperLayer {
        protocol: first,
        offset: 0,
        fragmented: false,
        fragment_offset: 0,
        more_frags: false,
        fragment_ident: 0,
    };
    for i in 0..=MAX_EXT_HEADERS {
        let hdr = payload.get(u.offset..).unwrap_or(&[]);
        let len = match u.protocol {
            IpProtocol::HOP_BY_HOP if i != 0 => return Err(Error::Malformed),
            IpProtocol::HOP_BY_HOP | IpProtocol::IPV6_ROUTE | IpProtocol::IPV6_OPTS => {
                let units = usize::from(*hdr.get(ext::LENGTH).ok_or(Error::Truncated)?);
                (units + 1) * ext::MIN_LEN
            }
            IpProtocol::IPV6_FRAG => ext::MIN_LEN,
            _ => return Ok(u),
        };
        if i == MAX_EXT_HEADERS {
            return Err(Error::Unsupported);
        }
        if hdr.len() < len {
            return Err(Error::Truncated);
        }
        let next = IpProtocol::from(bytes::get_u8(hdr, ext::NEXT_HEADER));
        if u.protocol == IpProtocol::IPV6_FRAG {
            let off = bytes::get_u16(hdr, ext::FRAG_OFF);
            u.fragmented = true;
            u.fragment_offset = off & 0xfff8;
            u.more_frags = off & 0x0001 != 0;
            u.fragment_ident = bytes::get_u32(hdr, ext::FRAG_IDENT);
        }
        u.protocol = next;
        u.offset = u.offset.checked_add(len).ok_or(Error::Malformed)?;
        if u.fragment_offset != 0 {
            return Ok(u);
        }
    }
    Err(Error::Unsupported)
}

/// A parsed IPv6 fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Repr {
    pub src_addr: Ipv6Addr,
    pub dst_addr: Ipv6Addr,
    /// The fixed header's next header.
    pub next_header: IpProtocol,
    /// Payload length (extension headers included).
    pub payload_len: usize,
    pub hop_limit: u8,
    pub dscp: u8,
    pub ecn: u8,
    pub flow_label: u32,
}

impl Repr {
    /// Parses a checked packet: `Malformed` for a version other than 6.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr> {
        packet.check_len()?;
        if packet.version() != 6 {
            return Err(Error::Malformed);
        }
        Ok(Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.payload_len()),
            hop_limit: packet.hop_limit(),
            dscp: packet.dscp(),
            ecn: packet.ecn(),
            flow_label: packet.flow_label(),
        })
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes the fixed header. The payload length is clamped to 65535 (larger is a caller
    /// bug).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_version(6);
        packet.set_traffic_class(0);
        packet.set_dscp(self.dscp);
        packet.set_ecn(self.ecn);
        packet.set_flow_label(self.flow_label);
        packet.set_payload_len(u16::try_from(self.payload_len).unwrap_or(u16::MAX));
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
    }
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
mod tests {
    use super::*;
    use crate::wire::checksum::tests::Rng;

    fn repr(payload_len: usize, nh: IpProtocol) -> Repr {
        Repr {
            src_addr: "2001:db8::1".parse().unwrap(),
            dst_addr: "2001:db8:1::2".parse().unwrap(),
            next_header: nh,
            payload_len,
            hop_limit: 64,
            dscp: 46,
            ecn: 1,
            flow_label: 0xabcde,
        }
    }

    fn packet(r: &Repr, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; HEADER_LEN + payload.len()];
        r.emit(&mut Packet::new_unchecked(&mut buf[..]));
        buf[HEADER_LEN..].copy_from_slice(payload);
        buf
    }

    #[test]
    fn round_trip_and_accessors() {
        let r = repr(4, IpProtocol::Udp);
        let mut buf = packet(&r, &[1, 2, 3, 4]);
        buf.extend_from_slice(&[9; 6]); // trailing bytes beyond the payload length
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), (46 << 2) | 1);
        assert_eq!(p.flow_label(), 0xabcde);
        assert_eq!(p.payload(), &[1, 2, 3, 4]);
        assert_eq!(Repr::parse(&p).unwrap(), r);
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_ecn(3);
        p.set_dscp(0);
        p.set_hop_limit(1);
        p.payload_mut()[0] = 0xff;
        assert_eq!(p.flow_label(), 0xabcde);
        assert_eq!((p.dscp(), p.ecn(), p.hop_limit()), (0, 3, 1));
        assert_eq!(p.payload()[0], 0xff);
    }

    #[test]
    fn truncated_and_bad_version() {
        let buf = packet(&repr(4, IpProtocol::Udp), &[1, 2, 3, 4]);
        for n in 0..buf.len() {
            assert_eq!(
                Packet::new_checked(&buf[..n]).unwrap_err(),
                Error::Truncated
            );
        }
        let mut b = buf.clone();
        b[0] = 0x45;
        assert_eq!(
            Repr::parse(&Packet::new_checked(&b[..]).unwrap()),
            Err(Error::Malformed)
        );
    }

    #[test]
    fn ext_header_walk() {
        // Hop-by-Hop (8) -> Destination (16) -> Fragment (first, M=1) -> UDP
        let mut pl = vec![];
        pl.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]);
        pl.extend_from_slice(&[44, 1, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        pl.extend_from_slice(&[17, 0, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef]);
        pl.extend_from_slice(&[0x12, 0x34, 0x00, 0x35, 0, 8, 0, 0]);
        let buf = packet(&repr(pl.len(), IpProtocol::HOP_BY_HOP), &pl);
        let p = Packet::new_checked(&buf[..]).unwrap();
        let u = upper_layer(&p).unwrap();
        assert_eq!(u.protocol, IpProtocol::Udp);
        assert_eq!(u.offset, HEADER_LEN + 32);
        assert!(u.fragmented && u.more_frags);
        assert_eq!(u.fragment_offset, 0);
        assert_eq!(u.fragment_ident, 0xdeadbeef);

        // non-first fragment: the walk stops after the Fragment header
        let frag = [6, 0, 0x05, 0xc8, 0, 0, 0, 1, 0xaa, 0xbb];
        let u = walk_ext_headers(IpProtocol::IPV6_FRAG, &frag).unwrap();
        assert_eq!(u.protocol, IpProtocol::Tcp);
        assert_eq!(u.fragment_offset, 1480);
        assert!(!u.more_frags);
        assert_eq!(u.offset, 8);

        // no extension headers
        let u = walk_ext_headers(IpProtocol::Esp, &[]).unwrap();
        assert_eq!(
            (u.protocol, u.offset, u.fragmented),
            (IpProtocol::Esp, 0, false)
        );

        // Hop-by-Hop not first
        let bad = [0, 0, 0, 0, 0, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            walk_ext_headers(IpProtocol::IPV6_OPTS, &bad),
            Err(Error::Malformed)
        );
        // truncated header
        assert_eq!(
            walk_ext_headers(IpProtocol::IPV6_OPTS, &[17]),
            Err(Error::Truncated)
        );
        assert_eq!(
            walk_ext_headers(IpProtocol::IPV6_OPTS, &[17, 1, 0, 0, 0, 0, 0, 0]),
            Err(Error::Truncated)
        );
        // a chain longer than MAX_EXT_HEADERS
        let chain: Vec<u8> = (0..MAX_EXT_HEADERS + 1)
            .flat_map(|_| [60u8, 0, 0, 0, 0, 0, 0, 0])
            .collect();
        assert_eq!(
            walk_ext_headers(IpProtocol::IPV6_OPTS, &chain),
            Err(Error::Unsupported)
        );
        let chain: Vec<u8> = (0..MAX_EXT_HEADERS)
            .flat_map(|i| {
                [
                    if i + 1 == MAX_EXT_HEADERS { 17 } else { 60u8 },
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                ]
            })
            .collect();
        assert_eq!(
            walk_ext_headers(IpProtocol::IPV6_OPTS, &chain)
                .unwrap()
                .offset,
            8 * MAX_EXT_HEADERS
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng(99);
        for _ in 0..5000 {
            let n = rng.below(120);
            let mut g = rng.bytes(n);
            if n > 5 && rng.below(2) == 0 {
                let pl = n.saturating_sub(HEADER_LEN) as u16;
                g[4..6].copy_from_slice(&pl.to_be_bytes());
            }
            if let Ok(p) = Packet::new_checked(&g[..]) {
                let _ = Repr::parse(&p);
                if let Ok(u) = upper_layer(&p) {
                    assert!(u.offset <= n);
                }
            }
            let p = Packet::new_unchecked(&g[..]);
            let _ = (p.payload(), p.src_addr(), p.flow_label());
            let _ = upper_layer(&p);
        }
    }
}
