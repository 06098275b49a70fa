//! Outer fragments (reassembled, or named when they are not) and the encapsulation an SA
//! accepts its ESP in.

use super::*;
use crate::reasm::ReasmConfig;
use crate::stats::L3Stat;

/// A frame's IPv4 packet cut in two fragments at `at` bytes of payload (a multiple of 8).
pub(super) fn fragment_v4(f: &MemFrame, at: usize, ident: u16) -> (MemFrame, MemFrame) {
    let d = f.data();
    let ip = ipv4::Packet::new_checked(&d[ethernet::HEADER_LEN..]).unwrap();
    let hl = usize::from(ip.header_len());
    let payload = ip.payload().to_vec();
    let head = &d[..ethernet::HEADER_LEN + hl];
    let piece = |data: &[u8], off: usize, more: bool| {
        let mut b = head.to_vec();
        b.extend_from_slice(data);
        let mut p = ipv4::Packet::new_unchecked(&mut b[ethernet::HEADER_LEN..]);
        p.set_total_len((hl + data.len()) as u16);
        p.set_ident(ident);
        p.clear_flags();
        p.set_more_frags(more);
        p.set_frag_offset(off as u16);
        p.fill_checksum();
        MemFrame::from_bytes(&b).unwrap()
    };
    (
        piece(&payload[..at], 0, true),
        piece(&payload[at..], at, false),
    )
}

/// Bare ESP over IPv4 re-sent as ESP in UDP 4500 (RFC 3948), same bytes of ESP.
pub(super) fn in_udp_4500(f: &MemFrame) -> MemFrame {
    let d = f.data();
    let ip = ipv4::Packet::new_checked(&d[ethernet::HEADER_LEN..]).unwrap();
    let hl = usize::from(ip.header_len());
    let esp = ip.payload().to_vec();
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let mut b = d[..ethernet::HEADER_LEN + hl].to_vec();
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&esp);
    let mut p = ipv4::Packet::new_unchecked(&mut b[ethernet::HEADER_LEN..]);
    p.set_total_len((hl + 8 + esp.len()) as u16);
    p.set_next_header(IpProtocol::Udp);
    p.fill_checksum();
    let mut u = udp::Packet::new_unchecked(&mut p.payload_mut()[..8 + esp.len()]);
    u.set_src_port(4500);
    u.set_dst_port(4500);
    u.set_len((8 + esp.len()) as u16);
    u.set_checksum(0);
    let _ = (src, dst);
    MemFrame::from_bytes(&b).unwrap()
}

/// ESP from the rig's peer (bare, over IPv4) for 10.2.0.7 -> 10.1.0.10.
fn sealed(peer: &mut Rig, size: usize) -> MemFrame {
    peer.send_lan("10.2.0.7", "10.1.0.10", size);
    let mut esp = peer.wan.recv().expect("sealed");
    readdress(&mut esp, WAN_MAC, PEER_MAC);
    esp
}

fn deliver(r: &mut Rig, f: MemFrame) -> bool {
    assert!(r.wan.send(f).is_ok());
    r.w.poll(r.clock);
    r.lan.recv().is_some()
}

#[test]
fn esp_is_accepted_only_in_its_sas_own_encapsulation() {
    let mut r = rig(1500);
    let mut peer = mirror_peer();
    // A plain SA: ESP in UDP 4500 is refused, named, before any cryptography.
    let esp = sealed(&mut peer, 100);
    assert!(!deliver(&mut r, in_udp_4500(&esp)), "UDP on a plain SA");
    assert_eq!(r.drops(DropReason::EspWrongEncap), 1);
    assert_eq!(r.drops(DropReason::AuthFailed), 0);
    assert!(deliver(&mut r, esp), "bare ESP on a plain SA");

    // A UDP-encapsulated SA (NAT-T): bare ESP is refused.
    let encap = Some(crate::esp::sa::UdpEncap {
        local_port: 4500,
        remote_port: 4500,
    });
    for (dir, id, spi) in [
        (Direction::Inbound, 2, 0xb001),
        (Direction::Outbound, 1, 0xa001),
    ] {
        let mut p = sa(
            id,
            spi,
            "192.0.2.1",
            "192.0.2.2",
            "10.1.0.0/24",
            "10.2.0.0/24",
        );
        p.encap = encap;
        r.update(Update::AddSa { dir, params: p });
    }
    let esp = sealed(&mut peer, 100);
    let copy = MemFrame::from_bytes(esp.data()).unwrap();
    assert!(!deliver(&mut r, copy), "bare ESP on a UDP SA");
    assert_eq!(r.drops(DropReason::EspWrongEncap), 2);
    assert!(deliver(&mut r, in_udp_4500(&esp)), "UDP on a UDP SA");

    // MOBIKE turns NAT traversal off for the peer: the packets it sent before it switched
    // still come in UDP, the new ones bare; both are its own.
    r.update(Update::RebindOutbound {
        ids: vec![SaId(1)],
        local: "192.0.2.1".parse().unwrap(),
        remote: "192.0.2.2".parse().unwrap(),
        encap: None,
    });
    assert!(deliver(&mut r, in_udp_4500(&sealed(&mut peer, 100))));
    assert!(deliver(&mut r, sealed(&mut peer, 100)));
    assert_eq!(r.drops(DropReason::EspWrongEncap), 2);
}

