//! ARP for IPv4 over Ethernet (RFC 826): the 28-byte packet after the Ethernet header.
//!
//! ```text
//!  0       2       4   5   6       8            14      18           24      28
//! +-------+-------+---+---+-------+------------+-------+------------+-------+
//! | htype | ptype |hln|pln| oper  |    sha     |  spa  |    tha     |  tpa  |
//! +-------+-------+---+---+-------+------------+-------+------------+-------+
//! ```
//!
//! Only Ethernet (hardware type 1, length 6) and IPv4 (protocol type 0x0800, length 4) are
//! described: [`Repr::parse`] refuses anything else as `Unsupported`.

use core::net::Ipv4Addr;

use super::bytes::{self, Field};
use super::ethernet::Address;
use super::{Error, Result};

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = 28;
/// Hardware type Ethernet.
pub const HTYPE_ETHERNET: u16 = 1;
/// Protocol type IPv4.
pub const PTYPE_IPV4: u16 = 0x0800;

mod field {
    use super::Field;
    pub const HTYPE: Field = 0..2;
    pub const PTYPE: Field = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Field = 6..8;
    pub const SHA: Field = 8..14;
    pub const SPA: Field = 14..18;
    pub const THA: Field = 18..24;
    pub const TPA: Field = 24..28;
}

/// The ARP operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    Request,
    Reply,
    Unknown(u16),
}

impl From<u16> for Operation {
    fn from(v: u16) -> Self {
        match v {
            1 => Operation::Request,
            2 => Operation::Reply,
            other => Operation::Unknown(other),
        }
    }
}

impl From<Operation> for u16 {
    fn from(o: Operation) -> u16 {
        match o {
            Operation::Request => 1,
            Operation::Reply => 2,
            Operation::Unknown(v) => v,
        }
    }
}

/// A view of an ARP packet (starting after the Ethernet header).
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

    /// `Truncated` if shorter than the 28 bytes of an Ethernet/IPv4 packet. The hardware and
    /// protocol lengths are not checked here ([`Repr::parse`] does).
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < PACKET_LEN {
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

    pub fn hardware_type(&self) -> u16 {
        bytes::get_u16(self.b(), field::HTYPE)
    }

    pub fn protocol_type(&self) -> u16 {
        bytes::get_u16(self.b(), field::PTYPE)
    }

    pub fn hardware_len(&self) -> u8 {
        bytes::get_u8(self.b(), field::HLEN)
    }

    pub fn protocol_len(&self) -> u8 {
        bytes::get_u8(self.b(), field::PLEN)
    }

    pub fn operation(&self) -> Operation {
        Operation::from(bytes::get_u16(self.b(), field::OPER))
    }

    pub fn source_hardware_addr(&self) -> Address {
        bytes::get_array(self.b(), field::SHA)
    }

    pub fn source_protocol_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(bytes::get_array::<4>(self.b(), field::SPA))
    }

    pub fn target_hardware_addr(&self) -> Address {
        bytes::get_array(self.b(), field::THA)
    }

    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(bytes::get_array::<4>(self.b(), field::TPA))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    pub fn set_hardware_type(&mut self, v: u16) {
        bytes::set_u16(self.bm(), field::HTYPE, v);
    }

    pub fn set_protocol_type(&mut self, v: u16) {
        bytes::set_u16(self.bm(), field::PTYPE, v);
    }

    pub fn set_hardware_len(&mut self, v: u8) {
        bytes::set_u8(self.bm(), field::HLEN, v);
    }

    pub fn set_protocol_len(&mut self, v: u8) {
        bytes::set_u8(self.bm(), field::PLEN, v);
    }

    pub fn set_operation(&mut self, o: Operation) {
        bytes::set_u16(self.bm(), field::OPER, o.into());
    }

    pub fn set_source_hardware_addr(&mut self, a: Address) {
        bytes::set_bytes(self.bm(), field::SHA, &a);
    }

    pub fn set_source_protocol_addr(&mut self, a: Ipv4Addr) {
        bytes::set_bytes(self.bm(), field::SPA, &a.octets());
    }

    pub fn set_target_hardware_addr(&mut self, a: Address) {
        bytes::set_bytes(self.bm(), field::THA, &a);
    }

    pub fn set_target_protocol_addr(&mut self, a: Ipv4Addr) {
        bytes::set_bytes(self.bm(), field::TPA, &a.octets());
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// A parsed Ethernet/IPv4 ARP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Repr {
    pub operation: Operation,
    pub source_hardware_addr: Address,
    pub source_protocol_addr: Ipv4Addr,
    pub target_hardware_addr: Address,
    pub target_protocol_addr: Ipv4Addr,
}

