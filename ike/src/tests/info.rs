//! INFORMATIONAL: deletes, liveness, INVALID_SPI.

use super::*;

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
