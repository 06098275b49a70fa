//! Clear-side L4 checksums. A LAN host whose interface leaves checksums to the hardware
//! (veth, virtio with offloads: the kernel's CHECKSUM_PARTIAL) hands us TCP and UDP with the
//! checksum unfinished: the field holds only the pseudo-header sum. Sealed as they are, the far
//! end delivers segments its host drops: TCP is black-holed while ping and most UDP work.
//!
//! [`ClearChecksum`] says what the worker does with the TCP and UDP checksums of LAN packets
//! it seals: `Pass` tunnels them as they are and verifies one in [`SAMPLE_EVERY`] so that the
//! problem shows in the counters; `Verify` checks each; `Complete` recomputes each (IPv4 and
//! IPv6) before sealing. Checked, wrong (unfinished or otherwise) and completed frames are
//! counted per worker (`clear_checksum_*` in [`Traffic`]).
//!
//! Owns: the mode and its sampling, checking and completing one packet's L4 checksum.
//! Must never: touch a fragment (its checksum covers bytes it does not hold), read past the
//! IP length, or change a checksum in `Pass` or `Verify`.

use core::net::IpAddr;

use super::parse::IpInfo;
use crate::stats::{CoreCounters, Traffic};
use crate::wire::{checksum, ipv4, ipv6, tcp, udp, IpProtocol};

/// What the worker does with the TCP/UDP checksums of the LAN packets it seals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClearChecksum {
    /// Tunnel them as they are; verify a sample (one packet in [`SAMPLE_EVERY`]), counted.
    #[default]
    Pass,
    /// Verify each and count the wrong ones; tunnel them as they are.
    Verify,
    /// Recompute each before sealing (counting the ones that were wrong).
    Complete,
}

/// In `Pass`, one unfragmented TCP/UDP packet in this many is verified.
pub const SAMPLE_EVERY: u32 = 64;

/// The bytes an L4 checksum covers: from the upper-layer header to the end the IP header
/// gives (Ethernet padding excluded); None for anything but unfragmented TCP and UDP.
fn l4_range(ip: &[u8], pkt: &IpInfo) -> Option<(usize, usize)> {
    if pkt.fragment {
        return None;
    }
    match IpProtocol::from(pkt.key.proto) {
        IpProtocol::Tcp | IpProtocol::Udp => {}
        _ => return None,
    }
    let end = if pkt.ipv6 {
        usize::from(ipv6::Packet::new_checked(ip).ok()?.payload_len())
            .checked_add(ipv6::HEADER_LEN)?
    } else {
        usize::from(ipv4::Packet::new_checked(ip).ok()?.total_len())
    };
    (pkt.header_len <= end && end <= ip.len()).then_some((pkt.header_len, end))
}

/// Checks (and with `complete`, recomputes) the L4 checksum of the IP packet `ip`. Some(true):
/// it was right; Some(false): it was wrong (and is right now if `complete`); None: nothing to
/// check (not TCP/UDP, a fragment, a header that does not parse).
pub(super) fn check(ip: &mut [u8], pkt: &IpInfo, complete: bool) -> Option<bool> {
    let (start, end) = l4_range(ip, pkt)?;
    let (src, dst): (IpAddr, IpAddr) = (pkt.key.src, pkt.key.dst);
    let proto = IpProtocol::from(pkt.key.proto);
    let l4 = ip.get_mut(start..end)?;
    let len = u32::try_from(l4.len()).ok()?;
    let old = if proto == IpProtocol::Tcp {
        tcp::Packet::new_checked(&mut *l4).ok()?.checksum()
    } else {
        let u = udp::Packet::new_checked(&mut *l4).ok()?;
        // The UDP length must cover what the IP length gives, or the checksum covers less
        // than is sent: leave such a datagram alone. Zero over IPv4 is "no checksum".
        if u32::from(u.len()) != len || (u.checksum() == 0 && src.is_ipv4()) {
            return None;
        }
        u.checksum()
    };
    // One pass over the bytes: the sum with the field as it is verifies it, and the same sum
    // with the old field taken out (one's complement: adding its complement) completes it.
    let sum = checksum::combine(&[
        checksum::pseudo_header(&src, &dst, proto, len),
        checksum::data(l4),
    ]);
    let ok = sum == 0xffff;
    if !ok && complete {
        let new = !checksum::combine(&[sum, !old]);
        if proto == IpProtocol::Tcp {
            tcp::Packet::new_unchecked(&mut *l4).set_checksum(new);
        } else {
            // A computed zero is sent as all ones (RFC 768).
            udp::Packet::new_unchecked(&mut *l4).set_checksum(if new == 0 { 0xffff } else { new });
        }
    }
    Some(ok)
}

