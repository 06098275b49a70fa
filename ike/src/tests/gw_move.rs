//! The gateway moves (an HA standby on another subnet, `exchange::gw_move`): three parties on
//! virtual time (the client, the active gateway A, the standby B that adopts A's IKE SA on
//! another subnet); the announcement, the client's probe and move; forged and replayed
//! announcements; an announcement of an unreachable address; the RFC 5685 redirect and the
//! peers that take neither.

use super::*;
use crate::exchange::gw_move::{decode, encode, redirect_data, GatewayMove};
use crate::record::IkeSaRecord;
use crate::wire::{exchange, notify, Header, Payload};

/// The standby B's node index and its own address (another subnet than A's 192.0.2.1).
const B: usize = 2;
const B_ADDR: &str = "198.51.100.2";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Up between the client and A, then A's IKE SA exported (as the HA sync would have it) and
/// A dead (nothing reaches it any more); B adopts the record (through its byte form) and
/// takes the IKE SA over at its own address. Returns the pair, the client's IKE SA, B's and
/// what B did to tell the client.
fn takeover() -> (Pair, IkeSaId, IkeSaId, GatewayMove) {
    let (mut p, cid, gid) = up();
    let now = p.now();
    let record = p.gw().export(now, gid).unwrap();
    let record = IkeSaRecord::from_bytes(&record.to_bytes().unwrap()).unwrap();
    assert!(record.gateway_move, "negotiated between roamgate's ends");
    // A dies: its address leads nowhere.
    p.net
        .move_node(GW, addr("192.0.2.200:500"), addr("192.0.2.200:500"));
    let b = p
        .net
        .add(endpoint(gateway_cfg(), 9), addr(&format!("{B_ADDR}:500")));
    assert_eq!(b, B);
    let bid = p.net.ep(B).adopt(now, &record).unwrap();
    p.clear_events();
    let how = p
        .net
        .ep(B)
        .move_gateway(now, bid, B_ADDR.parse().unwrap())
        .unwrap();
    (p, cid, bid, how)
}

/// Exchange types of the datagrams logged from index `from` on.
fn exchanges_since(p: &Pair, from: usize) -> Vec<u8> {
    p.net.log[from..]
        .iter()
        .filter_map(|d| Header::parse(&d.data).ok().map(|h| h.exchange))
        .collect()
}

fn no_child_changes(p: &Pair) {
    for n in &p.net.nodes {
        assert!(
            !n.events
                .iter()
                .any(|e| matches!(e, Event::ChildUp(_) | Event::ChildDown { .. })),
            "no rekey, no new CHILD_SA: {:?}",
            n.events
        );
    }
}

#[test]
fn a_standby_on_another_subnet_takes_over_and_the_client_follows_without_a_key_exchange() {
    let (mut p, cid, bid, how) = takeover();
    assert_eq!(how, GatewayMove::Announced);
    let log_from = p.net.log.len();
    let child_before = p.client().list()[0].3.clone();
    p.drive();
    // B's CHILD_SA tunnels from its own address at once (and only then).
    assert_eq!(
        moves(&p.net.nodes[B].events),
        [(addr("198.51.100.2:4500"), addr("192.0.2.10:4500"), true, 1)]
    );
    // The client moved the IKE SA and its CHILD_SA to B after the probe, once.
    assert_eq!(
        moves(p.client_events()),
        [(addr("192.0.2.10:4500"), addr("198.51.100.2:4500"), true, 1)]
    );
    let s = p.client().stats().gateway_move;
    assert_eq!((s.heard, s.moved, s.probe_failed, s.refused), (1, 1, 0, 0));
    assert_eq!(p.net.ep(B).stats().gateway_move.announced, 1);
    assert_eq!(p.client().list()[0].3, child_before, "same SPIs");
    no_child_changes(&p);
    // Two INFORMATIONAL exchanges (the announcement, the probe), nothing else: no
    // IKE_SA_INIT, no CREATE_CHILD_SA.
    let x = exchanges_since(&p, log_from);
    assert_eq!(x, [exchange::INFORMATIONAL; 4], "{x:?}");
    for i in [CLIENT, B] {
        assert_eq!(p.net.ep(i).stats().total(), 0, "node {i}");
    }

    // The IKE SA lives on with B: a CHILD_SA rekey either way, a liveness check.
    let now = p.now();
    let spi = p.client().list()[0].3[0].0;
    p.client().rekey_child(now, cid, spi).unwrap();
    p.drive();
    assert_eq!(children(p.client_events()).len(), 1);
    assert_eq!(children(&p.net.nodes[B].events).len(), 1);
    let now = p.now();
    let spi = p.net.ep(B).list()[0].3[0].0;
    p.net.ep(B).rekey_child(now, bid, spi).unwrap();
    p.drive();
    assert_eq!(children(p.client_events()).len(), 2);
    assert!(downs(p.client_events()).is_empty());
    assert!(downs(&p.net.nodes[B].events).is_empty());
}

