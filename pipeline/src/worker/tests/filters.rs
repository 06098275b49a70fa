//! Edge filters (issue 18, M9): ESP for an SPI this data plane does not hold goes on to the
//! LAN (an encryption node behind the edge) when a filter rule passes its outer flow; clear
//! traffic from a client's outer address passes to permitted hosts or is dropped; every rule
//! counts what it matched.

use super::*;
use proto::policy::{filter_index, filter_rule_id};

fn filter_rules() -> Vec<Rule> {
    let esp = Selector {
        proto: Some(50),
        ..sel("192.0.2.1/32", "192.0.2.2/32")
    };
    vec![
        // Filter 0: the client's ESP (its SAs on an encryption node) passes both ways.
        Rule {
            id: filter_rule_id(0, 0).unwrap(),
            selector: esp,
            action: Action::Bypass,
        },
        // Filter 1: clear traffic between the client's address and one permitted host.
        Rule {
            id: filter_rule_id(1, 0).unwrap(),
            selector: sel("10.1.0.20/32", "192.0.2.2/32"),
            action: Action::Bypass,
        },
        // Filter 2: everything else of the client is dropped.
        Rule {
            id: filter_rule_id(2, 0).unwrap(),
            selector: sel("0.0.0.0/0", "192.0.2.2/32"),
            action: Action::Discard,
        },
        Rule {
            id: 9,
            selector: sel("0.0.0.0/0", "0.0.0.0/0"),
            action: Action::Discard,
        },
    ]
}

/// A sealed frame from the peer (192.0.2.2) for SPI `spi`, addressed to the rig's WAN.
fn esp_from_peer(spi: u32) -> MemFrame {
    let mut peer = mirror_peer();
    peer.send_lan("10.2.0.7", "10.1.0.10", 100);
    let good = peer.wan.recv().expect("sealed");
    let mut f = MemFrame::from_bytes(good.data()).unwrap();
    set_esp_spi(&mut f, spi);
    readdress(&mut f, WAN_MAC, PEER_MAC);
    f
}

#[test]
fn esp_for_an_sa_on_an_encryption_node_goes_on_to_the_lan_unchanged_and_unreported() {
    let mut r = rig(1500);
    r.update(Update::ReplaceSpd {
        rules: filter_rules(),
    });
    let f = esp_from_peer(0xdead_beef);
    let sent = f.data()[ethernet::HEADER_LEN..].to_vec();
    assert!(r.wan.send(f).is_ok());
    r.w.poll(10);
    let out = r.lan.recv().expect("forwarded to the LAN side");
    let ip = outer_ipv4(&out);
    assert_eq!(ip.next_header(), IpProtocol::Esp);
    assert_eq!(ip.hop_limit() + 1, outer_ipv4_of(&sent).hop_limit());
    // The ESP itself (SPI, sequence number, ciphertext) is untouched.
    assert_eq!(ip.payload(), outer_ipv4_of(&sent).payload());
    assert_eq!(r.drops(DropReason::UnknownSpi), 0);
    assert_eq!(r.w.counters.filter_hits(0), 1);
    assert_eq!(r.w.counters.traffic(Traffic::Bypassed), 1);
    r.agent.pump();
    let ev: Vec<Event> = r.agent.take_events().into();
    assert!(ev.is_empty(), "no unknown-SPI report: {ev:?}");
    // The SA the rig holds itself is still opened here, not forwarded.
    let f = esp_from_peer(0xb001);
    assert!(r.wan.send(f).is_ok());
    r.w.poll(20);
    let out = r.lan.recv().expect("opened");
    assert_eq!(outer_ipv4(&out).next_header(), IpProtocol::Udp);
    assert_eq!(r.w.counters.filter_hits(0), 1);
}

#[test]
fn without_a_filter_rule_an_unknown_spi_is_dropped_and_reported_as_before() {
    let mut r = rig(1500);
    // A plain bypass rule (not a filter's) does not forward ESP.
    r.update(Update::ReplaceSpd {
        rules: vec![Rule {
            id: 1,
            selector: sel("0.0.0.0/0", "0.0.0.0/0"),
            action: Action::Bypass,
        }],
    });
    assert!(r.wan.send(esp_from_peer(0xdead_beef)).is_ok());
    r.w.poll(10);
    assert!(r.lan.recv().is_none());
    assert_eq!(r.drops(DropReason::UnknownSpi), 1);
    r.agent.pump();
    let ev: Vec<Event> = r.agent.take_events().into();
    assert!(matches!(ev[..], [Event::UnknownSpi { .. }]), "{ev:?}");
}

#[test]
fn clear_traffic_passes_to_permitted_hosts_only_and_each_rule_counts() {
    let mut r = rig(1500);
    r.update(Update::ReplaceSpd {
        rules: filter_rules(),
    });
    r.send_wan_clear("192.0.2.2", "10.1.0.20");
    r.send_wan_clear("192.0.2.2", "10.1.0.20");
    assert_eq!(std::iter::from_fn(|| r.lan.recv()).count(), 2);
    r.send_wan_clear("192.0.2.2", "10.1.0.30");
    assert!(r.lan.recv().is_none());
    assert_eq!(r.drops(DropReason::PolicyDiscard), 1);
    // The answer of the permitted host goes back to the client in the clear.
    r.send_lan("10.1.0.20", "192.0.2.2", 100);
    assert!(r.wan.recv().is_some());
    // ESP from an encryption node on the LAN side to the client passes out too.
    let mut f = esp_from_peer(0x1234);
    {
        let mut ip = ipv4::Packet::new_unchecked(&mut f.data_mut()[ethernet::HEADER_LEN..]);
        let (s, d) = (ip.src_addr(), ip.dst_addr());
        ip.set_src_addr(d);
        ip.set_dst_addr(s);
        ip.fill_checksum();
    }
    readdress(&mut f, LAN_MAC, HOST_MAC);
    assert!(r.lan.send(f).is_ok());
    r.w.poll(30);
    let out = r
        .wan
        .recv()
        .expect("the encryption node's ESP to the client");
    assert_eq!(outer_ipv4(&out).next_header(), IpProtocol::Esp);
    let hits: Vec<u64> = (0..3).map(|i| r.w.counters.filter_hits(i)).collect();
    assert_eq!(hits, [1, 3, 1]);
    assert_eq!(filter_index(9), None);
}

fn outer_ipv4_of(ip: &[u8]) -> ipv4::Packet<&[u8]> {
    ipv4::Packet::new_checked(ip).unwrap()
}
