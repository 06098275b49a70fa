//! SPI allocation: IKE SA SPIs (64 bits) and inbound CHILD_SA SPIs (32 bits), unique among
//! those this endpoint holds, random in their free bits.
//!
//! Bit layout, most significant first (the same for both sizes):
//!
//! ```text
//!   | node id (node_bits) | worker id (worker_bits) | random (the rest) |
//! ```
//!
//! With node bits, endpoints of a cluster never hand out the same SPI (each has its own node
//! id); with worker bits, a NIC or the data plane can steer inbound ESP to the core that owns
//! the SA by looking at the SPI alone. The default reserves no bits: every bit is random, as
//! a lone gateway wants. At most 16 bits are reserved in total, so a CHILD_SPI keeps at least
//! 16 random bits. CHILD_SA SPIs are never 0 to 255 (RFC 4303 reserves 1 to 255); IKE SPIs
//! are never 0. CHILD_SA SPIs are never in the reserved range either (top byte 0xff): its lower
//! half holds the SPIs of group SAs (`crate::group`), its upper half those of the connectivity
//! manager's direct SAs (`control::vcm`), so a lookup by SPI alone never confuses a unicast SA
//! with a group or direct SA, nor a group SA with a direct one. A layout whose reserved bits
//! would put every SPI of some worker in the reserved range is refused.
//!
//! Owns: the layout and the sets of SPIs in use.
//! Must never: hand out an SPI that is in use, or one whose reserved bits are not ours.

use std::collections::HashSet;

use rand_core::RngCore;

use crate::ids::{ChildSpi, IkeSpi};

/// How many bits of every SPI carry the node and worker ids, and their values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpiLayout {
    node_bits: u8,
    node: u32,
    worker_bits: u8,
    worker: u32,
}

/// A layout that cannot be.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpiLayoutError {
    #[error("{0} reserved bits: at most 16 (node and worker together)")]
    TooManyBits(u32),
    #[error("id {id} does not fit in {bits} bits")]
    IdTooLarge { id: u32, bits: u8 },
    #[error("node {node} with these bits puts CHILD_SA SPIs in the group range (top byte 0xff)")]
    GroupRange { node: u32 },
}

/// The reserved range of 32-bit SPIs: the top byte all ones (2^24 SPIs). Unicast CHILD_SA
/// SPIs from [`SpiAllocator`] are never in it.
pub const RESERVED_SPI_MASK: u32 = 0xff00_0000;
pub const RESERVED_SPI_PREFIX: u32 = 0xff00_0000;

/// The group SA range: the lower half of the reserved range, 0xff00_0000..=0xff7f_ffff (2^23
/// SPIs); the GCKS takes group SPIs only from it.
pub const GROUP_SPI_MASK: u32 = 0xff80_0000;
pub const GROUP_SPI_PREFIX: u32 = 0xff00_0000;

/// The direct SA range (the connectivity manager's client-to-client SAs): the upper half of
/// the reserved range, 0xff80_0000..=0xffff_ffff; the manager hands out SPIs only from it.
pub const DIRECT_SPI_MASK: u32 = 0xff80_0000;
pub const DIRECT_SPI_PREFIX: u32 = 0xff80_0000;

/// Whether `spi` is in the reserved range (group or direct SAs).
pub fn is_reserved_spi(spi: u32) -> bool {
    spi & RESERVED_SPI_MASK == RESERVED_SPI_PREFIX
}

/// Whether `spi` is in the group range.
pub fn is_group_spi(spi: u32) -> bool {
    spi & GROUP_SPI_MASK == GROUP_SPI_PREFIX
}

/// Whether `spi` is in the direct SA range.
pub fn is_direct_spi(spi: u32) -> bool {
    spi & DIRECT_SPI_MASK == DIRECT_SPI_PREFIX
}

/// The most bits node and worker ids may take together.
pub const MAX_RESERVED_BITS: u32 = 16;

