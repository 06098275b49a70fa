#![allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use super::*;
use crate::wire::checksum::tests::Rng;
use crate::wire::ipv6frag;
use crate::wire::IpProtocol;
use core::net::{Ipv4Addr, Ipv6Addr};

const MS: u64 = 1_000_000;

fn a4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn a6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// A whole IPv4 datagram (no options, DF clear) with `payload`.
fn v4_datagram(src: Ipv4Addr, proto: IpProtocol, ident: u16, payload: &[u8]) -> Vec<u8> {
    let r = ipv4::Repr {
        src_addr: src,
        dst_addr: a4("192.0.2.1"),
        next_header: proto,
        payload_len: payload.len(),
        hop_limit: 64,
        dscp: 0,
        ecn: 0,
        ident,
        dont_frag: false,
    };
    let mut b = vec![0u8; r.buffer_len()];
    r.emit(&mut ipv4::Packet::new_unchecked(&mut b[..]));
    b[20..].copy_from_slice(payload);
    b
}

/// The fragment of `dgram` (an IPv4 datagram) holding payload bytes `start..end`.
fn v4_fragment(dgram: &[u8], start: usize, end: usize, more: bool) -> Vec<u8> {
    let p = ipv4::Packet::new_checked(dgram).unwrap();
    let hl = usize::from(p.header_len());
    let mut f = dgram[..hl].to_vec();
    f.extend_from_slice(&p.payload()[start..end]);
    let mut q = ipv4::Packet::new_unchecked(&mut f[..]);
    q.set_total_len((hl + end - start) as u16);
    q.set_more_frags(more);
    q.set_frag_offset(start as u16);
    q.fill_checksum();
    f
}

/// A whole IPv6 packet: fixed header, `ext` (extension headers, the first named by `first`),
/// then `payload` of protocol `upper` (named by the last extension header when `ext` is set).
fn v6_datagram(src: Ipv6Addr, first: IpProtocol, ext: &[u8], payload: &[u8]) -> Vec<u8> {
    let r = ipv6::Repr {
        src_addr: src,
        dst_addr: a6("2001:db8::1"),
        next_header: first,
        payload_len: ext.len() + payload.len(),
        hop_limit: 64,
        dscp: 0,
        ecn: 0,
        flow_label: 0,
    };
    let mut b = vec![0u8; r.buffer_len()];
    r.emit(&mut ipv6::Packet::new_unchecked(&mut b[..]));
    b[40..40 + ext.len()].copy_from_slice(ext);
    b[40 + ext.len()..].copy_from_slice(payload);
    b
}

/// The fragment of `pkt` (unfragmentable part `unfrag` bytes long, fixed header included,
/// whose last next-header byte is at `nh_at`) holding fragmentable bytes `start..end`.
fn v6_fragment(
    pkt: &[u8],
    unfrag: usize,
    nh_at: usize,
    ident: u32,
    start: usize,
    end: usize,
    more: bool,
) -> Vec<u8> {
    let fragmentable = &pkt[unfrag..];
    let mut f = pkt[..unfrag].to_vec();
    let upper = IpProtocol::from(f[nh_at]);
    f[nh_at] = 44;
    let mut h = [0u8; 8];
    ipv6frag::Repr {
        next_header: upper,
        frag_offset: start as u16,
        more_frags: more,
        ident,
    }
    .emit(&mut ipv6frag::Header::new_unchecked(&mut h[..]));
    f.extend_from_slice(&h);
    f.extend_from_slice(&fragmentable[start..end]);
    let pl = (f.len() - 40) as u16;
    ipv6::Packet::new_unchecked(&mut f[..]).set_payload_len(pl);
    f
}

/// Cut points (multiples of 8) splitting `len` bytes into pieces of about `size`.
fn even_pieces(len: usize, size: usize) -> Vec<(usize, usize)> {
    let size = size.max(8) / 8 * 8;
    let mut v = vec![];
    let mut at = 0;
    while at < len {
        let end = (at + size).min(len);
        v.push((at, end));
        at = end;
    }
    v
}

fn v4_fragments(dgram: &[u8], pieces: &[(usize, usize)]) -> Vec<Vec<u8>> {
    let last = pieces.iter().map(|p| p.1).max().unwrap();
    pieces
        .iter()
        .map(|&(s, e)| v4_fragment(dgram, s, e, e != last))
        .collect()
}

fn v6_fragments(pkt: &[u8], ident: u32, pieces: &[(usize, usize)]) -> Vec<Vec<u8>> {
    let last = pieces.iter().map(|p| p.1).max().unwrap();
    pieces
        .iter()
        .map(|&(s, e)| v6_fragment(pkt, 40, 6, ident, s, e, e != last))
        .collect()
}

fn payload(rng: &mut Rng, len: usize) -> Vec<u8> {
    rng.bytes(len)
}

