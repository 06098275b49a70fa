//! IPv6 neighbour discovery messages (RFC 4861 4.3, 4.4, 4.6.1): Neighbor Solicitation and
//! Neighbor Advertisement, and their link-layer address options, over Ethernet.
//!
//! ```text
//!  0       1       2               4                               8
//! +-------+-------+---------------+-------------------------------+
//! | type  | code  |   checksum    | NA: R S O + 29 reserved bits  |   NS: reserved
//! +-------+-------+---------------+-------------------------------+
//! |                     target address (16)                       |
//! +---------------------------------------------------------------+
//! | options: type (1), length in 8-octet units (1), value ...     |
//! +---------------------------------------------------------------+
//! ```
//!
//! A view covers one ICMPv6 message. The checksum is the ICMPv6 one (`icmpv6::Packet`); the
//! IP-level rules (hop limit 255, the Solicited flag on multicast) need the IPv6 header and
//! are the caller's.

use core::net::Ipv6Addr;

use super::bytes::{self, Field, Rest};
use super::ethernet::Address;
use super::{icmpv6, Error, Result};

/// ICMPv6 type of a Neighbor Solicitation.
pub const TYPE_NS: u8 = 135;
/// ICMPv6 type of a Neighbor Advertisement.
pub const TYPE_NA: u8 = 136;
/// Length of either message without options.
pub const MESSAGE_LEN: usize = 24;
/// Option type: source link-layer address.
pub const OPT_SOURCE_LLADDR: u8 = 1;
/// Option type: target link-layer address.
pub const OPT_TARGET_LLADDR: u8 = 2;
/// Length of an Ethernet link-layer address option (RFC 2464 8).
pub const LLADDR_OPT_LEN: usize = 8;

mod field {
    use super::{Field, Rest};
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const FLAGS: usize = 4;
    pub const RESERVED: Field = 4..8;
    pub const TARGET: Field = 8..24;
    pub const OPTIONS: Rest = 24..;
}

/// Offsets inside an option.
mod opt {
    pub const TYPE: usize = 0;
    pub const LENGTH: usize = 1;
    pub const LLADDR: super::Field = 2..8;
}

const FLAG_ROUTER: u8 = 0x80;
const FLAG_SOLICITED: u8 = 0x40;
const FLAG_OVERRIDE: u8 = 0x20;

/// The flags of a Neighbor Advertisement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NeighborFlags {
    /// R: the sender is a router.
    pub router: bool,
    /// S: an answer to a solicitation.
    pub solicited: bool,
    /// O: override a cached link-layer address.
    pub override_: bool,
}

impl NeighborFlags {
    fn from_byte(b: u8) -> NeighborFlags {
        NeighborFlags {
            router: b & FLAG_ROUTER != 0,
            solicited: b & FLAG_SOLICITED != 0,
            override_: b & FLAG_OVERRIDE != 0,
        }
    }

    fn to_byte(self) -> u8 {
        let mut b = 0;
        if self.router {
            b |= FLAG_ROUTER;
        }
        if self.solicited {
            b |= FLAG_SOLICITED;
        }
        if self.override_ {
            b |= FLAG_OVERRIDE;
        }
        b
    }
}

