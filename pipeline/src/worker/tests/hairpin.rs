use super::*;

/// Road warrior A (192.0.2.2, virtual IP 10.99.0.1) seals toward the gateway on SPI 0xc001;
/// the gateway sends to road warrior B (192.0.2.3, 10.99.0.2) on SPI 0xd002 (SA id 11). Both
/// CHILD_SAs carry 10.0.0.0/8 on the gateway's side, as a gateway whose `local_ts` covers its
/// pool negotiates them.
pub(super) fn gateway_with_two_clients(wan_mtu: u16) -> Rig {
    let mut g = rig(wan_mtu);
    g.update(Update::AddSa {
        dir: Direction::Inbound,
        params: sa(
            10,
            0xc001,
            "192.0.2.1",
            "192.0.2.2",
            "10.0.0.0/8",
            "10.99.0.1/32",
        ),
    });
    g.update(Update::AddSa {
        dir: Direction::Outbound,
        params: sa(
            11,
            0xd002,
            "192.0.2.1",
            "192.0.2.3",
            "10.0.0.0/8",
            "10.99.0.2/32",
        ),
    });
    g.update(Update::BindHost {
        dst: "10.99.0.2".parse().unwrap(),
        src: "10.0.0.0/8".parse().unwrap(),
        sa: SaId(11),
    });
    g
}

/// Client A: seals 10.99.0.1 -> 10.0.0.0/8 on SPI 0xc001.
pub(super) fn client_a() -> Rig {
    let mut a = rig(1500);
    a.update(Update::AddSa {
        dir: Direction::Outbound,
        params: sa(
            5,
            0xc001,
            "192.0.2.2",
            "192.0.2.1",
            "10.99.0.1/32",
            "10.0.0.0/8",
        ),
    });
    a.update(Update::ReplaceSpd {
        rules: vec![Rule {
            id: 0,
            selector: sel("10.99.0.1/32", "10.0.0.0/8"),
            action: Action::Protect(SaId(5)),
        }],
    });
    a
}

/// Client B: opens SPI 0xd002 (10.0.0.0/8 -> 10.99.0.2).
fn client_b() -> Rig {
    let mut b = rig(1500);
    b.update(Update::AddSa {
        dir: Direction::Inbound,
        params: sa(
            6,
            0xd002,
            "192.0.2.3",
            "192.0.2.1",
            "10.99.0.2/32",
            "10.0.0.0/8",
        ),
    });
    b
}

/// One packet from A's LAN side, sealed by A, into the gateway's WAN port.
pub(super) fn from_a(a: &mut Rig, g: &mut Rig, dst: &str, size: usize) {
    a.send_lan("10.99.0.1", dst, size);
    let mut esp = a.wan.recv().expect("A sealed it");
    readdress(&mut esp, WAN_MAC, PEER_MAC);
    assert!(g.wan.send(esp).is_ok());
}

pub(super) fn esp_spi(f: &MemFrame) -> u32 {
    let ip = outer_ipv4(f);
    u32::from_be_bytes(ip.payload()[0..4].try_into().unwrap())
}

#[test]
fn a_packet_to_another_road_warrior_is_sealed_again_onto_its_sa() {
    let mut g = gateway_with_two_clients(1500);
    let mut a = client_a();
    let mut b = client_b();
    from_a(&mut a, &mut g, "10.99.0.2", 200);
    g.w.poll(2);
    assert!(g.lan.recv().is_none(), "nothing to the LAN");
    let mut out = g.wan.recv().expect("hairpinned to the WAN");
    assert_eq!(esp_spi(&out), 0xd002, "on B's SA");
    let ip = outer_ipv4(&out);
    assert_eq!(ip.dst_addr(), "192.0.2.3".parse::<Ipv4Addr>().unwrap());
    assert_eq!(ip.src_addr(), "192.0.2.1".parse::<Ipv4Addr>().unwrap());
    let s = g.w.counters.snapshot();
    assert_eq!(s.traffic(Traffic::Hairpinned), 1);
    assert_eq!(s.traffic(Traffic::Decrypted), 1);
    assert_eq!(s.traffic(Traffic::Encrypted), 1);
    assert_eq!(
        s.traffic(Traffic::HairpinnedBytes),
        s.traffic(Traffic::DecryptedBytes)
    );
    let sa11 = g.w.sad().outbound(SaId(11)).unwrap();
    assert_eq!(sa11.counters.packets.get(), 1);

    // B opens it: the inner packet A's host sent, its hop limit down by one per gateway
    // (A's, ours, B's own).
    readdress(&mut out, WAN_MAC, PEER_MAC);
    assert!(b.wan.send(out).is_ok());
    b.w.poll(3);
    let inner = b.lan.recv().expect("B delivers it");
    let ip = outer_ipv4(&inner);
    assert_eq!(ip.src_addr(), "10.99.0.1".parse::<Ipv4Addr>().unwrap());
    assert_eq!(ip.dst_addr(), "10.99.0.2".parse::<Ipv4Addr>().unwrap());
    assert_eq!(ip.hop_limit(), 64 - 3);
    assert!(ip.verify_checksum());
}

