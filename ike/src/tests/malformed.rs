//! Malformed and unexpected messages: each counted under its reason and answered as RFC 7296
//! 2.5 and 2.21 say, or dropped where nothing may answer it.

use rand_core::SeedableRng;

use super::*;
use crate::crypto::DhPrivate;
use crate::exchange::plain_message;
use crate::ids::IkeSpi;
use crate::proposal::{esp_payload, ike_payload};
use crate::stats::Reason;
use crate::wire::{self, exchange, notify, parse_chain, payload, Header, Payload, HEADER_LEN};

fn gw_addr() -> SocketAddr {
    "192.0.2.1:500".parse().unwrap()
}

fn client_addr() -> SocketAddr {
    "192.0.2.10:500".parse().unwrap()
}

/// SA, KE and Ni of a valid IKE_SA_INIT request to the test gateway.
fn init_payloads() -> Vec<Payload> {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
    let dh = DhPrivate::generate(DhGroup::X25519, &mut rng);
    vec![
        Payload::Sa(ike_payload(&gateway_cfg().ike_proposals, &[])),
        Payload::Ke {
            group: dh.group().id(),
            data: dh.public().to_vec(),
        },
        Payload::Nonce(vec![7; 32]),
    ]
}

fn init_request(spi_i: u64, id: u32, p: &[Payload]) -> Vec<u8> {
    plain_message(
        IkeSpi(spi_i),
        IkeSpi::ZERO,
        exchange::IKE_SA_INIT,
        wire::FLAG_INITIATOR,
        id,
        p,
    )
}

/// Everything the endpoint sent, each as its header and (unencrypted) payloads.
fn answers(ep: &mut Endpoint) -> Vec<(Header, Vec<Payload>)> {
    let mut v = Vec::new();
    while let Some(t) = ep.poll_transmit() {
        assert_eq!(t.dst, client_addr(), "answered where the request came from");
        let h = Header::parse(&t.data).unwrap();
        assert_eq!(h.length as usize, t.data.len());
        let c = parse_chain(&t.data, HEADER_LEN, h.next_payload).unwrap();
        v.push((h, c.payloads));
    }
    v
}

fn only_notify(a: &[(Header, Vec<Payload>)]) -> (Header, u16, Vec<u8>) {
    assert_eq!(a.len(), 1, "one answer: {a:?}");
    match a[0].1.as_slice() {
        [Payload::Notify { kind, data, .. }] => (a[0].0, *kind, data.clone()),
        other => panic!("not a single notify: {other:?}"),
    }
}

fn gateway() -> Endpoint {
    endpoint(gateway_cfg(), 2)
}

fn handle(ep: &mut Endpoint, msg: &[u8]) {
    ep.handle(Instant::ZERO, gw_addr(), client_addr(), msg);
}

#[test]
fn a_valid_init_request_is_answered_and_makes_a_half_open_sa() {
    // The control for the tests below: the same request, well formed, is accepted.
    let mut gw = gateway();
    handle(&mut gw, &init_request(0x1111, 0, &init_payloads()));
    let a = answers(&mut gw);
    assert_eq!(a.len(), 1);
    assert!(a[0].1.iter().any(|p| matches!(p, Payload::Ke { .. })));
    assert_eq!(gw.list().len(), 1);
    assert_eq!(gw.stats().total(), 0);
}

#[test]
fn init_without_sa_ke_or_nonce_gets_invalid_syntax_and_no_state() {
    for missing in [payload::SA, payload::KE, payload::NONCE] {
        let mut gw = gateway();
        let p: Vec<_> = init_payloads()
            .into_iter()
            .filter(|x| x.kind() != missing)
            .collect();
        handle(&mut gw, &init_request(0x1111, 0, &p));
        let (h, kind, _) = only_notify(&answers(&mut gw));
        assert_eq!(kind, notify::INVALID_SYNTAX, "without payload {missing}");
        assert_eq!((h.spi_i, h.spi_r, h.message_id), (0x1111, 0, 0));
        assert!(h.is_response() && !h.from_initiator());
        assert!(gw.list().is_empty());
        assert_eq!(gw.stats().get(Reason::InitMissingPayload), 1);
    }
}

