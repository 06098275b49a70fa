//! CREATE_CHILD_SA for CHILD_SAs: rekeys from either side (make-before-break), simultaneous
//! rekeys (RFC 7296 2.8.1), further CHILD_SAs, hard lifetimes.

use super::*;

#[test]
fn child_rekey_from_either_side_is_make_before_break() {
    for from_client in [true, false] {
        let (mut p, cid, gid) = up();
        let old_c = children(p.client_events())[0].clone();
        p.clear_events();
        let now = p.now();
        if from_client {
            p.client().rekey_child(now, cid, old_c.inbound.spi).unwrap();
        } else {
            p.gw().rekey_child(now, gid, old_c.outbound.spi).unwrap();
        }
        p.drive();
        let (c, g) = (children(p.client_events()), children(p.gw_events()));
        assert_eq!(
            (c.len(), g.len()),
            (1, 1),
            "from_client={from_client}: {:?}",
            p.client_events()
        );
        assert_keys_pair(&c[0], &g[0]);
        assert_ne!(c[0].inbound.spi, old_c.inbound.spi);
        assert_ne!(
            c[0].inbound.keymat.as_slice(),
            old_c.inbound.keymat.as_slice()
        );
        // The new SA came up before the old one went, on both sides.
        for ev in [p.client_events(), p.gw_events()] {
            let up_at = ev
                .iter()
                .position(|e| matches!(e, Event::ChildUp(_)))
                .unwrap();
            let down_at = ev
                .iter()
                .position(|e| matches!(e, Event::ChildDown { .. }))
                .unwrap();
            assert!(up_at < down_at);
        }
        assert_eq!(
            p.client().list()[0].3.len(),
            1,
            "only the new child remains"
        );
        assert_eq!(p.gw().list()[0].3.len(), 1);
        assert_eq!(
            p.client().services().spis.in_use().1,
            1,
            "the old CHILD_SA's SPI went back"
        );
    }
}

#[test]
fn simultaneous_child_rekeys_leave_exactly_one_new_child() {
    // Several seeds, so that both outcomes of the nonce comparison occur.
    let mut outcomes = std::collections::HashSet::new();
    for seed in 0..12u8 {
        let mut p = Pair::with_endpoints(
            endpoint(client_cfg(), seed.wrapping_add(100)),
            endpoint(gateway_cfg(), 2),
        );
        let cid = p.connect();
        p.drive();
        let gid = ike_up(p.gw_events()).unwrap();
        let old = children(p.client_events())[0].clone();
        p.clear_events();
        // Both ends start a rekey of the same CHILD_SA before either hears of the other's.
        let now = p.now();
        p.client().rekey_child(now, cid, old.inbound.spi).unwrap();
        p.gw().rekey_child(now, gid, old.outbound.spi).unwrap();
        p.drive();
        let (cl, gl) = (p.client().list(), p.gw().list());
        assert_eq!(
            cl[0].3.len(),
            1,
            "seed {seed}: client keeps one CHILD_SA: {:?}",
            p.client_events()
        );
        assert_eq!(
            gl[0].3.len(),
            1,
            "seed {seed}: gateway keeps one CHILD_SA: {:?}",
            p.gw_events()
        );
        let (ci, co) = cl[0].3[0];
        let (gi, go) = gl[0].3[0];
        assert_eq!(
            (ci, co),
            (go, gi),
            "seed {seed}: the survivor is the same SA on both ends"
        );
        assert_ne!(ci, old.inbound.spi, "seed {seed}: it is a new one");
        // Its keys match on both ends.
        let c = children(p.client_events())
            .into_iter()
            .find(|x| x.inbound.spi == ci)
            .unwrap();
        let g = children(p.gw_events())
            .into_iter()
            .find(|x| x.inbound.spi == gi)
            .unwrap();
        assert_keys_pair(&c, &g);
        outcomes.insert(c.initiated_here);
    }
    assert_eq!(
        outcomes.len(),
        2,
        "both the client's and the gateway's rekey won sometimes"
    );
}

#[test]
fn a_further_child_sa_comes_up_beside_the_first() {
    let (mut p, cid, _) = up();
    let now = p.now();
    p.client().create_child(now, cid).unwrap();
    p.drive();
    let c = children(p.client_events());
    let g = children(p.gw_events());
    assert_eq!((c.len(), g.len()), (2, 2));
    assert_keys_pair(&c[1], &g[1]);
    assert_eq!(c[1].rekey_of, None, "a further CHILD_SA, not a rekey");
    assert_eq!(c[1].local_ts, c[0].local_ts, "the first one's selectors");
    assert_eq!(p.client().list()[0].3.len(), 2);
}

