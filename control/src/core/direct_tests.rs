//! The connectivity manager through real control cores on virtual time: a gateway and two
//! roamgate clients (each a `ControlCore` over simulated workers), the manager's messages in
//! their IKE SAs.

use std::net::IpAddr;
use std::time::Duration;

use proto::sa::{ReplayState, SaState};
use proto::{Direction, Event as DpEvent, Spi, Update};

use crate::config::vcm::{IdPattern, VcmPolicy};
use crate::testing::World;

const RW_GW: &str = "connections:
  - { name: rw, local_id: gw.test, psk: \"core-test-psk\",
      local_ts: [10.0.0.0/8], pool: 10.99.0.0/24 }
";

fn rw_client(id: &str) -> String {
    format!(
        "connections:
  - {{ name: gw, local_id: {id}, remote_id: gw.test, psk: \"core-test-psk\",
      request_vip: true, remote_ts: [10.0.0.0/8], remote_addr: 192.0.2.1 }}
"
    )
}

/// A gateway (0) with the `vcm` section and two clients (1, 2) up; their virtual IPs.
fn world() -> (World, IpAddr, IpAddr) {
    let mut w = World::new();
    w.gateway(RW_GW, "192.0.2.1", 1);
    w.gateway(&rw_client("alice.test"), "192.0.2.10", 1);
    w.gateway(&rw_client("bob.test"), "198.51.100.10", 1);
    w.gw(0).core().set_vcm(Some(VcmPolicy {
        threshold_pps: 100,
        direct_paths: vec![IdPattern::Suffix(".test".into())],
        direct_lifetime_secs: 3600,
        inside: Vec::new(),
    }));
    let now = w.now;
    w.gw(1).core().initiate(now);
    w.gw(2).core().initiate(now);
    w.run_for(Duration::from_secs(1));
    let a = IpAddr::V4(w.gw(1).core().repo.virtual_ip().unwrap());
    let b = IpAddr::V4(w.gw(2).core().repo.virtual_ip().unwrap());
    (w, a, b)
}

fn hairpin(w: &mut World, a: IpAddr, b: IpAddr) {
    w.gw(0).link.report(DpEvent::Hairpin {
        worker: 0,
        src: a,
        dst: b,
        packets: 1000,
        bytes: 1_200_000,
        millis: 1000,
    });
}

/// The direct inbound SPI client `i` holds (top byte 0xff), if any.
fn direct_in(w: &mut World, i: usize) -> Option<Spi> {
    w.gw(i).link.workers[0]
        .inbound
        .keys()
        .copied()
        .find(|s| s.0 >> 24 == 0xff)
}

/// Client `i`'s data plane saw authenticated packets up to `top` on its direct SA.
fn direct_rx(w: &mut World, i: usize, top: u64) {
    let Some(spi) = direct_in(w, i) else { return };
    rx_on(w, i, spi, top);
}

/// Client `i`'s data plane saw authenticated packets up to `top` on inbound SA `spi`.
fn rx_on(w: &mut World, i: usize, spi: Spi, top: u64) {
    w.gw(i).link.report(DpEvent::SaState {
        worker: 0,
        generation: 0,
        id: proto::SaId(0),
        spi,
        state: SaState::Inbound {
            replay: ReplayState { top, seen: vec![] },
        },
    });
}

/// Index in client `i`'s received updates of the first matching one.
fn pos(w: &mut World, i: usize, f: impl Fn(&Update) -> bool) -> Option<usize> {
    w.gw(i).link.workers[0].received.iter().position(f)
}

