//! Two workers joined by the hand-off: frames that reach the worker which does not own their
//! SA are carried out by the one that does; a full lane is back-pressure, not loss.

use super::*;
use crate::handoff::mesh;

/// Worker `id` between its own in-memory ports (no SAs, no policy yet).
fn bare(id: u16, punt: Option<Producer<Datagram>>) -> Rig {
    let (lan, lan_gw) = cable("host", "lan", 256);
    let (wan_gw, wan) = cable("wan", "peer", 256);
    let (agent, control) = agent::link(id, 64, punt);
    let w = Worker::new(
        id,
        lan_gw,
        wan_gw,
        Link {
            mac: LAN_MAC,
            neighbor: HOST_MAC,
            addr4: Some("10.1.0.1".parse().unwrap()),
            addr6: None,
            mtu: 1500,
        },
        Link {
            mac: WAN_MAC,
            neighbor: PEER_MAC,
            addr4: Some("192.0.2.1".parse().unwrap()),
            addr6: None,
            mtu: 1500,
        },
        Sad::with_capacity(8, 3),
        Box::new(Spd::new(Vec::new()).unwrap()),
        control,
    );
    Rig {
        w,
        lan,
        wan,
        agent,
        clock: 0,
    }
}

/// The inbound SPI worker 1 owns (its top bit says 1 of 2 workers).
const SPI_IN_W1: u32 = 0x8000_b001;

/// Workers 0 and 1 of one gateway, lanes of `slots`: worker 1 owns the tunnel's SAs (outbound
/// id 1, inbound SPI_IN_W1), both have the policy; worker 0 has the punt ring.
fn two_workers(slots: usize) -> (Rig, Rig, rtrb::Consumer<Datagram>) {
    let (punt_tx, punt_rx) = rtrb::RingBuffer::new(16);
    let mut ends = mesh(2, slots, 64).into_iter();
    let mut w0 = bare(0, Some(punt_tx));
    let mut w1 = bare(1, None);
    w0.w.set_handoff(ends.next().unwrap());
    w1.w.set_handoff(ends.next().unwrap());
    w1.update(Update::AddSa {
        dir: Direction::Outbound,
        params: sa(
            1,
            0xa001,
            "192.0.2.1",
            "192.0.2.2",
            "10.1.0.0/24",
            "10.2.0.0/24",
        ),
    });
    w1.update(Update::AddSa {
        dir: Direction::Inbound,
        params: sa(
            2,
            SPI_IN_W1,
            "192.0.2.1",
            "192.0.2.2",
            "10.1.0.0/24",
            "10.2.0.0/24",
        ),
    });
    let rules = vec![Rule {
        id: 0,
        selector: sel("10.1.0.0/24", "10.2.0.0/24"),
        action: Action::Protect(SaId(1)),
    }];
    w0.update(Update::ReplaceSpd {
        rules: rules.clone(),
    });
    w1.update(Update::ReplaceSpd { rules });
    (w0, w1, punt_rx)
}

fn lan_frame(src: &str, dst: &str, dst_port: u16) -> MemFrame {
    let mut g = Generator::new(
        vec![FlowSpec {
            src_mac: HOST_MAC,
            dst_mac: LAN_MAC,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            src_port: 1234,
            dst_port,
        }],
        &[100],
    );
    let mut f = MemFrame::new();
    g.fill(&mut f, 0);
    f
}