#[test]
fn init_with_an_unknown_critical_payload_gets_unsupported_critical_payload() {
    let mut gw = gateway();
    let mut p = vec![Payload::Other {
        kind: 200,
        data: vec![1, 2, 3],
    }];
    p.extend(init_payloads());
    let mut m = init_request(0x2222, 0, &p);
    m[HEADER_LEN + 1] = 0x80; // the critical bit of the first payload
    handle(&mut gw, &m);
    let (h, kind, data) = only_notify(&answers(&mut gw));
    assert_eq!(kind, notify::UNSUPPORTED_CRITICAL_PAYLOAD);
    assert_eq!(data, vec![200], "the payload type (RFC 7296 3.10.1)");
    assert_eq!(h.spi_i, 0x2222);
    assert!(gw.list().is_empty());
    assert_eq!(gw.stats().get(Reason::UnsupportedCritical), 1);
    // Without the critical bit it is skipped and the request accepted.
    m[HEADER_LEN + 1] = 0;
    handle(&mut gw, &m);
    assert_eq!(answers(&mut gw).len(), 1);
    assert_eq!(gw.list().len(), 1);
}

#[test]
fn init_with_initiator_spi_zero_or_a_message_id_is_dropped_and_counted() {
    let mut gw = gateway();
    handle(&mut gw, &init_request(0, 0, &init_payloads()));
    handle(&mut gw, &init_request(0x3333, 7, &init_payloads()));
    assert!(answers(&mut gw).is_empty(), "nothing valid to answer");
    assert!(gw.list().is_empty());
    assert_eq!(gw.stats().get(Reason::InitZeroSpi), 1);
    assert_eq!(gw.stats().get(Reason::InitMessageId), 1);
}

#[test]
fn init_with_a_proposal_spi_gets_invalid_syntax() {
    let mut gw = gateway();
    let mut p = init_payloads();
    if let Payload::Sa(props) = &mut p[0] {
        props[0].spi = vec![0xab; 255];
    }
    handle(&mut gw, &init_request(0x4444, 0, &p));
    let (_, kind, _) = only_notify(&answers(&mut gw));
    assert_eq!(kind, notify::INVALID_SYNTAX);
    assert!(gw.list().is_empty());
    assert_eq!(gw.stats().get(Reason::InitProposalSpi), 1);
}

#[test]
fn bytes_beyond_the_headers_length_are_refused() {
    let mut gw = gateway();
    let mut m = init_request(0x5555, 0, &init_payloads());
    m.extend_from_slice(&[0u8; 200]);
    handle(&mut gw, &m);
    // And a length field beyond the datagram.
    let mut short = init_request(0x5556, 0, &init_payloads());
    short.truncate(short.len() - 1);
    handle(&mut gw, &short);
    assert!(answers(&mut gw).is_empty());
    assert!(gw.list().is_empty());
    assert_eq!(gw.stats().get(Reason::LengthMismatch), 2);
}

#[test]
fn a_newer_major_version_gets_invalid_major_version_a_response_nothing() {
    let mut gw = gateway();
    let mut m = init_request(0x6666, 0, &init_payloads());
    m[17] = 0x30;
    handle(&mut gw, &m);
    let sent = gw.poll_transmit().unwrap();
    assert_eq!(sent.data[17], 0x20, "our highest version is in the header");
    assert!(gw.poll_transmit().is_none());
    let h = Header::parse(&sent.data).unwrap();
    assert_eq!((h.spi_i, h.spi_r, h.message_id), (0x6666, 0, 0));
    assert!(h.is_response());
    let c = parse_chain(&sent.data, HEADER_LEN, h.next_payload).unwrap();
    assert!(matches!(
        c.payloads.as_slice(),
        [Payload::Notify {
            kind: notify::INVALID_MAJOR_VERSION,
            ..
        }]
    ));
    assert!(gw.list().is_empty());
    // The same as a response: never answered.
    m[19] |= wire::FLAG_RESPONSE;
    handle(&mut gw, &m);
    // IKEv1 (major version 1): dropped.
    let mut v1 = init_request(0x6667, 0, &init_payloads());
    v1[17] = 0x10;
    handle(&mut gw, &v1);
    assert!(gw.poll_transmit().is_none());
    assert_eq!(gw.stats().get(Reason::NewerMajorVersion), 2);
    assert_eq!(gw.stats().get(Reason::OldMajorVersion), 1);
}

