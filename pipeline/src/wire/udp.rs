//! UDP datagrams (RFC 768). The payload is bounded by the length field; the checksum covers
//! the pseudo-header and the datagram up to the length field.

use core::net::IpAddr;

use super::bytes::{self, Field};
use super::{checksum, Error, IpProtocol, Result};

/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;

mod field {
    use super::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
}

/// A view of a UDP datagram.
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

    /// `Truncated` if the buffer is shorter than the header or the length field; `Malformed`
    /// if the length field is below the header length.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let field_len = usize::from(self.len());
        if field_len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len < field_len {
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

    pub fn src_port(&self) -> u16 {
        bytes::get_u16(self.b(), field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        bytes::get_u16(self.b(), field::DST_PORT)
    }

    /// The length field (header included).
    pub fn len(&self) -> u16 {
        bytes::get_u16(self.b(), field::LENGTH)
    }

    /// True if the length field says there is no payload.
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }

    pub fn checksum(&self) -> u16 {
        bytes::get_u16(self.b(), field::CHECKSUM)
    }

    /// The datagram (header and payload) up to the length field.
    pub fn datagram(&self) -> &[u8] {
        bytes::slice(self.b(), ..usize::from(self.len()))
    }

    /// The payload, bounded by the length field.
    pub fn payload(&self) -> &[u8] {
        bytes::slice(self.b(), HEADER_LEN..usize::from(self.len()))
    }

    /// True if the checksum verifies. A zero checksum ("none") is accepted over IPv4 and
    /// rejected over IPv6 (RFC 8200 8.1).
    pub fn verify_checksum(&self, src: &IpAddr, dst: &IpAddr) -> bool {
        if self.checksum() == 0 {
            return src.is_ipv4();
        }
        let d = self.datagram();
        let len = u32::try_from(d.len()).unwrap_or(u32::MAX);
        checksum::combine(&[
            checksum::pseudo_header(src, dst, IpProtocol::Udp, len),
            checksum::data(d),
        ]) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    pub fn set_src_port(&mut self, v: u16) {
        bytes::set_u16(self.bm(), field::SRC_PORT, v);
    }

    pub fn set_dst_port(&mut self, v: u16) {
        bytes::set_u16(self.bm(), field::DST_PORT, v);
    }

    pub fn set_len(&mut self, v: u16) {
        bytes::set_u16(self.bm(), field::LENGTH, v);
    }

    pub fn set_checksum(&mut self, v: u16) {
        bytes::set_u16(self.bm(), field::CHECKSUM, v);
    }

    /// Computes the checksum over the pseudo-header and the datagram (up to the length field)
    /// and writes it; a computed zero is sent as `0xffff` (RFC 768).
    pub fn fill_checksum(&mut self, src: &IpAddr, dst: &IpAddr) {
        self.set_checksum(0);
        let d = self.datagram();
        let len = u32::try_from(d.len()).unwrap_or(u32::MAX);
        let ck = !checksum::combine(&[
            checksum::pseudo_header(src, dst, IpProtocol::Udp, len),
            checksum::data(d),
        ]);
        self.set_checksum(if ck == 0 { 0xffff } else { ck });
    }

    /// The payload, bounded by the length field.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        bytes::slice_mut(self.bm(), HEADER_LEN..end)
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// A parsed UDP header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload_len: usize,
}

impl Repr {
    /// Parses a checked datagram. `Malformed` for destination port 0. The checksum needs the
    /// addresses: check it with [`Packet::verify_checksum`].
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr> {
        packet.check_len()?;
        if packet.dst_port() == 0 {
            return Err(Error::Malformed);
        }
        Ok(Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload_len: packet.payload().len(),
        })
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes ports and length (clamped to 65535) and a zero checksum. Write the payload, then
    /// call [`Packet::fill_checksum`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(u16::try_from(self.buffer_len()).unwrap_or(u16::MAX));
        packet.set_checksum(0);
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
    use core::net::{Ipv4Addr, Ipv6Addr};

    fn v4() -> (IpAddr, IpAddr) {
        (
            IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)),
            IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)),
        )
    }

    fn v6() -> (IpAddr, IpAddr) {
        (
            IpAddr::V6("fe80::1".parse::<Ipv6Addr>().unwrap()),
            IpAddr::V6("ff02::fb".parse::<Ipv6Addr>().unwrap()),
        )
    }

    #[test]
    fn known_checksum() {
        // DNS query captured on the wire: 192.168.1.10:53000 -> 8.8.8.8:53
        let (s, d) = v4();
        let r = Repr {
            src_port: 53000,
            dst_port: 53,
            payload_len: 3,
        };
        let mut buf = vec![0u8; r.buffer_len()];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        r.emit(&mut p);
        p.payload_mut().copy_from_slice(&[1, 2, 3]);
        p.fill_checksum(&s, &d);
        // Independent sum: pseudo header + header + payload (odd length padded).
        let mut all = vec![192, 168, 1, 10, 8, 8, 8, 8, 0, 17, 0, 11];
        all.extend_from_slice(&buf);
        all.push(0);
        assert_eq!(checksum::data(&all), 0xffff);
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum(&s, &d));
        assert_eq!(Repr::parse(&p).unwrap(), r);
    }

    #[test]
    fn zero_checksum_rules() {
        let r = Repr {
            src_port: 1,
            dst_port: 2,
            payload_len: 0,
        };
        let mut buf = [0u8; 8];
        r.emit(&mut Packet::new_unchecked(&mut buf[..]));
        let p = Packet::new_checked(&buf[..]).unwrap();
        let (s, d) = v4();
        assert!(p.verify_checksum(&s, &d));
        let (s, d) = v6();
        assert!(!p.verify_checksum(&s, &d));
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.fill_checksum(&s, &d);
        assert_ne!(p.checksum(), 0);
        assert!(p.verify_checksum(&s, &d));
    }

    #[test]
    fn random_round_trips() {
        let mut rng = Rng(5);
        for _ in 0..500 {
            let (s, d) = if rng.below(2) == 0 { v4() } else { v6() };
            let n = rng.below(100);
            let r = Repr {
                src_port: rng.next() as u16,
                dst_port: (rng.next() as u16).max(1),
                payload_len: n,
            };
            let mut buf = vec![0u8; r.buffer_len() + rng.below(4)];
            let mut p = Packet::new_unchecked(&mut buf[..]);
            r.emit(&mut p);
            p.payload_mut().copy_from_slice(&rng.bytes(n));
            p.fill_checksum(&s, &d);
            let p = Packet::new_checked(&buf[..]).unwrap();
            assert!(p.verify_checksum(&s, &d));
            assert_eq!(Repr::parse(&p).unwrap(), r);
            let mut bad = buf.clone();
            let mut at = rng.below(r.buffer_len());
            if (4..6).contains(&at) {
                at = 0; // a changed length may shorten the summed data: not a clean test
            }
            bad[at] ^= 0x10;
            let p = Packet::new_checked(&bad[..]);
            if let Ok(p) = p {
                assert!(!p.verify_checksum(&s, &d) || p.checksum() == 0);
            }
        }
    }

    #[test]
    fn truncated_and_garbage() {
        let buf = [0, 1, 0, 2, 0, 12, 0, 0, 1, 2, 3, 4];
        for n in 0..buf.len() {
            assert_eq!(
                Packet::new_checked(&buf[..n]).unwrap_err(),
                Error::Truncated
            );
        }
        let short_len = [0, 1, 0, 2, 0, 7, 0, 0];
        assert_eq!(
            Packet::new_checked(&short_len[..]).unwrap_err(),
            Error::Malformed
        );
        let port0 = [0, 1, 0, 0, 0, 8, 0, 0];
        assert_eq!(
            Repr::parse(&Packet::new_checked(&port0[..]).unwrap()),
            Err(Error::Malformed)
        );
        let mut rng = Rng(3);
        let (s, d) = v6();
        for _ in 0..3000 {
            let n = rng.below(40);
            let mut g = rng.bytes(n);
            if let Ok(p) = Packet::new_checked(&g[..]) {
                let _ = (Repr::parse(&p), p.verify_checksum(&s, &d), p.payload());
            }
            let mut p = Packet::new_unchecked(&mut g[..]);
            p.fill_checksum(&s, &d);
            let _ = (p.payload_mut().len(), p.is_empty());
        }
    }
}
