//! Which outbound sequence numbers a node of the pair may send: the nonce arithmetic.
//!
//! This module owns the numbers: how far ahead the active is granted ([`SeqPlan::ahead`]),
//! which blocks of the sequence space belong to which node when it sends unpaired
//! ([`SeqPlan::next_own`]), where a taking-over node starts an SA ([`SeqPlan::takeover_start`])
//! and what replay exposure an inbound SA accepts on takeover
//! ([`SeqPlan::inbound_exposure`]). It never decides who is active (the pair does) and never
//! reads a clock.
//!
//! # Why the pair never sends one (SPI, sequence number) twice
//!
//! An outbound SA's sequence number is its AES-GCM nonce. A node sends a number `n` on an SA
//! only if one of two things holds:
//!
//! 1. **Paired**: its standby has acknowledged a `SeqGrant` covering `n` (the fence). The
//!    standby applies a grant to its replica before it acknowledges it, so every number the
//!    active may send is at or below the replica's fence for that SA, whatever happens to the
//!    active afterwards (killed, frozen and resumed, cut off): a frozen active that resumes
//!    can only finish its granted range, and nobody grants it more once the standby took over.
//! 2. **Unpaired** (no standby in sync: link lost, standby dead or resyncing, just took
//!    over): `n` lies in one of the node's *own blocks*, and the node has written a mark at or
//!    above `n` to its local disk first. The sequence space is cut into blocks of
//!    [`SeqPlan::block`] numbers; block `i` (numbers `i * block ..= i * block + block - 1`)
//!    belongs to slot `i mod 2`, and the two nodes of a pair have different slots.
//!
//! Two sends of the same `n` by the two nodes are then impossible: two unpaired sends are in
//! different nodes' blocks; a paired send by X was granted by Y, and Y starts everything it
//! sends later (paired or not) above its fence ([`SeqPlan::takeover_start`] takes the fence
//! in), so it never reaches below; and Y forgets its fence only by restarting, after which it
//! knows an SA only from a snapshot of the live active, whose fence is again at or above all
//! it sent. Two sends of the same `n` by one node are impossible: its ranges only move up
//! while it lives, and after a restart it starts above both the snapshot's fence (what it sent
//! paired) and its own disk marks (what it sent unpaired). No timing assumption is needed:
//! a split brain (both active, link cut) and an old active coming back are covered by the
//! same two rules.
//!
//! # How far a takeover jumps, and why that is small enough
//!
//! The active asks for a grant when fewer than [`SeqPlan::ahead`] numbers are left, and asks
//! for `used + 2 * ahead`. `ahead` is what one SA can use between two checkpoints and while
//! its standby notices a missing grant: `checkpoint.packets + max_pps * (checkpoint.millis +
//! detection) / 1000`. A taking-over node starts at the first number of its own blocks above
//! `max(fence, last checkpoint + ahead)`: the fence is at most `2 * ahead` above the last
//! checkpoint, the block rounding adds at most `2 * block`, so the peer sees a jump of at most
//! [`SeqPlan::max_jump`] = `4 * ahead` (with `block = ahead`), which the configuration keeps
//! below [`MAX_JUMP`] = 2^30: far below the 2^31 within which RFC 4303 appendix A's ESN
//! inference at the peer stays right. On a planned switchover the final checkpoints are exact
//! and the new active starts at the next number: no jump at all.
//!
//! # Reserved but unused: a takeover that does not wait for its disk
//!
//! Rule 2 asks for the mark on disk *before* a number is sent; written at the takeover, that
//! fsync (tens to hundreds of milliseconds on a busy disk) would stand between the detection
//! and the first packet. So a standby writes, ahead of time, the range it would start each
//! outbound SA in ([`SeqPlan::reservation`]: the own block of `takeover_start(checkpoint,
//! fence, spent)` and the next own block), and writes again when that start enters the
//! second of them (the start's block stays on disk while the write is on its way). A disk mark then means "a bound on every number this node may send
//! unpaired without writing again", no longer "what it sent": the node keeps apart, in
//! memory, what it *spent* (the marks it started with, for it cannot tell what of them it
//! used before a crash, and every range it gave its data plane since) and what is only
//! reserved. At a takeover it computes the start exactly as before, from the fence, the last
//! checkpoint and what it spent (not the reservation): if the disk already holds a mark at
//! or above the end of that start's block, it sends at once; if not (the reservation's write
//! still in flight, the SA moved on), it waits for the disk as before.
//!
//! Why the two rules still hold: the fast start lies in the node's own block, above the fence
//! (the old active's paired sends) and above all it spent; it is at or below a mark already
//! on disk, written before the first of these numbers is sent: rule 2 as stated. A reserved
//! range is no claim on the numbers: the active may be granted numbers inside it (grants
//! ignore blocks), which is why the start is recomputed from the fence at the takeover and
//! never taken from the reservation. A node that restarts counts its whole disk mark as
//! spent (reserved or sent, it cannot tell), which can only move its later starts up.
//!
//! The cost is a larger jump only for a node's first takeover after a restart: its marks
//! may hold a reservation up to three blocks past the start it predicted then, so that
//! takeover jumps at most [`SeqPlan::max_jump_after_restart`] = `8 * ahead + 1` past the
//! last checkpoint (`max_jump` is at most 2^30 by the configuration, so this stays below
//! 2^31 + 1, still far inside the 2^32 - window an ESN receiver infers across). A takeover
//! within one life of the standby jumps exactly as before.
//!
//! # The inbound side
//!
//! A taking-over node installs each inbound SA with the last replicated window (its top, the
//! high-water mark, and the bits below). Packets the old active accepted after that mark can be
//! accepted once more by the new active: at most [`SeqPlan::inbound_exposure`] packets per SA
//! (the same `ahead`, counted at the peer's rate), each a replay of something already
//! delivered, never a forgery (the ICV still has to verify).

