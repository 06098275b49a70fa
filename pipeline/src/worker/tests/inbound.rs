use super::*;

#[test]
fn malformed_frames_are_counted_never_panic() {
    let mut r = rig(1500);
    let mut x = 0x1234_5678_9abc_def0u64;
    for len in 0..600usize {
        let mut bytes = vec![0u8; len];
        for b in bytes.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        // Half of them look like IPv4 so they get past the first checks.
        if len > 14 && len % 2 == 0 {
            bytes[12] = 0x08;
            bytes[13] = 0x00;
            bytes[14] = 0x45;
        }
        assert!(r.wan.send(MemFrame::from_bytes(&bytes).unwrap()).is_ok());
        assert!(r.lan.send(MemFrame::from_bytes(&bytes).unwrap()).is_ok());
        r.w.poll(0);
    }
    let s = r.w.counters.snapshot();
    let dropped: u64 = s.drops.iter().sum();
    let forwarded =
        std::iter::from_fn(|| r.wan.recv()).count() + std::iter::from_fn(|| r.lan.recv()).count();
    assert_eq!(
        dropped + forwarded as u64,
        1200,
        "every frame is accounted for"
    );
}

#[test]
fn esp_from_a_new_address_is_accepted_but_never_redirects_the_tunnel() {
    let mut r = rig(1500);
    let mut peer = mirror_peer();
    peer.send_lan("10.2.0.7", "10.1.0.10", 100);
    let mut esp = peer.wan.recv().expect("sealed");
    readdress(&mut esp, WAN_MAC, PEER_MAC);
    // The peer (or an attacker who replays its packet) now appears at another address.
    {
        let mut ip = ipv4::Packet::new_unchecked(&mut esp.data_mut()[14..]);
        ip.set_src_addr("203.0.113.9".parse().unwrap());
        ip.fill_checksum();
    }
    assert!(r.wan.send(esp).is_ok());
    r.w.poll(1);
    // M1: found by SPI alone, opened, delivered.
    assert!(r.lan.recv().is_some(), "accepted from the new address");
    // M3: our answers still go to the address the SA was negotiated with.
    r.send_lan("10.1.0.10", "10.2.0.7", 100);
    let out = r.wan.recv().expect("sealed");
    let ip = ipv4::Packet::new_checked(&out.data()[14..]).unwrap();
    assert_eq!(ip.dst_addr(), "192.0.2.2".parse::<Ipv4Addr>().unwrap());

    // Only an update from the control plane moves it (every listed SA at once, or none).
    let bad = Update::RebindOutbound {
        ids: vec![SaId(1), SaId(77)],
        local: "192.0.2.1".parse().unwrap(),
        remote: "203.0.113.9".parse().unwrap(),
        encap: None,
    };
    let g = r
        .agent
        .send(agent::prepare(crate::crypto::best_backend(), &bad).unwrap());
    r.w.poll(2);
    r.agent.pump();
    assert!(r.agent.rejections().iter().any(|(gen, _)| *gen == g));
    r.send_lan("10.1.0.10", "10.2.0.7", 100);
    let out = r.wan.recv().expect("sealed");
    let ip = ipv4::Packet::new_checked(&out.data()[14..]).unwrap();
    assert_eq!(
        ip.dst_addr(),
        "192.0.2.2".parse::<Ipv4Addr>().unwrap(),
        "none moved"
    );
    r.update(Update::RebindOutbound {
        ids: vec![SaId(1)],
        local: "192.0.2.1".parse().unwrap(),
        remote: "203.0.113.9".parse().unwrap(),
        encap: Some(crate::esp::sa::UdpEncap {
            local_port: 4500,
            remote_port: 4500,
        }),
    });
    r.send_lan("10.1.0.10", "10.2.0.7", 100);
    let out = r.wan.recv().expect("sealed");
    let ip = ipv4::Packet::new_checked(&out.data()[14..]).unwrap();
    assert_eq!(ip.dst_addr(), "203.0.113.9".parse::<Ipv4Addr>().unwrap());
    assert_eq!(ip.next_header(), IpProtocol::Udp, "now in UDP 4500");
}

