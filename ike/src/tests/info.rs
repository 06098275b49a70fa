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
    let (now, client) = (p.now(), p.client_addr());
    assert!(p
        .gw()
        .notify_invalid_spi(now, client, ChildSpi(0xdead_beef)));
    assert!(
        !p.gw()
            .notify_invalid_spi(now, client, ChildSpi(0xdead_beef)),
        "one under way at a time"
    );
    assert!(
        !p.gw()
            .notify_invalid_spi(now, "203.0.113.1:4500".parse().unwrap(), ChildSpi(1000)),
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
    // It named no CHILD_SA of the client's: counted, nothing else.
    let h = p.client().stats().hints;
    assert_eq!(
        (
            h.invalid_spi_protected_ignored,
            h.invalid_spi_children_recreated
        ),
        (1, 0)
    );
    assert_eq!(p.gw().stats().hints.invalid_spi_sent_protected, 1);
}

/// The outcome of an authenticated INVALID_SPI (RFC 7296 3.10.1) from `teller` naming the
/// outbound SPI of `told`'s CHILD_SA: `told` makes it anew inside the same IKE SA (a new
/// CHILD_SA with its selectors, reported as replacing the old one; the old one deleted after
/// it), nothing goes down but the old CHILD_SA. `client_tells`: the client is the teller.
fn recreated_after_invalid_spi(client_tells: bool) {
    let (mut p, cid, gid) = up();
    p.clear_events();
    let (c0, g0) = spis(&mut p);
    let now = p.now();
    // The teller got ESP on its inbound SPI of the CHILD_SA: the told side's outbound.
    let (to, lost_out) = if client_tells {
        (p.gw_addr(), g0[0].1)
    } else {
        (p.client_addr(), c0[0].1)
    };
    let teller = if client_tells { p.client() } else { p.gw() };
    assert!(teller.notify_invalid_spi(now, to, lost_out));
    p.drive();
    let (told_events, teller_events) = if client_tells {
        (p.gw_events().clone(), p.client_events().clone())
    } else {
        (p.client_events().clone(), p.gw_events().clone())
    };
    assert!(downs(&told_events).is_empty() && downs(&teller_events).is_empty());
    let new = children(&told_events);
    assert_eq!(new.len(), 1, "one new CHILD_SA: {told_events:?}");
    let old_in = if client_tells { g0[0].0 } else { c0[0].0 };
    assert_eq!(new[0].rekey_of, Some(old_in), "it replaces the lost one");
    assert!(new[0].initiated_here);
    assert_ne!(new[0].outbound.spi, lost_out);
    // The peer took it as a new CHILD_SA (no REKEY_SA: it had nothing to rekey).
    let theirs = children(&teller_events);
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].rekey_of, None);
    assert_keys_pair(
        if client_tells { &theirs[0] } else { &new[0] },
        if client_tells { &new[0] } else { &theirs[0] },
    );
    assert_eq!(new[0].local_ts, theirs[0].remote_ts);
    assert_eq!(new[0].remote_ts, theirs[0].local_ts);
    // The old one was deleted on both sides; the IKE SAs stayed.
    assert_eq!(child_downs(&told_events), 1);
    assert_eq!(child_downs(&teller_events), 1);
    let (c1, g1) = spis(&mut p);
    assert_eq!((c1.len(), g1.len()), (1, 1), "{c1:?} {g1:?}");
    assert_eq!((c1[0].0, c1[0].1), (g1[0].1, g1[0].0));
    assert!(!c1.contains(&c0[0]) && !g1.contains(&g0[0]));
    assert_eq!(p.client().list()[0].0, cid);
    assert_eq!(p.gw().list()[0].0, gid);
    let told = if client_tells { p.gw() } else { p.client() };
    assert_eq!(told.stats().hints.invalid_spi_children_recreated, 1);
    assert_eq!(told.stats().total(), 0);
}

#[test]
fn a_client_makes_the_child_sa_its_gateway_lost_anew_in_the_same_ike_sa() {
    recreated_after_invalid_spi(false);
}

#[test]
fn a_gateway_makes_the_child_sa_its_client_lost_anew_in_the_same_ike_sa() {
    recreated_after_invalid_spi(true);
}

#[test]
fn invalid_spi_inside_an_ike_sa_is_rate_limited() {
    let (mut p, _, _) = up();
    let client = p.client_addr();
    let mut sent = 0;
    // ESP for unknown SPIs keeps coming for 3 s: at most one notification a second.
    for i in 0..300u32 {
        let now = p.now();
        sent += usize::from(p.gw().notify_invalid_spi(now, client, ChildSpi(0x5000 + i)));
        p.net.run_for(ms(10));
    }
    let h = p.gw().stats().hints;
    assert!((3..=4).contains(&sent), "{sent}");
    assert_eq!(h.invalid_spi_sent_protected, sent as u64);
    assert_eq!(h.invalid_spi_send_limited, 300 - sent as u64);
    // None named the client's CHILD_SA: it kept it.
    assert_eq!(p.client().list()[0].3.len(), 1);
    assert_eq!(
        p.client().stats().hints.invalid_spi_protected_ignored,
        sent as u64
    );
}

/// ESP in UDP from a port no IKE SA has (the IKE SA's port is preferred, RFC 3948: they
/// share the NAT mapping): the IKE SA with that address takes the notification.
#[test]
fn invalid_spi_from_another_port_goes_to_the_ike_sa_of_that_address() {
    let (mut p, _, _) = up();
    let client = p.client_addr();
    let other = SocketAddr::new(client.ip(), client.port().wrapping_add(1));
    let now = p.now();
    // No IKE SA with that port: the one with that address takes it.
    assert!(p.gw().notify_invalid_spi(now, other, ChildSpi(7)));
    p.drive();
    assert_eq!(p.client().stats().hints.invalid_spi_protected_ignored, 1);
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
