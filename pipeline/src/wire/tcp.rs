//! TCP segments (RFC 9293): enough for connection tracking and checksum work. Options are
//! skipped (their length is checked). A segment has no length field of its own: a view must be
//! made over exactly the segment (the IP payload), which is what the checksum covers.

use core::fmt;
use core::net::IpAddr;

use super::bytes::{self, Field};
use super::{checksum, Error, IpProtocol, Result};

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;

mod field {
    use super::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const SEQ_NUM: Field = 4..8;
    pub const ACK_NUM: Field = 8..12;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WIN_SIZE: Field = 14..16;
    pub const CHECKSUM: Field = 16..18;
    pub const URGENT: Field = 18..20;
}

/// The control bits of the flags byte.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(pub u8);

impl Flags {
    pub const FIN: Flags = Flags(0x01);
    pub const SYN: Flags = Flags(0x02);
    pub const RST: Flags = Flags(0x04);
    pub const PSH: Flags = Flags(0x08);
    pub const ACK: Flags = Flags(0x10);
    pub const URG: Flags = Flags(0x20);
    pub const ECE: Flags = Flags(0x40);
    pub const CWR: Flags = Flags(0x80);

    /// True if every bit of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn fin(self) -> bool {
        self.contains(Self::FIN)
    }
    pub const fn syn(self) -> bool {
        self.contains(Self::SYN)
    }
    pub const fn rst(self) -> bool {
        self.contains(Self::RST)
    }
    pub const fn ack(self) -> bool {
        self.contains(Self::ACK)
    }
}

impl core::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(Flags, &str); 8] = [
            (Flags::FIN, "FIN"),
            (Flags::SYN, "SYN"),
            (Flags::RST, "RST"),
            (Flags::PSH, "PSH"),
            (Flags::ACK, "ACK"),
            (Flags::URG, "URG"),
            (Flags::ECE, "ECE"),
            (Flags::CWR, "CWR"),
        ];
        let mut first = true;
        for (flag, name) in NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("-")?;
        }
        Ok(())
    }
}

