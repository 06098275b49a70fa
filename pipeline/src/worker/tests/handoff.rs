//! Two workers joined by the hand-off: frames that reach the worker which does not own their
//! SA are carried out by the one that does; a full lane is back-pressure, not loss.

use super::*;
use crate::handoff::mesh;

/// Worker `id` between its own in-memory ports (no SAs, no policy yet).
fn bare(id: u16, punt: Option<Producer<Datagram>>) -> Rig {
    let (lan, lan_gw) = cable("host", "lan", 256);
    let (wan_gw, wan) = cable("wan", "peer", 256);
    let (agent, control) = agent::link(id, 64, punt);
    let w = Worker::new(
        id,
        lan_gw,
        wan_gw,
        Link {
            mac: LAN_MAC,
            neighbor: HOST_MAC,
            addr4: Some("10.1.0.1".parse().unwrap()),
            addr6: None,
            mtu: 1500,
        },
        Link {
            mac: WAN_MAC,
            neighbor: PEER_MAC,
            addr4: Some("192.0.2.1".parse().unwrap()),
            addr6: None,
            mtu: 1500,
        },
        Sad::with_capacity(8, 3),
        Box::new(Spd::new(Vec::new()).unwrap()),
        control,
    );
    Rig {
        w,
        lan,
        wan,
        agent,
        clock: 0,
    }
}

/// The inbound SPI worker 1 owns (its top bit says 1 of 2 workers).
const SPI_IN_W1: u32 = 0x8000_b001;

/// Workers 0 and 1 of one gateway, lanes of `slots`: worker 1 owns the tunnel's SAs (outbound
/// id 1, inbound SPI_IN_W1), both have the policy; worker 0 has the punt ring.
fn two_workers(slots: usize) -> (Rig, Rig, rtrb::Consumer<Datagram>) {
    let (punt_tx, punt_rx) = rtrb::RingBuffer::new(16);
    let mut ends = mesh(2, slots, 64).into_iter();
    let mut w0 = bare(0, Some(punt_tx));
    let mut w1 = bare(1, None);
    w0.w.set_handoff(ends.next().unwrap());
    w1.w.set_handoff(ends.next().unwrap());
    w1.update(Update::AddSa {
        dir: Direction::Outbound,
        params: sa(
            1,
            0xa001,
            "192.0.2.1",
            "192.0.2.2",
            "10.1.0.0/24",
            "10.2.0.0/24",
        ),
    });
    w1.update(Update::AddSa {
        dir: Direction::Inbound,
        params: sa(
            2,
            SPI_IN_W1,
            "192.0.2.1",
            "192.0.2.2",
            "10.1.0.0/24",
            "10.2.0.0/24",
        ),
    });
    let rules = vec![Rule {
        id: 0,
        selector: sel("10.1.0.0/24", "10.2.0.0/24"),
        action: Action::Protect(SaId(1)),
    }];
    w0.update(Update::ReplaceSpd {
        rules: rules.clone(),
    });
    w1.update(Update::ReplaceSpd { rules });
    (w0, w1, punt_rx)
}

/// The tunnel's other end: a gateway whose outbound SA (id 1) seals 10.2.0.0/24 -> `to`
/// toward worker 1's inbound SPI.
fn peer_of_w1(to: &str) -> Rig {
    let mut peer = rig(1500);
    peer.update(Update::AddSa {
        dir: Direction::Outbound,
        params: sa(1, SPI_IN_W1, "192.0.2.2", "192.0.2.1", "10.2.0.0/24", to),
    });
    peer.update(Update::ReplaceSpd {
        rules: vec![Rule {
            id: 0,
            selector: sel("10.2.0.0/24", to),
            action: Action::Protect(SaId(1)),
        }],
    });
    peer
}

fn lan_frame(src: &str, dst: &str, dst_port: u16) -> MemFrame {
    let mut g = Generator::new(
        vec![FlowSpec {
            src_mac: HOST_MAC,
            dst_mac: LAN_MAC,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            src_port: 1234,
            dst_port,
        }],
        &[100],
    );
    let mut f = MemFrame::new();
    g.fill(&mut f, 0);
    f
}