impl SpiLayout {
    /// `node` in the top `node_bits` bits, `worker` (the default worker of this endpoint's
    /// CHILD_SAs) in the `worker_bits` below.
    pub fn new(
        node_bits: u8,
        node: u32,
        worker_bits: u8,
        worker: u32,
    ) -> Result<SpiLayout, SpiLayoutError> {
        let total = u32::from(node_bits).saturating_add(u32::from(worker_bits));
        if total > MAX_RESERVED_BITS {
            return Err(SpiLayoutError::TooManyBits(total));
        }
        for (id, bits) in [(node, node_bits), (worker, worker_bits)] {
            if u64::from(id) >= 1u64 << bits {
                return Err(SpiLayoutError::IdTooLarge { id, bits });
            }
        }
        let l = SpiLayout {
            node_bits,
            node,
            worker_bits,
            worker,
        };
        // With 8 or more reserved bits the top byte is theirs: refuse a layout whose own
        // SPIs would all be in the group range.
        if l.forced_into_group_range(worker) {
            return Err(SpiLayoutError::GroupRange { node });
        }
        Ok(l)
    }

    /// Whether every CHILD_SA SPI of `worker` would be in the group range (the reserved
    /// bits cover the top byte and it is all ones).
    fn forced_into_group_range(&self, worker: u32) -> bool {
        self.reserved() >= 8
            && is_reserved_spi(u32::try_from(self.compose(worker, 0, 32)).unwrap_or(0))
    }

    fn reserved(&self) -> u32 {
        u32::from(self.node_bits).saturating_add(u32::from(self.worker_bits))
    }

    /// The reserved bits' value, right-aligned.
    fn prefix(&self, worker: u32) -> u64 {
        (u64::from(self.node) << self.worker_bits) | u64::from(worker)
    }

    /// `random` with its top bits replaced by the prefix, for a `width`-bit SPI.
    fn compose(&self, worker: u32, random: u64, width: u32) -> u64 {
        let r = self.reserved();
        let keep = width.saturating_sub(r);
        let mask = u64::MAX
            .checked_shr(64u32.saturating_sub(keep))
            .unwrap_or(0);
        let mask = if keep == 0 { 0 } else { mask };
        let prefix = self.prefix(worker).checked_shl(keep).unwrap_or(0);
        prefix | (random & mask)
    }

    /// The worker id a CHILD_SA SPI carries (0 without worker bits).
    pub fn worker_of(&self, spi: ChildSpi) -> u32 {
        let below = 32u32.saturating_sub(self.reserved());
        let w = spi.0.checked_shr(below).unwrap_or(0);
        w & low_mask(self.worker_bits)
    }

    /// The node id an SPI of either kind carries (0 without node bits).
    pub fn node_of_child(&self, spi: ChildSpi) -> u32 {
        spi.0
            .checked_shr(32u32.saturating_sub(u32::from(self.node_bits)))
            .unwrap_or(0)
            & low_mask(self.node_bits)
    }

    pub fn node_of_ike(&self, spi: IkeSpi) -> u32 {
        let n = spi
            .0
            .checked_shr(64u32.saturating_sub(u32::from(self.node_bits)))
            .unwrap_or(0);
        u32::try_from(n).unwrap_or(0) & low_mask(self.node_bits)
    }
}

fn low_mask(bits: u8) -> u32 {
    u32::MAX
        .checked_shr(32u32.saturating_sub(u32::from(bits)))
        .filter(|_| bits > 0)
        .unwrap_or(0)
}

/// Hands out SPIs by a [`SpiLayout`] and remembers which are in use.
#[derive(Debug, Default)]
pub struct SpiAllocator {
    layout: SpiLayout,
    ike: HashSet<IkeSpi>,
    child: HashSet<ChildSpi>,
    /// Inbound CHILD_SA SPIs go to workers 0..spread in turn (0 or 1: the layout's worker).
    spread: u32,
    next_worker: u32,
}

impl SpiAllocator {
    pub fn new(layout: SpiLayout) -> SpiAllocator {
        SpiAllocator {
            layout,
            ..Default::default()
        }
    }

    pub fn layout(&self) -> SpiLayout {
        self.layout
    }

    /// Hands out inbound CHILD_SA SPIs for workers 0..`workers` in turn (a data plane with
    /// that many workers, each owning the SAs whose SPIs carry its id), instead of all for
    /// the layout's one worker.
    pub fn spread_over(mut self, workers: u32) -> SpiAllocator {
        self.spread = workers;
        self
    }

