//! The per-connection masquerade's paths through a worker (`worker::masq`): client A
//! (10.99.0.1, SA 0xc001 in, 0xe001 out) behind the gateway of `hairpin`, the server
//! 10.9.0.10 on the LAN side, the masquerading address 10.8.0.100.

use super::hairpin::{client_a, esp_spi, from_a, gateway_with_two_clients};
use super::*;
use crate::worker::masq::{HOLD_NS, HOLD_PER_KEY};
use proto::masq::{FlowKey, Masq, MasqClient, MasqMissKey, MasqPlane, MasqUsers, Route, UserRule};

const SERVER: &str = "10.9.0.10";
const MASQ: &str = "10.8.0.100";

fn flow() -> FlowKey {
    FlowKey {
        proto: 17,
        client: "10.99.0.1".parse().unwrap(),
        client_port: 1234,
        server: SERVER.parse().unwrap(),
        server_port: 5001,
    }
}

fn masq() -> Masq {
    Masq {
        proto: 17,
        addr: MASQ.parse().unwrap(),
        port: 40000,
    }
}

fn plane(served: &[&str]) -> Update {
    Update::SetMasqPlane {
        plane: Some(MasqPlane {
            clients: vec!["10.99.0.0/24".parse().unwrap()],
            exclude: vec!["10.1.0.0/24".parse().unwrap()],
            served: served.iter().map(|s| s.parse().unwrap()).collect(),
            link_addr: "10.8.0.3".parse().unwrap(),
        }),
    }
}

/// The gateway as A's FAM: masquerading on, the way back to A (SA 12, SPI 0xe001, bound).
fn fam(served: &[&str]) -> Rig {
    let mut g = gateway_with_two_clients(1500);
    g.update(plane(served));
    g.update(Update::AddSa {
        dir: Direction::Outbound,
        params: sa(
            12,
            0xe001,
            "192.0.2.1",
            "192.0.2.2",
            "10.0.0.0/8",
            "10.99.0.1/32",
        ),
    });
    g.update(Update::BindHost {
        dst: "10.99.0.1".parse().unwrap(),
        src: "0.0.0.0/0".parse().unwrap(),
        sa: SaId(12),
    });
    g
}

/// Client A able to open what the gateway seals to it.
fn client() -> Rig {
    let mut a = client_a();
    a.update(Update::AddSa {
        dir: Direction::Inbound,
        params: sa(
            7,
            0xe001,
            "192.0.2.2",
            "192.0.2.1",
            "10.99.0.1/32",
            "0.0.0.0/0",
        ),
    });
    a
}

fn install(g: &mut Rig) {
    g.update(Update::MasqFam {
        install: true,
        flow: flow(),
        masq: masq(),
    });
}

/// The UDP checksum recomputed from scratch equals the one in the packet, and so does the IP
/// header's.
fn assert_checksums(f: &MemFrame) {
    let ip = outer_ipv4(f);
    assert!(ip.verify_checksum(), "IP header checksum");
    let (s, d) = (IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()));
    let mut l4 = ip.payload().to_vec();
    let mut u = udp::Packet::new_unchecked(&mut l4[..]);
    let sent = u.checksum();
    assert_ne!(sent, 0);
    u.set_checksum(0);
    u.fill_checksum(&s, &d);
    assert_eq!(u.checksum(), sent, "UDP checksum from scratch");
}

/// A frame from the server (10.9.0.10:5001) to `dst`:`port` arriving on the LAN port.
fn from_server(g: &mut Rig, dst: &str, port: u16, now: u64) {
    let mut gen = Generator::new(
        vec![FlowSpec {
            src_mac: HOST_MAC,
            dst_mac: LAN_MAC,
            src: SERVER.parse().unwrap(),
            dst: dst.parse().unwrap(),
            src_port: 5001,
            dst_port: port,
        }],
        &[120],
    );
    let mut f = MemFrame::new();
    gen.fill(&mut f, 0);
    assert!(g.lan.send(f).is_ok());
    g.w.poll(now);
}

fn misses(g: &mut Rig) -> Vec<MasqMissKey> {
    g.agent.pump();
    g.agent
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::MasqMiss { key, .. } => Some(key),
            _ => None,
        })
        .collect()
}

