//! What IPv4 and IPv6 share: the protocol number, a version-agnostic header representation and
//! the pseudo-header checksum.

use core::fmt;
use core::net::IpAddr;

use super::{checksum, ipv4, ipv6, Error, Result};

/// An IP protocol number (IPv4 "protocol", IPv6 "next header").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpProtocol {
    Icmp,
    Tcp,
    Udp,
    Esp,
    Icmpv6,
    NoNextHeader,
    Unknown(u8),
}

impl IpProtocol {
    /// IPv6 Hop-by-Hop Options header (0).
    pub const HOP_BY_HOP: IpProtocol = IpProtocol::Unknown(0);
    /// IPv4 encapsulated in IP: the ESP next header of a tunnelled IPv4 packet (4).
    pub const IPV4_IN_IP: IpProtocol = IpProtocol::Unknown(4);
    /// IPv6 encapsulated in IP: the ESP next header of a tunnelled IPv6 packet (41).
    pub const IPV6_IN_IP: IpProtocol = IpProtocol::Unknown(41);
    /// IPv6 Routing header (43).
    pub const IPV6_ROUTE: IpProtocol = IpProtocol::Unknown(43);
    /// IPv6 Fragment header (44).
    pub const IPV6_FRAG: IpProtocol = IpProtocol::Unknown(44);
    /// Authentication Header (51).
    pub const AH: IpProtocol = IpProtocol::Unknown(51);
    /// IPv6 Destination Options header (60).
    pub const IPV6_OPTS: IpProtocol = IpProtocol::Unknown(60);
}

impl From<u8> for IpProtocol {
    fn from(v: u8) -> Self {
        match v {
            1 => IpProtocol::Icmp,
            6 => IpProtocol::Tcp,
            17 => IpProtocol::Udp,
            50 => IpProtocol::Esp,
            58 => IpProtocol::Icmpv6,
            59 => IpProtocol::NoNextHeader,
            other => IpProtocol::Unknown(other),
        }
    }
}

impl From<IpProtocol> for u8 {
    fn from(p: IpProtocol) -> u8 {
        match p {
            IpProtocol::Icmp => 1,
            IpProtocol::Tcp => 6,
            IpProtocol::Udp => 17,
            IpProtocol::Esp => 50,
            IpProtocol::Icmpv6 => 58,
            IpProtocol::NoNextHeader => 59,
            IpProtocol::Unknown(v) => v,
        }
    }
}

impl fmt::Display for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpProtocol::Icmp => f.write_str("icmp"),
            IpProtocol::Tcp => f.write_str("tcp"),
            IpProtocol::Udp => f.write_str("udp"),
            IpProtocol::Esp => f.write_str("esp"),
            IpProtocol::Icmpv6 => f.write_str("icmpv6"),
            IpProtocol::NoNextHeader => f.write_str("no-next-header"),
            IpProtocol::Unknown(v) => write!(f, "proto-{v}"),
        }
    }
}

/// The IP version of a packet, read from its first nibble.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpVersion {
    Ipv4,
    Ipv6,
}

impl IpVersion {
    /// The version of the IP packet starting at `buf[0]`: `Truncated` if empty, `Malformed`
    /// for a version other than 4 or 6.
    pub fn of_packet(buf: &[u8]) -> Result<IpVersion> {
        match buf.first().map(|b| b >> 4) {
            None => Err(Error::Truncated),
            Some(4) => Ok(IpVersion::Ipv4),
            Some(6) => Ok(IpVersion::Ipv6),
            Some(_) => Err(Error::Malformed),
        }
    }
}

/// An IPv4 or IPv6 header representation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpRepr {
    Ipv4(ipv4::Repr),
    Ipv6(ipv6::Repr),
}

impl IpRepr {
    /// Parses the IP header at the start of `buf` (version from the first nibble). For IPv6,
    /// `next_header` is the fixed header's: extension headers are not walked here (see
    /// [`ipv6::upper_layer`]).
    pub fn parse(buf: &[u8]) -> Result<IpRepr> {
        match IpVersion::of_packet(buf)? {
            IpVersion::Ipv4 => {
                ipv4::Repr::parse(&ipv4::Packet::new_checked(buf)?).map(IpRepr::Ipv4)
            }
            IpVersion::Ipv6 => {
                ipv6::Repr::parse(&ipv6::Packet::new_checked(buf)?).map(IpRepr::Ipv6)
            }
        }
    }