#[test]
fn traffic_to_the_lan_and_sources_the_binding_refuses_still_go_to_the_lan() {
    let mut g = gateway_with_two_clients(1500);
    let mut a = client_a();
    // A LAN host: no binding.
    from_a(&mut a, &mut g, "10.1.0.10", 200);
    g.w.poll(2);
    assert!(g.lan.recv().is_some());
    assert!(g.wan.recv().is_none());
    // B's binding allows only the LAN's /24 now: A's packet is not put on B's SA.
    g.update(Update::BindHost {
        dst: "10.99.0.2".parse().unwrap(),
        src: "10.1.0.0/24".parse().unwrap(),
        sa: SaId(11),
    });
    from_a(&mut a, &mut g, "10.99.0.2", 200);
    g.w.poll(3);
    assert!(g.wan.recv().is_none(), "not hairpinned");
    assert!(g.lan.recv().is_some(), "the LAN path, as before");
    // Unbound: the LAN path too.
    g.update(Update::UnbindHost {
        dst: "10.99.0.2".parse().unwrap(),
    });
    from_a(&mut a, &mut g, "10.99.0.2", 200);
    g.w.poll(4);
    assert!(g.wan.recv().is_none());
    assert!(g.lan.recv().is_some());
    assert_eq!(g.w.counters.snapshot().traffic(Traffic::Hairpinned), 0);
}

#[test]
fn a_binding_whose_sa_is_on_another_worker_leaves_the_packet_to_the_lan() {
    let mut g = gateway_with_two_clients(1500);
    let mut a = client_a();
    g.update(Update::BindHost {
        dst: "10.99.0.3".parse().unwrap(),
        src: "10.0.0.0/8".parse().unwrap(),
        sa: SaId(99),
    });
    from_a(&mut a, &mut g, "10.99.0.3", 200);
    g.w.poll(2);
    assert!(g.wan.recv().is_none());
    assert!(g.lan.recv().is_some());
}

#[test]
fn a_hairpinned_packet_too_big_for_the_wan_is_dropped_and_counted() {
    let mut g = gateway_with_two_clients(1300);
    let mut a = client_a();
    from_a(&mut a, &mut g, "10.99.0.2", 1280);
    g.w.poll(2);
    assert!(g.wan.recv().is_none());
    assert!(g.lan.recv().is_none());
    assert_eq!(g.drops(DropReason::HairpinMtuExceeded), 1);
    let sa11 = g.w.sad().outbound(SaId(11)).unwrap();
    assert_eq!(sa11.counters.drops(DropReason::HairpinMtuExceeded), 1);
}

#[test]
fn a_full_wan_queue_bounds_hairpinned_packets_each_counted() {
    let mut g = gateway_with_two_clients(1500);
    let mut a = client_a();
    // Nobody reads the gateway's WAN port: its ring (256) fills, then its queue.
    let total = 700u64;
    for _ in 0..total {
        from_a(&mut a, &mut g, "10.99.0.2", 100);
        g.w.poll(2);
    }
    g.w.poll(3);
    let s = g.w.counters.snapshot();
    let hairpinned = s.traffic(Traffic::Hairpinned);
    let dropped = g.drops(DropReason::HairpinQueueFull);
    assert_eq!(hairpinned + dropped, total, "every packet accounted for");
    assert!(dropped > 0, "the cap was reached");
    assert!(g.w.wan_txq.len() <= super::super::hairpin::HAIRPIN_TXQ_MAX);
    let sent = std::iter::from_fn(|| g.wan.recv()).count() as u64;
    g.w.poll(4);
    let sent = sent + std::iter::from_fn(|| g.wan.recv()).count() as u64;
    assert_eq!(sent, hairpinned, "what was hairpinned leaves");
}

