#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use super::*;
use crate::wire::checksum;
use crate::wire::checksum::tests::Rng;
use core::net::IpAddr;

const EXT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
const HOST2: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 11);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);

fn nat() -> Masquerade {
    Masquerade::new(MasqueradeConfig {
        external_addr: EXT,
        ..Default::default()
    })
}

fn ip(src: Ipv4Addr, dst: Ipv4Addr, proto: IpProtocol, l4: &[u8]) -> Vec<u8> {
    let r = ipv4::Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len: l4.len(),
        hop_limit: 64,
        dscp: 0,
        ecn: 0,
        ident: 0x4242,
        dont_frag: true,
    };
    let mut b = vec![0u8; r.buffer_len()];
    r.emit(&mut ipv4::Packet::new_unchecked(&mut b[..]));
    b[20..].copy_from_slice(l4);
    b
}

fn udp_pkt(src: Ipv4Addr, sp: u16, dst: Ipv4Addr, dp: u16, payload: &[u8]) -> Vec<u8> {
    let r = udp::Repr {
        src_port: sp,
        dst_port: dp,
        payload_len: payload.len(),
    };
    let mut l4 = vec![0u8; r.buffer_len()];
    let mut u = udp::Packet::new_unchecked(&mut l4[..]);
    r.emit(&mut u);
    u.payload_mut().copy_from_slice(payload);
    u.fill_checksum(&IpAddr::V4(src), &IpAddr::V4(dst));
    ip(src, dst, IpProtocol::Udp, &l4)
}

fn tcp_pkt(
    src: Ipv4Addr,
    sp: u16,
    dst: Ipv4Addr,
    dp: u16,
    flags: tcp::Flags,
    payload: &[u8],
) -> Vec<u8> {
    let r = tcp::Repr {
        src_port: sp,
        dst_port: dp,
        seq_number: 1000,
        ack_number: 2000,
        flags,
        window_len: 5000,
        payload_len: payload.len(),
    };
    let mut l4 = vec![0u8; r.buffer_len()];
    let mut t = tcp::Packet::new_unchecked(&mut l4[..]);
    r.emit(&mut t);
    t.payload_mut().copy_from_slice(payload);
    t.fill_checksum(&IpAddr::V4(src), &IpAddr::V4(dst));
    ip(src, dst, IpProtocol::Tcp, &l4)
}

fn echo(src: Ipv4Addr, dst: Ipv4Addr, request: bool, ident: u16) -> Vec<u8> {
    let mut b = vec![0u8; 100];
    let n = if request {
        icmpv4::build_echo_request(&mut b, src, dst, ident, 1, b"data").unwrap()
    } else {
        icmpv4::build_echo_reply(&mut b, src, dst, ident, 1, b"data").unwrap()
    };
    b.truncate(n);
    b
}

/// An ICMP error from `from` to `to` quoting `quoted` (cut to `quote_len` bytes).
fn icmp_error(from: Ipv4Addr, to: Ipv4Addr, msg: icmpv4::Repr, quoted: &[u8]) -> Vec<u8> {
    let mut l4 = vec![0u8; msg.buffer_len()];
    let mut p = icmpv4::Packet::new_unchecked(&mut l4[..]);
    msg.emit(&mut p);
    p.data_mut().copy_from_slice(&quoted[..msg.data_len()]);
    p.fill_checksum();
    ip(from, to, IpProtocol::Icmp, &l4)
}

