//! Group mode on virtual time: a GCKS and its members exchanging the real messages (the
//! registration payloads and the sealed GSA_REKEY bytes), with a network that delivers each
//! member's copy at its own moment.

use core::time::Duration;

use ring::aead;

use super::gcks::{Gcks, GroupConfig, Outbound, GROUP_SPI_MASK, GROUP_SPI_PREFIX};
use super::keys::Kek;
use super::member::{Member, MemberSa};
use super::rekey::RekeyError;
use crate::crypto::Prf;
use crate::group::wire::notify;
use crate::time::Instant;
use crate::wire::{Id, TrafficSelector};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn at(ms: u64) -> Instant {
    Instant::from_nanos(ms * 1_000_000)
}

fn ids(n: usize) -> Vec<Id> {
    (1..=n)
        .map(|i| Id::from_text(&format!("gw{i}.branches.test")))
        .collect()
}

fn config(members: usize, bits: u8) -> GroupConfig {
    let ts = |a: &str, b: &str| TrafficSelector {
        protocol: 0,
        start_port: 0,
        end_port: 65535,
        start: a.parse().unwrap(),
        end: b.parse().unwrap(),
    };
    GroupConfig {
        group: Id::from_text("branches.roamgate.test"),
        members: ids(members),
        src: ts("10.0.0.0", "10.255.255.255"),
        dst: ts("10.0.0.0", "10.255.255.255"),
        key_bits: 128,
        lifetime: secs(600),
        rekey_lead: secs(60),
        atd: secs(5),
        dtd: secs(30),
        sender_id_bits: bits,
        seed: [9; 32],
        delivery: Default::default(),
    }
}

/// The default KEK both ends of member `i`'s registration IKE SA derive (from its SK_d).
fn ike_kek(i: usize) -> Kek {
    Kek::from_ike_sa(Prf::HmacSha256, &[i as u8 + 1; 32])
}

fn register(g: &mut Gcks, m: &mut Member, i: usize, now: Instant) -> Result<(), u16> {
    let req = m.registration_request();
    let resp = g.register(now, &ids(i + 1)[i], &ike_kek(i), &req)?;
    m.on_registration(now, &ike_kek(i), &resp).unwrap();
    Ok(())
}

fn group(n: usize, bits: u8) -> (Gcks, Vec<Member>) {
    let cfg = config(n, bits);
    let mut g = Gcks::new(cfg.clone(), at(0)).unwrap();
    let mut ms: Vec<Member> = (0..n)
        .map(|_| Member::new(cfg.group.clone(), true))
        .collect();
    for (i, m) in ms.iter_mut().enumerate() {
        register(&mut g, m, i, at(0)).unwrap();
    }
    (g, ms)
}

fn index_of(to: &Id) -> usize {
    ids(64).iter().position(|x| x == to).unwrap()
}

/// One ESP-like AES-GCM seal as the data plane does it (RFC 4106: salt | explicit IV).
fn seal(sa: &MemberSa, iv: [u8; 8], pt: &[u8]) -> Vec<u8> {
    let (k, salt) = sa.keymat.split_at(sa.keymat.len() - 4);
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_128_GCM, k).unwrap());
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(salt);
    n[4..].copy_from_slice(&iv);
    let mut b = pt.to_vec();
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(n),
        aead::Aad::from(sa.spi.to_be_bytes()),
        &mut b,
    )
    .unwrap();
    b
}

fn open(sa: &MemberSa, spi: u32, iv: [u8; 8], ct: &[u8]) -> Option<Vec<u8>> {
    let (k, salt) = sa.keymat.split_at(sa.keymat.len() - 4);
    let alg = if k.len() == 16 {
        &aead::AES_128_GCM
    } else {
        &aead::AES_256_GCM
    };
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(alg, k).unwrap());
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(salt);
    n[4..].copy_from_slice(&iv);
    let mut b = ct.to_vec();
    key.open_in_place(
        aead::Nonce::assume_unique_for_key(n),
        aead::Aad::from(spi.to_be_bytes()),
        &mut b,
    )
    .ok()
    .map(|p| p.to_vec())
}

