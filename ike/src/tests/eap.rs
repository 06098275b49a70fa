//! EAP in IKE_AUTH (RFC 7296 2.16) on the virtual-time network: a gateway authenticated by
//! its certificate, the client by EAP-MSCHAPv2 (roamgate's own EAP peer), checked against a
//! local user file or through a RADIUS server. The RADIUS server here is a sans-IO fake
//! (`FakeRadius`: RFC 3579 framing, the real `LocalMschapv2` behind it, MPPE keys as RFC 2548
//! encrypts them) that can also reject, stay silent, sign its answers wrongly or hold them
//! back. Every rejection is counted by its reason and ends the gateway's IKE SA with it.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::certs::{cred, endpoint_with, gw_leaf, root, rw_leaf, Alg, JAN_2026};
use super::*;
use crate::eap::mschapv2::{nt_hash, LocalMschapv2, UserDb};
use crate::eap::radius::{self, attr, RadiusClient, RadiusConfig};
use crate::eap::{EapServer, EapService, Step};
use crate::ids::IkeSpi;
use crate::services::{AuthError, PeerEku, Services};

const SECRET: &[u8] = b"radius-shared-secret";

fn users() -> Arc<UserDb> {
    Arc::new(UserDb::parse(&format!("{}\n", UserDb::entry("alice", "correct horse"))).unwrap())
}

fn gw_services(server: Box<dyn EapServer>) -> Services {
    Services {
        eap: Some(EapService {
            connections: BTreeSet::from(["rw".to_string()]),
            server: Some(server),
            clients: Default::default(),
        }),
        ..Services::default()
    }
}

fn client_services(user: &str, password: &str) -> Services {
    Services {
        eap: Some(EapService {
            clients: [("gw".to_string(), (user.to_string(), nt_hash(password)))].into(),
            ..EapService::default()
        }),
        ..Services::default()
    }
}

fn eap_pair(user: &str, password: &str, server: Box<dyn EapServer>) -> Pair {
    let ca = root("root");
    let mut c = client_cfg();
    c.auth = cred(
        Alg::P256,
        &ca,
        &[],
        &rw_leaf(),
        &[&ca],
        PeerEku::Server,
        false,
    );
    let mut g = gateway_cfg();
    g.auth = cred(
        Alg::P256,
        &ca,
        &[],
        &gw_leaf(),
        &[&ca],
        PeerEku::Client,
        false,
    );
    Pair::with_endpoints(
        endpoint_with(c, 1, JAN_2026, client_services(user, password)),
        endpoint_with(g, 2, JAN_2026, gw_services(server)),
    )
}

fn radius_client() -> Box<RadiusClient> {
    Box::new(RadiusClient::new(RadiusConfig {
        secret: crate::config::secret(SECRET),
        nas_identifier: "gw.roamgate.test".into(),
        timeout: Duration::from_secs(2),
        retries: 2,
    }))
}

fn assert_up_as(p: &mut Pair, user: &str) {
    let (c, g) = (children(p.client_events()), children(p.gw_events()));
    let stats = p.gw().stats().named();
    assert_eq!(
        (c.len(), g.len()),
        (1, 1),
        "client {:?} gw {:?} gw stats {stats:?}",
        p.client_events(),
        p.gw_events(),
    );
    assert_keys_pair(&c[0], &g[0]);
    let now = p.now();
    let v = p.gw().view(now);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].state, "ESTABLISHED");
    assert_eq!(v[0].eap_identity.as_deref(), Some(user));
    assert_eq!(v[0].remote_id, "rw.roamgate.test");
    assert_eq!(p.client().view(now)[0].eap_identity.as_deref(), Some(user));
}

/// The gateway refused the client for `why` (counted, its IKE SA down with the reason and
/// the identity the client gave), the client gave up, nothing was installed.
fn assert_refused(p: &mut Pair, why: AuthError, identity: Option<&str>) {
    assert!(children(p.gw_events()).is_empty() && children(p.client_events()).is_empty());
    assert_eq!(
        downs(p.gw_events()),
        vec![DownReason::EapFailed {
            identity: identity.map(str::to_string),
            why
        }],
        "{:?}",
        p.gw_events()
    );
    assert_eq!(downs(p.client_events()), vec![DownReason::AuthFailed]);
    assert_eq!(
        p.gw().stats().get_auth(why),
        1,
        "{:?}",
        p.gw().stats().named()
    );
    assert!(p.gw().stats().named().contains(&(why.name(), 1)));
    assert_eq!(p.gw().footprint().ike_sas, 0);
}

