//! G-IKEv2 through the endpoint (RFC 9838): a GCKS (node 0) and members (nodes 1..) on the
//! virtual-time network: GSA_AUTH, GSA_REGISTRATION, GSA_REKEY routed to each member's IKE SA
//! address, GSA_INBAND_REKEY, refusals, malformed group payloads.

use std::collections::VecDeque;
use std::time::Duration;

use crate::endpoint::Endpoint;
use crate::event::Event;
use crate::group::gcks::{Gcks, GroupConfig, RekeyDelivery};
use crate::group::session::{GroupEvent, GroupSaKeys, KeysFrom};
use crate::group::wire::{exchange as gx, notify as gnotify, payload as gpayload};
use crate::testing::{Fate, Net};
use crate::time::Instant;
use crate::wire::{Id, Payload, TrafficSelector};

use super::{endpoint, peer};

const GCKS: usize = 0;
const PSK: &[u8] = b"group-psk";

fn group() -> Id {
    Id::from_text("branches.roamgate.test")
}

fn member_id(i: usize) -> Id {
    Id::from_text(&format!("m{i}.roamgate.test"))
}

fn policy(group: Id, members: &[usize]) -> GroupConfig {
    let ts = TrafficSelector {
        protocol: 0,
        start_port: 0,
        end_port: 65535,
        start: "10.0.0.0".parse().unwrap(),
        end: "10.255.255.255".parse().unwrap(),
    };
    GroupConfig {
        group,
        members: members.iter().map(|i| member_id(*i)).collect(),
        src: ts,
        dst: ts,
        key_bits: 128,
        lifetime: Duration::from_secs(600),
        rekey_lead: Duration::from_secs(60),
        atd: Duration::from_secs(5),
        dtd: Duration::from_secs(30),
        sender_id_bits: 8,
        seed: [7; 32],
        delivery: Default::default(),
    }
}

/// A GCKS at 192.0.2.1 for `group()` allowing members `allowed`, and `n` members at
/// 192.0.2.11.. that join it by GSA_AUTH on `connect`.
fn rig(n: usize, allowed: &[usize], inband: bool) -> Net {
    rig_with(n, policy(group(), allowed), inband)
}

fn rig_with(n: usize, policy: GroupConfig, inband: bool) -> Net {
    let mut net = Net::new();
    let mut g = endpoint(peer("members", "gcks.roamgate.test", None, PSK), 100);
    g.add_gcks(Gcks::new(policy, Instant::ZERO).unwrap(), inband);
    net.add(g, "192.0.2.1:500".parse().unwrap());
    for i in 1..=n {
        let mut m = endpoint(
            peer(
                "gcks",
                &member_id(i).display(),
                Some("gcks.roamgate.test"),
                PSK,
            ),
            i as u8,
        );
        m.join_group("gcks", group(), true);
        net.add(m, format!("192.0.2.{}:500", 10 + i).parse().unwrap());
    }
    net
}

fn connect(net: &mut Net, i: usize) {
    let now = net.now;
    let (l, r) = (net.nodes[i].addr, net.nodes[GCKS].addr);
    net.ep(i).connect(now, "gcks", l, r).unwrap();
}

fn group_events(events: &VecDeque<Event>) -> Vec<GroupEvent> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Group(g) => Some(g.clone()),
            _ => None,
        })
        .collect()
}

/// The SAs of the last `Keys` event, and where they came from.
fn last_keys(events: &VecDeque<Event>) -> Option<(KeysFrom, Vec<GroupSaKeys>)> {
    group_events(events)
        .into_iter()
        .rev()
        .find_map(|e| match e {
            GroupEvent::Keys { from, sas, .. } => Some((from, sas)),
            _ => None,
        })
}

fn keys_from(events: &VecDeque<Event>, from: KeysFrom) -> usize {
    group_events(events)
        .iter()
        .filter(|e| matches!(e, GroupEvent::Keys { from: f, .. } if *f == from))
        .count()
}

fn gcks(net: &mut Net) -> &mut Endpoint {
    net.ep(GCKS)
}

