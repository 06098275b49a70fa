//! ICMP errors the worker originates (`worker::icmp_error`): time exceeded and host
//! unreachable, to the LAN directly or sealed back into the tunnel the invoking packet came
//! through; the per-worker budget.

use super::neighbors::{arp_asks, arp_reply, resolve_links};
use super::*;

/// The rig's peer ([`mirror_peer`]) that also opens what the rig seals (SPI 0xa001).
fn opening_peer() -> Rig {
    let mut peer = mirror_peer();
    peer.update(Update::AddSa {
        dir: Direction::Inbound,
        params: sa(
            3,
            0xa001,
            "192.0.2.2",
            "192.0.2.1",
            "10.2.0.0/24",
            "10.1.0.0/24",
        ),
    });
    peer
}

/// A UDP frame from `src` to `dst` with hop limit `ttl`, addressed to `dst_mac`.
fn udp_frame(src: &str, dst: &str, ttl: u8, dst_mac: [u8; 6]) -> MemFrame {
    let mut g = Generator::new(
        vec![FlowSpec {
            src_mac: HOST_MAC,
            dst_mac,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            src_port: 33434,
            dst_port: 33435,
        }],
        &[100],
    );
    let mut f = MemFrame::new();
    g.fill(&mut f, 0);
    let mut ip = ipv4::Packet::new_unchecked(&mut f.data_mut()[14..]);
    ip.set_hop_limit(ttl);
    ip.fill_checksum();
    f
}

/// The ICMP message in an Ethernet + IPv4 frame: (IP source, IP destination, type, code, the
/// quoted packet's destination).
fn icmp_of(f: &MemFrame) -> (Ipv4Addr, Ipv4Addr, u8, u8, Ipv4Addr) {
    let ip = ipv4::Packet::new_checked(&f.data()[14..]).unwrap();
    assert_eq!(ip.next_header(), IpProtocol::Icmp);
    let p = icmpv4::Packet::new_checked(ip.payload()).unwrap();
    assert!(p.verify_checksum());
    let quoted = ipv4::Packet::new_unchecked(p.data());
    (
        ip.src_addr(),
        ip.dst_addr(),
        u8::from(p.msg_type()),
        p.msg_code(),
        quoted.dst_addr(),
    )
}

/// The peer's LAN host sends `f`; the ESP it seals reaches the rig's WAN.
fn through_peer(peer: &mut Rig, r: &mut Rig, f: MemFrame) {
    assert!(peer.lan.send(f).is_ok());
    peer.w.poll(1);
    let mut esp = peer.wan.recv().expect("sealed by the peer");
    readdress(&mut esp, WAN_MAC, PEER_MAC);
    assert!(r.wan.send(esp).is_ok());
}

/// What the rig sealed, opened by the peer and delivered to its LAN.
fn back_through_peer(peer: &mut Rig, r: &mut Rig) -> MemFrame {
    let mut esp = std::iter::from_fn(|| r.wan.recv())
        .find(|f| arp_asks(f).is_none())
        .expect("sealed back by the rig");
    assert_eq!(outer_ipv4(&esp).next_header(), IpProtocol::Esp);
    readdress(&mut esp, WAN_MAC, PEER_MAC);
    assert!(peer.wan.send(esp).is_ok());
    peer.w.poll(3);
    peer.lan.recv().expect("opened by the peer")
}

#[test]
fn ttl_one_from_the_lan_gets_time_exceeded_from_our_lan_address() {
    let mut r = rig(1500);
    assert!(r
        .lan
        .send(udp_frame("10.1.0.10", "10.2.0.10", 1, LAN_MAC))
        .is_ok());
    r.w.poll(1);
    assert!(r.wan.recv().is_none());
    assert_eq!(r.drops(DropReason::TtlExceeded), 1);
    let f = r.lan.recv().expect("time exceeded to the sender");
    assert_eq!(&f.data()[..6], &HOST_MAC);
    let want = (
        "10.1.0.1".parse().unwrap(),
        "10.1.0.10".parse().unwrap(),
        11,
        0,
        "10.2.0.10".parse().unwrap(),
    );
    assert_eq!(icmp_of(&f), want);
    assert_eq!(r.w.counters.traffic(Traffic::IcmpSent), 1);
}

#[test]
fn a_decrypted_packet_whose_ttl_runs_out_gets_time_exceeded_back_through_its_tunnel() {
    let mut r = rig(1500);
    let mut peer = opening_peer();
    // TTL 2 from the peer's LAN host: 1 after the peer's hop, so it ends here (traceroute's
    // second probe).
    through_peer(
        &mut peer,
        &mut r,
        udp_frame("10.2.0.7", "10.1.0.10", 2, LAN_MAC),
    );
    r.w.poll(2);
    assert!(r.lan.recv().is_none(), "not delivered");
    assert_eq!(r.drops(DropReason::TtlExceeded), 1);
    let f = back_through_peer(&mut peer, &mut r);
    let want = (
        "10.1.0.1".parse().unwrap(),
        "10.2.0.7".parse().unwrap(),
        11,
        0,
        "10.1.0.10".parse().unwrap(),
    );
    assert_eq!(icmp_of(&f), want);
    // No error about an error: a time-exceeded message that runs out here is dropped quietly.
    let mut err = MemFrame::from_bytes(f.data()).unwrap();
    {
        let mut ip = ipv4::Packet::new_unchecked(&mut err.data_mut()[14..]);
        let (s, d) = (ip.src_addr(), ip.dst_addr());
        ip.set_src_addr(d);
        ip.set_dst_addr(s);
        ip.set_hop_limit(2);
        ip.fill_checksum();
    }
    readdress(&mut err, LAN_MAC, HOST_MAC);
    through_peer(&mut peer, &mut r, err);
    r.w.poll(4);
    assert_eq!(r.drops(DropReason::TtlExceeded), 2);
    assert!(r.wan.recv().is_none(), "no error about an error");
}

