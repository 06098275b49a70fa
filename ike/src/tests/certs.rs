//! Certificate authentication on the virtual-time network: every signature scheme in both
//! roles, chains with an intermediate, CERTREQ, and every reason a peer is refused (each
//! counted by name, the initiator told AUTHENTICATION_FAILED).
//!
//! Certificates are made at test time with `rcgen` (so validity dates, EKUs, SANs and CRLs
//! are exactly what each case needs, with no files to go stale). ring cannot generate RSA
//! keys, so the two RSA keys are fixtures (`data/rsa2048-*.pem`, made by `openssl genpkey`);
//! so is a self-signed P-521 certificate for the curve case (`openssl req -x509`: neither ring
//! nor rcgen on ring does P-521).

use std::sync::Arc;

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertificateRevocationListParams,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
    PKCS_ED25519, PKCS_RSA_SHA256,
};
use rustls_pki_types::CertificateDer;

use super::*;
use crate::config::Pubkey;
use crate::services::pubkey::{self, hash, method};
use crate::services::{
    Auth, AuthContext, AuthError, AuthInput, Authenticator, CredentialAuthenticator, LocalCert,
    PeerEku, Services, SigningKey, TrustStore,
};
use crate::wire::{self, id_type, Payload};

const RSA_A: &str = include_str!("data/rsa2048-a.pem");
const RSA_B: &str = include_str!("data/rsa2048-b.pem");
const P521_EE: &[u8] = include_bytes!("data/p521-ee.pem");

/// 2026-01-01T00:00:00Z: the virtual clock's zero in these tests.
pub(super) const JAN_2026: u64 = 1_767_225_600;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Alg {
    RsaA,
    RsaB,
    P256,
    P384,
    Ed25519,
}

fn key(alg: Alg) -> KeyPair {
    match alg {
        Alg::RsaA => KeyPair::from_pem_and_sign_algo(RSA_A, &PKCS_RSA_SHA256).unwrap(),
        Alg::RsaB => KeyPair::from_pem_and_sign_algo(RSA_B, &PKCS_RSA_SHA256).unwrap(),
        Alg::P256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap(),
        Alg::P384 => KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap(),
        Alg::Ed25519 => KeyPair::generate_for(&PKCS_ED25519).unwrap(),
    }
}

fn name(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::OrganizationName, "roamgate test");
    d.push(DnType::CommonName, cn);
    d
}

/// A CA (root or intermediate): its certificate and what issues with it.
pub(super) struct Ca {
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = name(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = date_time_ymd(2025, 1, 1);
    p.not_after = date_time_ymd(2030, 1, 1);
    p
}

pub(super) fn root(cn: &str) -> Ca {
    let k = key(Alg::P256);
    let p = ca_params(cn);
    let der = p.self_signed(&k).unwrap().der().clone();
    Ca {
        der,
        issuer: Issuer::new(p, k),
    }
}

fn intermediate(parent: &Ca, cn: &str) -> Ca {
    let k = key(Alg::P384);
    let p = ca_params(cn);
    let der = p.signed_by(&k, &parent.issuer).unwrap().der().clone();
    Ca {
        der,
        issuer: Issuer::new(p, k),
    }
}

/// What an end-entity certificate carries.
pub(super) struct Leaf {
    sans: Vec<SanType>,
    ekus: Vec<ExtendedKeyUsagePurpose>,
    from: (i32, u8, u8),
    until: (i32, u8, u8),
    serial: u64,
}

fn leaf(sans: Vec<SanType>, ekus: Vec<ExtendedKeyUsagePurpose>) -> Leaf {
    Leaf {
        sans,
        ekus,
        from: (2025, 6, 1),
        until: (2027, 1, 1),
        serial: 7,
    }
}

fn dns(s: &str) -> SanType {
    SanType::DnsName(s.try_into().unwrap())
}

fn mail(s: &str) -> SanType {
    SanType::Rfc822Name(s.try_into().unwrap())
}

fn issue(
    ca: &Ca,
    l: &Leaf,
    subject: &impl rcgen::PublicKeyData,
    cn: &str,
) -> CertificateDer<'static> {
    let mut p = CertificateParams::default();
    p.distinguished_name = name(cn);
    p.subject_alt_names = l.sans.clone();
    p.extended_key_usages = l.ekus.clone();
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = date_time_ymd(l.from.0, l.from.1, l.from.2);
    p.not_after = date_time_ymd(l.until.0, l.until.1, l.until.2);
    p.serial_number = Some(SerialNumber::from(l.serial));
    p.signed_by(subject, &ca.issuer).unwrap().der().clone()
}

