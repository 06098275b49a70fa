//! Group SAs (RFC 9838) through whole workers: members A, B, C (LANs 10.n.0.0/24, WAN
//! addresses 192.0.2.n) share one group SA; each seals with its own Sender-ID and counter.

use super::*;
use crate::crypto::{esp_nonce, new_aead, Backend};
use crate::esp::group::{iv as group_iv, GroupPeer, GroupSaParams};

const GROUP: SaId = SaId(1 << 20);
const GEN1: u32 = 0xff00_0001;
const GEN2: u32 = 0xff00_0002;
const BITS: u8 = 8;

fn keymat(generation: u32) -> Vec<u8> {
    (0..20u8).map(|i| i ^ generation as u8).collect()
}

fn group_sa(spi: u32, sender: Option<u32>, send: bool) -> GroupSaParams {
    GroupSaParams {
        id: GROUP,
        spi: Spi(spi),
        keys: SaKeys::from_keymat(AeadAlg::AesGcm128, &keymat(spi)).unwrap(),
        sender_id: sender,
        sender_id_bits: BITS,
        replay_window: 64,
        src_ts: "10.0.0.0/8".parse().unwrap(),
        dst_ts: "10.0.0.0/8".parse().unwrap(),
        send,
    }
}

/// Member `n` of the group (three members, 1..=3), registered on generation 1 with Sender-ID
/// `10 + n`, sending.
fn member(n: u8) -> Rig {
    let (lan, lan_gw) = cable("host", "lan", 256);
    let (wan_gw, wan) = cable("wan", "peer", 256);
    let (agent, control) = agent::link(0, 64, None);
    let w = Worker::new(
        0,
        lan_gw,
        wan_gw,
        Link {
            mac: LAN_MAC,
            neighbor: HOST_MAC,
            addr4: Some(Ipv4Addr::new(10, n, 0, 1)),
            addr6: None,
            mtu: 1500,
        },
        Link {
            mac: WAN_MAC,
            neighbor: PEER_MAC,
            addr4: Some(Ipv4Addr::new(192, 0, 2, n)),
            addr6: None,
            mtu: 1500,
        },
        Sad::with_capacity(8, 3),
        Box::new(Spd::new(Vec::new()).unwrap()),
        control,
    );
    let mut r = Rig {
        w,
        lan,
        wan,
        agent,
        clock: 0,
    };
    r.update(Update::ReplaceSpd {
        rules: vec![Rule {
            id: 0,
            selector: sel(&format!("10.{n}.0.0/24"), "10.0.0.0/8"),
            action: Action::Protect(GROUP),
        }],
    });
    r.update(Update::SetGroupPeers {
        id: GROUP,
        local: IpAddr::V4(Ipv4Addr::new(192, 0, 2, n)),
        outer_ttl: 64,
        peers: (1..=3u8)
            .filter(|m| *m != n)
            .map(|m| GroupPeer {
                lan: format!("10.{m}.0.0/24").parse().unwrap(),
                outer: IpAddr::V4(Ipv4Addr::new(192, 0, 2, m)),
            })
            .collect(),
        rekey_multicast: None,
    });
    r.update(Update::AddGroupSa {
        params: group_sa(GEN1, Some(10 + u32::from(n)), true),
    });
    r
}

trait Dup {
    fn dup(&self) -> MemFrame;
}

impl Dup for MemFrame {
    /// A copy of the frame (a replay).
    fn dup(&self) -> MemFrame {
        let mut f = MemFrame::new();
        assert!(f.append(self.len()));
        f.data_mut().copy_from_slice(self.data());
        f
    }
}

/// What a sealed frame carries: outer destination, SPI, sequence number, IV.
fn esp_of(f: &MemFrame) -> (Ipv4Addr, u32, u32, [u8; 8]) {
    let ip = outer_ipv4(f);
    assert_eq!(ip.next_header(), IpProtocol::Esp);
    let e = ip.payload();
    (
        ip.dst_addr(),
        u32::from_be_bytes(e[0..4].try_into().unwrap()),
        u32::from_be_bytes(e[4..8].try_into().unwrap()),
        e[8..16].try_into().unwrap(),
    )
}

