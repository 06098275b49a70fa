//! Edge filters and an encryption node (issue 18 item 7) on the virtual clock: edges 0-2 and
//! encryption node 3 (an edge's forwarder and data plane, named in `encryption_nodes`).

use super::*;
use crate::cluster::filter::{FilterYaml, Filters};
use proto::policy::{filter_index, Action, FlowKey};

fn filters(users: &str) -> Filters {
    let text = format!(
        "- {{ name: esp, users: [{users}], action: encrypt, via: 3 }}
- {{ name: web, users: [{users}], action: direct, hosts: [10.9.0.20/32] }}
- {{ name: rest, users: [{users}], action: drop }}
"
    );
    let p = Path::new("cn.yaml");
    let y: Vec<FilterYaml> = crate::config::parse(p, &text).unwrap();
    Filters::validate(p, "cluster", &[3], &y).unwrap()
}

/// The latest policy edge `e`'s data plane got.
fn policy(w: &Cluster, e: usize) -> Vec<proto::policy::Rule> {
    w.edges[e].link.workers[0]
        .received
        .iter()
        .rev()
        .find_map(|u| match u {
            Update::ReplaceSpd { rules } => Some(rules.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn lookup(
    rules: &[proto::policy::Rule],
    src: &str,
    dst: &str,
    proto: u8,
) -> Option<(Action, Option<usize>)> {
    let k = FlowKey {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        proto,
        // ESP in UDP leaves the gateway's port 4500.
        src_port: if proto == 17 { 4500 } else { 0 },
        dst_port: 4500,
    };
    rules
        .iter()
        .find(|r| r.selector.matches(&k))
        .map(|r| (r.action, filter_index(r.id)))
}

/// Every edge's policy holds the three filter rules for `client`'s address (and none for
/// another address).
fn assert_filter_rules_for(w: &Cluster, client: &str) {
    for e in 0..3 {
        let rules = policy(w, e);
        // The simulated clients' ESP goes in UDP (the rule follows the SA's encapsulation).
        assert_eq!(
            lookup(&rules, PUBLIC, client, 17),
            Some((Action::Bypass, Some(0))),
            "edge {e} passes the client's ESP: {rules:?}"
        );
        assert_eq!(
            lookup(&rules, "10.9.0.20", client, 6),
            Some((Action::Bypass, Some(1)))
        );
        assert_eq!(
            lookup(&rules, "10.9.0.30", client, 6),
            Some((Action::Discard, Some(2)))
        );
        // Another address is not the client's: the core's policy decides.
        assert_eq!(
            lookup(&rules, "10.9.0.30", "198.51.100.99", 6).and_then(|r| r.1),
            None
        );
    }
}

#[test]
fn a_filtered_client_s_sas_go_to_the_encryption_node_and_every_edge_passes_its_esp_there() {
    let mut w = Cluster::new(4, 1);
    w.node.set_filters(filters("rw.test"));
    w.router = all_via(0);
    w.client_connect(0);
    w.run_for(Duration::from_secs(1));
    let spis = w.child_spis(0);
    assert_eq!(spis.len(), 1, "the client is up");
    let spis = spis[0];
    // Its SAs (and its host binding) are on the encryption node only.
    assert_eq!(w.holds(3, spis), (true, true));
    for e in 0..3 {
        assert_eq!(w.holds(e, spis), (false, false), "edge {e}");
    }
    assert_eq!(
        w.node.placement().host_edges()[0].1,
        BTreeSet::from([3]),
        "the LAN routes the client's virtual IP to the encryption node"
    );
    assert_eq!(w.node.stats.on_encryption_node, 2);
    // The IKE_AUTH response left by edge 0 (never by the encryption node), and edge 0 had
    // the filter policy before it: the client's first ESP is passed on, not dropped.
    let resp: Vec<&Sent> = w
        .sent
        .iter()
        .filter(|s| exchange_of(s) == (IKE_AUTH, true))
        .collect();
    assert_eq!(resp.len(), 1);
    assert_eq!(resp[0].edge, 0);
    assert!(
        w.sent.iter().all(|s| s.edge != 3),
        "nothing leaves the encryption node's IKE path"
    );
    assert_filter_rules_for(&w, &w.clients[0].addr.to_string());
    // ESP that reached an edge before its policy (reported as an unknown SPI) moves nothing.
    w.edges[1].link.report(DpEvent::UnknownSpi {
        worker: 0,
        spi: spis.0,
        src: w.clients[0].addr,
        src_port: 4500,
        dst: PUBLIC.parse().unwrap(),
        packets: 1,
    });
    w.run_for(Duration::from_millis(50));
    assert_eq!(w.node.stats.filtered_unknown_spi, 1);
    assert_eq!(w.node.stats.moves, 0);
    assert_eq!(w.holds(1, spis), (false, false));
    assert_eq!(w.holds(3, spis), (true, true));
    // Traffic through the encryption node: its sequence numbers once each, reservations
    // raised by its checkpoints as on an edge.
    w.traffic.at[0] = 3;
    w.traffic.in_per_ms = 10;
    w.traffic.out_per_ms = 100;
    w.run_traffic(Duration::from_millis(300));
    assert_eq!(w.traffic.lost[0], 0);
    assert!(w.traffic.delivered[0] >= 2900);
    assert_eq!(w.duplicates(), vec![]);
    assert!(
        w.runs(spis.1).iter().all(|r| r.0 == 3),
        "only the encryption node sends"
    );
    // The client leaves: its filter rules leave the edges' policy.
    let now = w.now;
    let ike = w.clients[0].endpoint.list()[0].0;
    w.clients[0].endpoint.delete_ike(now, ike).unwrap();
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.holds(3, spis), (false, false));
    for e in 0..3 {
        let rules = policy(&w, e);
        assert!(
            rules.iter().all(|r| filter_index(r.id).is_none()),
            "edge {e}: {rules:?}"
        );
    }
}

#[test]
fn a_client_no_filter_names_is_placed_on_its_edge_as_before() {
    let mut w = Cluster::new(4, 1);
    w.node.set_filters(filters("someone.else.test"));
    w.router = all_via(1);
    w.client_connect(0);
    w.run_for(Duration::from_secs(1));
    let spis = w.child_spis(0)[0];
    assert_eq!(w.holds(1, spis), (true, true));
    assert_eq!(w.holds(3, spis), (false, false));
    assert_eq!(w.node.stats.on_encryption_node, 0);
    assert!(policy(&w, 1).iter().all(|r| filter_index(r.id).is_none()));
    let v = w.node.filter_view();
    assert_eq!(v["rules"].as_array().unwrap().len(), 3);
    assert_eq!(v["clients"][0]["on_encryption_node"], false);
}

#[test]
fn a_filtered_client_that_moves_by_mobike_takes_its_filter_rules_to_its_new_address() {
    let mut w = Cluster::new(4, 1);
    w.node.set_filters(filters("rw.test"));
    w.router = all_via(0);
    w.client_connect(0);
    w.run_for(Duration::from_secs(1));
    let spis = w.child_spis(0)[0];
    let old = w.clients[0].addr.to_string();
    // The client's address changes; it tells the gateway by MOBIKE.
    let new: IpAddr = "198.51.100.77".parse().unwrap();
    w.roam(0, new);
    w.run_for(Duration::from_secs(1));
    assert!(
        w.edges[3].link.workers[0]
            .received
            .iter()
            .any(|u| matches!(u, Update::RebindOutbound { remote, .. } if *remote == new)),
        "the encryption node's SA sends to the new address"
    );
    assert_filter_rules_for(&w, &new.to_string());
    for e in 0..3 {
        // The old address is nobody's now: no filter rule for it.
        let rules = policy(&w, e);
        assert_eq!(lookup(&rules, PUBLIC, &old, 17).and_then(|r| r.1), None);
    }
    // Traffic still goes through the encryption node only.
    w.traffic.at[0] = 3;
    w.traffic.in_per_ms = 10;
    w.traffic.out_per_ms = 10;
    w.run_traffic(Duration::from_millis(100));
    assert_eq!(w.traffic.lost[0], 0);
    assert_eq!(w.duplicates(), vec![]);
    assert!(w.runs(spis.1).iter().all(|r| r.0 == 3));
}
