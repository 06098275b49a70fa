//! X.509 for IKE (RFC 7296 3.6, 3.7; RFC 4945 for the profile): the trust store a connection
//! checks peers against (CA certificates and CRLs), our own chain, CERTREQ hashes, path
//! validation with the EKU policy (`rustls-webpki`), and the peer's identity against its
//! certificate's subjectAltName or subject (`x509-parser`).
//!
//! Owns: [`TrustStore`], [`LocalCert`], [`PeerEku`], [`validate_peer`] and the identity match.
//! Must never: read a file or a clock (certificates, CRLs and the time come from the caller);
//! accept a certificate whose failure it cannot name.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::arithmetic_side_effects
)]

use core::net::IpAddr;
use core::time::Duration;

use ring::digest;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, TrustAnchor, UnixTime};
use webpki::{
    CertRevocationList, EndEntityCert, ExtendedKeyUsageValidator, KeyPurposeId, KeyPurposeIdIter,
    OwnedCertRevocationList, RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::auth::AuthError;
use super::pubkey::{self, SigningKey};
use crate::wire::{id_type, Id};

/// EKU OIDs (content octets).
const EKU_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
const EKU_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
/// id-kp-ipsecIKE (RFC 4945 5.1.3.12).
const EKU_IPSEC_IKE: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x11];
/// The IKE intermediate EKU Windows accepts on a gateway (1.3.6.1.5.5.8.2.2).
const EKU_IKE_INTERMEDIATE: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x08, 0x02, 0x02];
/// anyExtendedKeyUsage.
const EKU_ANY: &[u8] = &[0x55, 0x1d, 0x25, 0x00];

/// The extended key usage the peer's certificate must allow (a certificate without the EKU
/// extension allows every usage, RFC 5280 4.2.1.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PeerEku {
    /// The peer is a gateway: serverAuth or the IKE intermediate EKU (what Windows asks of a
    /// gateway's certificate), or id-kp-ipsecIKE.
    #[default]
    Server,
    /// The peer is a road warrior: clientAuth or id-kp-ipsecIKE.
    Client,
    /// Whatever the certificate says.
    Any,
}

impl PeerEku {
    fn allows(self, oid: &KeyPurposeId<'_>) -> bool {
        let is = |o: &'static [u8]| *oid == KeyPurposeId::new(o);
        match self {
            PeerEku::Server => {
                is(EKU_SERVER_AUTH) || is(EKU_IKE_INTERMEDIATE) || is(EKU_IPSEC_IKE) || is(EKU_ANY)
            }
            PeerEku::Client => is(EKU_CLIENT_AUTH) || is(EKU_IPSEC_IKE) || is(EKU_ANY),
            PeerEku::Any => true,
        }
    }
}

impl ExtendedKeyUsageValidator for PeerEku {
    // The context variant's fields cannot be built outside webpki; the unit one says the same.
    #[allow(deprecated)]
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        let mut empty = true;
        for id in iter {
            empty = false;
            if self.allows(&id?) {
                return Ok(());
            }
        }
        if empty {
            Ok(())
        } else {
            Err(webpki::Error::RequiredEkuNotFound)
        }
    }
}

/// The CAs and CRLs a connection trusts.
#[derive(Default)]
pub struct TrustStore {
    anchors: Vec<TrustAnchor<'static>>,
    /// SHA-1 of each CA's SubjectPublicKeyInfo, as CERTREQ names it (RFC 7296 3.7).
    spki_sha1: Vec<[u8; 20]>,
    crls: Vec<CertRevocationList<'static>>,
}

impl core::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "TrustStore({} CAs, {} CRLs)",
            self.anchors.len(),
            self.crls.len()
        )
    }
}

/// Why a certificate, CRL or key did not load (the config loader adds file and key path).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("no PEM certificate in it")]
    NoCertificate,
    #[error("bad PEM: {0}")]
    Pem(String),
    #[error("not a certificate webpki accepts: {0}")]
    Certificate(String),
    #[error("not a CRL webpki accepts: {0}")]
    Crl(String),
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("the certificate's key is not one we can sign with: {0}")]
    KeyType(String),
}

impl TrustStore {
    /// Adds every certificate of a PEM file as a trust anchor.
    pub fn add_ca_pem(&mut self, pem: &[u8]) -> Result<usize, LoadError> {
        let certs = certs_from_pem(pem)?;
        for c in &certs {
            self.add_ca_der(c)?;
        }
        Ok(certs.len())
    }