fn hairpin_events(g: &mut Rig) -> Vec<(IpAddr, IpAddr, u64, u64, u32)> {
    g.agent.pump();
    g.agent
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Hairpin {
                src,
                dst,
                packets,
                bytes,
                millis,
                ..
            } => Some((src, dst, packets, bytes, millis)),
            _ => None,
        })
        .collect()
}

#[test]
fn hairpin_pairs_are_reported_once_a_second_with_their_counts() {
    const SEC: u64 = 1_000_000_000;
    let mut g = gateway_with_two_clients(1500);
    let mut a = client_a();
    for i in 0..10u64 {
        from_a(&mut a, &mut g, "10.99.0.2", 200);
        g.w.poll(SEC + i);
    }
    let bytes = g.w.counters.snapshot().traffic(Traffic::HairpinnedBytes);
    assert_eq!(
        hairpin_events(&mut g),
        vec![],
        "not before the second is over"
    );
    g.w.poll(2 * SEC);
    let a_ip: IpAddr = "10.99.0.1".parse().unwrap();
    let b_ip: IpAddr = "10.99.0.2".parse().unwrap();
    assert_eq!(hairpin_events(&mut g), vec![(a_ip, b_ip, 10, bytes, 1000)]);
    // Nothing new: no report; the next packets start a new period.
    g.w.poll(4 * SEC);
    assert_eq!(hairpin_events(&mut g), vec![]);
    from_a(&mut a, &mut g, "10.99.0.2", 200);
    g.w.poll(5 * SEC);
    g.w.poll(6 * SEC);
    let ev = hairpin_events(&mut g);
    assert_eq!(ev.len(), 1);
    assert_eq!((ev[0].2, ev[0].4), (1, 1000));
}

#[test]
fn the_pair_table_is_bounded_and_what_it_misses_is_counted() {
    let mut g = gateway_with_two_clients(1500);
    // Client A's SA carries its whole /24 here, so it can be many sources.
    g.update(Update::AddSa {
        dir: Direction::Inbound,
        params: sa(
            12,
            0xc002,
            "192.0.2.1",
            "192.0.2.2",
            "10.0.0.0/8",
            "10.98.0.0/16",
        ),
    });
    let mut a = rig(1500);
    a.update(Update::AddSa {
        dir: Direction::Outbound,
        params: sa(
            5,
            0xc002,
            "192.0.2.2",
            "192.0.2.1",
            "10.98.0.0/16",
            "10.0.0.0/8",
        ),
    });
    a.update(Update::ReplaceSpd {
        rules: vec![Rule {
            id: 0,
            selector: sel("10.98.0.0/16", "10.0.0.0/8"),
            action: Action::Protect(SaId(5)),
        }],
    });
    let n = super::super::hairpin::MAX_PAIRS as u32 + 10;
    for i in 0..n {
        let src = format!("10.98.{}.{}", i / 200, 1 + i % 200);
        a.send_lan(&src, "10.99.0.2", 100);
        let mut esp = a.wan.recv().expect("sealed");
        readdress(&mut esp, WAN_MAC, PEER_MAC);
        assert!(g.wan.send(esp).is_ok());
        g.w.poll(10);
    }
    let s = g.w.counters.snapshot();
    assert_eq!(
        s.traffic(Traffic::Hairpinned),
        u64::from(n),
        "all forwarded"
    );
    assert_eq!(s.traffic(Traffic::HairpinUntracked), 10);
    g.w.poll(2_000_000_000);
    assert_eq!(
        hairpin_events(&mut g).len(),
        super::super::hairpin::MAX_PAIRS
    );
}