    pub fn version(&self) -> IpVersion {
        match self {
            IpRepr::Ipv4(_) => IpVersion::Ipv4,
            IpRepr::Ipv6(_) => IpVersion::Ipv6,
        }
    }

    pub fn src_addr(&self) -> IpAddr {
        match self {
            IpRepr::Ipv4(r) => IpAddr::V4(r.src_addr),
            IpRepr::Ipv6(r) => IpAddr::V6(r.src_addr),
        }
    }

    pub fn dst_addr(&self) -> IpAddr {
        match self {
            IpRepr::Ipv4(r) => IpAddr::V4(r.dst_addr),
            IpRepr::Ipv6(r) => IpAddr::V6(r.dst_addr),
        }
    }

    pub fn next_header(&self) -> IpProtocol {
        match self {
            IpRepr::Ipv4(r) => r.next_header,
            IpRepr::Ipv6(r) => r.next_header,
        }
    }

    pub fn payload_len(&self) -> usize {
        match self {
            IpRepr::Ipv4(r) => r.payload_len,
            IpRepr::Ipv6(r) => r.payload_len,
        }
    }

    pub fn hop_limit(&self) -> u8 {
        match self {
            IpRepr::Ipv4(r) => r.hop_limit,
            IpRepr::Ipv6(r) => r.hop_limit,
        }
    }

    /// Length of the header `emit` writes.
    pub fn header_len(&self) -> usize {
        match self {
            IpRepr::Ipv4(r) => r.header_len(),
            IpRepr::Ipv6(r) => r.header_len(),
        }
    }

    /// Header plus payload.
    pub fn buffer_len(&self) -> usize {
        match self {
            IpRepr::Ipv4(r) => r.buffer_len(),
            IpRepr::Ipv6(r) => r.buffer_len(),
        }
    }

    /// Writes the header at the start of `buf`. `Truncated` if `buf` is shorter than
    /// [`header_len`](Self::header_len).
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        if buf.len() < self.header_len() {
            return Err(Error::Truncated);
        }
        match self {
            IpRepr::Ipv4(r) => r.emit(&mut ipv4::Packet::new_unchecked(buf)),
            IpRepr::Ipv6(r) => r.emit(&mut ipv6::Packet::new_unchecked(buf)),
        }
        Ok(())
    }

    /// The pseudo-header sum for an upper-layer checksum over `len` bytes of this packet's
    /// payload.
    pub fn pseudo_header_sum(&self, len: u32) -> u16 {
        checksum::pseudo_header(&self.src_addr(), &self.dst_addr(), self.next_header(), len)
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
    use core::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn protocol_numbers_round_trip() {
        for v in 0..=255u8 {
            assert_eq!(u8::from(IpProtocol::from(v)), v);
        }
        assert_eq!(IpProtocol::from(50), IpProtocol::Esp);
        assert_eq!(IpProtocol::from(4), IpProtocol::IPV4_IN_IP);
        assert_eq!(IpProtocol::Udp.to_string(), "udp");
    }

    #[test]
    fn ip_repr_round_trip() {
        let r4 = IpRepr::Ipv4(ipv4::Repr {
            src_addr: Ipv4Addr::new(10, 0, 0, 1),
            dst_addr: Ipv4Addr::new(10, 0, 0, 2),
            next_header: IpProtocol::Udp,
            payload_len: 4,
            hop_limit: 64,
            dscp: 0,
            ecn: 0,
            ident: 7,
            dont_frag: true,
        });
        let mut buf = vec![0u8; r4.buffer_len()];
        r4.emit(&mut buf).unwrap();
        assert_eq!(IpRepr::parse(&buf).unwrap(), r4);
        let r6 = IpRepr::Ipv6(ipv6::Repr {
            src_addr: Ipv6Addr::LOCALHOST,
            dst_addr: Ipv6Addr::LOCALHOST,
            next_header: IpProtocol::Tcp,
            payload_len: 0,
            hop_limit: 1,
            dscp: 10,
            ecn: 1,
            flow_label: 0x12345,
        });
        let mut buf = vec![0u8; r6.buffer_len()];
        r6.emit(&mut buf).unwrap();
        assert_eq!(IpRepr::parse(&buf).unwrap(), r6);
        assert_eq!(r6.version(), IpVersion::Ipv6);
        assert_eq!(r6.emit(&mut [0u8; 10]), Err(Error::Truncated));
        assert_eq!(IpRepr::parse(&[]), Err(Error::Truncated));
        assert_eq!(IpRepr::parse(&[0x50; 40]), Err(Error::Malformed));
    }
}
