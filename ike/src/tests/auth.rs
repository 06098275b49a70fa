//! IKE_AUTH: identities and AUTH through the authenticator service, the first CHILD_SA with
//! narrowing, virtual IPs from the pool.

use super::*;
use crate::config::PeerConfig;
use crate::services::{
    Auth, AuthContext, AuthError, AuthInput, Authenticator, PskAuthenticator, Services,
};
use crate::wire::Payload;

#[test]
fn handshake_brings_up_ike_and_child_with_matching_keys_and_a_virtual_ip() {
    let mut p = Pair::new(client_cfg(), gateway_cfg());
    p.connect();
    p.drive();
    let c = children(p.client_events());
    let g = children(p.gw_events());
    assert_eq!(
        (c.len(), g.len()),
        (1, 1),
        "client {:?} gw {:?}",
        p.client_events(),
        p.gw_events()
    );
    assert_keys_pair(&c[0], &g[0]);
    let vip: IpAddr = "10.99.0.1".parse().unwrap();
    assert!(p
        .client_events()
        .iter()
        .any(|e| matches!(e, Event::IkeUp { virtual_ip: Some(a), .. } if *a == vip)));
    // Narrowed: the gateway's side is its LAN, the client's side its virtual IP alone.
    assert_eq!(g[0].remote_ts, vec![crate::ts::host_ts(vip)]);
    assert_eq!(g[0].local_ts, vec![ts("10.9.0.0/24")]);
    assert_eq!(c[0].remote_ts, vec![ts("10.9.0.0/24")]);
    // A road warrior floats to 4500 even without a NAT (it may roam behind one later).
    assert!(c[0].udp_encap && g[0].udp_encap);
    assert_eq!(c[0].remote.port(), 4500);
    assert_eq!(c[0].outbound.keymat.len(), 20);
    assert_eq!(p.gw().stats().total(), 0, "nothing dropped on the way");
}

#[test]
fn a_wrong_psk_fails_on_both_sides_and_installs_nothing() {
    let mut c = client_cfg();
    c.auth = Credential::Psk(secret(b"wrong"));
    let mut p = Pair::new(c, gateway_cfg());
    p.connect();
    p.drive();
    assert!(children(p.client_events()).is_empty());
    assert!(children(p.gw_events()).is_empty());
    assert_eq!(downs(p.gw_events()), vec![DownReason::AuthFailed]);
    assert_eq!(downs(p.client_events()), vec![DownReason::AuthFailed]);
    assert!(p.gw().list().is_empty() && p.client().list().is_empty());
}

#[test]
fn a_peer_no_connection_accepts_is_refused_not_ignored() {
    // The gateway only takes one identity; the client has another.
    let mut g = gateway_cfg();
    g.remote_id = Some(Id::from_text("someone-else.test"));
    let mut p = Pair::new(client_cfg(), g);
    p.connect();
    p.drive();
    assert_eq!(downs(p.gw_events()), vec![DownReason::AuthFailed]);
    assert_eq!(
        downs(p.client_events()),
        vec![DownReason::AuthFailed],
        "told at once, not left to time out"
    );
    assert!(p.now() < Instant::from_nanos(1_000_000_000));
}

#[test]
fn traffic_selectors_are_narrowed_or_refused() {
    let mut g = gateway_cfg();
    g.pool = None;
    g.remote_ts = vec![ts("10.8.0.0/16")];
    let mut c = client_cfg();
    c.request_vip = false;
    c.local_ts = vec![ts("10.8.1.0/24"), ts("172.16.0.0/12")];
    c.remote_ts = vec![ts("10.0.0.0/8")];
    let mut p = Pair::new(c, g.clone());
    p.connect();
    p.drive();
    let gc = children(p.gw_events());
    assert_eq!(
        gc[0].remote_ts,
        vec![ts("10.8.1.0/24")],
        "intersection with 10.8.0.0/16"
    );
    assert_eq!(gc[0].local_ts, vec![ts("10.9.0.0/24")]);
    // No overlap at all: the IKE SA comes up, the CHILD_SA does not.
    let mut c = client_cfg();
    c.request_vip = false;
    c.local_ts = vec![ts("172.16.0.0/12")];
    let mut p = Pair::new(c, g);
    p.connect();
    p.drive();
    assert!(children(p.gw_events()).is_empty());
    assert!(ike_up(p.client_events()).is_some());
    assert_eq!(
        p.client().services().spis.in_use().1,
        0,
        "the refused CHILD_SA's SPI went back"
    );
}