#[test]
fn a_request_for_an_unknown_ike_sa_gets_invalid_ike_spi_a_response_nothing() {
    let mut gw = gateway();
    let m = plain_message(
        IkeSpi(0x77),
        IkeSpi(0x88),
        exchange::INFORMATIONAL,
        wire::FLAG_INITIATOR,
        5,
        &[],
    );
    handle(&mut gw, &m);
    let (h, kind, _) = only_notify(&answers(&mut gw));
    assert_eq!(kind, notify::INVALID_IKE_SPI);
    assert_eq!(
        (h.spi_i, h.spi_r, h.exchange, h.message_id),
        (0x77, 0x88, exchange::INFORMATIONAL, 5),
        "SPIs and message id copied (RFC 7296 2.21.4)"
    );
    assert!(h.is_response() && !h.from_initiator());
    let r = plain_message(
        IkeSpi(0x77),
        IkeSpi(0x88),
        exchange::INFORMATIONAL,
        wire::FLAG_RESPONSE,
        5,
        &[Payload::notify(notify::INVALID_IKE_SPI, vec![])],
    );
    handle(&mut gw, &r);
    assert!(answers(&mut gw).is_empty(), "a response is never answered");
    assert_eq!(gw.stats().get(Reason::UnknownSpi), 1);
    assert_eq!(gw.stats().get(Reason::UnknownSpiResponse), 1);
}

#[test]
fn unprotected_answers_are_rate_limited() {
    let mut gw = gateway();
    let p: Vec<_> = init_payloads()
        .into_iter()
        .filter(|x| x.kind() != payload::KE)
        .collect();
    for i in 0..30u64 {
        handle(&mut gw, &init_request(0x100 + i, 0, &p));
    }
    assert_eq!(answers(&mut gw).len(), 20);
    assert_eq!(gw.stats().get(Reason::InitMissingPayload), 30);
    assert_eq!(gw.stats().answers_limited, 10);
    gw.handle(
        Instant::ZERO.saturating_add(Duration::from_secs(1)),
        gw_addr(),
        client_addr(),
        &init_request(0x999, 0, &p),
    );
    assert_eq!(answers(&mut gw).len(), 1, "a second later, answers again");
}

/// A request the client seals with its IKE SA's keys around the raw payload chain `body`
/// (starting with type `first`), delivered to the gateway; the gateway's answer opened with
/// the client's keys.
fn forged_request(p: &mut Pair, cid: IkeSaId, exch: u8, first: u8, body: &[u8]) -> Vec<Payload> {
    let now = p.now();
    let sa = p.client().sa_mut(cid).unwrap();
    let id = sa.take_request_id();
    let msg = sa.seal_message(exch, id, false, first, body);
    let (local, remote) = (sa.state.local, sa.state.remote);
    p.gw().handle(now, remote, local, &msg);
    let t = p.gw().poll_transmit().expect("answered");
    assert!(p.gw().poll_transmit().is_none());
    let h = Header::parse(&t.data).unwrap();
    assert!(h.is_response());
    assert_eq!(h.message_id, id);
    p.client().sa_mut(cid).unwrap().open(&t.data, &h).unwrap()
}

fn chain(p: &[Payload]) -> (u8, Vec<u8>) {
    let mut body = Vec::new();
    let first = wire::emit_chain(p, &mut body);
    (first, body)
}

fn is_notify(p: &[Payload], k: u16) -> bool {
    p.iter()
        .any(|x| matches!(x, Payload::Notify { kind, .. } if *kind == k))
}

#[test]
fn a_malformed_payload_inside_an_authenticated_request_gets_invalid_syntax_and_ends_the_sa() {
    let (mut p, cid, gid) = up();
    p.clear_events();
    // A nonce of 3 bytes (RFC 7296 3.9: at least 16).
    let body = [0u8, 0, 0, 7, 1, 2, 3];
    let answer = forged_request(&mut p, cid, exchange::INFORMATIONAL, payload::NONCE, &body);
    assert!(is_notify(&answer, notify::INVALID_SYNTAX), "{answer:?}");
    assert_eq!(p.gw().stats().get(Reason::InnerMalformed), 1);
    // Fatal to the IKE SA (RFC 7296 2.21.3).
    assert!(p.gw().list().iter().all(|s| s.0 != gid));
    p.net.deliver();
    assert_eq!(downs(p.gw_events()), vec![DownReason::InvalidSyntax]);
    assert_eq!(child_downs(p.gw_events()), 1);
}

