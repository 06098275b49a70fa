//! A single-producer single-consumer ring of variable-length records in fixed-size slots.
//!
//! Memory of one ring (offsets from its start, which is 128-aligned):
//!
//! ```text
//!   0  tail: AtomicU64   records published up to here (slot index, never wraps: u64)
//! 128  head: AtomicU64   records consumed up to here
//! 256  slot 0, slot 1, ... slot N-1   (N a power of two, each `slot_size` bytes)
//! ```
//!
//! Head and tail sit on their own pairs of cache lines (no false sharing, none with the
//! adjacent-line prefetcher either). A record is an 8-byte header (`len: u32`, `kind: u32`)
//! followed by `len` bytes, in as many consecutive slots as `8 + len` needs. A record never
//! wraps past the last slot: when it would, the producer first publishes a skip marker that
//! fills the slots up to the end. So a record is always contiguous and can be read in place.
//!
//! Ordering: the producer writes a record's bytes, then stores `tail` with Release; the
//! consumer loads `tail` with Acquire before reading them. The consumer reads (and, on rings
//! flagged so, zeroizes) the bytes, then stores `head` with Release; the producer loads `head`
//! with Acquire before overwriting them. Each side keeps its own index privately and caches the
//! other's, reloading it only when the cached value says full (producer) or empty (consumer).
//! Indices and headers read from the peer are validated: a corrupt ring is an error, never
//! an out-of-bounds access.

use core::ops::Deref;
use core::sync::atomic::{compiler_fence, AtomicU64, Ordering};
use std::sync::Arc;

use super::region::{Region, RingSpec};

/// Bytes before the first slot: tail and head, each on 128 bytes of its own.
pub const CONTROL_LEN: usize = 256;
const HEAD_AT: usize = 128;
/// Bytes before a record's payload.
pub const RECORD_HEADER_LEN: usize = 8;
const KIND_RECORD: u32 = 1;
const KIND_SKIP: u32 = 2;

/// Why a record was not pushed. `Full` is back-pressure: keep the record and retry later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PushError<E = core::convert::Infallible> {
    #[error("ring full")]
    Full,
    #[error("record of {len} bytes exceeds the ring's maximum of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("ring indices are corrupt (the peer wrote garbage)")]
    Corrupt,
    #[error("filling the record failed: {0}")]
    Fill(E),
}

/// Why a record was not popped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PopError {
    /// Nothing was consumed; pop again with a buffer of `needed` bytes.
    #[error("buffer too small: the next record has {needed} bytes")]
    BufferTooSmall { needed: usize },
    #[error("ring is corrupt: {0}")]
    Corrupt(&'static str),
}

/// One ring's memory inside a region that the `Arc` keeps mapped.
pub(super) struct RingMem {
    base: *mut u8,
    slot_size: usize,
    count: u64,
    zeroize: bool,
    max_record: usize,
    _region: Arc<Region>,
}

// SAFETY: the raw pointer targets a mapping kept alive by `_region`; a `RingMem` belongs to
// exactly one endpoint (taken once per mapping), which may move to another thread.
unsafe impl Send for RingMem {}

impl RingMem {
    /// `base` must be the 128-aligned start of a ring of `spec`'s size inside `region`'s
    /// mapping (checked by `Region::create` / `Region::open`).
    pub(super) fn new(base: *mut u8, spec: RingSpec, region: Arc<Region>) -> RingMem {
        RingMem {
            base,
            slot_size: spec.slot_size as usize,
            count: u64::from(spec.slot_count),
            zeroize: spec.zeroize,
            max_record: Region::max_record_len(&spec),
            _region: region,
        }
    }

    fn tail(&self) -> &AtomicU64 {
        // SAFETY: `base` is 128-aligned and inside the live mapping; the tail word is only
        // ever accessed atomically, by either process.
        unsafe { AtomicU64::from_ptr(self.base.cast()) }
    }

    fn head(&self) -> &AtomicU64 {
        // SAFETY: as for `tail`, 128 bytes further (still in the ring's control block).
        unsafe { AtomicU64::from_ptr(self.base.add(HEAD_AT).cast()) }
    }

    /// Start of slot `idx mod N`. In bounds: `(idx & (N-1)) * slot_size < N * slot_size`.
    fn slot(&self, idx: u64) -> *mut u8 {
        let i = (idx & (self.count - 1)) as usize;
        self.base.wrapping_add(CONTROL_LEN + i * self.slot_size)
    }

    fn slots_for(&self, len: usize) -> u64 {
        (RECORD_HEADER_LEN + len).div_ceil(self.slot_size) as u64
    }

    /// Slots from `idx` to the end of the ring.
    fn to_end(&self, idx: u64) -> u64 {
        self.count - (idx & (self.count - 1))
    }

