#![allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use super::*;
use crate::wire::checksum;

const ICMPV6_NS: u8 = ndp::TYPE_NS;
const ICMPV6_NA: u8 = ndp::TYPE_NA;

const MAC: [u8; 6] = [2, 0, 0, 0, 0xaa, 1];
const HOST: [u8; 6] = [2, 0, 0, 0, 0x0a, 0xfe];

pub(crate) fn arp_request(target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&HOST);
    f.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&HOST);
    f.extend_from_slice(&[10, 1, 0, 10]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f.resize(60, 0);
    f
}

#[test]
fn arp_request_for_us_becomes_a_reply() {
    let mut f = arp_request([10, 1, 0, 1]);
    let (o, len) = respond(&mut f, MAC, Some(Ipv4Addr::new(10, 1, 0, 1)), None);
    assert_eq!((o, len), (Outcome::Replied, 60));
    assert_eq!(&f[0..6], &HOST);
    assert_eq!(&f[6..12], &MAC);
    assert_eq!(&f[20..22], &[0, 2], "oper reply");
    assert_eq!(&f[22..28], &MAC);
    assert_eq!(&f[28..32], &[10, 1, 0, 1]);
    assert_eq!(&f[32..38], &HOST);
    assert_eq!(&f[38..42], &[10, 1, 0, 10]);
}

#[test]
fn arp_for_others_and_garbage_is_ignored() {
    let ours = Some(Ipv4Addr::new(10, 1, 0, 1));
    let mut f = arp_request([10, 1, 0, 99]);
    assert_eq!(respond(&mut f, MAC, ours, None).0, Outcome::Ignored);
    let mut f = arp_request([10, 1, 0, 1]);
    f[21] = 2; // a reply, not a request
    assert_eq!(respond(&mut f, MAC, ours, None).0, Outcome::Ignored);
    for n in 0..42 {
        let mut f = arp_request([10, 1, 0, 1]);
        f.truncate(n);
        let (o, _) = respond(&mut f, MAC, ours, None);
        assert_ne!(o, Outcome::Replied, "truncated to {n}");
    }
}

fn ns_frame(target: Ipv6Addr, src: Ipv6Addr) -> Vec<u8> {
    let dst: Ipv6Addr = "ff02::1:ff00:1".parse().unwrap();
    let mut icmp = vec![ICMPV6_NS, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&target.octets());
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&HOST);
    let c = !checksum::combine(&[
        checksum::pseudo_header_v6(&src, &dst, IpProtocol::Icmpv6, icmp.len() as u32),
        checksum::data(&icmp),
    ]);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = vec![0x33, 0x33, 0xff, 0, 0, 1];
    f.extend_from_slice(&HOST);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&icmp);
    f
}

#[test]
fn neighbor_solicitation_for_us_becomes_an_advertisement() {
    let ours: Ipv6Addr = "fd00:a::1".parse().unwrap();
    let host: Ipv6Addr = "fd00:a::10".parse().unwrap();
    let mut f = ns_frame(ours, host);
    let (o, len) = respond(&mut f, MAC, None, Some(ours));
    assert_eq!(o, Outcome::Replied);
    assert_eq!(len, 14 + 72);
    let f = &f[..len];
    assert_eq!(&f[0..6], &HOST);
    assert_eq!(&f[6..12], &MAC);
    assert_eq!(&f[22..38], &ours.octets());
    assert_eq!(&f[38..54], &host.octets());
    assert_eq!(f[54], ICMPV6_NA);
    assert_eq!(f[58], 0xe0, "router + solicited + override");
    assert_eq!(&f[62..78], &ours.octets());
    assert_eq!(&f[80..86], &MAC);
    // The checksum verifies.
    let sum = checksum::combine(&[
        checksum::pseudo_header_v6(&ours, &host, IpProtocol::Icmpv6, 32),
        checksum::data(&f[54..]),
    ]);
    assert_eq!(sum, 0xffff);
}

