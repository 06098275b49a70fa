//! A client's host binding on probation (`worker::dual`): the gateway path and a copy on the
//! direct SA, until proven (direct only) or removed (gateway only).

use super::*;

const GW: &str = "192.0.2.2";
const PEER: &str = "198.51.100.10";
const GW_SPI: u32 = 0xa003;
const DIRECT_SPI: u32 = 0xff80_0001;

/// A client with virtual IP 10.99.0.5: its gateway SA (id 3) carries 10.99.0.5 -> anything,
/// its direct SA to the peer (id 5) 10.99.0.5 -> 10.99.0.6.
fn client() -> Rig {
    let mut c = rig(1500);
    c.update(Update::AddSa {
        dir: Direction::Outbound,
        params: sa(3, GW_SPI, "192.0.2.1", GW, "10.99.0.5/32", "0.0.0.0/0"),
    });
    c.update(Update::AddSa {
        dir: Direction::Outbound,
        params: sa(
            5,
            DIRECT_SPI,
            "192.0.2.1",
            PEER,
            "10.99.0.5/32",
            "10.99.0.6/32",
        ),
    });
    c.update(Update::ReplaceSpd {
        rules: vec![
            Rule {
                id: 0,
                selector: sel("10.99.0.5/32", "0.0.0.0/0"),
                action: Action::Protect(SaId(3)),
            },
            Rule {
                id: 1,
                selector: sel("0.0.0.0/0", "0.0.0.0/0"),
                action: Action::Discard,
            },
        ],
    });
    c.update(Update::SetVirtualIp {
        config: Some(MasqueradeConfig {
            external_addr: "10.99.0.5".parse().unwrap(),
            ..MasqueradeConfig::default()
        }),
    });
    c
}

fn probation(c: &mut Rig, src: &str) {
    c.update(Update::BindHostDual {
        dst: "10.99.0.6".parse().unwrap(),
        src: src.parse().unwrap(),
        sa: SaId(5),
    });
}

/// What left the WAN port: (outer destination, SPI) of each frame, and the frames.
fn sent(c: &mut Rig) -> (Vec<(String, u32)>, Vec<MemFrame>) {
    let frames: Vec<MemFrame> = std::iter::from_fn(|| c.wan.recv()).collect();
    let ids = frames
        .iter()
        .map(|f| {
            let ip = outer_ipv4(f);
            let spi = u32::from_be_bytes(ip.payload()[0..4].try_into().unwrap());
            (ip.dst_addr().to_string(), spi)
        })
        .collect();
    (ids, frames)
}

fn gw() -> (String, u32) {
    (GW.to_string(), GW_SPI)
}

fn direct() -> (String, u32) {
    (PEER.to_string(), DIRECT_SPI)
}

#[test]
fn probation_sends_on_both_paths_until_proven_or_removed() {
    let mut c = client();
    // No binding: the gateway path.
    c.send_lan("10.1.0.10", "10.99.0.6", 100);
    assert_eq!(sent(&mut c).0, vec![gw()]);

    // On probation: the original on the gateway path, a copy on the direct SA, both
    // masqueraded to the virtual IP; the host that holds the virtual IP gets the same.
    probation(&mut c, "10.99.0.5/32");
    c.send_lan("10.1.0.10", "10.99.0.6", 100);
    let (ids, _) = sent(&mut c);
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&gw()) && ids.contains(&direct()), "{ids:?}");
    c.send_lan("10.99.0.5", "10.99.0.6", 100);
    let (ids, _) = sent(&mut c);
    assert!(ids.contains(&gw()) && ids.contains(&direct()), "{ids:?}");
    let s = c.w.counters.snapshot();
    assert_eq!(s.traffic(Traffic::DualPathCopies), 2);
    assert_eq!(s.traffic(Traffic::Encrypted), 5);
    // Other destinations are untouched.
    c.send_lan("10.1.0.10", "10.99.0.7", 100);
    assert_eq!(sent(&mut c).0, vec![gw()]);
    let sa5 = c.w.sad().outbound(SaId(5)).unwrap();
    assert_eq!(sa5.seq, 2, "two copies, sequence numbers 1 and 2");

    // Proven: direct only (the same SA goes on numbering).
    c.update(Update::BindHost {
        dst: "10.99.0.6".parse().unwrap(),
        src: "10.99.0.5/32".parse().unwrap(),
        sa: SaId(5),
    });
    c.send_lan("10.1.0.10", "10.99.0.6", 100);
    assert_eq!(sent(&mut c).0, vec![direct()]);
    assert_eq!(c.w.sad().outbound(SaId(5)).unwrap().seq, 3);

    // On probation again, then removed: the gateway path only.
    probation(&mut c, "10.99.0.5/32");
    c.send_lan("10.1.0.10", "10.99.0.6", 100);
    assert_eq!(sent(&mut c).0.len(), 2);
    c.update(Update::UnbindHost {
        dst: "10.99.0.6".parse().unwrap(),
    });
    c.send_lan("10.1.0.10", "10.99.0.6", 100);
    assert_eq!(sent(&mut c).0, vec![gw()]);
    assert_eq!(c.w.counters.traffic(Traffic::DualPathCopies), 3);
    for r in [
        DropReason::DualPathQueueFull,
        DropReason::DualPathNoBuffer,
        DropReason::DualPathMtuExceeded,
    ] {
        assert_eq!(c.drops(r), 0, "{r:?}");
    }
}

