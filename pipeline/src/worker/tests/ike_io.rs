use super::*;

#[test]
fn ike_datagrams_from_control_are_sent_and_punted_back_intact() {
    let mut a = rig(1500);
    let mut b = rig(1500);
    let (mut tx, tx_rx) = rtrb::RingBuffer::new(8);
    a.w.control.transmit = Some(tx_rx);
    let (punt_tx, mut punted) = rtrb::RingBuffer::new(8);
    b.w.control.punt = Some(punt_tx);
    let ike: Vec<u8> = (0..100u8).collect();
    for (src_port, dst_port) in [(500u16, 500u16), (4500, 4500)] {
        tx.push(Datagram {
            src: "192.0.2.1".parse().unwrap(),
            dst: "192.0.2.2".parse().unwrap(),
            src_port,
            dst_port,
            payload: ike.clone(),
        })
        .unwrap();
    }
    a.w.poll(0);
    let mut frames = Vec::new();
    a.wan.rx_burst(&mut frames, 8);
    assert_eq!(frames.len(), 2);
    assert_eq!(a.w.counters.traffic(Traffic::IkeSent), 2);
    for (i, f) in frames.iter().enumerate() {
        let d = f.data();
        assert_eq!(&d[0..6], &PEER_MAC);
        assert_eq!(&d[6..12], &WAN_MAC);
        let ip = ipv4::Packet::new_checked(&d[14..]).unwrap();
        assert!(ip.verify_checksum());
        let u = udp::Packet::new_checked(ip.payload()).unwrap();
        assert!(u.verify_checksum(&"192.0.2.1".parse().unwrap(), &"192.0.2.2".parse().unwrap()));
        let marker = if i == 1 { 4 } else { 0 };
        assert_eq!(&u.payload()[..marker], &[0u8; 4][..marker]);
        assert_eq!(&u.payload()[marker..], &ike[..]);
    }
    for f in frames {
        assert!(b.wan.send(f).is_ok());
    }
    b.w.poll(1);
    for port in [500, 4500] {
        let p = punted.pop().expect("punted");
        assert_eq!((p.src_port, p.dst_port), (port, port));
        assert_eq!(p.payload, ike, "non-ESP marker stripped on port 4500");
    }
    assert_eq!(b.drops(DropReason::IkePunted), 2);
}

#[test]
fn a_full_punt_ring_drops_the_new_datagram_under_its_own_reason() {
    let mut a = rig(1500);
    let mut b = rig(1500);
    let (mut tx, tx_rx) = rtrb::RingBuffer::new(8);
    a.w.control.transmit = Some(tx_rx);
    // A control plane that reads nothing: room for one datagram.
    let (punt_tx, mut punted) = rtrb::RingBuffer::new(1);
    b.w.control.punt = Some(punt_tx);
    for n in 0..3u8 {
        tx.push(Datagram {
            src: "192.0.2.1".parse().unwrap(),
            dst: "192.0.2.2".parse().unwrap(),
            src_port: 500,
            dst_port: 500,
            payload: vec![n; 40],
        })
        .unwrap();
    }
    a.w.poll(0);
    let mut frames = Vec::new();
    a.wan.rx_burst(&mut frames, 8);
    assert_eq!(frames.len(), 3);
    for f in frames {
        assert!(b.wan.send(f).is_ok());
    }
    b.w.poll(1);
    assert_eq!(b.drops(DropReason::IkePunted), 1);
    assert_eq!(b.drops(DropReason::IkePuntFull), 2);
    assert_eq!(
        b.drops(DropReason::IkeNoControl),
        0,
        "a control plane is attached"
    );
    assert_eq!(punted.pop().map(|d| d.payload), Ok(vec![0; 40]));
}