    fn write_header(&self, idx: u64, len: usize, kind: u32) {
        let mut h = [0u8; RECORD_HEADER_LEN];
        h[..4].copy_from_slice(&(len as u32).to_le_bytes());
        h[4..].copy_from_slice(&kind.to_le_bytes());
        // SAFETY: a slot is at least 16 bytes and owned by the producer until published.
        unsafe { core::ptr::copy_nonoverlapping(h.as_ptr(), self.slot(idx), RECORD_HEADER_LEN) };
    }

    fn read_header(&self, idx: u64) -> (usize, u32) {
        let mut h = [0u8; RECORD_HEADER_LEN];
        // SAFETY: the slot is published (idx < tail, loaded with Acquire) and not yet
        // released, so the producer does not write it; 8 bytes lie inside any slot.
        unsafe {
            core::ptr::copy_nonoverlapping(self.slot(idx), h.as_mut_ptr(), RECORD_HEADER_LEN)
        };
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        (len, u32::from_le_bytes([h[4], h[5], h[6], h[7]]))
    }

    /// Overwrites `len` bytes from the start of slot `idx` with zeros, by volatile word
    /// stores the compiler may not drop. `len` is rounded up to 8 and stays inside the slots
    /// the record occupied.
    fn zero(&self, idx: u64, len: usize) {
        let words = len.div_ceil(8);
        let p = self.slot(idx).cast::<u64>();
        for w in 0..words {
            // SAFETY: the record's slots (`slots_for(len) * slot_size >= len` bytes, rounded
            // up to 8 since slot sizes are multiples of 8) are owned by the consumer until
            // `head` moves; slots are 8-aligned.
            unsafe { p.add(w).write_volatile(0) };
        }
        compiler_fence(Ordering::SeqCst);
    }
}

/// The writing end of a ring.
pub struct Producer {
    ring: RingMem,
    tail: u64,
    cached_head: u64,
}

impl Producer {
    pub(super) fn new(ring: RingMem) -> Producer {
        let tail = ring.tail().load(Ordering::Acquire);
        let cached_head = ring.head().load(Ordering::Acquire);
        Producer {
            ring,
            tail,
            cached_head,
        }
    }

    /// Largest record this ring carries.
    pub fn max_record_len(&self) -> usize {
        self.ring.max_record
    }

    /// Whether `n` slots are free, reloading the consumer's index only if the cached one
    /// says no.
    fn room<E>(&mut self, n: u64) -> Result<bool, PushError<E>> {
        let free = |tail: u64, head: u64| self.ring.count.checked_sub(tail.wrapping_sub(head));
        if free(self.tail, self.cached_head).is_some_and(|f| f >= n) {
            return Ok(true);
        }
        self.cached_head = self.ring.head().load(Ordering::Acquire);
        match free(self.tail, self.cached_head) {
            Some(f) => Ok(f >= n),
            None => Err(PushError::Corrupt),
        }
    }

    /// Copies `record` into the ring. On `Full` nothing was written: retry later (never
    /// dropped).
    pub fn try_push(&mut self, record: &[u8]) -> Result<(), PushError> {
        self.try_push_with(record.len(), |slot| {
            slot.copy_from_slice(record);
            Ok(())
        })
    }

    /// Reserves `len` bytes, lets `fill` write them in place (zero-copy encoding), then
    /// publishes the record. If `fill` fails, the bytes are zeroed and nothing is published.
    pub fn try_push_with<E>(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), PushError<E>> {
        if len > self.ring.max_record {
            return Err(PushError::TooLarge {
                len,
                max: self.ring.max_record,
            });
        }
        let need = self.ring.slots_for(len);
        let to_end = self.ring.to_end(self.tail);
        if need > to_end {
            // Fill the rest of the ring with a skip marker so the record starts at slot 0.
            if !self.room(to_end)? {
                return Err(PushError::Full);
            }
            self.ring.write_header(self.tail, 0, KIND_SKIP);
            self.tail = self.tail.wrapping_add(to_end);
            self.ring.tail().store(self.tail, Ordering::Release);
        }
        if !self.room(need)? {
            return Err(PushError::Full);
        }
        self.ring.write_header(self.tail, len, KIND_RECORD);
        // SAFETY: the record's `need` slots are free (room) and contiguous (need <= to_end,
        // after the skip); `8 + len <= need * slot_size` bytes lie inside them, and no one
        // else touches them until `tail` is published.
        let body = unsafe {
            core::slice::from_raw_parts_mut(self.ring.slot(self.tail).add(RECORD_HEADER_LEN), len)
        };
        if let Err(e) = fill(body) {
            self.ring.zero(self.tail, RECORD_HEADER_LEN + len);
            return Err(PushError::Fill(e));
        }
        self.tail = self.tail.wrapping_add(need);
        self.ring.tail().store(self.tail, Ordering::Release);
        Ok(())
    }
}

