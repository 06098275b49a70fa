//! CREATE_CHILD_SA rekeying the IKE SA: from either side (the children move along),
//! simultaneous rekeys (RFC 7296 2.8.2).

use super::*;

#[test]
fn ike_rekey_from_either_side_keeps_the_children() {
    for from_client in [true, false] {
        let (mut p, cid, gid) = up();
        let child = children(p.client_events())[0].clone();
        p.clear_events();
        let now = p.now();
        if from_client {
            p.client().rekey_ike(now, cid).unwrap();
        } else {
            p.gw().rekey_ike(now, gid).unwrap();
        }
        p.drive();
        for (side, ev) in [("client", p.client_events()), ("gw", p.gw_events())] {
            assert!(
                ev.iter().any(|e| matches!(e, Event::IkeRekeyed { .. })),
                "{side}: {ev:?}"
            );
            assert!(
                !ev.iter().any(|e| matches!(e, Event::ChildDown { .. })),
                "{side}: children kept"
            );
        }
        assert_eq!(p.client().list().len(), 1, "the old IKE SA is gone");
        assert_eq!(p.gw().list().len(), 1);
        assert_eq!(
            p.client().list()[0].3,
            vec![(child.inbound.spi, child.outbound.spi)]
        );
        assert_eq!(
            p.client().services().spis.in_use().0,
            1,
            "the old IKE SA's SPI went back"
        );
        // The new IKE SA works: a child rekey over it.
        let new_c = p.client().list()[0].0;
        let now = p.now();
        p.client()
            .rekey_child(now, new_c, child.inbound.spi)
            .unwrap();
        p.drive();
        assert_eq!(children(p.gw_events()).len(), 1);
    }
}

#[test]
fn simultaneous_ike_rekeys_leave_one_ike_sa_with_the_children_on_both_ends() {
    // RFC 7296 2.8.2; several seeds so that both outcomes of the nonce comparison occur.
    let mut survivors_by = std::collections::HashSet::new();
    for seed in 0..12u8 {
        let mut p = Pair::with_endpoints(
            endpoint(client_cfg(), seed.wrapping_add(50)),
            endpoint(gateway_cfg(), 2),
        );
        let cid = p.connect();
        p.drive();
        let gid = p.gw().list()[0].0;
        let child = p.client().list()[0].3.clone();
        p.clear_events();
        // Both ends rekey the IKE SA before either hears of the other's.
        let now = p.now();
        p.client().rekey_ike(now, cid).unwrap();
        p.gw().rekey_ike(now, gid).unwrap();
        p.drive();
        let (cl, gl) = (p.client().list(), p.gw().list());
        assert_eq!(cl.len(), 1, "seed {seed}: one IKE SA at the client: {cl:?}");
        assert_eq!(
            gl.len(),
            1,
            "seed {seed}: one IKE SA at the gateway: {gl:?}"
        );
        assert_ne!(cl[0].0, cid, "seed {seed}: a new one");
        assert_eq!(cl[0].3, child, "seed {seed}: the CHILD_SA moved with it");
        assert_eq!(gl[0].3.len(), 1);
        for ev in [p.client_events(), p.gw_events()] {
            assert!(
                !ev.iter().any(|e| matches!(e, Event::ChildDown { .. })),
                "seed {seed}: no CHILD_SA went down: {ev:?}"
            );
        }
        let rekeyed: Vec<bool> = p
            .client_events()
            .iter()
            .filter_map(|e| match e {
                Event::IkeRekeyed { initiated_here, .. } => Some(*initiated_here),
                _ => None,
            })
            .collect();
        assert_eq!(rekeyed.len(), 1, "seed {seed}: one rekey reported");
        survivors_by.insert(rekeyed[0]);
        // The surviving IKE SA works: a CHILD_SA rekey over it completes on both ends.
        p.clear_events();
        let now = p.now();
        p.client().rekey_child(now, cl[0].0, child[0].0).unwrap();
        p.drive();
        assert_eq!(children(p.client_events()).len(), 1, "seed {seed}");
        assert_eq!(children(p.gw_events()).len(), 1, "seed {seed}");
        // The virtual IP lease went with the children to the surviving IKE SA.
        assert_eq!(
            p.gw().leases(),
            [("10.99.0.1".parse().unwrap(), gl[0].0)],
            "seed {seed}"
        );
        assert_eq!(
            p.gw().services().spis.in_use().0,
            1,
            "seed {seed}: the gateway holds one IKE SPI"
        );
    }
    assert_eq!(
        survivors_by.len(),
        2,
        "both the client's and the gateway's rekey survived in some seed"
    );
}

#[test]
fn the_ike_sa_is_rekeyed_on_its_timer_and_keeps_its_children() {
    let mut c = client_cfg();
    c.ike_rekey = Some(Duration::from_secs(50));
    let mut p = Pair::new(c, gateway_cfg());
    let cid = p.connect();
    let child = {
        p.net.deliver();
        p.client().list()[0].3.clone()
    };
    p.net.run_for(Duration::from_secs(49));
    assert_eq!(p.client().list()[0].0, cid, "not yet");
    p.net.run_for(Duration::from_secs(2));
    let after = p.client().list();
    assert_eq!(after.len(), 1);
    assert_ne!(after[0].0, cid, "rekeyed at 50 s");
    assert_eq!(after[0].3, child);
    // The new IKE SA has its own 50 s.
    p.net.run_for(Duration::from_secs(50));
    assert_ne!(p.client().list()[0].0, after[0].0);
    assert_eq!(p.client().list()[0].3, child);
    assert_eq!(child_downs(p.client_events()), 0);
}