#[test]
fn local_users_eap_mschapv2_brings_the_tunnel_up() {
    let mut p = eap_pair(
        "alice",
        "correct horse",
        Box::new(LocalMschapv2::new(users())),
    );
    p.connect();
    p.drive();
    assert_up_as(&mut p, "alice");
    // IKE_SA_INIT, then IKE_AUTH: first, Identity, MS-CHAPv2 Response, Success ack, AUTH
    // (messages: one may cross in several RFC 7383 fragments).
    assert_eq!(messages(&p.to_gw()), 6);
}

/// The distinct IKE messages among `d` (each request once, whatever its fragments).
fn messages(d: &[crate::testing::Datagram]) -> usize {
    let ids: std::collections::BTreeSet<(u8, u32)> = d
        .iter()
        .filter_map(|d| {
            // Port 4500 puts the non-ESP marker before the header.
            let b = d.data.strip_prefix(&[0u8; 4][..]).unwrap_or(&d.data);
            crate::wire::Header::parse(b)
                .ok()
                .map(|h| (h.exchange, h.message_id))
        })
        .collect();
    ids.len()
}

#[test]
fn local_users_wrong_password_is_refused_for_that_reason() {
    let mut p = eap_pair(
        "alice",
        "battery staple",
        Box::new(LocalMschapv2::new(users())),
    );
    p.connect();
    p.drive();
    assert_refused(&mut p, AuthError::EapWrongPassword, Some("alice"));
}

#[test]
fn local_users_unknown_user_is_refused_for_that_reason() {
    let mut p = eap_pair(
        "mallory",
        "correct horse",
        Box::new(LocalMschapv2::new(users())),
    );
    p.connect();
    p.drive();
    assert_refused(&mut p, AuthError::EapUnknownUser, Some("mallory"));
}

#[test]
fn a_peer_that_skips_eap_on_an_eap_connection_is_refused() {
    // The client authenticates with its certificate; the gateway wants EAP from it.
    let ca = root("root");
    let mut c = client_cfg();
    c.auth = cred(
        Alg::P256,
        &ca,
        &[],
        &rw_leaf(),
        &[&ca],
        PeerEku::Server,
        false,
    );
    let mut g = gateway_cfg();
    g.auth = cred(
        Alg::P256,
        &ca,
        &[],
        &gw_leaf(),
        &[&ca],
        PeerEku::Client,
        false,
    );
    let mut p = Pair::with_endpoints(
        endpoint_with(c, 1, JAN_2026, Services::default()),
        endpoint_with(
            g,
            2,
            JAN_2026,
            gw_services(Box::new(LocalMschapv2::new(users()))),
        ),
    );
    p.connect();
    p.drive();
    assert!(children(p.gw_events()).is_empty());
    assert_eq!(downs(p.client_events()), vec![DownReason::AuthFailed]);
    assert_eq!(p.gw().stats().get_auth(AuthError::EapRequired), 1);
}

/// What the fake RADIUS server does with requests.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Serve,
    Reject,
    Silent,
    /// Answers as `Serve` with a Message-Authenticator that does not check (the Response
    /// Authenticator over it does).
    BadMessageAuthenticator,
    /// Answers as `Serve` but holds each answer back until released.
    Hold,
}

/// A RADIUS server with EAP-MSCHAPv2 (RFC 3579) over the real `LocalMschapv2`.
struct FakeRadius {
    mode: Mode,
    inner: LocalMschapv2,
    next_session: u64,
    rng: ChaCha20Rng,
    /// Access-Requests received (retransmissions included), and the Message-Authenticator
    /// of each checked.
    requests: Vec<Vec<u8>>,
    held: Vec<Vec<u8>>,
}

impl FakeRadius {
    fn new(mode: Mode) -> Rc<RefCell<FakeRadius>> {
        Rc::new(RefCell::new(FakeRadius {
            mode,
            inner: LocalMschapv2::new(users()),
            next_session: 1,
            rng: ChaCha20Rng::from_seed([9; 32]),
            requests: Vec::new(),
            held: Vec::new(),
        }))
    }