/// The IV of a group SA: the Sender-ID in the top bits, the sender's counter below.
fn iv(sa: &MemberSa, ctr: u64) -> [u8; 8] {
    let bits = u32::from(sa.sender_id_bits);
    ((u64::from(sa.sender_id.unwrap()) << (64 - bits)) | ctr).to_be_bytes()
}

#[test]
fn registration_gives_every_member_the_same_sa_and_its_own_sender_id() {
    let (g, ms) = group(4, 8);
    let spi = g.current_spi().unwrap();
    assert_eq!(spi & GROUP_SPI_MASK, GROUP_SPI_PREFIX);
    let mut sids: Vec<u32> = ms
        .iter()
        .map(|m| {
            let sa = m.outbound(at(0)).unwrap();
            assert_eq!(sa.spi, spi);
            assert_eq!(sa.keymat.as_slice(), ms[0].sas()[0].keymat.as_slice());
            sa.sender_id.unwrap()
        })
        .collect();
    sids.sort();
    sids.dedup();
    assert_eq!(sids.len(), 4);
    assert_eq!(g.stats().registered, 4);
    // A packet from each member opens at every other.
    for (i, a) in ms.iter().enumerate() {
        let sa = a.outbound(at(0)).unwrap();
        let ct = seal(sa, iv(sa, 1), b"hello group");
        for (j, b) in ms.iter().enumerate() {
            if i != j {
                let r = b.inbound(sa.spi, at(0)).unwrap();
                assert_eq!(open(r, sa.spi, iv(sa, 1), &ct).unwrap(), b"hello group");
            }
        }
    }
}

#[test]
fn registration_refusals() {
    let cfg = config(2, 8);
    let mut g = Gcks::new(cfg.clone(), at(0)).unwrap();
    let m = Member::new(cfg.group.clone(), true);
    // Not a member of the group.
    let stranger = Id::from_text("intruder.test");
    assert_eq!(
        g.register(at(0), &stranger, &ike_kek(0), &m.registration_request()),
        Err(notify::AUTHORIZATION_FAILED)
    );
    // Another group.
    let other = Member::new(Id::from_text("other.group"), true);
    assert_eq!(
        g.register(
            at(0),
            &ids(1)[0],
            &ike_kek(0),
            &other.registration_request()
        ),
        Err(notify::INVALID_GROUP_ID)
    );
    // A response read with another IKE SA's KEK does not unwrap.
    let resp = g
        .register(at(0), &ids(1)[0], &ike_kek(0), &m.registration_request())
        .unwrap();
    let mut m2 = Member::new(cfg.group.clone(), true);
    assert!(matches!(
        m2.on_registration(at(0), &ike_kek(5), &resp),
        Err(RekeyError::Key(_))
    ));
    assert_eq!(g.stats().refused, 2);
}

/// Rekeys under traffic: every member sends every 100 ms; each member gets the GSA_REKEY at
/// its own moment (spread over 3 s, below the 5 s ATD). Every packet must find its SA at every
/// receiver: lost = 0; everyone moves to the new SA, and drops the old after the DTD.
#[test]
fn rekey_under_traffic_loses_nothing() {
    let (mut g, mut ms) = group(4, 8);
    let first = g.current_spi().unwrap();
    let mut queue: Vec<(Instant, usize, Vec<u8>)> = Vec::new();
    let mut counters = [0u64; 4];
    let (mut sent, mut lost, mut rekeys_seen) = (0u64, 0u64, 0u64);
    let mut spis_used = std::collections::BTreeSet::new();
    for step in 0..14_000u64 {
        let now = at(step * 100);
        for o in g.poll(now) {
            let i = index_of(&o.to);
            queue.push((
                now.saturating_add(Duration::from_millis(1000 * i as u64)),
                i,
                o.msg.to_vec(),
            ));
        }
        queue.sort_by_key(|q| q.0);
        while queue.first().is_some_and(|q| q.0 <= now) {
            let (_, i, msg) = queue.remove(0);
            ms[i].on_rekey(now, &msg).unwrap();
            rekeys_seen += 1;
        }
        for m in ms.iter_mut() {
            m.poll(now);
        }
        for (i, a) in ms.iter().enumerate() {
            let sa = a
                .outbound(now)
                .expect("a member always has an SA to send on");
            spis_used.insert(sa.spi);
            counters[i] += 1;
            let v = iv(sa, counters[i]);
            let ct = seal(sa, v, &step.to_be_bytes());
            for (j, b) in ms.iter().enumerate() {
                if i == j {
                    continue;
                }
                sent += 1;
                match b.inbound(sa.spi, now).and_then(|r| open(r, sa.spi, v, &ct)) {
                    Some(p) if p == step.to_be_bytes() => {}
                    _ => lost += 1,
                }
            }
        }
    }
    // 1400 s: rekeys at 540 s and 1080 s.
    assert_eq!(g.stats().rekeys, 2);
    assert_eq!(rekeys_seen, 8);
    assert_eq!(lost, 0, "sent {sent}");
    assert_eq!(spis_used.len(), 3);
    assert!(spis_used.contains(&first));
    // Old SAs dropped after the DTD: each member holds the newest only.
    for m in &ms {
        assert_eq!(m.sas().len(), 1);
        assert_eq!(m.sas()[0].spi, g.current_spi().unwrap());
    }
}

