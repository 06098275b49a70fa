//! RFC 6311 IKEV2_MESSAGE_ID_SYNC on virtual time: an HA takeover from a replicated record
//! that is one exchange behind each way (the old node answered the client's request and had
//! its own request under retransmission when it died); the sync repairs both directions, and
//! without it the IKE SA dies. Negotiation, and replayed or forged sync messages refused.

use super::*;
use crate::record::IkeSaRecord;
use crate::stats::Reason;
use crate::testing::Fate;
use crate::wire::{exchange, Header};

fn ep(peer: PeerConfig, seed: u8, mid_sync: bool) -> Endpoint {
    Endpoint::new(
        EndpointConfig {
            peers: vec![peer],
            mid_sync,
            ..Default::default()
        },
        [seed; 32],
    )
}

fn pair(client_sync: bool, gw_sync: bool) -> (Pair, IkeSaId, IkeSaId) {
    let mut p = Pair::with_endpoints(
        ep(client_cfg(), 1, client_sync),
        ep(gateway_cfg(), 2, gw_sync),
    );
    let cid = p.connect();
    p.drive();
    let gid = ike_up(p.gw_events()).expect("up");
    p.clear_events();
    (p, cid, gid)
}

/// The datagrams node `from` sent with message id 0 in an INFORMATIONAL exchange:
/// (response flag, bytes).
fn mid0(p: &Pair, from: usize) -> Vec<(bool, Vec<u8>)> {
    p.net
        .log
        .iter()
        .filter(|d| d.from == from)
        .filter_map(|d| {
            let h = Header::parse(&d.data).ok()?;
            (h.exchange == exchange::INFORMATIONAL && h.message_id == 0)
                .then(|| (h.flags & crate::wire::FLAG_RESPONSE != 0, d.data.clone()))
        })
        .collect()
}

#[test]
fn support_is_negotiated_in_ike_auth_and_carried_in_the_record() {
    for (c, g, want) in [
        (true, true, true),
        (true, false, false),
        (false, true, false),
    ] {
        let (mut p, cid, gid) = pair(c, g);
        let now = p.now();
        assert_eq!(p.gw().export(now, gid).unwrap().mid_sync, want);
        assert_eq!(p.client().export(now, cid).unwrap().mid_sync, want);
        // Carried through the byte form.
        let rec = p.gw().export(now, gid).unwrap();
        let back = IkeSaRecord::from_bytes(&rec.to_bytes().unwrap()).unwrap();
        assert_eq!(back.mid_sync, want);
        assert_eq!(p.gw().sync_message_ids(now, gid), Ok(want));
        p.drive();
        assert_eq!(mid0(&p, GW).len(), usize::from(want));
    }
}

/// The client made a further CHILD_SA the old gateway answered after the record was taken,
/// and the old gateway's CHILD_SA rekey was being retransmitted (its answer lost) when it died;
/// the new gateway adopts the record. Returns the pair and (client, gateway) IKE SA ids.
fn takeover_behind_both_ways(sync: bool) -> (Pair, IkeSaId, IkeSaId) {
    let (p, c, g, _) = takeover_from(sync);
    (p, c, g)
}

