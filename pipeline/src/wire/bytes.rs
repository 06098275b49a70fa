//! Non-panicking big-endian field access shared by the wire formats (and NAT).
//!
//! Out-of-range reads return zero and out-of-range writes do nothing: views check their lengths
//! in `check_len`, so these fallbacks only matter for views made with `new_unchecked` over a
//! short buffer, where they turn what would be a panic into garbage.

/// A field's byte range inside a header.
pub(crate) type Field = core::ops::Range<usize>;
/// Everything from an offset on.
pub(crate) type Rest = core::ops::RangeFrom<usize>;

#[inline]
pub(crate) fn get_u8(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}

#[inline]
pub(crate) fn get_array<const N: usize>(b: &[u8], f: Field) -> [u8; N] {
    b.get(f)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .unwrap_or([0; N])
}

#[inline]
pub(crate) fn get_u16(b: &[u8], f: Field) -> u16 {
    u16::from_be_bytes(get_array(b, f))
}

#[inline]
pub(crate) fn get_u32(b: &[u8], f: Field) -> u32 {
    u32::from_be_bytes(get_array(b, f))
}

#[inline]
pub(crate) fn set_u8(b: &mut [u8], at: usize, v: u8) {
    if let Some(x) = b.get_mut(at) {
        *x = v;
    }
}

#[inline]
pub(crate) fn set_bytes(b: &mut [u8], f: Field, v: &[u8]) {
    if let Some(s) = b.get_mut(f) {
        if s.len() == v.len() {
            s.copy_from_slice(v);
        }
    }
}

#[inline]
pub(crate) fn set_u16(b: &mut [u8], f: Field, v: u16) {
    set_bytes(b, f, &v.to_be_bytes());
}

#[inline]
pub(crate) fn set_u32(b: &mut [u8], f: Field, v: u32) {
    set_bytes(b, f, &v.to_be_bytes());
}

/// `b[r]`, or an empty slice when out of range.
#[inline]
pub(crate) fn slice<R: core::slice::SliceIndex<[u8], Output = [u8]>>(b: &[u8], r: R) -> &[u8] {
    b.get(r).unwrap_or(&[])
}

/// `&mut b[r]`, or an empty slice when out of range.
#[inline]
pub(crate) fn slice_mut<R: core::slice::SliceIndex<[u8], Output = [u8]>>(
    b: &mut [u8],
    r: R,
) -> &mut [u8] {
    b.get_mut(r).unwrap_or(&mut [])
}