/// Member `from` seals one packet to a host on member `to`'s LAN; returns the WAN frame.
fn seal(m: &mut Rig, from: u8, to: u8) -> Option<MemFrame> {
    m.send_lan(&format!("10.{from}.0.10"), &format!("10.{to}.0.10"), 100);
    m.wan.recv()
}

/// Delivers a sealed frame to member `m`'s WAN; returns what reached its LAN.
fn deliver(m: &mut Rig, mut f: MemFrame) -> Option<MemFrame> {
    readdress(&mut f, WAN_MAC, PEER_MAC);
    assert!(m.wan.send(f).is_ok());
    m.w.poll(2);
    m.lan.recv()
}

#[test]
fn sealed_by_a_opens_at_b_as_standard_rfc4106_esp() {
    let (mut a, mut b) = (member(1), member(2));
    let f = seal(&mut a, 1, 2).expect("sealed on the group SA");
    let (dst, spi, seq, iv) = esp_of(&f);
    assert_eq!(
        dst,
        Ipv4Addr::new(192, 0, 2, 2),
        "outer destination: member B"
    );
    assert_eq!(outer_ipv4(&f).src_addr(), Ipv4Addr::new(192, 0, 2, 1));
    assert_eq!((spi, seq), (GEN1, 1));
    assert_eq!(
        iv,
        group_iv(11, BITS, 1),
        "Sender-ID 11 on top, counter 1 below"
    );
    assert_eq!(iv[0], 11);
    // An independent open: plain AES-GCM with the RFC 4106 nonce (salt | IV) and AAD
    // SPI | seq, as tshark does it.
    {
        let ip = outer_ipv4(&f);
        let e = ip.payload();
        let km = keymat(GEN1);
        let aead = new_aead(Backend::Ring, AeadAlg::AesGcm128, &km[..16]).unwrap();
        let salt: [u8; 4] = km[16..20].try_into().unwrap();
        let (ct, tag) = e[16..].split_at(e.len() - 16 - 16);
        let mut ct = ct.to_vec();
        aead.open_in_place(
            &esp_nonce(&salt, &iv),
            &e[..8],
            &mut ct,
            tag.try_into().unwrap(),
        )
        .expect("standard ESP");
        assert_eq!(*ct.last().unwrap(), 4, "next header IPv4");
    }
    let inner = deliver(&mut b, f).expect("opened at B, on its LAN");
    let ip = ipv4::Packet::new_checked(&inner.data()[ethernet::HEADER_LEN..]).unwrap();
    assert_eq!(ip.src_addr(), Ipv4Addr::new(10, 1, 0, 10));
    assert_eq!(ip.dst_addr(), Ipv4Addr::new(10, 2, 0, 10));
    assert_eq!(b.w.counters.traffic(Traffic::Decrypted), 1);
    // To member C's LAN: the outer destination is C's address, the counter goes on.
    let f = seal(&mut a, 1, 3).unwrap();
    assert_eq!(esp_of(&f).0, Ipv4Addr::new(192, 0, 2, 3));
    assert_eq!(esp_of(&f).2, 2);
    // A destination in no member's LAN (but in the group's selectors): dropped, counted.
    assert!(seal(&mut a, 1, 9).is_none());
    assert_eq!(a.drops(DropReason::GroupNoPeer), 1);
}