/// Every fragment is in exactly one place; memory and tables stay within their limits.
fn check(r: &Reassembler) {
    let c = r.counters();
    let dropped: u64 = c.fragment_drops.iter().sum();
    assert_eq!(
        c.fragments,
        c.reassembled_fragments + dropped + r.held_fragments() as u64,
        "fragments add up: {c:?}, held {}",
        r.held_fragments()
    );
    assert!(
        r.memory_bytes() <= r.config().max_bytes,
        "memory {}",
        r.memory_bytes()
    );
    assert!(r.datagrams_in_flight() <= r.config().max_datagrams);
    let spare: usize = r.spare.iter().map(|b| b.capacity()).sum();
    let slots: usize = r.slots.iter().map(|s| s.buf.capacity()).sum();
    assert_eq!(r.memory_bytes(), spare + slots, "memory accounting");
}

fn reasm() -> Reassembler {
    Reassembler::new(ReasmConfig::default()).unwrap()
}

/// Pushes every fragment; returns the completed packet (if the last push completed one) and
/// every outcome's kind.
fn push_all(r: &mut Reassembler, frags: &[Vec<u8>], now: u64) -> (Option<Vec<u8>>, Vec<String>) {
    let mut out = None;
    let mut kinds = vec![];
    for f in frags {
        match r.push(f, now) {
            Outcome::Complete(p) => {
                out = Some(p.to_vec());
                kinds.push("complete".to_string());
            }
            Outcome::Held => kinds.push("held".into()),
            Outcome::NotFragment => kinds.push("not".into()),
            Outcome::Dropped(d) => kinds.push(d.name().into()),
        }
        check(r);
    }
    (out, kinds)
}

#[test]
fn v4_two_fragments_in_order_and_reversed() {
    let mut rng = Rng(1);
    let dgram = v4_datagram(
        a4("198.51.100.7"),
        IpProtocol::Esp,
        77,
        &payload(&mut rng, 1573),
    );
    let frags = v4_fragments(&dgram, &[(0, 1480), (1480, 1573)]);
    let mut r = reasm();
    let (out, kinds) = push_all(&mut r, &frags, 0);
    assert_eq!(kinds, ["held", "complete"]);
    assert_eq!(out.unwrap(), dgram, "byte for byte, checksum included");
    let rev: Vec<_> = frags.iter().rev().cloned().collect();
    let (out, _) = push_all(&mut r, &rev, 0);
    assert_eq!(out.unwrap(), dgram);
    assert_eq!(r.counters().reassembled, 2);
    assert_eq!(r.counters().reassembled_fragments, 4);
    assert_eq!(r.datagrams_in_flight(), 0);
}

#[test]
fn v6_fragments_in_order_reversed_and_shuffled() {
    let mut rng = Rng(2);
    let udp = {
        let mut u = payload(&mut rng, 3000);
        u[4..6].copy_from_slice(&3000u16.to_be_bytes());
        u
    };
    let pkt = v6_datagram(a6("2001:db8:7::9"), IpProtocol::Udp, &[], &udp);
    let pieces = even_pieces(udp.len(), 1232);
    let frags = v6_fragments(&pkt, 0xfeed, &pieces);
    assert_eq!(frags.len(), 3);
    let mut r = reasm();
    for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]] {
        let fs: Vec<_> = order.iter().map(|&i| frags[i].clone()).collect();
        let (out, kinds) = push_all(&mut r, &fs, 0);
        assert_eq!(kinds, ["held", "held", "complete"], "{order:?}");
        assert_eq!(out.unwrap(), pkt, "{order:?}");
    }
}