#[test]
fn gsa_auth_registers_a_member_and_gives_it_keys() {
    let mut net = rig(1, &[1], false);
    connect(&mut net, 1);
    net.drive();
    let ev = &net.nodes[1].events;
    assert!(ev.iter().any(|e| matches!(e, Event::IkeUp { .. })));
    // GSA_AUTH makes no CHILD_SA.
    assert!(!ev.iter().any(|e| matches!(e, Event::ChildUp(_))));
    let (from, sas) = last_keys(ev).expect("keys");
    assert_eq!(from, KeysFrom::Registration);
    assert_eq!(sas.len(), 1);
    let spi = gcks(&mut net).gcks(&group()).unwrap().current_spi();
    assert_eq!(Some(sas[0].spi), spi);
    assert_eq!(sas[0].sender_id, Some(0));
    assert_eq!(sas[0].sender_id_bits, 8);
    assert_eq!(sas[0].keymat.len(), 16 + 4);
    // Keys never print.
    assert!(format!("{:?}", sas[0]).contains("<secret>"));
    let g = group_events(&net.nodes[GCKS].events);
    assert!(g.iter().any(|e| matches!(e,
        GroupEvent::Registered { member, sender_id: Some(0), .. } if *member == member_id(1).display())));
    // The exchanges on the wire: IKE_SA_INIT, then GSA_AUTH (39), never IKE_AUTH (35).
    let exchanges: Vec<u8> = net.log.iter().map(|d| d.data[18]).collect();
    assert!(exchanges.contains(&gx::GSA_AUTH));
    assert!(!exchanges.contains(&crate::wire::exchange::IKE_AUTH));
    assert_eq!(net.ep(1).group_stats().member_refused, 0);
}

#[test]
fn two_members_share_the_group_sa_with_their_own_sender_ids() {
    let mut net = rig(2, &[1, 2], false);
    connect(&mut net, 1);
    connect(&mut net, 2);
    net.drive();
    let (_, a) = last_keys(&net.nodes[1].events).unwrap();
    let (_, b) = last_keys(&net.nodes[2].events).unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(b.len(), 1);
    assert_eq!(a[0].spi, b[0].spi);
    assert_eq!(a[0].keymat.as_slice(), b[0].keymat.as_slice());
    let (sa, sb) = (a[0].sender_id.unwrap(), b[0].sender_id.unwrap());
    assert_ne!(sa, sb);
    let mut ids: Vec<u32> = gcks(&mut net)
        .gcks(&group())
        .unwrap()
        .sender_ids()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    ids.sort_unstable();
    let mut want = vec![sa, sb];
    want.sort_unstable();
    assert_eq!(ids, want);
}

/// Registers members 1..=n and runs until the GCKS's first rekey has been delivered.
fn registered_then_rekeyed(net: &mut Net, n: usize) -> u32 {
    for i in 1..=n {
        connect(net, i);
    }
    net.drive();
    let first = gcks(net).gcks(&group()).unwrap().current_spi().unwrap();
    for i in 1..=n {
        net.nodes[i].events.clear();
    }
    // The rekey is due at lifetime - lead = 540 s.
    net.run_until(Instant::ZERO.saturating_add(Duration::from_secs(545)));
    let new = gcks(net).gcks(&group()).unwrap().current_spi().unwrap();
    assert_ne!(first, new);
    new
}

#[test]
fn a_rekey_reaches_both_members() {
    let mut net = rig(2, &[1, 2], false);
    let new = registered_then_rekeyed(&mut net, 2);
    let mut keys = Vec::new();
    for i in 1..=2 {
        let (from, sas) = last_keys(&net.nodes[i].events).expect("rekey keys");
        assert_eq!(from, KeysFrom::Rekey);
        // The old SA (kept for receiving until the DTD) and the new one.
        assert_eq!(sas.len(), 2);
        let s = sas.iter().find(|s| s.spi == new).unwrap();
        // Sent on after the ATD (5 s) from its arrival at 540 s.
        assert_eq!(
            s.active_from,
            Instant::ZERO.saturating_add(Duration::from_secs(545))
        );
        assert!(sas.iter().any(|o| o.spi != new && o.until.is_some()));
        keys.push((s.keymat.to_vec(), s.sender_id));
    }
    assert_eq!(keys[0].0, keys[1].0);
    // Sender-IDs stay those of the registration (RFC 9838 2.5.1).
    assert_eq!(keys[0].1, Some(0));
    assert_eq!(keys[1].1, Some(1));
    // GSA_REKEY (41) went to each member, unicast, and nothing else was needed.
    let rekeys = net
        .log
        .iter()
        .filter(|d| d.data[18] == gx::GSA_REKEY)
        .count();
    assert_eq!(rekeys, 2);
    assert_eq!(net.ep(1).group_stats().rekeys_dropped, 0);
}

/// Drops the first GSA_REKEY datagram to member 2.
fn drop_rekey_to_member_2(net: &mut Net) {
    let mut dropped = false;
    net.fault = Some(Box::new(move |d| {
        if !dropped && d.to == Some(2) && d.data.get(18) == Some(&gx::GSA_REKEY) {
            dropped = true;
            Fate::Drop
        } else {
            Fate::Deliver
        }
    }));
}

