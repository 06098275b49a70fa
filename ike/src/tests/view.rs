//! What the views show of IKE SAs: both ends agree on SPIs, addresses, proposals and
//! selectors; ages and countdowns follow the clock; NAT detection names the end behind it.

use super::*;
use crate::event::NatSides;

fn up_with_timers() -> Pair {
    let mut c = client_cfg();
    c.child_rekey = Some(ms(600_000));
    c.child_life = Some(ms(700_000));
    c.ike_rekey = Some(ms(3_600_000));
    let mut p = Pair::new(c, gateway_cfg());
    p.connect();
    p.drive();
    p
}

#[test]
fn both_ends_show_the_same_tunnel_mirrored() {
    let mut p = up_with_timers();
    let now = p.now();
    let (c, g) = (p.client().view(now), p.gw().view(now));
    let ([c], [g]) = (c.as_slice(), g.as_slice()) else {
        panic!("one IKE SA each: {c:?} {g:?}");
    };
    assert_eq!((c.state, g.state), ("ESTABLISHED", "ESTABLISHED"));
    assert!(c.initiator && !g.initiator);
    assert_eq!((c.spi_i, c.spi_r), (g.spi_i, g.spi_r));
    assert_eq!((c.local, c.remote), (g.remote, g.local));
    assert_eq!(
        (c.local_id.as_str(), c.remote_id.as_str()),
        ("rw.roamgate.test", "gw.roamgate.test")
    );
    assert_eq!(
        (g.local_id.as_str(), g.remote_id.as_str()),
        ("gw.roamgate.test", "rw.roamgate.test")
    );
    assert_eq!(c.proposal, g.proposal);
    assert_eq!(
        c.proposal.name(),
        "AES_GCM_16-128/PRF_HMAC_SHA2_256/CURVE_25519"
    );
    assert_eq!(c.virtual_ip, g.virtual_ip);
    assert_eq!(c.virtual_ip, Some("10.99.0.1".parse().unwrap()));
    assert!(!c.nat && !g.nat && c.nat_sides == NatSides::default());
    let ([cc], [gc]) = (c.children.as_slice(), g.children.as_slice()) else {
        panic!("one CHILD_SA each");
    };
    assert_eq!((cc.spi_in, cc.spi_out), (gc.spi_out, gc.spi_in));
    assert_eq!(
        (cc.local_ts.clone(), cc.remote_ts.clone()),
        (gc.remote_ts.clone(), gc.local_ts.clone())
    );
    assert_eq!(cc.local_ts, vec![ts("10.99.0.1/32")]);
    assert_eq!(cc.remote_ts, vec![ts("10.9.0.0/24")]);
    assert_eq!(cc.proposal.name(), "AES_GCM_16-128/ESN");
    assert_eq!(cc.state, "INSTALLED");
    // The client configured the lifetimes; the gateway none.
    assert_eq!(cc.rekey_in, Some(ms(600_000)));
    assert_eq!(cc.expire_in, Some(ms(700_000)));
    assert_eq!((gc.rekey_in, gc.expire_in), (None, None));
    assert_eq!(c.rekey_in, Some(ms(3_600_000)));

    // Ten seconds on: ages grow, countdowns shrink.
    p.net.run_for(ms(10_000));
    let now = p.now();
    let c = &p.client().view(now)[0];
    assert_eq!(c.established_ago, Some(ms(10_000)));
    assert_eq!(c.rekey_in, Some(ms(3_590_000)));
    assert_eq!(c.children[0].installed_ago, ms(10_000));
    assert_eq!(c.children[0].rekey_in, Some(ms(590_000)));
}

#[test]
fn nat_detection_names_the_end_behind_the_nat() {
    let mut p = Pair::new(client_cfg(), gateway_cfg());
    // The client sends from 10.0.0.5; the gateway sees its NAT's address.
    p.move_client("10.0.0.5:500", "198.51.100.7:4000");
    p.connect();
    p.drive();
    let now = p.now();
    let c = p.client().view(now)[0].clone();
    let g = p.gw().view(now)[0].clone();
    assert!(c.nat && g.nat);
    assert_eq!(
        c.nat_sides,
        NatSides {
            local: true,
            remote: false
        }
    );
    assert_eq!(
        g.nat_sides,
        NatSides {
            local: false,
            remote: true
        }
    );
    assert!(c.children[0].udp_encap && g.children[0].udp_encap);
    assert_eq!(c.local.ip(), "10.0.0.5".parse::<IpAddr>().unwrap());
    assert_eq!(g.remote.ip(), "198.51.100.7".parse::<IpAddr>().unwrap());
}

#[test]
fn a_connecting_ike_sa_has_no_age_and_its_configured_peer_id() {
    let mut p = Pair::new(client_cfg(), gateway_cfg());
    p.net.cut = true;
    p.connect();
    let now = p.now();
    let c = &p.client().view(now)[0];
    assert_eq!(c.state, "CONNECTING");
    assert_eq!(c.established_ago, None);
    assert_eq!(c.remote_id, "gw.roamgate.test");
    assert!(c.children.is_empty());
}