#[test]
fn solicitations_that_are_not_ours_or_invalid_are_ignored() {
    let ours: Ipv6Addr = "fd00:a::1".parse().unwrap();
    let host: Ipv6Addr = "fd00:a::10".parse().unwrap();
    let mut f = ns_frame("fd00:a::2".parse().unwrap(), host);
    assert_eq!(respond(&mut f, MAC, None, Some(ours)).0, Outcome::Ignored);
    let mut f = ns_frame(ours, host);
    f[21] = 64; // hop limit must be 255
    assert_eq!(respond(&mut f, MAC, None, Some(ours)).0, Outcome::Ignored);
    let mut f = ns_frame(ours, host);
    f[60] ^= 1; // checksum breaks
    assert_eq!(respond(&mut f, MAC, None, Some(ours)).0, Outcome::Ignored);
    for n in 0..f.len() {
        let mut g = ns_frame(ours, host);
        g.truncate(n);
        assert_ne!(respond(&mut g, MAC, None, Some(ours)).0, Outcome::Replied);
    }
}

#[test]
fn dad_solicitation_is_answered_to_all_nodes_and_the_option_names_the_asker() {
    let ours: Ipv6Addr = "fd00:a::1".parse().unwrap();
    // duplicate address detection: from ::, to the solicited-node address, no option
    let mut f = ns_frame(ours, Ipv6Addr::UNSPECIFIED);
    f.truncate(f.len() - 8);
    f[18..20].copy_from_slice(&24u16.to_be_bytes());
    f[38..54].copy_from_slice(&frames::solicited_node(ours).octets());
    fix_icmp_checksum(&mut f);
    f.resize(frames::ND_FRAME_LEN, 0);
    let (o, len) = respond(&mut f, MAC, None, Some(ours));
    assert_eq!((o, len), (Outcome::Replied, frames::ND_FRAME_LEN));
    assert_eq!(&f[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
    assert_eq!(&f[38..54], &frames::ALL_NODES.octets());
    assert_eq!(f[58], 0xa0, "router + override, not solicited");
    // DAD with a source link-layer option is invalid (RFC 4861 7.1.1)
    let mut f = ns_frame(ours, Ipv6Addr::UNSPECIFIED);
    f[38..54].copy_from_slice(&frames::solicited_node(ours).octets());
    fix_icmp_checksum(&mut f);
    assert_eq!(respond(&mut f, MAC, None, Some(ours)).0, Outcome::Ignored);
    // the advertisement goes to the MAC in the asker's option, not the frame's source
    let host: Ipv6Addr = "fd00:a::10".parse().unwrap();
    let mut f = ns_frame(ours, host);
    f[6..12].copy_from_slice(&[2, 9, 9, 9, 9, 9]);
    assert_eq!(respond(&mut f, MAC, None, Some(ours)).0, Outcome::Replied);
    assert_eq!(&f[0..6], &HOST);
}

fn fix_icmp_checksum(f: &mut [u8]) {
    let ip = ipv6::Packet::new_checked(&f[14..]).unwrap();
    let (src, dst, end) = (ip.src_addr(), ip.dst_addr(), 14 + ip.total_len());
    crate::wire::icmpv6::Packet::new_unchecked(&mut f[54..end]).fill_checksum(&src, &dst);
}

const OUR_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);

#[test]
fn arp_request_and_gratuitous_arp_bytes() {
    let mut out = [0u8; 64];
    let n = frames::arp_request(&mut out, MAC, OUR_IP, Ipv4Addr::new(10, 1, 0, 10), None).unwrap();
    assert_eq!(n, 42);
    let expect: Vec<u8> = [
        &[0xff; 6][..],
        &MAC,
        &[8, 6, 0, 1, 8, 0, 6, 4, 0, 1],
        &MAC,
        &[10, 1, 0, 1],
        &[0; 6],
        &[10, 1, 0, 10],
    ]
    .concat();
    assert_eq!(&out[..n], &expect[..]);
    // a probe goes to the cached MAC
    let n = frames::arp_request(
        &mut out,
        MAC,
        OUR_IP,
        Ipv4Addr::new(10, 1, 0, 10),
        Some(HOST),
    );
    assert_eq!(&out[..6], &HOST);
    assert_eq!(n, Some(42));
    // an announcement: sender and target both the address taken over
    let n = frames::gratuitous_arp(&mut out, MAC, OUR_IP).unwrap();
    assert_eq!(&out[..6], &[0xff; 6]);
    assert_eq!(&out[28..32], &[10, 1, 0, 1]);
    assert_eq!(&out[38..42], &[10, 1, 0, 1]);
    assert_eq!(&out[20..22], &[0, 1], "a request (RFC 5227 3)");
    assert_eq!(n, 42);
    // too small a buffer: nothing written
    let mut small = [0u8; 41];
    assert_eq!(frames::gratuitous_arp(&mut small, MAC, OUR_IP), None);
    assert_eq!(small, [0u8; 41]);
}

#[test]
fn solicitation_and_unsolicited_advertisement_frames() {
    let ours: Ipv6Addr = "fd00:a::1".parse().unwrap();
    let target: Ipv6Addr = "fd00:a::10:abcd".parse().unwrap();
    let mut out = [0u8; 128];
    let n = frames::neighbor_solicitation(&mut out, MAC, ours, target, None).unwrap();
    assert_eq!(n, frames::ND_FRAME_LEN);
    assert_eq!(&out[..6], &[0x33, 0x33, 0xff, 0x10, 0xab, 0xcd]);
    let ip = ipv6::Packet::new_checked(&out[14..n]).unwrap();
    assert_eq!(
        ip.dst_addr(),
        "ff02::1:ff10:abcd".parse::<Ipv6Addr>().unwrap()
    );
    assert_eq!((ip.src_addr(), ip.hop_limit()), (ours, 255));
    let m = ndp::Message::new_checked(ip.payload()).unwrap();
    assert_eq!(
        ndp::Repr::parse(&m, &ip.src_addr(), &ip.dst_addr()),
        Ok(ndp::Repr::NeighborSolicit {
            target_addr: target,
            lladdr: Some(MAC)
        })
    );
    // unicast probe
    frames::neighbor_solicitation(&mut out, MAC, ours, target, Some(HOST)).unwrap();
    let ip = ipv6::Packet::new_checked(&out[14..n]).unwrap();
    assert_eq!((&out[..6], ip.dst_addr()), (&HOST[..], target));
    // unsolicited advertisement
    let n = frames::unsolicited_advertisement(&mut out, MAC, ours, true).unwrap();
    assert_eq!(&out[..6], &[0x33, 0x33, 0, 0, 0, 1]);
    let ip = ipv6::Packet::new_checked(&out[14..n]).unwrap();
    assert_eq!(ip.dst_addr(), frames::ALL_NODES);
    let m = ndp::Message::new_checked(ip.payload()).unwrap();
    assert_eq!(
        ndp::Repr::parse(&m, &ip.src_addr(), &ip.dst_addr()),
        Ok(ndp::Repr::NeighborAdvert {
            flags: NeighborFlags {
                router: true,
                solicited: false,
                override_: true
            },
            target_addr: ours,
            lladdr: Some(MAC)
        })
    );
    assert_eq!(
        frames::unsolicited_advertisement(&mut [0u8; 85], MAC, ours, true),
        None
    );
}

#[test]
fn arp_hints() {
    let host = Ipv4Addr::new(10, 1, 0, 10);
    // a request for our address: a solicitation, gleanable
    let req = arp_request([10, 1, 0, 1]);
    assert_eq!(
        frames::arp_hint(&req, MAC, Some(OUR_IP)),
        Some(Hint {
            addr: host,
            mac: Some(HOST),
            kind: HintKind::Solicitation
        })
    );
    // for someone else: unsolicited (updates, never creates)
    let other = arp_request([10, 1, 0, 99]);
    assert_eq!(
        frames::arp_hint(&other, MAC, Some(OUR_IP)).unwrap().kind,
        HintKind::Unsolicited { override_: true }
    );
    // the reply to our request, unicast to us: a confirmation
    let mut reply = [0u8; 42];
    let mut p = arp::Packet::new_unchecked(&mut reply[14..]);
    arp::Repr {
        operation: arp::Operation::Reply,
        source_hardware_addr: HOST,
        source_protocol_addr: host,
        target_hardware_addr: MAC,
        target_protocol_addr: OUR_IP,
    }
    .emit(&mut p);
    reply[..6].copy_from_slice(&MAC);
    reply[6..12].copy_from_slice(&HOST);
    reply[12..14].copy_from_slice(&[8, 6]);
    assert_eq!(
        frames::arp_hint(&reply, MAC, Some(OUR_IP)).unwrap().kind,
        HintKind::Confirmation { override_: true }
    );
    // the same reply broadcast: unsolicited
    reply[..6].copy_from_slice(&[0xff; 6]);
    assert_eq!(
        frames::arp_hint(&reply, MAC, Some(OUR_IP)).unwrap().kind,
        HintKind::Unsolicited { override_: true }
    );
    // gratuitous ARP from a host that took an address over
    let mut g = [0u8; 42];
    frames::gratuitous_arp(&mut g, OTHER_MAC, host).unwrap();
    assert_eq!(
        frames::arp_hint(&g, MAC, Some(OUR_IP)),
        Some(Hint {
            addr: host,
            mac: Some(OTHER_MAC),
            kind: HintKind::Unsolicited { override_: true }
        })
    );
    // an ARP probe (sender 0.0.0.0), someone claiming our address, a group MAC: nothing
    let mut probe = arp_request([10, 1, 0, 1]);
    probe[28..32].copy_from_slice(&[0; 4]);
    assert_eq!(frames::arp_hint(&probe, MAC, Some(OUR_IP)), None);
    let mut g = [0u8; 42];
    frames::gratuitous_arp(&mut g, OTHER_MAC, OUR_IP).unwrap();
    assert_eq!(frames::arp_hint(&g, MAC, Some(OUR_IP)), None);
    let mut m = arp_request([10, 1, 0, 1]);
    m[22] = 1;
    assert_eq!(frames::arp_hint(&m, MAC, Some(OUR_IP)), None);
    // not ARP, truncated
    assert_eq!(
        frames::arp_hint(&ns_frame(OURS6, HOST6), MAC, Some(OUR_IP)),
        None
    );
    for n in 0..42 {
        assert_eq!(frames::arp_hint(&req[..n], MAC, Some(OUR_IP)), None);
    }
}

const OTHER_MAC: [u8; 6] = [2, 0, 0, 0, 0x0b, 0xee];
const OURS6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xa, 0, 0, 0, 0, 0, 1);
const HOST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xa, 0, 0, 0, 0, 0, 0x10);