/// The new SA is used only after the ATD, the old one kept until the DTD.
#[test]
fn activation_and_deactivation_delays() {
    let (mut g, mut ms) = group(2, 8);
    let old = g.current_spi().unwrap();
    let out = g.rekey(at(10_000), false);
    let new = g.current_spi().unwrap();
    assert_ne!(old, new);
    for o in out {
        ms[index_of(&o.to)].on_rekey(at(10_000), &o.msg).unwrap();
    }
    let m = &mut ms[0];
    assert_eq!(m.outbound(at(14_999)).unwrap().spi, old);
    assert!(
        m.inbound(new, at(10_000)).is_some(),
        "new SA receives at once"
    );
    assert_eq!(m.outbound(at(15_000)).unwrap().spi, new);
    m.poll(at(39_999));
    assert!(
        m.inbound(old, at(39_999)).is_some(),
        "old SA kept until the DTD"
    );
    m.poll(at(40_000));
    assert!(m.inbound(old, at(40_000)).is_none());
}

#[test]
fn replayed_or_forged_rekey_is_refused() {
    let (mut g, mut ms) = group(2, 8);
    let first = g.rekey(at(1_000), false);
    let second = g.rekey(at(2_000), false);
    let (a1, a2) = (
        first
            .iter()
            .find(|o| index_of(&o.to) == 0)
            .unwrap()
            .msg
            .clone(),
        second
            .iter()
            .find(|o| index_of(&o.to) == 0)
            .unwrap()
            .msg
            .clone(),
    );
    ms[0].on_rekey(at(1_000), &a1).unwrap();
    assert!(matches!(
        ms[0].on_rekey(at(1_100), &a1),
        Err(RekeyError::Replay { got: 1, last: 1 })
    ));
    ms[0].on_rekey(at(2_000), &a2).unwrap();
    assert!(matches!(
        ms[0].on_rekey(at(2_100), &a1),
        Err(RekeyError::Replay { .. })
    ));
    // One bit changed: the integrity check fails, and the message id moves nothing.
    let third = g.rekey(at(3_000), false);
    let a3 = third
        .iter()
        .find(|o| index_of(&o.to) == 0)
        .unwrap()
        .msg
        .clone();
    let mut bad = a3.to_vec();
    let n = bad.len();
    bad[n - 20] ^= 1;
    assert_eq!(ms[0].on_rekey(at(3_000), &bad), Err(RekeyError::Integrity));
    ms[0].on_rekey(at(3_000), &a3).unwrap();
    // A rekey is one message for every member (keys under the Rekey SA's GSK_w).
    let fourth = g.rekey(at(4_000), false);
    let b4 = fourth
        .iter()
        .find(|o| index_of(&o.to) == 1)
        .unwrap()
        .msg
        .clone();
    let a4 = fourth
        .iter()
        .find(|o| index_of(&o.to) == 0)
        .unwrap()
        .msg
        .clone();
    assert_eq!(a4, b4);
    ms[0].on_rekey(at(4_000), &a4).unwrap();
    ms[1].on_rekey(at(4_000), &b4).unwrap();
    // Garbage never panics.
    for n in 0..a3.len() {
        let _ = ms[1].on_rekey(at(3_000), &a3[..n]);
    }
    assert_eq!(ms[0].stats().replays, 2);
}

