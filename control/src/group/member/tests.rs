//! The member plane on virtual time: registration sends at once, a rekey's SA receives at
//! once and sends from its activation time, the old one goes at its deactivation time; no
//! generation installed twice.

use std::time::Duration;

use ike::group::session::GroupSaKeys;
use ike::Instant;
use proto::Update;
use zeroize::Zeroizing;

use super::{MemberPlane, MemberSetup, GROUP_SA_ID};

fn at(s: u64) -> Instant {
    Instant::ZERO.saturating_add(Duration::from_secs(s))
}

fn sa(spi: u32, active_from: u64, until: Option<u64>) -> GroupSaKeys {
    GroupSaKeys {
        spi,
        keymat: Zeroizing::new(vec![7u8; 20]),
        sender_id: Some(3),
        sender_id_bits: 8,
        active_from: at(active_from),
        until: until.map(at),
        expires: None,
    }
}

fn plane() -> MemberPlane {
    MemberPlane::new(MemberSetup {
        local: "192.0.2.1".parse().unwrap(),
        lan: "10.1.0.0/24".parse().unwrap(),
        peers: vec![
            proto::group::GroupPeer {
                lan: "10.2.0.0/24".parse().unwrap(),
                outer: "192.0.2.2".parse().unwrap(),
            },
            proto::group::GroupPeer {
                lan: "10.3.0.0/24".parse().unwrap(),
                outer: "192.0.2.3".parse().unwrap(),
            },
        ],
        traffic: "10.0.0.0/8".parse().unwrap(),
        replay_window: 1024,
    })
}

fn kinds(u: &[Update]) -> Vec<String> {
    u.iter()
        .map(|u| match u {
            Update::AddGroupSa { params } => {
                format!("add {:x} send={}", params.spi.0, params.send)
            }
            Update::SendOnGroupSa { spi, id } => {
                assert_eq!(*id, GROUP_SA_ID);
                format!("send {:x}", spi.0)
            }
            Update::DeleteGroupSa { spi } => format!("del {:x}", spi.0),
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn registration_then_rekey_with_atd_and_dtd() {
    let mut p = plane();
    assert_eq!(p.rules().len(), 2);
    assert!(
        matches!(p.peers_update(), Some(Update::SetGroupPeers { ref peers, .. }) if peers.len() == 2)
    );
    // Registration at 1 s: the SA is active already.
    p.on_keys(at(1), &[sa(0xff00_0001, 0, None)], &[], false);
    assert_eq!(kinds(&p.take_updates()), vec!["add ff000001 send=true"]);
    // The rekey at 40 s: the new SA active from 45 s, the old one kept until 70 s.
    p.on_keys(
        at(40),
        &[sa(0xff00_0001, 0, Some(70)), sa(0xff00_0002, 45, None)],
        &[],
        true,
    );
    assert_eq!(kinds(&p.take_updates()), vec!["add ff000002 send=false"]);
    assert_eq!(p.poll_timeout(), Some(at(45)));
    p.handle_timeout(at(44));
    assert!(p.take_updates().is_empty());
    p.handle_timeout(at(45));
    assert_eq!(kinds(&p.take_updates()), vec!["send ff000002"]);
    assert_eq!(p.poll_timeout(), Some(at(70)));
    // The same keys again (an in-band copy): nothing installed twice.
    p.on_keys(
        at(50),
        &[sa(0xff00_0001, 0, Some(70)), sa(0xff00_0002, 45, None)],
        &[],
        true,
    );
    assert!(p.take_updates().is_empty());
    p.handle_timeout(at(70));
    assert_eq!(kinds(&p.take_updates()), vec!["del ff000001"]);
    assert_eq!(p.poll_timeout(), None);
    assert_eq!(p.generations(), vec![(0xff00_0002, true)]);
}

#[test]
fn a_group_restart_removes_what_the_endpoint_dropped_and_bad_keys_are_refused() {
    let mut p = plane();
    p.on_keys(at(1), &[sa(0xff00_0001, 0, None)], &[], false);
    p.take_updates();
    let mut bad = sa(0xff00_0009, 0, None);
    bad.keymat = Zeroizing::new(vec![1u8; 7]);
    let unicast = sa(0x0000_1234, 0, None);
    p.on_keys(at(2), &[bad, unicast, sa(0xff00_0003, 0, None)], &[], false);
    let u = kinds(&p.take_updates());
    // The new SA is installed but not sending (the old one was until the endpoint dropped it).
    assert_eq!(
        u,
        vec!["add ff000003 send=false", "del ff000001", "send ff000003"]
    );
    assert_eq!(p.counts.refused, 2);
}

#[test]
fn a_generation_never_sends_again_with_a_sender_id_it_sent_with() {
    let mut p = plane();
    p.on_keys(at(1), &[sa(0xff00_0001, 0, None)], &[], false);
    assert_eq!(kinds(&p.take_updates()), vec!["add ff000001 send=true"]);
    // The data plane restarts; the same keys come again (a rekey before the registration's
    // answer): Sender-ID 3 sent on 0xff000001 before, so it only receives.
    p.data_plane_lost();
    assert_eq!(p.take_reregister(), Some(super::Reregister::DataPlaneLost));
    p.on_keys(at(2), &[sa(0xff00_0001, 0, None)], &[], false);
    let u = p.take_updates();
    assert_eq!(kinds(&u), vec!["add ff000001 send=false"]);
    assert!(matches!(&u[0], Update::AddGroupSa { params } if params.sender_id.is_none()));
    assert_eq!(p.counts.receive_only_reuse, 1);
    // The registration's answer: Sender-ID 9, new on it: added again with it, sending.
    let mut again = sa(0xff00_0001, 0, None);
    again.sender_id = Some(9);
    p.on_keys(at(3), &[again], &[], false);
    assert_eq!(
        kinds(&p.take_updates()),
        vec!["del ff000001", "add ff000001 send=true"]
    );
    assert_eq!(p.counts.upgraded, 1);
}

#[test]
fn the_expiry_watch_uses_the_lead_the_gcks_showed_and_backs_off() {
    let mut p = plane();
    let mut a = sa(0xff00_0001, 0, None);
    a.expires = Some(at(100));
    p.on_keys(at(0), &[a.clone()], &[], false);
    // No rekey seen: a quarter of the 100 s lifetime before the end.
    assert_eq!(p.poll_timeout(), Some(at(75)));
    // The rekey at 80 s: the old SA had 20 s left, so the lead is 20 s.
    let mut b = sa(0xff00_0002, 85, None);
    b.expires = Some(at(180));
    a.until = Some(at(90));
    p.on_keys(at(80), &[a, b], &[], true);
    p.take_updates();
    p.handle_timeout(at(90));
    p.take_updates();
    // Half the lead before the new SA's end: 170 s; nothing asked before.
    assert_eq!(p.poll_timeout(), Some(at(170)));
    p.handle_timeout(at(169));
    assert_eq!(p.take_reregister(), None);
    p.handle_timeout(at(170));
    assert_eq!(
        p.take_reregister(),
        Some(super::Reregister::Expiring(0xff00_0002))
    );
    // Nothing newer came: again after 2 s, then 4 s.
    assert_eq!(p.poll_timeout(), Some(at(172)));
    p.handle_timeout(at(172));
    assert!(p.take_reregister().is_some());
    assert_eq!(p.poll_timeout(), Some(at(176)));
}
