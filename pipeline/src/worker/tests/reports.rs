use super::*;

#[test]
fn lifetimes_are_reported_and_a_hard_one_stops_the_sa() {
    let mut r = rig(1500);
    let mut p = sa(
        1,
        0xa001,
        "192.0.2.1",
        "192.0.2.2",
        "10.1.0.0/24",
        "10.2.0.0/24",
    );
    p.lifetime = Lifetime {
        soft_packets: 2,
        hard_packets: 3,
        ..Lifetime::default()
    };
    r.update(Update::AddSa {
        dir: Direction::Outbound,
        params: p,
    });
    for _ in 0..5 {
        r.send_lan("10.1.0.10", "10.2.0.7", 100);
    }
    assert_eq!(std::iter::from_fn(|| r.wan.recv()).count(), 3);
    assert_eq!(r.drops(DropReason::SaExpired), 2);
    r.agent.pump();
    let kinds: Vec<_> = r
        .agent
        .take_events()
        .into_iter()
        .map(|e| match e {
            Event::Lifetime {
                id,
                spi,
                dir,
                kind,
                limit,
                packets,
                ..
            } => {
                assert_eq!((id, spi, dir), (SaId(1), Spi(0xa001), Direction::Outbound));
                assert_eq!(limit, LifetimeLimit::Packets);
                (kind, packets)
            }
            e => panic!("{e:?}"),
        })
        .collect();
    assert_eq!(kinds, [(LifetimeKind::Soft, 2), (LifetimeKind::Hard, 3)]);
}

#[test]
fn unknown_spis_and_forgeries_are_reported_rate_limited() {
    let mut r = rig(1500);
    // A sealed packet from a peer gateway that has the mirror SAs (the rig's keys).
    let mut peer = mirror_peer();
    peer.send_lan("10.2.0.7", "10.1.0.10", 100);
    let good = peer.wan.recv().expect("sealed");
    let mut forged = MemFrame::from_bytes(good.data()).unwrap();
    let n = forged.data().len();
    forged.data_mut()[n - 1] ^= 1;
    let mut unknown = MemFrame::from_bytes(good.data()).unwrap();
    set_esp_spi(&mut unknown, 0xdead_beef);
    for (i, f) in [unknown, forged].into_iter().enumerate() {
        let mut f = f;
        readdress(&mut f, WAN_MAC, PEER_MAC);
        let again = MemFrame::from_bytes(f.data()).unwrap();
        assert!(r.wan.send(f).is_ok());
        r.w.poll(10 + i as u64);
        // The same again within the second: counted, not reported again.
        assert!(r.wan.send(again).is_ok());
        r.w.poll(20 + i as u64);
    }
    assert_eq!(r.drops(DropReason::UnknownSpi), 2);
    assert_eq!(r.drops(DropReason::AuthFailed), 2);
    r.agent.pump();
    let ev: Vec<Event> = r.agent.take_events().into();
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert!(matches!(
        ev[0],
        // Bare ESP: no UDP source port (an INVALID_SPI goes to the peer's port 500).
        Event::UnknownSpi { spi: Spi(0xdead_beef), packets: 1, src, src_port: 0, .. }
            if src == "192.0.2.2".parse::<IpAddr>().unwrap()
    ));
    assert!(matches!(
        ev[1],
        Event::AuthFailures {
            id: SaId(2),
            spi: Spi(0xb001),
            count: 1,
            ..
        }
    ));
    // A second later the running total is reported.
    let mut f = MemFrame::from_bytes(good.data()).unwrap();
    set_esp_spi(&mut f, 0xdead_beef);
    readdress(&mut f, WAN_MAC, PEER_MAC);
    assert!(r.wan.send(f).is_ok());
    r.w.poll(2_000_000_000);
    r.agent.pump();
    let ev: Vec<Event> = r.agent.take_events().into();
    assert!(
        matches!(ev[..], [Event::UnknownSpi { packets: 3, .. }]),
        "{ev:?}"
    );
}