#[test]
fn two_roamgate_clients_get_a_direct_pair_installed_inbound_first_then_return() {
    let (mut w, a, b) = world();
    assert_eq!(w.gw(0).core().direct_view().capable, 2, "both announced");
    hairpin(&mut w, a, b);
    w.run_for(Duration::from_millis(300));
    for i in [1, 2] {
        let spi = direct_in(&mut w, i).expect("inbound direct SA installed");
        let inst = pos(
            &mut w,
            i,
            |u| matches!(u, Update::AddSa { dir: Direction::Inbound, params } if params.spi == spi),
        )
        .unwrap();
        let out = pos(&mut w, i, |u| {
            matches!(u, Update::AddSa { dir: Direction::Outbound, params } if params.spi.0 >> 24 == 0xff)
        })
        .expect("outbound direct SA after the peer's ack");
        let bind = pos(&mut w, i, |u| matches!(u, Update::BindHostDual { .. })).unwrap();
        assert!(inst < out && out < bind, "{inst} {out} {bind}");
        assert_eq!(w.gw(i).core().direct_pairs().len(), 1);
    }
    // Each one's outbound SPI is the other's inbound, with the same key.
    let (ia, ib) = (direct_in(&mut w, 1).unwrap(), direct_in(&mut w, 2).unwrap());
    let outs = |w: &mut World, i: usize| -> Vec<Spi> {
        w.gw(i).link.workers[0].outbound.values().copied().collect()
    };
    assert!(outs(&mut w, 1).contains(&ib) && outs(&mut w, 2).contains(&ia));
    assert_ne!(ia, ib);
    // Traffic on the direct path keeps it.
    for t in 1..=20u64 {
        direct_rx(&mut w, 1, t * 10);
        direct_rx(&mut w, 2, t * 10);
        w.run_for(Duration::from_millis(100));
    }
    assert_eq!(
        w.gw(1).core().direct_pairs().len(),
        1,
        "still direct after 2 s"
    );
    assert_eq!(w.gw(0).core().direct_view().manager_pairs, 1);

    // The gateway returns the pair (a's request): both back, SAs deleted.
    let now = w.now;
    assert_eq!(w.gw(0).core().return_direct(now, a), 1);
    w.run_for(Duration::from_millis(300));
    for i in [1, 2] {
        assert!(w.gw(i).core().direct_pairs().is_empty());
        assert!(
            direct_in(&mut w, i).is_some(),
            "inbound kept for what is in flight"
        );
    }
    w.run_for(crate::core::direct_paths::INBOUND_GRACE);
    for i in [1, 2] {
        assert!(direct_in(&mut w, i).is_none(), "inbound deleted");
        assert!(pos(&mut w, i, |u| matches!(u, Update::UnbindHost { .. })).is_some());
    }
    let v = w.gw(0).core().direct_view();
    assert_eq!((v.manager_pairs, v.manager.returned), (0, 1));
    // The pair may be offered again: a fresh pair, fresh SPIs.
    hairpin(&mut w, a, b);
    w.run_for(Duration::from_millis(300));
    let ia2 = direct_in(&mut w, 1).expect("offered again");
    assert_ne!(ia2, ia);
}

#[test]
fn a_blackholed_direct_path_falls_back_within_a_second_and_the_pair_ends() {
    let (mut w, a, b) = world();
    hairpin(&mut w, a, b);
    w.run_for(Duration::from_millis(200));
    assert_eq!(w.gw(1).core().direct_pairs().len(), 1);
    let switched = w.now;
    // Nothing authenticated arrives on the direct path.
    let mut back = None;
    for _ in 0..30 {
        w.run_for(Duration::from_millis(50));
        if w.gw(1).core().direct_pairs().is_empty() {
            back = Some(w.now.saturating_duration_since(switched));
            break;
        }
    }
    let back = back.expect("back on the gateway path");
    assert!(back <= Duration::from_millis(1300), "{back:?}");
    w.run_for(Duration::from_millis(500));
    assert!(
        w.gw(2).core().direct_pairs().is_empty(),
        "the peer returned too"
    );
    assert_eq!(w.gw(0).core().direct_view().manager_pairs, 0);
    assert!(w.gw(0).core().direct_view().manager.failed >= 1);
    // Not offered again while the hold-off runs, then again.
    let offers = w.gw(0).core().direct_view().manager.offers;
    hairpin(&mut w, a, b);
    w.run_for(Duration::from_millis(300));
    assert_eq!(w.gw(0).core().direct_view().manager.offers, offers);
    w.run_for(crate::core::direct_paths::RETRY_AFTER_FAILURE);
    hairpin(&mut w, a, b);
    w.run_for(Duration::from_millis(300));
    assert_eq!(w.gw(0).core().direct_view().manager.offers, offers + 1);
}

#[test]
fn when_one_client_goes_the_other_returns() {
    let (mut w, a, b) = world();
    hairpin(&mut w, a, b);
    w.run_for(Duration::from_millis(200));
    direct_rx(&mut w, 1, 5);
    direct_rx(&mut w, 2, 5);
    w.run_for(Duration::from_millis(50));
    let now = w.now;
    w.gw(2).core().begin_shutdown(now);
    w.run_for(Duration::from_millis(300));
    assert!(w.gw(1).core().direct_pairs().is_empty(), "a returned");
    w.run_for(crate::core::direct_paths::INBOUND_GRACE);
    assert!(direct_in(&mut w, 1).is_none());
    assert_eq!(w.gw(0).core().direct_view().manager_pairs, 0);
}