#[test]
fn a_child_sa_past_its_hard_lifetime_is_deleted_unless_a_rekey_replaced_it() {
    const SEC: u64 = 1000;
    // No rekey: at 30 s the CHILD_SA goes on both sides, the IKE SA stays.
    let mut c = client_cfg();
    c.child_life = Some(ms(30 * SEC));
    let mut p = Pair::new(c, gateway_cfg());
    let cid = p.connect();
    p.drive();
    assert_eq!(children(p.client_events()).len(), 1);
    // drive() ran the clock on past the 30 s.
    assert!(p.now() >= Instant::ZERO.saturating_add(ms(30 * SEC)));
    assert_eq!(child_downs(p.client_events()), 1);
    assert_eq!(child_downs(p.gw_events()), 1);
    assert!(p.client().list()[0].3.is_empty());
    assert!(
        p.client().list().iter().any(|s| s.0 == cid),
        "the IKE SA stays"
    );

    // Rekeyed at 20 s: the replacement lives on past the first one's 30 s.
    let mut c = client_cfg();
    c.child_rekey = Some(ms(20 * SEC));
    c.child_life = Some(ms(30 * SEC));
    let mut p = Pair::new(c, gateway_cfg());
    p.connect();
    p.drive();
    // drive() ran two minutes: rekeys at 20 s intervals, none reached 30 s.
    let kids = children(p.client_events());
    assert!(kids.len() >= 5, "{}", kids.len());
    assert!(kids[1..].iter().all(|k| k.rekey_of.is_some()));
    assert_eq!(
        child_downs(p.client_events()),
        kids.len() - 1,
        "only replaced ones went"
    );
    let last = kids.last().unwrap().inbound.spi;
    assert_eq!(p.client().list()[0].3.len(), 1);
    let first_ike = p.client().list()[0].0;
    assert_eq!(p.client().ike_of_child(last), Some(first_ike));
}

#[test]
fn a_refused_child_sa_gives_its_reserved_spi_back() {
    // IKE_AUTH whose CHILD_SA the gateway refuses (no common selectors): the IKE SA is up,
    // no CHILD_SA, and neither end keeps the inbound SPI it reserved for it.
    let mut g = gateway_cfg();
    g.pool = None;
    g.remote_ts = vec![ts("10.8.0.0/16")];
    let mut c = client_cfg();
    c.request_vip = false;
    c.local_ts = vec![ts("172.16.0.0/12")];
    let mut p = Pair::new(c, g);
    p.connect();
    p.drive();
    assert_eq!(p.gw().list().len(), 1);
    for who in [CLIENT, GW] {
        let f = p.net.ep(who).footprint();
        assert_eq!(
            (f.child_sas, f.inbound_spis),
            (0, 0),
            "node {who}: no CHILD_SA, no SPI kept for it"
        );
    }

    // A CHILD_SA rekey the peer refuses (TEMPORARY_FAILURE: the client replaced that CHILD_SA
    // a moment before, its delete still on the way): the gateway keeps no SPI for it either.
    let (mut p, cid, gid) = up();
    let (c_in, _) = p.client().list()[0].3[0];
    let (g_in, _) = p.gw().list()[0].3[0];
    let now = p.now();
    p.client().rekey_child(now, cid, c_in).unwrap();
    // The request and its answer; the client's delete of the old CHILD_SA is now queued.
    p.clear_events();
    let client = p.client();
    let req = client.poll_transmit().unwrap();
    p.gw().handle(now, req.dst, req.src, &req.data);
    let resp = p.gw().poll_transmit().unwrap();
    p.client().handle(now, resp.dst, resp.src, &resp.data);
    p.gw().rekey_child(now, gid, g_in).unwrap();
    p.drive();
    assert!(
        p.client_events()
            .iter()
            .all(|e| !matches!(e, Event::ChildUp(c) if !c.initiated_here)),
        "the client refused the gateway's rekey of a CHILD_SA it had replaced: {:?}",
        p.client_events()
    );
    for who in [CLIENT, GW] {
        let f = p.net.ep(who).footprint();
        assert_eq!((f.child_sas, f.inbound_spis), (1, 1), "node {who}");
    }

    // The peer goes silent during our rekey: the IKE SA times out, and the SPI reserved for
    // the rekey goes with it.
    let (mut p, _, gid) = up();
    let (g_in, _) = p.gw().list()[0].3[0];
    p.net.cut = true;
    let now = p.now();
    p.gw().rekey_child(now, gid, g_in).unwrap();
    p.drive();
    p.drive();
    assert!(downs(p.gw_events()).contains(&DownReason::Timeout));
    assert_eq!(p.gw().footprint(), crate::endpoint::Footprint::default());
    assert_eq!(p.gw().services().spis.in_use(), (0, 0));
}
