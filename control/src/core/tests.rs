//! The control core on virtual time (`crate::testing`): decisions, placement, the order of
//! datagrams and updates, the view.

use std::time::Duration;

use proto::{Datagram, Direction, Event as DpEvent, LifetimeKind, LifetimeLimit, Update};

use crate::testing::World;

const A: &str = "connections:
  - { name: site, local_id: a.test, remote_id: b.test, psk: \"core-test-psk\",
      local_ts: [10.1.0.0/24], remote_ts: [10.2.0.0/24], remote_addr: 192.0.2.2 }
";
const B: &str = "connections:
  - { name: site, local_id: b.test, remote_id: a.test, psk: \"core-test-psk\",
      local_ts: [10.2.0.0/24], remote_ts: [10.1.0.0/24] }
";

/// A (one worker) and B (`workers` workers), the tunnel up.
fn pair(workers: u16) -> World {
    let mut w = World::new();
    w.gateway(A, "192.0.2.1", 1);
    w.gateway(B, "192.0.2.2", workers);
    let now = w.now;
    w.gw(0).core().initiate(now);
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.gw(0).core().children().len(), 1, "A's CHILD_SA is up");
    assert_eq!(w.gw(1).core().children().len(), 1, "B's CHILD_SA is up");
    w
}

/// B's outbound SA of its one CHILD_SA: (worker, id, SPI).
fn outbound_of_b(w: &mut World) -> (u16, proto::SaId, proto::Spi) {
    let link = &w.gw(1).link;
    for (i, wk) in link.workers.iter().enumerate() {
        if let Some((id, spi)) = wk.outbound.iter().next() {
            return (i as u16, *id, *spi);
        }
    }
    panic!("B holds no outbound SA");
}

fn lifetime(kind: LifetimeKind, worker: u16, id: proto::SaId, spi: proto::Spi) -> DpEvent {
    DpEvent::Lifetime {
        worker,
        id,
        spi,
        dir: Direction::Outbound,
        kind,
        limit: LifetimeLimit::Bytes,
        bytes: 1 << 30,
        packets: 1 << 20,
        age_secs: 60,
    }
}

#[test]
fn a_soft_lifetime_rekeys_the_child_sa_and_a_hard_one_deletes_it() {
    let mut w = pair(1);
    let (worker, id, spi) = outbound_of_b(&mut w);
    w.gw(1)
        .link
        .report(lifetime(LifetimeKind::Soft, worker, id, spi));
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.gw(1).core().child_counts().1, 1, "B rekeyed");
    assert_eq!(w.gw(0).core().child_counts().1, 1, "A took the rekey");
    assert_eq!(w.gw(1).core().children().len(), 1, "the old one went");

    let (worker, id, spi) = outbound_of_b(&mut w);
    w.gw(1)
        .link
        .report(lifetime(LifetimeKind::Hard, worker, id, spi));
    w.run_for(Duration::from_secs(1));
    assert!(w.gw(1).core().children().is_empty(), "B deleted it");
    assert!(w.gw(0).core().children().is_empty(), "and told A");
    let b = &w.gw(1).link.workers[0];
    assert!(
        b.inbound.is_empty() && b.outbound.is_empty(),
        "its SAs are gone"
    );
}

#[test]
fn a_report_that_arrives_after_its_sa_was_rekeyed_changes_nothing() {
    let mut w = pair(1);
    let old = outbound_of_b(&mut w);
    let now = w.now;
    w.gw(1).core().rekey_children(now);
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.gw(1).core().child_counts().1, 1);
    // The old SA's hard lifetime, reported late: its id may already be reused.
    w.gw(1)
        .link
        .report(lifetime(LifetimeKind::Hard, old.0, old.1, old.2));
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.gw(1).core().children().len(), 1, "the new CHILD_SA stays");
    assert_eq!(w.gw(1).core().child_counts().2, 1, "only the old one went");
    assert_eq!(w.gw(1).view()["dataplane_reports"]["hard_lifetimes"], 1);
}

#[test]
fn an_ike_answer_waits_for_acknowledgements_that_arrive_late() {
    let mut w = World::new();
    w.gateway(A, "192.0.2.1", 1);
    w.gateway(B, "192.0.2.2", 1);
    // B's worker takes two seconds to apply anything.
    w.gw(1).link.ack_delay = Duration::from_secs(2);
    let now = w.now;
    w.gw(0).core().initiate(now);
    w.run_for(Duration::from_millis(1900));
    assert_eq!(w.gw(1).core().children().len(), 1, "B made its CHILD_SA");
    assert!(
        w.gw(1).link.workers[0].inbound.is_empty(),
        "B's worker has not applied it yet"
    );
    assert!(
        w.gw(0).core().children().is_empty(),
        "so B's IKE_AUTH answer has not left"
    );
    w.run_for(Duration::from_millis(200));
    assert_eq!(w.gw(1).link.workers[0].inbound.len(), 1);
    assert_eq!(w.gw(0).core().children().len(), 1, "then it goes");
}