#[test]
fn a_client_packet_leaves_rewritten_and_the_answer_is_sealed_back_to_the_client() {
    let mut g = fam(&[MASQ]);
    let mut a = client();
    install(&mut g);
    from_a(&mut a, &mut g, SERVER, 200);
    g.w.poll(2);
    let mut out = g.lan.recv().expect("to the LAN");
    assert!(g.wan.recv().is_none());
    {
        let ip = outer_ipv4(&out);
        assert_eq!(ip.src_addr().to_string(), MASQ);
        assert_eq!(ip.dst_addr().to_string(), SERVER);
        let u = udp::Packet::new_checked(ip.payload()).unwrap();
        assert_eq!((u.src_port(), u.dst_port()), (40000, 5001));
    }
    assert_checksums(&out);
    // The server answers: rewritten to the client, sealed onto A's SA, opened by A.
    answer(&mut out, LAN_MAC, HOST_MAC);
    assert!(g.lan.send(out).is_ok());
    g.w.poll(3);
    assert!(g.lan.recv().is_none());
    let mut esp = g.wan.recv().expect("sealed to the client");
    assert_eq!(esp_spi(&esp), 0xe001);
    readdress(&mut esp, WAN_MAC, PEER_MAC);
    assert!(a.wan.send(esp).is_ok());
    a.w.poll(4);
    let back = a.lan.recv().expect("A opens it");
    let ip = outer_ipv4(&back);
    assert_eq!(ip.src_addr().to_string(), SERVER);
    assert_eq!(ip.dst_addr().to_string(), "10.99.0.1");
    let u = udp::Packet::new_checked(ip.payload()).unwrap();
    assert_eq!((u.src_port(), u.dst_port()), (5001, 1234));
    assert_checksums(&back);
    let s = g.w.counters.snapshot();
    assert_eq!(s.traffic(Traffic::MasqRewrittenOut), 1);
    assert_eq!(s.traffic(Traffic::MasqRewrittenIn), 1);
    // An excluded destination goes its usual way, unrewritten.
    from_a(&mut a, &mut g, "10.1.0.10", 200);
    g.w.poll(5);
    let f = g.lan.recv().unwrap();
    assert_eq!(outer_ipv4(&f).src_addr().to_string(), "10.99.0.1");
}

#[test]
fn a_miss_holds_the_packet_until_its_flow_is_installed() {
    let mut g = fam(&[MASQ]);
    let mut a = client();
    from_a(&mut a, &mut g, SERVER, 200);
    g.w.poll(2);
    assert!(g.lan.recv().is_none(), "held");
    assert_eq!(misses(&mut g), vec![MasqMissKey::Out(flow())]);
    install(&mut g);
    let f = g.lan.recv().expect("released by MasqFam");
    assert_eq!(outer_ipv4(&f).src_addr().to_string(), MASQ);
    assert_checksums(&f);
    let s = g.w.counters.snapshot();
    assert_eq!(s.traffic(Traffic::MasqHeld), 1);
    assert_eq!(s.traffic(Traffic::MasqReleased), 1);
    // Inbound: an answer to a served address with no flow and no route is held too.
    from_server(&mut g, MASQ, 40001, 3);
    assert!(g.wan.recv().is_none());
    let key = Masq {
        port: 40001,
        ..masq()
    };
    assert_eq!(misses(&mut g), vec![MasqMissKey::In(key)]);
    // To an address this node neither serves nor has flows of: not the masquerade's.
    from_server(&mut g, "10.8.0.101", 40000, 4);
    assert_eq!(g.drops(DropReason::MasqHoldFull), 0);
    assert_eq!(g.w.counters.snapshot().traffic(Traffic::MasqHeld), 2);
}

#[test]
fn hold_overflow_and_expiry_are_counted_and_misses_rate_limited() {
    let mut g = fam(&[]);
    let mut a = client();
    for _ in 0..HOLD_PER_KEY + 2 {
        from_a(&mut a, &mut g, SERVER, 100);
        g.w.poll(2);
    }
    assert_eq!(misses(&mut g).len(), 1, "one report per key per 100 ms");
    let s = g.w.counters.snapshot();
    assert_eq!(s.traffic(Traffic::MasqHeld), HOLD_PER_KEY as u64);
    assert_eq!(g.drops(DropReason::MasqHoldFull), 2);
    g.w.poll(2 + HOLD_NS);
    assert_eq!(g.drops(DropReason::MasqHoldExpired), HOLD_PER_KEY as u64);
    // Installed after the expiry: nothing left to release.
    install(&mut g);
    assert!(g.lan.recv().is_none());
}

#[test]
fn the_user_table_is_checked_on_every_packet_of_an_established_flow() {
    let mut g = fam(&[MASQ]);
    let mut a = client();
    install(&mut g);
    let users = |allow: bool| Update::MasqUsers {
        table: MasqUsers {
            users: vec![vec![UserRule {
                dst: "10.9.0.0/24".parse().unwrap(),
                proto: Some(17),
                ports: PortRange { lo: 5001, hi: 5001 },
                allow,
            }]],
            default_allow: false,
            clients: vec![MasqClient {
                prefix: "10.99.0.1/32".parse().unwrap(),
                user: 0,
            }],
        },
    };
    g.update(users(true));
    from_a(&mut a, &mut g, SERVER, 100);
    g.w.poll(2);
    assert!(g.lan.recv().is_some(), "allowed");
    g.update(users(false));
    from_a(&mut a, &mut g, SERVER, 100);
    g.w.poll(3);
    assert!(
        g.lan.recv().is_none(),
        "the next packet of the flow is refused"
    );
    assert_eq!(g.drops(DropReason::MasqDenied), 1);
    // A client the table does not name.
    g.update(Update::MasqUsers {
        table: MasqUsers {
            users: vec![vec![]],
            default_allow: true,
            clients: vec![],
        },
    });
    from_a(&mut a, &mut g, SERVER, 100);
    g.w.poll(4);
    assert!(g.lan.recv().is_none());
    assert_eq!(g.drops(DropReason::MasqNoUser), 1);
}

