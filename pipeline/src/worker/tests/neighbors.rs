//! Next hops resolved by the worker's neighbour caches: queued frames released by the answer,
//! gateways for what is not on the link, the responder, announcements.

use super::*;
use crate::neighbor::NeighborConfig;
use crate::stats::L3Stat;
use crate::wire::arp;

const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0xcc, 1];

/// The rig, its links resolving: the WAN's subnet 192.0.2.0/24 with a gateway at .254, the
/// LAN's 10.1.0.0/24.
fn resolving_rig() -> Rig {
    let mut r = rig(1500);
    resolve_links(&mut r);
    r
}

/// `r`'s links resolving, as [`resolving_rig`]'s.
pub(super) fn resolve_links(r: &mut Rig) {
    r.w.set_neighbors(Some(NeighborSetup {
        cache: NeighborConfig::default(),
        lan: Some(Routes {
            on_link: vec!["10.1.0.0/24".parse().unwrap()],
            ..Routes::default()
        }),
        wan: Some(Routes {
            on_link: vec!["192.0.2.0/24".parse().unwrap()],
            gateway4: Some("192.0.2.254".parse().unwrap()),
            ..Routes::default()
        }),
    }))
    .unwrap();
}

/// The ARP request in `f`, if it is one: (asked for, sender address, broadcast).
pub(super) fn arp_asks(f: &MemFrame) -> Option<(Ipv4Addr, Ipv4Addr, bool)> {
    let eth = ethernet::Frame::new_checked(f.data()).ok()?;
    if eth.ethertype() != ethernet::EtherType::Arp {
        return None;
    }
    let a = arp::Repr::parse(&arp::Packet::new_checked(eth.payload()).ok()?).ok()?;
    (a.operation == arp::Operation::Request).then_some((
        a.target_protocol_addr,
        a.source_protocol_addr,
        eth.dst_addr() == ethernet::BROADCAST,
    ))
}

/// Whether `f` is the WAN's broadcast ARP request (from 192.0.2.1) for the peer 192.0.2.2.
pub(super) fn asks_for_the_peer(f: &MemFrame) -> bool {
    arp_asks(f)
        == Some((
            "192.0.2.2".parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
            true,
        ))
}

/// An ARP reply from `who` at `mac` to the rig's WAN (or LAN) MAC.
pub(super) fn arp_reply(who: [u8; 4], mac: [u8; 6], to_mac: [u8; 6], to: [u8; 4]) -> MemFrame {
    let mut f = vec![0u8; 42];
    let mut eth = ethernet::Frame::new_unchecked(&mut f[..]);
    eth.set_dst_addr(to_mac);
    eth.set_src_addr(mac);
    eth.set_ethertype(ethernet::EtherType::Arp);
    arp::Repr {
        operation: arp::Operation::Reply,
        source_hardware_addr: mac,
        source_protocol_addr: who.into(),
        target_hardware_addr: to_mac,
        target_protocol_addr: to.into(),
    }
    .emit(&mut arp::Packet::new_unchecked(&mut f[14..]));
    MemFrame::from_bytes(&f).unwrap()
}

#[test]
fn esp_waits_for_its_next_hop_and_leaves_when_it_answers() {
    let mut r = resolving_rig();
    // The peer 192.0.2.2 is on the WAN link: asked for directly.
    r.send_lan("10.1.0.10", "10.2.0.7", 100);
    r.send_lan("10.1.0.10", "10.2.0.7", 100);
    let ask = r.wan.recv().expect("an ARP request");
    assert!(asks_for_the_peer(&ask), "{:?}", arp_asks(&ask));
    assert!(r.wan.recv().is_none(), "the ESP waits, one request only");
    assert_eq!(r.drops(DropReason::NeighborQueued), 2);
    assert!(r
        .wan
        .send(arp_reply([192, 0, 2, 2], PEER_MAC, WAN_MAC, [192, 0, 2, 1]))
        .is_ok());
    r.w.poll(2);
    for _ in 0..2 {
        let esp = r.wan.recv().expect("released");
        assert_eq!(&esp.data()[..6], &PEER_MAC);
        assert_eq!(outer_ipv4(&esp).next_header(), IpProtocol::Esp);
    }
    // Resolved: the next one goes at once.
    r.send_lan("10.1.0.10", "10.2.0.7", 100);
    assert_eq!(&r.wan.recv().expect("sealed").data()[..6], &PEER_MAC);
    assert_eq!(r.w.counters.l3(L3Stat::NeighborWanResolved), 1);
}

#[test]
fn what_is_not_on_the_link_goes_to_the_gateway() {
    let mut r = resolving_rig();
    // Bypass traffic to 198.51.100.9: off the WAN link, so via 192.0.2.254.
    r.send_lan("10.1.0.10", "198.51.100.9", 100);
    let ask = r.wan.recv().expect("an ARP request");
    assert_eq!(
        arp_asks(&ask).unwrap().0,
        "192.0.2.254".parse::<Ipv4Addr>().unwrap()
    );
    assert!(r
        .wan
        .send(arp_reply([192, 0, 2, 254], GW_MAC, WAN_MAC, [192, 0, 2, 1]))
        .is_ok());
    r.w.poll(2);
    let f = r.wan.recv().expect("released");
    assert_eq!(&f.data()[..6], &GW_MAC);
    assert_eq!(
        outer_ipv4(&f).dst_addr(),
        "198.51.100.9".parse::<Ipv4Addr>().unwrap()
    );
}