/// What the worker keeps for its mode: the mode and the sampling countdown.
#[derive(Debug, Default)]
pub(super) struct ChecksumState {
    pub(super) mode: ClearChecksum,
    countdown: u32,
}

impl ChecksumState {
    pub(super) fn new(mode: ClearChecksum) -> Self {
        ChecksumState { mode, countdown: 0 }
    }

    /// Applies the mode to one LAN packet about to be sealed (`ip`: from its IP header on).
    #[inline]
    pub(super) fn apply(&mut self, ip: &mut [u8], pkt: &IpInfo, counters: &CoreCounters) {
        // Only TCP and UDP count toward the sample: an ICMP packet never hides a segment.
        let proto = IpProtocol::from(pkt.key.proto);
        if pkt.fragment || !matches!(proto, IpProtocol::Tcp | IpProtocol::Udp) {
            return;
        }
        let complete = match self.mode {
            ClearChecksum::Pass => {
                if self.countdown > 0 {
                    self.countdown -= 1;
                    return;
                }
                self.countdown = SAMPLE_EVERY - 1;
                false
            }
            ClearChecksum::Verify => false,
            ClearChecksum::Complete => true,
        };
        if let Some(ok) = check(ip, pkt, complete) {
            counters.count(Traffic::ClearChecksumChecked, 1);
            if !ok {
                counters.count(Traffic::ClearChecksumBad, 1);
                if complete {
                    counters.count(Traffic::ClearChecksumCompleted, 1);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::worker::parse::parse_l3;

    /// An IP packet (IPv4 or IPv6 by the addresses) with a TCP or UDP segment of `payload`
    /// bytes whose checksum is as a host with checksum offload leaves it: the pseudo-header
    /// sum only (Linux's CHECKSUM_PARTIAL), plus `pad` bytes of link padding after it.
    fn partial(src: &str, dst: &str, proto: IpProtocol, payload: usize, pad: usize) -> Vec<u8> {
        let (s, d): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        let l4_len = if proto == IpProtocol::Tcp { 20 } else { 8 } + payload;
        let mut l4 = vec![0u8; l4_len];
        for (i, b) in l4.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(7);
        }
        let sum = checksum::pseudo_header(&s, &d, proto, l4_len as u32);
        if proto == IpProtocol::Tcp {
            let mut t = tcp::Packet::new_unchecked(&mut l4[..]);
            t.set_src_port(40000);
            t.set_dst_port(5201);
            t.set_header_len(20);
            t.set_checksum(sum);
        } else {
            let mut u = udp::Packet::new_unchecked(&mut l4[..]);
            u.set_src_port(40000);
            u.set_dst_port(5201);
            u.set_len(l4_len as u16);
            u.set_checksum(sum);
        }
        let mut ip = match (s, d) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut b = vec![0u8; 20 + l4_len];
                ipv4::Repr {
                    src_addr: s,
                    dst_addr: d,
                    next_header: proto,
                    payload_len: l4_len,
                    hop_limit: 64,
                    dscp: 0,
                    ecn: 0,
                    ident: 1,
                    dont_frag: true,
                }
                .emit(&mut ipv4::Packet::new_unchecked(&mut b[..]));
                b[20..].copy_from_slice(&l4);
                b
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut b = vec![0u8; 40 + l4_len];
                let mut p = ipv6::Packet::new_unchecked(&mut b[..]);
                p.set_version(6);
                p.set_payload_len(l4_len as u16);
                p.set_next_header(proto);
                p.set_hop_limit(64);
                p.set_src_addr(s);
                p.set_dst_addr(d);
                b[40..].copy_from_slice(&l4);
                b
            }
            _ => unreachable!(),
        };
        ip.extend(std::iter::repeat_n(0xee, pad));
        ip
    }

    fn verify(ip: &[u8]) -> bool {
        let pkt = parse_l3(ip).unwrap();
        let l4 = &ip[pkt.header_len..ip.len()];
        match IpProtocol::from(pkt.key.proto) {
            IpProtocol::Tcp => tcp::Packet::new_checked(l4)
                .unwrap()
                .verify_checksum(&pkt.key.src, &pkt.key.dst),
            _ => udp::Packet::new_checked(l4)
                .unwrap()
                .verify_checksum(&pkt.key.src, &pkt.key.dst),
        }
    }

    #[test]
    fn unfinished_checksums_are_found_and_completed_in_both_families() {
        for (src, dst) in [("10.1.0.10", "10.2.0.10"), ("fd00:a::10", "fd00:b::10")] {
            for proto in [IpProtocol::Tcp, IpProtocol::Udp] {
                for payload in [0, 1, 100, 1399] {
                    let mut ip = partial(src, dst, proto, payload, 0);
                    assert!(!verify(&ip), "{src} {proto:?} {payload}: unfinished");
                    let pkt = parse_l3(&ip).unwrap();
                    let before = ip.clone();
                    assert_eq!(check(&mut ip, &pkt, false), Some(false));
                    assert_eq!(ip, before, "verifying changes nothing");
                    assert_eq!(check(&mut ip, &pkt, true), Some(false));
                    assert!(verify(&ip), "{src} {proto:?} {payload}: completed");
                    assert_eq!(check(&mut ip, &pkt, true), Some(true), "right now");
                    let done = ip.clone();
                    assert_eq!(check(&mut ip, &pkt, true), Some(true));
                    assert_eq!(ip, done, "a right checksum is left alone");
                }
            }
        }
    }

    #[test]
    fn link_padding_stays_out_of_the_sum_and_fragments_are_left_alone() {
        // Ethernet pads short frames: the IP length, not the buffer, bounds the segment.
        let mut ip = partial("10.1.0.10", "10.2.0.10", IpProtocol::Tcp, 2, 18);
        let pkt = parse_l3(&ip).unwrap();
        assert_eq!(check(&mut ip, &pkt, true), Some(false));
        let n = ip.len() - 18;
        assert!(verify(&ip[..n]));
        assert!(ip[n..].iter().all(|b| *b == 0xee), "padding untouched");
        // A first fragment: its checksum covers bytes it does not hold.
        let mut frag = partial("10.1.0.10", "10.2.0.10", IpProtocol::Udp, 100, 0);
        {
            let mut p = ipv4::Packet::new_unchecked(&mut frag[..]);
            p.set_more_frags(true);
            p.set_dont_frag(false);
            p.fill_checksum();
        }
        let before = frag.clone();
        let pkt = parse_l3(&frag).unwrap();
        assert_eq!(check(&mut frag, &pkt, true), None);
        assert_eq!(frag, before);
    }

    #[test]
    fn pass_samples_one_in_sample_every_verify_and_complete_check_each() {
        let counters = CoreCounters::default();
        let ip0 = partial("10.1.0.10", "10.2.0.10", IpProtocol::Tcp, 100, 0);
        let pkt = parse_l3(&ip0).unwrap();
        let mut s = ChecksumState::new(ClearChecksum::Pass);
        for _ in 0..2 * SAMPLE_EVERY + 1 {
            let mut ip = ip0.clone();
            s.apply(&mut ip, &pkt, &counters);
            assert_eq!(ip, ip0, "pass changes nothing");
        }
        let got = |t| counters.snapshot().traffic(t);
        assert_eq!(
            (
                got(Traffic::ClearChecksumChecked),
                got(Traffic::ClearChecksumBad)
            ),
            (3, 3)
        );
        let mut s = ChecksumState::new(ClearChecksum::Verify);
        for _ in 0..10 {
            s.apply(&mut ip0.clone(), &pkt, &counters);
        }
        assert_eq!(
            (
                got(Traffic::ClearChecksumChecked),
                got(Traffic::ClearChecksumBad)
            ),
            (13, 13)
        );
        assert_eq!(got(Traffic::ClearChecksumCompleted), 0);
        let mut s = ChecksumState::new(ClearChecksum::Complete);
        let mut ip = ip0.clone();
        s.apply(&mut ip, &pkt, &counters);
        s.apply(&mut ip, &pkt, &counters);
        assert_eq!(
            got(Traffic::ClearChecksumCompleted),
            1,
            "the second was right already"
        );
        assert_eq!(got(Traffic::ClearChecksumChecked), 15);
    }
}