#[test]
fn a_source_the_binding_does_not_allow_gets_no_copy() {
    let mut c = client();
    probation(&mut c, "10.99.0.9/32");
    c.send_lan("10.1.0.10", "10.99.0.6", 100);
    c.send_lan("10.99.0.5", "10.99.0.6", 100);
    assert_eq!(sent(&mut c).0, vec![gw(), gw()]);
    assert_eq!(c.w.counters.traffic(Traffic::DualPathCopies), 0);
    assert_eq!(c.w.sad().outbound(SaId(5)).unwrap().seq, 0);
}

/// The peer opens both: its application gets the packet twice, byte for byte.
#[test]
fn the_receiver_opens_the_original_and_the_copy_alike() {
    let mut c = client();
    probation(&mut c, "10.99.0.5/32");
    c.send_lan("10.1.0.10", "10.99.0.6", 300);
    let (ids, frames) = sent(&mut c);
    assert_eq!(ids.len(), 2);
    // The peer: the gateway's hairpin SA (here: straight from the client) and the direct SA,
    // the rig's keys on both.
    let mut p = rig(1500);
    p.update(Update::AddSa {
        dir: Direction::Inbound,
        params: sa(7, GW_SPI, GW, "192.0.2.1", "0.0.0.0/0", "10.99.0.5/32"),
    });
    p.update(Update::AddSa {
        dir: Direction::Inbound,
        params: sa(
            8,
            DIRECT_SPI,
            PEER,
            "192.0.2.1",
            "10.99.0.6/32",
            "10.99.0.5/32",
        ),
    });
    let mut inner = Vec::new();
    for mut f in frames {
        readdress(&mut f, WAN_MAC, PEER_MAC);
        assert!(p.wan.send(f).is_ok());
        p.w.poll(2);
        let out = p.lan.recv().expect("opened");
        inner.push(out.data()[ethernet::HEADER_LEN..].to_vec());
    }
    assert_eq!(inner[0], inner[1], "the same packet twice");
    let ip = ipv4::Packet::new_checked(&inner[0][..]).unwrap();
    assert_eq!(ip.src_addr(), "10.99.0.5".parse::<Ipv4Addr>().unwrap());
    assert_eq!(p.w.counters.traffic(Traffic::Decrypted), 2);
}

/// Nobody reads the WAN: the copies are what gives way (each counted), never an original, and
/// what was taken from the LAN all leaves once the WAN drains.
#[test]
fn a_full_wan_queue_drops_copies_never_originals() {
    let mut c = client();
    probation(&mut c, "10.99.0.5/32");
    let mut g = crate::traffic::Generator::new(
        vec![crate::traffic::FlowSpec {
            src_mac: HOST_MAC,
            dst_mac: LAN_MAC,
            src: "10.1.0.10".parse().unwrap(),
            dst: "10.99.0.6".parse().unwrap(),
            src_port: 1234,
            dst_port: 5001,
        }],
        &[100],
    );
    // Bursts of 64: the worker takes a full burst at a time.
    let mut offered = 0u64;
    'offer: for _ in 0..20 {
        for _ in 0..64 {
            let mut f = MemFrame::new();
            g.fill(&mut f, 0);
            if c.lan.send(f).is_err() {
                break 'offer;
            }
            offered += 1;
        }
        c.w.poll(1);
    }
    let queued_full = c.drops(DropReason::DualPathQueueFull);
    assert!(queued_full > 0, "the queue reached its level");
    // Drain: every offered packet leaves on the gateway path.
    let (mut to_gw, mut to_peer) = (0u64, 0u64);
    for t in 0..10_000u64 {
        let (ids, _) = sent(&mut c);
        to_gw += ids.iter().filter(|i| **i == gw()).count() as u64;
        to_peer += ids.iter().filter(|i| **i == direct()).count() as u64;
        if to_gw == offered {
            break;
        }
        c.w.poll(2 + t);
    }
    let (ids, _) = sent(&mut c);
    to_peer += ids.iter().filter(|i| **i == direct()).count() as u64;
    let s = c.w.counters.snapshot();
    assert_eq!(to_gw, offered, "every original left");
    assert_eq!(to_peer, s.traffic(Traffic::DualPathCopies));
    assert_eq!(
        to_peer + queued_full,
        offered,
        "each packet: a copy or a counted drop"
    );
    let other: u64 = DropReason::ALL
        .iter()
        .filter(|r| **r != DropReason::DualPathQueueFull)
        .map(|r| c.drops(*r))
        .sum();
    assert_eq!(other, 0, "no other drop");
}