#[test]
fn two_senders_same_counter_distinct_ivs_and_replay_per_sender() {
    let (mut a, mut b, mut c) = (member(1), member(2), member(3));
    let mut ivs = std::collections::HashSet::new();
    let (mut from_a, mut from_c) = (Vec::new(), Vec::new());
    for i in 1..=50u32 {
        let fa = seal(&mut a, 1, 2).unwrap();
        let fc = seal(&mut c, 3, 2).unwrap();
        let (ea, ec) = (esp_of(&fa), esp_of(&fc));
        assert_eq!((ea.2, ec.2), (i, i), "each sender counts on its own");
        assert!(ivs.insert(ea.3) && ivs.insert(ec.3), "an IV seen twice");
        from_a.push(fa);
        from_c.push(fc);
    }
    // B opens every packet of both senders, interleaved and out of order within the window.
    for (fa, fc) in from_a.iter().rev().zip(from_c.iter()) {
        assert!(deliver(&mut b, fa.dup()).is_some());
        assert!(deliver(&mut b, fc.dup()).is_some());
    }
    // Each one again: refused by that sender's window.
    let before = b.drops(DropReason::ReplayDuplicate);
    assert!(deliver(&mut b, from_a[7].dup()).is_none());
    assert!(deliver(&mut b, from_c[7].dup()).is_none());
    assert_eq!(b.drops(DropReason::ReplayDuplicate), before + 2);
    // A's window does not hold C back: C's next packet opens though A is ahead of it.
    for _ in 0..100 {
        seal(&mut a, 1, 2).map(|f| deliver(&mut b, f).unwrap());
    }
    let fc = seal(&mut c, 3, 2).unwrap();
    assert_eq!(esp_of(&fc).2, 51);
    assert!(deliver(&mut b, fc).is_some());
    // A forged packet (C's IV turned into another Sender-ID) fails the ICV and creates no
    // window: the replay count does not move, the auth count does.
    let mut forged = seal(&mut c, 3, 2).unwrap();
    forged.data_mut()[ethernet::HEADER_LEN + 20 + 8] = 99;
    let auth = b.drops(DropReason::AuthFailed);
    assert!(deliver(&mut b, forged).is_none());
    assert_eq!(b.drops(DropReason::AuthFailed), auth + 1);
    // The (rate-limited) events name the group SA.
    b.agent.pump();
    let ev: Vec<_> = b.agent.take_events().into_iter().collect();
    assert!(
        ev.iter().any(|e| matches!(e,
            Event::ReplayFailures { id, spi, count, .. } if *id == GROUP && spi.0 == GEN1 && *count >= 1)),
        "{ev:?}"
    );
}

#[test]
fn rekey_old_and_new_coexist_then_removal() {
    let (mut a, mut b) = (member(1), member(2));
    // The rekey arrives: both install generation 2, receiving only.
    for (m, n) in [(&mut a, 11), (&mut b, 12)] {
        m.update(Update::AddGroupSa {
            params: group_sa(GEN2, Some(n), false),
        });
    }
    let old = seal(&mut a, 1, 2).unwrap();
    assert_eq!(esp_of(&old).1, GEN1, "before the ATD: still the old SA");
    // After the ATD A sends on the new one; B opens both, the old one in flight included.
    a.update(Update::SendOnGroupSa {
        id: GROUP,
        spi: Spi(GEN2),
    });
    let new = seal(&mut a, 1, 2).unwrap();
    let (_, spi, seq, iv) = esp_of(&new);
    assert_eq!((spi, seq), (GEN2, 1), "a new key, a new counter");
    assert_eq!(iv[0], 11, "the Sender-ID stays across rekeys");
    assert!(deliver(&mut b, new).is_some());
    assert!(deliver(&mut b, old.dup()).is_some());
    // The DTD: the old generation goes; a late old packet is an unknown SPI.
    b.update(Update::DeleteGroupSa { spi: Spi(GEN1) });
    let late = seal(&mut a, 1, 2).unwrap();
    assert!(deliver(&mut b, late).is_some(), "the new SA still works");
    let unknown = b.drops(DropReason::UnknownSpi);
    assert!(deliver(&mut b, old).is_none());
    assert_eq!(b.drops(DropReason::UnknownSpi), unknown + 1);
    // Installing a generation twice is refused (its counter would start over).
    let g = a.agent.send(
        agent::prepare(
            crate::crypto::best_backend(),
            &Update::AddGroupSa {
                params: group_sa(GEN2, Some(11), true),
            },
        )
        .unwrap(),
    );
    for _ in 0..10 {
        a.w.poll(3);
        a.agent.pump();
    }
    assert!(a
        .agent
        .rejections()
        .iter()
        .any(|(gen, why)| *gen == g && why.contains("already installed")));
    let (_, _, seq, _) = esp_of(&seal(&mut a, 1, 2).unwrap());
    assert_eq!(seq, 3, "the counter went on");
    // Removal of the sending generation: the group sends nothing until another is named.
    a.update(Update::DeleteGroupSa { spi: Spi(GEN2) });
    a.update(Update::DeleteGroupSa { spi: Spi(GEN1) });
    assert!(seal(&mut a, 1, 2).is_none());
    assert_eq!(a.drops(DropReason::NoSa), 1, "no group left: no SA");
    a.update(Update::AddGroupSa {
        params: group_sa(0xff00_0003, Some(11), false),
    });
    assert!(seal(&mut a, 1, 2).is_none());
    assert_eq!(a.drops(DropReason::GroupNotSending), 1);
    assert!(
        a.agent.released >= 2,
        "removed generations went back to the agent"
    );
}