/// A connection's certificate credential: a leaf for `alg` from `ca` (and the intermediates
/// to send), trusting `trusted`.
#[allow(clippy::too_many_arguments)]
pub(super) fn cred(
    alg: Alg,
    ca: &Ca,
    sent_cas: &[&Ca],
    l: &Leaf,
    trusted: &[&Ca],
    eku: PeerEku,
    rsa_pss: bool,
) -> Credential {
    let k = key(alg);
    let ee = issue(ca, l, &k, "ee");
    let mut chain = vec![ee];
    chain.extend(sent_cas.iter().map(|c| c.der.clone()));
    let signing = SigningKey::from_pem(k.serialize_pem().as_bytes()).unwrap();
    let mut trust = TrustStore::default();
    for t in trusted {
        trust.add_ca_der(&t.der).unwrap();
    }
    Credential::Pubkey(Arc::new(Pubkey {
        local: Some(LocalCert::new(chain, signing).unwrap()),
        trust,
        peer_eku: eku,
        rsa_pss,
        allow_sha1: false,
        cert_only_if_asked: false,
    }))
}

pub(super) fn gw_leaf() -> Leaf {
    leaf(
        vec![dns("gw.roamgate.test")],
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 5, 5, 8, 2, 2]),
        ],
    )
}

pub(super) fn rw_leaf() -> Leaf {
    leaf(
        vec![dns("rw.roamgate.test")],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )
}

fn endpoint_at(peer: PeerConfig, seed: u8, unix: u64) -> Endpoint {
    endpoint_with(peer, seed, unix, Services::default())
}

pub(super) fn endpoint_with(peer: PeerConfig, seed: u8, unix: u64, services: Services) -> Endpoint {
    Endpoint::with_services(
        EndpointConfig {
            peers: vec![peer],
            unix_time_at_zero: Duration::from_secs(unix),
            ..Default::default()
        },
        [seed; 32],
        services,
    )
}

/// Runs a handshake between a client and a gateway with these credentials.
fn handshake(client: Credential, gw: Credential) -> Pair {
    handshake_at(client, gw, JAN_2026, JAN_2026)
}

fn handshake_at(client: Credential, gw: Credential, client_unix: u64, gw_unix: u64) -> Pair {
    let mut c = client_cfg();
    c.auth = client;
    let mut g = gateway_cfg();
    g.auth = gw;
    let mut p = Pair::with_endpoints(endpoint_at(c, 1, client_unix), endpoint_at(g, 2, gw_unix));
    p.connect();
    p.drive();
    p
}

fn assert_up(p: &mut Pair) {
    let (c, g) = (children(p.client_events()), children(p.gw_events()));
    let (gs, cs) = (p.gw().stats().named(), p.client().stats().named());
    assert_eq!(
        (c.len(), g.len()),
        (1, 1),
        "client {:?} gw {:?} gw stats {gs:?} client stats {cs:?}",
        p.client_events(),
        p.gw_events(),
    );
    assert_keys_pair(&c[0], &g[0]);
}

/// The gateway refused the client for `why` and told it so; nothing was installed.
fn assert_gw_refused(p: &mut Pair, why: AuthError) {
    assert!(children(p.gw_events()).is_empty() && children(p.client_events()).is_empty());
    assert_eq!(downs(p.client_events()), vec![DownReason::AuthFailed]);
    assert_eq!(
        p.gw().stats().get_auth(why),
        1,
        "{:?}",
        p.gw().stats().named()
    );
    assert!(p.gw().stats().named().contains(&(why.name(), 1)));
}

/// The client refused the gateway for `why`.
fn assert_client_refused(p: &mut Pair, why: AuthError) {
    assert!(children(p.client_events()).is_empty());
    assert_eq!(downs(p.client_events()), vec![DownReason::AuthFailed]);
    assert_eq!(
        p.client().stats().get_auth(why),
        1,
        "{:?}",
        p.client().stats().named()
    );
}

fn both(client: Alg, gw: Alg, pss: bool) -> Pair {
    let ca = root("root");
    let c = cred(client, &ca, &[], &rw_leaf(), &[&ca], PeerEku::Server, pss);
    let g = cred(gw, &ca, &[], &gw_leaf(), &[&ca], PeerEku::Client, pss);
    handshake(c, g)
}

#[test]
fn rsa_pkcs1_rfc7427_in_both_roles() {
    let mut p = both(Alg::RsaA, Alg::RsaB, false);
    assert_up(&mut p);
    assert_eq!(p.gw().stats().total(), 0);
}

#[test]
fn rsa_pss_rfc7427_in_both_roles() {
    let mut p = both(Alg::RsaB, Alg::RsaA, true);
    assert_up(&mut p);
}

#[test]
fn ecdsa_p256_in_both_roles() {
    let mut p = both(Alg::P256, Alg::P256, false);
    assert_up(&mut p);
}

#[test]
fn ecdsa_p384_in_both_roles() {
    let mut p = both(Alg::P384, Alg::P384, false);
    assert_up(&mut p);
}

#[test]
fn ed25519_in_both_roles() {
    let mut p = both(Alg::Ed25519, Alg::Ed25519, false);
    assert_up(&mut p);
}