/// Everything verifies from scratch: IP header, transport checksum (recomputed and compared),
/// quoted packet of ICMP errors.
fn assert_checksums(pkt: &[u8]) {
    let p = ipv4::Packet::new_checked(pkt).unwrap();
    assert!(p.verify_checksum(), "ip checksum");
    let mut fresh = pkt.to_vec();
    ipv4::Packet::new_unchecked(&mut fresh[..]).fill_checksum();
    assert_eq!(fresh, pkt, "ip checksum equals recomputed");
    let (s, d) = (IpAddr::V4(p.src_addr()), IpAddr::V4(p.dst_addr()));
    let l4 = p.payload();
    match p.next_header() {
        IpProtocol::Udp => {
            let u = udp::Packet::new_checked(l4).unwrap();
            if u.checksum() != 0 {
                assert!(u.verify_checksum(&s, &d), "udp checksum");
                let mut c = l4.to_vec();
                udp::Packet::new_unchecked(&mut c[..]).fill_checksum(&s, &d);
                assert!(checksum::equivalent(
                    udp::Packet::new_unchecked(&c[..]).checksum(),
                    u.checksum()
                ));
            }
        }
        IpProtocol::Tcp => {
            let t = tcp::Packet::new_checked(l4).unwrap();
            assert!(t.verify_checksum(&s, &d), "tcp checksum");
            let mut c = l4.to_vec();
            tcp::Packet::new_unchecked(&mut c[..]).fill_checksum(&s, &d);
            assert!(checksum::equivalent(
                tcp::Packet::new_unchecked(&c[..]).checksum(),
                t.checksum()
            ));
        }
        IpProtocol::Icmp => {
            let i = icmpv4::Packet::new_checked(l4).unwrap();
            assert!(i.verify_checksum(), "icmp checksum");
            let q = i.invoking_packet();
            if q.len() >= 20 {
                let qp = ipv4::Packet::new_unchecked(q);
                assert!(
                    checksum::data(&q[..usize::from(qp.header_len())]) == 0xffff,
                    "quoted ip checksum"
                );
                // a complete quote: its transport checksum verifies too
                if usize::from(qp.total_len()) == q.len() && qp.next_header() != IpProtocol::Icmp {
                    assert_checksums(q);
                }
            }
        }
        _ => {}
    }
}

fn addrs(pkt: &[u8]) -> (Ipv4Addr, Ipv4Addr) {
    let p = ipv4::Packet::new_checked(pkt).unwrap();
    (p.src_addr(), p.dst_addr())
}

fn ports(pkt: &[u8]) -> (u16, u16) {
    let p = ipv4::Packet::new_checked(pkt).unwrap();
    let l4 = p.payload();
    (
        u16::from_be_bytes([l4[0], l4[1]]),
        u16::from_be_bytes([l4[2], l4[3]]),
    )
}

#[test]
fn udp_out_and_back() {
    let mut n = nat();
    let mut out = udp_pkt(HOST, 5000, REMOTE, 53, b"query!");
    n.outbound(&mut out, 0).unwrap();
    assert_eq!(addrs(&out), (EXT, REMOTE));
    let (ext_port, dp) = ports(&out);
    assert_eq!(dp, 53);
    assert!(ext_port >= 1024);
    assert_checksums(&out);
    assert_eq!(n.sessions(), 1);

    // the same flow keeps its port
    let mut again = udp_pkt(HOST, 5000, REMOTE, 53, b"second");
    n.outbound(&mut again, 1).unwrap();
    assert_eq!(ports(&again).0, ext_port);
    assert_eq!(n.sessions(), 1);

    let mut reply = udp_pkt(REMOTE, 53, EXT, ext_port, b"answer");
    n.inbound(&mut reply, 2).unwrap();
    assert_eq!(addrs(&reply), (REMOTE, HOST));
    assert_eq!(ports(&reply), (53, 5000));
    assert_checksums(&reply);

    // wrong remote port, wrong remote, unknown port: no session, packet unchanged
    for mut bad in [
        udp_pkt(REMOTE, 54, EXT, ext_port, b"x"),
        udp_pkt(ROUTER, 53, EXT, ext_port, b"x"),
        udp_pkt(REMOTE, 53, EXT, ext_port.wrapping_add(1), b"x"),
        udp_pkt(REMOTE, 53, HOST, 5000, b"x"),
    ] {
        let before = bad.clone();
        assert_eq!(n.inbound(&mut bad, 3), Err(NatDrop::NoSession));
        assert_eq!(bad, before);
    }

    // another inside host gets another port
    let mut other = udp_pkt(HOST2, 5000, REMOTE, 53, b"q");
    n.outbound(&mut other, 4).unwrap();
    assert_ne!(ports(&other).0, ext_port);
    assert_eq!(n.sessions(), 2);
}

