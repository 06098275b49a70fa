use super::*;

#[test]
fn client_masquerades_its_lan_into_the_tunnel_as_the_virtual_ip() {
    // The client: its CHILD_SA carries 10.99.0.5 (the virtual IP) <-> 10.2.0.0/24.
    let mut c = rig(1500);
    for (dir, id, spi) in [
        (Direction::Outbound, 1, 0xa001),
        (Direction::Inbound, 2, 0xb001),
    ] {
        c.update(Update::AddSa {
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
    c.update(Update::ReplaceSpd {
        rules: vec![
            Rule {
                id: 0,
                selector: sel("10.99.0.5/32", "10.2.0.0/24"),
                action: Action::Protect(SaId(1)),
            },
            Rule {
                id: 1,
                selector: sel("0.0.0.0/0", "0.0.0.0/0"),
                action: Action::Discard,
            },
        ],
    });
    // The gateway: the mirror image.
    let mut g = rig(1500);
    g.update(Update::AddSa {
        dir: Direction::Inbound,
        params: sa(
            3,
            0xa001,
            "192.0.2.2",
            "192.0.2.1",
            "10.2.0.0/24",
            "10.99.0.5/32",
        ),
    });
    g.update(Update::AddSa {
        dir: Direction::Outbound,
        params: sa(
            1,
            0xb001,
            "192.0.2.2",
            "192.0.2.1",
            "10.2.0.0/24",
            "10.99.0.5/32",
        ),
    });
    g.update(Update::ReplaceSpd {
        rules: vec![Rule {
            id: 0,
            selector: sel("10.2.0.0/24", "10.99.0.5/32"),
            action: Action::Protect(SaId(1)),
        }],
    });

    // Without the virtual IP set, the LAN host's flow matches no protect rule.
    c.send_lan("10.1.0.10", "10.2.0.7", 100);
    assert!(c.wan.recv().is_none());
    assert_eq!(c.drops(DropReason::PolicyDiscard), 1);

    c.update(Update::SetVirtualIp {
        config: Some(MasqueradeConfig {
            external_addr: "10.99.0.5".parse().unwrap(),
            ..MasqueradeConfig::default()
        }),
    });
    // Too big for the tunnel: the ICMP error quotes the packet as the host sent it.
    c.send_lan("10.1.0.10", "10.2.0.7", 1514);
    assert!(c.wan.recv().is_none());
    let icmp = c.lan.recv().expect("frag-needed");
    let ip = ipv4::Packet::new_checked(&icmp.data()[14..]).unwrap();
    let quoted = ipv4::Packet::new_unchecked(&ip.payload()[8..]);
    assert_eq!(quoted.src_addr(), "10.1.0.10".parse::<Ipv4Addr>().unwrap());
    c.send_lan("10.1.0.10", "10.2.0.7", 100);
    let mut esp = c.wan.recv().expect("sealed");
    readdress(&mut esp, WAN_MAC, PEER_MAC);
    assert!(g.wan.send(esp).is_ok());
    g.w.poll(1);
    let mut inner = g.lan.recv().expect("opened at the gateway");
    let (src, sport) = {
        let ip = ipv4::Packet::new_checked(&inner.data()[14..]).unwrap();
        assert!(ip.verify_checksum());
        let u = udp::Packet::new_checked(ip.payload()).unwrap();
        assert!(u.verify_checksum(&IpAddr::V4(ip.src_addr()), &IpAddr::V4(ip.dst_addr())));
        (ip.src_addr(), u.src_port())
    };
    assert_eq!(
        src,
        "10.99.0.5".parse::<Ipv4Addr>().unwrap(),
        "the virtual IP"
    );

    // The server's answer comes back through the tunnel to the LAN host and its port.
    answer(&mut inner, LAN_MAC, HOST_MAC);
    let second = MemFrame::from_bytes(inner.data()).unwrap();
    assert!(g.lan.send(inner).is_ok());
    g.w.poll(2);
    let mut back = g.wan.recv().expect("sealed by the gateway");
    readdress(&mut back, WAN_MAC, PEER_MAC);
    assert!(c.wan.send(back).is_ok());
    c.w.poll(3);
    let host = c.lan.recv().expect("to the LAN host");
    let ip = ipv4::Packet::new_checked(&host.data()[14..]).unwrap();
    assert_eq!(ip.dst_addr(), "10.1.0.10".parse::<Ipv4Addr>().unwrap());
    assert!(ip.verify_checksum());
    let u = udp::Packet::new_checked(ip.payload()).unwrap();
    assert_eq!((u.src_port(), u.dst_port()), (5001, 1234));
    assert!(u.verify_checksum(&IpAddr::V4(ip.src_addr()), &IpAddr::V4(ip.dst_addr())));
    assert_ne!(sport, 0);

    // Turned off: an answer to the virtual IP is delivered as it is (the SA's selectors
    // allow it), never to the LAN host.
    c.update(Update::SetVirtualIp { config: None });
    assert!(g.lan.send(second).is_ok());
    g.w.poll(4);
    let mut back = g.wan.recv().expect("sealed by the gateway");
    readdress(&mut back, WAN_MAC, PEER_MAC);
    assert!(c.wan.send(back).is_ok());
    c.w.poll(5);
    let out = c.lan.recv().expect("opened");
    let ip = ipv4::Packet::new_checked(&out.data()[14..]).unwrap();
    assert_eq!(ip.dst_addr(), "10.99.0.5".parse::<Ipv4Addr>().unwrap());
    assert_eq!(c.w.counters.traffic(Traffic::Masqueraded), 2);
    assert_eq!(c.drops(DropReason::MtuExceeded), 1);
}

/// A client's direct SA to another client (the connectivity manager binds the peer's virtual
/// IP with our virtual IP as the source): the LAN's flows to the peer go on it, masqueraded
/// to the virtual IP; unbound, they are back on the policy (here: discarded).
#[test]
fn a_direct_binding_takes_the_lan_masqueraded_to_the_virtual_ip() {
    let mut c = rig(1500);
    c.update(Update::AddSa {
        dir: Direction::Outbound,
        params: sa(
            5,
            0xff00_0001,
            "192.0.2.1",
            "198.51.100.10",
            "10.99.0.5/32",
            "10.99.0.6/32",
        ),
    });
    c.update(Update::ReplaceSpd {
        rules: vec![Rule {
            id: 0,
            selector: sel("0.0.0.0/0", "0.0.0.0/0"),
            action: Action::Discard,
        }],
    });
    c.update(Update::SetVirtualIp {
        config: Some(MasqueradeConfig {
            external_addr: "10.99.0.5".parse().unwrap(),
            ..MasqueradeConfig::default()
        }),
    });
    c.update(Update::BindHost {
        dst: "10.99.0.6".parse().unwrap(),
        src: "10.99.0.5/32".parse().unwrap(),
        sa: SaId(5),
    });
    c.send_lan("10.1.0.10", "10.99.0.6", 100);
    let esp = c.wan.recv().expect("sealed on the direct SA");
    let ip = ipv4::Packet::new_checked(&esp.data()[14..]).unwrap();
    assert_eq!(ip.dst_addr(), "198.51.100.10".parse::<Ipv4Addr>().unwrap());
    assert!(
        esp.data().windows(4).any(|w| w == [0xff, 0, 0, 1]),
        "the direct SPI"
    );
    assert_eq!(c.w.counters.traffic(Traffic::Masqueraded), 1);
    // Another source prefix than the virtual IP: the binding is not for the LAN.
    c.update(Update::BindHost {
        dst: "10.99.0.6".parse().unwrap(),
        src: "10.99.0.7/32".parse().unwrap(),
        sa: SaId(5),
    });
    c.send_lan("10.1.0.10", "10.99.0.6", 100);
    assert!(c.wan.recv().is_none());
    c.update(Update::UnbindHost {
        dst: "10.99.0.6".parse().unwrap(),
    });
    c.send_lan("10.1.0.10", "10.99.0.6", 100);
    assert!(c.wan.recv().is_none());
    assert_eq!(c.drops(DropReason::PolicyDiscard), 2);
}