#[test]
fn the_ham_forwards_on_the_link_sa_and_the_fam_delivers_to_its_client() {
    // The HAM (10.8.0.2) serves the address; the flow's FAM is node 1 (10.8.0.3).
    let mut ham = rig(1500);
    ham.update(plane(&[MASQ]));
    ham.update(Update::AddSa {
        dir: Direction::Outbound,
        params: sa(21, 0x7001, "10.8.0.2", "10.8.0.3", "0.0.0.0/0", "0.0.0.0/0"),
    });
    ham.update(Update::MasqLink {
        node: 1,
        out_sa: Some(SaId(21)),
    });
    // A route arriving after the packet: held, then forwarded.
    from_server(&mut ham, MASQ, 40000, 1);
    assert!(ham.lan.recv().is_none());
    ham.update(Update::MasqRoute {
        masq: masq(),
        route: Some(Route::Node(1)),
    });
    let mut esp = ham.lan.recv().expect("forwarded on the LAN");
    {
        let ip = outer_ipv4(&esp);
        assert_eq!(ip.next_header(), IpProtocol::Esp);
        assert_eq!(ip.src_addr().to_string(), "10.8.0.2");
        assert_eq!(ip.dst_addr().to_string(), "10.8.0.3");
    }
    assert_eq!(esp_spi(&esp), 0x7001);
    assert_eq!(ham.w.counters.snapshot().traffic(Traffic::MasqForwarded), 1);

    let mut g = fam(&[]);
    let mut a = client();
    install(&mut g);
    g.update(Update::AddSa {
        dir: Direction::Inbound,
        params: sa(22, 0x7001, "10.8.0.3", "10.8.0.2", "0.0.0.0/0", "0.0.0.0/0"),
    });
    g.update(Update::MasqLinkIn {
        spi: Spi(0x7001),
        install: true,
    });
    readdress(&mut esp, LAN_MAC, HOST_MAC);
    let mut replay = MemFrame::new();
    assert!(replay.append(esp.len()));
    replay.data_mut().copy_from_slice(esp.data());
    assert!(g.lan.send(esp).is_ok());
    g.w.poll(2);
    let mut out = g.wan.recv().expect("sealed to the client");
    assert_eq!(esp_spi(&out), 0xe001);
    readdress(&mut out, WAN_MAC, PEER_MAC);
    assert!(a.wan.send(out).is_ok());
    a.w.poll(3);
    let back = a.lan.recv().expect("A opens it");
    let ip = outer_ipv4(&back);
    assert_eq!(ip.src_addr().to_string(), SERVER);
    assert_eq!(ip.dst_addr().to_string(), "10.99.0.1");
    assert_checksums(&back);
    assert_eq!(g.w.counters.snapshot().traffic(Traffic::MasqLinkIn), 1);
    // The same ESP again: the link SA's replay window refuses it.
    assert!(g.lan.send(replay).is_ok());
    g.w.poll(4);
    assert!(g.wan.recv().is_none());
    assert_eq!(g.drops(DropReason::ReplayDuplicate), 1);
}

#[test]
fn arp_for_a_served_address_is_answered_on_the_lan() {
    let mut g = fam(&[MASQ]);
    let mut f = MemFrame::new();
    assert!(f.append(60));
    let n = crate::neighbor::frames::arp_request(
        f.data_mut(),
        HOST_MAC,
        "10.8.0.1".parse().unwrap(),
        MASQ.parse().unwrap(),
        None,
    )
    .unwrap();
    f.truncate(n);
    assert!(g.lan.send(f).is_ok());
    g.w.poll(2);
    let r = g.lan.recv().expect("answered");
    assert_eq!(&r.data()[6..12], &LAN_MAC);
    assert_eq!(
        &r.data()[28..32],
        &[10, 8, 0, 100],
        "sender: the served address"
    );
}

#[test]
fn malformed_lan_frames_never_panic() {
    let mut g = fam(&[MASQ]);
    install(&mut g);
    g.update(Update::MasqLinkIn {
        spi: Spi(0x7001),
        install: true,
    });
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..3000u64 {
        let len = (rnd() % 120) as usize;
        let mut f = MemFrame::new();
        assert!(f.append(14 + len));
        let d = f.data_mut();
        d[0..6].copy_from_slice(&LAN_MAC);
        d[6..12].copy_from_slice(&HOST_MAC);
        d[12..14].copy_from_slice(&[8, 0]);
        for b in d[14..].iter_mut() {
            *b = rnd() as u8;
        }
        if len >= 20 {
            d[14] = 0x45;
            d[14 + 16..14 + 20].copy_from_slice(&[10, 8, 0, 100]);
            if i % 3 == 0 {
                d[14 + 9] = 50;
                if len >= 24 {
                    d[14 + 20..14 + 24].copy_from_slice(&0x7001u32.to_be_bytes());
                }
            }
        }
        let _ = g.lan.send(f);
        g.w.poll(2 + i);
        while g.lan.recv().is_some() {}
        while g.wan.recv().is_some() {}
    }
}