/// A removed member gets no copy of the rekey, cannot read another member's copy's keys,
/// cannot open packets sealed on the new SA, and cannot read later rekeys (new Rekey SA).
#[test]
fn removed_member_is_locked_out() {
    let (mut g, mut ms) = group(4, 8);
    let gone = ids(4)[3].clone();
    let out: Vec<Outbound> = g.remove_member(at(1_000), &gone);
    // Two messages to each of the 3 others: the new Rekey SA (under the old one, its key
    // wrapped under each member's own KWK), then the new Data-Security SA under the new one.
    assert_eq!(out.len(), 6);
    assert!(out.iter().all(|o| o.to != gone));
    for o in &out {
        ms[index_of(&o.to)].on_rekey(at(1_000), &o.msg).unwrap();
    }
    // The removed member sniffs them: the first opens (old Rekey SA) but no SA_KEY in it is
    // wrapped under a key it holds; the second is under a Rekey SA it does not know.
    assert_eq!(
        ms[3].on_rekey(at(1_000), &out[0].msg),
        Err(RekeyError::NoKey)
    );
    assert_eq!(
        ms[3].on_rekey(at(1_000), &out[1].msg),
        Err(RekeyError::UnknownSpi)
    );
    let now = at(7_000);
    let sa = ms[0].outbound(now).unwrap();
    assert_eq!(sa.spi, g.current_spi().unwrap());
    let ct = seal(sa, iv(sa, 1), b"after removal");
    assert!(ms[1]
        .inbound(sa.spi, now)
        .and_then(|r| open(r, sa.spi, iv(sa, 1), &ct))
        .is_some());
    assert!(ms[3].inbound(sa.spi, now).is_none());
    for k in ms[3].sas() {
        assert!(open(k, sa.spi, iv(sa, 1), &ct).is_none());
    }
    // The next rekey goes under the new Rekey SA: the removed member does not know it.
    let later = g.rekey(at(60_000), false);
    assert_eq!(later.len(), 3);
    for o in &later {
        ms[index_of(&o.to)].on_rekey(at(60_000), &o.msg).unwrap();
    }
    assert_eq!(
        ms[3].on_rekey(at(60_000), &later[0].msg),
        Err(RekeyError::UnknownSpi)
    );
    // It cannot register again.
    assert_eq!(
        g.register(
            at(60_000),
            &gone,
            &ike_kek(3),
            &ms[3].registration_request()
        ),
        Err(notify::AUTHORIZATION_FAILED)
    );
}

/// Two Sender-ID bits: four Sender-IDs. RFC 9838 section 2.5.1: one counter, a new value
/// for every registration of a sender, never given again. The fifth sender is refused, and
/// stays refused after a removal and its rekey (the removed member's ID is not reused); a
/// member keeps its ID across rekeys (section 2.5.2) and no ID is held by two members.
#[test]
fn sender_id_exhaustion() {
    let cfg = config(5, 2);
    let mut g = Gcks::new(cfg.clone(), at(0)).unwrap();
    let mut ms: Vec<Member> = (0..5)
        .map(|_| Member::new(cfg.group.clone(), true))
        .collect();
    for (i, m) in ms.iter_mut().take(4).enumerate() {
        register(&mut g, m, i, at(0)).unwrap();
    }
    let first: Vec<u32> = ms[..4]
        .iter()
        .map(|m| m.sas()[0].sender_id.unwrap())
        .collect();
    assert_eq!(first, [0, 1, 2, 3]);
    let req = ms[4].registration_request();
    assert_eq!(
        g.register(at(0), &ids(5)[4], &ike_kek(4), &req),
        Err(notify::REGISTRATION_FAILED)
    );
    assert_eq!(g.stats().sender_id_exhausted, 1);
    let out = g.remove_member(at(1_000), &ids(5)[1]);
    for o in &out {
        ms[index_of(&o.to)].on_rekey(at(1_000), &o.msg).unwrap();
    }
    assert_eq!(
        g.register(at(1_000), &ids(5)[4], &ike_kek(4), &req),
        Err(notify::REGISTRATION_FAILED)
    );
    assert_eq!(g.stats().sender_id_exhausted, 2);
    // Each remaining member sends on the new SA with the ID of its registration.
    let spi = g.current_spi().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for i in [0usize, 2, 3] {
        let sa = ms[i].sas().iter().find(|s| s.spi == spi).unwrap();
        assert_eq!(sa.sender_id, Some(first[i]));
        assert!(seen.insert(sa.sender_id.unwrap()), "Sender-ID given twice");
    }
    assert_eq!(g.sender_ids().len(), 3);
}