#[test]
fn a_member_that_missed_the_rekey_gets_it_in_band_when_the_gcks_sends_it() {
    let mut net = rig(2, &[1, 2], false);
    drop_rekey_to_member_2(&mut net);
    let new = registered_then_rekeyed(&mut net, 2);
    // Member 1 has the new SA; member 2 lost the datagram and has not.
    assert_eq!(keys_from(&net.nodes[1].events, KeysFrom::Rekey), 1);
    assert_eq!(keys_from(&net.nodes[2].events, KeysFrom::Rekey), 0);
    assert!(net
        .ep(2)
        .group_member(&group())
        .unwrap()
        .sas()
        .iter()
        .all(|s| s.spi != new));
    // The GCKS sends the group's keys over member 2's IKE SA.
    let now = net.now;
    gcks(&mut net)
        .group_inband_rekey(now, &group(), &member_id(2))
        .unwrap();
    net.drive();
    let (from, sas) = last_keys(&net.nodes[2].events).unwrap();
    assert_eq!(from, KeysFrom::Inband);
    let (_, a) = last_keys(&net.nodes[1].events).unwrap();
    let s2 = sas.iter().find(|s| s.spi == new).expect("new SA in band");
    let s1 = a.iter().find(|s| s.spi == new).unwrap();
    assert_eq!(s1.keymat.as_slice(), s2.keymat.as_slice());
    assert_eq!(s2.sender_id, Some(1));
    assert_eq!(gcks(&mut net).group_stats().inband_sent, 1);
    assert!(net.log.iter().any(|d| d.data[18] == gx::GSA_INBAND_REKEY));
    // The next GSA_REKEY is accepted by member 2 again (its Rekey SA's Message ID window is
    // the GCKS's, from the in-band policy).
    net.nodes[2].events.clear();
    net.run_until(Instant::ZERO.saturating_add(Duration::from_secs(1090)));
    assert_eq!(keys_from(&net.nodes[2].events, KeysFrom::Rekey), 1);
}

#[test]
fn with_in_band_delivery_a_lost_rekey_datagram_costs_nothing() {
    let mut net = rig(2, &[1, 2], true);
    drop_rekey_to_member_2(&mut net);
    let new = registered_then_rekeyed(&mut net, 2);
    assert_eq!(keys_from(&net.nodes[2].events, KeysFrom::Rekey), 0);
    assert!(keys_from(&net.nodes[2].events, KeysFrom::Inband) >= 1);
    for i in 1..=2 {
        let m = net.ep(i).group_member(&group()).unwrap();
        assert!(m.sas().iter().any(|s| s.spi == new), "member {i}");
    }
    assert_eq!(gcks(&mut net).group_stats().inband_sent, 2);
}

#[test]
fn a_member_not_in_the_policy_is_refused() {
    // Member 2 is not among the identities the policy allows.
    let mut net = rig(2, &[1], false);
    connect(&mut net, 2);
    net.drive();
    let ev = &net.nodes[2].events;
    assert!(ev.iter().any(|e| matches!(e, Event::IkeUp { .. })));
    assert!(last_keys(ev).is_none());
    assert!(group_events(ev).iter().any(|e| matches!(e,
        GroupEvent::Refused { notify, .. } if *notify == gnotify::AUTHORIZATION_FAILED)));
    assert!(group_events(&net.nodes[GCKS].events)
        .iter()
        .any(|e| matches!(e,
        GroupEvent::RegistrationRefused { notify, member, .. }
            if *notify == gnotify::AUTHORIZATION_FAILED && *member == member_id(2).display())));
    assert!(net.ep(2).group_member(&group()).unwrap().sas().is_empty());
    assert_eq!(gcks(&mut net).gcks(&group()).unwrap().stats().refused, 1);
}

#[test]
fn an_unknown_group_is_refused_and_gsa_registration_joins_another() {
    let mut net = rig(1, &[1], false);
    // Member 1 asks for a group the GCKS does not have.
    let other = Id::from_text("other.roamgate.test");
    net.ep(1).join_group("gcks", other.clone(), true);
    connect(&mut net, 1);
    net.drive();
    assert!(group_events(&net.nodes[1].events)
        .iter()
        .any(|e| matches!(e,
        GroupEvent::Refused { notify, .. } if *notify == gnotify::INVALID_GROUP_ID)));
    // The IKE SA stays up: GSA_REGISTRATION for the group it is allowed in.
    let ike = net.ep(1).list()[0].0;
    let now = net.now;
    net.ep(1).register_group(now, ike, group(), true).unwrap();
    net.drive();
    let (from, sas) = last_keys(&net.nodes[1].events).unwrap();
    assert_eq!(from, KeysFrom::Registration);
    assert_eq!(sas.len(), 1);
    assert_eq!(sas[0].sender_id, Some(0));
    assert!(net.log.iter().any(|d| d.data[18] == gx::GSA_REGISTRATION));
}