/// The same, with the record the new gateway adopted.
fn takeover_from(sync: bool) -> (Pair, IkeSaId, IkeSaId, IkeSaRecord) {
    let (mut p, cid, gid) = pair(true, true);
    let now = p.now();
    let record = p.gw().export(now, gid).unwrap();
    let first = p.net.ep(GW).list()[0].3[0].0;
    // The client's request, answered by the old node.
    p.client().create_child(now, cid).unwrap();
    p.drive();
    assert_eq!(children(p.client_events()).len(), 1);
    // The old node's request reaches the client; every answer to the old node is lost.
    p.net.fault = Some(Box::new(|d| {
        if d.to == Some(GW) {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    }));
    let now = p.now();
    p.gw().rekey_child(now, gid, first).unwrap();
    p.net.run_for(ms(1500));
    p.net.fault = None;
    // Takeover: a new endpoint adopts the replicated record.
    p.net.nodes[GW].endpoint = ep(gateway_cfg(), 9, true);
    let now = p.now();
    assert_eq!(p.gw().adopt(now, &record), Ok(gid));
    p.clear_events();
    if sync {
        assert_eq!(p.gw().sync_message_ids(now, gid), Ok(true));
    }
    (p, cid, gid, record)
}

#[test]
fn takeover_during_a_retransmission_is_repaired_by_the_sync() {
    let (mut p, cid, gid) = takeover_behind_both_ways(true);
    p.net.run_for(ms(500));
    assert_eq!(p.gw().stats().mid_sync.synced, 1);
    assert_eq!(p.client().stats().mid_sync.answered, 1);
    // Both directions work: the client's next request and the new gateway's.
    let now = p.now();
    p.client().create_child(now, cid).unwrap();
    p.net.run_for(ms(500));
    assert_eq!(children(p.gw_events()).len(), 1, "client's request taken");
    let first = p.net.ep(GW).list()[0].3[0].0;
    let now = p.now();
    p.gw().rekey_child(now, gid, first).unwrap();
    p.net.run_for(ms(500));
    assert_eq!(children(p.gw_events()).len(), 2, "gateway's rekey answered");
    p.net.run_for(Duration::from_secs(60));
    assert!(
        downs(p.client_events()).is_empty(),
        "{:?}",
        p.client_events()
    );
    assert!(downs(p.gw_events()).is_empty());
    // One sync request, one answer, both message id 0.
    assert_eq!(mid0(&p, GW).iter().filter(|(r, _)| !r).count(), 1);
    assert_eq!(mid0(&p, CLIENT).iter().filter(|(r, _)| *r).count(), 1);
}

#[test]
fn the_same_takeover_without_the_sync_loses_the_ike_sa() {
    let (mut p, cid, _) = takeover_behind_both_ways(false);
    let now = p.now();
    p.client().create_child(now, cid).unwrap();
    p.net.run_for(Duration::from_secs(300));
    assert!(p.gw().stats().get(Reason::BadMessageId) > 0);
    assert_eq!(
        downs(p.client_events()),
        vec![DownReason::Timeout],
        "the client's request is never taken"
    );
}

#[test]
fn one_sync_per_ike_sa_keys() {
    let (mut p, _, gid) = takeover_behind_both_ways(true);
    p.net.run_for(ms(500));
    assert_eq!(p.gw().stats().mid_sync.synced, 1);
    let now = p.now();
    // strongSwan could not encrypt a second answer with message id 0 on these keys.
    assert_eq!(p.gw().sync_message_ids(now, gid), Ok(false));
    let rec = p.gw().export(now, gid).unwrap();
    assert!(rec.mid_sync && rec.mid_sync_used);
    // Carried to the next adopter.
    let back = IkeSaRecord::from_bytes(&rec.to_bytes().unwrap()).unwrap();
    assert!(back.mid_sync_used);
    p.net.nodes[GW].endpoint = ep(gateway_cfg(), 10, true);
    assert_eq!(p.gw().adopt(now, &back), Ok(gid));
    assert_eq!(p.gw().sync_message_ids(now, gid), Ok(false));
}

#[test]
fn replayed_and_forged_sync_messages_are_refused() {
    // `stale`: the record the first adopter took over (before it synced).
    let (mut p, cid, gid, stale) = takeover_from(true);
    p.net.run_for(ms(500));
    assert_eq!(p.gw().stats().mid_sync.synced, 1);
    let request = mid0(&p, GW)[0].1.clone();
    let answer = mid0(&p, CLIENT)[0].1.clone();
    let (c, g) = (p.client_addr(), p.gw_addr());
    // A gateway request moves the client's expected id past the first sync's.
    let first = p.net.ep(GW).list()[0].3[0].0;
    let now = p.now();
    p.gw().rekey_child(now, gid, first).unwrap();
    p.net.run_for(ms(500));
    assert_eq!(children(p.gw_events()).len(), 1);
    // The first request replayed to the client: refused as stale, never answered.
    let now = p.now();
    p.client().handle(now, c, g, &request);
    assert_eq!(p.client().stats().mid_sync.stale, 1);
    assert!(
        p.client().poll_transmit().is_none(),
        "a replay is never answered"
    );
    // Forged: the same request with a byte of its encrypted part flipped.
    let mut forged = request.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let before = p.client().stats().get(Reason::Integrity);
    p.client().handle(now, c, g, &forged);
    assert_eq!(p.client().stats().get(Reason::Integrity), before + 1);
    assert!(p.client().poll_transmit().is_none());
    assert_eq!(p.client().stats().mid_sync.answered, 1);
    // The client keeps working with the gateway that synced.
    let now = p.now();
    p.client().create_child(now, cid).unwrap();
    p.net.run_for(ms(500));
    assert_eq!(children(p.gw_events()).len(), 2);
    assert!(downs(p.client_events()).is_empty());
    assert!(downs(p.gw_events()).is_empty());
    // Another adopter of the stale copy (same IKE SA keys) syncs: the first answer replayed
    // to it carries another nonce: refused, its request stays outstanding; its request
    // declares a sender id the client is past: refused as stale, unanswered.
    let now = p.now();
    p.net.nodes[GW].endpoint = ep(gateway_cfg(), 11, true);
    assert_eq!(p.gw().adopt(now, &stale), Ok(gid));
    assert_eq!(p.gw().sync_message_ids(now, gid), Ok(true));
    let out = p.gw().poll_transmit().expect("sync request");
    p.gw().handle(now, g, c, &answer);
    assert_eq!(p.gw().stats().mid_sync.wrong_nonce, 1);
    assert_eq!(p.gw().stats().mid_sync.synced, 0);
    p.client().handle(now, c, g, &out.data);
    assert!(p.client().poll_transmit().is_none());
    assert_eq!(p.client().stats().mid_sync.stale, 2);
}

#[test]
fn a_sync_is_not_answered_where_it_was_not_negotiated() {
    // The gateway announced, the client did not: the client never answers message id 0.
    let (mut p, _, gid) = pair(false, true);
    let now = p.now();
    assert_eq!(p.gw().sync_message_ids(now, gid), Ok(false));
    assert!(p.gw().poll_transmit().is_none());
}
