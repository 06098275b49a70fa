//! Certificate authentication of a connection (`auth: pubkey`): our certificate chain and
//! private key, the CAs and CRLs the peer's certificate is checked against, read from PEM
//! files and handed to `ike` as parsed objects.
//!
//! ```yaml
//!     - name: rw
//!       local_id: gw.roamgate.test      # must be in the certificate's SAN (or its subject)
//!       auth: pubkey
//!       cert: /etc/roamgate/gw.pem      # PEM: our certificate, then the intermediates to send
//!       key: /etc/roamgate/gw.key       # PEM: PKCS#8 (RSA, ECDSA P-256/P-384, Ed25519) or PKCS#1
//!       cacerts: [/etc/roamgate/ca.pem] # PEM: the CAs the peer's certificate must chain to
//!       crls: [/etc/roamgate/ca.crl]    # PEM or DER CRLs (optional)
//!       peer_eku: client                # client | server | any (default: client for a
//!                                       #   responder, server for an initiator)
//!       rsa_pss: false                  # sign RSA as RSASSA-PSS under RFC 7427
//!       allow_sha1: false               # accept SHA-1 RSA signatures (AUTH method 1)
//!       send_cert: always               # always | ifasked (only after a CERTREQ)
//! ```
//!
//! Owns: reading and checking those files; errors that name the file read, the config file
//! and the key.
//! Must never: print or keep a private key's bytes beyond loading it (they are zeroized).

use std::path::Path;
use std::sync::Arc;

use ike::services::{LocalCert, PeerEku, SigningKey, TrustStore};
use ike::{Credential, Pubkey};

use super::ike::ConnectionYaml;
use super::ConfigError;

/// The `pubkey` credential of connection `c` (its keys under `at`).
pub fn load(c: &ConnectionYaml, file: &Path, at: &str) -> Result<Credential, ConfigError> {
    let key = |k: &str| format!("{at}.{k}");
    let err = |k: &str, what: String| ConfigError::new(file, key(k), what);
    if c.psk.is_some() || c.psk_file.is_some() {
        return Err(err("auth", "pubkey takes no psk or psk_file".into()));
    }
    let cert_path = c.cert.as_deref().ok_or_else(|| {
        err(
            "cert",
            "auth: pubkey needs cert (our certificate, PEM)".into(),
        )
    })?;
    let key_path = c.key.as_deref().ok_or_else(|| {
        err(
            "key",
            "auth: pubkey needs key (our private key, PEM)".into(),
        )
    })?;
    if c.cacerts.is_empty() {
        return Err(err(
            "cacerts",
            "auth: pubkey needs at least one CA certificate to check the peer against".into(),
        ));
    }
    let read = |k: &str, f: &str| {
        super::secret::read_bytes(Path::new(f)).map_err(|e| err(k, format!("cannot read {f}: {e}")))
    };
    let chain = ike::services::certs::certs_from_pem(&read("cert", cert_path)?)
        .map_err(|e| err("cert", format!("{cert_path}: {e}")))?;
    let signing = SigningKey::from_pem(&read("key", key_path)?)
        .map_err(|e| err("key", format!("{key_path}: {e}")))?;
    let local = LocalCert::new(chain, signing)
        .map_err(|e| err("key", format!("{key_path} with {cert_path}: {e}")))?;
    let (trust, peer_eku) = peer_check(c, file, at)?;
    let cert_only_if_asked = match c.send_cert.as_deref() {
        None | Some("always") => false,
        Some("ifasked") => true,
        Some(o) => {
            return Err(err(
                "send_cert",
                format!("'{o}': expected always or ifasked"),
            ))
        }
    };
    Ok(Credential::Pubkey(Arc::new(Pubkey {
        local: Some(local),
        trust,
        peer_eku,
        rsa_pss: c.rsa_pss,
        allow_sha1: c.allow_sha1,
        cert_only_if_asked,
    })))
}

/// The CAs and CRLs the peer's certificate is checked against, and the EKU it must allow.
fn peer_check(
    c: &ConnectionYaml,
    file: &Path,
    at: &str,
) -> Result<(TrustStore, PeerEku), ConfigError> {
    let key = |k: &str| format!("{at}.{k}");
    let err = |k: &str, what: String| ConfigError::new(file, key(k), what);
    if c.cacerts.is_empty() {
        return Err(err(
            "cacerts",
            "needs at least one CA certificate to check the peer against".into(),
        ));
    }
    let read = |k: &str, f: &str| {
        super::secret::read_bytes(Path::new(f)).map_err(|e| err(k, format!("cannot read {f}: {e}")))
    };
    let mut trust = TrustStore::default();
    for (i, f) in c.cacerts.iter().enumerate() {
        let k = format!("cacerts[{i}]");
        trust
            .add_ca_pem(&read(&k, f)?)
            .map_err(|e| err(&k, format!("{f}: {e}")))?;
    }
    for (i, f) in c.crls.iter().enumerate() {
        let k = format!("crls[{i}]");
        trust
            .add_crl(&read(&k, f)?)
            .map_err(|e| err(&k, format!("{f}: {e}")))?;
    }
    let peer_eku = match c.peer_eku.as_deref() {
        None if c.remote_addr.is_some() => PeerEku::Server,
        None => PeerEku::Client,
        Some("server") => PeerEku::Server,
        Some("client") => PeerEku::Client,
        Some("any") => PeerEku::Any,
        Some(o) => {
            return Err(err(
                "peer_eku",
                format!("'{o}': expected server, client or any"),
            ))
        }
    };
    Ok((trust, peer_eku))
}

