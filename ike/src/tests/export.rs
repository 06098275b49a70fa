//! Export and adoption: an IKE SA moved mid-life from one endpoint to another carries on with
//! the same peer (CHILD_SA rekeys, MOBIKE, an IKE SA rekey, a delete, each side starting some);
//! the record's byte form, its refusals, its redaction; IVs never repeat across the move.

use std::collections::HashMap;

use super::*;
use crate::endpoint::{AdoptError, ExportError, Footprint};
use crate::ids::IkeSpi;
use crate::record::{IkeSaRecord, RecordError};
use crate::services::{AddressPool, LocalPool, Services};
use crate::wire::{payload, Header};

/// The other node of a pair.
fn other(i: usize) -> usize {
    1 - i
}

/// The moving side's connection rekeys its CHILD_SAs on a timer (the adopter must re-arm it).
const CHILD_REKEY: Duration = Duration::from_secs(600);

fn configs(mover: usize) -> (PeerConfig, PeerConfig) {
    let (mut c, mut g) = (client_cfg(), gateway_cfg());
    if mover == GW {
        g.child_rekey = Some(CHILD_REKEY);
    } else {
        c.child_rekey = Some(CHILD_REKEY);
    }
    (c, g)
}

/// Up, then a CHILD_SA rekey started by the client: (pair, the IKE SA's id on each node).
fn mid_life(c: PeerConfig, g: PeerConfig) -> (Pair, [IkeSaId; 2]) {
    let mut p = Pair::new(c, g);
    let cid = p.connect();
    p.drive();
    let gid = ike_up(p.gw_events()).unwrap();
    let first = children(p.client_events())[0].clone();
    p.clear_events();
    let now = p.now();
    p.client().rekey_child(now, cid, first.inbound.spi).unwrap();
    p.drive();
    assert_eq!(children(p.gw_events()).len(), 1, "rekeyed before the move");
    assert_eq!(child_downs(p.gw_events()), 1);
    p.clear_events();
    (p, [cid, gid])
}

/// The inbound SPI of node `i`'s only CHILD_SA of IKE SA `ike`.
fn child_in(p: &mut Pair, i: usize, ike: IkeSaId) -> ChildSpi {
    let l = p.net.ep(i).list();
    let sa = l.iter().find(|s| s.0 == ike).unwrap();
    assert_eq!(sa.3.len(), 1, "{sa:?}");
    sa.3[0].0
}

/// The only IKE SA node `i` holds.
fn only_sa(p: &mut Pair, i: usize) -> IkeSaId {
    let l = p.net.ep(i).list();
    assert_eq!(l.len(), 1, "{l:?}");
    l[0].0
}

/// Node `mover`'s endpoint is replaced by a new one with configuration `cfg` that adopts
/// `record` (the old endpoint is dropped).
fn replace_and_adopt(p: &mut Pair, mover: usize, cfg: PeerConfig, record: &IkeSaRecord) {
    p.net.nodes[mover].endpoint = endpoint(cfg, 77);
    let now = p.now();
    assert_eq!(p.net.ep(mover).adopt(now, record), Ok(record.id()));
}

/// The 8-byte IV of every encrypted message node `from` sent on the IKE SA with these SPIs,
/// with the message: an IV must never stand for two different messages.
fn ivs(p: &Pair, from: usize, spis: (IkeSpi, IkeSpi)) -> Vec<(u64, Vec<u8>)> {
    p.net
        .log
        .iter()
        .filter(|d| d.from == from)
        .filter_map(|d| {
            let h = Header::parse(&d.data).ok()?;
            if (IkeSpi(h.spi_i), IkeSpi(h.spi_r)) != spis || h.next_payload != payload::SK {
                return None;
            }
            let iv = u64::from_be_bytes(d.data.get(32..40)?.try_into().ok()?);
            Some((iv, d.data.clone()))
        })
        .collect()
}

fn assert_no_iv_reuse(v: &[(u64, Vec<u8>)]) {
    let mut seen: HashMap<u64, &Vec<u8>> = HashMap::new();
    for (iv, m) in v {
        if let Some(prev) = seen.insert(*iv, m) {
            assert_eq!(prev, m, "IV {iv:#x} sealed two different messages");
        }
    }
}