    /// How many workers inbound CHILD_SA SPIs are spread over (at least 1).
    pub fn workers(&self) -> u32 {
        self.spread.max(1)
    }

    /// A new IKE SA SPI of ours.
    pub fn ike_spi<R: RngCore>(&mut self, rng: &mut R) -> IkeSpi {
        loop {
            let s = IkeSpi(self.layout.compose(self.layout.worker, rng.next_u64(), 64));
            if !s.is_zero() && self.ike.insert(s) {
                return s;
            }
        }
    }

    /// A new inbound CHILD_SA SPI for this endpoint's default worker.
    pub fn child_spi<R: RngCore>(&mut self, rng: &mut R) -> ChildSpi {
        if self.spread > 1 {
            let w = self.next_worker.checked_rem(self.spread).unwrap_or(0);
            self.next_worker = w.wrapping_add(1).checked_rem(self.spread).unwrap_or(0);
            return self.child_spi_for(rng, w);
        }
        self.child_spi_for(rng, self.layout.worker)
    }

    /// A new inbound CHILD_SA SPI steered to `worker` (its low bits when `worker` is wider
    /// than the layout's worker bits).
    /// A worker whose id would put every SPI in the group range (8 or more reserved bits, all
    /// ones on top: only with 256 workers or more) gets SPIs of the layout's own worker.
    pub fn child_spi_for<R: RngCore>(&mut self, rng: &mut R, worker: u32) -> ChildSpi {
        let mut worker = worker & low_mask(self.layout.worker_bits);
        if self.layout.forced_into_group_range(worker) {
            worker = self.layout.worker;
        }
        loop {
            let v = self.layout.compose(worker, u64::from(rng.next_u32()), 32);
            let s = ChildSpi(u32::try_from(v).unwrap_or(0));
            // 1..=255 are reserved (RFC 4303), 0 is never an SPI; the group range is not ours.
            if s.0 > 255 && !is_reserved_spi(s.0) && self.child.insert(s) {
                return s;
            }
        }
    }

    /// Takes an SPI we got otherwise (an adopted IKE SA's) out of circulation; false if it was
    /// in use already.
    pub fn claim_ike(&mut self, spi: IkeSpi) -> bool {
        self.ike.insert(spi)
    }

    /// Takes an inbound CHILD_SA SPI we got otherwise (an adopted CHILD_SA's) out of
    /// circulation; false if it was in use already.
    pub fn claim_child(&mut self, spi: ChildSpi) -> bool {
        self.child.insert(spi)
    }

    pub fn release_ike(&mut self, spi: IkeSpi) {
        self.ike.remove(&spi);
    }

    pub fn release_child(&mut self, spi: ChildSpi) {
        self.child.remove(&spi);
    }

