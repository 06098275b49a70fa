//! The endpoint around the exchanges: deadlines (never a walk over every IKE SA), the SPI
//! allocator's layout in use, a network that duplicates and reorders, more than two parties.

use super::*;
use crate::services::{Services, SpiAllocator, SpiLayout};
use crate::testing::Fate;

#[test]
fn each_ike_sa_is_filed_once_and_idle_ones_not_at_all() {
    // One gateway, many clients without timers: after the handshakes nothing is due.
    let mut net = Net::new();
    let gw = net.add(endpoint(gateway_cfg(), 2), "192.0.2.1:500".parse().unwrap());
    let mut pool = gateway_cfg();
    pool.pool = Some(Pool {
        first: "10.99.0.1".parse().unwrap(),
        count: 100,
    });
    *net.ep(gw) = endpoint(pool, 2);
    for i in 0..40u8 {
        let addr: SocketAddr = format!("198.18.0.{}:500", i + 1).parse().unwrap();
        let c = net.add(endpoint(client_cfg(), 10 + i), addr);
        let (now, g) = (net.now, net.nodes[gw].addr);
        net.ep(c).connect(now, "gw", addr, g).unwrap();
    }
    net.deliver();
    assert_eq!(net.ep(gw).list().len(), 40);
    assert_eq!(
        net.ep(gw).filed_deadlines(),
        0,
        "nothing due on idle IKE SAs"
    );
    assert_eq!(net.ep(gw).poll_timeout(), None);
    // A rekey timer on one IKE SA files exactly that one.
    let id = net.ep(gw).list()[7].0;
    let now = net.now;
    net.ep(gw).rekey_ike(now, id).unwrap();
    assert_eq!(net.ep(gw).filed_deadlines(), 1, "its retransmission");
    net.deliver();
    assert_eq!(net.ep(gw).filed_deadlines(), 0);
    assert_eq!(net.ep(gw).list().len(), 40);
}

#[test]
fn timers_fire_in_order_across_ike_sas() {
    // Two clients with different liveness intervals against one gateway: each check comes
    // when its own interval is up, and only that IKE SA is touched.
    let mut net = Net::new();
    let mut g = gateway_cfg();
    g.pool = None;
    g.remote_ts = vec![ts("0.0.0.0/0")];
    let gw = net.add(endpoint(g, 2), "192.0.2.1:500".parse().unwrap());
    let mut ids = Vec::new();
    for (i, dpd) in [(1u8, 7_000u64), (2, 3_000)] {
        let mut c = client_cfg();
        c.request_vip = false;
        c.local_ts = vec![ts(&format!("10.{i}.0.0/24"))];
        c.dpd = Some(ms(dpd));
        let addr: SocketAddr = format!("198.18.0.{i}:500").parse().unwrap();
        let n = net.add(endpoint(c, i), addr);
        let (now, ga) = (net.now, net.nodes[gw].addr);
        ids.push((n, net.ep(n).connect(now, "gw", addr, ga).unwrap()));
    }
    net.deliver();
    let start = net.now;
    assert_eq!(
        net.ep(ids[1].0).poll_timeout(),
        Some(start.saturating_add(ms(3_000)))
    );
    net.run_for(ms(3_500));
    let informational = |net: &Net, from: usize| {
        net.log
            .iter()
            .filter(|d| d.from == from && d.to == Some(gw))
            .count()
    };
    assert_eq!(
        informational(&net, ids[1].0),
        3,
        "init, auth, one liveness check"
    );
    assert_eq!(informational(&net, ids[0].0), 2, "no check yet");
    net.run_for(ms(4_000));
    assert_eq!(informational(&net, ids[0].0), 3);
    assert_eq!(informational(&net, ids[1].0), 4);
}

#[test]
fn spis_carry_the_configured_node_and_worker_bits() {
    let layout = SpiLayout::new(4, 0x9, 2, 3).unwrap();
    let gw = Endpoint::with_services(
        EndpointConfig {
            peers: vec![gateway_cfg()],
            ..Default::default()
        },
        [2; 32],
        Services {
            spis: SpiAllocator::new(layout),
            ..Services::default()
        },
    );
    let mut p = Pair::with_endpoints(endpoint(client_cfg(), 1), gw);
    p.connect();
    p.drive();
    let g = children(p.gw_events());
    assert_eq!(g.len(), 1);
    let spi_in = g[0].inbound.spi;
    assert_eq!(layout.node_of_child(spi_in), 0x9);
    assert_eq!(layout.worker_of(spi_in), 3);
    let ike = p.gw().list()[0].0;
    assert_eq!(layout.node_of_ike(ike.0), 0x9);
    // And the client, with the default layout, saw nothing unusual.
    assert_eq!(children(p.client_events()).len(), 1);
}