/// The test: the gateway's (then the client's) IKE SA is exported mid-life, its
/// endpoint dropped, and a new endpoint adopts the record (through its byte form). With the
/// same peer it carries on through a CHILD_SA rekey started by the peer, one started by its
/// own re-armed timer, a MOBIKE update, an IKE SA rekey, a CHILD_SA rekey over the new IKE SA
/// and a delete; the peer sees nothing wrong (no drop of any kind on either side).
#[test]
fn an_adopted_ike_sa_carries_on_with_the_same_peer() {
    for mover in [GW, CLIENT] {
        let peer = other(mover);
        let (c, g) = configs(mover);
        let (mut p, ids) = mid_life(c.clone(), g.clone());
        let now = p.now();
        let record = p.net.ep(mover).export(now, ids[mover]).unwrap();
        let bytes = record.to_bytes().unwrap();
        let decoded = IkeSaRecord::from_bytes(&bytes).unwrap();
        assert_eq!(decoded, record, "the byte form round-trips");
        assert_eq!(decoded.to_bytes().unwrap().as_slice(), bytes.as_slice());
        let spis = (record.spi_i, record.spi_r);
        let before = ivs(&p, mover, spis);
        replace_and_adopt(&mut p, mover, if mover == GW { g } else { c }, &decoded);
        drop(record);
        let fp = p.net.ep(mover).footprint();
        assert_eq!(
            (fp.ike_sas, fp.child_sas, fp.inbound_spis, fp.leases),
            (1, 1, 1, usize::from(mover == GW)),
            "mover={mover}: the adopter holds the IKE SA, its CHILD_SA's SPI and the lease"
        );
        if mover == GW {
            assert_eq!(p.gw().leases(), [("10.99.0.1".parse().unwrap(), ids[GW])]);
        }

        // 1. The peer rekeys the CHILD_SA: the adopter answers with the next message id, and
        //    the new keys are the peer's (derived from the adopted SK_d).
        let now = p.now();
        let spi = child_in(&mut p, peer, ids[peer]);
        p.net.ep(peer).rekey_child(now, ids[peer], spi).unwrap();
        p.drive();
        let (cc, gc) = (children(p.client_events()), children(p.gw_events()));
        assert_eq!((cc.len(), gc.len()), (1, 1), "mover={mover}");
        assert_keys_pair(&cc[0], &gc[0]);
        assert!(!children(&p.net.nodes[mover].events)[0].initiated_here);

        // 2. The adopter's re-armed timer rekeys the new CHILD_SA.
        p.clear_events();
        p.net.run_for(CHILD_REKEY + Duration::from_secs(1));
        let (cc, gc) = (children(p.client_events()), children(p.gw_events()));
        assert_eq!((cc.len(), gc.len()), (1, 1), "mover={mover}: timer rekey");
        assert_keys_pair(&cc[0], &gc[0]);
        assert!(children(&p.net.nodes[mover].events)[0].initiated_here);

        // 3. MOBIKE: the client moves (the adopter is the mobile end or answers it).
        p.clear_events();
        p.roam_to(ids[CLIENT], "192.0.2.77", "192.0.2.77:500");
        p.drive();
        assert_eq!(moves(p.client_events()).len(), 1, "mover={mover}");
        assert_eq!(
            moves(p.gw_events()),
            [(
                "192.0.2.1:4500".parse().unwrap(),
                "192.0.2.77:4500".parse().unwrap(),
                true,
                1
            )],
            "mover={mover}"
        );

        // 4. The IKE SA is rekeyed: by the adopter when it is the gateway, else by the peer.
        p.clear_events();
        let rekeyer = if mover == GW { mover } else { peer };
        let now = p.now();
        p.net.ep(rekeyer).rekey_ike(now, ids[rekeyer]).unwrap();
        p.drive();
        for side in [CLIENT, GW] {
            let ev = &p.net.nodes[side].events;
            assert!(
                ev.iter().any(|e| matches!(e, Event::IkeRekeyed { .. })),
                "mover={mover} side={side}: {ev:?}"
            );
            assert_eq!(child_downs(ev), 0);
        }
        let new = [only_sa(&mut p, CLIENT), only_sa(&mut p, GW)];
        assert_ne!(new[mover], ids[mover]);

        // 5. A CHILD_SA rekey over the new IKE SA, by the adopter.
        p.clear_events();
        let now = p.now();
        let spi = child_in(&mut p, mover, new[mover]);
        p.net.ep(mover).rekey_child(now, new[mover], spi).unwrap();
        p.drive();
        let (cc, gc) = (children(p.client_events()), children(p.gw_events()));
        assert_eq!((cc.len(), gc.len()), (1, 1), "mover={mover}");
        assert_keys_pair(&cc[0], &gc[0]);

        // 6. The delete: by the peer when the adopter is the gateway, else by the adopter.
        p.clear_events();
        let deleter = if mover == GW { peer } else { mover };
        let now = p.now();
        p.net.ep(deleter).delete_ike(now, new[deleter]).unwrap();
        p.drive();
        for side in [CLIENT, GW] {
            assert_eq!(downs(&p.net.nodes[side].events).len(), 1, "side={side}");
            assert!(p.net.ep(side).list().is_empty());
        }
        assert_eq!(
            p.net.ep(mover).footprint(),
            Footprint::default(),
            "mover={mover}: every reservation of the adoption went back"
        );
        for side in [CLIENT, GW] {
            assert_eq!(
                p.net.ep(side).stats().total(),
                0,
                "mover={mover} side={side}"
            );
        }

        // No IV of the adopted IKE SA sealed two messages; the adopter's are in epoch 1.
        let all = ivs(&p, mover, spis);
        assert_no_iv_reuse(&all);
        let after: Vec<_> = all.iter().skip(before.len()).collect();
        assert!(!after.is_empty());
        assert!(
            after.iter().all(|(iv, _)| iv >> 48 == 1),
            "mover={mover}: {:x?}",
            after.iter().map(|x| x.0).collect::<Vec<_>>()
        );
    }
}

