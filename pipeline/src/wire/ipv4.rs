//! IPv4 headers (RFC 791). Options are skipped (but their length is checked); the payload is
//! bounded by the total length field, not by the buffer.

use core::net::Ipv4Addr;

use super::bytes::{self, Field};
use super::{checksum, Error, IpProtocol, Result};

/// Length of a header without options (what [`Repr::emit`] writes).
pub const HEADER_LEN: usize = 20;
/// Longest header (IHL 15).
pub const MAX_HEADER_LEN: usize = 60;
/// Every IPv4 host must accept a datagram of this size (RFC 791); ICMP errors are bounded by it
/// (RFC 1812 4.3.2.3).
pub const MIN_MTU: usize = 576;

mod field {
    use super::Field;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC_ADDR: Field = 12..16;
    pub const DST_ADDR: Field = 16..20;
}

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const FRAG_OFF_MASK: u16 = 0x1fff;

/// A view of an IPv4 packet.
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

    /// Checks that the buffer holds the fixed header, that the header length is at least 20 and
    /// within the buffer, and that the total length covers the header and is within the
    /// buffer (`Truncated` / `Malformed`). The version is not checked here
    /// ([`Repr::parse`] does).
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let hl = usize::from(self.header_len());
        if hl < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len < hl {
            return Err(Error::Truncated);
        }
        let total = usize::from(self.total_len());
        if total < hl {
            return Err(Error::Malformed);
        }
        if len < total {
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

    pub fn version(&self) -> u8 {
        bytes::get_u8(self.b(), field::VER_IHL) >> 4
    }

    /// Header length in bytes (IHL * 4), options included.
    pub fn header_len(&self) -> u8 {
        (bytes::get_u8(self.b(), field::VER_IHL) & 0x0f) * 4
    }

    pub fn dscp(&self) -> u8 {
        bytes::get_u8(self.b(), field::DSCP_ECN) >> 2
    }

    pub fn ecn(&self) -> u8 {
        bytes::get_u8(self.b(), field::DSCP_ECN) & 0x03
    }

    pub fn total_len(&self) -> u16 {
        bytes::get_u16(self.b(), field::LENGTH)
    }

    pub fn ident(&self) -> u16 {
        bytes::get_u16(self.b(), field::IDENT)
    }

    pub fn dont_frag(&self) -> bool {
        bytes::get_u16(self.b(), field::FLG_OFF) & FLAG_DF != 0
    }

    pub fn more_frags(&self) -> bool {
        bytes::get_u16(self.b(), field::FLG_OFF) & FLAG_MF != 0
    }

    /// Fragment offset in bytes (the field times 8).
    pub fn frag_offset(&self) -> u16 {
        (bytes::get_u16(self.b(), field::FLG_OFF) & FRAG_OFF_MASK) << 3
    }

    /// True for any fragment (first or not).
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    /// Time to live.
    pub fn hop_limit(&self) -> u8 {
        bytes::get_u8(self.b(), field::TTL)
    }

    #[inline]
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol::from(self.protocol())
    }

    /// The protocol number as it is on the wire (the hot path's flow key wants the number,
    /// not the enum).
    #[inline]
    pub fn protocol(&self) -> u8 {
        bytes::get_u8(self.b(), field::PROTOCOL)
    }

    pub fn checksum(&self) -> u16 {
        bytes::get_u16(self.b(), field::CHECKSUM)
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(bytes::get_array::<4>(self.b(), field::SRC_ADDR))
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(bytes::get_array::<4>(self.b(), field::DST_ADDR))
    }

    /// The options (between the fixed header and the payload), unparsed.
    pub fn options(&self) -> &[u8] {
        bytes::slice(self.b(), HEADER_LEN..usize::from(self.header_len()))
    }

    /// The header, options included.
    #[inline]
    pub fn header(&self) -> &[u8] {
        bytes::slice(self.b(), ..usize::from(self.header_len()))
    }

    /// The payload: from the end of the header to the total length.
    #[inline(always)]
    pub fn payload(&self) -> &[u8] {
        bytes::slice(
            self.b(),
            usize::from(self.header_len())..usize::from(self.total_len()),
        )
    }

    /// True if the header checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::data(self.header()) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    pub fn set_version(&mut self, v: u8) {
        let b = bytes::get_u8(self.b(), field::VER_IHL);
        bytes::set_u8(self.bm(), field::VER_IHL, (b & 0x0f) | (v << 4));
    }

    /// Sets the header length in bytes (rounded down to a multiple of 4, at most 60).
    pub fn set_header_len(&mut self, len: u8) {
        let b = bytes::get_u8(self.b(), field::VER_IHL);
        bytes::set_u8(self.bm(), field::VER_IHL, (b & 0xf0) | ((len / 4) & 0x0f));
    }

    pub fn set_dscp(&mut self, v: u8) {
        let b = bytes::get_u8(self.b(), field::DSCP_ECN);
        bytes::set_u8(self.bm(), field::DSCP_ECN, (b & 0x03) | (v << 2));
    }

    pub fn set_ecn(&mut self, v: u8) {
        let b = bytes::get_u8(self.b(), field::DSCP_ECN);
        bytes::set_u8(self.bm(), field::DSCP_ECN, (b & 0xfc) | (v & 0x03));
    }

    pub fn set_total_len(&mut self, v: u16) {
        bytes::set_u16(self.bm(), field::LENGTH, v);
    }

    pub fn set_ident(&mut self, v: u16) {
        bytes::set_u16(self.bm(), field::IDENT, v);
    }

    /// Clears DF, MF and the fragment offset.
    pub fn clear_flags(&mut self) {
        bytes::set_u16(self.bm(), field::FLG_OFF, 0);
    }

    fn set_flag(&mut self, flag: u16, on: bool) {
        let v = bytes::get_u16(self.b(), field::FLG_OFF);
        let v = if on { v | flag } else { v & !flag };
        bytes::set_u16(self.bm(), field::FLG_OFF, v);
    }

    pub fn set_dont_frag(&mut self, on: bool) {
        self.set_flag(FLAG_DF, on);
    }

    pub fn set_more_frags(&mut self, on: bool) {
        self.set_flag(FLAG_MF, on);
    }

    /// Sets the fragment offset in bytes (rounded down to a multiple of 8).
    pub fn set_frag_offset(&mut self, offset: u16) {
        let v = bytes::get_u16(self.b(), field::FLG_OFF);
        bytes::set_u16(
            self.bm(),
            field::FLG_OFF,
            (v & !FRAG_OFF_MASK) | (offset >> 3),
        );
    }

    /// Sets the time to live.
    pub fn set_hop_limit(&mut self, v: u8) {
        bytes::set_u8(self.bm(), field::TTL, v);
    }

    pub fn set_next_header(&mut self, p: IpProtocol) {
        bytes::set_u8(self.bm(), field::PROTOCOL, p.into());
    }

    pub fn set_checksum(&mut self, v: u16) {
        bytes::set_u16(self.bm(), field::CHECKSUM, v);
    }

    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        bytes::set_bytes(self.bm(), field::SRC_ADDR, &a.octets());
    }

    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        bytes::set_bytes(self.bm(), field::DST_ADDR, &a.octets());
    }

    /// Computes the header checksum (over the header length) and writes it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let ck = !checksum::data(self.header());
        self.set_checksum(ck);
    }

    /// The payload, bounded by the total length.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let r = usize::from(self.header_len())..usize::from(self.total_len());
        bytes::slice_mut(self.bm(), r)
    }

    /// Header and payload, split (both bounded as by `header()` and `payload()`).
    pub fn header_and_payload_mut(&mut self) -> (&mut [u8], &mut [u8]) {
        let hl = usize::from(self.header_len());
        let total = usize::from(self.total_len());
        let b = bytes::slice_mut(self.bm(), ..total);
        match b.split_at_mut_checked(hl) {
            Some((h, p)) => (h, p),
            None => (&mut [], &mut []),
        }
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// A parsed IPv4 header (options dropped, no fragmentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Repr {
    pub src_addr: Ipv4Addr,
    pub dst_addr: Ipv4Addr,
    pub next_header: IpProtocol,
    /// Length of the payload (total length minus header length).
    pub payload_len: usize,
    /// Time to live.
    pub hop_limit: u8,
    pub dscp: u8,
    pub ecn: u8,
    pub ident: u16,
    pub dont_frag: bool,
}