/// A view of a TCP segment.
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

    /// `Truncated` if the buffer is shorter than the fixed header or the data offset;
    /// `Malformed` if the data offset is below 20.
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

    pub fn seq_number(&self) -> u32 {
        bytes::get_u32(self.b(), field::SEQ_NUM)
    }

    pub fn ack_number(&self) -> u32 {
        bytes::get_u32(self.b(), field::ACK_NUM)
    }

    /// Header length in bytes (data offset * 4), options included.
    pub fn header_len(&self) -> u8 {
        (bytes::get_u8(self.b(), field::DATA_OFF) >> 4) * 4
    }

    pub fn flags(&self) -> Flags {
        Flags(bytes::get_u8(self.b(), field::FLAGS))
    }

    pub fn fin(&self) -> bool {
        self.flags().fin()
    }
    pub fn syn(&self) -> bool {
        self.flags().syn()
    }
    pub fn rst(&self) -> bool {
        self.flags().rst()
    }
    /// The ACK flag (the number is [`ack_number`](Self::ack_number)).
    pub fn ack(&self) -> bool {
        self.flags().ack()
    }

    pub fn window_len(&self) -> u16 {
        bytes::get_u16(self.b(), field::WIN_SIZE)
    }

    pub fn checksum(&self) -> u16 {
        bytes::get_u16(self.b(), field::CHECKSUM)
    }

    pub fn urgent_at(&self) -> u16 {
        bytes::get_u16(self.b(), field::URGENT)
    }

    /// The options, unparsed.
    pub fn options(&self) -> &[u8] {
        bytes::slice(self.b(), HEADER_LEN..usize::from(self.header_len()))
    }

    /// Everything after the header.
    pub fn payload(&self) -> &[u8] {
        bytes::slice(self.b(), usize::from(self.header_len())..)
    }

    /// True if the checksum over the pseudo-header and the whole buffer verifies.
    pub fn verify_checksum(&self, src: &IpAddr, dst: &IpAddr) -> bool {
        let len = u32::try_from(self.b().len()).unwrap_or(u32::MAX);
        checksum::combine(&[
            checksum::pseudo_header(src, dst, IpProtocol::Tcp, len),
            checksum::data(self.b()),
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

    pub fn set_seq_number(&mut self, v: u32) {
        bytes::set_u32(self.bm(), field::SEQ_NUM, v);
    }

    pub fn set_ack_number(&mut self, v: u32) {
        bytes::set_u32(self.bm(), field::ACK_NUM, v);
    }

    /// Sets the header length in bytes (rounded down to a multiple of 4, at most 60).
    pub fn set_header_len(&mut self, len: u8) {
        let b = bytes::get_u8(self.b(), field::DATA_OFF);
        bytes::set_u8(
            self.bm(),
            field::DATA_OFF,
            (b & 0x0f) | (((len / 4) & 0x0f) << 4),
        );
    }

    pub fn set_flags(&mut self, f: Flags) {
        bytes::set_u8(self.bm(), field::FLAGS, f.0);
    }

    pub fn set_window_len(&mut self, v: u16) {
        bytes::set_u16(self.bm(), field::WIN_SIZE, v);
    }

    pub fn set_checksum(&mut self, v: u16) {
        bytes::set_u16(self.bm(), field::CHECKSUM, v);
    }

    pub fn set_urgent_at(&mut self, v: u16) {
        bytes::set_u16(self.bm(), field::URGENT, v);
    }

    /// Computes the checksum over the pseudo-header and the whole buffer and writes it.
    pub fn fill_checksum(&mut self, src: &IpAddr, dst: &IpAddr) {
        self.set_checksum(0);
        let len = u32::try_from(self.b().len()).unwrap_or(u32::MAX);
        let ck = !checksum::combine(&[
            checksum::pseudo_header(src, dst, IpProtocol::Tcp, len),
            checksum::data(self.b()),
        ]);
        self.set_checksum(ck);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = usize::from(self.header_len());
        bytes::slice_mut(self.bm(), hl..)
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// A minimal parsed TCP header (no options).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq_number: u32,
    pub ack_number: u32,
    pub flags: Flags,
    pub window_len: u16,
    pub payload_len: usize,
}

impl Repr {
    /// Parses a checked segment. `Malformed` for a zero port. The checksum needs the
    /// addresses: check it with [`Packet::verify_checksum`].
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr> {
        packet.check_len()?;
        if packet.src_port() == 0 || packet.dst_port() == 0 {
            return Err(Error::Malformed);
        }
        Ok(Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq_number: packet.seq_number(),
            ack_number: packet.ack_number(),
            flags: packet.flags(),
            window_len: packet.window_len(),
            payload_len: packet.payload().len(),
        })
    }

    /// Length of the header `emit` writes (no options).
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes a 20-byte header with a zero checksum and urgent pointer. Write the payload, then
    /// call [`Packet::fill_checksum`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number);
        bytes::set_u8(packet.bm(), field::DATA_OFF, 0);
        packet.set_header_len(HEADER_LEN as u8);
        packet.set_flags(self.flags);
        packet.set_window_len(self.window_len);
        packet.set_checksum(0);
        packet.set_urgent_at(0);
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
    use core::net::Ipv4Addr;

    fn addrs() -> (IpAddr, IpAddr) {
        (
            IpAddr::V4(Ipv4Addr::new(10, 1, 1, 1)),
            IpAddr::V4(Ipv4Addr::new(10, 2, 2, 2)),
        )
    }

    #[test]
    fn round_trip_with_options() {
        let r = Repr {
            src_port: 40000,
            dst_port: 443,
            seq_number: 0xdeadbeef,
            ack_number: 0,
            flags: Flags::SYN,
            window_len: 64240,
            payload_len: 0,
        };
        // a SYN with 4 bytes of options (MSS)
        let mut buf = [0u8; 24];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        r.emit(&mut p);
        p.set_header_len(24);
        buf[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
        let (s, d) = addrs();
        Packet::new_unchecked(&mut buf[..]).fill_checksum(&s, &d);
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum(&s, &d));
        assert!(p.syn() && !p.ack() && !p.fin() && !p.rst());
        assert_eq!(p.options(), &[2, 4, 0x05, 0xb4]);
        assert_eq!(Repr::parse(&p).unwrap(), r);
        assert_eq!(format!("{:?}", Flags::SYN | Flags::ACK), "SYN|ACK");
    }

    #[test]
    fn random_checksums() {
        let mut rng = Rng(11);
        let (s, d) = addrs();
        for _ in 0..300 {
            let n = rng.below(64);
            let r = Repr {
                src_port: (rng.next() as u16).max(1),
                dst_port: (rng.next() as u16).max(1),
                seq_number: rng.next() as u32,
                ack_number: rng.next() as u32,
                flags: Flags(rng.next() as u8),
                window_len: rng.next() as u16,
                payload_len: n,
            };
            let mut buf = vec![0u8; r.buffer_len()];
            let mut p = Packet::new_unchecked(&mut buf[..]);
            r.emit(&mut p);
            p.payload_mut().copy_from_slice(&rng.bytes(n));
            p.fill_checksum(&s, &d);
            let p = Packet::new_checked(&buf[..]).unwrap();
            assert!(p.verify_checksum(&s, &d));
            assert_eq!(Repr::parse(&p).unwrap(), r);
        }
    }

    #[test]
    fn truncated_and_garbage() {
        let mut buf = vec![0u8; 20];
        buf[12] = 0x60; // data offset 24
        for n in 0..24 {
            let mut b = buf.clone();
            b.resize(n, 0);
            assert_eq!(
                Packet::new_checked(&b[..]).unwrap_err(),
                Error::Truncated,
                "len {n}"
            );
        }
        buf[12] = 0x40;
        assert_eq!(Packet::new_checked(&buf[..]).unwrap_err(), Error::Malformed);
        let mut rng = Rng(13);
        let (s, d) = addrs();
        for _ in 0..3000 {
            let n = rng.below(70);
            let mut g = rng.bytes(n);
            if let Ok(p) = Packet::new_checked(&g[..]) {
                let _ = (
                    Repr::parse(&p),
                    p.verify_checksum(&s, &d),
                    p.payload(),
                    p.options(),
                );
            }
            let mut p = Packet::new_unchecked(&mut g[..]);
            p.fill_checksum(&s, &d);
            let _ = (p.payload_mut().len(), p.options().len());
        }
    }
}