#[test]
fn each_sa_update_reaches_exactly_its_owner_among_four_workers() {
    let mut w = pair(4);
    let now = w.now;
    for _ in 0..7 {
        w.gw(0).core().create_children(now);
        w.run_for(Duration::from_millis(100));
    }
    assert_eq!(w.gw(1).core().children().len(), 8);
    let placement_workers = w.gw(1).core().workers();
    assert_eq!(placement_workers, 4);
    let mut installs = 0;
    for (i, wk) in w.gws[1].link.workers.iter().enumerate() {
        // Two CHILD_SAs each (SPIs take the workers in turn), both directions on one worker.
        assert_eq!(wk.inbound.len(), 2, "worker {i}");
        assert_eq!(wk.outbound.len(), 2, "worker {i}");
        installs += wk.installs();
        for spi in wk.inbound.keys() {
            assert_eq!(
                w.gws[1].driver.core().placement().inbound_owner(*spi),
                i as u16,
                "the SPI names its owner"
            );
        }
        assert!(wk.policies() >= 1, "the policy goes to every worker");
        // The 8 CHILD_SAs share one selector: each worker's copy keeps its first rule (the
        // 7 behind it could never match).
        assert_eq!(wk.spd_rules, 1);
    }
    assert_eq!(installs, 16, "each SA was sent to one worker only");
    // Each child's pair is on one worker.
    for c in w.gw(1).core().children() {
        let owner = w.gws[1]
            .driver
            .core()
            .placement()
            .inbound_owner(proto::Spi(c.spi_in.0));
        let wk = &w.gws[1].link.workers[usize::from(owner)];
        assert!(wk.outbound.values().any(|s| s.0 == c.spi_out.0));
    }
}

#[test]
fn a_rekey_installs_the_new_sa_on_its_owner_and_deletes_the_old_one_after_the_switch() {
    let mut w = pair(4);
    let old = w.gw(1).core().children()[0].clone();
    let old_owner = w.gws[1]
        .driver
        .core()
        .placement()
        .inbound_owner(proto::Spi(old.spi_in.0));
    // A's DELETE of the old CHILD_SA is lost for a while: B keeps both.
    w.fault = Some(Box::new(|from, _, d: &Datagram| {
        !(from == 0 && d.payload.len() < 100)
    }));
    let now = w.now;
    w.gw(0).core().rekey_children(now);
    w.run_for(Duration::from_millis(500));
    let new = w
        .gw(1)
        .core()
        .children()
        .into_iter()
        .find(|c| c.spi_in != old.spi_in)
        .expect("B has the new CHILD_SA");
    let new_owner = w.gws[1]
        .driver
        .core()
        .placement()
        .inbound_owner(proto::Spi(new.spi_in.0));
    assert_ne!(new_owner, old_owner, "SPIs take the workers in turn");
    let b = &w.gws[1].link.workers;
    assert!(b[usize::from(new_owner)]
        .inbound
        .contains_key(&proto::Spi(new.spi_in.0)));
    assert!(
        b[usize::from(old_owner)]
            .inbound
            .contains_key(&proto::Spi(old.spi_in.0)),
        "the old SA stays until the old CHILD_SA is deleted"
    );
    for (i, wk) in b.iter().enumerate() {
        if i != usize::from(new_owner) {
            assert!(!wk.inbound.contains_key(&proto::Spi(new.spi_in.0)));
        }
    }
    // The DELETE gets through (retransmitted): the old SAs go from their owner.
    w.fault = None;
    w.run_for(Duration::from_secs(10));
    assert_eq!(w.gw(1).core().children().len(), 1);
    let b = &w.gws[1].link.workers;
    assert!(!b[usize::from(old_owner)]
        .inbound
        .contains_key(&proto::Spi(old.spi_in.0)));
    let deletes: usize = b
        .iter()
        .map(|wk| {
            wk.received
                .iter()
                .filter(|u| matches!(u, Update::DeleteInbound { .. }))
                .count()
        })
        .sum();
    assert_eq!(deletes, 1, "the delete went to the owner only");
}

#[test]
fn policies_of_children_that_come_up_in_one_turn_are_compiled_once() {
    let three = "connections:
  - { name: s1, local_id: a.test, remote_id: b.test, psk: \"core-test-psk\",
      local_ts: [10.1.1.0/24], remote_ts: [10.2.1.0/24], remote_addr: 192.0.2.2 }
  - { name: s2, local_id: a.test, remote_id: b.test, psk: \"core-test-psk\",
      local_ts: [10.1.2.0/24], remote_ts: [10.2.2.0/24], remote_addr: 192.0.2.2 }
  - { name: s3, local_id: a.test, remote_id: b.test, psk: \"core-test-psk\",
      local_ts: [10.1.3.0/24], remote_ts: [10.2.3.0/24], remote_addr: 192.0.2.2 }
";
    let b3 = "connections:
  - { name: s, local_id: b.test, remote_id: a.test, psk: \"core-test-psk\",
      local_ts: [10.2.0.0/16], remote_ts: [10.1.0.0/16] }
";
    let mut w = World::new();
    w.gateway(three, "192.0.2.1", 1);
    w.gateway(b3, "192.0.2.2", 1);
    let now = w.now;
    w.gw(0).core().initiate(now);
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.gw(0).core().children().len(), 3);
    // A's three IKE_AUTH answers arrive in one turn: three CHILD_SAs, one policy.
    let a = &w.gws[0].link.workers[0];
    assert_eq!(a.installs(), 6);
    assert_eq!(a.policies(), 1, "the three policies coalesced into one");
    assert_eq!(a.spd_rules, 3);
}