/// A record taken before the exporter sent one more message (a persisted snapshot, then a
/// crash): the adopter's messages never use an IV the exporter used after the snapshot.
#[test]
fn a_stale_record_never_leads_to_an_iv_the_exporter_used() {
    let (c, g) = configs(GW);
    let (mut p, ids) = mid_life(c, g.clone());
    let now = p.now();
    let record = p.gw().export(now, ids[GW]).unwrap();
    let spis = (record.spi_i, record.spi_r);
    // After the snapshot the exporter answers a request of the peer's (a further CHILD_SA).
    p.client().create_child(now, ids[CLIENT]).unwrap();
    p.drive();
    assert_eq!(children(p.gw_events()).len(), 1);
    let exporters = ivs(&p, GW, spis);
    let late = exporters.last().unwrap().0;
    assert!(late >= record.iv_next, "sealed after the snapshot");
    replace_and_adopt(&mut p, GW, g, &record);
    // The adopter starts a request of its own (its next message id is still right: the
    // exporter only answered).
    let now = p.now();
    let spi = record.children[0].spi_in;
    p.gw().rekey_child(now, ids[GW], spi).unwrap();
    p.drive();
    assert_eq!(
        children(p.client_events()).len(),
        2,
        "the peer took the rekey"
    );
    let all = ivs(&p, GW, spis);
    assert!(all.len() > exporters.len());
    assert_no_iv_reuse(&all);
}

/// The peer's last request arrives again after the move: the adopter answers with the
/// exporter's response, byte for byte, and processes nothing twice.
#[test]
fn a_retransmitted_last_request_gets_the_exporters_response() {
    let (mut p, ids) = mid_life(client_cfg(), gateway_cfg());
    let last_req = p.to_gw().last().unwrap().clone();
    let last_resp = p
        .net
        .log
        .iter()
        .rfind(|d| d.from == GW)
        .unwrap()
        .data
        .clone();
    let now = p.now();
    let record = p.gw().export(now, ids[GW]).unwrap();
    assert_eq!(record.last_response.as_ref().unwrap().1, last_resp);
    replace_and_adopt(&mut p, GW, gateway_cfg(), &record);
    let local = p.gw_addr();
    let now = p.now();
    p.gw().handle(now, local, last_req.src, &last_req.data);
    let t = p.gw().poll_transmit().unwrap();
    assert_eq!(t.data, last_resp);
    assert_eq!(t.dst, last_req.src);
    assert!(p.gw().poll_transmit().is_none());
    assert!(p.gw().poll_event().is_none(), "nothing processed twice");
    assert_eq!(p.gw().stats().total(), 0);
}