#[test]
fn a_receive_only_member_opens_but_never_sends() {
    let (mut a, mut b) = (member(1), member(2));
    b.update(Update::DeleteGroupSa { spi: Spi(GEN1) });
    b.update(Update::AddGroupSa {
        params: group_sa(GEN1, None, false),
    });
    assert!(deliver(&mut b, seal(&mut a, 1, 2).unwrap()).is_some());
    assert!(seal(&mut b, 2, 1).is_none());
    assert_eq!(b.drops(DropReason::GroupNotSending), 1);
}

#[test]
fn counter_exhaustion_warns_then_refuses_never_reusing_an_iv() {
    let mut a = member(1);
    a.w.groups
        .set_sender_last(Spi(GEN1), u64::from(u32::MAX) - (1 << 24) - 1);
    let f = seal(&mut a, 1, 2).unwrap();
    assert_eq!(esp_of(&f).2, u32::MAX - (1 << 24));
    a.agent.pump();
    let ev: Vec<_> = a.agent.take_events().into_iter().collect();
    assert!(
        ev.iter().any(|e| matches!(e,
            Event::SeqNearWrap { id, spi, limit, .. }
                if *id == GROUP && spi.0 == GEN1 && *limit == u64::from(u32::MAX))),
        "{ev:?}"
    );
    a.w.groups
        .set_sender_last(Spi(GEN1), u64::from(u32::MAX) - 1);
    let last = seal(&mut a, 1, 2).unwrap();
    assert_eq!(esp_of(&last).2, u32::MAX);
    for _ in 0..3 {
        assert!(seal(&mut a, 1, 2).is_none());
    }
    assert_eq!(a.drops(DropReason::SeqExhausted), 3);
}

/// Member B with two workers: the group's generations live on the worker the SPI names
/// (worker 1: every group SPI starts 0xff), LAN frames reaching worker 0 go there to be
/// sealed, group ESP reaching worker 0 goes there to be opened. One counter, one set of
/// windows.
#[test]
fn with_two_workers_the_spi_owner_holds_the_group() {
    use crate::handoff::{mesh, spi_owner};
    assert_eq!(spi_owner(Spi(GEN1), 2), 1);
    assert_eq!(spi_owner(Spi(0xff7f_ffff), 4), 3);
    let mut a = member(1);
    let mut ends = mesh(2, 8, 64).into_iter();
    let mut ws: Vec<Rig> = (0..2u16)
        .map(|id| {
            let (lan, lan_gw) = cable("host", "lan", 256);
            let (wan_gw, wan) = cable("wan", "peer", 256);
            let (agent, control) = agent::link(id, 64, None);
            let mut w = Worker::new(
                id,
                lan_gw,
                wan_gw,
                Link {
                    mac: LAN_MAC,
                    neighbor: HOST_MAC,
                    addr4: Some(Ipv4Addr::new(10, 2, 0, 1)),
                    addr6: None,
                    mtu: 1500,
                },
                Link {
                    mac: WAN_MAC,
                    neighbor: PEER_MAC,
                    addr4: Some(Ipv4Addr::new(192, 0, 2, 2)),
                    addr6: None,
                    mtu: 1500,
                },
                Sad::with_capacity(8, 3),
                Box::new(Spd::new(Vec::new()).unwrap()),
                control,
            );
            w.set_handoff(ends.next().unwrap());
            let mut r = Rig {
                w,
                lan,
                wan,
                agent,
                clock: 0,
            };
            r.update(Update::ReplaceSpd {
                rules: vec![Rule {
                    id: 0,
                    selector: sel("10.2.0.0/24", "10.0.0.0/8"),
                    action: Action::Protect(GROUP),
                }],
            });
            r.update(Update::SetGroupPeers {
                id: GROUP,
                local: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
                outer_ttl: 64,
                peers: vec![GroupPeer {
                    lan: "10.1.0.0/24".parse().unwrap(),
                    outer: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                }],
                rekey_multicast: None,
            });
            r
        })
        .collect();
    ws[1].update(Update::AddGroupSa {
        params: group_sa(GEN1, Some(12), true),
    });
    // Three packets from worker 0's LAN and two from worker 1's: one counter, 1..=5.
    let mut seqs = Vec::new();
    for w in [0usize, 0, 1, 0, 1] {
        ws[w].send_lan("10.2.0.10", "10.1.0.10", 100);
        ws[1].w.poll(2);
        let f = ws[1].wan.recv().expect("sealed by the owner");
        assert!(ws[0].wan.recv().is_none());
        seqs.push(esp_of(&f).2);
        assert!(deliver(&mut a, f).is_some(), "A opens B's packet");
    }
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(ws[0].w.counters.traffic(Traffic::HandedOff), 3);
    // Group ESP from A reaching worker 0 is opened by worker 1.
    let f = seal(&mut a, 1, 2).unwrap();
    assert!(deliver(&mut ws[0], f).is_none());
    ws[1].w.poll(3);
    assert!(ws[1].lan.recv().is_some(), "opened by the owner");
    assert_eq!(ws[1].w.counters.traffic(Traffic::Decrypted), 1);
}