#[test]
fn a_worker_that_restarted_gets_its_own_inbound_sas_and_every_child_sa_is_rekeyed() {
    let mut w = pair(4);
    let now = w.now;
    for _ in 0..3 {
        w.gw(0).core().create_children(now);
        w.run_for(Duration::from_millis(100));
    }
    let before: Vec<_> = w.gws[1].link.workers[2].inbound.keys().copied().collect();
    assert_eq!(before.len(), 1);
    let received: Vec<usize> = w.gws[1]
        .link
        .workers
        .iter()
        .map(|x| x.received.len())
        .collect();
    w.gw(1).link.restart(2);
    w.run_until(w.now.saturating_add(Duration::from_millis(1)));
    // (The rekeys complete at once on this network, so look at what was sent.)
    for (i, x) in w.gws[1].link.workers.iter().enumerate() {
        if i == 2 {
            let got = &x.received[received[i]..];
            for spi in &before {
                assert!(
                    got.iter().any(|u| matches!(u, Update::AddSa { dir: Direction::Inbound, params } if params.spi == *spi)),
                    "its inbound SA is back"
                );
            }
            assert!(
                !got.iter()
                    .take_while(|u| !matches!(u, Update::ReplaceSpd { .. }))
                    .any(|u| matches!(
                        u,
                        Update::AddSa {
                            dir: Direction::Outbound,
                            ..
                        }
                    )),
                "no outbound SA comes back (its sequence number died with the worker)"
            );
        } else {
            let got = &x.received[received[i]..];
            assert!(
                !got.iter().any(|u| matches!(u, Update::AddSa { dir: Direction::Inbound, params } if before.contains(&params.spi))),
                "worker {i} got none of worker 2's SAs"
            );
        }
    }
    w.run_for(Duration::from_secs(2));
    assert_eq!(w.gw(1).core().child_counts().1, 4, "every CHILD_SA rekeyed");
}

#[test]
fn malformed_ike_is_counted_by_reason_in_the_view() {
    let mut w = pair(1);
    w.gw(1).link.punt(Datagram {
        src: "198.51.100.7".parse().unwrap(),
        dst: "192.0.2.2".parse().unwrap(),
        src_port: 500,
        dst_port: 500,
        payload: vec![0; 10],
    });
    w.run_for(Duration::from_millis(100));
    let v = w.gw(1).view();
    assert_eq!(v["ike_drops"]["truncated"], 1, "{v}");
    assert_eq!(v["ike_drops_total"], 1);
}

#[test]
fn the_view_shows_a_half_open_ike_sa_until_it_expires_with_no_event() {
    let mut w = World::new();
    w.gateway(A, "192.0.2.1", 1);
    w.gateway(B, "192.0.2.2", 1);
    // Only A's first message (IKE_SA_INIT) reaches B: B holds a half-open IKE SA.
    let mut sent = 0;
    w.fault = Some(Box::new(move |from, _, _| {
        if from == 0 {
            sent += 1;
            return sent == 1;
        }
        false
    }));
    let now = w.now;
    w.gw(0).core().initiate(now);
    w.run_for(Duration::from_secs(1));
    let v = w.gw(1).view();
    let sas = v["ike_sas"].as_array().unwrap();
    assert_eq!(sas.len(), 1, "{v}");
    assert_eq!(sas[0]["established"], false);
    assert_eq!(sas[0]["state"], "CONNECTING");
    // Nothing arrives at B any more; its half-open SA expires (30 s) and the view, rebuilt
    // on its own deadline, no longer shows it.
    w.run_for(Duration::from_secs(31));
    assert_eq!(w.gw(1).core().ike_sa_count(), 0);
    let v = w.gw(1).view();
    assert_eq!(v["ike_sas"].as_array().unwrap().len(), 0, "{v}");
}

