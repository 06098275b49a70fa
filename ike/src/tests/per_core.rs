//! RFC 9611 per-core CHILD_SAs: SA_RESOURCE_INFO in IKE_AUTH agrees on them, further
//! CHILD_SAs with the first one's selectors each land on their own worker at both ends (the
//! inbound SPI's worker bits), their rekeys stay there, the responder caps them with
//! TS_MAX_QUEUE, a peer that does not send SA_RESOURCE_INFO gets none, and a client with a
//! virtual IP gets them for that address.

use std::collections::BTreeSet;

use super::*;
use crate::endpoint::ConnectError;
use crate::services::spi::{SpiAllocator, SpiLayout};
use crate::services::Services;

/// An endpoint for `workers` workers (SPI worker bits as the control plane's placement sets
/// them) that keeps up to `per_core` CHILD_SAs per IKE SA.
fn pc_endpoint(peer: PeerConfig, seed: u8, workers: u32, per_core: u16) -> Endpoint {
    let mut bits = 0u8;
    while (1u32 << bits) < workers {
        bits += 1;
    }
    let services = Services {
        spis: SpiAllocator::new(SpiLayout::new(0, 0, bits, 0).unwrap()).spread_over(workers),
        ..Services::default()
    };
    Endpoint::with_services(
        EndpointConfig {
            peers: vec![peer],
            per_core_sas: per_core,
            ..Default::default()
        },
        [seed; 32],
        services,
    )
}

fn pair(c_workers: u32, c_pc: u16, g_workers: u32, g_pc: u16) -> (Pair, IkeSaId, IkeSaId) {
    pair_with(c_workers, c_pc, g_workers, g_pc, false)
}

/// The client's connection names its subnet (a site) unless `vip`: then it asks for a
/// virtual IP, as a road warrior does.
fn pair_with(
    c_workers: u32,
    c_pc: u16,
    g_workers: u32,
    g_pc: u16,
    vip: bool,
) -> (Pair, IkeSaId, IkeSaId) {
    let mut c = client_cfg();
    if !vip {
        c.request_vip = false;
        c.local_ts = vec![ts("10.7.0.0/24")];
    }
    // The gateway's connection names no remote selectors (as `roamgate run`'s pool
    // connections): a per-core CHILD_SA takes its siblings' (the client's virtual IP).
    let mut g = gateway_cfg();
    g.remote_ts = vec![];
    if !vip {
        g.pool = None;
        g.remote_ts = vec![ts("10.7.0.0/24")];
    }
    let mut p = Pair::with_endpoints(
        pc_endpoint(c, 1, c_workers, c_pc),
        pc_endpoint(g, 2, g_workers, g_pc),
    );
    let cid = p.connect();
    p.drive();
    let gid = ike_up(p.gw_events()).unwrap();
    (p, cid, gid)
}

/// The workers the inbound SPIs of one side's CHILD_SAs name.
fn workers_of(ep: &mut Endpoint) -> Vec<u32> {
    let layout = ep.services().spis.layout();
    let mut w: Vec<u32> = ep.list()[0]
        .3
        .iter()
        .map(|(i, _)| layout.worker_of(*i))
        .collect();
    w.sort_unstable();
    w
}