#[test]
fn udp_zero_checksum_stays_zero() {
    let mut n = nat();
    let mut out = udp_pkt(HOST, 5000, REMOTE, 53, b"abc");
    udp::Packet::new_unchecked(&mut out[20..]).set_checksum(0);
    n.outbound(&mut out, 0).unwrap();
    assert_eq!(udp::Packet::new_checked(&out[20..]).unwrap().checksum(), 0);
    assert_checksums(&out);
}

#[test]
fn random_udp_and_tcp_rewrites_match_recomputed() {
    let mut rng = Rng(77);
    let mut n = nat();
    for i in 0..500u64 {
        let host = Ipv4Addr::from(0xc0a8_0000 | (rng.next() as u32 & 0xffff));
        let remote = Ipv4Addr::from(rng.next() as u32);
        let (sp, dp) = ((rng.next() as u16).max(1), (rng.next() as u16).max(1));
        let len = rng.below(40);
        let payload = rng.bytes(len);
        let mut out = if rng.below(2) == 0 {
            udp_pkt(host, sp, remote, dp, &payload)
        } else {
            tcp_pkt(host, sp, remote, dp, tcp::Flags::SYN, &payload)
        };
        n.outbound(&mut out, i).unwrap();
        assert_checksums(&out);
        let ext_port = ports(&out).0;
        let mut back =
            if ipv4::Packet::new_checked(&out[..]).unwrap().next_header() == IpProtocol::Udp {
                udp_pkt(remote, dp, EXT, ext_port, &payload)
            } else {
                tcp_pkt(
                    remote,
                    dp,
                    EXT,
                    ext_port,
                    tcp::Flags::SYN | tcp::Flags::ACK,
                    &payload,
                )
            };
        n.inbound(&mut back, i).unwrap();
        assert_eq!(addrs(&back), (remote, host));
        assert_eq!(ports(&back), (dp, sp));
        assert_checksums(&back);
    }
}

#[test]
fn tcp_states_and_timeouts() {
    let cfg = MasqueradeConfig {
        external_addr: EXT,
        ..Default::default()
    };
    let (trans, est) = (
        cfg.tcp_transitory_timeout_ns,
        cfg.tcp_established_timeout_ns,
    );
    let mut n = Masquerade::new(cfg);
    // RST without a session is not let out
    let mut rst = tcp_pkt(HOST, 40000, REMOTE, 443, tcp::Flags::RST, b"");
    assert_eq!(n.outbound(&mut rst, 0), Err(NatDrop::NoSession));
    let mut syn = tcp_pkt(HOST, 40000, REMOTE, 443, tcp::Flags::SYN, b"");
    n.outbound(&mut syn, 0).unwrap();
    assert_checksums(&syn);
    let p = ports(&syn).0;
    // an unanswered SYN lives for the transitory timeout
    assert_eq!(n.expire(trans - 1, 100), 0);
    let mut synack = tcp_pkt(REMOTE, 443, EXT, p, tcp::Flags::SYN | tcp::Flags::ACK, b"");
    n.inbound(&mut synack, trans - 1).unwrap();
    assert_checksums(&synack);
    // established: survives well past the transitory timeout
    let t = trans - 1;
    assert_eq!(n.expire(t + trans * 2, 100), 0);
    assert_eq!(n.sessions(), 1);
    let mut data = tcp_pkt(HOST, 40000, REMOTE, 443, tcp::Flags::ACK, b"GET /");
    n.outbound(&mut data, t + trans * 2).unwrap();
    assert_eq!(ports(&data).0, p);
    // FIN: transitory again
    let t = t + trans * 2;
    let mut fin = tcp_pkt(REMOTE, 443, EXT, p, tcp::Flags::FIN | tcp::Flags::ACK, b"");
    n.inbound(&mut fin, t).unwrap();
    assert_eq!(n.expire(t + trans - 1, 100), 0);
    assert_eq!(n.expire(t + trans, 100), 1);
    assert_eq!(n.sessions(), 0);
    assert!(est > trans);
}