/// A UDP datagram of `len` payload bytes from the peer to the rig's WAN address.
pub(super) fn udp_to_gateway(dst_port: u16, len: usize) -> MemFrame {
    let mut g = Generator::new(
        vec![FlowSpec {
            src_mac: PEER_MAC,
            dst_mac: WAN_MAC,
            src: "192.0.2.2".parse().unwrap(),
            dst: "192.0.2.1".parse().unwrap(),
            src_port: dst_port,
            dst_port,
        }],
        &[len],
    );
    let mut f = MemFrame::new();
    g.fill(&mut f, 0);
    f
}

#[test]
fn outer_fragments_for_us_are_named_when_reassembly_is_off() {
    let mut r = rig(1500);
    let mut peer = mirror_peer();
    let (a, b) = fragment_v4(&sealed(&mut peer, 600), 296, 7);
    assert!(!deliver(&mut r, a) && !deliver(&mut r, b));
    // IKE's fragments too (issue 14 item 15: they were `malformed_ip`).
    let (c, d) = fragment_v4(&udp_to_gateway(500, 900), 496, 8);
    assert!(!deliver(&mut r, c) && !deliver(&mut r, d));
    let (e, g) = fragment_v4(&udp_to_gateway(4500, 900), 496, 9);
    assert!(!deliver(&mut r, e) && !deliver(&mut r, g));
    assert_eq!(r.drops(DropReason::OuterFragment), 6);
    assert_eq!(r.drops(DropReason::MalformedIp), 0);
}

#[test]
fn outer_fragments_of_esp_and_ike_are_reassembled_and_go_on() {
    let mut r = rig(1500);
    r.w.set_reassembly(Some(ReasmConfig::default())).unwrap();
    let mut peer = mirror_peer();
    let (a, b) = fragment_v4(&sealed(&mut peer, 600), 296, 7);
    // Last fragment first: order does not matter.
    assert!(!deliver(&mut r, b));
    assert!(
        deliver(&mut r, a),
        "the whole ESP packet opened and delivered"
    );
    assert_eq!(r.drops(DropReason::ReasmHeld), 1);
    assert_eq!(r.w.counters.traffic(Traffic::Decrypted), 1);
    assert_eq!(r.w.counters.l3(L3Stat::ReasmReassembled), 1);
    assert_eq!(r.w.counters.l3(L3Stat::ReasmInFlight), 0);
    // IKE on 500 reaches the punt (this rig has no control ring: `ike_no_control`).
    let (c, d) = fragment_v4(&udp_to_gateway(500, 900), 496, 8);
    assert!(!deliver(&mut r, c) && !deliver(&mut r, d));
    assert_eq!(r.drops(DropReason::IkeNoControl), 1);
    // A reassembled datagram that is neither: named.
    let (e, g) = fragment_v4(&udp_to_gateway(53, 900), 496, 9);
    assert!(!deliver(&mut r, e) && !deliver(&mut r, g));
    assert_eq!(r.drops(DropReason::ReasmNotIpsec), 1);
    // Overlap (RFC 5722): the datagram is gone, the later fragments too.
    let (h, i) = fragment_v4(&sealed(&mut peer, 600), 296, 10);
    let (h2, _) = fragment_v4(&sealed(&mut peer, 600), 304, 10);
    assert!(!deliver(&mut r, h) && !deliver(&mut r, h2) && !deliver(&mut r, i));
    assert_eq!(r.drops(DropReason::ReasmOverlap), 1);
    assert_eq!(r.drops(DropReason::ReasmDiscarded), 1);
    assert_eq!(r.drops(DropReason::MalformedIp), 0);
}

#[test]
fn a_flood_of_incomplete_fragments_stays_within_its_limits_and_is_counted() {
    let mut r = rig(1500);
    let cfg = ReasmConfig {
        max_datagrams: 64,
        max_per_source: 16,
        max_bytes: 256 << 10,
        ..ReasmConfig::default()
    };
    r.w.set_reassembly(Some(cfg.clone())).unwrap();
    let mut peer = mirror_peer();
    let esp = sealed(&mut peer, 600);
    let mut max_mem = 0;
    for id in 0..5000u16 {
        let (first, _) = fragment_v4(&esp, 296, id);
        assert!(!deliver(&mut r, first));
        max_mem = max_mem.max(r.w.counters.l3(L3Stat::ReasmMemoryBytes));
        assert!(
            r.w.counters.l3(L3Stat::ReasmInFlight) <= 16,
            "one source's share"
        );
    }
    assert!(max_mem as usize <= cfg.max_bytes, "{max_mem}");
    assert!(max_mem > 0);
    let pushed_out = r.w.counters.l3(L3Stat::ReasmDatagramsSourceLimit);
    assert_eq!(pushed_out, 5000 - 16);
    assert_eq!(r.w.counters.l3(L3Stat::ReasmFragmentsDropped), 5000 - 16);
    // Time runs out for the rest.
    r.clock = cfg.timeout_ns + 1;
    r.w.poll(r.clock);
    assert_eq!(r.w.counters.l3(L3Stat::ReasmInFlight), 0);
    assert_eq!(r.w.counters.l3(L3Stat::ReasmDatagramsTimeout), 16);
}