#[test]
fn forged_and_replayed_announcements_move_nothing() {
    let (mut p, _, _, _) = takeover();
    p.drive();
    let announcement = p
        .net
        .log
        .iter()
        .find(|d| d.from == B && d.to == Some(CLIENT))
        .unwrap()
        .clone();
    p.clear_events();
    let now = p.now();
    let before = p.client().stats().clone();
    let attacker = addr("203.0.113.66:4500");
    // 1. Replayed: an old message id, answered from the cache, nothing processed.
    p.client()
        .handle(now, announcement.dst, attacker, &announcement.data);
    // 2. Re-labelled with the next message id: its integrity check fails.
    let mut forged = announcement.data.clone();
    let next_id = u32::from_be_bytes(forged[20..24].try_into().unwrap()) + 1;
    forged[20..24].copy_from_slice(&next_id.to_be_bytes());
    p.client().handle(now, announcement.dst, attacker, &forged);
    // 3. A flipped byte in the encrypted part.
    let mut flipped = forged.clone();
    let n = flipped.len();
    flipped[n - 20] ^= 0x40;
    p.client().handle(now, announcement.dst, attacker, &flipped);
    p.drive();
    assert!(
        moves(p.client_events()).is_empty(),
        "{:?}",
        p.client_events()
    );
    let s = p.client().stats().clone();
    assert_eq!(s.gateway_move, before.gateway_move, "no announcement heard");
    assert_eq!(s.get(crate::stats::Reason::Integrity), 2);
}

#[test]
fn an_announcement_of_an_unreachable_address_does_not_strand_the_client() {
    // A (alive) announces an address nobody has: the probe goes unanswered, the client gives
    // it up after its tries and stays with A, which still answers.
    let (mut p, cid, gid) = up();
    p.clear_events();
    let now = p.now();
    let how = p
        .gw()
        .move_gateway(now, gid, "198.51.100.99".parse().unwrap())
        .unwrap();
    assert_eq!(how, GatewayMove::Announced);
    p.net.run_for(Duration::from_secs(120));
    let s = p.client().stats().gateway_move;
    assert_eq!((s.heard, s.moved, s.probe_failed), (1, 0, 1));
    assert!(moves(p.client_events()).is_empty());
    assert!(downs(p.client_events()).is_empty(), "the IKE SA stays");
    // The probe's message id was not lost: A answered the same request as a liveness check,
    // and the window goes on with nothing out of order on either side.
    assert_eq!(p.client().stats().total(), 0);
    assert_eq!(p.gw().stats().total(), 0);
    // The gateway moves back (its own address) and the client still works with it.
    let now = p.now();
    p.gw()
        .move_gateway(now, gid, "192.0.2.1".parse().unwrap())
        .unwrap();
    p.drive();
    p.clear_events();
    let now = p.now();
    let spi = p.client().list()[0].3[0].0;
    p.client().rekey_child(now, cid, spi).unwrap();
    p.drive();
    assert_eq!(children(p.client_events()).len(), 1);
    assert_eq!(children(p.gw_events()).len(), 1);
}

#[test]
fn a_request_under_way_at_the_takeover_is_answered_by_the_new_gateway() {
    // A dies while the client waits for a liveness answer of A's: its retransmissions go to
    // B's announced address as well, B answers (same window), then the probe moves the SA.
    let (mut p, cid, gid) = up();
    let now = p.now();
    let record = p.gw().export(now, gid).unwrap();
    p.net
        .move_node(GW, addr("192.0.2.200:500"), addr("192.0.2.200:500"));
    let spi = p.client().list()[0].3[0].0;
    p.client().rekey_child(now, cid, spi).unwrap();
    p.net.deliver();
    p.net
        .add(endpoint(gateway_cfg(), 9), addr(&format!("{B_ADDR}:500")));
    let bid = p.net.ep(B).adopt(now, &record).unwrap();
    p.clear_events();
    p.net
        .ep(B)
        .move_gateway(now, bid, B_ADDR.parse().unwrap())
        .unwrap();
    p.drive();
    assert_eq!(
        moves(p.client_events()).last().map(|m| m.1),
        Some(addr("198.51.100.2:4500"))
    );
    // The rekey completed with B.
    assert_eq!(children(p.client_events()).len(), 1);
    assert_eq!(children(&p.net.nodes[B].events).len(), 1);
    assert!(downs(p.client_events()).is_empty());
}

