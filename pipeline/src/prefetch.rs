//! Software prefetch: a hint that a cache line will be read soon.
//!
//! With many SAs a packet's SA state (lookup slot, record, counters, key data) is not in the
//! cache, and a lookup done packet by packet waits for each miss in turn. The worker instead
//! walks a burst in stages and prefetches what the next stage will read for every packet, so
//! that the misses of a burst overlap (see `worker::warm`). A prefetch never faults and
//! changes no data: a wrong address costs a wasted memory access, never a wrong result.
#![allow(unsafe_code)]

/// Cache line size the prefetches step by.
pub const LINE: usize = 64;

/// Prefetches the cache line holding `p` into all cache levels.
#[inline(always)]
pub fn line<T: ?Sized>(p: &T) {
    addr((p as *const T).cast::<u8>());
}

/// Prefetches the `lines` cache lines starting with the one holding `p`.
#[inline(always)]
pub fn lines<T: ?Sized>(p: &T, lines: usize) {
    let base = (p as *const T).cast::<u8>();
    for k in 0..lines {
        addr(base.wrapping_add(k * LINE));
    }
}

/// Prefetches the cache lines covering `bytes` bytes at offset `from` of `p` (which need not
/// all lie inside `*p`: only an address is formed, nothing is read).
#[inline(always)]
pub fn range<T: ?Sized>(p: &T, from: usize, bytes: usize) {
    if bytes == 0 {
        return;
    }
    let base = (p as *const T).cast::<u8>().wrapping_add(from);
    let skew = base as usize & (LINE - 1);
    let first = base.wrapping_sub(skew);
    let n = (skew + bytes).div_ceil(LINE);
    for k in 0..n {
        addr(first.wrapping_add(k * LINE));
    }
}

#[inline(always)]
fn addr(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: PREFETCHT0 is a hint: it never faults and never changes memory or
        // registers, whatever the address (it is dropped for an unmapped one). SSE, which it
        // needs, is part of the x86_64 baseline.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = p;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetching_any_address_is_harmless() {
        let v = vec![7u8; 300];
        line(&v[0]);
        lines(&v[..], 5);
        range(&v[..], 10, 290);
        range(&v[..], 4000, 64); // past the end: an address only, never read
        range(&v[..], 0, 0);
        assert!(v.iter().all(|b| *b == 7));
    }
}