#[test]
fn a_removed_member_is_sent_nothing_and_the_others_follow() {
    let mut net = rig(2, &[1, 2], false);
    connect(&mut net, 1);
    connect(&mut net, 2);
    net.drive();
    let first = gcks(&mut net).gcks(&group()).unwrap().current_spi();
    let now = net.now;
    gcks(&mut net).remove_group_member(now, &group(), &member_id(2));
    net.drive();
    assert!(group_events(&net.nodes[GCKS].events)
        .iter()
        .any(|e| matches!(e, GroupEvent::Removed { .. })));
    let new = gcks(&mut net).gcks(&group()).unwrap().current_spi();
    assert_ne!(first, new);
    // Member 1 follows (new Rekey SA, then the new SA); member 2 was sent nothing.
    assert!(net
        .ep(1)
        .group_member(&group())
        .unwrap()
        .sas()
        .iter()
        .any(|s| Some(s.spi) == new));
    assert!(net
        .ep(2)
        .group_member(&group())
        .unwrap()
        .sas()
        .iter()
        .all(|s| Some(s.spi) != new));
}

/// Cuts the body of the first payload of type `kind` to 2 octets (below any of their
/// fixed parts).
fn truncate(kind: u8) -> impl FnMut(&mut Vec<Payload>) {
    move |p: &mut Vec<Payload>| {
        for x in p.iter_mut() {
            if let Payload::Other { kind: k, data } = x {
                if *k == kind {
                    data.truncate(2);
                    return;
                }
            }
        }
    }
}

#[test]
fn a_malformed_registration_answer_is_counted_and_refused() {
    let mut net = rig(1, &[1], false);
    let mut cut = truncate(gpayload::GSA);
    gcks(&mut net).set_group_tamper(Box::new(move |x, p| {
        if x == gx::GSA_REGISTRATION {
            cut(p)
        }
    }));
    connect(&mut net, 1);
    net.drive();
    let ev = &net.nodes[1].events;
    assert!(last_keys(ev).is_none());
    assert!(group_events(ev)
        .iter()
        .any(|e| matches!(e, GroupEvent::Refused { notify: 0, .. })));
    let s = net.ep(1).group_stats();
    assert_eq!(s.member_refused, 1);
    assert_eq!(s.malformed, 1);
    assert!(net.ep(1).group_member(&group()).unwrap().sas().is_empty());
}

#[test]
fn a_malformed_registration_request_is_answered_invalid_syntax() {
    let mut net = rig(1, &[1], false);
    connect(&mut net, 1);
    net.drive();
    let mut cut = truncate(gpayload::IDG);
    net.ep(1).set_group_tamper(Box::new(move |x, p| {
        if x == gx::GSA_REGISTRATION {
            cut(p)
        }
    }));
    let ike = net.ep(1).list()[0].0;
    let now = net.now;
    net.ep(1).register_group(now, ike, group(), true).unwrap();
    net.drive();
    assert_eq!(gcks(&mut net).group_stats().malformed, 1);
    // INVALID_SYNTAX ends the IKE SA on both ends (RFC 7296 2.21.3).
    for i in [GCKS, 1] {
        assert!(net.nodes[i].events.iter().any(|e| matches!(
            e,
            Event::IkeDown {
                reason: crate::event::DownReason::InvalidSyntax,
                ..
            }
        )));
    }
}

#[test]
fn a_malformed_in_band_rekey_is_refused_and_keys_stay() {
    let mut net = rig(1, &[1], false);
    connect(&mut net, 1);
    net.drive();
    let before = net.ep(1).group_member(&group()).unwrap().sas()[0].spi;
    let mut cut = truncate(gpayload::KD);
    gcks(&mut net).set_group_tamper(Box::new(move |x, p| {
        if x == gx::GSA_INBAND_REKEY {
            cut(p)
        }
    }));
    let now = net.now;
    gcks(&mut net)
        .group_inband_rekey(now, &group(), &member_id(1))
        .unwrap();
    net.drive();
    assert_eq!(net.ep(1).group_stats().malformed, 1);
    assert_eq!(
        net.ep(1).group_member(&group()).unwrap().sas()[0].spi,
        before
    );
}

