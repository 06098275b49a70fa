use super::*;

#[test]
fn protect_bypass_discard() {
    let mut r = rig(1500);
    r.send_lan("10.1.0.10", "10.2.0.10", 100);
    let f = r.wan.recv().expect("sealed packet on the WAN");
    assert_eq!(
        ethernet::Frame::new_checked(f.data()).unwrap().dst_addr(),
        PEER_MAC
    );
    assert_eq!(outer_ipv4(&f).next_header(), IpProtocol::Esp);
    r.send_lan("10.1.0.10", "198.51.100.7", 100);
    let f = r.wan.recv().expect("bypassed packet on the WAN");
    assert_eq!(outer_ipv4(&f).next_header(), IpProtocol::Udp, "clear UDP");
    assert_eq!(outer_ipv4(&f).hop_limit(), 63, "TTL decremented");
    r.send_lan("10.1.0.10", "203.0.113.1", 100);
    assert!(r.wan.recv().is_none());
    assert_eq!(r.drops(DropReason::PolicyDiscard), 1);
}

#[test]
fn oversize_gets_icmp_frag_needed_not_silence() {
    let mut r = rig(1400);
    r.send_lan("10.1.0.10", "10.2.0.10", 1400);
    assert!(r.wan.recv().is_none());
    assert_eq!(r.drops(DropReason::MtuExceeded), 1);
    let icmp = r.lan.recv().expect("ICMP back to the sender");
    let d = icmp.data();
    assert_eq!(&d[0..6], &HOST_MAC);
    let ip = ipv4::Packet::new_checked(&d[14..]).unwrap();
    assert_eq!(ip.dst_addr(), "10.1.0.10".parse::<Ipv4Addr>().unwrap());
    assert_eq!(ip.src_addr(), "10.1.0.1".parse::<Ipv4Addr>().unwrap());
    let p = icmpv4::Packet::new_checked(ip.payload()).unwrap();
    assert_eq!((u8::from(p.msg_type()), p.msg_code()), (3, 4));
    // Next-hop MTU leaves room for outer IPv4 + ESP overhead.
    let mtu = p.next_hop_mtu();
    assert!(mtu < 1400 && mtu > 1300, "{mtu}");
    assert!(p.verify_checksum());
    // And a packet of that size fits.
    r.send_lan("10.1.0.10", "10.2.0.10", usize::from(mtu) + 14);
    assert!(
        r.wan.recv().is_some(),
        "a packet of the advertised MTU passes"
    );
}

#[test]
fn ttl_one_is_not_forwarded() {
    let mut r = rig(1500);
    let mut g = Generator::new(
        vec![FlowSpec {
            src_mac: HOST_MAC,
            dst_mac: LAN_MAC,
            src: "10.1.0.10".parse().unwrap(),
            dst: "10.2.0.10".parse().unwrap(),
            src_port: 1,
            dst_port: 2,
        }],
        &[100],
    );
    let mut f = MemFrame::new();
    g.fill(&mut f, 0);
    {
        let mut ip = ipv4::Packet::new_unchecked(&mut f.data_mut()[14..]);
        ip.set_hop_limit(1);
        ip.fill_checksum();
    }
    assert!(r.lan.send(f).is_ok());
    r.w.poll(0);
    assert!(r.wan.recv().is_none());
    assert_eq!(r.drops(DropReason::TtlExceeded), 1);
}

#[test]
fn masquerade_rewrites_bypass_traffic_and_back() {
    let mut r = rig(1500);
    r.update(Update::SetMasquerade {
        config: Some(MasqueradeConfig {
            external_addr: "192.0.2.1".parse().unwrap(),
            ..MasqueradeConfig::default()
        }),
    });
    r.send_lan("10.1.0.10", "198.51.100.7", 100);
    let out = r.wan.recv().expect("masqueraded");
    let (sport, src) = {
        let ip = ipv4::Packet::new_checked(&out.data()[14..]).unwrap();
        let u = udp::Packet::new_checked(ip.payload()).unwrap();
        assert!(u.verify_checksum(&IpAddr::V4(ip.src_addr()), &IpAddr::V4(ip.dst_addr())));
        (u.src_port(), ip.src_addr())
    };
    assert_eq!(src, "192.0.2.1".parse::<Ipv4Addr>().unwrap());
    // The server answers to the masquerading address and port.
    let (answer, port) = server_answer(&out);
    assert_eq!(port, sport);
    assert!(r.wan.send(answer).is_ok());
    r.w.poll(2);
    let back = r.lan.recv().expect("translated back to the host");
    let ip = ipv4::Packet::new_checked(&back.data()[14..]).unwrap();
    assert_eq!(ip.dst_addr(), "10.1.0.10".parse::<Ipv4Addr>().unwrap());
    let u = udp::Packet::new_checked(ip.payload()).unwrap();
    assert_eq!(u.dst_port(), 1234);
    assert!(u.verify_checksum(&IpAddr::V4(ip.src_addr()), &IpAddr::V4(ip.dst_addr())));
}

#[test]
fn host_bindings_come_before_the_spd_and_guard_the_clear_side() {
    let mut r = rig(1500);
    // The SPD discards 10.99.0.7; a binding protects it from the LAN's /24 only.
    r.send_lan("10.1.0.10", "10.99.0.7", 100);
    assert_eq!(r.drops(DropReason::PolicyDiscard), 1);
    r.update(Update::BindHost {
        dst: "10.99.0.7".parse().unwrap(),
        src: "10.1.0.0/24".parse().unwrap(),
        sa: SaId(1),
    });
    r.send_lan("10.1.0.10", "10.99.0.7", 100);
    let esp = r.wan.recv().expect("sealed by the bound SA");
    let ip = ipv4::Packet::new_checked(&esp.data()[14..]).unwrap();
    assert_eq!(ip.next_header(), IpProtocol::Esp);
    assert_eq!(&ip.payload()[0..4], &0xa001u32.to_be_bytes());
    r.send_lan("10.1.1.10", "10.99.0.7", 100);
    assert!(r.wan.recv().is_none(), "a source outside the binding");
    assert_eq!(r.drops(DropReason::PolicyDiscard), 2);

    // The bound host in the clear on the WAN side is refused.
    r.send_wan_clear("10.99.0.7", "10.1.0.10");
    assert!(r.lan.recv().is_none());
    assert_eq!(r.drops(DropReason::ClearButProtected), 1);

    r.update(Update::UnbindHost {
        dst: "10.99.0.7".parse().unwrap(),
    });
    r.send_lan("10.1.0.10", "10.99.0.7", 100);
    assert!(r.wan.recv().is_none());
    assert_eq!(r.drops(DropReason::PolicyDiscard), 3);
    // Unbinding what is not bound is reported, not fatal.
    let g = r.agent.send(
        agent::prepare(
            crate::crypto::best_backend(),
            &Update::UnbindHost {
                dst: "10.99.0.7".parse().unwrap(),
            },
        )
        .unwrap(),
    );
    r.w.poll(9);
    r.agent.pump();
    assert!(r.agent.rejections().iter().any(|(gen, _)| *gen == g));
}