#[test]
fn a_network_that_duplicates_and_reorders_everything_still_brings_sas_up() {
    let mut p = Pair::new(client_cfg(), gateway_cfg());
    let mut k = 0u32;
    p.net.fault = Some(Box::new(move |_| {
        k += 1;
        match k % 3 {
            0 => Fate::Duplicate,
            1 => Fate::Reorder,
            _ => Fate::Deliver,
        }
    }));
    let cid = p.connect();
    p.drive();
    assert_eq!(children(p.client_events()).len(), 1);
    assert_eq!(
        children(p.gw_events()).len(),
        1,
        "duplicates processed once"
    );
    let now = p.now();
    p.client().rekey_ike(now, cid).unwrap();
    p.drive();
    assert_eq!(p.client().list().len(), 1);
    assert_eq!(p.gw().list().len(), 1);
    assert_eq!(p.client().list()[0].3.len(), 1);
}

#[test]
fn three_parties_two_clients_one_gateway_each_with_its_own_virtual_ip() {
    let mut net = Net::new();
    let gw = net.add(endpoint(gateway_cfg(), 2), "192.0.2.1:500".parse().unwrap());
    let a = net.add(endpoint(client_cfg(), 1), "192.0.2.10:500".parse().unwrap());
    let b = net.add(
        endpoint(client_cfg(), 3),
        "198.51.100.20:500".parse().unwrap(),
    );
    for c in [a, b] {
        let (now, local, g) = (net.now, net.nodes[c].addr, net.nodes[gw].addr);
        net.ep(c).connect(now, "gw", local, g).unwrap();
    }
    net.drive();
    let vip = |net: &Net, n: usize| {
        net.nodes[n].events.iter().find_map(|e| match e {
            Event::IkeUp { virtual_ip, .. } => *virtual_ip,
            _ => None,
        })
    };
    let (va, vb) = (vip(&net, a), vip(&net, b));
    assert!(va.is_some() && vb.is_some() && va != vb);
    assert_eq!(net.ep(gw).list().len(), 2);
    assert_eq!(net.ep(gw).leases().len(), 2);
    // One client goes; the other's IKE SA is untouched.
    let id = net.ep(a).list()[0].0;
    let now = net.now;
    net.ep(a).delete_ike(now, id).unwrap();
    net.drive();
    assert_eq!(net.ep(gw).list().len(), 1);
    assert_eq!(net.ep(gw).leases().len(), 1);
    assert_eq!(net.ep(b).list().len(), 1);
}

#[test]
fn a_thousand_rekeys_collisions_and_roams_leave_the_endpoints_holding_what_they_did_at_the_start() {
    // A long run in a few lines of virtual time: every kind of exchange that replaces state
    // (CHILD_SA rekeys by either end and by both at once, IKE SA rekeys by either end and by
    // both, MOBIKE roams) many times over. What each endpoint holds must come back to what
    // one IKE SA with one CHILD_SA needs.
    let (mut p, _, _) = up();
    let settled = (p.client().footprint(), p.gw().footprint());
    assert_eq!(settled.0.child_sas, 1);
    let ike_spis = (
        p.client().services().spis.in_use().0,
        p.gw().services().spis.in_use().0,
    );
    assert_eq!(ike_spis, (1, 1));
    // CHILD_SAs up by a rekey, IKE SA rekeys, moves, as the client saw them.
    let mut done = [0u32; 3];
    for round in 0..1000usize {
        let (cl, gl) = (p.client().list(), p.gw().list());
        let (cid, gid) = (cl[0].0, gl[0].0);
        let (c_in, _) = cl[0].3[0];
        let (g_in, _) = gl[0].3[0];
        let now = p.now();
        match round % 7 {
            0 => p.client().rekey_child(now, cid, c_in).unwrap(),
            1 => p.gw().rekey_child(now, gid, g_in).unwrap(),
            2 => {
                p.client().rekey_child(now, cid, c_in).unwrap();
                p.gw().rekey_child(now, gid, g_in).unwrap();
            }
            3 => p.client().rekey_ike(now, cid).unwrap(),
            4 => p.gw().rekey_ike(now, gid).unwrap(),
            5 => {
                p.client().rekey_ike(now, cid).unwrap();
                p.gw().rekey_ike(now, gid).unwrap();
            }
            _ => {
                let to = if round % 2 == 0 {
                    "192.0.2.10"
                } else {
                    "192.0.2.77"
                };
                p.roam_to(cid, to, &format!("{to}:500"));
            }
        }
        p.drive();
        for e in p.net.nodes[CLIENT].events.drain(..) {
            match e {
                Event::ChildUp(c) if c.rekey_of.is_some() => done[0] += 1,
                Event::IkeRekeyed { .. } => done[1] += 1,
                Event::IkeMoved { .. } => done[2] += 1,
                _ => {}
            }
        }
        p.net.nodes[GW].events.clear();
        assert_eq!(
            (p.client().footprint(), p.gw().footprint()),
            settled,
            "round {round} ({})",
            round % 7
        );
        assert_eq!(
            (
                p.client().services().spis.in_use().0,
                p.gw().services().spis.in_use().0
            ),
            ike_spis,
            "round {round}: one IKE SPI each"
        );
        assert!(p.client().filed_deadlines() <= 1 && p.gw().filed_deadlines() <= 1);
    }
    // Every round did what it asked (a collision brings up two CHILD_SAs, one redundant).
    assert!(done[0] >= 3 * 1000 / 7, "{done:?}");
    assert!(done[1] >= 3 * 1000 / 7, "{done:?}");
    assert!(done[2] >= 1000 / 7, "{done:?}");
}