    /// How many (IKE, CHILD_SA) SPIs are in use.
    pub fn in_use(&self) -> (usize, usize) {
        (self.ike.len(), self.child.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn the_group_and_direct_ranges_split_the_reserved_range() {
        for s in [0xff00_0000u32, 0xff12_3456, 0xff7f_ffff] {
            assert!(
                is_reserved_spi(s) && is_group_spi(s) && !is_direct_spi(s),
                "{s:#x}"
            );
        }
        for s in [0xff80_0000u32, 0xffab_cdef, 0xffff_ffff] {
            assert!(
                is_reserved_spi(s) && is_direct_spi(s) && !is_group_spi(s),
                "{s:#x}"
            );
        }
        for s in [0xfe00_0000u32, 0x7f80_0000, 0x0000_0100] {
            assert!(
                !is_reserved_spi(s) && !is_group_spi(s) && !is_direct_spi(s),
                "{s:#x}"
            );
        }
    }

    #[test]
    fn child_spis_stay_out_of_the_group_range() {
        use rand_core::SeedableRng;
        let mut rng = ChaCha20Rng::from_seed([5; 32]);
        for (nb, node, wb) in [(0u8, 0u32, 0u8), (4, 15, 2), (7, 127, 0), (2, 3, 4)] {
            let mut a = SpiAllocator::new(SpiLayout::new(nb, node, wb, 0).unwrap()).spread_over(4);
            let mut hits = 0;
            for _ in 0..50_000 {
                let s = a.child_spi(&mut rng);
                assert!(!is_reserved_spi(s.0), "{:#x}", s.0);
                hits += usize::from(s.0 >> 24 == 0xfe);
            }
            // The neighbouring byte is drawn (the filter, not the layout, keeps 0xff out).
            if nb + wb == 0 {
                assert!(hits > 0);
            }
        }
        // 8 reserved bits that can be all ones: refused.
        assert_eq!(
            SpiLayout::new(8, 255, 0, 0),
            Err(SpiLayoutError::GroupRange { node: 255 })
        );
        assert_eq!(
            SpiLayout::new(6, 63, 4, 15),
            Err(SpiLayoutError::GroupRange { node: 63 })
        );
        assert!(SpiLayout::new(6, 62, 4, 15).is_ok());
        assert!(SpiLayout::new(8, 254, 0, 0).is_ok());
        // A spread worker whose id would be all ones on top gets the layout's worker.
        let mut a = SpiAllocator::new(SpiLayout::new(6, 63, 4, 0).unwrap());
        for _ in 0..1000 {
            let s = a.child_spi_for(&mut rng, 15);
            assert!(!is_reserved_spi(s.0));
            assert_eq!(a.layout().worker_of(s), 0);
        }
    }
    use rand_core::SeedableRng;

    #[test]
    fn default_layout_is_all_random_unique_and_never_reserved() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut a = SpiAllocator::default();
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let c = a.child_spi(&mut rng);
            assert!(c.0 > 255);
            assert!(seen.insert(c));
        }
        // High bits vary: no bits reserved.
        assert!(seen.iter().any(|s| s.0 >> 31 == 1) && seen.iter().any(|s| s.0 >> 31 == 0));
        assert_eq!(a.in_use(), (0, 10_000));
        let s = *seen.iter().next().unwrap();
        a.release_child(s);
        assert_eq!(a.in_use().1, 9_999);
        assert!(!a.ike_spi(&mut rng).is_zero());
    }

    #[test]
    fn node_and_worker_bits_are_where_the_layout_says() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        // 4 node bits (node 0xa), 3 worker bits (worker 5).
        let l = SpiLayout::new(4, 0xa, 3, 5).unwrap();
        let mut a = SpiAllocator::new(l);
        for _ in 0..1000 {
            let c = a.child_spi(&mut rng);
            assert_eq!(c.0 >> 28, 0xa, "{c}");
            assert_eq!((c.0 >> 25) & 0x7, 5, "{c}");
            assert_eq!(l.node_of_child(c), 0xa);
            assert_eq!(l.worker_of(c), 5);
            let s = a.ike_spi(&mut rng);
            assert_eq!(s.0 >> 60, 0xa);
            assert_eq!((s.0 >> 57) & 0x7, 5);
            assert_eq!(l.node_of_ike(s), 0xa);
            let w = a.child_spi_for(&mut rng, 2);
            assert_eq!(l.worker_of(w), 2);
            assert_eq!(l.node_of_child(w), 0xa);
        }
        // Another node never collides with this one.
        let other = SpiLayout::new(4, 0xb, 3, 5).unwrap();
        let c = SpiAllocator::new(other).child_spi(&mut rng);
        assert_eq!(c.0 >> 28, 0xb);
    }

    #[test]
    fn spread_spis_take_the_workers_in_turn() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let l = SpiLayout::new(0, 0, 2, 0).unwrap();
        let mut a = SpiAllocator::new(l).spread_over(3);
        let workers: Vec<u32> = (0..7).map(|_| l.worker_of(a.child_spi(&mut rng))).collect();
        assert_eq!(workers, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn impossible_layouts_are_refused() {
        assert_eq!(
            SpiLayout::new(10, 0, 7, 0),
            Err(SpiLayoutError::TooManyBits(17))
        );
        assert_eq!(
            SpiLayout::new(2, 4, 0, 0),
            Err(SpiLayoutError::IdTooLarge { id: 4, bits: 2 })
        );
        // 16 worker bits are allowed; (a worker id with the top byte all ones is not: the
        // group range, see `child_spis_stay_out_of_the_group_range`).
        assert!(SpiLayout::new(0, 0, 16, 0xfeff).is_ok());
    }
}