#[test]
fn both_ends_agree_and_get_one_child_sa_per_worker() {
    let (mut p, cid, gid) = pair(4, 4, 4, 4);
    assert_eq!(p.client().per_core(cid), Some(true));
    assert_eq!(p.gw().per_core(gid), Some(true));
    let first = children(p.client_events())[0].clone();
    let w0 = p
        .client()
        .services()
        .spis
        .layout()
        .worker_of(first.inbound.spi);
    let now = p.now();
    for w in (0..4).filter(|w| *w != w0) {
        p.client().create_child_on(now, cid, w).unwrap();
    }
    p.drive();
    let (c, g) = (children(p.client_events()), children(p.gw_events()));
    assert_eq!((c.len(), g.len()), (4, 4), "{:?}", p.gw_events());
    for (a, b) in c.iter().zip(&g) {
        assert_keys_pair(a, b);
        assert_eq!(a.rekey_of, None);
        assert_eq!(a.local_ts, first.local_ts, "the first one's selectors");
        assert_eq!(a.remote_ts, first.remote_ts);
    }
    // One per worker at each end: the initiator chose its workers, the responder put each on
    // a worker this IKE SA had none on.
    assert_eq!(workers_of(p.client()), vec![0, 1, 2, 3]);
    assert_eq!(workers_of(p.gw()), vec![0, 1, 2, 3]);
    // Four distinct outbound SAs: each worker seals with its own keys and counter.
    let outs: BTreeSet<u32> = c.iter().map(|x| x.outbound.spi.0).collect();
    assert_eq!(outs.len(), 4);
    // One goes (the gateway's on worker 2); its replacement fills that worker again at the
    // gateway (not simply the next worker in turn, which would be 0).
    let layout_g = p.gw().services().spis.layout();
    let (g_in, g_out) = *p.gw().list()[0]
        .3
        .iter()
        .find(|(i, _)| layout_g.worker_of(*i) == 2)
        .unwrap();
    let layout_c = p.client().services().spis.layout();
    let now = p.now();
    p.gw().delete_child(now, gid, g_in).unwrap();
    p.drive();
    assert_eq!(workers_of(p.gw()), vec![0, 1, 3]);
    let now = p.now();
    p.client()
        .create_child_on(now, cid, layout_c.worker_of(g_out))
        .unwrap();
    p.drive();
    assert_eq!(workers_of(p.client()), vec![0, 1, 2, 3]);
    assert_eq!(workers_of(p.gw()), vec![0, 1, 2, 3]);
}

#[test]
fn a_per_core_child_sa_is_rekeyed_on_its_own_worker_at_both_ends() {
    let (mut p, cid, gid) = pair(4, 4, 4, 4);
    let first = children(p.client_events())[0].clone();
    let w0 = p
        .client()
        .services()
        .spis
        .layout()
        .worker_of(first.inbound.spi);
    let now = p.now();
    for w in (0..4).filter(|w| *w != w0) {
        p.client().create_child_on(now, cid, w).unwrap();
    }
    p.drive();
    assert_eq!(p.client().list()[0].3.len(), 4);
    let layout_c = p.client().services().spis.layout();
    let layout_g = p.gw().services().spis.layout();
    for from_client in [true, false] {
        let pairs = p.client().list()[0].3.clone();
        let (old_in, old_out) = pairs[pairs.len() / 2];
        let gw_pairs = p.gw().list()[0].3.clone();
        let g_in = gw_pairs.iter().find(|(_, o)| *o == old_in).unwrap().0;
        assert_eq!(g_in, old_out);
        p.clear_events();
        let now = p.now();
        if from_client {
            p.client().rekey_child(now, cid, old_in).unwrap();
        } else {
            p.gw().rekey_child(now, gid, old_out).unwrap();
        }
        p.drive();
        let (c, g) = (children(p.client_events()), children(p.gw_events()));
        assert_eq!((c.len(), g.len()), (1, 1), "from_client={from_client}");
        assert_keys_pair(&c[0], &g[0]);
        assert_eq!(
            layout_c.worker_of(c[0].inbound.spi),
            layout_c.worker_of(old_in),
            "from_client={from_client}: the initiator's side stays on its worker"
        );
        assert_eq!(
            layout_g.worker_of(g[0].inbound.spi),
            layout_g.worker_of(old_out),
            "from_client={from_client}: the responder's side stays on its worker"
        );
    }
}

#[test]
fn the_responder_caps_per_core_child_sas_with_ts_max_queue() {
    // The client has 4 workers, the gateway keeps at most 2 CHILD_SAs per IKE SA.
    let (mut p, cid, _) = pair(4, 4, 2, 2);
    let first = children(p.client_events())[0].clone();
    let w0 = p
        .client()
        .services()
        .spis
        .layout()
        .worker_of(first.inbound.spi);
    let now = p.now();
    for w in (0..4).filter(|w| *w != w0) {
        p.client().create_child_on(now, cid, w).unwrap();
    }
    p.drive();
    let (c, g) = (children(p.client_events()), children(p.gw_events()));
    assert_eq!((c.len(), g.len()), (2, 2));
    assert_eq!(p.client().list()[0].3.len(), 2);
    assert_eq!(
        p.client().services().spis.in_use().1,
        2,
        "the refused requests' SPIs went back"
    );
    assert_eq!(workers_of(p.gw()), vec![0, 1]);
}