#[test]
fn one_gateway_four_workers_four_ike_peers_each_child_sa_on_one_worker() {
    let mut w = World::new();
    w.gateway(B, "192.0.2.2", 4);
    let peer = "connections:
  - { name: site, local_id: a.test, remote_id: b.test, psk: \"core-test-psk\",
      local_ts: [10.1.0.0/24], remote_ts: [10.2.0.0/24] }
";
    for i in 0..4 {
        w.peer(peer, &format!("192.0.2.{}", 11 + i));
        w.peer_connect(i, "site", "192.0.2.2:500");
    }
    w.run_for(Duration::from_secs(1));
    for p in &w.peers {
        assert!(
            p.events.iter().any(|e| matches!(e, ike::Event::ChildUp(_))),
            "peer at {} has its CHILD_SA",
            p.addr
        );
    }
    let children = w.gw(0).core().children();
    assert_eq!(children.len(), 4);
    for c in &children {
        let owner = w.gws[0]
            .driver
            .core()
            .placement()
            .inbound_owner(proto::Spi(c.spi_in.0));
        for (i, wk) in w.gws[0].link.workers.iter().enumerate() {
            let holds_in = wk.inbound.contains_key(&proto::Spi(c.spi_in.0));
            let holds_out = wk.outbound.values().any(|s| s.0 == c.spi_out.0);
            let sent_in = wk.received.iter().any(|u| matches!(u, Update::AddSa { params, .. } if params.spi.0 == c.spi_in.0 || params.spi.0 == c.spi_out.0));
            assert_eq!(
                holds_in,
                i == usize::from(owner),
                "inbound {} on worker {i}",
                c.spi_in
            );
            assert_eq!(
                holds_out,
                i == usize::from(owner),
                "outbound {} on worker {i}",
                c.spi_out
            );
            assert_eq!(
                sent_in,
                i == usize::from(owner),
                "keys of {} sent to worker {i}",
                c.spi_in
            );
        }
    }
    let owners: std::collections::BTreeSet<u16> = children
        .iter()
        .map(|c| {
            w.gws[0]
                .driver
                .core()
                .placement()
                .inbound_owner(proto::Spi(c.spi_in.0))
        })
        .collect();
    assert_eq!(owners.len(), 4, "one CHILD_SA per worker");
}

#[test]
fn the_view_shows_each_ike_sa_as_swanctl_does_and_both_ends_agree() {
    let mut w = pair(1);
    w.run_for(Duration::from_secs(5));
    let (a, b) = (w.gw(0).view(), w.gw(1).view());
    let (a, b) = (&a["ike_sas"][0], &b["ike_sas"][0]);
    assert_eq!(
        (a["state"].as_str(), b["state"].as_str()),
        (Some("ESTABLISHED"), Some("ESTABLISHED")),
        "{a}"
    );
    assert_eq!(
        (a["initiator"].as_bool(), b["initiator"].as_bool()),
        (Some(true), Some(false))
    );
    for k in ["spi_i", "spi_r"] {
        assert_eq!(a[k], b[k], "{k}");
    }
    assert_eq!(
        (a["local_host"].as_str(), a["remote_host"].as_str()),
        (Some("192.0.2.1"), Some("192.0.2.2"))
    );
    assert_eq!(a["local_port"], b["remote_port"]);
    assert_eq!(
        (a["local_id"].as_str(), a["remote_id"].as_str()),
        (Some("a.test"), Some("b.test"))
    );
    assert_eq!(a["proposal"], b["proposal"]);
    assert!(
        a["proposal"]["name"]
            .as_str()
            .unwrap()
            .starts_with("AES_GCM_16-"),
        "{a}"
    );
    let (ca, cb) = (&a["children"][0], &b["children"][0]);
    assert_eq!(ca["spi_in"], cb["spi_out"]);
    assert_eq!(ca["spi_out"], cb["spi_in"]);
    assert_eq!(ca["local_ts"], serde_json::json!(["10.1.0.0/24"]));
    assert_eq!(ca["remote_ts"], serde_json::json!(["10.2.0.0/24"]));
    assert_eq!(
        (ca["mode"].as_str(), ca["protocol"].as_str()),
        (Some("TUNNEL"), Some("ESP"))
    );
    assert!(a["established_secs"].as_u64().is_some());
    // What the socket answers says how old the view is.
    let answer: serde_json::Value =
        serde_json::from_str(&w.gw(0).driver.view.lock().unwrap().answer()).unwrap();
    assert!(answer["view_age_ms"].as_u64().is_some(), "{answer}");
    assert_eq!(answer["ike_sas"][0]["spi_i"], a["spi_i"]);
}

