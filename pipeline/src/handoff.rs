//! The software hand-off between workers: a frame that reached a worker which does not own its
//! SA goes to the one that does, over a bounded lock-free ring per ordered pair of workers.
//!
//! Used where the port cannot steer: veth and AF_XDP without flow rules, in-memory ports, or
//! any NIC whose RSS does not hash the ESP SPI. Who owns what:
//! - inbound ESP: the worker its SPI's worker bits name (the control plane's placement,
//!   `control::core::placement`, and `ike`'s SPI allocator put them there; a static SA's SPI
//!   goes by the same bits, modulo the number of workers), see [`spi_owner`];
//! - outbound (LAN) traffic: the worker that installed the outbound SA the policy or host
//!   binding names, published in [`SaOwners`] by that worker when it applies the install;
//! - IKE: worker 0, the one with the punt ring to the control plane.
//!
//! A lane (worker i -> worker j) is two SPSC rings (`rtrb`): parcels (the frame's bytes and the
//! side it arrived on) forward, and their emptied buffers back. The lane has as many buffers
//! as its ring has slots, each allocated on its first use and kept: no allocation per packet
//! (a frame larger than any before grows its buffer once). A full lane is back-pressure: the sending worker keeps the
//! frame (and pauses the rx that feeds the lane), counts the wait, and tries again next turn;
//! a receiving worker that cannot get a frame from its port leaves the parcel in the ring.
//!
//! The receiver processes a parcel as if its own port had received it, but never hands it on
//! again: a frame crosses at most one lane, so lanes cannot form a cycle of waits.
//!
//! Never: hand off an SA's keys or state (only packets move; each SA stays with one worker,
//! so no two workers ever seal with one outbound SA: see docs/architecture.md, "Several
//! workers"); lose a frame on a full lane; take a lock.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use rtrb::{Consumer, Producer, RingBuffer};

use crate::ids::{SaId, Spi};

/// Parcels per lane by default.
pub const LANE_SLOTS: usize = 256;

/// No owner recorded.
const NOBODY: u16 = u16::MAX;

/// The worker that owns the inbound SA with this SPI, for `workers` workers: the worker bits
/// at the top of the SPI (as many as `workers` needs), modulo `workers`. The same rule as
/// `control::core::placement::Placement::inbound_owner` on a data plane without node bits.
#[inline]
pub fn spi_owner(spi: Spi, workers: u16) -> u16 {
    let bits = worker_bits(workers);
    if bits == 0 {
        return 0;
    }
    let w = spi.0 >> (32 - u32::from(bits));
    (w % u32::from(workers)) as u16
}

/// The bits a worker id takes at the top of an SPI for `workers` workers (0 for one).
pub fn worker_bits(workers: u16) -> u8 {
    let mut bits = 0u8;
    while (1u32 << bits) < u32::from(workers) {
        bits += 1;
    }
    bits
}

/// Which worker holds each outbound SA, by SA id: written by the owner when it installs or
/// deletes the SA, read by every worker that sees a flow for it. A slot per id modulo the
/// table's size (a power of two): static SAs take the first ids, negotiated ones count up
/// from 2^20 (`control::repo`), so a table of 2^21 slots keeps a million negotiated SAs apart
/// from the static ones. Two live ids a multiple of the size apart share a slot: the later
/// install wins, and the other SA's frames that reach the wrong worker are dropped there as
/// `no_sa` (never sealed by it).
pub struct SaOwners {
    by_id: Box<[AtomicU16]>,
    mask: usize,
}

impl SaOwners {
    /// A table of `slots` slots (rounded up to a power of two).
    pub fn new(slots: usize) -> SaOwners {
        let n = slots.max(1).next_power_of_two();
        SaOwners {
            by_id: (0..n).map(|_| AtomicU16::new(NOBODY)).collect(),
            mask: n - 1,
        }
    }

    fn slot(&self, id: SaId) -> Option<&AtomicU16> {
        self.by_id.get(id.0 as usize & self.mask)
    }

    /// Worker `w` installed outbound SA `id`.
    pub fn set(&self, id: SaId, w: u16) {
        if let Some(a) = self.slot(id) {
            a.store(w, Ordering::Release);
        }
    }