#[test]
fn idle_sessions_expire() {
    let mut n = nat();
    let mut out = udp_pkt(HOST, 5000, REMOTE, 53, b"q");
    n.outbound(&mut out, 0).unwrap();
    let p = ports(&out).0;
    let mut ping = echo(HOST, REMOTE, true, 7);
    n.outbound(&mut ping, 0).unwrap();
    assert_eq!(n.sessions(), 2);
    // budget bounds the work
    assert_eq!(n.expire(30_000_000_000, 1), 1);
    assert_eq!(n.expire(30_000_000_000, 0), 0);
    assert_eq!(n.expire(30_000_000_000, 10), 1);
    assert_eq!(n.sessions(), 0);
    let mut reply = udp_pkt(REMOTE, 53, EXT, p, b"late");
    assert_eq!(
        n.inbound(&mut reply, 30_000_000_001),
        Err(NatDrop::NoSession)
    );

    // a packet that finds an idle session does not revive it
    let mut out = udp_pkt(HOST, 6000, REMOTE, 53, b"q");
    n.outbound(&mut out, 100_000_000_000).unwrap();
    let p = ports(&out).0;
    let mut reply = udp_pkt(REMOTE, 53, EXT, p, b"late");
    assert_eq!(
        n.inbound(&mut reply, 131_000_000_000),
        Err(NatDrop::NoSession)
    );
    assert_eq!(n.sessions(), 0);
}

#[test]
fn ports_not_reused_too_soon_and_exhaustion() {
    let mut n = Masquerade::new(MasqueradeConfig {
        external_addr: EXT,
        port_range: (2000, 2001),
        ..Default::default()
    });
    let delay = n.config().port_reuse_delay_ns;
    let udp_to = n.config().udp_timeout_ns;
    let mut a = udp_pkt(HOST, 1, REMOTE, 53, b"");
    let mut b = udp_pkt(HOST, 2, REMOTE, 53, b"");
    let mut c = udp_pkt(HOST, 3, REMOTE, 53, b"");
    n.outbound(&mut a, 0).unwrap();
    n.outbound(&mut b, 0).unwrap();
    let mut got = [ports(&a).0, ports(&b).0];
    got.sort();
    assert_eq!(got, [2000, 2001]);
    assert_eq!(n.outbound(&mut c.clone(), 0), Err(NatDrop::PortsExhausted));
    // both expire; their ports wait for the reuse delay
    assert_eq!(n.expire(udp_to, 10), 2);
    assert_eq!(
        n.outbound(&mut c.clone(), udp_to),
        Err(NatDrop::PortsExhausted)
    );
    assert_eq!(
        n.outbound(&mut c.clone(), udp_to + delay - 1),
        Err(NatDrop::PortsExhausted)
    );
    n.outbound(&mut c, udp_to + delay).unwrap();
    // ICMP identifiers have their own space
    let mut ping = echo(HOST, REMOTE, true, 9);
    n.outbound(&mut ping, udp_to + delay).unwrap();
}