/// A reload on A: "keep" stays, "gone" is removed, "new" is added. B (the responder) knows
/// all three from the start.
#[test]
fn a_reload_deletes_a_removed_connection_adds_a_new_one_and_leaves_the_others_alone() {
    let conn = |name: &str, me: &str, them: &str, net: u8, a_side: bool, initiate: bool| {
        let (l, r) = if a_side { (1, 2) } else { (2, 1) };
        format!(
            "  - {{ name: {name}, local_id: {me}, remote_id: {them}, psk: \"core-test-psk\",
      local_ts: [10.{l}.{net}.0/24], remote_ts: [10.{r}.{net}.0/24]{} }}\n",
            if initiate {
                ", remote_addr: 192.0.2.2"
            } else {
                ""
            }
        )
    };
    let a_before = format!(
        "connections:\n{}{}",
        conn("keep", "a1.test", "b.test", 0, true, true),
        conn("gone", "a2.test", "b.test", 1, true, true)
    );
    let a_after = format!(
        "connections:\n{}{}",
        conn("new", "a3.test", "b.test", 2, true, true),
        conn("keep", "a1.test", "b.test", 0, true, true)
    );
    let b = format!(
        "connections:\n{}{}{}",
        conn("keep", "b.test", "a1.test", 0, false, false),
        conn("gone", "b.test", "a2.test", 1, false, false),
        conn("new", "b.test", "a3.test", 2, false, false)
    );
    let mut w = World::new();
    w.gateway(&a_before, "192.0.2.1", 1);
    w.gateway(&b, "192.0.2.2", 1);
    let now = w.now;
    w.gw(0).core().initiate(now);
    w.run_for(Duration::from_secs(1));
    let spis = |w: &mut World, gw: usize| -> Vec<(String, u32)> {
        let mut v: Vec<_> = w
            .gw(gw)
            .core()
            .children()
            .iter()
            .map(|c| (c.name.clone(), c.spi_in.0))
            .collect();
        v.sort();
        v
    };
    let before = spis(&mut w, 0);
    assert_eq!(before.len(), 2, "{before:?}");
    let keep = before.iter().find(|c| c.0 == "keep").unwrap().clone();
    let gone = before.iter().find(|c| c.0 == "gone").unwrap().1;

    let p = std::path::Path::new("test.yaml");
    let parse = |text: &str| {
        crate::config::parse::<crate::config::ike::IkeYaml>(p, text)
            .unwrap()
            .validate(p, "ike")
            .unwrap()
    };
    let (old, new) = (parse(&a_before), parse(&a_after));
    let plan = crate::config::reload::ReloadPlan {
        added: vec!["new".into()],
        removed: vec!["gone".into()],
        unchanged: vec!["keep".into()],
        ..Default::default()
    };
    // The plan is what the sans-IO diff makes of the two files.
    let gwc: crate::config::GatewayConfig = crate::config::parse(
        p,
        "name: a\nlan: { device: l, address: 10.1.0.1, prefix_len: 24 }\nwan: { device: w, address: 192.0.2.1, prefix_len: 24 }\n",
    )
    .unwrap();
    let gplan = gwc.validate(p, "gateway").unwrap();
    let adm = crate::config::ike::IkeYaml::default()
        .admission(p, "ike")
        .unwrap();
    let made = crate::config::reload::plan(
        &crate::config::reload::Snapshot::of(&gwc, &gplan, &old, adm),
        &crate::config::reload::Snapshot::of(&gwc, &gplan, &new, adm),
        p,
    )
    .unwrap();
    assert_eq!(made, plan);

    let now = w.now;
    w.gw(0).core().reconfigure(now, new, &plan);
    w.run_for(Duration::from_secs(1));
    let after = spis(&mut w, 0);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        after.contains(&keep),
        "keep's CHILD_SA is the same: {after:?}"
    );
    assert!(after.iter().any(|c| c.0 == "new"), "new is up: {after:?}");
    let b_after = spis(&mut w, 1);
    assert!(
        !b_after.iter().any(|c| c.0 == "gone"),
        "B was told gone went: {b_after:?}"
    );
    assert_eq!(w.gw(1).core().ike_sa_count(), 2);
    let a = &w.gw(0).link.workers[0];
    assert!(
        !a.inbound.contains_key(&proto::Spi(gone)),
        "gone's inbound SA left A's data plane"
    );
    assert_eq!(
        w.gw(0).core().child_counts().1,
        0,
        "nothing was rekeyed (keep untouched)"
    );
}

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