/// RFC 9838 2.5.1 and 2.4.3: when the Sender-ID counter runs out the GCKS starts the group
/// over. Two bits: three senders take IDs 0-2, a re-registration takes 3, the next one is
/// refused; the next poll excludes every member (Delete of the Rekey SA, SPI zero), they
/// register again under a new SA with IDs from 0, and traffic flows on it. A member keeps
/// receiving on the old SA until the DTD ends.
#[test]
fn sender_id_exhaustion_restarts_the_group() {
    let cfg = config(3, 2);
    let mut g = Gcks::new(cfg.clone(), at(0)).unwrap();
    let mut ms: Vec<Member> = (0..3)
        .map(|_| Member::new(cfg.group.clone(), true))
        .collect();
    for (i, m) in ms.iter_mut().enumerate() {
        register(&mut g, m, i, at(0)).unwrap();
    }
    let old_spi = g.current_spi().unwrap();
    register(&mut g, &mut ms[0], 0, at(10)).unwrap();
    assert_eq!(ms[0].sas()[0].sender_id, Some(3));
    let req = ms[1].registration_request();
    assert_eq!(
        g.register(at(20), &ids(3)[1], &ike_kek(1), &req),
        Err(notify::REGISTRATION_FAILED)
    );
    let out = g.poll(at(20));
    assert_eq!(out.len(), 3);
    assert_eq!(g.stats().restarts, 1);
    for o in &out {
        let m = &mut ms[index_of(&o.to)];
        assert!(!m.must_register());
        m.on_rekey(at(30), &o.msg).unwrap();
        assert!(m.must_register());
        assert_eq!(m.stats().excluded, 1);
    }
    // Member 2 has not registered again yet: member 0 (re-registered) still opens what it
    // seals on the old SA until the DTD.
    register(&mut g, &mut ms[0], 0, at(1_000)).unwrap();
    let new_spi = g.current_spi().unwrap();
    assert_ne!(new_spi, old_spi);
    let old = ms[2].outbound(at(1_000)).unwrap();
    assert_eq!(old.spi, old_spi);
    let ct = seal(old, iv(old, 7), b"still on the old SA");
    assert!(ms[0]
        .inbound(old_spi, at(1_000))
        .and_then(|r| open(r, old_spi, iv(old, 7), &ct))
        .is_some());
    register(&mut g, &mut ms[1], 1, at(1_100)).unwrap();
    register(&mut g, &mut ms[2], 2, at(1_200)).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for m in &ms {
        let sa = m.outbound(at(1_300)).unwrap();
        assert_eq!(sa.spi, new_spi);
        assert!(sa.sender_id.unwrap() < 4);
        assert!(seen.insert(sa.sender_id.unwrap()), "Sender-ID given twice");
    }
    let sa = ms[1].outbound(at(1_300)).unwrap();
    let ct = seal(sa, iv(sa, 1), b"on the new SA");
    assert!(ms[2]
        .inbound(new_spi, at(1_300))
        .and_then(|r| open(r, new_spi, iv(sa, 1), &ct))
        .is_some());
    // The old SA goes after the DTD.
    let after = at(30)
        .saturating_add(cfg.dtd)
        .saturating_add(Duration::from_millis(1));
    for m in &mut ms {
        m.poll(after);
        assert!(m.inbound(old_spi, after).is_none());
    }
}

