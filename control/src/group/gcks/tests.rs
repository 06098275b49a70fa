//! The key server node on virtual time with members as bare IKE endpoints configured from
//! `ike` sections as a member's file has them, each with a member plane
//! (`group::member::MemberPlane`) fed by its endpoint's group events and registering again
//! when it asks to, as the control core does: registration, the timed rekey, a removal by
//! reload, a member added by reload, a new Sender-ID width, lost rekeys and a restarted data
//! plane.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ike::group::session::{GroupEvent, KeysFrom};
use ike::wire::Id;
use ike::{Endpoint, Event, Instant};

use super::GcksNode;
use crate::config::group::{GroupPlan, GroupYaml};
use crate::config::ike::{endpoint_config, IkeYaml};
use crate::group::member::{MemberPlane, MemberSetup};

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
    planes: Vec<MemberPlane>,
    /// Registrations each member started again.
    rereg: Vec<u64>,
    /// Drop datagrams to members with these indexes.
    deaf: Vec<usize>,
    /// Drop GSA_REKEY datagrams to members with these indexes.
    deaf_rekey: Vec<usize>,
}

fn setup(i: usize) -> MemberSetup {
    MemberSetup {
        local: format!("192.0.2.{i}").parse().unwrap(),
        lan: format!("10.{i}.0.0/24").parse().unwrap(),
        peers: Vec::new(),
        traffic: "10.0.0.0/8".parse().unwrap(),
        replay_window: 64,
    }
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
            planes: (1..=n).map(|i| MemberPlane::new(setup(i))).collect(),
            rereg: vec![0; n],
            deaf: Vec::new(),
            deaf_rekey: Vec::new(),
        }
    }

    /// What the control core does with a member's group event.
    fn feed(&mut self, k: usize, e: &Event) {
        let now = self.now;
        let again = match e {
            Event::Group(GroupEvent::Keys {
                sas,
                from,
                next_spis,
                ..
            }) => {
                self.planes[k].on_keys(now, sas, next_spis, *from != KeysFrom::Registration);
                false
            }
            Event::Group(GroupEvent::Excluded { .. } | GroupEvent::MustRegister { .. }) => true,
            Event::Group(GroupEvent::Refused { .. }) => {
                self.planes[k].on_refused(now);
                false
            }
            _ => false,
        };
        if again {
            self.register_again(k);
        }
    }

    fn register_again(&mut self, k: usize) {
        let g = Id::from_text("branches.roamgate.test");
        let now = self.now;
        let e = &mut self.members[k].1;
        // The membership's IKE SA, or (never registered) the established one.
        let ike = e
            .group_ike(&g)
            .or_else(|| e.list().into_iter().find(|s| s.2).map(|s| s.0))
            .expect("an IKE SA to register over");
        e.register_group(now, ike, g, true).unwrap();
        self.rereg[k] += 1;
    }

    fn check_planes(&mut self) {
        for k in 0..self.planes.len() {
            self.planes[k].handle_timeout(self.now);
            if self.planes[k].take_reregister().is_some() {
                self.register_again(k);
            }
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
                    if self.deaf.contains(&(k + 1))
                        || (self.deaf_rekey.contains(&(k + 1)) && t.data.get(18) == Some(&41))
                    {
                        continue;
                    }
                    let m = &mut self.members[k];
                    m.1.handle(self.now, t.dst, t.src, &t.data);
                }
            }
            for k in 0..self.members.len() {
                while let Some(e) = self.members[k].1.poll_event() {
                    self.feed(k, &e);
                    self.members[k].2.push(e);
                }
            }
            self.check_planes();
            for m in &mut self.members {
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
            for p in &self.planes {
                next = match (next, p.poll_timeout()) {
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
    let mut other = plan(&[1, 2]);
    other.atd = Duration::from_secs(9);
    let e = lab.gcks.reload(lab.now, other).unwrap_err();
    assert!(e.contains("restart"), "{e}");
    let mut bits = plan(&[1, 2]);
    bits.sender_id_bits = 17;
    let e = lab.gcks.reload(lab.now, bits).unwrap_err();
    assert!(e.contains("group.sender_id_bits"), "{e}");
    assert_eq!(lab.gcks.reload(lab.now, plan(&[1, 2])).unwrap().len(), 0);
}

/// The plane's generations that send, and all it holds.
fn sending(lab: &Lab, i: usize) -> (Vec<u32>, Vec<u32>) {
    let g = lab.planes[i - 1].generations();
    (
        g.iter().filter(|x| x.1).map(|x| x.0).collect(),
        g.iter().map(|x| x.0).collect(),
    )
}

fn current(lab: &Lab) -> u32 {
    let s = lab.gcks.status(lab.now);
    u32::from_str_radix(s["spi"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

#[test]
fn a_member_added_by_reload_registers_without_a_restart() {
    let mut lab = Lab::new(3, &[1, 2]);
    for i in 1..=3 {
        lab.connect(i);
    }
    lab.settle();
    assert!(lab.keys(3).is_empty(), "not in the list yet");
    lab.run_to(secs(5));
    // It tries again after a refusal (2 s later, then 4 s, 8 s, ...): refused at 2 s.
    assert_eq!(lab.rereg[2], 1);
    let lines = lab.gcks.reload(lab.now, plan(&[1, 2, 3])).unwrap();
    assert_eq!(
        lines,
        vec!["group: member m3.roamgate.test added".to_string()]
    );
    assert!(lab.keys(3).is_empty());
    // Its IKE SA stayed up after the refusals: the next try (6 s) is a GSA_REGISTRATION
    // over it, and the GCKS takes it now; no more tries after.
    lab.run_to(secs(30));
    assert_eq!(lab.rereg[2], 2);
    assert_eq!(lab.keys(3).len(), 1);
    assert_eq!(lab.keys(3)[0].1, vec![current(&lab)]);
    let st = lab.gcks.status(lab.now);
    assert_eq!(st["members"].as_array().unwrap().len(), 3, "{st}");
    // And it follows the next rekey with the others.
    lab.run_to(secs(41));
    assert_eq!(lab.keys(3).last().unwrap().1, lab.keys(1).last().unwrap().1);
}

#[test]
fn a_new_sender_id_width_starts_the_group_over_and_everyone_registers_again() {
    let mut lab = Lab::new(3, &[1, 2, 3]);
    for i in 1..=3 {
        lab.connect(i);
    }
    lab.settle();
    let old = current(&lab);
    lab.run_to(secs(5));
    let mut p = plan(&[1, 2, 3]);
    p.sender_id_bits = 2;
    let lines = lab.gcks.reload(lab.now, p).unwrap();
    assert!(lines.iter().any(|l| l.contains("starts over")), "{lines:?}");
    lab.settle();
    let new = current(&lab);
    assert_ne!(new, old);
    assert_eq!(lab.gcks.counts().restarts, 1);
    // Every member was excluded and registered again: Sender-IDs from 0 that fit 2 bits,
    // and the new SA (sending at once: it is the only one it was given).
    assert_eq!(lab.rereg, vec![1, 1, 1]);
    let st = lab.gcks.status(lab.now);
    let mut ids: Vec<u64> = st["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["sender_id"].as_u64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, vec![0, 1, 2]);
    for i in 1..=3 {
        let (send, _) = sending(&lab, i);
        assert_eq!(send, vec![new], "member {i}");
    }
}

#[test]
fn a_member_that_missed_a_rekey_registers_again_before_the_expiry_and_sends_on_the_new_sa() {
    let mut lab = Lab::new(2, &[1, 2]);
    lab.connect(1);
    lab.connect(2);
    lab.settle();
    let first = current(&lab);
    // Every GSA_REKEY to member 2 is lost from now on.
    lab.deaf_rekey.push(2);
    // The rekey at 40 s (lifetime 60 s, lead 20 s): member 1 has it, member 2 not.
    lab.run_to(secs(44));
    let second = current(&lab);
    assert_ne!(second, first);
    assert!(sending(&lab, 1).1.contains(&second));
    assert!(!sending(&lab, 2).1.contains(&second));
    assert_eq!(lab.rereg[1], 0);
    // No rekey seen yet, so the watch fires a quarter of the SA's lifetime (60 s, 15 s)
    // before its end: at 45 s, well before the hard expiry at 60 s. The registration
    // brings both SAs; it sends on the new one from its ATD (2 s) on.
    lab.run_to(secs(46));
    assert_eq!(lab.rereg[1], 1);
    assert_eq!(lab.planes[1].counts.rereg_expiring, 1);
    let (send, held) = sending(&lab, 2);
    assert!(held.contains(&second) && held.contains(&first), "{held:x?}");
    assert_eq!(send, vec![first], "the old SA until the ATD");
    lab.run_to(secs(48));
    assert_eq!(sending(&lab, 2).0, vec![second]);
    // A Sender-ID new with the registration, the old generation kept with the old one (its
    // counter runs on in the data plane): not installed twice.
    assert_eq!(lab.planes[1].counts.upgraded, 0);
    assert_eq!(lab.planes[1].counts.receive_only_reuse, 0);
    // The next rekey (80 s) is lost too: the watch (a quarter of the 55 s left at 45 s) fires
    // again before 100 s.
    lab.run_to(secs(99));
    assert_eq!(lab.rereg[1], 2);
    assert!(sending(&lab, 2).1.contains(&current(&lab)));
    // Member 1 never needed one.
    assert_eq!(lab.rereg[0], 0);
}

#[test]
fn traffic_on_the_announced_next_spi_means_a_lost_rekey() {
    let mut lab = Lab::new(2, &[1, 2]);
    lab.connect(1);
    lab.connect(2);
    lab.settle();
    lab.deaf_rekey.push(2);
    lab.run_to(secs(41));
    let second = current(&lab);
    assert!(!sending(&lab, 2).1.contains(&second));
    // Member 1 sends on the new SA from its ATD (42 s); member 2's data plane reports the
    // unknown SPI: the one announced as GSA_NEXT_SPI, so it registers at once.
    lab.run_to(secs(42));
    assert!(
        !lab.planes[1].on_unknown_spi(0xff12_3456),
        "any other SPI: nothing"
    );
    assert!(lab.planes[1].on_unknown_spi(second));
    lab.check_planes();
    lab.settle();
    assert_eq!(lab.rereg[1], 1);
    // The others send on it already: so does member 2, at once (no wait for an ATD).
    assert_eq!(sending(&lab, 2).0, vec![second]);
    // Once per announced SPI.
    assert!(!lab.planes[1].on_unknown_spi(second));
}

#[test]
fn a_data_plane_restart_brings_the_group_sas_back_with_a_new_sender_id() {
    let mut lab = Lab::new(2, &[1, 2]);
    lab.connect(1);
    lab.connect(2);
    lab.settle();
    let spi = current(&lab);
    let ids = |lab: &Lab| -> Vec<u64> {
        lab.gcks.status(lab.now)["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["sender_id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids(&lab), vec![0, 1]);
    lab.run_to(secs(10));
    lab.planes[1].take_updates();
    lab.planes[1].data_plane_lost();
    lab.check_planes();
    lab.settle();
    assert_eq!(lab.rereg[1], 1);
    // Sender-ID 2 now: the SA's counter starts over under an ID never used on it.
    assert_eq!(ids(&lab), vec![0, 2]);
    let ups = lab.planes[1].take_updates();
    let adds: Vec<(u32, Option<u32>, bool)> = ups
        .iter()
        .filter_map(|u| match u {
            proto::Update::AddGroupSa { params } => {
                Some((params.spi.0, params.sender_id, params.send))
            }
            _ => None,
        })
        .collect();
    assert_eq!(adds, vec![(spi, Some(2), true)]);
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
