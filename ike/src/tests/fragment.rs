//! IKE fragmentation (RFC 7383) on the virtual-time network: negotiation, both ends sending
//! and reassembling, loss, duplication, reordering and corruption of fragments, a
//! retransmitted request after its answer, expiry, the bounds and what is counted.
//!
//! The handshakes use pre-shared keys with a small fragment size (so IKE_AUTH goes in
//! several fragments each way); `certs::a_certificate_chain_crosses_in_fragments` does it
//! with a certificate chain at the default size.

use super::*;
use crate::config::Fragmentation;
use crate::stats::Reason;
use crate::testing::Fate;
use crate::wire::{self, payload, FragmentHeader, Header, HEADER_LEN};

/// The IP datagram size the tests' fragments may make (IPv4: 20 + 8 bytes of headers).
const SIZE: u16 = 150;

fn frag_endpoint(peer: PeerConfig, seed: u8, f: Fragmentation) -> Endpoint {
    Endpoint::new(
        EndpointConfig {
            peers: vec![peer],
            fragmentation: f,
            ..Default::default()
        },
        [seed; 32],
    )
}

fn small() -> Fragmentation {
    Fragmentation {
        size_v4: SIZE,
        ..Fragmentation::default()
    }
}

fn pair_with(client: Fragmentation, gw: Fragmentation) -> Pair {
    Pair::with_endpoints(
        frag_endpoint(client_cfg(), 1, client),
        frag_endpoint(gateway_cfg(), 2, gw),
    )
}

/// The fragment header of a datagram, if it is a fragment.
fn fragment_of(data: &[u8]) -> Option<(Header, FragmentHeader)> {
    let h = Header::parse(data).ok()?;
    (h.next_payload == payload::SKF).then(|| (h, FragmentHeader::parse(data).unwrap()))
}

fn assert_up(p: &mut Pair) {
    let (c, g) = (children(p.client_events()), children(p.gw_events()));
    let (cs, gs) = (p.client().stats().named(), p.gw().stats().named());
    assert_eq!(
        (c.len(), g.len()),
        (1, 1),
        "client {:?} gw {:?}; client stats {cs:?}; gw stats {gs:?}",
        p.client_events(),
        p.gw_events(),
    );
    assert_keys_pair(&c[0], &g[0]);
}

#[test]
fn both_ends_fragment_ike_auth_and_no_datagram_exceeds_the_size() {
    let mut p = pair_with(small(), small());
    let cid = p.connect();
    p.drive();
    assert_up(&mut p);
    // Every datagram after IKE_SA_INIT fits the size (IP and UDP headers and the non-ESP
    // marker of port 4500 counted); IKE_AUTH went as fragments both ways.
    let mut frags = [0usize; 2];
    for d in &p.net.log {
        let h = Header::parse(&d.data).unwrap();
        if h.exchange == wire::exchange::IKE_SA_INIT {
            continue;
        }
        let marker = if d.dst.port() == 500 { 0 } else { 4 };
        assert!(
            d.data.len() + 28 + marker <= usize::from(SIZE),
            "{} bytes",
            d.data.len()
        );
        if let Some((h, f)) = fragment_of(&d.data) {
            assert_eq!(h.exchange, wire::exchange::IKE_AUTH);
            assert_eq!(f.first_inner != payload::NONE, f.number == 1);
            frags[usize::from(h.is_response())] += 1;
        }
    }
    assert!(frags[0] >= 3 && frags[1] >= 3, "{frags:?}");
    for i in [CLIENT, GW] {
        let ep = p.net.ep(i);
        let f = ep.stats().fragments;
        assert_eq!(f.messages_sent, 1, "{f:?}");
        assert_eq!(f.reassembled, 1, "{f:?}");
        assert!(f.sent >= 3 && f.received >= 3, "{f:?}");
        assert_eq!(ep.stats().total(), 0, "{:?}", ep.stats().named());
        assert_eq!(ep.fragments_held(), 0);
    }
    // Negotiated, and kept in the IKE SA's record.
    let now = p.now();
    assert!(p.client().export(now, cid).unwrap().fragmentation);
}