    fn answer(&mut self, now: Instant, req: Vec<u8>) -> Vec<Vec<u8>> {
        assert_eq!(req[0], radius::code::ACCESS_REQUEST);
        // The request's Message-Authenticator checks (HMAC-MD5 with its value zeroed).
        let attrs = radius::attributes(&req).unwrap();
        let ma = attrs
            .iter()
            .find(|(k, _)| *k == attr::MESSAGE_AUTHENTICATOR)
            .unwrap()
            .1
            .to_vec();
        let at = req
            .windows(18)
            .position(|w| w[0] == 80 && w[1] == 18)
            .unwrap()
            + 2;
        let mut zeroed = req.clone();
        zeroed[at..at + 16].fill(0);
        let mut m = <hmac::Hmac<md5::Md5> as hmac::Mac>::new_from_slice(SECRET).unwrap();
        hmac::Mac::update(&mut m, &zeroed);
        assert_eq!(hmac::Mac::finalize(m).into_bytes().to_vec(), ma);
        let first_time = !self.requests.contains(&req);
        self.requests.push(req.clone());
        if self.mode == Mode::Silent || !first_time {
            return vec![];
        }
        let id = req[1];
        let ra: [u8; 16] = req[4..20].try_into().unwrap();
        let get = |k: u8| -> Vec<u8> {
            attrs
                .iter()
                .filter(|(t, _)| *t == k)
                .flat_map(|(_, v)| v.iter().copied())
                .collect()
        };
        let user = String::from_utf8(get(attr::USER_NAME)).unwrap();
        assert_eq!(get(attr::NAS_IDENTIFIER), b"gw.roamgate.test");
        let eap = get(attr::EAP_MESSAGE);
        let state = get(attr::STATE);
        let (code, attrs) = if self.mode == Mode::Reject {
            (radius::code::ACCESS_REJECT, vec![])
        } else {
            let sid = if state.is_empty() {
                self.next_session += 1;
                self.next_session
            } else {
                u64::from_be_bytes(state.clone().try_into().unwrap())
            };
            let ike = IkeSaId(IkeSpi(sid));
            let step = if state.is_empty() {
                self.inner.begin(now, ike, &user, &eap, &mut self.rng)
            } else {
                self.inner.respond(now, ike, &eap, &mut self.rng)
            };
            match step {
                Step::Request(r) => (
                    radius::code::ACCESS_CHALLENGE,
                    vec![
                        (attr::EAP_MESSAGE, r),
                        (attr::STATE, sid.to_be_bytes().to_vec()),
                    ],
                ),
                Step::Success { msk, packet, .. } => (
                    radius::code::ACCESS_ACCEPT,
                    vec![
                        (attr::USER_NAME, user.into_bytes()),
                        (attr::EAP_MESSAGE, packet),
                        (
                            attr::VENDOR_SPECIFIC,
                            radius::ms_vendor(
                                radius::MS_MPPE_RECV_KEY,
                                &radius::encrypt_mppe_key(SECRET, &ra, [0x80, 1], &msk[..16]),
                            ),
                        ),
                        (
                            attr::VENDOR_SPECIFIC,
                            radius::ms_vendor(
                                radius::MS_MPPE_SEND_KEY,
                                &radius::encrypt_mppe_key(SECRET, &ra, [0x80, 2], &msk[16..32]),
                            ),
                        ),
                    ],
                ),
                Step::Failure { packet, .. } => (
                    radius::code::ACCESS_REJECT,
                    vec![(attr::EAP_MESSAGE, packet)],
                ),
                Step::Pending => unreachable!(),
            }
        };
        let mut out = radius::seal_response(SECRET, &ra, code, id, &attrs);
        match self.mode {
            Mode::BadMessageAuthenticator => {
                let at = out
                    .windows(18)
                    .position(|w| w[0] == 80 && w[1] == 18)
                    .unwrap()
                    + 2;
                out[at] ^= 1;
                // The Response Authenticator over the spoiled packet, so only the
                // Message-Authenticator is wrong.
                let mut with_req = out.clone();
                with_req[4..20].copy_from_slice(&ra);
                use md5::Digest;
                let d = md5::Md5::new().chain_update(&with_req).chain_update(SECRET);
                out[4..20].copy_from_slice(&d.finalize());
                vec![out]
            }
            Mode::Hold => {
                self.held.push(out);
                vec![]
            }
            _ => vec![out],
        }
    }
}

fn with_radius(p: &mut Pair, r: &Rc<RefCell<FakeRadius>>) {
    let r = r.clone();
    p.net.eap_server = Some(Box::new(move |node, now, d| {
        assert_eq!(node, GW);
        r.borrow_mut().answer(now, d)
    }));
}

fn counter(p: &mut Pair, name: &str) -> u64 {
    p.gw()
        .eap_counters()
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, v)| *v)
}

#[test]
fn radius_eap_mschapv2_brings_the_tunnel_up_with_the_servers_msk() {
    let r = FakeRadius::new(Mode::Serve);
    let mut p = eap_pair("alice", "correct horse", radius_client());
    with_radius(&mut p, &r);
    p.connect();
    p.drive();
    assert_up_as(&mut p, "alice");
    // Identity, MS-CHAPv2 Response, Success ack: one Access-Request each, none twice.
    assert_eq!(r.borrow().requests.len(), 3);
    assert_eq!(counter(&mut p, "radius_requests"), 3);
    assert_eq!(counter(&mut p, "radius_accepts"), 1);
    assert_eq!(counter(&mut p, "radius_challenges"), 2);
}