/// A road-warrior gateway whose two clients report as hairpinning to each other: the pair
/// becomes a direct-path candidate only with a `vcm` section that allows both, above its
/// threshold, and once.
#[test]
fn hairpin_reports_between_two_clients_make_one_candidate_the_policy_allows() {
    use crate::config::vcm::{IdPattern, VcmPolicy};
    let mut w = World::new();
    w.gateway(RW_GW, "192.0.2.1", 1);
    w.gateway(&rw_client("alice.test"), "192.0.2.10", 1);
    w.gateway(&rw_client("bob.test"), "198.51.100.10", 1);
    let now = w.now;
    w.gw(1).core().initiate(now);
    w.gw(2).core().initiate(now);
    w.run_for(Duration::from_secs(1));
    let leases = w.gw(0).core().endpoint().leases();
    assert_eq!(leases.len(), 2, "both clients have a virtual IP");
    let (a, b) = (
        std::net::IpAddr::V4(leases[0].0),
        std::net::IpAddr::V4(leases[1].0),
    );
    let report = |packets| DpEvent::Hairpin {
        worker: 0,
        src: a,
        dst: b,
        packets,
        bytes: packets * 1200,
        millis: 1000,
    };
    // Detection off: nothing.
    w.gw(0).link.report(report(5000));
    w.run_for(Duration::from_secs(1));
    assert!(w.gw(0).core().take_direct_path_candidates().is_empty());
    assert_eq!(w.gw(0).core().vcm_counts(), None);

    w.gw(0).core().set_vcm(Some(VcmPolicy {
        threshold_pps: 100,
        direct_paths: vec![IdPattern::Exact("alice.test".into())],
        direct_lifetime_secs: 3600,
        inside: Vec::new(),
    }));
    w.gw(0).link.report(report(5000));
    w.run_for(Duration::from_secs(1));
    assert!(
        w.gw(0).core().take_direct_path_candidates().is_empty(),
        "bob is not allowed"
    );
    w.gw(0).core().set_vcm(Some(VcmPolicy {
        threshold_pps: 100,
        direct_paths: vec![IdPattern::Suffix(".test".into())],
        direct_lifetime_secs: 3600,
        inside: Vec::new(),
    }));
    w.gw(0).link.report(report(50));
    w.run_for(Duration::from_secs(1));
    assert!(w.gw(0).core().take_direct_path_candidates().is_empty());
    w.gw(0).link.report(report(1000));
    w.gw(0).link.report(report(1000));
    w.run_for(Duration::from_secs(1));
    let c = w.gw(0).core().take_direct_path_candidates();
    assert_eq!(c.len(), 1, "{c:?}");
    let ids = [c[0].a.1.as_str(), c[0].b.1.as_str()];
    assert!(
        ids.contains(&"alice.test") && ids.contains(&"bob.test"),
        "{ids:?}"
    );
    assert_eq!(c[0].pps, 1000);
    let counts = w.gw(0).core().vcm_counts().unwrap();
    assert_eq!(
        (
            counts.not_allowed,
            counts.below_threshold,
            counts.candidates
        ),
        (1, 1, 1)
    );
}

/// A client (A initiates to B, with dead-peer detection) comes back by itself when its
/// gateway deletes its IKE SA, and when the gateway disappears (DPD runs out) and returns:
/// reconnects on the bounded back-off, counted by reason.
#[test]
fn an_initiator_reconnects_after_the_gateway_deletes_its_ike_sa_or_disappears() {
    use crate::core::reconnect::Why;
    let a = A.replace(
        "remote_addr: 192.0.2.2 }",
        "remote_addr: 192.0.2.2, dpd_secs: 10 }",
    );
    let mut w = World::new();
    w.gateway(&a, "192.0.2.1", 1);
    w.gateway(B, "192.0.2.2", 1);
    let now = w.now;
    w.gw(0).core().initiate(now);
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.gw(0).core().children().len(), 1, "up");
    let first = w.gw(0).core().endpoint().list()[0].0;

    // 1. The gateway deletes every IKE SA (an INFORMATIONAL delete): A is back 1 s later,
    // with a new IKE SA, not before.
    let now = w.now;
    w.gw(1).core().begin_shutdown(now);
    w.run_for(Duration::from_millis(500));
    assert_eq!(w.gw(0).core().children().len(), 0, "deleted");
    assert_eq!(w.gw(0).core().ike_sa_count(), 0);
    w.run_for(Duration::from_millis(1000));
    assert_eq!(w.gw(0).core().children().len(), 1, "reconnected");
    let second = w.gw(0).core().endpoint().list()[0].0;
    assert_ne!(first, second);
    assert_eq!(
        w.gw(0).core().reconnects(),
        (vec![(Why::PeerDeleted, 1)], 1)
    );

    // 2. The gateway disappears (nothing gets through) for 10 minutes: DPD runs out, A tries
    // again and again on the back-off (IKE_SA_INIT unanswered), and is up within the bound
    // once the gateway is back.
    w.fault = Some(Box::new(|_, _, _| false));
    w.run_for(Duration::from_secs(600));
    assert_eq!(w.gw(0).core().children().len(), 0, "gone");
    let (counts, attempts) = w.gw(0).core().reconnects();
    assert!(counts.contains(&(Why::DeadPeer, 1)), "{counts:?}");
    let timeouts = counts
        .iter()
        .find(|(w, _)| *w == Why::ConnectTimeout)
        .map_or(0, |c| c.1);
    assert!(timeouts >= 2, "{counts:?}");
    // One attempt per loss (the last one in flight), or but the one whose wait is running.
    let losses = 2 + timeouts;
    assert!(
        attempts == losses || attempts == losses - 1,
        "{attempts} of {losses}"
    );
    w.fault = None;
    // Bounded: the back-off's longest wait, plus an IKE_SA_INIT retransmission cycle.
    let mut up_after = None;
    for s in 1..=300u64 {
        w.run_for(Duration::from_secs(1));
        if w.gw(0).core().children().len() == 1 {
            up_after = Some(s);
            break;
        }
    }
    let up_after = up_after.expect("back within 300 s of the gateway's return");
    assert!(up_after <= 60 + 170, "{up_after} s");
    // B holds the new CHILD_SA, and still the one from before the outage: B has no
    // dead-peer detection here, and A's new IKE SA sends no INITIAL_CONTACT.
    assert_eq!(w.gw(1).core().children().len(), 2);
}