/// An IKE_SA_INIT request (initiator SPI `spi`) whose first payload is a COOKIE notify, then
/// a Nonce: what an initiator sends back after a responder demanded a cookie.
fn cookie_echo(spi: u64) -> Vec<u8> {
    let len: u32 = 28 + 25 + 8;
    let mut m = Vec::new();
    m.extend(spi.to_be_bytes());
    m.extend([0u8; 8]);
    m.extend([41, 0x20, 34, 0x08, 0, 0, 0, 0]);
    m.extend(len.to_be_bytes());
    m.extend([40, 0, 0, 25, 0, 0, 0x40, 0x06]);
    m.extend([0x5a; 17]);
    m.extend([0, 0, 0, 8, 1, 2, 3, 4]);
    m
}

#[test]
fn cookie_echoes_take_their_own_lane_past_a_full_punt_ring() {
    let mut a = rig(1500);
    let mut b = rig(1500);
    let (mut tx, tx_rx) = rtrb::RingBuffer::new(16);
    a.w.control.transmit = Some(tx_rx);
    // A flooded control plane: the main ring is full.
    let (mut punt_tx, mut punted) = rtrb::RingBuffer::new(2);
    for n in 0..2u8 {
        punt_tx
            .push(Datagram {
                src: "198.18.0.1".parse().unwrap(),
                dst: "192.0.2.2".parse().unwrap(),
                src_port: 500,
                dst_port: 500,
                payload: vec![n; 40],
            })
            .unwrap();
    }
    b.w.control.punt = Some(punt_tx);
    let (cookie_tx, mut cookies) = rtrb::RingBuffer::new(2);
    b.w.control.punt_cookie = Some(cookie_tx);
    let echo = cookie_echo(0x1234);
    // More requests without a cookie, then the echo on 500 and (after the marker) on 4500,
    // then one more echo than the lane holds.
    let mut send = |port: u16, payload: &[u8]| {
        tx.push(Datagram {
            src: "192.0.2.1".parse().unwrap(),
            dst: "192.0.2.2".parse().unwrap(),
            src_port: port,
            dst_port: port,
            payload: payload.to_vec(),
        })
        .unwrap()
    };
    send(500, &[9; 40]);
    send(500, &echo);
    send(4500, &echo);
    send(500, &echo);
    a.w.poll(0);
    let mut frames = Vec::new();
    a.wan.rx_burst(&mut frames, 8);
    assert_eq!(frames.len(), 4);
    for f in frames {
        assert!(b.wan.send(f).is_ok());
    }
    b.w.poll(1);
    assert_eq!(b.drops(DropReason::IkePuntFull), 1, "the flood's");
    assert_eq!(b.drops(DropReason::IkePuntedCookie), 2);
    assert_eq!(
        b.drops(DropReason::IkePuntCookieFull),
        1,
        "the lane is bounded"
    );
    for port in [500, 4500] {
        let d = cookies.pop().expect("on the cookie lane");
        assert_eq!((d.dst_port, &d.payload), (port, &echo));
    }
    assert_eq!(punted.pop().map(|d| d.payload), Ok(vec![0; 40]));
    assert_eq!(punted.pop().map(|d| d.payload), Ok(vec![1; 40]));
    assert!(punted.pop().is_err(), "the echoes never took the main ring");
}

#[test]
fn without_a_cookie_lane_echoes_take_the_punt_ring() {
    let mut a = rig(1500);
    let mut b = rig(1500);
    let (mut tx, tx_rx) = rtrb::RingBuffer::new(8);
    a.w.control.transmit = Some(tx_rx);
    let (punt_tx, mut punted) = rtrb::RingBuffer::new(8);
    b.w.control.punt = Some(punt_tx);
    tx.push(Datagram {
        src: "192.0.2.1".parse().unwrap(),
        dst: "192.0.2.2".parse().unwrap(),
        src_port: 500,
        dst_port: 500,
        payload: cookie_echo(7),
    })
    .unwrap();
    a.w.poll(0);
    let mut frames = Vec::new();
    a.wan.rx_burst(&mut frames, 8);
    for f in frames {
        assert!(b.wan.send(f).is_ok());
    }
    b.w.poll(1);
    assert_eq!(b.drops(DropReason::IkePunted), 1);
    assert_eq!(punted.pop().map(|d| d.payload), Ok(cookie_echo(7)));
}