#[test]
fn radius_wrong_password_and_reject_are_refused_as_a_radius_reject() {
    for (mode, password) in [
        (Mode::Serve, "battery staple"),
        (Mode::Reject, "correct horse"),
    ] {
        let r = FakeRadius::new(mode);
        let mut p = eap_pair("alice", password, radius_client());
        with_radius(&mut p, &r);
        p.connect();
        p.drive();
        assert_refused(&mut p, AuthError::EapRadiusReject, Some("alice"));
        assert_eq!(counter(&mut p, "radius_rejects"), 1, "{mode:?}");
    }
}

#[test]
fn radius_timeout_refuses_after_the_retries_and_never_sends_twice_per_ike_retransmission() {
    let r = FakeRadius::new(Mode::Silent);
    let mut p = eap_pair("alice", "correct horse", radius_client());
    with_radius(&mut p, &r);
    p.connect();
    p.drive();
    assert_refused(&mut p, AuthError::EapRadiusTimeout, Some("alice"));
    // The request and its 2 retries (2 s apart); the client's IKE_AUTH retransmission at 4 s
    // was dropped while the gateway waited, not passed on.
    assert_eq!(r.borrow().requests.len(), 3);
    assert_eq!(counter(&mut p, "radius_retransmits"), 2);
    assert_eq!(counter(&mut p, "radius_timeouts"), 1);
}

#[test]
fn radius_answers_with_a_bad_message_authenticator_are_dropped() {
    let r = FakeRadius::new(Mode::BadMessageAuthenticator);
    let mut p = eap_pair("alice", "correct horse", radius_client());
    with_radius(&mut p, &r);
    p.connect();
    p.drive();
    // Every answer dropped: as if the server never answered.
    assert_refused(&mut p, AuthError::EapRadiusTimeout, Some("alice"));
    assert_eq!(counter(&mut p, "radius_bad_authenticator"), 1);
    assert_eq!(counter(&mut p, "radius_challenges"), 0);
}

#[test]
fn ike_retransmissions_while_radius_is_pending_wait_for_the_one_answer() {
    let r = FakeRadius::new(Mode::Hold);
    let mut p = eap_pair("alice", "correct horse", radius_client());
    let rc = r.clone();
    with_radius(&mut p, &r);
    p.connect();
    // Each answer is released 5 s late: the client retransmits its IKE_AUTH request in the
    // meantime (after 4 s), and so does the RADIUS client (after 2 s and 4 s).
    for _ in 0..3 {
        p.net.run_for(Duration::from_millis(5000));
        let held: Vec<Vec<u8>> = std::mem::take(&mut rc.borrow_mut().held);
        assert_eq!(held.len(), 1, "one answer per round");
        let now = p.now();
        for a in held {
            p.gw().handle_eap_datagram(now, &a);
        }
    }
    p.drive();
    assert_up_as(&mut p, "alice");
    let gw_gets: HashMap<Vec<u8>, usize> = p.to_gw().iter().fold(HashMap::new(), |mut m, d| {
        *m.entry(d.data.clone()).or_default() += 1;
        m
    });
    // The client did retransmit while the gateway waited ...
    assert!(gw_gets.values().any(|n| *n > 1), "{gw_gets:?}");
    // ... and the server saw 3 distinct requests (the rest RADIUS retransmissions of them).
    let distinct: BTreeSet<Vec<u8>> = r.borrow().requests.iter().cloned().collect();
    assert_eq!(distinct.len(), 3);
    assert_eq!(
        counter(&mut p, "radius_requests"),
        3,
        "a retransmitted IKE_AUTH request made no new Access-Request"
    );
}

#[test]
fn the_eap_identity_travels_in_the_record_and_an_adopter_shows_it() {
    let mut p = eap_pair(
        "alice",
        "correct horse",
        Box::new(LocalMschapv2::new(users())),
    );
    p.connect();
    p.drive();
    assert_up_as(&mut p, "alice");
    let now = p.now();
    let gid = p.gw().list()[0].0;
    let record = p.gw().export(now, gid).unwrap();
    assert_eq!(record.eap_identity.as_deref(), Some("alice"));
    let cid = p.client().list()[0].0;
    assert_eq!(
        p.client().export(now, cid).unwrap().eap_identity.as_deref(),
        Some("alice"),
        "the EAP peer's own record keeps who it logged in as"
    );
    let bytes = record.to_bytes().unwrap();
    let back = crate::record::IkeSaRecord::from_bytes(&bytes).unwrap();
    assert_eq!(back, record);
    // Another node adopts it (an HA standby, a cluster node): per-user policy still sees
    // who the peer is.
    let mut adopter = endpoint(gateway_cfg(), 9);
    let id = adopter.adopt(now, &back).unwrap();
    assert_eq!(adopter.peer_identity(id).as_deref(), Some("alice"));
    assert_eq!(adopter.view(now)[0].eap_identity.as_deref(), Some("alice"));
}