/// Single-bit changes of the GSA and KD bodies of a registration answer, through the real
/// exchange: refused (counted, reported) or accepted, never a panic.
#[test]
fn mutated_registration_answers_never_panic() {
    let mut refused = 0;
    let mut accepted = 0;
    for (round, kind) in [gpayload::GSA, gpayload::KD]
        .into_iter()
        .cycle()
        .take(24)
        .enumerate()
    {
        let mut net = rig(1, &[1], false);
        let mut n = round as u32;
        gcks(&mut net).set_group_tamper(Box::new(move |x, p| {
            if x != gx::GSA_REGISTRATION {
                return;
            }
            for y in p.iter_mut() {
                if let Payload::Other { kind: k, data } = y {
                    if *k == kind && !data.is_empty() {
                        n = n.wrapping_mul(2_654_435_761).wrapping_add(12345);
                        let at = n as usize % data.len();
                        data[at] ^= 1 << (n % 8);
                    }
                }
            }
        }));
        connect(&mut net, 1);
        net.drive();
        match last_keys(&net.nodes[1].events) {
            Some(_) => accepted += 1,
            None => {
                refused += 1;
                assert_eq!(net.ep(1).group_stats().member_refused, 1);
            }
        }
    }
    assert_eq!(refused + accepted, 24);
    // Changes to a length, an id or a wrapped key (RFC 5649's integrity check) are refused.
    assert!(refused > 0, "refused {refused} accepted {accepted}");
}

#[test]
fn a_forged_or_stray_gsa_rekey_is_dropped() {
    let mut net = rig(1, &[1], false);
    connect(&mut net, 1);
    net.drive();
    let now = net.now;
    // A GSA_REKEY for a Rekey SA the member does not hold, and one truncated.
    let mut msg = vec![0u8; 28 + 8];
    msg[17] = 0x20;
    msg[18] = gx::GSA_REKEY;
    msg[19] = crate::wire::FLAG_INITIATOR;
    let len = msg.len() as u32;
    msg[24..28].copy_from_slice(&len.to_be_bytes());
    let (l, r) = (net.nodes[1].addr, net.nodes[GCKS].addr);
    net.ep(1).handle(now, l, r, &msg);
    net.ep(1).handle(now, l, r, &msg[..20]);
    let s = net.ep(1).group_stats();
    assert_eq!(s.rekeys_dropped, 1);
    assert_eq!(net.ep(1).group_member(&group()).unwrap().sas().len(), 1);
}

#[test]
fn rekeys_reach_a_member_after_the_gcks_closed_its_ike_sa() {
    // RFC 9838 2.3.3: the GCKS may close the registration IKE SA; GSA_REKEY goes on.
    let mut net = rig(1, &[1], false);
    connect(&mut net, 1);
    net.drive();
    let ike = gcks(&mut net).list()[0].0;
    let now = net.now;
    gcks(&mut net).delete_ike(now, ike).unwrap();
    net.drive();
    assert!(gcks(&mut net).list().is_empty());
    assert!(net.ep(1).list().is_empty());
    net.nodes[1].events.clear();
    net.run_until(Instant::ZERO.saturating_add(Duration::from_secs(545)));
    let new = gcks(&mut net).gcks(&group()).unwrap().current_spi();
    let (from, sas) = last_keys(&net.nodes[1].events).expect("rekey without the IKE SA");
    assert_eq!(from, KeysFrom::Rekey);
    assert!(sas.iter().any(|s| Some(s.spi) == new));
    // In-band delivery needs the IKE SA.
    let now = net.now;
    assert_eq!(
        gcks(&mut net).group_inband_rekey(now, &group(), &member_id(1)),
        Err(crate::endpoint::ConnectError::NoSuchSa)
    );
}

#[test]
fn in_band_rekeys_follow_a_rekeyed_ike_sa() {
    let mut net = rig(1, &[1], false);
    connect(&mut net, 1);
    net.drive();
    let ike = net.ep(1).list()[0].0;
    let now = net.now;
    net.ep(1).rekey_ike(now, ike).unwrap();
    net.drive();
    assert_ne!(net.ep(1).list()[0].0, ike);
    let now = net.now;
    gcks(&mut net)
        .group_inband_rekey(now, &group(), &member_id(1))
        .unwrap();
    net.drive();
    assert_eq!(keys_from(&net.nodes[1].events, KeysFrom::Inband), 1);
}