#[test]
fn ike_and_keepalives_are_not_esp() {
    let mut r = rig(1500);
    let mut frame = vec![0u8; 14 + 20 + 8 + 40];
    frame[0..6].copy_from_slice(&WAN_MAC);
    frame[12] = 0x08;
    {
        let repr = ipv4::Repr {
            src_addr: "192.0.2.2".parse().unwrap(),
            dst_addr: "192.0.2.1".parse().unwrap(),
            next_header: IpProtocol::Udp,
            payload_len: 48,
            hop_limit: 64,
            dscp: 0,
            ecn: 0,
            ident: 0,
            dont_frag: true,
        };
        repr.emit(&mut ipv4::Packet::new_unchecked(&mut frame[14..]));
        let mut u = udp::Packet::new_unchecked(&mut frame[34..]);
        u.set_src_port(4500);
        u.set_dst_port(4500);
        u.set_len(48);
    }
    // Non-ESP marker (4 zero bytes) then an IKE header: punted, but no control attached.
    assert!(r.wan.send(MemFrame::from_bytes(&frame).unwrap()).is_ok());
    // A NAT keepalive: a single 0xFF byte.
    let mut ka = frame[..14 + 20 + 9].to_vec();
    {
        let mut ip = ipv4::Packet::new_unchecked(&mut ka[14..]);
        ip.set_total_len(29);
        ip.fill_checksum();
        let mut u = udp::Packet::new_unchecked(&mut ka[34..]);
        u.set_len(9);
    }
    ka[42] = 0xff;
    assert!(r.wan.send(MemFrame::from_bytes(&ka).unwrap()).is_ok());
    r.w.poll(0);
    assert_eq!(r.drops(DropReason::IkeNoControl), 1);
    assert_eq!(r.drops(DropReason::NatKeepalive), 1);
}

#[test]
fn an_ike_datagram_larger_than_the_mtu_leaves_in_ip_fragments_and_is_reassembled() {
    let mut a = rig(1500);
    let mut b = rig(1500);
    let (mut tx, tx_rx) = rtrb::RingBuffer::new(8);
    a.w.control.transmit = Some(tx_rx);
    let (punt_tx, mut punted) = rtrb::RingBuffer::new(8);
    b.w.control.punt = Some(punt_tx);
    b.w.set_reassembly(Some(crate::reasm::ReasmConfig::default()))
        .unwrap();
    // An IKE_AUTH with a certificate chain: some 4 KB.
    let ike: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
    tx.push(Datagram {
        // To b's WAN address: fragments are reassembled only for the gateway itself.
        src: "192.0.2.2".parse().unwrap(),
        dst: "192.0.2.1".parse().unwrap(),
        src_port: 4500,
        dst_port: 4500,
        payload: ike.clone(),
    })
    .unwrap();
    a.w.poll(0);
    let mut frames = Vec::new();
    a.wan.rx_burst(&mut frames, 8);
    assert_eq!(
        frames.len(),
        3,
        "4032 bytes of IP payload in 1480-byte steps"
    );
    assert_eq!(a.w.counters.traffic(Traffic::IkeSent), 1);
    let mut ident = None;
    for (i, f) in frames.iter().enumerate() {
        let d = f.data();
        assert!(d.len() - 14 <= 1500, "each fragment fits the MTU");
        let ip = ipv4::Packet::new_checked(&d[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(usize::from(ip.frag_offset()), i * 1480);
        assert_eq!(ip.more_frags(), i < 2);
        assert!(ident.is_none_or(|x| x == ip.ident()));
        ident = Some(ip.ident());
    }
    for f in frames {
        assert!(b.wan.send(f).is_ok());
    }
    b.w.poll(1);
    let drops: Vec<_> = crate::stats::DropReason::ALL
        .iter()
        .filter(|r| b.drops(**r) > 0)
        .map(|r| (r.name(), b.drops(*r)))
        .collect();
    let p = punted
        .pop()
        .unwrap_or_else(|_| panic!("not punted: {drops:?}"));
    assert_eq!(p.payload, ike, "the whole IKE message, marker stripped");
}