#[test]
fn frames_reach_the_sa_owner_through_the_lane() {
    let (mut w0, mut w1, mut punt) = two_workers(8);

    // LAN traffic on worker 0 for the SA worker 1 owns: sealed by worker 1, on its WAN.
    assert!(w0
        .lan
        .send(lan_frame("10.1.0.10", "10.2.0.7", 5001))
        .is_ok());
    w0.w.poll(1);
    assert!(
        w0.wan.recv().is_none(),
        "worker 0 does not seal on an SA it does not own"
    );
    assert_eq!(w0.w.counters.traffic(Traffic::HandedOff), 1);
    w1.w.poll(1);
    let esp_out = w1.wan.recv().expect("sealed by the owner");
    let ip = outer_ipv4(&esp_out);
    assert_eq!(ip.next_header(), IpProtocol::Esp);
    assert_eq!(
        esp::Packet::new_checked(ip.payload()).unwrap().spi(),
        0xa001
    );
    assert_eq!(w1.w.counters.traffic(Traffic::HandOffReceived), 1);
    assert_eq!(w1.w.counters.traffic(Traffic::Encrypted), 1);

    // ESP for worker 1's SPI arriving at worker 0: opened by worker 1, on its LAN.
    let mut peer = rig(1500);
    peer.update(Update::AddSa {
        dir: Direction::Outbound,
        params: sa(
            1,
            SPI_IN_W1,
            "192.0.2.2",
            "192.0.2.1",
            "10.2.0.0/24",
            "10.1.0.0/24",
        ),
    });
    peer.update(Update::ReplaceSpd {
        rules: vec![Rule {
            id: 0,
            selector: sel("10.2.0.0/24", "10.1.0.0/24"),
            action: Action::Protect(SaId(1)),
        }],
    });
    peer.send_lan("10.2.0.7", "10.1.0.10", 100);
    let mut esp_in = peer.wan.recv().expect("the peer sealed");
    readdress(&mut esp_in, WAN_MAC, PEER_MAC);
    assert!(w0.wan.send(esp_in).is_ok());
    w0.w.poll(2);
    assert!(w0.lan.recv().is_none());
    w1.w.poll(2);
    let clear = w1.lan.recv().expect("opened by the owner");
    assert_eq!(
        outer_ipv4(&clear).src_addr(),
        "10.2.0.7".parse::<Ipv4Addr>().unwrap()
    );
    assert_eq!(w1.w.counters.traffic(Traffic::Decrypted), 1);

    // IKE reaching worker 1 (no punt ring) is punted by worker 0.
    let mut ike = lan_frame("192.0.2.2", "192.0.2.1", 500);
    readdress(&mut ike, WAN_MAC, PEER_MAC);
    assert!(w1.wan.send(ike).is_ok());
    w1.w.poll(3);
    w0.w.poll(3);
    let d = punt.pop().expect("punted by worker 0");
    assert_eq!(d.dst_port, 500);
    assert_eq!(w0.drops(DropReason::IkePunted), 1);

    // Nothing was lost on the way, nothing handed back and forth.
    for r in [&w0, &w1] {
        let s = r.w.counters.snapshot();
        assert_eq!(
            s.nonzero_drops().count(),
            0,
            "{:?}",
            s.nonzero_drops().collect::<Vec<_>>()
        );
    }
    assert_eq!(w0.w.counters.traffic(Traffic::HandedOff), 2);
    assert_eq!(w1.w.counters.traffic(Traffic::HandedOff), 1);
}

#[test]
fn a_frame_handed_over_is_never_handed_on() {
    let (mut w0, mut w1, _punt) = two_workers(8);
    // Worker 1 lost the SA (deleted) while worker 0 still sends it its flows: dropped there
    // as no_sa, not bounced back.
    w1.update(Update::DeleteOutbound { id: SaId(1) });
    // The owner table forgot it: worker 0 drops it itself now.
    assert!(w0
        .lan
        .send(lan_frame("10.1.0.10", "10.2.0.7", 5001))
        .is_ok());
    w0.w.poll(1);
    assert_eq!(w0.drops(DropReason::NoSa), 1);
    // A stale parcel (sent before the delete) reaching worker 1.
    w0.w.handoff.as_mut().unwrap().owners().set(SaId(1), 1);
    assert!(w0
        .lan
        .send(lan_frame("10.1.0.10", "10.2.0.7", 5001))
        .is_ok());
    w0.w.poll(2);
    w1.w.poll(2);
    assert_eq!(w1.drops(DropReason::NoSa), 1);
    assert_eq!(w1.w.counters.traffic(Traffic::HandedOff), 0);
}

#[test]
fn a_full_lane_is_back_pressure_not_loss() {
    let (mut w0, mut w1, _punt) = two_workers(4);
    let n = 40;
    for _ in 0..n {
        assert!(w0
            .lan
            .send(lan_frame("10.1.0.10", "10.2.0.7", 5001))
            .is_ok());
    }
    // Worker 1 is busy elsewhere: worker 0 fills the lane, keeps the rest, stops reading.
    for t in 0..5 {
        w0.w.poll(t);
    }
    let s = w0.w.counters.snapshot();
    assert_eq!(s.traffic(Traffic::HandedOff), 4, "the lane holds 4");
    assert_eq!(
        s.traffic(Traffic::RxPackets),
        BURST as u64,
        "rx paused after one burst"
    );
    assert!(
        s.traffic(Traffic::HandOffWaits) >= 5,
        "each turn's wait is counted"
    );
    assert_eq!(s.nonzero_drops().count(), 0);
    // Worker 1 catches up: every frame comes out sealed, in order of the sequence numbers.
    let mut sealed = Vec::new();
    for t in 5..200 {
        w1.w.poll(t);
        w0.w.poll(t);
        while let Some(f) = w1.wan.recv() {
            let ip = outer_ipv4(&f);
            sealed.push(esp::Packet::new_checked(ip.payload()).unwrap().seq_number());
        }
        if sealed.len() == n {
            break;
        }
    }
    assert_eq!(sealed, (1..=n as u32).collect::<Vec<_>>());
    assert_eq!(w0.w.counters.traffic(Traffic::HandedOff), n as u64);
    assert_eq!(w1.w.counters.traffic(Traffic::HandOffReceived), n as u64);
    for r in [&w0, &w1] {
        assert_eq!(r.w.counters.snapshot().nonzero_drops().count(), 0);
    }
}