#[test]
fn a_client_with_a_virtual_ip_gets_one_child_sa_per_worker_for_that_address() {
    let (mut p, cid, gid) = pair_with(2, 2, 2, 2, true);
    assert_eq!(p.client().per_core(cid), Some(true));
    assert_eq!(p.gw().per_core(gid), Some(true));
    let first = children(p.client_events())[0].clone();
    let w0 = p
        .client()
        .services()
        .spis
        .layout()
        .worker_of(first.inbound.spi);
    let now = p.now();
    p.client().create_child_on(now, cid, 1 - w0).unwrap();
    p.drive();
    let (c, g) = (children(p.client_events()), children(p.gw_events()));
    assert_eq!((c.len(), g.len()), (2, 2), "{:?}", p.gw_events());
    for (a, b) in c.iter().zip(&g) {
        assert_keys_pair(a, b);
        // The virtual IP the first one was given, at both ends.
        assert_eq!(a.local_ts, first.local_ts);
        assert_eq!(b.remote_ts, first.local_ts);
    }
    assert_eq!(workers_of(p.client()), vec![0, 1]);
    assert_eq!(workers_of(p.gw()), vec![0, 1]);
}

#[test]
fn without_sa_resource_info_from_both_ends_there_are_no_per_core_child_sas() {
    for (c_pc, g_pc) in [(4u16, 0u16), (0, 4), (1, 4)] {
        let (mut p, cid, gid) = pair(4, c_pc, 4, g_pc);
        assert_eq!(p.client().per_core(cid), Some(false), "{c_pc}/{g_pc}");
        assert_eq!(p.gw().per_core(gid), Some(false), "{c_pc}/{g_pc}");
        let now = p.now();
        assert_eq!(
            p.client().create_child_on(now, cid, 1),
            Err(ConnectError::NoPerCore)
        );
        p.drive();
        assert_eq!(p.client().list()[0].3.len(), 1);
    }
}

#[test]
fn an_ike_rekey_keeps_the_per_core_agreement() {
    let (mut p, cid, _) = pair(2, 2, 2, 2);
    let now = p.now();
    p.client().rekey_ike(now, cid).unwrap();
    p.drive();
    let new = p
        .client_events()
        .iter()
        .find_map(|e| match e {
            Event::IkeRekeyed { new, .. } => Some(*new),
            _ => None,
        })
        .expect("rekeyed");
    assert_ne!(new, cid);
    assert_eq!(p.client().per_core(new), Some(true));
    let now = p.now();
    let layout = p.client().services().spis.layout();
    let first = p.client().list()[0].3[0].0;
    p.client()
        .create_child_on(now, new, 1 - layout.worker_of(first))
        .unwrap();
    p.drive();
    assert_eq!(workers_of(p.client()), vec![0, 1]);
}

/// The agreement is in the IKE SA's record: a node that adopts it (an HA standby, a crypto
/// node restarted from the store) keeps creating one CHILD_SA per worker under it.
#[test]
fn an_adopted_ike_sa_keeps_the_per_core_agreement() {
    let (mut p, cid, _) = pair(2, 2, 2, 2);
    let now = p.now();
    let rec = p.client().export(now, cid).unwrap();
    assert!(rec.per_core);
    let rec = crate::record::IkeSaRecord::from_bytes(&rec.to_bytes().unwrap()).unwrap();
    let mut adopter = pc_endpoint(client_cfg_site(), 3, 2, 2);
    let id = adopter.adopt(now, &rec).unwrap();
    assert_eq!(adopter.per_core(id), Some(true));
    let layout = adopter.services().spis.layout();
    let first = adopter.list()[0].3[0].0;
    assert!(adopter
        .create_child_on(now, id, 1 - layout.worker_of(first))
        .is_ok());
    // Without the agreement (a record of version 4), none.
    let mut old = rec.clone();
    old.per_core = false;
    let mut adopter = pc_endpoint(client_cfg_site(), 4, 2, 2);
    let id = adopter.adopt(now, &old).unwrap();
    assert_eq!(
        adopter.create_child_on(now, id, 1),
        Err(ConnectError::NoPerCore)
    );
}

fn client_cfg_site() -> PeerConfig {
    let mut c = client_cfg();
    c.request_vip = false;
    c.local_ts = vec![ts("10.7.0.0/24")];
    c
}
