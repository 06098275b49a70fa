//! An open-addressing map from SPI to a slot index: the inbound lookup of M1.
//!
//! Linear probing over a power-of-two table kept at most half full, with backward-shift
//! deletion (no tombstones, so lookups never degrade after churn). SPI 0 is reserved by RFC
//! 4303 and marks an empty bucket. The hash multiplies by a per-table random odd constant so
//! that a peer choosing SPIs cannot aim them at one bucket chain.

use crate::ids::Spi;

#[derive(Clone, Copy, Default)]
struct Bucket {
    spi: u32,
    slot: u32,
}

pub struct SpiTable {
    buckets: Box<[Bucket]>,
    mask: usize,
    len: usize,
    mul: u64,
}

/// Returned by [`SpiTable::insert`] for SPI 0, which RFC 4303 reserves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReservedSpi;

impl SpiTable {
    /// A table that holds `capacity` SPIs without growing.
    pub fn with_capacity(capacity: usize, seed: u64) -> Self {
        let n = (capacity.max(8) * 2).next_power_of_two();
        SpiTable {
            buckets: vec![Bucket::default(); n].into_boxed_slice(),
            mask: n - 1,
            len: 0,
            // Odd, with the seed's entropy in the high bits that the shift keeps.
            mul: (seed ^ 0x9e37_79b9_7f4a_7c15) | 1,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn home(&self, spi: u32) -> usize {
        ((u64::from(spi).wrapping_mul(self.mul)) >> 32) as usize & self.mask
    }

    #[inline]
    pub fn get(&self, spi: Spi) -> Option<u32> {
        if spi.0 == 0 {
            return None;
        }
        let mut i = self.home(spi.0);
        loop {
            let b = self.buckets.get(i)?;
            if b.spi == spi.0 {
                return Some(b.slot);
            }
            if b.spi == 0 {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Prefetches the bucket where the search for `spi` starts (see [`crate::prefetch`]).
    #[inline]
    pub fn prefetch(&self, spi: Spi) {
        if let Some(b) = self.buckets.get(self.home(spi.0)) {
            crate::prefetch::line(b);
        }
    }

    /// Inserts or replaces; returns the slot it replaced.
    pub fn insert(&mut self, spi: Spi, slot: u32) -> Result<Option<u32>, ReservedSpi> {
        if spi.0 == 0 {
            return Err(ReservedSpi);
        }
        if (self.len + 1) * 2 > self.buckets.len() {
            self.grow();
        }
        let mut i = self.home(spi.0);
        loop {
            let Some(b) = self.buckets.get_mut(i) else {
                return Ok(None);
            };
            if b.spi == spi.0 {
                return Ok(Some(core::mem::replace(&mut b.slot, slot)));
            }
            if b.spi == 0 {
                *b = Bucket { spi: spi.0, slot };
                self.len += 1;
                return Ok(None);
            }
            i = (i + 1) & self.mask;
        }
    }

    pub fn remove(&mut self, spi: Spi) -> Option<u32> {
        if spi.0 == 0 {
            return None;
        }
        let mut i = self.home(spi.0);
        loop {
            let b = *self.buckets.get(i)?;
            if b.spi == 0 {
                return None;
            }
            if b.spi == spi.0 {
                break;
            }
            i = (i + 1) & self.mask;
        }
        let removed = self.buckets.get(i).map(|b| b.slot);
        // Backward-shift: pull later members of the probe run into the hole when their home
        // position allows it.
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let b = self.buckets.get(j).copied().unwrap_or_default();
            if b.spi == 0 {
                break;
            }
            let home = self.home(b.spi);
            // Distance from home to j, versus from home to the hole (cyclic).
            if (j.wrapping_sub(home) & self.mask) >= (j.wrapping_sub(hole) & self.mask) {
                if let Some(h) = self.buckets.get_mut(hole) {
                    *h = b;
                }
                hole = j;
            }
        }
        if let Some(h) = self.buckets.get_mut(hole) {
            *h = Bucket::default();
        }
        self.len -= 1;
        removed
    }

    fn grow(&mut self) {
        let n = self.buckets.len() * 2;
        let old = core::mem::replace(
            &mut self.buckets,
            vec![Bucket::default(); n].into_boxed_slice(),
        );
        self.mask = n - 1;
        self.len = 0;
        for b in old.iter().filter(|b| b.spi != 0) {
            let _ = self.insert(Spi(b.spi), b.slot);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (Spi, u32)> + '_ {
        self.buckets
            .iter()
            .filter(|b| b.spi != 0)
            .map(|b| (Spi(b.spi), b.slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn zero_is_reserved() {
        let mut t = SpiTable::with_capacity(4, 1);
        assert_eq!(t.insert(Spi(0), 1), Err(ReservedSpi));
        assert_eq!(t.get(Spi(0)), None);
    }

    #[test]
    fn matches_a_hashmap_under_churn() {
        let mut t = SpiTable::with_capacity(16, 42);
        let mut m = HashMap::new();
        let mut x = 88172645463325252u64;
        for i in 0..200_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // A small key space forces collisions, replacements and removals of present keys.
            let spi = Spi((x % 5000) as u32 + 1);
            match x % 3 {
                0 => assert_eq!(t.remove(spi), m.remove(&spi)),
                _ => assert_eq!(t.insert(spi, i).unwrap(), m.insert(spi, i)),
            }
            if i % 1000 == 0 {
                assert_eq!(t.len(), m.len());
                for (k, v) in &m {
                    assert_eq!(t.get(*k), Some(*v));
                }
            }
        }
        assert_eq!(t.iter().count(), m.len());
        for k in 1..=5000 {
            assert_eq!(t.get(Spi(k)), m.get(&Spi(k)).copied());
        }
    }

    #[test]
    fn delete_and_reinsert_keep_every_other_spi_reachable() {
        // Random SPIs (what peers pick), one table sized for them: delete every third,
        // check the rest, reinsert with new slots, check all against the model.
        let mut t = SpiTable::with_capacity(30_000, 3);
        let mut m = HashMap::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        while m.len() < 30_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let spi = Spi((x >> 32) as u32 | 1);
            let slot = m.len() as u32;
            if let std::collections::hash_map::Entry::Vacant(e) = m.entry(spi) {
                e.insert(slot);
                assert_eq!(t.insert(spi, slot), Ok(None));
            }
        }
        let spis: Vec<Spi> = m.keys().copied().collect();
        for (k, spi) in spis.iter().enumerate().filter(|(k, _)| k % 3 == 0) {
            assert_eq!(t.remove(*spi), m.remove(spi), "remove #{k}");
            assert_eq!(t.remove(*spi), None, "a second remove finds nothing");
        }
        for spi in &spis {
            assert_eq!(t.get(*spi), m.get(spi).copied());
        }
        for (k, spi) in spis.iter().enumerate().filter(|(k, _)| k % 3 == 0) {
            let slot = 1_000_000 + k as u32;
            assert_eq!(t.insert(*spi, slot), Ok(None));
            m.insert(*spi, slot);
        }
        assert_eq!(t.len(), m.len());
        for spi in &spis {
            assert_eq!(t.get(*spi), m.get(spi).copied());
        }
    }

    #[test]
    fn a_full_table_grows_and_loses_no_spi() {
        // Sized for 8, filled with 5000: every insert past half full doubles the table,
        // and every SPI inserted before is still found after each doubling.
        let mut t = SpiTable::with_capacity(8, 9);
        let first = t.buckets.len();
        for s in 1..=5000u32 {
            assert_eq!(t.insert(Spi(s.wrapping_mul(0x9e37_79b9)), s), Ok(None));
            assert!(t.len() * 2 <= t.buckets.len(), "at most half full");
        }
        assert!(t.buckets.len() > first);
        for s in 1..=5000u32 {
            assert_eq!(t.get(Spi(s.wrapping_mul(0x9e37_79b9))), Some(s));
        }
        assert_eq!(t.iter().count(), 5000);
    }

    #[test]
    fn adjacent_spis_spread() {
        // Sequential SPIs (what many peers allocate) must not form one long probe run.
        let mut t = SpiTable::with_capacity(1 << 16, 7);
        for s in 1..=(1u32 << 16) {
            t.insert(Spi(s), s).unwrap();
        }
        let mut longest = 0;
        let mut run = 0;
        for b in t.buckets.iter() {
            run = if b.spi == 0 { 0 } else { run + 1 };
            longest = longest.max(run);
        }
        assert!(longest < 64, "longest probe run {longest}");
    }
}