    /// Worker `w` deleted outbound SA `id`: forgotten unless another worker took the id since.
    pub fn clear(&self, id: SaId, w: u16) {
        if let Some(a) = self.slot(id) {
            let _ = a.compare_exchange(w, NOBODY, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    #[inline]
    pub fn get(&self, id: SaId) -> Option<u16> {
        let w = self.slot(id)?.load(Ordering::Acquire);
        (w != NOBODY).then_some(w)
    }
}

/// Which side of the worker a handed-off frame arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Lan,
    Wan,
    /// A decrypted inner IP packet (no Ethernet header) for the worker whose client
    /// masquerade holds its session: it is rewritten back and sent to the LAN there.
    Inner,
}

/// One frame in a lane: its bytes (Ethernet header first) and where it came in.
pub struct Parcel {
    pub from: Side,
    pub bytes: Vec<u8>,
}

/// The sending end of lane i -> j.
struct Lane {
    ring: Producer<Parcel>,
    free: Consumer<Vec<u8>>,
}

/// The receiving end of lane i -> j.
struct Intake {
    ring: Consumer<Parcel>,
    back: Producer<Vec<u8>>,
}

/// A worker's ends of the hand-off mesh.
pub struct HandOff {
    id: u16,
    workers: u16,
    /// Indexed by destination worker (None: this worker itself).
    lanes: Vec<Option<Lane>>,
    /// Indexed by source worker (None: this worker itself).
    intakes: Vec<Option<Intake>>,
    owners: Arc<SaOwners>,
    /// Where the next intake round starts (fairness between sources).
    next_intake: usize,
}

/// Why a frame could not be handed off now (it stays with the sender).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// The lane's ring has no free slot (or no free buffer).
    Lane,
}

impl HandOff {
    pub fn id(&self) -> u16 {
        self.id
    }

    pub fn workers(&self) -> u16 {
        self.workers
    }

    /// The owner of inbound SPI `spi`.
    #[inline]
    pub fn spi_owner(&self, spi: Spi) -> u16 {
        spi_owner(spi, self.workers)
    }

    /// The owner of outbound SA `id`, if one installed it.
    #[inline]
    pub fn sa_owner(&self, id: SaId) -> Option<u16> {
        self.owners.get(id)
    }

    /// The owner table this worker publishes its outbound SAs in.
    pub fn owners(&self) -> &SaOwners {
        &self.owners
    }

    /// Copies `bytes` into a parcel for worker `to`. Err: the lane is full (nothing taken).
    pub fn send(&mut self, to: u16, from: Side, bytes: &[u8]) -> Result<(), Full> {
        let Some(Some(lane)) = self.lanes.get_mut(usize::from(to)) else {
            return Err(Full::Lane);
        };
        if lane.ring.slots() == 0 {
            return Err(Full::Lane);
        }
        let Ok(mut buf) = lane.free.pop() else {
            return Err(Full::Lane);
        };
        buf.clear();
        buf.extend_from_slice(bytes);
        lane.ring
            .push(Parcel { from, bytes: buf })
            .map_err(|_| Full::Lane)
    }

    /// Hands up to `max` parcels to `take`, round-robin over the sources, one at a time; a
    /// parcel `take` refuses (returns false: no frame to copy it into) stays at the front of
    /// its ring and the round ends. Returns how many were taken.
    pub fn receive(&mut self, max: usize, mut take: impl FnMut(&Parcel) -> bool) -> usize {
        let n = self.intakes.len();
        let mut done = 0;
        let mut idle_sources = 0;
        while done < max && idle_sources < n {
            let i = self.next_intake;
            self.next_intake = (i + 1) % n.max(1);
            let Some(Some(intake)) = self.intakes.get_mut(i) else {
                idle_sources += 1;
                continue;
            };
            let Ok(p) = intake.ring.peek() else {
                idle_sources += 1;
                continue;
            };
            if !take(p) {
                return done;
            }
            idle_sources = 0;
            done += 1;
            if let Ok(p) = intake.ring.pop() {
                // As many buffers as slots: the way back always has room.
                let _ = intake.back.push(p.bytes);
            }
        }
        done
    }