#[test]
fn a_member_leaving_is_removed() {
    let mut net = rig(2, &[1, 2], false);
    connect(&mut net, 1);
    connect(&mut net, 2);
    net.drive();
    let first = gcks(&mut net).gcks(&group()).unwrap().current_spi();
    let ike = net.ep(2).list()[0].0;
    let now = net.now;
    net.ep(2).leave_group(now, ike, group()).unwrap();
    net.drive();
    assert!(group_events(&net.nodes[2].events)
        .iter()
        .any(|e| matches!(e, GroupEvent::Left { .. })));
    assert!(net.ep(2).group_member(&group()).is_none());
    assert!(group_events(&net.nodes[GCKS].events)
        .iter()
        .any(|e| matches!(e,
        GroupEvent::Removed { member, .. } if *member == member_id(2).display())));
    let g = gcks(&mut net).gcks(&group()).unwrap();
    assert!(!g.has_member(&member_id(2)));
    assert!(g.has_member(&member_id(1)));
    // The removal rekeyed the group; member 1 has the new SA.
    let new = g.current_spi();
    assert_ne!(first, new);
    assert!(net
        .ep(1)
        .group_member(&group())
        .unwrap()
        .sas()
        .iter()
        .any(|s| Some(s.spi) == new));
}

#[test]
fn sender_id_exhaustion_excludes_everyone_and_they_register_again() {
    // One Sender-ID bit: two senders; the third registration is refused and the group starts
    // over (RFC 9838 2.5.1, 2.4.3).
    let mut p = policy(group(), &[1, 2, 3]);
    p.sender_id_bits = 1;
    let mut net = rig_with(3, p, false);
    connect(&mut net, 1);
    connect(&mut net, 2);
    net.drive();
    let first = gcks(&mut net).gcks(&group()).unwrap().current_spi();
    connect(&mut net, 3);
    net.drive();
    assert!(group_events(&net.nodes[3].events)
        .iter()
        .any(|e| matches!(e,
        GroupEvent::Refused { notify, .. } if *notify == gnotify::REGISTRATION_FAILED)));
    for i in 1..=2 {
        assert!(
            group_events(&net.nodes[i].events)
                .iter()
                .any(|e| matches!(e, GroupEvent::Excluded { .. })),
            "member {i}"
        );
        assert!(net.ep(i).group_member(&group()).unwrap().must_register());
    }
    // The driver registers them again over their IKE SAs: a new SA, Sender-IDs from 0.
    let second = gcks(&mut net).gcks(&group()).unwrap().current_spi();
    assert_ne!(first, second);
    for i in 1..=2 {
        let ike = net.ep(i).list()[0].0;
        let now = net.now;
        net.ep(i).register_group(now, ike, group(), true).unwrap();
        net.drive();
    }
    let mut ids = Vec::new();
    for i in 1..=2 {
        let (from, sas) = last_keys(&net.nodes[i].events).unwrap();
        assert_eq!(from, KeysFrom::Registration);
        let s = sas.iter().find(|s| Some(s.spi) == second).unwrap();
        ids.push(s.sender_id.unwrap());
    }
    ids.sort_unstable();
    assert_eq!(ids, vec![0, 1]);
    // Member 3 (refused) holds nothing.
    assert!(net.ep(3).group_member(&group()).unwrap().sas().is_empty());
}

#[test]
fn gsa_auth_to_an_endpoint_without_a_gcks_is_refused() {
    let mut net = Net::new();
    let g = endpoint(peer("members", "gcks.roamgate.test", None, PSK), 100);
    net.add(g, "192.0.2.1:500".parse().unwrap());
    let mut m = endpoint(
        peer(
            "gcks",
            &member_id(1).display(),
            Some("gcks.roamgate.test"),
            PSK,
        ),
        1,
    );
    m.join_group("gcks", group(), true);
    net.add(m, "192.0.2.11:500".parse().unwrap());
    connect(&mut net, 1);
    net.drive();
    // Not a GCKS: an unexpected exchange (INVALID_SYNTAX), no IKE SA on either end.
    assert!(!net.nodes[GCKS]
        .events
        .iter()
        .any(|e| matches!(e, Event::IkeUp { .. })));
    assert!(net.ep(GCKS).list().is_empty());
    assert!(net.ep(1).list().is_empty());
    assert!(last_keys(&net.nodes[1].events).is_none());
}

/// The `MustRegister` reasons in `events`.
fn must_register(events: &VecDeque<Event>) -> Vec<crate::group::member::RegisterWhy> {
    group_events(events)
        .into_iter()
        .filter_map(|e| match e {
            GroupEvent::MustRegister { why, .. } => Some(why),
            _ => None,
        })
        .collect()
}