    /// Adds one CA certificate (DER).
    pub fn add_ca_der(&mut self, der: &CertificateDer<'_>) -> Result<(), LoadError> {
        let anchor = webpki::anchor_from_trusted_cert(der)
            .map_err(|e| LoadError::Certificate(format!("{e:?}")))?
            .to_owned();
        let (_, parsed) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| LoadError::Certificate(e.to_string()))?;
        let h = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, parsed.public_key().raw);
        let mut sha1 = [0u8; 20];
        sha1.copy_from_slice(h.as_ref().get(..20).unwrap_or(&[0; 20]));
        self.anchors.push(anchor);
        self.spki_sha1.push(sha1);
        Ok(())
    }

    /// Adds every CRL of a PEM file (or one DER CRL).
    pub fn add_crl(&mut self, bytes: &[u8]) -> Result<usize, LoadError> {
        let ders: Vec<CertificateRevocationListDer<'static>> =
            if bytes.starts_with(b"-----") || bytes.windows(5).any(|w| w == b"-----") {
                CertificateRevocationListDer::pem_slice_iter(bytes)
                    .collect::<Result<_, _>>()
                    .map_err(|e| LoadError::Pem(e.to_string()))?
            } else {
                vec![CertificateRevocationListDer::from(bytes.to_vec())]
            };
        for d in &ders {
            let crl = OwnedCertRevocationList::from_der(d.as_ref())
                .map_err(|e| LoadError::Crl(format!("{e:?}")))?;
            self.crls.push(CertRevocationList::Owned(crl));
        }
        Ok(ders.len())
    }

    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    /// CERTREQ data: the CAs' SPKI hashes concatenated.
    pub fn certreq_data(&self) -> Vec<u8> {
        self.spki_sha1.iter().flatten().copied().collect()
    }

    /// True if a CERTREQ's data names one of our CAs (or names none: "any").
    pub fn names_one_of_ours(&self, certreq: &[u8]) -> bool {
        certreq.is_empty()
            || certreq
                .chunks_exact(20)
                .any(|h| self.spki_sha1.iter().any(|o| o.as_slice() == h))
    }
}

/// Every certificate of a PEM file, in order.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let v: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| LoadError::Pem(e.to_string()))?;
    if v.is_empty() {
        return Err(LoadError::NoCertificate);
    }
    Ok(v)
}

/// Our certificate (end entity first, then the intermediates to send) and its private key.
pub struct LocalCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: SigningKey,
    /// SHA-1 of the SPKI of each intermediate in the chain: a CERTREQ naming one of them
    /// says the peer has it already.
    issuers_spki_sha1: Vec<[u8; 20]>,
}

impl core::fmt::Debug for LocalCert {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "LocalCert({} certificates, {:?})",
            self.chain.len(),
            self.key
        )
    }
}

impl LocalCert {
    /// A chain (PEM: end entity first) and its key; the key must be the end entity's.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: SigningKey,
    ) -> Result<LocalCert, LoadError> {
        let ee = chain.first().ok_or(LoadError::NoCertificate)?;
        let (_, parsed) = X509Certificate::from_der(ee.as_ref())
            .map_err(|e| LoadError::Certificate(e.to_string()))?;
        let spki = parsed.public_key();
        let kind = pubkey::key_kind(spki).map_err(|e| LoadError::KeyType(e.to_string()))?;
        if kind != key.kind() || spki.subject_public_key.data.as_ref() != key.public_key() {
            return Err(LoadError::KeyMismatch);
        }
        let mut issuers_spki_sha1 = Vec::new();
        for c in chain.iter().skip(1) {
            let (_, p) = X509Certificate::from_der(c.as_ref())
                .map_err(|e| LoadError::Certificate(e.to_string()))?;
            let h = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, p.public_key().raw);
            let mut a = [0u8; 20];
            a.copy_from_slice(h.as_ref().get(..20).unwrap_or(&[0; 20]));
            issuers_spki_sha1.push(a);
        }
        Ok(LocalCert {
            chain,
            key,
            issuers_spki_sha1,
        })
    }

    /// True if a CERTREQ names a CA among our intermediates.
    pub fn chain_named_by(&self, certreq: &[u8]) -> bool {
        certreq
            .chunks_exact(20)
            .any(|h| self.issuers_spki_sha1.iter().any(|o| o.as_slice() == h))
    }
}

