//! The anti-replay window (RFC 4303 section 3.4.3 and appendix A2), with ESN inference.
//!
//! Checked in two steps around the tag check, as VPP does: [`ReplayWindow::check`] before
//! decryption (cheap: infers the high 32 bits of an extended sequence number and rejects what
//! is too old or already seen) and [`ReplayWindow::advance`] only after the ICV verified, so a
//! forged packet can never move the window. Owned by exactly one worker: no atomics.
//!
//! A window can leave its worker as data ([`ReplayWindow::export`], `proto::sa::ReplayState`)
//! and continue elsewhere ([`ReplayWindow::resume`]): another worker, process or node then
//! refuses exactly what this one would have.

use proto::sa::ReplayState;

/// Why a sequence number was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayError {
    /// Left of the window.
    TooOld,
    /// Inside the window and already received.
    Duplicate,
    /// Sequence number zero (never sent, RFC 4303 3.3.3) or an ESN that would lie before it.
    Zero,
}

/// Smallest and largest window sizes accepted (bits).
pub const MIN_WINDOW: u32 = 64;
pub const MAX_WINDOW: u32 = 4096;

/// A sliding bitmap of the last `size` sequence numbers below and including `top`.
///
/// Bit `s % size` of the ring bitmap stands for sequence number `s` while `top - size < s <=
/// top`. `size` is a power of two between [`MIN_WINDOW`] and [`MAX_WINDOW`].
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// Highest authenticated sequence number (full 64 bits, ESN or not). 0 = none yet.
    top: u64,
    size: u64,
    esn: bool,
    bits: Box<[u64]>,
}

/// A window size that is not a power of two in 64..=4096.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadWindowSize(pub u32);

impl core::fmt::Display for BadWindowSize {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "replay window {} is not a power of two between {MIN_WINDOW} and {MAX_WINDOW}",
            self.0
        )
    }
}

impl std::error::Error for BadWindowSize {}

/// A replay state that cannot be continued from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadReplayState {
    #[error(transparent)]
    Size(#[from] BadWindowSize),
    #[error("replay state of {state} packets for a window of {window}")]
    Width { window: u32, state: usize },
    #[error("replay state at sequence number {0}, beyond 2^32-1 without ESN")]
    BeyondEsn(u64),
}