/// A view of a Neighbor Solicitation or Advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Message<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> Message<T> {
        Message { buffer }
    }

    /// Wraps `buffer` and runs [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Message<T>> {
        let m = Self::new_unchecked(buffer);
        m.check_len()?;
        Ok(m)
    }

    /// `Truncated` if shorter than 24 bytes; every option must have a non-zero length
    /// (`Malformed`, RFC 4861 4.6) and end within the buffer (`Truncated`).
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < MESSAGE_LEN {
            return Err(Error::Truncated);
        }
        let mut rest = self.options();
        while !rest.is_empty() {
            let units = usize::from(bytes::get_u8(rest, opt::LENGTH));
            if rest.len() < 2 {
                return Err(Error::Truncated);
            }
            if units == 0 {
                return Err(Error::Malformed);
            }
            let len = units.saturating_mul(8);
            rest = rest.get(len..).ok_or(Error::Truncated)?;
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn msg_type(&self) -> u8 {
        bytes::get_u8(self.b(), field::TYPE)
    }

    pub fn msg_code(&self) -> u8 {
        bytes::get_u8(self.b(), field::CODE)
    }

    /// The Advertisement flags (meaningless in a Solicitation, whose field is reserved).
    pub fn flags(&self) -> NeighborFlags {
        NeighborFlags::from_byte(bytes::get_u8(self.b(), field::FLAGS))
    }

    pub fn target_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(bytes::get_array::<16>(self.b(), field::TARGET))
    }

    /// Everything after the target address.
    pub fn options(&self) -> &[u8] {
        bytes::slice(self.b(), field::OPTIONS)
    }

    /// The first link-layer address option of `kind` that is an Ethernet address (8 bytes
    /// long; options of other lengths are skipped, as Linux does). Needs a checked view to
    /// see every option.
    pub fn lladdr_option(&self, kind: u8) -> Option<Address> {
        let mut rest = self.options();
        while let Some(&units) = rest.get(opt::LENGTH) {
            let len = usize::from(units).saturating_mul(8);
            if len == 0 {
                return None;
            }
            let this = rest.get(..len)?;
            if bytes::get_u8(this, opt::TYPE) == kind && len == LLADDR_OPT_LEN {
                return Some(bytes::get_array(this, opt::LLADDR));
            }
            rest = rest.get(len..)?;
        }
        None
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Message<T> {
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    pub fn set_msg_type(&mut self, t: u8) {
        bytes::set_u8(self.bm(), field::TYPE, t);
    }

    pub fn set_msg_code(&mut self, c: u8) {
        bytes::set_u8(self.bm(), field::CODE, c);
    }

    /// Writes the flags and zeroes the rest of the reserved field.
    pub fn set_flags(&mut self, f: NeighborFlags) {
        bytes::set_u32(self.bm(), field::RESERVED, u32::from(f.to_byte()) << 24);
    }

    pub fn set_target_addr(&mut self, a: Ipv6Addr) {
        bytes::set_bytes(self.bm(), field::TARGET, &a.octets());
    }

    pub fn options_mut(&mut self) -> &mut [u8] {
        bytes::slice_mut(self.bm(), field::OPTIONS)
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Message<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// A parsed Neighbor Solicitation or Advertisement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Repr {
    NeighborSolicit {
        target_addr: Ipv6Addr,
        /// The source link-layer address option.
        lladdr: Option<Address>,
    },
    NeighborAdvert {
        flags: NeighborFlags,
        target_addr: Ipv6Addr,
        /// The target link-layer address option.
        lladdr: Option<Address>,
    },
}

impl Repr {
    /// Parses a checked message sent from `src` to `dst`: `Checksum` if the ICMPv6 checksum
    /// does not verify; `Malformed` for a code other than 0 or a multicast target (RFC 4861
    /// 7.1.1, 7.1.2); `Unsupported` for another ICMPv6 type.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        msg: &Message<&T>,
        src: &Ipv6Addr,
        dst: &Ipv6Addr,
    ) -> Result<Repr> {
        msg.check_len()?;
        if !icmpv6::Packet::new_unchecked(msg.as_ref()).verify_checksum(src, dst) {
            return Err(Error::Checksum);
        }
        let target_addr = msg.target_addr();
        if msg.msg_code() != 0 || target_addr.is_multicast() {
            return Err(Error::Malformed);
        }
        match msg.msg_type() {
            TYPE_NS => Ok(Repr::NeighborSolicit {
                target_addr,
                lladdr: msg.lladdr_option(OPT_SOURCE_LLADDR),
            }),
            TYPE_NA => Ok(Repr::NeighborAdvert {
                flags: msg.flags(),
                target_addr,
                lladdr: msg.lladdr_option(OPT_TARGET_LLADDR),
            }),
            _ => Err(Error::Unsupported),
        }
    }

    fn lladdr(&self) -> Option<Address> {
        match *self {
            Repr::NeighborSolicit { lladdr, .. } | Repr::NeighborAdvert { lladdr, .. } => lladdr,
        }
    }

    /// The message length: 24, plus 8 with a link-layer address option.
    pub fn buffer_len(&self) -> usize {
        if self.lladdr().is_some() {
            MESSAGE_LEN.saturating_add(LLADDR_OPT_LEN)
        } else {
            MESSAGE_LEN
        }
    }

    /// Writes the message with a zero checksum (then call `icmpv6::Packet::fill_checksum`).
    /// A buffer shorter than [`buffer_len`](Self::buffer_len) is left incomplete.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, msg: &mut Message<T>) {
        let (ty, flags, target, opt_type) = match *self {
            Repr::NeighborSolicit { target_addr, .. } => (
                TYPE_NS,
                NeighborFlags::default(),
                target_addr,
                OPT_SOURCE_LLADDR,
            ),
            Repr::NeighborAdvert {
                flags, target_addr, ..
            } => (TYPE_NA, flags, target_addr, OPT_TARGET_LLADDR),
        };
        msg.set_msg_type(ty);
        msg.set_msg_code(0);
        bytes::set_u16(msg.bm(), field::CHECKSUM, 0);
        msg.set_flags(flags);
        msg.set_target_addr(target);
        if let Some(mac) = self.lladdr() {
            let o = msg.options_mut();
            bytes::set_u8(o, opt::TYPE, opt_type);
            bytes::set_u8(o, opt::LENGTH, 1);
            bytes::set_bytes(o, opt::LLADDR, &mac);
        }
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

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn built(r: &Repr, src: &Ipv6Addr, dst: &Ipv6Addr) -> Vec<u8> {
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(&mut Message::new_unchecked(&mut b[..]));
        icmpv6::Packet::new_unchecked(&mut b[..]).fill_checksum(src, dst);
        b
    }

    #[test]
    fn solicitation_and_advertisement_round_trip() {
        let (src, dst) = (a("fd00:a::10"), a("ff02::1:ff00:1"));
        let ns = Repr::NeighborSolicit {
            target_addr: a("fd00:a::1"),
            lladdr: Some([2, 0, 0, 0, 0x0a, 0xfe]),
        };
        let b = built(&ns, &src, &dst);
        assert_eq!(b.len(), 32);
        assert_eq!(&b[..2], &[135, 0]);
        assert_eq!(&b[24..32], &[1, 1, 2, 0, 0, 0, 0x0a, 0xfe]);
        let m = Message::new_checked(&b[..]).unwrap();
        assert_eq!(Repr::parse(&m, &src, &dst), Ok(ns));
        assert_eq!(Repr::parse(&m, &src, &a("ff02::1")), Err(Error::Checksum));

        let na = Repr::NeighborAdvert {
            flags: NeighborFlags {
                router: true,
                solicited: false,
                override_: true,
            },
            target_addr: a("fd00:a::1"),
            lladdr: Some([2, 0, 0, 0, 0xaa, 1]),
        };
        let b = built(&na, &src, &dst);
        assert_eq!(b[4], 0xa0, "R and O");
        assert_eq!(&b[24..26], &[2, 1]);
        let m = Message::new_checked(&b[..]).unwrap();
        assert_eq!(Repr::parse(&m, &src, &dst), Ok(na));
        // without the option
        let bare = Repr::NeighborAdvert {
            flags: NeighborFlags::default(),
            target_addr: a("fd00:a::1"),
            lladdr: None,
        };
        let b = built(&bare, &src, &dst);
        assert_eq!(b.len(), 24);
        assert_eq!(
            Repr::parse(&Message::new_checked(&b[..]).unwrap(), &src, &dst),
            Ok(bare)
        );
    }

    #[test]
    fn options_are_walked_and_checked() {
        let (src, dst) = (a("fd00:a::10"), a("fd00:a::1"));
        let ns = Repr::NeighborSolicit {
            target_addr: a("fd00:a::1"),
            lladdr: None,
        };
        let mut b = built(&ns, &src, &dst);
        // a nonce option (14, 1 unit) before an 16-byte link-layer option (skipped) and
        // the Ethernet one
        b.extend_from_slice(&[14, 1, 1, 2, 3, 4, 5, 6]);
        b.extend_from_slice(&[1, 2, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]);
        b.extend_from_slice(&[1, 1, 2, 0, 0, 0, 0, 7]);
        icmpv6::Packet::new_unchecked(&mut b[..]).fill_checksum(&src, &dst);
        let m = Message::new_checked(&b[..]).unwrap();
        assert_eq!(
            Repr::parse(&m, &src, &dst).unwrap(),
            Repr::NeighborSolicit {
                target_addr: a("fd00:a::1"),
                lladdr: Some([2, 0, 0, 0, 0, 7])
            }
        );
        // a zero-length option
        let mut z = b.clone();
        z[25] = 0;
        assert_eq!(Message::new_checked(&z[..]).unwrap_err(), Error::Malformed);
        // an option past the end
        let mut t = b.clone();
        t.truncate(b.len() - 1);
        assert_eq!(Message::new_checked(&t[..]).unwrap_err(), Error::Truncated);
        // one byte of option
        let mut o = built(&ns, &src, &dst);
        o.push(1);
        assert_eq!(Message::new_checked(&o[..]).unwrap_err(), Error::Truncated);
        // code, multicast target, other type
        let mut c = built(&ns, &src, &dst);
        c[1] = 1;
        icmpv6::Packet::new_unchecked(&mut c[..]).fill_checksum(&src, &dst);
        let m = Message::new_checked(&c[..]).unwrap();
        assert_eq!(Repr::parse(&m, &src, &dst), Err(Error::Malformed));
        let mc = Repr::NeighborSolicit {
            target_addr: a("ff02::1"),
            lladdr: None,
        };
        let b = built(&mc, &src, &dst);
        let m = Message::new_checked(&b[..]).unwrap();
        assert_eq!(Repr::parse(&m, &src, &dst), Err(Error::Malformed));
        let mut e = built(&ns, &src, &dst);
        e[0] = 128;
        icmpv6::Packet::new_unchecked(&mut e[..]).fill_checksum(&src, &dst);
        let m = Message::new_checked(&e[..]).unwrap();
        assert_eq!(Repr::parse(&m, &src, &dst), Err(Error::Unsupported));
    }

    #[test]
    fn garbage_never_panics() {
        let s = a("::1");
        let mut rng = Rng(4861);
        for _ in 0..5000 {
            let n = rng.below(64);
            let g = rng.bytes(n);
            let u = Message::new_unchecked(&g[..]);
            let _ = (u.flags(), u.target_addr(), u.lladdr_option(1), u.options());
            if let Ok(m) = Message::new_checked(&g[..]) {
                let _ = Repr::parse(&m, &s, &s);
            }
        }
    }
}