#[test]
fn an_exhausted_pool_answers_internal_address_failure() {
    let mut g = gateway_cfg();
    g.pool = Some(Pool {
        first: "10.99.0.1".parse().unwrap(),
        count: 1,
    });
    let gw = endpoint(g, 2);
    let mut net = Net::new();
    let a = net.add(endpoint(client_cfg(), 1), "192.0.2.10:500".parse().unwrap());
    let b = net.add(endpoint(client_cfg(), 3), "192.0.2.11:500".parse().unwrap());
    let g = net.add(gw, "192.0.2.1:500".parse().unwrap());
    let gw_addr = net.nodes[g].addr;
    for i in [a, b] {
        let (local, now) = (net.nodes[i].addr, net.now);
        net.ep(i).connect(now, "gw", local, gw_addr).unwrap();
        net.drive();
    }
    let vips: Vec<_> = net.nodes[g]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::IkeUp { virtual_ip, .. } => Some(*virtual_ip),
            _ => None,
        })
        .collect();
    assert_eq!(vips, vec![Some("10.99.0.1".parse().unwrap()), None]);
    assert_eq!(net.ep(g).leases().len(), 1);
}

/// An authenticator of a kind the exchanges were not written for: it wants a payload of its
/// own carried (a stand-in for CERT) and checks that the peer sent it.
struct Stamped {
    psk: PskAuthenticator,
    carried: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

const STAMP: u16 = 40_000;

impl Authenticator for Stamped {
    fn extra_payloads(&mut self, peer: &PeerConfig, _ctx: &AuthContext<'_>) -> Vec<Payload> {
        vec![Payload::notify(STAMP, peer.local_id.data.clone())]
    }

    fn sign(
        &mut self,
        peer: &PeerConfig,
        input: &AuthInput<'_>,
        ctx: &AuthContext<'_>,
    ) -> Result<Auth, AuthError> {
        self.psk.sign(peer, input, ctx)
    }

    fn verify(
        &mut self,
        peer: &PeerConfig,
        input: &AuthInput<'_>,
        auth: &Auth,
        message: &[Payload],
        ctx: &AuthContext<'_>,
    ) -> Result<(), AuthError> {
        let stamped = message.iter().any(|p| {
            matches!(p, Payload::Notify { kind, data, .. } if *kind == STAMP && *data == input.id.data)
        });
        if !stamped {
            return Err(AuthError::NoCredential);
        }
        self.carried
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.psk.verify(peer, input, auth, message, ctx)
    }
}

fn stamped(
    peer: PeerConfig,
    seed: u8,
    n: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Endpoint {
    Endpoint::with_services(
        EndpointConfig {
            peers: vec![peer],
            ..Default::default()
        },
        [seed; 32],
        Services {
            auth: Box::new(Stamped {
                psk: PskAuthenticator,
                carried: n.clone(),
            }),
            ..Services::default()
        },
    )
}

#[test]
fn a_new_authenticator_needs_no_change_to_the_exchanges() {
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut p = Pair::with_endpoints(stamped(client_cfg(), 1, &n), stamped(gateway_cfg(), 2, &n));
    p.connect();
    p.drive();
    assert_eq!(children(p.client_events()).len(), 1);
    assert_eq!(
        n.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "each side found the other's payload"
    );
    // Against a plain PSK gateway, which sends no stamp, the stamped client refuses.
    let mut p = Pair::with_endpoints(stamped(client_cfg(), 1, &n), endpoint(gateway_cfg(), 2));
    p.connect();
    p.drive();
    assert_eq!(downs(p.client_events()), vec![DownReason::AuthFailed]);
}

#[test]
fn lost_packets_are_retransmitted() {
    let mut p = Pair::new(client_cfg(), gateway_cfg());
    // The first IKE_AUTH request, and the first IKE_AUTH response (to its retransmission).
    p.net.fault = Some(Box::new(|d| {
        if d.n == 1 {
            crate::testing::Fate::Drop
        } else {
            crate::testing::Fate::Deliver
        }
    }));
    p.connect();
    p.drive();
    assert_eq!(children(p.client_events()).len(), 1);
    assert_eq!(
        children(p.gw_events()).len(),
        1,
        "the replayed request was answered from cache, not processed twice"
    );
    assert!(
        p.now() >= Instant::ZERO.saturating_add(ms(4_000)),
        "a retransmission timeout passed"
    );
}