#[test]
fn fresh_ports_before_released_ones() {
    let mut n = Masquerade::new(MasqueradeConfig {
        external_addr: EXT,
        port_range: (3000, 3009),
        port_reuse_delay_ns: 0,
        udp_timeout_ns: 10,
        ..Default::default()
    });
    let mut seen = std::collections::HashSet::new();
    for i in 0..10u16 {
        let mut p = udp_pkt(HOST, 100 + i, REMOTE, 53, b"");
        n.outbound(&mut p, u64::from(i) * 100).unwrap();
        // the previous sessions are expired and released by now, yet fresh ports come first
        n.expire(u64::from(i) * 100 + 50, 100);
        assert!(seen.insert(ports(&p).0));
    }
}

#[test]
fn table_full() {
    let mut n = Masquerade::new(MasqueradeConfig {
        external_addr: EXT,
        max_sessions: 1,
        ..Default::default()
    });
    n.outbound(&mut udp_pkt(HOST, 1, REMOTE, 53, b""), 0)
        .unwrap();
    assert_eq!(
        n.outbound(&mut udp_pkt(HOST, 2, REMOTE, 53, b""), 0),
        Err(NatDrop::TableFull)
    );
    n.outbound(&mut udp_pkt(HOST, 1, REMOTE, 53, b""), 0)
        .unwrap();
}

#[test]
fn icmp_echo_ident_translation() {
    let mut n = nat();
    let mut req = echo(HOST, REMOTE, true, 0x1234);
    n.outbound(&mut req, 0).unwrap();
    assert_checksums(&req);
    assert_eq!(addrs(&req), (EXT, REMOTE));
    let ident = icmpv4::Packet::new_checked(&req[20..])
        .unwrap()
        .echo_ident();
    let mut rep = echo(REMOTE, EXT, false, ident);
    n.inbound(&mut rep, 1).unwrap();
    assert_checksums(&rep);
    assert_eq!(addrs(&rep), (REMOTE, HOST));
    assert_eq!(
        icmpv4::Packet::new_checked(&rep[20..])
            .unwrap()
            .echo_ident(),
        0x1234
    );
    // an inbound echo request is not ours to answer; an outbound reply is not masqueraded
    assert_eq!(
        n.inbound(&mut echo(REMOTE, EXT, true, ident), 1),
        Err(NatDrop::UnsupportedProtocol)
    );
    assert_eq!(
        n.outbound(&mut echo(HOST, REMOTE, false, 1), 1),
        Err(NatDrop::UnsupportedProtocol)
    );
}

