//! Wire formats: zero-copy views and checked representations of the headers the gateway reads
//! and writes.
//!
//! This module owns the byte layout of Ethernet II, ARP, IPv4, IPv6 (with an extension-header
//! walk and the Fragment header), UDP, TCP, ICMPv4, ICMPv6 (with neighbour discovery's
//! solicitations and advertisements), the ESP header and trailer (RFC 4303), UDP encapsulation
//! of ESP (RFC 3948) and the Internet checksum (RFC 1071, RFC 1624).
//!
//! Every format follows one pattern (after smoltcp's `wire`):
//!
//! * `Packet<T: AsRef<[u8]>>` (`Frame` for Ethernet) is a view over a buffer. `new_unchecked`
//!   wraps any buffer; `new_checked` also runs `check_len`, which validates every length field
//!   an accessor relies on. Getters read the field in place; setters exist where
//!   `T: AsMut<[u8]>`.
//! * `Repr` is an owned, parsed header: `Repr::parse` checks what the header means (version,
//!   checksum where it needs no context, ...), `Repr::emit` writes it into a `Packet`.
//!
//! What this module must never do: panic on a packet. After `new_checked` succeeds no accessor
//! panics on any byte sequence, and even on a view made with `new_unchecked` over a buffer that
//! is too short, getters return zero / empty slices and setters do nothing rather than panic.
//! Indexing, `unwrap` and `panic!` are denied by lint below; lengths read from packets go
//! through checked arithmetic.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use core::fmt;

pub mod arp;
pub mod checksum;
pub mod esp;
pub mod ethernet;
pub mod icmpv4;
pub mod icmpv6;
pub mod ip;
pub mod ipv4;
pub mod ipv6;
pub mod ipv6frag;
pub mod natt;
pub mod ndp;
pub mod tcp;
pub mod udp;

pub(crate) mod bytes;

pub use ethernet::EtherType;
pub use ip::{IpProtocol, IpRepr};

/// The one error of the wire module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// The buffer is shorter than a header or than a length field says.
    Truncated,
    /// A field has a value the format does not allow (wrong version, length field too small,
    /// bad padding, ...).
    Malformed,
    /// The checksum does not verify.
    Checksum,
    /// Well-formed, but something this gateway does not handle (a fragment, an unknown type).
    Unsupported,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Truncated => "truncated packet",
            Error::Malformed => "malformed packet",
            Error::Checksum => "bad checksum",
            Error::Unsupported => "unsupported packet",
        })
    }
}

impl std::error::Error for Error {}

/// The wire module's result.
pub type Result<T> = core::result::Result<T, Error>;