#[test]
fn unanswered_next_hops_drop_their_few_queued_frames_counted() {
    let mut r = resolving_rig();
    for _ in 0..5 {
        r.send_lan("10.1.0.10", "10.2.0.7", 100);
    }
    // Three frames per address (the default queue): the two oldest made way.
    assert_eq!(r.drops(DropReason::NeighborQueued), 5);
    let mut asks = 0;
    for t in 1..=5u64 {
        r.w.poll(t * 1_000_000_000 + 1);
    }
    while let Some(f) = r.wan.recv() {
        assert!(arp_asks(&f).is_some(), "nothing but requests left");
        asks += 1;
    }
    assert_eq!(asks, 3, "multicast_solicit requests, then given up");
    assert_eq!(r.w.counters.l3(L3Stat::NeighborWanNoAnswer), 1);
    assert_eq!(r.w.counters.l3(L3Stat::NeighborWanUnresolved), 3);
    assert_eq!(r.w.counters.l3(L3Stat::NeighborWanQueueDrops), 2);
}

#[test]
fn decrypted_packets_find_lan_hosts_and_hosts_asking_for_us_are_learned() {
    let mut r = resolving_rig();
    let mut peer = mirror_peer();
    // The LAN host asks for the gateway first (as it would, for its default route): answered,
    // and the host's MAC gleaned from its question.
    let ask = crate::neighbor::tests::arp_request([10, 1, 0, 1]);
    assert!(r.lan.send(MemFrame::from_bytes(&ask).unwrap()).is_ok());
    r.w.poll(1);
    let reply = r.lan.recv().expect("answered");
    assert_eq!(&reply.data()[..6], &HOST_MAC);
    peer.send_lan("10.2.0.7", "10.1.0.10", 100);
    let mut esp = peer.wan.recv().expect("sealed");
    readdress(&mut esp, WAN_MAC, PEER_MAC);
    assert!(r.wan.send(esp).is_ok());
    r.w.poll(2);
    let f = r.lan.recv().expect("delivered without asking");
    assert_eq!(&f.data()[..6], &HOST_MAC);
    assert_eq!(r.w.counters.l3(L3Stat::NeighborLanGleaned), 1);
}

#[test]
fn announcements_are_sent_for_our_addresses_only() {
    let mut r = resolving_rig();
    r.update(Update::Announce {
        wan: true,
        addrs: vec!["192.0.2.1".parse().unwrap()],
    });
    let g = r.wan.recv().expect("a gratuitous ARP");
    let (asked, sender, bcast) = arp_asks(&g).unwrap();
    assert_eq!(
        (asked, sender, bcast),
        ("192.0.2.1".parse().unwrap(), asked, true)
    );
    assert_eq!(&g.data()[6..12], &WAN_MAC);
    let bad = Update::Announce {
        wan: true,
        addrs: vec!["192.0.2.99".parse().unwrap()],
    };
    let gen = r
        .agent
        .send(agent::prepare(crate::crypto::best_backend(), &bad).unwrap());
    r.w.poll(3);
    r.agent.pump();
    assert!(r.agent.rejections().iter().any(|(x, _)| *x == gen));
    assert!(r.wan.recv().is_none());
    assert_eq!(r.w.counters.l3(L3Stat::NeighborAnnounced), 1);
}

#[test]
fn a_configured_neighbor_needs_no_resolution() {
    // The rig as it was: no resolution, every frame to the configured MAC.
    let mut r = rig(1500);
    r.send_lan("10.1.0.10", "10.2.0.7", 100);
    assert_eq!(&r.wan.recv().expect("sealed").data()[..6], &PEER_MAC);
}

#[test]
fn a_neighbor_that_moves_is_followed_at_once_despite_the_memo() {
    let mut r = resolving_rig();
    r.send_lan("10.1.0.10", "10.2.0.7", 100);
    assert!(r.wan.recv().is_some_and(|f| arp_asks(&f).is_some()));
    assert!(r
        .wan
        .send(arp_reply([192, 0, 2, 2], PEER_MAC, WAN_MAC, [192, 0, 2, 1]))
        .is_ok());
    r.w.poll(2);
    assert_eq!(&r.wan.recv().expect("released").data()[..6], &PEER_MAC);
    r.send_lan("10.1.0.10", "10.2.0.7", 100);
    assert_eq!(&r.wan.recv().expect("memoised").data()[..6], &PEER_MAC);
    // The peer's address moves to another MAC (an HA takeover's gratuitous ARP).
    let mut g = vec![0u8; 42];
    crate::neighbor::frames::gratuitous_arp(&mut g, GW_MAC, "192.0.2.2".parse().unwrap()).unwrap();
    assert!(r.wan.send(MemFrame::from_bytes(&g).unwrap()).is_ok());
    r.w.poll(3);
    r.send_lan("10.1.0.10", "10.2.0.7", 100);
    assert_eq!(&r.wan.recv().expect("sealed").data()[..6], &GW_MAC);
    assert_eq!(r.w.counters.l3(L3Stat::NeighborWanMacChanged), 1);
}