#[test]
fn a_roaming_client_answers_for_its_old_and_new_wan_address_then_only_the_new() {
    let mut r = rig(1500);
    let ask = |r: &mut Rig, target: [u8; 4]| -> bool {
        let f = crate::neighbor::tests::arp_request(target);
        assert!(r.wan.send(MemFrame::from_bytes(&f).unwrap()).is_ok());
        r.w.poll(1);
        r.wan.recv().is_some()
    };
    assert!(ask(&mut r, [192, 0, 2, 1]), "the configured address");
    assert!(!ask(&mut r, [198, 51, 100, 10]));
    r.update(Update::SetWanAddresses {
        addrs: vec![
            "198.51.100.10".parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
        ],
    });
    assert!(ask(&mut r, [198, 51, 100, 10]), "the new one");
    assert!(ask(&mut r, [192, 0, 2, 1]), "the old one, for now");
    r.update(Update::SetWanAddresses {
        addrs: vec!["198.51.100.10".parse().unwrap()],
    });
    assert!(ask(&mut r, [198, 51, 100, 10]));
    assert!(!ask(&mut r, [192, 0, 2, 1]), "given up");
}

#[test]
fn each_sa_keeps_its_last_use_on_the_worker_clock() {
    let mut r = rig(1500);
    let mut peer = mirror_peer();
    let h = r.w.handle();
    let used = |dir: Direction| {
        h.sa_counters
            .lock()
            .unwrap()
            .iter()
            .find(|e| e.direction == dir)
            .map(|e| e.counters.last_used.get())
            .unwrap()
    };
    assert_eq!(
        (used(Direction::Inbound), used(Direction::Outbound)),
        (0, 0)
    );
    r.w.poll(5_000);
    assert_eq!(
        h.counters.clock.get(),
        5_000,
        "the clock readers compare with"
    );
    // Sealed at the worker's clock 1 (send_lan polls at 1)...
    r.send_lan("10.1.0.10", "10.2.0.10", 100);
    assert!(r.wan.recv().is_some());
    assert_eq!(used(Direction::Outbound), 1);
    // ... opened at 7,000; a packet that does not open leaves it.
    peer.send_lan("10.2.0.7", "10.1.0.10", 100);
    let mut esp = peer.wan.recv().expect("sealed");
    readdress(&mut esp, WAN_MAC, PEER_MAC);
    let mut forged = MemFrame::from_bytes(esp.data()).unwrap();
    assert!(r.wan.send(esp).is_ok());
    r.w.poll(7_000);
    assert!(r.lan.recv().is_some());
    assert_eq!(used(Direction::Inbound), 7_000);
    let n = forged.data().len();
    forged.data_mut()[n - 1] ^= 1;
    assert!(r.wan.send(forged).is_ok());
    r.w.poll(9_000);
    assert_eq!(
        r.drops(DropReason::ReplayDuplicate) + r.drops(DropReason::AuthFailed),
        1
    );
    assert_eq!(used(Direction::Inbound), 7_000);
    assert_eq!(used(Direction::Outbound), 1);
}

#[test]
fn an_inner_packet_outside_its_sas_selectors_is_dropped_and_counted_on_the_sa() {
    // RFC 4301 5.2: a peer that seals more than the SA was negotiated to carry (its policy
    // protects everything onto the SA for 10.2.0.0/24 -> 10.1.0.0/24).
    let mut r = rig(1500);
    let mut peer = mirror_peer();
    peer.update(Update::ReplaceSpd {
        rules: vec![
            Rule {
                id: 0,
                selector: sel("0.0.0.0/0", "0.0.0.0/0"),
                action: Action::Protect(SaId(1)),
            },
            Rule {
                id: 1,
                selector: sel("::/0", "::/0"),
                action: Action::Protect(SaId(1)),
            },
        ],
    });
    let mut deliver = |r: &mut Rig, src: &str, dst: &str| {
        peer.send_lan(src, dst, 100);
        let mut esp = peer.wan.recv().expect("sealed");
        readdress(&mut esp, WAN_MAC, PEER_MAC);
        assert!(r.wan.send(esp).is_ok());
        r.w.poll(1);
        r.lan.recv().is_some()
    };
    assert!(
        deliver(&mut r, "10.2.0.7", "10.1.0.10"),
        "inside: delivered"
    );
    assert!(!deliver(&mut r, "10.3.0.7", "10.1.0.10"), "source outside");
    assert!(
        !deliver(&mut r, "10.2.0.7", "10.9.0.10"),
        "destination outside"
    );
    assert!(
        !deliver(&mut r, "10.1.0.10", "10.2.0.7"),
        "the selectors swapped"
    );
    assert!(
        !deliver(&mut r, "fd00:2::7", "fd00:a::10"),
        "IPv6 in IPv4 selectors"
    );
    assert!(deliver(&mut r, "10.2.0.8", "10.1.0.11"), "inside again");
    assert_eq!(r.drops(DropReason::PolicyMismatch), 4);
    let sa = r.w.sad.inbound(Spi(0xb001)).expect("the SA");
    assert_eq!(sa.counters.drops(DropReason::PolicyMismatch), 4);
}