#[test]
fn peers_without_the_notify_get_a_redirect_or_nothing() {
    for (redirect, want) in [
        (true, GatewayMove::Redirected),
        (false, GatewayMove::Unsupported),
    ] {
        let (mut p, _, gid) = up();
        let now = p.now();
        let mut record = p.gw().export(now, gid).unwrap();
        // As a standard client's record would be: no private notify; REDIRECT_SUPPORTED
        // or not.
        record.gateway_move = false;
        record.redirect = redirect;
        p.net
            .add(endpoint(gateway_cfg(), 9), addr(&format!("{B_ADDR}:500")));
        let bid = p.net.ep(B).adopt(now, &record).unwrap();
        let how = p
            .net
            .ep(B)
            .move_gateway(now, bid, B_ADDR.parse().unwrap())
            .unwrap();
        assert_eq!(how, want);
        let from = p.net.log.len();
        p.drive();
        let sent = p.net.log[from..].iter().filter(|d| d.from == B).count();
        assert_eq!(sent, usize::from(redirect), "redirect={redirect}");
        // Our client does not follow a redirect: it answers and stays.
        assert!(moves(p.client_events()).is_empty());
    }
}

#[test]
fn the_notify_data_is_strict() {
    for a in ["198.51.100.2:4500", "[2001:db8::2]:4500"] {
        let a = addr(a);
        assert_eq!(decode(&encode(a)), Some(a));
    }
    assert_eq!(
        encode(addr("198.51.100.2:4500")),
        [4, 198, 51, 100, 2, 0x11, 0x94]
    );
    for bad in [
        &[][..],
        &[4, 1, 2, 3, 4, 0][..],
        &[4, 1, 2, 3, 4, 0, 1, 9][..],
        &[6, 1, 2, 3, 4, 0, 1][..],
        &[5, 1, 2, 3, 4, 0, 1][..],
        &[4, 1, 2, 3, 4, 0, 0][..],
        &[4, 0, 0, 0, 0, 1, 244][..],
    ] {
        assert_eq!(decode(bad), None, "{bad:?}");
    }
    // RFC 5685 8: GW Ident Type 1 (IPv4) or 2 (IPv6), its length, the address, no nonce.
    assert_eq!(
        redirect_data("198.51.100.2".parse().unwrap()),
        [1, 4, 198, 51, 100, 2]
    );
    assert_eq!(redirect_data("2001:db8::2".parse().unwrap()).len(), 18);
}

#[test]
fn a_client_that_did_not_negotiate_the_move_refuses_it() {
    // The client's IKE SA as it would be without the notify in IKE_AUTH (its record with the
    // flag cleared, adopted by a fresh client endpoint); the gateway believes otherwise.
    let (mut p, cid, gid) = up();
    let now = p.now();
    let mut record = p.client().export(now, cid).unwrap();
    record.gateway_move = false;
    p.net.nodes[CLIENT].endpoint = endpoint(client_cfg(), 5);
    let cid = p.client().adopt(now, &record).unwrap();
    p.clear_events();
    let how = p
        .gw()
        .move_gateway(now, gid, "192.0.2.1".parse().unwrap())
        .unwrap();
    assert_eq!(how, GatewayMove::Announced);
    p.drive();
    let s = p.client().stats().gateway_move;
    assert_eq!((s.refused, s.heard, s.moved), (1, 0, 0));
    assert!(moves(p.client_events()).is_empty());
    // The request was answered all the same: the IKE SA goes on.
    let now = p.now();
    let spi = p.client().list()[0].3[0].0;
    p.client().rekey_child(now, cid, spi).unwrap();
    p.drive();
    assert_eq!(children(p.client_events()).len(), 1);
    assert_eq!(p.gw().stats().total() + p.client().stats().total(), 0);
}

/// A standard client that was redirected (as strongSwan after an RFC 5685 REDIRECT): its
/// IKE_SA_INIT carries REDIRECTED_FROM instead of REDIRECT_SUPPORTED (5685 5).
struct RedirectedFrom(crate::services::CredentialAuthenticator);

impl crate::services::Authenticator for RedirectedFrom {
    fn init_payloads(&mut self, peers: &[&PeerConfig], responder: bool) -> Vec<Payload> {
        let mut v = self.0.init_payloads(peers, responder);
        if !responder {
            v.push(Payload::notify(
                notify::REDIRECTED_FROM,
                redirect_data("192.0.2.1".parse().unwrap()),
            ));
        }
        v
    }

    fn extra_payloads(
        &mut self,
        peer: &PeerConfig,
        ctx: &crate::services::AuthContext<'_>,
    ) -> Vec<Payload> {
        self.0.extra_payloads(peer, ctx)
    }

    fn sign(
        &mut self,
        peer: &PeerConfig,
        input: &crate::services::AuthInput<'_>,
        ctx: &crate::services::AuthContext<'_>,
    ) -> Result<crate::services::Auth, crate::services::AuthError> {
        self.0.sign(peer, input, ctx)
    }