impl Repr {
    /// Parses a checked packet: `Unsupported` unless it is Ethernet/IPv4 (types 1 / 0x0800,
    /// lengths 6 / 4) with operation request or reply.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr> {
        packet.check_len()?;
        if packet.hardware_type() != HTYPE_ETHERNET
            || packet.protocol_type() != PTYPE_IPV4
            || packet.hardware_len() != 6
            || packet.protocol_len() != 4
        {
            return Err(Error::Unsupported);
        }
        let operation = packet.operation();
        if let Operation::Unknown(_) = operation {
            return Err(Error::Unsupported);
        }
        Ok(Repr {
            operation,
            source_hardware_addr: packet.source_hardware_addr(),
            source_protocol_addr: packet.source_protocol_addr(),
            target_hardware_addr: packet.target_hardware_addr(),
            target_protocol_addr: packet.target_protocol_addr(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    /// Writes the packet (a buffer shorter than 28 bytes is left incomplete).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_hardware_type(HTYPE_ETHERNET);
        packet.set_protocol_type(PTYPE_IPV4);
        packet.set_hardware_len(6);
        packet.set_protocol_len(4);
        packet.set_operation(self.operation);
        packet.set_source_hardware_addr(self.source_hardware_addr);
        packet.set_source_protocol_addr(self.source_protocol_addr);
        packet.set_target_hardware_addr(self.target_hardware_addr);
        packet.set_target_protocol_addr(self.target_protocol_addr);
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

    // A request captured from Linux: who has 10.1.0.1? tell 10.1.0.10 (02:00:00:00:0a:fe).
    const REQUEST: [u8; 28] = [
        0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0x0a, 0xfe, 10, 1, 0, 10, 0, 0, 0, 0, 0, 0, 10, 1, 0, 1,
    ];

    #[test]
    fn parse_and_round_trip() {
        let p = Packet::new_checked(&REQUEST[..]).unwrap();
        let r = Repr::parse(&p).unwrap();
        assert_eq!(r.operation, Operation::Request);
        assert_eq!(r.source_hardware_addr, [2, 0, 0, 0, 0x0a, 0xfe]);
        assert_eq!(r.source_protocol_addr, Ipv4Addr::new(10, 1, 0, 10));
        assert_eq!(r.target_hardware_addr, [0; 6]);
        assert_eq!(r.target_protocol_addr, Ipv4Addr::new(10, 1, 0, 1));
        let mut out = [0xffu8; 28];
        r.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, REQUEST);
        assert_eq!(u16::from(Operation::from(2)), 2);
    }

    #[test]
    fn other_kinds_are_unsupported() {
        for (at, v) in [(1usize, 6u8), (3, 0xdd), (4, 8), (5, 16), (7, 3)] {
            let mut b = REQUEST;
            b[at] = v;
            let p = Packet::new_checked(&b[..]).unwrap();
            assert_eq!(Repr::parse(&p), Err(Error::Unsupported), "byte {at}");
        }
    }

    #[test]
    fn truncated_and_garbage() {
        for n in 0..PACKET_LEN {
            assert_eq!(
                Packet::new_checked(&REQUEST[..n]).unwrap_err(),
                Error::Truncated
            );
            let p = Packet::new_unchecked(&REQUEST[..n]);
            let _ = (
                p.operation(),
                p.source_protocol_addr(),
                p.target_hardware_addr(),
            );
        }
        let mut rng = Rng(826);
        for _ in 0..2000 {
            let n = rng.below(40);
            let g = rng.bytes(n);
            if let Ok(p) = Packet::new_checked(&g[..]) {
                if let Ok(r) = Repr::parse(&p) {
                    let mut out = [0u8; 28];
                    r.emit(&mut Packet::new_unchecked(&mut out[..]));
                    assert_eq!(&out[..], &g[..28]);
                }
            }
        }
    }
}