#[test]
fn export_refuses_work_under_way_and_unknown_ike_sas() {
    let (mut p, ids) = mid_life(client_cfg(), gateway_cfg());
    let now = p.now();
    let spi = child_in(&mut p, CLIENT, ids[CLIENT]);
    p.client().rekey_child(now, ids[CLIENT], spi).unwrap();
    assert_eq!(
        p.client().export(now, ids[CLIENT]).unwrap_err(),
        ExportError::Busy
    );
    p.drive();
    assert!(p.client().export(now, ids[CLIENT]).is_ok(), "quiet again");
    assert_eq!(
        p.client().export(now, ids[GW]).unwrap_err(),
        ExportError::NoSuchSa
    );
}

/// A durable copy taken while our request is in flight: its next message id is already past
/// the request, and an adopter's next request goes under that id (a skip, never a repeat).
#[test]
fn a_durable_export_with_a_request_in_flight_reserves_its_message_id() {
    let (mut p, ids) = mid_life(client_cfg(), gateway_cfg());
    let now = p.now();
    let quiet = p.gw().export(now, ids[GW]).unwrap();
    assert_eq!(p.gw().export_durable(now, ids[GW]).unwrap(), quiet);
    let spi = child_in(&mut p, GW, ids[GW]);
    p.gw().rekey_child(now, ids[GW], spi).unwrap();
    assert_eq!(p.gw().export(now, ids[GW]).unwrap_err(), ExportError::Busy);
    let record = p.gw().export_durable(now, ids[GW]).unwrap();
    assert_eq!(record.next_request_id, quiet.next_request_id + 1);
    assert_eq!(record.peer_next_id, quiet.peer_next_id);
    let sent = p.gw().poll_transmit().unwrap();
    let h = Header::parse(&sent.data).unwrap();
    assert_eq!(h.message_id, quiet.next_request_id, "the request in flight");
    replace_and_adopt(&mut p, GW, gateway_cfg(), &record);
    let now = p.now();
    p.gw().rekey_child(now, ids[GW], spi).unwrap();
    let t = p.gw().poll_transmit().unwrap();
    assert_eq!(
        Header::parse(&t.data).unwrap().message_id,
        record.next_request_id,
        "the adopter skips the id in flight"
    );
}

/// Each of the adopter's services refuses what it holds already, and a refused adoption
/// leaves no reservation behind.
#[test]
fn adoption_refuses_spis_and_leases_held_here_and_reserves_nothing() {
    let (mut p, ids) = mid_life(client_cfg(), gateway_cfg());
    let now = p.now();
    let record = p.gw().export(now, ids[GW]).unwrap();
    let child = record.children[0].spi_in;

    // The same record twice: the IKE SPI is in use.
    let mut b = endpoint(gateway_cfg(), 9);
    assert_eq!(b.adopt(now, &record), Ok(record.id()));
    let held = b.footprint();
    assert_eq!(
        b.adopt(now, &record),
        Err(AdoptError::IkeSpiInUse(record.id().0))
    );
    assert_eq!(b.footprint(), held);

    // A CHILD_SA SPI this endpoint handed out already.
    let mut s = Services::default();
    assert!(s.spis.claim_child(child));
    let mut b = Endpoint::with_services(
        EndpointConfig {
            peers: vec![gateway_cfg()],
            ..Default::default()
        },
        [9; 32],
        s,
    );
    assert_eq!(b.adopt(now, &record), Err(AdoptError::ChildSpiInUse(child)));
    assert_eq!(b.services().spis.in_use(), (0, 1), "only the earlier claim");
    assert!(b.list().is_empty());

    // The virtual IP is leased to another IKE SA here.
    let mut pool = LocalPool::default();
    let vip = pool
        .lease(gateway_cfg().pool.as_ref().unwrap(), IkeSaId(IkeSpi(5)))
        .unwrap();
    assert_eq!(record.virtual_ip, Some(IpAddr::V4(vip)));
    let mut b = Endpoint::with_services(
        EndpointConfig {
            peers: vec![gateway_cfg()],
            ..Default::default()
        },
        [9; 32],
        Services {
            pool: Box::new(pool),
            ..Services::default()
        },
    );
    assert_eq!(
        b.adopt(now, &record),
        Err(AdoptError::LeaseUnavailable(IpAddr::V4(vip)))
    );
    assert_eq!(b.services().spis.in_use(), (0, 0));
    assert_eq!(b.leases().len(), 1);

    // No such connection, or one with another identity.
    let mut other_name = gateway_cfg();
    other_name.name = "site".into();
    assert_eq!(
        endpoint(other_name, 9).adopt(now, &record),
        Err(AdoptError::UnknownConnection("rw".into()))
    );
    let mut other_id = gateway_cfg();
    other_id.local_id = Id::from_text("other.roamgate.test");
    assert_eq!(
        endpoint(other_id, 9).adopt(now, &record),
        Err(AdoptError::IdentityMismatch)
    );
}