/// A record located by [`Consumer::peek`]: start index, payload length, slots.
#[derive(Clone, Copy)]
struct Located {
    idx: u64,
    len: usize,
    slots: u64,
}

/// The reading end of a ring.
pub struct Consumer {
    ring: RingMem,
    head: u64,
    cached_tail: u64,
}

impl Consumer {
    pub(super) fn new(ring: RingMem) -> Consumer {
        let head = ring.head().load(Ordering::Acquire);
        let cached_tail = ring.tail().load(Ordering::Acquire);
        Consumer {
            ring,
            head,
            cached_tail,
        }
    }

    pub fn max_record_len(&self) -> usize {
        self.ring.max_record
    }

    /// Finds the next record (consuming skip markers on the way), without releasing it.
    fn peek(&mut self) -> Result<Option<Located>, PopError> {
        loop {
            if self.head == self.cached_tail {
                self.cached_tail = self.ring.tail().load(Ordering::Acquire);
                if self.head == self.cached_tail {
                    return Ok(None);
                }
            }
            let avail = self.cached_tail.wrapping_sub(self.head);
            if avail > self.ring.count {
                return Err(PopError::Corrupt("tail is ahead by more than the ring"));
            }
            let (len, kind) = self.ring.read_header(self.head);
            let to_end = self.ring.to_end(self.head);
            match kind {
                KIND_SKIP => {
                    if to_end > avail {
                        return Err(PopError::Corrupt("skip marker beyond the tail"));
                    }
                    self.release(Located {
                        idx: self.head,
                        len: 0,
                        slots: to_end,
                    });
                    self.publish();
                }
                KIND_RECORD => {
                    if len > self.ring.max_record {
                        return Err(PopError::Corrupt("record length"));
                    }
                    let slots = self.ring.slots_for(len);
                    if slots > to_end || slots > avail {
                        return Err(PopError::Corrupt("record crosses the ring end or tail"));
                    }
                    return Ok(Some(Located {
                        idx: self.head,
                        len,
                        slots,
                    }));
                }
                _ => return Err(PopError::Corrupt("slot header")),
            }
        }
    }

    fn body(&self, r: Located) -> &[u8] {
        // SAFETY: `peek` checked that the record's slots are published (below the tail
        // loaded with Acquire), contiguous and inside the ring; the producer does not write
        // them until `head` moves past them, which needs `&mut self`.
        unsafe { core::slice::from_raw_parts(self.ring.slot(r.idx).add(RECORD_HEADER_LEN), r.len) }
    }

    /// Hands a record's slots back locally (zeroized first on rings flagged so).
    fn release(&mut self, r: Located) {
        if self.ring.zeroize {
            self.ring.zero(r.idx, RECORD_HEADER_LEN + r.len);
        }
        self.head = self.head.wrapping_add(r.slots);
    }

    /// Makes released slots visible to the producer.
    fn publish(&self) {
        self.ring.head().store(self.head, Ordering::Release);
    }

    /// Copies the next record into `buf` and releases it. `Ok(None)`: the ring is empty.
    pub fn try_pop(&mut self, buf: &mut [u8]) -> Result<Option<usize>, PopError> {
        let Some(r) = self.peek()? else {
            return Ok(None);
        };
        let dst = buf
            .get_mut(..r.len)
            .ok_or(PopError::BufferTooSmall { needed: r.len })?;
        dst.copy_from_slice(self.body(r));
        self.release(r);
        self.publish();
        Ok(Some(r.len))
    }

    /// The next record in place; released (and zeroized on rings flagged so) when the guard
    /// drops.
    pub fn try_read(&mut self) -> Result<Option<ReadGuard<'_>>, PopError> {
        Ok(self.peek()?.map(|r| ReadGuard { c: self, r }))
    }

    /// Hands up to `max` records in place to `f`, releasing them all with one store of the
    /// head (batch). Returns how many were handed.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> Result<usize, PopError> {
        let mut n = 0;
        let out = loop {
            if n == max {
                break Ok(n);
            }
            match self.peek() {
                Ok(Some(r)) => {
                    f(self.body(r));
                    self.release(r);
                    n += 1;
                }
                Ok(None) => break Ok(n),
                Err(e) => break Err(e),
            }
        };
        self.publish();
        out
    }
}

/// A record read in place. Derefs to its bytes.
pub struct ReadGuard<'a> {
    c: &'a mut Consumer,
    r: Located,
}

impl Deref for ReadGuard<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.c.body(self.r)
    }
}

impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        self.c.release(self.r);
        self.c.publish();
    }
}