impl ReplayWindow {
    pub fn new(size: u32, esn: bool) -> Result<Self, BadWindowSize> {
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&size) || !size.is_power_of_two() {
            return Err(BadWindowSize(size));
        }
        Ok(ReplayWindow {
            top: 0,
            size: u64::from(size),
            esn,
            bits: vec![0u64; (size / 64) as usize].into_boxed_slice(),
        })
    }

    pub fn size(&self) -> u32 {
        self.size as u32
    }

    /// The highest sequence number authenticated so far.
    pub fn top(&self) -> u64 {
        self.top
    }

    /// The window as data: bit `i` of the state is sequence number `top - i`.
    pub fn export(&self) -> ReplayState {
        let mut seen = vec![0u64; self.bits.len()];
        for i in 0..self.size.min(self.top) {
            if self.is_set(self.top - i) {
                if let Some(w) = seen.get_mut((i / 64) as usize) {
                    *w |= 1 << (i % 64);
                }
            }
        }
        ReplayState {
            top: self.top,
            seen,
        }
    }

    /// A window of `size` packets that continues from `state` (exported by another worker,
    /// process or node): it refuses what the exporting window had received or left behind.
    pub fn resume(size: u32, esn: bool, state: &ReplayState) -> Result<Self, BadReplayState> {
        let mut w = ReplayWindow::new(size, esn)?;
        if state.seen.len().checked_mul(64) != Some(size as usize) {
            return Err(BadReplayState::Width {
                window: size,
                state: state.seen.len().saturating_mul(64),
            });
        }
        if !esn && state.top > u64::from(u32::MAX) {
            return Err(BadReplayState::BeyondEsn(state.top));
        }
        w.top = state.top;
        for i in 0..w.size.min(state.top) {
            let word = state.seen.get((i / 64) as usize).copied().unwrap_or(0);
            if word & (1 << (i % 64)) != 0 {
                w.set(state.top - i);
            }
        }
        Ok(w)
    }

    /// Step one, before decryption: infer the full sequence number from the 32 bits on the
    /// wire (RFC 4303 A2.2) and check it against the window. The returned value feeds the AAD
    /// (its high half, for ESN) and, after the tag verifies, [`advance`](Self::advance).
    pub fn check(&self, seq_lo: u32) -> Result<u64, ReplayError> {
        let seq = self.infer(seq_lo)?;
        if seq > self.top {
            return Ok(seq);
        }
        if self.top - seq >= self.size {
            return Err(ReplayError::TooOld);
        }
        if self.is_set(seq) {
            return Err(ReplayError::Duplicate);
        }
        Ok(seq)
    }

    /// Step two, after the ICV verified: record `seq` (a value returned by `check`) and slide
    /// the window if it is the new top. Re-checks, so that two packets with the same number in
    /// one burst cannot both pass.
    pub fn advance(&mut self, seq: u64) -> Result<(), ReplayError> {
        if seq == 0 {
            return Err(ReplayError::Zero);
        }
        if seq > self.top {
            let shift = seq - self.top;
            if shift >= self.size {
                self.bits.iter_mut().for_each(|w| *w = 0);
            } else {
                // Clear the bits of top+1 ..= seq-1 (never seen); seq itself is set below.
                for s in self.top + 1..seq {
                    self.clear(s);
                }
            }
            self.top = seq;
            self.set(seq);
            return Ok(());
        }
        if self.top - seq >= self.size {
            return Err(ReplayError::TooOld);
        }
        if self.is_set(seq) {
            return Err(ReplayError::Duplicate);
        }
        self.set(seq);
        Ok(())
    }

    fn infer(&self, seq_lo: u32) -> Result<u64, ReplayError> {
        if !self.esn {
            return if seq_lo == 0 {
                Err(ReplayError::Zero)
            } else {
                Ok(u64::from(seq_lo))
            };
        }
        let top_lo = self.top as u32;
        let top_hi = (self.top >> 32) as u32;
        let w = self.size as u32;
        let seq_hi = if top_lo >= w - 1 {
            // The window lies inside one 2^32 subspace.
            if seq_lo >= top_lo - (w - 1) {
                Some(top_hi)
            } else {
                top_hi.checked_add(1)
            }
        } else if seq_lo >= top_lo.wrapping_sub(w - 1) {
            // The window spans two subspaces and seq_lo is in the lower one.
            top_hi.checked_sub(1)
        } else {
            Some(top_hi)
        };
        let seq = seq_hi.map(|hi| (u64::from(hi) << 32) | u64::from(seq_lo));
        match seq {
            Some(s) if s != 0 => Ok(s),
            _ => Err(ReplayError::Zero),
        }
    }

    fn slot(&self, seq: u64) -> (usize, u64) {
        let bit = seq & (self.size - 1);
        ((bit / 64) as usize, 1u64 << (bit % 64))
    }

    /// Prefetches the word of the bitmap a packet with `seq_lo` on the wire will test and
    /// set (the window size divides 2^32, so the low half of the number picks the word).
    #[inline]
    pub fn prefetch(&self, seq_lo: u32) {
        let (word, _) = self.slot(u64::from(seq_lo));
        if let Some(w) = self.bits.get(word) {
            crate::prefetch::line(w);
        }
    }

    /// Takes in what `other` (a window of the same SA: same size) received or left behind:
    /// afterwards this window refuses every number either of them would have refused. The
    /// union is the cluster's: one inbound SA held by several edges, whose windows are merged
    /// as a client moves (`docs/architecture.md`, "Edge-to-edge move"). A window of another
    /// size is left as it is (false).
    pub fn merge(&mut self, other: &ReplayWindow) -> bool {
        if other.size != self.size || other.esn != self.esn {
            return false;
        }
        let top = self.top.max(other.top);
        let mut m = ReplayWindow {
            top,
            size: self.size,
            esn: self.esn,
            bits: vec![0u64; self.bits.len()].into_boxed_slice(),
        };
        for w in [&*self, other] {
            for i in 0..w.size.min(w.top) {
                let seq = w.top - i;
                if top - seq < m.size && w.is_set(seq) {
                    m.set(seq);
                }
            }
        }
        *self = m;
        true
    }

    fn is_set(&self, seq: u64) -> bool {
        let (word, mask) = self.slot(seq);
        self.bits.get(word).is_some_and(|w| w & mask != 0)
    }

    fn set(&mut self, seq: u64) {
        let (word, mask) = self.slot(seq);
        if let Some(w) = self.bits.get_mut(word) {
            *w |= mask;
        }
    }

    fn clear(&mut self, seq: u64) {
        let (word, mask) = self.slot(seq);
        if let Some(w) = self.bits.get_mut(word) {
            *w &= !mask;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(w: &mut ReplayWindow, lo: u32) -> Result<u64, ReplayError> {
        let s = w.check(lo)?;
        w.advance(s)?;
        Ok(s)
    }

    #[test]
    fn a_merged_window_refuses_what_either_window_refused() {
        let mut a = ReplayWindow::new(64, false).unwrap();
        let mut b = ReplayWindow::new(64, false).unwrap();
        for s in [1, 2, 5, 100] {
            accept(&mut a, s).unwrap();
        }
        for s in [3, 90, 120] {
            accept(&mut b, s).unwrap();
        }
        assert!(a.merge(&b));
        assert_eq!(a.top(), 120);
        // 90 and 100 were received (by one or the other), 1..5 fell behind 120 - 64.
        for s in [90, 100, 120, 5, 1] {
            assert!(a.check(s).is_err(), "{s} refused");
        }
        for s in [91, 99, 119, 121] {
            assert_eq!(a.check(s), Ok(u64::from(s)), "{s} still open");
        }
        // A window of another size is not merged.
        let c = ReplayWindow::new(128, false).unwrap();
        assert!(!a.merge(&c));
        assert_eq!(a.top(), 120);
    }

    #[test]
    fn sizes_are_validated() {
        assert!(ReplayWindow::new(63, false).is_err());
        assert!(ReplayWindow::new(96, false).is_err());
        assert!(ReplayWindow::new(8192, false).is_err());
        for s in [64, 128, 1024, 4096] {
            assert_eq!(ReplayWindow::new(s, true).unwrap().size(), s);
        }
    }

    #[test]
    fn in_order_duplicates_and_too_old() {
        let mut w = ReplayWindow::new(64, false).unwrap();
        assert_eq!(w.check(0), Err(ReplayError::Zero));
        for s in 1..=100 {
            assert_eq!(accept(&mut w, s), Ok(u64::from(s)));
        }
        assert_eq!(w.check(100), Err(ReplayError::Duplicate));
        assert_eq!(w.check(37), Err(ReplayError::Duplicate));
        assert_eq!(w.check(36), Err(ReplayError::TooOld));
        assert_eq!(w.check(1), Err(ReplayError::TooOld));
    }

    #[test]
    fn out_of_order_inside_window() {
        let mut w = ReplayWindow::new(128, false).unwrap();
        accept(&mut w, 200).unwrap();
        // 73..=200 is the window: 73 is the oldest acceptable.
        assert_eq!(w.check(72), Err(ReplayError::TooOld));
        assert_eq!(accept(&mut w, 73), Ok(73));
        assert_eq!(w.check(73), Err(ReplayError::Duplicate));
        assert_eq!(accept(&mut w, 150), Ok(150));
        // A jump clears bits that belonged to the old window positions.
        accept(&mut w, 250).unwrap();
        assert_eq!(accept(&mut w, 199), Ok(199));
        assert_eq!(w.check(150), Err(ReplayError::Duplicate));
        assert_eq!(w.check(200), Err(ReplayError::Duplicate));
    }

    #[test]
    fn check_does_not_move_the_window() {
        let mut w = ReplayWindow::new(64, false).unwrap();
        accept(&mut w, 10).unwrap();
        // A forged packet with a huge number passes the pre-check but fails the tag: nothing moves.
        assert_eq!(w.check(1_000_000), Ok(1_000_000));
        assert_eq!(w.top(), 10);
        assert_eq!(accept(&mut w, 9), Ok(9));
    }

    #[test]
    fn advance_rejects_a_second_copy_in_the_same_burst() {
        let mut w = ReplayWindow::new(64, false).unwrap();
        let a = w.check(5).unwrap();
        let b = w.check(5).unwrap();
        assert_eq!(w.advance(a), Ok(()));
        assert_eq!(w.advance(b), Err(ReplayError::Duplicate));
    }

    #[test]
    fn esn_crosses_the_32_bit_boundary() {
        let mut w = ReplayWindow::new(64, true).unwrap();
        accept(&mut w, 1000).unwrap();
        accept(&mut w, u32::MAX - 1).unwrap();
        accept(&mut w, u32::MAX).unwrap();
        // Next subspace: low bits restart.
        assert_eq!(accept(&mut w, 0), Ok(1 << 32));
        assert_eq!(accept(&mut w, 3), Ok((1 << 32) + 3));
        // A late packet from the previous subspace, still inside the window.
        assert_eq!(accept(&mut w, u32::MAX - 5), Ok(u64::from(u32::MAX - 5)));
        assert_eq!(w.check(u32::MAX), Err(ReplayError::Duplicate));
        // Far behind the window in the old subspace: RFC 4303 A2.2 infers the current
        // subspace (a number far ahead); the ICV check, which covers the high bits, rejects it.
        assert_eq!(
            w.check(u32::MAX - 100),
            Ok((1 << 32) | u64::from(u32::MAX - 100))
        );
    }

    #[test]
    fn esn_inference_matches_rfc4303_appendix() {
        let mut w = ReplayWindow::new(64, true).unwrap();
        accept(&mut w, 1000).unwrap();
        // Case Tl >= W-1: below the window means the next subspace.
        assert_eq!(w.check(10), Ok((1 << 32) | 10));
        assert_eq!(w.check(1000 - 63), Ok(937));
        assert_eq!(w.check(1000 - 64), Ok((1 << 32) | 936));
        // Case Tl < W-1, Th = 0: seq_lo in the "previous subspace" tail would be before zero.
        let mut w = ReplayWindow::new(64, true).unwrap();
        accept(&mut w, 5).unwrap();
        assert_eq!(w.check(u32::MAX), Err(ReplayError::Zero));
        assert_eq!(w.check(4), Ok(4));
    }

    #[test]
    fn non_esn_never_wraps() {
        let mut w = ReplayWindow::new(64, false).unwrap();
        accept(&mut w, u32::MAX).unwrap();
        assert_eq!(w.check(1), Err(ReplayError::TooOld));
    }

    #[test]
    fn an_exported_window_continues_elsewhere_refusing_the_same() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for (size, esn) in [(64u32, false), (128, true), (1024, false), (4096, true)] {
            let mut a = ReplayWindow::new(size, esn).unwrap();
            // Up to some point in a random walk, then moved; both then see the same packets.
            let mut top = 0u64;
            for step in 0..20_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let delta = (x % (2 * u64::from(size) + 10)) as i64 - i64::from(size);
                let s = (top as i64 + delta).max(1) as u64;
                if accept(&mut a, s as u32).is_ok() {
                    top = top.max(s);
                }
                if step == 10_000 {
                    let state = a.export();
                    assert_eq!(state.seen.len() * 64, size as usize);
                    let b = ReplayWindow::resume(size, esn, &state).unwrap();
                    assert_eq!(b.export(), state, "export(resume(x)) = x");
                    // From here on, the moved window answers every number as the original.
                    for probe in top.saturating_sub(u64::from(size) + 3)..=top + 3 {
                        assert_eq!(b.check(probe as u32), a.check(probe as u32), "{probe}");
                    }
                    a = b;
                }
            }
        }
        // A fresh window exports an empty state; a state of the wrong width is refused.
        let fresh = ReplayWindow::new(128, false).unwrap().export();
        assert_eq!((fresh.top, fresh.seen), (0, vec![0, 0]));
        let s = ReplayState {
            top: 10,
            seen: vec![1],
        };
        assert_eq!(
            ReplayWindow::resume(128, false, &s).err(),
            Some(BadReplayState::Width {
                window: 128,
                state: 64
            })
        );
        let s = ReplayState {
            top: 1 << 33,
            seen: vec![1],
        };
        assert!(ReplayWindow::resume(64, false, &s).is_err());
        assert!(ReplayWindow::resume(64, true, &s).is_ok());
    }

    #[test]
    fn matches_a_reference_model() {
        // Random walk against a set-based model, for every window size.
        for size in [64u32, 128, 256, 4096] {
            let mut w = ReplayWindow::new(size, false).unwrap();
            let mut seen = std::collections::BTreeSet::new();
            let mut top = 0u64;
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(size);
            for _ in 0..50_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let delta = (x % (2 * u64::from(size) + 10)) as i64 - i64::from(size) - 5;
                let s = (top as i64 + delta).max(1) as u64;
                let expect = if s > top {
                    Ok(s)
                } else if top - s >= u64::from(size) {
                    Err(ReplayError::TooOld)
                } else if seen.contains(&s) {
                    Err(ReplayError::Duplicate)
                } else {
                    Ok(s)
                };
                let got = accept(&mut w, s as u32);
                assert_eq!(got, expect, "size {size} top {top} seq {s}");
                if got.is_ok() {
                    seen.insert(s);
                    top = top.max(s);
                }
            }
        }
    }
}
