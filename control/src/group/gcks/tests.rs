//! The key server node on virtual time with members as bare IKE endpoints configured from
//! `ike` sections as a member's file has them: registration, the timed rekey, a removal by
//! reload, reloads refused.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ike::group::session::{GroupEvent, KeysFrom};
use ike::wire::Id;
use ike::{Endpoint, Event, Instant};

use super::GcksNode;
use crate::config::group::{GroupPlan, GroupYaml};
use crate::config::ike::{endpoint_config, IkeYaml};

const GCKS_IKE: &str = r#"
connections:
  - name: members
    local_id: gcks.roamgate.test
    remote_id: any
    psk: "group-lab-psk"
    local_ts: [192.0.2.100/32]
    remote_ts: [0.0.0.0/0]
"#;

fn gcks_group(members: &[usize]) -> String {
    let list: Vec<String> = members
        .iter()
        .map(|i| format!("    - m{i}.roamgate.test"))
        .collect();
    format!(
        "id: branches.roamgate.test\nrole: gcks\nmembers:\n{}\ntraffic: 10.0.0.0/8\nalgorithm: aes128gcm16\nlifetime_secs: 60\nrekey_lead_secs: 20\natd_secs: 2\ndtd_secs: 10\nsender_id_bits: 8\n",
        list.join("\n")
    )
}

fn plan(members: &[usize]) -> crate::config::group::GcksPlan {
    let p = Path::new("gcks.yaml");
    let y: GroupYaml = crate::config::parse(p, &gcks_group(members)).unwrap();
    match y.validate(p).unwrap() {
        GroupPlan::Gcks(g) => g,
        GroupPlan::Member(_) => unreachable!(),
    }
}

fn member(i: usize) -> Endpoint {
    let ike = format!(
        "connections:\n  - name: gcks\n    local_id: m{i}.roamgate.test\n    remote_id: gcks.roamgate.test\n    psk: \"group-lab-psk\"\n    remote_addr: 192.0.2.100\n    local_ts: [10.{i}.0.0/24]\n    remote_ts: [192.0.2.100/32]\n"
    );
    let p = Path::new("member.yaml");
    let conns = crate::config::parse::<IkeYaml>(p, &ike)
        .unwrap()
        .validate(p, "ike")
        .unwrap();
    let mut e = Endpoint::new(endpoint_config(&conns), [i as u8; 32]);
    e.join_group("gcks", Id::from_text("branches.roamgate.test"), true);
    e
}

struct Lab {
    now: Instant,
    gcks: GcksNode,
    members: Vec<(SocketAddr, Endpoint, Vec<Event>)>,
    /// Drop datagrams to members with these indexes.
    deaf: Vec<usize>,
}

const GCKS_ADDR: &str = "192.0.2.100:500";

impl Lab {
    fn new(n: usize, allowed: &[usize]) -> Lab {
        let p = Path::new("gcks.yaml");
        let conns = crate::config::parse::<IkeYaml>(p, GCKS_IKE)
            .unwrap()
            .validate(p, "ike")
            .unwrap();
        let gcks = GcksNode::new(&conns, plan(allowed), [9; 32], Instant::ZERO).unwrap();
        Lab {
            now: Instant::ZERO,
            gcks,
            members: (1..=n)
                .map(|i| {
                    (
                        format!("192.0.2.{i}:500").parse().unwrap(),
                        member(i),
                        Vec::new(),
                    )
                })
                .collect(),
            deaf: Vec::new(),
        }
    }

    fn connect(&mut self, i: usize) {
        let (addr, e, _) = &mut self.members[i - 1];
        e.connect(self.now, "gcks", *addr, GCKS_ADDR.parse().unwrap())
            .unwrap();
    }

