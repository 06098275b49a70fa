//! The IPv6 Fragment extension header (RFC 8200 4.5) and where it sits in a packet.
//!
//! ```text
//!  0               1               2               3
//! +---------------+---------------+-------------------------+-+-+
//! |  Next Header  |   Reserved    |    Fragment Offset      |Res|M|
//! +---------------+---------------+-------------------------+-+-+
//! |                        Identification                         |
//! +---------------------------------------------------------------+
//! ```
//!
//! [`locate`] finds the Fragment header behind the per-fragment headers (Hop-by-Hop,
//! Destination Options, Routing: the unfragmentable part) and says which byte names it, so a
//! reassembler can rewrite that byte to the upper-layer protocol and drop the header.

use super::bytes::{self, Field};
use super::{ipv6, Error, IpProtocol, Result};

/// Length of the Fragment header.
pub const HEADER_LEN: usize = 8;

mod field {
    use super::Field;
    pub const NEXT_HEADER: usize = 0;
    pub const RESERVED: usize = 1;
    /// Offset (13 bits, in 8-octet units), two reserved bits, the M flag.
    pub const OFF_M: Field = 2..4;
    pub const IDENT: Field = 4..8;
}

/// Offsets common to Hop-by-Hop, Destination Options and Routing headers.
mod ext {
    pub const NEXT_HEADER: usize = 0;
    /// Hdr Ext Len: 8-octet units after the first 8.
    pub const LENGTH: usize = 1;
}

const OFFSET_MASK: u16 = 0xfff8;
const RES_MASK: u16 = 0x0006;
const M_FLAG: u16 = 0x0001;