/// A 4,000-byte IKE datagram (UDP 500 -> 500, a removal's rekey for many members) from the
/// GCKS to `dst`, as the WAN's IP fragments (made by another worker's transmit path).
fn big_ike_to(r: &mut Rig, dst: &str) {
    let mut a = super::rig(1500);
    let (mut tx, tx_rx) = rtrb::RingBuffer::new(8);
    a.w.control.transmit = Some(tx_rx);
    tx.push(Datagram {
        src: "192.0.2.1".parse().unwrap(),
        dst: dst.parse().unwrap(),
        src_port: 500,
        dst_port: 500,
        payload: (0..4000u32).map(|i| (i % 251) as u8).collect(),
    })
    .unwrap();
    a.w.poll(0);
    let mut frames = Vec::new();
    a.wan.rx_burst(&mut frames, 8);
    assert_eq!(frames.len(), 3, "fragments");
    for f in frames {
        assert!(r.wan.send(f).is_ok());
    }
    r.w.poll(r.clock);
}

#[test]
fn a_fragmented_rekey_to_the_group_s_multicast_address_is_reassembled_and_punted() {
    let mut r = member(1);
    r.w.set_reassembly(Some(crate::reasm::ReasmConfig::default()))
        .unwrap();
    let (punt_tx, mut punted) = rtrb::RingBuffer::new(8);
    r.w.control.punt = Some(punt_tx);
    // Before the group names the address, its fragments are transit traffic, not ours.
    big_ike_to(&mut r, "239.192.0.1");
    assert!(
        punted.pop().is_err(),
        "punted before the group named the address"
    );
    let peers = |a: Option<&str>| Update::SetGroupPeers {
        id: GROUP,
        local: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        outer_ttl: 64,
        peers: vec![GroupPeer {
            lan: "10.2.0.0/24".parse().unwrap(),
            outer: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
        }],
        rekey_multicast: a.map(|a| a.parse().unwrap()),
    };
    r.update(peers(Some("239.192.0.1")));
    big_ike_to(&mut r, "239.192.0.1");
    let d = punted.pop().expect("the rekey is reassembled and punted");
    assert_eq!(d.dst, "239.192.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(d.payload.len(), 4000);
    // Another group's address is not ours.
    big_ike_to(&mut r, "239.192.0.2");
    assert!(punted.pop().is_err());
    // The address goes when the group no longer names it.
    r.update(peers(None));
    big_ike_to(&mut r, "239.192.0.1");
    assert!(punted.pop().is_err());
}