#[test]
fn a_lan_host_that_never_answers_gets_host_unreachable_back_through_the_tunnel() {
    let mut r = rig(1500);
    resolve_links(&mut r);
    let mut peer = opening_peer();
    through_peer(
        &mut peer,
        &mut r,
        udp_frame("10.2.0.7", "10.1.0.99", 64, LAN_MAC),
    );
    r.w.poll(2);
    let ask = r.lan.recv().expect("an ARP request for the host");
    assert_eq!(
        arp_asks(&ask).unwrap().0,
        "10.1.0.99".parse::<Ipv4Addr>().unwrap()
    );
    // Nobody answers: after the retries the queued packet is given up, its sender told.
    for t in 1..=5u64 {
        r.w.poll(t * 1_000_000_000 + 2);
    }
    while r.lan.recv().is_some() {}
    // The error waits for the WAN peer's MAC like any sealed packet.
    let ask = r.wan.recv().expect("an ARP request for the peer");
    assert!(arp_asks(&ask).is_some());
    assert!(r
        .wan
        .send(arp_reply([192, 0, 2, 2], PEER_MAC, WAN_MAC, [192, 0, 2, 1]))
        .is_ok());
    r.w.poll(6_000_000_000);
    let f = back_through_peer(&mut peer, &mut r);
    let want = (
        "10.1.0.1".parse().unwrap(),
        "10.2.0.7".parse().unwrap(),
        3,
        1,
        "10.1.0.99".parse().unwrap(),
    );
    assert_eq!(icmp_of(&f), want);
}

#[test]
fn icmp_errors_are_limited_per_worker_and_second() {
    let mut r = rig(1500);
    let n = icmp_error::ICMP_ERRORS_PER_SEC as u64;
    let mut sent = 0;
    for _ in 0..n + 20 {
        assert!(r
            .lan
            .send(udp_frame("10.1.0.10", "10.2.0.10", 1, LAN_MAC))
            .is_ok());
        r.w.poll(5);
        while r.lan.recv().is_some() {
            sent += 1;
        }
    }
    assert_eq!(sent, n);
    assert_eq!(r.w.counters.traffic(Traffic::IcmpRateLimited), 20);
    // The next second has a budget again.
    assert!(r
        .lan
        .send(udp_frame("10.1.0.10", "10.2.0.10", 1, LAN_MAC))
        .is_ok());
    r.w.poll(1_000_000_006);
    assert!(r.lan.recv().is_some());
}

#[test]
fn hop_limit_one_from_the_lan_gets_icmpv6_time_exceeded() {
    let mut r = rig(1500);
    let mut g = Generator::new(
        vec![FlowSpec {
            src_mac: HOST_MAC,
            dst_mac: LAN_MAC,
            src: "fd00:a::10".parse().unwrap(),
            dst: "fd00:b::10".parse().unwrap(),
            src_port: 33434,
            dst_port: 33435,
        }],
        &[100],
    );
    let mut f = MemFrame::new();
    g.fill(&mut f, 0);
    crate::wire::ipv6::Packet::new_unchecked(&mut f.data_mut()[14..]).set_hop_limit(1);
    assert!(r.lan.send(f).is_ok());
    r.w.poll(1);
    assert_eq!(r.drops(DropReason::TtlExceeded), 1);
    let back = r.lan.recv().expect("time exceeded to the sender");
    let ip = crate::wire::ipv6::Packet::new_checked(&back.data()[14..]).unwrap();
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    assert_eq!(src, "fd00:a::1".parse::<core::net::Ipv6Addr>().unwrap());
    assert_eq!(dst, "fd00:a::10".parse::<core::net::Ipv6Addr>().unwrap());
    assert_eq!(ip.next_header(), IpProtocol::Icmpv6);
    let p = crate::wire::icmpv6::Packet::new_checked(ip.payload()).unwrap();
    assert_eq!(
        (p.msg_type(), p.msg_code()),
        (crate::wire::icmpv6::Message::TimeExceeded, 0)
    );
    assert!(p.verify_checksum(&src, &dst));
}

#[test]
fn an_error_through_the_tunnel_is_sealed_with_the_burst_s_other_packets() {
    let mut r = rig(1500);
    let mut peer = opening_peer();
    // In one turn: a LAN packet for the tunnel and a decrypted one whose TTL runs out.
    assert!(r
        .lan
        .send(udp_frame("10.1.0.10", "10.2.0.7", 64, LAN_MAC))
        .is_ok());
    through_peer(
        &mut peer,
        &mut r,
        udp_frame("10.2.0.7", "10.1.0.10", 2, LAN_MAC),
    );
    r.w.poll(2);
    let mut got = Vec::new();
    for _ in 0..2 {
        let f = back_through_peer(&mut peer, &mut r);
        let ip = ipv4::Packet::new_checked(&f.data()[14..]).unwrap();
        got.push((ip.src_addr(), ip.next_header()));
    }
    got.sort();
    let (lan_host, gw) = ("10.1.0.10".parse().unwrap(), "10.1.0.1".parse().unwrap());
    assert_eq!(
        got,
        vec![(gw, IpProtocol::Icmp), (lan_host, IpProtocol::Udp)],
        "both sealed and opened"
    );
    assert_eq!(r.drops(DropReason::CryptoFailed), 0);
}