#[test]
fn v6_unfragmentable_headers_are_kept_and_relinked() {
    // Hop-by-Hop (8 bytes, PadN) -> Routing (type 0 is deprecated, but only parsed: 8
    // bytes) -> ESP; the Fragment header goes after the Routing header.
    let hbh = [43u8, 0, 1, 4, 0, 0, 0, 0];
    let rt = [50u8, 0, 4, 0, 0, 0, 0, 0];
    let mut ext = hbh.to_vec();
    ext.extend_from_slice(&rt);
    let mut rng = Rng(3);
    let esp = payload(&mut rng, 2000);
    let pkt = v6_datagram(a6("2001:db8::5"), IpProtocol::HOP_BY_HOP, &ext, &esp);
    let unfrag = 40 + ext.len();
    let nh_at = 48; // the Routing header's next header
    let frags: Vec<_> = [(0usize, 1400usize), (1400, 2000)]
        .iter()
        .map(|&(s, e)| v6_fragment(&pkt, unfrag, nh_at, 9, s, e, e != 2000))
        .collect();
    let loc = ipv6frag::locate(&ipv6::Packet::new_checked(&frags[0][..]).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!((loc.header_at, loc.next_header_at), (unfrag, nh_at));
    let mut r = reasm();
    let (out, kinds) = push_all(&mut r, &frags, 0);
    assert_eq!(kinds, ["held", "complete"]);
    assert_eq!(out.unwrap(), pkt);
}

#[test]
fn atomic_fragment_is_returned_at_once_apart_from_a_datagram_with_its_ident() {
    let mut rng = Rng(4);
    let pkt = v6_datagram(
        a6("2001:db8::5"),
        IpProtocol::Udp,
        &[],
        &payload(&mut rng, 100),
    );
    let mut r = reasm();
    // a datagram in progress with ident 5
    let big = v6_datagram(
        a6("2001:db8::5"),
        IpProtocol::Udp,
        &[],
        &payload(&mut rng, 64),
    );
    let first = v6_fragment(&big, 40, 6, 5, 0, 32, true);
    assert_eq!(r.push(&first, 0), Outcome::Held);
    let atomic = v6_fragment(&pkt, 40, 6, 5, 0, 100, false);
    match r.push(&atomic, 0) {
        Outcome::Complete(p) => assert_eq!(p, &pkt[..]),
        o => panic!("{o:?}"),
    }
    check(&r);
    // the datagram in progress is untouched
    let second = v6_fragment(&big, 40, 6, 5, 32, 64, false);
    match r.push(&second, 0) {
        Outcome::Complete(p) => assert_eq!(p, &big[..]),
        o => panic!("{o:?}"),
    }
    check(&r);
}

#[test]
fn not_fragments_and_garbage() {
    let mut r = reasm();
    let d = v4_datagram(a4("10.0.0.1"), IpProtocol::Udp, 1, &[0; 20]);
    assert_eq!(r.push(&d, 0), Outcome::NotFragment);
    let p6 = v6_datagram(a6("2001:db8::1"), IpProtocol::Esp, &[], &[0; 20]);
    assert_eq!(r.push(&p6, 0), Outcome::NotFragment);
    assert_eq!(r.counters().fragments, 0, "not fragments are not counted");
    let mut bad = v4_fragment(&d, 0, 8, true);
    bad[10] ^= 1; // checksum
    assert_eq!(r.push(&bad, 0), Outcome::Dropped(ReasmDrop::Malformed));
    assert_eq!(r.push(&[], 0), Outcome::Dropped(ReasmDrop::Malformed));
    assert_eq!(
        r.push(&[0x50; 40], 0),
        Outcome::Dropped(ReasmDrop::Malformed)
    );
    assert_eq!(r.counters().fragment_drop(ReasmDrop::Malformed), 3);
    check(&r);
}

#[test]
fn duplicates_are_dropped_alone_and_different_bytes_are_an_overlap() {
    let mut rng = Rng(5);
    let dgram = v4_datagram(a4("10.0.0.1"), IpProtocol::Esp, 9, &payload(&mut rng, 64));
    let f = v4_fragments(&dgram, &[(0, 24), (24, 48), (48, 64)]);
    let mut r = reasm();
    let (out, kinds) = push_all(
        &mut r,
        &[
            f[0].clone(),
            f[0].clone(),
            f[2].clone(),
            f[2].clone(),
            f[1].clone(),
        ],
        0,
    );
    assert_eq!(
        kinds,
        [
            "held",
            "reasm_duplicate",
            "held",
            "reasm_duplicate",
            "complete"
        ]
    );
    assert_eq!(out.unwrap(), dgram);
    assert_eq!(r.counters().fragment_drop(ReasmDrop::Duplicate), 2);
    assert_eq!(r.counters().datagram_drop(ReasmDrop::Duplicate), 0);

    // a fragment inside a held one with the same bytes is a duplicate too
    let inner = v4_fragment(&dgram, 8, 16, true);
    let (_, kinds) = push_all(&mut r, &[f[0].clone(), inner], 0);
    assert_eq!(kinds, ["held", "reasm_duplicate"]);

    // the same range with other bytes: overlap, the datagram goes
    let mut r = reasm();
    let mut forged = f[1].clone();
    forged[25] ^= 0xff;
    ipv4::Packet::new_unchecked(&mut forged[..]).fill_checksum();
    let (out, kinds) = push_all(
        &mut r,
        &[f[1].clone(), forged, f[0].clone(), f[2].clone()],
        0,
    );
    assert_eq!(
        kinds,
        [
            "held",
            "reasm_overlap",
            "reasm_discarded",
            "reasm_discarded"
        ]
    );
    assert!(out.is_none());
    assert_eq!(r.counters().fragment_drop(ReasmDrop::Overlap), 2);
    assert_eq!(r.counters().datagram_drop(ReasmDrop::Overlap), 1);
}

#[test]
fn v4_overlap_discards_the_datagram_and_its_later_fragments_until_a_timeout() {
    let mut rng = Rng(6);
    let dgram = v4_datagram(a4("10.0.0.1"), IpProtocol::Udp, 3, &payload(&mut rng, 96));
    let mut r = reasm();
    let t = r.config().timeout_ns;
    // 0..48 held; 40..96 overlaps its tail (the classic "teardrop" shape)
    let (_, kinds) = push_all(
        &mut r,
        &[
            v4_fragment(&dgram, 0, 48, true),
            v4_fragment(&dgram, 40, 96, false),
        ],
        0,
    );
    assert_eq!(kinds, ["held", "reasm_overlap"]);
    assert_eq!(r.datagrams_in_flight(), 0);
    assert_eq!(
        r.memory_bytes(),
        r.spare.iter().map(|b| b.capacity()).sum::<usize>()
    );
    // the right fragments now: silently discarded, within one timeout
    let good = v4_fragments(&dgram, &[(0, 48), (48, 96)]);
    let (out, kinds) = push_all(&mut r, &good, t - 1);
    assert!(out.is_none());
    assert_eq!(kinds, ["reasm_discarded", "reasm_discarded"]);
    // after the timeout the identification is free again
    assert_eq!(r.next_deadline(), Some(t));
    assert_eq!(r.expire(t, 16), 1);
    assert_eq!(r.next_deadline(), None);
    let (out, _) = push_all(&mut r, &good, t);
    assert_eq!(out.unwrap(), dgram);
}

#[test]
fn rfc5722_overlapping_ipv6_fragments_are_silently_discarded() {
    // RFC 5722 section 3's shape: the second fragment starts inside the first and rewrites
    // the upper-layer header's bytes; a third completes the range. All three go, and so does
    // a retransmission of the first.
    let mut rng = Rng(7);
    let mut udp = payload(&mut rng, 64);
    udp[2..4].copy_from_slice(&500u16.to_be_bytes());
    let pkt = v6_datagram(a6("2001:db8::66"), IpProtocol::Udp, &[], &udp);
    let f1 = v6_fragment(&pkt, 40, 6, 0x5722, 0, 24, true);
    let mut evil = pkt.clone();
    evil[40 + 16..40 + 24].copy_from_slice(&[0xee; 8]);
    // bytes 16..40 over f1's 0..24, with other bytes where they overlap
    let f2 = v6_fragment(&evil, 40, 6, 0x5722, 16, 40, true);
    let f3 = v6_fragment(&pkt, 40, 6, 0x5722, 40, 64, false);
    let mut r = reasm();
    let (out, kinds) = push_all(&mut r, &[f1.clone(), f2, f3, f1], 0);
    assert!(out.is_none());
    assert_eq!(
        kinds,
        [
            "held",
            "reasm_overlap",
            "reasm_discarded",
            "reasm_discarded"
        ]
    );
    let c = r.counters();
    assert_eq!(c.fragment_drop(ReasmDrop::Overlap), 2);
    assert_eq!(c.fragment_drop(ReasmDrop::Discarded), 2);
    assert_eq!(c.datagram_drop(ReasmDrop::Overlap), 1);
    assert_eq!(c.reassembled, 0);
}

#[test]
fn lengths_ends_and_fragment_counts() {
    let mut rng = Rng(8);
    let dgram = v4_datagram(a4("10.0.0.1"), IpProtocol::Esp, 4, &payload(&mut rng, 200));
    let mut r = reasm();
    // More Fragments with 12 bytes; an empty fragment
    let (_, kinds) = push_all(
        &mut r,
        &[
            v4_fragment(&dgram, 0, 12, true),
            v4_fragment(&dgram, 16, 16, false),
        ],
        0,
    );
    assert_eq!(kinds, ["reasm_bad_length", "reasm_bad_length"]);
    // two different ends
    let dgram = v4_datagram(a4("10.0.0.1"), IpProtocol::Esp, 5, &payload(&mut rng, 200));
    let (_, kinds) = push_all(
        &mut r,
        &[
            v4_fragment(&dgram, 64, 200, false),
            v4_fragment(&dgram, 64, 120, false),
        ],
        0,
    );
    assert_eq!(kinds, ["held", "reasm_inconsistent_end"]);
    // data past the end
    let dgram = v4_datagram(a4("10.0.0.1"), IpProtocol::Esp, 6, &payload(&mut rng, 200));
    let (_, kinds) = push_all(
        &mut r,
        &[
            v4_fragment(&dgram, 64, 120, false),
            v4_fragment(&dgram, 120, 160, true),
        ],
        0,
    );
    assert_eq!(kinds, ["held", "reasm_inconsistent_end"]);
    // a last fragment that ends before held data
    let dgram = v4_datagram(a4("10.0.0.1"), IpProtocol::Esp, 7, &payload(&mut rng, 200));
    let (_, kinds) = push_all(
        &mut r,
        &[
            v4_fragment(&dgram, 64, 128, true),
            v4_fragment(&dgram, 8, 64, false),
        ],
        0,
    );
    assert_eq!(kinds, ["held", "reasm_inconsistent_end"]);
    // too many fragments
    let mut r = Reassembler::new(ReasmConfig {
        max_fragments: 4,
        ..ReasmConfig::default()
    })
    .unwrap();
    let dgram = v4_datagram(a4("10.0.0.1"), IpProtocol::Esp, 8, &payload(&mut rng, 40));
    let frags = v4_fragments(&dgram, &even_pieces(40, 8));
    let (out, kinds) = push_all(&mut r, &frags, 0);
    assert!(out.is_none());
    assert_eq!(
        kinds,
        ["held", "held", "held", "held", "reasm_too_many_fragments"]
    );
    assert_eq!(r.counters().fragment_drop(ReasmDrop::TooManyFragments), 5);
}

#[test]
fn too_large_datagrams() {
    let mut r = reasm();
    // IPv4: offset 65528 with 16 bytes: 20 + 65544 > 65535
    let dgram = v4_datagram(a4("10.0.0.1"), IpProtocol::Esp, 1, &[0u8; 16]);
    let mut f = v4_fragment(&dgram, 0, 16, false);
    let mut p = ipv4::Packet::new_unchecked(&mut f[..]);
    p.set_frag_offset(65528);
    p.fill_checksum();
    assert_eq!(r.push(&f, 0), Outcome::Dropped(ReasmDrop::TooLarge));
    // exactly 65535 fits: offset 65512 + 3 bytes + 20 = 65535
    let dgram = v4_datagram(a4("10.0.0.1"), IpProtocol::Esp, 2, &[0u8; 3]);
    let mut f = v4_fragment(&dgram, 0, 3, false);
    let mut p = ipv4::Packet::new_unchecked(&mut f[..]);
    p.set_frag_offset(65512);
    p.fill_checksum();
    assert_eq!(r.push(&f, 0), Outcome::Held);
    // IPv6: payload length past 65535
    let pkt = v6_datagram(a6("2001:db8::1"), IpProtocol::Udp, &[], &[0u8; 16]);
    let mut f = v6_fragment(&pkt, 40, 6, 1, 0, 16, false);
    ipv6frag::Header::new_unchecked(&mut f[40..48]).set_frag_offset(65528);
    assert_eq!(r.push(&f, 0), Outcome::Dropped(ReasmDrop::TooLarge));
    // a configured maximum
    let mut r = Reassembler::new(ReasmConfig {
        max_v4_len: 1500,
        ..ReasmConfig::default()
    })
    .unwrap();
    let mut rng = Rng(9);
    let dgram = v4_datagram(a4("10.0.0.1"), IpProtocol::Esp, 3, &payload(&mut rng, 1600));
    let (out, kinds) = push_all(&mut r, &v4_fragments(&dgram, &[(0, 800), (800, 1600)]), 0);
    assert!(out.is_none());
    assert_eq!(kinds, ["held", "reasm_too_large"]);
    assert_eq!(r.counters().datagram_drop(ReasmDrop::TooLarge), 1);
    check(&r);
}

#[test]
fn tiny_first_fragments() {
    let mut rng = Rng(10);
    let mut r = reasm();
    // IPv4 TCP: 16 bytes is less than a TCP header
    let dgram = v4_datagram(a4("10.0.0.1"), IpProtocol::Tcp, 1, &payload(&mut rng, 64));
    assert_eq!(
        r.push(&v4_fragment(&dgram, 0, 16, true), 0),
        Outcome::Dropped(ReasmDrop::TinyFirstFragment)
    );
    assert_eq!(r.push(&v4_fragment(&dgram, 0, 24, true), 0), Outcome::Held);
    // IPv6: a Destination Options header after the Fragment header, then UDP; the first
    // fragment holds the options but not the UDP header
    let opts = [17u8, 0, 1, 4, 0, 0, 0, 0];
    let mut body = opts.to_vec();
    body.extend_from_slice(&payload(&mut rng, 64));
    let pkt = v6_datagram(a6("2001:db8::1"), IpProtocol::IPV6_OPTS, &[], &body);
    assert_eq!(
        r.push(&v6_fragment(&pkt, 40, 6, 3, 0, 8, true), 0),
        Outcome::Dropped(ReasmDrop::TinyFirstFragment)
    );
    assert_eq!(
        r.push(&v6_fragment(&pkt, 40, 6, 3, 0, 16, true), 0),
        Outcome::Held
    );
    // an extension header cut by the fragment's end
    let big_opts = [17u8, 2, 0, 0, 0, 0, 0, 0];
    let mut body = big_opts.to_vec();
    body.extend_from_slice(&payload(&mut rng, 64));
    let pkt = v6_datagram(a6("2001:db8::1"), IpProtocol::IPV6_OPTS, &[], &body);
    assert_eq!(
        r.push(&v6_fragment(&pkt, 40, 6, 4, 0, 16, true), 0),
        Outcome::Dropped(ReasmDrop::TinyFirstFragment)
    );
    // Hop-by-Hop after the Fragment header is malformed
    let pkt = v6_datagram(a6("2001:db8::1"), IpProtocol::HOP_BY_HOP, &[], &body);
    assert_eq!(
        r.push(&v6_fragment(&pkt, 40, 6, 5, 0, 32, true), 0),
        Outcome::Dropped(ReasmDrop::Malformed)
    );
    assert_eq!(r.counters().fragment_drop(ReasmDrop::TinyFirstFragment), 3);
    check(&r);
}

#[test]
fn ecn_of_the_fragments() {
    let mut rng = Rng(11);
    let dgram = v4_datagram(a4("10.0.0.1"), IpProtocol::Esp, 1, &payload(&mut rng, 64));
    let set_ecn = |mut f: Vec<u8>, e: u8| {
        let mut p = ipv4::Packet::new_unchecked(&mut f[..]);
        p.set_ecn(e);
        p.fill_checksum();
        f
    };
    let f = v4_fragments(&dgram, &[(0, 32), (32, 64)]);
    let mut r = reasm();
    // ECT(0) + CE: CE
    let (out, _) = push_all(
        &mut r,
        &[set_ecn(f[0].clone(), 2), set_ecn(f[1].clone(), 3)],
        0,
    );
    let out = out.unwrap();
    let p = ipv4::Packet::new_checked(&out[..]).unwrap();
    assert_eq!(p.ecn(), 3);
    assert!(p.verify_checksum());
    // Not-ECT + ECT(1): dropped
    let (out, kinds) = push_all(
        &mut r,
        &[set_ecn(f[0].clone(), 0), set_ecn(f[1].clone(), 1)],
        0,
    );
    assert!(out.is_none());
    assert_eq!(kinds, ["held", "reasm_ecn_mismatch"]);
    assert_eq!(r.counters().fragment_drop(ReasmDrop::EcnMismatch), 2);
}

#[test]
fn timeouts_on_virtual_time() {
    let mut rng = Rng(12);
    let mut r = reasm();
    let t = r.config().timeout_ns;
    assert_eq!(t, 15 * SEC);
    let d1 = v4_datagram(a4("10.0.0.1"), IpProtocol::Esp, 1, &payload(&mut rng, 64));
    let d2 = v4_datagram(a4("10.0.0.2"), IpProtocol::Esp, 1, &payload(&mut rng, 64));
    assert_eq!(r.push(&v4_fragment(&d1, 0, 32, true), 1000), Outcome::Held);
    assert_eq!(r.push(&v4_fragment(&d2, 0, 32, true), 2000), Outcome::Held);
    assert_eq!(r.next_deadline(), Some(1000 + t));
    assert_eq!(r.expire(1000 + t - 1, 16), 0);
    assert_eq!(r.expire(1000 + t, 16), 1);
    assert_eq!(r.datagrams_in_flight(), 1);
    assert_eq!(r.next_deadline(), Some(2000 + t));
    // d1's second half alone now starts a new datagram
    assert_eq!(
        r.push(&v4_fragment(&d1, 32, 64, false), 1000 + t),
        Outcome::Held
    );
    // a datagram found expired by its own fragment is abandoned and started again
    let late = v4_fragment(&d2, 32, 64, false);
    assert_eq!(r.push(&late, 2000 + t), Outcome::Held);
    assert_eq!(r.counters().datagram_drop(ReasmDrop::Timeout), 2);
    assert_eq!(r.counters().fragment_drop(ReasmDrop::Timeout), 2);
    // bounded work per call
    for i in 0..10u16 {
        let d = v4_datagram(a4("10.0.1.1"), IpProtocol::Esp, 100 + i, &[0; 16]);
        r.push(&v4_fragment(&d, 0, 8, true), 5 * t);
    }
    assert_eq!(r.expire(10 * t, 4), 4);
    assert_eq!(r.expire(10 * t, 100), 8);
    assert_eq!(r.datagrams_in_flight(), 0);
    check(&r);
}

#[test]
fn per_source_limit_pushes_out_that_sources_oldest() {
    let mut r = Reassembler::new(ReasmConfig {
        max_per_source: 4,
        ..ReasmConfig::default()
    })
    .unwrap();
    let noisy = a4("203.0.113.9");
    let quiet = a4("198.51.100.1");
    let qd = v4_datagram(quiet, IpProtocol::Esp, 1, &[7; 64]);
    assert_eq!(r.push(&v4_fragment(&qd, 0, 32, true), 0), Outcome::Held);
    for i in 0..20u16 {
        let d = v4_datagram(noisy, IpProtocol::Esp, i, &[1; 64]);
        assert_eq!(
            r.push(&v4_fragment(&d, 0, 32, true), u64::from(i)),
            Outcome::Held
        );
        check(&r);
    }
    assert_eq!(r.datagrams_in_flight(), 5);
    assert_eq!(r.counters().datagram_drop(ReasmDrop::SourceLimit), 16);
    // the noisy source's newest four are still there, its oldest is gone
    let d = v4_datagram(noisy, IpProtocol::Esp, 19, &[1; 64]);
    assert!(matches!(
        r.push(&v4_fragment(&d, 32, 64, false), 30),
        Outcome::Complete(_)
    ));
    let d = v4_datagram(noisy, IpProtocol::Esp, 0, &[1; 64]);
    assert_eq!(r.push(&v4_fragment(&d, 32, 64, false), 30), Outcome::Held);
    // the quiet source was not touched
    match r.push(&v4_fragment(&qd, 32, 64, false), 30) {
        Outcome::Complete(p) => assert_eq!(p, &qd[..]),
        o => panic!("{o:?}"),
    }
    // IPv6 sources share a quota per /64
    let mut r = Reassembler::new(ReasmConfig {
        max_per_source: 2,
        ..ReasmConfig::default()
    })
    .unwrap();
    for (i, s) in ["2001:db8:1:1::1", "2001:db8:1:1::2", "2001:db8:1:1:ffff::3"]
        .iter()
        .enumerate()
    {
        let p = v6_datagram(a6(s), IpProtocol::Esp, &[], &[0; 32]);
        assert_eq!(
            r.push(&v6_fragment(&p, 40, 6, i as u32, 0, 16, true), 0),
            Outcome::Held
        );
    }
    assert_eq!(r.datagrams_in_flight(), 2);
    assert_eq!(r.counters().datagram_drop(ReasmDrop::SourceLimit), 1);
}

#[test]
fn a_flood_of_incomplete_fragments_from_many_sources_stays_within_memory() {
    let cfg = ReasmConfig {
        max_datagrams: 256,
        max_bytes: 512 << 10,
        ..ReasmConfig::default()
    };
    let mut r = Reassembler::new(cfg.clone()).unwrap();
    let mut rng = Rng(13);
    let mut legit_done = 0;
    let mut now = 0u64;
    for i in 0..20_000u32 {
        now += 10_000; // 100k fragments per second
                       // a flood fragment: random source, random size, never completed
        let src = Ipv4Addr::from(0x0a00_0000 | (i % 5000));
        let len = 8 * (1 + rng.below(180));
        let d = v4_datagram(src, IpProtocol::Esp, i as u16, &payload(&mut rng, len + 8));
        let off = 8 * rng.below(2);
        let out = r.push(&v4_fragment(&d, off, off + len, true), now);
        assert!(matches!(out, Outcome::Held), "{out:?}");
        // every 50th step a legitimate 2-fragment datagram, its fragments back to back
        if i % 50 == 0 {
            let d = v4_datagram(
                a4("192.0.2.77"),
                IpProtocol::Esp,
                i as u16,
                &payload(&mut rng, 1573),
            );
            let f = v4_fragments(&d, &[(0, 1480), (1480, 1573)]);
            assert_eq!(r.push(&f[0], now), Outcome::Held);
            match r.push(&f[1], now) {
                Outcome::Complete(p) => assert_eq!(p, &d[..]),
                o => panic!("{o:?}"),
            }
            legit_done += 1;
        }
        check(&r);
        r.expire(now, 8);
    }
    assert_eq!(legit_done, 400);
    let c = r.counters();
    assert!(c.datagram_drop(ReasmDrop::Evicted) > 10_000, "{c:?}");
    assert!(r.memory_bytes() <= cfg.max_bytes);
    assert!(r.datagrams_in_flight() <= cfg.max_datagrams);
    // then time passes: everything goes, the memory stays (spare buffers), accounted
    let held = r.held_fragments() as u64;
    let before = c.fragment_drop(ReasmDrop::Timeout);
    r.expire(now + cfg.timeout_ns, usize::MAX);
    assert_eq!(r.datagrams_in_flight(), 0);
    assert_eq!(
        r.counters().fragment_drop(ReasmDrop::Timeout),
        before + held
    );
    check(&r);
}

#[test]
fn steady_reassembly_reuses_its_buffers() {
    // After the first datagram, 2-fragment datagrams of the same size allocate nothing: the
    // memory owned stays what the first one needed.
    let mut rng = Rng(14);
    let mut r = reasm();
    let mut first = None;
    for i in 0..1000u16 {
        let d = v4_datagram(
            a4("192.0.2.9"),
            IpProtocol::Esp,
            i,
            &payload(&mut rng, 1573),
        );
        let f = v4_fragments(&d, &[(0, 1480), (1480, 1573)]);
        assert_eq!(r.push(&f[0], 0), Outcome::Held);
        assert!(matches!(r.push(&f[1], 0), Outcome::Complete(_)));
        let m = r.memory_bytes();
        assert_eq!(*first.get_or_insert(m), m, "datagram {i}");
    }
    assert!(first.unwrap() <= 4096);
}

#[test]
fn config_is_checked() {
    assert!(ReasmConfig::default().validate().is_ok());
    let bad = |c: ReasmConfig| c.validate().unwrap_err().field;
    let d = ReasmConfig::default;
    assert_eq!(
        bad(ReasmConfig {
            timeout_ns: 0,
            ..d()
        }),
        "timeout_ns"
    );
    assert_eq!(
        bad(ReasmConfig {
            timeout_ns: 61 * SEC,
            ..d()
        }),
        "timeout_ns"
    );
    assert_eq!(
        bad(ReasmConfig {
            max_datagrams: 0,
            ..d()
        }),
        "max_datagrams"
    );
    assert_eq!(
        bad(ReasmConfig {
            max_per_source: 0,
            ..d()
        }),
        "max_per_source"
    );
    assert_eq!(
        bad(ReasmConfig {
            max_fragments: 1,
            ..d()
        }),
        "max_fragments"
    );
    assert_eq!(
        bad(ReasmConfig {
            max_v4_len: 70_000,
            ..d()
        }),
        "max_v4_len"
    );
    assert_eq!(
        bad(ReasmConfig {
            max_v6_payload_len: 1000,
            ..d()
        }),
        "max_v6_payload_len"
    );
    let e = ReasmConfig {
        max_bytes: 60_000,
        ..d()
    }
    .validate()
    .unwrap_err();
    assert_eq!(e.field, "max_bytes");
    assert!(e.to_string().contains("at least 65791"), "{e}");
    assert!(Reassembler::new(ReasmConfig {
        max_bytes: 1,
        ..d()
    })
    .is_err());
}

/// The reference model: a random datagram cut at random multiples of 8, shuffled, with
/// random duplicates, reassembles to the original, for both families.
#[test]
fn random_fragmentations_reassemble_to_the_original() {
    let mut rng = Rng(15);
    let mut r = reasm();
    let mut now = 0;
    for round in 0..400u32 {
        now += MS;
        let len = 1 + rng.below(9000);
        let mut body = payload(&mut rng, len.max(8));
        // an ESP first fragment needs 8 bytes, UDP's length field is not checked here
        let v6 = round % 2 == 1;
        let mut cuts = vec![0usize, body.len()];
        for _ in 0..rng.below(12) {
            let c = 8 * rng.below(body.len() / 8 + 1);
            if c >= 8 && c < body.len() {
                cuts.push(c);
            }
        }
        cuts.sort_unstable();
        cuts.dedup();
        let pieces: Vec<_> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
        let (orig, mut frags) = if v6 {
            let p = v6_datagram(a6("2001:db8::42"), IpProtocol::Esp, &[], &body);
            let f = v6_fragments(&p, round, &pieces);
            (p, f)
        } else {
            body.truncate(body.len().min(65515));
            let d = v4_datagram(a4("203.0.113.42"), IpProtocol::Esp, round as u16, &body);
            let f = v4_fragments(&d, &pieces);
            (d, f)
        };
        if frags.len() == 1 && !v6 {
            // One piece is not a fragment for IPv4.
            assert_eq!(r.push(&frags[0], now), Outcome::NotFragment);
            continue;
        }
        // duplicates (not of an atomic fragment, which completes each time) and a shuffle
        let dups = if frags.len() == 1 { 0 } else { rng.below(3) };
        for _ in 0..dups {
            let k = rng.below(frags.len());
            frags.push(frags[k].clone());
        }
        for i in (1..frags.len()).rev() {
            frags.swap(i, rng.below(i + 1));
        }
        let mut done = 0;
        for f in &frags {
            match r.push(f, now) {
                // duplicates after completion can make up the datagram again
                Outcome::Complete(p) => {
                    assert_eq!(p, &orig[..], "round {round}");
                    done += 1;
                }
                Outcome::Held | Outcome::Dropped(ReasmDrop::Duplicate) => {}
                // a duplicate after completion starts a new datagram, held
                o => panic!("round {round}: {o:?}"),
            }
            check(&r);
        }
        assert!(done >= 1, "round {round}");
        // leftovers from duplicates after completion time out
        r.expire(now + r.config().timeout_ns, usize::MAX);
        now += r.config().timeout_ns;
    }
    assert!(r.counters().reassembled >= 350);
}

#[test]
fn garbage_and_mutated_fragments_never_panic() {
    let mut rng = Rng(16);
    let mut r = Reassembler::new(ReasmConfig {
        max_datagrams: 64,
        max_per_source: 8,
        max_bytes: 256 << 10,
        max_fragments: 8,
        ..ReasmConfig::default()
    })
    .unwrap();
    let mut now = 0;
    for i in 0..30_000u32 {
        now += rng.below(1_000_000_000) as u64 / 100;
        let mut f = if rng.below(2) == 0 {
            let len = 8 + rng.below(300);
            let d = v4_datagram(
                Ipv4Addr::from(0x0a00_0000 | rng.below(4) as u32),
                IpProtocol::Esp,
                rng.below(4) as u16,
                &payload(&mut rng, len),
            );
            let s = 8 * rng.below(len / 8);
            let e = (s + 8 * (1 + rng.below(8))).min(len);
            v4_fragment(&d, s, e, rng.below(3) != 0)
        } else {
            let len = 8 + rng.below(300);
            let p = v6_datagram(
                a6("2001:db8::1"),
                IpProtocol::from([17u8, 50, 60, 0, 44][rng.below(5)]),
                &[],
                &payload(&mut rng, len),
            );
            let s = 8 * rng.below(len / 8);
            let e = (s + 8 * (1 + rng.below(8))).min(len);
            v6_fragment(&p, 40, 6, rng.below(4) as u32, s, e, rng.below(3) != 0)
        };
        for _ in 0..rng.below(4) {
            let k = rng.below(f.len());
            f[k] = rng.next() as u8;
        }
        if rng.below(10) == 0 {
            f.truncate(rng.below(f.len() + 1));
        }
        if rng.below(4) == 0 {
            // keep the IPv4 checksum right so the mutation reaches the reassembly logic
            if f.first().map(|b| b >> 4) == Some(4) && f.len() >= 20 {
                let mut p = ipv4::Packet::new_unchecked(&mut f[..]);
                p.fill_checksum();
            }
        }
        let _ = r.push(&f, now);
        check(&r);
        if i % 100 == 0 {
            r.expire(now, 16);
        }
    }
}