#[test]
fn inbound_icmp_errors_are_translated() {
    let mut n = nat();
    // UDP: a router says "fragmentation needed", quoting the whole translated packet
    let mut out = udp_pkt(HOST, 5000, REMOTE, 53, &[0xab; 30]);
    n.outbound(&mut out, 0).unwrap();
    let msg = icmpv4::Repr::DstUnreachable {
        code: 4,
        next_hop_mtu: 1400,
        data_len: out.len(),
    };
    let mut err = icmp_error(ROUTER, EXT, msg, &out);
    n.inbound(&mut err, 1).unwrap();
    assert_eq!(addrs(&err), (ROUTER, HOST));
    assert_checksums(&err);
    let quoted = icmpv4::Packet::new_checked(&err[20..])
        .unwrap()
        .invoking_packet()
        .to_vec();
    assert_eq!(addrs(&quoted), (HOST, REMOTE));
    assert_eq!(ports(&quoted), (5000, 53));
    // the quote is now exactly what the host sent
    assert_eq!(quoted, udp_pkt(HOST, 5000, REMOTE, 53, &[0xab; 30]));

    // TCP: time exceeded quoting only IP header + 8 bytes (no TCP checksum in the quote)
    let mut syn = tcp_pkt(HOST, 40000, REMOTE, 443, tcp::Flags::SYN, b"");
    n.outbound(&mut syn, 0).unwrap();
    let msg = icmpv4::Repr::TimeExceeded {
        code: 0,
        data_len: 28,
    };
    let mut err = icmp_error(ROUTER, EXT, msg, &syn);
    n.inbound(&mut err, 1).unwrap();
    assert_checksums(&err);
    let quoted = icmpv4::Packet::new_checked(&err[20..])
        .unwrap()
        .invoking_packet()
        .to_vec();
    assert_eq!(
        &quoted[..28],
        &tcp_pkt(HOST, 40000, REMOTE, 443, tcp::Flags::SYN, b"")[..28]
    );

    // TCP with the full quote: the quoted TCP checksum is fixed too
    let msg = icmpv4::Repr::DstUnreachable {
        code: 3,
        next_hop_mtu: 0,
        data_len: syn.len(),
    };
    let mut err = icmp_error(ROUTER, EXT, msg, &syn);
    n.inbound(&mut err, 1).unwrap();
    assert_checksums(&err);

    // ICMP echo: the error quotes our request
    let mut req = echo(HOST, REMOTE, true, 0x99);
    n.outbound(&mut req, 0).unwrap();
    let msg = icmpv4::Repr::DstUnreachable {
        code: 1,
        next_hop_mtu: 0,
        data_len: req.len(),
    };
    let mut err = icmp_error(ROUTER, EXT, msg, &req);
    n.inbound(&mut err, 1).unwrap();
    assert_checksums(&err);
    let quoted = icmpv4::Packet::new_checked(&err[20..])
        .unwrap()
        .invoking_packet()
        .to_vec();
    assert_eq!(quoted, echo(HOST, REMOTE, true, 0x99));

    // an error about a flow we do not have, or a quote to another remote port
    let stranger = udp_pkt(EXT, 1, REMOTE, 53, b"");
    let msg = icmpv4::Repr::DstUnreachable {
        code: 3,
        next_hop_mtu: 0,
        data_len: stranger.len(),
    };
    let mut err = icmp_error(ROUTER, EXT, msg, &stranger);
    let before = err.clone();
    assert_eq!(n.inbound(&mut err, 1), Err(NatDrop::NoSession));
    assert_eq!(err, before);
    // a quote too short for the ports
    let msg = icmpv4::Repr::TimeExceeded {
        code: 0,
        data_len: 24,
    };
    let mut err = icmp_error(ROUTER, EXT, msg, &out);
    assert_eq!(n.inbound(&mut err, 1), Err(NatDrop::Malformed));
}

#[test]
fn outbound_icmp_errors_are_translated() {
    let mut n = nat();
    let mut out = udp_pkt(HOST, 5000, REMOTE, 53, b"q");
    n.outbound(&mut out, 0).unwrap();
    let p = ports(&out).0;
    let mut reply = udp_pkt(REMOTE, 53, EXT, p, b"answer");
    n.inbound(&mut reply, 1).unwrap();
    // the host answers the (translated) reply with port unreachable
    let msg = icmpv4::Repr::DstUnreachable {
        code: 3,
        next_hop_mtu: 0,
        data_len: reply.len(),
    };
    let mut err = icmp_error(HOST, REMOTE, msg, &reply);
    n.outbound(&mut err, 2).unwrap();
    assert_eq!(addrs(&err), (EXT, REMOTE));
    assert_checksums(&err);
    let quoted = icmpv4::Packet::new_checked(&err[20..])
        .unwrap()
        .invoking_packet()
        .to_vec();
    assert_eq!(quoted, udp_pkt(REMOTE, 53, EXT, p, b"answer"));
    // from another inside host: refused
    let mut err = icmp_error(HOST2, REMOTE, msg, &reply);
    assert_eq!(n.outbound(&mut err, 2), Err(NatDrop::NoSession));
}