#[test]
fn keys_never_reach_the_view() {
    let (mut w, a, b) = world();
    hairpin(&mut w, a, b);
    w.run_for(Duration::from_millis(300));
    let key = w.gw(1).link.workers[0]
        .received
        .iter()
        .find_map(|u| match u {
            Update::AddSa { params, .. } if params.spi.0 >> 24 == 0xff => {
                Some(params.keys.key().to_vec())
            }
            _ => None,
        })
        .unwrap();
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    for i in 0..3 {
        let view = w.gw(i).view().to_string();
        assert!(!view.contains(&hex));
        let dbg = format!("{:?}", w.gw(i).core().direct_view());
        assert!(!dbg.contains(&hex));
    }
}

#[test]
fn a_policy_that_no_longer_allows_a_client_returns_its_pairs() {
    let (mut w, a, b) = world();
    hairpin(&mut w, a, b);
    w.run_for(Duration::from_millis(200));
    direct_rx(&mut w, 1, 5);
    direct_rx(&mut w, 2, 5);
    w.run_for(Duration::from_millis(50));
    assert_eq!(w.gw(1).core().direct_pairs().len(), 1);
    // The same policy again: nothing moves.
    let keep = VcmPolicy {
        threshold_pps: 100,
        direct_paths: vec![IdPattern::Suffix(".test".into())],
        direct_lifetime_secs: 3600,
        inside: Vec::new(),
    };
    w.gw(0).core().set_vcm(Some(keep));
    direct_rx(&mut w, 1, 9);
    direct_rx(&mut w, 2, 9);
    w.run_for(Duration::from_millis(200));
    assert_eq!(w.gw(1).core().direct_pairs().len(), 1);
    w.gw(0).core().set_vcm(Some(VcmPolicy {
        threshold_pps: 100,
        direct_paths: vec![IdPattern::Exact("alice.test".into())],
        direct_lifetime_secs: 3600,
        inside: Vec::new(),
    }));
    w.run_for(Duration::from_millis(300));
    for i in [1, 2] {
        assert!(
            w.gw(i).core().direct_pairs().is_empty(),
            "client {i} returned"
        );
    }
    assert_eq!(w.gw(0).core().direct_view().manager_pairs, 0);
}

#[test]
fn a_proven_path_that_goes_quiet_returns_and_may_be_offered_again_at_once() {
    let (mut w, a, b) = world();
    hairpin(&mut w, a, b);
    w.run_for(Duration::from_millis(200));
    direct_rx(&mut w, 1, 5);
    direct_rx(&mut w, 2, 5);
    w.run_for(Duration::from_millis(2000));
    assert!(w.gw(1).core().direct_pairs().is_empty(), "quiet: back");
    let v = w.gw(0).core().direct_view();
    assert_eq!((v.manager_pairs, v.manager.failed), (0, 0));
    assert!(v.manager.idle >= 1);
    hairpin(&mut w, a, b);
    w.run_for(Duration::from_millis(300));
    assert_eq!(w.gw(0).core().direct_view().manager.offers, 2);
}

/// Client `i`'s host bindings of the peer so far, in order: "dual" (probation), "direct"
/// (direct only), "unbind".
fn bindings(w: &mut World, i: usize) -> Vec<&'static str> {
    w.gw(i).link.workers[0]
        .received
        .iter()
        .filter_map(|u| match u {
            Update::BindHostDual { .. } => Some("dual"),
            Update::BindHost { .. } => Some("direct"),
            Update::UnbindHost { .. } => Some("unbind"),
            _ => None,
        })
        .collect()
}