/// Validates the peer's chain (`certs`: end entity first, the rest intermediates in any
/// order) at `unix` seconds against `trust`, with `eku` on the end entity, and matches `id`
/// against it. On success, calls `with_spki` on the end entity's public key (to check the
/// AUTH signature).
pub fn validate_peer<T>(
    trust: &TrustStore,
    certs: &[CertificateDer<'_>],
    unix: u64,
    eku: PeerEku,
    id: &Id,
    with_spki: impl FnOnce(&x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<T, AuthError>,
) -> Result<T, AuthError> {
    let ee_der = certs.first().ok_or(AuthError::NoCertificate)?;
    let intermediates = certs.get(1..).unwrap_or(&[]);
    let ee = EndEntityCert::try_from(ee_der).map_err(|_| AuthError::CertMalformed)?;
    let (_, parsed) =
        X509Certificate::from_der(ee_der.as_ref()).map_err(|_| AuthError::CertMalformed)?;
    // The key type first: a curve we refuse is named as such, not as a path failure.
    pubkey::key_kind(parsed.public_key())?;
    if trust.is_empty() {
        return Err(AuthError::UnknownCa);
    }
    let crl_refs: Vec<&CertRevocationList<'_>> = trust.crls.iter().collect();
    let revocation = RevocationOptionsBuilder::new(&crl_refs).ok().map(|b| {
        b.with_depth(RevocationCheckDepth::Chain)
            .with_status_policy(UnknownStatusPolicy::Allow)
            .with_expiration_policy(webpki::ExpirationPolicy::Ignore)
            .build()
    });
    let time = UnixTime::since_unix_epoch(Duration::from_secs(unix));
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &trust.anchors,
        intermediates,
        time,
        eku,
        revocation,
        None,
    )
    .map_err(path_error)?;
    match_identity(&parsed, id)?;
    with_spki(parsed.public_key())
}

/// webpki's verdict as one of our reasons.
#[allow(deprecated)]
fn path_error(e: webpki::Error) -> AuthError {
    use webpki::Error as E;
    match e {
        E::CertExpired { .. } => AuthError::Expired,
        E::CertNotValidYet { .. } => AuthError::NotYetValid,
        E::UnknownIssuer => AuthError::UnknownCa,
        E::CertRevoked => AuthError::Revoked,
        E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) | E::EmptyEkuExtension => {
            AuthError::MissingEku
        }
        E::InvalidSignatureForPublicKey => AuthError::ChainSignatureInvalid,
        _ => AuthError::ChainInvalid,
    }
}

/// The peer's identity against its certificate (RFC 4945 3.1): FQDN against dNSName (the
/// subject's CN when the certificate has no dNSName at all), e-mail against rfc822Name, an
/// IP address against iPAddress, a DN against the subject.
fn match_identity(cert: &X509Certificate<'_>, id: &Id) -> Result<(), AuthError> {
    let sans: Vec<GeneralName<'_>> = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext.value.general_names.clone(),
        Ok(None) => Vec::new(),
        Err(_) => return Err(AuthError::CertMalformed),
    };
    match id.kind {
        id_type::FQDN => {
            let want = core::str::from_utf8(&id.data).map_err(|_| AuthError::IdType)?;
            let dns: Vec<&str> = sans
                .iter()
                .filter_map(|g| match g {
                    GeneralName::DNSName(d) => Some(*d),
                    _ => None,
                })
                .collect();
            if dns.is_empty() {
                let cn_matches = cert
                    .subject()
                    .iter_common_name()
                    .filter_map(|a| a.as_str().ok())
                    .any(|cn| cn.eq_ignore_ascii_case(want));
                return if cn_matches {
                    Ok(())
                } else {
                    Err(AuthError::SanType)
                };
            }
            if dns.iter().any(|d| d.eq_ignore_ascii_case(want)) {
                Ok(())
            } else {
                Err(AuthError::SanMismatch)
            }
        }
        id_type::RFC822 => {
            let want = core::str::from_utf8(&id.data).map_err(|_| AuthError::IdType)?;
            let mails: Vec<&str> = sans
                .iter()
                .filter_map(|g| match g {
                    GeneralName::RFC822Name(d) => Some(*d),
                    _ => None,
                })
                .collect();
            if mails.is_empty() {
                Err(AuthError::SanType)
            } else if mails.iter().any(|d| d.eq_ignore_ascii_case(want)) {
                Ok(())
            } else {
                Err(AuthError::SanMismatch)
            }
        }
        id_type::IPV4 | id_type::IPV6 => {
            let want: IpAddr = match id.data.len() {
                4 => <[u8; 4]>::try_from(id.data.as_slice())
                    .map(IpAddr::from)
                    .map_err(|_| AuthError::IdType)?,
                16 => <[u8; 16]>::try_from(id.data.as_slice())
                    .map(IpAddr::from)
                    .map_err(|_| AuthError::IdType)?,
                _ => return Err(AuthError::IdType),
            };
            let ips: Vec<IpAddr> = sans
                .iter()
                .filter_map(|g| match g {
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    },
                    _ => None,
                })
                .collect();
            if ips.is_empty() {
                Err(AuthError::SanType)
            } else if ips.contains(&want) {
                Ok(())
            } else {
                Err(AuthError::SanMismatch)
            }
        }
        id_type::DER_ASN1_DN => {
            if cert.subject().as_raw() == id.data.as_slice() {
                return Ok(());
            }
            // The same name written differently (strings re-encoded): compare as text.
            match x509_parser::x509::X509Name::from_der(&id.data) {
                Ok((_, n)) if n.to_string() == cert.subject().to_string() => Ok(()),
                Ok(_) => Err(AuthError::SubjectMismatch),
                Err(_) => Err(AuthError::IdType),
            }
        }
        _ => Err(AuthError::IdType),
    }
}