#[test]
fn fragments_and_unsupported() {
    let mut n = nat();
    let mut f = udp_pkt(HOST, 5000, REMOTE, 53, &[0; 16]);
    let mut p = ipv4::Packet::new_unchecked(&mut f[..]);
    p.set_frag_offset(8);
    p.fill_checksum();
    assert_eq!(n.outbound(&mut f.clone(), 0), Err(NatDrop::Fragment));
    // a first fragment is translated
    let mut f = udp_pkt(HOST, 5000, REMOTE, 53, &[0; 16]);
    let mut p = ipv4::Packet::new_unchecked(&mut f[..]);
    p.set_more_frags(true);
    p.fill_checksum();
    n.outbound(&mut f, 0).unwrap();
    let mut gre = ip(HOST, REMOTE, IpProtocol::Unknown(47), &[0; 8]);
    assert_eq!(n.outbound(&mut gre, 0), Err(NatDrop::UnsupportedProtocol));
    let mut bad = udp_pkt(HOST, 5000, REMOTE, 53, b"");
    bad[10] ^= 0xff;
    assert_eq!(n.outbound(&mut bad, 0), Err(NatDrop::Malformed));
    assert_eq!(n.outbound(&mut [0x45, 0], 0), Err(NatDrop::Malformed));
    let mut short_tcp = ip(HOST, REMOTE, IpProtocol::Tcp, &[0; 12]);
    assert_eq!(n.outbound(&mut short_tcp, 0), Err(NatDrop::Malformed));
}

#[test]
fn odd_configs_do_not_panic() {
    for range in [(0, 0), (65535, 1), (5, 5), (0, 65535)] {
        let mut n = Masquerade::new(MasqueradeConfig {
            external_addr: EXT,
            port_range: range,
            ..Default::default()
        });
        let mut p = udp_pkt(HOST, 1, REMOTE, 2, b"");
        n.outbound(&mut p, 0).unwrap();
        assert_ne!(ports(&p).0, 0);
    }
}

#[test]
fn garbage_never_panics() {
    let mut rng = Rng(1234);
    let mut n = nat();
    // some sessions to hit
    for i in 0..20 {
        n.outbound(&mut udp_pkt(HOST, 1000 + i, REMOTE, 53, b""), 0)
            .unwrap();
    }
    let templates = [
        udp_pkt(REMOTE, 53, EXT, 1024, b"abcd"),
        tcp_pkt(REMOTE, 53, EXT, 1024, tcp::Flags::ACK, b"abcd"),
        echo(REMOTE, EXT, false, 1024),
    ];
    for i in 0..20000u64 {
        let mut g = if rng.below(3) == 0 {
            let n = rng.below(100);
            rng.bytes(n)
        } else {
            let mut t = templates[rng.below(3)].clone();
            for _ in 0..rng.below(4) {
                let at = rng.below(t.len());
                t[at] = rng.next() as u8;
            }
            t.truncate(rng.below(t.len() + 1).max(1));
            t
        };
        let before = g.clone();
        let r = if rng.below(2) == 0 {
            n.inbound(&mut g, i)
        } else {
            n.outbound(&mut g, i)
        };
        if r.is_err() {
            assert_eq!(g, before, "a dropped packet is unchanged");
        }
        n.expire(i, 4);
    }
}