/// SHA-256 over a record's content, as the codec appends it.
fn resum(content: &[u8]) -> Vec<u8> {
    let mut v = content.to_vec();
    v.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, content).as_ref());
    v
}

#[test]
fn corrupted_truncated_or_unknown_records_are_refused() {
    let (mut p, ids) = mid_life(client_cfg(), gateway_cfg());
    let now = p.now();
    let record = p.gw().export(now, ids[GW]).unwrap();
    let bytes = record.to_bytes().unwrap().to_vec();
    for n in 0..bytes.len() {
        assert!(
            IkeSaRecord::from_bytes(&bytes[..n]).is_err(),
            "truncated to {n}"
        );
    }
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut b = bytes.clone();
            b[i] ^= bit;
            assert!(
                IkeSaRecord::from_bytes(&b).is_err(),
                "byte {i} bit {bit:#x}"
            );
        }
    }
    let content = &bytes[..bytes.len() - 32];
    let mut v6 = content.to_vec();
    v6[5] = 6;
    assert_eq!(
        IkeSaRecord::from_bytes(&resum(&v6)),
        Err(RecordError::UnknownVersion(6))
    );
    // Version 4 (no per-core flag) reads as the same record, but not with the flag set.
    assert!(!record.per_core);
    let mut v4 = content.to_vec();
    v4[5] = 4;
    assert_eq!(IkeSaRecord::from_bytes(&resum(&v4)), Ok(record.clone()));
    v4[6] |= 0x02; // FLAG_PER_CORE (512), the flags' high byte
    assert_eq!(
        IkeSaRecord::from_bytes(&resum(&v4)),
        Err(RecordError::Invalid("flags"))
    );
    let mut pc = record.clone();
    pc.per_core = true;
    assert_eq!(
        IkeSaRecord::from_bytes(&pc.to_bytes().unwrap()),
        Ok(pc.clone())
    );
    // Versions 2 (one byte of flags) and 3 (no EAP identity: the last byte here, none)
    // still read, as the same record.
    assert!(!record.redirect, "version 2 cannot carry the redirect flag");
    assert_eq!(record.eap_identity, None);
    assert_eq!(content[content.len() - 1], 0, "no EAP identity");
    let without_eap = &content[..content.len() - 1];
    let mut v3 = without_eap.to_vec();
    v3[5] = 3;
    assert_eq!(IkeSaRecord::from_bytes(&resum(&v3)), Ok(record.clone()));
    let mut older = content[..6].to_vec();
    older[5] = 2;
    assert_eq!(content[6], 0, "flags past the first byte");
    older.extend_from_slice(&without_eap[7..]);
    assert_eq!(IkeSaRecord::from_bytes(&resum(&older)), Ok(record.clone()));
    let mut magic = content.to_vec();
    magic[0] = b'X';
    assert_eq!(
        IkeSaRecord::from_bytes(&resum(&magic)),
        Err(RecordError::BadMagic)
    );
    let mut trailing = content.to_vec();
    trailing.push(0);
    assert_eq!(
        IkeSaRecord::from_bytes(&resum(&trailing)),
        Err(RecordError::TrailingBytes)
    );
    // Well-formed bytes of an invalid record: a 256-bit proposal with 128-bit keys (the
    // proposal is AES-GCM 128, PRF 5, DH 31, not CBC).
    let prop = [0x00, 0x80, 0x00, 0x05, 0x00, 0x1f, 0x00];
    let at = content.windows(prop.len()).position(|w| w == prop).unwrap();
    let mut wrong = content.to_vec();
    wrong[at] = 0x01;
    wrong[at + 1] = 0x00;
    assert_eq!(
        IkeSaRecord::from_bytes(&resum(&wrong)),
        Err(RecordError::Invalid("SK_e length"))
    );
    let mut bad = record.clone();
    bad.prop.encr_bits = 256;
    assert!(matches!(bad.to_bytes(), Err(RecordError::Invalid(_))));
    assert!(matches!(
        endpoint(gateway_cfg(), 9).adopt(now, &bad),
        Err(AdoptError::Record(RecordError::Invalid(_)))
    ));
    // More than the byte form can count is refused, never truncated into another record.
    let mut many = record.clone();
    many.our_additional = vec![IpAddr::from([192, 0, 2, 9]); 65_536];
    assert!(many.to_bytes().is_err());
    many.our_additional.pop();
    assert!(IkeSaRecord::from_bytes(&many.to_bytes().unwrap()).is_ok());
    assert_eq!(IkeSaRecord::from_bytes(&bytes), Ok(record));
}

