//! Ethernet II frames (no FCS, no 802.1Q: a VLAN tag shows up as `EtherType::Unknown(0x8100)`).

use core::fmt;

use super::bytes::{self, Field, Rest};
use super::{Error, Result};

/// A MAC address.
pub type Address = [u8; 6];

/// The broadcast MAC address.
pub const BROADCAST: Address = [0xff; 6];

/// Length of the Ethernet II header.
pub const HEADER_LEN: usize = 14;
/// Alias of [`HEADER_LEN`].
pub const ETH_HEADER_LEN: usize = HEADER_LEN;

/// True for a group (multicast or broadcast) address.
pub fn is_multicast(a: &Address) -> bool {
    a[0] & 0x01 != 0
}

/// The EtherType of a frame's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EtherType {
    Ipv4,
    Ipv6,
    Arp,
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(v: u16) -> Self {
        match v {
            0x0800 => EtherType::Ipv4,
            0x86dd => EtherType::Ipv6,
            0x0806 => EtherType::Arp,
            other => EtherType::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(t: EtherType) -> u16 {
        match t {
            EtherType::Ipv4 => 0x0800,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Arp => 0x0806,
            EtherType::Unknown(v) => v,
        }
    }
}

impl fmt::Display for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EtherType::Ipv4 => f.write_str("IPv4"),
            EtherType::Ipv6 => f.write_str("IPv6"),
            EtherType::Arp => f.write_str("ARP"),
            EtherType::Unknown(v) => write!(f, "0x{v:04x}"),
        }
    }
}

mod field {
    use super::{Field, Rest};
    pub const DESTINATION: Field = 0..6;
    pub const SOURCE: Field = 6..12;
    pub const ETHERTYPE: Field = 12..14;
    pub const PAYLOAD: Rest = 14..;
}

/// A view of an Ethernet II frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> Frame<T> {
        Frame { buffer }
    }

    /// Wraps `buffer` and checks it holds a whole header.
    pub fn new_checked(buffer: T) -> Result<Frame<T>> {
        let f = Self::new_unchecked(buffer);
        f.check_len()?;
        Ok(f)
    }

    /// `Truncated` if the buffer is shorter than the header.
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

    /// Length of the header (always 14).
    pub const fn header_len() -> usize {
        HEADER_LEN
    }

    /// Frame length for a payload of `payload_len` bytes.
    pub const fn buffer_len(payload_len: usize) -> usize {
        HEADER_LEN + payload_len
    }

    pub fn dst_addr(&self) -> Address {
        bytes::get_array(self.buffer.as_ref(), field::DESTINATION)
    }

    pub fn src_addr(&self) -> Address {
        bytes::get_array(self.buffer.as_ref(), field::SOURCE)
    }

    pub fn ethertype(&self) -> EtherType {
        EtherType::from(bytes::get_u16(self.buffer.as_ref(), field::ETHERTYPE))
    }

    /// Everything after the header.
    pub fn payload(&self) -> &[u8] {
        bytes::slice(self.buffer.as_ref(), field::PAYLOAD)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    pub fn set_dst_addr(&mut self, a: Address) {
        bytes::set_bytes(self.buffer.as_mut(), field::DESTINATION, &a);
    }

    pub fn set_src_addr(&mut self, a: Address) {
        bytes::set_bytes(self.buffer.as_mut(), field::SOURCE, &a);
    }

    pub fn set_ethertype(&mut self, t: EtherType) {
        bytes::set_u16(self.buffer.as_mut(), field::ETHERTYPE, t.into());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        bytes::slice_mut(self.buffer.as_mut(), field::PAYLOAD)
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Frame<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// A parsed Ethernet II header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Repr {
    pub src_addr: Address,
    pub dst_addr: Address,
    pub ethertype: EtherType,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(frame: &Frame<&T>) -> Result<Repr> {
        frame.check_len()?;
        Ok(Repr {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            ethertype: frame.ethertype(),
        })
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    pub const fn buffer_len(&self, payload_len: usize) -> usize {
        HEADER_LEN + payload_len
    }

    /// Writes the header (a buffer shorter than the header is left as is).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Frame<T>) {
        frame.set_src_addr(self.src_addr);
        frame.set_dst_addr(self.dst_addr);
        frame.set_ethertype(self.ethertype);
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

    const FRAME: [u8; 18] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // dst
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, // src
        0x86, 0xdd, // IPv6
        0xaa, 0xbb, 0xcc, 0xdd,
    ];

    #[test]
    fn parse_and_accessors() {
        let f = Frame::new_checked(&FRAME[..]).unwrap();
        assert_eq!(f.dst_addr(), [2, 0, 0, 0, 0, 1]);
        assert_eq!(f.src_addr(), [2, 0, 0, 0, 0, 2]);
        assert_eq!(f.ethertype(), EtherType::Ipv6);
        assert_eq!(f.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
        let r = Repr::parse(&f).unwrap();
        assert_eq!(r.ethertype, EtherType::Ipv6);
        assert!(!is_multicast(&r.src_addr));
        assert!(is_multicast(&BROADCAST));
    }

    #[test]
    fn round_trip() {
        let r = Repr {
            src_addr: [1, 2, 3, 4, 5, 6],
            dst_addr: BROADCAST,
            ethertype: EtherType::Unknown(0x8100),
        };
        let mut buf = vec![0u8; r.buffer_len(3)];
        r.emit(&mut Frame::new_unchecked(&mut buf[..]));
        let f = Frame::new_checked(&buf[..]).unwrap();
        assert_eq!(Repr::parse(&f).unwrap(), r);
        assert_eq!(u16::from(EtherType::from(0x0806)), 0x0806);
        assert_eq!(EtherType::from(0x0806), EtherType::Arp);
    }

    #[test]
    fn truncated_and_garbage() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                Frame::new_checked(&FRAME[..n]).unwrap_err(),
                Error::Truncated
            );
            // unchecked views over short buffers do not panic either
            let f = Frame::new_unchecked(&FRAME[..n]);
            let _ = (f.dst_addr(), f.src_addr(), f.ethertype(), f.payload());
        }
        let f = Frame::new_checked(&FRAME[..HEADER_LEN]).unwrap();
        assert!(f.payload().is_empty());
        let mut short = [0u8; 3];
        Repr {
            src_addr: [0; 6],
            dst_addr: [0; 6],
            ethertype: EtherType::Ipv4,
        }
        .emit(&mut Frame::new_unchecked(&mut short[..]));
    }
}