/// Three workers sharing one address: each hands out only its own ports (all of them before
/// it runs out), the answer's port names the worker that holds the session, and that
/// worker's masquerade takes the answer back.
#[test]
fn workers_sharing_an_address_hand_out_disjoint_ports_their_answers_name() {
    let cfg = MasqueradeConfig {
        external_addr: EXT,
        port_range: (1000, 1099),
        ..Default::default()
    };
    let mut nats: Vec<Masquerade> = (0..3u16)
        .map(|w| {
            let mut n = Masquerade::new(cfg.clone());
            assert!(n.share_ports(w, 3));
            n
        })
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for (w, n) in nats.iter_mut().enumerate() {
        let mut mine = 0;
        for sp in 0..40u16 {
            let mut p = udp_pkt(HOST, 2000 + sp, REMOTE, 53, b"q");
            if n.outbound(&mut p, 1).is_err() {
                break;
            }
            let (ext, _) = ports(&p);
            assert!((1000..=1099).contains(&ext));
            assert_eq!(port_owner(ext, 3), w as u16, "port {ext}");
            assert!(seen.insert(ext), "port {ext} twice");
            // The answer: its port says which worker, whose table has it.
            let mut back = udp_pkt(REMOTE, 53, EXT, ext, b"a");
            assert_eq!(answer_port(&back), Some(ext));
            n.inbound(&mut back, 2).unwrap();
            assert_eq!(ports(&back), (53, 2000 + sp));
            mine += 1;
        }
        // 1000..=1099 over 3 workers: 1002.. (33), 1000.. (34), 1001.. (33); each used all
        // of its own before its pool ran out.
        assert_eq!(mine, if w == 1 { 34 } else { 33 });
    }
    assert_eq!(seen.len(), 100);
    // Echo identifiers the same way.
    let mut e = echo(HOST, REMOTE, true, 7);
    nats[1].outbound(&mut e, 3).unwrap();
    let id = u16::from_be_bytes([e[24], e[25]]);
    assert_eq!(port_owner(id, 3), 1);
    let reply = echo(REMOTE, EXT, false, id);
    assert_eq!(answer_port(&reply), Some(id));
    // Not once sessions exist; not for a worker out of range.
    assert!(!nats[0].share_ports(0, 2));
    assert!(!Masquerade::new(cfg.clone()).share_ports(3, 3));
    // An ICMP error about a flow names the port of the packet it quotes: "fragmentation
    // needed" for a UDP datagram, time exceeded for a TCP SYN (the quote cut after 8 bytes
    // of it) and for an echo request. (Fresh masquerades: the ones above used their ports.)
    let mut nats: Vec<Masquerade> = (0..3u16)
        .map(|w| {
            let mut n = Masquerade::new(cfg.clone());
            assert!(n.share_ports(w, 3));
            n
        })
        .collect();
    let mut out = udp_pkt(HOST, 5000, REMOTE, 53, &[0xab; 30]);
    nats[2].outbound(&mut out, 4).unwrap();
    let ext = ports(&out).0;
    let msg = icmpv4::Repr::DstUnreachable {
        code: 4,
        next_hop_mtu: 1400,
        data_len: out.len(),
    };
    assert_eq!(answer_port(&icmp_error(ROUTER, EXT, msg, &out)), Some(ext));
    assert_eq!(port_owner(ext, 3), 2);
    let mut syn = tcp_pkt(HOST, 40000, REMOTE, 443, tcp::Flags::SYN, b"");
    nats[0].outbound(&mut syn, 4).unwrap();
    let ext = ports(&syn).0;
    let msg = icmpv4::Repr::TimeExceeded {
        code: 0,
        data_len: 28,
    };
    assert_eq!(
        answer_port(&icmp_error(ROUTER, EXT, msg, &syn[..28])),
        Some(ext)
    );
    assert_eq!(port_owner(ext, 3), 0);
    let msg = icmpv4::Repr::TimeExceeded {
        code: 0,
        data_len: e.len(),
    };
    assert_eq!(answer_port(&icmp_error(ROUTER, EXT, msg, &e)), Some(id));
    // An error about something else (a quoted protocol without ports) names nothing.
    let gre = ip(EXT, REMOTE, IpProtocol::Unknown(47), &[0; 8]);
    let msg = icmpv4::Repr::DstUnreachable {
        code: 1,
        next_hop_mtu: 0,
        data_len: gre.len(),
    };
    assert_eq!(answer_port(&icmp_error(ROUTER, EXT, msg, &gre)), None);
    // Nothing to name for a later fragment or a truncated header.
    let mut frag = udp_pkt(REMOTE, 53, EXT, 1000, b"a");
    frag[7] = 1;
    assert_eq!(answer_port(&frag), None);
    assert_eq!(answer_port(&frag[..21]), None);
    assert_eq!(answer_port(&[]), None);
}