/// Dual path: after `PeerReady` each client binds the peer on probation (the gateway path
/// goes on, a copy takes the direct SA), never before the peer installed its inbound SA; the
/// first authenticated packet on its direct inbound SA makes it direct only, each client on
/// its own.
#[test]
fn probation_until_the_first_authenticated_packet_then_direct_only() {
    let (mut w, a, b) = world();
    hairpin(&mut w, a, b);
    // 1 ms steps: when each client's inbound SA and its probation binding appear.
    let (mut installed, mut dual) = ([None; 3], [None; 3]);
    for step in 0..400u64 {
        w.run_for(Duration::from_millis(1));
        for i in [1, 2] {
            if installed[i].is_none() && direct_in(&mut w, i).is_some() {
                installed[i] = Some(step);
            }
            if dual[i].is_none() && !bindings(&mut w, i).is_empty() {
                dual[i] = Some(step);
            }
        }
    }
    for (i, j) in [(1, 2), (2, 1)] {
        let (d, peer) = (dual[i].expect("bound"), installed[j].expect("installed"));
        assert!(
            d >= peer,
            "client {i} bound at {d} ms before {j} installed at {peer} ms"
        );
        let spi = direct_in(&mut w, i).unwrap();
        let inst = pos(
            &mut w,
            i,
            |u| matches!(u, Update::AddSa { dir: Direction::Inbound, params } if params.spi == spi),
        )
        .unwrap();
        let out = pos(&mut w, i, |u| {
            matches!(u, Update::AddSa { dir: Direction::Outbound, params } if params.spi.0 >> 24 == 0xff)
        })
        .unwrap();
        let bind = pos(&mut w, i, |u| matches!(u, Update::BindHostDual { .. })).unwrap();
        assert!(inst < out && out < bind, "{inst} {out} {bind}");
        assert_eq!(
            bindings(&mut w, i),
            ["dual"],
            "on probation, nothing heard yet"
        );
        assert_eq!(w.gw(i).core().direct_pairs().len(), 1);
    }
    // a hears b on the direct path: a goes direct only; b stays on probation.
    direct_rx(&mut w, 1, 3);
    w.run_for(Duration::from_millis(150));
    assert_eq!(bindings(&mut w, 1), ["dual", "direct"]);
    assert_eq!(bindings(&mut w, 2), ["dual"]);
    let direct_only = w.gw(1).link.workers[0]
        .received
        .iter()
        .find_map(|u| match u {
            Update::BindHost { dst, src, sa } => Some((*dst, *src, *sa)),
            _ => None,
        })
        .unwrap();
    assert_eq!(direct_only.0, b);
    assert_eq!(direct_only.1.addr(), a);
    // The same outbound SA as on probation: installed once, its numbering goes on.
    let outs: Vec<_> = w.gw(1).link.workers[0]
        .received
        .iter()
        .filter(|u| {
            matches!(u, Update::AddSa { dir: Direction::Outbound, params } if params.spi.0 >> 24 == 0xff)
        })
        .collect();
    assert_eq!(outs.len(), 1);
    // More packets change nothing; b's first makes b direct only.
    direct_rx(&mut w, 1, 9);
    direct_rx(&mut w, 2, 4);
    w.run_for(Duration::from_millis(150));
    assert_eq!(bindings(&mut w, 1), ["dual", "direct"]);
    assert_eq!(bindings(&mut w, 2), ["dual", "direct"]);
}

/// A direct path that is blackholed never leaves probation: the gateway path carried every
/// packet all along (the copies were lost, nothing else), and the fallback removes the copy.
#[test]
fn a_blackholed_direct_path_stays_on_probation_and_the_fallback_removes_the_copy() {
    let (mut w, a, b) = world();
    hairpin(&mut w, a, b);
    w.run_for(Duration::from_millis(200));
    for i in [1, 2] {
        assert_eq!(bindings(&mut w, i), ["dual"]);
    }
    w.run_for(Duration::from_millis(1500));
    for i in [1, 2] {
        // Never direct only: no packet of the stream depended on the direct path.
        assert_eq!(bindings(&mut w, i), ["dual", "unbind"], "client {i}");
        assert!(w.gw(i).core().direct_pairs().is_empty());
    }
    assert!(w.gw(0).core().direct_view().manager.failed >= 1);
}

/// Every direct (0xff..) inbound SPI client `i` holds.
fn direct_ins(w: &mut World, i: usize) -> Vec<Spi> {
    w.gw(i).link.workers[0]
        .inbound
        .keys()
        .copied()
        .filter(|s| s.0 >> 24 == 0xff)
        .collect()
}

/// Both clients' data planes saw authenticated packets up to `top` on every direct inbound SA
/// they hold.
fn every_direct_rx(w: &mut World, top: u64) {
    for i in [1, 2] {
        for spi in direct_ins(w, i) {
            rx_on(w, i, spi, top);
        }
    }
}

fn direct_outs(w: &mut World, i: usize) -> Vec<Spi> {
    w.gw(i).link.workers[0]
        .outbound
        .values()
        .copied()
        .filter(|s| s.0 >> 24 == 0xff)
        .collect()
}