/// The credential of an `auth: eap` connection (a client that logs in by EAP): no
/// certificate or key of ours, the CAs (and CRLs) the gateway's certificate is checked
/// against (its EKU: `peer_eku`, server by default).
pub fn load_gateway_check(
    c: &ConnectionYaml,
    file: &Path,
    at: &str,
) -> Result<Credential, ConfigError> {
    let key = |k: &str| format!("{at}.{k}");
    let err = |k: &str, what: String| ConfigError::new(file, key(k), what);
    if c.psk.is_some() || c.psk_file.is_some() || c.cert.is_some() || c.key.is_some() {
        return Err(err(
            "auth",
            "auth: eap takes no psk, psk_file, cert or key (we log in by EAP; the gateway by its certificate)".into(),
        ));
    }
    let (trust, peer_eku) = peer_check(c, file, at)?;
    Ok(Credential::Pubkey(Arc::new(Pubkey {
        local: None,
        trust,
        peer_eku,
        rsa_pss: false,
        allow_sha1: c.allow_sha1,
        cert_only_if_asked: true,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ike::IkeYaml;
    use rcgen::{CertificateParams, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256};

    /// A directory of its own for one test's files.
    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("roamgate-certs-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A CA and a gateway certificate for `gw.roamgate.test`, as PEM files in `d`.
    fn files(d: &Path) -> (String, String, String) {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca = CertificateParams::new(vec![]).unwrap();
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let k = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let ee = CertificateParams::new(vec!["gw.roamgate.test".into()])
            .unwrap()
            .signed_by(&k, &issuer)
            .unwrap();
        let p = |n: &str, body: String| {
            let f = d.join(n);
            std::fs::write(&f, body).unwrap();
            f.to_string_lossy().into_owned()
        };
        (
            p("gw.pem", ee.pem()),
            p("gw.key", k.serialize_pem()),
            p("ca.pem", ca_cert.pem()),
        )
    }

    fn validate(
        cert: &str,
        key: &str,
        ca: &str,
        extra: &str,
    ) -> Result<Vec<super::super::ike::Connection>, ConfigError> {
        let y: IkeYaml = crate::config::parse(
            Path::new("gw.yaml"),
            &format!("connections:\n  - {{ name: rw, local_id: gw.roamgate.test, auth: pubkey, cert: {cert}, key: {key}, cacerts: [{ca}], local_ts: [10.9.0.0/24], remote_ts: [0.0.0.0/0]{extra} }}\n"),
        )
        .unwrap();
        y.validate(Path::new("gw.yaml"), "ike")
    }

    #[test]
    fn a_pubkey_connection_loads_and_psk_is_unchanged() {
        let d = dir("ok");
        let (cert, key, ca) = files(&d);
        let c = validate(&cert, &key, &ca, "").unwrap();
        let Credential::Pubkey(p) = &c[0].peer.auth else {
            panic!("not pubkey")
        };
        assert_eq!(
            p.peer_eku,
            PeerEku::Client,
            "a responder checks for clients"
        );
        assert!(!p.cert_only_if_asked && !p.allow_sha1);
        assert!(!format!("{:?}", c[0].peer.auth).contains("BEGIN"));
        let c = validate(
            &cert,
            &key,
            &ca,
            ", peer_eku: any, send_cert: ifasked, rsa_pss: true",
        )
        .unwrap();
        let Credential::Pubkey(p) = &c[0].peer.auth else {
            panic!("not pubkey")
        };
        assert!(p.peer_eku == PeerEku::Any && p.cert_only_if_asked && p.rsa_pss);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn bad_files_name_the_file_and_the_key() {
        let d = dir("bad");
        let (cert, key, ca) = files(&d);
        let e = validate("/nonexistent/gw.pem", &key, &ca, "").unwrap_err();
        assert_eq!(e.key, "ike.connections[0].cert");
        assert!(e.what.contains("/nonexistent/gw.pem"), "{}", e.what);
        let junk = d.join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let junk = junk.to_string_lossy().into_owned();
        let e = validate(&cert, &junk, &ca, "").unwrap_err();
        assert_eq!(e.key, "ike.connections[0].key");
        assert!(e.what.contains(&junk), "{}", e.what);
        let e = validate(&cert, &key, &junk, "").unwrap_err();
        assert_eq!(e.key, "ike.connections[0].cacerts[0]");
        // A key that is not the certificate's.
        let other = d.join("other.key");
        std::fs::write(
            &other,
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                .unwrap()
                .serialize_pem(),
        )
        .unwrap();
        let e = validate(&cert, &other.to_string_lossy(), &ca, "").unwrap_err();
        assert_eq!(e.key, "ike.connections[0].key");
        assert!(e.what.contains("does not belong"), "{}", e.what);
        let e = validate(&cert, &key, &ca, ", peer_eku: nobody").unwrap_err();
        assert_eq!(e.key, "ike.connections[0].peer_eku");
        let e = validate(&cert, &key, &ca, ", psk: \"0123456789\"").unwrap_err();
        assert_eq!(e.key, "ike.connections[0].auth");
        let e = validate(&cert, &key, &ca, ", crls: [/nonexistent.crl]").unwrap_err();
        assert_eq!(e.key, "ike.connections[0].crls[0]");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn an_eap_client_checks_the_gateway_by_its_cas_and_logs_in_with_its_credentials_file() {
        let d = dir("eap-client");
        let (cert, key, ca) = files(&d);
        let creds = d.join("home.eap");
        std::fs::write(&creds, "alice:correct horse\n").unwrap();
        let creds = creds.to_string_lossy().into_owned();
        let parse = |extra: &str| -> IkeYaml {
            crate::config::parse(
                Path::new("cl.yaml"),
                &format!("connections:\n  - {{ name: home, local_id: alice, remote_id: gw.roamgate.test, remote_addr: 192.0.2.1, request_vip: true, remote_ts: [10.9.0.0/24]{extra} }}\n"),
            )
            .unwrap()
        };
        let y = parse(&format!(
            ", auth: eap, eap_credentials: {creds}, cacerts: [{ca}]"
        ));
        let c = y.validate(Path::new("cl.yaml"), "ike").unwrap();
        let Credential::Pubkey(p) = &c[0].peer.auth else {
            panic!("not pubkey")
        };
        assert!(p.local.is_none(), "no certificate of ours");
        assert_eq!(p.peer_eku, PeerEku::Server);
        let eap = y.eap(Path::new("cl.yaml"), "ike", "home").unwrap().unwrap();
        assert!(eap.radius.is_none() && eap.service.server.is_none());
        let (user, hash) = &eap.service.clients["home"];
        assert_eq!(user, "alice");
        assert_eq!(**hash, *ike::eap::mschapv2::nt_hash("correct horse"));
        assert!(!format!("{:?}", eap.service).contains("correct"));

        let bad = |extra: &str| {
            parse(extra)
                .validate(Path::new("cl.yaml"), "ike")
                .unwrap_err()
        };
        let e = bad(&format!(", auth: eap, cacerts: [{ca}]"));
        assert_eq!(e.key, "ike.connections[0].eap_credentials");
        let e = bad(&format!(
            ", auth: eap, eap_credentials: /nonexistent.eap, cacerts: [{ca}]"
        ));
        assert_eq!(e.key, "ike.connections[0].eap_credentials");
        assert!(e.what.contains("/nonexistent.eap"), "{}", e.what);
        let e = bad(&format!(", auth: eap, eap_credentials: {creds}"));
        assert_eq!(e.key, "ike.connections[0].cacerts");
        let e = bad(&format!(
            ", auth: eap, eap_credentials: {creds}, cacerts: [{ca}], cert: {cert}, key: {key}"
        ));
        assert_eq!(e.key, "ike.connections[0].auth");
        let e = bad(&format!(", psk: \"0123456789\", eap_credentials: {creds}"));
        assert_eq!(e.key, "ike.connections[0].eap_credentials");
        // A gateway's connection (no remote_addr) cannot be an EAP client.
        let y: IkeYaml = crate::config::parse(
            Path::new("gw.yaml"),
            &format!("connections:\n  - {{ name: rw, local_id: gw, auth: eap, eap_credentials: {creds}, cacerts: [{ca}], local_ts: [10.9.0.0/24], remote_ts: [0.0.0.0/0] }}\n"),
        )
        .unwrap();
        let e = y.validate(Path::new("gw.yaml"), "ike").unwrap_err();
        assert_eq!(e.key, "ike.connections[0].auth");
        std::fs::remove_dir_all(d).unwrap();
    }
}
