//! Certificate authentication's parsers on anyone's bytes: a CERT payload as the peer's
//! certificate (x509-parser and webpki, then the identity match), and AUTH data of every
//! signature method (RFC 7427's AlgorithmIdentifier included) against an RSA and an ECDSA key.
//! Nothing may panic; every failure is one of `AuthError`'s reasons.
#![no_main]

use ike::services::certs::{certs_from_pem, validate_peer};
use ike::services::{pubkey, PeerEku, TrustStore};
use ike::wire::Id;
use libfuzzer_sys::fuzz_target;

const RSA: &[u8] = include_bytes!("ike_cert_rsa.pem");
const P256: &[u8] = include_bytes!("ike_cert_p256.pem");

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let id = Id::from_text("rw.roamgate.test");
    // The bytes as the peer's end-entity certificate, trusted by a store of both fixtures.
    let mut trust = TrustStore::default();
    let _ = trust.add_ca_pem(RSA);
    let _ = trust.add_ca_pem(P256);
    let cert = rustls_pki_types::CertificateDer::from(rest);
    let _ = validate_peer(&trust, &[cert], 1_800_000_000, PeerEku::Client, &id, |_| Ok(()));
    // The bytes as AUTH data of method `m` against each fixture's key.
    for pem in [RSA, P256] {
        let Ok(certs) = certs_from_pem(pem) else {
            continue;
        };
        let Some(c) = certs.first() else { continue };
        if let Ok((_, parsed)) = x509_parser::parse_x509_certificate(c.as_ref()) {
            let _ = pubkey::verify(parsed.public_key(), m, rest, b"signed octets", true);
        }
    }
});