#[test]
fn frames_reach_the_sa_owner_through_the_lane() {
    let (mut w0, mut w1, mut punt) = two_workers(8);

    // LAN traffic on worker 0 for the SA worker 1 owns: sealed by worker 1, on its WAN.
    assert!(w0
        .lan
        .send(lan_frame("10.1.0.10", "10.2.0.7", 5001))
        .is_ok());
    w0.w.poll(1);
    assert!(
        w0.wan.recv().is_none(),
        "worker 0 does not seal on an SA it does not own"
    );
    assert_eq!(w0.w.counters.traffic(Traffic::HandedOff), 1);
    w1.w.poll(1);
    let esp_out = w1.wan.recv().expect("sealed by the owner");
    let ip = outer_ipv4(&esp_out);
    assert_eq!(ip.next_header(), IpProtocol::Esp);
    assert_eq!(
        esp::Packet::new_checked(ip.payload()).unwrap().spi(),
        0xa001
    );
    assert_eq!(w1.w.counters.traffic(Traffic::HandOffReceived), 1);
    assert_eq!(w1.w.counters.traffic(Traffic::Encrypted), 1);

    // ESP for worker 1's SPI arriving at worker 0: opened by worker 1, on its LAN.
    let mut peer = peer_of_w1("10.1.0.0/24");
    peer.send_lan("10.2.0.7", "10.1.0.10", 100);
    let mut esp_in = peer.wan.recv().expect("the peer sealed");
    readdress(&mut esp_in, WAN_MAC, PEER_MAC);
    assert!(w0.wan.send(esp_in).is_ok());
    w0.w.poll(2);
    assert!(w0.lan.recv().is_none());
    w1.w.poll(2);
    let clear = w1.lan.recv().expect("opened by the owner");
    assert_eq!(
        outer_ipv4(&clear).src_addr(),
        "10.2.0.7".parse::<Ipv4Addr>().unwrap()
    );
    assert_eq!(w1.w.counters.traffic(Traffic::Decrypted), 1);

    // IKE reaching worker 1 (no punt ring) is punted by worker 0.
    let mut ike = lan_frame("192.0.2.2", "192.0.2.1", 500);
    readdress(&mut ike, WAN_MAC, PEER_MAC);
    assert!(w1.wan.send(ike).is_ok());
    w1.w.poll(3);
    w0.w.poll(3);
    let d = punt.pop().expect("punted by worker 0");
    assert_eq!(d.dst_port, 500);
    assert_eq!(w0.drops(DropReason::IkePunted), 1);

    // Nothing was lost on the way, nothing handed back and forth.
    for r in [&w0, &w1] {
        let s = r.w.counters.snapshot();
        assert_eq!(
            s.nonzero_drops().count(),
            0,
            "{:?}",
            s.nonzero_drops().collect::<Vec<_>>()
        );
    }
    assert_eq!(w0.w.counters.traffic(Traffic::HandedOff), 2);
    assert_eq!(w1.w.counters.traffic(Traffic::HandedOff), 1);
}

#[test]
fn a_frame_handed_over_is_never_handed_on() {
    let (mut w0, mut w1, _punt) = two_workers(8);
    // Worker 1 lost the SA (deleted) while worker 0 still sends it its flows: dropped there
    // as no_sa, not bounced back.
    w1.update(Update::DeleteOutbound { id: SaId(1) });
    // The owner table forgot it: worker 0 drops it itself now.
    assert!(w0
        .lan
        .send(lan_frame("10.1.0.10", "10.2.0.7", 5001))
        .is_ok());
    w0.w.poll(1);
    assert_eq!(w0.drops(DropReason::NoSa), 1);
    // A stale parcel (sent before the delete) reaching worker 1.
    w0.w.handoff.as_mut().unwrap().owners().set(SaId(1), 1);
    assert!(w0
        .lan
        .send(lan_frame("10.1.0.10", "10.2.0.7", 5001))
        .is_ok());
    w0.w.poll(2);
    w1.w.poll(2);
    assert_eq!(w1.drops(DropReason::NoSa), 1);
    assert_eq!(w1.w.counters.traffic(Traffic::HandedOff), 0);
}