#[test]
fn a_live_direct_pair_is_rekeyed_in_ack_order_and_its_old_sas_deleted() {
    let (mut w, a, b) = world();
    // Direct pairs live 4 s here: rekeyed at 3.0-3.4 s.
    w.gw(0).core().set_vcm(Some(VcmPolicy {
        threshold_pps: 100,
        direct_paths: vec![IdPattern::Suffix(".test".into())],
        direct_lifetime_secs: 4,
        inside: Vec::new(),
    }));
    hairpin(&mut w, a, b);
    let start = w.now;
    // (client, outbound SPI) -> first seen: never used past 4 s from then.
    let mut first_seen = std::collections::BTreeMap::new();
    let mut top = 0u64;
    for _ in 0..100 {
        w.run_for(Duration::from_millis(100));
        top += 100;
        // Both directions carry traffic, on whatever SA each one seals.
        every_direct_rx(&mut w, top);
        for i in [1, 2] {
            let peer_in = direct_ins(&mut w, 3 - i);
            let outs = direct_outs(&mut w, i);
            assert!(outs.len() <= 1, "client {i} seals on {outs:?}");
            for spi in outs {
                // No packet sealed on an SA its receiver has not installed (or deleted).
                assert!(
                    peer_in.contains(&spi),
                    "client {i} seals on {spi:?}, not installed at its peer {peer_in:?}"
                );
                let seen = *first_seen.entry((i, spi)).or_insert(w.now);
                assert!(
                    w.now.saturating_duration_since(seen) < Duration::from_secs(4),
                    "client {i} seals on {spi:?} past the lifetime"
                );
            }
            // The old inbound SA stays only through the rekey and its grace.
            assert!(direct_ins(&mut w, i).len() <= 3, "client {i}");
        }
    }
    let v = w.gw(0).core().direct_view();
    // 10 s of 4 s pairs: rekeyed at about 3.2 s and 6.4 s (and 9.6 s).
    assert!(v.manager.rekeys >= 2, "{v:?}");
    assert_eq!(v.manager.expired, 0, "{v:?}");
    assert!(v.manager_pairs <= 2, "{v:?}");
    for i in [1, 2] {
        assert_eq!(w.gw(i).core().direct_pairs().len(), 1, "still direct");
        assert!(w.gw(i).core().direct_view().client.rekeys >= 2);
        // Outbound SAs: one per pair, each deleted when the traffic moved on.
        let used: Vec<_> = first_seen.keys().filter(|k| k.0 == i).collect();
        assert!(used.len() >= 3, "client {i}: {used:?}");
        let deleted = w.gw(i).link.workers[0]
            .received
            .iter()
            .filter(|u| matches!(u, Update::DeleteOutbound { .. }))
            .count();
        assert!(deleted + 1 >= used.len(), "client {i}: {deleted} deleted");
    }
    assert!(w.now.saturating_duration_since(start) >= Duration::from_secs(10));
}

#[test]
fn a_rekey_the_peer_does_not_answer_returns_the_pair_before_its_hard_lifetime() {
    let (mut w, a, b) = world();
    w.gw(0).core().set_vcm(Some(VcmPolicy {
        threshold_pps: 100,
        direct_paths: vec![IdPattern::Suffix(".test".into())],
        direct_lifetime_secs: 4,
        inside: Vec::new(),
    }));
    hairpin(&mut w, a, b);
    w.run_for(Duration::from_millis(300));
    let switched = w.now;
    assert_eq!(w.gw(1).core().direct_pairs().len(), 1);
    let mut back = None;
    for k in 0..60u64 {
        // The direct path carries traffic both ways all along.
        direct_rx(&mut w, 1, 10 + k);
        direct_rx(&mut w, 2, 10 + k);
        if k == 20 {
            // From 2 s on client 2's messages to the gateway are lost (its IKE SA stays).
            w.fault = Some(Box::new(|from, to, _| !(from == 2 && to == 0)));
        }
        w.run_for(Duration::from_millis(100));
        if back.is_none() && w.gw(1).core().direct_pairs().is_empty() {
            back = Some(w.now.saturating_duration_since(switched));
        }
    }
    let back = back.expect("client 1 back on the gateway path");
    assert!(back < Duration::from_secs(4), "{back:?}");
    let v = w.gw(0).core().direct_view();
    assert_eq!(v.manager.rekeys, 0, "{v:?}");
    assert!(v.manager.expired >= 1, "{v:?}");
    assert!(direct_outs(&mut w, 1).is_empty(), "returned by the gateway");
    // Client 2 never heard of the return: its own hard lifetime ended its outbound SA.
    assert!(
        direct_outs(&mut w, 2).is_empty(),
        "deleted at the hard lifetime"
    );
    assert_eq!(w.gw(2).core().direct_view().client.expired, 1);
}

