//! MOBIKE (RFC 4555): roams with and without NAT, break-before-make, one update for every
//! CHILD_SA, replayed and forged updates, requests from a new path.

use super::*;

fn no_child_changes(p: &Pair) {
    for ev in [p.client_events(), p.gw_events()] {
        assert!(
            !ev.iter()
                .any(|e| matches!(e, Event::ChildUp(_) | Event::ChildDown { .. })),
            "no rekey, no new CHILD_SA: {ev:?}"
        );
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn a_roam_moves_the_ike_sa_and_its_child_without_a_rekey() {
    let (mut p, cid, _) = up();
    let before = spis(&mut p);
    p.clear_events();
    // Make-before-break: the new address works before the old one is given up.
    p.roam_to(cid, "192.0.2.77", "192.0.2.77:500");
    p.drive();
    // The client's data plane moved at once; the gateway's on the authenticated update.
    assert_eq!(
        moves(p.client_events()),
        [(addr("192.0.2.77:4500"), addr("192.0.2.1:4500"), true, 1)]
    );
    assert_eq!(
        moves(p.gw_events()),
        [(addr("192.0.2.1:4500"), addr("192.0.2.77:4500"), true, 1)]
    );
    assert_eq!(spis(&mut p), before, "same SPIs");
    no_child_changes(&p);
    assert_eq!(p.client().stats().total() + p.gw().stats().total(), 0);

    // And back to the first address.
    p.clear_events();
    p.roam_to(cid, "192.0.2.10", "192.0.2.10:500");
    p.drive();
    assert_eq!(moves(p.gw_events())[0].1, addr("192.0.2.10:4500"));
    assert_eq!(spis(&mut p), before);
    no_child_changes(&p);
}

#[test]
fn break_before_make_the_update_is_retransmitted_from_the_new_address() {
    let (mut p, cid, _) = up();
    let before = spis(&mut p);
    p.clear_events();
    // The old address is gone and the new one not yet usable: the first tries are lost.
    p.net.cut = true;
    p.roam_to(cid, "192.0.2.88", "192.0.2.88:500");
    p.net.run_for(ms(6_000));
    assert!(moves(p.gw_events()).is_empty());
    p.net.cut = false;
    p.drive();
    assert_eq!(
        moves(p.gw_events()),
        [(addr("192.0.2.1:4500"), addr("192.0.2.88:4500"), true, 1)]
    );
    assert_eq!(spis(&mut p), before);
    no_child_changes(&p);
    assert_eq!(p.client().list().len(), 1, "the IKE SA survived the outage");
}

#[test]
fn a_roam_behind_a_nat_follows_the_mapping_the_update_came_through() {
    let (mut p, cid, _) = up();
    p.clear_events();
    p.roam_to(cid, "10.0.0.5", "198.51.100.9:40000");
    p.drive();
    // The NAT's mapping for the client's port 4500.
    assert_eq!(
        moves(p.gw_events()),
        [(addr("192.0.2.1:4500"), addr("198.51.100.9:44000"), true, 1)]
    );
    no_child_changes(&p);
}

#[test]
fn one_update_rebinds_every_child_sa_of_the_ike_sa() {
    let (mut p, cid, _) = up();
    let now = p.now();
    p.client().create_child(now, cid).unwrap();
    p.drive();
    assert_eq!(children(p.client_events()).len(), 2);
    p.clear_events();
    let requests_before = p.to_gw().len();
    p.roam_to(cid, "192.0.2.99", "192.0.2.99:500");
    p.drive();
    assert_eq!(p.to_gw().len() - requests_before, 1, "one request");
    assert_eq!(moves(p.gw_events())[0].3, 2, "both CHILD_SAs rebound");
    no_child_changes(&p);
}

#[test]
fn an_update_that_times_out_is_tried_at_the_peers_additional_addresses() {
    let (mut p, _, gid) = up();
    // The gateway roams (it is the mobile end here), announcing a second address of its own.
    let now = p.now();
    p.net
        .move_node(GW, addr("192.0.2.2:500"), addr("192.0.2.2:500"));
    p.gw()
        .roam(
            now,
            gid,
            "192.0.2.2".parse().unwrap(),
            vec!["192.0.2.3".parse().unwrap()],
        )
        .unwrap();
    p.drive();
    assert_eq!(moves(p.client_events()).len(), 1);
    p.clear_events();
    // Now the client roams but the gateway moved on to its announced address.
    let cid = p.client().list()[0].0;
    p.net
        .move_node(GW, addr("192.0.2.3:500"), addr("192.0.2.3:500"));
    p.roam_to(cid, "192.0.2.44", "192.0.2.44:500");
    p.net.run_for(Duration::from_secs(200));
    let m = moves(p.client_events());
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(m[1].1.ip(), "192.0.2.3".parse::<IpAddr>().unwrap());
    assert_eq!(
        moves(p.gw_events())[0].1,
        addr("192.0.2.44:4500"),
        "the update arrived at the other address"
    );
    assert!(downs(p.client_events()).is_empty());
}

#[test]
fn replayed_forged_and_unauthenticated_updates_move_nothing() {
    let (mut p, cid, _) = up();
    let before = spis(&mut p);
    // A genuine roam to B, then back to A.
    let from = p.to_gw().len();
    p.roam_to(cid, "192.0.2.66", "192.0.2.66:500");
    p.drive();
    let update_to_b = p.to_gw()[from].clone();
    p.roam_to(cid, "192.0.2.10", "192.0.2.10:500");
    p.drive();
    p.clear_events();
    let drops_before = p.gw().stats().total();
    let attacker = addr("203.0.113.66:4500");
    let now = p.now();

    // 1. The old UPDATE_SA_ADDRESSES replayed from the attacker: an old message id.
    p.gw()
        .handle(now, update_to_b.dst, attacker, &update_to_b.data);
    // 2. The same, re-labelled with the next message id: its integrity check fails.
    let mut forged = update_to_b.data.clone();
    let next_id = u32::from_be_bytes(forged[20..24].try_into().unwrap()) + 2;
    forged[20..24].copy_from_slice(&next_id.to_be_bytes());
    p.gw().handle(now, update_to_b.dst, attacker, &forged);
    // 3. That one with a flipped byte in the encrypted part.
    let mut flipped = forged.clone();
    let n = flipped.len();
    flipped[n - 20] ^= 0x40;
    p.gw().handle(now, update_to_b.dst, attacker, &flipped);
    p.net.deliver();

    assert!(moves(p.gw_events()).is_empty(), "{:?}", p.gw_events());
    let s = p.gw().stats().clone();
    assert_eq!(s.total() - drops_before, 3);
    assert_eq!(s.get(crate::stats::Reason::BadMessageId), 1);
    assert_eq!(s.get(crate::stats::Reason::Integrity), 2);
    assert_eq!(spis(&mut p), before);
    // The tunnel still answers at A.
    let gid = p.gw().list()[0].0;
    let now = p.now();
    p.gw().rekey_child(now, gid, before.1[0].0).unwrap();
    p.drive();
    assert_eq!(children(p.gw_events()).len(), 1, "the gateway reaches A");
}

#[test]
fn roam_needs_an_ike_sa_that_exists_and_negotiated_mobike() {
    let (mut p, cid, _) = up();
    let now = p.now();
    // Both sent MOBIKE_SUPPORTED in IKE_AUTH: negotiated, so the client may roam.
    assert!(p
        .client()
        .roam(now, cid, "192.0.2.5".parse().unwrap(), vec![])
        .is_ok());
    assert_eq!(
        p.gw().roam(
            now,
            IkeSaId(crate::ids::IkeSpi(0xdead)),
            "192.0.2.5".parse().unwrap(),
            vec![]
        ),
        Err(crate::endpoint::ConnectError::NoSuchSa)
    );
}

#[test]
fn a_request_from_a_new_path_is_answered_there_without_moving_the_sa() {
    // strongSwan probes a new path with an empty INFORMATIONAL before it sends
    // UPDATE_SA_ADDRESSES: the answer must go to the probe's source (RFC 7296 2.11), and the
    // SA stays where it is.
    let (mut p, cid, _) = up();
    p.clear_events();
    // The client's requests now come from a new address (it has not roamed): a CHILD_SA
    // rekey stands in for strongSwan's probe, it travels the same way.
    p.move_client("192.0.2.150:500", "192.0.2.150:500");
    let before = p.to_gw().len();
    let spi = p.client().list()[0].3[0].0;
    let t0 = p.now();
    p.client().rekey_child(t0, cid, spi).unwrap();
    p.drive();
    assert!(p.to_gw().len() > before);
    assert_eq!(p.now(), t0, "answered at once, no retransmission needed");
    assert_eq!(
        children(p.client_events()).len(),
        1,
        "the answer reached the client at its new address"
    );
    assert!(moves(p.gw_events()).is_empty(), "no move without an update");
}