/// A neighbour advertisement frame as a host would send it.
fn na_frame(
    target: Ipv6Addr,
    dst: Ipv6Addr,
    flags: NeighborFlags,
    lladdr: Option<[u8; 6]>,
) -> Vec<u8> {
    let repr = ndp::Repr::NeighborAdvert {
        flags,
        target_addr: target,
        lladdr,
    };
    let mut out = vec![0u8; frames::ND_FRAME_LEN];
    let n = frames::nd_frame(&mut out, MAC, HOST, target, dst, &repr).unwrap();
    out.truncate(n);
    out
}

#[test]
fn nd_hints() {
    let solicited = NeighborFlags {
        router: false,
        solicited: true,
        override_: true,
    };
    let na = na_frame(HOST6, OURS6, solicited, Some(HOST));
    assert_eq!(
        frames::nd_hint(&na, &[OURS6]),
        Some(Hint {
            addr: HOST6,
            mac: Some(HOST),
            kind: HintKind::Confirmation { override_: true }
        })
    );
    // without an option: no MAC, still a confirmation
    let bare = na_frame(HOST6, OURS6, solicited, None);
    assert_eq!(frames::nd_hint(&bare, &[OURS6]).unwrap().mac, None);
    // solicited to a multicast address is invalid (RFC 4861 7.1.2)
    let bad = na_frame(HOST6, frames::ALL_NODES, solicited, Some(HOST));
    assert_eq!(frames::nd_hint(&bad, &[OURS6]), None);
    // unsolicited to all-nodes is fine
    let unsol = NeighborFlags {
        solicited: false,
        ..solicited
    };
    let u = na_frame(HOST6, frames::ALL_NODES, unsol, Some(HOST));
    assert_eq!(
        frames::nd_hint(&u, &[OURS6]).unwrap().kind,
        HintKind::Unsolicited { override_: true }
    );
    // someone advertising our own address
    let dad = na_frame(OURS6, frames::ALL_NODES, unsol, Some(HOST));
    assert_eq!(frames::nd_hint(&dad, &[OURS6]), None);
    // hop limit other than 255
    let mut hop = na.clone();
    hop[21] = 254;
    assert_eq!(frames::nd_hint(&hop, &[OURS6]), None);
    // a solicitation for us: gleanable, about its sender
    let ns = ns_frame(OURS6, HOST6);
    assert_eq!(
        frames::nd_hint(&ns, &[OURS6]),
        Some(Hint {
            addr: HOST6,
            mac: Some(HOST),
            kind: HintKind::Solicitation
        })
    );
    // for someone else, or from the unspecified address: nothing
    assert_eq!(frames::nd_hint(&ns_frame(HOST6, OURS6), &[OURS6]), None);
    assert_eq!(
        frames::nd_hint(&ns_frame(OURS6, Ipv6Addr::UNSPECIFIED), &[OURS6]),
        None
    );
    for n in 0..na.len() {
        assert_eq!(frames::nd_hint(&na[..n], &[OURS6]), None);
    }
}

