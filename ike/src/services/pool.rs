//! Virtual IPs for road warriors (RFC 7296 3.15, the CP payload): an [`AddressPool`] leases an
//! address from a configured [`Pool`] to an IKE SA, and takes it back when that IKE SA goes.
//! An IKE SA rekey moves the lease to the new IKE SA. [`LocalPool`] keeps the leases in this
//! process.
//!
//! Owns: which address is leased to which IKE SA.
//! Must never: lease one address twice; keep a lease after its IKE SA is gone.

use std::collections::HashMap;

use core::net::Ipv4Addr;

use crate::config::Pool;
use crate::ids::IkeSaId;

/// Where virtual IPs come from.
pub trait AddressPool: Send {
    /// An address of `pool` for IKE SA `ike` (`None`: the pool is exhausted).
    fn lease(&mut self, pool: &Pool, ike: IkeSaId) -> Option<Ipv4Addr>;
    /// Leases exactly `addr` of `pool` to IKE SA `ike` (an adopted IKE SA's lease); false if
    /// `addr` is not in `pool` or leased already.
    fn claim(&mut self, pool: &Pool, addr: Ipv4Addr, ike: IkeSaId) -> bool;
    /// IKE SA `ike` is gone: its address is free again.
    fn release(&mut self, ike: IkeSaId);
    /// IKE SA `from` was replaced by `to` (a rekey): the lease goes along.
    fn rebind(&mut self, from: IkeSaId, to: IkeSaId);
    /// Every lease, for views and tests.
    fn leases(&self) -> Vec<(Ipv4Addr, IkeSaId)>;
    /// The address leased to IKE SA `ike`, if any (an export asks for every IKE SA: a pool
    /// holding many leases answers without listing them all).
    fn lease_of(&self, ike: IkeSaId) -> Option<Ipv4Addr> {
        self.leases()
            .into_iter()
            .find_map(|(a, i)| (i == ike).then_some(a))
    }
}

/// Leases held in this process: O(1) per lease while the pool has room.
#[derive(Debug, Default)]
pub struct LocalPool {
    by_addr: HashMap<Ipv4Addr, IkeSaId>,
    by_ike: HashMap<IkeSaId, Ipv4Addr>,
    /// Where the next search starts, so a released address is not handed out again at once.
    cursor: u32,
}

impl AddressPool for LocalPool {
    fn lease(&mut self, pool: &Pool, ike: IkeSaId) -> Option<Ipv4Addr> {
        let first = u32::from(pool.first);
        let count = pool.count.max(1);
        for k in 0..pool.count {
            let i = self.cursor.wrapping_add(k).checked_rem(count)?;
            let a = Ipv4Addr::from(first.checked_add(i)?);
            if let std::collections::hash_map::Entry::Vacant(e) = self.by_addr.entry(a) {
                e.insert(ike);
                if let Some(old) = self.by_ike.insert(ike, a) {
                    // One lease per IKE SA: a second one replaces the first.
                    self.by_addr.remove(&old);
                }
                self.cursor = i.wrapping_add(1);
                return Some(a);
            }
        }
        None
    }

    fn claim(&mut self, pool: &Pool, addr: Ipv4Addr, ike: IkeSaId) -> bool {
        let offset = u32::from(addr).checked_sub(u32::from(pool.first));
        if offset.is_none_or(|o| o >= pool.count) || self.by_addr.contains_key(&addr) {
            return false;
        }
        if self.by_ike.contains_key(&ike) {
            return false;
        }
        self.by_addr.insert(addr, ike);
        self.by_ike.insert(ike, addr);
        true
    }

    fn release(&mut self, ike: IkeSaId) {
        if let Some(a) = self.by_ike.remove(&ike) {
            self.by_addr.remove(&a);
        }
    }

    fn rebind(&mut self, from: IkeSaId, to: IkeSaId) {
        if let Some(a) = self.by_ike.remove(&from) {
            self.by_addr.insert(a, to);
            self.by_ike.insert(to, a);
        }
    }

    fn leases(&self) -> Vec<(Ipv4Addr, IkeSaId)> {
        let mut v: Vec<_> = self.by_addr.iter().map(|(a, i)| (*a, *i)).collect();
        v.sort();
        v
    }

    fn lease_of(&self, ike: IkeSaId) -> Option<Ipv4Addr> {
        self.by_ike.get(&ike).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::IkeSpi;

    fn id(n: u64) -> IkeSaId {
        IkeSaId(IkeSpi(n))
    }

    #[test]
    fn leases_release_rebind_and_exhaustion() {
        let pool = Pool {
            first: "10.99.0.1".parse().unwrap(),
            count: 2,
        };
        let mut p = LocalPool::default();
        assert_eq!(p.lease(&pool, id(1)), Some("10.99.0.1".parse().unwrap()));
        assert_eq!(p.lease(&pool, id(2)), Some("10.99.0.2".parse().unwrap()));
        assert_eq!(p.lease(&pool, id(3)), None, "exhausted");
        p.rebind(id(1), id(4));
        assert_eq!(p.lease_of(id(4)), Some("10.99.0.1".parse().unwrap()));
        assert_eq!(p.lease_of(id(1)), None);
        assert_eq!(
            p.leases(),
            [
                ("10.99.0.1".parse().unwrap(), id(4)),
                ("10.99.0.2".parse().unwrap(), id(2))
            ]
        );
        p.release(id(1));
        assert_eq!(p.leases().len(), 2, "the old id holds nothing any more");
        p.release(id(4));
        assert_eq!(p.lease(&pool, id(5)), Some("10.99.0.1".parse().unwrap()));
    }

    #[test]
    fn a_claim_takes_exactly_a_free_address_of_the_pool() {
        let pool = Pool {
            first: "10.99.0.1".parse().unwrap(),
            count: 2,
        };
        let mut p = LocalPool::default();
        let a2: Ipv4Addr = "10.99.0.2".parse().unwrap();
        assert!(p.claim(&pool, a2, id(1)));
        assert!(!p.claim(&pool, a2, id(2)), "leased already");
        assert!(
            !p.claim(&pool, "10.99.0.3".parse().unwrap(), id(2)),
            "past the pool"
        );
        assert!(
            !p.claim(&pool, "10.99.0.0".parse().unwrap(), id(2)),
            "before it"
        );
        assert!(
            !p.claim(&pool, "10.99.0.1".parse().unwrap(), id(1)),
            "one per IKE SA"
        );
        assert_eq!(p.leases(), [(a2, id(1))]);
        assert_eq!(p.lease(&pool, id(3)), Some("10.99.0.1".parse().unwrap()));
        assert_eq!(
            p.lease(&pool, id(4)),
            None,
            "the claimed address is not handed out"
        );
    }
}