#[test]
fn a_gap_in_the_rekey_message_ids_asks_for_a_registration_which_brings_the_missed_sa() {
    use crate::group::member::RegisterWhy;
    let mut net = rig(2, &[1, 2], false);
    drop_rekey_to_member_2(&mut net);
    for i in 1..=2 {
        connect(&mut net, i);
    }
    net.drive();
    // GSA_NEXT_SPI (RFC 9838 4.4.2.2.3): the registration names the SPI the next SA will have.
    let announced = match group_events(&net.nodes[1].events)
        .into_iter()
        .find_map(|e| match e {
            GroupEvent::Keys { next_spis, .. } => Some(next_spis),
            _ => None,
        }) {
        Some(n) => n,
        None => panic!("no keys"),
    };
    assert_eq!(announced.len(), 1);
    // The first rekey (540 s) is lost on its way to member 2; it cannot tell yet.
    net.run_until(Instant::ZERO.saturating_add(Duration::from_secs(545)));
    let missed = gcks(&mut net)
        .gcks(&group())
        .unwrap()
        .current_spi()
        .unwrap();
    assert_eq!(
        announced,
        vec![missed],
        "the SA came with the announced SPI"
    );
    assert!(must_register(&net.nodes[2].events).is_empty());
    // The second (1,080 s) arrives with a Message ID one too far: a registration is asked for.
    net.run_until(Instant::ZERO.saturating_add(Duration::from_secs(1085)));
    let whys = must_register(&net.nodes[2].events);
    assert!(
        matches!(whys.as_slice(), [RegisterWhy::RekeyGap { expected, got }] if *got == expected + 1),
        "{whys:?}"
    );
    assert!(must_register(&net.nodes[1].events).is_empty());
    let held: Vec<u32> = last_keys(&net.nodes[2].events)
        .unwrap()
        .1
        .iter()
        .map(|s| s.spi)
        .collect();
    assert!(!held.contains(&missed));
    // GSA_REGISTRATION over its IKE SA brings every live SA, the missed one too.
    let now = net.now;
    let ike = net.ep(2).group_ike(&group()).expect("its IKE SA");
    net.ep(2).register_group(now, ike, group(), true).unwrap();
    net.drive();
    let (from, sas) = last_keys(&net.nodes[2].events).unwrap();
    assert_eq!(from, KeysFrom::Registration);
    assert!(sas.iter().any(|s| s.spi == missed), "{sas:?}");
    // Lifetimes come along: the newest expires 600 s after its rekey at 1,080 s.
    let newest = gcks(&mut net)
        .gcks(&group())
        .unwrap()
        .current_spi()
        .unwrap();
    let n = sas.iter().find(|s| s.spi == newest).unwrap();
    assert_eq!(
        n.expires,
        Some(Instant::ZERO.saturating_add(Duration::from_secs(1680)))
    );
    assert_eq!(net.ep(2).group_member(&group()).unwrap().stats().gaps, 1);
}

#[test]
fn a_sender_id_that_no_longer_fits_is_not_installed_and_asks_for_a_registration() {
    use crate::group::member::RegisterWhy;
    let mut net = rig(3, &[1, 2, 3], false);
    for i in 1..=3 {
        connect(&mut net, i);
    }
    net.drive();
    // Sender-IDs 0, 1, 2; a GCKS that then sends 1 Sender-ID bit without starting over.
    gcks(&mut net)
        .gcks_mut(&group())
        .unwrap()
        .set_sender_id_bits_unchecked(1);
    net.run_until(Instant::ZERO.saturating_add(Duration::from_secs(545)));
    let new = gcks(&mut net)
        .gcks(&group())
        .unwrap()
        .current_spi()
        .unwrap();
    for i in 1..=2 {
        assert!(must_register(&net.nodes[i].events).is_empty());
        let sas = last_keys(&net.nodes[i].events).unwrap().1;
        assert!(sas.iter().any(|s| s.spi == new && s.sender_id_bits == 1));
    }
    // Member 3's ID 2 needs 2 bits: a fatal error, re-register (RFC 9838 2.5.2); the SA is
    // not installed (2.4.1.4).
    assert_eq!(
        must_register(&net.nodes[3].events),
        vec![RegisterWhy::SenderIdUnfit {
            sender_id: 2,
            bits: 1
        }]
    );
    let m3 = net.ep(3).group_member(&group()).unwrap();
    assert!(m3.sas().iter().all(|s| s.spi != new));
}