#[test]
fn debug_of_a_record_shows_no_key_bytes() {
    let (mut p, ids) = mid_life(client_cfg(), gateway_cfg());
    let now = p.now();
    let r = p.gw().export(now, ids[GW]).unwrap();
    let c = &r.children[0];
    let keys = [
        &r.keys.sk_d,
        &r.keys.sk_ei,
        &r.keys.sk_er,
        &c.key_in,
        &c.key_out,
    ];
    for text in [format!("{r:?}"), format!("{r:#?}")] {
        assert!(text.contains("<secret>"), "{text}");
        assert!(text.contains(&r.spi_i.to_string()), "{text}");
        for k in keys {
            let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
            assert!(!text.contains(&hex), "{text}");
            // The list form Debug would give the bytes, first eight of them.
            let list = format!("{:?}", &k[..8]);
            assert!(!text.contains(list.trim_end_matches(']')), "{text}");
        }
    }
}

#[test]
fn ageing_a_record_brings_its_deadlines_closer() {
    let (c, g) = configs(GW);
    let (mut p, ids) = mid_life(c, g.clone());
    let now = p.now();
    let mut record = p.gw().export(now, ids[GW]).unwrap();
    let left = record.children[0].rekey_in.unwrap();
    assert!(left <= CHILD_REKEY && left > Duration::from_secs(500));
    record.age(Duration::from_secs(100));
    assert_eq!(
        record.children[0].rekey_in,
        Some(left - Duration::from_secs(100))
    );
    // Adopted after the outage, the rekey comes when it was due, not 600 s later.
    replace_and_adopt(&mut p, GW, g, &record);
    p.clear_events();
    p.net.run_for(left - Duration::from_secs(99));
    assert_eq!(children(p.gw_events()).len(), 1);
}

/// A CHILD_SA with AES-CBC + HMAC keeps its integrity algorithm and both keys through the
/// record's byte form, and comes out of it as the data plane installs it.
#[test]
fn a_cbc_child_sa_survives_the_byte_form() {
    let cbc = EspProposal {
        encr_bits: 256,
        esn: false,
        integ: Some(EspInteg::HmacSha256_128),
    };
    let (mut c, mut g) = (client_cfg(), gateway_cfg());
    c.esp_proposals = vec![cbc];
    g.esp_proposals = vec![cbc];
    let (mut p, ids) = mid_life(c, g);
    let now = p.now();
    let record = p.gw().export(now, ids[GW]).unwrap();
    assert_eq!(record.children.len(), 1);
    assert_eq!(record.children[0].proposal(), cbc);
    let back = IkeSaRecord::from_bytes(&record.to_bytes().unwrap()).unwrap();
    assert_eq!(back, record);
    let infos = back.child_infos();
    assert_eq!(infos[0].inbound.integ, Some(EspInteg::HmacSha256_128));
    assert_eq!(infos[0].outbound.keymat.len(), cbc.keymat_len());
    // A key of the wrong length for the suite is refused, not installed.
    let mut short = record.clone();
    short.children[0].integ = Some(EspInteg::HmacSha1_96);
    assert!(short.to_bytes().is_err());
}