/// Client `i`'s outbound direct SA (its id and SPI), if it has one.
fn direct_out_sa(w: &mut World, i: usize) -> Option<(proto::SaId, Spi)> {
    w.gw(i).link.workers[0]
        .outbound
        .iter()
        .map(|(id, spi)| (*id, *spi))
        .find(|(_, s)| s.0 >> 24 == 0xff)
}

/// Client `i`'s data plane warns that its outbound direct SA nears 2^32 - 1 (no ESN).
fn seq_near_wrap(w: &mut World, i: usize) -> Spi {
    let (id, spi) = direct_out_sa(w, i).expect("an outbound direct SA");
    w.gw(i).link.report(DpEvent::SeqNearWrap {
        worker: 0,
        id,
        spi,
        seq: (1 << 32) - (1 << 24),
        limit: u64::from(u32::MAX),
    });
    spi
}

#[test]
fn a_direct_sa_near_its_sequence_limit_is_rekeyed_at_once() {
    // Pairs live an hour: without the warning the rekey would come after 51 minutes.
    let (mut w, a, b) = world();
    hairpin(&mut w, a, b);
    w.run_for(Duration::from_millis(300));
    direct_rx(&mut w, 1, 10);
    direct_rx(&mut w, 2, 10);
    w.run_for(Duration::from_millis(100));
    let old2 = direct_out_sa(&mut w, 2).unwrap().1;
    let old1 = seq_near_wrap(&mut w, 1);
    let mut top = 10;
    for _ in 0..5 {
        top += 10;
        every_direct_rx(&mut w, top);
        w.run_for(Duration::from_millis(100));
    }
    // Within half a second both seal on the successor; the warned SA is gone.
    for (i, old) in [(1, old1), (2, old2)] {
        let outs = direct_outs(&mut w, i);
        assert_eq!(outs.len(), 1, "client {i}: {outs:?}");
        assert_ne!(outs[0], old, "client {i} still seals on the old pair");
        assert_eq!(w.gw(i).core().direct_pairs().len(), 1, "client {i} direct");
        assert_eq!(w.gw(i).core().direct_view().client.rekeys, 1);
    }
    assert!(w.gw(1).link.workers[0]
        .received
        .iter()
        .any(|u| matches!(u, Update::DeleteOutbound { .. })));
    let v = w.gw(0).core().direct_view();
    assert_eq!((v.manager.rekeys_asked, v.manager.rekeys), (1, 1), "{v:?}");
    assert_eq!(w.gw(1).core().direct_view().client.rekeys_asked, 1);
    assert_eq!(w.gw(2).core().direct_view().client.rekeys_asked, 0);
}

#[test]
fn a_direct_sa_near_its_sequence_limit_goes_back_to_the_gateway_path_if_no_rekey_comes() {
    let (mut w, a, b) = world();
    hairpin(&mut w, a, b);
    w.run_for(Duration::from_millis(300));
    // From now on client 1's messages to the gateway are lost (its IKE SA stays).
    w.fault = Some(Box::new(|from, to, _| !(from == 1 && to == 0)));
    seq_near_wrap(&mut w, 1);
    let asked = w.now;
    let mut back = None;
    for k in 0..30u64 {
        // The direct path carries traffic both ways all along.
        direct_rx(&mut w, 1, 10 + k);
        direct_rx(&mut w, 2, 10 + k);
        w.run_for(Duration::from_millis(100));
        if back.is_none() && w.gw(1).core().direct_pairs().is_empty() {
            back = Some(w.now.saturating_duration_since(asked));
        }
    }
    let back = back.expect("client 1 back on the gateway path");
    assert!(
        back >= Duration::from_millis(900) && back <= Duration::from_millis(1200),
        "{back:?}"
    );
    assert!(direct_outs(&mut w, 1).is_empty(), "its outbound SA deleted");
    assert_eq!(w.gw(1).core().direct_view().client.expired, 1);
    assert_eq!(w.gw(0).core().direct_view().manager.rekeys, 0);
}