#[test]
fn a_full_lane_is_back_pressure_not_loss() {
    let (mut w0, mut w1, _punt) = two_workers(4);
    let n = 40;
    for _ in 0..n {
        assert!(w0
            .lan
            .send(lan_frame("10.1.0.10", "10.2.0.7", 5001))
            .is_ok());
    }
    // Worker 1 is busy elsewhere: worker 0 fills the lane, keeps the rest, stops reading.
    for t in 0..5 {
        w0.w.poll(t);
    }
    let s = w0.w.counters.snapshot();
    assert_eq!(s.traffic(Traffic::HandedOff), 4, "the lane holds 4");
    assert_eq!(
        s.traffic(Traffic::RxPackets),
        BURST as u64,
        "rx paused after one burst"
    );
    assert!(
        s.traffic(Traffic::HandOffWaits) >= 5,
        "each turn's wait is counted"
    );
    assert_eq!(s.nonzero_drops().count(), 0);
    // Worker 1 catches up: every frame comes out sealed, in order of the sequence numbers.
    let mut sealed = Vec::new();
    for t in 5..200 {
        w1.w.poll(t);
        w0.w.poll(t);
        while let Some(f) = w1.wan.recv() {
            let ip = outer_ipv4(&f);
            sealed.push(esp::Packet::new_checked(ip.payload()).unwrap().seq_number());
        }
        if sealed.len() == n {
            break;
        }
    }
    assert_eq!(sealed, (1..=n as u32).collect::<Vec<_>>());
    assert_eq!(w0.w.counters.traffic(Traffic::HandedOff), n as u64);
    assert_eq!(w1.w.counters.traffic(Traffic::HandOffReceived), n as u64);
    for r in [&w0, &w1] {
        assert_eq!(r.w.counters.snapshot().nonzero_drops().count(), 0);
    }
}

