//! The identifiers the IKE core hands out and the control plane holds: SPIs of IKE SAs and
//! CHILD_SAs, and our handle for an IKE SA.
//!
//! Owns: the newtypes and their wire forms (big-endian, RFC 7296 3.1 and 3.3.1).
//! Must never: be built from a byte string of the wrong length (`from_slice` says `None`).

use core::fmt;

/// An IKE SA SPI: 8 octets (RFC 7296 3.1). The initiator's is never zero; the responder's is
/// zero only in the first IKE_SA_INIT request.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct IkeSpi(pub u64);

impl IkeSpi {
    pub const ZERO: IkeSpi = IkeSpi(0);

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    pub fn to_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    /// From a proposal's or notify's SPI field: exactly 8 octets.
    pub fn from_slice(b: &[u8]) -> Option<IkeSpi> {
        <[u8; 8]>::try_from(b)
            .ok()
            .map(|a| IkeSpi(u64::from_be_bytes(a)))
    }
}

/// A CHILD_SA SPI: 4 octets for ESP (RFC 4303; 1 to 255 are reserved, 0 is never one).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ChildSpi(pub u32);

impl ChildSpi {
    pub fn to_bytes(self) -> [u8; 4] {
        self.0.to_be_bytes()
    }

    /// From a proposal's, notify's or delete's SPI field: exactly 4 octets.
    pub fn from_slice(b: &[u8]) -> Option<ChildSpi> {
        <[u8; 4]>::try_from(b)
            .ok()
            .map(|a| ChildSpi(u32::from_be_bytes(a)))
    }
}

/// Our handle for an IKE SA: our own SPI of it, unique in this endpoint (and across a cluster
/// when the SPI allocator reserves node bits). An IKE SA rekey makes a new one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IkeSaId(pub IkeSpi);

macro_rules! hex_forms {
    ($t:ty, $w:literal, $get:expr) => {
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($t), "({:0", $w, "x})"), $get(self))
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!("{:0", $w, "x}"), $get(self))
            }
        }
        impl fmt::LowerHex for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&$get(self), f)
            }
        }
    };
}

hex_forms!(IkeSpi, 16, |s: &IkeSpi| s.0);
hex_forms!(ChildSpi, 8, |s: &ChildSpi| s.0);
hex_forms!(IkeSaId, 16, |s: &IkeSaId| s.0 .0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms_and_printing() {
        assert_eq!(
            IkeSpi::from_slice(&[0, 0, 0, 0, 0, 0, 1, 2]),
            Some(IkeSpi(0x102))
        );
        assert_eq!(IkeSpi::from_slice(&[1, 2]), None);
        assert_eq!(
            ChildSpi::from_slice(&[0xc0, 0, 0, 1]),
            Some(ChildSpi(0xc000_0001))
        );
        assert_eq!(ChildSpi::from_slice(&[0; 5]), None);
        assert_eq!(ChildSpi(0x1234).to_string(), "00001234");
        assert_eq!(format!("{:08x}", ChildSpi(0xab)), "000000ab");
        assert_eq!(
            format!("{:?}", IkeSaId(IkeSpi(1))),
            "IkeSaId(0000000000000001)"
        );
    }
}
