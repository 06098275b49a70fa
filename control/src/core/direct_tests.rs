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
        let bind = pos(&mut w, i, |u| matches!(u, Update::BindHost { .. })).unwrap();
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