#[test]
fn a_request_missing_a_payload_it_needs_gets_invalid_syntax() {
    let (mut p, cid, _) = up();
    p.clear_events();
    // CREATE_CHILD_SA with an SA payload but no nonce.
    let (first, body) = chain(&[Payload::Sa(esp_payload(
        &client_cfg().esp_proposals,
        ChildSpi(0x1234_5678),
    ))]);
    let answer = forged_request(&mut p, cid, exchange::CREATE_CHILD_SA, first, &body);
    assert!(is_notify(&answer, notify::INVALID_SYNTAX), "{answer:?}");
    assert_eq!(p.gw().stats().get(Reason::MissingPayload), 1);
    assert!(p.gw().list().is_empty());
}

#[test]
fn an_unknown_critical_payload_inside_an_authenticated_request_is_reported_the_sa_stays() {
    let (mut p, cid, _) = up();
    let body = [0u8, 0x80, 0, 6, 9, 9];
    let answer = forged_request(&mut p, cid, exchange::INFORMATIONAL, 200, &body);
    assert!(answer.iter().any(|x| matches!(x,
        Payload::Notify { kind: notify::UNSUPPORTED_CRITICAL_PAYLOAD, data, .. } if *data == [200])));
    assert_eq!(p.gw().stats().get(Reason::UnsupportedCritical), 1);
    assert_eq!(p.gw().list().len(), 1, "not fatal");
    // The windows stayed in step: a real exchange still works.
    let now = p.now();
    p.client().rekey_ike(now, cid).unwrap();
    p.drive();
    assert_eq!(p.gw().list().len(), 1);
    assert!(p
        .gw_events()
        .iter()
        .any(|e| matches!(e, Event::IkeRekeyed { .. })));
}

#[test]
fn an_unexpected_exchange_gets_invalid_syntax() {
    let (mut p, cid, _) = up();
    let (first, body) = chain(&[]);
    let answer = forged_request(&mut p, cid, exchange::IKE_AUTH, first, &body);
    assert!(is_notify(&answer, notify::INVALID_SYNTAX));
    assert_eq!(p.gw().stats().get(Reason::UnexpectedExchange), 1);
    assert!(p.gw().list().is_empty());
}

#[test]
fn invalid_syntax_from_the_peer_ends_our_ike_sa_too() {
    let (mut p, cid, gid) = up();
    p.clear_events();
    let now = p.now();
    p.client().rekey_ike(now, cid).unwrap();
    // Take the request off the wire and answer it with INVALID_SYNTAX under the gateway's
    // keys.
    let req = p.client().poll_transmit().unwrap();
    let h = Header::parse(&req.data).unwrap();
    let resp = p.gw().sa_mut(gid).unwrap().encrypted(
        h.exchange,
        h.message_id,
        true,
        &[Payload::notify(notify::INVALID_SYNTAX, vec![])],
    );
    p.client().handle(now, req.src, req.dst, &resp);
    p.net.deliver();
    assert_eq!(downs(p.client_events()), vec![DownReason::InvalidSyntax]);
    assert!(p.client().list().is_empty());
    assert_eq!(
        p.client().services().spis.in_use(),
        (0, 0),
        "every SPI went back, the rekey's reserved one too"
    );
}

#[test]
fn garbage_and_forged_messages_are_dropped_without_harm() {
    let (mut p, _, _) = up();
    let (c, g) = (p.client_addr(), p.gw_addr());
    let mut x: u64 = 7;
    let now = p.now();
    for len in 0..200usize {
        let mut junk = vec![0u8; len];
        for b in junk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        p.gw().handle(now, g, c, &junk);
    }
    assert!(
        p.gw().poll_transmit().is_none(),
        "nothing is answered to garbage"
    );
    assert_eq!(p.gw().stats().total(), 200, "each one counted");
    assert_eq!(p.gw().list().len(), 1, "the SA survives");
}