/// A client with two workers and per-core SAs for its virtual IP (RFC 9611): each worker
/// masquerades from its own share of the ports and seals on its own SA; the gateway answers
/// on the SA of whichever of its workers sends, so an answer may be opened by the client
/// worker that did not masquerade it: that worker hands the decrypted packet to the one
/// its port names, which rewrites it back to the LAN host.
#[test]
fn an_answer_opened_by_the_other_worker_goes_to_the_masquerade_that_holds_its_session() {
    const SPI_IN_W0: u32 = 0x0000_b000;
    let mut ends = mesh(2, 8, 64).into_iter();
    let mut w = [bare(0, None), bare(1, None)];
    for (i, r) in w.iter_mut().enumerate() {
        r.w.set_handoff(ends.next().unwrap());
        let (out_id, out_spi, in_spi) = [(1u32, 0xa001, SPI_IN_W0), (2, 0xa002, SPI_IN_W1)][i];
        for (dir, id, spi) in [
            (Direction::Outbound, out_id, out_spi),
            (Direction::Inbound, out_id + 10, in_spi),
        ] {
            r.update(Update::AddSa {
                dir,
                params: sa(
                    id,
                    spi,
                    "192.0.2.1",
                    "192.0.2.2",
                    "10.99.0.5/32",
                    "10.2.0.0/24",
                ),
            });
        }
        // Each worker's SPD protects with the outbound SA it owns.
        r.update(Update::ReplaceSpd {
            rules: vec![Rule {
                id: 0,
                selector: sel("10.99.0.5/32", "10.2.0.0/24"),
                action: Action::Protect(SaId(out_id)),
            }],
        });
        r.update(Update::SetVirtualIp {
            config: Some(MasqueradeConfig {
                external_addr: "10.99.0.5".parse().unwrap(),
                ..MasqueradeConfig::default()
            }),
        });
    }
    // The gateway: opens both client SAs, answers on the one client worker 1 owns.
    let mut g = peer_of_w1("10.99.0.5/32");
    for (id, spi) in [(3u32, 0xa001u32), (4, 0xa002)] {
        g.update(Update::AddSa {
            dir: Direction::Inbound,
            params: sa(
                id,
                spi,
                "192.0.2.2",
                "192.0.2.1",
                "10.2.0.0/24",
                "10.99.0.5/32",
            ),
        });
    }
    let mut clock = 0;
    for (i, host_port) in [(0usize, 1234u16), (1, 0x12d2)] {
        clock += 1;
        // The LAN host's flow reaches worker i (RSS): masqueraded and sealed there.
        let mut f = lan_frame("10.1.0.10", "10.2.0.7", 5001);
        if i == 1 {
            // Another flow on worker 1: source port 0x12d2 (the checksum stays unchecked:
            // zero would be refused, a wrong one is only counted).
            f.data_mut()[14 + 20] = 0x12;
        }
        assert!(w[i].lan.send(f).is_ok());
        w[i].w.poll(clock);
        let mut esp = w[i].wan.recv().expect("sealed by the worker that got it");
        assert_eq!(
            esp::Packet::new_checked(outer_ipv4(&esp).payload())
                .unwrap()
                .spi(),
            [0xa001, 0xa002][i]
        );
        readdress(&mut esp, WAN_MAC, PEER_MAC);
        assert!(g.wan.send(esp).is_ok());
        g.w.poll(clock);
        let mut inner = g.lan.recv().expect("opened at the gateway");
        let ext_port = {
            let ip = ipv4::Packet::new_checked(&inner.data()[14..]).unwrap();
            assert_eq!(ip.src_addr(), "10.99.0.5".parse::<Ipv4Addr>().unwrap());
            udp::Packet::new_checked(ip.payload()).unwrap().src_port()
        };
        assert_eq!(
            crate::nat::port_owner(ext_port, 2),
            i as u16,
            "worker {i}'s share"
        );
        // The answer, sealed on the SA client worker 1 owns: opened by worker 1.
        answer(&mut inner, LAN_MAC, HOST_MAC);
        assert!(g.lan.send(inner).is_ok());
        g.w.poll(clock);
        let mut back = g.wan.recv().expect("sealed by the gateway");
        readdress(&mut back, WAN_MAC, PEER_MAC);
        assert!(w[1].wan.send(back).is_ok());
        w[1].w.poll(clock);
        w[0].w.poll(clock);
        w[1].w.poll(clock);
        // Delivered by the worker holding the session, to the host's own port.
        let host = w[i]
            .lan
            .recv()
            .expect("to the LAN host from the session's worker");
        assert!(w[1 - i].lan.recv().is_none());
        let ip = ipv4::Packet::new_checked(&host.data()[14..]).unwrap();
        assert_eq!(ip.dst_addr(), "10.1.0.10".parse::<Ipv4Addr>().unwrap());
        assert!(ip.verify_checksum());
        let u = udp::Packet::new_checked(ip.payload()).unwrap();
        assert_eq!((u.src_port(), u.dst_port()), (5001, host_port));
        assert!(u.verify_checksum(&IpAddr::V4(ip.src_addr()), &IpAddr::V4(ip.dst_addr())));
    }
    // Worker 1 opened both answers and handed one (worker 0's) over.
    assert_eq!(w[1].w.counters.traffic(Traffic::Decrypted), 2);
    assert_eq!(w[1].w.counters.traffic(Traffic::VipAnswersHandedOff), 1);
    assert_eq!(w[0].w.counters.traffic(Traffic::HandOffReceived), 1);
    assert_eq!(w[0].w.counters.traffic(Traffic::Masqueraded), 2);
    for r in &w {
        let s = r.w.counters.snapshot();
        assert_eq!(
            s.nonzero_drops().count(),
            0,
            "{:?}",
            s.nonzero_drops().collect::<Vec<_>>()
        );
    }
}