#[test]
fn not_negotiated_unless_both_announce_it() {
    for (c, g) in [(false, true), (true, false)] {
        let mut p = pair_with(
            Fragmentation {
                enabled: c,
                ..small()
            },
            Fragmentation {
                enabled: g,
                ..small()
            },
        );
        let cid = p.connect();
        p.drive();
        assert_up(&mut p);
        assert!(p.net.log.iter().all(|d| fragment_of(&d.data).is_none()));
        // Unfragmented: IKE_AUTH is larger than the fragment size.
        assert!(p
            .net
            .log
            .iter()
            .any(|d| d.data.len() + 32 > usize::from(SIZE)));
        let now = p.now();
        assert!(!p.client().export(now, cid).unwrap().fragmentation);
    }
}

#[test]
fn lost_fragments_are_recovered_by_retransmitting_them_all() {
    let mut p = pair_with(small(), small());
    // The second fragment of the first IKE_AUTH request and the third of the first response
    // are lost.
    let mut seen = [0usize; 2];
    p.net.fault = Some(Box::new(move |d| {
        let Some((h, f)) = fragment_of(&d.data) else {
            return Fate::Deliver;
        };
        let dir = usize::from(h.is_response());
        seen[dir] += 1;
        let lose = if dir == 0 { 2 } else { 3 };
        if seen[dir] <= usize::from(f.total) && f.number == lose {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    }));
    p.connect();
    p.drive();
    assert_up(&mut p);
    // The gateway kept the fragments that came, took the missing one from the client's
    // retransmission (the others again are duplicates), and answered once.
    let (c, g) = (p.client().stats().clone(), p.gw().stats().clone());
    // Sent three times: the gateway lacked a fragment of the first, the client one of the
    // response to the second.
    assert_eq!(c.fragments.messages_sent, 3, "{:?}", c.fragments);
    assert_eq!(g.fragments.reassembled, 1);
    assert!(g.get(Reason::FragmentDuplicate) >= 1, "{:?}", g.named());
    // The first response lost a fragment: the client's retransmitted first fragment brought
    // the cached response again (the other fragments of an answered request are stale).
    assert_eq!(g.fragments.messages_sent, 2, "{:?}", g.named());
    assert!(g.get(Reason::FragmentStale) >= 1, "{:?}", g.named());
    assert_eq!(c.fragments.reassembled, 1);
    assert_eq!(
        (p.client().fragments_held(), p.gw().fragments_held()),
        (0, 0)
    );
}

#[test]
fn duplicated_and_reordered_fragments_reassemble() {
    let mut p = pair_with(small(), small());
    let mut k = 0u32;
    p.net.fault = Some(Box::new(move |d| {
        if fragment_of(&d.data).is_none() {
            return Fate::Deliver;
        }
        k += 1;
        match k % 3 {
            0 => Fate::Duplicate,
            1 => Fate::Reorder,
            _ => Fate::Deliver,
        }
    }));
    p.connect();
    p.drive();
    assert_up(&mut p);
    for i in [CLIENT, GW] {
        let s = p.net.ep(i).stats();
        assert_eq!(s.fragments.reassembled, 1, "{:?}", s.named());
        assert_eq!(s.fragments.messages_sent, 1, "nothing retransmitted");
    }
    let dups = p.client().stats().get(Reason::FragmentDuplicate)
        + p.gw().stats().get(Reason::FragmentDuplicate);
    assert!(dups >= 1);
}

#[test]
fn a_corrupted_fragment_is_never_kept() {
    let mut p = pair_with(small(), small());
    let mut done = false;
    p.net.fault = Some(Box::new(move |d| {
        // The first fragment 2 of a request is lost; a forgery in its place comes below.
        if !done && fragment_of(&d.data).is_some_and(|(h, f)| !h.is_response() && f.number == 2) {
            done = true;
            return Fate::Drop;
        }
        Fate::Deliver
    }));
    p.connect();
    // IKE_SA_INIT, then the IKE_AUTH request's fragments (one lost).
    p.net.deliver();
    let forged = {
        let sent: Vec<_> = p
            .net
            .log
            .iter()
            .filter(|d| d.to == Some(GW))
            .filter_map(|d| fragment_of(&d.data).map(|_| d.data.clone()))
            .collect();
        assert!(!sent.is_empty(), "fragments reached the gateway");
        let mut f = sent[0].clone();
        // Fragment 1 renumbered as 2: the associated data changes, the ICV no longer checks.
        f[HEADER_LEN + 5] = 2;
        f
    };
    let (now, c, g) = (p.now(), p.client_addr(), p.gw_addr());
    let before = p.gw().stats().fragments.received;
    let mut from = c;
    from.set_port(4500);
    let mut to = g;
    to.set_port(4500);
    p.gw().handle(now, to, from, &forged);
    assert_eq!(p.gw().stats().get(Reason::Integrity), 1);
    assert_eq!(p.gw().stats().fragments.received, before);
    // The client's retransmission brings the real fragment 2.
    p.drive();
    assert_up(&mut p);
}

#[test]
fn an_unfinished_reassembly_expires_and_frees_its_bytes() {
    let mut p = pair_with(
        small(),
        Fragmentation {
            timeout: Duration::from_secs(5),
            ..small()
        },
    );
    // Only the first fragment of every request reaches the gateway.
    p.net.fault = Some(Box::new(|d| match fragment_of(&d.data) {
        Some((h, f)) if !h.is_response() && f.number > 1 => Fate::Drop,
        _ => Fate::Deliver,
    }));
    p.connect();
    p.net.run_for(ms(100));
    assert!(p.gw().fragments_held() > 0);
    p.net.run_for(ms(5000));
    assert_eq!(p.gw().fragments_held(), 0);
    assert_eq!(p.gw().stats().fragments.expired, 1);
    // The client gives up after its retransmissions; the gateway's reassembly expires.
    p.drive();
    assert_eq!(p.gw().fragments_held(), 0);
    assert!(
        p.gw().stats().fragments.expired >= 1,
        "{:?}",
        p.gw().stats()
    );
    assert_eq!(p.gw().stats().fragments.reassembled, 0);
    assert!(children(p.gw_events()).is_empty());
}

#[test]
fn the_bounds_drop_what_is_beyond_them() {
    // A message longer than the gateway reassembles: dropped as it grows past the bound.
    let mut p = pair_with(
        small(),
        Fragmentation {
            max_message: 150,
            ..small()
        },
    );
    p.connect();
    p.drive();
    assert!(children(p.gw_events()).is_empty());
    assert!(p.gw().stats().get(Reason::FragmentOverLimit) >= 1);
    assert_eq!(p.gw().fragments_held(), 0);
    // More fragments than the gateway takes.
    let mut p = pair_with(
        small(),
        Fragmentation {
            max_fragments: 2,
            ..small()
        },
    );
    p.connect();
    p.drive();
    assert!(children(p.gw_events()).is_empty());
    assert!(p.gw().stats().get(Reason::FragmentOverLimit) >= 1);
    // The endpoint's total: nothing beyond it is held.
    let mut p = pair_with(
        small(),
        Fragmentation {
            max_total: 100,
            ..small()
        },
    );
    p.connect();
    p.net.run_for(ms(100));
    let held = p.gw().fragments_held();
    assert!(held > 0 && held <= 100, "{held} {:?}", p.gw().stats());
    assert!(p.gw().stats().get(Reason::FragmentOverLimit) >= 1);
}

#[test]
fn a_fragment_where_fragmentation_was_not_negotiated_is_dropped() {
    let mut p = pair_with(
        small(),
        Fragmentation {
            enabled: false,
            ..small()
        },
    );
    p.connect();
    p.drive();
    assert_up(&mut p);
    // A fragment the gateway's IKE SA never agreed to: the client's IKE_AUTH request as
    // fragments, forced by a client that believes it was negotiated.
    let mut q = pair_with(small(), small());
    q.connect();
    q.drive();
    let frag = q
        .net
        .log
        .iter()
        .find(|d| d.to == Some(GW) && fragment_of(&d.data).is_some())
        .unwrap()
        .data
        .clone();
    // Its SPIs are q's; send it to q's gateway after turning fragmentation off there.
    let gid = ike_up(q.gw_events()).unwrap();
    q.gw().sa_mut(gid).unwrap().state.fragmentation = false;
    let (now, c, g) = (q.now(), q.client_addr(), q.gw_addr());
    let (mut from, mut to) = (c, g);
    from.set_port(4500);
    to.set_port(4500);
    // A message id the gateway still expects, so the window lets it through.
    let mut f = frag;
    let next = q.gw().sa_mut(gid).unwrap().state.peer_next_id;
    f[20..24].copy_from_slice(&next.to_be_bytes());
    q.gw().handle(now, to, from, &f);
    assert_eq!(q.gw().stats().get(Reason::FragmentUnnegotiated), 1);
}

#[test]
fn malformed_fragment_headers_are_counted() {
    let mut p = pair_with(small(), small());
    p.connect();
    p.drive();
    let gid = ike_up(p.gw_events()).unwrap();
    p.gw().sa_mut(gid).unwrap().state.fragmentation = true;
    let spi = (gid.0).0;
    let next = p.gw().sa_mut(gid).unwrap().state.peer_next_id;
    let client_spi = p.gw().sa_mut(gid).unwrap().state.spi_i.0;
    let (now, c, g) = (p.now(), p.client_addr(), p.gw_addr());
    for (number, total) in [(0u16, 1u16), (3, 2), (1, 0)] {
        let mut m = Vec::new();
        Header {
            spi_i: client_spi,
            spi_r: spi,
            next_payload: payload::SKF,
            exchange: wire::exchange::INFORMATIONAL,
            flags: wire::FLAG_INITIATOR,
            message_id: next,
            length: (HEADER_LEN + 40) as u32,
        }
        .emit(&mut m);
        FragmentHeader {
            first_inner: 0,
            number,
            total,
        }
        .emit(40, &mut m);
        m.extend_from_slice(&[0u8; 32]);
        p.gw().handle(now, g, c, &m);
    }
    assert_eq!(p.gw().stats().get(Reason::FragmentMalformed), 3);
    assert_eq!(p.gw().fragments_held(), 0);
}

#[test]
fn a_rekeyed_ike_sa_keeps_fragmentation_and_fragments_from_either_end() {
    let mut p = pair_with(small(), small());
    let cid = p.connect();
    p.drive();
    let gid = ike_up(p.gw_events()).unwrap();
    // The gateway rekeys the IKE SA, then the client rekeys the CHILD_SA over the new one:
    // CREATE_CHILD_SA requests and responses above the size go in fragments both ways.
    let before = [CLIENT, GW].map(|i| p.net.ep(i).stats().fragments);
    let now = p.now();
    p.gw().rekey_ike(now, gid).unwrap();
    p.drive();
    let new = p.client().list()[0].0;
    assert_ne!(new, cid, "rekeyed");
    let now = p.now();
    assert!(p.client().export(now, new).unwrap().fragmentation);
    let spi = p.client().list()[0].3[0].0;
    p.client().rekey_child(now, new, spi).unwrap();
    p.drive();
    assert_eq!(p.client().list()[0].3.len(), 1, "child rekeyed");
    assert_ne!(p.client().list()[0].3[0].0, spi);
    for (i, b) in [CLIENT, GW].into_iter().zip(before) {
        let s = p.net.ep(i).stats();
        assert!(s.fragments.messages_sent >= b.messages_sent + 2, "{:?}", s);
        assert!(s.fragments.reassembled >= b.reassembled + 2, "{:?}", s);
        assert_eq!(s.total(), 0, "{:?}", s.named());
    }
}

#[test]
fn a_fragmented_last_response_survives_export_and_adoption() {
    let mut p = pair_with(small(), small());
    p.connect();
    p.drive();
    let gid = ike_up(p.gw_events()).unwrap();
    let now = p.now();
    let record = p.gw().export(now, gid).unwrap();
    let (id, resp) = record.last_response.clone().unwrap();
    let parts: Vec<&[u8]> = crate::fragment::datagrams(&resp).collect();
    assert!(parts.len() >= 3, "the IKE_AUTH response's fragments");
    for d in &parts {
        let (h, _) = fragment_of(d).unwrap();
        assert_eq!((h.message_id, h.length as usize), (id, d.len()));
    }
    // The record's byte form keeps them, and an endpoint that adopts it answers the first
    // fragment of the retransmitted request with every fragment again.
    let bytes = record.to_bytes().unwrap();
    let back = crate::record::IkeSaRecord::from_bytes(&bytes).unwrap();
    assert_eq!(back.last_response, record.last_response);
    assert!(back.fragmentation);
    let mut other = frag_endpoint(gateway_cfg(), 3, small());
    let adopted = other.adopt(now, &back).unwrap();
    assert_eq!(adopted, gid);
    let first = p
        .net
        .log
        .iter()
        .find(|d| d.to == Some(GW) && fragment_of(&d.data).is_some_and(|(_, f)| f.number == 1))
        .unwrap()
        .clone();
    let mut local = p.gw_addr();
    local.set_port(4500);
    other.handle(now, local, first.src, &first.data);
    let mut again = Vec::new();
    while let Some(t) = other.poll_transmit() {
        again.push(t.data);
    }
    assert_eq!(again, parts.iter().map(|d| d.to_vec()).collect::<Vec<_>>());
}