use proto::sa::Checkpoint;

/// The largest jump a takeover may make (kept far below 2^31 for the peer's ESN inference).
pub const MAX_JUMP: u64 = 1 << 30;

/// The sequence parameters of a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqPlan {
    /// When the data plane reports an outbound SA's position.
    pub checkpoint: Checkpoint,
    /// The highest rate one SA sends at, packets per second.
    pub max_pps: u64,
    /// How long silence lasts before the standby declares the active failed.
    pub detection_ms: u64,
    /// This node's slot (0 or 1): which blocks are its own.
    pub slot: u8,
}

impl SeqPlan {
    /// Numbers one SA may use between two checkpoints and while a lost one is noticed.
    pub fn ahead(&self) -> u64 {
        let ms = self
            .checkpoint
            .millis
            .saturating_add(self.detection_ms)
            .max(1);
        let by_time = self.max_pps.saturating_mul(ms).div_ceil(1000);
        self.checkpoint.packets.saturating_add(by_time).max(1)
    }

    /// The size of the blocks the slots alternate on.
    pub fn block(&self) -> u64 {
        self.ahead()
    }

    /// The most a takeover jumps past the last checkpoint (see the module doc).
    pub fn max_jump(&self) -> u64 {
        self.ahead().saturating_mul(4)
    }

    /// The most the first takeover after a restart jumps (its marks may hold a reservation:
    /// see the module doc).
    pub fn max_jump_after_restart(&self) -> u64 {
        self.ahead().saturating_mul(8).saturating_add(1)
    }

    /// The mark a standby reserves for a takeover that would start at `from` (one of its
    /// own numbers): the end of the own block after `from`'s.
    pub fn reservation(&self, from: u64) -> u64 {
        self.block_end(self.next_own(self.block_end(from)))
    }

    /// The slot that owns `n`.
    pub fn owner(&self, n: u64) -> u8 {
        u8::from((n / self.block()) % 2 == 1)
    }

    /// The last number of the block holding `n`.
    pub fn block_end(&self, n: u64) -> u64 {
        let b = self.block();
        (n / b).saturating_mul(b).saturating_add(b - 1)
    }

    /// The smallest number above `after` in one of this node's own blocks (`u64::MAX` when
    /// there is none: the SA is used up and must be rekeyed).
    pub fn next_own(&self, after: u64) -> u64 {
        let Some(n) = after.checked_add(1) else {
            return u64::MAX;
        };
        if self.owner(n) == self.slot {
            return n;
        }
        // The next block belongs to us.
        self.block_end(n).saturating_add(1)
    }

    /// The range an unpaired node extends an SA to when `allowed` is its current end: the rest
    /// of its own block, or its next own block (a jump, which the data plane needs as a new
    /// starting number).
    pub fn unpaired_extension(&self, allowed: u64) -> (u64, u64) {
        let from = self.next_own(allowed);
        (from, self.block_end(from))
    }