/// A NIC's hash or flow rule may send the first fragment of a datagram (the only one with an
/// SPI or ports) to one worker and the rest to another: the fragments meet on one worker,
/// and the whole datagram goes on to its SA's owner (ESP, bare or in UDP) or to worker 0
/// (IKE). Before, each worker held its half until it timed out.
#[test]
fn fragments_split_between_workers_meet_and_their_datagram_reaches_its_owner() {
    use super::l3::{fragment_v4, in_udp_4500, udp_to_gateway};
    use crate::reasm::ReasmConfig;
    use crate::stats::L3Stat;

    let (mut w0, mut w1, mut punt) = two_workers(8);
    for r in [&mut w0, &mut w1] {
        r.w.set_reassembly(Some(ReasmConfig::default())).unwrap();
    }
    let mut peer = peer_of_w1("10.1.0.0/24");
    fn esp(peer: &mut Rig) -> MemFrame {
        peer.send_lan("10.2.0.7", "10.1.0.10", 600);
        let mut f = peer.wan.recv().expect("the peer sealed");
        readdress(&mut f, WAN_MAC, PEER_MAC);
        f
    }
    let turn = |w0: &mut Rig, w1: &mut Rig, t: u64| {
        for _ in 0..3 {
            w0.w.poll(t);
            w1.w.poll(t);
        }
    };
    // Each datagram in two fragments, the first to one worker, the second to the other,
    // both ways round; bare ESP, then ESP in UDP 4500 on a NAT-T SA worker 1 also owns.
    let bare = [(esp(&mut peer), false, 11u16), (esp(&mut peer), true, 12)];
    const SPI_UDP_W1: u32 = 0x8000_b002;
    let mut natt = sa(
        3,
        SPI_UDP_W1,
        "192.0.2.1",
        "192.0.2.2",
        "10.1.0.0/24",
        "10.2.0.0/24",
    );
    natt.encap = Some(crate::esp::sa::UdpEncap {
        local_port: 4500,
        remote_port: 4500,
    });
    w1.update(Update::AddSa {
        dir: Direction::Inbound,
        params: natt,
    });
    peer.update(Update::AddSa {
        dir: Direction::Outbound,
        params: sa(
            2,
            SPI_UDP_W1,
            "192.0.2.2",
            "192.0.2.1",
            "10.2.0.0/24",
            "10.1.0.0/24",
        ),
    });
    peer.update(Update::ReplaceSpd {
        rules: vec![Rule {
            id: 0,
            selector: sel("10.2.0.0/24", "10.1.0.0/24"),
            action: Action::Protect(SaId(2)),
        }],
    });
    let [a, b] = bare;
    let cases = [
        a,
        b,
        (in_udp_4500(&esp(&mut peer)), false, 13),
        (in_udp_4500(&esp(&mut peer)), true, 14),
    ];
    for (i, (whole, swap, ident)) in cases.into_iter().enumerate() {
        let (a, b) = fragment_v4(&whole, 296, ident);
        let (first, second) = if swap { (b, a) } else { (a, b) };
        assert!(w0.wan.send(first).is_ok());
        assert!(w1.wan.send(second).is_ok());
        turn(&mut w0, &mut w1, 10 + i as u64);
        let clear = w1
            .lan
            .recv()
            .unwrap_or_else(|| panic!("case {i}: opened by the SA's owner"));
        assert_eq!(
            outer_ipv4(&clear).src_addr(),
            "10.2.0.7".parse::<Ipv4Addr>().unwrap()
        );
        assert!(w0.lan.recv().is_none());
    }
    assert_eq!(w1.w.counters.traffic(Traffic::Decrypted), 4);
    let reassembled =
        w0.w.counters.l3(L3Stat::ReasmReassembled) + w1.w.counters.l3(L3Stat::ReasmReassembled);
    assert_eq!(
        reassembled, 4,
        "each datagram reassembled once, on one worker"
    );

    // IKE in two fragments, one to each worker: punted, whole, by worker 0.
    let (c, d) = fragment_v4(&udp_to_gateway(500, 900), 496, 15);
    assert!(w1.wan.send(c).is_ok());
    assert!(w0.wan.send(d).is_ok());
    turn(&mut w0, &mut w1, 20);
    let ike = punt.pop().expect("punted by worker 0");
    assert_eq!(ike.dst_port, 500);
    assert_eq!(w0.drops(DropReason::IkePunted), 1);

    // Nothing lost on the way: the only drops are fragments held for the rest.
    for r in [&w0, &w1] {
        assert_eq!(r.w.counters.l3(L3Stat::ReasmInFlight), 0);
        let s = r.w.counters.snapshot();
        let other: Vec<_> = s
            .nonzero_drops()
            .filter(|(d, _)| !matches!(d, DropReason::ReasmHeld | DropReason::IkePunted))
            .collect();
        assert!(other.is_empty(), "{other:?}");
    }
}