/// Our solicitation, answered by a peer running our own responder, resolves the peer: the
/// builders, the responder, the hint parsers and the cache agree with each other.
#[test]
fn a_solicitation_answered_by_the_responder_resolves_the_peer() {
    let peer4 = Ipv4Addr::new(10, 1, 0, 10);
    let mut c4: NeighborCache<Ipv4Addr, &str> =
        NeighborCache::new(NeighborConfig::default()).unwrap();
    assert_eq!(c4.resolve(peer4, "first", 0), Resolution::Queued);
    let Some(Action::Solicit { target, unicast }) = c4.poll_action() else {
        panic!("a solicitation");
    };
    let mut f = vec![0u8; 60];
    let n = frames::arp_request(&mut f, MAC, OUR_IP, target, unicast).unwrap();
    f.truncate(n);
    // the peer answers in place
    assert_eq!(respond(&mut f, HOST, Some(peer4), None).0, Outcome::Replied);
    let hint = frames::arp_hint(&f, MAC, Some(OUR_IP)).unwrap();
    assert_eq!(c4.learn(hint, 1), Learned::Resolved);
    assert_eq!(
        c4.poll_action(),
        Some(Action::Transmit {
            mac: HOST,
            frame: "first"
        })
    );
    assert_eq!(c4.entry(peer4), Some((NeighborState::Reachable, HOST)));

    let mut c6: NeighborCache<Ipv6Addr, &str> =
        NeighborCache::new(NeighborConfig::default()).unwrap();
    assert_eq!(c6.resolve(HOST6, "first", 0), Resolution::Queued);
    let Some(Action::Solicit { target, unicast }) = c6.poll_action() else {
        panic!("a solicitation");
    };
    let mut f = vec![0u8; frames::ND_FRAME_LEN];
    frames::neighbor_solicitation(&mut f, MAC, OURS6, target, unicast).unwrap();
    let (o, len) = respond(&mut f, HOST, None, Some(HOST6));
    assert_eq!(o, Outcome::Replied);
    let hint = frames::nd_hint(&f[..len], &[OURS6]).unwrap();
    assert_eq!(hint.kind, HintKind::Confirmation { override_: true });
    assert_eq!(c6.learn(hint, 1), Learned::Resolved);
    assert_eq!(c6.entry(HOST6), Some((NeighborState::Reachable, HOST)));
    // and the peer's solicitation to us, answered by us, is gleaned by the peer's cache
    let mut peer_cache: NeighborCache<Ipv6Addr, &str> =
        NeighborCache::new(NeighborConfig::default()).unwrap();
    let ns = ns_frame(OURS6, HOST6);
    let hint = frames::nd_hint(&ns, &[OURS6]).unwrap();
    assert_eq!(peer_cache.learn(hint, 0), Learned::Created);
}

#[test]
fn hints_and_the_responder_never_panic_on_garbage() {
    let mut rng = crate::wire::checksum::tests::Rng(826);
    let seeds = [
        arp_request([10, 1, 0, 1]),
        ns_frame(OURS6, HOST6),
        na_frame(HOST6, OURS6, NeighborFlags::default(), Some(HOST)),
    ];
    for _ in 0..20_000 {
        let mut f = seeds[rng.below(seeds.len())].clone();
        for _ in 0..rng.below(4) {
            let k = rng.below(f.len());
            f[k] = rng.next() as u8;
        }
        f.truncate(rng.below(f.len() + 8).min(f.len()));
        let _ = frames::arp_hint(&f, MAC, Some(OUR_IP));
        let _ = frames::nd_hint(&f, &[OURS6]);
        f.resize(f.len().max(frames::ND_FRAME_LEN), 0);
        let _ = respond(&mut f, MAC, Some(OUR_IP), Some(OURS6));
    }
}