#[test]
fn mixed_key_types_meet() {
    let mut p = both(Alg::P256, Alg::RsaA, false);
    assert_up(&mut p);
    let mut p = both(Alg::RsaB, Alg::Ed25519, true);
    assert_up(&mut p);
}

#[test]
fn a_chain_with_an_intermediate_validates_against_the_root_alone() {
    let ca = root("root");
    let sub = intermediate(&ca, "sub");
    let c = cred(
        Alg::P256,
        &sub,
        &[&sub],
        &rw_leaf(),
        &[&ca],
        PeerEku::Server,
        false,
    );
    let g = cred(
        Alg::RsaA,
        &sub,
        &[&sub],
        &gw_leaf(),
        &[&ca],
        PeerEku::Client,
        false,
    );
    let mut p = handshake(c, g);
    assert_up(&mut p);
    // Without the intermediate in the chain the path does not build.
    let c = cred(
        Alg::P256,
        &sub,
        &[],
        &rw_leaf(),
        &[&ca],
        PeerEku::Server,
        false,
    );
    let g = cred(
        Alg::RsaA,
        &sub,
        &[&sub],
        &gw_leaf(),
        &[&ca],
        PeerEku::Client,
        false,
    );
    let mut p = handshake(c, g);
    assert_gw_refused(&mut p, AuthError::UnknownCa);
}

