//! Host bindings: a road warrior's virtual IP -> (the sources allowed to reach it, its
//! outbound SA), looked up before the SPD, so a gateway with many clients changes one entry per
//! client instead of recompiling its policy.

use core::net::IpAddr;

use crate::ids::SaId;
use crate::spd::Prefix;

/// Host bindings by destination: one exact-match table per family, keyed by the address as an
/// integer (hashing a `u32` is one multiply; hashing an `IpAddr` fed its discriminant and bytes
/// to the hasher piece by piece, ~6 ns per packet), with foldhash and a per-process random
/// seed (the keys are the control plane's, the lookups any LAN host's).
#[derive(Default)]
pub(super) struct HostMap {
    v4: std::collections::HashMap<u32, (Prefix, SaId), foldhash::fast::RandomState>,
    v6: std::collections::HashMap<u128, (Prefix, SaId), foldhash::fast::RandomState>,
}

impl HostMap {
    #[inline]
    pub(super) fn get(&self, a: &IpAddr) -> Option<&(Prefix, SaId)> {
        match a {
            IpAddr::V4(v) => self.v4.get(&u32::from(*v)),
            IpAddr::V6(v) => self.v6.get(&u128::from(*v)),
        }
    }

    pub(super) fn insert(&mut self, a: IpAddr, b: (Prefix, SaId)) -> Option<(Prefix, SaId)> {
        match a {
            IpAddr::V4(v) => self.v4.insert(u32::from(v), b),
            IpAddr::V6(v) => self.v6.insert(u128::from(v), b),
        }
    }

    pub(super) fn remove(&mut self, a: &IpAddr) -> Option<(Prefix, SaId)> {
        match a {
            IpAddr::V4(v) => self.v4.remove(&u32::from(*v)),
            IpAddr::V6(v) => self.v6.remove(&u128::from(*v)),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}