/// GSA_REGISTRATION over an IKE SA the crate's own IKE_SA_INIT and IKE_AUTH (pre-shared key)
/// brought up: the request and the response are sealed with that IKE SA's SK_e keys, and the
/// keys in KD wrapped under the default KEK both ends derive from its SK_d. The Endpoint does
/// not dispatch exchange 40 itself yet: the test takes each side's IKE SA as a record (an
/// adopter's view) and seals in the record's next IV epoch, as an adopter does (`record`), so
/// no IV of the Endpoint's own messages is used again.
#[test]
fn registration_over_a_real_ike_sa() {
    use crate::crypto::{SkCipher, SK_IV_EPOCH_SHIFT};
    use crate::group::rekey::{open_message, seal_message};
    use crate::group::wire::exchange;
    use crate::record::IkeSaRecord;
    use crate::tests::{client_cfg, gateway_cfg, Pair};
    use crate::wire::{FLAG_INITIATOR, FLAG_RESPONSE};

    let mut p = Pair::new(client_cfg(), gateway_cfg());
    p.connect();
    p.drive();
    let now = p.now();
    let rec = |ep: &mut crate::Endpoint| -> IkeSaRecord {
        let id = ep.list()[0].0;
        ep.export(now, id).unwrap()
    };
    let (c, gw) = (rec(p.client()), rec(p.gw()));
    let adopt = |key: &[u8], r: &IkeSaRecord| {
        let mut s = SkCipher::new(key).unwrap();
        let epoch = (r.iv_next >> SK_IV_EPOCH_SHIFT) + 1;
        s.set_iv_window(
            epoch << SK_IV_EPOCH_SHIFT | 1,
            (epoch + 1) << SK_IV_EPOCH_SHIFT,
        );
        s
    };
    // Initiator -> responder under SK_ei; back under SK_er.
    let (mut c_out, c_in) = (adopt(&c.keys.sk_ei, &c), adopt(&c.keys.sk_er, &c));
    let (mut g_out, g_in) = (adopt(&gw.keys.sk_er, &gw), adopt(&gw.keys.sk_ei, &gw));
    let spis = (c.spi_i.0, c.spi_r.0);

    let mut cfg = config(1, 8);
    cfg.members = vec![c.local_id.clone()];
    let mut gcks = Gcks::new(cfg.clone(), now).unwrap();
    let mut m = Member::new(cfg.group.clone(), true);

    let req = seal_message(
        spis,
        exchange::GSA_REGISTRATION,
        FLAG_INITIATOR,
        c.next_request_id,
        &mut c_out,
        &m.registration_request(),
    );
    let (h, inner) = open_message(&req, &g_in).unwrap();
    assert_eq!(h.exchange, exchange::GSA_REGISTRATION);
    // The GCKS knows the member by the identity the IKE SA authenticated.
    assert_eq!(gw.remote_id, c.local_id);
    let gw_kek = Kek::from_ike_sa(gw.prop.prf, &gw.keys.sk_d);
    let answer = gcks.register(now, &gw.remote_id, &gw_kek, &inner).unwrap();
    let resp = seal_message(
        spis,
        exchange::GSA_REGISTRATION,
        FLAG_RESPONSE,
        h.message_id,
        &mut g_out,
        &answer,
    );
    let (_, inner) = open_message(&resp, &c_in).unwrap();
    let c_kek = Kek::from_ike_sa(c.prop.prf, &c.keys.sk_d);
    m.on_registration(now, &c_kek, &inner).unwrap();
    let sa = m.outbound(now).unwrap();
    assert_eq!(Some(sa.spi), gcks.current_spi());
    assert_eq!(sa.sender_id, Some(0));
    // The response does not open under the direction it was not sealed for.
    assert_eq!(
        open_message(&resp, &g_in).unwrap_err(),
        RekeyError::Integrity
    );
}

/// The lab export (`roamgate gcks --wireshark-keys`) gives exactly the keys the members got,
/// by SPI: a capture decoded with it checks the members' ESP, not the export.
#[test]
fn exported_keys_are_the_members_keys() {
    let (mut g, mut ms) = group(2, 8);
    let first = g.current_spi().unwrap();
    let out = g.rekey(at(1000), false);
    for o in &out {
        let i = index_of(&o.to);
        ms[i].on_rekey(at(1000), &o.msg).unwrap();
    }
    let exported = g.export_data_keys();
    assert_eq!(exported.len(), 2, "both live generations");
    assert!(exported.iter().any(|(s, _)| *s == first));
    for (spi, km) in &exported {
        let sa = ms[0].inbound(*spi, at(1000)).unwrap();
        assert_eq!(km.as_slice(), sa.keymat.as_slice(), "{spi:#x}");
    }
}