#[test]
fn signature_hash_algorithms_and_certreq_travel_in_ike_sa_init() {
    let ca = root("root");
    let mut p = both(Alg::P256, Alg::P256, false);
    assert_up(&mut p);
    let _ = ca;
    // The client's IKE_SA_INIT request (the first datagram to the gateway) announces hashes.
    let first = &p.to_gw()[0].data;
    let h = wire::Header::parse(first).unwrap();
    let chain = wire::parse_chain(first, wire::HEADER_LEN, h.next_payload).unwrap();
    let announced =
        crate::exchange::find_notify(&chain.payloads, wire::notify::SIGNATURE_HASH_ALGORITHMS)
            .map(pubkey::decode_hashes)
            .unwrap();
    assert!(announced.contains(&hash::SHA2_256) && !announced.contains(&hash::SHA1));
    // The gateway's answer names its CA in a CERTREQ (the SHA-1 of the CA's SPKI).
    let answer = p
        .net
        .log
        .iter()
        .find(|d| d.from == GW)
        .unwrap()
        .data
        .clone();
    let h = wire::Header::parse(&answer).unwrap();
    let chain = wire::parse_chain(&answer, wire::HEADER_LEN, h.next_payload).unwrap();
    let req = chain
        .payloads
        .iter()
        .find_map(|x| match x {
            Payload::CertReq { encoding: 4, data } => Some(data.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(req.len(), 20);
}

#[test]
fn a_psk_connection_sends_nothing_new_in_ike_sa_init() {
    let mut p = Pair::new(client_cfg(), gateway_cfg());
    p.connect();
    p.drive();
    let first = &p.to_gw()[0].data;
    let h = wire::Header::parse(first).unwrap();
    let chain = wire::parse_chain(first, wire::HEADER_LEN, h.next_payload).unwrap();
    assert!(
        crate::exchange::find_notify(&chain.payloads, wire::notify::SIGNATURE_HASH_ALGORITHMS)
            .is_none()
    );
}

/// Extra payloads for a credential, given what the peer asked for.
fn extras(c: &Credential, certreqs: &[Vec<u8>]) -> Vec<Payload> {
    let mut peer = client_cfg();
    peer.auth = c.clone();
    CredentialAuthenticator.extra_payloads(
        &peer,
        &AuthContext {
            unix_time: JAN_2026,
            peer_hashes: &[],
            certreqs,
        },
    )
}

fn certs_in(v: &[Payload]) -> usize {
    v.iter()
        .filter(|p| matches!(p, Payload::Cert { encoding: 4, .. }))
        .count()
}

#[test]
fn certreq_is_honoured() {
    let ca = root("root");
    let sub = intermediate(&ca, "sub");
    let mut c = cred(
        Alg::P256,
        &sub,
        &[&sub],
        &rw_leaf(),
        &[&ca],
        PeerEku::Server,
        false,
    );
    // Sent always by default: iOS asks for nothing yet needs the certificate.
    assert_eq!(certs_in(&extras(&c, &[])), 2);
    if let Credential::Pubkey(k) = &mut c {
        Arc::get_mut(k).unwrap().cert_only_if_asked = true;
    }
    assert_eq!(certs_in(&extras(&c, &[])), 0, "not asked, not sent");
    let mut root_only = TrustStore::default();
    root_only.add_ca_der(&ca.der).unwrap();
    assert_eq!(
        certs_in(&extras(&c, &[root_only.certreq_data()])),
        2,
        "asked by the root: the chain with its intermediate"
    );
    let mut sub_only = TrustStore::default();
    sub_only.add_ca_der(&sub.der).unwrap();
    assert_eq!(
        certs_in(&extras(&c, &[sub_only.certreq_data()])),
        1,
        "the peer names the intermediate: it has it, the end entity alone"
    );
    // Our own CERTREQ names our CA.
    let own = extras(&c, &[]);
    assert!(own.iter().any(
        |p| matches!(p, Payload::CertReq { encoding: 4, data } if *data == root_only.certreq_data())
    ));
    assert!(root_only.names_one_of_ours(&root_only.certreq_data()));
    assert!(!root_only.names_one_of_ours(&sub_only.certreq_data()));
}

#[test]
fn a_client_that_sends_only_when_asked_is_asked_by_the_gateway() {
    let ca = root("root");
    let mut c = cred(
        Alg::P256,
        &ca,
        &[],
        &rw_leaf(),
        &[&ca],
        PeerEku::Server,
        false,
    );
    if let Credential::Pubkey(k) = &mut c {
        Arc::get_mut(k).unwrap().cert_only_if_asked = true;
    }
    let g = cred(
        Alg::P256,
        &ca,
        &[],
        &gw_leaf(),
        &[&ca],
        PeerEku::Client,
        false,
    );
    let mut p = handshake(c, g);
    assert_up(&mut p);
}

// Every reason a peer is refused.

#[test]
fn refused_unknown_ca() {
    let ca = root("root");
    let other = root("other");
    let c = cred(
        Alg::P256,
        &other,
        &[],
        &rw_leaf(),
        &[&ca],
        PeerEku::Server,
        false,
    );
    let g = cred(
        Alg::P256,
        &ca,
        &[],
        &gw_leaf(),
        &[&ca],
        PeerEku::Client,
        false,
    );
    let mut p = handshake(c, g);
    assert_gw_refused(&mut p, AuthError::UnknownCa);
}

#[test]
fn refused_expired_and_not_yet_valid() {
    let ca = root("root");
    let mut old = rw_leaf();
    old.until = (2025, 12, 1);
    let c = cred(Alg::P256, &ca, &[], &old, &[&ca], PeerEku::Server, false);
    let g = cred(
        Alg::P256,
        &ca,
        &[],
        &gw_leaf(),
        &[&ca],
        PeerEku::Client,
        false,
    );
    let mut p = handshake(c, g);
    assert_gw_refused(&mut p, AuthError::Expired);

    let mut young = rw_leaf();
    young.from = (2026, 6, 1);
    let c = cred(Alg::P256, &ca, &[], &young, &[&ca], PeerEku::Server, false);
    let g = cred(
        Alg::P256,
        &ca,
        &[],
        &gw_leaf(),
        &[&ca],
        PeerEku::Client,
        false,
    );
    let mut p = handshake(c, g);
    assert_gw_refused(&mut p, AuthError::NotYetValid);

    // The same certificate is fine once the caller's clock says so: time is an input.
    let c = cred(Alg::P256, &ca, &[], &young, &[&ca], PeerEku::Server, false);
    let g = cred(
        Alg::P256,
        &ca,
        &[],
        &gw_leaf(),
        &[&ca],
        PeerEku::Client,
        false,
    );
    let mut p = handshake_at(c, g, JAN_2026 + 200 * 86_400, JAN_2026 + 200 * 86_400);
    assert_up(&mut p);
}

#[test]
fn refused_missing_eku_on_either_side() {
    let ca = root("root");
    // A client certificate with only serverAuth where clientAuth is required.
    let l = leaf(
        vec![dns("rw.roamgate.test")],
        vec![ExtendedKeyUsagePurpose::ServerAuth],
    );
    let c = cred(Alg::P256, &ca, &[], &l, &[&ca], PeerEku::Server, false);
    let g = cred(
        Alg::P256,
        &ca,
        &[],
        &gw_leaf(),
        &[&ca],
        PeerEku::Client,
        false,
    );
    let mut p = handshake(c, g);
    assert_gw_refused(&mut p, AuthError::MissingEku);

    // A gateway certificate for code signing only: the client refuses the gateway.
    let l = leaf(
        vec![dns("gw.roamgate.test")],
        vec![ExtendedKeyUsagePurpose::CodeSigning],
    );
    let c = cred(
        Alg::P256,
        &ca,
        &[],
        &rw_leaf(),
        &[&ca],
        PeerEku::Server,
        false,
    );
    let g = cred(Alg::P256, &ca, &[], &l, &[&ca], PeerEku::Client, false);
    let mut p = handshake(c, g);
    assert_client_refused(&mut p, AuthError::MissingEku);

    // The IKE intermediate EKU alone is enough for a gateway (Windows' rule), and a
    // configured `Any` takes the code-signing one.
    let l = leaf(
        vec![dns("gw.roamgate.test")],
        vec![ExtendedKeyUsagePurpose::Other(vec![
            1, 3, 6, 1, 5, 5, 8, 2, 2,
        ])],
    );
    let c = cred(
        Alg::P256,
        &ca,
        &[],
        &rw_leaf(),
        &[&ca],
        PeerEku::Server,
        false,
    );
    let g = cred(Alg::P256, &ca, &[], &l, &[&ca], PeerEku::Client, false);
    assert_up(&mut handshake(c, g));
    let l = leaf(
        vec![dns("gw.roamgate.test")],
        vec![ExtendedKeyUsagePurpose::CodeSigning],
    );
    let c = cred(Alg::P256, &ca, &[], &rw_leaf(), &[&ca], PeerEku::Any, false);
    let g = cred(Alg::P256, &ca, &[], &l, &[&ca], PeerEku::Client, false);
    assert_up(&mut handshake(c, g));
}

#[test]
fn refused_san_type_and_san_mismatch() {
    let ca = root("root");
    // The client's identity is an FQDN; its certificate has only an e-mail SAN.
    let l = leaf(
        vec![mail("rw@roamgate.test")],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    );
    let c = cred(Alg::P256, &ca, &[], &l, &[&ca], PeerEku::Server, false);
    let g = cred(
        Alg::P256,
        &ca,
        &[],
        &gw_leaf(),
        &[&ca],
        PeerEku::Client,
        false,
    );
    let mut p = handshake(c, g);
    assert_gw_refused(&mut p, AuthError::SanType);

    // A dNSName, but another one.
    let l = leaf(
        vec![dns("other.roamgate.test")],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    );
    let c = cred(Alg::P256, &ca, &[], &l, &[&ca], PeerEku::Server, false);
    let g = cred(
        Alg::P256,
        &ca,
        &[],
        &gw_leaf(),
        &[&ca],
        PeerEku::Client,
        false,
    );
    let mut p = handshake(c, g);
    assert_gw_refused(&mut p, AuthError::SanMismatch);
}

#[test]
fn identities_of_every_type_match_their_san_or_subject() {
    let ca = root("root");
    let g = cred(
        Alg::P256,
        &ca,
        &[],
        &gw_leaf(),
        &[&ca],
        PeerEku::Client,
        false,
    );
    for (id, san) in [
        ("rw@roamgate.test", mail("rw@roamgate.test")),
        (
            "192.0.2.10",
            SanType::IpAddress("192.0.2.10".parse().unwrap()),
        ),
        (
            "2001:db8::10",
            SanType::IpAddress("2001:db8::10".parse().unwrap()),
        ),
    ] {
        let l = leaf(vec![san], vec![ExtendedKeyUsagePurpose::ClientAuth]);
        let mut c = client_cfg();
        c.local_id = Id::from_text(id);
        c.auth = cred(Alg::P256, &ca, &[], &l, &[&ca], PeerEku::Server, false);
        let mut gc = gateway_cfg();
        gc.auth = g.clone();
        let mut p = Pair::with_endpoints(endpoint_at(c, 1, JAN_2026), endpoint_at(gc, 2, JAN_2026));
        p.connect();
        p.drive();
        assert_up(&mut p);
    }
    // A DN identity: the certificate's subject, as strongSwan sends by default.
    let c_cred = cred(
        Alg::P256,
        &ca,
        &[],
        &rw_leaf(),
        &[&ca],
        PeerEku::Server,
        false,
    );
    let Credential::Pubkey(k) = &c_cred else {
        unreachable!()
    };
    let (_, parsed) =
        x509_parser::parse_x509_certificate(k.local.as_ref().unwrap().chain[0].as_ref()).unwrap();
    let dn = Id {
        kind: id_type::DER_ASN1_DN,
        data: parsed.subject().as_raw().to_vec(),
    };
    assert_eq!(dn.display(), "O=roamgate test, CN=ee");
    let mut c = client_cfg();
    c.local_id = dn.clone();
    c.auth = c_cred.clone();
    let mut gc = gateway_cfg();
    gc.auth = g.clone();
    let mut p = Pair::with_endpoints(endpoint_at(c, 1, JAN_2026), endpoint_at(gc, 2, JAN_2026));
    p.connect();
    p.drive();
    assert_up(&mut p);
    // Another subject.
    let mut c = client_cfg();
    let other = Id {
        kind: id_type::DER_ASN1_DN,
        data: parsed.issuer().as_raw().to_vec(),
    };
    c.local_id = other;
    c.auth = c_cred;
    let mut gc = gateway_cfg();
    gc.auth = g;
    let mut p = Pair::with_endpoints(endpoint_at(c, 1, JAN_2026), endpoint_at(gc, 2, JAN_2026));
    p.connect();
    p.drive();
    assert_gw_refused(&mut p, AuthError::SubjectMismatch);
}

#[test]
fn refused_revoked_by_a_crl() {
    let ca = root("root");
    let mut l = rw_leaf();
    l.serial = 4242;
    let c = cred(Alg::P256, &ca, &[], &l, &[&ca], PeerEku::Server, false);
    let crl = CertificateRevocationListParams {
        this_update: date_time_ymd(2025, 12, 1),
        next_update: date_time_ymd(2026, 2, 1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: SerialNumber::from(4242u64),
            revocation_time: date_time_ymd(2025, 12, 1),
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&ca.issuer)
    .unwrap();
    let mut trust = TrustStore::default();
    trust.add_ca_der(&ca.der).unwrap();
    assert_eq!(trust.add_crl(crl.pem().unwrap().as_bytes()).unwrap(), 1);
    let k = key(Alg::P256);
    let g = Credential::Pubkey(Arc::new(Pubkey {
        local: Some(
            LocalCert::new(
                vec![issue(&ca, &gw_leaf(), &k, "gw")],
                SigningKey::from_pem(k.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap(),
        ),
        trust,
        peer_eku: PeerEku::Client,
        rsa_pss: false,
        allow_sha1: false,
        cert_only_if_asked: false,
    }));
    let mut p = handshake(c.clone(), g.clone());
    assert_gw_refused(&mut p, AuthError::Revoked);
    // Another serial from the same CA passes the same CRL.
    let c = cred(
        Alg::P256,
        &ca,
        &[],
        &rw_leaf(),
        &[&ca],
        PeerEku::Server,
        false,
    );
    assert_up(&mut handshake(c, g));
}

/// Wraps the default authenticator and spoils what it sends.
struct Spoil {
    inner: CredentialAuthenticator,
    flip_signature: bool,
    drop_certs: bool,
}

impl Authenticator for Spoil {
    fn init_payloads(&mut self, peers: &[&PeerConfig], responder: bool) -> Vec<Payload> {
        self.inner.init_payloads(peers, responder)
    }
    fn extra_payloads(&mut self, peer: &PeerConfig, ctx: &AuthContext<'_>) -> Vec<Payload> {
        let mut v = self.inner.extra_payloads(peer, ctx);
        if self.drop_certs {
            v.retain(|p| !matches!(p, Payload::Cert { .. }));
        }
        v
    }
    fn sign(
        &mut self,
        peer: &PeerConfig,
        input: &AuthInput<'_>,
        ctx: &AuthContext<'_>,
    ) -> Result<Auth, AuthError> {
        let mut a = self.inner.sign(peer, input, ctx)?;
        if self.flip_signature {
            if let Some(b) = a.data.last_mut() {
                *b ^= 1;
            }
        }
        Ok(a)
    }
    fn verify(
        &mut self,
        peer: &PeerConfig,
        input: &AuthInput<'_>,
        auth: &Auth,
        message: &[Payload],
        ctx: &AuthContext<'_>,
    ) -> Result<(), AuthError> {
        self.inner.verify(peer, input, auth, message, ctx)
    }
}

fn spoiled_client(flip_signature: bool, drop_certs: bool, alg: Alg) -> Pair {
    let ca = root("root");
    let mut c = client_cfg();
    c.auth = cred(alg, &ca, &[], &rw_leaf(), &[&ca], PeerEku::Server, false);
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
    let spoil = Services {
        auth: Box::new(Spoil {
            inner: CredentialAuthenticator,
            flip_signature,
            drop_certs,
        }),
        ..Services::default()
    };
    let mut p = Pair::with_endpoints(
        endpoint_with(c, 1, JAN_2026, spoil),
        endpoint_at(g, 2, JAN_2026),
    );
    p.connect();
    p.drive();
    p
}

#[test]
fn refused_signature_invalid() {
    for alg in [Alg::RsaA, Alg::P256, Alg::Ed25519] {
        let mut p = spoiled_client(true, false, alg);
        assert_gw_refused(&mut p, AuthError::SignatureInvalid);
    }
}

#[test]
fn refused_no_certificate() {
    let mut p = spoiled_client(false, true, Alg::P256);
    assert_gw_refused(&mut p, AuthError::NoCertificate);
}

#[test]
fn refused_psk_where_a_signature_is_required() {
    let ca = root("root");
    let mut c = client_cfg();
    c.auth = Credential::Psk(crate::config::secret(b"lab-psk"));
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
    let mut p = Pair::with_endpoints(endpoint_at(c, 1, JAN_2026), endpoint_at(g, 2, JAN_2026));
    p.connect();
    p.drive();
    assert_gw_refused(&mut p, AuthError::Method(2));
}

/// The peer's end-entity certificate and the SPKI it carries, parsed, for the direct checks.
fn check_direct(
    ee: &CertificateDer<'static>,
    trusted: &Ca,
    id: &Id,
    auth_method: u8,
    data: &[u8],
    octets: &[u8],
    allow_sha1: bool,
) -> Result<(), AuthError> {
    let mut trust = TrustStore::default();
    trust.add_ca_der(&trusted.der).unwrap();
    crate::services::certs::validate_peer(
        &trust,
        std::slice::from_ref(ee),
        JAN_2026,
        PeerEku::Client,
        id,
        |spki| pubkey::verify(spki, auth_method, data, octets, allow_sha1),
    )
}

#[test]
fn refused_curve_not_allowed() {
    let ca = root("root");
    let ee = crate::services::certs::certs_from_pem(P521_EE)
        .unwrap()
        .remove(0);
    let id = Id::from_text("rw.roamgate.test");
    assert_eq!(
        check_direct(&ee, &ca, &id, method::ECDSA_521, &[0; 132], b"x", false),
        Err(AuthError::CurveNotAllowed)
    );
    assert_eq!(
        check_direct(
            &ee,
            &ca,
            &id,
            method::DIGITAL_SIGNATURE,
            &[0; 8],
            b"x",
            false
        ),
        Err(AuthError::CurveNotAllowed)
    );
}

#[test]
fn rfc7296_methods_when_the_peer_announces_no_hashes() {
    let ca = root("root");
    let id = Id::from_text("rw.roamgate.test");
    for (alg, m) in [
        (Alg::P256, method::ECDSA_256),
        (Alg::P384, method::ECDSA_384),
    ] {
        let k = key(alg);
        let ee = issue(&ca, &rw_leaf(), &k, "ee");
        let s = SigningKey::from_pem(k.serialize_pem().as_bytes()).unwrap();
        let (got, sig) = s.sign(b"octets", &[], false).unwrap();
        assert_eq!(got, m);
        assert_eq!(
            check_direct(&ee, &ca, &id, m, &sig, b"octets", false),
            Ok(())
        );
        assert_eq!(
            check_direct(&ee, &ca, &id, m, &sig, b"octetz", false),
            Err(AuthError::SignatureInvalid)
        );
        // With hashes announced: RFC 7427 with a DER signature.
        let (got, sig) = s
            .sign(b"octets", &[hash::SHA2_256, hash::SHA2_384], false)
            .unwrap();
        assert_eq!(got, method::DIGITAL_SIGNATURE);
        assert_eq!(
            check_direct(&ee, &ca, &id, got, &sig, b"octets", false),
            Ok(())
        );
    }
    // RSA and Ed25519 need RFC 7427 (ring signs no SHA-1).
    for alg in [Alg::RsaA, Alg::Ed25519] {
        let k = key(alg);
        let s = SigningKey::from_pem(k.serialize_pem().as_bytes()).unwrap();
        assert_eq!(s.sign(b"o", &[], false), Err(AuthError::NoCommonHash));
    }
    // Ed25519 needs "identity" announced; SHA-2 alone is not enough.
    let s = SigningKey::from_pem(key(Alg::Ed25519).serialize_pem().as_bytes()).unwrap();
    assert_eq!(
        s.sign(b"o", &[hash::SHA2_256], false),
        Err(AuthError::NoCommonHash)
    );
}

/// RSA with SHA-1 (method 1, `openssl dgst -sha1 -sign data/rsa2048-a.pem` over
/// `data/sha1-message.bin`): accepted only where configured.
#[test]
fn rsa_sha1_only_when_configured() {
    let ca = root("root");
    let id = Id::from_text("rw.roamgate.test");
    let k = key(Alg::RsaA);
    let ee = issue(&ca, &rw_leaf(), &k, "ee");
    let msg = include_bytes!("data/sha1-message.bin");
    let sig = include_bytes!("data/sha1-signature.bin");
    assert_eq!(
        check_direct(&ee, &ca, &id, method::RSA_SIG, sig, msg, false),
        Err(AuthError::Sha1NotAllowed)
    );
    assert_eq!(
        check_direct(&ee, &ca, &id, method::RSA_SIG, sig, msg, true),
        Ok(())
    );
    assert_eq!(
        check_direct(&ee, &ca, &id, method::RSA_SIG, sig, b"other", true),
        Err(AuthError::SignatureInvalid)
    );
    // The same signature under RFC 7427 with sha1WithRSAEncryption.
    let mut d = vec![15u8];
    d.extend_from_slice(&[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05, 0x05, 0x00,
    ]);
    d.extend_from_slice(sig);
    assert_eq!(
        check_direct(&ee, &ca, &id, method::DIGITAL_SIGNATURE, &d, msg, false),
        Err(AuthError::Sha1NotAllowed)
    );
    assert_eq!(
        check_direct(&ee, &ca, &id, method::DIGITAL_SIGNATURE, &d, msg, true),
        Ok(())
    );
}

#[test]
fn malformed_auth_data_is_a_reason_not_a_panic() {
    let ca = root("root");
    let id = Id::from_text("rw.roamgate.test");
    let k = key(Alg::P256);
    let ee = issue(&ca, &rw_leaf(), &k, "ee");
    for d in [
        &[][..],
        &[200, 1, 2][..],
        &[2, 0x30, 0x00][..],
        &[3, 0x30, 0x01, 0x05, 1][..],
    ] {
        let r = check_direct(&ee, &ca, &id, method::DIGITAL_SIGNATURE, d, b"x", false);
        assert!(
            matches!(
                r,
                Err(AuthError::SignatureMalformed | AuthError::SignatureAlgorithm)
            ),
            "{d:?}: {r:?}"
        );
    }
    // An RSA algorithm for an ECDSA key.
    let mut d = vec![15u8];
    d.extend_from_slice(&[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00,
    ]);
    d.extend_from_slice(&[0; 64]);
    assert_eq!(
        check_direct(&ee, &ca, &id, method::DIGITAL_SIGNATURE, &d, b"x", false),
        Err(AuthError::KeyMismatch)
    );
    assert_eq!(
        check_direct(&ee, &ca, &id, 200, &[1], b"x", false),
        Err(AuthError::Method(200))
    );
    // A CERT payload that is not a certificate.
    assert_eq!(
        crate::services::certs::validate_peer(
            &TrustStore::default(),
            &[CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])],
            JAN_2026,
            PeerEku::Any,
            &id,
            |_| Ok(())
        ),
        Err(AuthError::CertMalformed)
    );
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused_at_load() {
    let ca = root("root");
    let k = key(Alg::P256);
    let ee = issue(&ca, &rw_leaf(), &k, "ee");
    let other = SigningKey::from_pem(key(Alg::P256).serialize_pem().as_bytes()).unwrap();
    assert!(matches!(
        LocalCert::new(vec![ee], other),
        Err(crate::services::certs::LoadError::KeyMismatch)
    ));
    assert!(format!("{:?}", SigningKey::from_pem(RSA_A.as_bytes()).unwrap()).contains("<secret>"));
    assert!(!format!("{:?}", SigningKey::from_pem(RSA_A.as_bytes()).unwrap()).contains("MII"));
}

/// The caller's clock is added up before it is rounded to seconds: a certificate that became
/// valid a fraction of a second ago is valid (two truncated parts would lag by up to 2 s).
#[test]
fn validity_is_judged_at_the_callers_exact_time() {
    let ca = root("root");
    let mut fresh = rw_leaf();
    fresh.from = (2026, 1, 1); // valid from JAN_2026 exactly
    let c = cred(Alg::P256, &ca, &[], &fresh, &[&ca], PeerEku::Server, false);
    let g = cred(
        Alg::P256,
        &ca,
        &[],
        &gw_leaf(),
        &[&ca],
        PeerEku::Client,
        false,
    );
    let mut cc = client_cfg();
    cc.auth = c;
    let mut gc = gateway_cfg();
    gc.auth = g;
    // UNIX time JAN_2026 - 0.4 s at the clock's zero; the handshake runs at 0.5 s.
    let at_zero = Duration::from_secs(JAN_2026 - 1) + Duration::from_millis(600);
    let ep = |peer, seed| {
        Endpoint::new(
            EndpointConfig {
                peers: vec![peer],
                unix_time_at_zero: at_zero,
                ..Default::default()
            },
            [seed; 32],
        )
    };
    let mut p = Pair::with_endpoints(ep(cc, 1), ep(gc, 2));
    p.net.run_for(ms(500));
    p.connect();
    p.drive();
    assert_up(&mut p);
}

#[test]
fn a_certificate_chain_crosses_in_fragments() {
    // RSA leaves and an intermediate on both sides: IKE_AUTH is well over what fits a 576-byte
    // IPv4 datagram, the default fragment size (RFC 7383 2.5.1).
    let ca = root("root");
    let sub = intermediate(&ca, "sub");
    let c = cred(
        Alg::RsaB,
        &sub,
        &[&sub],
        &rw_leaf(),
        &[&ca],
        PeerEku::Server,
        true,
    );
    let g = cred(
        Alg::RsaA,
        &sub,
        &[&sub],
        &gw_leaf(),
        &[&ca],
        PeerEku::Client,
        true,
    );
    let mut p = handshake(c, g);
    assert_up(&mut p);
    let mut largest = 0;
    for d in &p.net.log {
        let h = wire::Header::parse(&d.data).unwrap();
        if h.exchange != wire::exchange::IKE_SA_INIT {
            // IPv4 and UDP headers, and the non-ESP marker on 4500.
            largest = largest.max(d.data.len() + 28 + if d.dst.port() == 500 { 0 } else { 4 });
        }
    }
    assert!(largest <= 576, "{largest}");
    for i in [CLIENT, GW] {
        let f = p.net.ep(i).stats().fragments;
        assert_eq!((f.messages_sent, f.reassembled), (1, 1), "{f:?}");
        assert!(f.sent >= 4, "{f:?}");
    }
}
