//! Host bindings: a road warrior's virtual IP -> (the sources allowed to reach it, its
//! outbound SA), looked up before the SPD, so a gateway with many clients changes one entry per
//! client instead of recompiling its policy.

use core::net::IpAddr;

use crate::ids::SaId;
use crate::spd::Prefix;

/// Host bindings by destination. IPv4 (the many-client case) in [`V4Table`], an
/// open-addressing table whose bucket a burst can prefetch before it looks anything up
/// (`worker::warm`); IPv6 in a std map keyed by the address as an integer. Both hash with a
/// per-process random seed (the keys are the control plane's, the lookups any LAN host's).
#[derive(Default)]
pub(super) struct HostMap {
    v4: V4Table,
    v6: std::collections::HashMap<u128, (Prefix, SaId), foldhash::fast::RandomState>,
}

impl HostMap {
    #[inline(always)]
    pub(super) fn get(&self, a: &IpAddr) -> Option<&(Prefix, SaId)> {
        match a {
            IpAddr::V4(v) => self.v4.get(u32::from(*v)),
            IpAddr::V6(v) => self.v6.get(&u128::from(*v)),
        }
    }

    /// Prefetches the line where `a`'s IPv4 binding would be.
    #[inline]
    pub(super) fn prefetch_v4(&self, a: u32) {
        self.v4.prefetch(a);
    }

    pub(super) fn insert(&mut self, a: IpAddr, b: (Prefix, SaId)) -> Option<(Prefix, SaId)> {
        match a {
            IpAddr::V4(v) => self.v4.insert(u32::from(v), b),
            IpAddr::V6(v) => self.v6.insert(u128::from(v), b),
        }
    }

    pub(super) fn remove(&mut self, a: &IpAddr) -> Option<(Prefix, SaId)> {
        match a {
            IpAddr::V4(v) => self.v4.remove(u32::from(*v)),
            IpAddr::V6(v) => self.v6.remove(&u128::from(*v)),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

type Entry4 = Option<(u32, (Prefix, SaId))>;

/// IPv4 bindings: linear probing over a power-of-two array at most half full, the bucket a
/// multiply-shift of the seeded address (one line to prefetch, lookups end at the first empty
/// slot), deletion by backward shift (no tombstones).
pub(super) struct V4Table {
    slots: Vec<Entry4>,
    len: usize,
    seed: u64,
}

impl Default for V4Table {
    fn default() -> V4Table {
        use core::hash::BuildHasher;
        V4Table {
            slots: Vec::new(),
            len: 0,
            seed: foldhash::fast::RandomState::default().hash_one(0x686f_7374u64) | 1,
        }
    }
}

impl V4Table {
    #[inline]
    fn home(&self, k: u32) -> usize {
        let bits = self.slots.len().trailing_zeros();
        let h = (u64::from(k) ^ (self.seed >> 32)).wrapping_mul(self.seed);
        // The top bits of the product: `bits` of them (the table is a power of two, >= 16).
        (h >> (64 - bits)) as usize
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    #[inline(always)]
    pub(super) fn get(&self, k: u32) -> Option<&(Prefix, SaId)> {
        if self.len == 0 {
            return None;
        }
        let mut i = self.home(k);
        loop {
            match self.slots.get(i)? {
                None => return None,
                Some((key, v)) if *key == k => return Some(v),
                Some(_) => i = (i + 1) & self.mask(),
            }
        }
    }

    #[inline]
    pub(super) fn prefetch(&self, k: u32) {
        if self.len != 0 {
            if let Some(s) = self.slots.get(self.home(k)) {
                crate::prefetch::line(s);
            }
        }
    }

    pub(super) fn insert(&mut self, k: u32, v: (Prefix, SaId)) -> Option<(Prefix, SaId)> {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mut i = self.home(k);
        let mask = self.mask();
        loop {
            match self.slots.get_mut(i) {
                Some(Some((key, old))) if *key == k => return Some(core::mem::replace(old, v)),
                Some(Some(_)) => i = (i + 1) & mask,
                Some(e @ None) => {
                    *e = Some((k, v));
                    self.len += 1;
                    return None;
                }
                // Not reached: the index is masked to the table.
                None => return None,
            }
        }
    }

    fn grow(&mut self) {
        let n = (self.slots.len() * 2).max(16);
        let old = core::mem::replace(&mut self.slots, vec![None; n]);
        self.len = 0;
        for (k, v) in old.into_iter().flatten() {
            self.insert(k, v);
        }
    }

    pub(super) fn remove(&mut self, k: u32) -> Option<(Prefix, SaId)> {
        if self.len == 0 {
            return None;
        }
        let mask = self.mask();
        let mut i = self.home(k);
        loop {
            match self.slots.get(i)? {
                None => return None,
                Some((key, _)) if *key == k => break,
                Some(_) => i = (i + 1) & mask,
            }
        }
        let (_, v) = self.slots.get_mut(i)?.take()?;
        self.len -= 1;
        // Backward shift: move up every entry of the run after the hole that may sit there
        // (its home is not cyclically within (hole, its slot]).
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let Some(Some((key, _))) = self.slots.get(j) else {
                break;
            };
            let home = self.home(*key);
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                let moved = self.slots.get_mut(j).and_then(Option::take);
                if let Some(e) = self.slots.get_mut(hole) {
                    *e = moved;
                }
                hole = j;
            }
        }
        Some(v)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn val(i: u32) -> (Prefix, SaId) {
        ("0.0.0.0/0".parse().unwrap(), SaId(i))
    }

    /// Random inserts, overwrites and removals (dense keys collide in runs) decide as a std
    /// map does, and every key is found where it was put.
    #[test]
    fn the_v4_table_agrees_with_a_map() {
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for keys in [40u64, 3000] {
            let mut t = V4Table::default();
            let mut m: HashMap<u32, (Prefix, SaId)> = HashMap::new();
            for step in 0..40_000u32 {
                let k = (rnd() % keys) as u32 + 0x0a00_0000;
                match rnd() % 3 {
                    0 | 1 => assert_eq!(t.insert(k, val(step)), m.insert(k, val(step))),
                    _ => assert_eq!(t.remove(k), m.remove(&k)),
                }
                assert_eq!(t.len, m.len());
                if step % 997 == 0 {
                    for probe in 0x0a00_0000..0x0a00_0000 + keys as u32 + 5 {
                        assert_eq!(t.get(probe), m.get(&probe), "key {probe:#x}");
                    }
                }
            }
            assert!(t.slots.len() >= 2 * t.len);
            t.prefetch(0x0a00_0001);
        }
        let empty = V4Table::default();
        assert_eq!(empty.get(1), None);
        empty.prefetch(1);
    }
}
