//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Sums here are one's-complement sums *before* the final complement: a header's checksum field
//! holds `!combine(&[pseudo_header, data(bytes)])`, and a header verifies when the sum over it
//! (checksum field included) is `0xffff`.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::IpProtocol;

/// Folds a 32-bit accumulator into a 16-bit one's-complement sum (no final complement).
#[inline]
pub fn fold(sum: u32) -> u16 {
    // Two fixed steps: 2^32 - 1 folds to at most 0x1fffe, then to at most 0xffff.
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Folds a 64-bit accumulator in four fixed steps (no data-dependent loop): 2^64 - 1 folds to
/// at most 2^33, then 2^17 + 2^16, then 0x10001, then 0xffff.
#[inline]
fn fold64(sum: u64) -> u16 {
    let s = (sum & 0xffff_ffff) + (sum >> 32);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// One's-complement sum of `data` as big-endian 16-bit words; an odd last byte is padded with a
/// zero byte on the right.
#[inline]
pub fn data(data: &[u8]) -> u16 {
    // An option-less IPv4 header, the per-packet case: five 32-bit words, no loop.
    if let Ok(&[a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3, e0, e1, e2, e3]) =
        <&[u8; 20]>::try_from(data)
    {
        let w = |b: [u8; 4]| u64::from(u32::from_be_bytes(b));
        return fold64(
            w([a0, a1, a2, a3])
                + w([b0, b1, b2, b3])
                + w([c0, c1, c2, c3])
                + w([d0, d1, d2, d3])
                + w([e0, e1, e2, e3]),
        );
    }
    // Summing 64-bit words with end-around carry is the same sum modulo 0xffff, since
    // 2^16 = 1 (mod 2^16 - 1) and 2^64 - 1 is a multiple of 2^16 - 1.
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = <[u8; 8]>::try_from(c).map(u64::from_be_bytes).unwrap_or(0);
        let (s, carry) = acc.overflowing_add(w);
        acc = s + u64::from(carry);
    }
    let mut tail: u64 = 0;
    let mut words = chunks.remainder().chunks_exact(2);
    for w in &mut words {
        tail += u64::from(<[u8; 2]>::try_from(w).map(u16::from_be_bytes).unwrap_or(0));
    }
    if let Some(&b) = words.remainder().first() {
        tail += u64::from(b) << 8;
    }
    let (s, carry) = acc.overflowing_add(tail);
    // With a carry `s` is below `u64::MAX`, so adding it back cannot overflow.
    fold64(s + u64::from(carry))
}

/// One's-complement sum of several partial sums.
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().map(|&s| u32::from(s)).sum())
}

/// Pseudo-header sum for a transport checksum over IPv4 (RFC 768, RFC 793).
pub fn pseudo_header_v4(src: &Ipv4Addr, dst: &Ipv4Addr, proto: IpProtocol, len: u32) -> u16 {
    let s = u32::from(*src);
    let d = u32::from(*dst);
    fold(
        (s >> 16)
            + (s & 0xffff)
            + (d >> 16)
            + (d & 0xffff)
            + u32::from(u8::from(proto))
            + (len >> 16)
            + (len & 0xffff),
    )
}

/// Pseudo-header sum for a transport checksum over IPv6 (RFC 8200 8.1).
pub fn pseudo_header_v6(src: &Ipv6Addr, dst: &Ipv6Addr, proto: IpProtocol, len: u32) -> u16 {
    combine(&[
        data(&src.octets()),
        data(&dst.octets()),
        fold((len >> 16) + (len & 0xffff) + u32::from(u8::from(proto))),
    ])
}

/// Pseudo-header sum for either family. Mixed families are a caller bug; they are summed as
/// IPv6 with the IPv4 address mapped (`::ffff:a.b.c.d`), which never verifies, rather than
/// panicking.
pub fn pseudo_header(src: &IpAddr, dst: &IpAddr, proto: IpProtocol, len: u32) -> u16 {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => pseudo_header_v4(s, d, proto, len),
        (IpAddr::V6(s), IpAddr::V6(d)) => pseudo_header_v6(s, d, proto, len),
        (s, d) => pseudo_header_v6(&to_v6(s), &to_v6(d), proto, len),
    }
}

fn to_v6(a: &IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => *a,
    }
}

/// RFC 1624 eqn. 3: the checksum after a 16-bit field (at an even offset of the summed data)
/// changed from `old` to `new`: `HC' = ~(~HC + ~m + m')`.
#[inline]
pub fn update16(cksum: u16, old: u16, new: u16) -> u16 {
    !combine(&[!cksum, !old, new])
}

/// RFC 1624 update for a 32-bit field at an even offset.
#[inline]
pub fn update32(cksum: u16, old: u32, new: u32) -> u16 {
    !combine(&[
        !cksum,
        !((old >> 16) as u16),
        !(old as u16),
        (new >> 16) as u16,
        new as u16,
    ])
}

/// RFC 1624 update for an IPv4 address (at an even offset).
#[inline]
pub fn update_ipv4_addr(cksum: u16, old: Ipv4Addr, new: Ipv4Addr) -> u16 {
    update32(cksum, u32::from(old), u32::from(new))
}

/// RFC 1624 update for an IPv6 address (at an even offset).
#[inline]
pub fn update_ipv6_addr(cksum: u16, old: Ipv6Addr, new: Ipv6Addr) -> u16 {
    update_bytes(cksum, &old.octets(), &new.octets())
}