/// A view of a Fragment header (the buffer may go on past it: only the first 8 bytes are read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> Header<T> {
        Header { buffer }
    }

    /// Wraps `buffer` and runs [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Header<T>> {
        let h = Self::new_unchecked(buffer);
        h.check_len()?;
        Ok(h)
    }

    /// `Truncated` if the buffer is shorter than the 8-byte header.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// The protocol of the fragmentable part (only the offset-0 fragment's counts, RFC 8200).
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol::from(bytes::get_u8(self.b(), field::NEXT_HEADER))
    }

    /// The 8-bit reserved field (sent as zero, ignored on receipt).
    pub fn reserved(&self) -> u8 {
        bytes::get_u8(self.b(), field::RESERVED)
    }

    /// The fragment offset in bytes (the field times 8).
    pub fn frag_offset(&self) -> u16 {
        bytes::get_u16(self.b(), field::OFF_M) & OFFSET_MASK
    }

    /// The two reserved bits between the offset and the M flag.
    pub fn res_bits(&self) -> u8 {
        ((bytes::get_u16(self.b(), field::OFF_M) & RES_MASK) >> 1) as u8
    }

    /// The M (more fragments) flag.
    pub fn more_frags(&self) -> bool {
        bytes::get_u16(self.b(), field::OFF_M) & M_FLAG != 0
    }

    pub fn ident(&self) -> u32 {
        bytes::get_u32(self.b(), field::IDENT)
    }

    /// An atomic fragment (offset 0, M clear): RFC 6946 says to process it on its own.
    pub fn is_atomic(&self) -> bool {
        self.frag_offset() == 0 && !self.more_frags()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    pub fn set_next_header(&mut self, p: IpProtocol) {
        bytes::set_u8(self.bm(), field::NEXT_HEADER, p.into());
    }

    pub fn set_reserved(&mut self, v: u8) {
        bytes::set_u8(self.bm(), field::RESERVED, v);
    }

    /// Sets the offset in bytes (rounded down to a multiple of 8), keeping the flags.
    pub fn set_frag_offset(&mut self, offset: u16) {
        let v = bytes::get_u16(self.b(), field::OFF_M);
        bytes::set_u16(
            self.bm(),
            field::OFF_M,
            (v & !OFFSET_MASK) | (offset & OFFSET_MASK),
        );
    }

    pub fn set_more_frags(&mut self, on: bool) {
        let v = bytes::get_u16(self.b(), field::OFF_M);
        let v = if on { v | M_FLAG } else { v & !M_FLAG };
        bytes::set_u16(self.bm(), field::OFF_M, v);
    }

    pub fn set_ident(&mut self, v: u32) {
        bytes::set_u32(self.bm(), field::IDENT, v);
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Header<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// A parsed Fragment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Repr {
    pub next_header: IpProtocol,
    /// In bytes, a multiple of 8.
    pub frag_offset: u16,
    pub more_frags: bool,
    pub ident: u32,
}

impl Repr {
    /// Parses a checked header. The reserved fields are ignored, as RFC 8200 says.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(header: &Header<&T>) -> Result<Repr> {
        header.check_len()?;
        Ok(Repr {
            next_header: header.next_header(),
            frag_offset: header.frag_offset(),
            more_frags: header.more_frags(),
            ident: header.ident(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header with zero reserved fields (the offset rounded down to a multiple of
    /// 8); a buffer shorter than 8 bytes is left incomplete.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, header: &mut Header<T>) {
        header.set_next_header(self.next_header);
        header.set_reserved(0);
        bytes::set_u16(header.bm(), field::OFF_M, 0);
        header.set_frag_offset(self.frag_offset);
        header.set_more_frags(self.more_frags);
        header.set_ident(self.ident);
    }
}

/// Where the Fragment header of an IPv6 packet is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// Offset of the Fragment header from the start of the IPv6 header; everything before it
    /// is the unfragmentable part (fixed header, Hop-by-Hop, Destination Options, Routing).
    pub header_at: usize,
    /// Offset of the byte whose value is 44 (the fixed header's Next Header, or the Next
    /// Header of the last unfragmentable extension header).
    pub next_header_at: usize,
}

impl Location {
    /// Offset of the fragment's data (after the Fragment header).
    pub const fn data_at(&self) -> usize {
        self.header_at + HEADER_LEN
    }
}

/// Finds the Fragment header of a checked packet: `Ok(None)` if the headers in front of the
/// upper layer (Hop-by-Hop first only, Destination Options, Routing; at most
/// [`ipv6::MAX_EXT_HEADERS`]) lead to something else. Every header walked, the Fragment header
/// included, lies within the payload length (`Truncated`); Hop-by-Hop after the first
/// position is `Malformed`; a longer chain is `Unsupported`.
pub fn locate<T: AsRef<[u8]>>(packet: &ipv6::Packet<T>) -> Result<Option<Location>> {
    packet.check_len()?;
    let end = packet.total_len();
    let b = packet.as_ref();
    let mut at = ipv6::HEADER_LEN;
    let mut nh_at = 6usize;
    for i in 0..=ipv6::MAX_EXT_HEADERS {
        let proto = IpProtocol::from(bytes::get_u8(b, nh_at));
        let len = match proto {
            IpProtocol::IPV6_FRAG => {
                let hdr_end = at.checked_add(HEADER_LEN).ok_or(Error::Malformed)?;
                if hdr_end > end {
                    return Err(Error::Truncated);
                }
                return Ok(Some(Location {
                    header_at: at,
                    next_header_at: nh_at,
                }));
            }
            IpProtocol::HOP_BY_HOP if i != 0 => return Err(Error::Malformed),
            IpProtocol::HOP_BY_HOP | IpProtocol::IPV6_ROUTE | IpProtocol::IPV6_OPTS => {
                let len_at = at.checked_add(ext::LENGTH).ok_or(Error::Malformed)?;
                if len_at >= end {
                    return Err(Error::Truncated);
                }
                let units = usize::from(bytes::get_u8(b, len_at));
                units.saturating_add(1).saturating_mul(8)
            }
            _ => return Ok(None),
        };
        if i == ipv6::MAX_EXT_HEADERS {
            return Err(Error::Unsupported);
        }
        let next = at.checked_add(len).ok_or(Error::Malformed)?;
        if next > end {
            return Err(Error::Truncated);
        }
        nh_at = at.checked_add(ext::NEXT_HEADER).ok_or(Error::Malformed)?;
        at = next;
    }
    Err(Error::Unsupported)
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

    fn packet(first: IpProtocol, payload: &[u8]) -> Vec<u8> {
        let r = ipv6::Repr {
            src_addr: "2001:db8::1".parse().unwrap(),
            dst_addr: "2001:db8::2".parse().unwrap(),
            next_header: first,
            payload_len: payload.len(),
            hop_limit: 64,
            dscp: 0,
            ecn: 0,
            flow_label: 0,
        };
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(&mut ipv6::Packet::new_unchecked(&mut b[..]));
        b[ipv6::HEADER_LEN..].copy_from_slice(payload);
        b
    }

    #[test]
    fn accessors_and_round_trip() {
        // next header ESP, offset 1480 (185 units), M set, ident 0xdeadbeef
        let raw = [50u8, 0, 0x05, 0xc9, 0xde, 0xad, 0xbe, 0xef];
        let h = Header::new_checked(&raw[..]).unwrap();
        assert_eq!(h.next_header(), IpProtocol::Esp);
        assert_eq!(h.frag_offset(), 1480);
        assert!(h.more_frags());
        assert_eq!(h.res_bits(), 0);
        assert_eq!(h.ident(), 0xdead_beef);
        assert!(!h.is_atomic());
        let r = Repr::parse(&h).unwrap();
        let mut out = [0xffu8; 8];
        r.emit(&mut Header::new_unchecked(&mut out[..]));
        assert_eq!(out, raw);
        // reserved fields are ignored on parse and zeroed on emit
        let raw2 = [17u8, 0xaa, 0x00, 0x06, 0, 0, 0, 1];
        let h = Header::new_checked(&raw2[..]).unwrap();
        assert_eq!((h.reserved(), h.res_bits()), (0xaa, 3));
        assert!(h.is_atomic());
        let r = Repr::parse(&h).unwrap();
        r.emit(&mut Header::new_unchecked(&mut out[..]));
        assert_eq!(out, [17, 0, 0, 0, 0, 0, 0, 1]);
        // setters keep the other bits
        let mut b = raw;
        let mut h = Header::new_unchecked(&mut b[..]);
        h.set_more_frags(false);
        assert_eq!(h.frag_offset(), 1480);
        h.set_frag_offset(8 * 8191 + 7);
        assert_eq!(h.frag_offset(), 65528);
        assert!(!h.more_frags());
    }

    #[test]
    fn truncated_never_panics() {
        for n in 0..HEADER_LEN {
            let b = [0xffu8; 8];
            assert_eq!(Header::new_checked(&b[..n]).unwrap_err(), Error::Truncated);
            let h = Header::new_unchecked(&b[..n]);
            let _ = (h.next_header(), h.frag_offset(), h.more_frags(), h.ident());
            let mut m = [0u8; 8];
            Repr {
                next_header: IpProtocol::Udp,
                frag_offset: 8,
                more_frags: true,
                ident: 1,
            }
            .emit(&mut Header::new_unchecked(&mut m[..n]));
        }
    }

    #[test]
    fn locate_walks_the_unfragmentable_part() {
        let frag = [17u8, 0, 0, 1, 0, 0, 0, 9];
        // bare: fixed header -> Fragment
        let mut pl = frag.to_vec();
        pl.extend_from_slice(&[0; 16]);
        let b = packet(IpProtocol::IPV6_FRAG, &pl);
        let p = ipv6::Packet::new_checked(&b[..]).unwrap();
        let l = locate(&p).unwrap().unwrap();
        assert_eq!((l.header_at, l.next_header_at, l.data_at()), (40, 6, 48));
        // Hop-by-Hop (8) -> Routing (16) -> Fragment
        let mut pl = vec![43u8, 0, 0, 0, 0, 0, 0, 0];
        pl.extend_from_slice(&[44, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        pl.extend_from_slice(&frag);
        let b = packet(IpProtocol::HOP_BY_HOP, &pl);
        let p = ipv6::Packet::new_checked(&b[..]).unwrap();
        let l = locate(&p).unwrap().unwrap();
        assert_eq!((l.header_at, l.next_header_at), (64, 48));
        assert_eq!(b[l.next_header_at], 44);
        // not fragmented
        let b = packet(IpProtocol::Esp, &[0; 16]);
        assert_eq!(
            locate(&ipv6::Packet::new_checked(&b[..]).unwrap()),
            Ok(None)
        );
        let b = packet(IpProtocol::IPV6_OPTS, &[50, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            locate(&ipv6::Packet::new_checked(&b[..]).unwrap()),
            Ok(None)
        );
        // a Fragment header cut by the payload length
        let b = packet(IpProtocol::IPV6_FRAG, &frag[..7]);
        assert_eq!(
            locate(&ipv6::Packet::new_checked(&b[..]).unwrap()),
            Err(Error::Truncated)
        );
        // Hop-by-Hop not first
        let b = packet(
            IpProtocol::IPV6_OPTS,
            &[0, 0, 0, 0, 0, 0, 0, 0, 44, 0, 0, 0],
        );
        assert_eq!(
            locate(&ipv6::Packet::new_checked(&b[..]).unwrap()),
            Err(Error::Malformed)
        );
        // an extension header longer than the packet
        let b = packet(IpProtocol::IPV6_OPTS, &[44, 2, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            locate(&ipv6::Packet::new_checked(&b[..]).unwrap()),
            Err(Error::Truncated)
        );
        // too long a chain
        let chain: Vec<u8> = (0..=ipv6::MAX_EXT_HEADERS)
            .flat_map(|_| [60u8, 0, 0, 0, 0, 0, 0, 0])
            .collect();
        let b = packet(IpProtocol::IPV6_OPTS, &chain);
        assert_eq!(
            locate(&ipv6::Packet::new_checked(&b[..]).unwrap()),
            Err(Error::Unsupported)
        );
    }

    #[test]
    fn locate_agrees_with_the_walk_on_garbage() {
        let mut rng = Rng(44);
        for _ in 0..20000 {
            let n = 40 + rng.below(60);
            let mut g = rng.bytes(n);
            g[0] = 0x60;
            g[4..6].copy_from_slice(&((n - 40) as u16).to_be_bytes());
            // bias the headers toward the extension types
            let types = [0u8, 43, 44, 60, 17, 50];
            g[6] = types[rng.below(types.len())];
            for at in [40usize, 48, 56] {
                if at < n && rng.below(2) == 0 {
                    g[at] = types[rng.below(types.len())];
                    if at + 1 < n {
                        g[at + 1] = (rng.below(3)) as u8;
                    }
                }
            }
            let p = ipv6::Packet::new_checked(&g[..]).unwrap();
            let walk = ipv6::upper_layer(&p);
            match locate(&p) {
                Ok(Some(l)) => {
                    assert!(l.data_at() <= p.total_len());
                    assert_eq!(g[l.next_header_at], 44);
                    // the walk saw the same Fragment header (unless it failed further on)
                    if let Ok(u) = walk {
                        assert!(u.fragmented, "{g:02x?}");
                    }
                }
                Ok(None) => {
                    if let Ok(u) = walk {
                        assert!(!u.fragmented, "{g:02x?}");
                    }
                }
                Err(_) => {}
            }
        }
    }
}