    fn verify(
        &mut self,
        peer: &PeerConfig,
        input: &crate::services::AuthInput<'_>,
        auth: &crate::services::Auth,
        message: &[Payload],
        ctx: &crate::services::AuthContext<'_>,
    ) -> Result<(), crate::services::AuthError> {
        self.0.verify(peer, input, auth, message, ctx)
    }
}

/// B took over a standard client's IKE SA and redirected it to itself; the client comes back
/// with a new IKE SA of the same identity (from node 3 at `from`; `redirected_from` as a
/// redirected client sends it, or not): returns the pair, B's redirected IKE SA and B's new
/// one.
fn redirected_client_returns(redirected_from: bool, from: &str) -> (Pair, IkeSaId, IkeSaId) {
    let (mut p, _, gid) = up();
    let now = p.now();
    let mut record = p.gw().export(now, gid).unwrap();
    record.gateway_move = false;
    record.redirect = true;
    p.net
        .move_node(GW, addr("192.0.2.200:500"), addr("192.0.2.200:500"));
    p.net
        .add(endpoint(gateway_cfg(), 9), addr(&format!("{B_ADDR}:500")));
    let old = p.net.ep(B).adopt(now, &record).unwrap();
    let how = p
        .net
        .ep(B)
        .move_gateway(now, old, B_ADDR.parse().unwrap())
        .unwrap();
    assert_eq!(how, GatewayMove::Redirected);
    p.drive();
    p.clear_events();
    let services = crate::services::Services {
        auth: if redirected_from {
            Box::new(RedirectedFrom(crate::services::CredentialAuthenticator))
        } else {
            Box::new(crate::services::CredentialAuthenticator)
        },
        ..Default::default()
    };
    let client = Endpoint::with_services(
        EndpointConfig {
            peers: vec![client_cfg()],
            ..Default::default()
        },
        [3; 32],
        services,
    );
    // The old client's endpoint steps aside (the network routes by address): the new one
    // may be at its address.
    p.net
        .move_node(CLIENT, addr("192.0.2.99:500"), addr("192.0.2.99:500"));
    let c2 = p.net.add(client, addr(from));
    let now = p.now();
    p.net
        .ep(c2)
        .connect(now, "gw", addr(from), addr(&format!("{B_ADDR}:500")))
        .unwrap();
    p.drive();
    let new = ike_up(&p.net.nodes[B].events).expect("the new IKE SA is up at B");
    (p, old, new)
}

#[test]
fn a_redirected_clients_new_ike_sa_takes_the_old_ones_place_and_virtual_ip() {
    // From the client's address.
    let (mut p, old, new) = redirected_client_returns(true, "192.0.2.10:500");
    let vip = "10.99.0.1".parse().unwrap();
    assert_eq!(
        p.net.ep(B).leases(),
        vec![(vip, new)],
        "the client keeps its virtual IP (its traffic still comes from it)"
    );
    let b = &p.net.nodes[B].events;
    assert!(
        b.iter().any(
            |e| matches!(e, Event::IkeUp { ike, virtual_ip: Some(v), .. }
            if *ike == new && *v == IpAddr::V4(vip))
        ),
        "{b:?}"
    );
    // The redirected IKE SA was closed at once, its CHILD_SA with it (the client deletes its
    // own copy); the new one stays.
    assert!(
        b.iter().any(
            |e| matches!(e, Event::IkeDown { ike, reason: DownReason::Replaced }
                if *ike == old)
        ),
        "{b:?}"
    );
    assert_eq!(child_downs(b), 1);
    assert_eq!(p.net.ep(B).list().len(), 1);
    assert_eq!(p.net.ep(B).stats().gateway_move.replaced, 1);
    // The new IKE SA follows the next REDIRECT too (REDIRECTED_FROM implies the support).
    let now = p.now();
    assert!(p.net.ep(B).export(now, new).unwrap().redirect);
}

#[test]
fn a_new_ike_sa_without_redirected_from_or_from_another_address_replaces_nothing() {
    for (redirected_from, from) in [(false, "192.0.2.10:500"), (true, "192.0.2.11:500")] {
        let (mut p, old, new) = redirected_client_returns(redirected_from, from);
        nothing_replaced(&mut p, old, new);
    }
}

fn nothing_replaced(p: &mut Pair, old: IkeSaId, new: IkeSaId) {
    let leases = p.net.ep(B).leases();
    assert_eq!(
        leases,
        vec![
            ("10.99.0.1".parse().unwrap(), old),
            ("10.99.0.2".parse().unwrap(), new)
        ]
    );
    assert!(downs(&p.net.nodes[B].events).is_empty());
    assert_eq!(p.net.ep(B).list().len(), 2);
    assert_eq!(p.net.ep(B).stats().gateway_move.replaced, 0);
}