impl Repr {
    /// Parses a checked packet: `Malformed` for a version other than 4, `Checksum` if the header
    /// checksum does not verify, `Unsupported` for a fragment (the `Repr` cannot describe one;
    /// use the `Packet` accessors for fragments).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr> {
        packet.check_len()?;
        if packet.version() != 4 {
            return Err(Error::Malformed);
        }
        if !packet.verify_checksum() {
            return Err(Error::Checksum);
        }
        if packet.is_fragment() {
            return Err(Error::Unsupported);
        }
        Ok(Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: packet.payload().len(),
            hop_limit: packet.hop_limit(),
            dscp: packet.dscp(),
            ecn: packet.ecn(),
            ident: packet.ident(),
            dont_frag: packet.dont_frag(),
        })
    }

    /// Length of the header `emit` writes (no options).
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Header plus payload.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes a 20-byte header with its checksum. The total length is clamped to 65535 (a
    /// `payload_len` above 65515 is a caller bug); a buffer shorter than 20 bytes gets no
    /// complete header.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_version(4);
        packet.set_header_len(HEADER_LEN as u8);
        packet.set_dscp(self.dscp);
        packet.set_ecn(self.ecn);
        let total = self.payload_len.saturating_add(HEADER_LEN);
        packet.set_total_len(u16::try_from(total).unwrap_or(u16::MAX));
        packet.set_ident(self.ident);
        packet.clear_flags();
        packet.set_dont_frag(self.dont_frag);
        packet.set_hop_limit(self.hop_limit);
        packet.set_next_header(self.next_header);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
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

    // A UDP packet captured from a real stack: 10.0.0.1 -> 10.0.0.2, TTL 64, DF, 4 bytes payload.
    fn sample() -> Vec<u8> {
        let mut p = vec![
            0x45, 0x00, 0x00, 0x18, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 10, 0, 0, 1,
            10, 0, 0, 2, 0xde, 0xad, 0xbe, 0xef,
        ];
        let ck = !checksum::data(&p[..20]);
        p[10..12].copy_from_slice(&ck.to_be_bytes());
        p
    }

    #[test]
    fn accessors() {
        let buf = sample();
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 24);
        assert_eq!(p.ident(), 0x1234);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.next_header(), IpProtocol::Udp);
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        assert!(p.options().is_empty());
        assert!(p.verify_checksum());
    }

    #[test]
    fn payload_bounded_by_total_len() {
        let mut buf = sample();
        buf.extend_from_slice(&[0u8; 10]); // Ethernet padding
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.payload().len(), 4);
        assert_eq!(Repr::parse(&p).unwrap().payload_len, 4);
    }

    #[test]
    fn setters_round_trip() {
        let mut buf = vec![0u8; 40];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_version(4);
        p.set_header_len(24);
        p.set_dscp(46);
        p.set_ecn(3);
        p.set_total_len(40);
        p.set_ident(99);
        p.set_dont_frag(true);
        p.set_more_frags(true);
        p.set_frag_offset(1480);
        p.set_hop_limit(3);
        p.set_next_header(IpProtocol::Esp);
        p.set_src_addr(Ipv4Addr::new(1, 2, 3, 4));
        p.set_dst_addr(Ipv4Addr::new(5, 6, 7, 8));
        p.fill_checksum();
        p.payload_mut()[0] = 0x77;
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.options().len(), 4);
        assert_eq!((p.dscp(), p.ecn()), (46, 3));
        assert!(p.dont_frag() && p.more_frags());
        assert_eq!(p.frag_offset(), 1480);
        assert_eq!(p.hop_limit(), 3);
        assert_eq!(p.next_header(), IpProtocol::Esp);
        assert_eq!(p.payload().len(), 16);
        assert_eq!(p.payload()[0], 0x77);
        assert!(p.verify_checksum());
        assert_eq!(Repr::parse(&p), Err(Error::Unsupported));
        let mut buf2 = buf.clone();
        let mut q = Packet::new_unchecked(&mut buf2[..]);
        q.set_dont_frag(false);
        q.set_more_frags(false);
        q.set_frag_offset(0);
        assert!(!q.is_fragment());
        assert!(!q.verify_checksum());
        q.fill_checksum();
        let r = Repr::parse(&Packet::new_checked(&buf2[..]).unwrap()).unwrap();
        assert_eq!(r.payload_len, 16);
        assert!(!r.dont_frag);
    }

    #[test]
    fn repr_round_trip() {
        let r = Repr {
            src_addr: Ipv4Addr::new(192, 0, 2, 1),
            dst_addr: Ipv4Addr::new(203, 0, 113, 9),
            next_header: IpProtocol::Tcp,
            payload_len: 100,
            hop_limit: 255,
            dscp: 10,
            ecn: 2,
            ident: 0xbeef,
            dont_frag: true,
        };
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut Packet::new_unchecked(&mut buf[..]));
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(Repr::parse(&p).unwrap(), r);
    }

    #[test]
    fn bad_version_and_checksum() {
        let mut buf = sample();
        buf[10] ^= 1;
        assert_eq!(
            Repr::parse(&Packet::new_checked(&buf[..]).unwrap()),
            Err(Error::Checksum)
        );
        let mut buf = sample();
        buf[0] = 0x65;
        assert_eq!(
            Repr::parse(&Packet::new_checked(&buf[..]).unwrap()),
            Err(Error::Malformed)
        );
    }

    #[test]
    fn truncated_and_garbage() {
        let buf = sample();
        for n in 0..buf.len() {
            assert!(Packet::new_checked(&buf[..n]).is_err(), "len {n}");
        }
        // IHL below 5
        let mut b = sample();
        b[0] = 0x44;
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::Malformed);
        // IHL beyond the buffer
        let mut b = sample();
        b[0] = 0x4f;
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::Truncated);
        // total length below IHL
        let mut b = sample();
        b[3] = 10;
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::Malformed);
        // random garbage never panics, checked or not
        let mut rng = Rng(7);
        for _ in 0..5000 {
            let n = rng.below(80);
            let mut g = rng.bytes(n);
            if let Ok(p) = Packet::new_checked(&g[..]) {
                assert!(p.payload().len() + usize::from(p.header_len()) <= n);
                let _ = Repr::parse(&p);
            }
            let p = Packet::new_unchecked(&g[..]);
            let _ = (p.payload(), p.options(), p.verify_checksum(), p.src_addr());
            let mut p = Packet::new_unchecked(&mut g[..]);
            p.fill_checksum();
            let _ = p.payload_mut();
            let _ = p.header_and_payload_mut();
        }
    }
}