    /// Whether any parcel waits for this worker.
    pub fn pending(&self) -> bool {
        self.intakes.iter().flatten().any(|i| !i.ring.is_empty())
    }
}

/// Slots of the outbound owner table a data plane uses (4 MiB).
pub const OWNER_SLOTS: usize = 1 << 21;

/// The hand-off ends of `workers` workers, lanes of `slots` parcels between every ordered
/// pair, outbound owners in a table of `owner_slots`. Element i is worker i's.
pub fn mesh(workers: u16, slots: usize, owner_slots: usize) -> Vec<HandOff> {
    let owners = Arc::new(SaOwners::new(owner_slots));
    let n = usize::from(workers);
    let mut ends: Vec<HandOff> = (0..workers)
        .map(|id| HandOff {
            id,
            workers,
            lanes: (0..n).map(|_| None).collect(),
            intakes: (0..n).map(|_| None).collect(),
            owners: owners.clone(),
            next_intake: 0,
        })
        .collect();
    for i in 0..n {
        for j in 0..n {
            if i == j {
                continue;
            }
            let (ptx, prx) = RingBuffer::new(slots);
            let (mut btx, brx) = RingBuffer::new(slots);
            for _ in 0..slots {
                // Empty until first used: a lane that never carries a frame costs no buffers.
                let _ = btx.push(Vec::new());
            }
            ends[i].lanes[j] = Some(Lane {
                ring: ptx,
                free: brx,
            });
            ends[j].intakes[i] = Some(Intake {
                ring: prx,
                back: btx,
            });
        }
    }
    ends
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spi_owner_reads_the_top_bits() {
        assert_eq!(spi_owner(Spi(0xffff_ffff), 1), 0);
        assert_eq!(spi_owner(Spi(0x8000_0001), 2), 1);
        assert_eq!(spi_owner(Spi(0x7fff_ffff), 2), 0);
        // Three workers take two bits; the fourth value wraps.
        assert_eq!(spi_owner(Spi(0x4000_0000), 3), 1);
        assert_eq!(spi_owner(Spi(0x8000_0000), 3), 2);
        assert_eq!(spi_owner(Spi(0xc000_0000), 3), 0);
    }

    #[test]
    fn a_full_lane_keeps_the_frame_and_frees_up_when_read() {
        let mut m = mesh(2, 4, 16);
        let mut b = m.pop().unwrap();
        let mut a = m.pop().unwrap();
        for i in 0..4u8 {
            assert_eq!(a.send(1, Side::Wan, &[i; 60]), Ok(()));
        }
        assert_eq!(a.send(1, Side::Wan, &[9; 60]), Err(Full::Lane));
        assert!(b.pending());
        // The receiver refuses (no frame to copy into): the parcel stays.
        assert_eq!(b.receive(8, |_| false), 0);
        let mut seen = Vec::new();
        assert_eq!(
            b.receive(2, |p| {
                seen.push((p.from, p.bytes[0], p.bytes.len()));
                true
            }),
            2
        );
        assert_eq!(seen, vec![(Side::Wan, 0, 60), (Side::Wan, 1, 60)]);
        // Two buffers came back: two more fit, the next does not.
        assert_eq!(a.send(1, Side::Lan, &[7; 1400]), Ok(()));
        assert_eq!(a.send(1, Side::Lan, &[8; 3000]), Ok(()));
        assert_eq!(a.send(1, Side::Lan, &[9; 60]), Err(Full::Lane));
        let mut order = Vec::new();
        b.receive(usize::MAX, |p| {
            order.push((p.bytes[0], p.bytes.len()));
            true
        });
        assert_eq!(order, vec![(2, 60), (3, 60), (7, 1400), (8, 3000)]);
        assert!(!b.pending());
        // No lane to oneself.
        assert_eq!(a.send(0, Side::Lan, &[1]), Err(Full::Lane));
    }

    #[test]
    fn owners_follow_installs_and_deletes() {
        let m = mesh(3, 2, 8);
        let o = m[0].owners();
        assert_eq!(m[1].sa_owner(SaId(3)), None);
        o.set(SaId(3), 2);
        assert_eq!(m[1].sa_owner(SaId(3)), Some(2));
        // A stale delete from another worker leaves the new owner alone.
        o.clear(SaId(3), 1);
        assert_eq!(m[0].sa_owner(SaId(3)), Some(2));
        o.clear(SaId(3), 2);
        assert_eq!(m[0].sa_owner(SaId(3)), None);
        // Ids a multiple of the table's size apart share a slot.
        o.set(SaId(8 + 5), 1);
        assert_eq!(m[0].sa_owner(SaId(5)), Some(1));
    }

    #[test]
    fn negotiated_ids_stay_apart_from_static_ones() {
        // The repository's first negotiated id is 2^20; static SAs count from 0.
        let o = SaOwners::new(OWNER_SLOTS);
        o.set(SaId(1 << 20), 1);
        o.set(SaId((1 << 20) + 999_999), 2);
        o.set(SaId(0), 3);
        assert_eq!(o.get(SaId(1 << 20)), Some(1));
        assert_eq!(o.get(SaId((1 << 20) + 999_999)), Some(2));
        assert_eq!(o.get(SaId(0)), Some(3));
        assert_eq!(o.get(SaId(1)), None);
    }

    #[test]
    fn intake_takes_sources_in_turn() {
        let mut m = mesh(3, 8, 4);
        for _ in 0..3 {
            m[1].send(0, Side::Wan, &[1]).unwrap();
            m[2].send(0, Side::Wan, &[2]).unwrap();
        }
        let mut order = Vec::new();
        m[0].receive(4, |p| {
            order.push(p.bytes[0]);
            true
        });
        assert_eq!(order, vec![1, 2, 1, 2]);
    }
}