    /// Where a taking-over node starts an outbound SA: the first own number above the fence,
    /// above the last checkpoint plus what the old active may have used since, and above this
    /// node's own disk mark.
    pub fn takeover_start(&self, last_checkpoint: u64, fence: u64, own_mark: u64) -> u64 {
        let estimate = last_checkpoint.saturating_add(self.ahead());
        self.next_own(fence.max(estimate).max(own_mark))
    }

    /// The grant the active asks for when its SA stands at `used`.
    pub fn grant_for(&self, used: u64) -> u64 {
        used.saturating_add(self.ahead().saturating_mul(2))
    }

    /// Whether an SA at `used` with `allowed` as its end needs more numbers.
    pub fn needs_more(&self, used: u64, allowed: u64) -> bool {
        allowed.saturating_sub(used) < self.ahead()
    }

    /// Replayed packets an inbound SA may accept once more after a takeover.
    pub fn inbound_exposure(&self) -> u64 {
        self.ahead()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(slot: u8) -> SeqPlan {
        SeqPlan {
            checkpoint: Checkpoint {
                packets: 1000,
                millis: 100,
            },
            max_pps: 100_000,
            detection_ms: 150,
            slot,
        }
    }

    #[test]
    fn ahead_counts_packets_and_time() {
        // 1000 + 100k/s * 250 ms.
        assert_eq!(plan(0).ahead(), 26_000);
        assert_eq!(plan(0).max_jump(), 104_000);
    }

    #[test]
    fn own_blocks_of_the_two_slots_never_meet() {
        let (a, b) = (plan(0), plan(1));
        let blk = a.block();
        for n in (0..10 * blk).step_by(997) {
            assert_ne!(a.owner(n) == 0, b.owner(n) == 1, "{n}");
        }
        // next_own lands in the own block, never below `after + 1`, at most two blocks on.
        for after in (0..10 * blk).step_by(1231) {
            for p in [a, b] {
                let n = p.next_own(after);
                assert!(n > after);
                assert_eq!(p.owner(n), p.slot);
                assert!(n - after <= 2 * blk);
            }
        }
        assert_eq!(a.next_own(u64::MAX), u64::MAX);
    }

    #[test]
    fn takeover_starts_above_the_fence_the_estimate_and_the_mark_within_the_bound() {
        let p = plan(1);
        for cp in [0u64, 5, 123_456, 1 << 40] {
            for fence in [cp, cp + 10, p.grant_for(cp)] {
                let s = p.takeover_start(cp, fence, 0);
                assert!(s > fence && s > cp + p.ahead());
                assert!(s - cp <= p.max_jump(), "{cp} {fence} {s}");
                assert_eq!(p.owner(s), 1);
            }
            assert!(p.takeover_start(cp, cp, cp + 3 * p.ahead()) > cp + 3 * p.ahead());
        }
    }

    #[test]
    fn a_reservation_covers_the_start_and_bounds_the_jump_after_a_restart() {
        for slot in [0, 1] {
            let p = plan(slot);
            let a = p.ahead();
            for cp0 in [0u64, 7, a - 1, a, 3 * a + 11, 1 << 40] {
                for fence0 in [cp0, cp0 + a / 2, p.grant_for(cp0)] {
                    // What the standby reserved in its earlier life.
                    let pred = p.takeover_start(cp0, fence0, 0);
                    let r = p.reservation(pred);
                    assert!(r >= p.block_end(pred));
                    assert_eq!(p.owner(r), slot);
                    // After a restart the reservation counts as spent; the SA only moved up.
                    for cp in [cp0, cp0 + 1, cp0 + a] {
                        for fence in [cp, p.grant_for(cp)] {
                            let s = p.takeover_start(cp, fence.max(fence0), r);
                            assert!(s > r);
                            assert!(
                                s - cp <= p.max_jump_after_restart(),
                                "slot {slot} cp0 {cp0} cp {cp}: {} > {}",
                                s - cp,
                                p.max_jump_after_restart()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn unpaired_extension_stays_in_own_blocks() {
        let p = plan(0);
        let blk = p.block();
        assert_eq!(p.unpaired_extension(5), (6, blk - 1));
        assert_eq!(p.unpaired_extension(blk - 1), (2 * blk, 3 * blk - 1));
        assert_eq!(p.unpaired_extension(blk + 7), (2 * blk, 3 * blk - 1));
    }
}