/// The masquerade of bypassed traffic with two workers: each hands out its own share of the
/// ports, and an answer that reaches the other worker goes to the one that holds its session
/// (before, it was dropped there as `nat_no_session`).
#[test]
fn an_answer_to_a_masqueraded_flow_reaches_the_worker_holding_its_session() {
    let (mut w0, mut w1, _punt) = two_workers(8);
    for r in [&mut w0, &mut w1] {
        r.update(Update::ReplaceSpd {
            rules: vec![
                Rule {
                    id: 0,
                    selector: sel("10.1.0.0/24", "10.2.0.0/24"),
                    action: Action::Protect(SaId(1)),
                },
                Rule {
                    id: 1,
                    selector: sel("10.1.0.0/24", "198.51.100.0/24"),
                    action: Action::Bypass,
                },
            ],
        });
        r.update(Update::SetMasquerade {
            config: Some(MasqueradeConfig {
                external_addr: "192.0.2.1".parse().unwrap(),
                ..MasqueradeConfig::default()
            }),
        });
    }
    // A flow from each worker's LAN; each answer arrives at the other worker's WAN.
    let mut rigs = [w0, w1];
    for (from, dst_port) in [(0usize, 7001u16), (1, 7002)] {
        let other = 1 - from;
        assert!(rigs[from]
            .lan
            .send(lan_frame("10.1.0.10", "198.51.100.7", dst_port))
            .is_ok());
        rigs[from].w.poll(1);
        let out = rigs[from].wan.recv().expect("masqueraded");
        let (answer, port) = server_answer(&out);
        assert_eq!(
            crate::nat::port_owner(port, 2),
            from as u16,
            "worker {from} hands out its own share of the ports"
        );
        assert!(rigs[other].wan.send(answer).is_ok());
        for t in 2..4 {
            rigs[other].w.poll(t);
            rigs[from].w.poll(t);
        }
        assert!(rigs[other].lan.recv().is_none());
        let back = rigs[from]
            .lan
            .recv()
            .unwrap_or_else(|| panic!("the answer to worker {from}'s flow"));
        let ip = ipv4::Packet::new_checked(&back.data()[14..]).unwrap();
        assert_eq!(ip.dst_addr(), "10.1.0.10".parse::<Ipv4Addr>().unwrap());
        let u = udp::Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(u.dst_port(), 1234);
        assert!(u.verify_checksum(&IpAddr::V4(ip.src_addr()), &IpAddr::V4(ip.dst_addr())));

        // A router's "fragmentation needed" about the flow, at the other worker too: the port
        // it quotes names the worker, which translates it back to the host.
        let quoted = &out.data()[14..];
        let msg = icmpv4::Repr::DstUnreachable {
            code: 4,
            next_hop_mtu: 1400,
            data_len: quoted.len(),
        };
        let mut l4 = vec![0u8; msg.buffer_len()];
        let mut p = icmpv4::Packet::new_unchecked(&mut l4[..]);
        msg.emit(&mut p);
        p.data_mut().copy_from_slice(quoted);
        p.fill_checksum();
        let mut b = out.data()[..14].to_vec();
        b[0..6].copy_from_slice(&WAN_MAC);
        b[6..12].copy_from_slice(&PEER_MAC);
        b.extend_from_slice(&[0u8; 20]);
        b.extend_from_slice(&l4);
        {
            let mut ip = ipv4::Packet::new_unchecked(&mut b[14..]);
            ip.set_version(4);
            ip.set_header_len(20);
            ip.set_total_len((20 + l4.len()) as u16);
            ip.set_hop_limit(64);
            ip.set_next_header(IpProtocol::Icmp);
            ip.set_src_addr("198.51.100.1".parse().unwrap());
            ip.set_dst_addr("192.0.2.1".parse().unwrap());
            ip.fill_checksum();
        }
        assert!(rigs[other]
            .wan
            .send(MemFrame::from_bytes(&b).unwrap())
            .is_ok());
        for t in 4..6 {
            rigs[other].w.poll(t);
            rigs[from].w.poll(t);
        }
        assert!(rigs[other].lan.recv().is_none());
        let err = rigs[from]
            .lan
            .recv()
            .unwrap_or_else(|| panic!("the ICMP error about worker {from}'s flow"));
        let ip = ipv4::Packet::new_checked(&err.data()[14..]).unwrap();
        assert_eq!(ip.dst_addr(), "10.1.0.10".parse::<Ipv4Addr>().unwrap());
        assert_eq!(ip.next_header(), IpProtocol::Icmp);
    }
    for r in &rigs {
        let s = r.w.counters.snapshot();
        assert_eq!(
            s.nonzero_drops().count(),
            0,
            "{:?}",
            s.nonzero_drops().collect::<Vec<_>>()
        );
        assert_eq!(s.traffic(Traffic::HandedOff), 2);
        assert_eq!(s.traffic(Traffic::HandOffReceived), 2);
    }
}

