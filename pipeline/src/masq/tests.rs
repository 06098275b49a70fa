#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use super::forward::{open_from_ham, seal_to_fam};
use super::*;
use crate::crypto::{AeadAlg, Backend, EspAlg};
use crate::esp::sa::{build_inbound, build_outbound, SaKeys, SaParams};
use crate::ids::{SaId, Spi};
use crate::port::mem::MemFrame;
use crate::port::Frame;
use crate::sad::Sad;
use crate::spd::Prefix;
use crate::stats::DropReason;
use crate::wire::checksum::tests::Rng;
use crate::wire::{tcp, udp};
use core::net::IpAddr;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);
const MASQ: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

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

fn tcp_pkt(src: Ipv4Addr, sp: u16, dst: Ipv4Addr, dp: u16, payload: &[u8]) -> Vec<u8> {
    let r = tcp::Repr {
        src_port: sp,
        dst_port: dp,
        seq_number: 1000,
        ack_number: 2000,
        flags: tcp::Flags::default(),
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

/// The packet's checksums, recomputed from scratch, are right; its addresses and ports.
fn check(pkt: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    let p = ipv4::Packet::new_checked(pkt).unwrap();
    assert!(p.verify_checksum(), "IPv4 header checksum");
    let (src, dst) = (IpAddr::V4(p.src_addr()), IpAddr::V4(p.dst_addr()));
    let l4 = &pkt[20..];
    let (sp, dp) = match p.next_header() {
        IpProtocol::Tcp => {
            let t = tcp::Packet::new_checked(l4).unwrap();
            assert!(t.verify_checksum(&src, &dst), "TCP checksum");
            (t.src_port(), t.dst_port())
        }
        IpProtocol::Udp => {
            let u = udp::Packet::new_checked(l4).unwrap();
            assert!(u.verify_checksum(&src, &dst), "UDP checksum");
            (u.src_port(), u.dst_port())
        }
        other => panic!("{other:?}"),
    };
    (p.src_addr(), sp, p.dst_addr(), dp)
}

fn flow(proto: u8, cp: u16, sp: u16) -> FlowKey {
    FlowKey {
        proto,
        client: CLIENT,
        client_port: cp,
        server: SERVER,
        server_port: sp,
    }
}

#[test]
fn fam_rewrites_both_ways_and_checksums_match_a_recomputation() {
    let mut rng = Rng(0x5eed);
    let mut t = FamTable::new();
    for i in 0..500 {
        let proto = if i % 2 == 0 { 6 } else { 17 };
        let cp = rng.next() as u16 | 1;
        let sp = rng.next() as u16 | 1;
        let mport = 1024 + (rng.next() as u16 % 60000);
        let maddr = Ipv4Addr::from(rng.next() as u32 | 1);
        let f = flow(proto, cp, sp);
        let m = Masq {
            proto,
            addr: maddr,
            port: mport,
        };
        t.install(f, m);
        let n = rng.below(300);
        let payload = rng.bytes(n);
        let mut out = if proto == 6 {
            tcp_pkt(CLIENT, cp, SERVER, sp, &payload)
        } else {
            udp_pkt(CLIENT, cp, SERVER, sp, &payload)
        };
        assert_eq!(t.outbound(&mut out), Ok(m));
        assert_eq!(check(&out), (maddr, mport, SERVER, sp));
        // The server's answer to what it saw.
        let mut back = if proto == 6 {
            tcp_pkt(SERVER, sp, maddr, mport, &payload)
        } else {
            udp_pkt(SERVER, sp, maddr, mport, &payload)
        };
        assert_eq!(t.inbound(&mut back), Ok(f));
        assert_eq!(check(&back), (SERVER, sp, CLIENT, cp));
        t.remove(&f);
    }
    assert!(t.is_empty());
}

#[test]
fn inbound_only_from_the_flows_server_and_a_zero_udp_checksum_stays_zero() {
    let mut t = FamTable::new();
    let f = flow(17, 5000, 53);
    let m = Masq {
        proto: 17,
        addr: MASQ,
        port: 40000,
    };
    t.install(f, m);
    let mut other = udp_pkt(Ipv4Addr::new(192, 0, 2, 81), 53, MASQ, 40000, b"x");
    let before = other.clone();
    assert_eq!(t.inbound(&mut other), Err(MasqMiss::NoEntry));
    assert_eq!(other, before, "a refused packet is not touched");
    let mut wrong_port = udp_pkt(SERVER, 54, MASQ, 40000, b"x");
    assert_eq!(t.inbound(&mut wrong_port), Err(MasqMiss::NoEntry));
    // No checksum: still none after the rewrite.
    let mut out = udp_pkt(CLIENT, 5000, SERVER, 53, b"query");
    out[26] = 0;
    out[27] = 0;
    t.outbound(&mut out).unwrap();
    assert_eq!(&out[26..28], &[0, 0]);
    assert_eq!(&out[12..16], &MASQ.octets());
    assert!(ipv4::Packet::new_checked(&out[..])
        .unwrap()
        .verify_checksum());
    // A miss is a miss, not a rewrite.
    let mut unknown = udp_pkt(CLIENT, 5001, SERVER, 53, b"q");
    let before = unknown.clone();
    assert_eq!(t.outbound(&mut unknown), Err(MasqMiss::NoEntry));
    assert_eq!(unknown, before);
}

#[test]
fn a_moved_flow_gets_the_same_source_from_every_fam() {
    let f = flow(6, 40000, 443);
    let m = Masq {
        proto: 6,
        addr: MASQ,
        port: 0x1234,
    };
    let mut seen = Vec::new();
    for _node in 0..3 {
        let mut t = FamTable::new();
        t.install(f, m);
        let mut p = tcp_pkt(CLIENT, 40000, SERVER, 443, b"data");
        t.outbound(&mut p).unwrap();
        seen.push(check(&p));
    }
    assert!(seen.iter().all(|s| *s == (MASQ, 0x1234, SERVER, 443)));
}

#[test]
fn malformed_packets_are_refused_never_a_panic() {
    let mut t = FamTable::new();
    t.install(
        flow(6, 1, 2),
        Masq {
            proto: 6,
            addr: MASQ,
            port: 3,
        },
    );
    let mut h = HamTable::new();
    h.set(
        Masq {
            proto: 6,
            addr: MASQ,
            port: 3,
        },
        Some(Route::Node(1)),
    );
    let good = tcp_pkt(CLIENT, 1, SERVER, 2, b"abc");
    for n in 0..good.len() {
        let mut cut = good[..n].to_vec();
        assert!(t.outbound(&mut cut).is_err());
        assert!(t.inbound(&mut cut).is_err());
        assert!(h.route(&cut).is_err());
    }
    let mut rng = Rng(7);
    for _ in 0..2000 {
        let mut p = good.clone();
        let i = rng.below(p.len());
        p[i] ^= 1 << rng.below(8);
        let _ = t.outbound(&mut p);
        let _ = t.inbound(&mut p);
        let _ = h.route(&p);
    }
    // A fragment.
    let mut frag = good.clone();
    frag[6] |= 0x20; // more fragments
    let ck = crate::wire::checksum::update16(
        u16::from_be_bytes([good[10], good[11]]),
        u16::from_be_bytes([good[6], good[7]]),
        u16::from_be_bytes([frag[6], frag[7]]),
    );
    frag[10..12].copy_from_slice(&ck.to_be_bytes());
    assert_eq!(t.outbound(&mut frag), Err(MasqMiss::Malformed));
    // ICMP is not masqueraded here.
    let mut icmp = ip(CLIENT, SERVER, IpProtocol::Icmp, &[8, 0, 0, 0, 0, 1, 0, 1]);
    assert_eq!(t.outbound(&mut icmp), Err(MasqMiss::Protocol));
}

fn node_sa(spi: u32, local: &str, remote: &str) -> SaParams {
    let alg = EspAlg::Aead(AeadAlg::AesGcm256);
    let keymat: Vec<u8> = (0..alg.keymat_len()).map(|i| (i as u8) ^ 0x5c).collect();
    SaParams {
        id: SaId(spi),
        spi: Spi(spi),
        keys: SaKeys::from_keymat(alg, &keymat).unwrap(),
        esn: true,
        replay_window: 64,
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
        encap: None,
        local_ts: "0.0.0.0/0".parse::<Prefix>().unwrap(),
        remote_ts: "0.0.0.0/0".parse::<Prefix>().unwrap(),
        outer_ttl: 64,
        resume: Default::default(),
        checkpoint: None,
        lifetime: Default::default(),
    }
}

fn backend() -> Backend {
    [Backend::IpsecMb, Backend::Ring]
        .into_iter()
        .find(|b| crate::crypto::available(*b))
        .unwrap()
}

/// The HAM (203.0.113.1) gets the server's answer to a flow whose client now talks through
/// the FAM (203.0.113.2): it forwards it in ESP, the FAM opens it and rewrites it to the
/// client; a replay of the ESP packet is refused; a tampered one does not open.
#[test]
fn ham_forwards_in_esp_and_the_fam_delivers_to_the_client() {
    let f = flow(6, 40000, 443);
    let m = Masq {
        proto: 6,
        addr: MASQ,
        port: 0x1234,
    };
    let mut ham = HamTable::new();
    ham.set(m, Some(Route::Node(2)));
    let mut fam = FamTable::new();
    fam.install(f, m);

    let ham_out = node_sa(0xa000_0001, "203.0.113.1", "203.0.113.2");
    let mut fam_in = ham_out.clone();
    core::mem::swap(&mut fam_in.local, &mut fam_in.remote);
    let mut sa = build_outbound(backend(), &ham_out).unwrap();
    let mut sad = Sad::with_capacity(4, 9);
    sad.insert_inbound(build_inbound(backend(), &fam_in).unwrap());

    let answer = tcp_pkt(SERVER, 443, MASQ, 0x1234, b"hello client");
    assert_eq!(ham.route(&answer), Ok(Route::Node(2)));
    let mut frame = MemFrame::from_bytes(&answer).unwrap();
    seal_to_fam(&mut sa, &mut frame).unwrap();
    let wire = frame.data().to_vec();
    let outer = ipv4::Packet::new_checked(&wire[..]).unwrap();
    assert_eq!(outer.next_header(), IpProtocol::Esp);
    assert_eq!(outer.src_addr(), Ipv4Addr::new(203, 0, 113, 1));
    assert_eq!(outer.dst_addr(), Ipv4Addr::new(203, 0, 113, 2));
    assert!(
        !wire.windows(12).any(|w| w == b"hello client"),
        "the payload is encrypted"
    );

    let mut at_fam = MemFrame::from_bytes(&wire).unwrap();
    open_from_ham(&mut sad, &mut at_fam, 1).unwrap();
    assert_eq!(
        at_fam.data(),
        &answer[..],
        "the FAM gets the packet unchanged"
    );
    let mut inner = at_fam.data().to_vec();
    assert_eq!(fam.inbound(&mut inner), Ok(f));
    assert_eq!(check(&inner), (SERVER, 443, CLIENT, 40000));

    let mut replay = MemFrame::from_bytes(&wire).unwrap();
    assert_eq!(
        open_from_ham(&mut sad, &mut replay, 2),
        Err(DropReason::ReplayDuplicate)
    );
    let mut tampered_bytes = wire.clone();
    let last = tampered_bytes.len() - 1;
    tampered_bytes[last] ^= 1;
    let mut tampered = MemFrame::from_bytes(&tampered_bytes).unwrap();
    assert!(open_from_ham(&mut sad, &mut tampered, 3).is_err());
}

#[test]
fn ham_routes_follow_updates() {
    let m = Masq {
        proto: 17,
        addr: MASQ,
        port: 5000,
    };
    let mut h = HamTable::new();
    let p = udp_pkt(SERVER, 53, MASQ, 5000, b"a");
    assert_eq!(h.route(&p), Err(MasqMiss::NoEntry));
    h.set(m, Some(Route::Local));
    assert_eq!(h.route(&p), Ok(Route::Local));
    h.set(m, Some(Route::Node(3)));
    assert_eq!(h.route(&p), Ok(Route::Node(3)));
    h.set(m, None);
    assert_eq!(h.route(&p), Err(MasqMiss::NoEntry));
    // TCP to the same port is another connection.
    h.set(m, Some(Route::Local));
    let t = tcp_pkt(SERVER, 53, MASQ, 5000, b"a");
    assert_eq!(h.route(&t), Err(MasqMiss::NoEntry));
}