/// ESP from A for an SPI B does not have while B has an IKE SA with A: B tells A inside that
/// IKE SA (RFC 7296 3.10.1), at most once a second; A, whose CHILD_SAs it does not name,
/// keeps everything. No unprotected notification, no liveness check.
#[test]
fn an_unknown_spi_from_a_peer_with_an_ike_sa_is_told_inside_it() {
    let mut w = pair(1);
    let before = w.gw(0).core().endpoint().list();
    let unknown = |spi: u32| DpEvent::UnknownSpi {
        worker: 0,
        spi: proto::Spi(spi),
        src: "192.0.2.1".parse().unwrap(),
        src_port: 0,
        dst: "192.0.2.2".parse().unwrap(),
        packets: 1,
    };
    for spi in [0x7000_0001, 0x7000_0002, 0x7000_0003] {
        w.gw(1).link.report(unknown(spi));
        w.run_for(Duration::from_millis(100));
    }
    let b = w.gw(1).view();
    let hints = &b["liveness_hints"];
    assert_eq!(hints["invalid_spi_sent_protected"], 1, "{b}");
    assert_eq!(hints["invalid_spi_send_limited"], 2, "{b}");
    assert_eq!(hints["invalid_spi_sent"], 0, "{b}");
    let a = w.gw(0).view();
    assert_eq!(
        a["liveness_hints"]["invalid_spi_protected_ignored"], 1,
        "{a}"
    );
    assert_eq!(a["liveness_hints"]["probes"], 0, "{a}");
    assert_eq!(w.gw(0).core().endpoint().list(), before, "A kept its SAs");
    // A second later the limit lets the next one through.
    w.run_for(Duration::from_secs(1));
    w.gw(1).link.report(unknown(0x7000_0004));
    w.run_for(Duration::from_millis(100));
    assert_eq!(
        w.gw(1).view()["liveness_hints"]["invalid_spi_sent_protected"],
        2
    );
}

/// B restarts and loses everything; A's ESP reaches it: B tells A INVALID_SPI (unprotected,
/// RFC 7296 1.5), A checks B at once, B answers INVALID_IKE_SPI, and A reconnects within the
/// hint schedule and the first back-off (dead-peer detection alone: minutes), counted as
/// `peer_restarted` in its view. Nothing of it happens for an SPI B holds.
#[test]
fn a_gateway_that_restarted_is_found_by_its_invalid_spi_and_the_client_reconnects() {
    use crate::core::reconnect::Why;
    let mut w = pair(1);
    let ours_out = w.gw(0).core().endpoint().list()[0].3[0].1;
    let unknown = |spi: u32| DpEvent::UnknownSpi {
        worker: 0,
        spi: proto::Spi(spi),
        src: "192.0.2.1".parse().unwrap(),
        src_port: 0,
        dst: "192.0.2.2".parse().unwrap(),
        packets: 1,
    };
    // An SPI B holds (a worker that lost it, a cluster edge): no INVALID_SPI.
    let b_in = w.gw(1).core().endpoint().list()[0].3[0].0;
    w.gw(1).link.report(unknown(b_in.0));
    w.run_for(Duration::from_millis(100));
    assert_eq!(w.gw(1).view()["liveness_hints"]["invalid_spi_sent"], 0);

    // B restarts: a new core and data plane at the same address.
    w.gateway(B, "192.0.2.2", 1);
    w.gws.swap_remove(1);
    w.gw(1).link.report(unknown(ours_out.0));
    w.run_for(Duration::from_millis(2900));
    assert_eq!(w.gw(0).core().ike_sa_count(), 1, "not on a hint alone");
    w.run_for(Duration::from_millis(1500));
    assert_eq!(w.gw(0).core().children().len(), 1, "reconnected");
    assert_ne!(w.gw(0).core().endpoint().list()[0].3[0].1, ours_out);
    assert_eq!(
        w.gw(0).core().reconnects(),
        (vec![(Why::PeerRestarted, 1)], 1)
    );
    let v = w.gw(0).view();
    assert_eq!(v["reconnects"]["peer_restarted"], 1, "{v}");
    assert_eq!(v["liveness_hints"]["invalid_spi"], 1, "{v}");
    assert_eq!(v["liveness_hints"]["peer_lost"], 1, "{v}");
    assert_eq!(w.gw(1).view()["liveness_hints"]["invalid_spi_sent"], 1);
}