/// Links without a configured neighbour and two workers: each worker resolves on its own,
/// and the answer reaches whichever queue the port chose. Worker 1 (the SA's owner) asks for
/// the peer; the reply lands on worker 0, which learns from it and shares it: worker 1's ESP
/// leaves. Before, worker 1 asked in vain.
#[test]
fn an_arp_reply_on_the_other_worker_resolves_the_worker_that_asked() {
    use super::neighbors::{arp_asks, arp_reply, asks_for_the_peer, resolve_links};

    let (mut w0, mut w1, _punt) = two_workers(8);
    for r in [&mut w0, &mut w1] {
        resolve_links(r);
    }
    // A LAN packet on worker 1 for its own SA: sealed, then held for the peer's MAC.
    assert!(w1
        .lan
        .send(lan_frame("10.1.0.10", "10.2.0.7", 5001))
        .is_ok());
    w1.w.poll(1);
    let ask = w1.wan.recv().expect("worker 1 asks for the peer");
    assert!(asks_for_the_peer(&ask), "{:?}", arp_asks(&ask));
    assert!(w1.wan.recv().is_none(), "the ESP waits");
    // The peer's reply reaches worker 0's queue.
    assert!(w0
        .wan
        .send(arp_reply([192, 0, 2, 2], PEER_MAC, WAN_MAC, [192, 0, 2, 1]))
        .is_ok());
    for t in 2..4 {
        w0.w.poll(t);
        w1.w.poll(t);
    }
    let esp_out = w1
        .wan
        .recv()
        .expect("worker 1's ESP left once the reply was shared");
    assert_eq!(&esp_out.data()[0..6], &PEER_MAC);
    assert_eq!(outer_ipv4(&esp_out).next_header(), IpProtocol::Esp);
    assert!(w0.wan.recv().is_none(), "worker 0 does not answer a reply");
    assert_eq!(w0.drops(DropReason::NeighborIgnored), 1);
    assert_eq!(w1.drops(DropReason::NeighborShared), 1);
    assert_eq!(w0.w.counters.traffic(Traffic::HandedOff), 1);
    // A request is not shared: only answers are (worker 0 answers it itself).
    let mut req = arp_reply([192, 0, 2, 2], PEER_MAC, [0xff; 6], [192, 0, 2, 1]);
    req.data_mut()[21] = 1;
    assert!(w0.wan.send(req).is_ok());
    for t in 4..6 {
        w0.w.poll(t);
        w1.w.poll(t);
    }
    assert!(
        w0.wan.recv().is_some(),
        "worker 0 answers the request for its address"
    );
    assert_eq!(w1.drops(DropReason::NeighborShared), 1);
}