/// RFC 1624 update for a run of bytes that changed from `old` to `new` (same length, starting
/// at an even offset of the summed data).
#[inline]
pub fn update_bytes(cksum: u16, old: &[u8], new: &[u8]) -> u16 {
    !combine(&[!cksum, !data(old), data(new)])
}

/// True when two checksum field values are the same one's-complement number (`0x0000` and
/// `0xffff` are both zero).
#[inline]
pub fn equivalent(a: u16, b: u16) -> bool {
    a == b || (a == 0 && b == 0xffff) || (a == 0xffff && b == 0)
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
pub(crate) mod tests {
    use super::*;

    /// RFC 1071 word by word, the definition the fast paths must agree with.
    fn reference(data: &[u8]) -> u16 {
        let mut sum: u64 = 0;
        for c in data.chunks(2) {
            sum += u64::from(c[0]) << 8 | c.get(1).map_or(0, |&b| u64::from(b));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn fast_paths_agree_with_the_definition() {
        let mut x = 0x1234_5678_9abc_def1u64;
        for len in [0usize, 1, 2, 3, 19, 20, 21, 40, 61, 1500] {
            for _ in 0..200 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                assert_eq!(data(&bytes), reference(&bytes), "{len} bytes: {bytes:02x?}");
            }
            let ones = vec![0xffu8; len];
            assert_eq!(data(&ones), reference(&ones), "{len} bytes of 0xff");
        }
        for s in [0u32, 1, 0xffff, 0x1_0000, 0x1_fffe, u32::MAX, 0xdead_beef] {
            let mut r = u64::from(s);
            while r > 0xffff {
                r = (r & 0xffff) + (r >> 16);
            }
            assert_eq!(u64::from(fold(s)), r, "{s:#x}");
        }
    }

    /// xorshift64*, for reproducible random packets in tests.
    pub(crate) struct Rng(pub u64);
    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn naive(b: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for w in b.chunks(2) {
            let hi = u32::from(w[0]) << 8;
            let lo = w.get(1).map_or(0, |&x| u32::from(x));
            sum += hi | lo;
        }
        fold(sum)
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2.
        assert_eq!(
            data(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
    }

    #[test]
    fn data_matches_naive_sum() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for len in 0..300 {
            let b = rng.bytes(len);
            assert_eq!(data(&b), naive(&b), "len {len}");
        }
        assert_eq!(data(&[0xff; 64]), 0xffff);
        assert_eq!(data(&[]), 0);
    }

    #[test]
    fn incremental_equals_recomputed() {
        let mut rng = Rng(42);
        for _ in 0..2000 {
            let len = 2 * (4 + rng.below(100));
            let mut b = rng.bytes(len);
            // checksum field at 0..2
            b[0] = 0;
            b[1] = 0;
            let ck = !data(&b);
            b[0..2].copy_from_slice(&ck.to_be_bytes());
            // change a 16-bit word, a 32-bit word and a 4-byte run at even offsets
            let at = 2 + 2 * rng.below((len - 6) / 2);
            let old16 = u16::from_be_bytes([b[at], b[at + 1]]);
            let new16 = rng.next() as u16;
            b[at..at + 2].copy_from_slice(&new16.to_be_bytes());
            let ck = update16(ck, old16, new16);
            let at = 2 + 2 * rng.below((len - 6) / 2);
            let old32 = u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
            let new32 = rng.next() as u32;
            b[at..at + 4].copy_from_slice(&new32.to_be_bytes());
            let ck = update32(ck, old32, new32);
            let old: Vec<u8> = b[at..at + 4].to_vec();
            let new = rng.bytes(4);
            b[at..at + 4].copy_from_slice(&new);
            let ck = update_bytes(ck, &old, &new);
            let mut z = b.clone();
            z[0] = 0;
            z[1] = 0;
            let recomputed = !data(&z);
            assert!(equivalent(ck, recomputed), "{ck:#x} vs {recomputed:#x}");
            b[0..2].copy_from_slice(&ck.to_be_bytes());
            assert_eq!(data(&b), 0xffff);
        }
    }

    #[test]
    fn pseudo_headers() {
        let s = Ipv4Addr::new(192, 0, 2, 1);
        let d = Ipv4Addr::new(198, 51, 100, 7);
        let mut ph = Vec::new();
        ph.extend_from_slice(&s.octets());
        ph.extend_from_slice(&d.octets());
        ph.extend_from_slice(&[0, 17, 0x01, 0x23]);
        assert_eq!(pseudo_header_v4(&s, &d, IpProtocol::Udp, 0x123), data(&ph));
        let s6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let d6: Ipv6Addr = "2001:db8::ffff:2".parse().unwrap();
        let mut ph = Vec::new();
        ph.extend_from_slice(&s6.octets());
        ph.extend_from_slice(&d6.octets());
        ph.extend_from_slice(&[0, 1, 0, 4, 0, 0, 0, 58]);
        assert_eq!(
            pseudo_header_v6(&s6, &d6, IpProtocol::Icmpv6, 0x10004),
            data(&ph)
        );
        assert_eq!(
            pseudo_header(
                &IpAddr::V6(s6),
                &IpAddr::V6(d6),
                IpProtocol::Icmpv6,
                0x10004
            ),
            data(&ph)
        );
        // mixed families do not panic
        let _ = pseudo_header(&IpAddr::V4(s), &IpAddr::V6(d6), IpProtocol::Udp, 8);
    }
}