/// The last SPD worker `i` of gateway `g` was sent.
fn last_spd(w: &World, g: usize, i: usize) -> Vec<proto::policy::Rule> {
    w.gws[g].link.workers[i]
        .received
        .iter()
        .rev()
        .find_map(|u| match u {
            Update::ReplaceSpd { rules } => Some(rules.clone()),
            _ => None,
        })
        .expect("an SPD")
}

#[test]
fn two_roamgate_gateways_with_two_workers_get_one_child_sa_per_worker_and_seal_with_their_own() {
    let mut w = World::new();
    w.gateway(A, "192.0.2.1", 2);
    w.gateway(B, "192.0.2.2", 2);
    let now = w.now;
    w.gw(0).core().initiate(now);
    w.run_for(Duration::from_secs(1));
    // RFC 9611: A asked for one CHILD_SA per worker up front, B agreed.
    assert_eq!(w.gw(0).core().children().len(), 2, "A: one per worker");
    assert_eq!(w.gw(1).core().children().len(), 2, "B: one per worker");
    for g in 0..2 {
        for i in 0..2 {
            let wk = &w.gws[g].link.workers[i];
            assert_eq!(
                (wk.inbound.len(), wk.outbound.len()),
                (1, 1),
                "gateway {g} worker {i}: one CHILD_SA, both directions"
            );
            // The worker's SPD protects 10.x with the outbound SA it owns: the sending worker
            // chooses its own SA, nothing is handed over.
            let own = *wk.outbound.keys().next().unwrap();
            let protects: Vec<proto::SaId> = last_spd(&w, g, i)
                .iter()
                .filter_map(|r| match r.action {
                    proto::policy::Action::Protect(id) => Some(id),
                    _ => None,
                })
                .collect();
            assert!(!protects.is_empty());
            assert_eq!(
                protects[0], own,
                "gateway {g} worker {i}: the first matching rule names its own SA"
            );
            // One rule per selector: the sibling CHILD_SA's rule, which this worker's copy
            // would also point at its own SA, could never match and is left out.
            let spd = last_spd(&w, g, i);
            let selectors: std::collections::HashSet<_> = spd.iter().map(|r| r.selector).collect();
            assert_eq!(
                selectors.len(),
                spd.len(),
                "gateway {g} worker {i}: {spd:?}"
            );
        }
    }
}

#[test]
fn a_one_worker_peer_gets_no_per_core_child_sas() {
    // B has two workers, A one: A sends no SA_RESOURCE_INFO, so one CHILD_SA (B's SPD copies
    // both name it; the worker without it hands the flow over).
    let mut w = pair(2);
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.gw(1).core().children().len(), 1);
    let a = last_spd(&w, 1, 0);
    let b = last_spd(&w, 1, 1);
    assert_eq!(a, b);
}

#[test]
fn a_reload_that_replaces_the_static_policy_keeps_a_group_member_s_rules_ahead_of_it() {
    let mut w = pair(1);
    let setup = crate::group::member::MemberSetup {
        local: "192.0.2.1".parse().unwrap(),
        lan: "10.1.0.0/24".parse().unwrap(),
        peers: vec![proto::group::GroupPeer {
            lan: "10.3.0.0/24".parse().unwrap(),
            outer: "192.0.2.3".parse().unwrap(),
        }],
        traffic: "10.0.0.0/8".parse().unwrap(),
        replay_window: 1024,
    };
    let group_rules = crate::group::member::MemberPlane::new(setup.clone()).rules();
    assert!(!group_rules.is_empty());
    let now = w.now;
    let gw = w.gw(0).core();
    gw.join_group(
        "site",
        ike::wire::Id::from_text("branches.roamgate.test"),
        true,
        setup,
        Vec::new(),
    );
    let p = std::path::Path::new("a.yaml");
    let conns = crate::config::parse::<crate::config::ike::IkeYaml>(p, A)
        .unwrap()
        .validate(p, "ike")
        .unwrap();
    let file_rules = vec![proto::policy::Rule {
        id: 7,
        selector: proto::policy::Selector {
            src: "10.1.0.0/24".parse().unwrap(),
            dst: "10.9.0.0/24".parse().unwrap(),
            proto: None,
            src_ports: proto::policy::PortRange::ANY,
            dst_ports: proto::policy::PortRange::ANY,
        },
        action: proto::policy::Action::Bypass,
    }];
    let plan = crate::config::reload::ReloadPlan {
        unchanged: vec!["site".into()],
        rules: Some(file_rules.clone()),
        ..Default::default()
    };
    gw.reconfigure(now, conns, &plan);
    w.run_for(Duration::from_millis(10));
    let last = last_spd(&w, 0, 0);
    for r in group_rules.iter().chain(&file_rules) {
        assert!(last.contains(r), "{r:?} is missing from {last:?}");
    }
    let pos = |r: &proto::policy::Rule| last.iter().position(|x| x == r).unwrap();
    assert!(pos(&group_rules[group_rules.len() - 1]) < pos(&file_rules[0]));
}