    /// Delivers every datagram until none is left.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            while let Some(t) = self.gcks.poll_transmit() {
                moved = true;
                if let Some(k) = self.members.iter().position(|m| m.0 == t.dst) {
                    if self.deaf.contains(&(k + 1)) {
                        continue;
                    }
                    let m = &mut self.members[k];
                    m.1.handle(self.now, t.dst, t.src, &t.data);
                }
            }
            for m in &mut self.members {
                while let Some(e) = m.1.poll_event() {
                    m.2.push(e);
                }
                while let Some(t) = m.1.poll_transmit() {
                    moved = true;
                    self.gcks.handle_datagram(self.now, t.dst, t.src, &t.data);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("no quiet");
    }

    /// Advances to `t`, firing every timeout on the way.
    fn run_to(&mut self, t: Instant) {
        loop {
            let mut next = self.gcks.poll_timeout();
            for m in &self.members {
                next = match (next, m.1.poll_timeout()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            match next {
                Some(n) if n <= t => {
                    self.now = self.now.max(n);
                    self.gcks.handle_timeout(self.now);
                    for m in &mut self.members {
                        m.1.handle_timeout(self.now);
                    }
                    self.settle();
                }
                _ => break,
            }
        }
        self.now = t;
        self.settle();
    }

    fn keys(&self, i: usize) -> Vec<(KeysFrom, Vec<u32>)> {
        self.members[i - 1]
            .2
            .iter()
            .filter_map(|e| match e {
                Event::Group(GroupEvent::Keys { from, sas, .. }) => {
                    Some((*from, sas.iter().map(|s| s.spi).collect()))
                }
                _ => None,
            })
            .collect()
    }

    fn logs(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.gcks.poll_log()).collect()
    }
}

fn secs(s: u64) -> Instant {
    Instant::ZERO.saturating_add(Duration::from_secs(s))
}

#[test]
fn members_register_and_the_group_rekeys_before_the_lifetime_ends() {
    let mut lab = Lab::new(3, &[1, 2, 3]);
    for i in 1..=3 {
        lab.connect(i);
    }
    lab.settle();
    let first = lab.gcks.status(lab.now);
    assert_eq!(first["members"].as_array().unwrap().len(), 3, "{first}");
    let spi0 = lab.keys(1)[0].1[0];
    for i in 1..=3 {
        assert_eq!(lab.keys(i), vec![(KeysFrom::Registration, vec![spi0])]);
    }
    let ids: Vec<u64> = first["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["sender_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![0, 1, 2]);
    // Lifetime 60 s, lead 20 s: the rekey goes out at 40 s, not before.
    lab.run_to(secs(39));
    assert_eq!(lab.gcks.counts().rekeys, 0);
    lab.run_to(secs(41));
    let c = lab.gcks.counts();
    assert_eq!(c.rekeys, 1);
    assert_eq!(c.registered, 3);
    for i in 1..=3 {
        let k = lab.keys(i);
        assert_eq!(k.len(), 2, "member {i}: {k:?}");
        assert_eq!(k[1].0, KeysFrom::Rekey);
        assert!(k[1].1.contains(&spi0) && k[1].1.len() == 2);
    }
    let logs = lab.logs();
    assert!(
        logs.iter().any(|l| l.contains("rekeyed, new SA")),
        "{logs:?}"
    );
    // Keys never reach the status or the log.
    assert!(!format!("{logs:?}{}", lab.gcks.status(lab.now)).contains("keymat"));
}

#[test]
fn a_member_outside_the_list_is_refused() {
    let mut lab = Lab::new(2, &[1]);
    lab.connect(1);
    lab.connect(2);
    lab.settle();
    assert_eq!(lab.keys(1).len(), 1);
    assert!(lab.keys(2).is_empty());
    assert!(lab.members[1]
        .2
        .iter()
        .any(|e| matches!(e, Event::Group(GroupEvent::Refused { .. }))));
    assert_eq!(lab.gcks.counts().refused, 1);
    assert!(lab.logs().iter().any(|l| l.contains("refused")));
}

#[test]
fn a_reload_that_drops_a_member_rekeys_the_others_without_it() {
    let mut lab = Lab::new(3, &[1, 2, 3]);
    for i in 1..=3 {
        lab.connect(i);
    }
    lab.settle();
    lab.run_to(secs(5));
    let lines = lab.gcks.reload(lab.now, plan(&[1, 2])).unwrap();
    assert_eq!(
        lines,
        vec!["group: member m3.roamgate.test removed".to_string()]
    );
    lab.settle();
    let c = lab.gcks.counts();
    assert_eq!(c.removed, 1);
    let spi_new = lab.keys(1).last().unwrap().1.clone();
    assert_eq!(lab.keys(2).last().unwrap().1, spi_new);
    // Member 3 got nothing after its registration.
    assert_eq!(lab.keys(3).len(), 1);
    assert!(!spi_new.iter().all(|s| lab.keys(3)[0].1.contains(s)));
    let st = lab.gcks.status(lab.now);
    assert_eq!(st["members"].as_array().unwrap().len(), 2, "{st}");
    // The next timed rekey still leaves it out.
    lab.run_to(secs(100));
    assert_eq!(lab.keys(3).len(), 1);
    assert!(lab.keys(1).len() >= 3);
}

#[test]
fn reloads_that_need_a_restart_are_refused() {
    let mut lab = Lab::new(1, &[1, 2]);
    let e = lab.gcks.reload(lab.now, plan(&[1, 2, 3])).unwrap_err();
    assert!(e.contains("group.members") && e.contains("m3"), "{e}");
    let mut other = plan(&[1, 2]);
    other.atd = Duration::from_secs(9);
    assert!(lab.gcks.reload(lab.now, other).is_err());
    assert_eq!(lab.gcks.reload(lab.now, plan(&[1, 2])).unwrap().len(), 0);
}

#[test]
fn a_member_that_missed_a_rekey_keeps_the_old_sa_until_it_registers_again() {
    let mut lab = Lab::new(2, &[1, 2]);
    lab.connect(1);
    lab.connect(2);
    lab.settle();
    lab.deaf.push(2);
    lab.run_to(secs(41));
    assert_eq!(lab.keys(1).len(), 2);
    assert_eq!(lab.keys(2).len(), 1, "member 2 missed the GSA_REKEY");
}
