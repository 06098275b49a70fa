//! INFORMATIONAL: deletes, liveness, INVALID_SPI.

use super::*;
use crate::endpoint::{ConnectError, PRIVATE_QUEUE_MAX};

#[test]
fn delete_tears_down_both_sides() {
    let (mut p, cid, _) = up();
    p.clear_events();
    let now = p.now();
    p.client().delete_ike(now, cid).unwrap();
    p.drive();
    assert!(p.client().list().is_empty());
    assert!(p.gw().list().is_empty());
    assert_eq!(downs(p.gw_events()), vec![DownReason::PeerDeleted]);
    assert_eq!(downs(p.client_events()), vec![DownReason::Deleted]);
    assert_eq!(child_downs(p.gw_events()), 1);
    assert_eq!(child_downs(p.client_events()), 1);
    assert!(p.gw().leases().is_empty(), "the virtual IP is free again");
    assert_eq!(
        p.gw().services().spis.in_use(),
        (0, 0),
        "every SPI went back"
    );
    assert_eq!(p.client().services().spis.in_use(), (0, 0));
    assert_eq!(p.gw().poll_timeout(), None, "no deadline left behind");
}

#[test]
fn liveness_checks_find_a_dead_peer() {
    let mut c = client_cfg();
    c.dpd = Some(ms(10_000));
    let mut p = Pair::new(c, gateway_cfg());
    p.connect();
    p.drive();
    assert!(downs(p.client_events()).is_empty(), "liveness kept it up");
    p.clear_events();
    p.net.cut = true;
    // Five retransmissions, 4 s x 1.8^n apart: about 165 s of virtual time after the check.
    p.net.run_for(Duration::from_secs(200));
    assert_eq!(downs(p.client_events()), vec![DownReason::Timeout]);
    assert_eq!(child_downs(p.client_events()), 1);
    assert!(p.client().list().is_empty());
}

#[test]
fn invalid_spi_is_told_to_the_peer_inside_its_ike_sa() {
    let (mut p, _, _) = up();
    p.clear_events();
    let (now, client_ip) = (p.now(), p.net.nodes[CLIENT].public.ip());
    assert!(p
        .gw()
        .notify_invalid_spi(now, client_ip, ChildSpi(0xdead_beef)));
    assert!(
        !p.gw()
            .notify_invalid_spi(now, client_ip, ChildSpi(0xdead_beef)),
        "one under way at a time"
    );
    assert!(
        !p.gw()
            .notify_invalid_spi(now, "203.0.113.1".parse().unwrap(), ChildSpi(1000)),
        "no IKE SA with that address"
    );
    let before = p.to_gw().len();
    p.drive();
    assert_eq!(p.to_gw().len() - before, 1, "the client answered");
    assert!(
        p.client_events().is_empty() && p.gw_events().is_empty(),
        "a hint only"
    );
    assert_eq!(p.client().list()[0].3.len(), 1);
    assert_eq!(p.client().stats().total(), 0);
}

fn privates(events: &VecDeque<Event>) -> Vec<(IkeSaId, u16, Vec<u8>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::PrivateNotify { ike, kind, data } => Some((*ike, *kind, data.0.to_vec())),
            _ => None,
        })
        .collect()
}

#[test]
fn private_notifies_go_both_ways_in_order_inside_the_ike_sa() {
    let (mut p, cid, gid) = up();
    p.clear_events();
    let now = p.now();
    for i in 0..5u8 {
        p.gw().send_private(now, gid, 48_200, &[1, i]).unwrap();
    }
    // Equal to one waiting: not queued twice.
    p.gw().send_private(now, gid, 48_200, &[1, 4]).unwrap();
    p.client().send_private(now, cid, 48_201, b"ack").unwrap();
    p.drive();
    let got = privates(p.client_events());
    assert_eq!(
        got,
        (0..5u8)
            .map(|i| (cid, 48_200, vec![1, i]))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        privates(p.gw_events()),
        vec![(gid, 48_201, b"ack".to_vec())]
    );
    assert!(downs(p.client_events()).is_empty() && downs(p.gw_events()).is_empty());
    // Not a private type, or no such SA: refused, nothing sent.
    assert_eq!(
        p.gw().send_private(now, gid, 16_384, b"x"),
        Err(ConnectError::NotPrivate)
    );
    assert_eq!(
        p.gw()
            .send_private(now, IkeSaId(crate::ids::IkeSpi(999)), 48_200, b"x"),
        Err(ConnectError::NoSuchSa)
    );
    // The data never shows in Debug (it may hold keys).
    let dbg = format!("{:?}", p.client_events());
    assert!(dbg.contains("PrivateData(2 bytes)"), "{dbg}");
}

#[test]
fn a_lost_private_notify_is_sent_again_and_reported_once() {
    let (mut p, cid, gid) = up();
    p.clear_events();
    let now = p.now();
    p.net.cut = true;
    p.gw().send_private(now, gid, 48_200, b"offer").unwrap();
    p.net.run_for(Duration::from_millis(100));
    p.net.cut = false;
    p.net.run_for(Duration::from_secs(30));
    assert_eq!(
        privates(p.client_events()),
        vec![(cid, 48_200, b"offer".to_vec())]
    );
    // Queue bound.
    p.net.cut = true;
    let now = p.now();
    let mut full = 0;
    for i in 0..=PRIVATE_QUEUE_MAX as u32 + 1 {
        if p.gw().send_private(now, gid, 48_200, &i.to_be_bytes()) == Err(ConnectError::QueueFull) {
            full += 1;
        }
    }
    assert!(full >= 1);
}