// ---- multicast delivery (RFC 9838 2.4.1: "GSA_REKEY ... unicast or multicast") ----------

fn multicast_rig(n: usize, delivery: RekeyDelivery) -> (Net, std::net::IpAddr) {
    let a = delivery.multicast().expect("a multicast delivery");
    let mut p = policy(group(), &(1..=n).collect::<Vec<_>>());
    p.delivery = delivery;
    let mut net = rig_with(n, p, false);
    for i in 1..=n {
        connect(&mut net, i);
    }
    net.drive();
    for i in 1..=n {
        // The member learns the address from the Rekey SA's destination selector; its data
        // plane listens there (here: the network delivers it).
        let learned = group_events(&net.nodes[i].events)
            .into_iter()
            .find_map(|e| match e {
                GroupEvent::Keys {
                    rekey_multicast, ..
                } => Some(rekey_multicast),
                _ => None,
            });
        assert_eq!(learned, Some(Some(a)), "member {i}");
        net.join_multicast(i, a);
        net.nodes[i].events.clear();
    }
    (net, a)
}

#[test]
fn with_multicast_delivery_a_rekey_is_one_datagram_to_the_group_and_every_member_follows() {
    let a: std::net::IpAddr = "239.192.0.1".parse().unwrap();
    let (mut net, _) = multicast_rig(3, RekeyDelivery::Multicast(a));
    net.log.clear();
    net.run_until(Instant::ZERO.saturating_add(Duration::from_secs(545)));
    let new = gcks(&mut net)
        .gcks(&group())
        .unwrap()
        .current_spi()
        .unwrap();
    assert_eq!(gcks(&mut net).group_stats().multicast_rekeys, 1);
    let rekeys: Vec<_> = net
        .log
        .iter()
        .filter(|d| d.data.get(18) == Some(&gx::GSA_REKEY))
        .collect();
    // One datagram, three deliveries, none to a member's own address.
    assert_eq!(rekeys.len(), 3);
    assert!(rekeys
        .iter()
        .all(|d| d.dst == std::net::SocketAddr::new(a, 500)));
    for i in 1..=3 {
        let (from, sas) = last_keys(&net.nodes[i].events).expect("rekey keys");
        assert_eq!(from, KeysFrom::Rekey, "member {i}");
        assert!(sas.iter().any(|s| s.spi == new), "member {i}");
        assert_eq!(net.ep(i).group_stats().rekeys_dropped, 0);
    }
    // A removal's rekey goes the same way: the others follow, the removed one cannot.
    let now = net.now;
    gcks(&mut net).remove_group_member(now, &group(), &member_id(3));
    net.drive();
    let after = gcks(&mut net)
        .gcks(&group())
        .unwrap()
        .current_spi()
        .unwrap();
    assert_ne!(after, new);
    for i in 1..=2 {
        let (_, sas) = last_keys(&net.nodes[i].events).unwrap();
        assert!(sas.iter().any(|s| s.spi == after), "member {i}");
    }
    let (_, sas3) = last_keys(&net.nodes[3].events).unwrap();
    assert!(
        !sas3.iter().any(|s| s.spi == after),
        "the removed member got the key"
    );
    assert_eq!(gcks(&mut net).group_stats().multicast_rekeys, 3);
}

#[test]
fn with_both_deliveries_the_second_copy_is_refused_as_a_replay_and_keys_come_once() {
    let a: std::net::IpAddr = "239.192.0.2".parse().unwrap();
    let (mut net, _) = multicast_rig(2, RekeyDelivery::Both(a));
    net.log.clear();
    net.run_until(Instant::ZERO.saturating_add(Duration::from_secs(545)));
    let rekeys = net
        .log
        .iter()
        .filter(|d| d.data.get(18) == Some(&gx::GSA_REKEY))
        .count();
    assert_eq!(rekeys, 4, "two copies for each of two members");
    for i in 1..=2 {
        assert_eq!(
            keys_from(&net.nodes[i].events, KeysFrom::Rekey),
            1,
            "member {i}"
        );
        assert_eq!(net.ep(i).group_stats().rekeys_dropped, 1, "member {i}");
    }
}

#[test]
fn with_unicast_delivery_members_learn_no_multicast_address() {
    let mut net = rig(1, &[1], false);
    connect(&mut net, 1);
    net.drive();
    let learned = group_events(&net.nodes[1].events)
        .into_iter()
        .find_map(|e| match e {
            GroupEvent::Keys {
                rekey_multicast, ..
            } => Some(rekey_multicast),
            _ => None,
        });
    assert_eq!(learned, Some(None));
}
